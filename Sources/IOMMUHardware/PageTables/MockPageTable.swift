public import UIOMMUBase

// The kernel selftest's mock IOMMU page table, as a real radix table.
//
// The kernel's mock (selftest.c) keeps an xarray of PFNs keyed by IOVA / MOCK_IO_PAGE_SIZE with
// a few flag bits. What the tests can observe of it is: 2 KiB IO pages (half a 4 KiB CPU page,
// so that iommufd's code for IO pages smaller than CPU pages is exercised), the aperture
// [1 << 24, (1 << 31) - 1], an optional "huge IOVA" mode with 1 MiB (512 × 2 KiB) leaves, a
// dirty bit per IO page, and two boundary flags: START on the first IO page and LAST on the last
// IO page of every map call, which the mock checks on unmap to prove that iommufd only ever
// unmaps whole map calls (a strict superset of what it mapped).
//
// We keep those semantics and store them in the same radix shape as the hardware formats, so
// the engine, the IOTLB and the dirty harvest see no difference between mock and hardware:
// 4 KiB tables of 512 8-byte entries over a 2 KiB granule, i.e. 11 + 9·n bits for n levels
// (3 levels reach 2^38, covering the 2 GiB aperture). Entry layout (ours; the kernel's mock has
// no in-memory format):
//
//     bit 0  R      bit 1  W      bit 2  A      bit 3  DIRTY
//     bit 4  START  (leaf holds the first IO page of a map call)
//     bit 5  LAST   (leaf holds the last IO page of a map call)
//     bit 6  HUGE   (1 MiB leaf at level 2)
//     bit 7  TABLE  (points to the next table)
//     bit 8  VALID
//     bits 11-51    address (2 KiB-aligned for leaves, 4 KiB-aligned for tables)
//
// VALID is separate from R/W because the mock, unlike VT-d, can hold a mapping with no
// permission at all.

/// The mock format's entry encoding.
enum MockEncoding: RadixEntryEncoding {
    @inline(__always) static var read: UInt64 { 1 << 0 }
    @inline(__always) static var write: UInt64 { 1 << 1 }
    @inline(__always) static var accessed: UInt64 { 1 << 2 }
    @inline(__always) static var dirty: UInt64 { 1 << 3 }
    @inline(__always) static var start: UInt64 { 1 << 4 }
    @inline(__always) static var last: UInt64 { 1 << 5 }
    @inline(__always) static var huge: UInt64 { 1 << 6 }
    @inline(__always) static var table: UInt64 { 1 << 7 }
    @inline(__always) static var valid: UInt64 { 1 << 8 }

    @inline(__always) static var granuleShift: Int { 11 }
    /// 2 KiB leaves at level 1, 1 MiB leaves at level 2 (huge IOVA mode only).
    @inline(__always) static var leafLevels: UInt32 { 0b110 }
    @inline(__always) static var addressMask: UInt64 { 0x000F_FFFF_FFFF_F800 }
    @inline(__always) static var dirtyBit: UInt64 { dirty }
    @inline(__always) static var accessedBit: UInt64 { accessed }
    @inline(__always) static var allowsEmptyPermissions: Bool { true }

    @inline(__always) static func isPresent(_ entry: UInt64) -> Bool { entry & valid != 0 }
    @inline(__always) static func isTable(_ entry: UInt64) -> Bool { entry & table != 0 }
    @inline(__always) static func tableEntry(child: UInt64, level: Int) -> UInt64 { child | valid | table }
    @inline(__always) static func leafBits(level: Int, permissions: IOPermissions) -> UInt64 {
        var bits = valid | (level > 1 ? huge : 0)
        if permissions.contains(.read) { bits |= read }
        if permissions.contains(.write) { bits |= write }
        return bits
    }
    @inline(__always) static func permissions(of entry: UInt64) -> IOPermissions {
        IOPermissions(rawValue: UInt8(truncatingIfNeeded: entry & (read | write)))
    }
}

/// The selftest mock IOMMU's page table (see the notes at the top of this file).
public final class MockPageTable: IOPageTable {
    /// MOCK_IO_PAGE_SIZE: half of a 4 KiB CPU page.
    public static let ioPageSize: UInt64 = 2048
    /// MOCK_HUGE_PAGE_SIZE: 512 IO pages, used in huge IOVA mode.
    public static let hugePageSize: UInt64 = 512 * ioPageSize
    /// MOCK_APERTURE_START / MOCK_APERTURE_LAST.
    public static let defaultAperture = IOVARange(first: 1 << 24, last: (1 << 31) - 1)

    /// What the mock knows about one IO page.
    public struct IOPageState: Hashable, Sendable {
        /// Physical address of the IO page's first byte.
        public var physical: UInt64
        public var permissions: IOPermissions
        public var dirty: Bool
        /// This IO page was the first of a map call.
        public var start: Bool
        /// This IO page was the last of a map call.
        public var last: Bool
        /// The page is part of a 1 MiB leaf.
        public var huge: Bool
    }

    let tree: RadixTree<MockEncoding>

    /// Unmap calls that did not begin on a START page or end on a LAST page (the kernel mock's
    /// WARN_ON): non-zero means the caller split a map call, which iommufd must never do.
    public private(set) var boundaryViolations = 0

    /// A mock table. `hugeIOVA` adds 1 MiB leaves (MOCK_FLAGS_DEVICE_HUGE_IOVA). Throws EINVAL
    /// if `pageSizes` lacks 2 KiB or the aperture is not 2 KiB-aligned, ENOMEM if the root
    /// cannot be allocated.
    public init(aperture: IOVARange = MockPageTable.defaultAperture, pageSizes: UInt64 = MockPageTable.ioPageSize,
                hugeIOVA: Bool = false, failures: FailureInjector = FailureInjector()) throws(IOMMUError) {
        let sizes = pageSizes | (hugeIOVA ? Self.hugePageSize : 0)
        tree = try RadixTree(aperture: aperture, pageSizes: sizes, minimumLevels: 1, maximumLevels: 6,
                             failures: failures)
    }

    public var levels: Int { tree.levels }
    public var rootTableAddress: UInt64 { tree.rootAddress }
    public var hugeIOVA: Bool { tree.pageSizes & Self.hugePageSize != 0 }

    public var format: PageTableFormat { .mock }
    public var pageSizes: UInt64 { tree.pageSizes }
    public var aperture: IOVARange { tree.aperture }
    public var tableMemoryBytes: Int { tree.tableMemoryBytes }
    public var reservedTableMemoryBytes: Int { tree.reservedTableBytes }
    public var mappedBytes: UInt64 { tree.mappedBytes }
    public var dirtyTrackingEnabled: Bool {
        get { tree.dirtyTrackingEnabled }
        set { tree.dirtyTrackingEnabled = newValue }
    }

    /// Maps like every format, then marks the call's first IO page START and its last LAST.
    /// A leaf never straddles a call's bounds, so the flags live on the first and last leaves.
    public func map(iova: UInt64, physical: UInt64, length: UInt64, permissions: IOPermissions,
                    maxLeafSize: UInt64) throws(IOMMUError) {
        try tree.map(iova: iova, physical: physical, length: length, permissions: permissions,
                     maxLeafSize: maxLeafSize)
        if let (slot, _) = tree.leafSlot(iova) { slot.pointee |= MockEncoding.start }
        if let (slot, _) = tree.leafSlot(iova &+ (length - 1)) { slot.pointee |= MockEncoding.last }
    }

    /// Unmaps, first checking (as the kernel mock does) that the range begins on a START page
    /// and ends on a LAST page; a mismatch is counted in `boundaryViolations`, not refused.
    @discardableResult
    public func unmap(iova: UInt64, length: UInt64) -> UInt64 {
        if length != 0 {
            if let page = ioPage(at: iova), !page.start { boundaryViolations += 1 }
            let (last, overflow) = iova.addingReportingOverflow(length - 1)
            if !overflow, let page = ioPage(at: last), !page.last { boundaryViolations += 1 }
        }
        return tree.unmap(iova: iova, length: length)
    }

    /// The state of the IO page holding `iova`, or nil if it is not mapped.
    public func ioPage(at iova: UInt64) -> IOPageState? {
        guard let (slot, shift) = tree.leafSlot(iova) else { return nil }
        let entry = slot.pointee
        let leafSize: UInt64 = 1 << shift
        let pageOffset = (iova & (leafSize - 1)) & ~(Self.ioPageSize - 1)
        return IOPageState(physical: (entry & MockEncoding.addressMask) + pageOffset,
                           permissions: MockEncoding.permissions(of: entry),
                           dirty: entry & MockEncoding.dirty != 0,
                           start: entry & MockEncoding.start != 0 && pageOffset == 0,
                           last: entry & MockEncoding.last != 0 && pageOffset == leafSize - Self.ioPageSize,
                           huge: leafSize > Self.ioPageSize)
    }

    public func translate(iova: UInt64) -> IOTranslation? { tree.translate(iova: iova) }

    public func walkForDMA(iova: UInt64, write: Bool) -> IOTranslation? { tree.walkForDMA(iova: iova, write: write) }

    @discardableResult
    public func markDirty(iova: UInt64) -> Bool { tree.markDirty(iova: iova) }

    public func readAndClearDirty(iova: UInt64, length: UInt64, clear: Bool,
                                  visit: (UInt64, UInt64) -> Void) {
        _ = tree.readAndClearDirty(iova: iova, length: length, clear: clear, visit: visit)
    }
}
