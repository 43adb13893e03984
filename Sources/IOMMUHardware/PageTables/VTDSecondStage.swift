public import UIOMMUBase

// Intel VT-d second-stage page table.
//
// Format. A second-stage table is what a VT-d unit walks to translate DMA from a device whose
// context (or scalable-mode PASID) entry points at a domain. It is an x86-style radix tree:
// 4 KiB tables of 512 little-endian 64-bit entries, 9 bits of IOVA per level, 3 levels for a
// 39-bit address width, 4 for 48 bits, 5 for 57 bits (we pick the fewest that reach the end of
// the aperture). Every entry has the same layout:
//
//     bit 0      R     read allowed
//     bit 1      W     write allowed
//     bit 7      PS    at level 2 / 3: this entry is a 2 MiB / 1 GiB leaf, not a table pointer
//     bit 8      A     accessed (hardware sets it on a walk that completes, with SSADS)
//     bit 9      D     dirty (hardware sets it on a write, with SSADS = dirty tracking on)
//     bit 11     SNP   snoop: the DMA is treated as snooped even if the device asked for
//                      no-snoop (how a domain enforces cache coherency)
//     bits 12-51       address of the next table, or of the leaf's naturally aligned block
//
// An entry with neither R nor W is not present; a non-leaf entry carries R|W so that the
// permission of a walk is decided by the leaf alone (VT-d ANDs permissions down the walk).
//
// Why table entries hold host addresses. uiommufd's "physical" addresses are host addresses
// the simulator can copy through (ProcessMemory). A table's address is therefore simply where
// we allocated it (4 KiB-aligned, so its low 12 bits are free exactly as in hardware), and a
// walk follows entries with ordinary pointer loads: the format is the real one, bit for bit,
// and the tables are inspectable with nothing but the bit layout above.
//
// Why leaves are never split. iommufd maps and unmaps whole areas (iopt_area), and an area is
// mapped by one or more map calls whose leaves never cross the call's bounds; so an unmap
// request always covers whole leaves, and a 2 MiB leaf never has to be broken into 4 KiB ones.
// An unmap that cuts a leaf leaves that leaf alone (and reports fewer bytes), which is the
// conservative answer for a request the engine never makes.
//
// The walk, map, unmap and dirty harvest live in RadixTree (RadixPageTable.swift); this file is
// only the encoding and the IOPageTable face.

/// The VT-d second-stage entry encoding.
enum VTDSecondStageEncoding: RadixEntryEncoding {
    @inline(__always) static var read: UInt64 { 1 << 0 }
    @inline(__always) static var write: UInt64 { 1 << 1 }
    @inline(__always) static var pageSize: UInt64 { 1 << 7 }
    @inline(__always) static var accessed: UInt64 { 1 << 8 }
    @inline(__always) static var dirty: UInt64 { 1 << 9 }
    @inline(__always) static var snoop: UInt64 { 1 << 11 }

    @inline(__always) static var granuleShift: Int { 12 }
    /// 4 KiB, 2 MiB and 1 GiB leaves (levels 1, 2, 3).
    @inline(__always) static var leafLevels: UInt32 { 0b1110 }
    @inline(__always) static var addressMask: UInt64 { 0x000F_FFFF_FFFF_F000 }
    @inline(__always) static var dirtyBit: UInt64 { dirty }
    @inline(__always) static var accessedBit: UInt64 { accessed }
    @inline(__always) static var allowsEmptyPermissions: Bool { false }

    @inline(__always) static func isPresent(_ entry: UInt64) -> Bool { entry & (read | write) != 0 }
    @inline(__always) static func isTable(_ entry: UInt64) -> Bool { entry & pageSize == 0 }
    @inline(__always) static func tableEntry(child: UInt64, level: Int) -> UInt64 { child | read | write }
    @inline(__always) static func leafBits(level: Int, permissions: IOPermissions) -> UInt64 {
        var bits: UInt64 = level > 1 ? pageSize : 0
        if permissions.contains(.read) { bits |= read }
        if permissions.contains(.write) { bits |= write }
        return bits
    }
    @inline(__always) static func permissions(of entry: UInt64) -> IOPermissions {
        IOPermissions(rawValue: UInt8(truncatingIfNeeded: entry & (read | write)))
    }
}

/// An Intel VT-d second-stage page table (see the format notes at the top of this file).
public final class VTDSecondStagePageTable: IOPageTable {
    let tree: RadixTree<VTDSecondStageEncoding>

    /// A table for `aperture` (3, 4 or 5 levels, the fewest that reach `aperture.last`) using
    /// the leaf sizes of `pageSizes` that the format has (4 KiB, 2 MiB, 1 GiB). `snoopControl`
    /// sets SNP in every leaf (a domain that enforces cache coherency). Throws EINVAL for an
    /// aperture beyond 57 bits or without 4 KiB pages, ENOMEM if the root cannot be allocated.
    public init(aperture: IOVARange, pageSizes: UInt64 = IOMMUUnitSpec.x86PageSizes,
                snoopControl: Bool = false, failures: FailureInjector = FailureInjector()) throws(IOMMUError) {
        tree = try RadixTree(aperture: aperture, pageSizes: pageSizes, minimumLevels: 3, maximumLevels: 5,
                             failures: failures)
        self.snoopControl = snoopControl
    }

    /// Whether new leaves get SNP. Changing it does not rewrite existing leaves, which is why
    /// `IOMMUDomain` only turns it on while nothing is mapped.
    public var snoopControl: Bool {
        get { tree.extraLeafBits & VTDSecondStageEncoding.snoop != 0 }
        set { tree.extraLeafBits = newValue ? VTDSecondStageEncoding.snoop : 0 }
    }

    /// Number of levels: 3 (39-bit), 4 (48-bit) or 5 (57-bit).
    public var levels: Int { tree.levels }
    /// Host address of the root table (what a context entry's SLPTPTR would hold).
    public var rootTableAddress: UInt64 { tree.rootAddress }

    public var format: PageTableFormat { .vtdSecondStage }
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
