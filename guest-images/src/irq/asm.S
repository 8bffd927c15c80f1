/*
 * irq: low-level pieces. Stubs for the 32 exception vectors and the 16 PIC
 * vectors (0x20-0x2F) share one frame and call isr_dispatch; the probes
 * below have labels the handler compares the saved EIP against.
 */
#define KDATA 0x10

    .text

/* Vectors without an error code push a dummy 0 so the frame is uniform:
   es ds edi esi ebp esp ebx edx ecx eax vec err eip cs eflags */
#include "exc_stubs.inc"
STUB_NOERR 32
STUB_NOERR 33
STUB_NOERR 34
STUB_NOERR 35
STUB_NOERR 36
STUB_NOERR 37
STUB_NOERR 38
STUB_NOERR 39
STUB_NOERR 40
STUB_NOERR 41
STUB_NOERR 42
STUB_NOERR 43
STUB_NOERR 44
STUB_NOERR 45
STUB_NOERR 46
STUB_NOERR 47

#define ISR_HANDLER isr_dispatch
#include "isr_common.inc"
    .section .rodata
    .long stub32, stub33, stub34, stub35, stub36, stub37, stub38, stub39
    .long stub40, stub41, stub42, stub43, stub44, stub45, stub46, stub47
    .text

/* ---- probes ------------------------------------------------------------ */
/* sti_nop_cli: a pending interrupt is taken after the instruction that
   follows STI, so the saved EIP is sti_cli_insn. */
    .globl sti_nop_cli, sti_cli_insn
sti_nop_cli:
    sti
    nop
sti_cli_insn:
    cli
    ret

/* sti_hlt_cli: the idle loop; HLT is woken by the interrupt, which returns
   to the instruction after HLT. */
    .globl sti_hlt_cli, hlt_after
sti_hlt_cli:
    sti
    hlt
hlt_after:
    cli
    ret

/* spin(n): n iterations of dec/jnz with IF=1, IF=0 again on return. */
    .globl spin, spin_loop, spin_end
spin:
    movl 4(%esp), %ecx
    sti
spin_loop:
    decl %ecx
    jnz spin_loop
spin_end:
    cli
    ret

/* fill(dst, byte, n): rep stosb with IF=1, IF=0 again on return. The NOP
   keeps the rep out of the STI shadow (QEMU's TCG would extend the shadow
   over every iteration). */
    .globl fill, fill_insn
fill:
    pushl %edi
    movl 8(%esp), %edi
    movl 12(%esp), %eax
    movl 16(%esp), %ecx
    cld
    sti
    nop
fill_insn:
    rep stosb
    cli
    popl %edi
    ret
