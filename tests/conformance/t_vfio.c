/*
 * The VFIO type1 container ioctls answered by an iommufd (vfio_compat): on the iommufd fd
 * itself, acting on the compat IOAS set with IOMMU_VFIO_IOAS. Argument forms as a VMM uses
 * them: GET_API_VERSION with no third argument, CHECK_EXTENSION and SET_IOMMU with integers.
 */
#include "harness.h"

#define MB (1ull << 20)

static uint32_t compat_ioas(int fd) {
    uint32_t ioas = cf_ioas(fd);
    struct cf_vfio_ioas v = { .size = sizeof v, .ioas_id = ioas, .op = CF_VFIO_IOAS_SET };
    if (ioctl(fd, CF_IOMMU_VFIO_IOAS, &v)) FATAL("IOMMU_VFIO_IOAS SET: %s", cf_errname(errno));
    return ioas;
}

static int map_dma(int fd, void *va, uint64_t iova, uint64_t size, uint32_t flags) {
    struct cf_vfio_dma_map m = { .argsz = sizeof m, .flags = flags, .vaddr = (uintptr_t)va, .iova = iova, .size = size };
    return ioctl(fd, CF_VFIO_IOMMU_MAP_DMA, &m);
}

static int unmap_dma(int fd, uint64_t iova, uint64_t size, uint32_t flags, uint64_t *unmapped) {
    struct cf_vfio_dma_unmap u = { .argsz = sizeof u, .flags = flags, .iova = iova, .size = size };
    int rc = ioctl(fd, CF_VFIO_IOMMU_UNMAP_DMA, &u);
    if (unmapped) *unmapped = u.size;
    return rc;
}

#define RW (CF_VFIO_DMA_MAP_FLAG_READ | CF_VFIO_DMA_MAP_FLAG_WRITE)

TEST(api_version_and_extensions) {
    int fd = cf_open();
    CHECK_EQ(ioctl(fd, CF_VFIO_GET_API_VERSION), CF_VFIO_API_VERSION);
    CHECK_EQ(ioctl(fd, CF_VFIO_CHECK_EXTENSION, CF_VFIO_TYPE1_IOMMU), 1);
    CHECK_EQ(ioctl(fd, CF_VFIO_CHECK_EXTENSION, CF_VFIO_TYPE1v2_IOMMU), 1);
    CHECK_EQ(ioctl(fd, CF_VFIO_CHECK_EXTENSION, CF_VFIO_UNMAP_ALL), 1);
    CHECK_EQ(ioctl(fd, CF_VFIO_CHECK_EXTENSION, CF_VFIO_SPAPR_TCE_IOMMU), 0);
    CHECK_EQ(ioctl(fd, CF_VFIO_CHECK_EXTENSION, CF_VFIO_TYPE1_NESTING_IOMMU), 0);
    CHECK_EQ(ioctl(fd, CF_VFIO_CHECK_EXTENSION, CF_VFIO_UPDATE_VADDR), 0);
    CHECK_EQ(ioctl(fd, CF_VFIO_CHECK_EXTENSION, 1000), 0);
    /* cache coherency is a property of the compat IOAS's domains */
    EXPECT_ERRNO(ENODEV, ioctl(fd, CF_VFIO_CHECK_EXTENSION, CF_VFIO_DMA_CC_IOMMU));
    compat_ioas(fd);
    CHECK_EQ(ioctl(fd, CF_VFIO_CHECK_EXTENSION, CF_VFIO_DMA_CC_IOMMU), 1);   /* no domain breaks it */
    close(fd);
}

TEST(other_vfio_numbers) {
    int fd = cf_open();
    EXPECT_ERRNO(ENOTTY, ioctl(fd, CF_VFIO_IOMMU_ENABLE));
    EXPECT_ERRNO(ENOTTY, ioctl(fd, CF_VFIO_IOMMU_DIRTY_PAGES, NULL));
    EXPECT_ERRNO(ENOTTY, ioctl(fd, CF_VFIO_GROUP_GET_STATUS, NULL));
    EXPECT_ERRNO(ENOTTY, ioctl(fd, CF_IO(100 + 27), NULL));
    close(fd);
}

TEST(set_iommu) {
    int fd = cf_open();
    EXPECT_ERRNO(EINVAL, ioctl(fd, CF_VFIO_SET_IOMMU, CF_VFIO_SPAPR_TCE_IOMMU));
    EXPECT_ERRNO(ENODEV, ioctl(fd, CF_VFIO_SET_IOMMU, CF_VFIO_TYPE1v2_IOMMU));
    uint32_t ioas = compat_ioas(fd);
    EXPECT_ERRNO(EINVAL, ioctl(fd, CF_VFIO_SET_IOMMU, 0));
    EXPECT_OK(ioctl(fd, CF_VFIO_SET_IOMMU, CF_VFIO_TYPE1v2_IOMMU));
    struct cf_option o = { .size = sizeof o, .option_id = CF_OPTION_HUGE_PAGES, .op = CF_OPTION_OP_GET, .object_id = ioas };
    EXPECT_OK(ioctl(fd, CF_IOMMU_OPTION, &o));
    CHECK_EQ(o.val64, 1);
    /* type1 (v1) turns large pages off on the compat IOAS */
    EXPECT_OK(ioctl(fd, CF_VFIO_SET_IOMMU, CF_VFIO_TYPE1_IOMMU));
    o.val64 = 9;
    EXPECT_OK(ioctl(fd, CF_IOMMU_OPTION, &o));
    CHECK_EQ(o.val64, 0);
    close(fd);
}

TEST(get_info) {
    int fd = cf_open();
    struct cf_vfio_iommu_info info = { .argsz = sizeof info };
    EXPECT_ERRNO(ENODEV, ioctl(fd, CF_VFIO_IOMMU_GET_INFO, &info));
    info.argsz = 15;
    EXPECT_ERRNO(EINVAL, ioctl(fd, CF_VFIO_IOMMU_GET_INFO, &info));
    EXPECT_ERRNO(EFAULT, ioctl(fd, CF_VFIO_IOMMU_GET_INFO, NULL));
    compat_ioas(fd);

    /* the fixed part only: argsz comes back as the size of everything */
    unsigned char buf[256];
    memset(buf, 0xa5, sizeof buf);
    info = (struct cf_vfio_iommu_info){ .argsz = 16 };
    memcpy(buf, &info, 16);
    EXPECT_OK(ioctl(fd, CF_VFIO_IOMMU_GET_INFO, buf));
    memcpy(&info, buf, 16);
    CHECK(info.flags & CF_VFIO_IOMMU_INFO_PGSIZES);
    CHECK(info.flags & CF_VFIO_IOMMU_INFO_CAPS);
    CHECK(info.iova_pgsizes & cf_page());
    CHECK_EQ(info.iova_pgsizes & (cf_page() - 1), 0);
    /* header 24 + DMA_AVAIL 12 (each capability is padded to 8 bytes: 16) + IOVA_RANGE 16
     * + one range 16 */
    uint32_t total = sizeof info + 16 + sizeof(struct cf_vfio_cap_iova_range) + sizeof(struct cf_vfio_iova_range);
    CHECK_EQ(info.argsz, total);
    for (int i = 16; i < 256; i++) if (buf[i] != 0xa5) { FAIL("byte %d past argsz 16 written", i); break; }

    /* room for the header but not the capabilities: no cap_offset */
    memset(buf, 0xa5, sizeof buf);
    info = (struct cf_vfio_iommu_info){ .argsz = sizeof info };
    memcpy(buf, &info, sizeof info);
    EXPECT_OK(ioctl(fd, CF_VFIO_IOMMU_GET_INFO, buf));
    memcpy(&info, buf, sizeof info);
    CHECK_EQ(info.cap_offset, 0);
    CHECK_EQ(info.argsz, total);
    for (unsigned i = sizeof info; i < 256; i++) if (buf[i] != 0xa5) { FAIL("byte %u past argsz written", i); break; }

    /* everything: walk the chain */
    memset(buf, 0xa5, sizeof buf);
    info = (struct cf_vfio_iommu_info){ .argsz = sizeof buf };
    memcpy(buf, &info, sizeof info);
    EXPECT_OK(ioctl(fd, CF_VFIO_IOMMU_GET_INFO, buf));
    memcpy(&info, buf, sizeof info);
    CHECK_EQ(info.argsz, total);
    CHECK_EQ(info.cap_offset, sizeof info);
    int seen_avail = 0, seen_ranges = 0;
    for (uint32_t off = info.cap_offset, hops = 0; off && hops < 8; hops++) {
        if (off + sizeof(struct cf_vfio_cap_header) > total) { FAIL("cap offset %u out of range", off); break; }
        struct cf_vfio_cap_header h;
        memcpy(&h, buf + off, sizeof h);
        CHECK_EQ(h.version, 1);
        if (h.id == CF_VFIO_CAP_DMA_AVAIL) {
            struct cf_vfio_cap_dma_avail a;
            memcpy(&a, buf + off, sizeof a);
            CHECK_EQ(a.avail, UINT32_MAX);
            seen_avail = 1;
        } else if (h.id == CF_VFIO_CAP_IOVA_RANGE) {
            struct cf_vfio_cap_iova_range r;
            memcpy(&r, buf + off, sizeof r);
            CHECK_EQ(r.nr_iovas, 1);
            struct cf_vfio_iova_range range;
            memcpy(&range, buf + off + sizeof r, sizeof range);
            CHECK_EQ(range.start, 0);
            CHECK_EQ(range.end, UINT64_MAX);
            seen_ranges = 1;
        } else {
            FAIL("unexpected capability %u", h.id);
        }
        off = h.next;
    }
    CHECK(seen_avail && seen_ranges);
    for (unsigned i = total; i < sizeof buf; i++) if (buf[i] != 0xa5) { FAIL("byte %u past the data written", i); break; }
    close(fd);
}

TEST(map_and_unmap_dma) {
    int fd = cf_open();
    size_t pg = cf_page();
    char *buf = cf_buffer(16 * pg);
    struct cf_vfio_dma_map m = { .argsz = sizeof m, .flags = RW, .vaddr = (uintptr_t)buf, .iova = MB, .size = pg };
    EXPECT_ERRNO(ENODEV, ioctl(fd, CF_VFIO_IOMMU_MAP_DMA, &m));
    m.argsz = sizeof m - 1;
    EXPECT_ERRNO(EINVAL, ioctl(fd, CF_VFIO_IOMMU_MAP_DMA, &m));
    m.argsz = sizeof m;
    m.flags = RW | 4;
    EXPECT_ERRNO(EINVAL, ioctl(fd, CF_VFIO_IOMMU_MAP_DMA, &m));
    EXPECT_ERRNO(EFAULT, ioctl(fd, CF_VFIO_IOMMU_MAP_DMA, NULL));
    uint64_t n = 0;
    EXPECT_ERRNO(ENODEV, unmap_dma(fd, MB, pg, 0, &n));

    uint32_t ioas = compat_ioas(fd);
    EXPECT_OK(map_dma(fd, buf, MB, 4 * pg, RW));
    EXPECT_OK(map_dma(fd, buf, 2 * MB, 4 * pg, CF_VFIO_DMA_MAP_FLAG_READ));
    EXPECT_ERRNO(EEXIST, map_dma(fd, buf, MB + pg, pg, RW));
    /* the maps are areas of the compat IOAS */
    EXPECT_ERRNO(EEXIST, cf_map_fixed(fd, ioas, buf, pg, MB));
    /* type1v2 never splits a mapping */
    EXPECT_ERRNO(ENOENT, unmap_dma(fd, MB, pg, 0, &n));
    EXPECT_OK(unmap_dma(fd, MB, 4 * pg, 0, &n));
    CHECK_EQ(n, 4 * pg);
    /* unlike IOMMU_IOAS_UNMAP, type1 succeeds when nothing is there, with size 0 */
    n = 77;
    EXPECT_OK(unmap_dma(fd, MB, 4 * pg, 0, &n));
    CHECK_EQ(n, 0);
    EXPECT_OK(map_dma(fd, buf, MB, 4 * pg, RW));

    struct cf_vfio_dma_unmap u = { .argsz = sizeof u - 1, .iova = MB, .size = pg };
    EXPECT_ERRNO(EINVAL, ioctl(fd, CF_VFIO_IOMMU_UNMAP_DMA, &u));
    EXPECT_ERRNO(EINVAL, unmap_dma(fd, MB, 4 * pg, CF_VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, &n));
    EXPECT_ERRNO(EINVAL, unmap_dma(fd, MB, 4 * pg, CF_VFIO_DMA_UNMAP_FLAG_VADDR, &n));
    EXPECT_ERRNO(EINVAL, unmap_dma(fd, MB, 0, CF_VFIO_DMA_UNMAP_FLAG_ALL, &n));
    EXPECT_ERRNO(EFAULT, ioctl(fd, CF_VFIO_IOMMU_UNMAP_DMA, NULL));
    /* unmap everything */
    EXPECT_OK(unmap_dma(fd, 0, 0, CF_VFIO_DMA_UNMAP_FLAG_ALL, &n));
    CHECK_EQ(n, 8 * pg);
    EXPECT_OK(unmap_dma(fd, 0, 0, CF_VFIO_DMA_UNMAP_FLAG_ALL, &n));
    CHECK_EQ(n, 0);
    close(fd);
}

TEST(type1_v1_unmaps_inside_a_mapping) {
    int fd = cf_open();
    size_t pg = cf_page();
    char *buf = cf_buffer(16 * pg);
    compat_ioas(fd);
    EXPECT_OK(ioctl(fd, CF_VFIO_SET_IOMMU, CF_VFIO_TYPE1_IOMMU));
    EXPECT_OK(map_dma(fd, buf, MB, 4 * pg, RW));
    uint64_t n = 0;
    /* v1: the mapping is cut around the range */
    EXPECT_OK(unmap_dma(fd, MB + pg, pg, 0, &n));
    CHECK_EQ(n, pg);
    EXPECT_OK(unmap_dma(fd, MB, pg, 0, &n));
    CHECK_EQ(n, pg);
    EXPECT_OK(unmap_dma(fd, MB + 2 * pg, 2 * pg, 0, &n));
    CHECK_EQ(n, 2 * pg);
    EXPECT_OK(unmap_dma(fd, 0, 0, CF_VFIO_DMA_UNMAP_FLAG_ALL, &n));
    CHECK_EQ(n, 0);
    close(fd);
}

TEST(compat_ioas_destroyed) {
    int fd = cf_open();
    char *buf = cf_buffer(cf_page());
    uint32_t ioas = compat_ioas(fd);
    EXPECT_OK(map_dma(fd, buf, MB, cf_page(), RW));
    EXPECT_OK(cf_destroy(fd, ioas));
    EXPECT_ERRNO(ENODEV, map_dma(fd, buf, MB, cf_page(), RW));
    struct cf_vfio_iommu_info info = { .argsz = sizeof info };
    EXPECT_ERRNO(ENODEV, ioctl(fd, CF_VFIO_IOMMU_GET_INFO, &info));
    close(fd);
}

int main(int argc, char **argv) { return cf_main(argc, argv); }
