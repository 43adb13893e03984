// B4 (translation through the IOTLB) and B6 (a device's 4 KiB DMA write).

import CBenchReference
import IOMMUFD

// MARK: B4 — IOTLB hit

func runB4(_ cfg: Config) throws -> [ResultRow] {
    let hot = cfg.hotSetBytes
    let pages = Int(hot / 4096)
    let buffer = try HostMapping.populated4K(hot)
    let rig = try Rig(memory: LocalProcessMemory())
    defer { rig.close() }
    let iova: UInt64 = 1 << 36
    _ = try rig.context.map(ioas: rig.ioas, userVA: buffer.address, length: hot, iova: iova, permissions: readWrite)
    let unit = rig.device.unit
    let requester = rig.device.spec.address
    let base = buffer.address

    // A random cycle through the hot set; each translation's result picks the next page.
    let cycle = randomCycle(pages, seed: 0xB4)
    let next = UnsafeMutablePointer<Int32>.allocate(capacity: pages)
    defer { next.deallocate() }
    for i in 0..<pages { next[i] = Int32(cycle[i]) }

    // The C reference: a 1K-key open-addressing table whose values chain through a cycle.
    let keys = 1024
    let keyCycle = randomCycle(keys, seed: 0x4B)
    var hash = cb_hash()
    guard cb_hash_init(&hash, keys) == 0 else { throw BenchError("hash alloc") }
    defer { cb_hash_destroy(&hash) }
    let keyBase: UInt64 = 0x7f12_3400_0000
    for k in 0..<keys {
        cb_hash_put(&hash, keyBase + UInt64(k) << 12, keyBase + UInt64(keyCycle[k]) << 12)
    }

    let steps = cfg.hitSteps
    func burst() -> Double {
        var idx = 0
        return timeNS {
            unit.withTranslator(requester: requester) { t in
                for _ in 0..<steps {
                    switch t.translate(iova: iova &+ UInt64(idx) &<< 12, write: false) {
                    case .success(let x): idx = Int(next[Int(truncatingIfNeeded: (x.physical &- base) &>> 12)])
                    case .failure(let f): fatalError("B4: \(f)")
                    }
                }
            }
        } / Double(steps)
    }
    func singleCalls() -> Double {
        var idx = 0
        let n = steps / 4
        return timeNS {
            for _ in 0..<n {
                switch unit.translate(requester: requester, iova: iova &+ UInt64(idx) &<< 12, write: false) {
                case .success(let x): idx = Int(next[Int(truncatingIfNeeded: (x.physical &- base) &>> 12)])
                case .failure(let f): fatalError("B4: \(f)")
                }
            }
        } / Double(n)
    }
    var sink: UInt64 = 0
    func reference() -> Double {
        Double(cb_hash_chain(&hash, keyBase, steps, &sink)) / Double(steps)
    }

    log("B4: translate, IOTLB hit, random in \(formatBytes(Double(hot))) (\(steps) dependent steps) vs C hash chain, 1K keys")
    let before = unit.iotlb.statistics
    let m = try interleave(reps: cfg.cheapReps, warmup: 2, ours: { [burst(), singleCalls()] },
                           reference: { let r = reference(); return [r, r] })
    let after = unit.iotlb.statistics
    let hits = Double(after.hits - before.hits), misses = Double(after.misses - before.misses)
    let hitRate = hits / max(1, hits + misses)
    return [
        ResultRow(id: "B4", benchmark: "translate, IOTLB hit, random in \(formatBytes(Double(hot))) (withTranslator burst)",
                  unit: "ns/translation", reference: "C dependent hash lookup, 1K keys", goal: 2, measured: m[0],
                  notes: ["IOTLB hit rate \(fmt(hitRate * 100, 2))%; each translation picks the next IOVA"]),
        ResultRow(id: "B4", benchmark: "translate, IOTLB hit, one IOMMUUnit.translate call each",
                  unit: "ns/translation", reference: "C dependent hash lookup, 1K keys", goal: 2, measured: m[1],
                  notes: ["includes the per-call context-entry lookup and counter publication"]),
    ]
}

// MARK: B6 — device DMA write of 4 KiB

func runB6(_ cfg: Config) throws -> [ResultRow] {
    let region = cfg.dmaRegionBytes
    let pages = Int(region / 4096)
    let buffer = try HostMapping.populated4K(region)
    let memory = LocalProcessMemory()
    let rig = try Rig(memory: memory, dirtyTracking: true)
    defer { rig.close() }
    let iova: UInt64 = 1 << 37
    _ = try rig.context.map(ioas: rig.ioas, userVA: buffer.address, length: region, iova: iova, permissions: readWrite)
    let platform = rig.platform
    let device = rig.device
    let source = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
    defer { source.deallocate() }
    for i in 0..<512 { source.storeBytes(of: UInt64(i) &* 0x9E37_79B9, toByteOffset: i * 8, as: UInt64.self) }

    // Streaming: each half of a pair writes the next `batch` pages of a region larger than the
    // last-level cache, so both copy into cold memory; every DMA misses the IOTLB and walks,
    // and (tracking on, bits clear) sets the dirty bit.
    let batch = cfg.dmaBatch
    var cursor = 0
    func oursStream() throws -> Double {
        let first = cursor
        cursor += batch
        return try timeNS {
            for i in 0..<batch {
                let page = (first + i) % pages
                try platform.dmaWrite(device: device, iova: iova &+ UInt64(page) << 12, from: source, count: 4096)
            }
        } / Double(batch)
    }
    func referenceStream() -> Double {
        let first = cursor
        cursor += batch
        return Double(cb_memcpy_pages(buffer.base, pages, first, batch, source)) / Double(batch)
    }
    // Hot: the same 64 pages again and again (cache-resident copy, IOTLB hits, dirty known set).
    let hotPages = 64
    let hotRounds = max(1, batch / hotPages)
    func oursHot() throws -> Double {
        try timeNS {
            for _ in 0..<hotRounds {
                for p in 0..<hotPages {
                    try platform.dmaWrite(device: device, iova: iova &+ UInt64(p) << 12, from: source, count: 4096)
                }
            }
        } / Double(hotRounds * hotPages)
    }
    func referenceHot() -> Double {
        var t: UInt64 = 0
        for _ in 0..<hotRounds { t += cb_memcpy_pages(buffer.base, hotPages, 0, hotPages, source) }
        return Double(t) / Double(hotRounds * hotPages)
    }

    log("B6: DMA write 4 KiB via Platform.dmaWrite, streaming over \(formatBytes(Double(region))) and hot, vs memcpy")
    let stream = try interleave(reps: cfg.cheapReps, ours: { [try oursStream()] }, reference: { [referenceStream()] })
    let hot = try interleave(reps: cfg.cheapReps, warmup: 2, ours: { [try oursHot()] }, reference: { [referenceHot()] })
    // Check the data arrived.
    var probe = [UInt8](repeating: 0, count: 4096)
    try platform.dmaRead(device: device, iova: iova, into: &probe, count: 4096)
    guard probe.withUnsafeBytes({ $0.load(fromByteOffset: 8, as: UInt64.self) }) == 0x9E37_79B9 else {
        throw BenchError("B6: the DMA data did not arrive")
    }
    return [
        ResultRow(id: "B6", benchmark: "DMA write 4 KiB, streaming over \(formatBytes(Double(region))), tracking on",
                  unit: "ns/write", reference: "memcpy 4 KiB, same pages", goal: 1.25, measured: stream[0],
                  notes: ["\(batch) writes per half-pair on fresh pages: IOTLB miss, walk, dirty bit set, copy"]),
        ResultRow(id: "B6", benchmark: "DMA write 4 KiB, hot 64-page set (IOTLB hit)",
                  unit: "ns/write", reference: "memcpy 4 KiB, same pages", goal: 1.25, measured: hot[0]),
    ]
}
