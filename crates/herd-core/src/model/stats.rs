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

/// Attempt durations, in buckets of two significant digits (so percentiles
/// within 1%, from 1 µs to 1 day), the buckets of HdrHistogram: only the
/// buckets that were recorded are kept, in order, as (highest value in
/// the bucket, count) pairs.
///
/// Sparse because a store reads and rewrites the histogram with every
/// batch row it writes, and a batch of short commands fills a few hundred
/// buckets: a dense HdrHistogram allocated, zeroed and scanned its 15 KB of
/// counts each time (under callgrind, 2,000 `/bin/true` reported one at a
/// time: 67 M instructions to decode and encode, 7% of `herd run`'s; 45 M
/// sparse), and a memory store kept 15 KB for every batch.
#[derive(Clone, Debug, Default)]
pub struct DurationHistogram {
    buckets: Vec<(u64, u32)>,
    total: u64,
}

const MAX_MICROS: u64 = 86_400_000_000;

/// The buckets' bounds, from an empty HdrHistogram of the same range and
/// precision (it computes them; its counts are never used).
static SHAPE: std::sync::LazyLock<hdrhistogram::Histogram<u32>> = std::sync::LazyLock::new(|| {
    hdrhistogram::Histogram::new_with_bounds(1, MAX_MICROS, 2)
        .expect("static histogram bounds are valid")
});

impl DurationHistogram {
    /// Records one attempt's duration.
    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.record_n(micros, 1);
    }

    /// Adds `n` to the bucket of `micros` (clamped to the range).
    fn record_n(&mut self, micros: u64, n: u32) {
        let top = SHAPE.highest_equivalent(micros.clamp(1, MAX_MICROS));
        // In order, as bytes are read back: at the end.
        if self.buckets.last().is_none_or(|&(last, _)| last < top) {
            self.buckets.push((top, n));
        } else {
            match self.buckets.binary_search_by_key(&top, |&(value, _)| value) {
                Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(n),
                Err(i) => self.buckets.insert(i, (top, n)),
            }
        }
        self.total += u64::from(n);
    }

    /// The duration at quantile `q` (0.0–1.0), `None` when nothing was
    /// recorded: the highest value of the bucket where the count reaches
    /// `q` of the total (its lowest for `q = 0`), as HdrHistogram answers.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let q = q.min(1.0);
        let wanted = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        let &(top, _) = self
            .buckets
            .iter()
            .find(|&&(_, count)| {
                seen += u64::from(count);
                seen >= wanted
            })
            .or(self.buckets.last())?;
        let micros = match q == 0.0 {
            true => SHAPE.lowest_equivalent(top),
            false => top,
        };
        Some(Duration::from_micros(micros))
    }

    /// Attempts recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The recorded durations as bytes, for stores that keep the histogram
    /// in a column, rewritten with every batch row: a `0xFF` byte, then for
    /// every non-empty bucket in order its value in microseconds (the
    /// difference from the one before) and its count, as LEB128 varints.
    /// About two bytes a bucket: the first format's 16 (still read, see
    /// [`DurationHistogram::from_bytes`]) made a batch of commands of varied
    /// lengths carry kilobytes in every write of its row (after 10,000 runs
    /// of `/bin/true`, 279 buckets: 4,464 bytes, past a SQLite page and
    /// PostgreSQL's TOAST threshold; 530 in this format). Its length is
    /// never a multiple of 16, as the first format's always is.
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut bytes = Vec::with_capacity(1 + 4 * self.buckets.len());
        bytes.push(COMPACT);
        let mut last = 0;
        for &(value, count) in &self.buckets {
            if count == 0 {
                continue;
            }
            push_varint(&mut bytes, value - last);
            push_varint(&mut bytes, u64::from(count));
            last = value;
        }
        // A varint's last byte is below 0x80: a trailing `COMPACT` is
        // padding, never part of one.
        if bytes.len().is_multiple_of(16) {
            bytes.push(COMPACT);
        }
        bytes
    }

    /// Reads what [`DurationHistogram::to_bytes`] wrote, or the first
    /// format (a multiple of 16 bytes: little-endian `u64` pairs of value
    /// and count); `None` if the bytes are neither.
    pub fn from_bytes(bytes: &[u8]) -> Option<DurationHistogram> {
        let mut histogram = DurationHistogram {
            // Two bytes or more a bucket.
            buckets: Vec::with_capacity(bytes.len() / 2),
            total: 0,
        };
        let mut record = |value: u64, count: u64| -> Option<()> {
            histogram.record_n(value, u32::try_from(count).ok()?);
            Some(())
        };
        // No bytes: no pairs of the first format, an empty histogram.
        if bytes.len().is_multiple_of(16) {
            for pair in bytes.chunks_exact(16) {
                let (value, count) = pair.split_at(8);
                record(
                    u64::from_le_bytes(value.try_into().ok()?),
                    u64::from_le_bytes(count.try_into().ok()?),
                )?;
            }
        } else {
            let mut rest = match bytes {
                [COMPACT, body @ .., COMPACT] => body,
                [COMPACT, body @ ..] => body,
                _ => return None,
            };
            let mut value: u64 = 0;
            while !rest.is_empty() {
                value = value.checked_add(read_varint(&mut rest)?)?;
                record(value, read_varint(&mut rest)?)?;
            }
        }
        Some(histogram)
    }
}

/// The first byte of [`DurationHistogram::to_bytes`]'s compact format.
const COMPACT: u8 = 0xFF;

fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The varint at the start of `bytes`, which it moves past; `None` if it
/// is cut short or does not fit a `u64`.
fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7F);
        if i == 9 && part > 1 {
            return None;
        }
        n |= part << (7 * i);
        if b < 0x80 {
            *bytes = &bytes[i + 1..];
            return Some(n);
        }
    }
    None
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
        for bad in [
            &[1, 2, 3][..],
            &[COMPACT, 0x80],                               // a varint cut short
            &[COMPACT, 5],                                  // a value without its count
            &[COMPACT, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 1], // a count past u32
            &[0xFE, 1, 1],                                  // not the compact format's tag
        ] {
            assert!(DurationHistogram::from_bytes(bad).is_none(), "{bad:?}");
        }
    }

    /// Histograms of every size come back whole, in a few bytes a bucket,
    /// and never as long as a multiple of 16 (which the first format is).
    #[test]
    fn compact_histograms_of_every_size() {
        let mut h = DurationHistogram::default();
        for i in 0..600u64 {
            // Spread over the range: many distinct buckets, some repeated.
            h.record(Duration::from_micros(1 + i * i * 37 % 5_000_000));
            let bytes = h.to_bytes();
            assert!(!bytes.len().is_multiple_of(16), "{} bytes", bytes.len());
            let back = DurationHistogram::from_bytes(&bytes).unwrap();
            assert_eq!(back.len(), h.len());
            for q in [0.0, 0.25, 0.5, 0.9, 0.99, 1.0] {
                assert_eq!(back.quantile(q), h.quantile(q), "{i}: q = {q}");
            }
        }
        let buckets = h.buckets.len();
        assert!(
            h.to_bytes().len() <= 5 * buckets,
            "{} bytes for {buckets} buckets",
            h.to_bytes().len()
        );
    }

    /// Histograms stored in the first format (16-byte pairs) still read.
    #[test]
    fn first_format_still_reads() {
        let mut h = DurationHistogram::default();
        for ms in [1u64, 3, 3, 700, 25_000] {
            h.record(Duration::from_millis(ms));
        }
        let mut old = Vec::new();
        for &(value, count) in &h.buckets {
            old.extend_from_slice(&value.to_le_bytes());
            old.extend_from_slice(&u64::from(count).to_le_bytes());
        }
        let back = DurationHistogram::from_bytes(&old).unwrap();
        assert_eq!(back.len(), 5);
        for q in [0.0, 0.5, 1.0] {
            assert_eq!(back.quantile(q), h.quantile(q), "q = {q}");
        }
    }

    proptest::proptest! {
        /// The buckets, quantiles and bytes are HdrHistogram's: the bytes a
        /// store wrote with a dense HdrHistogram read the same, and the
        /// figures shown do not move.
        #[test]
        fn answers_as_hdrhistogram_does(
            micros in proptest::collection::vec(
                proptest::prop_oneof![0u64..2_000, 0u64..100_000_000, 0u64..u64::MAX],
                0..300,
            ),
        ) {
            let mut dense = hdrhistogram::Histogram::<u32>::new_with_bounds(1, MAX_MICROS, 2).unwrap();
            let mut sparse = DurationHistogram::default();
            for &m in &micros {
                dense.saturating_record(m.clamp(1, MAX_MICROS));
                sparse.record(Duration::from_micros(m));
            }
            proptest::prop_assert_eq!(sparse.len(), dense.len());
            for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
                let expected = (!dense.is_empty())
                    .then(|| Duration::from_micros(dense.value_at_quantile(q)));
                proptest::prop_assert_eq!(sparse.quantile(q), expected, "q = {}", q);
            }
            let mut recorded = dense.iter_recorded().map(|b| (b.value_iterated_to(), b.count_at_value()));
            for &(value, count) in &sparse.buckets {
                proptest::prop_assert_eq!(Some((value, count)), recorded.next());
            }
            proptest::prop_assert_eq!(recorded.next(), None);
        }
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
