/*
 * Reference kernels for the uiommufd benchmarks (see cbenchref.h). Written for clarity first:
 * each is the straightforward C a kernel developer would write for the same job, so that a
 * ratio against it says how far the Swift subject is from "the obvious native loop".
 */
#define _GNU_SOURCE
#include "cbenchref.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

#define PT_R 1ull
#define PT_W 2ull
#define PT_PRESENT (PT_R | PT_W)
#define PT_PS (1ull << 7)
#define PT_D (1ull << 9)
#define PT_ADDR 0x000FFFFFFFFFF000ull
#define PT_LEVELS 4

uint64_t cb_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static volatile uint64_t cb_zero_word = 0;
uint64_t cb_opaque_zero(void) { return cb_zero_word; }

/* ---- table pool ---- */

static uint64_t *pt_alloc(cb_pt *pt) {
    uint64_t *t;
    if (pt->free_list) {
        t = pt->free_list;
        pt->free_list = (uint64_t *)(uintptr_t)t[0];
    } else {
        if (pt->bump >= pt->pool_tables) {
            fprintf(stderr, "cbenchref: table pool exhausted (%zu tables)\n", pt->pool_tables);
            abort();
        }
        t = pt->pool + pt->bump * 512;
        pt->bump++;
    }
    memset(t, 0, 4096);
    pt->live_tables++;
    return t;
}

static void pt_free(cb_pt *pt, uint64_t *t) {
    t[0] = (uint64_t)(uintptr_t)pt->free_list;
    pt->free_list = t;
    pt->live_tables--;
}

static int pt_init(cb_pt *pt, size_t max_tables, int cold) {
    memset(pt, 0, sizeof(*pt));
    size_t bytes = max_tables * 4096;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | (cold ? 0 : MAP_POPULATE), -1, 0);
    if (p == MAP_FAILED) return -1;
    if (cold) (void)madvise(p, bytes, MADV_NOHUGEPAGE);
    else memset(p, 0, bytes); /* pre-faulted, as pages from the kernel's allocator are */
    pt->pool = p;
    pt->pool_tables = max_tables;
    pt->root = pt_alloc(pt);
    return 0;
}

int cb_pt_init(cb_pt *pt, size_t max_tables) { return pt_init(pt, max_tables, 0); }
int cb_pt_init_cold(cb_pt *pt, size_t max_tables) { return pt_init(pt, max_tables, 1); }

void cb_pt_destroy(cb_pt *pt) {
    if (pt->pool) munmap(pt->pool, pt->pool_tables * 4096);
    memset(pt, 0, sizeof(*pt));
}

size_t cb_pt_tables_for(uint64_t pages) {
    uint64_t l1 = (pages + 511) / 512 + 1;
    uint64_t l2 = (l1 + 511) / 512 + 1;
    uint64_t l3 = (l2 + 511) / 512 + 1;
    return (size_t)(l1 + l2 + l3 + 1 + 8);
}

size_t cb_pt_table_bytes(const cb_pt *pt) { return pt->live_tables * 4096; }

static inline unsigned pt_shift(int level) { return 12u + 9u * (unsigned)(level - 1); }
static inline unsigned pt_index(uint64_t iova, int level) { return (unsigned)((iova >> pt_shift(level)) & 511); }
static inline uint64_t *pt_child(uint64_t e) { return (uint64_t *)(uintptr_t)(e & PT_ADDR); }

/* ---- fill ---- */

struct fill_cursor {
    uint64_t iova, phys, remaining, bits;
};

static void fill_level(cb_pt *pt, uint64_t *table, int level, struct fill_cursor *c) {
    unsigned idx = pt_index(c->iova, level);
    if (level == 1) {
        uint64_t n = 512 - idx;
        if (n > c->remaining) n = c->remaining;
        uint64_t *e = table + idx;
        uint64_t p = c->phys, bits = c->bits;
        for (uint64_t i = 0; i < n; i++) {
            e[i] = p | bits;
            p += 4096;
        }
        c->iova += n << 12;
        c->phys = p;
        c->remaining -= n;
        return;
    }
    while (idx < 512 && c->remaining) {
        uint64_t e = table[idx];
        uint64_t *child;
        if (!(e & PT_PRESENT)) {
            child = pt_alloc(pt);
            table[idx] = (uint64_t)(uintptr_t)child | PT_PRESENT;
        } else {
            child = pt_child(e);
        }
        fill_level(pt, child, level - 1, c);
        idx++;
    }
}

uint64_t cb_pt_fill(cb_pt *pt, uint64_t iova, uint64_t phys, uint64_t pages, uint64_t bits) {
    struct fill_cursor c = {iova, phys, pages, bits};
    uint64_t t0 = cb_now_ns();
    while (c.remaining) fill_level(pt, pt->root, PT_LEVELS, &c);
    return cb_now_ns() - t0;
}

/* ---- clear ---- */

static int table_empty(const uint64_t *t) {
    for (int i = 0; i < 512; i++)
        if (t[i] & PT_PRESENT) return 0;
    return 1;
}

/* Clears [first, last] (inside this table's span). Returns 1 if the table is now empty. */
static int clear_level(cb_pt *pt, uint64_t *table, int level, uint64_t first, uint64_t last) {
    unsigned lo = pt_index(first, level), hi = pt_index(last, level);
    if (level == 1) {
        memset(table + lo, 0, (size_t)(hi - lo + 1) * 8);
        return (lo == 0 && hi == 511) ? 1 : table_empty(table);
    }
    unsigned shift = pt_shift(level);
    uint64_t size = 1ull << shift;
    uint64_t span_base = first & ~((size << 9) - 1);
    int whole_table = 1;
    for (unsigned i = lo; i <= hi; i++) {
        uint64_t e = table[i];
        if (!(e & PT_PRESENT)) continue;
        uint64_t base = span_base | ((uint64_t)i << shift);
        uint64_t elast = base + size - 1;
        uint64_t f = first > base ? first : base, l = last < elast ? last : elast;
        if (e & PT_PS) {
            if (f == base && l == elast) table[i] = 0; else whole_table = 0;
            continue;
        }
        uint64_t *child = pt_child(e);
        if (clear_level(pt, child, level - 1, f, l)) {
            pt_free(pt, child);
            table[i] = 0;
        } else {
            whole_table = 0;
        }
    }
    if (lo != 0 || hi != 511 || !whole_table) return table_empty(table);
    return 1;
}

uint64_t cb_pt_clear(cb_pt *pt, uint64_t iova, uint64_t pages) {
    uint64_t t0 = cb_now_ns();
    if (pages) clear_level(pt, pt->root, PT_LEVELS, iova, iova + (pages << 12) - 1);
    return cb_now_ns() - t0;
}

/* ---- walk ---- */

static inline uint64_t pt_walk(const uint64_t *root, uint64_t iova) {
    const uint64_t *t = root;
    unsigned shift = pt_shift(PT_LEVELS);
    for (;;) {
        uint64_t e = t[(iova >> shift) & 511];
        if (!(e & PT_PRESENT)) return 0;
        if (shift == 12 || (e & PT_PS)) {
            uint64_t mask = (1ull << shift) - 1;
            return (e & PT_ADDR & ~mask) | (iova & mask);
        }
        t = pt_child(e);
        shift -= 9;
    }
}

uint64_t cb_pt_walk_chain(const cb_pt *pt, uint64_t base, const uint32_t *pages, size_t n,
                          uint64_t dep_mask, uint64_t *sink) {
    uint64_t acc = 0, link = 0;
    uint64_t t0 = cb_now_ns();
    for (size_t i = 0; i < n; i++) {
        uint64_t iova = base + ((uint64_t)pages[i] << 12) + (link & dep_mask);
        link = pt_walk(pt->root, iova);
        acc += link;
    }
    uint64_t t = cb_now_ns() - t0;
    *sink = acc;
    return t;
}

void cb_pt_mark_dirty(cb_pt *pt, uint64_t base, const uint32_t *pages, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint64_t iova = base + ((uint64_t)pages[i] << 12);
        uint64_t *t = pt->root;
        for (int level = PT_LEVELS; level > 1; level--) t = pt_child(t[pt_index(iova, level)]);
        t[pt_index(iova, 1)] |= PT_D;
    }
}

/* ---- dirty harvest ---- */

struct harvest {
    uint64_t start;
    uint64_t *bitmap;
    uint64_t dirty;
};

static void harvest_level(uint64_t *table, int level, uint64_t first, uint64_t last, struct harvest *h) {
    unsigned lo = pt_index(first, level), hi = pt_index(last, level);
    unsigned shift = pt_shift(level);
    uint64_t size = 1ull << shift;
    uint64_t span_base = first & ~((size << 9) - 1);
    if (level == 1) {
        uint64_t bit = (span_base + ((uint64_t)lo << 12) - h->start) >> 12;
        for (unsigned i = lo; i <= hi; i++, bit++) {
            uint64_t e = table[i];
            if (e & PT_D) {
                table[i] = e & ~PT_D;
                h->bitmap[bit >> 6] |= 1ull << (bit & 63);
                h->dirty++;
            }
        }
        return;
    }
    for (unsigned i = lo; i <= hi; i++) {
        uint64_t e = table[i];
        if (!(e & PT_PRESENT) || (e & PT_PS)) continue;
        uint64_t base = span_base | ((uint64_t)i << shift);
        uint64_t elast = base + size - 1;
        harvest_level(pt_child(e), level - 1, first > base ? first : base, last < elast ? last : elast, h);
    }
}

uint64_t cb_pt_harvest(cb_pt *pt, uint64_t iova, uint64_t pages, uint64_t *bitmap, uint64_t *dirty_count) {
    struct harvest h = {iova, bitmap, 0};
    uint64_t t0 = cb_now_ns();
    harvest_level(pt->root, PT_LEVELS, iova, iova + (pages << 12) - 1, &h);
    uint64_t t = cb_now_ns() - t0;
    *dirty_count = h.dirty;
    return t;
}

/* ---- hash ---- */

int cb_hash_init(cb_hash *h, size_t keys) {
    size_t slots = 16;
    int bits = 4;
    while (slots < keys * 2) { slots <<= 1; bits++; }
    h->slots = calloc(slots * 2, sizeof(uint64_t));
    if (!h->slots) return -1;
    h->mask = slots - 1;
    h->shift = 64 - bits;
    return 0;
}

static inline uint64_t hash_slot(const cb_hash *h, uint64_t key) {
    return (key * 0x9E3779B97F4A7C15ull) >> h->shift;
}

void cb_hash_put(cb_hash *h, uint64_t key, uint64_t value) {
    uint64_t i = hash_slot(h, key);
    while (h->slots[2 * i] != 0 && h->slots[2 * i] != key) i = (i + 1) & h->mask;
    h->slots[2 * i] = key;
    h->slots[2 * i + 1] = value;
}

void cb_hash_destroy(cb_hash *h) { free(h->slots); h->slots = NULL; }

uint64_t cb_hash_chain(const cb_hash *h, uint64_t start, size_t steps, uint64_t *sink) {
    uint64_t k = start;
    const uint64_t *s = h->slots;
    uint64_t t0 = cb_now_ns();
    for (size_t n = 0; n < steps; n++) {
        uint64_t i = hash_slot(h, k);
        while (s[2 * i] != k) i = (i + 1) & h->mask;
        k = s[2 * i + 1];
    }
    uint64_t t = cb_now_ns() - t0;
    *sink = k;
    return t;
}

/* ---- binary search ---- */

uint64_t cb_bsearch_chain(const uint64_t *starts, size_t count, const uint64_t *queries, size_t n,
                          uint64_t dep_mask, uint64_t *sink) {
    uint64_t acc = 0, link = 0;
    uint64_t t0 = cb_now_ns();
    for (size_t i = 0; i < n; i++) {
        uint64_t q = queries[i] ^ (link & dep_mask);
        size_t lo = 0, hi = count;
        while (lo < hi) {
            size_t mid = (lo + hi) >> 1;
            if (starts[mid] <= q) lo = mid + 1; else hi = mid;
        }
        link = (uint64_t)lo - 1; /* the last start <= q */
        acc += link;
    }
    uint64_t t = cb_now_ns() - t0;
    *sink = acc;
    return t;
}

/* ---- memcpy ---- */

uint64_t cb_memcpy_pages(void *dst, size_t dst_pages, size_t first, size_t n, const void *src) {
    char *d = dst;
    uint64_t t0 = cb_now_ns();
    for (size_t i = 0; i < n; i++) memcpy(d + ((first + i) % dst_pages) * 4096, src, 4096);
    return cb_now_ns() - t0;
}

/* ---- ioctl ---- */

uint64_t cb_ioctl_loop(int fd, size_t n) {
    uint64_t t0 = cb_now_ns();
    for (size_t i = 0; i < n; i++) (void)ioctl(fd, 0x7a3bUL, 0);
    return cb_now_ns() - t0;
}
