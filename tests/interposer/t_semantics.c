/*
 * What is specific to uiommufd's in-process emulation (documented in the README): state after
 * fork and exec, descriptor identity, and user-memory faults that must never crash.
 */
#include "../conformance/harness.h"
#include <setjmp.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#define MB (1ull << 20)

TEST(descriptor_is_a_uiommufd_memfd) {
    int fd = cf_open();
    CHECK(cf_emulated(fd));
    close(fd);
}

TEST(fork_child_diverges_from_parent) {
    /* the kernel shares one file; here the child has a copy */
    int fd = cf_open();
    CHECK_EQ(cf_ioas(fd), 1);
    pid_t pid = fork();
    if (pid == 0) _exit(cf_ioas(fd) == 2 && cf_ioas(fd) == 3 ? 0 : 1);
    int status;
    ASSERT_OK(waitpid(pid, &status, 0));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_EQ(cf_ioas(fd), 2);   /* the child's IOAS 2 and 3 do not exist here */
    close(fd);
}

static int exec_check(const char *fd_text) {
    int fd = atoi(fd_text);
    if (fcntl(fd, F_GETFD) < 0) return 1;        /* still open after exec */
    struct cf_ioas_alloc a = { .size = sizeof a };
    if (ioctl(fd, CF_IOMMU_IOAS_ALLOC, &a) != -1 || errno != ENOTTY) return 2;   /* no longer served */
    return 0;
}

TEST(after_exec_the_fd_is_not_served) {
    int fd = open("/dev/iommu", O_RDWR);   /* no O_CLOEXEC */
    ASSERT_OK(fd);
    char s[16];
    snprintf(s, sizeof s, "%d", fd);
    pid_t pid = fork();
    if (pid == 0) {
        char *args[] = { "t_semantics", "--exec-check", s, NULL };
        execv("/proc/self/exe", args);
        _exit(100);
    }
    int status;
    ASSERT_OK(waitpid(pid, &status, 0));
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
    close(fd);
}

static sigjmp_buf mine;
static volatile sig_atomic_t my_faults;
static void my_handler(int sig) { (void)sig; my_faults++; siglongjmp(mine, 1); }

TEST(bad_pointers_never_crash) {
    /* a handler the program installed first must keep getting its own faults */
    struct sigaction sa = { .sa_handler = my_handler, .sa_flags = SA_NODEFER };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    int fd = cf_open();
    uint32_t ioas = cf_ioas(fd);
    char *guard = cf_guard_page();
    uint64_t bad[] = { 16, (uint64_t)(uintptr_t)(guard + cf_page()), 0xffff800000000000ull,
                       0x8000000000000000ull, UINT64_MAX - 3, (uint64_t)(uintptr_t)(guard + cf_page() - 3) };
    for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++)
        EXPECT_ERRNO(EFAULT, ioctl(fd, CF_IOMMU_IOAS_ALLOC, (void *)(uintptr_t)bad[i]));
    /* the result cannot be written back: read-only memory */
    char *ro = mmap(NULL, cf_page(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct cf_ioas_alloc a = { .size = sizeof a };
    memcpy(ro, &a, sizeof a);
    mprotect(ro, cf_page(), PROT_READ);
    EXPECT_ERRNO(EFAULT, ioctl(fd, CF_IOMMU_IOAS_ALLOC, ro));
    /* IOVA_RANGES writing its array into unmapped memory */
    struct cf_ioas_iova_ranges q = { .size = sizeof q, .ioas_id = ioas, .num_iovas = 1,
                                     .allowed_iovas = (uintptr_t)(guard + cf_page()) };
    EXPECT_ERRNO(EFAULT, ioctl(fd, CF_IOMMU_IOAS_IOVA_RANGES, &q));
    /* and the program's own fault still reaches its handler */
    if (sigsetjmp(mine, 1) == 0) *(volatile char *)(guard + cf_page()) = 1;
    CHECK_EQ(my_faults, 1);
    CHECK_EQ(cf_ioas(fd), 2);
    close(fd);
}

TEST(an_unhandled_fault_still_kills) {
    int fd = cf_open();
    EXPECT_ERRNO(EFAULT, ioctl(fd, CF_IOMMU_IOAS_ALLOC, (void *)16));   /* the guard is installed */
    pid_t pid = fork();
    if (pid == 0) {
        volatile int *volatile p = (volatile int *)16;
        *p = 1;
        _exit(0);
    }
    int status;
    ASSERT_OK(waitpid(pid, &status, 0));
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV);
    close(fd);
}

TEST(many_contexts_and_maps_leave_nothing) {
    size_t pg = cf_page();
    char *buf = cf_buffer(16 * pg);
    for (int round = 0; round < 50; round++) {
        int fd = cf_open();
        uint32_t ioas = cf_ioas(fd);
        for (int i = 0; i < 8; i++) EXPECT_OK(cf_map_fixed(fd, ioas, buf, (i + 1) * pg, (uint64_t)(i + 1) * MB));
        close(fd);   /* close destroys everything */
    }
}

TEST(a_number_closed_behind_our_back_is_given_up) {
    /* A raw close system call bypasses the interposer; when the number comes back as another
     * file, that file must behave as itself. */
    int fd = cf_open();
    ASSERT_OK(syscall(SYS_close, fd));
    int p[2];
    ASSERT_OK(pipe(p));
    int reused = p[0] == fd ? p[0] : p[1] == fd ? p[1] : -1;
    if (reused < 0) SKIP("the number was not reused");
    int other = reused == p[0] ? p[1] : p[0];
    if (reused == p[0]) {
        CHECK_EQ(write(other, "abc", 3), 3);
        int n = -1;
        EXPECT_OK(ioctl(reused, FIONREAD, &n));
        CHECK_EQ(n, 3);
        char buf[4];
        CHECK_EQ(read(reused, buf, sizeof buf), 3);
    } else {
        CHECK_EQ(write(reused, "abc", 3), 3);
    }
    struct stat st;
    EXPECT_OK(fstat(reused, &st));
    CHECK(S_ISFIFO(st.st_mode));
    close(p[0]);
    close(p[1]);
}

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "--exec-check") == 0) return exec_check(argv[2]);
    return cf_main(argc, argv);
}
