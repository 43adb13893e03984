/*
 * Many threads on one iommufd: maps and unmaps in private and shared IOASes, object churn,
 * descriptor churn (dup/close of the same file), and fork while all of that runs.
 */
#include "harness.h"
#include <pthread.h>
#include <stdatomic.h>

#define MB (1ull << 20)
#define THREADS 4
#define ROUNDS 2000

struct worker { int fd; uint32_t shared; int index; char *buf; atomic_int *errors; atomic_int *stop; };

static void count_error(struct worker *w, const char *what, int err) {
    if (atomic_fetch_add(w->errors, 1) < 10) printf("#   thread %d: %s: %s\n", w->index, what, cf_errname(err));
}

static void *mapper(void *arg) {
    struct worker *w = arg;
    size_t pg = cf_page();
    struct cf_ioas_alloc a = { .size = sizeof a };
    if (ioctl(w->fd, CF_IOMMU_IOAS_ALLOC, &a)) { count_error(w, "IOAS_ALLOC", errno); return NULL; }
    uint64_t window = (uint64_t)(w->index + 1) << 32;   /* disjoint windows in the shared IOAS */
    for (int i = 0; i < ROUNDS; i++) {
        uint64_t len = (uint64_t)(1 + i % 8) * pg, iova = 0, n = 0;
        /* private IOAS, IOVA chosen by the kernel */
        if (cf_map(w->fd, a.out_ioas_id, w->buf, len, &iova, CF_RW)) { count_error(w, "map auto", errno); continue; }
        if (cf_unmap(w->fd, a.out_ioas_id, iova, len, &n) || n != len) count_error(w, "unmap auto", errno);
        /* shared IOAS, fixed IOVAs in this thread's window */
        uint64_t at = window + (uint64_t)(i % 16) * MB;
        if (cf_map_fixed(w->fd, w->shared, w->buf, len, at)) { count_error(w, "map fixed", errno); continue; }
        if (cf_unmap(w->fd, w->shared, at, len, &n) || n != len) count_error(w, "unmap fixed", errno);
    }
    if (cf_destroy(w->fd, a.out_ioas_id)) count_error(w, "destroy", errno);
    return NULL;
}

static void *churner(void *arg) {
    struct worker *w = arg;
    while (!atomic_load(w->stop)) {
        int d = dup(w->fd);
        if (d < 0) { count_error(w, "dup", errno); break; }
        struct cf_ioas_alloc a = { .size = sizeof a };
        if (ioctl(d, CF_IOMMU_IOAS_ALLOC, &a)) count_error(w, "IOAS_ALLOC via dup", errno);
        else if (cf_destroy(d, a.out_ioas_id)) count_error(w, "destroy via dup", errno);
        if (close(d)) count_error(w, "close dup", errno);
        /* unrelated descriptors come and go on the same numbers */
        int p[2];
        if (pipe(p) == 0) { close(p[0]); close(p[1]); }
    }
    return NULL;
}

TEST(threads_share_one_fd) {
    int fd = cf_open();
    uint32_t shared = cf_ioas(fd);
    atomic_int errors = 0, stop = 0;
    struct worker w[THREADS + 1];
    pthread_t t[THREADS + 1];
    for (int i = 0; i <= THREADS; i++) {
        w[i] = (struct worker){ .fd = fd, .shared = shared, .index = i, .buf = cf_buffer(8 * cf_page()),
                                .errors = &errors, .stop = &stop };
        ASSERT_OK(pthread_create(&t[i], NULL, i < THREADS ? mapper : churner, &w[i]) ? -1 : 0);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    atomic_store(&stop, 1);
    pthread_join(t[THREADS], NULL);
    CHECK_EQ(atomic_load(&errors), 0);
    /* nothing left mapped, only the shared IOAS left */
    uint64_t n = 1;
    EXPECT_OK(cf_unmap(fd, shared, 0, UINT64_MAX, &n));
    CHECK_EQ(n, 0);
    CHECK_EQ(cf_ioas(fd), 2);
    close(fd);
}

TEST(threads_with_own_fds) {
    atomic_int errors = 0, stop = 0;
    struct worker w[THREADS];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        int fd = cf_open();
        w[i] = (struct worker){ .fd = fd, .shared = cf_ioas(fd), .index = i, .buf = cf_buffer(8 * cf_page()),
                                .errors = &errors, .stop = &stop };
        ASSERT_OK(pthread_create(&t[i], NULL, mapper, &w[i]) ? -1 : 0);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    CHECK_EQ(atomic_load(&errors), 0);
    for (int i = 0; i < THREADS; i++) close(w[i].fd);
}

TEST(fork_while_threads_work) {
    int fd = cf_open();
    uint32_t shared = cf_ioas(fd);
    atomic_int errors = 0, stop = 0;
    struct worker w[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        w[i] = (struct worker){ .fd = fd, .shared = shared, .index = i, .buf = cf_buffer(8 * cf_page()),
                                .errors = &errors, .stop = &stop };
        ASSERT_OK(pthread_create(&t[i], NULL, i == 0 ? mapper : churner, &w[i]) ? -1 : 0);
    }
    /* each child must be able to use the inherited fd: no lock may be left held */
    for (int i = 0; i < 20; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(20);
            struct cf_ioas_alloc a = { .size = sizeof a };
            int bad = ioctl(fd, CF_IOMMU_IOAS_ALLOC, &a) != 0;
            int d = dup(fd);
            bad |= d < 0 || close(d) != 0;
            bad |= close(fd) != 0;
            _exit(bad);
        }
        int status;
        ASSERT_OK(waitpid(pid, &status, 0));
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) FAIL("child %d: status 0x%x", i, status);
    }
    pthread_join(t[0], NULL);
    atomic_store(&stop, 1);
    pthread_join(t[1], NULL);
    CHECK_EQ(atomic_load(&errors), 0);
    close(fd);
}

struct opener { pthread_barrier_t *barrier; int fd; };

static void *open_after_barrier(void *p) {
    struct opener *o = p;
    pthread_barrier_wait(o->barrier);
    o->fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
    return NULL;
}

TEST(concurrent_first_opens) {
    /* every thread's first open races the others (and, under an emulator, its set-up) */
    enum { N = 16 };
    pthread_t t[N];
    struct opener o[N];
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, N);
    for (int i = 0; i < N; i++) {
        o[i] = (struct opener){ &barrier, -1 };
        ASSERT_OK(pthread_create(&t[i], NULL, open_after_barrier, &o[i]) ? -1 : 0);
    }
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < N; i++) {
        if (o[i].fd < 0) { FAIL("open %d failed", i); continue; }
        CHECK_EQ(cf_ioas(o[i].fd), 1);
        close(o[i].fd);
    }
}

int main(int argc, char **argv) { return cf_main(argc, argv); }
