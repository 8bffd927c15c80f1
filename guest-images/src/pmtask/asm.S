/*
 * pmtask: exception stubs for task A (the kernel), task bodies for B and
 * the #DF task, and the probes that switch tasks.
 */
#define KDATA   0x10
#define TSS_A   0x18
#define TSS_B   0x20
#define TSS_BAD 0x30

    .text
/* frame: es ds edi esi ebp esp ebx edx ecx eax vec err eip cs eflags */
#include "exc_stubs.inc"

#include "isr_common.inc"

/* record the state a task starts with: regs, TR, EFLAGS, busy bytes */
.macro RECORD
    pushfl
    popl t_efl
    movl %eax, t_regs+0
    movl %ebx, t_regs+4
    movl %ecx, t_regs+8
    movl %edx, t_regs+12
    movl %esi, t_regs+16
    movl %edi, t_regs+20
    movl %ebp, t_regs+24
    movl %esp, t_regs+28
    xorl %eax, %eax
    str %ax
    movl %eax, t_tr
    movzbl gdt+TSS_A+5, %eax
    movl %eax, t_accA
    movzbl gdt+TSS_B+5, %eax
    movl %eax, t_accB
    movzbl gdt+0x28+5, %eax
    movl %eax, t_accDF
    incl t_count
.endm

/* ---- task A side -------------------------------------------------------- */
    .globl do_jmp_b, do_call_b, do_int_b, after_jmp_b
/* void do_jmp_b(void): eax..edi = known values, JMP to task B, which
   jumps back. */
do_jmp_b:
    pushal
    movl $0xA0000001, %eax
    movl $0xA0000002, %ebx
    movl $0xA0000003, %ecx
    movl $0xA0000004, %edx
    movl $0xA0000005, %esi
    movl $0xA0000006, %edi
    ljmp $TSS_B, $0
after_jmp_b:
    movl %eax, a_regs+0         /* as restored from TSS A */
    movl %ebx, a_regs+4
    movl %ecx, a_regs+8
    movl %edx, a_regs+12
    movl %esi, a_regs+16
    movl %edi, a_regs+20
    pushfl
    popl a_efl
    popal
    ret

do_call_b:
    pushal
    movl $0xC0000001, %eax
    lcall $TSS_B, $0
    movl %eax, a_regs+0
    pushfl
    popl a_efl
    popal
    ret

do_int_b:
    pushal
    int $0x40
    pushfl
    popl a_efl
    popal
    ret

/* ---- probes with recovery ------------------------------------------------ */
.macro PROBE name
    .globl \name, \name\()_insn
\name:
    movl $\name\()_rec, recover_eip
.endm
.macro PROBE_END name
\name\()_rec:
    movl $0, recover_eip
    ret
.endm

PROBE p_jmp_busy
p_jmp_busy_insn:
    ljmp $TSS_A, $0
PROBE_END p_jmp_busy

PROBE p_call_busy
p_call_busy_insn:
    lcall $TSS_A, $0
PROBE_END p_call_busy

PROBE p_jmp_bad
p_jmp_bad_insn:
    ljmp $TSS_BAD, $0
PROBE_END p_jmp_bad

PROBE p_iret_nt0                /* IRET with NT=0: plain return */
    pushfl
    pushl %cs
    pushl $p_iret_nt0_rec
p_iret_nt0_insn:
    iret
PROBE_END p_iret_nt0

/* #GP whose IDT gate is not present -> #NP during delivery -> #DF, which
   goes through a task gate to the DF task; that task sets TSS A's EIP to
   df_resume and IRETs back. */
    .globl do_df, df_insn, df_resume
do_df:
    pushal
    xorl %eax, %eax
df_insn:
    movw %ax, %ss               /* #GP(0) */
    hlt                         /* not reached */
df_resume:
    popal
    ret

/* ---- task B --------------------------------------------------------------- */
    .globl task_b_jmp, task_b_call, task_df, b_after_iret
task_b_jmp:
    RECORD
    movl $0xB0000001, %eax      /* must not leak into task A */
    ljmp $TSS_A, $0
    hlt

task_b_call:
    RECORD
    movl $0xB0000002, %eax
    iret
b_after_iret:
    jmp task_b_call             /* the next CALL resumes here */

/* ---- #DF task ------------------------------------------------------------- */
task_df:
    popl df_err
    RECORD
    call df_fix
    iret
    jmp task_df

    .data
    .align 4
    .globl recover_eip, t_regs, t_tr, t_efl, t_accA, t_accB, t_accDF, t_count
    .globl a_regs, a_efl, df_err
recover_eip: .long 0
t_regs: .fill 8, 4, 0
t_tr: .long 0
t_efl: .long 0
t_accA: .long 0
t_accB: .long 0
t_accDF: .long 0
t_count: .long 0
a_regs: .fill 8, 4, 0
a_efl: .long 0
df_err: .long 0
