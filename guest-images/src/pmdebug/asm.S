/*
 * pmdebug: exception stubs (one common frame) and the code stepped or
 * breakpointed by kernel.c, with a label on every instruction that matters.
 */
#define KDATA   0x10
    .text
/* frame: es ds edi esi ebp esp ebx edx ecx eax vec err eip cs eflags */
#include "exc_stubs.inc"

#include "isr_common.inc"

/* single-step: POPF sets TF, the trap comes after the next instruction */
    .globl ss_run, ss_i1, ss_i2, ss_i3, ss_i4, ss_i5, ss_i6, ss_i7, ss_i8, ss_i9
ss_run:
    pushfl
    orl $0x100, (%esp)
    popfl
ss_i1:
    nop
ss_i2:
    movl $1, %eax
ss_i3:
    addl $2, %eax
ss_i4:
    jmp ss_i6
ss_i5:
    hlt                         /* skipped */
ss_i6:
    pushfl
ss_i7:
    andl $~0x100, (%esp)
ss_i8:
    popfl                       /* clears TF; still traps after itself */
ss_i9:
    nop
    ret

/* instruction breakpoint target */
    .globl bp_fn, bp_insn
bp_fn:
    movl $5, %eax
bp_insn:
    addl $10, %eax
    ret

/* data write breakpoint target */
    .globl wp_fn, wp_insn, wp_after
wp_fn:
    movl 4(%esp), %ecx
wp_insn:
    movl $0x1234, (%ecx)
wp_after:
    ret
