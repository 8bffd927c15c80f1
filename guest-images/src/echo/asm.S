/*
 * echo: interrupt entry stubs. Vectors 0-31 (exceptions) and 0x20-0x2F
 * (the remapped PICs) share one frame and call isr_dispatch(frame):
 *   es ds edi esi ebp esp ebx edx ecx eax vec err eip cs eflags
 * Vectors without a CPU error code push a dummy 0.
 */
#define KDATA 0x10

    .text
.macro STUB_NOERR n
stub\n: pushl $0
        pushl $\n
        jmp isr_common
.endm
.macro STUB_ERR n
stub\n: pushl $\n
        jmp isr_common
.endm

    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    STUB_NOERR \n
    .endr
    .irp n, 8,10,11,12,13,14,17
    STUB_ERR \n
    .endr
    .irp n, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
    STUB_NOERR \n
    .endr

isr_common:
    pushal
    pushl %ds
    pushl %es
    cld
    movl $KDATA, %eax
    movw %ax, %ds
    movw %ax, %es
    pushl %esp                  /* struct frame * */
    call isr_dispatch
    addl $4, %esp
    popl %es
    popl %ds
    popal
    addl $8, %esp               /* vector, error code */
    iret

    .section .rodata
    .globl stub_table
    .align 4
stub_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23
    .long stub\n
    .endr
    .irp n, 24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
    .long stub\n
    .endr
