//! Translation of guest blocks into x86-64 host code.
//!
//! Guest EAX..EDI (but ESP) live in the host registers of the same number,
//! guest ESP in R12, guest arithmetic flags and DF in host RFLAGS; R14 points
//! at the vCPU's `HotState` and R15 holds the window base. Most instructions
//! are copied (IDENT), with memory operands rewritten to `gs: addr32 [...]`.
//! Every emitted sequence keeps two rules:
//!
//! * no helper instruction changes host flags (only MOV/LEA/MOVZX/JRCXZ), so
//!   guest flags stay live across the whole block;
//! * in a multi-instruction sequence, a host instruction that can fault comes
//!   before any change of guest state, or the instruction's `Fixup` tells the
//!   signal handler how to undo it — so every fault is precise.
//!
//! The generated block looks like:
//!
//! ```text
//!         <ring 3 with paging: code-page probe, `code_page_probe`>
//! entry:  mov r13d, [r15 - 0x2000]        ; safepoint poll (faults on exit request;
//!                                          ;   not in leaf returns, `needs_poll`)
//!         <translated instructions>
//!         jmp rel32 / jcc rel32 ...        ; direct exits (patched when chained)
//! tail_k: mov dword [r14+eip], target      ; unchained exit k
//!         mov dword [r14+exit_arg], id_k
//!         jmp exit_chain
//! ```

pub mod io;
pub(crate) mod lookup;
mod segment;
pub mod soft;
mod stack;
pub mod string;
mod system;

use iced_x86::{Instruction, OpCodeOperandKind, OpKind, Register};

use crate::cpu::{Mode, OFF_EIP, OFF_EXIT_ARG, vector};
use crate::decode::{Class, GuestBlock, uses_fpu};
use crate::emit::reg::*;
use crate::emit::{Asm, GuestMem, JRCXZ, PREFIX_ADDR32, PREFIX_GS, encode_guest_mem, rel32};
use crate::memory::POLL_PAGE_OFFSET;

/// Host addresses of the shared exit routines (see `exec::trampoline`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExitTargets {
    pub chain: usize,
    pub indirect: usize,
    pub emulate: usize,
    pub exception: usize,
    pub soft_miss: usize,
    pub probe_miss: usize,
    /// A CALL's jump-cache miss that reports its return address
    /// (`Options::learn_calls`).
    pub call_miss: usize,
    /// Per jump-cache table: where a continuation whose guest returned
    /// elsewhere looks R13D up (`exec::return_stack`).
    pub ret_miss: [usize; crate::cpu::JUMP_CACHE_TABLES],
}

/// How the signal handler repairs host registers when a fault hits the
/// middle of an instruction's host sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixup {
    None,
    /// ESI/EDI held host pointers (string instructions): truncate to 32 bits.
    TruncStringPtrs,
    /// The same for a REP string instruction, which may also be interrupted
    /// between iterations (the timer signal stops it there, as hardware
    /// takes interrupts between iterations; re-executing resumes it).
    RepString,
    /// Host register `reg` was borrowed; its guest value is in `from`.
    Restore {
        reg: u8,
        from: u8,
    },
}

/// Where one guest instruction's host code starts.
#[derive(Debug, Clone, Copy)]
pub struct InsnMapEntry {
    pub host_off: u32,
    pub eip: u32,
    pub fixup: Fixup,
    /// Guest ESP = R12D + `esp_delta` when the instruction starts: stack
    /// updates deferred by the ones before it (`Translator::esp_delta`).
    pub esp_delta: i32,
}

/// A direct exit of a block, patchable for chaining.
#[derive(Debug, Clone, Copy)]
pub struct ExitSite {
    /// Offset (in the block's code) of the rel32 field to patch.
    pub rel32_off: u32,
    /// Offset of the unchained tail.
    pub tail_off: u32,
    pub target: u32,
}

/// The host code of one block and its metadata.
pub struct Translation {
    pub code: Vec<u8>,
    pub insn_map: Vec<InsnMapEntry>,
    pub exits: Vec<ExitSite>,
    pub uses_fpu: bool,
    /// Offset of the entry (after the probe's miss path, `Options::probe`).
    pub entry_off: u32,
    /// Offset past the probe: where a chain from the same page enters.
    pub entry_skip: u32,
    /// Further entries (`Options::continuation_entries`): (guest EIP of a
    /// CALL's continuation the block goes on with, offset of its entry stub).
    pub entries: Vec<(u32, u32)>,
}

/// Translation options.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Emit inline jump-cache lookups for indirect branches (off when every
    /// block entry must be traced).
    pub inline_lookup: bool,
    /// The mode the block is translated for.
    pub mode: crate::cpu::Mode,
    /// `-icount`: the block charges its instructions at entry and leaves
    /// for the dispatcher when the budget is spent (`icount_gate`); RDTSC
    /// reads the virtual clock in the VMM.
    pub icount: bool,
    /// Poll `HotState::kick` (a vCPU of a multiprocessor machine, which
    /// other threads must be able to stop cheaply: `kick_check`).
    pub kick_check: bool,
    /// Count PAUSEs down and leave when the count runs out
    /// (`Translator::pause_gate`: a machine with more vCPUs than host CPUs).
    pub pause_gate: bool,
    /// The block's linear address: a ring-3 block with paging on confirms
    /// at its entry that the current address space maps its code page
    /// (`HotState::code_ok`), so chains into it from other pages and its
    /// jump-cache entries survive address spaces that do not map the page.
    pub probe: Option<u32>,
    /// Indirect CALLs leave through `exit::CALL_MISS` when they miss the
    /// jump cache, telling the engine their target, which it may inline
    /// there when it translates the caller again (`exec::inline_calls`).
    pub learn_calls: bool,
    /// Make the continuations of the CALLs the block goes past entries of
    /// their own (`Translation::entries`), so that a return that misses
    /// the host return stack finds code there instead of translating the
    /// rest of the block again (`continuation_entry_stubs`).
    pub continuation_entries: bool,
}

/// Under `-icount`, must `i` (of class `cls`) see the virtual clock up to
/// date: RDTSC and port I/O (the PIT's counter, the RTC).
pub fn reads_time(i: &Instruction, cls: Class) -> bool {
    cls == Class::PortIo || i.mnemonic() == iced_x86::Mnemonic::Rdtsc
}

/// Translates one block for code at host address `host_base`.
/// `mfence`.
const MFENCE: [u8; 3] = [0x0F, 0xAE, 0xF0];

pub struct Translator<'a> {
    a: Asm,
    host_base: usize,
    exits_to: ExitTargets,
    first_exit_id: u32,
    opts: Options,
    insn_map: Vec<InsnMapEntry>,
    pending_exits: Vec<(usize, u32)>,
    /// Stack-pointer updates not yet made: guest ESP = R12D + `esp_delta`.
    /// Pushes, pops and ESP-based operands in between fold it into their
    /// displacements, so a run of them updates R12 once (`flush_esp`);
    /// every other instruction, and every way out of the block, sees it 0.
    esp_delta: i32,
    /// The CALL being translated is not the block's last instruction: its
    /// host CALL's continuation falls into the return site's code.
    call_continues: bool,
    /// (guest EIP, code offset) of the continuations that become entries.
    entries: Vec<(u32, u32)>,
    /// Guest code the instructions were decoded from; index 0 is EIP `code_base`.
    code: &'a [u8],
    code_base: u32,
    /// The code of an inlined callee (`GuestBlock::inlined`): its bytes
    /// and the EIP of the first.
    inline_code: Option<(&'a [u8], u32)>,
    /// EIPs of instructions to translate with soft-TLB accesses (`soft`),
    /// each with its hit-counter slot (`HotState::soft_hits`).
    soft: Option<&'a crate::fastmap::FastMap<u32, u32>>,
    /// The operand being emitted is a host address in R13 or a borrowed
    /// register: `mem_op` leaves out GS and the address-size override.
    host_mem: bool,
    /// The instruction being emitted names AH/CH/DH/BH: no REX, so no
    /// direct window operand (`direct_window_operand`).
    no_direct: bool,
    soft_all: bool,
    /// Operand-access analysis for soft-form candidates (made on first use).
    info: Option<iced_x86::InstructionInfoFactory>,
}

/// The guest operand `m` as a plain 64-bit access relative to the window
/// base in R15, where that reaches the same byte as `gs: addr32 [m]`:
///
/// * `[reg]` -> `[r15 + reg]`: guest registers are kept zero-extended, so
///   `r15 + reg` is the window address with no 32-bit wrap to make;
/// * `[disp32]` with `disp32 < 2 GiB` -> `[r15 + disp32]` (a non-negative
///   sign-extended displacement).
///
/// The GS segment base and the address-size override cost a cycle of load
/// latency on the hosts measured (Zen 4: 5 cycles against 4 for `[base +
/// index]` or `[base + disp]`), and a load through a pointer just loaded
/// (`mov eax, [esp+4]; mov edx, [eax]`) is the commonest dependence chain in
/// compiled code. `[reg + disp]` gains nothing as `[r15 + reg + disp]` (a
/// three-part address costs the fifth cycle too) and would need guard zones
/// for its wrap-around, so it keeps the GS form.
pub(crate) fn direct_window_operand(m: &GuestMem) -> Option<GuestMem> {
    match (m.base, m.index) {
        (Some(r), None) | (None, Some(r)) if m.disp == 0 && (m.base.is_some() || m.scale == 1) => {
            debug_assert!(r & 7 != 4 || r == GUEST_ESP, "host RSP is never a guest register");
            Some(GuestMem { base: Some(WINDOW), index: Some(r), scale: 1, disp: 0 })
        }
        (None, None) if m.disp >= 0 => Some(GuestMem::base_disp(WINDOW, m.disp)),
        _ => None,
    }
}

/// Does the instruction with this opcode use its memory operand's address
/// other than as the one place it accesses (LEA computes it; BT/BTS/BTR/BTC
/// with a register bit offset reach beyond it, wrapping in 32 bits)? Those
/// keep the `addr32` form.
fn computes_address(opcode: &[u8]) -> bool {
    matches!(opcode, [0x8D] | [0x0F, 0xA3 | 0xAB | 0xB3 | 0xBB])
}

/// The exception an x87/MMX/SSE instruction raises in `mode` because of
/// CR0.EM/TS/MP or CR4.OSFXSR (SDM Vol. 3 Table 2-2 and 13-1), if any.
pub fn fpu_fault(i: &Instruction, mode: Mode) -> Option<u8> {
    use iced_x86::CpuidFeature as F;
    use iced_x86::Mnemonic as M;
    // Fences, prefetches and PAUSE touch no FPU/SSE state: they never trap.
    if matches!(
        i.mnemonic(),
        M::Lfence | M::Mfence | M::Sfence | M::Pause | M::Prefetchnta | M::Prefetcht0 | M::Prefetcht1 | M::Prefetcht2
    ) {
        return None;
    }
    let (em, ts) = (mode.has(Mode::EM), mode.has(Mode::TS));
    if i.mnemonic() == iced_x86::Mnemonic::Wait {
        return (ts && mode.has(Mode::MP)).then_some(vector::NM);
    }
    let f = i.cpuid_features();
    let has = |x: F| f.contains(&x);
    if has(F::FXSR) {
        return (em || ts).then_some(vector::NM);
    }
    if has(F::SSE) || has(F::SSE2) {
        // CR4.OSFXSR gates the XMM forms only: SSE's instructions on MMX
        // registers (PAVGB mm, MASKMOVQ, PADDQ mm, ...) behave as MMX ones.
        let xmm = names_register(i, |r| r.is_xmm()) || i.memory_size().size() == 16;
        if em || (xmm && mode.has(Mode::NO_OSFXSR)) {
            return Some(vector::UD);
        }
        return ts.then_some(vector::NM);
    }
    if has(F::MMX) {
        if em {
            return Some(vector::UD);
        }
        return ts.then_some(vector::NM);
    }
    (em || ts).then_some(vector::NM)
}

/// Host register of a 32- or 16-bit guest GPR (ESP/SP map to R12).
pub fn host_gpr(r: Register) -> Option<u8> {
    let full = r.full_register32();
    let n = match full {
        Register::EAX => RAX,
        Register::ECX => RCX,
        Register::EDX => RDX,
        Register::EBX => RBX,
        Register::ESP => GUEST_ESP,
        Register::EBP => RBP,
        Register::ESI => RSI,
        Register::EDI => RDI,
        _ => return None,
    };
    Some(n)
}

/// Segment register index (ES..GS) of a memory operand's segment.
pub(crate) fn seg_index(r: Register) -> usize {
    use crate::cpu::*;
    match r {
        Register::ES => SEG_ES,
        Register::CS => SEG_CS,
        Register::SS => SEG_SS,
        Register::FS => SEG_FS,
        Register::GS => SEG_GS,
        _ => SEG_DS,
    }
}

/// Does `i` have a register operand for which `pred` holds?
fn names_register(i: &Instruction, pred: impl Fn(Register) -> bool) -> bool {
    (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Register && pred(i.op_register(n)))
}

/// Does `i` have a memory operand?
fn has_memory_operand(i: &Instruction) -> bool {
    (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory)
}

fn is_high_byte(r: Register) -> bool {
    matches!(r, Register::AH | Register::CH | Register::DH | Register::BH)
}

fn is_sp(r: Register) -> bool {
    matches!(r, Register::ESP | Register::SP)
}

/// The guest memory operand of `i` in host registers, with ESP as `esp`.
fn guest_mem(i: &Instruction, esp: u8) -> GuestMem {
    let map = |r: Register| -> Option<u8> {
        if r == Register::None {
            None
        } else if is_sp(r) {
            Some(esp)
        } else {
            host_gpr(r)
        }
    };
    GuestMem {
        base: map(i.memory_base()),
        index: map(i.memory_index()),
        scale: i.memory_index_scale() as u8,
        disp: i.memory_displacement32() as i32,
    }
}

/// Legacy prefixes we keep when copying: operand size, REP/REPNE (also the
/// SSE mandatory prefixes) and LOCK. Segment overrides are dropped (GS is
/// added), 0x67 never reaches here (16-bit addressing is emulated).
fn is_kept_prefix(b: u8) -> bool {
    matches!(b, 0x66 | 0xF2 | 0xF3 | 0xF0)
}

fn is_legacy_prefix(b: u8) -> bool {
    matches!(b, 0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3)
}

/// The byte layout of a guest instruction.
struct Layout {
    prefix_end: usize,
    opcode_end: usize,
    /// End of ModRM + SIB + displacement (== opcode_end without ModRM).
    modrm_end: usize,
}

fn layout(bytes: &[u8], has_modrm: bool, code16: bool) -> Layout {
    let mut p = 0;
    let mut addr_prefix = false;
    while p < bytes.len() && is_legacy_prefix(bytes[p]) {
        addr_prefix |= bytes[p] == PREFIX_ADDR32;
        p += 1;
    }
    let mut o = p;
    if bytes.get(o) == Some(&0x0F) {
        o += 1;
        if matches!(bytes.get(o), Some(0x38) | Some(0x3A)) {
            o += 1;
        }
    }
    o += 1;
    let mut m = o;
    if has_modrm {
        let modrm = bytes.get(o).copied().unwrap_or(0);
        let md = modrm >> 6;
        let rm = modrm & 7;
        m += 1;
        if md != 3 && code16 != addr_prefix {
            // 16-bit addressing: no SIB; disp16 with mod 10, or alone
            // ([disp16]) with mod 00 and r/m 110.
            m += match (md, rm) {
                (1, _) => 1,
                (2, _) | (0, 6) => 2,
                _ => 0,
            };
        } else if md != 3 {
            let mut disp = match md {
                1 => 1,
                2 => 4,
                _ => 0,
            };
            if rm == 4 {
                let sib = bytes.get(m).copied().unwrap_or(0);
                m += 1;
                if md == 0 && sib & 7 == 5 {
                    disp = 4;
                }
            } else if md == 0 && rm == 5 {
                disp = 4;
            }
            m += disp;
        }
    }
    Layout { prefix_end: p, opcode_end: o, modrm_end: m.min(bytes.len()) }
}

/// Does the instruction form have a ModRM byte? (All register/memory operand
/// kinds encoded in ModRM say so.)
fn has_modrm(i: &Instruction) -> bool {
    use OpCodeOperandKind as K;
    i.op_code().op_kinds().iter().any(|k| {
        matches!(
            k,
            K::r8_or_mem
                | K::r16_or_mem
                | K::r32_or_mem
                | K::r32_or_mem_mpx
                | K::r8_reg
                | K::r16_reg
                | K::r16_reg_mem
                | K::r16_rm
                | K::r32_reg
                | K::r32_reg_mem
                | K::r32_rm
                | K::mem
                | K::mem_mpx
                | K::mem_mib
                | K::mem_vsib32x
                | K::seg_reg
                | K::cr_reg
                | K::dr_reg
                | K::tr_reg
                | K::mm_reg
                | K::mm_rm
                | K::mm_or_mem
                | K::xmm_reg
                | K::xmm_rm
                | K::xmm_or_mem
                | K::sti_opcode
        )
    }) || i.op_code().group_index() >= 0
        || i.op_code().rm_group_index() >= 0
}

impl<'a> Translator<'a> {
    /// `code` is guest memory from address 0 (the instructions' bytes are
    /// re-read from it when copied).
    pub fn new(host_base: usize, exits_to: ExitTargets, first_exit_id: u32, opts: Options, code: &'a [u8]) -> Self {
        Translator {
            a: Asm::default(),
            host_base,
            exits_to,
            first_exit_id,
            opts,
            insn_map: Vec::new(),
            pending_exits: Vec::new(),
            esp_delta: 0,
            call_continues: false,
            entries: Vec::new(),
            code,
            code_base: 0,
            inline_code: None,
            soft: None,
            host_mem: false,
            no_direct: false,
            soft_all: false,
            info: None,
        }
    }

    /// Translate every eligible instruction with soft-TLB accesses.
    pub fn with_soft_all(mut self) -> Self {
        self.soft_all = true;
        self
    }

    /// Translate the instructions at these EIPs with soft-TLB accesses,
    /// counting their executions in the given `HotState::soft_hits` slots.
    pub fn with_soft(mut self, soft: &'a crate::fastmap::FastMap<u32, u32>) -> Self {
        self.soft = Some(soft);
        self
    }

    /// `code[0]` holds the byte at EIP `base` (default 0).
    pub fn with_code_base(mut self, base: u32) -> Self {
        self.code_base = base;
        self
    }

    /// The bytes of the block's inlined callee, `code[0]` at EIP `base`.
    pub fn with_inline_code(mut self, code: &'a [u8], base: u32) -> Self {
        self.inline_code = Some((code, base));
        self
    }

    /// The entry of a block under `-icount`: the safepoint poll, made to
    /// fault also when the block's `n` instructions would overdraw the
    /// budget, then the charge. Flags are untouched (BSWAP, MOVZX and LEA
    /// leave them alone): the budget's sign byte indexes the load into the
    /// guard page after the poll page.
    ///
    /// ```text
    /// mov r13d, [r14+icount_left] ; lea r13d, [r13-n]
    /// bswap r13d ; movzx r13d, r13b          ; 0x00 if left-n >= 0, 0xFF if < 0
    /// mov r13, [r15+r13*8+poll_last]         ; poll page, or guard page: faults
    /// mov r13d, [r14+icount_left] ; lea r13d, [r13-n]
    /// mov [r14+icount_left], r13d
    /// ```
    fn icount_gate(&mut self, n: u32) {
        use crate::cpu::OFF_ICOUNT_LEFT;
        // The last quadword of the poll page: with index 0xFF the load
        // lands 0x7F8 bytes on, in the guard page below the window.
        const POLL_LAST: i32 = POLL_PAGE_OFFSET + crate::memory::PAGE_SIZE as i32 - 8;
        let n = n as i32;
        self.a.mov_r32_mbase(SCRATCH, VCPU, OFF_ICOUNT_LEFT);
        self.a.lea_r32(SCRATCH, SCRATCH, -n);
        self.a.bswap_r32(SCRATCH);
        self.a.movzx_r32_r8(SCRATCH, SCRATCH);
        self.a.mov_r64_mbi8(SCRATCH, WINDOW, SCRATCH, POLL_LAST);
        self.a.mov_r32_mbase(SCRATCH, VCPU, OFF_ICOUNT_LEFT);
        self.a.lea_r32(SCRATCH, SCRATCH, -n);
        self.a.mov_mbase_r32(VCPU, OFF_ICOUNT_LEFT, SCRATCH);
    }

    /// The safepoint of a multiprocessor vCPU's block: leave for the
    /// dispatcher if another thread (or the timer) stored a nonzero
    /// `HotState::kick`. A flag-free test (JRCXZ, as the jump-cache
    /// lookup), so no host fault and no signal is needed to stop a vCPU.
    ///
    /// ```text
    ///     mov r11, rcx ; mov rcx, [r14+kick]
    ///     jrcxz run
    ///     mov rcx, r11 ; mov r13d, block_start ; jmp exit_indirect
    /// run:
    ///     mov rcx, r11
    /// ```
    fn kick_check(&mut self, start: u32) {
        /// Bytes of the leaving path: `mov rcx, r11` (3), `mov r13d, imm32`
        /// (6), `jmp rel32` (5).
        const LEAVE_LEN: u8 = 14;
        self.a.mov_r64_r64(R11, RCX);
        self.a.mov_r64_mbase(RCX, VCPU, crate::cpu::OFF_KICK);
        self.a.bytes(&[crate::emit::JRCXZ, LEAVE_LEN]);
        let leave = self.a.len();
        self.a.mov_r64_r64(RCX, R11);
        self.a.mov_r32_imm(SCRATCH, start);
        self.jmp_abs(self.exits_to.indirect);
        debug_assert_eq!(self.a.len() - leave, LEAVE_LEN as usize);
        self.a.mov_r64_r64(RCX, R11);
    }

    /// PAUSE of a multiprocessor guest: count it down in
    /// `HotState::pause_left` and leave through a faulting load (as
    /// `icount_gate` does) when it reaches zero, flags untouched; the VMM
    /// may then yield the host CPU (`Engine::pause_spin`). The state is
    /// precise at the PAUSE, which runs again once the count is refilled.
    ///
    /// ```text
    /// mov r13d, [r14+pause_left] ; lea r13d, [r13-1]
    /// bswap r13d ; movzx r13d, r13b          ; 0x00 if left-1 >= 0, 0xFF if < 0
    /// mov r13, [r15+r13*8+poll_last]         ; poll page, or guard page: faults
    /// mov r13d, [r14+pause_left] ; lea r13d, [r13-1]
    /// mov [r14+pause_left], r13d
    /// pause
    /// ```
    fn pause_gate(&mut self) {
        use crate::cpu::OFF_PAUSE_LEFT;
        const POLL_LAST: i32 = POLL_PAGE_OFFSET + crate::memory::PAGE_SIZE as i32 - 8;
        self.a.mov_r32_mbase(SCRATCH, VCPU, OFF_PAUSE_LEFT);
        self.a.lea_r32(SCRATCH, SCRATCH, -1);
        self.a.bswap_r32(SCRATCH);
        self.a.movzx_r32_r8(SCRATCH, SCRATCH);
        self.a.mov_r64_mbi8(SCRATCH, WINDOW, SCRATCH, POLL_LAST);
        self.a.mov_r32_mbase(SCRATCH, VCPU, OFF_PAUSE_LEFT);
        self.a.lea_r32(SCRATCH, SCRATCH, -1);
        self.a.mov_mbase_r32(VCPU, OFF_PAUSE_LEFT, SCRATCH);
    }

    /// Translate `block`.
    pub fn translate(mut self, block: &GuestBlock) -> Translation {
        let n = block.insns.len();
        // Typical output is ~10 host bytes per guest instruction plus ~25 per
        // exit; a Linux boot averages 13 bytes per instruction in all. Room
        // for more than that spares most blocks a reallocation.
        self.a.buf.reserve(n * 16 + 128);
        self.insn_map.reserve(n + 1);
        let mut fpu = false;
        self.mark(block.start, Fixup::None);
        let (entry_off, entry_skip) = match self.opts.probe {
            Some(lin) => self.code_page_probe(block.start, lin),
            None => (0, 0),
        };
        // Safepoint poll: a plain load, so guest flags stay untouched.
        if self.opts.icount {
            self.icount_gate(n as u32);
        } else if self.opts.kick_check {
            self.kick_check(block.start);
        } else if needs_poll(block) {
            self.a.mov_r32_mbase(SCRATCH, WINDOW, POLL_PAGE_OFFSET);
        }
        let mut fell_through = true;
        // After STI (one instruction later: its shadow) and POPFD, a pending
        // interrupt may have become deliverable.
        let mut check_after: Option<usize> = None;
        // Side exits forward to an instruction of the block itself jump to
        // its code here: (guest EIP, host offset) of those instructions, and
        // (rel32 field, guest EIP) of the jumps.
        let internal = internal_targets(block);
        let mut internal_at: Vec<(u32, usize)> = Vec::with_capacity(internal.len());
        let mut internal_jumps: Vec<(usize, u32)> = Vec::new();
        // An inlined callee: the CALL's jump over it on the guard's miss path.
        let inlined = block.inlined;
        let mut over_callee: Option<usize> = None;
        for (k, (i, &cls)) in block.insns.iter().zip(&block.classes).enumerate() {
            if std::mem::take(&mut self.call_continues) && self.continuation_entry_ok(block, i.ip32()) {
                self.entries.push((i.ip32(), self.a.len() as u32));
            }
            if internal.binary_search(&i.ip32()).is_ok() {
                // Reached by a jump too: no deferred ESP update pending.
                self.flush_esp();
                internal_at.push((i.ip32(), self.a.len()));
            }
            // Under icount the TSC and the devices follow the virtual clock,
            // which the engine advances when translated code leaves: RDTSC
            // and port I/O run in the VMM (the engine ends blocks at them).
            let cls = if self.opts.icount && reads_time(i, cls) { Class::Emulate } else { cls };
            fpu |= cls == Class::Ident && uses_fpu(i);
            // A conditional branch before the end is a side exit: the block
            // goes on with its fall-through path.
            let side_exit = cls == Class::Jcc && k + 1 < n;
            // A CALL the decoder went past: its continuation is the next
            // instruction's code.
            self.call_continues =
                matches!(cls, Class::CallDirect | Class::CallIndirect) && k + 1 < n && lookup::inline(&self);
            let callee_ret = inlined.filter(|c| k == c.call + c.len);
            if let Some(c) = inlined.filter(|c| k == c.call) {
                over_callee = Some(self.inline_call(i, c.start));
            } else if let Some(c) = callee_ret {
                self.inline_return(i, block.insns[c.call].next_ip32(), c.stores);
                if let Some(at) = over_callee.take() {
                    let here = self.a.len();
                    self.a.bind_rel32(at, here);
                }
            } else if side_exit {
                self.flush_esp();
                self.mark(i.ip32(), Fixup::None);
                let at = self.a.jcc_rel32(i.condition_code() as u8 - 1);
                let target = i.near_branch32();
                let same_part = block.in_callee(i.ip32()) == block.in_callee(target);
                if target > i.ip32() && same_part && internal.binary_search(&target).is_ok() {
                    internal_jumps.push((at, target));
                } else {
                    self.pending_exits.push((at, target));
                }
            } else {
                self.insn(i, cls);
            }
            let ends = cls.ends_block() && !side_exit && !self.call_continues && callee_ret.is_none();
            fell_through = !ends;
            if cls == Class::SysInline {
                match i.mnemonic() {
                    iced_x86::Mnemonic::Sti => check_after = Some(k + 1),
                    iced_x86::Mnemonic::Popfd => check_after = Some(k),
                    _ => {}
                }
            }
            if check_after == Some(k) && !ends {
                self.flush_esp();
                self.interrupt_window_check(i.next_ip32());
                check_after = None;
            }
        }
        if fell_through {
            self.flush_esp();
            let at = self.a.jmp_rel32();
            self.pending_exits.push((at, block.end));
        }
        for (at, target) in internal_jumps {
            match internal_at.iter().find(|&&(eip, _)| eip == target) {
                Some(&(_, host)) => self.a.bind_rel32(at, host),
                None => self.pending_exits.push((at, target)),
            }
        }
        self.call_continues = false;
        // Tails of the direct exits.
        let mut exits = Vec::with_capacity(self.pending_exits.len());
        let pending = std::mem::take(&mut self.pending_exits);
        for (k, (at, target)) in pending.into_iter().enumerate() {
            let tail = self.a.len();
            self.a.bind_rel32(at, tail);
            self.a.mov_mbase_imm32(VCPU, OFF_EIP, target);
            self.a.mov_mbase_imm32(VCPU, OFF_EXIT_ARG, self.first_exit_id + k as u32);
            self.jmp_abs(self.exits_to.chain);
            exits.push(ExitSite { rel32_off: at as u32, tail_off: tail as u32, target });
        }
        let entries = self.continuation_entry_stubs();
        Translation { code: self.a.buf, insn_map: self.insn_map, exits, uses_fpu: fpu, entry_off, entry_skip, entries }
    }

    /// May the continuation at `eip` of the CALL just translated become an
    /// entry? Only where nothing is deferred or assumed there: no ESP update
    /// pending, not inside an inlined callee, on the block's first page
    /// (whose mapping the block's own lookup key vouches for), in a block
    /// with no entry check of its own that a stub would skip (the icount
    /// budget, a vCPU's kick check; a ring-3 code-page probe the stub makes
    /// itself).
    fn continuation_entry_ok(&self, block: &GuestBlock, eip: u32) -> bool {
        self.opts.continuation_entries
            && !self.opts.icount
            && !self.opts.kick_check
            && !self.opts.pause_gate
            && self.esp_delta == 0
            && !block.in_callee(eip)
            && eip & !0xFFF == block.start & !0xFFF
    }

    /// The entry stubs of the continuations `continuation_entry_ok` chose,
    /// after the rest of the block's code; returns (guest EIP, stub offset)
    /// of each. A stub polls, as a block's entry does, since it can be
    /// entered from the jump cache in a loop of translated code; in a
    /// ring-3 block it first confirms the code page as the block's entry
    /// does (`code_page_probe`, whose miss path leaves with the
    /// continuation's EIP):
    ///
    /// ```text
    ///       [<code-page probe's miss path>]
    /// stub: [<code-page probe>]
    ///        mov r13d, [r15 + poll]      ; insn_map: the continuation's EIP
    ///        jmp continuation            ; the code after the CALL's return check
    /// ```
    fn continuation_entry_stubs(&mut self) -> Vec<(u32, u32)> {
        let entries = std::mem::take(&mut self.entries);
        let mut stubs = Vec::with_capacity(entries.len());
        for (eip, code) in entries {
            self.esp_delta = 0;
            self.mark(eip, Fixup::None);
            let stub = match self.opts.probe {
                // (The continuation is on the block's first page.)
                Some(lin) => self.code_page_probe(eip, lin).0,
                None => self.a.len() as u32,
            };
            self.a.mov_r32_mbase(SCRATCH, WINDOW, POLL_PAGE_OFFSET);
            let at = self.a.jmp_rel32();
            self.a.bind_rel32(at, code as usize);
            stubs.push((eip, stub));
        }
        stubs
    }

    fn mark(&mut self, eip: u32, fixup: Fixup) {
        let esp_delta = self.esp_delta;
        self.insn_map.push(InsnMapEntry { host_off: self.a.len() as u32, eip, fixup, esp_delta });
    }

    /// Make the deferred stack-pointer updates: `lea r12d, [r12+esp_delta]`
    /// (flag-free, like the updates it stands for).
    pub(crate) fn flush_esp(&mut self) {
        if self.esp_delta != 0 {
            self.a.lea_r32(GUEST_ESP, GUEST_ESP, self.esp_delta);
            self.esp_delta = 0;
        }
    }

    /// `guest_mem(i, GUEST_ESP)` with the deferred ESP updates folded into
    /// an ESP base's displacement.
    pub(crate) fn guest_mem_esp(&self, i: &Instruction) -> GuestMem {
        let mut m = guest_mem(i, GUEST_ESP);
        if m.base == Some(GUEST_ESP) {
            m.disp = m.disp.wrapping_add(self.esp_delta);
        }
        m
    }

    /// Can `i` (class `cls`, as `insn` will translate it) run with stack
    /// updates deferred? It must not name ESP as a register, must have no
    /// way out of the block but a host fault (whose handler adds the
    /// instruction's `esp_delta` to R12), and its memory operand must be
    /// the plain window form, whose ESP base takes the delta.
    fn keeps_esp_delta(&self, i: &Instruction, cls: Class) -> bool {
        /// Deferred updates beyond this are made: displacements stay small.
        const MAX_DELTA: i32 = 1 << 12;
        if self.esp_delta.abs() > MAX_DELTA || self.opts.mode.has(Mode::CS16) {
            return false;
        }
        let names_sp = names_register(i, is_sp);
        let mem = has_memory_operand(i);
        let plain_mem = || {
            self.opts.mode.seg_flat(seg_index(i.memory_segment()))
                && !crate::decode::has_16bit_addressing(i)
                && !self.is_soft(i)
        };
        match cls {
            Class::PushImm | Class::CallDirect | Class::Ret => true,
            Class::PushReg | Class::PopReg | Class::IncDecShort => !names_sp,
            Class::PushMem | Class::CallIndirect => !names_sp && (!mem || plain_mem()),
            Class::Ident => {
                let high = names_register(i, is_high_byte);
                !names_sp
                    && !matches!(
                        i.mnemonic(),
                        iced_x86::Mnemonic::Div | iced_x86::Mnemonic::Idiv | iced_x86::Mnemonic::Pause
                    )
                    && (!mem || (plain_mem() && !(high && is_sp(i.memory_base()))))
            }
            _ => false,
        }
    }

    /// The code-page probe of a ring-3 block at guest `eip`, linear `lin`
    /// (`Options::probe`); returns the offsets of the entry and of the code
    /// after the probe. The miss path comes first, so the JRCXZ reaches it
    /// however long the block:
    ///
    /// ```text
    /// miss:  mov rcx, r11 ; mov dword [r14+eip], eip ; jmp exit_probe_miss
    /// entry: mov r11, rcx                              ; (R10, R11, R13 are free here)
    ///        movzx ecx, byte [r14+code_ok+(lin>>12)] ; jrcxz miss
    ///        mov rcx, r11
    /// skip:  <poll, block>
    /// ```
    fn code_page_probe(&mut self, eip: u32, lin: u32) -> (u32, u32) {
        let miss = self.a.len();
        self.a.mov_r64_r64(RCX, R11);
        self.a.mov_mbase_imm32(VCPU, OFF_EIP, eip);
        self.jmp_abs(self.exits_to.probe_miss);
        let entry = self.a.len();
        self.a.mov_r64_r64(R11, RCX);
        self.a.movzx_r32_m8base(RCX, VCPU, crate::cpu::OFF_CODE_OK + (lin >> 12) as i32);
        let back = miss as i64 - (self.a.len() as i64 + 2);
        self.a.bytes(&[JRCXZ, back as i8 as u8]);
        self.a.mov_r64_r64(RCX, R11);
        (entry as u32, self.a.len() as u32)
    }

    /// `jmp rel32` to an absolute host address.
    fn jmp_abs(&mut self, target: usize) {
        let at = self.a.jmp_rel32();
        let v = rel32(self.host_base + at, target);
        self.a.patch_u32(at, v);
    }

    /// A chainable direct exit to guest `target`.
    fn direct_exit(&mut self, target: u32) {
        let at = self.a.jmp_rel32();
        self.pending_exits.push((at, target));
    }

    /// An indirect CALL whose callee the block holds inline (`GuestBlock::
    /// inlined`): the return address is pushed as for any CALL; if the
    /// target is the callee's `start`, its code follows, else the CALL
    /// goes through the jump cache as usual and its continuation jumps over
    /// the callee to the return site. Returns the offset of that jump's rel32.
    ///
    /// ```text
    ///     [mov r13d, gs:<target>] ; mov gs:[r12d+delta-4], return_eip
    ///     mov r11, rcx ; lea ecx, [<target reg or r13> - start] ; jrcxz 1f
    ///     mov rcx, r11 ; lea r12d, [r12+delta-4] ; [mov r13d, <target reg>]
    ///     <jump-cache lookup> ; call [jc_targets]                   ; (host_call)
    ///     <continuation: return check>
    ///     jmp 2f
    /// 1:  mov rcx, r11
    ///     <callee, ESP updates deferred from the push on>
    ///     <its RET: inline_return>
    /// 2:  <return site>
    /// ```
    fn inline_call(&mut self, i: &Instruction, start: u32) -> usize {
        debug_assert!(self.opts.mode.seg_flat(crate::cpu::SEG_SS) && lookup::inline(self));
        if self.esp_delta != 0 && !self.keeps_esp_delta(i, Class::CallIndirect) {
            self.flush_esp();
        }
        self.mark(i.ip32(), Fixup::None);
        // A target in a register is compared there (and copied to R13 only
        // for the lookup); not ESP, which the push changes.
        let reg = (i.op0_kind() == OpKind::Register && !is_sp(i.op0_register()))
            .then(|| host_gpr(i.op0_register()).unwrap_or(RAX));
        if reg.is_none() {
            self.load_scratch(i);
        }
        stack::push_imm32(self, i.next_ip32());
        self.a.mov_r64_r64(R11, RCX);
        self.a.lea_r32(RCX, reg.unwrap_or(SCRATCH), start.wrapping_neg() as i32);
        let guard = self.a.len();
        self.a.bytes(&[JRCXZ, 0]);
        self.a.mov_r64_r64(RCX, R11);
        // The push's ESP update stays deferred into the callee (whose RET
        // usually cancels it); the miss path, a way out, makes it.
        let delta = self.esp_delta;
        self.flush_esp();
        if let Some(r) = reg {
            self.a.mov_r32_r32(SCRATCH, r);
        }
        // (Its miss learns nothing: the site is learnt.)
        lookup::host_call(self, None, i.next_ip32(), true, false);
        let over = self.a.jmp_rel32();
        let skip = self.a.len() - (guard + 2);
        debug_assert!(skip <= i8::MAX as usize, "the guard's miss path is {skip} bytes");
        self.a.buf[guard + 1] = skip as u8;
        self.a.mov_r64_r64(RCX, R11);
        self.esp_delta = delta;
        over
    }

    /// The RET of an inlined callee, which goes on with the return site.
    /// A callee that may store (`stores`) may have rewritten the return
    /// address: it is popped and checked as a host CALL's continuation
    /// checks it. Otherwise the slot still holds what the CALL pushed — the
    /// push completed in translated code, so it went to RAM, and on a
    /// machine of one vCPU (`Engine::may_inline`) nothing else writes it
    /// meanwhile — and the RET only moves ESP (its load could not fault:
    /// the slot was just written):
    ///
    /// ```text
    ///     mov r13d, gs:[r12d+delta] ; lea r12d, [r12+delta+4]   ; stores
    ///     <return check: lookup::return_check>
    /// or: [lea r12d, [r12+delta+4]]                             ; no stores
    /// ```
    /// (a leaf that keeps its stack balanced has delta -4 here: no LEA).
    fn inline_return(&mut self, i: &Instruction, return_eip: u32, stores: bool) {
        if self.esp_delta != 0 && !self.keeps_esp_delta(i, Class::Ret) {
            self.flush_esp();
        }
        self.mark(i.ip32(), Fixup::None);
        let d = self.esp_delta;
        if stores {
            self.mem_op(&[], &[0x8B], SCRATCH, &GuestMem::base_disp(GUEST_ESP, d), &[]);
        }
        self.esp_delta = d.wrapping_add(4);
        self.flush_esp();
        if stores {
            lookup::return_check(self, return_eip);
        }
    }

    fn insn(&mut self, i: &Instruction, cls: Class) {
        let eip = i.ip32();
        let mode = self.opts.mode;
        let cls = match cls {
            Class::PushReg
            | Class::PushImm
            | Class::PushMem
            | Class::PushSeg
            | Class::SegReload
            | Class::PopReg
            | Class::PopMem
            | Class::Pushad
            | Class::Popad
            | Class::Leave
            | Class::Enter0
            | Class::CallDirect
            | Class::CallIndirect
            | Class::Ret
            | Class::SysInline
                if !mode.seg_flat(crate::cpu::SEG_SS) =>
            {
                Class::Emulate
            }
            // Its memory operand is used as a flat window address (PUSH m32
            // and indirect JMP/CALL check a non-flat segment's operand).
            Class::PopMem | Class::VerifyWrite | Class::SegReload | Class::StoreSys
                if has_memory_operand(i) && !mode.seg_flat(seg_index(i.memory_segment())) =>
            {
                Class::Emulate
            }
            Class::ImplicitDs | Class::StringEs | Class::MaskMov
                if !mode.seg_flat(crate::cpu::SEG_ES) || !mode.seg_flat(seg_index(i.memory_segment())) =>
            {
                Class::Emulate
            }
            c => c,
        };
        let fpu_exit = if cls == Class::Ident && (uses_fpu(i) || i.mnemonic() == iced_x86::Mnemonic::Wait) {
            fpu_fault(i, self.opts.mode)
        } else {
            None
        };
        // (Nothing deferred, nothing to decide: most instructions.)
        if self.esp_delta != 0 && (fpu_exit.is_some() || !self.keeps_esp_delta(i, cls)) {
            self.flush_esp();
        }
        self.mark(eip, Fixup::None);
        if self.opts.pause_gate && i.mnemonic() == iced_x86::Mnemonic::Pause {
            self.pause_gate();
        }
        if let Some(v) = fpu_exit {
            self.exception_exit(eip, v);
            return;
        }
        match cls {
            Class::Ident if matches!(i.mnemonic(), iced_x86::Mnemonic::Div | iced_x86::Mnemonic::Idiv) => {
                self.divide_by_zero_check(i);
                self.ident(i, None);
            }
            // SERIALIZE (`cpu::cpuid::SERIALIZE_EDX7`), which the host may
            // lack: its memory ordering, as `mfence`. Nothing else is owed:
            // a store to code is caught as it is made.
            Class::Ident if i.code() == iced_x86::Code::Serialize => self.a.bytes(&MFENCE),
            Class::Ident => self.ident(i, None),
            Class::Alias82 => self.ident(i, Some(0x80)),
            Class::RepBitScan => self.rep_bitscan(i),
            Class::IncDecShort => self.inc_dec_short(i),
            Class::ImplicitDs => string::implicit_ds(self, i),
            Class::StringEs if self.is_soft(i) && string::soft_eligible(i, self.opts.mode) => {
                string::soft(self, i, self.soft_counter(i));
            }
            Class::StringEs => string::string_es(self, i),
            Class::MaskMov => string::maskmov(self, i),
            Class::PushReg => stack::push_reg(self, i),
            Class::PushImm => stack::push_imm(self, i),
            Class::PushSeg => stack::push_sreg(self, i),
            Class::ReadSeg => stack::read_sreg(self, i),
            Class::SegReload => segment::reload(self, i),
            Class::VerifyWrite => segment::verw(self, i),
            Class::PushMem => stack::push_mem(self, i),
            Class::PopReg => stack::pop_reg(self, i),
            Class::PopMem => stack::pop_mem(self, i),
            Class::Pushad => stack::pushad(self),
            Class::Popad => stack::popad(self),
            Class::Leave => stack::leave(self),
            Class::Enter0 => stack::enter0(self, i),
            Class::JmpDirect => self.direct_exit(i.near_branch32()),
            Class::Jcc => {
                let at = self.a.jcc_rel32(i.condition_code() as u8 - 1);
                self.pending_exits.push((at, i.near_branch32()));
                self.direct_exit(i.next_ip32());
            }
            Class::JcxzLoop => {
                let b = self.guest_bytes(i);
                let op = b[b.len() - 2];
                // addr32 selects ECX in 64-bit mode; skip the 5-byte fallthrough jump.
                self.a.bytes(&[PREFIX_ADDR32, op, 5]);
                self.direct_exit(i.next_ip32());
                self.direct_exit(i.near_branch32());
            }
            Class::CallDirect => {
                stack::push_imm32(self, i.next_ip32());
                self.flush_esp();
                lookup::call(self, Some(i.near_branch32()), i.next_ip32(), self.call_continues);
            }
            Class::JmpIndirect => {
                self.load_scratch(i);
                lookup::indirect(self);
            }
            Class::CallIndirect => {
                self.load_scratch(i);
                stack::push_imm32(self, i.next_ip32());
                self.flush_esp();
                lookup::call(self, None, i.next_ip32(), self.call_continues);
            }
            Class::Ret => {
                // mov r13d, gs:[r12d+delta] ; lea r12d, [r12 + delta + 4 + n]
                let d = self.esp_delta;
                self.mem_op(&[], &[0x8B], SCRATCH, &GuestMem::base_disp(GUEST_ESP, d), &[]);
                let n = if i.op_count() > 0 { i.immediate16() as i32 } else { 0 };
                self.esp_delta = d.wrapping_add(4 + n);
                self.flush_esp();
                lookup::ret(self);
            }
            Class::PortIo => io::port_io(self, i),
            Class::StoreSys => system::store_sys(self, i),
            Class::SysInline => match i.mnemonic() {
                iced_x86::Mnemonic::Cli => system::cli_sti(self, false),
                iced_x86::Mnemonic::Sti => system::cli_sti(self, true),
                iced_x86::Mnemonic::Pushfd => system::pushfd(self),
                iced_x86::Mnemonic::Mov => system::read_cr2(self, i),
                _ => system::popfd(self, eip),
            },
            Class::Emulate if self.inline_invlpg(i) => {
                // The decoder ended the block here (Emulate): continue to
                // the next instruction through a chainable exit.
                io::invlpg(self, i);
                self.direct_exit(i.next_ip32());
            }
            Class::Emulate => {
                self.a.mov_mbase_imm32(VCPU, OFF_EIP, eip);
                self.jmp_abs(self.exits_to.emulate);
            }
            Class::Invalid => self.exception_exit(eip, vector::UD),
        }
    }

    /// DIV/IDIV by zero raises #DE without a host SIGFPE (which costs
    /// microseconds): the divisor is tested with JRCXZ, flag-free.
    ///
    /// ```text
    ///     mov r11, rcx ; mov/movzx ecx, <divisor> ; jrcxz zero ; jmp ok
    /// zero: mov rcx, r11 ; <#DE exit>
    /// ok:   mov rcx, r11 ; div ...
    /// ```
    /// Divisors through non-flat segments keep the SIGFPE path.
    fn divide_by_zero_check(&mut self, i: &Instruction) {
        let size = if i.op0_kind() == OpKind::Memory { i.memory_size().size() } else { i.op0_register().size() };
        if i.op0_kind() == OpKind::Memory && !self.opts.mode.seg_flat(seg_index(i.memory_segment())) {
            return;
        }
        if self.opts.mode.has(Mode::CS16) {
            return;
        }
        self.a.mov_r64_r64(R11, RCX);
        if i.op0_kind() == OpKind::Memory {
            let m = guest_mem(i, GUEST_ESP);
            let (op, prefix): (&[u8], &[u8]) = match size {
                1 => (&[0x0F, 0xB6], &[]),
                2 => (&[0x0F, 0xB7], &[]),
                _ => (&[0x8B], &[]),
            };
            self.mem_op(prefix, op, RCX, &m, &[]);
        } else {
            let r = i.op0_register();
            let src = host_gpr(r).unwrap_or(RAX);
            match size {
                1 => {
                    // movzx ecx, r8 (AH..BH are 4..7 without REX; AL..BL 0..3).
                    let code = if is_high_byte(r) { (src & 7) + 4 } else { src & 7 };
                    self.a.bytes(&[0x0F, 0xB6, 0xC8 | code]);
                }
                2 => self.a.movzx_r32_r16(RCX, src),
                _ => self.a.mov_r32_r32(RCX, src),
            }
        }
        self.a.bytes(&[JRCXZ, 2]); // jrcxz zero (over the 2-byte jmp)
        self.a.bytes(&[0xEB, 0]); // jmp ok (patched below)
        let start = self.a.len();
        self.a.mov_r64_r64(RCX, R11);
        self.exception_exit(i.ip32(), vector::DE);
        self.a.buf[start - 1] = (self.a.len() - start) as u8;
        self.a.mov_r64_r64(RCX, R11);
    }

    /// Leave for the dispatcher (unchained, at `next`) if INTR is pending.
    ///
    /// ```text
    ///     mov r11, rcx ; mov ecx, [r14+intr_pending] ; jrcxz 1f
    ///     mov rcx, r11 ; mov r13d, next ; jmp exit_indirect
    /// 1:  mov rcx, r11
    /// ```
    fn interrupt_window_check(&mut self, next: u32) {
        self.a.mov_r64_r64(R11, RCX);
        self.a.mov_r32_mbase(RCX, VCPU, crate::cpu::OFF_INTR_PENDING);
        self.a.bytes(&[JRCXZ, 0]); // jrcxz (patched below)
        let start = self.a.len();
        self.a.mov_r64_r64(RCX, R11);
        self.a.mov_r32_imm(SCRATCH, next);
        self.jmp_abs(self.exits_to.indirect);
        self.a.buf[start - 1] = (self.a.len() - start) as u8;
        self.a.mov_r64_r64(RCX, R11);
    }

    /// End the block raising exception `v` at `eip`.
    fn exception_exit(&mut self, eip: u32, v: u8) {
        self.a.mov_mbase_imm32(VCPU, OFF_EIP, eip);
        self.a.mov_mbase_imm32(VCPU, OFF_EXIT_ARG, v as u32);
        self.jmp_abs(self.exits_to.exception);
    }

    fn guest_bytes(&self, i: &Instruction) -> &'a [u8] {
        let (code, base) = match self.inline_code {
            Some((code, base)) if i.ip32().wrapping_sub(base) < code.len() as u32 => (code, base),
            _ => (self.code, self.code_base),
        };
        let s = i.ip32().wrapping_sub(base) as usize;
        code.get(s..s + i.len()).unwrap_or(&[])
    }

    /// `mov r13d, <reg or gs:[mem]>` for indirect branches.
    fn load_scratch(&mut self, i: &Instruction) {
        if i.op0_kind() == OpKind::Register {
            let src = host_gpr(i.op0_register()).unwrap_or(RAX);
            self.a.mov_r32_r32(SCRATCH, src);
        } else {
            let mut m = self.guest_mem_esp(i);
            let seg = seg_index(i.memory_segment());
            if !self.opts.mode.seg_flat(seg) {
                segment::checked_linear(self, i.ip32(), &m, seg, 4);
                m = GuestMem::base_disp(SCRATCH, 0);
            }
            self.mem_op(&[], &[0x8B], SCRATCH, &m, &[]);
        }
    }

    /// `addr32 lea r13d, [ea]`: the guest offset of `m`, wrapped at 4 GiB.
    pub(crate) fn lea_offset(&mut self, m: &GuestMem) {
        let e = encode_guest_mem(SCRATCH, m);
        self.a.byte(PREFIX_ADDR32);
        self.a.byte(0x40 | e.rex_rxb);
        self.a.byte(0x8D);
        self.a.bytes(e.as_slice());
    }

    /// Emit `gs: addr32 <prefixes> [REX] <opcode> <modrm...> <tail>`, or
    /// the same access as `[r15 + reg]` / `[r15 + disp32]` where that names
    /// the same window byte (`direct_window_operand`).
    pub(crate) fn mem_op(&mut self, prefixes: &[u8], opcode: &[u8], regf: u8, m: &GuestMem, tail: &[u8]) {
        let direct =
            if self.host_mem || self.no_direct || computes_address(opcode) { None } else { direct_window_operand(m) };
        let e = encode_guest_mem(regf, direct.as_ref().unwrap_or(m));
        if !self.host_mem && direct.is_none() {
            self.a.byte(PREFIX_GS);
            self.a.byte(PREFIX_ADDR32);
        }
        self.a.bytes(prefixes);
        if e.rex_rxb != 0 {
            self.a.byte(0x40 | e.rex_rxb);
        }
        self.a.bytes(opcode);
        self.a.bytes(e.as_slice());
        self.a.bytes(tail);
    }

    /// REX bits needed for ESP register operands when ESP is host `esp`.
    fn esp_rex(i: &Instruction, esp: u8) -> Option<u8> {
        if esp < 8 {
            return Some(0);
        }
        let oc = i.op_code();
        let mut rex = 0u8;
        for n in 0..i.op_count() {
            if i.op_kind(n) != OpKind::Register || !is_sp(i.op_register(n)) {
                continue;
            }
            use OpCodeOperandKind as K;
            match oc.op_kind(n) {
                K::r32_reg | K::r16_reg => rex |= 4,
                K::r32_rm | K::r16_rm | K::r32_or_mem | K::r16_or_mem | K::r32_opcode | K::r16_opcode => rex |= 1,
                _ => return None,
            }
        }
        Some(rex)
    }

    /// `F3 0F BC/BD` as BSF/BSR: the REP prefix (which a host with BMI1
    /// would read as TZCNT/LZCNT) becomes an override naming the segment the
    /// instruction uses anyway, and the BSF/BSR this decodes to is copied.
    fn rep_bitscan(&mut self, i: &Instruction) {
        let raw = self.guest_bytes(i);
        let mut buf = [0u8; crate::decode::MAX_INSN_LEN];
        let n = raw.len().min(buf.len());
        buf[..n].copy_from_slice(&raw[..n]);
        let same_segment = match i.memory_segment() {
            Register::ES => 0x26,
            Register::CS => 0x2E,
            Register::SS => 0x36,
            Register::FS => 0x64,
            Register::GS => 0x65,
            _ => 0x3E,
        };
        for b in buf[..n].iter_mut().take_while(|b| is_legacy_prefix(**b)) {
            if *b == 0xF3 {
                *b = same_segment;
            }
        }
        let bitness = if self.opts.mode.has(Mode::CS16) { 16 } else { 32 };
        let mut d = iced_x86::Decoder::with_ip(bitness, &buf[..n], i.ip(), iced_x86::DecoderOptions::NONE);
        let j = d.decode();
        if j.is_invalid() || !matches!(j.mnemonic(), iced_x86::Mnemonic::Bsf | iced_x86::Mnemonic::Bsr) {
            self.exception_exit(i.ip32(), crate::cpu::vector::UD);
            return;
        }
        self.ident_bytes(&j, &buf[..n], None);
    }

    /// Copy an instruction, mapping ESP to R12 and memory into the window.
    /// `opcode_override` replaces the (one-byte) opcode.
    fn ident(&mut self, i: &Instruction, opcode_override: Option<u8>) {
        let bytes = self.guest_bytes(i);
        self.ident_bytes(i, bytes, opcode_override)
    }

    /// `ident` of `bytes`, the encoding of `i`.
    fn ident_bytes(&mut self, i: &Instruction, bytes: &[u8], opcode_override: Option<u8>) {
        let mem = has_memory_operand(i);
        let uses_sp = names_register(i, is_sp) || (mem && (is_sp(i.memory_base()) || is_sp(i.memory_index())));
        let code16 = self.opts.mode.has(Mode::CS16);
        if !mem && !uses_sp && opcode_override.is_none() && !code16 {
            self.a.bytes(bytes);
            return;
        }
        if i.mnemonic() == iced_x86::Mnemonic::Lea {
            self.lea(i, bytes);
            return;
        }
        let high = names_register(i, is_high_byte);
        // AH..BH forbid a REX prefix, which `[r15 + reg]` needs.
        self.no_direct = high;
        self.ident_mem(i, bytes, mem, uses_sp, high, opcode_override);
        self.no_direct = false;
    }

    /// `ident` of an instruction that names memory, ESP, or (in 16-bit
    /// code) needs its operand size set.
    fn ident_mem(
        &mut self,
        i: &Instruction,
        bytes: &[u8],
        mem: bool,
        uses_sp: bool,
        high: bool,
        opcode_override: Option<u8>,
    ) {
        let code16 = self.opts.mode.has(Mode::CS16);
        if mem {
            let seg = seg_index(i.memory_segment());
            // 16-bit code mostly uses 16-bit addressing: always the checked
            // form, as for 16-bit addressing (0x67) in 32-bit code.
            if !self.opts.mode.seg_flat(seg) || code16 || crate::decode::has_16bit_addressing(i) {
                self.ident_segmented(i, bytes, seg, high, opcode_override);
                return;
            }
            if self.is_soft(i) && !crate::decode::has_16bit_addressing(i) {
                let f = self.info.get_or_insert_with(iced_x86::InstructionInfoFactory::new);
                if let Some((size, write)) = soft::eligible(i, f) {
                    self.ident_soft(i, bytes, size, write, high, opcode_override);
                    return;
                }
            }
        }
        let rex_needed = uses_sp; // R12 always needs a REX bit
        if rex_needed && high {
            self.ident_substituted(i, bytes, mem, opcode_override);
        } else {
            self.ident_with_esp(i, bytes, mem, GUEST_ESP, opcode_override, None);
        }
    }

    /// LEA: the effective address alone, never a segment's base or limit.
    /// With 16-bit addressing it is computed into R13D (`segment::offset16`)
    /// and moved to the destination (`mov r16, r13w` or `mov r32, r13d`);
    /// with 32-bit addressing the instruction is copied in the flat form
    /// (the GS prefix does not enter LEA's result).
    fn lea(&mut self, i: &Instruction, bytes: &[u8]) {
        if crate::decode::has_16bit_addressing(i) {
            segment::offset16(self, i);
            let dst = host_gpr(i.op0_register()).unwrap_or(RAX);
            if i.op0_register().size() == 2 {
                self.a.byte(crate::emit::PREFIX_OPSIZE);
            }
            self.a.mov_r32_r32(dst, SCRATCH);
            return;
        }
        self.ident_with_esp(i, bytes, true, GUEST_ESP, None, None);
    }

    /// A memory access through a segment that is not flat: the linear
    /// address is computed and checked into R13D, then the instruction is
    /// copied with `[r13d]` (or a borrowed legacy register when it names
    /// AH/CH/DH/BH, which forbid REX) as its operand.
    fn ident_segmented(&mut self, i: &Instruction, bytes: &[u8], seg: usize, high: bool, opcode_override: Option<u8>) {
        let eip = i.ip32();
        let m = guest_mem(i, GUEST_ESP);
        let size = i.memory_size().size().max(1) as i32;
        if self.opts.mode.seg_based(seg) && !high && !crate::decode::has_16bit_addressing(i) {
            let op = segment::based_operand(self, eip, &m, seg);
            self.ident_with_esp(i, bytes, true, GUEST_ESP, opcode_override, Some(op));
            return;
        }
        if crate::decode::has_16bit_addressing(i) && self.opts.mode.seg_flat(seg) {
            // Base 0 and a 4 GiB limit: a 16-bit offset is always inside.
            segment::offset16(self, i);
        } else if crate::decode::has_16bit_addressing(i) {
            segment::checked_linear16(self, eip, i, seg, size);
        } else {
            segment::checked_linear(self, eip, &m, seg, size);
        }
        if !high {
            self.ident_with_esp(i, bytes, true, GUEST_ESP, opcode_override, Some(GuestMem::base_disp(SCRATCH, 0)));
            return;
        }
        let Some(sub) = Self::borrowable(i) else {
            self.a.mov_mbase_imm32(VCPU, OFF_EIP, eip);
            self.jmp_abs(self.exits_to.emulate);
            return;
        };
        self.ident_borrowed(i, bytes, sub, opcode_override);
    }

    /// A legacy register the instruction does not name (it names AH..BH,
    /// so its memory operand cannot use R13), unless it names ESP too.
    fn borrowable(i: &Instruction) -> Option<u8> {
        let reg_ops = || (0..i.op_count()).filter(|&n| i.op_kind(n) == OpKind::Register).map(|n| i.op_register(n));
        if reg_ops().any(is_sp) {
            return None;
        }
        [RSI, RDI, RBP].into_iter().find(|&r| !reg_ops().any(|x| host_gpr(x) == Some(r)))
    }

    /// Copy `i` with `[sub]` as its operand, `sub` holding R13 meanwhile
    /// (the whole host address with `host_mem`, else the 32-bit offset).
    fn ident_borrowed(&mut self, i: &Instruction, bytes: &[u8], sub: u8, opcode_override: Option<u8>) {
        self.a.mov_r64_r64(R11, sub);
        if self.host_mem {
            self.a.mov_r64_r64(sub, SCRATCH);
        } else {
            self.a.mov_r32_r32(sub, SCRATCH);
        }
        if let Some(last) = self.insn_map.last_mut() {
            last.fixup = Fixup::Restore { reg: sub, from: R11 };
        }
        self.ident_with_esp(i, bytes, true, GUEST_ESP, opcode_override, Some(GuestMem::base_disp(sub, 0)));
        self.a.mov_r64_r64(sub, R11);
    }

    /// INVLPG done by a callout from translated code (CPL 0, flat operand
    /// segment, 32-bit addressing).
    fn inline_invlpg(&self, i: &Instruction) -> bool {
        let mode = self.opts.mode;
        i.mnemonic() == iced_x86::Mnemonic::Invlpg
            && mode.cpl() == 0
            && !mode.has(Mode::CS16)
            && mode.seg_flat(seg_index(i.memory_segment()))
            && !crate::decode::has_16bit_addressing(i)
    }

    /// Is `i` to be translated with soft-TLB accesses?
    fn is_soft(&self, i: &Instruction) -> bool {
        self.soft_all || self.soft.is_some_and(|s| s.contains_key(&i.ip32()))
    }

    /// The hit-counter slot of soft instruction `i` (0: uncounted).
    fn soft_counter(&self, i: &Instruction) -> u32 {
        self.soft.and_then(|s| s.get(&i.ip32()).copied()).unwrap_or(0)
    }

    /// The soft-TLB form (`soft`): the instruction is copied with the host
    /// address in R13 (or in a borrowed legacy register when it names
    /// AH/CH/DH/BH) as its operand.
    fn ident_soft(
        &mut self,
        i: &Instruction,
        bytes: &[u8],
        size: usize,
        write: bool,
        high: bool,
        opcode_override: Option<u8>,
    ) {
        let kind =
            if write { soft::KIND_WRITE } else { 0 } | if self.opts.mode.cpl() == 3 { soft::KIND_USER } else { 0 };
        let m = guest_mem(i, GUEST_ESP);
        let sub = if high { Self::borrowable(i) } else { None };
        if high && sub.is_none() {
            self.ident_with_esp(i, bytes, true, GUEST_ESP, opcode_override, None);
            return;
        }
        soft::lookup(self, i, &m, kind, size, self.soft_counter(i));
        self.host_mem = true;
        match sub {
            None => {
                self.ident_with_esp(i, bytes, true, GUEST_ESP, opcode_override, Some(GuestMem::base_disp(SCRATCH, 0)))
            }
            Some(sub) => self.ident_borrowed(i, bytes, sub, opcode_override),
        }
        self.host_mem = false;
    }

    /// `mem_override` replaces the guest memory operand (checked segmented
    /// accesses).
    fn ident_with_esp(
        &mut self,
        i: &Instruction,
        bytes: &[u8],
        mem: bool,
        esp: u8,
        opcode_override: Option<u8>,
        mem_override: Option<GuestMem>,
    ) {
        let modrm = has_modrm(i);
        let l = layout(bytes, modrm, self.opts.mode.has(Mode::CS16));
        // Fixed-size copies: this is the hot path of translation.
        let mut pbuf = [0u8; 15];
        let mut np = 0;
        for &b in &bytes[..l.prefix_end] {
            if is_kept_prefix(b) {
                pbuf[np] = b;
                np += 1;
            }
        }
        if self.opts.mode.has(Mode::CS16) {
            // 64-bit mode defaults to 32-bit operands, 16-bit code to 16-bit:
            // the operand-size prefix is set from the instruction's real size.
            let mandatory66 = i.op_code().mandatory_prefix() == iced_x86::MandatoryPrefix::P66;
            let mut kept = [0u8; 15];
            let mut nk = 0;
            if i.op_code().operand_size() == 16 {
                kept[0] = 0x66;
                nk = 1;
            }
            for &b in &pbuf[..np] {
                if b != 0x66 || mandatory66 {
                    kept[nk] = b;
                    nk += 1;
                }
            }
            pbuf = kept;
            np = nk;
        }
        let prefixes = &pbuf[..np];
        let mut obuf = [0u8; 3];
        let olen = l.opcode_end - l.prefix_end;
        obuf[..olen].copy_from_slice(&bytes[l.prefix_end..l.opcode_end]);
        if let Some(o) = opcode_override {
            obuf[olen - 1] = o;
        }
        let opcode = &mut obuf[..olen];
        let Some(mut rex) = Self::esp_rex(i, esp) else {
            // Unexpected ESP operand kind: let the VMM report it.
            self.a.mov_mbase_imm32(VCPU, OFF_EIP, i.ip32());
            self.jmp_abs(self.exits_to.emulate);
            return;
        };
        if mem && modrm {
            let m = mem_override
                .unwrap_or_else(|| if esp == GUEST_ESP { self.guest_mem_esp(i) } else { guest_mem(i, esp) });
            let modrm_byte = bytes[l.opcode_end];
            let regf = ((modrm_byte >> 3) & 7) | if rex & 4 != 0 { 8 } else { 0 };
            self.mem_op(prefixes, opcode, regf, &m, &bytes[l.modrm_end..]);
            return;
        }
        if let (true, Some(m)) = (mem, mem_override) {
            // moffs forms (A0..A3) as MOV r/m forms (8A/8B/88/89) with AL/EAX.
            let op = [0x8A, 0x8B, 0x88, 0x89][(opcode[olen - 1] & 3) as usize];
            self.mem_op(prefixes, &[op], 0, &m, &[]);
            return;
        }
        let moffs = GuestMem { base: None, index: None, scale: 1, disp: i.memory_displacement32() as i32 };
        if mem && direct_window_operand(&moffs).is_some() {
            // moffs forms (A0..A3) below 2 GiB: as MOV r/m forms relative to R15.
            let op = [0x8A, 0x8B, 0x88, 0x89][(opcode[olen - 1] & 3) as usize];
            self.mem_op(prefixes, &[op], 0, &moffs, &[]);
            return;
        }
        if mem {
            // moffs forms (A0..A3): 32-bit absolute offset under addr32.
            self.a.byte(PREFIX_GS);
            self.a.byte(PREFIX_ADDR32);
            self.a.bytes(prefixes);
            self.a.bytes(opcode);
            self.a.bytes(&bytes[l.opcode_end..]);
            return;
        }
        // Register-only: rewrite register fields naming ESP.
        self.a.bytes(prefixes);
        if esp < 8 {
            // Substituted register: patch the fields to `esp`'s number.
            rex = 0;
        }
        if rex != 0 {
            self.a.byte(0x40 | rex);
        }
        if esp < 8 && modrm {
            // Replace ESP (4) by `esp` in reg/rm fields that name it.
            let oc = i.op_code();
            let mut mb = bytes[l.opcode_end];
            for n in 0..i.op_count() {
                if i.op_kind(n) == OpKind::Register && is_sp(i.op_register(n)) {
                    use OpCodeOperandKind as K;
                    match oc.op_kind(n) {
                        K::r32_reg | K::r16_reg => mb = (mb & !0x38) | (esp << 3),
                        _ => mb = (mb & !7) | esp,
                    }
                }
            }
            self.a.bytes(opcode);
            self.a.byte(mb);
            self.a.bytes(&bytes[l.opcode_end + 1..]);
        } else if esp < 8 {
            // +r opcode form.
            let last = opcode.len() - 1;
            opcode[last] = (opcode[last] & !7) | esp;
            self.a.bytes(opcode);
            self.a.bytes(&bytes[l.opcode_end..]);
        } else {
            self.a.bytes(opcode);
            self.a.bytes(&bytes[l.opcode_end..]);
        }
    }

    /// An instruction naming both ESP and AH/CH/DH/BH cannot take a REX
    /// prefix: a free legacy register stands in for ESP around it.
    fn ident_substituted(&mut self, i: &Instruction, bytes: &[u8], mem: bool, opcode_override: Option<u8>) {
        let used = |r: u8| {
            names_register(i, |x| host_gpr(x) == Some(r))
                || (mem && (host_gpr(i.memory_base()) == Some(r) || host_gpr(i.memory_index()) == Some(r)))
        };
        let sub = [RSI, RDI, RBP].into_iter().find(|&r| !used(r)).unwrap_or(RSI);
        self.a.mov_r64_r64(SCRATCH, sub);
        self.a.mov_r32_r32(sub, GUEST_ESP);
        if let Some(last) = self.insn_map.last_mut() {
            last.fixup = Fixup::Restore { reg: sub, from: SCRATCH };
        }
        self.ident_with_esp(i, bytes, mem, sub, opcode_override, None);
        self.a.mov_r32_r32(GUEST_ESP, sub);
        self.a.mov_r64_r64(sub, SCRATCH);
    }

    /// `inc/dec r32` (0x40..0x4F) as `FF /0` / `FF /1`.
    fn inc_dec_short(&mut self, i: &Instruction) {
        let r = host_gpr(i.op0_register()).unwrap_or(RAX);
        if i.op0_register().size() == 2 {
            self.a.byte(0x66);
        }
        self.a.rex(false, 0, 0, r, false);
        let ext = if matches!(i.mnemonic(), iced_x86::Mnemonic::Inc) { 0 } else { 1 };
        self.a.byte(0xFF);
        self.a.byte(0xC0 | (ext << 3) | (r & 7));
    }
}

/// Has `i` a soft-TLB form in `mode`, that is, does `Translator::with_soft`
/// translate it otherwise? (MOVS/STOS, and IDENT instructions with one
/// memory access through a flat segment, in 32-bit code and addressing.)
/// The engine turns only these soft: for the others (PUSH, CALL, a `%gs`
/// access) the retranslation would change nothing but lose the deferred
/// ESP update.
pub fn has_soft_form(i: &Instruction, mode: Mode) -> bool {
    let flat_seg = mode.seg_flat(seg_index(i.memory_segment()));
    match crate::decode::classify(i) {
        Class::StringEs => flat_seg && mode.seg_flat(crate::cpu::SEG_ES) && string::soft_eligible(i, mode),
        Class::Ident | Class::Alias82 => {
            flat_seg
                && has_memory_operand(i)
                && !mode.has(Mode::CS16)
                && !crate::decode::has_16bit_addressing(i)
                && soft::eligible(i, &mut iced_x86::InstructionInfoFactory::new()).is_some()
        }
        _ => false,
    }
}

/// The guest EIPs, sorted, of the instructions of `block` that a side exit
/// of the block itself jumps forward to: such a branch goes to their code
/// in the block instead of leaving for another block that would translate
/// the rest of this one again (an if-then inside a superblock; blocks that
/// began at such a target held 8.5% of the instructions Linux's boot
/// translated).
/// Forward only, so no loop forms without a poll; none in a block with STI
/// or POPFD, whose interrupt-window check sits on the fall-through path.
fn internal_targets(block: &GuestBlock) -> Vec<u32> {
    let n = block.insns.len();
    let window_check = block.insns.iter().zip(&block.classes).any(|(i, &c)| {
        c == Class::SysInline && matches!(i.mnemonic(), iced_x86::Mnemonic::Sti | iced_x86::Mnemonic::Popfd)
    });
    if window_check {
        return Vec::new();
    }
    // An inlined callee is entered only through its CALL's guard (its RET
    // may assume the return address), and its branches stay within it.
    let mut targets: Vec<u32> = block.insns[..n.saturating_sub(1)]
        .iter()
        .zip(&block.classes)
        .filter(|&(i, &c)| c == Class::Jcc && i.near_branch32() > i.ip32())
        .filter(|&(i, _)| block.in_callee(i.ip32()) == block.in_callee(i.near_branch32()))
        .map(|(i, _)| i.near_branch32())
        .filter(|&t| block.insns.iter().any(|i| i.ip32() == t))
        .collect();
    targets.sort_unstable();
    targets.dedup();
    targets
}

/// Does `block` need its safepoint poll? Every loop that translated code can
/// run without leaving must pass a poll, so that a pending interrupt or exit
/// request is seen. A block that makes no call, branches only to addresses
/// above its own start and ends in RET cannot close such a loop itself:
///
/// * a loop of chained blocks has an edge to a block at or below its source
///   block's start, and that source block keeps its poll;
/// * its RET goes to a call's continuation, whose host frame was pushed by a
///   CALL in a block entered through its poll earlier; each RET consumes one
///   such frame, and a continuation can only push frames for the calls after
///   it in its block, so a run of RETs without a poll ends when the host
///   return stack does (its bottom leaves to the dispatcher), as does a RET
///   that finds another address (`ret_miss` consumes the frame too).
///
/// Leaf functions (qsort's comparison function and its `ret`-only tail) thus
/// run without the load: two of the three polls per comparison.
fn needs_poll(block: &GuestBlock) -> bool {
    let leaf_return = block.classes.last() == Some(&Class::Ret)
        && block.insns.iter().zip(&block.classes).all(|(i, &c)| match c {
            Class::JmpDirect | Class::Jcc | Class::JcxzLoop => i.near_branch32() > block.start,
            Class::CallDirect | Class::CallIndirect | Class::JmpIndirect => false,
            _ => true,
        });
    !leaf_return
}

#[cfg(test)]
mod tests;
