//! Intel 8254 programmable interval timer at ports 0x40-0x43, plus the PC's
//! port 0x61 (system control port B: channel 2 gate, speaker, refresh).
//!
//! The three counters run from a 1.193182 MHz input clock whose ticks are
//! computed from the [`VirtualClock`]: every channel remembers the tick at
//! which it started counting and derives its count and OUT level from the
//! elapsed ticks, so nothing depends on how often the VMM looks at it, and
//! an icount clock gives a deterministic timer.
//!
//! Modelled per the 8254 datasheet: modes 0-5 (6 and 7 alias 2 and 3),
//! binary and BCD counting, the four access modes, the counter latch and
//! read-back (status and count) commands, GATE inputs and OUT pins.
//! Channel 0 (system timer, IRQ 0) and channel 1 (DRAM refresh) have their
//! gates tied high; channel 2's gate is port 0x61 bit 0 and its OUT is
//! readable as port 0x61 bit 5.
//!
//! Simplifications, documented where they apply:
//! * a count is loaded into the counting element at the tick it is written
//!   (the chip waits for the next CLK edge, one tick later);
//! * in mode 3 a count written while counting takes effect at the end of
//!   the current full period (the chip switches at the end of the current
//!   half period);
//! * the count read back before any count was written after a control word
//!   is 0 (undefined on the chip);
//! * in modes 1 and 5 channels 0 and 1 never trigger, as their gates never
//!   see a rising edge (as on the chip).
//!
//! At power-on no counter has a count (the chip's state is undefined): all
//! channels are in mode 3, lobyte/hibyte access, binary, OUT high, and
//! IRQ 0 stays quiet until channel 0 is programmed. A booted machine has
//! been through `loader::bios`, which leaves channel 0 as a BIOS does: mode
//! 2, count 65536 (18.2 Hz).
//!
//! One `Pit` serves both port ranges: register the same (shared) instance
//! at [`PIT_BASE`] for [`PIT_PORTS`] ports and at [`PORT_61`] for one port.

use super::clock::{NS_PER_SEC, VirtualClock};
use super::{IoEffect, PortDevice};

/// First port of the PIT (channel 0 data).
pub const PIT_BASE: u16 = 0x40;
/// Number of PIT ports: three channel data ports and the control word.
pub const PIT_PORTS: u16 = 4;
/// Mode/command register.
pub const PIT_CONTROL: u16 = PIT_BASE + 3;
/// System control port B.
pub const PORT_61: u16 = 0x61;

/// The 8254's input clock on a PC, in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// Port 0x61 bit 4 toggles at each DRAM refresh request, every 15.085 us
/// (channel 1 programmed with count 18 by a BIOS).
pub const REFRESH_PERIOD_NS: u64 = 15_085;

/// Number of counters.
const CHANNELS: usize = 3;
/// Control word fields.
const CW_SELECT_SHIFT: u8 = 6;
const CW_READ_BACK: u8 = 3;
const CW_ACCESS_SHIFT: u8 = 4;
const CW_ACCESS_MASK: u8 = 0x03;
const CW_MODE_SHIFT: u8 = 1;
const CW_MODE_MASK: u8 = 0x07;
const CW_BCD: u8 = 0x01;
/// Read-back command bits (active low latch requests, channel select).
const RB_NO_COUNT: u8 = 0x20;
const RB_NO_STATUS: u8 = 0x10;
const RB_CHANNEL0: u8 = 0x02;
/// Status byte bits above the copied control word fields.
const STATUS_OUT: u8 = 0x80;
const STATUS_NULL_COUNT: u8 = 0x40;

/// Port 0x61 bits.
const P61_GATE2: u8 = 0x01;
const P61_SPEAKER: u8 = 0x02;
/// Parity and I/O channel check enables: stored, otherwise unused.
const P61_CHECK_ENABLES: u8 = 0x0C;
const P61_REFRESH: u8 = 0x10;
const P61_OUT2: u8 = 0x20;

/// Binary counters count modulo 2^16, BCD ones modulo 10^4.
const BINARY_MODULUS: u64 = 0x1_0000;
const BCD_MODULUS: u64 = 10_000;

/// Input clock ticks since the clock's epoch at virtual time `ns`.
fn ns_to_ticks(ns: u64) -> u64 {
    // ns * PIT_HZ / 1e9 < ns, so the result always fits.
    (u128::from(ns) * u128::from(PIT_HZ) / u128::from(NS_PER_SEC)) as u64
}

/// The first virtual time whose tick count is at least `ticks`.
fn ticks_to_ns(ticks: u64) -> u64 {
    let ns = (u128::from(ticks) * u128::from(NS_PER_SEC)).div_ceil(u128::from(PIT_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// How the data port transfers the 16-bit count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Low = 1,
    High = 2,
    LowHigh = 3,
}

/// Where a counter is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// No count written since the control word.
    Idle,
    /// Count written, waiting for a GATE rising edge (modes 1 and 5, and
    /// modes 2 and 3 while GATE is low).
    Waiting,
    /// Counting since input tick `start` (the count was loaded then).
    Counting { start: u64 },
    /// Modes 0 and 4 with GATE low: `elapsed` ticks counted so far.
    Paused { elapsed: u64 },
}

/// One 8254 counter.
#[derive(Debug, Clone)]
struct Channel {
    /// Mode as programmed (0-7; 6 and 7 behave as 2 and 3).
    mode: u8,
    bcd: bool,
    access: Access,
    /// Count register: the last complete count written, raw.
    count_register: u16,
    /// Low byte of a lobyte/hibyte write in progress.
    write_low: Option<u8>,
    /// Lobyte/hibyte reads: the next read returns the high byte.
    read_high_next: bool,
    latched_count: Option<u16>,
    latched_status: Option<u8>,
    /// A count was written but not yet loaded into the counting element.
    null_count: bool,
    /// Initial count in the counting element (1 ..= modulus).
    initial: u64,
    /// A new count for modes 2 and 3, loaded at input tick `.0`.
    pending: Option<(u64, u64)>,
    run: Run,
    gate: bool,
    /// Count shown while not counting (decoded value).
    frozen: u64,
}

impl Channel {
    fn new(gate: bool) -> Self {
        Self {
            mode: 3,
            bcd: false,
            access: Access::LowHigh,
            count_register: 0,
            write_low: None,
            read_high_next: false,
            latched_count: None,
            latched_status: None,
            null_count: false,
            initial: BINARY_MODULUS,
            pending: None,
            run: Run::Idle,
            gate,
            frozen: 0,
        }
    }

    /// Mode with the don't-care bit of 6 and 7 removed.
    fn mode(&self) -> u8 {
        match self.mode {
            6 => 2,
            7 => 3,
            m => m,
        }
    }

    fn modulus(&self) -> u64 {
        if self.bcd { BCD_MODULUS } else { BINARY_MODULUS }
    }

    /// The count a raw count register value stands for; 0 is the maximum.
    /// Non-decimal BCD digits are taken at face value (no panic).
    fn decode(&self, raw: u16) -> u64 {
        let value = if self.bcd {
            let [d0, d1, d2, d3] = [0, 4, 8, 12].map(|shift| u64::from((raw >> shift) & 0xF));
            d3 * 1000 + d2 * 100 + d1 * 10 + d0
        } else {
            u64::from(raw)
        };
        if value == 0 { self.modulus() } else { value }
    }

    /// The counter's register representation of `value`.
    fn encode(&self, value: u64) -> u16 {
        if self.bcd {
            let mut v = value % BCD_MODULUS;
            let mut raw = 0u16;
            for shift in [0, 4, 8, 12] {
                raw |= ((v % 10) as u16) << shift;
                v /= 10;
            }
            raw
        } else {
            (value % BINARY_MODULUS) as u16
        }
    }

    /// Loads a count written for modes 2/3 at the end of the current
    /// period, once time has reached it.
    fn settle(&mut self, tick: u64) {
        if let (Some((at, initial)), Run::Counting { .. }) = (self.pending, self.run)
            && tick >= at
        {
            self.run = Run::Counting { start: at };
            self.initial = initial;
            self.pending = None;
            self.null_count = false;
        }
    }

    /// Counter value `elapsed` ticks after loading (decoded).
    fn count_after(&self, elapsed: u64) -> u64 {
        let n = self.initial.max(1);
        match self.mode() {
            2 => n - elapsed % n,
            3 => {
                // Decrements by two from the even part of the count; OUT
                // is high for the first ceil(n/2) ticks of each period.
                let phase = elapsed % n;
                let high = n.div_ceil(2);
                let within = if phase < high { phase } else { phase - high };
                (n & !1).saturating_sub(2 * within)
            }
            // Modes 0, 1, 4, 5 keep counting down and wrap after zero.
            _ => {
                let m = self.modulus();
                (n % m + m - elapsed % m) % m
            }
        }
    }

    /// OUT level `elapsed` ticks after loading.
    fn out_after(&self, elapsed: u64) -> bool {
        let n = self.initial.max(1);
        match self.mode() {
            0 | 1 => elapsed >= n,
            // A count of 1 is illegal in modes 2 and 3: OUT stays high.
            2 => n < 2 || elapsed % n != n - 1,
            3 => n < 2 || elapsed % n < n.div_ceil(2),
            // Modes 4 and 5: a one-tick low strobe at terminal count.
            _ => elapsed != n,
        }
    }

    /// Current (count, OUT) at input tick `tick`.
    fn state(&mut self, tick: u64) -> (u64, bool) {
        self.settle(tick);
        match self.run {
            Run::Idle => (self.frozen, self.mode() != 0),
            Run::Waiting => (self.frozen, true),
            Run::Counting { start } => {
                let elapsed = tick.saturating_sub(start);
                (self.count_after(elapsed), self.out_after(elapsed))
            }
            Run::Paused { elapsed } => (self.count_after(elapsed), self.out_after(elapsed)),
        }
    }

    fn out(&mut self, tick: u64) -> bool {
        self.state(tick).1
    }

    fn status(&mut self, tick: u64) -> u8 {
        let out = if self.out(tick) { STATUS_OUT } else { 0 };
        let null = if self.null_count { STATUS_NULL_COUNT } else { 0 };
        out | null | (self.access as u8) << CW_ACCESS_SHIFT | self.mode << CW_MODE_SHIFT | u8::from(self.bcd)
    }

    /// Counter latch command: freezes the count for reading, unless a
    /// latched count is still unread.
    fn latch_count(&mut self, tick: u64) {
        if self.latched_count.is_none() {
            let count = self.state(tick).0;
            self.latched_count = Some(self.encode(count));
        }
    }

    fn latch_status(&mut self, tick: u64) {
        if self.latched_status.is_none() {
            self.latched_status = Some(self.status(tick));
        }
    }

    /// A control word for this channel with a non-latch access mode.
    fn program(&mut self, control: u8) {
        self.mode = (control >> CW_MODE_SHIFT) & CW_MODE_MASK;
        self.bcd = control & CW_BCD != 0;
        self.access = match (control >> CW_ACCESS_SHIFT) & CW_ACCESS_MASK {
            1 => Access::Low,
            2 => Access::High,
            _ => Access::LowHigh,
        };
        self.write_low = None;
        self.read_high_next = false;
        self.latched_count = None;
        self.latched_status = None;
        self.null_count = true;
        self.pending = None;
        self.run = Run::Idle;
        self.frozen = 0;
    }

    fn read(&mut self, tick: u64) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        let value = match self.latched_count {
            Some(latched) => latched,
            None => {
                let count = self.state(tick).0;
                self.encode(count)
            }
        };
        let [low, high] = value.to_le_bytes();
        match self.access {
            Access::Low => {
                self.latched_count = None;
                low
            }
            Access::High => {
                self.latched_count = None;
                high
            }
            Access::LowHigh if !self.read_high_next => {
                self.read_high_next = true;
                low
            }
            Access::LowHigh => {
                self.read_high_next = false;
                self.latched_count = None;
                high
            }
        }
    }

    fn write(&mut self, value: u8, tick: u64) {
        let raw = match self.access {
            Access::Low => u16::from(value),
            Access::High => u16::from(value) << 8,
            Access::LowHigh => match self.write_low.take() {
                Some(low) => u16::from_le_bytes([low, value]),
                None => {
                    self.write_low = Some(value);
                    if self.mode() == 0 {
                        // Writing the first byte stops the count and drives
                        // OUT low until the full count arrives.
                        self.settle(tick);
                        self.run = Run::Paused { elapsed: 0 };
                    }
                    return;
                }
            },
        };
        self.load(raw, tick);
    }

    /// A complete count was written.
    fn load(&mut self, raw: u16, tick: u64) {
        self.settle(tick);
        self.count_register = raw;
        self.null_count = true;
        let initial = self.decode(raw);
        match self.mode() {
            // Software-triggered modes (re)start with the new count.
            0 | 4 => {
                self.initial = initial;
                self.pending = None;
                self.null_count = false;
                self.run = if self.gate { Run::Counting { start: tick } } else { Run::Paused { elapsed: 0 } };
            }
            // Hardware-triggered modes wait for GATE; a count written while
            // a one-shot runs applies to the next trigger.
            1 | 5 => {
                if self.run == Run::Idle {
                    self.run = Run::Waiting;
                }
            }
            // Periodic modes: a first count starts them; a new count
            // written while counting is loaded at the end of the period.
            _ => match self.run {
                Run::Counting { start } => {
                    let n = self.initial.max(1);
                    let periods = (tick.saturating_sub(start) / n).saturating_add(1);
                    let at = start.saturating_add(periods.saturating_mul(n));
                    self.pending = Some((at, initial));
                }
                _ if self.gate => {
                    self.initial = initial;
                    self.null_count = false;
                    self.run = Run::Counting { start: tick };
                }
                _ => self.run = Run::Waiting,
            },
        }
    }

    fn set_gate(&mut self, high: bool, tick: u64) {
        self.settle(tick);
        if high == self.gate {
            return;
        }
        self.gate = high;
        match (self.mode(), self.run) {
            // Modes 0 and 4: GATE low suspends counting.
            (0 | 4, Run::Counting { start }) if !high => {
                self.run = Run::Paused { elapsed: tick.saturating_sub(start) };
            }
            (0 | 4, Run::Paused { elapsed }) if high => {
                self.run = Run::Counting { start: tick.saturating_sub(elapsed) };
            }
            // Modes 2 and 3: GATE low stops counting and forces OUT high.
            (2 | 3, Run::Counting { .. }) if !high => {
                self.frozen = self.state(tick).0;
                self.pending = None;
                self.run = Run::Waiting;
            }
            // Modes 1, 2, 3, 5: a rising edge (re)loads and starts.
            (1 | 2 | 3 | 5, Run::Waiting | Run::Counting { .. }) if high => {
                self.initial = self.decode(self.count_register);
                self.pending = None;
                self.null_count = false;
                self.run = Run::Counting { start: tick };
            }
            _ => {}
        }
    }

    /// Rising edges of OUT in the tick interval (`from`, `to`] caused by
    /// counting (GATE assumed constant over the interval).
    fn rising_edges(&mut self, from: u64, to: u64) -> u64 {
        self.settle(from);
        if to <= from {
            return 0;
        }
        let mut edges = 0;
        let mut from = from;
        if let Some((at, _)) = self.pending
            && at <= to
        {
            edges += self.segment_edges(from, at);
            self.settle(at);
            from = at;
        }
        edges + self.segment_edges(from, to)
    }

    /// Rising edges in (`from`, `to`] of the current counting segment.
    fn segment_edges(&self, from: u64, to: u64) -> u64 {
        let Run::Counting { start } = self.run else { return 0 };
        let n = self.initial.max(1);
        let once = |edge: u64| u64::from(from < edge && edge <= to);
        match self.mode() {
            2 | 3 if n < 2 => 0,
            // Rising edges at start + k*n for k >= 1.
            2 | 3 => {
                let periods = |t: u64| t.saturating_sub(start) / n;
                periods(to) - periods(from.max(start))
            }
            0 | 1 => once(start.saturating_add(n)),
            _ => once(start.saturating_add(n).saturating_add(1)),
        }
    }

    /// The first rising edge of OUT after tick `from` caused by counting.
    fn next_edge_after(&self, from: u64) -> Option<u64> {
        let Run::Counting { start } = self.run else { return None };
        let (start, n) = match self.pending {
            Some((at, initial)) if at <= from => (at, initial),
            _ => (start, self.initial),
        };
        let n = n.max(1);
        let edge = match self.mode() {
            2 | 3 if n < 2 => return None,
            2 | 3 => {
                let periods = from.saturating_sub(start) / n + u64::from(from >= start);
                return Some(start.saturating_add(periods.max(1).saturating_mul(n)));
            }
            0 | 1 => start.saturating_add(n),
            _ => start.saturating_add(n).saturating_add(1),
        };
        (edge > from).then_some(edge)
    }
}

/// The 8254 timer and port 0x61.
#[derive(Debug, Clone)]
pub struct Pit {
    clock: VirtualClock,
    channels: [Channel; CHANNELS],
    /// Port 0x61 speaker data enable (bit 1).
    speaker: bool,
    /// Port 0x61 bits 2-3 as written.
    check_enables: u8,
    /// Input tick up to which OUT0 edges have been counted.
    irq0_tick: u64,
    /// Counted OUT0 rising edges not yet returned by `irq0_edges`.
    irq0_edges: u64,
    /// Set when the guest writes channel 0's control word or count, so
    /// the chipset drops ticks it still owes from the old programming.
    channel0_reprogrammed: bool,
}

impl Pit {
    /// A PIT in its power-on state reading time from `clock`.
    pub fn new(clock: VirtualClock) -> Self {
        let irq0_tick = ns_to_ticks(clock.now_ns());
        Self {
            clock,
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            speaker: false,
            check_enables: 0,
            irq0_tick,
            irq0_edges: 0,
            channel0_reprogrammed: false,
        }
    }

    /// Number of rising edges of OUT0 (channel 0's output, wired to IRQ 0)
    /// since the previous call, up to virtual time `now_ns`. Raise IRQ 0
    /// (e.g. `DualPic::pulse_irq(0)`) when this is non-zero; several edges
    /// mean the VMM fell behind and they coalesce into one interrupt.
    pub fn irq0_edges(&mut self, now_ns: u64) -> u32 {
        self.sync_irq0(ns_to_ticks(now_ns));
        let edges = std::mem::take(&mut self.irq0_edges);
        u32::try_from(edges).unwrap_or(u32::MAX)
    }

    /// Whether the guest reprogrammed channel 0 since the previous call.
    pub fn take_channel0_reprogrammed(&mut self) -> bool {
        std::mem::take(&mut self.channel0_reprogrammed)
    }

    /// Virtual time of the next rising edge of OUT0 (`now_ns` if one is
    /// already due but not yet collected by [`irq0_edges`](Self::irq0_edges)),
    /// or `None` if channel 0 will not produce one without guest action.
    pub fn next_irq0_ns(&self, now_ns: u64) -> Option<u64> {
        if self.irq0_edges > 0 {
            return Some(now_ns);
        }
        let edge = self.channels[0].next_edge_after(self.irq0_tick)?;
        if edge <= ns_to_ticks(now_ns) { Some(now_ns) } else { Some(ticks_to_ns(edge)) }
    }

    /// The OUT level of `channel` (0-2) now; `false` for other numbers.
    pub fn out(&mut self, channel: usize) -> bool {
        let tick = self.now_ticks();
        self.sync_irq0(tick);
        self.channels.get_mut(channel).is_some_and(|c| c.out(tick))
    }

    /// Whether the guest enabled the speaker (port 0x61 bits 0 and 1). The
    /// VMM makes no sound; this is for logging.
    pub fn speaker_enabled(&self) -> bool {
        self.speaker && self.channels[2].gate
    }

    fn now_ticks(&self) -> u64 {
        ns_to_ticks(self.clock.now_ns())
    }

    /// Counts OUT0's rising edges up to `tick` so that a change to
    /// channel 0 at `tick` does not lose or invent edges before it.
    fn sync_irq0(&mut self, tick: u64) {
        if tick > self.irq0_tick {
            let edges = self.channels[0].rising_edges(self.irq0_tick, tick);
            self.irq0_edges = self.irq0_edges.saturating_add(edges);
            self.irq0_tick = tick;
        }
    }

    /// Runs `change` on channel 0 and counts a rising edge it causes
    /// directly (e.g. a control word forcing OUT high).
    fn change_channel0(&mut self, tick: u64, change: impl FnOnce(&mut Channel)) {
        self.sync_irq0(tick);
        self.channel0_reprogrammed = true;
        let channel = &mut self.channels[0];
        let before = channel.out(tick);
        change(channel);
        if !before && channel.out(tick) {
            self.irq0_edges = self.irq0_edges.saturating_add(1);
        }
    }

    fn write_control(&mut self, value: u8, tick: u64) {
        let select = value >> CW_SELECT_SHIFT;
        if select == CW_READ_BACK {
            self.sync_irq0(tick);
            for (index, channel) in self.channels.iter_mut().enumerate() {
                if value & (RB_CHANNEL0 << index) == 0 {
                    continue;
                }
                // Status first: it reflects the state before a count latch.
                if value & RB_NO_STATUS == 0 {
                    channel.latch_status(tick);
                }
                if value & RB_NO_COUNT == 0 {
                    channel.latch_count(tick);
                }
            }
            return;
        }
        let index = usize::from(select);
        let latch = (value >> CW_ACCESS_SHIFT) & CW_ACCESS_MASK == 0;
        let apply = |channel: &mut Channel| {
            if latch { channel.latch_count(tick) } else { channel.program(value) }
        };
        if index == 0 {
            self.change_channel0(tick, apply);
        } else if let Some(channel) = self.channels.get_mut(index) {
            apply(channel);
        }
    }

    fn read_port61(&mut self, tick: u64) -> u8 {
        let now_ns = self.clock.now_ns();
        let mut value = self.check_enables;
        if self.channels[2].gate {
            value |= P61_GATE2;
        }
        if self.speaker {
            value |= P61_SPEAKER;
        }
        if (now_ns / REFRESH_PERIOD_NS) % 2 == 1 {
            value |= P61_REFRESH;
        }
        if self.channels[2].out(tick) {
            value |= P61_OUT2;
        }
        value
    }

    fn write_port61(&mut self, value: u8, tick: u64) {
        self.speaker = value & P61_SPEAKER != 0;
        self.check_enables = value & P61_CHECK_ENABLES;
        self.channels[2].set_gate(value & P61_GATE2 != 0, tick);
    }
}

impl PortDevice for Pit {
    /// Byte registers: wider accesses see only the addressed byte.
    fn read(&mut self, port: u16, _size: u8) -> u32 {
        let tick = self.now_ticks();
        self.sync_irq0(tick);
        let value = match port {
            PIT_BASE..PIT_CONTROL => self.channels[usize::from(port - PIT_BASE)].read(tick),
            // The control word register is write-only (QEMU reads 0).
            PIT_CONTROL => 0,
            PORT_61 => self.read_port61(tick),
            _ => 0xFF,
        };
        u32::from(value)
    }

    fn write(&mut self, port: u16, _size: u8, value: u32) -> IoEffect {
        let tick = self.now_ticks();
        let byte = value.to_le_bytes()[0];
        match port {
            PIT_BASE => self.change_channel0(tick, |c| c.write(byte, tick)),
            0x41 | 0x42 => self.channels[usize::from(port - PIT_BASE)].write(byte, tick),
            PIT_CONTROL => self.write_control(byte, tick),
            PORT_61 => self.write_port61(byte, tick),
            _ => log::debug!("pit: write {byte:#x} to foreign port {port:#x}"),
        }
        IoEffect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pit() -> (Pit, VirtualClock) {
        let clock = VirtualClock::icount(1);
        (Pit::new(clock.clone()), clock)
    }

    fn out(p: &mut Pit, port: u16, value: u8) {
        assert_eq!(p.write(port, 1, u32::from(value)), IoEffect::None);
    }

    fn inb(p: &mut Pit, port: u16) -> u8 {
        p.read(port, 1) as u8
    }

    /// Moves the clock to exactly input tick `tick`.
    fn at_tick(clock: &VirtualClock, tick: u64) {
        clock.advance_to_ns(ticks_to_ns(tick));
        assert_eq!(ns_to_ticks(clock.now_ns()), tick);
    }

    fn read16(p: &mut Pit, channel: u16) -> u16 {
        let low = inb(p, PIT_BASE + channel);
        let high = inb(p, PIT_BASE + channel);
        u16::from_le_bytes([low, high])
    }

    /// Programs `channel` with a lo/hi count in binary `mode`.
    fn program(p: &mut Pit, channel: u8, mode: u8, count: u16) {
        out(p, PIT_CONTROL, channel << 6 | 0x30 | mode << 1);
        let [low, high] = count.to_le_bytes();
        out(p, PIT_BASE + u16::from(channel), low);
        out(p, PIT_BASE + u16::from(channel), high);
    }

    #[test]
    fn tick_conversions_round_trip() {
        assert_eq!(ns_to_ticks(NS_PER_SEC), PIT_HZ);
        for tick in [0, 1, 2, 1000, PIT_HZ, 123_456_789] {
            assert_eq!(ns_to_ticks(ticks_to_ns(tick)), tick);
            assert_eq!(ns_to_ticks(ticks_to_ns(tick) - u64::from(tick > 0)), tick.saturating_sub(1));
        }
        assert_eq!(ticks_to_ns(u64::MAX), u64::MAX);
    }

    #[test]
    fn power_on_is_quiet() {
        let (mut p, clock) = pit();
        clock.advance_to_ns(NS_PER_SEC);
        assert_eq!(p.irq0_edges(clock.now_ns()), 0);
        assert_eq!(p.next_irq0_ns(clock.now_ns()), None);
        assert!(p.out(0));
        assert!(!p.out(3));
        assert_eq!(inb(&mut p, PIT_CONTROL), 0);
        assert_eq!(inb(&mut p, PORT_61) & (P61_GATE2 | P61_SPEAKER), 0);
    }

    #[test]
    fn mode0_interrupt_on_terminal_count() {
        let (mut p, clock) = pit();
        at_tick(&clock, 100);
        program(&mut p, 0, 0, 1000);
        assert!(!p.out(0));
        at_tick(&clock, 600);
        assert_eq!(read16(&mut p, 0), 500);
        assert_eq!(p.next_irq0_ns(clock.now_ns()), Some(ticks_to_ns(1100)));
        at_tick(&clock, 1099);
        assert!(!p.out(0));
        assert_eq!(p.irq0_edges(clock.now_ns()), 0);
        at_tick(&clock, 1100);
        assert!(p.out(0));
        assert_eq!(read16(&mut p, 0), 0);
        at_tick(&clock, 1101);
        assert_eq!(read16(&mut p, 0), 0xFFFF, "wraps and keeps counting");
        at_tick(&clock, 5_000_000);
        assert!(p.out(0), "OUT stays high");
        assert_eq!(p.irq0_edges(clock.now_ns()), 1, "one edge only");
        assert_eq!(p.next_irq0_ns(clock.now_ns()), None);
        // A new count restarts the one-shot with OUT low.
        program(&mut p, 0, 0, 10);
        assert!(!p.out(0));
        at_tick(&clock, 5_000_010);
        assert_eq!(p.irq0_edges(clock.now_ns()), 1);
    }

    #[test]
    fn mode0_first_byte_stops_counting() {
        let (mut p, clock) = pit();
        program(&mut p, 0, 0, 100);
        at_tick(&clock, 50);
        out(&mut p, PIT_BASE, 0x10);
        at_tick(&clock, 500);
        assert!(!p.out(0), "held low while the count is incomplete");
        out(&mut p, PIT_BASE, 0x00);
        at_tick(&clock, 515);
        assert_eq!(read16(&mut p, 0), 1);
        at_tick(&clock, 516);
        assert!(p.out(0));
        assert_eq!(p.irq0_edges(clock.now_ns()), 1);
    }

    #[test]
    fn mode2_rate_generator() {
        let (mut p, clock) = pit();
        program(&mut p, 0, 2, 1000);
        at_tick(&clock, 1);
        assert_eq!(read16(&mut p, 0), 999);
        at_tick(&clock, 999);
        assert_eq!(read16(&mut p, 0), 1);
        assert!(!p.out(0), "low for the tick at count 1");
        at_tick(&clock, 1000);
        assert!(p.out(0));
        assert_eq!(read16(&mut p, 0), 1000, "reloaded");
        assert_eq!(p.irq0_edges(clock.now_ns()), 1);
        at_tick(&clock, 10_500);
        assert_eq!(p.irq0_edges(clock.now_ns()), 9);
        assert_eq!(read16(&mut p, 0), 500);
        assert_eq!(p.next_irq0_ns(clock.now_ns()), Some(ticks_to_ns(11_000)));
        // Linux's HZ=100 setup: 11932 ticks per jiffy, 100 edges a second.
        program(&mut p, 0, 2, 11_932);
        p.irq0_edges(clock.now_ns());
        clock.advance_to_ns(clock.now_ns() + NS_PER_SEC);
        assert_eq!(p.irq0_edges(clock.now_ns()), 99, "1193182 / 11932 = 99.997");
        clock.advance_to_ns(clock.now_ns() + NS_PER_SEC);
        assert_eq!(p.irq0_edges(clock.now_ns()), 100);
    }

    #[test]
    fn mode2_new_count_applies_at_end_of_period() {
        let (mut p, clock) = pit();
        program(&mut p, 0, 2, 100);
        at_tick(&clock, 250);
        let [low, high] = 40u16.to_le_bytes();
        out(&mut p, PIT_BASE, low);
        out(&mut p, PIT_BASE, high);
        out(&mut p, PIT_CONTROL, 0xE2);
        assert_eq!(inb(&mut p, PIT_BASE) & STATUS_NULL_COUNT, STATUS_NULL_COUNT, "not loaded yet");
        assert_eq!(read16(&mut p, 0), 50, "current period unaffected");
        assert_eq!(p.next_irq0_ns(clock.now_ns()), Some(clock.now_ns()), "edges at 100, 200 uncollected");
        assert_eq!(p.irq0_edges(clock.now_ns()), 2);
        assert_eq!(p.next_irq0_ns(clock.now_ns()), Some(ticks_to_ns(300)));
        at_tick(&clock, 350);
        assert!(p.out(0), "looking at OUT0 past the reload must not lose its edge");
        assert_eq!(read16(&mut p, 0), 30);
        at_tick(&clock, 400);
        assert_eq!(p.irq0_edges(clock.now_ns()), 3, "300, 340, 380");
        assert_eq!(p.next_irq0_ns(clock.now_ns()), Some(ticks_to_ns(420)));
        out(&mut p, PIT_CONTROL, 0xE2);
        assert_eq!(inb(&mut p, PIT_BASE) & STATUS_NULL_COUNT, 0);
    }

    #[test]
    fn mode3_square_wave() {
        let (mut p, clock) = pit();
        program(&mut p, 0, 3, 10);
        assert!(p.out(0));
        at_tick(&clock, 1);
        assert_eq!(read16(&mut p, 0), 8, "counts down by two");
        at_tick(&clock, 4);
        assert!(p.out(0));
        at_tick(&clock, 5);
        assert!(!p.out(0), "low for the second half");
        assert_eq!(read16(&mut p, 0), 10);
        at_tick(&clock, 9);
        assert_eq!(read16(&mut p, 0), 2);
        at_tick(&clock, 10);
        assert!(p.out(0));
        at_tick(&clock, 1000);
        assert_eq!(p.irq0_edges(clock.now_ns()), 100);
        // Odd counts: high for (n+1)/2, low for (n-1)/2.
        program(&mut p, 0, 3, 5);
        let base = 1000;
        let levels: Vec<bool> = (0..5)
            .map(|t| {
                at_tick(&clock, base + t);
                p.out(0)
            })
            .collect();
        assert_eq!(levels, [true, true, true, false, false]);
        // Mode 7 is mode 3 (the high mode bit is don't-care).
        out(&mut p, PIT_CONTROL, 0x3E);
        out(&mut p, PIT_CONTROL, 0xE2);
        assert_eq!(inb(&mut p, PIT_BASE), 0x40 | 0x80 | 0x3E, "null count, OUT high, raw mode");
        out(&mut p, PIT_BASE, 4);
        out(&mut p, PIT_BASE, 0);
        at_tick(&clock, 1005);
        assert!(p.out(0));
        at_tick(&clock, 1006);
        assert!(!p.out(0));
    }

    #[test]
    fn modes_4_and_5_strobe() {
        let (mut p, clock) = pit();
        program(&mut p, 0, 4, 3);
        at_tick(&clock, 2);
        assert!(p.out(0));
        at_tick(&clock, 3);
        assert!(!p.out(0), "strobe at terminal count");
        at_tick(&clock, 4);
        assert!(p.out(0));
        assert_eq!(p.irq0_edges(clock.now_ns()), 1);
        // Mode 5 on channel 2: triggered by the gate.
        out(&mut p, PIT_CONTROL, 0x80 | 0x30 | 5 << 1);
        out(&mut p, 0x42, 3);
        out(&mut p, 0x42, 0);
        at_tick(&clock, 100);
        assert!(p.out(2), "waits for the gate");
        out(&mut p, PORT_61, P61_GATE2);
        at_tick(&clock, 103);
        assert!(!p.out(2));
        at_tick(&clock, 104);
        assert!(p.out(2));
    }

    #[test]
    fn mode1_one_shot_on_gate() {
        let (mut p, clock) = pit();
        program(&mut p, 2, 1, 50);
        at_tick(&clock, 10);
        assert!(p.out(2), "OUT high until triggered");
        out(&mut p, PORT_61, P61_GATE2);
        assert!(!p.out(2));
        at_tick(&clock, 59);
        assert!(!p.out(2));
        at_tick(&clock, 60);
        assert!(p.out(2));
        // Retrigger.
        out(&mut p, PORT_61, 0);
        out(&mut p, PORT_61, P61_GATE2);
        assert!(!p.out(2));
        assert_eq!(read16(&mut p, 2), 50);
        // Channel 0 never triggers (gate tied high).
        program(&mut p, 0, 1, 5);
        at_tick(&clock, 1000);
        assert!(p.out(0));
        assert_eq!(p.irq0_edges(clock.now_ns()), 0);
    }

    #[test]
    fn counter_latch_freezes_the_read_value() {
        let (mut p, clock) = pit();
        program(&mut p, 0, 2, 1000);
        at_tick(&clock, 100);
        out(&mut p, PIT_CONTROL, 0x00);
        at_tick(&clock, 300);
        out(&mut p, PIT_CONTROL, 0x00);
        assert_eq!(inb(&mut p, PIT_BASE), (900u16 & 0xFF) as u8);
        at_tick(&clock, 400);
        assert_eq!(inb(&mut p, PIT_BASE), (900u16 >> 8) as u8, "second latch ignored");
        assert_eq!(read16(&mut p, 0), 600, "latch released after both bytes");
    }

    #[test]
    fn read_back_status_and_count() {
        let (mut p, clock) = pit();
        out(&mut p, PORT_61, P61_GATE2);
        program(&mut p, 1, 2, 300);
        program(&mut p, 2, 0, 200);
        at_tick(&clock, 50);
        // Latch status and count of channels 1 and 2.
        out(&mut p, PIT_CONTROL, 0xC0 | 0x08 | 0x04);
        at_tick(&clock, 60);
        assert_eq!(inb(&mut p, 0x41), 0x80 | 0x30 | 2 << 1);
        assert_eq!(read16(&mut p, 1), 250);
        assert_eq!(read16(&mut p, 1), 240, "latch consumed");
        assert_eq!(inb(&mut p, 0x42), 0x30, "mode 0, OUT low");
        assert_eq!(read16(&mut p, 2), 150);
        // Status only, then count only.
        out(&mut p, PIT_CONTROL, 0xE0 | 0x04);
        assert_eq!(inb(&mut p, 0x41), 0xB4);
        assert_eq!(read16(&mut p, 1), 240);
        out(&mut p, PIT_CONTROL, 0xD0 | 0x04);
        at_tick(&clock, 70);
        assert_eq!(read16(&mut p, 1), 240);
        // Null count right after a control word.
        out(&mut p, PIT_CONTROL, 0x74);
        out(&mut p, PIT_CONTROL, 0xE4);
        assert_eq!(inb(&mut p, 0x41), 0x40 | 0x80 | 0x34);
    }

    #[test]
    fn access_modes_and_lo_hi_sequencing() {
        let (mut p, clock) = pit();
        // Low byte only.
        out(&mut p, PIT_CONTROL, 0x54);
        out(&mut p, 0x41, 0x80);
        at_tick(&clock, 0x10);
        assert_eq!(inb(&mut p, 0x41), 0x70);
        assert_eq!(inb(&mut p, 0x41), 0x70, "every read is the low byte");
        // High byte only: count 0x0300.
        out(&mut p, PIT_CONTROL, 0x64);
        out(&mut p, 0x41, 0x03);
        at_tick(&clock, 0x10 + 0x100);
        assert_eq!(inb(&mut p, 0x41), 0x02);
        // Lo/hi: reads alternate, a control word resets the flip-flops.
        out(&mut p, PIT_CONTROL, 0x74);
        out(&mut p, 0x41, 0x34);
        out(&mut p, PIT_CONTROL, 0x74);
        out(&mut p, 0x41, 0x00);
        out(&mut p, 0x41, 0x10);
        assert_eq!(inb(&mut p, 0x41), 0x00);
        assert_eq!(inb(&mut p, 0x41), 0x10);
        out(&mut p, PIT_CONTROL, 0x40);
        assert_eq!(inb(&mut p, 0x41), 0x00);
        out(&mut p, PIT_CONTROL, 0x74);
        assert_eq!(inb(&mut p, 0x41), 0x00, "latch dropped, low byte next");
    }

    #[test]
    fn bcd_counting() {
        let (mut p, clock) = pit();
        out(&mut p, PIT_CONTROL, 0x31);
        out(&mut p, PIT_BASE, 0x00);
        out(&mut p, PIT_BASE, 0x10);
        at_tick(&clock, 1);
        assert_eq!(read16(&mut p, 0), 0x0999);
        at_tick(&clock, 1000);
        assert_eq!(read16(&mut p, 0), 0x0000);
        assert_eq!(p.irq0_edges(clock.now_ns()), 1);
        at_tick(&clock, 1001);
        assert_eq!(read16(&mut p, 0), 0x9999, "BCD wraps to 9999");
        // Count 0 means 10000 in BCD.
        out(&mut p, PIT_CONTROL, 0x35);
        out(&mut p, PIT_BASE, 0);
        out(&mut p, PIT_BASE, 0);
        at_tick(&clock, 1001 + 2500);
        assert_eq!(read16(&mut p, 0), 0x7500);
        at_tick(&clock, 1001 + 20_000);
        assert_eq!(p.irq0_edges(clock.now_ns()), 2);
        // Garbage digits do not panic.
        out(&mut p, PIT_CONTROL, 0x35);
        out(&mut p, PIT_BASE, 0xFF);
        out(&mut p, PIT_BASE, 0xFF);
        at_tick(&clock, 30_000);
        read16(&mut p, 0);
    }

    #[test]
    fn port61_gate_out2_and_refresh() {
        let (mut p, clock) = pit();
        // Linux's PIT calibration: gate high, mode 0 on channel 2, poll OUT2.
        out(&mut p, PORT_61, 0x01);
        out(&mut p, PIT_CONTROL, 0xB0);
        out(&mut p, 0x42, 0xFF);
        out(&mut p, 0x42, 0xFF);
        assert_eq!(inb(&mut p, PORT_61) & (P61_OUT2 | P61_GATE2), P61_GATE2);
        at_tick(&clock, 0xFFFF);
        assert_eq!(inb(&mut p, PORT_61) & P61_OUT2, P61_OUT2);
        // Gate low pauses mode 0.
        program(&mut p, 2, 0, 100);
        at_tick(&clock, 0xFFFF + 40);
        out(&mut p, PORT_61, 0x00);
        at_tick(&clock, 0xFFFF + 1000);
        assert_eq!(read16(&mut p, 2), 60);
        out(&mut p, PORT_61, 0x03);
        assert!(p.speaker_enabled());
        at_tick(&clock, 0xFFFF + 1059);
        assert_eq!(inb(&mut p, PORT_61) & P61_OUT2, 0);
        at_tick(&clock, 0xFFFF + 1060);
        assert_eq!(inb(&mut p, PORT_61) & P61_OUT2, P61_OUT2);
        // Mode 3 with gate low: OUT high, no counting; rising edge reloads.
        out(&mut p, PORT_61, 0x00);
        program(&mut p, 2, 3, 10);
        at_tick(&clock, 100_000);
        assert!(p.out(2));
        out(&mut p, PORT_61, 0x01);
        at_tick(&clock, 100_005);
        assert!(!p.out(2));
        out(&mut p, PORT_61, 0x00);
        assert!(p.out(2), "gate low forces OUT high");
        // Refresh bit toggles every 15.085 us.
        let t = clock.now_ns().next_multiple_of(REFRESH_PERIOD_NS);
        clock.advance_to_ns(t);
        let first = inb(&mut p, PORT_61) & P61_REFRESH;
        clock.advance_to_ns(t + REFRESH_PERIOD_NS - 1);
        assert_eq!(inb(&mut p, PORT_61) & P61_REFRESH, first);
        clock.advance_to_ns(t + REFRESH_PERIOD_NS);
        assert_ne!(inb(&mut p, PORT_61) & P61_REFRESH, first);
        out(&mut p, PORT_61, 0xFC);
        assert_eq!(inb(&mut p, PORT_61) & 0xCF, 0x0C, "bits 6-7 read 0, 2-3 as written");
    }

    #[test]
    fn control_word_forcing_out_high_is_an_edge() {
        let (mut p, clock) = pit();
        program(&mut p, 0, 0, 1000);
        at_tick(&clock, 10);
        assert!(!p.out(0));
        out(&mut p, PIT_CONTROL, 0x34);
        assert!(p.out(0));
        assert_eq!(p.irq0_edges(clock.now_ns()), 1);
        assert_eq!(p.next_irq0_ns(clock.now_ns()), None, "no count yet");
    }

    #[test]
    fn next_irq0_reports_uncollected_edges_as_due() {
        let (mut p, clock) = pit();
        program(&mut p, 0, 2, 100);
        at_tick(&clock, 150);
        assert_eq!(p.next_irq0_ns(clock.now_ns()), Some(clock.now_ns()));
        assert_eq!(p.irq0_edges(clock.now_ns()), 1);
        let next = p.next_irq0_ns(clock.now_ns());
        assert_eq!(next, Some(ticks_to_ns(200)));
        clock.advance_to_ns(ticks_to_ns(200) - 1);
        assert_eq!(p.irq0_edges(clock.now_ns()), 0);
        clock.advance_to_ns(ticks_to_ns(200));
        assert_eq!(p.irq0_edges(clock.now_ns()), 1);
        // A stale time is harmless.
        assert_eq!(p.irq0_edges(0), 0);
        assert_eq!(p.next_irq0_ns(0), Some(ticks_to_ns(300)));
    }

    #[test]
    fn foreign_ports_and_wide_accesses() {
        let (mut p, _clock) = pit();
        assert_eq!(p.read(0x44, 1), 0xFF);
        assert_eq!(p.write(0x44, 1, 1), IoEffect::None);
        p.write(PIT_CONTROL, 4, 0xFFFF_FF34);
        p.write(PIT_BASE, 2, 0x1234);
        p.write(PIT_BASE, 2, 0x5678);
        out(&mut p, PIT_CONTROL, 0xE2);
        assert_eq!(inb(&mut p, PIT_BASE) & 0x3F, 0x34);
        assert_eq!(read16(&mut p, 0), 0x7834);
    }
}
