//! Any instruction on device memory, by one general mechanism: the
//! instruction itself runs once, in a one-instruction block, against bounce
//! pages mapped where the device pages are in the window, and the device
//! sees the accesses the instruction makes.
//!
//! ```text
//! 1. iced lists the instruction's memory accesses (address, size, read/
//!    write), computed from the guest registers before it runs;
//! 2. every linear page of them that maps device memory gets a scratch page
//!    at its window address; the bytes the instruction reads are read from
//!    the device into it (one access per aligned dword at most);
//! 3. the instruction runs (its translation, through the window as usual:
//!    flags, faults and every operand form are the processor's own);
//! 4. if it completed, the bytes it writes go to the device (a conditional
//!    write: only the bytes it changed), and the pages become inaccessible
//!    again.
//! ```
//!
//! A fault of the instruction (another operand's #PF, a misaligned SSE
//! operand's #GP, ...) is delivered as usual and nothing is written. REP
//! string instructions (one access per iteration, any number of pages) stay
//! with the interpreter.

use iced_x86::{CodeSize, InstructionInfoFactory, OpAccess, Register};

use super::*;
use crate::memory::{map_bounce_page, unmap_bounce_page};

/// One memory access of the instruction that reaches device memory.
struct DeviceAccess {
    lin: u32,
    size: u32,
    read: bool,
    write: bool,
    /// A write that may leave bytes alone (masked stores): only changed
    /// bytes go to the device.
    conditional: bool,
}

impl Engine {
    /// The value iced's address computation asks for (segments as 0: their
    /// bases are added after the offset is truncated to the address size).
    fn address_register(&self, r: Register) -> Option<u64> {
        if r == Register::None || r.is_segment_register() {
            return Some(0);
        }
        if !r.is_gpr() {
            return None;
        }
        let full = r.full_register32();
        let idx = full as usize - Register::EAX as usize;
        let v = self.cpu.reg(idx);
        Some(match r.size() {
            2 => v & 0xFFFF,
            _ => v,
        } as u64)
    }

    /// Does linear `lin` map device memory (a walk that sets no A/D bit)?
    fn maps_device(&self, lin: u32, user: bool) -> bool {
        if !self.mem.paging().enabled() {
            return self.mem.is_mmio(lin);
        }
        self.mem.translate_read(lin, user).is_ok_and(|p| self.mem.is_mmio(p))
    }

    /// The memory accesses of `i` (at the current state) that reach device
    /// memory, with their physical pages; None if one cannot be worked out.
    fn device_accesses(&mut self, i: &Instruction) -> Option<Vec<DeviceAccess>> {
        let user = self.mode.cpl() == 3;
        let mut f = InstructionInfoFactory::new();
        let mut out = Vec::new();
        for m in f.info(i).used_memory() {
            let (read, write, conditional) = match m.access() {
                OpAccess::Read | OpAccess::CondRead => (true, false, false),
                OpAccess::Write => (false, true, false),
                OpAccess::CondWrite => (false, true, true),
                OpAccess::ReadWrite | OpAccess::ReadCondWrite => (true, true, false),
                _ => continue,
            };
            let size = m.memory_size().size() as u32;
            if size == 0 {
                continue;
            }
            let mut off = self.address_register(m.base())?;
            off = off.wrapping_add(self.address_register(m.index())?.wrapping_mul(m.scale() as u64));
            off = off.wrapping_add(m.displacement());
            let off = match m.address_size() {
                CodeSize::Code16 => off as u32 & 0xFFFF,
                _ => off as u32,
            };
            let base = match crate::cpu::interp::seg_index(m.segment()) {
                Some(s) => self.cpu.seg[s].base,
                None => 0,
            };
            let lin = base.wrapping_add(off);
            let touches_device = [lin, lin.wrapping_add(size - 1)].iter().any(|&a| self.maps_device(a, user));
            if touches_device {
                out.push(DeviceAccess { lin, size, read, write, conditional });
            }
        }
        Some(out)
    }

    /// Run the instruction at EIP (state precise before it), which touched
    /// device memory, against bounce pages. None when it cannot (a REP
    /// string instruction, or no access of it reaches a device after all).
    pub(super) fn device_bounce(&mut self, i: &Instruction) -> Option<Step> {
        // (A string instruction's REP form repeats one access per iteration.)
        let repeated = (i.has_rep_prefix() || i.has_repne_prefix()) && crate::decode::has_string_operand(i);
        if repeated || self.bouncing {
            return None;
        }
        let accesses = self.device_accesses(i)?;
        if accesses.is_empty() {
            log::debug!("bounce: no access of {i} at {:#x} reaches a device (cpl {})", i.ip32(), self.mode.cpl());
            return None;
        }
        let user = self.mode.cpl() == 3;
        let window = self.mem.window_for(self.mode.cpl());
        let mut pages: Vec<u32> = accesses
            .iter()
            .flat_map(|a| [a.lin & !0xFFF, a.lin.wrapping_add(a.size - 1) & !0xFFF])
            .filter(|&p| self.maps_device(p, user))
            .collect();
        pages.sort_unstable();
        pages.dedup();
        let host = |lin: u32| window + lin as usize;
        let is_bounced = |lin: u32, pages: &[u32]| pages.contains(&(lin & !0xFFF));
        for &p in &pages {
            if !map_bounce_page(host(p)) {
                for &q in &pages {
                    unmap_bounce_page(host(q));
                }
                return None;
            }
        }
        // The bytes the instruction reads (and, for conditional writes,
        // what they were), from the device.
        let mut before: Vec<Vec<u8>> = Vec::new();
        for a in &accesses {
            let mut bytes = vec![0u8; a.size as usize];
            if a.read || a.conditional {
                self.device_read(a.lin, user, &mut bytes);
                for (k, b) in bytes.iter().enumerate() {
                    let lin = a.lin.wrapping_add(k as u32);
                    if is_bounced(lin, &pages) {
                        // SAFETY: host(lin) lies in a bounce page mapped above.
                        unsafe { *(host(lin) as *mut u8) = *b };
                    }
                }
            }
            before.push(bytes);
        }
        let (exceptions, emulated) = (self.stats.exceptions, self.emulated);
        self.bouncing = true;
        let step = self.step_one();
        self.bouncing = false;
        log::trace!(
            "bounce: {i} at {:#x}: pages {pages:x?}, exceptions {} -> {}, emulated {} -> {}",
            i.ip32(),
            exceptions,
            self.stats.exceptions,
            emulated,
            self.emulated
        );
        // (The VMM ran it after all, against the device itself: nothing to
        // write back.)
        let completed =
            self.stats.exceptions == exceptions && self.emulated == emulated && !matches!(step, Step::Done(_));
        if completed {
            for (a, old) in accesses.iter().zip(&before) {
                if !a.write {
                    continue;
                }
                let mut bytes = vec![0u8; a.size as usize];
                let mut changed = vec![!a.conditional; a.size as usize];
                for (k, b) in bytes.iter_mut().enumerate() {
                    let lin = a.lin.wrapping_add(k as u32);
                    if is_bounced(lin, &pages) {
                        // SAFETY: as above; the page is still mapped.
                        *b = unsafe { *(host(lin) as *const u8) };
                        changed[k] |= *b != old[k];
                    }
                }
                self.device_write(a.lin, user, &bytes, &changed, &pages);
            }
        }
        for &p in &pages {
            unmap_bounce_page(host(p));
        }
        self.stats.device_accesses += 1;
        Some(step)
    }

    /// Read `buf.len()` bytes at linear `lin` from the device (or RAM),
    /// in aligned pieces of at most a dword.
    fn device_read(&mut self, lin: u32, user: bool, buf: &mut [u8]) {
        let mut k = 0;
        while k < buf.len() {
            let a = lin.wrapping_add(k as u32);
            let n = piece(a, buf.len() - k);
            if let Ok(p) = self.mem.translate(a, false, user) {
                self.mem.read(p, &mut buf[k..k + n]);
            }
            k += n;
        }
    }

    /// Write the `changed` bytes of `bytes` at linear `lin` to the device
    /// pages among `pages` (RAM bytes were written by the instruction
    /// itself), in aligned pieces of at most a dword.
    fn device_write(&mut self, lin: u32, user: bool, bytes: &[u8], changed: &[bool], pages: &[u32]) {
        let mut k = 0;
        while k < bytes.len() {
            let a = lin.wrapping_add(k as u32);
            let mut n = piece(a, bytes.len() - k);
            if changed[k..k + n].iter().any(|c| !c) {
                n = 1;
            }
            if changed[k]
                && pages.contains(&(a & !0xFFF))
                && let Ok(p) = self.mem.translate(a, true, user)
            {
                self.mem.write(p, &bytes[k..k + n]);
            }
            k += n;
        }
    }
}

/// Bytes of the access piece at `a`: the largest naturally aligned 1, 2 or 4
/// that fits in `left` (and so never crosses a page).
fn piece(a: u32, left: usize) -> usize {
    [4usize, 2, 1].into_iter().find(|&n| n <= left && (a as usize).is_multiple_of(n)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pieces_are_aligned_and_fit() {
        assert_eq!(super::piece(0x1000, 16), 4);
        assert_eq!(super::piece(0x1002, 16), 2);
        assert_eq!(super::piece(0x1001, 16), 1);
        assert_eq!(super::piece(0x1000, 3), 2);
        assert_eq!(super::piece(0x1FFF, 4), 1);
    }
}
