/*
 * paging: low-level pieces. Exception stubs (all 32 vectors, one common
 * frame), the ring-3 entry/exit path, fault probes with a recovery address,
 * and the rep-movs copy helpers whose EIP the page-fault checks compare.
 */
#define KCODE   0x08
#define KDATA   0x10
#define UCODE   0x1B
#define UDATA   0x23
#define FAULTED 0xFA17FA17

    .text

/* ---- exception stubs ------------------------------------------------- */
/* Vectors without an error code push a dummy 0 so the frame is uniform:
   es ds edi esi ebp esp ebx edx ecx eax vec err eip cs eflags [esp ss] */
#include "exc_stubs.inc"

#include "isr_common.inc"

/* ---- ring 3 ------------------------------------------------------------ */
/* uint32_t run_user(void *entry, uint32_t arg): IRET to ring 3 at entry
   with EAX=arg and ESP on user_stack. Returns the EAX of the ring-3 code's
   INT 0x30, or FAULTED if it took an exception (the handler sends it to
   user_abort with CS=KCODE; we then drop the ESP0 stack). */
    .globl run_user
run_user:
    pushl %ebp
    pushl %ebx
    pushl %esi
    pushl %edi
    movl %esp, kern_saved_esp
    movl 20(%esp), %ecx
    movl 24(%esp), %eax
    pushl $UDATA
    pushl $user_stack_top
    pushl $0x2                  /* EFLAGS: IF=0, IOPL=0 */
    pushl $UCODE
    pushl %ecx
    movl $UDATA, %edx
    movw %dx, %ds
    movw %dx, %es
    movw %dx, %fs
    movw %dx, %gs
    iret

    .globl user_done, user_abort
user_done:                      /* INT 0x30 (DPL 3) lands here */
    movl $KDATA, %ecx
    movw %cx, %ds
    movw %cx, %es
    movw %cx, %fs
    movw %cx, %gs
    movl kern_saved_esp, %esp
    popl %edi
    popl %esi
    popl %ebx
    popl %ebp
    ret
user_abort:
    movl $FAULTED, %eax
    jmp user_done

/* Ring-3 snippets, on their own page(s) that the kernel maps U=1. */
    .section .text.user, "ax"
    .balign 4096
    .globl user_code_start, user_code_end
    .globl user_read, user_read_insn, user_write, user_write_insn
    .globl user_cli, user_load_kds
user_code_start:
user_read:
user_read_insn:
    movl (%eax), %eax
    int $0x30
user_write:
user_write_insn:
    movl $0x55AA55AA, (%eax)
    xorl %eax, %eax
    int $0x30
user_cli:
    cli
    int $0x30
user_load_kds:
    movl $KDATA, %eax
    movw %ax, %ds
    int $0x30
    .balign 4096
user_code_end:
    .text

/* ---- kernel-mode probes ------------------------------------------------ */
/* Each arms recover_eip = try_fault before the probed instruction; the
   handler jumps there (and disarms) on an exception, and try_fault returns
   FAULTED to the probe's caller. */
    .globl try_read, try_read_insn, try_write, try_write_insn
    .globl try_exec, try_ud, try_ud_insn, try_div0, try_div0_insn
try_read:
    movl 4(%esp), %ecx
    movl $try_fault, recover_eip
try_read_insn:
    movl (%ecx), %eax
    movl $0, recover_eip
    ret

try_write:
    movl 4(%esp), %ecx
    movl 8(%esp), %edx
    movl $try_fault, recover_eip
try_write_insn:
    movl %edx, (%ecx)
    movl $0, recover_eip
    xorl %eax, %eax
    ret

/* Calls entry. A fault in the callee leaves the return address on the
   stack top when it is the first instruction or a straight-line run, so
   try_fault's RET comes back here. */
try_exec:
    movl 4(%esp), %ecx
    movl $try_fault, recover_eip
    call *%ecx
    movl $0, recover_eip
    ret

try_ud:
    movl $try_fault, recover_eip
try_ud_insn:
    ud2
    ret

try_div0:
    pushl %ebx
    movl $try_div0_fault, recover_eip
    xorl %ebx, %ebx
    movl $1, %eax
    xorl %edx, %edx
try_div0_insn:
    divl %ebx
    popl %ebx
    ret
try_div0_fault:
    popl %ebx
    movl $FAULTED, %eax
    ret

try_fault:
    movl $FAULTED, %eax
    ret

/* ---- rep movs ------------------------------------------------------------ */
/* rep_copy_d(dst, src, count) / rep_copy_b: final ECX/ESI/EDI go to
   rep_end_{ecx,esi,edi}. */
    .globl rep_copy_d, rep_copy_b, rep_movsd_insn, rep_movsb_insn
rep_copy_d:
    pushl %edi
    pushl %esi
    movl 12(%esp), %edi
    movl 16(%esp), %esi
    movl 20(%esp), %ecx
    cld
rep_movsd_insn:
    rep movsl
    jmp rep_done
rep_copy_b:
    pushl %edi
    pushl %esi
    movl 12(%esp), %edi
    movl 16(%esp), %esi
    movl 20(%esp), %ecx
    cld
rep_movsb_insn:
    rep movsb
rep_done:
    movl %ecx, rep_end_ecx
    movl %esi, rep_end_esi
    movl %edi, rep_end_edi
    popl %esi
    popl %edi
    ret

/* ---- data --------------------------------------------------------------- */
    .data
    .align 4
    .globl recover_eip, rep_end_ecx, rep_end_esi, rep_end_edi
recover_eip:    .long 0
kern_saved_esp: .long 0
rep_end_ecx:    .long 0
rep_end_esi:    .long 0
rep_end_edi:    .long 0

    .bss
    .balign 4096
    .globl user_stack, user_stack_top
user_stack:     .skip 4096      /* whole page, mapped U=1 */
user_stack_top:
