//! Counts per state and the figures of a batch's run.

use std::time::Duration;

use super::state::TaskState;

/// How many tasks of a batch are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateCounts {
    /// Waiting for dependencies.
    pub pending: u64,
    /// Ready to run.
    pub queued: u64,
    /// Running now.
    pub running: u64,
    /// Waiting to retry.
    pub retry_wait: u64,
    /// Finished well.
    pub succeeded: u64,
    /// Finished badly.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Skipped after an upstream failure.
    pub skipped: u64,
}

impl StateCounts {
    /// The count for `state`.
    pub fn get(&self, state: TaskState) -> u64 {
        match state {
            TaskState::Pending => self.pending,
            TaskState::Queued => self.queued,
            TaskState::Running => self.running,
            TaskState::RetryWait => self.retry_wait,
            TaskState::Succeeded => self.succeeded,
            TaskState::Failed => self.failed,
            TaskState::Cancelled => self.cancelled,
            TaskState::Skipped => self.skipped,
        }
    }

    fn slot(&mut self, state: TaskState) -> &mut u64 {
        match state {
            TaskState::Pending => &mut self.pending,
            TaskState::Queued => &mut self.queued,
            TaskState::Running => &mut self.running,
            TaskState::RetryWait => &mut self.retry_wait,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Failed => &mut self.failed,
            TaskState::Cancelled => &mut self.cancelled,
            TaskState::Skipped => &mut self.skipped,
        }
    }

    /// Records a move of one task from `from` (if it existed) to `to`.
    pub fn shift(&mut self, from: Option<TaskState>, to: TaskState) {
        if let Some(from) = from {
            let slot = self.slot(from);
            *slot = slot.saturating_sub(1);
        }
        *self.slot(to) += 1;
    }

    /// All tasks.
    pub fn total(&self) -> u64 {
        TaskState::ALL.iter().map(|s| self.get(*s)).sum()
    }

    /// Tasks in a terminal state.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled + self.skipped
    }

    /// Tasks not yet in a terminal state.
    pub fn active(&self) -> u64 {
        self.pending + self.queued + self.running + self.retry_wait
    }
}

/// The figures of a batch: what a summary or a dashboard shows.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchStats {
    /// Tasks per state.
    pub counts: StateCounts,
    /// Attempts scheduled again after a failure or a loss.
    pub retries: u64,
    /// Median attempt duration.
    pub p50: Option<Duration>,
    /// 95th percentile attempt duration.
    pub p95: Option<Duration>,
    /// 99th percentile attempt duration.
    pub p99: Option<Duration>,
    /// Finished tasks per second of wall time.
    pub throughput: f64,
    /// From the first start to the end (or to now, while running).
    pub wall: Duration,
}

/// Attempt durations, in a fixed-size histogram (2 significant digits, so
/// percentiles within 1%, from 1 µs to 1 day): about 15 KB however many
/// attempts, allocated at the first one recorded.
#[derive(Clone, Debug, Default)]
pub struct DurationHistogram {
    inner: Option<Box<hdrhistogram::Histogram<u32>>>,
}

const MAX_MICROS: u64 = 86_400_000_000;

impl DurationHistogram {
    /// Records one attempt's duration.
    pub fn record(&mut self, d: Duration) {
        let histogram = self.inner.get_or_insert_with(|| {
            Box::new(
                hdrhistogram::Histogram::new_with_bounds(1, MAX_MICROS, 2)
                    .expect("static histogram bounds are valid"),
            )
        });
        let micros = (d.as_micros() as u64).clamp(1, MAX_MICROS);
        histogram.saturating_record(micros);
    }

    /// The duration at quantile `q` (0.0–1.0), `None` when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let histogram = self.inner.as_ref().filter(|h| !h.is_empty())?;
        Some(Duration::from_micros(histogram.value_at_quantile(q)))
    }

    /// Attempts recorded.
    pub fn len(&self) -> u64 {
        self.inner.as_ref().map_or(0, |h| h.len())
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_shifts() {
        let mut c = StateCounts::default();
        c.shift(None, TaskState::Queued);
        c.shift(None, TaskState::Pending);
        c.shift(Some(TaskState::Queued), TaskState::Running);
        c.shift(Some(TaskState::Running), TaskState::Succeeded);
        assert_eq!((c.total(), c.finished(), c.active()), (2, 1, 1));
        assert_eq!(c.get(TaskState::Pending), 1);
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = DurationHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).unwrap().as_millis();
        let p99 = h.quantile(0.99).unwrap().as_millis();
        assert!((49..=51).contains(&p50), "{p50}");
        assert!((98..=100).contains(&p99), "{p99}");
    }
}
