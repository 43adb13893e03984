// The VFIO container, /dev/vfio/vfio, served the way Linux serves it with
// CONFIG_IOMMUFD_VFIO_CONTAINER: the container *is* an iommufd (iommufd's "vfio" misc device),
// whose VFIO type1 ioctls (VFIO_GET_API_VERSION, VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU,
// VFIO_IOMMU_GET_INFO, VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA — VFIOCompat.swift) act on its
// compatibility IOAS. So the container is a client of the engine like any iommufd:
//
//  - VFIO_GROUP_SET_CONTAINER creates the compatibility IOAS if there is none (VFIOGroup.swift);
//  - VFIO_GROUP_GET_DEVICE_FD binds the device to the container's context and attaches it to that
//    IOAS with an automatic domain — so devices of several groups in one container share one
//    domain when their IOMMUs are compatible (seed 000's "groups share an IOMMU domain"), and get
//    separate domains when not (a coherency-enforcing domain is never shared with an IOMMU that
//    cannot snoop; VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU) then answers 0);
//  - pinned pages are charged to the process (the kernel's IOPT_PAGES_ACCOUNT_MM for a
//    /dev/vfio/vfio open), which is what type1 does.
//
// Differences from a kernel with the native type1 container (CONFIG_VFIO_CONTAINER) are the
// iommufd compat layer's own: no VFIO_UPDATE_VADDR, no dirty-page ioctls, page sizes from the
// domains.

extension VFIOSubsystem {
    /// Makes a freshly opened iommufd file behave as /dev/vfio/vfio.
    public static func configureContainer(_ file: IOMMUFDFile) {
        makeContainer(file)
    }
}
