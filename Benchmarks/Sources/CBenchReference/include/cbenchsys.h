/*
 * System helpers for the benchmark executable (not reference kernels): memory mappings with
 * the flags the benchmarks need, memfd aliasing, resident-set size, CPU pinning. Kept in C so
 * the Swift side needs no _GNU_SOURCE-only declarations.
 */
#ifndef CBENCHSYS_H
#define CBENCHSYS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    CB_MAP_POPULATE = 1,   /* MAP_POPULATE: fault everything in at mmap time */
    CB_MAP_NORESERVE = 2,  /* MAP_NORESERVE: no commit charge (huge untouched reservations) */
    CB_MAP_HUGETLB = 4,    /* MAP_HUGETLB with the default huge page size (2 MiB) */
    CB_MAP_NOHUGEPAGE = 8, /* madvise(MADV_NOHUGEPAGE) afterwards: keep it 4 KiB pages */
    CB_MAP_PROT_NONE = 16, /* PROT_NONE (a placeholder reservation) */
};

/* Anonymous private mapping of `bytes`; NULL on failure (errno kept). */
void *cb_map_anonymous(size_t bytes, int flags);
/* munmap; 0 on success. */
int cb_unmap(void *p, size_t bytes);
/* A memfd of `bytes` (MFD_CLOEXEC); -1 on failure. */
int cb_memfd(size_t bytes);
/* Maps `bytes` of `fd` at offset 0 over the fixed address `at` (MAP_SHARED | MAP_FIXED). */
void *cb_map_file_fixed(void *at, size_t bytes, int fd);
int cb_close(int fd);
/* Resident set size in bytes (/proc/self/statm). */
uint64_t cb_resident_bytes(void);
/* Minor page faults of this process so far (getrusage). */
uint64_t cb_minor_faults(void);
/* Pins the calling thread to `cpu`; 0 on success. */
int cb_pin_cpu(int cpu);
/* The last errno as text. */
const char *cb_strerror(void);

#ifdef __cplusplus
}
#endif
#endif
