/*
 * The fd table, the handles it points to, and the gate.
 *
 * Table. Two levels: 32768 top entries (static, 256 KiB of untouched BSS) each pointing to a
 * lazily mmapped chunk of 65536 slots, so every descriptor number 0 … INT_MAX has a slot
 * whatever RLIMIT_NOFILE is raised to, and only the chunks that hold owned descriptors cost
 * memory. A slot holds a handle pointer or NULL. Lookups are lock-free; until the first
 * descriptor is owned, a single load of `uiommu_table_active` answers "not ours".
 *
 * Handles. One per open file (per open of /dev/iommu, per auxiliary file), shared by all the
 * descriptors dup'ed from it; `refs` counts those descriptors. Handles come from a pool and are
 * never unmapped (type-stable memory), so a racing reader never touches freed memory.
 *
 * Gate. Every call into Swift runs inside the gate, shared (a writer-preferring rwlock,
 * re-entrant per thread through a depth counter). Two things take it exclusively, briefly:
 *  - releasing a handle: after the last descriptor's slot was cleared, taking the gate once
 *    proves no call that looked the handle up before can still be running (a grace period),
 *    so ioctl needs no reference counting of its own — the kernel's fdget/fdput, cheaply;
 *  - fork (pthread_atfork prepare): no thread is inside Swift, so the child never inherits a
 *    lock held by a thread that does not exist in it. The engine's own locks are only ever
 *    taken inside the gate.
 */
#include "internal.h"
#include "core.h"
#include "uiommu_interpose.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CHUNK_SHIFT 16
#define CHUNK_SLOTS (1u << CHUNK_SHIFT)
#define TOP_SLOTS (1u << (31 - CHUNK_SHIFT))

typedef _Atomic(struct handle *) slot_t;

HIDDEN atomic_int uiommu_table_active;
static _Atomic(slot_t *) top[TOP_SLOTS];

struct handle *slot_get_slow(int fd) {
    if (fd < 0) return NULL;
    slot_t *chunk = atomic_load_explicit(&top[(unsigned)fd >> CHUNK_SHIFT], memory_order_acquire);
    if (!chunk) return NULL;
    return atomic_load_explicit(&chunk[(unsigned)fd & (CHUNK_SLOTS - 1)], memory_order_acquire);
}

static slot_t *chunk_for(int fd) {
    _Atomic(slot_t *) *entry = &top[(unsigned)fd >> CHUNK_SHIFT];
    slot_t *chunk = atomic_load_explicit(entry, memory_order_acquire);
    if (chunk) return chunk;
    void *fresh = real_mmap(NULL, CHUNK_SLOTS * sizeof(slot_t), PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (fresh == MAP_FAILED) return NULL;
    slot_t *expected = NULL;
    if (atomic_compare_exchange_strong_explicit(entry, &expected, (slot_t *)fresh,
                                                memory_order_acq_rel, memory_order_acquire))
        return (slot_t *)fresh;
    munmap(fresh, CHUNK_SLOTS * sizeof(slot_t));
    return expected;
}

struct handle *slot_exchange(int fd, struct handle *h) {
    if (fd < 0) return NULL;
    if (!h) {
        slot_t *chunk = atomic_load_explicit(&top[(unsigned)fd >> CHUNK_SHIFT], memory_order_acquire);
        if (!chunk) return NULL;
        return atomic_exchange_explicit(&chunk[(unsigned)fd & (CHUNK_SLOTS - 1)], NULL, memory_order_acq_rel);
    }
    slot_t *chunk = chunk_for(fd);
    if (!chunk) return NULL;   /* out of memory: the descriptor stays unowned */
    atomic_store_explicit(&uiommu_table_active, 1, memory_order_release);
    return atomic_exchange_explicit(&chunk[(unsigned)fd & (CHUNK_SLOTS - 1)], h, memory_order_acq_rel);
}

int slot_clear_if(int fd, struct handle *expected) {
    if (fd < 0) return 0;
    slot_t *chunk = atomic_load_explicit(&top[(unsigned)fd >> CHUNK_SHIFT], memory_order_acquire);
    if (!chunk) return 0;
    struct handle *e = expected;
    return atomic_compare_exchange_strong_explicit(&chunk[(unsigned)fd & (CHUNK_SLOTS - 1)], &e, NULL,
                                                   memory_order_acq_rel, memory_order_acquire);
}

void slot_clear_range(unsigned first, unsigned last, void (*fn)(int, struct handle *, void *), void *ctx) {
    if (!atomic_load_explicit(&uiommu_table_active, memory_order_acquire)) return;
    if (last > (unsigned)INT32_MAX) last = INT32_MAX;
    if (first > last) return;
    for (unsigned t = first >> CHUNK_SHIFT; t <= (last >> CHUNK_SHIFT); t++) {
        slot_t *chunk = atomic_load_explicit(&top[t], memory_order_acquire);
        if (!chunk) continue;
        unsigned lo = t == (first >> CHUNK_SHIFT) ? (first & (CHUNK_SLOTS - 1)) : 0;
        unsigned hi = t == (last >> CHUNK_SHIFT) ? (last & (CHUNK_SLOTS - 1)) : CHUNK_SLOTS - 1;
        for (unsigned i = lo; i <= hi; i++) {
            if (!atomic_load_explicit(&chunk[i], memory_order_relaxed)) continue;
            struct handle *h = atomic_exchange_explicit(&chunk[i], NULL, memory_order_acq_rel);
            if (h) fn((int)((t << CHUNK_SHIFT) | i), h, ctx);
        }
    }
}

/* ---- the gate ----------------------------------------------------------------------------- */

static pthread_rwlock_t gate = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;
static TLS int gate_depth;
static TLS struct handle *deferred;   /* releases requested from inside the gate */
static void finish_release(struct handle *h);

void gate_enter(void) {
    if (gate_depth++ == 0) pthread_rwlock_rdlock(&gate);
}

void gate_exit(void) {
    if (--gate_depth == 0) {
        pthread_rwlock_unlock(&gate);
        while (UNLIKELY(deferred != NULL)) {
            struct handle *h = deferred;
            deferred = h->next;
            finish_release(h);
        }
    }
}

/* ---- handles ------------------------------------------------------------------------------ */

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct handle *pool_free;
static struct handle *pool_slab;
static size_t pool_slab_left;
static atomic_long aux_alive;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static TLS int fork_skipped_gate;

static void fork_prepare(void) {
    /* A fork from inside the gate (a signal handler during a call) cannot wait for itself. */
    fork_skipped_gate = gate_depth > 0;
    if (!fork_skipped_gate) pthread_rwlock_wrlock(&gate);
    pthread_mutex_lock(&pool_lock);
}

static void fork_parent(void) {
    pthread_mutex_unlock(&pool_lock);
    if (!fork_skipped_gate) pthread_rwlock_unlock(&gate);
}

static void fork_child(void) {
    /* The child's only thread has a new tid; re-initialise rather than unlock what the
     * parent's thread locked. */
    pthread_mutex_init(&pool_lock, NULL);
    if (!fork_skipped_gate) {
        pthread_rwlockattr_t attr;
        pthread_rwlockattr_init(&attr);
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        pthread_rwlock_init(&gate, &attr);
        pthread_rwlockattr_destroy(&attr);
    }
}

static void register_fork_handlers(void) {
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

struct handle *handle_new(int kind, void *object) {
    pthread_once(&fork_once, register_fork_handlers);
    pthread_mutex_lock(&pool_lock);
    struct handle *h = pool_free;
    if (h) {
        pool_free = h->next;
    } else {
        if (pool_slab_left == 0) {
            size_t bytes = 64 * 1024;
            void *slab = real_mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (slab == MAP_FAILED) { pthread_mutex_unlock(&pool_lock); return NULL; }
            pool_slab = slab;
            pool_slab_left = bytes / sizeof(struct handle);
        }
        h = pool_slab++;
        pool_slab_left--;
        pthread_mutex_init(&h->lock, NULL);
    }
    pthread_mutex_unlock(&pool_lock);
    h->kind = kind;
    h->object = object;
    h->signal_fd = -1;
    h->signalled = 0;
    h->claim = NULL;
    h->dev = 0;
    h->ino = 0;
    h->rdev = 0;
    h->next = NULL;
    if (kind == HANDLE_AUX) atomic_fetch_add(&aux_alive, 1);
    atomic_store_explicit(&h->refs, 1, memory_order_release);
    return h;
}

int handle_ref_if_alive(struct handle *h) {
    long r = atomic_load_explicit(&h->refs, memory_order_acquire);
    while (r > 0) {
        if (atomic_compare_exchange_weak_explicit(&h->refs, &r, r + 1, memory_order_acq_rel, memory_order_acquire))
            return 1;
    }
    return 0;
}

struct handle *handle_get_ref(int fd) {
    if (!slot_get(fd)) return NULL;
    /* Inside the gate a handle seen in a slot cannot be recycled before we leave it. */
    gate_enter();
    struct handle *h = slot_get(fd);
    if (h && !handle_ref_if_alive(h)) h = NULL;
    gate_exit();
    return h;
}

static void finish_release(struct handle *h) {
    /* Grace period: wait until every thread that may have looked this handle up has left. */
    pthread_rwlock_wrlock(&gate);
    pthread_rwlock_unlock(&gate);
    gate_enter();
    if (h->kind == HANDLE_REMOTE) {
        client_release(h->object);
    } else if (h->kind == HANDLE_REMOTE_AUX) {
        client_aux_release(h->object);
    } else if (h->kind == HANDLE_IOMMUFD) {
        uiommu_core_release(h->object);
    } else if (h->kind == HANDLE_VFIO_DEVICE || h->kind == HANDLE_VFIO_GROUP) {
        vfio_release_object(h);
        if (h->claim) { client_vfio_group_unclaim(h->claim); h->claim = NULL; }
    } else {
        uiommu_core_aux_release(h->object);
        pthread_mutex_lock(&h->lock);
        h->signal_fd = -1;
        pthread_mutex_unlock(&h->lock);
        atomic_fetch_sub(&aux_alive, 1);
    }
    gate_exit();
    h->object = NULL;
    pthread_mutex_lock(&pool_lock);
    h->next = pool_free;
    pool_free = h;
    pthread_mutex_unlock(&pool_lock);
}

void handle_unref(struct handle *h) {
    if (atomic_fetch_sub_explicit(&h->refs, 1, memory_order_acq_rel) != 1) return;
    int saved = errno;
    if (gate_depth > 0) {
        h->next = deferred;
        deferred = h;
    } else {
        finish_release(h);
    }
    errno = saved;
}

int iommufd_slot_is_current(int fd, struct handle *h) {
    struct stat st;
    int saved = errno;
    int ok = real_fstatat(fd, "", &st, AT_EMPTY_PATH) == 0 && st.st_dev == h->dev && st.st_ino == h->ino;
    errno = saved;
    if (ok) return 1;
    if (slot_clear_if(fd, h)) handle_unref(h);   /* the reference the lost descriptor held */
    return 0;
}

/* ---- auxiliary descriptors ------------------------------------------------------------------ */

int uiommu_aux_install(void *object, void **handle_out) {
    int fd = eventfd(0, EFD_CLOEXEC);
    if (fd < 0) return -errno;
    struct handle *h = handle_new(HANDLE_AUX, object);
    if (!h) { real_close(fd); return -ENOMEM; }
    h->signal_fd = fd;
    struct handle *stale = slot_exchange(fd, h);
    if (stale) handle_unref(stale);
    if (handle_out) *handle_out = h;
    return fd;
}

void uiommu_aux_set_readable(void *handle, int readable) {
    struct handle *h = handle;
    pthread_mutex_lock(&h->lock);
    if (h->signal_fd >= 0 && !!readable != h->signalled) {
        uint64_t v = 1;
        ssize_t n = readable ? real_write(h->signal_fd, &v, sizeof v) : real_read(h->signal_fd, &v, sizeof v);
        if (n == (ssize_t)sizeof v) h->signalled = !!readable;
    }
    pthread_mutex_unlock(&h->lock);
}

long uiommu_aux_count(void) { return atomic_load_explicit(&aux_alive, memory_order_relaxed); }

/* The descriptor used for signalling is one of the handle's own descriptors (no hidden extra
 * fd); when it closes, another descriptor of the same file takes over. */
void aux_forget_fd(struct handle *h, int fd) {
    gate_enter();
    pthread_mutex_lock(&h->lock);
    if (h->signal_fd == fd) {
        int other = -1;
        for (unsigned t = 0; t < TOP_SLOTS && other < 0; t++) {
            slot_t *chunk = atomic_load_explicit(&top[t], memory_order_acquire);
            if (!chunk) continue;
            for (unsigned i = 0; i < CHUNK_SLOTS; i++)
                if (atomic_load_explicit(&chunk[i], memory_order_relaxed) == h) { other = (int)((t << CHUNK_SHIFT) | i); break; }
        }
        h->signal_fd = other;
    }
    pthread_mutex_unlock(&h->lock);
    gate_exit();
}

/* ---- queries ---------------------------------------------------------------------------------- */

int uiommu_fd_kind(int fd) {
    struct handle *h = slot_get(fd);
    return h ? h->kind : UIOMMU_FD_NONE;
}

int uiommu_fds_of(const void *object, int *fds, int max) {
    int found = 0;
    if (!atomic_load_explicit(&uiommu_table_active, memory_order_acquire)) return 0;
    for (unsigned t = 0; t < TOP_SLOTS; t++) {
        slot_t *chunk = atomic_load_explicit(&top[t], memory_order_acquire);
        if (!chunk) continue;
        for (unsigned i = 0; i < CHUNK_SLOTS; i++) {
            struct handle *h = atomic_load_explicit(&chunk[i], memory_order_relaxed);
            if (h && h->object == object) {
                if (found < max) fds[found] = (int)((t << CHUNK_SHIFT) | i);
                found++;
            }
        }
    }
    return found;
}

void uiommu_capabilities(int *ipc_lock, int *sys_resource) {
    struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    memset(data, 0, sizeof data);
    int saved = errno;
    if (syscall(SYS_capget, &header, data) != 0) memset(data, 0, sizeof data);
    errno = saved;
    *ipc_lock = (data[CAP_IPC_LOCK / 32].effective >> (CAP_IPC_LOCK % 32)) & 1;
    *sys_resource = (data[CAP_SYS_RESOURCE / 32].effective >> (CAP_SYS_RESOURCE % 32)) & 1;
}

long uiommu_raw_write_all(int fd, const void *buffer, size_t count) {
    const char *p = buffer;
    size_t done = 0;
    int saved = errno;
    while (done < count) {
        ssize_t n = real_write(fd, p + done, count - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { long r = n < 0 ? -errno : (long)done; errno = saved; return r; }
        done += (size_t)n;
    }
    errno = saved;
    return (long)done;
}

uint64_t uiommu_memlock_limit(void) {
    struct rlimit rl;
    int saved = errno;
    int r = getrlimit(RLIMIT_MEMLOCK, &rl);
    errno = saved;
    if (r != 0 || rl.rlim_cur == RLIM_INFINITY) return UINT64_MAX;
    return (uint64_t)rl.rlim_cur;
}

static void exit_report(void) {
    int saved = errno;
    gate_enter();
    uiommu_core_exit_report();
    gate_exit();
    errno = saved;
}

void uiommu_register_exit_report(void) { atexit(exit_report); }
