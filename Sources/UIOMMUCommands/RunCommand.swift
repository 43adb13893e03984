// `uiommufd run [--machine FILE] [--trace[=FILE]] [--leaks] [--selftest-ops] -- PROGRAM ARGS…`
//
// Runs an unmodified, dynamically linked program with /dev/iommu served by uiommufd: the
// preload library (libuiommufd-preload.so, built next to this executable by `swift build`) is
// put in front of LD_PRELOAD and configured through UIOMMUFD_* variables, the program is
// spawned, and its exit status becomes ours (128+N when signal N killed it).

import ArgumentParser
import IOMMUFD
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
        return result
    }

    /// The environment for the program: `base` with LD_PRELOAD and UIOMMUFD_* set.
    func environment(base: [String], preload: String, workingDirectory: String) -> [String] {
        func absolute(_ path: String) -> String {
            path.hasPrefix("/") || path == "stderr" ? path : workingDirectory + "/" + path
        }
        var settings: [(String, String?)] = [
            ("UIOMMUFD_MACHINE", machine.map(absolute)),
            ("UIOMMUFD_TRACE", trace.map(absolute)),
            ("UIOMMUFD_LEAKS", leaks ? "1" : nil),
            ("UIOMMUFD_SELFTEST", selftestOps ? "1" : nil),
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
        usage: "uiommufd run [--machine FILE] [--trace[=FILE]] [--leaks] [--selftest-ops] -- PROGRAM ARGS…",
        discussion: """
        Options:
          --machine FILE    the simulated machine (default: the built-in one)
          --trace[=FILE]    one decoded line per ioctl, to stderr or appended to FILE
          --leaks           at exit, list every object still alive and the pinned pages
          --selftest-ops    serve IOMMU_TEST_CMD, as a kernel with CONFIG_IOMMUFD_TEST does

        The program must be dynamically linked (LD_PRELOAD does not reach static binaries, raw \
        system calls or io_uring). Its state lives in its own process: a child that uses an \
        inherited iommufd after fork works on its own copy, and after exec the descriptor is no \
        longer served (ioctls then fail with ENOTTY). The preload library is found next to this \
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
        let env = invocation.environment(base: base, preload: preload, workingDirectory: cwd)
        let status = try Self.spawnAndWait(invocation.program, environment: env)
        throw ExitCode(status)
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
