/*
 * irq: the PC interrupt and timer hardware and interrupt delivery.
 *
 * Own GDT (flat ring 0 code+data) and IDT: exceptions 0-31 are fatal, the
 * two 8259A PICs are remapped to vectors 0x20-0x2F. Groups:
 *   pic   ICW1-4 init, IMR read-back, OCW3 IRR/ISR reads, masking, IF=0,
 *         the STI shadow, non-specific and specific EOI, poll mode,
 *         priority (IRQ 0 vs cascaded IRQ 8 and UART IRQ 4) and nesting,
 *         auto-EOI
 *   pit   8254: counter latch, read-back status and count, access modes
 *         (lo/hi, lo only, hi only), BCD, channel 2 gate and OUT2 in
 *         port 0x61, IRQ 0 from the rate generator
 *   rtc   MC146818: registers A-D, BCD/binary/12-hour time, UIP, periodic
 *         interrupt and register C, NMI mask bit, CMOS memory bytes
 *   deliv interrupt delivery: sti;hlt idle loop, interrupts inside a long
 *         dec/jnz loop and inside rep stosb, the saved frame
 * Everything timing-dependent is checked against generous bounds and only
 * pass/fail is printed, so the output is the same on any host. Waits are
 * timed with PIT channel 2 as a free-running clock (mode 2, count 65536,
 * gate on), read through the counter latch.
 * Prints "PASS|FAIL name got X want Y", then "N passed, M failed"; exits
 * with V=M. An unexpected exception prints its frame and exits with 255.
 */
#include "rt.h"
#include "ktest.h"

#define KCODE 0x08
#define KDATA 0x10

#define EFLAGS_IF 0x200u

/* ---- asm.S ------------------------------------------------------------ */
extern const uint32_t stub_table[48];
extern char sti_cli_insn[], hlt_after[], spin_loop[], spin_end[], fill_insn[];
void sti_nop_cli(void);
void sti_hlt_cli(void);
void spin(uint32_t n);
void fill(uint32_t dst, uint32_t byte, uint32_t n);

/* ---- ports, flags ----------------------------------------------------- */
static inline void outb(uint16_t p, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(p) : "memory"); }
static inline uint8_t inb(uint16_t p) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p) : "memory"); return v; }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline uint32_t get_eflags(void)
{
    uint32_t f;
    __asm__ volatile("pushfl; popl %0" : "=r"(f) :: "memory");
    return f;
}
static inline uint32_t irq_save(void) { uint32_t f = get_eflags(); cli(); return f; }
static inline void irq_restore(uint32_t f) { if (f & EFLAGS_IF) sti(); }

/* ---- results ---------------------------------------------------------- */

/* boolean checks print got/want 0x1 */
static void ok(const char *name, int cond) { check(name, cond ? 1 : 0, 1); }

/* ---- descriptor tables ------------------------------------------------ */
struct dtr {
    uint16_t limit;
    uint32_t base;
} __attribute__((packed));

static uint64_t gdt[3] __attribute__((aligned(8)));
static uint64_t idt[256] __attribute__((aligned(8)));


static void set_gate(int n, uint32_t handler)
{
    idt[n] = (handler & 0xFFFF) | ((uint64_t)KCODE << 16) |
             ((uint64_t)0x8E00 << 32) |                    /* 32-bit interrupt gate */
             ((uint64_t)(handler >> 16) << 48);
}

static void setup_descriptors(void)
{
    gdt[0] = 0;
    gdt[1] = desc(0, 0xFFFFF, 0x9A, 0xC);
    gdt[2] = desc(0, 0xFFFFF, 0x92, 0xC);
    struct dtr g = { sizeof gdt - 1, (uint32_t)gdt };
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp $0x08, $1f\n"
                     "1:\tmovw $0x10, %%ax\n\t"
                     "movw %%ax, %%ds\n\tmovw %%ax, %%es\n\tmovw %%ax, %%ss\n\t"
                     "movw %%ax, %%fs\n\tmovw %%ax, %%gs"
                     :: "m"(g) : "eax", "memory");
    for (int i = 0; i < 48; i++)
        set_gate(i, stub_table[i]);
    struct dtr id = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" :: "m"(id) : "memory");
}

/* ---- 8259A ------------------------------------------------------------ */
#define PIC1 0x20
#define PIC2 0xA0
#define OCW3_IRR  0x0A
#define OCW3_ISR  0x0B
#define OCW3_POLL 0x0C
#define EOI_NONSPEC 0x20
#define EOI_SPEC    0x60

static void pic_init(uint8_t icw4_master)
{
    outb(PIC1, 0x11);          /* ICW1: edge, cascade, ICW4 follows */
    outb(PIC1 + 1, 0x20);      /* ICW2: vectors 0x20-0x27 */
    outb(PIC1 + 1, 0x04);      /* ICW3: slave on IR2 */
    outb(PIC1 + 1, icw4_master);
    outb(PIC2, 0x11);
    outb(PIC2 + 1, 0x28);      /* vectors 0x28-0x2F */
    outb(PIC2 + 1, 0x02);      /* slave id 2 */
    outb(PIC2 + 1, 0x01);      /* 8086 mode, normal EOI */
}
/* IMR for both: bit n masks IRQ n */
static void pic_mask(uint16_t m) { outb(PIC1 + 1, (uint8_t)m); outb(PIC2 + 1, (uint8_t)(m >> 8)); }
static uint8_t pic_cmd_read(uint16_t base, uint8_t ocw3) { outb(base, ocw3); return inb(base); }
static uint8_t irr1(void) { return pic_cmd_read(PIC1, OCW3_IRR); }
static uint8_t isr1(void) { return pic_cmd_read(PIC1, OCW3_ISR); }
static uint8_t irr2(void) { return pic_cmd_read(PIC2, OCW3_IRR); }
static uint8_t isr2(void) { return pic_cmd_read(PIC2, OCW3_ISR); }
static uint8_t poll1(void) { return pic_cmd_read(PIC1, OCW3_POLL); }
static uint8_t poll2(void) { return pic_cmd_read(PIC2, OCW3_POLL); }

/* With IF=0: acknowledge (poll + EOI) whatever is pending on `lines`. */
static void pic_drain(uint16_t lines)
{
    uint8_t m1 = inb(PIC1 + 1), m2 = inb(PIC2 + 1);
    pic_mask((uint16_t)~(lines | 0x0004));
    for (int i = 0; i < 32; i++) {
        uint8_t v = poll1();
        if (!(v & 0x80))
            break;
        if ((v & 7) == 2) {
            poll2();
            outb(PIC2, EOI_NONSPEC);
        }
        outb(PIC1, EOI_NONSPEC);
    }
    outb(PIC1 + 1, m1);
    outb(PIC2 + 1, m2);
}

/* ---- 8254 ------------------------------------------------------------- */
#define PIT_CH0 0x40
#define PIT_CH2 0x42
#define PIT_CMD 0x43
#define PORT61  0x61
#define PIT_MS  1193u         /* ticks per millisecond (1.193182 MHz) */

static void pit_load(int ch, uint8_t cw, uint16_t count)
{
    outb(PIT_CMD, (uint8_t)((ch << 6) | cw));
    outb((uint16_t)(PIT_CH0 + ch), (uint8_t)count);
    outb((uint16_t)(PIT_CH0 + ch), (uint8_t)(count >> 8));
}
static uint16_t pit_latch(int ch)
{
    uint32_t f = irq_save();
    outb(PIT_CMD, (uint8_t)(ch << 6));
    uint16_t v = inb((uint16_t)(PIT_CH0 + ch));
    v |= (uint16_t)(inb((uint16_t)(PIT_CH0 + ch)) << 8);
    irq_restore(f);
    return v;
}
/* read-back: status byte only */
static uint8_t pit_status(int ch)
{
    outb(PIT_CMD, (uint8_t)(0xE0 | (2 << ch)));
    return inb((uint16_t)(PIT_CH0 + ch));
}
/* channel 0 one-shot (mode 0): a single rising edge on IRQ 0 */
static void pit0_oneshot(uint16_t count) { pit_load(0, 0x30, count); }
/* channel 0 rate generator (mode 2) */
static void pit0_periodic(uint16_t count) { pit_load(0, 0x34, count); }

/* channel 2 as a clock: free-running mode 2, count 65536, gate on */
static uint16_t clk_last;
static uint32_t clk_acc;

static void clk_start(void)
{
    outb(PORT61, (uint8_t)((inb(PORT61) & 0x0C) | 0x01));   /* gate on, speaker off */
    pit_load(2, 0x34, 0);
    clk_last = pit_latch(2);
}
/* ticks since clk_start; needs calls more often than every 55 ms */
static uint32_t clk(void)
{
    uint32_t f = irq_save();
    uint16_t v = pit_latch(2);
    clk_acc += (uint16_t)(clk_last - v);
    clk_last = v;
    irq_restore(f);
    return clk_acc;
}

/* Wait until cond() or `ms` milliseconds. The iteration cap only matters
   if the clock does not run at all. Returns cond(). clk() runs with IF=0,
   so with IF=1 each round also spins a while: most of the wait is then
   interruptible, not just the few instructions between two clk() calls. */
static int wait_for(int (*cond)(void), uint32_t ms)
{
    uint32_t t0 = clk();
    int iflag = (get_eflags() & EFLAGS_IF) != 0;
    for (uint32_t i = 0; i < ms * 20000u; i++) {
        if (cond && cond())
            return 1;
        if (clk() - t0 >= ms * PIT_MS)
            break;
        if (iflag)
            for (volatile int k = 0; k < 100; k++)
                ;
    }
    return cond ? cond() : 0;
}
static void delay_ms(uint32_t ms) { wait_for(0, ms); }

/* ---- MC146818 / CMOS -------------------------------------------------- */
#define RTC_A 0x0A
#define RTC_B 0x0B
#define RTC_C 0x0C
#define RTC_D 0x0D

static uint8_t cmos_read(uint8_t reg)
{
    uint32_t f = irq_save();
    outb(0x70, reg);
    uint8_t v = inb(0x71);
    irq_restore(f);
    return v;
}
static void cmos_write(uint8_t reg, uint8_t v)
{
    uint32_t f = irq_save();
    outb(0x70, reg);
    outb(0x71, v);
    irq_restore(f);
}

/* ---- UART ------------------------------------------------------------- */
#define COM1_IER 0x3F9
#define COM1_IIR 0x3FA
#define COM1_MCR 0x3FC

/* ---- interrupt handling ----------------------------------------------- */
struct frame {
    uint32_t es, ds, edi, esi, ebp, esp_, ebx, edx, ecx, eax;
    uint32_t vec, err, eip, cs, eflags;
};

static volatile uint32_t cnt[16], spurious;
static volatile struct {
    uint32_t vec, eip, cs, eflags, ecx, edi, in_eflags;
    uint8_t isr1, irr1, isr2;
} last[16];

enum { EOI_MODE_NONSPEC, EOI_MODE_SPEC, EOI_MODE_NONE };
static volatile int eoi_mode;
static volatile int rtc_ack = 1;         /* IRQ 8 handler reads register C */
static volatile uint8_t rtc_c_first, rtc_c_again;
static void (*volatile hook[16])(struct frame *f);
static volatile uint32_t depth, max_depth;

/* event log: enter/exit codes, 4 bits each, first 4 events only (later
   interrupts from a still-running source must not disturb the record) */
static volatile uint32_t evlog, nev;
static volatile int log_on;
static uint32_t ev_code(int irq)
{
    return irq == 0 ? 1 : irq == 8 ? 3 : irq == 4 ? 5 : 7;
}
static void logev(uint32_t code)
{
    if (log_on && nev < 4) {
        evlog = (evlog << 4) | code;
        nev++;
    }
}
static void log_start(void) { evlog = 0; nev = 0; log_on = 1; }

static void fatal(struct frame *f, const char *what)
{
    puts_serial("FAIL ");
    puts_serial(what);
    puts_serial(" vec ");
    put_hex(f->vec);
    puts_serial(" err ");
    put_hex(f->err);
    puts_serial(" eip ");
    put_hex(f->eip);
    putc_serial('\n');
    exit(255);
}

void isr_dispatch(struct frame *f);
void isr_dispatch(struct frame *f)
{
    if (f->vec < 0x20)
        fatal(f, "unexpected exception");
    int irq = (int)f->vec - 0x20;
    int slave = irq >= 8;
    /* IR7 without its ISR bit is the 8259A's spurious interrupt */
    if ((irq & 7) == 7 && eoi_mode != EOI_MODE_NONE &&
        !((slave ? isr2() : isr1()) & 0x80)) {
        spurious++;
        if (slave)
            outb(PIC1, EOI_NONSPEC);
        return;
    }
    logev(ev_code(irq));
    depth++;
    if (depth > max_depth)
        max_depth = depth;
    cnt[irq]++;
    last[irq].vec = f->vec;
    last[irq].eip = f->eip;
    last[irq].cs = f->cs;
    last[irq].eflags = f->eflags;
    last[irq].ecx = f->ecx;
    last[irq].edi = f->edi;
    last[irq].in_eflags = get_eflags();
    last[irq].isr1 = isr1();
    last[irq].irr1 = irr1();
    last[irq].isr2 = isr2();
    if (irq == 8 && rtc_ack) {
        rtc_c_first = cmos_read(RTC_C);
        rtc_c_again = cmos_read(RTC_C);
    }
    if (hook[irq])
        hook[irq](f);
    switch (eoi_mode) {
    case EOI_MODE_NONSPEC:
        if (slave)
            outb(PIC2, EOI_NONSPEC);
        outb(PIC1, EOI_NONSPEC);
        break;
    case EOI_MODE_SPEC:
        if (slave) {
            outb(PIC2, (uint8_t)(EOI_SPEC | (irq & 7)));
            outb(PIC1, EOI_SPEC | 2);
        } else {
            outb(PIC1, (uint8_t)(EOI_SPEC | irq));
        }
        break;
    default:
        break;
    }
    depth--;
    logev(ev_code(irq) + 1);
}

static void clear_counts(void)
{
    for (int i = 0; i < 16; i++)
        cnt[i] = 0;
    max_depth = 0;
}

/* conditions for wait_for */
static int irr_want1, irr_want2;
static int c_irr(void) { return (irr1() & irr_want1) == irr_want1 && (irr2() & irr_want2) == irr_want2; }
static int c_irq0(void) { return cnt[0] > 0; }
static int c_irq4(void) { return cnt[4] > 0; }
static int c_irq8(void) { return cnt[8] > 0; }
static int c_irq8_3(void) { return cnt[8] >= 3; }
static int c_irq8_done(void) { return cnt[8] > 0 && depth == 0; }
/* with IF=0: wait until the IRR bits are set */
static int wait_irr(int m1, int m2)
{
    irr_want1 = m1;
    irr_want2 = m2;
    return wait_for(c_irr, 200);
}

/* ---- setup ------------------------------------------------------------ */
static uint8_t boot_imr1, boot_imr2, boot_irr_default, boot_rtc_b;

/* Silence every source, start the clock, remap and mask the PICs. */
static void quiesce(void)
{
    outb(COM1_IER, 0);
    boot_rtc_b = cmos_read(RTC_B);
    cmos_write(RTC_B, boot_rtc_b & 0x8F);          /* PIE, AIE, UIE off */
    cmos_read(RTC_C);                              /* drop IRQ 8 */
    /* channel 0: one-shot of 2 ticks, then OUT stays high: no more edges.
       Wait well past it: QEMU raises the line from a host timer callback
       some time after the read-back status already shows OUT high. */
    clk_start();
    pit0_oneshot(2);
    delay_ms(10);
    pic_init(0x01);
    boot_imr1 = inb(PIC1 + 1);                     /* ICW1 cleared the IMR */
    boot_imr2 = inb(PIC2 + 1);
    boot_irr_default = inb(PIC1);                  /* and selected IRR */
    pic_mask(0xFFFF);
}

/* ---- pic -------------------------------------------------------------- */
static volatile uint32_t hook_seen8;
static void hook_sti_wait(struct frame *f)
{
    (void)f;
    sti();
    delay_ms(5);
    hook_seen8 = cnt[8];
    cli();
}
static volatile int nest_armed;
static void hook8_nest(struct frame *f)
{
    (void)f;
    if (!nest_armed)
        return;
    nest_armed = 0;
    sti();
    pit0_oneshot(PIT_MS);
    wait_for(c_irq0, 100);
    cli();
}
static volatile uint8_t hook_iir;
static void hook4_uart(struct frame *f)
{
    (void)f;
    hook_iir = inb(COM1_IIR);
    outb(COM1_IER, 0);
}

static void rtc_periodic(uint8_t rate)
{
    cmos_write(RTC_A, (uint8_t)(0x20 | rate));
    cmos_write(RTC_B, (uint8_t)(cmos_read(RTC_B) | 0x40));
}
static void rtc_periodic_off(void)
{
    cmos_write(RTC_B, (uint8_t)(cmos_read(RTC_B) & ~0x40));
    cmos_read(RTC_C);
    cmos_write(RTC_A, 0x26);
}

static void t_pic(void)
{
    check("pic: IMR master after ICW1-4", boot_imr1, 0x00);
    check("pic: IMR slave after ICW1-4", boot_imr2, 0x00);
    check("pic: read after init selects IRR (idle)", boot_irr_default, 0x00);

    outb(PIC1 + 1, 0xA5);
    outb(PIC2 + 1, 0x5A);
    check("pic: IMR master read-back", inb(PIC1 + 1), 0xA5);
    check("pic: IMR slave read-back", inb(PIC2 + 1), 0x5A);
    pic_mask(0xFFFF);
    check("pic: IMR master all masked", inb(PIC1 + 1), 0xFF);
    check("pic: IRR idle", irr1(), 0x00);
    check("pic: ISR idle", isr1(), 0x00);
    check("pic: slave IRR idle", irr2(), 0x00);
    check("pic: slave ISR idle", isr2(), 0x00);

    /* masked IRQ 0 is latched in IRR but not delivered */
    clear_counts();
    pit0_oneshot(PIT_MS);
    ok("pic: masked IRQ 0 appears in IRR", wait_irr(0x01, 0));
    check("pic: IRR with masked IRQ 0 pending", irr1(), 0x01);
    check("pic: ISR with masked IRQ 0 pending", isr1(), 0x00);
    check("pic: poll with only masked requests (bit 7)", poll1() & 0x80, 0x00);
    check("pic: IRR after poll of masked request", irr1(), 0x01);
    /* unmasked but IF=0: still pending */
    pic_mask(0xFFFE);
    delay_ms(3);
    check("pic: IF=0 keeps unmasked IRQ 0 pending (count)", cnt[0], 0);
    check("pic: IF=0 keeps unmasked IRQ 0 pending (IRR)", irr1(), 0x01);
    /* sti; nop; cli: delivered once, after the nop */
    sti_nop_cli();
    check("pic: delivered once after STI", cnt[0], 1);
    check("pic: vector", last[0].vec, 0x20);
    check("pic: STI shadow, saved EIP after the next insn", last[0].eip, (uint32_t)sti_cli_insn);
    check("pic: saved CS", last[0].cs, KCODE);
    check("pic: saved EFLAGS IF and bit 1", last[0].eflags & 0x202, 0x202);
    check("pic: interrupt gate clears IF in handler", last[0].in_eflags & EFLAGS_IF, 0);
    check("pic: ISR in handler", last[0].isr1, 0x01);
    check("pic: IRR in handler (cleared by INTA)", last[0].irr1 & 0x01, 0x00);
    check("pic: ISR after non-specific EOI", isr1(), 0x00);
    check("pic: IRR after delivery", irr1(), 0x00);
    delay_ms(3);
    check("pic: one-shot gives one interrupt", cnt[0], 1);

    /* poll mode */
    pit0_oneshot(PIT_MS);
    wait_irr(0x01, 0);
    check("pic: poll returns 0x80|irq", poll1(), 0x80);
    check("pic: poll sets ISR", isr1(), 0x01);
    check("pic: poll clears IRR", irr1(), 0x00);
    check("pic: poll with IRQ in service, none pending (bit 7)", poll1() & 0x80, 0x00);
    outb(PIC1, EOI_NONSPEC);
    check("pic: ISR after non-specific EOI (poll)", isr1(), 0x00);

    /* specific EOI */
    pit0_oneshot(PIT_MS);
    wait_irr(0x01, 0);
    check("pic: poll (specific EOI)", poll1(), 0x80);
    outb(PIC1, EOI_SPEC | 3);
    check("pic: specific EOI for another level keeps ISR", isr1(), 0x01);
    outb(PIC1, EOI_SPEC | 0);
    check("pic: specific EOI clears ISR", isr1(), 0x00);
    check("pic: no interrupt delivered while polling", cnt[0], 1);

    /* priority by polling: IRQ 0 and IRQ 8 (via IR2) both pending */
    pic_mask((uint16_t)~0x0105);
    pit0_oneshot(PIT_MS);
    rtc_periodic(6);                            /* 1024 Hz */
    ok("pic: IRQ 0 and IRQ 8 pending", wait_irr(0x05, 0x01));
    check("pic: poll picks IRQ 0 over IR2", poll1(), 0x80);
    check("pic: poll with IRQ 0 in service blocks IR2 (bit 7)", poll1() & 0x80, 0x00);
    outb(PIC1, EOI_NONSPEC);
    check("pic: poll after EOI returns IR2", poll1(), 0x82);
    check("pic: slave poll returns IR0", poll2(), 0x80);
    check("pic: master ISR cascade in service", isr1(), 0x04);
    check("pic: slave ISR", isr2(), 0x01);
    check("pic: RTC register C flags (IRQF|PF)", cmos_read(RTC_C) & 0xC0, 0xC0);
    outb(PIC2, EOI_NONSPEC);
    outb(PIC1, EOI_NONSPEC);
    check("pic: master ISR after EOIs", isr1(), 0x00);
    check("pic: slave ISR after EOI", isr2(), 0x00);
    rtc_periodic_off();
    pic_drain(0x0105);

    /* delivery priority: IRQ 0 in service (IF=1 in its handler) holds
       off the pending IRQ 8 until its EOI */
    clear_counts();
    pit0_oneshot(PIT_MS);
    rtc_periodic(0xA);                          /* 64 Hz */
    wait_irr(0x05, 0x01);
    hook_seen8 = 0xFFFF;
    hook[0] = hook_sti_wait;
    log_start();
    sti();
    wait_for(c_irq8_done, 300);
    cli();
    log_on = 0;
    hook[0] = 0;
    check("pic: IRQ 8 not nested into IRQ 0 handler", hook_seen8, 0);
    check("pic: order enter0 exit0 enter8 exit8", evlog, 0x1234);
    check("pic: IRQ 8 vector", last[8].vec, 0x28);
    check("pic: ISR master in IRQ 8 handler", last[8].isr1, 0x04);
    check("pic: ISR slave in IRQ 8 handler", last[8].isr2, 0x01);
    rtc_periodic_off();
    pic_drain(0x0105);

    /* nesting: IRQ 0 (higher priority) interrupts the IRQ 8 handler */
    clear_counts();
    nest_armed = 1;
    hook[8] = hook8_nest;
    rtc_periodic(0xA);
    log_start();
    sti();
    wait_for(c_irq8_done, 500);
    cli();
    log_on = 0;
    hook[8] = 0;
    rtc_periodic_off();
    pic_drain(0x0105);
    check("pic: nested order enter8 enter0 exit0 exit8", evlog, 0x3124);
    check("pic: nesting depth", max_depth, 2);
    check("pic: master ISR in nested IRQ 0 handler", last[0].isr1, 0x05);
    check("pic: slave ISR in nested IRQ 0 handler", last[0].isr2, 0x01);

    /* UART THRE interrupt on IRQ 4 vs IRQ 0: both pending, IRQ 0 first */
    clear_counts();
    pic_mask((uint16_t)~0x0011);
    uint8_t mcr = inb(COM1_MCR);
    outb(COM1_MCR, mcr | 0x08);                 /* OUT2 gates the IRQ line on PCs */
    pit0_oneshot(PIT_MS);
    outb(COM1_IER, 0x02);                       /* THR empty interrupt */
    int both = wait_irr(0x11, 0);
    hook[4] = hook4_uart;
    log_start();
    sti();
    wait_for(c_irq4, 100);
    cli();
    log_on = 0;
    hook[4] = 0;
    outb(COM1_IER, 0);
    outb(COM1_MCR, mcr);
    pic_drain(0x0011);
    ok("pic: IRQ 0 and UART IRQ 4 pending", both);
    check("pic: order enter0 exit0 enter4 exit4", evlog, 0x1256);
    check("pic: UART IIR in handler (THRE)", hook_iir & 0x0F, 0x02);
    check("pic: IRQ 4 vector", last[4].vec, 0x24);
    check("pic: ISR in IRQ 4 handler", last[4].isr1, 0x10);

    /* specific EOI from the handler */
    clear_counts();
    pic_mask(0xFFFE);
    eoi_mode = EOI_MODE_SPEC;
    pit0_oneshot(PIT_MS);
    sti();
    wait_for(c_irq0, 100);
    cli();
    eoi_mode = EOI_MODE_NONSPEC;
    check("pic: handler with specific EOI ran", cnt[0], 1);
    check("pic: ISR after specific EOI in handler", isr1(), 0x00);

    /* auto-EOI (ICW4 bit 1): no ISR bit, no EOI needed */
    clear_counts();
    pic_init(0x03);
    pic_mask(0xFFFE);
    eoi_mode = EOI_MODE_NONE;
    pit0_oneshot(PIT_MS);
    sti();
    wait_for(c_irq0, 100);
    cli();
    check("pic: AEOI interrupt delivered", cnt[0], 1);
    check("pic: AEOI ISR in handler", last[0].isr1, 0x00);
    check("pic: AEOI ISR after", isr1(), 0x00);
    pit0_oneshot(PIT_MS);
    sti();
    delay_ms(20);
    cli();
    check("pic: AEOI second interrupt without EOI", cnt[0], 2);
    pic_init(0x01);
    pic_mask(0xFFFF);
    eoi_mode = EOI_MODE_NONSPEC;
    check("pic: re-init clears IRR", irr1(), 0x00);
    check("pic: re-init ISR", isr1(), 0x00);
}

/* ---- pit -------------------------------------------------------------- */
static void t_pit(void)
{
    /* rate generator at 1000 Hz */
    pit0_periodic(PIT_MS);
    delay_ms(1);
    check("pit: read-back status mode 2 lo/hi binary", pit_status(0) & 0x7F, 0x34);
    uint32_t bad = 0, changes = 0;
    uint16_t prev = pit_latch(0);
    for (int i = 0; i < 200; i++) {
        uint16_t v = pit_latch(0);
        if (v < 1 || v > PIT_MS)
            bad++;
        if (v != prev)
            changes++;
        prev = v;
    }
    check("pit: mode 2 latched counts in 1..reload", bad, 0);
    ok("pit: mode 2 count changes", changes > 0);
    clear_counts();
    pic_mask(0xFFFE);
    sti();
    delay_ms(100);
    cli();
    ok("pit: IRQ 0 from mode 2 (>= 10 in 100 ms)", cnt[0] >= 10);
    pic_mask(0xFFFF);

    /* mode 0, lo then hi byte; 0xf000 ticks are 51 ms, and every bound
       below leaves > 40 ms for the host to be late */
    pit_load(0, 0x30, 0xF000);
    uint16_t v1 = pit_latch(0);
    ok("pit: lo/hi order, count <= 0xf000", v1 <= 0xF000);
    ok("pit: lo/hi order, count > 0x1000", v1 > 0x1000);
    uint16_t v2 = v1;
    for (int i = 0; i < 1000000 && v2 == v1; i++)
        v2 = pit_latch(0);
    ok("pit: latched counts decrease", v2 < v1);
    /* read-back of status and count together */
    pit_load(0, 0x30, 0xF000);
    outb(PIT_CMD, 0xC2);
    uint8_t st = inb(PIT_CH0);
    uint16_t rc = inb(PIT_CH0);
    rc |= (uint16_t)(inb(PIT_CH0) << 8);
    check("pit: read-back status mode 0 counting (OUT low)", st, 0x30);
    ok("pit: read-back count in range", rc <= 0xF000 && rc > 0x1000);
    /* a latch holds its value */
    pit_load(0, 0x30, 0xF000);
    outb(PIT_CMD, 0x00);
    delay_ms(5);
    uint16_t held = inb(PIT_CH0);
    held |= (uint16_t)(inb(PIT_CH0) << 8);
    uint16_t now = pit_latch(0);
    ok("pit: latched value frozen (>= 4.2 ms behind)", held > now && held - now >= 5000);
    /* unlatched reads in lo/hi order */
    uint16_t un = inb(PIT_CH0);
    un |= (uint16_t)(inb(PIT_CH0) << 8);
    ok("pit: unlatched lo/hi read in range", un <= now && un > 0x1000);

    /* hi byte only */
    outb(PIT_CMD, 0x20);
    outb(PIT_CH0, 0xF0);
    check("pit: read-back status hi-only", pit_status(0) & 0x7F, 0x20);
    uint8_t hb = inb(PIT_CH0);
    ok("pit: hi-only count byte", hb <= 0xF0 && hb >= 0x10);
    outb(PIT_CMD, 0x00);
    hb = inb(PIT_CH0);
    ok("pit: hi-only latched byte", hb <= 0xF0 && hb >= 0x10);
    /* lo byte only */
    outb(PIT_CMD, 0x10);
    outb(PIT_CH0, 0xFF);
    check("pit: read-back status lo-only", pit_status(0) & 0x7F, 0x10);

    /* BCD */
    pit_load(0, 0x31, 0x9999);
    check("pit: read-back status BCD", pit_status(0) & 0x7F, 0x31);
    /* QEMU counts in binary even in BCD mode, so only a bound that holds
       either way: 0x9999 read as 39321 binary ticks or 9999 BCD ticks */
    uint16_t b0 = pit_latch(0);
    ok("pit: BCD-mode count <= 0x9999", b0 <= 0x9999 && b0 > 0x5000);

    /* let channel 0 go quiet: one-shot expired, OUT high */
    pit0_oneshot(2);
    delay_ms(10);
    check("pit: read-back status mode 0 expired (OUT high)", pit_status(0), 0xB0);
    pic_drain(0x0001);

    /* channel 2: gate and OUT2 in port 0x61 (the clock is borrowed) */
    outb(PORT61, (uint8_t)((inb(PORT61) & 0x0C) | 0x01));
    pit_load(2, 0xB0, 0xFFFF);                  /* mode 0, ~55 ms */
    uint8_t p = inb(PORT61);
    check("pit: port 0x61 gate bit reads back", p & 0x01, 0x01);
    check("pit: OUT2 low while counting", p & 0x20, 0x00);
    int seen = 0;
    for (uint32_t i = 0; i < 20000000u; i++)
        if (inb(PORT61) & 0x20) {
            seen = 1;
            break;
        }
    ok("pit: OUT2 goes high at terminal count", seen);
    check("pit: OUT2 stays high", inb(PORT61) & 0x20, 0x20);
    check("pit: read-back status ch2 expired", pit_status(2), 0xB0);
    outb(PORT61, (uint8_t)(inb(PORT61) & 0x0C));
    check("pit: port 0x61 gate bit cleared", inb(PORT61) & 0x01, 0x00);
    outb(PORT61, (uint8_t)((inb(PORT61) & 0x0C) | 0x01));
    /* mode 2: a rising gate edge reloads the counter */
    pit_load(2, 0xB4, 0xFFFF);
    uint16_t c2 = 0xFFFF;
    for (uint32_t i = 0; i < 20000000u && c2 >= 0x8000; i++)
        c2 = pit_latch(2);
    ok("pit: ch2 counted below 0x8000", c2 < 0x8000);
    outb(PORT61, (uint8_t)(inb(PORT61) & 0x0C));
    outb(PORT61, (uint8_t)((inb(PORT61) & 0x0C) | 0x01));
    c2 = pit_latch(2);
    ok("pit: gate rising edge reloads ch2 (mode 2)", c2 >= 0x8800);
    clk_start();
}

/* ---- rtc -------------------------------------------------------------- */
struct rtc_time { uint8_t s, m, h, wd, d, mo, y, cent; };

static int c_uip_clear(void) { return !(cmos_read(RTC_A) & 0x80); }
static void rtc_raw(struct rtc_time *t)
{
    t->s = cmos_read(0x00);
    t->m = cmos_read(0x02);
    t->h = cmos_read(0x04);
    t->wd = cmos_read(0x06);
    t->d = cmos_read(0x07);
    t->mo = cmos_read(0x08);
    t->y = cmos_read(0x09);
    t->cent = cmos_read(0x32);
}
static int same(const struct rtc_time *a, const struct rtc_time *b) { return memcmp(a, b, sizeof *a) == 0; }
/* a consistent snapshot: outside UIP, two identical reads */
static void rtc_get(struct rtc_time *t)
{
    struct rtc_time u;
    for (int i = 0; i < 10; i++) {
        wait_for(c_uip_clear, 20);
        rtc_raw(t);
        rtc_raw(&u);
        if (same(t, &u))
            return;
    }
}
static int bcd_ok(uint8_t v, int lo, int hi)
{
    if ((v & 15) > 9 || (v >> 4) > 9)
        return 0;
    int b = (v >> 4) * 10 + (v & 15);
    return b >= lo && b <= hi;
}
static uint8_t bcd2bin(uint8_t v) { return (uint8_t)((v >> 4) * 10 + (v & 15)); }
static int c_uip_set(void) { return (cmos_read(RTC_A) & 0x80) != 0; }
static int c_irq8_again(void) { return cnt[8] >= 2; }

static void t_rtc(void)
{
    check("rtc: register D (VRT)", cmos_read(RTC_D), 0x80);
    check("rtc: register A (divider, rate)", cmos_read(RTC_A) & 0x7F, 0x26);
    check("rtc: register B at boot (24h, BCD)", boot_rtc_b, 0x02);
    /* only IRQF: PF/UF/AF may be set with their interrupts disabled */
    check("rtc: register C idle (IRQF)", cmos_read(RTC_C) & 0x80, 0x00);

    struct rtc_time t, bin, t2, h12;
    rtc_get(&t);
    ok("rtc: seconds BCD 0-59", bcd_ok(t.s, 0, 59));
    ok("rtc: minutes BCD 0-59", bcd_ok(t.m, 0, 59));
    ok("rtc: hours BCD 0-23", bcd_ok(t.h, 0, 23));
    ok("rtc: weekday BCD 1-7", bcd_ok(t.wd, 1, 7));
    ok("rtc: day BCD 1-31", bcd_ok(t.d, 1, 31));
    ok("rtc: month BCD 1-12", bcd_ok(t.mo, 1, 12));
    ok("rtc: year BCD 0-99", bcd_ok(t.y, 0, 99));
    check("rtc: century (0x32)", t.cent, 0x20);

    /* binary mode: same time, converted (retry if the second ticked) */
    int match = 0;
    for (int i = 0; i < 5 && !match; i++) {
        rtc_get(&t);
        cmos_write(RTC_B, 0x06);
        rtc_get(&bin);
        cmos_write(RTC_B, 0x02);
        rtc_get(&t2);
        match = same(&t, &t2);
    }
    ok("rtc: binary snapshot stable", match);
    ok("rtc: binary seconds", bin.s == bcd2bin(t.s) && bin.s < 60);
    ok("rtc: binary minutes", bin.m == bcd2bin(t.m) && bin.m < 60);
    ok("rtc: binary hours", bin.h == bcd2bin(t.h) && bin.h < 24);
    ok("rtc: binary day", bin.d == bcd2bin(t.d) && bin.d >= 1 && bin.d <= 31);
    ok("rtc: binary month", bin.mo == bcd2bin(t.mo) && bin.mo >= 1 && bin.mo <= 12);
    ok("rtc: binary year", bin.y == bcd2bin(t.y) && bin.y < 100);
    check("rtc: binary century", bin.cent, 20);

    /* 12-hour mode */
    match = 0;
    for (int i = 0; i < 5 && !match; i++) {
        rtc_get(&t);
        cmos_write(RTC_B, 0x00);
        rtc_get(&h12);
        cmos_write(RTC_B, 0x02);
        rtc_get(&t2);
        match = same(&t, &t2);
    }
    uint8_t h24 = bcd2bin(t.h);
    uint8_t want12 = (uint8_t)((h24 % 12 == 0 ? 0x12 : ((h24 % 12 / 10) << 4 | h24 % 12 % 10)) |
                               (h24 >= 12 ? 0x80 : 0));
    ok("rtc: 12-hour snapshot stable", match);
    ok("rtc: 12-hour hour and PM bit", h12.h == want12);
    check("rtc: register B restored", cmos_read(RTC_B), 0x02);

    /* update cycle: UIP rises, falls, and the seconds advance */
    wait_for(c_uip_clear, 20);
    uint8_t s0 = cmos_read(0x00);
    /* UIP is only up for 244 us a second: poll densely (the clock only
       every 32 reads) and for up to 5 s, so a host that deschedules us
       now and then still gets several chances */
    int up = 0;
    uint32_t t0 = clk();
    for (uint32_t i = 0; i < 100000000u && !up; i++) {
        up = c_uip_set();
        if ((i & 31) == 31 && clk() - t0 >= 5000 * PIT_MS)
            break;
    }
    int down = wait_for(c_uip_clear, 20);
    uint8_t s1 = cmos_read(0x00);
    ok("rtc: UIP set within 5 s", up);
    ok("rtc: UIP clears after the update", down);
    ok("rtc: seconds advanced by the update", s1 != s0);

    /* NMI-disable bit in the index port */
    outb(0x70, 0x80 | RTC_D);
    check("rtc: register D via NMI-masked index", inb(0x71), 0x80);
    outb(0x70, 0x80 | RTC_A);
    check("rtc: register A via NMI-masked index", inb(0x71) & 0x7F, 0x26);
    outb(0x70, 0x80 | 0x15);
    check("rtc: CMOS 0x15 via NMI-masked index", inb(0x71), 0x80);
    outb(0x70, RTC_D);
    check("rtc: register D after NMI re-enabled", inb(0x71), 0x80);

    /* periodic interrupt, 64 Hz */
    clear_counts();
    pic_mask((uint16_t)~0x0104);
    rtc_periodic(0xA);
    sti();
    int got3 = wait_for(c_irq8_3, 1000);
    cli();
    ok("rtc: periodic IRQ 8 (3 within 1 s)", got3);
    check("rtc: register C in handler (IRQF|PF)", rtc_c_first & 0xC0, 0xC0);
    check("rtc: register C read again", rtc_c_again & 0xC0, 0x00);
    check("rtc: IRQ 8 vector", last[8].vec, 0x28);
    /* without reading C the line stays high: one interrupt only */
    rtc_ack = 0;
    cmos_read(RTC_C);
    clear_counts();
    sti();
    wait_for(c_irq8, 200);
    delay_ms(150);
    cli();
    check("rtc: IRQ 8 once while C unread", cnt[8], 1);
    check("rtc: register C still flagged", cmos_read(RTC_C) & 0xC0, 0xC0);
    rtc_ack = 1;
    sti();
    wait_for(c_irq8_again, 200);
    cli();
    check("rtc: IRQ 8 again after reading C", cnt[8], 2);
    rtc_periodic_off();
    check("rtc: register B PIE off", cmos_read(RTC_B), 0x02);
    pic_drain(0x0104);
    pic_mask(0xFFFF);

    /* CMOS memory */
    check("cmos: base memory KiB (0x15/0x16)", cmos_read(0x15) | cmos_read(0x16) << 8, 640);
    check("cmos: extended memory KiB (0x17/0x18)", cmos_read(0x17) | cmos_read(0x18) << 8, 0xFFFF);
    check("cmos: extended memory KiB (0x30/0x31)", cmos_read(0x30) | cmos_read(0x31) << 8, 0xFFFF);
    check("cmos: 64 KiB units above 16 MiB (0x34/0x35)", cmos_read(0x34) | cmos_read(0x35) << 8,
          (128 - 16) * 16);
    uint8_t keep = cmos_read(0x7E);
    cmos_write(0x7E, 0xA5);
    uint8_t r1 = cmos_read(0x7E);
    cmos_write(0x7E, 0x5A);
    uint8_t r2 = cmos_read(0x7E);
    cmos_write(0x7E, keep);
    check("cmos: NVRAM byte write/read 0xa5", r1, 0xA5);
    check("cmos: NVRAM byte write/read 0x5a", r2, 0x5A);
}

/* ---- deliv ------------------------------------------------------------ */
#define SPIN_N 10000000u
#define FILL_BUF 0x400000u
#define FILL_N   0x400000u
static volatile int spin_hit, fill_hit;
static volatile uint32_t spin_ecx, spin_eflags, spin_cs, fill_ecx, fill_edi;

static void hook0_loops(struct frame *f)
{
    if (f->eip >= (uint32_t)spin_loop && f->eip < (uint32_t)spin_end && !spin_hit) {
        spin_hit = 1;
        spin_ecx = f->ecx;
        spin_eflags = f->eflags;
        spin_cs = f->cs;
    }
    /* an interrupt left pending across the CLI between fills arrives with
       ECX = n (before the first store): wait for one mid-instruction */
    if (f->eip == (uint32_t)fill_insn && f->ecx != FILL_N && !fill_hit) {
        fill_hit = 1;
        fill_ecx = f->ecx;
        fill_edi = f->edi;
    }
}

static void t_deliv(void)
{
    clear_counts();
    pic_mask(0xFFFE);
    pit0_periodic(PIT_MS);
    /* sti; hlt */
    sti_hlt_cli();
    ok("deliv: sti;hlt woken by IRQ 0", cnt[0] >= 1);
    check("deliv: saved EIP after HLT", last[0].eip, (uint32_t)hlt_after);
    check("deliv: saved EFLAGS IF (hlt)", last[0].eflags & EFLAGS_IF, EFLAGS_IF);
    uint32_t c0 = cnt[0];
    for (int i = 0; i < 5; i++)
        sti_hlt_cli();
    ok("deliv: idle loop, 5 HLTs take >= 5 interrupts", cnt[0] - c0 >= 5);

    /* inside a long dec/jnz loop */
    hook[0] = hook0_loops;
    for (int i = 0; i < 100 && !spin_hit; i++)
        spin(SPIN_N);
    ok("deliv: interrupt inside dec/jnz loop", spin_hit);
    ok("deliv: saved ECX shows iterations left", spin_ecx > 0 && spin_ecx < SPIN_N);
    check("deliv: saved EFLAGS IF (loop)", spin_eflags & EFLAGS_IF, EFLAGS_IF);
    check("deliv: saved CS (loop)", spin_cs, KCODE);

    /* inside rep stosb: saved EIP is the instruction, ECX/EDI partial */
    uint8_t val = 0;
    for (int i = 0; i < 200 && !fill_hit; i++) {
        val = (uint8_t)(0x11 + i);
        fill(FILL_BUF, val, FILL_N);
    }
    hook[0] = 0;
    ok("deliv: interrupt inside rep stosb (EIP = the rep insn, ECX < n)", fill_hit);
    ok("deliv: rep stosb saved ECX partial", fill_ecx > 0 && fill_ecx < FILL_N);
    ok("deliv: rep stosb saved EDI matches ECX", fill_edi == FILL_BUF + FILL_N - fill_ecx);
    uint32_t badbytes = 0;
    for (uint32_t a = FILL_BUF; a < FILL_BUF + FILL_N; a += 4)
        if (*(volatile uint32_t *)a != val * 0x01010101u)
            badbytes++;
    check("deliv: rep stosb completed after the interrupt", badbytes, 0);

    pic_mask(0xFFFF);
    pit0_oneshot(2);
    delay_ms(10);
    pic_drain(0x0001);
    check("deliv: no spurious interrupts", spurious, 0);
}

int kmain(void);
int kmain(void)
{
    cli();
    puts_serial("irq: 8259A PIC, 8254 PIT, MC146818 RTC/CMOS, interrupt delivery\n");
    setup_descriptors();
    quiesce();
    t_pic();
    t_pit();
    t_rtc();
    t_deliv();
    put_dec(n_pass);
    puts_serial(" passed, ");
    put_dec(n_fail);
    puts_serial(" failed\n");
    return (int)n_fail;
}
