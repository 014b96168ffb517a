//! What the scheduler asks of the code that runs tasks, and what it tells it back.

use std::any::Any;

use futures::future::BoxFuture;

use super::signal::Cancellation;
use crate::model::{Attempt, BatchId, Failure, Reason, TaskId, TaskState};
use crate::store::{AttemptLog, ClaimedTask, Store};

/// How an attempt ended, as the runner saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptResult {
    /// The work succeeded.
    Succeeded,
    /// The work failed.
    Failed {
        /// What kind of failure, for the retry policy.
        failure: Failure,
        /// What went wrong, for people.
        message: Option<String>,
    },
}

/// A runner's report of one attempt.
pub struct AttemptReport<O> {
    /// How it ended.
    pub result: AttemptResult,
    /// The output to keep in the store (for dependents, or a durable record).
    pub output: Option<O>,
    /// Private to the runner: handed back to [`Runner::deliver`] once the
    /// store has accepted the attempt as the task's last.
    pub delivery: Option<Box<dyn Any + Send>>,
    /// What the attempt left behind for people, kept with its record.
    pub log: Option<AttemptLog>,
}

impl<O> AttemptReport<O> {
    /// A success with nothing to keep or deliver.
    pub fn succeeded() -> Self {
        AttemptReport {
            result: AttemptResult::Succeeded,
            output: None,
            delivery: None,
            log: None,
        }
    }

    /// A failure with nothing to deliver.
    pub fn failed(failure: Failure, message: impl Into<Option<String>>) -> Self {
        AttemptReport {
            result: AttemptResult::Failed {
                failure,
                message: message.into(),
            },
            output: None,
            delivery: None,
            log: None,
        }
    }
}

/// The end of a task, as delivered to the runner of its batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskEnd {
    /// The batch.
    pub batch: BatchId,
    /// The task.
    pub task: TaskId,
    /// Its position in the batch.
    pub index: u64,
    /// Its last attempt (0 if it never ran).
    pub attempt: Attempt,
    /// Its terminal state.
    pub state: TaskState,
    /// Why it ended so.
    pub reason: Option<Reason>,
}

/// Runs the tasks of a flow: a library handler, a command template.
///
/// The scheduler calls [`Runner::start`] for every attempt it claims and
/// enforces timeouts, deadlines and cancellation around the returned future;
/// the runner only does the work. Every task of a batch bound to the runner
/// ends with exactly one [`Runner::deliver`] call, whether the task ran or was
/// skipped, cancelled or failed without running.
pub trait Runner<S: Store>: Send + Sync + 'static {
    /// Starts one attempt. `cancel` fires when the attempt is cancelled gracefully:
    /// the work should wind down and return soon.
    fn start(
        &self,
        task: ClaimedTask<S::Payload, S::Output>,
        cancel: Cancellation,
    ) -> BoxFuture<'static, AttemptReport<S::Output>>;

    /// Receives the end of a task; `delivery` is what the last attempt's
    /// report carried, if that attempt is what ended it.
    fn deliver(&self, end: TaskEnd, delivery: Option<Box<dyn Any + Send>>);

    /// Whether a timeout or deadline asks the attempt to stop (its
    /// [`Cancellation`] fires) and drops it only after the batch's grace,
    /// rather than dropping it at once. A process runner says yes: it sends
    /// SIGTERM to the process group, then SIGKILL once the grace has passed.
    /// Either way the attempt ends as timed out (or cut by the deadline).
    fn graceful_stop(&self) -> bool {
        false
    }

    /// Called after a group of [`Runner::deliver`] calls: a runner that
    /// buffers deliveries passes them on here, as one message per group
    /// rather than one per task.
    fn flush(&self) {}
}
