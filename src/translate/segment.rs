//! Checked accesses through segments that are not flat (non-zero base, a
//! limit below 4 GiB, expand-down, or null). The base and the valid offset
//! range are read from `HotState` at run time, so reloading a segment
//! register with another base needs no retranslation; flat segments never
//! come here.
//!
//! ```text
//!     addr32 lea r13d, [ea]
//!     pushfq                            ; the checks need flags
//!     cmp  r13d, [r14+seg_lo+4*s] ; jb fault
//!     lea  r10d, [r13+size-1]
//!     cmp  r10d, r13d             ; jb fault       (wrapped past 4 GiB)
//!     cmp  r10d, [r14+seg_hi+4*s] ; ja fault
//!     add  r13d, [r14+seg_base+4*s]
//!     popfq
//!     jmp  ok
//! fault:
//!     popfq
//!     mov dword [r14+eip], eip ; mov dword [r14+exit_arg], #GP or #SS ; jmp exit_exception
//! ok:
//! ```

use iced_x86::{Instruction, OpKind};

use super::Translator;
use crate::cpu::{
    OFF_ALT_BASE, OFF_ALT_DESC, OFF_ALT_HI, OFF_ALT_KEY, OFF_ALT_LO, OFF_ALT_NEG, OFF_EIP, OFF_RELOAD_DESC,
    OFF_RELOAD_KEY, OFF_RELOAD_NEG, OFF_SEG_BASE, OFF_SEG_HI, OFF_SEG_LO, OFF_SEG_SEL, OFF_VERW_DESC, OFF_VERW_KEY,
    OFF_VERW_NEG, OFF_VERW_ZF, SEG_SS, flags, vector,
};
use crate::emit::reg::*;
use crate::emit::{GuestMem, JRCXZ};

/// Condition codes.
const JB: u8 = 0x2;
const JA: u8 = 0x7;

pub(super) fn checked_linear(t: &mut Translator, eip: u32, m: &GuestMem, seg: usize, size: i32) {
    t.lea_offset(m);
    add_checked_base(t, eip, seg, size);
}

/// Check the offset in R13D for segment `seg` and add its base: flag-free
/// for a based segment (only null faults), else the full range check.
fn add_checked_base(t: &mut Translator, eip: u32, seg: usize, size: i32) {
    if t.opts.mode.seg_based(seg) {
        null_check(t, eip, seg);
        add_base(t, seg);
    } else {
        check_and_add_base(t, eip, seg, size);
    }
}

/// #GP(0) if segment `seg` (`Mode::seg_based`) is null, flag-free: a null
/// segment's published offset range is empty (`hi` 0), a based one's ends
/// at 4 GiB - 1.
///
/// ```text
///     mov r11, rcx ; mov ecx, [r14+seg_hi+4*seg] ; jrcxz null ; jmp ok
/// null: mov rcx, r11 ; <#GP exit at eip>
/// ok:   mov rcx, r11
/// ```
fn null_check(t: &mut Translator, eip: u32, seg: usize) {
    t.a.mov_r64_r64(R11, RCX);
    t.a.mov_r32_mbase(RCX, VCPU, OFF_SEG_HI + 4 * seg as i32);
    t.a.bytes(&[JRCXZ, 2, 0xEB, 0]); // jrcxz null ; jmp ok (patched below)
    let over = t.a.len() - 1;
    t.a.mov_r64_r64(RCX, R11);
    t.exception_exit(eip, vector::GP);
    t.a.buf[over] = (t.a.len() - over - 1) as u8;
    t.a.mov_r64_r64(RCX, R11);
}

/// Add the base of segment `seg`, whose 4 GiB limit no offset can exceed
/// (`Mode::seg_based`), to the offset in R13D, flag-free:
/// `mov r10d, [r14+seg_base+4*seg] ; lea r13d, [r13+r10]`.
fn add_base(t: &mut Translator, seg: usize) {
    t.a.mov_r32_mbase(R10, VCPU, OFF_SEG_BASE + 4 * seg as i32);
    t.a.lea_r32_bi(SCRATCH, SCRATCH, R10, 0);
}

/// The memory operand `m` of an access at `eip` through segment `seg`,
/// whose 4 GiB limit no offset can exceed (`Mode::seg_based`: Linux's
/// per-CPU FS, the TLS GS), with the segment's base folded in: the null
/// test and one or two flag-free instructions before the access itself.
///
/// ```text
///     <null_check>
///     mov r13d, [r14+seg_base+4*seg]
///    [lea r13d, [r13+base]]                  ; when m has a base and an index
/// operand: gs:[r13d + index*scale + disp] | gs:[r13d + base + disp]
/// ```
pub(super) fn based_operand(t: &mut Translator, eip: u32, m: &GuestMem, seg: usize) -> GuestMem {
    null_check(t, eip, seg);
    t.a.mov_r32_mbase(SCRATCH, VCPU, OFF_SEG_BASE + 4 * seg as i32);
    let (index, scale) = match (m.base, m.index) {
        (Some(b), Some(x)) => {
            t.a.lea_r32_bi(SCRATCH, SCRATCH, b, 0);
            (Some(x), m.scale)
        }
        (Some(b), None) => (Some(b), 1),
        (None, x) => (x, m.scale),
    };
    GuestMem { base: Some(SCRATCH), index, scale, disp: m.disp }
}

/// The same for a 16-bit addressing form (`[bx+si+d16]` ...): the offset
/// is the 16-bit sum of zero-extended 16-bit registers and displacement.
///
/// ```text
///     movzx r13d, base16 (or mov r13d, 0) ; [movzx r10d, index16 ; lea r13d, [r13+r10]]
///     lea r13d, [r13+disp] ; movzx r13d, r13w ; <checks as above>
/// ```
pub(super) fn checked_linear16(t: &mut Translator, eip: u32, i: &iced_x86::Instruction, seg: usize, size: i32) {
    offset16(t, i);
    add_checked_base(t, eip, seg, size);
}

/// The 16-bit effective address of `i`'s memory operand into R13D (flag-free):
///
/// ```text
/// movzx r13d, base16 | mov r13d, 0 ; [movzx r10d, index16 ; lea r13d, [r13+r10]]
/// lea r13d, [r13 + disp16] ; movzx r13d, r13w
/// ```
pub(super) fn offset16(t: &mut Translator, i: &iced_x86::Instruction) {
    match super::host_gpr(i.memory_base()).filter(|_| i.memory_base() != iced_x86::Register::None) {
        Some(b) => t.a.movzx_r32_r16(SCRATCH, b),
        None => t.a.mov_r32_imm(SCRATCH, 0),
    }
    if let Some(x) = super::host_gpr(i.memory_index()).filter(|_| i.memory_index() != iced_x86::Register::None) {
        t.a.movzx_r32_r16(R10, x);
        t.a.lea_r32_bi(SCRATCH, SCRATCH, R10, 0);
    }
    t.a.lea_r32(SCRATCH, SCRATCH, (i.memory_displacement32() & 0xFFFF) as i32);
    t.a.movzx_r32_r16(SCRATCH, SCRATCH);
}

/// Range-check the offset in R13D for segment `seg` and add its base.
fn check_and_add_base(t: &mut Translator, eip: u32, seg: usize, size: i32) {
    t.a.pushfq();
    let off = 4 * seg as i32;
    t.a.cmp_r32_mbase(SCRATCH, VCPU, OFF_SEG_LO + off);
    let f1 = t.a.jcc_rel32(JB);
    t.a.lea_r32(R10, SCRATCH, size - 1);
    t.a.cmp_r32_r32(R10, SCRATCH);
    let f2 = t.a.jcc_rel32(JB);
    t.a.cmp_r32_mbase(R10, VCPU, OFF_SEG_HI + off);
    let f3 = t.a.jcc_rel32(JA);
    t.a.add_r32_mbase(SCRATCH, VCPU, OFF_SEG_BASE + off);
    t.a.popfq();
    let ok = t.a.jmp_rel32();
    let fault = t.a.len();
    for f in [f1, f2, f3] {
        t.a.bind_rel32(f, fault);
    }
    t.a.popfq();
    let v = if seg == SEG_SS { vector::SS } else { vector::GP };
    t.exception_exit(eip, v);
    let done = t.a.len();
    t.a.bind_rel32(ok, done);
}

/// Length of `jmp rel32` (what a JRCXZ skips to fall through on a match).
const JMP_REL32_LEN: u8 = 5;
/// MOVZX r32, r/m16 (0F B7).
const MOVZX_R16: [u8; 2] = [0x0F, 0xB7];

/// MOV ES/DS/FS/GS, r16/r32 and POP ES/DS/FS/GS. Linux's system-call
/// entry reloads DS and ES with the selector they already hold, and
/// toggles FS between the user's selector and `__KERNEL_PERCPU`. A reload
/// of the loaded selector from a descriptor whose 8 bytes are unchanged is
/// a no-op (the accessed bit is already set, the privilege checks passed
/// and the hidden part would be the same), so it is skipped in place; a
/// load of the register's *alternative* (the load before, recorded by the
/// engine, with the same flatness) swaps the two records, base and offset
/// range included. Keys hold the selector and the CPL of the load. The
/// dispatcher arms both only while the loaded state is what the VMM built,
/// with the same GDTR, LDTR and paging (`exec::seg_reload`); anything else
/// leaves through `exit_emulate` and the VMM runs the instruction.
///
/// ```text
///     movzx r13d, r16 | movzx r13d, word gs:[r12d] | movzx r13d, word gs:[ea]
///     mov r10, rcx
///     mov rcx, [r14+reload_key+8*s] ; lea rcx, [rcx+r13+1+cpl<<16] ; jrcxz +5 ; jmp alt
///     mov r11, [r14+reload_desc+8*s] ; mov rcx, [r11]       ; the descriptor now
///     mov r11, [r14+reload_neg+8*s] ; lea rcx, [rcx+r11] ; jrcxz +5 ; jmp vmm
///     jmp done
/// alt:
///     <the same with alt_key, alt_desc, alt_neg; any miss: jmp vmm>
///     for each of key, desc, neg, base, lo, hi:            ; swap the records
///         mov rcx, [r14+reload_x] ; mov r11, [r14+alt_x] ; mov [r14+reload_x], r11 ; mov [r14+alt_x], rcx
///     mov [r14+seg_sel+4*s], r13d
///     jmp done
/// vmm:
///     mov rcx, r10 ; mov dword [r14+eip], eip ; jmp exit_emulate
/// done:
///     mov rcx, r10 ; [lea r12d, [r12+4]]                 ; POP: ESP moves
/// ```
pub(super) fn reload(t: &mut Translator, i: &Instruction) {
    let pop = i.op_count() == 1;
    let s = super::seg_index(i.op0_register()) as i32;
    if pop {
        t.mem_op(&[], &MOVZX_R16, SCRATCH, &GuestMem::base_disp(GUEST_ESP, 0), &[]);
    } else if i.op1_kind() == OpKind::Memory {
        // Linux's SYSEXIT path: `mov PT_FS(%esp), %fs` (a flat segment:
        // `Translator::insn` sends other memory operands to the VMM).
        let m = super::guest_mem(i, GUEST_ESP);
        t.mem_op(&[], &MOVZX_R16, SCRATCH, &m, &[]);
    } else {
        let src = super::host_gpr(i.op1_register()).unwrap_or(RAX);
        t.a.movzx_r32_r16(SCRATCH, src);
    }
    let key_disp = 1 + (i32::from(t.opts.mode.cpl()) << 16);
    t.a.mov_r64_r64(R10, RCX);
    let mut to_vmm = Vec::new();
    // The loaded selector again: nothing to do.
    let to_alt = key_test(t, OFF_RELOAD_KEY + 8 * s, key_disp);
    to_vmm.push(descriptor_test(t, OFF_RELOAD_DESC + 8 * s, OFF_RELOAD_NEG + 8 * s));
    let mut to_done = vec![t.a.jmp_rel32()];
    // The alternative: swap it in.
    let alt = t.a.len();
    t.a.bind_rel32(to_alt, alt);
    to_vmm.push(key_test(t, OFF_ALT_KEY + 8 * s, key_disp));
    to_vmm.push(descriptor_test(t, OFF_ALT_DESC + 8 * s, OFF_ALT_NEG + 8 * s));
    for (cur, other) in [(OFF_RELOAD_KEY, OFF_ALT_KEY), (OFF_RELOAD_DESC, OFF_ALT_DESC), (OFF_RELOAD_NEG, OFF_ALT_NEG)]
    {
        let (cur, other) = (cur + 8 * s, other + 8 * s);
        t.a.mov_r64_mbase(RCX, VCPU, cur);
        t.a.mov_r64_mbase(R11, VCPU, other);
        t.a.mov_mbase_r64(VCPU, cur, R11);
        t.a.mov_mbase_r64(VCPU, other, RCX);
    }
    for (cur, other) in [(OFF_SEG_BASE, OFF_ALT_BASE), (OFF_SEG_LO, OFF_ALT_LO), (OFF_SEG_HI, OFF_ALT_HI)] {
        let (cur, other) = (cur + 4 * s, other + 4 * s);
        t.a.mov_r32_mbase(RCX, VCPU, cur);
        t.a.mov_r32_mbase(R11, VCPU, other);
        t.a.mov_mbase_r32(VCPU, cur, R11);
        t.a.mov_mbase_r32(VCPU, other, RCX);
    }
    t.a.mov_mbase_r32(VCPU, OFF_SEG_SEL + 4 * s, SCRATCH);
    to_done.push(t.a.jmp_rel32());
    vmm_tail(t, i.ip32(), &to_vmm, &to_done);
    if pop {
        t.a.lea_r32(GUEST_ESP, GUEST_ESP, 4);
    }
}

/// `mov rcx, [r14+key] ; lea rcx, [rcx+r13+disp] ; jrcxz +5 ; jmp rel32`:
/// falls through when the key matches R13D; returns the jump to patch.
fn key_test(t: &mut Translator, key: i32, disp: i32) -> usize {
    t.a.mov_r64_mbase(RCX, VCPU, key);
    t.a.lea_r64_bi_d32(RCX, RCX, SCRATCH, disp);
    t.a.bytes(&[JRCXZ, JMP_REL32_LEN]);
    t.a.jmp_rel32()
}

/// `mov r11, [r14+desc] ; mov rcx, [r11] ; mov r11, [r14+neg] ; lea rcx,
/// [rcx+r11] ; jrcxz +5 ; jmp rel32`: falls through when the descriptor's
/// bytes are as recorded; returns the jump to patch.
fn descriptor_test(t: &mut Translator, desc: i32, neg: i32) -> usize {
    t.a.mov_r64_mbase(R11, VCPU, desc);
    t.a.mov_r64_mbase(RCX, R11, 0);
    t.a.mov_r64_mbase(R11, VCPU, neg);
    t.a.lea_r64_bi(RCX, RCX, R11);
    t.a.bytes(&[JRCXZ, JMP_REL32_LEN]);
    t.a.jmp_rel32()
}

/// VERW r/m16. Linux's return to user space runs `verw` on `__KERNEL_DS`
/// (its MDS buffer clearing, which a Pentium M gets) on every system call.
/// VERW's only output is ZF, decided by the selector, the CPL and the
/// descriptor; the VMM records what it found (`exec::seg_reload`) and the
/// dispatcher publishes it while GDTR, LDTR, paging and the CPL are as
/// then. Translated code compares the selector and the descriptor's 8
/// bytes as for a segment reload and sets ZF from the record:
///
/// ```text
///     movzx r13d, r16 | movzx r13d, word gs:[ea]
///     <selector and descriptor check as in `reload`, verw_* fields>
///     pushfq ; pop r13 ; and r13d, ~ZF ; add r13d, [r14+verw_zf] ; push r13 ; popfq
/// ```
pub(super) fn verw(t: &mut Translator, i: &Instruction) {
    if i.op0_kind() == OpKind::Register {
        let src = super::host_gpr(i.op0_register()).unwrap_or(RAX);
        t.a.movzx_r32_r16(SCRATCH, src);
    } else {
        let m = super::guest_mem(i, GUEST_ESP);
        t.mem_op(&[], &MOVZX_R16, SCRATCH, &m, &[]);
    }
    check_selector_and_descriptor(t, i.ip32(), (OFF_VERW_KEY, OFF_VERW_DESC, OFF_VERW_NEG));
    t.a.pushfq();
    t.a.pop_r64(SCRATCH);
    t.a.and_r32_imm(SCRATCH, !flags::ZF);
    t.a.add_r32_mbase(SCRATCH, VCPU, OFF_VERW_ZF);
    t.a.push_r64(SCRATCH);
    t.a.popfq();
}

/// The selector in R13D against the key at `offs.0`, and the descriptor
/// at the host address at `offs.1` against the negated bytes at `offs.2`;
/// on any difference the VMM runs the instruction at `eip`. RCX is kept.
///
/// ```text
///     mov r10, rcx ; <key_test> ; <descriptor_test> ; jmp done
/// vmm:
///     mov rcx, r10 ; mov dword [r14+eip], eip ; jmp exit_emulate
/// done:
///     mov rcx, r10
/// ```
fn check_selector_and_descriptor(t: &mut Translator, eip: u32, offs: (i32, i32, i32)) {
    let (key, desc, neg) = offs;
    t.a.mov_r64_r64(R10, RCX);
    let to_vmm = [key_test(t, key, 1), descriptor_test(t, desc, neg)];
    let to_done = t.a.jmp_rel32();
    vmm_tail(t, eip, &to_vmm, &[to_done]);
}

/// Bind `to_vmm` to a tail that restores RCX from R10 and has the VMM run
/// the instruction at `eip`, and `to_done` to what follows (RCX restored).
fn vmm_tail(t: &mut Translator, eip: u32, to_vmm: &[usize], to_done: &[usize]) {
    let vmm = t.a.len();
    for &at in to_vmm {
        t.a.bind_rel32(at, vmm);
    }
    t.a.mov_r64_r64(RCX, R10);
    t.a.mov_mbase_imm32(VCPU, OFF_EIP, eip);
    t.jmp_abs(t.exits_to.emulate);
    let done = t.a.len();
    for &at in to_done {
        t.a.bind_rel32(at, done);
    }
    t.a.mov_r64_r64(RCX, R10);
}
