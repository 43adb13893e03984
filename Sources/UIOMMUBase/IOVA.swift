// IOVA arithmetic. Every IOVA and length here comes from a client and may be anything up to
// UInt64.max, so nothing in this file traps: additions that could overflow are checked and
// reported as EOVERFLOW, exactly where the kernel uses check_add_overflow().
//
// Convention (as in the kernel's pages.c): `last` is inclusive, `end` is exclusive. A range
// that reaches UInt64.max can only be written with `last`.

/// An inclusive range of IOVAs `[first, last]`. Never empty.
public struct IOVARange: Hashable, Sendable, CustomStringConvertible {
    public var first: UInt64
    public var last: UInt64

    public init(first: UInt64, last: UInt64) {
        precondition(first <= last, "IOVARange must not be empty")
        self.first = first
        self.last = last
    }

    /// `[start, start + length - 1]`, or EOVERFLOW if that wraps; EINVAL for a zero length.
    public init(start: UInt64, length: UInt64) throws(IOMMUError) {
        guard length != 0 else { throw IOMMUError(.EINVAL, "zero length") }
        let (last, overflow) = start.addingReportingOverflow(length - 1)
        guard !overflow else { throw IOMMUError(.EOVERFLOW, "iova + length overflows") }
        self.first = start
        self.last = last
    }

    /// The whole 64-bit space.
    public static let all = IOVARange(first: 0, last: .max)

    /// Number of bytes, saturating at UInt64.max for the whole space.
    public var length: UInt64 { last &- first &+ 1 == 0 ? .max : last - first + 1 }

    public func contains(_ iova: UInt64) -> Bool { iova >= first && iova <= last }
    public func contains(_ other: IOVARange) -> Bool { other.first >= first && other.last <= last }
    public func overlaps(_ other: IOVARange) -> Bool { other.first <= last && other.last >= first }

    public func intersection(_ other: IOVARange) -> IOVARange? {
        let lo = max(first, other.first), hi = min(last, other.last)
        return lo <= hi ? IOVARange(first: lo, last: hi) : nil
    }

    public var description: String {
        "[0x\(String(first, radix: 16)), 0x\(String(last, radix: 16))]"
    }
}

public extension UInt64 {
    /// True if `self` is a multiple of `alignment` (a power of two or any nonzero value).
    @inline(__always) func isAligned(to alignment: UInt64) -> Bool {
        alignment == 0 ? true : self % alignment == 0
    }

    /// Rounds up to a multiple of the power of two `alignment`; nil on overflow.
    @inline(__always) func alignedUp(to alignment: UInt64) -> UInt64? {
        let mask = alignment - 1
        let (sum, overflow) = self.addingReportingOverflow(mask)
        return overflow ? nil : sum & ~mask
    }

    @inline(__always) func alignedDown(to alignment: UInt64) -> UInt64 { self & ~(alignment - 1) }

    var isPowerOfTwo: Bool { self != 0 && (self & (self - 1)) == 0 }

    /// The largest power of two dividing `self` (the lowest set bit); 1 << 63 for zero.
    var lowestSetBitValue: UInt64 { self == 0 ? 1 << 63 : self & (~self &+ 1) }
}
