// VFIO group files, /dev/vfio/<group> (drivers/vfio/group.c): the legacy interface. A program
// opens the group (once at a time), checks it is viable, attaches it to a container, and asks
// for device files by PCI name:
//
//   VFIO_GROUP_GET_STATUS      VIABLE unless something owns the group's DMA (a host driver bound
//                              to a member, or an iommufd that claimed it); CONTAINER_SET once
//                              attached (then VIABLE as well, as the kernel reports it)
//   VFIO_GROUP_SET_CONTAINER   an int* to a container fd (/dev/vfio/vfio) or an iommufd; both are
//                              iommufds here (the kernel's IOMMUFD_VFIO_CONTAINER): the iommufd's
//                              compatibility IOAS is created if it has none. EBADF for a closed fd,
//                              EBADFD for a file that is neither, EINVAL if already set
//   VFIO_GROUP_UNSET_CONTAINER EINVAL if none is set
//   VFIO_GROUP_GET_DEVICE_FD   a NUL-terminated PCI name ("0000:00:10.0", optionally followed by
//                              a space and vf_token): a new device file bound to the container's
//                              iommufd and attached to its compatibility IOAS (EPERM if the group
//                              is not viable, EADDRINUSE on a reserved-region collision)
//
// Device files hold a reference to the group file: the group's release (container detach)
// happens when its descriptor and every device file from it are closed.

import UIOMMUBase
import IOMMUEngine

public final class VFIOGroupFile: @unchecked Sendable {
    public let group: VFIOGroup
    let subsystem: VFIOSubsystem
    /// The descriptor's reference plus one per device file (under the subsystem lock).
    private var users = 1

    init(subsystem: VFIOSubsystem, group: VFIOGroup) {
        self.subsystem = subsystem
        self.group = group
    }

    /// st_rdev of /dev/vfio/<group>.
    public var deviceNumber: (major: UInt32, minor: UInt32) { (VFIOSubsystem.groupMajor, UInt32(group.minor)) }

    var user: any UserMemoryAccess { subsystem.user }

    private func fail(_ e: LinuxErrno, _ record: TraceRecord?, _ why: @autoclosure () -> String) -> Int64 {
        if let record { record.reason = why() }
        return -Int64(e.rawValue)
    }

    /// ioctl(2) on the group file; ≥ 0 (a new fd for GET_DEVICE_FD) or -errno.
    public func ioctl(_ request: UInt, _ arg: UInt64) -> Int64 {
        let cmd = UInt32(truncatingIfNeeded: request)
        let record = subsystem.trace != nil ? TraceRecord() : nil
        let result: Int64
        switch cmd {
        case VFIODeviceRequest.groupGetStatus: result = getStatus(arg, record)
        case VFIODeviceRequest.groupSetContainer: result = setContainer(arg, record)
        case VFIODeviceRequest.groupUnsetContainer: result = unsetContainer(record)
        case VFIODeviceRequest.groupGetDeviceFD: result = getDeviceFD(arg, record)
        default: result = fail(.ENOTTY, record, "not a group ioctl")
        }
        subsystem.traceLine(VFIODeviceRequest.names[cmd] ?? "ioctl(0x\(String(cmd, radix: 16)))", record, result, cmd: cmd)
        return result
    }

    private func getStatus(_ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIOGroupStatus
        record?.layout = L.layout
        var storage: UInt64 = 0
        return withUnsafeMutableBytes(of: &storage) { raw -> Int64 in
            let s = StructBytes(raw.baseAddress!)
            guard user.copyFromUser(s.base, arg, L.minSize) else { return fail(.EFAULT, record, "cannot read the struct") }
            record?.captureInput(s, userSize: nil, size: L.size)
            guard s.u32(L.argsz) >= UInt32(L.minSize) else { return fail(.EINVAL, record, "argsz below 8") }
            let hasIOMMU = subsystem.lock.withLock { group.iommufd != nil }
            var flags: UInt32 = 0
            if hasIOMMU {
                flags = L.flagContainerSet | L.flagViable
            } else if !subsystem.platform.dmaOwnerClaimed(group: group.id) {
                flags = L.flagViable
            }
            s.set32(L.flags, flags)
            guard user.copyToUser(arg, s.base, L.minSize) else { return fail(.EFAULT, record, "cannot write back") }
            record?.captureOutput(s)
            return 0
        }
    }

    private func setContainer(_ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        var fd: Int32 = 0
        guard user.copyFromUser(&fd, arg, 4) else { return fail(.EFAULT, record, "cannot read the fd") }
        record?.argument = "\(fd)"
        let lookup = subsystem.host.iommufd(fd: fd)
        if case .notOpen = lookup { return fail(.EBADF, record, "fd \(fd) is not open") }
        return subsystem.lock.withLock {
            guard group.iommufd == nil else { return fail(.EINVAL, record, "a container is set already") }
            guard case .file(let iommufd) = lookup else {
                return fail(LinuxErrno(rawValue: 77), record, "fd \(fd) is neither a container nor an iommufd")   // EBADFD
            }
            // iommufd_vfio_compat_ioas_create: only attaching a group creates the compat IOAS.
            if iommufd.context.vfioCompatIOAS == nil {
                do throws(IOMMUError) {
                    let ioas = try iommufd.context.allocIOAS()
                    try iommufd.context.setVFIOCompatIOAS(ioas)
                } catch {
                    return fail(error.errno, record, error.reason)
                }
            }
            guard iommufd.retainUser() else { return fail(.EBADF, record, "the container is closing") }
            group.iommufd = iommufd
            return 0
        }
    }

    private func unsetContainer(_ record: TraceRecord?) -> Int64 {
        let released: IOMMUFDFile? = subsystem.lock.withLock {
            let f = group.iommufd
            group.iommufd = nil
            return f
        }
        guard let released else { return fail(.EINVAL, record, "no container is set") }
        released.release()
        return 0
    }

    private func getDeviceFD(_ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        // strndup_user(arg, PAGE_SIZE): EFAULT if unreadable, EINVAL without a NUL in a page.
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64)
        var address = arg
        var terminated = false
        while bytes.count < 4096 && !terminated {
            let toPage = 4096 - Int(address & 4095)
            let n = min(chunk.count, toPage, 4096 - bytes.count)
            let ok = chunk.withUnsafeMutableBytes { user.copyFromUser($0.baseAddress!, address, n) }
            guard ok else { return fail(.EFAULT, record, "the name is unreadable") }
            for b in chunk.prefix(n) {
                if b == 0 { terminated = true; break }
                bytes.append(b)
            }
            address += UInt64(n)
        }
        guard terminated else { return fail(.EINVAL, record, "the name is longer than a page") }
        let name = String(decoding: bytes, as: UTF8.self)
        record?.argument = "\"\(name)\""
        guard let device = group.devices.first(where: { name == $0.pciName || name.hasPrefix($0.pciName + " ") }) else {
            return fail(.ENODEV, record, "no device \(name) in group \(group.id)")
        }
        let file = VFIODeviceFile(subsystem: subsystem, device: device, groupFile: self)
        let error: LinuxErrno? = subsystem.lock.withLock {
            let e = file.openThroughGroup(group)
            if e == nil { users += 1 }
            return e
        }
        if let error { return fail(error, record, "") }
        let fd = subsystem.host.installDevice(file)
        if fd < 0 {
            file.release()
            return fail(LinuxErrno(rawValue: -fd), record, "cannot install a descriptor")
        }
        return Int64(fd)
    }

    /// Drops a reference (the descriptor's, at its last close, or a device file's); the last one
    /// detaches the container and lets the group be opened again.
    public func release() {
        let container: IOMMUFDFile? = subsystem.lock.withLock {
            users -= 1
            guard users == 0 else { return nil }
            let f = group.iommufd
            group.iommufd = nil
            if group.openedFile === self { group.openedFile = nil }
            return f
        }
        container?.release()
    }
}
