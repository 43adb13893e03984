public import UIOMMUBase

/// Access rights of an I/O page-table entry (IOMMU_READ / IOMMU_WRITE).
public struct IOPermissions: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let read = IOPermissions(rawValue: 1)
    public static let write = IOPermissions(rawValue: 2)
    public var description: String {
        (contains(.read) ? "r" : "-") + (contains(.write) ? "w" : "-")
    }
}

/// The page-table formats uiommufd implements, each a real in-memory format with 8-byte entries.
public enum PageTableFormat: String, Sendable, CaseIterable {
    /// Intel VT-d second-stage (4-level, 4 KiB / 2 MiB / 1 GiB leaves, A/D bits).
    case vtdSecondStage = "vtd-ss"
    /// AMD IOMMU v1 page table.
    case amdV1 = "amd-v1"
    /// ARM LPAE stage-2 style (SMMUv3 S2), 4 KiB granule.
    case armLPAE = "arm-lpae"
    /// The kernel selftest's mock IOMMU: 2 KiB pages (MOCK_IO_PAGE_SIZE = PAGE_SIZE / 2).
    case mock = "mock"
}

/// What a page-table walk found for one IOVA.
public struct IOTranslation: Hashable, Sendable {
    /// Physical address of the translated IOVA (not of the leaf's start).
    public var physical: UInt64
    public var permissions: IOPermissions
    /// Size of the leaf that maps it (4 KiB, 2 MiB, …; 2 KiB for the mock format).
    public var leafSize: UInt64
    /// The leaf's dirty bit (set by a DMA write while dirty tracking is on).
    public var dirty: Bool
    public init(physical: UInt64, permissions: IOPermissions, leafSize: UInt64, dirty: Bool) {
        self.physical = physical; self.permissions = permissions; self.leafSize = leafSize; self.dirty = dirty
    }
}

/// The in-memory page table of one IOMMU domain.
///
/// Implementations are real formats: 8-byte entries in page-sized tables, the format's
/// permission, accessed and dirty bits, table pointers stored in entries. The engine maps and
/// unmaps whole areas only, so a leaf is never split; `map` picks the largest leaf allowed by
/// the alignment of IOVA and physical address, by `maxLeafSize` and by `pageSizes`.
///
/// Not thread-safe by itself: `IOMMUDomain` serialises access.
public protocol IOPageTable: AnyObject {
    var format: PageTableFormat { get }
    /// Supported leaf sizes: bit n set means 2^n bytes.
    var pageSizes: UInt64 { get }
    /// The IOVA range the table can translate.
    var aperture: IOVARange { get }

    /// Maps `[iova, iova + length)` to `[physical, physical + length)`. All three are multiples
    /// of the smallest page size and the range lies inside the aperture and is currently
    /// unmapped. On failure (ENOMEM from a table allocation, which consults `failures`) nothing
    /// of this call stays mapped.
    func map(iova: UInt64, physical: UInt64, length: UInt64, permissions: IOPermissions,
             maxLeafSize: UInt64) throws(IOMMUError)

    /// Unmaps every leaf inside `[iova, iova + length)` and returns the bytes unmapped. Frees
    /// tables that become empty. Never fails.
    @discardableResult
    func unmap(iova: UInt64, length: UInt64) -> UInt64

    /// A software walk (no A/D update), or nil if `iova` is not mapped.
    func translate(iova: UInt64) -> IOTranslation?

    /// A hardware walk for a DMA: like `translate`, but sets the accessed bit, and the dirty bit
    /// on a write when dirty tracking is enabled and the leaf is writable.
    func walkForDMA(iova: UInt64, write: Bool) -> IOTranslation?

    /// Whether DMA writes set dirty bits (the format's A/D enable).
    var dirtyTrackingEnabled: Bool { get set }

    /// Calls `visit(leafIOVA, leafSize)` for every dirty leaf intersecting `[iova, iova+length)`
    /// in ascending order, clearing the dirty bit unless `clear` is false.
    func readAndClearDirty(iova: UInt64, length: UInt64, clear: Bool,
                           visit: (UInt64, UInt64) -> Void)

    /// Sets the dirty bit of the leaf mapping `iova`, whatever its permissions and whether or
    /// not tracking is enabled (the selftest's dirty injection). False if `iova` is unmapped, or
    /// if the format cannot record dirtiness for that leaf (ARM stage 2: a leaf without DBM).
    @discardableResult
    func markDirty(iova: UInt64) -> Bool

    /// Bytes of memory used by the tables themselves (tables in use × 4 KiB, root included).
    var tableMemoryBytes: Int { get }

    /// Bytes the table allocator holds (≥ `tableMemoryBytes`: tables are carved from larger
    /// chunks, which go back to the system when they empty).
    var reservedTableMemoryBytes: Int { get }

    /// Bytes of IOVA currently mapped (the sum of all leaf sizes).
    var mappedBytes: UInt64 { get }
}

public extension IOPageTable {
    /// The smallest supported page size.
    var minimumPageSize: UInt64 { pageSizes.lowestSetBitValue }
}
