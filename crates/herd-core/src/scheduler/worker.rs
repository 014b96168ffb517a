//! The worker loop: claim, run, report, renew — one loop per worker.
//!
//! Each turn of the loop reports every attempt that finished since the last
//! turn (group commit) and claims as many tasks as it has free slots, in one
//! store call ([`Store::task_complete_and_claim`]; a report alone when there
//! is nothing to claim, a claim alone when there is nothing to report),
//! starts them, and waits for the next finished attempt, a wake-up from the
//! store, or a timer (heartbeat, retry due, deadline). When another store
//! call follows at once, the claimed tasks start once its request is on its
//! way, so that the store and the spawns overlap.
//!
//! Attempts are futures polled by the loop itself, in a `FuturesUnordered`
//! (as nextest's runner and `buffer_unordered` do), each under its timeout and
//! its batch deadline, and dropped when either passes; the loop keeps polling
//! them while it waits for the store. This keeps a task's whole life on one
//! thread: no hand-off between threads per task. With
//! [`WorkerConfig::spawn_attempts`], each attempt runs as its own tokio task
//! instead, so that CPU-heavy handlers use every core.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pool::SlotPool;
use super::router::Router;
use super::runner::{AttemptReport, AttemptResult, Runner, TaskEnd};
use super::signal::Cancellation;
use crate::model::{
    Attempt, BatchId, BatchPolicy, Clock, Failure, Reason, TaskId, Timestamp, WorkerId,
};
use crate::store::{
    Applied, AttemptLog, AttemptOutcome, CancelMode, Claim, ClaimRequest, ClaimedTask,
    CompleteAndClaim, Completion, Fence, Store, StoreError,
};
use crate::util::IdMap;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Cost units it runs at once, when it shares no [`SlotPool`].
    pub slots: u32,
    /// How long a claim holds without renewal.
    pub lease: Duration,
    /// How often leases are renewed and expired leases rescued.
    pub heartbeat: Duration,
    /// The host name it registers under.
    pub host: String,
    /// Run each attempt as its own tokio task (parallel on every core, one
    /// spawn per attempt) instead of polling it in the worker loop.
    pub spawn_attempts: bool,
    /// Slots shared with other workers of this process; `None`: the worker's
    /// own `slots`.
    pub pool: Option<Arc<SlotPool>>,
    /// Claim tasks only from this batch; `None`: from any batch.
    pub batch: Option<BatchId>,
    /// Cost units of tasks it may hold claimed beyond its slots, at most,
    /// ready to start the moment a slot frees, so that a slot does not
    /// wait for the store call that reports its last attempt and claims
    /// the next (0: none). The hand is filled again once half of it has
    /// started, and reports wait for that call while held tasks remain, so
    /// that one store call reports and claims several tasks. It holds
    /// tasks only while its attempts are short (under
    /// [`WorkerConfig::HOLD_WHILE_UNDER`] on average), and no more than
    /// its slots start in [`WorkerConfig::hold_for`] at that pace: a task
    /// held is leased, counts against its batch's concurrency, and waits;
    /// long attempts would leave it waiting long, where another worker
    /// could run it. A stopping worker gives the tasks it holds back
    /// ([`AttemptOutcome::Released`]).
    pub ahead: u32,
    /// How long the last of a full hand waits, about: the hand holds no
    /// more than the worker's slots start in this time, at the pace its
    /// attempts end ([`WorkerConfig::ahead`] at most, one unit at least).
    /// So the shorter the attempts, the more tasks a store call serves,
    /// while a held task waits about as long whatever their length.
    /// [`WorkerConfig::HOLD_FOR`] by default.
    pub hold_for: Duration,
}

impl WorkerConfig {
    /// How short attempts must be, on average, for a worker to hold tasks
    /// ahead ([`WorkerConfig::ahead`]).
    pub const HOLD_WHILE_UNDER: Duration = Duration::from_millis(50);

    /// [`WorkerConfig::hold_for`] by default: a held task waits no longer
    /// than a short attempt could take.
    pub const HOLD_FOR: Duration = Duration::from_millis(20);

    /// The cost units to hold ahead when attempts take `pace` on average
    /// and `slots` run at once; `ahead` at most.
    fn hand(&self, slots: u32, pace: Duration) -> u32 {
        let per_slot = self.hold_for.as_nanos() / pace.as_nanos().max(1);
        let units = u32::try_from(per_slot.saturating_mul(u128::from(slots))).unwrap_or(u32::MAX);
        match self.ahead {
            0 => 0,
            ahead => units.clamp(1, ahead),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            slots: 1,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            host: "localhost".into(),
            spawn_attempts: false,
            pool: None,
            batch: None,
            ahead: 0,
            hold_for: Self::HOLD_FOR,
        }
    }
}

/// A running worker. Dropping the handle leaves the worker running; call
/// [`WorkerHandle::shutdown`] or [`WorkerHandle::abort`] to stop it.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: CancellationToken,
    join: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl WorkerHandle {
    /// Stops claiming, lets running attempts finish and report, then returns.
    pub async fn shutdown(mut self) -> Result<(), StoreError> {
        self.stop();
        self.join().await
    }

    /// Asks the worker to stop claiming; its running attempts go on and
    /// report. [`WorkerHandle::join`] waits for the end.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits for the worker loop to end: after [`WorkerHandle::stop`] once
    /// the running attempts have reported, after [`WorkerHandle::abort`] at
    /// once, or on a store error.
    pub async fn join(&mut self) -> Result<(), StoreError> {
        match (&mut self.join).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Ok(()),
        }
    }

    /// Stops the worker at once; its running attempts are dropped, and their
    /// leases expire to be rescued (as with a worker that died).
    pub fn abort(&self) {
        self.join.abort();
    }

    /// Whether the worker loop has ended (after shutdown, or a store error).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

/// Starts a worker over `store`, running the flows known to `router`.
pub fn spawn_worker<S: Store>(
    store: Arc<S>,
    router: Arc<Router<S>>,
    clock: Arc<dyn Clock>,
    config: WorkerConfig,
) -> WorkerHandle {
    let stop = CancellationToken::new();
    let own_pool = Arc::new(SlotPool::new(config.slots, 1));
    let worker = Worker {
        store,
        router,
        clock,
        config,
        own_pool,
        stop: stop.clone(),
    };
    WorkerHandle {
        stop,
        join: tokio::spawn(worker.run()),
    }
}

struct Worker<S: Store> {
    store: Arc<S>,
    router: Arc<Router<S>>,
    clock: Arc<dyn Clock>,
    config: WorkerConfig,
    /// The slots of a worker that shares none.
    own_pool: Arc<SlotPool>,
    stop: CancellationToken,
}

/// An attempt in flight at this worker.
struct Running<S: Store> {
    attempt: Attempt,
    /// The first attempt of the task's current run (see [`ClaimedTask::first_attempt`]).
    first_attempt: Attempt,
    lost: u32,
    batch: BatchId,
    index: u64,
    cost: u32,
    policy: Arc<BatchPolicy>,
    runner: Arc<dyn Runner<S>>,
    cancel: Cancellation,
    started: Instant,
    /// A graceful cancellation was asked for, with this reason.
    cancelling: Option<Reason>,
}

/// How an attempt ended.
enum Ended<O> {
    Report(AttemptReport<O>),
    /// The timeout passed; the log is what the attempt reported if it
    /// wound down within the grace of a graceful stop.
    Timeout(Option<AttemptLog>),
    /// The batch deadline passed (likewise).
    Deadline(Option<AttemptLog>),
}

/// A finished attempt.
struct Done<O> {
    fence: Fence,
    ended: Ended<O>,
    duration: Duration,
}

/// What a claim handed this worker.
struct Claimed<S: Store> {
    tasks: Vec<ClaimedTask<S::Payload, S::Output>>,
    next_due: Option<Timestamp>,
    blocked_by: Option<u32>,
    /// The cost units asked for.
    asked: u32,
}

struct LoopState<S: Store> {
    id: WorkerId,
    running: IdMap<TaskId, Running<S>>,
    /// Slots held for the attempts running here.
    held: u32,
    /// Slots freed since they were last given back to the pool.
    freed: u32,
    finished: Vec<Done<S::Output>>,
    completions: Vec<Completion<S::Output>>,
    /// One per completion, in the same order.
    deliveries: Vec<Option<Delivery<S>>>,
    runner_cache: Option<(Arc<BatchPolicy>, Arc<dyn Runner<S>>)>,
    /// Tasks claimed and held, ready to start when slots free (see
    /// [`WorkerConfig::ahead`]), in claim order; they hold no slots.
    in_hand: std::collections::VecDeque<ClaimedTask<S::Payload, S::Output>>,
    /// The cost units of `in_hand`.
    in_hand_cost: u32,
    /// How long attempts run here: a moving average, `None` before the
    /// first ends.
    pace: Option<Duration>,
    /// Attempts that ended, their slots freed, not yet turned into reports.
    ended: Vec<(Done<S::Output>, Running<S>)>,
    /// Since when `completions` has waited to be sent.
    reports_since: Option<Instant>,
}

impl<S: Store> LoopState<S> {
    /// Whether attempts are short enough to hold tasks ahead.
    fn short_attempts(&self) -> bool {
        self.pace
            .is_some_and(|pace| pace < WorkerConfig::HOLD_WHILE_UNDER)
    }

    fn take_in_hand(&mut self, task: TaskId) -> Option<ClaimedTask<S::Payload, S::Output>> {
        let at = self.in_hand.iter().position(|t| t.id == task)?;
        let task = self.in_hand.remove(at)?;
        self.in_hand_cost -= task.cost;
        Some(task)
    }
}

/// Where the end of a reported attempt goes, should the store accept it as the last.
struct Delivery<S: Store> {
    runner: Arc<dyn Runner<S>>,
    batch: BatchId,
    index: u64,
    payload: Option<Box<dyn std::any::Any + Send>>,
}

/// The attempts in flight: a set of futures each ending in a `Done`, or in
/// `None` when the attempt was forced to stop. Its element type is the
/// compiler's (see `Worker::start`), hence the generic bound everywhere.
trait Attempts<O>: Stream<Item = Option<Done<O>>> + Unpin + Send {
    fn is_empty(&self) -> bool;
}

impl<O, F: Future<Output = Option<Done<O>>> + Send> Attempts<O> for FuturesUnordered<F> {
    fn is_empty(&self) -> bool {
        FuturesUnordered::is_empty(self)
    }
}

/// The kinds of store operation the loop makes, each with its own backoff.
#[derive(Clone, Copy)]
enum Op {
    Report,
    Heartbeat,
    Expire,
    Claim,
}

/// Consecutive failures of each kind of store operation (reset when one of
/// that kind succeeds: another kind succeeding says little), and how long to
/// wait after the next.
#[derive(Default)]
struct Failures {
    count: [u32; 4],
}

impl Failures {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

    fn next_delay(&mut self, op: Op) -> Duration {
        let count = &mut self.count[op as usize];
        let delay = Self::FIRST
            .saturating_mul(1 << (*count).min(10))
            .min(Self::MAX);
        *count += 1;
        delay
    }

    fn reset(&mut self, op: Op) {
        self.count[op as usize] = 0;
    }
}

/// An error with its sources, on one line.
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// Takes every attempt that has finished by now, without waiting.
fn collect_finished<O>(attempts: &mut impl Attempts<O>, finished: &mut Vec<Done<O>>) {
    while let Some(Some(done)) = attempts.next().now_or_never() {
        finished.extend(done);
    }
}

/// Awaits `op` while polling the running attempts, so that a slow store does
/// not stall them; attempts that finish meanwhile are kept for the next report.
async fn drive<O, F: Future>(
    attempts: &mut impl Attempts<O>,
    finished: &mut Vec<Done<O>>,
    op: F,
) -> F::Output {
    let mut op = std::pin::pin!(op);
    loop {
        tokio::select! {
            biased;
            out = &mut op => return out,
            Some(done) = attempts.next(), if !attempts.is_empty() => finished.extend(done),
        }
    }
}

impl<S: Store> Worker<S> {
    async fn run(self) -> Result<(), StoreError> {
        let store = self.store.clone();
        let id = store
            .worker_register(&self.config.host, std::process::id(), self.clock.now())
            .await?;
        let pool = self
            .config
            .pool
            .clone()
            .unwrap_or_else(|| self.own_pool.clone());
        let mut attempts = FuturesUnordered::new();
        let mut state = LoopState::<S> {
            id,
            running: IdMap::default(),
            held: 0,
            freed: 0,
            finished: Vec::new(),
            completions: Vec::new(),
            deliveries: Vec::new(),
            runner_cache: None,
            in_hand: Default::default(),
            in_hand_cost: 0,
            pace: None,
            ended: Vec::new(),
            reports_since: None,
        };
        let mut next_heartbeat = Instant::now() + self.config.heartbeat;
        let mut next_due: Option<Timestamp> = None;
        let mut stopping = false;
        let mut control = true;
        let mut failures = Failures::default();
        // Tasks claimed and not started yet: started once the next store
        // call is on its way, when one follows at once (see `store_call!`).
        let mut unstarted: Vec<ClaimedTask<S::Payload, S::Output>> = Vec::new();
        macro_rules! start_unstarted {
            () => {
                if !unstarted.is_empty() {
                    let started = Instant::now();
                    let wall = self.clock.now();
                    for task in std::mem::take(&mut unstarted) {
                        if let Some(attempt) = self.start(&mut state, task, started, wall).await {
                            attempts.push(attempt);
                        }
                    }
                }
            };
        }
        // Moves tasks held ahead into free slots, to start; whether any moved.
        macro_rules! promote {
            () => {{
                let mut promoted = false;
                while let Some(next) = state.in_hand.front() {
                    let cost = next.cost;
                    let fits = state.held == 0 || state.held + cost <= pool.share();
                    if !fits || !pool.take_exactly(cost) {
                        break;
                    }
                    let task = state.in_hand.pop_front().expect("checked");
                    state.in_hand_cost -= cost;
                    state.held += cost;
                    unstarted.push(task);
                    promoted = true;
                }
                promoted
            }};
        }
        // Awaits a store call as `drive` does; the tasks the last claim
        // handed out start once the call's request is on its way (its first
        // poll), so that the store works while they start (a process spawn
        // is a good part of a millisecond). An attempt that ends meanwhile
        // frees its slot at once for a task held ahead; its report waits
        // for the next call.
        macro_rules! store_call {
            ($op:expr) => {{
                let mut op = std::pin::pin!($op);
                let early = futures::poll!(op.as_mut());
                start_unstarted!();
                match early {
                    std::task::Poll::Ready(out) => out,
                    std::task::Poll::Pending => loop {
                        tokio::select! {
                            biased;
                            out = &mut op => break out,
                            Some(done) = attempts.next(), if !attempts.is_empty() => {
                                state.finished.extend(done);
                                if !state.in_hand.is_empty() {
                                    self.free_finished(&mut state);
                                    pool.release(std::mem::take(&mut state.freed));
                                    if promote!() {
                                        start_unstarted!();
                                    }
                                }
                            }
                        }
                    },
                }
            }};
        }
        // A store operation that failed: wait (polling the attempts) and
        // start the turn again; a failure that is not the backend's, or one
        // during shutdown, ends the worker.
        macro_rules! store_op {
            ($kind:expr, $op:expr) => {
                match $op {
                    Ok(value) => {
                        failures.reset($kind);
                        value
                    }
                    Err(error) => {
                        self.wait_out(error, failures.next_delay($kind), &mut attempts, &mut state)
                            .await?;
                        // Renew leases first thing: the wait may have been long.
                        control = true;
                        stopping |= self.stop.is_cancelled();
                        continue;
                    }
                }
            };
            // An operation of two kinds (a report and a claim in one call):
            // a success resets both, and a failure says whose it was.
            (both $op:expr) => {
                match $op {
                    Ok(value) => {
                        failures.reset(Op::Report);
                        failures.reset(Op::Claim);
                        value
                    }
                    Err((kind, error)) => {
                        if matches!(kind, Op::Claim) {
                            failures.reset(Op::Report);
                        }
                        self.wait_out(error, failures.next_delay(kind), &mut attempts, &mut state)
                            .await?;
                        control = true;
                        stopping |= self.stop.is_cancelled();
                        continue;
                    }
                }
            };
        }
        loop {
            // With a store that answers at once (memory), nothing below ever
            // waits while there is work: spend tokio's cooperative budget
            // each turn, so the loop yields now and then and tasks sharing
            // its thread (the consumer, subscribers) are not starved.
            tokio::task::consume_budget().await;
            collect_finished(&mut attempts, &mut state.finished);
            // Finished attempts, and attempts that ended at the start (no
            // runner for their flow), are reported together: with the
            // claim below when there is one, else on their own.
            self.take_reports(&mut state);

            let now = Instant::now();
            if control || now >= next_heartbeat {
                // Renewed and rescued with the rest.
                start_unstarted!();
                control = false;
                next_heartbeat = now + self.config.heartbeat;
                // Attempts it cancels by force are reported below.
                store_op!(
                    Op::Heartbeat,
                    self.heartbeat(&mut state, &mut attempts).await
                );
            }
            if next_due.is_some_and(|due| due <= self.clock.now()) {
                start_unstarted!();
                // Reports first, as they ended before the deadline was enforced.
                store_op!(Op::Report, self.flush(&mut state, &mut attempts).await);
                let op = store.batch_expire(self.clock.now());
                let events = store_op!(
                    Op::Expire,
                    drive(&mut attempts, &mut state.finished, op).await
                );
                self.router.route(&events, &[]).await;
                next_due = None;
            }

            if state.freed > 0 {
                pool.release(std::mem::take(&mut state.freed));
            }
            let work = store.signals().work.notified();
            let cancel = store.signals().control.notified();
            let returned = pool.returned();
            tokio::pin!(work, cancel, returned);
            work.as_mut().enable();
            cancel.as_mut().enable();
            returned.as_mut().enable();

            // A stop asked while the loop was busy (an attempt ended in the
            // same wake-up, and the biased select took that first) must
            // still stop the next claim.
            stopping |= self.stop.is_cancelled();
            if stopping && !state.in_hand.is_empty() {
                self.give_back(&mut state).await;
            }
            // Tasks held ahead start in the slots that freed, at once:
            // before the store call that reports what ended and claims the
            // next is even built.
            if promote!() {
                start_unstarted!();
            }

            let mut claimed_all = false;
            let room = pool.share().saturating_sub(state.held);
            let want = match !stopping && room > 0 {
                true => pool.take_up_to(room),
                false => 0,
            };
            // Beyond the slots taken, tasks to hold ahead: the hand is
            // filled again once half of it has started, so that a turn
            // reports and claims several tasks rather than one.
            let holding = !stopping && state.short_attempts();
            let hand = match (holding, state.pace) {
                (true, Some(pace)) => self.config.hand(pool.share(), pace),
                _ => 0,
            };
            let refill = holding && state.in_hand_cost <= hand / 2;
            let hold = match refill {
                true => hand.saturating_sub(state.in_hand_cost),
                false => 0,
            };
            // Reports wait for the refill while held tasks keep the slots
            // busy, but no longer than a short attempt: an ended attempt
            // is no longer renewed, and slots may stay busy for long.
            if !state.completions.is_empty() && state.reports_since.is_none() {
                state.reports_since = Some(Instant::now());
            }
            let report_by = state
                .reports_since
                .map(|since| since + WorkerConfig::HOLD_WHILE_UNDER);
            let defer = holding
                && !refill
                && !state.in_hand.is_empty()
                && report_by.is_some_and(|by| Instant::now() < by);
            let mut claim = None;
            if want + hold > 0 && state.completions.is_empty() {
                let op = store.task_claim(self.request(id, want + hold), self.clock.now());
                let out = store_call!(op);
                claim = Some(store_op!(
                    Op::Claim,
                    self.claimed_or_not(&mut state, out, want, hold).await
                ));
            } else if want + hold > 0 {
                // One store call, one commit, for the reports and the claim.
                let (completions, ends) = take_completions(&mut state);
                let request = self.request(id, want + hold);
                let op = store.task_complete_and_claim(id, completions, request, self.clock.now());
                let out = store_call!(op);
                claim = Some(store_op!(both
                    self.reported_and_claimed(&mut state, ends, out, want, hold).await
                ));
            } else if !state.completions.is_empty() && !defer {
                let (completions, ends) = take_completions(&mut state);
                let op = store.task_complete(id, completions, self.clock.now());
                let out = store_call!(op);
                store_op!(Op::Report, self.reported(&mut state, ends, out).await);
            }
            // The next task costs more than the slots taken: take that
            // many whole, if the pool has them, rather than skip it.
            if let Some(c) = &claim
                && c.tasks.is_empty()
                && let Some(cost) = c.blocked_by
                && pool.take_exactly(cost)
            {
                let op = store.task_claim(self.request(id, cost), self.clock.now());
                let out = store_call!(op);
                claim = Some(store_op!(
                    Op::Claim,
                    self.claimed_or_not(&mut state, out, cost, 0).await
                ));
            }
            if let Some(claim) = claim {
                next_due = claim.next_due;
                claimed_all = !claim.tasks.is_empty() && claim.tasks.len() == claim.asked as usize;
                unstarted.extend(claim.tasks);
            }
            collect_finished(&mut attempts, &mut state.finished);
            let again = |state: &LoopState<S>| {
                (claimed_all && state.held < pool.share())
                    || !state.finished.is_empty()
                    || !state.ended.is_empty()
                    || (!state.completions.is_empty() && !defer)
            };
            // Another store call follows at once: the tasks just claimed
            // start when its request is on its way. Otherwise now (and
            // those that end as they start make another follow).
            if !again(&state) || stopping {
                start_unstarted!();
            }
            if stopping
                && state.running.is_empty()
                && state.ended.is_empty()
                && state.completions.is_empty()
                && state.in_hand.is_empty()
            {
                return Ok(());
            }
            if again(&state) {
                continue;
            }

            let mut wake = self.wake_at(next_heartbeat, next_due);
            if defer && let Some(by) = report_by {
                wake = wake.min(by);
            }
            tokio::select! {
                biased;
                Some(done) = attempts.next(), if !attempts.is_empty() => state.finished.extend(done),
                _ = &mut cancel => control = true,
                _ = &mut work => {}
                _ = &mut returned => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.stop.cancelled(), if !stopping => stopping = true,
            }
        }
    }

    /// After a store operation failed: a backend failure (a busy database, a
    /// lost connection) is waited out, with backoff, while the attempts keep
    /// running; anything else, or any failure once the worker is stopping,
    /// ends the worker.
    async fn wait_out(
        &self,
        error: StoreError,
        delay: Duration,
        attempts: &mut impl Attempts<S::Output>,
        state: &mut LoopState<S>,
    ) -> Result<(), StoreError> {
        if !matches!(error, StoreError::Backend(_)) || self.stop.is_cancelled() {
            return Err(error);
        }
        // With attempts running, never longer than a heartbeat: their leases
        // must be renewed in time, or they are rescued and run again.
        let delay = if state.running.is_empty() && state.in_hand.is_empty() {
            delay
        } else {
            delay.min(self.config.heartbeat)
        };
        tracing::warn!(
            worker = %state.id,
            error = %DisplayChain(&error),
            retry_in = ?delay,
            "store operation failed; retrying"
        );
        let wait = async {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => {}
            }
        };
        drive(attempts, &mut state.finished, wait).await;
        Ok(())
    }

    /// What a claim of `slots` slots (taken from the pool) and `hold` cost
    /// units to hold ahead came to: the tasks (their slots kept, the rest
    /// given back to the pool), or its failure (all given back).
    async fn claimed_or_not(
        &self,
        state: &mut LoopState<S>,
        claim: Result<Claim<S::Payload, S::Output>, StoreError>,
        slots: u32,
        hold: u32,
    ) -> Result<Claimed<S>, StoreError> {
        match claim {
            Ok(claim) => Ok(self.claimed(state, claim, slots, hold).await),
            Err(error) => {
                self.pool().untake(slots);
                Err(error)
            }
        }
    }

    /// What a report-and-claim ([`Store::task_complete_and_claim`]) of
    /// `slots` slots came to. A failure says whose it was: the report's
    /// (nothing was recorded: the reports are lost as with
    /// [`Worker::reported`]) or the claim's alone (the reports were
    /// recorded and are delivered). Either way the slots go back to the pool.
    async fn reported_and_claimed(
        &self,
        state: &mut LoopState<S>,
        ends: Ends,
        out: CompleteAndClaim<S::Payload, S::Output>,
        slots: u32,
        hold: u32,
    ) -> Result<Claimed<S>, (Op, StoreError)> {
        let (applied, claim) = match out {
            Ok(both) => both,
            Err(error) => {
                state.deliveries.clear();
                self.pool().untake(slots);
                return Err((Op::Report, error));
            }
        };
        self.deliver(state, ends, &applied).await;
        self.claimed_or_not(state, claim, slots, hold)
            .await
            .map_err(|error| (Op::Claim, error))
    }

    /// What a report ([`Store::task_complete`]) came to: the ends the store
    /// accepted are delivered.
    async fn reported(
        &self,
        state: &mut LoopState<S>,
        ends: Ends,
        out: Result<Applied, StoreError>,
    ) -> Result<(), StoreError> {
        match out {
            Ok(applied) => {
                self.deliver(state, ends, &applied).await;
                Ok(())
            }
            Err(error) => {
                // The reports are lost with the operation: their tasks stay
                // running in the store until their leases expire and the
                // rescuer requeues them (at-least-once, as with a dead worker).
                state.deliveries.clear();
                Err(error)
            }
        }
    }

    fn request(&self, worker: WorkerId, slots: u32) -> ClaimRequest {
        ClaimRequest {
            worker,
            capacity: slots,
            max_tasks: slots as usize,
            lease: self.config.lease,
            batch: self.config.batch,
        }
    }

    /// Takes what a claim of `slots` slots and `hold` units ahead handed
    /// out: the tasks that fit the slots, in claim order, are to start (the
    /// slots they take kept, the rest given back to the pool); the others
    /// are held. Routes its events.
    async fn claimed(
        &self,
        state: &mut LoopState<S>,
        claim: Claim<S::Payload, S::Output>,
        slots: u32,
        hold: u32,
    ) -> Claimed<S> {
        self.router.route(&claim.events, &[]).await;
        let mut used = 0;
        let mut start = Vec::with_capacity(claim.tasks.len());
        for task in claim.tasks {
            // Tasks held earlier start first.
            if state.in_hand.is_empty() && used + task.cost <= slots {
                used += task.cost;
                start.push(task);
            } else {
                state.in_hand_cost += task.cost;
                state.in_hand.push_back(task);
            }
        }
        state.held += used;
        self.pool().untake(slots - used);
        Claimed {
            tasks: start,
            next_due: claim.next_due,
            blocked_by: claim.blocked_by,
            asked: slots + hold,
        }
    }

    /// Gives back the tasks held ahead, unstarted: reported as released
    /// with the next report.
    async fn give_back(&self, state: &mut LoopState<S>) {
        while let Some(task) = state.in_hand.pop_front() {
            state.in_hand_cost -= task.cost;
            let delivery = self.delivery_of(state, &task).await;
            state.completions.push(Completion {
                fence: Fence {
                    task: task.id,
                    attempt: task.attempt,
                },
                outcome: AttemptOutcome::Released,
                duration: Duration::ZERO,
                log: None,
            });
            // Delivered only if the store ends it (it was being cancelled).
            state.deliveries.push(delivery);
        }
    }

    /// Where the end of a task that never started goes.
    async fn delivery_of(
        &self,
        state: &mut LoopState<S>,
        task: &ClaimedTask<S::Payload, S::Output>,
    ) -> Option<Delivery<S>> {
        let runner = self.runner_for(state, &task.policy).await?;
        Some(Delivery {
            runner,
            batch: task.batch,
            index: task.index,
            payload: None,
        })
    }

    fn pool(&self) -> &SlotPool {
        self.config.pool.as_deref().unwrap_or(&self.own_pool)
    }

    fn wake_at(&self, heartbeat: Instant, due: Option<Timestamp>) -> Instant {
        match due {
            Some(due) => {
                let until = due.since(self.clock.now());
                heartbeat.min(Instant::now() + until)
            }
            None => heartbeat,
        }
    }

    async fn runner_for(
        &self,
        state: &mut LoopState<S>,
        policy: &Arc<BatchPolicy>,
    ) -> Option<Arc<dyn Runner<S>>> {
        if let Some((cached, runner)) = &state.runner_cache
            && Arc::ptr_eq(cached, policy)
        {
            return Some(runner.clone());
        }
        let runner = self.router.flow(&policy.flow).await?;
        state.runner_cache = Some((policy.clone(), runner.clone()));
        Some(runner)
    }

    /// Starts one claimed attempt; `now` and `wall` are the claim's instant.
    /// Returns the attempt's future, for the loop to poll.
    async fn start(
        &self,
        state: &mut LoopState<S>,
        task: ClaimedTask<S::Payload, S::Output>,
        now: Instant,
        wall: Timestamp,
    ) -> Option<impl Future<Output = Option<Done<S::Output>>> + Send + 'static + use<S>> {
        let fence = Fence {
            task: task.id,
            attempt: task.attempt,
        };
        let Some(runner) = self.runner_for(state, &task.policy).await else {
            // Nothing here can run this flow: fail the attempt rather than
            // hold it until its lease runs out.
            let message = format!("no runner for flow {:?} at this worker", task.policy.flow);
            state.held -= task.cost;
            state.freed += task.cost;
            state.completions.push(Completion {
                fence,
                outcome: AttemptOutcome::Failed {
                    reason: Reason::StartFailed,
                    message: Some(message),
                    retry_at: None,
                },
                duration: Duration::ZERO,
                log: None,
            });
            state.deliveries.push(None);
            return None;
        };
        let timeout = task.policy.timeout.map(|t| now + t);
        let deadline = task.policy.deadline.map(|d| now + d.since(wall));
        let cut = match (timeout, deadline) {
            (Some(t), Some(d)) if d <= t => Some((d, true)),
            (Some(t), _) => Some((t, false)),
            (None, Some(d)) => Some((d, true)),
            (None, None) => None,
        };
        let cancel = Cancellation::new();
        // A runner that stops gracefully (a process: SIGTERM, then SIGKILL)
        // is asked to stop at the cut and dropped only after the grace.
        let grace = runner.graceful_stop().then_some(task.policy.grace);
        let (batch, index, cost, lost) = (task.batch, task.index, task.cost, task.lost);
        let first_attempt = task.first_attempt;
        let policy = task.policy.clone();
        // The runner calls user code (a handler builds its future): a panic
        // there fails the attempt, like a panic inside the future, and does
        // not take the worker down.
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runner.start(task, cancel.clone())
        }));
        state.running.insert(
            fence.task,
            Running {
                attempt: fence.attempt,
                first_attempt,
                lost,
                batch,
                index,
                cost,
                policy,
                runner,
                cancel: cancel.clone(),
                started: now,
                cancelling: None,
            },
        );
        let mut work = match started {
            Ok(work) => work,
            Err(panic) => {
                state.finished.push(Done {
                    fence,
                    ended: Ended::Report(AttemptReport::failed(
                        Failure::Error { permanent: false },
                        format!("handler panicked: {}", panic_message(&panic)),
                    )),
                    duration: now.elapsed(),
                });
                return None;
            }
        };
        if !self.config.spawn_attempts {
            // Work that is done at its first poll (a no-op, a cache hit) ends
            // here, without becoming an attempt future.
            let first = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                    || work.as_mut().poll(cx),
                )))
            })
            .await;
            let ended = match first {
                Ok(std::task::Poll::Ready(report)) => Some(Ended::Report(report)),
                Ok(std::task::Poll::Pending) => None,
                Err(panic) => Some(Ended::Report(AttemptReport::failed(
                    Failure::Error { permanent: false },
                    format!("handler panicked: {}", panic_message(&panic)),
                ))),
            };
            if let Some(ended) = ended {
                state.finished.push(Done {
                    fence,
                    ended,
                    duration: now.elapsed(),
                });
                return None;
            }
        }
        let work = std::panic::AssertUnwindSafe(work).catch_unwind();
        let work = if self.config.spawn_attempts {
            let handle = tokio::spawn(work);
            let guard = AbortOnDrop(handle.abort_handle());
            futures::future::Either::Right(async move {
                let _guard = guard;
                match handle.await {
                    Ok(result) => result,
                    Err(e) if e.is_panic() => Err(e.into_panic()),
                    Err(_) => {
                        Err(Box::new("attempt task aborted") as Box<dyn std::any::Any + Send>)
                    }
                }
            })
        } else {
            futures::future::Either::Left(work)
        };
        let signal = cancel;
        let stop = signal.clone();
        let attempt = async move {
            let mut work = std::pin::pin!(work);
            // Poll once before arming a timer: short attempts end here and
            // never touch the timer wheel; the timer is boxed so that the
            // attempt's future stays small for the ones that do.
            let report = match futures::poll!(work.as_mut()) {
                std::task::Poll::Ready(r) => Ok(r),
                std::task::Poll::Pending => match cut {
                    Some((at, is_deadline)) => {
                        let timer = Box::pin(tokio::time::sleep_until(at));
                        let cut_short = tokio::select! {
                            biased;
                            r = work.as_mut() => Ok(r),
                            () = timer => Err(()),
                        };
                        match cut_short {
                            Ok(r) => Ok(r),
                            Err(()) => {
                                let mut log = None;
                                if let Some(grace) = grace {
                                    stop.cancel();
                                    tokio::select! {
                                        biased;
                                        r = work.as_mut() => {
                                            log = r.ok().and_then(|report| report.log);
                                        }
                                        () = tokio::time::sleep(grace) => {}
                                    }
                                }
                                Err(if is_deadline {
                                    Ended::Deadline(log)
                                } else {
                                    Ended::Timeout(log)
                                })
                            }
                        }
                    }
                    None => Ok(work.await),
                },
            };
            let ended = match report {
                Ok(Ok(report)) => Ended::Report(report),
                Ok(Err(panic)) => Ended::Report(AttemptReport::failed(
                    Failure::Error { permanent: false },
                    format!("handler panicked: {}", panic_message(&panic)),
                )),
                Err(ended) => ended,
            };
            Done {
                fence,
                ended,
                duration: now.elapsed(),
            }
        };
        // A forced cancellation drops the attempt's future where it stands.
        let attempt = async move {
            let attempt = std::pin::pin!(attempt);
            let forced = signal.forced();
            tokio::select! {
                biased;
                done = attempt => Some(done),
                () = forced => None,
            }
        };

        Some(attempt)
    }

    /// Frees the slots of finished attempts; their reports are made by
    /// [`Worker::take_reports`]. Touches no report, so it may run while a
    /// store call that carries earlier reports is in flight.
    fn free_finished(&self, state: &mut LoopState<S>) {
        for done in std::mem::take(&mut state.finished) {
            let Some(run) = state.running.get(&done.fence.task) else {
                continue; // cancelled by force or lost: already accounted for
            };
            if run.attempt != done.fence.attempt {
                continue;
            }
            let run = state.running.remove(&done.fence.task).expect("checked");
            state.held -= run.cost;
            state.freed += run.cost;
            state.pace = Some(match state.pace {
                Some(pace) => (pace * 7 + done.duration) / 8,
                None => done.duration,
            });
            state.ended.push((done, run));
        }
    }

    /// Turns finished attempts into completions, to report, and frees their slots.
    fn take_reports(&self, state: &mut LoopState<S>) {
        self.free_finished(state);
        if state.ended.is_empty() {
            return;
        }
        let now = self.clock.now();
        for (done, run) in std::mem::take(&mut state.ended) {
            let (outcome, delivery, log) = match done.ended {
                Ended::Report(report) => {
                    let AttemptReport {
                        result,
                        output,
                        delivery,
                        log,
                    } = report;
                    let outcome = match result {
                        AttemptResult::Succeeded => AttemptOutcome::Succeeded { output },
                        AttemptResult::Failed { failure, message } => match run.cancelling {
                            Some(reason) => AttemptOutcome::Cancelled { reason },
                            None => failed(&run, failure, message, now),
                        },
                    };
                    (outcome, delivery, log)
                }
                Ended::Timeout(log) => (
                    failed(
                        &run,
                        Failure::Timeout,
                        Some("attempt timed out".into()),
                        now,
                    ),
                    None,
                    log,
                ),
                Ended::Deadline(log) => (
                    AttemptOutcome::Cancelled {
                        reason: Reason::Deadline,
                    },
                    None,
                    log,
                ),
            };
            state.completions.push(Completion {
                fence: done.fence,
                outcome,
                duration: done.duration,
                log,
            });
            state.deliveries.push(Some(Delivery {
                runner: run.runner,
                batch: run.batch,
                index: run.index,
                payload: delivery,
            }));
        }
    }

    /// Sends pending completions to the store and delivers the ends it accepted.
    async fn flush(
        &self,
        state: &mut LoopState<S>,
        attempts: &mut impl Attempts<S::Output>,
    ) -> Result<(), StoreError> {
        if state.completions.is_empty() {
            return Ok(());
        }
        let (completions, ends) = take_completions(state);
        let op = self
            .store
            .task_complete(state.id, completions, self.clock.now());
        let out = drive(attempts, &mut state.finished, op).await;
        self.reported(state, ends, out).await
    }

    /// Delivers the ends the store accepted to their runners, and routes the
    /// rest of what the completions did.
    async fn deliver(&self, state: &mut LoopState<S>, ends: Ends, applied: &Applied) {
        let mut delivered = Vec::with_capacity(ends.len());
        let mut last_runner: Option<Arc<dyn Runner<S>>> = None;
        for ((result, delivery), (fence, reason)) in applied
            .results
            .iter()
            .zip(state.deliveries.drain(..))
            .zip(ends)
        {
            // A refused report (stale fence) delivers nothing: the attempt
            // that superseded it will.
            let (Ok(entered), Some(delivery)) = (result, delivery) else {
                continue;
            };
            if !entered.is_terminal() {
                continue;
            }
            delivered.push(fence.task);
            match &last_runner {
                Some(last) if Arc::ptr_eq(last, &delivery.runner) => {}
                _ => {
                    if let Some(last) = last_runner.replace(delivery.runner.clone()) {
                        last.flush();
                    }
                }
            }
            delivery.runner.deliver(
                TaskEnd {
                    batch: delivery.batch,
                    task: fence.task,
                    index: delivery.index,
                    attempt: fence.attempt,
                    state: *entered,
                    reason,
                },
                delivery.payload,
            );
        }
        if let Some(last) = last_runner {
            last.flush();
        }
        delivered.sort_unstable();
        self.router.route(&applied.events, &delivered).await;
    }

    /// Renews leases; cancels what the store asks to; rescues expired leases.
    async fn heartbeat(
        &self,
        state: &mut LoopState<S>,
        attempts: &mut impl Attempts<S::Output>,
    ) -> Result<(), StoreError> {
        let fences: Vec<Fence> = state
            .running
            .iter()
            .map(|(task, run)| Fence {
                task: *task,
                attempt: run.attempt,
            })
            .chain(state.in_hand.iter().map(|t| Fence {
                task: t.id,
                attempt: t.attempt,
            }))
            .collect();
        let now = self.clock.now();
        if !fences.is_empty() {
            let op = self
                .store
                .lease_renew(state.id, fences, now.plus(self.config.lease), now);
            let renewal = drive(attempts, &mut state.finished, op).await?;
            for fence in renewal.lost {
                // Someone else owns the task now; our report would be refused.
                state.take_in_hand(fence.task);
                if let Some(run) = state.running.remove(&fence.task) {
                    run.cancel.force();
                    state.held -= run.cost;
                    state.freed += run.cost;
                }
            }
            for request in renewal.cancel {
                if let Some(task) = state.take_in_hand(request.fence.task) {
                    // Never started: it ends cancelled now, whatever the mode.
                    let delivery = self.delivery_of(state, &task).await;
                    state.completions.push(Completion {
                        fence: request.fence,
                        outcome: AttemptOutcome::Cancelled {
                            reason: request.reason,
                        },
                        duration: Duration::ZERO,
                        log: None,
                    });
                    state.deliveries.push(delivery);
                    continue;
                }
                let Some(run) = state.running.get_mut(&request.fence.task) else {
                    continue;
                };
                match request.mode {
                    CancelMode::Graceful => {
                        run.cancelling = Some(request.reason);
                        run.cancel.cancel();
                    }
                    CancelMode::Forced => {
                        let run = state.running.remove(&request.fence.task).expect("checked");
                        run.cancel.force();
                        state.held -= run.cost;
                        state.freed += run.cost;
                        state.completions.push(Completion {
                            fence: request.fence,
                            outcome: AttemptOutcome::Cancelled {
                                reason: request.reason,
                            },
                            duration: run.started.elapsed(),
                            log: None,
                        });
                        state.deliveries.push(Some(Delivery {
                            runner: run.runner,
                            batch: run.batch,
                            index: run.index,
                            payload: None,
                        }));
                    }
                }
            }
        }
        let op = self.store.task_rescue(now);
        let events = drive(attempts, &mut state.finished, op).await?;
        self.router.route(&events, &[]).await;
        Ok(())
    }
}

/// Per completion sent, in order: its attempt, and the reason its task
/// ends with, should it end.
type Ends = Vec<(Fence, Option<Reason>)>;

/// The pending completions, to send, with what their deliveries need.
fn take_completions<S: Store>(state: &mut LoopState<S>) -> (Vec<Completion<S::Output>>, Ends) {
    state.reports_since = None;
    let completions = std::mem::replace(
        &mut state.completions,
        Vec::with_capacity(state.held as usize + 1),
    );
    let ends = completions
        .iter()
        .map(|c| (c.fence, reason_of(&c.outcome)))
        .collect();
    (completions, ends)
}

/// The reason a completion's task ends with, should it end.
fn reason_of<O>(outcome: &AttemptOutcome<O>) -> Option<Reason> {
    match outcome {
        AttemptOutcome::Succeeded { .. } | AttemptOutcome::Released => None,
        AttemptOutcome::Failed { reason, .. } | AttemptOutcome::Cancelled { reason } => {
            Some(*reason)
        }
    }
}

/// The outcome of a failed attempt: retried after a backoff if the policy allows.
fn failed<S: Store>(
    run: &Running<S>,
    failure: Failure,
    message: Option<String>,
    now: Timestamp,
) -> AttemptOutcome<S::Output> {
    let retry = &run.policy.retry;
    // Counted within the current run: a rerun starts with a fresh budget.
    let attempt = run.attempt.0 - run.first_attempt.0.saturating_sub(1);
    let retry_at = retry
        .should_retry(attempt, run.lost, failure)
        .then(|| now.plus(retry.delay(attempt - run.lost.min(attempt), fastrand::f64())));
    let reason = match failure {
        Failure::Error { .. } => Reason::Error,
        Failure::Timeout => Reason::Timeout,
        Failure::ExitCode(code) => Reason::ExitCode(code),
        Failure::Signal(signal) => Reason::Signal(signal),
        Failure::StartFailed => Reason::StartFailed,
    };
    AttemptOutcome::Failed {
        reason,
        message,
        retry_at,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Aborts a spawned attempt when the future awaiting it is dropped (timeout,
/// forced cancellation), so that it does not run on unobserved.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
