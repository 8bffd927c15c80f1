/*
 * smp: the interrupt stubs (common/apic_stubs.inc, APIC vectors from 0x40),
 * the application processors' real-mode start-up code, copied below 1 MiB
 * by the bootstrap processor, and the function the cross-modifying-code
 * group rewrites.
 */
#define APIC_VECTOR_BASE 0x40
#include "apic_stubs.inc"

/*
 * STARTUP enters here in real mode at CS:0 (CS = vector << 8). Load the
 * GDT whose descriptor the BSP patched in, enter protected mode and jump to
 * ap_entry32 (a 32-bit far jump: the 16-bit form cannot reach 1 MiB).
 */
    .code16
    .globl tramp_start, tramp_gdtr, tramp_end
tramp_start:
    cli
    movw %cs, %ax
    movw %ax, %ds
    lgdtl tramp_gdtr - tramp_start
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $ap_entry32
    .align 4
tramp_gdtr:
    .word 0
    .long 0
tramp_end:

    .code32
ap_entry32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    /* Stack: ap_stacks[id + 1] (ID from the local APIC, bits 24-31). */
    movl 0xFEE00020, %eax
    shrl $24, %eax
    andl $7, %eax
    movl %eax, %ebx
    incl %eax
    shll $12, %eax
    addl $ap_stacks, %eax
    movl %eax, %esp
    pushl %ebx
    call ap_main
1:  cli
    hlt
    jmp 1b

/* In .data, on its own page: the BSP rewrites the immediate. */
    .data
    .align 4096
    .globl cmc_func
cmc_func:
    movl $1, %eax
    ret
    .align 4096
