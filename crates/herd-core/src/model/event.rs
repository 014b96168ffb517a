//! Events: one per state transition, the feed for progress bars, streams and metrics.

use super::ids::{Attempt, BatchId, TaskId, Timestamp};
use super::state::{BatchState, Reason, TaskState};

/// One state transition of a task or a batch.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// Position in the store's event sequence: strictly increasing.
    pub seq: u64,
    /// When the transition happened.
    pub at: Timestamp,
    /// The batch concerned.
    pub batch: BatchId,
    /// What changed.
    pub kind: EventKind,
}

/// What an [`Event`] records.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EventKind {
    /// A task changed state (`from` is `None` when it was created).
    Task {
        /// The task.
        task: TaskId,
        /// Its position in the batch, from 0, in submission order.
        index: u64,
        /// The attempt the transition belongs to (0 before the first claim).
        attempt: Attempt,
        /// The state it left.
        from: Option<TaskState>,
        /// The state it entered.
        to: TaskState,
        /// Why, for terminal states and `retry_wait`.
        reason: Option<Reason>,
    },
    /// The batch changed state (`from` is `None` when it was created).
    Batch {
        /// The state it left.
        from: Option<BatchState>,
        /// The state it entered.
        to: BatchState,
    },
}

impl Event {
    /// The task transition, if this is one.
    pub fn task_transition(&self) -> Option<(TaskId, TaskState, Option<Reason>)> {
        match self.kind {
            EventKind::Task {
                task, to, reason, ..
            } => Some((task, to, reason)),
            EventKind::Batch { .. } => None,
        }
    }
}
