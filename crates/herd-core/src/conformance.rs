//! The store conformance suite: one set of cases that every [`Store`]
//! implementation runs against itself, in the manner of River's
//! `riverdrivertest`.
//!
//! A store crate enables this crate's `testing` feature for its tests, and
//! expands the suite once per store flavour in an integration test. Each case
//! becomes its own `#[tokio::test]` and gets a fresh, isolated store from the
//! factory (for PostgreSQL: its own schema, named after the case):
//!
//! ```text
//! // herd-sql/tests/conformance.rs, with
//! // [dev-dependencies] herd-core = { workspace = true, features = ["testing"] }
//! // and tokio (features "macros", "rt-multi-thread") as a dev-dependency.
//! herd_core::store_conformance!(|case: &'static str| async move {
//!     let dir = tempfile::Builder::new().prefix(case).tempdir().unwrap().keep();
//!     let path = dir.join("herd.db");
//!     herd_sql::SqliteStore::<String, String>::open(&format!("sqlite:{}", path.display()))
//!         .await
//!         .unwrap()
//! });
//! ```
//!
//! A store that needs a server expands `store_conformance!(if AVAILABLE;
//! FACTORY)` instead (see `herd-sql/tests/conformance_pg.rs`).
//!
//! The factory is anything implementing [`StoreFactory`]; closures
//! `Fn(&'static str) -> impl Future<Output = S>` do. The suite's payloads and
//! outputs are `String`s, which durable stores keep as text.
//!
//! # What the cases rely on
//!
//! - Stores never read a clock: the cases pass explicit [`Timestamp`]s, so
//!   leases, retry due times and deadlines are tested without sleeping.
//! - Every mutation returns the events it produced. The cases assert through
//!   those events and through [`Store::batch_get`], which work on every store;
//!   [`Store::task_get`] is only trusted for finished tasks when
//!   [`Store::retains_finished_tasks`] says so.
//! - Behind every case, a harness checks the contract's invariants after
//!   every operation: `seq` strictly increases; every event is stamped with the
//!   operation's `now`; every task transition continues from the task's
//!   previous state, is a valid [`TaskState::can_become`] move, carries a
//!   reason its state accepts, and increments the attempt exactly when the
//!   task starts running (a claim given back gives it back); a batch only finishes once all its tasks have; the
//!   counts of [`Store::batch_get`] and the states of [`Store::task_get`]
//!   match the events, as do [`Store::batch_list`] (every batch, newest
//!   first) and [`Store::task_list`] (each batch's tasks by index, those the
//!   store keeps); a task names a worker and a start exactly while it runs;
//!   and at the end of the case a subscriber taken at its
//!   start ([`Store::events`]) has received exactly the same events, in `seq`
//!   order.
//!
//! Where several tasks change in one operation, the cases compare them as a
//! set: the order of events within one operation is the store's choice.
//!
//! # Choices the cases pin down
//!
//! Some behaviour is not spelled out by the trait's signatures; the memory
//! store (the reference) does the following, and so must every store:
//!
//! - Claims take each batch's queue strictly in order (priority, then the
//!   order in which tasks became ready: submission order, with a retried
//!   task queuing again behind those already waiting): a task that does not fit the worker's capacity or its
//!   batch's concurrency ends the claim for that batch; smaller tasks behind
//!   it do not jump ahead.
//! - Between batches: highest head priority first, then the batch with fewer
//!   cost units running, then the one served longest ago, then the older one.
//! - A lease is expired when `now > lease_until`; a retry is due when
//!   `now >= retry_at`; a deadline has passed when `now >= deadline`.
//! - Appending to a batch that has stopped (cancelled, tripped, expired)
//!   stores nothing and returns `stopped`, also after the batch was sealed.
//! - Subscribers receive each operation's events once, in `seq` order, even
//!   when operations run in parallel.
//! - A claim limited to one batch still readies every batch's due retries
//!   and enforces every passed deadline; it only takes tasks from its batch.
//! - An attempt ended by [`Store::worker_expire`] or a lease's expiry has no
//!   log; one ended by a report has the report's log, if any.
//!
//! This crate runs the suite against the memory store, in both of its
//! flavours: `cargo test -p herd-core --features testing --test conformance`;
//! `herd-sql` runs it against SQLite and PostgreSQL.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::model::{
    Attempt, BatchId, BatchSpec, BatchState, Event, EventKind, Priority, Reason, StateCounts,
    TaskId, TaskSpec, TaskState, Timestamp, WorkerId,
};
use crate::store::{
    Appended, Applied, AttemptInfo, AttemptLog, AttemptOutcome, BatchInfo, BatchQuery, CancelMode,
    CancelRequest, Claim, ClaimRequest, ClaimedTask, Completion, EventQuery, Events, Fence,
    Inserted, Renewal, Stale, Store, StoreError, TaskQuery, TaskRecord,
};

/// A store the suite can run against: payloads and outputs are text.
pub trait SuiteStore: Store<Payload = String, Output = String> {}

impl<S: Store<Payload = String, Output = String>> SuiteStore for S {}

/// Creates a fresh, empty store for one case.
///
/// Every case gets its own store, so cases run in parallel and see no one
/// else's batches, tasks or events. `case` is the case's name, for stores that
/// isolate by name (a PostgreSQL schema, a SQLite file).
pub trait StoreFactory {
    /// The store under test.
    type Store: SuiteStore;

    /// A new store for the case named `case`.
    fn create(&self, case: &'static str) -> impl Future<Output = Self::Store>;
}

impl<F, Fut, S> StoreFactory for F
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = S>,
    S: SuiteStore,
{
    type Store = S;

    fn create(&self, case: &'static str) -> impl Future<Output = S> {
        self(case)
    }
}

/// Expands the conformance suite: one `#[tokio::test]` per case, each running
/// [`conformance::cases`](crate::conformance::cases)`::<name>` on a store
/// made by the given [`StoreFactory`](crate::conformance::StoreFactory).
///
/// The calling crate needs `tokio` (features `macros` and `rt-multi-thread`)
/// among its dev-dependencies. Expand it inside a module to run the suite
/// against several flavours of one store.
///
/// `store_conformance!(if AVAILABLE; FACTORY)` runs a case only when the
/// expression `AVAILABLE` is true, for stores that need a server: the
/// caller reports the skip (once, loudly) and decides when a missing
/// server is a failure instead.
#[macro_export]
macro_rules! store_conformance {
    (if $available:expr; $factory:expr $(,)?) => {
        $crate::store_conformance!(@cases $available; $factory;
            insert_stores_batch_and_tasks,
            insert_rejects_invalid_specs,
            idempotency_key_returns_existing_batch,
            claim_orders_by_priority_then_fifo,
            claim_respects_capacity_and_max_tasks,
            claim_respects_batch_concurrency_by_cost,
            claim_shares_fairly_between_batches,
            claim_ranks_many_batches,
            claim_ranks_past_batches_its_completions_stop,
            claim_ranks_past_a_batch_a_due_retry_fills,
            claim_ranks_by_the_head_a_turn_leaves,
            paused_batches_are_not_claimed,
            completions_are_fenced_by_attempt,
            retry_waits_without_holding_a_slot,
            expired_leases_are_rescued,
            dependents_wait_and_receive_outputs,
            upstream_failure_skips_dependents,
            task_cancel_cancels_waiting_and_asks_running,
            batch_cancel_cancels_everything,
            error_policy_stop,
            error_policy_abort,
            error_policy_threshold_count,
            error_policy_continue,
            deadline_cancels_remaining_tasks,
            open_batch_finishes_when_sealed,
            stopped_open_batch_refuses_appends,
            batch_states_follow_progress,
            events_reach_subscribers_in_order,
            concurrent_operations_publish_in_order,
            batch_stats_reports_figures,
            policy_trip_skips_the_failures_dependents,
            forced_cancel_escalates_a_graceful_one,
            a_task_lost_while_cancelling_ends_cancelled,
            released_claims_take_their_place_again,
            released_claims_end_as_asked,
            claims_do_not_start_tasks_past_the_deadline,
            rerun_runs_failures_again_and_keeps_successes,
            rerun_restarts_a_stopped_batch,
            rerun_refuses_an_unfinished_batch,
            claims_can_be_limited_to_one_batch,
            worker_expire_ends_only_that_workers_attempts,
            worker_list_reports_registrations_and_heartbeats,
            batch_list_pages_newest_first,
            task_list_pages_by_index,
            attempts_keep_their_logs,
            reports_together_keep_each_its_own_start,
            event_list_reads_after_a_seq,
            batch_purge_removes_only_finished_batches,
            complete_and_claim_is_complete_then_claim,
            large_operations_are_whole,
        );
    };
    ($factory:expr $(,)?) => {
        $crate::store_conformance!(if true; $factory);
    };
    (@cases $available:expr; $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                if !$available {
                    return;
                }
                let store =
                    $crate::conformance::StoreFactory::create(&$factory, stringify!($case)).await;
                $crate::conformance::cases::$case(store).await;
            }
        )+
    };
}

/// The instant every case starts at: one second after the epoch.
const T0: Timestamp = Timestamp(1_000_000);
/// The lease taken by the cases' claims.
const LEASE: Duration = Duration::from_secs(30);
/// The flow named by the cases' batches.
const FLOW: &str = "conformance";

/// `s` seconds after [`T0`].
fn secs(s: u64) -> Timestamp {
    T0.plus(Duration::from_secs(s))
}

/// A task whose key and payload are `key`.
fn task(key: &str) -> TaskSpec<String> {
    TaskSpec {
        key: Some(key.to_owned()),
        ..TaskSpec::new(key.to_owned())
    }
}

/// A task that waits for the tasks keyed `upstream`.
fn after(key: &str, upstream: &[&str]) -> TaskSpec<String> {
    TaskSpec {
        after: upstream.iter().map(|k| (*k).to_owned()).collect(),
        ..task(key)
    }
}

/// A closed batch of `tasks` with the given concurrency and default policies.
fn batch(concurrency: u32, tasks: Vec<TaskSpec<String>>) -> BatchSpec<String> {
    BatchSpec {
        concurrency,
        tasks,
        ..BatchSpec::new(FLOW)
    }
}

fn fence(t: &ClaimedTask<String, String>) -> Fence {
    Fence {
        task: t.id,
        attempt: t.attempt,
    }
}

fn success(output: Option<&str>) -> AttemptOutcome<String> {
    AttemptOutcome::Succeeded {
        output: output.map(str::to_owned),
    }
}

fn failure(reason: Reason, retry_at: Option<Timestamp>) -> AttemptOutcome<String> {
    AttemptOutcome::Failed {
        reason,
        message: Some(format!("failed: {reason}")),
        retry_at,
    }
}

fn cancelled(reason: Reason) -> AttemptOutcome<String> {
    AttemptOutcome::Cancelled { reason }
}

fn report(fence: Fence, outcome: AttemptOutcome<String>, duration: Duration) -> Completion<String> {
    Completion {
        fence,
        outcome,
        duration,
        log: None,
    }
}

/// Payloads of claimed tasks (the cases' payloads are the task keys), in claim order.
fn payloads(claim: &Claim<String, String>) -> Vec<&str> {
    claim.tasks.iter().map(|t| t.payload.as_str()).collect()
}

/// Payloads of claimed tasks, sorted.
fn sorted_payloads(claim: &Claim<String, String>) -> Vec<&str> {
    let mut p = payloads(claim);
    p.sort_unstable();
    p
}

/// The task a claim handed out with payload `key`.
fn claimed<'a>(claim: &'a Claim<String, String>, key: &str) -> &'a ClaimedTask<String, String> {
    claim
        .tasks
        .iter()
        .find(|t| t.payload == key)
        .unwrap_or_else(|| panic!("task {key} was not claimed: {:?}", payloads(claim)))
}

/// A task transition as the cases compare them: the task, the state it
/// entered and the reason.
type Move = (TaskId, TaskState, Option<Reason>);

/// The task transitions among `events`, sorted by task and in event order per task.
fn moves(events: &[Event]) -> Vec<Move> {
    let mut m: Vec<Move> = events.iter().filter_map(Event::task_transition).collect();
    m.sort_by_key(|(task, _, _)| *task);
    m
}

/// Asserts that `events` hold exactly the task transitions `expected`, in any
/// order between tasks.
#[track_caller]
fn assert_moves(events: &[Event], expected: &[Move]) {
    let mut expected = expected.to_vec();
    expected.sort_by_key(|(task, _, _)| *task);
    assert_eq!(moves(events), expected, "task transitions of {events:#?}");
}

/// The batch transitions among `events`, in order: the batch and the state it entered.
fn batch_moves(events: &[Event]) -> Vec<(BatchId, BatchState)> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Batch { to, .. } => Some((e.batch, to)),
            EventKind::Task { .. } => None,
        })
        .collect()
}

/// Task ids created by `events` (an append's), in creation order.
fn created(events: &[Event]) -> Vec<(TaskId, u64)> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Task {
                task,
                index,
                from: None,
                ..
            } => Some((task, index)),
            _ => None,
        })
        .collect()
}

fn counts(f: impl FnOnce(&mut StateCounts)) -> StateCounts {
    let mut c = StateCounts::default();
    f(&mut c);
    c
}

/// A task as the events have shown it so far.
#[derive(Clone, Copy, Debug)]
struct SeenTask {
    batch: BatchId,
    index: u64,
    state: TaskState,
    reason: Option<Reason>,
    attempt: Attempt,
}

/// Every event the case has seen, and the state they imply.
#[derive(Default)]
struct Log {
    events: Vec<Event>,
    tasks: HashMap<TaskId, SeenTask>,
    batches: HashMap<BatchId, BatchState>,
    /// The operation being recorded is a rerun: finished tasks and batches
    /// may start over (and only then).
    rerun: bool,
    /// Batches removed with `batch_purge`: their events are no longer listed.
    purged: Vec<BatchId>,
}

impl Log {
    /// Checks `events`, produced by one operation at `now`, and adds them.
    #[track_caller]
    fn record(&mut self, events: &[Event], now: Timestamp) {
        for e in events {
            if let Some(last) = self.events.last() {
                assert!(
                    e.seq > last.seq,
                    "event seq must strictly increase: {e:?} after {last:?}"
                );
            }
            assert_eq!(e.at, now, "events carry the operation's `now`: {e:?}");
            match e.kind {
                EventKind::Task {
                    task,
                    index,
                    attempt,
                    from,
                    to,
                    reason,
                } => {
                    assert!(
                        to.accepts_reason(reason),
                        "{to} does not accept reason {reason:?}: {e:?}"
                    );
                    match self.tasks.get_mut(&task) {
                        None => {
                            assert_eq!(from, None, "first event of {task} must create it: {e:?}");
                            assert!(
                                matches!(to, TaskState::Pending | TaskState::Queued),
                                "tasks are created pending or queued: {e:?}"
                            );
                            assert_eq!(attempt, Attempt(0), "new tasks have no attempt: {e:?}");
                            assert!(
                                self.batches.contains_key(&e.batch),
                                "task created in an unknown batch: {e:?}"
                            );
                            assert!(
                                !self
                                    .tasks
                                    .values()
                                    .any(|t| t.batch == e.batch && t.index == index),
                                "index {index} used twice in {}: {e:?}",
                                e.batch
                            );
                            self.tasks.insert(
                                task,
                                SeenTask {
                                    batch: e.batch,
                                    index,
                                    state: to,
                                    reason,
                                    attempt,
                                },
                            );
                        }
                        Some(seen) => {
                            assert_eq!(
                                from,
                                Some(seen.state),
                                "transition must start where {task} was: {e:?}"
                            );
                            assert!(
                                seen.state.can_become(to)
                                    || (self.rerun && seen.state.can_rerun_to(to)),
                                "invalid move {} -> {to}: {e:?}",
                                seen.state
                            );
                            assert_eq!((seen.batch, seen.index), (e.batch, index), "{e:?}");
                            let expected = if to == TaskState::Running {
                                seen.attempt.next()
                            } else {
                                seen.attempt
                            };
                            assert_eq!(attempt, expected, "attempt of {e:?}");
                            seen.state = to;
                            seen.reason = reason;
                            // A claim given back gives its attempt number back.
                            seen.attempt = match (from, to) {
                                (Some(TaskState::Running), TaskState::Queued) => {
                                    Attempt(attempt.0 - 1)
                                }
                                _ => attempt,
                            };
                        }
                    }
                }
                EventKind::Batch { from, to } => {
                    match self.batches.get(&e.batch).copied() {
                        None => {
                            assert_eq!(from, None, "first event of {} must create it", e.batch);
                            assert!(
                                matches!(to, BatchState::Queued | BatchState::Paused),
                                "batches are created queued or paused: {e:?}"
                            );
                        }
                        Some(state) => {
                            assert_eq!(from, Some(state), "batch transition: {e:?}");
                            assert!(
                                state.can_become(to) || (self.rerun && state.can_reopen_to(to)),
                                "invalid move {state} -> {to}: {e:?}"
                            );
                        }
                    }
                    if to.is_terminal() {
                        let live: Vec<_> = self
                            .tasks
                            .iter()
                            .filter(|(_, t)| t.batch == e.batch && !t.state.is_terminal())
                            .collect();
                        assert!(
                            live.is_empty(),
                            "{} finished with live tasks {live:?}",
                            e.batch
                        );
                    }
                    self.batches.insert(e.batch, to);
                }
            }
            self.events.push(e.clone());
        }
    }
}

/// A store under test, with the log of everything it reported.
struct Harness<S: SuiteStore> {
    store: Arc<S>,
    log: Log,
    sub: broadcast::Receiver<Events>,
    worker: WorkerId,
}

impl<S: SuiteStore> Harness<S> {
    async fn new(store: S) -> Self {
        let sub = store.events();
        let worker = store
            .worker_register("conformance", 1, T0)
            .await
            .expect("worker_register");
        Harness {
            store: Arc::new(store),
            log: Log::default(),
            sub,
            worker,
        }
    }

    /// Records an operation's events and checks the store against them.
    #[track_caller]
    fn record(&mut self, events: &[Event], now: Timestamp) -> impl Future<Output = ()> + '_ {
        self.log.record(events, now);
        self.verify()
    }

    /// The state and reason of `task`, as the events have shown it.
    #[track_caller]
    fn state(&self, task: TaskId) -> (TaskState, Option<Reason>) {
        let t = self.log.tasks.get(&task).expect("task seen in events");
        (t.state, t.reason)
    }

    /// Checks batch counts and states, and the live tasks, against the events.
    async fn verify(&self) {
        let mut expected: HashMap<BatchId, StateCounts> = HashMap::new();
        for t in self.log.tasks.values() {
            expected.entry(t.batch).or_default().shift(None, t.state);
        }
        for (&id, &state) in &self.log.batches {
            let info = self.store.batch_get(id).await.expect("batch_get");
            assert_eq!(info.id, id);
            assert_eq!(info.state, state, "state of {id} differs from its events");
            let want = expected.get(&id).copied().unwrap_or_default();
            assert_eq!(info.counts, want, "counts of {id} differ from its events");
        }
        let retains = self.store.retains_finished_tasks();
        for (&id, seen) in &self.log.tasks {
            match self.store.task_get(id).await {
                Ok(info) => {
                    assert_eq!(info.id, id);
                    let running = seen.state == TaskState::Running;
                    assert_eq!(
                        (info.worker.is_some(), info.started_at.is_some()),
                        (running, running),
                        "task_get({id}) names a worker and start exactly while it runs"
                    );
                    assert_eq!(
                        (
                            info.batch,
                            info.index,
                            info.state,
                            info.reason,
                            info.attempt
                        ),
                        (
                            seen.batch,
                            seen.index,
                            seen.state,
                            seen.reason,
                            seen.attempt
                        ),
                        "task_get({id}) differs from its events"
                    );
                }
                Err(StoreError::UnknownTask(t)) if t == id => assert!(
                    seen.state.is_terminal() && !retains,
                    "{id} ({}) is unknown to the store",
                    seen.state
                ),
                Err(e) => panic!("task_get({id}): {e}"),
            }
        }
        // The listings agree with the events: every batch newest first, and
        // each batch's tasks (those the store keeps) by index.
        let listed = self
            .store
            .batch_list(BatchQuery {
                limit: 10_000,
                ..BatchQuery::default()
            })
            .await
            .expect("batch_list");
        let listed: Vec<(BatchId, BatchState)> = listed.iter().map(|b| (b.id, b.state)).collect();
        let mut want: Vec<(BatchId, BatchState)> =
            self.log.batches.iter().map(|(id, s)| (*id, *s)).collect();
        want.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        assert_eq!(listed, want, "batch_list differs from the events");
        for &batch in self.log.batches.keys() {
            let query = TaskQuery {
                limit: 10_000,
                ..TaskQuery::default()
            };
            let listed: Vec<(TaskId, u64, TaskState)> = self
                .tasks(batch, query)
                .await
                .iter()
                .map(|t| (t.info.id, t.info.index, t.info.state))
                .collect();
            let mut want: Vec<(TaskId, u64, TaskState)> = self
                .log
                .tasks
                .iter()
                .filter(|(_, t)| t.batch == batch && (retains || !t.state.is_terminal()))
                .map(|(id, t)| (*id, t.index, t.state))
                .collect();
            want.sort_by_key(|(_, index, _)| *index);
            assert_eq!(listed, want, "task_list({batch}) differs from the events");
        }
    }

    /// Final checks: the store matches the events, and the subscriber taken
    /// at the start received exactly the events the operations returned.
    async fn finish(mut self) {
        self.verify().await;
        // The store lists every event the operations returned (those of
        // purged batches aside), in `seq` order, a page at a time.
        let mut listed = Vec::new();
        loop {
            let after = listed.last().map_or(0, |e: &Event| e.seq);
            let query = EventQuery {
                after,
                batch: None,
                limit: 97,
            };
            let page = self.store.event_list(query).await.expect("event_list");
            assert!(page.len() <= 97, "event_list returns at most its limit");
            if page.is_empty() {
                break;
            }
            listed.extend(page);
        }
        let want: Vec<&Event> = self
            .log
            .events
            .iter()
            .filter(|e| !self.log.purged.contains(&e.batch))
            .collect();
        let listed: Vec<&Event> = listed.iter().collect();
        if self.store.retains_finished_tasks() {
            assert_eq!(
                listed, want,
                "event_list must list every stored event in seq order"
            );
        } else {
            // A store that forgets keeps its latest events only (the memory
            // store: `MemoryStore::EVENT_LOG`): the newest, in order.
            assert!(
                want.ends_with(&listed) && (want.is_empty() || !listed.is_empty()),
                "event_list must list the latest stored events in seq order: \
                 listed {} of {}",
                listed.len(),
                want.len()
            );
        }
        let want = self.log.events.len();
        let got = receive(&mut self.sub, want).await;
        let mut each = got.clone();
        each.sort_by_key(|e| e.seq);
        assert_eq!(
            each, self.log.events,
            "the subscriber must receive every returned event, once"
        );
        if let Some(w) = got.windows(2).find(|w| w[0].seq >= w[1].seq) {
            panic!(
                "the subscriber must receive events in seq order: {:?} came before {:?}",
                w[0], w[1]
            );
        }
        assert!(
            matches!(
                self.sub.try_recv(),
                Err(broadcast::error::TryRecvError::Empty)
            ),
            "subscriber received more events than the operations returned"
        );
    }

    async fn try_insert(
        &mut self,
        spec: BatchSpec<String>,
        now: Timestamp,
    ) -> Result<Inserted, StoreError> {
        let result = self.store.batch_insert(spec, now).await;
        if let Ok(inserted) = &result {
            let events = inserted.events.clone();
            self.record(&events, now).await;
            // What the insert says of the batch is what a read says after it.
            let read = self
                .store
                .batch_get(inserted.batch)
                .await
                .expect("batch_get");
            assert_eq!(
                format!("{:?}", inserted.info),
                format!("{read:?}"),
                "the inserted batch's info"
            );
        }
        result
    }

    /// Purges a batch and forgets it in the log.
    async fn purge(&mut self, batch: BatchId) -> Result<(), StoreError> {
        self.store.batch_purge(batch).await?;
        self.log.batches.remove(&batch);
        self.log.tasks.retain(|_, t| t.batch != batch);
        self.log.purged.push(batch);
        Ok(())
    }

    async fn insert(&mut self, spec: BatchSpec<String>, now: Timestamp) -> Inserted {
        self.try_insert(spec, now).await.expect("batch_insert")
    }

    async fn rerun(
        &mut self,
        batch: BatchId,
        downstream: bool,
        now: Timestamp,
    ) -> Result<crate::store::Rerun, StoreError> {
        let result = self.store.batch_rerun(batch, downstream, now).await;
        match &result {
            Ok(rerun) => {
                self.log.rerun = true;
                self.log.record(&rerun.events, now);
                self.log.rerun = false;
                self.verify().await;
            }
            Err(_) => self.verify().await,
        }
        result
    }

    async fn append(
        &mut self,
        batch: BatchId,
        tasks: Vec<TaskSpec<String>>,
        now: Timestamp,
    ) -> Result<Appended, StoreError> {
        let result = self.store.task_append(batch, tasks, now).await;
        if let Ok(appended) = &result {
            let events = appended.events.clone();
            self.record(&events, now).await;
        } else {
            self.verify().await;
        }
        result
    }

    async fn seal(&mut self, batch: BatchId, now: Timestamp) -> Events {
        let events = self.store.batch_seal(batch, now).await.expect("batch_seal");
        self.record(&events, now).await;
        events
    }

    async fn claim_by(
        &mut self,
        worker: WorkerId,
        capacity: u32,
        max_tasks: usize,
        now: Timestamp,
    ) -> Claim<String, String> {
        let request = ClaimRequest {
            worker,
            capacity,
            max_tasks,
            lease: LEASE,
            batch: None,
        };
        self.claim_with(request, now).await
    }

    /// Claims for this harness's worker from `batch` only.
    async fn claim_in(
        &mut self,
        batch: BatchId,
        capacity: u32,
        max_tasks: usize,
        now: Timestamp,
    ) -> Claim<String, String> {
        let request = ClaimRequest {
            worker: self.worker,
            capacity,
            max_tasks,
            lease: LEASE,
            batch: Some(batch),
        };
        let claim = self.claim_with(request, now).await;
        for t in &claim.tasks {
            assert_eq!(t.batch, batch, "a claim limited to {batch} took {}", t.id);
        }
        claim
    }

    async fn claim_with(&mut self, request: ClaimRequest, now: Timestamp) -> Claim<String, String> {
        let claim = self
            .store
            .task_claim(request, now)
            .await
            .expect("task_claim");
        let events = claim.events.clone();
        self.record(&events, now).await;
        self.check_claim(request, &claim, now).await;
        claim
    }

    /// Reports and claims in one call, as this harness's worker; checks the
    /// claim as [`Harness::claim_with`] does. The completions' events come
    /// first, then the claim's.
    async fn complete_and_claim(
        &mut self,
        completions: Vec<Completion<String>>,
        request: ClaimRequest,
        now: Timestamp,
    ) -> (Applied, Claim<String, String>) {
        let n = completions.len();
        let (applied, claim) = self
            .store
            .task_complete_and_claim(self.worker, completions, request, now)
            .await
            .expect("task_complete_and_claim");
        let claim = claim.expect("the claim of task_complete_and_claim");
        assert_eq!(applied.results.len(), n, "one result per completion");
        // Recorded as one sequence: the claim's seqs follow the completions'.
        self.log.record(&applied.events, now);
        self.log.record(&claim.events, now);
        self.verify().await;
        self.check_claim(request, &claim, now).await;
        (applied, claim)
    }

    /// Checks what a claim handed out against the request and the events.
    async fn check_claim(
        &mut self,
        request: ClaimRequest,
        claim: &Claim<String, String>,
        now: Timestamp,
    ) {
        let ClaimRequest {
            worker,
            capacity,
            max_tasks,
            ..
        } = request;
        let mut costs = 0;
        for t in &claim.tasks {
            assert_eq!(t.lease_until, now.plus(LEASE), "lease of {}", t.id);
            assert_eq!(self.state(t.id), (TaskState::Running, None), "{}", t.id);
            assert_eq!(self.log.tasks[&t.id].attempt, t.attempt, "{}", t.id);
            assert_eq!(self.log.tasks[&t.id].index, t.index, "{}", t.id);
            assert_eq!(self.log.tasks[&t.id].batch, t.batch, "{}", t.id);
            assert_eq!(&*t.policy.flow, FLOW);
            let info = self
                .store
                .task_get(t.id)
                .await
                .expect("running tasks are readable");
            assert_eq!(
                (info.worker, info.started_at),
                (Some(worker), Some(now)),
                "a running task names its worker and start: {}",
                t.id
            );
            costs += t.cost;
        }
        assert!(
            claim.tasks.len() <= max_tasks,
            "claimed more than max_tasks"
        );
        assert!(
            costs <= capacity,
            "claimed {costs} cost units with capacity {capacity}"
        );
        let started = claim
            .events
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EventKind::Task {
                        to: TaskState::Running,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(
            started,
            claim.tasks.len(),
            "one running event per claimed task"
        );
    }

    async fn claim(
        &mut self,
        capacity: u32,
        max_tasks: usize,
        now: Timestamp,
    ) -> Claim<String, String> {
        self.claim_by(self.worker, capacity, max_tasks, now).await
    }

    async fn complete_by(
        &mut self,
        worker: WorkerId,
        completions: Vec<Completion<String>>,
        now: Timestamp,
    ) -> Applied {
        let n = completions.len();
        let applied = self
            .store
            .task_complete(worker, completions, now)
            .await
            .expect("task_complete");
        assert_eq!(applied.results.len(), n, "one result per completion");
        let events = applied.events.clone();
        self.record(&events, now).await;
        applied
    }

    async fn complete(&mut self, completions: Vec<Completion<String>>, now: Timestamp) -> Applied {
        self.complete_by(self.worker, completions, now).await
    }

    /// Reports one attempt; returns its result and the events.
    async fn report(
        &mut self,
        fence: Fence,
        outcome: AttemptOutcome<String>,
        now: Timestamp,
    ) -> (Result<TaskState, Stale>, Events) {
        let mut applied = self
            .complete(vec![report(fence, outcome, Duration::from_millis(10))], now)
            .await;
        (applied.results.remove(0), applied.events)
    }

    /// Reports success of a claimed task and asserts it was accepted.
    async fn succeed(
        &mut self,
        t: &ClaimedTask<String, String>,
        output: Option<&str>,
        now: Timestamp,
    ) -> Events {
        let (result, events) = self.report(fence(t), success(output), now).await;
        assert_eq!(result, Ok(TaskState::Succeeded), "success of {}", t.id);
        events
    }

    async fn renew_by(
        &mut self,
        worker: WorkerId,
        running: Vec<Fence>,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Renewal {
        let renewal = self
            .store
            .lease_renew(worker, running, lease_until, now)
            .await
            .expect("lease_renew");
        self.verify().await;
        renewal
    }

    async fn renew(&mut self, running: Vec<Fence>, now: Timestamp) -> Renewal {
        self.renew_by(self.worker, running, now.plus(LEASE), now)
            .await
    }

    async fn cancel_task(
        &mut self,
        task: TaskId,
        mode: CancelMode,
        now: Timestamp,
    ) -> Result<Events, StoreError> {
        let result = self.store.task_cancel(task, mode, now).await;
        if let Ok(events) = &result {
            let events = events.clone();
            self.record(&events, now).await;
        }
        result
    }

    async fn cancel_batch(&mut self, batch: BatchId, mode: CancelMode, now: Timestamp) -> Events {
        let events = self
            .store
            .batch_cancel(batch, mode, now)
            .await
            .expect("batch_cancel");
        self.record(&events, now).await;
        events
    }

    async fn pause(&mut self, batch: BatchId, now: Timestamp) -> Events {
        let events = self
            .store
            .batch_pause(batch, now)
            .await
            .expect("batch_pause");
        self.record(&events, now).await;
        events
    }

    async fn resume(&mut self, batch: BatchId, now: Timestamp) -> Events {
        let events = self
            .store
            .batch_resume(batch, now)
            .await
            .expect("batch_resume");
        self.record(&events, now).await;
        events
    }

    async fn rescue(&mut self, now: Timestamp) -> Events {
        let events = self.store.task_rescue(now).await.expect("task_rescue");
        self.record(&events, now).await;
        events
    }

    async fn expire_worker(&mut self, worker: WorkerId, now: Timestamp) -> Events {
        let events = self
            .store
            .worker_expire(worker, now)
            .await
            .expect("worker_expire");
        self.record(&events, now).await;
        events
    }

    /// Every task of `batch` the store lists, in one page.
    async fn tasks(&self, batch: BatchId, query: TaskQuery) -> Vec<TaskRecord<String, String>> {
        self.store.task_list(batch, query).await.expect("task_list")
    }

    async fn attempts(&self, task: TaskId) -> Vec<AttemptInfo> {
        self.store.task_attempts(task).await.expect("task_attempts")
    }

    async fn expire(&mut self, now: Timestamp) -> Events {
        let events = self.store.batch_expire(now).await.expect("batch_expire");
        self.record(&events, now).await;
        events
    }

    async fn batch(&self, id: BatchId) -> BatchInfo {
        self.store.batch_get(id).await.expect("batch_get")
    }
}

/// Receives at least `want` events from a subscription, flattened.
async fn receive(sub: &mut broadcast::Receiver<Events>, want: usize) -> Vec<Event> {
    let mut got = Vec::with_capacity(want);
    while got.len() < want {
        match tokio::time::timeout(Duration::from_secs(10), sub.recv()).await {
            Ok(Ok(events)) => got.extend(events.iter().cloned()),
            Ok(Err(e)) => panic!("subscriber failed after {} events: {e}", got.len()),
            Err(_) => panic!("subscriber received {} of {want} events", got.len()),
        }
    }
    got
}

/// One turn of a worker in [`cases::complete_and_claim_is_complete_then_claim`]:
/// reports, as (task key, attempt, outcome), then a claim of `capacity`.
struct Turn {
    reports: Vec<(&'static str, u32, AttemptOutcome<String>)>,
    capacity: u32,
    at: Timestamp,
}

/// An event with the ids of one run taken out, so that two runs of one
/// script in two batches compare: (task index, attempt, from, to, reason),
/// or a batch's move (no index).
type Seen = (
    Option<u64>,
    Option<u32>,
    Option<String>,
    String,
    Option<String>,
);

fn seen(events: &[Event]) -> Vec<Seen> {
    let mut out: Vec<Seen> = events
        .iter()
        .map(|e| match e.kind {
            EventKind::Task {
                index,
                attempt,
                from,
                to,
                reason,
                ..
            } => (
                Some(index),
                Some(attempt.0),
                from.map(|f| f.to_string()),
                to.to_string(),
                reason.map(|r| r.to_string()),
            ),
            EventKind::Batch { from, to } => (
                None,
                None,
                from.map(|f| f.to_string()),
                to.to_string(),
                None,
            ),
        })
        .collect();
    // The order of events within one operation is the store's choice.
    out.sort();
    out
}

/// What one turn did, with the ids of the run taken out: the completions'
/// results (stale: the attempt refused), their events, the claimed tasks
/// (index, attempt) in claim order, the claim's events and due time, and
/// the batch's state and counts after the turn.
#[derive(Debug, PartialEq)]
struct TurnSeen {
    results: Vec<Result<TaskState, u32>>,
    completed: Vec<Seen>,
    claimed: Vec<(u64, u32)>,
    claim_events: Vec<Seen>,
    next_due: Option<Timestamp>,
    state: BatchState,
    counts: StateCounts,
}

/// The cases. Each takes a fresh store and panics on the first deviation
/// from the store contract.
pub mod cases {
    use super::*;

    use BatchState as B;
    use TaskState::*;

    /// A batch and its tasks are stored in one step: the insert returns task
    /// ids in submission order and one creation event for the batch, then one
    /// per task (queued, or pending for tasks with `after`); `batch_get`
    /// reports the batch as submitted; payloads, keys and indices reach claims.
    pub async fn insert_stores_batch_and_tasks<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let spec = BatchSpec {
            name: Some("first".into()),
            ..batch(4, vec![task("a"), after("b", &["a"]), task("c")])
        };
        let ins = h.insert(spec, T0).await;
        assert!(!ins.existing);
        assert_eq!(ins.tasks.len(), 3);
        assert_eq!(ins.events.len(), 4, "{:#?}", ins.events);
        assert!(
            matches!(
                ins.events[0].kind,
                EventKind::Batch {
                    from: None,
                    to: B::Queued
                }
            ),
            "the batch is created first: {:?}",
            ins.events[0]
        );
        let tasks: Vec<_> = ins.events[1..]
            .iter()
            .map(|e| match e.kind {
                EventKind::Task {
                    task,
                    index,
                    attempt,
                    from,
                    to,
                    reason,
                } => (e.batch, task, index, attempt, from, to, reason),
                EventKind::Batch { .. } => panic!("one batch event only: {e:?}"),
            })
            .collect();
        let (b, t) = (ins.batch, &ins.tasks);
        assert_eq!(
            tasks,
            [
                (b, t[0], 0, Attempt(0), None, Queued, None),
                (b, t[1], 1, Attempt(0), None, Pending, None),
                (b, t[2], 2, Attempt(0), None, Queued, None),
            ]
        );
        assert!(ins.events.iter().all(|e| e.batch == b));

        let info = h.batch(b).await;
        assert_eq!(info.id, b);
        assert_eq!(info.name.as_deref(), Some("first"));
        assert_eq!(info.state, B::Queued);
        assert_eq!(info.priority, Priority::NORMAL);
        assert_eq!(info.concurrency, 4);
        assert_eq!(&*info.policy.flow, FLOW);
        assert_eq!(
            info.counts,
            counts(|c| {
                c.queued = 2;
                c.pending = 1;
            })
        );
        assert_eq!(info.retries, 0);
        assert!(!info.open);
        assert_eq!(info.created_at, T0);
        assert_eq!((info.started_at, info.finished_at), (None, None));

        let other = h.insert(batch(1, vec![task("d")]), secs(1)).await;
        assert_ne!(other.batch, b, "batch ids are unique");
        assert!(
            other.tasks.iter().all(|id| !t.contains(id)),
            "task ids are unique within the store, not only the batch"
        );

        let claim = h.claim(10, 10, secs(2)).await;
        assert_eq!(sorted_payloads(&claim), ["a", "c", "d"]);
        let view = |key: &str| {
            let c = claimed(&claim, key);
            (
                c.id,
                c.batch,
                c.index,
                c.key.as_deref().map(str::to_owned),
                c.cost,
                c.priority,
                c.has_dependents,
                c.attempt,
                c.lost,
                c.upstream.len(),
            )
        };
        let normal = Priority::NORMAL;
        let key = |k: &str| Some(k.to_owned());
        assert_eq!(
            view("a"),
            (t[0], b, 0, key("a"), 1, normal, true, Attempt(1), 0, 0)
        );
        assert_eq!(
            view("c"),
            (t[2], b, 2, key("c"), 1, normal, false, Attempt(1), 0, 0)
        );
        let d = other.tasks[0];
        let ob = other.batch;
        assert_eq!(
            view("d"),
            (d, ob, 0, key("d"), 1, normal, false, Attempt(1), 0, 0)
        );
        h.finish().await;
    }

    /// Invalid batches (a dependency cycle, an unknown `after` key, duplicate
    /// keys, concurrency 0, cost 0 or above the concurrency, max_attempts 0,
    /// `after` in an open batch) are refused with `StoreError::Submit` and
    /// leave no trace: no events, no batch, no tasks, and their idempotency
    /// keys stay free.
    pub async fn insert_rejects_invalid_specs<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let first = h.insert(batch(2, vec![task("x")]), T0).await;
        let with_ok = |mut tasks: Vec<TaskSpec<String>>| {
            tasks.insert(0, task("ok"));
            tasks
        };
        let mut attempts0 = batch(2, with_ok(vec![]));
        attempts0.policy.retry.max_attempts = 0;
        let invalid = vec![
            (
                "cycle",
                batch(2, with_ok(vec![after("a", &["b"]), after("b", &["a"])])),
            ),
            (
                "unknown",
                batch(2, with_ok(vec![task("a"), after("b", &["nope"])])),
            ),
            ("duplicate", batch(2, with_ok(vec![task("a"), task("a")]))),
            ("concurrency", batch(0, with_ok(vec![]))),
            (
                "cost",
                batch(
                    2,
                    with_ok(vec![TaskSpec {
                        cost: 3,
                        ..task("a")
                    }]),
                ),
            ),
            (
                "cost0",
                batch(
                    2,
                    with_ok(vec![TaskSpec {
                        cost: 0,
                        ..task("a")
                    }]),
                ),
            ),
            ("attempts", attempts0),
            (
                "open_after",
                BatchSpec {
                    open: true,
                    ..batch(2, with_ok(vec![after("a", &["ok"])]))
                },
            ),
        ];
        let labels: Vec<&str> = invalid.iter().map(|(l, _)| *l).collect();
        for (label, mut spec) in invalid {
            spec.idempotency_key = Some(format!("key-{label}"));
            let err = match h.try_insert(spec, secs(1)).await {
                Ok(ins) => panic!("{label}: invalid batch accepted as {}", ins.batch),
                Err(StoreError::Submit(e)) => e,
                Err(e) => panic!("{label}: expected a submit error, got {e:?}"),
            };
            let field = match &err {
                crate::model::SubmitError::Invalid(f) => Some(f.field),
                _ => None,
            };
            use crate::model::SubmitError as E;
            match label {
                "cycle" => {
                    let E::Cycle { path } = &err else {
                        panic!("{label}: {err:?}")
                    };
                    assert_eq!(path.first(), path.last(), "{path:?}");
                    assert!(path.contains(&"a".into()) && path.contains(&"b".into()));
                }
                "unknown" => assert_eq!(
                    err,
                    E::UnknownDependency {
                        task: "b".into(),
                        after: "nope".into()
                    }
                ),
                "duplicate" => assert_eq!(err, E::DuplicateKey("a".into())),
                "concurrency" => assert_eq!(field, Some("concurrency"), "{err:?}"),
                "cost" | "cost0" => assert_eq!(field, Some("cost"), "{label}: {err:?}"),
                "attempts" => assert_eq!(field, Some("retry.max_attempts"), "{err:?}"),
                "open_after" => assert_eq!(err, E::AfterInOpenBatch),
                _ => unreachable!(),
            }
        }
        h.verify().await;

        let second = h
            .insert(batch(2, vec![task("y"), task("z")]), secs(2))
            .await;
        assert!(!second.existing);
        assert_eq!(second.events.len(), 3, "{:#?}", second.events);
        assert!(second.events.iter().all(|e| e.batch == second.batch));
        for id in first.batch.0 + 1..second.batch.0 {
            assert!(
                matches!(h.store.batch_get(BatchId(id)).await, Err(StoreError::UnknownBatch(b)) if b == BatchId(id)),
                "a rejected insert left batch b{id} behind"
            );
        }
        for label in labels {
            let spec = BatchSpec {
                idempotency_key: Some(format!("key-{label}")),
                ..batch(1, vec![])
            };
            let ins = h.insert(spec, secs(3)).await;
            assert!(
                !ins.existing,
                "rejected batch kept idempotency key key-{label}"
            );
        }
        let claim = h.claim(10, 10, secs(4)).await;
        assert_eq!(
            sorted_payloads(&claim),
            ["x", "y", "z"],
            "only valid tasks exist"
        );
        h.finish().await;
    }

    /// A second insert with the same idempotency key returns the first batch
    /// with `existing: true` and inserts nothing, also after the first batch
    /// has finished; another key inserts a new batch.
    pub async fn idempotency_key_returns_existing_batch<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let spec = |name: &str, tasks| BatchSpec {
            name: Some(name.into()),
            idempotency_key: Some("nightly".into()),
            ..batch(2, tasks)
        };
        let first = h
            .insert(spec("original", vec![task("a"), task("b")]), T0)
            .await;
        assert!(!first.existing);
        let again = h
            .insert(
                spec("again", vec![task("c"), task("d"), task("e")]),
                secs(1),
            )
            .await;
        assert!(again.existing);
        assert_eq!(again.batch, first.batch);
        assert!(again.tasks.is_empty(), "{:?}", again.tasks);
        assert!(again.events.is_empty(), "{:?}", again.events);
        let info = h.batch(first.batch).await;
        assert_eq!(info.name.as_deref(), Some("original"));
        assert_eq!(info.created_at, T0);
        assert_eq!(info.counts, counts(|c| c.queued = 2));

        let claim = h.claim(10, 10, secs(2)).await;
        assert_eq!(sorted_payloads(&claim), ["a", "b"]);
        for t in &claim.tasks {
            h.succeed(t, None, secs(3)).await;
        }
        assert_eq!(h.batch(first.batch).await.state, B::Succeeded);
        let late = h.insert(spec("late", vec![task("f")]), secs(4)).await;
        assert!(late.existing && late.tasks.is_empty() && late.events.is_empty());
        assert_eq!(late.batch, first.batch);

        let other = BatchSpec {
            idempotency_key: Some("weekly".into()),
            ..batch(1, vec![task("g")])
        };
        let other = h.insert(other, secs(5)).await;
        assert!(!other.existing);
        assert_ne!(other.batch, first.batch);
        let claim = h.claim(10, 10, secs(6)).await;
        assert_eq!(payloads(&claim), ["g"]);
        h.finish().await;
    }

    /// Claims hand out the highest priority first (per-task overrides of the
    /// batch priority count) and FIFO within a priority, several tasks per
    /// call up to `max_tasks`, each starting attempt 1 under a lease.
    pub async fn claim_orders_by_priority_then_fifo<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let with = |key: &str, p: Option<Priority>| TaskSpec {
            priority: p,
            ..task(key)
        };
        let tasks = vec![
            with("n0", None),
            with("h1", Some(Priority::HIGH)),
            with("l2", Some(Priority::LOW)),
            with("h3", Some(Priority::HIGH)),
            with("n4", Some(Priority::NORMAL)),
            with("c5", Some(Priority::CRITICAL)),
        ];
        h.insert(batch(10, tasks), T0).await;
        let first = h.claim(10, 2, secs(1)).await;
        assert_eq!(payloads(&first), ["c5", "h1"]);
        assert_eq!(claimed(&first, "c5").priority, Priority::CRITICAL);
        assert_eq!(claimed(&first, "h1").priority, Priority::HIGH);
        let second = h.claim(10, 3, secs(2)).await;
        assert_eq!(payloads(&second), ["h3", "n0", "n4"]);
        assert_eq!(claimed(&second, "n0").priority, Priority::NORMAL);
        let third = h.claim(10, 10, secs(3)).await;
        assert_eq!(payloads(&third), ["l2"]);
        assert_eq!(claimed(&third, "l2").priority, Priority::LOW);
        for t in first.tasks.iter().chain(&second.tasks).chain(&third.tasks) {
            assert_eq!((t.attempt, t.lost), (Attempt(1), 0));
        }
        let empty = h.claim(10, 10, secs(4)).await;
        assert!(empty.tasks.is_empty() && empty.events.is_empty());
        h.finish().await;
    }

    /// A claim's tasks cost at most the worker's capacity and number at most
    /// `max_tasks`; the queue is taken in order, so a task that does not fit
    /// stops the claim rather than letting smaller ones behind it jump ahead.
    pub async fn claim_respects_capacity_and_max_tasks<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let cost = |key: &str, cost| TaskSpec { cost, ..task(key) };
        let tasks = vec![
            cost("c2", 2),
            cost("c3", 3),
            cost("c1", 1),
            cost("c4", 4),
            cost("x", 1),
            cost("y", 1),
            cost("z", 1),
        ];
        h.insert(batch(20, tasks), T0).await;
        assert!(h.claim(0, 10, T0).await.tasks.is_empty(), "no capacity");
        assert!(h.claim(10, 0, T0).await.tasks.is_empty(), "max_tasks 0");
        assert_eq!(payloads(&h.claim(4, 10, secs(1)).await), ["c2"]);
        let claim = h.claim(5, 10, secs(2)).await;
        assert_eq!(payloads(&claim), ["c3", "c1"]);
        assert_eq!(claimed(&claim, "c3").cost, 3);
        assert!(h.claim(3, 10, secs(3)).await.tasks.is_empty(), "c4 needs 4");
        assert_eq!(payloads(&h.claim(4, 10, secs(4)).await), ["c4"]);
        assert_eq!(payloads(&h.claim(10, 2, secs(5)).await), ["x", "y"]);
        assert_eq!(payloads(&h.claim(10, 2, secs(6)).await), ["z"]);
        h.finish().await;
    }

    /// A batch runs at most `concurrency` cost units at once, in queue order;
    /// finished tasks free their units; one full batch does not hold back
    /// another.
    pub async fn claim_respects_batch_concurrency_by_cost<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let cost = |key: &str, cost| TaskSpec { cost, ..task(key) };
        let a = h
            .insert(
                batch(3, vec![cost("a0", 2), cost("a1", 2), cost("a2", 1)]),
                T0,
            )
            .await;
        let b = h.insert(batch(1, vec![task("b0"), task("b1")]), T0).await;
        let claim = h.claim(10, 10, secs(1)).await;
        assert_eq!(sorted_payloads(&claim), ["a0", "b0"]);
        assert!(
            h.claim(10, 10, secs(2)).await.tasks.is_empty(),
            "a1 does not fit next to a0, a2 must not pass it, b is at its concurrency"
        );
        let a0 = claimed(&claim, "a0").clone();
        let b0 = claimed(&claim, "b0").clone();
        h.succeed(&a0, None, secs(3)).await;
        let claim = h.claim(10, 10, secs(4)).await;
        assert_eq!(sorted_payloads(&claim), ["a1", "a2"]);
        assert!(h.claim(10, 10, secs(5)).await.tasks.is_empty());
        h.succeed(&b0, None, secs(6)).await;
        assert_eq!(payloads(&h.claim(10, 10, secs(7)).await), ["b1"]);
        assert_eq!(h.batch(a.batch).await.counts.running, 2);
        assert_eq!(h.batch(b.batch).await.counts.running, 1);
        h.finish().await;
    }

    /// Batches of equal priority share the workers: the next slot goes to the
    /// batch with fewer cost units running, then to the one served longest
    /// ago (the older batch first on a tie). A higher priority goes first,
    /// whether it is the batch's or a task's own.
    pub async fn claim_shares_fairly_between_batches<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let keys = |p: &str| (1..=8).map(|i| task(&format!("{p}{i}"))).collect();
        let a = h.insert(batch(10, keys("a")), T0).await;
        let b = h.insert(batch(10, keys("b")), T0).await;
        let mut served = Vec::new();
        let mut running = Vec::new();
        for _ in 0..4 {
            let claim = h.claim(10, 1, secs(1)).await;
            assert_eq!(claim.tasks.len(), 1);
            served.push(claim.tasks[0].batch);
            running.extend(claim.tasks);
        }
        assert_eq!(
            served,
            [a.batch, b.batch, a.batch, b.batch],
            "while running"
        );
        for t in &running {
            h.succeed(t, None, secs(2)).await;
        }
        served.clear();
        for _ in 0..4 {
            let claim = h.claim(10, 1, secs(3)).await;
            assert_eq!(claim.tasks.len(), 1);
            served.push(claim.tasks[0].batch);
            h.succeed(&claim.tasks[0], None, secs(3)).await;
        }
        assert_eq!(
            served,
            [a.batch, b.batch, a.batch, b.batch],
            "one at a time"
        );

        // Fewer units in use beats having waited longer: a is served before
        // b, but once b's task is done b has nothing running and a has one.
        let a5 = h.claim(10, 1, secs(4)).await;
        assert_eq!(payloads(&a5), ["a5"]);
        let b5 = h.claim(10, 1, secs(4)).await;
        assert_eq!(payloads(&b5), ["b5"]);
        h.succeed(&b5.tasks[0], None, secs(4)).await;
        let b6 = h.claim(10, 1, secs(4)).await;
        assert_eq!(payloads(&b6), ["b6"], "b runs nothing, a runs a5");
        h.succeed(&a5.tasks[0], None, secs(4)).await;
        h.succeed(&b6.tasks[0], None, secs(4)).await;

        let high = BatchSpec {
            priority: Priority::HIGH,
            ..batch(10, vec![task("h1"), task("h2")])
        };
        let high = h.insert(high, secs(4)).await;
        let urgent = TaskSpec {
            priority: Some(Priority::CRITICAL),
            ..task("u")
        };
        h.insert(batch(10, vec![urgent]), secs(4)).await;
        let claim = h.claim(20, 20, secs(5)).await;
        assert_eq!(
            payloads(&claim),
            ["u", "h1", "h2", "a6", "b7", "a7", "b8", "a8"]
        );
        assert_eq!(claimed(&claim, "h1").priority, Priority::HIGH);
        assert_eq!(h.batch(high.batch).await.priority, Priority::HIGH);
        h.finish().await;
    }

    /// With more batches claimable than a claim takes tasks, the claim still
    /// picks as if it ranked them all: by the head task's priority (not the
    /// batch's), fewest cost units running, served longest ago, older batch;
    /// skipping a batch whose head does not fit and one past its deadline.
    /// (A store that reads only the best few batches must not count those
    /// two among them, nor rank by the batch's priority.)
    pub async fn claim_ranks_many_batches<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let costing = |key: &str, cost| TaskSpec { cost, ..task(key) };
        // x: high priority, but once x0 runs its head x1 never fits.
        let x = BatchSpec {
            priority: Priority::HIGH,
            ..batch(3, vec![task("x0"), costing("x1", 3)])
        };
        h.insert(x, T0).await;
        assert_eq!(payloads(&h.claim(10, 1, T0).await), ["x0"]);
        // n0..n5: normal, three slots; n3 starts with a task of two units.
        for n in 0..6 {
            let first = if n == 3 { 2 } else { 1 };
            let tasks = vec![
                costing(&format!("n{n}a"), first),
                costing(&format!("n{n}b"), 2),
                costing(&format!("n{n}c"), 1),
            ];
            h.insert(batch(3, tasks), T0).await;
        }
        let claim = h.claim(10, 3, secs(1)).await;
        assert_eq!(payloads(&claim), ["n0a", "n1a", "n2a"]);
        // n1 runs nothing again, but was served after n0.
        h.succeed(claimed(&claim, "n1a"), None, secs(2)).await;
        // p: low priority, but its second task is critical.
        let urgent = TaskSpec {
            priority: Some(Priority::CRITICAL),
            ..task("p2")
        };
        let p = BatchSpec {
            priority: Priority::LOW,
            ..batch(5, vec![task("p1"), urgent])
        };
        h.insert(p, secs(2)).await;
        // d: high priority, past its deadline by the next claim.
        let mut d = BatchSpec {
            priority: Priority::HIGH,
            ..batch(3, vec![task("d1"), task("d2")])
        };
        d.policy.deadline = Some(secs(5));
        h.insert(d, secs(2)).await;

        let best = h.claim(100, 5, secs(10)).await;
        assert_eq!(
            payloads(&best),
            ["p2", "n3a", "n4a", "n5a", "n1b"],
            "p's head first; nothing of x (does not fit) nor d (past its deadline); \
             then the batches running nothing, served longest ago first"
        );
        let claim = h.claim(100, 4, secs(11)).await;
        assert_eq!(payloads(&claim), ["n0b", "n2b", "n4b", "n5b"]);
        // n0, n2, n4 and n5 are full; n3b (two units) does not fit next to
        // n3a, x1 never does; n1c (normal) goes before p1 (low).
        let claim = h.claim(100, 4, secs(12)).await;
        assert_eq!(payloads(&claim), ["n1c", "p1"]);
        h.succeed(claimed(&best, "n3a"), None, secs(13)).await;
        // n3b now fits its batch but not a claim of one unit, and n3c (one
        // unit) must not pass it.
        assert!(h.claim(1, 4, secs(14)).await.tasks.is_empty());
        assert_eq!(payloads(&h.claim(3, 4, secs(15)).await), ["n3b", "n3c"]);
        h.finish().await;
    }

    /// A report-and-claim whose completion stops the batch that ranked
    /// first still claims from the next one. (A store that reads only the
    /// best few batches must read one more per completion.)
    pub async fn claim_ranks_past_batches_its_completions_stop<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let r = BatchSpec {
            priority: Priority::HIGH,
            error_policy: crate::model::ErrorPolicy::stop(),
            ..batch(2, vec![task("r1"), task("r2"), task("r3")])
        };
        h.insert(r, T0).await;
        let claim = h.claim(10, 1, secs(1)).await;
        assert_eq!(payloads(&claim), ["r1"]);
        h.insert(batch(1, vec![task("s1")]), secs(1)).await;
        h.insert(batch(1, vec![task("t1")]), secs(1)).await;
        let request = ClaimRequest {
            worker: h.worker,
            capacity: 10,
            max_tasks: 1,
            lease: LEASE,
            batch: None,
        };
        let report = report(
            fence(&claim.tasks[0]),
            failure(Reason::ExitCode(1), None),
            Duration::from_secs(1),
        );
        let (_, claim) = h.complete_and_claim(vec![report], request, secs(2)).await;
        assert_eq!(payloads(&claim), ["s1"], "r is stopped by r1's failure");
        h.finish().await;
    }

    /// A retry that falls due ahead of a batch's head, and does not fit
    /// next to what the batch runs, keeps the batch from starting anything;
    /// the claim takes from the next batch. (A store that reads only the
    /// best few batches must read one more per retry due.)
    pub async fn claim_ranks_past_a_batch_a_due_retry_fills<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let big = TaskSpec {
            cost: 3,
            priority: Some(Priority::CRITICAL),
            ..task("big")
        };
        let mut r = BatchSpec {
            priority: Priority::HIGH,
            ..batch(3, vec![big, task("r1"), task("r2")])
        };
        r.policy.retry = crate::model::RetryPolicy::attempts(3);
        h.insert(r, T0).await;
        let claim = h.claim(10, 1, secs(1)).await;
        assert_eq!(payloads(&claim), ["big"]);
        let failed = failure(Reason::ExitCode(1), Some(secs(5)));
        let (result, _) = h.report(fence(&claim.tasks[0]), failed, secs(2)).await;
        assert_eq!(result, Ok(RetryWait));
        assert_eq!(payloads(&h.claim(10, 1, secs(3)).await), ["r1"]);
        h.insert(batch(1, vec![task("s1")]), secs(3)).await;
        // big is queued again ahead of r2, and needs all three of r's units.
        let claim = h.claim(10, 1, secs(5)).await;
        assert_eq!(payloads(&claim), ["s1"]);
        h.finish().await;
    }

    /// A turn that queues as many tasks in a batch as it takes from it
    /// still changes the batch's head: the next claim ranks the batch by
    /// the head it has now. (A store that keeps each batch's head must set
    /// it again when the queued tasks change, not only their number.)
    pub async fn claim_ranks_by_the_head_a_turn_leaves<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let with = |key: &str, priority| TaskSpec {
            priority: Some(priority),
            ..task(key)
        };
        let a = batch(
            10,
            vec![
                with("up", Priority::CRITICAL),
                with("q1", Priority::HIGH),
                with("q2", Priority::LOW),
                after("dep", &["up"]),
            ],
        );
        h.insert(a, T0).await;
        h.insert(batch(10, vec![task("b1")]), T0).await;
        let claim = h.claim(10, 1, secs(1)).await;
        assert_eq!(payloads(&claim), ["up"]);
        let request = ClaimRequest {
            worker: h.worker,
            capacity: 10,
            max_tasks: 1,
            lease: LEASE,
            batch: None,
        };
        // up's success queues dep (normal) and the claim takes q1 (high):
        // two queued before, two after, and the head is dep.
        let done = report(
            fence(&claim.tasks[0]),
            success(None),
            Duration::from_secs(1),
        );
        let (_, claim) = h.complete_and_claim(vec![done], request, secs(2)).await;
        assert_eq!(payloads(&claim), ["q1"]);
        // dep and b1 are both normal: b1's batch runs nothing, and wins.
        let claim = h.claim(10, 1, secs(3)).await;
        assert_eq!(payloads(&claim), ["b1"]);
        h.finish().await;
    }

    /// A paused batch starts nothing (another batch's tasks still do); its
    /// running tasks go on and may finish; resuming makes its tasks claimable
    /// again. Pause and resume emit paused → queued before the first start,
    /// paused → running after it, and nothing when there is nothing to change.
    pub async fn paused_batches_are_not_claimed<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let spec = BatchSpec {
            paused: true,
            ..batch(2, vec![task("a1"), task("a2")])
        };
        let a = h.insert(spec, T0).await;
        assert_eq!(batch_moves(&a.events), [(a.batch, B::Paused)]);
        let b = h.insert(batch(1, vec![task("b1")]), T0).await;
        let claim = h.claim(10, 10, T0).await;
        assert_eq!(payloads(&claim), ["b1"], "the paused batch starts nothing");
        let b1 = claim.tasks[0].clone();

        let events = h.resume(a.batch, secs(1)).await;
        assert_eq!(batch_moves(&events), [(a.batch, B::Queued)]);
        assert!(moves(&events).is_empty());
        let claim = h.claim(10, 1, secs(2)).await;
        assert_eq!(payloads(&claim), ["a1"]);
        assert_eq!(batch_moves(&claim.events), [(a.batch, B::Running)]);
        let a1 = claim.tasks[0].clone();

        let events = h.pause(a.batch, secs(3)).await;
        assert_eq!(batch_moves(&events), [(a.batch, B::Paused)]);
        assert!(moves(&events).is_empty(), "pausing cancels nothing");
        assert!(h.pause(a.batch, secs(3)).await.is_empty(), "already paused");
        assert!(h.claim(10, 10, secs(3)).await.tasks.is_empty());
        let renewal = h.renew(vec![fence(&a1)], secs(3)).await;
        assert!(renewal.cancel.is_empty() && renewal.lost.is_empty());
        let events = h.succeed(&a1, None, secs(4)).await;
        assert!(batch_moves(&events).is_empty(), "a2 is still queued");

        let events = h.resume(a.batch, secs(5)).await;
        assert_eq!(batch_moves(&events), [(a.batch, B::Running)]);
        assert!(h.resume(a.batch, secs(5)).await.is_empty(), "not paused");
        let claim = h.claim(10, 10, secs(6)).await;
        assert_eq!(payloads(&claim), ["a2"]);
        let events = h.succeed(&claim.tasks[0], None, secs(7)).await;
        assert_eq!(batch_moves(&events), [(a.batch, B::Succeeded)]);
        h.succeed(&b1, None, secs(7)).await;
        assert_eq!(h.batch(b.batch).await.state, B::Succeeded);

        assert!(h.pause(a.batch, secs(8)).await.is_empty(), "finished");
        assert!(h.resume(a.batch, secs(8)).await.is_empty(), "finished");
        assert!(matches!(
            h.store.batch_pause(BatchId(i64::MAX), secs(8)).await,
            Err(StoreError::UnknownBatch(_))
        ));
        h.finish().await;
    }

    /// Reports name (task, attempt): a wrong or old attempt is refused as
    /// `Stale` and changes nothing, a second completion of the same attempt
    /// too; renewing an attempt the worker does not own lists it in `lost`.
    /// After a rescue, the old attempt's late report cannot overwrite the new
    /// one, even within the same `task_complete` call.
    pub async fn completions_are_fenced_by_attempt<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let w1 = h.worker;
        let w2 = h
            .store
            .worker_register("other-host", 2, T0)
            .await
            .expect("worker_register");
        assert_ne!(w1, w2, "workers get distinct ids");
        let ins = h.insert(batch(2, vec![task("a"), task("b")]), T0).await;
        let claim = h.claim_by(w1, 10, 1, T0).await;
        let a = claim.tasks[0].clone();
        assert_eq!((a.payload.as_str(), a.attempt), ("a", Attempt(1)));
        let wrong = Fence {
            task: a.id,
            attempt: Attempt(2),
        };
        let never = Fence {
            task: a.id,
            attempt: Attempt(0),
        };
        for f in [wrong, never] {
            let (result, events) = h.report(f, success(Some("x")), secs(1)).await;
            assert_eq!(result, Err(Stale(f)));
            assert!(events.is_empty(), "{events:?}");
        }
        assert_eq!(h.state(a.id), (Running, None));
        let renewal = h.renew_by(w1, vec![wrong], secs(40), secs(1)).await;
        assert_eq!(renewal.lost, [wrong]);
        let renewal = h.renew_by(w1, vec![fence(&a)], secs(40), secs(1)).await;
        assert!(renewal.lost.is_empty() && renewal.cancel.is_empty());
        let renewal = h.renew_by(w2, vec![fence(&a)], secs(40), secs(1)).await;
        assert_eq!(renewal.lost, [fence(&a)], "w2 does not own the attempt");

        h.succeed(&a, None, secs(2)).await;
        let (result, events) = h.report(fence(&a), success(None), secs(3)).await;
        assert_eq!(result, Err(Stale(fence(&a))), "second completion");
        assert!(events.is_empty());
        let (result, _) = h
            .report(fence(&a), failure(Reason::Timeout, None), secs(3))
            .await;
        assert_eq!(result, Err(Stale(fence(&a))), "late failure after success");
        assert_eq!(h.state(a.id), (Succeeded, None));
        let renewal = h.renew_by(w1, vec![fence(&a)], secs(40), secs(3)).await;
        assert_eq!(renewal.lost, [fence(&a)], "finished attempts are lost");

        let claim = h.claim_by(w1, 10, 1, secs(4)).await;
        let b1 = claim.tasks[0].clone();
        assert_eq!(b1.lease_until, secs(34));
        let events = h.rescue(secs(35)).await;
        assert_eq!(moves(&events), [(b1.id, RetryWait, Some(Reason::Lost))]);
        let claim = h.claim_by(w2, 10, 1, secs(35)).await;
        let b2 = claim.tasks[0].clone();
        assert_eq!((b2.id, b2.attempt, b2.lost), (b1.id, Attempt(2), 1));
        let renewal = h.renew_by(w1, vec![fence(&b1)], secs(70), secs(36)).await;
        assert_eq!(renewal.lost, [fence(&b1)]);
        let renewal = h.renew_by(w2, vec![fence(&b2)], secs(70), secs(36)).await;
        assert!(renewal.lost.is_empty());
        let applied = h
            .complete_by(
                w2,
                vec![
                    report(fence(&b1), success(Some("old")), Duration::from_secs(1)),
                    report(fence(&b2), success(Some("new")), Duration::from_secs(1)),
                ],
                secs(37),
            )
            .await;
        assert_eq!(
            applied.results,
            [Err(Stale(fence(&b1))), Ok(TaskState::Succeeded)]
        );
        assert_moves(&applied.events, &[(b2.id, Succeeded, None)]);
        assert_eq!(batch_moves(&applied.events), [(ins.batch, B::Succeeded)]);
        h.finish().await;
    }

    /// A failed attempt with `retry_at` waits in `retry_wait` holding no
    /// concurrency slot; it is not claimable before `retry_at`, is claimable
    /// at it (attempt + 1), and `next_due` reports it meanwhile; the batch
    /// counts each retry. A failure without `retry_at` ends the task.
    pub async fn retry_waits_without_holding_a_slot<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let mut spec = batch(1, vec![task("a"), task("b")]);
        spec.policy.retry = crate::model::RetryPolicy::attempts(3);
        let ins = h.insert(spec, T0).await;
        let claim = h.claim(10, 10, T0).await;
        assert_eq!(payloads(&claim), ["a"]);
        let a1 = claim.tasks[0].clone();
        assert!(h.claim(10, 10, T0).await.tasks.is_empty(), "concurrency 1");

        let due = secs(10);
        let (result, events) = h
            .report(fence(&a1), failure(Reason::ExitCode(1), Some(due)), secs(1))
            .await;
        assert_eq!(result, Ok(RetryWait));
        assert_moves(&events, &[(a1.id, RetryWait, Some(Reason::ExitCode(1)))]);
        let info = h.batch(ins.batch).await;
        assert_eq!(info.retries, 1);
        assert_eq!(
            info.counts,
            counts(|c| {
                c.retry_wait = 1;
                c.queued = 1;
            })
        );
        let a = h
            .store
            .task_get(a1.id)
            .await
            .expect("live tasks are readable");
        assert_eq!((a.state, a.reason), (RetryWait, Some(Reason::ExitCode(1))));
        assert_eq!((a.attempt, a.lost), (Attempt(1), 0));
        assert_eq!(a.message.as_deref(), Some("failed: exit_code(1)"));

        let claim = h.claim(10, 10, secs(1)).await;
        assert_eq!(payloads(&claim), ["b"], "the retry holds no slot");
        assert_eq!(claim.next_due, Some(due));
        h.succeed(&claim.tasks[0], None, secs(2)).await;

        let early = h.claim(10, 10, Timestamp(due.0 - 1)).await;
        assert!(early.tasks.is_empty() && early.events.is_empty());
        assert_eq!(early.next_due, Some(due));
        let claim = h.claim(10, 10, due).await;
        assert_eq!(payloads(&claim), ["a"]);
        let a2 = claim.tasks[0].clone();
        assert_eq!((a2.id, a2.attempt, a2.lost), (a1.id, Attempt(2), 0));
        assert_eq!(claim.next_due, None);
        assert_moves(
            &claim.events,
            &[(a1.id, Queued, None), (a1.id, Running, None)],
        );

        let (result, _) = h
            .report(
                fence(&a2),
                failure(Reason::Timeout, Some(secs(15))),
                secs(11),
            )
            .await;
        assert_eq!(result, Ok(RetryWait));
        assert_eq!(h.batch(ins.batch).await.retries, 2);
        let claim = h.claim(10, 10, secs(20)).await;
        let a3 = claim.tasks[0].clone();
        assert_eq!((a3.id, a3.attempt), (a1.id, Attempt(3)));
        let (result, events) = h
            .report(fence(&a3), failure(Reason::ExitCode(1), None), secs(21))
            .await;
        assert_eq!(result, Ok(Failed));
        assert_moves(&events, &[(a1.id, Failed, Some(Reason::ExitCode(1)))]);
        assert_eq!(batch_moves(&events), [(ins.batch, B::Partial)]);
        let info = h.batch(ins.batch).await;
        assert_eq!(info.retries, 2);
        assert_eq!(
            info.counts,
            counts(|c| {
                c.failed = 1;
                c.succeeded = 1;
            })
        );
        h.finish().await;
    }

    /// A running attempt whose lease has passed (`now > lease_until`) is
    /// rescued: back to `retry_wait` with reason `lost`, claimable again at
    /// once with attempt + 1 and `lost` counted, until `max_lost` losses are
    /// spent and the task fails with `lost`. A renewed lease is not rescued.
    pub async fn expired_leases_are_rescued<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let mut spec = batch(2, vec![task("a"), task("b")]);
        spec.policy.retry.max_lost = 1;
        let ins = h.insert(spec, T0).await;
        let claim = h.claim(10, 10, T0).await;
        let (a, b) = (claimed(&claim, "a").clone(), claimed(&claim, "b").clone());
        assert_eq!(a.lease_until, secs(30));
        let renewal = h
            .renew_by(h.worker, vec![fence(&b)], secs(50), secs(20))
            .await;
        assert!(renewal.lost.is_empty() && renewal.cancel.is_empty());

        assert!(
            h.rescue(secs(30)).await.is_empty(),
            "the lease ends after secs(30)"
        );
        let events = h.rescue(secs(31)).await;
        assert_moves(&events, &[(a.id, RetryWait, Some(Reason::Lost))]);
        let info = h.batch(ins.batch).await;
        assert_eq!(info.retries, 1);
        assert_eq!(
            info.counts,
            counts(|c| {
                c.retry_wait = 1;
                c.running = 1;
            })
        );
        let got = h
            .store
            .task_get(a.id)
            .await
            .expect("live tasks are readable");
        assert_eq!((got.state, got.reason), (RetryWait, Some(Reason::Lost)));
        assert_eq!((got.attempt, got.lost), (Attempt(1), 1));

        let claim = h.claim(10, 10, secs(31)).await;
        assert_eq!(payloads(&claim), ["a"]);
        let a2 = claim.tasks[0].clone();
        assert_eq!((a2.attempt, a2.lost), (Attempt(2), 1));

        let events = h.rescue(secs(62)).await;
        assert_moves(
            &events,
            &[
                (a.id, Failed, Some(Reason::Lost)),
                (b.id, RetryWait, Some(Reason::Lost)),
            ],
        );
        assert!(batch_moves(&events).is_empty());
        let claim = h.claim(10, 10, secs(62)).await;
        assert_eq!(payloads(&claim), ["b"]);
        let b2 = claim.tasks[0].clone();
        assert_eq!((b2.attempt, b2.lost), (Attempt(2), 1));
        let renewal = h.renew(vec![fence(&a2), fence(&b2)], secs(63)).await;
        assert_eq!(renewal.lost, [fence(&a2)]);
        let events = h.succeed(&b2, None, secs(64)).await;
        assert_eq!(batch_moves(&events), [(ins.batch, B::Partial)]);
        let info = h.batch(ins.batch).await;
        assert_eq!(info.retries, 2);
        assert_eq!(
            info.counts,
            counts(|c| {
                c.failed = 1;
                c.succeeded = 1;
            })
        );
        assert!(h.rescue(secs(1000)).await.is_empty(), "nothing runs");
        h.finish().await;
    }

    /// A dependent (here listed before its upstream tasks: forward references
    /// are allowed) stays pending until every upstream task has succeeded,
    /// becomes queued in the same step as the last one's success, and its
    /// claim carries the upstream results in the order of its `after`.
    pub async fn dependents_wait_and_receive_outputs<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let ins = h
            .insert(
                batch(4, vec![after("c", &["a", "b"]), task("a"), task("b")]),
                T0,
            )
            .await;
        let [c, a, b] = ins.tasks[..] else {
            panic!("three tasks: {:?}", ins.tasks)
        };
        assert_eq!(h.state(c), (Pending, None));
        let claim = h.claim(10, 10, secs(1)).await;
        assert_eq!(sorted_payloads(&claim), ["a", "b"], "c waits");
        assert!(claim.tasks.iter().all(|t| t.has_dependents));
        let (ta, tb) = (claimed(&claim, "a").clone(), claimed(&claim, "b").clone());
        let events = h.succeed(&ta, Some("A-out"), secs(2)).await;
        assert_moves(&events, &[(a, Succeeded, None)]);
        assert!(
            h.claim(10, 10, secs(2)).await.tasks.is_empty(),
            "b still runs"
        );
        let events = h.succeed(&tb, None, secs(3)).await;
        assert_moves(&events, &[(b, Succeeded, None), (c, Queued, None)]);

        let claim = h.claim(10, 10, secs(4)).await;
        assert_eq!(payloads(&claim), ["c"]);
        let tc = &claim.tasks[0];
        assert!(!tc.has_dependents);
        let upstream: Vec<_> = tc
            .upstream
            .iter()
            .map(|u| (u.task, u.key.as_deref(), u.state, u.output.as_deref()))
            .collect();
        assert_eq!(
            upstream,
            [
                (a, Some("a"), Succeeded, Some("A-out")),
                (b, Some("b"), Succeeded, None),
            ]
        );
        let tc = tc.clone();
        let events = h.succeed(&tc, Some("C-out"), secs(5)).await;
        assert_eq!(batch_moves(&events), [(ins.batch, B::Succeeded)]);
        h.finish().await;
    }

    /// When an upstream task fails, its `success`-rule dependents are skipped
    /// with `upstream_failed` transitively, in the same step; `done`-rule
    /// dependents are released instead (also below a skipped task) and see
    /// how their upstream ended.
    pub async fn upstream_failure_skips_dependents<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let done = |key: &str, ups: &[&str]| TaskSpec {
            rule: crate::model::DependencyRule::Done,
            ..after(key, ups)
        };
        let tasks = vec![
            task("a"),
            after("b", &["a"]),
            after("c", &["b"]),
            done("d", &["a"]),
            task("e"),
            done("f", &["c"]),
        ];
        let ins = h.insert(batch(5, tasks), T0).await;
        let [a, b, c, d, _e, f] = ins.tasks[..] else {
            panic!("six tasks")
        };
        let claim = h.claim(10, 10, secs(1)).await;
        assert_eq!(sorted_payloads(&claim), ["a", "e"]);
        let (ta, te) = (claimed(&claim, "a").clone(), claimed(&claim, "e").clone());
        let (result, events) = h
            .report(fence(&ta), failure(Reason::ExitCode(2), None), secs(2))
            .await;
        assert_eq!(result, Ok(Failed));
        let uf = Some(Reason::UpstreamFailed);
        assert_moves(
            &events,
            &[
                (a, Failed, Some(Reason::ExitCode(2))),
                (b, Skipped, uf),
                (c, Skipped, uf),
                (d, Queued, None),
                (f, Queued, None),
            ],
        );
        assert!(batch_moves(&events).is_empty());
        let claim = h.claim(10, 10, secs(3)).await;
        assert_eq!(sorted_payloads(&claim), ["d", "f"]);
        let view = |t: &ClaimedTask<String, String>| -> Vec<_> {
            t.upstream
                .iter()
                .map(|u| {
                    (
                        u.task,
                        u.key.as_deref().map(str::to_owned),
                        u.state,
                        u.output.clone(),
                    )
                })
                .collect()
        };
        let (td, tf) = (claimed(&claim, "d").clone(), claimed(&claim, "f").clone());
        assert_eq!(view(&td), [(a, Some("a".to_owned()), Failed, None)]);
        assert_eq!(view(&tf), [(c, Some("c".to_owned()), Skipped, None)]);
        for t in [&td, &te, &tf] {
            h.succeed(t, None, secs(4)).await;
        }
        let info = h.batch(ins.batch).await;
        assert_eq!(info.state, B::Partial);
        assert_eq!(
            info.counts,
            counts(|c| {
                c.succeeded = 3;
                c.failed = 1;
                c.skipped = 2;
            })
        );
        h.finish().await;
    }

    /// A rerun of a finished batch runs its failed tasks again, in the same
    /// batch: succeeded tasks keep their results (their outputs reach the
    /// rerun tasks), attempt numbers go on (fencing), and the retry budget
    /// starts afresh. Without `downstream`, skipped dependents stay skipped;
    /// a later rerun with `downstream` picks them up. Stores that forget
    /// finished tasks refuse, changing nothing.
    pub async fn rerun_runs_failures_again_and_keeps_successes<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let tasks = vec![task("a"), after("b", &["a"]), after("c", &["b"]), task("d")];
        let ins = h.insert(batch(4, tasks), T0).await;
        let [a, b, c, d] = ins.tasks[..] else {
            panic!("four tasks")
        };
        let claim = h.claim(4, 4, secs(1)).await;
        let (ta, td) = (claimed(&claim, "a").clone(), claimed(&claim, "d").clone());
        h.succeed(&ta, Some("A"), secs(2)).await;
        let (result, _) = h
            .report(fence(&td), failure(Reason::ExitCode(1), None), secs(2))
            .await;
        assert_eq!(result, Ok(Failed));
        let claim = h.claim(4, 4, secs(3)).await;
        let tb = claimed(&claim, "b").clone();
        let (result, _) = h
            .report(fence(&tb), failure(Reason::Timeout, None), secs(4))
            .await;
        assert_eq!(result, Ok(Failed));
        assert_eq!(h.batch(ins.batch).await.state, B::Partial);

        if !h.store.retains_finished_tasks() {
            let err = h.rerun(ins.batch, false, secs(5)).await.unwrap_err();
            assert!(
                matches!(err, StoreError::Forgotten(id) if id == ins.batch),
                "{err}"
            );
            h.finish().await;
            return;
        }
        let rerun = h
            .rerun(ins.batch, false, secs(5))
            .await
            .expect("batch_rerun");
        assert_eq!(rerun.tasks, [b, d], "failed tasks, in batch order");
        assert_moves(&rerun.events, &[(b, Queued, None), (d, Queued, None)]);
        assert_eq!(batch_moves(&rerun.events), [(ins.batch, B::Running)]);

        let claim = h.claim(4, 4, secs(6)).await;
        assert_eq!(sorted_payloads(&claim), ["b", "d"]);
        let tb = claimed(&claim, "b").clone();
        assert_eq!((tb.attempt, tb.first_attempt), (Attempt(2), Attempt(2)));
        assert_eq!(tb.upstream.len(), 1);
        assert_eq!(
            (
                tb.upstream[0].task,
                tb.upstream[0].state,
                tb.upstream[0].output.as_deref()
            ),
            (a, Succeeded, Some("A")),
            "the succeeded upstream's output reaches the rerun task"
        );
        // A report from the first run's attempt is stale.
        let (stale, _) = h
            .report(
                Fence {
                    task: b,
                    attempt: Attempt(1),
                },
                success(None),
                secs(7),
            )
            .await;
        assert!(stale.is_err(), "{stale:?}");
        h.succeed(&tb, None, secs(7)).await;
        h.succeed(claimed(&claim, "d"), None, secs(7)).await;
        let info = h.batch(ins.batch).await;
        assert_eq!(info.state, B::Partial, "c is still skipped");
        assert_eq!(
            info.counts,
            counts(|n| {
                n.succeeded = 3;
                n.skipped = 1;
            })
        );

        let rerun = h
            .rerun(ins.batch, true, secs(8))
            .await
            .expect("batch_rerun");
        assert_eq!(rerun.tasks, [c]);
        let claim = h.claim(4, 4, secs(9)).await;
        assert_eq!(payloads(&claim), ["c"]);
        h.succeed(claimed(&claim, "c"), None, secs(10)).await;
        assert_eq!(h.batch(ins.batch).await.state, B::Succeeded);

        let rerun = h
            .rerun(ins.batch, true, secs(11))
            .await
            .expect("batch_rerun");
        assert!(
            rerun.tasks.is_empty() && rerun.events.is_empty(),
            "{rerun:?}"
        );
        assert_eq!(h.batch(ins.batch).await.state, B::Succeeded);
        h.finish().await;
    }

    /// A batch stopped by its error policy reruns its failed tasks and the
    /// tasks cancelled by the stop, with the policy reset, and can finish
    /// `succeeded`; tasks a user cancelled stay cancelled.
    pub async fn rerun_restarts_a_stopped_batch<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        if !h.store.retains_finished_tasks() {
            h.finish().await;
            return;
        }
        let mut spec = batch(1, vec![task("a"), task("b"), task("c")]);
        spec.error_policy = crate::model::ErrorPolicy::stop();
        let ins = h.insert(spec, T0).await;
        let [a, b, c] = ins.tasks[..] else {
            panic!("three tasks")
        };
        h.cancel_task(c, CancelMode::Graceful, secs(1))
            .await
            .expect("task_cancel");
        let claim = h.claim(1, 1, secs(1)).await;
        let ta = claimed(&claim, "a").clone();
        let (result, _) = h
            .report(fence(&ta), failure(Reason::Error, None), secs(2))
            .await;
        assert_eq!(result, Ok(Failed));
        let info = h.batch(ins.batch).await;
        assert_eq!(info.state, B::Failed);
        assert_eq!(h.state(b), (Cancelled, Some(Reason::BatchStopped)));

        let rerun = h
            .rerun(ins.batch, false, secs(3))
            .await
            .expect("batch_rerun");
        assert_eq!(rerun.tasks, [a, b]);
        let claim = h.claim(1, 1, secs(4)).await;
        h.succeed(claimed(&claim, "a"), None, secs(5)).await;
        let claim = h.claim(1, 1, secs(6)).await;
        h.succeed(claimed(&claim, "b"), None, secs(7)).await;
        let info = h.batch(ins.batch).await;
        assert_eq!(info.state, B::Partial, "c was cancelled by a user");
        assert_eq!(h.state(c), (Cancelled, Some(Reason::ByUser)));
        h.finish().await;
    }

    /// Only a finished batch can be rerun.
    pub async fn rerun_refuses_an_unfinished_batch<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let ins = h.insert(batch(1, vec![task("a")]), T0).await;
        let err = h.rerun(ins.batch, true, secs(1)).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Unfinished(id) if id == ins.batch),
            "{err}"
        );
        let err = h
            .rerun(BatchId(ins.batch.0 + 1000), true, secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::UnknownBatch(_)), "{err}");
        h.finish().await;
    }

    /// `task_cancel` ends a waiting task at once (`cancelled{by_user}`), which
    /// skips its dependents; a running task is only asked to stop, through
    /// `lease_renew`, until its worker reports `Cancelled{ByUser}`. Cancelling
    /// a finished task changes nothing; an unknown task is an error.
    pub async fn task_cancel_cancels_waiting_and_asks_running<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let tasks = vec![
            task("a"),
            after("b", &["a"]),
            task("c"),
            task("d"),
            after("f", &["d"]),
        ];
        let ins = h.insert(batch(2, tasks), T0).await;
        let [a, b, c, d, f] = ins.tasks[..] else {
            panic!("five tasks")
        };
        let by_user = Some(Reason::ByUser);
        let events = h
            .cancel_task(a, CancelMode::Graceful, secs(1))
            .await
            .unwrap();
        assert_moves(
            &events,
            &[
                (a, Cancelled, by_user),
                (b, Skipped, Some(Reason::UpstreamFailed)),
            ],
        );
        let events = h
            .cancel_task(f, CancelMode::Graceful, secs(1))
            .await
            .unwrap();
        assert_moves(&events, &[(f, Cancelled, by_user)]);

        let claim = h.claim(10, 10, secs(2)).await;
        assert_eq!(sorted_payloads(&claim), ["c", "d"]);
        let (tc, td) = (claimed(&claim, "c").clone(), claimed(&claim, "d").clone());
        let events = h
            .cancel_task(c, CancelMode::Graceful, secs(3))
            .await
            .unwrap();
        assert!(
            events.is_empty(),
            "a running task ends when its worker says so"
        );
        assert_eq!(h.state(c), (Running, None));
        let want = CancelRequest {
            fence: fence(&tc),
            mode: CancelMode::Graceful,
            reason: Reason::ByUser,
        };
        for now in [secs(3), secs(4)] {
            let renewal = h.renew(vec![fence(&tc), fence(&td)], now).await;
            assert_eq!(renewal.cancel, [want], "asked until it ends");
            assert!(renewal.lost.is_empty());
        }
        let (result, events) = h
            .report(fence(&tc), cancelled(Reason::ByUser), secs(5))
            .await;
        assert_eq!(result, Ok(Cancelled));
        assert_moves(&events, &[(c, Cancelled, by_user)]);
        let renewal = h.renew(vec![fence(&td)], secs(5)).await;
        assert!(renewal.cancel.is_empty());

        match h.cancel_task(c, CancelMode::Forced, secs(6)).await {
            Ok(events) => assert!(events.is_empty(), "already finished: {events:?}"),
            Err(StoreError::UnknownTask(t)) => {
                assert_eq!(t, c);
                assert!(!h.store.retains_finished_tasks());
            }
            Err(e) => panic!("cancel of a finished task: {e}"),
        }
        assert!(matches!(
            h.cancel_task(TaskId(i64::MAX), CancelMode::Forced, secs(6))
                .await,
            Err(StoreError::UnknownTask(TaskId(i64::MAX)))
        ));
        let events = h.succeed(&td, None, secs(7)).await;
        assert_moves(&events, &[(d, Succeeded, None)]);
        assert_eq!(batch_moves(&events), [(ins.batch, B::Partial)]);
        h.finish().await;
    }

    /// `batch_cancel` cancels every waiting task (pending, queued,
    /// retry_wait) with `by_user` at once, starts nothing more, and asks the
    /// running ones to stop in the given mode; the batch ends `cancelled`
    /// once they have reported, whether they were cancelled or finished first.
    pub async fn batch_cancel_cancels_everything<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let mut spec = batch(
            3,
            vec![
                task("a"),
                task("b"),
                task("c"),
                task("d"),
                after("e", &["d"]),
            ],
        );
        spec.policy.retry = crate::model::RetryPolicy::attempts(2);
        let ins = h.insert(spec, T0).await;
        let [a, b, c, d, e] = ins.tasks[..] else {
            panic!("five tasks")
        };
        let claim = h.claim(10, 3, secs(1)).await;
        assert_eq!(sorted_payloads(&claim), ["a", "b", "c"]);
        let (ta, tb, tc) = (
            claimed(&claim, "a").clone(),
            claimed(&claim, "b").clone(),
            claimed(&claim, "c").clone(),
        );
        let (result, _) = h
            .report(
                fence(&tb),
                failure(Reason::ExitCode(1), Some(secs(100))),
                secs(2),
            )
            .await;
        assert_eq!(result, Ok(RetryWait));

        let events = h.cancel_batch(ins.batch, CancelMode::Forced, secs(3)).await;
        let by_user = Some(Reason::ByUser);
        assert_moves(
            &events,
            &[
                (b, Cancelled, by_user),
                (d, Cancelled, by_user),
                (e, Cancelled, by_user),
            ],
        );
        assert!(batch_moves(&events).is_empty(), "a and c still run");
        assert!(h.claim(10, 10, secs(200)).await.tasks.is_empty());
        let renewal = h.renew(vec![fence(&ta), fence(&tc)], secs(200)).await;
        let mut cancel = renewal.cancel.clone();
        cancel.sort_by_key(|r| r.fence.task);
        let ask = |t: &ClaimedTask<String, String>| CancelRequest {
            fence: fence(t),
            mode: CancelMode::Forced,
            reason: Reason::ByUser,
        };
        assert_eq!(cancel, [ask(&ta), ask(&tc)]);

        let (result, events) = h
            .report(fence(&ta), cancelled(Reason::ByUser), secs(201))
            .await;
        assert_eq!(result, Ok(Cancelled));
        assert_moves(&events, &[(a, Cancelled, by_user)]);
        assert!(batch_moves(&events).is_empty());
        let events = h.succeed(&tc, None, secs(202)).await;
        assert_moves(&events, &[(c, Succeeded, None)]);
        assert_eq!(batch_moves(&events), [(ins.batch, B::Cancelled)]);
        let info = h.batch(ins.batch).await;
        assert_eq!(info.finished_at, Some(secs(202)));
        assert_eq!(
            info.counts,
            counts(|c| {
                c.cancelled = 4;
                c.succeeded = 1;
            })
        );
        assert!(
            h.cancel_batch(ins.batch, CancelMode::Forced, secs(203))
                .await
                .is_empty()
        );
        assert!(matches!(
            h.store
                .batch_cancel(BatchId(i64::MAX), CancelMode::Forced, secs(203))
                .await,
            Err(StoreError::UnknownBatch(_))
        ));
        h.finish().await;
    }

    /// Error policy `stop`: the first failure cancels every waiting task with
    /// `batch_stopped` in the same step and starts nothing new, but leaves
    /// running tasks alone (no cancel request) and accepts their results; the
    /// batch ends `failed`.
    pub async fn error_policy_stop<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let spec = BatchSpec {
            error_policy: crate::model::ErrorPolicy::stop(),
            ..batch(2, vec![task("a"), task("b"), task("c"), task("d")])
        };
        let ins = h.insert(spec, T0).await;
        let [a, _b, c, d] = ins.tasks[..] else {
            panic!("four tasks")
        };
        let claim = h.claim(10, 10, secs(1)).await;
        assert_eq!(sorted_payloads(&claim), ["a", "b"]);
        let (ta, tb) = (claimed(&claim, "a").clone(), claimed(&claim, "b").clone());
        let (result, events) = h
            .report(fence(&ta), failure(Reason::ExitCode(3), None), secs(2))
            .await;
        assert_eq!(result, Ok(Failed));
        let stopped = Some(Reason::BatchStopped);
        assert_moves(
            &events,
            &[
                (a, Failed, Some(Reason::ExitCode(3))),
                (c, Cancelled, stopped),
                (d, Cancelled, stopped),
            ],
        );
        assert!(batch_moves(&events).is_empty(), "b still runs");
        let renewal = h.renew(vec![fence(&tb)], secs(3)).await;
        assert!(renewal.cancel.is_empty() && renewal.lost.is_empty());
        assert!(h.claim(10, 10, secs(3)).await.tasks.is_empty());
        let events = h.succeed(&tb, Some("late"), secs(4)).await;
        assert_eq!(batch_moves(&events), [(ins.batch, B::Failed)]);
        let info = h.batch(ins.batch).await;
        assert_eq!(
            info.counts,
            counts(|c| {
                c.failed = 1;
                c.succeeded = 1;
                c.cancelled = 2;
            })
        );
        h.finish().await;
    }

    /// Error policy `abort`: like `stop`, and running tasks are asked to stop
    /// at once (`Forced`, `batch_stopped`) through `lease_renew`. A retryable
    /// failure reported after the batch stopped is not retried.
    pub async fn error_policy_abort<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let mut spec = BatchSpec {
            error_policy: crate::model::ErrorPolicy::abort(),
            ..batch(3, vec![task("a"), task("b"), task("c"), task("d")])
        };
        spec.policy.retry = crate::model::RetryPolicy::attempts(3);
        let ins = h.insert(spec, T0).await;
        let [a, b, c, d] = ins.tasks[..] else {
            panic!("four tasks")
        };
        let claim = h.claim(10, 10, secs(1)).await;
        assert_eq!(sorted_payloads(&claim), ["a", "b", "c"]);
        let (ta, tb, tc) = (
            claimed(&claim, "a").clone(),
            claimed(&claim, "b").clone(),
            claimed(&claim, "c").clone(),
        );
        let (result, events) = h
            .report(fence(&ta), failure(Reason::StartFailed, None), secs(2))
            .await;
        assert_eq!(result, Ok(Failed));
        let stopped = Some(Reason::BatchStopped);
        assert_moves(
            &events,
            &[
                (a, Failed, Some(Reason::StartFailed)),
                (d, Cancelled, stopped),
            ],
        );
        let renewal = h.renew(vec![fence(&tb), fence(&tc)], secs(3)).await;
        let mut cancel = renewal.cancel.clone();
        cancel.sort_by_key(|r| r.fence.task);
        let ask = |t: &ClaimedTask<String, String>| CancelRequest {
            fence: fence(t),
            mode: CancelMode::Forced,
            reason: Reason::BatchStopped,
        };
        assert_eq!(cancel, [ask(&tb), ask(&tc)]);
        let (result, _) = h
            .report(fence(&tb), cancelled(Reason::BatchStopped), secs(4))
            .await;
        assert_eq!(result, Ok(Cancelled));
        let (result, events) = h
            .report(fence(&tc), failure(Reason::Timeout, Some(secs(5))), secs(4))
            .await;
        assert_eq!(result, Ok(Failed), "no retry once the batch stopped");
        assert_moves(&events, &[(c, Failed, Some(Reason::Timeout))]);
        assert_eq!(batch_moves(&events), [(ins.batch, B::Failed)]);
        let info = h.batch(ins.batch).await;
        assert_eq!(info.retries, 0);
        assert_eq!(
            info.counts,
            counts(|x| {
                x.failed = 2;
                x.cancelled = 2;
            })
        );
        assert_eq!(h.state(b), (Cancelled, stopped));
        h.finish().await;
    }

    /// A `Count(2)` threshold lets the first failure pass and trips at the
    /// second: the remaining tasks are cancelled and, nothing running, the
    /// batch ends `failed` in the same step.
    pub async fn error_policy_threshold_count<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let policy = crate::model::ErrorPolicy::stop().after(crate::model::Threshold::Count(2));
        let spec = BatchSpec {
            error_policy: policy,
            ..batch(1, vec![task("a"), task("b"), task("c"), task("d")])
        };
        let ins = h.insert(spec, T0).await;
        let [a, b, c, d] = ins.tasks[..] else {
            panic!("four tasks")
        };
        let claim = h.claim(10, 10, secs(1)).await;
        assert_eq!(payloads(&claim), ["a"]);
        let (result, events) = h
            .report(
                fence(&claim.tasks[0]),
                failure(Reason::ExitCode(1), None),
                secs(2),
            )
            .await;
        assert_eq!(result, Ok(Failed));
        assert_moves(&events, &[(a, Failed, Some(Reason::ExitCode(1)))]);
        assert!(batch_moves(&events).is_empty());
        let claim = h.claim(10, 10, secs(3)).await;
        assert_eq!(
            payloads(&claim),
            ["b"],
            "one failure does not trip Count(2)"
        );
        let (result, events) = h
            .report(
                fence(&claim.tasks[0]),
                failure(Reason::Signal(9), None),
                secs(4),
            )
            .await;
        assert_eq!(result, Ok(Failed));
        let stopped = Some(Reason::BatchStopped);
        assert_moves(
            &events,
            &[
                (b, Failed, Some(Reason::Signal(9))),
                (c, Cancelled, stopped),
                (d, Cancelled, stopped),
            ],
        );
        assert_eq!(batch_moves(&events), [(ins.batch, B::Failed)]);
        h.finish().await;
    }

    /// Error policy `continue` (the default) never stops the batch: every
    /// task runs, and a batch with failures ends `partial`.
    pub async fn error_policy_continue<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let ins = h
            .insert(batch(1, vec![task("a"), task("b"), task("c")]), T0)
            .await;
        for (i, key) in ["a", "b"].into_iter().enumerate() {
            let now = secs(i as u64 + 1);
            let claim = h.claim(10, 10, now).await;
            assert_eq!(payloads(&claim), [key]);
            let (result, events) = h
                .report(fence(&claim.tasks[0]), failure(Reason::Error, None), now)
                .await;
            assert_eq!(result, Ok(Failed));
            assert_eq!(moves(&events).len(), 1, "{events:?}");
        }
        let claim = h.claim(10, 10, secs(3)).await;
        assert_eq!(payloads(&claim), ["c"]);
        let events = h.succeed(&claim.tasks[0], None, secs(4)).await;
        assert_eq!(batch_moves(&events), [(ins.batch, B::Partial)]);
        let info = h.batch(ins.batch).await;
        assert_eq!(
            info.counts,
            counts(|c| {
                c.failed = 2;
                c.succeeded = 1;
            })
        );
        h.finish().await;
    }

    /// `next_due` reports the earliest deadline of an unfinished batch; at
    /// the deadline, `batch_expire` cancels the waiting tasks with `deadline`
    /// and asks running ones to stop (`Forced`); the batch ends `failed`, at
    /// once if nothing runs, else once the running task has reported.
    pub async fn deadline_cancels_remaining_tasks<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let mut spec = batch(1, vec![task("a"), task("b"), after("c", &["b"])]);
        spec.policy.deadline = Some(secs(60));
        let first = h.insert(spec, T0).await;
        let [a, b, c] = first.tasks[..] else {
            panic!("three tasks")
        };
        let claim = h.claim(10, 10, T0).await;
        assert_eq!(payloads(&claim), ["a"]);
        assert_eq!(claim.next_due, Some(secs(60)));
        let ta = claim.tasks[0].clone();

        let mut spec = batch(1, vec![task("x"), task("y")]);
        spec.policy.deadline = Some(secs(10));
        let second = h.insert(spec, secs(1)).await;
        let [x, y] = second.tasks[..] else {
            panic!("two tasks")
        };
        assert_eq!(h.claim(10, 0, secs(1)).await.next_due, Some(secs(10)));
        assert!(h.expire(Timestamp(secs(10).0 - 1)).await.is_empty());
        let events = h.expire(secs(10)).await;
        let deadline = Some(Reason::Deadline);
        assert_moves(
            &events,
            &[(x, Cancelled, deadline), (y, Cancelled, deadline)],
        );
        assert_eq!(batch_moves(&events), [(second.batch, B::Failed)]);
        assert_eq!(h.claim(10, 0, secs(10)).await.next_due, Some(secs(60)));

        let events = h.expire(secs(61)).await;
        assert_moves(
            &events,
            &[(b, Cancelled, deadline), (c, Cancelled, deadline)],
        );
        assert!(batch_moves(&events).is_empty(), "a still runs");
        let renewal = h.renew(vec![fence(&ta)], secs(62)).await;
        let want = CancelRequest {
            fence: fence(&ta),
            mode: CancelMode::Forced,
            reason: Reason::Deadline,
        };
        assert_eq!(renewal.cancel, [want]);
        let claim = h.claim(10, 10, secs(62)).await;
        assert!(claim.tasks.is_empty());
        assert_eq!(claim.next_due, None, "the deadline has been dealt with");
        let (result, events) = h
            .report(fence(&ta), cancelled(Reason::Deadline), secs(63))
            .await;
        assert_eq!(result, Ok(Cancelled));
        assert_moves(&events, &[(a, Cancelled, deadline)]);
        assert_eq!(batch_moves(&events), [(first.batch, B::Failed)]);
        assert!(h.expire(secs(100)).await.is_empty());

        let mut spec = batch(1, vec![task("z")]);
        spec.policy.deadline = Some(secs(1000));
        let third = h.insert(spec, secs(100)).await;
        let claim = h.claim(10, 10, secs(100)).await;
        assert_eq!(claim.next_due, Some(secs(1000)));
        let events = h.succeed(&claim.tasks[0], None, secs(101)).await;
        assert_eq!(batch_moves(&events), [(third.batch, B::Succeeded)]);
        let claim = h.claim(10, 10, secs(102)).await;
        assert_eq!(claim.next_due, None, "finished batches have no deadline");
        assert!(h.expire(secs(2000)).await.is_empty());
        h.finish().await;
    }

    /// An open batch is inserted without tasks, takes appended tasks (their
    /// indices continue, invalid appends store nothing) and does not finish
    /// while open, even with every task done; sealing finishes it. Appending
    /// to a sealed or closed batch is `Sealed`.
    pub async fn open_batch_finishes_when_sealed<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let open = |concurrency| BatchSpec {
            open: true,
            ..batch(concurrency, vec![])
        };
        let ins = h.insert(open(2), T0).await;
        let id = ins.batch;
        assert!(ins.tasks.is_empty());
        assert_eq!(batch_moves(&ins.events), [(id, B::Queued)]);
        assert_eq!(ins.events.len(), 1);
        let info = h.batch(id).await;
        assert!(info.open);
        assert_eq!(info.state, B::Queued);

        let appended = h
            .append(id, vec![task("a"), task("b")], secs(1))
            .await
            .unwrap();
        assert_eq!((appended.first_index, appended.stopped), (0, false));
        let new = created(&appended.events);
        assert_eq!(new.iter().map(|(_, i)| *i).collect::<Vec<_>>(), [0, 1]);
        assert!(new.iter().all(|(t, _)| h.state(*t) == (Queued, None)));

        let bad = h
            .append(id, vec![task("ok"), after("x", &["a"])], secs(1))
            .await;
        assert!(
            matches!(
                bad,
                Err(StoreError::Submit(
                    crate::model::SubmitError::AfterInOpenBatch
                ))
            ),
            "{bad:?}"
        );
        let heavy = TaskSpec {
            cost: 3,
            ..task("heavy")
        };
        match h.append(id, vec![task("ok"), heavy], secs(1)).await {
            Err(StoreError::Submit(crate::model::SubmitError::Invalid(f))) => {
                assert_eq!(f.field, "cost")
            }
            other => panic!("cost above concurrency: {other:?}"),
        }

        let claim = h.claim(10, 10, secs(2)).await;
        assert_eq!(
            sorted_payloads(&claim),
            ["a", "b"],
            "the refused appends stored nothing"
        );
        for t in &claim.tasks {
            let events = h.succeed(t, None, secs(3)).await;
            assert!(
                batch_moves(&events).is_empty(),
                "open batches do not finish"
            );
        }
        assert_eq!(h.batch(id).await.state, B::Running);

        let appended = h.append(id, vec![task("c")], secs(4)).await.unwrap();
        assert_eq!((appended.first_index, appended.stopped), (2, false));
        let claim = h.claim(10, 10, secs(4)).await;
        assert_eq!(payloads(&claim), ["c"]);
        assert_eq!(claim.tasks[0].index, 2);
        h.succeed(&claim.tasks[0], None, secs(5)).await;
        let events = h.seal(id, secs(6)).await;
        assert_eq!(batch_moves(&events), [(id, B::Succeeded)]);
        let info = h.batch(id).await;
        assert!(!info.open);
        assert_eq!(info.finished_at, Some(secs(6)));
        assert!(matches!(
            h.append(id, vec![task("d")], secs(7)).await,
            Err(StoreError::Sealed(b)) if b == id
        ));
        assert!(
            h.seal(id, secs(7)).await.is_empty(),
            "sealing twice changes nothing"
        );

        let early = h.insert(open(1), secs(8)).await.batch;
        h.append(early, vec![task("x")], secs(8)).await.unwrap();
        assert!(h.seal(early, secs(9)).await.is_empty(), "x has not run");
        assert!(!h.batch(early).await.open);
        let claim = h.claim(10, 10, secs(10)).await;
        let events = h.succeed(&claim.tasks[0], None, secs(11)).await;
        assert_eq!(batch_moves(&events), [(early, B::Succeeded)]);

        let empty = h.insert(open(1), secs(12)).await.batch;
        let events = h.seal(empty, secs(13)).await;
        assert_eq!(batch_moves(&events), [(empty, B::Succeeded)]);

        let closed = h.insert(batch(1, vec![task("y")]), secs(14)).await.batch;
        assert!(matches!(
            h.append(closed, vec![task("z")], secs(14)).await,
            Err(StoreError::Sealed(b)) if b == closed
        ));
        assert!(matches!(
            h.append(BatchId(i64::MAX), vec![task("z")], secs(14)).await,
            Err(StoreError::UnknownBatch(_))
        ));
        h.finish().await;
    }

    /// An open batch that has stopped (cancelled by a user, tripped by its
    /// error policy, past its deadline) takes no more tasks: an append stores
    /// nothing, emits nothing and says `stopped`, also once the batch has
    /// been sealed. A cancelled or expired open batch finishes once nothing
    /// runs; one stopped by its error policy finishes when it is sealed.
    pub async fn stopped_open_batch_refuses_appends<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let open = |concurrency| BatchSpec {
            open: true,
            ..batch(concurrency, vec![])
        };
        async fn refused<S: SuiteStore>(h: &mut Harness<S>, batch: BatchId, now: Timestamp) {
            let before = h.batch(batch).await;
            let appended = h
                .append(batch, vec![task("late1"), task("late2")], now)
                .await
                .expect("appending to a stopped batch is not an error");
            assert!(appended.stopped, "{appended:?}");
            assert!(appended.events.is_empty(), "nothing stored: {appended:?}");
            let after = h.batch(batch).await;
            assert_eq!((after.state, after.counts), (before.state, before.counts));
        }

        let cancelled_batch = h.insert(open(2), T0).await.batch;
        let first = h
            .append(cancelled_batch, vec![task("x")], T0)
            .await
            .unwrap();
        let x = created(&first.events)[0].0;
        let events = h
            .cancel_batch(cancelled_batch, CancelMode::Graceful, secs(1))
            .await;
        assert_moves(&events, &[(x, Cancelled, Some(Reason::ByUser))]);
        assert_eq!(batch_moves(&events), [(cancelled_batch, B::Cancelled)]);
        refused(&mut h, cancelled_batch, secs(2)).await;
        assert!(h.claim(10, 10, secs(2)).await.tasks.is_empty());
        assert!(h.seal(cancelled_batch, secs(3)).await.is_empty());
        refused(&mut h, cancelled_batch, secs(3)).await;

        let spec = BatchSpec {
            error_policy: crate::model::ErrorPolicy::stop(),
            ..open(1)
        };
        let policy_batch = h.insert(spec, secs(4)).await.batch;
        let appended = h
            .append(policy_batch, vec![task("p"), task("q")], secs(4))
            .await
            .unwrap();
        let [(p, _), (q, _)] = created(&appended.events)[..] else {
            panic!("two tasks")
        };
        let claim = h.claim(10, 10, secs(5)).await;
        assert_eq!(payloads(&claim), ["p"]);
        let (_, events) = h
            .report(
                fence(&claim.tasks[0]),
                failure(Reason::ExitCode(1), None),
                secs(6),
            )
            .await;
        let stopped = Some(Reason::BatchStopped);
        assert_moves(
            &events,
            &[
                (p, Failed, Some(Reason::ExitCode(1))),
                (q, Cancelled, stopped),
            ],
        );
        assert!(batch_moves(&events).is_empty(), "still open");
        refused(&mut h, policy_batch, secs(7)).await;
        let events = h.seal(policy_batch, secs(8)).await;
        assert_eq!(batch_moves(&events), [(policy_batch, B::Failed)]);
        refused(&mut h, policy_batch, secs(9)).await;

        let mut spec = open(1);
        spec.policy.deadline = Some(secs(20));
        let late_batch = h.insert(spec, secs(10)).await.batch;
        let appended = h
            .append(late_batch, vec![task("s")], secs(10))
            .await
            .unwrap();
        let s = created(&appended.events)[0].0;
        let events = h.expire(secs(20)).await;
        assert_moves(&events, &[(s, Cancelled, Some(Reason::Deadline))]);
        assert_eq!(batch_moves(&events), [(late_batch, B::Failed)]);
        refused(&mut h, late_batch, secs(21)).await;
        h.finish().await;
    }

    /// A batch is `queued` until its first task starts, `running` from then
    /// (one event, stamped `started_at`), and ends `succeeded` when every
    /// task succeeded, `partial` when some failed under `continue`; an empty
    /// closed batch ends `succeeded` at insert.
    pub async fn batch_states_follow_progress<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let empty = h.insert(batch(1, vec![]), T0).await;
        assert_eq!(
            batch_moves(&empty.events),
            [(empty.batch, B::Queued), (empty.batch, B::Succeeded)]
        );
        let info = h.batch(empty.batch).await;
        assert_eq!(info.state, B::Succeeded);
        assert_eq!((info.started_at, info.finished_at), (None, Some(T0)));

        let good = h
            .insert(batch(1, vec![task("a1"), task("a2")]), T0)
            .await
            .batch;
        let partial = h
            .insert(batch(1, vec![task("p1"), task("p2")]), T0)
            .await
            .batch;
        assert_eq!(h.batch(good).await.state, B::Queued);
        let claim = h.claim(10, 1, secs(1)).await;
        assert_eq!(payloads(&claim), ["a1"]);
        assert_eq!(batch_moves(&claim.events), [(good, B::Running)]);
        let a1 = claim.tasks[0].clone();
        let info = h.batch(good).await;
        assert_eq!((info.state, info.started_at), (B::Running, Some(secs(1))));
        let claim = h.claim(10, 1, secs(2)).await;
        assert_eq!(payloads(&claim), ["p1"]);
        assert_eq!(batch_moves(&claim.events), [(partial, B::Running)]);
        let p1 = claim.tasks[0].clone();
        assert!(batch_moves(&h.succeed(&a1, None, secs(3)).await).is_empty());
        let claim = h.claim(10, 1, secs(3)).await;
        assert_eq!(payloads(&claim), ["a2"]);
        assert!(batch_moves(&claim.events).is_empty(), "already running");
        let events = h.succeed(&claim.tasks[0], None, secs(4)).await;
        assert_eq!(batch_moves(&events), [(good, B::Succeeded)]);
        let info = h.batch(good).await;
        assert_eq!(
            (info.started_at, info.finished_at),
            (Some(secs(1)), Some(secs(4)))
        );

        let (result, _) = h
            .report(fence(&p1), failure(Reason::ExitCode(1), None), secs(5))
            .await;
        assert_eq!(result, Ok(Failed));
        let claim = h.claim(10, 1, secs(6)).await;
        assert_eq!(payloads(&claim), ["p2"]);
        let events = h.succeed(&claim.tasks[0], None, secs(7)).await;
        assert_eq!(batch_moves(&events), [(partial, B::Partial)]);

        let history: Vec<_> = h
            .log
            .events
            .iter()
            .filter(|e| e.batch == good)
            .filter_map(|e| match e.kind {
                EventKind::Batch { from, to } => Some((from, to)),
                EventKind::Task { .. } => None,
            })
            .collect();
        assert_eq!(
            history,
            [
                (None, B::Queued),
                (Some(B::Queued), B::Running),
                (Some(B::Running), B::Succeeded),
            ]
        );
        h.finish().await;
    }

    /// Subscribers receive every event the operations return, once, in `seq`
    /// order, starting from when they subscribed; operations that change
    /// nothing (and refused ones) publish nothing.
    pub async fn events_reach_subscribers_in_order<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let ins = h
            .insert(batch(2, vec![task("a"), after("b", &["a"])]), T0)
            .await;
        let claim = h.claim(10, 10, secs(1)).await;
        let ta = claim.tasks[0].clone();
        let mut late = h.store.events();
        let from = h.log.events.len();
        assert!(h.try_insert(batch(0, vec![]), secs(1)).await.is_err());
        assert!(h.claim(10, 10, secs(1)).await.events.is_empty());
        h.renew(vec![fence(&ta)], secs(1)).await;
        h.succeed(&ta, Some("out"), secs(2)).await;
        let claim = h.claim(10, 10, secs(3)).await;
        assert_eq!(claim.tasks[0].upstream[0].output.as_deref(), Some("out"));
        h.succeed(&claim.tasks[0], None, secs(4)).await;
        assert_eq!(h.batch(ins.batch).await.state, B::Succeeded);
        let want = &h.log.events[from..];
        assert_eq!(want.len(), 5, "{want:#?}");
        let got = receive(&mut late, want.len()).await;
        assert_eq!(
            got, want,
            "a late subscriber sees what happened after it subscribed"
        );
        assert!(matches!(
            late.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
        h.finish().await;
    }

    /// Operations running at the same time from several tasks produce events
    /// whose `seq` numbers are unique and reach subscribers in `seq` order,
    /// each once; every task ends exactly once.
    pub async fn concurrent_operations_publish_in_order<S: SuiteStore>(store: S) {
        const BATCHES: usize = 10;
        const TASKS: usize = 100;
        const WORKERS: usize = 8;
        let mut h = Harness::new(store).await;
        let mut ids = Vec::new();
        for b in 0..BATCHES {
            let tasks = (0..TASKS).map(|i| task(&format!("{b}-{i}"))).collect();
            ids.push(h.insert(batch(TASKS as u32, tasks), T0).await.batch);
        }
        let now = secs(1);
        let mut workers = Vec::new();
        for _ in 0..WORKERS {
            let store = h.store.clone();
            workers.push(tokio::spawn(async move {
                let worker = store
                    .worker_register("concurrent", 1, T0)
                    .await
                    .expect("worker_register");
                let mut events: Vec<Event> = Vec::new();
                let mut done = 0;
                loop {
                    let request = ClaimRequest {
                        worker,
                        capacity: 2,
                        max_tasks: 2,
                        lease: LEASE,
                        batch: None,
                    };
                    let claim = store.task_claim(request, now).await.expect("task_claim");
                    events.extend(claim.events.iter().cloned());
                    if claim.tasks.is_empty() {
                        return (events, done);
                    }
                    for t in claim.tasks {
                        let c = report(fence(&t), success(None), Duration::from_millis(1));
                        let applied = store
                            .task_complete(worker, vec![c], now)
                            .await
                            .expect("task_complete");
                        assert_eq!(applied.results, [Ok(TaskState::Succeeded)]);
                        events.extend(applied.events.iter().cloned());
                        done += 1;
                    }
                }
            }));
        }
        let mut events = Vec::new();
        let mut done = 0;
        for w in workers {
            let (e, d) = w.await.expect("worker task");
            events.extend(e);
            done += d;
        }
        assert_eq!(done, BATCHES * TASKS, "every task completed once");
        events.sort_by_key(|e| e.seq);
        h.record(&events, now).await;
        for id in ids {
            assert_eq!(h.batch(id).await.state, B::Succeeded);
        }
        h.finish().await;
    }

    /// A failure that trips `stop` still skips its own dependents with
    /// `upstream_failed` (they are its consequence, as with `continue`); the
    /// rest of the batch is cancelled with `batch_stopped`.
    pub async fn policy_trip_skips_the_failures_dependents<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let spec = BatchSpec {
            error_policy: crate::model::ErrorPolicy::stop(),
            ..batch(
                1,
                vec![task("a"), after("b", &["a"]), after("c", &["b"]), task("d")],
            )
        };
        let ins = h.insert(spec, T0).await;
        let [a, b, c, d] = ins.tasks[..] else {
            panic!("four tasks")
        };
        let claim = h.claim(10, 10, secs(1)).await;
        assert_eq!(payloads(&claim), ["a"]);
        let (result, events) = h
            .report(
                fence(&claim.tasks[0]),
                failure(Reason::ExitCode(1), None),
                secs(2),
            )
            .await;
        assert_eq!(result, Ok(Failed));
        let upstream = Some(Reason::UpstreamFailed);
        assert_moves(
            &events,
            &[
                (a, Failed, Some(Reason::ExitCode(1))),
                (b, Skipped, upstream),
                (c, Skipped, upstream),
                (d, Cancelled, Some(Reason::BatchStopped)),
            ],
        );
        assert_eq!(batch_moves(&events), [(ins.batch, B::Failed)]);
        h.finish().await;
    }

    /// A forced cancellation of a task already asked to stop gracefully
    /// replaces the request; a graceful one after a forced one does not.
    pub async fn forced_cancel_escalates_a_graceful_one<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let ins = h.insert(batch(1, vec![task("a")]), T0).await;
        let claim = h.claim(10, 10, secs(1)).await;
        let ta = claim.tasks[0].clone();
        let request = |mode| CancelRequest {
            fence: fence(&ta),
            mode,
            reason: Reason::ByUser,
        };
        h.cancel_task(ta.id, CancelMode::Graceful, secs(2))
            .await
            .expect("task_cancel");
        let renewal = h.renew(vec![fence(&ta)], secs(3)).await;
        assert_eq!(renewal.cancel, [request(CancelMode::Graceful)]);
        h.cancel_task(ta.id, CancelMode::Forced, secs(4))
            .await
            .expect("task_cancel");
        let renewal = h.renew(vec![fence(&ta)], secs(5)).await;
        assert_eq!(renewal.cancel, [request(CancelMode::Forced)]);
        h.cancel_task(ta.id, CancelMode::Graceful, secs(6))
            .await
            .expect("task_cancel");
        let renewal = h.renew(vec![fence(&ta)], secs(7)).await;
        assert_eq!(
            renewal.cancel,
            [request(CancelMode::Forced)],
            "no downgrade"
        );
        let (result, events) = h
            .report(fence(&ta), cancelled(Reason::ByUser), secs(8))
            .await;
        assert_eq!(result, Ok(Cancelled));
        assert_eq!(batch_moves(&events), [(ins.batch, B::Partial)]);
        h.finish().await;
    }

    /// A running task whose worker dies while it is being cancelled ends the
    /// way it was being ended (`cancelled`), not `failed{lost}`, and is not
    /// run again.
    pub async fn a_task_lost_while_cancelling_ends_cancelled<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let ins = h.insert(batch(1, vec![task("a"), task("b")]), T0).await;
        let [a, b] = ins.tasks[..] else {
            panic!("two tasks")
        };
        let claim = h.claim(10, 10, secs(1)).await;
        assert_eq!(payloads(&claim), ["a"]);
        let events = h
            .cancel_batch(ins.batch, CancelMode::Graceful, secs(2))
            .await;
        assert_moves(&events, &[(b, Cancelled, Some(Reason::ByUser))]);
        let events = h
            .rescue(secs(1).plus(LEASE).plus(Duration::from_secs(1)))
            .await;
        assert_moves(&events, &[(a, Cancelled, Some(Reason::ByUser))]);
        assert_eq!(batch_moves(&events), [(ins.batch, B::Cancelled)]);
        assert!(h.claim(10, 10, secs(40)).await.tasks.is_empty());
        h.finish().await;
    }

    /// A claim given back unstarted ([`AttemptOutcome::Released`]) takes
    /// its place in its batch's queue again, ahead of the tasks queued
    /// behind it and in queue order whatever the order of the releases. It
    /// gives back its slots and its attempt number and counts nothing: no
    /// attempt record, no retry, no loss; its old fence is stale. An
    /// attempt's record starts when its worker says it started (the
    /// report's duration before the report), never before its claim.
    pub async fn released_claims_take_their_place_again<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let retains = h.store.retains_finished_tasks();
        let ins = h
            .insert(
                batch(3, vec![task("a"), task("b"), task("c"), task("d")]),
                T0,
            )
            .await;
        let [a, b, c, d] = ins.tasks[..] else {
            panic!("four tasks")
        };
        let claim = h.claim(10, 10, secs(1)).await;
        assert_eq!(payloads(&claim), ["a", "b", "c"]);
        assert!(h.claim(10, 10, secs(1)).await.tasks.is_empty());
        let release = |key| {
            report(
                fence(claimed(&claim, key)),
                AttemptOutcome::Released,
                Duration::ZERO,
            )
        };
        let applied = h.complete(vec![release("b"), release("a")], secs(2)).await;
        assert_eq!(applied.results, [Ok(Queued), Ok(Queued)]);
        assert_moves(&applied.events, &[(a, Queued, None), (b, Queued, None)]);
        assert_eq!(
            h.batch(ins.batch).await.counts,
            counts(|c| {
                c.queued = 3;
                c.running = 1;
            })
        );
        let old = fence(claimed(&claim, "a"));
        let (result, _) = h.report(old, success(None), secs(3)).await;
        assert_eq!(result, Err(Stale(old)), "a released claim's fence is stale");

        let again = h.claim(10, 10, secs(4)).await;
        assert_eq!(payloads(&again), ["a", "b"], "back in place, ahead of d");
        for t in &again.tasks {
            assert_eq!((t.attempt, t.lost), (Attempt(1), 0), "{}", t.id);
        }
        // c ran for 2 s of the 9 since its claim; a for longer than its
        // claim has existed.
        let ran = |key: &str, claim: &Claim<String, String>, secs| {
            report(
                fence(claimed(claim, key)),
                success(None),
                Duration::from_secs(secs),
            )
        };
        let applied = h
            .complete(vec![ran("c", &claim, 2), ran("a", &again, 60)], secs(10))
            .await;
        assert_eq!(applied.results, [Ok(Succeeded), Ok(Succeeded)]);
        let claim = h.claim(10, 10, secs(11)).await;
        assert_eq!(payloads(&claim), ["d"]);
        h.succeed(claimed(&again, "b"), None, secs(12)).await;
        h.succeed(claimed(&claim, "d"), None, secs(12)).await;
        let stats = h.store.batch_stats(ins.batch, secs(12)).await.unwrap();
        assert_eq!(stats.retries, 0, "a release is no retry");
        assert_eq!(h.batch(ins.batch).await.state, B::Succeeded);
        if retains {
            let attempts = h.attempts(a).await;
            assert_eq!(attempts.len(), 1, "one attempt of a: {attempts:?}");
            assert_eq!(
                (attempts[0].attempt, attempts[0].started_at),
                (Attempt(1), secs(4)),
                "started at its claim, not before"
            );
            let attempts = h.attempts(c).await;
            assert_eq!(
                (attempts[0].started_at, attempts[0].finished_at),
                (secs(8), Some(secs(10))),
                "started when its worker started it"
            );
            assert_eq!(h.attempts(d).await.len(), 1);
        }
        h.finish().await;
    }

    /// A claim given back ends as the store asked: a task being cancelled
    /// ends cancelled with its reason (the batch finishes), and a task of a
    /// paused batch waits for the resume.
    pub async fn released_claims_end_as_asked<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let ins = h.insert(batch(2, vec![task("a"), task("b")]), T0).await;
        let [a, b] = ins.tasks[..] else {
            panic!("two tasks")
        };
        let claim = h.claim(10, 10, secs(1)).await;
        let events = h.pause(ins.batch, secs(2)).await;
        assert_eq!(batch_moves(&events), [(ins.batch, B::Paused)]);
        let (result, events) = h
            .report(
                fence(claimed(&claim, "b")),
                AttemptOutcome::Released,
                secs(3),
            )
            .await;
        assert_eq!(result, Ok(Queued));
        assert_moves(&events, &[(b, Queued, None)]);
        assert!(h.claim(10, 10, secs(4)).await.tasks.is_empty(), "paused");
        h.resume(ins.batch, secs(5)).await;
        let again = h.claim(10, 10, secs(6)).await;
        assert_eq!(payloads(&again), ["b"]);

        let events = h
            .cancel_batch(ins.batch, CancelMode::Graceful, secs(7))
            .await;
        assert_moves(&events, &[]);
        let (result, events) = h
            .report(
                fence(claimed(&claim, "a")),
                AttemptOutcome::Released,
                secs(8),
            )
            .await;
        assert_eq!(result, Ok(Cancelled));
        assert_moves(&events, &[(a, Cancelled, Some(Reason::ByUser))]);
        let (result, events) = h
            .report(
                fence(claimed(&again, "b")),
                AttemptOutcome::Released,
                secs(9),
            )
            .await;
        assert_eq!(result, Ok(Cancelled));
        assert_moves(&events, &[(b, Cancelled, Some(Reason::ByUser))]);
        assert_eq!(batch_moves(&events), [(ins.batch, B::Cancelled)]);
        h.finish().await;
    }

    /// A claim at or after a batch's deadline starts nothing of it, and ends
    /// its waiting tasks `cancelled{deadline}`, even if no one expired it yet.
    pub async fn claims_do_not_start_tasks_past_the_deadline<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let mut spec = batch(1, vec![task("a"), task("b")]);
        spec.policy.deadline = Some(secs(10));
        let ins = h.insert(spec, T0).await;
        let [a, b] = ins.tasks[..] else {
            panic!("two tasks")
        };
        let claim = h.claim(10, 10, secs(10)).await;
        assert!(claim.tasks.is_empty());
        let deadline = Some(Reason::Deadline);
        assert_moves(
            &claim.events,
            &[(a, Cancelled, deadline), (b, Cancelled, deadline)],
        );
        assert_eq!(batch_moves(&claim.events), [(ins.batch, B::Failed)]);
        h.finish().await;
    }

    /// `batch_stats` reports counts and retries, attempt duration percentiles
    /// once attempts have finished, the wall time from the first start (to
    /// now while running, to the end once finished) and finished tasks per
    /// second of it.
    pub async fn batch_stats_reports_figures<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let mut spec = batch(2, vec![task("a"), task("b"), task("c")]);
        spec.policy.retry = crate::model::RetryPolicy::attempts(2);
        let id = h.insert(spec, T0).await.batch;
        let stats = h.store.batch_stats(id, T0).await.expect("batch_stats");
        assert_eq!(stats.counts, counts(|c| c.queued = 3));
        assert_eq!(
            (stats.retries, stats.p50, stats.p95, stats.p99),
            (0, None, None, None)
        );
        assert_eq!((stats.wall, stats.throughput), (Duration::ZERO, 0.0));

        let claim = h.claim(10, 10, T0).await;
        let (ta, tb) = (claimed(&claim, "a").clone(), claimed(&claim, "b").clone());
        let ms = Duration::from_millis;
        let applied = h
            .complete(
                vec![
                    report(fence(&ta), success(None), ms(100)),
                    report(fence(&tb), failure(Reason::Timeout, Some(secs(1))), ms(300)),
                ],
                secs(1),
            )
            .await;
        assert_eq!(applied.results, [Ok(Succeeded), Ok(RetryWait)]);
        let stats = h.store.batch_stats(id, secs(1)).await.expect("batch_stats");
        assert_eq!(
            stats.counts,
            counts(|c| {
                c.succeeded = 1;
                c.retry_wait = 1;
                c.queued = 1;
            })
        );
        assert_eq!(stats.retries, 1);
        let p50 = stats.p50.expect("p50 after two attempts");
        assert!((ms(99)..=ms(301)).contains(&p50), "{p50:?}");
        assert_eq!(stats.wall, Duration::from_secs(1), "running: up to now");
        assert!(
            (stats.throughput - 1.0).abs() < 1e-6,
            "{}",
            stats.throughput
        );

        let claim = h.claim(10, 10, secs(1)).await;
        assert_eq!(sorted_payloads(&claim), ["b", "c"]);
        let completions = claim
            .tasks
            .iter()
            .map(|t| report(fence(t), success(None), ms(200)))
            .collect();
        h.complete(completions, secs(4)).await;
        let stats = h
            .store
            .batch_stats(id, secs(10))
            .await
            .expect("batch_stats");
        assert_eq!(stats.counts, counts(|c| c.succeeded = 3));
        assert_eq!(stats.retries, 1);
        let (p50, p95, p99) = (stats.p50.unwrap(), stats.p95.unwrap(), stats.p99.unwrap());
        assert!(
            (ms(198)..=ms(202)).contains(&p50),
            "p50 of 100/200/200/300 ms: {p50:?}"
        );
        assert!(p50 <= p95 && p95 <= p99, "{p50:?} {p95:?} {p99:?}");
        assert!((ms(250)..=ms(303)).contains(&p99), "p99: {p99:?}");
        assert_eq!(
            stats.wall,
            Duration::from_secs(4),
            "finished: up to the end"
        );
        assert!(
            (stats.throughput - 0.75).abs() < 1e-6,
            "{}",
            stats.throughput
        );
        assert!(matches!(
            h.store.batch_stats(BatchId(i64::MAX), secs(10)).await,
            Err(StoreError::UnknownBatch(_))
        ));
        assert!(matches!(
            h.store.batch_get(BatchId(i64::MAX)).await,
            Err(StoreError::UnknownBatch(_))
        ));
        h.finish().await;
    }

    /// A claim limited to one batch takes tasks from it alone, even when
    /// another batch's tasks rank higher; inside it everything is as for any
    /// claim (queue order, concurrency, pauses). A batch that does not exist
    /// yields nothing.
    pub async fn claims_can_be_limited_to_one_batch<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let high = BatchSpec {
            priority: Priority::HIGH,
            ..batch(10, vec![task("h1"), task("h2")])
        };
        let high = h.insert(high, T0).await;
        let urgent = TaskSpec {
            priority: Some(Priority::CRITICAL),
            ..task("l2")
        };
        let low = h
            .insert(batch(2, vec![task("l1"), urgent, task("l3")]), T0)
            .await;
        let claim = h.claim_in(low.batch, 10, 10, secs(1)).await;
        assert_eq!(
            payloads(&claim),
            ["l2", "l1"],
            "the batch's own order, within its concurrency"
        );
        assert!(
            h.claim_in(low.batch, 10, 10, secs(1))
                .await
                .tasks
                .is_empty(),
            "the batch is at its concurrency; the other batch is not taken instead"
        );
        let nowhere = BatchId(high.batch.0.max(low.batch.0) + 100);
        assert!(h.claim_in(nowhere, 10, 10, secs(1)).await.tasks.is_empty());

        h.pause(high.batch, secs(2)).await;
        assert!(
            h.claim_in(high.batch, 10, 10, secs(2))
                .await
                .tasks
                .is_empty(),
            "paused"
        );
        h.resume(high.batch, secs(3)).await;
        let claim = h.claim_in(high.batch, 10, 1, secs(3)).await;
        assert_eq!(payloads(&claim), ["h1"]);
        let claim = h.claim(10, 10, secs(4)).await;
        assert_eq!(payloads(&claim), ["h2"], "an unlimited claim: low is full");
        assert_eq!(h.batch(low.batch).await.counts.queued, 1);
        h.finish().await;
    }

    /// `worker_expire` ends the attempts one worker is running as if their
    /// leases had expired now: requeued with reason `lost` (or failed once
    /// the `lost` budget is spent), counted as retries, while other workers'
    /// attempts run on. That worker's later reports are stale and its
    /// renewals find the attempts lost; the task runs again under a new
    /// attempt. Expiring a worker that runs nothing changes nothing.
    pub async fn worker_expire_ends_only_that_workers_attempts<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let (w1, w2) = (
            h.worker,
            h.store.worker_register("other", 2, T0).await.unwrap(),
        );
        let mut spec = batch(4, vec![task("a"), task("b"), task("c"), task("d")]);
        spec.policy.retry.max_lost = 1;
        let ins = h.insert(spec, T0).await;
        let [a, b, c, d] = ins.tasks[..] else {
            panic!("four tasks")
        };
        let first = h.claim_by(w1, 2, 2, secs(1)).await;
        assert_eq!(payloads(&first), ["a", "b"]);
        let theirs = h.claim_by(w2, 1, 1, secs(1)).await;
        assert_eq!(payloads(&theirs), ["c"]);

        let events = h.expire_worker(w1, secs(2)).await;
        assert_moves(
            &events,
            &[
                (a, RetryWait, Some(Reason::Lost)),
                (b, RetryWait, Some(Reason::Lost)),
            ],
        );
        assert!(batch_moves(&events).is_empty());
        assert_eq!(h.state(c), (Running, None), "another worker's attempt");
        let info = h.batch(ins.batch).await;
        assert_eq!(info.retries, 2);
        let got = h.store.task_get(a).await.expect("live tasks are readable");
        assert_eq!((got.attempt, got.lost), (Attempt(1), 1));
        assert!(got.message.is_some(), "says why the attempt ended");

        let ta = claimed(&first, "a").clone();
        let (result, events) = h.report(fence(&ta), success(None), secs(3)).await;
        assert_eq!(
            result,
            Err(Stale(fence(&ta))),
            "the expired attempt's report"
        );
        assert!(events.is_empty());
        let renewal = h
            .renew_by(
                w1,
                vec![fence(&ta), fence(claimed(&first, "b"))],
                secs(40),
                secs(3),
            )
            .await;
        assert_eq!(renewal.lost.len(), 2, "{renewal:?}");
        assert!(
            h.expire_worker(w1, secs(3)).await.is_empty(),
            "runs nothing"
        );

        // Queued again behind d, at once: the lease's expiry is not awaited.
        let again = h.claim_by(w1, 3, 3, secs(4)).await;
        assert_eq!(payloads(&again), ["d", "a", "b"]);
        assert_eq!(claimed(&again, "a").attempt, Attempt(2));
        assert_eq!(claimed(&again, "a").lost, 1);
        let events = h.expire_worker(w1, secs(5)).await;
        assert_moves(
            &events,
            &[
                (a, Failed, Some(Reason::Lost)),
                (b, Failed, Some(Reason::Lost)),
                (d, RetryWait, Some(Reason::Lost)),
            ],
        );

        let tc = claimed(&theirs, "c").clone();
        h.complete_by(
            w2,
            vec![report(fence(&tc), success(None), Duration::ZERO)],
            secs(101),
        )
        .await;
        let claim = h.claim_by(w2, 1, 1, secs(102)).await;
        assert_eq!(payloads(&claim), ["d"]);
        let events = h.succeed(&claim.tasks[0], None, secs(103)).await;
        assert_eq!(batch_moves(&events), [(ins.batch, B::Partial)]);
        let info = h.batch(ins.batch).await;
        assert_eq!(info.retries, 3);
        assert_eq!(
            info.counts,
            counts(|n| {
                n.failed = 2;
                n.succeeded = 2;
            })
        );
        h.finish().await;
    }

    /// `worker_list` reports every registered worker by id with its host,
    /// pid and registration time; a lease renewal (also one with nothing to
    /// renew) records the worker's heartbeat.
    pub async fn worker_list_reports_registrations_and_heartbeats<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let w2 = h
            .store
            .worker_register("other-host", 42, secs(1))
            .await
            .expect("worker_register");
        let list = h.store.worker_list().await.expect("worker_list");
        let view = |list: &[crate::store::WorkerInfo]| {
            list.iter()
                .map(|w| (w.id, w.host.clone(), w.pid, w.started_at, w.last_heartbeat))
                .collect::<Vec<_>>()
        };
        let w1 = h.worker;
        assert_eq!(
            view(&list),
            [
                (w1, "conformance".to_owned(), 1, T0, T0),
                (w2, "other-host".to_owned(), 42, secs(1), secs(1)),
            ]
        );
        h.insert(batch(1, vec![task("a")]), T0).await;
        let claim = h.claim_by(w2, 1, 1, secs(2)).await;
        h.renew_by(w2, vec![fence(&claim.tasks[0])], secs(40), secs(5))
            .await;
        h.renew_by(w1, Vec::new(), secs(40), secs(6)).await;
        let list = h.store.worker_list().await.expect("worker_list");
        assert_eq!(
            view(&list),
            [
                (w1, "conformance".to_owned(), 1, T0, secs(6)),
                (w2, "other-host".to_owned(), 42, secs(1), secs(5)),
            ]
        );
        h.finish().await;
    }

    /// `batch_list` pages through batches newest first: at most `limit`,
    /// strictly below the `before` cursor, only in the states asked for
    /// (any when none are), each as `batch_get` reports it.
    pub async fn batch_list_pages_newest_first<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let list = |states: Vec<BatchState>, before: Option<BatchId>, limit: usize| BatchQuery {
            states,
            before,
            limit,
        };
        let ids = |page: &[BatchInfo]| page.iter().map(|b| b.id).collect::<Vec<_>>();
        let none = h.store.batch_list(list(vec![], None, 10)).await.unwrap();
        assert!(none.is_empty());

        let b1 = h.insert(batch(1, vec![task("a")]), T0).await.batch;
        let paused = BatchSpec {
            paused: true,
            name: Some("held".into()),
            ..batch(1, vec![task("b")])
        };
        let b2 = h.insert(paused, T0).await.batch;
        let b3 = h.insert(batch(1, vec![task("c")]), T0).await.batch;
        let b4 = h.insert(batch(1, vec![]), T0).await.batch;
        let claim = h.claim(10, 10, secs(1)).await;
        assert_eq!(sorted_payloads(&claim), ["a", "c"]);
        h.succeed(claimed(&claim, "a"), None, secs(2)).await;

        let all = h.store.batch_list(list(vec![], None, 10)).await.unwrap();
        assert_eq!(ids(&all), [b4, b3, b2, b1]);
        for b in &all {
            let got = h.batch(b.id).await;
            assert_eq!(
                (
                    b.name.clone(),
                    b.state,
                    b.counts,
                    b.created_at,
                    b.started_at,
                    b.finished_at
                ),
                (
                    got.name,
                    got.state,
                    got.counts,
                    got.created_at,
                    got.started_at,
                    got.finished_at
                ),
                "{}",
                b.id
            );
        }
        let states: Vec<BatchState> = all.iter().map(|b| b.state).collect();
        assert_eq!(states, [B::Succeeded, B::Running, B::Paused, B::Succeeded]);

        let page = |q| {
            let store = h.store.clone();
            async move { ids(&store.batch_list(q).await.expect("batch_list")) }
        };
        assert_eq!(page(list(vec![], None, 2)).await, [b4, b3]);
        assert_eq!(page(list(vec![], Some(b3), 2)).await, [b2, b1]);
        assert_eq!(page(list(vec![], Some(b1), 2)).await, []);
        assert_eq!(page(list(vec![], None, 0)).await, []);
        assert_eq!(page(list(vec![B::Succeeded], None, 10)).await, [b4, b1]);
        let live = vec![B::Running, B::Paused, B::Queued];
        assert_eq!(page(list(live.clone(), None, 10)).await, [b3, b2]);
        assert_eq!(page(list(live.clone(), Some(b3), 10)).await, [b2]);
        assert_eq!(page(list(live, None, 1)).await, [b3]);
        assert_eq!(page(list(vec![B::Failed], None, 10)).await, []);
        h.finish().await;
    }

    /// `task_list` pages through a batch's tasks by index: at most `limit`,
    /// strictly after the `after` cursor, only in the states asked for, each
    /// with its state, payload, kept output (tasks with dependents) and
    /// latest ended attempt, whose log comes only when asked for. A store
    /// that forgets finished tasks lists the tasks it still has. An unknown
    /// batch is an error.
    pub async fn task_list_pages_by_index<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let retains = h.store.retains_finished_tasks();
        let tasks = vec![
            task("a"),
            after("b", &["a"]),
            task("c"),
            task("d"),
            task("e"),
        ];
        let mut spec = batch(4, tasks);
        spec.policy.retry = crate::model::RetryPolicy::attempts(3);
        let ins = h.insert(spec, T0).await;
        let [a, b, c, d, e] = ins.tasks[..] else {
            panic!("five tasks")
        };
        let claim = h.claim(10, 2, secs(1)).await;
        assert_eq!(payloads(&claim), ["a", "c"]);
        let log = AttemptLog {
            exit_code: Some(0),
            stdout: b"A\n".to_vec(),
            stdout_total: 2,
            stderr: Vec::new(),
            stderr_total: 0,
        };
        // Both ran from their claim to their report.
        let mut done = report(
            fence(claimed(&claim, "a")),
            success(Some("A")),
            Duration::from_secs(1),
        );
        done.log = Some(log.clone());
        let failed = report(
            fence(claimed(&claim, "c")),
            failure(Reason::ExitCode(1), Some(secs(100))),
            Duration::from_secs(1),
        );
        let applied = h.complete(vec![done, failed], secs(2)).await;
        assert_eq!(applied.results, [Ok(Succeeded), Ok(RetryWait)]);
        let claim = h.claim(10, 1, secs(3)).await;
        assert_eq!(payloads(&claim), ["d"]);
        h.cancel_task(e, CancelMode::Graceful, secs(4))
            .await
            .expect("task_cancel");

        let all = TaskQuery {
            limit: 10,
            ..TaskQuery::default()
        };
        let kept = |ids: &[TaskId]| -> Vec<TaskId> {
            ids.iter()
                .copied()
                .filter(|id| retains || ![a, e].contains(id))
                .collect()
        };
        let page = h.tasks(ins.batch, all.clone()).await;
        let listed: Vec<TaskId> = page.iter().map(|t| t.info.id).collect();
        assert_eq!(listed, kept(&[a, b, c, d, e]));
        let record = |id: TaskId| page.iter().find(|t| t.info.id == id);
        for t in &page {
            assert_eq!(t.info.batch, ins.batch);
            let key = t.info.key.as_deref().expect("keyed");
            assert_eq!(t.payload, key, "payload of {key}");
            assert_eq!(t.info.state, h.state(t.info.id).0, "state of {key}");
        }
        let view = |id| {
            let t = record(id).expect("listed");
            (t.info.index, t.info.state, t.output.clone())
        };
        assert_eq!(view(b), (1, Queued, None));
        assert_eq!(view(c), (2, RetryWait, None));
        assert_eq!(view(d), (3, Running, None));
        let running = &record(d).expect("listed").info;
        assert_eq!(
            (running.worker, running.started_at),
            (Some(h.worker), Some(secs(3)))
        );
        assert!(record(b).unwrap().last_attempt.is_none(), "never ran");
        assert!(record(d).unwrap().last_attempt.is_none(), "none ended");
        if retains {
            assert_eq!(view(a), (0, Succeeded, Some("A".to_owned())), "output kept");
            assert_eq!(view(e), (4, Cancelled, None));
            let last = record(a).unwrap().last_attempt.clone().expect("ended");
            assert_eq!(
                (last.attempt, last.worker, last.started_at, last.finished_at),
                (Attempt(1), Some(h.worker), secs(1), Some(secs(2)))
            );
            assert_eq!((last.state, last.reason), (Some(Succeeded), None));
            assert_eq!(last.log, None, "logs only when asked for");
            let last = record(c).unwrap().last_attempt.clone().expect("ended");
            assert_eq!(
                (
                    last.attempt,
                    last.state,
                    last.reason,
                    last.message.as_deref()
                ),
                (
                    Attempt(1),
                    Some(RetryWait),
                    Some(Reason::ExitCode(1)),
                    Some("failed: exit_code(1)")
                )
            );
            let with_logs = h
                .tasks(
                    ins.batch,
                    TaskQuery {
                        logs: true,
                        ..all.clone()
                    },
                )
                .await;
            assert_eq!(with_logs[0].info.id, a);
            let last = with_logs[0].last_attempt.as_ref().expect("ended");
            assert_eq!(last.log.as_ref(), Some(&log));
        } else {
            assert!(page.iter().all(|t| t.last_attempt.is_none()), "kept none");
        }

        let ids = |page: Vec<TaskRecord<String, String>>| {
            page.iter().map(|t| t.info.id).collect::<Vec<_>>()
        };
        let query = |states: Vec<TaskState>, after: Option<u64>, limit: usize| TaskQuery {
            states,
            after,
            limit,
            logs: false,
        };
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let page = h.tasks(ins.batch, query(vec![], after, 2)).await;
            assert!(page.len() <= 2);
            let Some(last) = page.last() else { break };
            after = Some(last.info.index);
            pages.extend(ids(page));
        }
        assert_eq!(pages, kept(&[a, b, c, d, e]), "paged with the cursor");
        let pick = |states, after, limit| h.tasks(ins.batch, query(states, after, limit));
        assert_eq!(ids(pick(vec![], Some(1), 2).await), [c, d]);
        assert_eq!(ids(pick(vec![], Some(4), 10).await), []);
        assert_eq!(ids(pick(vec![], None, 0).await), []);
        assert_eq!(ids(pick(vec![Running, RetryWait], None, 10).await), [c, d]);
        assert_eq!(ids(pick(vec![Running, RetryWait], Some(2), 10).await), [d]);
        assert_eq!(ids(pick(vec![Running, RetryWait], None, 1).await), [c]);
        assert_eq!(ids(pick(vec![Skipped], None, 10).await), []);

        let nowhere = BatchId(ins.batch.0 + 1000);
        let err = h.store.task_list(nowhere, all).await.unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownBatch(id) if id == nowhere),
            "{err}"
        );
        h.finish().await;
    }

    /// Attempts reported in one call, alike but for how long each ran,
    /// keep each its own start (the report's time less its duration) and
    /// end: a store that writes rows which change alike together must not
    /// give them one start.
    pub async fn reports_together_keep_each_its_own_start<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let retains = h.store.retains_finished_tasks();
        let ins = h
            .insert(batch(3, vec![task("a"), task("b"), task("c")]), T0)
            .await;
        let claim = h.claim(3, 3, secs(1)).await;
        let keys = ["a", "b", "c"];
        let reports = keys
            .iter()
            .zip(1..)
            .map(|(key, ran)| {
                report(
                    fence(claimed(&claim, key)),
                    success(None),
                    Duration::from_secs(ran),
                )
            })
            .collect();
        let applied = h.complete(reports, secs(10)).await;
        assert_eq!(
            applied.results,
            [Ok(Succeeded), Ok(Succeeded), Ok(Succeeded)]
        );
        if retains {
            for (task, ran) in ins.tasks.iter().zip(1..) {
                let attempts = h.attempts(*task).await;
                assert_eq!(attempts.len(), 1, "{attempts:#?}");
                assert_eq!(
                    (
                        attempts[0].started_at,
                        attempts[0].finished_at,
                        attempts[0].state
                    ),
                    (secs(10 - ran), Some(secs(10)), Some(Succeeded)),
                    "the attempt that ran {ran} s"
                );
            }
        }
        h.finish().await;
    }

    /// Every attempt is recorded when it ends, with the log its report
    /// carried (large output tails too, byte for byte); an attempt that ended
    /// without a report of its own (a lost lease) has no log. `task_attempts`
    /// lists them in order, a running attempt last and unfinished. A store
    /// that forgets finished tasks keeps no attempt records. An unknown task
    /// is an error.
    pub async fn attempts_keep_their_logs<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let retains = h.store.retains_finished_tasks();
        let w = h.worker;
        let mut spec = batch(2, vec![task("a"), task("b")]);
        spec.policy.retry = crate::model::RetryPolicy::attempts(4);
        let ins = h.insert(spec, T0).await;
        let [a, b] = ins.tasks[..] else {
            panic!("two tasks")
        };
        let claim = h.claim(2, 2, secs(1)).await;
        let small = AttemptLog {
            exit_code: Some(3),
            stdout: b"out\n".to_vec(),
            stdout_total: 4,
            stderr: b"err: \xff not utf-8\n".to_vec(),
            stderr_total: 1 << 40,
        };
        // Large tails, as a process flooding its output leaves them: beyond
        // what a store may keep uncompressed, and not all alike.
        let mut noise = 0x2545_f491_u32;
        let large_out: Vec<u8> = (0..64 * 1024)
            .map(|i| {
                noise ^= noise << 13;
                noise ^= noise >> 17;
                noise ^= noise << 5;
                if i % 80 == 79 {
                    b'\n'
                } else {
                    b' ' + (noise % 90) as u8
                }
            })
            .collect();
        let large = AttemptLog {
            exit_code: Some(0),
            stdout: large_out,
            stdout_total: 10_000_000,
            stderr: vec![b'!'; 5000],
            stderr_total: 5000,
        };
        // Both ran from their claim to their report.
        let ran = Duration::from_secs(1);
        let mut fail = report(
            fence(claimed(&claim, "a")),
            failure(Reason::ExitCode(3), Some(secs(2))),
            ran,
        );
        fail.log = Some(small.clone());
        let mut done = report(fence(claimed(&claim, "b")), success(None), ran);
        done.log = Some(large.clone());
        let applied = h.complete(vec![fail, done], secs(2)).await;
        assert_eq!(applied.results, [Ok(RetryWait), Ok(Succeeded)]);
        let claim = h.claim(2, 2, secs(3)).await;
        assert_eq!(claimed(&claim, "a").attempt, Attempt(2));
        let events = h.rescue(secs(34)).await;
        assert_moves(&events, &[(a, RetryWait, Some(Reason::Lost))]);
        let claim = h.claim(2, 2, secs(34)).await;
        let a3 = claimed(&claim, "a").clone();
        assert_eq!(a3.attempt, Attempt(3));

        let running = AttemptInfo {
            attempt: Attempt(3),
            worker: Some(w),
            started_at: secs(34),
            finished_at: None,
            state: None,
            reason: None,
            message: None,
            log: None,
        };
        let first = AttemptInfo {
            attempt: Attempt(1),
            worker: Some(w),
            started_at: secs(1),
            finished_at: Some(secs(2)),
            state: Some(RetryWait),
            reason: Some(Reason::ExitCode(3)),
            message: Some("failed: exit_code(3)".into()),
            log: Some(small),
        };
        let lost = h.attempts(a).await;
        if !retains {
            assert_eq!(lost, [running], "only the running attempt is known");
            let (result, _) = h
                .report(fence(&a3), failure(Reason::ExitCode(5), None), secs(35))
                .await;
            assert_eq!(result, Ok(Failed));
            assert!(matches!(
                h.store.task_attempts(b).await,
                Err(StoreError::UnknownTask(t)) if t == b
            ));
            h.finish().await;
            return;
        }
        assert_eq!(lost.len(), 3, "{lost:#?}");
        assert_eq!(lost[0], first);
        let second = &lost[1];
        assert_eq!(
            (
                second.attempt,
                second.worker,
                second.started_at,
                second.finished_at
            ),
            (Attempt(2), Some(w), secs(3), Some(secs(34)))
        );
        assert_eq!(
            (second.state, second.reason, &second.log),
            (Some(RetryWait), Some(Reason::Lost), &None)
        );
        assert!(second.message.is_some(), "says the lease expired");
        assert_eq!(lost[2], running);

        let (result, _) = h
            .report(fence(&a3), failure(Reason::ExitCode(5), None), secs(35))
            .await;
        assert_eq!(result, Ok(Failed));
        let ended = h.attempts(a).await;
        assert_eq!(ended.len(), 3);
        assert_eq!(ended[..2], lost[..2]);
        assert_eq!(
            (
                ended[2].finished_at,
                ended[2].state,
                ended[2].reason,
                ended[2].message.as_deref(),
                &ended[2].log
            ),
            (
                Some(secs(35)),
                Some(Failed),
                Some(Reason::ExitCode(5)),
                Some("failed: exit_code(5)"),
                &None
            ),
            "no report log: no log, whatever the reason"
        );
        let kept = h.attempts(b).await;
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].state, Some(Succeeded));
        assert_eq!(
            kept[0].log.as_ref(),
            Some(&large),
            "large tails, byte for byte"
        );

        let listed = h
            .tasks(
                ins.batch,
                TaskQuery {
                    limit: 10,
                    logs: true,
                    ..TaskQuery::default()
                },
            )
            .await;
        assert_eq!(listed[0].last_attempt.as_ref(), Some(&ended[2]));
        assert_eq!(listed[1].last_attempt.as_ref(), Some(&kept[0]));
        let nowhere = TaskId(b.0 + 1000);
        assert!(matches!(
            h.store.task_attempts(nowhere).await,
            Err(StoreError::UnknownTask(t)) if t == nowhere
        ));
        h.finish().await;
    }

    /// `event_list` reads the stored events after a `seq`, in `seq` order:
    /// of every batch or of one, at most `limit`; nothing past the last.
    pub async fn event_list_reads_after_a_seq<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let a = h.insert(batch(2, vec![task("a1"), task("a2")]), T0).await;
        let b = h.insert(batch(1, vec![task("b1")]), secs(1)).await;
        let claim = h.claim(10, 10, secs(2)).await;
        for t in claim.tasks.clone() {
            h.succeed(&t, None, secs(3)).await;
        }
        assert_eq!(h.batch(a.batch).await.state, B::Succeeded);
        let list = |after: u64, batch: Option<BatchId>, limit: usize| EventQuery {
            after,
            batch,
            limit,
        };
        let all = h.store.event_list(list(0, None, 1000)).await.unwrap();
        assert_eq!(all, h.log.events, "every event, in seq order");
        assert!(all.len() > 8, "{all:#?}");

        let after = all[2].seq;
        let rest = h.store.event_list(list(after, None, 1000)).await.unwrap();
        assert_eq!(rest, all[3..], "strictly after the cursor");

        let page = h.store.event_list(list(after, None, 2)).await.unwrap();
        assert_eq!(page, all[3..5], "at most the limit");

        // From every cursor, among one operation's events too, and up to
        // a limit that ends anywhere; of every batch, and of each.
        for (i, e) in all.iter().enumerate() {
            let page = h.store.event_list(list(e.seq, None, 3)).await.unwrap();
            assert_eq!(page, all[i + 1..(i + 4).min(all.len())], "after {}", e.seq);
            let of_batch = h
                .store
                .event_list(list(e.seq, Some(e.batch), 2))
                .await
                .unwrap();
            let want: Vec<Event> = all[i + 1..]
                .iter()
                .filter(|later| later.batch == e.batch)
                .take(2)
                .cloned()
                .collect();
            assert_eq!(of_batch, want, "after {} of {}", e.seq, e.batch);
        }

        let of_b = h
            .store
            .event_list(list(0, Some(b.batch), 1000))
            .await
            .unwrap();
        let want: Vec<Event> = all.iter().filter(|e| e.batch == b.batch).cloned().collect();
        assert_eq!(of_b, want, "one batch's events");
        assert_eq!(
            batch_moves(&of_b),
            [
                (b.batch, B::Queued),
                (b.batch, B::Running),
                (b.batch, B::Succeeded)
            ],
            "{of_b:#?}"
        );
        let of_a_late = h
            .store
            .event_list(list(of_b[0].seq, Some(a.batch), 1000))
            .await
            .unwrap();
        let want: Vec<Event> = all
            .iter()
            .filter(|e| e.batch == a.batch && e.seq > of_b[0].seq)
            .cloned()
            .collect();
        assert_eq!(of_a_late, want, "one batch's events after a cursor");

        let last = all.last().unwrap().seq;
        assert!(
            h.store
                .event_list(list(last, None, 10))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            h.store
                .event_list(list(0, None, 0))
                .await
                .unwrap()
                .is_empty()
        );
        let none = h
            .store
            .event_list(list(0, Some(BatchId(b.batch.0 + 1000)), 10))
            .await
            .unwrap();
        assert!(none.is_empty(), "an unknown batch has no events");
        h.finish().await;
    }

    /// `batch_purge` removes a finished batch (its tasks, events and
    /// idempotency key) and nothing else; it refuses a batch still live and
    /// reports an unknown one, removing nothing.
    pub async fn batch_purge_removes_only_finished_batches<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let keyed = BatchSpec {
            idempotency_key: Some("k".into()),
            ..batch(1, vec![task("a")])
        };
        let a = h.insert(keyed, T0).await.batch;
        let b = h.insert(batch(1, vec![task("b")]), T0).await.batch;
        let err = h.purge(a).await.unwrap_err();
        assert!(matches!(err, StoreError::Live(id) if id == a), "{err}");
        assert_eq!(h.batch(a).await.state, B::Queued, "a live batch stays");
        let unknown = BatchId(b.0 + 1000);
        let err = h.purge(unknown).await.unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownBatch(id) if id == unknown),
            "{err}"
        );

        let claim = h.claim(10, 1, secs(1)).await;
        let ta = claimed(&claim, "a").clone();
        h.succeed(&ta, None, secs(2)).await;
        assert_eq!(h.batch(a).await.state, B::Succeeded);
        h.purge(a).await.expect("a finished batch is purged");
        assert!(matches!(
            h.store.batch_get(a).await,
            Err(StoreError::UnknownBatch(_))
        ));
        assert!(matches!(
            h.store.task_get(ta.id).await,
            Err(StoreError::UnknownTask(_))
        ));
        assert!(matches!(
            h.store
                .task_list(
                    a,
                    TaskQuery {
                        limit: 10,
                        ..TaskQuery::default()
                    }
                )
                .await,
            Err(StoreError::UnknownBatch(_))
        ));
        let events = h
            .store
            .event_list(EventQuery {
                after: 0,
                batch: Some(a),
                limit: 100,
            })
            .await
            .unwrap();
        assert!(events.is_empty(), "its events are gone: {events:#?}");
        let err = h.purge(a).await.unwrap_err();
        assert!(matches!(err, StoreError::UnknownBatch(_)), "{err}");

        // The key is free again: the same key makes a new batch.
        let again = BatchSpec {
            idempotency_key: Some("k".into()),
            ..batch(1, vec![task("a")])
        };
        let ins = h.insert(again, secs(3)).await;
        assert!(!ins.existing && ins.batch != a);
        assert_eq!(h.batch(b).await.counts.total(), 1, "other batches stay");
        h.finish().await;
    }

    /// Operations on more rows than one SQL statement takes (a durable
    /// store sends them in pieces within the transaction, and a submit's
    /// tasks 4,000 at a time): a submit of 4,100 tasks, half of them
    /// waiting for the one before, and a report of 2,050 completions with
    /// the claim of the 2,050 tasks they released, each whole, in order,
    /// with every event.
    pub async fn large_operations_are_whole<S: SuiteStore>(store: S) {
        const N: usize = 4_100;
        let mut h = Harness::new(store).await;
        let key = |i: usize| format!("t{i:04}");
        let tasks = (0..N)
            .map(|i| match i % 2 {
                0 => task(&key(i)),
                _ => after(&key(i), &[&key(i - 1)]),
            })
            .collect();
        let ins = h.insert(batch(N as u32, tasks), T0).await;
        assert_eq!(ins.tasks.len(), N);
        assert_eq!(
            ins.events.len(),
            N + 1,
            "the batch's event and one per task"
        );
        assert!(
            ins.events.windows(2).all(|w| w[0].seq < w[1].seq),
            "events in seq order"
        );
        let worker = h.worker;
        let all = |n: usize| ClaimRequest {
            worker,
            capacity: n as u32,
            max_tasks: n,
            lease: LEASE,
            batch: None,
        };
        let first = h.claim_with(all(N), secs(1)).await;
        let evens: Vec<String> = (0..N).step_by(2).map(key).collect();
        assert_eq!(payloads(&first), evens, "the queued half, in order");
        let done = first
            .tasks
            .iter()
            .map(|t| {
                report(
                    fence(t),
                    success(Some(&t.payload)),
                    Duration::from_millis(5),
                )
            })
            .collect();
        let (applied, second) = h.complete_and_claim(done, all(N), secs(2)).await;
        assert!(applied.results.iter().all(|r| *r == Ok(Succeeded)));
        let odds: Vec<String> = (1..N).step_by(2).map(key).collect();
        assert_eq!(payloads(&second), odds, "the released half, in order");
        for t in &second.tasks {
            let upstream: Vec<&str> = t
                .upstream
                .iter()
                .map(|u| u.output.as_deref().unwrap_or(""))
                .collect();
            assert_eq!(upstream, [key(t.index as usize - 1)], "{}", t.id);
        }
        let done = second
            .tasks
            .iter()
            .map(|t| report(fence(t), success(None), Duration::from_millis(5)))
            .collect();
        h.complete(done, secs(3)).await;
        let info = h.batch(ins.batch).await;
        assert_eq!(
            (info.state, info.counts.succeeded),
            (B::Succeeded, N as u64)
        );
        h.finish().await;
    }

    /// Reporting and claiming in one call ([`Store::task_complete_and_claim`])
    /// does what `task_complete` then `task_claim` do. One script of turns
    /// runs twice, in two batches alike: with the two calls, then with the
    /// one. Every turn gives the same results, events (the completions'
    /// first, then the claim's, in `seq` order), claimed tasks and counts:
    /// the claim takes the slot a completion freed, a dependent a
    /// completion released, a retry a completion made due at once; a stale
    /// report is refused and the claim goes on; the last reports finish the
    /// batch, and the claim finds nothing.
    pub async fn complete_and_claim_is_complete_then_claim<S: SuiteStore>(store: S) {
        let mut h = Harness::new(store).await;
        let spec = || {
            let mut spec = batch(2, vec![task("a"), task("b"), task("e"), after("d", &["a"])]);
            spec.policy.retry = crate::model::RetryPolicy::attempts(3);
            spec
        };
        let script = || {
            vec![
                // Nothing to report: a claim alone.
                Turn {
                    reports: vec![],
                    capacity: 2,
                    at: secs(1),
                },
                // a frees the batch's second slot (concurrency 2), and
                // releases d behind e: the claim takes e.
                Turn {
                    reports: vec![("a", 1, success(Some("out-a")))],
                    capacity: 1,
                    at: secs(2),
                },
                // b fails, to retry at once: the claim takes d (released
                // before), b queues again behind it.
                Turn {
                    reports: vec![("b", 1, failure(Reason::ExitCode(1), Some(secs(3))))],
                    capacity: 1,
                    at: secs(3),
                },
                // A stale report of b's first attempt beside e's: refused,
                // and the claim takes b's second attempt.
                Turn {
                    reports: vec![("b", 1, success(None)), ("e", 1, success(None))],
                    capacity: 1,
                    at: secs(4),
                },
                // The last reports finish the batch: nothing to claim.
                Turn {
                    reports: vec![("d", 1, success(None)), ("b", 2, success(None))],
                    capacity: 2,
                    at: secs(5),
                },
            ]
        };
        let mut runs = Vec::new();
        for together in [false, true] {
            let ins = h.insert(spec(), T0).await;
            let ids: HashMap<&str, TaskId> = ["a", "b", "e", "d"]
                .into_iter()
                .zip(ins.tasks.iter().copied())
                .collect();
            let mut turns = Vec::new();
            for turn in script() {
                let completions: Vec<Completion<String>> = turn
                    .reports
                    .into_iter()
                    .map(|(key, attempt, outcome)| {
                        let fence = Fence {
                            task: ids[key],
                            attempt: Attempt(attempt),
                        };
                        report(fence, outcome, Duration::from_millis(5))
                    })
                    .collect();
                let request = ClaimRequest {
                    worker: h.worker,
                    capacity: turn.capacity,
                    max_tasks: turn.capacity as usize,
                    lease: LEASE,
                    batch: Some(ins.batch),
                };
                let (applied, claim) = if together {
                    h.complete_and_claim(completions, request, turn.at).await
                } else {
                    let applied = h.complete(completions, turn.at).await;
                    let claim = h.claim_with(request, turn.at).await;
                    (applied, claim)
                };
                if let (Some(first), Some(last)) = (claim.events.first(), applied.events.last()) {
                    assert!(
                        first.seq > last.seq,
                        "the claim's events follow the completions'"
                    );
                }
                let info = h.batch(ins.batch).await;
                turns.push(TurnSeen {
                    results: applied
                        .results
                        .iter()
                        .map(|r| r.map_err(|Stale(f)| f.attempt.0))
                        .collect(),
                    completed: seen(&applied.events),
                    claimed: claim.tasks.iter().map(|t| (t.index, t.attempt.0)).collect(),
                    claim_events: seen(&claim.events),
                    next_due: claim.next_due,
                    state: info.state,
                    counts: info.counts,
                });
            }
            runs.push(turns);
        }
        let together = runs.pop().expect("two runs");
        let apart = runs.pop().expect("two runs");
        for (i, (apart, together)) in apart.iter().zip(&together).enumerate() {
            assert_eq!(together, apart, "turn {i}: one call differs from two");
        }
        // The script did what its comments say, so that agreeing means something.
        let claimed: Vec<Vec<(u64, u32)>> = apart.iter().map(|t| t.claimed.clone()).collect();
        assert_eq!(
            claimed,
            [
                vec![(0, 1), (1, 1)],
                vec![(2, 1)],
                vec![(3, 1)],
                vec![(1, 2)],
                vec![]
            ]
        );
        assert_eq!(apart[3].results, [Err(1), Ok(Succeeded)]);
        assert_eq!(apart[4].state, B::Succeeded);
        h.finish().await;
    }
}
