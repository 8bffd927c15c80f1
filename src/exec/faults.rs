//! Exits and faults: host faults in translated code (hidden shadow
//! faults, true page faults, writes to code, device memory, holes), the
//! soft TLB's misses, data breakpoints, x87/SSE exceptions and the
//! one-instruction steps the engine uses to get past them.

use super::*;

/// `si_code` of a signal the kernel raised for a fault with no address
/// (a general-protection fault).
const SI_KERNEL: i32 = 0x80;
/// `si_code` of a SIGBUS for a misaligned access (the host's #AC).
const BUS_ADRALN: i32 = 1;
/// Most instructions translated as device accesses (`Engine::device_insns`;
/// a guest cannot grow the set without bound).
const MAX_DEVICE_INSNS: usize = 4096;

impl Engine {
    /// A host signal in translated code (the handler set EIP to the
    /// faulting guest instruction and the guest state is as before it).
    pub(super) fn fault(&mut self) -> Step {
        let f = self.sig.fault;
        let window = self.mem.window_base();
        if f.signo == signals::timer_signal() {
            // A REP string instruction stopped between iterations: the state
            // is precise at it; look for interrupts and go on.
            self.unkick();
            self.sig.disarm_poll();
            self.stats.polls += 1;
            self.time_due = true;
            return Step::Continue;
        }
        match f.signo {
            libc::SIGFPE => return self.float_exception(f.code),
            libc::SIGILL => return self.exception(Exception::new(vector::UD)),
            // A general-protection fault without an address (si_code
            // SI_KERNEL): translated code only meets one where the guest
            // instruction itself raises #GP(0) on hardware: a misaligned
            // 16-byte SSE operand, reserved MXCSR bits (LDMXCSR, FXRSTOR).
            libc::SIGSEGV if f.code == SI_KERNEL => return self.exception(Exception::with_code(vector::GP, 0)),
            // The host's alignment check (AC set for CPL-3 code with guest
            // CR0.AM and EFLAGS.AC): the guest's #AC(0).
            libc::SIGBUS if f.code == BUS_ADRALN => return self.exception(Exception::with_code(vector::AC, 0)),
            _ => {}
        }
        // The poll page, or (icount) the guard page after it: a block's
        // entry found an exit requested or its instruction budget spent.
        if self.mem.poll_pages().iter().any(|&p| f.addr >= p && f.addr < p + 2 * PAGE_SIZE) {
            self.unkick();
            if self.vcpu.is_some() && self.cpu.hot.pause_left == 0 {
                // A PAUSE's count ran out (`Translator::pause_gate`).
                self.pause_spin();
            }
            self.sig.disarm_poll();
            self.stats.polls += 1;
            self.time_due = true;
            return Step::Continue;
        }
        if let (Some((win, lin)), true) = (self.mem.window_hit(f.addr), self.mem.paging().enabled()) {
            return self.shadow_fault(win, lin, f.write);
        }
        if f.addr < window || f.addr >= window + WINDOW_SIZE {
            // Only reachable through wrap-around at the top or bottom of the
            // address space; the flat segment's limit check would fault there.
            if f.addr + 2 * PAGE_SIZE >= window && f.addr < window + WINDOW_SIZE + PAGE_SIZE {
                return self.exception(Exception::with_code(vector::GP, 0));
            }
            return Step::Done(RunOutcome::InternalError(format!(
                "host fault at {:#x} (rip {:#x}) outside the guest window",
                f.addr, f.host_rip
            )));
        }
        let gaddr = (f.addr - window) as u32;
        let page = page_of(gaddr);
        if let Some(&(_, write_only)) = self.watch_pages.iter().find(|(p, _)| *p == page) {
            return self.watch_fault(gaddr, f.write || !write_only, None);
        }
        if self.mem.is_mmio(gaddr) {
            self.note_fault(false);
            return self.device_access();
        }
        if self.mem.is_ram(gaddr) {
            if f.write && self.mem.is_protected(gaddr) {
                // Self-modifying code: drop the page's translations, then run
                // the storing instruction alone before translating again.
                self.code_written(page);
                return self.step_one();
            }
            return Step::Done(RunOutcome::InternalError(format!(
                "unexpected fault on guest RAM at {gaddr:#x} (eip {:#x})",
                f.eip
            )));
        }
        // A hole: reads see all ones, writes are dropped.
        if !self.hole_pages.contains(&page) {
            self.map_hole(page);
            return Step::Continue;
        }
        let i = self.decode_at(f.eip);
        self.cpu.hot.eip = i.next_ip32();
        self.stats.hole_writes += 1;
        Step::Continue
    }

    /// A host fault in a shadow window: map the page and resume the faulting
    /// instruction where it stopped (hidden), or deliver the guest #PF (true).
    pub(super) fn shadow_fault(&mut self, win: u8, lin: u32, write: bool) -> Step {
        match self.mem.shadow_fault(win, lin, write) {
            ShadowFault::Mapped => {
                self.stats.hidden_faults += 1;
                self.note_fault(false);
                self.resume()
            }
            ShadowFault::PageFault(code) => {
                self.cpu.cr[2] = lin;
                self.stats.page_faults += 1;
                self.last_pf = Some(LastFault { win, lin, write, eip: self.cpu.hot.eip, soft: false });
                self.note_fault(true);
                self.exception(Exception::with_code(vector::PF, code))
            }
            ShadowFault::CodeWrite(phys) => {
                self.code_written(phys);
                self.step_one()
            }
            ShadowFault::Mmio(_) => {
                self.note_fault(false);
                self.device_access()
            }
            ShadowFault::Watched => self.watch_fault(lin, write, Some(win)),
            ShadowFault::Hole(_) => {
                // A write to a hole (no device memory exists): dropped, the
                // instruction is skipped. Reads were mapped to all ones.
                let i = self.decode_at(self.cpu.hot.eip);
                self.cpu.hot.eip = i.next_ip32();
                self.stats.hole_writes += 1;
                Step::Continue
            }
        }
    }

    /// The instruction at EIP touched device memory (state precise before
    /// it). MOV, MOVZX/MOVSX and MOVS/STOS/LODS (the forms drivers use) the
    /// interpreter runs against the device; any other instruction runs once
    /// against bounce pages (`bounce`). Only a REP string instruction the
    /// interpreter lacks (16-bit addressing, CMPS/SCAS) is still skipped,
    /// with a rate-limited warning.
    pub(super) fn device_access(&mut self) -> Step {
        // A device register (the local APIC's EOI, TPR, ICR) may change
        // what the interrupt controller asserts.
        self.irq_dirty = true;
        self.note_device_access();
        let eip = self.cpu.hot.eip;
        let i = self.decode_at(eip);
        if interp::emulates_device_access(&i) {
            // Device registers are accessed from the same few instructions
            // over and over (an EOI, the ICR): from now on this one leaves
            // translated code for the VMM directly, without the host fault
            // (`emulate` counts the accesses of those instructions).
            if self.device_insns.len() >= MAX_DEVICE_INSNS && !self.device_insns.contains_key(&eip) {
                self.stats.device_accesses += 1;
            } else if self.device_insns.insert(eip, ()).is_none() {
                let lin = self.cpu.seg[SEG_CS].base.wrapping_add(eip);
                if let Some(phys) = self.code_page_quiet(lin, self.mode.cpl() == 3) {
                    self.clear_emu_cache();
                    let n = self.cache.invalidate_at(phys, eip, &mut self.cpu.hot);
                    self.stats.invalidated_blocks += n as u64;
                }
            }
            return self.emulate();
        }
        if let Some(step) = self.device_bounce(&i) {
            return step;
        }
        crate::guest_warn!("{:?} at {:#010x} on device memory is not emulated: skipped", i.mnemonic(), i.ip32());
        self.cpu.hot.eip = i.next_ip32();
        Step::Continue
    }

    /// Score a host fault of the instruction at EIP; once it has faulted
    /// often enough, retranslate its page with soft-TLB accesses.
    pub(super) fn note_fault(&mut self, true_fault: bool) {
        let eip = self.cpu.hot.eip;
        if !self.soft.note_fault(eip, true_fault) {
            return;
        }
        let i = self.decode_at(eip);
        if !crate::translate::has_soft_form(&i, self.mode) {
            self.soft.forgo(eip);
            return;
        }
        let lin = self.cpu.seg[SEG_CS].base.wrapping_add(eip);
        if let Some(phys) = self.code_page_quiet(lin, self.mode.cpl() == 3) {
            self.soft.count(&mut self.cpu.hot, eip, phys, crate::translate::string::is_movs_stos(&i));
            self.stats.soft_insns += 1;
            self.retranslate_insn(eip, phys);
        }
    }

    /// The instruction at `eip` (code from physical page `phys`) changed
    /// form: drop the blocks holding it. Only those: instructions of a page
    /// turn soft one at a time (a new process faults in glibc's start-up
    /// code instruction by instruction), and retranslating the whole page
    /// each time cost hundreds of blocks per fork+exec. A block running now
    /// keeps running until it exits (its code stays in the cache); the next
    /// lookup translates it again.
    fn retranslate_insn(&mut self, eip: u32, phys: u32) {
        self.clear_emu_cache();
        let n = self.cache.invalidate_at(phys, eip, &mut self.cpu.hot);
        self.stats.invalidated_blocks += n as u64;
        if !self.cache.page_has_code(phys) && self.may_unprotect_alone() {
            self.mem.set_code_protect(phys, false);
        }
    }

    /// Send the soft instructions that run far more often than they miss
    /// back to the shadow window, and stop counting those that stay soft
    /// (`soft_tlb::SoftTlb::review`): their blocks are translated again.
    pub(super) fn review_soft(&mut self) {
        let review = self.soft.review(&mut self.cpu.hot);
        self.stats.soft_reverts = self.soft.reverts;
        for (eip, phys) in review {
            self.retranslate_insn(eip, phys);
        }
    }

    /// A soft-TLB miss before the instruction at EIP (state precise there):
    /// fill the entry and run the instruction again, raise its #PF, or run
    /// it once through the shadow window (a page-crossing access, or a page
    /// the soft TLB must not hold).
    pub(super) fn soft_miss(&mut self) -> Step {
        let lin = self.cpu.hot.exit_arg;
        let kind = self.cpu.hot.soft_kind & 3;
        self.soft.note_miss(self.cpu.hot.eip);
        if self.soft.holds(&self.cpu.hot, kind, lin) {
            return self.step_one();
        }
        match self.soft_translate(kind, lin) {
            Err(code) => {
                self.cpu.cr[2] = lin;
                self.stats.page_faults += 1;
                let write = kind & crate::translate::soft::KIND_WRITE != 0;
                self.last_pf = Some(LastFault { win: kind as u8, lin, write, eip: self.cpu.hot.eip, soft: true });
                self.exception(Exception::with_code(vector::PF, code))
            }
            Ok(p) if self.soft_enter(kind, lin, p) => Step::Continue,
            // Device memory: emulated right away, without a host fault (an
            // instruction that keeps touching a device becomes soft).
            Ok(p) if self.mem.is_mmio(p) => self.device_access(),
            Ok(_) => self.step_one(),
        }
    }

    /// The guest walk for an access of soft-TLB kind `kind` (sets A/D bits).
    pub(super) fn soft_translate(&mut self, kind: u32, lin: u32) -> Result<u32, u32> {
        let write = kind & crate::translate::soft::KIND_WRITE != 0;
        let user = kind & crate::translate::soft::KIND_USER != 0;
        self.mem.translate(lin, write, user)
    }

    /// Enter the page of `lin` in soft-TLB table `kind` if the guest tables
    /// allow the access (setting A/D bits) and the page may be accessed
    /// directly in RAM; false if not.
    pub(super) fn soft_fill(&mut self, kind: u32, lin: u32) -> bool {
        self.soft_translate(kind, lin).is_ok_and(|phys| self.soft_enter(kind, lin, phys))
    }

    /// Back in address space `pd`: enter again the soft-TLB entries it had
    /// when it was left, each only if the guest tables still map its page
    /// to the same RAM with the same rights and with the accessed (and for
    /// writes dirty) bit already set: exactly the entry a miss would make
    /// now, and the miss's exit is saved (a pipe's reader and writer take
    /// turns, and `copy_to_user` finds its buffer again).
    pub(super) fn soft_refill(&mut self, pd: u32) {
        let alias = self.mem.alias_ptr() as u64;
        for e in self.soft.unstash(pd) {
            let phys = e.host.wrapping_sub(alias) as u32;
            let write = e.kind & crate::translate::soft::KIND_WRITE != 0;
            let user = e.kind & crate::translate::soft::KIND_USER != 0;
            if self.mem.still_allows(e.lin, write, user, phys) && self.soft_enter(e.kind, e.lin, phys) {
                self.soft.refills += 1;
            }
        }
    }

    /// `soft_fill` for a walk already made: `phys` is where `lin` goes.
    pub(super) fn soft_enter(&mut self, kind: u32, lin: u32, phys: u32) -> bool {
        let write = kind & crate::translate::soft::KIND_WRITE != 0;
        let page = page_of(phys);
        let watched = self.watch_pages.iter().any(|&(p, _)| p == page_of(lin));
        if !self.mem.is_ram(page) || (write && self.mem.is_protected(page)) || watched {
            return false;
        }
        let host = self.mem.alias_ptr() as u64 + page as u64;
        self.soft.fill(&mut self.cpu.hot, kind, lin, host);
        true
    }

    /// Continue translated code at the host RIP of the last fault, with the
    /// raw registers the signal handler saved.
    pub(super) fn resume(&mut self) -> Step {
        let f: EnterFn = {
            // SAFETY: `tramp.resume` follows the same ABI as `enter`.
            unsafe { std::mem::transmute::<usize, EnterFn>(self.tramp.resume) }
        };
        self.run_translated(f, 0)
    }

    /// Enabled DR0-3 data breakpoints: (index, address, length, write-only).
    pub(super) fn data_breakpoints(&self) -> Vec<(usize, u32, u32, bool)> {
        let dr7 = self.cpu.dr[7];
        (0..4)
            .filter_map(|n| {
                let enabled = dr7 & (3 << (2 * n)) != 0;
                let rw = (dr7 >> (16 + 4 * n)) & 3;
                let len = match (dr7 >> (18 + 4 * n)) & 3 {
                    0 => 1,
                    1 => 2,
                    2 => 8,
                    _ => 4,
                };
                // R/W 01 = writes, 11 = reads and writes (10 = I/O, not supported).
                (enabled && (rw == 1 || rw == 3)).then_some((n, self.cpu.dr[n] & !(len - 1), len, rw == 1))
            })
            .collect()
    }

    /// Watch the pages of the guest's data breakpoints and the debugger's
    /// watchpoints (linear pages) so accesses to them fault: protected in
    /// the identity window with paging off, never mapped in the shadow
    /// windows with paging on.
    pub(super) fn arm_watchpoints(&mut self) {
        // Soft-TLB accesses bypass the watched pages' protection.
        self.soft.flush_all(&mut self.cpu.hot);
        for (p, _) in std::mem::take(&mut self.watch_pages) {
            self.mem.set_watch_protect(p, None);
        }
        let mut ranges: Vec<(u32, u32, bool)> =
            self.data_breakpoints().into_iter().map(|(_, addr, len, write_only)| (addr, len, write_only)).collect();
        ranges.extend(self.debug_watch_ranges());
        for (addr, len, write_only) in ranges {
            for p in [page_of(addr), page_of(addr.wrapping_add(len - 1))] {
                match self.watch_pages.iter_mut().find(|(q, _)| *q == p) {
                    Some(e) => e.1 &= write_only,
                    None => self.watch_pages.push((p, write_only)),
                }
            }
        }
        if self.mem.paging().enabled() {
            self.mem.set_watched_pages(self.watch_pages.clone());
            return;
        }
        self.mem.set_watched_pages(Vec::new());
        for &(p, w) in &self.watch_pages {
            self.mem.set_watch_protect(p, Some(w));
        }
    }

    /// An access at linear `gaddr` to a watched page (in shadow window `win`
    /// with paging on): run the instruction with the page open, then report
    /// a debugger watchpoint it touched, or raise the #DB trap of a data
    /// breakpoint.
    pub(super) fn watch_fault(&mut self, gaddr: u32, write: bool, win: Option<u8>) -> Step {
        let hit = self.data_breakpoints().into_iter().find(|&(_, addr, len, write_only)| {
            gaddr >= addr && gaddr < addr.wrapping_add(len) && (write || !write_only)
        });
        let len = self.decode_at(self.cpu.hot.eip).memory_size().size().max(1) as u32;
        let debug_hit = self.debug_watch_hit(gaddr, len, write);
        let events = self.stats.exceptions;
        let step = match win {
            Some(win) => {
                let saved = self.mem.set_watched_pages(Vec::new());
                let step = match self.mem.shadow_fault(win, gaddr, write) {
                    ShadowFault::Mapped => self.step_one(),
                    _ => self.shadow_fault(win, gaddr, write),
                };
                self.mem.set_watched_pages(saved);
                step
            }
            None => {
                let pages = std::mem::take(&mut self.watch_pages);
                for &(p, _) in &pages {
                    self.mem.set_watch_protect(p, None);
                }
                let page = page_of(gaddr);
                if write && self.mem.is_protected(page) {
                    self.code_written(page);
                }
                let step = self.step_one();
                self.watch_pages = pages;
                for &(p, w) in &self.watch_pages {
                    self.mem.set_watch_protect(p, Some(w));
                }
                step
            }
        };
        let faulted = self.stats.exceptions != events;
        if let (Some(stop), false, false) = (debug_hit, faulted, matches!(step, Step::Done(_))) {
            return Step::Done(RunOutcome::DebugStop(stop));
        }
        match (step, hit) {
            (Step::Done(out), _) => Step::Done(out),
            _ if faulted => Step::Continue,
            (_, Some((n, ..))) => {
                self.cpu.dr[6] = (self.cpu.dr[6] & !0xF) | (1 << n);
                let eip = self.cpu.hot.eip;
                self.raise(Exception::new(vector::DB), EventKind::Exception, eip)
            }
            (s, _) => s,
        }
    }

    /// SIGFPE: integer divide errors are #DE; an unmasked x87 exception is
    /// #MF at the waiting instruction that found it; an SSE one is #XM, or
    /// #UD when CR4.OSXMMEXCPT is clear.
    pub(super) fn float_exception(&mut self, si_code: i32) -> Step {
        /// siginfo codes of SIGFPE for integer divide by zero and overflow.
        const FPE_INTDIV: i32 = 1;
        const FPE_INTOVF: i32 = 2;
        if matches!(si_code, FPE_INTDIV | FPE_INTOVF) {
            return self.exception(Exception::new(vector::DE));
        }
        let i = self.decode_at(self.cpu.hot.eip);
        let sse =
            i.cpuid_features().iter().any(|f| matches!(f, iced_x86::CpuidFeature::SSE | iced_x86::CpuidFeature::SSE2));
        /// CR4.OSXMMEXCPT
        const CR4_OSXMMEXCPT: u32 = 1 << 10;
        let v = if !sse {
            vector::MF
        } else if self.cpu.cr[4] & CR4_OSXMMEXCPT != 0 {
            vector::XM
        } else {
            vector::UD
        };
        self.exception(Exception::new(v))
    }

    pub(super) fn map_hole(&mut self, page: u32) {
        crate::memory::map_ones_page(self.mem.window_base() + page as usize);
        self.hole_pages.insert(page);
    }

    /// Execute the single instruction at EIP from a one-off translation.
    pub(super) fn step_one(&mut self) -> Step {
        let eip = self.cpu.hot.eip;
        let mode = self.cpu.mode();
        self.mode = mode;
        self.cpu.sync_segments();
        let id = match self.translate(eip, mode, false) {
            Ok(id) => id,
            Err(step) => return step,
        };
        let host = self.cache.blocks[id as usize].entry();
        match self.enter(host) {
            Step::Chain(_) => Step::Continue,
            s => s,
        }
    }
}
