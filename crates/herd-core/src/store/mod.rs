//! The store contract, and the in-memory store.
//!
//! A [`Store`] keeps batches, tasks, attempts and events, and makes every
//! state change under its own lock or transaction: claims take a lease,
//! completions are fenced by (task, attempt), dependency release and error
//! policy run in the same step as the completion that causes them. The
//! scheduler holds no state that the store does not also have, which is what
//! lets durable stores resume a batch after a crash.
//!
//! Stores never read a clock; every operation takes `now` (see [`crate::Clock`]).

mod delegate;
mod memory;
mod signals;
mod types;

pub use memory::MemoryStore;
pub use signals::Signals;
pub use types::*;

use std::future::Future;

use tokio::sync::broadcast;

use crate::model::{BatchId, BatchSpec, BatchStats, Event, TaskId, TaskSpec, Timestamp, WorkerId};

/// Where batches and tasks live, and the only place their state changes.
///
/// Methods are named noun-verb. Every mutation returns the events it produced,
/// in order; the same events go to [`Store::events`] subscribers.
pub trait Store: Send + Sync + 'static {
    /// What a task works on.
    type Payload: Clone + Send + Sync + 'static;
    /// What a task produces, kept for its dependents.
    type Output: Clone + Send + Sync + 'static;

    /// Registers a worker; its id goes into claims and renewals.
    fn worker_register(
        &self,
        host: &str,
        pid: u32,
        now: Timestamp,
    ) -> impl Future<Output = Result<WorkerId, StoreError>> + Send;

    /// Stores a batch and all its tasks and dependencies at once, or nothing.
    fn batch_insert(
        &self,
        spec: BatchSpec<Self::Payload>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Inserted, StoreError>> + Send;

    /// Adds tasks (without dependencies) to an open batch.
    fn task_append(
        &self,
        batch: BatchId,
        tasks: Vec<TaskSpec<Self::Payload>>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    /// Closes an open batch: it finishes once its tasks have.
    fn batch_seal(
        &self,
        batch: BatchId,
        now: Timestamp,
    ) -> impl Future<Output = Result<Events, StoreError>> + Send;

    /// Claims ready tasks: highest priority first, FIFO within a priority,
    /// fair between batches of equal priority, within each batch's
    /// concurrency and the worker's capacity, skipping paused batches.
    /// Retries whose backoff has passed become ready first.
    fn task_claim(
        &self,
        request: ClaimRequest,
        now: Timestamp,
    ) -> impl Future<Output = Result<Claim<Self::Payload, Self::Output>, StoreError>> + Send;

    /// Extends the leases of a worker's running attempts; reports attempts to
    /// cancel and attempts the worker no longer owns. Records `now` as the
    /// worker's last heartbeat (also when `running` is empty).
    fn lease_renew(
        &self,
        worker: WorkerId,
        running: Vec<Fence>,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> impl Future<Output = Result<Renewal, StoreError>> + Send;

    /// Records finished attempts, each fenced by its attempt number.
    fn task_complete(
        &self,
        worker: WorkerId,
        completions: Vec<Completion<Self::Output>>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Applied, StoreError>> + Send;

    /// Records finished attempts, then claims: [`Store::task_complete`]
    /// followed by [`Store::task_claim`], for a worker that has reports to
    /// make and free slots to fill. The claim sees everything the
    /// completions did (the slots they freed, the dependents they
    /// released), and refused (stale) completions do not keep it from
    /// claiming.
    ///
    /// The outer error means nothing was recorded. The inner result is the
    /// claim's: a store that runs the two steps apart may record the
    /// completions and then fail to claim. The default does just that
    /// ([`complete_then_claim`]); durable stores override it to do both in
    /// one transaction (one commit per turn of a worker instead of two), so
    /// their claim never fails alone. Either way the events are the same as
    /// the two calls', in the same order: the completions', then the claim's.
    fn task_complete_and_claim(
        &self,
        worker: WorkerId,
        completions: Vec<Completion<Self::Output>>,
        request: ClaimRequest,
        now: Timestamp,
    ) -> impl Future<Output = CompleteAndClaim<Self::Payload, Self::Output>> + Send {
        complete_then_claim(self, worker, completions, request, now)
    }

    /// Cancels a task: at once if not running, else asks its worker.
    fn task_cancel(
        &self,
        task: TaskId,
        mode: CancelMode,
        now: Timestamp,
    ) -> impl Future<Output = Result<Events, StoreError>> + Send;

    /// Cancels a batch: waiting tasks at once, running ones through their workers.
    fn batch_cancel(
        &self,
        batch: BatchId,
        mode: CancelMode,
        now: Timestamp,
    ) -> impl Future<Output = Result<Events, StoreError>> + Send;

    /// Stops a batch from starting new tasks.
    fn batch_pause(
        &self,
        batch: BatchId,
        now: Timestamp,
    ) -> impl Future<Output = Result<Events, StoreError>> + Send;

    /// Lets a paused batch start tasks again.
    fn batch_resume(
        &self,
        batch: BatchId,
        now: Timestamp,
    ) -> impl Future<Output = Result<Events, StoreError>> + Send;

    /// Runs a finished batch's failed tasks again, in the same batch: the
    /// tasks [`rerun_selection`](crate::model::rerun_selection) picks (the
    /// failed ones, those cancelled because the batch stopped, and with
    /// `downstream` the tasks that did not run because of them). Succeeded
    /// tasks keep their results and never run again; their outputs reach the
    /// rerun tasks that depend on them. The batch reopens with its error
    /// policy reset and no deadline, and each rerun task gets a fresh retry
    /// budget.
    fn batch_rerun(
        &self,
        batch: BatchId,
        downstream: bool,
        now: Timestamp,
    ) -> impl Future<Output = Result<Rerun, StoreError>> + Send;

    /// Requeues (or fails, once the `lost` budget is spent) attempts whose lease expired.
    fn task_rescue(
        &self,
        now: Timestamp,
    ) -> impl Future<Output = Result<Events, StoreError>> + Send;

    /// Treats every attempt `worker` is running as if its lease had expired
    /// at `now`, without waiting for the lease: each is requeued as `lost`
    /// (or fails, once the batch's `lost` budget is spent), exactly as
    /// [`Store::task_rescue`] would. For a worker known to be dead (its
    /// process is gone) or stopping without finishing its attempts; later
    /// reports from those attempts are stale.
    fn worker_expire(
        &self,
        worker: WorkerId,
        now: Timestamp,
    ) -> impl Future<Output = Result<Events, StoreError>> + Send;

    /// Cancels what remains of batches whose deadline has passed.
    fn batch_expire(
        &self,
        now: Timestamp,
    ) -> impl Future<Output = Result<Events, StoreError>> + Send;

    /// A batch's state and counts.
    fn batch_get(
        &self,
        batch: BatchId,
    ) -> impl Future<Output = Result<BatchInfo, StoreError>> + Send;

    /// A batch's figures: counts, retries, duration percentiles, throughput.
    fn batch_stats(
        &self,
        batch: BatchId,
        now: Timestamp,
    ) -> impl Future<Output = Result<BatchStats, StoreError>> + Send;

    /// A task's state.
    fn task_get(&self, task: TaskId) -> impl Future<Output = Result<TaskInfo, StoreError>> + Send;

    /// A page of batches, newest (highest id) first, from the cursor
    /// `query.before`. Reaches batches in id order through an index: a page
    /// costs its own rows, plus, with a state filter, the batches passed
    /// over on the way (durable stores keep a partial index of unfinished
    /// batches, used when every state asked for is unfinished).
    fn batch_list(
        &self,
        query: BatchQuery,
    ) -> impl Future<Output = Result<Vec<BatchInfo>, StoreError>> + Send;

    /// A page of a batch's tasks, by index ascending, from the cursor
    /// `query.after`, each with its payload, kept output and latest ended
    /// attempt. Reached through the (batch, index) index; a state filter is
    /// applied to the batch's rows in index order, so a page of a rare state
    /// in a huge batch may read many rows to fill. A store that forgets
    /// finished tasks lists only those it still has.
    ///
    /// [`StoreError::UnknownBatch`] for a batch the store does not have.
    fn task_list(
        &self,
        batch: BatchId,
        query: TaskQuery,
    ) -> impl Future<Output = Result<TaskPage<Self::Payload, Self::Output>, StoreError>> + Send;

    /// Every attempt of a task, in order, logs included; a running attempt
    /// comes last, with no `finished_at`. A store that forgets finished
    /// tasks keeps no attempt records: it reports only the running one.
    ///
    /// [`StoreError::UnknownTask`] for a task the store does not have.
    fn task_attempts(
        &self,
        task: TaskId,
    ) -> impl Future<Output = Result<Vec<AttemptInfo>, StoreError>> + Send;

    /// Every worker ever registered, by id.
    fn worker_list(&self) -> impl Future<Output = Result<Vec<WorkerInfo>, StoreError>> + Send;

    /// Stored events with `seq` above `query.after`, in `seq` order, of one
    /// batch or of all: what a reader that saw every event up to `after`
    /// missed (a stream resumed with `Last-Event-ID`). Durable stores keep
    /// every event until its batch is purged; the memory store keeps the
    /// latest [`MemoryStore::EVENT_LOG`](MemoryStore) events unless it
    /// retains finished tasks, so a reader far behind may find a gap.
    fn event_list(
        &self,
        query: EventQuery,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// Removes a finished batch with its tasks, attempts and events.
    ///
    /// [`StoreError::UnknownBatch`] for a batch the store does not have;
    /// [`StoreError::Live`] for one that has not finished (nothing is removed).
    fn batch_purge(&self, batch: BatchId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Subscribes to the events of every later operation.
    fn events(&self) -> EventReceiver;

    /// Wake-ups for workers: new work, and cancellations to pick up.
    fn signals(&self) -> &Signals;

    /// Whether finished tasks can still be read with [`Store::task_get`].
    /// The memory store forgets them by default, so that memory is bounded by
    /// the work in flight rather than the work done.
    fn retains_finished_tasks(&self) -> bool;
}

/// What [`Store::events`] returns: each operation's events, as it commits.
pub type EventReceiver = broadcast::Receiver<Events>;

/// What [`Store::task_complete_and_claim`] returns: the completions'
/// results and the claim's, or an error if nothing was recorded.
pub type CompleteAndClaim<P, O> = Result<(Applied, Result<Claim<P, O>, StoreError>), StoreError>;

/// [`Store::task_complete_and_claim`] as two calls: `task_complete`, then
/// `task_claim`. The default of the trait method, and for wrappers that
/// override it but want the two steps of the store they wrap.
pub async fn complete_then_claim<S: Store + ?Sized>(
    store: &S,
    worker: WorkerId,
    completions: Vec<Completion<S::Output>>,
    request: ClaimRequest,
    now: Timestamp,
) -> CompleteAndClaim<S::Payload, S::Output> {
    let applied = store.task_complete(worker, completions, now).await?;
    let claim = store.task_claim(request, now).await;
    Ok((applied, claim))
}
