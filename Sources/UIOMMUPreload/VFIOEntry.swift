// The Swift half of the VFIO files, BAR mappings and the virtual sysfs tree (the C half is
// Sources/CUIOMMUInterpose/vfio.c, mmio.c, sysfs.c; entry points declared in vfio_core.h).
// Every entry point runs inside the C half's gate.

import CUIOMMUInterpose
import IOMMUABI
import IOMMUEngine
import IOMMUHardware
import UIOMMUBase
#if canImport(Glibc)
import Glibc
#endif

/// A VFIO file as the C half holds it: one reference for its descriptors, one per BAR mapping
/// (the kernel's vma keeps the file). The file's release runs when the last goes.
final class VFIOFileBox: @unchecked Sendable {
    enum File {
        case device(VFIODeviceFile)
        case group(VFIOGroupFile)
    }
    let file: File
    private let lock = Lock()
    private var references = 1

    init(_ file: File) { self.file = file }

    func retain() { lock.withLock { references += 1 } }

    /// Drops a reference; true for the last.
    func drop() -> Bool { lock.withLock { references -= 1; return references == 0 } }

    var device: VFIODeviceFile? { if case .device(let d) = file { return d }; return nil }
}

/// The VFIO subsystem of this process (built with the runtime, on the first VFIO or sysfs use).
enum PreloadVFIO {
    static let subsystem: VFIOSubsystem? = {
        guard case .success(let runtime) = PreloadRuntime.shared else { return nil }
        // With --trace, device DMA faults are shown as the kernel would log them.
        if let trace = runtime.options.trace {
            for unit in runtime.platform.units where unit.faultHandler == nil {
                let spec = unit.spec
                unit.faultHandler = { fault in trace(fault.kernelLogLine(unit: spec)) }
            }
        }
        return VFIOSubsystem(platform: runtime.platform, host: PreloadVFIOHost(), user: GuardedUserMemory(),
                             trace: runtime.options.trace)
    }()
}

/// An eventfd the kernel would hold a reference to: a private duplicate descriptor.
final class EventFD: EventNotifier, @unchecked Sendable {
    let fd: Int32
    let identity: UInt64
    init(fd: Int32, identity: UInt64) { self.fd = fd; self.identity = identity }
    func signal() { uiommu_eventfd_signal(fd, identity) }
    deinit { uiommu_eventfd_unref(fd, identity) }
}

/// The descriptor seam of VFIO, over the C half's fd table.
final class PreloadVFIOHost: VFIOHost, @unchecked Sendable {
    func iommufd(fd: Int32) -> DescriptorLookup<IOMMUFDFile> {
        var state: Int32 = 0
        if let object = uiommu_fd_iommufd(fd, &state) {
            return .file(Unmanaged<OpenFile>.fromOpaque(object).takeUnretainedValue().file)
        }
        return state == 0 ? .otherFile : .notOpen
    }

    func eventNotifier(fd: Int32) -> Result<any EventNotifier, VFIOError> {
        var identity: UInt64 = 0
        let r = uiommu_eventfd_ref(fd, &identity)
        guard r >= 0 else { return .failure(VFIOError(LinuxErrno(rawValue: -r))) }
        return .success(EventFD(fd: r, identity: identity))
    }

    func groupFile(fd: Int32) -> DescriptorLookup<VFIOGroupFile> {
        var state: Int32 = 0
        if let object = uiommu_fd_vfio_group(fd, &state),
           case .group(let g) = Unmanaged<VFIOFileBox>.fromOpaque(object).takeUnretainedValue().file {
            return .file(g)
        }
        return state == 0 ? .otherFile : .notOpen
    }

    func installDevice(_ file: VFIODeviceFile) -> Int32 {
        let object = Unmanaged.passRetained(VFIOFileBox(.device(file))).toOpaque()
        let numbers = file.deviceNumber
        // On failure the C half has released the box (and with it the file).
        return uiommu_vfio_install_device(object, numbers.major, numbers.minor)
    }
}

private func box(_ object: UnsafeMutableRawPointer) -> VFIOFileBox {
    Unmanaged<VFIOFileBox>.fromOpaque(object).takeUnretainedValue()
}

@_cdecl("uiommu_core_vfio_container")
func coreVFIOContainer(_ object: UnsafeMutableRawPointer) {
    VFIOSubsystem.configureContainer(Unmanaged<OpenFile>.fromOpaque(object).takeUnretainedValue().file)
}

@_cdecl("uiommu_core_vfio_open")
func coreVFIOOpen(_ kind: Int32, _ index: UInt32, _ flags: Int32, _ error: UnsafeMutablePointer<Int32>,
                  _ major: UnsafeMutablePointer<UInt32>, _ minor: UnsafeMutablePointer<UInt32>) -> UnsafeMutableRawPointer? {
    guard let vfio = PreloadVFIO.subsystem else {
        error.pointee = 19   // ENODEV: no usable machine
        return nil
    }
    switch kind {
    case 2:
        guard Int(index) < vfio.devices.count else { error.pointee = 2; return nil }   // ENOENT
        let file = vfio.openDevice(vfio.devices[Int(index)])
        (major.pointee, minor.pointee) = file.deviceNumber
        return Unmanaged.passRetained(VFIOFileBox(.device(file))).toOpaque()
    case 3:
        guard let group = vfio.group(id: Int(index)) else { error.pointee = 2; return nil }
        switch vfio.openGroup(group) {
        case .success(let file):
            (major.pointee, minor.pointee) = file.deviceNumber
            return Unmanaged.passRetained(VFIOFileBox(.group(file))).toOpaque()
        case .failure(let e):
            error.pointee = e.errno.rawValue
            return nil
        }
    default:
        error.pointee = 19
        return nil
    }
}

@_cdecl("uiommu_core_vfio_ioctl")
func coreVFIOIoctl(_ object: UnsafeMutableRawPointer, _ kind: Int32, _ request: UInt64, _ argument: UInt64) -> Int64 {
    switch box(object).file {
    case .device(let d): return d.ioctl(UInt(request), argument)
    case .group(let g): return g.ioctl(UInt(request), argument)
    }
}

@_cdecl("uiommu_core_vfio_rw")
func coreVFIORW(_ object: UnsafeMutableRawPointer, _ write: Int32, _ buffer: UnsafeMutableRawPointer,
                _ count: UInt64, _ offset: Int64) -> Int64 {
    guard let device = box(object).device else { return -22 }
    return device.access(offset: offset, buffer: buffer, count: Int(clamping: count), write: write != 0)
}

@_cdecl("uiommu_core_vfio_mmap")
func coreVFIOMmap(_ object: UnsafeMutableRawPointer, _ length: UInt64, _ shared: Int32, _ offset: Int64,
                  _ bar: UnsafeMutablePointer<Int32>, _ start: UnsafeMutablePointer<UInt64>) -> Int64 {
    guard let device = box(object).device else { return -19 }
    guard offset >= 0 else { return -22 }
    switch device.mmapRegion(length: length, offset: UInt64(offset), shared: shared != 0) {
    case .success(let r):
        bar.pointee = Int32(r.bar)
        start.pointee = r.start
        return 0
    case .failure(let e):
        return -Int64(e.errno.rawValue)
    }
}

@_cdecl("uiommu_core_vfio_mmio")
func coreVFIOMmio(_ object: UnsafeMutableRawPointer, _ bar: Int32, _ offset: UInt64, _ width: Int32, _ write: Int32,
                  _ value: UInt64) -> UInt64 {
    guard let device = box(object).device else { return .max }
    return device.mmio(bar: Int(bar), offset: offset, width: Int(width), write: write != 0, value: value)
}

@_cdecl("uiommu_core_vfio_retain")
func coreVFIORetain(_ object: UnsafeMutableRawPointer) {
    box(object).retain()
}

@_cdecl("uiommu_core_vfio_release")
func coreVFIORelease(_ object: UnsafeMutableRawPointer, _ kind: Int32) {
    let b = box(object)
    guard b.drop() else { return }
    switch b.file {
    case .device(let d): d.release()
    case .group(let g): g.release()
    }
    Unmanaged<VFIOFileBox>.fromOpaque(object).release()
}

// MARK: The virtual sysfs tree

@_cdecl("uiommu_core_sysfs_prepare")
func coreSysfsPrepare(_ root: UnsafeMutablePointer<CChar>, _ size: UInt64) -> Int64 {
    guard let vfio = PreloadVFIO.subsystem else { return -19 }
    let nodes = SysfsTree.nodes(vfio)
    for node in nodes {
        if case .characterDevice(let major, let minor) = node.kind { uiommu_vnode_add(node.path, major, minor) }
    }
    let base: String = {
        if let t = getenv("TMPDIR"), t.pointee != 0 { return String(cString: t) }
        return "/tmp"
    }()
    let parent = "\(base)/uiommufd-\(getuid())"
    let final = "\(parent)/sysfs-\(SysfsTree.digest(nodes))"
    guard final.utf8.count + 1 <= Int(size) else { return -36 }   // ENAMETOOLONG
    if mkdir(parent, 0o700) != 0 && errno != EEXIST { return -Int64(errno) }
    var st = stat()
    if stat(final, &st) != 0 {
        // Build next to it, then rename into place: concurrent builders agree on the result.
        let temporary = "\(final).tmp.\(getpid())"
        removeTree(temporary)
        guard mkdir(temporary, 0o755) == 0 else { return -Int64(errno) }
        for node in nodes {
            let path = temporary + node.path
            switch node.kind {
            case .directory:
                if mkdir(path, 0o755) != 0 && errno != EEXIST { removeTree(temporary); return -Int64(errno) }
            case .file(let bytes):
                if !writeFile(path, bytes, mode: node.path.hasSuffix("driver_override") ? 0o644 : 0o444) {
                    removeTree(temporary); return -Int64(errno)
                }
            case .symlink(let target):
                if symlink(target, path) != 0 { removeTree(temporary); return -Int64(errno) }
            case .characterDevice:
                // A stand-in: stat() of the node is answered by the interposer.
                if !writeFile(path, [], mode: 0o666) { removeTree(temporary); return -Int64(errno) }
            }
        }
        if rename(temporary, final) != 0 { removeTree(temporary) }
        guard stat(final, &st) == 0 else { return -Int64(errno) }
    }
    _ = final.withCString { strcpy(root, $0) }
    return 0
}

private func writeFile(_ path: String, _ bytes: [UInt8], mode: mode_t) -> Bool {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
        if n <= 0 { return false }
        done += n
    }
    return true
}

/// rm -r of a tree this process built (plain files, directories and symlinks only).
private func removeTree(_ path: String) {
    var st = stat()
    guard lstat(path, &st) == 0 else { return }
    if (st.st_mode & S_IFMT) == S_IFDIR {
        if let d = opendir(path) {
            var names: [String] = []
            while let e = readdir(d) {
                let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { names.append(name) }
            }
            closedir(d)
            for n in names { removeTree(path + "/" + n) }
        }
        rmdir(path)
    } else {
        unlink(path)
    }
}
