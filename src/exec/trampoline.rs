//! The context switch between the dispatcher and translated code.
//!
//! ```text
//! enter(hot: rdi, target: rsi):          ; extern "sysv64"
//!     push rbx, rbp, r12, r13, r14, r15 ; sub rsp, 8
//!     mov [rdi+host_rsp], rsp
//!     mov r14, rdi ; mov r11, rsi ; mov r15, [r14+window]
//!     mov rsp, [r14+rsb_top] ; push qword [r14+rsb_sentinel]   ; the return stack
//!     cmp dword [r14+fpu_active], 0 ; je 1f
//!     movdqa xmm0..7, [r14+xmm] ; ldmxcsr [r14+mxcsr]      ; x87 state stays live
//! 1:  mov eax, [r14+live_flags] ; and eax, CF|PF|AF|ZF|SF|OF|DF
//!     or eax, [r14+ac_check] ; push rax ; popfq     ; AC: alignment checks
//!     mov eax..edi, r12d <- [r14+gpr]      ; guest ESP into r12d
//!     jmp r11
//!
//! exit_chain:     mov dword [r14+exit_reason], CHAIN ; jmp save
//! exit_indirect:  mov [r14+eip], r13d ; mov dword [r14+exit_reason], INDIRECT ; jmp save
//! exit_emulate:   mov dword [r14+exit_reason], EMULATE ; jmp save
//! exit_exception: mov dword [r14+exit_reason], EXCEPTION ; jmp save
//! exit_soft_miss: mov dword [r14+exit_reason], SOFT_MISS ; jmp save
//! exit_probe_miss: mov dword [r14+exit_reason], PROBE_MISS ; jmp save
//! exit_call_miss: mov [r14+eip], r13d ; mov dword [r14+exit_reason], CALL_MISS ; jmp save
//! ret_sentinel[t]: lea rsp, [rsp-8]           ; a RET popped the sentinel: put it back
//! ret_miss[t]:     <probe jump-cache table t for r13d>  ; a RET the host CALL did not expect
//!                  mov rcx, r11 ; jmp exit_indirect
//!                  mov rcx, r11 ; jmp [r14+r10*8+jc_targets+t]
//! exit_fault:     mov dword [r14+exit_reason], FAULT      ; (signal handler lands here)
//! save:
//!     mov [r14+gpr], eax..edi, r12d
//!     mov rsp, [r14+host_rsp]
//!     pushfq ; pop rax ; mov [r14+live_flags], eax ; cld
//!     cmp dword [r14+ac_check], 0 ; je 3f
//!     and eax, ~(AC|DF) ; push rax ; popfq             ; the VMM runs with AC clear
//! 3:
//!     cmp dword [r14+fpu_active], 0 ; je 2f
//!     movdqa [r14+xmm], xmm0..7 ; stmxcsr [r14+mxcsr] ; ldmxcsr [r14+host_mxcsr]
//! 2:  add rsp, 8 ; pop r15, r14, r13, r12, rbp, rbx ; ret
//! ```

use crate::cpu::{
    JUMP_CACHE_TABLES, OFF_AC_CHECK, OFF_EIP, OFF_EXIT_REASON, OFF_GPR, OFF_HOST_MXCSR, OFF_HOST_RSP, OFF_LIVE_FLAGS,
    OFF_MXCSR, OFF_RESUME_REGS, OFF_RESUME_RIP, OFF_RSB_SENTINEL, OFF_RSB_TOP, OFF_WINDOW, RESUME_REGS, exit, flags,
};
use crate::emit::Asm;
use crate::emit::reg::*;
use crate::translate::ExitTargets;
use crate::translate::lookup;

/// Offsets of the routines within the trampoline code.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trampolines {
    pub enter: usize,
    /// `resume(hot, _)`: like enter, but also restores `RESUME_REGS` from
    /// `hot.resume_regs` and continues at `hot.resume_rip` (a hidden fault
    /// was handled).
    pub resume: usize,
    pub exits: ExitTargets,
    pub exit_fault: usize,
    /// Per jump-cache table: the host return stack's sentinel entry.
    pub ret_sentinel: [usize; JUMP_CACHE_TABLES],
}

/// Guest registers in `HotState::gpr` order and their host registers.
const GUEST_REGS: [u8; 8] = [RAX, RCX, RDX, RBX, GUEST_ESP, RBP, RSI, RDI];

use crate::translate::io::{mxcsr, skip_unless_fpu, xmm_all};

fn bind_rel8(a: &mut Asm, at: usize) {
    let rel = a.len() - (at + 1);
    a.buf[at] = rel as u8;
}

/// Generate the trampolines; offsets are relative to the start of the code.
pub fn generate() -> (Vec<u8>, Trampolines) {
    let mut a = Asm::new();
    let mut t = Trampolines { enter: a.len(), ..Default::default() };
    entry(&mut a, false);
    t.resume = a.len();
    entry(&mut a, true);
    exits(a, t)
}

/// The entry sequence (see the module comment); `resume` adds the raw
/// registers and jumps to the saved host RIP.
fn entry(a: &mut Asm, resume: bool) {
    for r in [RBX, RBP, R12, R13, R14, R15] {
        a.push_r64(r);
    }
    a.bytes(&[0x48, 0x83, 0xEC, 0x08]); // sub rsp, 8 (keeps 16-byte alignment)
    a.mov_mbase_r64(RDI, OFF_HOST_RSP, RSP);
    a.mov_r64_r64(VCPU, RDI);
    a.mov_r64_r64(R11, RSI);
    a.mov_r64_mbase(WINDOW, VCPU, OFF_WINDOW);
    a.mov_r64_mbase(RSP, VCPU, OFF_RSB_TOP);
    a.push_mbase(VCPU, OFF_RSB_SENTINEL);
    let skip = skip_unless_fpu(a);
    xmm_all(a, false);
    mxcsr(a, 2, OFF_MXCSR);
    bind_rel8(a, skip);
    a.mov_r32_mbase(RAX, VCPU, OFF_LIVE_FLAGS);
    a.byte(0x25); // and eax, imm32
    a.u32(flags::HOST_LIVE);
    a.bytes(&[0x41, 0x0B, 0x86]); // or eax, [r14+ac_check]
    a.u32(OFF_AC_CHECK as u32);
    a.push_r64(RAX);
    a.popfq();
    for (k, r) in GUEST_REGS.into_iter().enumerate() {
        a.mov_r32_mbase(r, VCPU, OFF_GPR + 4 * k as i32);
    }
    if !resume {
        a.jmp_r64(R11);
        return;
    }
    for (k, r) in RESUME_REGS.into_iter().enumerate() {
        a.mov_r64_mbase(r, VCPU, OFF_RESUME_REGS + 8 * k as i32);
    }
    // push qword [r14+resume_rip] ; ret  (RSP is back at host_rsp after it)
    a.bytes(&[0x41, 0xFF, 0xB6]);
    a.u32(OFF_RESUME_RIP as u32);
    a.ret();
}

fn exits(mut a: Asm, mut t: Trampolines) -> (Vec<u8>, Trampolines) {
    let mut jumps_to_save = Vec::new();
    let exit_stub = |a: &mut Asm, reason: u32, store_r13: bool| -> usize {
        let at = a.len();
        if store_r13 {
            a.mov_mbase_r32(VCPU, OFF_EIP, SCRATCH);
        }
        a.mov_mbase_imm32(VCPU, OFF_EXIT_REASON, reason);
        at
    };
    t.exits.chain = exit_stub(&mut a, exit::CHAIN, false);
    jumps_to_save.push(a.jmp_rel32());
    t.exits.indirect = exit_stub(&mut a, exit::INDIRECT, true);
    jumps_to_save.push(a.jmp_rel32());
    t.exits.emulate = exit_stub(&mut a, exit::EMULATE, false);
    jumps_to_save.push(a.jmp_rel32());
    t.exits.exception = exit_stub(&mut a, exit::EXCEPTION, false);
    jumps_to_save.push(a.jmp_rel32());
    t.exits.soft_miss = exit_stub(&mut a, exit::SOFT_MISS, false);
    jumps_to_save.push(a.jmp_rel32());
    t.exits.probe_miss = exit_stub(&mut a, exit::PROBE_MISS, false);
    jumps_to_save.push(a.jmp_rel32());
    t.exits.call_miss = exit_stub(&mut a, exit::CALL_MISS, true);
    jumps_to_save.push(a.jmp_rel32());
    // The return stack's stubs (`exec::return_stack`): each jump-cache
    // table's return miss, preceded by its sentinel.
    let mut misses_to_exit = Vec::new();
    for table in 0..JUMP_CACHE_TABLES {
        t.ret_sentinel[table] = a.len();
        a.bytes(&[0x48, 0x8D, 0x64, 0x24, 0xF8]); // lea rsp, [rsp-8]
        t.exits.ret_miss[table] = a.len();
        lookup::probe(&mut a, table);
        a.mov_r64_r64(RCX, R11);
        misses_to_exit.push(a.jmp_rel32());
        lookup::enter_hit(&mut a, table, false);
    }
    for j in misses_to_exit {
        a.bind_rel32(j, t.exits.indirect);
    }
    t.exit_fault = exit_stub(&mut a, exit::FAULT, false);
    let save = a.len();
    for j in jumps_to_save {
        a.bind_rel32(j, save);
    }
    for (k, r) in GUEST_REGS.into_iter().enumerate() {
        a.mov_mbase_r32(VCPU, OFF_GPR + 4 * k as i32, r);
    }
    a.mov_r64_mbase(RSP, VCPU, OFF_HOST_RSP);
    a.pushfq();
    a.pop_r64(RAX);
    a.mov_mbase_r32(VCPU, OFF_LIVE_FLAGS, RAX);
    a.cld();
    a.bytes(&[0x41, 0x83, 0xBE]); // cmp dword [r14+ac_check], 0
    a.u32(OFF_AC_CHECK as u32);
    a.bytes(&[0x00, 0x74, 0x00]); // je 3f (patched below)
    let je = a.len() - 1;
    a.byte(0x25); // and eax, imm32
    a.u32(!(flags::AC | flags::DF));
    a.push_r64(RAX);
    a.popfq();
    bind_rel8(&mut a, je);
    let skip = skip_unless_fpu(&mut a);
    xmm_all(&mut a, true);
    mxcsr(&mut a, 3, OFF_MXCSR);
    mxcsr(&mut a, 2, OFF_HOST_MXCSR);
    bind_rel8(&mut a, skip);
    a.bytes(&[0x48, 0x83, 0xC4, 0x08]); // add rsp, 8
    for r in [R15, R14, R13, R12, RBP, RBX] {
        a.pop_r64(r);
    }
    a.ret();
    (a.buf, t)
}

/// Shift trampoline offsets to their host addresses.
pub fn relocate(t: Trampolines, base: usize) -> Trampolines {
    Trampolines {
        enter: base + t.enter,
        resume: base + t.resume,
        exits: ExitTargets {
            chain: base + t.exits.chain,
            indirect: base + t.exits.indirect,
            emulate: base + t.exits.emulate,
            exception: base + t.exits.exception,
            soft_miss: base + t.exits.soft_miss,
            probe_miss: base + t.exits.probe_miss,
            call_miss: base + t.exits.call_miss,
            ret_miss: t.exits.ret_miss.map(|x| base + x),
        },
        exit_fault: base + t.exit_fault,
        ret_sentinel: t.ret_sentinel.map(|x| base + x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::disasm64;

    #[test]
    fn trampolines_decode_back() {
        let (code, t) = generate();
        let d = disasm64(&code);
        assert!(d.iter().all(|l| !l.contains("(bad)") && !l.is_empty()));
        let text = d.join("\n");
        assert!(text.contains("movdqa xmm7,[r14+"), "{text}");
        assert!(text.contains("ldmxcsr"), "{text}");
        assert!(text.contains("popfq"));
        assert!(text.contains("mov r12d,[r14+10h]"), "{text}");
        assert!(text.contains("jmp r11"));
        assert!(t.exit_fault > t.exits.exception && t.exits.exception > t.exits.chain);
        let exit = disasm64(&code[t.exits.indirect..t.exits.emulate]);
        assert_eq!(exit[0], "mov [r14+20h],r13d");
    }
}
