//! Every batch row keeps its head: the priority and cost of its first queued
//! task in queue order (`head_priority`, `head_cost`), which the claim's
//! ranking reads instead of the tasks. A seeded random mix of operations
//! (claims, turns, successes, failures with retries, releases, cancels,
//! pauses, appends) runs on each store, and after every one of them the
//! stored heads are checked against the tasks.

mod common;

use std::time::Duration;

use herd_core::store::{
    AttemptOutcome, CancelMode, ClaimRequest, ClaimedTask, Completion, Fence, Store,
};
use herd_core::{BatchId, BatchSpec, Priority, Reason, TaskSpec, Timestamp, WorkerId};
use herd_sql::{PgStore, SqliteStore};

/// The heads as stored, and as the tasks say they should be, per batch.
type Heads = Vec<(i64, Option<i64>, Option<i64>)>;

const STORED: &str = "SELECT id, head_priority, head_cost FROM batches ORDER BY id";
const FROM_TASKS: &str = "SELECT b.id, \
       (SELECT t.priority FROM tasks t WHERE t.batch_id = b.id AND t.state = 'queued' \
        ORDER BY t.priority DESC, t.ready_seq LIMIT 1), \
       (SELECT t.cost FROM tasks t WHERE t.batch_id = b.id AND t.state = 'queued' \
        ORDER BY t.priority DESC, t.ready_seq LIMIT 1) \
     FROM batches b ORDER BY b.id";

fn spec(rng: &mut fastrand::Rng, tasks: usize, concurrency: u32) -> BatchSpec<String> {
    let mut spec = BatchSpec::new("mix");
    spec.concurrency = concurrency;
    spec.priority = Priority(rng.i32(-1..=1) * 10);
    spec.policy.retry.max_attempts = 3;
    spec.open = true;
    spec.tasks = (0..tasks).map(|_| task(rng)).collect();
    spec
}

fn task(rng: &mut fastrand::Rng) -> TaskSpec<String> {
    TaskSpec {
        priority: Some(Priority(rng.i32(-2..=2) * 50)),
        cost: rng.u32(1..=3),
        ..TaskSpec::new(String::new())
    }
}

fn end(task: &ClaimedTask<String, String>, outcome: AttemptOutcome<String>) -> Completion<String> {
    Completion {
        fence: Fence {
            task: task.id,
            attempt: task.attempt,
        },
        outcome,
        duration: Duration::from_millis(1),
        log: None,
    }
}

/// Runs `steps` random operations on `store`, calling `check` after each.
async fn mix<S, F, Fut>(store: &S, seed: u64, steps: usize, check: F)
where
    S: Store<Payload = String, Output = String>,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut now = Timestamp(1_000_000);
    let worker: WorkerId = store.worker_register("h", 1, now).await.unwrap();
    let mut batches: Vec<BatchId> = Vec::new();
    for _ in 0..3 {
        let c = rng.u32(3..=8);
        batches.push(
            store
                .batch_insert(spec(&mut rng, 30, c), now)
                .await
                .unwrap()
                .batch,
        );
    }
    check(0).await;
    let mut running: Vec<ClaimedTask<String, String>> = Vec::new();
    let request = |n: usize, batch: Option<BatchId>| ClaimRequest {
        worker,
        capacity: 1000,
        max_tasks: n,
        lease: Duration::from_secs(3600),
        batch,
    };
    for step in 1..=steps {
        now = Timestamp(now.0 + 2_000);
        // Ends of some running tasks, of every kind.
        let mut ends = Vec::new();
        let n = rng.usize(0..=running.len().min(6));
        for _ in 0..n {
            let t = running.swap_remove(rng.usize(0..running.len()));
            let outcome = match rng.u8(0..4) {
                0 | 1 => AttemptOutcome::Succeeded { output: None },
                2 => AttemptOutcome::Failed {
                    reason: Reason::Error,
                    message: None,
                    retry_at: Some(Timestamp(now.0 + 1_000)),
                },
                _ => AttemptOutcome::Released,
            };
            ends.push(end(&t, outcome));
        }
        let only = rng.bool().then(|| batches[rng.usize(0..batches.len())]);
        match rng.u8(0..8) {
            0 | 1 => {
                let claim = store
                    .task_claim(request(rng.usize(1..=12), only), now)
                    .await
                    .unwrap();
                running.extend(claim.tasks);
                store.task_complete(worker, ends, now).await.unwrap();
            }
            2 | 3 => {
                let (_, claim) = store
                    .task_complete_and_claim(worker, ends, request(rng.usize(1..=12), only), now)
                    .await
                    .unwrap();
                running.extend(claim.unwrap().tasks);
            }
            4 => {
                store.task_complete(worker, ends, now).await.unwrap();
                let b = batches[rng.usize(0..batches.len())];
                let tasks: Vec<_> = (0..rng.usize(1..=5)).map(|_| task(&mut rng)).collect();
                // A batch that finished or stopped refuses appends: fine.
                let _ = store.task_append(b, tasks, now).await;
            }
            5 => {
                store.task_complete(worker, ends, now).await.unwrap();
                let b = batches[rng.usize(0..batches.len())];
                let listed = store
                    .task_list(b, herd_core::store::TaskQuery::default())
                    .await
                    .unwrap();
                if !listed.is_empty() {
                    let victim = listed[rng.usize(0..listed.len())].info.id;
                    store
                        .task_cancel(victim, CancelMode::Graceful, now)
                        .await
                        .unwrap();
                }
            }
            6 => {
                store.task_complete(worker, ends, now).await.unwrap();
                let b = batches[rng.usize(0..batches.len())];
                let _ = if rng.bool() {
                    store.batch_pause(b, now).await
                } else {
                    store.batch_resume(b, now).await
                };
            }
            _ => {
                store.task_complete(worker, ends, now).await.unwrap();
            }
        }
        check(step).await;
    }
}

/// Six seeds of [`mix`] on `$store`, its heads checked against its tasks
/// after every operation (a macro: the two stores' pools are of two types).
macro_rules! heads_follow_the_queue {
    ($store:expr) => {
        for seed in 1..=6 {
            mix(&$store, seed, 200, |step| {
                let pool = $store.pool().clone();
                async move {
                    let stored: Heads = sqlx::query_as(STORED).fetch_all(&pool).await.unwrap();
                    let expected: Heads =
                        sqlx::query_as(FROM_TASKS).fetch_all(&pool).await.unwrap();
                    assert_eq!(stored, expected, "seed {seed}, after step {step}");
                }
            })
            .await;
        }
    };
}

#[tokio::test]
async fn sqlite_batch_heads_follow_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heads.db");
    let store = SqliteStore::<String, String>::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    heads_follow_the_queue!(store);
}

#[tokio::test]
async fn postgres_batch_heads_follow_the_queue() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let store: PgStore<String, String> = common::fresh_postgres(&url, "batch_heads").await;
    heads_follow_the_queue!(store);
}
