//! Multiboot (version 1) kernel loader.
//!
//! Mirrors what `qemu-system-i386 -kernel IMAGE` does for Multiboot kernels:
//! find and validate the Multiboot header, place the kernel in guest physical
//! memory (either through the header's address fields, the "a.out kludge", or
//! from the ELF32 program headers), and build a Multiboot information
//! structure in low memory. The caller then starts the guest in 32-bit
//! protected mode with `EAX = MULTIBOOT_BOOTLOADER_MAGIC`, `EBX = info_addr`
//! and `EIP = entry`.
//!
//! Every field read from the image is untrusted: all offsets and addresses are
//! bounds-checked with checked arithmetic and problems are reported as
//! [`LoaderError`]s, never panics. Nothing is written to guest RAM until the
//! whole load plan has been validated.

pub mod bios;
mod elf;
pub mod linux;
pub mod mptable;

use thiserror::Error;

/// Value the boot loader leaves in EAX to tell the kernel it was loaded by a
/// Multiboot-compliant loader.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// Magic value that starts the Multiboot header inside the kernel image.
pub const MULTIBOOT_HEADER_MAGIC: u32 = 0x1BAD_B002;

/// The header must lie entirely within this many bytes from the image start.
const HEADER_SEARCH_LIMIT: usize = 8192;
/// The header is 32-bit aligned.
const HEADER_ALIGN: usize = 4;
/// magic + flags + checksum.
const HEADER_MIN_LEN: usize = 12;
/// Header up to and including `entry_addr` (needed with the a.out kludge).
const HEADER_AOUT_LEN: usize = 32;

/// Header flag bit 0: align modules on 4 KiB boundaries (they always are).
const HDR_FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag bit 1: the kernel wants memory information (always provided).
const HDR_FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag bit 2: the kernel asks for a video mode (not supported, ignored).
const HDR_FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Header flag bit 16: load address fields are valid (the "a.out kludge").
const HDR_FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Bits 0-15 are "required" features: the loader must refuse unknown ones.
const HDR_REQUIRED_MASK: u32 = 0x0000_FFFF;
/// Required feature bits this loader understands.
const HDR_SUPPORTED_REQUIRED: u32 = HDR_FLAG_PAGE_ALIGN | HDR_FLAG_MEMORY_INFO | HDR_FLAG_VIDEO_MODE;

// The low-memory layout below reproduces what qemu-system-i386 7.2 (SeaBIOS
// plus its multiboot option ROM) hands a kernel, observed with a probe
// kernel: memory map at 0x9000, information structure at 0x9500, and the
// same memory map entries, flags and mem_upper, so guests that print these
// produce identical output under btvisor and QEMU.

/// Start of the low-memory area holding the memory map, then the info
/// structure (its strings and modules follow the kernel, as with QEMU).
pub const INFO_AREA_START: u32 = 0x9000;
/// Physical address of the memory map (QEMU's).
const MMAP_ADDR: u32 = INFO_AREA_START;
/// Physical address of the Multiboot information structure (QEMU's); the
/// memory map gets the 0x500 bytes before it.
pub const INFO_ADDR: u32 = 0x9500;
/// Start of the extended BIOS data area; conventional RAM ends here.
const EBDA_START: u64 = 0x9_FC00;
/// End of conventional memory (start of the VGA hole).
const CONVENTIONAL_END: u64 = 0xA_0000;
/// Start of the system BIOS ROM area.
const BIOS_ROM_START: u64 = 0xF_0000;
/// Start of extended memory (1 MiB).
const EXTENDED_START: u64 = 0x10_0000;
/// SeaBIOS reserves the top 128 KiB of RAM for itself; QEMU's memory map
/// and mem_upper exclude it.
const BIOS_RESERVED_TOP: u64 = 128 * KIB;
/// The BIOS flash mapping below 4 GiB, reported reserved by QEMU.
const BIOS_FLASH_BASE: u64 = 0xFFFC_0000;
const BIOS_FLASH_SIZE: u64 = 256 * KIB;
/// Smallest guest RAM the loader supports (as btvisor's `-m` minimum).
pub const MIN_RAM_BYTES: u64 = 2 * 1024 * KIB;
/// Conventional memory reported in `mem_lower`, in KiB (0x9FC00 / 1024).
const MEM_LOWER_KIB: u32 = 639;
const KIB: u64 = 1024;
/// `boot_device` as QEMU reports it: BIOS drive 0x80, no partitions.
const BOOT_DEVICE: u32 = 0x8000_FFFF;

/// Size reserved for the information structure itself. The v1 structure is
/// 116 bytes with the framebuffer fields; unused fields stay zero.
const INFO_STRUCT_SIZE: u32 = 128;
/// Each memory map entry: `size` (u32, = 20, not counting itself), base (u64),
/// length (u64), type (u32).
const MMAP_ENTRY_SIZE: u32 = 24;
/// Value of each memory map entry's `size` field.
const MMAP_ENTRY_SIZE_FIELD: u32 = 20;
/// Memory map type: available RAM.
const MMAP_TYPE_AVAILABLE: u32 = 1;
/// Memory map type: reserved.
const MMAP_TYPE_RESERVED: u32 = 2;

/// Info flag bit 0: `mem_lower`/`mem_upper` are valid.
const INFO_FLAG_MEM: u32 = 1 << 0;
/// Info flag bit 1: `boot_device` is valid.
const INFO_FLAG_BOOT_DEVICE: u32 = 1 << 1;
/// Info flag bit 2: `cmdline` is valid.
const INFO_FLAG_CMDLINE: u32 = 1 << 2;
/// Info flag bit 3: `mods_count`/`mods_addr` are valid.
const INFO_FLAG_MODS: u32 = 1 << 3;
/// Info flag bit 6: `mmap_length`/`mmap_addr` are valid.
const INFO_FLAG_MMAP: u32 = 1 << 6;
/// Info flag bit 9: `boot_loader_name` is valid.
const INFO_FLAG_LOADER_NAME: u32 = 1 << 9;
/// The flags QEMU sets (0x24F).
const INFO_FLAGS: u32 =
    INFO_FLAG_MEM | INFO_FLAG_BOOT_DEVICE | INFO_FLAG_CMDLINE | INFO_FLAG_MODS | INFO_FLAG_MMAP | INFO_FLAG_LOADER_NAME;

/// Byte offsets of the information structure fields we fill in.
const MBI_FLAGS: usize = 0;
const MBI_MEM_LOWER: usize = 4;
const MBI_MEM_UPPER: usize = 8;
const MBI_BOOT_DEVICE: usize = 12;
const MBI_CMDLINE: usize = 16;
const MBI_MODS_COUNT: usize = 20;
const MBI_MODS_ADDR: usize = 24;
const MBI_MMAP_LENGTH: usize = 44;
const MBI_MMAP_ADDR: usize = 48;
const MBI_BOOT_LOADER_NAME: usize = 64;

/// Where and how to start the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// Physical address of the kernel entry point (initial EIP).
    pub entry: u32,
    /// Physical address of the Multiboot information structure (initial EBX).
    pub info_addr: u32,
}

/// Everything that can go wrong while loading a Multiboot kernel.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LoaderError {
    #[error("not a Multiboot kernel: no Multiboot header (magic 0x1BADB002) in the first 8192 bytes")]
    NoMultibootHeader,
    #[error("Multiboot header at offset {offset:#x} has a bad checksum (magic + flags + checksum != 0)")]
    BadChecksum { offset: usize },
    #[error("Multiboot header at offset {offset:#x} requires unsupported features (flag bits {bits:#x})")]
    UnsupportedFeatures { offset: usize, bits: u32 },
    #[error("Multiboot header at offset {offset:#x} is truncated: the file ends before its address fields")]
    TruncatedHeader { offset: usize },
    #[error("Multiboot header address fields are inconsistent: {0}")]
    BadAddressFields(&'static str),
    #[error("truncated kernel image: {what} needs file bytes {start:#x}..{end:#x} but the file is {file_len:#x} bytes")]
    Truncated { what: &'static str, start: u64, end: u64, file_len: usize },
    #[error("image is not ELF and its Multiboot header has no address fields (flag 16)")]
    NotElf,
    #[error("corrupt ELF: {0}")]
    CorruptElf(&'static str),
    #[error("unsupported ELF: {0}")]
    UnsupportedElf(&'static str),
    #[error("ELF program header {index} has filesz {filesz:#x} larger than memsz {memsz:#x}")]
    FileszExceedsMemsz { index: usize, filesz: u32, memsz: u32 },
    #[error("ELF image has no loadable (PT_LOAD) segments")]
    NoLoadableSegments,
    #[error("kernel segment {start:#x}..{end:#x} does not fit in guest RAM of {ram_size:#x} bytes")]
    SegmentOutsideRam { start: u64, end: u64, ram_size: u64 },
    #[error("guest RAM of {ram_size:#x} bytes is too small: at least {min:#x} bytes are needed")]
    RamTooSmall { ram_size: u64, min: u64 },
    #[error("not a Linux bzImage: no boot-sector signature, no \"HdrS\" setup header or not loaded high")]
    NotLinux,
    #[error("Linux boot protocol {}.{:02} is too old: at least {}.{:02} is needed", version >> 8, version & 0xFF, min >> 8, min & 0xFF)]
    ProtocolTooOld { version: u16, min: u16 },
    #[error(
        "initrd of {size} bytes does not fit in guest RAM ({room} bytes free above the kernel): give more memory with -m"
    )]
    InitrdTooLarge { size: u64, room: u64 },
    #[error("kernel command line of {len} bytes is longer than the kernel accepts ({max} bytes)")]
    CmdlineTooLong { len: usize, max: usize },
    #[error(
        "the Multiboot modules and strings end at {end:#x}, beyond guest RAM of {ram_size:#x} bytes: give more memory with -m"
    )]
    ModulesTooLarge { end: u64, ram_size: u64 },
}

/// One contiguous piece of the kernel to place in guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    /// Guest physical address of the first byte.
    paddr: u64,
    /// Range of the image file copied to `paddr`.
    file_offset: usize,
    file_len: usize,
    /// Total size in memory; bytes past `file_len` are zeroed (BSS).
    mem_len: u64,
}

impl Segment {
    fn end(&self) -> u64 {
        // Callers construct segments from u32 addresses and sizes, so this
        // cannot overflow a u64.
        self.paddr.saturating_add(self.mem_len)
    }
}

/// The validated result of parsing an image: what to copy where.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LoadPlan {
    segments: Vec<Segment>,
    entry: u32,
}

/// Loads the Multiboot kernel `image` into `ram` (guest physical memory from
/// address 0) and writes the Multiboot information structure, with `cmdline`
/// and `loader_name` as its strings and no modules.
pub fn load_multiboot(image: &[u8], ram: &mut [u8], cmdline: &str, loader_name: &str) -> Result<BootInfo, LoaderError> {
    load_multiboot_with_modules(image, ram, cmdline, loader_name, &[])
}

/// A Multiboot module: its string (as QEMU gives it, the `-initrd` list
/// element: the file name and any arguments) and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Module<'a> {
    pub cmdline: &'a str,
    pub data: &'a [u8],
}

/// `load_multiboot` with modules, laid out as QEMU 7.2 lays them out: after
/// the kernel's page-aligned extent come the module list (16 bytes each),
/// the module strings and the kernel command line, the boot loader name,
/// then each module on its own page boundary. The memory map (0x9000) and
/// the information structure (0x9500) go at QEMU's fixed addresses, under
/// the kernel: a kernel loaded there keeps its bytes, as under QEMU.
pub fn load_multiboot_with_modules(
    image: &[u8],
    ram: &mut [u8],
    cmdline: &str,
    loader_name: &str,
    modules: &[Module],
) -> Result<BootInfo, LoaderError> {
    let ram_size = ram.len() as u64;
    if ram_size < MIN_RAM_BYTES {
        return Err(LoaderError::RamTooSmall { ram_size, min: MIN_RAM_BYTES });
    }

    let header = find_header(image)?;
    let plan = if header.flags & HDR_FLAG_AOUT_KLUDGE != 0 {
        plan_aout_kludge(image, &header)?
    } else {
        elf::plan_elf(image)?
    };
    for seg in &plan.segments {
        if seg.end() > ram_size {
            return Err(LoaderError::SegmentOutsideRam { start: seg.paddr, end: seg.end(), ram_size });
        }
    }
    let layout = InfoLayout::new(&plan, cmdline, loader_name, modules, ram_size)?;

    // Everything is validated: from here on only in-bounds copies happen.
    // The information area first: a kernel loaded over 0x9000-0x95FF keeps
    // its own bytes there, as under QEMU, whose option ROM loads the kernel
    // after it has written the memory map and the structure (kvm-unit-tests'
    // realmode.flat has code there; EBX still points at 0x9500).
    layout.write(ram, cmdline, loader_name, modules)?;
    for seg in &plan.segments {
        copy_segment(image, ram, seg)?;
    }
    log::debug!(
        "multiboot: loaded {} segment(s), entry {:#x}, {} module(s), info at {:#x}",
        plan.segments.len(),
        plan.entry,
        modules.len(),
        INFO_ADDR
    );
    Ok(BootInfo { entry: plan.entry, info_addr: INFO_ADDR })
}

/// The fields of a validated Multiboot header.
#[derive(Debug, Clone, Copy)]
struct Header {
    /// Offset of the header's magic in the image file.
    offset: usize,
    flags: u32,
}

/// Reads a little-endian u32 at `offset`, or `None` if it is out of bounds.
fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let end = offset.checked_add(4)?;
    let b = bytes.get(offset..end)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a little-endian u16 at `offset`, or `None` if it is out of bounds.
fn read_u16(bytes: &[u8], offset: usize) -> Option<u16> {
    let end = offset.checked_add(2)?;
    let b = bytes.get(offset..end)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

/// Finds the first header whose checksum is valid, like QEMU does (a magic
/// with a bad checksum is skipped, but reported if nothing better is found).
fn find_header(image: &[u8]) -> Result<Header, LoaderError> {
    let limit = image.len().min(HEADER_SEARCH_LIMIT);
    let mut bad_checksum_at = None;
    let mut offset = 0;
    while offset + HEADER_MIN_LEN <= limit {
        if read_u32(image, offset) == Some(MULTIBOOT_HEADER_MAGIC) {
            let flags = read_u32(image, offset + 4).unwrap_or(0);
            let checksum = read_u32(image, offset + 8).unwrap_or(0);
            if MULTIBOOT_HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) == 0 {
                return validate_flags(Header { offset, flags });
            }
            bad_checksum_at.get_or_insert(offset);
        }
        offset += HEADER_ALIGN;
    }
    Err(match bad_checksum_at {
        Some(offset) => LoaderError::BadChecksum { offset },
        None => LoaderError::NoMultibootHeader,
    })
}

fn validate_flags(header: Header) -> Result<Header, LoaderError> {
    let unknown = header.flags & HDR_REQUIRED_MASK & !HDR_SUPPORTED_REQUIRED;
    if unknown != 0 {
        return Err(LoaderError::UnsupportedFeatures { offset: header.offset, bits: unknown });
    }
    if header.flags & HDR_FLAG_VIDEO_MODE != 0 {
        // QEMU also boots such kernels in text mode after complaining.
        log::warn!("multiboot: kernel requests a video mode; ignored (text mode only)");
    }
    Ok(header)
}

/// Builds the load plan from the header's address fields (flag 16).
fn plan_aout_kludge(image: &[u8], header: &Header) -> Result<LoadPlan, LoaderError> {
    let field = |index: usize| {
        read_u32(image, header.offset + HEADER_MIN_LEN + 4 * index)
            .ok_or(LoaderError::TruncatedHeader { offset: header.offset })
    };
    if header.offset + HEADER_AOUT_LEN > image.len() {
        return Err(LoaderError::TruncatedHeader { offset: header.offset });
    }
    let header_addr = field(0)?;
    let load_addr = field(1)?;
    let load_end_addr = field(2)?;
    let bss_end_addr = field(3)?;
    let entry_addr = field(4)?;

    // The header sits at file offset `offset`, which corresponds to physical
    // address `header_addr`; `load_addr` therefore maps to this file offset.
    let header_delta =
        header_addr.checked_sub(load_addr).ok_or(LoaderError::BadAddressFields("header_addr is below load_addr"))?;
    let text_offset = usize::try_from(header_delta)
        .ok()
        .and_then(|d| header.offset.checked_sub(d))
        .ok_or(LoaderError::BadAddressFields("header_addr - load_addr exceeds the header's file offset"))?;

    let file_available = image.len() - text_offset;
    let load_len: u64 = if load_end_addr == 0 {
        file_available as u64
    } else {
        u64::from(
            load_end_addr
                .checked_sub(load_addr)
                .ok_or(LoaderError::BadAddressFields("load_end_addr is below load_addr"))?,
        )
    };
    if load_len > file_available as u64 {
        return Err(LoaderError::Truncated {
            what: "load_addr..load_end_addr",
            start: text_offset as u64,
            end: text_offset as u64 + load_len,
            file_len: image.len(),
        });
    }
    let load_end = u64::from(load_addr) + load_len;
    if load_end > 1u64 << 32 {
        return Err(LoaderError::BadAddressFields("kernel does not fit in the 32-bit address space"));
    }
    let mem_len = if bss_end_addr == 0 {
        load_len
    } else {
        let bss_end = u64::from(bss_end_addr);
        if bss_end < load_end {
            return Err(LoaderError::BadAddressFields("bss_end_addr is below the end of the loaded data"));
        }
        bss_end - u64::from(load_addr)
    };

    // load_len <= file_available, which is a usize.
    let file_len = usize::try_from(load_len).unwrap_or(file_available);
    Ok(LoadPlan {
        segments: vec![Segment { paddr: u64::from(load_addr), file_offset: text_offset, file_len, mem_len }],
        entry: entry_addr,
    })
}

/// Copies one validated segment and zeroes its BSS tail.
fn copy_segment(image: &[u8], ram: &mut [u8], seg: &Segment) -> Result<(), LoaderError> {
    let ram_size = ram.len() as u64;
    let out_of_ram = || LoaderError::SegmentOutsideRam { start: seg.paddr, end: seg.end(), ram_size };
    let start = usize::try_from(seg.paddr).map_err(|_| out_of_ram())?;
    let mem_len = usize::try_from(seg.mem_len).map_err(|_| out_of_ram())?;
    let end = start.checked_add(mem_len).ok_or_else(out_of_ram)?;
    let src_end = seg.file_offset.checked_add(seg.file_len);
    let src = src_end.and_then(|e| image.get(seg.file_offset..e)).ok_or(LoaderError::Truncated {
        what: "segment data",
        start: seg.file_offset as u64,
        end: seg.file_offset as u64 + seg.file_len as u64,
        file_len: image.len(),
    })?;
    let dst = ram.get_mut(start..end).ok_or_else(out_of_ram)?;
    let (data, bss) = dst.split_at_mut(src.len().min(dst.len()));
    data.copy_from_slice(&src[..data.len()]);
    bss.fill(0);
    Ok(())
}

/// Placement of the strings the information structure references.
struct InfoLayout {
    /// The module list, then the strings (module strings, the kernel
    /// command line), then the boot loader name.
    mods_addr: u32,
    cmdline_addr: u32,
    loader_name_addr: u32,
    /// Where each module goes (page-aligned).
    module_addrs: Vec<u32>,
}

/// Entries in the memory map (see [`memory_map`]).
const MMAP_ENTRIES: usize = 6;

/// QEMU's memory map for `ram_size` bytes of RAM (at least
/// [`MIN_RAM_BYTES`]): (base, length, type).
fn memory_map(ram_size: u64) -> [(u64, u64, u32); MMAP_ENTRIES] {
    let top_reserved = ram_size - BIOS_RESERVED_TOP;
    [
        (0, EBDA_START, MMAP_TYPE_AVAILABLE),
        (EBDA_START, CONVENTIONAL_END - EBDA_START, MMAP_TYPE_RESERVED),
        (BIOS_ROM_START, EXTENDED_START - BIOS_ROM_START, MMAP_TYPE_RESERVED),
        (EXTENDED_START, top_reserved - EXTENDED_START, MMAP_TYPE_AVAILABLE),
        (top_reserved, BIOS_RESERVED_TOP, MMAP_TYPE_RESERVED),
        (BIOS_FLASH_BASE, BIOS_FLASH_SIZE, MMAP_TYPE_RESERVED),
    ]
}

/// One entry of the module list: mod_start, mod_end, string, reserved.
const MODULE_ENTRY_SIZE: u64 = 16;
const PAGE: u64 = 4096;

fn page_align(v: u64) -> u64 {
    v.next_multiple_of(PAGE)
}

impl InfoLayout {
    fn new(
        plan: &LoadPlan,
        cmdline: &str,
        loader_name: &str,
        modules: &[Module],
        ram_size: u64,
    ) -> Result<Self, LoaderError> {
        let loaded = plan.segments.iter().filter(|s| s.mem_len > 0);
        let low = loaded.clone().map(|s| s.paddr).min().unwrap_or(EXTENDED_START);
        let high = loaded.map(|s| s.end()).max().unwrap_or(low);
        let mods_addr = low + page_align(high - low);
        let cmdline_addr_base = mods_addr + MODULE_ENTRY_SIZE * modules.len() as u64;
        let module_strings: u64 = modules.iter().map(|m| m.cmdline.len() as u64 + 1).sum();
        let cmdline_addr = cmdline_addr_base + module_strings;
        let loader_name_addr = cmdline_addr + cmdline.len() as u64 + 1;
        let mut end = page_align(loader_name_addr + loader_name.len() as u64 + 1);
        let mut module_addrs = Vec::with_capacity(modules.len());
        for m in modules {
            module_addrs.push(end);
            end = page_align(end + m.data.len() as u64);
        }
        if end > ram_size {
            return Err(LoaderError::ModulesTooLarge { end, ram_size });
        }
        // Everything is below the RAM size, which fits in 32 bits.
        let a = |v: u64| v as u32;
        Ok(Self {
            mods_addr: a(mods_addr),
            cmdline_addr: a(cmdline_addr),
            loader_name_addr: a(loader_name_addr),
            module_addrs: module_addrs.into_iter().map(a).collect(),
        })
    }

    /// Writes the module list, strings, modules, memory map and structure.
    fn write(self, ram: &mut [u8], cmdline: &str, loader_name: &str, modules: &[Module]) -> Result<(), LoaderError> {
        let ram_size = ram.len() as u64;
        let at = |a: u32| a as usize;
        let mut strings = at(self.mods_addr) + MODULE_ENTRY_SIZE as usize * modules.len();
        for (k, (m, &addr)) in modules.iter().zip(&self.module_addrs).enumerate() {
            put(ram, at(addr), m.data);
            let entry = at(self.mods_addr) + MODULE_ENTRY_SIZE as usize * k;
            put(ram, entry, &addr.to_le_bytes());
            put(ram, entry + 4, &(addr + m.data.len() as u32).to_le_bytes());
            put(ram, entry + 8, &(strings as u32).to_le_bytes());
            put(ram, entry + 12, &0u32.to_le_bytes());
            put(ram, strings, m.cmdline.as_bytes());
            put(ram, strings + m.cmdline.len(), &[0]);
            strings += m.cmdline.len() + 1;
        }
        put(ram, at(self.cmdline_addr), cmdline.as_bytes());
        put(ram, at(self.cmdline_addr) + cmdline.len(), &[0]);
        put(ram, at(self.loader_name_addr), loader_name.as_bytes());
        put(ram, at(self.loader_name_addr) + loader_name.len(), &[0]);

        let area = ram
            .get_mut(INFO_AREA_START as usize..(INFO_ADDR + INFO_STRUCT_SIZE) as usize)
            .ok_or(LoaderError::RamTooSmall { ram_size, min: MIN_RAM_BYTES })?;
        area.fill(0);
        let rel = |addr: u32| (addr - INFO_AREA_START) as usize;
        let mut at = rel(MMAP_ADDR);
        for (base, len, kind) in memory_map(ram_size) {
            put(area, at, &MMAP_ENTRY_SIZE_FIELD.to_le_bytes());
            put(area, at + 4, &base.to_le_bytes());
            put(area, at + 12, &len.to_le_bytes());
            put(area, at + 20, &kind.to_le_bytes());
            at += MMAP_ENTRY_SIZE as usize;
        }
        let mmap_len = MMAP_ENTRIES as u32 * MMAP_ENTRY_SIZE;

        // mem_upper counts KiB of RAM from 1 MiB up to the BIOS-reserved top;
        // clamp for sizes beyond what the 32-bit field can describe.
        let upper_bytes = ram_size - BIOS_RESERVED_TOP - EXTENDED_START;
        let mem_upper = u32::try_from(upper_bytes / KIB).unwrap_or(u32::MAX);
        let info = rel(INFO_ADDR);
        put(area, info + MBI_FLAGS, &INFO_FLAGS.to_le_bytes());
        put(area, info + MBI_MEM_LOWER, &MEM_LOWER_KIB.to_le_bytes());
        put(area, info + MBI_MEM_UPPER, &mem_upper.to_le_bytes());
        put(area, info + MBI_BOOT_DEVICE, &BOOT_DEVICE.to_le_bytes());
        put(area, info + MBI_CMDLINE, &self.cmdline_addr.to_le_bytes());
        put(area, info + MBI_MODS_COUNT, &(modules.len() as u32).to_le_bytes());
        put(area, info + MBI_MODS_ADDR, &self.mods_addr.to_le_bytes());
        put(area, info + MBI_MMAP_LENGTH, &mmap_len.to_le_bytes());
        put(area, info + MBI_MMAP_ADDR, &MMAP_ADDR.to_le_bytes());
        put(area, info + MBI_BOOT_LOADER_NAME, &self.loader_name_addr.to_le_bytes());
        Ok(())
    }
}

/// Copies `bytes` into `area` at `offset`; the layout guarantees the range is
/// in bounds, and an out-of-range write is dropped rather than panicking.
fn put(area: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(dst) = offset.checked_add(bytes.len()).and_then(|end| area.get_mut(offset..end)) {
        dst.copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests;
