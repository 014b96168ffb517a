//! Wake-ups from a store to its workers.

use tokio::sync::Notify;

/// What a store tells waiting workers.
///
/// Both are `Notify` used with `notify_waiters`: a worker enables its
/// `notified()` future before looking at the store, so a wake-up sent while it
/// looks is not missed.
#[derive(Debug, Default)]
pub struct Signals {
    /// New tasks became ready (insert, retry due, dependency met, resume).
    pub work: Notify,
    /// Running attempts must be cancelled: renew leases now to learn which.
    pub control: Notify,
}
