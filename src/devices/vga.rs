//! The VGA's legacy memory window (0xA0000-0xBFFFF) in text mode, as a
//! memory-mapped device.
//!
//! A `-kernel` boot finds the card in mode 3 (the BIOS set it up): the
//! memory map select is 0xB8000 (32 KiB), where the 80x25 screen of
//! character/attribute pairs starts; the rest of the window is not decoded
//! (reads return all ones, writes are dropped). Every access reaches the
//! device through the VMM, with or without paging. `text_screen` renders
//! what the guest wrote there.

use crate::memory::{GuestMemory, MmioDevice};

/// Guest physical base and size of the legacy VGA window.
pub const VGA_WINDOW_BASE: u32 = 0xA_0000;
pub const VGA_WINDOW_SIZE: u32 = 0x2_0000;
/// Offset of the text buffer in the window (memory map select 3: 0xB8000).
const TEXT_OFFSET: u32 = 0x1_8000;
/// Size of the text buffer (32 KiB: eight 80x25 pages).
const TEXT_SIZE: u32 = 0x8000;
/// Screen geometry of mode 3.
pub const COLUMNS: usize = 80;
pub const ROWS: usize = 25;

/// Video memory decoded in text mode.
pub struct VgaText {
    text: Vec<u8>,
}

impl Default for VgaText {
    fn default() -> Self {
        VgaText { text: vec![0; TEXT_SIZE as usize] }
    }
}

impl MmioDevice for VgaText {
    fn read(&mut self, offset: u32, size: u8) -> u32 {
        let mut v = 0u32;
        for k in (0..size as u32).rev() {
            let b = offset
                .wrapping_add(k)
                .checked_sub(TEXT_OFFSET)
                .and_then(|o| self.text.get(o as usize).copied())
                .unwrap_or(0xFF);
            v = v << 8 | b as u32;
        }
        v
    }

    fn write(&mut self, offset: u32, size: u8, value: u32) {
        for k in 0..size as u32 {
            if let Some(o) = offset.wrapping_add(k).checked_sub(TEXT_OFFSET)
                && let Some(b) = self.text.get_mut(o as usize)
            {
                *b = (value >> (8 * k)) as u8;
            }
        }
    }
}

/// The first text page as lines of characters (code page 437 bytes below
/// 0x20 and above 0x7E shown as '.', NULs as spaces, trailing blanks and
/// blank trailing lines dropped).
pub fn text_screen(mem: &GuestMemory) -> String {
    let mut buf = vec![0u8; COLUMNS * ROWS * 2];
    mem.read(VGA_WINDOW_BASE + TEXT_OFFSET, &mut buf);
    let mut lines: Vec<String> = buf
        .chunks(COLUMNS * 2)
        .map(|row| {
            let s: String = row
                .chunks(2)
                .map(|cell| match cell[0] {
                    0 => ' ',
                    c @ 0x20..=0x7E => c as char,
                    _ => '.',
                })
                .collect();
            s.trim_end().to_string()
        })
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.into_iter().map(|l| l + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_window_and_undecoded_rest() {
        let mut v = VgaText::default();
        v.write(TEXT_OFFSET, 4, 0x1F42_1F41);
        assert_eq!(v.read(TEXT_OFFSET, 4), 0x1F42_1F41);
        assert_eq!(v.read(TEXT_OFFSET + 1, 2), 0x421F);
        // Below 0xB8000: not decoded in text mode.
        v.write(0, 4, 0x1234_5678);
        assert_eq!(v.read(0, 4), 0xFFFF_FFFF);
        // A dword across the start of the text buffer.
        assert_eq!(v.read(TEXT_OFFSET - 2, 4), 0x1F41_FFFF);
    }

    #[test]
    fn screen_rendering() {
        let mut mem = GuestMemory::new(1 << 20).expect("memory");
        mem.add_mmio(VGA_WINDOW_BASE, VGA_WINDOW_SIZE, Box::new(VgaText::default()));
        mem.write(0xB8000, b"H\x07i\x07");
        mem.write(0xB8000 + 160, b"\x01\x07!\x07");
        assert_eq!(text_screen(&mem), "Hi\n.!\n");
        assert!(!mem.is_ram(0xB8000) && mem.is_ram(0x9F000) && mem.is_ram(0xC0000));
    }
}
