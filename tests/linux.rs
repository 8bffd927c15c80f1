//! Debian's i386 kernel and BusyBox under btvisor (guest-images/linux/):
//! the batch image's output and exit status, the static test programs
//! against the same binaries run on the host, and an interactive shell
//! driven through a pseudo-terminal.
//!
//! The guest is fetched and built by `guest-images/linux/build.sh` (the
//! README's test command runs it first). Without it these tests fail with a
//! message saying so: they never pass silently.

mod common;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::run::run_btvisor;

const TIMEOUT: Duration = Duration::from_secs(120);

/// One guest at a time: the machine has two cores, and a guest starved by
/// its neighbours would calibrate its TSC against a PIT it cannot read in
/// time, as a preempted real machine would.
static ONE_GUEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_guest() -> std::sync::MutexGuard<'static, ()> {
    ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner())
}
/// The batch images end through isa-debug-exit with 0x20 + status.
const BATCH_PASS_STATUS: i32 = (0x20 << 1) | 1;

fn out_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guest-images/linux/out");
    for f in ["bzImage", "batch.cpio.gz", "shell.cpio.gz", "progs.cpio.gz"] {
        assert!(
            d.join(f).exists(),
            "the Linux guest is missing ({}): run guest-images/linux/build.sh first \
             (it fetches Debian's i386 kernel and busybox-static with apt-get, as root)",
            d.join(f).display()
        );
    }
    d
}

fn linux_args(initrd: &str, append: &str) -> Vec<String> {
    let d = out_dir();
    vec![
        "-kernel".into(),
        d.join("bzImage").display().to_string(),
        "-initrd".into(),
        d.join(initrd).display().to_string(),
        "-append".into(),
        append.into(),
        "-m".into(),
        "256M".into(),
        "-display".into(),
        "none".into(),
    ]
}

/// The guest's output after /init started, with \r removed.
fn guest_output(stdout: &str) -> String {
    let s = stdout.replace('\r', "");
    match s.find("btvisor-init: mode") {
        Some(i) => s[i..].to_string(),
        None => panic!("/init never ran; console output:\n{s}"),
    }
}

/// A kernel console message ("[    3.892629] clocksource: ..."): the kernel
/// may print one in the middle of the workload's output.
fn is_kernel_message(line: &str) -> bool {
    line.strip_prefix('[').and_then(|r| r.split_once("] ")).is_some_and(|(t, _)| {
        let t = t.trim_start();
        !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.')
    })
}

/// Splits "== name" sections into (name, body) pairs.
fn sections(out: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    for line in out.lines().filter(|l| !is_kernel_message(l)) {
        if let Some(name) = line.strip_prefix("== ") {
            v.push((name.to_string(), String::new()));
        } else if let Some(last) = v.last_mut() {
            last.1.push_str(line);
            last.1.push('\n');
        }
    }
    v
}

fn run_batch(append: &str) {
    let _one = one_guest();
    let r = run_btvisor(&linux_args("batch.cpio.gz", append), &[], Duration::ZERO, TIMEOUT);
    let out = guest_output(&r.stdout);
    assert_eq!(
        r.status.and_then(|s| s.code()),
        Some(BATCH_PASS_STATUS),
        "batch image status; output:\n{out}\nstderr:\n{}",
        r.stderr
    );
    let s = sections(&out);
    let get = |n: &str| s.iter().find(|(k, _)| k == n).map(|(_, b)| b.trim().to_string()).unwrap_or_default();
    let check = |n: &str, want: &str| assert_eq!(get(n), want, "section {n}; whole output:\n{out}");
    check("uname", "Linux i686");
    check("pipeline", "2668667000");
    check("sort", "500 499 498");
    check("checksum", "72d4ff27a28afbc066d5804999d5a504\n8060aa0ac20a3e5d");
    check("fork", "20");
    check("subshell", "exit status 3");
    // ash reports "Terminated" only when it reaps the job before `wait`
    // runs, which is a race inside the guest (as on hardware).
    assert_eq!(get("kill").trim_start_matches("Terminated\n"), "killed: 143", "{out}");
    // `sleep 1` measured by the guest's uptime (10 ms units), including the
    // fork and exec of the sleep and the two readings.
    let slept: u32 = get("sleep").trim_start_matches("slept_cs ").parse().unwrap_or(0);
    assert!((100..=125).contains(&slept), "sleep 1 took {slept} cs of guest time");
    assert!(out.contains("== ok"), "{out}");
}

#[test]
fn linux_batch_image_runs_busybox_workload() {
    run_batch("console=ttyS0");
}

/// `-M pc`: the kernel finds the MP tables btvisor writes, runs the local
/// APIC and the I/O APIC (symmetric I/O mode, the PIT on pin 2), and the
/// batch workload passes.
#[test]
fn linux_batch_image_with_apics() {
    let _one = one_guest();
    let mut args = linux_args("batch.cpio.gz", "console=ttyS0");
    args.extend(["-M".to_string(), "pc".to_string()]);
    let r = run_btvisor(&args, &[], Duration::ZERO, TIMEOUT);
    let out = r.stdout.replace('\r', "");
    assert_eq!(r.status.and_then(|s| s.code()), Some(BATCH_PASS_STATUS), "{out}\n{}", r.stderr);
    for want in ["MPTABLE: OEM ID: BTVISOR", "IOAPIC[0]: apic_id 1", "Enabling APIC mode:  Flat.  Using 1 I/O APICs"] {
        assert!(out.contains(want), "`{want}` missing:\n{out}");
    }
}

/// `-smp 2`: Linux finds both CPUs in the MP table, starts the second with
/// INIT/STARTUP through its real-mode trampoline, and runs the batch
/// workload (fork, pipes, signals) across both.
#[test]
fn linux_batch_image_on_two_cpus() {
    let _one = one_guest();
    let mut args = linux_args("batch.cpio.gz", "console=ttyS0");
    args.extend(["-smp".to_string(), "2".to_string()]);
    let r = run_btvisor(&args, &[], Duration::ZERO, TIMEOUT);
    let out = r.stdout.replace('\r', "");
    assert_eq!(r.status.and_then(|s| s.code()), Some(BATCH_PASS_STATUS), "{out}\n{}", r.stderr);
    for want in ["smpboot: Allowing 2 CPUs", "smp: Brought up 1 node, 2 CPUs", "Total of 2 processors activated"] {
        assert!(out.contains(want), "`{want}` missing:\n{out}");
    }
    for unwanted in ["APIC id mismatch", "BUG:", "WARNING:", "Stuck"] {
        assert!(!out.contains(unwanted), "`{unwanted}` in:\n{out}");
    }
}

#[test]
fn linux_batch_image_without_kaslr() {
    run_batch("console=ttyS0 nokaslr");
}

#[test]
fn linux_static_programs_match_the_host() {
    static_programs_match_the_host(&[]);
}

/// The same programs spread over two vCPUs (fork, pipes and signals
/// between processes that may run on different CPUs).
#[test]
fn linux_static_programs_match_the_host_on_two_cpus() {
    static_programs_match_the_host(&["-smp", "2"]);
}

/// Boot the progs image with `extra` options; every program's output and
/// status must equal the same binary's run on the host.
fn static_programs_match_the_host(extra: &[&str]) {
    let _one = one_guest();
    let mut args = linux_args("progs.cpio.gz", "console=ttyS0");
    args.extend(extra.iter().map(|a| a.to_string()));
    let r = run_btvisor(&args, &[], Duration::ZERO, TIMEOUT);
    let out = guest_output(&r.stdout);
    assert_eq!(r.status.and_then(|s| s.code()), Some(BATCH_PASS_STATUS), "progs image status; output:\n{out}");
    let guest = sections(&out);
    let progs = out_dir().join("progs");
    let mut names: Vec<String> = std::fs::read_dir(&progs)
        .expect("progs dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    assert!(names.len() >= 6, "expected the test programs in {}", progs.display());
    for name in names {
        let host = Command::new(progs.join(&name)).current_dir("/").output().expect("run test program on the host");
        let host_out = String::from_utf8_lossy(&host.stdout).into_owned();
        let idx = guest.iter().position(|(k, _)| *k == name).unwrap_or_else(|| panic!("{name} did not run:\n{out}"));
        assert_eq!(guest[idx].1, host_out, "{name}: guest output (left) differs from the host's (right)");
        let status = guest.get(idx + 1).map(|(k, _)| k.clone()).unwrap_or_default();
        assert_eq!(status, format!("exit {}", host.status.code().unwrap_or(-1)), "{name} exit status");
    }
}

/// A pseudo-terminal pair: (master, slave).
fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two descriptors; null name/termios/winsize are allowed.
    let rc = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty failed");
    // SAFETY: both descriptors were just opened and are owned here.
    unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
}

/// btvisor booting the shell image with `extra` options, its console on a
/// pseudo-terminal; the child and the terminal's master side.
fn shell_on_pty(extra: &[&str]) -> (std::process::Child, std::fs::File) {
    let (master, slave) = openpty();
    let child = Command::new(env!("CARGO_BIN_EXE_btvisor"))
        .args(linux_args("shell.cpio.gz", "console=ttyS0"))
        .args(extra)
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("spawn btvisor");
    (child, std::fs::File::from(master))
}

/// Reads the terminal until `want` appears after `from`, or panics after `t`.
fn expect(master: &mut std::fs::File, buf: &mut String, from: usize, want: &str, t: Duration) -> usize {
    let start = Instant::now();
    loop {
        if let Some(i) = buf[from..].find(want) {
            return from + i + want.len();
        }
        let left = t.checked_sub(start.elapsed()).unwrap_or_else(|| panic!("no {want:?} on the console:\n{buf}"));
        let mut p = libc::pollfd { fd: master.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as i32) };
        if n > 0 {
            let mut b = [0u8; 4096];
            match master.read(&mut b) {
                Ok(0) | Err(_) => panic!("console closed before {want:?}:\n{buf}"),
                Ok(k) => buf.push_str(&String::from_utf8_lossy(&b[..k]).replace('\r', "")),
            }
        }
    }
}

#[test]
fn linux_interactive_shell_over_com1() {
    use std::io::Write;
    let _one = one_guest();
    let (mut child, mut m) = shell_on_pty(&[]);
    let mut buf = String::new();
    let mut at = expect(&mut m, &mut buf, 0, "# ", TIMEOUT);
    m.write_all(b"echo $((6 * 7)) shell\r").expect("type");
    at = expect(&mut m, &mut buf, at, "42 shell", Duration::from_secs(20));
    at = expect(&mut m, &mut buf, at, "# ", Duration::from_secs(20));
    // Ctrl-C reaches the guest and interrupts a running command.
    m.write_all(b"sleep 30; echo not-interrupted\r").expect("type");
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    m.write_all(b"\x03").expect("Ctrl-C");
    at = expect(&mut m, &mut buf, at, "# ", Duration::from_secs(10));
    assert!(t.elapsed() < Duration::from_secs(10));
    m.write_all(b"echo after-$((1 + 1))\r").expect("type");
    at = expect(&mut m, &mut buf, at, "after-2\n", Duration::from_secs(20));
    assert_eq!(buf.matches("not-interrupted").count(), 1, "only the typed command names it:\n{buf}");
    m.write_all(b"poweroff -f\r").expect("type");
    let _ = expect(&mut m, &mut buf, at, "reboot: System halted", Duration::from_secs(20));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("btvisor did not exit after poweroff -f:\n{buf}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "poweroff -f ends the run with status 0");
}

#[test]
fn ctrl_a_x_quits() {
    use std::io::Write;
    let _one = one_guest();
    let (mut child, mut m) = shell_on_pty(&[]);
    let mut buf = String::new();
    let at = expect(&mut m, &mut buf, 0, "Linux version", TIMEOUT);
    m.write_all(b"\x01h").expect("Ctrl-A h");
    let _ = expect(&mut m, &mut buf, at, "C-a x    exit emulator", Duration::from_secs(20));
    m.write_all(b"\x01x").expect("Ctrl-A x");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "Ctrl-A x did not end the run");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

/// An interactive session under `-icount` on a terminal (typed commands,
/// Ctrl-C of a `sleep`), recorded, then replayed from the recording alone:
/// the same console output byte for byte, the uptimes and interrupt counts
/// the shell prints included.
#[test]
fn linux_shell_session_records_and_replays() {
    use std::io::Write;
    let _one = one_guest();
    let file = std::env::temp_dir().join(format!("btvisor-linux-rr-{}", std::process::id()));
    let icount = |mode: &str| format!("shift=1,rr={mode},rrfile={}", file.display());
    let (mut child, mut m) = shell_on_pty(&["-icount", &icount("record")]);
    let mut buf = String::new();
    let mut at = expect(&mut m, &mut buf, 0, "# ", TIMEOUT);
    m.write_all(b"echo rr-$((6*7)); cat /proc/uptime; grep timer /proc/interrupts\r").expect("type");
    at = expect(&mut m, &mut buf, at, "XT-PIC", Duration::from_secs(20));
    at = expect(&mut m, &mut buf, at, "# ", Duration::from_secs(20));
    m.write_all(b"sleep 30\r").expect("type");
    std::thread::sleep(Duration::from_millis(700));
    m.write_all(b"\x03").expect("Ctrl-C");
    at = expect(&mut m, &mut buf, at, "# ", Duration::from_secs(10));
    m.write_all(b"cat /proc/uptime; poweroff -f\r").expect("type");
    let _ = expect(&mut m, &mut buf, at, "reboot: System halted", Duration::from_secs(20));
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("btvisor did not exit after poweroff -f:\n{buf}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Whatever the terminal still holds.
    let _ = expect(&mut m, &mut buf, 0, "", Duration::from_secs(1));
    let mut rep_args = linux_args("shell.cpio.gz", "console=ttyS0");
    rep_args.extend(["-icount".to_string(), icount("replay")]);
    let rep = run_btvisor(&rep_args, &[], Duration::ZERO, TIMEOUT);
    let _ = std::fs::remove_file(&file);
    assert_eq!(rep.status.and_then(|s| s.code()), Some(0), "replay: {}", rep.stderr);
    let replayed = rep.stdout.replace('\r', "");
    let recorded = &buf[..buf.find("btvisor:").unwrap_or(buf.len())];
    if recorded != replayed {
        let k = recorded.lines().zip(replayed.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "replay differs at line {}:\n  recorded: {:?}\n  replayed: {:?}\nrecorded:\n{recorded}",
            k + 1,
            recorded.lines().nth(k),
            replayed.lines().nth(k)
        );
    }
    assert!(replayed.contains("rr-42"), "{replayed}");
}
