//! Protected-mode control transfers that change privilege or task:
//! interrupt/exception delivery through the IDT, IRET, far RET to an outer
//! level, SYSENTER/SYSEXIT and TSS task switches. The checks and their
//! error codes follow the SDM's pseudo-code for INT n, IRET, RET and
//! "Task Switching".

use super::interp::Env;
use super::{
    EAX, EBP, ECX, EDI, EDX, ESI, ESP, Exception, SEG_CS, SEG_DS, SEG_ES, SEG_FS, SEG_GS, SEG_SS, Segment, flags,
    vector,
};

type R<T> = Result<T, Exception>;

/// What raised the event (decides the DPL check, the EXT bit and which EIP
/// is pushed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A processor exception (fault or trap).
    Exception,
    /// INT n, INT3, INTO: the gate's DPL is checked against the CPL.
    Software,
    /// ICEBP (INT1): like an exception, no DPL check.
    Icebp,
    /// An external interrupt.
    External,
}

/// How a task switch was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskSwitch {
    Jmp,
    Call,
    Iret,
    Int,
}

/// Descriptor type nibbles (S = 0).
mod ty {
    pub const TSS16_AVAIL: u16 = 0x1;
    pub const TSS32_AVAIL: u16 = 0x9;
    pub const TSS32_BUSY: u16 = 0xB;
    pub const TASK_GATE: u16 = 0x5;
    pub const INT_GATE16: u16 = 0x6;
    pub const TRAP_GATE16: u16 = 0x7;
    pub const INT_GATE32: u16 = 0xE;
    pub const TRAP_GATE32: u16 = 0xF;
}

/// Minimum limit of a 32-bit TSS.
const TSS32_MIN_LIMIT: u32 = 0x67;
/// CR0.TS
const CR0_TS: u32 = 1 << 3;

fn gp(code: u32) -> Exception {
    Exception::with_code(vector::GP, code)
}

fn dpl_of(attr: u16) -> u8 {
    ((attr >> 5) & 3) as u8
}

fn present(attr: u16) -> bool {
    attr & 0x80 != 0
}

fn is_code(attr: u16) -> bool {
    attr & 0x18 == 0x18
}

fn conforming(attr: u16) -> bool {
    attr & 0x04 != 0
}

impl Env<'_> {
    /// Deliver `vector` through the IDT; `ret_eip` is the EIP pushed.
    /// Returns the handler's EIP. Errors are exceptions raised during
    /// delivery (the caller escalates them to #DF / triple fault).
    pub fn deliver(&mut self, vector: u8, error: Option<u32>, kind: EventKind, ret_eip: u32) -> R<u32> {
        if self.cpu.cr[0] & 1 == 0 {
            return self.deliver_real(vector, ret_eip);
        }
        let ext = u32::from(kind != EventKind::Software);
        let idt_err = (vector as u32) * 8 + 2 + ext;
        if (vector as u32) * 8 + 7 > self.cpu.idtr.limit as u32 {
            return Err(gp(idt_err));
        }
        let a = self.cpu.idtr.base.wrapping_add(vector as u32 * 8);
        let gate = self.read_sys64(a);
        let attr = ((gate >> 40) & 0xFF) as u16;
        let gty = attr & 0x1F;
        if !matches!(gty, ty::TASK_GATE | ty::INT_GATE16 | ty::TRAP_GATE16 | ty::INT_GATE32 | ty::TRAP_GATE32) {
            return Err(gp(idt_err));
        }
        if kind == EventKind::Software && dpl_of(attr) < self.cpu.cpl {
            return Err(gp(idt_err));
        }
        if !present(attr) {
            return Err(Exception::with_code(vector::NP, idt_err));
        }
        let sel = (gate >> 16) as u16;
        if gty == ty::TASK_GATE {
            let eip = self.task_switch(sel, TaskSwitch::Int, ret_eip)?;
            if let Some(code) = error {
                let size = if self.cpu.tr.attr & 0x08 != 0 { 4 } else { 2 };
                self.push(code, size);
            }
            return Ok(eip);
        }
        let is32 = gty & 0x08 != 0;
        let size = if is32 { 4 } else { 2 };
        let offset = if is32 { (gate & 0xFFFF) as u32 | ((gate >> 48) as u32) << 16 } else { (gate & 0xFFFF) as u32 };
        if sel & 0xFFFC == 0 {
            return Err(gp(ext));
        }
        let sel_err = (sel & 0xFFFC) as u32 + ext;
        let d = self.descriptor(sel).map_err(|_| gp(sel_err))?;
        let mut cs = Segment::from_descriptor(sel, d);
        if !is_code(cs.attr) || dpl_of(cs.attr) > self.cpu.cpl {
            return Err(gp(sel_err));
        }
        if !present(cs.attr) {
            return Err(Exception::with_code(vector::NP, sel_err));
        }
        let old_flags = self.cpu.eflags();
        let old_cs = self.cpu.seg[SEG_CS].selector as u32;
        let new_cpl = if conforming(cs.attr) { self.cpu.cpl } else { dpl_of(cs.attr) };
        // The frame, pushed in this order (no allocation on this hot path).
        let mut frame = [0u32; 6];
        let mut n = 0;
        let mut add = |v: u32| {
            frame[n] = v;
            n += 1;
        };
        if new_cpl < self.cpu.cpl {
            let (ss_sel, esp) = self.tss_stack(new_cpl)?;
            let ss = self.check_stack_segment(ss_sel, new_cpl, ext)?;
            for v in [self.cpu.seg[SEG_SS].selector as u32, self.cpu.reg(ESP), old_flags, old_cs, ret_eip] {
                add(v);
            }
            if let Some(e) = error {
                add(e);
            }
            let mut sp = esp;
            for &v in &frame[..n] {
                sp = sp.wrapping_sub(size as u32);
                let at = ss.base.wrapping_add(sp);
                self.write(at, size, v);
            }
            self.set_accessed(ss_sel, self.descriptor(ss_sel).unwrap_or(0));
            self.cpu.seg[SEG_SS] = Segment { attr: ss.attr | 1, ..ss };
            self.cpu.set_reg(ESP, sp);
        } else {
            for v in [old_flags, old_cs, ret_eip] {
                add(v);
            }
            if let Some(e) = error {
                add(e);
            }
            for &v in &frame[..n] {
                self.push(v, size);
            }
        }
        self.set_accessed(sel, d);
        cs.attr |= 1;
        cs.selector = (sel & !3) | new_cpl as u16;
        self.cpu.seg[SEG_CS] = cs;
        self.cpu.cpl = new_cpl;
        let mut f = old_flags & !(flags::TF | flags::NT | flags::RF | flags::VM);
        if gty == ty::INT_GATE16 || gty == ty::INT_GATE32 {
            f &= !flags::IF;
        }
        self.cpu.set_eflags(f);
        Ok(offset)
    }

    /// Real-mode delivery through the interrupt vector table.
    fn deliver_real(&mut self, vector: u8, ret_eip: u32) -> R<u32> {
        let a = self.cpu.idtr.base.wrapping_add(vector as u32 * 4);
        if vector as u32 * 4 + 3 > self.cpu.idtr.limit as u32 {
            return Err(gp(0));
        }
        let ip = self.read_sys(a, 2);
        let cs = self.read_sys(a.wrapping_add(2), 2) as u16;
        let f = self.cpu.eflags();
        self.push(f, 2);
        self.push(self.cpu.seg[SEG_CS].selector as u32, 2);
        self.push(ret_eip, 2);
        self.cpu.set_eflags(f & !(flags::IF | flags::TF | flags::AC));
        let s = &mut self.cpu.seg[SEG_CS];
        s.selector = cs;
        s.base = (cs as u32) << 4;
        Ok(ip)
    }

    /// SS:ESP for privilege level `cpl` from the current TSS.
    fn tss_stack(&mut self, cpl: u8) -> R<(u16, u32)> {
        let tr = self.cpu.tr;
        let ts = Exception::with_code(vector::TS, (tr.selector & 0xFFFC) as u32);
        let is32 = tr.attr & 0x08 != 0;
        let (esp_off, ss_off, need) = if is32 {
            (4 + 8 * cpl as u32, 8 + 8 * cpl as u32, 8 * cpl as u32 + 11)
        } else {
            (2 + 4 * cpl as u32, 4 + 4 * cpl as u32, 4 * cpl as u32 + 5)
        };
        if tr.limit < need {
            return Err(ts);
        }
        let esp = if is32 {
            self.read_sys(tr.base.wrapping_add(esp_off), 4)
        } else {
            self.read_sys(tr.base.wrapping_add(esp_off), 2)
        };
        let ss = self.read_sys(tr.base.wrapping_add(ss_off), 2) as u16;
        Ok((ss, esp))
    }

    /// Checks of a new stack segment for a privilege change to `cpl`
    /// (errors are #TS with the selector, as for an inner-level stack).
    fn check_stack_segment(&mut self, sel: u16, cpl: u8, ext: u32) -> R<Segment> {
        let ts = Exception::with_code(vector::TS, (sel & 0xFFFC) as u32 + ext);
        if sel & 0xFFFC == 0 || (sel & 3) as u8 != cpl {
            return Err(ts);
        }
        let d = self.descriptor(sel).map_err(|_| ts)?;
        let s = Segment::from_descriptor(sel, d);
        let writable_data = s.attr & 0x1A == 0x12;
        if !writable_data || dpl_of(s.attr) != cpl {
            return Err(ts);
        }
        if !present(s.attr) {
            return Err(Exception::with_code(vector::SS, (sel & 0xFFFC) as u32 + ext));
        }
        Ok(s)
    }

    /// IRET / IRETD in protected mode (`next_eip` follows the IRET: saved in
    /// the outgoing task on a task return). Returns the new EIP.
    pub fn iret(&mut self, size: usize, next_eip: u32) -> R<u32> {
        if self.cpu.eflags() & flags::NT != 0 {
            let link = self.read_sys(self.cpu.tr.base, 2) as u16;
            return self.task_switch(link, TaskSwitch::Iret, next_eip);
        }
        let esp = self.cpu.reg(ESP);
        let ss_base = self.cpu.seg[SEG_SS].base;
        // The whole 32-bit frame through one translation when it lies in one
        // page (reading the outer ESP and SS a same-level IRET leaves alone
        // has no effect there); else each dword as the IRET needs it.
        let frame = if size == 4 { self.read_dwords::<5>(ss_base.wrapping_add(esp)) } else { None };
        let rd = |env: &Self, k: u32| match frame {
            Some(f) => f[k as usize],
            None => env.read(ss_base.wrapping_add(esp.wrapping_add(k * size as u32)), size),
        };
        let eip = rd(self, 0);
        let cs_sel = rd(self, 1) as u16;
        let fl = rd(self, 2);
        let rpl = (cs_sel & 3) as u8;
        let cpl = self.cpu.cpl;
        if cpl == 0 && size == 4 && fl & flags::VM != 0 {
            // IRET to virtual-8086 mode.
            return Err(Exception::unsupported(crate::cpu::V86_MODE));
        }
        let cs = self.check_return_cs(cs_sel)?;
        let mut mask = flags::ARITH | flags::TF | flags::DF | flags::NT | flags::RF | flags::AC | flags::ID;
        let iopl = ((self.cpu.eflags() & flags::IOPL) >> 12) as u8;
        if cpl <= iopl {
            mask |= flags::IF;
        }
        if cpl == 0 {
            mask |= flags::IOPL;
        }
        if size == 2 {
            mask &= 0xFFFF;
        }
        if rpl > cpl {
            let new_esp = rd(self, 3);
            let ss_sel = rd(self, 4) as u16;
            let ss = self.check_return_ss(ss_sel, rpl)?;
            self.enter_outer(cs, ss, new_esp, rpl);
        } else {
            self.cpu.seg[SEG_CS] = cs;
            self.cpu.set_reg(ESP, esp.wrapping_add(3 * size as u32));
        }
        let f = self.cpu.eflags();
        self.cpu.set_eflags((f & !mask) | (fl & mask));
        Ok(eip)
    }

    /// Far RET (with `n` bytes of parameters) in protected mode.
    pub fn far_ret(&mut self, size: usize, n: u32) -> R<u32> {
        let esp = self.cpu.reg(ESP);
        let ss_base = self.cpu.seg[SEG_SS].base;
        let rd = |env: &Self, off: u32| env.read(ss_base.wrapping_add(esp.wrapping_add(off)), size);
        let eip = rd(self, 0);
        let cs_sel = rd(self, size as u32) as u16;
        let rpl = (cs_sel & 3) as u8;
        let cs = self.check_return_cs(cs_sel)?;
        if rpl > self.cpu.cpl {
            let base = 2 * size as u32 + n;
            let new_esp = rd(self, base);
            let ss_sel = rd(self, base + size as u32) as u16;
            let ss = self.check_return_ss(ss_sel, rpl)?;
            self.enter_outer(cs, ss, new_esp.wrapping_add(n), rpl);
        } else {
            self.cpu.seg[SEG_CS] = cs;
            self.cpu.set_reg(ESP, esp.wrapping_add(2 * size as u32 + n));
        }
        Ok(eip)
    }

    /// The return CS of IRET / far RET: a present code segment at RPL >= CPL.
    fn check_return_cs(&mut self, sel: u16) -> R<Segment> {
        let err = gp((sel & 0xFFFC) as u32);
        if sel & 0xFFFC == 0 {
            return Err(gp(0));
        }
        let rpl = (sel & 3) as u8;
        let d = self.descriptor(sel)?;
        let mut s = Segment::from_descriptor(sel, d);
        if !is_code(s.attr) || rpl < self.cpu.cpl {
            return Err(err);
        }
        let dpl = dpl_of(s.attr);
        if (conforming(s.attr) && dpl > rpl) || (!conforming(s.attr) && dpl != rpl) {
            return Err(err);
        }
        if !present(s.attr) {
            return Err(Exception::with_code(vector::NP, (sel & 0xFFFC) as u32));
        }
        self.set_accessed(sel, d);
        s.attr |= 1;
        Ok(s)
    }

    fn check_return_ss(&mut self, sel: u16, rpl: u8) -> R<Segment> {
        let err = gp((sel & 0xFFFC) as u32);
        if sel & 0xFFFC == 0 || (sel & 3) as u8 != rpl {
            return Err(if sel & 0xFFFC == 0 { gp(0) } else { err });
        }
        let d = self.descriptor(sel)?;
        let mut s = Segment::from_descriptor(sel, d);
        if s.attr & 0x1A != 0x12 || dpl_of(s.attr) != rpl {
            return Err(err);
        }
        if !present(s.attr) {
            return Err(Exception::with_code(vector::SS, (sel & 0xFFFC) as u32));
        }
        self.set_accessed(sel, d);
        s.attr |= 1;
        Ok(s)
    }

    /// Switch to an outer privilege level: new CS, SS:ESP, and data segment
    /// registers the new level may not use become null.
    fn enter_outer(&mut self, cs: Segment, ss: Segment, esp: u32, cpl: u8) {
        self.cpu.seg[SEG_CS] = cs;
        self.cpu.seg[SEG_SS] = ss;
        self.cpu.set_reg(ESP, esp);
        self.cpu.cpl = cpl;
        for k in [SEG_ES, SEG_DS, SEG_FS, SEG_GS] {
            let s = self.cpu.seg[k];
            let data_or_nc_code = !is_code(s.attr) || !conforming(s.attr);
            if s.selector & 0xFFFC != 0 && data_or_nc_code && dpl_of(s.attr) < cpl {
                self.cpu.seg[k] = Segment { selector: 0, base: 0, limit: 0, attr: 0 };
            }
        }
    }

    /// SYSENTER: to CPL 0 at SYSENTER_CS:SYSENTER_EIP with flat segments.
    pub fn sysenter(&mut self) -> R<u32> {
        let cs_sel = self.cpu.msr_sysenter[0] as u16;
        if self.cpu.cr[0] & 1 == 0 || cs_sel & 0xFFFC == 0 {
            return Err(gp(0));
        }
        let f = self.cpu.eflags() & !(flags::VM | flags::IF | flags::RF);
        self.cpu.set_eflags(f);
        self.cpu.seg[SEG_CS] = Segment::flat(cs_sel & 0xFFFC, super::FLAT_CODE_ATTR);
        self.cpu.seg[SEG_SS] = Segment::flat((cs_sel & 0xFFFC) + 8, super::FLAT_DATA_ATTR);
        self.cpu.cpl = 0;
        self.cpu.set_reg(ESP, self.cpu.msr_sysenter[1]);
        Ok(self.cpu.msr_sysenter[2])
    }

    /// SYSEXIT: to CPL 3 at EDX with ESP = ECX.
    pub fn sysexit(&mut self) -> R<u32> {
        let base = self.cpu.msr_sysenter[0] as u16 & 0xFFFC;
        if self.cpu.cr[0] & 1 == 0 || base == 0 || self.cpu.cpl != 0 {
            return Err(gp(0));
        }
        /// DPL 3 variants of the flat code/data attributes.
        const DPL3: u16 = 3 << 5;
        self.cpu.seg[SEG_CS] = Segment::flat((base + 16) | 3, super::FLAT_CODE_ATTR | DPL3);
        self.cpu.seg[SEG_SS] = Segment::flat((base + 24) | 3, super::FLAT_DATA_ATTR | DPL3);
        self.cpu.cpl = 3;
        self.cpu.set_reg(ESP, self.cpu.reg(ECX));
        Ok(self.cpu.reg(EDX))
    }

    /// Switch to the task whose TSS selector is `sel` (directly, or from a
    /// task gate). `ret_eip` is saved as the old task's EIP. Returns the new EIP.
    pub fn task_switch(&mut self, sel: u16, how: TaskSwitch, ret_eip: u32) -> R<u32> {
        let sel_err = (sel & 0xFFFC) as u32;
        if sel & 4 != 0 || sel & 0xFFFC == 0 {
            return Err(if how == TaskSwitch::Iret { Exception::with_code(vector::TS, sel_err) } else { gp(sel_err) });
        }
        let d = self.descriptor(sel)?;
        let new = Segment::from_descriptor(sel, d);
        let t = new.attr & 0x1F;
        let want_busy = how == TaskSwitch::Iret;
        let ok_type = if want_busy { t == ty::TSS32_BUSY } else { t == ty::TSS32_AVAIL };
        if !ok_type {
            if t == ty::TSS16_AVAIL {
                crate::guest_warn!("16-bit TSS task switch is not supported");
            }
            return Err(if want_busy { Exception::with_code(vector::TS, sel_err) } else { gp(sel_err) });
        }
        if !present(new.attr) {
            return Err(Exception::with_code(vector::NP, sel_err));
        }
        if new.limit < TSS32_MIN_LIMIT {
            return Err(Exception::with_code(vector::TS, sel_err));
        }
        if self.read_sys(new.base.wrapping_add(36), 4) & flags::VM != 0 {
            // A task whose EFLAGS has VM set runs in virtual-8086 mode.
            return Err(Exception::unsupported(crate::cpu::V86_MODE));
        }
        // Save the outgoing task.
        let old = self.cpu.tr;
        let mut efl = self.cpu.eflags();
        if how == TaskSwitch::Iret {
            efl &= !flags::NT;
        }
        let ob = old.base;
        self.write_sys(ob.wrapping_add(32), 4, ret_eip);
        self.write_sys(ob.wrapping_add(36), 4, efl);
        for (k, r) in [EAX, ECX, EDX, 3, ESP, EBP, ESI, EDI].into_iter().enumerate() {
            let v = self.cpu.reg(r);
            self.write_sys(ob.wrapping_add(40 + 4 * k as u32), 4, v);
        }
        for k in 0..6 {
            let v = self.cpu.seg[k].selector as u32;
            self.write_sys(ob.wrapping_add(72 + 4 * k as u32), 2, v);
        }
        let gdt = self.cpu.gdtr.base;
        let busy_byte = |s: u16| gdt.wrapping_add((s & !7) as u32 + 5);
        if matches!(how, TaskSwitch::Jmp | TaskSwitch::Iret) {
            self.update_sys_byte(busy_byte(old.selector), 0, 2);
        }
        let nb = new.base;
        if matches!(how, TaskSwitch::Call | TaskSwitch::Int) {
            self.write_sys(nb, 2, old.selector as u32);
        }
        if how != TaskSwitch::Iret {
            self.update_sys_byte(busy_byte(sel), 2, 0);
        }
        // Load the incoming task.
        let cr3 = self.read_sys(nb.wrapping_add(28), 4);
        let eip = self.read_sys(nb.wrapping_add(32), 4);
        let mut nfl = self.read_sys(nb.wrapping_add(36), 4);
        let mut regs = [0u32; 8];
        for (k, r) in regs.iter_mut().enumerate() {
            *r = self.read_sys(nb.wrapping_add(40 + 4 * k as u32), 4);
        }
        let mut sels = [0u16; 6];
        for (k, s) in sels.iter_mut().enumerate() {
            *s = self.read_sys(nb.wrapping_add(72 + 4 * k as u32), 2) as u16;
        }
        let ldt = self.read_sys(nb.wrapping_add(96), 2) as u16;
        if matches!(how, TaskSwitch::Call | TaskSwitch::Int) {
            nfl |= flags::NT;
        }
        self.cpu.tr = Segment { attr: (new.attr & !0x1F) | ty::TSS32_BUSY, ..new };
        self.cpu.cr[3] = cr3;
        self.cpu.cr[0] |= CR0_TS;
        for (k, r) in [EAX, ECX, EDX, 3, ESP, EBP, ESI, EDI].into_iter().enumerate() {
            self.cpu.set_reg(r, regs[k]);
        }
        self.cpu.set_eflags(nfl);
        let ts = |s: u16| Exception::with_code(vector::TS, (s & 0xFFFC) as u32);
        if ldt & 0xFFFC == 0 {
            self.cpu.ldtr = Segment { selector: ldt, ..Segment::default() };
        } else {
            let d = self.descriptor(ldt & !4).map_err(|_| ts(ldt))?;
            self.cpu.ldtr = Segment::from_descriptor(ldt, d);
        }
        // The new CPL is the RPL of the new CS.
        self.cpu.cpl = (sels[SEG_CS] & 3) as u8;
        let d = self.descriptor(sels[SEG_CS]).map_err(|_| ts(sels[SEG_CS]))?;
        let cs = Segment::from_descriptor(sels[SEG_CS], d);
        if !is_code(cs.attr) {
            return Err(ts(sels[SEG_CS]));
        }
        self.cpu.seg[SEG_CS] = cs;
        for k in [SEG_SS, SEG_DS, SEG_ES, SEG_FS, SEG_GS] {
            self.load_seg(k, sels[k]).map_err(|_| ts(sels[k]))?;
        }
        Ok(eip)
    }
}

/// Exception classes for double-fault detection (SDM Table 6-5).
pub fn is_contributory(v: u8) -> bool {
    matches!(v, vector::DE | vector::TS | vector::NP | vector::SS | vector::GP)
}
