//! The machine's notion of time, shared by the timer devices.
//!
//! Device models never count host events; they derive their state from the
//! nanoseconds of virtual time [`VirtualClock::now_ns`] reports. The clock has
//! two sources:
//!
//! * **host**: follows the host's monotonic clock from the moment the clock
//!   was created, so guest time runs at wall-clock speed, except while the
//!   machine is stopped ([`VirtualClock::pause`], the gdb stub's stops), as
//!   QEMU's virtual clock stops with the VM: a timer does not fire into a
//!   guest that a debugger holds at a breakpoint;
//! * **icount**: deterministic instruction counting. Time advances only when
//!   the VMM calls [`VirtualClock::advance_insns`] (a fixed number of
//!   nanoseconds per retired guest instruction) or skips idle time with
//!   [`VirtualClock::advance_to_ns`], so two runs of the same guest see the
//!   same timeline.
//!
//! The clock is a cheap handle: clones share the same timeline (the icount
//! counter is an `Arc<AtomicU64>`), so the VMM and each device can hold one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// Where a [`VirtualClock`] takes its time from.
#[derive(Debug, Clone)]
enum Source {
    /// Host monotonic time elapsed since `start`, less the time paused.
    Host { start: Instant, pause: Arc<Pause> },
    /// Virtual nanoseconds stored in `ns`, advanced by the VMM.
    Icount { ns: Arc<AtomicU64>, ns_per_insn: u64 },
}

/// The paused spans of a host clock, shared by its clones.
#[derive(Debug)]
struct Pause {
    /// The virtual time the clock stopped at, or [`RUNNING`].
    stopped_at: AtomicU64,
    /// Host nanoseconds spent paused, not counted as virtual time.
    excluded: AtomicU64,
}

/// [`Pause::stopped_at`] of a running clock.
const RUNNING: u64 = u64::MAX;

/// A shared, cloneable source of virtual time in nanoseconds since the
/// clock was created.
#[derive(Debug, Clone)]
pub struct VirtualClock {
    source: Source,
}

impl VirtualClock {
    /// A clock following the host monotonic clock, starting at 0 now.
    pub fn host() -> Self {
        let pause = Arc::new(Pause { stopped_at: AtomicU64::new(RUNNING), excluded: AtomicU64::new(0) });
        Self { source: Source::Host { start: Instant::now(), pause } }
    }

    /// A deterministic clock starting at 0 that advances `ns_per_insn`
    /// nanoseconds per instruction reported through
    /// [`advance_insns`](Self::advance_insns). With `ns_per_insn == 0`
    /// time moves only through [`advance_to_ns`](Self::advance_to_ns).
    pub fn icount(ns_per_insn: u64) -> Self {
        Self { source: Source::Icount { ns: Arc::new(AtomicU64::new(0)), ns_per_insn } }
    }

    /// Current virtual time in nanoseconds. Never decreases.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match &self.source {
            // 2^64 ns is 584 years of uptime; saturate rather than wrap.
            Source::Host { start, pause } => {
                let stopped = pause.stopped_at.load(Ordering::Relaxed);
                if stopped != RUNNING {
                    return stopped;
                }
                host_ns(start).saturating_sub(pause.excluded.load(Ordering::Relaxed))
            }
            Source::Icount { ns, .. } => ns.load(Ordering::Relaxed),
        }
    }

    /// Stops a host clock at its current time (the machine is stopped).
    /// Does nothing on an icount clock, which only instructions advance.
    pub fn pause(&self) {
        if let Source::Host { pause, .. } = &self.source {
            let now = self.now_ns();
            let _ = pause.stopped_at.compare_exchange(RUNNING, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Restarts a paused host clock from the time it stopped at.
    pub fn resume(&self) {
        if let Source::Host { start, pause } = &self.source {
            let stopped = pause.stopped_at.load(Ordering::Relaxed);
            if stopped != RUNNING {
                pause.excluded.store(host_ns(start).saturating_sub(stopped), Ordering::Relaxed);
                pause.stopped_at.store(RUNNING, Ordering::Relaxed);
            }
        }
    }

    /// Accounts `n` retired guest instructions. Does nothing on a host clock.
    #[inline]
    pub fn advance_insns(&self, n: u64) {
        if let Source::Icount { ns, ns_per_insn } = &self.source {
            let delta = n.saturating_mul(*ns_per_insn);
            // Uncontended (one CPU thread advances time), so this compare
            // and swap succeeds first time; saturating keeps time monotonic.
            let _ = ns.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_add(delta)));
        }
    }

    /// Moves an icount clock forward to `ns` if it is behind (used to skip
    /// the idle time of a halted CPU up to the next timer event). Does
    /// nothing on a host clock, where the VMM sleeps instead.
    pub fn advance_to_ns(&self, ns: u64) {
        if let Source::Icount { ns: now, .. } = &self.source {
            now.fetch_max(ns, Ordering::Relaxed);
        }
    }

    /// Nanoseconds per instruction of an icount clock (0 on a host clock).
    pub fn ns_per_insn(&self) -> u64 {
        match &self.source {
            Source::Icount { ns_per_insn, .. } => *ns_per_insn,
            Source::Host { .. } => 0,
        }
    }

    /// Whether this is an icount clock (time independent of the host).
    pub fn is_deterministic(&self) -> bool {
        matches!(self.source, Source::Icount { .. })
    }
}

/// Host nanoseconds since `start`, in u64 (`as_nanos` costs a 128-bit
/// division).
fn host_ns(start: &Instant) -> u64 {
    let d = start.elapsed();
    d.as_secs().saturating_mul(NS_PER_SEC).saturating_add(d.subsec_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paused_host_clock_stands_still_and_resumes_where_it_stopped() {
        let clock = VirtualClock::host();
        let other = clock.clone();
        clock.pause();
        let t = other.now_ns();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(other.now_ns(), t);
        clock.resume();
        let after = other.now_ns();
        assert!(after >= t && after < t + 10_000_000, "{t} -> {after}");
    }

    #[test]
    fn icount_advances_only_on_request_and_is_shared_by_clones() {
        let clock = VirtualClock::icount(3);
        let other = clock.clone();
        assert!(clock.is_deterministic());
        assert_eq!(clock.now_ns(), 0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(clock.now_ns(), 0, "host time does not leak in");
        clock.advance_insns(10);
        assert_eq!(other.now_ns(), 30);
        other.advance_to_ns(1000);
        assert_eq!(clock.now_ns(), 1000);
        other.advance_to_ns(10);
        assert_eq!(clock.now_ns(), 1000, "never goes backwards");
        clock.advance_insns(u64::MAX);
        assert!(clock.now_ns() > 1000, "huge advances saturate, no panic");
    }

    #[test]
    fn two_icount_clocks_give_identical_timelines() {
        let a = VirtualClock::icount(7);
        let b = VirtualClock::icount(7);
        for n in [1, 5, 100, 3] {
            a.advance_insns(n);
            b.advance_insns(n);
            assert_eq!(a.now_ns(), b.now_ns());
        }
        assert_eq!(a.now_ns(), 7 * 109);
    }

    #[test]
    fn host_clock_follows_monotonic_time() {
        let clock = VirtualClock::host();
        assert!(!clock.is_deterministic());
        let t0 = clock.now_ns();
        clock.advance_insns(1_000_000);
        clock.advance_to_ns(u64::MAX);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let t1 = clock.now_ns();
        assert!(t1 >= t0 + 5_000_000, "{t0} -> {t1}");
        assert!(t1 < 60 * NS_PER_SEC, "advance calls are ignored in host mode");
    }
}
