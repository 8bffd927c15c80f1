//! Linux x86 boot protocol (bzImage, 32-bit entry).
//!
//! Does what a boot loader does for `qemu-system-i386 -kernel bzImage`
//! (Documentation/arch/x86/boot.rst): load the protected-mode kernel at
//! its `code32_start` (1 MiB), build the zero page (`struct boot_params`)
//! from the image's setup header, place the command line and the initrd,
//! describe memory with an e820 map like QEMU's PC, and start the kernel at
//! its 32-bit entry point with ESI pointing at the zero page, flat
//! segments `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18) from a GDT we build,
//! interrupts and paging off. The 16-bit setup code is never run: it only
//! asks the BIOS for what we write into the zero page directly.
//!
//! Every header field is untrusted: offsets are bounds-checked and problems
//! become [`LoaderError`]s.

use super::LoaderError;

/// "HdrS", the setup header signature at offset 0x202.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// 0xAA55 at offset 0x1FE (the boot sector signature).
const BOOT_FLAG: u16 = 0xAA55;
/// Oldest protocol we boot: 2.02 has `cmd_line_ptr` and a loaded-high kernel.
pub const MIN_PROTOCOL: u16 = 0x0202;

// Offsets in the image's first sector / in the zero page (the setup header
// sits at the same offsets in both).
const OFF_SETUP_SECTS: usize = 0x1F1;
const OFF_BOOT_FLAG: usize = 0x1FE;
const OFF_JUMP: usize = 0x200;
const OFF_HEADER: usize = 0x202;
const OFF_VERSION: usize = 0x206;
const OFF_TYPE_OF_LOADER: usize = 0x210;
const OFF_LOADFLAGS: usize = 0x211;
const OFF_CODE32_START: usize = 0x214;
const OFF_RAMDISK_IMAGE: usize = 0x218;
const OFF_RAMDISK_SIZE: usize = 0x21C;
const OFF_HEAP_END_PTR: usize = 0x224;
const OFF_CMD_LINE_PTR: usize = 0x228;
const OFF_INITRD_ADDR_MAX: usize = 0x22C;
const OFF_CMDLINE_SIZE: usize = 0x238;
const OFF_INIT_SIZE: usize = 0x260;
/// boot_params fields outside the setup header.
const BP_ALT_MEM_K: usize = 0x1E0;
const BP_E820_ENTRIES: usize = 0x1E8;
const BP_E820_TABLE: usize = 0x2D0;
/// Each e820 entry: u64 address, u64 size, u32 type.
const E820_ENTRY_SIZE: usize = 20;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// loadflags bit 0: the protected-mode kernel is loaded at 1 MiB (bzImage).
const LOADED_HIGH: u8 = 1 << 0;
/// loadflags bit 7: heap_end_ptr is valid.
const CAN_USE_HEAP: u8 = 1 << 7;
/// type_of_loader: 0xFF, "undefined" loader (we have no assigned ID).
const LOADER_TYPE_UNDEFINED: u8 = 0xFF;
/// Protocols before 2.06 have no cmdline_size field: 255 characters.
const OLD_CMDLINE_MAX: u32 = 255;
/// initrd_addr_max of protocols before 2.03.
const OLD_INITRD_ADDR_MAX: u32 = 0x37FF_FFFF;

/// Guest physical layout of what we place below 1 MiB (the kernel reserves
/// the low megabyte, and copies the zero page and command line early).
pub const ZERO_PAGE_ADDR: u32 = 0x1_0000;
/// The boot GDT: null, null, __BOOT_CS (0x10), __BOOT_DS (0x18).
pub const GDT_ADDR: u32 = 0x1_1000;
const GDT_ENTRIES: [u64; 4] = [0, 0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];
/// Command line (at most `CMDLINE_AREA` bytes including the NUL).
pub const CMDLINE_ADDR: u32 = 0x2_0000;
const CMDLINE_AREA: u32 = 0x1_0000;
/// Conventional RAM ends at the EBDA, as on QEMU's PC.
const EBDA_START: u64 = 0x9_FC00;
/// Start of extended memory, where the protected-mode kernel goes.
const HIGH_MEMORY: u64 = 0x10_0000;

/// Where and how to start a loaded Linux kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxBoot {
    /// The 32-bit entry point (`code32_start`).
    pub entry: u32,
    /// Physical address of the zero page (initial ESI).
    pub zero_page: u32,
    /// The boot GDT (base, limit) to load into GDTR.
    pub gdt_base: u32,
    pub gdt_limit: u16,
    /// Where the initrd went (address, size), if one was given.
    pub initrd: Option<(u32, u32)>,
}

/// Whether `image` carries a Linux setup header (as QEMU decides: the
/// "HdrS" signature at 0x202).
pub fn is_bzimage(image: &[u8]) -> bool {
    rd32(image, OFF_HEADER) == Some(HDRS_MAGIC)
}

fn rd16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn rd32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn wr16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn wr32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn wr64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

fn truncated(what: &'static str, start: usize, end: usize, file_len: usize) -> LoaderError {
    LoaderError::Truncated { what, start: start as u64, end: end as u64, file_len }
}

/// The e820 map of a PC with `ram_size` bytes: RAM below the EBDA, the
/// EBDA and BIOS area reserved, RAM from 1 MiB to the top.
pub fn e820_map(ram_size: u64) -> [(u64, u64, u32); 3] {
    [
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIGH_MEMORY - EBDA_START, E820_RESERVED),
        (HIGH_MEMORY, ram_size - HIGH_MEMORY, E820_RAM),
    ]
}

/// Loads bzImage `image` into `ram` with command line `cmdline` and the
/// optional `initrd`, and writes the zero page.
pub fn load_bzimage(
    image: &[u8],
    ram: &mut [u8],
    cmdline: &str,
    initrd: Option<&[u8]>,
) -> Result<LinuxBoot, LoaderError> {
    let ram_size = ram.len() as u64;
    let file_len = image.len();
    let hdr = |o: usize, n: usize| -> Result<(), LoaderError> {
        if o + n > file_len { Err(truncated("the setup header", o, o + n, file_len)) } else { Ok(()) }
    };
    hdr(0, OFF_HEADER + 4)?;
    if !is_bzimage(image) || rd16(image, OFF_BOOT_FLAG) != Some(BOOT_FLAG) {
        return Err(LoaderError::NotLinux);
    }
    let version =
        rd16(image, OFF_VERSION).ok_or_else(|| truncated("the setup header", 0, OFF_VERSION + 2, file_len))?;
    if version < MIN_PROTOCOL {
        return Err(LoaderError::ProtocolTooOld { version, min: MIN_PROTOCOL });
    }
    // The header runs from 0x1F1 to 0x202 plus the jump's byte offset.
    let hdr_end = OFF_JUMP + 2 + image[OFF_JUMP + 1] as usize;
    hdr(0, hdr_end.max(OFF_CMD_LINE_PTR + 4))?;
    let loadflags = image[OFF_LOADFLAGS];
    if loadflags & LOADED_HIGH == 0 {
        return Err(LoaderError::NotLinux);
    }
    let setup_sects = match image[OFF_SETUP_SECTS] {
        0 => 4,
        n => n as usize,
    };
    let kernel_off = (setup_sects + 1) * 512;
    if kernel_off >= file_len {
        return Err(truncated("the protected-mode kernel", kernel_off, kernel_off + 1, file_len));
    }
    let kernel = &image[kernel_off..];
    let entry = rd32(image, OFF_CODE32_START).unwrap_or(HIGH_MEMORY as u32);
    let load_addr = HIGH_MEMORY;
    // The kernel decompresses in place and needs init_size bytes from its
    // load address (2.10+); older ones at least their own size.
    let init_size = if version >= 0x020A { rd32(image, OFF_INIT_SIZE).unwrap_or(0) as u64 } else { 0 };
    let kernel_end = load_addr + (kernel.len() as u64).max(init_size);
    if kernel_end > ram_size {
        return Err(LoaderError::SegmentOutsideRam { start: load_addr, end: kernel_end, ram_size });
    }
    let cmdline_max =
        if version >= 0x0206 { rd32(image, OFF_CMDLINE_SIZE).unwrap_or(OLD_CMDLINE_MAX) } else { OLD_CMDLINE_MAX };
    let cmdline_max = cmdline_max.min(CMDLINE_AREA - 1) as usize;
    if cmdline.len() > cmdline_max {
        return Err(LoaderError::CmdlineTooLong { len: cmdline.len(), max: cmdline_max });
    }
    // The initrd goes as high as initrd_addr_max and RAM allow (QEMU's
    // rule), page aligned, above the kernel's decompression area.
    let initrd_place = match initrd {
        None => None,
        Some(data) => {
            let addr_max =
                if version >= 0x0203 { rd32(image, OFF_INITRD_ADDR_MAX).unwrap_or(0) } else { OLD_INITRD_ADDR_MAX };
            let max = (addr_max as u64).min(ram_size - 1);
            let size = data.len() as u64;
            let addr = max.checked_sub(size).map(|a| a & !0xFFF);
            match addr {
                Some(a) if a >= kernel_end => Some((a, data)),
                _ => {
                    return Err(LoaderError::InitrdTooLarge { size, room: (max + 1).saturating_sub(kernel_end) });
                }
            }
        }
    };

    // Validated: write guest RAM.
    ram[load_addr as usize..load_addr as usize + kernel.len()].copy_from_slice(kernel);
    let zp = ZERO_PAGE_ADDR as usize;
    ram[zp..zp + 4096].fill(0);
    ram[zp + OFF_SETUP_SECTS..zp + hdr_end].copy_from_slice(&image[OFF_SETUP_SECTS..hdr_end]);
    let bp = &mut ram[zp..zp + 4096];
    bp[OFF_TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED;
    // No real-mode setup code runs, so no heap either.
    bp[OFF_LOADFLAGS] = loadflags & !CAN_USE_HEAP;
    wr16(bp, OFF_HEAP_END_PTR, 0);
    wr32(bp, OFF_CMD_LINE_PTR, CMDLINE_ADDR);
    if let Some((addr, data)) = initrd_place {
        wr32(bp, OFF_RAMDISK_IMAGE, addr as u32);
        wr32(bp, OFF_RAMDISK_SIZE, data.len() as u32);
    }
    wr32(bp, BP_ALT_MEM_K, ((ram_size - HIGH_MEMORY) / 1024) as u32);
    let map = e820_map(ram_size);
    bp[BP_E820_ENTRIES] = map.len() as u8;
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        let o = BP_E820_TABLE + i * E820_ENTRY_SIZE;
        wr64(bp, o, *addr);
        wr64(bp, o + 8, *size);
        wr32(bp, o + 16, *kind);
    }
    let cl = CMDLINE_ADDR as usize;
    ram[cl..cl + cmdline.len()].copy_from_slice(cmdline.as_bytes());
    ram[cl + cmdline.len()] = 0;
    let gdt = GDT_ADDR as usize;
    for (i, d) in GDT_ENTRIES.iter().enumerate() {
        wr64(ram, gdt + i * 8, *d);
    }
    if let Some((addr, data)) = initrd_place {
        ram[addr as usize..addr as usize + data.len()].copy_from_slice(data);
    }
    Ok(LinuxBoot {
        entry,
        zero_page: ZERO_PAGE_ADDR,
        gdt_base: GDT_ADDR,
        gdt_limit: (GDT_ENTRIES.len() * 8 - 1) as u16,
        initrd: initrd_place.map(|(a, d)| (a as u32, d.len() as u32)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: one setup sector after the boot sector, then
    /// `payload` as the protected-mode kernel.
    fn image(version: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 1024];
        v[OFF_SETUP_SECTS] = 1;
        wr16(&mut v, OFF_BOOT_FLAG, BOOT_FLAG);
        v[OFF_JUMP] = 0xEB;
        v[OFF_JUMP + 1] = 0x66; // header ends at 0x268
        wr32(&mut v, OFF_HEADER, HDRS_MAGIC);
        wr16(&mut v, OFF_VERSION, version);
        v[OFF_LOADFLAGS] = LOADED_HIGH | CAN_USE_HEAP;
        wr32(&mut v, OFF_CODE32_START, 0x10_0000);
        wr32(&mut v, OFF_INITRD_ADDR_MAX, 0x7FFF_FFFF);
        wr32(&mut v, OFF_CMDLINE_SIZE, 2047);
        wr32(&mut v, OFF_INIT_SIZE, 0x1000);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn loads_kernel_zero_page_cmdline_initrd() {
        let mut ram = vec![0u8; 4 << 20];
        let img = image(0x020F, &[0x90, 0xF4]);
        let b = load_bzimage(&img, &mut ram, "console=ttyS0", Some(&[1, 2, 3])).unwrap();
        assert_eq!(b.entry, 0x10_0000);
        assert_eq!(&ram[0x10_0000..0x10_0002], &[0x90, 0xF4]);
        let zp = &ram[ZERO_PAGE_ADDR as usize..][..4096];
        assert_eq!(zp[OFF_TYPE_OF_LOADER], 0xFF);
        assert_eq!(rd32(zp, OFF_CMD_LINE_PTR), Some(CMDLINE_ADDR));
        assert_eq!(&ram[CMDLINE_ADDR as usize..][..14], b"console=ttyS0\0");
        // The initrd sits page aligned at the top of RAM.
        let (a, s) = b.initrd.unwrap();
        assert_eq!((a, s), ((4 << 20) - 4096, 3));
        assert_eq!(rd32(zp, OFF_RAMDISK_IMAGE), Some(a));
        assert_eq!(&ram[a as usize..a as usize + 3], &[1, 2, 3]);
        assert_eq!(zp[BP_E820_ENTRIES], 3);
        let e = |i: usize, f: usize| rd32(zp, BP_E820_TABLE + i * E820_ENTRY_SIZE + f).unwrap();
        assert_eq!((e(0, 8), e(0, 16)), (0x9FC00, 1));
        assert_eq!((e(1, 0), e(1, 16)), (0x9FC00, 2));
        assert_eq!((e(2, 0), e(2, 8), e(2, 16)), (0x10_0000, 3 << 20, 1));
    }

    #[test]
    fn bad_images_are_refused() {
        let mut ram = vec![0u8; 4 << 20];
        let img = image(0x020F, &[0x90]);
        assert!(matches!(load_bzimage(&img[..0x300], &mut ram, "", None), Err(LoaderError::Truncated { .. })));
        let mut bad = img.clone();
        bad[OFF_HEADER] = b'X';
        assert_eq!(load_bzimage(&bad, &mut ram, "", None), Err(LoaderError::NotLinux));
        let old = image(0x0201, &[0x90]);
        assert!(matches!(load_bzimage(&old, &mut ram, "", None), Err(LoaderError::ProtocolTooOld { .. })));
        let big = vec![0u8; 5 << 20];
        assert!(matches!(load_bzimage(&img, &mut ram, "", Some(&big)), Err(LoaderError::InitrdTooLarge { .. })));
        let long = "x".repeat(3000);
        assert!(matches!(load_bzimage(&img, &mut ram, &long, None), Err(LoaderError::CmdlineTooLong { .. })));
    }
}
