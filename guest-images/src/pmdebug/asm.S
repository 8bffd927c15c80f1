/*
 * pmdebug: exception stubs (one common frame) and the code stepped or
 * breakpointed by kernel.c, with a label on every instruction that matters.
 */
#define KDATA   0x10
    .text
/* frame: es ds edi esi ebp esp ebx edx ecx eax vec err eip cs eflags */
.macro STUB_NOERR n
stub\n: pushl $0
        pushl $\n
        jmp isr_common
.endm
.macro STUB_ERR n
stub\n: pushl $\n
        jmp isr_common
.endm
STUB_NOERR 0
STUB_NOERR 1
STUB_NOERR 2
STUB_NOERR 3
STUB_NOERR 4
STUB_NOERR 5
STUB_NOERR 6
STUB_NOERR 7
STUB_ERR   8
STUB_NOERR 9
STUB_ERR   10
STUB_ERR   11
STUB_ERR   12
STUB_ERR   13
STUB_ERR   14
STUB_NOERR 15
STUB_NOERR 16
STUB_ERR   17
STUB_NOERR 18
STUB_NOERR 19
STUB_NOERR 20
STUB_NOERR 21
STUB_NOERR 22
STUB_NOERR 23
STUB_NOERR 24
STUB_NOERR 25
STUB_NOERR 26
STUB_NOERR 27
STUB_NOERR 28
STUB_NOERR 29
STUB_NOERR 30
STUB_NOERR 31

isr_common:
    pushal
    pushl %ds
    pushl %es
    cld
    movl $KDATA, %eax
    movw %ax, %ds
    movw %ax, %es
    pushl %esp
    call exc_handler
    addl $4, %esp
    popl %es
    popl %ds
    popal
    addl $8, %esp
    iret

    .section .rodata
    .globl stub_table
    .align 4
stub_table:
    .long stub0, stub1, stub2, stub3, stub4, stub5, stub6, stub7
    .long stub8, stub9, stub10, stub11, stub12, stub13, stub14, stub15
    .long stub16, stub17, stub18, stub19, stub20, stub21, stub22, stub23
    .long stub24, stub25, stub26, stub27, stub28, stub29, stub30, stub31
    .text

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
