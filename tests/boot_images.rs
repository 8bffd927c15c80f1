//! Boots each guest image under btvisor and compares against the golden
//! output recorded from QEMU (guest-images/expected/<name>.{out,status,args}).
//!
//! Images are run from the crate root with the relative path
//! `guest-images/<name>.elf` because the Multiboot command line (as QEMU
//! builds it) is "<kernel path> <append>", and hello prints it.

use std::path::{Path, PathBuf};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Every image with a golden output; `all_expected_images_have_tests`
/// keeps this in sync with guest-images/expected/.
const IMAGES: &[&str] = &[
    "hello",
    "hello-aout",
    "insn",
    "insn-sse",
    "compute",
    "smc",
    "paging",
    "pm",
    "pmtask",
    "pmfpu",
    "pmdebug",
    "irq",
    "devmem",
    "mbinfo",
    "pm-ac",
    "pm-ss",
    "lapic",
    "lapic-reloc",
    "ioapic",
    "smp",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

mod common;

use common::run::Run;

/// Run btvisor with `args` from the crate root (no input), killing it after TIMEOUT.
fn run_btvisor(args: &[String]) -> Run {
    common::run::run_btvisor(args, &[], Duration::ZERO, TIMEOUT)
}

/// Line diff good enough for golden outputs: lists differing lines.
fn diff(want: &str, got: &str) -> String {
    let w: Vec<&str> = want.lines().collect();
    let g: Vec<&str> = got.lines().collect();
    let mut s = String::new();
    let mut shown = 0;
    for i in 0..w.len().max(g.len()) {
        let (a, b) = (w.get(i), g.get(i));
        if a != b {
            if shown == 40 {
                s.push_str("  ... (more differences)\n");
                break;
            }
            shown += 1;
            s.push_str(&format!("  line {}:\n", i + 1));
            s.push_str(&format!("    - want: {}\n", a.map_or("<missing>".into(), |l| format!("{l:?}"))));
            s.push_str(&format!("    + got:  {}\n", b.map_or("<missing>".into(), |l| format!("{l:?}"))));
        }
    }
    if s.is_empty() && want != got {
        s.push_str("  (only trailing newline / line ending differs)\n");
    }
    s
}

fn boot_and_compare(name: &str) {
    boot_and_compare_with(name, &[]);
}

/// `boot_and_compare` with extra btvisor options.
fn boot_and_compare_with(name: &str, extra: &[&str]) {
    boot_image_and_compare(name, name, extra);
}

/// `boot_and_compare_with` of image `image` against golden files `name`.
fn boot_image_and_compare(name: &str, image: &str, extra: &[&str]) {
    let exp = root().join("guest-images/expected");
    let read = |ext: &str| std::fs::read_to_string(exp.join(format!("{name}.{ext}")));
    let want_out = read("out").expect("missing golden .out");
    let want_status: i32 = read("status").expect("missing golden .status").trim().parse().expect("bad .status");
    let image = ["elf", "bin"]
        .iter()
        .map(|e| format!("guest-images/{image}.{e}"))
        .find(|p| root().join(p).exists())
        .unwrap_or_else(|| panic!("no image for {image}"));

    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(["-serial".to_string(), "stdio".to_string(), image]);
    if let Ok(a) = read("args") {
        args.push("-append".into());
        args.push(a.trim_end_matches('\n').to_string());
    }
    let r = run_btvisor(&args);

    let mut problems = String::new();
    match r.status {
        None => problems.push_str(&format!("timed out after {TIMEOUT:?} (killed)\n")),
        Some(s) if s.code() != Some(want_status) => {
            problems.push_str(&format!("exit status: want {want_status}, got {s}\n"))
        }
        _ => {}
    }
    if r.stdout != want_out {
        problems.push_str(&format!("serial output differs:\n{}", diff(&want_out, &r.stdout)));
    }
    assert!(problems.is_empty(), "image {name}: btvisor {}\n{problems}--- stderr ---\n{}", args.join(" "), r.stderr);
}

/// The soft-TLB form of memory accesses (normally only for instructions
/// that keep faulting) must give the same results for every access the
/// instruction, protected-mode and paging kernels make.
#[test]
fn soft_mmu_matches_golden() {
    for name in ["insn", "insn-sse", "smc", "pm", "pmfpu", "pmdebug", "paging", "irq"] {
        boot_and_compare_with(name, &["--soft-mmu"]);
    }
}

/// The paging kernel writes a line into the VGA text buffer through a page
/// mapping device memory; `--text-screen` renders what the device holds.
#[test]
fn vga_text_screen_through_paging() {
    let out = std::env::temp_dir().join(format!("btvisor-screen-{}.txt", std::process::id()));
    let args: Vec<String> = ["--text-screen", &out.display().to_string(), "-serial", "null", "guest-images/paging.elf"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let r = run_btvisor(&args);
    let screen = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    assert_eq!(r.status.and_then(|s| s.code()), Some(1), "stderr: {}", r.stderr);
    assert_eq!(screen.lines().next(), Some("PAGING MMIO OK"), "screen:\n{screen}");
}

#[test]
fn boot_hello() {
    boot_and_compare("hello");
}

#[test]
fn boot_hello_aout() {
    boot_and_compare("hello-aout");
}

#[test]
fn boot_insn() {
    boot_and_compare("insn");
}

#[test]
fn boot_insn_sse() {
    boot_and_compare("insn-sse");
}

#[test]
fn boot_compute() {
    boot_and_compare("compute");
}

#[test]
fn boot_smc() {
    boot_and_compare("smc");
}

#[test]
fn boot_paging() {
    boot_and_compare("paging");
}

#[test]
fn boot_irq() {
    boot_and_compare("irq");
}

#[test]
fn boot_pm() {
    boot_and_compare("pm");
}

#[test]
fn boot_pmtask() {
    boot_and_compare("pmtask");
}

#[test]
fn boot_pmfpu() {
    boot_and_compare("pmfpu");
}

#[test]
fn boot_pmdebug() {
    boot_and_compare("pmdebug");
}

#[test]
fn boot_devmem() {
    boot_and_compare("devmem");
}

#[test]
fn devmem_soft_mmu() {
    // The same instructions in the soft-TLB form (a soft miss on device
    // memory takes the same bounce path).
    boot_and_compare_with("devmem", &["--soft-mmu"]);
}

/// Multiboot modules (-initrd "FILE ARGS,FILE") and the information laid
/// out where QEMU lays it out. (QEMU's output: qemu-system-i386 -kernel
/// guest-images/mbinfo.elf -append "a b" -initrd "guest-images/hello.elf
/// arg1,guest-images/echo.elf" -m 128M ...)
#[test]
fn boot_mbinfo() {
    boot_and_compare_with("mbinfo", &["-m", "128M", "-initrd", "guest-images/hello.elf arg1,guest-images/echo.elf"]);
}

/// Alignment checks: #AC(0) at ring 3 with CR0.AM and EFLAGS.AC, none at
/// ring 0 or without either. QEMU TCG does not implement #AC (its run of
/// `pm ac=1` fails these checks), so the golden output is the SDM's: every
/// check passes.
#[test]
fn boot_pm_alignment_check() {
    boot_image_and_compare("pm-ac", "pm", &[]);
}

/// Stack-segment limits: PUSH/POP, [ebp+d] and SS: operands beyond a small
/// expand-up SS or at/below an expand-down SS limit are #SS(0) at the
/// instruction with ESP unchanged. QEMU TCG does not check segment limits
/// (its run of `pm ss=1` sees none of the 7 faults), so the golden output
/// is the SDM's: every check passes. Also in the soft-TLB form.
#[test]
fn boot_pm_stack_segment_limits() {
    boot_image_and_compare("pm-ss", "pm", &[]);
    boot_image_and_compare("pm-ss", "pm", &["--soft-mmu"]);
}

/// The local APIC of `-M pc` (QEMU's golden output with three lines where
/// QEMU departs from the SDM set to the SDM's values; see lapic/kernel.c),
/// with the device reached through the shadow window and the soft TLB.
#[test]
fn boot_lapic() {
    boot_and_compare_with("lapic", &["-M", "pc"]);
    boot_and_compare_with("lapic", &["-M", "pc", "--soft-mmu"]);
}

/// The APIC base MSR: relocation of the register page and the global
/// disable. QEMU does not move the page (its run fails the 3 checks that
/// use the new address), so this golden has the SDM's values.
#[test]
fn boot_lapic_relocation() {
    boot_image_and_compare("lapic-reloc", "lapic", &["-M", "pc"]);
}

/// The I/O APIC of `-M pc` (QEMU's golden output), PIT and RTC lines
/// routed through it.
#[test]
fn boot_ioapic() {
    boot_and_compare_with("ioapic", &["-M", "pc"]);
}

/// Four CPUs (QEMU's golden output): INIT/STARTUP into real-mode start-up
/// code, spinlocks, IPIs, a TLB shootdown and cross-modifying code; also
/// with more vCPUs than host cores and with the soft TLB.
#[test]
fn boot_smp() {
    boot_and_compare_with("smp", &["-M", "pc", "-smp", "4"]);
    boot_and_compare_with("smp", &["-smp", "cpus=4", "--soft-mmu"]);
}

#[test]
fn non_multiboot_file_is_rejected() {
    let r = run_btvisor(&["-serial".into(), "stdio".into(), "Cargo.toml".into()]);
    let code = r.status.and_then(|s| s.code());
    assert_eq!(code, Some(1), "want exit status 1, got {:?}; stderr:\n{}", r.status, r.stderr);
    assert!(r.stderr.contains("Multiboot"), "stderr should explain the missing Multiboot header, got:\n{}", r.stderr);
}

#[test]
fn all_expected_images_have_tests() {
    let dir = root().join("guest-images/expected");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .expect("guest-images/expected missing")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "out").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    found.sort();
    let mut listed: Vec<String> = IMAGES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed, "add a #[test] per image in {}", Path::new(file!()).display());
}
