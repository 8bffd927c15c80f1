/*
 * paging: two-level 32-bit paging (4 KiB and 4 MiB pages) as seen by a guest.
 *
 * Own GDT (flat ring 0/3 code+data, TSS with SS0:ESP0), IDT (all 32
 * exception vectors record vector, error code, CR2, saved CS:EIP and
 * recover via a per-probe address; INT 0x30 with DPL 3 returns from ring
 * 3), page tables identity-mapping the first 8 MiB supervisor RW (the
 * ring-3 snippet page and user stack U=1), then paging on. Groups:
 *   harness  #UD/#DE/#GP delivery
 *   xlate    linear->physical, aliases
 *   pf       #PF error codes, CR2, saved EIP (CPL 0 and 3, WP=0/1, PDE/PTE)
 *   ad       accessed/dirty bits in PTE and PDE
 *   pse      4 MiB pages (CR4.PSE, PDE.PS)
 *   global   CR4.PGE / PTE.G vs CR3 reload, INVLPG, PGE toggle
 *   invlpg   remapping, P 1->0 and P 0->1
 *   cr3      two address spaces: data and code at the same linear address
 *   smc      code patched through a second linear alias
 *   rep      #PF inside rep movs: registers at the fault, restart
 *   fetch    instruction fetch faults (first insn, run into next page,
 *            instruction straddling pages)
 *   split    data access straddling a page boundary
 *   pg       CR0.PG off/on with a non-identity mapping
 *   spaces   page tables changed while another address space runs, A/D
 *            bits cleared meanwhile, more address spaces than a VMM caches
 *   refault  the same instructions faulting again and again on a page the
 *            handler maps on demand (CPL 0 and 3, reads, writes, an access
 *            straddling into a mapped page)
 *   mmio     pages mapping the VGA text buffer (device memory) reach the
 *            device: MOV, MOVZX, REP STOSW, REP MOVSD, CPL 3, the part of
 *            the window text mode does not decode; leaves a line on screen
 * Expected values follow the SDM (vol. 3 ch. 4); output recorded on QEMU.
 * Prints "PASS|FAIL name got X want Y", then "N passed, M failed"; exits
 * with V=M. An unexpected exception prints its frame and exits with 255.
 */
#include "rt.h"
#include "ktest.h"

#define KCODE 0x08
#define KDATA 0x10
#define UCODE 0x1B
#define UDATA 0x23
#define TSSSEL 0x28
#define FAULTED 0xFA17FA17u

#define P   0x001u
#define W   0x002u
#define U   0x004u
#define A   0x020u
#define D   0x040u
#define PS  0x080u
#define G   0x100u

#define CR0_WP 0x00010000u
#define CR0_PG 0x80000000u
#define CR4_PSE 0x10u
#define CR4_PGE 0x80u

#define PF 14

/* scratch physical pages, inside the identity map, well above the kernel */
#define PHYS(n) (0x300000u + (uint32_t)(n) * 0x1000u)

/* ---- asm.S ------------------------------------------------------------ */
extern const uint32_t stub_table[32];
extern char user_done[], user_abort[], user_code_start[], user_code_end[];
extern char user_stack[], user_stack_top[];
extern char user_read[], user_read_insn[], user_write[], user_write_insn[];
extern char user_cli[], user_load_kds[];
extern char try_read_insn[], try_write_insn[], try_ud_insn[], try_div0_insn[];
extern char rep_movsd_insn[], rep_movsb_insn[];
extern volatile uint32_t recover_eip, rep_end_ecx, rep_end_esi, rep_end_edi;
uint32_t run_user(void *entry, uint32_t arg);
uint32_t try_read(uint32_t addr);
uint32_t try_write(uint32_t addr, uint32_t val);
uint32_t try_exec(uint32_t addr);
uint32_t try_ud(void);
uint32_t try_div0(void);
void rep_copy_d(uint32_t dst, uint32_t src, uint32_t count);
void rep_copy_b(uint32_t dst, uint32_t src, uint32_t count);

/* ---- control registers ---------------------------------------------- */
static inline uint32_t read_cr0(void) { uint32_t v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline uint32_t read_cr2(void) { uint32_t v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline uint32_t read_cr3(void) { uint32_t v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline uint32_t read_cr4(void) { uint32_t v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static inline void write_cr0(uint32_t v) { __asm__ volatile("mov %0, %%cr0" :: "r"(v) : "memory"); }
static inline void write_cr3(uint32_t v) { __asm__ volatile("mov %0, %%cr3" :: "r"(v) : "memory"); }
static inline void write_cr4(uint32_t v) { __asm__ volatile("mov %0, %%cr4" :: "r"(v) : "memory"); }
static inline void invlpg(uint32_t a) { __asm__ volatile("invlpg (%0)" :: "r"(a) : "memory"); }

static inline uint32_t rd(uint32_t a) { return *(volatile uint32_t *)a; }
static inline void wr(uint32_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline uint8_t rd8(uint32_t a) { return *(volatile uint8_t *)a; }
static inline void wr8(uint32_t a, uint8_t v) { *(volatile uint8_t *)a = v; }

/* ---- results ---------------------------------------------------------- */

static void check2(const char *name, const char *what, uint32_t got, uint32_t want)
{
    char buf[96];
    size_t n = 0;
    for (const char *s = name; *s && n < sizeof buf - 2; s++)
        buf[n++] = *s;
    buf[n++] = ' ';
    for (const char *s = what; *s && n < sizeof buf - 1; s++)
        buf[n++] = *s;
    buf[n] = 0;
    check(buf, got, want);
}

/* ---- descriptor tables ---------------------------------------------- */
struct tss {
    uint32_t link, esp0, ss0, esp1, ss1, esp2, ss2, cr3, eip, eflags;
    uint32_t eax, ecx, edx, ebx, esp, ebp, esi, edi;
    uint32_t es, cs, ss, ds, fs, gs, ldt;
    uint16_t trap, iomap;
} __attribute__((packed));

struct dtr {
    uint16_t limit;
    uint32_t base;
} __attribute__((packed));

static uint64_t gdt[6] __attribute__((aligned(8)));
static uint64_t idt[256] __attribute__((aligned(8)));
static struct tss tss __attribute__((aligned(64)));
static uint8_t exc_stack[8192] __attribute__((aligned(16)));


static void set_gate(int n, uint32_t handler, int dpl)
{
    idt[n] = (handler & 0xFFFF) | ((uint64_t)KCODE << 16) |
             ((uint64_t)(0x8E00 | (dpl << 13)) << 32) |     /* 32-bit interrupt gate */
             ((uint64_t)(handler >> 16) << 48);
}

static void setup_descriptors(void)
{
    gdt[0] = 0;
    gdt[1] = desc(0, 0xFFFFF, 0x9A, 0xC);      /* ring 0 code */
    gdt[2] = desc(0, 0xFFFFF, 0x92, 0xC);      /* ring 0 data */
    gdt[3] = desc(0, 0xFFFFF, 0xFA, 0xC);      /* ring 3 code */
    gdt[4] = desc(0, 0xFFFFF, 0xF2, 0xC);      /* ring 3 data */
    gdt[5] = desc((uint32_t)&tss, sizeof tss - 1, 0x89, 0);  /* 32-bit TSS */
    tss.ss0 = KDATA;
    tss.esp0 = (uint32_t)(exc_stack + sizeof exc_stack);
    tss.iomap = sizeof tss;                    /* no I/O bitmap */

    struct dtr g = { sizeof gdt - 1, (uint32_t)gdt };
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp $0x08, $1f\n"
                     "1:\tmovw $0x10, %%ax\n\t"
                     "movw %%ax, %%ds\n\tmovw %%ax, %%es\n\tmovw %%ax, %%ss\n\t"
                     "movw %%ax, %%fs\n\tmovw %%ax, %%gs\n\t"
                     "movw $0x28, %%ax\n\tltr %%ax"
                     :: "m"(g) : "eax", "memory");

    for (int i = 0; i < 32; i++)
        set_gate(i, stub_table[i], 0);
    set_gate(0x30, (uint32_t)user_done, 3);
    struct dtr id = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" :: "m"(id) : "memory");
}

/* ---- exceptions -------------------------------------------------------- */
struct frame {
    uint32_t es, ds, edi, esi, ebp, esp_, ebx, edx, ecx, eax;
    uint32_t vec, err, eip, cs, eflags, uesp, uss;
};

/* the last recorded exception */
static volatile struct {
    uint32_t count, vec, err, cr2, eip, cs;
} last;

/* called first for #PF; returns 1 if it fixed the fault (retry) */
static int (*pf_fixup)(struct frame *f, uint32_t cr2);

void exc_handler(struct frame *f);
void exc_handler(struct frame *f)
{
    uint32_t cr2 = read_cr2();
    if (f->vec == PF && pf_fixup && pf_fixup(f, cr2))
        return;
    last.count++;
    last.vec = f->vec;
    last.err = f->err;
    last.cr2 = cr2;
    last.eip = f->eip;
    last.cs = f->cs;
    if ((f->cs & 3) == 3) {
        /* abandon ring 3: IRET to user_abort at CPL 0 */
        f->eip = (uint32_t)user_abort;
        f->cs = KCODE;
        f->ds = f->es = KDATA;
        return;
    }
    if (recover_eip) {
        f->eip = recover_eip;
        recover_eip = 0;
        return;
    }
    puts_serial("UNEXPECTED exception vec ");
    put_hex(f->vec);
    puts_serial(" err ");
    put_hex(f->err);
    puts_serial(" eip ");
    put_hex(f->eip);
    puts_serial(" cr2 ");
    put_hex(cr2);
    putc_serial('\n');
    puts_serial("aborted after ");
    put_dec(n_pass);
    puts_serial(" passed, ");
    put_dec(n_fail);
    puts_serial(" failed\n");
    exit(255);
}

static void freset(void)
{
    last.count = 0;
    last.vec = last.err = last.cr2 = last.eip = last.cs = 0xFFFFFFFF;
}

/* one fault was taken with these values (cr2 only checked for #PF) */
static void check_fault(const char *name, uint32_t vec, uint32_t err, uint32_t cr2,
                        uint32_t eip, uint32_t cs)
{
    check2(name, "count", last.count, 1);
    check2(name, "vector", last.vec, vec);
    check2(name, "error code", last.err, err);
    if (vec == PF)
        check2(name, "cr2", last.cr2, cr2);
    check2(name, "eip", last.eip, eip);
    check2(name, "cs", last.cs, cs);
}

static void check_nofault(const char *name)
{
    check2(name, "no fault", last.count, 0);
}

/* ---- page tables ------------------------------------------------------- */
#define NPOOL 48
static uint32_t pool[NPOOL][1024] __attribute__((aligned(4096)));
static int pool_used;
static uint32_t *pd0;

static uint32_t *alloc_page(void)
{
    if (pool_used == NPOOL) {
        puts_serial("out of page-table pages\n");
        exit(254);
    }
    uint32_t *p = pool[pool_used++];
    memset(p, 0, 4096);
    return p;
}

/* the PTE for lin in pd, creating its page table (PDE P|W|U) if needed */
static volatile uint32_t *pte_of(uint32_t *pd, uint32_t lin)
{
    uint32_t *pde = &pd[lin >> 22];
    if (!(*pde & P))
        *pde = (uint32_t)alloc_page() | P | W | U;
    return (volatile uint32_t *)(*pde & ~0xFFFu) + ((lin >> 12) & 1023);
}

static volatile uint32_t *pde_of(uint32_t *pd, uint32_t lin)
{
    return (volatile uint32_t *)&pd[lin >> 22];
}

/* set a PTE and INVLPG it (harmless if pd is not current) */
static void map(uint32_t *pd, uint32_t lin, uint32_t phys, uint32_t flags)
{
    *pte_of(pd, lin) = (phys & ~0xFFFu) | flags;
    invlpg(lin);
}

static void setup_paging(void)
{
    pd0 = alloc_page();
    for (uint32_t a = 0; a < 0x800000; a += 0x1000)
        *pte_of(pd0, a) = a | P | W;
    for (uint32_t a = (uint32_t)user_code_start; a < (uint32_t)user_code_end; a += 0x1000)
        *pte_of(pd0, a) |= U;
    *pte_of(pd0, (uint32_t)user_stack) |= U;
    /* page table for the 0x40000000 test area */
    (void)pte_of(pd0, 0x40000000);
    write_cr3((uint32_t)pd0);
    write_cr0(read_cr0() | CR0_PG);
    __asm__ volatile("jmp 1f\n1:");
}

static void set_wp(int on)
{
    uint32_t c = read_cr0();
    write_cr0(on ? (c | CR0_WP) : (c & ~CR0_WP));
}

/* write "mov $imm, %eax; ret" at a (a physical/identity address) */
static void emit_ret_imm(uint32_t a, uint32_t imm)
{
    wr8(a, 0xB8);
    wr(a + 1, imm);
    wr8(a + 5, 0xC3);
}

static void fill(uint32_t a, uint32_t n, uint32_t seed)
{
    for (uint32_t i = 0; i < n; i += 4)
        wr(a + i, seed ^ (i * 0x9E3779B1u));
}

/* ====================================================================== */

static void t_harness(void)
{
    freset();
    check("harness: ud2 returns FAULTED", try_ud(), FAULTED);
    check_fault("harness: #UD", 6, 0, 0, (uint32_t)try_ud_insn, KCODE);
    freset();
    check("harness: div 0 returns FAULTED", try_div0(), FAULTED);
    check_fault("harness: #DE", 0, 0, 0, (uint32_t)try_div0_insn, KCODE);
    freset();
    check("harness: ring-3 cli returns FAULTED", run_user(user_cli, 0), FAULTED);
    check_fault("harness: ring-3 cli #GP", 13, 0, 0, (uint32_t)user_cli, UCODE);
    freset();
    run_user(user_load_kds, 0);
    check_fault("harness: ring-3 load DPL0 DS #GP", 13, KDATA, 0,
                (uint32_t)user_load_kds + 5, UCODE);
    freset();
    check("harness: ring-3 read of user stack", run_user(user_read, (uint32_t)user_stack_top - 4),
          rd((uint32_t)user_stack_top - 4));
    check_nofault("harness: ring-3 read of user stack");
}

static void t_xlate(void)
{
    const uint32_t L = 0x40000000;
    memset((void *)PHYS(0), 0, 4096);
    memset((void *)PHYS(1), 0, 4096);
    map(pd0, L, PHYS(0), P | W);
    map(pd0, L + 0x1000, PHYS(0), P | W);          /* alias */
    map(pd0, L + 0x2000, PHYS(1), P | W);

    wr(L + 0x10, 0x12345678);
    check("xlate: write 0x40000010, read phys 0x300010", rd(PHYS(0) + 0x10), 0x12345678);
    wr(PHYS(0) + 0x20, 0x9ABCDEF0);
    check("xlate: write phys 0x300020, read 0x40000020", rd(L + 0x20), 0x9ABCDEF0);
    wr8(L + 0xFFF, 0x5E);
    check("xlate: byte at last offset of page", rd8(PHYS(0) + 0xFFF), 0x5E);
    wr(L + 0x1030, 0xA11A5001);
    check("xlate: alias B write seen through A", rd(L + 0x30), 0xA11A5001);
    wr(L + 0x34, 0xA11A5002);
    check("xlate: alias A write seen through B", rd(L + 0x1034), 0xA11A5002);
    wr(L + 0x2000, 0xBBBB0001);
    check("xlate: next linear page -> other phys page", rd(PHYS(1)), 0xBBBB0001);
    check("xlate: first phys page untouched", rd(PHYS(0)), 0);
}

static void t_pf(void)
{
    const uint32_t NP_PTE = 0x40100000;     /* PT present, PTE 0 */
    const uint32_t NP_PDE = 0x60000000;     /* PDE 0 */
    const uint32_t RO = 0x40003000;         /* supervisor read-only */
    const uint32_t URO = 0x40004000;        /* user read-only */
    const uint32_t URW = 0x40005000;        /* user read-write */
    const uint32_t SCODE = 0x40006000;      /* supervisor code */
    const uint32_t pr = (uint32_t)try_read_insn, pw = (uint32_t)try_write_insn;
    const uint32_t ur = (uint32_t)user_read_insn, uw = (uint32_t)user_write_insn;

    freset();
    check("pf: np read returns FAULTED", try_read(NP_PTE + 0x123), FAULTED);
    check_fault("pf: np read (PTE)", PF, 0, NP_PTE + 0x123, pr, KCODE);
    freset();
    try_read(NP_PDE + 0xABC);
    check_fault("pf: np read (PDE)", PF, 0, NP_PDE + 0xABC, pr, KCODE);
    freset();
    try_write(NP_PTE + 0x456, 1);
    check_fault("pf: np write (PTE)", PF, 2, NP_PTE + 0x456, pw, KCODE);
    freset();
    try_write(NP_PDE + 0xFFC, 1);
    check_fault("pf: np write (PDE)", PF, 2, NP_PDE + 0xFFC, pw, KCODE);

    wr(PHYS(2) + 0x10, 0x11111111);
    map(pd0, RO, PHYS(2), P);
    wr(PHYS(3) + 0x8, 0x33333333);
    map(pd0, URO, PHYS(3), P | U);
    wr(PHYS(4) + 0x8, 0x44444444);
    map(pd0, URW, PHYS(4), P | W | U);
    emit_ret_imm(PHYS(5), 0x5C0DE005);
    map(pd0, SCODE, PHYS(5), P | W);

    set_wp(1);
    freset();
    check("pf: read of RO page", try_read(RO + 0x10), 0x11111111);
    check_nofault("pf: read of RO page");
    freset();
    try_write(RO + 0x10, 0x22222222);
    check_fault("pf: CPL0 write RO, WP=1", PF, 3, RO + 0x10, pw, KCODE);
    check("pf: CPL0 write RO, WP=1: memory unchanged", rd(PHYS(2) + 0x10), 0x11111111);
    freset();
    try_write(URO + 0xFFC, 0x22222222);
    check_fault("pf: CPL0 write user RO, WP=1", PF, 3, URO + 0xFFC, pw, KCODE);
    set_wp(0);
    freset();
    try_write(RO + 0x10, 0x22222222);
    check_nofault("pf: CPL0 write RO, WP=0");
    check("pf: CPL0 write RO, WP=0: memory written", rd(PHYS(2) + 0x10), 0x22222222);
    freset();
    try_write(URO + 0xFFC, 0x23232323);
    check_nofault("pf: CPL0 write user RO, WP=0");
    check("pf: CPL0 write user RO, WP=0: memory written", rd(PHYS(3) + 0xFFC), 0x23232323);
    set_wp(1);

    /* ring 3 */
    freset();
    check("pf: CPL3 read supervisor returns FAULTED", run_user(user_read, 0x40000040), FAULTED);
    check_fault("pf: CPL3 read supervisor", PF, 5, 0x40000040, ur, UCODE);
    freset();
    run_user(user_write, 0x40000044);
    check_fault("pf: CPL3 write supervisor", PF, 7, 0x40000044, uw, UCODE);
    freset();
    run_user(user_write, URO + 0x8);
    check_fault("pf: CPL3 write user RO", PF, 7, URO + 0x8, uw, UCODE);
    check("pf: CPL3 write user RO: memory unchanged", rd(PHYS(3) + 0x8), 0x33333333);
    freset();
    check("pf: CPL3 read user RO", run_user(user_read, URO + 0x8), 0x33333333);
    check_nofault("pf: CPL3 read user RO");
    freset();
    run_user(user_write, URW + 0x8);
    check_nofault("pf: CPL3 write user RW");
    check("pf: CPL3 write user RW: memory written", rd(PHYS(4) + 0x8), 0x55AA55AA);
    freset();
    run_user(user_read, NP_PTE + 0x200);
    check_fault("pf: CPL3 np read (PTE)", PF, 4, NP_PTE + 0x200, ur, UCODE);
    freset();
    run_user(user_write, NP_PTE + 0x204);
    check_fault("pf: CPL3 np write (PTE)", PF, 6, NP_PTE + 0x204, uw, UCODE);
    freset();
    run_user(user_read, NP_PDE + 0x10);
    check_fault("pf: CPL3 np read (PDE)", PF, 4, NP_PDE + 0x10, ur, UCODE);
    freset();
    run_user((void *)SCODE, 0);
    check_fault("pf: CPL3 fetch supervisor", PF, 5, SCODE, SCODE, UCODE);
    freset();
    run_user((void *)(NP_PTE + 0x300), 0);
    check_fault("pf: CPL3 fetch np", PF, 4, NP_PTE + 0x300, NP_PTE + 0x300, UCODE);

    /* rights combine PDE and PTE: PDE supervisor / PTE user */
    *pde_of(pd0, 0x44000000) = (uint32_t)alloc_page() | P | W;
    wr(PHYS(6), 0x66666666);
    map(pd0, 0x44000000, PHYS(6), P | W | U);
    freset();
    run_user(user_read, 0x44000008);
    check_fault("pf: CPL3 read, PDE U=0 PTE U=1", PF, 5, 0x44000008, ur, UCODE);
    check("pf: CPL0 read, PDE U=0 PTE U=1", try_read(0x44000000), 0x66666666);
    /* PDE read-only / PTE writable */
    *pde_of(pd0, 0x48000000) = (uint32_t)alloc_page() | P | U;
    wr(PHYS(7), 0x77777777);
    map(pd0, 0x48000000, PHYS(7), P | W | U);
    freset();
    check("pf: CPL3 read, PDE R/W=0 PTE R/W=1", run_user(user_read, 0x48000000), 0x77777777);
    check_nofault("pf: CPL3 read, PDE R/W=0 PTE R/W=1");
    freset();
    run_user(user_write, 0x48000010);
    check_fault("pf: CPL3 write, PDE R/W=0 PTE R/W=1", PF, 7, 0x48000010, uw, UCODE);
    freset();
    try_write(0x48000020, 0);
    check_fault("pf: CPL0 write WP=1, PDE R/W=0 PTE R/W=1", PF, 3, 0x48000020, pw, KCODE);
}

static void t_ad(void)
{
    const uint32_t L = 0x40007000;
    volatile uint32_t *pte, *pde = pde_of(pd0, L);
    map(pd0, L, PHYS(8), P | W);
    pte = pte_of(pd0, L);

    *pte &= ~(A | D);
    *pde &= ~(A | D);
    invlpg(L);
    (void)rd(L);
    check("ad: read sets PTE.A", *pte & A, A);
    check("ad: read sets PDE.A", *pde & A, A);
    check("ad: read leaves PTE.D clear", *pte & D, 0);
    wr(L, 1);
    check("ad: write sets PTE.D", *pte & D, D);
    check("ad: PTE.A still set", *pte & A, A);
    check("ad: PDE bit 6 not set (4K pages)", *pde & D, 0);

    *pte &= ~(A | D);
    *pde &= ~(A | D);
    invlpg(L);
    wr(L + 4, 2);
    check("ad: first access a write sets PTE.A", *pte & A, A);
    check("ad: first access a write sets PTE.D", *pte & D, D);
    check("ad: first access a write sets PDE.A", *pde & A, A);
    check("ad: first access a write, PDE bit 6 clear", *pde & D, 0);

    /* a write that faults (read-only, WP=1) must not set D */
    map(pd0, L, PHYS(8), P);
    freset();
    try_write(L + 8, 3);
    check("ad: faulting write faulted", last.count, 1);
    check("ad: faulting write leaves PTE.D clear", *pte & D, 0);
    map(pd0, L, PHYS(8), P | W);
}

static void t_pse(void)
{
    const uint32_t L = 0x80000000;
    volatile uint32_t *pde = pde_of(pd0, L);
    write_cr4(read_cr4() | CR4_PSE);
    *pde = 0x400000 | PS | P | W;
    invlpg(L);

    wr(0x523450, 0xB16B0001);
    check("pse: read 0x80123450 = phys 0x523450", rd(L + 0x123450), 0xB16B0001);
    wr(L + 0x3FFFFC, 0xB16B0002);
    check("pse: write 0x803ffffc -> phys 0x7ffffc", rd(0x7FFFFC), 0xB16B0002);
    wr(L + 0x3FF000, 0xB16B0003);
    check("pse: 4K identity alias sees 4M write", rd(0x7FF000), 0xB16B0003);

    *pde &= ~(A | D);
    invlpg(L);
    (void)rd(L + 0x200000);
    check("pse: read sets PDE.A", *pde & A, A);
    check("pse: read leaves PDE.D clear", *pde & D, 0);
    wr(L + 0x200000, 4);
    check("pse: write sets PDE.D", *pde & D, D);

    *pde = 0x400000 | PS | P;     /* read-only 4M page */
    invlpg(L);
    freset();
    try_write(L + 0x200010, 5);
    check_fault("pse: CPL0 write RO 4M page", PF, 3, L + 0x200010, (uint32_t)try_write_insn, KCODE);
    freset();
    run_user(user_read, L + 0x100);
    check_fault("pse: CPL3 read supervisor 4M page", PF, 5, L + 0x100,
                (uint32_t)user_read_insn, UCODE);
    *pde = 0x400000 | PS | P | W | U;
    invlpg(L);
    freset();
    check("pse: CPL3 read user 4M page", run_user(user_read, L + 0x123450), 0xB16B0001);
    check_nofault("pse: CPL3 read user 4M page");
    *pde = 0;
    invlpg(L);
    freset();
    try_read(L + 0x3FF004);
    check_fault("pse: PDE cleared -> np", PF, 0, L + 0x3FF004, (uint32_t)try_read_insn, KCODE);
}

static void t_global(void)
{
    const uint32_t LG = 0x40008000, LN = 0x40009000;
    write_cr4(read_cr4() | CR4_PGE);
    wr(PHYS(9), 0x6A0B0009);
    wr(PHYS(10), 0x6A0B000A);
    wr(PHYS(11), 0x6A0B000B);
    wr(PHYS(12), 0x6A0B000C);
    map(pd0, LG, PHYS(9), P | W | G);
    map(pd0, LN, PHYS(11), P | W);
    check("global: global page reads phys 9", rd(LG), 0x6A0B0009);
    check("global: non-global page reads phys 11", rd(LN), 0x6A0B000B);

    *pte_of(pd0, LG) = PHYS(10) | P | W | G;       /* no INVLPG */
    *pte_of(pd0, LN) = PHYS(12) | P | W;
    write_cr3(read_cr3());
    check("global: non-global re-read after CR3 reload", rd(LN), 0x6A0B000C);
    invlpg(LG);
    check("global: INVLPG of global page -> new PTE", rd(LG), 0x6A0B000A);

    *pte_of(pd0, LG) = PHYS(9) | P | W | G;        /* no INVLPG */
    write_cr4(read_cr4() & ~CR4_PGE);
    write_cr4(read_cr4() | CR4_PGE);
    check("global: CR4.PGE toggle flushes global page", rd(LG), 0x6A0B0009);
}

static void t_invlpg(void)
{
    const uint32_t L = 0x4000A000;
    volatile uint32_t *pte;
    wr(PHYS(13), 0x1A000013);
    wr(PHYS(14), 0x1A000014);
    map(pd0, L, PHYS(13), P | W);
    pte = pte_of(pd0, L);
    check("invlpg: reads phys 13", rd(L), 0x1A000013);
    *pte = PHYS(14) | P | W;
    invlpg(L);
    check("invlpg: remapped -> phys 14", rd(L), 0x1A000014);
    wr(L + 4, 0x1A14AAAA);
    check("invlpg: write after remap lands in phys 14", rd(PHYS(14) + 4), 0x1A14AAAA);
    check("invlpg: phys 13 untouched", rd(PHYS(13) + 4), 0);
    *pte = PHYS(13) | P | W;
    invlpg(L);
    check("invlpg: remapped back -> phys 13", rd(L), 0x1A000013);

    *pte = 0;
    invlpg(L);
    freset();
    try_read(L + 0x44);
    check_fault("invlpg: P cleared -> #PF", PF, 0, L + 0x44, (uint32_t)try_read_insn, KCODE);
    /* SDM 4.10.4.3: P 0->1 needs no invalidation (no not-present caching) */
    *pte = PHYS(14) | P | W;
    freset();
    check("invlpg: P set without INVLPG -> reads phys 14", try_read(L), 0x1A000014);
    check_nofault("invlpg: P set without INVLPG");
}

static void t_cr3(void)
{
    const uint32_t LD = 0x50000000, LC = 0x50001000;
    uint32_t *pd1 = alloc_page(), *pd2 = alloc_page();
    for (int i = 0; i < 1024; i++)
        pd1[i] = pd2[i] = pd0[i];
    wr(PHYS(15), 0xA5000001);
    wr(PHYS(16), 0xA5000002);
    emit_ret_imm(PHYS(17), 0xC0DE0001);
    emit_ret_imm(PHYS(18), 0xC0DE0002);
    map(pd1, LD, PHYS(15), P | W);
    map(pd2, LD, PHYS(16), P | W);
    map(pd1, LC, PHYS(17), P | W);
    map(pd2, LC, PHYS(18), P | W);

    static const char *const nd1[3] = { "cr3: pass 1 space 1 data", "cr3: pass 2 space 1 data", "cr3: pass 3 space 1 data" };
    static const char *const nd2[3] = { "cr3: pass 1 space 2 data", "cr3: pass 2 space 2 data", "cr3: pass 3 space 2 data" };
    static const char *const nc1[3] = { "cr3: pass 1 space 1 code", "cr3: pass 2 space 1 code", "cr3: pass 3 space 1 code" };
    static const char *const nc2[3] = { "cr3: pass 1 space 2 code", "cr3: pass 2 space 2 code", "cr3: pass 3 space 2 code" };
    for (int i = 0; i < 3; i++) {
        write_cr3((uint32_t)pd1);
        check(nd1[i], rd(LD), 0xA5000001);
        check(nc1[i], try_exec(LC), 0xC0DE0001);
        write_cr3((uint32_t)pd2);
        check(nd2[i], rd(LD), 0xA5000002);
        check(nc2[i], try_exec(LC), 0xC0DE0002);
    }
    wr(LD + 4, 0xA5220004);
    check("cr3: write in space 2 lands in its page", rd(PHYS(16) + 4), 0xA5220004);
    check("cr3: space 1 page untouched", rd(PHYS(15) + 4), 0);

    write_cr3((uint32_t)pd0);
    freset();
    try_read(LD);
    check_fault("cr3: back in space 0, data np", PF, 0, LD, (uint32_t)try_read_insn, KCODE);
    freset();
    try_exec(LC);
    check_fault("cr3: back in space 0, code np", PF, 0, LC, LC, KCODE);
    write_cr3((uint32_t)pd1);
    check("cr3: space 1 code again", try_exec(LC), 0xC0DE0001);
    write_cr3((uint32_t)pd0);
}

static void t_smc(void)
{
    const uint32_t LA = 0x4000B000, LB = 0x4000C000, PH = PHYS(19);
    emit_ret_imm(PH, 0x5EC00001);
    map(pd0, LA, PH, P | W);
    map(pd0, LB, PH, P | W);
    uint32_t r = 0;
    for (int i = 0; i < 3; i++)
        r = try_exec(LA);
    check("smc: original via A", r, 0x5EC00001);
    wr(LB + 1, 0x5EC00002);
    check("smc: patched via B, run via A", try_exec(LA), 0x5EC00002);
    wr(LA + 1, 0x5EC00003);
    check("smc: patched via A, run via B", try_exec(LB), 0x5EC00003);
    check("smc: patched via A, run via A", try_exec(LA), 0x5EC00003);
    wr(PH + 1, 0x5EC00004);
    check("smc: patched via identity, run via A", try_exec(LA), 0x5EC00004);
    check("smc: patched via identity, run via B", try_exec(LB), 0x5EC00004);
    /* whole new instructions: xor %eax,%eax; dec %eax; ret */
    wr(LB, 0x48C031 | (0xC3u << 24));
    check("smc: new opcodes via B, run via A", try_exec(LA), 0xFFFFFFFF);

    /* the running code patches itself through alias B, then serializes
       (CPUID, as the SDM asks for a different linear address):
         0x100 push %ebx
         0x101 movl $0x5EC0000A, LB+0x112      (C7 05 disp32 imm32)
         0x10B xor %eax,%eax; cpuid             (31 C0 0F A2)
         0x10F pop %ebx
         0x110 nop
         0x111 mov $0x5EC00009, %eax            (imm at 0x112)
         0x116 ret */
    uint32_t c = PH + 0x100;
    wr8(c + 0x00, 0x53);
    wr8(c + 0x01, 0xC7);
    wr8(c + 0x02, 0x05);
    wr(c + 0x03, LB + 0x112);
    wr(c + 0x07, 0x5EC0000A);
    wr(c + 0x0B, 0xA20FC031);
    wr8(c + 0x0F, 0x5B);
    wr8(c + 0x10, 0x90);
    emit_ret_imm(c + 0x11, 0x5EC00009);
    check("smc: self-patch via alias in running block", try_exec(LA + 0x100), 0x5EC0000A);
    wr(c + 0x12, 0x5EC00009);
    check("smc: self-patch via alias, again", try_exec(LA + 0x100), 0x5EC0000A);
}

/* rep movs fault recording */
static volatile struct {
    uint32_t count, page, map_to, err, cr2, eip, ecx, esi, edi;
} rf;

static int rep_fixup(struct frame *f, uint32_t cr2)
{
    if ((cr2 & ~0xFFFu) != rf.page)
        return 0;
    rf.count++;
    rf.err = f->err;
    rf.cr2 = cr2;
    rf.eip = f->eip;
    rf.ecx = f->ecx;
    rf.esi = f->esi;
    rf.edi = f->edi;
    map(pd0, rf.page, rf.map_to, P | W);
    return 1;
}

static uint32_t cmp_words(uint32_t a, uint32_t b, uint32_t n)
{
    uint32_t bad = 0;
    for (uint32_t i = 0; i < n; i += 4)
        if (rd(a + i) != rd(b + i))
            bad++;
    return bad;
}

static void t_rep(void)
{
    /* rep movsd, 3 pages; destination's third page not present */
    const uint32_t S = 0x40010000, T = 0x40014000;
    for (int i = 0; i < 3; i++) {
        fill(PHYS(20 + i), 4096, 0x7E900000u + (uint32_t)i);
        memset((void *)PHYS(24 + i), 0, 4096);
        map(pd0, S + (uint32_t)i * 0x1000, PHYS(20 + i), P | W);
    }
    map(pd0, T, PHYS(24), P | W);
    map(pd0, T + 0x1000, PHYS(25), P | W);
    map(pd0, T + 0x2000, 0, 0);
    rf.count = 0;
    rf.page = T + 0x2000;
    rf.map_to = PHYS(26);
    pf_fixup = rep_fixup;
    rep_copy_d(T, S, 3072);
    pf_fixup = 0;
    check("rep movsd: faults taken", rf.count, 1);
    check("rep movsd: error code", rf.err, 2);
    check("rep movsd: cr2", rf.cr2, T + 0x2000);
    check("rep movsd: eip at fault", rf.eip, (uint32_t)rep_movsd_insn);
    check("rep movsd: ecx at fault", rf.ecx, 1024);
    check("rep movsd: esi at fault", rf.esi, S + 0x2000);
    check("rep movsd: edi at fault", rf.edi, T + 0x2000);
    check("rep movsd: final ecx", rep_end_ecx, 0);
    check("rep movsd: final esi", rep_end_esi, S + 0x3000);
    check("rep movsd: final edi", rep_end_edi, T + 0x3000);
    check("rep movsd: page 1 mismatches", cmp_words(PHYS(20), PHYS(24), 4096), 0);
    check("rep movsd: page 2 mismatches", cmp_words(PHYS(21), PHYS(25), 4096), 0);
    check("rep movsd: page 3 mismatches", cmp_words(PHYS(22), PHYS(26), 4096), 0);

    /* rep movsb, source's second page not present, unaligned */
    const uint32_t S2 = 0x40018000, T2 = 0x4001A000;
    fill(PHYS(27), 4096, 0x7E910000u);
    fill(PHYS(28), 4096, 0x7E920000u);
    memset((void *)PHYS(29), 0, 4096);
    memset((void *)PHYS(30), 0, 4096);
    map(pd0, S2, PHYS(27), P | W);
    map(pd0, S2 + 0x1000, 0, 0);
    map(pd0, T2, PHYS(29), P | W);
    map(pd0, T2 + 0x1000, PHYS(30), P | W);
    rf.count = 0;
    rf.page = S2 + 0x1000;
    rf.map_to = PHYS(28);
    pf_fixup = rep_fixup;
    rep_copy_b(T2 + 0x101, S2 + 0x801, 0x1000);
    pf_fixup = 0;
    check("rep movsb: faults taken", rf.count, 1);
    check("rep movsb: error code", rf.err, 0);
    check("rep movsb: cr2", rf.cr2, S2 + 0x1000);
    check("rep movsb: eip at fault", rf.eip, (uint32_t)rep_movsb_insn);
    check("rep movsb: ecx at fault", rf.ecx, 0x801);
    check("rep movsb: esi at fault", rf.esi, S2 + 0x1000);
    check("rep movsb: edi at fault", rf.edi, T2 + 0x101 + 0x7FF);
    check("rep movsb: final ecx", rep_end_ecx, 0);
    check("rep movsb: final esi", rep_end_esi, S2 + 0x1801);
    check("rep movsb: final edi", rep_end_edi, T2 + 0x1101);
    uint32_t bad = 0;
    for (uint32_t i = 0; i < 0x1000; i++)
        if (rd8(T2 + 0x101 + i) != rd8(S2 + 0x801 + i))
            bad++;
    check("rep movsb: byte mismatches", bad, 0);
    check("rep movsb: byte before dest untouched", rd8(T2 + 0x100), 0);
    check("rep movsb: byte after dest untouched", rd8(T2 + 0x1101), 0);

    /* rep movsd whose straddling dword hits the not-present page */
    const uint32_t T3 = 0x4001C000;
    memset((void *)PHYS(31), 0, 4096);
    memset((void *)PHYS(32), 0, 4096);
    map(pd0, T3, PHYS(31), P | W);
    map(pd0, T3 + 0x1000, 0, 0);
    rf.count = 0;
    rf.page = T3 + 0x1000;
    rf.map_to = PHYS(32);
    pf_fixup = rep_fixup;
    rep_copy_d(T3 + 0xF02, S, 0x80);     /* dword 0x3F straddles at 0xFFE */
    pf_fixup = 0;
    check("rep movsd straddle: faults taken", rf.count, 1);
    check("rep movsd straddle: cr2", rf.cr2, T3 + 0x1000);
    check("rep movsd straddle: ecx at fault", rf.ecx, 0x80 - 0x3F);
    check("rep movsd straddle: esi at fault", rf.esi, S + 0x3F * 4);
    check("rep movsd straddle: edi at fault", rf.edi, T3 + 0xFFE);
    check("rep movsd straddle: final edi", rep_end_edi, T3 + 0xF02 + 0x200);
    check("rep movsd straddle: mismatches", cmp_words(T3 + 0xF02, S, 0x200), 0);
}

static void t_fetch(void)
{
    const uint32_t NP = 0x40100000;
    freset();
    check("fetch: np returns FAULTED", try_exec(NP + 0x20), FAULTED);
    check_fault("fetch: np (PTE)", PF, 0, NP + 0x20, NP + 0x20, KCODE);
    freset();
    try_exec(0x60002000);
    check_fault("fetch: np (PDE)", PF, 0, 0x60002000, 0x60002000, KCODE);

    /* NOPs at the end of a present page, next page not present */
    const uint32_t X = 0x40020000;
    memset((void *)PHYS(33), 0xCC, 4096);
    for (uint32_t i = 0xFF8; i < 0x1000; i++)
        wr8(PHYS(33) + i, 0x90);
    map(pd0, X, PHYS(33), P | W);
    map(pd0, X + 0x1000, 0, 0);
    freset();
    try_exec(X + 0xFF8);
    check_fault("fetch: nops run into np page", PF, 0, X + 0x1000, X + 0x1000, KCODE);
    emit_ret_imm(PHYS(34), 0xF0000034);
    emit_ret_imm(PHYS(35), 0xF0000035);
    *pte_of(pd0, X + 0x1000) = PHYS(34) | P | W;           /* P 0->1, no INVLPG */
    freset();
    check("fetch: nops then next page mapped", try_exec(X + 0xFF8), 0xF0000034);
    check_nofault("fetch: nops then next page mapped");
    map(pd0, X + 0x1000, PHYS(35), P | W);
    check("fetch: next page remapped", try_exec(X + 0xFF8), 0xF0000035);
    map(pd0, X + 0x1000, 0, 0);
    freset();
    try_exec(X + 0xFF8);
    check_fault("fetch: next page unmapped again", PF, 0, X + 0x1000, X + 0x1000, KCODE);

    /* an instruction straddling into a not-present page */
    const uint32_t Y = 0x40022000;
    memset((void *)PHYS(36), 0xCC, 4096);
    for (uint32_t i = 0xFF0; i < 0xFFE; i++)
        wr8(PHYS(36) + i, 0x90);
    wr8(PHYS(36) + 0xFFE, 0xB8);           /* mov $0x12345678, %eax */
    wr8(PHYS(36) + 0xFFF, 0x78);
    wr(PHYS(37), 0xC3123456);              /* 56 34 12, ret */
    map(pd0, Y, PHYS(36), P | W);
    map(pd0, Y + 0x1000, 0, 0);
    freset();
    try_exec(Y + 0xFF0);
    check_fault("fetch: insn straddling into np page", PF, 0, Y + 0x1000, Y + 0xFFE, KCODE);
    *pte_of(pd0, Y + 0x1000) = PHYS(37) | P | W;           /* P 0->1, no INVLPG */
    check("fetch: straddling insn after mapping", try_exec(Y + 0xFF0), 0x12345678);
    freset();
    run_user((void *)(Y + 0xFF0), 0);
    check_fault("fetch: CPL3 supervisor page", PF, 5, Y + 0xFF0, Y + 0xFF0, UCODE);
    /* user first page, supervisor second: the straddling fetch faults */
    map(pd0, Y, PHYS(36), P | W | U);
    wr8(PHYS(37) + 3, 0xCD);               /* int $0x30 instead of ret */
    wr8(PHYS(37) + 4, 0x30);
    freset();
    run_user((void *)(Y + 0xFF0), 0);
    check_fault("fetch: CPL3 insn straddling into supervisor page", PF, 5, Y + 0x1000,
                Y + 0xFFE, UCODE);
    map(pd0, Y + 0x1000, PHYS(37), P | W | U);
    freset();
    check("fetch: CPL3 straddling insn, both user", run_user((void *)(Y + 0xFF0), 0), 0x12345678);
    check_nofault("fetch: CPL3 straddling insn, both user");
}

static void t_split(void)
{
    const uint32_t Z = 0x40024000;
    const uint32_t pr = (uint32_t)try_read_insn, pw = (uint32_t)try_write_insn;
    memset((void *)PHYS(38), 0xEE, 4096);
    memset((void *)PHYS(39), 0xDD, 4096);
    map(pd0, Z, PHYS(38), P | W);
    map(pd0, Z + 0x1000, 0, 0);
    freset();
    try_read(Z + 0xFFE);
    check_fault("split: read, second page np", PF, 0, Z + 0x1000, pr, KCODE);
    freset();
    try_write(Z + 0xFFD, 0x11223344);
    check_fault("split: write, second page np", PF, 2, Z + 0x1000, pw, KCODE);
    check("split: write, second page np: first page untouched", rd(PHYS(38) + 0xFFC), 0xEEEEEEEE);

    map(pd0, Z + 0x1000, PHYS(39), P);          /* read-only, WP=1 */
    freset();
    try_write(Z + 0xFFE, 0x11223344);
    check_fault("split: write, second page RO", PF, 3, Z + 0x1000, pw, KCODE);
    check("split: write, second page RO: first page untouched", rd(PHYS(38) + 0xFFC), 0xEEEEEEEE);
    check("split: write, second page RO: second page untouched", rd(PHYS(39)), 0xDDDDDDDD);

    map(pd0, Z + 0x1000, PHYS(39), P | W);
    freset();
    try_write(Z + 0xFFE, 0x11223344);
    check_nofault("split: write, both present");
    check("split: low half in first page", rd(PHYS(38) + 0xFFC), 0x3344EEEE);
    check("split: high half in second page", rd(PHYS(39)), 0xDDDD1122);
    check("split: read back across pages", try_read(Z + 0xFFE), 0x11223344);

    map(pd0, Z, 0, 0);
    freset();
    try_read(Z + 0xFFD);
    check_fault("split: read, first page np", PF, 0, Z + 0xFFD, pr, KCODE);
}

static void t_pg(void)
{
    /* linear 0x341000 -> phys 0x342000 (data), 0x343000 -> 0x344000 (code) */
    wr(PHYS(0x41), 0x96000041);
    wr(PHYS(0x42), 0x96000042);
    emit_ret_imm(PHYS(0x43), 0x96C00043);
    emit_ret_imm(PHYS(0x44), 0x96C00044);
    map(pd0, PHYS(0x41), PHYS(0x42), P | W);
    map(pd0, PHYS(0x43), PHYS(0x44), P | W);
    check("pg: on, data via mapping", rd(PHYS(0x41)), 0x96000042);
    check("pg: on, code via mapping", try_exec(PHYS(0x43)), 0x96C00044);

    write_cr0(read_cr0() & ~CR0_PG);
    __asm__ volatile("jmp 1f\n1:");
    uint32_t d0 = rd(PHYS(0x41));
    uint32_t c0 = try_exec(PHYS(0x43));
    wr(PHYS(0x41) + 4, 0x96AAAA41);
    write_cr0(read_cr0() | CR0_PG);
    __asm__ volatile("jmp 1f\n1:");
    check("pg: off, data is physical", d0, 0x96000041);
    check("pg: off, code is physical", c0, 0x96C00043);
    check("pg: off, write went to physical", rd(PHYS(0x42) + 4), 0);
    check("pg: back on, data via mapping", rd(PHYS(0x41)), 0x96000042);
    check("pg: back on, code via mapping", try_exec(PHYS(0x43)), 0x96C00044);
    check("pg: back on, translated test page still mapped", rd(0x40000010), 0x12345678);
    map(pd0, PHYS(0x41), PHYS(0x41), P | W);
    check("pg: identity restored sees paging-off write", rd(PHYS(0x41) + 4), 0x96AAAA41);
    map(pd0, PHYS(0x43), PHYS(0x43), P | W);
}

static void t_spaces(void)
{
    const uint32_t L = 0x58000000;
    uint32_t *pda = alloc_page(), *pdb = alloc_page();
    for (int i = 0; i < 1024; i++)
        pda[i] = pdb[i] = pd0[i];
    wr(PHYS(0x50), 0x5A000050);
    wr(PHYS(0x51), 0x5A000051);
    wr(PHYS(0x52), 0x5A000052);
    map(pda, L, PHYS(0x50), P | W);
    map(pdb, L, PHYS(0x51), P | W);
    volatile uint32_t *pte_a = pte_of(pda, L);
    for (int i = 0; i < 2; i++) {           /* both spaces used before */
        write_cr3((uint32_t)pda);
        (void)rd(L);
        write_cr3((uint32_t)pdb);
        (void)rd(L);
    }
    write_cr3((uint32_t)pda);
    check("spaces: space a reads phys 50", rd(L), 0x5A000050);
    wr(L + 8, 0x5A0A0008);
    check("spaces: write sets A|D in space a", *pte_a & (A | D), A | D);
    write_cr3((uint32_t)pdb);
    check("spaces: space b reads phys 51", rd(L), 0x5A000051);
    *pte_a = PHYS(0x52) | P | W;            /* a's table changed while b runs */
    write_cr3((uint32_t)pda);
    check("spaces: back in a, changed PTE seen", rd(L), 0x5A000052);
    check("spaces: A set by the read, D clear", *pte_a & (A | D), A);
    wr(L + 8, 0x5A520008);
    check("spaces: write lands in phys 52", rd(PHYS(0x52) + 8), 0x5A520008);
    check("spaces: phys 50 keeps the old write", rd(PHYS(0x50) + 8), 0x5A0A0008);
    check("spaces: D set by the write", *pte_a & D, D);

    write_cr3((uint32_t)pdb);
    *pte_a &= ~(A | D);                     /* cleared while b runs */
    write_cr3((uint32_t)pda);
    check("spaces: A/D clear before any access", *pte_a & (A | D), 0);
    (void)rd(L);
    check("spaces: read sets A again", *pte_a & (A | D), A);
    wr(L + 12, 1);
    check("spaces: write sets D again", *pte_a & (A | D), A | D);

    set_wp(1);
    write_cr3((uint32_t)pdb);
    *pte_a &= ~W;                           /* made read-only while b runs */
    write_cr3((uint32_t)pda);
    freset();
    try_write(L + 16, 7);
    check_fault("spaces: now read-only", PF, P | W, L + 16, (uint32_t)try_write_insn, KCODE);
    set_wp(0);

    *pte_a = PHYS(0x51) | P | W;            /* no INVLPG: a reload flushes */
    write_cr3((uint32_t)pda);
    check("spaces: reload of the same CR3 sees the change", rd(L), 0x5A000051);

    /* more address spaces than a VMM might cache, each its own page */
    enum { NS = 10 };
    uint32_t *pds[NS];
    for (int k = 0; k < NS; k++) {
        pds[k] = alloc_page();
        for (int i = 0; i < 1024; i++)
            pds[k][i] = pd0[i];
        pds[k][L >> 22] = 0;                /* own page table for L */
        wr(PHYS(0x60 + k), 0x5C000060 + k);
        map(pds[k], L, PHYS(0x60 + k), P | W);
    }
    static const char *const pass_names[3] = { "spaces: 10 spaces pass 1", "spaces: 10 spaces pass 2",
                                               "spaces: 10 spaces pass 3" };
    for (int pass = 0; pass < 3; pass++) {
        uint32_t bad = 0;
        for (int k = 0; k < NS; k++) {
            write_cr3((uint32_t)pds[k]);
            if (rd(L) != 0x5C000060u + k)
                bad++;
            wr(L + 4, pass * 16 + k);
        }
        check(pass_names[pass], bad, 0);
    }
    uint32_t bad = 0;
    for (int k = 0; k < NS; k++)
        if (rd(PHYS(0x60 + k) + 4) != 2 * 16u + k)
            bad++;
    check("spaces: every space wrote its own page", bad, 0);
    write_cr3((uint32_t)pd0);
}

/* refault: the handler maps the page at REFAULT_L on demand */
#define REFAULT_L 0x40020000u
static uint32_t refault_phys, refault_count;

static int refault_fixup(struct frame *f, uint32_t cr2)
{
    (void)f;
    if ((cr2 & ~0xFFFu) != REFAULT_L)
        return 0;
    refault_count++;
    *pte_of(pd0, REFAULT_L) = refault_phys | P | W | U;
    return 1;
}

static void unmap_refault(void)
{
    *pte_of(pd0, REFAULT_L) = 0;
    invlpg(REFAULT_L);
}

static void t_refault(void)
{
    enum { N = 40 };
    volatile uint32_t *pte = pte_of(pd0, REFAULT_L);
    for (int k = 0; k < 4; k++) {
        fill(PHYS(0x70 + k), 0x1000, 0x7E000070 + k);
        wr(PHYS(0x70 + k), 0x7E000070 + k);
    }
    wr(PHYS(0x74), 0x7E7E7474);
    map(pd0, REFAULT_L + 0x1000, PHYS(0x74), P | W | U);
    pf_fixup = refault_fixup;
    refault_count = 0;

    uint32_t bad = 0;
    for (int i = 0; i < N; i++) {           /* CPL 0 reads */
        refault_phys = PHYS(0x70 + (i & 3));
        unmap_refault();
        if (rd(REFAULT_L) != 0x7E000070u + (i & 3))
            bad++;
    }
    check("refault: CPL 0 reads see the page mapped on demand", bad, 0);
    check("refault: A set, D clear after reads", *pte & (A | D), A);

    for (int i = 0; i < N; i++) {           /* CPL 0 writes */
        refault_phys = PHYS(0x70 + (i & 3));
        unmap_refault();
        wr(REFAULT_L + 8, 0x7E0B0000 + i);
    }
    bad = 0;
    for (int k = 0; k < 4; k++)
        if (rd(PHYS(0x70 + k) + 8) != 0x7E0B0000u + N - 4 + k)
            bad++;
    check("refault: CPL 0 writes land in the page mapped then", bad, 0);
    check("refault: A|D set after a write", *pte & (A | D), A | D);

    bad = 0;
    for (int i = 0; i < N; i++) {           /* CPL 3 reads */
        refault_phys = PHYS(0x70 + (i & 3));
        unmap_refault();
        if (run_user(user_read, REFAULT_L) != 0x7E000070u + (i & 3))
            bad++;
    }
    check("refault: CPL 3 reads see the page mapped on demand", bad, 0);

    bad = 0;
    for (int i = 0; i < N; i++) {           /* a read straddling into L+0x1000 */
        refault_phys = PHYS(0x70 + (i & 3));
        unmap_refault();
        uint32_t want = (rd(PHYS(0x70 + (i & 3)) + 0xFFC) >> 16) | 0x74740000u;
        if (rd(REFAULT_L + 0xFFE) != want)
            bad++;
    }
    check("refault: straddling reads combine both pages", bad, 0);
    check("refault: one fault per access", refault_count, 4 * N);

    unmap_refault();
    freset();
    pf_fixup = 0;
    try_read(REFAULT_L + 0x20);
    check_fault("refault: not present without the handler", PF, 0, REFAULT_L + 0x20, (uint32_t)try_read_insn, KCODE);
    freset();
    check("refault: user read aborts", run_user(user_read, REFAULT_L + 0x24), FAULTED);
    check2("refault: user read aborts", "error code", last.err, U);
    check2("refault: user read aborts", "cr2", last.cr2, REFAULT_L + 0x24);
}

static void t_mmio(void)
{
    const uint32_t LV = 0x40030000, LA = 0x40031000, LU = 0x40032000;
    const uint32_t S = 0x140;           /* scratch cells from row 2 on */
    map(pd0, LV, 0xB8000, P | W);
    map(pd0, LA, 0xA0000, P | W);
    map(pd0, LU, 0xB8000, P | W | U);
    wr(LV + S, 0x1F421F41);
    check("mmio: dword read back through the mapping", rd(LV + S), 0x1F421F41);
    check("mmio: seen at the identity address", rd(0xB8000 + S), 0x1F421F41);
    check("mmio: A|D set in the PTE", *pte_of(pd0, LV) & (A | D), A | D);
    wr8(0xB8000 + S + 2, 0x43);
    check("mmio: byte stored at identity, read through mapping", rd8(LV + S + 2), 0x43);
    check("mmio: movzx word", *(volatile uint16_t *)(LV + S + 2), 0x1F43);
    wr8(LV + S + 0x70, 0x8F);
    check("mmio: movsx byte", (uint32_t)(int32_t) * (volatile int8_t *)(LV + S + 0x70), 0xFFFFFF8F);

    uint32_t d = LV + S + 0x20, c = 4, v = 0x0720;
    __asm__ volatile("cld\n\trep stosw" : "+D"(d), "+c"(c) : "a"(v) : "memory");
    check("mmio: rep stosw", rd(LV + S + 0x20), 0x07200720);
    check("mmio: rep stosw end", rd(LV + S + 0x24), 0x07200720);
    check2("mmio: rep stosw", "edi after", d, LV + S + 0x28);
    check2("mmio: rep stosw", "ecx after", c, 0);
    static const uint32_t src[4] = { 0x0A310A30, 0x0A330A32, 0x0A350A34, 0x0A370A36 };
    uint32_t sp = (uint32_t)src;
    d = LV + S + 0x40;
    c = 4;
    __asm__ volatile("cld\n\trep movsl" : "+S"(sp), "+D"(d), "+c"(c) : : "memory");
    uint32_t bad = 0;
    for (int k = 0; k < 4; k++)
        if (rd(0xB8000 + S + 0x40 + 4 * k) != src[k])
            bad++;
    check("mmio: rep movsd from RAM", bad, 0);

    check("mmio: CPL 3 read through a user mapping", run_user(user_read, LU + S), 0x1F431F41);
    check("mmio: CPL 3 write", run_user(user_write, LU + S + 0x60), 0);
    check("mmio: CPL 3 write seen", rd(0xB8000 + S + 0x60), 0x55AA55AA);

    check("mmio: 0xA0000 not decoded in text mode", rd(LA), 0xFFFFFFFF);
    wr(LA + 4, 0x12345678);
    check("mmio: write there is dropped", rd(LA + 4), 0xFFFFFFFF);

    static const char msg[] = "PAGING MMIO OK";
    for (uint32_t k = 0; msg[k]; k++)
        wr8(LV + 2 * k, (uint8_t)msg[k]), wr8(LV + 2 * k + 1, 0x07);
    check("mmio: message on screen", rd8(0xB8000 + 2 * 7), 'M');
}

int kmain(void);
int kmain(void)
{
    puts_serial("paging: 32-bit two-level paging tests\n");
    setup_descriptors();
    setup_paging();
    t_harness();
    t_xlate();
    t_pf();
    t_ad();
    t_pse();
    t_global();
    t_invlpg();
    t_cr3();
    t_smc();
    t_rep();
    t_fetch();
    t_split();
    t_pg();
    t_spaces();
    t_refault();
    t_mmio();
    put_dec(n_pass);
    puts_serial(" passed, ");
    put_dec(n_fail);
    puts_serial(" failed\n");
    return (int)n_fail;
}
