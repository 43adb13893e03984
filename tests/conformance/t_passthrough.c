/*
 * Descriptors and paths that are not /dev/iommu behave exactly as without any interposer:
 * pipes, /dev/null, regular files, memfds, eventfds, sockets, stdio, stat/access of other paths.
 * Built twice by run.sh: plain, and with -D_FILE_OFFSET_BITS=64 -D_FORTIFY_SOURCE=2 (the
 * open64/__open_2/__read_chk/fstat64 entry points).
 */
#include "harness.h"
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>

static char *temp_path(char *buf, size_t n) {
    snprintf(buf, n, "/tmp/uiommufd-conformance-XXXXXX");
    int fd = mkstemp(buf);
    if (fd < 0) FATAL("mkstemp: %s", cf_errname(errno));
    close(fd);
    return buf;
}

TEST(pipe_io_and_ioctl) {
    int p[2];
    ASSERT_OK(pipe(p));
    CHECK_EQ(write(p[1], "hello", 5), 5);
    int n = -1;
    EXPECT_OK(ioctl(p[0], FIONREAD, &n));
    CHECK_EQ(n, 5);
    char buf[8] = { 0 };
    CHECK_EQ(read(p[0], buf, sizeof buf), 5);
    CHECK(memcmp(buf, "hello", 5) == 0);
    struct iovec v[2] = { { "ab", 2 }, { "cde", 3 } };
    CHECK_EQ(writev(p[1], v, 2), 5);
    char x[2], y[3];
    struct iovec r[2] = { { x, 2 }, { y, 3 } };
    CHECK_EQ(readv(p[0], r, 2), 5);
    CHECK(memcmp(x, "ab", 2) == 0 && memcmp(y, "cde", 3) == 0);
    /* an iommufd request on a pipe is the pipe's business */
    struct cf_destroy d = { .size = sizeof d, .id = 1 };
    EXPECT_ERRNO(ENOTTY, ioctl(p[0], CF_IOMMU_DESTROY, &d));
    EXPECT_ERRNO(ENOTTY, ioctl(p[0], CF_VFIO_GET_API_VERSION));
    struct pollfd pf = { .fd = p[0], .events = POLLIN };
    CHECK_EQ(poll(&pf, 1, 0), 0);
    EXPECT_ERRNO(ESPIPE, pread(p[0], buf, 1, 0));
    close(p[0]);
    close(p[1]);
}

TEST(dev_null) {
    int fd = open("/dev/null", O_RDWR);
    ASSERT_OK(fd);
    char buf[16];
    CHECK_EQ(read(fd, buf, sizeof buf), 0);
    CHECK_EQ(write(fd, "xyz", 3), 3);
    struct { char b[64]; } t;
    EXPECT_ERRNO(ENOTTY, ioctl(fd, 0x5401 /* TCGETS */, &t));
    struct cf_ioas_alloc a = { .size = sizeof a };
    EXPECT_ERRNO(ENOTTY, ioctl(fd, CF_IOMMU_IOAS_ALLOC, &a));
    struct stat st;
    EXPECT_OK(fstat(fd, &st));
    CHECK(S_ISCHR(st.st_mode));
    CHECK_EQ(major(st.st_rdev), 1);
    CHECK_EQ(minor(st.st_rdev), 3);
    EXPECT_OK(stat("/dev/null", &st));
    CHECK_EQ(minor(st.st_rdev), 3);
    close(fd);
}

TEST(regular_file) {
    char path[64];
    temp_path(path, sizeof path);
    mode_t old = umask(0);
    unlink(path);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0640);   /* the mode argument must arrive */
    umask(old);
    ASSERT_OK(fd);
    struct stat st;
    EXPECT_OK(fstat(fd, &st));
    CHECK(S_ISREG(st.st_mode));
    CHECK_EQ(st.st_mode & 0777, 0640);
    CHECK_EQ(write(fd, "0123456789", 10), 10);
    char buf[16] = { 0 };
    CHECK_EQ(pread(fd, buf, 4, 3), 4);
    CHECK(memcmp(buf, "3456", 4) == 0);
    CHECK_EQ(pwrite(fd, "AB", 2, 8), 2);
    CHECK_EQ(lseek(fd, 0, SEEK_SET), 0);
    CHECK_EQ(read(fd, buf, 10), 10);
    CHECK(memcmp(buf, "01234567AB", 10) == 0);
    struct iovec v = { buf, 3 };
    CHECK_EQ(preadv(fd, &v, 1, 1), 3);
    CHECK(memcmp(buf, "123", 3) == 0);
    EXPECT_OK(fstat(fd, &st));
    CHECK_EQ(st.st_size, 10);
    void *m = mmap(NULL, 10, PROT_READ, MAP_SHARED, fd, 0);
    CHECK(m != MAP_FAILED);
    if (m != MAP_FAILED) { CHECK(memcmp(m, "01234567AB", 10) == 0); munmap(m, 10); }
    int n = -1;
    EXPECT_OK(ioctl(fd, FIONREAD, &n));   /* bytes from the offset to the end */
    CHECK_EQ(n, 0);
    struct statx sx;
    EXPECT_OK(statx(AT_FDCWD, path, 0, STATX_SIZE, &sx));
    CHECK_EQ(sx.stx_size, 10);
    EXPECT_OK(access(path, R_OK | W_OK));
    EXPECT_ERRNO(EACCES, access(path, X_OK));   /* no x bit: refused even to root */
    close(fd);
    /* openat relative to a directory */
    int dir = open("/tmp", O_RDONLY | O_DIRECTORY);
    fd = openat(dir, path + 5, O_RDONLY);
    CHECK(fd >= 0);
    close(fd);
    close(dir);
    EXPECT_OK(unlink(path));
    EXPECT_ERRNO(ENOENT, open(path, O_RDONLY));
}

TEST(stdio) {
    char path[64];
    temp_path(path, sizeof path);
    FILE *f = fopen(path, "w");
    ASSERT_OK(f ? 0 : -1);
    fprintf(f, "line %d\n", 42);
    CHECK_EQ(fclose(f), 0);
    f = fopen(path, "r");
    ASSERT_OK(f ? 0 : -1);
    char line[32] = { 0 };
    CHECK(fgets(line, sizeof line, f) != NULL);
    CHECK(strcmp(line, "line 42\n") == 0);
    fclose(f);
    unlink(path);
}

TEST(memfd_eventfd_socket) {
    int m = memfd_create("not-iommu", MFD_CLOEXEC);
    ASSERT_OK(m);
    CHECK_EQ(write(m, "abc", 3), 3);
    struct stat st;
    EXPECT_OK(fstat(m, &st));
    CHECK(S_ISREG(st.st_mode));
    CHECK_EQ(st.st_size, 3);
    struct cf_ioas_alloc a = { .size = sizeof a };
    EXPECT_ERRNO(ENOTTY, ioctl(m, CF_IOMMU_IOAS_ALLOC, &a));
    close(m);

    int e = eventfd(0, EFD_CLOEXEC);
    ASSERT_OK(e);
    uint64_t v = 5;
    CHECK_EQ(write(e, &v, 8), 8);
    v = 0;
    CHECK_EQ(read(e, &v, 8), 8);
    CHECK_EQ(v, 5);
    close(e);

    int s[2];
    ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s));
    CHECK_EQ(send(s[0], "ping", 4, 0), 4);
    char buf[8];
    CHECK_EQ(recv(s[1], buf, sizeof buf, 0), 4);
    CHECK_EQ(write(s[1], "pong", 4), 4);
    CHECK_EQ(read(s[0], buf, sizeof buf), 4);
    close(s[0]);
    close(s[1]);
}

TEST(dup_family_on_ordinary_fds) {
    int p[2];
    ASSERT_OK(pipe(p));
    int a = dup(p[1]);
    int b = dup2(p[1], 150);
    int c = dup3(p[1], 151, O_CLOEXEC);
    int d = fcntl(p[1], F_DUPFD_CLOEXEC, 160);
    CHECK(a >= 0);
    CHECK_EQ(b, 150);
    CHECK_EQ(c, 151);
    CHECK(d >= 160);
    CHECK(fcntl(151, F_GETFD) & FD_CLOEXEC);
    CHECK_EQ(write(a, "1", 1), 1);
    CHECK_EQ(write(150, "2", 1), 1);
    CHECK_EQ(write(151, "3", 1), 1);
    CHECK_EQ(write(d, "4", 1), 1);
    char buf[4];
    CHECK_EQ(read(p[0], buf, 4), 4);
    CHECK(memcmp(buf, "1234", 4) == 0);
    CHECK_EQ(fcntl(p[0], F_GETFL) & O_ACCMODE, O_RDONLY);
    close(a); close(150); close(151); close(d); close(p[0]); close(p[1]);
    EXPECT_ERRNO(EBADF, close(150));
    EXPECT_ERRNO(EBADF, write(150, "x", 1));
    EXPECT_ERRNO(EBADF, ioctl(150, FIONREAD, &a));
}

TEST(paths_that_are_not_iommu) {
    struct stat st;
    EXPECT_ERRNO(ENOENT, open("/dev/iommu2", O_RDWR));
    EXPECT_ERRNO(ENOENT, open("/dev/iommufd", O_RDWR));
    EXPECT_ERRNO(ENOENT, stat("/dev/iommu2", &st));
    EXPECT_ERRNO(ENOENT, access("/dev/iommuX", F_OK));
    EXPECT_OK(stat("/tmp", &st));
    CHECK(S_ISDIR(st.st_mode));
    EXPECT_OK(access("/tmp", R_OK));
    const char *volatile null_path = NULL;   /* hidden from the nonnull attribute */
    EXPECT_ERRNO(EFAULT, open(null_path, O_RDONLY));
}

TEST(errno_untouched_by_successful_calls) {
    int p[2];
    ASSERT_OK(pipe(p));
    errno = 777;
    CHECK_EQ(write(p[1], "a", 1), 1);
    CHECK_EQ(errno, 777);
    char c;
    CHECK_EQ(read(p[0], &c, 1), 1);
    CHECK_EQ(errno, 777);
    int d = dup(p[0]);
    CHECK_EQ(errno, 777);
    CHECK_EQ(close(d), 0);
    CHECK_EQ(errno, 777);
    struct stat st;
    CHECK_EQ(fstat(p[0], &st), 0);
    CHECK_EQ(errno, 777);
    close(p[0]);
    close(p[1]);
}

int main(int argc, char **argv) { return cf_main(argc, argv); }
