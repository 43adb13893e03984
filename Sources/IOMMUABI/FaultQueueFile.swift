// The file descriptor of a FAULT object (IOMMU_FAULT_QUEUE_ALLOC; the kernel's
// "[iommufd-pgfault]" anon-inode file, eventq.c).
//
// read(2): a multiple of sizeof(struct iommu_hwpt_pgfault) (40) or ESPIPE; whole page-request
// groups that fit, oldest first, each record carrying its group's cookie; nothing queued (or
// the next group does not fit) reads as 0 — it never blocks. write(2): a multiple of
// sizeof(struct iommu_hwpt_page_response) (8) or ESPIPE; responses in order, each with a code
// SUCCESS or INVALID and the cookie of a group read and not yet answered (EINVAL otherwise);
// the bytes of the responses handled before a bad one, or the error if it was the first. poll:
// POLLIN while a group is queued. The descriptor holds the FAULT object (DESTROY gives EBUSY
// until it closes) and the iommufd (like the kernel's iommufd_ctx_get).

import UIOMMUBase
import IOMMUEngine

/// An event queue's file (fault queue, vEVENTQ): holds the iommufd while open; `abort` undoes
/// an allocation whose answer could not be given.
protocol EventQueueFile: AuxiliaryFile {
    func retainContext()
    func abort()
}

final class FaultQueueFile: EventQueueFile, @unchecked Sendable {
    let iommufd: IOMMUFDFile
    let endpoint: FaultQueueEndpoint
    private let lock = Lock()
    private var holdsUser = false
    private var dead = false

    init(iommufd: IOMMUFDFile, endpoint: FaultQueueEndpoint) {
        self.iommufd = iommufd
        self.endpoint = endpoint
    }

    /// Takes the iommufd reference the descriptor keeps.
    func retainContext() {
        let held = iommufd.retainUser()
        lock.withLock { holdsUser = held }
    }

    /// The allocation failed after the descriptor was installed: the object is gone and the
    /// descriptor answers nothing (EBADF-like EINVAL) until it is closed.
    func abort() {
        lock.withLock { dead = true }
        endpoint.abort()
    }

    private var isDead: Bool { lock.withLock { dead } }

    func read(into buffer: UnsafeMutableRawPointer, count: Int) -> Int {
        let size = ABI.HWPTPgFault.size
        guard count >= 0, count % size == 0 else { return -Int(LinuxErrno.ESPIPE.rawValue) }
        guard !isDead else { return -Int(LinuxErrno.EINVAL.rawValue) }
        let records = endpoint.read(maxRecords: count / size)
        typealias L = ABI.HWPTPgFault
        for (k, r) in records.enumerated() {
            let b = StructBytes(buffer + k * size)
            b.set32(L.flags, r.flags)
            b.set32(L.devID, r.deviceID)
            b.set32(L.pasid, r.pasid)
            b.set32(L.grpid, r.groupID)
            b.set32(L.perm, r.permissions)
            b.set32(L.reserved, 0)
            b.set64(L.addr, r.address)
            b.set32(L.length, r.length)
            b.set32(L.cookie, r.cookie)
        }
        return records.count * size
    }

    func write(from buffer: UnsafeRawPointer, count: Int) -> Int {
        let size = ABI.HWPTPageResponse.size
        guard count >= 0, count % size == 0 else { return -Int(LinuxErrno.ESPIPE.rawValue) }
        guard !isDead else { return -Int(LinuxErrno.EINVAL.rawValue) }
        var done = 0
        while done < count {
            let record = UnsafeMutableRawPointer(mutating: buffer + done)
            let b = StructBytes(record)
            do throws(IOMMUError) {
                try endpoint.respond(cookie: b.u32(ABI.HWPTPageResponse.cookie), code: b.u32(ABI.HWPTPageResponse.code))
            } catch {
                return done == 0 ? -Int(error.errno.rawValue) : done
            }
            done += size
        }
        return done
    }

    var isReadable: Bool { !isDead && endpoint.hasQueued }

    /// The last descriptor closed: the object loses the file's hold (it stays until DESTROY),
    /// then the iommufd reference goes.
    func release() {
        endpoint.closeFile()
        let held = lock.withLock { () -> Bool in
            defer { holdsUser = false }
            return holdsUser
        }
        if held { iommufd.release() }
    }
}

extension LinuxErrno {
    /// Illegal seek: fault queue reads and writes of a partial record.
    static let ESPIPE = LinuxErrno(rawValue: 29)
}
