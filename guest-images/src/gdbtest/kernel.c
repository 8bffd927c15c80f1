/*
 * gdbtest.elf: a kernel for driving gdb against btvisor and QEMU (tests/gdb.rs).
 * It is the debugger's test bed, not a self-checking kernel: its global
 * labels (asm.S) are where the gdb script stops, steps and watches.
 *
 *   - flat ring 0/3 segments, a TSS, an IDT whose #UD/#GP handlers skip
 *     the faulting instruction and an INT 0x80 gate open to ring 3;
 *   - paging with the first 4 MiB identity-mapped and one more page,
 *     gt_page, also mapped at the linear address ALIAS (watchpoints through
 *     paging at an address that differs from the physical one);
 *   - gt_steps: instructions of every kind for stepi (privileged, faulting,
 *     INT n, IRET, CLI/STI, REP MOVSB);
 *   - gt_watch: writes and reads through ALIAS;
 *   - gt_user: ring 3 code, back to ring 0 by INT 0x80.
 *
 * It prints gt_var (which the gdb script sets to 42) and the first byte of
 * the code at gt_bp_site (where the script puts a breakpoint: 0x55 unless a
 * debugger wrote an INT3 there), then exits through isa-debug-exit.
 */
#include "rt.h"
#include "ktest.h"

#define KCODE 0x08
#define KDATA 0x10
#define UCODE 0x1b
#define UDATA 0x23
#define TSSSEL 0x28
#define ALIAS 0x40000000u

struct tss { uint32_t link, esp0, ss0, pad[23]; } __attribute__((packed));

static uint64_t gdt[6];
static uint64_t idt[256];
static struct tss tss;
static uint32_t pd[1024] __attribute__((aligned(4096)));
static uint32_t pt0[1024] __attribute__((aligned(4096)));
static uint32_t pt_alias[1024] __attribute__((aligned(4096)));
uint8_t gt_page[4096] __attribute__((aligned(4096)));
static uint8_t kstack[4096] __attribute__((aligned(16)));
uint8_t gt_ustack[4096] __attribute__((aligned(16)));
volatile uint32_t gt_var = 7;
uint32_t gt_faults;

extern void gt_steps(void), gt_watch(void), gt_user_enter(void);
extern void gt_ud_handler(void), gt_gp_handler(void), gt_int80_handler(void);
extern uint8_t gt_bp_site[];

static void gate(int n, void (*h)(void), int dpl)
{
    uint32_t a = (uint32_t)h;
    /* 32-bit interrupt gate */
    idt[n] = (a & 0xFFFF) | ((uint64_t)KCODE << 16) | ((uint64_t)(0x8E | (dpl << 5)) << 40) |
             ((uint64_t)(a >> 16) << 48);
}

void kmain(void)
{
    puts_serial("gdbtest start\n");
    gdt[1] = desc(0, 0xFFFFF, 0x9A, 0xC);
    gdt[2] = desc(0, 0xFFFFF, 0x92, 0xC);
    gdt[3] = desc(0, 0xFFFFF, 0xFA, 0xC);
    gdt[4] = desc(0, 0xFFFFF, 0xF2, 0xC);
    tss.ss0 = KDATA;
    tss.esp0 = (uint32_t)kstack + sizeof kstack;
    gdt[5] = desc((uint32_t)&tss, sizeof tss - 1, 0x89, 0);
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) g = { sizeof gdt - 1, (uint32_t)gdt },
        i = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lgdt %0\n\tljmp %1, $1f\n1:\n\t"
                     "mov %2, %%ax\n\tmov %%ax, %%ds\n\tmov %%ax, %%es\n\tmov %%ax, %%ss\n\t"
                     "mov %%ax, %%fs\n\tmov %%ax, %%gs\n\tmov %3, %%ax\n\tltr %%ax"
                     :: "m"(g), "i"(KCODE), "i"(KDATA), "i"(TSSSEL) : "eax", "memory");
    gate(6, gt_ud_handler, 0);
    gate(13, gt_gp_handler, 0);
    gate(0x80, gt_int80_handler, 3);
    __asm__ volatile("lidt %0" :: "m"(i));

    for (uint32_t k = 0; k < 1024; k++)
        pt0[k] = (k << 12) | 7;           /* present, writable, user */
    pt_alias[0] = (uint32_t)gt_page | 7;
    pd[0] = (uint32_t)pt0 | 7;
    pd[ALIAS >> 22] = (uint32_t)pt_alias | 7;
    __asm__ volatile("mov %0, %%cr3\n\tmov %%cr0, %%eax\n\tor $0x80000000, %%eax\n\tmov %%eax, %%cr0"
                     :: "r"(pd) : "eax", "memory");

    gt_steps();
    gt_watch();
    gt_user_enter();

    puts_serial("var=");
    put_dec(gt_var);
    puts_serial(" faults=");
    put_dec(gt_faults);
    puts_serial(" code byte=");
    put_hex(gt_bp_site[0]);
    puts_serial(" alias=");
    put_hex(*(volatile uint32_t *)(ALIAS + 0x10));
    puts_serial("\n");
    exit(0);
}
