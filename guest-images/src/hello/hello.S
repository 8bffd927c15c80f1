/*
 * hello: smallest boot test. Prints a fixed greeting, the Multiboot magic
 * from EAX, the command line and mem_upper from the info structure, then
 * exits with V=0 (QEMU status 1). Uses the common start.S/rt.c runtime.
 */
#include "../common/multiboot.h"

    .section .rodata
greeting:   .asciz "Hello from btvisor guest!\n"
s_magic:    .asciz "magic: "
s_cmdline:  .asciz "cmdline: "
s_memupper: .asciz "mem_upper: "
s_none:     .asciz "(none)"
s_kib:      .asciz " KiB\n"
s_nl:       .asciz "\n"

    .text
    .globl kmain
/* int kmain(uint32_t magic, uint32_t info) -- cdecl */
kmain:
    pushl %ebx
    pushl %esi
    movl 12(%esp), %esi         /* magic */
    movl 16(%esp), %ebx         /* info */

    pushl $greeting
    call puts_serial
    movl $s_magic, (%esp)
    call puts_serial
    movl %esi, (%esp)
    call put_hex
    movl $s_nl, (%esp)
    call puts_serial

    movl $s_cmdline, (%esp)
    call puts_serial
    call mb_cmdline             /* "" when the flag is clear */
    movl %eax, (%esp)
    call puts_serial
    movl $s_nl, (%esp)
    call puts_serial

    movl $s_memupper, (%esp)
    call puts_serial
    testl $MBI_HAS_MEM, MBI_FLAGS(%ebx)
    jz 1f
    movl MBI_MEM_UPPER(%ebx), %eax
    movl %eax, (%esp)
    call put_dec
    movl $s_kib, (%esp)
    call puts_serial
    jmp 2f
1:  movl $s_none, (%esp)
    call puts_serial
    movl $s_nl, (%esp)
    call puts_serial
2:  addl $4, %esp
    xorl %eax, %eax             /* exit value 0 */
    popl %esi
    popl %ebx
    ret
