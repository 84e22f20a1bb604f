//! The daemon's clock: where device time (DEVICE_TIME_NS, the timestamps of
//! event records, status-block fields, buffer completions and `--trace`
//! events) comes from.
//!
//! - [`Clock::host`] (the default): the host's monotonic clock, as a card
//!   with its own oscillator. What the guest reads depends on how fast the
//!   host ran it.
//! - [`Clock::virtual_time`] (`--clock virtual`): a counter that only the
//!   card's own work moves. Each command-queue request takes
//!   [`REQUEST_NS`]; frame `k` of a capture session that started at device
//!   time `t0` is stamped `t0 + (k + 1) * period` (the session's `1 s / fps`,
//!   or [`FREE_RUN_PERIOD_NS`] when it runs free) and moves the counter
//!   there if it is behind; an injected DMA latency moves it by the latency
//!   instead of sleeping. Reading it never moves it. Given the same
//!   requests and buffers in the same order, every timestamp the card
//!   reports is the same, however fast or slow the host is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Virtual device time one command-queue request takes.
pub const REQUEST_NS: u64 = 1_000;

/// Virtual device time between two frames of a free-running (`fps` 0)
/// capture session.
pub const FREE_RUN_PERIOD_NS: u64 = 1_000_000;

/// Which clock device time comes from (see the module documentation).
#[derive(Clone, Debug)]
pub enum Clock {
    /// Nanoseconds of the host's monotonic clock since the daemon started.
    Host(Instant),
    /// Nanoseconds of virtual time, moved only by the card's work.
    Virtual(Arc<AtomicU64>),
}

impl Clock {
    /// The host's monotonic clock, time zero now.
    pub fn host() -> Clock {
        Clock::Host(Instant::now())
    }

    /// Virtual time, at zero.
    pub fn virtual_time() -> Clock {
        Clock::Virtual(Arc::new(AtomicU64::new(0)))
    }

    pub fn is_virtual(&self) -> bool {
        matches!(self, Clock::Virtual(_))
    }

    /// Nanoseconds since time zero.
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Host(origin) => u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Clock::Virtual(t) => t.load(Ordering::Acquire),
        }
    }

    /// A command-queue request is about to run: virtual time moves on by
    /// [`REQUEST_NS`].
    pub fn request(&self) {
        if let Clock::Virtual(t) = self {
            t.fetch_add(REQUEST_NS, Ordering::AcqRel);
        }
    }

    /// Virtual time is at least `t_ns` from now on (a frame stamped then).
    pub fn reach(&self, t_ns: u64) {
        if let Clock::Virtual(t) = self {
            t.fetch_max(t_ns, Ordering::AcqRel);
        }
    }

    /// The card spends `d` (an injected DMA latency): the host clock
    /// sleeps, virtual time moves on by `d` at once.
    pub fn spend(&self, d: Duration) {
        match self {
            Clock::Host(_) => std::thread::sleep(d),
            Clock::Virtual(t) => {
                let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                // Saturating: a huge latency pins the clock, never wraps it.
                let _ = t.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    Some(v.saturating_add(ns))
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_time_moves_only_with_work() {
        let clock = Clock::virtual_time();
        assert_eq!(clock.now_ns(), 0);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(clock.now_ns(), 0, "reading must not move virtual time");
        clock.request();
        clock.request();
        assert_eq!(clock.now_ns(), 2 * REQUEST_NS);
        clock.reach(1_000_000);
        assert_eq!(clock.now_ns(), 1_000_000);
        clock.reach(5);
        assert_eq!(clock.now_ns(), 1_000_000, "reach never goes back");
        clock.spend(Duration::from_micros(3));
        assert_eq!(clock.now_ns(), 1_003_000);
        clock.spend(Duration::MAX);
        assert_eq!(clock.now_ns(), u64::MAX);
    }

    #[test]
    fn host_time_moves_by_itself() {
        let clock = Clock::host();
        let a = clock.now_ns();
        std::thread::sleep(Duration::from_millis(2));
        clock.request();
        clock.reach(u64::MAX);
        assert!(clock.now_ns() >= a + 2_000_000);
    }
}
