//! The `btvisor` command: boot a Multiboot kernel as `qemu-system-i386
//! -kernel` does and run it to completion.
//!
//! Exit status: the isa-debug-exit status `(V << 1) | 1` when the guest
//! writes V to port 0xF4; otherwise one of the `EXIT_*` constants below.

use std::process::ExitCode;

use btvisor::cli::{self, CliError};
use btvisor::cpu::vector;
use btvisor::exec::RunOutcome;
use btvisor::vm;

/// The guest executed HLT with interrupts disabled: it stopped for good.
const EXIT_HALTED: u8 = 0;
/// Bad options, or an unreadable or invalid image (QEMU's status for a
/// failed start).
const EXIT_RUNNER_ERROR: u8 = 1;
/// An internal error of the monitor (sysexits' EX_SOFTWARE): even, so no
/// isa-debug-exit status `(V << 1) | 1` can be mistaken for it.
const EXIT_INTERNAL_ERROR: u8 = 70;
/// The guest triple-faulted (a fault while delivering a double fault).
const EXIT_TRIPLE_FAULT: u8 = 2;
/// The guest took an exception before it loaded an IDT.
const EXIT_GUEST_EXCEPTION: u8 = 4;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let config = match cli::parse_args(std::env::args_os()) {
        Ok(c) => c,
        Err(CliError::Clap(e)) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EXIT_RUNNER_ERROR);
        }
        Err(e) if e.is_informational() => {
            if let CliError::Clap(c) = &e {
                let _ = c.print();
            } else {
                println!("{e}");
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("btvisor: {e}");
            return ExitCode::from(EXIT_RUNNER_ERROR);
        }
    };
    let mut engine = match vm::build(&config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("btvisor: {e}");
            return ExitCode::from(EXIT_RUNNER_ERROR);
        }
    };
    let outcome = engine.run();
    if let Some(path) = &config.text_screen {
        if let Err(e) = std::fs::write(path, btvisor::devices::vga::text_screen(&engine.mem)) {
            eprintln!("btvisor: writing the text screen to {}: {e}", path.display());
        }
    }
    if config.stats {
        eprint!("{}", engine.stats.report(engine.cache.used(), engine.cache.size()));
    }
    let status = match outcome {
        RunOutcome::DebugExit(code) => return ExitCode::from(code as u8),
        RunOutcome::Halted { eip, interrupts_enabled } => {
            if interrupts_enabled {
                eprintln!("btvisor: guest halted at {eip:#010x} with interrupts enabled but no interrupt source");
            } else {
                eprintln!("btvisor: guest halted at {eip:#010x} with interrupts disabled");
            }
            EXIT_HALTED
        }
        RunOutcome::Exception { vector: v, error_code, eip } => {
            let code = error_code.map(|c| format!(" error code {c:#x}")).unwrap_or_default();
            eprintln!("btvisor: unhandled guest exception {v} ({}){code} at {eip:#010x}", vector::name(v));
            EXIT_GUEST_EXCEPTION
        }
        RunOutcome::TripleFault { eip } => {
            eprintln!("btvisor: triple fault at {eip:#010x}: the guest CPU shut down");
            EXIT_TRIPLE_FAULT
        }
        RunOutcome::Unsupported(feature) => {
            eprintln!("btvisor: the guest entered {feature}, which btvisor does not support");
            EXIT_RUNNER_ERROR
        }
        RunOutcome::InternalError(msg) => {
            eprintln!("btvisor: internal error: {msg}");
            EXIT_INTERNAL_ERROR
        }
    };
    eprintln!("{}", engine.cpu.dump());
    ExitCode::from(status)
}
