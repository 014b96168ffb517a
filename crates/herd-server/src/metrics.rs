//! `GET /metrics`: Prometheus text. Live tasks by state and the queue depth
//! come from the store's per-batch counters (no row is counted); attempts,
//! transitions and the attempt-duration histogram from the events this
//! process has seen since it started.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;

use herd_core::{Event, EventKind, StateCounts, TaskId, TaskState, Timestamp};

/// Upper bounds of the duration histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// What the server counts from the events it sees.
#[derive(Debug)]
pub struct Metrics {
    slots: u32,
    inner: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Task transitions, by the state entered.
    entered: BTreeMap<&'static str, u64>,
    /// Attempts started.
    attempts: u64,
    /// When each running attempt started: memory follows the running tasks.
    running_since: HashMap<TaskId, Timestamp>,
    /// Attempts that ended, per bucket (not cumulative), and their sum.
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
    /// Events missed because the feed lagged.
    missed: u64,
}

impl Metrics {
    /// Metrics of a server whose worker has `slots` slots.
    pub fn new(slots: u32) -> Self {
        Metrics {
            slots,
            inner: Mutex::new(Counters::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one operation's events.
    pub fn observe(&self, events: &[Event]) {
        let mut c = self.lock();
        for e in events {
            let EventKind::Task { task, from, to, .. } = e.kind else {
                continue;
            };
            *c.entered.entry(to.as_str()).or_default() += 1;
            if to == TaskState::Running {
                c.attempts += 1;
                c.running_since.insert(task, e.at);
            } else if from == Some(TaskState::Running) && to == TaskState::Queued {
                // A claim given back unstarted ran no time. (It stays
                // counted among attempts: a counter never goes down.)
                c.running_since.remove(&task);
            } else if let Some(start) = c.running_since.remove(&task) {
                let secs = e.at.since(start).as_secs_f64();
                let bucket = BUCKETS
                    .iter()
                    .position(|b| secs <= *b)
                    .unwrap_or(BUCKETS.len());
                c.buckets[bucket] += 1;
                c.sum += secs;
                c.count += 1;
            }
        }
    }

    /// Notes events missed by a lagging feed.
    pub fn missed(&self, n: u64) {
        self.lock().missed += n;
    }

    /// The Prometheus text, with the live counts of unfinished batches.
    pub fn render(&self, live: &StateCounts, live_batches: usize) -> String {
        let c = self.lock();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP herd_tasks Tasks of unfinished batches, by state.\n# TYPE herd_tasks gauge"
        );
        for state in TaskState::ALL {
            let _ = writeln!(
                out,
                "herd_tasks{{state=\"{}\"}} {}",
                state.as_str(),
                live.get(state)
            );
        }
        let _ = writeln!(
            out,
            "# HELP herd_queue_depth Tasks ready to run and waiting for a slot.\n# TYPE herd_queue_depth gauge\nherd_queue_depth {}",
            live.queued
        );
        let _ = writeln!(
            out,
            "# HELP herd_batches_live Batches not finished.\n# TYPE herd_batches_live gauge\nherd_batches_live {live_batches}"
        );
        let _ = writeln!(
            out,
            "# HELP herd_worker_slots Slots of this server's worker.\n# TYPE herd_worker_slots gauge\nherd_worker_slots {}",
            self.slots
        );
        let _ = writeln!(
            out,
            "# HELP herd_worker_slots_busy Tasks running in this server's store.\n# TYPE herd_worker_slots_busy gauge\nherd_worker_slots_busy {}",
            live.running
        );
        let _ = writeln!(
            out,
            "# HELP herd_attempts_total Attempts started since the server started.\n# TYPE herd_attempts_total counter\nherd_attempts_total {}",
            c.attempts
        );
        let _ = writeln!(
            out,
            "# HELP herd_task_transitions_total Task transitions since the server started, by the state entered.\n# TYPE herd_task_transitions_total counter"
        );
        for state in TaskState::ALL {
            let n = c.entered.get(state.as_str()).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "herd_task_transitions_total{{to=\"{}\"}} {n}",
                state.as_str()
            );
        }
        let _ = writeln!(
            out,
            "# HELP herd_attempt_duration_seconds Durations of attempts that ended.\n# TYPE herd_attempt_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += c.buckets[i];
            let _ = writeln!(
                out,
                "herd_attempt_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "herd_attempt_duration_seconds_bucket{{le=\"+Inf\"}} {}\nherd_attempt_duration_seconds_sum {}\nherd_attempt_duration_seconds_count {}",
            c.count, c.sum, c.count
        );
        let _ = writeln!(
            out,
            "# HELP herd_events_missed_total Events the metrics missed (a lagging feed).\n# TYPE herd_events_missed_total counter\nherd_events_missed_total {}",
            c.missed
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_core::{Attempt, BatchId};

    fn task_event(seq: u64, at_ms: i64, task: i64, to: TaskState) -> Event {
        Event {
            seq,
            at: Timestamp(at_ms * 1000),
            batch: BatchId(1),
            kind: EventKind::Task {
                task: TaskId(task),
                index: 0,
                attempt: Attempt(1),
                from: None,
                to,
                reason: None,
            },
        }
    }

    #[test]
    fn attempts_and_durations_come_from_transitions() {
        let m = Metrics::new(4);
        m.observe(&[
            task_event(1, 0, 1, TaskState::Running),
            task_event(2, 0, 2, TaskState::Running),
        ]);
        m.observe(&[
            task_event(3, 20, 1, TaskState::Succeeded),
            task_event(4, 2000, 2, TaskState::Failed),
        ]);
        let live = StateCounts {
            queued: 3,
            ..StateCounts::default()
        };
        let text = m.render(&live, 1);
        for line in [
            "herd_attempts_total 2",
            "herd_queue_depth 3",
            "herd_worker_slots 4",
            "herd_tasks{state=\"queued\"} 3",
            "herd_task_transitions_total{to=\"failed\"} 1",
            "herd_attempt_duration_seconds_bucket{le=\"0.01\"} 0",
            "herd_attempt_duration_seconds_bucket{le=\"0.025\"} 1",
            "herd_attempt_duration_seconds_bucket{le=\"2.5\"} 2",
            "herd_attempt_duration_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
