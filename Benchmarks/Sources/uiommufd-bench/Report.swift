// The report: the table on stdout, RESULTS.md, CSV files and the SVG plot.

#if canImport(Glibc)
import Glibc
#endif

struct SuiteResults {
    var rows: [ResultRow] = []
    var sweep: [SweepPoint] = []
    var areas: [AreaPoint] = []
    var b2PerEntryMap: Double?
    var b2PerEntryUnmap: Double?
    var resolveNS: Double?
    var failures: [String] = []
    var notes: [String] = []
}

// MARK: Table

func tableColumns(_ rows: [ResultRow]) -> [[String]] {
    var out = [["id", "benchmark", "ours ns/op", "reference", "ref ns/op", "ratio", "goal", "met"]]
    for r in rows {
        out.append([r.id, "\(r.benchmark) [\(r.unit)]", r.notMeasured == nil ? formatNS(r.ours) : "-",
                    r.reference, formatNS(r.referenceValue),
                    r.notMeasured == nil ? fmt(r.ratio ?? .nan, 2) : "-", "≤ \(fmt(r.goal, 2))×", r.verdict])
    }
    return out
}

func textTable(_ rows: [ResultRow]) -> String {
    let cells = tableColumns(rows)
    var widths = [Int](repeating: 0, count: cells[0].count)
    for row in cells { for (i, c) in row.enumerated() { widths[i] = max(widths[i], c.count) } }
    let numeric: Set<Int> = [2, 4, 5]
    var s = ""
    for (k, row) in cells.enumerated() {
        var line = ""
        for (i, c) in row.enumerated() {
            let pad = String(repeating: " ", count: widths[i] - c.count)
            line += (numeric.contains(i) && k > 0 ? pad + c : c + pad)
            if i < row.count - 1 { line += "  " }
        }
        while line.last == " " { line.removeLast() }
        s += line + "\n"
        if k == 0 { s += String(repeating: "-", count: widths.reduce(0, +) + 2 * (widths.count - 1)) + "\n" }
    }
    return s
}

func markdownTable(_ rows: [ResultRow]) -> String {
    let cells = tableColumns(rows)
    var s = "| " + cells[0].joined(separator: " | ") + " |\n"
    s += "|" + cells[0].enumerated().map { [2, 4, 5].contains($0.offset) ? "---:|" : "---|" }.joined() + "\n"
    for row in cells.dropFirst() {
        s += "| " + row.map { $0.replacingOccurrences("|", "\\|") }.joined(separator: " | ") + " |\n"
    }
    return s
}

func rowNotes(_ rows: [ResultRow]) -> [String] {
    var out: [String] = []
    for r in rows where !r.notes.isEmpty || (r.spread.map { $0 > 1.5 } ?? false) {
        var n = r.notes
        if let sp = r.spread, sp.isFinite, sp > 1.5 { n.append("noisy: per-pair ratios spread \(fmt(sp, 1))×") }
        out.append("\(r.id) \(r.benchmark): " + n.joined(separator: "; "))
    }
    return out
}

func summaryLine(_ rows: [ResultRow]) -> String {
    let measured = rows.filter { $0.met != nil }
    let met = measured.filter { $0.met == true }.count
    let pending = rows.filter { $0.notMeasured != nil }.count
    return "\(met) of \(measured.count) measured goals met; \(pending) row(s) not measured yet"
}

// MARK: Files

func makeDirectories(_ path: String) {
    var prefix = path.hasPrefix("/") ? "/" : ""
    for part in path.split(separator: "/") {
        prefix += part
        _ = mkdir(prefix, 0o755)
        prefix += "/"
    }
}

func parentDirectory(_ path: String) -> String? {
    guard let i = path.lastIndex(of: "/") else { return nil }
    return String(path[..<i])
}

func writeFile(_ path: String, _ text: String) throws {
    if let dir = parentDirectory(path), !dir.isEmpty { makeDirectories(dir) }
    guard let f = fopen(path, "w") else { throw BenchError("cannot write \(path)") }
    defer { fclose(f) }
    guard fputs(text, f) >= 0 else { throw BenchError("write to \(path) failed") }
}

func csvField(_ s: String) -> String {
    s.contains(",") || s.contains("\"") ? "\"" + s.replacingOccurrences("\"", "\"\"") + "\"" : s
}

func writeCSVs(_ dir: String, _ r: SuiteResults) throws -> [String] {
    makeDirectories(dir)
    var written: [String] = []
    func csv(_ name: String, _ header: [String], _ lines: [[String]]) throws {
        let path = dir + "/" + name
        try writeFile(path, ([header] + lines).map { $0.map(csvField).joined(separator: ",") }.joined(separator: "\n") + "\n")
        written.append(path)
    }
    try csv("results.csv", ["id", "benchmark", "unit", "ours_ns", "reference", "reference_ns", "ratio", "goal", "met", "ratio_spread", "notes"],
            r.rows.map { row in
                [row.id, row.benchmark, row.unit, row.ours.map { fmt($0, 3) } ?? "", row.reference,
                 row.referenceValue.map { fmt($0, 3) } ?? "", row.ratio.map { fmt($0, 4) } ?? "",
                 fmt(row.goal, 2), row.verdict, row.spread.map { fmt($0, 3) } ?? "",
                 (row.notes + (row.notMeasured.map { ["not measured: " + $0] } ?? [])).joined(separator: "; ")]
            })
    var sampleLines: [[String]] = []
    for row in r.rows {
        for (i, (o, f)) in row.samples.enumerated() {
            sampleLines.append([row.id, row.benchmark, row.unit, "\(i)", fmt(o, 3), fmt(f, 3), fmt(o / f, 4)])
        }
    }
    try csv("samples.csv", ["id", "benchmark", "unit", "repetition", "ours_ns", "reference_ns", "ratio"], sampleLines)
    if !r.sweep.isEmpty {
        let s = r.sweep
        try csv("map_scaling.csv", ["mapped_bytes", "ptes", "ours_map_ns", "c_fill_ns", "map_ratio", "ours_unmap_ns", "c_clear_ns", "unmap_ratio"],
                s.map { ["\($0.bytes)", "\($0.pages)", fmt($0.map.ours, 0), fmt($0.map.reference, 0), fmt($0.map.ratio, 4),
                         fmt($0.unmap.ours, 0), fmt($0.unmap.reference, 0), fmt($0.unmap.ratio, 4)] })
        try csv("translate_scaling.csv", ["mapped_bytes", "ptes", "ours_ns", "c_walk_ns", "ratio", "iotlb_hit_rate"],
                s.map { ["\($0.bytes)", "\($0.pages)", fmt($0.translate.ours, 2), fmt($0.translate.reference, 2),
                         fmt($0.translate.ratio, 4), fmt($0.iotlbHitRate, 4)] })
        try csv("dirty_scaling.csv", ["mapped_bytes", "ptes", "dirty_ptes", "ours_ns", "c_harvest_ns", "ratio"],
                s.map { ["\($0.bytes)", "\($0.pages)", "\($0.dirtyLeaves)", fmt($0.dirty.ours, 0), fmt($0.dirty.reference, 0),
                         fmt($0.dirty.ratio, 4)] })
        try csv("memory_scaling.csv", ["mapped_bytes", "ptes", "rss_growth_bytes", "table_bytes", "arena_bytes", "reference_bytes_8_per_page", "rss_ratio"],
                s.map { ["\($0.bytes)", "\($0.pages)", fmt($0.rssGrowth, 0), fmt($0.tableBytes, 0), fmt($0.reservedTableBytes, 0),
                         "\($0.pages * 8)", fmt($0.rssGrowth / Double($0.pages * 8), 4)] })
    }
    if !r.areas.isEmpty {
        try csv("area_scaling.csv", ["areas", "ours_ns", "c_bsearch_ns", "ratio"],
                r.areas.map { ["\($0.areas)", fmt($0.measured.ours, 2), fmt($0.measured.reference, 2), fmt($0.measured.ratio, 4)] })
    }
    return written
}

func scalingSVG(_ r: SuiteResults, subtitle: String) -> String {
    let s = r.sweep
    let ours = "#d62728", ref = "#1f77b4", extra = "#2ca02c"
    func pts(_ f: (SweepPoint) -> Double) -> [(x: Double, y: Double)] { s.map { (Double($0.bytes), f($0)) } }
    let panels = [
        Panel(title: "IOAS_MAP (VT-d attached, 4K)", xLabel: "mapped size", yLabel: "time per call",
              xAxis: .bytes, yAxis: .time,
              series: [Series(name: "map", color: ours, points: pts { $0.map.ours }),
                       Series(name: "C fill", color: ref, dashed: true, points: pts { $0.map.reference }),
                       Series(name: "unmap", color: extra, points: pts { $0.unmap.ours }),
                       Series(name: "C clear", color: "#9467bd", dashed: true, points: pts { $0.unmap.reference })]),
        Panel(title: "translate (random, IOTLB on)", xLabel: "mapped size", yLabel: "time per translation",
              xAxis: .bytes, yAxis: .time,
              series: [Series(name: "uiommufd", color: ours, points: pts { $0.translate.ours }),
                       Series(name: "C 4-level walk", color: ref, dashed: true, points: pts { $0.translate.reference })]),
        Panel(title: "GET_DIRTY_BITMAP (1/32 dirty, clear)", xLabel: "mapped size", yLabel: "time per call",
              xAxis: .bytes, yAxis: .time,
              series: [Series(name: "uiommufd", color: ours, points: pts { $0.dirty.ours }),
                       Series(name: "C harvest", color: ref, dashed: true, points: pts { $0.dirty.reference })]),
        Panel(title: "memory after map", xLabel: "mapped size", yLabel: "bytes",
              xAxis: .bytes, yAxis: .bytes,
              series: [Series(name: "RSS growth", color: ours, points: pts { max(1, $0.rssGrowth) }),
                       Series(name: "8 B/page", color: ref, dashed: true, points: pts { Double($0.pages * 8) }),
                       Series(name: "tables", color: extra, points: pts { $0.tableBytes })]),
        Panel(title: "area lookup (IOMMUFDContext.area(ioas:containing:))", xLabel: "areas in the IOAS", yLabel: "time per lookup",
              xAxis: .count, yAxis: .time,
              series: [Series(name: "uiommufd", color: ours, points: r.areas.map { (Double($0.areas), $0.measured.ours) }),
                       Series(name: "C binary search", color: ref, dashed: true,
                              points: r.areas.map { (Double($0.areas), $0.measured.reference) })]),
        Panel(title: "ratio uiommufd / C (goals: map 3, translate 1.5, dirty 1.5)", xLabel: "mapped size", yLabel: "ratio",
              xAxis: .bytes, yAxis: .count,
              series: [Series(name: "map", color: ours, points: pts { $0.map.ratio }),
                       Series(name: "translate", color: ref, points: pts { $0.translate.ratio }),
                       Series(name: "dirty", color: extra, points: pts { $0.dirty.ratio }),
                       Series(name: "1.5", color: "#999999", dashed: true, points: pts { _ in 1.5 })]),
    ]
    return SVGDocument(title: "uiommufd scaling (median of interleaved repetitions)", subtitle: subtitle,
                       panels: panels).render()
}

extension String {
    func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var out = ""
        var rest = Substring(self)
        while let r = rest.range(of: target) {
            out += rest[..<r.lowerBound]
            out += replacement
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}

extension Substring {
    func range(of target: String) -> Range<Substring.Index>? {
        guard !target.isEmpty, count >= target.count else { return nil }
        var i = startIndex
        while i < endIndex {
            if self[i...].hasPrefix(target) {
                return i..<index(i, offsetBy: target.count)
            }
            i = index(after: i)
        }
        return nil
    }
}
