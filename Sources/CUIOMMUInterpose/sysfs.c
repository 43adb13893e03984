/*
 * The virtual sysfs and /dev/vfio trees: what a VMM reads to find a simulated device.
 *
 * The Swift half renders the machine into a real directory tree once (a "shadow" tree under
 * $TMPDIR/uiommufd-<uid>/sysfs-<hash of its contents>, shared by every process that simulates
 * the same machine, built atomically with a rename): /sys/bus/pci/devices/<BDF> (vendor, device,
 * class, iommu_group → ../../../kernel/iommu_groups/N, driver, vfio-dev/vfioN/dev "MAJ:MIN",
 * resource, config…), /sys/kernel/iommu_groups/N (devices/, reserved_regions, type),
 * /sys/bus/pci/drivers/<driver>/, /sys/class/vfio-dev/, /sys/class/iommu/ (with
 * /sys/devices/virtual/iommu/), and /dev/vfio/ (entries standing for the
 * device nodes). Paths under those prefixes are rewritten into the shadow tree by every
 * interposed call that takes a path, so opendir/readdir, relative opens from a directory
 * descriptor, symlinks with "..", fopen and realpath all behave as on the real sysfs. The
 * device nodes themselves (/dev/vfio/vfio, /dev/vfio/<group>, /dev/vfio/devices/vfioN) are
 * opened by vfio.c, and stat() of them reports character devices with the numbers the
 * vfio-dev/…/dev files give.
 *
 * Not served: writes with an effect (driver_override, bind, unbind: the files take the bytes and
 * nothing happens), inotify, libc functions that open paths internally (glob, nftw, scandirat).
 * UIOMMUFD_SYSFS=0 turns the trees off.
 */
#include "internal.h"
#include "vfio_core.h"
#include "uiommu_interpose.h"
#include "uiommu_vfio.h"
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

static char root[PATH_MAX];
static size_t root_length;
static atomic_int tree_ready;          /* 1: root is valid */
static pthread_once_t tree_once = PTHREAD_ONCE_INIT;

/* ---- next definitions ------------------------------------------------------------------------ */

static TLS int resolving;
static void *next(const char *name) {
    if (resolving) return NULL;
    int saved = errno;
    resolving = 1;
    void *p = dlsym(RTLD_NEXT, name);
    resolving = 0;
    errno = saved;
    return p;
}
#define NEXT(type, name) \
    static type name##_next(void) { static _Atomic(type) f; type g = atomic_load(&f); \
        if (!g) { g = (type)next(#name); atomic_store(&f, g); } return g; }

typedef DIR *(*opendir_fn)(const char *);
typedef FILE *(*fopen_fn)(const char *, const char *);
typedef FILE *(*freopen_fn)(const char *, const char *, FILE *);
typedef ssize_t (*readlink_fn)(const char *, char *, size_t);
typedef ssize_t (*readlinkat_fn)(int, const char *, char *, size_t);
typedef char *(*realpath_fn)(const char *, char *);
typedef char *(*canonicalize_fn)(const char *);
typedef int (*chdir_fn)(const char *);
typedef int (*filter_fn)(const struct dirent *);
typedef int (*compar_fn)(const struct dirent **, const struct dirent **);
typedef int (*scandir_fn)(const char *, struct dirent ***, filter_fn, compar_fn);
typedef int (*filter64_fn)(const struct dirent64 *);
typedef int (*compar64_fn)(const struct dirent64 **, const struct dirent64 **);
typedef int (*scandir64_fn)(const char *, struct dirent64 ***, filter64_fn, compar64_fn);
typedef char *(*getcwd_fn)(char *, size_t);
typedef ssize_t (*getxattr_fn)(const char *, const char *, void *, size_t);
typedef ssize_t (*listxattr_fn)(const char *, char *, size_t);
NEXT(opendir_fn, opendir)
NEXT(fopen_fn, fopen)
NEXT(fopen_fn, fopen64)
NEXT(freopen_fn, freopen)
NEXT(freopen_fn, freopen64)
NEXT(readlink_fn, readlink)
NEXT(readlinkat_fn, readlinkat)
NEXT(realpath_fn, realpath)
NEXT(canonicalize_fn, canonicalize_file_name)
NEXT(chdir_fn, chdir)
NEXT(scandir_fn, scandir)
NEXT(scandir64_fn, scandir64)
NEXT(getcwd_fn, getcwd)
NEXT(getxattr_fn, getxattr)
NEXT(getxattr_fn, lgetxattr)
NEXT(listxattr_fn, listxattr)
NEXT(listxattr_fn, llistxattr)

/* ---- the tree -------------------------------------------------------------------------------- */

static void prepare_tree(void) {
    const char *off = getenv("UIOMMUFD_SYSFS");
    if (off && (strcmp(off, "0") == 0 || strcmp(off, "no") == 0)) return;
    char buffer[PATH_MAX];
    int saved = errno;
    gate_enter();
    int64_t r = uiommu_core_sysfs_prepare(buffer, sizeof buffer);
    gate_exit();
    errno = saved;
    if (r != 0) return;
    size_t n = strlen(buffer);
    if (n == 0 || n >= sizeof root) return;
    memcpy(root, buffer, n + 1);
    root_length = n;
    atomic_store_explicit(&tree_ready, 1, memory_order_release);
}

static int ensure_tree(void) {
    pthread_once(&tree_once, prepare_tree);
    return atomic_load_explicit(&tree_ready, memory_order_acquire);
}

static int has_prefix(const char *path, const char *prefix, int open_ended) {
    size_t n = strlen(prefix);
    if (strncmp(path, prefix, n) != 0) return 0;
    return open_ended || path[n] == 0 || path[n] == '/';
}

/* Whether `path` lies in one of the virtual trees. */
static int in_virtual_tree(const char *path) {
    if (path[1] == 's') {
        return has_prefix(path, "/sys/bus/pci", 0) || has_prefix(path, "/sys/kernel/iommu_groups", 0)
            || has_prefix(path, "/sys/devices/pci", 1) || has_prefix(path, "/sys/class/vfio-dev", 0)
            || has_prefix(path, "/sys/class/vfio", 0) || has_prefix(path, "/sys/devices/virtual/iommu", 0)
            || has_prefix(path, "/sys/class/iommu", 0);
    }
    return has_prefix(path, "/dev/vfio", 0);
}

const char *sysfs_rewrite(const char *path, char *buffer, size_t size) {
    if (!maybe_virtual(path) || !in_virtual_tree(path) || !ensure_tree()) return path;
    size_t n = strlen(path);
    if (root_length + n + 1 > size) return path;
    memcpy(buffer, root, root_length);
    memcpy(buffer + root_length, path, n + 1);
    return buffer;
}

/* A result path inside the shadow tree, shown as the virtual path it stands for. */
static void unshadow(char *path) {
    if (!path || !atomic_load_explicit(&tree_ready, memory_order_acquire)) return;
    if (strncmp(path, root, root_length) == 0 && (path[root_length] == '/' || path[root_length] == 0)) {
        memmove(path, path + root_length, strlen(path + root_length) + 1);
        if (path[0] == 0) { path[0] = '/'; path[1] = 0; }
    }
}

/* ---- device nodes ------------------------------------------------------------------------------ */

#define VNODES_MAX 1024
struct vnode { char path[48]; dev_t rdev; };
static struct vnode vnodes[VNODES_MAX];
static atomic_int vnode_count;

void uiommu_vnode_add(const char *path, uint32_t maj, uint32_t min) {
    int i = atomic_load(&vnode_count);
    if (i >= VNODES_MAX || strlen(path) >= sizeof vnodes[0].path) return;
    strcpy(vnodes[i].path, path);
    vnodes[i].rdev = makedev(maj, min);
    atomic_store(&vnode_count, i + 1);
}

dev_t vnode_rdev(const char *path) {
    if (strncmp(path, "/dev/vfio/", 10) != 0 || !ensure_tree()) return 0;
    int n = atomic_load(&vnode_count);
    for (int i = 0; i < n; i++)
        if (strcmp(vnodes[i].path, path) == 0) return vnodes[i].rdev;
    return 0;
}

/* ---- interposed calls that take paths ----------------------------------------------------------- */

#define REWRITE(path) \
    char rewrite_buffer[PATH_MAX]; \
    if (UNLIKELY(maybe_virtual(path))) path = sysfs_rewrite(path, rewrite_buffer, sizeof rewrite_buffer)

EXPORT DIR *opendir(const char *path) {
    REWRITE(path);
    opendir_fn f = opendir_next();
    if (!f) { errno = ENOSYS; return NULL; }
    return f(path);
}

EXPORT FILE *fopen(const char *path, const char *mode) {
    REWRITE(path);
    fopen_fn f = fopen_next();
    if (!f) { errno = ENOSYS; return NULL; }
    return f(path, mode);
}

EXPORT FILE *fopen64(const char *path, const char *mode) {
    REWRITE(path);
    fopen_fn f = fopen64_next();
    if (!f) f = fopen_next();
    if (!f) { errno = ENOSYS; return NULL; }
    return f(path, mode);
}

EXPORT FILE *freopen(const char *path, const char *mode, FILE *stream) {
    REWRITE(path);
    return freopen_next()(path, mode, stream);
}

EXPORT FILE *freopen64(const char *path, const char *mode, FILE *stream) {
    freopen_fn f = freopen64_next();
    if (!f) f = freopen_next();
    REWRITE(path);
    return f(path, mode, stream);
}

static ssize_t unshadow_link(char *buffer, ssize_t n, size_t size) {
    if (n <= 0 || !atomic_load_explicit(&tree_ready, memory_order_acquire) || (size_t)n < root_length) return n;
    if (strncmp(buffer, root, root_length) != 0) return n;
    if ((size_t)n > root_length && buffer[root_length] != '/') return n;
    memmove(buffer, buffer + root_length, (size_t)n - root_length);
    n -= (ssize_t)root_length;
    if (n == 0 && size > 0) { buffer[0] = '/'; n = 1; }
    return n;
}

EXPORT ssize_t readlink(const char *path, char *buffer, size_t size) {
    REWRITE(path);
    return unshadow_link(buffer, readlink_next()(path, buffer, size), size);
}

EXPORT ssize_t readlinkat(int dirfd, const char *path, char *buffer, size_t size) {
    REWRITE(path);
    return unshadow_link(buffer, readlinkat_next()(dirfd, path, buffer, size), size);
}

EXPORT ssize_t __readlink_chk(const char *path, char *buffer, size_t size, size_t buffer_size) {
    if (size > buffer_size) abort();
    return readlink(path, buffer, size);
}

EXPORT ssize_t __readlinkat_chk(int dirfd, const char *path, char *buffer, size_t size, size_t buffer_size) {
    if (size > buffer_size) abort();
    return readlinkat(dirfd, path, buffer, size);
}

EXPORT char *realpath(const char *path, char *resolved) {
    REWRITE(path);
    char *r = realpath_next()(path, resolved);
    unshadow(r);
    return r;
}

EXPORT char *__realpath_chk(const char *path, char *resolved, size_t resolved_size) {
    if (resolved_size < PATH_MAX) abort();
    return realpath(path, resolved);
}

EXPORT char *canonicalize_file_name(const char *path) {
    REWRITE(path);
    char *r = canonicalize_file_name_next()(path);
    unshadow(r);
    return r;
}

EXPORT int chdir(const char *path) {
    REWRITE(path);
    return chdir_next()(path);
}

EXPORT char *getcwd(char *buffer, size_t size) {
    char *r = getcwd_next()(buffer, size);
    unshadow(r);
    return r;
}

EXPORT char *__getcwd_chk(char *buffer, size_t size, size_t buffer_size) {
    if (size > buffer_size) abort();
    return getcwd(buffer, size);
}

EXPORT int scandir(const char *path, struct dirent ***list, filter_fn filter, compar_fn compar) {
    REWRITE(path);
    return scandir_next()(path, list, filter, compar);
}

EXPORT int scandir64(const char *path, struct dirent64 ***list, filter64_fn filter, compar64_fn compar) {
    REWRITE(path);
    return scandir64_next()(path, list, filter, compar);
}

/* ls -l asks for ACLs and security labels by path. */
EXPORT ssize_t getxattr(const char *path, const char *name, void *value, size_t size) {
    REWRITE(path);
    return getxattr_next()(path, name, value, size);
}

EXPORT ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size) {
    REWRITE(path);
    return lgetxattr_next()(path, name, value, size);
}

EXPORT ssize_t listxattr(const char *path, char *list, size_t size) {
    REWRITE(path);
    return listxattr_next()(path, list, size);
}

EXPORT ssize_t llistxattr(const char *path, char *list, size_t size) {
    REWRITE(path);
    return llistxattr_next()(path, list, size);
}
