//! Interrupt delivery: looking at the chipset, arming the interval timer
//! for the next device deadline, HLT, and raising exceptions and
//! interrupts through the guest's IDT.

use super::*;

/// Timer events (a signal or the poll exit it causes, every few ms)
/// between reviews of the soft instructions' hit counts: a window long
/// enough to hold both a loop's misses and its hits.
const SOFT_REVIEW_FIRES: u32 = 4;

impl Engine {
    /// Deliver a pending external interrupt if IF allows and the chipset
    /// (looked at only when a timer is due or a port write touched it) has one.
    /// `arm_timer`: re-arm the interval timer for the next deadline (not
    /// while halted: the halt loop sleeps until then itself).
    pub(super) fn check_interrupts(&mut self, arm_timer: bool) -> Option<Step> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.sig.timer_fired.swap(false, Relaxed) {
            self.time_due = true;
        }
        // The timer's signal protected the poll page while translated code
        // ran, and the code left some other way before a block's poll (a
        // soft string's yield, any exit; leaf returns have no poll): look at
        // the time now, as the poll would have.
        if !self.sig.kick_mode && self.sig.poll_armed.load(Relaxed) != 0 && self.sig.disarm_poll() {
            self.time_due = true;
        }
        if self.time_due {
            // The timer signal, or the poll it makes translated code take.
            self.timer_fires = self.timer_fires.wrapping_add(1);
            if self.timer_fires.is_multiple_of(SOFT_REVIEW_FIRES) {
                self.review_soft();
            }
        }
        let deliverable = self.intr_line && self.cpu.hot.vif != 0;
        // Reading the clock costs ~20 ns: only when the timer fired (at a
        // device deadline), a port access touched the chipset, or an
        // asserted INTR may now be accepted. icount runs check every block.
        if !self.irq_dirty && !deliverable && !self.time_due && !self.opts.icount {
            return None;
        }
        let Some(cs) = self.chipset.as_mut() else {
            return self.check_apic_interrupts(arm_timer);
        };
        // With no timer armed, a look caused by a port access needs no fresh
        // time (no timer edge can be due); the last reading stands in.
        let timers_idle = self.next_irq_check == u64::MAX && !self.opts.icount;
        let mut now = if timers_idle && self.irq_dirty { self.last_now } else { cs.clock.now_ns() };
        self.last_now = now;
        if !self.irq_dirty && !deliverable && now < self.next_irq_check {
            self.time_due = false;
            // The timer fired before the deadline (its periodic backstop, or
            // an expiry set for an earlier deadline): aim it at the deadline,
            // or the next tick would wait for the backstop, up to
            // POLL_INTERVAL_NS late.
            if arm_timer {
                self.arm_deadline_timer(now);
            }
            return None;
        }
        self.irq_dirty = false;
        self.time_due = false;
        let intr = cs.update(now);
        if cs.take_nmi() {
            self.nmi_pending = true;
        }
        self.next_irq_check = cs.next_event_ns(now).unwrap_or(u64::MAX);
        if timers_idle && self.next_irq_check != u64::MAX {
            // The access just armed a timer: deadlines need the real time.
            now = cs.clock.now_ns();
            self.last_now = now;
        }
        if cs.input_pending() {
            self.irq_dirty = true;
        }
        self.take_interrupt(intr, now, arm_timer, |e| e.chipset.as_mut().map(|c| c.acknowledge()))
    }

    /// After a look at the interrupt sources (`next_irq_check` updated):
    /// note whether INTR is asserted, re-arm the interval timer (with
    /// `arm_timer`), then deliver a pending NMI, or the interrupt that
    /// `acknowledge` (INTA) yields if IF allows. With IF clear, `intr_line`
    /// makes the next dispatch with IF set look again.
    pub(super) fn take_interrupt(
        &mut self,
        intr: bool,
        now: u64,
        arm_timer: bool,
        acknowledge: impl FnOnce(&mut Self) -> Option<u8>,
    ) -> Option<Step> {
        self.intr_line = intr;
        self.cpu.hot.intr_pending = u32::from(intr);
        if arm_timer {
            self.arm_deadline_timer(now);
        }
        if let Some(step) = self.deliver_pending_nmi() {
            return Some(step);
        }
        if !intr || self.cpu.hot.vif == 0 {
            return None;
        }
        let v = acknowledge(self)?;
        self.irq_dirty = true; // more may be pending
        self.cpu.hot.intr_pending = 0;
        self.stats.interrupts += 1;
        let eip = self.cpu.hot.eip;
        Some(self.raise(Exception::new(v), EventKind::External, eip))
    }

    /// Deliver a pending NMI unless NMIs are blocked: NMIs ignore IF; the
    /// next one waits for the handler's IRET.
    pub(super) fn deliver_pending_nmi(&mut self) -> Option<Step> {
        if !self.nmi_pending || self.nmi_blocked {
            return None;
        }
        self.nmi_pending = false;
        self.nmi_blocked = true;
        self.irq_dirty = true;
        let eip = self.cpu.hot.eip;
        Some(self.raise(Exception::new(vector::NMI), EventKind::External, eip))
    }

    /// Points the interval timer at the next device deadline so chained
    /// code comes back in time for it (within POLL_INTERVAL_NS in any case).
    /// An interrupt that IF holds back needs no earlier look: every way
    /// translated code sets IF leaves for the dispatcher while
    /// `HotState::intr_pending` says INTR is up (STI and POPF through
    /// `Translator::interrupt_window_check`, IRET and task switches as VMM
    /// callouts). Polling for it instead cost Linux's boot 14k timer signals
    /// while the BIOS's 18.2 Hz tick waited through the decompressor.
    pub(super) fn arm_deadline_timer(&mut self, now: u64) {
        let Some(t) = self.timer.as_ref() else { return };
        let first = self.next_irq_check.saturating_sub(now).min(POLL_INTERVAL_NS);
        // Re-arming is a costly syscall: only when it moves the expiry
        // earlier, or the expiry it was set for has passed.
        let want = now.saturating_add(first);
        if want < self.timer_expiry || self.timer_expiry <= now {
            t.rearm(first, POLL_INTERVAL_NS);
            self.timer_expiry = want;
        }
    }

    /// HLT with IF set: sleep (or, with icount, skip time) until a device
    /// raises an interrupt, then deliver it.
    pub(super) fn halt_until_interrupt(&mut self, eip: u32) -> Step {
        /// Longest single sleep, so host input is noticed promptly.
        const MAX_NAP_NS: u64 = 5_000_000;
        let icount = self.opts.icount;
        // An idle guest (a shell at its prompt) shows its partial line now.
        self.io.flush();
        // The debugger's stop flag, read while the chipset is borrowed.
        let stop = self.debug.as_ref().map(|d| d.stop.clone());
        let stop_requested = || stop.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed));
        loop {
            if stop_requested() {
                return Step::Done(RunOutcome::DebugStop(DebugStop::Interrupted));
            }
            if icount {
                self.rr_point();
            }
            self.irq_dirty = true;
            if let Some(step) = self.check_interrupts(false) {
                return step;
            }
            let Some(cs) = self.chipset.as_mut() else {
                return Step::Done(RunOutcome::Halted { eip, interrupts_enabled: true });
            };
            let now = cs.clock.now_ns();
            let next = cs.next_event_ns(now);
            if icount {
                // Deterministic: the clock always jumps to the next device
                // deadline. With a host input source (an interactive run,
                // or one being recorded) the jump first waits that long in
                // real time, so the guest's idle time passes as it would
                // (QEMU's sleep=on); new input cuts the wait short. Waiting
                // counts no point: input that comes then is fed at the next.
                let real_time = cs.has_input() && !cs.replaying();
                match next {
                    Some(t) => {
                        if real_time {
                            let start = std::time::Instant::now();
                            let wait = std::time::Duration::from_nanos(t.saturating_sub(now));
                            while start.elapsed() < wait && !cs.input_pending() && !stop_requested() {
                                let left = wait.saturating_sub(start.elapsed());
                                std::thread::sleep(left.min(std::time::Duration::from_nanos(MAX_NAP_NS)));
                            }
                            self.stats.halt_sleeps += 1;
                        }
                        cs.clock.advance_to_ns(t.max(now + 1));
                    }
                    // A recording still has input to feed: the next point.
                    None if cs.replaying() && cs.has_input() => {}
                    None if real_time => {
                        while !cs.input_pending() && cs.has_input() && !stop_requested() {
                            std::thread::sleep(std::time::Duration::from_nanos(MAX_NAP_NS));
                        }
                        if !cs.has_input() {
                            return Step::Done(RunOutcome::Halted { eip, interrupts_enabled: true });
                        }
                    }
                    None => return Step::Done(RunOutcome::Halted { eip, interrupts_enabled: true }),
                }
                continue;
            }
            if next.is_none() && !cs.has_input() {
                // Nothing can ever wake the CPU.
                return Step::Done(RunOutcome::Halted { eip, interrupts_enabled: true });
            }
            let nap = next.map_or(MAX_NAP_NS, |t| t.saturating_sub(now)).min(MAX_NAP_NS);
            self.stats.halt_sleeps += 1;
            std::thread::sleep(std::time::Duration::from_nanos(nap.max(1)));
        }
    }

    /// Under icount, one more deterministic point at which the devices are
    /// looked at (input is recorded and replayed by these points).
    pub(super) fn rr_point(&mut self) {
        if let Some(cs) = &mut self.chipset {
            cs.rr_point += 1;
        }
    }

    /// `-d int`: the event about to be delivered and the state before it,
    /// in QEMU's form (QEMU logs protected-mode events only).
    fn log_interrupt(&mut self, e: &Exception, kind: EventKind) {
        use crate::cpu::{SEG_CS, SEG_SS};
        let cpu = &self.cpu;
        let eip = cpu.hot.eip;
        let mut l = String::new();
        if kind == EventKind::External {
            l += &format!("Servicing hardware INT=0x{:02x}\n", e.vector);
        }
        l += &format!(
            "{:6}: v={:02x} e={:04x} i={} cpl={} IP={:04x}:{eip:08x} pc={:08x} SP={:04x}:{:08x} ",
            self.int_log_count,
            e.vector,
            e.error_code.unwrap_or(0),
            u8::from(kind == EventKind::Software),
            cpu.cpl,
            cpu.seg[SEG_CS].selector,
            cpu.seg[SEG_CS].base.wrapping_add(eip),
            cpu.seg[SEG_SS].selector,
            cpu.reg(crate::cpu::ESP),
        );
        if e.vector == vector::PF {
            l += &format!("CR2={:08x}\n", cpu.cr[2]);
        } else {
            l += &format!("env->regs[R_EAX]={:08x}\n", cpu.reg(crate::cpu::EAX));
        }
        l += &cpu.dump();
        self.int_log_count += 1;
        self.logln(&l);
    }

    /// `-icount`: advance the virtual clock by the instructions translated
    /// code has charged since the budget was last read.
    pub(super) fn icount_account(&mut self) {
        let left = self.cpu.hot.icount_left;
        let used = self.icount_granted.wrapping_sub(left) as i32;
        if used > 0
            && let Some(cs) = &self.chipset
        {
            cs.clock.advance_insns(used as u64);
        }
        self.icount_granted = left;
    }

    /// `-icount`: the instructions translated code may start before the next
    /// device deadline (at least one block's worth, so it always progresses).
    pub(super) fn icount_refill(&mut self) {
        /// Never more than this (the budget's sign must fit the gate's byte
        /// test, `Translator::icount_gate`; and devices are looked at
        /// at least this often).
        const MAX_BUDGET: u64 = 1 << 22;
        let min = MAX_BLOCK_INSNS as u64;
        let budget = match &self.chipset {
            Some(cs) if self.next_irq_check != u64::MAX => {
                let per = cs.clock.ns_per_insn().max(1);
                (self.next_irq_check.saturating_sub(cs.clock.now_ns()) / per).clamp(min, MAX_BUDGET)
            }
            _ => MAX_BUDGET,
        } as u32;
        self.cpu.hot.icount_left = budget;
        self.icount_granted = budget;
    }

    /// A guest exception (a fault) at the current EIP.
    pub(super) fn exception(&mut self, e: Exception) -> Step {
        let eip = self.cpu.hot.eip;
        self.raise(e, EventKind::Exception, eip)
    }

    /// Deliver an event through the guest IDT, escalating faults during
    /// delivery to #DF and a fault while delivering #DF to a triple fault.
    pub(super) fn raise(&mut self, e: Exception, kind: EventKind, ret_eip: u32) -> Step {
        let eip = self.cpu.hot.eip;
        if let Some(feature) = e.unsupported {
            return Step::Done(RunOutcome::Unsupported(feature));
        }
        self.stats.exceptions += 1;
        if !self.cpu.idt_loaded {
            return Step::Done(RunOutcome::Exception { vector: e.vector, error_code: e.error_code, eip });
        }
        let (mut cur, mut kind, mut ret) = (e, kind, ret_eip);
        loop {
            if self.opts.trace.int && self.cpu.cr[0] & 1 != 0 {
                self.log_interrupt(&cur, kind);
            }
            let mut written = Vec::new();
            let before = self.cpu.snapshot();
            let r = {
                let mut env = Env::new(&mut self.cpu, &mut self.mem, &mut self.io, &mut written);
                // Delivery reads the IDT/GDT/TSS and writes the frame as supervisor accesses.
                env.user = false;
                let r = env.deliver(cur.vector, cur.error_code, kind, ret);
                match env.take_page_fault() {
                    Some(pf) => Err(pf),
                    None => r,
                }
            };
            if r.is_err() {
                self.cpu.restore(&before);
            }
            let regs = self.cpu.paging_regs();
            if regs != self.mem.paging() {
                self.paging_changed(None, true); // a task switch loaded CR3
            }
            for p in written {
                self.code_written(p);
            }
            match r {
                Ok(handler) => {
                    self.cpu.hot.eip = handler;
                    return Step::Continue;
                }
                Err(e2) => {
                    if cur.vector == vector::DF {
                        return Step::Done(RunOutcome::TripleFault { eip });
                    }
                    let second_bad = is_contributory(e2.vector) || e2.vector == vector::PF;
                    let escalate = (is_contributory(cur.vector) && is_contributory(e2.vector))
                        || (cur.vector == vector::PF && second_bad);
                    cur = if escalate { Exception::with_code(vector::DF, 0) } else { e2 };
                    kind = EventKind::Exception;
                    ret = eip;
                }
            }
        }
    }
}
