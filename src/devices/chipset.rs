//! The PC's interrupt and timer hardware wired together: the 8259A pair, the
//! 8254 PIT (IRQ 0), the RTC (IRQ 8) and COM1 (IRQ 4), on one virtual clock.
//!
//! The devices sit on the port bus (shared with this struct through
//! `Shared`), and the dispatcher asks `Chipset` at instruction boundaries
//! whether INTR is up, acknowledges the interrupt to get its vector, and
//! learns when the next timer event is due (to sleep in HLT).

use std::io::Read;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};

use super::clock::VirtualClock;
use super::pic::{DualPic, ELCR_MASTER, ELCR_PORTS, MASTER_CMD, PIC_PORTS, SLAVE_CMD};
use super::pit::{PIT_BASE, PIT_PORTS, PORT_61, Pit};
use super::rtc::{RTC_INDEX, RTC_PORTS, Rtc};
use super::uart::{UART_PORTS, Uart16550};
use super::{
    COM1_BASE, DEBUG_EXIT_BASE, DEBUG_EXIT_PORTS, DebugExit, IoEffect, POST_PORT, PortBus, PortDevice, PostPort,
};

/// IRQ lines of the PC devices.
pub const IRQ_TIMER: u8 = 0;
pub const IRQ_COM1: u8 = 4;
pub const IRQ_RTC: u8 = 8;

/// A device shared between the port bus and the chipset logic.
pub struct Shared<T>(pub Arc<Mutex<T>>);

/// Lock a device, recovering it if a panic poisoned the lock (device state
/// is plain data, still usable).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: PortDevice> PortDevice for Shared<T> {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        lock(&self.0).read(port, size)
    }

    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        lock(&self.0).write(port, size, value)
    }

    fn flush(&mut self) {
        lock(&self.0).flush()
    }
}

/// Handles to the interrupt-producing devices.
pub struct Chipset {
    pub clock: VirtualClock,
    pub pic: Arc<Mutex<DualPic>>,
    pub pit: Arc<Mutex<Pit>>,
    pub rtc: Arc<Mutex<Rtc>>,
    pub uart: Arc<Mutex<Uart16550>>,
    /// Bytes from the host's standard input for COM1, if connected.
    input: Option<Receiver<u8>>,
    /// The local APIC (`-M pc`); without it the 8259 drives INTR directly.
    pub lapic: Option<Arc<Mutex<super::lapic::LocalApic>>>,
    /// The I/O APIC (`-M pc`), driven by the same ISA lines as the 8259s.
    pub ioapic: Option<Arc<Mutex<super::ioapic::IoApic>>>,
    /// Every CPU's local APIC (`lapic` is the first), which the I/O
    /// APIC's messages may name, and (with several CPUs) how to make CPU
    /// `i` look at its APIC.
    pub lapics: Vec<Arc<Mutex<super::lapic::LocalApic>>>,
    pub kick: Option<Box<dyn Fn(usize) + Send>>,
    /// `-icount ...,rr=`: the input is recorded, or comes from a recording.
    pub record_replay: Option<super::replay::RecordReplay>,
    /// Under icount, the points at which the engine looks at the devices,
    /// counted (deterministic: see `replay`).
    pub rr_point: u64,
    /// A byte taken from `input` that the UART could not accept yet.
    held: Option<u8>,
    /// PIT ticks owed to the guest: OUT0 edges that fell while an earlier
    /// IRQ 0 was still unserved (see [`Chipset::update`]).
    owed_ticks: u32,
}

/// Most PIT ticks the chipset owes at once: four seconds at Linux's HZ=250.
/// A guest stopped for longer (a suspended host process) loses the rest
/// instead of taking a storm of interrupts.
const MAX_OWED_TICKS: u32 = 1000;

impl Chipset {
    /// Bring the interrupt lines up to date at virtual time `now`; returns
    /// whether INTR is asserted.
    ///
    /// PIT ticks are never lost, as with KVM's PIT in its default
    /// "reinject" mode: an OUT0 edge that falls while the previous IRQ 0 is
    /// still requested or in service (the VMM thread was descheduled, or
    /// translated code ran long with IF clear) is owed, and delivered as
    /// soon as the guest has acknowledged and EOI'd the previous one. Linux
    /// counts jiffies per tick and its "pit" clocksource derives time from
    /// them; coalesced ticks would make it drift from the TSC until the
    /// clocksource watchdog declares the TSC unstable.
    pub fn update(&mut self, now: u64) -> bool {
        let edges = {
            let mut pit = lock(&self.pit);
            if pit.take_channel0_reprogrammed() {
                self.owed_ticks = 0;
            }
            pit.irq0_edges(now)
        };
        self.owed_ticks = self.owed_ticks.saturating_add(edges).min(MAX_OWED_TICKS);
        let rtc_line = lock(&self.rtc).irq8_pending(now);
        // The UART line as the guest left it (a read of RBR may have dropped
        // it) before new input raises it again: the PIC must see that edge.
        // An edge made since the last look and dropped again must still
        // reach the edge-triggered inputs (`Uart16550::take_rises`).
        let (before, rose) = {
            let mut uart = lock(&self.uart);
            (uart.irq_pending(), uart.take_rises() > 0)
        };
        if rose {
            lock(&self.pic).set_irq(IRQ_COM1, false);
        }
        lock(&self.pic).set_irq(IRQ_COM1, before);
        self.feed_input();
        let uart_line = lock(&self.uart).irq_pending();
        let mut pic = lock(&self.pic);
        let timer_bit = 1u16 << IRQ_TIMER;
        if pic.imr() & timer_bit != 0 {
            // A masked line keeps one request in IRR, as on hardware.
            self.owed_ticks = self.owed_ticks.min(1);
        }
        if self.owed_ticks > 0 && (pic.irr() | pic.isr()) & timer_bit == 0 {
            self.owed_ticks -= 1;
            pic.pulse_irq(IRQ_TIMER);
        }
        pic.set_irq(IRQ_RTC, rtc_line);
        pic.set_irq(IRQ_COM1, uart_line);
        let pic_intr = pic.intr();
        drop(pic);
        let Some(l) = &self.lapic else { return pic_intr };
        if let Some(io) = &self.ioapic {
            // The I/O APIC sees the same ISA lines (IRQ 0 on pin 2).
            let messages: Vec<_> = {
                let mut io = lock(io);
                for a in &self.lapics {
                    for v in lock(a).level_eois.drain(..) {
                        io.eoi(v);
                    }
                }
                if edges > 0 {
                    io.pulse(super::ioapic::PIN_TIMER);
                }
                io.set_line(usize::from(IRQ_RTC), rtc_line);
                if rose {
                    io.set_line(usize::from(IRQ_COM1), false);
                }
                io.set_line(usize::from(IRQ_COM1), uart_line);
                io.out.drain(..).collect()
            };
            for m in &messages {
                self.deliver(m);
            }
        }
        let mut apic = lock(l);
        // The 8259 reaches the CPU through LINT0 (ExtINT).
        apic.update(now);
        apic.pending().is_some() || (pic_intr && apic.accepts_pic())
    }

    /// An I/O APIC message to the CPUs it names (one of them for
    /// lowest-priority delivery).
    fn deliver(&self, m: &super::ioapic::Message) {
        for (j, a) in self.lapics.iter().enumerate() {
            if lock(a).receive(m) {
                if j != 0
                    && let Some(k) = &self.kick
                {
                    k(j);
                }
                if m.mode == 1 {
                    break;
                }
            }
        }
    }

    /// Take an NMI the local APIC received (an NMI IPI), if any.
    pub fn take_nmi(&mut self) -> bool {
        self.lapic.as_ref().is_some_and(|l| std::mem::take(&mut lock(l).nmi_pending))
    }

    /// INTA: the vector of the highest-priority pending interrupt (the
    /// local APIC's, else the 8259's through LINT0).
    pub fn acknowledge(&mut self) -> u8 {
        if let Some(v) = self.lapic.as_ref().and_then(|l| lock(l).acknowledge()) {
            return v;
        }
        lock(&self.pic).acknowledge()
    }

    /// When the next timer event (PIT IRQ 0 or RTC IRQ 8) is due, from `now`.
    /// Owed ticks wait for the guest's EOI, a port write that makes the
    /// dispatcher call [`update`](Self::update) again.
    pub fn next_event_ns(&self, now: u64) -> Option<u64> {
        let a = lock(&self.pit).next_irq0_ns(now);
        let b = lock(&self.rtc).next_irq8_ns(now);
        let c = self.lapic.as_ref().and_then(|l| lock(l).next_event_ns());
        [a, b, c].into_iter().flatten().min()
    }

    /// Move input bytes into the UART while it has room: from the host (a
    /// recording notes each with the current point), or from a recording
    /// being replayed, at the point it was recorded.
    fn feed_input(&mut self) {
        let point = self.rr_point;
        if let Some(rr) = self.record_replay.as_mut().filter(|r| r.replaying()) {
            let mut uart = lock(&self.uart);
            while uart.can_accept_input() {
                let Some(b) = rr.take_due(point) else { return };
                uart.push_input(b);
            }
            return;
        }
        let Some(rx) = &self.input else { return };
        let mut uart = lock(&self.uart);
        loop {
            if !uart.can_accept_input() {
                return;
            }
            let byte = match self.held.take() {
                Some(b) => b,
                None => match rx.try_recv() {
                    Ok(b) => b,
                    Err(TryRecvError::Empty) => return,
                    Err(TryRecvError::Disconnected) => {
                        // Standard input has ended: nothing more will come.
                        self.input = None;
                        return;
                    }
                },
            };
            uart.push_input(byte);
            if let Some(rr) = &mut self.record_replay {
                rr.note_input(point, byte);
            }
        }
    }

    /// Can input still come (a halted guest may wait for it)?
    pub fn has_input(&self) -> bool {
        match &self.record_replay {
            Some(rr) if rr.replaying() => rr.has_more(),
            _ => self.input.is_some(),
        }
    }

    /// Does the input come from a recording (no real time to wait for)?
    pub fn replaying(&self) -> bool {
        self.record_replay.as_ref().is_some_and(|r| r.replaying())
    }

    /// Is input waiting (so a halted guest should wake up)?
    pub fn input_pending(&mut self) -> bool {
        if let Some(rr) = self.record_replay.as_ref().filter(|r| r.replaying()) {
            return rr.peek_due(self.rr_point).is_some();
        }
        if self.held.is_some() {
            return true;
        }
        match self.input.as_ref().map(|rx| rx.try_recv()) {
            Some(Ok(b)) => {
                self.held = Some(b);
                true
            }
            Some(Err(TryRecvError::Disconnected)) => {
                self.input = None;
                false
            }
            _ => false,
        }
    }
}

/// The port bus and chipset of a PC as QEMU's `-M isapc` gives a
/// bare-metal kernel: COM1, isa-debug-exit, port 0x80, PIC pair, PIT with
/// port 0x61, RTC/CMOS.
pub fn pc_machine(
    serial_out: Box<dyn std::io::Write + Send>,
    ram_bytes: u64,
    clock: VirtualClock,
    cpus: u16,
) -> (PortBus, Chipset) {
    let pic = Arc::new(Mutex::new(DualPic::new()));
    let pit = Arc::new(Mutex::new(Pit::new(clock.clone())));
    let rtc = Arc::new(Mutex::new(Rtc::new(clock.clone(), ram_bytes)));
    let uart = Arc::new(Mutex::new(Uart16550::new(serial_out)));
    let mut bus = PortBus::new();
    let devices: [(u16, u16, Box<dyn PortDevice>); 10] = [
        (COM1_BASE, UART_PORTS, Box::new(Shared(uart.clone()))),
        (DEBUG_EXIT_BASE, DEBUG_EXIT_PORTS, Box::new(DebugExit)),
        (POST_PORT, 1, Box::new(PostPort)),
        (MASTER_CMD, PIC_PORTS, Box::new(Shared(pic.clone()))),
        (SLAVE_CMD, PIC_PORTS, Box::new(Shared(pic.clone()))),
        (ELCR_MASTER, ELCR_PORTS, Box::new(Shared(pic.clone()))),
        (PIT_BASE, PIT_PORTS, Box::new(Shared(pit.clone()))),
        (PORT_61, 1, Box::new(Shared(pit.clone()))),
        (RTC_INDEX, RTC_PORTS, Box::new(Shared(rtc.clone()))),
        (super::fw_cfg::FW_CFG_PORT, super::fw_cfg::FW_CFG_PORTS, Box::new(super::fw_cfg::FwCfg::new(ram_bytes, cpus))),
    ];
    for (first, count, dev) in devices {
        // The fixed ranges above are disjoint, so this cannot fail.
        if let Err(err) = bus.register(first, count, dev) {
            log::error!("pc_machine: {err}");
        }
    }
    let chipset = Chipset {
        clock,
        pic,
        pit,
        rtc,
        uart,
        input: None,
        lapic: None,
        ioapic: None,
        lapics: Vec::new(),
        kick: None,
        record_replay: None,
        rr_point: 0,
        held: None,
        owed_ticks: 0,
    };
    (bus, chipset)
}

impl Chipset {
    /// Feed COM1 from the host's standard input (a reader thread; raw mode
    /// when it is a terminal, restored at exit by the returned guard). As
    /// with QEMU's `-nographic`, Ctrl-C goes to the guest and Ctrl-A x ends
    /// the run (status 0), Ctrl-A h lists the keys.
    pub fn connect_stdin(&mut self) -> Option<RawModeGuard> {
        let guard = RawModeGuard::enable();
        let saved = guard.as_ref().map(|g| g.saved);
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("com1-stdin".into()).spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 64];
            let mut esc = super::console::EscapeFilter::default();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        for &b in &buf[..n] {
                            match esc.feed(b) {
                                super::console::Key::Guest(b) => {
                                    if tx.send(b).is_err() {
                                        return;
                                    }
                                }
                                super::console::Key::None => {}
                                super::console::Key::Help => {
                                    use std::io::Write;
                                    let mut out = std::io::stdout();
                                    let _ = out.write_all(super::console::HELP.as_bytes());
                                    let _ = out.flush();
                                }
                                super::console::Key::Quit => quit_from_console(saved),
                            }
                        }
                    }
                }
            }
        });
        if spawned.is_ok() {
            self.input = Some(rx);
        }
        guard
    }
}

/// Ctrl-A x: leave at once, from the reader thread (the vCPU may be in a
/// tight guest loop), with the terminal restored as QEMU leaves it.
fn quit_from_console(saved: Option<libc::termios>) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Some(t) = saved {
        // SAFETY: restoring attributes read from fd 0 by RawModeGuard::enable.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
    }
    eprintln!("\r\nbtvisor: terminated (Ctrl-A x)");
    std::process::exit(0)
}

/// Puts a terminal on standard input into raw mode; restores it on drop.
pub struct RawModeGuard {
    saved: libc::termios,
}

impl RawModeGuard {
    fn enable() -> Option<Self> {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a valid termios.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            // Keep output post-processing so the host terminal still maps \n.
            // Ctrl-C is a byte for the guest; Ctrl-A x stops btvisor.
            t.c_oflag = saved.c_oflag;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawModeGuard { saved })
        }
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes read in enable().
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_interrupt_reaches_the_cpu() {
        let clock = VirtualClock::icount(0);
        let (mut bus, mut cs) = pc_machine(Box::new(std::io::sink()), 16 << 20, clock.clone(), 1);
        // PIC: ICW1..4, vectors 0x20/0x28, unmask IRQ 0 only.
        for (p, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE)] {
            bus.write(p, 1, v);
        }
        // PIT channel 0, mode 2, count 1193 (~1 ms).
        for (p, v) in [(0x43, 0x34), (0x40, 1193 & 0xFF), (0x40, 1193 >> 8)] {
            bus.write(p, 1, v);
        }
        assert!(!cs.update(clock.now_ns()));
        let next = cs.next_event_ns(clock.now_ns()).expect("timer armed");
        assert!(next > 900_000 && next < 1_100_000, "{next}");
        clock.advance_to_ns(next);
        assert!(cs.update(clock.now_ns()));
        assert_eq!(cs.acknowledge(), 0x20);
        assert!(!cs.update(clock.now_ns()), "in service until EOI");
        // Three more periods pass before the EOI: the ticks are owed, not
        // lost, and come one per EOI.
        clock.advance_to_ns(next * 4);
        assert!(!cs.update(clock.now_ns()), "still in service");
        for _ in 0..3 {
            bus.write(0x20, 1, 0x20); // EOI
            assert!(cs.update(clock.now_ns()), "owed tick delivered");
            assert_eq!(cs.acknowledge(), 0x20);
        }
        bus.write(0x20, 1, 0x20);
        assert!(!cs.update(clock.now_ns()), "nothing more owed");
    }
}
