// FAULT objects: queues of I/O page requests (IOPF/PRI) that user space handles
// (IOMMU_FAULT_QUEUE_ALLOC; the kernel's fault.c / eventq.c).
//
// A FAULT object comes with a file descriptor. A HWPT allocated with IOMMU_HWPT_FAULT_ID_VALID
// holds the FAULT object; a page request from a device attached to such a HWPT is queued there
// as one group (the requests up to one with LAST_PAGE). read() hands out whole groups, each
// group getting a cookie (the lowest free from 1) under which it waits for a response;
// write() takes responses by cookie. A group is answered INVALID on the device's behalf when
// the device leaves the HWPT (detach or replace), and when the FAULT object is destroyed.
// The descriptor holds the object (DESTROY gives EBUSY until it is closed) and the context.
// Reading never blocks: an empty queue reads as 0 bytes.

public import UIOMMUBase

/// One page request as read() reports it (struct iommu_hwpt_pgfault's fields).
public struct PageFaultRecord: Hashable, Sendable {
    /// IOMMU_PGFAULT_FLAGS_*: PASID_VALID = 1, LAST_PAGE = 2.
    public var flags: UInt32
    /// The DEVICE object that raised it.
    public var deviceID: UInt32
    public var pasid: UInt32
    public var groupID: UInt32
    /// IOMMU_PGFAULT_PERM_*: READ = 1, WRITE = 2, EXEC = 4, PRIV = 8.
    public var permissions: UInt32
    public var address: UInt64
    /// Always 0 (the kernel reports page-granular requests).
    public var length: UInt32
    /// What write() must return to answer the request's group.
    public var cookie: UInt32

    public init(flags: UInt32, deviceID: UInt32, pasid: UInt32, groupID: UInt32, permissions: UInt32,
                address: UInt64, length: UInt32, cookie: UInt32) {
        self.flags = flags; self.deviceID = deviceID; self.pasid = pasid; self.groupID = groupID
        self.permissions = permissions; self.address = address; self.length = length; self.cookie = cookie
    }
}

/// A page request as a device raises it (the kernel's iommu_fault_page_request).
public struct PageRequest: Hashable, Sendable {
    public var pasid: UInt32?
    public var groupID: UInt32
    public var permissions: UInt32
    public var address: UInt64
    /// The last request of its group.
    public var lastPage: Bool
    public init(pasid: UInt32?, groupID: UInt32, permissions: UInt32, address: UInt64, lastPage: Bool = true) {
        self.pasid = pasid; self.groupID = groupID; self.permissions = permissions
        self.address = address; self.lastPage = lastPage
    }
}

/// IOMMUFD_PAGE_RESP_* codes.
public enum PageResponseCode: UInt32, Sendable {
    case success = 0
    case invalid = 1
}

/// A group of page requests from one device through one HWPT.
final class PageFaultGroup {
    let device: BoundDevice
    let hwpt: HWPT
    let requests: [PageRequest]
    var cookie: UInt32 = 0
    init(device: BoundDevice, hwpt: HWPT, requests: [PageRequest]) {
        self.device = device; self.hwpt = hwpt; self.requests = requests
    }
}

final class FaultQueue: EngineObject {
    /// The descriptor's reference (dropped when it closes).
    var heldByFile = true
    /// Groups not read yet, oldest first.
    var deliver: [PageFaultGroup] = []
    /// Groups read and waiting for a response, by cookie.
    var awaiting: [UInt32: PageFaultGroup] = [:]
    /// The latest responses given (by write or on the device's behalf), for the hardware model
    /// and tests; at most `responseHistory`.
    private(set) var responses: [(cookie: UInt32, code: PageResponseCode)] = []
    static let responseHistory = 64

    func recordResponse(_ cookie: UInt32, _ code: PageResponseCode) {
        if responses.count == Self.responseHistory { responses.removeFirst() }
        responses.append((cookie, code))
    }

    init() {
        super.init(kind: .fault)
        holders = 1
    }

    /// Answers INVALID (on the device's behalf) every group matching `where` and forgets it.
    func dropGroups(where match: (PageFaultGroup) -> Bool) {
        deliver.removeAll { match($0) }
        for (cookie, group) in awaiting where match(group) {
            awaiting[cookie] = nil
            recordResponse(cookie, .invalid)
        }
    }

    override func teardown(_ context: IOMMUFDContext) {
        dropGroups { _ in true }
    }

    override var summary: String {
        "\(deliver.count) queued, \(awaiting.count) awaiting a response" + (heldByFile ? ", fd open" : "")
    }
}

/// The engine side of a fault queue's file descriptor: read, respond, close.
public final class FaultQueueEndpoint: @unchecked Sendable {
    public let context: IOMMUFDContext
    /// The FAULT object's ID.
    public let id: UInt32
    let queue: FaultQueue

    init(context: IOMMUFDContext, id: UInt32, queue: FaultQueue) {
        self.context = context; self.id = id; self.queue = queue
    }

    /// Takes whole groups from the queue, oldest first, while they fit in `maxRecords`; each
    /// gets a cookie and waits for its response. Empty if nothing is queued (or nothing fits).
    public func read(maxRecords: Int) -> [PageFaultRecord] {
        context.lock.withLock { () -> [PageFaultRecord] in
            var records: [PageFaultRecord] = []
            while let group = queue.deliver.first {
                guard group.requests.count <= maxRecords - records.count else { break }
                // xa_alloc over 1...UINT32_MAX: the lowest free cookie.
                var cookie: UInt32 = 1
                while queue.awaiting[cookie] != nil {
                    guard cookie < .max else { return records }
                    cookie += 1
                }
                queue.deliver.removeFirst()
                group.cookie = cookie
                queue.awaiting[cookie] = group
                for r in group.requests {
                    var flags: UInt32 = r.lastPage ? 2 : 0
                    if r.pasid != nil { flags |= 1 }
                    records.append(PageFaultRecord(flags: flags, deviceID: group.device.id, pasid: r.pasid ?? 0,
                                                   groupID: r.groupID, permissions: r.permissions,
                                                   address: r.address, length: 0, cookie: cookie))
                }
            }
            return records
        }
    }

    /// Answers the group read under `cookie`: EINVAL for a code other than SUCCESS or INVALID,
    /// or a cookie no group waits under.
    public func respond(cookie: UInt32, code: UInt32) throws(IOMMUError) {
        try context.lock.withLock { () throws(IOMMUError) in
            guard let code = PageResponseCode(rawValue: code) else {
                throw IOMMUError(.EINVAL, "response code \(code) is neither SUCCESS nor INVALID")
            }
            guard queue.awaiting.removeValue(forKey: cookie) != nil else {
                throw IOMMUError(.EINVAL, "no page request group waits under cookie \(cookie)")
            }
            queue.recordResponse(cookie, code)
        }
    }

    /// poll's POLLIN: a group is queued.
    public var hasQueued: Bool { context.lock.withLock { !queue.deliver.isEmpty } }

    /// The descriptor closed: the object stays (until DESTROY or the context's close) but no
    /// longer held by the file.
    public func closeFile() {
        context.lock.withLock {
            guard queue.heldByFile else { return }
            queue.heldByFile = false
            queue.holders -= 1
        }
    }

    /// Undoes an allocation whose answer could not reach the caller: the object goes away.
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

extension IOMMUFDContext {
    /// IOMMU_FAULT_QUEUE_ALLOC: a FAULT object, held by the returned endpoint (the descriptor)
    /// until `closeFile()`.
    public func allocFaultQueue() throws(IOMMUError) -> FaultQueueEndpoint {
        do throws(IOMMUError) {
            return try lock.withLock { () throws(IOMMUError) -> FaultQueueEndpoint in
                try checkOpen()
                try failures.check("fault.alloc")
                let queue = FaultQueue()
                let id = try install(queue)
                return FaultQueueEndpoint(context: self, id: id, queue: queue)
            }
        } catch {
            throw error.during("FAULT_QUEUE_ALLOC")
        }
    }

    /// A page request from DEVICE `deviceID` (iommu_report_device_fault; the selftest's
    /// TRIGGER_IOPF). With LAST_PAGE it closes a group (with the device's earlier requests of the
    /// same group ID and PASID), which goes to the fault queue of the HWPT handling
    /// it: with a PASID, that PASID's attachment, or — when the IOMMU lets user space own the
    /// PASID table — the nested HWPT of the device's RID; without, the RID's HWPT. With no such
    /// HWPT, or one without a fault queue, the request is answered INVALID by the core and
    /// dropped: that is not an error of the report. Returns whether it was queued. ENOENT if
    /// `deviceID` is no DEVICE.
    @discardableResult
    public func reportPageRequest(device deviceID: UInt32, _ request: PageRequest) throws(IOMMUError) -> Bool {
        try lock.withLock { () throws(IOMMUError) -> Bool in
            try checkOpen()
            let device = try self.device(deviceID)
            // Requests before the last of their group wait with the device (iopf partial list).
            guard request.lastPage else {
                if device.partialPageRequests.count < BoundDevice.maxPartialPageRequests {
                    device.partialPageRequests.append(request)
                }
                return false
            }
            var requests = device.partialPageRequests.filter { $0.groupID == request.groupID && $0.pasid == request.pasid }
            device.partialPageRequests.removeAll { $0.groupID == request.groupID && $0.pasid == request.pasid }
            requests.append(request)
            guard let hwpt = device.hwpt else { return false }
            if request.pasid != nil {
                // No PASID attachments are modelled: only a user-owned PASID table routes it.
                guard device.unit.spec.kind.userPASIDTable, hwpt is HWPTNested else { return false }
            }
            guard let fault = hwpt.fault else { return false }
            fault.deliver.append(PageFaultGroup(device: device, hwpt: hwpt, requests: requests))
            return true
        }
    }

    /// The FAULT object `id`'s pending work: groups queued, groups awaiting a response, and
    /// the responses given so far (cookie, code), oldest first.
    public func faultQueueState(_ id: UInt32) throws(IOMMUError)
        -> (queued: Int, awaiting: Int, responses: [(cookie: UInt32, code: PageResponseCode)]) {
        try lock.withLock { () throws(IOMMUError) -> (queued: Int, awaiting: Int, responses: [(cookie: UInt32, code: PageResponseCode)]) in
            try checkOpen()
            let q = try lookup(id, as: FaultQueue.self, "fault queue")
            return (q.deliver.count, q.awaiting.count, q.responses)
        }
    }
}
