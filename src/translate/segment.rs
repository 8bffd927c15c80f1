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
    OFF_EIP, OFF_RELOAD_DESC, OFF_RELOAD_KEY, OFF_RELOAD_NEG, OFF_SEG_BASE, OFF_SEG_HI, OFF_SEG_LO, OFF_VERW_DESC,
    OFF_VERW_KEY, OFF_VERW_NEG, OFF_VERW_ZF, SEG_SS, flags, vector,
};
use crate::emit::reg::*;
use crate::emit::{GuestMem, JRCXZ};

/// Condition codes.
const JB: u8 = 0x2;
const JA: u8 = 0x7;

pub(super) fn checked_linear(t: &mut Translator, eip: u32, m: &GuestMem, seg: usize, size: i32) {
    t.lea_offset(m);
    check_and_add_base(t, eip, seg, size);
}

/// The same for a 16-bit addressing form (`[bx+si+d16]` ...): the offset
/// is the 16-bit sum of zero-extended 16-bit registers and displacement.
///
/// ```text
///     movzx r13d, base16 (or mov r13d, 0) ; [movzx r10d, index16 ; lea r13d, [r13+r10]]
///     lea r13d, [r13+disp] ; movzx r13d, r13w ; <checks as above>
/// ```
pub(super) fn checked_linear16(t: &mut Translator, eip: u32, i: &iced_x86::Instruction, seg: usize, size: i32) {
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
    check_and_add_base(t, eip, seg, size);
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

/// JMP rel8 opcode.
const JMP_REL8: u8 = 0xEB;
/// MOVZX r32, r/m16 (0F B7).
const MOVZX_R16: [u8; 2] = [0x0F, 0xB7];

/// MOV ES/DS/FS/GS, r16/r32 and POP ES/DS/FS/GS. Linux's system-call
/// entry reloads DS and ES with the selector they already hold, and its
/// exit path FS; a reload of the loaded selector from a descriptor whose
/// 8 bytes are unchanged is a no-op (the accessed bit is already set, the
/// privilege checks passed and the hidden part would be the same), so it
/// is skipped in place. The dispatcher arms the check only while the
/// loaded state is what the VMM built from that descriptor, with the same
/// GDTR, LDTR and paging (`exec::seg_reload`); anything else leaves
/// through `exit_emulate` and the VMM runs the instruction.
///
/// ```text
///     movzx r13d, r16 | movzx r13d, word gs:[r12d]   ; the new selector
///     mov r10, rcx
///     mov rcx, [r14+reload_key+8*s] ; lea rcx, [rcx+r13+1] ; jrcxz same_sel
///     jmp short vmm
/// same_sel:
///     mov r11, [r14+reload_desc+8*s] ; mov rcx, [r11]      ; the descriptor now
///     mov r11, [r14+reload_neg+8*s]  ; lea rcx, [rcx+r11] ; jrcxz done
/// vmm:
///     mov rcx, r10 ; mov dword [r14+eip], eip ; jmp exit_emulate
/// done:
///     mov rcx, r10 ; [lea r12d, [r12+4]]                ; POP: ESP moves
/// ```
pub(super) fn reload(t: &mut Translator, i: &Instruction) {
    let pop = i.op_count() == 1;
    let s = super::seg_index(i.op0_register()) as i32;
    if pop {
        t.mem_op(&[], &MOVZX_R16, SCRATCH, &GuestMem::base_disp(GUEST_ESP, 0), &[]);
    } else {
        // `decode` sends only register sources here.
        let src = super::host_gpr(i.op1_register()).unwrap_or(RAX);
        t.a.movzx_r32_r16(SCRATCH, src);
    }
    let offs = (OFF_RELOAD_KEY + 8 * s, OFF_RELOAD_DESC + 8 * s, OFF_RELOAD_NEG + 8 * s);
    check_selector_and_descriptor(t, i.ip32(), offs);
    if pop {
        t.a.lea_r32(GUEST_ESP, GUEST_ESP, 4);
    }
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
fn check_selector_and_descriptor(t: &mut Translator, eip: u32, offs: (i32, i32, i32)) {
    let (key, desc, neg) = offs;
    t.a.mov_r64_r64(R10, RCX);
    t.a.mov_r64_mbase(RCX, VCPU, key);
    t.a.lea_r64_bi_d8(RCX, RCX, SCRATCH, 1);
    t.a.bytes(&[JRCXZ, 2, JMP_REL8, 0]);
    let to_vmm = t.a.len() - 1;
    t.a.mov_r64_mbase(R11, VCPU, desc);
    t.a.mov_r64_mbase(RCX, R11, 0);
    t.a.mov_r64_mbase(R11, VCPU, neg);
    t.a.lea_r64_bi(RCX, RCX, R11);
    t.a.bytes(&[JRCXZ, 0]);
    let to_done = t.a.len() - 1;
    let vmm = t.a.len();
    t.a.mov_r64_r64(RCX, R10);
    t.a.mov_mbase_imm32(VCPU, OFF_EIP, eip);
    t.jmp_abs(t.exits_to.emulate);
    let done = t.a.len();
    t.a.buf[to_vmm] = (vmm - (to_vmm + 1)) as u8;
    t.a.buf[to_done] = (done - (to_done + 1)) as u8;
    debug_assert!(done - (to_done + 1) < 128);
    t.a.mov_r64_r64(RCX, R10);
}
