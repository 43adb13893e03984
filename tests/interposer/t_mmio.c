/*
 * BAR mappings under uiommufd: every instruction form the SIGSEGV emulation decodes runs once on
 * ordinary memory and once on a mapped BAR with the same contents and registers; the registers,
 * the flags the instruction defines and the memory must come out the same. The device is the
 * default machine's nvme0 (a generic function: the first half of BAR0 is memory-like), reached
 * through sysfs and its VFIO cdev like any program would.
 *
 * Built with -mno-red-zone (the cases read the flags with pushfq). Run under `uiommufd run`.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../conformance/uapi.h"

static int failures, passes;
#define CHECK(c, ...) do { if (c) passes++; else { failures++; printf("not ok - "); printf(__VA_ARGS__); printf("\n"); } } while (0)

struct regs { uint64_t rax, rcx, r9, flags; };

#define ARITH 0x8d5ull        /* CF PF AF ZF SF OF */
#define LOGIC (0x8c5ull)      /* AF is undefined after AND/OR/XOR/TEST */
#define BTMASK 0x001ull       /* BT* define only CF */

#define CASE(NAME, INSN)                                                                   \
    static void NAME(volatile uint8_t *p, struct regs *s) {                                \
        uint64_t rax = s->rax, rcx = s->rcx, fl;                                           \
        register uint64_t r9 __asm__("r9") = s->r9;                                        \
        __asm__ volatile("stc\n\t" INSN "\n\tpushfq\n\tpop %[fl]"                          \
                         : "+a"(rax), "+c"(rcx), "+r"(r9), [fl] "=&r"(fl)                  \
                         : "D"(p) : "memory", "cc");                                       \
        s->rax = rax; s->rcx = rcx; s->r9 = r9; s->flags = fl;                             \
    }

CASE(mov_load32, "movl 4(%%rdi), %%eax")
CASE(mov_load64, "movq 8(%%rdi), %%rax")
CASE(mov_load16, "movw 2(%%rdi), %%ax")
CASE(mov_load8, "movb 3(%%rdi), %%al")
CASE(mov_load8_high, "movb 3(%%rdi), %%ah")
CASE(mov_load_r9, "movl 24(%%rdi), %%r9d")
CASE(mov_load_sib, "movl 0x20(%%rdi,%%r9,4), %%eax")
CASE(mov_load_disp32, "movq 0x400(%%rdi), %%rax")
CASE(mov_store32, "movl %%ecx, 4(%%rdi)")
CASE(mov_store64, "movq %%rcx, 16(%%rdi)")
CASE(mov_store16, "movw %%cx, 18(%%rdi)")
CASE(mov_store8_high, "movb %%ch, 5(%%rdi)")
CASE(mov_store_r9, "movq %%r9, 32(%%rdi)")
CASE(mov_imm8, "movb $0x5a, 7(%%rdi)")
CASE(mov_imm16, "movw $0x1234, 8(%%rdi)")
CASE(mov_imm32, "movl $0x87654321, 12(%%rdi)")
CASE(mov_imm64_sext, "movq $-5, 16(%%rdi)")
CASE(movzb, "movzbl 1(%%rdi), %%eax")
CASE(movzw, "movzwq 2(%%rdi), %%rax")
CASE(movsb, "movsbl 3(%%rdi), %%eax")
CASE(movsw, "movswq 6(%%rdi), %%rax")
CASE(movslq, "movslq 4(%%rdi), %%rax")
CASE(xchg32, "xchgl %%ecx, 40(%%rdi)")
CASE(xchg8, "xchgb %%cl, 41(%%rdi)")
CASE(test_imm32, "testl $0x100, 0x24(%%rdi)")
CASE(test_imm8, "testb $1, (%%rdi)")
CASE(test_reg, "testl %%ecx, (%%rdi)")
CASE(cmp_imm8s, "cmpl $5, (%%rdi)")
CASE(cmp_reg64, "cmpq %%rcx, 8(%%rdi)")
CASE(cmp_byte, "cmpb $0x80, 3(%%rdi)")
CASE(cmp_reg_mem, "cmpl (%%rdi), %%ecx")
CASE(add_to_mem, "addl %%ecx, (%%rdi)")
CASE(add_to_reg, "addl (%%rdi), %%ecx")
CASE(add_byte, "addb %%cl, 9(%%rdi)")
CASE(sub_imm, "subq $1, 8(%%rdi)")
CASE(sub_to_reg, "subw 2(%%rdi), %%cx")
CASE(or_imm32, "orl $0x80, 0x20(%%rdi)")
CASE(or_imm_sext, "orq $-1, 48(%%rdi)")
CASE(and_imm, "andl $0xfffffff0, (%%rdi)")
CASE(and_to_reg, "andq 8(%%rdi), %%rcx")
CASE(xor_word, "xorw %%cx, 2(%%rdi)")
CASE(inc32, "incl (%%rdi)")
CASE(dec8, "decb 3(%%rdi)")
CASE(inc64_overflow, "incq 56(%%rdi)")
CASE(bt_imm, "btl $8, 0x24(%%rdi)")
CASE(bts_imm, "btsl $3, (%%rdi)")
CASE(btr_imm, "btrq $63, 8(%%rdi)")
CASE(btc_imm, "btcw $5, 2(%%rdi)")

struct test { const char *name; void (*fn)(volatile uint8_t *, struct regs *); uint64_t flags; };
#define T(n, f) { #n, n, f }
static const struct test tests[] = {
    T(mov_load32, 0), T(mov_load64, 0), T(mov_load16, 0), T(mov_load8, 0), T(mov_load8_high, 0),
    T(mov_load_r9, 0), T(mov_load_sib, 0), T(mov_load_disp32, 0), T(mov_store32, 0), T(mov_store64, 0),
    T(mov_store16, 0), T(mov_store8_high, 0), T(mov_store_r9, 0), T(mov_imm8, 0), T(mov_imm16, 0),
    T(mov_imm32, 0), T(mov_imm64_sext, 0), T(movzb, 0), T(movzw, 0), T(movsb, 0), T(movsw, 0), T(movslq, 0),
    T(xchg32, 0), T(xchg8, 0),
    T(test_imm32, LOGIC), T(test_imm8, LOGIC), T(test_reg, LOGIC), T(cmp_imm8s, ARITH), T(cmp_reg64, ARITH),
    T(cmp_byte, ARITH), T(cmp_reg_mem, ARITH), T(add_to_mem, ARITH), T(add_to_reg, ARITH), T(add_byte, ARITH),
    T(sub_imm, ARITH), T(sub_to_reg, ARITH), T(or_imm32, LOGIC), T(or_imm_sext, LOGIC), T(and_imm, LOGIC),
    T(and_to_reg, LOGIC), T(xor_word, LOGIC), T(inc32, ARITH), T(dec8, ARITH), T(inc64_overflow, ARITH),
    T(bt_imm, BTMASK), T(bts_imm, BTMASK), T(btr_imm, BTMASK), T(btc_imm, BTMASK),
};

static int open_device(const char *vendor, const char *device) {
    DIR *d = opendir("/sys/bus/pci/devices");
    if (!d) return -1;
    struct dirent *e;
    char path[1024], text[256], found[256] = "";
    while (!found[0] && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char v[16] = "", dv[16] = "";
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vendor", e->d_name);
        FILE *f = fopen(path, "r");
        if (f) { if (!fgets(v, sizeof v, f)) v[0] = 0; fclose(f); }
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/device", e->d_name);
        f = fopen(path, "r");
        if (f) { if (!fgets(dv, sizeof dv, f)) dv[0] = 0; fclose(f); }
        if (strncmp(v, vendor, 6) == 0 && strncmp(dv, device, 6) == 0) snprintf(found, sizeof found, "%s", e->d_name);
    }
    closedir(d);
    if (!found[0]) return -1;
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vfio-dev", found);
    d = opendir(path);
    if (!d) return -1;
    text[0] = 0;
    while ((e = readdir(d))) if (strncmp(e->d_name, "vfio", 4) == 0) snprintf(text, sizeof text, "%s", e->d_name);
    closedir(d);
    snprintf(path, sizeof path, "/dev/vfio/devices/%s", text);
    return open(path, O_RDWR | O_CLOEXEC);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int dev = open_device("0x144d", "0xa808");
    if (dev < 0) { printf("no nvme0 device: %s\n0 passed, 1 failed\n", strerror(errno)); return 1; }
    int iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
    struct cf_vfio_device_bind_iommufd bind = { .argsz = sizeof bind, .iommufd = iommufd };
    if (ioctl(dev, CF_VFIO_DEVICE_BIND_IOMMUFD, &bind)) { printf("bind: %s\n0 passed, 1 failed\n", strerror(errno)); return 1; }
    struct cf_vfio_region_info bar0 = { .argsz = sizeof bar0, .index = 0 };
    if (ioctl(dev, CF_VFIO_DEVICE_GET_REGION_INFO, &bar0)) { printf("region: %s\n0 passed, 1 failed\n", strerror(errno)); return 1; }
    volatile uint8_t *bar = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, dev, (off_t)bar0.offset);
    if (bar == MAP_FAILED) { printf("mmap: %s\n0 passed, 1 failed\n", strerror(errno)); return 1; }
    uint8_t *ram = aligned_alloc(4096, 8192);
    uint8_t pattern[2048];

    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        for (int round = 0; round < 3; round++) {
            for (size_t b = 0; b < sizeof pattern; b++) pattern[b] = (uint8_t)((b * 37 + i * 11 + round * 101) ^ (round == 2 ? 0xff : 0));
            memcpy(ram, pattern, sizeof pattern);
            if (pwrite(dev, pattern, sizeof pattern, (off_t)bar0.offset) != (ssize_t)sizeof pattern) { failures++; continue; }
            struct regs a = { .rax = 0x1111222233334444ull * (uint64_t)(round + 1), .rcx = round == 1 ? 0xffffffff80000001ull : 0x0123456789abcdefull,
                              .r9 = round == 1 ? 1 : 2 };
            struct regs b = a;
            tests[i].fn(ram, &a);
            tests[i].fn(bar, &b);
            uint8_t back[sizeof pattern];
            if (pread(dev, back, sizeof back, (off_t)bar0.offset) != (ssize_t)sizeof back) { failures++; continue; }
            uint64_t fm = tests[i].flags;
            CHECK(a.rax == b.rax && a.rcx == b.rcx && a.r9 == b.r9, "%s round %d: registers rax %llx/%llx rcx %llx/%llx r9 %llx/%llx",
                  tests[i].name, round, (unsigned long long)a.rax, (unsigned long long)b.rax, (unsigned long long)a.rcx,
                  (unsigned long long)b.rcx, (unsigned long long)a.r9, (unsigned long long)b.r9);
            CHECK((a.flags & fm) == (b.flags & fm), "%s round %d: flags %llx/%llx", tests[i].name, round,
                  (unsigned long long)(a.flags & fm), (unsigned long long)(b.flags & fm));
            CHECK(memcmp(ram, back, sizeof back) == 0, "%s round %d: memory differs", tests[i].name, round);
        }
    }

    /* A read-only mapping: loads work, a store is a SIGSEGV (as on the kernel's mapping). */
    volatile uint32_t *ro = mmap(NULL, 4096, PROT_READ, MAP_SHARED, dev, (off_t)bar0.offset);
    CHECK(ro != MAP_FAILED, "read-only mmap");
    uint32_t first;
    memcpy(&first, ram, 4);
    CHECK(ro[0] == first, "load through a read-only mapping");
    pid_t pid = fork();
    if (pid == 0) { ro[1] = 7; _exit(0); }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, "store to a read-only mapping: SIGSEGV");
    /* MAP_PRIVATE, a size past the BAR, a non-BAR region: EINVAL. */
    errno = 0;
    CHECK(mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, dev, (off_t)bar0.offset) == MAP_FAILED && errno == EINVAL, "MAP_PRIVATE is EINVAL");
    errno = 0;
    CHECK(mmap(NULL, 32768, PROT_READ, MAP_SHARED, dev, (off_t)bar0.offset) == MAP_FAILED && errno == EINVAL, "past the BAR is EINVAL");
    errno = 0;
    CHECK(mmap(NULL, 4096, PROT_READ, MAP_SHARED, dev, 7ll << 40) == MAP_FAILED && errno == EINVAL, "config space is not mappable");
    /* Partial munmap keeps the rest working; the device file outlives its descriptor while mapped. */
    CHECK(munmap((void *)(bar + 4096), 4096) == 0, "partial munmap");
    close(dev);
    bar[0x100] = 0x42;
    CHECK(bar[0x100] == 0x42, "the mapping still reaches the device after close()");
    CHECK(munmap((void *)bar, 4096) == 0 && munmap((void *)ro, 4096) == 0, "munmap");
    close(iommufd);
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
