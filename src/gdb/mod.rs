//! The GDB remote stub (`-gdb tcp::PORT`, `-s`, `-S`), on the `gdbstub`
//! crate with `gdbstub_arch`'s i386 register layout.
//!
//! Threads: the guest runs on the main thread, which also speaks the
//! protocol while the guest is stopped. A listener thread accepts
//! connections and, while the guest runs, watches the connection for
//! input (gdb's Ctrl-C, a hang-up): either sets the engine's stop flag,
//! which the dispatcher reads at every return (see `exec::debug`).
//!
//! As in QEMU, without `-S` the guest starts at once and a debugger may
//! attach at any time (the guest stops when it does); after a detach it
//! runs on and another debugger may attach.

mod monitor;
mod target;

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use gdbstub::common::Signal;
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{self, BlockingEventLoop};
use gdbstub::stub::{DisconnectReason, GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::breakpoints::WatchKind as GdbWatchKind;
use thiserror::Error;

use crate::exec::{DebugStop, Engine, RunOutcome, WatchKind};
pub use target::GdbTarget;

/// How long the watcher sleeps while input waits for the main thread.
const IDLE_NAP: Duration = Duration::from_millis(5);
/// How long one poll of the connection lasts (the watcher also looks at
/// whether the guest is running between polls).
const POLL_MS: i32 = 20;

#[derive(Debug, Error)]
pub enum GdbError {
    #[error("cannot listen for gdb on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("invalid gdb address `{0}`")]
    Address(String),
}

/// How a debugged run ended.
#[derive(Debug)]
pub enum Ending {
    /// The guest ended (or the debugger detached and it then ended).
    Outcome(RunOutcome),
    /// The debugger killed the guest.
    Killed,
}

/// Where the stub listens: QEMU's `-gdb` device, `tcp:[HOST]:PORT`.
pub fn parse_address(spec: &str) -> Option<String> {
    let rest = spec.strip_prefix("tcp:")?;
    let (host, port) = rest.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    // An empty host is every interface, as in QEMU.
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Some(format!("{host}:{port}"))
}

/// State shared with the listener thread.
struct Shared {
    /// The engine's stop flag.
    stop: Arc<AtomicBool>,
    /// The guest is running (input on the connection must stop it).
    running: AtomicBool,
}

/// Listen on `addr`; the listener thread runs until the process ends.
fn listen(addr: &str, shared: Arc<Shared>) -> Result<mpsc::Receiver<TcpStream>, GdbError> {
    let err = |source| GdbError::Listen { addr: addr.to_string(), source };
    let addrs: Vec<_> = addr.to_socket_addrs().map_err(err)?.collect();
    let listener =
        TcpListener::bind(&addrs[..]).map_err(|source| GdbError::Listen { addr: addr.to_string(), source })?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("gdb-listener".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let Ok(watch) = stream.try_clone() else { continue };
                if tx.send(stream).is_err() {
                    return;
                }
                shared.stop.store(true, Ordering::Relaxed);
                watch_connection(&watch, &shared);
            }
        })
        .map_err(|source| GdbError::Listen { addr: addr.to_string(), source })?;
    Ok(rx)
}

/// While the guest runs, turn input on the connection (or its end) into a
/// stop request. Returns when the connection is closed.
fn watch_connection(conn: &TcpStream, shared: &Shared) {
    loop {
        let mut pfd = libc::pollfd { fd: conn.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: polls one valid descriptor (owned by `conn`) for POLL_MS.
        let n = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        if n < 0 {
            return;
        }
        let ended = pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
        let input = pfd.revents & libc::POLLIN != 0;
        if (ended || input) && shared.running.load(Ordering::Relaxed) {
            shared.stop.store(true, Ordering::Relaxed);
        }
        if ended {
            return;
        }
        if input {
            // The main thread reads it (now, or once the guest has stopped).
            std::thread::sleep(IDLE_NAP);
        }
        // A closed connection reads as input of zero bytes: look for that.
        if input && !shared.running.load(Ordering::Relaxed) {
            let mut b = [0u8];
            // SAFETY: a non-blocking peek into a one-byte local buffer.
            let r =
                unsafe { libc::recv(conn.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
            if r == 0 {
                return;
            }
        }
    }
}

/// Run `engine` under the stub listening at `addr` (from `parse_address`);
/// with `wait`, the guest starts stopped until a debugger attaches (`-S`).
pub fn run(engine: &mut Engine, addr: &str, wait: bool) -> Result<Ending, GdbError> {
    let stop = engine.enable_debug();
    let shared = Arc::new(Shared { stop, running: AtomicBool::new(false) });
    let rx = listen(addr, shared.clone())?;
    // Virtual time stands still while the guest is stopped (as QEMU's):
    // it runs only inside `run_in_time`.
    if let Some(c) = &engine.chipset {
        c.clock.pause();
    }
    let mut conn = None;
    if wait {
        // Started stopped: say where the debugger is awaited (scripts wait
        // for this line before they start gdb).
        eprintln!("btvisor: waiting for gdb on {addr}");
        conn = rx.recv().ok();
    } else {
        log::info!("gdb stub listening on {addr}");
    }
    loop {
        let Some(stream) = conn.take() else {
            shared.running.store(true, Ordering::Relaxed);
            let out = run_in_time(engine);
            shared.running.store(false, Ordering::Relaxed);
            match out {
                RunOutcome::DebugStop(_) => {
                    shared.stop.store(false, Ordering::Relaxed);
                    conn = rx.try_recv().ok();
                    continue;
                }
                other => return Ok(Ending::Outcome(other)),
            }
        };
        shared.stop.store(false, Ordering::Relaxed);
        let mut target = GdbTarget::new(engine, shared.clone());
        let result = GdbStub::new(stream).run_blocking::<EventLoop<'_>>(&mut target);
        let outcome = target.outcome.take();
        match result {
            Ok(DisconnectReason::Kill) => return Ok(Ending::Killed),
            Ok(DisconnectReason::TargetExited(_) | DisconnectReason::TargetTerminated(_)) => {
                if let Some(out) = outcome {
                    return Ok(Ending::Outcome(out));
                }
            }
            Ok(DisconnectReason::Disconnect) => {}
            Err(e) => {
                if let Some(out) = outcome {
                    return Ok(Ending::Outcome(out));
                }
                log::warn!("gdb connection ended: {e}");
            }
        }
        // Detached (or the debugger went away): the guest runs on.
        engine.clear_debug_points();
    }
}

/// Run the guest with the device clock running, and stop the clock again
/// when it stops: virtual time passes only while the guest runs.
fn run_in_time(engine: &mut Engine) -> RunOutcome {
    let clock = engine.chipset.as_ref().map(|c| c.clock.clone());
    if let Some(c) = &clock {
        c.resume();
    }
    let out = engine.run();
    if let Some(c) = &clock {
        c.pause();
    }
    out
}

/// The protocol's run loop: run the guest until it stops or gdb sends
/// something (Ctrl-C).
struct EventLoop<'a>(std::marker::PhantomData<&'a mut Engine>);

impl<'a> BlockingEventLoop for EventLoop<'a> {
    type Target = GdbTarget<'a>;
    type Connection = TcpStream;
    type StopReason = SingleThreadStopReason<u32>;

    #[allow(clippy::type_complexity)]
    fn wait_for_stop_reason(
        target: &mut Self::Target,
        conn: &mut Self::Connection,
    ) -> Result<run_blocking::Event<Self::StopReason>, run_blocking::WaitForStopReasonError<&'static str, std::io::Error>>
    {
        use run_blocking::{Event, WaitForStopReasonError as E};
        loop {
            if conn.peek().map_err(E::Connection)?.is_some() {
                return Ok(Event::IncomingData(conn.read().map_err(E::Connection)?));
            }
            if target.halted {
                // A CPU halted for good stays halted: wait for gdb.
                return Ok(Event::IncomingData(conn.read().map_err(E::Connection)?));
            }
            let out = target.run_guest();
            let reason = match out {
                RunOutcome::DebugStop(DebugStop::Interrupted) => continue,
                RunOutcome::DebugStop(DebugStop::Step) => SingleThreadStopReason::DoneStep,
                RunOutcome::DebugStop(DebugStop::SwBreakpoint) => SingleThreadStopReason::SwBreak(()),
                RunOutcome::DebugStop(DebugStop::HwBreakpoint) => SingleThreadStopReason::HwBreak(()),
                RunOutcome::DebugStop(DebugStop::Watch { addr, kind }) => {
                    let kind = match kind {
                        WatchKind::Write => GdbWatchKind::Write,
                        WatchKind::Read => GdbWatchKind::Read,
                        WatchKind::Access => GdbWatchKind::ReadWrite,
                    };
                    SingleThreadStopReason::Watch { tid: (), kind, addr }
                }
                RunOutcome::Halted { .. } => {
                    target.halted = true;
                    continue;
                }
                other => {
                    let status = crate::vm::exit_status(&other);
                    target.outcome = Some(other);
                    SingleThreadStopReason::Exited(status)
                }
            };
            return Ok(Event::TargetStopped(reason));
        }
    }

    fn on_interrupt(_target: &mut Self::Target) -> Result<Option<Self::StopReason>, &'static str> {
        Ok(Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_qemu_spelling() {
        assert_eq!(parse_address("tcp::1234").as_deref(), Some("0.0.0.0:1234"));
        assert_eq!(parse_address("tcp:localhost:5555").as_deref(), Some("localhost:5555"));
        assert_eq!(parse_address("tcp:127.0.0.1:1").as_deref(), Some("127.0.0.1:1"));
        assert_eq!(parse_address("tcp::99999"), None);
        assert_eq!(parse_address("unix:/tmp/x"), None);
        assert_eq!(parse_address("1234"), None);
    }
}
