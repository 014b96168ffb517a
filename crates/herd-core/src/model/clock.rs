//! Where "now" comes from.

use std::time::{SystemTime, UNIX_EPOCH};

use super::ids::Timestamp;

/// A source of the current time for the scheduler.
///
/// The scheduler reads time only through a clock and hands it to the store, so
/// the same code runs against the wall clock in production and under tokio's
/// paused time in tests.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The wall clock, as durable stores shared between machines need it.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(since.as_micros() as i64)
    }
}

/// Wall-clock time as of creation, advanced by tokio's monotonic clock.
///
/// Under `#[tokio::test(start_paused = true)]` it advances with paused time,
/// so retries, timeouts and leases are tested without sleeping.
#[derive(Clone, Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
    origin_wall: Timestamp,
}

impl TokioClock {
    /// A clock that starts at the current wall-clock time.
    pub fn new() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
            origin_wall: SystemClock.now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.origin_wall.plus(self.origin.elapsed())
    }
}
