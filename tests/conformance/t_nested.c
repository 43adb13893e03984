/*
 * Nested HWPTs, user cache invalidation and fault queues (IOPF) on the selftest mock: what the
 * kernel's alloc_hwpt_nested selftest exercises, checked the way a VMM's vIOMMU code meets it.
 * A nesting-parent HWPT, nested HWPTs with the mock's driver data, HWPT_INVALIDATE with its
 * written-back entry_num, IOMMU_FAULT_QUEUE_ALLOC and its descriptor (read / write / poll),
 * and TRIGGER_IOPF from the mock device. Needs CONFIG_IOMMUFD_TEST on a kernel (else SKIP) and
 * --selftest-ops under uiommufd (run.sh passes it).
 */
#include "harness.h"
#include <poll.h>

#define CF_IOMMU_TEST_CMD CF_IO(0xa0)
enum { CF_OP_MOCK_DOMAIN = 2, CF_OP_MOCK_DOMAIN_REPLACE = 10, CF_OP_MD_CHECK_IOTLB = 14, CF_OP_TRIGGER_IOPF = 15 };
#define CF_HWPT_ALLOC_NEST_PARENT 1u
#define CF_HWPT_FAULT_ID_VALID 4u
#define CF_HWPT_DATA_SELFTEST 0xdeadu
#define CF_INVALIDATE_DATA_SELFTEST 0xdeadbeefu
#define CF_IOTLB_DEFAULT 0xbadbeefu

struct cf_test_cmd {
    uint32_t size, op, id, reserved;
    union {
        struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id; } mock_domain;
        struct { uint32_t pt_id; } replace;
        struct { uint32_t id, iotlb; } check_iotlb;
        struct { uint32_t dev_id, pasid, grpid, perm; cf_u64 addr; } trigger_iopf;
        uint8_t bytes[48];
    };
    uint32_t last, pad;
};
_Static_assert(sizeof(struct cf_test_cmd) == 72, "iommu_test_cmd");

struct cf_hwpt_selftest { uint32_t iotlb; };
struct cf_invalidate_selftest { uint32_t flags, iotlb_id; };
struct cf_pgfault {
    uint32_t flags, dev_id, pasid, grpid, perm, reserved;
    cf_u64 addr;
    uint32_t length, cookie;
};
struct cf_page_response { uint32_t cookie, code; };
_Static_assert(sizeof(struct cf_pgfault) == 40, "iommu_hwpt_pgfault");
_Static_assert(sizeof(struct cf_page_response) == 8, "iommu_hwpt_page_response");

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

static int alloc_nested(struct setup *s, uint32_t pt, uint32_t flags, uint32_t type, const void *data,
                        uint32_t len, uint32_t fault_id, uint32_t *out) {
    struct cf_hwpt_alloc a = { .size = sizeof a, .flags = flags, .dev_id = s->idev, .pt_id = pt, .data_type = type,
                               .data_len = len, .data_uptr = (uintptr_t)data, .fault_id = fault_id };
    int r = ioctl(s->fd, CF_IOMMU_HWPT_ALLOC, &a);
    if (r == 0 && out) *out = a.out_hwpt_id;
    return r;
}

static int invalidate(int fd, uint32_t hwpt, const void *reqs, uint32_t type, uint32_t len, uint32_t *num) {
    struct cf_hwpt_invalidate c = { .size = sizeof c, .hwpt_id = hwpt, .data_uptr = (uintptr_t)reqs,
                                    .data_type = type, .entry_len = len, .entry_num = *num };
    int r = ioctl(fd, CF_IOMMU_HWPT_INVALIDATE, &c);
    *num = c.entry_num;
    return r;
}

static int check_iotlb(int fd, uint32_t hwpt, uint32_t id, uint32_t value) {
    struct cf_test_cmd c = { .size = sizeof c, .op = CF_OP_MD_CHECK_IOTLB, .id = hwpt,
                             .check_iotlb = { .id = id, .iotlb = value } };
    return test_cmd(fd, &c);
}

static int replace(int fd, uint32_t stdev, uint32_t pt) {
    struct cf_test_cmd c = { .size = sizeof c, .op = CF_OP_MOCK_DOMAIN_REPLACE, .id = stdev, .replace = { pt } };
    return test_cmd(fd, &c);
}

TEST(nested_alloc_rules) {
    struct setup s = set_up();
    struct cf_hwpt_selftest data = { CF_IOTLB_DEFAULT };
    uint32_t plain = 0, nested = 0, id = 0;
    struct cf_hwpt_alloc a = { .size = sizeof a, .dev_id = s.idev, .pt_id = s.ioas };
    ASSERT_OK(ioctl(s.fd, CF_IOMMU_HWPT_ALLOC, &a));
    plain = a.out_hwpt_id;
    EXPECT_ERRNO(EINVAL, alloc_nested(&s, s.parent, 0, 0, &data, sizeof data, 0, &id));
    EXPECT_ERRNO(EOPNOTSUPP, alloc_nested(&s, s.parent, 0, CF_HWPT_DATA_SELFTEST + 1, &data, sizeof data, 0, &id));
    EXPECT_ERRNO(EINVAL, alloc_nested(&s, s.parent, 0, CF_HWPT_DATA_SELFTEST, &data, sizeof data - 1, 0, &id));
    EXPECT_ERRNO(EFAULT, alloc_nested(&s, s.parent, 0, CF_HWPT_DATA_SELFTEST, NULL, sizeof data, 0, &id));
    EXPECT_ERRNO(EOPNOTSUPP, alloc_nested(&s, s.parent, CF_HWPT_ALLOC_NEST_PARENT, CF_HWPT_DATA_SELFTEST, &data, sizeof data, 0, &id));
    EXPECT_ERRNO(EINVAL, alloc_nested(&s, plain, 0, CF_HWPT_DATA_SELFTEST, &data, sizeof data, 0, &id));
    EXPECT_ERRNO(ENOENT, alloc_nested(&s, s.parent, CF_HWPT_FAULT_ID_VALID, CF_HWPT_DATA_SELFTEST, &data, sizeof data, UINT32_MAX, &id));
    ASSERT_OK(alloc_nested(&s, s.parent, 0, CF_HWPT_DATA_SELFTEST, &data, sizeof data, 0, &nested));
    for (uint32_t k = 0; k < 4; k++) EXPECT_OK(check_iotlb(s.fd, nested, k, CF_IOTLB_DEFAULT));
    EXPECT_ERRNO(EINVAL, check_iotlb(s.fd, nested, 4, CF_IOTLB_DEFAULT));
    EXPECT_ERRNO(EINVAL, alloc_nested(&s, nested, 0, CF_HWPT_DATA_SELFTEST, &data, sizeof data, 0, &id));
    EXPECT_ERRNO(EBUSY, cf_destroy(s.fd, s.parent));
    /* Attached: the nested HWPT is busy; the parent too, until its child goes. */
    EXPECT_OK(replace(s.fd, s.stdev, nested));
    EXPECT_ERRNO(EBUSY, cf_destroy(s.fd, nested));
    EXPECT_OK(replace(s.fd, s.stdev, s.ioas));
    EXPECT_OK(cf_destroy(s.fd, nested));
    EXPECT_OK(cf_destroy(s.fd, s.parent));
    EXPECT_OK(cf_destroy(s.fd, plain));
    close(s.fd);
}

TEST(invalidate_entry_num) {
    struct setup s = set_up();
    struct cf_hwpt_selftest data = { CF_IOTLB_DEFAULT };
    struct cf_invalidate_selftest reqs[2] = { 0 };
    uint32_t nested = 0, num;
    ASSERT_OK(alloc_nested(&s, s.parent, 0, CF_HWPT_DATA_SELFTEST, &data, sizeof data, 0, &nested));
    /* A paging HWPT is no target: EINVAL since 6.13 (6.12 said ENOENT). */
    num = 1;
    errno = 0;
    int r = invalidate(s.fd, s.parent, reqs, CF_INVALIDATE_DATA_SELFTEST, sizeof reqs[0], &num);
    if (r != -1 || !(errno == EINVAL || (errno == ENOENT && !cf_emulated(s.fd))))
        FAIL("invalidate of a paging HWPT: %d/%s, expected EINVAL", r, cf_errname(errno));
    CHECK_EQ(num, 0);
    num = 0;
    EXPECT_OK(invalidate(s.fd, nested, reqs, CF_INVALIDATE_DATA_SELFTEST, sizeof reqs[0], &num));
    CHECK_EQ(num, 0);
    num = 1;
    EXPECT_ERRNO(EINVAL, invalidate(s.fd, nested, reqs, 0xdadbeef, sizeof reqs[0], &num));
    num = 1;
    EXPECT_ERRNO(EINVAL, invalidate(s.fd, nested, reqs, CF_INVALIDATE_DATA_SELFTEST, sizeof reqs[0] + 1, &num));
    num = 1;
    EXPECT_ERRNO(EINVAL, invalidate(s.fd, nested, reqs, CF_INVALIDATE_DATA_SELFTEST, 1, &num));
    num = 1;
    EXPECT_ERRNO(EINVAL, invalidate(s.fd, nested, NULL, CF_INVALIDATE_DATA_SELFTEST, sizeof reqs[0], &num));
    CHECK_EQ(num, 0);
    /* The first request done, the second refused: entry_num is 1. */
    num = 2;
    reqs[1].flags = 0xffffffff;
    reqs[1].iotlb_id = 1;
    EXPECT_ERRNO(EOPNOTSUPP, invalidate(s.fd, nested, reqs, CF_INVALIDATE_DATA_SELFTEST, sizeof reqs[0], &num));
    CHECK_EQ(num, 1);
    EXPECT_OK(check_iotlb(s.fd, nested, 0, 0));
    EXPECT_OK(check_iotlb(s.fd, nested, 1, CF_IOTLB_DEFAULT));
    num = 2;
    reqs[1].flags = 0;
    reqs[1].iotlb_id = 4;
    EXPECT_ERRNO(EINVAL, invalidate(s.fd, nested, reqs, CF_INVALIDATE_DATA_SELFTEST, sizeof reqs[0], &num));
    CHECK_EQ(num, 1);
    num = 1;
    reqs[0].flags = 1;   /* ALL */
    EXPECT_OK(invalidate(s.fd, nested, reqs, CF_INVALIDATE_DATA_SELFTEST, sizeof reqs[0], &num));
    CHECK_EQ(num, 1);
    for (uint32_t k = 0; k < 4; k++) EXPECT_OK(check_iotlb(s.fd, nested, k, 0));
    close(s.fd);
}

TEST(fault_queue_iopf) {
    struct setup s = set_up();
    struct cf_hwpt_selftest data = { CF_IOTLB_DEFAULT };
    struct cf_fault_alloc f = { .size = sizeof f, .flags = 1 };
    EXPECT_ERRNO(EOPNOTSUPP, ioctl(s.fd, CF_IOMMU_FAULT_QUEUE_ALLOC, &f));
    f.flags = 0;
    ASSERT_OK(ioctl(s.fd, CF_IOMMU_FAULT_QUEUE_ALLOC, &f));
    int qfd = (int)f.out_fault_fd;
    CHECK(f.out_fault_id != 0 && qfd > 0);
    uint32_t iopf = 0;
    ASSERT_OK(alloc_nested(&s, s.parent, CF_HWPT_FAULT_ID_VALID, CF_HWPT_DATA_SELFTEST, &data, sizeof data, f.out_fault_id, &iopf));
    ASSERT_OK(replace(s.fd, s.stdev, iopf));
    EXPECT_ERRNO(EBUSY, cf_destroy(s.fd, iopf));
    EXPECT_ERRNO(EBUSY, cf_destroy(s.fd, f.out_fault_id));
    struct cf_pgfault fault[2];
    memset(fault, 0xcc, sizeof fault);
    struct pollfd p = { .fd = qfd, .events = POLLIN };
    CHECK_EQ(poll(&p, 1, 0), 0);
    CHECK_EQ(read(qfd, fault, sizeof fault[0]), 0);          /* empty: 0, never blocks */
    EXPECT_ERRNO(ESPIPE, read(qfd, fault, sizeof fault[0] - 1));
    struct cf_test_cmd trig = { .size = sizeof trig, .op = CF_OP_TRIGGER_IOPF,
                                .trigger_iopf = { .dev_id = s.idev, .pasid = 1, .grpid = 2, .perm = 3, .addr = 0xdeadbeaf } };
    ASSERT_OK(test_cmd(s.fd, &trig));
    CHECK_EQ(poll(&p, 1, 1000), 1);
    CHECK(p.revents & POLLIN);
    /* A buffer that cannot be written: EFAULT, and the request stays queued. */
    void *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_ERRNO(EFAULT, read(qfd, ro, sizeof fault[0]));
    munmap(ro, 4096);
    /* A large read (a multiple of the record size) returns what is queued. */
    size_t big = 4096 * sizeof fault[0];
    struct cf_pgfault *many = malloc(big);
    CHECK_EQ(read(qfd, many, big), sizeof fault[0]);
    memcpy(fault, many, sizeof fault[0]);
    free(many);
    CHECK_EQ(fault[0].flags, 3);                               /* PASID_VALID | LAST_PAGE */
    CHECK_EQ(fault[0].dev_id, s.idev);
    CHECK_EQ(fault[0].pasid, 1);
    CHECK_EQ(fault[0].grpid, 2);
    CHECK_EQ(fault[0].perm, 3);
    CHECK_EQ(fault[0].addr, 0xdeadbeaf);
    CHECK_EQ(fault[0].length, 0);
    CHECK(fault[0].cookie != 0);
    CHECK_EQ(read(qfd, fault, sizeof fault[0]), 0);
    struct cf_page_response resp[2] = { { fault[0].cookie, 2 }, { fault[0].cookie, 0 } };
    EXPECT_ERRNO(ESPIPE, write(qfd, resp, sizeof resp[0] - 1));
    EXPECT_ERRNO(EINVAL, write(qfd, resp, sizeof resp[0]));    /* code 2 */
    resp[0].code = 0;
    CHECK_EQ(write(qfd, resp, sizeof resp), sizeof resp[0]);   /* the second: cookie gone */
    EXPECT_ERRNO(EINVAL, write(qfd, resp, sizeof resp[0]));
    /* Pending requests are answered for the device when it leaves the HWPT. */
    ASSERT_OK(test_cmd(s.fd, &trig));
    EXPECT_OK(replace(s.fd, s.stdev, s.parent));
    CHECK_EQ(read(qfd, fault, sizeof fault[0]), 0);
    EXPECT_OK(cf_destroy(s.fd, iopf));
    EXPECT_ERRNO(EBUSY, cf_destroy(s.fd, f.out_fault_id));    /* the descriptor holds it */
    close(qfd);
    EXPECT_OK(cf_destroy(s.fd, f.out_fault_id));
    close(s.fd);
}

int main(int argc, char **argv) { return cf_main(argc, argv); }
