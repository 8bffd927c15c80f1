//! The PC's two cascaded Intel 8259A programmable interrupt controllers,
//! plus the PIIX-style edge/level control registers (ELCR).
//!
//! The master serves IRQ 0-7 at ports 0x20/0x21, the slave IRQ 8-15 at
//! 0xA0/0xA1; the slave's INT output drives the master's IR2, so slave
//! requests compete at IRQ 2's priority. ELCR1/ELCR2 at 0x4D0/0x4D1 select
//! edge (0) or level (1) triggering per IRQ.
//!
//! Modelled per the 8259A datasheet: the ICW1-ICW4 initialisation sequence,
//! OCW1 (mask), OCW2 (specific/non-specific EOI and all rotation commands),
//! OCW3 (IRR/ISR read select, poll, special mask mode), fully nested
//! priority with rotation, auto-EOI (with optional rotation), special fully
//! nested mode on the master and spurious IRQ 7 / IRQ 15 vectors.
//!
//! Triggering follows the PC (and QEMU) convention rather than the bare
//! datasheet: an edge-triggered request stays latched in IRR after the line
//! falls again, so [`DualPic::pulse_irq`] works; a level-triggered IRR bit
//! follows its line. ICW1's LTIM bit is ignored because on PCs the ELCR
//! decides. Only 8086 mode is supported (8080/85 call sequences are not).
//!
//! Lines are driven through [`DualPic::set_irq`] and the CPU side uses
//! [`DualPic::intr`] and [`DualPic::acknowledge`] (the INTA cycle). All six
//! ports are handled by the one [`PortDevice`] implementation, which decodes
//! the absolute port number.

use super::{IoEffect, PortDevice};

/// Master PIC command/data ports.
pub const MASTER_CMD: u16 = 0x20;
pub const MASTER_DATA: u16 = 0x21;
/// Slave PIC command/data ports.
pub const SLAVE_CMD: u16 = 0xA0;
pub const SLAVE_DATA: u16 = 0xA1;
/// Edge/level control registers for IRQ 0-7 and IRQ 8-15.
pub const ELCR_MASTER: u16 = 0x4D0;
pub const ELCR_SLAVE: u16 = 0x4D1;
/// Number of consecutive ports at each of the three bases.
pub const PIC_PORTS: u16 = 2;
pub const ELCR_PORTS: u16 = 2;

/// Master input the slave's INT output is wired to.
pub const CASCADE_IRQ: u8 = 2;
/// Number of IRQ lines of the pair.
pub const IRQ_COUNT: u8 = 16;

/// ELCR bits that can be set: IRQ 0, 1 and 2 (timer, keyboard, cascade)
/// and IRQ 8 and 13 (RTC, FPU error) are always edge triggered.
const ELCR_MASTER_WRITABLE: u8 = 0xF8;
const ELCR_SLAVE_WRITABLE: u8 = 0xDE;

/// ICW1 (command port, bit 4 set) bits.
const ICW1_SELECT: u8 = 0x10;
const ICW1_IC4: u8 = 0x01; // ICW4 will follow
const ICW1_SINGLE: u8 = 0x02; // no slaves, no ICW3
const ICW1_LTIM: u8 = 0x08; // level mode (ignored: ELCR decides)

/// ICW4 bits.
const ICW4_8086: u8 = 0x01;
const ICW4_AEOI: u8 = 0x02;
const ICW4_SFNM: u8 = 0x10;

/// ICW2's low three bits are replaced by the IRQ number in 8086 mode.
const VECTOR_BASE_MASK: u8 = 0xF8;

/// OCW3 (command port, bits 4:3 = 01) bits.
const OCW3_SELECT: u8 = 0x08;
const OCW3_RIS: u8 = 0x01; // read ISR (else IRR) ...
const OCW3_RR: u8 = 0x02; // ... if this bit is set
const OCW3_POLL: u8 = 0x04;
const OCW3_SMM: u8 = 0x20; // special mask mode on/off ...
const OCW3_ESMM: u8 = 0x40; // ... if this bit is set

/// OCW2 commands (bits 7:5 = R, SL, EOI); bits 2:0 carry the level.
const OCW2_CMD_MASK: u8 = 0xE0;
const OCW2_LEVEL_MASK: u8 = 0x07;
const OCW2_ROTATE_AEOI_CLEAR: u8 = 0x00;
const OCW2_NON_SPECIFIC_EOI: u8 = 0x20;
const OCW2_NOP: u8 = 0x40;
const OCW2_SPECIFIC_EOI: u8 = 0x60;
const OCW2_ROTATE_AEOI_SET: u8 = 0x80;
const OCW2_ROTATE_NON_SPECIFIC_EOI: u8 = 0xA0;
const OCW2_SET_PRIORITY: u8 = 0xC0;
const OCW2_ROTATE_SPECIFIC_EOI: u8 = 0xE0;

/// Poll result: bit 7 says an interrupt was pending, bits 2:0 its level.
const POLL_PENDING: u8 = 0x80;

/// Level reported when a request vanished before INTA.
const SPURIOUS_LEVEL: u8 = 7;

/// Which initialisation word the data port expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitStep {
    /// Initialised: data port writes are OCW1.
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Debug, Clone)]
struct Pic8259 {
    /// Interrupt request register.
    irr: u8,
    /// In-service register.
    isr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// Current level of each IR input (for edge detection).
    lines: u8,
    /// Level-triggered inputs (ELCR).
    elcr: u8,
    /// ELCR bits this chip lets software set.
    elcr_writable: u8,
    /// Vector of IR0 (ICW2 with the low bits cleared).
    vector_base: u8,
    init: InitStep,
    /// ICW1 asked for ICW4.
    icw4_needed: bool,
    /// ICW1 SNGL: no cascading, no ICW3.
    single: bool,
    /// ICW3: slave bitmap on the master, cascade identity on the slave.
    /// Kept for completeness; the wiring is fixed.
    icw3: u8,
    auto_eoi: bool,
    /// Rotate priorities on automatic EOI (OCW2 R=1 SL=0 EOI=0).
    rotate_on_auto_eoi: bool,
    /// Special fully nested mode (ICW4 SFNM); honoured on the master only.
    special_fully_nested: bool,
    /// Special mask mode (OCW3): masked in-service levels do not block
    /// lower priorities.
    special_mask: bool,
    /// OCW3 read-register select: ISR if set, IRR otherwise.
    read_isr: bool,
    /// The next read is a poll (OCW3 P bit).
    poll: bool,
    /// The IR with the lowest priority; the next one has the highest.
    lowest_priority: u8,
    is_master: bool,
}

impl Pic8259 {
    /// Power-on state, which QEMU also uses: everything unmasked, vector
    /// base 0, not in an initialisation sequence.
    fn new(is_master: bool) -> Self {
        Self {
            irr: 0,
            isr: 0,
            imr: 0,
            lines: 0,
            elcr: 0,
            elcr_writable: if is_master { ELCR_MASTER_WRITABLE } else { ELCR_SLAVE_WRITABLE },
            vector_base: 0,
            init: InitStep::Ready,
            icw4_needed: false,
            single: false,
            icw3: 0,
            auto_eoi: false,
            rotate_on_auto_eoi: false,
            special_fully_nested: false,
            special_mask: false,
            read_isr: false,
            poll: false,
            lowest_priority: 7,
            is_master,
        }
    }

    /// Priority of `level` (0 = highest) under the current rotation.
    fn priority(&self, level: u8) -> u8 {
        level.wrapping_sub(self.lowest_priority.wrapping_add(1)) & 7
    }

    /// The level of highest priority among the bits of `bits`.
    fn highest(&self, bits: u8) -> Option<u8> {
        (0..8).filter(|&l| bits & (1 << l) != 0).min_by_key(|&l| self.priority(l))
    }

    /// The request the chip would signal on INT, if any: the unmasked
    /// request of highest priority, provided nothing of equal or higher
    /// priority is in service (fully nested mode).
    fn pending(&self) -> Option<u8> {
        let request = self.highest(self.irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        match self.highest(in_service) {
            Some(busy) => {
                let (p_req, p_busy) = (self.priority(request), self.priority(busy));
                // In special fully nested mode a new slave request may
                // interrupt the master's in-service cascade level itself.
                let nested_cascade =
                    self.is_master && self.special_fully_nested && request == CASCADE_IRQ && busy == CASCADE_IRQ;
                (p_req < p_busy || nested_cascade).then_some(request)
            }
            None => Some(request),
        }
    }

    /// Drives IR input `level` (0-7) to `high`.
    fn set_line(&mut self, level: u8, high: bool) {
        let bit = 1u8 << (level & 7);
        if self.elcr & bit != 0 {
            // Level triggered: the request follows the line.
            if high {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if high && self.lines & bit == 0 {
            // Edge triggered: a rising edge latches the request.
            self.irr |= bit;
        }
        if high {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    /// The INTA (or poll) side effects for `level`: into service (unless
    /// auto-EOI) and, for edge-triggered inputs, out of IRR.
    fn accept(&mut self, level: u8) {
        let bit = 1u8 << (level & 7);
        if self.elcr & bit == 0 {
            self.irr &= !bit;
        }
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.lowest_priority = level & 7;
            }
        } else {
            self.isr |= bit;
        }
    }

    /// Acknowledges the pending request, returning its level, or `None`
    /// for a spurious acknowledge.
    fn acknowledge(&mut self) -> Option<u8> {
        let level = self.pending()?;
        self.accept(level);
        Some(level)
    }

    fn vector(&self, level: u8) -> u8 {
        self.vector_base | (level & 7)
    }

    /// Reads the command port (IRR/ISR or a poll result).
    fn read_command(&mut self) -> u8 {
        if self.poll {
            return self.poll_read();
        }
        if self.read_isr { self.isr } else { self.irr }
    }

    /// Reads the data port (IMR, or a poll result).
    fn read_data(&mut self) -> u8 {
        if self.poll {
            return self.poll_read();
        }
        self.imr
    }

    /// A read in poll mode: acknowledges like INTA and reports the level.
    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        match self.acknowledge() {
            Some(level) => POLL_PENDING | level,
            None => 0,
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & ICW1_SELECT != 0 {
            self.icw1(value);
        } else if value & OCW3_SELECT != 0 {
            self.ocw3(value);
        } else {
            self.ocw2(value);
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init {
            InitStep::Ready => self.imr = value,
            InitStep::Icw2 => {
                self.vector_base = value & VECTOR_BASE_MASK;
                self.init = if !self.single {
                    InitStep::Icw3
                } else if self.icw4_needed {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw3 => {
                self.icw3 = value;
                self.init = if self.icw4_needed { InitStep::Icw4 } else { InitStep::Ready };
            }
            InitStep::Icw4 => {
                if value & ICW4_8086 == 0 {
                    crate::guest_warn!("8259A: 8080/85 mode requested (ICW4 {value:#x}); using 8086 mode");
                }
                self.auto_eoi = value & ICW4_AEOI != 0;
                self.special_fully_nested = value & ICW4_SFNM != 0;
                self.init = InitStep::Ready;
            }
        }
    }

    /// ICW1 starts initialisation and resets the chip as the datasheet
    /// lists: edge sense reset (latched edge requests dropped; an input that
    /// is high must fall and rise again), IMR cleared, IR7 lowest priority,
    /// special mask mode off, IRR selected for reads, ICW4 functions zeroed.
    /// In-service bits are also dropped (as QEMU does), so re-initialising
    /// cannot leave a level blocked forever.
    fn icw1(&mut self, value: u8) {
        if value & ICW1_LTIM != 0 {
            log::debug!("8259A: ICW1 LTIM ignored; ELCR selects level triggering");
        }
        self.irr &= self.elcr & self.lines;
        self.isr = 0;
        self.imr = 0;
        self.lowest_priority = 7;
        self.special_mask = false;
        self.read_isr = false;
        self.poll = false;
        self.auto_eoi = false;
        self.rotate_on_auto_eoi = false;
        self.special_fully_nested = false;
        self.single = value & ICW1_SINGLE != 0;
        self.icw4_needed = value & ICW1_IC4 != 0;
        self.init = InitStep::Icw2;
    }

    fn ocw2(&mut self, value: u8) {
        let level = value & OCW2_LEVEL_MASK;
        let bit = 1u8 << level;
        match value & OCW2_CMD_MASK {
            OCW2_NON_SPECIFIC_EOI | OCW2_ROTATE_NON_SPECIFIC_EOI => {
                // Resets the highest-priority in-service level; in special
                // mask mode masked levels are left alone (datasheet).
                let mut candidates = self.isr;
                if self.special_mask {
                    candidates &= !self.imr;
                }
                if let Some(done) = self.highest(candidates) {
                    self.isr &= !(1 << done);
                    if value & OCW2_CMD_MASK == OCW2_ROTATE_NON_SPECIFIC_EOI {
                        self.lowest_priority = done;
                    }
                }
            }
            OCW2_SPECIFIC_EOI => self.isr &= !bit,
            OCW2_ROTATE_SPECIFIC_EOI => {
                self.isr &= !bit;
                self.lowest_priority = level;
            }
            OCW2_SET_PRIORITY => self.lowest_priority = level,
            OCW2_ROTATE_AEOI_SET => self.rotate_on_auto_eoi = true,
            OCW2_ROTATE_AEOI_CLEAR => self.rotate_on_auto_eoi = false,
            OCW2_NOP => {}
            // The match covers all eight values of the three command bits.
            _ => {}
        }
    }

    fn ocw3(&mut self, value: u8) {
        if value & OCW3_RR != 0 {
            self.read_isr = value & OCW3_RIS != 0;
        }
        if value & OCW3_ESMM != 0 {
            self.special_mask = value & OCW3_SMM != 0;
        }
        self.poll = value & OCW3_POLL != 0;
    }

    fn write_elcr(&mut self, value: u8) {
        self.elcr = value & self.elcr_writable;
        // Inputs now level triggered show their line level at once.
        self.irr = (self.irr & !self.elcr) | (self.lines & self.elcr);
    }
}

/// The master/slave 8259A pair of a PC.
#[derive(Debug, Clone)]
pub struct DualPic {
    master: Pic8259,
    slave: Pic8259,
}

impl Default for DualPic {
    fn default() -> Self {
        Self::new()
    }
}

impl DualPic {
    /// Both chips in their power-on state as QEMU models it: IMR 0 (all
    /// unmasked), vector base 0, edge triggered, cascade wiring.
    ///
    /// A booted machine never shows this state: `loader::bios` programs
    /// the pair as a BIOS leaves it (bases 0x08/0x70, IRQ 0, 2 and 8 open)
    /// before the kernel's first instruction.
    pub fn new() -> Self {
        Self { master: Pic8259::new(true), slave: Pic8259::new(false) }
    }

    /// Drives IRQ line `irq` (0-15) to `level`. Edge-triggered inputs latch
    /// a request on a rising edge; level-triggered ones (ELCR) request while
    /// high. Out-of-range lines and IRQ 2 (the cascade input, driven only
    /// by the slave) are ignored.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            CASCADE_IRQ => log::debug!("8259A: IRQ 2 is the cascade input; ignoring"),
            0..=7 => self.master.set_line(irq, level),
            8..=15 => self.slave.set_line(irq - 8, level),
            _ => log::debug!("8259A: no IRQ line {irq}"),
        }
        self.update_cascade();
    }

    /// Raises then lowers `irq`: one edge-triggered request.
    pub fn pulse_irq(&mut self, irq: u8) {
        self.set_irq(irq, true);
        self.set_irq(irq, false);
    }

    /// The INTR output to the CPU: an unmasked request of higher priority
    /// than anything in service.
    pub fn intr(&self) -> bool {
        self.master.pending().is_some()
    }

    /// The CPU's interrupt acknowledge cycle: returns the vector and moves
    /// the request from IRR to ISR (unless auto-EOI). Without a request it
    /// returns the spurious vector of IRQ 7 (master base + 7) and changes
    /// nothing. If the master picks the cascade input but the slave has no
    /// request any more, the master's IRQ 2 goes into service and the
    /// slave's spurious IRQ 15 vector (slave base + 7) is returned; the
    /// guest must then EOI the master only, which is what Linux's
    /// spurious-IRQ handling does.
    pub fn acknowledge(&mut self) -> u8 {
        let vector = match self.master.acknowledge() {
            None => self.master.vector(SPURIOUS_LEVEL),
            Some(CASCADE_IRQ) if !self.master.single => {
                let level = self.slave.acknowledge().unwrap_or(SPURIOUS_LEVEL);
                self.slave.vector(level)
            }
            Some(level) => self.master.vector(level),
        };
        self.update_cascade();
        vector
    }

    /// Current IRR of the pair (IRQ 8-15 in the high byte), for debugging.
    pub fn irr(&self) -> u16 {
        u16::from_le_bytes([self.master.irr, self.slave.irr])
    }

    /// Current ISR of the pair (IRQ 8-15 in the high byte), for debugging.
    pub fn isr(&self) -> u16 {
        u16::from_le_bytes([self.master.isr, self.slave.isr])
    }

    /// Current IMR of the pair (IRQ 8-15 in the high byte).
    pub fn imr(&self) -> u16 {
        u16::from_le_bytes([self.master.imr, self.slave.imr])
    }

    /// Propagates the slave's INT output to the master's IR2.
    fn update_cascade(&mut self) {
        let slave_int = self.slave.pending().is_some();
        self.master.set_line(CASCADE_IRQ, slave_int);
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        match port {
            MASTER_CMD => self.master.read_command(),
            MASTER_DATA => self.master.read_data(),
            SLAVE_CMD => self.slave.read_command(),
            SLAVE_DATA => self.slave.read_data(),
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => 0xFF,
        }
    }

    fn write_byte(&mut self, port: u16, value: u8) {
        match port {
            MASTER_CMD => self.master.write_command(value),
            MASTER_DATA => self.master.write_data(value),
            SLAVE_CMD => self.slave.write_command(value),
            SLAVE_DATA => self.slave.write_data(value),
            ELCR_MASTER => self.master.write_elcr(value),
            ELCR_SLAVE => self.slave.write_elcr(value),
            _ => log::debug!("8259A: write {value:#x} to foreign port {port:#x}"),
        }
    }
}

impl PortDevice for DualPic {
    /// Byte registers; a 16-bit access at 0x4D0 covers both ELCRs, other
    /// wide accesses see only the addressed register.
    fn read(&mut self, port: u16, size: u8) -> u32 {
        let value = if port == ELCR_MASTER && size >= 2 {
            u32::from(u16::from_le_bytes([self.master.elcr, self.slave.elcr]))
        } else {
            u32::from(self.read_byte(port))
        };
        self.update_cascade();
        value
    }

    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        let [low, high, ..] = value.to_le_bytes();
        self.write_byte(port, low);
        if port == ELCR_MASTER && size >= 2 {
            self.write_byte(ELCR_SLAVE, high);
        }
        self.update_cascade();
        IoEffect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(pic: &mut DualPic, port: u16, value: u8) {
        assert_eq!(pic.write(port, 1, u32::from(value)), IoEffect::None);
    }

    fn inb(pic: &mut DualPic, port: u16) -> u8 {
        pic.read(port, 1) as u8
    }

    /// Linux's init_8259A sequence (normal EOI, 8086 mode).
    fn linux_init(pic: &mut DualPic, auto_eoi: bool) {
        out(pic, MASTER_DATA, 0xFF);
        out(pic, SLAVE_DATA, 0xFF);
        out(pic, MASTER_CMD, 0x11);
        out(pic, MASTER_DATA, 0x30);
        out(pic, MASTER_DATA, 1 << CASCADE_IRQ);
        out(pic, MASTER_DATA, if auto_eoi { 0x03 } else { 0x01 });
        out(pic, SLAVE_CMD, 0x11);
        out(pic, SLAVE_DATA, 0x38);
        out(pic, SLAVE_DATA, CASCADE_IRQ);
        out(pic, SLAVE_DATA, 0x01);
        out(pic, MASTER_DATA, 0x00);
        out(pic, SLAVE_DATA, 0x00);
    }

    fn initialised() -> DualPic {
        let mut pic = DualPic::new();
        linux_init(&mut pic, false);
        pic
    }

    #[test]
    fn power_on_state() {
        let mut pic = DualPic::new();
        assert_eq!(inb(&mut pic, MASTER_DATA), 0);
        assert_eq!(inb(&mut pic, SLAVE_DATA), 0);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0);
        assert!(!pic.intr());
        pic.pulse_irq(0);
        assert!(pic.intr());
        assert_eq!(pic.acknowledge(), 0, "vector base 0 until programmed");
        out(&mut pic, MASTER_CMD, 0x20);
        pic.pulse_irq(9);
        assert_eq!(pic.acknowledge(), 1);
    }

    #[test]
    fn init_sequence_sets_vector_bases_and_ignores_low_bits() {
        let mut pic = DualPic::new();
        out(&mut pic, MASTER_DATA, 0x5A);
        out(&mut pic, MASTER_CMD, 0x11);
        assert_eq!(inb(&mut pic, MASTER_DATA), 0, "ICW1 clears IMR");
        out(&mut pic, MASTER_DATA, 0x37);
        out(&mut pic, MASTER_DATA, 0x04);
        out(&mut pic, MASTER_DATA, 0x01);
        out(&mut pic, MASTER_DATA, 0xF9);
        assert_eq!(inb(&mut pic, MASTER_DATA), 0xF9, "after ICW4 data writes are OCW1");
        out(&mut pic, SLAVE_CMD, 0x11);
        out(&mut pic, SLAVE_DATA, 0x70);
        out(&mut pic, SLAVE_DATA, 0x02);
        out(&mut pic, SLAVE_DATA, 0x01);
        pic.pulse_irq(1);
        assert_eq!(pic.acknowledge(), 0x31);
        out(&mut pic, MASTER_CMD, 0x20);
        pic.pulse_irq(14);
        assert_eq!(pic.acknowledge(), 0x76);
    }

    #[test]
    fn init_without_icw4_and_single_mode_skip_words() {
        let mut pic = DualPic::new();
        // Single, no ICW4: only ICW2 follows.
        out(&mut pic, MASTER_CMD, 0x12);
        out(&mut pic, MASTER_DATA, 0x40);
        out(&mut pic, MASTER_DATA, 0xF0);
        assert_eq!(inb(&mut pic, MASTER_DATA), 0xF0);
        // In single mode IR2 is an ordinary input fed by the slave's INT.
        out(&mut pic, SLAVE_CMD, 0x11);
        out(&mut pic, SLAVE_DATA, 0x70);
        out(&mut pic, SLAVE_DATA, 0x02);
        out(&mut pic, SLAVE_DATA, 0x01);
        pic.pulse_irq(8);
        assert_eq!(pic.acknowledge(), 0x42);
        // Cascade without ICW4: ICW2 and ICW3 only.
        out(&mut pic, MASTER_CMD, 0x10);
        out(&mut pic, MASTER_DATA, 0x20);
        out(&mut pic, MASTER_DATA, 0x04);
        out(&mut pic, MASTER_DATA, 0xEF);
        assert_eq!(inb(&mut pic, MASTER_DATA), 0xEF);
    }

    #[test]
    fn masking_holds_requests_until_unmasked() {
        let mut pic = initialised();
        out(&mut pic, MASTER_DATA, 0x01);
        pic.pulse_irq(0);
        assert!(!pic.intr());
        assert_eq!(pic.irr() & 1, 1, "masked request stays in IRR");
        out(&mut pic, MASTER_DATA, 0x00);
        assert!(pic.intr());
        assert_eq!(pic.acknowledge(), 0x30);
        // Masking a slave line, and the cascade line on the master.
        out(&mut pic, MASTER_CMD, 0x20);
        out(&mut pic, SLAVE_DATA, 0x10);
        pic.pulse_irq(12);
        assert!(!pic.intr());
        out(&mut pic, SLAVE_DATA, 0x00);
        out(&mut pic, MASTER_DATA, 0x04);
        assert!(!pic.intr());
        out(&mut pic, MASTER_DATA, 0x00);
        assert_eq!(pic.acknowledge(), 0x3C);
    }

    #[test]
    fn priorities_and_full_nesting() {
        let mut pic = initialised();
        pic.pulse_irq(5);
        pic.pulse_irq(3);
        assert_eq!(pic.acknowledge(), 0x33, "lower number wins");
        assert!(!pic.intr(), "IRQ 5 waits behind IRQ 3 in service");
        pic.pulse_irq(1);
        assert!(pic.intr(), "higher priority interrupts the service routine");
        assert_eq!(pic.acknowledge(), 0x31);
        assert_eq!(pic.isr(), 0x0A);
        out(&mut pic, MASTER_CMD, 0x20);
        assert_eq!(pic.isr(), 0x08, "non-specific EOI ends the highest level");
        assert!(!pic.intr());
        out(&mut pic, MASTER_CMD, 0x20);
        assert_eq!(pic.acknowledge(), 0x35);
        // Slave IRQs sit at IRQ 2's priority: above 3, below 1.
        out(&mut pic, MASTER_CMD, 0x20);
        pic.pulse_irq(3);
        pic.pulse_irq(15);
        assert_eq!(pic.acknowledge(), 0x3F);
        assert_eq!(pic.isr(), 0x8004, "master IR2 and slave IR7 in service");
        pic.pulse_irq(1);
        assert_eq!(pic.acknowledge(), 0x31);
        pic.pulse_irq(8);
        assert!(!pic.intr(), "the cascade level is in service");
    }

    #[test]
    fn slave_priority_nesting_and_eoi_order() {
        let mut pic = initialised();
        pic.pulse_irq(12);
        assert_eq!(pic.acknowledge(), 0x3C);
        pic.pulse_irq(8);
        assert!(!pic.intr(), "no special fully nested mode: master IR2 busy");
        // Linux: EOI the slave, then the master.
        out(&mut pic, SLAVE_CMD, 0x60 | 4);
        out(&mut pic, MASTER_CMD, 0x60 | CASCADE_IRQ);
        assert!(pic.intr());
        assert_eq!(pic.acknowledge(), 0x38);
        assert_eq!(pic.isr(), 0x0104);
    }

    #[test]
    fn special_fully_nested_mode_lets_slave_nest() {
        let mut pic = DualPic::new();
        out(&mut pic, MASTER_CMD, 0x11);
        out(&mut pic, MASTER_DATA, 0x30);
        out(&mut pic, MASTER_DATA, 0x04);
        out(&mut pic, MASTER_DATA, 0x11);
        out(&mut pic, SLAVE_CMD, 0x11);
        out(&mut pic, SLAVE_DATA, 0x38);
        out(&mut pic, SLAVE_DATA, 0x02);
        out(&mut pic, SLAVE_DATA, 0x01);
        pic.pulse_irq(12);
        assert_eq!(pic.acknowledge(), 0x3C);
        pic.pulse_irq(3);
        assert!(!pic.intr(), "lower master levels still blocked");
        pic.pulse_irq(8);
        assert!(pic.intr());
        assert_eq!(pic.acknowledge(), 0x38);
    }

    #[test]
    fn specific_eoi_and_isr_irr_reads() {
        let mut pic = initialised();
        pic.pulse_irq(4);
        pic.pulse_irq(6);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x50, "IRR selected by default");
        assert_eq!(pic.acknowledge(), 0x34);
        out(&mut pic, MASTER_CMD, 0x0B);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x10, "ISR");
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x10, "selection persists");
        out(&mut pic, MASTER_CMD, 0x08);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x10, "RR=0 keeps the selection");
        out(&mut pic, MASTER_CMD, 0x0A);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x40, "IRR again");
        out(&mut pic, MASTER_CMD, 0x60 | 6);
        assert_eq!(pic.isr(), 0x10, "specific EOI of a level not in service is harmless");
        out(&mut pic, MASTER_CMD, 0x60 | 4);
        assert_eq!(pic.isr(), 0);
        assert_eq!(pic.acknowledge(), 0x36);
        // Slave register reads.
        pic.pulse_irq(10);
        assert_eq!(inb(&mut pic, SLAVE_CMD), 0x04);
        out(&mut pic, SLAVE_CMD, 0x0B);
        assert_eq!(inb(&mut pic, SLAVE_CMD), 0);
    }

    #[test]
    fn poll_command_reads_and_acknowledges_once() {
        let mut pic = initialised();
        out(&mut pic, MASTER_CMD, 0x0C);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0, "nothing pending");
        assert_eq!(inb(&mut pic, MASTER_CMD), 0, "back to IRR reads");
        pic.pulse_irq(5);
        out(&mut pic, MASTER_CMD, 0x0C);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x85);
        assert_eq!(pic.isr(), 0x20, "poll acts as INTA");
        assert_eq!(inb(&mut pic, MASTER_CMD), 0, "IRR no longer shows it");
        out(&mut pic, MASTER_CMD, 0x20);
        pic.pulse_irq(11);
        out(&mut pic, SLAVE_CMD, 0x0C);
        assert_eq!(inb(&mut pic, SLAVE_DATA), 0x83, "poll applies to either port");
        assert_eq!(inb(&mut pic, SLAVE_DATA), 0, "then IMR again");
    }

    #[test]
    fn spurious_interrupts() {
        let mut pic = initialised();
        assert_eq!(pic.acknowledge(), 0x37, "nothing pending: IRQ 7");
        assert_eq!(pic.isr(), 0, "spurious IRQ 7 is not put in service");
        // A level-triggered request that vanished before INTA.
        out(&mut pic, ELCR_MASTER, 0x20);
        pic.set_irq(5, true);
        assert!(pic.intr());
        pic.set_irq(5, false);
        assert!(!pic.intr());
        assert_eq!(pic.acknowledge(), 0x37);
        // A slave request withdrawn after the master latched the cascade
        // edge: IRQ 15 is spurious, master IR2 goes into service.
        pic.pulse_irq(9);
        assert!(pic.intr());
        out(&mut pic, SLAVE_DATA, 0x02);
        assert!(pic.intr(), "master still holds the IR2 edge");
        assert_eq!(pic.acknowledge(), 0x3F);
        assert_eq!(pic.isr(), 0x0004);
        out(&mut pic, SLAVE_CMD, 0x0B);
        assert_eq!(inb(&mut pic, SLAVE_CMD), 0, "slave ISR7 clear: spurious");
        out(&mut pic, MASTER_CMD, 0x60 | CASCADE_IRQ);
        assert_eq!(pic.isr(), 0);
        out(&mut pic, SLAVE_DATA, 0x00);
        assert_eq!(pic.acknowledge(), 0x39, "the masked request survives");
    }

    #[test]
    fn auto_eoi_leaves_nothing_in_service() {
        let mut pic = DualPic::new();
        linux_init(&mut pic, true);
        pic.pulse_irq(3);
        assert_eq!(pic.acknowledge(), 0x33);
        assert_eq!(pic.isr(), 0);
        pic.pulse_irq(4);
        assert!(pic.intr(), "no EOI needed");
        assert_eq!(pic.acknowledge(), 0x34);
        // The slave still needs its EOI; the master's cascade level does not.
        pic.pulse_irq(13);
        assert_eq!(pic.acknowledge(), 0x3D);
        assert_eq!(pic.isr(), 0x2000);
    }

    #[test]
    fn rotation_commands() {
        let mut pic = initialised();
        // Rotate on non-specific EOI: the serviced level becomes lowest.
        pic.pulse_irq(1);
        assert_eq!(pic.acknowledge(), 0x31);
        out(&mut pic, MASTER_CMD, 0xA0);
        pic.pulse_irq(1);
        pic.pulse_irq(6);
        assert_eq!(pic.acknowledge(), 0x36, "IRQ 1 is now lowest");
        out(&mut pic, MASTER_CMD, 0x20);
        assert_eq!(pic.acknowledge(), 0x31);
        out(&mut pic, MASTER_CMD, 0x20);
        // Set priority: IRQ 4 lowest, so IRQ 5 highest.
        out(&mut pic, MASTER_CMD, 0xC4);
        pic.pulse_irq(0);
        pic.pulse_irq(5);
        assert_eq!(pic.acknowledge(), 0x35);
        // Rotate on specific EOI.
        out(&mut pic, MASTER_CMD, 0xE5);
        assert_eq!(pic.isr(), 0);
        pic.pulse_irq(5);
        assert_eq!(pic.acknowledge(), 0x30, "IRQ 6 highest, 0 before 5");
        out(&mut pic, MASTER_CMD, 0x20);
        assert_eq!(pic.acknowledge(), 0x35);
        out(&mut pic, MASTER_CMD, 0x20);
        // Rotate in auto-EOI mode.
        linux_init(&mut pic, true);
        out(&mut pic, MASTER_CMD, 0x80);
        pic.pulse_irq(0);
        assert_eq!(pic.acknowledge(), 0x30);
        pic.pulse_irq(0);
        pic.pulse_irq(7);
        assert_eq!(pic.acknowledge(), 0x37, "IRQ 0 rotated to lowest");
        out(&mut pic, MASTER_CMD, 0x00);
        assert_eq!(pic.acknowledge(), 0x30);
    }

    #[test]
    fn special_mask_mode_unblocks_lower_levels() {
        let mut pic = initialised();
        pic.pulse_irq(3);
        assert_eq!(pic.acknowledge(), 0x33);
        pic.pulse_irq(6);
        assert!(!pic.intr());
        out(&mut pic, MASTER_DATA, 0x08);
        out(&mut pic, MASTER_CMD, 0x68);
        assert!(pic.intr(), "masked in-service IRQ 3 no longer blocks");
        assert_eq!(pic.acknowledge(), 0x36);
        out(&mut pic, MASTER_CMD, 0x20);
        assert_eq!(pic.isr(), 0x08, "non-specific EOI skips the masked level");
        out(&mut pic, MASTER_CMD, 0x48);
        out(&mut pic, MASTER_CMD, 0x60 | 3);
        assert_eq!(pic.isr(), 0);
    }

    #[test]
    fn edge_detection_needs_a_rising_edge() {
        let mut pic = initialised();
        pic.set_irq(4, true);
        assert_eq!(pic.acknowledge(), 0x34);
        out(&mut pic, MASTER_CMD, 0x20);
        pic.set_irq(4, true);
        assert!(!pic.intr(), "a line held high is one request");
        pic.set_irq(4, false);
        pic.set_irq(4, true);
        assert_eq!(pic.acknowledge(), 0x34);
        out(&mut pic, MASTER_CMD, 0x20);
        // Re-initialising drops latched edges; a high line must fall first.
        pic.set_irq(4, false);
        pic.set_irq(4, true);
        pic.pulse_irq(3);
        linux_init(&mut pic, false);
        assert!(!pic.intr());
        pic.set_irq(4, true);
        assert!(!pic.intr());
        pic.set_irq(4, false);
        pic.set_irq(4, true);
        assert!(pic.intr());
        // Bad lines are ignored.
        pic.set_irq(16, true);
        pic.set_irq(255, true);
        pic.set_irq(2, true);
    }

    #[test]
    fn elcr_level_triggering() {
        let mut pic = initialised();
        out(&mut pic, ELCR_MASTER, 0xFF);
        out(&mut pic, ELCR_SLAVE, 0xFF);
        assert_eq!(inb(&mut pic, ELCR_MASTER), 0xF8, "IRQ 0-2 are edge only");
        assert_eq!(inb(&mut pic, ELCR_SLAVE), 0xDE, "IRQ 8 and 13 are edge only");
        assert_eq!(pic.read(ELCR_MASTER, 2), 0xDEF8);
        pic.write(ELCR_MASTER, 2, 0x0800);
        assert_eq!(inb(&mut pic, ELCR_MASTER), 0);
        assert_eq!(inb(&mut pic, ELCR_SLAVE), 0x08);
        // IRQ 11 level: requests while high, again after EOI.
        pic.set_irq(11, true);
        assert_eq!(pic.acknowledge(), 0x3B);
        assert_eq!(pic.irr() & 0x0800, 0x0800, "IRR follows the line");
        out(&mut pic, SLAVE_CMD, 0x20);
        out(&mut pic, MASTER_CMD, 0x20);
        assert!(pic.intr(), "still high: requests again");
        pic.set_irq(11, false);
        assert!(pic.intr(), "the master keeps the latched cascade edge");
        assert_eq!(pic.acknowledge(), 0x3F, "vanished request is spurious IRQ 15");
        out(&mut pic, MASTER_CMD, 0x20);
        assert_eq!(pic.isr(), 0);
        // Switching a high line to level mode requests at once.
        pic.set_irq(5, true);
        pic.set_irq(5, false);
        out(&mut pic, MASTER_CMD, 0x0A);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x20, "edge latched");
        out(&mut pic, ELCR_MASTER, 0x20);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x00, "level mode: line is low");
        pic.set_irq(6, true);
        out(&mut pic, ELCR_MASTER, 0x60);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x40);
    }

    #[test]
    fn wide_and_foreign_accesses_are_harmless() {
        let mut pic = initialised();
        pic.write(MASTER_DATA, 4, 0xFFFF_FF12);
        assert_eq!(pic.read(MASTER_DATA, 4), 0x12);
        assert_eq!(pic.read(0x22, 1), 0xFF);
        assert_eq!(pic.write(0x22, 1, 0), IoEffect::None);
    }
}
