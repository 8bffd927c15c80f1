/*
 * What the APIC test kernels (lapic, ioapic) share: the local APIC's
 * registers, port and MSR access, the GDT/IDT set-up (exceptions, the 8259
 * vectors 0x20-0x2F, 24 APIC vectors from APIC_VECTOR_BASE, 0x60 and the
 * spurious 0xFF, as their asm.S provides them), the 8259 initialisation and
 * PIT channel 2 as a clock. Include once, from the kernel's C file, after
 * defining APIC_VECTOR_BASE.
 */
#ifndef APIC_TEST_H
#define APIC_TEST_H
#include "rt.h"
#include "ktest.h"

#define KCODE 0x08
#define KDATA 0x10
#define EFLAGS_IF 0x200u

#define APIC 0xFEE00000u
#define R_ID 0x20
#define R_VER 0x30
#define R_TPR 0x80
#define R_APR 0x90
#define R_PPR 0xA0
#define R_EOI 0xB0
#define R_LDR 0xD0
#define R_DFR 0xE0
#define R_SVR 0xF0
#define R_ISR 0x100
#define R_TMR 0x180
#define R_IRR 0x200
#define R_ESR 0x280
#define R_ICR_LO 0x300
#define R_ICR_HI 0x310
#define R_LVT_TIMER 0x320
#define R_LVT_THERMAL 0x330
#define R_LVT_PERF 0x340
#define R_LVT_LINT0 0x350
#define R_LVT_LINT1 0x360
#define R_LVT_ERROR 0x370
#define R_TMICT 0x380
#define R_TMCCT 0x390
#define R_TDCR 0x3E0

#define LVT_MASKED (1u << 16)
#define TIMER_PERIODIC (1u << 17)
#define ICR_SELF (1u << 18)
#define ICR_BUSY (1u << 12)

extern const uint32_t stub_table[48];
extern const uint32_t apic_stubs[26];

static inline uint32_t apic_read(uint32_t r) { return *(volatile uint32_t *)(APIC + r); }
static inline void apic_write(uint32_t r, uint32_t v) { *(volatile uint32_t *)(APIC + r) = v; }
static inline void outb(uint16_t p, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(p) : "memory"); }
static inline uint8_t inb(uint16_t p) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p) : "memory"); return v; }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline uint64_t rdmsr(uint32_t m)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(m));
    return (uint64_t)hi << 32 | lo;
}
static inline void ok(const char *name, int cond) { check(name, cond ? 1 : 0, 1); }

/* ---- descriptor tables ------------------------------------------------ */
struct dtr { uint16_t limit; uint32_t base; } __attribute__((packed));
static uint64_t gdt[3] __attribute__((aligned(8)));
static uint64_t idt[256] __attribute__((aligned(8)));

static void set_gate(int n, uint32_t handler)
{
    idt[n] = (handler & 0xFFFF) | ((uint64_t)KCODE << 16) | ((uint64_t)0x8E00 << 32) |
             ((uint64_t)(handler >> 16) << 48);
}

static void setup_descriptors(void)
{
    gdt[1] = desc(0, 0xFFFFF, 0x9A, 0xC);
    gdt[2] = desc(0, 0xFFFFF, 0x92, 0xC);
    struct dtr g = { sizeof gdt - 1, (uint32_t)gdt };
    __asm__ volatile("lgdt %0\n\tljmp $0x08, $1f\n1:\tmovw $0x10, %%ax\n\t"
                     "movw %%ax, %%ds\n\tmovw %%ax, %%es\n\tmovw %%ax, %%ss\n\t"
                     "movw %%ax, %%fs\n\tmovw %%ax, %%gs" :: "m"(g) : "eax", "memory");
    for (int i = 0; i < 48; i++)
        set_gate(i, stub_table[i]);     /* (vector 2, NMI, included) */
    for (int i = 0; i < 24; i++)
        set_gate(APIC_VECTOR_BASE + i, apic_stubs[i]);
    set_gate(0x60, apic_stubs[24]);
    set_gate(0xFF, apic_stubs[25]);
    struct dtr id = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" :: "m"(id) : "memory");
}

/* ---- 8259A and 8254 ----------------------------------------------------- */
#define PIT_HZ 1193182u
#define PIT_MS 1193u
static void pic_init(void)
{
    outb(0x20, 0x11); outb(0x21, 0x20); outb(0x21, 0x04); outb(0x21, 0x01);
    outb(0xA0, 0x11); outb(0xA1, 0x28); outb(0xA1, 0x02); outb(0xA1, 0x01);
    outb(0x21, 0xFF); outb(0xA1, 0xFF);
}
static void pit_load(int ch, uint8_t mode, uint16_t count)
{
    outb(0x43, (uint8_t)((ch << 6) | mode));
    outb((uint16_t)(0x40 + ch), (uint8_t)count);
    outb((uint16_t)(0x40 + ch), (uint8_t)(count >> 8));
}
static uint16_t pit_latch(int ch)
{
    outb(0x43, (uint8_t)(ch << 6));
    uint16_t lo = inb((uint16_t)(0x40 + ch));
    return (uint16_t)(lo | inb((uint16_t)(0x40 + ch)) << 8);
}
/* channel 2 as a free-running clock */
static uint16_t clk_last;
static uint32_t clk_acc;
static void clk_start(void)
{
    outb(0x61, (uint8_t)((inb(0x61) & 0x0C) | 0x01));
    pit_load(2, 0x34, 0);
    clk_last = pit_latch(2);
    clk_acc = 0;
}
static uint32_t clk(void)
{
    uint16_t v = pit_latch(2);
    clk_acc += (uint16_t)(clk_last - v);
    clk_last = v;
    return clk_acc;
}
/* wait until *flag reaches n or ms pass; returns whether it did */
static int wait_count(volatile uint32_t *flag, uint32_t n, uint32_t ms)
{
    uint32_t t0 = clk();
    while (clk() - t0 < ms * PIT_MS) {
        if (flag && *flag >= n)
            return 1;
        for (volatile int k = 0; k < 50; k++)
            ;
    }
    return flag && *flag >= n;
}

/* The frame of common/isr_common.inc. */
struct frame {
    uint32_t es, ds, edi, esi, ebp, esp_, ebx, edx, ecx, eax;
    uint32_t vec, err, eip, cs, eflags;
};
#endif
