/*
 * Auxiliary descriptors (the kernel's anonymous-inode files: selftest access, fault queue,
 * vEVENTQ) as the interposer hands them out: real eventfds whose read/write reach the Swift
 * file and whose poll readiness follows it. Uses the preload library's test hook
 * uiommufd_test_echo_fd (an echo file) — uiommufd only, not a kernel conformance test.
 */
#include "../conformance/harness.h"
#include <dlfcn.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/stat.h>

static int (*echo_fd)(void);
static long (*echo_releases)(void);

static void hooks(void) {
    echo_fd = (int (*)(void))dlsym(RTLD_DEFAULT, "uiommufd_test_echo_fd");
    echo_releases = (long (*)(void))dlsym(RTLD_DEFAULT, "uiommufd_test_echo_releases");
    if (!echo_fd || !echo_releases) FATAL("not running under uiommufd (no test hooks)");
}

static int readable(int fd) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

TEST(echo_round_trip_and_readiness) {
    hooks();
    int fd = echo_fd();
    ASSERT_OK(fd);
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);    /* as the kernel's anon fds */
    CHECK_EQ(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDWR);
    CHECK(!readable(fd));
    char buf[64];
    EXPECT_ERRNO(EAGAIN, read(fd, buf, sizeof buf));
    CHECK_EQ(write(fd, "record-1", 8), 8);
    CHECK_EQ(write(fd, "r2", 2), 2);
    CHECK(readable(fd));
    EXPECT_ERRNO(EINVAL, read(fd, buf, 4));   /* whole records only */
    CHECK_EQ(read(fd, buf, sizeof buf), 8);
    CHECK(memcmp(buf, "record-1", 8) == 0);
    CHECK(readable(fd));
    CHECK_EQ(read(fd, buf, sizeof buf), 2);
    CHECK(!readable(fd));
    EXPECT_ERRNO(ESPIPE, pread(fd, buf, 2, 0));
    close(fd);
}

TEST(epoll_sees_readiness) {
    hooks();
    int fd = echo_fd();
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
    EXPECT_OK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
    struct epoll_event out;
    CHECK_EQ(epoll_wait(ep, &out, 1, 0), 0);
    CHECK_EQ(write(fd, "x", 1), 1);
    CHECK_EQ(epoll_wait(ep, &out, 1, 100), 1);
    CHECK_EQ(out.data.fd, fd);
    char c;
    CHECK_EQ(read(fd, &c, 1), 1);
    CHECK_EQ(epoll_wait(ep, &out, 1, 0), 0);
    close(ep);
    close(fd);
}

TEST(bad_buffers_are_efault) {
    hooks();
    int fd = echo_fd();
    const void *volatile bad = (const void *)16;   /* hidden from the compiler's bounds checks */
    EXPECT_ERRNO(EFAULT, write(fd, bad, 4));
    CHECK_EQ(write(fd, "abcd", 4), 4);
    char *guard = cf_guard_page();
    EXPECT_ERRNO(EFAULT, read(fd, guard + cf_page() - 2, 4));
    close(fd);
}

TEST(last_close_releases) {
    hooks();
    long before = echo_releases();
    int fd = echo_fd();
    int d = dup(fd), e = fcntl(fd, F_DUPFD_CLOEXEC, 500);
    CHECK(d >= 0 && e >= 500);
    CHECK_EQ(write(d, "via-dup", 7), 7);
    CHECK(readable(fd) && readable(e));
    close(fd);
    CHECK_EQ(echo_releases(), before);
    /* the descriptor used for signalling readiness was fd: another one takes over */
    char buf[16];
    CHECK_EQ(read(e, buf, sizeof buf), 7);
    CHECK(!readable(d));
    CHECK_EQ(write(e, "again", 5), 5);
    CHECK(readable(d));
    close(d);
    CHECK_EQ(echo_releases(), before);
    close(e);
    CHECK_EQ(echo_releases(), before + 1);
}

TEST(dup2_over_and_close_range) {
    hooks();
    long before = echo_releases();
    int a = echo_fd(), b = echo_fd();
    CHECK_EQ(dup2(a, b), b);                 /* b's file is released, b is now a */
    CHECK_EQ(echo_releases(), before + 1);
    CHECK_EQ(write(b, "x", 1), 1);
    CHECK(readable(a));
    CHECK_EQ(dup2(a, 300), 300);
    EXPECT_OK(close_range(300, 300, 0));
    close(b);
    CHECK_EQ(echo_releases(), before + 1);
    close(a);
    CHECK_EQ(echo_releases(), before + 2);
}

TEST(fork_child_has_its_own_copy) {
    hooks();
    int fd = echo_fd();
    CHECK_EQ(write(fd, "parent", 6), 6);
    pid_t pid = fork();
    if (pid == 0) {
        char buf[16];
        int bad = read(fd, buf, sizeof buf) != 6;
        bad |= write(fd, "child", 5) != 5;
        _exit(bad);
    }
    int status;
    ASSERT_OK(waitpid(pid, &status, 0));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* the parent's queue is its own (the child's read and write do not show here) */
    char buf[16];
    CHECK_EQ(read(fd, buf, sizeof buf), 6);
    CHECK(memcmp(buf, "parent", 6) == 0);
    EXPECT_ERRNO(EAGAIN, read(fd, buf, sizeof buf));
    close(fd);
}

TEST(not_a_character_device) {
    hooks();
    int fd = echo_fd();
    struct stat st;
    EXPECT_OK(fstat(fd, &st));
    CHECK(!S_ISCHR(st.st_mode));   /* an anonymous inode, as the kernel's */
    close(fd);
}

int main(int argc, char **argv) { return cf_main(argc, argv); }
