// `uiommufd run [--machine FILE] [--trace[=FILE]] [--leaks] [--selftest-ops] -- PROGRAM ARGS…`
//
// Runs an unmodified, dynamically linked program with /dev/iommu served by uiommufd: the
// preload library (libuiommufd-preload.so, built next to this executable by `swift build`) is
// put in front of LD_PRELOAD and configured through UIOMMUFD_* variables, the program is
// spawned, and its exit status becomes ours (128+N when signal N killed it).

import ArgumentParser
import IOMMUFD
import IOMMUServer
#if canImport(Glibc)
import Glibc
#endif

/// How the preloaded program is configured: the parsed command line.
struct RunInvocation: Equatable {
    var machine: String?
    /// nil: no tracing; "stderr" or a path.
    var trace: String?
    var leaks = false
    var selftestOps = false
    /// Serve the program from a server (`uiommufd serve`): a private one started for this run,
    /// or the one at `server`.
    var shared = false
    var server: String?
    /// Capabilities the simulated kernel grants the program (--grant-cap).
    var grantCapabilities: String?
    var program: [String] = []

    /// Parses what follows `run`. Options end at `--` or at the first word that is not one.
    static func parse(_ words: [String]) throws(CLIError) -> RunInvocation {
        var result = RunInvocation()
        var i = 0
        func value(for option: String) throws(CLIError) -> String {
            i += 1
            guard i < words.count else { throw CLIError("run: \(option) needs a value") }
            return words[i]
        }
        while i < words.count {
            let word = words[i]
            if word == "--" { i += 1; break }
            if word == "--machine" {
                result.machine = try value(for: word)
            } else if word.hasPrefix("--machine=") {
                result.machine = String(word.dropFirst("--machine=".count))
            } else if word == "--trace" {
                result.trace = "stderr"
            } else if word.hasPrefix("--trace=") {
                let path = String(word.dropFirst("--trace=".count))
                result.trace = path.isEmpty ? "stderr" : path
            } else if word == "--leaks" {
                result.leaks = true
            } else if word == "--selftest-ops" {
                result.selftestOps = true
            } else if word == "--shared" {
                result.shared = true
            } else if word == "--server" {
                result.server = try value(for: word)
                result.shared = true
            } else if word.hasPrefix("--server=") {
                result.server = String(word.dropFirst("--server=".count))
                result.shared = true
            } else if word == "--grant-cap" {
                result.grantCapabilities = try value(for: word)
            } else if word.hasPrefix("--grant-cap=") {
                result.grantCapabilities = String(word.dropFirst("--grant-cap=".count))
            } else if word.hasPrefix("-") {
                throw CLIError("run: unknown option '\(word)' (see `uiommufd run --help`)")
            } else {
                break
            }
            i += 1
        }
        result.program = Array(words[i...])
        guard !result.program.isEmpty else {
            throw CLIError("run: no program given (usage: uiommufd run [options] -- PROGRAM ARGS…)")
        }
        if let machine = result.machine, machine.isEmpty { throw CLIError("run: --machine needs a file") }
        if let server = result.server, server.isEmpty { throw CLIError("run: --server needs a socket path") }
        if let caps = result.grantCapabilities { _ = try parseCapabilities(caps) }
        return result
    }

    /// The environment for the program: `base` with LD_PRELOAD and UIOMMUFD_* set.
    func environment(base: [String], preload: String, workingDirectory: String, serverSocket: String? = nil) -> [String] {
        func absolute(_ path: String) -> String {
            path.hasPrefix("/") || path == "stderr" ? path : workingDirectory + "/" + path
        }
        var settings: [(String, String?)] = [
            ("UIOMMUFD_MACHINE", machine.map(absolute)),
            // With a server, tracing and the leak check happen there.
            ("UIOMMUFD_TRACE", serverSocket == nil ? trace.map(absolute) : nil),
            ("UIOMMUFD_LEAKS", leaks && serverSocket == nil ? "1" : nil),
            ("UIOMMUFD_SELFTEST", selftestOps ? "1" : nil),
            ("UIOMMUFD_SERVER", serverSocket),
            ("UIOMMUFD_GRANT_CAP", serverSocket == nil ? grantCapabilities : nil),
        ]
        let existing = base.first { $0.hasPrefix("LD_PRELOAD=") }.map { String($0.dropFirst("LD_PRELOAD=".count)) }
        let preloads = [preload] + (existing ?? "").split(whereSeparator: { $0 == ":" || $0 == " " })
            .map(String.init).filter { $0 != preload }
        settings.append(("LD_PRELOAD", preloads.joined(separator: ":")))
        let names = Set(settings.map { $0.0 })
        var env = base.filter { entry in
            guard let eq = entry.firstIndex(of: "=") else { return true }
            return !names.contains(String(entry[..<eq]))
        }
        for (name, value) in settings { if let value { env.append("\(name)=\(value)") } }
        return env
    }
}

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a program with /dev/iommu served by uiommufd (LD_PRELOAD).",
        usage: "uiommufd run [--machine FILE] [--trace[=FILE]] [--leaks] [--selftest-ops] [--shared | --server PATH] [--grant-cap CAPS] -- PROGRAM ARGS…",
        discussion: """
        Options:
          --machine FILE    the simulated machine (default: the built-in one)
          --trace[=FILE]    one decoded line per ioctl, to stderr or appended to FILE
          --leaks           at exit, list every object still alive and the pinned pages
          --selftest-ops    serve IOMMU_TEST_CMD, as a kernel with CONFIG_IOMMUFD_TEST does
          --shared          keep the iommufd state in a server (started for this run), so that \
        fork, exec and SCM_RIGHTS share it as on Linux (~10-20 µs per ioctl instead of ~0.1 µs)
          --server PATH     use the server already listening at PATH (`uiommufd serve`); \
        --shared reuses the one UIOMMUFD_SERVER names, if it answers
          --grant-cap CAPS  treat the program as holding CAP_IPC_LOCK / CAP_SYS_RESOURCE \
        (ipc_lock,sys_resource) in the simulated kernel, for containers that drop them

        The program must be dynamically linked (LD_PRELOAD does not reach static binaries, raw \
        system calls or io_uring). Without --shared its state lives in its own process: a child \
        that uses an inherited iommufd after fork works on its own copy, and after exec the \
        descriptor is no longer served (ioctls then fail with ENOTTY). The preload library is found next to this \
        executable; set UIOMMUFD_PRELOAD to use another. Exit status: the program's, or 128+N \
        if signal N ended it; 127 if it cannot be started.
        """)

    @Argument(parsing: .captureForPassthrough, help: .hidden)
    var words: [String] = []

    func run() throws {
        if let first = words.first, first == "--help" || first == "-h" {
            throw CleanExit.helpRequest(self)
        }
        let invocation = try RunInvocation.parse(words)
        if let machine = invocation.machine { _ = try loadMachine(machine) }
        let preload = try Self.preloadLibrary()
        let cwd = Self.currentDirectory()
        var base: [String] = []
        var p = environ
        while let entry = p.pointee { base.append(String(cString: entry)); p += 1 }
        var server: IOMMUServer?
        var socketPath = invocation.server
        // Reuse the server this environment already names (a program run by a program that
        // itself runs under `--shared`), if it answers.
        if invocation.shared && socketPath == nil, let named = getenv("UIOMMUFD_SERVER").map({ String(cString: $0) }),
           !named.isEmpty, queryServerStatus(socketPath: named) != nil {
            socketPath = named
        }
        if invocation.shared && socketPath == nil {
            let started = try Self.startPrivateServer(invocation, workingDirectory: cwd)
            server = started.server
            socketPath = started.path
        }
        let env = invocation.environment(base: base, preload: preload, workingDirectory: cwd, serverSocket: socketPath)
        let status = try Self.spawnAndWait(invocation.program, environment: env)
        if let server {
            // The program's descriptors closed when it exited; give the server a moment to
            // see the hang-ups before reporting.
            if invocation.leaks { Self.reportServerLeaks(server) }
            server.stop()
            if let path = socketPath { Self.removePrivateDirectory(of: path) }
        }
        throw ExitCode(status)
    }

    /// A server for this run only, on a socket in a fresh private directory, served by threads of
    /// this process (the program's parent, so it may read the program's memory).
    static func startPrivateServer(_ invocation: RunInvocation, workingDirectory: String) throws -> (server: IOMMUServer, path: String) {
        var template = Array("/tmp/uiommufd-run-XXXXXX".utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw CLIError("run: cannot create a directory for the server socket: \(String(cString: strerror(errno)))")
        }
        let path = String(cString: dir) + "/iommu.sock"
        let trace = try invocation.trace.map { path -> @Sendable (String) -> Void in
            try traceSink(path.hasPrefix("/") || path == "stderr" ? path : workingDirectory + "/" + path)
        }
        let configuration = ServerConfiguration(
            socketPath: path, socketMode: 0o600, machine: try loadMachine(invocation.machine),
            selftestOps: invocation.selftestOps, trace: trace,
            grantedCapabilities: try invocation.grantCapabilities.map(parseCapabilities) ?? 0)
        let server = IOMMUServer(configuration: configuration)
        do throws(ServerError) { try server.listen() } catch { throw CLIError("run: \(error.description)") }
        final class Box: @unchecked Sendable { let server: IOMMUServer; init(_ s: IOMMUServer) { server = s } }
        var thread = pthread_t()
        let box = Unmanaged.passRetained(Box(server)).toOpaque()
        pthread_create(&thread, nil, { raw in
            Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().server.run()
            return nil
        }, box)
        pthread_detach(thread)
        return (server, path)
    }

    static func reportServerLeaks(_ server: IOMMUServer) {
        var lines = server.statusLines()
        for _ in 0..<100 where !lines[0].hasPrefix("contexts 0 open") {
            usleep(10_000)
            lines = server.statusLines()
        }
        let clean = lines[0].hasPrefix("contexts 0 open") && lines[0].hasSuffix("objects 0, pinned pages 0")
        let verdict = clean ? "no leaks" : "LEAKS"
        var text = "uiommufd: leak check of the shared server: \(verdict) — \(lines[0])\n"
        for line in lines.dropFirst() { text += "uiommufd: \(line)\n" }
        _ = text.withCString { write(2, $0, strlen($0)) }
    }

    static func removePrivateDirectory(of socketPath: String) {
        unlink(socketPath)
        let dir = socketPath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        rmdir(dir)
    }

    /// libuiommufd-preload.so next to this executable, or $UIOMMUFD_PRELOAD.
    static func preloadLibrary() throws(CLIError) -> String {
        if let p = getenv("UIOMMUFD_PRELOAD"), p.pointee != 0 {
            let path = String(cString: p)
            guard access(path, R_OK) == 0 else {
                throw CLIError("run: UIOMMUFD_PRELOAD=\(path): \(String(cString: strerror(errno)))")
            }
            return path
        }
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { throw CLIError("run: cannot find this executable (/proc/self/exe)") }
        let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let directory = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let path = directory + "/libuiommufd-preload.so"
        guard access(path, R_OK) == 0 else {
            throw CLIError("run: \(path) is missing; build it with `swift build` (all products), or set UIOMMUFD_PRELOAD")
        }
        return path
    }

    static func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buffer, buffer.count) != nil else { return "." }
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// posix_spawnp + waitpid. SIGINT and SIGQUIT are ignored while the program runs (the
    /// terminal sends them to both of us; the program decides), and restored in the child.
    static func spawnAndWait(_ argv: [String], environment: [String]) throws -> Int32 {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGINT)
        sigaddset(&defaults, SIGQUIT)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF))

        let previousInt = signal(SIGINT, SIG_IGN)
        let previousQuit = signal(SIGQUIT, SIG_IGN)
        defer { signal(SIGINT, previousInt); signal(SIGQUIT, previousQuit) }

        var pid: pid_t = 0
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = environment.map { strdup($0) } + [nil]
        defer { for p in cArgv + cEnv { free(p) } }
        let rc = posix_spawnp(&pid, argv[0], nil, &attributes, cArgv, cEnv)
        guard rc == 0 else {
            // The shell's convention: 127 not found, 126 found but not runnable.
            let reason = rc == ENOENT ? "command not found" : String(cString: strerror(rc))
            let line = "Error: run: \(argv[0]): \(reason)\n"
            _ = line.withCString { write(2, $0, strlen($0)) }
            throw ExitCode(rc == ENOENT ? 127 : 126)
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw CLIError("run: waitpid: \(String(cString: strerror(errno)))") }
        }
        let low = status & 0x7f
        if low == 0 { return (status >> 8) & 0xff }   // exited
        return 128 + low                               // killed by signal `low`
    }
}
