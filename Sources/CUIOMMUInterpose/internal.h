/*
 * Internals shared by the C files of the interposer. Nothing here is visible outside the
 * preload library (hidden visibility).
 */
#ifndef UIOMMU_INTERNAL_H
#define UIOMMU_INTERNAL_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
/* The wrappers define read, open… themselves: no fortified inline versions of them. */
#undef _FORTIFY_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>

#define HIDDEN __attribute__((visibility("hidden")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
/* Thread-locals of a preloaded library live in the static TLS block: no __tls_get_addr. */
#define TLS __thread __attribute__((tls_model("initial-exec")))

/* ---- real.c: the next definition of each interposed symbol (libc), with a raw-syscall
 * fallback while it cannot be resolved yet (early start-up, recursion in dlsym). ---------- */
HIDDEN int real_openat(int dirfd, const char *path, int flags, mode_t mode);
HIDDEN int real_close(int fd);
HIDDEN int real_close_range(unsigned first, unsigned last, int flags);
HIDDEN void real_closefrom(int lowfd);
HIDDEN int real_dup(int fd);
HIDDEN int real_dup2(int fd, int fd2);
HIDDEN int real_dup3(int fd, int fd2, int flags);
HIDDEN int real_fcntl(int fd, int cmd, void *arg);
HIDDEN int real_ioctl(int fd, unsigned long request, unsigned long arg);
HIDDEN ssize_t real_read(int fd, void *buffer, size_t count);
HIDDEN ssize_t real_write(int fd, const void *buffer, size_t count);
HIDDEN ssize_t real_readv(int fd, const struct iovec *iov, int n);
HIDDEN ssize_t real_writev(int fd, const struct iovec *iov, int n);
HIDDEN ssize_t real_pread(int fd, void *buffer, size_t count, off_t offset);
HIDDEN ssize_t real_pwrite(int fd, const void *buffer, size_t count, off_t offset);
HIDDEN ssize_t real_preadv2(int fd, const struct iovec *iov, int n, off_t offset, int flags);
HIDDEN ssize_t real_pwritev2(int fd, const struct iovec *iov, int n, off_t offset, int flags);
HIDDEN void *real_mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
HIDDEN int real_fstatat(int dirfd, const char *path, struct stat *st, int flags);
HIDDEN int real_statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *stx);
HIDDEN int real_faccessat(int dirfd, const char *path, int mode, int flags);
HIDDEN int real_euidaccess(const char *path, int mode);
struct epoll_event;
HIDDEN int real_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event);

/* ---- fdtable.c: handles, the fd table, the gate ------------------------------------------ */
enum handle_kind {
    HANDLE_IOMMUFD = 1, HANDLE_AUX = 2, HANDLE_VFIO_DEVICE = 3, HANDLE_VFIO_GROUP = 4,
    /* Client mode (client.c): an iommufd served by `uiommufd serve`, and its auxiliary files. */
    HANDLE_REMOTE = 5, HANDLE_REMOTE_AUX = 6,
};

struct handle {
    /* Descriptors referring to the handle (fd slots), plus transient references taken by
     * dup while it runs. The handle is released when this reaches 0. */
    _Atomic long refs;
    int kind;
    /* The Swift object (retained). */
    void *object;
    /* Auxiliary handles: a descriptor of the eventfd used to signal readability, and whether
     * it is signalled; both guarded by `lock`. */
    pthread_mutex_t lock;
    int signal_fd;
    int signalled;
    /* iommufd handles: the identity of the memfd, to notice a number that was closed behind
     * our back (a raw close system call) and reused for another file. */
    dev_t dev;
    ino_t ino;
    /* The character device fstat reports (0: /dev/iommu's); see vfio.c. */
    dev_t rdev;
    /* Group files in client mode: the server connection that holds the group open there, so
     * that served device cdevs and this group exclude each other as on Linux (-1: none). */
    void *claim;
    struct handle *next;   /* free list / deferred-release list */
};

/* The handle in slot `fd`, or NULL. The fast path of every interposed call: one load of a
 * global flag while no descriptor was ever owned, else two dependent loads. */
HIDDEN extern atomic_int uiommu_table_active;
HIDDEN struct handle *slot_get_slow(int fd);
static inline struct handle *slot_get(int fd) {
    if (LIKELY(!atomic_load_explicit(&uiommu_table_active, memory_order_acquire))) return NULL;
    return slot_get_slow(fd);
}
/* Stores `h` (may be NULL) in slot `fd`, returning what was there. */
HIDDEN struct handle *slot_exchange(int fd, struct handle *h);
/* Replaces `expected` in slot `fd` with NULL; returns 1 if it was there. */
HIDDEN int slot_clear_if(int fd, struct handle *expected);
/* Calls `fn` for each owned slot in [first, last] after clearing it. */
HIDDEN void slot_clear_range(unsigned first, unsigned last, void (*fn)(int fd, struct handle *h, void *ctx), void *ctx);

HIDDEN struct handle *handle_new(int kind, void *object);
/* Takes a reference if the handle is still alive (refs > 0); returns 0 if it is dying. */
HIDDEN int handle_ref_if_alive(struct handle *h);
/* Drops a reference; the last one releases the Swift object (after every call that might
 * still use it has left the gate) and recycles the handle. */
HIDDEN void handle_unref(struct handle *h);
/* The handle in slot `fd` with a reference taken, or NULL. */
HIDDEN struct handle *handle_get_ref(int fd);

/* The gate: every call into Swift runs inside it (shared); releasing a handle and fork wait
 * for it to be empty (exclusive). Re-entrant per thread. */
HIDDEN void gate_enter(void);
HIDDEN void gate_exit(void);

/* Aux bookkeeping when descriptor `fd` of handle `h` goes away (picks another descriptor for
 * signalling). */
HIDDEN void aux_forget_fd(struct handle *h, int fd);

/* Whether descriptor `fd`, found in the table with iommufd handle `h`, is still that memfd. If it
 * is not (closed by a raw system call, number reused), the slot is dropped and 0 returned. */
HIDDEN int iommufd_slot_is_current(int fd, struct handle *h);

/* ---- interpose.c ---------------------------------------------------------------------------*/
/* Fills `st` as a stat of /dev/iommu (a character device). */
HIDDEN void fake_iommu_stat(struct stat *st);
/* Fills `st` / `stx` as a stat of a character device with `rdev` (0: /dev/iommu's numbers). */
HIDDEN void fake_chardev_stat(struct stat *st, dev_t rdev);
HIDDEN void fake_chardev_statx(struct statx *stx, dev_t rdev);
/* Opens an iommufd: `variant` 0 is /dev/iommu, 1 is /dev/vfio/vfio (the container). */
HIDDEN int open_iommufd_variant(int flags, int variant);
/* A new sealed memfd for an owned file, with the caller's access mode and flags. */
HIDDEN int owned_memfd(const char *name, int flags);
/* Installs handle `h` on descriptor `fd` (dropping a stale slot) and records its identity. */
HIDDEN void install_owned(int fd, struct handle *h);

/* ---- vfio.c: /dev/vfio/ device files ------------------------------------------------------ */
/* The path's kind: 0 not a VFIO node, 1 container, 2 device (vfioN → *index), 3 group (→ *index). */
HIDDEN int vfio_node_kind(const char *path, unsigned *index);
/* open() of a VFIO node of kind 2 or 3. */
HIDDEN int vfio_open_node(int kind, unsigned index, int flags);
HIDDEN int vfio_ioctl(struct handle *h, unsigned long request, unsigned long arg);
/* read/write family on a VFIO handle: positioned at `offset`, or (offset < 0) at the file position. */
HIDDEN ssize_t vfio_rw(int fd, struct handle *h, int op, const struct iovec *iov, int iovcnt, off_t offset);
HIDDEN void vfio_release_object(struct handle *h);

/* ---- sysfs.c: the virtual /sys and /dev/vfio trees ---------------------------------------- */
/* Whether `path` may be a virtual path (cheap test on the first characters). */
static inline int maybe_virtual(const char *path) {
    return path != NULL && path[0] == '/' && (path[1] == 'd' || path[1] == 's');
}
/* `path` rewritten into the shadow tree (in `buffer`), or `path` itself if it is not virtual. */
HIDDEN const char *sysfs_rewrite(const char *path, char *buffer, size_t size);
/* The character device numbers of a virtual device node ("/dev/vfio/3"), or 0. */
HIDDEN dev_t vnode_rdev(const char *path);

/* ---- client.c: /dev/iommu served by `uiommufd serve` ------------------------------------- */
/* Whether UIOMMUFD_SERVER names a server (read once). */
HIDDEN int client_mode_enabled(void);
/* open("/dev/iommu") in client mode: a connected socket, or -1 with errno. */
HIDDEN int client_open(int flags);
/* Adopts `fd` if it is a connection to our server we do not know yet (inherited across exec,
 * received over SCM_RIGHTS). Returns 1 if it is now owned. */
HIDDEN int client_adopt(int fd);
HIDDEN int client_ioctl(struct handle *h, int fd, unsigned long request, unsigned long arg);
/* read (op 0) or write (op 1) of an auxiliary file: bytes or -errno. */
HIDDEN ssize_t client_aux_rw(struct handle *h, int fd, int op, void *buffer, size_t count);
HIDDEN void client_release(void *object);
/* The access mode (O_ACCMODE bits) the program opened a served iommufd with. */
HIDDEN int client_access_mode(struct handle *h);
HIDDEN void client_aux_release(void *object);
/* open("/dev/vfio/devices/vfio<index>") in client mode: a connected socket (its character
 * device numbers in *rdev), or -1 with errno. */
HIDDEN int client_vfio_open(unsigned index, int flags, dev_t *rdev);
/* In client mode, holds group `id` open in the server until client_vfio_group_unclaim (a
 * connection, close-on-exec and out of the program's way); NULL with *error (EBUSY: a device of
 * the group is bound through its served cdev). */
HIDDEN void *client_vfio_group_claim(unsigned id, int *error);
HIDDEN void client_vfio_group_unclaim(void *claim);
/* Whether a HANDLE_REMOTE file is a VFIO device (else an iommufd). */
HIDDEN int client_is_device(struct handle *h);
/* read/write family of a served device file, at `offset` (or the per-process position if < 0). */
HIDDEN ssize_t client_vfio_rw(struct handle *h, int fd, int op, const struct iovec *iov, int iovcnt, off_t offset);
/* vfio_pci_core_mmap's checks: 0 with *bar and *start, or -errno. */
HIDDEN int64_t client_vfio_mmap(struct handle *h, int fd, size_t length, int shared, off_t offset, int32_t *bar, uint64_t *start);
/* One access through a BAR mapping (a load's value; all ones if the server is gone). */
HIDDEN uint64_t client_vfio_mmio(struct handle *h, int32_t bar, uint64_t offset, int32_t width, int32_t write, uint64_t value);
/* A mapping piece takes / drops its reference on the served file. */
HIDDEN int client_vfio_map_retain(struct handle *h, int fd);
HIDDEN void client_vfio_map_release(struct handle *h);

/* ---- mmio.c: BAR mappings ------------------------------------------------------------------ */
/* mmap of a device file: in-process (HANDLE_VFIO_DEVICE) or served (HANDLE_REMOTE, descriptor `fd`). */
HIDDEN void *mmio_map(struct handle *h, int fd, void *addr, size_t length, int prot, int flags, off_t offset);
#endif
