//! QEMU's firmware configuration device (fw_cfg), the I/O-port interface:
//! a 16-bit selector at 0x510 picks an item, and bytes of it are read one
//! at a time from 0x511 (QEMU's "traditional" interface; no DMA, no file
//! directory). kvm-unit-tests and other QEMU-targeted kernels read the CPU
//! count and the RAM size from it.
//!
//! Items (QEMU's numbering, little-endian values): 0x00 the signature
//! "QEMU", 0x01 the interface features (bit 0: traditional), 0x03 the RAM
//! size (u64), 0x05 the CPU count (u16), 0x0F the maximum CPU count (u16).
//! Unknown items read as zeros, as in QEMU.

use super::{IoEffect, PortDevice, all_ones};

/// The selector port (16-bit writes); the data port is the next one.
pub const FW_CFG_PORT: u16 = 0x510;
/// Ports the device answers on (selector, data).
pub const FW_CFG_PORTS: u16 = 2;

/// Item keys.
pub mod key {
    pub const SIGNATURE: u16 = 0x00;
    pub const ID: u16 = 0x01;
    pub const RAM_SIZE: u16 = 0x03;
    pub const NB_CPUS: u16 = 0x05;
    pub const MAX_CPUS: u16 = 0x0F;
}
/// FW_CFG_ID: the traditional (port) interface, without DMA.
const ID_TRADITIONAL: u32 = 1;

/// The device: the machine's values and the read position.
pub struct FwCfg {
    ram_bytes: u64,
    cpus: u16,
    selected: u16,
    offset: usize,
}

impl FwCfg {
    pub fn new(ram_bytes: u64, cpus: u16) -> Self {
        FwCfg { ram_bytes, cpus, selected: 0, offset: 0 }
    }

    fn item(&self, key: u16) -> Vec<u8> {
        match key {
            key::SIGNATURE => b"QEMU".to_vec(),
            key::ID => ID_TRADITIONAL.to_le_bytes().to_vec(),
            key::RAM_SIZE => self.ram_bytes.to_le_bytes().to_vec(),
            key::NB_CPUS | key::MAX_CPUS => self.cpus.to_le_bytes().to_vec(),
            _ => Vec::new(),
        }
    }
}

impl PortDevice for FwCfg {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        if port != FW_CFG_PORT + 1 {
            return all_ones(size);
        }
        // Wider reads of the data port return consecutive bytes.
        let item = self.item(self.selected);
        let mut v = 0u32;
        for k in 0..u32::from(size.min(4)) {
            let b = item.get(self.offset).copied().unwrap_or(0);
            self.offset += 1;
            v |= u32::from(b) << (8 * k);
        }
        v
    }

    fn write(&mut self, port: u16, _size: u8, value: u32) -> IoEffect {
        if port == FW_CFG_PORT {
            self.selected = value as u16;
            self.offset = 0;
        }
        IoEffect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_item(d: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        d.write(FW_CFG_PORT, 2, key as u32);
        (0..n).map(|_| d.read(FW_CFG_PORT + 1, 1) as u8).collect()
    }

    #[test]
    fn signature_cpus_and_ram() {
        let mut d = FwCfg::new(128 << 20, 1);
        assert_eq!(read_item(&mut d, key::SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut d, key::NB_CPUS, 2), [1, 0]);
        assert_eq!(read_item(&mut d, key::RAM_SIZE, 8), (128u64 << 20).to_le_bytes());
        assert_eq!(read_item(&mut d, 0x4242, 3), [0, 0, 0]);
        // Past the end of an item: zeros; reselecting starts over.
        assert_eq!(read_item(&mut d, key::SIGNATURE, 6), b"QEMU\0\0");
        assert_eq!(d.read(FW_CFG_PORT, 2), 0xFFFF);
    }
}
