//! Peak memory of streaming 1,000,000 items through an executor, against a
//! baseline that collects every outcome into a `Vec` first.
//!
//! One variant per process, so that each peak (`VmHWM`) is its own:
//!
//! ```text
//! cargo run --release -p herd-benches --bin stream_rss -- herd
//! cargo run --release -p herd-benches --bin stream_rss -- vec
//! ```
//!
//! `benches/stream_rss.sh` runs both.

use std::time::{Duration, Instant};

use futures::StreamExt;
use herd::{Executor, TaskContext, TaskError};

const ITEMS: u64 = 1_000_000;
const CONCURRENCY: usize = 64;
/// The goal for the herd variant's peak RSS.
const GOAL_MB: f64 = 64.0;

#[tokio::main]
async fn main() {
    let variant = std::env::args().nth(1).unwrap_or_default();
    let (count, elapsed) = match variant.as_str() {
        "herd" => herd_streamed().await,
        "vec" => vec_collected().await,
        other => {
            eprintln!("usage: stream_rss herd|vec (got {other:?})");
            std::process::exit(2);
        }
    };
    assert_eq!(count, ITEMS, "every item yields one outcome");
    let peak = peak_rss_mb();
    let label = match variant.as_str() {
        "herd" => "herd (streamed)",
        _ => "buffer_unordered (collected into Vec)",
    };
    println!(
        "{label}: {count} outcomes in {elapsed:.2?} ({:.2} M items/s), peak RSS {peak:.1} MB",
        count as f64 / elapsed.as_secs_f64() / 1e6
    );
    if variant == "herd" {
        println!("peak RSS herd: {peak:.1} MB (goal <= {GOAL_MB:.0} MB)");
    }
}

/// Streams the items through an executor, taking each outcome as it comes.
async fn herd_streamed() -> (u64, Duration) {
    let executor = Executor::builder()
        .concurrency(CONCURRENCY)
        .build()
        .expect("a valid executor");
    let start = Instant::now();
    let mut outcomes = executor
        .run(0..ITEMS, |n: u64, _ctx: TaskContext| async move {
            Ok::<_, TaskError>(n.wrapping_mul(3))
        })
        .await
        .expect("the batch is accepted");
    let (mut count, mut sum) = (0u64, 0u64);
    while let Some(outcome) = outcomes.next().await {
        count += 1;
        sum = sum.wrapping_add(outcome.result.expect("a no-op cannot fail"));
    }
    std::hint::black_box(sum);
    (count, start.elapsed())
}

/// The pattern herd replaces when results are wanted at the end: run with
/// `buffer_unordered` and collect every outcome, holding them all at once.
async fn vec_collected() -> (u64, Duration) {
    let start = Instant::now();
    let outcomes: Vec<(u64, Result<u64, TaskError>)> = futures::stream::iter(0..ITEMS)
        .map(|n| async move { (n, Ok(n.wrapping_mul(3))) })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let count = outcomes.len() as u64;
    std::hint::black_box(&outcomes);
    (count, start.elapsed())
}

/// The process's peak resident set (`VmHWM`), in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb / 1024.0
}
