//! Port-I/O bus and the ISA devices of the emulated PC.
//!
//! The guest's `IN`/`OUT` instructions are routed through [`PortBus`], which
//! maps each of the 65536 I/O ports to at most one [`PortDevice`]. Lookup is
//! a single table index because guests poll status ports (e.g. the UART's
//! line status register) in tight loops.

pub mod chipset;
pub mod clock;
pub mod console;
pub mod debug_exit;
pub mod fw_cfg;
pub mod ioapic;
pub mod lapic;
pub mod pic;
pub mod pit;
pub mod replay;
pub mod rtc;
pub mod uart;
pub mod vga;

use thiserror::Error;

pub use debug_exit::DebugExit;
pub use uart::Uart16550;

/// Base port of the first serial port (COM1).
pub const COM1_BASE: u16 = 0x3F8;
/// Base port of QEMU's `isa-debug-exit` device as used with `iobase=0xf4`.
pub const DEBUG_EXIT_BASE: u16 = 0xF4;
/// Number of ports of the debug-exit device (`iosize=0x4`).
pub const DEBUG_EXIT_PORTS: u16 = 4;
/// POST diagnostic port; also written by guests as a short I/O delay.
pub const POST_PORT: u16 = 0x80;

/// Number of distinct I/O ports on x86.
const PORT_COUNT: usize = 1 << 16;
/// Table value meaning "no device owns this port".
const NO_DEVICE: u16 = u16::MAX;

/// What the VMM must do after a port write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEffect {
    /// Nothing beyond the device's own state change.
    None,
    /// End the process with this exit status.
    Exit(i32),
}

/// A device that owns a range of I/O ports.
///
/// `port` is the absolute port number and `size` the access width in bytes
/// (1, 2 or 4). The bus masks read results to `size` bytes.
pub trait PortDevice: Send {
    fn read(&mut self, port: u16, size: u8) -> u32;
    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect;

    /// Pushes any buffered output to the host (called before the VMM exits,
    /// since `std::process::exit` skips destructors).
    fn flush(&mut self) {}
}

/// One port bus shared by several vCPUs: each vCPU's own bus forwards
/// every port to it (`PortBus::shared_view`).
#[derive(Clone)]
pub struct SharedBus(pub std::sync::Arc<std::sync::Mutex<PortBus>>);

impl PortDevice for SharedBus {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        chipset::lock(&self.0).read(port, size)
    }

    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        chipset::lock(&self.0).write(port, size, value)
    }

    fn flush(&mut self) {
        chipset::lock(&self.0).flush()
    }
}

/// A device whose memory-mapped registers are aligned 32-bit words (the
/// local and I/O APICs).
pub trait Registers32: Send {
    fn read_reg(&mut self, offset: u32) -> u32;
    fn write_reg(&mut self, offset: u32, value: u32);
}

/// Such a device on the memory bus, shared with the chipset. Narrower reads
/// return the addressed bytes of the word; narrower writes (undefined on
/// hardware) write the word.
pub struct RegisterWindow<T>(pub std::sync::Arc<std::sync::Mutex<T>>);

impl<T: Registers32> crate::memory::MmioDevice for RegisterWindow<T> {
    fn read(&mut self, offset: u32, size: u8) -> u32 {
        register_bytes(chipset::lock(&self.0).read_reg(offset & !3), offset, size)
    }

    fn write(&mut self, offset: u32, _size: u8, value: u32) {
        chipset::lock(&self.0).write_reg(offset & !3, value);
    }
}

/// The `size` bytes at `offset` of a 32-bit register's value `word` (a
/// narrow read of an aligned register).
pub fn register_bytes(word: u32, offset: u32, size: u8) -> u32 {
    let v = word >> ((offset & 3) * 8);
    if size >= 4 { v } else { v & ((1u32 << (size * 8)) - 1) }
}

/// Errors from registering devices on the bus.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("cannot register a device on an empty port range at {first:#x}")]
    EmptyRange { first: u16 },
    #[error("port range {first:#x}+{count:#x} extends past port 0xffff")]
    RangePastEnd { first: u16, count: u16 },
    #[error("port range {first:#x}..={last:#x} overlaps a device already registered at port {port:#x}")]
    Overlap { first: u16, last: u16, port: u16 },
    #[error("too many devices registered on the port bus")]
    TooManyDevices,
}

/// All-ones value of an access of `size` bytes.
pub fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

/// Routes port accesses to registered devices.
pub struct PortBus {
    devices: Vec<Box<dyn PortDevice>>,
    /// Index into `devices` for each port, or [`NO_DEVICE`].
    owner: Box<[u16]>,
}

impl Default for PortBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PortBus {
    /// An empty bus: every port reads as all ones and ignores writes.
    pub fn new() -> Self {
        Self { devices: Vec::new(), owner: vec![NO_DEVICE; PORT_COUNT].into_boxed_slice() }
    }

    /// Gives `dev` the ports `first..first + count`.
    pub fn register(&mut self, first: u16, count: u16, dev: Box<dyn PortDevice>) -> Result<(), DeviceError> {
        if count == 0 {
            return Err(DeviceError::EmptyRange { first });
        }
        let start = usize::from(first);
        let end = start + usize::from(count);
        if end > PORT_COUNT {
            return Err(DeviceError::RangePastEnd { first, count });
        }
        let last = (end - 1) as u16;
        if let Some(taken) = (start..end).find(|&p| self.owner[p] != NO_DEVICE) {
            let err = DeviceError::Overlap { first, last, port: taken as u16 };
            log::error!("{err}");
            return Err(err);
        }
        let index =
            u16::try_from(self.devices.len()).ok().filter(|&i| i != NO_DEVICE).ok_or(DeviceError::TooManyDevices)?;
        self.devices.push(dev);
        self.owner[start..end].fill(index);
        Ok(())
    }

    /// Reads `size` bytes from `port`; unclaimed ports read as all ones.
    #[inline]
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let mask = all_ones(size);
        match self.device_at(port) {
            Some(dev) => dev.read(port, size) & mask,
            None => {
                log::debug!("read{size} from unassigned port {port:#x}");
                mask
            }
        }
    }

    /// Writes `size` bytes of `value` to `port`; unclaimed ports ignore it.
    #[inline]
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        let value = value & all_ones(size);
        match self.device_at(port) {
            Some(dev) => {
                let effect = dev.write(port, size, value);
                if let IoEffect::Exit(_) = effect {
                    // The caller is about to end the process; don't lose
                    // a partial line of guest output.
                    self.flush();
                }
                effect
            }
            None => {
                log::debug!("write{size} {value:#x} to unassigned port {port:#x}");
                IoEffect::None
            }
        }
    }

    /// A bus whose every port is `shared`'s (a vCPU's bus on a machine
    /// with several).
    pub fn shared_view(shared: &SharedBus) -> Self {
        /// Half the port space: a range count must fit 16 bits.
        const HALF: u16 = 0x8000;
        let mut bus = Self::new();
        for first in [0, HALF] {
            if let Err(e) = bus.register(first, HALF, Box::new(shared.clone())) {
                log::error!("shared port bus: {e}");
            }
        }
        bus
    }

    /// Flushes buffered output of every device (e.g. the UART's partial line).
    pub fn flush(&mut self) {
        for dev in &mut self.devices {
            dev.flush();
        }
    }

    #[inline]
    fn device_at(&mut self, port: u16) -> Option<&mut Box<dyn PortDevice>> {
        let index = self.owner[usize::from(port)];
        self.devices.get_mut(usize::from(index))
    }

    /// The standard PC set: COM1 16550A UART writing to `serial_out`,
    /// `isa-debug-exit` at 0xF4 (4 ports) and the POST port 0x80 sink.
    pub fn pc_standard(serial_out: Box<dyn std::io::Write + Send>) -> Self {
        let mut bus = Self::new();
        let devices: [(u16, u16, Box<dyn PortDevice>); 3] = [
            (COM1_BASE, uart::UART_PORTS, Box::new(Uart16550::new(serial_out))),
            (DEBUG_EXIT_BASE, DEBUG_EXIT_PORTS, Box::new(DebugExit)),
            (POST_PORT, 1, Box::new(PostPort)),
        ];
        for (first, count, dev) in devices {
            // The fixed ranges above are disjoint, so this cannot fail.
            if let Err(err) = bus.register(first, count, dev) {
                log::error!("pc_standard: {err}");
            }
        }
        bus
    }
}

/// POST diagnostic port 0x80: writes vanish, reads float high.
#[derive(Debug, Default, Clone, Copy)]
pub struct PostPort;

impl PortDevice for PostPort {
    fn read(&mut self, _port: u16, size: u8) -> u32 {
        all_ones(size)
    }

    fn write(&mut self, _port: u16, _size: u8, _value: u32) -> IoEffect {
        IoEffect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Last (port, size, value) seen by a [`Probe`].
    type LastAccess = Arc<Mutex<Option<(u16, u8, u32)>>>;

    /// Remembers the last access; reads return a fixed value.
    struct Probe {
        value: u32,
        last: LastAccess,
    }

    impl PortDevice for Probe {
        fn read(&mut self, port: u16, size: u8) -> u32 {
            *self.last.lock().unwrap() = Some((port, size, 0));
            self.value
        }
        fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
            *self.last.lock().unwrap() = Some((port, size, value));
            IoEffect::None
        }
    }

    fn probe(value: u32) -> (Box<Probe>, LastAccess) {
        let last = Arc::new(Mutex::new(None));
        (Box::new(Probe { value, last: last.clone() }), last)
    }

    /// A cloneable sink for the UART output.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn unknown_ports_read_all_ones_of_size_and_ignore_writes() {
        let mut bus = PortBus::new();
        assert_eq!(bus.read(0x1234, 1), 0xFF);
        assert_eq!(bus.read(0x1234, 2), 0xFFFF);
        assert_eq!(bus.read(0x1234, 4), 0xFFFF_FFFF);
        assert_eq!(bus.write(0x1234, 4, 0xDEAD_BEEF), IoEffect::None);
        assert_eq!(bus.read(0xFFFF, 1), 0xFF);
    }

    #[test]
    fn accesses_reach_the_owner_with_absolute_port_and_masked_values() {
        let mut bus = PortBus::new();
        let (dev, last) = probe(0x1234_5678);
        bus.register(0x100, 8, dev).unwrap();
        assert_eq!(bus.read(0x107, 1), 0x78);
        assert_eq!(*last.lock().unwrap(), Some((0x107, 1, 0)));
        assert_eq!(bus.read(0x100, 2), 0x5678);
        assert_eq!(bus.read(0x100, 4), 0x1234_5678);
        bus.write(0x101, 1, 0xABCD);
        assert_eq!(*last.lock().unwrap(), Some((0x101, 1, 0xCD)));
        bus.write(0x102, 2, 0xABCD_EF01);
        assert_eq!(*last.lock().unwrap(), Some((0x102, 2, 0xEF01)));
        assert_eq!(bus.read(0xFF, 1), 0xFF, "port below the range is unassigned");
        assert_eq!(bus.read(0x108, 1), 0xFF, "port above the range is unassigned");
    }

    #[test]
    fn overlapping_and_invalid_ranges_are_rejected() {
        let mut bus = PortBus::new();
        bus.register(0x100, 8, probe(0).0).unwrap();
        assert_eq!(
            bus.register(0x104, 8, probe(0).0),
            Err(DeviceError::Overlap { first: 0x104, last: 0x10B, port: 0x104 })
        );
        assert_eq!(
            bus.register(0xF8, 9, probe(0).0),
            Err(DeviceError::Overlap { first: 0xF8, last: 0x100, port: 0x100 })
        );
        assert_eq!(bus.register(0x200, 0, probe(0).0), Err(DeviceError::EmptyRange { first: 0x200 }));
        assert_eq!(bus.register(0xFFFF, 2, probe(0).0), Err(DeviceError::RangePastEnd { first: 0xFFFF, count: 2 }));
        bus.register(0xFFFF, 1, probe(7).0).unwrap();
        assert_eq!(bus.read(0xFFFF, 1), 7);
        // Adjacent ranges are fine.
        bus.register(0x108, 1, probe(9).0).unwrap();
        assert_eq!(bus.read(0x108, 1), 9);
    }

    #[test]
    fn pc_standard_has_uart_debug_exit_and_post_port() {
        let out = Shared::default();
        let mut bus = PortBus::pc_standard(Box::new(out.clone()));
        // UART line status: transmitter empty.
        assert_eq!(bus.read(COM1_BASE + 5, 1) & 0x60, 0x60);
        for &b in b"hi\n" {
            assert_eq!(bus.write(COM1_BASE, 1, u32::from(b)), IoEffect::None);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        assert_eq!(bus.write(POST_PORT, 1, 0x12), IoEffect::None);
        assert_eq!(bus.read(POST_PORT, 1), 0xFF);
        // Output without a newline is flushed by an exit request.
        bus.write(COM1_BASE, 1, u32::from(b'x'));
        assert_eq!(bus.write(DEBUG_EXIT_BASE, 1, 0x10), IoEffect::Exit(0x21));
        assert_eq!(&*out.0.lock().unwrap(), b"hi\nx");
        bus.write(COM1_BASE, 1, u32::from(b'y'));
        bus.flush();
        assert_eq!(&*out.0.lock().unwrap(), b"hi\nxy");
        assert_eq!(bus.write(DEBUG_EXIT_BASE + 3, 4, 0), IoEffect::Exit(1));
        assert_eq!(bus.read(DEBUG_EXIT_BASE, 4), 0xFFFF_FFFF);
        assert_eq!(bus.read(DEBUG_EXIT_BASE + 4, 1), 0xFF, "0xF8 is not part of debug-exit");
    }
}
