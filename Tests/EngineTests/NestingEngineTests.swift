// HWPT_NESTED, user cache invalidation and FAULT objects in the engine: allocation rules and
// errnos in the kernel's order, who holds whom (EBUSY), attach / replace through a nested
// HWPT, the mock's nested IOTLB, page requests queued, read, answered, and answered on the
// device's behalf when it leaves the HWPT or the queue is destroyed.

import Testing
import IOMMUEngine
import IOMMUHardware
import UIOMMUBase

@Suite("Nested HWPTs and fault queues in the engine")
struct NestingEngineTests {
    static func selftestData(_ iotlb: UInt32 = 0xbad_beef) -> HWPTUserData {
        HWPTUserData { () throws(IOMMUError) -> NestedDomainConfig in .selftest(iotlb: iotlb) }
    }

    /// A context with an IOAS, a mock device on it, and a NEST_PARENT HWPT.
    static func setUp() throws -> (Harness, ioas: UInt32, ids: MockDeviceIDs, parent: UInt32) {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let ids = try h.ctx.createMockDevice(attachTo: ioas)
        let parent = try h.ctx.allocHWPT(device: ids.idev, pt: ioas, flags: [.nestParent])
        return (h, ioas, ids, parent)
    }

    @Test func nestedAllocationRules() throws {
        let (h, ioas, ids, parent) = try Self.setUp()
        let plain = try h.ctx.allocHWPT(device: ids.idev, ioas: ioas)
        let alloc = { (pt: UInt32, flags: HWPTAllocFlags, data: HWPTUserData?) throws(IOMMUError) -> UInt32 in
            try h.ctx.allocHWPT(device: ids.idev, pt: pt, flags: flags, userData: data)
        }
        // Core checks: flags a nested HWPT cannot take, missing data (EOPNOTSUPP); a parent that
        // is not a nesting parent, or an automatic domain (EINVAL).
        expectErrno(.EOPNOTSUPP) { () throws(IOMMUError) in try alloc(parent, [.nestParent], Self.selftestData()) }
        expectErrno(.EOPNOTSUPP) { () throws(IOMMUError) in try alloc(parent, [], nil) }
        expectErrno(.EINVAL) { () throws(IOMMUError) in try alloc(plain, [], Self.selftestData()) }
        expectErrno(.EINVAL) { () throws(IOMMUError) in try alloc(ids.hwpt, [], Self.selftestData()) }
        // The driver's errors come from reading its data, after the parent checks.
        let unsupported = HWPTUserData { () throws(IOMMUError) -> NestedDomainConfig in throw IOMMUError(.EOPNOTSUPP, "type") }
        expectErrno(.EOPNOTSUPP) { () throws(IOMMUError) in try alloc(parent, [], unsupported) }
        expectErrno(.EINVAL) { () throws(IOMMUError) in try alloc(plain, [], unsupported) }
        // A nested HWPT is no parent (the kernel's "else": EINVAL), nor is a device.
        let nested = try alloc(parent, [], Self.selftestData())
        #expect(h.ctx.objectKind(nested) == .hwptNested)
        #expect(try h.ctx.nestedParent(hwpt: nested) == parent)
        expectErrno(.EINVAL) { () throws(IOMMUError) in try alloc(nested, [], Self.selftestData()) }
        expectErrno(.EINVAL) { () throws(IOMMUError) in try alloc(ids.idev, [], Self.selftestData()) }
        // Paging HWPTs take no data.
        expectErrno(.EOPNOTSUPP) { () throws(IOMMUError) in try alloc(ioas, [], Self.selftestData()) }
        // PASID-compatible nested HWPTs are fine.
        _ = try alloc(parent, [.pasid], Self.selftestData())
        // FAULT_ID_VALID: a missing fault queue is ENOENT, and nothing is left behind.
        let before = h.ctx.objects()
        expectErrno(.ENOENT) { () throws(IOMMUError) in
            try h.ctx.allocHWPT(device: ids.idev, pt: parent, flags: [.faultIDValid], faultID: .max, userData: Self.selftestData())
        }
        #expect(h.ctx.objects() == before)
        // The parent is held: EBUSY until its children are gone.
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(parent) }
        #expect(try h.ctx.mockNestedIOTLB(hwpt: nested) == [UInt32](repeating: 0xbad_beef, count: 4))
        expectErrno(.ENOENT) { () throws(IOMMUError) in _ = try h.ctx.mockNestedIOTLB(hwpt: parent) }
        for object in h.ctx.objects() where object.kind == .hwptNested { try h.ctx.destroy(object.id) }
        try h.ctx.destroy(parent)
    }

    @Test func otherIOMMUsHaveNoMockNesting() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let vtd = try h.ctx.bind(h.platform.device(named: "vdev0")!)
        let parent = try h.ctx.allocHWPT(device: vtd, pt: ioas, flags: [.nestParent])
        // VT-d nests, but its first-stage data is not modelled: the mock's data is EOPNOTSUPP.
        expectErrno(.EOPNOTSUPP) { () throws(IOMMUError) in
            _ = try h.ctx.allocHWPT(device: vtd, pt: parent, flags: [], userData: Self.selftestData())
        }
        // A mock device cannot nest on a VT-d parent (another driver's domain: EINVAL).
        let mock = try h.ctx.createMockDevice(attachTo: ioas)
        expectErrno(.EINVAL) { () throws(IOMMUError) in
            _ = try h.ctx.allocHWPT(device: mock.idev, pt: parent, flags: [], userData: Self.selftestData())
        }
    }

    @Test func attachReplaceAndDestroyRules() throws {
        let (h, ioas, ids, parent) = try Self.setUp()
        let n0 = try h.ctx.allocHWPT(device: ids.idev, pt: parent, flags: [], userData: Self.selftestData())
        let n1 = try h.ctx.allocHWPT(device: ids.idev, pt: parent, flags: [], userData: Self.selftestData())
        #expect(try h.ctx.replaceMockDevice(ids.stdev, with: n0) == n0)
        // The automatic domain the device left is gone; the nested HWPT is held by the device.
        #expect(h.ctx.objectKind(ids.hwpt) == nil)
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(n0) }
        #expect(try h.ctx.replaceMockDevice(ids.stdev, with: n1) == n1)
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(n1) }
        try h.ctx.destroy(n0)
        // DMA through a nested HWPT is not translated (no stage-1 walk): the context is empty.
        let mock = h.platform.devices.first { $0.spec.name.hasPrefix("iommufd_mock") }!
        #expect(mock.unit.context(requester: mock.spec.address) == nil)
        // Back to the parent, then to the IOAS (a new automatic domain).
        #expect(try h.ctx.replaceMockDevice(ids.stdev, with: parent) == parent)
        #expect(mock.unit.context(requester: mock.spec.address) != nil)
        try h.ctx.destroy(n1)
        let auto = try h.ctx.replaceMockDevice(ids.stdev, with: ioas)
        #expect(auto != parent && h.ctx.objectKind(auto) == .hwptPaging)
        try h.ctx.destroy(parent)
        // A device can attach to a nested HWPT straight away, and close tears it all down.
        let parent2 = try h.ctx.allocHWPT(device: ids.idev, pt: ioas, flags: [.nestParent])
        let n2 = try h.ctx.allocHWPT(device: ids.idev, pt: parent2, flags: [], userData: Self.selftestData())
        let other = try h.ctx.createMockDevice(attachTo: n2)
        #expect(other.hwpt == n2)
        h.ctx.close()
        #expect(h.ctx.objects().isEmpty)
    }

    @Test func userCacheInvalidation() throws {
        let (h, _, ids, parent) = try Self.setUp()
        let nested = try h.ctx.allocHWPT(device: ids.idev, pt: parent, flags: [], userData: Self.selftestData())
        let requests: [NestedInvalidation] = [.selftest(flags: 0, iotlbID: 0), .selftest(flags: 0xffff_ffff, iotlbID: 1)]
        func invalidate(_ id: UInt32, _ list: [NestedInvalidation],
                        type: NestedInvalidationType = .selftest) -> InvalidationResult {
            h.ctx.invalidateHWPT(id, type: type, count: UInt32(list.count)) { (i) throws(IOMMUError) in list[Int(i)] }
        }
        // Not a nested HWPT: EINVAL; nothing: ENOENT.
        #expect(invalidate(parent, [.selftest(flags: 0, iotlbID: 0)]).error?.errno == .EINVAL)
        #expect(invalidate(999, []).error?.errno == .ENOENT)
        // An empty array checks the type only.
        #expect(invalidate(nested, []).error == nil)
        #expect(invalidate(nested, [], type: .other(0xdadbeef)).error?.errno == .EINVAL)
        // The first request is done, the second has unknown flags.
        let r = invalidate(nested, requests)
        #expect(r.done == 1 && r.error?.errno == .EOPNOTSUPP)
        #expect(try h.ctx.mockNestedIOTLB(hwpt: nested) == [0, 0xbad_beef, 0xbad_beef, 0xbad_beef])
        let r2 = invalidate(nested, [.selftest(flags: 0, iotlbID: 1), .selftest(flags: 0, iotlbID: 4)])
        #expect(r2.done == 1 && r2.error?.errno == .EINVAL)
        // A request that cannot be read stops the array with its own error.
        let r3 = h.ctx.invalidateHWPT(nested, type: .selftest, count: 3) { (i) throws(IOMMUError) -> NestedInvalidation in
            if i == 1 { throw IOMMUError(.EFAULT, "unreadable") }
            return .selftest(flags: 0, iotlbID: 2)
        }
        #expect(r3.done == 1 && r3.error?.errno == .EFAULT)
        #expect(try h.ctx.mockNestedIOTLB(hwpt: nested) == [0, 0, 0, 0xbad_beef])
        // The id is checked even with ALL (as the mock driver does), then ALL clears everything.
        #expect(invalidate(nested, [.selftest(flags: 1, iotlbID: 77)]).error?.errno == .EINVAL)
        #expect(try h.ctx.mockNestedIOTLB(hwpt: nested) == [0, 0, 0, 0xbad_beef])
        #expect(invalidate(nested, [.selftest(flags: 1, iotlbID: 0)]).done == 1)
        #expect(try h.ctx.mockNestedIOTLB(hwpt: nested) == [0, 0, 0, 0])
    }

    @Test func pageRequestsFlowThroughTheFaultQueue() throws {
        let (h, ioas, ids, parent) = try Self.setUp()
        let queue = try h.ctx.allocFaultQueue()
        #expect(h.ctx.objectKind(queue.id) == .fault)
        let iopf = try h.ctx.allocHWPT(device: ids.idev, pt: parent, flags: [.faultIDValid], faultID: queue.id,
                                       userData: Self.selftestData())
        // The descriptor and the HWPT hold the queue.
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(queue.id) }
        // Not attached yet: a request is dropped.
        let request = PageRequest(pasid: 1, groupID: 2, permissions: 3, address: 0xdead_beaf)
        #expect(try h.ctx.reportPageRequest(device: ids.idev, request) == false)
        #expect(try h.ctx.replaceMockDevice(ids.stdev, with: iopf) == iopf)
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(iopf) }
        #expect(!queue.hasQueued)
        #expect(try h.ctx.reportPageRequest(device: ids.idev, request))
        #expect(queue.hasQueued)
        // Whole groups only: room for no record reads nothing.
        #expect(queue.read(maxRecords: 0).isEmpty)
        let records = queue.read(maxRecords: 4)
        #expect(records == [PageFaultRecord(flags: 3, deviceID: ids.idev, pasid: 1, groupID: 2, permissions: 3,
                                            address: 0xdead_beaf, length: 0, cookie: 1)])
        #expect(queue.read(maxRecords: 4).isEmpty)
        // Responses: a bad code or an unknown cookie is EINVAL; a good one is taken once.
        expectErrno(.EINVAL) { () throws(IOMMUError) in try queue.respond(cookie: 1, code: 2) }
        expectErrno(.EINVAL) { () throws(IOMMUError) in try queue.respond(cookie: 9, code: 0) }
        try queue.respond(cookie: 1, code: 0)
        expectErrno(.EINVAL) { () throws(IOMMUError) in try queue.respond(cookie: 1, code: 0) }
        // A group split over requests: the first waits with the device until LAST_PAGE.
        var first = request
        first.lastPage = false
        #expect(try h.ctx.reportPageRequest(device: ids.idev, first) == false)
        #expect(try h.ctx.reportPageRequest(device: ids.idev, request))
        let group = queue.read(maxRecords: 8)
        #expect(group.map(\.flags) == [1, 3] && Set(group.map(\.cookie)) == [1])
        // Without a PASID the RID's HWPT takes it too; an unknown device is ENOENT.
        #expect(try h.ctx.reportPageRequest(device: ids.idev, PageRequest(pasid: nil, groupID: 0, permissions: 1, address: 0)))
        expectErrno(.ENOENT) { () throws(IOMMUError) in try h.ctx.reportPageRequest(device: 999, request) }
        // Leaving the HWPT answers the device's pending groups INVALID (read or not).
        #expect(try h.ctx.faultQueueState(queue.id).queued == 1)
        #expect(try h.ctx.faultQueueState(queue.id).awaiting == 1)
        _ = try h.ctx.replaceMockDevice(ids.stdev, with: ioas)
        let state = try h.ctx.faultQueueState(queue.id)
        #expect(state.queued == 0 && state.awaiting == 0)
        #expect(state.responses.last?.code == .invalid)
        expectErrno(.EINVAL) { () throws(IOMMUError) in try queue.respond(cookie: 1, code: 0) }
        // The HWPT, then the descriptor, let go; then DESTROY works.
        try h.ctx.destroy(iopf)
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(queue.id) }
        queue.closeFile()
        try h.ctx.destroy(queue.id)
        expectErrno(.ENOENT) { () throws(IOMMUError) in try h.ctx.destroy(queue.id) }
    }

    @Test func closeTearsDownHeldQueues() throws {
        let (h, _, ids, parent) = try Self.setUp()
        let queue = try h.ctx.allocFaultQueue()
        let iopf = try h.ctx.allocHWPT(device: ids.idev, pt: parent, flags: [.faultIDValid], faultID: queue.id,
                                       userData: Self.selftestData())
        _ = try h.ctx.replaceMockDevice(ids.stdev, with: iopf)
        #expect(try h.ctx.reportPageRequest(device: ids.idev, PageRequest(pasid: 7, groupID: 1, permissions: 1, address: 0x1000)))
        _ = queue.read(maxRecords: 1)
        // The descriptor is still open: close drops its hold like the drivers' and tears down.
        h.ctx.close()
        #expect(h.ctx.objects().isEmpty)
        queue.closeFile()                       // the descriptor closing later is harmless
        #expect(queue.read(maxRecords: 1).isEmpty)
    }

    @Test func abortedAllocationLeavesNothing() throws {
        let h = try Harness.mock()
        let queue = try h.ctx.allocFaultQueue()
        queue.abort()
        #expect(h.ctx.objects().isEmpty)
        queue.abort()
        queue.closeFile()
    }
}
