// `uiommufd serve`: one process owns the iommufd contexts that client processes share.
//
// Why a server: on Linux an iommufd is one kernel object. A forked child, an exec'ed program and
// a process that received the descriptor over SCM_RIGHTS all act on the same IOAS, HWPTs and
// pins (seed 002: libvirt opens /dev/iommu and passes it to QEMU). State kept inside each
// process cannot do that; a server can, at the price of a socket round trip per call.
//
// Threads: one accepts connections; one per connection reads it (channel requests, hang-up);
// one per channel serves that process's calls. The engine serialises per context, and the
// platform (devices, groups, IOMMU units, the pin ledger) is shared by all, as on one host.
//
// Memory: a client's user memory is reached with process_vm_readv/writev (the pid comes from
// SO_PEERCRED of the channel, which the kernel fills in); pinned pages get physical addresses
// in a window of their own (HostPhysicalMemory), and a client that exits normally first lets
// the server copy the pages it has pinned, so DMA and access objects keep working on them
// after the process is gone, as pinned pages do on Linux.

public import IOMMUHardware
import IOMMUABI
import CUIOMMUWire
import IOMMUEngine
import ProcessMemory
import UIOMMUBase
#if canImport(Glibc)
import Glibc
#endif

/// What `uiommufd serve` is told.
public struct ServerConfiguration: Sendable {
    /// The listening socket's path.
    public var socketPath: String
    /// Its mode: who may open /dev/iommu (like the device node's mode).
    public var socketMode: UInt32
    public var machine: MachineDescription
    /// Serve IOMMU_TEST_CMD (the kernel's CONFIG_IOMMUFD_TEST).
    public var selftestOps: Bool
    /// Receives one decoded line per ioctl, prefixed with the calling pid and the context.
    public var trace: (@Sendable (String) -> Void)?
    /// Capabilities every client is treated as having (a capability mask; bit 14 is
    /// CAP_IPC_LOCK, bit 24 CAP_SYS_RESOURCE), for hosts whose containers drop them.
    public var grantedCapabilities: UInt64

    public init(socketPath: String, socketMode: UInt32 = 0o660, machine: MachineDescription = .default,
                selftestOps: Bool = false, trace: (@Sendable (String) -> Void)? = nil, grantedCapabilities: UInt64 = 0) {
        self.socketPath = socketPath; self.socketMode = socketMode; self.machine = machine
        self.selftestOps = selftestOps; self.trace = trace; self.grantedCapabilities = grantedCapabilities
    }
}

public struct ServerError: Error, CustomStringConvertible {
    public var description: String
}

public final class IOMMUServer: @unchecked Sendable {
    public let configuration: ServerConfiguration
    let platform: Platform
    let physical: HostPhysicalMemory
    let options: ABIOptions
    var grantedCapabilities: UInt64 { configuration.grantedCapabilities }

    private let lock = Lock()
    private var listener: Int32 = -1
    private var contexts: [ObjectIdentifier: ServedContext] = [:]
    private var serial = 0
    private var openedTotal = 0
    /// Each client process's memory, shared by all its channels (pins of one page by two
    /// contexts are pins of one physical page). Weak: the engine's pages keep it alive.
    private var memories: [Int32: WeakMemory] = [:]

    private struct WeakMemory { weak var memory: RemoteProcessMemory? }

    public init(configuration: ServerConfiguration) {
        self.configuration = configuration
        physical = HostPhysicalMemory()
        platform = Platform(machine: configuration.machine, physicalMemory: physical)
        options = ABIOptions(selftestOps: configuration.selftestOps, trace: configuration.trace)
        if configuration.selftestOps { platform.ledger.physicalPins.startTracking() }
    }

    /// Binds and listens. A stale socket file (nobody accepting) is replaced; a live server
    /// at the path is an error.
    public func listen() throws(ServerError) {
        let path = configuration.socketPath
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.utf8.count < capacity else { throw ServerError(description: "socket path too long: \(path)") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8)
            raw[path.utf8.count] = 0
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.utf8.count + 1)
        if Self.isLive(&address, length) { throw ServerError(description: "a server is already listening on \(path)") }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw ServerError(description: "\(path) exists and is not a socket") }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ServerError(description: "socket: \(String(cString: strerror(errno)))") }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw ServerError(description: "cannot bind \(path): \(message)")
        }
        chmod(path, mode_t(configuration.socketMode))
        guard Glibc.listen(fd, 128) == 0 else {
            close(fd)
            throw ServerError(description: "listen: \(String(cString: strerror(errno)))")
        }
        lock.withLock { listener = fd }
    }

    private static func isLive(_ address: inout sockaddr_un, _ length: socklen_t) -> Bool {
        let probe = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard probe >= 0 else { return false }
        defer { close(probe) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(probe, $0, length) == 0 }
        }
    }

    /// Accepts connections until `stop()` (or a fatal accept error). Each connection is an
    /// open of /dev/iommu: a new context.
    public func run() {
        while true {
            let fd = lock.withLock { listener }
            guard fd >= 0 else { return }
            let connection = uiommu_wire_accept(fd)
            if connection < 0 {
                let e = -connection
                if e == EINTR || e == ECONNABORTED || e == EMFILE || e == ENFILE { continue }
                return
            }
            accept(connection)
        }
    }

    /// Stops accepting and removes the socket file. Existing connections keep working until
    /// their clients close them.
    public func stop() {
        let fd = lock.withLock { () -> Int32 in
            let fd = listener
            listener = -1
            return fd
        }
        if fd >= 0 {
            shutdown(fd, Int32(SHUT_RDWR))
            close(fd)
            unlink(configuration.socketPath)
        }
    }

    private func accept(_ connection: Int32) {
        var pid: Int32 = 0, uid: UInt32 = 0, gid: UInt32 = 0
        guard uiommu_wire_peer(connection, &pid, &uid, &gid) == 0,
              let memory = try? memory(pid: pid, uid: uid) else {
            close(connection)   // the opener vanished before we looked
            return
        }
        var options = self.options
        options.pinPolicy = ProcessFacts.pinPolicy(pid: pid, granted: grantedCapabilities)
        let file = IOMMUFDFile(platform: platform, memory: memory, user: RefusingUserMemory(),
                               broker: RefusingBroker(), options: options)
        let context = lock.withLock { () -> ServedContext in
            serial += 1
            openedTotal += 1
            let context = ServedContext(server: self, connection: connection, file: file, serial: serial, openerPID: pid)
            contexts[ObjectIdentifier(context)] = context
            return context
        }
        // The kernel's iommufd has no poll method: poll and select always report it readable
        // and writable. One message queued on the client's end (the client never reads its
        // connection) makes the socket readable for good.
        var ready = uiommu_wire_reply()
        _ = withUnsafeBytes(of: &ready) { uiommu_wire_send(connection, $0.baseAddress, $0.count, nil, 0, -1) }
        if !startThread({ context.serveConnection() }) { context.closeConnection() }
    }

    func contextClosed(_ context: ServedContext, handedOff: Bool = false) {
        lock.withLock {
            contexts.removeValue(forKey: ObjectIdentifier(context))
            if handedOff { openedTotal -= 1 }   // it was a VFIO device all along
        }
    }

    /// Records `context`'s client end (IDENTIFY). The first claim of an identity wins, and a
    /// context claims once: the opener sends IDENTIFY before its open() returns, so no other
    /// process can hold that descriptor yet.
    func claimIdentity(dev: UInt64, ino: UInt64, for context: ServedContext) -> Bool {
        lock.withLock {
            guard context.identity == nil,
                  !contexts.values.contains(where: { $0.identity.map { $0 == (dev, ino) } ?? false }) else { return false }
            context.identity = (dev, ino)
            return true
        }
    }

    /// The open context whose clients' end is (dev, ino).
    func context(dev: UInt64, ino: UInt64) -> ServedContext? {
        lock.withLock { contexts.values.first { $0.identity.map { $0 == (dev, ino) } ?? false } }
    }

    // MARK: VFIO devices

    private var vfioStorage: VFIOSubsystem?
    private var devices: [ObjectIdentifier: ServedDevice] = [:]

    /// The VFIO subsystem of the server's platform (made on the first device open). Its user
    /// memory and descriptors are those of the process whose call is being served.
    var vfio: VFIOSubsystem {
        lock.withLock {
            if let v = vfioStorage { return v }
            if let trace = options.trace {
                // Device DMA faults as the kernel would log them.
                for unit in platform.units where unit.faultHandler == nil {
                    let spec = unit.spec
                    unit.faultHandler = { fault in trace(fault.kernelLogLine(unit: spec)) }
                }
            }
            let v = VFIOSubsystem(platform: platform, host: ServerVFIOHost(server: self), user: CurrentChannelUserMemory(),
                                  trace: options.trace)
            vfioStorage = v
            return v
        }
    }

    /// VFIO_OPEN: /dev/vfio/devices/vfio<index> on `connection`. Answers on the connection;
    /// the device file serving it, or nil (the open failed).
    func openDevice(connection: Int32, index: UInt64, flags: UInt64) -> ServedDevice? {
        let vfio = self.vfio
        guard index < UInt64(vfio.devices.count) else {
            answerFirst(on: connection, -Int64(ENOENT))
            return nil
        }
        let file = vfio.openDevice(vfio.devices[Int(index)])
        let device = ServedDevice(server: self, connection: connection, file: file)
        lock.withLock { devices[ObjectIdentifier(device)] = device }
        let numbers = file.deviceNumber
        answerFirst(on: connection, 0, aux: UInt64(numbers.major) << 32 | UInt64(numbers.minor))
        return device
    }

    /// VFIO_GROUP_OPEN: group `id` held open for a client's group file. Answers on the
    /// connection; nil if it cannot be opened (ENOENT, EBUSY).
    func holdGroup(connection: Int32, id: UInt64) -> VFIOGroupFile? {
        let vfio = self.vfio
        guard id <= UInt64(Int.max), let group = vfio.group(id: Int(id)) else {
            answerFirst(on: connection, -Int64(ENOENT))
            return nil
        }
        switch vfio.openGroup(group) {
        case .success(let file):
            answerFirst(on: connection, 0)
            return file
        case .failure(let e):
            answerFirst(on: connection, -Int64(e.errno.rawValue))
            return nil
        }
    }

    /// Keeps `file` open until every client descriptor of the connection is closed, then
    /// releases it. HELLO attaches a channel whose CLOSED makes the release synchronous with
    /// the client's close(), as for the other files; other messages are ignored.
    func serveGroupHold(connection: Int32, _ file: VFIOGroupFile) {
        let hold = GroupHold(connection: connection, file: file)
        readConnection(connection) { header, received in
            if header?.op == UInt32(UIOMMU_WIRE_HELLO.rawValue) && received >= 0 {
                startChannel(received) { (pid, uid) throws(IOMMUError) in GroupHoldChannel(fd: received, pid: pid, uid: uid, hold: hold, server: self) }
            } else if received >= 0 {
                close(received)
            }
            return true
        }
        hold.close()
    }

    func deviceClosed(_ device: ServedDevice) {
        _ = lock.withLock { devices.removeValue(forKey: ObjectIdentifier(device)) }
    }

    /// Answers a connection's first message on the connection itself (only the opener holds
    /// it yet), then queues the readiness message that keeps the client's descriptor
    /// poll-readable (no poll method: always readable).
    func answerFirst(on connection: Int32, _ result: Int64, aux: UInt64 = 0) {
        var reply = uiommu_wire_reply()
        reply.op = UInt32(UIOMMU_WIRE_REPLY.rawValue)
        reply.result = result
        reply.aux = aux
        _ = withUnsafeBytes(of: &reply) { uiommu_wire_send(connection, $0.baseAddress, $0.count, nil, 0, -1) }
        var ready = uiommu_wire_reply()
        _ = withUnsafeBytes(of: &ready) { uiommu_wire_send(connection, $0.baseAddress, $0.count, nil, 0, -1) }
    }

    // MARK: Client memory

    /// The address space of client `pid` (one object per live process).
    func memory(pid: Int32, uid: UInt32) throws(IOMMUError) -> RemoteProcessMemory {
        try lock.withLock { () throws(IOMMUError) -> RemoteProcessMemory in
            if let existing = memories[pid]?.memory, existing.isAlive, existing.owner.uid == uid { return existing }
            let fresh = try RemoteProcessMemory(pid: pid, uid: uid, physicalMemory: physical)
            memories[pid] = WeakMemory(memory: fresh)
            memories = memories.filter { $0.value.memory != nil }
            return fresh
        }
    }

    /// A client is exiting: copy the pages pinned from it so they outlive it.
    func preserveMemory(pid: Int32) {
        let memory = lock.withLock { memories[pid]?.memory }
        _ = try? memory?.preservePinnedPages()
    }

    // MARK: Status

    /// The server's state: contexts open, objects alive, pages pinned.
    public func statusLines() -> [String] {
        let open = lock.withLock { contexts.values.sorted { $0.serial < $1.serial } }
        let objects = open.reduce(0) { $0 + $1.file.context.objects().count }
        let pinned = platform.ledger.totalPinnedPages
        var lines = ["contexts \(open.count) open (\(lock.withLock { openedTotal }) opened), objects \(objects), pinned pages \(pinned)"]
        let openDevices = lock.withLock { Array(devices.values) }
        if !openDevices.isEmpty { lines.append("VFIO device files \(openDevices.count) open") }
        for context in open {
            lines.append("  iommufd #\(context.serial) (opened by pid \(context.openerPID)): \(context.file.context.objects().count) object(s)")
            for line in context.objectLines { lines.append("    \(line)") }
        }
        return lines
    }

    func sendStatus(on connection: Int32) {
        var text = statusLines().joined(separator: "\n")
        text.append("\n")
        var reply = uiommu_wire_reply()
        reply.op = UInt32(UIOMMU_WIRE_REPLY.rawValue)
        var bytes = Array(text.utf8.prefix(Int(UIOMMU_WIRE_PAYLOAD_MAX)))
        reply.length = UInt32(bytes.count)
        _ = withUnsafeBytes(of: &reply) { h in
            bytes.withUnsafeMutableBytes { uiommu_wire_send(connection, h.baseAddress, h.count, $0.baseAddress, $0.count, -1) }
        }
    }
}

/// Reads a connection until every client descriptor of it is closed (end of stream). Each
/// message goes to `handle` with the descriptor it carried (-1 if none), which `handle` now
/// owns; a message that is not exactly one request header comes as nil. `handle` returns false
/// when it handed the connection on; the result says whether the stream ended.
@discardableResult
func readConnection(_ connection: Int32, _ handle: (uiommu_wire_request?, Int32) -> Bool) -> Bool {
    var header = uiommu_wire_request()
    let size = MemoryLayout<uiommu_wire_request>.size
    while true {
        var received: Int32 = -1
        let n = withUnsafeMutableBytes(of: &header) { uiommu_wire_receive(connection, $0.baseAddress, size, &received) }
        if n <= 0 && n != -Int(EMSGSIZE) { return true }
        if !handle(n == size ? header : nil, received) { return false }
    }
}

/// The context's own file is never called directly (only its views are).
final class RefusingUserMemory: UserMemoryAccess, @unchecked Sendable {
    func copyFromUser(_ destination: UnsafeMutableRawPointer, _ uptr: UInt64, _ count: Int) -> Bool { false }
    func copyToUser(_ uptr: UInt64, _ source: UnsafeRawPointer, _ count: Int) -> Bool { false }
}

final class RefusingBroker: FileDescriptorBroker, @unchecked Sendable {
    func install(_ file: any AuxiliaryFile) -> Int32 { -Int32(EBADF) }
    func fileMemory(fd: Int32) -> (any PinnableMemory)? { nil }
}

/// Asks a running server for its status (the first message on a fresh connection). Returns
/// the report's lines, or nil if no server answers at `socketPath`.
public func queryServerStatus(socketPath: String) -> String? {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    guard socketPath.utf8.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: socketPath.utf8)
        raw[socketPath.utf8.count] = 0
    }
    let length = socklen_t(MemoryLayout<sa_family_t>.size + socketPath.utf8.count + 1)
    let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) == 0 }
    }
    guard connected else { return nil }
    var request = uiommu_wire_request()
    request.op = UInt32(UIOMMU_WIRE_STATUS.rawValue)
    guard withUnsafeBytes(of: &request, { uiommu_wire_send(fd, $0.baseAddress, $0.count, nil, 0, -1) }) == 0 else { return nil }
    let size = MemoryLayout<uiommu_wire_reply>.size + Int(UIOMMU_WIRE_PAYLOAD_MAX)
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
    defer { buffer.deallocate() }
    var received: Int32 = -1
    var n = 0
    repeat {   // skip the readiness message every connection starts with (op 0)
        n = uiommu_wire_receive(fd, buffer, size, &received)
        if received >= 0 { close(received) }
    } while n >= MemoryLayout<uiommu_wire_reply>.size && buffer.load(as: UInt32.self) != UInt32(UIOMMU_WIRE_REPLY.rawValue)
    guard n >= MemoryLayout<uiommu_wire_reply>.size else { return nil }
    let header = MemoryLayout<uiommu_wire_reply>.size
    return String(decoding: UnsafeRawBufferPointer(start: buffer + header, count: n - header), as: UTF8.self)
}
