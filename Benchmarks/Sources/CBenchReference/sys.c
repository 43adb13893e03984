#define _GNU_SOURCE
#include "cbenchsys.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

void *cb_map_anonymous(size_t bytes, int flags) {
    int mflags = MAP_PRIVATE | MAP_ANONYMOUS;
    if (flags & CB_MAP_POPULATE) mflags |= MAP_POPULATE;
    if (flags & CB_MAP_NORESERVE) mflags |= MAP_NORESERVE;
    if (flags & CB_MAP_HUGETLB) mflags |= MAP_HUGETLB;
    int prot = (flags & CB_MAP_PROT_NONE) ? PROT_NONE : PROT_READ | PROT_WRITE;
    void *p = mmap(NULL, bytes, prot, mflags, -1, 0);
    if (p == MAP_FAILED) return NULL;
    if (flags & CB_MAP_NOHUGEPAGE) (void)madvise(p, bytes, MADV_NOHUGEPAGE);
    return p;
}

int cb_unmap(void *p, size_t bytes) { return munmap(p, bytes); }

int cb_memfd(size_t bytes) {
    int fd = memfd_create("uiommufd-bench", MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)bytes) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

void *cb_map_file_fixed(void *at, size_t bytes, int fd) {
    void *p = mmap(at, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

int cb_close(int fd) { return close(fd); }

uint64_t cb_resident_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    unsigned long size = 0, resident = 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
    fclose(f);
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

uint64_t cb_minor_faults(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (uint64_t)ru.ru_minflt;
}

int cb_pin_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set);
}

const char *cb_strerror(void) { return strerror(errno); }
