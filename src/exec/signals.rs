//! Host signals raised by translated code.
//!
//! A SIGSEGV/SIGBUS/SIGFPE/SIGILL whose RIP lies in the code cache is turned
//! into a FAULT exit: the handler finds the guest instruction the host RIP
//! belongs to (block by address, then the block's instruction map), repairs
//! host registers per the instruction's `Fixup`, records the fault and
//! points RIP at the `exit_fault` trampoline, which saves the (precise)
//! guest state and returns to the dispatcher. Anything else is handed to the
//! previous handler (Rust's stack-overflow detection) or the default action.
//!
//! The handler only reads data that the faulting thread owns and is not
//! modifying (it was running translated code), allocates nothing, and runs
//! on an alternate signal stack of `ALT_STACK_SIZE`.

use std::cell::Cell;
use std::sync::Once;

use crate::cache::CodeCache;
use crate::cpu::{HotState, RESUME_REGS};
use crate::memory::{POLL_PAGE_OFFSET, set_poll_page};
use crate::translate::Fixup;

/// `SignalCtx::poll_armed` with both windows' poll pages armed.
const POLL_BOTH: u8 = 0b11;

/// Alternate signal stack size per thread.
const ALT_STACK_SIZE: usize = 256 * 1024;
/// Signal of the per-thread interval timer that bounds time in chained code.
pub fn timer_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

/// What the handler saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultRecord {
    pub signo: i32,
    pub code: i32,
    pub addr: usize,
    pub write: bool,
    pub eip: u32,
    pub host_rip: usize,
}

/// Per-thread context the handler reads.
pub struct SignalCtx {
    pub cache: *const CodeCache,
    pub hot: *mut HotState,
    pub exit_fault: usize,
    /// The host return stack's guard page (`exec::return_stack`).
    pub rsb_guard: (usize, usize),
    /// How often a push into the guard emptied the return stack.
    pub rsb_resets: u64,
    /// Poll pages of the two windows.
    pub poll_pages: [usize; 2],
    /// Translated code is running (the timer must stop it through the poll
    /// page); otherwise the timer just records that it fired.
    pub in_guest: std::sync::atomic::AtomicBool,
    pub timer_fired: std::sync::atomic::AtomicBool,
    /// Which of `poll_pages` (bit k for page k) the timer made
    /// inaccessible, and no exit has made readable again (`disarm_poll`).
    pub poll_armed: std::sync::atomic::AtomicU8,
    /// Multiprocessor vCPUs test `HotState::kick` at each block entry: the
    /// timer sets it instead of changing the poll pages' protection.
    pub kick_mode: bool,
    pub fault: FaultRecord,
}

impl SignalCtx {
    /// Make the poll pages the timer armed readable again; whether any was.
    pub fn disarm_poll(&self) -> bool {
        let mask = self.poll_armed.swap(0, std::sync::atomic::Ordering::Relaxed);
        set_poll_pages(&self.poll_pages, mask, false);
        mask != 0
    }
}

/// Arm (`request_exit`) or disarm the poll pages among `pages` that `mask`
/// names (bit k for page k). Async-signal-safe: only `mprotect` calls.
fn set_poll_pages(pages: &[usize], mask: u8, request_exit: bool) {
    for (k, &p) in pages.iter().enumerate() {
        if mask & (1 << k) != 0 {
            set_poll_page(p, request_exit);
        }
    }
}

thread_local! {
    static CTX: Cell<*mut SignalCtx> = const { Cell::new(std::ptr::null_mut()) };
    static ALT_STACK: Cell<usize> = const { Cell::new(0) };
}

static INSTALL: Once = Once::new();
static mut OLD_ACTIONS: [Option<libc::sigaction>; 4] = [None; 4];
const SIGNALS: [libc::c_int; 4] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL];

/// Install the process-wide handlers (once).
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: installing handlers with a zeroed, filled-in sigaction;
        // OLD_ACTIONS is written only here, before any handler can run.
        unsafe {
            for (k, &sig) in SIGNALS.iter().enumerate() {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = handler_entry as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &sa, &mut old) == 0 {
                    OLD_ACTIONS[k] = Some(old);
                }
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = timer_handler_entry as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(timer_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Give this thread an alternate signal stack big enough for the handler.
pub fn ensure_alt_stack() {
    if ALT_STACK.with(|s| s.get()) != 0 {
        return;
    }
    // SAFETY: mapping a private stack and registering it; it stays mapped
    // for the life of the thread (recorded in ALT_STACK).
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            ALT_STACK_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return;
        }
        let ss = libc::stack_t { ss_sp: p, ss_flags: 0, ss_size: ALT_STACK_SIZE };
        if libc::sigaltstack(&ss, std::ptr::null_mut()) == 0 {
            ALT_STACK.with(|s| s.set(p as usize));
        } else {
            libc::munmap(p, ALT_STACK_SIZE);
        }
    }
}

/// Make `ctx` the current thread's context (null to clear).
pub fn set_current(ctx: *mut SignalCtx) {
    CTX.with(|c| c.set(ctx));
}

/// A signal handler's entry. The kernel enters a handler with RFLAGS.AC as
/// the interrupted code had it, and translated code of CPL 3 runs with AC
/// set when the guest asks for alignment checks (`HotState::ac_check`): the
/// entry clears it before any Rust code runs (which may access memory
/// misaligned). The interrupted context's flags, restored at sigreturn, keep
/// it.
///
/// ```text
/// pushfq ; and qword [rsp], ~AC ; popfq ; jmp handler
/// ```
macro_rules! signal_entry {
    ($(#[$doc:meta])* $name:ident => $target:ident) => {
        $(#[$doc])*
        // SAFETY (naked): the body only clears RFLAGS.AC on the stack the
        // kernel gave the handler and tail-jumps to the handler with its
        // arguments intact.
        #[unsafe(naked)]
        extern "C" fn $name(_sig: libc::c_int, _info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
            core::arch::naked_asm!(
                "pushfq",
                "and qword ptr [rsp], {mask}",
                "popfq",
                "jmp {h}",
                mask = const !(1i32 << 18),
                h = sym $target,
            )
        }
    };
}

signal_entry!(
    /// The entry of `handler` (faults).
    handler_entry => handler
);
signal_entry!(
    /// `handler_entry` for the timer signal.
    timer_handler_entry => timer_handler
);

extern "C" fn timer_handler(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let ctx = CTX.with(|c| c.get());
    if !ctx.is_null() {
        // SAFETY: ctx points at the running engine's SignalCtx; info and uc
        // come from the kernel.
        unsafe {
            use std::sync::atomic::Ordering::Relaxed;
            if !(*ctx).in_guest.load(Relaxed) {
                // In the VMM: it looks at the time before entering again.
                (*ctx).timer_fired.store(true, Relaxed);
                return;
            }
            if (*ctx).kick_mode {
                // The dispatcher looks at the time when the kick brings it
                // back (no poll fault tells it why it left).
                (*ctx).timer_fired.store(true, Relaxed);
                std::ptr::write_volatile(&mut (*(*ctx).hot).kick, 1);
            } else {
                // Only the poll page of the window the code runs in (R15:
                // translated code never changes it), unless the signal came
                // before the trampoline set it or during a callout: one
                // mprotect to arm and one to disarm instead of two each.
                let pages = (*ctx).poll_pages;
                let uc = &*(uc as *const libc::ucontext_t);
                let r15 = uc.uc_mcontext.gregs[libc::REG_R15 as usize] as isize;
                let live = (r15 + POLL_PAGE_OFFSET as isize) as usize;
                let mask = match pages.iter().position(|&p| p == live) {
                    Some(k) => 1 << k,
                    None => POLL_BOTH,
                };
                set_poll_pages(&pages, mask, true);
                (*ctx).poll_armed.fetch_or(mask, Relaxed);
            }
            // A long REP string instruction is stopped between iterations.
            redirect(&mut *ctx, sig, &*info, &mut *(uc as *mut libc::ucontext_t), true);
        }
    }
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: called by the kernel with valid siginfo/ucontext pointers;
    // ctx (if set) points at the live SignalCtx of this thread, whose cache
    // is not being mutated while translated code runs.
    unsafe {
        let ctx = CTX.with(|c| c.get());
        if ctx.is_null() || !redirect(&mut *ctx, sig, &*info, &mut *(uc as *mut libc::ucontext_t), false) {
            chain(sig, info, uc);
        }
    }
}

/// Turn a fault in translated code into a FAULT exit; false if not ours.
/// With `interrupt_only`, only a REP string instruction in progress is
/// stopped (the timer signal).
fn redirect(
    ctx: &mut SignalCtx,
    sig: libc::c_int,
    info: &libc::siginfo_t,
    uc: &mut libc::ucontext_t,
    interrupt_only: bool,
) -> bool {
    let g = &mut uc.uc_mcontext.gregs;
    let rip = g[libc::REG_RIP as usize] as usize;
    // SAFETY: see handler().
    let cache = unsafe { &*ctx.cache };
    let (lo, hi) = cache.rx_range();
    if rip < lo || rip >= hi {
        return false;
    }
    // SAFETY: si_addr is valid for the fault signals we handle (the timer
    // signal's is unused).
    let addr = if interrupt_only { 0 } else { (unsafe { info.si_addr() }) as usize };
    if sig == libc::SIGSEGV && (ctx.rsb_guard.0..ctx.rsb_guard.1).contains(&addr) {
        // Calls without returns filled the host return stack: empty it
        // (back to the sentinel) and let the push run again. Only host
        // return addresses and single push/pop pairs live on it, so
        // nothing in flight is lost.
        // SAFETY: hot is the running vCPU's state.
        let top = unsafe { (*ctx.hot).rsb_top } as i64;
        g[libc::REG_RSP as usize] = top - 8;
        ctx.rsb_resets += 1;
        return true;
    }
    let Some(block) = cache.block_at(rip) else {
        return false;
    };
    let off = (rip - block.host) as u32;
    let idx = block.insn_map.partition_point(|e| e.host_off <= off);
    let Some(entry) = idx.checked_sub(1).and_then(|k| block.insn_map.get(k)) else {
        return false;
    };
    if interrupt_only && entry.fixup != Fixup::RepString {
        return false;
    }
    // The raw host registers a resumed instruction needs back (before the
    // fixups below turn them into guest values for a delivered fault).
    // SAFETY: hot is the running vCPU's state.
    let hot = unsafe { &mut *ctx.hot };
    for (slot, r) in hot.resume_regs.iter_mut().zip(RESUME_REGS) {
        *slot = g[greg(r)] as u64;
    }
    hot.resume_rip = rip as u64;
    match entry.fixup {
        Fixup::None => {}
        Fixup::TruncStringPtrs | Fixup::RepString => {
            g[libc::REG_RSI as usize] &= 0xFFFF_FFFF;
            g[libc::REG_RDI as usize] &= 0xFFFF_FFFF;
        }
        Fixup::Restore { reg, from } => {
            g[greg(reg)] = g[greg(from)];
        }
    }
    if entry.esp_delta != 0 {
        // Stack updates the block defers: the guest's ESP is ahead of R12.
        let esp = &mut g[greg(crate::emit::reg::GUEST_ESP)];
        *esp = (*esp as u32).wrapping_add(entry.esp_delta as u32) as i64;
    }
    /// Page-fault error code bit: the access was a write.
    const PF_WRITE: i64 = 2;
    ctx.fault = FaultRecord {
        signo: sig,
        code: info.si_code,
        addr,
        write: g[libc::REG_ERR as usize] & PF_WRITE != 0,
        eip: entry.eip,
        host_rip: rip,
    };
    // SAFETY: hot is the running vCPU's state.
    unsafe { (*ctx.hot).eip = entry.eip };
    g[libc::REG_RIP as usize] = ctx.exit_fault as i64;
    true
}

/// The `gregs` index of a host register number.
fn greg(r: u8) -> usize {
    (match r {
        0 => libc::REG_RAX,
        1 => libc::REG_RCX,
        2 => libc::REG_RDX,
        3 => libc::REG_RBX,
        4 => libc::REG_RSP,
        5 => libc::REG_RBP,
        6 => libc::REG_RSI,
        7 => libc::REG_RDI,
        8 => libc::REG_R8,
        9 => libc::REG_R9,
        10 => libc::REG_R10,
        11 => libc::REG_R11,
        12 => libc::REG_R12,
        13 => libc::REG_R13,
        14 => libc::REG_R14,
        _ => libc::REG_R15,
    }) as usize
}

/// Pass a signal that is not ours to the previous handler or the default action.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let k = SIGNALS.iter().position(|&s| s == sig);
    // SAFETY: OLD_ACTIONS was filled before the handlers were installed.
    let old = unsafe { k.and_then(|k| (*std::ptr::addr_of!(OLD_ACTIONS))[k]) };
    // SAFETY: calling or restoring the previously installed disposition.
    unsafe {
        match old {
            Some(o) if o.sa_sigaction != libc::SIG_DFL && o.sa_sigaction != libc::SIG_IGN => {
                if o.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(o.sa_sigaction);
                    f(sig, info, uc);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(o.sa_sigaction);
                    f(sig);
                }
            }
            _ => {
                // Default action: re-raised when the faulting instruction re-executes.
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// A per-thread POSIX interval timer that requests an exit to the
/// dispatcher at a bounded interval, so chained code cannot keep it away.
pub struct IntervalTimer {
    id: libc::timer_t,
}

impl IntervalTimer {
    /// Fire once after `first_ns`, then every `interval_ns`.
    pub fn rearm(&self, first_ns: u64, interval_ns: u64) {
        let ts = |ns: u64| libc::timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as i64 };
        let spec = libc::itimerspec { it_interval: ts(interval_ns), it_value: ts(first_ns.max(1)) };
        // SAFETY: re-arming the timer created in start().
        unsafe {
            libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut());
        }
    }

    pub fn start(interval_ns: u64) -> Option<Self> {
        // SAFETY: creating a timer that signals this thread; checked result.
        unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = timer_signal();
            sev.sigev_notify_thread_id = libc::gettid();
            let mut id: libc::timer_t = std::mem::zeroed();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) != 0 {
                return None;
            }
            let ts = libc::timespec {
                tv_sec: (interval_ns / 1_000_000_000) as i64,
                tv_nsec: (interval_ns % 1_000_000_000) as i64,
            };
            let spec = libc::itimerspec { it_interval: ts, it_value: ts };
            libc::timer_settime(id, 0, &spec, std::ptr::null_mut());
            Some(IntervalTimer { id })
        }
    }
}

impl Drop for IntervalTimer {
    fn drop(&mut self) {
        // SAFETY: deleting the timer created in start().
        unsafe {
            libc::timer_delete(self.id);
        }
    }
}
