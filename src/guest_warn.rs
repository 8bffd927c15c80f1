//! Warnings a guest can cause, rate-limited: a guest that repeats what the
//! monitor reports must not flood the log (nor slow itself down writing it).
//!
//! The first `GUEST_WARNINGS` are logged at warn level, then one line says
//! that the rest are logged only at debug level (`RUST_LOG=debug`).

use std::sync::atomic::{AtomicU32, Ordering};

/// Guest-caused warnings logged at warn level per run.
pub const GUEST_WARNINGS: u32 = 16;

static LOGGED: AtomicU32 = AtomicU32::new(0);

/// Should the next guest-caused warning go out at warn level? Logs the
/// suppression notice once, when the budget runs out.
pub fn allow() -> bool {
    let n = LOGGED.fetch_add(1, Ordering::Relaxed);
    if n == GUEST_WARNINGS {
        log::warn!("further guest-caused warnings are logged at debug level only");
    }
    n < GUEST_WARNINGS
}

/// `log::warn!` for a condition the guest caused, rate-limited.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {
        if $crate::guest_warn::allow() {
            log::warn!($($arg)+);
        } else {
            log::debug!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_budget_runs_out() {
        let allowed = (0..3 * super::GUEST_WARNINGS).filter(|_| super::allow()).count() as u32;
        // (Other tests may have used some of the budget already.)
        assert!(allowed <= super::GUEST_WARNINGS);
        assert!(!super::allow());
    }
}
