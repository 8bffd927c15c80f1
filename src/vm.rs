//! Assembling a machine from a `Config`: guest RAM, the loaded kernel, the
//! PC devices and the engine, as `qemu-system-i386 -kernel` would.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use thiserror::Error;

use crate::cli::{Config, SerialTarget};
use crate::cpu::{EAX, EBX, ESP};
use crate::devices::chipset::pc_machine;
use crate::devices::clock::VirtualClock;
use crate::exec::{Engine, EngineOptions, ExecError, Trace};
use crate::loader::{LoaderError, MULTIBOOT_BOOTLOADER_MAGIC, load_multiboot};
use crate::memory::{GuestMemory, MemoryError};

/// Boot loader name in the Multiboot information (QEMU passes "qemu").
pub const LOADER_NAME: &str = "btvisor";

#[derive(Debug, Error)]
pub enum VmError {
    #[error("cannot read kernel image {path}: {source}")]
    Image { path: String, source: std::io::Error },
    #[error("kernel image {path}: {source}")]
    Load { path: String, source: LoaderError },
    #[error("cannot open serial output {path}: {source}")]
    Serial { path: String, source: std::io::Error },
    #[error("cannot open log file {path}: {source}")]
    Log { path: String, source: std::io::Error },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Exec(#[from] ExecError),
}

fn serial_writer(t: &SerialTarget) -> Result<Box<dyn Write + Send>, VmError> {
    Ok(match t {
        SerialTarget::Stdout => Box::new(std::io::stdout()),
        SerialTarget::Null => Box::new(std::io::sink()),
        SerialTarget::File(p) => {
            Box::new(File::create(p).map_err(|source| VmError::Serial { path: p.display().to_string(), source })?)
        }
    })
}

/// The Multiboot command line QEMU builds: "<kernel path> <append>".
pub fn multiboot_cmdline(image: &Path, append: &str) -> String {
    format!("{} {}", image.display(), append)
}

/// Build the machine described by `config`, ready to run.
pub fn build(config: &Config) -> Result<Engine, VmError> {
    let path = config.image.display().to_string();
    let image = std::fs::read(&config.image).map_err(|source| VmError::Image { path: path.clone(), source })?;
    let mut mem = GuestMemory::new(config.mem_bytes)?;
    // The VGA's legacy window, in the text mode the BIOS leaves it in.
    mem.add_mmio(
        crate::devices::vga::VGA_WINDOW_BASE,
        crate::devices::vga::VGA_WINDOW_SIZE,
        Box::<crate::devices::vga::VgaText>::default(),
    );
    let cmdline = multiboot_cmdline(&config.image, &config.append);
    let boot = load_multiboot(&image, mem.ram_mut(), &cmdline, LOADER_NAME)
        .map_err(|source| VmError::Load { path, source })?;
    let clock = match config.icount_shift {
        Some(shift) => VirtualClock::icount(1 << shift),
        None => VirtualClock::host(),
    };
    let (io, mut chipset) = pc_machine(serial_writer(&config.serial)?, config.mem_bytes, clock);
    let raw_mode = match config.serial {
        SerialTarget::Stdout => chipset.connect_stdin(),
        _ => None,
    };
    let t = &config.trace;
    let opts = EngineOptions {
        trace: Trace { in_asm: t.in_asm, out_asm: t.out_asm, exec: t.exec, int: t.int },
        // Every block entry is visible in the exec trace only without chaining.
        chaining: !t.exec && config.icount_shift.is_none(),
        icount: config.icount_shift.is_some(),
        soft_mmu: config.soft_mmu,
        cache_size: config.cache_bytes.map_or(crate::cache::DEFAULT_CACHE_SIZE, |b| b as usize),
    };
    let mut engine = Engine::new(mem, io, opts)?;
    engine.chipset = Some(chipset);
    engine.raw_mode = raw_mode;
    if let Some(p) = &config.log_file {
        let f = File::create(p).map_err(|source| VmError::Log { path: p.display().to_string(), source })?;
        engine.set_log(Box::new(std::io::BufWriter::new(f)));
    }
    let cpu = &mut engine.cpu;
    cpu.set_reg(EAX, MULTIBOOT_BOOTLOADER_MAGIC);
    cpu.set_reg(EBX, boot.info_addr);
    cpu.set_reg(ESP, 0);
    cpu.hot.eip = boot.entry;
    Ok(engine)
}
