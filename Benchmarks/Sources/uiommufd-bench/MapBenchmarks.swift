// B1, B2, B11, B3: the cost of IOAS_MAP / IOAS_UNMAP.

import CBenchReference
import IOMMUFD

let readWrite: IOPermissions = [.read, .write]
/// R|W of a VT-d leaf, what the C fill writes.
let referenceLeafBits: UInt64 = 3

// MARK: B1 — map of untouched VA with nothing attached is O(1)

func runB1(_ cfg: Config) throws -> [ResultRow] {
    let rig = try Rig(memory: LocalProcessMemory(), attach: false)
    defer { rig.close() }
    let sizes = cfg.b1Sizes
    let va = try HostMapping.reserved(sizes.max()!)
    let batch = cfg.b1Batch
    // Fixed IOVAs 2 TiB apart, well clear of each other for every size.
    let iovas = (0..<batch).map { (UInt64(1) << 44) + (UInt64($0) << 41) }

    func cycle(_ length: UInt64) throws -> [Double] {
        let tMap = try timeNS {
            for iova in iovas {
                _ = try rig.context.map(ioas: rig.ioas, userVA: va.address, length: length, iova: iova,
                                        permissions: readWrite)
            }
        }
        let tUnmap = try timeNS {
            for iova in iovas { _ = try rig.context.unmap(ioas: rig.ioas, iova: iova, length: length) }
        }
        return [tMap / Double(batch), tUnmap / Double(batch)]
    }

    var rows: [ResultRow] = []
    for size in sizes {
        log("B1: IOAS_MAP of \(formatBytes(Double(size))) vs 4 KiB, nothing attached")
        let m = try interleave(reps: cfg.cheapReps, ours: { try cycle(size) }, reference: { try cycle(4096) })
        let name = formatBytes(Double(size))
        rows.append(ResultRow(id: "B1", benchmark: "IOAS_MAP \(name) untouched VA, nothing attached",
                              unit: "ns/call", reference: "IOAS_MAP 4 KiB", goal: 2, measured: m[0],
                              notes: ["\(batch) maps per timed batch at fixed IOVAs; MAP_NORESERVE VA"]))
        rows.append(ResultRow(id: "B1", benchmark: "IOAS_UNMAP \(name), nothing attached",
                              unit: "ns/call", reference: "IOAS_UNMAP 4 KiB", goal: 2, measured: m[1]))
    }
    return rows
}

// MARK: B2 + B11 — map/unmap of populated 4 KiB pages into a VT-d domain; memory after it

func runB2(_ cfg: Config, results: inout SuiteResults) throws -> [ResultRow] {
    let bytes = cfg.b2Bytes
    let pages = bytes / 4096
    log("B2: populating \(formatBytes(Double(bytes))) of 4 KiB pages (MAP_POPULATE)")
    let t0 = nowNS()
    let buffer = try HostMapping.populated4K(bytes)
    log("B2: populated in \(fmt(Double(nowNS() - t0) / 1e6, 0)) ms")
    let rig = try Rig(memory: LocalProcessMemory())
    defer { rig.close() }
    let iova: UInt64 = 1 << 38

    // B11 first, on a fresh table and a fresh process heap for it: the resident memory the
    // first map adds (page tables, areas, pin runs) against 8 bytes per mapped page.
    var rows: [ResultRow] = []
    let rss0 = cb_resident_bytes()
    _ = try rig.context.map(ioas: rig.ioas, userVA: buffer.address, length: bytes, iova: iova, permissions: readWrite)
    let rss1 = cb_resident_bytes()
    let tableBytes = rig.domain.tableMemoryBytes
    let reserved = rig.domain.reservedTableMemoryBytes
    guard let t = rig.domain.translate(iova: iova + bytes - 4096), t.leafSize == 4096,
          t.physical == buffer.address + bytes - 4096 else {
        throw BenchError("B2: the mapping does not translate as expected")
    }
    _ = try rig.context.unmap(ioas: rig.ioas, iova: iova, length: bytes)
    let growth = Double(rss1 &- rss0)
    let floor = Double(pages * 8)
    var b11 = ResultRow(id: "B11", benchmark: "resident memory added by the B2 map (\(formatBytes(Double(bytes))))",
                        unit: "bytes", reference: "8 B per mapped 4 KiB page", goal: 1.25)
    b11.ours = growth
    b11.referenceValue = floor
    b11.ratio = growth / floor
    b11.notes = ["single measurement (RSS from /proc/self/statm before and after the first map);"
                 + " domain tables in use \(formatBytes(Double(tableBytes))), arena holds \(formatBytes(Double(reserved)))"]

    rows.append(b11)
    guard cfg.wants("B2") else { return rows }

    // B2: interleaved map+unmap against the C fill+clear of the same number of 4 KiB leaves.
    var pt = cb_pt()
    guard cb_pt_init(&pt, cb_pt_tables_for(pages)) == 0 else { throw BenchError("C table pool") }
    defer { cb_pt_destroy(&pt) }
    log("B2: IOAS_MAP + IOAS_UNMAP of \(formatBytes(Double(bytes))) (\(pages) PTEs) vs C fill + clear, \(cfg.cheapReps) pairs")
    let m = try interleave(reps: cfg.cheapReps, ours: {
        let tMap = try timeNS {
            _ = try rig.context.map(ioas: rig.ioas, userVA: buffer.address, length: bytes, iova: iova,
                                    permissions: readWrite)
        }
        let tUnmap = try timeNS { _ = try rig.context.unmap(ioas: rig.ioas, iova: iova, length: bytes) }
        return [tMap, tUnmap]
    }, reference: {
        let f = cb_pt_fill(&pt, iova, buffer.address, pages, referenceLeafBits)
        let c = cb_pt_clear(&pt, iova, pages)
        return [Double(f), Double(c)]
    })
    // Diagnostic reference: the same C fill into table memory never touched before (each
    // repetition gets a fresh pool), i.e. including the first-touch faults of its tables.
    var coldSamples: [Double] = []
    for _ in 0..<max(3, cfg.reps / 2) {
        var cold = cb_pt()
        guard cb_pt_init_cold(&cold, cb_pt_tables_for(pages)) == 0 else { throw BenchError("C cold pool") }
        coldSamples.append(Double(cb_pt_fill(&cold, iova, buffer.address, pages, referenceLeafBits)))
        cb_pt_destroy(&cold)
    }
    let coldFill = median(coldSamples)

    // Diagnostic: what resolving the user range costs (LocalProcessMemory parses /proc/self/maps).
    let probe = LocalProcessMemory()
    let resolveNS = median((0..<5).map { _ in
        timeNS { try? probe.resolve(offset: buffer.address, length: bytes, writable: true) { _ in } }
    })
    // Diagnostic: page faults one map + unmap cycle takes (table memory from the system).
    let f0 = cb_minor_faults()
    _ = try rig.context.map(ioas: rig.ioas, userVA: buffer.address, length: bytes, iova: iova, permissions: readWrite)
    let f1 = cb_minor_faults()
    _ = try rig.context.unmap(ioas: rig.ioas, iova: iova, length: bytes)
    let mapFaults = f1 - f0
    let n = Double(pages)
    results.b2PerEntryMap = m[0].ours / n
    results.resolveNS = resolveNS
    results.b2PerEntryUnmap = m[1].ours / n
    let size = formatBytes(Double(bytes))
    rows.append(ResultRow(id: "B2", benchmark: "IOAS_MAP \(size) populated 4K, VT-d attached",
                          unit: "ns/call", reference: "C 4-level fill, same PTE count", goal: 3, measured: m[0],
                          notes: ["per PTE: ours \(fmt(m[0].ours / n, 2)) ns, C \(fmt(m[0].reference / n, 2)) ns",
                                  "of each map, LocalProcessMemory.resolve (parses /proc/self/maps) takes \(fmt(resolveNS / 1000, 0)) µs",
                                  "diagnostic: C fill into never-touched table memory (first-touch faults included) takes \(formatNS(coldFill)) ns, ours / that = \(fmt(m[0].ours / coldFill, 2)); a repeated map takes \(mapFaults) minor page faults (\(fmt(Double(mapFaults) / Double(max(1, tableBytes / 4096)), 2)) per table page)"]))
    rows.append(ResultRow(id: "B2", benchmark: "IOAS_UNMAP \(size) populated 4K, VT-d attached",
                          unit: "ns/call", reference: "C 4-level clear, same PTE count", goal: 3, measured: m[1],
                          notes: ["per PTE: ours \(fmt(m[1].ours / n, 2)) ns, C \(fmt(m[1].reference / n, 2)) ns"]))
    return rows
}

// MARK: B3 — huge leaves: cost scales with leaf entries, not with 4 KiB pages

func runB3(_ cfg: Config, pool: HugeTLBPool, b2PerEntry: Double?, resolveNS: Double?) throws -> [ResultRow] {
    var rows: [ResultRow] = []

    // (a) 2 MiB-backed memory, 2 MiB leaves, against the same number of 4 KiB leaves.
    let bytes = cfg.b3HugeBytes
    let leaves = bytes / (2 * MiB)
    let refBytes = leaves * 4096
    let subjectIOVA: UInt64 = 1 << 40, refIOVA: UInt64 = 1 << 39
    var backing: String
    let rig: Rig
    let subjectVA: UInt64, refVA: UInt64
    var keep: [AnyObject] = []
    if let note = pool.ensureFree(pages: Int(leaves), mayConfigure: cfg.mayConfigureHugeTLB),
       let huge = try? HostMapping(bytes: bytes, flags: Int32(CB_MAP_HUGETLB | CB_MAP_POPULATE)) {
        let small = try HostMapping.populated4K(refBytes)
        keep = [huge, small]
        rig = try Rig(memory: LocalProcessMemory())
        subjectVA = huge.address
        refVA = small.address
        backing = "MAP_HUGETLB 2 MiB pages (\(note))"
    } else {
        let sim = SimulatedAddressSpace()
        subjectVA = sim.map(length: bytes, backingPageSize: 2 * MiB)
        refVA = sim.map(length: refBytes, backingPageSize: 4096)
        keep = [sim]
        rig = try Rig(memory: sim)
        backing = "FALLBACK: no hugetlb pool, SimulatedAddressSpace with backingPageSize 2 MiB"
    }
    defer { rig.close(); withExtendedLifetime(keep) {} }
    log("B3: \(formatBytes(Double(bytes))) at 2 MiB leaves (\(leaves) entries) vs \(leaves) 4 KiB leaves; \(backing)")
    _ = try rig.context.map(ioas: rig.ioas, userVA: subjectVA, length: bytes, iova: subjectIOVA, permissions: readWrite)
    let leaf = rig.domain.translate(iova: subjectIOVA)?.leafSize ?? 0
    _ = try rig.context.unmap(ioas: rig.ioas, iova: subjectIOVA, length: bytes)
    guard leaf == 2 * MiB else { throw BenchError("B3: expected 2 MiB leaves, the domain used \(leaf)-byte leaves") }
    let n = Double(leaves)
    let m = try interleave(reps: cfg.cheapReps, ours: {
        let a = try timeNS { _ = try rig.context.map(ioas: rig.ioas, userVA: subjectVA, length: bytes, iova: subjectIOVA, permissions: readWrite) }
        let b = try timeNS { _ = try rig.context.unmap(ioas: rig.ioas, iova: subjectIOVA, length: bytes) }
        return [a / n, b / n]
    }, reference: {
        let a = try timeNS { _ = try rig.context.map(ioas: rig.ioas, userVA: refVA, length: refBytes, iova: refIOVA, permissions: readWrite) }
        let b = try timeNS { _ = try rig.context.unmap(ioas: rig.ioas, iova: refIOVA, length: refBytes) }
        return [a / n, b / n]
    })
    let size = formatBytes(Double(bytes))
    let refName = "B2 op over \(leaves) 4K leaves (\(formatBytes(Double(refBytes))))"
    rows.append(ResultRow(id: "B3", benchmark: "IOAS_MAP \(size) 2M-backed, 2M leaves", unit: "ns/leaf",
                          reference: refName, goal: 1.5, measured: m[0],
                          notes: ["backing: " + backing]
                              + (resolveNS.map { ["both sides include resolving the user range (\(fmt($0 / 1000, 0)) µs in B2, \(fmt($0 / n, 0)) ns per leaf here)"] } ?? [])
                              + (b2PerEntry.map { ["B2's own per-PTE map cost at \(formatBytes(Double(cfg.b2Bytes))): \(fmt($0, 2)) ns"] } ?? [])))
    rows.append(ResultRow(id: "B3", benchmark: "IOAS_UNMAP \(size) 2M-backed, 2M leaves", unit: "ns/leaf",
                          reference: refName, goal: 1.5, measured: m[1]))

    // (b) 1 TiB of 1 GiB pages (1024 leaves), against 1024 4 KiB leaves, both in a synthetic
    // address space (no machine here has 1 TiB of RAM; the map never touches the pages).
    let giant = cfg.b3GiantBytes
    let gLeaves = giant / GiB
    let gRefBytes = gLeaves * 4096
    let gVA: UInt64 = 1 << 42, gRefVA: UInt64 = 1 << 41
    let synth = SyntheticAddressSpace([.init(va: gVA, length: giant, pageSize: GiB),
                                       .init(va: gRefVA, length: gRefBytes, pageSize: 4096)])
    let grig = try Rig(memory: synth, deviceName: "nvme0")
    defer { grig.close() }
    let gIOVA: UInt64 = 1 << 43, gRefIOVA: UInt64 = 1 << 40
    log("B3: \(formatBytes(Double(giant))) at 1 GiB leaves (\(gLeaves) entries) vs \(gLeaves) 4 KiB leaves (synthetic memory)")
    _ = try grig.context.map(ioas: grig.ioas, userVA: gVA, length: giant, iova: gIOVA, permissions: readWrite)
    let gLeaf = grig.domain.translate(iova: gIOVA)?.leafSize ?? 0
    _ = try grig.context.unmap(ioas: grig.ioas, iova: gIOVA, length: giant)
    guard gLeaf == GiB else { throw BenchError("B3: expected 1 GiB leaves, the domain used \(gLeaf)-byte leaves") }
    let gn = Double(gLeaves)
    let g = try interleave(reps: cfg.cheapReps, ours: {
        let a = try timeNS { _ = try grig.context.map(ioas: grig.ioas, userVA: gVA, length: giant, iova: gIOVA, permissions: readWrite) }
        let b = try timeNS { _ = try grig.context.unmap(ioas: grig.ioas, iova: gIOVA, length: giant) }
        return [a / gn, b / gn]
    }, reference: {
        let a = try timeNS { _ = try grig.context.map(ioas: grig.ioas, userVA: gRefVA, length: gRefBytes, iova: gRefIOVA, permissions: readWrite) }
        let b = try timeNS { _ = try grig.context.unmap(ioas: grig.ioas, iova: gRefIOVA, length: gRefBytes) }
        return [a / gn, b / gn]
    })
    let gRefName = "B2 op over \(gLeaves) 4K leaves (\(formatBytes(Double(gRefBytes))))"
    rows.append(ResultRow(id: "B3", benchmark: "IOAS_MAP \(formatBytes(Double(giant))) 1G leaves", unit: "ns/leaf",
                          reference: gRefName, goal: 1.5, measured: g[0],
                          notes: ["synthetic address space (identity physical addresses, no RAM behind it); per map: ours \(fmt(g[0].ours * gn / 1000, 1)) µs, reference \(fmt(g[0].reference * gn / 1000, 1)) µs"]))
    rows.append(ResultRow(id: "B3", benchmark: "IOAS_UNMAP \(formatBytes(Double(giant))) 1G leaves", unit: "ns/leaf",
                          reference: gRefName, goal: 1.5, measured: g[1]))
    return rows
}
