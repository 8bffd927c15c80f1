//! The gdb stub: a real gdb (Debian's `gdb`, which `.ci/run` installs) in
//! batch mode against `btvisor -gdb ... -S`, and a raw remote-protocol
//! client for what gdb's batch mode cannot do (Ctrl-C, detach).
//!
//! `session.gdb`'s expected output was recorded against QEMU's stub (see
//! tests/gdb/README.md).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a whole gdb session may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the stub may take to answer a Ctrl-C (the engine regains
/// control from chained code every 10 ms; HLT naps last at most 5 ms).
const INTERRUPT_TIMEOUT: Duration = Duration::from_secs(2);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn gdb() -> PathBuf {
    let found =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("gdb")).find(|g| g.is_file()));
    found.unwrap_or_else(|| {
        panic!("gdb is not installed: `apt-get install gdb` (Debian's gdb package; .ci/run installs it)")
    })
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// btvisor started stopped (`-S`), listening on `port`.
struct Stub {
    child: Child,
    port: u16,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Stub {
    fn start(image: &str, extra: &[&str]) -> Stub {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_btvisor"))
            .current_dir(repo())
            .args(["-kernel", image, "-gdb", &format!("tcp:127.0.0.1:{port}"), "-S"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start btvisor");
        let err = BufReader::new(child.stderr.take().expect("stderr"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains("waiting for gdb") => break,
                Ok(_) => {}
                Err(e) => panic!("btvisor did not start its gdb stub: {e}"),
            }
        }
        Stub { child, port, stderr: rx }
    }

    /// Wait for btvisor to exit; its status and the rest of its stderr.
    fn finish(mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = wait_timeout(&mut self.child, timeout).unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("btvisor did not exit within {timeout:?}")
        });
        let mut rest = String::new();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            rest += &l;
            rest.push('\n');
        }
        (status, rest)
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run gdb in batch mode with `script` (`@PORT@` replaced) on `image`.
fn run_gdb(script: &str, port: u16, image: &str) -> String {
    let dir = std::env::temp_dir().join(format!("btvisor-gdb-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("script.gdb");
    std::fs::write(&path, script.replace("@PORT@", &port.to_string())).expect("write script");
    let mut child = Command::new(gdb())
        .current_dir(repo())
        .args(["-nx", "-q", "-batch", "-x"])
        .arg(&path)
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gdb");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        s + &e
    });
    if wait_timeout(&mut child, SESSION_TIMEOUT).is_none() {
        let _ = child.kill();
        panic!("gdb did not finish within {SESSION_TIMEOUT:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    reader.join().expect("gdb output")
}

/// Lines compared: `info registers` lines become "name value" (gdb's
/// decoration of a value depends on the stub's target description).
fn normalize(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let is_reg = w.len() >= 3
                && w[0].chars().all(|c| c.is_ascii_alphanumeric())
                && w[1].starts_with("0x")
                && l.starts_with(w[0])
                && l[w[0].len()..].starts_with("  ");
            if is_reg { format!("{} {}", w[0], w[1]) } else { l.trim_end().to_string() }
        })
        .collect()
}

#[test]
fn gdb_session_matches_qemu() {
    let serial = std::env::temp_dir().join(format!("btvisor-gdbtest-serial-{}", std::process::id()));
    let stub = Stub::start("guest-images/gdbtest.elf", &["-serial", &format!("file:{}", serial.display())]);
    let script = std::fs::read_to_string(repo().join("tests/gdb/session.gdb")).expect("session.gdb");
    let out = run_gdb(&script, stub.port, "guest-images/gdbtest.elf");
    let (status, _) = stub.finish(Duration::from_secs(10));
    let begin = out.find("==begin==").unwrap_or_else(|| panic!("gdb never reached kmain:\n{out}"));
    let mut got = out[begin..].to_string();
    got += &format!("status {}\n", status.code().unwrap_or(-1));
    got += &std::fs::read_to_string(&serial).unwrap_or_default();
    let _ = std::fs::remove_file(&serial);
    let want = std::fs::read_to_string(repo().join("guest-images/expected/gdbtest.session")).expect("expected output");
    let (g, w) = (normalize(&got), normalize(&want));
    if g != w {
        let first = g.iter().zip(&w).position(|(a, b)| a != b).unwrap_or(g.len().min(w.len()));
        panic!(
            "gdb session differs from QEMU's at line {}:\n  btvisor: {:?}\n  QEMU:    {:?}\nwhole btvisor output:\n{got}",
            first + 1,
            g.get(first),
            w.get(first)
        );
    }
}

#[test]
fn monitor_commands_and_kill() {
    let stub = Stub::start("guest-images/gdbtest.elf", &["-serial", "null"]);
    let script = "set architecture i386\nset pagination off\ntarget remote :@PORT@\nbreak gt_user\ncontinue\n\
                  monitor info registers\nmonitor info mem\nmonitor info tlb\nmonitor help\nkill\n";
    let out = run_gdb(script, stub.port, "guest-images/gdbtest.elf");
    let (status, err) = stub.finish(Duration::from_secs(10));
    for want in [
        "CPL=3",
        // (The accessed bit is set: QEMU leaves it clear on these loads.)
        "CS =001b 00000000 ffffffff 00cffb00 DPL=3 CS32 [-RA]",
        "SS =0023 00000000 ffffffff 00cff300 DPL=3 DS   [-WA]",
        "TR =0028",
        "CR0=80000011",
        // The identity-mapped 4 MiB and the alias page, all user-writable.
        "00000000-00400000 00400000 urw",
        "40000000-40001000 00001000 urw",
        "info tlb",
    ] {
        assert!(out.contains(want), "`{want}` missing from gdb's output:\n{out}");
    }
    // info tlb: the alias page maps gt_page.
    let gt_page = symbol("gt_page");
    assert!(out.contains(&format!("40000000: {gt_page:08x} ")), "no alias page in info tlb:\n{out}");
    assert_eq!(status.code(), Some(0), "status after kill; stderr:\n{err}");
    assert!(err.contains("killed by the debugger"), "stderr:\n{err}");
}

/// The address of `name` in gdbtest.elf (from its symbol table).
fn symbol(name: &str) -> u32 {
    let out = Command::new("nm").arg(repo().join("guest-images/gdbtest.elf")).output().expect("nm (binutils)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 3 && w[2] == name).then(|| u32::from_str_radix(w[0], 16).ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no symbol {name} in gdbtest.elf"))
}

/// A minimal remote-protocol client.
struct Rsp(TcpStream);

impl Rsp {
    fn connect(port: u16) -> Rsp {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the stub");
        s.set_read_timeout(Some(INTERRUPT_TIMEOUT)).expect("timeout");
        Rsp(s)
    }

    fn send(&mut self, body: &str) {
        let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        write!(self.0, "${body}#{sum:02x}").expect("send");
    }

    /// The next packet's body (acknowledged), skipping acks.
    fn recv(&mut self) -> String {
        let mut body = Vec::new();
        let mut b = [0u8];
        loop {
            self.0.read_exact(&mut b).expect("a reply from the stub in time");
            if b[0] == b'$' {
                break;
            }
        }
        loop {
            self.0.read_exact(&mut b).expect("packet");
            if b[0] == b'#' {
                break;
            }
            body.push(b[0]);
        }
        let mut sum = [0u8; 2];
        self.0.read_exact(&mut sum).expect("checksum");
        self.0.write_all(b"+").expect("ack");
        String::from_utf8_lossy(&body).into_owned()
    }

    fn request(&mut self, body: &str) -> String {
        self.send(body);
        self.recv()
    }
}

/// Continue, then Ctrl-C: the stop reply must come promptly.
/// Then detach (the guest must reach its own end) or kill.
fn interrupt_running(image: &str, extra: &[&str], detach: bool) {
    let stub = Stub::start(image, extra);
    let mut c = Rsp::connect(stub.port);
    c.request("?");
    c.send("c");
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    c.0.write_all(&[0x03]).expect("Ctrl-C");
    let stop = c.recv();
    assert!(t0.elapsed() < INTERRUPT_TIMEOUT, "stop took {:?}", t0.elapsed());
    // SIGINT (2), as QEMU's stub answers an interrupt.
    assert!(stop.starts_with("T02") || stop.starts_with("S02"), "stop reply {stop:?}");
    if detach {
        // The guest runs on to its own end.
        assert_eq!(c.request("D"), "OK");
    } else {
        c.send("k");
    }
    drop(c);
    let (status, err) = stub.finish(Duration::from_secs(30));
    assert!(status.code().is_some(), "btvisor after detach: {status:?}\n{err}");
}

#[test]
fn ctrl_c_stops_a_tight_loop() {
    // compute.elf runs chained compute loops for minutes at this count.
    interrupt_running("guest-images/compute.elf", &["-append", "iters=100000"], false);
}

#[test]
fn ctrl_c_stops_a_halted_guest() {
    // idle.elf sleeps in HLT between 1 kHz timer ticks for `secs`.
    interrupt_running("guest-images/idle.elf", &["-append", "secs=2"], true);
}

#[test]
fn bad_gdb_options_are_errors() {
    for (args, want) in [(&["-gdb", "unix:/tmp/x"][..], "unsupported -gdb"), (&["-S"][..], "-S waits for a debugger")] {
        let out = Command::new(env!("CARGO_BIN_EXE_btvisor"))
            .current_dir(repo())
            .args(args)
            .arg(Path::new("guest-images/hello.elf"))
            .output()
            .expect("run btvisor");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
