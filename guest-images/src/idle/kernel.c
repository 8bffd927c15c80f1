/*
 * idle: an idle guest, to measure what idling costs the host.
 *
 * Own GDT (flat ring 0) and IDT (entry stubs shared with echo, see
 * src/echo/asm.S); PICs remapped to 0x20-0x2F with only IRQ 0 unmasked.
 * PIT channel 0 runs as a 1000 Hz rate generator (mode 2, count 1193); the
 * IRQ 0 handler counts ticks and EOIs, the main loop is `sti; hlt` until
 * `secs=N` seconds worth of ticks (default 2) have been counted. Prints only
 * "idle done\n" so the output does not depend on timing; exits with V=0.
 * An unexpected exception prints its vector and exits with V=255.
 */
#include "rt.h"
#include "ktest.h"

#define KCODE 0x08
#define KDATA 0x10

extern const uint32_t stub_table[48];

static inline void outb(uint16_t p, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(p) : "memory"); }
static inline uint8_t inb(uint16_t p) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p) : "memory"); return v; }

/* ---- descriptor tables ------------------------------------------------ */
struct dtr {
    uint16_t limit;
    uint32_t base;
} __attribute__((packed));

static uint64_t gdt[3] __attribute__((aligned(8)));
static uint64_t idt[48] __attribute__((aligned(8)));


static void setup_descriptors(void)
{
    gdt[0] = 0;
    gdt[1] = desc(0, 0xFFFFF, 0x9A, 0xC);      /* flat 32-bit code */
    gdt[2] = desc(0, 0xFFFFF, 0x92, 0xC);      /* flat data */
    struct dtr g = { sizeof gdt - 1, (uint32_t)gdt };
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp $0x08, $1f\n"
                     "1:\tmovw $0x10, %%ax\n\t"
                     "movw %%ax, %%ds\n\tmovw %%ax, %%es\n\tmovw %%ax, %%ss\n\t"
                     "movw %%ax, %%fs\n\tmovw %%ax, %%gs"
                     :: "m"(g) : "eax", "memory");
    for (int i = 0; i < 48; i++) {
        uint32_t h = stub_table[i];
        idt[i] = (h & 0xFFFF) | ((uint64_t)KCODE << 16) |
                 ((uint64_t)0x8E00 << 32) |         /* 32-bit interrupt gate */
                 ((uint64_t)(h >> 16) << 48);
    }
    struct dtr id = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" :: "m"(id) : "memory");
}

/* ---- 8259A, 8254 ------------------------------------------------------ */
#define PIC1 0x20
#define PIC2 0xA0
#define EOI  0x20
#define OCW3_ISR 0x0B
#define PIT_CH0 0x40
#define PIT_CMD 0x43
#define HZ 1000u
#define PIT_COUNT 1193u        /* 1193182 Hz / 1193 = 1000.15 Hz */

static void pic_init(void)
{
    outb(PIC1, 0x11);          /* ICW1: edge, cascade, ICW4 follows */
    outb(PIC1 + 1, 0x20);      /* ICW2: vectors 0x20-0x27 */
    outb(PIC1 + 1, 0x04);      /* ICW3: slave on IR2 */
    outb(PIC1 + 1, 0x01);      /* ICW4: 8086 mode, normal EOI */
    outb(PIC2, 0x11);
    outb(PIC2 + 1, 0x28);      /* vectors 0x28-0x2F */
    outb(PIC2 + 1, 0x02);      /* slave id 2 */
    outb(PIC2 + 1, 0x01);
    outb(PIC1 + 1, 0xFF);      /* everything masked for now */
    outb(PIC2 + 1, 0xFF);
}

/* ---- interrupts ------------------------------------------------------- */
struct frame {
    uint32_t es, ds, edi, esi, ebp, esp_, ebx, edx, ecx, eax;
    uint32_t vec, err, eip, cs, eflags;
};

static volatile uint32_t ticks;

void isr_dispatch(struct frame *f);
void isr_dispatch(struct frame *f)
{
    if (f->vec < 0x20) {
        puts_serial("FAIL unexpected exception vec ");
        put_hex(f->vec);
        puts_serial(" err ");
        put_hex(f->err);
        puts_serial(" eip ");
        put_hex(f->eip);
        putc_serial('\n');
        exit(255);
    }
    int irq = (int)f->vec - 0x20;
    /* IR7 with its ISR bit clear is the 8259A's spurious interrupt: no EOI */
    if (irq == 7 || irq == 15) {
        uint16_t base = irq == 7 ? PIC1 : PIC2;
        outb(base, OCW3_ISR);
        if (!(inb(base) & 0x80)) {
            if (irq == 15)
                outb(PIC1, EOI);   /* the master did see IR2 */
            return;
        }
    }
    if (irq == 0)
        ticks++;
    if (irq >= 8)
        outb(PIC2, EOI);
    outb(PIC1, EOI);
}

int kmain(void)
{
    uint32_t secs = cmdline_uint("secs", 2);
    uint32_t target = secs * HZ;

    setup_descriptors();
    pic_init();
    outb(PIT_CMD, 0x34);                       /* ch 0, lo/hi, mode 2, binary */
    outb(PIT_CH0, PIT_COUNT & 0xFF);
    outb(PIT_CH0, PIT_COUNT >> 8);
    outb(PIC1 + 1, (uint8_t)~1u);              /* unmask IRQ 0 only */

    /* Test and sleep with IF=0 in between, so a tick cannot slip in after
       the test and leave HLT waiting for the next one; STI's shadow covers
       HLT, so the interrupt wakes it. */
    for (;;) {
        __asm__ volatile("cli" ::: "memory");
        if (ticks >= target)
            break;
        __asm__ volatile("sti\n\thlt" ::: "memory");
    }
    outb(PIC1 + 1, 0xFF);
    puts_serial("idle done\n");
    return 0;
}
