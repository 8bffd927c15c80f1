/*
 * pmfpu: exception stubs (one common frame, resume at recover_eip) and the
 * FPU/SSE probes, each with a label on the probed instruction.
 */
#define KDATA   0x10
    .text
/* frame: es ds edi esi ebp esp ebx edx ecx eax vec err eip cs eflags */
#include "exc_stubs.inc"

#include "isr_common.inc"

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

PROBE p_fld1
p_fld1_insn:
    fld1
PROBE_END p_fld1

PROBE p_fwait
p_fwait_insn:
    fwait
PROBE_END p_fwait

PROBE p_xorps
p_xorps_insn:
    xorps %xmm1, %xmm1
PROBE_END p_xorps

PROBE p_pxor_mmx
p_pxor_mmx_insn:
    pxor %mm1, %mm1
PROBE_END p_pxor_mmx

PROBE p_fxsave
p_fxsave_insn:
    fxsave fx_scratch
PROBE_END p_fxsave

/* unmasked x87 #Z: FDIV records it, the next waiting insn raises #MF */
    .globl p_mf, p_mf_insn, p_mf_fdiv
p_mf:
    movl $p_mf_rec, recover_eip
    fninit
    fldcw fcw_zm_clear
    fld1
    fldz
p_mf_fdiv:
    fdivrp %st, %st(1)          /* st(1) = st(1) / st(0) = 1/0 */
    fnstsw mf_fsw               /* non-waiting: no #MF */
p_mf_insn:
    fwait
p_mf_rec:
    movl $0, recover_eip
    fnstenv mf_env
    fnclex
    fninit
    ret

/* SSE divide by zero with MXCSR.ZM clear; MXCSR in mx_val */
    .globl p_divss, p_divss_insn
p_divss:
    movl $p_divss_rec, recover_eip
    movss one_f, %xmm0
    xorps %xmm1, %xmm1
    ldmxcsr mxcsr_zm_clear
p_divss_insn:
    divss %xmm1, %xmm0
p_divss_rec:
    movl $0, recover_eip
    stmxcsr mx_val
    ldmxcsr mxcsr_default
    ret

    .section .rodata
    .align 4
fcw_zm_clear: .word 0x037B
    .align 4
mxcsr_zm_clear: .long 0x1D80
mxcsr_default: .long 0x1F80
one_f: .float 1.0
    .data
    .align 4
    .globl recover_eip, mf_fsw, mf_env, mx_val
recover_eip: .long 0
mf_fsw: .long 0
mx_val: .long 0
mf_env: .fill 7, 4, 0
    .bss
    .align 16
fx_scratch: .skip 512
