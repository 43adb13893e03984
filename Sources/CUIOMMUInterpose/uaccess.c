/*
 * copy_from_user / copy_to_user for the calling process, with the kernel's answer for a bad
 * pointer: EFAULT, never a crash.
 *
 * Default ("guard"): memcpy with a thread-local sigsetjmp armed. A SIGSEGV/SIGBUS handler,
 * installed on the first copy (never at load time) and chaining to whatever handler was there
 * before, jumps back out when the faulting thread is inside a copy; every other fault goes to
 * the previous handler, or kills the process as it would have without us. No system call per
 * copy. sigsetjmp(…, 0) does not save the signal mask, and the handler runs with SA_NODEFER,
 * so nothing needs restoring after the jump.
 *
 * Fallback ("safe", UIOMMUFD_UACCESS=safe): process_vm_readv/writev on our own pid — no signal
 * handler at all, about 2 µs per copy. For programs that fight over SIGSEGV.
 */
#include "internal.h"
#include "uiommu_interpose.h"
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

/* Highest user address on x86-64 with 5-level paging (4-level is lower; the guard covers the
 * gap). Anything above cannot be user memory. */
#define USER_ADDRESS_LIMIT 0x00fffffffffff000ULL

static TLS sigjmp_buf *armed;
static struct sigaction previous_segv, previous_bus;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static atomic_int mode;

void uiommu_set_uaccess_mode(int m) { atomic_store(&mode, m); }

static void guard_handler(int sig, siginfo_t *info, void *context) {
    sigjmp_buf *jb = armed;
    if (jb) {
        armed = NULL;
        siglongjmp(*jb, 1);
    }
    struct sigaction *prev = sig == SIGBUS ? &previous_bus : &previous_segv;
    if (prev->sa_flags & SA_SIGINFO) {
        if (prev->sa_sigaction) { prev->sa_sigaction(sig, info, context); return; }
    } else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
        prev->sa_handler(sig);
        return;
    }
    /* No handler before us: restore the default action. A fault re-executes the faulting
     * instruction on return and dies with the right signal; a sent signal is re-raised. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    if (info == NULL || info->si_code <= 0) raise(sig);
}

static void install_guard(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = guard_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous_segv);
    sigaction(SIGBUS, &sa, &previous_bus);
}

static inline int bad_range(uint64_t address, size_t count) {
    return address == 0 || address + count < address || address + count > USER_ADDRESS_LIMIT;
}

static int vm_copy(uint64_t user, void *local, size_t count, int to_user) {
    struct iovec l = { .iov_base = local, .iov_len = count };
    struct iovec r = { .iov_base = (void *)(uintptr_t)user, .iov_len = count };
    int saved = errno;
    ssize_t n = to_user ? process_vm_writev(getpid(), &l, 1, &r, 1, 0)
                        : process_vm_readv(getpid(), &l, 1, &r, 1, 0);
    errno = saved;
    return n == (ssize_t)count ? 0 : -EFAULT;
}

/* Kept out of line so the compiler cannot move the copy across the arming of the guard. */
static __attribute__((noinline)) int guarded_copy(void *to, const void *from, size_t count) {
    sigjmp_buf jb;
    sigjmp_buf *outer = armed;
    if (sigsetjmp(jb, 0)) {
        armed = outer;
        return -EFAULT;
    }
    armed = &jb;
    atomic_signal_fence(memory_order_seq_cst);
    memcpy(to, from, count);
    atomic_signal_fence(memory_order_seq_cst);
    armed = outer;
    return 0;
}

int uiommu_copy_from_user(void *destination, uint64_t user, size_t count) {
    if (count == 0) return 0;
    if (bad_range(user, count)) return -EFAULT;
    if (atomic_load_explicit(&mode, memory_order_relaxed) == 1) return vm_copy(user, destination, count, 0);
    pthread_once(&install_once, install_guard);
    return guarded_copy(destination, (const void *)(uintptr_t)user, count);
}

int uiommu_copy_to_user(uint64_t user, const void *source, size_t count) {
    if (count == 0) return 0;
    if (bad_range(user, count)) return -EFAULT;
    if (atomic_load_explicit(&mode, memory_order_relaxed) == 1) return vm_copy(user, (void *)source, count, 1);
    pthread_once(&install_once, install_guard);
    return guarded_copy((void *)(uintptr_t)user, source, count);
}
