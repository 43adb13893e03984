/*
 * The vIOMMU family on the selftest mock: IOMMU_VIOMMU_ALLOC (with and without the mock's
 * driver data), IOMMU_VDEVICE_ALLOC, nested HWPTs on a vIOMMU, HWPT_INVALIDATE on a vIOMMU
 * (the mock device's cache, read back with DEV_CHECK_CACHE), IOMMU_VEVENTQ_ALLOC and its
 * descriptor (read / poll / lost events) fed by TRIGGER_VEVENT, and the object lifetimes
 * (EBUSY while held, the vDEVICE tombstone when its device goes first). Needs
 * CONFIG_IOMMUFD_TEST on a kernel (else SKIP) and --selftest-ops under uiommufd.
 */
#include "harness.h"
#include <poll.h>

#define CF_IOMMU_TEST_CMD CF_IO(0xa0)
enum { CF_OP_MOCK_DOMAIN = 2, CF_OP_MOCK_DOMAIN_REPLACE = 10, CF_OP_DEV_CHECK_CACHE = 16, CF_OP_TRIGGER_VEVENT = 17 };
#define CF_HWPT_ALLOC_NEST_PARENT 1u
#define CF_HWPT_DATA_SELFTEST 0xdeadu
#define CF_VIOMMU_TYPE_SELFTEST 0xdeadbeefu
#define CF_VIOMMU_INVALIDATE_SELFTEST 0xdeadbeefu
#define CF_VEVENTQ_TYPE_SELFTEST 0xbeefbeefu
#define CF_VEVENTQ_LOST_EVENTS 1u
#define CF_DEV_CACHE_DEFAULT 0xbaddadu

struct cf_test_cmd {
    uint32_t size, op, id, reserved;
    union {
        struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id; } mock_domain;
        struct { uint32_t pt_id; } replace;
        struct { uint32_t id, cache; } check_cache;
        struct { uint32_t dev_id; } trigger_vevent;
        uint8_t bytes[48];
    };
    uint32_t last, pad;
};
_Static_assert(sizeof(struct cf_test_cmd) == 72, "iommu_test_cmd");

struct cf_viommu_selftest { uint32_t in_data, out_data; cf_u64 out_mmap_offset, out_mmap_length; };
struct cf_viommu_inv { uint32_t flags, vdev_id, cache_id; };
struct cf_vevent_header { uint32_t flags, sequence; };
struct cf_hwpt_selftest { uint32_t iotlb; };
_Static_assert(sizeof(struct cf_viommu_selftest) == 24, "iommu_viommu_selftest");
_Static_assert(sizeof(struct cf_viommu_inv) == 12, "iommu_viommu_invalidate_selftest");
_Static_assert(sizeof(struct cf_vevent_header) == 8, "iommufd_vevent_header");

static int test_cmd(int fd, struct cf_test_cmd *c) { return ioctl(fd, CF_IOMMU_TEST_CMD, c); }

struct setup { int fd; uint32_t ioas, stdev, idev, parent; };

static struct setup set_up(void) {
    struct setup s = { .fd = cf_open() };
    struct cf_test_cmd probe = { .size = sizeof probe, .op = 0 };
    if (test_cmd(s.fd, &probe) != 0 && errno == ENOTTY) SKIP("IOMMU_TEST_CMD is not available (CONFIG_IOMMUFD_TEST)");
    s.ioas = cf_ioas(s.fd);
    struct cf_test_cmd mock = { .size = sizeof mock, .op = CF_OP_MOCK_DOMAIN, .id = s.ioas };
    ASSERT_OK(test_cmd(s.fd, &mock));
    s.stdev = mock.mock_domain.out_stdev_id;
    s.idev = mock.mock_domain.out_idev_id;
    struct cf_hwpt_alloc a = { .size = sizeof a, .flags = CF_HWPT_ALLOC_NEST_PARENT, .dev_id = s.idev, .pt_id = s.ioas };
    ASSERT_OK(ioctl(s.fd, CF_IOMMU_HWPT_ALLOC, &a));
    s.parent = a.out_hwpt_id;
    return s;
}

static int viommu_alloc(int fd, uint32_t dev, uint32_t hwpt, uint32_t type, void *data, uint32_t len, uint32_t *out) {
    struct cf_viommu_alloc c = { .size = sizeof c, .type = type, .dev_id = dev, .hwpt_id = hwpt,
                                 .data_len = len, .data_uptr = (uintptr_t)data };
    int r = ioctl(fd, CF_IOMMU_VIOMMU_ALLOC, &c);
    if (r == 0 && out) *out = c.out_viommu_id;
    return r;
}

static int vdevice_alloc(int fd, uint32_t viommu, uint32_t dev, uint64_t virt, uint32_t *out) {
    struct cf_vdevice_alloc c = { .size = sizeof c, .viommu_id = viommu, .dev_id = dev, .virt_id = virt };
    int r = ioctl(fd, CF_IOMMU_VDEVICE_ALLOC, &c);
    if (r == 0 && out) *out = c.out_vdevice_id;
    return r;
}

static int veventq_alloc(int fd, uint32_t viommu, uint32_t type, uint32_t depth, uint32_t *id, int *qfd) {
    struct cf_veventq_alloc c = { .size = sizeof c, .viommu_id = viommu, .type = type, .veventq_depth = depth };
    int r = ioctl(fd, CF_IOMMU_VEVENTQ_ALLOC, &c);
    if (r == 0) { *id = c.out_veventq_id; *qfd = (int)c.out_veventq_fd; }
    return r;
}

static int invalidate(int fd, uint32_t id, const void *reqs, uint32_t type, uint32_t len, uint32_t *num) {
    struct cf_hwpt_invalidate c = { .size = sizeof c, .hwpt_id = id, .data_uptr = (uintptr_t)reqs,
                                    .data_type = type, .entry_len = len, .entry_num = *num };
    int r = ioctl(fd, CF_IOMMU_HWPT_INVALIDATE, &c);
    *num = c.entry_num;
    return r;
}

static int check_cache(int fd, uint32_t idev, uint32_t id, uint32_t value) {
    struct cf_test_cmd c = { .size = sizeof c, .op = CF_OP_DEV_CHECK_CACHE, .id = idev, .check_cache = { id, value } };
    return test_cmd(fd, &c);
}

static int replace(int fd, uint32_t stdev, uint32_t pt) {
    struct cf_test_cmd c = { .size = sizeof c, .op = CF_OP_MOCK_DOMAIN_REPLACE, .id = stdev, .replace = { pt } };
    return test_cmd(fd, &c);
}

static int trigger_vevent(int fd, uint32_t idev) {
    struct cf_test_cmd c = { .size = sizeof c, .op = CF_OP_TRIGGER_VEVENT, .trigger_vevent = { idev } };
    return test_cmd(fd, &c);
}

static int alloc_nested(struct setup *s, uint32_t pt, uint32_t *out) {
    struct cf_hwpt_selftest data = { .iotlb = 0xbadbeef };
    struct cf_hwpt_alloc a = { .size = sizeof a, .dev_id = s->idev, .pt_id = pt, .data_type = CF_HWPT_DATA_SELFTEST,
                               .data_len = sizeof data, .data_uptr = (uintptr_t)&data };
    int r = ioctl(s->fd, CF_IOMMU_HWPT_ALLOC, &a);
    if (r == 0) *out = a.out_hwpt_id;
    return r;
}

TEST(viommu_alloc_rules) {
    struct setup s = set_up();
    uint32_t viommu = 0, plain = 0;
    EXPECT_ERRNO(EOPNOTSUPP, viommu_alloc(s.fd, s.idev, s.parent, 0, NULL, 0, &viommu));     /* DEFAULT */
    EXPECT_ERRNO(ENOENT, viommu_alloc(s.fd, 9999, s.parent, CF_VIOMMU_TYPE_SELFTEST, NULL, 0, &viommu));
    EXPECT_ERRNO(EOPNOTSUPP, viommu_alloc(s.fd, s.idev, s.parent, 1, NULL, 0, &viommu));     /* ARM_SMMUV3 */
    EXPECT_ERRNO(ENOENT, viommu_alloc(s.fd, s.idev, s.ioas, CF_VIOMMU_TYPE_SELFTEST, NULL, 0, &viommu));
    struct cf_hwpt_alloc a = { .size = sizeof a, .dev_id = s.idev, .pt_id = s.ioas };
    ASSERT_OK(ioctl(s.fd, CF_IOMMU_HWPT_ALLOC, &a));
    plain = a.out_hwpt_id;
    EXPECT_ERRNO(EINVAL, viommu_alloc(s.fd, s.idev, plain, CF_VIOMMU_TYPE_SELFTEST, NULL, 0, &viommu));
    ASSERT_OK(viommu_alloc(s.fd, s.idev, s.parent, CF_VIOMMU_TYPE_SELFTEST, NULL, 0, &viommu));
    EXPECT_ERRNO(EBUSY, cf_destroy(s.fd, s.parent));                 /* the vIOMMU holds its HWPT */
    /* Driver data: a loopback word and the mmap region. */
    struct cf_viommu_selftest data = { .in_data = 0xbadbeef };
    uint32_t viommu2 = 0;
    EXPECT_ERRNO(EINVAL, viommu_alloc(s.fd, s.idev, s.parent, CF_VIOMMU_TYPE_SELFTEST, &data, 4, &viommu2));
    ASSERT_OK(viommu_alloc(s.fd, s.idev, s.parent, CF_VIOMMU_TYPE_SELFTEST, &data, sizeof data, &viommu2));
    EXPECT_OK(data.out_data == 0xbadbeef ? 0 : -1);
    EXPECT_OK(data.out_mmap_length == 2 * 4096 && data.out_mmap_offset != 0 ? 0 : -1);
    EXPECT_OK(cf_destroy(s.fd, viommu2));
    EXPECT_OK(cf_destroy(s.fd, viommu));
    EXPECT_OK(cf_destroy(s.fd, s.parent));
    EXPECT_OK(cf_destroy(s.fd, plain));
    close(s.fd);
}

TEST(vdevice_and_nested) {
    struct setup s = set_up();
    uint32_t viommu = 0, vdev = 0, vdev2 = 0, nested = 0;
    ASSERT_OK(viommu_alloc(s.fd, s.idev, s.parent, CF_VIOMMU_TYPE_SELFTEST, NULL, 0, &viommu));
    EXPECT_ERRNO(ENOENT, vdevice_alloc(s.fd, 9999, s.idev, 0x99, &vdev));
    EXPECT_ERRNO(ENOENT, vdevice_alloc(s.fd, viommu, 9999, 0x99, &vdev));
    ASSERT_OK(alloc_nested(&s, viommu, &nested));
    EXPECT_ERRNO(ENOENT, replace(s.fd, s.stdev, nested));             /* no vDEVICE yet */
    ASSERT_OK(vdevice_alloc(s.fd, viommu, s.idev, 0x99, &vdev));
    EXPECT_ERRNO(EEXIST, vdevice_alloc(s.fd, viommu, s.idev, 0x88, &vdev2));    /* one per device */
    EXPECT_ERRNO(EBUSY, cf_destroy(s.fd, viommu));                    /* held by vDEVICE and nested HWPT */
    EXPECT_OK(replace(s.fd, s.stdev, nested));
    EXPECT_ERRNO(EBUSY, cf_destroy(s.fd, nested));
    EXPECT_OK(replace(s.fd, s.stdev, s.ioas));
    EXPECT_OK(cf_destroy(s.fd, nested));
    EXPECT_OK(cf_destroy(s.fd, vdev));
    EXPECT_OK(cf_destroy(s.fd, viommu));
    close(s.fd);
}

TEST(vdevice_tombstone) {
    struct setup s = set_up();
    uint32_t viommu = 0, vdev = 0;
    ASSERT_OK(viommu_alloc(s.fd, s.idev, s.parent, CF_VIOMMU_TYPE_SELFTEST, NULL, 0, &viommu));
    ASSERT_OK(vdevice_alloc(s.fd, viommu, s.idev, 0x99, &vdev));
    EXPECT_OK(cf_destroy(s.fd, s.stdev));                             /* the device goes first */
    EXPECT_ERRNO(ENOENT, cf_destroy(s.fd, vdev));
    EXPECT_OK(cf_destroy(s.fd, viommu));                              /* no longer held */
    uint32_t again = cf_ioas(s.fd);
    EXPECT_OK(again != vdev ? 0 : -1);                                /* the ID stays taken */
    close(s.fd);
}

TEST(viommu_invalidate_cache) {
    struct setup s = set_up();
    uint32_t viommu = 0, vdev = 0, num;
    struct cf_viommu_inv reqs[2] = {{ 0 }};
    ASSERT_OK(viommu_alloc(s.fd, s.idev, s.parent, CF_VIOMMU_TYPE_SELFTEST, NULL, 0, &viommu));
    ASSERT_OK(vdevice_alloc(s.fd, viommu, s.idev, 0x99, &vdev));
    for (uint32_t i = 0; i < 4; i++) EXPECT_OK(check_cache(s.fd, s.idev, i, CF_DEV_CACHE_DEFAULT));
    num = 0;
    EXPECT_OK(invalidate(s.fd, viommu, reqs, CF_VIOMMU_INVALIDATE_SELFTEST, sizeof *reqs, &num));
    num = 1;
    EXPECT_ERRNO(EINVAL, invalidate(s.fd, viommu, reqs, CF_VIOMMU_INVALIDATE_SELFTEST + 1, sizeof *reqs, &num));
    EXPECT_OK(num == 0 ? 0 : -1);
    num = 1; reqs[0] = (struct cf_viommu_inv){ 0, 0x9, 0 };
    EXPECT_ERRNO(EINVAL, invalidate(s.fd, viommu, reqs, CF_VIOMMU_INVALIDATE_SELFTEST, sizeof *reqs, &num));
    num = 2; reqs[0] = (struct cf_viommu_inv){ 0, 0x99, 0 }; reqs[1] = (struct cf_viommu_inv){ 0xffffffff, 0x99, 1 };
    EXPECT_ERRNO(EOPNOTSUPP, invalidate(s.fd, viommu, reqs, CF_VIOMMU_INVALIDATE_SELFTEST, sizeof *reqs, &num));
    EXPECT_OK(num == 1 ? 0 : -1);
    EXPECT_OK(check_cache(s.fd, s.idev, 0, 0));
    EXPECT_OK(check_cache(s.fd, s.idev, 1, CF_DEV_CACHE_DEFAULT));
    num = 1; reqs[0] = (struct cf_viommu_inv){ 1, 0x99, 0 };
    EXPECT_OK(invalidate(s.fd, viommu, reqs, CF_VIOMMU_INVALIDATE_SELFTEST, sizeof *reqs, &num));
    for (uint32_t i = 0; i < 4; i++) EXPECT_OK(check_cache(s.fd, s.idev, i, 0));
    EXPECT_ERRNO(EINVAL, check_cache(s.fd, s.idev, 4, 0));
    EXPECT_OK(cf_destroy(s.fd, vdev));
    EXPECT_OK(cf_destroy(s.fd, viommu));
    close(s.fd);
}

static int read_events(int qfd, int expect_count, uint32_t *seq0, int *lost) {
    struct { struct cf_vevent_header h; uint32_t virt_id; } buf[8];
    ssize_t n = read(qfd, buf, sizeof buf);
    if (n < 0) return -1;
    unsigned char *p = (unsigned char *)buf, *end = p + n;
    int count = 0;
    *lost = 0;
    while (p < end) {
        struct cf_vevent_header *h = (struct cf_vevent_header *)p;
        if (count == 0) *seq0 = h->sequence;
        if (h->flags & CF_VEVENTQ_LOST_EVENTS) { *lost = 1; p += sizeof *h; continue; }
        if (*(uint32_t *)(p + sizeof *h) != 0x99) return -1;
        p += sizeof *h + 4;
        count++;
    }
    return count == expect_count ? 0 : -1;
}

TEST(veventq_read_poll_lost) {
    struct setup s = set_up();
    uint32_t viommu = 0, vdev = 0, nested = 0, qid = 0, qid2 = 0;
    int qfd = -1, qfd2 = -1, lost = 0;
    uint32_t seq = 0;
    ASSERT_OK(viommu_alloc(s.fd, s.idev, s.parent, CF_VIOMMU_TYPE_SELFTEST, NULL, 0, &viommu));
    EXPECT_ERRNO(EOPNOTSUPP, veventq_alloc(s.fd, viommu, 0, 2, &qid, &qfd));
    EXPECT_ERRNO(EINVAL, veventq_alloc(s.fd, viommu, CF_VEVENTQ_TYPE_SELFTEST, 0, &qid, &qfd));
    EXPECT_ERRNO(ENOENT, veventq_alloc(s.fd, 9999, CF_VEVENTQ_TYPE_SELFTEST, 2, &qid, &qfd));
    ASSERT_OK(veventq_alloc(s.fd, viommu, CF_VEVENTQ_TYPE_SELFTEST, 2, &qid, &qfd));
    EXPECT_ERRNO(EEXIST, veventq_alloc(s.fd, viommu, CF_VEVENTQ_TYPE_SELFTEST, 2, &qid2, &qfd2));
    ASSERT_OK(vdevice_alloc(s.fd, viommu, s.idev, 0x99, &vdev));
    ASSERT_OK(alloc_nested(&s, viommu, &nested));
    EXPECT_ERRNO(ENOENT, trigger_vevent(s.fd, s.idev));               /* not attached through the vIOMMU */
    ASSERT_OK(replace(s.fd, s.stdev, nested));
    struct pollfd pfd = { .fd = qfd, .events = POLLIN };
    EXPECT_OK(poll(&pfd, 1, 0) == 0 ? 0 : -1);
    EXPECT_OK(trigger_vevent(s.fd, s.idev));
    EXPECT_OK(poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN) ? 0 : -1);
    EXPECT_OK(read_events(qfd, 1, &seq, &lost));
    EXPECT_OK(seq == 0 && !lost ? 0 : -1);
    /* Three events into a queue of two: the third is lost. */
    EXPECT_OK(trigger_vevent(s.fd, s.idev));
    EXPECT_OK(trigger_vevent(s.fd, s.idev));
    EXPECT_OK(trigger_vevent(s.fd, s.idev));
    EXPECT_OK(read_events(qfd, 2, &seq, &lost));
    EXPECT_OK(seq == 1 && lost ? 0 : -1);
    char small[4];
    EXPECT_OK(read(qfd, small, sizeof small) == 0 ? 0 : -1);
    EXPECT_ERRNO(EBUSY, cf_destroy(s.fd, qid));                       /* the descriptor holds it */
    EXPECT_ERRNO(EBUSY, cf_destroy(s.fd, viommu));
    close(qfd);
    EXPECT_OK(cf_destroy(s.fd, qid));
    EXPECT_OK(replace(s.fd, s.stdev, s.ioas));
    EXPECT_OK(cf_destroy(s.fd, nested));
    EXPECT_OK(cf_destroy(s.fd, vdev));
    EXPECT_OK(cf_destroy(s.fd, viommu));
    close(s.fd);
}

int main(int argc, char **argv) { return cf_main(argc, argv); }
