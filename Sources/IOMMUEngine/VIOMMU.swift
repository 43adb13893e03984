// vIOMMU objects: VIOMMU, VDEVICE and VEVENTQ (the kernel's viommu.c and the vEVENTQ half of
// eventq.c, with the selftest mock as the only driver that has them).
//
// A VIOMMU stands for one IOMMU instance as a guest sees it: it wraps a nesting-parent
// HWPT_PAGING (which it holds), is the pt_id of nested HWPTs whose stage 1 belongs to it (they
// hold the vIOMMU, not the parent), takes cache invalidations naming devices by their virtual
// IDs (HWPT_INVALIDATE on the vIOMMU), and reports events to its vEVENTQs.
//
// A VDEVICE binds one DEVICE to a vIOMMU under a virtual ID (vSID / vRID): it holds the vIOMMU;
// a virtual ID is unique per vIOMMU and a device has at most one vDEVICE (EEXIST). A device
// attaches to a nested HWPT of a vIOMMU only with a vDEVICE there (ENOENT otherwise); it then
// reports its events under that virtual ID. When the device is unbound first, its vDEVICE is
// destroyed and the ID becomes a tombstone: taken (not reused) until the context closes,
// DESTROY of it ENOENT.
//
// A VEVENTQ is a queue of one event type per vIOMMU (EEXIST for a second), read through its
// file descriptor (which holds the object and the context, as the fault queue's does). At most
// veventq_depth events wait; an event past that is lost and leaves a LOST_EVENTS header at the
// tail instead, which a later event replaces (its sequence number shows the gap). Sequence
// numbers run 0…INT_MAX and wrap to 0.

public import UIOMMUBase
public import IOMMUHardware

final class VIOMMU: EngineObject {
    let parent: HWPTPaging
    let unit: IOMMUUnit
    let driver: VIOMMUDriver
    /// The mmap region viommu_init exported (offset, length), if any.
    var mmapRegion: (offset: UInt64, length: UInt64)?
    /// The driver's loopback word (mock_viommu's page).
    var loopback: UInt32 = 0
    var vdevices: [UInt64: VDevice] = [:]
    var veventqs: [UInt32: VEventQueue] = [:]

    init(parent: HWPTPaging, unit: IOMMUUnit, driver: VIOMMUDriver) {
        self.parent = parent; self.unit = unit; self.driver = driver
        super.init(kind: .viommu)
    }

    override func teardown(_ context: IOMMUFDContext) {
        parent.holders -= 1
    }

    override var summary: String {
        "type 0x\(String(driver.type, radix: 16)) on HWPT \(parent.id), \(vdevices.count) vDEVICE(s)"
    }
}

final class VDevice: EngineObject {
    let viommu: VIOMMU
    weak var device: BoundDevice?
    let virtID: UInt64

    init(viommu: VIOMMU, device: BoundDevice, virtID: UInt64) {
        self.viommu = viommu; self.device = device; self.virtID = virtID
        super.init(kind: .vdevice)
    }

    override func teardown(_ context: IOMMUFDContext) {
        if viommu.vdevices[virtID] === self { viommu.vdevices[virtID] = nil }
        viommu.holders -= 1
        if device?.vdevice === self { device?.vdevice = nil }
    }

    override var summary: String {
        "virt_id 0x\(String(virtID, radix: 16)) of DEVICE \(device?.id ?? 0) on vIOMMU \(viommu.id)"
    }
}

/// The ID of a vDEVICE destroyed by its device's unbind: kept until the context closes.
final class Tombstone: EngineObject {
    override var summary: String { "tombstone" }
}

/// One entry of a vEVENTQ: an event's data, or (nil) the LOST_EVENTS header.
struct VEventEntry {
    var sequence: UInt32
    var data: [UInt8]?
}

/// What read() returns of a vEVENTQ: one header and its data.
public struct VEventRecord: Hashable, Sendable {
    /// IOMMU_VEVENTQ_FLAG_LOST_EVENTS = 1.
    public var flags: UInt32
    public var sequence: UInt32
    public var data: [UInt8]
}

final class VEventQueue: EngineObject {
    let viommu: VIOMMU
    let type: UInt32
    let depth: UInt32
    var heldByFile = true
    var deliver: [VEventEntry] = []
    /// Events (not the lost-events header) queued.
    var numEvents: UInt32 = 0
    var sequence: UInt32 = 0

    init(viommu: VIOMMU, type: UInt32, depth: UInt32) {
        self.viommu = viommu; self.type = type; self.depth = depth
        super.init(kind: .veventq)
        holders = 1
    }

    /// iommufd_viommu_report_event: queues `data`, or the lost-events header when full.
    func report(_ data: [UInt8]) {
        var entry = VEventEntry(sequence: 0, data: nil)
        if numEvents < depth {
            entry.data = data
            numEvents += 1
        }
        // The lost-events header leaves the tail when anything new arrives (a new header
        // takes its place with a new sequence number).
        if let last = deliver.last, last.data == nil { deliver.removeLast() }
        entry.sequence = sequence
        sequence = (sequence &+ 1) & UInt32(Int32.max)
        deliver.append(entry)
    }

    override func teardown(_ context: IOMMUFDContext) {
        deliver.removeAll()
        if viommu.veventqs[type] === self { viommu.veventqs[type] = nil }
        viommu.holders -= 1
    }

    override var summary: String {
        "type 0x\(String(type, radix: 16)) of vIOMMU \(viommu.id), \(numEvents)/\(depth) queued" + (heldByFile ? ", fd open" : "")
    }
}

/// The engine side of a vEVENTQ's file descriptor.
public final class VEventQueueEndpoint: @unchecked Sendable {
    public let context: IOMMUFDContext
    public let id: UInt32
    let queue: VEventQueue

    init(context: IOMMUFDContext, id: UInt32, queue: VEventQueue) {
        self.context = context; self.id = id; self.queue = queue
    }

    /// Takes records from the head while each fits in the `bytes` left (a header of
    /// `headerSize`, plus the data of an event; a lost-events header needs only its header).
    public func read(bytes: Int, headerSize: Int) -> [VEventRecord] {
        context.lock.withLock { () -> [VEventRecord] in
            var records: [VEventRecord] = []
            var done = 0
            while let cur = queue.deliver.first {
                guard done < bytes, headerSize <= bytes - done else { break }
                let length = cur.data?.count ?? 0
                if cur.data != nil, headerSize + length > bytes - done { break }
                queue.deliver.removeFirst()
                if cur.data != nil { queue.numEvents -= 1 }
                records.append(VEventRecord(flags: cur.data == nil ? 1 : 0, sequence: cur.sequence, data: cur.data ?? []))
                done += headerSize + length
            }
            return records
        }
    }

    /// poll's POLLIN.
    public var hasQueued: Bool { context.lock.withLock { !queue.deliver.isEmpty } }

    /// The descriptor closed: the object stays until DESTROY or close, no longer held.
    public func closeFile() {
        context.lock.withLock {
            guard queue.heldByFile else { return }
            queue.heldByFile = false
            queue.holders -= 1
        }
    }

    /// Undoes an allocation whose answer could not reach the caller.
    public func abort() {
        context.lock.withLock {
            guard context.table.get(id) === queue else { return }
            if queue.heldByFile {
                queue.heldByFile = false
                queue.holders -= 1
            }
            if queue.holders == 0 { context.remove(queue) }
        }
    }
}

/// The driver data of IOMMU_VIOMMU_ALLOC, read and answered by the ABI layer: `decode`
/// returns the driver's input word (EINVAL / E2BIG / EFAULT per the copy rules); `respond`
/// writes back the loopback word and the mmap region (EFAULT).
public struct VIOMMUUserData {
    public var decode: () throws(IOMMUError) -> UInt32
    public var respond: (_ outData: UInt32, _ mmapOffset: UInt64, _ mmapLength: UInt64) throws(IOMMUError) -> Void
    public init(decode: @escaping () throws(IOMMUError) -> UInt32,
                respond: @escaping (UInt32, UInt64, UInt64) throws(IOMMUError) -> Void) {
        self.decode = decode; self.respond = respond
    }
}

extension IOMMUFDContext {
    /// IOMMU_VIOMMU_ALLOC (after the ABI's flags and type checks): the device (ENOENT), the
    /// driver's support of `type` (EOPNOTSUPP), the HWPT (ENOENT unless a paging HWPT; EINVAL
    /// unless NEST_PARENT), then the driver's init with its data. Holds the HWPT.
    public func allocVIOMMU(device deviceID: UInt32, hwpt hwptID: UInt32, type: UInt32,
                            userData: VIOMMUUserData?) throws(IOMMUError) -> UInt32 {
        do throws(IOMMUError) {
            return try lock.withLock { () throws(IOMMUError) -> UInt32 in
                try checkOpen()
                let device = try self.device(deviceID)
                guard let driver = VIOMMUDriver.of(device.unit.spec.kind, type: type) else {
                    throw IOMMUError(.EOPNOTSUPP, "\(device.unit.spec.name) has no vIOMMU of type 0x\(String(type, radix: 16))")
                }
                let parent = try hwptPaging(hwptID)
                guard parent.flags.contains(.nestParent) else {
                    throw IOMMUError(.EINVAL, "HWPT \(hwptID) was not allocated with NEST_PARENT")
                }
                try failures.check("viommu.alloc")
                let viommu = VIOMMU(parent: parent, unit: device.unit, driver: driver)
                parent.holders += 1
                let id: UInt32
                do throws(IOMMUError) {
                    id = try install(viommu)
                } catch {
                    viommu.teardown(self)
                    throw error
                }
                do throws(IOMMUError) {
                    if let userData {
                        let input = try userData.decode()
                        let offset = try allocMmapRegion(length: driver.mmapLength)
                        viommu.mmapRegion = (offset, driver.mmapLength)
                        viommu.loopback = input
                        try userData.respond(input, offset, driver.mmapLength)
                    }
                } catch {
                    remove(viommu)
                    throw error
                }
                return id
            }
        } catch {
            throw error.during("VIOMMU_ALLOC")
        }
    }

    /// The lowest page-aligned offset from 4096 where `length` bytes fit between the regions
    /// of this context's vIOMMUs (the kernel's mmap maple tree).
    private func allocMmapRegion(length: UInt64) throws(IOMMUError) -> UInt64 {
        let taken = table.objects.values.compactMap { ($0 as? VIOMMU)?.mmapRegion }.sorted { $0.offset < $1.offset }
        var candidate: UInt64 = 4096
        for region in taken {
            if candidate &+ length <= region.offset { break }
            candidate = max(candidate, region.offset + region.length)
        }
        guard !candidate.addingReportingOverflow(length).overflow else { throw IOMMUError(.ENOSPC, "no mmap offset left") }
        return candidate
    }

    func viommu(_ id: UInt32) throws(IOMMUError) -> VIOMMU {
        try lookup(id, as: VIOMMU.self, "vIOMMU")
    }

    /// The mmap region (offset, length) and loopback word of vIOMMU `id`.
    public func viommuInfo(_ id: UInt32) throws(IOMMUError) -> (mmapOffset: UInt64?, mmapLength: UInt64, loopback: UInt32, parent: UInt32) {
        try lock.withLock { () throws(IOMMUError) -> (mmapOffset: UInt64?, mmapLength: UInt64, loopback: UInt32, parent: UInt32) in
            try checkOpen()
            let v = try viommu(id)
            return (v.mmapRegion?.offset, v.mmapRegion?.length ?? 0, v.loopback, v.parent.id)
        }
    }

    /// IOMMU_VDEVICE_ALLOC: the vIOMMU (ENOENT), the device (ENOENT), the same IOMMU
    /// (EINVAL), one vDEVICE per device and per virtual ID (EEXIST). Holds the vIOMMU.
    public func allocVDevice(viommu viommuID: UInt32, device deviceID: UInt32, virtID: UInt64) throws(IOMMUError) -> UInt32 {
        do throws(IOMMUError) {
            return try lock.withLock { () throws(IOMMUError) -> UInt32 in
                try checkOpen()
                let viommu = try self.viommu(viommuID)
                let device = try self.device(deviceID)
                guard viommu.unit === device.unit else {
                    throw IOMMUError(.EINVAL, "DEVICE \(deviceID) is not behind the IOMMU of vIOMMU \(viommuID)")
                }
                if let existing = device.vdevice {
                    throw IOMMUError(.EEXIST, "DEVICE \(deviceID) already has vDEVICE \(existing.id)")
                }
                if viommu.vdevices[virtID] != nil {
                    throw IOMMUError(.EEXIST, "virt_id 0x\(String(virtID, radix: 16)) is taken on vIOMMU \(viommuID)")
                }
                try failures.check("vdevice.alloc")
                let vdev = VDevice(viommu: viommu, device: device, virtID: virtID)
                let id = try install(vdev)
                viommu.vdevices[virtID] = vdev
                viommu.holders += 1
                device.vdevice = vdev
                return id
            }
        } catch {
            throw error.during("VDEVICE_ALLOC")
        }
    }

    /// The device's unbind destroys its vDEVICE and leaves a tombstone under its ID.
    func tombstone(_ vdev: VDevice) {
        guard table.get(vdev.id) === vdev else { return }
        table.replace(vdev.id, with: Tombstone(kind: .vdevice))
        vdev.teardown(self)
    }

    /// IOMMU_VEVENTQ_ALLOC (after the ABI's flags, type and depth checks): the vIOMMU (ENOENT),
    /// one queue per type (EEXIST). Held by the returned endpoint until `closeFile()`.
    public func allocVEventQueue(viommu viommuID: UInt32, type: UInt32, depth: UInt32) throws(IOMMUError) -> VEventQueueEndpoint {
        do throws(IOMMUError) {
            return try lock.withLock { () throws(IOMMUError) -> VEventQueueEndpoint in
                try checkOpen()
                let viommu = try self.viommu(viommuID)
                if let existing = viommu.veventqs[type] {
                    throw IOMMUError(.EEXIST, "vIOMMU \(viommuID) has VEVENTQ \(existing.id) of type 0x\(String(type, radix: 16))")
                }
                try failures.check("veventq.alloc")
                let queue = VEventQueue(viommu: viommu, type: type, depth: depth)
                let id = try install(queue)
                viommu.veventqs[type] = queue
                viommu.holders += 1
                return VEventQueueEndpoint(context: self, id: id, queue: queue)
            }
        } catch {
            throw error.during("VEVENTQ_ALLOC")
        }
    }

    /// A vEVENT from DEVICE `deviceID` through the vIOMMU of the nested HWPT it is attached
    /// to (the selftest's TRIGGER_VEVENT): ENOENT without such a vIOMMU or virtual ID,
    /// EOPNOTSUPP if the vIOMMU has no queue of the driver's event type. `payload` builds the
    /// event data from the virtual ID.
    public func reportVEvent(device deviceID: UInt32, payload: (UInt64) -> [UInt8]) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            try checkOpen()
            let device = try self.device(deviceID)
            guard let viommu = device.eventVIOMMU, device.eventVirtID != 0 else {
                throw IOMMUError(.ENOENT, "DEVICE \(deviceID) is not attached through a vIOMMU under a virtual ID")
            }
            guard let queue = viommu.veventqs[viommu.driver.eventType] else {
                throw IOMMUError(.EOPNOTSUPP, "vIOMMU \(viommu.id) has no VEVENTQ of type 0x\(String(viommu.driver.eventType, radix: 16))")
            }
            queue.report(payload(device.eventVirtID))
        }
    }

    /// IOMMU_HWPT_INVALIDATE on vIOMMU `viommu` (called by invalidateHWPT). A zero-length
    /// array of the driver's type only validates the type; otherwise `read()` reads the whole
    /// array first (an error there: nothing done), then requests run in order.
    func invalidateVIOMMU(_ viommu: VIOMMU, type: VIOMMUInvalidationType, count: UInt32,
                          read: () throws(IOMMUError) -> [VIOMMUInvalidation]) -> InvalidationResult {
        if count == 0, type == .selftest { return InvalidationResult(done: 0, error: nil) }
        guard type == .selftest else {
            return InvalidationResult(done: 0, error: IOMMUError(.EINVAL, "invalidation data type is not IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST"))
        }
        let requests: [VIOMMUInvalidation]
        do throws(IOMMUError) {
            requests = try read()
        } catch {
            return InvalidationResult(done: 0, error: error)
        }
        let (done, error) = MockVIOMMU.invalidate(requests) { virtID in viommu.vdevices[virtID]?.device?.mockCache }
        return InvalidationResult(done: done, error: error)
    }

    /// IOMMU_TEST_OP_DEV_CHECK_CACHE's view: the mock cache of DEVICE `deviceID` (ENOENT if no
    /// DEVICE; nil if it is no mock device).
    public func mockDeviceCache(device deviceID: UInt32) throws(IOMMUError) -> [UInt32]? {
        try lock.withLock { () throws(IOMMUError) -> [UInt32]? in
            try checkOpen()
            return try self.device(deviceID).mockCache?.values
        }
    }
}
