// A small hand-written SVG writer: log-log line charts in a grid of panels. No dependencies.

struct Series {
    var name: String
    var color: String
    var dashed = false
    var points: [(x: Double, y: Double)]
}

enum AxisKind {
    case bytes      // powers of two, labelled 4 KiB, 1 MiB, …
    case count      // powers of two, labelled 1, 16, 1024, …
    case time       // powers of ten of nanoseconds, labelled 10 ns, 1 µs, …
}

struct Panel {
    var title: String
    var xLabel: String
    var yLabel: String
    var xAxis: AxisKind
    var yAxis: AxisKind
    var series: [Series]
}

struct SVGDocument {
    var title: String
    var subtitle: String
    var panels: [Panel]
    var columns = 3
    let panelWidth = 440.0, panelHeight = 320.0

    func render() -> String {
        let rows = (panels.count + columns - 1) / columns
        let width = panelWidth * Double(columns) + 20
        let height = panelHeight * Double(rows) + 70
        var s = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(n(width))" height="\(n(height))" viewBox="0 0 \(n(width)) \(n(height))" font-family="sans-serif" font-size="11">
            <rect width="100%" height="100%" fill="white"/>
            <text x="14" y="24" font-size="16" font-weight="bold">\(esc(title))</text>
            <text x="14" y="44" font-size="11" fill="#555">\(esc(subtitle))</text>

            """
        for (i, p) in panels.enumerated() {
            let ox = 10 + Double(i % columns) * panelWidth
            let oy = 60 + Double(i / columns) * panelHeight
            s += panel(p, ox: ox, oy: oy)
        }
        s += "</svg>\n"
        return s
    }

    private func panel(_ p: Panel, ox: Double, oy: Double) -> String {
        // Plot area inside the panel.
        let left = ox + 62, right = ox + panelWidth - 16
        let top = oy + 28, bottom = oy + panelHeight - 60
        let all = p.series.flatMap { $0.points }.filter { $0.x > 0 && $0.y > 0 && $0.x.isFinite && $0.y.isFinite }
        var s = "<g>\n<text x=\"\(n(ox + 8))\" y=\"\(n(oy + 16))\" font-size=\"13\" font-weight=\"bold\">\(esc(p.title))</text>\n"
        s += "<rect x=\"\(n(left))\" y=\"\(n(top))\" width=\"\(n(right - left))\" height=\"\(n(bottom - top))\" fill=\"none\" stroke=\"#999\"/>\n"
        guard !all.isEmpty else {
            return s + "<text x=\"\(n((left + right) / 2))\" y=\"\(n((top + bottom) / 2))\" text-anchor=\"middle\" fill=\"#999\">no data</text>\n</g>\n"
        }
        let (xTicks, xLo, xHi) = ticks(all.map(\.x), p.xAxis)
        let (yTicks, yLo, yHi) = ticks(all.map(\.y), p.yAxis)
        func X(_ x: Double) -> Double { left + (log2(x) - log2(xLo)) / max(1e-9, log2(xHi) - log2(xLo)) * (right - left) }
        func Y(_ y: Double) -> Double { bottom - (log2(y) - log2(yLo)) / max(1e-9, log2(yHi) - log2(yLo)) * (bottom - top) }
        for t in xTicks {
            let x = X(t)
            s += "<line x1=\"\(n(x))\" y1=\"\(n(top))\" x2=\"\(n(x))\" y2=\"\(n(bottom))\" stroke=\"#eee\"/>\n"
            s += "<text x=\"\(n(x))\" y=\"\(n(bottom + 14))\" text-anchor=\"middle\">\(esc(label(t, p.xAxis)))</text>\n"
        }
        for t in yTicks {
            let y = Y(t)
            s += "<line x1=\"\(n(left))\" y1=\"\(n(y))\" x2=\"\(n(right))\" y2=\"\(n(y))\" stroke=\"#eee\"/>\n"
            s += "<text x=\"\(n(left - 4))\" y=\"\(n(y + 4))\" text-anchor=\"end\">\(esc(label(t, p.yAxis)))</text>\n"
        }
        s += "<text x=\"\(n((left + right) / 2))\" y=\"\(n(bottom + 30))\" text-anchor=\"middle\" fill=\"#333\">\(esc(p.xLabel))</text>\n"
        s += "<text x=\"\(n(ox + 12))\" y=\"\(n((top + bottom) / 2))\" text-anchor=\"middle\" fill=\"#333\" transform=\"rotate(-90 \(n(ox + 12)) \(n((top + bottom) / 2)))\">\(esc(p.yLabel))</text>\n"
        var legendX = left
        for series in p.series {
            let pts = series.points.filter { $0.x > 0 && $0.y > 0 && $0.x.isFinite && $0.y.isFinite }.sorted { $0.x < $1.x }
            guard !pts.isEmpty else { continue }
            let path = pts.map { "\(n(X($0.x))),\(n(Y($0.y)))" }.joined(separator: " ")
            let dash = series.dashed ? " stroke-dasharray=\"5,3\"" : ""
            s += "<polyline points=\"\(path)\" fill=\"none\" stroke=\"\(series.color)\" stroke-width=\"2\"\(dash)/>\n"
            for q in pts {
                s += "<circle cx=\"\(n(X(q.x)))\" cy=\"\(n(Y(q.y)))\" r=\"2.5\" fill=\"\(series.color)\"/>\n"
            }
            s += "<line x1=\"\(n(legendX))\" y1=\"\(n(bottom + 46))\" x2=\"\(n(legendX + 18))\" y2=\"\(n(bottom + 46))\" stroke=\"\(series.color)\" stroke-width=\"2\"\(dash)/>\n"
            s += "<text x=\"\(n(legendX + 22))\" y=\"\(n(bottom + 50))\">\(esc(series.name))</text>\n"
            legendX += 36 + Double(series.name.count) * 6.6
        }
        return s + "</g>\n"
    }

    /// Tick values covering `values` on a log axis, and the axis range.
    private func ticks(_ values: [Double], _ kind: AxisKind) -> ([Double], Double, Double) {
        let lo = values.min()!, hi = values.max()!
        let base: Double = kind == .time ? 10 : 2
        var a = pow(base, (log(lo) / log(base)).rounded(.down))
        var b = pow(base, (log(hi) / log(base)).rounded(.up))
        if a == b { a /= base; b *= base }
        var t: [Double] = []
        var v = a
        while v <= b * 1.0001 { t.append(v); v *= base }
        // At most 8 labels: keep every k-th.
        let k = max(1, (t.count + 7) / 8)
        let kept = t.enumerated().filter { $0.offset % k == 0 }.map(\.element)
        return (kept, a, b)
    }

    private func label(_ v: Double, _ kind: AxisKind) -> String {
        switch kind {
        case .bytes: return formatBytes(v).replacingSpaces
        case .count: return v >= 1 ? groupThousands(Int(v.rounded())) : fmt(v, 2)
        case .time:
            if v < 1e3 { return fmt(v, v < 1 ? 2 : 0) + " ns" }
            if v < 1e6 { return fmt(v / 1e3, 0) + " µs" }
            if v < 1e9 { return fmt(v / 1e6, 0) + " ms" }
            return fmt(v / 1e9, 0) + " s"
        }
    }

    private func n(_ x: Double) -> String { fmt(x, 1) }
    private func esc(_ s: String) -> String {
        var o = ""
        for c in s {
            switch c {
            case "<": o += "&lt;"
            case ">": o += "&gt;"
            case "&": o += "&amp;"
            case "\"": o += "&quot;"
            default: o.append(c)
            }
        }
        return o
    }
}

extension String {
    var replacingSpaces: String { String(map { $0 == " " ? "\u{a0}" : $0 }) }
}

#if canImport(Glibc)
import Glibc
#endif
