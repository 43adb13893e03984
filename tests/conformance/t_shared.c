/*
 * One iommufd shared by several processes, as seed 002 needs it: a manager opens /dev/iommu
 * and hands the descriptor to a VMM over SCM_RIGHTS; a forked child keeps using its parent's
 * iommufd. On Linux the file is one kernel object, so every holder sees the same IOAS, HWPTs
 * and pins, and the context lives until the last holder closes it.
 *
 * Under uiommufd this needs the shared state of `uiommufd run --shared` (tests/conformance/
 * run.sh runs this binary that way, with --selftest-ops for the mock device and access
 * objects); on a kernel it needs CONFIG_IOMMUFD_TEST for the same two (else SKIP).
 */
#include "harness.h"
#include <sys/socket.h>
#include <sys/uio.h>

/* IOMMU_TEST_CMD (the kernel's selftest command, CONFIG_IOMMUFD_TEST). */
#define CF_IOMMU_TEST_CMD CF_IO(0xa0)
enum { CF_TEST_OP_MOCK_DOMAIN = 2, CF_TEST_OP_CREATE_ACCESS = 5, CF_TEST_OP_ACCESS_RW = 8 };
#define CF_ACCESS_RW_WRITE (1u << 0)
#define CF_MOCK_APERTURE_START (1ull << 24)
#define CF_MOCK_APERTURE_LAST ((1ull << 31) - 1)

struct cf_test_cmd {
    uint32_t size;
    uint32_t op;
    uint32_t id;
    uint32_t reserved;
    union {
        struct { uint32_t out_stdev_id; uint32_t out_hwpt_id; uint32_t out_idev_id; } mock_domain;
        struct { uint32_t out_access_fd; uint32_t flags; } create_access;
        struct { cf_u64 iova; cf_u64 length; cf_u64 uptr; uint32_t flags; } access_rw;
        uint8_t bytes[48];
    };
    uint32_t last;
    uint32_t pad;
};
_Static_assert(sizeof(struct cf_test_cmd) == 72, "iommu_test_cmd is 72 bytes");

#define B_LENGTH (256 * 1024)

/* What process B reports back to A. */
struct b_report { uint64_t iova; uint64_t length; uint32_t stdev_id; uint32_t hwpt_id; int error; int step; };

static int send_fd(int sock, int fd, const void *data, size_t length) {
    union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(int))]; } control;
    struct iovec iov = { (void *)data, length };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (fd >= 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.bytes;
        msg.msg_controllen = sizeof control.bytes;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    return sendmsg(sock, &msg, 0) == (ssize_t)length ? 0 : -1;
}

static int receive_fd(int sock, void *data, size_t length, int *fd) {
    union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(int))]; } control;
    struct iovec iov = { data, length };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes,
                          .msg_controllen = sizeof control.bytes };
    *fd = -1;
    if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != (ssize_t)length) return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) memcpy(fd, CMSG_DATA(c), sizeof *fd);
    return 0;
}

static int test_cmd(int fd, struct cf_test_cmd *cmd) { return ioctl(fd, CF_IOMMU_TEST_CMD, cmd); }

/* Skips the test on a kernel without the selftest mock. */
static void need_mock(int fd) {
    struct cf_test_cmd cmd = { .size = sizeof cmd, .op = 0 };
    if (test_cmd(fd, &cmd) != 0 && errno == ENOTTY) SKIP("IOMMU_TEST_CMD is not available (CONFIG_IOMMUFD_TEST)");
}

static uint8_t pattern(uint64_t i) { return (uint8_t)(i * 7 + 3); }

/* Process B (this binary exec'ed with --process-b SOCKET): receives the iommufd and the IOAS
 * over SCM_RIGHTS, attaches a mock device, maps memory of its own, reports, and waits until A
 * is done before closing. A program that was never told about the descriptor uses it as is. */
static int process_b(int sock) {
    struct b_report report = { .error = 0 };
    uint32_t ioas_id = 0;
    int fd;
    if (receive_fd(sock, &ioas_id, sizeof ioas_id, &fd) != 0 || fd < 0) return 2;
    uint8_t *buffer = mmap(NULL, B_LENGTH, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buffer == MAP_FAILED) return 3;
    for (uint64_t i = 0; i < B_LENGTH; i++) buffer[i] = pattern(i);
    struct cf_test_cmd mock = { .size = sizeof mock, .op = CF_TEST_OP_MOCK_DOMAIN, .id = ioas_id };
    report.step = 1;
    if (test_cmd(fd, &mock) != 0) { report.error = errno; goto out; }
    report.stdev_id = mock.mock_domain.out_stdev_id;
    report.hwpt_id = mock.mock_domain.out_hwpt_id;
    report.step = 2;
    report.iova = 0;
    if (cf_map(fd, ioas_id, buffer, B_LENGTH, &report.iova, CF_RW) != 0) { report.error = errno; goto out; }
    report.length = B_LENGTH;
    report.step = 3;
out:
    if (send_fd(sock, -1, &report, sizeof report) != 0) return 4;
    char done;
    if (read(sock, &done, 1) != 1) return 5;
    /* The device goes with B; the mapping stays in the IOAS, which A owns. */
    if (report.stdev_id && cf_destroy(fd, report.stdev_id) != 0) return 6;
    close(fd);
    return report.error ? 7 : 0;
}

static pid_t spawn_b(int sock) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return -1;
    self[n] = 0;
    pid_t pid = fork();
    if (pid == 0) {
        char number[16];
        snprintf(number, sizeof number, "%d", sock);
        fcntl(sock, F_SETFD, 0);   /* only B's end crosses the exec */
        execl(self, self, "--process-b", number, (char *)NULL);
        _exit(127);
    }
    return pid;
}

TEST(seed002_fd_passed_over_scm_rights) {
    int fd = cf_open();
    need_mock(fd);
    uint32_t ioas_id = cf_ioas(fd);
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) FATAL("socketpair: %s", cf_errname(errno));
    pid_t b = spawn_b(pair[1]);
    if (b < 0) FATAL("cannot start process B");
    close(pair[1]);

    /* A passes its iommufd and the IOAS to B. */
    if (send_fd(pair[0], fd, &ioas_id, sizeof ioas_id) != 0) FATAL("sendmsg: %s", cf_errname(errno));
    struct b_report report;
    if (read(pair[0], &report, sizeof report) != (ssize_t)sizeof report) FATAL("B did not report");
    if (report.error) FATAL("B failed at step %d: %s", report.step, cf_errname(report.error));

    /* A sees B's device: its aperture now bounds the usable IOVAs of A's IOAS. */
    struct cf_iova_range ranges[4];
    struct cf_ioas_iova_ranges r = { .size = sizeof r, .ioas_id = ioas_id, .num_iovas = 4,
                                     .allowed_iovas = (uintptr_t)ranges };
    if (ioctl(fd, CF_IOMMU_IOAS_IOVA_RANGES, &r)) FAIL("IOVA_RANGES: %s", cf_errname(errno));
    else if (r.num_iovas != 1 || ranges[0].start != CF_MOCK_APERTURE_START || ranges[0].last != CF_MOCK_APERTURE_LAST)
        FAIL("IOVA_RANGES: %u ranges, first [0x%llx, 0x%llx]; want B's mock aperture", r.num_iovas,
             (unsigned long long)ranges[0].start, (unsigned long long)ranges[0].last);

    /* A sees B's mapping: an access object of A's reads B's bytes at B's IOVA, and writes them. */
    struct cf_test_cmd access = { .size = sizeof access, .op = CF_TEST_OP_CREATE_ACCESS, .id = ioas_id };
    if (test_cmd(fd, &access)) FATAL("CREATE_ACCESS: %s", cf_errname(errno));
    int access_fd = (int)access.create_access.out_access_fd;
    uint8_t bytes[64];
    struct cf_test_cmd rw = { .size = sizeof rw, .op = CF_TEST_OP_ACCESS_RW, .id = (uint32_t)access_fd,
                              .access_rw = { .iova = report.iova + 4096 - 7, .length = sizeof bytes, .uptr = (uintptr_t)bytes } };
    if (test_cmd(fd, &rw)) FAIL("ACCESS_RW read of B's IOVA: %s", cf_errname(errno));
    else for (unsigned i = 0; i < sizeof bytes; i++)
        if (bytes[i] != pattern(4096 - 7 + i)) { FAIL("byte %u at B's IOVA is 0x%02x, want 0x%02x", i, bytes[i], pattern(4096 - 7 + i)); break; }

    /* A unmaps what B mapped: the whole length comes back. */
    close(access_fd);
    uint64_t unmapped = 0;
    if (cf_unmap(fd, ioas_id, report.iova, report.length, &unmapped)) FAIL("UNMAP of B's IOVA: %s", cf_errname(errno));
    else if (unmapped != report.length) FAIL("UNMAP returned %llu, want %llu", (unsigned long long)unmapped, (unsigned long long)report.length);

    /* B detaches its device and closes; then A closes. Nothing is left (run.sh checks the
     * server's leak report). */
    if (write(pair[0], "x", 1) != 1) FAIL("cannot tell B to finish");
    int status = 0;
    if (waitpid(b, &status, 0) != b || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        FAIL("process B ended with status 0x%x", status);
    if (cf_destroy(fd, ioas_id)) FAIL("DESTROY of the IOAS after B left: %s", cf_errname(errno));
    close(pair[0]);
    close(fd);
}

TEST(forked_child_shares_the_context) {
    int fd = cf_open();
    uint32_t ioas_id = cf_ioas(fd);
    uint8_t *buffer = cf_buffer(64 * 1024);
    pid_t child = fork();
    if (child == 0) {
        uint64_t iova = 1ull << 30;
        _exit(cf_map_fixed(fd, ioas_id, buffer, 64 * 1024, iova) == 0 ? 0 : 1);
    }
    int status = 0;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        FATAL("the child could not map through the inherited iommufd");
    /* The parent sees the child's mapping: it occupies the IOVA and unmaps whole. */
    if (cf_map_fixed(fd, ioas_id, buffer, 4096, 1ull << 30) == 0 || errno != EEXIST)
        FAIL("mapping over the child's IOVA: %s, want EEXIST", cf_errname(errno));
    uint64_t unmapped = 0;
    if (cf_unmap(fd, ioas_id, 1ull << 30, 64 * 1024, &unmapped) || unmapped != 64 * 1024)
        FAIL("UNMAP of the child's mapping: %s, %llu bytes", cf_errname(errno), (unsigned long long)unmapped);
    close(fd);
}

TEST(context_lives_until_the_last_holder_closes) {
    int fd = cf_open();
    uint32_t ioas_id = cf_ioas(fd);
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) FATAL("socketpair: %s", cf_errname(errno));
    /* Pass the descriptor to ourselves and close the original: the received one still works. */
    if (send_fd(pair[0], fd, &ioas_id, sizeof ioas_id) != 0) FATAL("sendmsg: %s", cf_errname(errno));
    close(fd);
    uint32_t id = 0;
    int received;
    if (receive_fd(pair[1], &id, sizeof id, &received) != 0 || received < 0) FATAL("recvmsg failed");
    struct cf_ioas_iova_ranges r = { .size = sizeof r, .ioas_id = id, .num_iovas = 0 };
    if (ioctl(received, CF_IOMMU_IOAS_IOVA_RANGES, &r) != 0 && errno != EMSGSIZE)
        FAIL("IOVA_RANGES through the received descriptor: %s", cf_errname(errno));
    if (cf_destroy(received, id)) FAIL("DESTROY through the received descriptor: %s", cf_errname(errno));
    close(received);
    close(pair[0]);
    close(pair[1]);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--process-b") == 0) return process_b(atoi(argv[2]));
    return cf_main(argc, argv);
}
