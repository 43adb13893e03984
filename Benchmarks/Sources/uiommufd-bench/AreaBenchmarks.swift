// B10: finding the area behind an IOVA as the number of areas in one IOAS grows.
//
// Measured through IOMMUFDContext.area(ioas:containing:), the public "which area maps this
// IOVA" query: it takes the context lock, finds the IOAS object and searches the area index,
// so the fixed cost of the call is part of every point; the marginal cost of more areas is the
// search. Areas are 2 MiB maps of one buffer of a simulated address space, 4 MiB apart;
// nothing is attached, so the pages are not pinned.

import CBenchReference
import IOMMUFD

struct AreaPoint {
    var areas: Int
    var measured: Measured
}

func runB10(_ cfg: Config) throws -> ([ResultRow], [AreaPoint]) {
    let sim = SimulatedAddressSpace()
    let areaBytes = 2 * MiB
    let va = sim.map(length: areaBytes)
    // Give every 8-byte slot a distinct value so the reads are real.
    if let p = sim.pointer(va: va) {
        for i in 0..<Int(areaBytes / 8) { p.storeBytes(of: UInt64(i), toByteOffset: i * 8, as: UInt64.self) }
    }
    let rig = try Rig(memory: sim, attach: false)
    defer { rig.close() }
    let context = rig.context
    let base: UInt64 = 1 << 32
    let stride: UInt64 = 4 * MiB
    let queries = cfg.areaQueries
    let depMask = cb_opaque_zero()
    var points: [AreaPoint] = []
    var rows: [ResultRow] = []

    for n in cfg.areaCounts {
        let ioas = try context.allocIOAS()
        for k in 0..<n {
            _ = try context.map(ioas: ioas, userVA: va, length: areaBytes, iova: base + UInt64(k) * stride,
                                permissions: readWrite)
        }
        var rng = SplitMix(state: 0xB10 ^ UInt64(n))
        let q = UnsafeMutablePointer<UInt64>.allocate(capacity: queries)
        defer { q.deallocate() }
        for i in 0..<queries {
            q[i] = base + rng.below(UInt64(n)) * stride + rng.below(areaBytes / 8) * 8
        }
        let starts = UnsafeMutablePointer<UInt64>.allocate(capacity: n)
        defer { starts.deallocate() }
        for k in 0..<n { starts[k] = base + UInt64(k) * stride }

        func ours() throws -> Double {
            var link: UInt64 = 0
            var found: UInt64 = 0
            let t = try timeNS {
                for i in 0..<queries {
                    let a = q[i] ^ (link & depMask)
                    guard let area = try context.area(ioas: ioas, containing: a) else {
                        throw BenchError("B10: IOVA 0x\(String(a, radix: 16)) not found")
                    }
                    link = area.iova
                    found &+= 1
                }
            }
            guard found == UInt64(queries) else { throw BenchError("B10: lookups missed") }
            return t / Double(queries)
        }
        var sink: UInt64 = 0
        log("B10: \(n) area(s): area(ioas:containing:) vs C binary search, \(queries) dependent queries")
        let m = try interleave(reps: cfg.cheapReps, ours: { [try ours()] }, reference: {
            [Double(cb_bsearch_chain(starts, n, q, queries, depMask, &sink)) / Double(queries)]
        })[0]
        points.append(AreaPoint(areas: n, measured: m))
        let unmapAll = try timeNS { _ = try context.unmap(ioas: ioas, iova: 0, length: .max) }
        try context.destroy(ioas)
        rows.append(ResultRow(id: "B10", benchmark: "area lookup, \(n) area(s) (IOMMUFDContext.area(ioas:containing:))",
                              unit: "ns/lookup", reference: "C binary search, \(n) sorted starts", goal: 2,
                              measured: m,
                              notes: n >= 256 ? ["IOAS_UNMAP of all \(n) areas took \(fmt(unmapAll / 1e6, 2)) ms (\(fmt(unmapAll / Double(n), 0)) ns per area)"] : []))
    }
    if let first = points.first, let last = points.last, points.count > 1 {
        let marginal = last.measured.ours - first.measured.ours
        let refMarginal = last.measured.reference - first.measured.reference
        rows[rows.count - 1].notes.append("growth from \(first.areas) to \(last.areas) areas: ours +\(fmt(marginal, 1)) ns, C +\(fmt(refMarginal, 1)) ns (the lookup's share of the call)")
    }
    return (rows, points)
}
