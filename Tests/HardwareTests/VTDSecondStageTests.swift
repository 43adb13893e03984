import Testing
import IOMMUHardware
import UIOMMUBase

/// VT-d second stage, checked at the bit level against the documented layout:
/// R=0, W=1, PS=7, A=8, D=9, SNP=11, address 12–51.
@Suite struct VTDSecondStageTests {
    static let addressMask: UInt64 = 0x000F_FFFF_FFFF_F000

    func walk(_ t: VTDSecondStagePageTable, _ iova: UInt64) -> [UInt64] {
        rawWalk(root: t.rootTableAddress, levels: t.levels, iova: iova,
                isTable: { e, _ in e & (1 << 7) == 0 }, address: { $0 & Self.addressMask })
    }

    @Test func levelsFollowTheApertureWidth() throws {
        #expect(try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 39) - 1)).levels == 3)
        #expect(try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 39) + 4095)).levels == 4)
        #expect(try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1)).levels == 4)
        #expect(try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 57) - 1)).levels == 5)
        #expect(throws: IOMMUError.self) { try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: 1 << 57)) }
        // The aperture must be page aligned and 4 KiB must be a page size.
        #expect(throws: IOMMUError.self) { try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: 0xFFE)) }
        #expect(throws: IOMMUError.self) {
            try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1), pageSizes: 1 << 21)
        }
        // A 3-level table still offers 1 GiB leaves (its level-3 entries).
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 39) - 1))
        #expect(t.pageSizes == IOMMUUnitSpec.x86PageSizes)
        #expect(t.tableMemoryBytes == 4096)
    }

    @Test func fourKiBLeafBits() throws {
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        let iova: UInt64 = 0x12_3456_7000
        try t.map(iova: iova, physical: 0x5555_0000, length: 4096, permissions: [.read, .write], maxLeafSize: .max)
        let path = walk(t, iova)
        #expect(path.count == 4)
        for e in path.dropLast() {
            #expect(e & 3 == 3, "table entries carry R|W")
            #expect(e & (1 << 7) == 0, "table entries have PS clear")
            #expect(e & 0xFFF == 3, "nothing else in the low bits")
            #expect((e & Self.addressMask) % 4096 == 0)
        }
        #expect(path[3] == 0x5555_0000 | 0b11)
        #expect(t.translate(iova: iova + 0x123) == IOTranslation(physical: 0x5555_0123, permissions: [.read, .write],
                                                                   leafSize: 4096, dirty: false))
        // Read-only and write-only leaves.
        try t.map(iova: iova + 4096, physical: 0x6000, length: 4096, permissions: .read, maxLeafSize: .max)
        try t.map(iova: iova + 8192, physical: 0x7000, length: 4096, permissions: .write, maxLeafSize: .max)
        #expect(walk(t, iova + 4096)[3] == 0x6000 | 0b01)
        #expect(walk(t, iova + 8192)[3] == 0x7000 | 0b10)
        #expect(t.mappedBytes == 3 * 4096)
        #expect(t.tableMemoryBytes == 4 * 4096)
    }

    @Test func largeLeafBits() throws {
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        try t.map(iova: 2 * MiB, physical: 0x4000_0000, length: 2 * MiB, permissions: [.read, .write], maxLeafSize: .max)
        let p2 = walk(t, 2 * MiB)
        #expect(p2.count == 3)
        #expect(p2[2] == 0x4000_0000 | (1 << 7) | 0b11)
        try t.map(iova: 1 * GiB, physical: 2 * GiB, length: 1 * GiB, permissions: .read, maxLeafSize: .max)
        let p1 = walk(t, 1 * GiB)
        #expect(p1.count == 2)
        #expect(p1[1] == 0x8000_0000 | (1 << 7) | 0b01)
        #expect(t.translate(iova: 1 * GiB + 0x1234_5678)?.physical == 2 * GiB + 0x1234_5678)
        #expect(t.translate(iova: 1 * GiB + 5)?.leafSize == GiB)
        #expect(t.translate(iova: 2 * MiB + 5)?.leafSize == 2 * MiB)
        // root + one level-3 table + one level-2 table; the 1 GiB leaf needs no table.
        #expect(t.tableMemoryBytes == 3 * 4096)
    }

    @Test func snoopBitOnLeavesOnly() throws {
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1), snoopControl: true)
        try t.map(iova: 0, physical: 0x10000, length: 4096, permissions: .read, maxLeafSize: .max)
        try t.map(iova: 2 * MiB, physical: 4 * MiB, length: 2 * MiB, permissions: .read, maxLeafSize: .max)
        let p = walk(t, 0)
        #expect(p[3] == 0x10000 | (1 << 11) | 1)
        for e in p.dropLast() { #expect(e & (1 << 11) == 0) }
        #expect(walk(t, 2 * MiB)[2] == 4 * MiB | (1 << 11) | (1 << 7) | 1)
        t.snoopControl = false
        try t.map(iova: 4096, physical: 0x20000, length: 4096, permissions: .read, maxLeafSize: .max)
        #expect(walk(t, 4096)[3] == 0x20000 | 1)
    }

    @Test func leafSizeFollowsAlignmentOfBothAddresses() throws {
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        // IOVA and physical agree modulo 2 MiB: 4K head, one 2M leaf, 4K tail.
        let iova: UInt64 = 2 * MiB - 4096, phys: UInt64 = 0x4020_0000 - 4096
        try t.map(iova: iova, physical: phys, length: 2 * MiB + 8192, permissions: .read, maxLeafSize: .max)
        #expect(t.translate(iova: iova)?.leafSize == 4096)
        #expect(t.translate(iova: 2 * MiB)?.leafSize == 2 * MiB)
        #expect(t.translate(iova: 3 * MiB)?.physical == 0x4030_0000)
        #expect(t.translate(iova: 4 * MiB)?.leafSize == 4096)
        #expect(t.translate(iova: 4 * MiB + 4096) == nil)
        // IOVA 2 MiB aligned, physical only 4 KiB aligned: 4 KiB leaves throughout.
        try t.map(iova: 64 * MiB, physical: 0x4000_1000, length: 2 * MiB, permissions: .read, maxLeafSize: .max)
        #expect(t.translate(iova: 64 * MiB)?.leafSize == 4096)
        #expect(t.translate(iova: 66 * MiB - 1)?.physical == 0x4000_1000 + 2 * MiB - 1)
        // Both 1 GiB aligned: a 1 GiB leaf.
        try t.map(iova: 4 * GiB, physical: 8 * GiB, length: GiB, permissions: .read, maxLeafSize: .max)
        #expect(t.translate(iova: 4 * GiB + 77)?.leafSize == GiB)
    }

    @Test func maxLeafSizeAndPageSizesAreHonoured() throws {
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        try t.map(iova: GiB, physical: GiB, length: GiB, permissions: .read, maxLeafSize: 4096)
        #expect(t.translate(iova: GiB + 3 * MiB)?.leafSize == 4096)
        #expect(t.mappedBytes == GiB)
        // 512 level-1 tables + one level-2 + one level-3 + root.
        #expect(t.tableMemoryBytes == (512 + 3) * 4096)
        try t.map(iova: 4 * GiB, physical: 4 * GiB, length: GiB, permissions: .read, maxLeafSize: 2 * MiB)
        #expect(t.translate(iova: 4 * GiB + 3 * MiB)?.leafSize == 2 * MiB)
        // maxLeafSize between sizes rounds down; below the granule still maps 4 KiB leaves.
        try t.map(iova: 8 * GiB, physical: 8 * GiB, length: 4 * MiB, permissions: .read, maxLeafSize: 3 * MiB)
        #expect(t.translate(iova: 8 * GiB)?.leafSize == 2 * MiB)
        try t.map(iova: 9 * GiB, physical: 9 * GiB, length: 8192, permissions: .read, maxLeafSize: 0)
        #expect(t.translate(iova: 9 * GiB + 4096)?.leafSize == 4096)

        // A unit without 1 GiB pages gets 2 MiB leaves for a 1 GiB-aligned range.
        let small = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 39) - 1),
                                                pageSizes: (1 << 12) | (1 << 21))
        #expect(small.pageSizes == (1 << 12) | (1 << 21))
        try small.map(iova: GiB, physical: GiB, length: GiB, permissions: .read, maxLeafSize: .max)
        #expect(small.translate(iova: GiB)?.leafSize == 2 * MiB)
    }

    @Test func invalidRequestsAreRefusedWithoutEffect() throws {
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 39) - 1))
        #expect(errnoOf { try t.map(iova: 0x800, physical: 0, length: 4096, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        #expect(errnoOf { try t.map(iova: 0, physical: 0x800, length: 4096, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        #expect(errnoOf { try t.map(iova: 0, physical: 0, length: 100, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        #expect(errnoOf { try t.map(iova: 0, physical: 0, length: 0, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        #expect(errnoOf { try t.map(iova: 0, physical: 0, length: 4096, permissions: [], maxLeafSize: .max) } == .EINVAL)
        #expect(errnoOf { try t.map(iova: 1 << 39, physical: 0, length: 4096, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        #expect(errnoOf { try t.map(iova: (1 << 39) - 4096, physical: 0, length: 8192, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        #expect(errnoOf { try t.map(iova: 0, physical: 1 << 52, length: 4096, permissions: .read, maxLeafSize: .max) } == .EINVAL)
        #expect(errnoOf { try t.map(iova: 0xFFFF_FFFF_FFFF_F000, physical: 0, length: 8192, permissions: .read, maxLeafSize: .max) } == .EOVERFLOW)
        #expect(errnoOf { try t.map(iova: 0, physical: 0xFFFF_FFFF_FFFF_F000, length: 8192, permissions: .read, maxLeafSize: .max) } == .EOVERFLOW)
        #expect(t.mappedBytes == 0)
        #expect(t.tableMemoryBytes == 4096)
        // Unmap and the walks accept anything.
        #expect(t.unmap(iova: .max, length: .max) == 0)
        #expect(t.unmap(iova: 0, length: 0) == 0)
        #expect(t.translate(iova: .max) == nil)
        #expect(t.walkForDMA(iova: .max, write: true) == nil)
        #expect(!t.markDirty(iova: .max))
        t.readAndClearDirty(iova: .max, length: .max, clear: true) { _, _ in Issue.record("nothing is dirty") }
    }

    @Test func overlappingMapFailsWithEEXISTAndLeavesNothing() throws {
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        try t.map(iova: 0x10_0000, physical: 0xA000_0000, length: 4096, permissions: .read, maxLeafSize: .max)
        let tables = t.tableMemoryBytes
        do {
            // Starts in a fresh level-1 table region below, runs into the existing page.
            try t.map(iova: 0x8_0000, physical: 0xB000_0000, length: 0x10_0000, permissions: .read, maxLeafSize: .max)
            Issue.record("overlap accepted")
        } catch {
            #expect(error.errno == .EEXIST)
        }
        #expect(t.translate(iova: 0x8_0000) == nil)
        #expect(t.translate(iova: 0xF_F000) == nil)
        #expect(t.translate(iova: 0x10_0000)?.physical == 0xA000_0000)
        #expect(t.mappedBytes == 4096)
        #expect(t.tableMemoryBytes == tables)
        // A 2 MiB leaf cannot be placed over a table, nor a table under a 2 MiB leaf.
        #expect(throws: IOMMUError.self) {
            try t.map(iova: 0, physical: 0, length: 2 * MiB, permissions: .read, maxLeafSize: .max)
        }
        try t.map(iova: 2 * GiB, physical: 0, length: 2 * MiB, permissions: .read, maxLeafSize: .max)
        #expect(throws: IOMMUError.self) {
            try t.map(iova: 2 * GiB + 4096, physical: 0, length: 4096, permissions: .read, maxLeafSize: .max)
        }
        #expect(t.mappedBytes == 4096 + 2 * MiB)
    }

    @Test func unmapFreesTablesAndNeverSplitsLeaves() throws {
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        try t.map(iova: 2 * MiB, physical: 2 * MiB, length: 2 * MiB, permissions: .read, maxLeafSize: .max)
        try t.map(iova: 4 * MiB, physical: 0x1000, length: 16 * 4096, permissions: .read, maxLeafSize: .max)
        #expect(t.tableMemoryBytes == 4 * 4096)
        // Cutting the 2 MiB leaf removes nothing of it.
        #expect(t.unmap(iova: 2 * MiB + 4096, length: MiB) == 0)
        #expect(t.translate(iova: 2 * MiB + 4096) != nil)
        // Partly covering the 4K run removes only whole pages inside.
        #expect(t.unmap(iova: 4 * MiB + 2048, length: 2 * 4096) == 4096)
        #expect(t.translate(iova: 4 * MiB) != nil)
        #expect(t.translate(iova: 4 * MiB + 4096) == nil)
        #expect(t.translate(iova: 4 * MiB + 2 * 4096) != nil)
        #expect(t.unmap(iova: 4 * MiB, length: 16 * 4096) == 15 * 4096)
        // The level-1 table emptied and went away.
        #expect(t.tableMemoryBytes == 3 * 4096)
        #expect(t.unmap(iova: 0, length: .max) == 2 * MiB)
        #expect(t.tableMemoryBytes == 4096)
        #expect(t.mappedBytes == 0)
        for e in 0..<512 { #expect(entry(t.rootTableAddress, e) == 0) }
    }

    @Test func accessedAndDirtyBitsFromDMAWalks() throws {
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        try t.map(iova: 0, physical: 0x9000, length: 4096, permissions: [.read, .write], maxLeafSize: .max)
        try t.map(iova: 4096, physical: 0xA000, length: 4096, permissions: .read, maxLeafSize: .max)
        try t.map(iova: 2 * MiB, physical: 2 * MiB, length: 2 * MiB, permissions: [.read, .write], maxLeafSize: .max)
        #expect(t.translate(iova: 0) != nil)
        #expect(walk(t, 0)[3] == 0x9003, "a software walk sets nothing")
        _ = t.walkForDMA(iova: 0, write: false)
        #expect(walk(t, 0)[3] == 0x9003 | (1 << 8))
        _ = t.walkForDMA(iova: 0, write: true)
        #expect(walk(t, 0)[3] == 0x9003 | (1 << 8), "no D without tracking")
        t.dirtyTrackingEnabled = true
        #expect(t.walkForDMA(iova: 0, write: true)?.dirty == true)
        #expect(walk(t, 0)[3] == 0x9003 | (1 << 8) | (1 << 9))
        // A write to a read-only leaf is refused by the caller; the walk records nothing.
        #expect(t.walkForDMA(iova: 4096, write: true)?.permissions == .read)
        #expect(walk(t, 4096)[3] == 0xA001)
        _ = t.walkForDMA(iova: 2 * MiB + 12345, write: true)
        #expect(walk(t, 2 * MiB)[2] == 2 * MiB | (1 << 7) | 3 | (1 << 8) | (1 << 9))
    }

    @Test func dirtyHarvestWithAndWithoutClear() throws {
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        try t.map(iova: 0, physical: 0, length: 64 * 4096, permissions: [.read, .write], maxLeafSize: .max)
        try t.map(iova: 2 * MiB, physical: 2 * MiB, length: 2 * MiB, permissions: [.read, .write], maxLeafSize: .max)
        try t.map(iova: GiB, physical: GiB, length: GiB, permissions: [.read, .write], maxLeafSize: .max)
        for iova: UInt64 in [3 * 4096, 7 * 4096, 63 * 4096, 3 * MiB, GiB + 5 * MiB] { #expect(t.markDirty(iova: iova)) }
        #expect(!t.markDirty(iova: 100 * 4096))
        // markDirty sets D regardless of tracking or permission.
        #expect(walk(t, 3 * 4096)[3] & (1 << 9) != 0)

        func harvest(_ iova: UInt64, _ length: UInt64, clear: Bool) -> [[UInt64]] {
            var seen: [[UInt64]] = []
            t.readAndClearDirty(iova: iova, length: length, clear: clear) { seen.append([$0, $1]) }
            return seen
        }
        let all: [[UInt64]] = [[3 * 4096, 4096], [7 * 4096, 4096], [63 * 4096, 4096], [2 * MiB, 2 * MiB], [GiB, GiB]]
        #expect(harvest(0, .max, clear: false) == all)
        #expect(harvest(0, .max, clear: false) == all, "NO_CLEAR leaves the bits")
        // A range that cuts the large leaves still reports them whole.
        #expect(harvest(7 * 4096, 2 * MiB + 4096 - 7 * 4096 + 1, clear: false) == [[7 * 4096, 4096], [63 * 4096, 4096], [2 * MiB, 2 * MiB]])
        #expect(harvest(GiB + 100 * MiB, 4096, clear: false) == [[GiB, GiB]])
        #expect(harvest(4 * 4096, 4096, clear: false) == [])
        #expect(harvest(0, 4 * MiB, clear: true) == Array(all.prefix(4)))
        #expect(harvest(0, .max, clear: false) == [[GiB, GiB]])
        #expect(walk(t, 3 * 4096)[3] & (1 << 9) == 0)
        #expect(harvest(0, .max, clear: true) == [[GiB, GiB]])
        #expect(harvest(0, .max, clear: false) == [])
    }

    @Test func failureAtEveryTableAllocationLeavesNothingMapped() throws {
        let failures = FailureInjector()
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1), failures: failures)
        // Something already mapped, so some tables on the way exist and must survive.
        try t.map(iova: 0, physical: 0x7000, length: 4096, permissions: .read, maxLeafSize: .max)
        let baseTables = t.tableMemoryBytes
        // The request: 4K head, crosses a 1 GiB boundary (new level-2 tables), crosses 512 GiB
        // (new level-3 table), ends with 2M leaves and a 4K tail.
        let iova: UInt64 = (512 * GiB) - 3 * MiB - 4096
        let length: UInt64 = 8 * MiB + 2 * 4096
        var n = 1
        while true {
            failures.failNth(n)
            do {
                try t.map(iova: iova, physical: iova, length: length, permissions: .read, maxLeafSize: .max)
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
                #expect(t.translate(iova: 0)?.physical == 0x7000)
            }
            n += 1
            if n > 64 { Issue.record("sweep did not terminate"); break }
        }
        failures.disarm()
        #expect(n > 4, "the request needs several tables")
        #expect(t.mappedBytes == 4096 + length)
        #expect(t.translate(iova: iova + length - 1)?.physical == iova + length - 1)
        #expect(t.unmap(iova: iova, length: length) == length)
        #expect(t.tableMemoryBytes == baseTables)
    }

    @Test func rootAllocationFailureFailsInit() {
        let failures = FailureInjector()
        failures.failNth(1)
        #expect(throws: IOMMUError.self) {
            try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1), failures: failures)
        }
    }
}
