//! The `btvisor` command: boot a Multiboot kernel as `qemu-system-i386
//! -kernel` does and run it to completion.
//!
//! Exit status: the isa-debug-exit status `(V << 1) | 1` when the guest
//! writes V to port 0xF4; otherwise one of the `vm::status` constants.

use std::process::ExitCode;

use btvisor::cli::{self, CliError};
use btvisor::cpu::vector;
use btvisor::exec::RunOutcome;
use btvisor::vm::{self, status};

fn main() -> ExitCode {
    // The decoder's tables build while the options parse and the images
    // load (the second core is otherwise idle then).
    std::thread::spawn(btvisor::exec::warm_up_decoder);
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let config = match cli::parse_args(std::env::args_os()) {
        Ok(c) => c,
        Err(CliError::Clap(e)) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(status::RUNNER_ERROR);
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
            return ExitCode::from(status::RUNNER_ERROR);
        }
    };
    let mut engines = match vm::build_machine(&config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("btvisor: {e}");
            return ExitCode::from(status::RUNNER_ERROR);
        }
    };
    let outcome = match &config.gdb {
        None => btvisor::exec::smp::run_machine(&mut engines),
        Some(gdb) => match btvisor::gdb::run(&mut engines[0], &gdb.address, gdb.wait) {
            Ok(btvisor::gdb::Ending::Outcome(out)) => out,
            Ok(btvisor::gdb::Ending::Killed) => {
                eprintln!("btvisor: killed by the debugger");
                return ExitCode::from(status::HALTED);
            }
            Err(e) => {
                eprintln!("btvisor: {e}");
                return ExitCode::from(status::RUNNER_ERROR);
            }
        },
    };
    for e in &mut engines {
        // Nothing uses them after this; the other destructors (the serial
        // port's flush, the terminal's mode) still run.
        e.mem.leave_mapped_at_exit();
        e.cache.leave_mapped_at_exit();
    }
    let engine = &mut engines[0];
    if let Some(path) = &config.text_screen
        && let Err(e) = std::fs::write(path, btvisor::devices::vga::text_screen(&engine.mem))
    {
        eprintln!("btvisor: writing the text screen to {}: {e}", path.display());
    }
    if config.stats {
        eprint!("{}", engine.stats.report(engine.cache.used(), engine.cache.size()));
    }
    match &outcome {
        RunOutcome::DebugExit(code) => return ExitCode::from(*code as u8),
        RunOutcome::Halted { eip, interrupts_enabled } => {
            if *interrupts_enabled {
                eprintln!("btvisor: guest halted at {eip:#010x} with interrupts enabled but no interrupt source");
            } else {
                eprintln!("btvisor: guest halted at {eip:#010x} with interrupts disabled");
            }
        }
        RunOutcome::Exception { vector: v, error_code, eip } => {
            let code = error_code.map(|c| format!(" error code {c:#x}")).unwrap_or_default();
            eprintln!("btvisor: unhandled guest exception {v} ({}){code} at {eip:#010x}", vector::name(*v));
        }
        RunOutcome::TripleFault { eip } => {
            eprintln!("btvisor: triple fault at {eip:#010x}: the guest CPU shut down");
        }
        RunOutcome::Unsupported(feature) => {
            eprintln!("btvisor: the guest entered {feature}, which btvisor does not support");
        }
        RunOutcome::InternalError(msg) => {
            eprintln!("btvisor: internal error: {msg}");
        }
        RunOutcome::Stopped => {}
        RunOutcome::DebugStop(stop) => {
            eprintln!("btvisor: stopped for a debugger that is gone ({stop:?})");
        }
    }
    let status = vm::exit_status(&outcome);
    eprintln!("{}", engine.cpu.dump());
    ExitCode::from(status)
}
