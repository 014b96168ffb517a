//! Round trips per operation: what the SQLite store sends to its connection
//! for a claim, a completion, and both in one call, while a worker with two
//! slots drains a batch one task at a time (`herd run -j2`). Each query is
//! one round trip to sqlx's connection thread (two context switches, and
//! often a wait for a core); they are counted through sqlx's statement log,
//! one event per query sent.
//!
//! The same for the PostgreSQL store, where each statement is a round trip
//! over the network: `BEGIN`, the transaction's reads (one statement),
//! its writes (one statement), `COMMIT`.
//!
//! `cargo test -p herd-sql --test round_trips -- --nocapture` prints the
//! counts and the statements.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_core::model::{BatchSpec, TaskSpec, Timestamp};
use herd_core::store::{AttemptOutcome, ClaimRequest, Completion, Fence, Store};
use herd_sql::SqliteStore;

/// Every query sqlx sent, as its SQL text.
#[derive(Clone, Default)]
struct Queries(Arc<Mutex<Vec<String>>>);

impl Queries {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Reads the SQL of a statement-log event.
struct Sql<'a>(&'a mut String);

impl tracing::field::Visit for Sql<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &value);
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        // `summary` is the statement's start; `db.statement` all of it,
        // when it is longer.
        let text = format!("{value:?}").trim_matches('"').replace("\\n", "\n");
        if matches!(field.name(), "summary" | "db.statement") && text.len() > self.0.len() {
            *self.0 = text;
        }
    }
}

impl tracing::Subscriber for Queries {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == "sqlx::query"
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut sql = String::new();
        event.record(&mut Sql(&mut sql));
        // The store's watch for other processes' commits polls the writer
        // connection between transactions: no part of any call.
        if !sql.contains("PRAGMA data_version") {
            self.0.lock().unwrap().push(sql);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Queries per call, and statements per call (`;`-separated).
fn per_call(name: &str, calls: &[Vec<String>]) -> (f64, f64) {
    let queries: usize = calls.iter().map(Vec::len).sum();
    let statements: usize = calls
        .iter()
        .flatten()
        .map(|sql| sql.split(';').filter(|s| !s.trim().is_empty()).count())
        .sum();
    let n = calls.len() as f64;
    let (queries, statements) = (queries as f64 / n, statements as f64 / n);
    eprintln!("{name}: {queries:.1} round trips, {statements:.1} statements per call");
    for sql in calls.last().into_iter().flatten() {
        eprintln!("    {}", sql.replace('\n', " "));
    }
    (queries, statements)
}

/// Every write goes with one round trip for its reads (and `BEGIN
/// IMMEDIATE`) and one for its writes (and `COMMIT`): a report and a claim
/// together cost what each costs alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_round_trips_per_operation() {
    let queries = Queries::default();
    tracing::subscriber::set_global_default(queries.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let location = format!("sqlite:{}", dir.path().join("herd.db").display());
    let store = SqliteStore::<String, String>::open(&location)
        .await
        .unwrap();
    assert_eq!(round_trips(&store, &queries).await, (2.0, 2.0, 2.0));
}

/// A worker with two slots drains a batch of 40 tasks, one at a time: the
/// queries per call of `task_complete`, `task_claim` and
/// `task_complete_and_claim`.
async fn round_trips<S: Store<Payload = String, Output = String>>(
    store: &S,
    queries: &Queries,
) -> (f64, f64, f64) {
    let now = Timestamp(1_000_000);
    let worker = store.worker_register("h", 1, now).await.unwrap();
    let spec = BatchSpec {
        concurrency: 2,
        tasks: (0..40).map(|i| TaskSpec::new(i.to_string())).collect(),
        ..BatchSpec::new("f")
    };
    let batch = store.batch_insert(spec, now).await.unwrap().batch;
    let request = |n: u32| ClaimRequest {
        worker,
        capacity: n,
        max_tasks: n as usize,
        lease: Duration::from_secs(30),
        batch: Some(batch),
    };
    let fences = |tasks: &[herd_core::store::ClaimedTask<String, String>]| {
        tasks
            .iter()
            .map(|t| Fence {
                task: t.id,
                attempt: t.attempt,
            })
            .collect::<Vec<_>>()
    };
    let mut running = fences(&store.task_claim(request(2), now).await.unwrap().tasks);
    queries.take();
    let (mut claims, mut completes, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for turn in 0..20 {
        let completion = Completion {
            fence: running.remove(0),
            outcome: AttemptOutcome::Succeeded { output: None },
            duration: Duration::from_millis(1),
            log: None,
        };
        let claim = if turn % 2 == 0 {
            store
                .task_complete(worker, vec![completion], now)
                .await
                .unwrap();
            completes.push(queries.take());
            let claim = store.task_claim(request(1), now).await.unwrap();
            claims.push(queries.take());
            claim
        } else {
            let (_, claim) = store
                .task_complete_and_claim(worker, vec![completion], request(1), now)
                .await
                .unwrap();
            both.push(queries.take());
            claim.unwrap()
        };
        assert_eq!(claim.tasks.len(), 1);
        running.extend(fences(&claim.tasks));
    }
    (
        per_call("task_complete", &completes).0,
        per_call("task_claim", &claims).0,
        per_call("task_complete_and_claim", &both).0,
    )
}

/// PostgreSQL: every operation is `BEGIN` (not in sqlx's statement log),
/// one statement that reads (and locks) what the transaction needs, one
/// that writes it all back (the heads of batches whose queued tasks
/// changed among it), and `COMMIT`: four round trips, a report and a claim
/// together as each alone.
#[tokio::test]
async fn postgres_round_trips_per_operation() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    // This test's thread only: its runtime runs every query on it. Set
    // first, so that none of its queries reach the SQLite test's global
    // subscriber.
    let queries = Queries::default();
    let _log = tracing::subscriber::set_default(queries.clone());
    let store = common::fresh_postgres(&url, "round_trips").await;
    // Logged: the reads, the writes, COMMIT.
    assert_eq!(round_trips(&store, &queries).await, (3.0, 3.0, 3.0));
}
