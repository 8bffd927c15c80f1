//! String instructions.
//!
//! LODS and XLAT read through DS, which accepts a segment override: they are
//! copied with `gs: addr32`. MOVS/STOS/SCAS/CMPS address ES:EDI, which
//! cannot be overridden and has base 0 in 64-bit mode, so copying them would
//! touch host memory. They run as host string instructions on host pointers
//! instead: `lea rdi, [r15+rdi]` (EDI is zero-extended), the instruction with
//! 64-bit addressing, then `mov edi, edi` — the window is 4 GiB aligned, so
//! truncation recovers the guest address. A fault in the middle of a REP
//! leaves RCX/RSI/RDI at the interrupted iteration, as on hardware; the
//! handler truncates the pointers (`Fixup::TruncStringPtrs`).
//!
//! MOVS and STOS that keep faulting in the shadow window (the kernel's
//! `copy_to_user`, a new process's `memcpy` into fresh pages) take the soft
//! form instead (`soft`): a callout copies through the soft TLB, page by
//! page, and leaves through `exit_soft_miss` at a page it lacks.

use iced_x86::{Instruction, Mnemonic};

use super::{Fixup, Translator, is_kept_prefix};
use crate::cpu::{Mode, OFF_EIP, OFF_STR_FN, OFF_STR_INFO, OFF_STR_REGS};
use crate::emit::reg::*;
use crate::emit::{JRCXZ, PREFIX_ADDR32, PREFIX_GS};

/// `HotState::str_info` of a soft string instruction: the element size in
/// bits 0-2, these flags, and its hit-counter slot from bit 16.
pub const SOFT_STOS: u32 = 1 << 8;
pub const SOFT_REP: u32 = 1 << 9;
pub const SOFT_USER: u32 = 1 << 10;
pub const SOFT_COUNTER_SHIFT: u32 = 16;

/// What the soft string callout answers (in R10D).
pub const SOFT_DONE: u32 = 0;
/// A page the soft TLB lacks: `exit_arg` and `soft_kind` say which.
pub const SOFT_MISSED: u32 = 1;
/// Stopped between iterations to let the dispatcher look (a long REP).
pub const SOFT_YIELD: u32 = 2;

/// Is `i` a MOVS or STOS (the string instructions with a soft form)?
pub fn is_movs_stos(i: &Instruction) -> bool {
    use Mnemonic as M;
    matches!(i.mnemonic(), M::Movsb | M::Movsw | M::Movsd | M::Stosb | M::Stosw | M::Stosd)
}

/// Can string instruction `i` take the soft form in `mode` (MOVS/STOS,
/// 32-bit code and addressing; the class already requires flat DS and ES)?
pub(super) fn soft_eligible(i: &Instruction, mode: Mode) -> bool {
    is_movs_stos(i) && !mode.has(Mode::CS16) && !crate::decode::has_16bit_addressing(i)
}

/// The soft form of MOVS/STOS, counting its executions in
/// `HotState::soft_hits[counter]` (0: uncounted):
///
/// ```text
///     mov [r14+str_regs], eax ; ... ecx ; ... esi ; ... edi
///     mov dword [r14+str_info], size | flags | counter << 16
///     <call [r14+str_fn] as for IN/OUT>            ; R10D: done, missed or yield
///     mov ecx, [r14+str_regs+4] ; mov esi, [..+8] ; mov edi, [..+12]
///     mov r11, rcx ; mov ecx, r10d ; jrcxz done
///     lea ecx, [rcx-1] ; jrcxz miss
///     mov rcx, r11 ; mov r13d, eip ; jmp exit_indirect   ; yield: run it again
/// miss:
///     mov rcx, r11 ; mov dword [r14+eip], eip ; jmp exit_soft_miss
/// done:
///     mov rcx, r11
/// ```
pub(super) fn soft(t: &mut Translator, i: &Instruction, counter: u32) {
    use Mnemonic as M;
    let size = match i.mnemonic() {
        M::Movsb | M::Stosb => 1,
        M::Movsw | M::Stosw => 2,
        _ => 4,
    };
    let stos = matches!(i.mnemonic(), M::Stosb | M::Stosw | M::Stosd);
    let rep = i.has_rep_prefix() || i.has_repe_prefix() || i.has_repne_prefix();
    let info = size
        | if stos { SOFT_STOS } else { 0 }
        | if rep { SOFT_REP } else { 0 }
        | if t.opts.mode.cpl() == 3 { SOFT_USER } else { 0 }
        | counter << SOFT_COUNTER_SHIFT;
    for (k, r) in [RAX, RCX, RSI, RDI].into_iter().enumerate() {
        t.a.mov_mbase_r32(VCPU, OFF_STR_REGS + 4 * k as i32, r);
    }
    t.a.mov_mbase_imm32(VCPU, OFF_STR_INFO, info);
    super::io::call_vmm(t, OFF_STR_FN);
    for (k, r) in [(1, RCX), (2, RSI), (3, RDI)] {
        t.a.mov_r32_mbase(r, VCPU, OFF_STR_REGS + 4 * k);
    }
    super::io::unless_answer_zero(t, |t| {
        t.a.lea_r32(RCX, RCX, -1);
        t.a.bytes(&[JRCXZ, 0]);
        let to_miss = t.a.len();
        t.a.mov_r64_r64(RCX, R11);
        t.a.mov_r32_imm(SCRATCH, i.ip32());
        t.jmp_abs(t.exits_to.indirect);
        t.a.buf[to_miss - 1] = (t.a.len() - to_miss) as u8;
        t.a.mov_r64_r64(RCX, R11);
        t.a.mov_mbase_imm32(VCPU, OFF_EIP, i.ip32());
        t.jmp_abs(t.exits_to.soft_miss);
    });
}

/// Prefixes to keep and the opcode byte (string opcodes are one byte).
fn split(t: &Translator, i: &Instruction) -> (Vec<u8>, u8) {
    let b = t.guest_bytes(i);
    let op = b[b.len() - 1];
    let prefixes = b[..b.len() - 1].iter().copied().filter(|&p| is_kept_prefix(p)).collect();
    (prefixes, op)
}

pub(super) fn implicit_ds(t: &mut Translator, i: &Instruction) {
    let (prefixes, op) = split(t, i);
    t.a.byte(PREFIX_GS);
    t.a.byte(PREFIX_ADDR32);
    t.a.bytes(&prefixes);
    t.a.byte(op);
}

pub(super) fn string_es(t: &mut Translator, i: &Instruction) {
    let (prefixes, op) = split(t, i);
    let uses_esi = matches!(
        i.mnemonic(),
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd | Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsd
    );
    if let Some(last) = t.insn_map.last_mut() {
        last.fixup = if i.has_rep_prefix() || i.has_repe_prefix() || i.has_repne_prefix() {
            Fixup::RepString
        } else {
            Fixup::TruncStringPtrs
        };
    }
    t.a.lea_r64_bi(RDI, WINDOW, RDI);
    if uses_esi {
        t.a.lea_r64_bi(RSI, WINDOW, RSI);
    }
    t.a.bytes(&prefixes);
    t.a.byte(op);
    t.a.mov_r32_r32(RDI, RDI);
    if uses_esi {
        t.a.mov_r32_r32(RSI, RSI);
    }
}

/// MASKMOVQ/MASKMOVDQU store through DS:EDI: the same host-pointer form as
/// the ES:EDI string instructions (their registers are MMX/XMM 0-7, so the
/// copied bytes need no REX).
pub(super) fn maskmov(t: &mut Translator, i: &Instruction) {
    let b = t.guest_bytes(i);
    if let Some(last) = t.insn_map.last_mut() {
        last.fixup = Fixup::TruncStringPtrs;
    }
    t.a.lea_r64_bi(RDI, WINDOW, RDI);
    for &x in b {
        if !matches!(x, 0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65) {
            t.a.byte(x);
        }
    }
    t.a.mov_r32_r32(RDI, RDI);
}
