//! IN/OUT at CPL 0 without leaving translated code: the block calls the
//! VMM's port bus directly (CPL 0 always passes the I/O permission check).
//! Only what the C ABI lets the callee clobber is saved around the call.
//!
//! ```text
//!     mov r13d, port (or movzx r13d, dx) ; mov [r14+io_port], r13d
//!     mov dword [r14+io_info], size | out << 8   [; mov [r14+io_value], eax]
//!     mov r13, rsp ; mov rsp, [r14+host_rsp]      ; off the return stack (16-aligned)
//!     pushfq ; push rax, rcx, rdx, rsi, rdi       ; guest flags and caller-saved regs
//!     cmp dword [r14+fpu_active], 0 ; je 1f
//!     movdqa [r14+xmm], xmm0..7 ; stmxcsr [r14+mxcsr] ; ldmxcsr [r14+host_mxcsr]
//! 1:  mov rdi, r14 ; call [r14+io_fn]
//!     mov r10d, eax                                ; nonzero: the dispatcher must look
//!     cmp dword [r14+fpu_active], 0 ; je 2f
//!     movdqa xmm0..7, [r14+xmm] ; ldmxcsr [r14+mxcsr]
//! 2:  pop rdi, rsi, rdx, rcx, rax ; popfq ; mov rsp, r13
//!    [mov al/ax/eax, [r14+io_value]]               ; IN
//!     mov r11, rcx ; mov ecx, r10d ; jrcxz 3f
//!     mov rcx, r11 ; mov r13d, next ; jmp exit_indirect
//! 3:  mov rcx, r11
//! ```

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::Translator;
use crate::cpu::{
    OFF_FPU_ACTIVE, OFF_HOST_MXCSR, OFF_HOST_RSP, OFF_INVLPG_FN, OFF_IO_FN, OFF_IO_INFO, OFF_IO_PORT, OFF_IO_VALUE,
    OFF_MXCSR, OFF_XMM,
};
use crate::emit::Asm;
use crate::emit::reg::*;

/// `io_info` bit: the access is an OUT.
pub const IO_OUT: u32 = 1 << 8;

/// Caller-saved host registers that hold guest state.
const SAVED: [u8; 5] = [RAX, RCX, RDX, RSI, RDI];

/// `cmp dword [r14+fpu_active], 0 ; je <patched>`; returns the rel8 offset.
/// (Shared with the trampolines: the same guest-FPU switch.)
pub(crate) fn skip_unless_fpu(a: &mut Asm) -> usize {
    a.bytes(&[0x41, 0x83, 0xBE]);
    a.u32(OFF_FPU_ACTIVE as u32);
    a.bytes(&[0x00, 0x74, 0x00]);
    a.len() - 1
}

/// `movdqa xmmN, [r14+xmm+16N]` (load) or the store, for N = 0..7.
pub(crate) fn xmm_all(a: &mut Asm, store: bool) {
    for n in 0..8u8 {
        a.bytes(&[0x66, 0x41, 0x0F, if store { 0x7F } else { 0x6F }, 0x86 | (n << 3)]);
        a.u32((OFF_XMM + 16 * n as i32) as u32);
    }
}

/// `ldmxcsr [r14+disp]` (ext 2) / `stmxcsr [r14+disp]` (ext 3).
pub(crate) fn mxcsr(a: &mut Asm, ext: u8, disp: i32) {
    a.bytes(&[0x41, 0x0F, 0xAE, 0x86 | (ext << 3)]);
    a.u32(disp as u32);
}

/// Call the VMM function whose address is at `[r14+fn_off]` with the
/// vCPU state as its argument, keeping guest flags, registers and (when the
/// guest uses them) XMM registers; its u32 result ends up in R10D.
pub(super) fn call_vmm(t: &mut Translator, fn_off: i32) {
    // The VMM's Rust code runs on the dispatcher's stack, below its frame
    // (16-byte aligned; six pushes keep it so): the host return stack is
    // small and its guard would stop it.
    t.a.mov_r64_r64(SCRATCH, RSP);
    t.a.mov_r64_mbase(RSP, VCPU, OFF_HOST_RSP);
    // The guest RFLAGS first, at host_rsp - 8: the soft string callout
    // reads DF there (`exec::soft_tlb::string_callout`; the translation
    // checker holds every callout to this layout).
    t.a.pushfq();
    for r in SAVED {
        t.a.push_r64(r);
    }
    let skip = skip_unless_fpu(&mut t.a);
    xmm_all(&mut t.a, true);
    mxcsr(&mut t.a, 3, OFF_MXCSR);
    mxcsr(&mut t.a, 2, OFF_HOST_MXCSR);
    let l = t.a.len();
    t.a.buf[skip] = (l - skip - 1) as u8;
    t.a.mov_r64_r64(RDI, VCPU);
    t.a.bytes(&[0x41, 0xFF, 0x96]); // call qword [r14+fn_off]
    t.a.u32(fn_off as u32);
    t.a.mov_r32_r32(R10, RAX);
    let skip = skip_unless_fpu(&mut t.a);
    xmm_all(&mut t.a, false);
    mxcsr(&mut t.a, 2, OFF_MXCSR);
    let l = t.a.len();
    t.a.buf[skip] = (l - skip - 1) as u8;
    for r in SAVED.into_iter().rev() {
        t.a.pop_r64(r);
    }
    t.a.popfq();
    t.a.mov_r64_r64(RSP, SCRATCH);
}

/// After a callout: unless its answer in R10D is 0, `leave` the block,
/// with RCX holding the answer and the guest RCX in R11 (`leave` must not
/// fall through):
///
/// ```text
///     mov r11, rcx ; mov ecx, r10d ; jrcxz 1f
///     <leave>
/// 1:  mov rcx, r11
/// ```
pub(super) fn unless_answer_zero(t: &mut Translator, leave: impl FnOnce(&mut Translator)) {
    t.a.mov_r64_r64(R11, RCX);
    t.a.mov_r32_r32(RCX, R10);
    t.a.bytes(&[crate::emit::JRCXZ, 0]);
    let start = t.a.len();
    leave(t);
    let len = t.a.len() - start;
    debug_assert!(len < 128, "a callout's way out fits a JRCXZ");
    t.a.buf[start - 1] = len as u8;
    t.a.mov_r64_r64(RCX, R11);
}

/// INVLPG at CPL 0 with a flat operand segment: the VMM drops the page's
/// translations from a callout; it answers nonzero when the page holds
/// translated code or a large page maps it, and the instruction is then
/// emulated after an exit (which also unchains blocks).
///
/// ```text
///     addr32 lea r13d, [ea] ; mov [r14+io_value], r13d
///     <call [r14+invlpg_fn] as for IN/OUT>
///     mov r11, rcx ; mov ecx, r10d ; jrcxz 1f
///     mov rcx, r11 ; mov dword [r14+eip], eip ; jmp exit_emulate
/// 1:  mov rcx, r11
/// ```
pub(super) fn invlpg(t: &mut Translator, i: &Instruction) {
    t.lea_offset(&super::guest_mem(i, GUEST_ESP));
    t.a.mov_mbase_r32(VCPU, OFF_IO_VALUE, SCRATCH);
    call_vmm(t, OFF_INVLPG_FN);
    unless_answer_zero(t, |t| {
        t.a.mov_r64_r64(RCX, R11);
        t.a.mov_mbase_imm32(VCPU, crate::cpu::OFF_EIP, i.ip32());
        t.jmp_abs(t.exits_to.emulate);
    });
}

pub(super) fn port_io(t: &mut Translator, i: &Instruction) {
    let out = i.mnemonic() == Mnemonic::Out;
    let (port_op, data_op) = if out { (0, 1) } else { (1, 0) };
    let size = i.op_register(data_op).size() as u32;
    if i.op_kind(port_op) == OpKind::Immediate8 {
        t.a.mov_r32_imm(SCRATCH, i.immediate8() as u32);
    } else {
        t.a.movzx_r32_r16(SCRATCH, RDX);
    }
    t.a.mov_mbase_r32(VCPU, OFF_IO_PORT, SCRATCH);
    t.a.mov_mbase_imm32(VCPU, OFF_IO_INFO, size | if out { IO_OUT } else { 0 });
    if out {
        t.a.mov_mbase_r32(VCPU, OFF_IO_VALUE, RAX);
    }
    call_vmm(t, OFF_IO_FN);
    if !out {
        // mov al/ax/eax, [r14+io_value]
        match size {
            1 => t.a.bytes(&[0x41, 0x8A, 0x86]),
            2 => t.a.bytes(&[0x66, 0x41, 0x8B, 0x86]),
            _ => t.a.bytes(&[0x41, 0x8B, 0x86]),
        }
        t.a.u32(OFF_IO_VALUE as u32);
    }
    unless_answer_zero(t, |t| {
        t.a.mov_r64_r64(RCX, R11);
        t.a.mov_r32_imm(SCRATCH, i.next_ip32());
        t.jmp_abs(t.exits_to.indirect);
    });
}
