/*
 * QEMU's edu device (docs/specs/edu.rst in QEMU) driven from user space through VFIO, as a VMM
 * or a user-space driver does it, with nothing but the public uAPI:
 *
 *   1. find the device by its PCI IDs (1234:11e8) in /sys/bus/pci/devices/<BDF>/{vendor,device};
 *   2. cdev mode: its /dev/vfio/devices/vfioN through /sys/bus/pci/devices/<BDF>/vfio-dev/
 *      (the node's numbers checked against vfio-dev/vfioN/dev), VFIO_DEVICE_BIND_IOMMUFD to a
 *      /dev/iommu, IOMMU_IOAS_ALLOC + MAP, VFIO_DEVICE_ATTACH_IOMMUFD_PT;
 *      legacy mode: its group through the iommu_group link, /dev/vfio/vfio as the container,
 *      VFIO_GROUP_SET_CONTAINER, VFIO_SET_IOMMU(TYPE1v2), VFIO_IOMMU_MAP_DMA,
 *      VFIO_GROUP_GET_DEVICE_FD;
 *   3. then the same device work: region info, config space (bus mastering on), BAR0 mmapped,
 *      identification / liveness / factorial, DMA both directions with the completion interrupt
 *      on an eventfd (VFIO_DEVICE_SET_IRQS, MSI), the data checked; the registers once more
 *      through pread/pwrite of the BAR0 region.
 *
 * `t_edu` runs both modes, `t_edu --cdev` and `t_edu --legacy` one. Without an edu device bound
 * to vfio-pci the tests are skipped. On a real kernel, bind it first, e.g.
 *   echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override; echo $BDF > /sys/bus/pci/drivers_probe
 * QEMU's edu clamps DMA addresses to 28 bits, so the IOVAs used here are below 256 MiB; it runs a
 * DMA 100 ms (virtual time) after the command, so completion is waited for, never assumed.
 */
#include "harness.h"
#include <dirent.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>

#define EDU_VENDOR 0x1234
#define EDU_DEVICE 0x11e8
#define EDU_IDENT 0x010000edu
#define EDU_LIVENESS 0x04
#define EDU_FACTORIAL 0x08
#define EDU_STATUS 0x20
#define EDU_IRQ_STATUS 0x24
#define EDU_IRQ_ACK 0x64
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_COUNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_DMA_BUFFER 0x40000
#define EDU_DMA_IRQ 0x100
#define EDU_CMD_START 0x1
#define EDU_CMD_TO_RAM 0x2
#define EDU_CMD_IRQ 0x4

#define SRC_IOVA 0x100000ull
#define DST_IOVA 0x200000ull
#define LEN 4096
#define XFER 1024

/* ---- sysfs ------------------------------------------------------------------------------------- */

static int read_text(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = 0;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = 0;
    return 0;
}

static unsigned long read_hex(const char *dir, const char *name) {
    char path[1024], text[64];
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/%s", dir, name);
    if (read_text(path, text, sizeof text)) return ~0ul;
    return strtoul(text, NULL, 16);
}

/* The BDF of an edu device, preferring one bound to vfio-pci; 0 if there is none. */
static int find_edu(char *bdf, size_t size) {
    DIR *d = opendir("/sys/bus/pci/devices");
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while (found < 2 && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (read_hex(e->d_name, "vendor") == EDU_VENDOR && read_hex(e->d_name, "device") == EDU_DEVICE) {
            char path[1024], link[256];
            snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/driver", e->d_name);
            ssize_t n = readlink(path, link, sizeof link - 1);
            int vfio = n > 0 && (link[n] = 0, strstr(link, "vfio-pci") != NULL);
            if (!found || vfio) {
                snprintf(bdf, size, "%s", e->d_name);
                found = vfio ? 2 : 1;
            }
        }
    }
    closedir(d);
    return found;
}

/* /dev/vfio/devices/vfioN of `bdf` (via vfio-dev/), checked against vfio-dev/vfioN/dev. */
static int open_cdev(const char *bdf) {
    char path[1024], name[256] = "";
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vfio-dev", bdf);
    DIR *d = opendir(path);
    if (!d) SKIP("%s has no vfio-dev/ (not bound to vfio-pci, or no VFIO cdev support)", bdf);
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, "vfio", 4) == 0) { snprintf(name, sizeof name, "%s", e->d_name); break; }
    closedir(d);
    if (!name[0]) FATAL("nothing in %s", path);
    char numbers[32];
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vfio-dev/%s/dev", bdf, name);
    if (read_text(path, numbers, sizeof numbers)) FATAL("cannot read %s", path);
    unsigned maj = 0, min = 0;
    if (sscanf(numbers, "%u:%u", &maj, &min) != 2) FATAL("%s: '%s'", path, numbers);
    snprintf(path, sizeof path, "/dev/vfio/devices/%s", name);
    struct stat st;
    if (stat(path, &st)) FATAL("stat %s: %s", path, cf_errname(errno));
    CHECK(S_ISCHR(st.st_mode));
    CHECK_EQ(st.st_rdev, makedev(maj, min));
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) FATAL("open %s: %s", path, cf_errname(errno));
    struct stat fst;
    ASSERT_OK(fstat(fd, &fst));
    CHECK(S_ISCHR(fst.st_mode) && fst.st_rdev == st.st_rdev);
    return fd;
}

/* ---- the device ------------------------------------------------------------------------------- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint32_t rd32(volatile uint8_t *bar, size_t off) { return *(volatile uint32_t *)(bar + off); }
static void wr32(volatile uint8_t *bar, size_t off, uint32_t v) { *(volatile uint32_t *)(bar + off) = v; }
static void wr64(volatile uint8_t *bar, size_t off, uint64_t v) { *(volatile uint64_t *)(bar + off) = v; }

static struct cf_vfio_region_info region(int dev, uint32_t index) {
    struct cf_vfio_region_info r = { .argsz = sizeof r, .index = index };
    if (ioctl(dev, CF_VFIO_DEVICE_GET_REGION_INFO, &r)) FATAL("GET_REGION_INFO %u: %s", index, cf_errname(errno));
    return r;
}

/* Waits for the DMA command's start bit to clear and for one interrupt on `efd`. */
static void wait_dma(volatile uint8_t *bar, int efd) {
    double deadline = now() + 10;
    while (rd32(bar, EDU_DMA_CMD) & EDU_CMD_START) {
        if (now() > deadline) FATAL("DMA did not complete");
        usleep(1000);
    }
    struct pollfd p = { .fd = efd, .events = POLLIN };
    int n = poll(&p, 1, 10000);
    if (n != 1) FATAL("no DMA completion interrupt on the eventfd (poll = %d)", n);
    uint64_t count = 0;
    ASSERT_OK(read(efd, &count, sizeof count));
    CHECK(count >= 1);
    CHECK(rd32(bar, EDU_IRQ_STATUS) & EDU_DMA_IRQ);
    wr32(bar, EDU_IRQ_ACK, EDU_DMA_IRQ);
}

/* Everything done with the device once its DMA reaches src (SRC_IOVA) and dst (DST_IOVA). */
static void drive_edu(int dev, uint8_t *src, uint8_t *dst) {
    struct cf_vfio_device_info info = { .argsz = sizeof info };
    ASSERT_OK(ioctl(dev, CF_VFIO_DEVICE_GET_INFO, &info));
    CHECK(info.flags & CF_VFIO_DEVICE_FLAGS_PCI);
    CHECK(info.num_regions >= CF_VFIO_PCI_NUM_REGIONS - 1);
    CHECK(info.num_irqs >= CF_VFIO_PCI_MSI_IRQ_INDEX + 1);

    struct cf_vfio_region_info cfg = region(dev, CF_VFIO_PCI_CONFIG_REGION_INDEX);
    CHECK(cfg.size >= 256);
    CHECK((cfg.flags & (CF_VFIO_REGION_INFO_FLAG_READ | CF_VFIO_REGION_INFO_FLAG_WRITE)) ==
          (CF_VFIO_REGION_INFO_FLAG_READ | CF_VFIO_REGION_INFO_FLAG_WRITE));
    struct cf_vfio_region_info bar0 = region(dev, CF_VFIO_PCI_BAR0_REGION_INDEX);
    CHECK_EQ(bar0.size, 1 << 20);
    CHECK(bar0.flags & CF_VFIO_REGION_INFO_FLAG_MMAP);

    /* Config space: IDs, then memory decode and bus mastering on. */
    uint16_t ids[2];
    CHECK_EQ(pread(dev, ids, 4, (off_t)cfg.offset), 4);
    CHECK_EQ(ids[0], EDU_VENDOR);
    CHECK_EQ(ids[1], EDU_DEVICE);
    uint16_t cmd = 0;
    CHECK_EQ(pread(dev, &cmd, 2, (off_t)cfg.offset + CF_PCI_COMMAND), 2);
    cmd |= CF_PCI_COMMAND_MEMORY | CF_PCI_COMMAND_MASTER;
    CHECK_EQ(pwrite(dev, &cmd, 2, (off_t)cfg.offset + CF_PCI_COMMAND), 2);
    uint16_t back = 0;
    CHECK_EQ(pread(dev, &back, 2, (off_t)cfg.offset + CF_PCI_COMMAND), 2);
    CHECK(back & CF_PCI_COMMAND_MASTER);

    /* MSI (one vector) signals an eventfd. */
    struct cf_vfio_irq_info irq = { .argsz = sizeof irq, .index = CF_VFIO_PCI_MSI_IRQ_INDEX };
    ASSERT_OK(ioctl(dev, CF_VFIO_DEVICE_GET_IRQ_INFO, &irq));
    CHECK(irq.flags & CF_VFIO_IRQ_INFO_EVENTFD);
    CHECK(irq.count >= 1);
    int efd = eventfd(0, EFD_CLOEXEC);
    ASSERT_OK(efd);
    struct { struct cf_vfio_irq_set s; int32_t fd; } set = {
        { .argsz = sizeof set, .flags = CF_VFIO_IRQ_SET_DATA_EVENTFD | CF_VFIO_IRQ_SET_ACTION_TRIGGER,
          .index = CF_VFIO_PCI_MSI_IRQ_INDEX, .start = 0, .count = 1 }, efd };
    ASSERT_OK(ioctl(dev, CF_VFIO_DEVICE_SET_IRQS, &set));

    /* BAR0 as MMIO. */
    volatile uint8_t *bar = mmap(NULL, bar0.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, (off_t)bar0.offset);
    if (bar == MAP_FAILED) FATAL("mmap BAR0: %s", cf_errname(errno));
    CHECK_EQ(rd32(bar, 0), EDU_IDENT);
    wr32(bar, EDU_LIVENESS, 0x12345678);
    CHECK_EQ(rd32(bar, EDU_LIVENESS), ~0x12345678u);
    wr32(bar, EDU_FACTORIAL, 10);
    double deadline = now() + 10;
    while (rd32(bar, EDU_STATUS) & 1) {
        if (now() > deadline) FATAL("factorial did not finish");
        usleep(100);
    }
    CHECK_EQ(rd32(bar, EDU_FACTORIAL), 3628800);

    /* RAM → device buffer, then device buffer → RAM at dst + 100. */
    for (int i = 0; i < XFER; i++) src[i] = (uint8_t)(i * 7 + 3);
    memset(dst, 0, LEN);
    wr64(bar, EDU_DMA_SRC, SRC_IOVA);
    wr64(bar, EDU_DMA_DST, EDU_DMA_BUFFER);
    wr64(bar, EDU_DMA_COUNT, XFER);
    wr64(bar, EDU_DMA_CMD, EDU_CMD_START | EDU_CMD_IRQ);
    wait_dma(bar, efd);
    wr64(bar, EDU_DMA_SRC, EDU_DMA_BUFFER);
    wr64(bar, EDU_DMA_DST, DST_IOVA + 100);
    wr64(bar, EDU_DMA_COUNT, XFER);
    wr64(bar, EDU_DMA_CMD, EDU_CMD_START | EDU_CMD_TO_RAM | EDU_CMD_IRQ);
    wait_dma(bar, efd);
    CHECK(memcmp(dst + 100, src, XFER) == 0);
    CHECK(dst[99] == 0 && dst[100 + XFER] == 0);

    /* The same registers through pread/pwrite of the region. */
    uint32_t v = 0;
    CHECK_EQ(pread(dev, &v, 4, (off_t)bar0.offset), 4);
    CHECK_EQ(v, EDU_IDENT);
    v = 0xa5a5a5a5;
    CHECK_EQ(pwrite(dev, &v, 4, (off_t)bar0.offset + EDU_LIVENESS), 4);
    CHECK_EQ(rd32(bar, EDU_LIVENESS), 0x5a5a5a5au);
    for (int i = 0; i < 64; i++) src[i] = (uint8_t)(0xc0 + i);
    uint64_t q = SRC_IOVA;
    CHECK_EQ(pwrite(dev, &q, 8, (off_t)bar0.offset + EDU_DMA_SRC), 8);
    q = EDU_DMA_BUFFER + 512;
    CHECK_EQ(pwrite(dev, &q, 8, (off_t)bar0.offset + EDU_DMA_DST), 8);
    q = 64;
    CHECK_EQ(pwrite(dev, &q, 8, (off_t)bar0.offset + EDU_DMA_COUNT), 8);
    q = EDU_CMD_START | EDU_CMD_IRQ;
    CHECK_EQ(pwrite(dev, &q, 8, (off_t)bar0.offset + EDU_DMA_CMD), 8);
    wait_dma(bar, efd);
    wr64(bar, EDU_DMA_SRC, EDU_DMA_BUFFER + 512);
    wr64(bar, EDU_DMA_DST, DST_IOVA + 2048);
    wr64(bar, EDU_DMA_CMD, EDU_CMD_START | EDU_CMD_TO_RAM | EDU_CMD_IRQ);
    wait_dma(bar, efd);
    CHECK(memcmp(dst + 2048, src, 64) == 0);

    /* Interrupts off, BAR unmapped, bus mastering off. */
    struct cf_vfio_irq_set off = { .argsz = sizeof off, .flags = CF_VFIO_IRQ_SET_DATA_NONE | CF_VFIO_IRQ_SET_ACTION_TRIGGER,
                                   .index = CF_VFIO_PCI_MSI_IRQ_INDEX, .start = 0, .count = 0 };
    EXPECT_OK(ioctl(dev, CF_VFIO_DEVICE_SET_IRQS, &off));
    EXPECT_OK(munmap((void *)bar, bar0.size));
    cmd &= (uint16_t)~CF_PCI_COMMAND_MASTER;
    CHECK_EQ(pwrite(dev, &cmd, 2, (off_t)cfg.offset + CF_PCI_COMMAND), 2);
    close(efd);
}

static void buffers(uint8_t **src, uint8_t **dst) {
    *src = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    *dst = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (*src == MAP_FAILED || *dst == MAP_FAILED) FATAL("mmap buffers: %s", cf_errname(errno));
    memset(*src, 0, LEN);
    memset(*dst, 0, LEN);
}

TEST(edu_cdev_iommufd) {
    char bdf[256];
    if (!find_edu(bdf, sizeof bdf)) SKIP("no edu device (1234:11e8) in /sys/bus/pci/devices");
    int dev = open_cdev(bdf);
    int iommufd = cf_open();
    struct cf_vfio_device_bind_iommufd bind = { .argsz = sizeof bind, .iommufd = iommufd };
    ASSERT_OK(ioctl(dev, CF_VFIO_DEVICE_BIND_IOMMUFD, &bind));
    CHECK(bind.out_devid != 0);
    uint32_t ioas = cf_ioas(iommufd);
    uint8_t *src, *dst;
    buffers(&src, &dst);
    ASSERT_OK(cf_map_fixed(iommufd, ioas, src, LEN, SRC_IOVA));
    ASSERT_OK(cf_map_fixed(iommufd, ioas, dst, LEN, DST_IOVA));
    struct cf_vfio_device_attach_iommufd_pt attach = { .argsz = sizeof attach, .pt_id = ioas };
    ASSERT_OK(ioctl(dev, CF_VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach));
    CHECK(attach.pt_id != ioas);   /* the automatic HWPT */
    drive_edu(dev, src, dst);
    struct cf_vfio_device_detach_iommufd_pt detach = { .argsz = sizeof detach };
    EXPECT_OK(ioctl(dev, CF_VFIO_DEVICE_DETACH_IOMMUFD_PT, &detach));
    close(dev);
    EXPECT_OK(cf_unmap(iommufd, ioas, 0, UINT64_MAX, NULL));
    EXPECT_OK(cf_destroy(iommufd, ioas));
    close(iommufd);
}

TEST(edu_legacy_container) {
    char bdf[256];
    if (!find_edu(bdf, sizeof bdf)) SKIP("no edu device (1234:11e8) in /sys/bus/pci/devices");
    char path[1024], link[256];
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", bdf);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0) SKIP("%s: %s (no IOMMU)", path, cf_errname(errno));
    link[n] = 0;
    const char *group = strrchr(link, '/') ? strrchr(link, '/') + 1 : link;
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vfio-dev", bdf);
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/driver", bdf);
        n = readlink(path, link, sizeof link - 1);
        if (n < 0 || !strstr(link, "vfio-pci")) SKIP("%s is not bound to vfio-pci", bdf);
    }
    int container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
    if (container < 0) SKIP("/dev/vfio/vfio: %s", cf_errname(errno));
    CHECK_EQ(ioctl(container, CF_VFIO_GET_API_VERSION), CF_VFIO_API_VERSION);
    CHECK_EQ(ioctl(container, CF_VFIO_CHECK_EXTENSION, CF_VFIO_TYPE1v2_IOMMU), 1);
    snprintf(path, sizeof path, "/dev/vfio/%s", group);
    int gfd = open(path, O_RDWR | O_CLOEXEC);
    if (gfd < 0) FATAL("open %s: %s", path, cf_errname(errno));
    struct cf_vfio_group_status status = { .argsz = sizeof status };
    ASSERT_OK(ioctl(gfd, CF_VFIO_GROUP_GET_STATUS, &status));
    CHECK(status.flags & CF_VFIO_GROUP_FLAGS_VIABLE);
    CHECK(!(status.flags & CF_VFIO_GROUP_FLAGS_CONTAINER_SET));
    ASSERT_OK(ioctl(gfd, CF_VFIO_GROUP_SET_CONTAINER, &container));
    ASSERT_OK(ioctl(gfd, CF_VFIO_GROUP_GET_STATUS, &status));
    CHECK(status.flags & CF_VFIO_GROUP_FLAGS_CONTAINER_SET);
    ASSERT_OK(ioctl(container, CF_VFIO_SET_IOMMU, CF_VFIO_TYPE1v2_IOMMU));
    struct cf_vfio_iommu_info info = { .argsz = sizeof info };
    ASSERT_OK(ioctl(container, CF_VFIO_IOMMU_GET_INFO, &info));
    CHECK(info.flags & CF_VFIO_IOMMU_INFO_PGSIZES);
    CHECK(info.iova_pgsizes & 4096);
    uint8_t *src, *dst;
    buffers(&src, &dst);
    struct cf_vfio_dma_map map = { .argsz = sizeof map, .flags = CF_VFIO_DMA_MAP_FLAG_READ | CF_VFIO_DMA_MAP_FLAG_WRITE,
                                   .vaddr = (uintptr_t)src, .iova = SRC_IOVA, .size = LEN };
    ASSERT_OK(ioctl(container, CF_VFIO_IOMMU_MAP_DMA, &map));
    map.vaddr = (uintptr_t)dst;
    map.iova = DST_IOVA;
    ASSERT_OK(ioctl(container, CF_VFIO_IOMMU_MAP_DMA, &map));
    int dev = ioctl(gfd, CF_VFIO_GROUP_GET_DEVICE_FD, bdf);
    if (dev < 0) FATAL("VFIO_GROUP_GET_DEVICE_FD %s: %s", bdf, cf_errname(errno));
    drive_edu(dev, src, dst);
    close(dev);
    struct cf_vfio_dma_unmap unmap = { .argsz = sizeof unmap, .iova = SRC_IOVA, .size = LEN };
    EXPECT_OK(ioctl(container, CF_VFIO_IOMMU_UNMAP_DMA, &unmap));
    CHECK_EQ(unmap.size, LEN);
    unmap.iova = DST_IOVA;
    unmap.size = LEN;
    EXPECT_OK(ioctl(container, CF_VFIO_IOMMU_UNMAP_DMA, &unmap));
    EXPECT_OK(ioctl(gfd, CF_VFIO_GROUP_UNSET_CONTAINER));
    close(gfd);
    close(container);
}

int main(int argc, char **argv) {
    /* --cdev / --legacy select one mode (the harness filters tests by name). */
    char *args[2] = { argv[0], NULL };
    if (argc > 1 && strcmp(argv[1], "--legacy") == 0) args[1] = "legacy";
    else if (argc > 1 && strcmp(argv[1], "--cdev") == 0) args[1] = "cdev";
    else if (argc > 1) args[1] = argv[1];
    return cf_main(args[1] ? 2 : 1, args);
}
