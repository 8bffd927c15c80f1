//! Shared by the benches: loading the executable segments of a committed
//! guest image into a flat RAM buffer.

/// Program header type of a loadable segment.
const PT_LOAD: u32 = 1;
/// Segment flag: executable.
const PF_X: u32 = 1;

fn u16_at(b: &[u8], o: usize) -> usize {
    u16::from_le_bytes([b[o], b[o + 1]]) as usize
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Load every PT_LOAD segment of the ELF32 image at `path` into an 8 MiB RAM
/// buffer; returns it and the executable address ranges.
pub fn load_image(path: &str) -> (Vec<u8>, Vec<(u32, u32)>) {
    let img = std::fs::read(path).expect("guest image (run from the crate root)");
    let mut ram = vec![0u8; 8 << 20];
    let (phoff, phentsize, phnum) = (u32_at(&img, 0x1C) as usize, u16_at(&img, 0x2A), u16_at(&img, 0x2C));
    let mut text = Vec::new();
    for k in 0..phnum {
        let h = phoff + k * phentsize;
        if u32_at(&img, h) != PT_LOAD {
            continue;
        }
        let (off, paddr, filesz, flags) =
            (u32_at(&img, h + 4) as usize, u32_at(&img, h + 12), u32_at(&img, h + 16) as usize, u32_at(&img, h + 24));
        ram[paddr as usize..paddr as usize + filesz].copy_from_slice(&img[off..off + filesz]);
        if flags & PF_X != 0 {
            text.push((paddr, paddr + filesz as u32));
        }
    }
    (ram, text)
}
