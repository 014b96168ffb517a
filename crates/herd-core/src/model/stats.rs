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
        let histogram = self.inner.get_or_insert_with(empty_histogram);
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

    /// The recorded durations as bytes, for stores that keep the histogram
    /// in a column: (microseconds, count) pairs of every non-empty bucket,
    /// little-endian, 16 bytes each.
    pub fn to_bytes(&self) -> Vec<u8> {
        let Some(histogram) = &self.inner else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        for bucket in histogram.iter_recorded() {
            bytes.extend_from_slice(&bucket.value_iterated_to().to_le_bytes());
            bytes.extend_from_slice(&u64::from(bucket.count_at_value()).to_le_bytes());
        }
        bytes
    }

    /// Reads what [`DurationHistogram::to_bytes`] wrote; `None` if the bytes
    /// are not such a histogram.
    pub fn from_bytes(bytes: &[u8]) -> Option<DurationHistogram> {
        if !bytes.len().is_multiple_of(16) {
            return None;
        }
        if bytes.is_empty() {
            return Some(DurationHistogram::default());
        }
        let mut histogram = empty_histogram();
        for pair in bytes.chunks_exact(16) {
            let (value, count) = pair.split_at(8);
            let value = u64::from_le_bytes(value.try_into().ok()?);
            let count = u64::from_le_bytes(count.try_into().ok()?);
            histogram.saturating_record_n(value.clamp(1, MAX_MICROS), u32::try_from(count).ok()?);
        }
        Some(DurationHistogram {
            inner: Some(histogram),
        })
    }
}

fn empty_histogram() -> Box<hdrhistogram::Histogram<u32>> {
    Box::new(
        hdrhistogram::Histogram::new_with_bounds(1, MAX_MICROS, 2)
            .expect("static histogram bounds are valid"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_bytes() {
        let mut h = DurationHistogram::default();
        assert_eq!(
            DurationHistogram::from_bytes(&h.to_bytes()).unwrap().len(),
            0
        );
        for ms in [1u64, 2, 2, 5, 40, 40, 40, 900, 30_000] {
            h.record(Duration::from_millis(ms));
        }
        let back = DurationHistogram::from_bytes(&h.to_bytes()).unwrap();
        assert_eq!(back.len(), h.len());
        for q in [0.0, 0.5, 0.95, 0.99, 1.0] {
            assert_eq!(back.quantile(q), h.quantile(q), "q = {q}");
        }
        assert!(DurationHistogram::from_bytes(&[1, 2, 3]).is_none());
    }

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
