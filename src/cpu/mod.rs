//! Architectural state of the virtual CPU.
//!
//! `HotState` is the part translated code reads and writes through R14: the
//! general registers while the guest is out of translated code, the exit
//! protocol fields, the FPU save areas and the jump cache of the inline
//! indirect-branch lookup. Its field offsets are constants the emitter uses.
//! `Cpu` holds the rest (EFLAGS system bits, segment caches, control
//! registers), which only the VMM touches.

pub mod cpuid;
pub mod dump;
pub mod interp;
pub mod interrupt;
pub mod mode;

pub use mode::Mode;

use std::mem::offset_of;

/// Number of entries of the direct-mapped jump cache (indexed by the low 16
/// bits of the guest EIP, so the index is a flag-free `movzx`).
pub const JUMP_CACHE_ENTRIES: usize = 1 << 16;
/// Number of jump-cache tables: one per (CPL 3 or not) x (FPU trapping or
/// not), so user and kernel code (and FPU-switching kernels) keep their
/// entries side by side. Each table is tagged with the one whole mode it
/// holds, so an inline lookup never finds a block of another mode.
pub const JUMP_CACHE_TABLES: usize = 4;
/// Bytes between two tables' starts in `jc_keys` / `jc_targets`.
pub const JUMP_CACHE_TABLE_BYTES: i32 = (JUMP_CACHE_ENTRIES * 8) as i32;
/// Jump-cache key marking an empty entry: keys are stored as `-(eip + 1)`
/// (see [`jc_key`]), which is never 0, so a zeroed table is empty and a
/// new engine need not write its tables.
pub const JC_EMPTY_KEY: u64 = 0;

/// The jump-cache key of `eip`: a hit is `key + eip + 1 == 0`, computed by
/// one flag-free LEA.
pub fn jc_key(eip: u32) -> u64 {
    (eip as u64 + 1).wrapping_neg()
}

/// Entries per soft-TLB table (direct-mapped on the low 16 bits of the page
/// number, so the index is a flag-free `movzx`). A table covers 256 MiB:
/// a program sweeping a few MiB (a sort, a copy) must not miss on every
/// page it comes back to, since each miss is an exit to the engine.
pub const SOFT_TLB_ENTRIES: usize = 1 << 16;
/// Soft-TLB tables: (CPL 3 << 1 | write), so a hit needs no rights check.
pub const SOFT_TLB_KINDS: usize = 4;
/// Bytes of one soft-TLB table (entries are a tag and an addend).
pub const SOFT_TLB_TABLE_BYTES: i32 = (SOFT_TLB_ENTRIES * 16) as i32;
/// Linear pages of the 32-bit address space (`HotState::code_ok`).
pub const CODE_PAGES: usize = 1 << 20;
/// Hit counters for soft-form instructions (`HotState::soft_hits`); slot 0
/// means no counter (nothing is emitted).
pub const SOFT_COUNTERS: usize = 1 << 14;
/// Soft-TLB tag of an empty entry: tags are `-(page + 1)` (see
/// `exec::soft_tlb`), never 0, so a zeroed table is empty.
pub const SOFT_EMPTY_TAG: u64 = 0;

/// Guest register indices (x86 encoding order).
pub const EAX: usize = 0;
pub const ECX: usize = 1;
pub const EDX: usize = 2;
pub const EBX: usize = 3;
pub const ESP: usize = 4;
pub const EBP: usize = 5;
pub const ESI: usize = 6;
pub const EDI: usize = 7;

/// EFLAGS bits.
pub mod flags {
    pub const CF: u32 = 1 << 0;
    pub const FIXED1: u32 = 1 << 1;
    pub const PF: u32 = 1 << 2;
    pub const AF: u32 = 1 << 4;
    pub const ZF: u32 = 1 << 6;
    pub const SF: u32 = 1 << 7;
    pub const TF: u32 = 1 << 8;
    pub const IF: u32 = 1 << 9;
    pub const DF: u32 = 1 << 10;
    pub const OF: u32 = 1 << 11;
    pub const IOPL: u32 = 3 << 12;
    pub const NT: u32 = 1 << 14;
    pub const RF: u32 = 1 << 16;
    pub const VM: u32 = 1 << 17;
    pub const AC: u32 = 1 << 18;
    pub const ID: u32 = 1 << 21;
    /// The flags that live in host RFLAGS while translated code runs.
    pub const HOST_LIVE: u32 = CF | PF | AF | ZF | SF | OF | DF;
    /// The six arithmetic status flags.
    pub const ARITH: u32 = CF | PF | AF | ZF | SF | OF;
}

/// Why translated code returned to the dispatcher (`HotState::exit_reason`).
pub mod exit {
    /// A direct exit stub: `eip` is the target, `exit_arg` the exit id to chain.
    pub const CHAIN: u32 = 1;
    /// Indirect branch missed the jump cache: `eip` is the target.
    pub const INDIRECT: u32 = 2;
    /// The instruction at `eip` needs the VMM (emulated by `cpu::interp`).
    pub const EMULATE: u32 = 3;
    /// The instruction at `eip` raises exception `exit_arg` (e.g. #UD).
    pub const EXCEPTION: u32 = 4;
    /// A host signal hit translated code; details in the engine's fault record.
    pub const FAULT: u32 = 5;
    /// A soft-TLB miss before the instruction at `eip`: `exit_arg` is the
    /// linear address, `soft_kind` the table (`translate::soft`).
    pub const SOFT_MISS: u32 = 6;
    /// A ring-3 block's entry found its code page unconfirmed in this
    /// address space (`HotState::code_ok`): `eip` is the block's start.
    pub const PROBE_MISS: u32 = 7;
    /// An indirect CALL missed the jump cache: `eip` is the target,
    /// `exit_arg` the CALL's return address (`translate::Options::learn_calls`).
    pub const CALL_MISS: u32 = 8;
}

/// Hot vCPU state, shared with translated code.
#[repr(C, align(64))]
pub struct HotState {
    /// EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI.
    pub gpr: [u32; 8],
    pub eip: u32,
    /// Host-live flags (arithmetic flags and DF) as saved at the last exit.
    pub live_flags: u32,
    pub exit_reason: u32,
    pub exit_arg: u32,
    pub host_rsp: u64,
    pub window: u64,
    /// Top of this vCPU's host return stack (`exec::return_stack`): the
    /// trampoline runs translated code on it, below a sentinel entry.
    pub rsb_top: u64,
    /// The sentinel: the host address a return with no host call behind it
    /// lands on (the return-miss stub of the current mode's jump-cache
    /// table, which first puts the sentinel back).
    pub rsb_sentinel: u64,
    /// Nonzero once the guest has run FPU/MMX/SSE code: enter and exit then
    /// switch the x87/SSE state between host and guest.
    pub fpu_active: u32,
    /// Virtual EFLAGS.IF: `flags::IF` or 0 (a whole dword, so translated
    /// CLI/STI are single flag-free stores).
    pub vif: u32,
    /// EFLAGS bits that are neither host-live nor IF (TF, IOPL, NT, RF, AC, ID...).
    pub sys_flags: u32,
    /// A copy of CR2 for translated `mov r32, %cr2` at CPL 0 (the page-
    /// fault handler's first read); set by the dispatcher after VMM work.
    pub cr2: u32,
    /// Copies of GDTR (limit, base), IDTR (limit, base), the LDTR and TR
    /// selectors and CR0, for translated SGDT, SIDT, SLDT, STR and SMSW;
    /// set by the dispatcher after VMM work (`Cpu::sync_system_copies`).
    pub sys_copy: [u32; SYS_COPY_LEN],
    /// `flags::AC` while alignment checks apply (CPL 3, CR0.AM and
    /// EFLAGS.AC): the entry trampolines set it in the host's RFLAGS, so
    /// the host raises #AC where the guest's processor would. Else 0.
    pub ac_check: u32,
    /// Keeps `xmm` 16-byte aligned (asserted below).
    _pad_ac: [u32; 3],
    _pad: [u32; 12],
    /// Per segment register (ES..GS): base, and the lowest and highest
    /// valid offsets (expand-down segments have lo = limit + 1). Read by the
    /// checked access sequence of non-flat segments; synced by `Cpu::sync_segments`.
    pub seg_base: [u32; 6],
    pub seg_lo: [u32; 6],
    pub seg_hi: [u32; 6],
    /// The guest's selectors (ES..GS), for translated PUSH sreg; synced by
    /// the dispatcher before it enters translated code.
    pub seg_sel: [u32; 6],
    _pad2: [u32; 8],
    /// Host RIP of the last fault in translated code, and the raw 64-bit
    /// values of `RESUME_REGS` there, to resume it after a hidden fault.
    pub resume_rip: u64,
    pub resume_regs: [u64; 7],
    /// Guest XMM0-7 and MXCSR while the VMM runs (the x87/MMX state stays
    /// in the hardware: the VMM's Rust code never uses x87).
    pub xmm: [u8; 128],
    pub mxcsr: u32,
    /// The MXCSR Rust code runs with.
    pub host_mxcsr: u32,
    /// Nonzero while the interrupt controller asserts INTR: translated STI
    /// and POPFD test it to leave the block for the dispatcher to deliver.
    pub intr_pending: u32,
    /// With `-icount`: instructions translated code may still start before
    /// the dispatcher must look at the devices. Each block subtracts its
    /// instruction count at entry and leaves (through a load that faults)
    /// instead of going negative; read as an i32.
    pub icount_left: u32,
    /// Multiprocessor guests: nonzero when another vCPU (or the timer)
    /// asks this one to leave translated code, which each block's
    /// safepoint tests (`Translator::kick_check`): one store, no system
    /// call, no signal.
    pub kick: u64,
    /// Multiprocessor guests: PAUSEs translated code may still run before
    /// it leaves for the VMM, which may yield the host CPU
    /// (`Translator::pause_gate`).
    pub pause_left: u32,
    /// `jc_key(eip)` of the entries (`JC_EMPTY_KEY` when empty).
    pub jc_keys: [u64; JUMP_CACHE_ENTRIES * JUMP_CACHE_TABLES],
    /// Host entry addresses of the blocks in `jc_keys`.
    pub jc_targets: [u64; JUMP_CACHE_ENTRIES * JUMP_CACHE_TABLES],
    /// Port I/O done in place by translated code at CPL 0 (`translate::io`):
    /// the port, size | direction << 8, the value in or out, and what the
    /// callout reports back (`io_exit`: an isa-debug-exit status;
    /// `io_dirty`: interrupt state may have changed).
    pub io_port: u32,
    pub io_info: u32,
    pub io_value: u32,
    pub io_exit: u32,
    pub io_dirty: u32,
    /// `*mut PortBus` and the callout function, set by the engine.
    pub io_bus: u64,
    pub io_fn: u64,
    /// Fast reloads of ES, DS, FS and GS (`translate::segment::reload`):
    /// per segment register, `jc_key(selector)` when a reload of the loaded
    /// selector may be skipped if its descriptor is unchanged (0: always
    /// the VMM), the host address of that descriptor in the RAM alias, and
    /// minus its 8 bytes as they were when loaded. Written by the dispatcher.
    pub reload_key: [u64; 6],
    pub reload_desc: [u64; 6],
    pub reload_neg: [u64; 6],
    /// The same for VERW (`translate::segment::verw`): the key of the
    /// selector the VMM last verified at this CPL, its descriptor's host
    /// address and negated bytes, and the ZF (0 or 0x40) VERW gave.
    pub verw_key: u64,
    pub verw_desc: u64,
    pub verw_neg: u64,
    pub verw_zf: u64,
    /// The alternative load of each of ES, DS, FS and GS: a second
    /// selector whose load translated code may make in place, by swapping
    /// it with the loaded one (key, descriptor address, negated bytes and
    /// the base and offset range checked accesses use). Linux toggles FS
    /// between the user's null selector and `__KERNEL_PERCPU` on every
    /// system call. Keys are `jc_key(selector | cpl << 16)` here and in
    /// `reload_key`; written by the dispatcher, swapped by translated code.
    pub alt_key: [u64; 6],
    pub alt_desc: [u64; 6],
    pub alt_neg: [u64; 6],
    pub alt_base: [u32; 6],
    pub alt_lo: [u32; 6],
    pub alt_hi: [u32; 6],
    /// Eight zero bytes: the "descriptor" of a null selector's record (its
    /// negated bytes are 0 too, so the check always passes).
    pub null_desc: u64,
    /// The soft-TLB table of the last SOFT_MISS exit.
    pub soft_kind: u32,
    _pad4: [u32; 1],
    /// The INVLPG callout (`translate::io::invlpg`), its `*mut GuestMemory`
    /// and how many INVLPGs it completed.
    pub invlpg_fn: u64,
    pub mem_ptr: u64,
    pub invlpg_done: u64,
    /// The soft-form string callout (`translate::string::soft`): its
    /// function, what to do (`translate::string::SOFT_*` bits, the size,
    /// the hit-counter slot) and guest EAX, ECX, ESI, EDI in and out.
    pub str_fn: u64,
    pub str_info: u32,
    pub str_regs: [u32; 4],
    _pad5: [u32; 1],
    /// Executions of each counted soft-form instruction since the engine
    /// last reviewed it (`exec::soft_tlb`): an instruction that runs far
    /// more often than it misses goes back to the shadow window.
    pub soft_hits: [u32; SOFT_COUNTERS],
    /// Per linear page: 1 while the code TLB holds the page for ring 3, i.e.
    /// the current address space maps it to the physical page its blocks
    /// were translated from (`exec::code_tlb`). A ring-3 block reached by a
    /// chain from another page or by the jump cache tests its page's byte
    /// first (`translate::Options::probe`), so chains and jump-cache entries
    /// survive an address space that does not map the page (yet).
    pub code_ok: [u8; CODE_PAGES],
    /// Soft TLB for instructions translated with checked accesses
    /// (`translate::soft`): per kind and slot, minus the page number plus
    /// one (`SOFT_EMPTY_TAG` when empty) and the host address of the page's
    /// RAM minus its linear address.
    pub soft_tlb: [[u64; 2]; SOFT_TLB_ENTRIES * SOFT_TLB_KINDS],
}

pub const OFF_GPR: i32 = offset_of!(HotState, gpr) as i32;
pub const OFF_EIP: i32 = offset_of!(HotState, eip) as i32;
pub const OFF_SOFT_HITS: i32 = offset_of!(HotState, soft_hits) as i32;
pub const OFF_CODE_OK: i32 = offset_of!(HotState, code_ok) as i32;
pub const OFF_LIVE_FLAGS: i32 = offset_of!(HotState, live_flags) as i32;
pub const OFF_AC_CHECK: i32 = offset_of!(HotState, ac_check) as i32;
pub const OFF_EXIT_REASON: i32 = offset_of!(HotState, exit_reason) as i32;
pub const OFF_EXIT_ARG: i32 = offset_of!(HotState, exit_arg) as i32;
pub const OFF_HOST_RSP: i32 = offset_of!(HotState, host_rsp) as i32;
pub const OFF_RSB_TOP: i32 = offset_of!(HotState, rsb_top) as i32;
pub const OFF_RSB_SENTINEL: i32 = offset_of!(HotState, rsb_sentinel) as i32;
pub const OFF_WINDOW: i32 = offset_of!(HotState, window) as i32;
pub const OFF_FPU_ACTIVE: i32 = offset_of!(HotState, fpu_active) as i32;
pub const OFF_SEG_BASE: i32 = offset_of!(HotState, seg_base) as i32;
pub const OFF_SEG_LO: i32 = offset_of!(HotState, seg_lo) as i32;
pub const OFF_SEG_HI: i32 = offset_of!(HotState, seg_hi) as i32;
pub const OFF_SEG_SEL: i32 = offset_of!(HotState, seg_sel) as i32;
pub const OFF_RELOAD_KEY: i32 = offset_of!(HotState, reload_key) as i32;
pub const OFF_RELOAD_DESC: i32 = offset_of!(HotState, reload_desc) as i32;
pub const OFF_RELOAD_NEG: i32 = offset_of!(HotState, reload_neg) as i32;
pub const OFF_ALT_KEY: i32 = offset_of!(HotState, alt_key) as i32;
pub const OFF_ALT_DESC: i32 = offset_of!(HotState, alt_desc) as i32;
pub const OFF_ALT_NEG: i32 = offset_of!(HotState, alt_neg) as i32;
pub const OFF_ALT_BASE: i32 = offset_of!(HotState, alt_base) as i32;
pub const OFF_ALT_LO: i32 = offset_of!(HotState, alt_lo) as i32;
pub const OFF_ALT_HI: i32 = offset_of!(HotState, alt_hi) as i32;
pub const OFF_VERW_KEY: i32 = offset_of!(HotState, verw_key) as i32;
pub const OFF_VERW_DESC: i32 = offset_of!(HotState, verw_desc) as i32;
pub const OFF_VERW_NEG: i32 = offset_of!(HotState, verw_neg) as i32;
pub const OFF_VERW_ZF: i32 = offset_of!(HotState, verw_zf) as i32;
pub const OFF_RESUME_RIP: i32 = offset_of!(HotState, resume_rip) as i32;
pub const OFF_RESUME_REGS: i32 = offset_of!(HotState, resume_regs) as i32;
/// Host registers that can hold something other than the zero-extended
/// guest value at a fault: borrowed registers and string-instruction host
/// pointers (RBP, RSI, RDI), the scratch registers (R10, R11, R13) and
/// R12, which lags the guest's ESP by the deferred stack updates
/// (`InsnMapEntry::esp_delta`).
pub const RESUME_REGS: [u8; 7] = [5, 6, 7, 10, 11, 12, 13];
pub const OFF_IO_PORT: i32 = offset_of!(HotState, io_port) as i32;
pub const OFF_IO_INFO: i32 = offset_of!(HotState, io_info) as i32;
pub const OFF_IO_VALUE: i32 = offset_of!(HotState, io_value) as i32;
pub const OFF_IO_FN: i32 = offset_of!(HotState, io_fn) as i32;
pub const OFF_VIF: i32 = offset_of!(HotState, vif) as i32;
pub const OFF_CR2: i32 = offset_of!(HotState, cr2) as i32;
/// `HotState::sys_copy` and the index of each of its fields.
pub const OFF_SYS_COPY: i32 = offset_of!(HotState, sys_copy) as i32;
pub const SYS_COPY_LEN: usize = 7;
pub mod sys_copy {
    pub const GDT_LIMIT: usize = 0;
    pub const GDT_BASE: usize = 1;
    pub const IDT_LIMIT: usize = 2;
    pub const IDT_BASE: usize = 3;
    pub const LDTR: usize = 4;
    pub const TR: usize = 5;
    pub const CR0: usize = 6;
}
pub const OFF_SYS_FLAGS: i32 = offset_of!(HotState, sys_flags) as i32;
pub const OFF_XMM: i32 = offset_of!(HotState, xmm) as i32;
pub const OFF_MXCSR: i32 = offset_of!(HotState, mxcsr) as i32;
pub const OFF_HOST_MXCSR: i32 = offset_of!(HotState, host_mxcsr) as i32;
pub const OFF_INVLPG_FN: i32 = offset_of!(HotState, invlpg_fn) as i32;
pub const OFF_STR_FN: i32 = offset_of!(HotState, str_fn) as i32;
pub const OFF_STR_INFO: i32 = offset_of!(HotState, str_info) as i32;
pub const OFF_STR_REGS: i32 = offset_of!(HotState, str_regs) as i32;
pub const OFF_SOFT_KIND: i32 = offset_of!(HotState, soft_kind) as i32;
pub const OFF_SOFT_TLB: i32 = offset_of!(HotState, soft_tlb) as i32;
pub const OFF_INTR_PENDING: i32 = offset_of!(HotState, intr_pending) as i32;
pub const OFF_ICOUNT_LEFT: i32 = offset_of!(HotState, icount_left) as i32;
pub const OFF_KICK: i32 = offset_of!(HotState, kick) as i32;
pub const OFF_PAUSE_LEFT: i32 = offset_of!(HotState, pause_left) as i32;
pub const OFF_JC_KEYS: i32 = offset_of!(HotState, jc_keys) as i32;
pub const OFF_JC_TARGETS: i32 = offset_of!(HotState, jc_targets) as i32;

const _: () = assert!(OFF_XMM % 16 == 0);
/// MXCSR after reset: all exceptions masked, round to nearest.
pub const MXCSR_RESET: u32 = 0x1F80;

impl HotState {
    /// A zeroed state in its own anonymous mapping (it is several MiB:
    /// never on the stack). The kernel gives zero pages lazily, so the
    /// jump-cache and soft-TLB tables (empty when zero: JC_EMPTY_KEY and
    /// SOFT_EMPTY_TAG are 0) cost nothing until used. A heap allocation
    /// would be memset by calloc once glibc's dynamic mmap threshold has
    /// grown past it, for every engine a test creates.
    pub fn new_boxed() -> HotBox {
        let size = std::mem::size_of::<HotState>();
        // SAFETY: a fresh private anonymous mapping; checked for failure.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        let layout = std::alloc::Layout::new::<HotState>();
        let Some(ptr) = std::ptr::NonNull::new(p.cast::<HotState>()).filter(|_| p != libc::MAP_FAILED) else {
            std::alloc::handle_alloc_error(layout);
        };
        // Page-aligned, so aligned for HotState (64 bytes).
        let mut b = HotBox(ptr);
        b.mxcsr = MXCSR_RESET;
        b.host_mxcsr = MXCSR_RESET;
        b
    }
}

/// Owner of a [`HotState`] in its own mapping (see [`HotState::new_boxed`]).
pub struct HotBox(std::ptr::NonNull<HotState>);

impl std::ops::Deref for HotBox {
    type Target = HotState;
    fn deref(&self) -> &HotState {
        // SAFETY: the mapping lives as long as the HotBox, holds zero-valid
        // plain data, and borrows follow the HotBox's own borrows.
        unsafe { self.0.as_ref() }
    }
}

impl std::ops::DerefMut for HotBox {
    fn deref_mut(&mut self) -> &mut HotState {
        // SAFETY: as in deref; `&mut self` makes the borrow unique.
        unsafe { self.0.as_mut() }
    }
}

impl Drop for HotBox {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in new_boxed, used by no one
        // after the owner is gone.
        unsafe {
            libc::munmap(self.0.as_ptr().cast(), std::mem::size_of::<HotState>());
        }
    }
}

// SAFETY: HotBox owns its mapping exclusively, like a Box.
unsafe impl Send for HotBox {}

/// Guest exception vectors.
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const MF: u8 = 16;
    pub const AC: u8 = 17;
    pub const XM: u8 = 19;

    pub fn name(v: u8) -> &'static str {
        match v {
            DE => "#DE divide error",
            DB => "#DB debug",
            2 => "NMI",
            BP => "#BP breakpoint",
            OF => "#OF overflow",
            BR => "#BR bound range exceeded",
            UD => "#UD invalid opcode",
            NM => "#NM device not available",
            DF => "#DF double fault",
            TS => "#TS invalid TSS",
            NP => "#NP segment not present",
            SS => "#SS stack fault",
            GP => "#GP general protection",
            PF => "#PF page fault",
            MF => "#MF x87 floating-point error",
            AC => "#AC alignment check",
            XM => "#XM SIMD floating-point error",
            _ => "software interrupt",
        }
    }
}

/// A guest exception raised at a precise instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    pub error_code: Option<u32>,
    /// Not an exception: the guest entered a mode btvisor does not
    /// implement (named here); the run ends with a clear error.
    pub unsupported: Option<&'static str>,
}

impl Exception {
    pub fn new(vector: u8) -> Self {
        Exception { vector, error_code: None, unsupported: None }
    }

    pub fn with_code(vector: u8, code: u32) -> Self {
        Exception { vector, error_code: Some(code), unsupported: None }
    }

    /// The guest entered `feature`, which btvisor does not implement.
    pub fn unsupported(feature: &'static str) -> Self {
        Exception { vector: vector::UD, error_code: None, unsupported: Some(feature) }
    }
}

/// What `Exception::unsupported` names for virtual-8086 mode.
pub const V86_MODE: &str = "virtual-8086 mode (EFLAGS.VM)";

/// Hidden part of a segment register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub selector: u16,
    pub base: u32,
    pub limit: u32,
    /// Descriptor bits 40..55 (type, S, DPL, P, AVL, L, D/B, G) as in the
    /// descriptor's second dword >> 8.
    pub attr: u16,
}

impl Segment {
    /// Flat 4 GiB segment with the given selector and type/attribute bits.
    pub fn flat(selector: u16, attr: u16) -> Self {
        Segment { selector, base: 0, limit: 0xFFFF_FFFF, attr }
    }

    pub fn is_flat(&self) -> bool {
        self.base == 0 && self.limit == 0xFFFF_FFFF
    }

    /// An expand-down data segment (type 01x1): valid offsets lie above
    /// the limit.
    pub fn is_expand_down(&self) -> bool {
        self.attr & 0x1C == 0x14
    }

    /// Build the hidden cache from a raw 8-byte descriptor.
    pub fn from_descriptor(selector: u16, d: u64) -> Self {
        let base = ((d >> 16) & 0xFF_FFFF) as u32 | (((d >> 56) & 0xFF) as u32) << 24;
        let mut limit = (d & 0xFFFF) as u32 | (((d >> 48) & 0xF) as u32) << 16;
        let attr = ((d >> 40) & 0xF0FF) as u16;
        if attr & 0x8000 != 0 {
            limit = (limit << 12) | 0xFFF;
        }
        Segment { selector, base, limit, attr }
    }
}

/// Segment register indices (x86 encoding order).
pub const SEG_ES: usize = 0;
pub const SEG_CS: usize = 1;
pub const SEG_SS: usize = 2;
pub const SEG_DS: usize = 3;
pub const SEG_FS: usize = 4;
pub const SEG_GS: usize = 5;

/// Code segment attributes of the Multiboot flat CS: present, DPL 0,
/// execute/read, accessed, 32-bit, 4 KiB granular.
pub const FLAT_CODE_ATTR: u16 = 0xC09B;
/// Data segment attributes: present, DPL 0, read/write, accessed, 32-bit, 4 KiB granular.
pub const FLAT_DATA_ATTR: u16 = 0xC093;

/// Descriptor-table register (GDTR/IDTR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableReg {
    pub base: u32,
    pub limit: u16,
}

/// See `Cpu::snapshot`.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    gpr: [u32; 8],
    eflags: u32,
    seg: [Segment; 6],
    cpl: u8,
    cr: [u32; 5],
    gdtr: TableReg,
    idtr: TableReg,
    ldtr: Segment,
    tr: Segment,
}

/// The vCPU: hot state plus VMM-only architectural state.
pub struct Cpu {
    pub hot: HotBox,
    pub seg: [Segment; 6],
    pub gdtr: TableReg,
    pub idtr: TableReg,
    pub ldtr: Segment,
    pub tr: Segment,
    pub cr: [u32; 5],
    pub dr: [u32; 8],
    pub cpl: u8,
    /// The guest has executed LIDT (before that, an exception is reported
    /// as unhandled instead of vectoring through the reset IVT).
    pub idt_loaded: bool,
    /// MSR values we keep (TSC offset handled by RDTSC passthrough).
    pub msr_sysenter: [u32; 3],
    /// IA32_MISC_ENABLE.
    pub msr_misc_enable: u64,
    /// The selector of the last VERW the interpreter ran (the engine takes
    /// it to let translated code repeat the result; `exec::seg_reload`).
    pub last_verw: Option<u16>,
    /// With `-icount`, the TSC the guest reads: the virtual clock at 1 GHz
    /// (deterministic); otherwise the host's TSC.
    pub tsc_clock: Option<crate::devices::clock::VirtualClock>,
    /// The local APIC, on a machine that has one (`-M pc`): CPUID shows it
    /// and the APIC base MSR is its.
    pub apic: Option<std::sync::Arc<std::sync::Mutex<crate::devices::lapic::LocalApic>>>,
}

impl Default for Cpu {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpu {
    /// State at Multiboot handoff: flat 32-bit protected mode, CPL 0,
    /// paging and interrupts off.
    pub fn new() -> Self {
        let mut seg = [Segment::flat(0x18, FLAT_DATA_ATTR); 6];
        seg[SEG_CS] = Segment::flat(0x10, FLAT_CODE_ATTR);
        Cpu {
            hot: HotState::new_boxed(),
            seg,
            gdtr: TableReg::default(),
            idtr: TableReg { base: 0, limit: 0x3FF },
            ldtr: Segment::default(),
            tr: Segment { attr: 0x8B, limit: 0xFFFF, ..Segment::default() },
            cr: [0x11, 0, 0, 0, 0], // CR0: PE | ET
            dr: [0, 0, 0, 0, 0xFFFF_0FF0, 0x400, 0xFFFF_0FF0, 0x400],
            cpl: 0,
            idt_loaded: false,
            msr_sysenter: [0; 3],
            msr_misc_enable: interp::MISC_ENABLE_RESET,
            last_verw: None,
            tsc_clock: None,
            apic: None,
        }
    }

    /// The state INIT leaves (SDM Vol. 3A, Table 9-1), in which an
    /// application processor waits for STARTUP: real mode, CS F000 with base
    /// FFFF0000, IP FFF0, caches disabled, EDX the processor signature.
    /// The local APIC, the MSRs and the x87 state are the caller's.
    pub fn init_reset(&mut self) {
        /// CR0 after INIT: CD, NW and ET.
        const CR0_INIT: u32 = 0x6000_0010;
        /// Real-mode code and data segments (16-bit, present, accessed).
        const REAL_CODE_ATTR: u16 = 0x9B;
        const REAL_DATA_ATTR: u16 = 0x93;
        let real = |selector: u16, attr: u16| Segment { selector, base: (selector as u32) << 4, limit: 0xFFFF, attr };
        self.hot.gpr = [0; 8];
        self.hot.gpr[EDX] = crate::cpu::cpuid::cpuid(1, 0, false)[0];
        self.set_eflags(flags::FIXED1);
        self.hot.eip = 0xFFF0;
        self.seg = [real(0, REAL_DATA_ATTR); 6];
        self.seg[SEG_CS] = Segment { base: 0xFFFF_0000, ..real(0xF000, REAL_CODE_ATTR) };
        self.gdtr = TableReg { base: 0, limit: 0xFFFF };
        self.idtr = TableReg { base: 0, limit: 0xFFFF };
        self.ldtr = Segment { attr: 0x82, limit: 0xFFFF, ..Segment::default() };
        self.tr = Segment { attr: 0x8B, limit: 0xFFFF, ..Segment::default() };
        self.cr = [CR0_INIT, 0, 0, 0, 0];
        self.dr = [0, 0, 0, 0, 0xFFFF_0FF0, 0x400, 0xFFFF_0FF0, 0x400];
        self.cpl = 0;
        // Real mode delivers events through the vector table at IDTR.
        self.idt_loaded = true;
        self.msr_sysenter = [0; 3];
    }

    /// STARTUP with `vector`: run real-mode code at `vector << 12` (CS =
    /// `vector << 8`, IP = 0).
    pub fn start_up(&mut self, vector: u8) {
        let cs = &mut self.seg[SEG_CS];
        cs.selector = (vector as u16) << 8;
        cs.base = (vector as u32) << 12;
        self.hot.eip = 0;
    }

    /// The architectural state an instruction executed by the VMM may change
    /// (to undo it when one of its memory accesses page-faults).
    pub fn snapshot(&self) -> CpuSnapshot {
        CpuSnapshot {
            gpr: self.hot.gpr,
            eflags: self.eflags(),
            seg: self.seg,
            cpl: self.cpl,
            cr: self.cr,
            gdtr: self.gdtr,
            idtr: self.idtr,
            ldtr: self.ldtr,
            tr: self.tr,
        }
    }

    pub fn restore(&mut self, s: &CpuSnapshot) {
        self.hot.gpr = s.gpr;
        self.set_eflags(s.eflags);
        self.seg = s.seg;
        self.cpl = s.cpl;
        // CR2 keeps the faulting address the caller just stored.
        let cr2 = self.cr[2];
        self.cr = s.cr;
        self.cr[2] = cr2;
        self.gdtr = s.gdtr;
        self.idtr = s.idtr;
        self.ldtr = s.ldtr;
        self.tr = s.tr;
    }

    /// The control registers paging depends on.
    /// Only the bits translation depends on: a change of another bit
    /// (CR0.TS on every lazy FPU switch, CR4.OSFXSR...) must not look like
    /// a paging change, which would flush every shadow.
    pub fn paging_regs(&self) -> crate::memory::mmu::PagingRegs {
        use crate::memory::mmu::{CR0_PG, CR0_WP, CR4_PGE, CR4_PSE};
        /// CR0.PE
        const CR0_PE: u32 = 1;
        crate::memory::mmu::PagingRegs {
            cr0: self.cr[0] & (CR0_PG | CR0_WP | CR0_PE),
            cr3: self.cr[3],
            cr4: self.cr[4] & (CR4_PSE | CR4_PGE),
        }
    }

    /// Copy segment bases and valid offset ranges into `HotState` for the
    /// checked accesses of translated code.
    /// Copy the selectors to `HotState::seg_sel` (PUSH sreg reads them).
    pub fn sync_selectors(&mut self) {
        for k in 0..6 {
            self.hot.seg_sel[k] = u32::from(self.seg[k].selector);
        }
        self.sync_system_copies();
    }

    /// Refresh the copies translated SGDT/SIDT/SLDT/STR/SMSW store.
    pub fn sync_system_copies(&mut self) {
        use sys_copy::*;
        let c = &mut self.hot.sys_copy;
        c[GDT_LIMIT] = u32::from(self.gdtr.limit);
        c[GDT_BASE] = self.gdtr.base;
        c[IDT_LIMIT] = u32::from(self.idtr.limit);
        c[IDT_BASE] = self.idtr.base;
        c[LDTR] = u32::from(self.ldtr.selector);
        c[TR] = u32::from(self.tr.selector);
        c[CR0] = self.cr[0];
    }

    pub fn sync_segments(&mut self) {
        for k in 0..6 {
            let (base, lo, hi) = self.checked_range(k, &self.seg[k]);
            self.hot.seg_base[k] = base;
            self.hot.seg_lo[k] = lo;
            self.hot.seg_hi[k] = hi;
        }
    }

    /// What checked accesses through segment register `k` holding `s` use:
    /// the base and the valid offsets `lo..=hi`.
    pub fn checked_range(&self, k: usize, s: &Segment) -> (u32, u32, u32) {
        let (lo, hi) = if self.seg_null(k, s) {
            (1, 0) // null selector: every access faults
        } else if s.is_expand_down() {
            // Expand-down data: offsets above the limit, up to 64 KiB or 4 GiB.
            let top = if s.attr & (1 << 14) != 0 { u32::MAX } else { 0xFFFF };
            (s.limit.wrapping_add(1), top)
        } else {
            (0, s.limit)
        };
        (s.base, lo, hi)
    }

    pub fn eflags(&self) -> u32 {
        self.hot.sys_flags | self.hot.vif | (self.hot.live_flags & flags::HOST_LIVE) | flags::FIXED1
    }

    pub fn set_eflags(&mut self, v: u32) {
        self.hot.live_flags = v & flags::HOST_LIVE;
        self.hot.vif = v & flags::IF;
        self.hot.sys_flags = v & !(flags::HOST_LIVE | flags::IF | flags::FIXED1);
    }

    pub fn reg(&self, r: usize) -> u32 {
        self.hot.gpr[r]
    }

    pub fn set_reg(&mut self, r: usize, v: u32) {
        self.hot.gpr[r] = v;
    }

    pub fn eip(&self) -> u32 {
        self.hot.eip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_decoding() {
        // Flat 4 GiB code: base 0, limit 0xFFFFF, G=1, D=1, P=1, DPL0, type 0xA.
        let d = 0x00CF_9A00_0000_FFFFu64;
        let s = Segment::from_descriptor(0x08, d);
        assert_eq!(s.base, 0);
        assert_eq!(s.limit, 0xFFFF_FFFF);
        assert_eq!(s.attr, 0xC09A);
        assert!(s.is_flat());
        let d = 0x1240_9234_5678_0010u64; // base 0x12345678, limit 0x10 bytes
        let s = Segment::from_descriptor(0x10, d);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0x10);
    }

    #[test]
    fn eflags_split() {
        let mut c = Cpu::new();
        c.set_eflags(0x0000_0ED7);
        assert_eq!(c.eflags(), 0x0000_0ED7);
        assert_eq!(c.hot.live_flags, 0xCD5);
        assert_eq!(c.hot.vif, flags::IF);
    }
}
