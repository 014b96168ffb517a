//! The values that cross the store contract.

use std::sync::Arc;
use std::time::Duration;

use crate::model::{
    Attempt, BatchId, BatchPolicy, BatchState, Event, Priority, Reason, StateCounts, SubmitError,
    TaskId, TaskState, Timestamp, WorkerId,
};

/// Events produced by one store operation, in order. Shared with subscribers.
pub type Events = Arc<Vec<Event>>;

/// What a batch insert did.
#[derive(Clone, Debug)]
pub struct Inserted {
    /// The batch: new, or the earlier one with the same idempotency key.
    pub batch: BatchId,
    /// Ids of the tasks, in submission order (empty when `existing`).
    pub tasks: Vec<TaskId>,
    /// The idempotency key matched an earlier batch; nothing was inserted.
    pub existing: bool,
    /// The transitions of the insert (the batch and every task created).
    pub events: Events,
    /// The batch as the insert left it (as [`crate::store::Store::batch_get`]
    /// would read it just after), or the earlier batch as it is now.
    pub info: BatchInfo,
}

/// What appending tasks to an open batch did.
#[derive(Clone, Debug)]
pub struct Appended {
    /// Position in the batch of the first appended task.
    pub first_index: u64,
    /// The batch no longer starts tasks (cancelled, stopped by policy or past
    /// its deadline): nothing was stored, and the submitter should stop appending.
    pub stopped: bool,
    /// The transitions of the append.
    pub events: Events,
}

/// A worker's request for work.
#[derive(Clone, Copy, Debug)]
pub struct ClaimRequest {
    /// Who claims.
    pub worker: WorkerId,
    /// Free cost units at the worker: the claimed tasks' costs add up to at most this.
    pub capacity: u32,
    /// At most this many tasks.
    pub max_tasks: usize,
    /// Lease length: the task is rescued if not renewed within it.
    pub lease: Duration,
    /// Take tasks only from this batch (`herd run`'s worker runs only the
    /// batch it submitted, even when other batches share the store);
    /// `None`: from any batch. Order, fair share, concurrency and pauses
    /// apply as for any claim.
    pub batch: Option<BatchId>,
}

/// An upstream task's result as a dependent sees it.
#[derive(Clone, Debug)]
pub struct Upstream<O> {
    /// The upstream task.
    pub task: TaskId,
    /// Its key.
    pub key: Option<Arc<str>>,
    /// How it ended.
    pub state: TaskState,
    /// What it produced, if it succeeded and produced something.
    pub output: Option<O>,
}

/// A task handed to a worker, under a lease, for one attempt.
#[derive(Clone, Debug)]
pub struct ClaimedTask<P, O> {
    /// The task.
    pub id: TaskId,
    /// Its batch.
    pub batch: BatchId,
    /// Its position in the batch, from 0.
    pub index: u64,
    /// Its key, if it has one.
    pub key: Option<Arc<str>>,
    /// The attempt this claim starts; every report about it names it.
    pub attempt: Attempt,
    /// The first attempt of the task's current run: 1, or the first after a
    /// rerun. Attempts before it do not count against the retry policy.
    pub first_attempt: Attempt,
    /// How many earlier attempts were lost to dead workers.
    pub lost: u32,
    /// Slots it occupies.
    pub cost: u32,
    /// Its priority.
    pub priority: Priority,
    /// What it works on.
    pub payload: P,
    /// Results of the tasks it depends on, in the order of its `after`.
    pub upstream: Vec<Upstream<O>>,
    /// Whether other tasks depend on it: its output must reach the store.
    pub has_dependents: bool,
    /// Its batch's policies.
    pub policy: Arc<BatchPolicy>,
    /// The lease expires then unless renewed.
    pub lease_until: Timestamp,
}

/// What a claim returned.
#[derive(Debug)]
pub struct Claim<P, O> {
    /// The claimed tasks, best first.
    pub tasks: Vec<ClaimedTask<P, O>>,
    /// The earliest time at which something becomes due without any further
    /// operation: a retry's backoff ending, or a batch deadline.
    pub next_due: Option<Timestamp>,
    /// The cost of the next task in line when it did not fit the capacity
    /// asked for: the claim stopped there rather than let smaller tasks
    /// behind it jump ahead.
    pub blocked_by: Option<u32>,
    /// The transitions of the claim.
    pub events: Events,
}

/// What rerunning a finished batch did.
#[derive(Clone, Debug)]
pub struct Rerun {
    /// The tasks that will run again, in batch order (empty: nothing to rerun,
    /// and the batch stays as it was).
    pub tasks: Vec<TaskId>,
    /// The transitions: the batch reopened, each task back to waiting or ready.
    pub events: Events,
}

/// (task, attempt): the fence every report after a claim carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The task.
    pub task: TaskId,
    /// The attempt.
    pub attempt: Attempt,
}

/// How an attempt ended, as the worker reports it.
#[derive(Clone, Debug)]
pub enum AttemptOutcome<O> {
    /// It worked; `output` is kept when tasks depend on it.
    Succeeded {
        /// The result, for dependents.
        output: Option<O>,
    },
    /// It failed; `retry_at` schedules another attempt, `None` ends the task.
    Failed {
        /// Why.
        reason: Reason,
        /// What the handler or process said.
        message: Option<String>,
        /// When to try again, if the retry policy allows.
        retry_at: Option<Timestamp>,
    },
    /// It was cancelled (by a user, the error policy or the deadline).
    Cancelled {
        /// Why.
        reason: Reason,
    },
    /// It never started: the worker gives the claim back (a task it held
    /// ready to start, when it stops). The task goes back to its place in
    /// its batch's queue and its attempt number is given back, so nothing
    /// counts against it: no attempt is recorded, no retry, no `lost`. A
    /// task the store had asked to cancel ends cancelled instead, with that
    /// reason.
    Released,
}

/// A finished attempt, reported by the worker that ran it.
#[derive(Clone, Debug)]
pub struct Completion<O> {
    /// Which attempt of which task.
    pub fence: Fence,
    /// How it ended.
    pub outcome: AttemptOutcome<O>,
    /// How long it ran, from its start at the worker. The attempt's record
    /// starts this long before the report (but never before the claim), so
    /// that a task claimed ahead and started later shows when it ran.
    pub duration: Duration,
    /// What it left behind for people (a process's exit code and output tails).
    pub log: Option<AttemptLog>,
}

/// What an attempt left behind for people: a process's exit code and the
/// tails of its output. Kept with the attempt's record, never read by the scheduler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttemptLog {
    /// The exit code, if the process exited (rather than died of a signal).
    pub exit_code: Option<i32>,
    /// The last bytes of standard output, at most the runner's cap.
    pub stdout: Vec<u8>,
    /// How many bytes of standard output there were in all.
    pub stdout_total: u64,
    /// The last bytes of standard error, at most the runner's cap.
    pub stderr: Vec<u8>,
    /// How many bytes of standard error there were in all.
    pub stderr_total: u64,
}

/// A report refused because it names an attempt that is no longer current
/// (the task was rescued and claimed again, cancelled, or finished).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stale report for task {} attempt {}: the task has moved on", .0.task, .0.attempt)]
pub struct Stale(pub Fence);

/// What a batch of completions did.
#[derive(Debug)]
pub struct Applied {
    /// Per completion, in order: the state the task entered, or why it was refused.
    pub results: Vec<Result<TaskState, Stale>>,
    /// The transitions: the completions and everything they caused
    /// (dependents released or skipped, tasks cancelled by a tripped policy,
    /// the batch finishing).
    pub events: Events,
}

/// Whether a cancelled task's handler is asked to stop or dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelMode {
    /// Signal the attempt (its handler's cancellation signal, SIGTERM) and let it finish within the grace.
    Graceful,
    /// Stop the attempt now (drop its future, SIGKILL).
    Forced,
}

/// A running attempt that must be cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CancelRequest {
    /// The attempt.
    pub fence: Fence,
    /// How.
    pub mode: CancelMode,
    /// The reason it will end with.
    pub reason: Reason,
}

/// What a lease renewal found.
#[derive(Clone, Debug, Default)]
pub struct Renewal {
    /// Attempts to cancel.
    pub cancel: Vec<CancelRequest>,
    /// Attempts this worker no longer owns (rescued or finished): stop them,
    /// their reports would be refused.
    pub lost: Vec<Fence>,
}

/// A batch as the store knows it.
#[derive(Clone, Debug)]
pub struct BatchInfo {
    /// The batch.
    pub id: BatchId,
    /// Its name.
    pub name: Option<String>,
    /// Its state.
    pub state: BatchState,
    /// Its priority.
    pub priority: Priority,
    /// Its concurrency.
    pub concurrency: u32,
    /// Its policies.
    pub policy: Arc<BatchPolicy>,
    /// Tasks per state.
    pub counts: StateCounts,
    /// Attempts scheduled again.
    pub retries: u64,
    /// More tasks may still be appended.
    pub open: bool,
    /// When it was inserted.
    pub created_at: Timestamp,
    /// When its first task started.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal state.
    pub finished_at: Option<Timestamp>,
}

/// A task as the store knows it.
#[derive(Clone, Debug)]
pub struct TaskInfo {
    /// The task.
    pub id: TaskId,
    /// Its batch.
    pub batch: BatchId,
    /// Its position in the batch.
    pub index: u64,
    /// Its key.
    pub key: Option<Arc<str>>,
    /// Its state.
    pub state: TaskState,
    /// Why it is in that state.
    pub reason: Option<Reason>,
    /// Its latest attempt (0 before the first claim).
    pub attempt: Attempt,
    /// Attempts lost to dead workers.
    pub lost: u32,
    /// Its priority.
    pub priority: Priority,
    /// Its cost.
    pub cost: u32,
    /// The message of its last failed attempt.
    pub message: Option<String>,
    /// The worker running its current attempt (while it runs).
    pub worker: Option<WorkerId>,
    /// When its current attempt started (while it runs).
    pub started_at: Option<Timestamp>,
}

/// Which batches [`Store::batch_list`](super::Store::batch_list) returns:
/// newest first, a page at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchQuery {
    /// Only batches in one of these states; empty: any state.
    pub states: Vec<BatchState>,
    /// Cursor: only batches with ids strictly below this one (the last id
    /// of the previous page); `None`: from the newest.
    pub before: Option<BatchId>,
    /// At most this many batches (0: none).
    pub limit: usize,
}

/// Which tasks of a batch [`Store::task_list`](super::Store::task_list)
/// returns: in batch order, a page at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskQuery {
    /// Only tasks in one of these states; empty: any state.
    pub states: Vec<TaskState>,
    /// Cursor: only tasks whose index is strictly above this one (the last
    /// index of the previous page); `None`: from the first.
    pub after: Option<u64>,
    /// At most this many tasks (0: none).
    pub limit: usize,
    /// Include the log (exit code, output tails) of each task's last attempt.
    pub logs: bool,
}

/// Which events [`Store::event_list`](super::Store::event_list) returns:
/// in `seq` order, a page at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Cursor: only events with `seq` strictly above this (the last `seq`
    /// seen); 0: from the first.
    pub after: u64,
    /// Only the events of this batch; `None`: of every batch.
    pub batch: Option<BatchId>,
    /// At most this many events (0: none).
    pub limit: usize,
}

/// A task with what it works on and what it produced, as listed by
/// [`Store::task_list`](super::Store::task_list).
#[derive(Clone, Debug)]
pub struct TaskRecord<P, O> {
    /// Its state and figures.
    pub info: TaskInfo,
    /// What it works on.
    pub payload: P,
    /// What it produced, kept only for tasks that other tasks depend on.
    pub output: Option<O>,
    /// Its latest attempt that ended (`None` before the first ends); its
    /// `log` only when the query asked for logs.
    pub last_attempt: Option<AttemptInfo>,
}

/// A page of tasks, as [`Store::task_list`](super::Store::task_list) returns it.
pub type TaskPage<P, O> = Vec<TaskRecord<P, O>>;

/// One attempt of a task, as the store recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptInfo {
    /// Which attempt.
    pub attempt: Attempt,
    /// The worker that ran it.
    pub worker: Option<WorkerId>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended; `None` while it runs.
    pub finished_at: Option<Timestamp>,
    /// The state it led the task to (`retry_wait` for one retried);
    /// `None` while it runs.
    pub state: Option<TaskState>,
    /// Why it ended that way.
    pub reason: Option<Reason>,
    /// What the handler or process said, for a failed attempt.
    pub message: Option<String>,
    /// What it left behind: `None` for an attempt that ended without a
    /// report of its own (a timeout, a lost worker) or is still running.
    pub log: Option<AttemptLog>,
}

/// A worker registered with the store, as
/// [`Store::worker_list`](super::Store::worker_list) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker.
    pub id: WorkerId,
    /// The host it registered from.
    pub host: String,
    /// Its process id on that host.
    pub pid: u32,
    /// When it registered.
    pub started_at: Timestamp,
    /// When it last renewed its leases (or registered).
    pub last_heartbeat: Timestamp,
}

/// An operation the store could not carry out. Nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The batch was invalid.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// No such batch.
    #[error(
        "no batch {0} in this store: check the id (a store that forgets finished work keeps only recent batches)"
    )]
    UnknownBatch(BatchId),
    /// No such task (or, in a store that forgets finished tasks, no longer).
    #[error(
        "no task {0} in this store: check the id (a store that forgets finished work keeps only unfinished tasks)"
    )]
    UnknownTask(TaskId),
    /// A rerun was asked of a batch that has not finished.
    #[error(
        "batch {0} has not finished: wait for it to end (or cancel it), then rerun its failed tasks"
    )]
    Unfinished(BatchId),
    /// A purge was asked of a batch that has not finished.
    #[error("batch {0} has not finished: cancel it (or wait for it to end), then remove it")]
    Live(BatchId),
    /// A rerun was asked of a store that forgets finished tasks.
    #[error(
        "this store does not keep finished tasks, so batch {0} cannot be rerun: use a store that keeps them (MemoryStore::retaining, SQLite or PostgreSQL)"
    )]
    Forgotten(BatchId),
    /// Tasks were appended to a batch that is not open.
    #[error("batch {0} is sealed: no more tasks can be added; submit them as a new batch")]
    Sealed(BatchId),
    /// The backend failed.
    #[error("store backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}
