//! ELF32 (i386) program-header parsing for Multiboot kernels without the
//! a.out kludge.
//!
//! Only what loading needs is read: the ELF header identification and the
//! PT_LOAD program headers. Segments are placed at their physical address
//! (`p_paddr`), as QEMU does for Multiboot ELF kernels.

use super::{LoadPlan, LoaderError, Segment, read_u16, read_u32};

const ELF_MAGIC: [u8; 4] = [0x7F, b'E', b'L', b'F'];
/// Size of the ELF32 file header.
const EHDR_SIZE: usize = 52;
/// Size of one ELF32 program header.
const PHDR_SIZE: usize = 32;

const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_386: u16 = 3;
const PT_LOAD: u32 = 1;
/// Segment flag: executable.
const PF_X: u32 = 1;

/// ELF header field offsets.
const E_TYPE: usize = 16;
const E_MACHINE: usize = 18;
const E_ENTRY: usize = 24;
const E_PHOFF: usize = 28;
const E_PHENTSIZE: usize = 42;
const E_PHNUM: usize = 44;

/// Program header field offsets.
const P_TYPE: usize = 0;
const P_OFFSET: usize = 4;
const P_VADDR: usize = 8;
const P_PADDR: usize = 12;
const P_FILESZ: usize = 16;
const P_MEMSZ: usize = 20;
const P_FLAGS: usize = 24;

/// Reads a header field that the length check before it guarantees exists.
fn field32(bytes: &[u8], offset: usize) -> Result<u32, LoaderError> {
    read_u32(bytes, offset).ok_or(LoaderError::CorruptElf("header is truncated"))
}

fn field16(bytes: &[u8], offset: usize) -> Result<u16, LoaderError> {
    read_u16(bytes, offset).ok_or(LoaderError::CorruptElf("header is truncated"))
}

/// Validates the ELF header and turns the PT_LOAD segments into a load plan.
pub(super) fn plan_elf(image: &[u8]) -> Result<LoadPlan, LoaderError> {
    if image.get(..ELF_MAGIC.len()) != Some(&ELF_MAGIC[..]) {
        return Err(LoaderError::NotElf);
    }
    if image.len() < EHDR_SIZE {
        return Err(LoaderError::CorruptElf("file is shorter than the ELF header"));
    }
    match image[EI_CLASS] {
        ELFCLASS32 => {}
        ELFCLASS64 => {
            return Err(LoaderError::UnsupportedElf("64-bit ELF; a 32-bit (i386) kernel is required"));
        }
        _ => return Err(LoaderError::CorruptElf("invalid ELF class")),
    }
    if image[EI_DATA] != ELFDATA2LSB {
        return Err(LoaderError::UnsupportedElf("not little-endian"));
    }
    if field16(image, E_MACHINE)? != EM_386 {
        return Err(LoaderError::UnsupportedElf("machine is not i386 (EM_386)"));
    }
    if field16(image, E_TYPE)? != ET_EXEC {
        return Err(LoaderError::UnsupportedElf("not an executable (ET_EXEC)"));
    }

    let e_entry = field32(image, E_ENTRY)?;
    let phoff = field32(image, E_PHOFF)? as usize;
    let phentsize = usize::from(field16(image, E_PHENTSIZE)?);
    let phnum = usize::from(field16(image, E_PHNUM)?);
    if phentsize < PHDR_SIZE {
        return Err(LoaderError::CorruptElf("program header entry size is too small"));
    }
    phentsize
        .checked_mul(phnum)
        .and_then(|len| len.checked_add(phoff))
        .filter(|&end| end <= image.len())
        .ok_or(LoaderError::CorruptElf("program headers extend past the end of the file"))?;

    let mut segments = Vec::new();
    let mut entry = e_entry;
    for index in 0..phnum {
        let ph = index
            .checked_mul(phentsize)
            .and_then(|rel| rel.checked_add(phoff))
            .and_then(|start| image.get(start..start.checked_add(PHDR_SIZE)?))
            .ok_or(LoaderError::CorruptElf("program headers extend past the end of the file"))?;
        if field32(ph, P_TYPE)? != PT_LOAD {
            continue;
        }
        let offset = field32(ph, P_OFFSET)?;
        let vaddr = field32(ph, P_VADDR)?;
        let paddr = field32(ph, P_PADDR)?;
        let filesz = field32(ph, P_FILESZ)?;
        let memsz = field32(ph, P_MEMSZ)?;
        let flags = field32(ph, P_FLAGS)?;
        if filesz > memsz {
            return Err(LoaderError::FileszExceedsMemsz { index, filesz, memsz });
        }
        let data_end = u64::from(offset) + u64::from(filesz);
        if data_end > image.len() as u64 {
            return Err(LoaderError::Truncated {
                what: "ELF segment data",
                start: u64::from(offset),
                end: data_end,
                file_len: image.len(),
            });
        }
        if u64::from(paddr) + u64::from(memsz) > 1u64 << 32 {
            return Err(LoaderError::CorruptElf("segment extends past the 32-bit address space"));
        }
        // e_entry is virtual; QEMU translates it through the executable
        // segment containing it when that segment's vaddr and paddr differ.
        if vaddr != paddr
            && flags & PF_X != 0
            && e_entry >= vaddr
            && u64::from(e_entry) < u64::from(vaddr) + u64::from(filesz)
        {
            entry = e_entry - vaddr + paddr;
        }
        if memsz == 0 {
            continue;
        }
        segments.push(Segment {
            paddr: u64::from(paddr),
            file_offset: offset as usize,
            file_len: filesz as usize,
            mem_len: u64::from(memsz),
        });
    }
    if segments.is_empty() {
        return Err(LoaderError::NoLoadableSegments);
    }
    Ok(LoadPlan { segments, entry })
}
