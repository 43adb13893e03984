// Number spellings shared by the machine-file parser, its writer and the renderers, so that what
// `uiommufd platform` prints can be pasted back into a machine file.

import UIOMMUBase

enum MachineFormatting {
    private static let units: [(shift: UInt64, suffix: String)] = [
        (60, "E"), (50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K"),
    ]

    /// "4K", "2M", "1G", "96K", "1536"; the exact value in the largest unit that divides it.
    static func size(_ value: UInt64) -> String {
        guard value != 0 else { return "0" }
        for unit in units where value % (1 << unit.shift) == 0 {
            return "\(value >> unit.shift)\(unit.suffix)"
        }
        return String(value)
    }

    /// "1 MiB", "256 TiB", "16 EiB" for people; exact values only, else bytes.
    static func humanSize(_ value: UInt64) -> String {
        guard value != 0 else { return "0 bytes" }
        for unit in units where value % (1 << unit.shift) == 0 {
            return "\(value >> unit.shift) \(unit.suffix)iB"
        }
        return "\(value) bytes"
    }

    /// "0xfee00000".
    static func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

    /// "0x05": a bus number.
    static func hex2(_ value: Int) -> String { "0x" + padded(value, 2) }

    /// Zero-padded lowercase hex without prefix ("8086", "010802").
    static func padded(_ value: some BinaryInteger, _ width: Int) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }

    /// "4K,2M,1G" from a page-size bitmap.
    static func pageSizes(_ bitmap: UInt64) -> [String] {
        (0..<64).filter { bitmap & (1 << UInt64($0)) != 0 }.map { size(1 << UInt64($0)) }
    }

    /// The address width N if `range` is exactly [0, 2^N - 1].
    static func width(of range: IOVARange) -> Int? {
        guard range.first == 0 else { return nil }
        if range.last == .max { return 64 }
        let end = range.last &+ 1
        return end.isPowerOfTwo ? end.trailingZeroBitCount : nil
    }

    // MARK: Parsing

    /// A non-negative integer: decimal, or hexadecimal with 0x; '_' may separate digits.
    /// Nil on anything else, including overflow.
    static func parseInteger(_ text: Substring) -> UInt64? {
        let clean = text.filter { $0 != "_" }
        if clean.hasPrefix("0x") || clean.hasPrefix("0X") {
            return parseHex(clean.dropFirst(2))
        }
        guard !clean.isEmpty, clean.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return UInt64(clean, radix: 10)
    }

    /// Hex digits only (no sign, no prefix: the standard library would accept "+ff"); nil on
    /// anything else, including overflow.
    static func parseHex(_ text: some StringProtocol) -> UInt64? {
        guard !text.isEmpty, text.allSatisfy({ $0.isASCII && $0.isHexDigit }) else { return nil }
        return UInt64(text, radix: 16)
    }

    /// A size: an integer, optionally followed by K, M, G, T, P or E (powers of 1024).
    static func parseSize(_ text: Substring) -> UInt64? {
        guard let last = text.last, last.isLetter, !text.hasPrefix("0x"), !text.hasPrefix("0X") else {
            return parseInteger(text)
        }
        guard let unit = units.first(where: { $0.suffix == last.uppercased() }),
              let number = parseInteger(text.dropLast())
        else { return nil }
        let (value, overflow) = number.multipliedReportingOverflow(by: 1 << unit.shift)
        return overflow ? nil : value
    }
}
