/*
 * pm: low-level pieces. Exception/interrupt stubs (one common frame), the
 * ring-3 entry/exit path, probes (each arms recover_eip before the probed
 * instruction, the handler resumes there), ring-3 snippets, a 16-bit code
 * segment body and the SYSENTER entry point.
 */
#define KCODE   0x08
#define KDATA   0x10
#define UCODE   0x1B
#define UDATA   0x23

    .text

/* ---- stubs -------------------------------------------------------------- */
/* frame: es ds edi esi ebp esp ebx edx ecx eax vec err eip cs eflags [esp ss] */
#include "exc_stubs.inc"
STUB_NOERR 0x80
STUB_NOERR 0x81

#include "isr_common.inc"
    .section .rodata
    .globl stub_80, stub_81
stub_80: .long stub0x80
stub_81: .long stub0x81
    .text

/* ---- ring 3 ------------------------------------------------------------- */
/* uint32_t run_user(void *entry, uint32_t eflags): IRET to ring 3 at entry
   with the given EFLAGS, ESP = user_stack_top, all data segments UDATA.
   The snippet ends with INT 0x82 (DPL 3), which lands in user_exit: the
   user's EFLAGS/ESP are saved in u_exit_efl/u_exit_esp, and run_user
   returns the user's EAX. */
    .globl run_user, user_exit, user_stack_top
run_user:
    pushl %ebp
    pushl %ebx
    pushl %esi
    pushl %edi
    pushfl
    movl %esp, kern_saved_esp
    movl 24(%esp), %ecx
    movl 28(%esp), %edx
    pushl $UDATA
    pushl $user_stack_top
    pushl %edx
    pushl $UCODE
    pushl %ecx
    movl $UDATA, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    xorl %eax, %eax
    xorl %ebx, %ebx
    xorl %ecx, %ecx
    xorl %edx, %edx
    xorl %esi, %esi
    xorl %edi, %edi
    xorl %ebp, %ebp
    iret

user_exit:                      /* INT 0x82 from ring 3 */
    movl $KDATA, %ecx
    movw %cx, %ds
    movw %cx, %es
    movw %cx, %fs
    movw %cx, %gs
    movl 8(%esp), %ecx
    movl %ecx, u_exit_efl
    movl 12(%esp), %ecx
    movl %ecx, u_exit_esp
    movl kern_saved_esp, %esp
    popfl
    popl %edi
    popl %esi
    popl %ebx
    popl %ebp
    ret

/* ---- probes (ring 0) ---------------------------------------------------- */
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

PROBE p_de
    pushl %ebx
    xorl %edx, %edx
    movl $1, %eax
    xorl %ebx, %ebx
p_de_insn:
    divl %ebx
    popl %ebx
    movl $0, recover_eip
    ret
p_de_rec:
    popl %ebx
    movl $0, recover_eip
    ret

PROBE p_ud
p_ud_insn:
    ud2
PROBE_END p_ud

PROBE p_bp
    int3
p_bp_insn:                      /* trap: saved EIP is after the INT3 */
PROBE_END p_bp

PROBE p_of
    movl $0x7fffffff, %eax
    addl $1, %eax               /* OF=1 */
    into
p_of_insn:
PROBE_END p_of

PROBE p_br
    movl $20, %eax
p_br_insn:
    boundl %eax, bound_pair
PROBE_END p_br

PROBE p_br_ok                   /* in range: no exception */
    movl $5, %eax
p_br_ok_insn:
    boundl %eax, bound_pair
PROBE_END p_br_ok

/* void p_load_ds(uint32_t sel) / es / fs / gs / ss */
/* segment loads: the register is set back to KDATA afterwards */
.macro LOADPROBE name, reg
PROBE \name
    movl 4(%esp), %eax
\name\()_insn:
    movw %ax, \reg
\name\()_rec:
    movl $KDATA, %eax
    movw %ax, \reg
    movl $0, recover_eip
    ret
.endm
LOADPROBE p_load_es, %es
LOADPROBE p_load_ds, %ds

PROBE p_load_ss
    movl 4(%esp), %eax
p_load_ss_insn:
    movw %ax, %ss
PROBE_END p_load_ss

/* void p_pop_ss(uint32_t sel): POP SS of sel; pop_ss_esp = ESP at the POP.
   Either way ESP and SS are set back afterwards. */
    .globl p_pop_ss, p_pop_ss_insn, pop_ss_esp
p_pop_ss:
    movl $p_pop_ss_rec, recover_eip
    pushl 4(%esp)
    movl %esp, pop_ss_esp
p_pop_ss_insn:
    popl %ss
p_pop_ss_rec:
    movl pop_ss_esp, %esp
    addl $4, %esp
    movl $KDATA, %eax
    movw %ax, %ss
    movl $0, recover_eip
    ret

/* uint32_t p_rd_fs(uint32_t off) / p_rd_gs: read seg:off */
PROBE p_rd_fs
    movl 4(%esp), %ecx
    movl $0xdeadbeef, %eax
p_rd_fs_insn:
    movl %fs:(%ecx), %eax
PROBE_END p_rd_fs

PROBE p_rd_gs
    movl 4(%esp), %ecx
    movl $0xdeadbeef, %eax
p_rd_gs_insn:
    movl %gs:(%ecx), %eax
PROBE_END p_rd_gs

/* void p_wr_fs(uint32_t off, uint32_t val) */
PROBE p_wr_fs
    movl 4(%esp), %ecx
    movl 8(%esp), %eax
p_wr_fs_insn:
    movl %eax, %fs:(%ecx)
PROBE_END p_wr_fs

/* ---- far call / far jmp ------------------------------------------------- */
    .globl far_call_test, far_target
/* uint32_t far_call_test(uint32_t *frame_cs, uint32_t *frame_eip) */
far_call_test:
    lcall $KCODE, $far_target
far_call_ret:
    movl 4(%esp), %ecx
    movl fc_cs, %eax
    movl %eax, (%ecx)
    movl 8(%esp), %ecx
    movl fc_eip, %eax
    subl $far_call_ret, %eax
    movl %eax, (%ecx)
    movl $0x600d, %eax
    ret
far_target:
    movl 4(%esp), %eax
    andl $0xffff, %eax
    movl %eax, fc_cs
    movl (%esp), %eax
    movl %eax, fc_eip
    lret

/* uint32_t jmp16_test(uint32_t *bx, uint32_t *espdiff): far JMP to the
   16-bit code segment (CODE16 selector passed in code16_sel), back with a
   32-bit far JMP. */
    .globl jmp16_test, code16_start
jmp16_test:
    pushl %ebx
    pushl %esi
    movl $0, %ebx
    ljmp *code16_ptr
jmp16_back:
    movl 12(%esp), %ecx
    movl %ebx, (%ecx)
    movl 16(%esp), %ecx
    movl %edx, (%ecx)
    xorl %eax, %eax
    movw %cs, %ax
    popl %esi
    popl %ebx
    ret

    .code16
code16_start:
    movw $0x1234, %ax
    addw %ax, %ax               /* 0x2468 */
    movw %ax, %bx
    movl %esp, %esi
    pushw %ax                   /* 16-bit operand: ESP -= 2 */
    movl %esi, %edx
    subl %esp, %edx
    popw %ax
    ljmpl $KCODE, $jmp16_back
    .code32

/* ---- SYSENTER entry (ring 0) -------------------------------------------- */
    .globl sysenter_entry
sysenter_entry:
    movl %esp, se_esp
    xorl %eax, %eax
    movw %cs, %ax
    movl %eax, se_cs
    movw %ss, %ax
    movl %eax, se_ss
    pushfl
    popl se_efl
    sysexit                     /* EIP = EDX, ESP = ECX, CS = 0x1B, SS = 0x23 */

/* ---- ring-3 snippets ---------------------------------------------------- */
    .globl u_ids, u_lar, lar_probe, u_priv, u_int80, u_int3, u_sysenter
    .globl u_io, u_io_iopl3, u_iobitmap
    .globl u_priv_cr0, u_priv_hlt, u_priv_cli, u_priv_sti, u_priv_int81
    .globl u_priv_lds, u_priv_lgdt, u_priv_rdmsr
    .globl u_int3_after, u_io_in, u_io_out, u_bm_out80, u_bm_out81, u_bm_inw80
    .globl u_bm_in80

/* identity / flags: results in u_res[] */
u_ids:
    xorl %eax, %eax
    movw %cs, %ax
    movl %eax, u_res+0
    movw %ss, %ax
    movl %eax, u_res+4
    pushl %cs
    popl %eax
    andl $0xffff, %eax
    movl %eax, u_res+8
    pushfl
    popl %eax
    movl %eax, u_res+12
    andl $~0x200, %eax          /* try to clear IF */
    pushl %eax
    popfl
    pushfl
    popl u_res+16
    pushfl
    popl %eax
    orl $0x3000, %eax           /* try to set IOPL 3 */
    pushl %eax
    popfl
    pushfl
    popl u_res+20
    xorl %eax, %eax
    smsw %ax
    movl %eax, u_res+24
    xorl %eax, %eax
    str %ax
    movl %eax, u_res+28
    movl $0xffff, %eax
    sldt %ax
    movl %eax, u_res+32
    sgdt u_gdtr
    sidt u_idtr
    int $0x82

/* LAR/LSL/VERR/VERW of the selector in lar_sel. lar_res: lar, zf, lsl, zf,
   verr zf, verw zf */
lar_probe:
    pushl %ebx
    movl lar_sel, %ecx
    movl $0xdeadbeef, %eax
    larl %ecx, %eax
    setz %bl
    movzbl %bl, %ebx
    movl %eax, lar_res+0
    movl %ebx, lar_res+4
    movl $0xdeadbeef, %eax
    lsll %ecx, %eax
    setz %bl
    movl %eax, lar_res+8
    movl %ebx, lar_res+12
    verr %cx
    setz %bl
    movl %ebx, lar_res+16
    verw %cx
    setz %bl
    movl %ebx, lar_res+20
    popl %ebx
    ret
u_lar:
    call lar_probe
    int $0x82

/* privileged instructions at ring 3 with IOPL 0: each must #GP; the
   handler resumes at the next label via recover_eip. */
u_priv:
    movl $1f, recover_eip
u_priv_cr0:
    movl %cr0, %eax
1:  movl $1f, recover_eip
u_priv_hlt:
    hlt
1:  movl $1f, recover_eip
u_priv_cli:
    cli
1:  movl $1f, recover_eip
u_priv_sti:
    sti
1:  movl $1f, recover_eip
u_priv_int81:
    int $0x81                   /* trap gate DPL 0: #GP(0x81*8+2) */
1:  movl $1f, recover_eip
u_priv_lds:
    movl $KDATA, %eax
    movw %ax, %ds               /* DPL 0 < CPL 3: #GP(0x10) */
1:  movl $1f, recover_eip
u_priv_lgdt:
    lgdt u_gdtr
1:  movl $1f, recover_eip
    movl $0x174, %ecx
u_priv_rdmsr:
    rdmsr
1:  movl $0, recover_eip
    int $0x82

/* INT 0x80 from ring 3; u_res[0] = ESP before, u_res[1] = ESP after */
u_int80:
    movl $0x80808080, %eax
    movl %esp, u_res+0
    int $0x80
    movl %esp, u_res+4
    movl %eax, u_res+8
    int $0x82

u_int3:
    subl $12, %esp
    movl %esp, u_res+0
    int3
u_int3_after:
    addl $12, %esp
    int $0x82

/* SYSENTER: EDX = return EIP, ECX = return ESP */
u_sysenter:
    movl $1f, %edx
    movl %esp, %ecx
    subl $16, %ecx
    movl %ecx, u_res+0
    sysenter
1:  xorl %eax, %eax
    movw %cs, %ax
    movl %eax, u_res+4
    movw %ss, %ax
    movl %eax, u_res+8
    movl %esp, u_res+12
    pushfl
    popl u_res+16
    addl $16, %esp
    int $0x82

/* IN/OUT at ring 3, IOPL 0, no usable I/O bitmap: #GP(0) */
u_io:
    movl $1f, recover_eip
u_io_in:
    inb $0x80, %al
1:  movl $1f, recover_eip
u_io_out:
    outb %al, $0x80
1:  movl $0, recover_eip
    int $0x82

/* I/O bitmap allows only port 0x80 */
u_iobitmap:
    movl $0, u_res+0
    movl $1f, recover_eip
u_bm_out80:
    outb %al, $0x80
    movl $1, u_res+0            /* reached only without a fault */
1:  movl $1f, recover_eip
u_bm_in80:
    inb $0x80, %al
    movl $1, u_res+4
1:  movl $1f, recover_eip
u_bm_out81:
    outb %al, $0x81
1:  movl $1f, recover_eip
u_bm_inw80:
    inw $0x80, %ax              /* ports 0x80 and 0x81 */
1:  movl $0, recover_eip
    int $0x82

/* Alignment check (run with ac=1): at ring 3 with CR0.AM and EFLAGS.AC a
   misaligned dword load raises #AC(0) (the handler resumes at the next
   label); aligned loads do not fault. */
    .globl u_ac, u_ac_load
u_ac:
    movl $1f, recover_eip
u_ac_load:
    movl u_res+1, %eax
1:  movl $0, recover_eip
    movl u_res, %eax
    movw u_res+2, %ax
    int $0x82

/* Stack-segment limits (run with ss=1): at ring 3, with SS a small
   expand-up segment (USMALL, limit 0xFFF) or an expand-down one (UEXPDN,
   limit 0xFFF: offsets 0x1000 and up), each access beyond the limit is
   #SS(0) at its instruction with ESP unchanged; the handler resumes at the
   next label. The ones within the limit do not fault. ss_esp[i] = ESP at
   probe i. */
#define USMALL 0x6B
#define UEXPDN 0x73
    .globl u_ss, u_ss_push, u_ss_pop, u_ss_ebp, u_ss_ovr, u_ss_down_push, u_ss_down_ovr, u_ss_in
    .globl ss_esp
u_ss:
    movl $USMALL, %eax
    movw %ax, %ss
    movl $0x1000, %esp
    pushl $0x5555aaaa           /* 0xFFC..0xFFF: within the limit */
    popl %eax
    movl %eax, u_res+0
    movl $1f, recover_eip
    movl $0x1003, %esp
    movl %esp, ss_esp+0
u_ss_push:
    pushl %eax                  /* 0xFFF..0x1002: #SS(0) */
1:  movl $1f, recover_eip
    movl $0xFFE, %esp
    movl %esp, ss_esp+4
u_ss_pop:
    popl %eax                   /* 0xFFE..0x1001: #SS(0) */
1:  movl $1f, recover_eip
    movl $0xFF0, %ebp
    movl %esp, ss_esp+8
u_ss_ebp:
    movl 0x10(%ebp), %eax       /* implied SS, 0x1000..0x1003: #SS(0) */
1:  movl $1f, recover_eip
    movl $0x2000, %ecx
    movl %esp, ss_esp+12
u_ss_ovr:
    movl %eax, %ss:-0x1000(%ecx) /* SS override, 0x1000: #SS(0) */
1:  movl $0x1234, %ecx
    movl %ecx, %ss:0xFF0        /* within the limit */
    movl %ss:0xFF0, %ecx
    movl %ecx, u_res+4
    movl $UEXPDN, %eax
    movw %ax, %ss
    movl $0x1004, %esp
    pushl $0x6666bbbb           /* 0x1000..0x1003: above the limit, valid */
    popl %eax
    movl %eax, u_res+8
    movl $1f, recover_eip
    movl $0x1000, %esp
    movl %esp, ss_esp+16
u_ss_down_push:
    pushl %eax                  /* 0xFFC..0xFFF: at or below the limit: #SS(0) */
1:  movl $1f, recover_eip
    movl $0x800, %ecx
    movl %esp, ss_esp+20
u_ss_down_ovr:
    movl %ss:(%ecx), %eax       /* 0x800: below the limit: #SS(0) */
1:  movl $1f, recover_eip
    movl $0x0FFE, %ecx
    movl %esp, ss_esp+24
u_ss_in:
    movl %ss:(%ecx), %eax       /* 0xFFE..0x1001: straddles the limit: #SS(0) */
1:  movl $0, recover_eip
    int $0x82

/* IOPL 3: CLI/STI/IN/OUT allowed at ring 3 */
u_io_iopl3:
    cli
    pushfl
    popl u_res+0
    sti
    pushfl
    popl u_res+4
    movw $0x3fd, %dx
    inb %dx, %al
    movl $1, u_res+8
    outb %al, $0x80
    movl $1, u_res+12
    int $0x82

    .section .rodata
    .align 4
bound_pair: .long 0, 10
    .data
    .align 4
    .globl code16_ptr
code16_ptr: .long 0, 0          /* offset, selector: set by kmain */
    .globl recover_eip
recover_eip: .long 0
    .globl kern_saved_esp, u_exit_efl, u_exit_esp, u_res, u_gdtr, u_idtr
    .globl lar_sel, lar_res, se_esp, se_cs, se_ss, se_efl, fc_cs, fc_eip
kern_saved_esp: .long 0
u_exit_efl: .long 0
u_exit_esp: .long 0
u_res: .fill 16, 4, 0
u_gdtr: .fill 2, 4, 0
u_idtr: .fill 2, 4, 0
lar_sel: .long 0
lar_res: .fill 8, 4, 0
se_esp: .long 0
se_cs: .long 0
se_ss: .long 0
se_efl: .long 0
fc_cs: .long 0
fc_eip: .long 0
pop_ss_esp: .long 0
ss_esp: .fill 8, 4, 0

    .bss
    .align 16
user_stack: .skip 4096
user_stack_top:
/* What the stack segments of u_ss map (see ss_area in kernel.c). */
    .globl ss_area
ss_area: .skip 0x3000
