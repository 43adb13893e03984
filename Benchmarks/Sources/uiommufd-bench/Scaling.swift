// The scaling sweep: map, unmap, translate (IOTLB on, random IOVAs), dirty harvest and
// memory against mapped size at 4 KiB leaves, each point against its C reference over a table
// of the same shape. Its largest point is B5 (translate, IOTLB miss, 64 GiB) and B8
// (GET_DIRTY_BITMAP over 64 GiB, 1/32 dirty, clearing).
//
// The mapped memory is one memfd aliased over the whole span (perf-anchors §5): a 64 GiB IOVA
// span of real, DMA-able memory that costs RAM only where touched. Nothing here touches it.

import CBenchReference
import IOMMUFD

struct SweepPoint {
    var bytes: UInt64
    var pages: UInt64
    var map: Measured
    var unmap: Measured
    var translate: Measured
    var dirty: Measured
    var rssGrowth: Double
    var tableBytes: Double
    var reservedTableBytes: Double
    var iotlbHitRate: Double
    var dirtyLeaves: UInt64
}

func runSweep(_ cfg: Config, sizes: [UInt64]) throws -> [SweepPoint] {
    let largest = sizes.max()!
    log("sweep: aliasing a \(formatBytes(Double(min(largest, GiB)))) memfd over \(formatBytes(Double(largest))) of VA")
    let region = try AliasedRegion(bytes: largest)
    let rig = try Rig(memory: LocalProcessMemory(), deviceName: "pasid0", dirtyTracking: true)
    defer { rig.close() }
    let unit = rig.device.unit
    let requester = rig.device.spec.address
    let iova: UInt64 = 1 << 40
    let depMask = cb_opaque_zero()
    var points: [SweepPoint] = []

    for bytes in sizes.sorted() {
        let pages = bytes / 4096
        let reps = bytes >= 16 * GiB ? cfg.reps : cfg.cheapReps
        log("sweep: \(formatBytes(Double(bytes))) at 4 KiB (\(pages) PTEs), \(reps) pairs")

        // Memory: the first map of this size.
        let rss0 = cb_resident_bytes()
        _ = try rig.context.map(ioas: rig.ioas, userVA: region.address, length: bytes, iova: iova, permissions: readWrite)
        let rss1 = cb_resident_bytes()
        let domain = rig.domain
        let tableBytes = Double(domain.tableMemoryBytes)
        let reserved = Double(domain.reservedTableMemoryBytes)

        var pt = cb_pt()
        guard cb_pt_init(&pt, cb_pt_tables_for(pages)) == 0 else { throw BenchError("C table pool for \(pages) pages") }
        defer { cb_pt_destroy(&pt) }
        _ = cb_pt_fill(&pt, iova, region.address, pages, referenceLeafBits)

        // Translate: dependent random walks; the IOTLB is on (at small sizes it holds the set).
        let steps = cfg.missSteps
        var rng = SplitMix(state: 0xB5 ^ pages)
        let targets = UnsafeMutablePointer<UInt32>.allocate(capacity: steps)
        defer { targets.deallocate() }
        for i in 0..<steps { targets[i] = UInt32(truncatingIfNeeded: rng.below(pages)) }
        func oursTranslate() -> Double {
            var link: UInt64 = 0
            var acc: UInt64 = 0
            let t = timeNS {
                unit.withTranslator(requester: requester) { tr in
                    for i in 0..<steps {
                        let a = iova &+ UInt64(targets[i]) &<< 12 &+ (link & depMask)
                        switch tr.translate(iova: a, write: false) {
                        case .success(let x): link = x.physical
                        case .failure(let f): fatalError("sweep translate: \(f)")
                        }
                        acc &+= link
                    }
                }
            }
            precondition(acc != 1)
            return t / Double(steps)
        }
        var sink: UInt64 = 0
        let before = unit.iotlb.statistics
        let translate = try interleave(reps: reps, ours: { [oursTranslate()] }, reference: {
            [Double(cb_pt_walk_chain(&pt, iova, targets, steps, depMask, &sink)) / Double(steps)]
        })[0]
        let after = unit.iotlb.statistics
        let hits = Double(after.hits - before.hits), misses = Double(after.misses - before.misses)

        // Dirty: one dirty page per 32 at a pseudo-random place, harvested with clearing.
        let groups = Int(pages / 32)
        let dirtyPages = UnsafeMutablePointer<UInt32>.allocate(capacity: max(1, groups))
        defer { dirtyPages.deallocate() }
        var drng = SplitMix(state: 0xB8)
        for g in 0..<groups { dirtyPages[g] = UInt32(g * 32) + UInt32(drng.below(32)) }
        let words = Int((pages + 63) / 64)
        let bitmap = UnsafeMutablePointer<UInt64>.allocate(capacity: words)
        defer { bitmap.deallocate() }
        var seen: UInt64 = 0
        func oursDirty() throws -> Double {
            for g in 0..<groups { domain.markDirty(iova: iova &+ UInt64(dirtyPages[g]) << 12) }
            bitmap.initialize(repeating: 0, count: words)
            var count: UInt64 = 0
            let t = try timeNS {
                try rig.context.readDirty(hwpt: rig.hwpt, iova: iova, length: bytes, pageSize: 4096, clear: true) { first, n in
                    var b = first
                    let end = first &+ n
                    while b < end {
                        bitmap[Int(truncatingIfNeeded: b &>> 6)] |= 1 &<< (b & 63)
                        b &+= 1
                    }
                    count &+= n
                }
            }
            seen = count
            return t
        }
        var refSeen: UInt64 = 0
        func referenceDirty() -> Double {
            cb_pt_mark_dirty(&pt, iova, dirtyPages, groups)
            bitmap.initialize(repeating: 0, count: words)
            return Double(cb_pt_harvest(&pt, iova, pages, bitmap, &refSeen))
        }
        let dirty = try interleave(reps: reps, ours: { [try oursDirty()] }, reference: { [referenceDirty()] })[0]
        guard seen == UInt64(groups), refSeen == UInt64(groups) else {
            throw BenchError("sweep dirty: expected \(groups) dirty pages, engine saw \(seen), C saw \(refSeen)")
        }
        // Verify the engine's bitmap once: harvest a fresh set and compare bit by bit.
        _ = try oursDirty()
        for g in 0..<groups {
            let b = Int(dirtyPages[g])
            guard bitmap[b >> 6] & (1 << UInt64(b & 63)) != 0 else { throw BenchError("sweep dirty: page \(b) missing from the bitmap") }
        }

        // Map and unmap: ours leaves the table mapped, C leaves its table filled.
        let mapUnmap = try interleave(reps: reps, ours: {
            let u = try timeNS { _ = try rig.context.unmap(ioas: rig.ioas, iova: iova, length: bytes) }
            let m = try timeNS {
                _ = try rig.context.map(ioas: rig.ioas, userVA: region.address, length: bytes, iova: iova, permissions: readWrite)
            }
            return [m, u]
        }, reference: {
            let u = cb_pt_clear(&pt, iova, pages)
            let m = cb_pt_fill(&pt, iova, region.address, pages, referenceLeafBits)
            return [Double(m), Double(u)]
        })
        _ = try rig.context.unmap(ioas: rig.ioas, iova: iova, length: bytes)

        points.append(SweepPoint(bytes: bytes, pages: pages, map: mapUnmap[0], unmap: mapUnmap[1],
                                 translate: translate, dirty: dirty, rssGrowth: Double(rss1 &- rss0),
                                 tableBytes: tableBytes, reservedTableBytes: reserved,
                                 iotlbHitRate: hits / max(1, hits + misses), dirtyLeaves: UInt64(groups)))
        log("sweep: \(formatBytes(Double(bytes))): map \(fmt(mapUnmap[0].ratio, 2))x, translate \(fmt(translate.ours, 1)) ns (\(fmt(translate.ratio, 2))x), dirty \(fmt(dirty.ours / 1e6, 2)) ms (\(fmt(dirty.ratio, 2))x)")
    }
    return points
}

func sweepRows(_ points: [SweepPoint]) -> [ResultRow] {
    guard let p = points.max(by: { $0.bytes < $1.bytes }) else { return [] }
    let size = formatBytes(Double(p.bytes))
    return [
        ResultRow(id: "B5", benchmark: "translate, IOTLB miss, random over \(size) at 4K", unit: "ns/translation",
                  reference: "C 4-level walk, same table shape", goal: 1.5, measured: p.translate,
                  notes: ["dependent walks; IOTLB hit rate \(fmt(p.iotlbHitRate * 100, 2))%"]),
        ResultRow(id: "B8", benchmark: "GET_DIRTY_BITMAP \(size) at 4K, 1/32 dirty, clearing", unit: "ns/call",
                  reference: "C harvest loop, same entries", goal: 1.5, measured: p.dirty,
                  notes: ["\(p.dirtyLeaves) dirty of \(p.pages) PTEs; per PTE ours \(fmt(p.dirty.ours / Double(p.pages), 2)) ns, C \(fmt(p.dirty.reference / Double(p.pages), 2)) ns"]),
    ]
}
