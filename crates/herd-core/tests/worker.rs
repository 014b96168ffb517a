//! The worker loop over the memory store, without the library on top: a
//! flow no runner knows, and store failures, through a `FlakyStore` that
//! fails chosen operations on a plan the test controls.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use herd_core::scheduler::{
    AttemptReport, Cancellation, Router, Runner, SlotPool, TaskEnd, WorkerConfig, WorkerHandle,
    spawn_worker,
};
use herd_core::store::{
    Applied, CancelMode, Claim, ClaimRequest, ClaimedTask, CompleteAndClaim, Completion, Events,
    Fence, Inserted, MemoryStore, Renewal, Store, StoreError, complete_then_claim,
};
use herd_core::{
    BatchId, BatchInfo, BatchSpec, BatchState, Clock, Reason, SystemClock, TaskId, TaskSpec,
    TaskState, Timestamp, TokioClock, WorkerId,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// A task whose flow no runner here knows fails to start at once (it is not
/// left to its lease), and the worker goes on without spinning.
#[tokio::test]
async fn tasks_of_an_unknown_flow_fail_to_start() {
    let store = Arc::new(MemoryStore::<String, String>::retaining());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let worker = spawn_worker(
        store.clone(),
        Arc::new(Router::new()),
        clock.clone(),
        WorkerConfig {
            slots: 2,
            ..WorkerConfig::default()
        },
    );
    let mut spec = BatchSpec::new("nobody");
    spec.concurrency = 2;
    spec.tasks = vec![
        TaskSpec::new("a".to_string()),
        TaskSpec::new("b".to_string()),
    ];
    let inserted = store.batch_insert(spec, clock.now()).await.unwrap();

    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let info = store.batch_get(inserted.batch).await.unwrap();
            if info.state.is_terminal() {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the batch ends within seconds, not at lease expiry");
    assert_eq!(ended.state, BatchState::Partial);
    assert_eq!(ended.counts.failed, 2);
    let task = store.task_get(inserted.tasks[0]).await.unwrap();
    assert_eq!(
        (task.state, task.reason),
        (TaskState::Failed, Some(Reason::StartFailed))
    );
    assert!(
        task.message
            .as_deref()
            .unwrap_or("")
            .contains("no runner for flow \"nobody\""),
        "{:?}",
        task.message
    );
    worker.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Store failures: a store that fails on a plan, and a runner that keeps tally.
// ---------------------------------------------------------------------------

/// How long a claim holds: short, so that lost reports are rescued quickly
/// (in paused time, so no test waits for it).
const LEASE: Duration = Duration::from_millis(300);
/// A third of the lease, as herd's durable-store tests run.
const HEARTBEAT: Duration = Duration::from_millis(100);
/// The slots of the one worker in these tests.
const SLOTS: u32 = 4;
/// The flow of every batch here.
const FLOW: &str = "flaky";
/// For [`Faults::fail_next`]: every call, until the plan changes.
const FOREVER: u32 = u32::MAX;

type Flaky = FlakyStore<MemoryStore<String, String>>;

/// A store that fails chosen operations with the backend errors that a busy
/// SQLite file or a lost PostgreSQL connection give, as its [`Plan`] says;
/// everything else goes to the store inside.
struct FlakyStore<S> {
    inner: S,
    plan: Arc<Plan>,
}

/// Which operations fail. Shared with the test, which may change it while
/// the worker runs.
#[derive(Debug, Default)]
struct Plan {
    claim: Faults,
    complete: Faults,
    /// `task_complete_and_claim` as a whole; when it does not fail, its two
    /// steps go through `complete` and `claim` (the way of a store that runs
    /// them apart).
    both: Faults,
    renew: Faults,
    rescue: Faults,
    /// `task_complete_and_claim` calls whose completions were recorded and
    /// whose claim failed.
    claims_failed_alone: AtomicU32,
    /// Attempts claimed by `task_complete_and_claim` calls whose reply was
    /// lost: never started.
    lost_claims: Mutex<Vec<Fence>>,
    /// The completions in failed `task_complete` calls, and what became of
    /// them: refused (`Request`), or applied with the reply lost (`Reply`:
    /// only those the store accepted).
    lost_reports: Mutex<Vec<(Fence, Lost)>>,
}

impl Plan {
    /// No operation fails from now on.
    fn heal(&self) {
        for faults in [
            &self.claim,
            &self.complete,
            &self.both,
            &self.renew,
            &self.rescue,
        ] {
            faults.fail_next(0).fail_every(0);
        }
    }
}

/// When one kind of operation fails, and how.
#[derive(Debug, Default)]
struct Faults {
    /// Calls so far.
    calls: AtomicU32,
    /// Failed calls so far.
    failed: AtomicU32,
    /// The next this many calls fail ([`FOREVER`]: all of them).
    next: AtomicU32,
    /// Every `every`-th call fails as well, counting from the first (0: none).
    every: AtomicU32,
    /// Every `reply_every`-th failure applies the operation, then loses its
    /// reply (0: none); the others fail before reaching the store.
    reply_every: AtomicU32,
    /// Fail with an error that is not the backend's.
    fatal: AtomicBool,
}

/// What a failed operation did to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lost {
    /// Nothing: the request failed before reaching the store.
    Request,
    /// The operation was applied, and its reply lost.
    Reply,
}

impl Faults {
    /// The next `n` calls fail.
    fn fail_next(&self, n: u32) -> &Self {
        self.next.store(n, SeqCst);
        self
    }

    /// Every `n`-th call fails.
    fn fail_every(&self, n: u32) -> &Self {
        self.every.store(n, SeqCst);
        self
    }

    /// Every `n`-th failure happens after the store applied the operation.
    fn lose_reply_every(&self, n: u32) -> &Self {
        self.reply_every.store(n, SeqCst);
        self
    }

    /// Failures are not the backend's (`UnknownBatch`).
    fn fatal(&self) -> &Self {
        self.fatal.store(true, SeqCst);
        self
    }

    fn calls(&self) -> u32 {
        self.calls.load(SeqCst)
    }

    fn failed(&self) -> u32 {
        self.failed.load(SeqCst)
    }

    /// Whether this call fails, how, and with what.
    fn decide(&self) -> Option<(Lost, StoreError)> {
        let call = self.calls.fetch_add(1, SeqCst) + 1;
        let planned = self
            .next
            .fetch_update(SeqCst, SeqCst, |n| match n {
                0 => None,
                FOREVER => Some(FOREVER),
                n => Some(n - 1),
            })
            .is_ok();
        let every = self.every.load(SeqCst);
        let periodic = every > 0 && call.is_multiple_of(every);
        if !(planned || periodic) {
            return None;
        }
        let failure = self.failed.fetch_add(1, SeqCst) + 1;
        if self.fatal.load(SeqCst) {
            return Some((Lost::Request, StoreError::UnknownBatch(FATAL_BATCH)));
        }
        let reply_every = self.reply_every.load(SeqCst);
        let lost = if reply_every > 0 && failure.is_multiple_of(reply_every) {
            Lost::Reply
        } else {
            Lost::Request
        };
        let message = match lost {
            Lost::Request => "injected: database is locked",
            Lost::Reply => "injected: connection lost before the reply",
        };
        Some((
            lost,
            StoreError::Backend(Box::new(io::Error::other(message))),
        ))
    }
}

/// The batch named by injected fatal errors.
const FATAL_BATCH: BatchId = BatchId(-1);

/// Runs `op` unless `faults` fail it: before it reaches the store (which is
/// left untouched), or after the store applied it.
async fn faulty<T, F>(faults: &Faults, op: impl FnOnce() -> F) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, StoreError>>,
{
    match faults.decide() {
        None => op().await,
        Some((Lost::Request, error)) => Err(error),
        Some((Lost::Reply, error)) => {
            op().await?;
            Err(error)
        }
    }
}

impl<S: Store> Store for FlakyStore<S> {
    type Payload = S::Payload;
    type Output = S::Output;

    async fn task_claim(
        &self,
        request: ClaimRequest,
        now: Timestamp,
    ) -> Result<Claim<S::Payload, S::Output>, StoreError> {
        faulty(&self.plan.claim, || self.inner.task_claim(request, now)).await
    }

    async fn lease_renew(
        &self,
        worker: WorkerId,
        running: Vec<Fence>,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<Renewal, StoreError> {
        faulty(&self.plan.renew, || {
            self.inner.lease_renew(worker, running, lease_until, now)
        })
        .await
    }

    async fn task_complete(
        &self,
        worker: WorkerId,
        completions: Vec<Completion<S::Output>>,
        now: Timestamp,
    ) -> Result<Applied, StoreError> {
        let Some((lost, error)) = self.plan.complete.decide() else {
            return self.inner.task_complete(worker, completions, now).await;
        };
        let fences: Vec<Fence> = completions.iter().map(|c| c.fence).collect();
        let lost_fences: Vec<Fence> = match lost {
            Lost::Request => fences,
            Lost::Reply => {
                let applied = self.inner.task_complete(worker, completions, now).await?;
                fences
                    .into_iter()
                    .zip(&applied.results)
                    .filter(|(_, result)| result.is_ok())
                    .map(|(fence, _)| fence)
                    .collect()
            }
        };
        let mut lost_reports = self.plan.lost_reports.lock().unwrap();
        lost_reports.extend(lost_fences.into_iter().map(|fence| (fence, lost)));
        Err(error)
    }

    async fn task_complete_and_claim(
        &self,
        worker: WorkerId,
        completions: Vec<Completion<S::Output>>,
        request: ClaimRequest,
        now: Timestamp,
    ) -> CompleteAndClaim<S::Payload, S::Output> {
        let Some((lost, error)) = self.plan.both.decide() else {
            let both = complete_then_claim(self, worker, completions, request, now).await?;
            if both.1.is_err() {
                self.plan.claims_failed_alone.fetch_add(1, SeqCst);
            }
            return Ok(both);
        };
        let fences: Vec<Fence> = completions.iter().map(|c| c.fence).collect();
        let lost_fences: Vec<Fence> = match lost {
            Lost::Request => fences,
            Lost::Reply => {
                // Recorded and claimed, in one step as a durable store does:
                // the claimed tasks are never started, and are rescued.
                let (applied, claim) = self
                    .inner
                    .task_complete_and_claim(worker, completions, request, now)
                    .await?;
                let claimed = claim.map(|c| c.tasks).unwrap_or_default();
                self.plan
                    .lost_claims
                    .lock()
                    .unwrap()
                    .extend(claimed.iter().map(|t| Fence {
                        task: t.id,
                        attempt: t.attempt,
                    }));
                fences
                    .into_iter()
                    .zip(&applied.results)
                    .filter(|(_, result)| result.is_ok())
                    .map(|(fence, _)| fence)
                    .collect()
            }
        };
        let mut lost_reports = self.plan.lost_reports.lock().unwrap();
        lost_reports.extend(lost_fences.into_iter().map(|fence| (fence, lost)));
        Err(error)
    }

    async fn task_rescue(&self, now: Timestamp) -> Result<Events, StoreError> {
        faulty(&self.plan.rescue, || self.inner.task_rescue(now)).await
    }

    herd_core::delegate_store!(inner:
        worker_register,
        batch_insert,
        task_append,
        batch_seal,
        task_cancel,
        batch_cancel,
        batch_pause,
        batch_resume,
        batch_rerun,
        batch_expire,
        batch_get,
        batch_stats,
        task_get,
        worker_expire,
        batch_list,
        task_list,
        task_attempts,
        worker_list,
        event_list,
        batch_purge,
        events,
        signals,
        retains_finished_tasks,
    );
}

/// Succeeds after the time `work` gives for the task's index (at its first
/// poll for zero), and records every start and every end delivered to it.
/// Each report carries the task's index, to check that deliveries match.
struct Tally {
    work: fn(u64) -> Duration,
    starts: Mutex<HashMap<TaskId, u32>>,
    /// Per task: the ends delivered.
    ends: Mutex<HashMap<TaskId, Vec<Delivered>>>,
}

/// An end delivered, with the index its attempt's report carried (`None`:
/// delivered without a report, as ends the worker did not report are).
type Delivered = (TaskEnd, Option<u64>);

impl Tally {
    fn starts(&self, task: TaskId) -> u32 {
        self.starts.lock().unwrap().get(&task).copied().unwrap_or(0)
    }

    fn started(&self) -> usize {
        self.starts.lock().unwrap().len()
    }

    fn ends(&self, task: TaskId) -> Vec<Delivered> {
        self.ends
            .lock()
            .unwrap()
            .get(&task)
            .cloned()
            .unwrap_or_default()
    }
}

impl<S: Store<Payload = String, Output = String>> Runner<S> for Tally {
    fn start(
        &self,
        task: ClaimedTask<String, String>,
        _cancel: Cancellation,
    ) -> BoxFuture<'static, AttemptReport<String>> {
        *self.starts.lock().unwrap().entry(task.id).or_default() += 1;
        let (index, work) = (task.index, (self.work)(task.index));
        Box::pin(async move {
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            AttemptReport {
                delivery: Some(Box::new(index)),
                ..AttemptReport::succeeded()
            }
        })
    }

    fn deliver(&self, end: TaskEnd, delivery: Option<Box<dyn Any + Send>>) {
        let index = delivery.map(|d| *d.downcast::<u64>().expect("reports carry their index"));
        let mut ends = self.ends.lock().unwrap();
        ends.entry(end.task).or_default().push((end, index));
    }
}

/// A flaky memory store, its plan, a runner for [`FLOW`] and the slots of
/// the worker.
struct Harness {
    store: Arc<Flaky>,
    plan: Arc<Plan>,
    tally: Arc<Tally>,
    router: Arc<Router<Flaky>>,
    clock: Arc<dyn Clock>,
    pool: Arc<SlotPool>,
}

impl Harness {
    async fn new(work: fn(u64) -> Duration) -> Self {
        let plan = Arc::new(Plan::default());
        let store = Arc::new(FlakyStore {
            inner: MemoryStore::retaining(),
            plan: plan.clone(),
        });
        let tally = Arc::new(Tally {
            work,
            starts: Mutex::default(),
            ends: Mutex::default(),
        });
        let router = Arc::new(Router::new());
        router.lock().await.add_flow(Arc::from(FLOW), tally.clone());
        Harness {
            store,
            plan,
            tally,
            router,
            clock: Arc::new(TokioClock::new()),
            pool: Arc::new(SlotPool::new(SLOTS, 1)),
        }
    }

    /// Stores a batch of `tasks` tasks, its ends delivered to the tally.
    async fn submit(&self, tasks: u64) -> Inserted {
        let mut spec = BatchSpec::new(FLOW);
        spec.concurrency = SLOTS;
        // A report may be lost more than once; each loss costs the task one
        // of these.
        spec.policy.retry.max_lost = 10;
        spec.tasks = (0..tasks).map(|i| TaskSpec::new(i.to_string())).collect();
        let mut routes = self.router.lock().await;
        let inserted = self
            .store
            .batch_insert(spec, self.clock.now())
            .await
            .unwrap();
        routes.bind(inserted.batch, self.tally.clone());
        inserted
    }

    fn spawn(&self) -> WorkerHandle {
        spawn_worker(
            self.store.clone(),
            self.router.clone(),
            self.clock.clone(),
            WorkerConfig {
                slots: SLOTS,
                lease: LEASE,
                heartbeat: HEARTBEAT,
                pool: Some(self.pool.clone()),
                ..WorkerConfig::default()
            },
        )
    }

    /// Waits for `batch` to end, checking all along that the worker lives.
    async fn finished(&self, batch: BatchId, worker: &WorkerHandle) -> BatchInfo {
        let within = Duration::from_secs(120);
        let info = self.settled(batch, worker, within).await;
        assert!(
            info.state.is_terminal(),
            "the batch ends within {within:?} (paused): {info:?}"
        );
        info
    }

    /// The batch once it has ended, or after `within`, whichever comes first;
    /// checks all along that the worker lives.
    async fn settled(&self, batch: BatchId, worker: &WorkerHandle, within: Duration) -> BatchInfo {
        let give_up = Instant::now() + within;
        loop {
            let info = self.store.batch_get(batch).await.unwrap();
            if info.state.is_terminal() || Instant::now() >= give_up {
                return info;
            }
            assert!(
                !worker.is_finished(),
                "the worker ended while work remained: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asserts that every slot is back in the pool: none leaked.
    fn assert_slots_free(&self) {
        assert!(
            self.pool.take_exactly(SLOTS),
            "all {SLOTS} slots are free once the worker is idle"
        );
        self.pool.untake(SLOTS);
    }
}

/// Waits until `done` holds, polling every millisecond of paused time.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

// ---------------------------------------------------------------------------
// Store failures: the tests.
// ---------------------------------------------------------------------------

/// Claims and completions fail now and then, completions in both ways (the
/// store untouched, or the commit made and the reply lost): the worker rides
/// it all out, every task succeeds once, reports that never reached the store
/// are made good by the rescuer, and no slot leaks.
#[tokio::test(start_paused = true)]
async fn backend_failures_of_claims_and_completions_are_waited_out() {
    // Every third task ends at its first poll; the others take 10–40 ms.
    let h = Harness::new(|index| match index % 3 {
        0 => Duration::ZERO,
        _ => Duration::from_millis(10 * (1 + index % 4)),
    })
    .await;
    h.plan.claim.fail_next(3);
    h.plan.complete.fail_every(4).lose_reply_every(2);
    let mut events = h.store.events();
    let inserted = h.submit(50).await;
    let worker = h.spawn();

    let info = h.finished(inserted.batch, &worker).await;
    assert_eq!(info.state, BatchState::Succeeded, "{info:?}");
    assert_eq!(info.counts.succeeded, 50, "{info:?}");

    // The plan did what it says, so that the rest means something.
    assert_eq!(h.plan.claim.failed(), 3);
    let lost_reports = h.plan.lost_reports.lock().unwrap().clone();
    for kind in [Lost::Request, Lost::Reply] {
        assert!(
            lost_reports.iter().any(|(_, lost)| *lost == kind),
            "some reports were lost so: {kind:?} (lost: {lost_reports:?})"
        );
    }

    // In the store's view, every task succeeded, once.
    let mut succeeded: HashMap<TaskId, u32> = HashMap::new();
    while let Ok(batch) = events.try_recv() {
        for event in batch.iter() {
            if let Some((task, TaskState::Succeeded, _)) = event.task_transition() {
                *succeeded.entry(task).or_default() += 1;
            }
        }
    }
    for &task in &inserted.tasks {
        assert_eq!(succeeded.get(&task), Some(&1), "task {task} succeeded once");
    }

    let reply_lost = |task: TaskId| {
        lost_reports
            .iter()
            .any(|(fence, lost)| fence.task == task && *lost == Lost::Reply)
    };
    for (index, &task) in inserted.tasks.iter().enumerate() {
        let info = h.store.task_get(task).await.unwrap();
        assert_eq!(info.state, TaskState::Succeeded, "{info:?}");
        for (fence, lost) in lost_reports.iter().filter(|(f, _)| f.task == task) {
            match lost {
                // Left running in the store, rescued at its lease's end and
                // run again.
                Lost::Request => assert!(
                    info.lost >= 1 && info.attempt > fence.attempt,
                    "task {task}, its report of attempt {} refused, was rescued: {info:?}",
                    fence.attempt
                ),
                // Committed: the task ended with that attempt.
                Lost::Reply => assert_eq!(info.attempt, fence.attempt, "{info:?}"),
            }
        }
        assert_eq!(
            h.tally.starts(task),
            info.attempt.0,
            "task {task} started once per attempt"
        );
        let ends = h.tally.ends(task);
        if reply_lost(task) {
            // Its report is committed with no one to deliver it; see
            // `every_task_is_delivered_once_though_a_completion_reply_is_lost`.
            assert!(
                ends.len() <= 1,
                "task {task} delivered at most once: {ends:?}"
            );
            continue;
        }
        assert_eq!(ends.len(), 1, "task {task} delivered once: {ends:?}");
        let (end, carried) = &ends[0];
        assert_eq!(
            (end.state, end.index, end.attempt, *carried),
            (
                TaskState::Succeeded,
                index as u64,
                info.attempt,
                Some(index as u64)
            ),
            "task {task}'s end comes with its own attempt's report"
        );
    }

    // Settled: no attempt holds a slot, and no failed claim kept one.
    tokio::time::sleep(HEARTBEAT).await;
    h.assert_slots_free();
    assert!(!worker.is_finished());
    h.plan.heal();
    worker.shutdown().await.unwrap();
}

/// Renewals and rescues fail now and then as well as claims and completions:
/// the batch still succeeds, and the worker lives on.
#[tokio::test(start_paused = true)]
async fn backend_failures_of_every_worker_operation_are_waited_out() {
    let h = Harness::new(|index| Duration::from_millis(50 * (index % 5))).await;
    h.plan.claim.fail_every(3);
    h.plan.complete.fail_every(3).lose_reply_every(2);
    h.plan.renew.fail_every(3);
    h.plan.rescue.fail_every(2);
    let inserted = h.submit(50).await;
    let worker = h.spawn();

    let info = h.finished(inserted.batch, &worker).await;
    assert_eq!(info.state, BatchState::Succeeded, "{info:?}");
    assert_eq!(info.counts.succeeded, 50, "{info:?}");
    for faults in [
        &h.plan.claim,
        &h.plan.complete,
        &h.plan.renew,
        &h.plan.rescue,
    ] {
        assert!(faults.failed() > 0, "every kind of operation failed");
    }
    tokio::time::sleep(HEARTBEAT).await;
    h.assert_slots_free();
    // A failure while stopping would end the worker with it.
    h.plan.heal();
    worker.shutdown().await.unwrap();
}

/// Reports and claims go to the store in one call when a turn has both. That
/// call fails now and then in either way (nothing recorded, or everything
/// recorded and the reply lost), and its claim fails alone now and then
/// (as in a store that runs the two steps apart): the worker rides it out
/// as it does separate failures. Every task succeeds once; reports that
/// never reached the store are made good by the rescuer, and tasks claimed
/// in a call whose reply was lost are rescued too; reports recorded before a
/// claim failed are delivered; no slot leaks.
#[tokio::test(start_paused = true)]
async fn failures_of_reports_and_claims_made_together_are_waited_out() {
    let h = Harness::new(|index| Duration::from_millis(10 * (1 + index % 4))).await;
    h.plan.both.fail_every(3).lose_reply_every(2);
    h.plan.claim.fail_every(4);
    let mut events = h.store.events();
    let inserted = h.submit(60).await;
    let worker = h.spawn();

    let info = h.finished(inserted.batch, &worker).await;
    assert_eq!(info.state, BatchState::Succeeded, "{info:?}");
    assert_eq!(info.counts.succeeded, 60, "{info:?}");

    // The plan did what it says, so that the rest means something.
    assert!(h.plan.both.calls() > 10, "reports went with claims");
    assert!(
        h.plan.claims_failed_alone.load(SeqCst) > 0,
        "some claims failed after their reports were recorded"
    );
    let lost_reports = h.plan.lost_reports.lock().unwrap().clone();
    for kind in [Lost::Request, Lost::Reply] {
        assert!(
            lost_reports.iter().any(|(_, lost)| *lost == kind),
            "some reports were lost so: {kind:?} (lost: {lost_reports:?})"
        );
    }

    let lost_claims = h.plan.lost_claims.lock().unwrap().clone();
    assert!(
        !lost_claims.is_empty(),
        "some claims were lost with a reply"
    );

    let mut succeeded: HashMap<TaskId, u32> = HashMap::new();
    while let Ok(batch) = events.try_recv() {
        for event in batch.iter() {
            if let Some((task, TaskState::Succeeded, _)) = event.task_transition() {
                *succeeded.entry(task).or_default() += 1;
            }
        }
    }
    for (index, &task) in inserted.tasks.iter().enumerate() {
        assert_eq!(succeeded.get(&task), Some(&1), "task {task} succeeded once");
        let info = h.store.task_get(task).await.unwrap();
        // Attempts claimed in a call whose reply was lost never started;
        // every other attempt did, once.
        let never_started = lost_claims.iter().filter(|f| f.task == task).count() as u32;
        assert_eq!(
            h.tally.starts(task) + never_started,
            info.attempt.0,
            "task {task}: {info:?}"
        );
        let mut reply_lost = false;
        for (fence, lost) in lost_reports.iter().filter(|(f, _)| f.task == task) {
            match lost {
                Lost::Request => assert!(
                    info.lost >= 1 && info.attempt > fence.attempt,
                    "task {task}, its report of attempt {} refused, was rescued: {info:?}",
                    fence.attempt
                ),
                Lost::Reply => {
                    reply_lost = true;
                    assert_eq!(info.attempt, fence.attempt, "{info:?}");
                }
            }
        }
        let ends = h.tally.ends(task);
        if reply_lost {
            assert!(
                ends.len() <= 1,
                "task {task} delivered at most once: {ends:?}"
            );
            continue;
        }
        assert_eq!(ends.len(), 1, "task {task} delivered once: {ends:?}");
        let (end, carried) = &ends[0];
        assert_eq!(
            (end.state, end.index, end.attempt, *carried),
            (
                TaskState::Succeeded,
                index as u64,
                info.attempt,
                Some(index as u64)
            ),
            "task {task}'s end comes with its own attempt's report"
        );
    }

    tokio::time::sleep(HEARTBEAT).await;
    h.assert_slots_free();
    assert!(!worker.is_finished());
    h.plan.heal();
    worker.shutdown().await.unwrap();
}

/// Runs one test body per store operation, as `fn(&Plan) -> &Faults`.
macro_rules! per_operation {
    ($body:ident: $($name:ident => $faults:ident),* $(,)?) => {
        $(
            #[tokio::test(start_paused = true)]
            async fn $name() {
                $body(|plan| &plan.$faults).await;
            }
        )*
    };
}

/// An error that is not the backend's ends the worker at once, without a
/// retry, and `shutdown` returns it.
async fn a_fatal_error_ends_the_worker(faults: fn(&Plan) -> &Faults) {
    // Long enough to be renewed, so that every operation comes up.
    let h = Harness::new(|_| Duration::from_secs(1)).await;
    faults(&h.plan).fatal().fail_next(1);
    h.submit(2).await;
    let worker = h.spawn();

    until("the worker ends on its own", || worker.is_finished()).await;
    assert_eq!(faults(&h.plan).calls(), 1, "a fatal error is not retried");
    match worker.shutdown().await {
        Err(StoreError::UnknownBatch(FATAL_BATCH)) => {}
        other => panic!("shutdown returns the fatal error, not {other:?}"),
    }
}

mod fatal_error_ends_the_worker {
    use super::*;

    per_operation!(a_fatal_error_ends_the_worker:
        from_claim => claim,
        from_complete => complete,
        from_complete_and_claim => both,
        from_renew => renew,
        from_rescue => rescue,
    );
}

/// Claims fail forever: the worker backs off rather than spin, and it still
/// stops when asked, at once: the stop cuts the backoff short, and a worker
/// that is stopping claims nothing more.
#[tokio::test(start_paused = true)]
async fn shutdown_returns_while_claims_fail_forever() {
    let h = Harness::new(|_| Duration::ZERO).await;
    h.plan.claim.fail_next(FOREVER);
    let inserted = h.submit(2).await;
    let worker = h.spawn();

    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        !worker.is_finished(),
        "backend failures do not end the worker"
    );
    // 50 ms doubling to 5 s: 12 tries in the first 30 s; a loop without
    // backoff would make thousands.
    let claims = h.plan.claim.calls();
    assert!((8..=16).contains(&claims), "{claims} claims in 30 s");

    let asked = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(60), worker.shutdown())
        .await
        .expect("shutdown returns");
    assert!(ended.is_ok(), "nothing failed once stopping: {ended:?}");
    assert_eq!(asked.elapsed(), Duration::ZERO, "the backoff is cut short");
    assert_eq!(h.plan.claim.calls(), claims, "no claim after the stop");
    for &task in &inserted.tasks {
        let info = h.store.task_get(task).await.unwrap();
        assert_eq!((info.state, info.attempt.0), (TaskState::Queued, 0));
    }
    assert_eq!(h.tally.started(), 0);
    h.assert_slots_free();
}

/// While claims fail, the attempts already running go on, are reported and
/// delivered, and keep their leases.
async fn running_attempts_outlive_a_claim_outage(rival_rescuer: bool) {
    let h = Harness::new(|_| Duration::from_secs(2)).await;
    // Fewer tasks than slots: the worker goes on claiming.
    let inserted = h.submit(2).await;
    let worker = h.spawn();
    until("both tasks run", || h.tally.started() == 2).await;
    h.plan.claim.fail_next(FOREVER);

    let rival = rival_rescuer.then(|| {
        // Another worker of the same store, as alive as this one: it rescues
        // leases that were not renewed in time.
        let (store, clock) = (h.store.clone(), h.clock.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                store.task_rescue(clock.now()).await.unwrap();
            }
        })
    });
    // The attempts take 2 s; their reports wait out one backoff at most.
    let info = h
        .settled(inserted.batch, &worker, Duration::from_secs(10))
        .await;
    if let Some(rival) = rival {
        rival.abort();
    }
    assert!(h.plan.claim.failed() > 0, "claims failed meanwhile");
    for &task in &inserted.tasks {
        let info = h.store.task_get(task).await.unwrap();
        assert_eq!(
            (info.attempt.0, info.lost),
            (1, 0),
            "task {task} was not rescued from under its worker: {info:?}"
        );
        assert_eq!(h.tally.starts(task), 1);
        assert_eq!(h.tally.ends(task).len(), 1);
    }
    assert_eq!(info.state, BatchState::Succeeded, "{info:?}");
    assert!(!worker.is_finished());
    h.plan.heal();
    worker.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn running_attempts_outlive_a_claim_outage_alone() {
    running_attempts_outlive_a_claim_outage(false).await;
}

#[tokio::test(start_paused = true)]
async fn running_attempts_outlive_a_claim_outage_beside_a_rescuer() {
    running_attempts_outlive_a_claim_outage(true).await;
}

/// Asked to stop while it waits out a failure, the worker claims nothing
/// more: `shutdown` "stops claiming".
#[tokio::test(start_paused = true)]
async fn a_worker_asked_to_stop_during_a_backoff_starts_nothing() {
    let h = Harness::new(|_| Duration::from_secs(1)).await;
    h.plan.claim.fail_next(1);
    h.submit(2).await;
    let worker = h.spawn();
    until("a claim failed", || h.plan.claim.failed() == 1).await;

    worker.shutdown().await.unwrap();
    assert_eq!(h.plan.claim.calls(), 1, "no claim after the stop");
    assert_eq!(h.tally.started(), 0, "nothing starts after the stop");
}

/// Failures far apart, with successes between them, each wait the first
/// backoff (50 ms): the backoff counts consecutive failures only, even while
/// the worker is too busy to idle.
#[tokio::test(start_paused = true)]
async fn isolated_failures_each_wait_the_first_backoff() {
    // Attempts that end at their first poll keep the loop busy.
    let h = Harness::new(|_| Duration::ZERO).await;
    // Committed, the reply lost: nothing waits on a lease.
    h.plan.complete.fail_every(4).lose_reply_every(1);
    let inserted = h.submit(200).await;
    let started = Instant::now();
    let worker = h.spawn();

    let info = h.finished(inserted.batch, &worker).await;
    assert_eq!(info.state, BatchState::Succeeded, "{info:?}");
    let failed = h.plan.complete.failed();
    assert!(failed >= 10, "{failed} completions failed");
    // 50 ms each, and as much again for the heartbeats between.
    let bound = Duration::from_millis(100) * failed;
    assert!(
        started.elapsed() <= bound,
        "{failed} isolated failures took {:?} (at most {bound:?})",
        started.elapsed()
    );
    h.plan.heal();
    worker.shutdown().await.unwrap();
}

/// Attempts that end when the test lets them, one permit each.
struct Gate {
    open: Arc<tokio::sync::Semaphore>,
    starts: AtomicU32,
}

impl<S: Store<Payload = String, Output = String>> Runner<S> for Gate {
    fn start(
        &self,
        _task: ClaimedTask<String, String>,
        _cancel: Cancellation,
    ) -> BoxFuture<'static, AttemptReport<String>> {
        self.starts.fetch_add(1, SeqCst);
        let open = self.open.clone();
        Box::pin(async move {
            open.acquire().await.expect("open").forget();
            AttemptReport::succeeded()
        })
    }

    fn deliver(&self, _end: TaskEnd, _delivery: Option<Box<dyn Any + Send>>) {}
}

/// A stop asked in the same wake-up as an attempt's end (the worker sees
/// both when it next runs, and its select takes the attempt first) still
/// stops the next claim: nothing starts after `stop`.
#[tokio::test]
async fn a_stop_that_comes_with_an_attempts_end_claims_nothing_more() {
    let store = Arc::new(MemoryStore::<String, String>::retaining());
    let gate = Arc::new(Gate {
        open: Arc::new(tokio::sync::Semaphore::new(0)),
        starts: AtomicU32::new(0),
    });
    let router = Arc::new(Router::new());
    router
        .lock()
        .await
        .add_flow(Arc::from("gate"), gate.clone());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut spec = BatchSpec::new("gate");
    spec.tasks = vec![TaskSpec::new("a".into()), TaskSpec::new("b".into())];
    let batch = store.batch_insert(spec, clock.now()).await.unwrap().batch;
    let mut worker = spawn_worker(
        store.clone(),
        router,
        clock,
        WorkerConfig {
            slots: 1,
            ..WorkerConfig::default()
        },
    );
    until_started(&gate, 1).await;
    // No await between the two: on this one-thread runtime the worker sees
    // the attempt's end and the stop together.
    gate.open.add_permits(1);
    worker.stop();
    // A task started after the stop would wait at the gate forever.
    let joined = tokio::time::timeout(Duration::from_secs(10), worker.join()).await;
    assert_eq!(
        gate.starts.load(SeqCst),
        1,
        "nothing started after the stop"
    );
    joined
        .expect("the worker ends once its attempt has")
        .unwrap();
    let info = store.batch_get(batch).await.unwrap();
    assert_eq!((info.counts.succeeded, info.counts.queued), (1, 1));
}

/// Yields until `n` attempts have started.
async fn until_started(gate: &Gate, n: u32) {
    for _ in 0..10_000 {
        if gate.starts.load(SeqCst) >= n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{n} attempts did not start");
}

// ---------------------------------------------------------------------------
// Tasks held ahead (`WorkerConfig::ahead`).
// ---------------------------------------------------------------------------

/// A worker with one slot, holding two tasks ahead, over a batch of six
/// tasks waiting at `gate`: the store, the batch, its tasks and the worker.
async fn holding_worker(
    gate: &Arc<Gate>,
) -> (
    Arc<MemoryStore<String, String>>,
    BatchId,
    Vec<TaskId>,
    WorkerHandle,
) {
    let store = Arc::new(MemoryStore::<String, String>::retaining());
    let payloads = ["a", "b", "c", "d", "e", "f"].map(String::from).to_vec();
    let clock = Arc::new(SystemClock);
    let (_, inserted, worker) = one_slot_holding(
        store.clone(),
        clock,
        gate.clone(),
        payloads,
        2,
        WorkerConfig::HOLD_FOR,
    )
    .await;
    (store, inserted.batch, inserted.tasks, worker)
}

/// Yields until `batch` has `n` tasks running in the store.
async fn until_claimed(store: &MemoryStore<String, String>, batch: BatchId, n: u64) {
    for _ in 0..10_000 {
        if store.batch_get(batch).await.unwrap().counts.running == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{batch} never had {n} tasks running");
}

/// Once attempts are short, a worker claims tasks beyond its slots and
/// holds them: one runs at a time (its one slot), two more are claimed, and
/// when the running one ends the next held one starts while the report and
/// the next claim are on their way. Stopped, it gives back the tasks it
/// held: queued again, attempt 0, nothing counted, never run.
#[tokio::test]
async fn a_worker_holds_tasks_ahead_and_gives_them_back_when_it_stops() {
    let gate = Arc::new(Gate {
        open: Arc::new(tokio::sync::Semaphore::new(0)),
        starts: AtomicU32::new(0),
    });
    let (store, batch, tasks, mut worker) = holding_worker(&gate).await;
    until_started(&gate, 1).await;
    assert_eq!(
        store.batch_get(batch).await.unwrap().counts.running,
        1,
        "nothing held before an attempt has shown how long attempts take"
    );
    gate.open.add_permits(1);
    until_claimed(&store, batch, 3).await;
    until_started(&gate, 2).await;
    gate.open.add_permits(1);
    until_started(&gate, 3).await;
    until_claimed(&store, batch, 3).await;
    assert_eq!(gate.starts.load(SeqCst), 3, "one at a time");

    worker.stop();
    gate.open.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), worker.join())
        .await
        .expect("the worker ends once its attempt has")
        .unwrap();
    assert_eq!(gate.starts.load(SeqCst), 3, "the held tasks never ran");
    let info = store.batch_get(batch).await.unwrap();
    assert_eq!(
        (
            info.counts.succeeded,
            info.counts.queued,
            info.counts.running
        ),
        (3, 3, 0)
    );
    assert_eq!(info.retries, 0);
    for &task in &tasks[3..] {
        let t = store.task_get(task).await.unwrap();
        assert_eq!((t.state, t.attempt.0, t.lost), (TaskState::Queued, 0, 0));
        assert!(store.task_attempts(task).await.unwrap().is_empty());
    }
}

/// Tasks held when their batch is cancelled end cancelled without running.
#[tokio::test]
async fn held_tasks_of_a_cancelled_batch_never_run() {
    let gate = Arc::new(Gate {
        open: Arc::new(tokio::sync::Semaphore::new(0)),
        starts: AtomicU32::new(0),
    });
    let (store, batch, tasks, worker) = holding_worker(&gate).await;
    until_started(&gate, 1).await;
    gate.open.add_permits(1);
    until_claimed(&store, batch, 3).await;
    until_started(&gate, 2).await;
    store
        .batch_cancel(batch, CancelMode::Forced, SystemClock.now())
        .await
        .unwrap();
    let info = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let info = store.batch_get(batch).await.unwrap();
            if info.state.is_terminal() {
                return info;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the batch ends at once");
    assert_eq!(info.state, BatchState::Cancelled);
    assert_eq!((info.counts.succeeded, info.counts.cancelled), (1, 5));
    assert_eq!(gate.starts.load(SeqCst), 2, "the held tasks never ran");
    for &task in &tasks[2..4] {
        let t = store.task_get(task).await.unwrap();
        assert_eq!(
            (t.state, t.reason),
            (TaskState::Cancelled, Some(Reason::ByUser))
        );
    }
    worker.shutdown().await.unwrap();
}

/// A worker with one slot that may hold `ahead` tasks, over a batch in
/// `store` of `payloads` that `runner` runs (its concurrency the slot and
/// the hand): a subscription taken before the batch, the batch as
/// inserted, and the worker.
async fn one_slot_holding<R: Runner<MemoryStore<String, String>> + 'static>(
    store: Arc<MemoryStore<String, String>>,
    clock: Arc<dyn Clock>,
    runner: Arc<R>,
    payloads: Vec<String>,
    ahead: u32,
    hold_for: Duration,
) -> (broadcast::Receiver<Events>, Inserted, WorkerHandle) {
    let router = Arc::new(Router::new());
    router.lock().await.add_flow(Arc::from("flow"), runner);
    let events = store.events();
    let mut spec = BatchSpec::new("flow");
    spec.concurrency = 1 + ahead;
    spec.tasks = payloads.into_iter().map(TaskSpec::new).collect();
    let inserted = store.batch_insert(spec, clock.now()).await.unwrap();
    let worker = spawn_worker(
        store,
        router,
        clock,
        WorkerConfig {
            slots: 1,
            ahead,
            hold_for,
            ..WorkerConfig::default()
        },
    );
    (events, inserted, worker)
}

/// [`one_slot_holding`] on a fresh memory store, in paused time, with every
/// task sleeping `takes` (see [`Sleep`]).
async fn one_slot_sleeping(
    takes: Duration,
    payloads: Vec<String>,
    ahead: u32,
    hold_for: Duration,
) -> (
    Arc<MemoryStore<String, String>>,
    broadcast::Receiver<Events>,
    BatchId,
    WorkerHandle,
) {
    let store = Arc::new(MemoryStore::<String, String>::new());
    let clock = Arc::new(TokioClock::new());
    let (events, inserted, worker) = one_slot_holding(
        store.clone(),
        clock,
        Arc::new(Sleep(takes)),
        payloads,
        ahead,
        hold_for,
    )
    .await;
    (store, events, inserted.batch, worker)
}

/// The most tasks the store had running for a worker with one slot that
/// may hold `ahead` ahead for `hold_for`, over tasks that each take
/// `takes` (paused time).
async fn most_claimed_at_once(takes: Duration, ahead: u32, hold_for: Duration) -> u64 {
    let payloads = (0..24).map(|i| i.to_string()).collect();
    let (_store, mut events, batch, worker) =
        one_slot_sleeping(takes, payloads, ahead, hold_for).await;
    let (mut running, mut most) = (0i64, 0i64);
    loop {
        let group = events.recv().await.unwrap();
        for e in group.iter() {
            match e.kind {
                herd_core::EventKind::Task { from, to, .. } => {
                    running += i64::from(to == TaskState::Running);
                    running -= i64::from(from == Some(TaskState::Running));
                    most = most.max(running);
                }
                herd_core::EventKind::Batch { to, .. } if to.is_terminal() => {
                    assert_eq!(e.batch, batch);
                    worker.shutdown().await.unwrap();
                    return most as u64;
                }
                herd_core::EventKind::Batch { .. } => {}
            }
        }
    }
}

/// Runs every task for a fixed time, but one whose payload is "long" for
/// ten minutes.
struct Sleep(Duration);

impl<S: Store<Payload = String, Output = String>> Runner<S> for Sleep {
    fn start(
        &self,
        task: ClaimedTask<String, String>,
        _cancel: Cancellation,
    ) -> BoxFuture<'static, AttemptReport<String>> {
        let takes = match task.payload.as_str() {
            "long" => Duration::from_secs(600),
            _ => self.0,
        };
        Box::pin(async move {
            tokio::time::sleep(takes).await;
            AttemptReport::succeeded()
        })
    }

    fn deliver(&self, _end: TaskEnd, _delivery: Option<Box<dyn Any + Send>>) {}
}

/// A worker holds tasks ahead only while attempts are short: a task held
/// behind long ones would wait long, leased, where another worker could
/// run it.
#[tokio::test(start_paused = true)]
async fn a_worker_holds_tasks_only_while_attempts_are_short() {
    let short = WorkerConfig::HOLD_WHILE_UNDER / 10;
    assert_eq!(
        most_claimed_at_once(short, 2, WorkerConfig::HOLD_FOR).await,
        3,
        "1 running, 2 held"
    );
    let long = WorkerConfig::HOLD_WHILE_UNDER * 2;
    assert_eq!(
        most_claimed_at_once(long, 2, WorkerConfig::HOLD_FOR).await,
        1,
        "none held"
    );
}

/// A worker holds no more than its slots start in `HOLD_FOR` at the pace
/// its attempts end, however many it may hold: the last held waits about
/// that long, whatever the attempts' length.
#[tokio::test(start_paused = true)]
async fn the_hand_is_bounded_in_time() {
    // Timers tick in whole milliseconds: durations that round to none.
    assert_eq!(WorkerConfig::HOLD_FOR, Duration::from_millis(20));
    let quick = Duration::from_millis(2);
    assert_eq!(
        most_claimed_at_once(quick, 8, WorkerConfig::HOLD_FOR).await,
        9,
        "1 running, 8 held"
    );
    let slower = Duration::from_millis(8);
    assert_eq!(
        most_claimed_at_once(slower, 8, WorkerConfig::HOLD_FOR).await,
        3,
        "1 running, 2 held"
    );
    let slow = WorkerConfig::HOLD_FOR * 2;
    assert!(slow < WorkerConfig::HOLD_WHILE_UNDER);
    assert_eq!(
        most_claimed_at_once(slow, 8, WorkerConfig::HOLD_FOR).await,
        2,
        "1 running, 1 held"
    );
}

/// A worker told to hold tasks longer (`herd run`'s, alone on its batch)
/// holds as many more at the same pace, `ahead` at most.
#[tokio::test(start_paused = true)]
async fn a_longer_hold_holds_more() {
    let slower = Duration::from_millis(8);
    let hold_for = Duration::from_millis(40);
    assert_eq!(
        most_claimed_at_once(slower, 8, hold_for).await,
        6,
        "1 running, 5 held"
    );
    let hold_for = Duration::from_millis(200);
    assert_eq!(
        most_claimed_at_once(slower, 8, hold_for).await,
        9,
        "1 running, 8 held: `ahead` bounds it"
    );
}

/// With tasks held, a store call reports several ended attempts and
/// claims as many: the hand is filled again once half of it has started,
/// and reports wait for that call, so that short tasks do not cost a store
/// call each. Once the batch runs dry the last reports go at once.
#[tokio::test(start_paused = true)]
async fn held_tasks_make_store_calls_report_several() {
    let payloads = (0..60).map(|i| i.to_string()).collect();
    let (_store, mut events, _batch, worker) = one_slot_sleeping(
        Duration::from_millis(1),
        payloads,
        8,
        WorkerConfig::HOLD_FOR,
    )
    .await;
    // Each operation's events come as one group: count the groups that
    // record a task's end, and the ends.
    let (mut reports, mut ended) = (0, 0);
    while ended < 60 {
        let group = events.recv().await.unwrap();
        let ends = group
            .iter()
            .filter(|e| matches!(e.kind, herd_core::EventKind::Task { to, .. } if to.is_terminal()))
            .count();
        reports += usize::from(ends > 0);
        ended += ends;
    }
    worker.shutdown().await.unwrap();
    assert!(
        reports <= 60 / 3,
        "{reports} store calls reported the 60 ends"
    );
}

/// Reports wait for the hand's refill no longer than a short attempt: when
/// a long task takes the only slot and the hand stays full, the tasks that
/// ended before it are reported within that time, not when the long one
/// ends (their attempts are no longer renewed: their leases would expire).
#[tokio::test(start_paused = true)]
async fn reports_wait_for_the_refill_only_briefly() {
    let payloads = (0..20)
        .map(|i| {
            if i == 10 {
                "long".into()
            } else {
                i.to_string()
            }
        })
        .collect();
    let (store, _events, batch, worker) = one_slot_sleeping(
        Duration::from_millis(1),
        payloads,
        8,
        WorkerConfig::HOLD_FOR,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let info = store.batch_get(batch).await.unwrap();
    assert_eq!(
        info.counts.succeeded, 10,
        "the ten tasks before the long one are reported while it runs"
    );
    worker.abort();
}
