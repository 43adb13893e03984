public import UIOMMUBase

/// The kind of IOMMU hardware, which decides what IOMMU_GET_HW_INFO reports.
public enum IOMMUKind: String, Sendable, CaseIterable {
    case intelVTd = "intel-vtd"
    case amdVi = "amd-vi"
    case armSMMUv3 = "arm-smmuv3"
    /// The kernel selftest's mock IOMMU (hw_info type IOMMU_HW_INFO_TYPE_SELFTEST).
    case selftestMock = "selftest-mock"
}

/// A reserved IOVA region that an IOMMU imposes on every domain its devices use
/// (the kernel's iommu_resv_region).
public struct ReservedRegion: Hashable, Sendable {
    public enum Kind: String, Hashable, Sendable {
        /// MSI doorbell window (IOMMU_RESV_MSI / SW_MSI): never mappable.
        case msi
        /// Firmware-mandated identity mapping (RMRR, IOMMU_RESV_DIRECT): reserved in the IOAS.
        case direct
        /// Plain reserved hole (IOMMU_RESV_RESERVED, e.g. a bridge window).
        case reserved
    }
    public var range: IOVARange
    public var kind: Kind
    public init(range: IOVARange, kind: Kind) { self.range = range; self.kind = kind }
}

/// The static description of one IOMMU unit (a DMAR unit, an AMD-Vi, an SMMUv3 …).
public struct IOMMUUnitSpec: Hashable, Sendable {
    public var name: String
    public var kind: IOMMUKind
    public var format: PageTableFormat
    /// Supported leaf sizes: bit n set means 2^n bytes.
    public var pageSizes: UInt64
    /// The domain aperture: the IOVAs this unit's page tables can translate.
    public var aperture: IOVARange
    /// Can force snooping for no-snoop DMA (VT-d SC, IOMMU_CAP_ENFORCE_CACHE_COHERENCY).
    public var enforcesCacheCoherency: Bool
    /// Hardware dirty tracking (VT-d SSADS, AMD HD, SMMU HTTU).
    public var dirtyTracking: Bool
    /// Supports nesting parents (stage-2 under a user stage-1).
    public var nesting: Bool
    /// PASID width in bits (0: no PASID support).
    public var pasidWidth: Int
    /// Regions reserved in every domain attached through this unit.
    public var reservedRegions: [ReservedRegion]

    public init(name: String, kind: IOMMUKind, format: PageTableFormat, pageSizes: UInt64,
                aperture: IOVARange, enforcesCacheCoherency: Bool, dirtyTracking: Bool,
                nesting: Bool, pasidWidth: Int, reservedRegions: [ReservedRegion]) {
        self.name = name; self.kind = kind; self.format = format; self.pageSizes = pageSizes
        self.aperture = aperture; self.enforcesCacheCoherency = enforcesCacheCoherency
        self.dirtyTracking = dirtyTracking; self.nesting = nesting; self.pasidWidth = pasidWidth
        self.reservedRegions = reservedRegions
    }

    /// Page sizes: 4 KiB, 2 MiB and 1 GiB.
    public static let x86PageSizes: UInt64 = (1 << 12) | (1 << 21) | (1 << 30)
}
