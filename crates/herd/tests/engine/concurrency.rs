use std::time::Duration;

use herd::{Backoff, Jitter, RetryPolicy, Task, TaskContext, TaskError};
use tokio::time::Instant;

use crate::common::{Gauge, Log, executor, ms, outcomes};

#[tokio::test(start_paused = true)]
async fn never_runs_more_than_the_batch_concurrency() {
    let exec = executor(16);
    let gauge = Gauge::default();
    let g = gauge.clone();
    let run = exec
        .batch()
        .concurrency(4)
        .run(0..100u32, move |_: u32, _: TaskContext| {
            let g = g.clone();
            async move {
                let _in = g.enter(1);
                tokio::time::sleep(ms(10)).await;
                Ok::<_, TaskError>(())
            }
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    assert_eq!(all.len(), 100);
    assert!(all.iter().all(|o| o.is_success()));
    assert_eq!(gauge.max(), 4, "the limit is reached and never passed");
}

#[tokio::test(start_paused = true)]
async fn executor_slots_bound_all_batches_together() {
    let exec = executor(3);
    let gauge = Gauge::default();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let g = gauge.clone();
        runs.push(
            exec.batch()
                .concurrency(3)
                .run(0..20u32, move |_: u32, _: TaskContext| {
                    let g = g.clone();
                    async move {
                        let _in = g.enter(1);
                        tokio::time::sleep(ms(5)).await;
                        Ok::<_, TaskError>(())
                    }
                })
                .await
                .unwrap(),
        );
    }
    for run in runs {
        assert_eq!(outcomes(run).await.len(), 20);
    }
    assert_eq!(gauge.max(), 3);
}

#[tokio::test(start_paused = true)]
async fn costs_weigh_against_the_limit() {
    let exec = executor(4);
    let gauge = Gauge::default();
    let g = gauge.clone();
    let tasks: Vec<Task<u32>> = (0..12)
        .map(|i| Task::new(1 + i % 3).cost(1 + i % 3))
        .collect();
    let run = exec
        .batch()
        .concurrency(4)
        .submit(tasks, move |cost: u32, _: TaskContext| {
            let g = g.clone();
            async move {
                let _in = g.enter(cost as usize);
                tokio::time::sleep(ms(10)).await;
                Ok::<_, TaskError>(())
            }
        })
        .await
        .unwrap();
    assert_eq!(outcomes(run).await.len(), 12);
    assert_eq!(
        gauge.max(),
        4,
        "weighted load reaches the limit and stays within it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_waiting_for_its_retry_holds_no_slot() {
    let exec = executor(1);
    let log = Log::default();
    let l = log.clone();
    let start = Instant::now();
    let run = exec
        .batch()
        .retry(
            RetryPolicy::attempts(2)
                .with_backoff(Backoff::Fixed {
                    delay: Duration::from_secs(1),
                })
                .with_jitter(Jitter::None),
        )
        .ordered()
        .run(
            ["flaky", "steady"],
            move |name: &'static str, ctx: TaskContext| {
                let l = l.clone();
                async move {
                    l.push((name, ctx.attempt().0));
                    tokio::time::sleep(ms(100)).await;
                    if name == "flaky" && ctx.attempt().0 == 1 {
                        return Err(TaskError::new("try again"));
                    }
                    Ok(())
                }
            },
        )
        .await
        .unwrap();
    let all = outcomes(run).await;
    assert!(all.iter().all(|o| o.is_success()));
    let entries = log.entries();
    let labels: Vec<_> = entries.iter().map(|(l, _)| *l).collect();
    assert_eq!(labels, [("flaky", 1), ("steady", 1), ("flaky", 2)]);
    // "steady" ran during flaky's backoff, not after it.
    assert_eq!(entries[1].1 - start, ms(100));
    assert!(entries[2].1 - start >= ms(1100));
}
