public import UIOMMUBase

// The kernel selftest's mock IOMMU (drivers/iommu/iommufd/selftest.c) as one more hardware
// model: what its driver reports and accepts. Its page table is MockPageTable; its devices
// sit on a bus of their own (the engine's mock bus creates them on demand for
// IOMMU_TEST_OP_MOCK_DOMAIN).

public extension IOMMUUnitSpec {
    /// The selftest's mock IOMMU: 2 KiB pages over [MOCK_APERTURE_START, MOCK_APERTURE_LAST],
    /// dirty tracking (per device, unless MOCK_FLAGS_DEVICE_NO_DIRTY), nesting parents, PASIDs
    /// up to MOCK_PASID_WIDTH bits (per device, with MOCK_FLAGS_DEVICE_PASID), no reserved
    /// regions, and no forced snooping (it reports IOMMU_CAP_CACHE_COHERENCY, not
    /// IOMMU_CAP_ENFORCE_CACHE_COHERENCY).
    static func selftestMock(name: String = "iommufd_selftest_iommu") -> IOMMUUnitSpec {
        IOMMUUnitSpec(name: name, kind: .selftestMock, format: .mock, pageSizes: MockPageTable.ioPageSize,
                      aperture: MockPageTable.defaultAperture, enforcesCacheCoherency: false,
                      dirtyTracking: true, nesting: true, pasidWidth: 20, reservedRegions: [])
    }
}

public extension IOMMUKind {
    /// Whether the driver's paging-domain allocation accepts IOMMU_HWPT_FAULT_ID_VALID (an
    /// IOPF-capable paging domain). The mock's domain_alloc_paging_flags refuses every flag but
    /// NEST_PARENT, DIRTY_TRACKING and PASID, with EOPNOTSUPP.
    var pagingDomainsTakeFaults: Bool { self != .selftestMock }
}
