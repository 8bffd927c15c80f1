//! The random-program fuzzer: no guest may crash or wedge the monitor.
//!
//! `program` builds a random guest kernel from a seed; this module runs
//! btvisor on it as a separate process (so a crash of the monitor is
//! observed, not suffered) and classifies how the run ended. A guest may
//! end only as a guest ends on hardware or QEMU: a halt, a triple fault, an
//! exception before it had an IDT, a debug-exit status, or running until
//! the time limit. Anything else is a host failure: death by a signal, an
//! exit status no guest can produce (an internal error, a panic), a panic or
//! allocation message, a flood of log lines, or unbounded memory.
//!
//! The `btvisor-fuzz` command runs campaigns (`scripts/fuzz-campaign.sh`
//! runs a long one); `tests/fuzz.rs` runs a bounded one and every saved
//! failure in `guest-images/fuzz/`.

pub mod program;
pub mod rng;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Guest RAM of a fuzz run.
pub const GUEST_RAM: &str = "32M";
/// More stderr lines than this is a log flood (guest-caused warnings must
/// be rate-limited).
pub const MAX_STDERR_LINES: usize = 40;
/// Resident memory beyond this is unbounded growth (the guest has 32 MiB).
pub const MAX_RSS_KIB: u64 = 1 << 20;
/// Stderr kept for a report.
const STDERR_KEEP: usize = 16 << 10;

/// How a guest ended (none of these is a failure of the monitor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GuestEnd {
    Halted,
    TripleFault,
    /// An exception before the guest loaded an IDT.
    Exception,
    /// isa-debug-exit: the exit status.
    DebugExit(u8),
    /// Still running at the time limit (a guest loop with interrupts off).
    TimeLimit,
}

/// One run of btvisor.
pub struct Run {
    /// None: killed at the time limit.
    pub status: Option<ExitStatus>,
    pub stderr: String,
    pub stderr_lines: usize,
    pub max_rss_kib: u64,
    pub elapsed: Duration,
}

/// Classify a run: how the guest ended, or what went wrong in the monitor.
pub fn classify(run: &Run) -> Result<GuestEnd, String> {
    for bad in ["panicked at", "internal error", "memory allocation", "RUST_BACKTRACE"] {
        if run.stderr.contains(bad) {
            return Err(format!("stderr says `{bad}`"));
        }
    }
    if run.stderr_lines > MAX_STDERR_LINES {
        return Err(format!("log flood: {} lines on stderr", run.stderr_lines));
    }
    if run.max_rss_kib > MAX_RSS_KIB {
        return Err(format!("memory growth: {} MiB resident", run.max_rss_kib >> 10));
    }
    let Some(status) = run.status else { return Ok(GuestEnd::TimeLimit) };
    if let Some(sig) = status.signal() {
        return Err(format!("killed by signal {sig}"));
    }
    match status.code() {
        Some(0) => Ok(GuestEnd::Halted),
        Some(2) => Ok(GuestEnd::TripleFault),
        Some(4) => Ok(GuestEnd::Exception),
        Some(c) if c & 1 == 1 => Ok(GuestEnd::DebugExit(c as u8)),
        c => Err(format!("exit status {c:?}, which no guest can cause")),
    }
}

/// Run `btvisor` on the Multiboot image `image` (on `-M pc` with `apic`),
/// killing it after `limit`.
pub fn run_image(btvisor: &Path, image: &Path, limit: Duration, apic: bool) -> std::io::Result<Run> {
    let mut child = Command::new(btvisor)
        .args(["-m", GUEST_RAM, "-display", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4"])
        .args(["-M", if apic { "pc" } else { "isapc" }])
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut err = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        // Count every line, keep the first STDERR_KEEP bytes.
        let (mut kept, mut lines, mut buf) = (Vec::new(), 0usize, [0u8; 4096]);
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
            let room = STDERR_KEEP.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        (String::from_utf8_lossy(&kept).into_owned(), lines)
    });
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let mut raw = 0;
    // SAFETY: rusage is plain old data; zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut killed = false;
    loop {
        // SAFETY: waits for our own child; status and usage are valid
        // out-pointers for the duration of the call.
        let r = unsafe { libc::wait4(pid, &mut raw, if killed { 0 } else { libc::WNOHANG }, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        if start.elapsed() > limit {
            // SAFETY: signals our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
            continue;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = start.elapsed();
    let (stderr, stderr_lines) = reader.join().unwrap_or_default();
    Ok(Run {
        status: (!killed).then(|| ExitStatus::from_raw(raw)),
        stderr,
        stderr_lines,
        max_rss_kib: usage.ru_maxrss.max(0) as u64,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(code: Option<i32>, signal: Option<i32>, stderr: &str) -> Run {
        let status = match (code, signal) {
            (Some(c), _) => Some(ExitStatus::from_raw(c << 8)),
            (None, Some(s)) => Some(ExitStatus::from_raw(s)),
            _ => None,
        };
        Run {
            status,
            stderr: stderr.into(),
            stderr_lines: stderr.lines().count(),
            max_rss_kib: 1000,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn guest_endings_and_host_failures_are_told_apart() {
        assert_eq!(classify(&run(Some(0), None, "btvisor: guest halted")), Ok(GuestEnd::Halted));
        assert_eq!(classify(&run(Some(2), None, "")), Ok(GuestEnd::TripleFault));
        assert_eq!(classify(&run(Some(4), None, "")), Ok(GuestEnd::Exception));
        assert_eq!(classify(&run(Some(0x21), None, "")), Ok(GuestEnd::DebugExit(0x21)));
        assert_eq!(classify(&run(None, None, "")), Ok(GuestEnd::TimeLimit));
        assert!(classify(&run(None, Some(libc::SIGABRT), "")).is_err());
        assert!(classify(&run(Some(101), None, "thread 'main' panicked at src/x.rs")).is_err());
        assert!(classify(&run(Some(70), None, "btvisor: internal error: x")).is_err());
        assert!(classify(&run(Some(70), None, "")).is_err(), "an even status no guest gives");
        let flood = "warning\n".repeat(MAX_STDERR_LINES + 1);
        assert!(classify(&run(Some(0), None, &flood)).is_err());
        let mut big = run(Some(0), None, "");
        big.max_rss_kib = MAX_RSS_KIB + 1;
        assert!(classify(&big).is_err());
    }
}
