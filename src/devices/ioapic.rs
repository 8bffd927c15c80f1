//! The I/O APIC (82093AA-style, version 0x20, 24 redirection entries) at
//! 0xFEC00000, as on a PC: the ISA IRQs drive its pins (IRQ 0, the PIT,
//! on pin 2 as the usual interrupt-source override says; IRQ n on pin n
//! otherwise), beside the 8259s, which see the same lines.
//!
//! Registers are reached through IOREGSEL (0x00) and IOWIN (0x10); 0x40 is
//! the EOI register of version 0x20. An entry's message goes to the local
//! APIC (fixed, lowest priority, NMI): edge entries on a rising edge of the
//! line, level entries while the line is asserted and remote IRR is clear;
//! remote IRR is set on delivery and cleared by the local APIC's EOI of
//! that vector (or a write of the vector to 0x40), after which a line that
//! is still asserted delivers again. Active-low entries see the line
//! inverted.

/// Physical address of the register window.
pub const IOAPIC_BASE: u32 = 0xFEC0_0000;
/// Size of the register window.
pub const IOAPIC_WINDOW_SIZE: u32 = 0x1000;
/// Redirection entries (pins).
pub const PINS: usize = 24;
/// The version register: version 0x20, maximum redirection entry 23.
const VERSION: u32 = 0x0017_0020;
/// The ISA IRQ 0 (PIT) input.
pub const PIN_TIMER: usize = 2;

/// Redirection entry bits (low dword).
const VECTOR: u64 = 0xFF;
const DELIVERY_STATUS: u64 = 1 << 12;
const POLARITY_LOW: u64 = 1 << 13;
const REMOTE_IRR: u64 = 1 << 14;
const LEVEL: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;
/// Bits software writes in the low dword (the rest are read-only).
const LOW_WRITABLE: u64 = 0x0001_AFFF;

/// A message for the local APIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub vector: u8,
    /// Delivery mode (0 fixed, 1 lowest priority, 4 NMI, 7 ExtINT).
    pub mode: u8,
    pub level: bool,
    pub logical: bool,
    pub dest: u8,
}

pub struct IoApic {
    select: u32,
    id: u32,
    redir: [u64; PINS],
    /// The input lines as the devices drive them (active high).
    lines: u32,
    /// Messages for the local APIC, taken by the chipset.
    pub out: Vec<Message>,
}

impl Default for IoApic {
    fn default() -> Self {
        IoApic { select: 0, id: 0, redir: [MASKED; PINS], lines: 0, out: Vec::new() }
    }
}

impl IoApic {
    /// Is the entry's input asserted (polarity applied)?
    fn asserted(&self, pin: usize) -> bool {
        let high = self.lines & (1 << pin) != 0;
        high != (self.redir[pin] & POLARITY_LOW != 0)
    }

    fn deliver(&mut self, pin: usize) {
        let e = self.redir[pin];
        if e & MASKED != 0 {
            return;
        }
        let level = e & LEVEL != 0;
        if level {
            if e & REMOTE_IRR != 0 {
                return;
            }
            self.redir[pin] |= REMOTE_IRR;
        }
        self.out.push(Message {
            vector: (e & VECTOR) as u8,
            mode: ((e >> 8) & 7) as u8,
            level,
            logical: e & (1 << 11) != 0,
            dest: (e >> 56) as u8,
        });
    }

    /// Drive input `pin` to `high`.
    pub fn set_line(&mut self, pin: usize, high: bool) {
        if pin >= PINS {
            return;
        }
        let was = self.asserted(pin);
        if high {
            self.lines |= 1 << pin;
        } else {
            self.lines &= !(1 << pin);
        }
        let now = self.asserted(pin);
        let level = self.redir[pin] & LEVEL != 0;
        if now && (level || !was) {
            self.deliver(pin);
        }
    }

    /// A pulse on `pin` (an edge-triggered source's interrupt).
    pub fn pulse(&mut self, pin: usize) {
        self.set_line(pin, true);
        self.set_line(pin, false);
    }

    /// The local APIC retired level-triggered `vector`.
    pub fn eoi(&mut self, vector: u8) {
        for pin in 0..PINS {
            let e = self.redir[pin];
            if e & LEVEL != 0 && e & VECTOR == u64::from(vector) && e & REMOTE_IRR != 0 {
                self.redir[pin] &= !REMOTE_IRR;
                if self.asserted(pin) {
                    self.deliver(pin);
                }
            }
        }
    }

    fn read_reg(&self, r: u32) -> u32 {
        match r {
            0 | 2 => self.id,
            1 => VERSION,
            0x10..=0x3F => {
                let e = self.redir[((r - 0x10) / 2) as usize] & !DELIVERY_STATUS;
                if r.is_multiple_of(2) { e as u32 } else { (e >> 32) as u32 }
            }
            _ => 0,
        }
    }

    fn write_reg(&mut self, r: u32, v: u32) {
        match r {
            0 => self.id = v & 0x0F00_0000,
            0x10..=0x3F => {
                let pin = ((r - 0x10) / 2) as usize;
                let e = self.redir[pin];
                self.redir[pin] = if r.is_multiple_of(2) {
                    (e & !LOW_WRITABLE) | (u64::from(v) & LOW_WRITABLE)
                } else {
                    (e & 0x00FF_FFFF_FFFF_FFFF) | (u64::from(v & 0xFF00_0000) << 32)
                };
                // Unmasked with the line asserted: a level entry delivers now.
                if self.redir[pin] & LEVEL != 0 && self.asserted(pin) {
                    self.deliver(pin);
                }
            }
            _ => {}
        }
    }

    pub fn read(&mut self, offset: u32) -> u32 {
        match offset {
            0x00 => self.select,
            0x10 => self.read_reg(self.select),
            _ => 0,
        }
    }

    pub fn write(&mut self, offset: u32, v: u32) {
        match offset {
            0x00 => self.select = v & 0xFF,
            0x10 => self.write_reg(self.select, v),
            0x40 => self.eoi(v as u8),
            _ => {}
        }
    }
}

impl super::Registers32 for IoApic {
    fn read_reg(&mut self, offset: u32) -> u32 {
        self.read(offset)
    }

    fn write_reg(&mut self, offset: u32, value: u32) {
        self.write(offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(a: &mut IoApic, pin: u32, lo: u32) {
        a.write(0, 0x10 + 2 * pin);
        a.write(0x10, lo);
    }

    #[test]
    fn edge_and_level() {
        let mut a = IoApic::default();
        program(&mut a, 2, 0x70);
        a.pulse(2);
        assert_eq!(a.out.pop().map(|m| m.vector), Some(0x70));
        program(&mut a, 8, 0x71 | (1 << 15));
        a.set_line(8, true);
        assert_eq!(a.out.len(), 1);
        a.set_line(8, true);
        assert_eq!(a.out.len(), 1, "remote IRR holds it");
        a.write(0, 0x10 + 16);
        assert_ne!(a.read(0x10) & (1 << 14), 0);
        a.eoi(0x71);
        assert_eq!(a.out.len(), 2, "still asserted: delivered again");
        a.set_line(8, false);
        a.eoi(0x71);
        assert_eq!(a.out.len(), 2);
    }

    #[test]
    fn masked_and_read_only_bits() {
        let mut a = IoApic::default();
        a.write(0, 1);
        assert_eq!(a.read(0x10), VERSION);
        program(&mut a, 5, 0x0001_F975);
        a.write(0, 0x10 + 10);
        assert_eq!(a.read(0x10), 0x0001_A975, "delivery status and remote IRR are read-only");
        a.pulse(5);
        assert!(a.out.is_empty());
    }
}
