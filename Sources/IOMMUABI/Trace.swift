// strace-like decoding of ioctls, one line each, when ABIOptions.trace is set:
//
//   IOMMU_IOAS_MAP {flags=FIXED_IOVA|WRITEABLE|READABLE, ioas_id=1, user_va=0x7f0000000000, length=0x10000, iova=0x100000} = 0 => {iova=0x100000}
//   IOMMU_IOAS_MAP {…} = -1 EEXIST (iova 0x100000 overlaps an area)
//   VFIO_CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU) = 1
//   ioctl(0x3bff, 0x7ffd1000) = -1 ENOTTY
//
// Only built when tracing: the untraced path builds no string.

import UIOMMUBase

/// What one traced ioctl did.
final class TraceRecord {
    var name: String?
    var layout: ABIStructLayout?
    /// An integer argument (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU).
    var argument: String?
    var input: String?
    var output: String?
    var reason: String?
    var arg: UInt64 = 0

    /// The input fields of the struct (and `size` when it is not the struct's size).
    func captureInput(_ bytes: StructBytes, userSize: UInt32?, size: Int) {
        guard let layout else { return }
        var parts: [String] = []
        if let userSize, Int(userSize) != size { parts.append("size=\(userSize)") }
        for field in layout.fields where !(field.name == "size" && field.offset == 0) {
            let value = bytes.value(of: field)
            switch field.role {
            case .input, .inOut: parts.append("\(field.name)=\(Self.format(value, field.format))")
            case .reserved where value != 0: parts.append("\(field.name)=\(Self.format(value, field.format))")
            default: break
            }
        }
        input = "{" + parts.joined(separator: ", ") + "}"
    }

    /// The output fields after success.
    func captureOutput(_ bytes: StructBytes) {
        guard let layout else { return }
        let parts = layout.fields.filter { $0.role == .output || $0.role == .inOut }
            .map { "\($0.name)=\(Self.format(bytes.value(of: $0), $0.format))" }
        output = parts.isEmpty ? nil : "{" + parts.joined(separator: ", ") + "}"
    }

    func line(cmd: UInt32, result: Int64) -> String {
        var s: String
        if let name {
            s = name
            if let argument { s += "(\(argument))" } else if let input { s += " " + input }
        } else {
            s = "ioctl(0x\(String(cmd, radix: 16)))"
        }
        if result >= 0 {
            s += " = \(result)"
            if let output { s += " => " + output }
        } else {
            let errno = LinuxErrno(rawValue: Int32(truncatingIfNeeded: -result))
            s += " = -1 \(errno.name)"
            if let reason, !reason.isEmpty { s += " (\(reason))" }
        }
        return s
    }

    static func format(_ value: UInt64, _ format: ABIFieldFormat) -> String {
        switch format {
        case .decimal: return "\(value)"
        case .hex: return "0x" + String(value, radix: 16)
        case .signed: return "\(Int32(truncatingIfNeeded: value))"
        case .enumeration(let names): return enumName(value, names)
        case .flags(let names):
            if value == 0 { return "0" }
            var parts: [String] = []
            var rest = value
            for (bit, name) in names where value & bit != 0 {
                parts.append(name)
                rest &= ~bit
            }
            if rest != 0 { parts.append("0x" + String(rest, radix: 16)) }
            return parts.joined(separator: "|")
        }
    }

    static func enumName(_ value: UInt64, _ names: [(UInt64, String)]) -> String {
        names.first { $0.0 == value }?.1 ?? "0x" + String(value, radix: 16)
    }
}
