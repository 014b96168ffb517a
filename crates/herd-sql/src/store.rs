//! [`SqlStore`]: the [`Store`] contract over a SQL dialect.

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use herd_core::model::{
    BatchId, BatchSpec, BatchState, BatchStats, Event, FinishedTask, StateCounts, SubmitError,
    TaskId, TaskSpec, TaskState, Timestamp, WorkerId, rerun_selection,
};
use herd_core::store::{
    Appended, Applied, AttemptInfo, AttemptOutcome, BatchInfo, BatchQuery, CancelMode,
    CancelRequest, Claim, ClaimRequest, ClaimedTask, Completion, EventQuery, Events, Inserted,
    Renewal, Rerun, Signals, Stale, Store, StoreError, TaskInfo, TaskQuery, TaskRecord, Upstream,
    WorkerInfo,
};
use herd_core::util::IdMap;

use crate::history::History;
use crate::logic::{
    BatchRow, ClaimOpen, ClaimScan, Heads, Lost, NewBatch, NewDep, NewTask, Result, TaskRow, Tx,
    Work, Written, backend, best_batch, escalates, owns, rule_str,
};
use crate::rows::ListedTask;

/// Tasks of a submit encoded and sent at a time, so that the rows of a
/// large batch are not all held at once: heaptrack put 2.6 MB of rows and
/// encoded payloads in the submit of 10,000 `herd run` items, half of its
/// peak heap, and `store_drain sqlite submit` (100,000 tasks) peaked at
/// 48.7 MB of RSS with every row held, 26.0 MB in chunks, the submit no
/// slower. A multiple of SQLite's rows per statement (250), so that every
/// statement but the last is full; on PostgreSQL, one statement a chunk.
const INSERT_CHUNK: usize = 4_000;

/// Capacity of the in-process event broadcast, in operations.
const EVENT_CAPACITY: usize = 4096;

/// One SQL database's side of the store: its transactions and its reads.
pub(crate) trait Dialect: Send + Sync + 'static {
    /// A write transaction.
    type Tx: Tx;

    /// Starts a write transaction.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx>> + Send;
    /// Commits it. Returns the first event's `seq` when the transaction's
    /// [`Tx::write_all`] left it to the commit.
    fn commit(tx: Self::Tx) -> impl Future<Output = Result<Option<u64>>> + Send;
    fn worker_insert(
        &self,
        host: &str,
        pid: u32,
        now: Timestamp,
    ) -> impl Future<Output = Result<WorkerId>> + Send;
    /// A batch row, read without a lock.
    fn batch_read(&self, id: BatchId) -> impl Future<Output = Result<Option<BatchRow>>> + Send;
    /// A task row, read without a lock.
    fn task_read(&self, id: TaskId) -> impl Future<Output = Result<Option<TaskRow>>> + Send;
    /// Records `now` as a worker's last heartbeat, in a transaction of its own.
    fn worker_heartbeat(
        &self,
        worker: WorkerId,
        now: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A page of batches ([`crate::statements::batch_list`]).
    fn batch_list(&self, query: &BatchQuery) -> impl Future<Output = Result<Vec<BatchRow>>> + Send;
    /// A page of a batch's tasks ([`crate::statements::task_list`]).
    fn task_list(
        &self,
        batch: BatchId,
        query: &TaskQuery,
    ) -> impl Future<Output = Result<Vec<ListedTask>>> + Send;
    /// A task's ended attempts, in order, logs included.
    fn task_attempts(&self, task: TaskId) -> impl Future<Output = Result<Vec<AttemptInfo>>> + Send;
    fn worker_list(&self) -> impl Future<Output = Result<Vec<WorkerInfo>>> + Send;
}

/// A [`Store`] in a SQL database: SQLite ([`crate::SqliteStore`]) or
/// PostgreSQL ([`crate::PgStore`]).
///
/// `P` is the task payload and `O` the output kept for dependents; both are
/// stored as JSON. Everything is kept, finished tasks included.
pub struct SqlStore<D, P, O> {
    pub(crate) dialect: D,
    signals: Arc<Signals>,
    events: broadcast::Sender<Events>,
    /// Held from before a commit until its events are published, so that
    /// subscribers in this process see operations in `seq` order.
    publish: tokio::sync::Mutex<()>,
    _types: PhantomData<fn() -> (P, O)>,
}

impl<D, P, O> std::fmt::Debug for SqlStore<D, P, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore").finish_non_exhaustive()
    }
}

// Crate-private helpers: `Dialect` is sealed on purpose.
#[allow(private_bounds)]
impl<D: Dialect, P, O> SqlStore<D, P, O> {
    pub(crate) fn with_dialect(dialect: D, signals: Arc<Signals>) -> Self {
        SqlStore {
            dialect,
            signals,
            events: broadcast::channel(EVENT_CAPACITY).0,
            publish: tokio::sync::Mutex::new(()),
            _types: PhantomData,
        }
    }

    /// Commits, then publishes the events in `seq` order and wakes workers.
    /// The events are published and returned as two operations' (as two
    /// calls in sequence would have), split before the `split`-th.
    async fn commit(&self, tx: D::Tx, written: Written, split: usize) -> Result<(Events, Events)> {
        let Written {
            mut events,
            first,
            work_ready,
            control_pending,
        } = written;
        let (first, second) = {
            let _order = self.publish.lock().await;
            let first = match (D::commit(tx).await?, first) {
                (_, Some(first)) | (Some(first), None) => first,
                (None, None) => 0,
            };
            for (i, e) in events.iter_mut().enumerate() {
                e.seq = first + i as u64;
            }
            let second = Arc::new(events.split_off(split.min(events.len())));
            let first = Arc::new(events);
            for events in [&first, &second] {
                if !events.is_empty() && self.events.receiver_count() > 0 {
                    let _ = self.events.send(events.clone());
                }
            }
            (first, second)
        };
        if work_ready {
            self.signals.work.notify_waiters();
        }
        if control_pending {
            self.signals.control.notify_waiters();
        }
        Ok((first, second))
    }

    async fn finish_op(&self, tx: D::Tx, work: Work) -> Result<Events> {
        let split = work.event_count();
        Ok(self.finish_split(tx, work, split).await?.0)
    }

    /// Writes back and commits; the events as two operations', split before
    /// the `split`-th.
    async fn finish_split(
        &self,
        mut tx: D::Tx,
        work: Work,
        split: usize,
    ) -> Result<(Events, Events)> {
        let written = work.write(&mut tx).await?;
        self.commit(tx, written, split).await
    }
}

fn encode<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(backend)
}

fn decode<T: DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(backend)
}

fn info(b: &BatchRow) -> BatchInfo {
    BatchInfo {
        id: b.id,
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

/// A task row as the contract shows it: its worker and start while it runs.
fn task_info(t: TaskRow) -> TaskInfo {
    let running = t.state == TaskState::Running;
    TaskInfo {
        id: t.id,
        batch: t.batch,
        index: t.index,
        key: t.key,
        state: t.state,
        reason: t.reason,
        attempt: t.attempt,
        lost: t.lost,
        priority: t.priority,
        cost: t.cost,
        message: t.message,
        worker: t.worker.filter(|_| running),
        started_at: t.started_at.filter(|_| running),
    }
}

/// What a claim asks of [`Tx::open`].
fn claim_open(request: &ClaimRequest, now: Timestamp) -> ClaimOpen {
    ClaimOpen {
        now,
        only: request.batch,
        limit: request.max_tasks,
    }
}

fn check_appended<P>(tasks: &[TaskSpec<P>], limit: u32) -> Result<()> {
    for task in tasks {
        if !task.after.is_empty() {
            return Err(SubmitError::AfterInOpenBatch.into());
        }
        if task.cost == 0 || task.cost > limit {
            return Err(SubmitError::Invalid(herd_core::model::InvalidField::new(
                "cost",
                task.cost,
                format!("must be between 1 and the concurrency ({limit})"),
            ))
            .into());
        }
    }
    Ok(())
}

#[allow(private_bounds)]
impl<D, P, O> SqlStore<D, P, O>
where
    D: Dialect,
    P: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    O: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Ends the running attempts `running` (task, batch) as lost, in `tx`.
    async fn lose(
        &self,
        mut tx: D::Tx,
        running: Vec<(TaskId, BatchId)>,
        why: Lost,
        now: Timestamp,
    ) -> Result<Events> {
        if running.is_empty() {
            return Ok(Arc::new(Vec::new()));
        }
        let mut work = Work::new::<D::Tx>(now);
        let batches: Vec<BatchId> = running.iter().map(|(_, b)| *b).collect();
        work.lock(&mut tx, &batches).await?;
        let ids: Vec<TaskId> = running.into_iter().map(|(t, _)| t).collect();
        work.lose(&mut tx, ids, why).await?;
        self.finish_op(tx, work).await
    }

    /// Applies completions to the loaded tasks: the body of `task_complete`.
    async fn complete_in(
        &self,
        tx: &mut D::Tx,
        work: &mut Work,
        completions: Vec<Completion<O>>,
    ) -> Result<Vec<std::result::Result<TaskState, Stale>>> {
        let mut results = Vec::with_capacity(completions.len());
        for c in completions {
            let fence = c.fence;
            let current = work
                .tasks
                .get(&fence.task)
                .is_some_and(|t| t.state == TaskState::Running && t.attempt == fence.attempt);
            if !current {
                results.push(Err(Stale(fence)));
                continue;
            }
            if matches!(c.outcome, AttemptOutcome::Released) {
                results.push(Ok(work.release(tx, fence.task).await?));
                continue;
            }
            let (batch, dependents) = {
                // The attempt started at the worker `duration` ago, maybe
                // well after its claim (a task held ready to start).
                let started = work.now.minus(c.duration);
                let t = work.task_mut(fence.task);
                t.started_at = t.started_at.map(|at| at.max(started));
                (t.batch, t.dependents)
            };
            work.set_log(fence.task, c.log);
            let b = work.batch_mut(batch)?;
            b.histogram().record(c.duration);
            let stopped = b.stopped.is_some();
            let entered = match c.outcome {
                AttemptOutcome::Succeeded { output } => {
                    let output = match output {
                        Some(out) if dependents > 0 => Some(encode(&out)?),
                        _ => None,
                    };
                    work.finish(tx, fence.task, TaskState::Succeeded, None, output, true)
                        .await?;
                    TaskState::Succeeded
                }
                AttemptOutcome::Failed {
                    reason,
                    message,
                    retry_at: Some(at),
                } if !stopped => {
                    work.task_mut(fence.task).message = message;
                    work.retry_later(fence.task, reason, at);
                    TaskState::RetryWait
                }
                AttemptOutcome::Failed {
                    reason, message, ..
                } => {
                    work.task_mut(fence.task).message = message;
                    work.finish(tx, fence.task, TaskState::Failed, Some(reason), None, true)
                        .await?;
                    TaskState::Failed
                }
                AttemptOutcome::Cancelled { reason } => {
                    work.finish(
                        tx,
                        fence.task,
                        TaskState::Cancelled,
                        Some(reason),
                        None,
                        true,
                    )
                    .await?;
                    TaskState::Cancelled
                }
                AttemptOutcome::Released => unreachable!("handled above"),
            };
            results.push(Ok(entered));
        }
        Ok(results)
    }

    /// Claims, with the claim's batches locked and loaded: the body of
    /// `task_claim`. `heads` are the claim's reads if the dialect read
    /// them ahead; they are used if they still hold for the transitions
    /// recorded since the `since`-th (what the transaction did before the
    /// claim), and if the claim itself enforces no deadline and queues no
    /// retry. Returns the claim without its events.
    async fn claim_in(
        &self,
        tx: &mut D::Tx,
        work: &mut Work,
        request: ClaimRequest,
        scan: ClaimScan,
        heads: Option<Heads>,
        since: usize,
    ) -> Result<Claim<P, O>> {
        let now = work.now;
        let ClaimScan {
            due, past_deadline, ..
        } = scan;
        // The reads below see the database as the transaction opened it,
        // unless something before changed what they read.
        let hold = due.is_empty() && past_deadline.is_empty() && work.claim_reads_hold(since);
        // Nothing starts past its batch's deadline, even if no one expired it yet.
        work.expire(tx, &past_deadline).await?;
        let due: Vec<TaskId> = due.into_iter().map(|(t, _)| t).collect();
        work.promote(tx, &due).await?;
        // Due retries and deadlines are everyone's to apply, as in the
        // memory store; only the batch to take tasks from is limited.
        let only = request.batch;
        let candidates: Vec<BatchId> = work
            .batches
            .values()
            .filter(|b| {
                only.is_none_or(|only| b.id == only)
                    && !b.paused
                    && b.stopped.is_none()
                    && b.counts.queued > 0
                    && b.running_cost < b.concurrency
            })
            .map(|b| b.id)
            .collect();
        let Heads {
            heads: rows,
            served,
            due: next_due,
        } = match heads.filter(|_| hold) {
            Some(heads) => heads,
            None => {
                if !hold {
                    // Rows written, so that the reads see them.
                    work.write_rows(tx).await?;
                }
                tx.claim_heads(&candidates, request.max_tasks).await?
            }
        };
        let mut heads: BTreeMap<BatchId, VecDeque<TaskId>> = BTreeMap::new();
        let mut payloads: IdMap<TaskId, String> = IdMap::default();
        if request.max_tasks > 0 {
            for (row, payload) in rows {
                let batch = row.batch;
                if !candidates.contains(&batch) {
                    continue;
                }
                let id = work.adopt(row);
                heads.entry(batch).or_default().push_back(id);
                payloads.insert(id, payload);
            }
        }
        let mut tick = served;
        let mut capacity = request.capacity;
        let lease_until = now.plus(request.lease);
        let mut blocked_by = None;
        let mut claimed: Vec<TaskId> = Vec::new();
        while claimed.len() < request.max_tasks {
            let Some((batch, head)) = best_batch(work, &heads) else {
                break;
            };
            let cost = work.tasks[&head].cost;
            if cost > capacity {
                // Strict order: a smaller task behind it must not jump ahead.
                blocked_by = Some(cost);
                break;
            }
            capacity -= cost;
            heads.get_mut(&batch).expect("listed").pop_front();
            tick += 1;
            let b = work.batch_mut(batch)?;
            b.running_cost += cost;
            b.last_served = tick;
            if b.started_at.is_none() {
                b.started_at = Some(now);
                if b.state == BatchState::Queued {
                    work.set_batch_state(batch, BatchState::Running);
                }
            }
            work.start(head, request.worker, lease_until);
            claimed.push(head);
        }
        let mut tasks = Vec::with_capacity(claimed.len());
        if !claimed.is_empty() {
            let mut upstream: BTreeMap<TaskId, Vec<Upstream<O>>> = BTreeMap::new();
            let waiting: Vec<TaskId> = claimed
                .iter()
                .copied()
                .filter(|id| work.tasks[id].upstream > 0)
                .collect();
            let rows = match waiting.is_empty() {
                true => Vec::new(),
                false => tx.upstream(&waiting).await?,
            };
            for u in rows {
                let output = u.output.as_deref().map(decode).transpose()?;
                upstream.entry(u.dependent).or_default().push(Upstream {
                    task: u.task,
                    key: u.key,
                    state: u.state,
                    output,
                });
            }
            for id in &claimed {
                let t = &work.tasks[id];
                let payload = payloads.remove(id).ok_or(StoreError::UnknownTask(*id))?;
                tasks.push(ClaimedTask {
                    id: *id,
                    batch: t.batch,
                    index: t.index,
                    key: t.key.clone(),
                    attempt: t.attempt,
                    first_attempt: t.first_attempt,
                    lost: t.lost,
                    cost: t.cost,
                    priority: t.priority,
                    payload: decode(&payload)?,
                    upstream: upstream.remove(id).unwrap_or_default(),
                    has_dependents: t.dependents > 0,
                    policy: work.batches[&t.batch].policy.clone(),
                    lease_until,
                });
            }
        }
        // The claimant takes the ready work; no one else need look.
        work.work_ready = false;
        Ok(Claim {
            tasks,
            next_due,
            blocked_by,
            events: Arc::new(Vec::new()),
        })
    }

    /// Inserts tasks into a locked batch: ids, rows, dependencies, counters, events.
    async fn insert_tasks(
        &self,
        tx: &mut D::Tx,
        work: &mut Work,
        batch: BatchId,
        tasks: Vec<TaskSpec<P>>,
        upstream: Vec<Vec<u32>>,
    ) -> Result<Vec<TaskId>> {
        let ids = tx.task_ids(tasks.len()).await?;
        let mut dependents = vec![0u32; tasks.len()];
        for ups in &upstream {
            for &u in ups {
                dependents[u as usize] += 1;
            }
        }
        let b = work.batch_mut(batch)?;
        let (default_priority, paused) = (b.priority, b.paused);
        let mut rows = Vec::with_capacity(tasks.len().min(INSERT_CHUNK));
        let mut deps = Vec::new();
        let mut created = Vec::with_capacity(tasks.len());
        let last = tasks.len().saturating_sub(1);
        for (i, spec) in tasks.into_iter().enumerate() {
            let ups = upstream.get(i).map_or(&[][..], Vec::as_slice);
            let state = if ups.is_empty() {
                TaskState::Queued
            } else {
                TaskState::Pending
            };
            let b = work.batch_mut(batch)?;
            let index = b.next_index;
            b.next_index += 1;
            b.counts.shift(None, state);
            let ready_seq = (state == TaskState::Queued).then(|| {
                b.next_ready += 1;
                b.next_ready - 1
            });
            for (position, &u) in ups.iter().enumerate() {
                deps.push(NewDep {
                    task: ids[i],
                    upstream: ids[u as usize],
                    position: position as u32,
                });
            }
            rows.push(NewTask {
                id: ids[i],
                index,
                key: spec.key,
                priority: spec.priority.unwrap_or(default_priority).0,
                cost: spec.cost,
                payload: encode(&spec.payload)?,
                state: state.as_str(),
                ready_seq,
                deps_left: ups.len() as u32,
                rule: rule_str(spec.rule),
                dependents: dependents[i],
                upstream: ups.len() as u32,
            });
            created.push((TaskId(ids[i]), index, state));
            if rows.len() == INSERT_CHUNK || i == last {
                tx.tasks_insert(batch, &rows).await?;
                rows.clear();
            }
        }
        if !deps.is_empty() {
            tx.deps_insert(&deps).await?;
        }
        work.reserve_events(created.len());
        for &(task, index, state) in &created {
            work.emit_created(batch, task, index, state);
        }
        work.work_ready |= !paused && created.iter().any(|c| c.2 == TaskState::Queued);
        Ok(created.into_iter().map(|c| c.0).collect())
    }
}

#[allow(private_bounds)]
impl<D, P, O> Store for SqlStore<D, P, O>
where
    D: Dialect,
    SqlStore<D, P, O>: History,
    P: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    O: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Payload = P;
    type Output = O;

    async fn worker_register(&self, host: &str, pid: u32, now: Timestamp) -> Result<WorkerId> {
        self.dialect.worker_insert(host, pid, now).await
    }

    async fn batch_insert(&self, mut spec: BatchSpec<P>, now: Timestamp) -> Result<Inserted> {
        let mut tx = self.dialect.begin().await?;
        if let Some(key) = &spec.idempotency_key
            && let Some(existing) = tx.batch_by_key(key).await?
        {
            let row = tx
                .batches_lock(&[existing])
                .await?
                .pop()
                .ok_or(StoreError::UnknownBatch(existing))?;
            return Ok(Inserted {
                batch: existing,
                tasks: Vec::new(),
                existing: true,
                events: Arc::new(Vec::new()),
                info: info(&row),
            });
        }
        // Before anything is written: a rejected batch leaves no trace (and
        // the transaction is rolled back when dropped).
        let upstream = spec.validate(None)?;
        let state = if spec.paused {
            BatchState::Paused
        } else {
            BatchState::Queued
        };
        let row = tx
            .batch_insert(NewBatch {
                name: spec.name.as_deref(),
                idempotency_key: spec.idempotency_key.as_deref(),
                state,
                priority: spec.priority,
                concurrency: spec.concurrency,
                policy: &spec.policy,
                error_policy: &spec.error_policy,
                open: spec.open,
                paused: spec.paused,
                created_at: now,
            })
            .await?;
        let mut work = Work::new::<D::Tx>(now);
        let batch = work.adopt_batch(row);
        work.emit_batch_created(batch, state);
        let tasks = std::mem::take(&mut spec.tasks);
        let ids = self
            .insert_tasks(&mut tx, &mut work, batch, tasks, upstream)
            .await?;
        work.finish_batch_if_done(batch);
        let info = info(work.batch(batch)?);
        let events = self.finish_op(tx, work).await?;
        Ok(Inserted {
            batch,
            tasks: ids,
            existing: false,
            events,
            info,
        })
    }

    async fn task_append(
        &self,
        batch: BatchId,
        tasks: Vec<TaskSpec<P>>,
        now: Timestamp,
    ) -> Result<Appended> {
        let mut tx = self.dialect.begin().await?;
        let mut work = Work::new::<D::Tx>(now);
        work.lock(&mut tx, &[batch]).await?;
        let b = work.batch(batch)?;
        if b.stopped.is_some() {
            return Ok(Appended {
                first_index: b.next_index,
                stopped: true,
                events: Arc::new(Vec::new()),
            });
        }
        if !b.open {
            return Err(StoreError::Sealed(batch));
        }
        check_appended(&tasks, b.concurrency)?;
        let first_index = b.next_index;
        self.insert_tasks(&mut tx, &mut work, batch, tasks, Vec::new())
            .await?;
        let events = self.finish_op(tx, work).await?;
        Ok(Appended {
            first_index,
            stopped: false,
            events,
        })
    }

    async fn batch_seal(&self, batch: BatchId, now: Timestamp) -> Result<Events> {
        let mut tx = self.dialect.begin().await?;
        let mut work = Work::new::<D::Tx>(now);
        work.lock(&mut tx, &[batch]).await?;
        work.batch_mut(batch)?.open = false;
        work.finish_batch_if_done(batch);
        self.finish_op(tx, work).await
    }

    async fn task_claim(&self, request: ClaimRequest, now: Timestamp) -> Result<Claim<P, O>> {
        let mut tx = self.dialect.begin().await?;
        let mut work = Work::new::<D::Tx>(now);
        let (scan, heads) = work
            .open(&mut tx, Some(claim_open(&request, now)), &[])
            .await?;
        let mut claim = self
            .claim_in(
                &mut tx,
                &mut work,
                request,
                scan.unwrap_or_default(),
                heads,
                0,
            )
            .await?;
        claim.events = self.finish_op(tx, work).await?;
        Ok(claim)
    }

    async fn lease_renew(
        &self,
        worker: WorkerId,
        running: Vec<herd_core::store::Fence>,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<Renewal> {
        let mut renewal = Renewal::default();
        if running.is_empty() {
            self.dialect.worker_heartbeat(worker, now).await?;
            return Ok(renewal);
        }
        let mut tx = self.dialect.begin().await?;
        let mut work = Work::new::<D::Tx>(now);
        let ids: Vec<TaskId> = running.iter().map(|f| f.task).collect();
        work.open(&mut tx, None, &ids).await?;
        tx.worker_heartbeat(worker, now).await?;
        for fence in running {
            match work.tasks.get(&fence.task) {
                Some(t) if owns(t, fence, worker) => {
                    if let Some((mode, reason)) = t.cancel {
                        renewal.cancel.push(CancelRequest {
                            fence,
                            mode,
                            reason,
                        });
                    }
                    work.task_mut(fence.task).lease_until = Some(lease_until);
                }
                _ => renewal.lost.push(fence),
            }
        }
        self.finish_op(tx, work).await?;
        Ok(renewal)
    }

    async fn task_complete(
        &self,
        _worker: WorkerId,
        completions: Vec<Completion<O>>,
        now: Timestamp,
    ) -> Result<Applied> {
        let mut tx = self.dialect.begin().await?;
        let mut work = Work::new::<D::Tx>(now);
        let ids: Vec<TaskId> = completions.iter().map(|c| c.fence.task).collect();
        work.open(&mut tx, None, &ids).await?;
        let results = self.complete_in(&mut tx, &mut work, completions).await?;
        let events = self.finish_op(tx, work).await?;
        Ok(Applied { results, events })
    }

    async fn task_complete_and_claim(
        &self,
        _worker: WorkerId,
        completions: Vec<Completion<O>>,
        request: ClaimRequest,
        now: Timestamp,
    ) -> std::result::Result<(Applied, Result<Claim<P, O>>), StoreError> {
        let mut tx = self.dialect.begin().await?;
        let mut work = Work::new::<D::Tx>(now);
        let ids: Vec<TaskId> = completions.iter().map(|c| c.fence.task).collect();
        // Every batch either step touches, locked at once in id order: the
        // claim's scan comes before the completions, and finds what they
        // change (slots freed, tasks released or retried) in the rows loaded.
        let (scan, heads) = work
            .open(&mut tx, Some(claim_open(&request, now)), &ids)
            .await?;
        let results = self.complete_in(&mut tx, &mut work, completions).await?;
        let split = work.event_count();
        let mut scan = scan.unwrap_or_default();
        // Retries the completions made due at once are due for the claim,
        // as they would be for a claim of its own.
        for (id, result) in ids.iter().zip(&results) {
            if let Ok(TaskState::RetryWait) = result
                && let Some(t) = work.tasks.get(id)
                && t.state == TaskState::RetryWait
                && t.run_at.is_some_and(|at| at <= now)
                && !scan.due.iter().any(|(due, _)| due == id)
            {
                scan.due.push((*id, t.batch));
            }
        }
        // The heads read ahead hold only if the completions changed none
        // of what they read: every transition since the transaction began.
        let mut claim = self
            .claim_in(&mut tx, &mut work, request, scan, heads, 0)
            .await?;
        let (completed, claimed) = self.finish_split(tx, work, split).await?;
        claim.events = claimed;
        Ok((
            Applied {
                results,
                events: completed,
            },
            Ok(claim),
        ))
    }

    async fn task_cancel(&self, task: TaskId, mode: CancelMode, now: Timestamp) -> Result<Events> {
        let mut tx = self.dialect.begin().await?;
        let mut work = Work::new::<D::Tx>(now);
        work.open(&mut tx, None, &[task]).await?;
        let t = work.tasks.get(&task).ok_or(StoreError::UnknownTask(task))?;
        match t.state {
            TaskState::Running if escalates(t.cancel, mode) => {
                let reason = t
                    .cancel
                    .map_or(herd_core::model::Reason::ByUser, |(_, r)| r);
                work.task_mut(task).cancel = Some((mode, reason));
                work.control_pending = true;
            }
            TaskState::Pending | TaskState::Queued | TaskState::RetryWait => {
                work.finish(
                    &mut tx,
                    task,
                    TaskState::Cancelled,
                    Some(herd_core::model::Reason::ByUser),
                    None,
                    true,
                )
                .await?;
            }
            _ => {}
        }
        self.finish_op(tx, work).await
    }

    async fn batch_cancel(
        &self,
        batch: BatchId,
        mode: CancelMode,
        now: Timestamp,
    ) -> Result<Events> {
        let mut tx = self.dialect.begin().await?;
        let mut work = Work::new::<D::Tx>(now);
        work.lock(&mut tx, &[batch]).await?;
        if !work.batch(batch)?.state.is_terminal() {
            let b = work.batch_mut(batch)?;
            b.cancelled = true;
            b.open = false;
            work.stop_batch(&mut tx, batch, herd_core::model::Reason::ByUser, Some(mode))
                .await?;
        }
        self.finish_op(tx, work).await
    }

    async fn batch_pause(&self, batch: BatchId, now: Timestamp) -> Result<Events> {
        let mut tx = self.dialect.begin().await?;
        let mut work = Work::new::<D::Tx>(now);
        work.lock(&mut tx, &[batch]).await?;
        if !work.batch(batch)?.state.is_terminal() {
            work.batch_mut(batch)?.paused = true;
            work.set_batch_state(batch, BatchState::Paused);
        }
        self.finish_op(tx, work).await
    }

    async fn batch_resume(&self, batch: BatchId, now: Timestamp) -> Result<Events> {
        let mut tx = self.dialect.begin().await?;
        let mut work = Work::new::<D::Tx>(now);
        work.lock(&mut tx, &[batch]).await?;
        let b = work.batch(batch)?;
        if b.paused && !b.state.is_terminal() {
            let to = if b.started_at.is_some() {
                BatchState::Running
            } else {
                BatchState::Queued
            };
            let queued = b.counts.queued > 0;
            work.batch_mut(batch)?.paused = false;
            work.work_ready |= queued;
            work.set_batch_state(batch, to);
        }
        self.finish_op(tx, work).await
    }

    async fn batch_rerun(&self, batch: BatchId, downstream: bool, now: Timestamp) -> Result<Rerun> {
        let mut tx = self.dialect.begin().await?;
        let mut work = Work::new::<D::Tx>(now);
        work.lock(&mut tx, &[batch]).await?;
        if !work.batch(batch)?.state.is_terminal() {
            return Err(StoreError::Unfinished(batch));
        }
        let rows = tx.tasks_of_batch(batch).await?;
        let position: IdMap<TaskId, usize> =
            rows.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        let mut upstream: Vec<Vec<usize>> = vec![Vec::new(); rows.len()];
        for (task, up) in tx.deps_of_batch(batch).await? {
            if let (Some(&t), Some(&u)) = (position.get(&task), position.get(&up)) {
                upstream[t].push(u);
            }
        }
        let finished: Vec<FinishedTask> = rows
            .iter()
            .zip(&upstream)
            .map(|(t, ups)| FinishedTask {
                state: t.state,
                reason: t.reason,
                rule: t.rule,
                upstream: ups.clone(),
            })
            .collect();
        let selected = rerun_selection(&finished, downstream);
        if !selected.contains(&true) {
            return Ok(Rerun {
                tasks: Vec::new(),
                events: Arc::new(Vec::new()),
            });
        }
        work.reopen_batch(batch)?;
        let mut chosen = Vec::new();
        for ((row, ups), chosen_here) in rows.into_iter().zip(&upstream).zip(&selected) {
            if !chosen_here {
                continue;
            }
            let waiting = ups.iter().filter(|&&u| selected[u]).count() as u32;
            let id = work.adopt(row);
            work.restart_task(id, waiting);
            chosen.push(id);
        }
        let events = self.finish_op(tx, work).await?;
        Ok(Rerun {
            tasks: chosen,
            events,
        })
    }

    async fn task_rescue(&self, now: Timestamp) -> Result<Events> {
        let mut tx = self.dialect.begin().await?;
        let expired = tx.tasks_lease_expired(now).await?;
        self.lose(tx, expired, Lost::Lease, now).await
    }

    async fn worker_expire(&self, worker: WorkerId, now: Timestamp) -> Result<Events> {
        let mut tx = self.dialect.begin().await?;
        let running = tx.tasks_of_worker(worker).await?;
        self.lose(tx, running, Lost::Worker(worker), now).await
    }

    async fn batch_expire(&self, now: Timestamp) -> Result<Events> {
        let mut tx = self.dialect.begin().await?;
        let due = tx.batches_past_deadline(now).await?;
        if due.is_empty() {
            return Ok(Arc::new(Vec::new()));
        }
        let mut work = Work::new::<D::Tx>(now);
        work.lock(&mut tx, &due).await?;
        work.expire(&mut tx, &due).await?;
        self.finish_op(tx, work).await
    }

    async fn batch_get(&self, batch: BatchId) -> Result<BatchInfo> {
        let b = self
            .dialect
            .batch_read(batch)
            .await?
            .ok_or(StoreError::UnknownBatch(batch))?;
        Ok(info(&b))
    }

    async fn batch_stats(&self, batch: BatchId, now: Timestamp) -> Result<BatchStats> {
        let mut b = self
            .dialect
            .batch_read(batch)
            .await?
            .ok_or(StoreError::UnknownBatch(batch))?;
        let wall = match b.started_at {
            Some(start) => b.finished_at.unwrap_or(now).since(start),
            None => std::time::Duration::ZERO,
        };
        let counts: StateCounts = b.counts;
        let finished = counts.finished();
        let retries = b.retries;
        let durations = b.histogram();
        Ok(BatchStats {
            counts,
            retries,
            p50: durations.quantile(0.50),
            p95: durations.quantile(0.95),
            p99: durations.quantile(0.99),
            throughput: if wall.is_zero() {
                0.0
            } else {
                finished as f64 / wall.as_secs_f64()
            },
            wall,
        })
    }

    async fn task_get(&self, task: TaskId) -> Result<TaskInfo> {
        let t = self
            .dialect
            .task_read(task)
            .await?
            .ok_or(StoreError::UnknownTask(task))?;
        Ok(task_info(t))
    }

    async fn batch_list(&self, query: BatchQuery) -> Result<Vec<BatchInfo>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self.dialect.batch_list(&query).await?;
        Ok(rows.iter().map(info).collect())
    }

    async fn task_list(&self, batch: BatchId, query: TaskQuery) -> Result<Vec<TaskRecord<P, O>>> {
        let rows = match query.limit {
            0 => Vec::new(),
            _ => self.dialect.task_list(batch, &query).await?,
        };
        // An empty page: of a batch with no more tasks, or of no batch.
        if rows.is_empty() && self.dialect.batch_read(batch).await?.is_none() {
            return Err(StoreError::UnknownBatch(batch));
        }
        rows.into_iter()
            .map(|t| {
                Ok(TaskRecord {
                    payload: decode(&t.payload)?,
                    output: t.output.as_deref().map(decode).transpose()?,
                    last_attempt: t.last_attempt,
                    info: task_info(t.row),
                })
            })
            .collect()
    }

    async fn task_attempts(&self, task: TaskId) -> Result<Vec<AttemptInfo>> {
        // The task first: an attempt that ends between the two reads is then
        // listed ended, not missed.
        let t = self
            .dialect
            .task_read(task)
            .await?
            .ok_or(StoreError::UnknownTask(task))?;
        let mut attempts = self.dialect.task_attempts(task).await?;
        if t.state == TaskState::Running && attempts.last().is_none_or(|a| a.attempt < t.attempt) {
            attempts.push(AttemptInfo {
                attempt: t.attempt,
                worker: t.worker,
                started_at: t.started_at.unwrap_or(Timestamp::EPOCH),
                finished_at: None,
                state: None,
                reason: None,
                message: None,
                log: None,
            });
        }
        Ok(attempts)
    }

    async fn worker_list(&self) -> Result<Vec<WorkerInfo>> {
        self.dialect.worker_list().await
    }

    async fn event_list(&self, query: EventQuery) -> Result<Vec<Event>> {
        self.history_events(query).await
    }

    async fn batch_purge(&self, batch: BatchId) -> Result<()> {
        self.history_purge(batch).await
    }

    fn events(&self) -> broadcast::Receiver<Events> {
        self.events.subscribe()
    }

    fn signals(&self) -> &Signals {
        &self.signals
    }

    fn retains_finished_tasks(&self) -> bool {
        true
    }
}
