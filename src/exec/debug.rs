//! What a debugger (the gdb stub, `crate::gdb`) needs from the engine:
//! breakpoints that never write guest memory, exact single steps, prompt
//! stops on request, and access to guest memory and registers as the guest
//! sees them.
//!
//! - **Breakpoints** are linear addresses (CS base + EIP), as in QEMU. The
//!   dispatcher looks before it enters a block at a breakpoint, and a block
//!   is cut before any breakpoint inside it; so no translated block starts
//!   or runs through one, and chained code reaches a breakpoint only by
//!   returning to the dispatcher. Changing the set drops all translations,
//!   once per resume (gdb removes and reinserts every breakpoint at each
//!   stop, usually the same set).
//! - **Steps** run one instruction as a one-off block with the interval
//!   timer's signal blocked, and with no interrupt delivered before it
//!   (QEMU's default `SSTEP_NOIRQ | SSTEP_NOTIMER`). An event the
//!   instruction raises (a fault, INT n) is delivered: the step ends at the
//!   handler's first instruction. A REP string instruction runs one
//!   iteration per step, as hardware steps it under TF.
//! - **Stop requests** come from another thread (gdb's Ctrl-C, a new
//!   connection) through an atomic flag the dispatcher reads at each
//!   return; the interval timer bounds how long chained code can run
//!   without one, and HLT's naps look at the flag too.
//! - **Watchpoints** are linear ranges; with paging off they reuse the
//!   data-breakpoint page protection (`faults::watch_fault`), with paging
//!   on the shadow window never maps a watched page (`shadow_fault`), so
//!   every access to it faults and is checked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::memory::mmu;

/// Why the engine stopped for the debugger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugStop {
    /// A stop request (gdb's Ctrl-C, or a debugger attaching).
    Interrupted,
    /// EIP reached a software breakpoint.
    SwBreakpoint,
    /// EIP reached a hardware breakpoint.
    HwBreakpoint,
    /// The requested single step is done.
    Step,
    /// An instruction touched a watched range at `addr`.
    Watch { addr: u32, kind: WatchKind },
}

/// The accesses a watchpoint reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    Write,
    Read,
    Access,
}

/// One watched linear range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchpoint {
    pub addr: u32,
    pub len: u32,
    pub kind: WatchKind,
}

impl Watchpoint {
    fn hit_by(&self, addr: u32, len: u32, write: bool) -> bool {
        let wants = match self.kind {
            WatchKind::Write => write,
            WatchKind::Read => !write,
            WatchKind::Access => true,
        };
        let end = self.addr.wrapping_add(self.len);
        wants && addr < end && addr.wrapping_add(len) > self.addr
    }
}

/// The debugger's view of the engine: what it has asked for.
#[derive(Debug, Default)]
pub struct DebugState {
    /// Set by any thread to stop the guest at the next dispatcher return.
    pub stop: Arc<AtomicBool>,
    sw_breakpoints: Vec<u32>,
    hw_breakpoints: Vec<u32>,
    /// The breakpoints translated code was last cut for.
    armed: Vec<u32>,
    watchpoints: Vec<Watchpoint>,
    /// The watchpoints whose pages are protected now.
    armed_watch: Vec<Watchpoint>,
    /// The next run executes one instruction and stops.
    step: bool,
}

impl DebugState {
    fn breakpoints(&self) -> impl Iterator<Item = &u32> {
        self.sw_breakpoints.iter().chain(&self.hw_breakpoints)
    }
}

impl Engine {
    /// Make the engine debuggable: the dispatcher looks at breakpoints and
    /// stop requests from now on. Returns the stop flag for other threads.
    pub fn enable_debug(&mut self) -> Arc<AtomicBool> {
        let d = self.debug.get_or_insert_with(Default::default);
        d.stop.clone()
    }

    /// Is a debugger attached to this engine?
    pub fn debugging(&self) -> bool {
        self.debug.is_some()
    }

    pub fn add_breakpoint(&mut self, lin: u32, hw: bool) {
        if let Some(d) = &mut self.debug {
            let set = if hw { &mut d.hw_breakpoints } else { &mut d.sw_breakpoints };
            if !set.contains(&lin) {
                set.push(lin);
            }
        }
    }

    /// Returns false if no such breakpoint was set.
    pub fn remove_breakpoint(&mut self, lin: u32, hw: bool) -> bool {
        let Some(d) = &mut self.debug else { return false };
        let set = if hw { &mut d.hw_breakpoints } else { &mut d.sw_breakpoints };
        let before = set.len();
        set.retain(|&a| a != lin);
        set.len() != before
    }

    pub fn add_watchpoint(&mut self, w: Watchpoint) {
        if let Some(d) = &mut self.debug
            && w.len > 0
            && !d.watchpoints.contains(&w)
        {
            d.watchpoints.push(w);
        }
    }

    /// Returns false if no such watchpoint was set.
    pub fn remove_watchpoint(&mut self, w: Watchpoint) -> bool {
        let Some(d) = &mut self.debug else { return false };
        let before = d.watchpoints.len();
        d.watchpoints.retain(|x| *x != w);
        d.watchpoints.len() != before
    }

    /// Remove every breakpoint and watchpoint (the debugger detached).
    pub fn clear_debug_points(&mut self) {
        if let Some(d) = &mut self.debug {
            d.sw_breakpoints.clear();
            d.hw_breakpoints.clear();
            d.watchpoints.clear();
            d.step = false;
        }
    }

    /// The next `run` executes exactly one instruction and returns
    /// `DebugStop::Step` (or how the run ended, if it did).
    pub fn request_step(&mut self) {
        if let Some(d) = &mut self.debug {
            d.step = true;
        }
    }

    /// Called by `run` before the dispatcher starts: bring translations and
    /// page protections in line with the breakpoints and watchpoints.
    pub(super) fn arm_debug(&mut self) {
        let Some(d) = &mut self.debug else { return };
        let mut want: Vec<u32> = d.breakpoints().copied().collect();
        want.sort_unstable();
        want.dedup();
        let bp_changed = want != d.armed;
        let watch_changed = d.watchpoints != d.armed_watch;
        if bp_changed {
            d.armed = want;
        }
        if watch_changed {
            d.armed_watch = d.watchpoints.clone();
        }
        if bp_changed {
            // Blocks translated before may run through a new breakpoint.
            self.flush();
        }
        if watch_changed {
            self.arm_watchpoints();
        }
    }

    /// The dispatcher's look at the debugger, before anything else at
    /// each return: a stop request, a pending step, a breakpoint at EIP.
    /// None: go on as usual.
    pub(super) fn debug_check(&mut self) -> Option<Step> {
        let d = self.debug.as_mut()?;
        if d.stop.load(Ordering::Relaxed) {
            return Some(Step::Done(RunOutcome::DebugStop(DebugStop::Interrupted)));
        }
        if std::mem::take(&mut d.step) {
            return Some(match self.debug_step() {
                Step::Done(out) => Step::Done(out),
                _ => Step::Done(RunOutcome::DebugStop(DebugStop::Step)),
            });
        }
        let lin = self.cpu.seg[SEG_CS].base.wrapping_add(self.cpu.hot.eip);
        if d.sw_breakpoints.contains(&lin) {
            return Some(Step::Done(RunOutcome::DebugStop(DebugStop::SwBreakpoint)));
        }
        if d.hw_breakpoints.contains(&lin) {
            return Some(Step::Done(RunOutcome::DebugStop(DebugStop::HwBreakpoint)));
        }
        None
    }

    /// Load segment register `seg` with `sel` for the debugger: from its
    /// descriptor in protected mode (without the checks a MOV makes, as
    /// QEMU's stub does), as `sel << 4` in real mode. A code selector's RPL
    /// becomes the CPL. False if the descriptor cannot be read.
    pub fn debug_set_segment(&mut self, seg: usize, sel: u16) -> bool {
        let s = if self.cpu.cr[0] & 1 == 0 {
            crate::cpu::Segment { selector: sel, base: (sel as u32) << 4, ..self.cpu.seg[seg] }
        } else if sel & 0xFFFC == 0 && seg != SEG_CS {
            crate::cpu::Segment { selector: sel, base: 0, limit: 0, attr: 0 }
        } else {
            let mut written = Vec::new();
            let env = Env::new(&mut self.cpu, &mut self.mem, &mut self.io, &mut written);
            match env.descriptor(sel) {
                Ok(d) => crate::cpu::Segment::from_descriptor(sel, d),
                Err(_) => return false,
            }
        };
        self.cpu.seg[seg] = s;
        if seg == SEG_CS && self.cpu.cr[0] & 1 != 0 {
            self.cpu.cpl = (sel & 3) as u8;
        }
        self.cpu.sync_selectors();
        true
    }

    /// The debugger's watched ranges: (address, length, writes only).
    pub(super) fn debug_watch_ranges(&self) -> Vec<(u32, u32, bool)> {
        let Some(d) = &self.debug else { return Vec::new() };
        d.armed_watch.iter().map(|w| (w.addr, w.len, w.kind == WatchKind::Write)).collect()
    }

    /// The stop to report for an access of `len` bytes at linear `addr`,
    /// if it touches a debugger watchpoint.
    pub(super) fn debug_watch_hit(&self, addr: u32, len: u32, write: bool) -> Option<DebugStop> {
        let d = self.debug.as_ref()?;
        let w = d.armed_watch.iter().find(|w| w.hit_by(addr, len, write))?;
        let kind = match w.kind {
            WatchKind::Access => WatchKind::Access,
            _ if write => WatchKind::Write,
            _ => WatchKind::Read,
        };
        Some(DebugStop::Watch { addr: w.addr, kind })
    }

    /// Linear debug breakpoints inside a block being translated end it
    /// before them (`cut_at_breakpoints` for the debugger's).
    pub(super) fn debug_breakpoints(&self) -> Vec<u32> {
        self.debug.as_ref().map(|d| d.armed.clone()).unwrap_or_default()
    }

    /// Execute the instruction at EIP alone. A REP string instruction does
    /// one iteration: it runs with a count of one, and EIP stays on it
    /// while iterations remain, as a TF trap leaves it.
    fn debug_step(&mut self) -> Step {
        let eip = self.cpu.hot.eip;
        let i = self.decode_at(eip);
        let rep = crate::decode::has_string_operand(&i)
            && (i.has_rep_prefix() || i.has_repe_prefix() || i.has_repne_prefix());
        let count_mask = if string_addr16(&i) { 0xFFFF } else { 0xFFFF_FFFF };
        let ecx = self.cpu.reg(crate::cpu::ECX);
        let count = ecx & count_mask;
        if rep && count > 1 {
            self.cpu.set_reg(crate::cpu::ECX, (ecx & !count_mask) | 1);
        }
        let events = self.stats.exceptions;
        let step = with_timer_blocked(|| self.step_one());
        if rep && count > 1 && self.stats.exceptions == events && !matches!(step, Step::Done(_)) {
            let left = count - 1;
            let ecx = self.cpu.reg(crate::cpu::ECX);
            self.cpu.set_reg(crate::cpu::ECX, (ecx & !count_mask) | left);
            // REPE/REPNE compare forms also end when ZF says so.
            let zf = self.cpu.eflags() & flags::ZF != 0;
            let cmp = matches!(
                i.mnemonic(),
                iced_x86::Mnemonic::Cmpsb
                    | iced_x86::Mnemonic::Cmpsw
                    | iced_x86::Mnemonic::Cmpsd
                    | iced_x86::Mnemonic::Scasb
                    | iced_x86::Mnemonic::Scasw
                    | iced_x86::Mnemonic::Scasd
            );
            let ended = cmp && ((i.has_repe_prefix() && !zf) || (i.has_repne_prefix() && zf));
            if !ended {
                self.cpu.hot.eip = eip;
            }
        }
        step
    }

    /// Translate linear `lin` as the debugger sees memory: through the
    /// guest's page tables without setting accessed bits or checking
    /// privilege. None if it is not mapped.
    pub fn debug_translate(&self, lin: u32) -> Option<u32> {
        let regs = self.mem.paging();
        if !regs.enabled() {
            return Some(lin);
        }
        let access = mmu::Access { write: false, user: false };
        mmu::lookup(self.mem.ram(), regs, lin, access).ok().map(|(t, _)| t.phys_page | (lin & (PAGE_SIZE as u32 - 1)))
    }

    /// Read guest memory at linear `lin` for the debugger; returns how many
    /// bytes could be read (it stops at the first unmapped page).
    pub fn debug_read(&self, lin: u32, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let at = lin.wrapping_add(done as u32);
            let Some(phys) = self.debug_translate(at) else { break };
            let in_page = PAGE_SIZE - (at as usize & (PAGE_SIZE - 1));
            let n = in_page.min(buf.len() - done);
            self.mem.read(phys, &mut buf[done..done + n]);
            done += n;
        }
        done
    }

    /// Write guest memory at linear `lin` for the debugger; false if part
    /// of it is not mapped (what precedes that part is written). Code
    /// translated from the bytes is dropped; with paging on, every shadow
    /// mapping is rebuilt (the bytes may be page tables).
    pub fn debug_write(&mut self, lin: u32, data: &[u8]) -> bool {
        let mut done = 0;
        let mut ok = true;
        while done < data.len() {
            let at = lin.wrapping_add(done as u32);
            let Some(phys) = self.debug_translate(at) else {
                ok = false;
                break;
            };
            let in_page = PAGE_SIZE - (at as usize & (PAGE_SIZE - 1));
            let n = in_page.min(data.len() - done);
            self.mem.write(phys, &data[done..done + n]);
            if self.mem.is_protected(phys) {
                self.code_written(page_of(phys));
            }
            done += n;
        }
        self.clear_emu_cache();
        if self.mem.paging().enabled() {
            self.paging_changed(None, true);
        }
        ok
    }
}

/// Does string instruction `i` address through SI/DI and count in CX?
fn string_addr16(i: &Instruction) -> bool {
    use iced_x86::OpKind;
    (0..i.op_count()).any(|n| matches!(i.op_kind(n), OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI))
}

/// Run `f` with this thread's interval-timer signal blocked, so a step's
/// one-off block cannot be cut short by a poll before its instruction.
fn with_timer_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset operations on a local set; pthread_sigmask only changes
    // this thread's mask and is restored below.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signals::timer_signal());
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// The enabled execution breakpoints' linear addresses among `regs`
/// (DR0-3, then DR7).
pub(super) fn exec_breakpoints(regs: &[u32; 5]) -> Vec<u32> {
    let dr7 = regs[4];
    (0..4).filter(|&n| dr7 & (3 << (2 * n)) != 0 && (dr7 >> (16 + 4 * n)) & 0xF == 0).map(|n| regs[n]).collect()
}
