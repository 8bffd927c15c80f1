//! Assembling a machine from a `Config`: guest RAM, the loaded kernel, the
//! PC devices and the engine, as `qemu-system-i386 -kernel` would.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use thiserror::Error;

use crate::cli::{Config, SerialTarget};
use crate::cpu::{EAX, EBX, ESI, ESP};
use crate::devices::chipset::pc_machine;
use crate::devices::clock::VirtualClock;
use crate::exec::{Engine, EngineOptions, ExecError, Trace};
use crate::loader::{LoaderError, MULTIBOOT_BOOTLOADER_MAGIC, Module, load_multiboot_with_modules};
use crate::memory::{GuestMemory, MemoryError};

/// Boot loader name in the Multiboot information (QEMU passes "qemu").
pub const LOADER_NAME: &str = "btvisor";

/// Exit statuses of a run. A guest that writes V to isa-debug-exit gives
/// `(V << 1) | 1`; every other ending has its own even status.
pub mod status {
    /// The guest executed HLT with interrupts disabled: it stopped for good
    /// (also: a debugger killed it).
    pub const HALTED: u8 = 0;
    /// Bad options, or an unreadable or invalid image (QEMU's status for a
    /// failed start); also a guest entering a mode btvisor lacks.
    pub const RUNNER_ERROR: u8 = 1;
    /// The guest triple-faulted (a fault while delivering a double fault).
    pub const TRIPLE_FAULT: u8 = 2;
    /// The guest took an exception before it loaded an IDT.
    pub const GUEST_EXCEPTION: u8 = 4;
    /// An internal error of the monitor (sysexits' EX_SOFTWARE): even, so no
    /// isa-debug-exit status `(V << 1) | 1` can be mistaken for it.
    pub const INTERNAL_ERROR: u8 = 70;
}

/// The process exit status for how a run ended.
pub fn exit_status(outcome: &crate::exec::RunOutcome) -> u8 {
    use crate::exec::RunOutcome as R;
    match outcome {
        R::DebugExit(code) => *code as u8,
        R::Halted { .. } | R::DebugStop(_) | R::Stopped => status::HALTED,
        R::Exception { .. } => status::GUEST_EXCEPTION,
        R::TripleFault { .. } => status::TRIPLE_FAULT,
        R::Unsupported(_) => status::RUNNER_ERROR,
        R::InternalError(_) => status::INTERNAL_ERROR,
    }
}

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
    #[error("cannot read initrd {path}: {source}")]
    Initrd { path: String, source: std::io::Error },
    #[error("a Linux kernel takes one -initrd file, not a comma-separated list")]
    InitrdList,
    #[error(transparent)]
    Replay(#[from] crate::devices::replay::ReplayError),
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

/// What the loader placed, by boot protocol.
enum Boot {
    Multiboot(crate::loader::BootInfo),
    Linux(crate::loader::linux::LinuxBoot),
}

/// The engine options `config` asks for (every vCPU's are the same).
fn engine_options(config: &Config) -> EngineOptions {
    let t = &config.trace;
    EngineOptions {
        trace: Trace { in_asm: t.in_asm, out_asm: t.out_asm, exec: t.exec, int: t.int, cpu: t.cpu },
        // As in QEMU, exec and cpu traces show the blocks entered from the
        // dispatcher: every block only with nochain.
        chaining: !t.nochain,
        icount: config.icount_shift.is_some(),
        soft_mmu: config.soft_mmu,
        perfmap: config.perfmap,
        inline_calls: !t.noinline,
        continuation_entries: !t.nocont,
        cache_size: config.cache_bytes.map_or(crate::cache::DEFAULT_CACHE_SIZE, |b| b as usize),
    }
}

/// Build the machine described by `config`, ready to run: one engine per
/// virtual CPU, the bootstrap processor's first (`exec::smp::run_machine`
/// runs them).
pub fn build_machine(config: &Config) -> Result<Vec<Engine>, VmError> {
    let mut bsp = build(config)?;
    if config.cpus <= 1 {
        return Ok(vec![bsp]);
    }
    let aps = crate::exec::smp::make_machine(&mut bsp, config.cpus, engine_options(config))?;
    let mut all = vec![bsp];
    all.extend(aps);
    Ok(all)
}

/// Build the machine described by `config` with its bootstrap processor
/// only, ready to run.
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
    // What the BIOS leaves in low memory; the kernel is loaded over it.
    crate::loader::bios::write_low_memory(mem.ram_mut());
    let boot = if crate::loader::linux::is_bzimage(&image) {
        let initrd = match config.initrd.as_slice() {
            [] => None,
            [one] => {
                Some(std::fs::read(one).map_err(|source| VmError::Initrd { path: one.display().to_string(), source })?)
            }
            _ => return Err(VmError::InitrdList),
        };
        let b = crate::loader::linux::load_bzimage(&image, mem.ram_mut(), &config.append, initrd.as_deref())
            .map_err(|source| VmError::Load { path, source })?;
        Boot::Linux(b)
    } else {
        // Each -initrd element is a module: the file name, then (after a
        // space) its arguments; the whole element is its string, as QEMU does.
        let strings: Vec<String> = config.initrd.iter().map(|p| p.display().to_string()).collect();
        let mut data = Vec::with_capacity(strings.len());
        for s in &strings {
            let file = s.split(' ').next().unwrap_or(s);
            data.push(std::fs::read(file).map_err(|source| VmError::Initrd { path: file.to_string(), source })?);
        }
        let modules: Vec<Module> = strings.iter().zip(&data).map(|(s, d)| Module { cmdline: s, data: d }).collect();
        let cmdline = multiboot_cmdline(&config.image, &config.append);
        let b = load_multiboot_with_modules(&image, mem.ram_mut(), &cmdline, LOADER_NAME, &modules)
            .map_err(|source| VmError::Load { path, source })?;
        Boot::Multiboot(b)
    };
    let clock = match config.icount_shift {
        Some(shift) => VirtualClock::icount(1 << shift),
        None => VirtualClock::host(),
    };
    let (mut io, mut chipset) = pc_machine(serial_writer(&config.serial)?, config.mem_bytes, clock, config.cpus as u16);
    crate::loader::bios::program_chipset(&mut io);
    let replaying = config.record_replay.as_ref().is_some_and(|r| r.replay);
    if let (Some(rr), Some(shift)) = (&config.record_replay, config.icount_shift) {
        use crate::devices::replay::RecordReplay;
        chipset.record_replay = Some(if rr.replay {
            RecordReplay::replay(&rr.file, shift)?
        } else {
            RecordReplay::record(&rr.file, shift)?
        });
    }
    // A replay's input is the recording's, not the terminal's.
    let raw_mode = match config.serial {
        SerialTarget::Stdout if !replaying => chipset.connect_stdin(),
        _ => None,
    };
    let opts = engine_options(config);
    let mut engine = Engine::new(mem, io, opts)?;
    if config.icount_shift.is_some() {
        engine.cpu.tsc_clock = Some(chipset.clock.clone());
    }
    if config.machine == crate::cli::Machine::Pc {
        use crate::devices::RegisterWindow;
        use crate::devices::lapic::{APIC_DEFAULT_BASE, APIC_WINDOW_SIZE, LocalApic};
        let apic = std::sync::Arc::new(std::sync::Mutex::new(LocalApic::new(chipset.clock.clone())));
        engine.mem.add_mmio(APIC_DEFAULT_BASE, APIC_WINDOW_SIZE, Box::new(RegisterWindow(apic.clone())));
        // The MP tables name the CPU and the I/O APIC, as a BIOS's would.
        crate::loader::mptable::write(engine.mem.ram_mut(), config.cpus as u8);
        engine.cpu.apic = Some(apic.clone());
        chipset.lapics = vec![apic.clone()];
        chipset.lapic = Some(apic);
        use crate::devices::ioapic::{IOAPIC_BASE, IOAPIC_WINDOW_SIZE, IoApic};
        let io = std::sync::Arc::new(std::sync::Mutex::new(IoApic::default()));
        engine.mem.add_mmio(IOAPIC_BASE, IOAPIC_WINDOW_SIZE, Box::new(RegisterWindow(io.clone())));
        chipset.ioapic = Some(io);
    }
    engine.chipset = Some(chipset);
    engine.raw_mode = raw_mode;
    if let Some(p) = &config.log_file {
        let f = File::create(p).map_err(|source| VmError::Log { path: p.display().to_string(), source })?;
        engine.set_log(Box::new(std::io::BufWriter::new(f)));
    }
    let cpu = &mut engine.cpu;
    match boot {
        Boot::Multiboot(b) => {
            cpu.set_reg(EAX, MULTIBOOT_BOOTLOADER_MAGIC);
            cpu.set_reg(EBX, b.info_addr);
            cpu.set_reg(ESP, 0);
            cpu.hot.eip = b.entry;
        }
        Boot::Linux(b) => {
            // 32-bit boot protocol: ESI = zero page, EBP = EDI = EBX = 0,
            // __BOOT_CS/__BOOT_DS from a GDT that holds them.
            cpu.set_reg(ESI, b.zero_page);
            cpu.gdtr = crate::cpu::TableReg { base: b.gdt_base, limit: b.gdt_limit };
            cpu.hot.eip = b.entry;
        }
    }
    Ok(engine)
}
