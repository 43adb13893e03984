/*
 * B7 through the interposer: a plain C program, run with
 *   LD_PRELOAD=.../libuiommufd-preload.so ./b7_ioctl REPS N
 * It opens /dev/iommu (which only the interposer serves), allocates an IOAS, then for each of
 * REPS repetitions times N ioctls of IOMMU_OPTION (get RLIMIT_MODE), N of IOMMU_IOAS_IOVA_RANGES
 * and N real ioctls on /dev/null (ENOTTY), alternating the order, and prints one line per
 * repetition: "rep R option NS ranges NS null NS" (ns per ioctl). No project headers: the
 * structs are written from the documented uAPI, as a VMM would. uiommufd-bench --preload LIB
 * compiles and runs it and reports the medians of the per-repetition ratios.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

struct iommu_ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct iommu_option { uint32_t size, option_id; uint16_t op, reserved; uint32_t object_id; uint64_t val64; };
struct iommu_iova_range { uint64_t start, last; };
struct iommu_ioas_iova_ranges {
    uint32_t size, ioas_id, num_iovas, reserved;
    uint64_t allowed_iovas, out_iova_alignment;
};

static uint64_t now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 11;
    long n = argc > 2 ? atol(argv[2]) : 100000;
    int fd = open("/dev/iommu", O_RDWR);
    if (fd < 0) { perror("open /dev/iommu (is the interposer preloaded?)"); return 2; }
    int nul = open("/dev/null", O_RDWR);
    if (nul < 0) { perror("open /dev/null"); return 2; }
    struct iommu_ioas_alloc alloc = { sizeof alloc, 0, 0 };
    if (ioctl(fd, 0x3b81, &alloc) != 0) { perror("IOMMU_IOAS_ALLOC"); return 3; }
    struct iommu_option opt = { sizeof opt, 0 /* RLIMIT_MODE */, 1 /* GET */, 0, 0, 0 };
    struct iommu_iova_range ranges[16];
    struct iommu_ioas_iova_ranges r = { sizeof r, alloc.out_ioas_id, 16, 0, (uint64_t)(uintptr_t)ranges, 0 };
    if (ioctl(fd, 0x3b87, &opt) != 0) { perror("IOMMU_OPTION"); return 3; }
    if (ioctl(fd, 0x3b84, &r) != 0) { perror("IOMMU_IOAS_IOVA_RANGES"); return 3; }
    for (int rep = -1; rep < reps; rep++) {   /* rep -1 is a warm-up */
        double t[3];
        for (int k = 0; k < 3; k++) {
            int which = (k + (rep & 1)) % 3;
            uint64_t t0 = now();
            long bad = 0;
            if (which == 0) {
                for (long i = 0; i < n; i++) bad += ioctl(fd, 0x3b87, &opt) != 0;
            } else if (which == 1) {
                for (long i = 0; i < n; i++) { r.num_iovas = 16; bad += ioctl(fd, 0x3b84, &r) != 0; }
            } else {
                for (long i = 0; i < n; i++) (void)ioctl(nul, 0x7a3bUL, 0);
            }
            t[which] = (double)(now() - t0) / (double)n;
            if (bad) { fprintf(stderr, "%ld ioctls failed\n", bad); return 4; }
        }
        if (rep >= 0) printf("rep %d option %.2f ranges %.2f null %.2f\n", rep, t[0], t[1], t[2]);
    }
    close(fd);
    return 0;
}
