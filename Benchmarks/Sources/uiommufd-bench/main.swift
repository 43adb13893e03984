// uiommufd-bench: the issue-5 benchmark suite.
//
//   uiommufd-bench [--quick] [--only B4,B5,curves] [--csv DIR] [--svg FILE] [--markdown FILE]
//                  [--reps N] [--pin CPU] [--no-hugetlb-config] [--strict]
//
// Prints one table: benchmark, ours, reference, ratio, goal, met. Every goal is a ratio of
// medians of interleaved repetitions in this one process; nothing asserts an absolute time.
// Exit status: 0 when every benchmark ran (goals met or not), 1 when benchmark code failed,
// 2 with --strict when a measured goal was missed.

import CBenchReference
import IOMMUFD
#if canImport(Glibc)
import Glibc
#endif

struct Config {
    var quick = false
    var reps = 11
    /// Repetitions of the benchmarks whose repetitions take at most milliseconds (all but the
    /// 16 and 64 GiB sweep points): more pairs make the median robust against the neighbours'
    /// bursts on a shared 2-CPU guest.
    var cheapReps: Int { quick ? 5 : reps * 3 }
    var only: Set<String>?
    var csvDir: String?
    var svgPath: String?
    var markdownPath: String?
    var pinCPU: Int?
    var mayConfigureHugeTLB = true
    var strict = false
    /// libuiommufd-preload.so for B7 through the interposer.
    var preload: String?
    /// The uiommufd executable for B14 (server mode).
    var uiommufd: String?

    // Sizes (full run; `applyQuick` shrinks them).
    var b1Sizes: [UInt64] = [64 * GiB, TiB]
    var b1Batch = 64
    var b2Bytes: UInt64 = 4 * GiB
    var b3HugeBytes: UInt64 = 4 * GiB
    var b3GiantBytes: UInt64 = TiB
    var hotSetBytes: UInt64 = 16 * MiB
    var hitSteps = 1 << 18
    var dmaRegionBytes: UInt64 = 256 * MiB
    var dmaBatch = 1024
    var sweepSizes: [UInt64] = [16 * MiB, 64 * MiB, 256 * MiB, GiB, 4 * GiB, 16 * GiB, 64 * GiB]
    var missSteps = 1 << 16
    var areaCounts = [1, 16, 256, 1024, 4096, 32768]
    var areaQueries = 1 << 14

    mutating func applyQuick() {
        quick = true
        reps = 3
        b1Batch = 16
        b2Bytes = 64 * MiB
        b3HugeBytes = 64 * MiB
        hitSteps = 1 << 15
        dmaRegionBytes = 16 * MiB
        dmaBatch = 256
        sweepSizes = [4 * MiB, 16 * MiB, 64 * MiB]
        missSteps = 1 << 12
        areaCounts = [1, 16, 256, 1024]
        areaQueries = 1 << 11
        mayConfigureHugeTLB = false
    }

    func wants(_ id: String) -> Bool { only.map { $0.contains(id) } ?? true }
    var wantsCurves: Bool { only.map { $0.contains("CURVES") } ?? true }
}

let usage = """
    usage: uiommufd-bench [options]
      --quick              small sizes, 3 repetitions, seconds (what the test script runs)
      --only LIST          comma-separated ids: B1 … B11, curves (default: everything)
      --csv DIR            write results.csv and the scaling curves as CSV into DIR
      --svg FILE           draw the scaling curves into FILE (hand-written SVG)
      --markdown FILE      write the report (date, machine, table, notes) as Markdown
      --reps N             interleaved repetitions per benchmark (default 11, quick 3)
      --pin CPU            pin the benchmark thread to CPU
      --no-hugetlb-config  never grow /proc/sys/vm/nr_hugepages (B3 falls back if no free pages)
      --strict             exit 2 if a measured goal is missed
      --preload LIB        measure B7 through the interposer: a C program run with LD_PRELOAD=LIB
      --uiommufd EXE       measure B14: an ioctl in server mode (EXE run --shared) vs a UNIX-socket round trip
    """

func parseArguments() -> Config {
    var cfg = Config()
    var args = CommandLine.arguments.dropFirst()
    var reps: Int?
    func value(_ flag: String) -> String {
        guard let v = args.popFirst() else { log("\(flag) needs a value\n" + usage); exit(64) }
        return v
    }
    while let a = args.popFirst() {
        switch a {
        case "--quick": cfg.applyQuick()
        case "--only": cfg.only = Set(value(a).split(separator: ",").map { $0.trimmingSpaces.uppercased() })
        case "--csv": cfg.csvDir = value(a)
        case "--svg": cfg.svgPath = value(a)
        case "--markdown": cfg.markdownPath = value(a)
        case "--reps": reps = Int(value(a))
        case "--pin": cfg.pinCPU = Int(value(a))
        case "--no-hugetlb-config": cfg.mayConfigureHugeTLB = false
        case "--strict": cfg.strict = true
        case "--preload": cfg.preload = value(a)
        case "--uiommufd": cfg.uiommufd = value(a)
        case "-h", "--help": print(usage); exit(0)
        default: log("unknown option \(a)\n" + usage); exit(64)
        }
    }
    if let reps { cfg.reps = max(1, reps) }
    if cfg.quick { cfg.mayConfigureHugeTLB = false }
    return cfg
}

func timestamp() -> String {
    var t = time(nil)
    var tmv = tm()
    gmtime_r(&t, &tmv)
    var buf = [CChar](repeating: 0, count: 64)
    _ = strftime(&buf, 64, "%Y-%m-%d %H:%M:%S UTC", &tmv)
    return stringFromCBuffer(buf)
}

// MARK: Run

let cfg = parseArguments()
let host = HostInfo.read()
if let cpu = cfg.pinCPU, cb_pin_cpu(Int32(cpu)) != 0 { log("warning: cannot pin to CPU \(cpu)") }
let started = nowNS()
let when = timestamp()
log("uiommufd-bench \(cfg.quick ? "quick" : "full") run, \(cfg.reps)–\(cfg.cheapReps) interleaved pairs per row; \(host.cpus) CPUs, \(host.cpuModel), kernel \(host.kernel)")

var results = SuiteResults()
let pool = HugeTLBPool()

@MainActor func section(_ ids: [String], _ name: String, _ body: () throws -> [ResultRow]) {
    guard ids.contains(where: cfg.wants) else { return }
    do {
        let rows = try body()
        results.rows += rows.filter { cfg.wants($0.id) }
    } catch {
        log("FAILED: \(name): \(error)")
        results.failures.append("\(name): \(error)")
    }
}

section(["B1"], "B1") { try runB1(cfg) }
section(["B2", "B11"], "B2/B11") { try runB2(cfg, results: &results) }
section(["B3"], "B3") {
    defer { pool.restore() }
    return try runB3(cfg, pool: pool, b2PerEntry: results.b2PerEntryMap, resolveNS: results.resolveNS)
}
section(["B4"], "B4") { try runB4(cfg) }
section(["B6"], "B6") { try runB6(cfg) }
if cfg.wants("B5") || cfg.wants("B8") || cfg.wantsCurves {
    let sizes = cfg.wantsCurves ? cfg.sweepSizes : [cfg.sweepSizes.max()!]
    section(["B5", "B8", "CURVES"], "sweep") {
        results.sweep = try runSweep(cfg, sizes: sizes)
        return sweepRows(results.sweep)
    }
}
if cfg.wants("B10") || cfg.wantsCurves {
    section(["B10", "CURVES"], "B10") {
        let (rows, points) = try runB10(cfg)
        results.areas = points
        return rows
    }
}
section(["B7"], "B7") {
    var rows = try runB7(cfg)
    if let lib = cfg.preload {
        rows = try runB7Interposer(cfg, preload: lib) + rows.filter { $0.notMeasured == nil }
    }
    return rows
}
section(["B9"], "B9") { try runB9(cfg) }
if let exe = cfg.uiommufd {
    section(["B14"], "B14") { try runB14Shared(cfg, uiommufd: exe) }
}
pool.restore()

func idNumber(_ id: String) -> Int { Int(id.dropFirst()) ?? 99 }
results.rows = results.rows.enumerated().sorted {
    (idNumber($0.element.id), $0.offset) < (idNumber($1.element.id), $1.offset)
}.map(\.element)

let elapsed = Double(nowNS() - started) / 1e9
let machine = "\(host.cpus) CPUs, \(host.cpuModel), kernel \(host.kernel), \(host.memory) RAM, THP \(host.thp)"
let header = "uiommufd benchmarks (\(cfg.quick ? "quick" : "full") run, \(cfg.reps)–\(cfg.cheapReps) interleaved pairs per row, medians) \(when)\n\(machine)\n"
var out = header + "\n" + textTable(results.rows) + "\n" + summaryLine(results.rows) + "; run took \(fmt(elapsed, 1)) s\n"
let notes = rowNotes(results.rows)
if !notes.isEmpty { out += "\nnotes:\n" + notes.map { "  " + $0 }.joined(separator: "\n") + "\n" }
if !results.failures.isEmpty { out += "\nFAILED:\n" + results.failures.map { "  " + $0 }.joined(separator: "\n") + "\n" }
print(out, terminator: "")
fflush(nil)

var written: [String] = []
do {
    if let dir = cfg.csvDir { written += try writeCSVs(dir, results) }
    if let path = cfg.svgPath, !(results.sweep.isEmpty && results.areas.isEmpty) {
        try writeFile(path, scalingSVG(results, subtitle: "\(when) — \(machine)"))
        written.append(path)
    }
    if let path = cfg.markdownPath {
        var md = "# uiommufd benchmark results\n\n"
        md += "- date: \(when)\n- machine: `nproc` = \(host.cpus), CPU \(host.cpuModel), kernel \(host.kernel), \(host.memory) RAM, THP `\(host.thp)`\n"
        md += "- command: `\(CommandLine.arguments.map { $0.contains(" ") ? "'\($0)'" : $0 }.joined(separator: " "))` (\(cfg.quick ? "quick" : "full") run, \(cfg.reps)–\(cfg.cheapReps) interleaved pairs per row, run took \(fmt(elapsed, 1)) s)\n"
        md += "- reproduce: `Benchmarks/full.sh` (quick mode: `Benchmarks/quick.sh`)\n"
        if let svg = cfg.svgPath { md += "- scaling plot: `\(svg)`\n" }
        if let dir = cfg.csvDir { md += "- CSV: `\(dir)/` (results.csv and the scaling curves)\n" }
        md += "\nEvery ratio is the median over repetitions of (ours / reference), each repetition running both back to back in the same process, alternating which goes first. ns/op is the median of each side; the unit of \"op\" is in brackets. A missed goal says by how much.\n\n"
        md += markdownTable(results.rows)
        md += "\n" + summaryLine(results.rows) + ".\n"
        if !notes.isEmpty { md += "\n## Notes\n\n" + notes.map { "- " + $0 }.joined(separator: "\n") + "\n" }
        if !results.failures.isEmpty { md += "\n## Failures\n\n" + results.failures.map { "- " + $0 }.joined(separator: "\n") + "\n" }
        try writeFile(path, md)
        written.append(path)
    }
} catch {
    log("FAILED: writing outputs: \(error)")
    results.failures.append("outputs: \(error)")
}
if !written.isEmpty { log("wrote " + written.joined(separator: ", ")) }

if !results.failures.isEmpty { exit(1) }
if cfg.strict && results.rows.contains(where: { $0.met == false }) { exit(2) }
exit(0)
