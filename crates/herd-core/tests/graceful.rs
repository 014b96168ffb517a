//! Timeouts of a runner that stops gracefully (a process runner): the
//! attempt is asked to stop at its timeout, and dropped only once the
//! batch's grace has passed. Paused time: every instant is exact.

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use herd_core::scheduler::{
    AttemptReport, Cancellation, Router, Runner, TaskEnd, WorkerConfig, spawn_worker,
};
use herd_core::store::{ClaimedTask, MemoryStore, Store};
use herd_core::{BatchSpec, Clock, Failure, Reason, TaskSpec, TaskState, TokioClock};
use tokio::time::Instant;

type Mem = MemoryStore<String, String>;

const TIMEOUT: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_millis(500);
/// How long an obliging attempt takes to wind down once asked.
const WIND_DOWN: Duration = Duration::from_millis(100);

/// When things happened to the one attempt of a test.
#[derive(Default)]
struct Seen {
    started: Option<Instant>,
    asked: Option<Instant>,
    dropped: Option<Instant>,
}

/// A runner whose attempts never end by themselves: they wind down when
/// asked to stop (`obliging`), or ignore it until dropped.
struct Stubborn {
    graceful: bool,
    obliging: bool,
    seen: Arc<Mutex<Seen>>,
}

/// Records when the attempt's future is dropped.
struct DropGuard(Arc<Mutex<Seen>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.lock().unwrap().dropped = Some(Instant::now());
    }
}

impl Runner<Mem> for Stubborn {
    fn start(
        &self,
        _task: ClaimedTask<String, String>,
        cancel: Cancellation,
    ) -> BoxFuture<'static, AttemptReport<String>> {
        let (seen, obliging) = (self.seen.clone(), self.obliging);
        seen.lock().unwrap().started = Some(Instant::now());
        Box::pin(async move {
            let _guard = DropGuard(seen.clone());
            cancel.cancelled().await;
            seen.lock().unwrap().asked = Some(Instant::now());
            if !obliging {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(WIND_DOWN).await;
            AttemptReport::failed(Failure::Signal(15), "terminated".to_string())
        })
    }

    fn deliver(&self, _end: TaskEnd, _delivery: Option<Box<dyn Any + Send>>) {}

    fn graceful_stop(&self) -> bool {
        self.graceful
    }
}

/// Runs one task of a batch with a timeout under `runner`; returns what the
/// runner saw and the task's end.
async fn run_one(graceful: bool, obliging: bool) -> (Seen, TaskState, Option<Reason>) {
    let store = Arc::new(Mem::retaining());
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let runner = Arc::new(Stubborn {
        graceful,
        obliging,
        seen: seen.clone(),
    });
    let router = Arc::new(Router::new());
    router.lock().await.add_flow(Arc::from("stubborn"), runner);
    let mut spec = BatchSpec::new("stubborn");
    spec.policy.timeout = Some(TIMEOUT);
    spec.policy.grace = GRACE;
    spec.tasks = vec![TaskSpec::new("only".to_string())];
    let inserted = store.batch_insert(spec, clock.now()).await.unwrap();
    let worker = spawn_worker(store.clone(), router, clock, WorkerConfig::default());
    let task = loop {
        let task = store.task_get(inserted.tasks[0]).await.unwrap();
        if task.state.is_terminal() {
            break task;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    worker.shutdown().await.unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (seen, task.state, task.reason)
}

fn after_start(seen: &Seen, at: Option<Instant>) -> Duration {
    at.expect("it happened") - seen.started.expect("the attempt started")
}

#[tokio::test(start_paused = true)]
async fn a_graceful_runner_is_asked_to_stop_at_the_timeout_and_may_wind_down() {
    let (seen, state, reason) = run_one(true, true).await;
    assert_eq!(after_start(&seen, seen.asked), TIMEOUT);
    // It ended by itself within the grace; its future completed, then was dropped.
    assert_eq!(after_start(&seen, seen.dropped), TIMEOUT + WIND_DOWN);
    assert_eq!((state, reason), (TaskState::Failed, Some(Reason::Timeout)));
}

#[tokio::test(start_paused = true)]
async fn a_graceful_runner_that_ignores_the_stop_is_dropped_after_the_grace() {
    let (seen, state, reason) = run_one(true, false).await;
    assert_eq!(after_start(&seen, seen.asked), TIMEOUT);
    assert_eq!(after_start(&seen, seen.dropped), TIMEOUT + GRACE);
    assert_eq!((state, reason), (TaskState::Failed, Some(Reason::Timeout)));
}

#[tokio::test(start_paused = true)]
async fn other_runners_are_dropped_at_the_timeout_without_being_asked() {
    let (seen, state, reason) = run_one(false, true).await;
    assert_eq!(seen.asked, None);
    assert_eq!(after_start(&seen, seen.dropped), TIMEOUT);
    assert_eq!((state, reason), (TaskState::Failed, Some(Reason::Timeout)));
}
