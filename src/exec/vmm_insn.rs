//! Instructions the VMM executes for the guest (`emulate`, through
//! `cpu::interp`), the decoded-instruction cache they use, and the port I/O
//! and INVLPG callouts translated code calls directly.

use super::*;

impl Engine {
    /// Run the instruction at EIP in the VMM.
    pub(super) fn emulate(&mut self) -> Step {
        let eip = self.cpu.hot.eip;
        let i = self.decode_at(eip);
        self.emulated += 1;
        self.stats.count_callout(i.mnemonic());
        if self.device_insns.contains_key(&eip) {
            // A device register (the local APIC's EOI, TPR, ICR) may change
            // what the interrupt controller asserts.
            self.irq_dirty = true;
            self.note_device_access();
            self.stats.device_accesses += 1;
        }
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
                    self.soft_fill(f.win as u32, f.lin);
                } else {
                    self.mem.prefetch_after_fault(f.win, f.lin, f.write);
                }
            }
        }
        let dregs = [self.cpu.dr[0], self.cpu.dr[1], self.cpu.dr[2], self.cpu.dr[3], self.cpu.dr[7]];
        if dregs != self.watch_regs {
            let before = debug::exec_breakpoints(&self.watch_regs);
            self.watch_regs = dregs;
            self.arm_watchpoints();
            if debug::exec_breakpoints(&dregs) != before {
                // Blocks (and inlined callees) translated before may run
                // through a new execution breakpoint: blocks are cut at
                // breakpoints when translated (`cut_at_breakpoints`).
                self.flush();
            }
        }
        if (self.chipset.is_some() || self.vcpu.is_some())
            && touches_interrupt_state(&i, self.cpu.reg(crate::cpu::EDX) as u16)
        {
            self.irq_dirty = true;
            self.note_device_access();
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
                if i.mnemonic() == iced_x86::Mnemonic::Verw
                    && let Some(sel) = self.cpu.last_verw.take()
                {
                    let zf = self.cpu.hot.live_flags & flags::ZF != 0;
                    self.seg_reloads.note_verw(&self.cpu, &self.mem, sel, zf);
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
                if self.vcpu.is_some() {
                    return self.smp_halt(eip, ie);
                }
                if ie && self.chipset.is_some() {
                    return self.halt_until_interrupt(eip);
                }
                Step::Done(RunOutcome::Halted { eip, interrupts_enabled: ie })
            }
            Err(e) => self.exception(e),
        }
    }
}

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
pub(super) extern "sysv64" fn io_callout(hot: *mut HotState) -> u32 {
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
pub(super) extern "sysv64" fn invlpg_callout(hot: *mut HotState) -> u32 {
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

impl Engine {
    /// Forget decoded VMM instructions (code or its mapping changed).
    pub(super) fn clear_emu_cache(&mut self) {
        self.emu_cache.clear();
        self.emu_slots.iter_mut().for_each(|e| *e = None);
    }

    /// Decode the instruction at CS:`eip` in the current code size (through
    /// the guest page tables; cached per linear address and mode until code
    /// changes).
    pub(super) fn decode_at(&mut self, eip: u32) -> Instruction {
        let cs = self.cpu.seg[SEG_CS];
        let mode = self.mode;
        let lin = cs.base.wrapping_add(eip);
        let slot = lin as usize % EMU_CACHE_SLOTS;
        if let Some((l, m, i)) = &self.emu_slots[slot]
            && *l == lin
            && *m == mode.0
        {
            return *i;
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
