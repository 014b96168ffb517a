//! The in-memory store: the library's default, and the reference for the
//! store contract.
//!
//! One mutex guards everything; every operation is one critical section, which
//! makes it the memory equivalent of one transaction. Finished tasks are
//! forgotten (only their batch's counters and histogram remain), and so are
//! finished batches beyond the latest 256, unless the store was built with
//! [`MemoryStore::retaining`]: memory follows the work in flight, not the
//! work done.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::Store;
use super::signals::Signals;
use super::types::*;
use crate::model::{
    Attempt, BatchId, BatchPolicy, BatchSpec, BatchState, BatchStats, DependencyRule,
    DurationHistogram, ErrorPolicy, Event, EventKind, OnFailure, Priority, Reason, StateCounts,
    TaskId, TaskSpec, TaskState, Timestamp, WorkerId, batch_outcome,
};
use crate::model::{FinishedTask, rerun_selection};

use crate::util::IdMap;

/// Finished batches a store that forgets finished tasks still answers for
/// (state, figures, idempotency key); older ones are forgotten too, so that
/// memory does not grow with the number of batches run.
const KEEP_FINISHED_BATCHES: usize = 256;

/// The message of an attempt rescued because its lease expired.
const LEASE_EXPIRED: &str = "the worker running it stopped renewing its lease";

/// The message of an attempt ended by [`Store::worker_expire`].
const WORKER_EXPIRED: &str = "the worker running it is gone";

/// Capacity of the event broadcast: subscribers further behind than this many
/// operations see a `Lagged` error rather than slowing the store down.
const EVENT_CAPACITY: usize = 4096;

/// A store in process memory, for the library and for tests.
///
/// `P` is the task payload, `O` the output kept for dependents.
pub struct MemoryStore<P, O> {
    inner: Mutex<Inner<P, O>>,
    signals: Signals,
    events: broadcast::Sender<Events>,
    retain: bool,
}

impl<P, O> std::fmt::Debug for MemoryStore<P, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("retain", &self.retain)
            .finish_non_exhaustive()
    }
}

impl<P, O> Default for MemoryStore<P, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P, O> MemoryStore<P, O> {
    /// A store that forgets finished tasks.
    pub fn new() -> Self {
        Self::build(false)
    }

    /// A store that keeps finished tasks readable with `task_get` and
    /// `task_list`, and every task's attempt records (`task_attempts`).
    pub fn retaining() -> Self {
        Self::build(true)
    }

    /// Events a store that forgets finished tasks keeps for
    /// [`Store::event_list`]: the latest this many. A retaining store keeps
    /// every event until its batch is purged. A reader further behind than
    /// this finds the log starting past its cursor: what it missed is gone,
    /// as it is for a subscriber that lags (the durable stores keep every
    /// event).
    ///
    /// Small on purpose: the library's executor runs on this store and its
    /// memory is bounded by the work in flight. With 65,536 events the ring
    /// took peak RSS of `stream_rss herd` (1,000,000 no-op tasks) from 4.3
    /// to 8.0 MB, for 0.4% more instructions (callgrind).
    pub const EVENT_LOG: usize = 4_096;

    fn build(retain: bool) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::new(retain)),
            signals: Signals::default(),
            events: broadcast::channel(EVENT_CAPACITY).0,
            retain,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<P, O>> {
        // A panic while holding the lock leaves no half-applied operation
        // behind that matters more than stopping everything; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the operation's events to subscribers and returns them.
    ///
    /// Called with the lock held: operations take their `seq` numbers under
    /// the lock, and publishing under it too is what delivers them to
    /// subscribers in `seq` order when operations run in parallel.
    fn publish(&self, events: Vec<Event>) -> Events {
        let events = Arc::new(events);
        if !events.is_empty() && self.events.receiver_count() > 0 {
            let _ = self.events.send(events.clone());
        }
        events
    }

    /// Ends an operation: publishes its events (under the lock, so that
    /// subscribers see them in `seq` order), wakes waiting workers, unlocks.
    fn commit(&self, mut inner: MutexGuard<'_, Inner<P, O>>) -> Events {
        let events = inner.take_events();
        inner.log_events(&events);
        let events = self.publish(events);
        self.wake(&mut inner);
        events
    }

    fn wake(&self, inner: &mut Inner<P, O>) {
        if std::mem::take(&mut inner.work_ready) {
            self.signals.work.notify_waiters();
        }
        if std::mem::take(&mut inner.control_pending) {
            self.signals.control.notify_waiters();
        }
    }
}

/// A ready task in its batch's queue.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Ready {
    priority: Priority,
    cost: u32,
    task: TaskId,
    /// Its place in the queue: queues are in this order within a priority.
    seq: u64,
}

/// A batch's ready tasks: highest priority first, first in first out within a
/// priority (a retried task queues again behind those already waiting).
/// O(1) per push and pop while the batch uses few priority levels.
#[derive(Default)]
struct ReadyQueue {
    levels: BTreeMap<Reverse<Priority>, VecDeque<Ready>>,
    len: usize,
}

impl ReadyQueue {
    fn push(&mut self, ready: Ready) {
        self.levels
            .entry(Reverse(ready.priority))
            .or_default()
            .push_back(ready);
        self.len += 1;
    }

    /// Puts a task back where its `seq` places it: a claim given back.
    fn put_back(&mut self, ready: Ready) {
        let queue = self.levels.entry(Reverse(ready.priority)).or_default();
        let at = queue.partition_point(|r| r.seq < ready.seq);
        queue.insert(at, ready);
        self.len += 1;
    }

    fn peek(&self) -> Option<&Ready> {
        self.levels.values().next().and_then(VecDeque::front)
    }

    fn pop(&mut self) -> Option<Ready> {
        let mut level = self.levels.first_entry()?;
        let ready = level.get_mut().pop_front();
        if level.get().is_empty() {
            level.remove();
        }
        self.len -= usize::from(ready.is_some());
        ready
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.levels.clear();
        self.len = 0;
    }

    fn remove(&mut self, task: TaskId) {
        for queue in self.levels.values_mut() {
            if let Some(pos) = queue.iter().position(|r| r.task == task) {
                queue.remove(pos);
                self.len -= 1;
            }
        }
        self.levels.retain(|_, queue| !queue.is_empty());
    }
}

/// How a batch's head task ranks for the next slot: priority first, then the
/// batch with fewer slots in use, then the batch served longest ago.
type Rank = (Priority, Reverse<u32>, Reverse<u64>);

struct BatchRec {
    name: Option<String>,
    idempotency_key: Option<String>,
    state: BatchState,
    priority: Priority,
    concurrency: u32,
    policy: Arc<BatchPolicy>,
    error_policy: ErrorPolicy,
    counts: StateCounts,
    retries: u64,
    running_cost: u32,
    ready: ReadyQueue,
    in_ready_list: bool,
    /// Finished tasks whose outputs are kept for dependents.
    kept_outputs: Vec<TaskId>,
    open: bool,
    paused: bool,
    /// No new task starts: cancelled, stopped by policy, or past its deadline.
    stopped: Option<Reason>,
    cancelled: bool,
    failed_by_policy: bool,
    last_served: u64,
    next_index: u64,
    /// The next place in its ready queue.
    next_ready: u64,
    durations: DurationHistogram,
    created_at: Timestamp,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    /// The tasks it still has, by index: every task when finished tasks
    /// are retained, else the unfinished ones.
    by_index: BTreeMap<u64, TaskId>,
}

struct TaskRec<P> {
    batch: BatchId,
    index: u64,
    key: Option<Arc<str>>,
    priority: Priority,
    cost: u32,
    payload: P,
    state: TaskState,
    reason: Option<Reason>,
    message: Option<String>,
    attempt: Attempt,
    /// The first attempt of the current run (after a rerun, the next one).
    first_attempt: Attempt,
    lost: u32,
    worker: Option<WorkerId>,
    lease_until: Timestamp,
    cancel: Option<(CancelMode, Reason)>,
    deps_left: u32,
    rule: DependencyRule,
    upstream: Vec<TaskId>,
    dependents: Vec<TaskId>,
    started_at: Timestamp,
    /// Its place in its batch's ready queue when it was last queued.
    ready_seq: u64,
    /// The log the current attempt's report carried, until the attempt's
    /// record is written.
    log: Option<AttemptLog>,
    /// Attempts that ended, in order (kept only when finished tasks are).
    attempts: Vec<AttemptInfo>,
}

struct Inner<P, O> {
    next_batch: i64,
    next_task: i64,
    next_worker: i64,
    next_event: u64,
    tick: u64,
    batches: IdMap<BatchId, BatchRec>,
    /// Every batch still kept, for listing newest first.
    batch_ids: BTreeSet<BatchId>,
    tasks: IdMap<TaskId, TaskRec<P>>,
    workers: BTreeMap<WorkerId, WorkerInfo>,
    /// Finished tasks as their dependents see them.
    outputs: IdMap<TaskId, Upstream<O>>,
    /// Tasks in `retry_wait`, by due time; entries whose attempt moved on are skipped.
    retries: BinaryHeap<Reverse<(Timestamp, TaskId, Attempt)>>,
    ready_batches: Vec<BatchId>,
    deadlines: BTreeSet<(Timestamp, BatchId)>,
    idempotency: HashMap<String, BatchId>,
    /// Finished batches, oldest first (kept only when tasks are not retained).
    finished_batches: VecDeque<BatchId>,
    events: Vec<Event>,
    /// Events of earlier operations, for `event_list`: all of them when
    /// finished tasks are retained, else the latest `EVENT_LOG`.
    log: VecDeque<Event>,
    work_ready: bool,
    control_pending: bool,
    /// Keep finished task records (for `task_get`) instead of forgetting them.
    retain: bool,
}

impl<P, O> Inner<P, O> {
    /// The events of the operation so far, leaving room for as many in the next.
    fn take_events(&mut self) -> Vec<Event> {
        let capacity = self.events.len().max(16);
        std::mem::replace(&mut self.events, Vec::with_capacity(capacity))
    }

    /// Keeps an operation's events for `event_list`.
    fn log_events(&mut self, events: &[Event]) {
        self.log.extend(events.iter().cloned());
        if !self.retain {
            let excess = self
                .log
                .len()
                .saturating_sub(MemoryStore::<P, O>::EVENT_LOG);
            self.log.drain(..excess);
        }
    }

    /// Removes a finished batch and everything of it.
    fn purge(&mut self, batch: BatchId) -> Result<(), StoreError> {
        let b = self
            .batches
            .get(&batch)
            .ok_or(StoreError::UnknownBatch(batch))?;
        if !b.state.is_terminal() {
            return Err(StoreError::Live(batch));
        }
        let b = self.batches.remove(&batch).expect("checked");
        for id in b.by_index.values() {
            self.tasks.remove(id);
            self.outputs.remove(id);
        }
        if let Some(key) = b.idempotency_key {
            self.idempotency.remove(&key);
        }
        self.batch_ids.remove(&batch);
        self.finished_batches.retain(|f| *f != batch);
        self.log.retain(|e| e.batch != batch);
        Ok(())
    }

    fn new(retain: bool) -> Self {
        Inner {
            next_batch: 1,
            next_task: 1,
            next_worker: 1,
            next_event: 1,
            tick: 0,
            batches: IdMap::default(),
            batch_ids: BTreeSet::new(),
            tasks: IdMap::default(),
            workers: BTreeMap::new(),
            outputs: IdMap::default(),
            retries: BinaryHeap::new(),
            ready_batches: Vec::new(),
            deadlines: BTreeSet::new(),
            idempotency: HashMap::new(),
            finished_batches: VecDeque::new(),
            events: Vec::new(),
            log: VecDeque::new(),
            work_ready: false,
            control_pending: false,
            retain,
        }
    }
}

/// Whether a cancellation request in `mode` adds to what was asked before:
/// a first request, or forced after graceful.
fn escalates(current: Option<(CancelMode, Reason)>, mode: CancelMode) -> bool {
    match current {
        None => true,
        Some((CancelMode::Graceful, _)) => mode == CancelMode::Forced,
        Some((CancelMode::Forced, _)) => false,
    }
}

/// A task reaching a terminal state, and what the store does about it.
struct Finish {
    task: TaskId,
    state: TaskState,
    reason: Option<Reason>,
}

impl<P: Clone, O: Clone> Inner<P, O> {
    fn emit(&mut self, at: Timestamp, batch: BatchId, kind: EventKind) {
        let seq = self.next_event;
        self.next_event += 1;
        self.events.push(Event {
            seq,
            at,
            batch,
            kind,
        });
    }

    fn batch(&self, id: BatchId) -> Result<&BatchRec, StoreError> {
        self.batches.get(&id).ok_or(StoreError::UnknownBatch(id))
    }

    fn set_batch_state(&mut self, id: BatchId, to: BatchState, now: Timestamp) {
        let Some(b) = self.batches.get_mut(&id) else {
            return;
        };
        let from = b.state;
        if from == to || !from.can_become(to) {
            return;
        }
        b.state = to;
        if to.is_terminal() {
            b.finished_at = Some(now);
        }
        self.emit(
            now,
            id,
            EventKind::Batch {
                from: Some(from),
                to,
            },
        );
    }

    /// Moves a task to a non-terminal state, keeping counters and the event log.
    fn move_task(&mut self, id: TaskId, to: TaskState, reason: Option<Reason>, now: Timestamp) {
        if let Some(t) = self.tasks.get(&id) {
            debug_assert!(t.state.can_become(to), "{} -> {to}", t.state);
        }
        self.shift_task(id, to, reason, now);
    }

    /// Sets a task's state and reason, moves it between its batch's counters
    /// and records the transition. Callers check the move.
    fn shift_task(&mut self, id: TaskId, to: TaskState, reason: Option<Reason>, now: Timestamp) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        let from = t.state;
        debug_assert!(to.accepts_reason(reason), "{to} with {reason:?}");
        t.state = to;
        t.reason = reason;
        let (batch, index, attempt) = (t.batch, t.index, t.attempt);
        if let Some(b) = self.batches.get_mut(&batch) {
            b.counts.shift(Some(from), to);
        }
        self.emit(
            now,
            batch,
            EventKind::Task {
                task: id,
                index,
                attempt,
                from: Some(from),
                to,
                reason,
            },
        );
    }

    /// Queues a task at the back of its batch's queue.
    fn push_ready(&mut self, id: TaskId) {
        let Some(t) = self.tasks.get(&id) else { return };
        let Some(b) = self.batches.get_mut(&t.batch) else {
            return;
        };
        let seq = b.next_ready;
        b.next_ready += 1;
        self.tasks.get_mut(&id).expect("checked").ready_seq = seq;
        self.queue(id, false);
    }

    /// Puts a task in its batch's queue at its `ready_seq`: at the back
    /// when it was just given one, else back where it was.
    fn queue(&mut self, id: TaskId, put_back: bool) {
        let Some(t) = self.tasks.get(&id) else { return };
        let entry = Ready {
            priority: t.priority,
            cost: t.cost,
            task: id,
            seq: t.ready_seq,
        };
        let batch = t.batch;
        if let Some(b) = self.batches.get_mut(&batch) {
            match put_back {
                true => b.ready.put_back(entry),
                false => b.ready.push(entry),
            }
            if !b.in_ready_list {
                b.in_ready_list = true;
                self.ready_batches.push(batch);
            }
            if !b.paused {
                self.work_ready = true;
            }
        }
    }

    /// Creates a task record from its spec and emits its creation.
    fn create_task(
        &mut self,
        batch: BatchId,
        spec: TaskSpec<P>,
        upstream: Vec<TaskId>,
        now: Timestamp,
    ) -> TaskId {
        let id = TaskId(self.next_task);
        self.next_task += 1;
        let b = self.batches.get_mut(&batch).expect("batch exists");
        let index = b.next_index;
        b.next_index += 1;
        b.by_index.insert(index, id);
        let state = if upstream.is_empty() {
            TaskState::Queued
        } else {
            TaskState::Pending
        };
        b.counts.shift(None, state);
        let priority = spec.priority.unwrap_or(b.priority);
        self.tasks.insert(
            id,
            TaskRec {
                batch,
                index,
                key: spec.key.map(Arc::from),
                priority,
                cost: spec.cost,
                payload: spec.payload,
                state,
                reason: None,
                message: None,
                attempt: Attempt(0),
                first_attempt: Attempt(1),
                lost: 0,
                worker: None,
                lease_until: Timestamp::EPOCH,
                cancel: None,
                deps_left: upstream.len() as u32,
                rule: spec.rule,
                upstream,
                dependents: Vec::new(),
                started_at: Timestamp::EPOCH,
                ready_seq: 0,
                log: None,
                attempts: Vec::new(),
            },
        );
        self.emit(
            now,
            batch,
            EventKind::Task {
                task: id,
                index,
                attempt: Attempt(0),
                from: None,
                to: state,
                reason: None,
            },
        );
        if state == TaskState::Queued {
            self.push_ready(id);
        }
        id
    }

    /// Ends `seed` in `state` (keeping `output` for its dependents), releases
    /// or skips its dependents transitively, applies the error policy and
    /// finishes batches that are done.
    fn finish(
        &mut self,
        seed: TaskId,
        state: TaskState,
        reason: Option<Reason>,
        output: Option<O>,
        now: Timestamp,
    ) {
        let mut output = output;
        let mut work = vec![Finish {
            task: seed,
            state,
            reason,
        }];
        let mut touched: Vec<BatchId> = Vec::new();
        while let Some(Finish {
            task,
            state,
            reason,
        }) = work.pop()
        {
            let Some(t) = self.tasks.get(&task) else {
                continue;
            };
            if t.state.is_terminal() {
                continue;
            }
            let (from, batch, index, attempt, cost) =
                (t.state, t.batch, t.index, t.attempt, t.cost);
            debug_assert!(from.can_become(state), "{from} -> {state}");
            debug_assert!(state.accepts_reason(reason), "{state} with {reason:?}");
            if from == TaskState::Running {
                self.end_attempt(task, state, reason, now);
                if let Some(b) = self.batches.get_mut(&batch) {
                    b.running_cost -= cost;
                }
            }
            let t = self.tasks.get_mut(&task).expect("checked above");
            t.state = state;
            t.reason = reason;
            t.cancel = None;
            let dependents = std::mem::take(&mut t.dependents);
            let key = t.key.clone();
            let Some(b) = self.batches.get_mut(&batch) else {
                continue;
            };
            b.counts.shift(Some(from), state);
            if !touched.contains(&batch) {
                touched.push(batch);
            }
            self.emit(
                now,
                batch,
                EventKind::Task {
                    task,
                    index,
                    attempt,
                    from: Some(from),
                    to: state,
                    reason,
                },
            );
            if !dependents.is_empty() {
                let out = if task == seed { output.take() } else { None };
                self.outputs.insert(
                    task,
                    Upstream {
                        task,
                        key,
                        state,
                        output: out,
                    },
                );
                if let Some(b) = self.batches.get_mut(&batch) {
                    b.kept_outputs.push(task);
                }
                for d in dependents {
                    let Some(dep) = self.tasks.get_mut(&d) else {
                        continue;
                    };
                    if dep.state != TaskState::Pending {
                        continue;
                    }
                    if state == TaskState::Succeeded || dep.rule == DependencyRule::Done {
                        dep.deps_left -= 1;
                        if dep.deps_left == 0 {
                            self.move_task(d, TaskState::Queued, None, now);
                            self.push_ready(d);
                        }
                    } else {
                        work.push(Finish {
                            task: d,
                            state: TaskState::Skipped,
                            reason: Some(Reason::UpstreamFailed),
                        });
                    }
                }
            }
            if !self.retain {
                self.tasks.remove(&task);
                if let Some(b) = self.batches.get_mut(&batch) {
                    b.by_index.remove(&index);
                }
            }
        }
        for batch in touched {
            // After the skips have cascaded, so that a failed task's
            // dependents end `skipped{upstream_failed}` even when the failure
            // trips the policy. Any end may trip a share threshold: a success
            // adds to the finished tasks the share is judged over.
            self.apply_error_policy(batch, now);
            self.finish_batch_if_done(batch, now);
        }
    }

    fn apply_error_policy(&mut self, batch: BatchId, now: Timestamp) {
        let Some(b) = self.batches.get(&batch) else {
            return;
        };
        if b.stopped.is_some() || !b.error_policy.tripped(b.counts.failed, b.counts.finished()) {
            return;
        }
        let mode = match b.error_policy.on_failure {
            OnFailure::Abort => Some(CancelMode::Forced),
            OnFailure::Stop | OnFailure::Continue => None,
        };
        self.batches
            .get_mut(&batch)
            .expect("exists")
            .failed_by_policy = true;
        self.stop_batch(batch, Reason::BatchStopped, mode, now);
    }

    /// Cancels every waiting task of a batch with `reason`; asks workers to
    /// cancel running ones when `running` is given. Nothing new starts after.
    fn stop_batch(
        &mut self,
        batch: BatchId,
        reason: Reason,
        running: Option<CancelMode>,
        now: Timestamp,
    ) {
        let Some(b) = self.batches.get_mut(&batch) else {
            return;
        };
        b.stopped.get_or_insert(reason);
        b.ready.clear();
        // Rare (a cancel, a trip, a deadline): a scan of the tasks in memory
        // costs less overall than keeping a set of each batch's live tasks.
        let mut live: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.batch == batch && !t.state.is_terminal())
            .map(|(id, _)| *id)
            .collect();
        live.sort_unstable();
        for id in live {
            let Some(t) = self.tasks.get_mut(&id) else {
                continue;
            };
            match t.state {
                TaskState::Running => {
                    if let Some(mode) = running
                        && escalates(t.cancel, mode)
                    {
                        t.cancel = Some((mode, reason));
                        self.control_pending = true;
                    }
                }
                // Waiting tasks end here, without passing their fate on:
                // their dependents are waiting too, and end the same way.
                TaskState::Pending | TaskState::Queued | TaskState::RetryWait => {
                    t.dependents.clear();
                    self.finish(id, TaskState::Cancelled, Some(reason), None, now);
                }
                _ => {}
            }
        }
        self.finish_batch_if_done(batch, now);
    }

    fn finish_batch_if_done(&mut self, batch: BatchId, now: Timestamp) {
        let Some(b) = self.batches.get(&batch) else {
            return;
        };
        if b.open || b.counts.active() > 0 || b.state.is_terminal() {
            return;
        }
        let to = batch_outcome(
            b.cancelled,
            b.failed_by_policy,
            b.counts.succeeded == b.counts.total(),
        );
        // A store that keeps finished tasks keeps their outputs too, for a
        // rerun's tasks that depend on them.
        if !self.retain {
            let b = self.batches.get_mut(&batch).expect("exists");
            for task in std::mem::take(&mut b.kept_outputs) {
                self.outputs.remove(&task);
            }
        }
        self.deadlines.retain(|(_, b)| *b != batch);
        self.ready_batches.retain(|b| *b != batch);
        self.set_batch_state(batch, to, now);
        if !self.retain {
            self.finished_batches.push_back(batch);
            while self.finished_batches.len() > KEEP_FINISHED_BATCHES {
                let oldest = self
                    .finished_batches
                    .pop_front()
                    .expect("longer than the bound");
                self.batch_ids.remove(&oldest);
                if let Some(b) = self.batches.remove(&oldest)
                    && let Some(key) = b.idempotency_key
                {
                    self.idempotency.remove(&key);
                }
            }
        }
    }

    /// Stops every batch whose deadline has passed: waiting tasks end
    /// `cancelled{deadline}`, running ones are asked to stop.
    fn expire_deadlines(&mut self, now: Timestamp) {
        while let Some(&(at, batch)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(b) = self.batches.get_mut(&batch) else {
                continue;
            };
            if b.state.is_terminal() {
                continue;
            }
            b.failed_by_policy = true;
            b.open = false;
            self.stop_batch(batch, Reason::Deadline, Some(CancelMode::Forced), now);
        }
    }

    /// Moves a running task to `retry_wait`, due at `at`: its slots are free
    /// at once, and the retry counts.
    fn retry_later(&mut self, task: TaskId, reason: Reason, at: Timestamp, now: Timestamp) {
        self.end_attempt(task, TaskState::RetryWait, Some(reason), now);
        let t = &self.tasks[&task];
        let (batch, cost, attempt) = (t.batch, t.cost, t.attempt);
        if let Some(b) = self.batches.get_mut(&batch) {
            b.running_cost -= cost;
            b.retries += 1;
        }
        self.move_task(task, TaskState::RetryWait, Some(reason), now);
        self.retries.push(Reverse((at, task, attempt)));
        self.work_ready |= at <= now;
    }

    /// Records the end of a task's running attempt, leading it to `to`
    /// (kept only when finished tasks are).
    fn end_attempt(&mut self, id: TaskId, to: TaskState, reason: Option<Reason>, now: Timestamp) {
        let retain = self.retain;
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        let log = t.log.take();
        if !retain {
            return;
        }
        // The task's message is its last failure's: only a failed
        // attempt's record carries it.
        let message = matches!(to, TaskState::Failed | TaskState::RetryWait)
            .then(|| t.message.clone())
            .flatten();
        let ended = AttemptInfo {
            attempt: t.attempt,
            worker: t.worker,
            started_at: t.started_at,
            finished_at: Some(now),
            state: Some(to),
            reason,
            message,
            log,
        };
        t.attempts.push(ended);
    }

    /// Gives back a claim whose attempt never started: the task takes its
    /// place in its batch's queue again, with its attempt number, or ends
    /// cancelled if the store had asked for that. Returns the state it entered.
    fn release(&mut self, id: TaskId, now: Timestamp) -> TaskState {
        let t = &self.tasks[&id];
        if let Some((_, reason)) = t.cancel {
            self.finish(id, TaskState::Cancelled, Some(reason), None, now);
            return TaskState::Cancelled;
        }
        let (batch, cost) = (t.batch, t.cost);
        if let Some(b) = self.batches.get_mut(&batch) {
            b.running_cost -= cost;
        }
        // The transition belongs to the attempt given back.
        self.move_task(id, TaskState::Queued, None, now);
        let t = self.tasks.get_mut(&id).expect("checked");
        t.attempt = Attempt(t.attempt.0 - 1);
        t.worker = None;
        t.lease_until = Timestamp::EPOCH;
        self.queue(id, true);
        TaskState::Queued
    }

    /// Ends running attempts as lost, as if their leases had expired at
    /// `now`: requeued, or failed once the batch's `lost` budget is spent.
    fn lose(&mut self, mut ids: Vec<TaskId>, message: &str, now: Timestamp) {
        ids.sort_unstable();
        for id in ids {
            let t = self.tasks.get_mut(&id).expect("running tasks exist");
            t.lost += 1;
            t.message = Some(message.into());
            let (batch, lost, cancel) = (t.batch, t.lost, t.cancel);
            let b = &self.batches[&batch];
            if let Some((_, reason)) = cancel {
                // It was being cancelled when its worker died: that is how it ends.
                self.finish(id, TaskState::Cancelled, Some(reason), None, now);
            } else if b.stopped.is_none() && b.policy.retry.should_retry_lost(lost) {
                self.retry_later(id, Reason::Lost, now, now);
            } else {
                self.finish(id, TaskState::Failed, Some(Reason::Lost), None, now);
            }
        }
    }

    fn task_info(id: TaskId, t: &TaskRec<P>) -> TaskInfo {
        let running = t.state == TaskState::Running;
        TaskInfo {
            id,
            batch: t.batch,
            index: t.index,
            key: t.key.clone(),
            state: t.state,
            reason: t.reason,
            attempt: t.attempt,
            lost: t.lost,
            priority: t.priority,
            cost: t.cost,
            message: t.message.clone(),
            worker: t.worker.filter(|_| running),
            started_at: running.then_some(t.started_at),
        }
    }

    fn batch_info(id: BatchId, b: &BatchRec) -> BatchInfo {
        BatchInfo {
            id,
            name: b.name.clone(),
            state: b.state,
            priority: b.priority,
            concurrency: b.concurrency,
            policy: b.policy.clone(),
            counts: b.counts,
            retries: b.retries,
            open: b.open,
            created_at: b.created_at,
            started_at: b.started_at,
            finished_at: b.finished_at,
        }
    }

    fn promote_due_retries(&mut self, now: Timestamp) {
        while let Some(Reverse((due, task, attempt))) = self.retries.peek().copied() {
            if due > now {
                break;
            }
            self.retries.pop();
            let current = self
                .tasks
                .get(&task)
                .is_some_and(|t| t.state == TaskState::RetryWait && t.attempt == attempt);
            if current {
                self.move_task(task, TaskState::Queued, None, now);
                self.push_ready(task);
            }
        }
    }

    fn next_due(&self) -> Option<Timestamp> {
        let retry = self.retries.peek().map(|Reverse((due, _, _))| *due);
        let deadline = self.deadlines.first().map(|(at, _)| *at);
        match (retry, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The batch whose head task should start next, if any fits its batch
    /// (among `only`, when given).
    fn best_batch(&self, only: Option<BatchId>) -> Option<(usize, Ready)> {
        let mut best: Option<(usize, Ready, Rank)> = None;
        for (pos, id) in self.ready_batches.iter().enumerate() {
            if only.is_some_and(|only| only != *id) {
                continue;
            }
            let b = &self.batches[id];
            if b.paused || b.stopped.is_some() {
                continue;
            }
            let Some(head) = b.ready.peek() else { continue };
            if b.running_cost + head.cost > b.concurrency {
                continue;
            }
            let rank = (
                head.priority,
                Reverse(b.running_cost),
                Reverse(b.last_served),
            );
            if best.as_ref().is_none_or(|(_, _, r)| rank > *r) {
                best = Some((pos, *head, rank));
            }
        }
        best.map(|(pos, head, _)| (pos, head))
    }
}

impl<P, O> MemoryStore<P, O>
where
    P: Clone + Send + Sync + 'static,
    O: Clone + Send + Sync + 'static,
{
    fn insert_locked(
        &self,
        inner: &mut Inner<P, O>,
        mut spec: BatchSpec<P>,
        now: Timestamp,
    ) -> Result<Inserted, StoreError> {
        if let Some(key) = &spec.idempotency_key
            && let Some(&existing) = inner.idempotency.get(key)
        {
            return Ok(Inserted {
                batch: existing,
                tasks: Vec::new(),
                existing: true,
                events: Arc::new(Vec::new()),
                info: Inner::<P, O>::batch_info(existing, inner.batch(existing)?),
            });
        }
        let upstream = spec.validate(None)?;
        let id = BatchId(inner.next_batch);
        inner.next_batch += 1;
        if let Some(key) = spec.idempotency_key.clone() {
            inner.idempotency.insert(key, id);
        }
        let state = if spec.paused {
            BatchState::Paused
        } else {
            BatchState::Queued
        };
        if let Some(deadline) = spec.policy.deadline {
            inner.deadlines.insert((deadline, id));
        }
        inner.batch_ids.insert(id);
        inner.batches.insert(
            id,
            BatchRec {
                name: spec.name.take(),
                idempotency_key: spec.idempotency_key.clone(),
                state,
                priority: spec.priority,
                concurrency: spec.concurrency,
                policy: Arc::new(spec.policy.clone()),
                error_policy: spec.error_policy,
                counts: StateCounts::default(),
                retries: 0,
                running_cost: 0,
                ready: ReadyQueue::default(),
                in_ready_list: false,
                kept_outputs: Vec::new(),
                open: spec.open,
                paused: spec.paused,
                stopped: None,
                cancelled: false,
                failed_by_policy: false,
                last_served: 0,
                next_index: 0,
                next_ready: 0,
                durations: DurationHistogram::default(),
                created_at: now,
                started_at: None,
                finished_at: None,
                by_index: BTreeMap::new(),
            },
        );
        inner.emit(
            now,
            id,
            EventKind::Batch {
                from: None,
                to: state,
            },
        );
        let first = inner.next_task;
        let ids: Vec<TaskId> = (0..spec.tasks.len() as i64)
            .map(|i| TaskId(first + i))
            .collect();
        let mut links = Vec::new();
        for (spec, ups) in spec.tasks.drain(..).zip(upstream) {
            let ups: Vec<TaskId> = ups.into_iter().map(|u| ids[u as usize]).collect();
            let task = inner.create_task(id, spec, ups.clone(), now);
            links.extend(ups.into_iter().map(|u| (u, task)));
        }
        // Dependencies may point forward in submission order, so dependents
        // are linked once every task exists.
        for (upstream, dependent) in links {
            if let Some(t) = inner.tasks.get_mut(&upstream) {
                t.dependents.push(dependent);
            }
        }
        inner.finish_batch_if_done(id, now);
        Ok(Inserted {
            batch: id,
            tasks: ids,
            existing: false,
            events: Arc::new(Vec::new()),
            info: Inner::<P, O>::batch_info(id, inner.batch(id)?),
        })
    }
}

impl<P, O> Store for MemoryStore<P, O>
where
    P: Clone + Send + Sync + 'static,
    O: Clone + Send + Sync + 'static,
{
    type Payload = P;
    type Output = O;

    async fn worker_register(
        &self,
        host: &str,
        pid: u32,
        now: Timestamp,
    ) -> Result<WorkerId, StoreError> {
        let mut inner = self.lock();
        let id = WorkerId(inner.next_worker);
        inner.next_worker += 1;
        inner.workers.insert(
            id,
            WorkerInfo {
                id,
                host: host.to_owned(),
                pid,
                started_at: now,
                last_heartbeat: now,
            },
        );
        Ok(id)
    }

    async fn batch_insert(
        &self,
        spec: BatchSpec<P>,
        now: Timestamp,
    ) -> Result<Inserted, StoreError> {
        let mut inner = self.lock();
        // Validate before touching anything: a rejected batch leaves no trace.
        let result = self.insert_locked(&mut inner, spec, now);
        let events = self.commit(inner);
        let mut inserted = result?;
        inserted.events = events;
        Ok(inserted)
    }

    async fn task_append(
        &self,
        batch: BatchId,
        tasks: Vec<TaskSpec<P>>,
        now: Timestamp,
    ) -> Result<Appended, StoreError> {
        let mut inner = self.lock();
        let b = inner.batch(batch)?;
        if b.stopped.is_some() {
            // Nothing new starts in a stopped batch: store nothing, and tell
            // the submitter to stop appending.
            return Ok(Appended {
                first_index: b.next_index,
                stopped: true,
                events: Arc::new(Vec::new()),
            });
        }
        if !b.open {
            return Err(StoreError::Sealed(batch));
        }
        let limit = b.concurrency;
        for task in &tasks {
            if !task.after.is_empty() {
                return Err(crate::model::SubmitError::AfterInOpenBatch.into());
            }
            if task.cost == 0 || task.cost > limit {
                return Err(
                    crate::model::SubmitError::Invalid(crate::model::InvalidField::new(
                        "cost",
                        task.cost,
                        format!("must be between 1 and the concurrency ({limit})"),
                    ))
                    .into(),
                );
            }
        }
        let first_index = b.next_index;
        for spec in tasks {
            inner.create_task(batch, spec, Vec::new(), now);
        }
        let events = self.commit(inner);
        Ok(Appended {
            first_index,
            stopped: false,
            events,
        })
    }

    async fn batch_seal(&self, batch: BatchId, now: Timestamp) -> Result<Events, StoreError> {
        let mut inner = self.lock();
        let b = inner
            .batches
            .get_mut(&batch)
            .ok_or(StoreError::UnknownBatch(batch))?;
        b.open = false;
        inner.finish_batch_if_done(batch, now);
        Ok(self.commit(inner))
    }

    async fn task_claim(
        &self,
        request: ClaimRequest,
        now: Timestamp,
    ) -> Result<Claim<P, O>, StoreError> {
        let mut inner = self.lock();
        // Nothing starts past its batch's deadline, even if no one expired it yet.
        inner.expire_deadlines(now);
        inner.promote_due_retries(now);
        let mut capacity = request.capacity;
        let mut tasks = Vec::with_capacity(request.max_tasks.min(1024));
        let lease_until = now.plus(request.lease);
        let mut blocked_by = None;
        while tasks.len() < request.max_tasks {
            let Some((pos, head)) = inner.best_batch(request.batch) else {
                break;
            };
            if head.cost > capacity {
                // Strict order: a smaller task behind it must not jump ahead.
                blocked_by = Some(head.cost);
                break;
            }
            capacity -= head.cost;
            let batch_id = inner.ready_batches[pos];
            inner.tick += 1;
            let tick = inner.tick;
            let b = inner
                .batches
                .get_mut(&batch_id)
                .expect("listed batches exist");
            b.ready.pop();
            if b.ready.is_empty() {
                b.in_ready_list = false;
                inner.ready_batches.swap_remove(pos);
            }
            let b = inner.batches.get_mut(&batch_id).expect("exists");
            b.running_cost += head.cost;
            b.last_served = tick;
            let policy = b.policy.clone();
            let first_start = b.started_at.is_none();
            if first_start {
                b.started_at = Some(now);
            }
            if first_start && b.state == BatchState::Queued {
                inner.set_batch_state(batch_id, BatchState::Running, now);
            }
            let t = inner.tasks.get_mut(&head.task).expect("ready tasks exist");
            t.attempt = t.attempt.next();
            t.worker = Some(request.worker);
            t.lease_until = lease_until;
            t.started_at = now;
            inner.move_task(head.task, TaskState::Running, None, now);
            let t = &inner.tasks[&head.task];
            let upstream = t
                .upstream
                .iter()
                .filter_map(|u| inner.outputs.get(u).cloned())
                .collect();
            tasks.push(ClaimedTask {
                id: head.task,
                batch: batch_id,
                index: t.index,
                key: t.key.clone(),
                attempt: t.attempt,
                first_attempt: t.first_attempt,
                lost: t.lost,
                cost: t.cost,
                priority: t.priority,
                payload: t.payload.clone(),
                upstream,
                has_dependents: !t.dependents.is_empty(),
                policy,
                lease_until,
            });
        }
        let next_due = inner.next_due();
        // The claimant takes the ready work; no one else need look.
        inner.work_ready = false;
        let events = self.commit(inner);
        Ok(Claim {
            tasks,
            next_due,
            blocked_by,
            events,
        })
    }

    async fn lease_renew(
        &self,
        worker: WorkerId,
        running: Vec<Fence>,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<Renewal, StoreError> {
        let mut inner = self.lock();
        if let Some(w) = inner.workers.get_mut(&worker) {
            w.last_heartbeat = now;
        }
        let mut renewal = Renewal::default();
        for fence in running {
            match inner.tasks.get_mut(&fence.task) {
                Some(t)
                    if t.state == TaskState::Running
                        && t.attempt == fence.attempt
                        && t.worker == Some(worker) =>
                {
                    t.lease_until = lease_until;
                    if let Some((mode, reason)) = t.cancel {
                        renewal.cancel.push(CancelRequest {
                            fence,
                            mode,
                            reason,
                        });
                    }
                }
                _ => renewal.lost.push(fence),
            }
        }
        Ok(renewal)
    }

    async fn task_complete(
        &self,
        _worker: WorkerId,
        completions: Vec<Completion<O>>,
        now: Timestamp,
    ) -> Result<Applied, StoreError> {
        let mut inner = self.lock();
        let mut results = Vec::with_capacity(completions.len());
        for c in completions {
            let fence = c.fence;
            let current = inner
                .tasks
                .get(&fence.task)
                .is_some_and(|t| t.state == TaskState::Running && t.attempt == fence.attempt);
            if !current {
                results.push(Err(Stale(fence)));
                continue;
            }
            if matches!(c.outcome, AttemptOutcome::Released) {
                results.push(Ok(inner.release(fence.task, now)));
                continue;
            }
            let t = inner.tasks.get_mut(&fence.task).expect("checked");
            t.log = c.log;
            // The attempt started at the worker `duration` ago, maybe well
            // after its claim (a task held ready to start).
            t.started_at = t.started_at.max(now.minus(c.duration));
            let batch = t.batch;
            let b = inner.batches.get_mut(&batch).expect("tasks have batches");
            b.durations.record(c.duration);
            let stopped = b.stopped.is_some();
            let entered = match c.outcome {
                AttemptOutcome::Succeeded { output } => {
                    inner.finish(fence.task, TaskState::Succeeded, None, output, now);
                    TaskState::Succeeded
                }
                AttemptOutcome::Failed {
                    reason,
                    message,
                    retry_at: Some(at),
                } if !stopped => {
                    inner.tasks.get_mut(&fence.task).expect("checked").message = message;
                    inner.retry_later(fence.task, reason, at, now);
                    TaskState::RetryWait
                }
                AttemptOutcome::Failed {
                    reason, message, ..
                } => {
                    inner.tasks.get_mut(&fence.task).expect("checked").message = message;
                    inner.finish(fence.task, TaskState::Failed, Some(reason), None, now);
                    TaskState::Failed
                }
                AttemptOutcome::Cancelled { reason } => {
                    inner.finish(fence.task, TaskState::Cancelled, Some(reason), None, now);
                    TaskState::Cancelled
                }
                AttemptOutcome::Released => unreachable!("handled above"),
            };
            results.push(Ok(entered));
        }
        let events = self.commit(inner);
        Ok(Applied { results, events })
    }

    async fn task_cancel(
        &self,
        task: TaskId,
        mode: CancelMode,
        now: Timestamp,
    ) -> Result<Events, StoreError> {
        let mut inner = self.lock();
        let t = inner
            .tasks
            .get_mut(&task)
            .ok_or(StoreError::UnknownTask(task))?;
        match t.state {
            TaskState::Running if escalates(t.cancel, mode) => {
                let reason = t.cancel.map_or(Reason::ByUser, |(_, reason)| reason);
                t.cancel = Some((mode, reason));
                inner.control_pending = true;
            }
            TaskState::Pending | TaskState::Queued | TaskState::RetryWait => {
                let (batch, state) = (t.batch, t.state);
                if state == TaskState::Queued {
                    let b = inner.batches.get_mut(&batch).expect("exists");
                    b.ready.remove(task);
                }
                inner.finish(task, TaskState::Cancelled, Some(Reason::ByUser), None, now);
            }
            _ => {}
        }
        Ok(self.commit(inner))
    }

    async fn batch_cancel(
        &self,
        batch: BatchId,
        mode: CancelMode,
        now: Timestamp,
    ) -> Result<Events, StoreError> {
        let mut inner = self.lock();
        let b = inner
            .batches
            .get_mut(&batch)
            .ok_or(StoreError::UnknownBatch(batch))?;
        if !b.state.is_terminal() {
            b.cancelled = true;
            b.open = false;
            inner.stop_batch(batch, Reason::ByUser, Some(mode), now);
        }
        Ok(self.commit(inner))
    }

    async fn batch_pause(&self, batch: BatchId, now: Timestamp) -> Result<Events, StoreError> {
        let mut inner = self.lock();
        let b = inner
            .batches
            .get_mut(&batch)
            .ok_or(StoreError::UnknownBatch(batch))?;
        if !b.state.is_terminal() {
            b.paused = true;
            inner.set_batch_state(batch, BatchState::Paused, now);
        }
        Ok(self.commit(inner))
    }

    async fn batch_resume(&self, batch: BatchId, now: Timestamp) -> Result<Events, StoreError> {
        let mut inner = self.lock();
        let b = inner
            .batches
            .get_mut(&batch)
            .ok_or(StoreError::UnknownBatch(batch))?;
        if b.paused && !b.state.is_terminal() {
            b.paused = false;
            let to = if b.started_at.is_some() {
                BatchState::Running
            } else {
                BatchState::Queued
            };
            inner.work_ready |= !b.ready.is_empty();
            inner.set_batch_state(batch, to, now);
        }
        Ok(self.commit(inner))
    }

    async fn batch_rerun(
        &self,
        batch: BatchId,
        downstream: bool,
        now: Timestamp,
    ) -> Result<Rerun, StoreError> {
        let mut inner = self.lock();
        if !inner.batch(batch)?.state.is_terminal() {
            return Err(StoreError::Unfinished(batch));
        }
        if !self.retain {
            return Err(StoreError::Forgotten(batch));
        }
        let mut ids: Vec<TaskId> = inner
            .tasks
            .iter()
            .filter(|(_, t)| t.batch == batch)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable_by_key(|id| inner.tasks[id].index);
        let position: HashMap<TaskId, usize> =
            ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let finished: Vec<FinishedTask> = ids
            .iter()
            .map(|id| {
                let t = &inner.tasks[id];
                FinishedTask {
                    state: t.state,
                    reason: t.reason,
                    rule: t.rule,
                    upstream: t.upstream.iter().map(|u| position[u]).collect(),
                }
            })
            .collect();
        let selected = rerun_selection(&finished, downstream);
        let chosen: Vec<TaskId> = ids
            .iter()
            .zip(&selected)
            .filter(|(_, s)| **s)
            .map(|(id, _)| *id)
            .collect();
        if chosen.is_empty() {
            return Ok(Rerun {
                tasks: Vec::new(),
                events: Arc::new(Vec::new()),
            });
        }
        let b = inner.batches.get_mut(&batch).expect("checked");
        b.cancelled = false;
        b.failed_by_policy = false;
        b.stopped = None;
        b.paused = false;
        b.finished_at = None;
        b.ready.clear();
        b.in_ready_list = false;
        if b.policy.deadline.is_some() {
            b.policy = Arc::new(BatchPolicy {
                deadline: None,
                ..(*b.policy).clone()
            });
        }
        let (from, to) = (
            b.state,
            if b.started_at.is_some() {
                BatchState::Running
            } else {
                BatchState::Queued
            },
        );
        b.state = to;
        inner.emit(
            now,
            batch,
            EventKind::Batch {
                from: Some(from),
                to,
            },
        );
        // Dependents were let go when their upstream ended: link the rerun
        // tasks to each other again.
        for &id in &chosen {
            let t = inner.tasks.get_mut(&id).expect("listed");
            t.dependents.clear();
        }
        for &id in &chosen {
            let upstream = inner.tasks[&id].upstream.clone();
            let mut waiting = 0;
            for u in upstream {
                if selected[position[&u]] {
                    inner.tasks.get_mut(&u).expect("listed").dependents.push(id);
                    waiting += 1;
                }
            }
            let t = inner.tasks.get_mut(&id).expect("listed");
            let to = if waiting > 0 {
                TaskState::Pending
            } else {
                TaskState::Queued
            };
            debug_assert!(t.state.can_rerun_to(to), "{} -> {to}", t.state);
            t.message = None;
            t.cancel = None;
            t.lost = 0;
            t.first_attempt = t.attempt.next();
            t.deps_left = waiting;
            inner.shift_task(id, to, None, now);
            if to == TaskState::Queued {
                inner.push_ready(id);
            }
        }
        let events = self.commit(inner);
        Ok(Rerun {
            tasks: chosen,
            events,
        })
    }

    async fn task_rescue(&self, now: Timestamp) -> Result<Events, StoreError> {
        let mut inner = self.lock();
        // Once per heartbeat: a scan of the tasks in memory costs less overall
        // than keeping a set of running ones.
        let expired: Vec<TaskId> = inner
            .tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Running && t.lease_until < now)
            .map(|(id, _)| *id)
            .collect();
        inner.lose(expired, LEASE_EXPIRED, now);
        Ok(self.commit(inner))
    }

    async fn worker_expire(&self, worker: WorkerId, now: Timestamp) -> Result<Events, StoreError> {
        let mut inner = self.lock();
        // Rare (a worker found dead): a scan, as for rescues.
        let running: Vec<TaskId> = inner
            .tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Running && t.worker == Some(worker))
            .map(|(id, _)| *id)
            .collect();
        inner.lose(running, WORKER_EXPIRED, now);
        Ok(self.commit(inner))
    }

    async fn batch_expire(&self, now: Timestamp) -> Result<Events, StoreError> {
        let mut inner = self.lock();
        inner.expire_deadlines(now);
        Ok(self.commit(inner))
    }

    async fn batch_get(&self, batch: BatchId) -> Result<BatchInfo, StoreError> {
        let inner = self.lock();
        let b = inner.batch(batch)?;
        Ok(Inner::<P, O>::batch_info(batch, b))
    }

    async fn batch_stats(&self, batch: BatchId, now: Timestamp) -> Result<BatchStats, StoreError> {
        let inner = self.lock();
        let b = inner.batch(batch)?;
        let wall = match b.started_at {
            Some(start) => b.finished_at.unwrap_or(now).since(start),
            None => std::time::Duration::ZERO,
        };
        let finished = b.counts.finished();
        Ok(BatchStats {
            counts: b.counts,
            retries: b.retries,
            p50: b.durations.quantile(0.50),
            p95: b.durations.quantile(0.95),
            p99: b.durations.quantile(0.99),
            throughput: if wall.is_zero() {
                0.0
            } else {
                finished as f64 / wall.as_secs_f64()
            },
            wall,
        })
    }

    async fn task_get(&self, task: TaskId) -> Result<TaskInfo, StoreError> {
        let inner = self.lock();
        let t = inner
            .tasks
            .get(&task)
            .ok_or(StoreError::UnknownTask(task))?;
        Ok(Inner::<P, O>::task_info(task, t))
    }

    async fn batch_list(&self, query: BatchQuery) -> Result<Vec<BatchInfo>, StoreError> {
        let inner = self.lock();
        let below = query.before.unwrap_or(BatchId(i64::MAX));
        Ok(inner
            .batch_ids
            .range(..below)
            .rev()
            .map(|id| (*id, &inner.batches[id]))
            .filter(|(_, b)| query.states.is_empty() || query.states.contains(&b.state))
            .take(query.limit)
            .map(|(id, b)| Inner::<P, O>::batch_info(id, b))
            .collect())
    }

    async fn task_list(
        &self,
        batch: BatchId,
        query: TaskQuery,
    ) -> Result<Vec<TaskRecord<P, O>>, StoreError> {
        let inner = self.lock();
        let b = inner.batch(batch)?;
        let from = query.after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = Vec::new();
        for (_, &id) in b.by_index.range((from, Bound::Unbounded)) {
            if page.len() >= query.limit {
                break;
            }
            let t = &inner.tasks[&id];
            if !query.states.is_empty() && !query.states.contains(&t.state) {
                continue;
            }
            let mut last_attempt = t.attempts.last().cloned();
            if !query.logs
                && let Some(a) = &mut last_attempt
            {
                a.log = None;
            }
            page.push(TaskRecord {
                info: Inner::<P, O>::task_info(id, t),
                payload: t.payload.clone(),
                output: inner.outputs.get(&id).and_then(|u| u.output.clone()),
                last_attempt,
            });
        }
        Ok(page)
    }

    async fn task_attempts(&self, task: TaskId) -> Result<Vec<AttemptInfo>, StoreError> {
        let inner = self.lock();
        let t = inner
            .tasks
            .get(&task)
            .ok_or(StoreError::UnknownTask(task))?;
        let mut attempts = t.attempts.clone();
        if t.state == TaskState::Running {
            attempts.push(AttemptInfo {
                attempt: t.attempt,
                worker: t.worker,
                started_at: t.started_at,
                finished_at: None,
                state: None,
                reason: None,
                message: None,
                log: None,
            });
        }
        Ok(attempts)
    }

    async fn worker_list(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        Ok(self.lock().workers.values().cloned().collect())
    }

    async fn event_list(&self, query: EventQuery) -> Result<Vec<Event>, StoreError> {
        let inner = self.lock();
        // The log is in `seq` order: skip what the reader has seen.
        let from = inner.log.partition_point(|e| e.seq <= query.after);
        Ok(inner
            .log
            .range(from..)
            .filter(|e| query.batch.is_none_or(|b| e.batch == b))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn batch_purge(&self, batch: BatchId) -> Result<(), StoreError> {
        self.lock().purge(batch)
    }

    fn events(&self) -> broadcast::Receiver<Events> {
        self.events.subscribe()
    }

    fn signals(&self) -> &Signals {
        &self.signals
    }

    fn retains_finished_tasks(&self) -> bool {
        self.retain
    }
}
