//! QEMU's `isa-debug-exit` device: lets a guest end the emulator with a
//! chosen exit status, which test kernels use to report pass/fail.
//!
//! A write of `V` makes QEMU call `exit((V << 1) | 1)`, so the status is
//! always odd and the guest cannot fake a plain success (0).

use super::{IoEffect, PortDevice, all_ones};

/// The debug-exit device. Register it with the bus on `iobase..iobase+iosize`
/// (QEMU's usual `iobase=0xf4,iosize=0x4`).
#[derive(Debug, Default, Clone, Copy)]
pub struct DebugExit;

/// Exit status QEMU produces for a written value: `(value << 1) | 1`,
/// truncated to C `int` as `exit()` receives it.
pub fn exit_status(value: u32) -> i32 {
    // QEMU shifts a 64-bit value and passes it to exit(int); the low 32 bits
    // are what survive, which is what the wrapping u32 shift keeps.
    ((value << 1) | 1) as i32
}

impl PortDevice for DebugExit {
    fn read(&mut self, _port: u16, size: u8) -> u32 {
        all_ones(size)
    }

    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        let status = exit_status(value);
        log::info!("isa-debug-exit: guest wrote {value:#x} (size {size}) to port {port:#x}; exit status {status}");
        IoEffect::Exit(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_exits_with_shifted_odd_status() {
        let mut dev = DebugExit;
        assert_eq!(dev.write(0xF4, 1, 0), IoEffect::Exit(1));
        assert_eq!(dev.write(0xF4, 1, 1), IoEffect::Exit(3));
        assert_eq!(dev.write(0xF4, 2, 0x31), IoEffect::Exit(0x63));
        assert_eq!(dev.write(0xF6, 4, 0x7F), IoEffect::Exit(0xFF));
    }

    #[test]
    fn large_values_truncate_like_c_int() {
        assert_eq!(exit_status(0x8000_0000), 1);
        assert_eq!(exit_status(0x4000_0000), i32::MIN | 1);
        assert_eq!(exit_status(u32::MAX), -1);
    }

    #[test]
    fn reads_return_all_ones() {
        let mut dev = DebugExit;
        assert_eq!(dev.read(0xF4, 1), 0xFF);
        assert_eq!(dev.read(0xF4, 2), 0xFFFF);
        assert_eq!(dev.read(0xF4, 4), 0xFFFF_FFFF);
    }
}
