//! Tests for the Multiboot loader, using small images built in memory.

use super::*;

const MIB: usize = 1024 * 1024;
const RAM_SIZE: usize = 8 * MIB;
/// Fill pattern that lets tests see which RAM bytes were written.
const POISON: u8 = 0xAA;
const PF_R: u32 = 4;
const PF_W: u32 = 2;
const PF_X: u32 = 1;

fn ram() -> Vec<u8> {
    vec![POISON; RAM_SIZE]
}

fn le32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn u32_at(ram: &[u8], addr: u32) -> u32 {
    let a = addr as usize;
    u32::from_le_bytes([ram[a], ram[a + 1], ram[a + 2], ram[a + 3]])
}

fn u64_at(ram: &[u8], addr: u32) -> u64 {
    u64::from(u32_at(ram, addr)) | (u64::from(u32_at(ram, addr + 4)) << 32)
}

fn c_string_at(ram: &[u8], addr: u32) -> String {
    let tail = &ram[addr as usize..];
    let len = tail.iter().position(|&b| b == 0).unwrap();
    String::from_utf8(tail[..len].to_vec()).unwrap()
}

/// A Multiboot header with a correct checksum followed by `fields`.
fn mb_header(flags: u32, fields: &[u32]) -> Vec<u8> {
    let mut h = Vec::new();
    le32(&mut h, MULTIBOOT_HEADER_MAGIC);
    le32(&mut h, flags);
    le32(&mut h, 0u32.wrapping_sub(MULTIBOOT_HEADER_MAGIC).wrapping_sub(flags));
    for &f in fields {
        le32(&mut h, f);
    }
    h
}

/// An a.out-kludge image: `prefix` bytes of padding, the header, then `body`.
/// Loaded at `load_addr`, so the header lives at `load_addr + prefix`.
fn aout_image(prefix: usize, load_addr: u32, load_end: u32, bss_end: u32, entry: u32, body: &[u8]) -> Vec<u8> {
    let mut img = vec![0x90; prefix];
    let header_addr = load_addr + prefix as u32;
    img.extend(mb_header(
        HDR_FLAG_AOUT_KLUDGE | HDR_FLAG_MEMORY_INFO,
        &[header_addr, load_addr, load_end, bss_end, entry],
    ));
    img.extend_from_slice(body);
    img
}

struct Seg {
    vaddr: u32,
    paddr: u32,
    data: Vec<u8>,
    memsz: u32,
    flags: u32,
}

/// Offset of the first segment's data in images built by [`elf_image`].
const ELF_DATA_START: usize = 0x1000;

/// A minimal ELF32 i386 executable carrying a Multiboot header (flags 0).
fn elf_image(entry: u32, segs: &[Seg]) -> Vec<u8> {
    let phoff = 52u32;
    let mut img = Vec::new();
    img.extend_from_slice(&[0x7F, b'E', b'L', b'F', 1, 1, 1, 0]);
    img.resize(16, 0);
    img.extend_from_slice(&2u16.to_le_bytes()); // e_type = ET_EXEC
    img.extend_from_slice(&3u16.to_le_bytes()); // e_machine = EM_386
    le32(&mut img, 1); // e_version
    le32(&mut img, entry);
    le32(&mut img, phoff);
    le32(&mut img, 0); // e_shoff
    le32(&mut img, 0); // e_flags
    img.extend_from_slice(&52u16.to_le_bytes()); // e_ehsize
    img.extend_from_slice(&32u16.to_le_bytes()); // e_phentsize
    img.extend_from_slice(&(segs.len() as u16).to_le_bytes());
    img.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    assert_eq!(img.len(), 52);
    let mut offset = ELF_DATA_START as u32;
    for s in segs {
        le32(&mut img, 1); // PT_LOAD
        le32(&mut img, offset);
        le32(&mut img, s.vaddr);
        le32(&mut img, s.paddr);
        le32(&mut img, s.data.len() as u32);
        le32(&mut img, s.memsz);
        le32(&mut img, s.flags);
        le32(&mut img, 0x1000);
        offset += s.data.len() as u32;
    }
    img.extend(mb_header(HDR_FLAG_PAGE_ALIGN | HDR_FLAG_MEMORY_INFO, &[]));
    img.resize(ELF_DATA_START, 0);
    for s in segs {
        img.extend_from_slice(&s.data);
    }
    img
}

fn simple_elf() -> Vec<u8> {
    elf_image(
        0x10_0000,
        &[Seg { vaddr: 0x10_0000, paddr: 0x10_0000, data: vec![0xF4; 16], memsz: 16, flags: PF_R | PF_X }],
    )
}

/// Offset of the first program header in images from [`elf_image`].
const PH0: usize = 52;

#[test]
fn elf_segments_load_at_paddr_with_bss_zeroed() {
    let text: Vec<u8> = (1..=64).collect();
    let data = vec![0x55; 8];
    let img = elf_image(
        0x10_0000,
        &[
            Seg { vaddr: 0x10_0000, paddr: 0x10_0000, data: text.clone(), memsz: 64, flags: PF_R | PF_X },
            Seg { vaddr: 0x20_0000, paddr: 0x20_0000, data: data.clone(), memsz: 0x100, flags: PF_R | PF_W },
        ],
    );
    let mut ram = ram();
    let boot = load_multiboot(&img, &mut ram, "", "btvisor").unwrap();
    assert_eq!(boot, BootInfo { entry: 0x10_0000, info_addr: INFO_ADDR });
    assert_eq!(&ram[0x10_0000..0x10_0040], &text[..]);
    assert_eq!(ram[0x10_0040], POISON, "nothing written past memsz");
    assert_eq!(&ram[0x20_0000..0x20_0008], &data[..]);
    assert!(ram[0x20_0008..0x20_0100].iter().all(|&b| b == 0), "bss zeroed");
    assert_eq!(ram[0x20_0100], POISON);
}

#[test]
fn elf_uses_paddr_and_translates_entry_like_qemu() {
    let img = elf_image(
        0xC010_0010,
        &[Seg { vaddr: 0xC010_0000, paddr: 0x10_0000, data: vec![0xF4; 32], memsz: 32, flags: PF_R | PF_X }],
    );
    let mut ram = ram();
    let boot = load_multiboot(&img, &mut ram, "", "").unwrap();
    assert_eq!(boot.entry, 0x10_0010);
    assert_eq!(ram[0x10_0000], 0xF4);
}

#[test]
fn elf_entry_not_translated_through_non_executable_segment() {
    let img = elf_image(
        0xC010_0010,
        &[Seg { vaddr: 0xC010_0000, paddr: 0x10_0000, data: vec![0; 32], memsz: 32, flags: PF_R | PF_W }],
    );
    let boot = load_multiboot(&img, &mut ram(), "", "").unwrap();
    assert_eq!(boot.entry, 0xC010_0010);
}

#[test]
fn aout_kludge_loads_to_end_of_file_with_bss() {
    let body: Vec<u8> = (0..100).map(|i| i as u8).collect();
    let load = 0x10_0000;
    let img = aout_image(0x40, load, 0, load + 0x1000, load + 0x40 + 32, &body);
    let mut ram = ram();
    let boot = load_multiboot(&img, &mut ram, "", "").unwrap();
    assert_eq!(boot.entry, load + 0x60);
    let base = load as usize;
    assert_eq!(&ram[base..base + img.len()], &img[..]);
    assert!(ram[base + img.len()..base + 0x1000].iter().all(|&b| b == 0));
    // QEMU puts the strings right after the kernel's (page-aligned) end.
    assert_eq!(u32_at(&ram, boot.info_addr + 16), load + 0x1000);
}

#[test]
fn aout_kludge_honours_load_end_and_no_bss() {
    let load = 0x20_0000;
    let img = aout_image(0, load, load + 40, 0, load, &[0x11; 64]);
    let mut ram = ram();
    load_multiboot(&img, &mut ram, "", "").unwrap();
    let base = load as usize;
    assert_eq!(&ram[base..base + 40], &img[..40]);
    assert_eq!(ram[base + 40], POISON);
}

#[test]
fn aout_kludge_header_may_follow_unloaded_file_bytes() {
    // header_addr - load_addr < header offset: the file's first bytes are
    // not loaded (like a kernel with a prefix stripped by the loader).
    let mut img = vec![0xEE; 0x20];
    let load = 0x10_0000;
    img.extend(mb_header(HDR_FLAG_AOUT_KLUDGE, &[load + 8, load, 0, 0, load]));
    let mut ram = ram();
    load_multiboot(&img, &mut ram, "", "").unwrap();
    assert_eq!(&ram[0x10_0000..0x10_0008], &[0xEE; 8]);
    assert_eq!(u32_at(&ram, 0x10_0008), MULTIBOOT_HEADER_MAGIC);
}

#[test]
fn info_structure_fields_and_memory_map() {
    let mut ram = vec![POISON; 128 * MIB];
    let boot = load_multiboot(&simple_elf(), &mut ram, "console=ttyS0 quiet", "btvisor").unwrap();
    let info = boot.info_addr;
    assert_eq!(info, 0x9500, "QEMU's address");
    let flags = u32_at(&ram, info);
    // MEM, BOOTDEV, CMDLINE, MODS, MMAP, LOADER_NAME: what QEMU sets.
    assert_eq!(flags, 0x24F);
    assert_eq!(u32_at(&ram, info + 4), 639);
    // QEMU excludes SeaBIOS's top 128 KiB: 129920 KiB for -m 128M.
    assert_eq!(u32_at(&ram, info + 8), 129_920);
    assert_eq!(u32_at(&ram, info + 12), 0x8000_FFFF);
    assert_eq!(c_string_at(&ram, u32_at(&ram, info + 16)), "console=ttyS0 quiet");
    assert_eq!(c_string_at(&ram, u32_at(&ram, info + 64)), "btvisor");
    assert_eq!(u32_at(&ram, info + 20), 0, "no modules");

    let mmap_len = u32_at(&ram, info + 44);
    let mmap_addr = u32_at(&ram, info + 48);
    assert_eq!((mmap_addr, mmap_len), (0x9000, 144));
    let mut entries = Vec::new();
    let mut at = mmap_addr;
    while at < mmap_addr + mmap_len {
        let size = u32_at(&ram, at);
        assert_eq!(size, 20);
        entries.push((u64_at(&ram, at + 4), u64_at(&ram, at + 12), u32_at(&ram, at + 20)));
        at += size + 4;
    }
    let top = 128 * MIB as u64 - 0x2_0000;
    assert_eq!(
        entries,
        vec![
            (0, 0x9_FC00, 1),
            (0x9_FC00, 0x400, 2),
            (0xF_0000, 0x1_0000, 2),
            (0x10_0000, top - 0x10_0000, 1),
            (top, 0x2_0000, 2),
            (0xFFFC_0000, 0x4_0000, 2),
        ]
    );
    // The strings follow the kernel (at 1 MiB), as QEMU places them; the
    // (empty) module list comes first.
    let kernel_end = 0x10_1000;
    assert_eq!(u32_at(&ram, info + 24), kernel_end, "mods_addr");
    assert_eq!(u32_at(&ram, info + 16), kernel_end, "cmdline (no module list entries)");
    assert_eq!(u32_at(&ram, info + 64), kernel_end + "console=ttyS0 quiet".len() as u32 + 1);
}

#[test]
fn empty_cmdline_is_stored_as_empty_string() {
    let mut ram = ram();
    let boot = load_multiboot(&simple_elf(), &mut ram, "", "").unwrap();
    assert_eq!(c_string_at(&ram, u32_at(&ram, boot.info_addr + 16)), "");
    assert_eq!(c_string_at(&ram, u32_at(&ram, boot.info_addr + 64)), "");
}

#[test]
fn video_mode_flag_is_ignored() {
    let load = 0x10_0000;
    let mut img = mb_header(HDR_FLAG_AOUT_KLUDGE | HDR_FLAG_VIDEO_MODE, &[load, load, 0, 0, load, 0, 80, 25, 0]);
    img.extend_from_slice(&[0; 16]);
    assert!(load_multiboot(&img, &mut ram(), "", "").is_ok());
}

#[test]
fn header_found_at_aligned_offset_only() {
    // An unaligned magic is not a header.
    let mut img = vec![0; 2];
    img.extend(mb_header(0, &[]));
    assert_eq!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::NoMultibootHeader));
}

#[test]
fn error_no_header() {
    assert_eq!(load_multiboot(&[0u8; 100], &mut ram(), "", ""), Err(LoaderError::NoMultibootHeader));
    assert_eq!(load_multiboot(&[], &mut ram(), "", ""), Err(LoaderError::NoMultibootHeader));
}

#[test]
fn error_header_beyond_search_window() {
    let mut img = vec![0; 8192];
    img.extend(aout_image(0, 0x10_0000, 0, 0, 0x10_0000, &[]));
    assert_eq!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::NoMultibootHeader));
}

#[test]
fn error_bad_checksum() {
    let mut img = mb_header(0, &[]);
    img[8] ^= 1;
    assert_eq!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::BadChecksum { offset: 0 }));
}

#[test]
fn error_unknown_required_flag() {
    let img = mb_header(1 << 3, &[]);
    assert_eq!(
        load_multiboot(&img, &mut ram(), "", ""),
        Err(LoaderError::UnsupportedFeatures { offset: 0, bits: 1 << 3 })
    );
}

#[test]
fn error_truncated_aout_header() {
    let img = mb_header(HDR_FLAG_AOUT_KLUDGE, &[0x10_0000, 0x10_0000]);
    assert_eq!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::TruncatedHeader { offset: 0 }));
}

#[test]
fn error_header_addr_below_load_addr() {
    let img = mb_header(HDR_FLAG_AOUT_KLUDGE, &[0x10_0000, 0x10_0010, 0, 0, 0x10_0000]);
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::BadAddressFields(_))));
}

#[test]
fn error_load_addr_before_file_start() {
    // Header at file offset 0 claims to be 0x10 bytes after load_addr.
    let img = mb_header(HDR_FLAG_AOUT_KLUDGE, &[0x10_0010, 0x10_0000, 0, 0, 0x10_0000]);
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::BadAddressFields(_))));
}

#[test]
fn error_load_end_past_end_of_file() {
    let load = 0x10_0000;
    let img = aout_image(0, load, load + 0x1000, 0, load, &[0; 16]);
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::Truncated { .. })));
}

#[test]
fn error_load_end_below_load_addr() {
    let load = 0x10_0000;
    let img = aout_image(0, load, load - 1, 0, load, &[0; 16]);
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::BadAddressFields(_))));
}

#[test]
fn error_bss_end_below_load_end() {
    let load = 0x10_0000;
    let img = aout_image(0, load, 0, load + 4, load, &[0; 16]);
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::BadAddressFields(_))));
}

#[test]
fn error_not_elf_without_address_fields() {
    let img = mb_header(0, &[]);
    assert_eq!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::NotElf));
}

#[test]
fn error_elf_64_bit() {
    let mut img = simple_elf();
    img[4] = 2;
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::UnsupportedElf(_))));
}

#[test]
fn error_elf_bad_class() {
    let mut img = simple_elf();
    img[4] = 7;
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::CorruptElf(_))));
}

#[test]
fn error_elf_big_endian() {
    let mut img = simple_elf();
    img[5] = 2;
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::UnsupportedElf(_))));
}

#[test]
fn error_elf_wrong_machine() {
    let mut img = simple_elf();
    img[18] = 62; // EM_X86_64
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::UnsupportedElf(_))));
}

#[test]
fn error_elf_wrong_type() {
    let mut img = simple_elf();
    img[16] = 3; // ET_DYN
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::UnsupportedElf(_))));
}

#[test]
fn error_elf_program_headers_out_of_file() {
    let mut img = simple_elf();
    img[44..46].copy_from_slice(&0xFFFFu16.to_le_bytes()); // e_phnum
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::CorruptElf(_))));
    let mut img = simple_elf();
    img[28..32].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes()); // e_phoff
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::CorruptElf(_))));
}

#[test]
fn error_elf_filesz_exceeds_memsz() {
    let mut img = simple_elf();
    img[PH0 + 20..PH0 + 24].copy_from_slice(&8u32.to_le_bytes());
    assert_eq!(
        load_multiboot(&img, &mut ram(), "", ""),
        Err(LoaderError::FileszExceedsMemsz { index: 0, filesz: 16, memsz: 8 })
    );
}

#[test]
fn error_elf_segment_data_out_of_file() {
    let mut img = simple_elf();
    img[PH0 + 4..PH0 + 8].copy_from_slice(&0xFFFF_FFF8u32.to_le_bytes()); // p_offset
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::Truncated { .. })));
}

#[test]
fn error_elf_without_load_segments() {
    let mut img = simple_elf();
    img[PH0..PH0 + 4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
    assert_eq!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::NoLoadableSegments));
}

#[test]
fn error_segment_outside_ram_writes_nothing() {
    let img = elf_image(
        0x10_0000,
        &[
            Seg { vaddr: 0x10_0000, paddr: 0x10_0000, data: vec![1; 4], memsz: 4, flags: PF_X },
            Seg { vaddr: 0x7F_FFF0, paddr: 0x7F_FFF0, data: vec![2; 4], memsz: 0x20, flags: PF_W },
        ],
    );
    let mut ram = ram();
    let err = load_multiboot(&img, &mut ram, "", "").unwrap_err();
    assert_eq!(err, LoaderError::SegmentOutsideRam { start: 0x7F_FFF0, end: 0x80_0010, ram_size: RAM_SIZE as u64 });
    assert!(err.to_string().contains("0x800000"), "{err}");
    assert!(ram.iter().all(|&b| b == POISON), "validation happens before any write");
}

#[test]
fn error_aout_bss_outside_ram() {
    let load = 0x10_0000;
    let img = aout_image(0, load, 0, 0x100_0000, load, &[0; 16]);
    assert!(matches!(load_multiboot(&img, &mut ram(), "", ""), Err(LoaderError::SegmentOutsideRam { .. })));
}

/// A kernel over QEMU's fixed info area (0x9000-0x95ff) boots, as under
/// QEMU: its own bytes stay there (QEMU's option ROM loads the kernel after
/// writing the memory map and the structure; kvm-unit-tests' realmode.flat
/// has code there), EBX still names 0x9500, and its strings go after its end.
#[test]
fn kernel_over_the_info_area_boots() {
    let code = vec![0xA5; 0x1800];
    let img = elf_image(0x8000, &[Seg { vaddr: 0x8000, paddr: 0x8000, data: code, memsz: 0x2000, flags: PF_X }]);
    let mut ram = ram();
    let boot = load_multiboot(&img, &mut ram, "k a", "btvisor").expect("QEMU boots it");
    assert_eq!(boot.info_addr, 0x9500);
    assert_eq!(u32_at(&ram, 0x9500 + 48), 0xA5A5_A5A5, "the kernel's bytes win");
    assert_eq!(u32_at(&ram, 0x9000), 0xA5A5_A5A5, "also over the memory map");
    assert_eq!(c_string_at(&ram, 0xA000), "k a", "after the kernel's page-aligned end (0x8000 + 0x2000)");
}

/// Modules as QEMU places them: the list after the kernel, then the module
/// strings and the kernel's, the loader name, then each module page-aligned.
#[test]
fn modules_follow_the_kernel_as_under_qemu() {
    let mut ram = ram();
    let (one, two) = (vec![0x11u8; 5000], vec![0x22u8; 10]);
    let modules = [Module { cmdline: "one.bin arg", data: &one }, Module { cmdline: "two.bin", data: &two }];
    let boot = load_multiboot_with_modules(&simple_elf(), &mut ram, "kernel x", "btvisor", &modules).unwrap();
    let info = boot.info_addr;
    assert_eq!(u32_at(&ram, info + 20), 2, "mods_count");
    let list = u32_at(&ram, info + 24);
    assert_eq!(list % 4096, 0, "the list starts on the page after the kernel");
    let (s1, e1, c1) = (u32_at(&ram, list), u32_at(&ram, list + 4), u32_at(&ram, list + 8));
    let (s2, e2, c2) = (u32_at(&ram, list + 16), u32_at(&ram, list + 20), u32_at(&ram, list + 24));
    assert_eq!((c_string_at(&ram, c1), c_string_at(&ram, c2)), ("one.bin arg".into(), "two.bin".into()));
    assert_eq!(c1, list + 32, "strings right after the list");
    assert_eq!(c_string_at(&ram, u32_at(&ram, info + 16)), "kernel x");
    assert_eq!(u32_at(&ram, info + 16), c2 + 8, "the kernel's string after the modules'");
    assert_eq!((s1 % 4096, s2 % 4096), (0, 0), "modules page-aligned");
    assert_eq!((e1 - s1, e2 - s2), (5000, 10));
    assert_eq!(s2, s1 + 8192, "the next page boundary after the first module");
    assert!(ram[s1 as usize..e1 as usize].iter().all(|&b| b == 0x11));
    assert!(ram[s2 as usize..e2 as usize].iter().all(|&b| b == 0x22));
}

#[test]
fn low_kernel_next_to_info_area_is_fine() {
    let img =
        elf_image(0x7C00, &[Seg { vaddr: 0x7C00, paddr: 0x7C00, data: vec![0xF4; 16], memsz: 0x400, flags: PF_X }]);
    assert!(load_multiboot(&img, &mut ram(), "", "").is_ok());
}

#[test]
fn error_ram_too_small() {
    let mut small = vec![0; 2 * MIB - 4096];
    assert!(matches!(load_multiboot(&simple_elf(), &mut small, "", ""), Err(LoaderError::RamTooSmall { .. })));
}

#[test]
fn error_modules_beyond_ram() {
    let big = vec![0u8; 16 * MIB];
    let m = [Module { cmdline: "big", data: &big }];
    let mut small = vec![0; 8 * MIB];
    let err = load_multiboot_with_modules(&simple_elf(), &mut small, "", "", &m).unwrap_err();
    assert!(matches!(err, LoaderError::ModulesTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("-m"), "{err}");
}

#[test]
fn smallest_ram_reports_qemu_values() {
    let mut ram = vec![0; 2 * MIB];
    let boot = load_multiboot(&simple_elf(), &mut ram, "", "").unwrap();
    // Observed under qemu-system-i386 -m 2M.
    assert_eq!(u32_at(&ram, boot.info_addr + 8), 896);
    assert_eq!(u64_at(&ram, 0x9000 + 3 * 24 + 12), 0xE_0000);
}
