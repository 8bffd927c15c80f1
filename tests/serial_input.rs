//! Serial input: host stdin reaches the guest through COM1's receive
//! interrupt. Boots guest-images/echo.elf (see guest-images/src/echo), which
//! echoes what it receives in upper case from its IRQ 4 handler and exits
//! on `q`, and feeds it input through a pipe.

use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(20);

mod common;

use common::run::{Run, run_btvisor};

/// Run btvisor on `image`, writing `chunks` to its stdin `gap` apart.
fn run_with_input(image: &str, chunks: &'static [&'static [u8]], gap: Duration) -> Run {
    run_btvisor(&[image.to_string()], chunks, gap, TIMEOUT)
}

/// Checks a finished echo run: exact output and exit status 1 (V=0).
fn check_echo(run: Run, want: &str) {
    let Some(status) = run.status else {
        panic!("btvisor did not exit within {TIMEOUT:?}\nstdout: {:?}\nstderr:\n{}", run.stdout, run.stderr);
    };
    assert_eq!(run.stdout, want, "stderr:\n{}", run.stderr);
    // isa-debug-exit with V=0: exit status (0 << 1) | 1
    assert_eq!(status.code(), Some(1), "stderr:\n{}", run.stderr);
}

#[test]
fn echo_kernel_receives_stdin_through_irq4() {
    // "hello\n" echoed in upper case; `q` is not echoed, it prints "bye".
    let run = run_with_input("guest-images/echo.elf", &[b"hello\nq"], Duration::ZERO);
    check_echo(run, "echo ready\nHELLO\nbye\n");
}

#[test]
fn input_arriving_while_halted_wakes_the_guest() {
    // Later chunks arrive while the guest sits in `sti; hlt` with no timer
    // running: only the input can wake it. CR is echoed as CR LF.
    let chunks: &[&[u8]] = &[b"ab", b"c\r", b"Z1q"];
    let run = run_with_input("guest-images/echo.elf", chunks, Duration::from_millis(200));
    check_echo(run, "echo ready\nABC\r\nZ1bye\n");
}
