/*
 * The reference kernels of the uiommufd benchmarks: what each benchmark's Swift subject is
 * measured against, in the same process run. Plain C, no project headers, -O2.
 *
 * Every function that measures something returns nanoseconds from CLOCK_MONOTONIC for the
 * timed part only; setup (allocation, pre-faulting, re-dirtying) is outside the timed region.
 *
 * Page-table shape: the x86 / VT-d second-stage radix tree. 4 KiB tables of 512 little-endian
 * 64-bit entries, 9 bits of IOVA per level, 4 levels (48-bit IOVA), R = bit 0, W = bit 1,
 * PS = bit 7, A = bit 8, D = bit 9, address in bits 12-51. Tables come from a pre-faulted pool
 * (the role of the kernel's page allocator): allocating one is taking a slot and zeroing it.
 */
#ifndef CBENCHREF_H
#define CBENCHREF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t cb_now_ns(void);

/* 0, from another translation unit: makes a data dependency the optimiser cannot remove. */
uint64_t cb_opaque_zero(void);

/* ---- 4-level radix page table ---- */

typedef struct cb_pt {
    uint64_t *root;
    uint64_t *pool;          /* pre-faulted slots of 512 entries */
    size_t pool_tables;      /* slots in the pool */
    size_t bump;             /* first never-used slot */
    uint64_t *free_list;     /* freed slots, linked through entry 0 */
    size_t live_tables;
} cb_pt;

/* A table with room for `max_tables` tables (root included), pre-faulted. 0 on success. */
int cb_pt_init(cb_pt *pt, size_t max_tables);
/* The same, but the pool is never touched before use: a fill then pays the first-touch page
 * faults of its tables, as a user-space allocator that gets fresh memory from the kernel does.
 * (A diagnostic reference: it shows how much of a subject's cost is page faults.) */
int cb_pt_init_cold(cb_pt *pt, size_t max_tables);
void cb_pt_destroy(cb_pt *pt);
/* Tables a fill of `pages` contiguous 4 KiB leaves at a 2 MiB-aligned IOVA needs, plus slack. */
size_t cb_pt_tables_for(uint64_t pages);

/* Maps `pages` 4 KiB leaves at `iova` -> `phys` with `bits` (R|W), keeping the cursor at the
 * leaf level (each table level loops over its own entries). Returns the ns it took. */
uint64_t cb_pt_fill(cb_pt *pt, uint64_t iova, uint64_t phys, uint64_t pages, uint64_t bits);
/* Clears the leaves of `[iova, iova + pages*4K)` and frees the tables that become empty. */
uint64_t cb_pt_clear(cb_pt *pt, uint64_t iova, uint64_t pages);

/* `n` dependent walks: walk i translates base + pages[i] * 4K + (previous physical & dep_mask)
 * (dep_mask is 0 at run time; it only makes each walk wait for the one before, as a device's
 * next descriptor waits for its last translation). `*sink` receives a checksum. */
uint64_t cb_pt_walk_chain(const cb_pt *pt, uint64_t base, const uint32_t *pages, size_t n,
                          uint64_t dep_mask, uint64_t *sink);

/* Sets the D bit of leaf `base + page*4K` for each listed page (untimed re-dirtying). */
void cb_pt_mark_dirty(cb_pt *pt, uint64_t base, const uint32_t *pages, size_t n);

/* Test-and-clear of D over every leaf of `[iova, iova + pages*4K)`, building a bitmap (bit k =
 * page k, set only, never cleared). `*dirty_count` receives the number of dirty leaves. */
uint64_t cb_pt_harvest(cb_pt *pt, uint64_t iova, uint64_t pages, uint64_t *bitmap,
                       uint64_t *dirty_count);

/* Bytes of tables in use. */
size_t cb_pt_table_bytes(const cb_pt *pt);

/* ---- open-addressing hash (B4 reference) ---- */

typedef struct cb_hash {
    uint64_t *slots;         /* key, value pairs; key 0 = empty */
    uint64_t mask;           /* slot count - 1 */
    int shift;               /* 64 - log2(slots) */
} cb_hash;

/* Linear probing, load factor <= 0.5, Fibonacci hashing of page-aligned keys. */
int cb_hash_init(cb_hash *h, size_t keys);
void cb_hash_put(cb_hash *h, uint64_t key, uint64_t value);
void cb_hash_destroy(cb_hash *h);
/* `steps` dependent lookups starting at `start` (each value is the next key). */
uint64_t cb_hash_chain(const cb_hash *h, uint64_t start, size_t steps, uint64_t *sink);

/* ---- binary search (B10 reference) ---- */

/* `n` dependent searches of sorted `starts[count]`: query i is queries[i] ^ (previous index &
 * dep_mask); each finds the last start <= query. */
uint64_t cb_bsearch_chain(const uint64_t *starts, size_t count, const uint64_t *queries, size_t n,
                          uint64_t dep_mask, uint64_t *sink);

/* ---- memcpy (B6 reference) ---- */

/* `n` copies of 4 KiB from `src` to dst + ((first + i) % dst_pages) * 4K. */
uint64_t cb_memcpy_pages(void *dst, size_t dst_pages, size_t first, size_t n, const void *src);

/* ---- a real ioctl (B7 reference) ---- */

/* `n` ioctl(fd, an unknown request, 0) calls on `fd` (each answers ENOTTY). */
uint64_t cb_ioctl_loop(int fd, size_t n);

#ifdef __cplusplus
}
#endif
#endif
