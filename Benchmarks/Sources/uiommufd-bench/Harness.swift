// Measurement: interleaved repetitions of a subject and its reference, medians, result rows.
//
// Every goal of issue 5 is a ratio, judged as the median over repetitions of (ours / reference)
// where each repetition runs both, back to back, in the same process. The order inside a pair
// alternates (ours first, then reference first) so neither side always runs on the cache or
// frequency state the other left behind. Each closure times only its own timed region and
// returns nanoseconds per operation for every metric it measures, so untimed setup and
// teardown (re-dirtying, unmapping) can live inside the repetition.

import CBenchReference

@inline(__always) func nowNS() -> UInt64 { cb_now_ns() }

/// Times `body` and returns its nanoseconds.
@inline(__always) func timeNS(_ body: () throws -> Void) rethrows -> Double {
    let t0 = cb_now_ns()
    try body()
    return Double(cb_now_ns() - t0)
}

func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// The medians of one metric over the repetitions of an interleaved run.
struct Measured {
    var ours: Double        // median ns/op of the subject
    var reference: Double   // median ns/op of the reference
    var ratio: Double       // median of the per-repetition ratios
    var oursAll: [Double]
    var referenceAll: [Double]

    /// Spread of the per-pair ratios (max / min), a noise indicator.
    var ratioSpread: Double {
        let r = zip(oursAll, referenceAll).map { $0 / $1 }
        guard let lo = r.min(), let hi = r.max(), lo > 0 else { return .nan }
        return hi / lo
    }
}

/// Runs `warmup` untimed pairs, then `reps` pairs of `ours` and `reference`, alternating which
/// runs first. Both return one ns/op value per metric (the same number of metrics).
func interleave(reps: Int, warmup: Int = 1,
                ours: () throws -> [Double], reference: () throws -> [Double]) throws -> [Measured] {
    for _ in 0..<warmup {
        _ = try ours()
        _ = try reference()
    }
    var o: [[Double]] = [], r: [[Double]] = []
    for i in 0..<max(1, reps) {
        if i % 2 == 0 {
            o.append(try ours()); r.append(try reference())
        } else {
            r.append(try reference()); o.append(try ours())
        }
    }
    let metrics = o[0].count
    precondition(r[0].count == metrics, "subject and reference report different metric counts")
    return (0..<metrics).map { m in
        let os = o.map { $0[m] }, rs = r.map { $0[m] }
        return Measured(ours: median(os), reference: median(rs),
                        ratio: median(zip(os, rs).map { $0 / $1 }), oursAll: os, referenceAll: rs)
    }
}

/// One line of the report table.
struct ResultRow {
    var id: String
    /// What is measured (the subject), with its size.
    var benchmark: String
    /// What one "op" is for the ns/op columns.
    var unit: String
    var reference: String
    var ours: Double?
    var referenceValue: Double?
    var ratio: Double?
    var spread: Double?
    /// The goal: ratio ≤ goal.
    var goal: Double
    var notes: [String] = []
    /// Set when the row could not be measured, with the reason.
    var notMeasured: String?
    /// Every repetition's ns/op (ours, reference), for samples.csv.
    var samples: [(Double, Double)] = []

    init(id: String, benchmark: String, unit: String, reference: String, goal: Double,
         measured: Measured? = nil, notes: [String] = []) {
        self.id = id; self.benchmark = benchmark; self.unit = unit; self.reference = reference
        self.goal = goal; self.notes = notes
        if let m = measured {
            ours = m.ours; referenceValue = m.reference; ratio = m.ratio; spread = m.ratioSpread
            samples = Array(zip(m.oursAll, m.referenceAll))
        }
    }

    static func pending(id: String, benchmark: String, unit: String, reference: String, goal: Double,
                        reason: String, referenceValue: Double? = nil) -> ResultRow {
        var r = ResultRow(id: id, benchmark: benchmark, unit: unit, reference: reference, goal: goal)
        r.notMeasured = reason
        r.referenceValue = referenceValue
        return r
    }

    var met: Bool? {
        guard notMeasured == nil, let ratio, ratio.isFinite else { return nil }
        return ratio <= goal
    }

    /// "yes", "NO (1.8× over)", or "not measured yet (…)".
    var verdict: String {
        if let why = notMeasured { return "not measured yet (\(why))" }
        guard let ratio, ratio.isFinite else { return "no data" }
        if ratio <= goal { return "yes" }
        return "NO (\(fmt(ratio / goal, 2))× over goal)"
    }
}

// MARK: Formatting

func fmt(_ x: Double, _ decimals: Int) -> String {
    guard x.isFinite else { return "-" }
    var p = 1.0
    for _ in 0..<decimals { p *= 10 }
    let r = (x * p).rounded() / p
    var s = String(r)
    if decimals == 0, s.hasSuffix(".0") { s.removeLast(2) }
    if let dot = s.firstIndex(of: "."), decimals > 0 {
        let have = s.distance(from: dot, to: s.endIndex) - 1
        if have < decimals { s += String(repeating: "0", count: decimals - have) }
    }
    return s
}

/// ns/op with a precision that suits its size.
func formatNS(_ x: Double?) -> String {
    guard let x, x.isFinite else { return "-" }
    if x < 10 { return fmt(x, 2) }
    if x < 100 { return fmt(x, 1) }
    return groupThousands(Int(x.rounded()))
}

func groupThousands(_ n: Int) -> String {
    let s = String(n.magnitude)
    var out = ""
    for (i, c) in s.enumerated() {
        if i > 0 && (s.count - i) % 3 == 0 { out.append(",") }
        out.append(c)
    }
    return (n < 0 ? "-" : "") + out
}

func formatBytes(_ b: Double) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = b, u = 0
    while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    return (v == v.rounded() ? fmt(v, 0) : fmt(v, 1)) + " " + units[u]
}

/// Progress and notes on stderr, so stdout carries only the table.
func log(_ s: String) {
    var line = s
    line.append("\n")
    line.utf8CString.withUnsafeBufferPointer { _ = write(2, $0.baseAddress, $0.count - 1) }
}

#if canImport(Glibc)
import Glibc
#endif
