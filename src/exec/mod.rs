//! The execution engine: the dispatcher loop that looks blocks up,
//! translates misses, chains direct exits, enters translated code and
//! handles whatever brought it back (see ARCHITECTURE.md, "Dispatcher").

mod bounce;
mod code_pages;
mod code_tlb;
mod debug;
mod faults;
mod fpu;
mod interrupts;
mod seg_reload;
pub mod signals;
mod soft_tlb;
pub mod stats;
pub mod trampoline;

use std::collections::HashSet;
use std::io::Write;
use std::time::Instant;

use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter, Instruction};
use thiserror::Error;

use crate::cache::{BlockId, CacheError, CodeCache, jc_insert, page_of};
use crate::cpu::interp::{self, Env, Flow};
use crate::cpu::interrupt::{EventKind, is_contributory};
use crate::cpu::{Cpu, Exception, HotState, JUMP_CACHE_ENTRIES, Mode, SEG_CS, exit, flags, vector};
use crate::decode::{MAX_BLOCK_INSNS, MAX_SIDE_EXITS, decode_block, decode_superblock};
use crate::devices::PortBus;
use crate::devices::chipset::Chipset;
use crate::memory::{GuestMemory, PAGE_SIZE, ShadowFault, WINDOW_SIZE};
use crate::translate::{Options, Translator};
use signals::{FaultRecord, SignalCtx};
use stats::Stats;
use trampoline::Trampolines;

pub use debug::{DebugStop, WatchKind, Watchpoint};

/// DR7 L0-L3/G0-G3 enable bits.
const DR7_ENABLE_MASK: u32 = 0xFF;
/// DR6.BS: the #DB was a single-step trap.
const DR6_BS: u32 = 1 << 14;

/// Slots of the direct-mapped decoded-instruction cache.
const EMU_CACHE_SLOTS: usize = 256;

/// While INTR is asserted but IF is clear, how soon to look again.
const PENDING_RECHECK_NS: u64 = 50_000;

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
}

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
        let sig = Box::new(SignalCtx {
            cache: std::ptr::null(),
            hot: std::ptr::null_mut(),
            exit_fault: tramp.exit_fault,
            poll_pages: mem.poll_pages(),
            in_guest: std::sync::atomic::AtomicBool::new(false),
            timer_fired: std::sync::atomic::AtomicBool::new(false),
            poll_armed: std::sync::atomic::AtomicBool::new(false),
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
            emu_cache: Default::default(),
            emu_slots: vec![None; EMU_CACHE_SLOTS],
            mode: Mode::default(),
            chipset: None,
            raw_mode: None,
            next_irq_check: 0,
            irq_dirty: true,
            intr_line: false,
            time_due: true,
            timer: None,
            timer_expiry: 0,
            last_now: 0,
            watch_regs: [0; 5],
            jc_used: Vec::new(),
            last_pf: None,
            soft: Default::default(),
            bouncing: false,
            emulated: 0,
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
        let out = self.dispatch();
        self.stats.inline_invlpgs = self.cpu.hot.invlpg_done;
        self.timer = None;
        signals::set_current(std::ptr::null_mut());
        self.io.flush();
        if let Some(map) = &mut self.perfmap {
            let _ = map.flush();
        }
        out
    }

    /// Creates /tmp/perf-PID.map (perf's map for JIT code) and names the
    /// trampolines in it; blocks are added as they are translated.
    fn open_perfmap(&mut self) {
        let path = format!("/tmp/perf-{}.map", std::process::id());
        match std::fs::File::create(&path) {
            Ok(f) => {
                let mut map = std::io::BufWriter::new(f);
                let (lo, _) = self.cache.rx_range();
                let _ = writeln!(map, "{lo:x} {:x} btvisor-trampolines", self.cache.base_used());
                self.perfmap = Some(map);
            }
            Err(e) => log::warn!("cannot write {path}: {e}"),
        }
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
            if self.debug.is_some() {
                if let Some(step) = self.debug_check() {
                    match step {
                        Step::Done(out) => return out,
                        _ => {
                            chain_from = None;
                            continue;
                        }
                    }
                }
            }
            if self.chipset.is_some() {
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
            if self.cpu.dr[7] & DR7_ENABLE_MASK != 0 {
                if let Some(step) = self.check_breakpoint(eip) {
                    match step {
                        Step::Done(out) => return out,
                        _ => {
                            chain_from = None;
                            continue;
                        }
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
            let lin = self.cpu.seg[SEG_CS].base.wrapping_add(eip);
            // The jump cache in front of the block map: with nothing to chain,
            // a hit gives the entry directly (entries are dropped whenever a
            // linear address may map other code, so a hit needs no page walk).
            if chain_from.is_none()
                && self.opts.chaining
                && mode.uses_jump_cache()
                && !(self.opts.trace.exec || self.opts.trace.cpu)
            {
                let s = crate::cache::jc_slot(mode, lin);
                if self.cpu.hot.jc_keys[s] == crate::cpu::jc_key(lin) {
                    let host = self.cpu.hot.jc_targets[s] as usize;
                    match self.enter(host) {
                        Step::Chain(e) => chain_from = Some(e),
                        Step::Continue => {}
                        Step::Done(out) => return out,
                    }
                    clean = self.exited_clean();
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
            let found = self.cache.lookup(lin, mode, phys).filter(|&id| self.still_valid(id, lin));
            let id = match found {
                Some(id) => id,
                None => match self.translate(eip, mode, true) {
                    Ok(id) => {
                        chain_from = None; // a flush may have renumbered exits
                        id
                    }
                    Err(Step::Done(out)) => return out,
                    Err(_) => {
                        chain_from = None;
                        continue;
                    }
                },
            };
            if let Some(e) = chain_from.take() {
                if self.opts.chaining && self.cache.link(e, id) {
                    self.stats.chains += 1;
                }
            }
            let host = self.cache.blocks[id as usize].host;
            if self.opts.chaining {
                if let Some(s) = jc_insert(&mut self.cpu.hot, mode, eip, host) {
                    if !self.jc_marked[s] {
                        self.jc_marked[s] = true;
                        self.jc_used.push(s as u32);
                    }
                }
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

    /// `-d exec` and `-d cpu`: the block about to run (QEMU's `Trace` line:
    /// host address, [CS base/linear EIP/mode/0]) and the state before it.
    fn log_block(&mut self, host: usize, lin: u32, mode: Mode) {
        let mut l = String::new();
        if self.opts.trace.exec {
            l += &format!("Trace 0: {host:#x} [{:08x}/{lin:08x}/{:08x}/00000000] ", self.cpu.seg[SEG_CS].base, mode.0);
        }
        if self.opts.trace.cpu {
            if !l.is_empty() {
                l.push('\n');
            }
            l += &self.cpu.dump();
        }
        self.logln(&l);
    }

    /// Did translated code last leave through an unchained direct exit or
    /// a jump-cache miss (nothing for the VMM to run)?
    fn exited_clean(&self) -> bool {
        matches!(self.cpu.hot.exit_reason, exit::CHAIN | exit::INDIRECT)
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
            _ => Step::Done(RunOutcome::InternalError(format!("unknown exit reason {reason}"))),
        }
    }

    /// Decode and translate the block at `eip`; `register` = false makes a
    /// one-off block (used to step one instruction after a code write).
    /// An instruction fetch that faults returns the step delivering #PF.
    fn translate(&mut self, eip: u32, mode: Mode, register: bool) -> Result<BlockId, Step> {
        let t0 = Instant::now();
        let max = if !register || mode.has(Mode::TF) { 1 } else { MAX_BLOCK_INSNS };
        let bits = if mode.has(Mode::CS16) { 16 } else { 32 };
        // Code is fetched at CS base + EIP; instructions keep EIP offsets.
        let cs_base = self.cpu.seg[SEG_CS].base;
        let lin = cs_base.wrapping_add(eip);
        let fetch = self.fetch_code(lin, mode.cpl() == 3)?;
        let (mut block, phys0, phys_end) = {
            let (code, base) = fetch.code(self.mem.ram(), cs_base, eip);
            // Side exits need chaining. Under icount a block charges all its
            // instructions at entry, also when it leaves by a side exit: time
            // runs a little fast, the same way in every run.
            let side_exits = if self.opts.chaining { MAX_SIDE_EXITS } else { 0 };
            let mut block = decode_superblock(code, base, eip, max, mode.cpl(), bits, side_exits);
            if let Fetch::Paged { phys, .. } = &fetch {
                // An instruction running into a page that is not mapped: the
                // block ends before it, or it faults when it comes first.
                if phys[1].is_none() && block.truncated {
                    {
                        let k = block.insns.len() - 1;
                        if k == 0 {
                            let next = (lin & !0xFFF).wrapping_add(PAGE_SIZE as u32);
                            return Err(self.fetch_fault(next, mode.cpl() == 3));
                        }
                        block.end = block.insns[k].ip32();
                        block.insns.truncate(k);
                        block.classes.truncate(k);
                    }
                }
            }
            let (p0, p_end) = fetch.phys_pages(lin, cs_base.wrapping_add(block.end.wrapping_sub(1)));
            (block, p0, p_end)
        };
        if self.cpu.dr[7] & DR7_ENABLE_MASK != 0 || self.debug.is_some() {
            self.cut_at_breakpoints(&mut block, cs_base);
        }
        if self.opts.icount {
            // RDTSC and port I/O leave for the VMM under icount: they end their block.
            let reads_time =
                block.insns.iter().zip(&block.classes).position(|(i, &c)| crate::translate::reads_time(i, c));
            if let Some(k) = reads_time {
                block.end = block.insns[k].next_ip32();
                block.insns.truncate(k + 1);
                block.classes.truncate(k + 1);
            }
        }
        if self.opts.trace.in_asm {
            let text = disasm_guest(&block.insns);
            self.logln(&format!("----------------\nIN: \n{text}"));
        }
        // A one-off block runs exactly one instruction: its indirect branch
        // leaves for the dispatcher instead of continuing from the jump
        // cache (the bounce pages of `bounce` are mapped only meanwhile).
        let opts = Options { inline_lookup: self.opts.chaining && register, mode, icount: self.opts.icount };
        for attempt in 0..2 {
            let (code, base) = fetch.code(self.mem.ram(), cs_base, eip);
            let host = self.cache.next_addr();
            let mut tr =
                Translator::new(host, self.tramp.exits, self.cache.next_exit_id(), opts, code).with_code_base(base);
            if register && self.opts.soft_mmu {
                tr = tr.with_soft_all();
            } else if register && !self.soft.insns.is_empty() {
                // (One-off blocks run an instruction through the shadow window.)
                tr = tr.with_soft(&self.soft.insns);
            }
            let t = tr.translate(&block);
            if !self.cache.fits(t.code.len()) {
                if attempt == 0 {
                    self.flush();
                    continue;
                }
                return Err(Step::Done(RunOutcome::InternalError("code cache cannot hold one block".into())));
            }
            if t.uses_fpu {
                self.cpu.hot.fpu_active = 1;
            }
            let code_len = t.code.len();
            let out_text = self.opts.trace.out_asm.then(|| disasm_host(&t.code, host));
            let pages = (phys0, phys_end);
            let Some(id) = self.cache.install(lin, mode, phys0, block.end, pages, t, register) else {
                return Err(Step::Done(RunOutcome::InternalError("code cache cannot hold one block".into())));
            };
            if let Some(map) = &mut self.perfmap {
                // perf's JIT map format: START SIZE NAME (hex, no 0x).
                let _ = writeln!(map, "{host:x} {code_len:x} guest-cpl{}-{lin:08x}", mode.cpl());
            }
            if register {
                for p in [pages.0, pages.1] {
                    if self.mem.is_ram(p) && !self.mem.is_protected(p) {
                        self.mem.set_code_protect(p, true);
                        self.soft.flush_writes(&mut self.cpu.hot);
                    }
                }
                let last = cs_base.wrapping_add(block.end.wrapping_sub(1));
                self.cache.index_linear(id, page_of(lin), page_of(last));
                if page_of(last) != page_of(lin) {
                    // Recorded so that a CR3 load revalidates this page too.
                    self.code_page_quiet(last, mode.cpl() == 3);
                }
            }
            self.stats.blocks += 1;
            self.stats.guest_insns += block.insns.len() as u64;
            self.stats.host_bytes += code_len as u64;
            self.stats.translate_ns += t0.elapsed().as_nanos() as u64;
            if let Some(text) = out_text {
                self.logln(&format!("OUT: [size={code_len}]\n{text}"));
            }
            return Ok(id);
        }
        Err(Step::Done(RunOutcome::InternalError("code cache cannot hold one block".into())))
    }

    /// End the block before any enabled execution breakpoint (DR0-3, or
    /// the debugger's, at linear addresses) after its first instruction
    /// (the dispatcher checks the first one).
    fn cut_at_breakpoints(&self, block: &mut crate::decode::GuestBlock, cs_base: u32) {
        let mut bps: Vec<u32> = (0..4)
            .filter(|&n| self.cpu.dr[7] & (3 << (2 * n)) != 0 && (self.cpu.dr[7] >> (16 + 4 * n)) & 0xF == 0)
            .map(|n| self.cpu.dr[n])
            .collect();
        bps.extend(self.debug_breakpoints());
        if let Some(cut) = block.insns.iter().skip(1).position(|i| bps.contains(&cs_base.wrapping_add(i.ip32()))) {
            let keep = cut + 1;
            block.end = block.insns[keep].ip32();
            block.insns.truncate(keep);
            block.classes.truncate(keep);
        }
    }

    /// Drop all translations (the cache is full, or breakpoints changed).
    fn flush(&mut self) {
        self.clear_emu_cache();
        self.cache.flush(&mut self.cpu.hot);
        self.mem.unprotect_all();
        self.stats.flushes += 1;
    }

    /// Run the instruction at EIP in the VMM.
    fn emulate(&mut self) -> Step {
        let eip = self.cpu.hot.eip;
        let i = self.decode_at(eip);
        self.emulated += 1;
        self.stats.count_callout(i.mnemonic());
        if matches!(
            i.mnemonic(),
            iced_x86::Mnemonic::Fnstenv
                | iced_x86::Mnemonic::Fstenv
                | iced_x86::Mnemonic::Fnsave
                | iced_x86::Mnemonic::Fsave
                | iced_x86::Mnemonic::Fxsave
        ) {
            return self.fpu_store(&i);
        }
        let mut written = Vec::new();
        // A page fault, or a stack access beyond a non-flat SS's limit
        // (#SS), undoes the instruction.
        let paging = self.mem.paging().enabled();
        let stack_checked = !self.cpu.seg[crate::cpu::SEG_SS].is_flat();
        let before = (paging || stack_checked).then(|| self.cpu.snapshot());
        let (r, invlpg, cr_written, pf) = {
            let mut env = Env::new(&mut self.cpu, &mut self.mem, &mut self.io, &mut written);
            let r = interp::execute(&mut env, &i);
            let pf = env.take_page_fault();
            (r, env.invlpg, env.cr_written, pf)
        };
        for p in written {
            self.code_written(p);
        }
        if matches!(i.mnemonic(), iced_x86::Mnemonic::Iret | iced_x86::Mnemonic::Iretd) && r.is_ok() && self.nmi_blocked
        {
            // IRET ends NMI blocking; a pending NMI may be taken now.
            self.nmi_blocked = false;
            self.irq_dirty |= self.nmi_pending;
        }
        if let (iced_x86::Mnemonic::Iret | iced_x86::Mnemonic::Iretd, Ok(Flow::Jump(to))) = (i.mnemonic(), &r) {
            // Back to the instruction whose page fault the guest handled
            // (IRET's target: EIP itself is set below).
            if let Some(f) = self.last_pf.take().filter(|f| f.eip == *to) {
                if f.soft {
                    if self.soft_fill(f.win as u32, f.lin) {
                        self.soft_stream_map(f.eip, f.win as u32, f.lin);
                    }
                } else {
                    self.mem.prefetch_after_fault(f.win, f.lin, f.write);
                }
            }
        }
        let dregs = [self.cpu.dr[0], self.cpu.dr[1], self.cpu.dr[2], self.cpu.dr[3], self.cpu.dr[7]];
        if dregs != self.watch_regs {
            self.watch_regs = dregs;
            self.arm_watchpoints();
        }
        if self.chipset.is_some() && touches_interrupt_state(&i, self.cpu.reg(crate::cpu::EDX) as u16) {
            self.irq_dirty = true;
        }
        if let Some(e) = pf {
            // A memory access of the instruction faulted: undo it, raise #PF
            // (or #SS).
            if let Some(b) = &before {
                self.cpu.restore(b);
            }
            if e.vector == crate::cpu::vector::PF {
                self.stats.page_faults += 1;
            }
            return self.exception(e);
        }
        let regs = self.cpu.paging_regs();
        if invlpg.is_some() || cr_written || regs != self.mem.paging() {
            self.paging_changed(invlpg, cr_written);
        }
        match r {
            Ok(Flow::Next) => {
                if let Some(s) = loaded_data_segment(&i) {
                    self.seg_reloads.note_load(&self.cpu, &self.mem, s);
                }
                if i.mnemonic() == iced_x86::Mnemonic::Verw {
                    if let Some(sel) = self.cpu.last_verw.take() {
                        let zf = self.cpu.hot.live_flags & flags::ZF != 0;
                        self.seg_reloads.note_verw(&self.cpu, &self.mem, sel, zf);
                    }
                }
                self.cpu.hot.eip = i.next_ip32();
                Step::Continue
            }
            Ok(Flow::Jump(t)) => {
                self.cpu.hot.eip = t;
                Step::Continue
            }
            Ok(Flow::Exit(code)) => Step::Done(RunOutcome::DebugExit(code)),
            Ok(Flow::SoftInt { vector, kind }) => self.raise(Exception::new(vector), kind, i.next_ip32()),
            Ok(Flow::Halt) => {
                let ie = self.cpu.eflags() & flags::IF != 0;
                self.cpu.hot.eip = i.next_ip32();
                if ie && self.chipset.is_some() {
                    return self.halt_until_interrupt(eip);
                }
                Step::Done(RunOutcome::Halted { eip, interrupts_enabled: ie })
            }
            Err(e) => self.exception(e),
        }
    }
}

/// CR0.AM: alignment checks enabled (with EFLAGS.AC, at CPL 3).
const CR0_AM: u32 = 1 << 18;

/// Can this VMM-executed instruction change what the interrupt controller
/// asserts? Port writes to the chipset's devices, and reads that acknowledge
/// something (UART RBR/IIR, PIC poll, RTC register C).
fn touches_interrupt_state(i: &Instruction, dx: u16) -> bool {
    use iced_x86::Mnemonic as M;
    use iced_x86::OpKind;
    let imm_or_dx =
        |n: u32| if i.op_count() > n && i.op_kind(n) == OpKind::Immediate8 { i.immediate8() as u16 } else { dx };
    match i.mnemonic() {
        M::Out | M::Outsb | M::Outsw | M::Outsd => port_touches_interrupts(imm_or_dx(0), true),
        M::In | M::Insb | M::Insw | M::Insd => port_touches_interrupts(imm_or_dx(1), false),
        _ => false,
    }
}

/// See `touches_interrupt_state`.
fn port_touches_interrupts(port: u16, out: bool) -> bool {
    if out {
        port != crate::devices::POST_PORT && !(crate::devices::DEBUG_EXIT_BASE..0xF8).contains(&port)
    } else {
        matches!(port, 0x20 | 0xA0 | 0x3F8 | 0x3FA | 0x71)
    }
}

/// Port I/O called from translated code (`translate::io`). Returns nonzero
/// when the dispatcher must look (debug exit, interrupt state changed).
extern "sysv64" fn io_callout(hot: *mut HotState) -> u32 {
    // SAFETY: translated code passes the running vCPU's HotState, whose
    // io_bus the engine set to its live PortBus before entering; nothing
    // else touches the bus while translated code runs.
    let hot = unsafe { &mut *hot };
    // SAFETY: as above.
    let bus = unsafe { &mut *(hot.io_bus as *mut PortBus) };
    let port = hot.io_port as u16;
    let size = (hot.io_info & 0xFF) as u8;
    let out = hot.io_info & crate::translate::io::IO_OUT != 0;
    if out {
        if let crate::devices::IoEffect::Exit(code) = bus.write(port, size, hot.io_value) {
            hot.io_exit = 1;
            hot.io_value = code as u32;
            return 1;
        }
    } else {
        hot.io_value = bus.read(port, size);
    }
    if port_touches_interrupts(port, out) {
        // The dispatcher must look at the chipset; right away only if an
        // interrupt could be taken now (IF set). Otherwise the next exit
        // looks, and a later STI/POPFD leaves the block since INTR "may be"
        // pending.
        hot.io_dirty = 1;
        hot.intr_pending = 1;
        return u32::from(hot.vif != 0);
    }
    0
}

/// INVLPG from translated code at CPL 0 (`translate::io::invlpg`): the
/// linear address is in `io_value`. Returns nonzero when the engine must
/// emulate it instead (the page holds translated code, or a 4 MiB page
/// maps it: blocks must be unchained, which needs the whole engine).
extern "sysv64" fn invlpg_callout(hot: *mut HotState) -> u32 {
    // SAFETY: translated code passes the running vCPU's HotState, whose
    // mem_ptr the engine set to its live GuestMemory before entering;
    // nothing else uses it while translated code runs.
    let hot = unsafe { &mut *hot };
    // SAFETY: as above.
    let mem = unsafe { &mut *(hot.mem_ptr as *mut GuestMemory) };
    let lin = hot.io_value;
    if mem.paging().enabled() {
        if mem.has_code_lin(lin) || mem.large_page_at(lin) {
            return 1;
        }
        mem.invlpg(lin);
    }
    soft_tlb::flush_page(hot, lin);
    hot.invlpg_done += 1;
    0
}

/// Where a block's code bytes come from.
enum Fetch {
    /// Paging off: guest RAM at CS base + EIP.
    Flat,
    /// Paging on: a copy of the code page (and the next one if mapped).
    Paged { buf: Vec<u8>, page: u32, phys: [Option<u32>; 2] },
}

impl Fetch {
    /// The code bytes and the EIP of their first byte.
    fn code<'a>(&'a self, ram: &'a [u8], cs_base: u32, eip: u32) -> (&'a [u8], u32) {
        match self {
            Fetch::Flat => (ram.get(cs_base as usize..).unwrap_or(&[]), 0),
            Fetch::Paged { buf, page, .. } => {
                let lin = cs_base.wrapping_add(eip);
                (&buf[..], eip.wrapping_sub(lin.wrapping_sub(*page)))
            }
        }
    }

    /// Physical pages of the block's first byte `lin` and last byte `last`.
    fn phys_pages(&self, lin: u32, last: u32) -> (u32, u32) {
        match self {
            Fetch::Flat => (page_of(lin), page_of(last)),
            Fetch::Paged { page, phys, .. } => {
                let p0 = phys[0].unwrap_or(0);
                let p1 = if page_of(last) != *page { phys[1].unwrap_or(p0) } else { p0 };
                (p0, p1)
            }
        }
    }
}

/// What the dispatcher does after an exit.
enum Step {
    /// Chain this exit to the next block.
    Chain(u32),
    Continue,
    Done(RunOutcome),
}

/// iced-x86 builds its instruction-info tables on first use (a few ms);
/// pay that at machine construction rather than in the first translation.
fn warm_up_decoder() {
    // add eax, [ebx+4] ; fld qword [eax] ; ret
    let code = [0x03, 0x43, 0x04, 0xDD, 0x00, 0xC3];
    let b = decode_block(&code, 0, 0, MAX_BLOCK_INSNS);
    for i in &b.insns {
        let _ = (i.op_code().op_kinds().len(), i.cpuid_features().len(), i.stack_pointer_increment());
    }
}

impl Engine {
    /// Forget decoded VMM instructions (code or its mapping changed).
    fn clear_emu_cache(&mut self) {
        self.emu_cache.clear();
        self.emu_slots.iter_mut().for_each(|e| *e = None);
    }

    /// Decode the instruction at CS:`eip` in the current code size (through
    /// the guest page tables; cached per linear address and mode until code
    /// changes).
    fn decode_at(&mut self, eip: u32) -> Instruction {
        let cs = self.cpu.seg[SEG_CS];
        let mode = self.mode;
        let lin = cs.base.wrapping_add(eip);
        let slot = lin as usize % EMU_CACHE_SLOTS;
        if let Some((l, m, i)) = &self.emu_slots[slot] {
            if *l == lin && *m == mode.0 {
                return *i;
            }
        }
        if let Some(i) = self.emu_cache.get(&(lin, mode.0)).copied() {
            self.emu_slots[slot] = Some((lin, mode.0, i));
            return i;
        }
        let bits = if mode.has(Mode::CS16) { 16 } else { 32 };
        let mut bytes = [0u8; crate::decode::MAX_INSN_LEN];
        let mut n = 0;
        let user = mode.cpl() == 3;
        while n < bytes.len() {
            match self.mem.translate(lin.wrapping_add(n as u32), false, user) {
                Ok(p) if self.mem.is_ram(p) => bytes[n] = self.mem.read_u8(p),
                _ => break,
            }
            n += 1;
        }
        let i = Decoder::with_ip(bits, &bytes[..n], eip as u64, DecoderOptions::NONE).decode();
        self.emu_cache.insert((lin, mode.0), i);
        i
    }
}

fn disasm_guest(insns: &[Instruction]) -> String {
    let mut f = GasFormatter::new();
    let mut out = String::new();
    for i in insns {
        let mut s = String::new();
        f.format(i, &mut s);
        out += &format!("0x{:08x}:  {s}\n", i.ip32());
    }
    out
}

fn disasm_host(code: &[u8], base: usize) -> String {
    let mut d = Decoder::with_ip(64, code, base as u64, DecoderOptions::NONE);
    let mut f = GasFormatter::new();
    let mut out = String::new();
    while d.can_decode() {
        let i = d.decode();
        let mut s = String::new();
        f.format(&i, &mut s);
        out += &format!("0x{:016x}:  {s}\n", i.ip());
    }
    out
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

/// The data segment register (ES, DS, FS, GS) that `i` loads by MOV or
/// POP, if any: the loads `translate::segment::reload` can skip later.
fn loaded_data_segment(i: &Instruction) -> Option<usize> {
    use iced_x86::Code;
    let moves = matches!(i.code(), Code::Mov_Sreg_r32m16 | Code::Mov_Sreg_rm16);
    let pops = matches!(i.code(), Code::Popd_ES | Code::Popd_DS | Code::Popd_FS | Code::Popd_GS);
    if !moves && !pops {
        return None;
    }
    interp::seg_index(i.op0_register()).filter(|&s| s != SEG_CS && s != crate::cpu::SEG_SS)
}
