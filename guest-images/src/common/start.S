/*
 * Multiboot v1 header and entry point shared by every test kernel.
 * Build with -DAOUT_KLUDGE for the flat-binary "header address" form.
 * Entry state (per spec): flat 32-bit PM, EAX=magic, EBX=info, paging and
 * interrupts off, ESP undefined. We only use user-level instructions here:
 * no GDT/IDT/CR setup, that belongs to later milestones.
 */
#include "multiboot.h"

#ifdef AOUT_KLUDGE
#define MB_FLAGS (MB_FLAG_ALIGN | MB_FLAG_MEMINFO | MB_FLAG_AOUT_KLUDGE)
#else
#define MB_FLAGS (MB_FLAG_ALIGN | MB_FLAG_MEMINFO)
#endif

    .section .multiboot, "a"
    .align 4
mb_header:
    .long MB_HEADER_MAGIC
    .long MB_FLAGS
    .long -(MB_HEADER_MAGIC + MB_FLAGS)
#ifdef AOUT_KLUDGE
    /* addresses come from the linker script (link-aout.ld) */
    .long mb_header         /* header_addr */
    .long __load_start      /* load_addr: first byte of the file */
    .long __load_end        /* load_end_addr: end of .data */
    .long __bss_end         /* bss_end_addr */
    .long _start            /* entry_addr */
#endif

    .text
    .globl _start
_start:
    /* Keep magic/info in regs not used by rep stos below. */
    movl %eax, %edx
    movl %ebx, %esi
    /* Zero .bss ourselves: the a.out form guarantees it, ELF loaders
       do too in practice, but being explicit costs nothing. */
    cld
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movl $stack_top, %esp
    xorl %ebp, %ebp
    movl %edx, mb_magic
    movl %esi, mb_info
    /* Power-on FCW is 0x0040 (exceptions unmasked); FNINIT gives the same
       0x037F a Linux process starts with, so x87 results match natively. */
    fninit
    pushl %esi
    pushl %edx
    call kmain
    /* kmain's return value is the exit code */
    pushl %eax
    call exit
1:  jmp 1b

    /* In .data (not .bss) so every image has a non-empty data segment:
       an empty PT_LOAD gets emitted at vaddr 0 and confuses loaders. */
    .data
    .align 4
    .globl mb_magic, mb_info
mb_magic: .long 0
mb_info:  .long 0

    .bss
    .align 16
stack_bottom:
    .skip 16384
stack_top:
