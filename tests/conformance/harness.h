/*
 * A minimal TAP-style harness for the conformance tests (plain C, no dependencies).
 *
 * Each TEST runs in a child process of its own (so a crash or a hang is one failed test, and
 * every test starts from a clean process, as the kernel selftest harness does), under a
 * watchdog. Output:
 *
 *   1..N
 *   ok 1 - name
 *   not ok 2 - name
 *   #   file.c:123: what went wrong
 *   ok 3 - name # SKIP why
 *   N passed, M failed
 *
 * The last line is what tests/conformance/run.sh adds up; skipped tests count in neither.
 * Exit status: 0 when nothing failed. An optional argument selects tests by name substring.
 */
#ifndef UIOMMUFD_CONFORMANCE_HARNESS_H
#define UIOMMUFD_CONFORMANCE_HARNESS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "uapi.h"

#define CF_MAX_TESTS 256
#define CF_TIMEOUT_SECONDS 120

struct cf_test { const char *name; void (*fn)(void); int line; };
static struct cf_test cf_tests[CF_MAX_TESTS];
static int cf_test_count;
static int cf_failed_here;   /* in the child: checks that failed */
static const char *cf_current;

static __attribute__((unused)) void cf_register(const char *name, void (*fn)(void), int line) {
    if (cf_test_count < CF_MAX_TESTS) cf_tests[cf_test_count++] = (struct cf_test){ name, fn, line };
}

#define TEST(name)                                                                         \
    static void name(void);                                                                \
    __attribute__((constructor)) static void cf_reg_##name(void) { cf_register(#name, name, __LINE__); } \
    static void name(void)

static void cf_note(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static __attribute__((unused)) void cf_note(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("#   %s:%d: ", file, line);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

/* A failed check: noted, and the test goes on (it fails at the end). */
#define FAIL(...) do { cf_failed_here++; cf_note(__FILE__, __LINE__, __VA_ARGS__); } while (0)
/* A failed precondition: the test stops here. */
#define FATAL(...) do { FAIL(__VA_ARGS__); fflush(stdout); _exit(1); } while (0)
#define SKIP(...) do { printf("# SKIP "); printf(__VA_ARGS__); printf("\n"); fflush(stdout); _exit(77); } while (0)

static __attribute__((unused)) const char *cf_errname(int e) {
    switch (e) {
    case 0: return "0";
    case EPERM: return "EPERM"; case ENOENT: return "ENOENT"; case EIO: return "EIO";
    case ENXIO: return "ENXIO"; case E2BIG: return "E2BIG"; case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN"; case ENOMEM: return "ENOMEM"; case EACCES: return "EACCES";
    case EFAULT: return "EFAULT"; case EBUSY: return "EBUSY"; case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV"; case ENOTDIR: return "ENOTDIR"; case EINVAL: return "EINVAL";
    case EMFILE: return "EMFILE"; case ENOTTY: return "ENOTTY"; case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE"; case ERANGE: return "ERANGE"; case ENOSYS: return "ENOSYS";
    case EOVERFLOW: return "EOVERFLOW"; case EMSGSIZE: return "EMSGSIZE";
    case EOPNOTSUPP: return "EOPNOTSUPP"; case EADDRINUSE: return "EADDRINUSE";
    default: { static __thread char buf[16]; snprintf(buf, sizeof buf, "errno %d", e); return buf; }
    }
}

#define CHECK(cond) do { if (!(cond)) FAIL("check failed: %s", #cond); } while (0)
#define CHECK_EQ(a, b) do {                                                                  \
        unsigned long long _a = (unsigned long long)(a), _b = (unsigned long long)(b);       \
        if (_a != _b) FAIL("%s == %s: 0x%llx != 0x%llx", #a, #b, _a, _b);                    \
    } while (0)
/* expr must succeed (>= 0). */
#define EXPECT_OK(expr) do {                                                                 \
        errno = 0;                                                                           \
        long _r = (long)(expr);                                                              \
        if (_r < 0) FAIL("%s failed: %s", #expr, cf_errname(errno));                         \
    } while (0)
/* expr must fail with -1 and errno err. */
#define EXPECT_ERRNO(err, expr) do {                                                         \
        errno = 0;                                                                           \
        long _r = (long)(expr);                                                              \
        int _e = errno;                                                                      \
        if (_r != -1) FAIL("%s returned %ld, expected -1/%s", #expr, _r, cf_errname(err));  \
        else if (_e != (err)) FAIL("%s: errno %s, expected %s", #expr, cf_errname(_e), cf_errname(err)); \
    } while (0)
#define ASSERT_OK(expr) do {                                                                 \
        errno = 0;                                                                           \
        long _r = (long)(expr);                                                              \
        if (_r < 0) FATAL("%s failed: %s", #expr, cf_errname(errno));                        \
    } while (0)

static __attribute__((unused)) int cf_run_one(int index, const struct cf_test *t, int *skipped) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) { printf("not ok %d - %s\n#   fork: %s\n", index, t->name, strerror(errno)); return 0; }
    if (pid == 0) {
        cf_current = t->name;
        alarm(CF_TIMEOUT_SECONDS);
        t->fn();
        fflush(stdout);
        _exit(cf_failed_here ? 1 : 0);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) { printf("ok %d - %s\n", index, t->name); return 1; }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
        printf("ok %d - %s # SKIP\n", index, t->name);
        (*skipped)++;
        return -1;
    }
    if (WIFSIGNALED(status))
        printf("not ok %d - %s\n#   killed by signal %d%s\n", index, t->name, WTERMSIG(status),
               WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
    else
        printf("not ok %d - %s\n", index, t->name);
    return 0;
}

static __attribute__((unused)) int cf_by_line(const void *a, const void *b) {
    return ((const struct cf_test *)a)->line - ((const struct cf_test *)b)->line;
}

static __attribute__((unused)) int cf_main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    setvbuf(stdout, NULL, _IOLBF, 0);
    qsort(cf_tests, (size_t)cf_test_count, sizeof cf_tests[0], cf_by_line);
    int selected = 0;
    for (int i = 0; i < cf_test_count; i++)
        if (!filter || strstr(cf_tests[i].name, filter)) selected++;
    printf("TAP version 13\n1..%d\n", selected);
    int passed = 0, failed = 0, skipped = 0, n = 0;
    for (int i = 0; i < cf_test_count; i++) {
        if (filter && !strstr(cf_tests[i].name, filter)) continue;
        int r = cf_run_one(++n, &cf_tests[i], &skipped);
        if (r > 0) passed++; else if (r == 0) failed++;
    }
    if (skipped) printf("# %d skipped\n", skipped);
    printf("%d passed, %d failed\n", passed, failed);
    fflush(stdout);
    return failed ? 1 : 0;
}

/* ---- helpers ---------------------------------------------------------------------------------- */

static __attribute__((unused)) size_t cf_page(void) { return (size_t)sysconf(_SC_PAGESIZE); }

static __attribute__((unused)) int cf_open(void) {
    int fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
    if (fd < 0) FATAL("open(/dev/iommu): %s", cf_errname(errno));
    return fd;
}

/* True under uiommufd (the iommufd is its memfd), false on a real kernel. Used only to decide
 * whether a command this kernel does not know is a skip (an older kernel) or a failure. */
static __attribute__((unused)) int cf_emulated(int fd) {
    char path[64], target[256];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n < 0) return 0;
    target[n] = 0;
    return strstr(target, "uiommufd") != NULL;
}

static __attribute__((unused)) uint32_t cf_ioas(int fd) {
    struct cf_ioas_alloc a = { .size = sizeof a };
    if (ioctl(fd, CF_IOMMU_IOAS_ALLOC, &a)) FATAL("IOMMU_IOAS_ALLOC: %s", cf_errname(errno));
    return a.out_ioas_id;
}

static __attribute__((unused)) int cf_destroy(int fd, uint32_t id) {
    struct cf_destroy d = { .size = sizeof d, .id = id };
    return ioctl(fd, CF_IOMMU_DESTROY, &d);
}

/* IOMMU_IOAS_MAP; *iova is the fixed IOVA in (with CF_MAP_FIXED_IOVA) and the IOVA out. */
static __attribute__((unused)) int cf_map(int fd, uint32_t ioas, const void *va, uint64_t length, uint64_t *iova, uint32_t flags) {
    struct cf_ioas_map m = { .size = sizeof m, .flags = flags, .ioas_id = ioas,
                             .user_va = (uintptr_t)va, .length = length, .iova = iova ? *iova : 0 };
    int r = ioctl(fd, CF_IOMMU_IOAS_MAP, &m);
    if (r == 0 && iova) *iova = m.iova;
    return r;
}

#define CF_RW (CF_MAP_READABLE | CF_MAP_WRITEABLE)

static __attribute__((unused)) int cf_map_fixed(int fd, uint32_t ioas, const void *va, uint64_t length, uint64_t iova) {
    return cf_map(fd, ioas, va, length, &iova, CF_RW | CF_MAP_FIXED_IOVA);
}

static __attribute__((unused)) int cf_unmap(int fd, uint32_t ioas, uint64_t iova, uint64_t length, uint64_t *unmapped) {
    struct cf_ioas_unmap u = { .size = sizeof u, .ioas_id = ioas, .iova = iova, .length = length };
    int r = ioctl(fd, CF_IOMMU_IOAS_UNMAP, &u);
    if (r == 0 && unmapped) *unmapped = u.length;
    return r;
}

static __attribute__((unused)) void *cf_buffer(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) FATAL("mmap %zu bytes: %s", bytes, cf_errname(errno));
    memset(p, 0x5a, bytes);
    return p;
}

/* A readable page followed by an inaccessible one: for pointers that run into a fault. */
static __attribute__((unused)) char *cf_guard_page(void) {
    size_t pg = cf_page();
    char *p = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) FATAL("mmap: %s", cf_errname(errno));
    if (mprotect(p + pg, pg, PROT_NONE)) FATAL("mprotect: %s", cf_errname(errno));
    memset(p, 0, pg);
    return p;
}

#endif
