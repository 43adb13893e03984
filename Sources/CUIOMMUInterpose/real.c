/*
 * The next definition of every interposed symbol (normally glibc's), resolved lazily with
 * dlsym(RTLD_NEXT) and cached in an atomic pointer. Resolution can be requested before the
 * dynamic loader has finished (the statically linked Swift runtime calls mmap from its own
 * initializers), and dlsym itself could re-enter an interposed function, so while a thread
 * is resolving, or if a symbol cannot be found, the call goes straight to the kernel with
 * syscall(2). errno is preserved across resolution.
 */
#include "internal.h"
#include <sys/epoll.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static TLS int resolving;

static void *next_symbol(const char *name) {
    if (resolving) return NULL;
    int saved = errno;
    resolving = 1;
    void *p = dlsym(RTLD_NEXT, name);
    resolving = 0;
    errno = saved;
    return p;
}

#define RESOLVER(fn_type, symbol)                                                          \
    static fn_type symbol##_next(void) {                                                   \
        static _Atomic(fn_type) cached;                                                    \
        fn_type f = atomic_load_explicit(&cached, memory_order_acquire);                   \
        if (UNLIKELY(!f)) {                                                                \
            f = (fn_type)next_symbol(#symbol);                                             \
            if (f) atomic_store_explicit(&cached, f, memory_order_release);                \
        }                                                                                  \
        return f;                                                                          \
    }

typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*int_int_fn)(int);
typedef int (*close_range_fn)(unsigned, unsigned, int);
typedef void (*closefrom_fn)(int);
typedef int (*dup2_fn)(int, int);
typedef int (*dup3_fn)(int, int, int);
typedef int (*fcntl_fn)(int, int, ...);
typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef ssize_t (*read_fn)(int, void *, size_t);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*readv_fn)(int, const struct iovec *, int);
typedef ssize_t (*pread_fn)(int, void *, size_t, off_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*preadv2_fn)(int, const struct iovec *, int, off_t, int);
typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
typedef int (*fstatat_fn)(int, const char *, struct stat *, int);
typedef int (*statx_fn)(int, const char *, int, unsigned, struct statx *);
typedef int (*faccessat_fn)(int, const char *, int, int);
typedef int (*epoll_ctl_fn)(int, int, int, struct epoll_event *);
typedef int (*euidaccess_fn)(const char *, int);

RESOLVER(openat_fn, openat)
RESOLVER(int_int_fn, close)
RESOLVER(close_range_fn, close_range)
RESOLVER(closefrom_fn, closefrom)
RESOLVER(int_int_fn, dup)
RESOLVER(dup2_fn, dup2)
RESOLVER(dup3_fn, dup3)
RESOLVER(fcntl_fn, fcntl)
RESOLVER(ioctl_fn, ioctl)
RESOLVER(read_fn, read)
RESOLVER(write_fn, write)
RESOLVER(readv_fn, readv)
RESOLVER(readv_fn, writev)
RESOLVER(pread_fn, pread64)
RESOLVER(pwrite_fn, pwrite64)
RESOLVER(preadv2_fn, preadv2)
RESOLVER(preadv2_fn, pwritev2)
RESOLVER(mmap_fn, mmap)
RESOLVER(fstatat_fn, fstatat)
RESOLVER(statx_fn, statx)
RESOLVER(faccessat_fn, faccessat)
RESOLVER(euidaccess_fn, euidaccess)
RESOLVER(epoll_ctl_fn, epoll_ctl)

int real_openat(int dirfd, const char *path, int flags, mode_t mode) {
    openat_fn f = openat_next();
    if (f) return f(dirfd, path, flags, mode);
    return (int)syscall(SYS_openat, dirfd, path, flags, mode);
}

int real_close(int fd) {
    int_int_fn f = close_next();
    if (f) return f(fd);
    return (int)syscall(SYS_close, fd);
}

int real_close_range(unsigned first, unsigned last, int flags) {
    close_range_fn f = close_range_next();
    if (f) return f(first, last, flags);
    return (int)syscall(SYS_close_range, first, last, flags);
}

void real_closefrom(int lowfd) {
    closefrom_fn f = closefrom_next();
    if (f) { f(lowfd); return; }
    syscall(SYS_close_range, (unsigned)lowfd, ~0U, 0);
}

int real_dup(int fd) {
    int_int_fn f = dup_next();
    if (f) return f(fd);
    return (int)syscall(SYS_dup, fd);
}

int real_dup2(int fd, int fd2) {
    dup2_fn f = dup2_next();
    if (f) return f(fd, fd2);
    return (int)syscall(SYS_dup2, fd, fd2);
}

int real_dup3(int fd, int fd2, int flags) {
    dup3_fn f = dup3_next();
    if (f) return f(fd, fd2, flags);
    return (int)syscall(SYS_dup3, fd, fd2, flags);
}

int real_fcntl(int fd, int cmd, void *arg) {
    fcntl_fn f = fcntl_next();
    if (f) return f(fd, cmd, arg);
    return (int)syscall(SYS_fcntl, fd, cmd, arg);
}

int real_ioctl(int fd, unsigned long request, unsigned long arg) {
    ioctl_fn f = ioctl_next();
    if (f) return f(fd, request, arg);
    return (int)syscall(SYS_ioctl, fd, request, arg);
}

ssize_t real_read(int fd, void *buffer, size_t count) {
    read_fn f = read_next();
    if (f) return f(fd, buffer, count);
    return syscall(SYS_read, fd, buffer, count);
}

ssize_t real_write(int fd, const void *buffer, size_t count) {
    write_fn f = write_next();
    if (f) return f(fd, buffer, count);
    return syscall(SYS_write, fd, buffer, count);
}

ssize_t real_readv(int fd, const struct iovec *iov, int n) {
    readv_fn f = readv_next();
    if (f) return f(fd, iov, n);
    return syscall(SYS_readv, fd, iov, n);
}

ssize_t real_writev(int fd, const struct iovec *iov, int n) {
    readv_fn f = writev_next();
    if (f) return f(fd, iov, n);
    return syscall(SYS_writev, fd, iov, n);
}

ssize_t real_pread(int fd, void *buffer, size_t count, off_t offset) {
    pread_fn f = pread64_next();
    if (f) return f(fd, buffer, count, offset);
    return syscall(SYS_pread64, fd, buffer, count, offset);
}

ssize_t real_pwrite(int fd, const void *buffer, size_t count, off_t offset) {
    pwrite_fn f = pwrite64_next();
    if (f) return f(fd, buffer, count, offset);
    return syscall(SYS_pwrite64, fd, buffer, count, offset);
}

ssize_t real_preadv2(int fd, const struct iovec *iov, int n, off_t offset, int flags) {
    preadv2_fn f = preadv2_next();
    if (f) return f(fd, iov, n, offset, flags);
    return syscall(SYS_preadv2, fd, iov, n, offset, 0, flags);
}

ssize_t real_pwritev2(int fd, const struct iovec *iov, int n, off_t offset, int flags) {
    preadv2_fn f = pwritev2_next();
    if (f) return f(fd, iov, n, offset, flags);
    return syscall(SYS_pwritev2, fd, iov, n, offset, 0, flags);
}

void *real_mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    mmap_fn f = mmap_next();
    if (f) return f(addr, length, prot, flags, fd, offset);
    return (void *)syscall(SYS_mmap, addr, length, prot, flags, fd, offset);
}

int real_fstatat(int dirfd, const char *path, struct stat *st, int flags) {
    fstatat_fn f = fstatat_next();
    if (f) return f(dirfd, path, st, flags);
    return (int)syscall(SYS_newfstatat, dirfd, path, st, flags);
}

int real_statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *stx) {
    statx_fn f = statx_next();
    if (f) return f(dirfd, path, flags, mask, stx);
    return (int)syscall(SYS_statx, dirfd, path, flags, mask, stx);
}

int real_faccessat(int dirfd, const char *path, int mode, int flags) {
    faccessat_fn f = faccessat_next();
    if (f) return f(dirfd, path, mode, flags);
    return (int)syscall(SYS_faccessat2, dirfd, path, mode, flags);
}

int real_euidaccess(const char *path, int mode) {
    euidaccess_fn f = euidaccess_next();
    if (f) return f(path, mode);
    return (int)syscall(SYS_faccessat2, AT_FDCWD, path, mode, AT_EACCESS);
}

int real_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event) {
    epoll_ctl_fn f = epoll_ctl_next();
    if (f) return f(epfd, op, fd, event);
    return (int)syscall(SYS_epoll_ctl, epfd, op, fd, event);
}
