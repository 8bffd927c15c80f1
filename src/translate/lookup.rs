//! Inline jump-cache lookup for indirect branches and returns.
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
use crate::cpu::{JUMP_CACHE_TABLE_BYTES, OFF_EIP, OFF_JC_KEYS, OFF_JC_TARGETS};
use crate::emit::JRCXZ;
use crate::emit::reg::*;

/// Bytes between the JRCXZ and `hit`: `mov rcx, r11` (3) + `jmp rel32` (5).
const MISS_PATH_LEN: u8 = 8;

pub(super) fn indirect(t: &mut Translator) {
    if !t.opts.inline_lookup || !t.opts.mode.uses_jump_cache() {
        t.a.mov_mbase_r32(VCPU, OFF_EIP, SCRATCH);
        t.jmp_abs(t.exits_to.indirect);
        return;
    }
    let table = t.opts.mode.jc_table() as i32 * JUMP_CACHE_TABLE_BYTES;
    t.a.movzx_r32_r16(R10, SCRATCH);
    t.a.mov_r64_r64(R11, RCX);
    t.a.mov_r64_mbi8(RCX, VCPU, R10, OFF_JC_KEYS + table);
    t.a.lea_r64_bi_d8(RCX, RCX, SCRATCH, 1);
    t.a.bytes(&[JRCXZ, MISS_PATH_LEN]);
    let miss_start = t.a.len();
    t.a.mov_r64_r64(RCX, R11);
    t.jmp_abs(t.exits_to.indirect);
    debug_assert_eq!(t.a.len() - miss_start, MISS_PATH_LEN as usize);
    t.a.mov_r64_r64(RCX, R11);
    t.a.jmp_mbi8(VCPU, R10, OFF_JC_TARGETS + table);
}
