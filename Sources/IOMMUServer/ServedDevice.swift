// One connection = one open file of /dev/vfio/devices/vfioN, served by the server so that the
// device can be bound to a served iommufd (seed 002: a VMM given an iommufd over SCM_RIGHTS,
// with vfio-pci cdevs). The same VFIODeviceFile code as the preload's, on the server's platform;
// what differs is the seams: user memory and descriptors are those of the process whose call is
// being served (the channel's thread says which), the device's DMA reaches client memory through
// the server's HostPhysicalMemory like any pinned page, and an interrupt eventfd is a duplicate
// the server fetched from the client (the kernel keeps an eventfd_ctx reference the same way).
//
// Lifetime, as the kernel's struct file: one reference for the connection's client
// descriptors (dropped at its hang-up, or at the CLOSED of the process that closed the last one,
// so close() is synchronous) and one per BAR mapping piece (VFIO_MAP_RETAIN/RELEASE, the vma's
// reference). A channel's mappings that were never released go when the channel ends (the
// process died: its vmas went with it). The last reference releases the device file
// (vfio_device_fops_release: unbind, disable).

import CUIOMMUWire
import IOMMUABI
import IOMMUEngine
import UIOMMUBase
#if canImport(Glibc)
import Glibc
#endif

final class ServedDevice: @unchecked Sendable {
    let server: IOMMUServer
    let connection: Int32
    let file: VFIODeviceFile

    private let lock = Lock()
    private var references = 1
    private var connectionClosed = false

    init(server: IOMMUServer, connection: Int32, file: VFIODeviceFile) {
        self.server = server; self.connection = connection; self.file = file
    }

    deinit { close(connection) }

    /// Reads the connection until every client descriptor of it is closed: HELLO attaches a
    /// channel; anything else is ignored.
    func serveConnection() {
        readConnection(connection) { header, received in
            if header?.op == UInt32(UIOMMU_WIRE_HELLO.rawValue) && received >= 0 {
                startChannel(received) { (pid, uid) throws(IOMMUError) in DeviceChannel(fd: received, pid: pid, uid: uid, device: self) }
            } else if received >= 0 {
                close(received)
            }
            return true
        }
        closeConnection()
    }

    /// The last client descriptor of the connection is closed. Idempotent.
    func closeConnection() {
        let first = lock.withLock { () -> Bool in
            if connectionClosed { return false }
            connectionClosed = true
            return true
        }
        if first { drop() }
    }

    /// Whether some process holds a BAR mapping of the file (mmap checked that it is bound):
    /// only then are accesses through a mapping served. A forked child's inherited mappings
    /// count through its parent's.
    var isMapped: Bool { lock.withLock { references > (connectionClosed ? 0 : 1) } }

    /// A reference for a BAR mapping; false once the file is released.
    func retain() -> Bool {
        lock.withLock {
            guard references > 0 else { return false }
            references += 1
            return true
        }
    }

    func drop() {
        let last = lock.withLock { () -> Bool in
            guard references > 0 else { return false }
            references -= 1
            return references == 0
        }
        guard last else { return }
        file.release()
        server.deviceClosed(self)
    }
}

/// A process's channel to a served VFIO device file.
final class DeviceChannel: Channel, @unchecked Sendable {
    let device: ServedDevice
    /// BAR mapping references this process holds (only the channel's thread touches it).
    private var mappings = 0

    init(fd: Int32, pid: Int32, uid: UInt32, device: ServedDevice) {
        self.device = device
        super.init(fd: fd, pid: pid, uid: uid)
    }

    override var helloAux: UInt64 { 1 }

    override func ended() {
        // The process died (or closed its channel) with mappings left: its vmas are gone.
        for _ in 0..<mappings { device.drop() }
        mappings = 0
    }

    override func handle(_ request: uiommu_wire_request, payload: UnsafeRawBufferPointer) {
        let file = device.file
        switch Int(request.op) {
        case Int(UIOMMU_WIRE_IOCTL.rawValue):
            user.setWindow(start: request.argument, bytes: payload)
            let result = CurrentChannel.with(self) { file.ioctl(UInt(truncatingIfNeeded: request.request), request.argument) }
            user.clearWindow()
            reply(result)
        case Int(UIOMMU_WIRE_VFIO_RW.rawValue):
            // The kernel's loff_t is signed: a negative offset is EINVAL (vfio_pci_rw).
            guard request.request <= 1, request.argument <= UInt64(Int64.max) else { return reply(-Int64(EINVAL)) }
            let write = request.request == 1
            let count = write ? payload.count : Int(min(UInt64(bitPattern: request.value), UInt64(UIOMMU_WIRE_PAYLOAD_MAX)))
            guard write || request.value >= 0 else { return reply(-Int64(EINVAL)) }
            if count == 0 { return reply(0) }
            let data = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 16)
            defer { data.deallocate() }
            if write { data.copyMemory(from: payload.baseAddress!, byteCount: count) }
            let n = CurrentChannel.with(self) {
                file.access(offset: Int64(request.argument), buffer: data, count: count, write: write)
            }
            reply(n, payload: !write && n > 0 ? UnsafeRawBufferPointer(start: data, count: Int(n)) : nil)
        case Int(UIOMMU_WIRE_VFIO_MMAP.rawValue):
            guard request.argument <= UInt64(Int64.max) else { return reply(-Int64(EINVAL)) }
            switch file.mmapRegion(length: request.request, offset: request.argument, shared: request.value == 1) {
            case .success(let r): reply(Int64(r.bar), aux: r.start)
            case .failure(let e): reply(-Int64(e.errno.rawValue))
            }
        case Int(UIOMMU_WIRE_VFIO_MMIO.rawValue):
            let bar = Int(request.request & 0xff), width = Int((request.request >> 8) & 0xff)
            let write = (request.request >> 16) & 1 == 1
            // Only what mmio.c decodes: a BAR index and a power-of-two width up to 8 bytes.
            guard bar < 6, width == 1 || width == 2 || width == 4 || width == 8, request.request >> 17 == 0,
                  device.isMapped, let b = file.device.function.bars[bar], request.argument < b.size,
                  UInt64(width) <= b.size - request.argument else { return reply(-Int64(EINVAL)) }
            let value = file.mmio(bar: bar, offset: request.argument, width: width, write: write,
                                  value: UInt64(bitPattern: request.value))
            reply(0, aux: value)
        case Int(UIOMMU_WIRE_VFIO_MAP_RETAIN.rawValue):
            guard device.retain() else { return reply(-Int64(EBADF)) }
            mappings += 1
            reply(0)
        case Int(UIOMMU_WIRE_VFIO_MAP_RELEASE.rawValue):
            // Only references this process took (a forked child's inherited mappings took none).
            guard mappings > 0 else { return reply(-Int64(EINVAL)) }
            mappings -= 1
            device.drop()
            reply(0)
        case Int(UIOMMU_WIRE_CLOSED.rawValue):
            // The process closed its last descriptor; if it was the last anywhere, release the
            // file now so the client's close() returns after the release, as the kernel's.
            if uiommu_wire_hung_up(device.connection) != 0 { device.closeConnection() }
            reply(0)
        case Int(UIOMMU_WIRE_EXITING.rawValue):
            device.server.preserveMemory(pid: pid)
            reply(0)
        default:
            reply(-Int64(EINVAL))
        }
    }
}

/// The channel whose request the calling thread serves (each channel has its own thread), so
/// that the one VFIO subsystem of the server reaches the right process's memory and descriptors.
enum CurrentChannel {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    static func with<T>(_ channel: DeviceChannel, _ body: () -> T) -> T {
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, Unmanaged.passUnretained(channel).toOpaque())
        defer { pthread_setspecific(key, previous) }
        return body()
    }

    static var current: DeviceChannel? {
        guard let raw = pthread_getspecific(key) else { return nil }
        return Unmanaged<DeviceChannel>.fromOpaque(raw).takeUnretainedValue()
    }
}

/// copy_from_user / copy_to_user of the process whose call is being served.
final class CurrentChannelUserMemory: UserMemoryAccess, @unchecked Sendable {
    func copyFromUser(_ destination: UnsafeMutableRawPointer, _ uptr: UInt64, _ count: Int) -> Bool {
        CurrentChannel.current?.user.copyFromUser(destination, uptr, count) ?? false
    }

    func copyToUser(_ uptr: UInt64, _ source: UnsafeRawPointer, _ count: Int) -> Bool {
        CurrentChannel.current?.user.copyToUser(uptr, source, count) ?? false
    }
}

/// An eventfd of a client: the server's own duplicate (fetched with CB_GET_FD), kept until the
/// interrupt is torn down, as the kernel's eventfd_ctx reference.
final class ServerEventFD: EventNotifier, @unchecked Sendable {
    let fd: Int32
    init(fd: Int32) { self.fd = fd }
    func signal() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }
    deinit { close(fd) }
}

/// The descriptor seam of the server's VFIO subsystem: descriptor numbers are the calling
/// client's, fetched with CB_GET_FD.
final class ServerVFIOHost: VFIOHost, @unchecked Sendable {
    unowned let server: IOMMUServer
    init(server: IOMMUServer) { self.server = server }

    private func fetch(_ fd: Int32) -> Int32? { CurrentChannel.current?.fetchDescriptor(fd) }

    func iommufd(fd: Int32) -> DescriptorLookup<IOMMUFDFile> {
        guard let received = fetch(fd) else { return .notOpen }
        defer { close(received) }
        var st = stat()
        guard fstat(received, &st) == 0, let context = server.context(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino)) else {
            // Not a served iommufd (an in-process /dev/vfio/vfio container is not one either).
            return .otherFile
        }
        return .file(context.file)
    }

    func eventNotifier(fd: Int32) -> Result<any EventNotifier, VFIOError> {
        guard let received = fetch(fd) else { return .failure(VFIOError(.EBADF)) }
        // eventfd_ctx_fdget: EINVAL for any other file.
        var target = [CChar](repeating: 0, count: 64)
        let n = readlink("/proc/self/fd/\(received)", &target, target.count - 1)
        let name = n > 0 ? String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        guard name == "anon_inode:[eventfd]" else {
            close(received)
            return .failure(VFIOError(.EINVAL))
        }
        return .success(ServerEventFD(fd: received))
    }

    func groupFile(fd: Int32) -> DescriptorLookup<VFIOGroupFile> {
        // Group files stay in the client process: none is ever one of the server's.
        guard let received = fetch(fd) else { return .notOpen }
        close(received)
        return .otherFile
    }

    func installDevice(_ file: VFIODeviceFile) -> Int32 {
        // Only group files install device files, and the server serves none.
        file.release()
        return -Int32(ENODEV)
    }
}

/// A group held open for a client's group file (VFIO_GROUP_OPEN).
final class GroupHold: @unchecked Sendable {
    let connection: Int32
    private let file: VFIOGroupFile
    private let lock = Lock()
    private var closed = false

    init(connection: Int32, file: VFIOGroupFile) { self.connection = connection; self.file = file }

    /// Every client descriptor is closed: release the group. Idempotent.
    func close() {
        let first = lock.withLock { () -> Bool in
            if closed { return false }
            closed = true
            return true
        }
        if first { file.release() }
    }

    deinit { Glibc.close(connection) }
}

/// A process's channel to a group hold: only CLOSED (and EXITING, answered) mean anything.
final class GroupHoldChannel: Channel, @unchecked Sendable {
    let hold: GroupHold
    unowned let server: IOMMUServer
    init(fd: Int32, pid: Int32, uid: UInt32, hold: GroupHold, server: IOMMUServer) {
        self.hold = hold
        self.server = server
        super.init(fd: fd, pid: pid, uid: uid)
    }

    override func handle(_ request: uiommu_wire_request, payload: UnsafeRawBufferPointer) {
        switch Int(request.op) {
        case Int(UIOMMU_WIRE_CLOSED.rawValue):
            if uiommu_wire_hung_up(hold.connection) != 0 { hold.close() }
            reply(0)
        case Int(UIOMMU_WIRE_EXITING.rawValue):
            // The process's one exit notice may arrive on any of its channels.
            server.preserveMemory(pid: pid)
            reply(0)
        default:
            reply(-Int64(EINVAL))
        }
    }
}
