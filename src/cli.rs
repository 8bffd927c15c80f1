//! Command-line parsing, accepting the spellings of `qemu-system-i386` so
//! btvisor can be dropped into scripts written for QEMU.
//!
//! QEMU uses single-dash long options (`-kernel`, `-append`, ...), which clap
//! cannot parse, so a fixed list of them is rewritten to `--kernel` etc.
//! before clap sees the arguments. Genuine short options (`-m`, `-d`, `-D`,
//! `-M`, `-s`, `-S`) are left alone. Options that only matter to QEMU
//! (`-display none`, `-nographic`, ...) are accepted and ignored when their
//! value means what btvisor does anyway, and rejected with a clear message
//! otherwise.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use thiserror::Error;

/// Guest RAM when `-m` is not given.
pub const DEFAULT_MEM_BYTES: u64 = 128 * MIB;
/// Smallest accepted RAM size: room for low memory, the 1 MiB hole and a
/// kernel.
pub const MIN_MEM_BYTES: u64 = 2 * MIB;
/// Largest accepted RAM size: guest RAM must stay below the 32-bit PCI/MMIO
/// hole at 3 GiB.
pub const MAX_MEM_BYTES: u64 = 3 * GIB;
/// QEMU rounds the RAM size up to a multiple of 8 KiB.
const MEM_ALIGN: u64 = 8 * KIB;
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
/// Longest fraction accepted in sizes like `1.5G` (keeps arithmetic exact).
const MAX_FRACTION_DIGITS: usize = 9;

/// Where the guest's COM1 output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialTarget {
    Stdout,
    File(PathBuf),
    Null,
}

/// Which `-d` trace classes are enabled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TraceFlags {
    /// Guest instructions of each block as it is translated.
    pub in_asm: bool,
    /// Host code generated for each block.
    pub out_asm: bool,
    /// Each block as it is executed.
    pub exec: bool,
    /// Interrupts and exceptions.
    pub int: bool,
    /// The CPU state before each block the dispatcher enters.
    pub cpu: bool,
    /// No block chaining (every block entry is traced).
    pub nochain: bool,
    /// No leaf callees inlined at indirect CALLs (for comparisons).
    pub noinline: bool,
    /// No entries at CALL continuations inside blocks (for comparisons).
    pub nocont: bool,
}

/// The validated configuration of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Kernel image: a Linux bzImage or a Multiboot kernel.
    pub image: PathBuf,
    /// Guest RAM size in bytes.
    pub mem_bytes: u64,
    /// Kernel command line (`-append`); empty if not given.
    pub append: String,
    /// `-initrd`: a Linux initial RAM disk, or the Multiboot modules
    /// (QEMU's comma-separated list); empty if not given.
    pub initrd: Vec<PathBuf>,
    pub serial: SerialTarget,
    pub trace: TraceFlags,
    /// File for trace/log output (`-D`); stderr if not given.
    pub log_file: Option<PathBuf>,
    /// Print execution statistics at exit.
    pub stats: bool,
    /// Code cache size (`--cache-size`, or QEMU's `-accel tcg,tb-size=MiB`).
    pub cache_bytes: Option<u64>,
    /// `-icount shift=N`: deterministic time, 2^N ns per guest instruction.
    pub icount_shift: Option<u32>,
    /// `-icount ...,rr=record|replay,rrfile=F`.
    pub record_replay: Option<RecordReplayConfig>,
    /// `--soft-mmu`: every memory access through the soft TLB (testing).
    pub soft_mmu: bool,
    /// `--text-screen FILE`: write the VGA text screen there at exit.
    pub text_screen: Option<PathBuf>,
    /// `-perfmap`: write /tmp/perf-PID.map naming each translated block.
    pub perfmap: bool,
    /// `-gdb tcp::PORT` / `-s`, with `-S`: the gdb stub.
    pub gdb: Option<GdbConfig>,
    /// `-M`: which PC.
    pub machine: Machine,
    /// `-smp`: how many virtual CPUs (more than one needs `-M pc`).
    pub cpus: usize,
}

/// Most virtual CPUs `-smp` accepts (xAPIC IDs, MP-table entries and host
/// threads all allow more; 16 is plenty on the hosts btvisor targets).
pub const MAX_CPUS: usize = 16;

/// The PC btvisor assembles (`-M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Machine {
    /// QEMU's `isapc`: the 8259 pair drives INTR; no local APIC.
    #[default]
    IsaPc,
    /// `pc` as far as btvisor models it: isapc plus the CPU's local APIC
    /// (at 0xFEE00000, LINT0 wired to the 8259 in ExtINT mode).
    Pc,
}

/// Deterministic record and replay (`-icount shift=N,rr=MODE,rrfile=F`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordReplayConfig {
    /// `rr=replay` (else `rr=record`).
    pub replay: bool,
    pub file: PathBuf,
}

/// The gdb stub's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GdbConfig {
    /// `HOST:PORT` to listen on.
    pub address: String,
    /// `-S`: start stopped until a debugger attaches and continues.
    pub wait: bool,
}

/// `-s`: QEMU's shorthand for `-gdb tcp::1234`.
const DEFAULT_GDB_DEVICE: &str = "tcp::1234";

/// The `-d` classes with their descriptions, for validation and `-d help`.
const TRACE_CLASSES: &[(&str, &str)] = &[
    ("in_asm", "show guest code of each block as it is translated"),
    ("out_asm", "show generated host code for each translated block"),
    ("exec", "show each translated block as it is executed"),
    ("int", "show interrupts and exceptions"),
    ("cpu", "show the CPU state before each block"),
    ("nochain", "do not chain blocks (every block entry is traced)"),
    ("noinline", "do not inline leaf functions at indirect calls"),
    ("nocont", "do not make the continuations of calls entries of their blocks"),
];

/// Why the command line was rejected (or, for help, why nothing runs).
#[derive(Debug, Error)]
pub enum CliError {
    /// Usage errors found by clap, and `--help`/`--version` output.
    #[error("{0}")]
    Clap(#[from] clap::Error),
    #[error("no kernel image given: use `btvisor IMAGE` or `btvisor -kernel IMAGE`")]
    MissingImage,
    #[error("kernel image given twice: `{positional}` and `-kernel {kernel}`; give only one")]
    ImageGivenTwice { positional: String, kernel: String },
    #[error("invalid memory size `{value}`: {reason}")]
    InvalidMemSize { value: String, reason: &'static str },
    #[error("memory size `{value}` ({bytes} bytes) is out of range: it must be between 2 MiB and 3 GiB")]
    MemOutOfRange { value: String, bytes: u64 },
    #[error("unsupported -serial `{0}`: use stdio, file:PATH, null or none")]
    UnsupportedSerial(String),
    #[error("only one -serial option is supported (btvisor has a single COM port)")]
    MultipleSerial,
    #[error("unknown -d log class `{0}` (use -d help to list them)")]
    UnknownTraceClass(String),
    /// `-d help`: the message is the list of classes.
    #[error("{}", trace_help())]
    TraceHelp,
    #[error("unsupported -display `{0}`: btvisor has no display, only -display none is accepted")]
    UnsupportedDisplay(String),
    #[error("unsupported -device `{0}`: only isa-debug-exit is available")]
    UnsupportedDevice(String),
    #[error(
        "invalid -icount `{0}`: expected [shift=]N (N from 0 to 10) or auto, optionally with ,rr=record|replay,rrfile=FILE"
    )]
    InvalidIcount(String),
    #[error("-icount `{0}`: rr=record|replay and rrfile=FILE go together")]
    RecordReplayNeedsFile(String),
    #[error("invalid code cache size `{value}`: {reason}")]
    InvalidCacheSize { value: String, reason: &'static str },
    #[error("unsupported -accel `{0}`: only tcg (binary translation) is available")]
    UnsupportedAccel(String),
    #[error("KVM is not used: btvisor runs guests by binary translation without hardware virtualization; drop {0}")]
    KvmNotUsed(&'static str),
    #[error("invalid -smp `{0}`: give a CPU count from 1 to 16 (N or cpus=N)")]
    UnsupportedSmp(String),
    #[error("-smp {0} needs local APICs: use -M pc (isapc has none)")]
    SmpNeedsPc(usize),
    #[error("the gdb stub debugs one CPU: drop -gdb/-s or use -smp 1")]
    GdbWithSmp,
    #[error("-icount is deterministic only with one CPU: drop it or use -smp 1")]
    IcountWithSmp,
    #[error("unsupported -monitor `{0}`: btvisor has no monitor, only -monitor none is accepted")]
    UnsupportedMonitor(String),
    #[error("unsupported -gdb `{0}`: use tcp::PORT or tcp:HOST:PORT")]
    UnsupportedGdb(String),
    #[error("unsupported machine `{0}`: btvisor models isapc and pc (-M pc adds the local APIC)")]
    UnsupportedMachine(String),
    #[error("-S waits for a debugger: give -s or -gdb tcp::PORT too")]
    FreezeWithoutGdb,
}

impl CliError {
    /// True for requested output (`--help`, `--version`, `-d help`) rather
    /// than a mistake: print it to stdout and exit successfully.
    pub fn is_informational(&self) -> bool {
        match self {
            CliError::Clap(e) => {
                matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion)
            }
            CliError::TraceHelp => true,
            _ => false,
        }
    }

    /// Process exit status to use for this error (clap's convention: 0 for
    /// informational output, 2 for usage errors).
    pub fn exit_code(&self) -> i32 {
        if self.is_informational() { 0 } else { 2 }
    }
}

fn trace_help() -> String {
    let mut text = String::from("Log items (comma separated):\n");
    for (name, what) in TRACE_CLASSES {
        text.push_str(&format!("{name:<10} {what}\n"));
    }
    text
}

/// The raw clap view of the command line, before validation.
#[derive(Debug, Parser)]
#[command(
    name = "btvisor",
    bin_name = "btvisor",
    version,
    // Like QEMU, a repeated option's last value wins.
    args_override_self = true,
    about = "Userspace binary-translation VMM for 32-bit x86 Multiboot kernels",
    after_help = "QEMU spellings such as -kernel, -append and -serial are accepted."
)]
struct RawArgs {
    /// Multiboot kernel image to boot
    #[arg(value_name = "IMAGE")]
    image: Option<PathBuf>,
    /// Multiboot kernel image (alternative to IMAGE)
    #[arg(long, value_name = "IMAGE")]
    kernel: Option<PathBuf>,
    /// Guest RAM: [size=]N[K|M|G], MiB when no unit is given
    #[arg(short = 'm', value_name = "SIZE")]
    mem: Option<String>,
    /// Kernel command line
    #[arg(long, value_name = "CMDLINE", allow_hyphen_values = true)]
    append: Option<String>,
    /// Initial RAM disk (Linux) or Multiboot modules (comma-separated files)
    #[arg(long, value_name = "FILE")]
    initrd: Option<String>,
    /// COM1 output: stdio, file:PATH, null or none
    #[arg(long, value_name = "DEV")]
    serial: Vec<String>,
    /// Enable trace classes: in_asm,out_asm,exec,int (or help)
    #[arg(short = 'd', value_name = "ITEMS")]
    trace: Vec<String>,
    /// Write traces and logs to FILE instead of stderr
    #[arg(short = 'D', value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Print execution statistics at exit
    #[arg(long)]
    stats: bool,
    /// Translated-code cache size: N[K|M|G], MiB when no unit is given
    #[arg(long = "cache-size", value_name = "SIZE")]
    cache_size: Option<String>,
    /// Deterministic time: [shift=]N (2^N ns per instruction) or auto
    #[arg(long, value_name = "SHIFT")]
    icount: Option<String>,
    /// Translate every eligible memory access with a soft-TLB lookup
    /// instead of the shadow window (for testing the soft form)
    #[arg(long = "soft-mmu")]
    soft_mmu: bool,
    /// At exit, write the VGA text screen (80x25, as text) to FILE
    #[arg(long = "text-screen", value_name = "FILE")]
    text_screen: Option<PathBuf>,
    /// Write /tmp/perf-PID.map naming each translated block by its guest
    /// address, for `perf report` (as QEMU's -perfmap)
    #[arg(long)]
    perfmap: bool,

    /// Accepted for QEMU compatibility: only `none`
    #[arg(long, value_name = "TYPE")]
    display: Vec<String>,
    /// Accepted for QEMU compatibility (ignored)
    #[arg(long)]
    nographic: bool,
    /// Accepted for QEMU compatibility (ignored)
    #[arg(long = "no-reboot")]
    no_reboot: bool,
    /// Accepted for QEMU compatibility: only isa-debug-exit[,...]
    #[arg(long, value_name = "DRIVER")]
    device: Vec<String>,
    /// Accepted for QEMU compatibility: only tcg
    #[arg(long, value_name = "ACCEL")]
    accel: Vec<String>,
    /// Machine: isapc (default; 8259-only PC) or pc (adds the local APICs and the I/O APIC)
    #[arg(short = 'M', long, value_name = "MACHINE")]
    machine: Vec<String>,
    /// Accepted for QEMU compatibility (ignored)
    #[arg(long, value_name = "CPU")]
    cpu: Vec<String>,
    /// Virtual CPUs (1-16), each on its own host thread: N, cpus=N or a sockets=/cores=/threads= product; more than one implies -M pc
    #[arg(long, value_name = "N")]
    smp: Vec<String>,
    /// Accepted for QEMU compatibility (ignored)
    #[arg(long)]
    nodefaults: bool,
    /// Accepted for QEMU compatibility: only `none`
    #[arg(long, value_name = "DEV")]
    monitor: Vec<String>,
    /// Rejected: btvisor does not use KVM
    #[arg(long = "enable-kvm")]
    enable_kvm: bool,
    /// Wait for gdb on a TCP port: tcp::PORT or tcp:HOST:PORT
    #[arg(long = "gdb", value_name = "DEV")]
    gdb: Option<String>,
    /// Shorthand for -gdb tcp::1234
    #[arg(short = 's')]
    gdb_default: bool,
    /// Do not start the CPU until gdb attaches and continues
    #[arg(short = 'S')]
    freeze: bool,
}

/// QEMU's single-dash long options that we rewrite to `--name`, and whether
/// each takes a value (whose token must then be passed through untouched).
const SINGLE_DASH_LONG: &[(&str, bool)] = &[
    ("kernel", true),
    ("append", true),
    ("initrd", true),
    ("serial", true),
    ("display", true),
    ("nographic", false),
    ("no-reboot", false),
    ("device", true),
    ("accel", true),
    ("machine", true),
    ("cpu", true),
    ("smp", true),
    ("nodefaults", false),
    ("monitor", true),
    ("enable-kvm", false),
    ("stats", false),
    ("cache-size", true),
    ("icount", true),
    ("soft-mmu", false),
    ("text-screen", true),
    ("perfmap", false),
    ("gdb", true),
    ("help", false),
    ("version", false),
];

/// Short options that take a value as the next token.
const SHORT_WITH_VALUE: &[&str] = &["-m", "-d", "-D", "-M"];

/// Rewrites QEMU-style `-name` options to `--name`, leaving option values,
/// short options and everything after `--` unchanged.
fn rewrite_qemu_style(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    // The program name is never an option.
    out.extend(iter.next());
    let mut value_follows = false;
    while let Some(arg) = iter.next() {
        if value_follows {
            value_follows = false;
            out.push(arg);
            continue;
        }
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            out.extend(iter.by_ref());
            break;
        }
        let long_name = text.strip_prefix("--").or_else(|| text.strip_prefix('-'));
        let known = long_name.and_then(|name| SINGLE_DASH_LONG.iter().find(|(n, _)| *n == name));
        if let Some(&(name, takes_value)) = known {
            value_follows = takes_value;
            out.push(OsString::from(format!("--{name}")));
        } else {
            value_follows = SHORT_WITH_VALUE.contains(&text);
            out.push(arg);
        }
    }
    out
}

/// Parses the command line (`args` includes the program name first, as in
/// `std::env::args_os()`) into a validated [`Config`].
pub fn parse_args<I, T>(args: I) -> Result<Config, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let raw = RawArgs::try_parse_from(rewrite_qemu_style(args))?;
    validate(raw)
}

fn validate(raw: RawArgs) -> Result<Config, CliError> {
    // First, so that `-d help` works without an image.
    let mut trace = TraceFlags::default();
    for list in &raw.trace {
        parse_trace(list, &mut trace)?;
    }
    if raw.enable_kvm {
        return Err(CliError::KvmNotUsed("-enable-kvm"));
    }
    let icount = raw.icount.as_deref().map(parse_icount).transpose()?;
    let gdb_device = raw.gdb.clone().or_else(|| raw.gdb_default.then(|| DEFAULT_GDB_DEVICE.to_string()));
    let gdb = match gdb_device {
        Some(dev) => {
            let address = crate::gdb::parse_address(&dev).ok_or(CliError::UnsupportedGdb(dev))?;
            Some(GdbConfig { address, wait: raw.freeze })
        }
        None if raw.freeze => return Err(CliError::FreezeWithoutGdb),
        None => None,
    };
    let mut cache_bytes = None;
    for accel in &raw.accel {
        check_accel(accel)?;
        if let Some(mib) = accel.split(',').find_map(|p| p.strip_prefix("tb-size=")) {
            cache_bytes = Some(parse_cache_size(mib)?);
        }
    }
    for display in &raw.display {
        if first_component(display) != "none" {
            return Err(CliError::UnsupportedDisplay(display.clone()));
        }
    }
    for device in &raw.device {
        if first_component(device) != "isa-debug-exit" {
            return Err(CliError::UnsupportedDevice(device.clone()));
        }
    }
    let mut cpus = 1;
    for smp in &raw.smp {
        cpus = parse_smp(smp)?;
    }
    for monitor in &raw.monitor {
        if monitor != "none" {
            return Err(CliError::UnsupportedMonitor(monitor.clone()));
        }
    }
    // -machine, -cpu, -nographic, -no-reboot and -nodefaults describe what
    // btvisor does anyway (one fixed PC, no display, exit on reset).
    let _ = (&raw.cpu, raw.nographic, raw.no_reboot, raw.nodefaults);
    // Several CPUs need the APICs: `-smp N` alone gives `-M pc`.
    let mut machine = if cpus > 1 { Machine::Pc } else { Machine::IsaPc };
    for m in &raw.machine {
        // QEMU's `-M pc,accel=tcg,...`: the first component names it.
        machine = match first_component(m) {
            "isapc" => Machine::IsaPc,
            "pc" | "pc-i440fx-7.2" => Machine::Pc,
            other => return Err(CliError::UnsupportedMachine(other.to_string())),
        };
    }
    if cpus > 1 && machine == Machine::IsaPc {
        return Err(CliError::SmpNeedsPc(cpus));
    }
    if cpus > 1 && gdb.is_some() {
        return Err(CliError::GdbWithSmp);
    }
    if cpus > 1 && icount.is_some() {
        return Err(CliError::IcountWithSmp);
    }

    let image = match (raw.image, raw.kernel) {
        (Some(image), None) | (None, Some(image)) => image,
        (None, None) => return Err(CliError::MissingImage),
        (Some(positional), Some(kernel)) => {
            return Err(CliError::ImageGivenTwice {
                positional: positional.display().to_string(),
                kernel: kernel.display().to_string(),
            });
        }
    };
    let serial = match raw.serial.as_slice() {
        [] => SerialTarget::Stdout,
        [one] => parse_serial(one)?,
        _ => return Err(CliError::MultipleSerial),
    };
    let mem_bytes = match &raw.mem {
        Some(spec) => parse_mem(spec)?,
        None => DEFAULT_MEM_BYTES,
    };
    Ok(Config {
        image,
        mem_bytes,
        append: raw.append.unwrap_or_default(),
        initrd: raw.initrd.map(|s| s.split(',').map(PathBuf::from).collect()).unwrap_or_default(),
        serial,
        trace,
        log_file: raw.log_file,
        stats: raw.stats,
        cache_bytes: match &raw.cache_size {
            Some(spec) => Some(parse_cache_size(spec)?),
            None => cache_bytes,
        },
        icount_shift: icount.as_ref().map(|(shift, _)| *shift),
        record_replay: icount.and_then(|(_, rr)| rr),
        soft_mmu: raw.soft_mmu,
        text_screen: raw.text_screen,
        perfmap: raw.perfmap,
        gdb,
        machine,
        cpus,
    })
}

/// Largest icount shift QEMU accepts (2^10 ns per instruction).
const MAX_ICOUNT_SHIFT: u32 = 10;
/// The shift `-icount auto` uses (QEMU adapts it; btvisor keeps it fixed).
const AUTO_ICOUNT_SHIFT: u32 = 3;

/// `-icount [shift=]N|auto[,rr=record|replay,rrfile=F][,sleep=on][,align=off]`.
fn parse_icount(spec: &str) -> Result<(u32, Option<RecordReplayConfig>), CliError> {
    let bad = || CliError::InvalidIcount(spec.to_owned());
    let mut shift = None;
    let (mut rr, mut file) = (None, None);
    for (k, part) in spec.split(',').enumerate() {
        match part.split_once('=') {
            Some(("shift", v)) => shift = Some(v),
            Some(("rr", "record")) => rr = Some(false),
            Some(("rr", "replay")) => rr = Some(true),
            Some(("rrfile", f)) if !f.is_empty() => file = Some(PathBuf::from(f)),
            // QEMU's defaults, which are what btvisor does.
            Some(("sleep", "on")) | Some(("align", "off")) => {}
            None if k == 0 => shift = Some(part),
            _ => return Err(bad()),
        }
    }
    let shift = match shift.ok_or_else(bad)? {
        "auto" => AUTO_ICOUNT_SHIFT,
        n => n.parse::<u32>().ok().filter(|&n| n <= MAX_ICOUNT_SHIFT).ok_or_else(bad)?,
    };
    let rr = match (rr, file) {
        (Some(replay), Some(file)) => Some(RecordReplayConfig { replay, file }),
        (None, None) => None,
        _ => return Err(CliError::RecordReplayNeedsFile(spec.to_owned())),
    };
    Ok((shift, rr))
}

/// Smallest and largest code cache (the cache must hold the trampolines and
/// a few blocks; rel32 chaining needs it below 2 GiB).
pub const MIN_CACHE_BYTES: u64 = 64 * 1024;
pub const MAX_CACHE_BYTES: u64 = 1 << 30;

fn parse_cache_size(spec: &str) -> Result<u64, CliError> {
    let bytes =
        parse_size_mib_default(spec).map_err(|reason| CliError::InvalidCacheSize { value: spec.to_owned(), reason })?;
    if !(MIN_CACHE_BYTES..=MAX_CACHE_BYTES).contains(&bytes) {
        return Err(CliError::InvalidCacheSize { value: spec.to_owned(), reason: "must be between 64K and 1G" });
    }
    Ok(bytes)
}

/// The driver/backend name before any `,key=value` properties.
fn first_component(value: &str) -> &str {
    value.split(',').next().unwrap_or(value)
}

fn check_accel(accel: &str) -> Result<(), CliError> {
    match first_component(accel) {
        "tcg" => Ok(()),
        "kvm" => Err(CliError::KvmNotUsed("-accel kvm")),
        _ => Err(CliError::UnsupportedAccel(accel.to_owned())),
    }
}

/// The CPU count of an `-smp` value: `N`, `cpus=N`, or a topology
/// (`sockets=S,cores=C,threads=T`, whose product is the count when `cpus`
/// is not given; `maxcpus` is accepted and ignored, there is no hotplug).
fn parse_smp(smp: &str) -> Result<usize, CliError> {
    let bad = || CliError::UnsupportedSmp(smp.to_owned());
    let num = |v: &str| v.parse::<usize>().ok().filter(|&n| (1..=MAX_CPUS).contains(&n)).ok_or_else(bad);
    let (mut cpus, mut topology) = (None, 1usize);
    for (k, part) in smp.split(',').enumerate() {
        match part.split_once('=') {
            None if k == 0 => cpus = Some(num(part)?),
            Some(("cpus", v)) => cpus = Some(num(v)?),
            Some(("sockets" | "cores" | "threads" | "dies", v)) => topology = topology.saturating_mul(num(v)?),
            Some(("maxcpus", v)) => {
                num(v)?;
            }
            _ => return Err(bad()),
        }
    }
    let n = cpus.unwrap_or(topology);
    if n > MAX_CPUS {
        return Err(bad());
    }
    Ok(n)
}

fn parse_serial(spec: &str) -> Result<SerialTarget, CliError> {
    match spec {
        // QEMU's -nographic default `mon:stdio` multiplexes the monitor; we
        // have none, so it is plain stdio.
        "stdio" | "mon:stdio" => Ok(SerialTarget::Stdout),
        "null" | "none" => Ok(SerialTarget::Null),
        _ => match spec.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialTarget::File(PathBuf::from(path))),
            _ => Err(CliError::UnsupportedSerial(spec.to_owned())),
        },
    }
}

fn parse_trace(list: &str, trace: &mut TraceFlags) -> Result<(), CliError> {
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item {
            "in_asm" => trace.in_asm = true,
            "out_asm" => trace.out_asm = true,
            "exec" => trace.exec = true,
            "int" => trace.int = true,
            "cpu" => trace.cpu = true,
            "nochain" => trace.nochain = true,
            "noinline" => trace.noinline = true,
            "nocont" => trace.nocont = true,
            "help" => return Err(CliError::TraceHelp),
            _ => return Err(CliError::UnknownTraceClass(item.to_owned())),
        }
    }
    Ok(())
}

/// Parses QEMU's `-m [size=]N[suffix]` into bytes, rounded up to 8 KiB like
/// QEMU, and checks the supported range.
fn parse_mem(spec: &str) -> Result<u64, CliError> {
    let invalid = |reason| CliError::InvalidMemSize { value: spec.to_owned(), reason };
    if spec.contains(',') {
        return Err(invalid("memory hotplug options (slots, maxmem) are not supported"));
    }
    let size = spec.strip_prefix("size=").unwrap_or(spec);
    let bytes = parse_size_mib_default(size).map_err(invalid)?;
    let bytes = bytes.checked_next_multiple_of(MEM_ALIGN).ok_or(invalid("size is too large"))?;
    if !(MIN_MEM_BYTES..=MAX_MEM_BYTES).contains(&bytes) {
        return Err(CliError::MemOutOfRange { value: spec.to_owned(), bytes });
    }
    Ok(bytes)
}

/// `N[.F][B|K|M|G|T]`, case-insensitive suffix, MiB when there is none.
fn parse_size_mib_default(size: &str) -> Result<u64, &'static str> {
    let digits_end = size.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(size.len());
    let (number, suffix) = size.split_at(digits_end);
    let unit = match suffix.to_ascii_uppercase().as_str() {
        "" | "M" => MIB,
        "B" => 1,
        "K" => KIB,
        "G" => GIB,
        "T" => TIB,
        _ => return Err("unknown unit suffix (use K, M or G)"),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a number");
    }
    if fraction.len() > MAX_FRACTION_DIGITS || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err("malformed fraction");
    }
    let too_large = "size is too large";
    let whole: u64 = whole.parse().map_err(|_| too_large)?;
    let mut bytes = whole.checked_mul(unit).ok_or(too_large)?;
    if !fraction.is_empty() {
        // Both parsed from at most MAX_FRACTION_DIGITS digits: no overflow
        // in u128 when multiplied by a unit of at most 2^40.
        let scale = 10u128.pow(fraction.len() as u32);
        let frac: u128 = fraction.parse().map_err(|_| "malformed fraction")?;
        let extra = u64::try_from(frac * u128::from(unit) / scale).map_err(|_| too_large)?;
        bytes = bytes.checked_add(extra).ok_or(too_large)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, CliError> {
        parse_args(std::iter::once("btvisor").chain(args.iter().copied()))
    }

    fn ok(args: &[&str]) -> Config {
        match parse(args) {
            Ok(config) => config,
            Err(err) => panic!("{args:?} rejected: {err}"),
        }
    }

    fn err(args: &[&str]) -> CliError {
        match parse(args) {
            Ok(config) => panic!("{args:?} accepted: {config:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn defaults() {
        let c = ok(&["kernel.elf"]);
        assert_eq!(
            c,
            Config {
                image: PathBuf::from("kernel.elf"),
                mem_bytes: 128 * MIB,
                append: String::new(),
                initrd: Vec::new(),
                serial: SerialTarget::Stdout,
                trace: TraceFlags::default(),
                log_file: None,
                stats: false,
                cache_bytes: None,
                icount_shift: None,
                record_replay: None,
                soft_mmu: false,
                text_screen: None,
                perfmap: false,
                gdb: None,
                machine: Machine::IsaPc,
                cpus: 1,
            }
        );
    }

    #[test]
    fn kernel_option_spellings() {
        assert_eq!(ok(&["-kernel", "k.bin"]).image, PathBuf::from("k.bin"));
        assert_eq!(ok(&["--kernel", "k.bin"]).image, PathBuf::from("k.bin"));
        assert_eq!(ok(&["--kernel=k.bin"]).image, PathBuf::from("k.bin"));
        assert_eq!(ok(&["-m", "64", "-kernel", "k.bin", "-append", "x"]).image, PathBuf::from("k.bin"));
    }

    #[test]
    fn image_missing_or_twice() {
        assert!(matches!(err(&[]), CliError::MissingImage));
        assert!(matches!(err(&["-m", "64"]), CliError::MissingImage));
        let e = err(&["a.elf", "-kernel", "b.elf"]);
        assert!(matches!(e, CliError::ImageGivenTwice { .. }));
        assert!(e.to_string().contains("a.elf") && e.to_string().contains("b.elf"));
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(ok(&["-m", "128M", "k"]).mem_bytes, 128 * MIB);
        assert_eq!(ok(&["-m", "128", "k"]).mem_bytes, 128 * MIB);
        assert_eq!(ok(&["-m", "size=256M", "k"]).mem_bytes, 256 * MIB);
        assert_eq!(ok(&["-m", "1G", "k"]).mem_bytes, GIB);
        assert_eq!(ok(&["-m", "1g", "k"]).mem_bytes, GIB);
        assert_eq!(ok(&["-m", "4096K", "k"]).mem_bytes, 4 * MIB);
        assert_eq!(ok(&["-m", "1.5G", "k"]).mem_bytes, GIB + GIB / 2);
        assert_eq!(ok(&["-m", "3G", "k"]).mem_bytes, 3 * GIB);
        assert_eq!(ok(&["-m", "2", "k"]).mem_bytes, 2 * MIB);
        assert_eq!(ok(&["-m64", "k"]).mem_bytes, 64 * MIB);
        // Rounded up to 8 KiB like QEMU.
        assert_eq!(ok(&["-m", "4097K", "k"]).mem_bytes, 4 * MIB + 8 * KIB);
    }

    #[test]
    fn memory_size_errors_name_the_value() {
        for bad in ["1", "1M", "4G", "3073M", "0"] {
            let e = err(&["-m", bad, "k"]);
            assert!(matches!(e, CliError::MemOutOfRange { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(bad));
        }
        for bad in ["", "abc", "12Q", "M", "1.2.3", "size=", "128M,slots=2", "99999999999999999999", "9999999999T"] {
            let e = err(&["-m", bad, "k"]);
            assert!(matches!(e, CliError::InvalidMemSize { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn repeated_options_last_wins_like_qemu() {
        let c = ok(&["-append", "a", "-append", "b", "-m", "16", "-m", "32", "k"]);
        assert_eq!(c.append, "b");
        assert_eq!(c.mem_bytes, 32 * MIB);
    }

    #[test]
    fn append_spellings_and_hyphen_values() {
        assert_eq!(ok(&["-append", "console=ttyS0 root=/dev/x", "k"]).append, "console=ttyS0 root=/dev/x");
        assert_eq!(ok(&["--append", "a b", "k"]).append, "a b");
        // Values are never rewritten, even when they look like options.
        assert_eq!(ok(&["-append", "-kernel", "k"]).append, "-kernel");
        assert_eq!(ok(&["-append", "-v", "k"]).append, "-v");
    }

    #[test]
    fn serial_targets() {
        assert_eq!(ok(&["-serial", "stdio", "k"]).serial, SerialTarget::Stdout);
        assert_eq!(ok(&["-serial", "mon:stdio", "k"]).serial, SerialTarget::Stdout);
        assert_eq!(ok(&["-serial", "null", "k"]).serial, SerialTarget::Null);
        assert_eq!(ok(&["-serial", "none", "k"]).serial, SerialTarget::Null);
        assert_eq!(ok(&["-serial", "file:/tmp/out.txt", "k"]).serial, SerialTarget::File("/tmp/out.txt".into()));
        for bad in ["tcp::4444", "file:", "pty"] {
            let e = err(&["-serial", bad, "k"]);
            assert!(matches!(e, CliError::UnsupportedSerial(ref s) if s == bad), "{e}");
        }
        assert!(matches!(err(&["-serial", "stdio", "-serial", "null", "k"]), CliError::MultipleSerial));
    }

    #[test]
    fn trace_classes() {
        let t = ok(&["-d", "in_asm,out_asm", "k"]).trace;
        assert_eq!(t, TraceFlags { in_asm: true, out_asm: true, ..TraceFlags::default() });
        let t = ok(&["-d", "exec", "-d", "int", "k"]).trace;
        assert_eq!(t, TraceFlags { exec: true, int: true, ..TraceFlags::default() });
        let t = ok(&["-d", "cpu,nochain", "k"]).trace;
        assert_eq!(t, TraceFlags { cpu: true, nochain: true, ..TraceFlags::default() });
        let e = err(&["-d", "in_asm,bogus", "k"]);
        assert!(matches!(e, CliError::UnknownTraceClass(ref c) if c == "bogus"));
        assert!(e.to_string().contains("bogus"));
        let help = err(&["-d", "help"]);
        assert!(help.is_informational());
        assert_eq!(help.exit_code(), 0);
        assert!(help.to_string().contains("out_asm"));
    }

    #[test]
    fn icount_spellings() {
        assert_eq!(ok(&["-icount", "shift=4", "k"]).icount_shift, Some(4));
        assert_eq!(ok(&["-icount", "2", "k"]).icount_shift, Some(2));
        assert_eq!(ok(&["-icount", "auto", "k"]).icount_shift, Some(3));
        assert!(parse(&["-icount", "shift=99", "k"]).is_err());
        let c = ok(&["-icount", "shift=1,rr=record,rrfile=/tmp/r", "k"]);
        assert_eq!(c.icount_shift, Some(1));
        assert_eq!(c.record_replay, Some(RecordReplayConfig { replay: false, file: "/tmp/r".into() }));
        let c = ok(&["-icount", "shift=auto,rr=replay,rrfile=x,sleep=on", "k"]);
        assert_eq!(c.record_replay, Some(RecordReplayConfig { replay: true, file: "x".into() }));
        assert!(matches!(err(&["-icount", "shift=1,rr=record", "k"]), CliError::RecordReplayNeedsFile(_)));
        assert!(matches!(err(&["-icount", "shift=1,rr=rewind,rrfile=x", "k"]), CliError::InvalidIcount(_)));
    }

    #[test]
    fn cache_size_spellings() {
        assert_eq!(ok(&["--cache-size", "64K", "k"]).cache_bytes, Some(64 * 1024));
        assert_eq!(ok(&["-accel", "tcg,tb-size=32", "k"]).cache_bytes, Some(32 * MIB));
        assert!(parse(&["--cache-size", "1K", "k"]).is_err());
        assert!(parse(&["--cache-size", "x", "k"]).is_err());
    }

    #[test]
    fn log_file_and_stats() {
        let c = ok(&["-D", "/tmp/log", "--stats", "k"]);
        assert_eq!(c.log_file, Some(PathBuf::from("/tmp/log")));
        assert!(c.stats);
        assert!(ok(&["-stats", "k"]).stats);
        assert!(ok(&["--soft-mmu", "k"]).soft_mmu);
        assert!(!ok(&["k"]).soft_mmu);
        assert_eq!(ok(&["--text-screen", "/tmp/s", "k"]).text_screen, Some(PathBuf::from("/tmp/s")));
    }

    #[test]
    fn qemu_compat_options_are_ignored() {
        let c = ok(&[
            "-display",
            "none",
            "-nographic",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x4",
            "-accel",
            "tcg",
            "-machine",
            "pc",
            "-M",
            "isapc",
            "-cpu",
            "pentium",
            "-smp",
            "1",
            "-nodefaults",
            "-monitor",
            "none",
            "-kernel",
            "k",
            "-m",
            "32M",
            "-serial",
            "stdio",
        ]);
        assert_eq!(c.image, PathBuf::from("k"));
        assert_eq!(c.mem_bytes, 32 * MIB);
        assert!(parse(&["-device", "isa-debug-exit", "k"]).is_ok());
        assert!(parse(&["-smp", "cpus=1", "k"]).is_ok());
        assert_eq!(ok(&["-smp", "4", "k"]).cpus, 4);
        assert_eq!(ok(&["-smp", "4", "k"]).machine, Machine::Pc, "several CPUs imply -M pc");
        assert_eq!(ok(&["-smp", "cpus=2,maxcpus=2", "k"]).cpus, 2);
        assert_eq!(ok(&["-smp", "sockets=2,cores=2,threads=1", "k"]).cpus, 4);
        assert!(matches!(err(&["-smp", "2", "-M", "isapc", "k"]), CliError::SmpNeedsPc(2)));
        assert!(matches!(err(&["-smp", "2", "-s", "k"]), CliError::GdbWithSmp));
        assert!(matches!(err(&["-smp", "2", "-icount", "shift=1", "k"]), CliError::IcountWithSmp));
        assert!(parse(&["-accel", "tcg,thread=single", "k"]).is_ok());
        assert_eq!(c.machine, Machine::IsaPc, "the last -M wins");
        assert_eq!(ok(&["-M", "pc,accel=tcg", "k"]).machine, Machine::Pc);
        assert!(matches!(err(&["-M", "q35", "k"]), CliError::UnsupportedMachine(m) if m == "q35"));
    }

    #[test]
    fn unsupported_compat_values_are_errors_naming_them() {
        let cases: &[(&[&str], &str)] = &[
            (&["-device", "e1000", "k"], "e1000"),
            (&["-display", "gtk", "k"], "gtk"),
            (&["-accel", "hvf", "k"], "hvf"),
            (&["-smp", "40", "k"], "40"),
            (&["-smp", "0", "k"], "0"),
            (&["-monitor", "stdio", "k"], "stdio"),
        ];
        for (args, name) in cases {
            let e = err(args);
            assert!(e.to_string().contains(name), "{args:?}: {e}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn kvm_is_rejected_clearly() {
        let e = err(&["-enable-kvm", "k"]);
        assert!(matches!(e, CliError::KvmNotUsed(_)));
        assert!(e.to_string().contains("KVM"));
        assert!(matches!(err(&["-accel", "kvm", "k"]), CliError::KvmNotUsed(_)));
    }

    #[test]
    fn gdb_stub_options() {
        let c = ok(&["-s", "k"]);
        assert_eq!(c.gdb, Some(GdbConfig { address: "0.0.0.0:1234".into(), wait: false }));
        let c = ok(&["-gdb", "tcp:127.0.0.1:4321", "-S", "k"]);
        assert_eq!(c.gdb, Some(GdbConfig { address: "127.0.0.1:4321".into(), wait: true }));
        assert_eq!(ok(&["k"]).gdb, None);
        assert!(matches!(err(&["-S", "k"]), CliError::FreezeWithoutGdb));
        assert!(matches!(err(&["-gdb", "unix:/tmp/g", "k"]), CliError::UnsupportedGdb(_)));
    }

    #[test]
    fn unknown_options_are_clap_errors() {
        let e = err(&["--hda", "x", "k"]);
        assert!(matches!(e, CliError::Clap(_)));
        assert!(!e.is_informational());
        let e = err(&["--bogus", "k"]);
        assert!(matches!(e, CliError::Clap(_)));
    }

    #[test]
    fn help_and_version_are_informational() {
        for flag in ["--help", "-help", "-h", "--version", "-version"] {
            let e = err(&[flag]);
            assert!(e.is_informational(), "{flag}: {e}");
        }
    }

    #[test]
    fn rewrite_leaves_values_and_double_dash_alone() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            rewrite_qemu_style(args(&["prog", "-kernel", "-append", "-m", "-kernel", "--", "-serial"])),
            args(&["prog", "--kernel", "-append", "-m", "-kernel", "--", "-serial"])
        );
        assert_eq!(
            rewrite_qemu_style(args(&["-kernel", "-nographic", "-d", "-nographic", "x"])),
            args(&["-kernel", "--nographic", "-d", "-nographic", "x"])
        );
    }
}
