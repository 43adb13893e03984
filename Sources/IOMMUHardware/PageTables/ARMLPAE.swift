public import UIOMMUBase

// ARM LPAE stage-2 page table (VMSAv8-64 long descriptors, 4 KiB granule), as an SMMUv3 walks
// it for a stage-2 (S2) stream table entry.
//
// Shape. 4 KiB tables of 512 little-endian 64-bit descriptors, 9 bits of input address per
// level. ARM numbers levels from the root down: level 0 resolves bits 47:39, level 3 bits
// 20:12. RadixTree numbers them from the leaves up, so ARM level = 4 - RadixTree level. We use
// the fewest levels, at least 3, that reach the end of the aperture: 3 (start level 1) for an
// input range of at most 39 bits, 4 (start level 0) up to 48 bits. (Concatenated start-level
// tables are not modelled; nor is the 52-bit LPA2 form.)
//
// Descriptor layout (stage 2):
//
//     bits 1:0     0b11 at levels 0-2: table descriptor; at level 3: page descriptor (4 KiB)
//                  0b01 at level 1 / 2: block descriptor (1 GiB / 2 MiB); never at level 0
//                  0b?0 invalid (bit 0 is the valid bit)
//     bits 5:2     MemAttr   0b1111 Normal, Inner and Outer Write-Back (what Linux writes for
//                            IOMMU_CACHE, which iommufd always asks for); with S2FWB the
//                            encoding 0b0110 is "Normal Write-Back, forced" (see below)
//     bit 6        S2AP[0]   read allowed
//     bit 7        S2AP[1]   write allowed
//     bits 9:8     SH        0b11 inner shareable
//     bit 10       AF        access flag; we set it when mapping (as Linux does), so no access
//                            flag fault ever happens; a walk would set it otherwise
//     bits 47:12             output address of the page or block, or of the next table
//     bit 51       DBM       dirty bit modifier (hardware dirty management, see below)
//
// Table descriptors are the address of the next table with 0b11 and nothing else (stage 2
// table descriptors have no attribute fields), so the leaf alone decides permissions. As in
// the other formats, a table's "physical" address is its host address (see VTDSecondStage).
//
// Cache coherency (`forceCoherent`, what IOMMUDomain's enforceCacheCoherency sets). Without
// S2FWB the stage-2 MemAttr only *combines* with the attributes the transaction brings (the
// stricter wins), so 0b1111 leaves a no-snoop / non-cacheable DMA non-cacheable: that is the
// ordinary, non-enforcing leaf. An SMMU enforces coherency through FEAT_S2FWB: with STE.S2FWB
// = 1, MemAttr 0b0110 forces Normal Write-Back whatever the incoming attributes, like VT-d's
// SNP or AMD's FC. So a forceCoherent table writes 0b0110 into every new leaf (and is meant
// for an STE with S2FWB set); like SNP and FC it is per leaf, existing leaves are not rewritten,
// and IOMMUDomain only turns it on while the table is empty.
//
// Dirty tracking, the SMMUv3 HTTU way (`hardwareDirty`, set for domains created dirty-tracking
// capable, like Linux's IO_PGTABLE_QUIRK_ARM_HD). A writable leaf is then mapped
// "writable-clean": DBM = 1 and S2AP[1] = 0. A DMA write through it sets S2AP[1] (STE.S2HD on,
// i.e. `dirtyTrackingEnabled`), which makes it "writable-dirty". So
//
//     dirty  <=>  DBM = 1 and S2AP[1] = 1
//
// and a harvest cleans a leaf by clearing S2AP[1] again, keeping DBM. Write permission is
// S2AP[1] or DBM. Without `hardwareDirty` a writable leaf is the plain S2AP[1] = 1, DBM = 0,
// and can never be dirty. Two liberties of the model: with tracking off the walker lets a write
// through a writable-clean leaf without recording it (hardware with S2HD = 0 would ignore DBM
// and fault; Linux avoids that by leaving HTTU on for the life of a dirty-capable domain), and
// `markDirty` returns false for a leaf without DBM (read-only, or not hardware-managed): such
// a leaf cannot be dirty without gaining write permission.
//
// Walk, map, unmap and harvest are RadixTree's; this file is the encoding and the IOPageTable
// face. The RadixEntryEncoding members `dirtyPattern` and `leafBits(level:permissions:extra:)`
// exist for this format (the others use their defaults).

/// The ARM LPAE stage-2 descriptor encoding (4 KiB granule).
enum ARMLPAEStage2Encoding: RadixEntryEncoding {
    @inline(__always) static var valid: UInt64 { 1 << 0 }
    /// Bit 1: table (levels 0-2) or page (level 3) rather than block.
    @inline(__always) static var tableOrPage: UInt64 { 1 << 1 }
    @inline(__always) static var memAttrShift: UInt64 { 2 }
    @inline(__always) static var memAttrMask: UInt64 { 0b1111 << memAttrShift }
    /// MemAttr 0b1111: Normal, Outer Write-Back, Inner Write-Back (no S2FWB).
    @inline(__always) static var memAttrWriteBack: UInt64 { 0b1111 << memAttrShift }
    /// MemAttr 0b0110 under S2FWB: Normal Write-Back, overriding the incoming attributes.
    @inline(__always) static var memAttrForcedWriteBack: UInt64 { 0b0110 << memAttrShift }
    @inline(__always) static var s2apRead: UInt64 { 1 << 6 }
    @inline(__always) static var s2apWrite: UInt64 { 1 << 7 }
    @inline(__always) static var innerShareable: UInt64 { 0b11 << 8 }
    @inline(__always) static var accessFlag: UInt64 { 1 << 10 }
    @inline(__always) static var dirtyBitModifier: UInt64 { 1 << 51 }

    @inline(__always) static var granuleShift: Int { 12 }
    /// 4 KiB pages (ARM level 3), 2 MiB and 1 GiB blocks (levels 2 and 1); none at level 0.
    @inline(__always) static var leafLevels: UInt32 { 0b1110 }
    /// Output address bits 47:12.
    @inline(__always) static var addressMask: UInt64 { 0x0000_FFFF_FFFF_F000 }
    @inline(__always) static var dirtyBit: UInt64 { s2apWrite }
    @inline(__always) static var dirtyPattern: UInt64 { dirtyBitModifier | s2apWrite }
    @inline(__always) static var accessedBit: UInt64 { accessFlag }
    @inline(__always) static var allowsEmptyPermissions: Bool { false }

    @inline(__always) static func isPresent(_ entry: UInt64) -> Bool { entry & valid != 0 }
    /// Only asked above level 3 (RadixTree level 1), where 0b11 means table and 0b01 block.
    @inline(__always) static func isTable(_ entry: UInt64) -> Bool { entry & tableOrPage != 0 }
    @inline(__always) static func tableEntry(child: UInt64, level: Int) -> UInt64 {
        assert(child & ~addressMask == 0, "table at 0x\(String(child, radix: 16)) does not fit bits 47:12")
        return child | valid | tableOrPage
    }
    /// A leaf without memory attributes: page (0b11) or block (0b01), AF, SH, S2AP.
    @inline(__always) static func leafBits(level: Int, permissions: IOPermissions) -> UInt64 {
        var bits = valid | accessFlag | innerShareable
        if level == 1 { bits |= tableOrPage }
        if permissions.contains(.read) { bits |= s2apRead }
        if permissions.contains(.write) { bits |= s2apWrite }
        return bits
    }
    /// `extra` is the table's MemAttr plus, for hardware dirty management, DBM: a writable leaf
    /// then gets DBM instead of S2AP[1] (writable-clean); other leaves never get DBM.
    @inline(__always) static func leafBits(level: Int, permissions: IOPermissions, extra: UInt64) -> UInt64 {
        let bits = leafBits(level: level, permissions: permissions) | (extra & ~dirtyBitModifier)
        if extra & dirtyBitModifier != 0 && permissions.contains(.write) {
            return (bits & ~s2apWrite) | dirtyBitModifier
        }
        return bits
    }
    @inline(__always) static func permissions(of entry: UInt64) -> IOPermissions {
        var p: IOPermissions = []
        if entry & s2apRead != 0 { p.insert(.read) }
        if entry & (s2apWrite | dirtyBitModifier) != 0 { p.insert(.write) }
        return p
    }
}

/// An ARM LPAE stage-2 page table with a 4 KiB granule, as an SMMUv3 walks it (see the format
/// notes at the top of this file).
public final class ARMLPAEPageTable: IOPageTable {
    typealias Encoding = ARMLPAEStage2Encoding
    let tree: RadixTree<Encoding>

    /// A table for `aperture` (3 levels up to 39 bits, 4 up to 48) with the leaf sizes of
    /// `pageSizes` the 4 KiB granule has (4 KiB pages, 2 MiB and 1 GiB blocks).
    /// `forceCoherent` writes the S2FWB forced write-back MemAttr into new leaves;
    /// `hardwareDirty` maps writable leaves writable-clean (DBM) so DMA writes can mark them
    /// dirty. Throws EINVAL for an aperture beyond 48 bits, not 4 KiB-aligned, or page sizes
    /// without 4 KiB; ENOMEM if the root cannot be allocated.
    public init(aperture: IOVARange, pageSizes: UInt64 = IOMMUUnitSpec.x86PageSizes,
                forceCoherent: Bool = false, hardwareDirty: Bool = false,
                failures: FailureInjector = FailureInjector()) throws(IOMMUError) {
        tree = try RadixTree(aperture: aperture, pageSizes: pageSizes, minimumLevels: 3, maximumLevels: 4,
                             failures: failures)
        self.hardwareDirty = hardwareDirty
        self.forceCoherent = forceCoherent
    }

    /// Whether writable leaves are mapped writable-clean (DBM = 1, S2AP[1] = 0), so that a DMA
    /// write with tracking on sets S2AP[1] and the leaf reads as dirty.
    public let hardwareDirty: Bool

    /// Whether new leaves get MemAttr 0b0110 (S2FWB forced Normal Write-Back) instead of
    /// 0b1111. Existing leaves are not rewritten.
    public var forceCoherent: Bool {
        get { tree.extraLeafBits & Encoding.memAttrMask == Encoding.memAttrForcedWriteBack }
        set {
            tree.extraLeafBits = (newValue ? Encoding.memAttrForcedWriteBack : Encoding.memAttrWriteBack)
                | (hardwareDirty ? Encoding.dirtyBitModifier : 0)
        }
    }

    /// Number of levels: 3 or 4.
    public var levels: Int { tree.levels }
    /// The ARM level of the root table (what STE.S2SL0 selects): 1 for 3 levels, 0 for 4.
    public var startLevel: Int { 4 - tree.levels }
    /// Host address of the root table (what STE.S2TTB would hold).
    public var rootTableAddress: UInt64 { tree.rootAddress }

    public var format: PageTableFormat { .armLPAE }
    public var pageSizes: UInt64 { tree.pageSizes }
    public var aperture: IOVARange { tree.aperture }
    public var tableMemoryBytes: Int { tree.tableMemoryBytes }
    public var reservedTableMemoryBytes: Int { tree.reservedTableBytes }
    public var mappedBytes: UInt64 { tree.mappedBytes }
    /// STE.S2HD: whether DMA writes through writable-clean leaves make them dirty.
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

    /// Sets S2AP[1] of a writable-clean leaf. False if `iova` is unmapped or its leaf has no
    /// DBM (read-only, or mapped without hardware dirty management): such a leaf cannot be
    /// dirty without gaining write permission.
    @discardableResult
    public func markDirty(iova: UInt64) -> Bool { tree.markDirty(iova: iova) }

    public func readAndClearDirty(iova: UInt64, length: UInt64, clear: Bool,
                                  visit: (UInt64, UInt64) -> Void) {
        _ = tree.readAndClearDirty(iova: iova, length: length, clear: clear, visit: visit)
    }
}
