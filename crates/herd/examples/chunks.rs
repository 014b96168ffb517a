//! Calls a (simulated) bulk API with 20 records per request: each request
//! returns a result per record; a request where more than half the records
//! fail is retried as a whole.
//!
//! cargo run --example chunks

use std::time::Duration;

use futures::StreamExt;
use herd::{
    Backoff, ChunkPolicy, ChunkStatus, Executor, Jitter, RetryPolicy, SizeClass, TaskContext,
    TaskError,
};

#[tokio::main]
async fn main() -> Result<(), herd::Error> {
    let executor = Executor::builder().concurrency(4).build()?;
    let retry = RetryPolicy::attempts(3)
        .with_backoff(Backoff::Fixed {
            delay: Duration::from_millis(50),
        })
        .with_jitter(Jitter::None);
    let mut chunks = executor
        .batch()
        .retry(retry)
        .run_chunks(
            0..95u32,
            ChunkPolicy::class(SizeClass::Moderate), // 20 per request
            |records: Vec<u32>, ctx: TaskContext| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                records
                    .into_iter()
                    .map(|id| match id {
                        // Record 13 is always rejected.
                        13 => Err(TaskError::permanent(format!("record {id}: invalid"))),
                        // The third request times out on its first try.
                        40..60 if ctx.attempt().0 == 1 => Err(TaskError::new("gateway timeout")),
                        _ => Ok(id * 10),
                    })
                    .collect()
            },
        )
        .await?;
    while let Some(chunk) = chunks.next().await {
        let failed = chunk.results.iter().filter(|r| r.is_err()).count();
        println!(
            "chunk {} (items {}..{}): {} after {} attempt(s), {} of {} failed",
            chunk.chunk,
            chunk.first_item,
            chunk.first_item + chunk.results.len() as u64,
            chunk.status,
            chunk.attempts,
            failed,
            chunk.results.len()
        );
        if chunk.status == ChunkStatus::Partial {
            for error in chunk.results.iter().filter_map(|r| r.as_ref().err()) {
                println!("    {error}");
            }
        }
    }
    Ok(())
}
