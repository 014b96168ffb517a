//! `herd run`'s worker loop without the CLI: a batch of `n` commands run by
//! one worker with `jobs` slots and herd's process runner, over the memory
//! store or a fresh SQLite file. Over memory it is the upper bound of what
//! the scheduler allows (no durable record); over SQLite it is `herd run`
//! less the CLI (input, progress, summary). Prints the wall time from the
//! worker's start to the batch's end.
//!
//!   run_loop memory|sqlite N JOBS COMMAND [ARG...]
//!
//! The worker is `herd run`'s (`herd_exec::local::command_worker`), holding
//! tasks claimed ahead as it does; `HERD_BENCH_AHEAD` sets another number
//! per job (0: none).

use std::sync::Arc;
use std::time::Instant;

use herd_core::scheduler::{Router, WorkerConfig, spawn_worker};
use herd_core::store::{MemoryStore, Store};
use herd_core::{BatchSpec, Clock, EventKind, SystemClock};
use herd_exec::{CommandRunner, CommandTask, Item, Template};
use herd_sql::SqliteStore;

type Output = serde_json::Value;

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().expect("memory|sqlite");
    let n: u64 = args.next().and_then(|a| a.parse().ok()).expect("N");
    let jobs: u32 = args.next().and_then(|a| a.parse().ok()).expect("JOBS");
    let argv: Vec<String> = args.collect();
    assert!(!argv.is_empty(), "COMMAND");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let seconds = match kind.as_str() {
            "memory" => {
                let store = Arc::new(MemoryStore::<CommandTask, Output>::new());
                drain(store, n, jobs, &argv).await
            }
            "sqlite" => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite:{}", dir.path().join("herd.db").display());
                let store = Arc::new(
                    SqliteStore::<CommandTask, Output>::open(&url)
                        .await
                        .unwrap(),
                );
                drain(store, n, jobs, &argv).await
            }
            other => panic!("unknown store {other:?}: memory or sqlite"),
        };
        println!("{seconds:.2}");
    });
}

async fn drain<S: Store<Payload = CommandTask>>(
    store: Arc<S>,
    n: u64,
    jobs: u32,
    argv: &[String],
) -> f64 {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let template = Template::parse(argv, false).unwrap();
    let items: Vec<Item> = (1..=n).map(|i| Item::new(i.to_string())).collect();
    let ahead: u32 = std::env::var("HERD_BENCH_AHEAD")
        .ok()
        .map(|a| a.parse().expect("HERD_BENCH_AHEAD: a number"))
        .unwrap_or(herd_exec::local::AHEAD_PER_JOB);
    let mut spec = BatchSpec::new("command");
    // As `herd run` does: a task held ahead counts against the batch's
    // concurrency, so the batch allows the slots and the hand.
    spec.concurrency = jobs.saturating_mul(1 + ahead);
    spec.tasks = herd_exec::command_tasks(&template, &items, 1);
    let batch = store.batch_insert(spec, clock.now()).await.unwrap().batch;
    let runner = Arc::new(CommandRunner::builder().build());
    let router = Arc::new(Router::new());
    {
        let mut routes = router.lock().await;
        routes.add_flow(Arc::from("command"), runner.clone());
        routes.bind(batch, runner);
    }
    let mut events = store.events();
    let started = Instant::now();
    let worker = spawn_worker(
        store.clone(),
        router,
        clock,
        WorkerConfig {
            ahead: jobs.saturating_mul(ahead),
            ..herd_exec::local::command_worker(jobs, batch)
        },
    );
    'wait: loop {
        match events.recv().await {
            Ok(group) => {
                for event in group.iter() {
                    if let EventKind::Batch { to, .. } = event.kind
                        && event.batch == batch
                        && to.is_terminal()
                    {
                        break 'wait;
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                if store.batch_get(batch).await.unwrap().state.is_terminal() {
                    break;
                }
            }
            Err(e) => panic!("event feed: {e}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    worker.shutdown().await.unwrap();
    seconds
}
