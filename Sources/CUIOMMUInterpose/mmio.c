/*
 * BAR mappings of VFIO device files: memory-mapped I/O with each load and store having its
 * register effect before the next instruction runs.
 *
 * mmap of a device file checks the request with the Swift half (region, size, MAP_SHARED, as
 * vfio_pci_core_mmap does) and reserves the range with PROT_NONE. Every access to it faults; a
 * SIGSEGV handler finds the mapping, decodes the faulting x86-64 instruction, performs the
 * register access on the device (a load returns the register's value into the destination
 * register, a store writes the source register or immediate), and resumes after the instruction.
 * Decoded: MOV between memory and a register or an immediate (88, 89, 8A, 8B, C6 /0, C7 /0),
 * MOVZX and MOVSX (0F B6, 0F B7, 0F BE, 0F BF), MOVSXD (63), XCHG with memory (86, 87), and the
 * ALU forms compilers fold volatile accesses into — TEST (84, 85, F6 /0, F7 /0), CMP, ADD, SUB,
 * AND, OR, XOR with a register or an immediate (00-03, 08-0B, 20-23, 28-2B, 30-33, 38-3B, 80, 81,
 * 83), INC/DEC (FE, FF /0 /1) and BT/BTS/BTR/BTC with an immediate (0F BA /4-/7), with the flags
 * computed as the CPU would — with
 * operand-size, REX and segment prefixes and every ModRM/SIB addressing form: what GCC and
 * clang emit for volatile loads and stores of 1, 2, 4 and 8 bytes. A read-modify-write reads the
 * register once and writes it once. Anything else (a memcpy from the BAR, SSE moves, ADC/SBB,
 * string instructions) is not emulated: the fault goes on to the previous handler, and by default
 * the program dies with SIGSEGV as it would on a bad pointer.
 *
 * The handler is installed at the first BAR mapping, chains to whatever handler was there for
 * every other fault, and coexists with uaccess.c's guard whichever is installed first. A program
 * that installs its own SIGSEGV handler afterwards must chain to ours for BAR mappings to work.
 * munmap is interposed to forget mappings (the mapping holds a reference to the device file, as
 * the kernel's vma does). fork keeps the mappings (the child has its own copy of the device).
 *
 * In client mode a device file is served by the server (client.c): the mapping then holds a
 * reference on the descriptor's handle here (so its channel outlives a close of the descriptor)
 * and one on the server's file (VFIO_MAP_RETAIN), and each decoded access is a call. A forked
 * child's inherited mappings reach the same served device but hold no reference of their own.
 */
#include "internal.h"
#include "vfio_core.h"
#include "uiommu_vfio.h"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define MAX_MAPPINGS 256

struct mapping {
    uintptr_t start, end;
    void *object;          /* the Swift file box, or (remote) the client handle */
    int remote;
    int bar;
    uint64_t bar_offset;   /* BAR offset of `start` */
    int prot;
};

static struct mapping mappings[MAX_MAPPINGS];
static int mapping_count;
static atomic_int any_mapping;
static pthread_rwlock_t mappings_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct sigaction previous_segv;
static pthread_once_t handler_once = PTHREAD_ONCE_INIT;

/* The mapping's reference on its file, taken for a new piece (a split). */
static void mapping_retain(const struct mapping *m) {
    if (!m->remote) { uiommu_core_vfio_retain(m->object); return; }
    struct handle *h = m->object;
    if (handle_ref_if_alive(h)) (void)client_vfio_map_retain(h, -1);
}

/* Drops the reference of a mapping that went away (outside the table's lock). */
static void mapping_release(const struct mapping *m) {
    if (!m->remote) { uiommu_core_vfio_release(m->object, HANDLE_VFIO_DEVICE); return; }
    struct handle *h = m->object;
    client_vfio_map_release(h);
    handle_unref(h);
}

static uint64_t mapping_access(const struct mapping *m, uint64_t offset, int width, int write, uint64_t value) {
    if (m->remote) return client_vfio_mmio(m->object, m->bar, offset, width, write, value);
    return uiommu_core_vfio_mmio(m->object, m->bar, offset, width, write, value);
}

long uiommu_mmio_mappings(void) {
    pthread_rwlock_rdlock(&mappings_lock);
    long n = mapping_count;
    pthread_rwlock_unlock(&mappings_lock);
    return n;
}

/* ---- instruction decoding (x86-64) ------------------------------------------------------------ */

#if defined(__x86_64__)
enum form { F_LOAD, F_STORE, F_XCHG, F_ALU, F_BT };
enum alu { ALU_ADD, ALU_OR, ALU_AND, ALU_SUB, ALU_XOR, ALU_CMP, ALU_TEST, ALU_INC, ALU_DEC };

struct access {
    int length;       /* instruction bytes */
    int width;        /* memory operand: 1, 2, 4, 8 */
    int form;
    int alu;          /* F_ALU: the operation; F_BT: 4 BT, 5 BTS, 6 BTR, 7 BTC */
    int mem_dest;     /* F_ALU: the memory operand is the destination (else a register is) */
    int reg;          /* register operand, 0–15 */
    int reg_width;    /* its size for loads / ALU results: 1, 2, 4, 8 */
    int high8;        /* the register is AH/CH/DH/BH */
    int extend;       /* loads: 0 none, 1 zero-extend, 2 sign-extend */
    int immediate;    /* the source is `imm` */
    uint64_t imm;
};

/* Decodes the instruction at `p`; 0 if it is not one we emulate. */
static int decode(const uint8_t *p, struct access *a) {
    const uint8_t *start = p;
    int opsize16 = 0, rex = 0;
    memset(a, 0, sizeof *a);
    for (int i = 0; i < 14; i++, p++) {
        uint8_t b = *p;
        if (b == 0x66) opsize16 = 1;
        else if (b == 0x67 || b == 0x2e || b == 0x3e || b == 0x26 || b == 0x36 || b == 0x64 || b == 0x65 || b == 0xf0) continue;
        else break;
    }
    if ((*p & 0xf0) == 0x40) rex = *p++;
    int w = (rex >> 3) & 1, r = (rex >> 2) & 1;
    int opwidth = w ? 8 : (opsize16 ? 2 : 4);
    uint8_t op = *p++;
    int two = 0;
    if (op == 0x0f) { two = 1; op = *p++; }
    uint8_t modrm = *p++;
    int mod = modrm >> 6, reg = ((modrm >> 3) & 7) | (r << 3), digit = (modrm >> 3) & 7, rm = modrm & 7;
    if (mod == 3) return 0;   /* a register operand: no memory access */
    if (rm == 4) {
        uint8_t sib = *p++;
        if (mod == 0 && (sib & 7) == 5) p += 4;
    } else if (mod == 0 && rm == 5) {
        p += 4;               /* RIP-relative */
    }
    if (mod == 1) p += 1;
    else if (mod == 2) p += 4;
    a->reg = reg;
    int byte_op = 0;
    if (two && op == 0xba) {                                           /* BT/BTS/BTR/BTC r/m, imm8 */
        if (digit < 4) return 0;
        a->form = F_BT; a->alu = digit; a->width = opwidth; a->immediate = 1;
        a->imm = *p++ & (uint64_t)(8 * opwidth - 1);
    } else if (two) {
        if (op != 0xb6 && op != 0xb7 && op != 0xbe && op != 0xbf) return 0;
        a->form = F_LOAD;                                              /* MOVZX / MOVSX */
        a->width = (op == 0xb6 || op == 0xbe) ? 1 : 2;
        a->reg_width = opwidth;
        a->extend = (op == 0xb6 || op == 0xb7) ? 1 : 2;
    } else if (op == 0x88 || op == 0x89) {                             /* MOV r/m, r */
        a->form = F_STORE; byte_op = op == 0x88;
    } else if (op == 0x8a || op == 0x8b) {                             /* MOV r, r/m */
        a->form = F_LOAD; byte_op = op == 0x8a;
    } else if (op == 0xc6 || op == 0xc7) {                             /* MOV r/m, imm */
        if (digit != 0) return 0;
        a->form = F_STORE; a->immediate = 1; byte_op = op == 0xc6;
    } else if (op == 0x63) {                                           /* MOVSXD r64, r/m32 */
        if (!w) return 0;
        a->form = F_LOAD; a->width = 4; a->reg_width = 8; a->extend = 2;
    } else if (op == 0x86 || op == 0x87) {                             /* XCHG r/m, r */
        a->form = F_XCHG; byte_op = op == 0x86;
    } else if (op < 0x40 && (op & 7) < 4 && (op >> 3) != 2 && (op >> 3) != 3) {
        /* ADD/OR/AND/SUB/XOR/CMP with a register: 00-03, 08-0B, 20-23, 28-2B, 30-33, 38-3B
         * (ADC and SBB, 10-1B, are not emulated). */
        static const int ops[8] = { ALU_ADD, ALU_OR, -1, -1, ALU_AND, ALU_SUB, ALU_XOR, ALU_CMP };
        a->form = F_ALU; a->alu = ops[op >> 3];
        a->mem_dest = (op & 2) == 0;
        byte_op = (op & 1) == 0;
    } else if (op == 0x84 || op == 0x85) {                             /* TEST r/m, r */
        a->form = F_ALU; a->alu = ALU_TEST; a->mem_dest = 1; byte_op = op == 0x84;
    } else if (op == 0x80 || op == 0x81 || op == 0x83) {               /* group 1 with an immediate */
        static const int ops[8] = { ALU_ADD, ALU_OR, -1, -1, ALU_AND, ALU_SUB, ALU_XOR, ALU_CMP };
        if (ops[digit] < 0) return 0;
        a->form = F_ALU; a->alu = ops[digit]; a->mem_dest = 1; a->immediate = 1; byte_op = op == 0x80;
        if (op == 0x83) { a->imm = (uint64_t)(int64_t)(int8_t)*p++; a->width = opwidth; }
    } else if (op == 0xf6 || op == 0xf7) {                             /* TEST r/m, imm */
        if (digit != 0) return 0;
        a->form = F_ALU; a->alu = ALU_TEST; a->mem_dest = 1; a->immediate = 1; byte_op = op == 0xf6;
    } else if (op == 0xfe || op == 0xff) {                             /* INC / DEC r/m */
        if (digit > 1) return 0;
        a->form = F_ALU; a->alu = digit ? ALU_DEC : ALU_INC; a->mem_dest = 1; byte_op = op == 0xfe;
    } else {
        return 0;
    }
    if (!a->width) a->width = byte_op ? 1 : opwidth;
    if (!a->reg_width) a->reg_width = a->width;
    if (byte_op) a->high8 = !rex && reg >= 4 && reg < 8;
    if (a->immediate && op != 0x83 && !(two && op == 0xba)) {
        if (a->width == 1) a->imm = *p++;
        else if (a->width == 2) { uint16_t v; memcpy(&v, p, 2); p += 2; a->imm = v; }
        else { int32_t v; memcpy(&v, p, 4); p += 4; a->imm = (uint64_t)(int64_t)v; }
    }
    a->length = (int)(p - start);
    return a->length <= 15;
}

static int greg_index(int reg) {
    static const int map[16] = { REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI,
                                 REG_R8, REG_R9, REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15 };
    return map[reg & 15];
}

static uint64_t get_reg(ucontext_t *uc, const struct access *a) {
    if (a->high8) return ((uint64_t)uc->uc_mcontext.gregs[greg_index(a->reg - 4)] >> 8) & 0xff;
    return (uint64_t)uc->uc_mcontext.gregs[greg_index(a->reg)];
}

static void set_reg(ucontext_t *uc, const struct access *a, uint64_t value) {
    uint64_t v = value;
    if (a->extend == 1) {
        v &= a->width == 1 ? 0xff : 0xffff;
    } else if (a->extend == 2) {
        v = a->width == 1 ? (uint64_t)(int64_t)(int8_t)v : a->width == 2 ? (uint64_t)(int64_t)(int16_t)v
                                                                           : (uint64_t)(int64_t)(int32_t)v;
    }
    if (a->high8) {
        greg_t *g = &uc->uc_mcontext.gregs[greg_index(a->reg - 4)];
        *g = (greg_t)(((uint64_t)*g & ~0xff00ULL) | ((v & 0xff) << 8));
        return;
    }
    greg_t *g = &uc->uc_mcontext.gregs[greg_index(a->reg)];
    switch (a->reg_width) {
    case 1: *g = (greg_t)(((uint64_t)*g & ~0xffULL) | (v & 0xff)); break;
    case 2: *g = (greg_t)(((uint64_t)*g & ~0xffffULL) | (v & 0xffff)); break;
    case 4: *g = (greg_t)(v & 0xffffffffULL); break;   /* a 32-bit write clears the upper half */
    default: *g = (greg_t)v; break;
    }
}

#define FLAG_CF 0x001
#define FLAG_PF 0x004
#define FLAG_AF 0x010
#define FLAG_ZF 0x040
#define FLAG_SF 0x080
#define FLAG_OF 0x800
#define FLAGS_ARITH (FLAG_CF | FLAG_PF | FLAG_AF | FLAG_ZF | FLAG_SF | FLAG_OF)

/* CF, ZF, SF and OF of a 64-bit add, sub or logic operation (lahf + seto, no stack). */
static uint64_t flags64(int sub, int logic, uint64_t x, uint64_t y) {
    uint16_t ax;
    if (logic) __asm__ volatile("and %2, %1\n\tlahf\n\tseto %%al" : "=&a"(ax), "+r"(x) : "r"(y) : "cc");
    else if (sub) __asm__ volatile("sub %2, %1\n\tlahf\n\tseto %%al" : "=&a"(ax), "+r"(x) : "r"(y) : "cc");
    else __asm__ volatile("add %2, %1\n\tlahf\n\tseto %%al" : "=&a"(ax), "+r"(x) : "r"(y) : "cc");
    return (((uint64_t)ax >> 8) & (FLAG_CF | FLAG_ZF | FLAG_SF)) | ((ax & 1) ? FLAG_OF : 0);
}

/* `d op s` at `width` bytes: the result and the arithmetic flags (with `flags` for INC/DEC's CF). */
static uint64_t alu(int op, int width, uint64_t d, uint64_t s, uint64_t flags, uint64_t *out_flags) {
    int k = 64 - 8 * width;
    uint64_t m = width >= 8 ? ~0ULL : (1ULL << (8 * width)) - 1;
    d &= m; s &= m;
    uint64_t r, f;
    switch (op) {
    case ALU_ADD: r = d + s; f = flags64(0, 0, d << k, s << k); break;
    case ALU_INC: s = 1; r = d + 1; f = (flags64(0, 0, d << k, 1ULL << k) & ~FLAG_CF) | (flags & FLAG_CF); break;
    case ALU_SUB: case ALU_CMP: r = d - s; f = flags64(1, 0, d << k, s << k); break;
    case ALU_DEC: s = 1; r = d - 1; f = (flags64(1, 0, d << k, 1ULL << k) & ~FLAG_CF) | (flags & FLAG_CF); break;
    case ALU_AND: case ALU_TEST: r = d & s; f = flags64(0, 1, r << k, ~0ULL); break;
    case ALU_OR: r = d | s; f = flags64(0, 1, r << k, ~0ULL); break;
    default: r = d ^ s; f = flags64(0, 1, r << k, ~0ULL); break;
    }
    r &= m;
    if (!__builtin_parity((unsigned)(r & 0xff))) f |= FLAG_PF;
    if (op != ALU_AND && op != ALU_TEST && op != ALU_OR && op != ALU_XOR && (((d ^ s ^ r) >> 4) & 1)) f |= FLAG_AF;
    *out_flags = (flags & ~(uint64_t)FLAGS_ARITH) | f;
    return r;
}

static uint64_t mask_of(int width) { return width >= 8 ? ~0ULL : (1ULL << (8 * width)) - 1; }

/* Emulates the access at `address` if it is in a BAR mapping. */
static int emulate(uintptr_t address, ucontext_t *uc) {
    if (!atomic_load_explicit(&any_mapping, memory_order_acquire)) return 0;
    struct mapping m;
    int found = 0;
    pthread_rwlock_rdlock(&mappings_lock);
    for (int i = 0; i < mapping_count; i++) {
        if (address >= mappings[i].start && address < mappings[i].end) { m = mappings[i]; found = 1; break; }
    }
    pthread_rwlock_unlock(&mappings_lock);
    if (!found) return 0;
    const uint8_t *rip = (const uint8_t *)(uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
    struct access a;
    if (!decode(rip, &a)) {
        /* Say why before the program most likely dies of the SIGSEGV. */
        char line[160];
        int n = snprintf(line, sizeof line, "uiommufd: cannot emulate the instruction at %p (bytes %02x %02x %02x %02x "
                         "%02x %02x) accessing a BAR mapping at %p\n", (const void *)rip, rip[0], rip[1], rip[2],
                         rip[3], rip[4], rip[5], (void *)address);
        if (n > 0) { ssize_t w = real_write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1); (void)w; }
        return 0;
    }
    int writes = a.form == F_STORE || a.form == F_XCHG || (a.form == F_BT && a.alu != 4)
        || (a.form == F_ALU && a.mem_dest && a.alu != ALU_CMP && a.alu != ALU_TEST);
    int reads = a.form != F_STORE;
    if (writes && !(m.prot & PROT_WRITE)) return 0;
    if (reads && !(m.prot & PROT_READ)) return 0;
    uint64_t offset = m.bar_offset + (address - m.start);
    uint64_t mask = mask_of(a.width);
    int saved = errno;
    gate_enter();
    if (a.form == F_STORE) {
        uint64_t v = a.immediate ? a.imm : get_reg(uc, &a);
        mapping_access(&m, offset, a.width, 1, v & mask);
    } else if (a.form == F_LOAD) {
        set_reg(uc, &a, mapping_access(&m, offset, a.width, 0, 0) & mask);
    } else if (a.form == F_XCHG) {
        uint64_t old = mapping_access(&m, offset, a.width, 0, 0) & mask;
        mapping_access(&m, offset, a.width, 1, get_reg(uc, &a) & mask);
        set_reg(uc, &a, old);
    } else if (a.form == F_BT) {
        uint64_t mem = mapping_access(&m, offset, a.width, 0, 0) & mask;
        uint64_t bit = 1ULL << a.imm;
        greg_t *efl = &uc->uc_mcontext.gregs[REG_EFL];
        *efl = (greg_t)(((uint64_t)*efl & ~(uint64_t)FLAG_CF) | ((mem & bit) ? FLAG_CF : 0));
        if (a.alu != 4) {
            uint64_t v = a.alu == 5 ? mem | bit : a.alu == 6 ? mem & ~bit : mem ^ bit;
            mapping_access(&m, offset, a.width, 1, v);
        }
    } else {
        uint64_t mem = mapping_access(&m, offset, a.width, 0, 0) & mask;
        uint64_t other = a.immediate ? a.imm : (a.alu == ALU_INC || a.alu == ALU_DEC) ? 0 : get_reg(uc, &a);
        uint64_t flags = (uint64_t)uc->uc_mcontext.gregs[REG_EFL], out_flags;
        uint64_t result = a.mem_dest ? alu(a.alu, a.width, mem, other, flags, &out_flags)
                                     : alu(a.alu, a.width, other, mem, flags, &out_flags);
        uc->uc_mcontext.gregs[REG_EFL] = (greg_t)out_flags;
        if (a.alu != ALU_CMP && a.alu != ALU_TEST) {
            if (a.mem_dest) mapping_access(&m, offset, a.width, 1, result);
            else set_reg(uc, &a, result);
        }
    }
    gate_exit();
    errno = saved;
    uc->uc_mcontext.gregs[REG_RIP] += a.length;
    return 1;
}
#else
static int emulate(uintptr_t address, void *uc) { (void)address; (void)uc; return 0; }
#endif

static void segv_handler(int sig, siginfo_t *info, void *context) {
    if (info && info->si_code > 0 && emulate((uintptr_t)info->si_addr, context)) return;
    struct sigaction *prev = &previous_segv;
    if (prev->sa_flags & SA_SIGINFO) {
        if (prev->sa_sigaction) { prev->sa_sigaction(sig, info, context); return; }
    } else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
        prev->sa_handler(sig);
        return;
    }
    /* No handler before us: the default action. A fault re-executes and dies with SIGSEGV. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    if (info == NULL || info->si_code <= 0) raise(sig);
}

static void install_handler(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous_segv);
}

/* ---- mapping and unmapping --------------------------------------------------------------------- */

/* Removes [start, end) from the table; the objects of mappings that went away are returned in
 * `dropped` (at most `max`), to be released outside the lock. Call with the lock held. */
static int forget_range(uintptr_t start, uintptr_t end, struct mapping *dropped, int max) {
    int n = 0;
    for (int i = 0; i < mapping_count; ) {
        struct mapping *m = &mappings[i];
        if (m->end <= start || m->start >= end) { i++; continue; }
        if (m->start < start && m->end > end) {
            /* A hole in the middle: split (the new piece holds another reference). */
            if (mapping_count < MAX_MAPPINGS) {
                struct mapping tail = *m;
                tail.bar_offset += end - m->start;
                tail.start = end;
                mappings[mapping_count++] = tail;
                mapping_retain(m);
            }
            m->end = start;
            i++;
            continue;
        }
        if (m->start < start) { m->end = start; i++; continue; }
        if (m->end > end) { m->bar_offset += end - m->start; m->start = end; i++; continue; }
        if (n < max) dropped[n++] = *m;
        mappings[i] = mappings[--mapping_count];
    }
    atomic_store_explicit(&any_mapping, mapping_count > 0, memory_order_release);
    return n;
}

void *mmio_map(struct handle *h, int fd, void *addr, size_t length, int prot, int flags, off_t offset) {
#if !defined(__x86_64__)
    (void)h; (void)fd; (void)addr; (void)length; (void)prot; (void)flags; (void)offset;
    errno = ENODEV;
    return MAP_FAILED;
#else
    if (length == 0 || (offset & 4095)) { errno = EINVAL; return MAP_FAILED; }
    int32_t bar = 0;
    uint64_t start = 0;
    int remote = h->kind == HANDLE_REMOTE;
    int64_t r = remote ? client_vfio_mmap(h, fd, length, (flags & MAP_SHARED) != 0, offset, &bar, &start)
                       : uiommu_core_vfio_mmap(h->object, length, (flags & MAP_SHARED) != 0, offset, &bar, &start);
    if (r < 0) { errno = (int)-r; return MAP_FAILED; }
    size_t rounded = (length + 4095) & ~(size_t)4095;
    void *p = real_mmap(addr, rounded, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
                        | (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)), -1, 0);
    if (p == MAP_FAILED) return MAP_FAILED;
    pthread_once(&handler_once, install_handler);
    if (remote) {
        /* The references first (a call), outside the table's lock. */
        if (!handle_ref_if_alive(h)) { syscall(SYS_munmap, p, rounded); errno = EBADF; return MAP_FAILED; }
        int e = client_vfio_map_retain(h, fd);
        if (e < 0) { handle_unref(h); syscall(SYS_munmap, p, rounded); errno = -e; return MAP_FAILED; }
    } else {
        uiommu_core_vfio_retain(h->object);
    }
    struct mapping made = { (uintptr_t)p, (uintptr_t)p + rounded, remote ? (void *)h : h->object, remote, bar, start, prot };
    struct mapping dropped[8];
    pthread_rwlock_wrlock(&mappings_lock);
    int n = forget_range((uintptr_t)p, (uintptr_t)p + rounded, dropped, 8);
    if (mapping_count == MAX_MAPPINGS) {
        pthread_rwlock_unlock(&mappings_lock);
        for (int i = 0; i < n; i++) mapping_release(&dropped[i]);
        mapping_release(&made);
        syscall(SYS_munmap, p, rounded);
        errno = ENOMEM;
        return MAP_FAILED;
    }
    mappings[mapping_count++] = made;
    atomic_store_explicit(&any_mapping, 1, memory_order_release);
    pthread_rwlock_unlock(&mappings_lock);
    for (int i = 0; i < n; i++) mapping_release(&dropped[i]);
    return p;
#endif
}

EXPORT int munmap(void *addr, size_t length) {
    int r = (int)syscall(SYS_munmap, addr, length);
    if (r != 0 || !atomic_load_explicit(&any_mapping, memory_order_acquire)) return r;
    int saved = errno;
    struct mapping dropped[MAX_MAPPINGS];
    uintptr_t start = (uintptr_t)addr, end = start + ((length + 4095) & ~(size_t)4095);
    gate_enter();
    pthread_rwlock_wrlock(&mappings_lock);
    int n = forget_range(start, end, dropped, MAX_MAPPINGS);
    pthread_rwlock_unlock(&mappings_lock);
    for (int i = 0; i < n; i++) mapping_release(&dropped[i]);
    gate_exit();
    errno = saved;
    return r;
}
