/*
 * A small program for tests/interposer/run.sh to run under `uiommufd run`:
 *   p_probe leak       open /dev/iommu, allocate an IOAS, map a buffer, exit without closing
 *   p_probe clean      the same, closing the fd first
 *   p_probe testcmd    print the errno of IOMMU_TEST_CMD with op 0 ("ok" if it succeeds)
 *   p_probe open       print "fd N" or the errno of open("/dev/iommu")
 *   p_probe noop       touch nothing
 *   p_probe exit N     exit with status N
 *   p_probe abort      abort()
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static int setup(void) {
    int fd = open("/dev/iommu", O_RDWR);
    if (fd < 0) { printf("open: %s\n", strerror(errno)); exit(2); }
    uint32_t alloc[3] = { 12, 0, 0 };
    if (ioctl(fd, 0x3b81, alloc)) { printf("IOAS_ALLOC: %s\n", strerror(errno)); exit(2); }
    void *buf = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t map[5] = { 40 | (7ull << 32) /* size, flags FIXED|W|R */, alloc[2] /* ioas_id, reserved */,
                        (uintptr_t)buf, 1 << 16, 1 << 20 };
    if (ioctl(fd, 0x3b85, map)) { printf("IOAS_MAP: %s\n", strerror(errno)); exit(2); }
    return fd;
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "noop";
    if (!strcmp(what, "leak")) { setup(); return 0; }
    if (!strcmp(what, "clean")) { close(setup()); return 0; }
    if (!strcmp(what, "testcmd")) {
        int fd = open("/dev/iommu", O_RDWR);
        unsigned char cmd[72] = { 72 };
        if (ioctl(fd, 0x3ba0, cmd) == 0) printf("ok\n");
        else printf("%s\n", errno == ENOTTY ? "ENOTTY" : errno == EOPNOTSUPP ? "EOPNOTSUPP" : strerror(errno));
        return 0;
    }
    if (!strcmp(what, "open")) {
        int fd = open("/dev/iommu", O_RDWR);
        if (fd < 0) printf("%s\n", errno == ENODEV ? "ENODEV" : strerror(errno)); else printf("fd %d\n", fd);
        return 0;
    }
    if (!strcmp(what, "exit")) return argc > 2 ? atoi(argv[2]) : 0;
    if (!strcmp(what, "abort")) abort();
    return 0;
}
