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

use iced_x86::{Instruction, Mnemonic};

use super::{Fixup, Translator, is_kept_prefix};
use crate::emit::reg::*;
use crate::emit::{PREFIX_ADDR32, PREFIX_GS};

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
