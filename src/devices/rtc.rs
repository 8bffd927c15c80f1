//! Motorola MC146818 real-time clock and the PC's CMOS memory, at ports
//! 0x70 (index; bit 7 masks NMI) and 0x71 (data).
//!
//! The clock shows UTC: the host's wall clock when the RTC is created
//! (or [`ICOUNT_START_UNIX_SECS`] with a deterministic icount clock) plus
//! the virtual time elapsed since. Like the PIT, nothing ticks: registers,
//! the update-in-progress bit and the interrupt flags are derived from
//! [`VirtualClock`] time when read, so polling frequency does not matter.
//!
//! Modelled: time/date registers in BCD or binary and 12- or 24-hour
//! format (register B DM and 24/12 bits; unlike the chip, changing the
//! format converts the registers at once, as QEMU does), the alarm with
//! "don't care" values (0xC0-0xFF), register A's UIP bit (set during the
//! last 244 us before each update), divider control (a divider held in
//! reset stops the clock; the first update comes 500 ms after release) and
//! periodic rate, register B's SET (halts updates so the guest can set the
//! time; it also clears UIE), PIE, AIE and UIE, register C's flags (set
//! whether or not enabled, all cleared by reading C) and register D (VRT
//! always 1). DSE (daylight saving) and SQWE are stored but have no
//! effect. Invalid values written to time registers are clamped.
//!
//! IRQ 8 follows register C's IRQF bit: [`Rtc::irq8_pending`] returns the
//! line level for `DualPic::set_irq(8, ..)`, whose edge detection turns each
//! rise into one interrupt; the line stays high until the guest reads C.
//!
//! CMOS bytes 0x0E-0x7F are plain NVRAM, initialised with what BIOS-less
//! kernels read: base and extended memory sizes and the equipment byte.

use std::time::{SystemTime, UNIX_EPOCH};

use super::clock::{NS_PER_SEC, VirtualClock};
use super::{IoEffect, PortDevice};

/// Index port (bit 7 = NMI disable).
pub const RTC_INDEX: u16 = 0x70;
/// Data port.
pub const RTC_DATA: u16 = 0x71;
/// Number of ports starting at [`RTC_INDEX`].
pub const RTC_PORTS: u16 = 2;
/// ISA IRQ of the RTC.
pub const RTC_IRQ: u8 = 8;
/// Wall-clock start of a deterministic (icount) RTC:
/// 2000-01-01 00:00:00 UTC.
pub const ICOUNT_START_UNIX_SECS: i64 = 946_684_800;

/// Clock registers.
pub const REG_SECONDS: u8 = 0x00;
pub const REG_SECONDS_ALARM: u8 = 0x01;
pub const REG_MINUTES: u8 = 0x02;
pub const REG_MINUTES_ALARM: u8 = 0x03;
pub const REG_HOURS: u8 = 0x04;
pub const REG_HOURS_ALARM: u8 = 0x05;
pub const REG_WEEKDAY: u8 = 0x06;
pub const REG_DAY: u8 = 0x07;
pub const REG_MONTH: u8 = 0x08;
pub const REG_YEAR: u8 = 0x09;
pub const REG_A: u8 = 0x0A;
pub const REG_B: u8 = 0x0B;
pub const REG_C: u8 = 0x0C;
pub const REG_D: u8 = 0x0D;
/// IBM PC convention: century of the year, in the current format.
pub const REG_CENTURY: u8 = 0x32;

/// CMOS memory layout bytes set at creation.
pub const CMOS_FLOPPY_TYPES: u8 = 0x10;
pub const CMOS_EQUIPMENT: u8 = 0x14;
/// Base memory in KiB (little endian, 0x15 low).
pub const CMOS_BASE_MEMORY: u8 = 0x15;
/// Extended memory above 1 MiB in KiB, capped at 0xFFFF (two copies).
pub const CMOS_EXTENDED_MEMORY: u8 = 0x17;
pub const CMOS_EXTENDED_MEMORY_POST: u8 = 0x30;
/// Memory above 16 MiB in 64 KiB units, capped at 0xFFFF (QEMU/SeaBIOS).
pub const CMOS_MEMORY_ABOVE_16M: u8 = 0x34;
/// Big-endian sum of bytes 0x10-0x2D (IBM AT convention).
pub const CMOS_CHECKSUM: u8 = 0x2E;

/// Bytes of CMOS memory, including the clock registers.
const CMOS_SIZE: usize = 128;
/// Index bits selecting the register; bit 7 is the NMI mask.
const INDEX_MASK: u8 = 0x7F;
const NMI_DISABLE: u8 = 0x80;

/// Register A bits.
const A_UIP: u8 = 0x80;
const A_WRITABLE: u8 = 0x7F;
/// Divider bits DV2 and DV1 both set hold the divider chain in reset.
const A_DIVIDER_RESET: u8 = 0x60;
const A_RATE_MASK: u8 = 0x0F;
/// Power-on value set by PC firmware: 32.768 kHz time base, 1024 Hz rate.
const A_DEFAULT: u8 = 0x26;

/// Register B bits.
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24_HOUR: u8 = 0x02;
/// 24-hour BCD, interrupts off.
const B_DEFAULT: u8 = B_24_HOUR;

/// Register C bits.
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;

/// Register D: valid RAM and time (battery good).
const D_VRT: u8 = 0x80;

/// 12-hour format: PM flag in the hour registers.
const HOUR_PM: u8 = 0x80;
/// Alarm registers with both top bits set match any value.
const ALARM_DONT_CARE: u8 = 0xC0;

/// UIP is set this long before each update.
const UIP_WINDOW_NS: i128 = 244_000;
/// The divider's input, in Hz; periodic rates divide it.
const TIME_BASE_HZ: i128 = 32_768;
/// After the divider leaves reset, the first update is half a second away.
const DIVIDER_RELEASE_PHASE_NS: i128 = 500_000_000;

/// Equipment byte: math coprocessor present (bit 1), no floppies, primary
/// display EGA/VGA (bits 5:4 = 0).
const EQUIPMENT_FPU: u8 = 0x02;
/// Conventional memory reported below 1 MiB.
const BASE_MEMORY_KIB: u64 = 640;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Unit of the "memory above 16 MiB" bytes.
const HIGH_MEMORY_UNIT: u64 = 64 * KIB;

const NS: i128 = NS_PER_SEC as i128;
const SECS_PER_DAY: i64 = 86_400;
/// 1970-01-01 was a Thursday; weekday 0 is Sunday.
const EPOCH_WEEKDAY: i64 = 4;

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (`month` 1-12; days
/// past the end of the month carry into the next).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let month = i64::from(month.clamp(1, 12));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    // Months counted from March so the leap day is last.
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date `days` after 1970-01-01 as (year, month, day).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u8, day as u8)
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let (year, month, day) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
        let in_day = secs.rem_euclid(SECS_PER_DAY);
        Self {
            year,
            month,
            day,
            hour: (in_day / 3600) as u8,
            minute: (in_day / 60 % 60) as u8,
            second: (in_day % 60) as u8,
        }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * SECS_PER_DAY
            + i64::from(self.hour.min(23)) * 3600
            + i64::from(self.minute.min(59)) * 60
            + i64::from(self.second.min(59))
    }

    /// Day of the week, 0 = Sunday.
    fn weekday(self) -> u8 {
        (days_from_civil(self.year, self.month, self.day) + EPOCH_WEEKDAY).rem_euclid(7) as u8
    }
}

/// One alarm register, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlarmField {
    Any,
    Exactly(i64),
    /// Out of range: the alarm can never match.
    Never,
}

impl AlarmField {
    /// The values in `0..limit` this field accepts.
    fn values(self, limit: i64) -> std::ops::Range<i64> {
        match self {
            AlarmField::Any => 0..limit,
            AlarmField::Exactly(v) => v..v + 1,
            AlarmField::Never => 0..0,
        }
    }
}

/// The MC146818 RTC with 128 bytes of CMOS memory.
#[derive(Debug, Clone)]
pub struct Rtc {
    clock: VirtualClock,
    /// Selected register (port 0x70 bits 0-6).
    index: u8,
    /// Port 0x70 bit 7 as last written.
    nmi_disabled: bool,
    /// NVRAM and the alarm registers; the slots of the other clock
    /// registers are unused.
    cmos: [u8; CMOS_SIZE],
    reg_a: u8,
    reg_b: u8,
    /// Register C's PF, AF and UF as of virtual time `flags_until_ns`.
    flags: u8,
    flags_until_ns: u64,
    /// UTC nanoseconds since the Unix epoch minus virtual nanoseconds: the
    /// divider chain's phase, and the running time when not held.
    offset_ns: i128,
    /// While SET is on or the divider is in reset, the frozen time, which
    /// the guest may edit field by field.
    held: Option<DateTime>,
    /// Added to the computed weekday, so a guest write to the weekday
    /// register sticks (the chip keeps it as an independent counter).
    weekday_offset: u8,
}

impl Rtc {
    /// An RTC for a machine with `ram_bytes` of RAM. A host clock starts
    /// from the host's current UTC time; an icount clock from
    /// [`ICOUNT_START_UNIX_SECS`], so runs are reproducible.
    pub fn new(clock: VirtualClock, ram_bytes: u64) -> Self {
        let start_ns = if clock.is_deterministic() {
            i128::from(ICOUNT_START_UNIX_SECS) * NS
        } else {
            match SystemTime::now().duration_since(UNIX_EPOCH) {
                Ok(since) => i128::try_from(since.as_nanos()).unwrap_or(0),
                Err(err) => {
                    log::warn!("rtc: host clock is before 1970 ({err}); starting at the epoch");
                    0
                }
            }
        };
        Self::with_start_ns(clock, ram_bytes, start_ns)
    }

    /// An RTC showing `unix_secs` (UTC) at the clock's current time.
    pub fn with_start_time(clock: VirtualClock, ram_bytes: u64, unix_secs: i64) -> Self {
        Self::with_start_ns(clock, ram_bytes, i128::from(unix_secs) * NS)
    }

    fn with_start_ns(clock: VirtualClock, ram_bytes: u64, start_ns: i128) -> Self {
        let now = clock.now_ns();
        Self {
            clock,
            index: 0,
            nmi_disabled: false,
            cmos: cmos_defaults(ram_bytes),
            reg_a: A_DEFAULT,
            reg_b: B_DEFAULT,
            flags: 0,
            flags_until_ns: now,
            offset_ns: start_ns - i128::from(now),
            held: None,
            weekday_offset: 0,
        }
    }

    /// Whether the guest last wrote port 0x70 with bit 7 set (NMI masked).
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    /// The IRQ 8 line level at `now_ns`: register C's IRQF, i.e. an
    /// enabled periodic, alarm or update-ended event has happened since the
    /// guest last read register C.
    pub fn irq8_pending(&mut self, now_ns: u64) -> bool {
        // With no interrupt enabled the line stays low; the flags are brought
        // up to date when the guest reads them.
        if self.reg_b & (B_PIE | B_AIE | B_UIE) == 0 {
            return false;
        }
        self.update_flags(now_ns);
        self.irqf()
    }

    /// When [`irq8_pending`](Self::irq8_pending) will next become true
    /// (`now_ns` if an event is already due), or `None` if the line is
    /// already high (it cannot rise again before the guest reads C) or no
    /// interrupt is enabled.
    pub fn next_irq8_ns(&self, now_ns: u64) -> Option<u64> {
        if self.irqf() {
            return None;
        }
        let from = self.flags_until_ns;
        let mut next: Option<i128> = None;
        let mut consider = |t: Option<i128>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if self.reg_b & B_PIE != 0 {
            consider(self.next_periodic_ns(from));
        }
        if self.held.is_none() {
            let second = self.rtc_ns(from).div_euclid(NS);
            if self.reg_b & B_UIE != 0 {
                consider(Some((second + 1) * NS - self.offset_ns));
            }
            if self.reg_b & B_AIE != 0 {
                consider(self.next_alarm_secs(clamp_secs(second)).map(|s| i128::from(s) * NS - self.offset_ns));
            }
        }
        let next = next?;
        Some(u64::try_from(next).unwrap_or(if next < 0 { 0 } else { u64::MAX }).max(now_ns))
    }

    /// UTC nanoseconds of the divider chain at virtual time `now_ns`.
    fn rtc_ns(&self, now_ns: u64) -> i128 {
        i128::from(now_ns) + self.offset_ns
    }

    fn divider_in_reset(&self) -> bool {
        self.reg_a & A_DIVIDER_RESET == A_DIVIDER_RESET
    }

    /// Period of the periodic interrupt in 32.768 kHz ticks, if enabled by
    /// a non-zero rate select and a running divider.
    fn periodic_ticks(&self) -> Option<i128> {
        let rate = self.reg_a & A_RATE_MASK;
        if rate == 0 || self.divider_in_reset() {
            return None;
        }
        // Rates 1 and 2 repeat rates 8 and 9 (256 and 128 Hz).
        let shift = if rate <= 2 { rate + 6 } else { rate - 1 };
        Some(1 << shift)
    }

    /// 32.768 kHz ticks of the divider chain at virtual time `ns`.
    fn time_base_ticks(&self, ns: u64) -> i128 {
        (self.rtc_ns(ns) * TIME_BASE_HZ).div_euclid(NS)
    }

    /// Virtual time of the first periodic edge after `from_ns`.
    fn next_periodic_ns(&self, from_ns: u64) -> Option<i128> {
        let period = self.periodic_ticks()?;
        let edge = (self.time_base_ticks(from_ns).div_euclid(period) + 1) * period;
        // First nanosecond at which the tick count reaches `edge`.
        let rtc_ns = (edge * NS + TIME_BASE_HZ - 1).div_euclid(TIME_BASE_HZ);
        Some(rtc_ns - self.offset_ns)
    }

    fn irqf(&self) -> bool {
        (self.reg_b & B_PIE != 0 && self.flags & C_PF != 0)
            || (self.reg_b & B_AIE != 0 && self.flags & C_AF != 0)
            || (self.reg_b & B_UIE != 0 && self.flags & C_UF != 0)
    }

    /// Sets register C's flags for the events between the last update and
    /// `now_ns`. Called before any change that affects event timing, so the
    /// configuration is constant over the interval.
    fn update_flags(&mut self, now_ns: u64) {
        let from = self.flags_until_ns;
        if now_ns <= from {
            return;
        }
        self.flags_until_ns = now_ns;
        if let Some(period) = self.periodic_ticks()
            && self.time_base_ticks(now_ns).div_euclid(period) > self.time_base_ticks(from).div_euclid(period)
        {
            self.flags |= C_PF;
        }
        if self.held.is_none() {
            let (before, after) = (self.rtc_ns(from).div_euclid(NS), self.rtc_ns(now_ns).div_euclid(NS));
            if after > before {
                self.flags |= C_UF;
                if self.next_alarm_secs(clamp_secs(before)).is_some_and(|s| i128::from(s) <= after) {
                    self.flags |= C_AF;
                }
            }
        }
    }

    /// Decodes a register value in the current number format.
    fn decode(&self, raw: u8) -> u8 {
        if self.reg_b & B_BINARY != 0 { raw } else { (raw >> 4) * 10 + (raw & 0x0F) }
    }

    /// Encodes `value` (0-99) in the current number format.
    fn encode(&self, value: u8) -> u8 {
        if self.reg_b & B_BINARY != 0 { value } else { ((value / 10 % 10) << 4) | (value % 10) }
    }

    /// Hour register value of `hour` (0-23) in the current formats.
    fn encode_hour(&self, hour: u8) -> u8 {
        if self.reg_b & B_24_HOUR != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        let hour12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(hour12) | pm
    }

    /// Hour (0-23) of an hour register value in the current formats.
    fn decode_hour(&self, raw: u8) -> u8 {
        if self.reg_b & B_24_HOUR != 0 {
            return self.decode(raw);
        }
        let pm = if raw & HOUR_PM != 0 { 12 } else { 0 };
        self.decode(raw & !HOUR_PM) % 12 + pm
    }

    fn alarm_field(&self, reg: u8, limit: u8) -> AlarmField {
        let raw = self.cmos[usize::from(reg)];
        if raw & ALARM_DONT_CARE == ALARM_DONT_CARE {
            return AlarmField::Any;
        }
        let value = if reg == REG_HOURS_ALARM { self.decode_hour(raw) } else { self.decode(raw) };
        if value < limit { AlarmField::Exactly(i64::from(value)) } else { AlarmField::Never }
    }

    /// The first second after `after` (Unix seconds) whose time of day
    /// matches the alarm.
    fn next_alarm_secs(&self, after: i64) -> Option<i64> {
        let hours = self.alarm_field(REG_HOURS_ALARM, 24);
        let minutes = self.alarm_field(REG_MINUTES_ALARM, 60);
        let seconds = self.alarm_field(REG_SECONDS_ALARM, 60);
        // First match later in the day than `after_in_day`.
        let first_after = |after_in_day: i64| {
            for hour in hours.values(24) {
                if hour * 3600 + 3599 <= after_in_day {
                    continue;
                }
                for minute in minutes.values(60) {
                    let base = hour * 3600 + minute * 60;
                    if base + 59 <= after_in_day {
                        continue;
                    }
                    if let Some(second) = seconds.values(60).find(|&s| base + s > after_in_day) {
                        return Some(base + second);
                    }
                }
            }
            None
        };
        let day_start = after - after.rem_euclid(SECS_PER_DAY);
        match first_after(after.rem_euclid(SECS_PER_DAY)) {
            Some(in_day) => Some(day_start + in_day),
            None => first_after(-1).map(|in_day| day_start + SECS_PER_DAY + in_day),
        }
    }

    /// The time the clock registers show at `now_ns`.
    fn current_time(&self, now_ns: u64) -> DateTime {
        match self.held {
            Some(time) => time,
            None => DateTime::from_unix(clamp_secs(self.rtc_ns(now_ns).div_euclid(NS))),
        }
    }

    fn read_register(&mut self, reg: u8, now_ns: u64) -> u8 {
        let time = self.current_time(now_ns);
        match reg {
            REG_SECONDS => self.encode(time.second),
            REG_MINUTES => self.encode(time.minute),
            REG_HOURS => self.encode_hour(time.hour),
            REG_WEEKDAY => (time.weekday() + self.weekday_offset) % 7 + 1,
            REG_DAY => self.encode(time.day),
            REG_MONTH => self.encode(time.month),
            REG_YEAR => self.encode(time.year.rem_euclid(100) as u8),
            REG_CENTURY => self.encode(time.year.div_euclid(100).clamp(0, 99) as u8),
            REG_A => {
                let in_second = self.rtc_ns(now_ns).rem_euclid(NS);
                let uip = self.held.is_none() && in_second >= NS - UIP_WINDOW_NS;
                self.reg_a | if uip { A_UIP } else { 0 }
            }
            REG_B => self.reg_b,
            REG_C => {
                self.update_flags(now_ns);
                let value = self.flags | if self.irqf() { C_IRQF } else { 0 };
                self.flags = 0;
                value
            }
            REG_D => D_VRT,
            _ => self.cmos[usize::from(reg & INDEX_MASK)],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8, now_ns: u64) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH | REG_YEAR | REG_CENTURY => {
                self.update_flags(now_ns);
                self.write_time(reg, value, now_ns);
            }
            REG_SECONDS_ALARM | REG_MINUTES_ALARM | REG_HOURS_ALARM => {
                self.update_flags(now_ns);
                self.cmos[usize::from(reg)] = value;
            }
            REG_A => {
                self.update_flags(now_ns);
                let new_a = value & A_WRITABLE;
                let reset = new_a & A_DIVIDER_RESET == A_DIVIDER_RESET;
                self.set_hold(now_ns, self.reg_b & B_SET != 0, reset);
                self.reg_a = new_a;
            }
            REG_B => {
                self.update_flags(now_ns);
                let set = value & B_SET != 0;
                // Setting SET clears UIE (datasheet).
                let value = if set { value & !B_UIE } else { value };
                self.set_hold(now_ns, set, self.divider_in_reset());
                self.reg_b = value;
            }
            REG_C | REG_D => log::debug!("rtc: write {value:#x} to read-only register {reg:#x}"),
            _ => self.cmos[usize::from(reg & INDEX_MASK)] = value,
        }
    }

    /// Freezes or releases the time when SET or the divider reset change.
    fn set_hold(&mut self, now_ns: u64, set: bool, divider_reset: bool) {
        let hold = set || divider_reset;
        match (self.held, hold) {
            (None, true) => self.held = Some(self.current_time(now_ns)),
            (Some(time), false) => {
                // The divider kept running through SET; after a divider
                // reset the first update is half a second away.
                let in_second =
                    if self.divider_in_reset() { DIVIDER_RELEASE_PHASE_NS } else { self.rtc_ns(now_ns).rem_euclid(NS) };
                self.offset_ns = i128::from(time.to_unix()) * NS + in_second - i128::from(now_ns);
                self.held = None;
            }
            _ => {}
        }
    }

    /// A guest write to a time register: edits the held time, or the
    /// running time keeping the position within the second.
    fn write_time(&mut self, reg: u8, value: u8, now_ns: u64) {
        let mut time = self.current_time(now_ns);
        let decoded = self.decode(value).min(99);
        match reg {
            REG_SECONDS => time.second = decoded.min(59),
            REG_MINUTES => time.minute = decoded.min(59),
            REG_HOURS => time.hour = self.decode_hour(value).min(23),
            REG_WEEKDAY => {
                let wanted = value.clamp(1, 7) - 1;
                self.weekday_offset = (wanted + 7 - time.weekday()) % 7;
                return;
            }
            REG_DAY => time.day = decoded.clamp(1, 31),
            REG_MONTH => time.month = decoded.clamp(1, 12),
            REG_YEAR => time.year = time.year.div_euclid(100) * 100 + i64::from(decoded),
            REG_CENTURY => time.year = i64::from(decoded) * 100 + time.year.rem_euclid(100),
            _ => return,
        }
        match &mut self.held {
            Some(held) => *held = time,
            None => {
                let old_secs = self.rtc_ns(now_ns).div_euclid(NS);
                let new_secs = i128::from(time.to_unix());
                self.offset_ns += (new_secs - old_secs) * NS;
            }
        }
    }
}

/// Unix seconds limited to years 0-9999 so date arithmetic stays sane.
fn clamp_secs(secs: i128) -> i64 {
    const MIN: i64 = -62_167_219_200; // 0000-01-01
    const MAX: i64 = 253_402_300_799; // 9999-12-31 23:59:59
    i64::try_from(secs).unwrap_or(if secs < 0 { MIN } else { MAX }).clamp(MIN, MAX)
}

/// CMOS memory as a PC BIOS would leave it for a machine with `ram_bytes`.
fn cmos_defaults(ram_bytes: u64) -> [u8; CMOS_SIZE] {
    let mut cmos = [0u8; CMOS_SIZE];
    let mut put16 = |at: u8, value: u64| {
        let [low, high] = (value.min(0xFFFF) as u16).to_le_bytes();
        cmos[usize::from(at)] = low;
        cmos[usize::from(at) + 1] = high;
    };
    put16(CMOS_BASE_MEMORY, (ram_bytes / KIB).min(BASE_MEMORY_KIB));
    let extended = ram_bytes.saturating_sub(MIB) / KIB;
    put16(CMOS_EXTENDED_MEMORY, extended);
    put16(CMOS_EXTENDED_MEMORY_POST, extended);
    put16(CMOS_MEMORY_ABOVE_16M, ram_bytes.saturating_sub(16 * MIB) / HIGH_MEMORY_UNIT);
    cmos[usize::from(CMOS_FLOPPY_TYPES)] = 0;
    cmos[usize::from(CMOS_EQUIPMENT)] = EQUIPMENT_FPU;
    let sum: u16 = cmos[0x10..usize::from(CMOS_CHECKSUM)].iter().map(|&b| u16::from(b)).sum();
    let [low, high] = sum.to_le_bytes();
    cmos[usize::from(CMOS_CHECKSUM)] = high;
    cmos[usize::from(CMOS_CHECKSUM) + 1] = low;
    cmos
}

impl PortDevice for Rtc {
    /// Byte registers. A 16-bit access at 0x70 covers index and data.
    fn read(&mut self, port: u16, size: u8) -> u32 {
        let now = self.clock.now_ns();
        match port {
            // The index register is write-only on PCs.
            RTC_INDEX if size >= 2 => 0xFF | u32::from(self.read_register(self.index, now)) << 8,
            RTC_INDEX => 0xFF,
            RTC_DATA => u32::from(self.read_register(self.index, now)),
            _ => 0xFF,
        }
    }

    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        let now = self.clock.now_ns();
        let [low, high, ..] = value.to_le_bytes();
        match port {
            RTC_INDEX => {
                self.index = low & INDEX_MASK;
                self.nmi_disabled = low & NMI_DISABLE != 0;
                if size >= 2 {
                    self.write_register(self.index, high, now);
                }
            }
            RTC_DATA => self.write_register(self.index, low, now),
            _ => log::debug!("rtc: write {low:#x} to foreign port {port:#x}"),
        }
        IoEffect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB_RAM: u64 = 1024 * 1024;
    /// 2024-03-15 13:45:30 UTC, a Friday.
    const FRIDAY_AFTERNOON: i64 = 1_710_510_330;

    fn rtc_at(unix_secs: i64) -> (Rtc, VirtualClock) {
        let clock = VirtualClock::icount(1);
        (Rtc::with_start_time(clock.clone(), 128 * MIB_RAM, unix_secs), clock)
    }

    fn read(rtc: &mut Rtc, reg: u8) -> u8 {
        assert_eq!(rtc.write(RTC_INDEX, 1, u32::from(reg)), IoEffect::None);
        rtc.read(RTC_DATA, 1) as u8
    }

    fn write(rtc: &mut Rtc, reg: u8, value: u8) {
        assert_eq!(rtc.write(RTC_INDEX, 1, u32::from(reg)), IoEffect::None);
        assert_eq!(rtc.write(RTC_DATA, 1, u32::from(value)), IoEffect::None);
    }

    fn time_regs(rtc: &mut Rtc) -> [u8; 8] {
        [REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR, REG_CENTURY]
            .map(|reg| read(rtc, reg))
    }

    fn advance_secs(clock: &VirtualClock, secs: u64) {
        clock.advance_to_ns(clock.now_ns() + secs * NS_PER_SEC);
    }

    #[test]
    fn calendar_conversions() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        for days in [-800_000, -1, 0, 59, 10_957, 19_797, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(DateTime::from_unix(FRIDAY_AFTERNOON).weekday(), 5);
        assert_eq!(DateTime::from_unix(FRIDAY_AFTERNOON).to_unix(), FRIDAY_AFTERNOON);
    }

    #[test]
    fn bcd_24_hour_is_the_default() {
        let (mut rtc, _) = rtc_at(FRIDAY_AFTERNOON);
        assert_eq!(read(&mut rtc, REG_B), 0x02);
        assert_eq!(read(&mut rtc, REG_A), 0x26);
        assert_eq!(read(&mut rtc, REG_D), 0x80);
        assert_eq!(time_regs(&mut rtc), [0x30, 0x45, 0x13, 6, 0x15, 0x03, 0x24, 0x20]);
    }

    #[test]
    fn binary_and_12_hour_formats() {
        let (mut rtc, _) = rtc_at(FRIDAY_AFTERNOON);
        write(&mut rtc, REG_B, 0x06);
        assert_eq!(time_regs(&mut rtc), [30, 45, 13, 6, 15, 3, 24, 20]);
        write(&mut rtc, REG_B, 0x04);
        assert_eq!(read(&mut rtc, REG_HOURS), 0x81, "1 PM, binary");
        write(&mut rtc, REG_B, 0x00);
        assert_eq!(read(&mut rtc, REG_HOURS), 0x81, "1 PM, BCD");
        let (mut midnight, _) = rtc_at(FRIDAY_AFTERNOON - 13 * 3600);
        write(&mut midnight, REG_B, 0x00);
        assert_eq!(read(&mut midnight, REG_HOURS), 0x12, "12 AM");
        let (mut noon, _) = rtc_at(FRIDAY_AFTERNOON - 3600);
        write(&mut noon, REG_B, 0x00);
        assert_eq!(read(&mut noon, REG_HOURS), 0x92, "12 PM");
        let (mut late, _) = rtc_at(FRIDAY_AFTERNOON + 10 * 3600);
        write(&mut late, REG_B, 0x00);
        assert_eq!(read(&mut late, REG_HOURS), 0x91, "11 PM");
    }

    #[test]
    fn time_advances_with_virtual_time() {
        let (mut rtc, clock) = rtc_at(946_684_799); // 1999-12-31 23:59:59, a Friday
        assert_eq!(time_regs(&mut rtc), [0x59, 0x59, 0x23, 6, 0x31, 0x12, 0x99, 0x19]);
        clock.advance_to_ns(NS_PER_SEC - 1);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x59);
        clock.advance_to_ns(NS_PER_SEC);
        assert_eq!(time_regs(&mut rtc), [0x00, 0x00, 0x00, 7, 0x01, 0x01, 0x00, 0x20]);
        advance_secs(&clock, 61);
        assert_eq!(read(&mut rtc, REG_MINUTES), 0x01);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x01);
    }

    #[test]
    fn icount_start_is_fixed_and_runs_are_identical() {
        let clock_a = VirtualClock::icount(10);
        let clock_b = VirtualClock::icount(10);
        let mut a = Rtc::new(clock_a.clone(), 64 * MIB_RAM);
        let mut b = Rtc::new(clock_b.clone(), 64 * MIB_RAM);
        assert_eq!(time_regs(&mut a), [0, 0, 0, 7, 0x01, 0x01, 0x00, 0x20], "2000-01-01, a Saturday");
        for n in [12_345_678, 99_999_999, 1] {
            clock_a.advance_insns(n);
            clock_b.advance_insns(n);
            assert_eq!(time_regs(&mut a), time_regs(&mut b));
            assert_eq!(read(&mut a, REG_A), read(&mut b, REG_A));
        }
    }

    #[test]
    fn host_start_is_current_utc() {
        let mut rtc = Rtc::new(VirtualClock::host(), 64 * MIB_RAM);
        assert_eq!(read(&mut rtc, REG_CENTURY), 0x20);
        assert!(read(&mut rtc, REG_YEAR) >= 0x24);
    }

    #[test]
    fn update_in_progress_in_the_last_244_us() {
        let (mut rtc, clock) = rtc_at(FRIDAY_AFTERNOON);
        assert_eq!(read(&mut rtc, REG_A) & A_UIP, 0);
        clock.advance_to_ns(NS_PER_SEC - 244_001);
        assert_eq!(read(&mut rtc, REG_A) & A_UIP, 0);
        clock.advance_to_ns(NS_PER_SEC - 244_000);
        assert_eq!(read(&mut rtc, REG_A), A_UIP | 0x26);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x30, "old time still valid");
        clock.advance_to_ns(NS_PER_SEC - 1);
        assert_eq!(read(&mut rtc, REG_A) & A_UIP, A_UIP);
        clock.advance_to_ns(NS_PER_SEC);
        assert_eq!(read(&mut rtc, REG_A) & A_UIP, 0);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x31);
        // No updates, so no UIP, while SET is on.
        write(&mut rtc, REG_B, 0x82);
        clock.advance_to_ns(2 * NS_PER_SEC - 1000);
        assert_eq!(read(&mut rtc, REG_A) & A_UIP, 0);
    }

    #[test]
    fn update_ended_interrupt_and_register_c_clearing() {
        let (mut rtc, clock) = rtc_at(FRIDAY_AFTERNOON);
        clock.advance_to_ns(NS_PER_SEC / 2);
        write(&mut rtc, REG_B, 0x12);
        assert!(!rtc.irq8_pending(clock.now_ns()));
        assert_eq!(rtc.next_irq8_ns(clock.now_ns()), Some(NS_PER_SEC));
        clock.advance_to_ns(NS_PER_SEC);
        assert!(rtc.irq8_pending(clock.now_ns()));
        assert_eq!(rtc.next_irq8_ns(clock.now_ns()), None, "line already high");
        // PF is set even though PIE is off (1024 Hz default rate).
        assert_eq!(read(&mut rtc, REG_C), C_IRQF | C_UF | C_PF);
        assert_eq!(read(&mut rtc, REG_C), 0);
        assert!(!rtc.irq8_pending(clock.now_ns()));
        // Flags without their enable bit do not raise IRQF.
        write(&mut rtc, REG_B, 0x02);
        advance_secs(&clock, 3);
        assert!(!rtc.irq8_pending(clock.now_ns()));
        assert_eq!(read(&mut rtc, REG_C), C_UF | C_PF);
        assert_eq!(rtc.next_irq8_ns(clock.now_ns()), None, "nothing enabled");
    }

    /// Counts periodic interrupts in one second by following next_irq8_ns.
    fn periodic_per_second(rate: u8) -> u32 {
        let (mut rtc, clock) = rtc_at(FRIDAY_AFTERNOON);
        write(&mut rtc, REG_A, 0x20 | rate);
        write(&mut rtc, REG_B, 0x42);
        let mut count = 0;
        while let Some(t) = rtc.next_irq8_ns(clock.now_ns()) {
            if t > NS_PER_SEC {
                break;
            }
            assert!(t > clock.now_ns(), "next edge is in the future");
            clock.advance_to_ns(t - 1);
            assert!(!rtc.irq8_pending(clock.now_ns()), "not early");
            clock.advance_to_ns(t);
            assert!(rtc.irq8_pending(clock.now_ns()));
            assert_eq!(read(&mut rtc, REG_C) & (C_IRQF | C_PF), C_IRQF | C_PF);
            count += 1;
        }
        count
    }

    #[test]
    fn periodic_interrupt_rates() {
        assert_eq!(periodic_per_second(6), 1024);
        assert_eq!(periodic_per_second(15), 2);
        assert_eq!(periodic_per_second(1), 256, "rate 1 repeats rate 8");
        assert_eq!(periodic_per_second(2), 128);
        assert_eq!(periodic_per_second(3), 8192);
        assert_eq!(periodic_per_second(0), 0);
    }

    #[test]
    fn alarm_interrupt() {
        let (mut rtc, clock) = rtc_at(FRIDAY_AFTERNOON);
        write(&mut rtc, REG_SECONDS_ALARM, 0x00);
        write(&mut rtc, REG_MINUTES_ALARM, 0x46);
        write(&mut rtc, REG_HOURS_ALARM, 0x13);
        write(&mut rtc, REG_B, 0x22);
        assert_eq!(rtc.next_irq8_ns(0), Some(30 * NS_PER_SEC));
        advance_secs(&clock, 29);
        assert!(!rtc.irq8_pending(clock.now_ns()));
        assert_eq!(read(&mut rtc, REG_C) & C_AF, 0);
        advance_secs(&clock, 1);
        assert!(rtc.irq8_pending(clock.now_ns()));
        assert_eq!(read(&mut rtc, REG_C), C_IRQF | C_AF | C_UF | C_PF);
        // Next day, same time.
        assert_eq!(rtc.next_irq8_ns(clock.now_ns()), Some((30 + 86_400) * NS_PER_SEC));
        // Don't-care minutes and hours: every minute at second 0.
        write(&mut rtc, REG_MINUTES_ALARM, 0xC0);
        write(&mut rtc, REG_HOURS_ALARM, 0xFF);
        assert_eq!(rtc.next_irq8_ns(clock.now_ns()), Some(90 * NS_PER_SEC));
        // A jump over the alarm still flags it.
        advance_secs(&clock, 600);
        assert_eq!(read(&mut rtc, REG_C) & C_AF, C_AF);
        // An impossible alarm never fires.
        write(&mut rtc, REG_HOURS_ALARM, 0x25);
        assert_eq!(rtc.next_irq8_ns(clock.now_ns()), None);
        advance_secs(&clock, 2 * 86_400);
        assert_eq!(read(&mut rtc, REG_C) & C_AF, 0);
        // 12-hour alarm: 1:46 PM.
        write(&mut rtc, REG_B, 0x20);
        write(&mut rtc, REG_HOURS_ALARM, 0x81);
        write(&mut rtc, REG_MINUTES_ALARM, 0x46);
        write(&mut rtc, REG_SECONDS_ALARM, 0xC0);
        let now = clock.now_ns();
        assert_eq!(read(&mut rtc, REG_HOURS), 0x81);
        assert_eq!(read(&mut rtc, REG_MINUTES), 0x56);
        assert_eq!(rtc.next_irq8_ns(now), Some(now + (86_400 - 600) * NS_PER_SEC), "tomorrow 13:46:00");
    }

    #[test]
    fn set_bit_freezes_time_for_setting() {
        let (mut rtc, clock) = rtc_at(FRIDAY_AFTERNOON);
        clock.advance_to_ns(NS_PER_SEC / 4);
        write(&mut rtc, REG_B, 0x12);
        write(&mut rtc, REG_B, 0x92);
        assert_eq!(read(&mut rtc, REG_B), 0x82, "SET clears UIE");
        // Linux's order: year, month, day, hours, minutes, seconds.
        for (reg, value) in [
            (REG_YEAR, 0x25),
            (REG_MONTH, 0x02),
            (REG_DAY, 0x28),
            (REG_HOURS, 0x23),
            (REG_MINUTES, 0x59),
            (REG_SECONDS, 0x58),
        ] {
            write(&mut rtc, reg, value);
        }
        advance_secs(&clock, 5);
        assert_eq!(time_regs(&mut rtc), [0x58, 0x59, 0x23, 6, 0x28, 0x02, 0x25, 0x20], "frozen while SET");
        assert_eq!(read(&mut rtc, REG_C) & C_UF, 0, "no updates while SET");
        write(&mut rtc, REG_B, 0x02);
        // The divider kept running: the next update comes on its schedule.
        clock.advance_to_ns(6 * NS_PER_SEC - 1);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x58);
        clock.advance_to_ns(7 * NS_PER_SEC);
        assert_eq!(time_regs(&mut rtc), [0x00, 0x00, 0x00, 7, 0x01, 0x03, 0x25, 0x20]);
    }

    #[test]
    fn writes_while_running_keep_the_second_phase() {
        let (mut rtc, clock) = rtc_at(FRIDAY_AFTERNOON);
        clock.advance_to_ns(NS_PER_SEC / 2);
        write(&mut rtc, REG_MINUTES, 0x10);
        write(&mut rtc, REG_CENTURY, 0x21);
        assert_eq!(time_regs(&mut rtc)[..3], [0x30, 0x10, 0x13]);
        assert_eq!(read(&mut rtc, REG_YEAR), 0x24);
        assert_eq!(read(&mut rtc, REG_CENTURY), 0x21);
        clock.advance_to_ns(NS_PER_SEC);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x31);
        // Weekday is an independent counter.
        write(&mut rtc, REG_WEEKDAY, 2);
        assert_eq!(read(&mut rtc, REG_WEEKDAY), 2);
        advance_secs(&clock, 86_400);
        assert_eq!(read(&mut rtc, REG_WEEKDAY), 3);
        // Garbage is clamped, not a panic.
        write(&mut rtc, REG_MONTH, 0xFF);
        write(&mut rtc, REG_HOURS, 0xFF);
        write(&mut rtc, REG_WEEKDAY, 0);
        assert_eq!(read(&mut rtc, REG_MONTH), 0x12);
        assert_eq!(read(&mut rtc, REG_HOURS), 0x23);
        assert_eq!(read(&mut rtc, REG_WEEKDAY), 1);
    }

    #[test]
    fn divider_reset_stops_the_clock() {
        let (mut rtc, clock) = rtc_at(FRIDAY_AFTERNOON);
        write(&mut rtc, REG_A, 0x76);
        advance_secs(&clock, 10);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x30);
        assert_eq!(read(&mut rtc, REG_C), 0, "no periodic flag while in reset");
        let released = clock.now_ns();
        write(&mut rtc, REG_A, 0x26);
        clock.advance_to_ns(released + NS_PER_SEC / 2 - 1);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x30);
        clock.advance_to_ns(released + NS_PER_SEC / 2);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x31, "first update 500 ms after release");
    }

    #[test]
    fn cmos_memory_size_bytes() {
        let clock = VirtualClock::icount(1);
        let mut big = Rtc::new(clock.clone(), 128 * MIB_RAM);
        let bytes = |rtc: &mut Rtc, reg: u8| u16::from_le_bytes([read(rtc, reg), read(rtc, reg + 1)]);
        assert_eq!(bytes(&mut big, CMOS_BASE_MEMORY), 640);
        assert_eq!(bytes(&mut big, CMOS_EXTENDED_MEMORY), 0xFFFF, "capped");
        assert_eq!(bytes(&mut big, CMOS_EXTENDED_MEMORY_POST), 0xFFFF);
        assert_eq!(bytes(&mut big, CMOS_MEMORY_ABOVE_16M), 112 * 16);
        assert_eq!(read(&mut big, CMOS_FLOPPY_TYPES), 0);
        assert_eq!(read(&mut big, CMOS_EQUIPMENT), 0x02);
        let mut small = Rtc::new(clock.clone(), 8 * MIB_RAM);
        assert_eq!(bytes(&mut small, CMOS_EXTENDED_MEMORY), 7 * 1024);
        assert_eq!(bytes(&mut small, CMOS_EXTENDED_MEMORY_POST), 7 * 1024);
        assert_eq!(bytes(&mut small, CMOS_MEMORY_ABOVE_16M), 0);
        let sum: u16 = (0x10..0x2E).map(|r| u16::from(read(&mut small, r))).sum();
        assert_eq!(u16::from_be_bytes([read(&mut small, 0x2E), read(&mut small, 0x2F)]), sum);
        let mut tiny = Rtc::new(clock, 512 * 1024);
        assert_eq!(bytes(&mut tiny, CMOS_BASE_MEMORY), 512);
        assert_eq!(bytes(&mut tiny, CMOS_EXTENDED_MEMORY), 0);
    }

    #[test]
    fn nvram_index_and_nmi_mask() {
        let (mut rtc, _) = rtc_at(FRIDAY_AFTERNOON);
        write(&mut rtc, 0x40, 0xA5);
        write(&mut rtc, 0x7F, 0x5A);
        assert_eq!(read(&mut rtc, 0x40), 0xA5);
        assert!(!rtc.nmi_disabled());
        rtc.write(RTC_INDEX, 1, 0xC0);
        assert!(rtc.nmi_disabled());
        assert_eq!(rtc.read(RTC_DATA, 1), 0xA5, "bit 7 of the index is the NMI mask");
        assert_eq!(rtc.read(RTC_INDEX, 1), 0xFF);
        assert_eq!(read(&mut rtc, 0x7F), 0x5A);
        write(&mut rtc, REG_D, 0x00);
        assert_eq!(read(&mut rtc, REG_D), 0x80);
        write(&mut rtc, REG_C, 0xFF);
        assert_eq!(read(&mut rtc, REG_C), 0);
        write(&mut rtc, REG_A, 0xFF);
        assert_eq!(read(&mut rtc, REG_A) & 0x7F, 0x7F, "UIP is read-only");
        // 16-bit write: index then data.
        rtc.write(RTC_INDEX, 2, 0x3341);
        assert_eq!(read(&mut rtc, 0x41), 0x33);
        assert_eq!(rtc.read(RTC_INDEX, 2), 0x33FF);
        assert_eq!(rtc.read(0x72, 1), 0xFF);
        assert_eq!(rtc.write(0x72, 1, 0), IoEffect::None);
    }
}
