//! The store contract over SQL, written once for both dialects.
//!
//! Every operation is one transaction. It locks the rows of the batches it
//! touches first (in id order, so that transactions never wait on each other
//! in a cycle), loads the task rows it needs into a [`Work`], applies the same
//! transitions as the memory store — the reference — in Rust, and writes back
//! what changed with a few set statements. The dialects ([`Tx`]) only move
//! rows: SQLite through `json_each` and `VALUES` lists, PostgreSQL through
//! arrays, one per column, so that a claim or a completion of a hundred tasks costs a
//! handful of statements, not a round trip per task.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Arc;

use herd_core::model::{
    Attempt, BatchId, BatchPolicy, BatchState, DependencyRule, DurationHistogram, ErrorPolicy,
    Event, EventKind, OnFailure, Priority, Reason, StateCounts, TaskId, TaskState, Timestamp,
    WorkerId, batch_outcome,
};
use herd_core::store::{AttemptLog, CancelMode, Fence, StoreError};
use herd_core::util::IdMap;

use crate::logs::StoredLog;

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// A backend failure, as the contract reports it.
pub(crate) fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// A task row, as loaded into a [`Work`].
#[derive(Clone, Debug)]
pub(crate) struct TaskRow {
    pub id: TaskId,
    pub batch: BatchId,
    pub index: u64,
    pub key: Option<Arc<str>>,
    pub priority: Priority,
    pub cost: u32,
    pub state: TaskState,
    pub reason: Option<Reason>,
    pub message: Option<String>,
    pub attempt: Attempt,
    pub first_attempt: Attempt,
    pub lost: u32,
    pub worker: Option<WorkerId>,
    pub lease_until: Option<Timestamp>,
    /// When the current attempt started.
    pub started_at: Option<Timestamp>,
    pub cancel: Option<(CancelMode, Reason)>,
    pub run_at: Option<Timestamp>,
    pub ready_seq: Option<i64>,
    pub deps_left: u32,
    pub rule: DependencyRule,
    /// Tasks that wait for this one.
    pub dependents: u32,
    /// Tasks this one waits for.
    pub upstream: u32,
}

/// A batch row, as loaded (and locked) into a [`Work`].
#[derive(Clone, Debug)]
pub(crate) struct BatchRow {
    pub id: BatchId,
    pub name: Option<String>,
    pub state: BatchState,
    pub priority: Priority,
    pub concurrency: u32,
    pub policy: Arc<BatchPolicy>,
    pub error_policy: ErrorPolicy,
    /// The deadline still to be enforced (cleared once it has been).
    pub deadline: Option<Timestamp>,
    pub open: bool,
    pub paused: bool,
    pub stopped: Option<Reason>,
    pub cancelled: bool,
    pub failed_by_policy: bool,
    pub running_cost: u32,
    pub last_served: i64,
    pub next_index: u64,
    pub next_ready: i64,
    pub counts: StateCounts,
    pub retries: u64,
    /// `policy` differs from the stored one (a rerun dropped its deadline):
    /// only then is it written back.
    pub policy_changed: bool,
    /// The stored histogram; decoded only by operations that record into it.
    pub durations: Option<Vec<u8>>,
    pub histogram: Option<DurationHistogram>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// The indexed columns as read: a write that leaves them as they were
    /// need not touch their indexes (SQLite rewrites an index entry for
    /// every indexed column an `UPDATE` sets, changed or not).
    pub stored: Stored,
    /// A task of the batch joined or left its queue since the row was read.
    pub queue_touched: bool,
}

/// A batch row's indexed columns as read ([`BatchRow::stored`]), and
/// what tells whether its queued tasks changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub deadline: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub last_served: i64,
    pub queued: u64,
    pub next_ready: i64,
}

impl BatchRow {
    /// Whether the batch's queued tasks may differ from those it had when
    /// read, so that its head must be set again: a task joined or left the
    /// queue, or a new task took a place in it (`next_ready`). The count
    /// alone does not tell: a task given back (`Released`) takes back its
    /// old place, and a claim in the same transaction may take another.
    pub fn queue_changed(&self) -> bool {
        self.queue_touched
            || self.counts.queued != self.stored.queued
            || self.next_ready != self.stored.next_ready
    }

    pub fn histogram(&mut self) -> &mut DurationHistogram {
        let stored = &self.durations;
        self.histogram.get_or_insert_with(|| {
            stored
                .as_deref()
                .and_then(DurationHistogram::from_bytes)
                .unwrap_or_default()
        })
    }
}

/// A batch to insert.
pub(crate) struct NewBatch<'a> {
    pub name: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub state: BatchState,
    pub priority: Priority,
    pub concurrency: u32,
    pub policy: &'a BatchPolicy,
    pub error_policy: &'a ErrorPolicy,
    pub open: bool,
    pub paused: bool,
    pub created_at: Timestamp,
}

/// A task to insert.
pub(crate) struct NewTask {
    pub id: i64,
    pub index: u64,
    pub key: Option<String>,
    pub priority: i32,
    pub cost: u32,
    /// The payload, as JSON text.
    pub payload: String,
    pub state: &'static str,
    pub ready_seq: Option<i64>,
    pub deps_left: u32,
    pub rule: &'static str,
    pub dependents: u32,
    pub upstream: u32,
}

/// A dependency to insert: `task` waits for `upstream`.
pub(crate) struct NewDep {
    pub task: i64,
    pub upstream: i64,
    pub position: u32,
}

/// The mutable columns of a task row, as written back.
pub(crate) struct TaskWrite<'a> {
    pub id: i64,
    pub s: &'static str,
    pub r: Option<String>,
    pub m: Option<&'a str>,
    pub a: u32,
    pub fa: u32,
    pub l: u32,
    pub w: Option<i64>,
    pub lu: Option<i64>,
    pub st: Option<i64>,
    pub cm: Option<&'static str>,
    pub cr: Option<String>,
    pub ra: Option<i64>,
    pub rs: Option<i64>,
    pub d: u32,
    /// Which of the columns above differ from the row as the transaction
    /// read it (or last wrote it): one bit each, in [`TaskWrite::COLUMNS`]
    /// order; all of them when that row is not known.
    pub changed: u16,
    /// The output to keep, for dialects that write it with the row
    /// ([`Tx::write_all`] on PostgreSQL); others use [`Tx::outputs_write`].
    pub o: Option<&'a str>,
    /// Read, never written: where its batch's queue head is found again in
    /// the statement that writes it (PostgreSQL's [`Tx::write_all`]).
    pub batch: i64,
    pub priority: i32,
    pub cost: u32,
}

impl TaskWrite<'_> {
    /// The columns a task write sets, in the order of [`TaskWrite::changed`]'s bits.
    pub const COLUMNS: [&'static str; 14] = [
        "state",
        "reason",
        "message",
        "attempt",
        "first_attempt",
        "lost",
        "worker_id",
        "lease_until",
        "cancel_mode",
        "cancel_reason",
        "run_at",
        "ready_seq",
        "deps_left",
        "started_at",
    ];

    /// Every column changed.
    pub const ALL: u16 = (1 << Self::COLUMNS.len()) - 1;

    /// The columns in which task row `now` differs from `was`, compared
    /// as rows (nothing formatted or allocated for it).
    fn changed_between(now: &TaskRow, was: &TaskRow) -> u16 {
        let differs = [
            now.state != was.state,
            now.reason != was.reason,
            now.message != was.message,
            now.attempt != was.attempt,
            now.first_attempt != was.first_attempt,
            now.lost != was.lost,
            now.worker != was.worker,
            now.lease_until != was.lease_until,
            now.cancel.map(|(mode, _)| mode) != was.cancel.map(|(mode, _)| mode),
            now.cancel.map(|(_, reason)| reason) != was.cancel.map(|(_, reason)| reason),
            now.run_at != was.run_at,
            now.ready_seq != was.ready_seq,
            now.deps_left != was.deps_left,
            now.started_at != was.started_at,
        ];
        differs
            .iter()
            .enumerate()
            .filter(|(_, d)| **d)
            .fold(0, |mask, (i, _)| mask | 1 << i)
    }
}

/// An attempt that ended: its one row in `attempts`, written at its end
/// (while it runs, its worker and start are on the task row).
pub(crate) struct AttemptEnd {
    pub t: i64,
    pub a: u32,
    pub w: Option<i64>,
    /// When it started.
    pub st: i64,
    pub at: i64,
    /// The state the attempt led to.
    pub o: &'static str,
    pub r: Option<String>,
    /// The exit code: the log's, else the reason's (`exit_code(n)`).
    pub x: Option<i32>,
    pub e: Option<String>,
    /// The log's output tails (zlib streams when `z`), NULL without a log.
    pub so: Option<Vec<u8>>,
    pub se: Option<Vec<u8>>,
    pub z: bool,
    /// The log's total bytes of standard output and error.
    pub ot: Option<i64>,
    pub et: Option<i64>,
}

/// An event row: a run of one operation's events of one batch, with
/// consecutive numbers (schema version 5). A claim or a completion of a
/// hundred tasks of one batch is one row, not a hundred: the events were a
/// fifth of the instructions of a SQLite drain, and their rows and index
/// entries a fifth of PostgreSQL's write-ahead log. `body` holds one line
/// per event ([`event_line`]); readers take the events apart
/// (`history.rs`).
pub(crate) struct EventWrite {
    /// The first event's offset in its transaction, until
    /// [`Tx::write_all`] knows the first number.
    pub seq: i64,
    /// How many events.
    pub n: i64,
    pub at: i64,
    pub b: i64,
    pub body: String,
}

impl EventWrite {
    /// The most events in one row: a reader resuming inside a run reads
    /// the whole row (a large submit's creations would be one row of
    /// megabytes).
    pub const RUN: i64 = 1000;

    /// The rows of a transaction's `events`, in order: one per run of
    /// events of one batch at one time, of at most [`Self::RUN`].
    pub fn group(events: &[Event]) -> Vec<EventWrite> {
        let mut rows: Vec<EventWrite> = Vec::new();
        for (offset, e) in events.iter().enumerate() {
            match rows.last_mut() {
                Some(row) if row.b == e.batch.0 && row.at == e.at.0 && row.n < Self::RUN => {
                    row.n += 1;
                    row.body.push('\n');
                    event_line(&mut row.body, &e.kind);
                }
                _ => {
                    let mut body = String::with_capacity(48);
                    event_line(&mut body, &e.kind);
                    rows.push(EventWrite {
                        seq: offset as i64,
                        n: 1,
                        at: e.at.0,
                        b: e.batch.0,
                        body,
                    });
                }
            }
        }
        rows
    }
}

/// One event as a line of an event row's body: `t TASK INDEX ATTEMPT FROM
/// TO REASON` or `b FROM TO`, `-` for a missing state or reason (the
/// schema's migration 5 writes the same).
/// Written by hand, not through `core::fmt`: a drain of 100-task
/// transactions spent a twentieth of its instructions formatting them.
pub(crate) fn event_line(out: &mut String, kind: &EventKind) {
    use std::fmt::Write;
    let mut number = itoa::Buffer::new();
    match kind {
        EventKind::Task {
            task,
            index,
            attempt,
            from,
            to,
            reason,
        } => {
            out.push_str("t ");
            out.push_str(number.format(task.0));
            out.push(' ');
            out.push_str(number.format(*index));
            out.push(' ');
            out.push_str(number.format(attempt.0));
            for field in [
                " ",
                from.map_or("-", TaskState::as_str),
                " ",
                to.as_str(),
                " ",
            ] {
                out.push_str(field);
            }
            match reason {
                Some(reason) => {
                    let _ = write!(out, "{reason}");
                }
                None => out.push('-'),
            }
        }
        EventKind::Batch { from, to } => {
            for field in ["b ", from.map_or("-", BatchState::as_str), " ", to.as_str()] {
                out.push_str(field);
            }
        }
    }
}

/// Everything a transaction writes at its end.
pub(crate) struct WriteSet<'a> {
    pub tasks: Vec<TaskWrite<'a>>,
    pub batches: Vec<&'a BatchRow>,
    pub attempts_ended: &'a [AttemptEnd],
    /// Also in `tasks` (`TaskWrite::o`).
    pub outputs: &'a [(TaskId, String)],
    /// `seq` holds each row's first offset in the transaction.
    pub events: Vec<EventWrite>,
    /// How many events the rows hold.
    pub event_count: usize,
    pub notify_work: bool,
    pub notify_control: bool,
}

/// Where a claim starts from.
#[derive(Default)]
pub(crate) struct ClaimScan {
    /// Retries due: (task, batch).
    pub due: Vec<(TaskId, BatchId)>,
    /// Batches past a deadline not enforced yet.
    pub past_deadline: Vec<BatchId>,
    /// Batches that could start a task: the best few, enough for the claim
    /// ([`crate::statements::claim_ranked`]), or the one it is limited to.
    pub claimable: Vec<BatchId>,
}

impl ClaimScan {
    /// The batches a claim locks: those with due retries, past their
    /// deadline, and those it could take tasks from (only `only`, if given).
    pub fn batches(&self, only: Option<BatchId>) -> Vec<BatchId> {
        let mut batches: Vec<BatchId> = self.due.iter().map(|(_, b)| *b).collect();
        batches.extend(&self.past_deadline);
        batches.extend(
            self.claimable
                .iter()
                .filter(|b| only.is_none_or(|only| **b == only)),
        );
        batches
    }

    /// Sorts the rows of [`crate::statements::CLAIM_SCAN`]: (kind, id, batch).
    pub fn from_rows(rows: Vec<(String, i64, i64)>) -> ClaimScan {
        let mut out = ClaimScan::default();
        for (kind, id, batch) in rows {
            match kind.as_str() {
                "due" => out.due.push((TaskId(id), BatchId(batch))),
                "deadline" => out.past_deadline.push(BatchId(id)),
                _ => out.claimable.push(BatchId(id)),
            }
        }
        out.past_deadline.sort_unstable();
        out
    }
}

/// What a claim reads after its batches are locked: up to `limit` queued
/// tasks of each candidate batch, in queue order, with their payloads (JSON
/// text); the largest `last_served` of any batch; the earliest retry due
/// time or unenforced deadline.
pub(crate) struct Heads {
    pub heads: Vec<(TaskRow, String)>,
    pub served: i64,
    pub due: Option<Timestamp>,
}

/// A transaction's first reads ([`Tx::open`]); nothing read by default.
#[derive(Default)]
pub(crate) struct Opened {
    /// The claim's scan, when a claim was asked for.
    pub scan: Option<ClaimScan>,
    /// The batches locked: the scan's ([`ClaimScan::batches`]) and those of
    /// the tasks, in id order.
    pub batches: Vec<BatchRow>,
    /// The tasks' rows.
    pub tasks: Vec<TaskRow>,
    /// The claim's [`Heads`], read at once by a dialect that reads ahead
    /// (SQLite), for every batch locked that is unfinished, unpaused and
    /// unstopped and has queued tasks, whether or not it has a free slot
    /// (a completion before the claim may free one). Valid only while
    /// nothing the transaction changed before the claim could change them
    /// (see [`Work::claim_reads_hold`]).
    pub heads: Option<Heads>,
}

/// What a claim asks of [`Tx::open`].
#[derive(Clone, Copy)]
pub(crate) struct ClaimOpen {
    pub now: Timestamp,
    /// Take tasks only from this batch.
    pub only: Option<BatchId>,
    /// Queued tasks to read per batch.
    pub limit: usize,
}

/// An upstream task's result, for a claimed dependent.
pub(crate) struct UpstreamRow {
    pub dependent: TaskId,
    pub task: TaskId,
    pub key: Option<Arc<str>>,
    pub state: TaskState,
    pub output: Option<String>,
}

/// One write transaction in a dialect: the statements the logic needs, each
/// over a set of rows.
pub(crate) trait Tx: Send {
    /// Whether task writes set only the columns that changed
    /// ([`TaskWrite::changed`]): then a transaction keeps each dirty
    /// task's row as the database holds it, to compare with.
    const WRITES_CHANGED_COLUMNS: bool;
    /// The batch with this idempotency key.
    fn batch_by_key(&mut self, key: &str) -> impl Future<Output = Result<Option<BatchId>>> + Send;
    /// Inserts a batch; returns its row, held by the transaction.
    fn batch_insert(
        &mut self,
        batch: NewBatch<'_>,
    ) -> impl Future<Output = Result<BatchRow>> + Send;
    /// Locks and reads batches, in id order; unknown ids are left out.
    fn batches_lock(
        &mut self,
        ids: &[BatchId],
    ) -> impl Future<Output = Result<Vec<BatchRow>>> + Send;
    fn batch_write(&mut self, row: &BatchRow) -> impl Future<Output = Result<()>> + Send;
    /// What a claim starts from, in one statement: retries due by `now`
    /// (task, batch), batches past their deadline, and the batches it could
    /// take tasks from: with `only`, that batch if it could start a task;
    /// without, the best `limit` (and one more per retry due) of those
    /// whose head fits ([`crate::statements::claim_ranked`]).
    fn claim_scan(
        &mut self,
        now: Timestamp,
        only: Option<BatchId>,
        limit: usize,
    ) -> impl Future<Output = Result<ClaimScan>> + Send;
    /// Unfinished batches whose deadline (not yet enforced) has passed.
    fn batches_past_deadline(
        &mut self,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<BatchId>>> + Send;
    /// Locks and reads the batches `ids` and those of the tasks `tasks`, in
    /// id order, in one statement.
    fn batches_lock_with_tasks(
        &mut self,
        ids: &[BatchId],
        tasks: &[TaskId],
    ) -> impl Future<Output = Result<Vec<BatchRow>>> + Send;
    /// The largest `last_served` of any batch, and the earliest retry due
    /// time or unenforced deadline.
    fn served_and_due(&mut self) -> impl Future<Output = Result<(i64, Option<Timestamp>)>> + Send;

    /// `n` fresh task ids, ascending.
    fn task_ids(&mut self, n: usize) -> impl Future<Output = Result<Vec<i64>>> + Send;
    fn tasks_insert(
        &mut self,
        batch: BatchId,
        rows: &[NewTask],
    ) -> impl Future<Output = Result<()>> + Send;
    fn deps_insert(&mut self, rows: &[NewDep]) -> impl Future<Output = Result<()>> + Send;
    fn tasks_get(&mut self, ids: &[TaskId]) -> impl Future<Output = Result<Vec<TaskRow>>> + Send;
    /// The batch's tasks that have not finished.
    fn tasks_live(&mut self, batch: BatchId) -> impl Future<Output = Result<Vec<TaskRow>>> + Send;
    /// Every task of a batch, in batch order.
    fn tasks_of_batch(
        &mut self,
        batch: BatchId,
    ) -> impl Future<Output = Result<Vec<TaskRow>>> + Send;
    /// Every dependency of a batch: (task, upstream).
    fn deps_of_batch(
        &mut self,
        batch: BatchId,
    ) -> impl Future<Output = Result<Vec<(TaskId, TaskId)>>> + Send;
    /// (upstream, dependent) for the pending dependents of these tasks.
    fn tasks_dependents(
        &mut self,
        ids: &[TaskId],
    ) -> impl Future<Output = Result<Vec<(TaskId, TaskRow)>>> + Send;
    /// Up to `limit` queued tasks of each batch, in queue order, with their
    /// payloads (JSON text).
    fn tasks_ready(
        &mut self,
        batches: &[BatchId],
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(TaskRow, String)>>> + Send;
    /// Running tasks whose lease expired before `now`: (task, batch).
    fn tasks_lease_expired(
        &mut self,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<(TaskId, BatchId)>>> + Send;
    /// Tasks `worker` is running: (task, batch).
    fn tasks_of_worker(
        &mut self,
        worker: WorkerId,
    ) -> impl Future<Output = Result<Vec<(TaskId, BatchId)>>> + Send;
    /// Records `now` as the worker's last heartbeat.
    fn worker_heartbeat(
        &mut self,
        worker: WorkerId,
        now: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send;
    fn tasks_write(&mut self, rows: &[TaskWrite<'_>]) -> impl Future<Output = Result<()>> + Send;
    /// Upstream results of these tasks, in each one's `after` order.
    fn upstream(&mut self, ids: &[TaskId])
    -> impl Future<Output = Result<Vec<UpstreamRow>>> + Send;
    fn outputs_write(
        &mut self,
        rows: &[(TaskId, String)],
    ) -> impl Future<Output = Result<()>> + Send;

    fn attempts_end(&mut self, rows: &[AttemptEnd]) -> impl Future<Output = Result<()>> + Send;

    /// A transaction's first reads: with `claim`, the claim's scan; then
    /// the batches to lock (the scan's and those of `tasks`), locked in one
    /// statement in id order; and the rows of `tasks`. A dialect may read
    /// them in one round trip, and the claim's [`Heads`] with them.
    fn open(
        &mut self,
        claim: Option<ClaimOpen>,
        tasks: &[TaskId],
    ) -> impl Future<Output = Result<Opened>> + Send {
        async move {
            let scan = match claim {
                // Each completion before the claim may spoil one batch read.
                Some(c) => Some(
                    self.claim_scan(c.now, c.only, c.limit.saturating_add(tasks.len()))
                        .await?,
                ),
                None => None,
            };
            let ids = match (&scan, claim) {
                (Some(scan), Some(c)) => scan.batches(c.only),
                _ => Vec::new(),
            };
            let batches = match (ids.is_empty(), tasks.is_empty()) {
                (true, true) => Vec::new(),
                (false, true) => self.batches_lock(&ids).await?,
                _ => self.batches_lock_with_tasks(&ids, tasks).await?,
            };
            let tasks = match tasks.is_empty() {
                true => Vec::new(),
                false => self.tasks_get(tasks).await?,
            };
            Ok(Opened {
                scan,
                batches,
                tasks,
                heads: None,
            })
        }
    }

    /// A claim's [`Heads`] for the candidate batches `batches`.
    fn claim_heads(
        &mut self,
        batches: &[BatchId],
        limit: usize,
    ) -> impl Future<Output = Result<Heads>> + Send {
        async move {
            let heads = match batches.is_empty() || limit == 0 {
                true => Vec::new(),
                false => self.tasks_ready(batches, limit).await?,
            };
            let (served, due) = self.served_and_due().await?;
            Ok(Heads { heads, served, due })
        }
    }

    /// Writes a transaction's changes and events; returns the first event's
    /// `seq` (0 without events), or `None` when the dialect learns it only
    /// at commit ([`crate::store::Dialect::commit`]). Takes the sequence
    /// last, so that the sequence row stays locked only until commit. A
    /// dialect may do it all in one statement (PostgreSQL: one round trip
    /// instead of six) or send it with the commit (SQLite).
    /// Both take the event sequence last, so that its row stays locked only
    /// until commit, and send the notifications the set asks for.
    fn write_all(&mut self, set: WriteSet<'_>) -> impl Future<Output = Result<Option<u64>>> + Send;
}

/// Whether a cancellation request in `mode` adds to what was asked before:
/// a first request, or forced after graceful.
pub(crate) fn escalates(current: Option<(CancelMode, Reason)>, mode: CancelMode) -> bool {
    match current {
        None => true,
        Some((CancelMode::Graceful, _)) => mode == CancelMode::Forced,
        Some((CancelMode::Forced, _)) => false,
    }
}

pub(crate) fn cancel_mode_str(mode: CancelMode) -> &'static str {
    match mode {
        CancelMode::Graceful => "graceful",
        CancelMode::Forced => "forced",
    }
}

pub(crate) fn parse_cancel_mode(s: &str) -> Option<CancelMode> {
    match s {
        "graceful" => Some(CancelMode::Graceful),
        "forced" => Some(CancelMode::Forced),
        _ => None,
    }
}

pub(crate) fn rule_str(rule: DependencyRule) -> &'static str {
    match rule {
        DependencyRule::Success => "success",
        DependencyRule::Done => "done",
    }
}

pub(crate) fn parse_rule(s: &str) -> Option<DependencyRule> {
    match s {
        "success" => Some(DependencyRule::Success),
        "done" => Some(DependencyRule::Done),
        _ => None,
    }
}

/// Why running attempts are lost.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Lost {
    /// Their leases expired.
    Lease,
    /// Their worker was declared gone ([`herd_core::store::Store::worker_expire`]).
    Worker(WorkerId),
}

impl Lost {
    /// The message the task keeps, as the memory store words it.
    fn message(self) -> &'static str {
        match self {
            Lost::Lease => "the worker running it stopped renewing its lease",
            Lost::Worker(_) => "the worker running it is gone",
        }
    }
}

/// A task reaching a terminal state.
struct Finish {
    task: TaskId,
    state: TaskState,
    reason: Option<Reason>,
}

/// What one transaction changes, kept in memory until it is written back.
pub(crate) struct Work {
    pub now: Timestamp,
    pub batches: BTreeMap<BatchId, BatchRow>,
    pub tasks: IdMap<TaskId, TaskRow>,
    dirty_tasks: BTreeSet<TaskId>,
    /// The dirty tasks' rows as the database holds them (as read, or as
    /// last written in this transaction), for a dialect that writes only
    /// what changed ([`Tx::WRITES_CHANGED_COLUMNS`]; `keep_read`).
    read: IdMap<TaskId, TaskRow>,
    keep_read: bool,
    dirty_batches: BTreeSet<BatchId>,
    events: Vec<Event>,
    attempts_ended: Vec<AttemptEnd>,
    outputs: Vec<(TaskId, String)>,
    /// Logs reported with completions, until their attempts' rows are written.
    logs: IdMap<TaskId, AttemptLog>,
    /// Tasks became ready: wake workers.
    pub work_ready: bool,
    /// Running attempts must be cancelled: wake workers to renew leases.
    pub control_pending: bool,
}

/// What a transaction wrote, for publishing after its commit.
pub(crate) struct Written {
    /// Numbered from 0 until the first `seq` is known.
    pub events: Vec<Event>,
    /// The first event's `seq`, if known before the commit.
    pub first: Option<u64>,
    pub work_ready: bool,
    pub control_pending: bool,
}

impl Work {
    /// The work of one transaction of `T`'s dialect.
    pub fn new<T: Tx>(now: Timestamp) -> Work {
        Work {
            now,
            batches: BTreeMap::new(),
            tasks: IdMap::default(),
            dirty_tasks: BTreeSet::new(),
            read: IdMap::default(),
            keep_read: T::WRITES_CHANGED_COLUMNS,
            dirty_batches: BTreeSet::new(),
            events: Vec::new(),
            attempts_ended: Vec::new(),
            outputs: Vec::new(),
            logs: IdMap::default(),
            work_ready: false,
            control_pending: false,
        }
    }

    /// Locks and loads the batches not loaded yet. Call once per transaction
    /// with every batch it will touch: locks are taken in id order.
    pub async fn lock<T: Tx>(&mut self, tx: &mut T, ids: &[BatchId]) -> Result<()> {
        let mut wanted: Vec<BatchId> = ids
            .iter()
            .copied()
            .filter(|id| !self.batches.contains_key(id))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        for row in tx.batches_lock(&wanted).await? {
            self.batches.insert(row.id, row);
        }
        Ok(())
    }

    /// Takes the row of a batch this transaction inserted, as
    /// [`Work::lock`] would have read it.
    pub fn adopt_batch(&mut self, row: BatchRow) -> BatchId {
        let id = row.id;
        self.batches.insert(id, row);
        id
    }

    /// A transaction's first reads ([`Tx::open`]): locks and loads the
    /// batches of `tasks` (and, with `claim`, the claim's), and loads
    /// `tasks`. Call first, once.
    pub async fn open<T: Tx>(
        &mut self,
        tx: &mut T,
        claim: Option<ClaimOpen>,
        tasks: &[TaskId],
    ) -> Result<(Option<ClaimScan>, Option<Heads>)> {
        let opened = tx.open(claim, tasks).await?;
        for row in opened.batches {
            self.batches.entry(row.id).or_insert(row);
        }
        for row in opened.tasks {
            self.tasks.entry(row.id).or_insert(row);
        }
        Ok((opened.scan, opened.heads))
    }

    /// Room for `n` more transitions (a submit knows how many it makes).
    pub fn reserve_events(&mut self, n: usize) {
        self.events.reserve_exact(n);
    }

    /// The transitions recorded so far.
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// Whether what a claim reads from the database ([`Heads`]) still holds
    /// after the transitions recorded since the `from`-th: only running
    /// attempts ended (succeeded, failed or cancelled) and nothing else
    /// moved: no task queued, retried, released or skipped, no batch
    /// finished. Running attempts are not among a claim's reads, and what
    /// their end changes in a batch row (slots, counters) is read from the
    /// loaded row.
    pub fn claim_reads_hold(&self, from: usize) -> bool {
        self.events[from..].iter().all(|e| {
            matches!(
                e.kind,
                EventKind::Task {
                    from: Some(TaskState::Running),
                    to: TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled,
                    ..
                }
            )
        })
    }

    /// Loads task rows not loaded yet; rows already loaded are newer.
    pub async fn load<T: Tx>(&mut self, tx: &mut T, ids: &[TaskId]) -> Result<()> {
        let wanted: Vec<TaskId> = ids
            .iter()
            .copied()
            .filter(|id| !self.tasks.contains_key(id))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        for row in tx.tasks_get(&wanted).await? {
            self.tasks.entry(row.id).or_insert(row);
        }
        Ok(())
    }

    pub fn adopt(&mut self, row: TaskRow) -> TaskId {
        let id = row.id;
        self.tasks.entry(id).or_insert(row);
        id
    }

    pub fn batch(&self, id: BatchId) -> Result<&BatchRow> {
        self.batches.get(&id).ok_or(StoreError::UnknownBatch(id))
    }

    pub fn batch_mut(&mut self, id: BatchId) -> Result<&mut BatchRow> {
        self.dirty_batches.insert(id);
        self.batches
            .get_mut(&id)
            .ok_or(StoreError::UnknownBatch(id))
    }

    pub fn task_mut(&mut self, id: TaskId) -> &mut TaskRow {
        let row = self.tasks.get_mut(&id).expect("task loaded");
        if self.dirty_tasks.insert(id) && self.keep_read {
            self.read.insert(id, row.clone());
        }
        row
    }

    fn emit(&mut self, batch: BatchId, kind: EventKind) {
        self.events.push(Event {
            seq: 0,
            at: self.now,
            batch,
            kind,
        });
    }

    pub fn emit_created(&mut self, batch: BatchId, task: TaskId, index: u64, state: TaskState) {
        self.emit(
            batch,
            EventKind::Task {
                task,
                index,
                attempt: Attempt(0),
                from: None,
                to: state,
                reason: None,
            },
        );
    }

    pub fn emit_batch_created(&mut self, batch: BatchId, state: BatchState) {
        self.emit(
            batch,
            EventKind::Batch {
                from: None,
                to: state,
            },
        );
    }

    pub fn set_batch_state(&mut self, id: BatchId, to: BatchState) {
        let now = self.now;
        let Ok(b) = self.batch_mut(id) else { return };
        let from = b.state;
        if from == to || !from.can_become(to) {
            return;
        }
        b.state = to;
        if to.is_terminal() {
            b.finished_at = Some(now);
        }
        self.emit(
            id,
            EventKind::Batch {
                from: Some(from),
                to,
            },
        );
    }

    /// Moves a task to a non-terminal state, keeping counters and events.
    pub fn move_task(&mut self, id: TaskId, to: TaskState, reason: Option<Reason>) {
        debug_assert!(
            self.tasks[&id].state.can_become(to),
            "{} -> {to}",
            self.tasks[&id].state
        );
        self.shift_task(id, to, reason);
    }

    /// Sets a task's state and reason, moves it between its batch's
    /// counters and records the transition. Callers check the move.
    fn shift_task(&mut self, id: TaskId, to: TaskState, reason: Option<Reason>) {
        let t = self.task_mut(id);
        let from = t.state;
        t.state = to;
        t.reason = reason;
        let (batch, index, attempt) = (t.batch, t.index, t.attempt);
        if let Ok(b) = self.batch_mut(batch) {
            b.counts.shift(Some(from), to);
            b.queue_touched |= from == TaskState::Queued || to == TaskState::Queued;
        }
        self.emit(
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

    /// Reopens a finished batch for a rerun: its error policy and deadline
    /// no longer stop it.
    pub fn reopen_batch(&mut self, id: BatchId) -> Result<()> {
        let b = self.batch_mut(id)?;
        let from = b.state;
        let to = if b.started_at.is_some() {
            BatchState::Running
        } else {
            BatchState::Queued
        };
        debug_assert!(from.can_reopen_to(to), "{from} -> {to}");
        b.state = to;
        b.cancelled = false;
        b.failed_by_policy = false;
        b.stopped = None;
        b.paused = false;
        b.deadline = None;
        b.finished_at = None;
        if b.policy.deadline.is_some() {
            b.policy = Arc::new(BatchPolicy {
                deadline: None,
                ..(*b.policy).clone()
            });
            b.policy_changed = true;
        }
        self.emit(
            id,
            EventKind::Batch {
                from: Some(from),
                to,
            },
        );
        Ok(())
    }

    /// Starts a finished task over for a rerun, waiting for `waiting` rerun
    /// upstream tasks, with a fresh retry budget.
    pub fn restart_task(&mut self, id: TaskId, waiting: u32) {
        let t = self.task_mut(id);
        let from = t.state;
        let to = if waiting > 0 {
            TaskState::Pending
        } else {
            TaskState::Queued
        };
        debug_assert!(from.can_rerun_to(to), "{from} -> {to}");
        t.message = None;
        t.cancel = None;
        t.lost = 0;
        t.first_attempt = t.attempt.next();
        t.deps_left = waiting;
        t.run_at = None;
        t.worker = None;
        t.lease_until = None;
        t.started_at = None;
        self.shift_task(id, to, None);
        if to == TaskState::Queued {
            self.enqueue(id);
        }
    }

    /// Puts a queued task at the back of its batch's queue.
    pub fn enqueue(&mut self, id: TaskId) {
        let batch = self.tasks[&id].batch;
        let Ok(b) = self.batch_mut(batch) else { return };
        let seq = b.next_ready;
        b.next_ready += 1;
        let paused = b.paused;
        self.task_mut(id).ready_seq = Some(seq);
        self.work_ready |= !paused;
    }

    /// Starts an attempt of a queued task for `worker`.
    pub fn start(&mut self, id: TaskId, worker: WorkerId, lease_until: Timestamp) {
        let now = self.now;
        let t = self.task_mut(id);
        t.attempt = t.attempt.next();
        t.worker = Some(worker);
        t.lease_until = Some(lease_until);
        t.started_at = Some(now);
        // `ready_seq` stays: a claim given back unstarted takes its place
        // in the queue again (`release`).
        self.move_task(id, TaskState::Running, None);
    }

    /// Gives back a claim whose attempt never started
    /// (`AttemptOutcome::Released`): the task takes its place in its
    /// batch's queue again, with its attempt number, or ends cancelled if
    /// it was asked to. Returns the state it entered.
    pub async fn release<T: Tx>(&mut self, tx: &mut T, id: TaskId) -> Result<TaskState> {
        let t = &self.tasks[&id];
        if let Some((_, reason)) = t.cancel {
            self.finish(tx, id, TaskState::Cancelled, Some(reason), None, true)
                .await?;
            return Ok(TaskState::Cancelled);
        }
        let (batch, cost, seq) = (t.batch, t.cost, t.ready_seq);
        self.batch_mut(batch)?.running_cost -= cost;
        // The transition belongs to the attempt given back.
        self.move_task(id, TaskState::Queued, None);
        let t = self.task_mut(id);
        t.attempt = Attempt(t.attempt.0 - 1);
        t.worker = None;
        t.lease_until = None;
        t.started_at = None;
        match seq {
            Some(_) => self.work_ready |= !self.batch(batch)?.paused,
            // Claimed by a version that did not keep its place: the back.
            None => self.enqueue(id),
        }
        Ok(TaskState::Queued)
    }

    /// Keeps the log a completion of `id`'s running attempt carried, for
    /// that attempt's row.
    pub fn set_log(&mut self, id: TaskId, log: Option<AttemptLog>) {
        if let Some(log) = log {
            self.logs.insert(id, log);
        }
    }

    fn end_attempt(&mut self, id: TaskId, to: TaskState, reason: Option<Reason>) {
        let log = self.logs.remove(&id).map(StoredLog::of);
        let t = &self.tasks[&id];
        let exit_code = match (&log, reason) {
            (Some(log), _) => log.exit_code,
            (None, Some(Reason::ExitCode(code))) => Some(code),
            (None, _) => None,
        };
        let (so, se, z, ot, et) = match log {
            Some(log) => (
                Some(log.stdout),
                Some(log.stderr),
                log.compressed,
                Some(log.stdout_total),
                Some(log.stderr_total),
            ),
            None => (None, None, false, None, None),
        };
        self.attempts_ended.push(AttemptEnd {
            t: id.0,
            a: t.attempt.0,
            w: t.worker.map(|w| w.0),
            st: t.started_at.map_or(self.now.0, |at| at.0),
            at: self.now.0,
            o: to.as_str(),
            r: reason.map(|r| r.to_string()),
            x: exit_code,
            // The task's message is its last failure's: only a failed
            // attempt's row carries it.
            e: matches!(to, TaskState::Failed | TaskState::RetryWait)
                .then(|| t.message.clone())
                .flatten(),
            so,
            se,
            z,
            ot,
            et,
        });
    }

    /// Moves a running task to `retry_wait`, due at `at`: its slots are free
    /// at once, and the retry counts.
    pub fn retry_later(&mut self, id: TaskId, reason: Reason, at: Timestamp) {
        let (batch, cost) = (self.tasks[&id].batch, self.tasks[&id].cost);
        if let Ok(b) = self.batch_mut(batch) {
            b.running_cost -= cost;
            b.retries += 1;
        }
        self.end_attempt(id, TaskState::RetryWait, Some(reason));
        let t = self.task_mut(id);
        t.run_at = Some(at);
        t.worker = None;
        t.lease_until = None;
        self.move_task(id, TaskState::RetryWait, Some(reason));
        self.work_ready |= at <= self.now;
    }

    /// Ends `seed` in a terminal state (keeping `output` for its
    /// dependents), then releases or skips its dependents transitively when
    /// `cascade`, applies the error policy and finishes batches that are done.
    pub async fn finish<T: Tx>(
        &mut self,
        tx: &mut T,
        seed: TaskId,
        state: TaskState,
        reason: Option<Reason>,
        output: Option<String>,
        cascade: bool,
    ) -> Result<()> {
        let mut output = output;
        let mut frontier = vec![Finish {
            task: seed,
            state,
            reason,
        }];
        let mut touched: Vec<BatchId> = Vec::new();
        while !frontier.is_empty() {
            // Tasks that ended in this round and have dependents: (task, state).
            let mut ended: Vec<(TaskId, TaskState)> = Vec::new();
            for Finish {
                task,
                state,
                reason,
            } in frontier.drain(..)
            {
                let Some(t) = self.tasks.get(&task) else {
                    continue;
                };
                if t.state.is_terminal() {
                    continue;
                }
                let (from, batch, cost, dependents) = (t.state, t.batch, t.cost, t.dependents);
                debug_assert!(from.can_become(state), "{from} -> {state}");
                if from == TaskState::Running {
                    self.end_attempt(task, state, reason);
                    if let Ok(b) = self.batch_mut(batch) {
                        b.running_cost -= cost;
                    }
                }
                let t = self.task_mut(task);
                t.cancel = None;
                t.worker = None;
                t.lease_until = None;
                t.run_at = None;
                t.ready_seq = None;
                self.shift_task(task, state, reason);
                if !touched.contains(&batch) {
                    touched.push(batch);
                }
                if task == seed
                    && let Some(out) = output.take()
                    && dependents > 0
                {
                    self.outputs.push((task, out));
                }
                if cascade && dependents > 0 {
                    ended.push((task, state));
                }
            }
            if ended.is_empty() {
                break;
            }
            let ids: Vec<TaskId> = ended.iter().map(|(t, _)| *t).collect();
            let states: IdMap<TaskId, TaskState> = ended.into_iter().collect();
            let mut links = tx.tasks_dependents(&ids).await?;
            links.sort_unstable_by_key(|(up, dep)| (*up, dep.id));
            for (upstream, row) in links {
                let dep = self.adopt(row);
                let d = &self.tasks[&dep];
                if d.state != TaskState::Pending {
                    continue;
                }
                if states[&upstream] == TaskState::Succeeded || d.rule == DependencyRule::Done {
                    let d = self.task_mut(dep);
                    d.deps_left -= 1;
                    if d.deps_left == 0 {
                        self.move_task(dep, TaskState::Queued, None);
                        self.enqueue(dep);
                    }
                } else {
                    frontier.push(Finish {
                        task: dep,
                        state: TaskState::Skipped,
                        reason: Some(Reason::UpstreamFailed),
                    });
                }
            }
        }
        for batch in touched {
            // After the skips have cascaded, as in the memory store.
            self.apply_error_policy(tx, batch).await?;
            self.finish_batch_if_done(batch);
        }
        Ok(())
    }

    async fn apply_error_policy<T: Tx>(&mut self, tx: &mut T, batch: BatchId) -> Result<()> {
        let b = self.batch(batch)?;
        if b.stopped.is_some() || !b.error_policy.tripped(b.counts.failed, b.counts.finished()) {
            return Ok(());
        }
        let mode = match b.error_policy.on_failure {
            OnFailure::Abort => Some(CancelMode::Forced),
            OnFailure::Stop | OnFailure::Continue => None,
        };
        self.batch_mut(batch)?.failed_by_policy = true;
        Box::pin(self.stop_batch(tx, batch, Reason::BatchStopped, mode)).await
    }

    /// Cancels every waiting task of a batch with `reason`; asks workers to
    /// cancel running ones when `running` is given. Nothing new starts after.
    pub async fn stop_batch<T: Tx>(
        &mut self,
        tx: &mut T,
        batch: BatchId,
        reason: Reason,
        running: Option<CancelMode>,
    ) -> Result<()> {
        self.batch_mut(batch)?.stopped.get_or_insert(reason);
        for row in tx.tasks_live(batch).await? {
            self.adopt(row);
        }
        let mut live: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| t.batch == batch && !t.state.is_terminal())
            .map(|t| t.id)
            .collect();
        live.sort_unstable();
        for id in live {
            let t = &self.tasks[&id];
            match t.state {
                TaskState::Running => {
                    if let Some(mode) = running
                        && escalates(t.cancel, mode)
                    {
                        self.task_mut(id).cancel = Some((mode, reason));
                        self.control_pending = true;
                    }
                }
                // Waiting tasks end here, without passing their fate on:
                // their dependents are waiting too, and end the same way.
                TaskState::Pending | TaskState::Queued | TaskState::RetryWait => {
                    Box::pin(self.finish(tx, id, TaskState::Cancelled, Some(reason), None, false))
                        .await?;
                }
                _ => {}
            }
        }
        self.finish_batch_if_done(batch);
        Ok(())
    }

    pub fn finish_batch_if_done(&mut self, batch: BatchId) {
        let Ok(b) = self.batch(batch) else { return };
        if b.open || b.counts.active() > 0 || b.state.is_terminal() {
            return;
        }
        let to = batch_outcome(
            b.cancelled,
            b.failed_by_policy,
            b.counts.succeeded == b.counts.total(),
        );
        if let Ok(b) = self.batch_mut(batch) {
            b.deadline = None;
        }
        self.set_batch_state(batch, to);
    }

    /// Stops batches whose deadline has passed: waiting tasks end
    /// `cancelled{deadline}`, running ones are asked to stop.
    pub async fn expire<T: Tx>(&mut self, tx: &mut T, batches: &[BatchId]) -> Result<()> {
        for &batch in batches {
            let Ok(b) = self.batch(batch) else { continue };
            if b.state.is_terminal() || b.deadline.is_none_or(|at| at > self.now) {
                continue;
            }
            let b = self.batch_mut(batch)?;
            b.deadline = None;
            b.failed_by_policy = true;
            b.open = false;
            self.stop_batch(tx, batch, Reason::Deadline, Some(CancelMode::Forced))
                .await?;
        }
        Ok(())
    }

    /// Ends running attempts as lost, as if their leases had expired at
    /// `now`: requeued, or failed once the batch's `lost` budget is spent (or
    /// cancelled, if they were being cancelled). Their batches must be
    /// locked; tasks that `why` no longer applies to are left alone.
    pub async fn lose<T: Tx>(&mut self, tx: &mut T, mut ids: Vec<TaskId>, why: Lost) -> Result<()> {
        ids.sort_unstable();
        self.load(tx, &ids).await?;
        let now = self.now;
        for id in ids {
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            let applies = t.state == TaskState::Running
                && match why {
                    Lost::Lease => t.lease_until.is_some_and(|at| at < now),
                    Lost::Worker(worker) => t.worker == Some(worker),
                };
            if !applies {
                continue;
            }
            let t = self.task_mut(id);
            t.lost += 1;
            t.message = Some(why.message().into());
            let (batch, lost, cancel) = (t.batch, t.lost, t.cancel);
            let b = self.batch(batch)?;
            let retry = b.stopped.is_none() && b.policy.retry.should_retry_lost(lost);
            if let Some((_, reason)) = cancel {
                // It was being cancelled when its worker died: that is how it ends.
                self.finish(tx, id, TaskState::Cancelled, Some(reason), None, true)
                    .await?;
            } else if retry {
                self.retry_later(id, Reason::Lost, now);
            } else {
                self.finish(tx, id, TaskState::Failed, Some(Reason::Lost), None, true)
                    .await?;
            }
        }
        Ok(())
    }

    /// Queues again the retries among `due` whose backoff has passed.
    pub async fn promote<T: Tx>(&mut self, tx: &mut T, due: &[TaskId]) -> Result<()> {
        self.load(tx, due).await?;
        let mut due: Vec<TaskId> = due.to_vec();
        // Queue them in the order they became due, as the memory store does.
        due.sort_unstable_by_key(|id| {
            let t = &self.tasks[id];
            (t.run_at, *id)
        });
        for id in due {
            let t = &self.tasks[&id];
            if t.state != TaskState::RetryWait || t.run_at.is_none_or(|at| at > self.now) {
                continue;
            }
            self.task_mut(id).run_at = None;
            self.move_task(id, TaskState::Queued, None);
            self.enqueue(id);
        }
        Ok(())
    }

    /// Writes every changed row so that later reads in the transaction see it.
    pub async fn write_rows<T: Tx>(&mut self, tx: &mut T) -> Result<()> {
        let dirty_tasks = std::mem::take(&mut self.dirty_tasks);
        let read = std::mem::take(&mut self.read);
        let dirty_batches = std::mem::take(&mut self.dirty_batches);
        encode_histograms(&mut self.batches, &dirty_batches);
        let tasks = task_writes(&self.tasks, &read, &self.outputs, &dirty_tasks);
        if !tasks.is_empty() {
            tx.tasks_write(&tasks).await?;
        }
        for id in &dirty_batches {
            tx.batch_write(&self.batches[id]).await?;
        }
        // The outputs too: a dependent claimed later in the transaction
        // reads its upstream's output from the table.
        if !self.outputs.is_empty() {
            tx.outputs_write(&self.outputs).await?;
            self.outputs.clear();
        }
        Ok(())
    }

    /// Writes everything the transaction changed, and its events with their
    /// sequence numbers. The caller commits.
    pub async fn write<T: Tx>(mut self, tx: &mut T) -> Result<Written> {
        let dirty_tasks = std::mem::take(&mut self.dirty_tasks);
        let read = std::mem::take(&mut self.read);
        let dirty_batches = std::mem::take(&mut self.dirty_batches);
        encode_histograms(&mut self.batches, &dirty_batches);
        let set = WriteSet {
            tasks: task_writes(&self.tasks, &read, &self.outputs, &dirty_tasks),
            batches: dirty_batches.iter().map(|id| &self.batches[id]).collect(),
            attempts_ended: &self.attempts_ended,
            outputs: &self.outputs,
            events: EventWrite::group(&self.events),
            event_count: self.events.len(),
            notify_work: self.work_ready,
            notify_control: self.control_pending,
        };
        let first = tx.write_all(set).await?;
        Ok(Written {
            first,
            events: self.events,
            work_ready: self.work_ready,
            control_pending: self.control_pending,
        })
    }
}

/// The rows of the changed tasks, as written back, each with the columns
/// that differ from its row in `read`.
fn task_writes<'a>(
    tasks: &'a IdMap<TaskId, TaskRow>,
    read: &'a IdMap<TaskId, TaskRow>,
    outputs: &'a [(TaskId, String)],
    dirty: &BTreeSet<TaskId>,
) -> Vec<TaskWrite<'a>> {
    let outputs: IdMap<TaskId, &str> = outputs.iter().map(|(t, o)| (*t, o.as_str())).collect();
    dirty
        .iter()
        .map(|id| {
            let now = &tasks[id];
            let mut write = task_write(now, outputs.get(id).copied());
            if let Some(was) = read.get(id) {
                write.changed = TaskWrite::changed_between(now, was);
            }
            write
        })
        .collect()
}

/// `t` as written back, every column marked changed.
fn task_write<'a>(t: &'a TaskRow, output: Option<&'a str>) -> TaskWrite<'a> {
    TaskWrite {
        id: t.id.0,
        s: t.state.as_str(),
        r: t.reason.map(|r| r.to_string()),
        m: t.message.as_deref(),
        a: t.attempt.0,
        fa: t.first_attempt.0,
        l: t.lost,
        w: t.worker.map(|w| w.0),
        lu: t.lease_until.map(|at| at.0),
        st: t.started_at.map(|at| at.0),
        cm: t.cancel.map(|(mode, _)| cancel_mode_str(mode)),
        cr: t.cancel.map(|(_, reason)| reason.to_string()),
        ra: t.run_at.map(|at| at.0),
        rs: t.ready_seq,
        d: t.deps_left,
        changed: TaskWrite::ALL,
        o: output,
        batch: t.batch.0,
        priority: t.priority.0,
        cost: t.cost,
    }
}

/// Encodes the histograms of the changed batches for writing.
fn encode_histograms(batches: &mut BTreeMap<BatchId, BatchRow>, dirty: &BTreeSet<BatchId>) {
    for id in dirty {
        let b = batches.get_mut(id).expect("dirty batches are loaded");
        if let Some(h) = &b.histogram {
            b.durations = Some(h.to_bytes());
        }
    }
}

/// The batch whose head task should start next, if any fits its batch:
/// highest head priority, then fewest cost units running, then served
/// longest ago, then the older batch.
pub(crate) fn best_batch(
    work: &Work,
    heads: &BTreeMap<BatchId, VecDeque<TaskId>>,
) -> Option<(BatchId, TaskId)> {
    type Rank = (Priority, std::cmp::Reverse<u32>, std::cmp::Reverse<i64>);
    let mut best: Option<(BatchId, TaskId, Rank)> = None;
    // Ascending ids: on a tie the older batch keeps its place.
    for (&id, queue) in heads {
        let Some(&head) = queue.front() else { continue };
        let b = &work.batches[&id];
        if b.paused || b.stopped.is_some() {
            continue;
        }
        let t = &work.tasks[&head];
        if b.running_cost + t.cost > b.concurrency {
            continue;
        }
        let rank = (
            t.priority,
            std::cmp::Reverse(b.running_cost),
            std::cmp::Reverse(b.last_served),
        );
        if best.as_ref().is_none_or(|(_, _, r)| rank > *r) {
            best = Some((id, head, rank));
        }
    }
    best.map(|(b, t, _)| (b, t))
}

/// Fences a renewal: which of `running` are this worker's current attempts.
pub(crate) fn owns(t: &TaskRow, fence: Fence, worker: WorkerId) -> bool {
    t.state == TaskState::Running && t.attempt == fence.attempt && t.worker == Some(worker)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation's events become one row per run of one batch's
    /// events, each run at most `EventWrite::RUN` long, numbered by offset.
    #[test]
    fn events_are_grouped_in_runs() {
        let event = |batch: i64| Event {
            seq: 0,
            at: Timestamp(5),
            batch: BatchId(batch),
            kind: EventKind::Batch {
                from: None,
                to: BatchState::Queued,
            },
        };
        let mut events = vec![event(1), event(2), event(2), event(1)];
        events.extend((0..2_500).map(|_| event(3)));
        let rows = EventWrite::group(&events);
        let shape: Vec<(i64, i64, i64)> = rows.iter().map(|r| (r.seq, r.n, r.b)).collect();
        assert_eq!(
            shape,
            [
                (0, 1, 1),
                (1, 2, 2),
                (3, 1, 1),
                (4, 1000, 3),
                (1004, 1000, 3),
                (2004, 500, 3)
            ]
        );
        assert_eq!(rows[1].body, "b - queued\nb - queued");
    }

    fn queued_row(id: i64) -> TaskRow {
        TaskRow {
            id: TaskId(id),
            batch: BatchId(1),
            index: 0,
            key: None,
            priority: Priority(0),
            cost: 1,
            state: TaskState::Queued,
            reason: None,
            message: None,
            attempt: Attempt(0),
            first_attempt: Attempt(1),
            lost: 0,
            worker: None,
            lease_until: None,
            started_at: None,
            cancel: None,
            run_at: None,
            ready_seq: Some(7),
            deps_left: 0,
            rule: DependencyRule::Success,
            dependents: 0,
            upstream: 0,
        }
    }

    /// A write marks exactly the columns that differ from the row as read,
    /// and a task dirtied twice is compared with the row as read, not with
    /// its first change; only a dialect that writes changed columns keeps
    /// the rows as read.
    #[test]
    fn task_writes_mark_what_changed() {
        let dirtied = |mut work: Work| {
            work.adopt(queued_row(1));
            work.adopt(queued_row(2));
            work.start(TaskId(1), WorkerId(3), Timestamp(200));
            work.task_mut(TaskId(1)).message = Some("again".into());
            work
        };
        // PostgreSQL writes task rows whole: nothing is kept to compare.
        let work = dirtied(Work::new::<crate::postgres::PgTx>(Timestamp(100)));
        assert!(work.read.is_empty());
        let mut work = dirtied(Work::new::<crate::sqlite::SqliteTx>(Timestamp(100)));
        let dirty = std::mem::take(&mut work.dirty_tasks);
        let read = std::mem::take(&mut work.read);
        let writes = task_writes(&work.tasks, &read, &[], &dirty);
        assert_eq!(writes.len(), 1, "an untouched task is not written");
        let changed: Vec<&str> = TaskWrite::COLUMNS
            .iter()
            .enumerate()
            .filter(|(i, _)| writes[0].changed & 1 << i != 0)
            .map(|(_, c)| *c)
            .collect();
        assert_eq!(
            changed,
            [
                "state",
                "message",
                "attempt",
                "worker_id",
                "lease_until",
                "started_at"
            ]
        );
        // A row never read is written whole.
        let unread = IdMap::default();
        let writes = task_writes(&work.tasks, &unread, &[], &dirty);
        assert_eq!(writes[0].changed, TaskWrite::ALL);
    }
}
