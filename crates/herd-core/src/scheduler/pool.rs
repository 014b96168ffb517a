//! Slots shared by the workers of one process.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;

/// The slots (cost units) that several workers of one process share, so that
/// together they never run more than `total` at once.
///
/// Each worker holds at most its `share` at a time, so that every worker has
/// work and the process uses every core; a task costing more than a share may
/// take that much whole, once the pool has it.
#[derive(Debug)]
pub struct SlotPool {
    total: u32,
    share: u32,
    free: AtomicU32,
    /// Signalled when slots come back.
    returned: Notify,
}

impl SlotPool {
    /// A pool of `total` slots for `workers` workers.
    pub fn new(total: u32, workers: u32) -> Self {
        let workers = workers.clamp(1, total.max(1));
        SlotPool {
            total,
            share: total.div_ceil(workers),
            free: AtomicU32::new(total),
            returned: Notify::new(),
        }
    }

    /// All the slots.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// The most a worker holds, but for one task that costs more.
    pub fn share(&self) -> u32 {
        self.share
    }

    /// Takes up to `want` free slots; returns how many it took.
    pub fn take_up_to(&self, want: u32) -> u32 {
        let mut free = self.free.load(Ordering::Acquire);
        loop {
            let take = free.min(want);
            if take == 0 {
                return 0;
            }
            match self.free.compare_exchange_weak(
                free,
                free - take,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return take,
                Err(now) => free = now,
            }
        }
    }

    /// Takes exactly `want` slots if that many are free.
    pub fn take_exactly(&self, want: u32) -> bool {
        let mut free = self.free.load(Ordering::Acquire);
        loop {
            if free < want {
                return false;
            }
            match self.free.compare_exchange_weak(
                free,
                free - want,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => free = now,
            }
        }
    }

    /// Gives back slots that attempts held, waking workers that wait for some.
    pub fn release(&self, slots: u32) {
        if slots > 0 {
            self.free.fetch_add(slots, Ordering::AcqRel);
            self.returned.notify_waiters();
        }
    }

    /// Gives back slots taken but not used. Wakes no one: a worker that
    /// found none free has other reasons to look again (its own attempts
    /// ending, new work), and waking it here would have two idle workers
    /// hand the same slots back and forth.
    pub fn untake(&self, slots: u32) {
        if slots > 0 {
            self.free.fetch_add(slots, Ordering::AcqRel);
        }
    }

    /// Completes when slots are given back (enable it before looking).
    pub fn returned(&self) -> tokio::sync::futures::Notified<'_> {
        self.returned.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_takes() {
        let pool = SlotPool::new(64, 2);
        assert_eq!(pool.share(), 32);
        assert_eq!(pool.take_up_to(32), 32);
        assert_eq!(pool.take_up_to(40), 32);
        assert_eq!(pool.take_up_to(1), 0);
        assert!(!pool.take_exactly(3));
        pool.release(5);
        assert!(pool.take_exactly(3));
        assert_eq!(pool.take_up_to(9), 2);
        assert_eq!(SlotPool::new(3, 2).share(), 2);
        assert_eq!(SlotPool::new(1, 8).share(), 1);
    }
}
