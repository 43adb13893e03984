// The preload library's process-wide state, built on the first open of /dev/iommu (never at
// load time: a program that never opens /dev/iommu runs no Swift code at all).
//
// Configuration comes from the environment, which `uiommufd run` sets:
//   UIOMMUFD_MACHINE=FILE    the simulated machine (default: the built-in one)
//   UIOMMUFD_SELFTEST=1      serve IOMMU_TEST_CMD (the kernel's CONFIG_IOMMUFD_TEST)
//   UIOMMUFD_TRACE=FILE|stderr   one decoded line per ioctl, written with write(2)
//   UIOMMUFD_LEAKS=1         at exit, report every object still alive and the pinned pages
//   UIOMMUFD_UACCESS=safe    reach user memory with process_vm_readv/writev instead of the
//                            SIGSEGV guard (for programs that own SIGSEGV)
//   UIOMMUFD_GRANT_CAP=ipc_lock,sys_resource   capabilities the simulated kernel grants
//   UIOMMUFD_SERVER=PATH     client mode: /dev/iommu is served by `uiommufd serve` at PATH
//                            (handled entirely by the C half, Sources/CUIOMMUInterpose/client.c)
//
// Fork: all of this lives in the process's memory, so a child gets a copy of it. A child that
// uses an inherited iommufd works on its own copy of the objects; the parent is unaffected, and
// the two diverge (the kernel would share one file). After exec the descriptor stays open but
// the new program's interposer does not know it: the kernel answers its ioctls (ENOTTY).

import CUIOMMUInterpose
import IOMMUABI
import IOMMUEngine
import IOMMUHardware
import ProcessMemory
import UIOMMUBase
#if canImport(Glibc)
import Glibc
#endif

/// One open iommufd as the C half holds it (an Unmanaged reference in its handle).
final class OpenFile: @unchecked Sendable {
    let file: IOMMUFDFile
    /// Open order, for the leak report.
    let serial: Int
    init(file: IOMMUFDFile, serial: Int) { self.file = file; self.serial = serial }
}

/// An auxiliary file (access, fault queue, vEVENTQ) as the C half holds it.
final class AuxFile: @unchecked Sendable {
    let file: any AuxiliaryFile
    /// The C handle, for readiness signalling (set once installed).
    var handle: UnsafeMutableRawPointer?
    init(file: any AuxiliaryFile) { self.file = file }

    /// Makes poll(POLLIN) on the descriptor agree with the file.
    func syncReadiness() {
        guard let handle else { return }
        uiommu_aux_set_readable(handle, file.isReadable ? 1 : 0)
    }
}

/// The process-wide state behind every iommufd of this process.
final class PreloadRuntime: @unchecked Sendable {
    let platform: Platform
    let options: ABIOptions

    private let lock = Lock()
    private var open: [ObjectIdentifier: OpenFile] = [:]
    private var aux: [ObjectIdentifier: AuxFile] = [:]
    private var serial = 0

    /// The runtime, or the one-line reason it cannot exist (a bad UIOMMUFD_MACHINE file).
    static let shared: Result<PreloadRuntime, SetupError> = {
        do throws(SetupError) {
            return .success(try PreloadRuntime())
        } catch {
            diagnostic("uiommufd: \(error.message); /dev/iommu is unavailable")
            return .failure(error)
        }
    }()

    struct SetupError: Error { var message: String }

    private init() throws(SetupError) {
        let env = Environment()
        // Opening these would re-enter the open of /dev/iommu being served.
        for (name, path) in [("UIOMMUFD_MACHINE", env.machinePath), ("UIOMMUFD_TRACE", env.tracePath)]
        where path == "/dev/iommu" {
            throw SetupError(message: "\(name)=/dev/iommu is not a file uiommufd can use")
        }
        let machine: MachineDescription
        if let path = env.machinePath {
            let text: String
            do { text = try readFile(path) } catch { throw SetupError(message: "UIOMMUFD_MACHINE=\(path): \(error.message)") }
            do { machine = try MachineDescription.parse(text, fileName: path) } catch {
                throw SetupError(message: error.description)
            }
        } else {
            machine = .default
        }
        platform = Platform(machine: machine, physicalMemory: LocalProcessMemory())
        if env.safeUserAccess { uiommu_set_uaccess_mode(1) }
        options = ABIOptions(selftestOps: env.selftest, trace: env.traceSink(),
                             pinPolicy: Self.pinPolicy(), canSetRlimitMode: Self.capabilities().sysResource)
        if env.leaks { uiommu_register_exit_report() }
    }

    /// RLIMIT_MEMLOCK and CAP_IPC_LOCK of the process, now.
    static func pinPolicy() -> PinPolicy {
        PinPolicy(memlockLimit: uiommu_memlock_limit(), privileged: capabilities().ipcLock)
    }

    static func capabilities() -> (ipcLock: Bool, sysResource: Bool) {
        var ipc: Int32 = 0, resource: Int32 = 0
        uiommu_capabilities(&ipc, &resource)
        let env = Environment()
        return (ipc != 0 || env.grantIPCLock, resource != 0 || env.grantSysResource)
    }

    // MARK: Open files

    func openFile() -> OpenFile {
        var options = self.options
        options.pinPolicy = Self.pinPolicy()   // the limit in force at open
        // Each file gets its own seam objects: threads on different files share no reference
        // counts.
        let file = IOMMUFDFile(platform: platform, memory: LocalProcessMemory(), user: GuardedUserMemory(),
                               broker: PreloadBroker(), options: options)
        return lock.withLock {
            serial += 1
            let entry = OpenFile(file: file, serial: serial)
            open[ObjectIdentifier(entry)] = entry
            return entry
        }
    }

    func closed(_ entry: OpenFile) {
        _ = lock.withLock { open.removeValue(forKey: ObjectIdentifier(entry)) }
    }

    var openFiles: [OpenFile] { lock.withLock { open.values.sorted { $0.serial < $1.serial } } }

    // MARK: Auxiliary files

    func added(_ entry: AuxFile) { lock.withLock { aux[ObjectIdentifier(entry)] = entry } }
    func removed(_ entry: AuxFile) { _ = lock.withLock { aux.removeValue(forKey: ObjectIdentifier(entry)) } }

    /// The auxiliary file descriptor `fd` refers to (fget), if it is one of ours.
    func auxFile(fd: Int32) -> AuxFile? {
        var fds = [Int32](repeating: -1, count: 16)
        for entry in lock.withLock({ Array(aux.values) }) {
            let n = Int(fds.withUnsafeMutableBufferPointer {
                uiommu_fds_of(Unmanaged.passUnretained(entry).toOpaque(), $0.baseAddress, 16)
            })
            if fds.prefix(min(n, 16)).contains(fd) { return entry }
        }
        return nil
    }

    /// After anything that may have queued or consumed events: poll readiness of every
    /// auxiliary descriptor follows its file.
    func syncAllReadiness() {
        guard uiommu_aux_count() > 0 else { return }
        for entry in lock.withLock({ Array(aux.values) }) { entry.syncReadiness() }
    }

    // MARK: Leak report

    func leakReport() -> [String] {
        let files = openFiles
        let pid = getpid()
        var lines: [String] = []
        var objects = 0
        for entry in files {
            let alive = entry.file.context.objects()
            objects += alive.count
            var fds = [Int32](repeating: -1, count: 16)
            let n = Int(fds.withUnsafeMutableBufferPointer {
                uiommu_fds_of(Unmanaged.passUnretained(entry).toOpaque(), $0.baseAddress, 16)
            })
            let where_ = n == 0 ? "no descriptor" : (n == 1 ? "fd " : "fds ") + fds.prefix(min(n, 16)).map(String.init).joined(separator: ", ")
            lines.append("uiommufd:   iommufd #\(entry.serial) (\(where_)): \(alive.count) object(s), \(entry.file.context.pinnedPages) page(s) pinned")
            for object in alive { lines.append("uiommufd:     \(object)") }
        }
        let pinned = platform.ledger.totalPinnedPages
        let verdict = objects == 0 && pinned == 0 ? "no leaks" : "LEAKS"
        lines.insert("uiommufd: leak check at exit of pid \(pid): \(verdict) — \(files.count) iommufd(s) open, "
                     + "\(objects) object(s) alive, \(pinned) page(s) pinned", at: 0)
        return lines
    }
}

/// One line to stderr with write(2) (no stdio: the program's buffers are its own).
func diagnostic(_ line: String) {
    var text = line
    text.append("\n")
    text.withUTF8 { _ = uiommu_raw_write_all(2, $0.baseAddress, $0.count) }
}

struct FileReadError: Error { var message: String }

/// Reads a whole file with open/read (the interposer passes them through).
func readFile(_ path: String) throws(FileReadError) -> String {
    let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw FileReadError(message: String(cString: strerror(errno))) }
    defer { _ = Glibc.close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw FileReadError(message: String(cString: strerror(errno)))
        }
        if n == 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}
