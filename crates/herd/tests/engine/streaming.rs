use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use herd::{TaskContext, TaskError};

use crate::common::{executor, outcomes};

#[tokio::test(start_paused = true)]
async fn outcomes_arrive_in_completion_order_by_default() {
    let exec = executor(3);
    let mut run = exec
        .run([30u64, 10, 20], |ms: u64, _: TaskContext| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, TaskError>(ms)
        })
        .await
        .unwrap();
    let mut order = Vec::new();
    while let Some(o) = run.next().await {
        order.push(o.result.unwrap());
    }
    assert_eq!(order, [10, 20, 30]);
}

#[tokio::test(start_paused = true)]
async fn ordered_runs_yield_in_input_order() {
    let exec = executor(3);
    let mut run = exec
        .batch()
        .ordered()
        .run([30u64, 10, 20, 5], |ms: u64, _: TaskContext| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, TaskError>(ms)
        })
        .await
        .unwrap();
    let mut order = Vec::new();
    while let Some(o) = run.next().await {
        order.push((o.index, o.result.unwrap()));
    }
    assert_eq!(order, [(0, 30), (1, 10), (2, 20), (3, 5)]);
}

/// The input is read only as outcomes are taken: items held between input
/// and output never exceed the window, whatever the input's length.
#[tokio::test(start_paused = true)]
async fn the_input_is_read_lazily_within_the_window() {
    let exec = executor(4);
    let pulled = Arc::new(AtomicU64::new(0));
    let p = pulled.clone();
    let items = (0..100_000u64).inspect(move |_| {
        p.fetch_add(1, Ordering::SeqCst);
    });
    let window = 64;
    let mut run = exec
        .batch()
        .window(window)
        .run(items, |i: u64, _: TaskContext| async move {
            Ok::<_, TaskError>(i)
        })
        .await
        .unwrap();
    let mut taken = 0u64;
    let mut most_ahead = 0u64;
    while let Some(o) = run.next().await {
        assert!(o.is_success());
        taken += 1;
        most_ahead = most_ahead.max(pulled.load(Ordering::SeqCst) - taken);
        if taken.is_multiple_of(1000) {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(taken, 100_000);
    assert!(
        most_ahead <= window as u64,
        "read {most_ahead} items ahead of the consumer"
    );
}

#[tokio::test(start_paused = true)]
async fn a_consumer_that_stops_reading_stops_the_input() {
    let exec = executor(4);
    let pulled = Arc::new(AtomicU64::new(0));
    let p = pulled.clone();
    let items = (0..u64::MAX).inspect(move |_| {
        p.fetch_add(1, Ordering::SeqCst);
    });
    let mut run = exec
        .batch()
        .window(100)
        .run(items, |i: u64, _: TaskContext| async move {
            Ok::<_, TaskError>(i)
        })
        .await
        .unwrap();
    for _ in 0..10 {
        run.next().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let read = pulled.load(Ordering::SeqCst);
    assert!(
        read <= 110,
        "read {read} items with only 10 taken and a window of 100"
    );
}

#[tokio::test(start_paused = true)]
async fn shuffle_is_reproducible_and_max_records_caps_the_input() {
    let exec = executor(1);
    let mut orders = Vec::new();
    for seed in [7, 7, 8] {
        let mut run = exec
            .batch()
            .shuffle(seed)
            .max_records(5)
            .run(0..20u32, |i: u32, _: TaskContext| async move {
                Ok::<_, TaskError>(i)
            })
            .await
            .unwrap();
        let mut order = Vec::new();
        while let Some(o) = run.next().await {
            order.push(o.result.unwrap());
        }
        orders.push(order);
    }
    assert_eq!(orders[0].len(), 5);
    assert_eq!(orders[0], orders[1]);
    assert_ne!(orders[0], orders[2]);
    assert_ne!(orders[0], [0, 1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn async_streams_are_accepted_as_input() {
    let exec = executor(2);
    let items = futures::stream::iter(0..10u32).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        i
    });
    let run = exec
        .batch()
        .run_stream(items, |i: u32, _: TaskContext| async move {
            Ok::<_, TaskError>(i + 1)
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    let values: Vec<u32> = all.into_iter().map(|o| o.result.unwrap()).collect();
    assert_eq!(values, (1..=10).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn aggregate_folds_without_holding_outcomes() {
    let exec = executor(8);
    let run = exec
        .run(1..=1000u64, |i: u64, _: TaskContext| async move {
            if i.is_multiple_of(100) {
                Err(TaskError::new("hundred"))
            } else {
                Ok(i)
            }
        })
        .await
        .unwrap();
    let summary = run
        .aggregate((0u64, 0u64), |(sum, failed), o| match o.result {
            Ok(v) => (sum + v, failed),
            Err(_) => (sum, failed + 1),
        })
        .await
        .unwrap();
    let expected: u64 = (1..=1000u64).filter(|i| i % 100 != 0).sum();
    assert_eq!(summary.value, (expected, 10));
    assert_eq!(summary.state, herd::BatchState::Partial);
    assert_eq!(summary.stats.counts.succeeded, 990);
    assert_eq!(summary.stats.counts.failed, 10);
}

#[tokio::test(start_paused = true)]
async fn an_empty_input_ends_at_once() {
    let exec = executor(2);
    let run = exec
        .run(Vec::<u32>::new(), |i: u32, _: TaskContext| async move {
            Ok::<_, TaskError>(i)
        })
        .await
        .unwrap();
    let batch = run.batch_id();
    assert!(outcomes(run).await.is_empty());
    assert_eq!(
        exec.batch_info(batch).await.unwrap().state,
        herd::BatchState::Succeeded
    );
}

/// Memory does not grow with the number of batches run: the executor
/// answers for the latest finished batches and forgets older ones.
#[tokio::test(start_paused = true)]
async fn old_finished_batches_are_forgotten() {
    let exec = executor(4);
    let mut batches = Vec::new();
    for round in 0..300u32 {
        let run = exec
            .run([round], |i: u32, _: TaskContext| async move {
                Ok::<_, TaskError>(i)
            })
            .await
            .unwrap();
        batches.push(run.batch_id());
        assert_eq!(outcomes(run).await.len(), 1);
    }
    let first = exec.batch_info(batches[0]).await;
    assert!(
        matches!(first, Err(herd::Error::Store(_))),
        "the oldest batch is forgotten: {first:?}"
    );
    let last = exec.batch_info(*batches.last().unwrap()).await.unwrap();
    assert_eq!(last.state, herd::BatchState::Succeeded);
    let kept = exec.stats(batches[300 - 256]).await.unwrap();
    assert_eq!(kept.counts.succeeded, 1, "the latest 256 are kept");
}
