import Testing
import IOMMUHardware
import UIOMMUBase

/// The chunk allocator behind every page table, observed through the public API and the raw
/// table memory (no @testable import, so this also runs in release builds).
@Suite struct TableArenaTests {
    static let addressMask: UInt64 = 0x000F_FFFF_FFFF_F000

    @Test func bulkMapTablesAreAdjacentAndChunksGoBack() throws {
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        #expect(t.reservedTableMemoryBytes == 1 << 21)
        try t.map(iova: 0, physical: 0, length: 4 * GiB, permissions: .read, maxLeafSize: 4096)
        // 2048 level-1 tables, 4 level-2 tables, one level-3 table, the root.
        #expect(t.tableMemoryBytes == (2048 + 4 + 1 + 1) * 4096)
        // 511 tables per 2 MiB chunk (slot 0 is the chunk header).
        #expect(t.reservedTableMemoryBytes == 5 * (1 << 21))
        // The level-1 tables under one level-2 table were allocated one after another, so
        // they sit 4 KiB apart (except where a chunk ends): the dirty harvest streams.
        let l3 = entry(t.rootTableAddress, 0) & Self.addressMask
        let l2 = entry(l3, 1) & Self.addressMask
        var adjacent = 0
        for i in 1..<512 {
            let a = entry(l2, i - 1) & Self.addressMask, b = entry(l2, i) & Self.addressMask
            #expect(a % 4096 == 0 && b % 4096 == 0)
            if b == a + 4096 { adjacent += 1 }
        }
        #expect(adjacent >= 509)
        #expect(t.unmap(iova: 0, length: 4 * GiB) == 4 * GiB)
        #expect(t.tableMemoryBytes == 4096)
        // The root's chunk stays; the emptied chunks are kept as (already faulted-in) spares.
        #expect(t.reservedTableMemoryBytes == 5 * (1 << 21), "the root's chunk and four spares")
        // A remap reuses them: no new chunk is needed.
        try t.map(iova: 0, physical: 0, length: 4 * GiB, permissions: .read, maxLeafSize: 4096)
        #expect(t.reservedTableMemoryBytes == 5 * (1 << 21))
        #expect(t.unmap(iova: 0, length: 4 * GiB) == 4 * GiB)
    }

    @Test func reusedTablesAreZeroed() throws {
        let t = try VTDSecondStagePageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        // Fill a level-1 table completely, free it, and map one page elsewhere: the recycled
        // table must not show the old entries.
        try t.map(iova: 0, physical: 0x100_0000, length: 2 * MiB, permissions: .read, maxLeafSize: 4096)
        #expect(t.unmap(iova: 0, length: 2 * MiB) == 2 * MiB)
        try t.map(iova: 4 * MiB, physical: 0x200_0000, length: 4096, permissions: .read, maxLeafSize: 4096)
        for i in 1..<512 { #expect(t.translate(iova: 4 * MiB + UInt64(i) * 4096) == nil) }
        #expect(t.translate(iova: 0) == nil)
        #expect(t.translate(iova: 4 * MiB)?.physical == 0x200_0000)
    }

    @Test func manyTablesManyChunks() throws {
        // Scattered single pages: one level-1 table each, across several chunks, all freed.
        let t = try AMDv1PageTable(aperture: IOVARange(first: 0, last: (1 << 48) - 1))
        for i in 0..<1500 { try t.map(iova: UInt64(i) * 2 * MiB, physical: UInt64(i) * 4096, length: 4096,
                                      permissions: .read, maxLeafSize: .max) }
        #expect(t.tableMemoryBytes == (1500 + 3 + 1 + 1) * 4096)
        for i in stride(from: 0, to: 1500, by: 2) { t.unmap(iova: UInt64(i) * 2 * MiB, length: 4096) }
        #expect(t.tableMemoryBytes == (750 + 3 + 1 + 1) * 4096)
        for i in stride(from: 0, to: 1500, by: 2) { try t.map(iova: UInt64(i) * 2 * MiB + 4096, physical: 0, length: 4096,
                                                             permissions: .write, maxLeafSize: .max) }
        for i in 0..<1500 {
            let base = UInt64(i) * 2 * MiB
            #expect(t.translate(iova: base)?.permissions == (i % 2 == 0 ? nil : .read))
            #expect(t.translate(iova: base + 4096)?.permissions == (i % 2 == 0 ? .write : nil))
        }
        #expect(t.unmap(iova: 0, length: .max) == 1500 * 4096)
        #expect(t.tableMemoryBytes == 4096)
        // At most 8 spare chunks are kept, whatever the peak.
        #expect(t.reservedTableMemoryBytes <= (1 + 8) * (1 << 21))
    }
}
