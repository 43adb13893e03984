// `uiommufd serve [--socket PATH] [--mode OCTAL] [--machine FILE] [--selftest-ops] [--trace[=FILE]]
//                 [--grant-cap CAP,…] [--status]`
//
// Runs the server that shares iommufd contexts across processes (see Sources/IOMMUServer).
// Programs reach it with `uiommufd run --server PATH -- PROG` (or UIOMMUFD_SERVER=PATH and the
// preload library). SIGINT/SIGTERM stop it; the state it still holds is reported then.

import ArgumentParser
import IOMMUFD
import IOMMUServer
#if canImport(Glibc)
import Glibc
#endif

/// Where a server listens unless told otherwise: $XDG_RUNTIME_DIR/uiommufd.sock, else
/// /tmp/uiommufd-<uid>.sock.
func defaultServerSocket() -> String {
    if let dir = getenv("XDG_RUNTIME_DIR"), dir.pointee != 0 { return String(cString: dir) + "/uiommufd.sock" }
    return "/tmp/uiommufd-\(getuid()).sock"
}

/// `--grant-cap ipc_lock,sys_resource` → a capability mask.
func parseCapabilities(_ text: String) throws(CLIError) -> UInt64 {
    var mask: UInt64 = 0
    for name in text.split(separator: ",") {
        switch name.lowercased().replacingOccurrences(of: "cap_", with: "") {
        case "ipc_lock": mask |= 1 << 14
        case "sys_resource": mask |= 1 << 24
        default: throw CLIError("--grant-cap: unknown capability '\(name)' (ipc_lock, sys_resource)")
        }
    }
    return mask
}

/// A trace sink: one write(2) per line to stderr or appended to a file.
func traceSink(_ path: String) throws(CLIError) -> @Sendable (String) -> Void {
    let fd: Int32
    if path == "stderr" || path == "-" {
        fd = 2
    } else {
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CLIError("--trace=\(path): \(String(cString: strerror(errno)))") }
    }
    return { line in
        var text = "[uiommufd] " + line
        text.append("\n")
        _ = text.withCString { write(fd, $0, strlen($0)) }
    }
}

extension String {
    fileprivate func replacingOccurrences(of prefix: String, with: String) -> String {
        hasPrefix(prefix) ? with + dropFirst(prefix.count) : self
    }
}

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve /dev/iommu to processes that share iommufd contexts (fork, exec, SCM_RIGHTS).",
        discussion: """
        Each open of /dev/iommu in a client is a connection to this server and a new context; \
        the descriptor the program gets is the connection itself, so fork, exec and SCM_RIGHTS \
        share it, and the context is released when the last holder closes it. Clients are \
        programs run with `uiommufd run --server PATH` (or with UIOMMUFD_SERVER=PATH and the \
        preload library). The socket's mode decides who may open /dev/iommu, as the device \
        node's does. The server reads and writes a client's memory with process_vm_readv/writev, \
        so it must be allowed to ptrace its clients (same user, or CAP_SYS_PTRACE; the clients \
        grant it past Yama themselves).
        """)

    @Option(name: .long, help: "The socket path (default: $XDG_RUNTIME_DIR/uiommufd.sock or /tmp/uiommufd-UID.sock).")
    var socket: String?
    @Option(name: .long, help: "The socket's mode, octal.")
    var mode: String = "660"
    @Option(name: .long, help: "The simulated machine (default: the built-in one).")
    var machine: String?
    @Flag(name: .long, help: "Serve IOMMU_TEST_CMD, as a kernel with CONFIG_IOMMUFD_TEST does.")
    var selftestOps = false
    @Option(name: .long, help: "Trace every ioctl to stderr or FILE.")
    var trace: String?
    @Option(name: .customLong("grant-cap"), help: "Treat every client as holding these capabilities (ipc_lock, sys_resource).")
    var grantCap: String?
    @Flag(name: .long, help: "Print the status of the server listening on the socket, and exit.")
    var status = false

    func run() throws {
        let path = socket ?? defaultServerSocket()
        if status {
            guard let report = queryServerStatus(socketPath: path) else { throw CLIError("serve: no server answers at \(path)") }
            print(report, terminator: "")
            return
        }
        guard let socketMode = UInt32(mode, radix: 8), socketMode <= 0o777 else { throw CLIError("serve: --mode must be octal, e.g. 660") }
        let configuration = ServerConfiguration(
            socketPath: path, socketMode: socketMode, machine: try loadMachine(machine), selftestOps: selftestOps,
            trace: try trace.map { try traceSink($0) }, grantedCapabilities: try grantCap.map(parseCapabilities) ?? 0)
        let server = IOMMUServer(configuration: configuration)
        do throws(ServerError) { try server.listen() } catch { throw CLIError("serve: \(error.description)") }
        ServeCommand.stopOnSignal(server)
        let line = "uiommufd: serving /dev/iommu on \(path)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
        server.run()
        for line in server.statusLines() { print("uiommufd: " + line) }
    }

    /// SIGINT/SIGTERM: stop accepting (run() then returns). A thread waits for the signals so
    /// nothing unsafe runs in a signal handler.
    static func stopOnSignal(_ server: IOMMUServer) {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let waiter = SignalWaiter(server: server, set: set)
        var thread = pthread_t()
        let box = Unmanaged.passRetained(waiter).toOpaque()
        pthread_create(&thread, nil, { raw in
            let waiter = Unmanaged<SignalWaiter>.fromOpaque(raw!).takeRetainedValue()
            var set = waiter.set
            var signal: Int32 = 0
            sigwait(&set, &signal)
            waiter.server.stop()
            return nil
        }, box)
    }
}

final class SignalWaiter: @unchecked Sendable {
    let server: IOMMUServer
    let set: sigset_t
    init(server: IOMMUServer, set: sigset_t) { self.server = server; self.set = set }
}
