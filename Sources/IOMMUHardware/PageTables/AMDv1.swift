public import UIOMMUBase

// AMD IOMMU "v1" (host) page table.
//
// The tree has the same shape as VT-d's (4 KiB tables of 512 little-endian 64-bit entries, 9
// bits per level), but an entry says what it is through its Next Level field rather than a
// page-size bit:
//
//     bit 0      PR    present
//     bit 5      A     accessed
//     bit 6      D     dirty (set by hardware on a write when the domain has HD enabled)
//     bits 9-11  NextLevel: the level of the table this entry points to (1..6), or 0 for a
//                      leaf ("page translation entry") of this level's natural size
//                      (4 KiB at level 1, 2 MiB at level 2, 1 GiB at level 3); 7 would mean a
//                      leaf of a non-natural size, which we never write
//     bits 12-51       address of the next table or of the leaf's naturally aligned block
//     bit 60     FC    force coherent (the AMD counterpart of VT-d's SNP)
//     bit 61     IR    read allowed
//     bit 62     IW    write allowed
//
// Directory entries carry IR|IW so that, as on VT-d, the leaf alone decides the access.
// The number of levels (the DTE "mode") is the fewest, at least 3, that reach the end of the
// aperture; 6 levels cover all 64 bits. Walk, map, unmap and harvest are RadixTree's.

/// The AMD v1 entry encoding.
enum AMDv1Encoding: RadixEntryEncoding {
    @inline(__always) static var present: UInt64 { 1 << 0 }
    @inline(__always) static var accessed: UInt64 { 1 << 5 }
    @inline(__always) static var dirty: UInt64 { 1 << 6 }
    @inline(__always) static var nextLevelShift: UInt64 { 9 }
    @inline(__always) static var forceCoherent: UInt64 { 1 << 60 }
    @inline(__always) static var readable: UInt64 { 1 << 61 }
    @inline(__always) static var writable: UInt64 { 1 << 62 }

    @inline(__always) static var granuleShift: Int { 12 }
    @inline(__always) static var leafLevels: UInt32 { 0b1110 }
    @inline(__always) static var addressMask: UInt64 { 0x000F_FFFF_FFFF_F000 }
    @inline(__always) static var dirtyBit: UInt64 { dirty }
    @inline(__always) static var accessedBit: UInt64 { accessed }
    @inline(__always) static var allowsEmptyPermissions: Bool { false }

    @inline(__always) static func isPresent(_ entry: UInt64) -> Bool { entry & present != 0 }
    @inline(__always) static func isTable(_ entry: UInt64) -> Bool {
        let next = (entry >> nextLevelShift) & 7
        return next != 0 && next != 7
    }
    @inline(__always) static func tableEntry(child: UInt64, level: Int) -> UInt64 {
        child | present | UInt64(level - 1) << nextLevelShift | readable | writable
    }
    @inline(__always) static func leafBits(level: Int, permissions: IOPermissions) -> UInt64 {
        var bits = present
        if permissions.contains(.read) { bits |= readable }
        if permissions.contains(.write) { bits |= writable }
        return bits
    }
    @inline(__always) static func permissions(of entry: UInt64) -> IOPermissions {
        var p: IOPermissions = []
        if entry & readable != 0 { p.insert(.read) }
        if entry & writable != 0 { p.insert(.write) }
        return p
    }
}

/// An AMD IOMMU v1 page table (see the format notes at the top of this file).
public final class AMDv1PageTable: IOPageTable {
    let tree: RadixTree<AMDv1Encoding>

    /// A table for `aperture` with the natural leaf sizes of `pageSizes` (4 KiB, 2 MiB, 1 GiB).
    /// `forceCoherent` sets FC in every leaf. Throws EINVAL for an aperture without 4 KiB
    /// pages or not 4 KiB-aligned, ENOMEM if the root cannot be allocated.
    public init(aperture: IOVARange, pageSizes: UInt64 = IOMMUUnitSpec.x86PageSizes,
                forceCoherent: Bool = false, failures: FailureInjector = FailureInjector()) throws(IOMMUError) {
        tree = try RadixTree(aperture: aperture, pageSizes: pageSizes, minimumLevels: 3, maximumLevels: 6,
                             failures: failures)
        self.forceCoherent = forceCoherent
    }

    /// Whether new leaves get FC. Existing leaves are not rewritten.
    public var forceCoherent: Bool {
        get { tree.extraLeafBits & AMDv1Encoding.forceCoherent != 0 }
        set { tree.extraLeafBits = newValue ? AMDv1Encoding.forceCoherent : 0 }
    }

    /// Number of levels (the DTE paging mode), 3 to 6.
    public var levels: Int { tree.levels }
    /// Host address of the root table (what the DTE's page table root pointer would hold).
    public var rootTableAddress: UInt64 { tree.rootAddress }

    public var format: PageTableFormat { .amdV1 }
    public var pageSizes: UInt64 { tree.pageSizes }
    public var aperture: IOVARange { tree.aperture }
    public var tableMemoryBytes: Int { tree.tableMemoryBytes }
    public var reservedTableMemoryBytes: Int { tree.reservedTableBytes }
    public var mappedBytes: UInt64 { tree.mappedBytes }
    public var dirtyTrackingEnabled: Bool {
        get { tree.dirtyTrackingEnabled }
        set { tree.dirtyTrackingEnabled = newValue }
    }

    public func map(iova: UInt64, physical: UInt64, length: UInt64, permissions: IOPermissions,
                    maxLeafSize: UInt64) throws(IOMMUError) {
        try tree.map(iova: iova, physical: physical, length: length, permissions: permissions,
                     maxLeafSize: maxLeafSize)
    }

    @discardableResult
    public func unmap(iova: UInt64, length: UInt64) -> UInt64 { tree.unmap(iova: iova, length: length) }

    public func translate(iova: UInt64) -> IOTranslation? { tree.translate(iova: iova) }

    public func walkForDMA(iova: UInt64, write: Bool) -> IOTranslation? { tree.walkForDMA(iova: iova, write: write) }

    @discardableResult
    public func markDirty(iova: UInt64) -> Bool { tree.markDirty(iova: iova) }

    public func readAndClearDirty(iova: UInt64, length: UInt64, clear: Bool,
                                  visit: (UInt64, UInt64) -> Void) {
        _ = tree.readAndClearDirty(iova: iova, length: length, clear: clear, visit: visit)
    }
}
