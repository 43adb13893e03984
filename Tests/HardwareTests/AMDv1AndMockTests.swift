import Testing
import IOMMUHardware
import UIOMMUBase

/// AMD v1 at the bit level: PR=0, A=5, D=6, NextLevel 9–11, address 12–51, FC=60, IR=61, IW=62.
@Suite struct AMDv1Tests {
    static let addressMask: UInt64 = 0x000F_FFFF_FFFF_F000

    func walk(_ t: AMDv1PageTable, _ iova: UInt64) -> [UInt64] {
        rawWalk(root: t.rootTableAddress, levels: t.levels, iova: iova,
                isTable: { e, _ in (e >> 9) & 7 != 0 }, address: { $0 & Self.addressMask })
    }

    @Test func entryBits() throws {
        let t = try AMDv1PageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        #expect(t.levels == 4)
        try t.map(iova: 0x4000, physical: 0x1234_5000, length: 4096, permissions: [.read, .write], maxLeafSize: .max)
        let p = walk(t, 0x4000)
        #expect(p.count == 4)
        // Directory entries: PR, NextLevel = the level below, IR|IW.
        for (i, e) in p.dropLast().enumerated() {
            let level = 4 - i
            #expect(e & 1 == 1)
            #expect((e >> 9) & 7 == UInt64(level - 1))
            #expect(e & (3 << 61) == 3 << 61)
        }
        #expect(p[3] == 0x1234_5000 | 1 | (1 << 61) | (1 << 62))
        try t.map(iova: 2 * MiB, physical: 6 * MiB, length: 2 * MiB, permissions: .read, maxLeafSize: .max)
        #expect(walk(t, 2 * MiB)[2] == 6 * MiB | 1 | (1 << 61), "a 2 MiB leaf has NextLevel 0")
        try t.map(iova: GiB, physical: 3 * GiB, length: GiB, permissions: .write, maxLeafSize: .max)
        #expect(walk(t, GiB)[1] == 3 * GiB | 1 | (1 << 62))
        #expect(t.translate(iova: GiB + 0x777)?.physical == 3 * GiB + 0x777)
        #expect(t.translate(iova: GiB)?.permissions == .write)

        _ = t.walkForDMA(iova: 0x4000, write: false)
        #expect(walk(t, 0x4000)[3] & (1 << 5) != 0)
        t.dirtyTrackingEnabled = true
        _ = t.walkForDMA(iova: 0x4000, write: true)
        #expect(walk(t, 0x4000)[3] & (1 << 6) != 0)
        var dirty: [UInt64] = []
        t.readAndClearDirty(iova: 0, length: .max, clear: true) { iova, _ in dirty.append(iova) }
        #expect(dirty == [0x4000])
        #expect(walk(t, 0x4000)[3] & (1 << 6) == 0)

        let coherent = try AMDv1PageTable(aperture: IOVARange(first: 0, last: (1 << 39) - 1), forceCoherent: true)
        #expect(coherent.levels == 3)
        try coherent.map(iova: 0, physical: 0x8000, length: 4096, permissions: .read, maxLeafSize: .max)
        let q = rawWalk(root: coherent.rootTableAddress, levels: 3, iova: 0,
                        isTable: { e, _ in (e >> 9) & 7 != 0 }, address: { $0 & Self.addressMask })
        #expect(q[2] == 0x8000 | 1 | (1 << 60) | (1 << 61))
    }

    @Test func sixLevelsCoverTheWholeSpace() throws {
        let t = try AMDv1PageTable(aperture: .all)
        #expect(t.levels == 6)
        try t.map(iova: 0xFFFF_FFFF_FFFF_E000, physical: 0x2000, length: 8192, permissions: .read, maxLeafSize: .max)
        #expect(t.translate(iova: .max)?.physical == 0x3FFF)
        #expect(t.unmap(iova: 0xFFFF_FFFF_FFFF_F000, length: .max) == 4096)
        #expect(t.unmap(iova: 0, length: .max) == 4096)
        #expect(t.tableMemoryBytes == 4096)
    }
}

/// The selftest mock: 2 KiB IO pages, aperture [16 MiB, 2 GiB), optional 1 MiB leaves,
/// START/LAST on every map call's bounds.
@Suite struct MockPageTableTests {
    let start = MockPageTable.defaultAperture.first

    @Test func geometry() throws {
        let t = try MockPageTable()
        #expect(t.aperture == IOVARange(first: 1 << 24, last: (1 << 31) - 1))
        #expect(t.pageSizes == 2048)
        #expect(t.levels == 3)
        #expect(t.format == .mock)
        let huge = try MockPageTable(hugeIOVA: true)
        #expect(huge.pageSizes == 2048 | (1 << 20))
        #expect(huge.hugeIOVA)
        #expect(throws: IOMMUError.self) {
            try t.map(iova: 0, physical: 0, length: 2048, permissions: .read, maxLeafSize: .max)
        }
        #expect(throws: IOMMUError.self) {
            try t.map(iova: 1 << 31, physical: 0, length: 2048, permissions: .read, maxLeafSize: .max)
        }
    }

    @Test func twoKiBLeavesAndTheirBits() throws {
        let t = try MockPageTable()
        try t.map(iova: start + 2048, physical: 0x10_0800, length: 3 * 2048, permissions: [.read, .write], maxLeafSize: .max)
        let path = rawWalk(root: t.rootTableAddress, levels: 3, iova: start + 2048, granuleShift: 11,
                           isTable: { e, _ in e & (1 << 7) != 0 }, address: { $0 & 0x000F_FFFF_FFFF_F800 })
        #expect(path.count == 3)
        // VALID | R | W | START, address 2 KiB aligned.
        #expect(path[2] == 0x10_0800 | (1 << 8) | 3 | (1 << 4))
        #expect(t.translate(iova: start + 2048 + 5) == IOTranslation(physical: 0x10_0805, permissions: [.read, .write],
                                                                      leafSize: 2048, dirty: false))
        #expect(t.ioPage(at: start + 2048)?.start == true)
        #expect(t.ioPage(at: start + 2048)?.last == false)
        #expect(t.ioPage(at: start + 4096)?.start == false)
        #expect(t.ioPage(at: start + 4096)?.last == false)
        #expect(t.ioPage(at: start + 6143)?.last == false)
        #expect(t.ioPage(at: start + 6144)?.last == true)
        #expect(t.ioPage(at: start + 8191)?.last == true)
        #expect(t.ioPage(at: start + 8192) == nil)
        #expect(t.mappedBytes == 3 * 2048)
    }

    @Test func startAndLastMarkEveryMapCall() throws {
        let t = try MockPageTable()
        // Three adjacent calls: 1 page, 4 pages, 2 pages.
        try t.map(iova: start, physical: 0x100000, length: 2048, permissions: .read, maxLeafSize: .max)
        try t.map(iova: start + 2048, physical: 0x200000, length: 4 * 2048, permissions: .read, maxLeafSize: .max)
        try t.map(iova: start + 5 * 2048, physical: 0x300000, length: 2 * 2048, permissions: .read, maxLeafSize: .max)
        let flags = (0..<7).map { i -> String in
            let p = t.ioPage(at: start + UInt64(i) * 2048)!
            return (p.start ? "S" : "-") + (p.last ? "L" : "-")
        }
        #expect(flags == ["SL", "S-", "--", "--", "-L", "S-", "-L"])
        // Unmapping whole calls (one or several) is clean; cutting a call is reported.
        #expect(t.unmap(iova: start, length: 2048) == 2048)
        #expect(t.boundaryViolations == 0)
        #expect(t.unmap(iova: start + 2048, length: 6 * 2048) == 6 * 2048)
        #expect(t.boundaryViolations == 0)
        try t.map(iova: start, physical: 0x100000, length: 4 * 2048, permissions: .read, maxLeafSize: .max)
        #expect(t.unmap(iova: start + 2048, length: 2048) == 2048)
        #expect(t.boundaryViolations == 2)
    }

    @Test func hugeIOVALeaves() throws {
        let t = try MockPageTable(hugeIOVA: true)
        let iova = start + MiB
        // 2 KiB head, one 1 MiB leaf, 2 KiB tail, as alignment allows.
        try t.map(iova: iova - 2048, physical: 0x4000_0000 - 2048, length: MiB + 4096,
                  permissions: [.read, .write], maxLeafSize: .max)
        #expect(t.translate(iova: iova - 2048)?.leafSize == 2048)
        #expect(t.translate(iova: iova)?.leafSize == MiB)
        #expect(t.translate(iova: iova + MiB)?.leafSize == 2048)
        let path = rawWalk(root: t.rootTableAddress, levels: 3, iova: iova, granuleShift: 11,
                           isTable: { e, _ in e & (1 << 7) != 0 }, address: { $0 & 0x000F_FFFF_FFFF_F800 })
        #expect(path.count == 2)
        #expect(path[1] == 0x4000_0000 | (1 << 8) | (1 << 6) | 3, "a HUGE leaf, neither START nor LAST")
        let page = t.ioPage(at: iova + 5000)
        #expect(page?.huge == true)
        #expect(page?.physical == 0x4000_0000 + 4096)
        #expect(page?.start == false && page?.last == false)
        #expect(t.ioPage(at: iova - 2048)?.start == true)
        #expect(t.ioPage(at: iova + MiB)?.last == true)
        // maxLeafSize keeps 2 KiB leaves; a single 1 MiB call carries START and LAST in one leaf.
        try t.map(iova: start + 8 * MiB, physical: 0x5000_0000, length: MiB, permissions: .read, maxLeafSize: 4096)
        #expect(t.translate(iova: start + 8 * MiB)?.leafSize == 2048)
        try t.map(iova: start + 16 * MiB, physical: 0x6000_0000, length: MiB, permissions: .read, maxLeafSize: .max)
        #expect(t.ioPage(at: start + 16 * MiB)?.start == true)
        #expect(t.ioPage(at: start + 16 * MiB)?.last == false)
        #expect(t.ioPage(at: start + 17 * MiB - 1)?.last == true)
        #expect(t.ioPage(at: start + 17 * MiB - 1)?.start == false)
        // Dirty on a huge leaf is reported for the whole leaf.
        #expect(t.markDirty(iova: start + 16 * MiB + 12345))
        var seen: [[UInt64]] = []
        t.readAndClearDirty(iova: start, length: 32 * MiB, clear: true) { seen.append([$0, $1]) }
        #expect(seen == [[start + 16 * MiB, MiB]])
    }

    @Test func mappingWithoutPermissionIsRepresentable() throws {
        let t = try MockPageTable()
        try t.map(iova: start, physical: 0x1000, length: 2048, permissions: [], maxLeafSize: .max)
        #expect(t.translate(iova: start)?.permissions == [])
        #expect(t.walkForDMA(iova: start, write: false)?.permissions == [])
    }

    @Test func failureSweep() throws {
        let failures = FailureInjector()
        let t = try MockPageTable(failures: failures)
        // Crosses a 1 MiB level-1 table boundary and a 512 MiB level-2 boundary.
        let iova = start + 512 * MiB - 16 * 2048 - 16 * MiB
        let length = 2 * MiB + 64 * 2048
        var n = 1
        while n < 32 {
            failures.failNth(n)
            do {
                try t.map(iova: iova, physical: 0x100_0000, length: length, permissions: .read, maxLeafSize: .max)
                break
            } catch {
                #expect(error.errno == .ENOMEM)
                #expect(t.mappedBytes == 0)
                #expect(t.tableMemoryBytes == 4096)
                #expect(t.ioPage(at: iova) == nil)
            }
            n += 1
        }
        failures.disarm()
        #expect(n > 3)
        #expect(t.ioPage(at: iova)?.start == true)
        #expect(t.ioPage(at: iova + length - 1)?.last == true)
    }
}
