/*
 * ioapic: the I/O APIC at 0xFEC00000 of a one-CPU PC (QEMU's `-M pc`
 * after SeaBIOS; btvisor with `-M pc`), with the ISA IRQs wired as on a PC
 * (IRQ 0, the PIT, on pin 2). Groups:
 *   reset  ID, version, arbitration ID, the redirection entries
 *   reg    redirection entry read-back (read-only bits stay), IOREGSEL
 *   edge   the PIT through pin 2: delivery with the 8259 masked, the
 *          vector in ISR, masking the entry
 *   level  the RTC's periodic interrupt through pin 8, level-triggered:
 *          remote IRR and TMR while in service, cleared by EOI;
 *          redelivery at EOI while the line is still up
 *   dest   logical destinations (flat model) that do and do not name
 *          this CPU
 * Prints "PASS|FAIL name got X want Y", then "N passed, M failed"; exits
 * with V=M. An unexpected exception prints its frame and exits with 255.
 */
#define APIC_VECTOR_BASE 0x70
#include "apic_test.h"

#define IOAPIC 0xFEC00000u

/* ---- interrupts ----------------------------------------------------------- */

static volatile uint32_t cnt[256];
static volatile uint32_t seen_remote_irr, seen_tmr;
static volatile int rtc_ack_after = 1;   /* read RTC register C from the n-th interrupt on */
static volatile int rtc_stop;            /* the handler also turns the periodic interrupt off */

static inline uint32_t io_read(uint32_t r) { *(volatile uint32_t *)IOAPIC = r; return *(volatile uint32_t *)(IOAPIC + 0x10); }
static inline void io_write(uint32_t r, uint32_t v) { *(volatile uint32_t *)IOAPIC = r; *(volatile uint32_t *)(IOAPIC + 0x10) = v; }
static void redir(int pin, uint32_t lo, uint32_t hi) { io_write(0x11 + 2 * pin, hi); io_write(0x10 + 2 * pin, lo); }
static uint8_t cmos(uint8_t r) { outb(0x70, r); return inb(0x71); }
static void cmos_set(uint8_t r, uint8_t v) { outb(0x70, r); outb(0x71, v); }

void isr_dispatch(struct frame *f);
void isr_dispatch(struct frame *f)
{
    uint32_t v = f->vec;
    if (v < 0x20) {
        puts_serial("FAIL unexpected exception vec ");
        put_hex(v);
        puts_serial(" eip ");
        put_hex(f->eip);
        putc_serial('\n');
        exit(255);
    }
    cnt[v]++;
    if (v >= 0x20 && v < 0x30) {
        outb(0x20, 0x20);
        return;
    }
    if (v == 0xFF)
        return;
    if (v == 0x71) {
        seen_remote_irr = (io_read(0x10 + 2 * 8) >> 14) & 1;
        seen_tmr = (apic_read(R_TMR + 0x30) >> 17) & 1;    /* vector 0x71 */
        if (rtc_stop)
            cmos_set(0x0B, (uint8_t)(cmos(0x0B) & ~0x40));   /* no further interrupt */
        if ((int)cnt[v] >= rtc_ack_after)
            (void)cmos(0x0C);                                /* drops IRQ 8 */
    }
    apic_write(R_EOI, 0);
}

static void reset_values(void)
{
    check("reset: ID", io_read(0), 0);
    check("reset: version (24 entries, 0x20)", io_read(1), 0x00170020);
    check("reset: arbitration ID", io_read(2), 0);
    uint32_t masked = 0, zero_hi = 0;
    for (int pin = 0; pin < 24; pin++) {
        masked += (io_read(0x10 + 2 * pin) & LVT_MASKED) != 0;
        zero_hi += io_read(0x11 + 2 * pin) == 0;
    }
    check("reset: entries masked", masked, 24);
    check("reset: destinations 0", zero_hi, 24);
    check("reset: entry 0 low", io_read(0x10), 0x00010000);
}

static void registers(void)
{
    redir(5, 0x0001A975, 0xAB000000);
    check("reg: entry low read-back (delivery status, remote IRR read-only)", io_read(0x10 + 10), 0x0001A975);
    check("reg: entry high keeps the destination", io_read(0x11 + 10), 0xAB000000);
    redir(5, LVT_MASKED, 0);
    io_write(1, 0x12345678);
    check("reg: version is read-only", io_read(1), 0x00170020);
    *(volatile uint32_t *)IOAPIC = 0x11;
    check("reg: IOREGSEL read-back", *(volatile uint32_t *)IOAPIC, 0x11);
}

static void edge(void)
{
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
    redir(2, 0x70, 0);                      /* PIT: pin 2, edge, physical 0 */
    pit_load(0, 0x34, (uint16_t)(PIT_HZ / 1000));
    sti();
    int got = wait_count(&cnt[0x70], 3, 200);
    cli();
    ok("edge: PIT IRQ 0 on pin 2", got);
    check("edge: not through the 8259", cnt[0x20], 0);
    redir(2, 0x70 | LVT_MASKED, 0);
    /* A tick the local APIC accepted before the mask is still delivered. */
    sti();
    wait_count(0, 0, 5);
    cli();
    uint32_t n = cnt[0x70];
    sti();
    wait_count(0, 0, 30);
    cli();
    ok("edge: masked entry delivers nothing", cnt[0x70] == n);
    check("edge: no pin 0 traffic", cnt[0x72], 0);
    pit_load(0, 0x30, 1);
}

static void level(void)
{
    (void)cmos(0x0C);
    cmos_set(0x0A, (uint8_t)((cmos(0x0A) & 0xF0) | 0x06));   /* 1024 Hz */
    redir(8, 0x71 | (1u << 15), 0);                           /* level, active high */
    rtc_ack_after = 1;
    /* One interrupt: the next tick cannot set remote IRR before the check. */
    rtc_stop = 1;
    cmos_set(0x0B, (uint8_t)(cmos(0x0B) | 0x40));             /* PIE */
    sti();
    int got = wait_count(&cnt[0x71], 1, 100);
    cli();
    rtc_stop = 0;
    ok("level: RTC IRQ 8 on pin 8", got);
    check("level: remote IRR set in the handler", seen_remote_irr, 1);
    check("level: TMR set for the vector", seen_tmr, 1);
    check("level: remote IRR clear after EOI", (io_read(0x10 + 16) >> 14) & 1, 0);
    /* Not acknowledged at the device: EOI with the line still up delivers again. */
    cmos_set(0x0B, (uint8_t)(cmos(0x0B) & ~0x40));
    (void)cmos(0x0C);
    cnt[0x71] = 0;
    rtc_ack_after = 2;
    cmos_set(0x0B, (uint8_t)(cmos(0x0B) | 0x40));
    sti();
    wait_count(&cnt[0x71], 2, 100);
    cmos_set(0x0B, (uint8_t)(cmos(0x0B) & ~0x40));
    cli();
    ok("level: redelivered while the line stays up", cnt[0x71] >= 2);
    (void)cmos(0x0C);
    redir(8, LVT_MASKED, 0);
}

static void destinations(void)
{
    apic_write(R_DFR, 0xFFFFFFFF);
    apic_write(R_LDR, 0x01000000);
    redir(2, 0x73 | (1u << 11), 0x01000000);                  /* logical, names us */
    pit_load(0, 0x34, (uint16_t)(PIT_HZ / 1000));
    sti();
    int got = wait_count(&cnt[0x73], 2, 200);
    cli();
    ok("dest: logical destination 0x01 with LDR 0x01", got);
    redir(2, 0x74 | (1u << 11), 0x02000000);
    sti();
    wait_count(0, 0, 30);
    cli();
    check("dest: logical destination 0x02 does not name us", cnt[0x74], 0);
    redir(2, LVT_MASKED, 0);
    pit_load(0, 0x30, 1);
    apic_write(R_LDR, 0);
}

void kmain(void)
{
    setup_descriptors();
    pic_init();
    clk_start();
    reset_values();
    registers();
    edge();
    level();
    destinations();
    puts_serial("");
    put_dec(n_pass);
    puts_serial(" passed, ");
    put_dec(n_fail);
    puts_serial(" failed\n");
    exit(n_fail);
}
