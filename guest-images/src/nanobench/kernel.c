/*
 * nanobench: cycles per privileged operation, in the style of the
 * nanobenchmarks of Adams & Agesen, "A Comparison of Software and Hardware
 * Techniques for x86 Virtualization" (ASPLOS 2006).
 *
 * Sets up its own GDT (flat ring-0/ring-3 code and data, a TSS with
 * SS0:ESP0) and IDT (INT 0x80 and INT 0x81 with DPL 3, a #DE handler that
 * skips the faulting DIV, a #PF handler for the pgfault loop, everything
 * else fatal), turns paging on (4 KiB pages, see setup_paging), then times
 * loops with RDTSC (see cpu.S). Each loop runs `reps` times, interleaved
 * with the others; the result is (min loop - min empty loop) / iterations,
 * rounded. Every loop runs n iterations except the costly paging ones
 * (pgfault, ptemod, cr3, ctxsw), which run pn; their empty-loop share is
 * scaled to pn.
 *
 * Command line: n=ITERATIONS (default 100000), pn=ITERATIONS for the
 * paging rows (default n/10), reps=R (default 5), ser=0|1|2 (RDTSC
 * serialization: none, CPUID (default), LFENCE), verbose=1 (print every
 * raw loop time), paging=0 (leave paging off and run only the rows that do
 * not need it, to see what paging costs the others), only=K (run only row K,
 * counted from 1, besides the two empty loops: for profiling one path).
 *
 * Output: one "NAME: C cycles" line per benchmark, "empty: C cycles" being
 * the raw per-iteration cost of the empty loop. Exit value 0; an unexpected
 * exception prints its frame and exits with 3.
 */
#include "rt.h"
#include "nanobench.h"

uint64_t nb_empty(uint32_t n);
uint64_t nb_syscall(uint32_t n);
uint64_t nb_clisti(uint32_t n);
uint64_t nb_pushfpopf(uint32_t n);
uint64_t nb_sgdt(uint32_t n);
uint64_t nb_sidt(uint32_t n);
uint64_t nb_sldt(uint32_t n);
uint64_t nb_str(uint32_t n);
uint64_t nb_smsw(uint32_t n);
uint64_t nb_movsreg(uint32_t n);
uint64_t nb_pushsreg(uint32_t n);
uint64_t nb_in(uint32_t n);
uint64_t nb_out(uint32_t n);
uint64_t nb_callret(uint32_t n);
uint64_t nb_divzero(uint32_t n);
uint64_t nb_irq(uint32_t n);
uint64_t nb_ipi(uint32_t n);
uint64_t nb_apictimer(uint32_t n);
void apic_ipi_handler(void);
void apic_timer_handler(void);
void irq4_handler(void);
uint64_t nb_pgfault(uint32_t n);
uint64_t nb_ptemod(uint32_t n);
uint64_t nb_cr3(uint32_t n);
uint64_t nb_ctxsw(uint32_t n);

void load_segments(void);
uint64_t run_at_ring3(uint64_t (*fn)(uint32_t), uint32_t arg);
extern char isr_stubs[], syscall_handler[], de_handler[], pf_handler[], ring3_return[];
extern uint32_t ser_mode, pf_count;
/* cpu.S: the page-aligned blocks used at CPL 3 */
extern char user_text_start[], user_text_end[], user_data_start[], user_data_end[];
extern char user_bss_start[], user_bss_end[];
/* link.ld */
extern char __load_start[], __bss_end[];

/* ---- descriptor tables ------------------------------------------------ */

#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_TSS   0x28

struct tss {
    uint32_t link, esp0, ss0, esp1, ss1, esp2, ss2, cr3, eip, eflags;
    uint32_t eax, ecx, edx, ebx, esp, ebp, esi, edi;
    uint32_t es, cs, ss, ds, fs, gs, ldt;
    uint16_t trap, iomap_base;
} __attribute__((packed));

struct dtr {
    uint16_t limit;
    uint32_t base;
} __attribute__((packed));

static uint64_t gdt[6] __attribute__((aligned(8)));
static uint64_t idt[256] __attribute__((aligned(8)));
static struct tss tss __attribute__((aligned(128)));
static uint8_t int_stack[8192] __attribute__((aligned(16)));   /* ESP0 */

static uint64_t seg_desc(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags)
{
    return (uint64_t)(limit & 0xFFFF) | (uint64_t)(base & 0xFFFFFF) << 16 | (uint64_t)access << 40 |
           (uint64_t)((limit >> 16) & 0xF) << 48 | (uint64_t)(flags & 0xF) << 52 | (uint64_t)(base >> 24) << 56;
}

/* 32-bit interrupt gate (IF cleared on entry) with the given DPL. */
static uint64_t int_gate(void *handler, int dpl)
{
    uint32_t off = (uint32_t)handler;
    return (uint64_t)(off & 0xFFFF) | (uint64_t)SEL_KCODE << 16 | (uint64_t)(0x8E | dpl << 5) << 40 |
           (uint64_t)(off >> 16) << 48;
}

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }

static void setup_cpu(void)
{
    gdt[0] = 0;
    gdt[1] = seg_desc(0, 0xFFFFF, 0x9A, 0xC);   /* 0x08 ring-0 code, 4 GiB */
    gdt[2] = seg_desc(0, 0xFFFFF, 0x92, 0xC);   /* 0x10 ring-0 data */
    gdt[3] = seg_desc(0, 0xFFFFF, 0xFA, 0xC);   /* 0x1B ring-3 code */
    gdt[4] = seg_desc(0, 0xFFFFF, 0xF2, 0xC);   /* 0x23 ring-3 data */
    tss.ss0 = SEL_KDATA;
    tss.esp0 = (uint32_t)(int_stack + sizeof(int_stack));
    tss.iomap_base = sizeof(tss);                /* no I/O bitmap */
    gdt[5] = seg_desc((uint32_t)&tss, sizeof(tss) - 1, 0x89, 0x0);   /* 0x28 TSS */

    struct dtr g = { sizeof(gdt) - 1, (uint32_t)gdt };
    __asm__ volatile("lgdt %0" :: "m"(g));
    load_segments();
    __asm__ volatile("ltr %w0" :: "r"(SEL_TSS));

    for (int v = 0; v < 256; v++)
        idt[v] = int_gate(isr_stubs + 16 * v, 0);
    idt[0] = int_gate(de_handler, 0);
    idt[0x80] = int_gate(syscall_handler, 3);
    idt[0x81] = int_gate(ring3_return, 3);
    idt[14] = int_gate(pf_handler, 0);
    struct dtr i = { sizeof(idt) - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" :: "m"(i));

    /* The BIOS leaves the PIT ticking into the 8259s (IRQ0 = vector 8);
       mask every IRQ so the STI in cli+sti lets nothing in. Harmless where
       there is no PIC (writes to unclaimed ports vanish). */
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);

    /* For the irq row: PICs remapped to 0x20/0x28 (still all masked),
       COM1 IRQ 4 at vector 0x24, OUT2 set so the UART drives its IRQ line. */
    static const uint8_t icw[] = { 0x11, 0x20, 0x04, 0x01 };
    outb(0x20, icw[0]); outb(0x21, icw[1]); outb(0x21, icw[2]); outb(0x21, icw[3]);
    outb(0xA0, 0x11); outb(0xA1, 0x28); outb(0xA1, 0x02); outb(0xA1, 0x01);
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
    idt[0x24] = int_gate(irq4_handler, 0);
    idt[0x50] = int_gate(apic_ipi_handler, 0);
    idt[0x51] = int_gate(apic_timer_handler, 0);
    outb(0x3F9, 0x00);          /* IER: no UART interrupts yet */
    outb(0x3FC, 0x08);          /* MCR: OUT2 */
}

struct exc_frame {
    uint32_t edi, esi, ebp, esp_pushal, ebx, edx, ecx, eax;
    uint32_t vector, error, eip, cs, eflags, user_esp, user_ss;
};

void exc_fatal(struct exc_frame *f) __attribute__((noreturn));
void exc_fatal(struct exc_frame *f)
{
    puts_serial("\nunexpected exception "); put_dec(f->vector);
    puts_serial(" error "); put_hex(f->error);
    puts_serial(" at "); put_hex(f->cs); putc_serial(':'); put_hex(f->eip);
    puts_serial(" eflags "); put_hex(f->eflags);
    if (f->vector == 14) {
        uint32_t cr2;
        __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
        puts_serial(" cr2 "); put_hex(cr2);
    }
    if (f->cs & 3) {
        puts_serial(" user ss:esp "); put_hex(f->user_ss); putc_serial(':'); put_hex(f->user_esp);
    }
    putc_serial('\n');
    exit(3);
}

/* ---- paging ------------------------------------------------------------- */

#define PG(x) __attribute__((aligned(PAGE_SIZE))) x

/* Used by cpu.S too (identity-mapped, so their addresses are physical). */
PG(uint32_t kernel_pd[1024]);
PG(static uint32_t kernel_pt[1024]);   /* linear 0-4 MiB, identity */
PG(uint32_t test_pt[1024]);            /* linear TEST_VA + 0-4 MiB */
PG(uint32_t ctx_pd[2][1024]);          /* ctxsw's two address spaces */
PG(static uint32_t ctx_pt[2][1024]);   /* their CTX_VA slot */
PG(static uint32_t apic_pt[1024]);     /* the local APIC's page, identity */
#define APIC_PAGE 0xFEE00000u
#define PTE_PCD 0x10
uint32_t ptemod_flip;                  /* PTEMOD_VA's two frames, XORed */

/* Backing frames (identity-mapped themselves, as part of .bss). */
PG(static uint8_t pgf_frames[2][PAGE_SIZE]);
PG(static uint8_t ptemod_frames[2][PAGE_SIZE]);
PG(static uint8_t ctx_frames[2][CTX_PAGES][PAGE_SIZE]);

#define PDI(va) ((uint32_t)(va) >> 22)
#define PTI(va) (((uint32_t)(va) >> 12) & 1023)

static int in_range(uint32_t a, const char *lo, const char *hi)
{
    return a >= (uint32_t)lo && a < (uint32_t)hi;
}

/*
 * Identity-map the kernel image (__load_start up to the end of .bss; it must
 * fit below 4 MiB) with 4 KiB supervisor pages, except the user blocks of
 * cpu.S, which get user pages; everything below 1 MiB stays unmapped (the
 * command line was read before this). Build the benchmark tables (see
 * nanobench.h), load CR3 and set CR0.PG and CR0.WP. All pages are
 * writable; page-directory entries allow everything (the PTEs decide).
 */
static void setup_paging(void)
{
    if ((uint32_t)__bss_end > (4u << 20)) {
        puts_serial("nanobench: image above 4 MiB, cannot identity-map it\n");
        exit(3);
    }
    for (uint32_t a = (uint32_t)__load_start; a < (uint32_t)__bss_end; a += PAGE_SIZE) {
        uint32_t pte = a | PTE_P | PTE_W;
        if (in_range(a, user_text_start, user_text_end) || in_range(a, user_data_start, user_data_end) ||
            in_range(a, user_bss_start, user_bss_end))
            pte |= PTE_U;
        kernel_pt[PTI(a)] = pte;
    }
    kernel_pd[0] = (uint32_t)kernel_pt | PTE_P | PTE_W | PTE_U;

    /* pgfault: two user pages, not present until pf_handler maps one. */
    for (int k = 0; k < 2; k++)
        test_pt[PGF_IDX + k] = (uint32_t)pgf_frames[k] | PTE_W | PTE_U;
    /* ptemod: a present supervisor page whose frame nb_ptemod flips. */
    test_pt[PTEMOD_IDX] = (uint32_t)ptemod_frames[0] | PTE_P | PTE_W;
    ptemod_flip = (uint32_t)ptemod_frames[0] ^ (uint32_t)ptemod_frames[1];
    kernel_pd[PDI(TEST_VA)] = (uint32_t)test_pt | PTE_P | PTE_W | PTE_U;

    /* The local APIC's registers (uncached), for the ipi and apic timer rows. */
    apic_pt[PTI(APIC_PAGE)] = APIC_PAGE | PTE_P | PTE_W | PTE_PCD;
    kernel_pd[PDI(APIC_PAGE)] = (uint32_t)apic_pt | PTE_P | PTE_W;

    /* ctxsw: two directories sharing the kernel's page tables (copies of
       kernel_pd), each mapping its own CTX_PAGES frames at CTX_VA. */
    for (int s = 0; s < 2; s++) {
        memcpy(ctx_pd[s], kernel_pd, sizeof(kernel_pd));
        for (int i = 0; i < CTX_PAGES; i++) {
            ctx_pt[s][i] = (uint32_t)ctx_frames[s][i] | PTE_P | PTE_W;
            ((volatile uint32_t *)ctx_frames[s][i])[0] = s << 16 | i;   /* tag */
        }
        ctx_pd[s][PDI(CTX_VA)] = (uint32_t)ctx_pt[s] | PTE_P | PTE_W;
    }

    uint32_t cr0;
    __asm__ volatile("mov %0, %%cr3" :: "r"(kernel_pd) : "memory");
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    cr0 |= CR0_PG | CR0_WP;
    __asm__ volatile("mov %0, %%cr0" :: "r"(cr0) : "memory");
}

/* Before each pgfault run: both pages not present, out of the TLB. */
static void pgfault_reset(void)
{
    pf_count = 0;
    for (int k = 0; k < 2; k++) {
        test_pt[PGF_IDX + k] &= ~PTE_P;
        __asm__ volatile("invlpg (%0)" :: "r"(PGF_VA + k * PAGE_SIZE) : "memory");
    }
}

/* Read the first dword of CTX_VA page i in address space cr3 (at ring 0). */
static uint32_t ctx_probe(uint32_t cr3, uint32_t i)
{
    uint32_t old, v;
    __asm__ volatile("mov %%cr3, %0\n\t"
                     "mov %2, %%cr3\n\t"
                     "mov (%3), %1\n\t"
                     "mov %0, %%cr3"
                     : "=&r"(old), "=&r"(v)
                     : "r"(cr3), "r"(CTX_VA + i * PAGE_SIZE)
                     : "memory");
    return v;
}

/* Check that paging took and that the two address spaces differ. */
static void check_paging(void)
{
    for (uint32_t s = 0; s < 2; s++)
        for (uint32_t i = 0; i < CTX_PAGES; i += CTX_PAGES - 1) {
            uint32_t got = ctx_probe((uint32_t)ctx_pd[s], i);
            if (got != (s << 16 | i)) {
                puts_serial("nanobench: ctxsw space "); put_dec(s);
                puts_serial(" page "); put_dec(i);
                puts_serial(" reads "); put_hex(got); putc_serial('\n');
                exit(3);
            }
        }
}

/* ---- benchmarks --------------------------------------------------------- */

struct bench {
    const char *name;
    uint64_t (*fn)(uint32_t n);
    int ring3;          /* run the loop at CPL 3 */
    int paging;         /* costly: pn iterations instead of n */
    void (*prep)(void); /* before every run, untimed (or 0) */
};

static const struct bench benches[] = {
    /* rows with paging = 1 must come last (see paging=0 in kmain) */
    { "empty",      nb_empty,     0, 0, 0 },   /* baseline, must stay first */
    { "empty3",     nb_empty,     1, 0, 0 },   /* baseline for the ring-3 rows */
    { "syscall",    nb_syscall,   1, 0, 0 },   /* INT 0x80 + IRET, CPL 3 -> 0 -> 3 */
    { "cli+sti",    nb_clisti,    0, 0, 0 },
    { "pushf+popf", nb_pushfpopf, 0, 0, 0 },
    { "sgdt",       nb_sgdt,      0, 0, 0 },   /* SGDT m */
    { "sidt",       nb_sidt,      0, 0, 0 },   /* SIDT m */
    { "sldt",       nb_sldt,      0, 0, 0 },   /* SLDT m16 */
    { "str",        nb_str,       0, 0, 0 },   /* STR r32 */
    { "smsw",       nb_smsw,      0, 0, 0 },   /* SMSW r32 */
    { "mov r,sreg", nb_movsreg,   0, 0, 0 },   /* MOV r32, DS */
    { "push sreg",  nb_pushsreg,  0, 0, 0 },   /* PUSH DS + POP r32 */
    { "in",         nb_in,        0, 0, 0 },   /* inb 0x3FD (UART LSR) */
    { "out",        nb_out,       0, 0, 0 },   /* outb 0x80 (POST port) */
    { "call/ret",   nb_callret,   0, 0, 0 },
    { "divzero",    nb_divzero,   0, 0, 0 },   /* DIV by 0, #DE, skip, IRET */
    /* External interrupt round trip: OUT enabling the UART's transmitter-
       empty interrupt raises IRQ 4 at once; delivery through the PIC and the
       IDT; the handler disables it again, EOIs and IRETs. */
    { "irq",        nb_irq,       0, 0, 0 },
    /* Local APIC rows (skipped without an APIC): a self-IPI round trip
       (ICR write, delivery, EOI, IRET), and a one-shot timer of count 1. */
    { "ipi",        nb_ipi,       0, 0, 0 },
    { "apic timer", nb_apictimer, 0, 0, 0 },
    /* #PF from CPL 3 on a not-present user page, handler maps it, IRET,
       read completes; plus the unmap (clear P + INVLPG) of the other page */
    { "pgfault",    nb_pgfault,   1, 1, pgfault_reset },
    { "ptemod",     nb_ptemod,    0, 1, 0 },   /* PTE store + INVLPG */
    { "cr3",        nb_cr3,       0, 1, 0 },   /* MOV to CR3, same value */
    { "ctxsw",      nb_ctxsw,     0, 1, 0 },   /* CR3 switch + 64 page reads */
};
#define NBENCH (sizeof(benches) / sizeof(benches[0]))

static uint64_t run(const struct bench *b, uint32_t n)
{
    if (b->prep)
        b->prep();
    uint64_t t = b->ring3 ? run_at_ring3(b->fn, n) : b->fn(n);
    if (b->fn == nb_pgfault && pf_count != n) {
        puts_serial("nanobench: pgfault took "); put_dec(pf_count);
        puts_serial(" faults in "); put_dec(n); puts_serial(" iterations\n");
        exit(3);
    }
    return t;
}

/* (hi:lo) / d for d != 0, quotient < 2^64, without libgcc. */
static uint64_t div64(uint64_t v, uint32_t d)
{
    uint32_t hi = (uint32_t)(v >> 32), lo = (uint32_t)v, qhi, qlo, r;
    qhi = hi / d;
    r = hi % d;
    __asm__("divl %4" : "=a"(qlo), "=d"(r) : "a"(lo), "d"(r), "rm"(d));
    return (uint64_t)qhi << 32 | qlo;
}

/* round((t - base) / n), or a negative value if t < base */
static int32_t per_op(uint64_t t, uint64_t base, uint32_t n)
{
    if (t >= base)
        return (int32_t)div64(t - base + n / 2, n);
    return -(int32_t)div64(base - t + n / 2, n);
}

static void put_int(int32_t v)
{
    if (v < 0) {
        putc_serial('-');
        v = -v;
    }
    put_dec((uint32_t)v);
}

int kmain(uint32_t magic, uint32_t info)
{
    (void)magic; (void)info;
    uint32_t n = cmdline_uint("n", 100000);
    uint32_t reps = cmdline_uint("reps", 5);
    uint32_t verbose = cmdline_uint("verbose", 0);
    uint32_t only = cmdline_uint("only", 0);
    ser_mode = cmdline_uint("ser", 1);
    if (n == 0)
        n = 1;
    uint32_t paging = cmdline_uint("paging", 1);
    uint32_t pn = cmdline_uint("pn", n / 10);
    if (pn == 0)
        pn = 1;
    if (reps == 0)
        reps = 1;
    if (ser_mode > 2)
        ser_mode = 1;

    setup_cpu();
    if (paging) {
        setup_paging();
        check_paging();
    }

    static const char *const ser_names[] = { "none", "cpuid", "lfence" };
    puts_serial("nanobench: n="); put_dec(n);
    if (paging) {
        puts_serial(" pn="); put_dec(pn);
    }
    puts_serial(" reps="); put_dec(reps);
    puts_serial(" serialize="); puts_serial(ser_names[ser_mode]);
    if (!paging)
        puts_serial(" paging=off");
    putc_serial('\n');

    /* paging=0: old rows only, with paging off (the paging rows come last) */
    unsigned nb = 0;
    while (nb < NBENCH && (paging || !benches[nb].paging))
        nb++;

    /* Warm-up: translate/cache every loop and handler once. */
    uint32_t ca, cb, cc, cd;
    __asm__ volatile("cpuid" : "=a"(ca), "=b"(cb), "=c"(cc), "=d"(cd) : "a"(1));
    int has_apic = (cd >> 9) & 1;
#define NEEDS_APIC(b) (benches[b].fn == nb_ipi || benches[b].fn == nb_apictimer)
#define SKIP(b) ((only != 0 && (b) >= 2 && (b) + 1 != only) || (NEEDS_APIC(b) && !has_apic))
    for (unsigned b = 0; b < nb; b++) {
        if (SKIP(b))
            continue;
        uint32_t m = benches[b].paging ? pn : n;
        run(&benches[b], m < 1000 ? m : 1000);
    }

    uint64_t best[NBENCH];
    for (unsigned b = 0; b < nb; b++)
        best[b] = ~0ULL;
    /* Interleave the benchmarks so slow drift (other load on the host)
       hits all of them alike; keep each one's minimum. */
    for (uint32_t r = 0; r < reps; r++)
        for (unsigned b = 0; b < nb; b++) {
            if (SKIP(b))
                continue;
            uint64_t t = run(&benches[b], benches[b].paging ? pn : n);
            if (t < best[b])
                best[b] = t;
            if (verbose) {
                puts_serial("  rep "); put_dec(r); putc_serial(' ');
                puts_serial(benches[b].name); puts_serial(": ");
                put_dec64(t); putc_serial('\n');
            }
        }

    for (unsigned b = 0; b < nb; b++) {
        if (SKIP(b))
            continue;
        const struct bench *x = &benches[b];
        puts_serial(x->name);
        puts_serial(": ");
        uint32_t m = x->paging ? pn : n;
        /* the matching empty loop's time, scaled from n to m iterations */
        uint64_t base = div64(best[x->ring3 ? 1 : 0] * m, n);
        if (b < 2) /* baselines: raw cycles per iteration */
            put_int(per_op(best[b], 0, n));
        else
            put_int(per_op(best[b], base, m));
        puts_serial(" cycles\n");
    }
    return 0;
}
