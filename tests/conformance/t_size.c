/*
 * The extensible-struct ("size") rule of every iommufd ioctl, as main.c applies it:
 *   - the u32 size is read first (EFAULT if it cannot be);
 *   - size < offsetofend(last mandatory field) → EINVAL;
 *   - size > sizeof: the extra bytes must be zero (E2BIG), and then it behaves as sizeof;
 *   - an unknown number → ENOTTY.
 * A command this kernel does not have yet (ENOTTY for a well-formed call) is skipped on a real
 * kernel and is a failure under uiommufd, which implements the v6.17 set.
 */
#include "harness.h"

struct command { const char *name; unsigned long request; unsigned min; unsigned size; const char *since; };

static const struct command commands[] = {
    { "IOMMU_DESTROY", CF_IOMMU_DESTROY, 8, sizeof(struct cf_destroy), "6.2" },
    { "IOMMU_IOAS_ALLOC", CF_IOMMU_IOAS_ALLOC, 12, sizeof(struct cf_ioas_alloc), "6.2" },
    { "IOMMU_IOAS_ALLOW_IOVAS", CF_IOMMU_IOAS_ALLOW_IOVAS, 24, sizeof(struct cf_ioas_allow_iovas), "6.2" },
    { "IOMMU_IOAS_COPY", CF_IOMMU_IOAS_COPY, 40, sizeof(struct cf_ioas_copy), "6.2" },
    { "IOMMU_IOAS_IOVA_RANGES", CF_IOMMU_IOAS_IOVA_RANGES, 32, sizeof(struct cf_ioas_iova_ranges), "6.2" },
    { "IOMMU_IOAS_MAP", CF_IOMMU_IOAS_MAP, 40, sizeof(struct cf_ioas_map), "6.2" },
    { "IOMMU_IOAS_UNMAP", CF_IOMMU_IOAS_UNMAP, 24, sizeof(struct cf_ioas_unmap), "6.2" },
    { "IOMMU_OPTION", CF_IOMMU_OPTION, 24, sizeof(struct cf_option), "6.2" },
    { "IOMMU_VFIO_IOAS", CF_IOMMU_VFIO_IOAS, 12, sizeof(struct cf_vfio_ioas), "6.2" },
    { "IOMMU_HWPT_ALLOC", CF_IOMMU_HWPT_ALLOC, 24, sizeof(struct cf_hwpt_alloc), "6.6" },
    { "IOMMU_GET_HW_INFO", CF_IOMMU_GET_HW_INFO, 32, sizeof(struct cf_hw_info), "6.6" },
    { "IOMMU_HWPT_SET_DIRTY_TRACKING", CF_IOMMU_HWPT_SET_DIRTY_TRACKING, 16, sizeof(struct cf_hwpt_set_dirty_tracking), "6.7" },
    { "IOMMU_HWPT_GET_DIRTY_BITMAP", CF_IOMMU_HWPT_GET_DIRTY_BITMAP, 48, sizeof(struct cf_hwpt_get_dirty_bitmap), "6.7" },
    { "IOMMU_HWPT_INVALIDATE", CF_IOMMU_HWPT_INVALIDATE, 32, sizeof(struct cf_hwpt_invalidate), "6.8" },
    { "IOMMU_FAULT_QUEUE_ALLOC", CF_IOMMU_FAULT_QUEUE_ALLOC, 16, sizeof(struct cf_fault_alloc), "6.11" },
    { "IOMMU_IOAS_MAP_FILE", CF_IOMMU_IOAS_MAP_FILE, 40, sizeof(struct cf_ioas_map_file), "6.13" },
    { "IOMMU_VIOMMU_ALLOC", CF_IOMMU_VIOMMU_ALLOC, 24, sizeof(struct cf_viommu_alloc), "6.13" },
    { "IOMMU_VDEVICE_ALLOC", CF_IOMMU_VDEVICE_ALLOC, 24, sizeof(struct cf_vdevice_alloc), "6.13" },
    { "IOMMU_IOAS_CHANGE_PROCESS", CF_IOMMU_IOAS_CHANGE_PROCESS, 8, sizeof(struct cf_ioas_change_process), "6.14" },
    { "IOMMU_VEVENTQ_ALLOC", CF_IOMMU_VEVENTQ_ALLOC, 28, sizeof(struct cf_veventq_alloc), "6.15" },
    { "IOMMU_HW_QUEUE_ALLOC", CF_IOMMU_HW_QUEUE_ALLOC, 40, sizeof(struct cf_hw_queue_alloc), "6.17" },
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

struct outcome { int rc; int err; };

/* One call with a zeroed struct of `size` bytes (its size field says `size`), on a fresh fd so
 * that what one call creates cannot change the next one's answer. `tail` is the value of the
 * byte just past the struct when size > sizeof. */
static struct outcome call(const struct command *c, unsigned size, unsigned char last) {
    unsigned char buf[512];
    memset(buf, 0, sizeof buf);
    memcpy(buf, &size, sizeof size);
    if (size > 4) buf[size - 1] = last;
    int fd = cf_open();
    errno = 0;
    struct outcome o = { ioctl(fd, c->request, buf), errno };
    if (o.rc == 0 && c->request == CF_IOMMU_FAULT_QUEUE_ALLOC) close(((struct cf_fault_alloc *)buf)->out_fault_fd);
    close(fd);
    return o;
}

/* Whether this kernel has the command; fails under uiommufd if not. */
static int supported(const struct command *c, int emulated) {
    struct outcome o = call(c, c->size, 0);
    if (o.rc == -1 && o.err == ENOTTY) {
        if (emulated) FAIL("%s: ENOTTY for a well-formed call", c->name);
        else printf("#   %s: not in this kernel (added in %s)\n", c->name, c->since);
        return 0;
    }
    return 1;
}

TEST(size_below_minimum_is_einval) {
    int fd = cf_open(), emulated = cf_emulated(fd);
    close(fd);
    for (unsigned i = 0; i < NCOMMANDS; i++) {
        const struct command *c = &commands[i];
        if (!supported(c, emulated)) continue;
        struct outcome o = call(c, c->min - 1, 0xff);
        if (o.rc != -1 || o.err != EINVAL) FAIL("%s size %u: %d/%s, expected EINVAL", c->name, c->min - 1, o.rc, cf_errname(o.err));
        o = call(c, 0, 0);
        if (o.rc != -1 || o.err != EINVAL) FAIL("%s size 0: %d/%s, expected EINVAL", c->name, o.rc, cf_errname(o.err));
    }
}

TEST(nonzero_tail_is_e2big) {
    int fd = cf_open(), emulated = cf_emulated(fd);
    close(fd);
    for (unsigned i = 0; i < NCOMMANDS; i++) {
        const struct command *c = &commands[i];
        if (!supported(c, emulated)) continue;
        struct outcome o = call(c, c->size + 1, 0xff);
        if (o.rc != -1 || o.err != E2BIG) FAIL("%s size %u, last byte 0xff: %d/%s, expected E2BIG", c->name, c->size + 1, o.rc, cf_errname(o.err));
        o = call(c, c->size + 64, 0x01);
        if (o.rc != -1 || o.err != E2BIG) FAIL("%s size %u, last byte 1: %d/%s, expected E2BIG", c->name, c->size + 64, o.rc, cf_errname(o.err));
    }
}

TEST(zero_tail_behaves_like_sizeof) {
    int fd = cf_open(), emulated = cf_emulated(fd);
    close(fd);
    for (unsigned i = 0; i < NCOMMANDS; i++) {
        const struct command *c = &commands[i];
        if (!supported(c, emulated)) continue;
        struct outcome exact = call(c, c->size, 0);
        struct outcome more = call(c, c->size + 1, 0);
        struct outcome lots = call(c, 256, 0);
        if (exact.rc != more.rc || exact.err != more.err || exact.rc != lots.rc || exact.err != lots.err)
            FAIL("%s: size %u → %d/%s, size %u → %d/%s, size 256 → %d/%s", c->name,
                 c->size, exact.rc, cf_errname(exact.err), c->size + 1, more.rc, cf_errname(more.err),
                 lots.rc, cf_errname(lots.err));
        /* the minimum size works the same (the rest is zero-extended) */
        struct outcome least = call(c, c->min, 0);
        if (least.rc != exact.rc || least.err != exact.err)
            FAIL("%s: size %u (min) → %d/%s, size %u → %d/%s", c->name, c->min, least.rc,
                 cf_errname(least.err), c->size, exact.rc, cf_errname(exact.err));
    }
}

TEST(unreadable_argument_is_efault) {
    int fd = cf_open(), emulated = cf_emulated(fd);
    size_t pg = cf_page();
    char *guard = cf_guard_page();   /* guard[0, pg) readable, guard[pg, 2pg) not */
    for (unsigned i = 0; i < NCOMMANDS; i++) {
        const struct command *c = &commands[i];
        if (!supported(c, emulated)) continue;
        EXPECT_ERRNO(EFAULT, ioctl(fd, c->request, NULL));
        EXPECT_ERRNO(EFAULT, ioctl(fd, c->request, (void *)16));
        /* the size field itself runs into the unreadable page */
        EXPECT_ERRNO(EFAULT, ioctl(fd, c->request, guard + pg - 2));
        /* the size is readable, the rest of the struct is not */
        uint32_t size = c->size;
        memcpy(guard + pg - 4, &size, 4);
        EXPECT_ERRNO(EFAULT, ioctl(fd, c->request, guard + pg - 4));
        /* the struct is readable, the (zero) tail past sizeof is not */
        char *at = guard + pg - c->size;
        memset(at, 0, c->size);
        size = c->size + 16;
        memcpy(at, &size, 4);
        EXPECT_ERRNO(EFAULT, ioctl(fd, c->request, at));
    }
    close(fd);
}

TEST(output_stays_within_size) {
    int fd = cf_open();
    unsigned char buf[64];
    memset(buf, 0xab, sizeof buf);
    struct cf_ioas_alloc a = { .size = sizeof a };
    memcpy(buf, &a, sizeof a);
    EXPECT_OK(ioctl(fd, CF_IOMMU_IOAS_ALLOC, buf));
    for (size_t i = sizeof a; i < sizeof buf; i++)
        if (buf[i] != 0xab) { FAIL("byte %zu past the struct was written", i); break; }
    memcpy(&a, buf, sizeof a);
    CHECK_EQ(a.out_ioas_id, 1);
    close(fd);
}

TEST(unknown_numbers_are_enotty) {
    int fd = cf_open();
    struct cf_destroy d = { .size = sizeof d, .id = 1 };
    unsigned char big[256];
    memset(big, 0, sizeof big);
    uint32_t size = sizeof big;
    memcpy(big, &size, 4);
    EXPECT_ERRNO(ENOTTY, ioctl(fd, CF_IO(0xff), big));
    EXPECT_ERRNO(ENOTTY, ioctl(fd, CF_IO(0xff), NULL));        /* past the table: VFIO, no read */
    EXPECT_ERRNO(ENOTTY, ioctl(fd, CF_IO(0x9f), big));          /* a number no kernel uses yet */
    EXPECT_ERRNO(ENOTTY, ioctl(fd, CF_IO(0x10), NULL));         /* below the base: VFIO, unknown */
    /* the right nr with size or direction bits is not the command */
    unsigned long iowr = (3ul << 30) | (8ul << 16) | (CF_IOMMUFD_TYPE << 8) | 0x80;
    EXPECT_ERRNO(ENOTTY, ioctl(fd, iowr, &d));
    EXPECT_ERRNO(EFAULT, ioctl(fd, iowr, NULL));               /* ...but the size is read first */
    /* another type with an iommufd nr */
    EXPECT_ERRNO(ENOTTY, ioctl(fd, (unsigned long)(('x' << 8) | 0x80), &d));
    /* the upper half of a 64-bit request is not part of the command */
    cf_ioas(fd);
    EXPECT_OK(ioctl(fd, (1ul << 32) | CF_IOMMU_DESTROY, &d));
    EXPECT_ERRNO(ENOENT, ioctl(fd, CF_IOMMU_DESTROY, &d));
    close(fd);
}

int main(int argc, char **argv) { return cf_main(argc, argv); }
