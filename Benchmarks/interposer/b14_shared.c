/*
 * B14: one ioctl round trip in server mode (`uiommufd run --shared`) against a plain UNIX-socket
 * round trip measured in the same program. Run as
 *   uiommufd run --shared -- ./b14_shared REPS N
 * It opens /dev/iommu (a connection to the server), then for each repetition times N
 * IOMMU_OPTION gets (request + inline struct to the server, reply, result written back into our
 * memory by the server) and N round trips of the same message sizes over a SOCK_SEQPACKET
 * socketpair to a forked echo process (the least any out-of-process design pays), alternating
 * the order, and prints "rep R shared NS socket NS" (ns per round trip).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct iommu_option { uint32_t size, option_id; uint16_t op, reserved; uint32_t object_id; uint64_t val64; };

static uint64_t now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The wire's sizes: a 32-byte request header + the struct; a 32-byte reply header. */
#define REQUEST_BYTES (32 + sizeof(struct iommu_option))
#define REPLY_BYTES 32

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 11;
    long n = argc > 2 ? atol(argv[2]) : 20000;
    int fd = open("/dev/iommu", O_RDWR);
    if (fd < 0) { perror("open /dev/iommu (run under uiommufd run --shared)"); return 2; }
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, pair) != 0) { perror("socketpair"); return 2; }
    pid_t echo = fork();
    if (echo == 0) {
        char buffer[4096];
        close(pair[0]);
        while (recv(pair[1], buffer, sizeof buffer, 0) > 0)
            if (send(pair[1], buffer, REPLY_BYTES, 0) != REPLY_BYTES) break;
        _exit(0);
    }
    close(pair[1]);
    struct iommu_option opt = { sizeof opt, 0 /* RLIMIT_MODE */, 1 /* GET */, 0, 0, 0 };
    char message[REQUEST_BYTES], reply[4096];
    memset(message, 1, sizeof message);
    if (ioctl(fd, 0x3b87, &opt) != 0) { perror("IOMMU_OPTION"); return 3; }
    for (int rep = -1; rep < reps; rep++) {   /* rep -1 is a warm-up */
        double t[2];
        for (int k = 0; k < 2; k++) {
            int which = (k + (rep & 1)) % 2;
            uint64_t t0 = now();
            long bad = 0;
            if (which == 0) {
                for (long i = 0; i < n; i++) bad += ioctl(fd, 0x3b87, &opt) != 0;
            } else {
                for (long i = 0; i < n; i++) {
                    bad += send(pair[0], message, sizeof message, 0) != (ssize_t)sizeof message;
                    bad += recv(pair[0], reply, sizeof reply, 0) != REPLY_BYTES;
                }
            }
            t[which] = (double)(now() - t0) / (double)n;
            if (bad) { fprintf(stderr, "%ld round trips failed\n", bad); return 4; }
        }
        if (rep >= 0) printf("rep %d shared %.1f socket %.1f\n", rep, t[0], t[1]);
    }
    close(pair[0]);
    waitpid(echo, NULL, 0);
    close(fd);
    return 0;
}
