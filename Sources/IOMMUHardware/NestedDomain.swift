public import UIOMMUBase

// A nested (stage-1) domain: a translation table the user manages, on top of a kernel-managed
// nesting-parent domain (stage 2). The engine's HWPT_NESTED holds one. Each IOMMU driver that
// supports nesting decides which user data it accepts and what its caches look like; only the
// selftest mock's is modelled (SelftestMockIOMMU.swift): it has no stage-1 table to walk, only
// a small IOTLB that user-space invalidation clears. DMA through a nested domain is therefore
// not translated here (the engine points the device's context at no domain: DMA faults).

/// What a driver's domain_alloc_nested received, decoded from user space by the ABI layer (the
/// uAPI struct of the data type). One case per driver data format the hardware models.
public enum NestedDomainConfig: Hashable, Sendable {
    /// IOMMU_HWPT_DATA_SELFTEST: every mock IOTLB entry starts at `iotlb`.
    case selftest(iotlb: UInt32)
}

/// One cache-invalidation request of HWPT_INVALIDATE, decoded by the ABI layer.
public enum NestedInvalidation: Hashable, Sendable {
    /// IOMMU_HWPT_INVALIDATE_DATA_SELFTEST: `flags` (bit 0: all entries), `iotlbID`.
    case selftest(flags: UInt32, iotlbID: UInt32)
}

/// The data type of a HWPT_INVALIDATE array, as the driver sees it.
public enum NestedInvalidationType: Hashable, Sendable {
    case selftest
    /// A type this hardware model does not know.
    case other(UInt32)
}

/// A user-managed stage-1 domain over `parent`.
public class NestedDomain: @unchecked Sendable {
    public let kind: IOMMUKind
    /// The stage-2 (nesting parent) domain.
    public let parent: IOMMUDomain

    init(kind: IOMMUKind, parent: IOMMUDomain) {
        self.kind = kind
        self.parent = parent
    }

    /// domain_alloc_nested of `unit`'s driver: EOPNOTSUPP for flags or data it does not take,
    /// EINVAL for a parent it cannot nest on. `flags` are the allocation flags the core passes
    /// on (IOMMU_HWPT_ALLOC_PASID only; FAULT_ID_VALID is the core's).
    public static func make(unit: IOMMUUnitSpec, parent: IOMMUDomain, pasidFlag: Bool, otherFlags: Bool,
                            config: () throws(IOMMUError) -> NestedDomainConfig) throws(IOMMUError) -> NestedDomain {
        switch unit.kind {
        case .selftestMock:
            return try MockNestedDomain(parent: parent, otherFlags: otherFlags, config: config)
        default:
            // The other drivers' stage-1 formats (VT-d first stage, SMMUv3 CD tables) are not
            // modelled: their data types are unknown here, as a data type is to a driver
            // without it.
            _ = try config()
            throw IOMMUError(.EOPNOTSUPP, "\(unit.name) has no nested domain of this data type")
        }
    }

    /// cache_invalidate_user: handles requests 0..<count in order (`entry(i)` reads request i
    /// from user space, with its own errors) and returns how many were done, and the error
    /// that stopped it. Nil from a domain without the operation (EOPNOTSUPP).
    public func invalidate(type: NestedInvalidationType, count: UInt32,
                           entry: (UInt32) throws(IOMMUError) -> NestedInvalidation) -> (done: UInt32, error: IOMMUError?)? {
        nil
    }
}
