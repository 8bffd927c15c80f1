//! Implicit-stack instructions. Guest ESP is R12; every access goes through
//! the window (`gs: addr32 [r12d + d]`, wrapping at 4 GiB as the guest
//! does). Stores and loads come before the ESP update so a faulting access
//! leaves the guest state as it was before the instruction.

use iced_x86::{Instruction, OpKind};

use super::{Translator, guest_mem, host_gpr};
use crate::cpu::OFF_SEG_SEL;
use crate::emit::reg::*;
use crate::emit::{GuestMem, PREFIX_OPSIZE};

const MOV_STORE: u8 = 0x89;
const MOV_LOAD: u8 = 0x8B;
const MOV_STORE_IMM: u8 = 0xC7;

fn sp(disp: i32) -> GuestMem {
    GuestMem::base_disp(GUEST_ESP, disp)
}

/// The slot `disp` bytes from the guest's ESP, which is R12D plus the
/// deferred updates (`Translator::esp_delta`).
fn top(t: &Translator, disp: i32) -> GuestMem {
    sp(t.esp_delta.wrapping_add(disp))
}

/// A push or pop moves ESP by `by`: deferred (the next instruction that
/// cannot take the delta makes the update, `Translator::flush_esp`).
fn move_esp(t: &mut Translator, by: i32) {
    t.esp_delta = t.esp_delta.wrapping_add(by);
}

/// `mov dword gs:[r12d+delta-4], imm32`, ESP - 4 deferred.
pub(super) fn push_imm32(t: &mut Translator, v: u32) {
    t.mem_op(&[], &[MOV_STORE_IMM], 0, &top(t, -4), &v.to_le_bytes());
    move_esp(t, -4);
}

pub(super) fn push_imm(t: &mut Translator, i: &Instruction) {
    push_imm32(t, i.immediate(0) as u32);
}

/// `push r32` (`mov gs:[r12d+delta-4], r32`, ESP - 4 deferred): the old
/// ESP is stored for `push esp`, as the CPU does (with no delta: the
/// translator makes the deferred updates before an instruction naming ESP).
pub(super) fn push_reg(t: &mut Translator, i: &Instruction) {
    let r = host_gpr(i.op0_register()).unwrap_or(RAX);
    t.mem_op(&[], &[MOV_STORE], r, &top(t, -4), &[]);
    move_esp(t, -4);
}

/// `push m32`: load into R13 first (the address uses the old ESP; a
/// non-flat segment's operand is checked and based first).
pub(super) fn push_mem(t: &mut Translator, i: &Instruction) {
    t.load_scratch(i);
    t.mem_op(&[], &[MOV_STORE], SCRATCH, &top(t, -4), &[]);
    move_esp(t, -4);
}

/// PUSH ES/CS/SS/DS/FS/GS with 32-bit operand size: ESP drops by 4 and
/// the guest's selector (`HotState::seg_sel`, synced by the dispatcher) is
/// written zero-extended, as the host CPU (the oracle of the differential
/// tests) and QEMU do. The SDM allows that or a 16-bit write (recent Intel
/// cores); the dword store also lets a following POP forward from it.
///
/// ```text
/// mov r13d, [r14+seg_sel+4*s] ; mov dword gs:[r12d-4], r13d ; lea r12d, [r12-4]
/// ```
pub(super) fn push_sreg(t: &mut Translator, i: &Instruction) {
    let s = super::seg_index(i.op0_register());
    t.a.mov_r32_mbase(SCRATCH, VCPU, OFF_SEG_SEL + 4 * s as i32);
    t.mem_op(&[], &[MOV_STORE], SCRATCH, &sp(-4), &[]);
    t.a.lea_r32(GUEST_ESP, GUEST_ESP, -4);
}

/// MOV r32, Sreg (the selector zero-extended, as P6-family processors
/// do) or MOV r16, Sreg, from the selectors the dispatcher keeps in
/// `HotState::seg_sel`:
///
/// ```text
///     mov r32, [r14+seg_sel+4*s]   |   mov r16, [r14+seg_sel+4*s]
/// ```
pub(super) fn read_sreg(t: &mut Translator, i: &Instruction) {
    let s = super::seg_index(i.op1_register());
    let r = host_gpr(i.op0_register()).unwrap_or(RAX);
    if i.op0_register().size() == 2 {
        t.a.byte(PREFIX_OPSIZE);
    }
    t.a.mov_r32_mbase(r, VCPU, OFF_SEG_SEL + 4 * s as i32);
}

/// `pop r32` (`mov r32, gs:[r12d+delta]`, ESP + 4 deferred); `pop esp`
/// loads ESP from the old top of stack (with no delta, as for `push_reg`).
pub(super) fn pop_reg(t: &mut Translator, i: &Instruction) {
    let r = host_gpr(i.op0_register()).unwrap_or(RAX);
    t.mem_op(&[], &[MOV_LOAD], r, &top(t, 0), &[]);
    if r != GUEST_ESP {
        move_esp(t, 4);
    }
}

/// `pop m32`: an ESP-based destination address uses the incremented ESP;
/// it is folded into the displacement so ESP changes last.
pub(super) fn pop_mem(t: &mut Translator, i: &Instruction) {
    let mut m = guest_mem(i, GUEST_ESP);
    if m.base == Some(GUEST_ESP) {
        m.disp = m.disp.wrapping_add(4);
    }
    t.mem_op(&[], &[MOV_LOAD], SCRATCH, &sp(0), &[]);
    t.mem_op(&[], &[MOV_STORE], SCRATCH, &m, &[]);
    t.a.lea_r32(GUEST_ESP, GUEST_ESP, 4);
}

/// PUSHAD stores EAX, ECX, EDX, EBX, the original ESP, EBP, ESI, EDI. ESP
/// changes last, so a faulting store restarts the whole (idempotent) PUSHAD.
pub(super) fn pushad(t: &mut Translator) {
    for (k, r) in [RAX, RCX, RDX, RBX, GUEST_ESP, RBP, RSI, RDI].into_iter().enumerate() {
        t.mem_op(&[], &[MOV_STORE], r, &sp(-4 * (k as i32 + 1)), &[]);
    }
    t.a.lea_r32(GUEST_ESP, GUEST_ESP, -32);
}

/// POPAD: touch both ends of the 32-byte frame before writing any register,
/// so a fault is precise; the saved ESP slot is skipped.
pub(super) fn popad(t: &mut Translator) {
    t.mem_op(&[], &[MOV_LOAD], SCRATCH, &sp(0), &[]);
    t.mem_op(&[], &[MOV_LOAD], SCRATCH, &sp(28), &[]);
    for (k, r) in [RDI, RSI, RBP, GUEST_ESP, RBX, RDX, RCX, RAX].into_iter().enumerate() {
        if r != GUEST_ESP {
            t.mem_op(&[], &[MOV_LOAD], r, &sp(4 * k as i32), &[]);
        }
    }
    t.a.lea_r32(GUEST_ESP, GUEST_ESP, 32);
}

/// LEAVE: `mov r13d, gs:[ebp] ; lea r12d, [rbp+4] ; mov ebp, r13d`.
pub(super) fn leave(t: &mut Translator) {
    t.mem_op(&[], &[MOV_LOAD], SCRATCH, &GuestMem::base_disp(RBP, 0), &[]);
    t.a.lea_r32(GUEST_ESP, RBP, 4);
    t.a.mov_r32_r32(RBP, SCRATCH);
}

/// ENTER n, 0: push EBP; EBP = ESP; ESP -= n.
pub(super) fn enter0(t: &mut Translator, i: &Instruction) {
    debug_assert_eq!(i.op1_kind(), OpKind::Immediate8_2nd);
    let n = i.immediate16() as i32;
    t.mem_op(&[], &[MOV_STORE], RBP, &sp(-4), &[]);
    t.a.lea_r32(RBP, GUEST_ESP, -4);
    t.a.lea_r32(GUEST_ESP, GUEST_ESP, -4 - n);
}
