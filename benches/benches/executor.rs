//! The executor against the hand-written tokio patterns it replaces, in the
//! same run, on the same multi-thread runtime: 1,000,000 no-op tasks at
//! concurrency 64.
//!
//! - `herd`: an [`Executor`] with a retry policy (3 attempts) and a 30 s
//!   timeout configured and an event subscriber draining in a spawned task
//!   (taking events a store operation's group at a time, and reporting any
//!   it missed); the outcome stream is consumed to the end.
//! - `semaphore_joinset`: one spawned task per item under a 64-permit
//!   [`Semaphore`] (permit acquired before the spawn), collected into a
//!   [`JoinSet`] that is then drained.
//! - `semaphore_joinset_reaping`: the same, reaping finished tasks while
//!   spawning (`try_join_next`), as a careful hand-written loop would: the
//!   stricter baseline.
//! - `buffer_unordered`: `stream::iter(..).map(f).buffer_unordered(64)`, no
//!   spawning at all: the floor, for reference.
//!
//! A no-op finishes at its first poll, which herd reports without making it
//! an attempt future. The group `executor_1m_yield_c64` runs the same herd and
//! reaping-JoinSet cases with tasks that yield once (`yield_now`), so that
//! every attempt is suspended and resumed: the path of real async work.
//!
//! cargo bench -p herd-benches --bench executor

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use herd::{Executor, RetryPolicy, TaskContext, TaskError};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const TASKS: u64 = 1_000_000;
const CONCURRENCY: usize = 64;

/// The work of one task: nothing, but not optimised away.
async fn noop(n: u64) -> u64 {
    black_box(n)
}

/// The work of one task: yield once to the runtime, then return.
async fn yield_once(n: u64) -> u64 {
    tokio::task::yield_now().await;
    black_box(n)
}

/// What the subscriber saw, across every iteration.
#[derive(Default)]
struct Seen {
    events: AtomicU64,
    lagged_groups: AtomicU64,
    lag_reports: AtomicU64,
}

/// herd: runs `work` for every task, consuming every outcome.
async fn herd_run<F, Fut>(executor: &Executor, work: F)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    let mut outcomes = executor
        .run(0..TASKS, move |n: u64, _ctx: TaskContext| {
            let output = work(n);
            async move { Ok::<_, TaskError>(output.await) }
        })
        .await
        .expect("the batch is accepted");
    let mut count = 0u64;
    while let Some(outcome) = outcomes.next().await {
        black_box(outcome.result.expect("the work cannot fail"));
        count += 1;
    }
    assert_eq!(count, TASKS, "one outcome per task");
}

/// The hand-written pattern: one spawned task per item under a semaphore
/// (permit taken before the spawn), collected into a `JoinSet`; finished
/// tasks reaped while spawning when `reap`, else all drained at the end.
async fn semaphore_joinset<F, Fut>(work: F, reap: bool)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = u64> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut set = JoinSet::new();
    let mut count = 0u64;
    for n in 0..TASKS {
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let output = work(n);
        set.spawn(async move {
            let output = output.await;
            drop(permit);
            output
        });
        while reap && let Some(joined) = set.try_join_next() {
            black_box(joined.expect("the work cannot panic"));
            count += 1;
        }
    }
    while let Some(joined) = set.join_next().await {
        black_box(joined.expect("the work cannot panic"));
        count += 1;
    }
    assert_eq!(count, TASKS, "one result per task");
}

fn executor(c: &mut Criterion) {
    let rt = Runtime::new().expect("a tokio runtime");
    let mut group = c.benchmark_group("executor_1m_noop_c64");
    group
        .throughput(Throughput::Elements(TASKS))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(3))
        .measurement_time(Duration::from_secs(20));

    // herd: built once, as an application would, with its subscriber.
    let executor = rt.block_on(async {
        Executor::builder()
            .concurrency(CONCURRENCY)
            .retry(RetryPolicy::attempts(3))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a valid executor")
    });
    let seen = Arc::new(Seen::default());
    let mut subscription = executor.subscribe();
    let drain = rt.spawn({
        let seen = seen.clone();
        async move {
            while let Some(group) = subscription.recv_group().await {
                match group {
                    Ok(events) => seen
                        .events
                        .fetch_add(events.len() as u64, Ordering::Relaxed),
                    Err(lagged) => {
                        seen.lag_reports.fetch_add(1, Ordering::Relaxed);
                        seen.lagged_groups.fetch_add(lagged.0, Ordering::Relaxed)
                    }
                };
            }
        }
    });
    let iterations = Arc::new(AtomicU64::new(0));
    group.bench_function("herd", |b| {
        b.to_async(&rt).iter(|| async {
            iterations.fetch_add(1, Ordering::Relaxed);
            herd_run(&executor, noop).await;
        });
    });
    group.bench_function("semaphore_joinset", |b| {
        b.to_async(&rt).iter(|| semaphore_joinset(noop, false));
    });
    group.bench_function("semaphore_joinset_reaping", |b| {
        b.to_async(&rt).iter(|| semaphore_joinset(noop, true));
    });

    group.bench_function("buffer_unordered", |b| {
        b.to_async(&rt).iter(|| async {
            let count = futures::stream::iter(0..TASKS)
                .map(noop)
                .buffer_unordered(CONCURRENCY)
                .fold(0u64, |count, output| async move {
                    black_box(output);
                    count + 1
                })
                .await;
            assert_eq!(count, TASKS, "one result per task");
        });
    });
    group.finish();

    let mut group = c.benchmark_group("executor_1m_yield_c64");
    group
        .throughput(Throughput::Elements(TASKS))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(3))
        .measurement_time(Duration::from_secs(20));
    group.bench_function("herd", |b| {
        b.to_async(&rt).iter(|| async {
            iterations.fetch_add(1, Ordering::Relaxed);
            herd_run(&executor, yield_once).await;
        });
    });
    group.bench_function("semaphore_joinset_reaping", |b| {
        b.to_async(&rt).iter(|| semaphore_joinset(yield_once, true));
    });
    group.finish();

    // Let the subscriber catch up, then report what it saw.
    drop(executor);
    let drained = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), drain).await });
    let iterations = iterations.load(Ordering::Relaxed).max(1);
    let events = seen.events.load(Ordering::Relaxed);
    let lagged = seen.lagged_groups.load(Ordering::Relaxed);
    println!(
        "herd subscriber: {events} events over {iterations} runs ({:.2} per task), \
         lagged {lagged} event groups in {} reports{}",
        events as f64 / (iterations * TASKS) as f64,
        seen.lag_reports.load(Ordering::Relaxed),
        if drained.is_ok() {
            ""
        } else {
            " (subscriber had not ended 10 s after the executor was dropped)"
        },
    );
}

criterion_group!(benches, executor);
criterion_main!(benches);
