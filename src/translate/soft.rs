//! Software-checked memory accesses ("soft" form) for the instructions that
//! keep faulting in the shadow window.
//!
//! A host fault costs thousands of cycles (signal delivery, and a host
//! mmap to map the page). An instruction that the engine saw fault again
//! and again — a ring-3 touch of pages the guest kernel maps on demand and
//! unmaps again, say — is retranslated so that it never takes one: its
//! linear address is looked up in a small direct-mapped soft TLB (`HotState::
//! soft_tlb`, one table per CPL 0/3 x read/write) that gives the host
//! address of the page in the RAM alias; a miss leaves translated code
//! through `exit_soft_miss` before the instruction did anything, so the
//! engine can walk the guest tables and either fill the entry or raise the
//! precise #PF. An access that would cross into the next page also misses
//! (the tag is compared with the page of its last byte), and the engine then
//! runs it once through the shadow window instead. The lookup is flag-free
//! (SHRX, MOVZX, LEA and JRCXZ), since guest flags live in RFLAGS.
//!
//! ```text
//!     addr32 lea r13d, [ea]                ; linear address (flat segments)
//!     mov r10, rcx ; mov r11d, 12
//!     lea ecx, [r13+size-1] ; shrx ecx, ecx, r11d    ; page of the last byte
//!     shrx r11d, r13d, r11d ; movzx r13d, r11w       ; slot of the first
//!     lea r13, [r13+r13]
//!     mov r11, [r14+r13*8+table] ; lea rcx, [rcx+r11+1] ; jrcxz hit
//!     mov rcx, r10 ; addr32 lea r13d, [ea]
//!     mov dword [r14+eip], eip ; mov dword [r14+soft_kind], kind
//!     mov [r14+exit_arg], r13d ; jmp exit_soft_miss
//! hit:
//!     mov ecx, [r14+soft_hits+4*counter]             ; count the execution (counter != 0)
//!     lea ecx, [rcx+1] ; mov [r14+soft_hits+4*counter], ecx
//!     mov r11, [r14+r13*8+table+8] ; mov rcx, r10
//!     addr32 lea r13d, [ea] ; lea r13, [r13+r11]     ; host address
//!     <instruction with [r13] (no GS, 64-bit address)>
//! ```
//!
//! The count lets the engine send an instruction that runs far more often
//! than it misses back to the shadow window (`exec::soft_tlb`): a loop's
//! store that faulted on the first touch of a fresh buffer would otherwise
//! pay the lookup on every iteration for good.

use iced_x86::{Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind};

use super::Translator;
use crate::cpu::{OFF_EIP, OFF_EXIT_ARG, OFF_SOFT_HITS, OFF_SOFT_KIND, OFF_SOFT_TLB, SOFT_TLB_TABLE_BYTES};
use crate::emit::reg::*;
use crate::emit::{GuestMem, JRCXZ};

/// Largest memory operand the soft form handles (an XMM or x87 m80 operand).
const MAX_SIZE: usize = 16;
/// Soft-TLB kind bit: the access writes.
pub const KIND_WRITE: u32 = 1;
/// Soft-TLB kind bit: the access is made at CPL 3.
pub const KIND_USER: u32 = 2;

/// Can `i` (flat segment, 32-bit addressing) take the soft form? Returns the
/// size of its memory access and whether it writes.
pub(super) fn eligible(i: &Instruction, f: &mut InstructionInfoFactory) -> Option<(usize, bool)> {
    use Mnemonic as M;
    let size = i.memory_size().size();
    if size == 0 || size > MAX_SIZE {
        return None;
    }
    let bit_string = matches!(i.mnemonic(), M::Bt | M::Bts | M::Btr | M::Btc) && i.op1_kind() == OpKind::Register;
    // No access (LEA, hints), or one outside [ea, ea+size) (BT with a register offset).
    if bit_string
        || matches!(
            i.mnemonic(),
            M::Lea
                | M::Nop
                | M::Prefetchnta
                | M::Prefetcht0
                | M::Prefetcht1
                | M::Prefetcht2
                | M::Prefetchw
                | M::Clflush
        )
    {
        return None;
    }
    let info = f.info(i);
    let mems = info.used_memory();
    if mems.len() != 1 {
        return None;
    }
    let write = !matches!(mems[0].access(), OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess);
    Some((size, write))
}

/// Emit the lookup for the access of `i` (kind `kind`, `size` bytes,
/// operand `m`), counting hits in `HotState::soft_hits[counter]`;
/// afterwards R13 holds its host address.
pub(super) fn lookup(t: &mut Translator, i: &Instruction, m: &GuestMem, kind: u32, size: usize, counter: u32) {
    let table = OFF_SOFT_TLB + kind as i32 * SOFT_TLB_TABLE_BYTES;
    t.lea_offset(m);
    t.a.mov_r64_r64(R10, RCX);
    t.a.mov_r32_imm(R11, 12);
    t.a.lea_r32(RCX, SCRATCH, size as i32 - 1);
    t.a.shrx_r32(RCX, RCX, R11);
    t.a.shrx_r32(R11, SCRATCH, R11);
    t.a.movzx_r32_r16(SCRATCH, R11);
    t.a.lea_r64_bi(SCRATCH, SCRATCH, SCRATCH);
    t.a.mov_r64_mbi8(R11, VCPU, SCRATCH, table);
    t.a.lea_r64_bi_d8(RCX, RCX, R11, 1);
    t.a.bytes(&[JRCXZ, 0]);
    let miss = t.a.len();
    t.a.mov_r64_r64(RCX, R10);
    t.lea_offset(m);
    t.a.mov_mbase_imm32(VCPU, OFF_EIP, i.ip32());
    t.a.mov_mbase_imm32(VCPU, OFF_SOFT_KIND, kind);
    t.a.mov_mbase_r32(VCPU, OFF_EXIT_ARG, SCRATCH);
    t.jmp_abs(t.exits_to.soft_miss);
    let len = t.a.len() - miss;
    debug_assert!(len < 128);
    t.a.buf[miss - 1] = len as u8;
    if counter != 0 {
        // (Each count waits on the last through memory: only while the
        // engine is still deciding about the instruction.)
        let count = OFF_SOFT_HITS + 4 * (counter as usize % crate::cpu::SOFT_COUNTERS) as i32;
        t.a.mov_r32_mbase(RCX, VCPU, count);
        t.a.lea_r32(RCX, RCX, 1);
        t.a.mov_mbase_r32(VCPU, count, RCX);
    }
    t.a.mov_r64_mbi8(R11, VCPU, SCRATCH, table + 8);
    t.a.mov_r64_r64(RCX, R10);
    t.lea_offset(m);
    t.a.lea_r64_bi(SCRATCH, SCRATCH, R11);
}
