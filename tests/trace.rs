//! `-d` traces in QEMU's formats. `-d int` lines are compared with QEMU's
//! (guest-images/expected/NAME.int, the `v=` lines of `qemu-system-i386
//! -d int` for the same image and command line); `-d exec,cpu,nochain` is
//! checked for its form and for agreeing with itself.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `image` with `-d CLASSES -D <temp>`; the log.
fn trace(image: &str, classes: &str) -> String {
    let log = std::env::temp_dir().join(format!("btvisor-trace-{}-{image}-{classes}", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_btvisor"));
    cmd.current_dir(root()).args(["-d", classes, "-D"]).arg(&log).args(["-serial", "null"]);
    if let Ok(args) = std::fs::read_to_string(root().join(format!("guest-images/expected/{image}.args"))) {
        cmd.args(["-append", args.trim_end()]);
    }
    let out = cmd.arg(format!("guest-images/{image}.elf")).output().expect("run btvisor");
    assert!(out.status.code().is_some(), "{image}: {:?}", out.status);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    text
}

fn interrupt_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(": v=")).collect()
}

#[test]
fn int_trace_lines_match_qemu() {
    for image in ["pm", "pmtask", "paging", "gdbtest"] {
        let want =
            std::fs::read_to_string(root().join(format!("guest-images/expected/{image}.int"))).expect("expected");
        let log = trace(image, "int");
        let (got, want) = (interrupt_lines(&log), want.lines().collect::<Vec<_>>());
        if let Some(k) = (0..got.len().max(want.len())).find(|&k| got.get(k) != want.get(k)) {
            panic!("{image}: -d int line {} differs\n  btvisor: {:?}\n  QEMU:    {:?}", k + 1, got.get(k), want.get(k));
        }
        // Each event is followed by the state before it, as in QEMU.
        let after: Vec<&str> = log.lines().skip_while(|l| !l.contains(": v=")).skip(1).take(3).collect();
        assert!(after.first().is_some_and(|l| l.starts_with("EAX=")), "{image}: {after:?}");
        assert!(after.get(2).is_some_and(|l| l.starts_with("EIP=") && l.contains(" CPL=")), "{image}: {after:?}");
    }
}

#[test]
fn exec_and_cpu_traces() {
    let log = trace("hello", "exec,cpu,nochain");
    let lines: Vec<&str> = log.lines().collect();
    let traces: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].starts_with("Trace 0: 0x")).collect();
    assert!(traces.len() > 20, "{} blocks traced", traces.len());
    // The first block is the Multiboot entry, with the magic in EAX.
    assert!(lines[traces[0]].contains("/0010000c/"), "{}", lines[traces[0]]);
    assert!(lines[traces[0] + 1].starts_with("EAX=2badb002 "), "{}", lines[traces[0] + 1]);
    for &t in &traces {
        // Trace 0: HOST [CS base/linear EIP/mode/0], then QEMU's state dump.
        let fields: Vec<&str> = lines[t].split(['[', ']', '/']).collect();
        let lin = fields.get(2).copied().unwrap_or_default();
        let eip_line = lines.get(t + 3).copied().unwrap_or_default();
        assert!(eip_line.starts_with(&format!("EIP={lin} ")), "block at {lin}, state {eip_line}");
        assert!(
            lines.get(t + 4).is_some_and(|l| l.starts_with("ES =0018 00000000 ffffffff 00cf9300 DPL=0 DS   [-WA]"))
        );
        assert!(lines.get(t + 18).is_some_and(|l| l.starts_with("EFER=")), "{:?}", lines.get(t + 18));
    }
}
