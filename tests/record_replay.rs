//! `-icount`: deterministic runs, with chaining, and record/replay of COM1
//! input (`-icount shift=N,rr=record|replay,rrfile=F`). The Linux shell
//! session is in tests/linux.rs.

mod common;

use std::time::Duration;

use common::run::run_btvisor;

const TIMEOUT: Duration = Duration::from_secs(60);

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn temp(name: &str) -> String {
    std::env::temp_dir().join(format!("btvisor-rr-{}-{name}", std::process::id())).display().to_string()
}

#[test]
fn icount_runs_repeat_exactly() {
    // irq.elf reads the PIT, the RTC and takes timer interrupts inside
    // loops: under icount every reading repeats.
    // (Output to a file: with no input connected, idle time is skipped.)
    let run = |k: &str| {
        let out = temp(k);
        let serial = format!("file:{out}");
        let r = run_btvisor(
            &args(&["-icount", "shift=2", "-serial", &serial, "guest-images/irq.elf"]),
            &[],
            Duration::ZERO,
            TIMEOUT,
        );
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let _ = std::fs::remove_file(&out);
        (r.status.and_then(|s| s.code()), text)
    };
    let (a, b) = (run("a"), run("b"));
    assert!(a.1.contains("passed"), "{}", a.1);
    assert_eq!(a, b);
}

#[test]
fn echo_session_replays_from_its_recording() {
    let file = temp("echo");
    let record = format!("shift=2,rr=record,rrfile={file}");
    let rec = run_btvisor(
        &args(&["-icount", &record, "guest-images/echo.elf"]),
        &[b"hello\n", b"world\n", b"q"],
        Duration::from_millis(200),
        TIMEOUT,
    );
    assert!(rec.stdout.contains("HELLO") && rec.stdout.contains("WORLD"), "{}\n{}", rec.stdout, rec.stderr);
    let log = std::fs::read_to_string(&file).expect("the recording");
    assert!(log.starts_with("btvisor-rr 1 shift=2\n"), "{log}");
    assert_eq!(log.lines().filter(|l| l.starts_with("input ")).count(), 13, "{log}");
    // The replay reads no input of its own: all of it comes from the file.
    let replay = format!("shift=2,rr=replay,rrfile={file}");
    let rep =
        run_btvisor(&args(&["-icount", &replay, "guest-images/echo.elf"]), &[b"ignored\n"], Duration::ZERO, TIMEOUT);
    assert_eq!(rep.stdout, rec.stdout);
    assert_eq!(rep.status.and_then(|s| s.code()), rec.status.and_then(|s| s.code()));
    // A recording made with another shift is refused.
    let other = format!("shift=3,rr=replay,rrfile={file}");
    let bad = run_btvisor(&args(&["-icount", &other, "guest-images/echo.elf"]), &[], Duration::ZERO, TIMEOUT);
    assert_eq!(bad.status.and_then(|s| s.code()), Some(1));
    assert!(bad.stderr.contains("shift=2"), "{}", bad.stderr);
    let _ = std::fs::remove_file(&file);
}
