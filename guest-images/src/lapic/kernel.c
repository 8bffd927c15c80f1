/*
 * lapic: the local APIC (xAPIC at 0xFEE00000) of a PC with one CPU, as a
 * kernel finds it without a BIOS of its own (QEMU's `-M pc` after SeaBIOS;
 * btvisor with `-M pc`). Groups:
 *   reset  ID, version, TPR, LDR/DFR, SVR, the LVT entries, the timer
 *          registers, the APIC base MSR, CPUID.1 (APIC bit, initial ID)
 *   reg    register read-back: TPR, SVR, LDR, DFR, the divide register,
 *          read-only registers ignoring writes
 *   ipi    self-IPIs (shorthand and physical destination): delivery, ISR
 *          while in service, EOI, the idle ICR, TPR masking and PPR,
 *          nesting by priority class, an illegal vector in ESR
 *   timer  one-shot and periodic modes, masking, the current count, the
 *          divide configuration (measured against PIT channel 2)
 *   lint0  the 8259's INTR through LINT0 (ExtINT), and masked
 *   nmi    an NMI IPI (physical destination) with IF clear; a second NMI
 *          sent from the handler waits for its IRET
 *   reloc  (only with `reloc=1` on the command line) the APIC base MSR:
 *          the register page moved to 0xFEF00000 answers there (ID,
 *          version, a self-IPI), the old page reads as nothing, the page
 *          moves back; a global disable clears CPUID.1's APIC bit. QEMU
 *          does not model relocation (it keeps the page where it was), so
 *          that golden (expected/lapic-reloc.out) has the SDM's values.
 * Timing is checked against generous bounds and only pass/fail printed.
 * The golden output is QEMU 7.2's (`-M pc`, after SeaBIOS) except three
 * lines where QEMU departs from the SDM (marked below). QEMU also raised a
 * stray #GP (error code 0xfffffffa) in the lint0 group in one run of three
 * here; btvisor's runs are all alike.
 * Prints "PASS|FAIL name got X want Y", then "N passed, M failed"; exits
 * with V=M. An unexpected exception prints its frame and exits with 255.
 */
#define APIC_VECTOR_BASE 0x40
#include "apic_test.h"

/* ---- interrupts ----------------------------------------------------------- */
static volatile uint32_t cnt[256];
static volatile uint32_t isr_seen;      /* ISR word of the vector in service, at entry */
static volatile uint32_t nested_vec, order;
static volatile int send_in_handler;     /* vector to self-IPI from the 0x40 handler */
static volatile int illegal_probe;       /* vector 5 may arrive as an interrupt */
static volatile int nmi_again;           /* the NMI handler sends another NMI */
static volatile uint32_t nmi_in_handler; /* NMIs taken when the handler's wait ended */

static void self_ipi(uint32_t vector) { apic_write(R_ICR_LO, ICR_SELF | vector); }

void isr_dispatch(struct frame *f);
void isr_dispatch(struct frame *f)
{
    uint32_t v = f->vec;
    if (v == 2) {
        cnt[2]++;
        if (nmi_again) {
            nmi_again = 0;
            apic_write(R_ICR_HI, 0);
            apic_write(R_ICR_LO, 4u << 8);
            for (volatile int k = 0; k < 2000; k++)
                ;
            nmi_in_handler = cnt[2];
        }
        return;
    }
    if (v == 0x05 && illegal_probe) {
        cnt[v]++;
        return;
    }
    if (v < 0x20) {
        puts_serial("FAIL unexpected exception vec ");
        put_hex(v);
        puts_serial(" err ");
        put_hex(f->err);
        puts_serial(" eip ");
        put_hex(f->eip);
        putc_serial('\n');
        exit(255);
    }
    cnt[v]++;
    order = order * 16 + (v & 0xF);
    if (v >= 0x20 && v < 0x30) {         /* 8259: through LINT0 */
        outb(0x20, 0x20);
        return;
    }
    if (v == 0xFF)                        /* spurious: no EOI */
        return;
    isr_seen = apic_read(R_ISR + (v / 32) * 0x10);
    if (v == 0x40 && send_in_handler) {
        int s = send_in_handler;
        send_in_handler = 0;
        __asm__ volatile("sti");
        self_ipi((uint32_t)s);
        for (volatile int k = 0; k < 2000; k++)
            ;
        nested_vec = cnt[s];
        __asm__ volatile("cli");
    }
    apic_write(R_EOI, 0);
}

/* ---- groups -------------------------------------------------------------- */
static void reset_values(void)
{
    uint32_t a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1));
    check("reset: CPUID.1 EDX APIC bit", (d >> 9) & 1, 1);
    check("reset: CPUID.1 EBX initial APIC ID", b >> 24, 0);
    uint64_t base = rdmsr(0x1B);
    check("reset: APIC base MSR (base, BSP, enable)", (uint32_t)base, 0xFEE00900);
    check("reset: ID", apic_read(R_ID), 0);
    check("reset: version", apic_read(R_VER), 0x00050014);
    check("reset: TPR", apic_read(R_TPR), 0);
    check("reset: PPR", apic_read(R_PPR), 0);
    check("reset: LDR", apic_read(R_LDR), 0);
    check("reset: DFR", apic_read(R_DFR), 0xFFFFFFFF);
    check("reset: SVR", apic_read(R_SVR), 0x000001FF);
    check("reset: LVT timer", apic_read(R_LVT_TIMER), 0x00010000);
    check("reset: LVT thermal", apic_read(R_LVT_THERMAL), 0x00010000);
    check("reset: LVT perf", apic_read(R_LVT_PERF), 0x00010000);
    check("reset: LVT LINT0 (ExtINT, level)", apic_read(R_LVT_LINT0), 0x00008700);
    check("reset: LVT LINT1 (NMI, level)", apic_read(R_LVT_LINT1), 0x00008400);
    check("reset: LVT error", apic_read(R_LVT_ERROR), 0x00010000);
    check("reset: timer initial count", apic_read(R_TMICT), 0);
    check("reset: timer current count", apic_read(R_TMCCT), 0);
    check("reset: divide configuration", apic_read(R_TDCR), 0);
    check("reset: ESR", apic_read(R_ESR), 0);
    uint32_t any = 0;
    for (int k = 0; k < 8; k++)
        any |= apic_read(R_ISR + k * 0x10) | apic_read(R_IRR + k * 0x10) | apic_read(R_TMR + k * 0x10);
    check("reset: ISR, IRR, TMR clear", any, 0);
}

static void registers(void)
{
    apic_write(R_TPR, 0x35);
    check("reg: TPR read-back", apic_read(R_TPR), 0x35);
    check("reg: PPR follows TPR (nothing in service)", apic_read(R_PPR), 0x35);
    apic_write(R_TPR, 0);
    apic_write(R_LDR, 0x12345678);
    check("reg: LDR keeps bits 31-24", apic_read(R_LDR), 0x12000000);
    apic_write(R_LDR, 0);
    apic_write(R_DFR, 0x0FFFFFFF);
    check("reg: DFR model bits (cluster)", apic_read(R_DFR), 0x0FFFFFFF);
    apic_write(R_DFR, 0xFFFFFFFF);
    apic_write(R_TDCR, 0xB);
    check("reg: divide configuration read-back", apic_read(R_TDCR), 0xB);
    apic_write(R_TDCR, 0xFFFFFFFF);
    check("reg: divide configuration keeps bits 0,1,3", apic_read(R_TDCR), 0xB);
    apic_write(R_TDCR, 0);
    apic_write(R_VER, 0);
    check("reg: version is read-only", apic_read(R_VER), 0x00050014);
    apic_write(R_SVR, 0x0FF);
    check("reg: SVR software disable", apic_read(R_SVR), 0x0FF);
    /* SDM 10.4.7.2: software-disabled, every LVT entry is masked (QEMU
       leaves the mask bits alone: the golden output has the SDM's value). */
    check("reg: LVT LINT0 masked while disabled", apic_read(R_LVT_LINT0), 0x00018700);
    apic_write(R_SVR, 0x1FF);
    apic_write(R_LVT_LINT0, 0x8700);
    check("reg: LVT LINT0 after enable", apic_read(R_LVT_LINT0), 0x8700);
}

static void ipis(void)
{
    cnt[0x41] = 0;
    isr_seen = 0;
    sti();
    self_ipi(0x41);
    wait_count(&cnt[0x41], 1, 50);
    cli();
    check("ipi: self-IPI (shorthand) delivered", cnt[0x41], 1);
    check("ipi: ISR bit set in the handler", isr_seen, 1u << 1);
    check("ipi: ICR idle after the send", apic_read(R_ICR_LO) & ICR_BUSY, 0);
    check("ipi: ICR low keeps the command", apic_read(R_ICR_LO), ICR_SELF | 0x41);
    check("ipi: ISR clear after EOI", apic_read(R_ISR + 0x20), 0);

    /* physical destination = own ID, no shorthand */
    apic_write(R_ICR_HI, 0);
    apic_write(R_ICR_LO, 0x42);
    sti();
    wait_count(&cnt[0x42], 1, 50);
    cli();
    check("ipi: physical destination 0 delivered", cnt[0x42], 1);

    /* TPR masks a lower priority class; IRR holds it */
    apic_write(R_TPR, 0x50);
    sti();
    self_ipi(0x45);
    wait_count(&cnt[0x45], 1, 20);
    cli();
    check("ipi: class 4 held while TPR = 0x50", cnt[0x45], 0);
    check("ipi: held in IRR", apic_read(R_IRR + 0x20), 1u << 5);
    check("ipi: PPR = TPR", apic_read(R_PPR), 0x50);
    sti();
    apic_write(R_TPR, 0);
    wait_count(&cnt[0x45], 1, 50);
    cli();
    check("ipi: delivered once TPR drops", cnt[0x45], 1);
    check("ipi: IRR clear", apic_read(R_IRR + 0x20), 0);

    /* nesting: a higher class preempts the handler, the same class waits */
    order = 0;
    send_in_handler = 0x60;
    sti();
    self_ipi(0x40);
    wait_count(&cnt[0x60], 1, 50);
    cli();
    check("ipi: higher class nests inside the handler", nested_vec, 1);
    order = 0;
    send_in_handler = 0x43;
    sti();
    self_ipi(0x40);
    wait_count(&cnt[0x43], 1, 50);
    cli();
    check("ipi: same class waits for EOI", nested_vec, 0);
    check("ipi: then runs (order 0x40, 0x43)", order, 0x03);

    /* An illegal vector (0-15) is not delivered and sets ESR bits 5 and 6
       (sent and received: a self-IPI), seen after the next ESR write.
       (QEMU delivers it and sets no bit: the golden output has the SDM's
       values.) */
    apic_write(R_ESR, 0);
    illegal_probe = 1;
    sti();
    self_ipi(0x05);
    wait_count(0, 0, 5);
    cli();
    illegal_probe = 0;
    check("ipi: illegal vector not delivered", cnt[0x05], 0);
    apic_write(R_ESR, 0);
    check("ipi: illegal vector in ESR", apic_read(R_ESR) & 0x60, 0x60);
    apic_write(R_ESR, 0);
    check("ipi: ESR cleared by a write", apic_read(R_ESR), 0);
}


/* Timer counts (a count-down from the maximum) in 5 ms of PIT time with
 * divide configuration `tdcr`. */
static uint32_t timer_counts_in_5ms(uint32_t tdcr)
{
    apic_write(R_TDCR, tdcr);
    apic_write(R_TMICT, 0xFFFFFFFF);
    uint32_t t0 = clk(), a0 = apic_read(R_TMCCT);
    while (clk() - t0 < 5 * PIT_MS)
        ;
    return a0 - apic_read(R_TMCCT);
}

static void timers(void)
{
    /* one-shot, divide by 1 */
    apic_write(R_TDCR, 0xB);
    apic_write(R_LVT_TIMER, 0x50);
    apic_write(R_TMICT, 2000000);
    uint32_t c1 = apic_read(R_TMCCT);
    sti();
    int got = wait_count(&cnt[0x50], 1, 500);
    wait_count(0, 0, 20);
    cli();
    ok("timer: one-shot counts down", c1 > 0 && c1 <= 2000000);
    ok("timer: one-shot interrupt", got);
    check("timer: one-shot fires once", cnt[0x50], 1);
    check("timer: current count stays 0", apic_read(R_TMCCT), 0);

    /* periodic */
    apic_write(R_LVT_TIMER, 0x51 | TIMER_PERIODIC);
    apic_write(R_TMICT, 200000);
    sti();
    got = wait_count(&cnt[0x51], 5, 1000);
    cli();
    apic_write(R_TMICT, 0);
    ok("timer: periodic interrupts", got);
    check("timer: initial count 0 stops it", apic_read(R_TMCCT), 0);
    uint32_t n = cnt[0x51];
    sti();
    wait_count(0, 0, 20);
    cli();
    ok("timer: stopped", cnt[0x51] == n);

    /* masked: counts, no interrupt */
    apic_write(R_LVT_TIMER, 0x52 | LVT_MASKED);
    apic_write(R_TMICT, 100000);
    sti();
    wait_count(0, 0, 50);
    cli();
    check("timer: masked, no interrupt", cnt[0x52], 0);
    check("timer: masked still counts to 0", apic_read(R_TMCCT), 0);

    /* divide by 16 runs 16 times slower than divide by 1. Each count is
     * taken over 5 ms of PIT time; a host that stops the machine inside one
     * of the windows (a loaded host running it) skews one ratio, so up to
     * three are taken. */
    apic_write(R_LVT_TIMER, 0x53 | LVT_MASKED);
    int ratio_ok = 0;
    for (int tries = 0; tries < 3 && !ratio_ok; tries++) {
        uint32_t d1 = timer_counts_in_5ms(0xB), d16 = timer_counts_in_5ms(0x3);
        ratio_ok = d16 > 0 && d1 / d16 >= 10 && d1 / d16 <= 24;
    }
    apic_write(R_TMICT, 0);
    ok("timer: divide by 16 is slower (ratio 10..24)", ratio_ok);
    apic_write(R_TDCR, 0);
}

static void lint0(void)
{
    outb(0x21, 0xFE);                       /* IRQ 0 only */
    pit_load(0, 0x34, (uint16_t)(PIT_HZ / 1000));
    cnt[0x20] = 0;
    sti();
    int got = wait_count(&cnt[0x20], 3, 200);
    cli();
    ok("lint0: PIC IRQ 0 through LINT0 (ExtINT)", got);
    apic_write(R_LVT_LINT0, 0x8700 | LVT_MASKED);
    wait_count(0, 0, 5);
    uint32_t n = cnt[0x20];
    sti();
    wait_count(0, 0, 30);
    cli();
    ok("lint0: masked LINT0 blocks the PIC", cnt[0x20] == n);
    apic_write(R_LVT_LINT0, 0x8700);
    sti();
    got = wait_count(&cnt[0x20], n + 2, 200);
    cli();
    ok("lint0: unmasked again", got);
    outb(0x21, 0xFF);
    pit_load(0, 0x30, 1);
}

static void nmis(void)
{
    cli();
    apic_write(R_ICR_HI, 0);
    apic_write(R_ICR_LO, 4u << 8);          /* NMI, physical destination 0 */
    wait_count(&cnt[2], 1, 50);
    check("nmi: delivered with IF clear", cnt[2], 1);
    check("nmi: ICR idle", apic_read(R_ICR_LO) & ICR_BUSY, 0);
    nmi_again = 1;
    apic_write(R_ICR_LO, 4u << 8);
    wait_count(&cnt[2], 3, 50);
    check("nmi: the second waits for the handler's IRET", nmi_in_handler, 2);
    check("nmi: then is taken", cnt[2], 3);
}

static void wrmsr(uint32_t m, uint64_t v)
{
    __asm__ volatile("wrmsr" :: "c"(m), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

#define RELOC_BASE 0xFEF00000u
static uint32_t reloc_read(uint32_t r) { return *(volatile uint32_t *)(RELOC_BASE + r); }

static void relocation(void)
{
    uint64_t base = rdmsr(0x1B);
    check("reloc base before", (uint32_t)base, APIC | 0x900);
    wrmsr(0x1B, RELOC_BASE | (base & 0xFFF));
    check("reloc base after", (uint32_t)rdmsr(0x1B), RELOC_BASE | 0x900);
    check("reloc version at new page", reloc_read(R_VER), 0x50014);
    check("reloc tpr at new page", reloc_read(R_TPR), 0);
    check("reloc old page reads nothing", apic_read(R_VER), 0xFFFFFFFFu);
    sti();
    *(volatile uint32_t *)(RELOC_BASE + R_ICR_LO) = ICR_SELF | 0x41;
    for (volatile int k = 0; k < 1000; k++)
        ;
    cli();
    check("reloc self-ipi through new page", cnt[0x41], 1);
    wrmsr(0x1B, base);
    check("reloc back", apic_read(R_VER), 0x50014);
    uint32_t a = 1, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    check("reloc cpuid apic bit enabled", (d >> 9) & 1, 1);
    wrmsr(0x1B, base & ~(1ull << 11));
    a = 1;
    c = 0;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    check("reloc cpuid apic bit globally disabled", (d >> 9) & 1, 0);
    check("reloc base disabled", (uint32_t)rdmsr(0x1B), APIC | 0x100);
}

void kmain(void)
{
    setup_descriptors();
    pic_init();
    clk_start();
    if (cmdline_uint("reloc", 0)) {
        relocation();
    } else {
        reset_values();
        registers();
        ipis();
        timers();
        lint0();
        nmis();
    }
    puts_serial("");
    put_dec(n_pass);
    puts_serial(" passed, ");
    put_dec(n_fail);
    puts_serial(" failed\n");
    exit(n_fail);
}
