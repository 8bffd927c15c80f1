/*
 * echo: serial input through the COM1 receive interrupt.
 *
 * Own GDT (flat ring 0) and IDT; the PICs are remapped to 0x20-0x2F with
 * only IRQ 4 (COM1) unmasked. The UART gets the received-data interrupt
 * (IER bit 0) and MCR OUT2 (the PC's IRQ gate); the main loop is `sti; hlt`.
 * The IRQ 4 handler reads every byte the UART holds (while LSR.DR) and echoes
 * it in upper case; CR is echoed as CR LF for a raw-mode terminal. A `q`
 * (not echoed) prints "bye" and exits with V=0 (status 1).
 *
 * Prints "echo ready\n" before enabling the interrupt, so input "hello\nq"
 * gives exactly "echo ready\nHELLO\nbye\n" however the bytes are split up.
 * The FIFO is left disabled (reset state) and never cleared: input that
 * arrived before the kernel got here waits in RBR and is echoed too (QEMU
 * and btvisor both hold further host input back until RBR is read).
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
    /* vectors >= 48 are beyond the limit: #GP, which is fatal */
    struct dtr id = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" :: "m"(id) : "memory");
}

/* ---- 8259A ------------------------------------------------------------ */
#define PIC1 0x20
#define PIC2 0xA0
#define EOI  0x20
#define OCW3_ISR 0x0B

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

/* ---- 16550 on COM1 ---------------------------------------------------- */
#define COM1     0x3F8
#define COM1_RBR (COM1 + 0)
#define COM1_IER (COM1 + 1)
#define COM1_IIR (COM1 + 2)
#define COM1_LCR (COM1 + 3)
#define COM1_MCR (COM1 + 4)
#define COM1_LSR (COM1 + 5)
#define IER_RDA  0x01
#define MCR_DTR  0x01
#define MCR_RTS  0x02
#define MCR_OUT2 0x08
#define LSR_DR   0x01

/* ---- interrupts ------------------------------------------------------- */
struct frame {
    uint32_t es, ds, edi, esi, ebp, esp_, ebx, edx, ecx, eax;
    uint32_t vec, err, eip, cs, eflags;
};

static void echo_byte(uint8_t c)
{
    if (c == 'q') {
        puts_serial("bye\n");
        exit(0);
    }
    if (c >= 'a' && c <= 'z')
        c = (uint8_t)(c - 'a' + 'A');
    if (c == '\r')
        putc_serial('\r'), c = '\n';
    putc_serial((char)c);
}

static void uart_irq(void)
{
    (void)inb(COM1_IIR);       /* identify (and acknowledge) the cause */
    while (inb(COM1_LSR) & LSR_DR)
        echo_byte(inb(COM1_RBR));
}

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
    if (irq == 4)
        uart_irq();
    if (irq >= 8)
        outb(PIC2, EOI);
    outb(PIC1, EOI);
}

int kmain(void)
{
    setup_descriptors();
    pic_init();
    puts_serial("echo ready\n");

    outb(COM1_LCR, 0x03);                      /* 8N1, DLAB=0 */
    outb(COM1_MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
    outb(COM1_IER, IER_RDA);
    outb(PIC1 + 1, (uint8_t)~(1u << 4));       /* unmask IRQ 4 only */

    for (;;)
        __asm__ volatile("sti\n\thlt" ::: "memory");
}
