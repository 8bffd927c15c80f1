//! Inline jump-cache lookup for indirect branches (and for returns where
//! they do not use the host return stack), and the host CALL of a guest
//! CALL with the continuation its RET comes back to (`host_call`, see
//! `exec::return_stack`).
//!
//! The target EIP is in R13D. The cache is direct-mapped on the low 16 bits
//! of the EIP and stores keys `-(eip + 1)` (0 is empty), so a hit is
//! `key + eip + 1 == 0`, tested
//! with JRCXZ: the whole lookup leaves host flags (= guest flags) alone.
//!
//! ```text
//!     movzx r10d, r13w
//!     mov   r11, rcx                          ; guest ECX aside
//!     mov   rcx, [r14 + r10*8 + jc_keys]
//!     lea   rcx, [rcx + r13 + 1]
//!     jrcxz hit
//!     mov   rcx, r11
//!     jmp   exit_indirect                     ; dispatcher: eip = r13d
//! hit:
//!     mov   rcx, r11
//!     jmp   [r14 + r10*8 + jc_targets]
//! ```

use super::Translator;
use crate::cpu::{JUMP_CACHE_TABLE_BYTES, OFF_EIP, OFF_EXIT_ARG, OFF_JC_KEYS, OFF_JC_TARGETS};
use crate::emit::reg::*;
use crate::emit::{Asm, JRCXZ};

/// Bytes between the JRCXZ and `hit`: `mov rcx, r11` (3) + `jmp rel32` (5).
pub(crate) const MISS_PATH_LEN: u8 = 8;

/// The probe of jump-cache table `table` for R13D, up to the JRCXZ that
/// skips the caller's `MISS_PATH_LEN`-byte miss path on a hit:
/// `movzx r10d, r13w ; mov r11, rcx ; mov rcx, [keys] ; lea rcx, [rcx+r13+1] ; jrcxz hit`.
pub(crate) fn probe(a: &mut Asm, table: usize) {
    let at = probe_to(a, table);
    a.buf[at] = MISS_PATH_LEN;
}

/// `probe` with the JRCXZ's rel8 left for the caller to set; returns its offset.
fn probe_to(a: &mut Asm, table: usize) -> usize {
    let table = table as i32 * JUMP_CACHE_TABLE_BYTES;
    a.movzx_r32_r16(R10, SCRATCH);
    a.mov_r64_r64(R11, RCX);
    a.mov_r64_mbi8(RCX, VCPU, R10, OFF_JC_KEYS + table);
    a.lea_r64_bi_d8(RCX, RCX, SCRATCH, 1);
    a.bytes(&[JRCXZ, 0]);
    a.len() - 1
}

/// The hit path after `probe`: `mov rcx, r11 ; jmp [targets]` (or `call`,
/// for a guest CALL on the host return stack).
pub(crate) fn enter_hit(a: &mut Asm, table: usize, call: bool) {
    let table = table as i32 * JUMP_CACHE_TABLE_BYTES;
    a.mov_r64_r64(RCX, R11);
    if call {
        a.call_mbi8(VCPU, R10, OFF_JC_TARGETS + table);
    } else {
        a.jmp_mbi8(VCPU, R10, OFF_JC_TARGETS + table);
    }
}

/// Whether indirect branches are looked up inline, and with that guest
/// CALL and RET use the host return stack (`exec::return_stack`).
pub(super) fn inline(t: &Translator) -> bool {
    t.opts.inline_lookup && t.opts.mode.uses_jump_cache()
}

pub(super) fn indirect(t: &mut Translator) {
    lookup(t, false, None);
}

/// A guest CALL (its return address already pushed) to `direct`, or to
/// R13D: a host CALL (`host_call`) where lookups are inline, else a plain
/// transfer.
pub(super) fn call(t: &mut Translator, direct: Option<u32>, return_eip: u32, fall_through: bool) {
    match (inline(t), direct) {
        (true, _) => host_call(t, direct, return_eip, fall_through, t.opts.learn_calls),
        (false, Some(target)) => t.direct_exit(target),
        (false, None) => indirect(t),
    }
}

/// A guest RET (R13D popped): a host RET to the continuation of the host
/// CALL that made the guest's (which checks R13D), or to the sentinel,
/// where lookups are inline; else a lookup.
pub(super) fn ret(t: &mut Translator) {
    if inline(t) {
        t.a.ret();
    } else {
        indirect(t);
    }
}

/// The lookup of R13D; with `call`, a hit is entered with a host CALL.
/// With `learn` (a CALL's return address, where `Options::learn_calls`
/// asks), a miss reports it (`exit::CALL_MISS`, with the target; the engine
/// may inline the target there, `exec::inline_calls`):
///
/// ```text
///     <probe> (jrcxz hit)
///     mov rcx, r11 ; mov dword [r14+exit_arg], return_eip ; jmp exit_call_miss
/// hit: ...
/// ```
fn lookup(t: &mut Translator, call: bool, learn: Option<u32>) {
    if !inline(t) {
        t.a.mov_mbase_r32(VCPU, OFF_EIP, SCRATCH);
        t.jmp_abs(t.exits_to.indirect);
        return;
    }
    let table = t.opts.mode.jc_table();
    let rel8 = probe_to(&mut t.a, table);
    let miss_start = t.a.len();
    t.a.mov_r64_r64(RCX, R11);
    match learn {
        Some(return_eip) => {
            t.a.mov_mbase_imm32(VCPU, OFF_EXIT_ARG, return_eip);
            t.jmp_abs(t.exits_to.call_miss);
        }
        None => t.jmp_abs(t.exits_to.indirect),
    }
    let len = t.a.len() - miss_start;
    debug_assert!(len <= i8::MAX as usize);
    t.a.buf[rel8] = len as u8;
    enter_hit(&mut t.a, table, call);
}

/// A guest CALL's transfer where lookups are inline: the direct target through
/// a chainable host CALL, or the indirect one (R13D) through the jump cache
/// entered with a host CALL; then the continuation its RET comes back to,
/// which goes on with the return site's code when the block does
/// (`fall_through`), else to its block. An indirect CALL's miss reports
/// its return address with `learn` (`lookup`).
///
/// ```text
///     call target_block | <probe> ; call [r14+r10*8+jc_targets]
///     mov r11, rcx ; lea ecx, [r13 - return_eip] ; jrcxz 1f  ; the guest's RET popped R13D
///     mov rcx, r11 ; jmp ret_miss[table]                      ; it returned elsewhere
/// 1:  mov rcx, r11 [; jmp return_block]                       ; chainable exit
/// ```
pub(super) fn host_call(t: &mut Translator, direct: Option<u32>, return_eip: u32, fall_through: bool, learn: bool) {
    match direct {
        Some(target) => {
            let at = t.a.call_rel32();
            t.pending_exits.push((at, target));
        }
        None => lookup(t, true, learn.then_some(return_eip)),
    }
    return_check(t, return_eip);
    if !fall_through {
        t.direct_exit(return_eip);
    }
}

/// Did the guest's RET (R13D popped) go where its CALL said? If not, R13D
/// is looked up as a plain jump (`ret_miss`, which consumes no host frame):
///
/// ```text
///     mov r11, rcx ; lea ecx, [r13 - return_eip] ; jrcxz 1f
///     mov rcx, r11 ; jmp ret_miss[table]
/// 1:  mov rcx, r11
/// ```
pub(super) fn return_check(t: &mut Translator, return_eip: u32) {
    t.a.mov_r64_r64(R11, RCX);
    t.a.lea_r32(RCX, SCRATCH, return_eip.wrapping_neg() as i32);
    t.a.bytes(&[JRCXZ, MISS_PATH_LEN]);
    let miss_start = t.a.len();
    t.a.mov_r64_r64(RCX, R11);
    t.jmp_abs(t.exits_to.ret_miss[t.opts.mode.jc_table()]);
    debug_assert_eq!(t.a.len() - miss_start, MISS_PATH_LEN as usize);
    t.a.mov_r64_r64(RCX, R11);
}
