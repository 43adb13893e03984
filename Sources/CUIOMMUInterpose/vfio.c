/*
 * /dev/vfio/: the VFIO container (/dev/vfio/vfio, an iommufd here as with the kernel's
 * IOMMUFD_VFIO_CONTAINER: see interpose.c's open_iommufd_variant), group files
 * (/dev/vfio/<group>) and device files (/dev/vfio/devices/vfioN, and the descriptors
 * VFIO_GROUP_GET_DEVICE_FD returns). Like an iommufd, each open file is a sealed memfd of our
 * own, so numbering, dup, fork, close-on-exec and close behave; ioctl, the read/write family,
 * mmap and fstat reach the Swift half.
 *
 * Also the helpers the Swift half needs to resolve descriptors a VFIO ioctl names: the iommufd
 * behind an fd (VFIO_DEVICE_BIND_IOMMUFD, VFIO_GROUP_SET_CONTAINER) and eventfds
 * (VFIO_DEVICE_SET_IRQS). The kernel keeps a reference to an eventfd it was given, so we keep
 * a duplicate descriptor (close-on-exec, numbered from 1000 to stay out of the program's way)
 * and signal through it.
 */
#include "internal.h"
#include "core.h"
#include "vfio_core.h"
#include "uiommu_interpose.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static int parse_index(const char *s, unsigned *out) {
    if (*s < '0' || *s > '9') return 0;
    if (s[0] == '0' && s[1] != 0) return 0;
    unsigned long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return 0;
        v = v * 10 + (unsigned long)(*s - '0');
        if (v > 0xffffff) return 0;
    }
    *out = (unsigned)v;
    return 1;
}

int vfio_node_kind(const char *path, unsigned *index) {
    static const char prefix[] = "/dev/vfio/";
    if (strncmp(path, prefix, sizeof prefix - 1) != 0) return 0;
    const char *rest = path + sizeof prefix - 1;
    if (strcmp(rest, "vfio") == 0) return 1;
    if (strncmp(rest, "devices/vfio", 12) == 0 && parse_index(rest + 12, index)) return 2;
    if (parse_index(rest, index)) return 3;
    return 0;
}

static int fail_errno(int e) { errno = e; return -1; }

/* A new descriptor for VFIO object `object` of `kind`. */
static int install_vfio(void *object, int kind, int flags, uint32_t maj, uint32_t min) {
    int fd = owned_memfd(kind == HANDLE_VFIO_DEVICE ? "uiommufd-vfio-device" : "uiommufd-vfio-group", flags);
    if (fd < 0) {
        int e = errno;
        gate_enter();
        uiommu_core_vfio_release(object, kind);
        gate_exit();
        return -e;
    }
    struct handle *h = handle_new(kind, object);
    if (!h) {
        gate_enter();
        uiommu_core_vfio_release(object, kind);
        gate_exit();
        real_close(fd);
        return -ENOMEM;
    }
    h->rdev = makedev(maj, min);
    install_owned(fd, h);
    return fd;
}

int vfio_open_node(int kind, unsigned index, int flags) {
    int saved = errno;
    int32_t error = 0;
    uint32_t maj = 0, min = 0;
    gate_enter();
    void *object = uiommu_core_vfio_open(kind, index, flags, &error, &maj, &min);
    gate_exit();
    if (!object) return fail_errno(error > 0 ? error : ENODEV);
    int fd = install_vfio(object, kind == 2 ? HANDLE_VFIO_DEVICE : HANDLE_VFIO_GROUP, flags, maj, min);
    if (fd < 0) return fail_errno(-fd);
    if (kind == 3 && client_mode_enabled()) {
        /* Device cdevs are served by the server, the group file is ours: the server must know
         * the group is open (a cdev bind is then EBUSY, and the open is EBUSY while one is
         * bound). */
        int error = 0;
        void *claim = client_vfio_group_claim(index, &error);
        struct handle *h = claim ? slot_get(fd) : NULL;
        if (!h) {
            if (claim) client_vfio_group_unclaim(claim);
            close(fd);   /* the interposed close: releases the group file */
            return fail_errno(claim ? EBADF : error);
        }
        h->claim = claim;
    }
    errno = saved;
    return fd;
}

int vfio_ioctl(struct handle *h, unsigned long request, unsigned long arg) {
    int64_t r = uiommu_core_vfio_ioctl(h->object, h->kind, request, arg);
    return (int)r;
}

#define BOUNCE_MAX (64 * 1024)

ssize_t vfio_rw(int fd, struct handle *h, int op, const struct iovec *iov, int iovcnt, off_t offset) {
    if (h->kind != HANDLE_VFIO_DEVICE) return -EINVAL;   /* a group file has no read or write */
    if (iovcnt < 0 || iovcnt > IOV_MAX) return -EINVAL;
    int positioned = offset >= 0;
    off_t pos = offset;
    if (!positioned) {
        pos = lseek(fd, 0, SEEK_CUR);
        if (pos < 0) return -errno;
    }
    ssize_t total = 0;
    char stack[512];
    for (int i = 0; i < iovcnt; i++) {
        size_t left = iov[i].iov_len;
        char *user = iov[i].iov_base;
        while (left > 0) {
            size_t n = left < BOUNCE_MAX ? left : BOUNCE_MAX;
            char *bounce = n <= sizeof stack ? stack : malloc(n);
            if (!bounce) return total ? total : -ENOMEM;
            int64_t r;
            if (op == 1 && uiommu_copy_from_user(bounce, (uint64_t)(uintptr_t)user, n) != 0) {
                r = -EFAULT;
            } else {
                r = uiommu_core_vfio_rw(h->object, op, bounce, n, (int64_t)(pos + total));
                if (op == 0 && r > 0 && uiommu_copy_to_user((uint64_t)(uintptr_t)user, bounce, (size_t)r) != 0) r = -EFAULT;
            }
            if (bounce != stack) free(bounce);
            if (r < 0) {
                if (total == 0) return (ssize_t)r;
                goto done;
            }
            total += r;
            if ((size_t)r < n) goto done;
            left -= n;
            user += n;
        }
    }
done:
    if (!positioned && total > 0) lseek(fd, pos + total, SEEK_SET);
    return total;
}

void vfio_release_object(struct handle *h) {
    uiommu_core_vfio_release(h->object, h->kind);
}

/* ---- helpers for the Swift half ------------------------------------------------------------ */

/* The Swift object of the iommufd on `fd`, or NULL; *state: 1 ours, 0 another open file, -1 not open. */
void *uiommu_fd_iommufd(int fd, int *state) {
    struct handle *h = slot_get(fd);
    if (h && h->kind == HANDLE_IOMMUFD && iommufd_slot_is_current(fd, h)) { *state = 1; return h->object; }
    int saved = errno;
    int open_ = real_fcntl(fd, F_GETFD, NULL) >= 0;
    errno = saved;
    *state = open_ ? 0 : -1;
    return NULL;
}

/* The Swift object of the VFIO group file on `fd`, or NULL; *state as for uiommu_fd_iommufd. */
void *uiommu_fd_vfio_group(int fd, int *state) {
    struct handle *h = slot_get(fd);
    if (h && h->kind == HANDLE_VFIO_GROUP && iommufd_slot_is_current(fd, h)) { *state = 1; return h->object; }
    int saved = errno;
    int open_ = real_fcntl(fd, F_GETFD, NULL) >= 0;
    errno = saved;
    *state = open_ ? 0 : -1;
    return NULL;
}

/* eventfd_ctx_fdget: a private duplicate of the eventfd on `fd`, or -EBADF / -EINVAL; *identity
 * receives what uiommu_eventfd_signal checks the duplicate against. */
int uiommu_eventfd_ref(int fd, uint64_t *identity) {
    int saved = errno;
    if (fd < 0 || real_fcntl(fd, F_GETFD, NULL) < 0) { errno = saved; return -EBADF; }
    if (slot_get(fd)) { errno = saved; return -EINVAL; }   /* one of ours is no eventfd of the program */
    char path[64], target[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n < 0) { errno = saved; return -EBADF; }
    target[n] = 0;
    if (strcmp(target, "anon_inode:[eventfd]") != 0) { errno = saved; return -EINVAL; }
    int dup = real_fcntl(fd, F_DUPFD_CLOEXEC, (void *)(long)1000);
    if (dup < 0) dup = real_fcntl(fd, F_DUPFD_CLOEXEC, (void *)(long)0);
    int r = dup < 0 ? -errno : dup;
    struct stat st;
    *identity = (r >= 0 && real_fstatat(r, "", &st, AT_EMPTY_PATH) == 0) ? ((uint64_t)st.st_dev << 32) ^ (uint64_t)st.st_ino : 0;
    errno = saved;
    return r;
}

/* Adds 1 to the eventfd's counter — unless the program closed our duplicate behind our back (a
 * closefrom, close_range) and the number now names some other file. */
void uiommu_eventfd_signal(int fd, uint64_t identity) {
    int saved = errno;
    struct stat st;
    if (real_fstatat(fd, "", &st, AT_EMPTY_PATH) == 0 && (((uint64_t)st.st_dev << 32) ^ (uint64_t)st.st_ino) == identity) {
        uint64_t one = 1;
        ssize_t n = real_write(fd, &one, sizeof one);
        (void)n;
    }
    errno = saved;
}

void uiommu_eventfd_unref(int fd, uint64_t identity) {
    int saved = errno;
    struct stat st;
    if (real_fstatat(fd, "", &st, AT_EMPTY_PATH) == 0 && (((uint64_t)st.st_dev << 32) ^ (uint64_t)st.st_ino) == identity)
        real_close(fd);
    errno = saved;
}

/* A descriptor for a device file opened through a group (O_RDWR | O_CLOEXEC). */
int uiommu_vfio_install_device(void *object, uint32_t maj, uint32_t min) {
    int saved = errno;
    int fd = install_vfio(object, HANDLE_VFIO_DEVICE, O_RDWR | O_CLOEXEC, maj, min);
    errno = saved;
    return fd;
}
