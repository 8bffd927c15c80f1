//! Running the btvisor binary from integration tests: from the crate root,
//! with input fed to its stdin, output drained on threads, killed after a
//! timeout.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Run {
    /// None: killed after the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Run btvisor with `args`, writing `chunks` to its stdin `gap` apart (then
/// closing it), killing it after `timeout`.
pub fn run_btvisor(args: &[String], chunks: &'static [&'static [u8]], gap: Duration, timeout: Duration) -> Run {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_btvisor"))
        .args(args)
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to spawn btvisor");
    // Write on a thread (a guest that never reads must not block the test)
    // and drop the pipe afterwards so btvisor sees end of input.
    let mut stdin = child.stdin.take().expect("piped stdin");
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
    // Drain the pipes on threads so a chatty guest cannot block on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let t_out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let t_err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait failed") {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = t_in.join();
    Run {
        status,
        stdout: String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned(),
    }
}
