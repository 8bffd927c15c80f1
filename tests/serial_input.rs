//! Serial input: host stdin reaches the guest through COM1's receive
//! interrupt. Boots guest-images/echo.elf (see guest-images/src/echo), which
//! echoes what it receives in upper case from its IRQ 4 handler and exits
//! on `q`, and feeds it input through a pipe.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Run {
    status: Option<std::process::ExitStatus>, // None: killed after TIMEOUT
    stdout: String,
    stderr: String,
}

/// Run btvisor on `image` from the crate root, writing `chunks` to its stdin
/// `gap` apart (then closing it), killing it after TIMEOUT.
fn run_with_input(image: &str, chunks: &'static [&'static [u8]], gap: Duration) -> Run {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_btvisor"))
        .arg(image)
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to spawn btvisor");
    // Write on a thread (a guest that never reads must not block the test)
    // and drop the pipe afterwards so btvisor sees end of input.
    let mut stdin = child.stdin.take().unwrap();
    let t_in = std::thread::spawn(move || {
        for (i, chunk) in chunks.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(gap);
            }
            if stdin.write_all(chunk).and_then(|()| stdin.flush()).is_err() {
                break;
            }
        }
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait failed") {
            break Some(s);
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = t_in.join();
    Run {
        status,
        stdout: String::from_utf8_lossy(&t_out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
    }
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
