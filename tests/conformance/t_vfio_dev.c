/*
 * VFIO device files and groups as the kernel defines them, and the seed scenarios, found through
 * sysfs on whatever machine runs the test:
 *
 *  - device-file rules on QEMU's edu device (1234:11e8): nothing but BIND before BIND, the errnos
 *    of BIND, region and IRQ information, config space limits, mmap limits;
 *  - a group with a member bound to a host driver is not viable (seed 000);
 *  - hot-adding a device whose IOMMU reserves an IOVA range that is already mapped fails with
 *    EADDRINUSE and changes nothing; the usable IOVA ranges are the complement of the reserved
 *    regions sysfs reports (seed 003);
 *  - devices of two groups share one iommufd and, behind the same IOMMU, one domain; a domain that
 *    enforces cache coherency is not shared with a device whose IOMMU cannot, and
 *    VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU) says so (seeds 002, 004);
 *  - a DMA from an IOVA nobody mapped is stopped (the edu device's buffer keeps its contents).
 *
 * Each test skips when the machine lacks what it needs (under uiommufd's default machine nothing
 * is skipped). No project header: plain uAPI, as t_edu.c.
 */
#include "harness.h"
#include <dirent.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>

#define MAX_DEVS 64

struct pci { char bdf[64]; unsigned vendor, device; int group; char driver[64]; char vfio[32]; char iommu[64]; };
static struct pci devs[MAX_DEVS];
static int ndevs;

static void copy_name(char *to, size_t size, const char *from) {
    size_t n = strlen(from);
    if (n >= size) n = size - 1;
    memcpy(to, from, n);
    to[n] = 0;
}

static int read_text(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = 0;
    while (n > 0 && buf[n - 1] == '\n') buf[--n] = 0;
    return 0;
}

/* Every PCI function with an IOMMU group, its driver and its vfio cdev name. */
static void scan(void) {
    ndevs = 0;
    DIR *d = opendir("/sys/bus/pci/devices");
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) && ndevs < MAX_DEVS) {
        if (e->d_name[0] == '.' || strlen(e->d_name) >= sizeof devs[0].bdf) continue;
        struct pci *p = &devs[ndevs];
        memset(p, 0, sizeof *p);
        copy_name(p->bdf, sizeof p->bdf, e->d_name);
        char path[512], text[256];
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vendor", p->bdf);
        if (read_text(path, text, sizeof text)) continue;
        p->vendor = (unsigned)strtoul(text, NULL, 16);
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/device", p->bdf);
        if (read_text(path, text, sizeof text)) continue;
        p->device = (unsigned)strtoul(text, NULL, 16);
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", p->bdf);
        ssize_t n = readlink(path, text, sizeof text - 1);
        if (n < 0) continue;
        text[n] = 0;
        p->group = atoi(strrchr(text, '/') ? strrchr(text, '/') + 1 : text);
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/driver", p->bdf);
        n = readlink(path, text, sizeof text - 1);
        if (n > 0) {
            text[n] = 0;
            copy_name(p->driver, sizeof p->driver, strrchr(text, '/') ? strrchr(text, '/') + 1 : text);
        }
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu", p->bdf);
        n = readlink(path, text, sizeof text - 1);
        if (n > 0) {
            text[n] = 0;
            copy_name(p->iommu, sizeof p->iommu, strrchr(text, '/') ? strrchr(text, '/') + 1 : text);
        }
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vfio-dev", p->bdf);
        DIR *v = opendir(path);
        if (v) {
            struct dirent *ve;
            while ((ve = readdir(v)))
                if (strncmp(ve->d_name, "vfio", 4) == 0 && strlen(ve->d_name) < sizeof p->vfio)
                    copy_name(p->vfio, sizeof p->vfio, ve->d_name);
            closedir(v);
        }
        ndevs++;
    }
    closedir(d);
}

static struct pci *find(unsigned vendor, unsigned device) {
    for (int i = 0; i < ndevs; i++)
        if (devs[i].vendor == vendor && devs[i].device == device && devs[i].vfio[0]) return &devs[i];
    return NULL;
}

/* No member of the group is driven by a host driver. */
static int group_viable(int group) {
    for (int i = 0; i < ndevs; i++)
        if (devs[i].group == group && devs[i].driver[0] && strcmp(devs[i].driver, "vfio-pci") != 0) return 0;
    return 1;
}

static int open_cdev(const struct pci *p) {
    char path[128];
    snprintf(path, sizeof path, "/dev/vfio/devices/%s", p->vfio);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) FATAL("open %s: %s", path, cf_errname(errno));
    return fd;
}

static int bind_dev(int dev, int iommufd) {
    struct cf_vfio_device_bind_iommufd b = { .argsz = sizeof b, .iommufd = iommufd };
    return ioctl(dev, CF_VFIO_DEVICE_BIND_IOMMUFD, &b);
}

static int attach_dev(int dev, uint32_t pt, uint32_t *hwpt) {
    struct cf_vfio_device_attach_iommufd_pt a = { .argsz = sizeof a, .pt_id = pt };
    int r = ioctl(dev, CF_VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a);
    if (r == 0 && hwpt) *hwpt = a.pt_id;
    return r;
}

struct range { uint64_t start, last; char type[32]; };

/* The group's reserved regions from sysfs. */
static int reserved_regions(int group, struct range *out, int max) {
    char path[128], text[4096];
    snprintf(path, sizeof path, "/sys/kernel/iommu_groups/%d/reserved_regions", group);
    if (read_text(path, text, sizeof text)) return -1;
    int n = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && n < max; line = strtok_r(NULL, "\n", &save)) {
        unsigned long long a, b;
        char type[32];
        if (sscanf(line, "%llx %llx %31s", &a, &b, type) == 3) {
            out[n].start = a; out[n].last = b;
            copy_name(out[n].type, sizeof out[n].type, type);
            n++;
        }
    }
    return n;
}

static int has_region(const struct range *r, int n, uint64_t start) {
    for (int i = 0; i < n; i++) if (r[i].start == start) return 1;
    return 0;
}

/* ---- device-file rules on the edu device ------------------------------------------------------ */

TEST(device_file_rules) {
    scan();
    struct pci *edu = find(0x1234, 0x11e8);
    if (!edu) SKIP("no edu device bound to vfio-pci");
    int dev = open_cdev(edu);
    int iommufd = cf_open();
    /* Before BIND: everything else is EINVAL. */
    struct cf_vfio_device_info info = { .argsz = sizeof info };
    EXPECT_ERRNO(EINVAL, ioctl(dev, CF_VFIO_DEVICE_GET_INFO, &info));
    char byte;
    EXPECT_ERRNO(EINVAL, pread(dev, &byte, 1, 7ll << 40));
    /* BIND's own checks. */
    struct cf_vfio_device_bind_iommufd b = { .argsz = sizeof b - 1, .iommufd = iommufd };
    EXPECT_ERRNO(EINVAL, ioctl(dev, CF_VFIO_DEVICE_BIND_IOMMUFD, &b));
    b.argsz = sizeof b;
    b.flags = 1u << 31;
    EXPECT_ERRNO(EINVAL, ioctl(dev, CF_VFIO_DEVICE_BIND_IOMMUFD, &b));
    b.flags = 0;
    b.iommufd = -1;
    EXPECT_ERRNO(EINVAL, ioctl(dev, CF_VFIO_DEVICE_BIND_IOMMUFD, &b));
    EXPECT_ERRNO(EFAULT, ioctl(dev, CF_VFIO_DEVICE_BIND_IOMMUFD, NULL));
    int closed = fcntl(iommufd, F_DUPFD_CLOEXEC, 700);   /* a number that stays free */
    close(closed);
    EXPECT_ERRNO(EBADF, bind_dev(dev, closed));
    int efd = eventfd(0, EFD_CLOEXEC);
    EXPECT_ERRNO(EBADFD, bind_dev(dev, efd));
    ASSERT_OK(bind_dev(dev, iommufd));
    EXPECT_ERRNO(EINVAL, bind_dev(dev, iommufd));
    /* Another open of the same device cannot bind while this one holds it. */
    int again = open_cdev(edu);
    EXPECT_ERRNO(EINVAL, bind_dev(again, iommufd));
    close(again);

    ASSERT_OK(ioctl(dev, CF_VFIO_DEVICE_GET_INFO, &info));
    CHECK(info.flags & CF_VFIO_DEVICE_FLAGS_PCI);
    info.argsz = 15;
    EXPECT_ERRNO(EINVAL, ioctl(dev, CF_VFIO_DEVICE_GET_INFO, &info));
    struct cf_vfio_region_info r = { .argsz = sizeof r, .index = CF_VFIO_PCI_CONFIG_REGION_INDEX };
    ASSERT_OK(ioctl(dev, CF_VFIO_DEVICE_GET_REGION_INFO, &r));
    CHECK_EQ(r.offset, 7ull << 40);
    CHECK_EQ(r.size, 256);                       /* conventional PCI */
    uint64_t cfg_size = r.size;
    r.index = CF_VFIO_PCI_BAR0_REGION_INDEX + 1;
    ASSERT_OK(ioctl(dev, CF_VFIO_DEVICE_GET_REGION_INFO, &r));
    CHECK_EQ(r.size, 0);                         /* BAR1 is not implemented */
    CHECK_EQ(r.flags, 0);
    CHECK_EQ(r.offset, 1ull << 40);
    r.index = CF_VFIO_PCI_VGA_REGION_INDEX;
    EXPECT_ERRNO(EINVAL, ioctl(dev, CF_VFIO_DEVICE_GET_REGION_INFO, &r));
    r.index = 100;
    EXPECT_ERRNO(EINVAL, ioctl(dev, CF_VFIO_DEVICE_GET_REGION_INFO, &r));
    r.argsz = 31;
    r.index = 0;
    EXPECT_ERRNO(EINVAL, ioctl(dev, CF_VFIO_DEVICE_GET_REGION_INFO, &r));

    struct cf_vfio_irq_info irq = { .argsz = sizeof irq, .index = CF_VFIO_PCI_INTX_IRQ_INDEX };
    ASSERT_OK(ioctl(dev, CF_VFIO_DEVICE_GET_IRQ_INFO, &irq));
    CHECK_EQ(irq.count, 1);
    CHECK_EQ(irq.flags, CF_VFIO_IRQ_INFO_EVENTFD | CF_VFIO_IRQ_INFO_MASKABLE | CF_VFIO_IRQ_INFO_AUTOMASKED);
    irq.index = CF_VFIO_PCI_MSI_IRQ_INDEX;
    ASSERT_OK(ioctl(dev, CF_VFIO_DEVICE_GET_IRQ_INFO, &irq));
    CHECK_EQ(irq.count, 1);
    CHECK_EQ(irq.flags, CF_VFIO_IRQ_INFO_EVENTFD | CF_VFIO_IRQ_INFO_NORESIZE);
    irq.index = CF_VFIO_PCI_MSIX_IRQ_INDEX;
    ASSERT_OK(ioctl(dev, CF_VFIO_DEVICE_GET_IRQ_INFO, &irq));
    CHECK_EQ(irq.count, 0);
    irq.index = CF_VFIO_PCI_ERR_IRQ_INDEX;       /* not PCI Express */
    EXPECT_ERRNO(EINVAL, ioctl(dev, CF_VFIO_DEVICE_GET_IRQ_INFO, &irq));
    irq.index = CF_VFIO_PCI_NUM_IRQS;
    EXPECT_ERRNO(EINVAL, ioctl(dev, CF_VFIO_DEVICE_GET_IRQ_INFO, &irq));

    /* SET_IRQS: more vectors than MSI has, a bad eventfd, two data types. */
    struct { struct cf_vfio_irq_set s; int32_t fd[2]; } set = {
        { .argsz = sizeof set, .flags = CF_VFIO_IRQ_SET_DATA_EVENTFD | CF_VFIO_IRQ_SET_ACTION_TRIGGER,
          .index = CF_VFIO_PCI_MSI_IRQ_INDEX, .start = 0, .count = 2 }, { efd, efd } };
    EXPECT_ERRNO(EINVAL, ioctl(dev, CF_VFIO_DEVICE_SET_IRQS, &set));
    set.s.count = 1;
    set.fd[0] = closed;
    EXPECT_ERRNO(EBADF, ioctl(dev, CF_VFIO_DEVICE_SET_IRQS, &set));
    set.fd[0] = iommufd;
    EXPECT_ERRNO(EINVAL, ioctl(dev, CF_VFIO_DEVICE_SET_IRQS, &set));
    set.s.flags |= CF_VFIO_IRQ_SET_DATA_BOOL;
    set.fd[0] = efd;
    EXPECT_ERRNO(EINVAL, ioctl(dev, CF_VFIO_DEVICE_SET_IRQS, &set));

    /* Config space ends where the region says. */
    char buf[8];
    EXPECT_ERRNO(EFAULT, pread(dev, buf, 8, (off_t)((7ull << 40) + cfg_size - 4)));
    CHECK_EQ(pread(dev, buf, 4, (off_t)((7ull << 40) + cfg_size - 4)), 4);
    /* mmap: only shared, only inside a BAR, never config space. */
    errno = 0;
    CHECK(mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, dev, 0) == MAP_FAILED && errno == EINVAL);
    errno = 0;
    CHECK(mmap(NULL, 2 << 20, PROT_READ, MAP_SHARED, dev, 0) == MAP_FAILED && errno == EINVAL);
    errno = 0;
    CHECK(mmap(NULL, 4096, PROT_READ, MAP_SHARED, dev, 7ll << 40) == MAP_FAILED && errno == EINVAL);
    /* edu sits on a root bus: no slot or bus reset to offer. */
    struct { uint32_t argsz, flags, count; } hri = { 12, 0, 0 };
    EXPECT_ERRNO(ENODEV, ioctl(dev, CF_IO(100 + 12), &hri));
    /* DETACH without ATTACH is fine; ATTACH to nothing is ENOENT. */
    struct cf_vfio_device_detach_iommufd_pt d = { .argsz = sizeof d };
    EXPECT_OK(ioctl(dev, CF_VFIO_DEVICE_DETACH_IOMMUFD_PT, &d));
    EXPECT_ERRNO(ENOENT, attach_dev(dev, 9999, NULL));
    close(efd);
    close(dev);
    /* Closing the device file unbound it: a new open binds again. */
    dev = open_cdev(edu);
    EXPECT_OK(bind_dev(dev, iommufd));
    close(dev);
    close(iommufd);
}

/* ---- seed 000: a group is all or nothing -------------------------------------------------------- */

TEST(group_with_host_driver_is_not_viable) {
    scan();
    struct pci *member = NULL;
    for (int i = 0; i < ndevs && !member; i++) {
        if (!devs[i].vfio[0]) continue;
        for (int j = 0; j < ndevs; j++)
            if (j != i && devs[j].group == devs[i].group && devs[j].driver[0] && strcmp(devs[j].driver, "vfio-pci") != 0)
                member = &devs[i];
    }
    if (!member) SKIP("no group with a vfio-pci member and a host-driven member");
    char path[64];
    snprintf(path, sizeof path, "/dev/vfio/%d", member->group);
    int g = open(path, O_RDWR | O_CLOEXEC);
    if (g < 0) FATAL("open %s: %s", path, cf_errname(errno));
    struct cf_vfio_group_status st = { .argsz = sizeof st };
    ASSERT_OK(ioctl(g, CF_VFIO_GROUP_GET_STATUS, &st));
    CHECK_EQ(st.flags & CF_VFIO_GROUP_FLAGS_VIABLE, 0);
    /* The group file is open: its device cannot be bound through the cdev (EBUSY). */
    int iommufd = cf_open();
    int dev = open_cdev(member);
    EXPECT_ERRNO(EBUSY, bind_dev(dev, iommufd));
    close(g);
    /* And with the group file closed, the claim itself fails: EPERM. */
    EXPECT_ERRNO(EPERM, bind_dev(dev, iommufd));
    close(dev);
    close(iommufd);
}

/* ---- seed 003: reserved regions ------------------------------------------------------------------ */

TEST(iova_ranges_are_the_holes_complement) {
    scan();
    struct pci *p = find(0x1234, 0x11e8);
    for (int i = 0; !p && i < ndevs; i++) if (devs[i].vfio[0] && group_viable(devs[i].group)) p = &devs[i];
    if (!p) SKIP("no vfio-pci device");
    struct range holes[16];
    int nh = reserved_regions(p->group, holes, 16);
    if (nh < 0) SKIP("no reserved_regions for group %d", p->group);
    int iommufd = cf_open(), dev = open_cdev(p);
    ASSERT_OK(bind_dev(dev, iommufd));
    uint32_t ioas = cf_ioas(iommufd);
    ASSERT_OK(attach_dev(dev, ioas, NULL));
    struct cf_iova_range ranges[32];
    struct cf_ioas_iova_ranges q = { .size = sizeof q, .ioas_id = ioas, .num_iovas = 32, .allowed_iovas = (uintptr_t)ranges };
    ASSERT_OK(ioctl(iommufd, CF_IOMMU_IOAS_IOVA_RANGES, &q));
    CHECK(q.num_iovas >= 1 && q.num_iovas <= 32);
    for (int h = 0; h < nh; h++) {
        for (uint32_t i = 0; i < q.num_iovas; i++)
            if (!(ranges[i].last < holes[h].start || ranges[i].start > holes[h].last))
                FAIL("a usable range overlaps the %s region %llx-%llx", holes[h].type,
                     (unsigned long long)holes[h].start, (unsigned long long)holes[h].last);
    }
    /* What is not usable is a hole: every gap between usable ranges is a reserved region's. */
    for (uint32_t i = 1; i < q.num_iovas; i++) {
        CHECK(ranges[i].start > ranges[i - 1].last + 1);   /* sorted and disjoint, with a hole between */
        int hole_between = 0;
        for (int h = 0; h < nh; h++)
            if (holes[h].start > ranges[i - 1].last && holes[h].last < ranges[i].start) hole_between = 1;
        CHECK(hole_between);
    }
    close(dev);
    close(iommufd);
}

TEST(hot_add_onto_a_mapped_reserved_range_fails_cleanly) {
    scan();
    /* A: attached first. B: in another group, with a reserved region A's group lacks. */
    struct pci *a = NULL, *b = NULL;
    struct range rb[16], ra[16], hit = { 0 };
    for (int i = 0; i < ndevs && !b; i++) {
        if (!devs[i].vfio[0] || !group_viable(devs[i].group)) continue;
        int nb = reserved_regions(devs[i].group, rb, 16);
        for (int j = 0; j < ndevs && !b; j++) {
            if (!devs[j].vfio[0] || devs[j].group == devs[i].group || !group_viable(devs[j].group)) continue;
            int na = reserved_regions(devs[j].group, ra, 16);
            for (int k = 0; k < nb; k++)
                if (strcmp(rb[k].type, "msi") != 0 && !has_region(ra, na, rb[k].start) && rb[k].last - rb[k].start < (64u << 20)) {
                    a = &devs[j]; b = &devs[i]; hit = rb[k];
                    break;
                }
        }
    }
    if (!b) SKIP("no two vfio-pci groups whose reserved regions differ");
    int iommufd = cf_open(), da = open_cdev(a), db = open_cdev(b);
    ASSERT_OK(bind_dev(da, iommufd));
    ASSERT_OK(bind_dev(db, iommufd));
    uint32_t ioas = cf_ioas(iommufd);
    ASSERT_OK(attach_dev(da, ioas, NULL));
    uint64_t len = 0x10000;
    void *buf = cf_buffer(len);
    ASSERT_OK(cf_map_fixed(iommufd, ioas, buf, len, hit.start));
    struct cf_iova_range before[32], after[32];
    struct cf_ioas_iova_ranges q = { .size = sizeof q, .ioas_id = ioas, .num_iovas = 32, .allowed_iovas = (uintptr_t)before };
    ASSERT_OK(ioctl(iommufd, CF_IOMMU_IOAS_IOVA_RANGES, &q));
    uint32_t n_before = q.num_iovas;
    EXPECT_ERRNO(EADDRINUSE, attach_dev(db, ioas, NULL));
    q.num_iovas = 32;
    q.allowed_iovas = (uintptr_t)after;
    ASSERT_OK(ioctl(iommufd, CF_IOMMU_IOAS_IOVA_RANGES, &q));
    CHECK_EQ(q.num_iovas, n_before);
    CHECK(memcmp(before, after, n_before * sizeof before[0]) == 0);
    uint64_t unmapped = 0;
    EXPECT_OK(cf_unmap(iommufd, ioas, hit.start, len, &unmapped));   /* the mapping was intact */
    CHECK_EQ(unmapped, len);
    EXPECT_OK(attach_dev(db, ioas, NULL));
    /* Now the range is reserved: mapping it is refused (EINVAL, as for any reserved IOVA). */
    EXPECT_ERRNO(EINVAL, cf_map_fixed(iommufd, ioas, buf, len, hit.start));
    close(db);
    close(da);
    close(iommufd);
}

/* ---- seeds 002 and 004: one iommufd for several groups; cache coherency -------------------------- */

TEST(one_iommufd_for_two_groups_shares_the_domain) {
    scan();
    struct pci *a = NULL, *b = NULL;
    for (int i = 0; i < ndevs && !b; i++)
        for (int j = i + 1; j < ndevs && !b; j++)
            if (devs[i].vfio[0] && devs[j].vfio[0] && devs[i].group != devs[j].group && devs[i].iommu[0]
                && strcmp(devs[i].iommu, devs[j].iommu) == 0 && group_viable(devs[i].group)
                && group_viable(devs[j].group)) { a = &devs[i]; b = &devs[j]; }
    if (!b) SKIP("no two vfio-pci devices in different groups behind one IOMMU");
    int iommufd = cf_open(), d1 = open_cdev(a), d2 = open_cdev(b);
    ASSERT_OK(bind_dev(d1, iommufd));
    ASSERT_OK(bind_dev(d2, iommufd));
    uint32_t ioas = cf_ioas(iommufd), h1 = 0, h2 = 0;
    ASSERT_OK(attach_dev(d1, ioas, &h1));
    ASSERT_OK(attach_dev(d2, ioas, &h2));
    CHECK_EQ(h1, h2);
    /* The shared domain is the IOAS's: a mapping made now reaches both (IOMMU_IOAS_MAP works
     * with two devices attached), and destroying the IOAS is refused while they use it. */
    void *buf = cf_buffer(8192);
    EXPECT_OK(cf_map_fixed(iommufd, ioas, buf, 8192, 0x400000));
    EXPECT_ERRNO(EBUSY, cf_destroy(iommufd, ioas));
    close(d2); close(d1); close(iommufd);
}

/* VFIO_DMA_CC_IOMMU of a container holding only `p`'s group (-1 if it cannot be set up). */
static int dma_cc_alone(const struct pci *p) {
    int c = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
    if (c < 0) return -1;
    char path[64];
    snprintf(path, sizeof path, "/dev/vfio/%d", p->group);
    int g = open(path, O_RDWR | O_CLOEXEC);
    int cc = -1;
    if (g >= 0 && ioctl(g, CF_VFIO_GROUP_SET_CONTAINER, &c) == 0 && ioctl(c, CF_VFIO_SET_IOMMU, CF_VFIO_TYPE1v2_IOMMU) == 0) {
        int dev = ioctl(g, CF_VFIO_GROUP_GET_DEVICE_FD, p->bdf);
        if (dev >= 0) {
            cc = ioctl(c, CF_VFIO_CHECK_EXTENSION, CF_VFIO_DMA_CC_IOMMU);
            close(dev);
        }
    }
    if (g >= 0) close(g);
    close(c);
    return cc;
}

TEST(coherent_domain_not_shared_with_a_non_snooping_iommu) {
    scan();
    struct pci *coherent = NULL, *plain = NULL;
    for (int i = 0; i < ndevs; i++) {
        if (!devs[i].vfio[0] || !group_viable(devs[i].group)) continue;
        int cc = dma_cc_alone(&devs[i]);
        if (cc == 1 && !coherent) coherent = &devs[i];
        if (cc == 0 && !plain) plain = &devs[i];
    }
    if (!coherent || !plain) SKIP("needs devices behind IOMMUs that can and cannot enforce cache coherency");
    int iommufd = cf_open(), d1 = open_cdev(coherent), d3 = open_cdev(plain);
    ASSERT_OK(bind_dev(d1, iommufd));
    ASSERT_OK(bind_dev(d3, iommufd));
    uint32_t ioas = cf_ioas(iommufd), h1 = 0, h3 = 0;
    ASSERT_OK(attach_dev(d1, ioas, &h1));
    ASSERT_OK(attach_dev(d3, ioas, &h3));
    CHECK(h3 != h1);                              /* the enforcing domain is not shared */
    close(d3); close(d1); close(iommufd);

    /* The same in a legacy container: DMA_CC goes from 1 to 0 when the second group joins. */
    int c = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
    ASSERT_OK(c);
    char path[64];
    snprintf(path, sizeof path, "/dev/vfio/%d", coherent->group);
    int g1 = open(path, O_RDWR | O_CLOEXEC);
    snprintf(path, sizeof path, "/dev/vfio/%d", plain->group);
    int g2 = open(path, O_RDWR | O_CLOEXEC);
    ASSERT_OK(g1);
    ASSERT_OK(g2);
    ASSERT_OK(ioctl(g1, CF_VFIO_GROUP_SET_CONTAINER, &c));
    ASSERT_OK(ioctl(g2, CF_VFIO_GROUP_SET_CONTAINER, &c));
    ASSERT_OK(ioctl(c, CF_VFIO_SET_IOMMU, CF_VFIO_TYPE1v2_IOMMU));
    int e1 = ioctl(g1, CF_VFIO_GROUP_GET_DEVICE_FD, coherent->bdf);
    ASSERT_OK(e1);
    CHECK_EQ(ioctl(c, CF_VFIO_CHECK_EXTENSION, CF_VFIO_DMA_CC_IOMMU), 1);
    int e2 = ioctl(g2, CF_VFIO_GROUP_GET_DEVICE_FD, plain->bdf);
    ASSERT_OK(e2);
    CHECK_EQ(ioctl(c, CF_VFIO_CHECK_EXTENSION, CF_VFIO_DMA_CC_IOMMU), 0);
    close(e2); close(e1); close(g2); close(g1); close(c);
}

/* ---- a DMA from an unmapped IOVA is stopped ------------------------------------------------------ */

static uint32_t rd32(volatile uint8_t *bar, size_t off) { return *(volatile uint32_t *)(bar + off); }
static void wr64(volatile uint8_t *bar, size_t off, uint64_t v) { *(volatile uint64_t *)(bar + off) = v; }

static void edu_dma(volatile uint8_t *bar, uint64_t src, uint64_t dst, uint64_t count, uint64_t cmd) {
    wr64(bar, 0x80, src);
    wr64(bar, 0x88, dst);
    wr64(bar, 0x90, count);
    wr64(bar, 0x98, cmd | 1);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (rd32(bar, 0x98) & 1) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 10) FATAL("DMA did not complete");
        usleep(1000);
    }
}

TEST(dma_from_an_unmapped_iova_is_stopped) {
    scan();
    struct pci *edu = find(0x1234, 0x11e8);
    if (!edu) SKIP("no edu device bound to vfio-pci");
    int iommufd = cf_open(), dev = open_cdev(edu);
    ASSERT_OK(bind_dev(dev, iommufd));
    uint32_t ioas = cf_ioas(iommufd);
    uint8_t *src = cf_buffer(4096), *dst = cf_buffer(4096), *gone = cf_buffer(4096);
    ASSERT_OK(cf_map_fixed(iommufd, ioas, src, 4096, 0x100000));
    ASSERT_OK(cf_map_fixed(iommufd, ioas, dst, 4096, 0x200000));
    ASSERT_OK(cf_map_fixed(iommufd, ioas, gone, 4096, 0x300000));
    ASSERT_OK(attach_dev(dev, ioas, NULL));
    uint16_t cmd = CF_PCI_COMMAND_MEMORY | CF_PCI_COMMAND_MASTER;
    ASSERT_OK(pwrite(dev, &cmd, 2, (off_t)((7ull << 40) + CF_PCI_COMMAND)));
    volatile uint8_t *bar = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, dev, 0);
    if (bar == MAP_FAILED) FATAL("mmap BAR0: %s", cf_errname(errno));
    for (int i = 0; i < 64; i++) { src[i] = (uint8_t)(0x30 + i); gone[i] = (uint8_t)(0xa0 ^ i); }
    /* While mapped, 0x300000 reaches `gone` (and the IOMMU caches the translation). */
    edu_dma(bar, 0x300000, 0x40000, 64, 0);
    edu_dma(bar, 0x40000, 0x200000, 64, 2);
    CHECK(memcmp(dst, gone, 64) == 0);
    /* The device buffer gets `src`; then 0x300000 is unmapped and read again. */
    edu_dma(bar, 0x100000, 0x40000, 64, 0);
    uint64_t unmapped = 0;
    ASSERT_OK(cf_unmap(iommufd, ioas, 0x300000, 4096, &unmapped));
    edu_dma(bar, 0x300000, 0x40000, 64, 0);
    memset(dst, 0, 64);
    edu_dma(bar, 0x40000, 0x200000, 64, 2);
    CHECK(memcmp(dst, gone, 64) != 0);                /* nothing of `gone` reached the device */
    if (cf_emulated(iommufd)) {
        /* uiommufd's edu keeps its buffer and reports the failed read as a Received Master
         * Abort (QEMU's fills the buffer with what the failed read returned). */
        CHECK(memcmp(dst, src, 64) == 0);
        uint16_t status = 0;
        CHECK_EQ(pread(dev, &status, 2, (off_t)((7ull << 40) + CF_PCI_STATUS)), 2);
        CHECK(status & CF_PCI_STATUS_REC_MASTER_ABORT);
    }
    munmap((void *)bar, 1 << 20);
    close(dev);
    close(iommufd);
}

int main(int argc, char **argv) { return cf_main(argc, argv); }
