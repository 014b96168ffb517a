//! Runs 20,000 simulated API calls (a few fail and are retried, a few time
//! out) with live progress from the event feed, then prints a summary.
//!
//! cargo run --release --example live_summary

use std::time::Duration;

use herd::{
    Backoff, CancelMode, ErrorPolicy, EventKind, Executor, RetryPolicy, TaskContext, TaskError,
    TaskState, Threshold,
};

#[tokio::main]
async fn main() -> Result<(), herd::Error> {
    let executor = Executor::builder()
        .concurrency(256)
        .retry(RetryPolicy::attempts(3).with_backoff(Backoff::Exponential {
            base: Duration::from_millis(20),
            factor: 2.0,
            max: Duration::from_millis(200),
        }))
        .timeout(Duration::from_millis(250))
        .error_policy(ErrorPolicy::stop().after(Threshold::Percent {
            percent: 20.0,
            min_finished: 100,
        }))
        .build()?;

    // Watch every transition, and print a progress line a few times a second.
    let mut events = executor.subscribe();
    let progress = tokio::spawn(async move {
        let (mut done, mut failed, mut retried) = (0u64, 0u64, 0u64);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(Ok(event)) => {
                        if let EventKind::Task { to, .. } = event.kind {
                            match to {
                                TaskState::Succeeded => done += 1,
                                TaskState::Failed | TaskState::Skipped | TaskState::Cancelled => failed += 1,
                                TaskState::RetryWait => retried += 1,
                                _ => {}
                            }
                        }
                    }
                    Some(Err(lagged)) => eprintln!("progress: {lagged}"),
                    None => break,
                },
                _ = tick.tick() => {
                    eprint!("\r{done:>6} succeeded  {failed:>4} failed  {retried:>4} retries");
                }
            }
        }
    });

    let calls = 0..20_000u64;
    let run = executor
        .batch()
        .name("simulated api calls")
        .run(calls, |id: u64, _ctx: TaskContext| async move {
            // A deterministic mix of latencies and failures.
            let latency = Duration::from_millis(1 + id % 17);
            tokio::time::sleep(latency).await;
            match id % 97 {
                0 => Err(TaskError::new(format!(
                    "record {id}: upstream returned 503"
                ))),
                1 => Err(TaskError::permanent(format!("record {id}: not found"))),
                2 => {
                    tokio::time::sleep(Duration::from_secs(1)).await; // times out
                    Ok(id)
                }
                _ => Ok(id),
            }
        })
        .await?;
    let batch = run.batch_id();
    let summary = run
        .aggregate(Vec::new(), |mut failures, outcome| {
            if let Err(failure) = outcome.result {
                failures.push((outcome.index, failure.to_string()));
            }
            failures
        })
        .await?;
    let stats = summary.stats;
    eprintln!();
    println!("batch {batch}: {}", summary.state);
    println!(
        "  {} succeeded, {} failed, {} cancelled, {} retries",
        stats.counts.succeeded, stats.counts.failed, stats.counts.cancelled, stats.retries
    );
    println!(
        "  attempt duration p50 {:?}, p95 {:?}, p99 {:?}",
        stats.p50.unwrap_or_default(),
        stats.p95.unwrap_or_default(),
        stats.p99.unwrap_or_default()
    );
    println!("  {:.0} tasks/s over {:.2?}", stats.throughput, stats.wall);
    for (index, failure) in summary.value.iter().take(5) {
        println!("  item {index}: {failure}");
    }
    if summary.value.len() > 5 {
        println!("  … and {} more failures", summary.value.len() - 5);
    }
    // Nothing left to cancel, but this is how a batch is stopped early.
    let _ = executor.cancel(batch, CancelMode::Graceful).await;
    drop(executor);
    let _ = progress.await;
    Ok(())
}
