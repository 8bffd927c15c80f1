//! The local APIC (xAPIC) of a one-CPU PC, at 0xFEE00000, as the Pentium M
//! btvisor presents has it (version 0x14, six LVT entries) and as a kernel
//! finds it after SeaBIOS: hardware-enabled (APIC base MSR bit 11),
//! software-enabled (SVR 0x1FF), LINT0 in ExtINT mode (the 8259's INTR,
//! level), LINT1 NMI (level).
//!
//! The model is the SDM's (Vol. 3A, ch. 10):
//! - IRR, ISR and TMR as 256-bit sets; the processor priority (PPR) is the
//!   higher of TPR and the class of the highest vector in service, and a
//!   vector in IRR is delivered when its class is above PPR's; EOI retires
//!   the highest vector in service.
//! - The timer counts down at the bus clock (1 GHz of virtual time, as in
//!   QEMU) divided by the divide configuration, one-shot or periodic.
//! - The ICR sends fixed, lowest-priority and NMI IPIs to this CPU (shorthand
//!   self or all, or a physical or logical destination that names it);
//!   illegal vectors (0-15) are not delivered and set ESR bits 5 and 6.
//!   Delivery is instant: the busy bit always reads clear.
//! - Software-disabled (SVR bit 8 clear), every LVT entry is masked and
//!   stays masked (SDM 10.4.7.2).
//!
//! Where QEMU departs from the SDM (it leaves the LVT masks alone on a
//! software disable, and delivers illegal vectors) btvisor follows the SDM.

use super::clock::VirtualClock;

/// Physical address of the register page (the APIC base MSR's default).
pub const APIC_DEFAULT_BASE: u32 = 0xFEE0_0000;
/// Size of the register window.
pub const APIC_WINDOW_SIZE: u32 = 0x1000;
/// APIC base MSR: this CPU is the bootstrap processor.
pub const BASE_BSP: u64 = 1 << 8;
/// APIC base MSR: the APIC is globally enabled.
pub const BASE_ENABLE: u64 = 1 << 11;
/// Version register: version 0x14 (integrated xAPIC), max LVT entry 5.
const VERSION: u32 = 0x0005_0014;
/// Bus clock period of the timer, in virtual nanoseconds.
const BUS_NS: u64 = 1;

/// Register offsets.
mod reg {
    pub const ID: u32 = 0x20;
    pub const VER: u32 = 0x30;
    pub const TPR: u32 = 0x80;
    pub const APR: u32 = 0x90;
    pub const PPR: u32 = 0xA0;
    pub const EOI: u32 = 0xB0;
    pub const LDR: u32 = 0xD0;
    pub const DFR: u32 = 0xE0;
    pub const SVR: u32 = 0xF0;
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const ICR_LO: u32 = 0x300;
    pub const ICR_HI: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TMICT: u32 = 0x380;
    pub const TMCCT: u32 = 0x390;
    pub const TDCR: u32 = 0x3E0;
}

/// LVT and ICR bits.
const VECTOR: u32 = 0xFF;
const MASKED: u32 = 1 << 16;
const TIMER_PERIODIC: u32 = 1 << 17;
const SVR_ENABLE: u32 = 1 << 8;
/// ESR: an illegal vector was sent / received.
const ESR_SEND_ILLEGAL: u32 = 1 << 5;
const ESR_RECEIVE_ILLEGAL: u32 = 1 << 6;
/// The LVT entries in register order: timer, thermal, perf, LINT0, LINT1, error.
const LVT_COUNT: usize = 6;
const LVT_LINT0: usize = 3;
/// Writable bits of each LVT entry (vector, delivery mode, polarity,
/// trigger mode, mask, timer mode).
const LVT_WRITABLE: [u32; LVT_COUNT] = [0x3_00FF, 0x1_07FF, 0x1_07FF, 0x1_A7FF, 0x1_A7FF, 0x1_00FF];
/// LVT delivery mode ExtINT (LINT0 wired to the 8259).
const DELIVERY_EXTINT: u32 = 7 << 8;

/// A 256-bit vector set (IRR, ISR, TMR).
#[derive(Debug, Default, Clone, Copy)]
struct VecSet([u32; 8]);

impl VecSet {
    fn set(&mut self, v: u8) {
        self.0[v as usize / 32] |= 1 << (v % 32);
    }
    fn clear(&mut self, v: u8) {
        self.0[v as usize / 32] &= !(1 << (v % 32));
    }
    fn highest(&self) -> Option<u8> {
        (0..8).rev().find(|&k| self.0[k] != 0).map(|k| (k * 32 + 31 - self.0[k].leading_zeros() as usize) as u8)
    }
}

/// The local APIC's state.
pub struct LocalApic {
    clock: VirtualClock,
    /// The APIC base MSR.
    pub base: u64,
    id: u32,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: VecSet,
    irr: VecSet,
    tmr: VecSet,
    /// Errors since the last ESR write, and what the ESR shows.
    esr_pending: u32,
    esr: u32,
    icr: [u32; 2],
    lvt: [u32; LVT_COUNT],
    divide: u32,
    initial: u32,
    /// Virtual time the current count started from `initial`.
    timer_start: u64,
    /// The timer has expired (one-shot) or was never started.
    timer_idle: bool,
    /// An NMI IPI reached this CPU and awaits delivery.
    pub nmi_pending: bool,
    /// Level-triggered vectors retired by EOI, for the I/O APIC.
    pub level_eois: Vec<u8>,
    /// The machine has other CPUs: every IPI goes out through `outbox` to
    /// the machine's router (this one included), none is delivered here.
    smp: bool,
    /// IPIs sent and not yet routed (`smp`).
    pub outbox: Vec<Ipi>,
    /// The APIC ID at reset.
    initial_id: u32,
}

/// An IPI as written to the ICR: the low word and the destination field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipi {
    pub icr_lo: u32,
    pub dest: u32,
}

impl Ipi {
    /// The delivery mode (ICR bits 8-10).
    pub fn mode(&self) -> u32 {
        (self.icr_lo >> 8) & 7
    }
    /// Lowest-priority delivery: one CPU of those named takes it.
    pub fn lowest_priority(&self) -> bool {
        self.mode() == 1
    }
}

/// What an IPI asks of the CPU that accepts it, beyond the APIC's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpiEffect {
    /// Nothing (not accepted, or an INIT level de-assert).
    None,
    /// An interrupt or NMI is pending now.
    Interrupt,
    /// INIT: reset and wait for STARTUP.
    Init,
    /// STARTUP with this vector (real mode at vector << 12).
    Startup(u8),
}

impl LocalApic {
    pub fn new(clock: VirtualClock) -> Self {
        LocalApic {
            clock,
            base: APIC_DEFAULT_BASE as u64 | BASE_BSP | BASE_ENABLE,
            id: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0xFFFF_FFFF,
            svr: 0x1FF,
            isr: VecSet::default(),
            irr: VecSet::default(),
            tmr: VecSet::default(),
            esr_pending: 0,
            esr: 0,
            icr: [0; 2],
            lvt: [MASKED, MASKED, MASKED, DELIVERY_EXTINT | (1 << 15), (4 << 8) | (1 << 15), MASKED],
            divide: 0,
            initial: 0,
            timer_start: 0,
            timer_idle: true,
            nmi_pending: false,
            level_eois: Vec::new(),
            smp: false,
            outbox: Vec::new(),
            initial_id: 0,
        }
    }

    /// The local APIC of CPU `index` of a machine with several: its APIC ID
    /// is the index; CPU 0 is the bootstrap processor, the others come out
    /// of reset software-disabled (SVR 0xFF, every LVT masked).
    pub fn for_cpu(clock: VirtualClock, index: u32) -> Self {
        let mut a = LocalApic::new(clock);
        a.id = index << 24;
        a.initial_id = index;
        a.smp = true;
        if index != 0 {
            a.base &= !BASE_BSP;
            a.reset_registers();
        }
        a
    }

    /// INIT: every register to its power-up value except the ID and the
    /// base MSR (SDM 10.4.7.3).
    pub fn reset_registers(&mut self) {
        let (id, base, smp, initial_id) = (self.id, self.base, self.smp, self.initial_id);
        *self = LocalApic { id, base, smp, initial_id, ..LocalApic::new(self.clock.clone()) };
        self.svr = 0xFF;
        self.lvt = [MASKED; LVT_COUNT];
    }

    /// Is this APIC a destination of `ipi` (`sender`: it sent it)?
    pub fn targeted_by(&self, ipi: &Ipi, sender: bool) -> bool {
        if !self.enabled() && !matches!(ipi.mode(), 5 | 6) {
            // A software-disabled APIC still takes INIT, STARTUP and NMI
            // (SDM 10.4.7.2); fixed interrupts are not accepted.
            return ipi.mode() == 4 && self.is_destination_as(ipi, sender);
        }
        self.is_destination_as(ipi, sender)
    }

    fn is_destination_as(&self, ipi: &Ipi, sender: bool) -> bool {
        match (ipi.icr_lo >> 18) & 3 {
            1 => sender,
            2 => true,
            3 => !sender,
            _ => self.names_me(ipi.icr_lo & (1 << 11) != 0, ipi.dest),
        }
    }

    /// Accept `ipi` (the caller checked `targeted_by`).
    pub fn take_ipi(&mut self, ipi: &Ipi) -> IpiEffect {
        let vector = (ipi.icr_lo & VECTOR) as u8;
        match ipi.mode() {
            0 | 1 => {
                self.accept(vector);
                IpiEffect::Interrupt
            }
            4 => {
                self.nmi_pending = true;
                IpiEffect::Interrupt
            }
            // INIT with level 0 and trigger level: the de-assert, which
            // only synchronises arbitration IDs.
            5 if ipi.icr_lo & (1 << 14) == 0 && ipi.icr_lo & (1 << 15) != 0 => IpiEffect::None,
            5 => IpiEffect::Init,
            6 => IpiEffect::Startup(vector),
            mode => {
                crate::guest_warn!("local APIC: IPI delivery mode {mode} is not modelled: ignored");
                IpiEffect::None
            }
        }
    }

    /// The APIC ID this CPU had at reset (CPUID leaf 1 reports it, also
    /// after software changed the ID register).
    pub fn initial_id(&self) -> u32 {
        self.initial_id
    }

    /// The virtual clock the timer runs on.
    pub fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    fn enabled(&self) -> bool {
        self.base & BASE_ENABLE != 0 && self.svr & SVR_ENABLE != 0
    }

    /// The processor priority (SDM 10.8.3.1).
    fn ppr(&self) -> u32 {
        let isrv = self.isr.highest().map_or(0, u32::from);
        if self.tpr & 0xF0 >= isrv & 0xF0 { self.tpr & 0xFF } else { isrv & 0xF0 }
    }

    /// Does the 8259's INTR reach the CPU (LINT0 in ExtINT mode and
    /// unmasked, or the APIC globally disabled: then LINT0 is INTR)?
    pub fn accepts_pic(&self) -> bool {
        if self.base & BASE_ENABLE == 0 {
            return true;
        }
        let l = self.lvt[LVT_LINT0];
        l & MASKED == 0 && l & (7 << 8) == DELIVERY_EXTINT
    }

    /// The vector to deliver now, if any.
    pub fn pending(&self) -> Option<u8> {
        let v = self.irr.highest()?;
        (u32::from(v) & 0xF0 > self.ppr() & 0xF0).then_some(v)
    }

    /// INTA: move the vector to deliver from IRR to ISR.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.pending()?;
        self.irr.clear(v);
        self.isr.set(v);
        Some(v)
    }

    /// Accept a fixed interrupt with `vector` (edge-triggered).
    fn accept(&mut self, vector: u8) {
        if vector < 16 {
            self.esr_pending |= ESR_RECEIVE_ILLEGAL;
            return;
        }
        self.irr.set(vector);
        self.tmr.clear(vector);
    }

    /// Bus ticks per timer decrement.
    fn divisor(&self) -> u64 {
        let code = (self.divide & 3) | ((self.divide >> 1) & 4);
        if code == 7 { 1 } else { 2 << code }
    }

    /// Virtual nanoseconds of one full count.
    fn period_ns(&self) -> u64 {
        u64::from(self.initial) * self.divisor() * BUS_NS
    }

    /// The timer at virtual time `now`: fire it if it expired (periodic
    /// timers restart from the latest period boundary).
    pub fn update(&mut self, now: u64) {
        if self.timer_idle || self.initial == 0 {
            return;
        }
        let period = self.period_ns().max(1);
        if now < self.timer_start + period {
            return;
        }
        let lvt = self.lvt[0];
        if lvt & TIMER_PERIODIC != 0 {
            let elapsed = now - self.timer_start;
            self.timer_start += elapsed / period * period;
        } else {
            self.timer_idle = true;
        }
        if lvt & MASKED == 0 && self.enabled() {
            self.accept((lvt & VECTOR) as u8);
        }
    }

    /// When the timer fires next, if it runs.
    pub fn next_event_ns(&self) -> Option<u64> {
        if self.timer_idle || self.initial == 0 || self.lvt[0] & MASKED != 0 {
            return None;
        }
        Some(self.timer_start + self.period_ns().max(1))
    }

    fn current_count(&self) -> u32 {
        if self.timer_idle || self.initial == 0 {
            return 0;
        }
        let ticks = self.clock.now_ns().saturating_sub(self.timer_start) / (self.divisor() * BUS_NS);
        let ticks = if self.lvt[0] & TIMER_PERIODIC != 0 { ticks % u64::from(self.initial) } else { ticks };
        u32::try_from(u64::from(self.initial).saturating_sub(ticks)).unwrap_or(0)
    }

    /// Does this CPU match the ICR's destination?
    fn is_destination(&self, icr_lo: u32, dest: u32) -> bool {
        match (icr_lo >> 18) & 3 {
            1 | 2 => true,
            3 => false,
            _ => self.names_me(icr_lo & (1 << 11) != 0, dest),
        }
    }

    /// Does a physical or logical destination name this CPU?
    fn names_me(&self, logical: bool, dest: u32) -> bool {
        if !logical {
            return dest == self.id >> 24 || dest == 0xFF;
        }
        // The flat model ANDs the destination with LDR; the cluster model
        // compares the cluster nibble too.
        let ldr = self.ldr >> 24;
        if self.dfr >> 28 == 0xF { dest & ldr != 0 } else { dest >> 4 == ldr >> 4 && dest & ldr & 0xF != 0 }
    }

    /// A message from the I/O APIC; false if it does not name this CPU.
    pub fn receive(&mut self, m: &super::ioapic::Message) -> bool {
        if !self.names_me(m.logical, u32::from(m.dest)) {
            return false;
        }
        match m.mode {
            0 | 1 => {
                self.accept(m.vector);
                if m.level {
                    self.tmr.set(m.vector);
                }
            }
            4 => self.nmi_pending = true,
            mode => crate::guest_warn!("I/O APIC: delivery mode {mode} is not modelled: ignored"),
        }
        true
    }

    /// A write of ICR low: send the IPI.
    fn send_ipi(&mut self) {
        let lo = self.icr[0];
        let dest = self.icr[1] >> 24;
        let vector = (lo & VECTOR) as u8;
        if self.smp {
            if matches!((lo >> 8) & 7, 0 | 1) && vector < 16 {
                self.esr_pending |= ESR_SEND_ILLEGAL;
            }
            self.outbox.push(Ipi { icr_lo: lo, dest });
            return;
        }
        match (lo >> 8) & 7 {
            // Fixed, lowest priority.
            0 | 1 => {
                if vector < 16 {
                    self.esr_pending |= ESR_SEND_ILLEGAL;
                }
                if self.is_destination(lo, dest) {
                    self.accept(vector);
                }
            }
            // NMI: the vector field is ignored.
            4 => {
                if self.is_destination(lo, dest) {
                    self.nmi_pending = true;
                }
            }
            // INIT, STARTUP: only application processors act on them, and
            // a one-CPU machine has none (an OS counting its CPUs sends
            // them anyway): nothing happens, as on such a PC.
            5 | 6 => {}
            // SMI is not modelled.
            mode => crate::guest_warn!("local APIC: IPI delivery mode {mode} is not modelled: ignored"),
        }
    }

    pub fn read(&self, offset: u32) -> u32 {
        let r = offset & !0xF;
        match r {
            reg::ID => self.id,
            reg::VER => VERSION,
            reg::TPR => self.tpr,
            reg::APR => 0,
            reg::PPR => self.ppr(),
            reg::LDR => self.ldr,
            reg::DFR => self.dfr,
            reg::SVR => self.svr,
            reg::ISR..=0x170 => self.isr.0[((r - reg::ISR) / 0x10) as usize],
            reg::TMR..=0x1F0 => self.tmr.0[((r - reg::TMR) / 0x10) as usize],
            reg::IRR..=0x270 => self.irr.0[((r - reg::IRR) / 0x10) as usize],
            reg::ESR => self.esr,
            reg::ICR_LO => self.icr[0] & !(1 << 12),
            reg::ICR_HI => self.icr[1],
            reg::LVT_TIMER..=reg::LVT_ERROR => self.lvt[((r - reg::LVT_TIMER) / 0x10) as usize],
            reg::TMICT => self.initial,
            reg::TMCCT => self.current_count(),
            reg::TDCR => self.divide,
            _ => 0,
        }
    }

    /// A register write; returns whether interrupt state may have changed.
    pub fn write(&mut self, offset: u32, v: u32) -> bool {
        let r = offset & !0xF;
        match r {
            reg::ID => self.id = v & 0xFF00_0000,
            reg::TPR => self.tpr = v & 0xFF,
            reg::EOI => {
                if let Some(top) = self.isr.highest() {
                    self.isr.clear(top);
                    if self.tmr.0[top as usize / 32] & (1 << (top % 32)) != 0 {
                        self.level_eois.push(top);
                    }
                }
            }
            reg::LDR => self.ldr = v & 0xFF00_0000,
            reg::DFR => self.dfr = v | 0x0FFF_FFFF,
            reg::SVR => {
                self.svr = v & 0x3FF;
                if self.svr & SVR_ENABLE == 0 {
                    for l in &mut self.lvt {
                        *l |= MASKED;
                    }
                }
            }
            reg::ESR => {
                self.esr = std::mem::take(&mut self.esr_pending);
            }
            reg::ICR_LO => {
                self.icr[0] = v & 0x000C_CFFF;
                self.send_ipi();
            }
            reg::ICR_HI => self.icr[1] = v & 0xFF00_0000,
            reg::LVT_TIMER..=reg::LVT_ERROR => {
                let k = ((r - reg::LVT_TIMER) / 0x10) as usize;
                let mask = if self.svr & SVR_ENABLE == 0 { MASKED } else { 0 };
                let was_periodic = self.lvt[k] & TIMER_PERIODIC != 0;
                self.lvt[k] = (v & LVT_WRITABLE[k]) | mask;
                if k == 0 && was_periodic != (self.lvt[0] & TIMER_PERIODIC != 0) && !self.timer_idle {
                    // A mode change keeps the count running from now.
                    self.timer_start = self.clock.now_ns();
                }
            }
            reg::TMICT => {
                self.initial = v;
                self.timer_start = self.clock.now_ns();
                self.timer_idle = v == 0;
            }
            reg::TDCR => {
                // The count so far stays; it runs on at the new rate.
                let current = self.current_count();
                self.divide = v & 0xB;
                if !self.timer_idle && self.initial != 0 {
                    let done = u64::from(self.initial - current.min(self.initial));
                    self.timer_start = self.clock.now_ns().saturating_sub(done * self.divisor() * BUS_NS);
                }
            }
            _ => return false,
        }
        true
    }
}

impl super::Registers32 for LocalApic {
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

    fn apic() -> (LocalApic, VirtualClock) {
        let c = VirtualClock::icount(1);
        (LocalApic::new(c.clone()), c)
    }

    #[test]
    fn priority_and_eoi() {
        let (mut a, _) = apic();
        a.write(reg::ICR_LO, (1 << 18) | 0x41);
        a.write(reg::ICR_LO, (1 << 18) | 0x61);
        assert_eq!(a.acknowledge(), Some(0x61));
        // 0x41 is below the class in service.
        assert_eq!(a.pending(), None);
        assert_eq!(a.read(reg::PPR), 0x60);
        a.write(reg::EOI, 0);
        assert_eq!(a.acknowledge(), Some(0x41));
        a.write(reg::EOI, 0);
        a.write(reg::TPR, 0x50);
        a.write(reg::ICR_LO, (1 << 18) | 0x45);
        assert_eq!(a.pending(), None);
        a.write(reg::TPR, 0);
        assert_eq!(a.pending(), Some(0x45));
    }

    #[test]
    fn timer_one_shot_and_periodic() {
        let (mut a, c) = apic();
        a.write(reg::TDCR, 0xB); // divide by 1
        a.write(reg::LVT_TIMER, 0x50);
        a.write(reg::TMICT, 1000);
        assert_eq!(a.next_event_ns(), Some(1000));
        c.advance_to_ns(400);
        assert_eq!(a.read(reg::TMCCT), 600);
        c.advance_to_ns(1000);
        a.update(1000);
        assert_eq!(a.acknowledge(), Some(0x50));
        assert_eq!(a.read(reg::TMCCT), 0);
        assert_eq!(a.next_event_ns(), None);
        a.write(reg::EOI, 0);
        a.write(reg::LVT_TIMER, 0x51 | TIMER_PERIODIC);
        a.write(reg::TDCR, 0x3); // divide by 16
        a.write(reg::TMICT, 10);
        assert_eq!(a.next_event_ns(), Some(1160));
        c.advance_to_ns(1170);
        a.update(1170);
        assert_eq!(a.acknowledge(), Some(0x51));
        assert_eq!(a.next_event_ns(), Some(1320));
    }

    #[test]
    fn software_disable_masks_the_lvt() {
        let (mut a, _) = apic();
        assert!(a.accepts_pic());
        a.write(reg::SVR, 0xFF);
        assert_eq!(a.read(0x350), 0x1_8700);
        assert!(!a.accepts_pic());
        a.write(0x350, 0x8700);
        assert_eq!(a.read(0x350), 0x1_8700, "masks stay while disabled");
        a.write(reg::SVR, 0x1FF);
        a.write(0x350, 0x8700);
        assert!(a.accepts_pic());
    }

    #[test]
    fn illegal_vectors_and_esr() {
        let (mut a, _) = apic();
        a.write(reg::ICR_LO, (1 << 18) | 0x05);
        assert_eq!(a.pending(), None);
        assert_eq!(a.read(reg::ESR), 0, "seen after the next ESR write");
        a.write(reg::ESR, 0);
        assert_eq!(a.read(reg::ESR), ESR_SEND_ILLEGAL | ESR_RECEIVE_ILLEGAL);
        a.write(reg::ESR, 0);
        assert_eq!(a.read(reg::ESR), 0);
    }
}
