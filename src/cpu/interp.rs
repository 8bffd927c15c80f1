//! The VMM's own execution of the instructions translated code leaves to it:
//! privileged and sensitive instructions, port I/O, CPUID, the BCD
//! instructions 64-bit mode removed, and rare 16-bit forms. Each runs on the
//! saved vCPU state with the architectural checks of the guest's CPL.

use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind, Register};

use super::interrupt::{EventKind, TaskSwitch};
use super::{
    Cpu, EAX, EBP, ECX, EDI, EDX, ESI, ESP, Exception, SEG_CS, SEG_DS, SEG_ES, SEG_FS, SEG_GS, SEG_SS, Segment,
    TableReg, cpuid, flags, vector,
};
use crate::devices::{IoEffect, PortBus};
use crate::memory::{GuestMemory, PAGE_SIZE};

/// What the dispatcher does after an emulated instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Continue at the next instruction.
    Next,
    /// Continue at this EIP.
    Jump(u32),
    /// HLT executed (EIP already past it).
    Halt,
    /// The guest asked the machine to exit (isa-debug-exit) with this status.
    Exit(i32),
    /// A software interrupt (INT n, INT3, INTO, ICEBP): deliver `vector`
    /// with the next instruction's EIP as the return address.
    SoftInt { vector: u8, kind: EventKind },
}

/// Known MSRs.
mod msr {
    pub const TSC: u32 = 0x10;
    pub const APIC_BASE: u32 = 0x1B;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    /// APIC base: 0xFEE00000, bootstrap processor, global enable clear (the
    /// presented Pentium M's APIC is off, and CPUID says so).
    pub const APIC_BASE_VALUE: u64 = 0xFEE0_0100;
    /// IA32_PLATFORM_ID: bits 52:50 give the platform (0 here).
    pub const PLATFORM_ID: u32 = 0x17;
    /// IA32_BIOS_SIGN_ID: a write starts a microcode revision read-back;
    /// reads give the revision in EDX.
    pub const BIOS_SIGN_ID: u32 = 0x8B;
    /// The Banias microcode revision it reports.
    pub const MICROCODE_REVISION: u64 = 0x45 << 32;
    /// IA32_MISC_ENABLE.
    pub const MISC_ENABLE: u32 = 0x1A0;
    /// Its reset value on the Pentium M: fast strings (bit 0), BTS and PEBS
    /// unavailable (bits 11, 12).
    pub const MISC_ENABLE_VALUE: u64 = 0x1801;
    /// IA32_MISC_ENABLE bit 22: CPUID reports leaves 0-2 only.
    pub const MISC_ENABLE_LIMIT_CPUID: u64 = 1 << 22;
    /// Software may change fast strings (bit 0) and the CPUID limit (bit 22).
    pub const MISC_ENABLE_WRITABLE: u64 = 1 | MISC_ENABLE_LIMIT_CPUID;
}

/// IA32_MISC_ENABLE at reset.
pub const MISC_ENABLE_RESET: u64 = msr::MISC_ENABLE_VALUE;

/// Writable EFLAGS bits for POPF/IRET at CPL 0.
const POPF_MASK: u32 = flags::CF
    | flags::PF
    | flags::AF
    | flags::ZF
    | flags::SF
    | flags::TF
    | flags::IF
    | flags::DF
    | flags::OF
    | flags::IOPL
    | flags::NT
    | flags::AC
    | flags::ID;

/// Everything an emulated instruction may touch.
pub struct Env<'a> {
    pub cpu: &'a mut Cpu,
    pub mem: &'a mut GuestMemory,
    pub io: &'a mut PortBus,
    /// Guest physical pages written by the VMM (their translations must be dropped).
    pub written: &'a mut Vec<u32>,
    /// A page fault one of the instruction's memory accesses took, with its
    /// linear address (the caller rolls the instruction back and raises it).
    pub page_fault: std::cell::Cell<Option<(u32, u32)>>,
    /// A stack access outside SS's limit (#SS(0)), before any page fault;
    /// rolled back and raised like one.
    pub stack_fault: std::cell::Cell<bool>,
    /// INVLPG executed: this linear address's translations must go.
    pub invlpg: Option<u32>,
    /// A MOV to CR3 executed (it flushes the TLB even when the value is
    /// unchanged).
    pub cr_written: bool,
    /// Accesses are user-mode (CPL 3) for paging protection checks.
    pub user: bool,
}

impl<'a> Env<'a> {
    pub fn new(cpu: &'a mut Cpu, mem: &'a mut GuestMemory, io: &'a mut PortBus, written: &'a mut Vec<u32>) -> Self {
        let user = cpu.cpl == 3;
        Env {
            cpu,
            mem,
            io,
            written,
            page_fault: std::cell::Cell::new(None),
            stack_fault: std::cell::Cell::new(false),
            invlpg: None,
            cr_written: false,
            user,
        }
    }

    /// The first fault an access took, as an exception (for a page fault,
    /// CR2 set), if any.
    pub fn take_page_fault(&mut self) -> Option<Exception> {
        if self.stack_fault.take() {
            self.page_fault.take();
            return Some(Exception::with_code(vector::SS, 0));
        }
        let (lin, code) = self.page_fault.take()?;
        self.cpu.cr[2] = lin;
        Some(Exception::with_code(vector::PF, code))
    }

    /// Physical address of linear `lin` for a read, or None after recording
    /// a page fault (paging off: the identity).
    #[inline]
    fn phys_read(&self, lin: u32, user: bool) -> Option<u32> {
        let regs = self.mem.paging();
        if !regs.enabled() {
            return Some(lin);
        }
        match self.mem.translate_read(lin, user) {
            Ok(p) => Some(p),
            Err(code) => {
                if self.page_fault.get().is_none() {
                    self.page_fault.set(Some((lin, code)));
                }
                None
            }
        }
    }
}

type R<T> = Result<T, Exception>;

fn gp0() -> Exception {
    Exception::with_code(vector::GP, 0)
}

fn ud() -> Exception {
    Exception::new(vector::UD)
}

fn gpr_index(r: Register) -> Option<usize> {
    let n = match r.full_register32() {
        Register::EAX => EAX,
        Register::ECX => ECX,
        Register::EDX => EDX,
        Register::EBX => 3,
        Register::ESP => ESP,
        Register::EBP => EBP,
        Register::ESI => ESI,
        Register::EDI => EDI,
        _ => return None,
    };
    Some(n)
}

/// The segment register index (ES..GS) of `r`, if it is one.
pub(crate) fn seg_index(r: Register) -> Option<usize> {
    Some(match r {
        Register::ES => SEG_ES,
        Register::CS => SEG_CS,
        Register::SS => SEG_SS,
        Register::DS => SEG_DS,
        Register::FS => SEG_FS,
        Register::GS => SEG_GS,
        _ => return None,
    })
}

fn parity(v: u8) -> bool {
    v.count_ones().is_multiple_of(2)
}

impl Env<'_> {
    fn reg(&self, r: Register) -> u32 {
        let Some(n) = gpr_index(r) else { return 0 };
        let v = self.cpu.reg(n);
        match r.size() {
            1 if matches!(r, Register::AH | Register::CH | Register::DH | Register::BH) => (v >> 8) & 0xFF,
            1 => v & 0xFF,
            2 => v & 0xFFFF,
            _ => v,
        }
    }

    fn set_reg(&mut self, r: Register, val: u32) {
        let Some(n) = gpr_index(r) else { return };
        let old = self.cpu.reg(n);
        let v = match r.size() {
            1 if matches!(r, Register::AH | Register::CH | Register::DH | Register::BH) => {
                (old & !0xFF00) | ((val & 0xFF) << 8)
            }
            1 => (old & !0xFF) | (val & 0xFF),
            2 => (old & !0xFFFF) | (val & 0xFFFF),
            _ => val,
        };
        self.cpu.set_reg(n, v);
    }

    /// Effective address (offset within the segment) of the memory operand.
    fn offset(&self, i: &Instruction) -> u32 {
        let sixteen = i.memory_displ_size() == 2
            || matches!(i.memory_base(), Register::BX | Register::BP | Register::SI | Register::DI);
        let mut a = i.memory_displacement32();
        if i.memory_base() != Register::None {
            a = a.wrapping_add(self.reg(i.memory_base()));
        }
        if i.memory_index() != Register::None {
            a = a.wrapping_add(self.reg(i.memory_index()).wrapping_mul(i.memory_index_scale()));
        }
        if sixteen { a & 0xFFFF } else { a }
    }

    /// Linear address of the memory operand.
    pub(crate) fn ea(&self, i: &Instruction) -> R<u32> {
        let seg = seg_index(i.memory_segment()).unwrap_or(SEG_DS);
        Ok(self.cpu.seg[seg].base.wrapping_add(self.offset(i)))
    }

    /// Linear address of the memory operand, `size` bytes of which are
    /// accessed: #GP(0), or #SS(0) through SS, if they are outside the
    /// segment's limit or the segment is null (as translated code checks).
    fn checked_ea(&self, i: &Instruction, size: usize) -> R<u32> {
        let seg = seg_index(i.memory_segment()).unwrap_or(SEG_DS);
        let (base, lo, hi) = self.cpu.checked_range(seg, &self.cpu.seg[seg]);
        let off = self.offset(i);
        let last = off.wrapping_add(size.max(1) as u32 - 1);
        if off < lo || last < off || last > hi {
            return Err(Exception::with_code(if seg == SEG_SS { vector::SS } else { vector::GP }, 0));
        }
        Ok(base.wrapping_add(off))
    }

    /// Read `size` bytes at linear `addr` (through the guest page tables,
    /// with the privilege of the current CPL).
    pub fn read(&self, addr: u32, size: usize) -> u32 {
        self.read_as(addr, size, self.user)
    }

    /// Read a system structure (GDT, LDT, IDT, TSS): always a supervisor access.
    pub fn read_sys(&self, addr: u32, size: usize) -> u32 {
        self.read_as(addr, size, false)
    }

    /// Set and clear bits of a system-structure byte (a descriptor's
    /// accessed or busy bit) atomically, as the processor's locked update
    /// does; a supervisor write access that may fault like `write_sys`.
    pub fn update_sys_byte(&mut self, addr: u32, set: u8, clear: u8) {
        let phys = if self.mem.paging().enabled() {
            match self.mem.translate(addr, true, false) {
                Ok(p) => p,
                Err(code) => {
                    if self.page_fault.get().is_none() {
                        self.page_fault.set(Some((addr, code)));
                    }
                    return;
                }
            }
        } else {
            addr
        };
        self.mem.update_u8(phys, set, clear);
        let page = phys & !(PAGE_SIZE as u32 - 1);
        if self.mem.is_protected(page) && !self.written.contains(&page) {
            self.written.push(page);
        }
    }

    /// The `N` dwords at linear `addr` as the current privilege reads them,
    /// through one translation, when they lie in one page of plain RAM and
    /// that page is mapped; `None` otherwise (the caller then reads them one
    /// by one, which reports any fault).
    pub fn read_dwords<const N: usize>(&self, addr: u32) -> Option<[u32; N]> {
        self.read_dwords_as(addr, self.user)
    }

    /// `read_dwords` with the privilege of the access given.
    fn read_dwords_as<const N: usize>(&self, addr: u32, user: bool) -> Option<[u32; N]> {
        if (addr & 0xFFF) as usize + 4 * N > PAGE_SIZE {
            return None;
        }
        let p = if self.mem.paging().enabled() { self.mem.translate_read(addr, user).ok()? } else { addr };
        if !self.mem.is_plain_ram(p, 4 * N) {
            return None;
        }
        let w = self.mem.ram().get(p as usize..p as usize + 4 * N)?;
        let mut out = [0u32; N];
        for (k, d) in out.iter_mut().enumerate() {
            *d = u32::from_le_bytes([w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3]]);
        }
        Some(out)
    }

    /// Read the 8 bytes of a descriptor or gate at linear `addr` (a
    /// supervisor access): one translation when they lie in one page of
    /// plain RAM, else two dword reads.
    pub fn read_sys64(&self, addr: u32) -> u64 {
        match self.read_dwords_as::<2>(addr, false) {
            Some([lo, hi]) => lo as u64 | (hi as u64) << 32,
            None => self.read_sys(addr, 4) as u64 | (self.read_sys(addr.wrapping_add(4), 4) as u64) << 32,
        }
    }

    /// Write a system structure: always a supervisor access.
    pub fn write_sys(&mut self, addr: u32, size: usize, v: u32) {
        let user = std::mem::replace(&mut self.user, false);
        self.write(addr, size, v);
        self.user = user;
    }

    fn read_as(&self, addr: u32, size: usize, user: bool) -> u32 {
        let mut b = [0u8; 4];
        if !self.mem.paging().enabled() {
            // Identity: a fixed 4-byte load, masked (bytes outside RAM read as ones).
            let a = addr as usize;
            if let Some(w) = self.mem.ram().get(a..a + 4).filter(|_| self.mem.is_plain_ram(addr, 4)) {
                let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                return if size >= 4 { v } else { v & ((1u32 << (8 * size)) - 1) };
            }
            self.mem.read(addr, &mut b[..size]);
            return u32::from_le_bytes(b);
        }
        if (addr & 0xFFF) as usize + size <= PAGE_SIZE {
            // Within one page: one translation, one load.
            let Some(p) = self.phys_read(addr, user) else { return 0 };
            let a = p as usize;
            if let Some(w) = self.mem.ram().get(a..a + 4).filter(|_| self.mem.is_plain_ram(p, 4)) {
                let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                return if size >= 4 { v } else { v & ((1u32 << (8 * size)) - 1) };
            }
            self.mem.read(p, &mut b[..size]);
            return u32::from_le_bytes(b);
        }
        // Across a page boundary: one translation per page.
        let mut phys = 0;
        for (k, byte) in b.iter_mut().enumerate().take(size) {
            let lin = addr.wrapping_add(k as u32);
            if k == 0 || lin & 0xFFF == 0 {
                match self.phys_read(lin, user) {
                    Some(p) => phys = p,
                    None => return 0,
                }
            } else {
                phys += 1;
            }
            *byte = self.mem.read_u8(phys);
        }
        u32::from_le_bytes(b)
    }

    /// Write `size` bytes at linear `addr`; a page fault is recorded and
    /// nothing further is written.
    pub fn write(&mut self, addr: u32, size: usize, v: u32) {
        let bytes = v.to_le_bytes();
        if !self.mem.paging().enabled() {
            self.mem.write(addr, &bytes[..size]);
            for p in [addr, addr.wrapping_add(size as u32 - 1)] {
                let p = p & !(PAGE_SIZE as u32 - 1);
                if self.mem.is_protected(p) && !self.written.contains(&p) {
                    self.written.push(p);
                }
            }
            return;
        }
        if (addr & 0xFFF) as usize + size <= PAGE_SIZE {
            match self.mem.translate(addr, true, self.user) {
                Ok(p) => {
                    self.mem.write(p, &bytes[..size]);
                    let page = p & !(PAGE_SIZE as u32 - 1);
                    if self.mem.is_protected(page) && !self.written.contains(&page) {
                        self.written.push(page);
                    }
                }
                Err(code) => {
                    if self.page_fault.get().is_none() {
                        self.page_fault.set(Some((addr, code)));
                    }
                }
            }
            return;
        }
        // Check every page first so a faulting write changes nothing.
        let mut phys = [0u32; 4];
        for k in 0..size {
            let lin = addr.wrapping_add(k as u32);
            if k > 0 && lin & 0xFFF != 0 {
                phys[k] = phys[k - 1] + 1;
                continue;
            }
            match self.mem.translate(lin, true, self.user) {
                Ok(p) => phys[k] = p,
                Err(code) => {
                    if self.page_fault.get().is_none() {
                        self.page_fault.set(Some((lin, code)));
                    }
                    return;
                }
            }
        }
        for k in 0..size {
            self.mem.write(phys[k], &bytes[k..k + 1]);
            let p = phys[k] & !(PAGE_SIZE as u32 - 1);
            if self.mem.is_protected(p) && !self.written.contains(&p) {
                self.written.push(p);
            }
        }
    }

    /// Operand `n` (register, immediate or memory) of `size` bytes.
    fn op(&self, i: &Instruction, n: u32, size: usize) -> R<u32> {
        Ok(match i.op_kind(n) {
            OpKind::Register => {
                let r = i.op_register(n);
                if let Some(s) = seg_index(r) { self.cpu.seg[s].selector as u32 } else { self.reg(r) }
            }
            OpKind::Memory => {
                let a = self.checked_ea(i, size)?;
                self.read(a, size)
            }
            _ => i.immediate(n) as u32,
        })
    }

    fn set_op(&mut self, i: &Instruction, n: u32, size: usize, v: u32) -> R<()> {
        match i.op_kind(n) {
            OpKind::Register => {
                let r = i.op_register(n);
                // A segment register stored into a 32-bit register zero-extends.
                let r = if size == 4 && r.size() == 2 { r.full_register32() } else { r };
                self.set_reg(r, v);
            }
            OpKind::Memory => {
                let a = self.checked_ea(i, size)?;
                self.write(a, size, v);
            }
            _ => return Err(ud()),
        }
        Ok(())
    }

    /// Linear address of the `size` bytes at offset `esp` in SS, or None
    /// after recording #SS(0) if they are outside its limit (SDM vol. 3
    /// sec. 5.3: below an expand-down limit, above an expand-up one). A
    /// 16-bit stack (B = 0) is left unchecked: its offsets are ESP-wide here.
    pub(crate) fn stack_addr(&self, esp: u32, size: usize) -> Option<u32> {
        let ss = &self.cpu.seg[SEG_SS];
        let esp = self.sp_offset(esp);
        let (base, lo, hi) = self.cpu.checked_range(SEG_SS, ss);
        let last = esp.wrapping_add(size as u32 - 1);
        if esp < lo || last < esp || last > hi {
            if self.page_fault.get().is_none() {
                self.stack_fault.set(true);
            }
            return None;
        }
        Some(base.wrapping_add(esp))
    }

    /// A memory access of the instruction faulted (it is rolled back).
    pub(crate) fn faulted(&self) -> bool {
        self.stack_fault.get() || self.page_fault.get().is_some()
    }

    /// A 16-bit stack segment (SS.B clear, real mode included): the stack
    /// pointer is SP, and ESP's high half stays as it is.
    fn stack16(&self) -> bool {
        /// Descriptor attribute bit D/B.
        const ATTR_B: u16 = 1 << 14;
        self.cpu.seg[SEG_SS].attr & ATTR_B == 0
    }

    /// The stack offset ESP value `esp` addresses (SP on a 16-bit stack).
    pub(crate) fn sp_offset(&self, esp: u32) -> u32 {
        if self.stack16() { esp & 0xFFFF } else { esp }
    }

    /// ESP value `esp` moved by `delta` bytes (modulo 64 KiB in SP on a
    /// 16-bit stack).
    pub(crate) fn sp_moved(&self, esp: u32, delta: u32) -> u32 {
        if self.stack16() { (esp & 0xFFFF_0000) | (esp.wrapping_add(delta) & 0xFFFF) } else { esp.wrapping_add(delta) }
    }

    pub(crate) fn push(&mut self, v: u32, size: usize) {
        let esp = self.sp_moved(self.cpu.reg(ESP), (size as u32).wrapping_neg());
        if let Some(a) = self.stack_addr(esp, size) {
            self.write(a, size, v);
        }
        self.cpu.set_reg(ESP, esp);
    }

    pub(crate) fn pop(&mut self, size: usize) -> u32 {
        let esp = self.cpu.reg(ESP);
        let v = self.stack_addr(esp, size).map_or(0, |a| self.read(a, size));
        self.cpu.set_reg(ESP, self.sp_moved(esp, size as u32));
        v
    }

    pub(crate) fn io_allowed(&self) -> bool {
        (self.cpu.cpl as u32) <= (self.cpu.eflags() & flags::IOPL) >> 12
    }

    pub(crate) fn require_cpl0(&self) -> R<()> {
        if self.cpu.cpl == 0 { Ok(()) } else { Err(gp0()) }
    }

    fn port_in(&mut self, port: u16, size: usize) -> u32 {
        self.io.read(port, size as u8)
    }

    fn port_out(&mut self, port: u16, size: usize, v: u32) -> Option<i32> {
        match self.io.write(port, size as u8, v) {
            IoEffect::Exit(code) => Some(code),
            IoEffect::None => None,
        }
    }

    /// Read a descriptor for `sel` from the GDT or LDT.
    pub(crate) fn descriptor(&self, sel: u16) -> R<u64> {
        let table = if sel & 4 != 0 {
            TableReg { base: self.cpu.ldtr.base, limit: self.cpu.ldtr.limit.min(0xFFFF) as u16 }
        } else {
            self.cpu.gdtr
        };
        let off = (sel & !7) as u32;
        if off + 7 > table.limit as u32 {
            return Err(Exception::with_code(vector::GP, (sel & 0xFFFC) as u32));
        }
        let a = table.base.wrapping_add(off);
        Ok(self.read_sys64(a))
    }

    /// Set the accessed bit of a descriptor in memory, as the CPU does on load.
    pub(crate) fn set_accessed(&mut self, sel: u16, d: u64) {
        if d & (1 << 40) != 0 {
            return;
        }
        let base = if sel & 4 != 0 { self.cpu.ldtr.base } else { self.cpu.gdtr.base };
        let a = base.wrapping_add((sel & !7) as u32 + 5);
        self.update_sys_byte(a, 1, 0);
    }

    /// Load a data or stack segment register with protected-mode checks.
    pub(crate) fn load_seg(&mut self, seg: usize, sel: u16) -> R<()> {
        let err = (sel & 0xFFFC) as u32;
        if self.cpu.cr[0] & 1 == 0 {
            let s = &mut self.cpu.seg[seg];
            s.selector = sel;
            s.base = (sel as u32) << 4;
            return Ok(());
        }
        if sel & 0xFFFC == 0 {
            if seg == SEG_SS {
                return Err(gp0());
            }
            self.cpu.seg[seg] = Segment { selector: sel, base: 0, limit: 0, attr: 0 };
            return Ok(());
        }
        let d = self.descriptor(sel)?;
        let s = Segment::from_descriptor(sel, d);
        let is_system = s.attr & 0x10 == 0;
        let is_code = s.attr & 0x08 != 0;
        let readable = !is_code || s.attr & 0x02 != 0;
        let writable = !is_code && s.attr & 0x02 != 0;
        let dpl = ((s.attr >> 5) & 3) as u8;
        let rpl = (sel & 3) as u8;
        let cpl = self.cpu.cpl;
        if seg == SEG_SS {
            if is_system || !writable || rpl != cpl || dpl != cpl {
                return Err(Exception::with_code(vector::GP, err));
            }
            if s.attr & 0x80 == 0 {
                return Err(Exception::with_code(vector::SS, err));
            }
        } else {
            let conforming = is_code && s.attr & 0x04 != 0;
            if is_system || !readable || (!conforming && (rpl > dpl || cpl > dpl)) {
                return Err(Exception::with_code(vector::GP, err));
            }
            if s.attr & 0x80 == 0 {
                return Err(Exception::with_code(vector::NP, err));
            }
        }
        self.set_accessed(sel, d);
        let mut s = s;
        s.attr |= 1;
        self.cpu.seg[seg] = s;
        Ok(())
    }

    /// Far transfer to `sel:off` within the same privilege level.
    pub(crate) fn load_cs(&mut self, sel: u16) -> R<()> {
        let err = (sel & 0xFFFC) as u32;
        if self.cpu.cr[0] & 1 == 0 {
            let s = &mut self.cpu.seg[SEG_CS];
            s.selector = sel;
            s.base = (sel as u32) << 4;
            return Ok(());
        }
        if sel & 0xFFFC == 0 {
            return Err(gp0());
        }
        let d = self.descriptor(sel)?;
        let s = Segment::from_descriptor(sel, d);
        let is_code = s.attr & 0x18 == 0x18;
        let dpl = ((s.attr >> 5) & 3) as u8;
        let conforming = s.attr & 0x04 != 0;
        let cpl = self.cpu.cpl;
        if !is_code || (conforming && dpl > cpl) || (!conforming && (dpl != cpl || (sel & 3) as u8 > cpl)) {
            // Gates and privilege changes arrive with the protected-mode milestone.
            return Err(Exception::with_code(vector::GP, err));
        }
        if s.attr & 0x80 == 0 {
            return Err(Exception::with_code(vector::NP, err));
        }
        self.set_accessed(sel, d);
        let mut s = s;
        s.attr |= 1;
        s.selector = (sel & !3) | cpl as u16;
        self.cpu.seg[SEG_CS] = s;
        Ok(())
    }

    fn cond(&self, cc: ConditionCode) -> bool {
        let f = self.cpu.eflags();
        let (c, z, s, o, p) =
            (f & flags::CF != 0, f & flags::ZF != 0, f & flags::SF != 0, f & flags::OF != 0, f & flags::PF != 0);
        match cc {
            ConditionCode::o => o,
            ConditionCode::no => !o,
            ConditionCode::b => c,
            ConditionCode::ae => !c,
            ConditionCode::e => z,
            ConditionCode::ne => !z,
            ConditionCode::be => c || z,
            ConditionCode::a => !c && !z,
            ConditionCode::s => s,
            ConditionCode::ns => !s,
            ConditionCode::p => p,
            ConditionCode::np => !p,
            ConditionCode::l => s != o,
            ConditionCode::ge => s == o,
            ConditionCode::le => z || s != o,
            ConditionCode::g => !z && s == o,
            ConditionCode::None => true,
        }
    }

    fn set_flag(&mut self, bit: u32, on: bool) {
        let f = self.cpu.eflags();
        self.cpu.set_eflags(if on { f | bit } else { f & !bit });
    }

    fn flag(&self, bit: u32) -> bool {
        self.cpu.eflags() & bit != 0
    }

    /// SF, ZF and PF from an 8-bit result.
    fn szp8(&mut self, v: u8) {
        self.set_flag(flags::SF, v & 0x80 != 0);
        self.set_flag(flags::ZF, v == 0);
        self.set_flag(flags::PF, parity(v));
    }
}

/// Execute one instruction that translated code left to the VMM.
pub fn execute(env: &mut Env, i: &Instruction) -> R<Flow> {
    use Mnemonic as M;
    let osize: usize = match i.code() {
        Code::Pushfw | Code::Popfw | Code::Iretw | Code::Retfw | Code::Retfw_imm16 | Code::Pushaw | Code::Popaw => 2,
        _ => {
            if i.op_count() > 0 && i.op0_kind() == OpKind::Register {
                i.op0_register().size().clamp(1, 4)
            } else {
                4
            }
        }
    };
    match i.mnemonic() {
        M::Nop | M::Pause => {}
        M::Lea => {
            let v = env.offset(i);
            env.set_reg(i.op0_register(), v);
        }
        M::In => {
            let size = i.op0_register().size();
            let port =
                if i.op1_kind() == OpKind::Register { env.reg(Register::DX) as u16 } else { i.immediate8() as u16 };
            check_io(env, port, size)?;
            let v = env.port_in(port, size);
            env.set_reg(i.op0_register(), v);
        }
        M::Out => {
            let size = i.op1_register().size();
            let port =
                if i.op0_kind() == OpKind::Register { env.reg(Register::DX) as u16 } else { i.immediate8() as u16 };
            check_io(env, port, size)?;
            let v = env.reg(i.op1_register());
            if let Some(code) = env.port_out(port, size, v) {
                return Ok(Flow::Exit(code));
            }
        }
        M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => return string_io(env, i),
        M::Rdtsc => {
            // CR4.TSD restricts RDTSC to CPL 0.
            const CR4_TSD: u32 = 1 << 2;
            if env.cpu.cr[4] & CR4_TSD != 0 && env.cpu.cpl != 0 {
                return Err(gp0());
            }
            let t = tsc(env.cpu);
            env.cpu.set_reg(EAX, t as u32);
            env.cpu.set_reg(EDX, (t >> 32) as u32);
        }
        M::Cpuid => {
            let leaf = env.cpu.reg(EAX);
            let limited = env.cpu.msr_misc_enable & msr::MISC_ENABLE_LIMIT_CPUID != 0;
            let mut r = cpuid::cpuid(leaf, env.cpu.reg(ECX), limited);
            if leaf == 1
                && let Some(apic) = &env.cpu.apic
            {
                // The machine has a local APIC (CPUID shows it unless it is
                // globally disabled); EBX[31:24] is its initial ID.
                let a = crate::devices::chipset::lock(apic);
                if a.base & crate::devices::lapic::BASE_ENABLE != 0 {
                    r[3] |= cpuid::edx1::APIC;
                }
                r[1] |= a.initial_id() << 24;
            }
            env.cpu.set_reg(EAX, r[0]);
            env.cpu.set_reg(3, r[1]);
            env.cpu.set_reg(ECX, r[2]);
            env.cpu.set_reg(EDX, r[3]);
        }
        M::Hlt => {
            env.require_cpl0()?;
            return Ok(Flow::Halt);
        }
        M::Cli | M::Sti => {
            if !env.io_allowed() {
                return Err(gp0());
            }
            env.set_flag(flags::IF, i.mnemonic() == M::Sti);
        }
        M::Pushf | M::Pushfd => {
            let f = env.cpu.eflags() & !(flags::VM | flags::RF);
            env.push(f, osize);
        }
        M::Popf | M::Popfd => {
            let v = env.pop(osize);
            let mut mask = POPF_MASK;
            if env.cpu.cpl > 0 {
                mask &= !flags::IOPL;
                if !env.io_allowed() {
                    mask &= !flags::IF;
                }
            }
            if osize == 2 {
                mask &= 0xFFFF;
            }
            let f = env.cpu.eflags();
            env.cpu.set_eflags((f & !mask) | (v & mask));
        }
        M::Push if i.op0_kind() == OpKind::Register && i.op0_register().is_segment_register() => {
            let sel = env.cpu.seg[seg_index(i.op0_register()).unwrap_or(SEG_DS)].selector as u32;
            let size = if i.code() == Code::Pushd_ES
                || matches!(
                    i.code(),
                    Code::Pushd_CS | Code::Pushd_SS | Code::Pushd_DS | Code::Pushd_FS | Code::Pushd_GS
                ) {
                4
            } else {
                2
            };
            // A 32-bit push of a segment register writes only the low word.
            let esp = env.sp_moved(env.cpu.reg(ESP), (size as u32).wrapping_neg());
            if let Some(a) = env.stack_addr(esp, size) {
                env.write(a, 2, sel);
            }
            env.cpu.set_reg(ESP, esp);
        }
        M::Pop if i.op0_kind() == OpKind::Register && i.op0_register().is_segment_register() => {
            let size =
                if matches!(i.code(), Code::Popd_ES | Code::Popd_SS | Code::Popd_DS | Code::Popd_FS | Code::Popd_GS) {
                    4
                } else {
                    2
                };
            let esp = env.cpu.reg(ESP);
            let Some(a) = env.stack_addr(esp, size as usize) else {
                return Ok(Flow::Next); // #SS(0): the caller rolls back
            };
            let sel = env.read(a, 2) as u16;
            if env.faulted() {
                return Ok(Flow::Next);
            }
            env.load_seg(seg_index(i.op0_register()).unwrap_or(SEG_DS), sel)?;
            env.cpu.set_reg(ESP, env.sp_moved(esp, size));
        }
        M::Push => {
            let size = if i.code() == Code::Push_imm16 || i.code() == Code::Pushw_imm8 { 2 } else { osize.max(2) };
            let size = if i.op0_kind() == OpKind::Memory { i.memory_size().size() } else { size };
            let v = env.op(i, 0, size)?;
            env.push(v, size);
        }
        M::Pop => {
            let size = if i.op0_kind() == OpKind::Memory { i.memory_size().size() } else { osize };
            let esp = env.cpu.reg(ESP);
            let v = env.pop(size);
            if env.faulted() {
                return Ok(Flow::Next); // nothing is stored: the caller rolls back
            }
            if let Err(e) = env.set_op(i, 0, size, v) {
                env.cpu.set_reg(ESP, esp); // a faulting POP leaves ESP
                return Err(e);
            }
        }
        M::Pusha | M::Pushad => {
            let size = osize;
            let esp = env.cpu.reg(ESP);
            for r in [EAX, ECX, EDX, 3, ESP, EBP, ESI, EDI] {
                let v = if r == ESP { esp } else { env.cpu.reg(r) };
                env.push(v, size);
            }
        }
        M::Popa | M::Popad => {
            let size = osize;
            for r in [EDI, ESI, EBP, ESP, 3, EDX, ECX, EAX] {
                let v = env.pop(size);
                if r != ESP {
                    let old = env.cpu.reg(r);
                    env.cpu.set_reg(r, if size == 2 { (old & !0xFFFF) | (v & 0xFFFF) } else { v });
                }
            }
        }
        M::Enter => {
            let size = osize.max(2);
            let alloc = i.immediate16() as u32;
            let level = (i.immediate8_2nd() & 0x1F) as u32;
            env.push(env.cpu.reg(EBP), size);
            let frame = env.cpu.reg(ESP);
            if level > 0 {
                let mut ebp = env.cpu.reg(EBP);
                for _ in 1..level {
                    ebp = ebp.wrapping_sub(size as u32);
                    let v = env.stack_addr(ebp, size).map_or(0, |a| env.read(a, size));
                    env.push(v, size);
                }
                env.push(frame, size);
            }
            env.cpu.set_reg(EBP, frame);
            env.cpu.set_reg(ESP, env.cpu.reg(ESP).wrapping_sub(alloc));
        }
        M::Leave => {
            env.cpu.set_reg(ESP, env.cpu.reg(EBP));
            let v = env.pop(osize.max(2));
            env.cpu.set_reg(EBP, v);
        }
        M::Mov if i.op0_kind() == OpKind::Register && i.op0_register().is_segment_register() => {
            let sel = env.op(i, 1, 2)? as u16;
            match i.op0_register() {
                Register::CS => return Err(ud()),
                r => env.load_seg(seg_index(r).unwrap_or(SEG_DS), sel)?,
            }
        }
        M::Mov if i.op1_kind() == OpKind::Register && i.op1_register().is_segment_register() => {
            let sel = env.cpu.seg[seg_index(i.op1_register()).unwrap_or(SEG_DS)].selector as u32;
            let size = if i.op0_kind() == OpKind::Memory { 2 } else { i.op0_register().size() };
            env.set_op(i, 0, size, sel)?;
        }
        M::Mov if i.op0_register().is_cr() || i.op1_register().is_cr() => {
            env.require_cpl0()?;
            return mov_cr(env, i);
        }
        M::Mov if i.op0_register().is_dr() || i.op1_register().is_dr() => {
            env.require_cpl0()?;
            if i.op0_register().is_dr() {
                let n = (i.op0_register() as u32 - Register::DR0 as u32) as usize;
                let v = env.reg(i.op1_register());
                if n < 8 {
                    env.cpu.dr[n] = v;
                }
            } else {
                let n = (i.op1_register() as u32 - Register::DR0 as u32) as usize;
                let v = env.cpu.dr.get(n).copied().unwrap_or(0);
                env.set_reg(i.op0_register(), v);
            }
        }
        M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => {
            let size = i.op0_register().size();
            let a = env.ea(i)?;
            let off = env.read(a, size);
            let sel = env.read(a.wrapping_add(size as u32), 2) as u16;
            let seg = match i.mnemonic() {
                M::Lds => SEG_DS,
                M::Les => SEG_ES,
                M::Lfs => SEG_FS,
                M::Lgs => SEG_GS,
                _ => SEG_SS,
            };
            env.load_seg(seg, sel)?;
            env.set_reg(i.op0_register(), off);
        }
        M::Lgdt | M::Lidt => {
            env.require_cpl0()?;
            let a = env.ea(i)?;
            let limit = env.read(a, 2) as u16;
            let mut base = env.read(a.wrapping_add(2), 4);
            if i.code().op_code().operand_size() == 16 {
                base &= 0xFF_FFFF;
            }
            let t = TableReg { base, limit };
            if i.mnemonic() == M::Lgdt {
                env.cpu.gdtr = t;
            } else {
                env.cpu.idtr = t;
                env.cpu.idt_loaded = true;
            }
        }
        M::Sgdt | M::Sidt => {
            let t = if i.mnemonic() == M::Sgdt { env.cpu.gdtr } else { env.cpu.idtr };
            let a = env.ea(i)?;
            env.write(a, 2, t.limit as u32);
            env.write(a.wrapping_add(2), 4, t.base);
        }
        M::Sldt | M::Str => {
            let v = if i.mnemonic() == M::Sldt { env.cpu.ldtr.selector } else { env.cpu.tr.selector } as u32;
            let size = if i.op0_kind() == OpKind::Memory { 2 } else { i.op0_register().size() };
            env.set_op(i, 0, size, v)?;
        }
        M::Smsw => {
            let size = if i.op0_kind() == OpKind::Memory { 2 } else { i.op0_register().size() };
            let v = env.cpu.cr[0];
            env.set_op(i, 0, size, if size == 2 { v & 0xFFFF } else { v })?;
        }
        M::Lmsw => {
            env.require_cpl0()?;
            let v = env.op(i, 0, 2)?;
            // LMSW sets PE/MP/EM/TS; it can set but never clear PE.
            let cr0 = env.cpu.cr[0];
            env.cpu.cr[0] = (cr0 & !0xE) | (v & 0xF) | (cr0 & 1);
        }
        M::Clts => {
            env.require_cpl0()?;
            env.cpu.cr[0] &= !(1 << 3);
        }
        M::Invd | M::Wbinvd => env.require_cpl0()?,
        M::Invlpg => {
            env.require_cpl0()?;
            env.invlpg = Some(env.ea(i)?);
        }
        M::Rdmsr => {
            env.require_cpl0()?;
            let v = match env.cpu.reg(ECX) {
                msr::TSC => tsc(env.cpu),
                msr::APIC_BASE => match &env.cpu.apic {
                    Some(a) => crate::devices::chipset::lock(a).base,
                    None => msr::APIC_BASE_VALUE,
                },
                msr::PLATFORM_ID => 0,
                msr::BIOS_SIGN_ID => msr::MICROCODE_REVISION,
                msr::MISC_ENABLE => env.cpu.msr_misc_enable,
                msr::SYSENTER_CS => env.cpu.msr_sysenter[0] as u64,
                msr::SYSENTER_ESP => env.cpu.msr_sysenter[1] as u64,
                msr::SYSENTER_EIP => env.cpu.msr_sysenter[2] as u64,
                _ => return Err(gp0()),
            };
            env.cpu.set_reg(EAX, v as u32);
            env.cpu.set_reg(EDX, (v >> 32) as u32);
        }
        M::Wrmsr => {
            env.require_cpl0()?;
            let v = env.cpu.reg(EAX);
            match env.cpu.reg(ECX) {
                msr::APIC_BASE if env.cpu.apic.is_some() => {
                    let v = (env.cpu.reg(EDX) as u64) << 32 | v as u64;
                    if v >> 32 != 0 {
                        // No physical address bits above 31 (no PAE).
                        return Err(gp0());
                    }
                    let moved = if let Some(a) = &env.cpu.apic {
                        let mut apic = crate::devices::chipset::lock(a);
                        let (old, new) = ((apic.base & !0xFFF) as u32, (v & !0xFFF) as u32);
                        // Software may move the register page and disable the
                        // APIC globally; the BSP flag is the hardware's.
                        let keep = crate::devices::lapic::BASE_ENABLE | !0xFFF;
                        apic.base = (apic.base & !keep) | (v & keep);
                        (old != new).then_some((old, new))
                    } else {
                        None
                    };
                    if let Some((old, new)) = moved {
                        // This CPU's view only: each CPU has its own page.
                        env.mem.move_mmio(old, new);
                        env.cr_written = true;
                    }
                }
                msr::TSC | msr::APIC_BASE | msr::BIOS_SIGN_ID => {}
                msr::MISC_ENABLE => {
                    let v = (env.cpu.reg(EDX) as u64) << 32 | v as u64;
                    let w = msr::MISC_ENABLE_WRITABLE;
                    if (v ^ env.cpu.msr_misc_enable) & !w != 0 {
                        return Err(gp0());
                    }
                    env.cpu.msr_misc_enable = v;
                }
                msr::SYSENTER_CS => env.cpu.msr_sysenter[0] = v,
                msr::SYSENTER_ESP => env.cpu.msr_sysenter[1] = v,
                msr::SYSENTER_EIP => env.cpu.msr_sysenter[2] = v,
                _ => return Err(gp0()),
            }
        }
        M::Rdpmc => return Err(gp0()),
        M::Lar | M::Lsl | M::Verr | M::Verw => lar_lsl_verx(env, i)?,
        M::Lldt | M::Ltr => {
            env.require_cpl0()?;
            let sel = env.op(i, 0, 2)? as u16;
            if i.mnemonic() == M::Lldt && sel & 0xFFFC == 0 {
                env.cpu.ldtr = Segment { selector: sel, ..Segment::default() };
            } else {
                if sel & 4 != 0 {
                    return Err(Exception::with_code(vector::GP, (sel & 0xFFFC) as u32));
                }
                let d = env.descriptor(sel)?;
                let s = Segment::from_descriptor(sel, d);
                let ty = s.attr & 0x1F;
                let ok = if i.mnemonic() == M::Lldt { ty == 0x02 } else { ty == 0x01 || ty == 0x09 };
                if !ok {
                    return Err(Exception::with_code(vector::GP, (sel & 0xFFFC) as u32));
                }
                if s.attr & 0x80 == 0 {
                    return Err(Exception::with_code(vector::NP, (sel & 0xFFFC) as u32));
                }
                if i.mnemonic() == M::Lldt {
                    env.cpu.ldtr = s;
                } else {
                    // Mark the TSS busy in the GDT and in the cache.
                    let a = env.cpu.gdtr.base.wrapping_add((sel & !7) as u32 + 5);
                    env.update_sys_byte(a, 2, 0);
                    env.cpu.tr = Segment { attr: s.attr | 2, ..s };
                }
            }
        }
        M::Daa | M::Das | M::Aaa | M::Aas | M::Aam | M::Aad | M::Salc => bcd(env, i)?,
        M::Bound => {
            let size = i.op0_register().size();
            let idx = env.reg(i.op0_register());
            let a = env.ea(i)?;
            let (lo, hi, v) = if size == 2 {
                (env.read(a, 2) as i16 as i32, env.read(a.wrapping_add(2), 2) as i16 as i32, idx as i16 as i32)
            } else {
                (env.read(a, 4) as i32, env.read(a.wrapping_add(4), 4) as i32, idx as i32)
            };
            if v < lo || v > hi {
                return Err(Exception::new(vector::BR));
            }
        }
        M::Arpl => {
            // ARPL is #UD outside protected mode; here: adjust the RPL.
            let dst = env.op(i, 0, 2)?;
            let src = env.reg(i.op1_register());
            if dst & 3 < src & 3 {
                env.set_op(i, 0, 2, (dst & !3) | (src & 3))?;
                env.set_flag(flags::ZF, true);
            } else {
                env.set_flag(flags::ZF, false);
            }
        }
        M::Int3 => return Ok(Flow::SoftInt { vector: vector::BP, kind: EventKind::Software }),
        M::Int1 => return Ok(Flow::SoftInt { vector: vector::DB, kind: EventKind::Icebp }),
        M::Into => {
            if env.flag(flags::OF) {
                return Ok(Flow::SoftInt { vector: vector::OF, kind: EventKind::Software });
            }
        }
        M::Int => return Ok(Flow::SoftInt { vector: i.immediate8(), kind: EventKind::Software }),
        M::Sysenter => return env.sysenter().map(Flow::Jump),
        M::Sysexit => return env.sysexit().map(Flow::Jump),
        M::Jmp | M::Call
            if i.is_jmp_far() || i.is_call_far() || i.is_jmp_far_indirect() || i.is_call_far_indirect() =>
        {
            return far_transfer(env, i);
        }
        M::Retf => {
            let n = if i.op_count() > 0 { i.immediate16() as u32 } else { 0 };
            if env.cpu.cr[0] & 1 != 0 {
                return env.far_ret(osize, n).map(Flow::Jump);
            }
            let eip = env.pop(osize);
            let cs = env.pop(osize) as u16;
            env.load_cs(cs)?;
            env.cpu.set_reg(ESP, env.sp_moved(env.cpu.reg(ESP), n));
            return Ok(Flow::Jump(eip));
        }
        M::Iret | M::Iretd => {
            let size = if i.code() == Code::Iretw { 2 } else { 4 };
            if env.cpu.cr[0] & 1 != 0 {
                return env.iret(size, i.next_ip32()).map(Flow::Jump);
            }
            let eip = env.pop(size);
            let cs = env.pop(size) as u16;
            let fl = env.pop(size);
            env.load_cs(cs)?;
            let mask = if size == 2 { POPF_MASK & 0xFFFF } else { POPF_MASK };
            let f = env.cpu.eflags();
            env.cpu.set_eflags((f & !mask) | (fl & mask));
            return Ok(Flow::Jump(eip));
        }
        // 16-bit near control transfers (operand-size prefix).
        M::Jmp | M::Call | M::Ret | M::Loop | M::Loope | M::Loopne | M::Jcxz | M::Jecxz => {
            return near_branch(env, i);
        }
        _ if i.flow_control() == iced_x86::FlowControl::ConditionalBranch => {
            return near_branch(env, i);
        }
        // Reached only for accesses to device memory (`emulates_device_access`).
        M::Mov => {
            let size = mov_size(i);
            let v = env.op(i, 1, size)?;
            env.set_op(i, 0, size, v)?;
        }
        M::Movzx | M::Movsx => {
            let from = if i.op1_kind() == OpKind::Memory { i.memory_size().size() } else { i.op1_register().size() };
            let v = env.op(i, 1, from)?;
            let v = match (i.mnemonic(), from) {
                (M::Movsx, 1) => v as u8 as i8 as i32 as u32,
                (M::Movsx, 2) => v as u16 as i16 as i32 as u32,
                _ => v,
            };
            env.set_reg(i.op0_register(), v);
        }
        M::Movsb
        | M::Movsw
        | M::Movsd
        | M::Stosb
        | M::Stosw
        | M::Stosd
        | M::Lodsb
        | M::Lodsw
        | M::Lodsd
        | M::Cmpsb
        | M::Cmpsw
        | M::Cmpsd
        | M::Scasb
        | M::Scasw
        | M::Scasd
            if crate::decode::has_string_operand(i) =>
        {
            return string_mem(env, i);
        }
        M::Xlatb => {
            // AL = [seg: (E)BX + AL], the offset wrapping at the address size.
            let mask = address_mask(i);
            let seg = string_src_seg(i);
            let off = env.cpu.reg(crate::cpu::EBX).wrapping_add(env.cpu.reg(EAX) & 0xFF) & mask;
            let v = env.read(env.cpu.seg[seg].base.wrapping_add(off), 1);
            env.set_reg(Register::AL, v);
        }
        _ => {
            crate::guest_warn!("instruction at {:#010x} ({:?}) is not emulated: raising #UD", i.ip32(), i.code());
            return Err(ud());
        }
    }
    Ok(Flow::Next)
}

/// Can `execute` carry out `i` when its memory operand is device memory?
pub fn emulates_device_access(i: &Instruction) -> bool {
    use Mnemonic as M;
    let plain_mov = i.mnemonic() == M::Mov
        && !(0..i.op_count()).any(|n| {
            i.op_kind(n) == OpKind::Register && {
                let r = i.op_register(n);
                r.is_segment_register() || r.is_cr() || r.is_dr()
            }
        });
    let string = crate::decode::has_string_operand(i) || i.mnemonic() == M::Xlatb;
    plain_mov || string || matches!(i.mnemonic(), M::Movzx | M::Movsx)
}

/// Operand size of a MOV between registers, memory and immediates.
fn mov_size(i: &Instruction) -> usize {
    if i.op0_kind() == OpKind::Register {
        i.op0_register().size()
    } else if i.op1_kind() == OpKind::Register {
        i.op1_register().size()
    } else {
        i.memory_size().size()
    }
}

/// Iterations of a REP string instruction on device memory done per
/// emulation before the instruction is restarted where it stopped.
const STRING_CHUNK: u32 = 4096;

/// The offset mask of `i`'s address size: 16-bit addressing uses SI, DI,
/// CX (BX for XLAT) and wraps at 64 KiB, leaving the registers' upper
/// halves alone.
fn address_mask(i: &Instruction) -> u32 {
    if crate::decode::has_16bit_addressing(i) { 0xFFFF } else { 0xFFFF_FFFF }
}

/// The source segment of a string instruction or XLAT (DS unless overridden).
fn string_src_seg(i: &Instruction) -> usize {
    match i.segment_prefix() {
        Register::None => crate::cpu::SEG_DS,
        r => seg_index(r).unwrap_or(crate::cpu::SEG_DS),
    }
}

/// `reg = (reg & !mask) | (v & mask)`.
fn set_masked(env: &mut Env, reg: usize, mask: u32, v: u32) {
    let old = env.cpu.reg(reg);
    env.cpu.set_reg(reg, (old & !mask) | (v & mask));
}

/// The arithmetic flags of `a - b` at `size` bytes (CMPS, SCAS).
fn sub_flags(a: u32, b: u32, size: usize) -> u32 {
    use crate::cpu::flags::*;
    let bits = 8 * size as u32;
    let mask = if size == 4 { u32::MAX } else { (1 << bits) - 1 };
    let (a, b) = (a & mask, b & mask);
    let r = a.wrapping_sub(b) & mask;
    let sign = 1 << (bits - 1);
    let mut f = 0;
    if a < b {
        f |= CF;
    }
    if r == 0 {
        f |= ZF;
    }
    if r & sign != 0 {
        f |= SF;
    }
    if (a ^ b) & (a ^ r) & sign != 0 {
        f |= OF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    if (r as u8).count_ones().is_multiple_of(2) {
        f |= PF;
    }
    f
}

/// The string instructions, with 32- or 16-bit addressing and any REP
/// prefix: (E)SI from DS (or the override), (E)DI from ES, (E)CX counts;
/// REPE/REPNE end CMPS/SCAS on ZF.
fn string_mem(env: &mut Env, i: &Instruction) -> R<Flow> {
    use crate::cpu::{ECX, EDI, ESI};
    use Mnemonic as M;
    let m = i.mnemonic();
    let size: usize = match m {
        M::Movsb | M::Stosb | M::Lodsb | M::Cmpsb | M::Scasb => 1,
        M::Movsw | M::Stosw | M::Lodsw | M::Cmpsw | M::Scasw => 2,
        _ => 4,
    };
    let mask = address_mask(i);
    let rep = i.has_rep_prefix() || i.has_repe_prefix() || i.has_repne_prefix();
    let compares = matches!(m, M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Scasb | M::Scasw | M::Scasd);
    let uses_si = !matches!(m, M::Stosb | M::Stosw | M::Stosd | M::Scasb | M::Scasw | M::Scasd);
    let uses_di = !matches!(m, M::Lodsb | M::Lodsw | M::Lodsd);
    let step = if env.flag(crate::cpu::flags::DF) { (size as u32).wrapping_neg() } else { size as u32 };
    let (src_base, dst_base) = (env.cpu.seg[string_src_seg(i)].base, env.cpu.seg[crate::cpu::SEG_ES].base);
    let acc = [Register::AL, Register::AX, Register::None, Register::EAX][size - 1];
    let mut count = if rep { env.cpu.reg(ECX) & mask } else { 1 };
    // A long REP stops between iterations now and then (as translated REP
    // string instructions do) so that interrupts and the timer get a look.
    let mut budget = STRING_CHUNK;
    while count > 0 {
        if budget == 0 {
            return Ok(Flow::Jump(i.ip32()));
        }
        budget -= 1;
        let (si, di) = (env.cpu.reg(ESI) & mask, env.cpu.reg(EDI) & mask);
        let (src, dst) = (src_base.wrapping_add(si), dst_base.wrapping_add(di));
        let mut flags = None;
        match m {
            M::Movsb | M::Movsw | M::Movsd => {
                let v = env.read(src, size);
                env.write(dst, size, v);
            }
            M::Stosb | M::Stosw | M::Stosd => {
                let v = env.cpu.reg(crate::cpu::EAX);
                env.write(dst, size, v);
            }
            M::Lodsb | M::Lodsw | M::Lodsd => {
                let v = env.read(src, size);
                env.set_reg(acc, v);
            }
            M::Cmpsb | M::Cmpsw | M::Cmpsd => {
                let (a, b) = (env.read(src, size), env.read(dst, size));
                flags = Some(sub_flags(a, b, size));
            }
            _ => {
                let (a, b) = (env.cpu.reg(crate::cpu::EAX), env.read(dst, size));
                flags = Some(sub_flags(a, b, size));
            }
        }
        if env.page_fault.get().is_some() {
            // The caller rolls the registers back and raises #PF.
            return Ok(Flow::Next);
        }
        if let Some(f) = flags {
            let e = env.cpu.eflags();
            env.cpu.set_eflags((e & !crate::cpu::flags::ARITH) | f);
        }
        if uses_si {
            set_masked(env, ESI, mask, si.wrapping_add(step));
        }
        if uses_di {
            set_masked(env, EDI, mask, di.wrapping_add(step));
        }
        count -= 1;
        if rep {
            set_masked(env, ECX, mask, count);
            if compares {
                let zf = env.flag(crate::cpu::flags::ZF);
                if (i.has_repe_prefix() && !zf) || (i.has_repne_prefix() && zf) {
                    break;
                }
            }
        }
    }
    Ok(Flow::Next)
}

/// The guest's TSC: the virtual clock at 1 GHz under `-icount`, else the host's.
fn tsc(cpu: &Cpu) -> u64 {
    match &cpu.tsc_clock {
        Some(clock) => clock.now_ns(),
        // SAFETY: RDTSC has no preconditions in user mode on Linux x86-64.
        None => unsafe { core::arch::x86_64::_rdtsc() },
    }
}

/// Port access check: allowed at CPL <= IOPL, otherwise every bit of the
/// access must be clear in the TSS I/O permission bitmap (SDM 19.5.2).
fn check_io(env: &Env, port: u16, size: usize) -> R<()> {
    if env.io_allowed() || env.cpu.cr[0] & 1 == 0 {
        return Ok(());
    }
    let tr = env.cpu.tr;
    // Only a 32-bit TSS has a bitmap, whose base is at offset 0x66.
    if tr.attr & 0x08 == 0 || tr.limit < 0x67 {
        return Err(gp0());
    }
    let map = env.read_sys(tr.base.wrapping_add(0x66), 2);
    let byte = map + port as u32 / 8;
    if byte + 1 > tr.limit {
        return Err(gp0());
    }
    let bits = env.read_sys(tr.base.wrapping_add(byte), 2);
    let mask = ((1u32 << size) - 1) << (port % 8);
    if bits & mask != 0 { Err(gp0()) } else { Ok(()) }
}

fn string_io(env: &mut Env, i: &Instruction) -> R<Flow> {
    use Mnemonic as M;
    let size = match i.mnemonic() {
        M::Insb | M::Outsb => 1,
        M::Insw | M::Outsw => 2,
        _ => 4,
    };
    let port = env.reg(Register::DX) as u16;
    check_io(env, port, size)?;
    let rep = i.has_rep_prefix() || i.has_repne_prefix();
    let step = if env.flag(flags::DF) { (size as u32).wrapping_neg() } else { size as u32 };
    let mut count = if rep { env.cpu.reg(ECX) } else { 1 };
    while count > 0 {
        if matches!(i.mnemonic(), M::Insb | M::Insw | M::Insd) {
            let v = env.port_in(port, size);
            let edi = env.cpu.reg(EDI);
            let a = env.cpu.seg[SEG_ES].base.wrapping_add(edi);
            env.write(a, size, v);
            env.cpu.set_reg(EDI, edi.wrapping_add(step));
        } else {
            let esi = env.cpu.reg(ESI);
            let seg = seg_index(i.memory_segment()).unwrap_or(SEG_DS);
            let a = env.cpu.seg[seg].base.wrapping_add(esi);
            let v = env.read(a, size);
            env.cpu.set_reg(ESI, esi.wrapping_add(step));
            if let Some(code) = env.port_out(port, size, v) {
                if rep {
                    env.cpu.set_reg(ECX, count - 1);
                }
                return Ok(Flow::Exit(code));
            }
        }
        count -= 1;
        if rep {
            env.cpu.set_reg(ECX, count);
        }
    }
    Ok(Flow::Next)
}

fn mov_cr(env: &mut Env, i: &Instruction) -> R<Flow> {
    if i.op0_register().is_cr() {
        let n = (i.op0_register() as u32 - Register::CR0 as u32) as usize;
        // Only a CR3 load flushes whatever the value; CR0/CR4 changes that
        // matter to translation show in `Cpu::paging_regs`.
        env.cr_written = n == 3;
        let v = env.reg(i.op1_register());
        match n {
            0 => {
                if v & 0x8000_0000 != 0 && v & 1 == 0 {
                    return Err(gp0());
                }
                // ET is hardwired to 1 on 486+.
                env.cpu.cr[0] = v | 0x10;
            }
            2 | 3 => env.cpu.cr[n] = v,
            4 => env.cpu.cr[4] = v,
            _ => return Err(ud()),
        }
    } else {
        let n = (i.op1_register() as u32 - Register::CR0 as u32) as usize;
        let v = match n {
            0 | 2 | 3 | 4 => env.cpu.cr[n],
            _ => return Err(ud()),
        };
        env.set_reg(i.op0_register(), v);
    }
    Ok(Flow::Next)
}

fn lar_lsl_verx(env: &mut Env, i: &Instruction) -> R<()> {
    use Mnemonic as M;
    let n = if matches!(i.mnemonic(), M::Lar | M::Lsl) { 1 } else { 0 };
    let sel = env.op(i, n, 2)? as u16;
    if i.mnemonic() == M::Verw {
        env.cpu.last_verw = Some(sel);
    }
    let d = if sel & 0xFFFC == 0 { None } else { env.descriptor(sel).ok() };
    let Some(d) = d else {
        env.set_flag(flags::ZF, false);
        return Ok(());
    };
    let s = Segment::from_descriptor(sel, d);
    let dpl = ((s.attr >> 5) & 3) as u8;
    let rpl = (sel & 3) as u8;
    let is_seg = s.attr & 0x10 != 0;
    let conforming_code = is_seg && s.attr & 0x0C == 0x0C;
    let visible = conforming_code || (dpl >= env.cpu.cpl && dpl >= rpl);
    let ok = match i.mnemonic() {
        M::Lar => visible && (is_seg || matches!(s.attr & 0xF, 1..=5 | 9 | 0xB | 0xC)),
        M::Lsl => visible && (is_seg || matches!(s.attr & 0xF, 1 | 2 | 3 | 9 | 0xB)),
        M::Verr => visible && is_seg && (s.attr & 0x08 == 0 || s.attr & 0x02 != 0),
        _ => visible && is_seg && s.attr & 0x0A == 0x02,
    };
    env.set_flag(flags::ZF, ok);
    if ok {
        match i.mnemonic() {
            M::Lar => {
                let v = (d >> 32) as u32 & 0x00F0_FF00;
                env.set_reg(i.op0_register(), v);
            }
            M::Lsl => env.set_reg(i.op0_register(), s.limit),
            _ => {}
        }
    }
    Ok(())
}

fn far_transfer(env: &mut Env, i: &Instruction) -> R<Flow> {
    let size: usize = match i.code() {
        Code::Jmp_ptr1616 | Code::Call_ptr1616 | Code::Jmp_m1616 | Code::Call_m1616 => 2,
        _ => 4,
    };
    let (sel, off) = match i.op0_kind() {
        OpKind::FarBranch16 | OpKind::FarBranch32 => {
            (i.far_branch_selector(), if size == 2 { i.far_branch16() as u32 } else { i.far_branch32() })
        }
        _ => {
            let a = env.ea(i)?;
            (env.read(a.wrapping_add(size as u32), 2) as u16, env.read(a, size))
        }
    };
    let ret_cs = env.cpu.seg[SEG_CS].selector as u32;
    let ret_eip = i.next_ip32();
    let call = i.is_call_far() || i.is_call_far_indirect();
    // A TSS or task-gate selector switches tasks (SDM "Task Switching").
    if env.cpu.cr[0] & 1 != 0 && sel & 0xFFFC != 0 {
        let d = env.descriptor(sel)?;
        let attr = ((d >> 40) & 0xFF) as u16;
        if attr & 0x10 == 0 {
            let how = if call { TaskSwitch::Call } else { TaskSwitch::Jmp };
            let (dpl, rpl) = (((attr >> 5) & 3) as u8, (sel & 3) as u8);
            if dpl < env.cpu.cpl || dpl < rpl {
                return Err(Exception::with_code(vector::GP, (sel & 0xFFFC) as u32));
            }
            if attr & 0x80 == 0 {
                return Err(Exception::with_code(vector::NP, (sel & 0xFFFC) as u32));
            }
            let target = match attr & 0x1F {
                0x09 => sel,
                0x05 => (d >> 16) as u16,
                _ => return Err(Exception::with_code(vector::GP, (sel & 0xFFFC) as u32)),
            };
            return env.task_switch(target, how, ret_eip).map(Flow::Jump);
        }
    }
    env.load_cs(sel)?;
    if i.is_call_far() || i.is_call_far_indirect() {
        env.push(ret_cs, size);
        env.push(ret_eip, size);
    }
    Ok(Flow::Jump(off))
}

fn near_branch(env: &mut Env, i: &Instruction) -> R<Flow> {
    use Mnemonic as M;
    let cx_is_16 = matches!(
        i.code(),
        Code::Jcxz_rel8_16
            | Code::Jcxz_rel8_32
            | Code::Loop_rel8_16_CX
            | Code::Loop_rel8_32_CX
            | Code::Loope_rel8_16_CX
            | Code::Loope_rel8_32_CX
            | Code::Loopne_rel8_16_CX
            | Code::Loopne_rel8_32_CX
    );
    let count_reg = if cx_is_16 { Register::CX } else { Register::ECX };
    // Operand size of the transfer: 16-bit forms truncate EIP and push/pop words.
    let size: usize = match i.code() {
        Code::Jmp_rel8_16
        | Code::Jmp_rel16
        | Code::Jmp_rm16
        | Code::Call_rel16
        | Code::Call_rm16
        | Code::Retnw
        | Code::Retnw_imm16 => 2,
        _ if i.op_count() > 0 && i.op0_kind() == OpKind::NearBranch16 => 2,
        _ => 4,
    };
    let trunc = |v: u32| if size == 2 { v & 0xFFFF } else { v };
    match i.mnemonic() {
        M::Jmp => {
            let t = match i.op0_kind() {
                OpKind::NearBranch16 | OpKind::NearBranch32 => i.near_branch32(),
                _ => env.op(i, 0, size)?,
            };
            Ok(Flow::Jump(trunc(t)))
        }
        M::Call => {
            let t = match i.op0_kind() {
                OpKind::NearBranch16 | OpKind::NearBranch32 => i.near_branch32(),
                _ => env.op(i, 0, size)?,
            };
            env.push(trunc(i.next_ip32()), size);
            Ok(Flow::Jump(trunc(t)))
        }
        M::Ret => {
            let t = env.pop(size);
            let n = if i.op_count() > 0 { i.immediate16() as u32 } else { 0 };
            env.cpu.set_reg(ESP, env.sp_moved(env.cpu.reg(ESP), n));
            Ok(Flow::Jump(trunc(t)))
        }
        M::Jcxz | M::Jecxz => {
            let taken = env.reg(count_reg) == 0;
            Ok(if taken { Flow::Jump(trunc(i.near_branch32())) } else { Flow::Next })
        }
        M::Loop | M::Loope | M::Loopne => {
            let c = env.reg(count_reg).wrapping_sub(1);
            env.set_reg(count_reg, c);
            let z = env.flag(flags::ZF);
            let taken = c != 0
                && match i.mnemonic() {
                    M::Loope => z,
                    M::Loopne => !z,
                    _ => true,
                };
            Ok(if taken { Flow::Jump(trunc(i.near_branch32())) } else { Flow::Next })
        }
        _ => {
            let taken = env.cond(i.condition_code());
            Ok(if taken { Flow::Jump(trunc(i.near_branch32())) } else { Flow::Next })
        }
    }
}

/// The decimal-adjust instructions, per the SDM's pseudo-code. Flags the
/// SDM leaves undefined are set as QEMU sets them (from the result, or 0).
fn bcd(env: &mut Env, i: &Instruction) -> R<()> {
    use Mnemonic as M;
    let al = env.reg(Register::AL) as u8;
    let ah = env.reg(Register::AH) as u8;
    let af = env.flag(flags::AF);
    let cf = env.flag(flags::CF);
    match i.mnemonic() {
        M::Daa | M::Das => {
            let mut a = al;
            let mut c = false;
            let sub = i.mnemonic() == M::Das;
            let low_adj = (al & 0x0F) > 9 || af;
            if low_adj {
                let (r, carry) = if sub { al.overflowing_sub(6) } else { al.overflowing_add(6) };
                a = r;
                c = cf || carry;
            }
            env.set_flag(flags::AF, low_adj);
            if al > 0x99 || cf {
                a = if sub { a.wrapping_sub(0x60) } else { a.wrapping_add(0x60) };
                c = true;
            } else if !sub {
                c = false;
            }
            env.set_reg(Register::AL, a as u32);
            env.set_flag(flags::CF, c);
            env.set_flag(flags::OF, false);
            env.szp8(a);
        }
        M::Aaa | M::Aas => {
            let adj = (al & 0x0F) > 9 || af;
            let ax = env.reg(Register::AX) as u16;
            let r = if !adj {
                ax
            } else if i.mnemonic() == M::Aaa {
                ax.wrapping_add(0x106)
            } else {
                ax.wrapping_sub(6).wrapping_sub(0x100)
            };
            let r = r & 0xFF0F;
            env.set_reg(Register::AX, r as u32);
            env.set_flag(flags::AF, adj);
            env.set_flag(flags::CF, adj);
            env.set_flag(flags::OF, false);
            env.szp8(r as u8);
        }
        M::Aam => {
            let base = i.immediate8();
            if base == 0 {
                return Err(Exception::new(vector::DE));
            }
            let (q, r) = (al / base, al % base);
            env.set_reg(Register::AX, ((q as u32) << 8) | r as u32);
            env.szp8(r);
            env.set_flag(flags::CF, false);
            env.set_flag(flags::OF, false);
            env.set_flag(flags::AF, false);
        }
        M::Aad => {
            let base = i.immediate8();
            let r = al.wrapping_add(ah.wrapping_mul(base));
            env.set_reg(Register::AX, r as u32);
            env.szp8(r);
            env.set_flag(flags::CF, false);
            env.set_flag(flags::OF, false);
            env.set_flag(flags::AF, false);
        }
        _ => {
            // SALC: AL = CF ? 0xFF : 0.
            env.set_reg(Register::AL, if cf { 0xFF } else { 0 });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Cpu;
    use iced_x86::{Decoder, DecoderOptions};

    fn run(code: &[u8], setup: impl FnOnce(&mut Cpu)) -> (Cpu, R<Flow>) {
        let mut cpu = Cpu::new();
        cpu.set_reg(ESP, 0x8000);
        setup(&mut cpu);
        let mut mem = GuestMemory::new(1 << 20).expect("mem");
        let mut io = PortBus::new();
        let mut written = Vec::new();
        let i = Decoder::with_ip(32, code, 0x1000, DecoderOptions::NONE).decode();
        let r = {
            let mut env = Env::new(&mut cpu, &mut mem, &mut io, &mut written);
            execute(&mut env, &i)
        };
        (cpu, r)
    }

    #[test]
    fn device_memory_moves_and_chunked_rep() {
        use crate::devices::vga::{VGA_WINDOW_BASE, VGA_WINDOW_SIZE, VgaText};
        let mut cpu = Cpu::new();
        let mut mem = GuestMemory::new(1 << 20).expect("mem");
        mem.add_mmio(VGA_WINDOW_BASE, VGA_WINDOW_SIZE, Box::<VgaText>::default());
        let mut io = PortBus::new();
        let mut written = Vec::new();
        let mut exec = |cpu: &mut Cpu, mem: &mut GuestMemory, code: &[u8]| {
            let i = Decoder::with_ip(32, code, 0x1000, DecoderOptions::NONE).decode();
            assert!(emulates_device_access(&i), "{i}");
            let mut env = Env::new(cpu, mem, &mut io, &mut written);
            execute(&mut env, &i)
        };
        // mov dword [0xB8000], 0x1F421F41 ; movzx ecx, byte [0xB8002] ; movsx edx, byte [0xB8003]
        exec(&mut cpu, &mut mem, &[0xC7, 0x05, 0x00, 0x80, 0x0B, 0x00, 0x41, 0x1F, 0x42, 0x9F]).expect("mov");
        exec(&mut cpu, &mut mem, &[0x0F, 0xB6, 0x0D, 0x02, 0x80, 0x0B, 0x00]).expect("movzx");
        exec(&mut cpu, &mut mem, &[0x0F, 0xBE, 0x15, 0x03, 0x80, 0x0B, 0x00]).expect("movsx");
        assert_eq!(cpu.reg(ECX), 0x42);
        assert_eq!(cpu.reg(EDX), 0xFFFF_FF9F);
        // rep stosw over 5000 words: restarted in chunks until ECX is 0.
        cpu.set_reg(EAX, 0x0720);
        cpu.set_reg(ECX, 5000);
        cpu.set_reg(EDI, 0xB8010);
        let mut rounds = 0;
        loop {
            rounds += 1;
            match exec(&mut cpu, &mut mem, &[0xF3, 0x66, 0xAB]).expect("rep stosw") {
                Flow::Next => break,
                Flow::Jump(eip) => assert_eq!(eip, 0x1000, "restart at the instruction"),
                f => panic!("{f:?}"),
            }
        }
        assert_eq!(rounds, 2);
        assert_eq!((cpu.reg(ECX), cpu.reg(EDI)), (0, 0xB8010 + 2 * 5000));
        assert_eq!(mem.read_u32(0xB8010), 0x0720_0720);
        assert_eq!(mem.read_u32(0xB8010 + 2 * 4998), 0x0720_0720);
        assert_eq!(mem.read_u32(0xB8000), 0x9F42_1F41, "untouched before EDI");
        // ADD on device memory is not one of the emulated forms.
        let add = Decoder::with_ip(32, &[0x01, 0x05, 0, 0x80, 0x0B, 0], 0, DecoderOptions::NONE).decode();
        assert!(!emulates_device_access(&add));
    }

    #[test]
    fn daa_matches_sdm_example() {
        // AL = 0x79 + 0x35 = 0xAE (AF=0, CF=0) -> DAA -> 0x14, CF=1, AF=1.
        let (c, r) = run(&[0x27], |c| c.set_reg(EAX, 0xAE));
        assert_eq!(r, Ok(Flow::Next));
        assert_eq!(c.reg(EAX) & 0xFF, 0x14);
        assert_ne!(c.eflags() & flags::CF, 0);
        assert_ne!(c.eflags() & flags::AF, 0);
    }

    #[test]
    fn aam_zero_is_divide_error() {
        let (_, r) = run(&[0xD4, 0x00], |_| {});
        assert_eq!(r, Err(Exception::new(vector::DE)));
        let (c, _) = run(&[0xD4, 0x0A], |c| c.set_reg(EAX, 79));
        assert_eq!(c.reg(EAX) & 0xFFFF, 0x0709);
    }

    #[test]
    fn pushf_popf_at_cpl0() {
        let (c, _) = run(&[0x9C], |c| c.set_eflags(0x202 | flags::CF));
        assert_eq!(c.reg(ESP), 0x7FFC);
        let (c, _) = run(&[0x9D], |c| c.set_eflags(0x2));
        assert_eq!(c.reg(ESP), 0x8004);
    }

    #[test]
    fn cpuid_presents_a_genuine_intel_pentium_m() {
        let (c, _) = run(&[0x0F, 0xA2], |c| c.set_reg(EAX, 0));
        assert_eq!(c.reg(EAX), 7, "leaf 7 for SERIALIZE");
        assert_eq!(c.reg(3).to_le_bytes(), *b"Genu");
        // MISC_ENABLE's CPUID limit: the Banias's own leaves.
        let (c, _) = run(&[0x0F, 0xA2], |c| {
            c.set_reg(EAX, 0);
            c.msr_misc_enable |= msr::MISC_ENABLE_LIMIT_CPUID;
        });
        assert_eq!(c.reg(EAX), 2);
        let (c, _) = run(&[0x0F, 0xA2], |c| c.set_reg(EAX, 1));
        assert_eq!((c.reg(EAX) >> 4) & 0xF, 9, "model 9 (Banias)");
    }

    #[test]
    fn privileged_at_cpl3_is_gp() {
        let (_, r) = run(&[0xF4], |c| c.cpl = 3);
        assert_eq!(r, Err(gp0()));
        let (_, r) = run(&[0x0F, 0x20, 0xC0], |c| c.cpl = 3);
        assert_eq!(r, Err(gp0()));
    }
}
