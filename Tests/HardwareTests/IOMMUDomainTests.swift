import Testing
import IOMMUHardware
import UIOMMUBase

@Suite struct IOMMUDomainTests {
    @Test func makesTheUnitsFormat() throws {
        let vtd = try IOMMUDomain(unit: Units.vtd48())
        #expect(vtd.format == .vtdSecondStage)
        #expect(vtd.kind == .intelVTd)
        #expect(vtd.aperture == IOVARange(first: 0, last: (1 << 48) - 1))
        #expect(vtd.pageSizes == IOMMUUnitSpec.x86PageSizes)
        #expect(vtd.granuleShift == 12)
        #expect(vtd.tableMemoryBytes == 4096)
        #expect(vtd.withPageTable { $0 is VTDSecondStagePageTable })
        let amd = try IOMMUDomain(unit: Units.amd())
        #expect(amd.withPageTable { $0 is AMDv1PageTable })
        let mock = try IOMMUDomain(unit: Units.mock(), options: .init(allowHugeIOVA: true))
        #expect(mock.withPageTable { $0 is MockPageTable })
        #expect(mock.pageSizes == 2048 | MiB)
        #expect(mock.granuleShift == 11)
        #expect(Set([vtd.id, amd.id, mock.id]).count == 3)
        #expect(!Set([vtd.id, amd.id, mock.id]).contains(0))

        var arm = Units.vtd48()
        arm.kind = .armSMMUv3
        arm.format = .armLPAE
        #expect(try IOMMUDomain(unit: arm).withPageTable { $0 is ARMLPAEPageTable })
    }

    @Test func optionsTheUnitLacksAreRefused() {
        let plain = Units.vtd39()
        #expect(errnoOf { _ = try IOMMUDomain(unit: plain, options: .init(dirtyTrackingCapable: true)) } == .EOPNOTSUPP)
        #expect(errnoOf { _ = try IOMMUDomain(unit: plain, options: .init(nestParent: true)) } == .EOPNOTSUPP)
        #expect(errnoOf { _ = try IOMMUDomain(unit: plain, options: .init(enforceCacheCoherency: true)) } == .EOPNOTSUPP)
        let failures = FailureInjector()
        failures.failNth(1)
        #expect(errnoOf { _ = try IOMMUDomain(unit: plain, failures: failures) } == .ENOMEM)
    }

    @Test func mapUnmapAndGeneration() throws {
        let d = try IOMMUDomain(unit: Units.vtd48())
        let g0 = d.generation
        try d.map(iova: 0x10000, physical: 0x20000, length: 3 * 4096, permissions: .read, maxLeafSize: .max)
        #expect(d.generation == g0, "a map cannot invalidate anything: nothing is cached for unmapped IOVAs")
        #expect(d.mappedBytes == 3 * 4096)
        #expect(d.translate(iova: 0x11234)?.physical == 0x21234)
        #expect(d.unmap(iova: 0x40000, length: 4096) == 0)
        #expect(d.generation == g0, "an unmap that removed nothing invalidates nothing")
        #expect(d.unmap(iova: 0x10000, length: 3 * 4096) == 3 * 4096)
        #expect(d.generation > g0)
        #expect(d.translate(iova: 0x11234) == nil)
        let g1 = d.generation
        d.invalidateIOTLBs()
        #expect(d.generation > g1)
        #expect(errnoOf { try d.map(iova: 1 << 48, physical: 0, length: 4096, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        #expect(errnoOf { try d.map(iova: 0x800, physical: 0, length: 4096, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        #expect(d.tableMemoryBytes == 4096)
    }

    @Test func failedMapLeavesNothingAtEveryInjectionPoint() throws {
        let failures = FailureInjector()
        let d = try IOMMUDomain(unit: Units.vtd48(), failures: failures)
        var n = 1
        while n < 64 {
            failures.failNth(n)
            do {
                try d.map(iova: GiB - 8192, physical: 0x4000_0000, length: 4 * MiB, permissions: .read, maxLeafSize: .max)
                break
            } catch {
                #expect(error.errno == .ENOMEM)
                #expect(d.mappedBytes == 0)
                #expect(d.tableMemoryBytes == 4096)
            }
            n += 1
        }
        #expect(n > 3)
        #expect(d.mappedBytes == 4 * MiB)
    }

    @Test func dirtyTracking() throws {
        let noDirty = try IOMMUDomain(unit: Units.vtd48())
        #expect(errnoOf { try noDirty.setDirtyTracking(true) } == .EOPNOTSUPP)

        let d = try IOMMUDomain(unit: Units.vtd48(), options: .init(dirtyTrackingCapable: true))
        try d.map(iova: 0, physical: 0, length: 8 * 4096, permissions: [.read, .write], maxLeafSize: .max)
        #expect(!d.dirtyTrackingEnabled)
        let g0 = d.generation
        try d.setDirtyTracking(true)
        #expect(d.dirtyTrackingEnabled)
        #expect(d.generation > g0, "IOTLB entries remember whether a write must walk")
        let g1 = d.generation
        try d.setDirtyTracking(true)
        #expect(d.generation == g1)

        #expect(d.markDirty(iova: 4096 + 17))
        #expect(!d.markDirty(iova: 100 * 4096))
        var seen: [UInt64] = []
        d.readAndClearDirty(iova: 0, length: 8 * 4096, clear: false) { iova, _ in seen.append(iova) }
        #expect(seen == [4096])
        #expect(d.generation == g1, "reading without clearing changes nothing")
        d.readAndClearDirty(iova: 0, length: 8 * 4096, clear: true) { _, _ in }
        #expect(d.generation > g1, "clearing dirty bits invalidates IOTLBs")
        let g2 = d.generation
        d.readAndClearDirty(iova: 0, length: .max, clear: true) { _, _ in Issue.record("already clean") }
        #expect(d.generation == g2)
        try d.setDirtyTracking(false)
        #expect(!d.dirtyTrackingEnabled)
    }

    @Test func cacheCoherencyUpgrade() throws {
        // A unit with snoop control: the upgrade works while the table is empty…
        let d = try IOMMUDomain(unit: Units.vtd48())
        #expect(!d.enforcesCacheCoherency)
        #expect(d.enforceCacheCoherency())
        #expect(d.enforcesCacheCoherency)
        try d.map(iova: 0, physical: 0x5000, length: 4096, permissions: .read, maxLeafSize: .max)
        #expect(d.withPageTable { table -> Bool in
            let vtd = table as! VTDSecondStagePageTable
            let leaf = rawWalk(root: vtd.rootTableAddress, levels: vtd.levels, iova: 0,
                               isTable: { e, _ in e & 0x80 == 0 }, address: { $0 & 0x000F_FFFF_FFFF_F000 }).last!
            return leaf & (1 << 11) != 0
        }, "leaves mapped after the upgrade snoop")
        #expect(d.enforceCacheCoherency(), "idempotent")

        // …but not once something is mapped without SNP.
        let busy = try IOMMUDomain(unit: Units.vtd48())
        try busy.map(iova: 0, physical: 0x5000, length: 4096, permissions: .read, maxLeafSize: .max)
        #expect(!busy.enforceCacheCoherency())
        busy.unmap(iova: 0, length: 4096)
        #expect(busy.enforceCacheCoherency())

        // A unit without snoop control can never enforce.
        let weak = try IOMMUDomain(unit: Units.vtd39())
        #expect(!weak.enforceCacheCoherency())
        #expect(!weak.enforcesCacheCoherency)

        // The mock has no per-leaf snoop bit, so it can upgrade at any time.
        let mock = try IOMMUDomain(unit: Units.mock())
        try mock.map(iova: 1 << 24, physical: 0, length: 2048, permissions: .read, maxLeafSize: .max)
        #expect(mock.enforceCacheCoherency())
    }

    @Test func attachCompatibility() throws {
        let wide = Units.vtd48()
        let narrow = Units.vtd39()
        let plainWide = try IOMMUDomain(unit: wide)
        #expect(plainWide.attachError(to: wide) == nil)
        #expect(plainWide.attachError(to: narrow)?.errno == .EINVAL, "48-bit aperture through a 39-bit unit")

        let plainNarrow = try IOMMUDomain(unit: narrow)
        #expect(plainNarrow.attachError(to: narrow) == nil)
        #expect(plainNarrow.attachError(to: wide) == nil, "a narrower domain fits a wider unit")

        // The VT-d snoop rule.
        let noSnoop = Units.vtd48(name: "dmar2", coherent: false)
        let enforcing = try IOMMUDomain(unit: wide, options: .init(enforceCacheCoherency: true))
        #expect(enforcing.attachError(to: noSnoop)?.errno == .EINVAL)
        #expect(plainWide.attachError(to: noSnoop) == nil)
        #expect(plainWide.enforceCacheCoherency())
        #expect(plainWide.attachError(to: noSnoop)?.errno == .EINVAL, "after the upgrade too")

        // Dirty tracking, nesting and page sizes.
        let dirty = try IOMMUDomain(unit: wide, options: .init(dirtyTrackingCapable: true))
        #expect(dirty.attachError(to: Units.vtd48(name: "x", dirty: false))?.errno == .EINVAL)
        let parent = try IOMMUDomain(unit: wide, options: .init(nestParent: true))
        var noNest = wide
        noNest.nesting = false
        #expect(parent.attachError(to: noNest)?.errno == .EINVAL)
        #expect(plainWide.attachError(to: Units.vtd48(name: "y", pages: (1 << 12) | (1 << 21)))?.errno == .EINVAL,
                "the domain may hold 1 GiB leaves")

        // Format and kind.
        #expect(plainWide.attachError(to: Units.amd())?.errno == .EINVAL)
        let mock = try IOMMUDomain(unit: Units.mock(), options: .init(allowHugeIOVA: true))
        #expect(mock.attachError(to: Units.mock(name: "mock1")) == nil, "huge IOVA is the device's, not the unit's")
        #expect(mock.attachError(to: wide)?.errno == .EINVAL)
    }

    @Test func mockIOPageThroughTheDomain() throws {
        let d = try IOMMUDomain(unit: Units.mock())
        let start: UInt64 = 1 << 24
        try d.map(iova: start, physical: 0x8000, length: 4 * 2048, permissions: .read, maxLeafSize: .max)
        #expect(d.mockIOPage(at: start)?.start == true)
        #expect(d.mockIOPage(at: start + 3 * 2048)?.last == true)
        #expect(d.mockIOPage(at: start + 4 * 2048) == nil)
        let vtd = try IOMMUDomain(unit: Units.vtd48())
        #expect(vtd.mockIOPage(at: 0) == nil)
    }
}
