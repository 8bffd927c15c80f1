/* gdbtest.elf: the code gdb stops in, steps through and watches (kernel.c). */
#define KDATA 0x10
#define UCODE 0x1b
#define UDATA 0x23
#define ALIAS 0x40000000

    .text
/* Every kind of instruction, for stepi. */
    .globl gt_steps, gt_step_priv, gt_step_fault, gt_step_int, gt_step_rep, gt_steps_end
gt_steps:
    pushl %esi
    pushl %edi
    movl $0x11111111, %eax
    movl $0x22222222, %ebx
gt_step_priv:
    cli
    sti
    cli
    movl %cr0, %ecx
    movl %ecx, %cr0
gt_step_fault:
    ud2                         /* #UD: the handler skips it */
    addl $1, %eax
gt_step_int:
    int $0x80                   /* the handler returns with IRET */
    addl $2, %eax
gt_step_rep:
    cld
    movl $gt_src, %esi
    movl $gt_dst, %edi
    movl $3, %ecx
    rep movsb
    movl gt_dst, %edx
    .globl gt_bp_site
gt_bp_site:
    pushl %ebp                  /* 0x55: a breakpoint goes here */
    popl %ebp
gt_steps_end:
    popl %edi
    popl %esi
    ret

/* Stores and loads through the alias mapping, for watchpoints. */
    .globl gt_watch, gt_watch_store, gt_watch_load, gt_watch_end
gt_watch:
    movl $ALIAS, %ecx
    movl $0, 0x20(%ecx)
    nop
gt_watch_store:
    movl $0xabcd1234, 0x10(%ecx)
    nop
    addl $1, 0x10(%ecx)
    nop
gt_watch_load:
    movl 0x20(%ecx), %eax
    nop
    movl 0x10(%ecx), %edx
    addl %eax, 0x10(%ecx)
gt_watch_end:
    ret

/* To ring 3 and back. */
    .globl gt_user_enter, gt_user, gt_user_end
gt_user_enter:
    pushal
    movl %esp, gt_saved_esp
    pushl $UDATA
    pushl $gt_ustack + 4096
    pushl $0x202
    pushl $UCODE
    pushl $gt_user
    iret
gt_user:
    movl $UDATA, %eax
    movw %ax, %ds
    movl $5, %eax
    imull $7, %eax
    movl %eax, %ebx
gt_user_end:
    movl $0x99, %eax
    int $0x80                   /* from ring 3: back to gt_user_enter */

/* #UD and #GP: count, skip the 2-byte instruction. */
    .globl gt_ud_handler, gt_gp_handler, gt_int80_handler
gt_ud_handler:
    incl gt_faults
    addl $2, (%esp)
    iret
gt_gp_handler:
    incl gt_faults
    addl $2, 4(%esp)
    addl $4, %esp
    iret
/* INT 0x80: from ring 0 just return; from ring 3 (EAX = 0x99) resume
   ring 0 after gt_user_enter's IRET. */
gt_int80_handler:
    cmpl $0x99, %eax
    je 1f
    iret
1:  movl $KDATA, %eax
    movw %ax, %ds
    movw %ax, %es
    movl gt_saved_esp, %esp
    popal
    ret

    .data
gt_src: .byte 0xa1, 0xb2, 0xc3, 0xd4
gt_dst: .long 0
gt_saved_esp: .long 0
