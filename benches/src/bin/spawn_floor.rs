//! The floor under `herd run`: herd's process runner alone, with no store
//! and no scheduler, `jobs` attempts at a time over `n` runs of a command
//! (as `buffer_unordered` drives futures). Prints the wall time.
//!
//!   spawn_floor N JOBS COMMAND [ARG...]
//!
//! Each run gets its number (1 to N) as the last argument, as `herd run`
//! and `xargs -n1` append the item: the command does what it does under
//! them (GNU `true` given an argument loads the locale: a quarter more
//! time than without).

use std::time::{Duration, Instant};

use futures::StreamExt;
use herd_core::scheduler::Cancellation;
use herd_core::{Attempt, BatchId, TaskId};
use herd_exec::{CommandRunner, TaskRef};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).expect("N");
    let jobs: usize = args.next().and_then(|a| a.parse().ok()).expect("JOBS");
    let argv: Vec<String> = args.collect();
    assert!(!argv.is_empty(), "COMMAND");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runner = CommandRunner::builder().build();
    let started = Instant::now();
    runtime.block_on(
        futures::stream::iter(0..n)
            .map(|i| {
                let task = TaskRef {
                    batch: BatchId(1),
                    task: TaskId(i as i64 + 1),
                    index: i,
                    attempt: Attempt(1),
                };
                let mut argv = argv.clone();
                argv.push((i + 1).to_string());
                runner.run(task, argv, Duration::from_secs(5), Cancellation::new())
            })
            .buffer_unordered(jobs)
            .for_each(|_| async {}),
    );
    println!("{:.2}", started.elapsed().as_secs_f64());
}
