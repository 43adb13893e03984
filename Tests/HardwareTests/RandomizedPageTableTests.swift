import Testing
import IOMMUHardware
import UIOMMUBase

/// Random map/unmap/translate/dirty sequences checked against a plain model: a sorted list of
/// mapped ranges. Seeded, so a failure reproduces.
@Suite struct RandomizedPageTableTests {
    struct Range {
        var iova: UInt64
        var length: UInt64
        var physical: UInt64
        var permissions: IOPermissions
        var end: UInt64 { iova + length }
    }

    struct Model {
        var ranges: [Range] = []          // sorted, disjoint
        var dirtyPages: Set<UInt64> = []  // smallOnly mode: granule pages with D set

        func lookup(_ iova: UInt64) -> Range? {
            ranges.first { $0.iova <= iova && iova < $0.end }
        }
        func overlaps(_ iova: UInt64, _ length: UInt64) -> Bool {
            ranges.contains { $0.iova < iova + length && iova < $0.end }
        }
        var mappedBytes: UInt64 { ranges.reduce(0) { $0 + $1.length } }
        mutating func insert(_ r: Range) {
            let i = ranges.firstIndex { $0.iova > r.iova } ?? ranges.count
            ranges.insert(r, at: i)
        }
        /// Removes `[first, end)` (granule aligned) from every range; returns the bytes removed.
        mutating func remove(_ first: UInt64, _ end: UInt64) -> UInt64 {
            guard first < end else { return 0 }
            var out: [Range] = []
            var removed: UInt64 = 0
            for r in ranges {
                if r.end <= first || r.iova >= end { out.append(r); continue }
                let lo = max(r.iova, first), hi = min(r.end, end)
                removed += hi - lo
                if r.iova < lo { out.append(Range(iova: r.iova, length: lo - r.iova, physical: r.physical, permissions: r.permissions)) }
                if hi < r.end {
                    out.append(Range(iova: hi, length: r.end - hi, physical: r.physical + (hi - r.iova), permissions: r.permissions))
                }
            }
            ranges = out
            dirtyPages = dirtyPages.filter { $0 < first || $0 >= end }
            return removed
        }
    }

    struct Setup: Sendable, CustomStringConvertible {
        var name: String
        var granule: UInt64
        var bigLeaf: UInt64
        var window: IOVARange
        var smallOnly: Bool
        var make: @Sendable () throws -> any IOPageTable
        var description: String { name + (smallOnly ? " 4K-only" : "") }
    }

    static let setups: [Setup] = {
        let vtd: @Sendable () throws -> any IOPageTable = {
            try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        }
        let amd: @Sendable () throws -> any IOPageTable = {
            try AMDv1PageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        }
        let mock: @Sendable () throws -> any IOPageTable = { try MockPageTable(hugeIOVA: true) }
        let low = IOVARange(first: 0, last: 8 * GiB - 1)
        let mockWindow = MockPageTable.defaultAperture
        return [
            Setup(name: "vtd-ss", granule: 4096, bigLeaf: 2 * MiB, window: low, smallOnly: false, make: vtd),
            Setup(name: "vtd-ss", granule: 4096, bigLeaf: 2 * MiB, window: low, smallOnly: true, make: vtd),
            Setup(name: "amd-v1", granule: 4096, bigLeaf: 2 * MiB, window: low, smallOnly: false, make: amd),
            Setup(name: "amd-v1", granule: 4096, bigLeaf: 2 * MiB, window: low, smallOnly: true, make: amd),
            Setup(name: "mock", granule: 2048, bigLeaf: MiB, window: mockWindow, smallOnly: false, make: mock),
            Setup(name: "mock", granule: 2048, bigLeaf: MiB, window: mockWindow, smallOnly: true, make: mock),
        ]
    }()

    @Test(arguments: setups)
    func againstModel(_ setup: Setup) throws {
        let table = try setup.make()
        var model = Model()
        var rng = SplitMix64(seed: 0x5EED ^ UInt64(setup.name.utf8.count) ^ (setup.smallOnly ? 1 : 0))
        let g = setup.granule
        let windowPages = (setup.window.last - setup.window.first + 1) / g
        // Keep most activity in a few hot spots so maps collide and tables get shared and freed.
        func randomIOVA() -> UInt64 {
            let hot = rng.next() % 4 != 0
            let span = hot ? min(windowPages, (8 * setup.bigLeaf) / g) : windowPages
            let base = hot ? setup.window.first + (rng.next() % 3) * (windowPages / 3) * g : setup.window.first
            return base + (rng.next() % span) * g
        }
        func check(_ iova: UInt64, _ context: @autoclosure () -> String) {
            let expected = model.lookup(iova)
            let got = table.translate(iova: iova)
            if let r = expected {
                #expect(got?.physical == r.physical + (iova - r.iova), "\(setup) \(context())")
                #expect(got?.permissions == r.permissions, "\(setup) \(context())")
                if let leaf = got?.leafSize {
                    // A leaf never crosses the range it was mapped by.
                    let leafStart = iova & ~(leaf - 1)
                    #expect(leafStart >= r.iova || setup.smallOnly == false, "\(setup)")
                    #expect(leaf == g || !setup.smallOnly, "\(setup): large leaf in 4K-only mode")
                }
            } else {
                #expect(got == nil, "\(setup) \(context()) 0x\(String(iova, radix: 16)) should be unmapped")
            }
        }

        let operations = 3000
        for step in 0..<operations {
            let roll = rng.next() % 100
            if roll < 40 {
                // Map.
                var iova = randomIOVA()
                var length: UInt64
                switch rng.next() % 10 {
                case 0..<5: length = (1 + rng.next() % 16) * g
                case 5..<8: length = (1 + rng.next() % 600) * g
                default:
                    iova = iova & ~(setup.bigLeaf - 1)
                    length = (1 + rng.next() % 3) * setup.bigLeaf + (rng.next() % 2) * g * (rng.next() % 5)
                }
                guard iova >= setup.window.first, iova + length - 1 <= setup.window.last else { continue }
                let congruent = rng.next() % 2 == 0
                let physical = congruent ? (iova + (rng.next() % 64) * setup.bigLeaf) : (1 + rng.next() % (1 << 24)) * g
                let permissions: IOPermissions = [[.read], [.write], [.read, .write]][Int(rng.next() % 3)]
                let maxLeaf: UInt64 = setup.smallOnly ? g : [g, setup.bigLeaf, .max][Int(rng.next() % 3)]
                let before = table.mappedBytes
                do {
                    try table.map(iova: iova, physical: physical, length: length, permissions: permissions,
                                  maxLeafSize: maxLeaf)
                    #expect(!model.overlaps(iova, length), "\(setup) step \(step): map over a mapping succeeded")
                    model.insert(Range(iova: iova, length: length, physical: physical, permissions: permissions))
                } catch {
                    #expect(error.errno == .EEXIST, "\(setup) step \(step)")
                    #expect(model.overlaps(iova, length), "\(setup) step \(step): \(error)")
                    #expect(table.mappedBytes == before)
                }
                check(iova, "after map")
                check(iova + length - 1, "after map")
                check(iova + (rng.next() % (length / g)) * g, "after map")
            } else if roll < 65 {
                // Unmap.
                if setup.smallOnly {
                    let first = randomIOVA() + rng.next() % g      // need not be aligned
                    let length = 1 + rng.next() % (800 * g)
                    let alignedFirst = (first + g - 1) & ~(g - 1)
                    let alignedEnd = (first + length) & ~(g - 1)
                    let expected = model.remove(alignedFirst, max(alignedFirst, alignedEnd))
                    #expect(table.unmap(iova: first, length: length) == expected, "\(setup) step \(step)")
                } else if !model.ranges.isEmpty {
                    // Whole ranges only, as iommufd unmaps whole areas; maybe with holes around.
                    let i = Int(rng.next() % UInt64(model.ranges.count))
                    let j = min(model.ranges.count - 1, i + Int(rng.next() % 3))
                    let lowest = i > 0 ? model.ranges[i - 1].end : setup.window.first
                    let highest = j + 1 < model.ranges.count ? model.ranges[j + 1].iova : setup.window.last + 1
                    let first = model.ranges[i].iova - (rng.next() % 2 == 0 ? 0 : (model.ranges[i].iova - lowest) / 2)
                    let end = model.ranges[j].end + (rng.next() % 2 == 0 ? 0 : (highest - model.ranges[j].end) / 2)
                    let expected = model.remove(first, end)
                    #expect(table.unmap(iova: first, length: end - first) == expected, "\(setup) step \(step)")
                }
            } else if roll < 70 && setup.smallOnly {
                // Dirty injection and harvest against the model.
                let iova = randomIOVA()
                let mapped = model.lookup(iova) != nil
                #expect(table.markDirty(iova: iova) == mapped)
                if mapped { model.dirtyPages.insert(iova & ~(g - 1)) }
                let first = randomIOVA(), length = 1 + rng.next() % (2000 * g)
                let clear = rng.next() % 2 == 0
                var seen: [UInt64] = []
                table.readAndClearDirty(iova: first, length: length, clear: clear) { leaf, size in
                    #expect(size == g)
                    seen.append(leaf)
                }
                let expected = model.dirtyPages.filter { $0 + g > first && $0 < first + length }.sorted()
                #expect(seen == expected, "\(setup) step \(step)")
                if clear { model.dirtyPages.subtract(expected) }
            } else {
                for _ in 0..<8 { check(randomIOVA() + rng.next() % g, "step \(step)") }
            }
            if step % 100 == 0 { #expect(table.mappedBytes == model.mappedBytes, "\(setup) step \(step)") }
        }
        // Every range checked at both ends and inside, then everything unmapped.
        for r in model.ranges {
            check(r.iova, "final"); check(r.end - 1, "final"); check(r.iova + r.length / 2 / g * g, "final")
            if r.iova > 0 { check(r.iova - 1, "final") }
            check(r.end, "final")
        }
        #expect(table.mappedBytes == model.mappedBytes)
        #expect(table.unmap(iova: 0, length: .max) == model.mappedBytes)
        #expect(table.mappedBytes == 0)
        #expect(table.tableMemoryBytes == 4096, "\(setup): every table but the root freed")
    }
}
