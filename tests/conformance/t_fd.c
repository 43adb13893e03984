/*
 * /dev/iommu as a file: open, close, dup, fork, exec, poll, stat, read/write, mmap, descriptor
 * numbers. Everything here holds on a real kernel as well as under uiommufd.
 */
#include "harness.h"
#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/uio.h>

/* An IOAS is visible through fd: IOMMU_IOAS_IOVA_RANGES on it succeeds. */
static int ioas_exists(int fd, uint32_t id) {
    struct cf_iova_range r[4];
    struct cf_ioas_iova_ranges q = { .size = sizeof q, .ioas_id = id, .num_iovas = 4,
                                     .allowed_iovas = (uintptr_t)r };
    return ioctl(fd, CF_IOMMU_IOAS_IOVA_RANGES, &q) == 0;
}

TEST(open_close) {
    int fd = open("/dev/iommu", O_RDWR);
    if (fd < 0) FATAL("open: %s", cf_errname(errno));
    EXPECT_OK(close(fd));
    EXPECT_ERRNO(EBADF, close(fd));
    /* openat and the fortified entry points reach the same device */
    fd = openat(AT_FDCWD, "/dev/iommu", O_RDWR);
    CHECK(fd >= 0);
    EXPECT_OK(close(fd));
    /* a relative dirfd is irrelevant for an absolute path */
    int dir = open("/tmp", O_RDONLY | O_DIRECTORY);
    fd = openat(dir, "/dev/iommu", O_RDWR);
    CHECK(fd >= 0);
    close(fd);
    close(dir);
}

TEST(open_flags) {
    int fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
    CHECK(fd >= 0);
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    CHECK_EQ(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDWR);
    close(fd);

    fd = open("/dev/iommu", O_RDWR);
    CHECK(fd >= 0);
    CHECK(!(fcntl(fd, F_GETFD) & FD_CLOEXEC));
    close(fd);

    fd = open("/dev/iommu", O_RDWR | O_NONBLOCK);
    CHECK(fd >= 0);
    CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK);
    close(fd);

    /* the access mode is the caller's; ioctls do not depend on it */
    fd = open("/dev/iommu", O_RDONLY);
    CHECK(fd >= 0);
    CHECK_EQ(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDONLY);
    CHECK(cf_ioas(fd) == 1);
    close(fd);

    EXPECT_ERRNO(EEXIST, open("/dev/iommu", O_RDWR | O_CREAT | O_EXCL, 0600));
    EXPECT_ERRNO(ENOTDIR, open("/dev/iommu", O_RDONLY | O_DIRECTORY));
}

TEST(stat_and_access) {
    struct stat st, fst, at;
    EXPECT_OK(stat("/dev/iommu", &st));
    CHECK(S_ISCHR(st.st_mode));
    CHECK_EQ(major(st.st_rdev), 10);   /* a misc device */
    EXPECT_OK(lstat("/dev/iommu", &st));
    CHECK(S_ISCHR(st.st_mode));
    EXPECT_OK(access("/dev/iommu", F_OK));
    if (geteuid() == 0) EXPECT_OK(access("/dev/iommu", R_OK | W_OK));
    EXPECT_OK(faccessat(AT_FDCWD, "/dev/iommu", F_OK, 0));

    int fd = cf_open();
    EXPECT_OK(fstat(fd, &fst));
    CHECK(S_ISCHR(fst.st_mode));
    CHECK_EQ(fst.st_rdev, st.st_rdev);
    EXPECT_OK(fstatat(fd, "", &at, AT_EMPTY_PATH));
    CHECK(S_ISCHR(at.st_mode));
    CHECK_EQ(at.st_rdev, st.st_rdev);
    EXPECT_OK(fstatat(AT_FDCWD, "/dev/iommu", &at, 0));
    CHECK_EQ(at.st_rdev, st.st_rdev);

    struct statx sx;
    EXPECT_OK(statx(AT_FDCWD, "/dev/iommu", 0, STATX_BASIC_STATS, &sx));
    CHECK(S_ISCHR(sx.stx_mode));
    CHECK_EQ(sx.stx_rdev_major, 10);
    EXPECT_OK(statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx));
    CHECK(S_ISCHR(sx.stx_mode));
    close(fd);
}

TEST(contexts_are_independent) {
    int a = cf_open(), b = cf_open();
    CHECK_EQ(cf_ioas(a), 1);
    CHECK_EQ(cf_ioas(b), 1);   /* IDs are per file */
    CHECK_EQ(cf_ioas(b), 2);
    EXPECT_OK(cf_destroy(b, 1));
    CHECK(ioas_exists(a, 1));
    CHECK(!ioas_exists(a, 2));
    EXPECT_ERRNO(ENOENT, cf_destroy(a, 2));
    close(b);
    CHECK(ioas_exists(a, 1));
    close(a);
}

TEST(dup_shares_the_file) {
    int fd = cf_open();
    uint32_t id = cf_ioas(fd);

    int d1 = dup(fd);
    CHECK(d1 >= 0 && d1 != fd);
    CHECK(ioas_exists(d1, id));
    CHECK(!(fcntl(d1, F_GETFD) & FD_CLOEXEC));

    int d2 = dup2(fd, 200);
    CHECK_EQ(d2, 200);
    CHECK(ioas_exists(200, id));

    int d3 = dup3(fd, 201, O_CLOEXEC);
    CHECK_EQ(d3, 201);
    CHECK(fcntl(201, F_GETFD) & FD_CLOEXEC);
    CHECK(ioas_exists(201, id));

    int d4 = fcntl(fd, F_DUPFD, 300);
    CHECK(d4 >= 300);
    CHECK(ioas_exists(d4, id));
    int d5 = fcntl(fd, F_DUPFD_CLOEXEC, 310);
    CHECK(d5 >= 310);
    CHECK(fcntl(d5, F_GETFD) & FD_CLOEXEC);

    /* an object made through one number is seen through all */
    uint32_t other = cf_ioas(d5);
    CHECK(ioas_exists(fd, other));
    CHECK(ioas_exists(d1, other));

    /* dup2 onto itself changes nothing */
    CHECK_EQ(dup2(fd, fd), fd);
    CHECK(ioas_exists(fd, id));
    EXPECT_ERRNO(EINVAL, dup3(fd, fd, 0));

    /* closing all but one keeps the file alive */
    close(fd); close(d1); close(200); close(201); close(d4);
    CHECK(ioas_exists(d5, id));
    CHECK(ioas_exists(d5, other));
    close(d5);
}

TEST(dup2_over_an_iommufd_and_back) {
    int fd = cf_open();
    uint32_t id = cf_ioas(fd);
    int keep = dup(fd);
    int p[2];
    ASSERT_OK(pipe(p));

    /* a pipe over the iommufd number: the number is a plain pipe now */
    CHECK_EQ(dup2(p[0], fd), fd);
    ASSERT_OK(write(p[1], "hello", 5));
    int n = -1;
    EXPECT_OK(ioctl(fd, FIONREAD, &n));
    CHECK_EQ(n, 5);
    struct cf_ioas_alloc a = { .size = sizeof a };
    EXPECT_ERRNO(ENOTTY, ioctl(fd, CF_IOMMU_IOAS_ALLOC, &a));
    CHECK(ioas_exists(keep, id));   /* the other descriptor still holds the file */

    /* the iommufd over the pipe's write end */
    CHECK_EQ(dup2(keep, p[1]), p[1]);
    CHECK(ioas_exists(p[1], id));
    char c;
    EXPECT_ERRNO(EINVAL, read(p[1], &c, 1));
    close(fd); close(p[0]); close(p[1]); close(keep);
}

TEST(close_keeps_other_descriptors) {
    int fd = cf_open();
    uint32_t id = cf_ioas(fd);
    int d = dup(fd);
    EXPECT_OK(close(fd));
    CHECK(ioas_exists(d, id));
    struct cf_ioas_alloc a = { .size = sizeof a };
    EXPECT_ERRNO(EBADF, ioctl(fd, CF_IOMMU_IOAS_ALLOC, &a));
    close(d);
    EXPECT_ERRNO(EBADF, ioctl(d, CF_IOMMU_IOAS_ALLOC, &a));
}

TEST(fork_child_uses_the_inherited_fd) {
    int fd = cf_open();
    uint32_t id = cf_ioas(fd);
    size_t pg = cf_page();
    char *buf = cf_buffer(4 * pg);
    pid_t pid = fork();
    if (pid == 0) {
        int bad = 0;
        if (!ioas_exists(fd, id)) bad |= 1;
        struct cf_ioas_alloc a = { .size = sizeof a };
        if (ioctl(fd, CF_IOMMU_IOAS_ALLOC, &a) != 0) bad |= 2;
        if (cf_map_fixed(fd, id, buf, 4 * pg, 1 << 20) != 0) bad |= 4;
        uint64_t n = 0;
        if (cf_unmap(fd, id, 1 << 20, 4 * pg, &n) != 0 || n != 4 * pg) bad |= 8;
        if (close(fd) != 0) bad |= 16;
        _exit(bad);
    }
    int status;
    ASSERT_OK(waitpid(pid, &status, 0));
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
    /* the child's close did not close the parent's descriptor */
    CHECK(ioas_exists(fd, id));
    close(fd);
}

/* Re-executed by close_on_exec: reports which descriptors survived exec. */
static int exec_check(int argc, char **argv) {
    if (argc < 4) return 2;
    int closed = atoi(argv[2]), kept = atoi(argv[3]);
    int bad = 0;
    if (fcntl(closed, F_GETFD) != -1 || errno != EBADF) bad |= 1;
    if (fcntl(kept, F_GETFD) < 0) bad |= 2;
    return bad;
}

TEST(close_on_exec) {
    int a = open("/dev/iommu", O_RDWR | O_CLOEXEC);
    int b = open("/dev/iommu", O_RDWR);
    int c = open("/dev/iommu", O_RDWR);
    CHECK(a >= 0 && b >= 0 && c >= 0);
    EXPECT_OK(ioctl(c, FIOCLEX));   /* the generic ioctl reaches the descriptor */
    CHECK(fcntl(c, F_GETFD) & FD_CLOEXEC);
    EXPECT_OK(ioctl(c, FIONCLEX));
    CHECK(!(fcntl(c, F_GETFD) & FD_CLOEXEC));
    EXPECT_OK(fcntl(c, F_SETFD, FD_CLOEXEC));

    char sa[16], sb[16];
    snprintf(sa, sizeof sa, "%d", a);
    snprintf(sb, sizeof sb, "%d", b);
    pid_t pid = fork();
    if (pid == 0) {
        char *args[] = { "t_fd", "--exec-check", sa, sb, NULL };
        execv("/proc/self/exe", args);
        _exit(100);
    }
    int status;
    ASSERT_OK(waitpid(pid, &status, 0));
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);

    snprintf(sa, sizeof sa, "%d", c);
    pid = fork();
    if (pid == 0) {
        char *args[] = { "t_fd", "--exec-check", sa, sb, NULL };
        execv("/proc/self/exe", args);
        _exit(100);
    }
    ASSERT_OK(waitpid(pid, &status, 0));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(a); close(b); close(c);
}

TEST(poll_select_epoll) {
    int fd = cf_open();
    /* no poll method: always readable and writable */
    struct pollfd p = { .fd = fd, .events = POLLIN | POLLOUT };
    CHECK_EQ(poll(&p, 1, 0), 1);
    CHECK((p.revents & (POLLIN | POLLOUT)) == (POLLIN | POLLOUT));

    fd_set r, w;
    FD_ZERO(&r); FD_ZERO(&w);
    FD_SET(fd, &r); FD_SET(fd, &w);
    struct timeval tv = { 0, 0 };
    CHECK_EQ(select(fd + 1, &r, &w, NULL, &tv), 2);

    /* and therefore not pollable by epoll */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN };
    EXPECT_ERRNO(EPERM, epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
    close(ep);
    close(fd);
}

TEST(read_write_are_invalid) {
    int fd = cf_open();
    char buf[64];
    struct iovec v = { buf, sizeof buf };
    EXPECT_ERRNO(EINVAL, read(fd, buf, sizeof buf));
    EXPECT_ERRNO(EINVAL, write(fd, buf, sizeof buf));
    EXPECT_ERRNO(EINVAL, readv(fd, &v, 1));
    EXPECT_ERRNO(EINVAL, writev(fd, &v, 1));
    EXPECT_ERRNO(EINVAL, pread(fd, buf, sizeof buf, 0));
    EXPECT_ERRNO(EINVAL, pwrite(fd, buf, sizeof buf, 0));
    close(fd);
    /* a read-only open cannot write, a write-only one cannot read */
    fd = open("/dev/iommu", O_RDONLY);
    EXPECT_ERRNO(EBADF, write(fd, buf, 1));
    close(fd);
    fd = open("/dev/iommu", O_WRONLY);
    EXPECT_ERRNO(EBADF, read(fd, buf, 1));
    close(fd);
}

TEST(mmap_without_regions) {
    int fd = cf_open();
    errno = 0;
    void *p = mmap(NULL, cf_page(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(p == MAP_FAILED);
    /* ENODEV: no mmap method (before 6.17); ENXIO: no region at that offset (6.17+) */
    if (errno != ENODEV && errno != ENXIO) FAIL("mmap errno %s, expected ENODEV or ENXIO", cf_errname(errno));
    close(fd);
}

TEST(errno_is_preserved_on_success) {
    errno = 4242;
    int fd = open("/dev/iommu", O_RDWR);
    CHECK(fd >= 0);
    CHECK_EQ(errno, 4242);
    struct cf_ioas_alloc a = { .size = sizeof a };
    errno = 4343;
    CHECK_EQ(ioctl(fd, CF_IOMMU_IOAS_ALLOC, &a), 0);
    CHECK_EQ(errno, 4343);
    errno = 4444;
    int d = dup(fd);
    CHECK_EQ(errno, 4444);
    errno = 4545;
    CHECK_EQ(close(d), 0);
    CHECK_EQ(errno, 4545);
    close(fd);
}

TEST(high_descriptor_numbers) {
    struct rlimit rl;
    ASSERT_OK(getrlimit(RLIMIT_NOFILE, &rl));
    rlim_t want = rl.rlim_max > 70000 ? 70000 : rl.rlim_max;
    rl.rlim_cur = want;
    ASSERT_OK(setrlimit(RLIMIT_NOFILE, &rl));
    int fd = cf_open();
    uint32_t id = cf_ioas(fd);
    int targets[] = { 1000, 4095, 65535, 65536, 69999 };
    int tested = 0;
    for (unsigned i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        if ((rlim_t)targets[i] >= want) continue;
        CHECK_EQ(dup2(fd, targets[i]), targets[i]);
        CHECK(ioas_exists(targets[i], id));
        uint32_t more = cf_ioas(targets[i]);
        CHECK(ioas_exists(fd, more));
        EXPECT_OK(close(targets[i]));
        tested++;
    }
    CHECK(tested >= 2);
    close(fd);
}

TEST(close_range_and_cloexec_range) {
    int fd = cf_open();
    uint32_t id = cf_ioas(fd);
    for (int n = 100; n <= 102; n++) CHECK_EQ(dup2(fd, n), n);
    if (syscall(SYS_close_range, 100, 101, 4 /* CLOSE_RANGE_CLOEXEC */) != 0 && errno == ENOSYS)
        SKIP("close_range not supported");
    CHECK(fcntl(100, F_GETFD) & FD_CLOEXEC);
    CHECK(ioas_exists(100, id));
    EXPECT_OK(close_range(100, 101, 0));
    EXPECT_ERRNO(EBADF, fcntl(100, F_GETFD));
    EXPECT_ERRNO(EBADF, fcntl(101, F_GETFD));
    CHECK(ioas_exists(102, id));
    /* a pipe on a number we just closed is an ordinary pipe */
    int p[2];
    ASSERT_OK(pipe(p));
    CHECK_EQ(dup2(p[0], 101), 101);
    ASSERT_OK(write(p[1], "xy", 2));
    int n = -1;
    EXPECT_OK(ioctl(101, FIONREAD, &n));
    CHECK_EQ(n, 2);
    close(101); close(102); close(p[0]); close(p[1]);
    CHECK(ioas_exists(fd, id));
    close(fd);
}

TEST(many_opens) {
    int fds[200];
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 200; i++) {
            fds[i] = open("/dev/iommu", O_RDWR | O_CLOEXEC);
            if (fds[i] < 0) FATAL("open #%d: %s", i, cf_errname(errno));
            if (i % 37 == 0) CHECK_EQ(cf_ioas(fds[i]), 1);
        }
        for (int i = 0; i < 200; i++) EXPECT_OK(close(fds[i]));
    }
}

TEST(generic_file_ioctls) {
    int fd = cf_open();
    int on = 1, off = 0;
    EXPECT_OK(ioctl(fd, FIONBIO, &on));
    CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK);
    EXPECT_OK(ioctl(fd, FIONBIO, &off));
    CHECK(!(fcntl(fd, F_GETFL) & O_NONBLOCK));
    EXPECT_OK(fcntl(fd, F_SETFL, O_NONBLOCK));
    CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK);
    /* a terminal ioctl is not the driver's */
    struct { char b[64]; } t;
    EXPECT_ERRNO(ENOTTY, ioctl(fd, 0x5401 /* TCGETS */, &t));
    close(fd);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--exec-check") == 0) return exec_check(argc, argv);
    return cf_main(argc, argv);
}
