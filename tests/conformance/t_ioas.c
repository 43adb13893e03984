/*
 * The IOAS ioctls without devices: IOAS_ALLOC, DESTROY, IOVA_RANGES, MAP, UNMAP, COPY,
 * ALLOW_IOVAS, MAP_FILE, OPTION, VFIO_IOAS — their success paths and their errnos.
 * (No domain is attached, so nothing is pinned: a map only records the user range.)
 */
#include "harness.h"
#include <sys/stat.h>
#include <sys/syscall.h>
#include <linux/capability.h>

#define MB (1ull << 20)

static int iova_ranges(int fd, uint32_t ioas, struct cf_iova_range *r, uint32_t *num, uint64_t *align) {
    struct cf_ioas_iova_ranges q = { .size = sizeof q, .ioas_id = ioas, .num_iovas = *num,
                                     .allowed_iovas = (uintptr_t)r };
    int rc = ioctl(fd, CF_IOMMU_IOAS_IOVA_RANGES, &q);
    *num = q.num_iovas;
    if (align) *align = q.out_iova_alignment;
    return rc;
}

static int option(int fd, uint32_t id, uint32_t object, uint16_t op, uint64_t *val) {
    struct cf_option o = { .size = sizeof o, .option_id = id, .op = op, .object_id = object, .val64 = *val };
    int rc = ioctl(fd, CF_IOMMU_OPTION, &o);
    if (rc == 0) *val = o.val64;
    return rc;
}

static int copy(int fd, uint32_t dst, uint32_t src, uint64_t src_iova, uint64_t length, uint64_t *dst_iova, uint32_t flags) {
    struct cf_ioas_copy c = { .size = sizeof c, .flags = flags, .dst_ioas_id = dst, .src_ioas_id = src,
                              .length = length, .dst_iova = dst_iova ? *dst_iova : 0, .src_iova = src_iova };
    int rc = ioctl(fd, CF_IOMMU_IOAS_COPY, &c);
    if (rc == 0 && dst_iova) *dst_iova = c.dst_iova;
    return rc;
}

static int allow(int fd, uint32_t ioas, const struct cf_iova_range *r, uint32_t n) {
    struct cf_ioas_allow_iovas a = { .size = sizeof a, .ioas_id = ioas, .num_iovas = n, .allowed_iovas = (uintptr_t)r };
    return ioctl(fd, CF_IOMMU_IOAS_ALLOW_IOVAS, &a);
}

static int vfio_ioas(int fd, uint16_t op, uint32_t *id) {
    struct cf_vfio_ioas v = { .size = sizeof v, .ioas_id = id ? *id : 0, .op = op };
    int rc = ioctl(fd, CF_IOMMU_VFIO_IOAS, &v);
    if (rc == 0 && id) *id = v.ioas_id;
    return rc;
}

TEST(ioas_alloc_and_destroy) {
    int fd = cf_open();
    CHECK_EQ(cf_ioas(fd), 1);
    CHECK_EQ(cf_ioas(fd), 2);
    CHECK_EQ(cf_ioas(fd), 3);
    EXPECT_OK(cf_destroy(fd, 2));
    CHECK_EQ(cf_ioas(fd), 2);   /* the lowest free ID is reused */
    EXPECT_ERRNO(ENOENT, cf_destroy(fd, 0));
    EXPECT_ERRNO(ENOENT, cf_destroy(fd, 999));
    EXPECT_OK(cf_destroy(fd, 3));
    EXPECT_ERRNO(ENOENT, cf_destroy(fd, 3));
    struct cf_ioas_alloc a = { .size = sizeof a, .flags = 1 };
    EXPECT_ERRNO(EOPNOTSUPP, ioctl(fd, CF_IOMMU_IOAS_ALLOC, &a));
    close(fd);
}

TEST(iova_ranges_of_a_fresh_ioas) {
    int fd = cf_open();
    uint32_t ioas = cf_ioas(fd);
    struct cf_iova_range r[4];
    memset(r, 0xee, sizeof r);
    uint32_t n = 0;
    uint64_t align = 0;
    EXPECT_ERRNO(EMSGSIZE, iova_ranges(fd, ioas, r, &n, &align));
    CHECK_EQ(n, 1);           /* the count needed is written back */
    CHECK_EQ(align, 1);
    CHECK_EQ(r[0].start, 0xeeeeeeeeeeeeeeeeull);   /* nothing past the caller's count */

    n = 4;
    EXPECT_OK(iova_ranges(fd, ioas, r, &n, &align));
    CHECK_EQ(n, 1);
    CHECK_EQ(r[0].start, 0);
    CHECK_EQ(r[0].last, UINT64_MAX);
    CHECK_EQ(align, 1);

    n = 1;
    EXPECT_ERRNO(ENOENT, iova_ranges(fd, 99, r, &n, NULL));
    n = 1;
    EXPECT_ERRNO(EFAULT, iova_ranges(fd, ioas, NULL, &n, NULL));
    struct cf_ioas_iova_ranges q = { .size = sizeof q, .ioas_id = ioas, .reserved = 1 };
    EXPECT_ERRNO(EOPNOTSUPP, ioctl(fd, CF_IOMMU_IOAS_IOVA_RANGES, &q));
    close(fd);
}

TEST(map_and_unmap_fixed) {
    int fd = cf_open();
    uint32_t ioas = cf_ioas(fd);
    size_t pg = cf_page();
    char *buf = cf_buffer(16 * pg);
    uint64_t iova = MB, n = 0;
    EXPECT_OK(cf_map(fd, ioas, buf, 4 * pg, &iova, CF_RW | CF_MAP_FIXED_IOVA));
    CHECK_EQ(iova, MB);
    EXPECT_OK(cf_unmap(fd, ioas, MB, 4 * pg, &n));
    CHECK_EQ(n, 4 * pg);
    EXPECT_ERRNO(ENOENT, cf_unmap(fd, ioas, MB, 4 * pg, &n));

    /* read-only and write-only maps are fine */
    iova = 2 * MB;
    EXPECT_OK(cf_map(fd, ioas, buf, pg, &iova, CF_MAP_READABLE | CF_MAP_FIXED_IOVA));
    iova = 3 * MB;
    EXPECT_OK(cf_map(fd, ioas, buf, pg, &iova, CF_MAP_WRITEABLE | CF_MAP_FIXED_IOVA));
    /* the same memory may be mapped at several IOVAs */
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, pg, 4 * MB));
    EXPECT_OK(cf_unmap(fd, ioas, 0, UINT64_MAX, &n));
    CHECK_EQ(n, 3 * pg);
    close(fd);
}

TEST(map_picks_an_iova) {
    int fd = cf_open();
    uint32_t ioas = cf_ioas(fd);
    size_t pg = cf_page();
    char *buf = cf_buffer(64 * pg);
    uint64_t a = 0, b = 0, c = 0, n = 0;
    EXPECT_OK(cf_map(fd, ioas, buf, 16 * pg, &a, CF_RW));
    EXPECT_OK(cf_map(fd, ioas, buf, 16 * pg, &b, CF_RW));
    EXPECT_OK(cf_map(fd, ioas, buf + pg, 3 * pg, &c, CF_RW));
    CHECK(a != 0 && b != 0 && c != 0);      /* IOVA 0 is never chosen */
    CHECK(a + 16 * pg <= b || b + 16 * pg <= a);
    CHECK(c + 3 * pg <= a || a + 16 * pg <= c);
    CHECK(c + 3 * pg <= b || b + 16 * pg <= c);
    CHECK_EQ(a % pg, 0);
    CHECK_EQ(c % pg, 0);   /* the page offset of the user address is kept (here 0) */
    EXPECT_OK(cf_unmap(fd, ioas, a, 16 * pg, &n));
    EXPECT_OK(cf_unmap(fd, ioas, b, 16 * pg, &n));
    EXPECT_OK(cf_unmap(fd, ioas, c, 3 * pg, &n));
    CHECK_EQ(n, 3 * pg);
    close(fd);
}

TEST(map_errors) {
    int fd = cf_open();
    uint32_t ioas = cf_ioas(fd);
    size_t pg = cf_page();
    char *buf = cf_buffer(8 * pg);
    uint64_t iova = MB;
    EXPECT_ERRNO(EOPNOTSUPP, cf_map(fd, ioas, buf, pg, &iova, CF_RW | CF_MAP_FIXED_IOVA | 8));
    struct cf_ioas_map m = { .size = sizeof m, .flags = CF_RW | CF_MAP_FIXED_IOVA, .ioas_id = ioas, .reserved = 1,
                             .user_va = (uintptr_t)buf, .length = pg, .iova = MB };
    EXPECT_ERRNO(EOPNOTSUPP, ioctl(fd, CF_IOMMU_IOAS_MAP, &m));
    EXPECT_ERRNO(EINVAL, cf_map(fd, ioas, buf, pg, &iova, CF_MAP_FIXED_IOVA));   /* neither R nor W */
    EXPECT_ERRNO(EINVAL, cf_map_fixed(fd, ioas, buf, 0, MB));                     /* empty */
    EXPECT_ERRNO(ENOENT, cf_map_fixed(fd, 77, buf, pg, MB));
    EXPECT_ERRNO(EOVERFLOW, cf_map_fixed(fd, ioas, buf, pg, UINT64_MAX));
    EXPECT_ERRNO(EOVERFLOW, cf_map_fixed(fd, ioas, buf, UINT64_MAX, MB));
    EXPECT_ERRNO(EOVERFLOW, cf_map_fixed(fd, ioas, buf, 2 * pg, UINT64_MAX - pg + 1));
    EXPECT_ERRNO(EOVERFLOW, cf_map_fixed(fd, ioas, (void *)(uintptr_t)(UINT64_MAX - pg + 1), 2 * pg, MB));

    /* overlaps with a fixed IOVA */
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, 4 * pg, MB));
    EXPECT_ERRNO(EEXIST, cf_map_fixed(fd, ioas, buf, 4 * pg, MB));
    EXPECT_ERRNO(EEXIST, cf_map_fixed(fd, ioas, buf, 4 * pg, MB - 2 * pg));
    EXPECT_ERRNO(EEXIST, cf_map_fixed(fd, ioas, buf, 4 * pg, MB + 3 * pg));
    EXPECT_ERRNO(EEXIST, cf_map_fixed(fd, ioas, buf, pg, MB + pg));
    EXPECT_ERRNO(EEXIST, cf_map_fixed(fd, ioas, buf, 8 * pg, MB - pg));
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, pg, MB + 4 * pg));   /* adjacent is fine */
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, pg, MB - pg));
    close(fd);
}

TEST(map_is_lazy_without_a_domain) {
    /* With no device attached nothing is pinned, so the user range is not checked yet. */
    int fd = cf_open();
    uint32_t ioas = cf_ioas(fd);
    size_t pg = cf_page();
    char *p = mmap(NULL, 4 * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_OK(p == MAP_FAILED ? -1 : 0);
    EXPECT_OK(cf_map_fixed(fd, ioas, p, 4 * pg, MB));
    munmap(p, 4 * pg);
    EXPECT_OK(cf_map_fixed(fd, ioas, p, 4 * pg, 2 * MB));   /* no longer mapped at all */
    uint64_t n = 0;
    EXPECT_OK(cf_unmap(fd, ioas, 0, UINT64_MAX, &n));
    CHECK_EQ(n, 8 * pg);
    close(fd);
}

TEST(unmap_rules) {
    int fd = cf_open();
    uint32_t ioas = cf_ioas(fd);
    size_t pg = cf_page();
    char *buf = cf_buffer(8 * pg);
    uint64_t n = 77;

    /* unmap-all of an empty IOAS succeeds with 0 bytes */
    EXPECT_OK(cf_unmap(fd, ioas, 0, UINT64_MAX, &n));
    CHECK_EQ(n, 0);
    EXPECT_ERRNO(ENOENT, cf_unmap(fd, ioas, MB, pg, &n));
    EXPECT_ERRNO(EINVAL, cf_unmap(fd, ioas, MB, 0, &n));
    EXPECT_ERRNO(EOVERFLOW, cf_unmap(fd, ioas, UINT64_MAX, 1, &n));
    EXPECT_ERRNO(EOVERFLOW, cf_unmap(fd, ioas, 1, UINT64_MAX, &n));
    EXPECT_ERRNO(EOVERFLOW, cf_unmap(fd, ioas, UINT64_MAX - 1, 3, &n));
    EXPECT_ERRNO(ENOENT, cf_unmap(fd, 55, 0, UINT64_MAX, &n));

    /* A: [1M, 1M+2p)  B: [1M+2p, 1M+4p)  C: [2M, 2M+2p) */
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, 2 * pg, MB));
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, 2 * pg, MB + 2 * pg));
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, 2 * pg, 2 * MB));
    /* areas are never split */
    EXPECT_ERRNO(ENOENT, cf_unmap(fd, ioas, MB, pg, &n));
    EXPECT_ERRNO(ENOENT, cf_unmap(fd, ioas, MB + pg, 2 * pg, &n));
    /* a range covering A and B whole unmaps both */
    EXPECT_OK(cf_unmap(fd, ioas, MB, 4 * pg, &n));
    CHECK_EQ(n, 4 * pg);

    /* a range that covers A whole and B in part: A goes, then ENOENT at B */
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, 2 * pg, MB));
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, 2 * pg, MB + 2 * pg));
    EXPECT_ERRNO(ENOENT, cf_unmap(fd, ioas, MB, 3 * pg, &n));
    EXPECT_ERRNO(ENOENT, cf_unmap(fd, ioas, MB, 2 * pg, &n));
    EXPECT_OK(cf_unmap(fd, ioas, MB + 2 * pg, 2 * pg, &n));
    CHECK_EQ(n, 2 * pg);

    /* a range with holes is fine as long as every area in it is whole */
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, 2 * pg, MB));
    EXPECT_OK(cf_unmap(fd, ioas, 0, 4 * MB, &n));
    CHECK_EQ(n, 4 * pg);
    EXPECT_OK(cf_unmap(fd, ioas, 0, UINT64_MAX, &n));
    CHECK_EQ(n, 0);
    close(fd);
}

TEST(destroy_an_ioas_with_maps) {
    int fd = cf_open();
    uint32_t ioas = cf_ioas(fd);
    char *buf = cf_buffer(4 * cf_page());
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, 4 * cf_page(), MB));
    EXPECT_OK(cf_destroy(fd, ioas));
    EXPECT_ERRNO(ENOENT, cf_map_fixed(fd, ioas, buf, cf_page(), MB));
    close(fd);
}

TEST(copy_between_ioas) {
    int fd = cf_open();
    uint32_t src = cf_ioas(fd), dst = cf_ioas(fd);
    size_t pg = cf_page();
    char *buf = cf_buffer(8 * pg);
    uint64_t n = 0, d;
    EXPECT_OK(cf_map_fixed(fd, src, buf, 4 * pg, MB));
    EXPECT_OK(cf_map_fixed(fd, src, buf + 4 * pg, 2 * pg, MB + 4 * pg));   /* adjacent area */

    d = 8 * MB;
    EXPECT_OK(copy(fd, dst, src, MB, 4 * pg, &d, CF_RW | CF_MAP_FIXED_IOVA));
    CHECK_EQ(d, 8 * MB);
    /* a sub-range of an area, and a span over two adjacent areas */
    d = 9 * MB;
    EXPECT_OK(copy(fd, dst, src, MB + pg, 2 * pg, &d, CF_RW | CF_MAP_FIXED_IOVA));
    d = 10 * MB;
    EXPECT_OK(copy(fd, dst, src, MB + 2 * pg, 4 * pg, &d, CF_MAP_READABLE | CF_MAP_FIXED_IOVA));
    /* an IOVA chosen for us, and a copy inside the same IOAS */
    d = 0;
    EXPECT_OK(copy(fd, dst, src, MB, 4 * pg, &d, CF_RW));
    CHECK(d != 0);
    uint64_t same = 16 * MB;
    EXPECT_OK(copy(fd, src, src, MB, pg, &same, CF_RW | CF_MAP_FIXED_IOVA));

    EXPECT_OK(cf_unmap(fd, dst, 8 * MB, 4 * pg, &n));
    CHECK_EQ(n, 4 * pg);
    EXPECT_OK(cf_unmap(fd, dst, 9 * MB, 2 * pg, &n));
    EXPECT_OK(cf_unmap(fd, dst, 10 * MB, 4 * pg, &n));
    EXPECT_OK(cf_unmap(fd, dst, d, 4 * pg, &n));
    /* the source is untouched by unmapping the copies */
    EXPECT_OK(cf_unmap(fd, src, MB, 4 * pg, &n));
    CHECK_EQ(n, 4 * pg);
    close(fd);
}

TEST(copy_errors) {
    int fd = cf_open();
    uint32_t src = cf_ioas(fd), dst = cf_ioas(fd);
    size_t pg = cf_page();
    char *buf = cf_buffer(8 * pg);
    uint64_t d = 8 * MB;
    EXPECT_OK(cf_map_fixed(fd, src, buf, 4 * pg, MB));
    EXPECT_ERRNO(EOPNOTSUPP, copy(fd, dst, src, MB, pg, &d, CF_RW | CF_MAP_FIXED_IOVA | 8));
    EXPECT_ERRNO(EINVAL, copy(fd, dst, src, MB, pg, &d, CF_MAP_FIXED_IOVA));
    EXPECT_ERRNO(EINVAL, copy(fd, dst, src, MB, 0, &d, CF_RW | CF_MAP_FIXED_IOVA));
    EXPECT_ERRNO(EOVERFLOW, copy(fd, dst, src, MB, UINT64_MAX, &d, CF_RW | CF_MAP_FIXED_IOVA));
    EXPECT_ERRNO(ENOENT, copy(fd, dst, src, 3 * MB, pg, &d, CF_RW | CF_MAP_FIXED_IOVA));      /* nothing there */
    EXPECT_ERRNO(ENOENT, copy(fd, dst, src, MB + 2 * pg, 4 * pg, &d, CF_RW | CF_MAP_FIXED_IOVA)); /* runs off the end */
    EXPECT_ERRNO(ENOENT, copy(fd, dst, 42, MB, pg, &d, CF_RW | CF_MAP_FIXED_IOVA));
    EXPECT_ERRNO(ENOENT, copy(fd, 42, src, MB, pg, &d, CF_RW | CF_MAP_FIXED_IOVA));
    EXPECT_OK(copy(fd, dst, src, MB, pg, &d, CF_RW | CF_MAP_FIXED_IOVA));
    EXPECT_ERRNO(EEXIST, copy(fd, dst, src, MB, pg, &d, CF_RW | CF_MAP_FIXED_IOVA));
    /* a writeable copy of a read-only map */
    EXPECT_OK(cf_map(fd, src, buf, pg, &(uint64_t){ 4 * MB }, CF_MAP_READABLE | CF_MAP_FIXED_IOVA));
    d = 12 * MB;
    EXPECT_ERRNO(EPERM, copy(fd, dst, src, 4 * MB, pg, &d, CF_RW | CF_MAP_FIXED_IOVA));
    EXPECT_OK(copy(fd, dst, src, 4 * MB, pg, &d, CF_MAP_READABLE | CF_MAP_FIXED_IOVA));
    close(fd);
}

TEST(allow_iovas_steers_allocation) {
    int fd = cf_open();
    uint32_t ioas = cf_ioas(fd);
    size_t pg = cf_page();
    char *buf = cf_buffer(16 * pg);
    struct cf_iova_range win = { .start = 16 * MB, .last = 17 * MB - 1 };
    EXPECT_OK(allow(fd, ioas, &win, 1));
    uint64_t iova = 0, n = 0;
    EXPECT_OK(cf_map(fd, ioas, buf, 4 * pg, &iova, CF_RW));
    CHECK(iova >= win.start && iova + 4 * pg - 1 <= win.last);
    /* too big for the window */
    iova = 0;
    EXPECT_ERRNO(ENOSPC, cf_map(fd, ioas, buf, 2 * MB, &iova, CF_RW));
    /* the list only steers allocation: fixed IOVAs outside it are fine */
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, pg, 64 * MB));
    /* and IOVA_RANGES reports what is usable, not what is allowed */
    struct cf_iova_range r[2];
    uint32_t num = 2;
    EXPECT_OK(iova_ranges(fd, ioas, r, &num, NULL));
    CHECK_EQ(num, 1);
    CHECK_EQ(r[0].start, 0);
    CHECK_EQ(r[0].last, UINT64_MAX);
    /* clearing the list */
    EXPECT_OK(allow(fd, ioas, NULL, 0));
    iova = 0;
    EXPECT_OK(cf_map(fd, ioas, buf, 2 * MB, &iova, CF_RW));
    EXPECT_OK(cf_unmap(fd, ioas, 0, UINT64_MAX, &n));
    close(fd);
}

TEST(allow_iovas_errors) {
    int fd = cf_open();
    uint32_t ioas = cf_ioas(fd);
    struct cf_iova_range one = { .start = MB, .last = MB };
    EXPECT_ERRNO(EINVAL, allow(fd, ioas, &one, 1));    /* start must be below last */
    struct cf_iova_range backwards = { .start = 2 * MB, .last = MB };
    EXPECT_ERRNO(EINVAL, allow(fd, ioas, &backwards, 1));
    struct cf_iova_range overlap[2] = { { MB, 4 * MB - 1 }, { 2 * MB, 8 * MB - 1 } };
    EXPECT_ERRNO(EINVAL, allow(fd, ioas, overlap, 2));
    struct cf_iova_range two[2] = { { MB, 2 * MB - 1 }, { 4 * MB, 8 * MB - 1 } };
    EXPECT_OK(allow(fd, ioas, two, 2));
    EXPECT_ERRNO(EFAULT, allow(fd, ioas, NULL, 1));
    EXPECT_ERRNO(ENOENT, allow(fd, 99, two, 2));
    struct cf_ioas_allow_iovas a = { .size = sizeof a, .ioas_id = ioas, .reserved = 1 };
    EXPECT_ERRNO(EOPNOTSUPP, ioctl(fd, CF_IOMMU_IOAS_ALLOW_IOVAS, &a));
    close(fd);
}

TEST(option_huge_pages) {
    int fd = cf_open();
    uint32_t ioas = cf_ioas(fd);
    size_t pg = cf_page();
    char *buf = cf_buffer(4 * pg);
    uint64_t v = 0, align = 0;
    EXPECT_OK(option(fd, CF_OPTION_HUGE_PAGES, ioas, CF_OPTION_OP_GET, &v));
    CHECK_EQ(v, 1);
    v = 0;
    EXPECT_OK(option(fd, CF_OPTION_HUGE_PAGES, ioas, CF_OPTION_OP_SET, &v));
    EXPECT_OK(option(fd, CF_OPTION_HUGE_PAGES, ioas, CF_OPTION_OP_GET, &v));
    CHECK_EQ(v, 0);
    /* without large pages the IOAS works in whole pages */
    struct cf_iova_range r[2];
    uint32_t num = 2;
    EXPECT_OK(iova_ranges(fd, ioas, r, &num, &align));
    CHECK_EQ(align, pg);
    EXPECT_ERRNO(EINVAL, cf_map_fixed(fd, ioas, buf, pg / 2, MB));
    v = 1;
    EXPECT_OK(option(fd, CF_OPTION_HUGE_PAGES, ioas, CF_OPTION_OP_SET, &v));
    num = 2;
    EXPECT_OK(iova_ranges(fd, ioas, r, &num, &align));
    CHECK_EQ(align, 1);
    /* an area that is not page aligned prevents turning them off */
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, pg / 2, MB));
    v = 0;
    EXPECT_ERRNO(EADDRINUSE, option(fd, CF_OPTION_HUGE_PAGES, ioas, CF_OPTION_OP_SET, &v));
    v = 2;
    EXPECT_ERRNO(EINVAL, option(fd, CF_OPTION_HUGE_PAGES, ioas, CF_OPTION_OP_SET, &v));
    EXPECT_ERRNO(EOPNOTSUPP, option(fd, CF_OPTION_HUGE_PAGES, ioas, 2, &v));
    EXPECT_ERRNO(ENOENT, option(fd, CF_OPTION_HUGE_PAGES, 0, CF_OPTION_OP_GET, &v));
    EXPECT_ERRNO(ENOENT, option(fd, CF_OPTION_HUGE_PAGES, 99, CF_OPTION_OP_GET, &v));
    close(fd);
}

/* The kernel asks capable(CAP_SYS_RESOURCE), not the user ID (containers drop it for root). */
static int has_sys_resource(void) {
    struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    if (syscall(SYS_capget, &h, d) != 0) return 0;
    return (d[CAP_SYS_RESOURCE / 32].effective >> (CAP_SYS_RESOURCE % 32)) & 1;
}

TEST(option_rlimit_mode) {
    int fd = cf_open();
    uint64_t v = 7;
    EXPECT_OK(option(fd, CF_OPTION_RLIMIT_MODE, 0, CF_OPTION_OP_GET, &v));
    CHECK_EQ(v, 0);   /* per-user accounting by default */
    EXPECT_ERRNO(EOPNOTSUPP, option(fd, CF_OPTION_RLIMIT_MODE, 1, CF_OPTION_OP_GET, &v));
    EXPECT_ERRNO(EOPNOTSUPP, option(fd, CF_OPTION_RLIMIT_MODE, 0, 2, &v));
    EXPECT_ERRNO(EOPNOTSUPP, option(fd, 5, 0, CF_OPTION_OP_GET, &v));
    struct cf_option o = { .size = sizeof o, .option_id = CF_OPTION_RLIMIT_MODE, .op = CF_OPTION_OP_GET, .reserved = 1 };
    EXPECT_ERRNO(EOPNOTSUPP, ioctl(fd, CF_IOMMU_OPTION, &o));
    if (!has_sys_resource()) {
        v = 1;
        EXPECT_ERRNO(EPERM, option(fd, CF_OPTION_RLIMIT_MODE, 0, CF_OPTION_OP_SET, &v));
        close(fd);
        return;
    }
    v = 1;
    EXPECT_OK(option(fd, CF_OPTION_RLIMIT_MODE, 0, CF_OPTION_OP_SET, &v));
    v = 9;
    EXPECT_OK(option(fd, CF_OPTION_RLIMIT_MODE, 0, CF_OPTION_OP_GET, &v));
    CHECK_EQ(v, 1);
    v = 2;
    EXPECT_ERRNO(EINVAL, option(fd, CF_OPTION_RLIMIT_MODE, 0, CF_OPTION_OP_SET, &v));
    cf_ioas(fd);
    v = 0;
    EXPECT_ERRNO(EBUSY, option(fd, CF_OPTION_RLIMIT_MODE, 0, CF_OPTION_OP_SET, &v));
    close(fd);
}

TEST(vfio_compat_ioas) {
    int fd = cf_open();
    uint32_t id = 0;
    EXPECT_ERRNO(ENODEV, vfio_ioas(fd, CF_VFIO_IOAS_GET, &id));
    id = 5;
    EXPECT_ERRNO(ENOENT, vfio_ioas(fd, CF_VFIO_IOAS_SET, &id));
    uint32_t ioas = cf_ioas(fd);
    id = ioas;
    EXPECT_OK(vfio_ioas(fd, CF_VFIO_IOAS_SET, &id));
    id = 0;
    EXPECT_OK(vfio_ioas(fd, CF_VFIO_IOAS_GET, &id));
    CHECK_EQ(id, ioas);
    EXPECT_OK(vfio_ioas(fd, CF_VFIO_IOAS_CLEAR, NULL));
    EXPECT_ERRNO(ENODEV, vfio_ioas(fd, CF_VFIO_IOAS_GET, &id));
    EXPECT_ERRNO(EOPNOTSUPP, vfio_ioas(fd, 3, &id));
    struct cf_vfio_ioas v = { .size = sizeof v, .op = CF_VFIO_IOAS_GET, .reserved = 1 };
    EXPECT_ERRNO(EOPNOTSUPP, ioctl(fd, CF_IOMMU_VFIO_IOAS, &v));
    /* destroying the compat IOAS forgets it */
    id = ioas;
    EXPECT_OK(vfio_ioas(fd, CF_VFIO_IOAS_SET, &id));
    EXPECT_OK(cf_destroy(fd, ioas));
    EXPECT_ERRNO(ENODEV, vfio_ioas(fd, CF_VFIO_IOAS_GET, &id));
    close(fd);
}

TEST(map_file) {
    int fd = cf_open();
    uint32_t ioas = cf_ioas(fd);
    size_t pg = cf_page();
    int mfd = memfd_create("conformance", 0);
    ASSERT_OK(mfd);
    ASSERT_OK(ftruncate(mfd, 4 * pg));
    struct cf_ioas_map_file m = { .size = sizeof m, .flags = CF_RW | CF_MAP_FIXED_IOVA, .ioas_id = ioas,
                                  .fd = mfd, .start = 0, .length = 4 * pg, .iova = MB };
    if (ioctl(fd, CF_IOMMU_IOAS_MAP_FILE, &m) != 0 && errno == ENOTTY && !cf_emulated(fd))
        SKIP("IOMMU_IOAS_MAP_FILE needs Linux 6.13");
    uint64_t n = 0;
    EXPECT_OK(cf_unmap(fd, ioas, MB, 4 * pg, &n));
    CHECK_EQ(n, 4 * pg);
    m.flags = CF_RW;
    m.iova = 0;
    EXPECT_OK(ioctl(fd, CF_IOMMU_IOAS_MAP_FILE, &m));
    CHECK(m.iova != 0);
    m.flags = CF_RW | CF_MAP_FIXED_IOVA | 8;
    EXPECT_ERRNO(EOPNOTSUPP, ioctl(fd, CF_IOMMU_IOAS_MAP_FILE, &m));
    m.flags = CF_MAP_FIXED_IOVA;
    EXPECT_ERRNO(EINVAL, ioctl(fd, CF_IOMMU_IOAS_MAP_FILE, &m));
    m.flags = CF_RW | CF_MAP_FIXED_IOVA;
    m.iova = 8 * MB;
    m.fd = -1;
    EXPECT_ERRNO(EBADF, ioctl(fd, CF_IOMMU_IOAS_MAP_FILE, &m));
    m.fd = mfd;
    m.ioas_id = 99;
    EXPECT_ERRNO(ENOENT, ioctl(fd, CF_IOMMU_IOAS_MAP_FILE, &m));
    close(mfd);
    close(fd);
}

TEST(ioas_change_process) {
    int fd = cf_open();
    struct cf_ioas_change_process c = { .size = sizeof c };
    if (ioctl(fd, CF_IOMMU_IOAS_CHANGE_PROCESS, &c) != 0) {
        if (errno == ENOTTY && !cf_emulated(fd)) SKIP("IOMMU_IOAS_CHANGE_PROCESS needs Linux 6.14");
        FAIL("IOMMU_IOAS_CHANGE_PROCESS with nothing mapped: %s", cf_errname(errno));
    }
    c.reserved = 1;
    EXPECT_ERRNO(EOPNOTSUPP, ioctl(fd, CF_IOMMU_IOAS_CHANGE_PROCESS, &c));
    /* user-VA maps cannot move to another process */
    uint32_t ioas = cf_ioas(fd);
    char *buf = cf_buffer(cf_page());
    EXPECT_OK(cf_map_fixed(fd, ioas, buf, cf_page(), MB));
    c.reserved = 0;
    EXPECT_ERRNO(EINVAL, ioctl(fd, CF_IOMMU_IOAS_CHANGE_PROCESS, &c));
    close(fd);
}

TEST(device_commands_without_devices) {
    /* Every object ID below is unknown: the handlers answer ENOENT. */
    int fd = cf_open();
    uint32_t ioas = cf_ioas(fd);
    struct cf_hwpt_alloc h = { .size = sizeof h, .dev_id = 77, .pt_id = ioas };
    EXPECT_ERRNO(ENOENT, ioctl(fd, CF_IOMMU_HWPT_ALLOC, &h));
    struct cf_hw_info i = { .size = sizeof i, .dev_id = 77 };
    EXPECT_ERRNO(ENOENT, ioctl(fd, CF_IOMMU_GET_HW_INFO, &i));
    struct cf_hwpt_set_dirty_tracking s = { .size = sizeof s, .hwpt_id = 77 };
    EXPECT_ERRNO(ENOENT, ioctl(fd, CF_IOMMU_HWPT_SET_DIRTY_TRACKING, &s));
    /* an IOAS is not a HWPT */
    s.hwpt_id = ioas;
    EXPECT_ERRNO(ENOENT, ioctl(fd, CF_IOMMU_HWPT_SET_DIRTY_TRACKING, &s));
    close(fd);
}

int main(int argc, char **argv) { return cf_main(argc, argv); }
