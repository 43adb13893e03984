// vIOMMU, vDEVICE and vEVENTQ objects in the engine: allocation errnos in the kernel's order,
// who holds whom (EBUSY), nested HWPTs on a vIOMMU (attach needs a vDEVICE), cache
// invalidation through virtual IDs, vEVENT delivery with sequence numbers and the lost-events
// header, and the vDEVICE tombstone left by an unbind.

import Testing
import IOMMUEngine
import IOMMUHardware
import UIOMMUBase

@Suite("vIOMMU objects in the engine")
struct VIOMMUEngineTests {
    static let type = MockVIOMMU.type

    static func setUp() throws -> (Harness, ioas: UInt32, ids: MockDeviceIDs, parent: UInt32, viommu: UInt32) {
        let (h, ioas, ids, parent) = try NestingEngineTests.setUp()
        let viommu = try h.ctx.allocVIOMMU(device: ids.idev, hwpt: parent, type: type, userData: nil)
        return (h, ioas, ids, parent, viommu)
    }

    @Test func allocationRulesAndHolds() throws {
        let (h, ioas, ids, parent) = try NestingEngineTests.setUp()
        let plain = try h.ctx.allocHWPT(device: ids.idev, ioas: ioas)
        expectErrno(.ENOENT) { () throws(IOMMUError) in _ = try h.ctx.allocVIOMMU(device: 999, hwpt: parent, type: Self.type, userData: nil) }
        expectErrno(.EOPNOTSUPP) { () throws(IOMMUError) in _ = try h.ctx.allocVIOMMU(device: ids.idev, hwpt: parent, type: 1, userData: nil) }
        expectErrno(.ENOENT) { () throws(IOMMUError) in _ = try h.ctx.allocVIOMMU(device: ids.idev, hwpt: ioas, type: Self.type, userData: nil) }
        expectErrno(.EINVAL) { () throws(IOMMUError) in _ = try h.ctx.allocVIOMMU(device: ids.idev, hwpt: plain, type: Self.type, userData: nil) }
        // Driver data: decoded, answered with the loopback word and an mmap region.
        var answered: (UInt32, UInt64, UInt64)?
        let data = VIOMMUUserData(decode: { () throws(IOMMUError) -> UInt32 in 0x1234 },
                                  respond: { (a, b, c) throws(IOMMUError) in answered = (a, b, c) })
        let viommu = try h.ctx.allocVIOMMU(device: ids.idev, hwpt: parent, type: Self.type, userData: data)
        #expect(answered?.0 == 0x1234 && answered?.1 == 4096 && answered?.2 == 8192)
        // A failing answer leaves nothing behind.
        let before = h.ctx.objects().count
        let failing = VIOMMUUserData(decode: { () throws(IOMMUError) -> UInt32 in 1 },
                                     respond: { (_, _, _) throws(IOMMUError) in throw IOMMUError(.EFAULT, "no") })
        expectErrno(.EFAULT) { () throws(IOMMUError) in _ = try h.ctx.allocVIOMMU(device: ids.idev, hwpt: parent, type: Self.type, userData: failing) }
        #expect(h.ctx.objects().count == before)
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(parent) }
        try h.ctx.destroy(viommu)
        try h.ctx.destroy(parent)
    }

    @Test func vdevicesAndNestedHWPTs() throws {
        let (h, ioas, ids, _, viommu) = try Self.setUp()
        expectErrno(.ENOENT) { () throws(IOMMUError) in _ = try h.ctx.allocVDevice(viommu: 999, device: ids.idev, virtID: 0x99) }
        expectErrno(.ENOENT) { () throws(IOMMUError) in _ = try h.ctx.allocVDevice(viommu: viommu, device: 999, virtID: 0x99) }
        let nested = try h.ctx.allocHWPT(device: ids.idev, pt: viommu, flags: [], userData: NestingEngineTests.selftestData())
        expectErrno(.ENOENT) { () throws(IOMMUError) in _ = try h.ctx.replaceMockDevice(ids.stdev, with: nested) }
        let vdev = try h.ctx.allocVDevice(viommu: viommu, device: ids.idev, virtID: 0x99)
        expectErrno(.EEXIST) { () throws(IOMMUError) in _ = try h.ctx.allocVDevice(viommu: viommu, device: ids.idev, virtID: 0x98) }
        _ = try h.ctx.replaceMockDevice(ids.stdev, with: nested)
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(viommu) }
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(nested) }
        _ = try h.ctx.replaceMockDevice(ids.stdev, with: ioas)
        try h.ctx.destroy(nested)
        try h.ctx.destroy(vdev)
        try h.ctx.destroy(viommu)
    }

    @Test func tombstoneOnUnbind() throws {
        let (h, _, ids, _, viommu) = try Self.setUp()
        let vdev = try h.ctx.allocVDevice(viommu: viommu, device: ids.idev, virtID: 0x99)
        try h.ctx.destroy(ids.stdev)
        expectErrno(.ENOENT) { () throws(IOMMUError) in try h.ctx.destroy(vdev) }
        #expect(h.ctx.objectKind(vdev) == nil)
        try h.ctx.destroy(viommu)
        let next = try h.ctx.allocIOAS()
        #expect(next != vdev)
        h.ctx.close()
        #expect(h.ctx.objects().isEmpty)
    }

    @Test func cacheInvalidation() throws {
        let (h, _, ids, _, viommu) = try Self.setUp()
        _ = try h.ctx.allocVDevice(viommu: viommu, device: ids.idev, virtID: 0x99)
        #expect(try h.ctx.mockDeviceCache(device: ids.idev) == Array(repeating: MockDeviceCache.defaultValue, count: 4))
        let run = { (requests: [VIOMMUInvalidation], type: VIOMMUInvalidationType) -> InvalidationResult in
            h.ctx.invalidateHWPT(viommu, type: .other(0), count: UInt32(requests.count), viommuType: type,
                                 readAll: { () throws(IOMMUError) -> [VIOMMUInvalidation] in requests }) { _ in .selftest(flags: 0, iotlbID: 0) }
        }
        #expect(run([], .selftest).error == nil)
        #expect(run([.selftest(flags: 0, vdevID: 0x99, cacheID: 0)], .other(1)).error?.errno == .EINVAL)
        let partial = run([.selftest(flags: 0, vdevID: 0x99, cacheID: 0), .selftest(flags: 2, vdevID: 0x99, cacheID: 1)], .selftest)
        #expect(partial.done == 1 && partial.error?.errno == .EOPNOTSUPP)
        #expect(run([.selftest(flags: 0, vdevID: 0x9, cacheID: 0)], .selftest).error?.errno == .EINVAL)
        #expect(run([.selftest(flags: 0, vdevID: 0x99, cacheID: 4)], .selftest).error?.errno == .EINVAL)
        #expect(try h.ctx.mockDeviceCache(device: ids.idev) == [0, MockDeviceCache.defaultValue, MockDeviceCache.defaultValue, MockDeviceCache.defaultValue])
        #expect(run([.selftest(flags: 1, vdevID: 0x99, cacheID: 0)], .selftest).done == 1)
        #expect(try h.ctx.mockDeviceCache(device: ids.idev) == [0, 0, 0, 0])
    }

    @Test func eventsSequenceAndLoss() throws {
        let (h, _, ids, _, viommu) = try Self.setUp()
        expectErrno(.ENOENT) { () throws(IOMMUError) in _ = try h.ctx.allocVEventQueue(viommu: 999, type: MockVIOMMU.eventType, depth: 2) }
        let queue = try h.ctx.allocVEventQueue(viommu: viommu, type: MockVIOMMU.eventType, depth: 2)
        expectErrno(.EEXIST) { () throws(IOMMUError) in _ = try h.ctx.allocVEventQueue(viommu: viommu, type: MockVIOMMU.eventType, depth: 2) }
        _ = try h.ctx.allocVDevice(viommu: viommu, device: ids.idev, virtID: 0x99)
        let payload = { (virt: UInt64) -> [UInt8] in [UInt8(truncatingIfNeeded: virt), 0, 0, 0] }
        expectErrno(.ENOENT) { () throws(IOMMUError) in try h.ctx.reportVEvent(device: ids.idev, payload: payload) }
        let nested = try h.ctx.allocHWPT(device: ids.idev, pt: viommu, flags: [], userData: NestingEngineTests.selftestData())
        _ = try h.ctx.replaceMockDevice(ids.stdev, with: nested)
        #expect(!queue.hasQueued)
        for _ in 0..<3 { try h.ctx.reportVEvent(device: ids.idev, payload: payload) }
        #expect(queue.hasQueued)
        // A buffer for one record takes one; the header alone does not fit an event.
        #expect(queue.read(bytes: 11, headerSize: 8).count == 0)
        let first = queue.read(bytes: 12, headerSize: 8)
        #expect(first.map(\.sequence) == [0] && first[0].data == [0x99, 0, 0, 0])
        let rest = queue.read(bytes: 100, headerSize: 8)
        #expect(rest.map(\.sequence) == [1, 2] && rest.map(\.flags) == [0, 1] && rest[1].data.isEmpty)
        // After the loss, a new event replaces the lost-events header at the tail.
        try h.ctx.reportVEvent(device: ids.idev, payload: payload)
        #expect(queue.read(bytes: 100, headerSize: 8).map(\.sequence) == [3])
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(queue.id) }
        queue.closeFile()
        try h.ctx.destroy(queue.id)
        expectErrno(.EOPNOTSUPP) { () throws(IOMMUError) in try h.ctx.reportVEvent(device: ids.idev, payload: payload) }
    }
}
