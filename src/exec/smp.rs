//! Multiprocessor guests: the machine-wide state the vCPU threads share,
//! the requests one vCPU makes of another, and the code-page protocol.
//!
//! Each virtual CPU is an `Engine` on its own host thread, with its own
//! view of guest RAM (`GuestMemory::new_view`: windows, shadow state, code
//! cache, jump caches, soft TLB) and its own local APIC. What they share is
//! [`Machine`]: every vCPU's APIC and mailbox, the lock that orders
//! code-page changes, and the run's end. A vCPU never touches another's
//! engine: it posts a [`Request`] to the other's mailbox and kicks its
//! thread (the timer signal, which brings chained code back to the
//! dispatcher through the poll page, and the condition variable a halted
//! vCPU sleeps on); the target acts at its next safepoint.
//!
//! Code pages. A physical page holding translations is write-protected in
//! *every* vCPU's windows, not only in those of the vCPUs that translated
//! it, so a store from any vCPU traps. The state of each page changes
//! only under `Machine::code_lock`, and synchronously:
//! - data → code (a vCPU is about to translate from it): the translating
//!   vCPU protects its own view, posts `Protect` to every other vCPU and
//!   waits until all have done it, and only then decodes the bytes;
//! - code → data (a store trapped, or the VMM wrote the page): the writing
//!   vCPU posts `Invalidate` to every other vCPU and waits until each has
//!   dropped its translations of the page and unprotected it, then does
//!   the same itself and lets the store go on.
//!
//! So no vCPU ever runs a translation of bytes another vCPU has since
//! changed: stricter than the SDM's cross-modifying-code rule, which only
//! promises the new code after the executing processor serialises.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::*;
use crate::devices::chipset::lock;
use crate::devices::lapic::{Ipi, IpiEffect, LocalApic};

/// What one vCPU asks of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Write-protect physical page (it holds code now).
    Protect(u32),
    /// Drop translations of physical page and unprotect it.
    Invalidate(u32),
    /// The INIT IPI.
    Init,
    /// The STARTUP IPI with its vector.
    Startup(u8),
}

/// One vCPU as the others see it.
pub struct VcpuLink {
    pub lapic: Arc<Mutex<LocalApic>>,
    mailbox: Mutex<Vec<(u64, Request)>>,
    /// Sequence numbers: requests posted, and the last one served.
    posted: AtomicU64,
    done: AtomicU64,
    pending: AtomicBool,
    /// An interrupt or NMI reached the vCPU's APIC since it last looked.
    irq_kick: AtomicBool,
    /// Where the vCPU's `HotState::poll_ptr` is, and the page a kick
    /// stores there (0 until the vCPU runs).
    poll_ptr: AtomicU64,
    kick_page: AtomicU64,
    /// Set by a kick; a halted vCPU sleeps on `wake_cv` until it is.
    wake: Mutex<bool>,
    wake_cv: Condvar,
}

impl VcpuLink {
    fn new(lapic: Arc<Mutex<LocalApic>>) -> Self {
        VcpuLink {
            lapic,
            mailbox: Mutex::new(Vec::new()),
            posted: AtomicU64::new(0),
            done: AtomicU64::new(0),
            pending: AtomicBool::new(false),
            irq_kick: AtomicBool::new(false),
            poll_ptr: AtomicU64::new(0),
            kick_page: AtomicU64::new(0),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
        }
    }

    /// Make the vCPU look at its mailbox and APIC soon: wake it if it
    /// sleeps, and point its poll at the inaccessible page (translated
    /// code leaves at the next block entry; no system call, no signal).
    /// The caller has already stored what the vCPU is to look at.
    pub fn kick(&self) {
        let at = self.poll_ptr.load(Ordering::Acquire);
        if at != 0 {
            // SAFETY: `at` is the address of the running vCPU's
            // HotState::poll_ptr (boxed, alive while it runs: cleared
            // before its engine stops running); an aligned 8-byte store,
            // which the vCPU's translated code reads with plain loads.
            unsafe { AtomicU64::from_ptr(at as *mut u64) }.store(self.kick_page.load(Ordering::Relaxed), Ordering::SeqCst);
        }
        let mut w = lock(&self.wake);
        *w = true;
        drop(w);
        self.wake_cv.notify_one();
    }

    /// An interrupt reached the vCPU's APIC: make it look.
    pub fn kick_interrupt(&self) {
        self.irq_kick.store(true, Ordering::Release);
        self.kick();
    }

    /// Post `r`; returns its sequence number.
    fn post(&self, r: Request) -> u64 {
        let seq = {
            let mut mb = lock(&self.mailbox);
            let seq = self.posted.fetch_add(1, Ordering::AcqRel) + 1;
            mb.push((seq, r));
            self.pending.store(true, Ordering::Release);
            seq
        };
        self.kick();
        seq
    }

    /// Sleep until kicked, at most `timeout`.
    fn park(&self, timeout: Duration) {
        let mut w = lock(&self.wake);
        if !*w {
            w = match self.wake_cv.wait_timeout(w, timeout) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        *w = false;
    }
}

/// The state all vCPUs of a machine share.
pub struct Machine {
    pub vcpus: Vec<VcpuLink>,
    /// Orders code-page state changes (see the module comment).
    code_lock: Mutex<()>,
    /// The run is over (one vCPU ended it): the others stop.
    pub stop: AtomicBool,
    /// vCPUs that wait with nothing that could wake them but another vCPU
    /// (halted with IF clear, or for STARTUP); when all do, the run ends.
    idle_forever: AtomicUsize,
    /// An application processor touched a device: the bootstrap processor,
    /// which owns the chipset, must look at it.
    pub chipset_dirty: AtomicBool,
}

impl Machine {
    /// A machine whose CPU `i` has local APIC `lapics[i]`.
    pub fn new(lapics: Vec<Arc<Mutex<LocalApic>>>) -> Arc<Self> {
        let n = lapics.len();
        Arc::new(Machine {
            vcpus: lapics.into_iter().map(VcpuLink::new).collect(),
            code_lock: Mutex::new(()),
            stop: AtomicBool::new(false),
            // The application processors start waiting for STARTUP.
            idle_forever: AtomicUsize::new(n.saturating_sub(1)),
            chipset_dirty: AtomicBool::new(false),
        })
    }

    /// End the run for every vCPU.
    pub fn stop_all(&self) {
        self.stop.store(true, Ordering::Release);
        for v in &self.vcpus {
            v.kick();
        }
    }

    /// Deliver IPIs sent by CPU `from` to every CPU they name.
    pub fn route(&self, from: usize, ipis: &[Ipi]) {
        for ipi in ipis {
            for (j, v) in self.vcpus.iter().enumerate() {
                let effect = {
                    let mut a = lock(&v.lapic);
                    if !a.targeted_by(ipi, j == from) {
                        continue;
                    }
                    a.take_ipi(ipi)
                };
                match effect {
                    IpiEffect::None => {}
                    IpiEffect::Interrupt => v.kick_interrupt(),
                    IpiEffect::Init => {
                        v.post(Request::Init);
                    }
                    IpiEffect::Startup(vector) => {
                        v.post(Request::Startup(vector));
                    }
                }
                // Lowest priority: the first CPU named takes it (all run at
                // the same priority class in practice).
                if ipi.lowest_priority() && effect == IpiEffect::Interrupt {
                    break;
                }
            }
        }
    }
}

/// A vCPU's own link to its machine.
pub struct VcpuCtx {
    pub index: usize,
    pub machine: Arc<Machine>,
    /// Waiting for STARTUP (after INIT, or an application processor from
    /// power-on).
    pub wait_sipi: bool,
    /// Counted in `Machine::idle_forever`.
    idle_counted: bool,
}

impl VcpuCtx {
    pub fn new(index: usize, machine: Arc<Machine>) -> Self {
        let ap = index != 0;
        VcpuCtx { index, machine, wait_sipi: ap, idle_counted: ap }
    }
}

/// The local APIC's register page of one vCPU of a multiprocessor machine:
/// IPIs its ICR sends are routed to the machine's CPUs once its own lock is
/// released (two CPUs may send to each other at once).
pub struct LapicPage {
    pub index: usize,
    pub machine: Arc<Machine>,
}

impl crate::memory::MmioDevice for LapicPage {
    fn read(&mut self, offset: u32, size: u8) -> u32 {
        let v = lock(&self.machine.vcpus[self.index].lapic).read(offset & !3) >> ((offset & 3) * 8);
        if size >= 4 { v } else { v & ((1u32 << (size * 8)) - 1) }
    }

    fn write(&mut self, offset: u32, size: u8, value: u32) {
        if size != 4 || offset & 3 != 0 {
            crate::guest_warn!("local APIC: {size}-byte write at {offset:#x} ignored (registers are 32-bit)");
            return;
        }
        let out = {
            let mut a = lock(&self.machine.vcpus[self.index].lapic);
            a.write(offset, value);
            std::mem::take(&mut a.outbox)
        };
        if !out.is_empty() {
            self.machine.route(self.index, &out);
        }
    }
}

impl Engine {
    /// Join machine `machine` as its CPU `index`.
    pub fn join_machine(&mut self, index: usize, machine: Arc<Machine>) {
        self.cpu.apic = Some(machine.vcpus[index].lapic.clone());
        self.vcpu = Some(Box::new(VcpuCtx::new(index, machine)));
        if index != 0 {
            self.cpu.init_reset();
        }
    }

    /// This thread runs the vCPU: others may kick it now (through its
    /// poll pointer; see `VcpuLink::kick`).
    pub(super) fn smp_attach_thread(&mut self) {
        if let Some(v) = &self.vcpu {
            let (poll, kick) = self.mem.poll_and_kick_pages();
            self.cpu.hot.poll_ptr = poll as u64;
            self.sig.kick_page = kick;
            let link = &v.machine.vcpus[v.index];
            link.kick_page.store(kick as u64, Ordering::Relaxed);
            link.poll_ptr.store(&mut self.cpu.hot.poll_ptr as *mut u64 as u64, Ordering::Release);
        }
    }

    pub(super) fn smp_detach_thread(&mut self) {
        if let Some(v) = &self.vcpu {
            v.machine.vcpus[v.index].poll_ptr.store(0, Ordering::Release);
        }
    }

    /// Point the poll back at the readable page (before looking at what
    /// a kick asked for: a later kick stores the inaccessible one again).
    pub(super) fn unkick(&mut self) {
        if self.sig.kick_page != 0 {
            let (poll, _) = self.mem.poll_and_kick_pages();
            // SAFETY: our own HotState field, also stored by other threads.
            unsafe { AtomicU64::from_ptr(&mut self.cpu.hot.poll_ptr) }.store(poll as u64, Ordering::SeqCst);
        }
    }

    /// At a safepoint: serve the mailbox, see whether the run is over, and
    /// wait for STARTUP while the vCPU is in that state. `Some` ends the run
    /// or asks the dispatcher to start over (the state changed).
    pub(super) fn smp_safepoint(&mut self) -> Option<Step> {
        self.vcpu.as_ref()?;
        self.unkick();
        let v = self.vcpu.as_ref()?;
        let m = v.machine.clone();
        let link = &m.vcpus[v.index];
        if m.stop.load(Ordering::Acquire) {
            return Some(Step::Done(RunOutcome::Stopped));
        }
        let bsp_dirty = v.index == 0 && m.chipset_dirty.swap(false, Ordering::AcqRel);
        if bsp_dirty || link.irq_kick.swap(false, Ordering::AcqRel) {
            self.irq_dirty = true;
        }
        let mut changed = false;
        if link.pending.load(Ordering::Acquire) {
            changed = self.serve_requests();
        }
        if self.vcpu.as_ref().is_some_and(|v| v.wait_sipi) {
            return Some(self.wait_for_sipi());
        }
        changed.then_some(Step::Continue)
    }

    /// Act on every posted request; true if the CPU state changed (INIT).
    pub(super) fn serve_requests(&mut self) -> bool {
        self.serve_requests_in(true)
    }

    /// `serve_requests`; without `at_safepoint` (in the middle of a
    /// translation or a fault) INIT and STARTUP stay posted for the next
    /// safepoint: the CPU state must not change under the caller.
    fn serve_requests_in(&mut self, at_safepoint: bool) -> bool {
        let Some(v) = self.vcpu.as_ref() else { return false };
        let m = v.machine.clone();
        let link = &m.vcpus[v.index];
        if !link.pending.swap(false, Ordering::AcqRel) {
            return false;
        }
        let reqs = std::mem::take(&mut *lock(&link.mailbox));
        let mut changed = false;
        let mut last = 0;
        let mut deferred = Vec::new();
        for (seq, r) in reqs {
            if !at_safepoint && matches!(r, Request::Init | Request::Startup(_)) {
                deferred.push((seq, r));
                continue;
            }
            match r {
                Request::Protect(page) => {
                    self.mem.set_code_protect(page, true);
                    self.soft.flush_writes(&mut self.cpu.hot);
                }
                Request::Invalidate(page) => self.drop_page_code(page),
                Request::Init => {
                    self.cpu.init_reset();
                    lock(&link.lapic).reset_registers();
                    self.nmi_pending = false;
                    self.nmi_blocked = false;
                    self.intr_line = false;
                    if let Some(v) = self.vcpu.as_mut() {
                        v.wait_sipi = true;
                    }
                    changed = true;
                }
                Request::Startup(vector) => {
                    if let Some(v) = self.vcpu.as_mut().filter(|v| v.wait_sipi) {
                        v.wait_sipi = false;
                        self.cpu.start_up(vector);
                        changed = true;
                    }
                }
            }
            last = seq;
        }
        if !deferred.is_empty() {
            let mut mb = lock(&link.mailbox);
            deferred.append(&mut mb);
            *mb = deferred;
            link.pending.store(true, Ordering::Release);
        }
        link.done.fetch_max(last, Ordering::AcqRel);
        changed
    }

    /// Drop this vCPU's translations of physical page `page` and its
    /// write protection.
    fn drop_page_code(&mut self, page: u32) {
        self.clear_emu_cache();
        let n = self.cache.invalidate_page(page, &mut self.cpu.hot);
        self.stats.invalidated_blocks += n as u64;
        self.mem.set_code_protect(page, false);
    }

    /// Take the code-page lock, serving requests while another vCPU holds it.
    fn lock_code<'m>(&mut self, m: &'m Machine) -> std::sync::MutexGuard<'m, ()> {
        loop {
            match m.code_lock.try_lock() {
                Ok(g) => return g,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    self.serve_requests_in(false);
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Post `r` to every other vCPU and wait until each has served it.
    fn broadcast_and_wait(&mut self, m: &Machine, me: usize, r: Request) {
        let seqs: Vec<(usize, u64)> =
            m.vcpus.iter().enumerate().filter(|&(j, _)| j != me).map(|(j, v)| (j, v.post(r))).collect();
        let mut spins = 0u32;
        while !seqs.iter().all(|&(j, s)| m.vcpus[j].done.load(Ordering::Acquire) >= s) {
            if m.stop.load(Ordering::Acquire) {
                return;
            }
            self.serve_requests_in(false);
            spins += 1;
            if spins.is_multiple_of(1024) {
                // A target that missed its kick (it was between checks).
                for &(j, s) in &seqs {
                    if m.vcpus[j].done.load(Ordering::Acquire) < s {
                        m.vcpus[j].kick();
                    }
                }
            }
            std::thread::yield_now();
        }
    }

    /// Physical page `page` is about to be translated from: write-protect
    /// it in every vCPU's view first (with one vCPU, just in this one).
    pub(super) fn protect_code_page(&mut self, page: u32) {
        if !self.mem.is_ram(page) || self.mem.is_protected(page) {
            return;
        }
        let Some(v) = self.vcpu.as_ref() else {
            self.mem.set_code_protect(page, true);
            self.soft.flush_writes(&mut self.cpu.hot);
            return;
        };
        let (m, me) = (v.machine.clone(), v.index);
        let _g = self.lock_code(&m);
        // Another vCPU may have protected it meanwhile (we served that).
        if self.mem.is_protected(page) {
            return;
        }
        self.mem.set_code_protect(page, true);
        self.soft.flush_writes(&mut self.cpu.hot);
        self.broadcast_and_wait(&m, me, Request::Protect(page));
    }

    /// The guest wrote code page `page`: every vCPU drops its translations
    /// of it before the store goes on (one vCPU: just this one).
    pub(super) fn code_written(&mut self, page: u32) {
        self.stats.smc_pages += 1;
        let Some(v) = self.vcpu.as_ref() else {
            self.drop_page_code(page);
            return;
        };
        let (m, me) = (v.machine.clone(), v.index);
        let _g = self.lock_code(&m);
        if !self.mem.is_protected(page) {
            // Another vCPU's write did it meanwhile.
            return;
        }
        self.broadcast_and_wait(&m, me, Request::Invalidate(page));
        self.drop_page_code(page);
    }

    /// May this vCPU drop the write protection of a page it has no more
    /// code on? Only with one vCPU: others may still have translations.
    pub(super) fn may_unprotect_alone(&self) -> bool {
        self.vcpu.is_none()
    }

    /// Wait for STARTUP (or the end of the run), serving requests.
    fn wait_for_sipi(&mut self) -> Step {
        loop {
            let Some(v) = self.vcpu.as_ref() else { return Step::Continue };
            let m = v.machine.clone();
            let link = &m.vcpus[v.index];
            if !v.wait_sipi {
                return Step::Continue;
            }
            if m.stop.load(Ordering::Acquire) {
                return Step::Done(RunOutcome::Stopped);
            }
            if !self.set_idle_forever(true) {
                return Step::Done(RunOutcome::Halted { eip: self.cpu.hot.eip, interrupts_enabled: false });
            }
            link.park(Duration::from_millis(100));
            self.serve_requests();
            if !self.vcpu.as_ref().is_some_and(|v| v.wait_sipi) {
                self.set_idle_forever(false);
                return Step::Continue;
            }
        }
    }

    /// Count this vCPU in (or out of) those waiting for ever; false if it
    /// is the last: nothing can wake any vCPU again, the run is over.
    fn set_idle_forever(&mut self, idle: bool) -> bool {
        let Some(v) = self.vcpu.as_mut() else { return true };
        if v.idle_counted == idle {
            return true;
        }
        v.idle_counted = idle;
        let m = &v.machine;
        if idle {
            let n = m.idle_forever.fetch_add(1, Ordering::AcqRel) + 1;
            return n < m.vcpus.len();
        }
        m.idle_forever.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// HLT on a vCPU of a multiprocessor machine: sleep until an interrupt
    /// (IF set) or an NMI, INIT or STARTUP (either way) wakes it.
    pub(super) fn smp_halt(&mut self, eip: u32, ie: bool) -> Step {
        /// Longest single sleep (the chipset's input and deadlines are
        /// looked at at least this often).
        const MAX_NAP: Duration = Duration::from_millis(5);
        self.io.flush();
        loop {
            if let Some(step) = self.smp_safepoint() {
                self.set_idle_forever(false);
                return step;
            }
            let Some(v) = self.vcpu.as_ref() else { return Step::Continue };
            let (m, index) = (v.machine.clone(), v.index);
            self.irq_dirty = true;
            if ie {
                if let Some(step) = self.check_interrupts(false) {
                    self.set_idle_forever(false);
                    return step;
                }
            } else if let Some(step) = self.take_nmi_while_halted() {
                self.set_idle_forever(false);
                return step;
            }
            // What could wake this vCPU without another vCPU's help.
            let next = self.next_deadline_ns();
            let own_wakeup = ie && (next.is_some() || self.chipset.as_mut().is_some_and(|c| c.has_input()));
            if !own_wakeup && !self.set_idle_forever(true) {
                return Step::Done(RunOutcome::Halted { eip, interrupts_enabled: ie });
            }
            if own_wakeup {
                self.set_idle_forever(false);
            }
            let now = self.clock_now();
            let nap = next.map_or(MAX_NAP, |t| Duration::from_nanos(t.saturating_sub(now).max(1_000)));
            self.stats.halt_sleeps += 1;
            m.vcpus[index].park(nap.min(MAX_NAP));
        }
    }

    /// PAUSE (a spin-wait loop's hint) on a vCPU of a multiprocessor
    /// machine: every `PAUSES_PER_YIELD`th gives the host CPU away, so a
    /// vCPU spinning on a lock whose holder's thread the host descheduled
    /// (more vCPUs than host cores) lets it run instead of burning its time
    /// slice: the software form of pause-loop exiting.
    pub(super) fn pause_spin(&mut self) {
        /// PAUSEs between yields (each costs an exit, about 0.2 us).
        const PAUSES_PER_YIELD: u64 = 16;
        self.stats.pauses += 1;
        if self.stats.pauses.is_multiple_of(PAUSES_PER_YIELD) {
            std::thread::yield_now();
        }
    }

    /// With IF clear only an NMI ends a HLT (INIT and STARTUP come as requests).
    fn take_nmi_while_halted(&mut self) -> Option<Step> {
        let apic = self.cpu.apic.clone()?;
        if std::mem::take(&mut lock(&apic).nmi_pending) {
            self.nmi_pending = true;
        }
        if self.nmi_pending && !self.nmi_blocked {
            self.nmi_pending = false;
            self.nmi_blocked = true;
            let eip = self.cpu.hot.eip;
            return Some(self.raise(Exception::new(vector::NMI), EventKind::External, eip));
        }
        None
    }

    /// Virtual time now (the chipset's clock, or the local APIC's).
    pub(super) fn clock_now(&self) -> u64 {
        if let Some(cs) = &self.chipset {
            return cs.clock.now_ns();
        }
        self.cpu.apic.as_ref().map_or(0, |a| lock(a).clock().now_ns())
    }

    /// The next device deadline this vCPU must wake for.
    fn next_deadline_ns(&mut self) -> Option<u64> {
        let now = self.clock_now();
        if let Some(cs) = &self.chipset {
            return cs.next_event_ns(now);
        }
        self.cpu.apic.as_ref().and_then(|a| lock(a).next_event_ns())
    }

    /// An application processor's interrupt check: its local APIC is its
    /// only source (the I/O APIC's messages reach it through the bootstrap
    /// processor's chipset). Same contract as `check_interrupts`.
    pub(super) fn check_apic_interrupts(&mut self, arm_timer: bool) -> Option<Step> {
        let apic = self.cpu.apic.clone()?;
        let deliverable = self.intr_line && self.cpu.hot.vif != 0;
        if !self.irq_dirty && !deliverable && !self.time_due {
            return None;
        }
        self.irq_dirty = false;
        self.time_due = false;
        let (intr, nmi, now, eois) = {
            let mut a = lock(&apic);
            let now = a.clock().now_ns();
            a.update(now);
            self.next_irq_check = a.next_event_ns().unwrap_or(u64::MAX);
            (a.pending().is_some(), std::mem::take(&mut a.nmi_pending), now, !a.level_eois.is_empty())
        };
        if eois && let Some(v) = &self.vcpu {
            // The I/O APIC learns of level EOIs through the chipset.
            v.machine.chipset_dirty.store(true, Ordering::Release);
            v.machine.vcpus[0].kick();
        }
        if nmi {
            self.nmi_pending = true;
        }
        self.intr_line = intr;
        self.cpu.hot.intr_pending = u32::from(intr);
        if arm_timer {
            self.arm_deadline_timer(now, intr);
        }
        if self.nmi_pending && !self.nmi_blocked {
            self.nmi_pending = false;
            self.nmi_blocked = true;
            self.irq_dirty = true;
            let eip = self.cpu.hot.eip;
            return Some(self.raise(Exception::new(vector::NMI), EventKind::External, eip));
        }
        if !intr || self.cpu.hot.vif == 0 {
            return None;
        }
        let v = lock(&apic).acknowledge()?;
        self.irq_dirty = true;
        self.cpu.hot.intr_pending = 0;
        self.stats.interrupts += 1;
        let eip = self.cpu.hot.eip;
        Some(self.raise(Exception::new(v), EventKind::External, eip))
    }

    /// An application processor touched the chipset's devices (a port
    /// access): the bootstrap processor must look at them.
    pub(super) fn note_device_access(&mut self) {
        if let Some(v) = &self.vcpu
            && v.index != 0
        {
            v.machine.chipset_dirty.store(true, Ordering::Release);
            v.machine.vcpus[0].kick();
        }
    }
}

/// Build a machine of `engines.len()` vCPUs: every engine but the first is
/// a fresh one over its own view of the first's memory. Each gets its own
/// local APIC (at the default base, in its own view) and a port bus that
/// forwards to the first's devices; the chipset (owned by the first)
/// delivers I/O APIC messages to all of them.
pub fn make_machine(bsp: &mut Engine, count: usize, opts: EngineOptions) -> Result<Vec<Engine>, crate::vm::VmError> {
    use crate::devices::lapic::{APIC_DEFAULT_BASE, LocalApic};
    use crate::devices::{PortBus, SharedBus};
    let Some(clock) = bsp.chipset.as_ref().map(|c| c.clock.clone()) else {
        return Err(crate::vm::VmError::SmpNeedsPc);
    };
    let lapics: Vec<_> =
        (0..count).map(|i| Arc::new(Mutex::new(LocalApic::for_cpu(clock.clone(), i as u32)))).collect();
    let machine = Machine::new(lapics.clone());
    let shared = SharedBus(Arc::new(Mutex::new(std::mem::take(&mut bsp.io))));
    bsp.io = PortBus::shared_view(&shared);
    bsp.mem.set_views(count);
    let mut aps = Vec::new();
    for i in 1..count {
        let mut mem = bsp.mem.new_view(count)?;
        mem.replace_mmio(APIC_DEFAULT_BASE, Box::new(LapicPage { index: i, machine: machine.clone() }));
        let mut e = Engine::new(mem, PortBus::shared_view(&shared), opts)?;
        e.cpu.tsc_clock = bsp.cpu.tsc_clock.clone();
        e.join_machine(i, machine.clone());
        aps.push(e);
    }
    bsp.mem.replace_mmio(APIC_DEFAULT_BASE, Box::new(LapicPage { index: 0, machine: machine.clone() }));
    bsp.join_machine(0, machine.clone());
    if let Some(cs) = bsp.chipset.as_mut() {
        cs.lapic = Some(lapics[0].clone());
        cs.lapics = lapics;
        let m = machine.clone();
        cs.kick = Some(Box::new(move |j| m.vcpus[j].kick_interrupt()));
    }
    Ok(aps)
}

/// Run every vCPU of a machine to the end of the run: `engines[0]` (the
/// bootstrap processor) on this thread, each other on a thread of its own.
/// The first vCPU to end the run decides its outcome.
pub fn run_machine(engines: &mut [Engine]) -> RunOutcome {
    let Some(machine) = engines.first().and_then(|e| e.vcpu.as_ref()).map(|v| v.machine.clone()) else {
        return match engines.first_mut() {
            Some(e) => e.run(),
            None => RunOutcome::InternalError("a machine without CPUs".into()),
        };
    };
    let first: Mutex<Option<RunOutcome>> = Mutex::new(None);
    let finish = |out: RunOutcome| {
        if out != RunOutcome::Stopped {
            let mut f = lock(&first);
            if f.is_none() {
                *f = Some(out);
            }
        }
        machine.stop_all();
    };
    let (bsp, aps) = engines.split_at_mut(1);
    std::thread::scope(|s| {
        for (k, e) in aps.iter_mut().enumerate() {
            let spawned = std::thread::Builder::new().name(format!("vcpu{}", k + 1)).spawn_scoped(s, || finish(e.run()));
            if let Err(err) = spawned {
                finish(RunOutcome::InternalError(format!("cannot start a vCPU thread: {err}")));
            }
        }
        finish(bsp[0].run());
    });
    lock(&first).take().unwrap_or(RunOutcome::Stopped)
}
