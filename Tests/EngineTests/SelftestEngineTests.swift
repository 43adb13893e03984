// The engine's selftest support: mock devices on the mock bus (bind, attach, the SELFTEST
// object's teardown, reuse), the host-wide per-page pin counts, the mock driver's HWPT rules,
// and `withMockDomain`.

import Testing
import IOMMUEngine
import IOMMUHardware
import ProcessMemory
import UIOMMUBase

@Suite("Selftest support in the engine")
struct SelftestEngineTests {
    /// A platform whose pins are counted per physical page, with one context.
    static func counted(_ machine: MachineDescription? = nil) throws -> Harness {
        let h = Harness(machine: try machine ?? TestMachines.engineTest())
        h.platform.ledger.physicalPins.startTracking()
        return h
    }

    @Test func mockDeviceLifecycle() throws {
        let h = try Self.counted()
        let ioas = try h.ctx.allocIOAS()
        let ids = try h.ctx.createMockDevice(attachTo: ioas)
        #expect(ids.stdev < ids.idev && ids.idev < ids.hwpt)   // the kernel's allocation order
        #expect(h.ctx.objectKind(ids.stdev) == .selftest)
        #expect(try h.ctx.attachedHWPT(device: ids.idev) == ids.hwpt)
        #expect(try h.ctx.mockDeviceBinding(ids.stdev) == ids.idev)
        #expect(try h.ctx.isMockDevice(ids.idev))
        // The mock devices sit behind the machine's mock IOMMU, in groups of their own.
        let mocks = h.platform.devices.filter { $0.spec.name.hasPrefix("iommufd_mock") }
        #expect(mocks.count == 1)
        #expect(mocks.first?.unit.spec.kind == .selftestMock)
        #expect(h.platform.groupMembers(mocks[0].group).count == 1)
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(ids.idev) }
        try h.ctx.destroy(ids.stdev)
        #expect(h.ctx.objects().map(\.id) == [ioas])
        // The device went back to the bus and is used again; a different kind makes a new one.
        _ = try h.ctx.createMockDevice(attachTo: ioas)
        _ = try h.ctx.createMockDevice(attachTo: ioas, quirks: [.noDirty])
        #expect(h.platform.devices.filter { $0.spec.name.hasPrefix("iommufd_mock") }.count == 2)
        // Closing the context unbinds everything and frees the devices.
        h.ctx.close()
        let again = h.openContext()
        let ioas2 = try again.allocIOAS()
        _ = try again.createMockDevice(attachTo: ioas2)
        _ = try again.createMockDevice(attachTo: ioas2, quirks: [.noDirty])
        #expect(h.platform.devices.filter { $0.spec.name.hasPrefix("iommufd_mock") }.count == 2)
    }

    @Test func concurrentMockDomains() async throws {
        let h = try Self.counted()
        let contexts = (0..<4).map { _ in h.openContext() }
        await withTaskGroup(of: Void.self) { group in
            for ctx in contexts {
                group.addTask {
                    guard let ioas = try? ctx.allocIOAS() else { Issue.record("IOAS_ALLOC failed"); return }
                    for _ in 0..<25 {
                        do throws(IOMMUError) {
                            let ids = try ctx.createMockDevice(attachTo: ioas)
                            try ctx.destroy(ids.stdev)
                        } catch {
                            Issue.record("MOCK_DOMAIN / DESTROY failed: \(error)")
                        }
                    }
                }
            }
        }
        // Each context holds at most one mock device at a time, so at most four exist.
        #expect(h.platform.devices.filter { $0.spec.name.hasPrefix("iommufd_mock") }.count <= 4)
        for ctx in contexts { #expect(ctx.objects().map(\.kind) == [.ioas]) }
    }

    @Test func failedMockDomainLeavesNothing() throws {
        let h = try Self.counted()
        let ioas = try h.ctx.allocIOAS()
        expectErrno(.ENOENT) { () throws(IOMMUError) in _ = try h.ctx.createMockDevice(attachTo: 42) }
        let vdev = try h.ctx.bind(h.platform.device(named: "vdev0")!)
        expectErrno(.EINVAL) { () throws(IOMMUError) in _ = try h.ctx.createMockDevice(attachTo: vdev) }    // a DEVICE is no pt
        #expect(h.ctx.objects().map(\.id) == [ioas, vdev])
        try h.ctx.unbind(device: vdev)
        // Unpinnable memory: the attach fails with EFAULT and unbinds.
        let va = h.space.map(length: 0x2000)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 0x2000, iova: Mock.apertureStart, permissions: [.read, .write])
        h.space.unmap(va: va, length: 0x2000)
        expectErrno(.EFAULT) { () throws(IOMMUError) in _ = try h.ctx.createMockDevice(attachTo: ioas) }
        #expect(h.ctx.objects().map(\.id) == [ioas])
        #expect(h.platform.devices.filter { $0.spec.name.hasPrefix("iommufd_mock") }.allSatisfy {
            (try? h.openContext().bind($0)) != nil
        })
    }

    @Test func machinesWithoutAMockIOMMUGetOne() throws {
        let h = Harness(machine: TestMachines.defaultMachine)
        #expect(!h.platform.units.contains { $0.spec.kind == .selftestMock })
        let ioas = try h.ctx.allocIOAS()
        let ids = try h.ctx.createMockDevice(attachTo: ioas, pasid: true)
        let info = try h.ctx.hwInfo(device: ids.idev)
        #expect(info.kind == .selftestMock)
        #expect(info.maxPASIDLog2 == 20)
        #expect(try h.ctx.iovaRanges(ioas: ioas).ranges == [MockPageTable.defaultAperture])
        // addUnit is idempotent by name.
        let unit = h.platform.addUnit(.selftestMock())
        #expect(unit === h.platform.unit(named: "iommufd_selftest_iommu"))
    }

    @Test func mockDriverHWPTRules() throws {
        let h = try Self.counted()
        let ioas = try h.ctx.allocIOAS()
        let plain = try h.ctx.createMockDevice(attachTo: ioas)
        let noDirty = try h.ctx.createMockDevice(attachTo: ioas, quirks: [.noDirty])
        // A device that cannot track dirty pages gets no dirty-tracking HWPT, and cannot join one.
        expectErrno(.EOPNOTSUPP) { () throws(IOMMUError) in _ = try h.ctx.allocHWPT(device: noDirty.idev, ioas: ioas, flags: [.dirtyTracking]) }
        let dirty = try h.ctx.allocHWPT(device: plain.idev, ioas: ioas, flags: [.dirtyTracking])
        expectErrno(.EINVAL) { () throws(IOMMUError) in _ = try h.ctx.createMockDevice(attachTo: dirty, quirks: [.noDirty]) }
        // The mock's paging domains take no fault queue.
        expectErrno(.EOPNOTSUPP) { () throws(IOMMUError) in _ = try h.ctx.allocHWPT(device: plain.idev, ioas: ioas, flags: [.faultIDValid]) }
        _ = try h.ctx.allocHWPT(device: plain.idev, ioas: ioas, flags: [.nestParent])
        // withMockDomain: paging HWPTs of the mock format only.
        #expect(try h.ctx.withMockDomain(hwpt: dirty) { (d) throws(IOMMUError) in d.format } == .mock)
        expectErrno(.ENOENT) { () throws(IOMMUError) in try h.ctx.withMockDomain(hwpt: ioas) { (_) throws(IOMMUError) in } }
        let vdev = try h.ctx.bind(h.platform.device(named: "vdev0")!)
        let vtd = try h.ctx.allocHWPT(device: vdev, ioas: try h.ctx.allocIOAS())
        expectErrno(.EINVAL) { () throws(IOMMUError) in try h.ctx.withMockDomain(hwpt: vtd) { (_) throws(IOMMUError) in } }
    }

    @Test func replaceMovesTheMockDevice() throws {
        let h = try Self.counted()
        let a = try h.ctx.allocIOAS(), b = try h.ctx.allocIOAS()
        let ids = try h.ctx.createMockDevice(attachTo: a)
        let hwptB = try h.ctx.replaceMockDevice(ids.stdev, with: b)
        #expect(hwptB != ids.hwpt)
        #expect(h.ctx.objectKind(ids.hwpt) == nil)            // the automatic HWPT went
        expectErrno(.ENOENT) { () throws(IOMMUError) in _ = try h.ctx.replaceMockDevice(ids.idev, with: a) }
        #expect(try h.ctx.replaceMockDevice(ids.stdev, with: hwptB) == hwptB)
    }

    @Test func physicalPinCounts() throws {
        let h = try Self.counted()
        let counter = h.platform.ledger.physicalPins
        let va = h.space.map(length: 0x4000)
        let phys = try physical(h.space, va)
        let ioas = try h.ctx.allocIOAS()
        let iova = try h.ctx.map(ioas: ioas, userVA: va, length: 0x4000, iova: Mock.apertureStart, permissions: [.read, .write])
        #expect(counter.pins(physical: phys) == 0)                // lazy: nothing needs the pages
        _ = try h.ctx.createMockDevice(attachTo: ioas)
        #expect(counter.mismatches(physical: phys, length: 0x4000, expected: 1).isEmpty)
        // An access pin over a domain-pinned page adds a user, not a pin.
        let access = try h.ctx.createAccess(ioas: ioas, needsPinPages: true)
        let pin = try h.ctx.accessPinPages(access, iova: iova, length: 0x1000, writable: true)
        #expect(counter.pins(physical: phys) == 1)
        // A second map of the same memory (another Pages) pins it again, in another context too.
        let other = h.openContext()
        let ioas2 = try other.allocIOAS()
        _ = try other.map(ioas: ioas2, userVA: va + 0x1000, length: 0x1000, iova: Mock.apertureStart, permissions: [.read])
        _ = try other.createMockDevice(attachTo: ioas2)
        #expect(counter.pins(physical: phys + 0x1000) == 2)
        #expect(counter.pins(physical: phys) == 1)
        #expect(counter.mismatches(physical: phys, length: 0x4000, expected: 1).map(\.1) == [2])
        other.close()
        try h.ctx.accessUnpin(access, pinID: pin.pinID)
        _ = try h.ctx.unmap(ioas: ioas, iova: 0, length: .max)
        #expect(counter.mismatches(physical: phys, length: 0x4000, expected: 0).isEmpty)
    }

    @Test func pagesMadeBeforeTrackingAreNotCounted() throws {
        let h = try Harness.mock()
        let counter = h.platform.ledger.physicalPins
        let va = h.space.map(length: 0x2000)
        let phys = try physical(h.space, va)
        let ioas = try h.ctx.allocIOAS()
        let early = try h.ctx.map(ioas: ioas, userVA: va, length: 0x1000, iova: Mock.apertureStart, permissions: [.read])
        counter.startTracking()
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 0x2000, iova: Mock.apertureStart + 0x10000, permissions: [.read])
        _ = try h.ctx.createMockDevice(attachTo: ioas)
        #expect(counter.pins(physical: phys) == 1)                // the early map's pin is not seen
        #expect(counter.pins(physical: phys + 0x1000) == 1)
        // ... and its unpin does not underflow the count.
        _ = try h.ctx.unmap(ioas: ioas, iova: early, length: 0x1000)
        #expect(counter.pins(physical: phys) == 1)
        h.ctx.close()
        #expect(counter.pins(physical: phys) == 0)
    }

    /// The physical address behind `va` in a simulated process.
    private func physical(_ space: SimulatedAddressSpace, _ va: UInt64) throws -> UInt64 {
        var result: UInt64 = 0
        try space.resolve(offset: va, length: 0x1000, writable: false) { run in result = run.physical }
        return result
    }
}
