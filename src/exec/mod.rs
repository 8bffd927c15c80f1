//! The execution engine: the dispatcher loop that looks blocks up,
//! translates misses, chains direct exits, enters translated code and
//! handles whatever brought it back (see ARCHITECTURE.md, "Dispatcher").

mod block;
mod bounce;
mod code_pages;
mod code_tlb;
mod debug;
mod faults;
mod fpu;
mod inline_calls;
mod interrupts;
mod return_stack;
mod seg_reload;
pub mod signals;
pub mod smp;
mod soft_tlb;
pub mod stats;
pub mod trampoline;
mod vmm_insn;

use std::collections::HashSet;
use std::io::Write;
use std::time::Instant;

use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter, Instruction};
use thiserror::Error;

use crate::cache::{BlockId, CacheError, CodeCache, jc_insert, page_of};
use crate::cpu::interp::{self, Env, Flow};
use crate::cpu::interrupt::{EventKind, is_contributory};
use crate::cpu::{Cpu, Exception, HotState, JUMP_CACHE_ENTRIES, Mode, SEG_CS, exit, flags, vector};
use crate::decode::{MAX_BLOCK_INSNS, MAX_PAST_CALLS, MAX_SIDE_EXITS, decode_block, decode_superblock};
use crate::devices::PortBus;
use crate::devices::chipset::Chipset;
use crate::memory::{GuestMemory, PAGE_SIZE, ShadowFault, WINDOW_SIZE};
use crate::translate::{Options, Translator};
use signals::{FaultRecord, SignalCtx};
use stats::Stats;
use trampoline::Trampolines;

use block::Fetch;
pub use block::warm_up_decoder;
pub use debug::{DebugStop, WatchKind, Watchpoint};
pub use fpu::fxsave;
use vmm_insn::{invlpg_callout, io_callout};

/// DR7 L0-L3/G0-G3 enable bits.
const DR7_ENABLE_MASK: u32 = 0xFF;
/// DR6.BS: the #DB was a single-step trap.
const DR6_BS: u32 = 1 << 14;

/// Slots of the direct-mapped decoded-instruction cache.
const EMU_CACHE_SLOTS: usize = 256;

/// Interval at which the dispatcher regains control from chained code.
pub const POLL_INTERVAL_NS: u64 = 10_000_000;

#[derive(Debug, Error)]
pub enum ExecError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("could not set the GS base of the guest window: {0}")]
    GsBase(std::io::Error),
    #[error("code cache too small for the trampolines")]
    NoRoom,
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error("several CPUs need the local APICs of -M pc")]
    SmpWithoutApics,
}

/// Trace classes (QEMU's `-d` names).
#[derive(Debug, Clone, Copy, Default)]
pub struct Trace {
    pub in_asm: bool,
    pub out_asm: bool,
    pub exec: bool,
    pub int: bool,
    /// The CPU state before each block the dispatcher enters.
    pub cpu: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    pub cache_size: usize,
    pub trace: Trace,
    /// Chain direct exits and look indirect targets up inline.
    pub chaining: bool,
    /// Deterministic time: the clock advances with the instructions blocks
    /// charge at entry; blocks leave for the dispatcher at device deadlines
    /// (`Translator::icount_gate`).
    pub icount: bool,
    /// Translate every eligible memory access in the soft form (testing).
    pub soft_mmu: bool,
    /// Name each translated block in /tmp/perf-PID.map (host profiling).
    pub perfmap: bool,
    /// Inline leaf callees at the indirect CALLs that reach them
    /// (`inline_calls`; `-d noinline` turns it off).
    pub inline_calls: bool,
    /// Make the continuations of the CALLs a block goes past entries of
    /// their own (`translate::Options::continuation_entries`; `-d nocont`
    /// turns it off).
    pub continuation_entries: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_size: crate::cache::DEFAULT_CACHE_SIZE,
            trace: Trace::default(),
            chaining: true,
            icount: false,
            soft_mmu: false,
            perfmap: false,
            inline_calls: true,
            continuation_entries: true,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest wrote to isa-debug-exit: process status.
    DebugExit(i32),
    /// HLT with interrupts disabled (or with no interrupt source to wake it).
    Halted { eip: u32, interrupts_enabled: bool },
    /// A guest exception before the guest loaded an IDT.
    Exception { vector: u8, error_code: Option<u32>, eip: u32 },
    /// A fault while delivering a double fault: the CPU would shut down.
    TripleFault { eip: u32 },
    /// A fault the VMM could not attribute to the guest.
    InternalError(String),
    /// The guest entered a mode btvisor does not implement (named).
    Unsupported(&'static str),
    /// Stopped for the debugger (`debug`); `run` again to go on.
    DebugStop(DebugStop),
    /// Another vCPU ended the run (multiprocessor machines).
    Stopped,
}

/// A true page fault raised by translated code.
#[derive(Debug, Clone, Copy)]
struct LastFault {
    /// Shadow window (1 = user) or, for a soft access, the soft-TLB kind.
    win: u8,
    lin: u32,
    write: bool,
    eip: u32,
    soft: bool,
}

/// A virtual machine's CPU, memory, devices and code cache.
pub struct Engine {
    pub cpu: Cpu,
    pub mem: GuestMemory,
    pub io: PortBus,
    pub cache: CodeCache,
    pub stats: Stats,
    tramp: Trampolines,
    opts: EngineOptions,
    sig: Box<SignalCtx>,
    /// Hole pages mapped read-only with all-ones bytes.
    hole_pages: HashSet<u32>,
    /// (user, linear page) -> physical page of code, with paging on.
    code_tlb: code_tlb::CodeTlb,
    /// Ring-3 code pages that left the code TLB at a CR3 load but kept
    /// their blocks' chains (`code_pages::suspend`) -> the physical page
    /// those blocks were translated from.
    suspended: crate::fastmap::FastMap<u32, u32>,
    /// The last exit was a ring-3 block's failed code-page probe: the
    /// dispatcher must walk the page, not take the jump cache's word.
    probe_missed: bool,
    /// The buffer of the last paged code fetch, reused (`fetch_code`).
    fetch_buf: Vec<u8>,
    /// Decoded VMM-executed instructions by (linear address, mode); cleared
    /// whenever code or its mapping may have changed.
    emu_cache: crate::fastmap::FastMap<(u32, u16), Instruction>,
    /// A direct-mapped front for `emu_cache` (cleared with it).
    emu_slots: Vec<Option<(u32, u16, Instruction)>>,
    /// The mode of the block last entered (what the exit's instruction ran in).
    mode: Mode,
    /// PIC/PIT/RTC/UART interrupt sources, if the machine has them.
    pub chipset: Option<Chipset>,
    /// Restores the host terminal when the machine goes away.
    pub raw_mode: Option<crate::devices::chipset::RawModeGuard>,
    /// Virtual time at which the chipset must be looked at again.
    next_irq_check: u64,
    /// A port write may have changed interrupt state: look at the chipset now.
    irq_dirty: bool,
    /// INTR was asserted at the last look (deliver once IF is set).
    intr_line: bool,
    /// The interval timer fired (a device deadline may have passed).
    time_due: bool,
    /// Timer signals seen (`interrupts::SOFT_REVIEW_FIRES`).
    timer_fires: u32,
    /// The per-thread timer that brings the dispatcher back from chained
    /// code: periodically, and at the next device deadline.
    timer: Option<signals::IntervalTimer>,
    /// Virtual time of the timer's next expiry as last armed.
    timer_expiry: u64,
    /// The last virtual time read for the chipset.
    last_now: u64,
    /// Jump-cache slots filled since the last clear (so a TLB flush clears
    /// those, not all 2 MiB of tables).
    jc_used: Vec<u32>,
    jc_marked: Vec<bool>,
    /// The mode (`Mode.0`) whose blocks each jump-cache table holds.
    jc_tags: [u16; crate::cpu::JUMP_CACHE_TABLES],
    /// Segment loads translated code may skip in place.
    seg_reloads: seg_reload::SegReloads,
    /// The last true page fault from translated code: mapped eagerly when
    /// the guest's handler returns to the faulting instruction.
    last_pf: Option<LastFault>,
    /// Instructions with soft-TLB accesses and the soft TLB's bookkeeping.
    soft: soft_tlb::SoftTlb,
    /// An instruction is running against bounce pages (`bounce`).
    bouncing: bool,
    /// Instructions the VMM has executed (`emulate`) so far.
    emulated: u64,
    /// EIPs of MOV/string instructions that accessed device memory: they
    /// are translated as exits to the VMM (`Engine::device_access`), which
    /// costs a fraction of the host fault each access would take.
    device_insns: crate::fastmap::FastMap<u32, ()>,
    /// Indirect CALL sites learnt (`inline_calls`): the linear address of
    /// the return address -> the target to inline there, or `NOT_INLINED`.
    inline_hints: crate::fastmap::FastMap<u32, u32>,
    /// Data breakpoints as programmed (DR0-3, DR7) and the pages watched.
    watch_regs: [u32; 5],
    watch_pages: Vec<(u32, bool)>,
    log: Option<Box<dyn Write + Send>>,
    /// /tmp/perf-PID.map, when `EngineOptions::perfmap` asks for it.
    perfmap: Option<std::io::BufWriter<std::fs::File>>,
    /// What an attached debugger asked for (`debug`).
    debug: Option<Box<debug::DebugState>>,
    /// The FPU of the running thread holds the guest's x87 state.
    fpu_ready: bool,
    /// Events logged by `-d int` (QEMU numbers its lines).
    int_log_count: u64,
    /// `-icount`: the budget last stored in `HotState::icount_left` (what
    /// translated code has charged since is the difference).
    icount_granted: u32,
    /// An NMI awaits delivery; NMIs are blocked (from one's delivery to
    /// the next IRET).
    nmi_pending: bool,
    nmi_blocked: bool,
    /// This engine is one vCPU of a multiprocessor machine (`smp`).
    vcpu: Option<Box<smp::VcpuCtx>>,
    /// The host return stack translated code runs on (owned here: unmapped
    /// with the engine).
    _return_stack: return_stack::ReturnStack,
}

// SAFETY: an engine is one vCPU, run by one thread at a time. Its raw
// pointers (SignalCtx's, the interval timer's ID) refer to the engine's own
// parts or to per-thread resources that `run` sets up on the thread that
// runs it and releases before it returns; none is shared with another thread.
unsafe impl Send for Engine {}

type EnterFn = unsafe extern "sysv64" fn(*mut HotState, usize);

impl Engine {
    pub fn new(mem: GuestMemory, io: PortBus, opts: EngineOptions) -> Result<Self, ExecError> {
        let mut cache = CodeCache::new(opts.cache_size)?;
        let (code, rel) = trampoline::generate();
        let base = cache.put_raw(&code).ok_or(ExecError::NoRoom)?;
        cache.seal_base();
        let tramp = trampoline::relocate(rel, base);
        warm_up_decoder();
        let mut cpu = Cpu::new();
        cpu.hot.window = mem.window_base() as u64;
        let return_stack = return_stack::ReturnStack::new()?;
        cpu.hot.rsb_top = return_stack.top() as u64;
        cpu.hot.rsb_sentinel = tramp.ret_sentinel[0] as u64;
        let sig = Box::new(SignalCtx {
            cache: std::ptr::null(),
            hot: std::ptr::null_mut(),
            exit_fault: tramp.exit_fault,
            rsb_guard: return_stack.guard(),
            rsb_resets: 0,
            poll_pages: mem.poll_pages(),
            in_guest: std::sync::atomic::AtomicBool::new(false),
            timer_fired: std::sync::atomic::AtomicBool::new(false),
            poll_armed: std::sync::atomic::AtomicU8::new(0),
            kick_mode: false,
            fault: FaultRecord::default(),
        });
        Ok(Engine {
            cpu,
            mem,
            io,
            cache,
            stats: Stats::default(),
            tramp,
            opts,
            sig,
            hole_pages: HashSet::new(),
            code_tlb: Default::default(),
            suspended: Default::default(),
            probe_missed: false,
            fetch_buf: Vec::new(),
            emu_cache: Default::default(),
            emu_slots: vec![None; EMU_CACHE_SLOTS],
            mode: Mode::default(),
            chipset: None,
            raw_mode: None,
            next_irq_check: 0,
            irq_dirty: true,
            intr_line: false,
            time_due: true,
            timer_fires: 0,
            timer: None,
            timer_expiry: 0,
            last_now: 0,
            watch_regs: [0; 5],
            jc_used: Vec::new(),
            last_pf: None,
            soft: Default::default(),
            bouncing: false,
            emulated: 0,
            device_insns: Default::default(),
            inline_hints: Default::default(),
            jc_marked: vec![false; crate::cpu::JUMP_CACHE_ENTRIES * crate::cpu::JUMP_CACHE_TABLES],
            // No mode sets every bit: the first use of a table tags it.
            jc_tags: [u16::MAX; crate::cpu::JUMP_CACHE_TABLES],
            seg_reloads: Default::default(),
            watch_pages: Vec::new(),
            log: None,
            perfmap: None,
            debug: None,
            fpu_ready: false,
            int_log_count: 0,
            icount_granted: 0,
            nmi_pending: false,
            nmi_blocked: false,
            vcpu: None,
            _return_stack: return_stack,
        })
    }

    /// Where `-d` trace lines go (default: stderr).
    pub fn set_log(&mut self, w: Box<dyn Write + Send>) {
        self.log = Some(w);
    }

    fn logln(&mut self, s: &str) {
        match &mut self.log {
            Some(w) => {
                let _ = writeln!(w, "{s}");
            }
            None => eprintln!("{s}"),
        }
    }

    /// Run until the guest exits, halts or dies.
    pub fn run(&mut self) -> RunOutcome {
        signals::install();
        signals::ensure_alt_stack();
        if let Err(e) = set_gs_base(self.mem.window_base()) {
            return RunOutcome::InternalError(format!("setting the GS base: {e}"));
        }
        // The guest's x87/MMX state lives in this thread's FPU while it runs
        // (the VMM's Rust code never touches x87): start from the FNINIT
        // state, once (a debugger runs the engine again after each stop).
        if !self.fpu_ready {
            self.fpu_ready = true;
            // SAFETY: FNINIT only resets this thread's x87 state.
            unsafe { core::arch::asm!("fninit", options(nomem, nostack)) };
        }
        self.cpu.hot.io_bus = &mut self.io as *mut PortBus as u64;
        self.cpu.hot.io_fn = io_callout as *const () as u64;
        self.cpu.hot.mem_ptr = &mut self.mem as *mut GuestMemory as u64;
        self.cpu.hot.invlpg_fn = invlpg_callout as *const () as u64;
        self.cpu.hot.str_fn = soft_tlb::string_callout as *const () as u64;
        self.sig.cache = &self.cache;
        self.sig.hot = &mut *self.cpu.hot;
        let ctx: *mut SignalCtx = &mut *self.sig;
        signals::set_current(ctx);
        if self.opts.perfmap && self.perfmap.is_none() {
            self.open_perfmap();
        }
        // Under icount no host timer may interrupt the guest (runs must
        // repeat): blocks leave when their instruction budget is spent.
        self.timer = if self.opts.icount { None } else { signals::IntervalTimer::start(POLL_INTERVAL_NS) };
        self.arm_debug();
        self.smp_attach_thread();
        let out = self.dispatch();
        self.smp_detach_thread();
        self.stats.inline_invlpgs = self.cpu.hot.invlpg_done;
        self.stats.return_stack_resets = self.sig.rsb_resets;
        self.timer = None;
        signals::set_current(std::ptr::null_mut());
        self.io.flush();
        if let Some(map) = &mut self.perfmap {
            let _ = map.flush();
        }
        out
    }

    fn dispatch(&mut self) -> RunOutcome {
        let mut chain_from: Option<u32> = None;
        // The last exit left translated code at an unchained direct exit or
        // a jump-cache miss, with nothing run by the VMM since: the mode,
        // the checked segments' HotState copies and the published reload
        // records are still as this loop last set them.
        let mut clean = false;
        loop {
            let was_clean = std::mem::replace(&mut clean, false);
            if self.opts.icount {
                self.rr_point();
            }
            if self.debug.is_some()
                && let Some(step) = self.debug_check()
            {
                match step {
                    Step::Done(out) => return out,
                    _ => {
                        chain_from = None;
                        continue;
                    }
                }
            }
            if self.vcpu.is_some()
                && let Some(step) = self.smp_safepoint()
            {
                match step {
                    Step::Done(out) => return out,
                    _ => {
                        chain_from = None;
                        continue;
                    }
                }
            }
            if self.chipset.is_some() || self.vcpu.is_some() {
                match self.check_interrupts(true) {
                    Some(Step::Done(out)) => return out,
                    Some(_) => {
                        chain_from = None;
                        continue;
                    }
                    None => {}
                }
            }
            if self.opts.icount {
                self.icount_refill();
            }
            let eip = self.cpu.hot.eip;
            let mode = if was_clean { self.mode } else { self.cpu.mode() };
            if !was_clean {
                // A return with no host call behind it looks up in this mode's table.
                self.cpu.hot.rsb_sentinel = self.tramp.ret_sentinel[mode.jc_table()] as u64;
            }
            if !was_clean && mode.uses_jump_cache() {
                // A table serves one whole mode at a time: an inline lookup
                // must not find a block translated for other FPU trap bits
                // or segment flatness. Every mode change passes through here.
                let t = mode.jc_table();
                if self.jc_tags[t] != mode.0 {
                    self.clear_jump_table(t);
                    self.jc_tags[t] = mode.0;
                }
            }
            self.mode = mode;
            // Debug-register execution breakpoints are faults taken before
            // the instruction, unless RF is set.
            if self.cpu.dr[7] & DR7_ENABLE_MASK != 0
                && let Some(step) = self.check_breakpoint(eip)
            {
                match step {
                    Step::Done(out) => return out,
                    _ => {
                        chain_from = None;
                        continue;
                    }
                }
            }
            if !was_clean && !mode.is_fast() {
                self.cpu.sync_segments();
            }
            if !was_clean && chain_from.is_none() {
                self.cpu.hot.cr2 = self.cpu.cr[2];
                // Back from an unlinked direct exit, nothing but EIP and the
                // registers changed; otherwise the VMM may have loaded
                // segments, descriptor tables or paging.
                self.cpu.sync_selectors();
                self.seg_reloads.sync(&mut self.cpu, &self.mem);
            }
            // Translated code of CPL 3 sees the user window when paging is on.
            let window = self.mem.window_for(mode.cpl()) as u64;
            if self.cpu.hot.window != window {
                self.cpu.hot.window = window;
                if let Err(e) = set_gs_base(window as usize) {
                    return RunOutcome::InternalError(format!("setting the GS base: {e}"));
                }
            }
            // Blocks are keyed by linear address (CS base + EIP), mode and
            // the physical page of the EIP.
            let cs_base = self.cpu.seg[SEG_CS].base;
            let lin = cs_base.wrapping_add(eip);
            // The jump cache in front of the block map: with nothing to chain,
            // a hit gives the entry directly (entries are dropped whenever a
            // linear address may map other code, so a hit needs no page walk).
            if chain_from.is_none()
                && !std::mem::take(&mut self.probe_missed)
                && self.opts.chaining
                && mode.uses_jump_cache()
                && !(self.opts.trace.exec || self.opts.trace.cpu)
            {
                let s = crate::cache::jc_slot(mode, lin);
                if self.cpu.hot.jc_keys[s] == crate::cpu::jc_key(lin) {
                    let host = self.cpu.hot.jc_targets[s] as usize;
                    if let Some(out) = self.enter_from_loop(host, &mut chain_from, &mut clean) {
                        return out;
                    }
                    continue;
                }
            }
            let phys = match self.code_page(lin, mode.cpl() == 3) {
                Ok(p) => p,
                Err(step) => {
                    chain_from = None;
                    match step {
                        Step::Done(out) => return out,
                        _ => continue,
                    }
                }
            };
            if self.cache.is_unverified(phys) {
                // Written since its blocks were translated: protected again,
                // its unchanged blocks kept (`code_written`).
                self.protect_code_page(phys);
            }
            let found = self.cache.lookup(lin, cs_base, mode, phys).filter(|&id| self.still_valid(id, lin));
            // Reached other than by a chain (a return that missed the host
            // return stack, mostly): the continuation of a CALL inside a
            // block serves, instead of the rest of that block translated
            // again. (A chain would need its own exit, so a direct branch
            // gets a block.)
            let entry = match (found, chain_from) {
                (None, None) => {
                    self.cache.lookup_entry(lin, cs_base, mode, phys).filter(|&(id, _)| self.still_valid(id, lin))
                }
                _ => None,
            };
            if let Some((_, host)) = entry {
                self.stats.continuation_entries += 1;
                self.jump_cache_insert(mode, eip, host);
                if let Some(out) = self.enter_from_loop(host, &mut chain_from, &mut clean) {
                    return out;
                }
                continue;
            }
            let flushes = self.cache.flushes;
            let id = match found {
                Some(id) => id,
                None => match self.translate(eip, mode, true) {
                    Ok(id) => {
                        // The exit that led here is linked to the new block
                        // at once (else its next run leaves again only to be
                        // linked then), unless a flush renumbered the exits.
                        if self.cache.flushes != flushes {
                            chain_from = None;
                        }
                        id
                    }
                    Err(Step::Done(out)) => return out,
                    Err(_) => {
                        chain_from = None;
                        continue;
                    }
                },
            };
            if let Some(e) = chain_from.take()
                && self.opts.chaining
                && self.cache.link(e, id)
            {
                self.stats.chains += 1;
            }
            let host = self.cache.blocks[id as usize].entry();
            if self.opts.chaining {
                self.jump_cache_insert(mode, eip, host);
            }
            if self.opts.trace.exec || self.opts.trace.cpu {
                self.log_block(host, lin, mode);
            }
            let events = self.stats.exceptions;
            let step = self.enter(host);
            // Single-step: a #DB trap after each instruction that began with
            // TF set and completed without raising an event.
            if mode.has(Mode::TF) && self.stats.exceptions == events && !matches!(step, Step::Done(_)) {
                self.cpu.dr[6] |= DR6_BS;
                chain_from = None;
                let at = self.cpu.hot.eip;
                if let Step::Done(out) = self.raise(Exception::new(vector::DB), EventKind::Exception, at) {
                    return out;
                }
                continue;
            }
            match step {
                Step::Chain(e) => chain_from = Some(e),
                Step::Continue => {}
                Step::Done(out) => return out,
            }
            clean = self.exited_clean();
        }
    }

    /// Enter translated code at `host` from the dispatcher's loop, noting
    /// the exit to chain from next and whether it left clean; the run's
    /// outcome if it ended.
    fn enter_from_loop(&mut self, host: usize, chain_from: &mut Option<u32>, clean: &mut bool) -> Option<RunOutcome> {
        match self.enter(host) {
            Step::Chain(e) => *chain_from = Some(e),
            Step::Continue => {}
            Step::Done(out) => return Some(out),
        }
        *clean = self.exited_clean();
        None
    }

    /// Put `eip -> host` in the jump cache of `mode` (if it has one),
    /// remembering the slot for `clear_jump_caches`.
    fn jump_cache_insert(&mut self, mode: Mode, eip: u32, host: usize) {
        if let Some(s) = jc_insert(&mut self.cpu.hot, mode, eip, host)
            && !self.jc_marked[s]
        {
            self.jc_marked[s] = true;
            self.jc_used.push(s as u32);
        }
    }

    /// Did translated code last leave through an unchained direct exit or
    /// a jump-cache miss (nothing for the VMM to run)?
    fn exited_clean(&self) -> bool {
        matches!(self.cpu.hot.exit_reason, exit::CHAIN | exit::INDIRECT | exit::PROBE_MISS | exit::CALL_MISS)
    }

    /// An enabled DR0-3 execution breakpoint at `eip`: raise #DB (or, with
    /// RF set, step over the instruction once). None if no breakpoint applies.
    fn check_breakpoint(&mut self, eip: u32) -> Option<Step> {
        let hit = (0..4).find(|&n| {
            let dr7 = self.cpu.dr[7];
            let enabled = dr7 & (3 << (2 * n)) != 0;
            let rw_len = (dr7 >> (16 + 4 * n)) & 0xF;
            // DR0-3 hold linear addresses.
            enabled && rw_len == 0 && self.cpu.dr[n] == self.cpu.seg[SEG_CS].base.wrapping_add(eip)
        })?;
        if self.cpu.eflags() & flags::RF != 0 {
            let f = self.cpu.eflags() & !flags::RF;
            self.cpu.set_eflags(f);
            return Some(self.step_one());
        }
        self.cpu.dr[6] = (self.cpu.dr[6] & !0xF) | (1 << hit);
        Some(self.raise(Exception::new(vector::DB), EventKind::Exception, eip))
    }

    /// Enter translated code at `host` and handle the exit.
    fn enter(&mut self, host: usize) -> Step {
        let f: EnterFn = {
            // SAFETY: `tramp.enter` is the entry of the trampoline generated
            // in new(), which follows the sysv64 ABI described in trampoline.rs.
            unsafe { std::mem::transmute::<usize, EnterFn>(self.tramp.enter) }
        };
        self.run_translated(f, host)
    }

    fn run_translated(&mut self, f: EnterFn, host: usize) -> Step {
        // Alignment checks (#AC) apply at CPL 3 with CR0.AM and EFLAGS.AC:
        // the trampoline sets AC in the host's RFLAGS for translated code.
        let ac = self.cpu.cpl == 3 && self.cpu.cr[0] & CR0_AM != 0 && self.cpu.hot.sys_flags & flags::AC != 0;
        self.cpu.hot.ac_check = if ac { flags::AC } else { 0 };
        self.sig.in_guest.store(true, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `host` is the entry of a block in the cache (or, for the
        // resume trampoline, unused: it continues at hot.resume_rip inside a
        // block that is still in the cache); the GS base is the window;
        // signal handlers and SignalCtx are set for this thread.
        unsafe { f(&mut *self.cpu.hot, host) };
        self.sig.in_guest.store(false, std::sync::atomic::Ordering::Relaxed);
        if self.opts.icount {
            self.icount_account();
        }
        // Translated code may have swapped segment loads in place.
        self.seg_reloads.reconcile(&mut self.cpu);
        if self.cpu.hot.io_dirty != 0 {
            self.cpu.hot.io_dirty = 0;
            self.irq_dirty = true;
            self.note_device_access();
        }
        if self.cpu.hot.io_exit != 0 {
            self.cpu.hot.io_exit = 0;
            return Step::Done(RunOutcome::DebugExit(self.cpu.hot.io_value as i32));
        }
        let reason = self.cpu.hot.exit_reason;
        self.stats.count_exit(reason);
        match reason {
            exit::CHAIN => Step::Chain(self.cpu.hot.exit_arg),
            exit::INDIRECT => Step::Continue,
            exit::CALL_MISS => {
                self.learn_call(self.cpu.hot.exit_arg, self.cpu.hot.eip);
                Step::Continue
            }
            exit::EMULATE => self.emulate(),
            exit::EXCEPTION => {
                let v = self.cpu.hot.exit_arg as u8;
                // Exits raise only the error-code exceptions with code 0
                // (#GP(0)/#SS(0) of segment checks).
                let e = if matches!(v, vector::DF | vector::TS..=vector::PF | vector::AC) {
                    Exception::with_code(v, 0)
                } else {
                    Exception::new(v)
                };
                self.exception(e)
            }
            exit::FAULT => self.fault(),
            exit::SOFT_MISS => self.soft_miss(),
            exit::PROBE_MISS => {
                self.probe_missed = true;
                Step::Continue
            }
            _ => Step::Done(RunOutcome::InternalError(format!("unknown exit reason {reason}"))),
        }
    }
}

/// CR0.AM: alignment checks enabled (with EFLAGS.AC, at CPL 3).
const CR0_AM: u32 = 1 << 18;

/// What the dispatcher does after an exit.
enum Step {
    /// Chain this exit to the next block.
    Chain(u32),
    Continue,
    Done(RunOutcome),
}

/// Point the GS base of this thread at the guest window.
fn set_gs_base(base: usize) -> std::io::Result<()> {
    /// AT_HWCAP2 bit: the kernel lets user code use WRGSBASE.
    const HWCAP2_FSGSBASE: u64 = 1 << 1;
    static FSGSBASE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: getauxval only reads the auxiliary vector.
    let fast = *FSGSBASE.get_or_init(|| unsafe { libc::getauxval(libc::AT_HWCAP2) } & HWCAP2_FSGSBASE != 0);
    if fast {
        // SAFETY: the kernel enabled WRGSBASE for user code (HWCAP2); it only
        // changes this thread's GS base, which Rust and glibc do not use.
        unsafe { core::arch::asm!("wrgsbase {}", in(reg) base as u64, options(nostack, preserves_flags)) };
        return Ok(());
    }
    /// arch_prctl code to set the GS base.
    const ARCH_SET_GS: libc::c_int = 0x1001;
    // SAFETY: arch_prctl(ARCH_SET_GS) only changes this thread's GS base,
    // which neither Rust nor glibc use on x86-64 Linux.
    let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_GS, base) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
