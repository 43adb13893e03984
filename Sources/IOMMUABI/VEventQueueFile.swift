// The file descriptor of a VEVENTQ (IOMMU_VEVENTQ_ALLOC; the kernel's "[iommufd-viommu-event]"
// anon-inode file, eventq.c).
//
// read(2): records from the head of the queue while each fits in what is left of the buffer —
// a struct iommufd_vevent_header (8 bytes: flags, sequence), then the event's data (for the
// selftest mock, struct iommu_viommu_event_selftest: the virtual ID); a LOST_EVENTS header
// has no data. Nothing queued, or a first record that does not fit, reads as 0 — it never
// blocks. write(2): EINVAL (the file has no write). poll: POLLIN while anything is queued. The
// descriptor holds the VEVENTQ object (DESTROY gives EBUSY until it closes) and the iommufd.

import UIOMMUBase
import IOMMUEngine

final class VEventQueueFile: EventQueueFile, @unchecked Sendable {
    let iommufd: IOMMUFDFile
    let endpoint: VEventQueueEndpoint
    private let lock = Lock()
    private var holdsUser = false
    private var dead = false

    init(iommufd: IOMMUFDFile, endpoint: VEventQueueEndpoint) {
        self.iommufd = iommufd
        self.endpoint = endpoint
    }

    func retainContext() {
        let held = iommufd.retainUser()
        lock.withLock { holdsUser = held }
    }

    func abort() {
        lock.withLock { dead = true }
        endpoint.abort()
    }

    private var isDead: Bool { lock.withLock { dead } }

    func read(into buffer: UnsafeMutableRawPointer, count: Int) -> Int {
        guard count >= 0 else { return -Int(LinuxErrno.EINVAL.rawValue) }
        guard !isDead else { return -Int(LinuxErrno.EINVAL.rawValue) }
        let header = ABI.VEventHeader.size
        let records = endpoint.read(bytes: count, headerSize: header)
        var done = 0
        for r in records {
            let b = StructBytes(buffer + done)
            b.set32(ABI.VEventHeader.flags, r.flags)
            b.set32(ABI.VEventHeader.sequence, r.sequence)
            done += header
            r.data.withUnsafeBytes { raw in
                if raw.count > 0 { (buffer + done).copyMemory(from: raw.baseAddress!, byteCount: raw.count) }
            }
            done += r.data.count
        }
        return done
    }

    func write(from buffer: UnsafeRawPointer, count: Int) -> Int {
        -Int(LinuxErrno.EINVAL.rawValue)
    }

    var isReadable: Bool { !isDead && endpoint.hasQueued }

    func release() {
        endpoint.closeFile()
        let held = lock.withLock { () -> Bool in
            defer { holdsUser = false }
            return holdsUser
        }
        if held { iommufd.release() }
    }
}
