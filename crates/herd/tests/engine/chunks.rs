use std::time::Duration;

use futures::StreamExt;
use herd::{
    Backoff, ChunkPolicy, ChunkStatus, Jitter, RetryPolicy, SizeClass, TaskContext, TaskError,
};

use crate::common::executor;

#[tokio::test(start_paused = true)]
async fn chunks_get_a_result_per_item_and_a_status_by_threshold() {
    let exec = executor(2);
    // Items divisible by 7 fail; chunk 0 (0..10) has 0 and 7: 20% failed.
    let mut run = exec
        .batch()
        .ordered()
        .run_chunks(
            0..95u32,
            ChunkPolicy::new(10).max_failed_percent(25.0),
            |items: Vec<u32>, _: TaskContext| async move {
                items
                    .into_iter()
                    .map(|i| {
                        if i % 7 == 0 {
                            Err(TaskError::new(format!("{i}")))
                        } else {
                            Ok(i * 2)
                        }
                    })
                    .collect()
            },
        )
        .await
        .unwrap();
    let mut chunks = Vec::new();
    while let Some(chunk) = run.next().await {
        chunks.push(chunk);
    }
    assert_eq!(chunks.len(), 10);
    assert_eq!(chunks[9].results.len(), 5, "the last chunk holds the rest");
    assert_eq!(chunks[0].first_item, 0);
    assert_eq!(chunks[3].first_item, 30);
    assert_eq!(chunks[0].status, ChunkStatus::Partial);
    assert_eq!(*chunks[0].results[1].as_ref().unwrap(), 2);
    assert!(chunks[0].results[7].is_err());
    let total: usize = chunks.iter().map(|c| c.results.len()).sum();
    assert_eq!(total, 95);
    // 10..20 holds only 14: 10% failed.
    assert_eq!(chunks[1].status, ChunkStatus::Partial);
}

#[tokio::test(start_paused = true)]
async fn a_failed_chunk_is_retried_with_backoff() {
    let exec = executor(1);
    let policy = RetryPolicy::attempts(3)
        .with_backoff(Backoff::Fixed {
            delay: Duration::from_secs(1),
        })
        .with_jitter(Jitter::None);
    let start = tokio::time::Instant::now();
    let mut run = exec
        .batch()
        .retry(policy)
        .run_chunks(
            0..4u32,
            ChunkPolicy::new(4),
            |items: Vec<u32>, ctx: TaskContext| async move {
                let attempt = ctx.attempt().0;
                items
                    .into_iter()
                    .map(|i| {
                        if attempt < 3 && i > 0 {
                            Err(TaskError::new("flaky"))
                        } else {
                            Ok(i)
                        }
                    })
                    .collect()
            },
        )
        .await
        .unwrap();
    let chunk = run.next().await.unwrap();
    assert!(run.next().await.is_none());
    assert_eq!(chunk.attempts, 3);
    assert_eq!(chunk.status, ChunkStatus::Success);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_chunk_that_keeps_failing_reports_its_last_results() {
    let exec = executor(1);
    let mut run = exec
        .batch()
        .retry(RetryPolicy::attempts(2).with_backoff(Backoff::Fixed {
            delay: Duration::ZERO,
        }))
        .run_chunks(
            0..3u32,
            ChunkPolicy::new(3),
            |items: Vec<u32>, _: TaskContext| async move {
                items
                    .into_iter()
                    .map(|i| {
                        if i == 0 {
                            Ok(i)
                        } else {
                            Err(TaskError::new("down"))
                        }
                    })
                    .collect()
            },
        )
        .await
        .unwrap();
    let chunk = run.next().await.unwrap();
    assert_eq!((chunk.status, chunk.attempts), (ChunkStatus::Failed, 2));
    assert_eq!(chunk.results.len(), 3);
    assert!(chunk.results[0].is_ok() && chunk.results[2].is_err());
    assert_eq!(
        chunk.failure.unwrap().error.unwrap().to_string(),
        "2 of 3 items failed"
    );
}

#[tokio::test(start_paused = true)]
async fn size_classes_set_the_chunk_size() {
    let exec = executor(2);
    let mut run = exec
        .batch()
        .run_chunks(
            0..45u32,
            ChunkPolicy::class(SizeClass::Moderate),
            |items: Vec<u32>, _: TaskContext| async move { items.into_iter().map(Ok).collect() },
        )
        .await
        .unwrap();
    let mut sizes = Vec::new();
    while let Some(chunk) = run.next().await {
        sizes.push((chunk.chunk, chunk.results.len()));
    }
    sizes.sort();
    assert_eq!(sizes, [(0, 20), (1, 20), (2, 5)]);
}
