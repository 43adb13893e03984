/*
 * The interposed symbols.
 *
 * Every wrapper starts with the same test: is this our path ("/dev/iommu") or our descriptor
 * (a slot in the fd table)? If not — the case for every program that never opens /dev/iommu —
 * the call goes to the next definition (libc) with its arguments untouched and errno as libc
 * leaves it; nothing in Swift is touched. Owned descriptors are real kernel descriptors:
 *  - an iommufd is a sealed, empty memfd ("/memfd:uiommufd"), one per open, so numbering,
 *    close-on-exec, dup, fork inheritance, poll/select/epoll (always readable and writable, as
 *    the kernel's iommufd with no poll method), F_GETFL/F_SETFL and close_range all behave;
 *  - an auxiliary file (selftest access, fault queue, vEVENTQ) is an eventfd whose readability
 *    the Swift half drives, so poll works without interposing poll.
 * ioctl/mmap/read/write/close on them go to Swift (through the gate); the few generic ioctls the
 * kernel answers before the driver sees them (FIOCLEX, FIONCLEX, FIONBIO, FIOASYNC) go to the
 * real descriptor. Results are kernel-style: -1 and errno on failure, errno untouched on
 * success.
 *
 * A descriptor closed behind our back (a raw close system call) leaves a stale slot; when its
 * number is reused, the first read/write/mmap/stat or non-iommufd ioctl notices that the file is
 * no longer our memfd (device and inode differ), drops the slot and lets the kernel answer.
 * Not served: paths other than exactly "/dev/iommu" (relative opens, fopen — glibc opens
 * internally), raw system calls, io_uring, static binaries; vfork children must not close owned
 * descriptors (they share our table).
 */
#include "internal.h"
#include "core.h"
#include "vfio_core.h"
#include "uiommu_interpose.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

static const char iommu_path[] = "/dev/iommu";
/* The character device we report for /dev/iommu: misc major 10, a minor from the dynamic range
 * (the kernel's iommufd registers MISC_DYNAMIC_MINOR). */
#define IOMMU_MAJOR 10
#define IOMMU_MINOR 123
#define IOMMU_INODE 0x696f6d6dUL
/* /dev/vfio/vfio: misc device VFIO_MINOR. */
#define VFIO_CONTAINER_MAJOR 10
#define VFIO_CONTAINER_MINOR 196

static inline int is_iommu_path(const char *path) {
    return path != NULL && path[0] == '/' && path[1] == 'd' && strcmp(path, iommu_path) == 0;
}

static inline int fail(int error) {
    errno = error;
    return -1;
}

/* ---- open ------------------------------------------------------------------------------------ */

int owned_memfd(const char *name, int flags) {
    if (flags & O_PATH) return fail(ENXIO);
    if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL)) return fail(EEXIST);
    if (flags & O_DIRECTORY) return fail(ENOTDIR);
    int fd = memfd_create(name, MFD_ALLOW_SEALING | ((flags & O_CLOEXEC) ? MFD_CLOEXEC : 0));
    if (fd < 0) return -1;
    real_fcntl(fd, F_ADD_SEALS, (void *)(long)(F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL));
    int access = flags & O_ACCMODE;
    if (access == O_RDONLY || access == O_WRONLY) {
        /* A memfd is O_RDWR; reopen it through /proc so F_GETFL shows the caller's access mode. */
        char path[48];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        int again = real_openat(AT_FDCWD, path, access | O_CLOEXEC, 0);
        if (again >= 0) {
            real_dup3(again, fd, flags & O_CLOEXEC);
            real_close(again);
        }
    }
    if (flags & O_NONBLOCK) real_fcntl(fd, F_SETFL, (void *)(long)O_NONBLOCK);
    return fd;
}

void install_owned(int fd, struct handle *h) {
    struct stat st;
    if (real_fstatat(fd, "", &st, AT_EMPTY_PATH) == 0) {
        h->dev = st.st_dev;
        h->ino = st.st_ino;
    }
    /* A leftover slot means the number was closed behind our back (a raw syscall). */
    struct handle *stale = slot_exchange(fd, h);
    if (stale) handle_unref(stale);
}

int open_iommufd_variant(int flags, int variant) {
    int saved = errno;
    int fd = owned_memfd("uiommufd", flags);
    if (fd < 0) return -1;
    int32_t error = 0;
    gate_enter();
    void *object = uiommu_core_open(flags, &error);
    if (object && variant == 1) uiommu_core_vfio_container(object);
    gate_exit();
    if (!object) {
        real_close(fd);
        return fail(error > 0 ? error : ENODEV);
    }
    struct handle *h = handle_new(HANDLE_IOMMUFD, object);
    if (!h) {
        gate_enter();
        uiommu_core_release(object);
        gate_exit();
        real_close(fd);
        return fail(ENOMEM);
    }
    if (variant == 1) h->rdev = makedev(VFIO_CONTAINER_MAJOR, VFIO_CONTAINER_MINOR);
    install_owned(fd, h);
    errno = saved;
    return fd;
}

static int open_iommufd(int flags) {
    if (client_mode_enabled()) return client_open(flags);
    return open_iommufd_variant(flags, 0);
}

/* open of a path that starts like a virtual one: /dev/iommu, /dev/vfio/..., the sysfs trees. */
static int open_virtual(int dirfd, const char *path, int flags, mode_t mode) {
    if (is_iommu_path(path)) return open_iommufd(flags);
    unsigned index = 0;
    int kind = vfio_node_kind(path, &index);
    if (kind == 1) return open_iommufd_variant(flags, 1);
    if (kind == 2 && client_mode_enabled()) {
        /* A device cdev is served with the iommufd it binds to (group files and the container
         * stay in this process). */
        dev_t rdev;
        return client_vfio_open(index, flags, &rdev);
    }
    if (kind >= 2) return vfio_open_node(kind, index, flags);
    char buffer[PATH_MAX];
    return real_openat(dirfd, sysfs_rewrite(path, buffer, sizeof buffer), flags, mode);
}

static inline int needs_mode(int flags) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

EXPORT int open(const char *path, int flags, ...) {
    mode_t mode = 0;
    if (needs_mode(flags)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    if (UNLIKELY(maybe_virtual(path))) return open_virtual(AT_FDCWD, path, flags, mode);
    return real_openat(AT_FDCWD, path, flags, mode);
}

EXPORT int open64(const char *path, int flags, ...) {
    mode_t mode = 0;
    if (needs_mode(flags)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    if (UNLIKELY(maybe_virtual(path))) return open_virtual(AT_FDCWD, path, flags | O_LARGEFILE, mode);
    return real_openat(AT_FDCWD, path, flags | O_LARGEFILE, mode);
}

EXPORT int openat(int dirfd, const char *path, int flags, ...) {
    mode_t mode = 0;
    if (needs_mode(flags)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    if (UNLIKELY(maybe_virtual(path))) return open_virtual(dirfd, path, flags, mode);
    return real_openat(dirfd, path, flags, mode);
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...) {
    mode_t mode = 0;
    if (needs_mode(flags)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    if (UNLIKELY(maybe_virtual(path))) return open_virtual(dirfd, path, flags | O_LARGEFILE, mode);
    return real_openat(dirfd, path, flags | O_LARGEFILE, mode);
}

/* _FORTIFY_SOURCE variants (no mode: glibc aborts on O_CREAT without one). */
EXPORT int __open_2(const char *path, int flags) {
    if (needs_mode(flags)) abort();
    if (UNLIKELY(maybe_virtual(path))) return open_virtual(AT_FDCWD, path, flags, 0);
    return real_openat(AT_FDCWD, path, flags, 0);
}

EXPORT int __open64_2(const char *path, int flags) {
    if (needs_mode(flags)) abort();
    if (UNLIKELY(maybe_virtual(path))) return open_virtual(AT_FDCWD, path, flags | O_LARGEFILE, 0);
    return real_openat(AT_FDCWD, path, flags | O_LARGEFILE, 0);
}

EXPORT int __openat_2(int dirfd, const char *path, int flags) {
    if (needs_mode(flags)) abort();
    if (UNLIKELY(maybe_virtual(path))) return open_virtual(dirfd, path, flags, 0);
    return real_openat(dirfd, path, flags, 0);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags) {
    if (needs_mode(flags)) abort();
    if (UNLIKELY(maybe_virtual(path))) return open_virtual(dirfd, path, flags | O_LARGEFILE, 0);
    return real_openat(dirfd, path, flags | O_LARGEFILE, 0);
}

/* ---- close ----------------------------------------------------------------------------------- */

static void drop_after_close(int fd, struct handle *h, void *ctx) {
    (void)ctx;
    if (h->kind == HANDLE_AUX) aux_forget_fd(h, fd);
    handle_unref(h);
}

EXPORT int close(int fd) {
    if (LIKELY(!slot_get(fd))) return real_close(fd);
    /* Forget the slot before the number is freed: an open racing with us may get it back. */
    struct handle *h = slot_exchange(fd, NULL);
    if (h && h->kind == HANDLE_AUX) aux_forget_fd(h, fd);
    int r = real_close(fd);
    if (h) {
        int saved = errno;
        handle_unref(h);
        errno = saved;
    }
    return r;
}

struct range_batch {
    int count;
    int fds[64];
    struct handle *hs[64];
    struct range_batch *more;
};

static void collect(int fd, struct handle *h, void *ctx) {
    struct range_batch *b = ctx;
    while (b->count == 64) {
        if (!b->more) {
            b->more = real_mmap(NULL, sizeof *b, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (b->more == MAP_FAILED) { b->more = NULL; drop_after_close(fd, h, NULL); return; }
            b->more->count = 0;
            b->more->more = NULL;
        }
        b = b->more;
    }
    b->fds[b->count] = fd;
    b->hs[b->count] = h;
    b->count++;
}

static void release_batch(struct range_batch *b, int restore) {
    int saved = errno;
    for (struct range_batch *p = b; p; ) {
        for (int i = 0; i < p->count; i++) {
            if (restore) {
                struct handle *other = slot_exchange(p->fds[i], p->hs[i]);
                if (other) handle_unref(other);
            } else {
                drop_after_close(p->fds[i], p->hs[i], NULL);
            }
        }
        struct range_batch *next = p->more;
        if (p != b) munmap(p, sizeof *p);
        p = next;
    }
    errno = saved;
}

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif

EXPORT int close_range(unsigned first, unsigned last, int flags) {
    if (LIKELY(!atomic_load_explicit(&uiommu_table_active, memory_order_acquire))
        || (flags & CLOSE_RANGE_CLOEXEC) || first > last
        || (flags & ~(int)(CLOSE_RANGE_CLOEXEC | CLOSE_RANGE_UNSHARE)))
        return real_close_range(first, last, flags);
    struct range_batch batch = { .count = 0, .more = NULL };
    slot_clear_range(first, last, collect, &batch);
    int r = real_close_range(first, last, flags);
    release_batch(&batch, r != 0);
    return r;
}

EXPORT void closefrom(int lowfd) {
    if (LIKELY(!atomic_load_explicit(&uiommu_table_active, memory_order_acquire)) || lowfd < 0) {
        real_closefrom(lowfd);
        return;
    }
    struct range_batch batch = { .count = 0, .more = NULL };
    slot_clear_range((unsigned)lowfd, ~0U, collect, &batch);
    real_closefrom(lowfd);
    release_batch(&batch, 0);
}

/* ---- dup --------------------------------------------------------------------------------------- */

/* Installs `h` (with the reference the caller took) in slot `fd`, dropping what was there. */
static void install(int fd, struct handle *h) {
    struct handle *previous = slot_exchange(fd, h);
    if (previous) {
        if (previous->kind == HANDLE_AUX) aux_forget_fd(previous, fd);
        handle_unref(previous);
    }
}

EXPORT int dup(int fd) {
    struct handle *h = handle_get_ref(fd);
    if (LIKELY(!h)) return real_dup(fd);
    int r = real_dup(fd);
    if (r >= 0) {
        int saved = errno;
        install(r, h);
        errno = saved;
    } else {
        handle_unref(h);
    }
    return r;
}

static int dup_onto(int fd, int fd2, int flags, int three) {
    struct handle *h = handle_get_ref(fd);
    if (LIKELY(!h && !slot_get(fd2)))
        return three ? real_dup3(fd, fd2, flags) : real_dup2(fd, fd2);
    int r = three ? real_dup3(fd, fd2, flags) : real_dup2(fd, fd2);
    int saved = errno;
    if (r < 0 || fd == fd2) {
        /* Failed, or dup2(fd, fd): nothing changed. */
        if (h) handle_unref(h);
    } else {
        install(fd2, h);   /* h NULL: an unowned file now sits on a number we owned */
    }
    errno = saved;
    return r;
}

EXPORT int dup2(int fd, int fd2) { return dup_onto(fd, fd2, 0, 0); }
EXPORT int dup3(int fd, int fd2, int flags) { return dup_onto(fd, fd2, flags, 1); }

static int fcntl_common(int fd, int cmd, void *arg) {
    if (LIKELY(!slot_get(fd))) return real_fcntl(fd, cmd, arg);
    if (cmd == F_GETFL) {
        /* A served iommufd is a socket (always O_RDWR underneath): report the open's mode. */
        int r = real_fcntl(fd, cmd, arg);
        gate_enter();
        struct handle *h = slot_get(fd);
        if (r >= 0 && h && h->kind == HANDLE_REMOTE) r = (r & ~O_ACCMODE) | client_access_mode(h);
        gate_exit();
        return r;
    }
    if (cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC) return real_fcntl(fd, cmd, arg);
    struct handle *h = handle_get_ref(fd);
    int r = real_fcntl(fd, cmd, arg);
    if (h) {
        int saved = errno;
        if (r >= 0) install(r, h); else handle_unref(h);
        errno = saved;
    }
    return r;
}

EXPORT int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl_common(fd, cmd, arg);
}

EXPORT int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl_common(fd, cmd, arg);
}

/* ---- ioctl ------------------------------------------------------------------------------------- */

static int owned_ioctl(int fd, unsigned long request, unsigned long arg) {
    /* Generic file ioctls the kernel handles before the driver (do_vfs_ioctl). */
    if (request == FIOCLEX || request == FIONCLEX || request == FIONBIO || request == FIOASYNC)
        return real_ioctl(fd, request, arg);
    int saved = errno;
    gate_enter();
    struct handle *h = slot_get(fd);
    if (h && (h->kind == HANDLE_VFIO_DEVICE || h->kind == HANDLE_VFIO_GROUP)
        && (((request >> 8) & 0xff) == 0x3b || iommufd_slot_is_current(fd, h))) {
        int r = vfio_ioctl(h, request, arg);
        gate_exit();
        if (r < 0) return fail(-r);
        errno = saved;
        return r;
    }
    if (h && h->kind == HANDLE_REMOTE
        && (((request >> 8) & 0xff) == 0x3b || iommufd_slot_is_current(fd, h))) {
        int r = client_ioctl(h, fd, request, arg);
        gate_exit();
        if (r < 0) return fail(-r);
        errno = saved;
        return r;
    }
    if (!h || h->kind != HANDLE_IOMMUFD
        || (((request >> 8) & 0xff) != 0x3b && !iommufd_slot_is_current(fd, h))) {
        /* Closed meanwhile, an eventfd, or — for a request that is not iommufd's — a number
         * that is no longer our memfd: the kernel answers. */
        gate_exit();
        errno = saved;
        return real_ioctl(fd, request, arg);
    }
    int64_t r = uiommu_core_ioctl(h->object, request, arg);
    gate_exit();
    if (r < 0) return fail((int)-r);
    errno = saved;
    return (int)r;
}

EXPORT int ioctl(int fd, unsigned long request, ...) {
    va_list ap;
    va_start(ap, request);
    unsigned long arg = va_arg(ap, unsigned long);
    va_end(ap);
    if (LIKELY(!slot_get(fd))) {
        /* An iommufd command on a descriptor we do not know: in client mode it may be a
         * connection to the server that this program inherited or received. */
        if (LIKELY(((request >> 8) & 0xff) != 0x3b) || !client_adopt(fd)) return real_ioctl(fd, request, arg);
    }
    return owned_ioctl(fd, request, arg);
}

/* ---- epoll ------------------------------------------------------------------------------------- */

/* The kernel's iommufd has no poll method, so epoll refuses it (EPERM). A memfd-backed one gets
 * that from the kernel; a served one is a socket, which epoll would accept. */
EXPORT int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event) {
    if (UNLIKELY(slot_get(fd) != NULL) && op == EPOLL_CTL_ADD) {
        gate_enter();
        struct handle *h = slot_get(fd);
        int refuse = h && h->kind == HANDLE_REMOTE && iommufd_slot_is_current(fd, h);
        gate_exit();
        if (refuse) { errno = EPERM; return -1; }
    }
    return real_epoll_ctl(epfd, op, fd, event);
}

/* ---- read / write ------------------------------------------------------------------------------- */

/* Bounce buffer size for auxiliary reads and writes (records are tens of bytes). */
#define BOUNCE_MAX (64 * 1024)

/* The most one read of an auxiliary file returns: a multiple of the fault queue's 40-byte
 * records (the kernel answers ESPIPE to a count that is not one, so the cap must not make one);
 * a vEVENTQ read takes any count. */
#define AUX_READ_MAX (40 * 1638)

static ssize_t aux_read(struct handle *h, void *buffer, size_t count) {
    char stack[1024];
    size_t n = count < AUX_READ_MAX ? count : AUX_READ_MAX;
    char *bounce = n <= sizeof stack ? stack : malloc(n);
    if (!bounce) return -ENOMEM;
    /* The kernel puts events back when the copy to the user fails; once the Swift half has
     * taken them we could not, so a file with something to read first checks that the buffer
     * is writable (reading and writing back what is there). */
    pthread_mutex_lock(&h->lock);
    int readable = h->signalled;
    pthread_mutex_unlock(&h->lock);
    if (readable && (uiommu_copy_from_user(bounce, (uint64_t)(uintptr_t)buffer, n) != 0
                     || uiommu_copy_to_user((uint64_t)(uintptr_t)buffer, bounce, n) != 0)) {
        if (bounce != stack) free(bounce);
        return -EFAULT;
    }
    int64_t r = uiommu_core_aux_read(h->object, bounce, n);
    if (r > 0 && uiommu_copy_to_user((uint64_t)(uintptr_t)buffer, bounce, (size_t)r) != 0) r = -EFAULT;
    if (bounce != stack) free(bounce);
    return (ssize_t)r;
}

static ssize_t aux_write(struct handle *h, const void *buffer, size_t count) {
    char stack[1024];
    size_t n = count < BOUNCE_MAX ? count : BOUNCE_MAX;
    char *bounce = n <= sizeof stack ? stack : malloc(n);
    if (!bounce) return -ENOMEM;
    int64_t r = uiommu_copy_from_user(bounce, (uint64_t)(uintptr_t)buffer, n) != 0 ? -EFAULT
              : uiommu_core_aux_write(h->object, bounce, n);
    if (bounce != stack) free(bounce);
    return (ssize_t)r;
}

/* read/write-family call on an owned descriptor. `op`: 0 read, 1 write. The iommufd has no
 * read or write method: EINVAL, as the kernel. Positioned calls on an auxiliary file (an
 * anonymous inode, not seekable): ESPIPE. */
static ssize_t owned_rw(int fd, int op, int positioned, off_t position, const struct iovec *iov, int iovcnt, int *handled) {
    int saved = errno;
    gate_enter();
    struct handle *h = slot_get(fd);
    if (!h) { gate_exit(); *handled = 0; return 0; }
    *handled = 1;
    ssize_t r;
    if ((h->kind == HANDLE_VFIO_DEVICE || h->kind == HANDLE_VFIO_GROUP)) {
        if (!iommufd_slot_is_current(fd, h)) { gate_exit(); *handled = 0; return 0; }
        r = vfio_rw(fd, h, op, iov, iovcnt, positioned ? position : -1);
        gate_exit();
        if (r < 0) { errno = (int)-r; return -1; }
        errno = saved;
        return r;
    }
    if ((h->kind == HANDLE_IOMMUFD || h->kind == HANDLE_REMOTE) && !iommufd_slot_is_current(fd, h)) {
        gate_exit();
        *handled = 0;
        return 0;
    }
    if (h->kind == HANDLE_REMOTE && client_is_device(h)) {
        r = client_vfio_rw(h, fd, op, iov, iovcnt, positioned ? position : -1);
        gate_exit();
        if (r < 0) { errno = (int)-r; return -1; }
        errno = saved;
        return r;
    }
    if (h->kind == HANDLE_IOMMUFD || h->kind == HANDLE_REMOTE) {
        /* vfs_read/vfs_write: EBADF without the access mode, EINVAL without a method. */
        int access = h->kind == HANDLE_REMOTE ? client_access_mode(h) : real_fcntl(fd, F_GETFL, NULL) & O_ACCMODE;
        r = (op == 0 && access == O_WRONLY) || (op == 1 && access == O_RDONLY) ? -EBADF : -EINVAL;
    } else if (positioned) {
        r = -ESPIPE;
    } else if (iovcnt < 0 || iovcnt > IOV_MAX) {
        r = -EINVAL;
    } else {
        r = 0;
        for (int i = 0; i < iovcnt; i++) {
            if (iov[i].iov_len == 0) continue;
            ssize_t n = h->kind == HANDLE_REMOTE_AUX ? client_aux_rw(h, fd, op, iov[i].iov_base, iov[i].iov_len)
                      : op == 0 ? aux_read(h, iov[i].iov_base, iov[i].iov_len)
                                : aux_write(h, iov[i].iov_base, iov[i].iov_len);
            if (n < 0) { if (r == 0) r = n; break; }
            r += n;
            if ((size_t)n < iov[i].iov_len) break;
        }
    }
    gate_exit();
    if (r < 0) { errno = (int)-r; return -1; }
    errno = saved;
    return r;
}

#define OWNED_RW(fd, op, positioned, iov, cnt, fallback)                                  \
    OWNED_RW_AT(fd, op, positioned, 0, iov, cnt, fallback)
#define OWNED_RW_AT(fd, op, positioned, position, iov, cnt, fallback)                     \
    do {                                                                                  \
        if (UNLIKELY(slot_get(fd) != NULL)) {                                             \
            int handled;                                                                  \
            ssize_t r = owned_rw(fd, op, positioned, position, iov, cnt, &handled);       \
            if (handled) return r;                                                        \
        }                                                                                 \
        return fallback;                                                                  \
    } while (0)

EXPORT ssize_t read(int fd, void *buffer, size_t count) {
    struct iovec v = { buffer, count };
    OWNED_RW(fd, 0, 0, &v, 1, real_read(fd, buffer, count));
}

EXPORT ssize_t write(int fd, const void *buffer, size_t count) {
    struct iovec v = { (void *)buffer, count };
    OWNED_RW(fd, 1, 0, &v, 1, real_write(fd, buffer, count));
}

EXPORT ssize_t readv(int fd, const struct iovec *iov, int n) {
    OWNED_RW(fd, 0, 0, iov, n, real_readv(fd, iov, n));
}

EXPORT ssize_t writev(int fd, const struct iovec *iov, int n) {
    OWNED_RW(fd, 1, 0, iov, n, real_writev(fd, iov, n));
}

EXPORT ssize_t pread(int fd, void *buffer, size_t count, off_t offset) {
    struct iovec v = { buffer, count };
    OWNED_RW_AT(fd, 0, 1, offset, &v, 1, real_pread(fd, buffer, count, offset));
}

EXPORT ssize_t pread64(int fd, void *buffer, size_t count, off_t offset) {
    struct iovec v = { buffer, count };
    OWNED_RW_AT(fd, 0, 1, offset, &v, 1, real_pread(fd, buffer, count, offset));
}

EXPORT ssize_t pwrite(int fd, const void *buffer, size_t count, off_t offset) {
    struct iovec v = { (void *)buffer, count };
    OWNED_RW_AT(fd, 1, 1, offset, &v, 1, real_pwrite(fd, buffer, count, offset));
}

EXPORT ssize_t pwrite64(int fd, const void *buffer, size_t count, off_t offset) {
    struct iovec v = { (void *)buffer, count };
    OWNED_RW_AT(fd, 1, 1, offset, &v, 1, real_pwrite(fd, buffer, count, offset));
}

/* preadv/pwritev: offset -1 is invalid (unlike preadv2), so they map onto preadv2 only for
 * offsets >= 0. */
EXPORT ssize_t preadv(int fd, const struct iovec *iov, int n, off_t offset) {
    OWNED_RW_AT(fd, 0, 1, offset, iov, n, offset < 0 ? (errno = EINVAL, -1) : real_preadv2(fd, iov, n, offset, 0));
}

EXPORT ssize_t preadv64(int fd, const struct iovec *iov, int n, off_t offset) {
    OWNED_RW_AT(fd, 0, 1, offset, iov, n, offset < 0 ? (errno = EINVAL, -1) : real_preadv2(fd, iov, n, offset, 0));
}

EXPORT ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t offset) {
    OWNED_RW_AT(fd, 1, 1, offset, iov, n, offset < 0 ? (errno = EINVAL, -1) : real_pwritev2(fd, iov, n, offset, 0));
}

EXPORT ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t offset) {
    OWNED_RW_AT(fd, 1, 1, offset, iov, n, offset < 0 ? (errno = EINVAL, -1) : real_pwritev2(fd, iov, n, offset, 0));
}

EXPORT ssize_t preadv2(int fd, const struct iovec *iov, int n, off_t offset, int flags) {
    OWNED_RW_AT(fd, 0, offset != -1, offset, iov, n, real_preadv2(fd, iov, n, offset, flags));
}

EXPORT ssize_t preadv64v2(int fd, const struct iovec *iov, int n, off_t offset, int flags) {
    OWNED_RW_AT(fd, 0, offset != -1, offset, iov, n, real_preadv2(fd, iov, n, offset, flags));
}

EXPORT ssize_t pwritev2(int fd, const struct iovec *iov, int n, off_t offset, int flags) {
    OWNED_RW_AT(fd, 1, offset != -1, offset, iov, n, real_pwritev2(fd, iov, n, offset, flags));
}

EXPORT ssize_t pwritev64v2(int fd, const struct iovec *iov, int n, off_t offset, int flags) {
    OWNED_RW_AT(fd, 1, offset != -1, offset, iov, n, real_pwritev2(fd, iov, n, offset, flags));
}

/* _FORTIFY_SOURCE variants of read and pread. */
EXPORT ssize_t __read_chk(int fd, void *buffer, size_t count, size_t buffer_size) {
    if (count > buffer_size) abort();
    return read(fd, buffer, count);
}

EXPORT ssize_t __pread_chk(int fd, void *buffer, size_t count, off_t offset, size_t buffer_size) {
    if (count > buffer_size) abort();
    return pread(fd, buffer, count, offset);
}

EXPORT ssize_t __pread64_chk(int fd, void *buffer, size_t count, off_t offset, size_t buffer_size) {
    if (count > buffer_size) abort();
    return pread(fd, buffer, count, offset);
}

/* ---- mmap -------------------------------------------------------------------------------------- */

static void *owned_mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    int saved = errno;
    gate_enter();
    struct handle *h = slot_get(fd);
    if (h && h->kind == HANDLE_VFIO_DEVICE && iommufd_slot_is_current(fd, h)) {
        void *p = mmio_map(h, fd, addr, length, prot, flags, offset);
        gate_exit();
        if (p != MAP_FAILED) errno = saved;
        return p;
    }
    if (h && h->kind == HANDLE_VFIO_GROUP && iommufd_slot_is_current(fd, h)) {
        gate_exit();
        errno = ENODEV;
        return MAP_FAILED;
    }
    if (h && h->kind == HANDLE_REMOTE && client_is_device(h) && iommufd_slot_is_current(fd, h)) {
        void *p = mmio_map(h, fd, addr, length, prot, flags, offset);
        gate_exit();
        if (p != MAP_FAILED) errno = saved;
        return p;
    }
    if (h && h->kind == HANDLE_REMOTE && iommufd_slot_is_current(fd, h)) {
        /* No mmap regions are served yet (the vIOMMU's is future work). */
        gate_exit();
        errno = ENODEV;
        return MAP_FAILED;
    }
    if (!h || h->kind != HANDLE_IOMMUFD || !iommufd_slot_is_current(fd, h)) {
        gate_exit();
        errno = saved;
        return real_mmap(addr, length, prot, flags, fd, offset);   /* an eventfd: ENODEV from the kernel */
    }
    int64_t r = uiommu_core_mmap(h->object, length, prot, flags, offset);
    gate_exit();
    if (r < 0 && r >= -4095) { errno = (int)-r; return MAP_FAILED; }
    errno = saved;
    return (void *)(uintptr_t)r;
}

EXPORT void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    if (LIKELY((flags & MAP_ANONYMOUS) || !slot_get(fd))) return real_mmap(addr, length, prot, flags, fd, offset);
    return owned_mmap(addr, length, prot, flags, fd, offset);
}

EXPORT void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    if (LIKELY((flags & MAP_ANONYMOUS) || !slot_get(fd))) return real_mmap(addr, length, prot, flags, fd, offset);
    return owned_mmap(addr, length, prot, flags, fd, offset);
}

/* ---- stat and access of /dev/iommu ---------------------------------------------------------------- */

void fake_iommu_stat(struct stat *st) { fake_chardev_stat(st, 0); }

void fake_chardev_stat(struct stat *st, dev_t rdev) {
    /* Owner, device and times of devtmpfs, taken from /dev/null; the rest is the iommufd's. */
    struct stat null;
    int saved = errno;
    if (real_fstatat(AT_FDCWD, "/dev/null", &null, 0) != 0) memset(&null, 0, sizeof null);
    errno = saved;
    *st = null;
    st->st_mode = S_IFCHR | (rdev ? 0666 : 0660);   /* the kernel creates /dev/iommu 0660 */
    st->st_rdev = rdev ? rdev : makedev(IOMMU_MAJOR, IOMMU_MINOR);
    st->st_ino = rdev ? IOMMU_INODE + (unsigned long)rdev : IOMMU_INODE;
    st->st_nlink = 1;
    st->st_size = 0;
    st->st_blocks = 0;
}

static void fake_iommu_statx(struct statx *stx) { fake_chardev_statx(stx, 0); }

void fake_chardev_statx(struct statx *stx, dev_t rdev) {
    int saved = errno;
    if (real_statx(AT_FDCWD, "/dev/null", 0, STATX_BASIC_STATS, stx) != 0) memset(stx, 0, sizeof *stx);
    errno = saved;
    stx->stx_mode = S_IFCHR | (rdev ? 0666 : 0660);
    stx->stx_rdev_major = rdev ? major(rdev) : IOMMU_MAJOR;
    stx->stx_rdev_minor = rdev ? minor(rdev) : IOMMU_MINOR;
    stx->stx_ino = rdev ? IOMMU_INODE + (unsigned long)rdev : IOMMU_INODE;
    stx->stx_nlink = 1;
    stx->stx_size = 0;
    stx->stx_blocks = 0;
}

static int empty_path(const char *path) { return path != NULL && path[0] == 0; }

/* Whether `fd` is one of our memfd-backed files (an iommufd or a VFIO file); its st_rdev. */
static inline int owns_iommufd(int fd) {
    struct handle *h = slot_get(fd);
    return h != NULL && h->kind != HANDLE_AUX && h->kind != HANDLE_REMOTE_AUX && iommufd_slot_is_current(fd, h);
}

static inline dev_t owned_rdev(int fd) {
    struct handle *h = slot_get(fd);
    return h ? h->rdev : 0;
}

static int stat_at(int dirfd, const char *path, struct stat *st, int flags) {
    if (UNLIKELY(maybe_virtual(path))) {
        if (is_iommu_path(path)) { fake_iommu_stat(st); return 0; }
        dev_t rdev = vnode_rdev(path);
        if (rdev) { fake_chardev_stat(st, rdev); return 0; }
        char buffer[PATH_MAX];
        return real_fstatat(dirfd, sysfs_rewrite(path, buffer, sizeof buffer), st, flags);
    }
    if (UNLIKELY((flags & AT_EMPTY_PATH) && empty_path(path) && owns_iommufd(dirfd))) {
        fake_chardev_stat(st, owned_rdev(dirfd));
        return 0;
    }
    return real_fstatat(dirfd, path, st, flags);
}

EXPORT int stat(const char *path, struct stat *st) { return stat_at(AT_FDCWD, path, st, 0); }
EXPORT int stat64(const char *path, struct stat64 *st) { return stat_at(AT_FDCWD, path, (struct stat *)st, 0); }
EXPORT int lstat(const char *path, struct stat *st) { return stat_at(AT_FDCWD, path, st, AT_SYMLINK_NOFOLLOW); }
EXPORT int lstat64(const char *path, struct stat64 *st) { return stat_at(AT_FDCWD, path, (struct stat *)st, AT_SYMLINK_NOFOLLOW); }
EXPORT int fstatat(int dirfd, const char *path, struct stat *st, int flags) { return stat_at(dirfd, path, st, flags); }
EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags) { return stat_at(dirfd, path, (struct stat *)st, flags); }

EXPORT int fstat(int fd, struct stat *st) {
    if (UNLIKELY(owns_iommufd(fd))) { fake_chardev_stat(st, owned_rdev(fd)); return 0; }
    return real_fstatat(fd, "", st, AT_EMPTY_PATH);
}

EXPORT int fstat64(int fd, struct stat64 *st) { return fstat(fd, (struct stat *)st); }

/* The pre-2.33 glibc entry points that old binaries call for stat (x86-64: one layout). */
EXPORT int __xstat(int ver, const char *path, struct stat *st) { (void)ver; return stat_at(AT_FDCWD, path, st, 0); }
EXPORT int __xstat64(int ver, const char *path, struct stat64 *st) { (void)ver; return stat_at(AT_FDCWD, path, (struct stat *)st, 0); }
EXPORT int __lxstat(int ver, const char *path, struct stat *st) { (void)ver; return stat_at(AT_FDCWD, path, st, AT_SYMLINK_NOFOLLOW); }
EXPORT int __lxstat64(int ver, const char *path, struct stat64 *st) { (void)ver; return stat_at(AT_FDCWD, path, (struct stat *)st, AT_SYMLINK_NOFOLLOW); }
EXPORT int __fxstat(int ver, int fd, struct stat *st) { (void)ver; return fstat(fd, st); }
EXPORT int __fxstat64(int ver, int fd, struct stat64 *st) { (void)ver; return fstat(fd, (struct stat *)st); }
EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags) { (void)ver; return stat_at(dirfd, path, st, flags); }
EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags) { (void)ver; return stat_at(dirfd, path, (struct stat *)st, flags); }

EXPORT int statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *stx) {
    if (UNLIKELY(is_iommu_path(path))) { fake_iommu_statx(stx); return 0; }
    if (UNLIKELY((flags & AT_EMPTY_PATH) && empty_path(path) && owns_iommufd(dirfd))) {
        fake_chardev_statx(stx, owned_rdev(dirfd));
        return 0;
    }
    if (UNLIKELY(maybe_virtual(path))) {
        dev_t rdev = vnode_rdev(path);
        if (rdev) { fake_chardev_statx(stx, rdev); return 0; }
        char buffer[PATH_MAX];
        return real_statx(dirfd, sysfs_rewrite(path, buffer, sizeof buffer), flags, mask, stx);
    }
    return real_statx(dirfd, path, flags, mask, stx);
}

/* access: rw for everyone (we serve every caller), never executable. */
static int iommu_access(int mode) {
    if (mode & ~(F_OK | R_OK | W_OK | X_OK)) return fail(EINVAL);
    if (mode & X_OK) return fail(EACCES);
    return 0;
}

/* A virtual device node answers as /dev/iommu does; a sysfs path is checked in the shadow
 * tree. Returns 1 when answered (result in *r), 0 to go on with `*p` (maybe rewritten). */
static int access_virtual(const char **p, char *buffer, size_t size, int mode, int *r) {
    if (is_iommu_path(*p) || vnode_rdev(*p)) { *r = iommu_access(mode); return 1; }
    *p = sysfs_rewrite(*p, buffer, size);
    return 0;
}

EXPORT int access(const char *path, int mode) {
    char buffer[PATH_MAX];
    int r;
    if (UNLIKELY(maybe_virtual(path)) && access_virtual(&path, buffer, sizeof buffer, mode, &r)) return r;
    return real_faccessat(AT_FDCWD, path, mode, 0);
}

EXPORT int faccessat(int dirfd, const char *path, int mode, int flags) {
    char buffer[PATH_MAX];
    int r;
    if (UNLIKELY(maybe_virtual(path)) && access_virtual(&path, buffer, sizeof buffer, mode, &r)) return r;
    return real_faccessat(dirfd, path, mode, flags);
}

EXPORT int euidaccess(const char *path, int mode) {
    char buffer[PATH_MAX];
    int r;
    if (UNLIKELY(maybe_virtual(path)) && access_virtual(&path, buffer, sizeof buffer, mode, &r)) return r;
    return real_euidaccess(path, mode);
}

EXPORT int eaccess(const char *path, int mode) {
    char buffer[PATH_MAX];
    int r;
    if (UNLIKELY(maybe_virtual(path)) && access_virtual(&path, buffer, sizeof buffer, mode, &r)) return r;
    return real_euidaccess(path, mode);
}

/* ---- the list ------------------------------------------------------------------------------------ */

static const char *const symbols[] = {
    "open", "open64", "openat", "openat64", "__open_2", "__open64_2", "__openat_2", "__openat64_2",
    "close", "close_range", "closefrom", "dup", "dup2", "dup3", "fcntl", "fcntl64", "ioctl", "epoll_ctl",
    "read", "write", "readv", "writev", "pread", "pread64", "pwrite", "pwrite64",
    "preadv", "preadv64", "pwritev", "pwritev64", "preadv2", "preadv64v2", "pwritev2", "pwritev64v2",
    "__read_chk", "__pread_chk", "__pread64_chk", "mmap", "mmap64",
    "stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "fstatat", "fstatat64", "statx",
    "__xstat", "__xstat64", "__lxstat", "__lxstat64", "__fxstat", "__fxstat64", "__fxstatat", "__fxstatat64",
    "access", "faccessat", "euidaccess", "eaccess",
    /* vfio.c, sysfs.c, mmio.c */
    "opendir", "fopen", "fopen64", "freopen", "freopen64", "readlink", "readlinkat", "realpath",
    "__realpath_chk", "canonicalize_file_name", "chdir", "scandir", "scandir64", "getcwd",
    "munmap", "getxattr", "lgetxattr", "listxattr", "llistxattr", "__readlink_chk", "__readlinkat_chk",
    "__getcwd_chk",
    NULL,
};

const char *const *uiommu_interposed_symbols(void) { return symbols; }
