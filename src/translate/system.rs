//! Inline forms of CLI, STI, PUSHFD, POPFD and MOV r32, CR2 for blocks
//! running at CPL 0, so the guest kernel's interrupt-flag traffic and its
//! page-fault entry never leave the code cache (VMware's "translated CLI is faster than a native one"). The virtual IF
//! is the dword `HotState::vif` (0 or 0x200); the other system flags are
//! `HotState::sys_flags`; arithmetic flags and DF are host RFLAGS.

use super::Translator;
use crate::cpu::{OFF_EIP, OFF_SYS_FLAGS, OFF_VIF, flags};
use crate::emit::GuestMem;
use crate::emit::reg::*;

/// System flags POPF may change at CPL 0 besides IF and the host-live ones
/// (TF is left to the VMM: it changes the translation mode).
const POPF_SYS_MASK: u32 = flags::IOPL | flags::NT | flags::AC | flags::ID;
/// IF as host user code always sees it in RFLAGS.
const HOST_IF: i32 = flags::IF as i32;

/// CLI: `mov dword [r14+vif], 0`; STI: `mov dword [r14+vif], 0x200`.
pub(super) fn cli_sti(t: &mut Translator, sti: bool) {
    t.a.mov_mbase_imm32(VCPU, OFF_VIF, if sti { flags::IF } else { 0 });
}

/// PUSHFD: host flags (arithmetic, DF, bit 1, IF=1) minus the host IF plus
/// the virtual system flags and IF, all with LEA so flags stay intact.
///
/// ```text
/// pushfq ; pop r13
/// mov r10d, [r14+sys_flags] ; lea r13d, [r13 + r10 - 0x200]
/// mov r10d, [r14+vif]       ; lea r13d, [r13 + r10]
/// mov gs:[r12d-4], r13d     ; lea r12d, [r12-4]
/// ```
pub(super) fn pushfd(t: &mut Translator) {
    t.a.pushfq();
    t.a.pop_r64(SCRATCH);
    t.a.mov_r32_mbase(R10, VCPU, OFF_SYS_FLAGS);
    t.a.lea_r32_bi(SCRATCH, SCRATCH, R10, -HOST_IF);
    t.a.mov_r32_mbase(R10, VCPU, OFF_VIF);
    t.a.lea_r32_bi(SCRATCH, SCRATCH, R10, 0);
    t.mem_op(&[], &[0x89], SCRATCH, &GuestMem::base_disp(GUEST_ESP, -4), &[]);
    t.a.lea_r32(GUEST_ESP, GUEST_ESP, -4);
}

/// POPFD. The popped value replaces every flag, so host flags may be used
/// freely until the final POPFQ. A value with TF set goes to the VMM (it
/// changes the translation mode).
///
/// ```text
/// mov r13d, gs:[r12d] ; test r13d, TF ; jnz vmm
/// lea r12d, [r12+4]
/// mov r10d, r13d ; and r10d, IF        ; mov [r14+vif], r10d
/// mov r10d, r13d ; and r10d, IOPL|NT|AC|ID ; mov [r14+sys_flags], r10d
/// and r13d, CF|PF|AF|ZF|SF|OF|DF ; push r13 ; popfq
/// ```
pub(super) fn popfd(t: &mut Translator, eip: u32) {
    t.mem_op(&[], &[0x8B], SCRATCH, &GuestMem::base_disp(GUEST_ESP, 0), &[]);
    t.a.test_r32_imm(SCRATCH, flags::TF);
    let to_vmm = t.a.jcc_rel32(JNZ);
    t.a.lea_r32(GUEST_ESP, GUEST_ESP, 4);
    t.a.mov_r32_r32(R10, SCRATCH);
    t.a.and_r32_imm(R10, flags::IF);
    t.a.mov_mbase_r32(VCPU, OFF_VIF, R10);
    t.a.mov_r32_r32(R10, SCRATCH);
    t.a.and_r32_imm(R10, POPF_SYS_MASK);
    t.a.mov_mbase_r32(VCPU, OFF_SYS_FLAGS, R10);
    t.a.and_r32_imm(SCRATCH, flags::HOST_LIVE);
    t.a.push_r64(SCRATCH);
    t.a.popfq();
    let over = t.a.jmp_rel32();
    let slow = t.a.len();
    t.a.bind_rel32(to_vmm, slow);
    t.a.mov_mbase_imm32(VCPU, OFF_EIP, eip);
    t.jmp_abs(t.exits_to.emulate);
    let done = t.a.len();
    t.a.bind_rel32(over, done);
}

/// Condition code "not zero".
const JNZ: u8 = 0x5;

/// `mov r32, %cr2` at CPL 0 (Linux's page-fault entry reads CR2 first):
/// CR2 is only written by the VMM, which the dispatcher copies to
/// `HotState::cr2` before translated code runs again.
///
/// ```text
///     mov r32, [r14+cr2]
/// ```
pub(super) fn read_cr2(t: &mut Translator, i: &iced_x86::Instruction) {
    let r = super::host_gpr(i.op0_register()).unwrap_or(RAX);
    t.a.mov_r32_mbase(r, VCPU, crate::cpu::OFF_CR2);
}

/// SGDT/SIDT m, SLDT/STR r/m and SMSW r/m: stores of the copies in
/// `HotState::sys_copy` (never a VMM exit; the sensitive non-privileged
/// instructions a guest kernel must not see through):
///
/// ```text
/// SGDT m:  mov r13d, [r14+gdt_limit] ; mov word gs:[m], r13w
///          mov r13d, [r14+gdt_base]  ; mov dword gs:[m+2], r13d
/// SLDT m:  mov r13d, [r14+ldtr] ; mov word gs:[m], r13w
/// SLDT r:  mov r32, [r14+ldtr]  |  mov r16, [r14+ldtr]
/// ```
/// SMSW stores CR0 alike (all 32 bits into a 32-bit register, as P6-family
/// processors do; the low 16 into memory or a 16-bit register).
pub(super) fn store_sys(t: &mut Translator, i: &iced_x86::Instruction) {
    use crate::cpu::{OFF_SYS_COPY, sys_copy};
    use iced_x86::{Mnemonic as M, OpKind};
    let field = |k: usize| OFF_SYS_COPY + 4 * k as i32;
    let (first, table) = match i.mnemonic() {
        M::Sgdt => (sys_copy::GDT_LIMIT, true),
        M::Sidt => (sys_copy::IDT_LIMIT, true),
        M::Sldt => (sys_copy::LDTR, false),
        M::Str => (sys_copy::TR, false),
        _ => (sys_copy::CR0, false),
    };
    if i.op0_kind() != OpKind::Memory {
        let r = super::host_gpr(i.op0_register()).unwrap_or(RAX);
        if i.op0_register().size() == 2 {
            t.a.byte(crate::emit::PREFIX_OPSIZE);
        }
        t.a.mov_r32_mbase(r, VCPU, field(first));
        return;
    }
    let m = super::guest_mem(i, GUEST_ESP);
    t.a.mov_r32_mbase(SCRATCH, VCPU, field(first));
    t.mem_op(&[crate::emit::PREFIX_OPSIZE], &[0x89], SCRATCH, &m, &[]);
    if table {
        let base = GuestMem { disp: m.disp.wrapping_add(2), ..m };
        t.a.mov_r32_mbase(SCRATCH, VCPU, field(first + 1));
        t.mem_op(&[], &[0x89], SCRATCH, &base, &[]);
    }
}
