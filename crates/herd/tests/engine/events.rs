use std::time::Duration;

use herd::{
    Backoff, BatchState, EventKind, Jitter, RetryPolicy, TaskContext, TaskError, TaskState,
};

use crate::common::{executor, outcomes};

#[tokio::test(start_paused = true)]
async fn every_transition_emits_one_event_in_order() {
    let exec = executor(1);
    let mut events = exec.subscribe();
    let run = exec
        .batch()
        .retry(
            RetryPolicy::attempts(2)
                .with_backoff(Backoff::Fixed {
                    delay: Duration::from_millis(10),
                })
                .with_jitter(Jitter::None),
        )
        .run(
            ["flaky", "fine"],
            |name: &'static str, ctx: TaskContext| async move {
                if name == "flaky" && ctx.attempt().0 == 1 {
                    return Err(TaskError::new("once"));
                }
                Ok(())
            },
        )
        .await
        .unwrap();
    outcomes(run).await;
    let mut tasks: Vec<(u64, Option<TaskState>, TaskState, u32)> = Vec::new();
    let mut batch = Vec::new();
    let mut last_seq = 0;
    while let Some(event) = events.try_recv() {
        let event = event.unwrap();
        assert!(event.seq > last_seq, "sequence numbers increase");
        last_seq = event.seq;
        match event.kind {
            EventKind::Task {
                index,
                from,
                to,
                attempt,
                ..
            } => tasks.push((index, from, to, attempt.0)),
            EventKind::Batch { to, .. } => batch.push(to),
        }
    }
    use TaskState::*;
    let of = |i: u64| -> Vec<_> {
        tasks
            .iter()
            .filter(|t| t.0 == i)
            .map(|t| (t.1, t.2, t.3))
            .collect()
    };
    assert_eq!(
        of(0),
        [
            (None, Queued, 0),
            (Some(Queued), Running, 1),
            (Some(Running), RetryWait, 1),
            (Some(RetryWait), Queued, 1),
            (Some(Queued), Running, 2),
            (Some(Running), Succeeded, 2),
        ]
    );
    assert_eq!(
        of(1),
        [
            (None, Queued, 0),
            (Some(Queued), Running, 1),
            (Some(Running), Succeeded, 1)
        ]
    );
    assert_eq!(
        batch,
        [
            BatchState::Queued,
            BatchState::Running,
            BatchState::Succeeded
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn stats_report_counts_retries_percentiles_and_throughput() {
    let exec = executor(10);
    let run = exec
        .batch()
        .retry(RetryPolicy::attempts(2).with_backoff(Backoff::Fixed {
            delay: Duration::ZERO,
        }))
        .run(1..=100u64, |i: u64, ctx: TaskContext| async move {
            tokio::time::sleep(Duration::from_millis(i)).await;
            if i > 95 && ctx.attempt().0 == 1 {
                return Err(TaskError::new("retry me"));
            }
            Ok(i)
        })
        .await
        .unwrap();
    let batch = run.batch_id();
    outcomes(run).await;
    let stats = exec.stats(batch).await.unwrap();
    assert_eq!(stats.counts.succeeded, 100);
    assert_eq!(stats.retries, 5);
    let p50 = stats.p50.unwrap().as_millis();
    let p99 = stats.p99.unwrap().as_millis();
    assert!((48..=54).contains(&p50), "p50 {p50}ms");
    assert!((97..=100).contains(&p99), "p99 {p99}ms");
    assert!(
        stats.wall >= Duration::from_millis(500) && stats.wall < Duration::from_secs(2),
        "{:?}",
        stats.wall
    );
    let expected = 100.0 / stats.wall.as_secs_f64();
    assert!(
        (stats.throughput - expected).abs() < 0.01,
        "{}",
        stats.throughput
    );
}

#[tokio::test(start_paused = true)]
async fn groups_carry_the_same_events_as_one_by_one() {
    let exec = executor(4);
    let mut singles = exec.subscribe();
    let mut groups = exec.subscribe();
    let run = exec
        .run(0..50u32, |i: u32, _: TaskContext| async move {
            Ok::<_, TaskError>(i)
        })
        .await
        .unwrap();
    outcomes(run).await;
    let mut one_by_one = Vec::new();
    while let Some(event) = singles.try_recv() {
        one_by_one.push(event.unwrap());
    }
    let mut grouped = Vec::new();
    while grouped.len() < one_by_one.len() {
        let group = groups.recv_group().await.unwrap().unwrap();
        assert!(!group.is_empty());
        grouped.extend(group.iter().cloned());
    }
    assert_eq!(grouped, one_by_one);
    // 50 tasks × (queued, running, succeeded) + the batch's queued, running, succeeded.
    assert_eq!(one_by_one.len(), 50 * 3 + 3);
}

/// A subscriber sharing the only runtime thread with a worker that always has
/// work at hand (the whole input is in the store) sees every event. (The
/// starvation once seen here showed only in the criterion bench, on two
/// threads, which reports missed events on every run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_busy_worker_does_not_starve_subscribers() {
    let exec = herd::Executor::builder().concurrency(64).build().unwrap();
    let mut events = exec.subscribe();
    let counter = tokio::spawn(async move {
        let (mut seen, mut lagged) = (0u64, 0u64);
        while let Some(event) = events.recv().await {
            match event {
                Ok(_) => seen += 1,
                Err(herd::Lagged(n)) => lagged += n,
            }
            if seen == 3 * 100_000 + 3 {
                break;
            }
        }
        (seen, lagged)
    });
    let run = exec
        .batch()
        .window(100_000)
        .run(0..100_000u32, |i: u32, _: TaskContext| async move {
            Ok::<_, TaskError>(i)
        })
        .await
        .unwrap();
    assert_eq!(outcomes(run).await.len(), 100_000);
    let (seen, lagged) = counter.await.unwrap();
    assert_eq!(lagged, 0, "the subscriber fell behind");
    assert_eq!(seen, 3 * 100_000 + 3);
}
