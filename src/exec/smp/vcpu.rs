//! One vCPU's side of a multiprocessor guest: safepoints, serving
//! requests, the code-page protocol, HLT and PAUSE, and an application
//! processor's interrupts (its local APIC is its only source).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::super::*;
use super::machine::{Machine, Request, VcpuCtx};
use crate::devices::chipset::lock;

/// PAUSEs between two yields of the host CPU (a PAUSE takes some tens of
/// nanoseconds: a spinning vCPU yields every few microseconds).
const PAUSES_PER_YIELD: u32 = 64;

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
    /// kick word; see `VcpuLink::kick`).
    pub(in crate::exec) fn smp_attach_thread(&mut self) {
        if let Some(v) = &self.vcpu {
            self.cpu.hot.kick = 0;
            self.cpu.hot.pause_left = PAUSES_PER_YIELD;
            self.sig.kick_mode = true;
            let link = &v.machine.vcpus[v.index];
            link.kick_at.store(&mut self.cpu.hot.kick as *mut u64 as u64, Ordering::Release);
        }
    }

    pub(in crate::exec) fn smp_detach_thread(&mut self) {
        if let Some(v) = &self.vcpu {
            v.machine.vcpus[v.index].kick_at.store(0, Ordering::Release);
        }
    }

    /// Clear the kick word (before looking at what a kick asked for: a
    /// later kick sets it again).
    pub(in crate::exec) fn unkick(&mut self) {
        // A zero word needs no store (and no fence): a kick after this
        // read sets it again, and the next block entry sees that.
        if self.sig.kick_mode {
            // SAFETY: our own HotState field, also stored by other threads.
            let kick = unsafe { AtomicU64::from_ptr(&mut self.cpu.hot.kick) };
            if kick.load(Ordering::Relaxed) != 0 {
                kick.store(0, Ordering::SeqCst);
            }
        }
    }

    /// At a safepoint: serve the mailbox, see whether the run is over, and
    /// wait for STARTUP while the vCPU is in that state. `Some` ends the run
    /// or asks the dispatcher to start over (the state changed).
    pub(in crate::exec) fn smp_safepoint(&mut self) -> Option<Step> {
        // Runs at every dispatch: plain loads unless something was asked.
        self.unkick();
        let v = self.vcpu.as_deref()?;
        let m = &*v.machine;
        let link = &m.vcpus[v.index];
        if m.stop.load(Ordering::Acquire) {
            return Some(Step::Done(RunOutcome::Stopped));
        }
        let bsp_dirty =
            v.index == 0 && m.chipset_dirty.load(Ordering::Relaxed) && m.chipset_dirty.swap(false, Ordering::AcqRel);
        let irq = link.irq_kick.load(Ordering::Relaxed) && link.irq_kick.swap(false, Ordering::AcqRel);
        let pending = link.pending.load(Ordering::Acquire);
        self.irq_dirty |= bsp_dirty || irq;
        let changed = pending && self.serve_requests();
        if self.vcpu.as_ref().is_some_and(|v| v.wait_sipi) {
            return Some(self.wait_for_sipi());
        }
        changed.then_some(Step::Continue)
    }

    /// Act on every posted request; true if the CPU state changed (INIT).
    pub(in crate::exec) fn serve_requests(&mut self) -> bool {
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
    pub(in crate::exec) fn protect_code_page(&mut self, page: u32) {
        if !self.mem.is_ram(page) {
            return;
        }
        let Some(v) = self.vcpu.as_ref() else {
            self.protect_code_page_alone(page);
            return;
        };
        if self.mem.is_protected(page) {
            return;
        }
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

    /// `protect_code_page` with one vCPU. A page written since its blocks
    /// were translated (`code_written`) is verified here: protected again
    /// first, then its blocks whose bytes changed are dropped, the rest kept.
    fn protect_code_page_alone(&mut self, page: u32) {
        if !self.mem.is_protected(page) {
            self.mem.set_code_protect(page, true);
            self.soft.flush_writes(&mut self.cpu.hot);
        }
        if self.cache.is_unverified(page) {
            let bytes = self.mem.ram().get(page as usize..page as usize + PAGE_SIZE).unwrap_or(&[]);
            let n = self.cache.verify_page(page, bytes, &mut self.cpu.hot);
            self.stats.invalidated_blocks += n as u64;
            self.stats.verified_pages += 1;
        }
    }

    /// The guest wrote code page `page`: every vCPU drops its translations
    /// of it before the store goes on. With one vCPU, blocks that recorded
    /// their bytes are only suspended until the page is next protected
    /// (`CodeCache::suspect_page`, `protect_code_page`): patching the
    /// kernel's text (ftrace's NOPs, alternatives, static keys) changes a
    /// few bytes of a page, and most of its blocks come out unchanged.
    pub(in crate::exec) fn code_written(&mut self, page: u32) {
        self.stats.smc_pages += 1;
        let Some(v) = self.vcpu.as_ref() else {
            self.clear_emu_cache();
            let n = self.cache.suspect_page(page, &mut self.cpu.hot);
            self.stats.invalidated_blocks += n as u64;
            self.mem.set_code_protect(page, false);
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
    pub(in crate::exec) fn may_unprotect_alone(&self) -> bool {
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
    pub(in crate::exec) fn smp_halt(&mut self, eip: u32, ie: bool) -> Step {
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
    /// machine: translated code counts PAUSEs down and leaves every
    /// `PAUSES_PER_YIELD`th time (`Translator::pause_gate`); the VMM then
    /// gives the host CPU away, so a vCPU spinning on a lock whose holder's
    /// thread the host descheduled (more vCPUs than host cores) lets it run
    /// instead of burning its time slice: the software form of pause-loop
    /// exiting.
    pub(in crate::exec) fn pause_spin(&mut self) {
        self.stats.pauses += PAUSES_PER_YIELD as u64;
        self.cpu.hot.pause_left = PAUSES_PER_YIELD;
        std::thread::yield_now();
    }

    /// With IF clear only an NMI ends a HLT (INIT and STARTUP come as requests).
    fn take_nmi_while_halted(&mut self) -> Option<Step> {
        let apic = self.cpu.apic.clone()?;
        if std::mem::take(&mut lock(&apic).nmi_pending) {
            self.nmi_pending = true;
        }
        self.deliver_pending_nmi()
    }

    /// Virtual time now (the chipset's clock, or the local APIC's).
    pub(in crate::exec) fn clock_now(&self) -> u64 {
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
    pub(in crate::exec) fn check_apic_interrupts(&mut self, arm_timer: bool) -> Option<Step> {
        let deliverable = self.intr_line && self.cpu.hot.vif != 0;
        if !self.irq_dirty && !deliverable && !self.time_due {
            return None;
        }
        let (intr, nmi, now, eois) = {
            let mut a = lock(self.cpu.apic.as_ref()?);
            let now = a.clock().now_ns();
            a.update(now);
            self.next_irq_check = a.next_event_ns().unwrap_or(u64::MAX);
            (a.pending().is_some(), std::mem::take(&mut a.nmi_pending), now, !a.level_eois.is_empty())
        };
        self.irq_dirty = false;
        self.time_due = false;
        if eois && let Some(v) = &self.vcpu {
            // The I/O APIC learns of level EOIs through the chipset.
            v.machine.chipset_dirty.store(true, Ordering::Release);
            v.machine.vcpus[0].kick();
        }
        self.nmi_pending |= nmi;
        self.take_interrupt(intr, now, arm_timer, |e| e.cpu.apic.as_ref().and_then(|a| lock(a).acknowledge()))
    }

    /// An application processor touched the chipset's devices (a port
    /// access): the bootstrap processor must look at them.
    pub(in crate::exec) fn note_device_access(&mut self) {
        if let Some(v) = &self.vcpu
            && v.index != 0
        {
            v.machine.chipset_dirty.store(true, Ordering::Release);
            v.machine.vcpus[0].kick();
        }
    }
}
