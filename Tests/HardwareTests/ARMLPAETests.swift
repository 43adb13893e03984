import Foundation
import Testing
import IOMMUHardware
import ProcessMemory
import UIOMMUBase

/// ARM LPAE stage 2, 4 KiB granule, checked at the bit level against the VMSAv8-64 layout:
/// bits 1:0 = 0b11 table (levels 0-2) / page (level 3), 0b01 block (levels 1-2); MemAttr 5:2,
/// S2AP 7:6 (6 read, 7 write), SH 9:8, AF 10, output address 47:12, DBM 51.
@Suite struct ARMLPAETests {
    static let addressMask: UInt64 = 0x0000_FFFF_FFFF_F000

    /// A leaf descriptor assembled from literal bit positions.
    static func leaf(_ address: UInt64, page: Bool, read: Bool = false, write: Bool = false,
                     dbm: Bool = false, memAttr: UInt64 = 0b1111) -> UInt64 {
        var e = address | (page ? 0b11 : 0b01) | (memAttr << 2) | (0b11 << 8) | (1 << 10)
        if read { e |= 1 << 6 }
        if write { e |= 1 << 7 }
        if dbm { e |= 1 << 51 }
        return e
    }

    /// Raw descriptors from the root down to the one mapping `iova` (0b11 above level 3 is a table).
    static func walk(_ t: ARMLPAEPageTable, _ iova: UInt64) -> [UInt64] {
        rawWalk(root: t.rootTableAddress, levels: t.levels, iova: iova,
                isTable: { e, _ in e & 0b11 == 0b11 }, address: { $0 & Self.addressMask })
    }
    func walk(_ t: ARMLPAEPageTable, _ iova: UInt64) -> [UInt64] { Self.walk(t, iova) }

    static let bits48 = IOVARange(first: 0, last: (1 << 48) - 1)

    static func smmu(name: String = "smmu0", width: Int = 48, coherent: Bool = true,
                     dirty: Bool = true) -> IOMMUUnitSpec {
        IOMMUUnitSpec(name: name, kind: .armSMMUv3, format: .armLPAE, pageSizes: IOMMUUnitSpec.x86PageSizes,
                      aperture: IOVARange(first: 0, last: (1 << UInt64(width)) - 1), enforcesCacheCoherency: coherent,
                      dirtyTracking: dirty, nesting: true, pasidWidth: 20, reservedRegions: [])
    }

    // MARK: Geometry

    @Test func levelsFollowTheApertureWidth() throws {
        let t39 = try ARMLPAEPageTable(aperture: IOVARange(first: 0, last: (1 << 39) - 1))
        #expect(t39.levels == 3 && t39.startLevel == 1)
        let t40 = try ARMLPAEPageTable(aperture: IOVARange(first: 0, last: (1 << 39) + 4095))
        #expect(t40.levels == 4 && t40.startLevel == 0)
        let t48 = try ARMLPAEPageTable(aperture: Self.bits48)
        #expect(t48.levels == 4 && t48.startLevel == 0)
        #expect(try ARMLPAEPageTable(aperture: IOVARange(first: 0, last: (1 << 30) - 1)).levels == 3,
                "at least 3 levels")
        // 4 KiB granule, 4 levels: 48 bits at most.
        #expect(errnoOf { _ = try ARMLPAEPageTable(aperture: IOVARange(first: 0, last: (1 << 48) + 4095)) } == .EINVAL)
        #expect(errnoOf { _ = try ARMLPAEPageTable(aperture: IOVARange(first: 0, last: (1 << 49) - 1)) } == .EINVAL)
        #expect(errnoOf { _ = try ARMLPAEPageTable(aperture: .all) } == .EINVAL)
        #expect(errnoOf { _ = try ARMLPAEPageTable(aperture: IOVARange(first: 0, last: 0xFFE)) } == .EINVAL)
        #expect(errnoOf { _ = try ARMLPAEPageTable(aperture: Self.bits48, pageSizes: 1 << 21) } == .EINVAL)
        // Only the 4 KiB granule's sizes: 64 KiB and 512 MiB (64 KiB-granule sizes) are dropped.
        let t = try ARMLPAEPageTable(aperture: Self.bits48,
                                     pageSizes: (1 << 12) | (1 << 16) | (1 << 21) | (1 << 29) | (1 << 30))
        #expect(t.pageSizes == (1 << 12) | (1 << 21) | (1 << 30))
        #expect(t.format == .armLPAE)
        #expect(t.tableMemoryBytes == 4096)
        #expect(!t.forceCoherent && !t.hardwareDirty)
    }

    @Test func threeLevelsVersusFourLevelsInRawMemory() throws {
        let iova: UInt64 = 0x7F_C020_3000        // below 2^39: fits both
        let t3 = try ARMLPAEPageTable(aperture: IOVARange(first: 0, last: (1 << 39) - 1))
        let t4 = try ARMLPAEPageTable(aperture: Self.bits48)
        for t in [t3, t4] {
            try t.map(iova: iova, physical: 0x8000_1000, length: 4096, permissions: .read, maxLeafSize: .max)
        }
        // 3 levels: the root is ARM level 1, indexed by bits 38:30.
        let p3 = walk(t3, iova)
        #expect(p3.count == 3)
        #expect(entry(t3.rootTableAddress, Int((iova >> 30) & 511)) & 0b11 == 0b11)
        for i in 0..<512 where i != Int((iova >> 30) & 511) { #expect(entry(t3.rootTableAddress, i) == 0) }
        // 4 levels: the root is level 0 (bits 47:39, here index 0), one more table below it.
        let p4 = walk(t4, iova)
        #expect(p4.count == 4)
        #expect(entry(t4.rootTableAddress, 0) & 0b11 == 0b11)
        #expect((1..<512).allSatisfy { entry(t4.rootTableAddress, $0) == 0 })
        #expect(p3.last == Self.leaf(0x8000_1000, page: true, read: true))
        #expect(p4.last == p3.last)
        #expect(t3.tableMemoryBytes == 3 * 4096)
        #expect(t4.tableMemoryBytes == 4 * 4096)
        // A 1 GiB block sits in the root of a 3-level table.
        try t3.map(iova: 3 * GiB, physical: 5 * GiB, length: GiB, permissions: .read, maxLeafSize: .max)
        #expect(walk(t3, 3 * GiB) == [Self.leaf(5 * GiB, page: false, read: true)])
        #expect(entry(t3.rootTableAddress, 3) == Self.leaf(5 * GiB, page: false, read: true))
        // 2^39 is outside the 3-level table, inside the 4-level one.
        #expect(errnoOf { try t3.map(iova: 1 << 39, physical: 0, length: 4096, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        try t4.map(iova: 1 << 39, physical: 0x1000, length: 4096, permissions: .read, maxLeafSize: .max)
        #expect(entry(t4.rootTableAddress, 1) & 0b11 == 0b11)
    }

    // MARK: Descriptors

    @Test func tableAndPageDescriptorBits() throws {
        let t = try ARMLPAEPageTable(aperture: Self.bits48)
        let iova: UInt64 = 0x12_3456_7000
        try t.map(iova: iova, physical: 0x5555_0000, length: 4096, permissions: [.read, .write], maxLeafSize: .max)
        let path = walk(t, iova)
        #expect(path.count == 4)
        for e in path.dropLast() {
            #expect(e & 0b11 == 0b11, "table descriptor")
            #expect(e & 0xFFF == 0b11, "no attributes in a stage-2 table descriptor")
            #expect(e >> 48 == 0, "nothing above the address")
        }
        // Page: 0b11, MemAttr 0b1111, S2AP read|write, SH 0b11, AF.
        let pageRW: UInt64 = 0x5555_0000 | 0b11 | (0b1111 << 2) | (1 << 6) | (1 << 7) | (0b11 << 8) | (1 << 10)
        #expect(path[3] == pageRW)
        #expect(path[3] == 0x5555_07FF)
        #expect(t.translate(iova: iova + 0x123) == IOTranslation(physical: 0x5555_0123, permissions: [.read, .write],
                                                                   leafSize: 4096, dirty: false))
        // Read-only and write-only pages differ only in S2AP.
        try t.map(iova: iova + 4096, physical: 0x6000, length: 4096, permissions: .read, maxLeafSize: .max)
        try t.map(iova: iova + 8192, physical: 0x7000, length: 4096, permissions: .write, maxLeafSize: .max)
        let pageR: UInt64 = 0x6000 | 0b11 | (0b1111 << 2) | (1 << 6) | (0b11 << 8) | (1 << 10)
        let pageW: UInt64 = 0x7000 | 0b11 | (0b1111 << 2) | (1 << 7) | (0b11 << 8) | (1 << 10)
        #expect(walk(t, iova + 4096)[3] == pageR)
        #expect(walk(t, iova + 8192)[3] == pageW)
        #expect(t.translate(iova: iova + 4096)?.permissions == .read)
        #expect(t.translate(iova: iova + 8192)?.permissions == .write)
        #expect(t.mappedBytes == 3 * 4096)
        #expect(t.tableMemoryBytes == 4 * 4096)
    }

    @Test func blockDescriptorBits() throws {
        let t = try ARMLPAEPageTable(aperture: Self.bits48)
        // 2 MiB block at level 2.
        try t.map(iova: 2 * MiB, physical: 0x4000_0000, length: 2 * MiB, permissions: [.read, .write], maxLeafSize: .max)
        let p2 = walk(t, 2 * MiB)
        #expect(p2.count == 3)
        let block2M: UInt64 = 0x4000_0000 | 0b01 | (0b1111 << 2) | (1 << 6) | (1 << 7) | (0b11 << 8) | (1 << 10)
        #expect(p2[2] == block2M)
        #expect(p2[2] & 0b10 == 0, "block, not table")
        // 1 GiB block at level 1.
        try t.map(iova: GiB, physical: 2 * GiB, length: GiB, permissions: .read, maxLeafSize: .max)
        let p1 = walk(t, GiB)
        #expect(p1.count == 2)
        let block1G: UInt64 = 2 * GiB | 0b01 | (0b1111 << 2) | (1 << 6) | (0b11 << 8) | (1 << 10)
        #expect(p1[1] == block1G)
        #expect(t.translate(iova: GiB + 0x1234_5678)?.physical == 2 * GiB + 0x1234_5678)
        #expect(t.translate(iova: GiB + 5)?.leafSize == GiB)
        #expect(t.translate(iova: 2 * MiB + 5)?.leafSize == 2 * MiB)
        #expect(t.tableMemoryBytes == 3 * 4096)
        // No block at level 0: a 512 GiB-aligned 512 GiB range becomes 512 level-1 blocks.
        try t.map(iova: 512 * GiB, physical: 512 * GiB, length: 512 * GiB, permissions: .read, maxLeafSize: .max)
        let p0 = walk(t, 512 * GiB + 7 * GiB)
        #expect(p0.count == 2)
        #expect(p0[0] & 0b11 == 0b11)
        #expect(p0[1] == Self.leaf(519 * GiB, page: false, read: true))
        #expect(t.translate(iova: 1023 * GiB)?.leafSize == GiB)
        #expect(t.tableMemoryBytes == 4 * 4096)
        // A unit without 1 GiB pages gets 2 MiB blocks; maxLeafSize 4 KiB gets pages.
        let small = try ARMLPAEPageTable(aperture: Self.bits48, pageSizes: (1 << 12) | (1 << 21))
        try small.map(iova: GiB, physical: GiB, length: GiB, permissions: .read, maxLeafSize: .max)
        #expect(walk(small, GiB).count == 3)
        #expect(walk(small, GiB)[2] == Self.leaf(GiB, page: false, read: true))
        try small.map(iova: 4 * GiB, physical: 4 * GiB, length: 2 * MiB, permissions: .read, maxLeafSize: 4096)
        #expect(walk(small, 4 * GiB + 4096)[3] == Self.leaf(4 * GiB + 4096, page: true, read: true))
    }

    @Test func permissionsAndInvalidRequests() throws {
        let t = try ARMLPAEPageTable(aperture: Self.bits48)
        #expect(errnoOf { try t.map(iova: 0, physical: 0, length: 4096, permissions: [], maxLeafSize: .max) } == .EINVAL,
                "a stage-2 leaf with S2AP = 0b00 maps nothing useful; refused like the other formats")
        // The output address is bits 47:12.
        #expect(errnoOf { try t.map(iova: 0, physical: 1 << 48, length: 4096, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        #expect(errnoOf { try t.map(iova: 0, physical: (1 << 48) - 4096, length: 8192, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        #expect(errnoOf { try t.map(iova: 0x800, physical: 0, length: 4096, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        #expect(errnoOf { try t.map(iova: 1 << 48, physical: 0, length: 4096, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        #expect(t.mappedBytes == 0 && t.tableMemoryBytes == 4096)
        try t.map(iova: 0, physical: (1 << 48) - 4096, length: 4096, permissions: .read, maxLeafSize: .max)
        #expect(walk(t, 0)[3] == Self.leaf(0x0000_FFFF_FFFF_F000, page: true, read: true))
        #expect(t.translate(iova: 0xFFF)?.physical == (1 << 48) - 1)
        // Overlaps are refused and leave nothing.
        #expect(errnoOf { try t.map(iova: 0, physical: 0, length: 2 * MiB, permissions: .read, maxLeafSize: .max) } == .EEXIST)
        #expect(t.mappedBytes == 4096)
    }

    @Test func unmapFreesTables() throws {
        let t = try ARMLPAEPageTable(aperture: Self.bits48, hardwareDirty: true)
        try t.map(iova: 2 * MiB, physical: 2 * MiB, length: 2 * MiB, permissions: [.read, .write], maxLeafSize: .max)
        try t.map(iova: 4 * MiB, physical: 0x1000, length: 16 * 4096, permissions: .read, maxLeafSize: .max)
        #expect(t.tableMemoryBytes == 4 * 4096)
        #expect(t.unmap(iova: 2 * MiB + 4096, length: MiB) == 0, "a block is never split")
        #expect(t.unmap(iova: 4 * MiB, length: 16 * 4096) == 16 * 4096)
        #expect(t.tableMemoryBytes == 3 * 4096)
        #expect(t.unmap(iova: 0, length: .max) == 2 * MiB)
        #expect(t.tableMemoryBytes == 4096 && t.mappedBytes == 0)
        #expect((0..<512).allSatisfy { entry(t.rootTableAddress, $0) == 0 })
    }

    // MARK: Coherency

    @Test func forceCoherentWritesTheS2FWBWriteBackAttribute() throws {
        let t = try ARMLPAEPageTable(aperture: Self.bits48, forceCoherent: true)
        #expect(t.forceCoherent)
        try t.map(iova: 0, physical: 0x10000, length: 4096, permissions: .read, maxLeafSize: .max)
        try t.map(iova: 2 * MiB, physical: 4 * MiB, length: 2 * MiB, permissions: .read, maxLeafSize: .max)
        let p = walk(t, 0)
        let forced: UInt64 = 0x10000 | 0b11 | (0b0110 << 2) | (1 << 6) | (0b11 << 8) | (1 << 10)
        #expect(p[3] == forced)
        for e in p.dropLast() { #expect(e & 0xFFF == 0b11, "table descriptors carry no attributes") }
        #expect(walk(t, 2 * MiB)[2] == Self.leaf(4 * MiB, page: false, read: true, memAttr: 0b0110))
        t.forceCoherent = false
        try t.map(iova: 4096, physical: 0x20000, length: 4096, permissions: .read, maxLeafSize: .max)
        #expect(walk(t, 4096)[3] == Self.leaf(0x20000, page: true, read: true, memAttr: 0b1111))
        #expect(walk(t, 0)[3] & (0b1111 << 2) == 0b0110 << 2, "existing leaves are not rewritten")
    }

    // MARK: Access flag and dirty state

    @Test func accessFlagIsSetAtMapAndWalksChangeNothingElse() throws {
        let t = try ARMLPAEPageTable(aperture: Self.bits48)
        try t.map(iova: 0, physical: 0x9000, length: 4096, permissions: [.read, .write], maxLeafSize: .max)
        let mapped = walk(t, 0)[3]
        #expect(mapped & (1 << 10) != 0)
        _ = t.translate(iova: 0)
        _ = t.walkForDMA(iova: 0, write: false)
        _ = t.walkForDMA(iova: 0, write: true)
        t.dirtyTrackingEnabled = true
        // Without hardware dirty management the writable leaf is plain S2AP[1]: never dirty.
        #expect(t.walkForDMA(iova: 0, write: true)?.dirty == false)
        #expect(walk(t, 0)[3] == mapped)
        #expect(walk(t, 0)[3] & (1 << 51) == 0)
        #expect(!t.markDirty(iova: 0), "no DBM: cannot be dirty")
        t.readAndClearDirty(iova: 0, length: .max, clear: true) { _, _ in Issue.record("nothing can be dirty") }
        #expect(walk(t, 0)[3] == mapped, "harvest must not strip S2AP[1] from a non-DBM leaf")
        #expect(t.translate(iova: 0)?.permissions == [.read, .write])
    }

    @Test func dbmWritableCleanAndDirtyThroughDMAWalks() throws {
        let t = try ARMLPAEPageTable(aperture: Self.bits48, hardwareDirty: true)
        #expect(t.hardwareDirty)
        try t.map(iova: 0, physical: 0x9000, length: 4096, permissions: [.read, .write], maxLeafSize: .max)
        try t.map(iova: 4096, physical: 0xA000, length: 4096, permissions: .read, maxLeafSize: .max)
        try t.map(iova: 8192, physical: 0xB000, length: 4096, permissions: .write, maxLeafSize: .max)
        try t.map(iova: 2 * MiB, physical: 2 * MiB, length: 2 * MiB, permissions: [.read, .write], maxLeafSize: .max)
        // Writable-clean: DBM = 1, S2AP[1] = 0.
        let clean: UInt64 = 0x9000 | 0b11 | (0b1111 << 2) | (1 << 6) | (0b11 << 8) | (1 << 10) | (1 << 51)
        #expect(walk(t, 0)[3] == clean)
        #expect(walk(t, 4096)[3] == Self.leaf(0xA000, page: true, read: true), "read-only: no DBM")
        #expect(walk(t, 8192)[3] == Self.leaf(0xB000, page: true, dbm: true), "write-only: S2AP = 0b00 with DBM")
        #expect(walk(t, 2 * MiB)[2] == Self.leaf(2 * MiB, page: false, read: true, dbm: true))
        #expect(t.translate(iova: 0) == IOTranslation(physical: 0x9000, permissions: [.read, .write], leafSize: 4096, dirty: false))
        #expect(t.translate(iova: 8192)?.permissions == .write)

        // Tracking off: the write goes through and records nothing.
        #expect(t.walkForDMA(iova: 0, write: true)?.permissions == [.read, .write])
        #expect(walk(t, 0)[3] == clean)
        t.dirtyTrackingEnabled = true
        // A read marks nothing.
        #expect(t.walkForDMA(iova: 0, write: false)?.dirty == false)
        #expect(walk(t, 0)[3] == clean)
        // A write sets S2AP[1]: writable-dirty.
        #expect(t.walkForDMA(iova: 0x10, write: true)?.dirty == true)
        #expect(walk(t, 0)[3] == clean | (1 << 7))
        #expect(t.translate(iova: 0)?.dirty == true)
        #expect(t.translate(iova: 0)?.permissions == [.read, .write])
        // A write the leaf forbids changes nothing (the caller faults it).
        #expect(t.walkForDMA(iova: 4096, write: true)?.permissions == .read)
        #expect(walk(t, 4096)[3] == Self.leaf(0xA000, page: true, read: true))
        // Write-only and block leaves get dirty the same way.
        #expect(t.walkForDMA(iova: 8192, write: true)?.dirty == true)
        #expect(walk(t, 8192)[3] == Self.leaf(0xB000, page: true, write: true, dbm: true))
        _ = t.walkForDMA(iova: 2 * MiB + 12345, write: true)
        #expect(walk(t, 2 * MiB)[2] == Self.leaf(2 * MiB, page: false, read: true, write: true, dbm: true))

        // markDirty: writable-clean leaves only; a read-only leaf would have to become writable.
        #expect(!t.markDirty(iova: 4096))
        #expect(walk(t, 4096)[3] == Self.leaf(0xA000, page: true, read: true))
        #expect(t.translate(iova: 4096)?.permissions == .read)
        #expect(!t.markDirty(iova: 100 * 4096))
    }

    @Test func harvestWithAndWithoutClear() throws {
        let t = try ARMLPAEPageTable(aperture: Self.bits48, hardwareDirty: true)
        try t.map(iova: 0, physical: 0, length: 64 * 4096, permissions: [.read, .write], maxLeafSize: .max)
        try t.map(iova: 64 * 4096, physical: 64 * 4096, length: 4096, permissions: .read, maxLeafSize: .max)
        try t.map(iova: 2 * MiB, physical: 2 * MiB, length: 2 * MiB, permissions: [.read, .write], maxLeafSize: .max)
        try t.map(iova: GiB, physical: GiB, length: GiB, permissions: [.read, .write], maxLeafSize: .max)
        t.dirtyTrackingEnabled = true
        for iova: UInt64 in [3 * 4096, 7 * 4096, 63 * 4096 + 5, 3 * MiB, GiB + 5 * MiB, 64 * 4096] {
            _ = t.walkForDMA(iova: iova, write: true)
        }
        #expect(t.markDirty(iova: 9 * 4096), "injection into a writable-clean page")

        func harvest(_ iova: UInt64, _ length: UInt64, clear: Bool) -> [[UInt64]] {
            var seen: [[UInt64]] = []
            t.readAndClearDirty(iova: iova, length: length, clear: clear) { seen.append([$0, $1]) }
            return seen
        }
        let all: [[UInt64]] = [[3 * 4096, 4096], [7 * 4096, 4096], [9 * 4096, 4096], [63 * 4096, 4096],
                               [2 * MiB, 2 * MiB], [GiB, GiB]]
        #expect(harvest(0, .max, clear: false) == all)
        #expect(harvest(0, .max, clear: false) == all, "no-clear leaves S2AP[1] set")
        #expect(walk(t, 3 * 4096)[3] == Self.leaf(3 * 4096, page: true, read: true, write: true, dbm: true))
        // Cutting the blocks still reports them whole.
        let cut: [[UInt64]] = [[7 * 4096, 4096], [9 * 4096, 4096], [63 * 4096, 4096], [2 * MiB, 2 * MiB]]
        #expect(harvest(7 * 4096, 2 * MiB, clear: false) == cut)
        #expect(harvest(GiB + 100 * MiB, 4096, clear: false) == [[GiB, GiB]])
        #expect(harvest(4 * 4096, 3 * 4096, clear: false) == [])
        // Clearing: S2AP[1] goes, DBM and everything else stays (writable-clean again).
        #expect(harvest(0, 4 * MiB, clear: true) == Array(all.prefix(5)))
        #expect(walk(t, 3 * 4096)[3] == Self.leaf(3 * 4096, page: true, read: true, dbm: true))
        #expect(walk(t, 2 * MiB)[2] == Self.leaf(2 * MiB, page: false, read: true, dbm: true))
        #expect(t.translate(iova: 3 * 4096)?.permissions == [.read, .write])
        #expect(walk(t, 64 * 4096)[3] == Self.leaf(64 * 4096, page: true, read: true), "read-only page untouched")
        #expect(harvest(0, .max, clear: false) == [[GiB, GiB]])
        #expect(harvest(0, .max, clear: true) == [[GiB, GiB]])
        #expect(walk(t, GiB)[1] == Self.leaf(GiB, page: false, read: true, dbm: true))
        #expect(harvest(0, .max, clear: false) == [])
        // Dirty again after a clear.
        _ = t.walkForDMA(iova: 3 * 4096, write: true)
        #expect(harvest(0, .max, clear: true) == [[3 * 4096, 4096]])
    }

    // MARK: Failure injection

    @Test func failureAtEveryTableAllocationLeavesNothingMapped() throws {
        let failures = FailureInjector()
        let t = try ARMLPAEPageTable(aperture: Self.bits48, hardwareDirty: true, failures: failures)
        try t.map(iova: 0, physical: 0x7000, length: 4096, permissions: .read, maxLeafSize: .max)
        let baseTables = t.tableMemoryBytes
        // 4K head, crosses 1 GiB (new level-2 tables) and 512 GiB (new level-1 table), 2M blocks, 4K tail.
        let iova: UInt64 = 512 * GiB - 3 * MiB - 4096
        let length: UInt64 = 8 * MiB + 2 * 4096
        var n = 1
        while true {
            failures.failNth(n)
            do {
                try t.map(iova: iova, physical: iova, length: length, permissions: [.read, .write], maxLeafSize: .max)
                #expect(!failures.didFire)
                break
            } catch {
                #expect(error.errno == .ENOMEM)
                #expect(failures.didFire)
                #expect(t.mappedBytes == 4096, "n = \(n)")
                #expect(t.tableMemoryBytes == baseTables, "n = \(n)")
                var probe = iova
                while probe < iova + length {
                    #expect(t.translate(iova: probe) == nil, "n = \(n), 0x\(String(probe, radix: 16))")
                    probe += 4096 * 37
                }
                #expect((1..<512).allSatisfy { entry(t.rootTableAddress, $0) == 0 }, "n = \(n)")
                #expect(t.translate(iova: 0)?.physical == 0x7000)
            }
            n += 1
            if n > 64 { Issue.record("sweep did not terminate"); break }
        }
        failures.disarm()
        #expect(n > 4, "the request needs several tables")
        #expect(t.mappedBytes == 4096 + length)
        #expect(walk(t, iova + length - 4096)[3] == Self.leaf(iova + length - 4096, page: true, read: true, dbm: true))
        #expect(walk(t, 512 * GiB)[2] == Self.leaf(512 * GiB, page: false, read: true, dbm: true))
        #expect(t.unmap(iova: iova, length: length) == length)
        #expect(t.tableMemoryBytes == baseTables)

        let rootFails = FailureInjector()
        rootFails.failNth(1)
        #expect(errnoOf { _ = try ARMLPAEPageTable(aperture: Self.bits48, failures: rootFails) } == .ENOMEM)
    }

    // MARK: Through the unit and the domain

    @Test func dmaThroughAnSMMUUnitSetsAndHarvestsDirty() throws {
        let unit = IOMMUUnit(spec: Self.smmu())
        let dev = requester(0, 1)
        let d = try IOMMUDomain(unit: unit.spec, options: .init(dirtyTrackingCapable: true))
        #expect(d.format == .armLPAE && d.kind == .armSMMUv3 && d.granuleShift == 12)
        #expect(d.withPageTable { ($0 as? ARMLPAEPageTable)?.hardwareDirty == true })
        #expect(unit.contextError(pasid: nil, domain: d) == nil)
        unit.setContext(requester: dev, domain: d)
        try d.map(iova: 0x10_0000, physical: 0x20_0000, length: 4 * 4096, permissions: [.read, .write], maxLeafSize: .max)
        try d.map(iova: 0x20_0000, physical: 0x30_0000, length: 4096, permissions: .read, maxLeafSize: .max)
        func leaf(_ iova: UInt64) -> UInt64 {
            d.withPageTable { Self.walk($0 as! ARMLPAEPageTable, iova).last! }
        }
        func fault(_ r: Result<IOTranslation, DMAFault>) -> DMAFault.Reason? {
            if case .failure(let f) = r { return f.reason }
            return nil
        }
        #expect(leaf(0x10_1000) == Self.leaf(0x20_1000, page: true, read: true, dbm: true))

        // Tracking off: writes succeed and leave the leaf writable-clean.
        #expect(try unit.translate(requester: dev, iova: 0x10_1008, write: true).get().physical == 0x20_1008)
        #expect(leaf(0x10_1000) == Self.leaf(0x20_1000, page: true, read: true, dbm: true))

        try d.setDirtyTracking(true)
        #expect(try unit.translate(requester: dev, iova: 0x10_1010, write: true).get().dirty)
        #expect(leaf(0x10_1000) == Self.leaf(0x20_1000, page: true, read: true, write: true, dbm: true))
        let hitsBefore = unit.iotlb.statistics.hits
        #expect(try unit.translate(requester: dev, iova: 0x10_1020, write: true).get().dirty)
        #expect(unit.iotlb.statistics.hits == hitsBefore + 1, "a dirty entry needs no walk")
        #expect(try unit.translate(requester: dev, iova: 0x10_3000, write: false).get().dirty == false)
        #expect(fault(unit.translate(requester: dev, iova: 0x20_0000, write: true)) == .permission)
        #expect(leaf(0x20_0000) == Self.leaf(0x30_0000, page: true, read: true))

        var seen: [UInt64] = []
        d.readAndClearDirty(iova: 0, length: .max, clear: false) { iova, _ in seen.append(iova) }
        #expect(seen == [0x10_1000])
        let g = d.generation
        seen = []
        d.readAndClearDirty(iova: 0, length: .max, clear: true) { iova, _ in seen.append(iova) }
        #expect(seen == [0x10_1000])
        #expect(d.generation > g)
        #expect(leaf(0x10_1000) == Self.leaf(0x20_1000, page: true, read: true, dbm: true))
        // The IOTLB entry is stale: the next write walks and dirties the leaf again.
        #expect(try unit.translate(requester: dev, iova: 0x10_1000, write: true).get().dirty)
        #expect(leaf(0x10_1000) & (1 << 7) != 0)
        try d.setDirtyTracking(false)
        d.readAndClearDirty(iova: 0, length: .max, clear: true) { _, _ in }
        #expect(try unit.translate(requester: dev, iova: 0x10_2000, write: true).get().dirty == false)
        #expect(leaf(0x10_2000) == Self.leaf(0x20_2000, page: true, read: true, dbm: true))
    }

    @Test func domainFromTheSMMUv3ExampleMachine() throws {
        // Tests/HardwareTests/ARMLPAETests.swift → <package>/examples/smmuv3-arm.machine
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("examples/smmuv3-arm.machine").path
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let machine = try MachineDescription.parse(text, fileName: "smmuv3-arm.machine")
        let smmu0 = try #require(machine.iommu(named: "smmu0"))
        let smmu1 = try #require(machine.iommu(named: "smmu1"))
        #expect(smmu0.format == .armLPAE && smmu0.kind == .armSMMUv3)

        // smmu0: 48-bit, coherent, dirty tracking, nesting.
        let d = try IOMMUDomain(unit: smmu0, options: .init(enforceCacheCoherency: true, dirtyTrackingCapable: true,
                                                            nestParent: true))
        #expect(d.withPageTable { $0 is ARMLPAEPageTable })
        #expect(d.withPageTable { ($0 as! ARMLPAEPageTable).levels } == 4)
        #expect(d.pageSizes == (1 << 12) | (1 << 21) | (1 << 30))
        #expect(d.aperture == IOVARange(first: 0, last: (1 << 48) - 1))
        #expect(d.enforcesCacheCoherency)
        let nvme = try #require(machine.device(named: "nvme0"))
        #expect(machine.iommu(of: nvme) == smmu0)
        let unit = IOMMUUnit(spec: smmu0)
        #expect(unit.contextError(pasid: nil, domain: d) == nil)
        unit.setContext(requester: nvme.address, domain: d)

        let space = SimulatedAddressSpace()
        let va = space.map(length: 2 * MiB, backingPageSize: 2 * MiB)
        let runs = try physicalRuns(space, va: va, length: 2 * MiB)
        #expect(runs.count == 1)
        let iova: UInt64 = 0x4000_0000
        try d.map(iova: iova, physical: runs[0].physical, length: 2 * MiB, permissions: [.read, .write], maxLeafSize: .max)
        try d.map(iova: iova + 2 * MiB, physical: runs[0].physical, length: 4096, permissions: .read, maxLeafSize: .max)
        #expect(d.translate(iova: iova + 0x1234) == IOTranslation(physical: runs[0].physical + 0x1234,
                                                                   permissions: [.read, .write], leafSize: 2 * MiB, dirty: false))
        #expect(d.translate(iova: iova + 2 * MiB + 5)?.leafSize == 4096)
        let (block, page) = d.withPageTable { t -> (UInt64, UInt64) in
            let arm = t as! ARMLPAEPageTable
            return (Self.walk(arm, iova).last!, Self.walk(arm, iova + 2 * MiB).last!)
        }
        // Enforcing domain: S2FWB forced write-back MemAttr; dirty-capable: DBM on the writable block.
        #expect(block == Self.leaf(runs[0].physical, page: false, read: true, dbm: true, memAttr: 0b0110))
        #expect(page == Self.leaf(runs[0].physical, page: true, read: true, memAttr: 0b0110))

        // A DMA write lands in memory and dirties the block.
        try d.setDirtyTracking(true)
        var bytes: [UInt8] = [0xA5, 0x5A, 0xC3]
        try unit.dmaWrite(requester: nvme.address, iova: iova + 0x10_0000, from: &bytes, count: 3, memory: space)
        #expect(space.pointer(va: va + 0x10_0000)!.load(as: UInt8.self) == 0xA5)
        #expect(space.pointer(va: va + 0x10_0002)!.load(as: UInt8.self) == 0xC3)
        var dirty: [[UInt64]] = []
        d.readAndClearDirty(iova: 0, length: .max, clear: true) { dirty.append([$0, $1]) }
        #expect(dirty == [[iova, 2 * MiB]])
        #expect(d.unmap(iova: iova, length: 2 * MiB + 4096) == 2 * MiB + 4096)
        #expect(d.tableMemoryBytes == 4096)

        // The domain is too wide for smmu1 (44-bit), which can neither force coherency nor track dirt.
        #expect(d.attachError(to: smmu1)?.errno == .EINVAL)
        #expect(errnoOf { _ = try IOMMUDomain(unit: smmu1, options: .init(enforceCacheCoherency: true)) } == .EOPNOTSUPP)
        #expect(errnoOf { _ = try IOMMUDomain(unit: smmu1, options: .init(dirtyTrackingCapable: true)) } == .EOPNOTSUPP)
        let plain = try IOMMUDomain(unit: smmu1)
        #expect(plain.withPageTable { ($0 as! ARMLPAEPageTable).levels } == 4, "44 bits need level 0")
        #expect(plain.attachError(to: smmu1) == nil)
        try plain.map(iova: 0x1000, physical: 0x8000, length: 4096, permissions: [.read, .write], maxLeafSize: .max)
        #expect(plain.withPageTable { Self.walk($0 as! ARMLPAEPageTable, 0x1000).last! }
                == Self.leaf(0x8000, page: true, read: true, write: true))
        #expect(plain.translate(iova: 0x1234)?.physical == 0x8234)
        #expect(errnoOf { try plain.map(iova: 1 << 44, physical: 0, length: 4096, permissions: .read, maxLeafSize: .max) } == .EINVAL)
    }

    @Test func coherencyUpgradeNeedsAnEmptyTable() throws {
        let d = try IOMMUDomain(unit: Self.smmu())
        #expect(!d.enforcesCacheCoherency)
        try d.map(iova: 0, physical: 0x5000, length: 4096, permissions: .read, maxLeafSize: .max)
        #expect(d.withPageTable { Self.walk($0 as! ARMLPAEPageTable, 0).last! } == Self.leaf(0x5000, page: true, read: true))
        #expect(!d.enforceCacheCoherency(), "a leaf without forced write-back exists")
        d.unmap(iova: 0, length: 4096)
        #expect(d.enforceCacheCoherency())
        try d.map(iova: 0, physical: 0x5000, length: 4096, permissions: .read, maxLeafSize: .max)
        #expect(d.withPageTable { Self.walk($0 as! ARMLPAEPageTable, 0).last! }
                == Self.leaf(0x5000, page: true, read: true, memAttr: 0b0110))
        let incoherentUnit = Self.smmu(name: "smmu9", coherent: false)
        let e = try IOMMUDomain(unit: incoherentUnit)
        #expect(!e.enforceCacheCoherency())
    }

    /// Random map/unmap/DMA-dirty sequences against a model of mapped pages (4 KiB leaves and
    /// blocks), so a bookkeeping slip in the two-bit dirty state shows up.
    @Test func randomizedAgainstAModel() throws {
        let t = try ARMLPAEPageTable(aperture: IOVARange(first: 0, last: (1 << 39) - 1), hardwareDirty: true)
        t.dirtyTrackingEnabled = true
        var rng = SplitMix64(seed: 0xA4_11AE)
        var pages: [UInt64: (physical: UInt64, permissions: IOPermissions)] = [:]   // 4 KiB page → mapping
        var dirty: Set<UInt64> = []                                                  // 4 KiB pages dirtied
        let window: UInt64 = 64 * MiB
        for step in 0..<2000 {
            let roll = rng.next() % 10
            let iova = (rng.next() % (window / 4096)) * 4096
            if roll < 4 {
                let n = 1 + rng.next() % 40
                let length = n * 4096
                guard iova + length <= window else { continue }
                let permissions: IOPermissions = [[.read], [.write], [.read, .write]][Int(rng.next() % 3)]
                let free = (0..<n).allSatisfy { pages[iova + $0 * 4096] == nil }
                do {
                    try t.map(iova: iova, physical: iova + 4 * GiB, length: length, permissions: permissions, maxLeafSize: 4096)
                    #expect(free, "step \(step)")
                    for k in 0..<n { pages[iova + k * 4096] = (iova + 4 * GiB + k * 4096, permissions) }
                } catch {
                    #expect(!free && error.errno == .EEXIST, "step \(step)")
                }
            } else if roll < 6 {
                let length = (1 + rng.next() % 64) * 4096
                var expected: UInt64 = 0
                for p in stride(from: iova, to: iova + length, by: 4096) where pages.removeValue(forKey: p) != nil {
                    expected += 4096
                    dirty.remove(p)
                }
                #expect(t.unmap(iova: iova, length: length) == expected, "step \(step)")
            } else if roll < 9 {
                let write = rng.next() % 2 == 0
                let got = t.walkForDMA(iova: iova + rng.next() % 4096, write: write)
                if let m = pages[iova] {
                    #expect(got.map { $0.physical & ~4095 } == m.physical, "step \(step)")
                    #expect(got?.permissions == m.permissions, "step \(step)")
                    if write && m.permissions.contains(.write) { dirty.insert(iova) }
                    #expect(got?.dirty == dirty.contains(iova), "step \(step)")
                } else {
                    #expect(got == nil, "step \(step)")
                }
            } else {
                let clear = rng.next() % 2 == 0
                var seen: [UInt64] = []
                t.readAndClearDirty(iova: 0, length: window, clear: clear) { leaf, size in
                    #expect(size == 4096)
                    seen.append(leaf)
                }
                #expect(seen == dirty.sorted(), "step \(step)")
                if clear { dirty.removeAll() }
            }
        }
        for (iova, m) in pages {
            #expect(t.translate(iova: iova)?.physical == m.physical)
            #expect(t.translate(iova: iova)?.permissions == m.permissions)
        }
        #expect(t.mappedBytes == UInt64(pages.count) * 4096)
        #expect(t.unmap(iova: 0, length: .max) == UInt64(pages.count) * 4096)
        #expect(t.tableMemoryBytes == 4096)
    }
}
