//! herd's durable stores against the bare database, in the same run: no-op
//! tasks drained per second (through the store contract, and through the
//! worker loop), enqueue-to-start latency with an idle worker, and the time
//! to submit one large batch.
//!
//! The baseline is the loop a queue over the database needs at the least:
//! claim and complete in one transaction over a two-column table in the same
//! file or schema (PostgreSQL: `SELECT … FOR UPDATE SKIP LOCKED` + `UPDATE …
//! WHERE id = ANY($1)`; SQLite: `BEGIN IMMEDIATE` + `SELECT` + `UPDATE … IN
//! json_each(?)`), with a partial index on the queued rows as herd has.
//! Every measure starts from an empty store (a fresh file, or the schema
//! dropped and created again).
//!
//! Turns, as a worker takes tasks, are measured apart: each reports what
//! ended and claims the next in one call (`task_complete_and_claim`), so
//! one transaction per turn. With 100 slots each turn reports 100 and
//! claims 100 (the bare loop also claims and completes 100 per
//! transaction); with two slots (`herd run -j2`) each reports one task and
//! claims the next, with one other task running meanwhile, and the time per
//! turn is what the store adds to each task. Turns spend one transaction
//! per task, as the bare loop does, so the one-per-transaction goal is
//! judged on them as well as on the drain (a claim, then a completion: two
//! transactions per task).
//!
//! Everything runs on one thread (a current-thread runtime), as `herd run`
//! and `herd worker` run their worker.
//!
//! Enqueue-to-start latency is measured twice: submitting through the
//! worker's own store handle (woken in-process), and through another handle
//! with its own connections, as a submitter in another process would
//! (PostgreSQL wakes the worker by `NOTIFY`, SQLite by the worker's poll of
//! `PRAGMA data_version`). After the table come the mean times per call of
//! the drains (`task_claim`, `task_complete`, a bare transaction), to see
//! where herd's time goes.
//!
//! ```text
//! cargo run --release -p herd-benches --bin store_drain -- [sqlite|postgres|both] [drain|turns|loop|submit|many]
//! ```
//!
//! With `drain`, `turns`, `loop` or `submit`, only that is measured (for a
//! profiler): the drain at 100 per transaction, the turns of a worker with
//! two slots, the worker loop, or the large submit.
//! `many` measures only a claim's cost among many live batches (what `herd
//! serve` sees when clients create small batches): `HERD_BENCH_BATCHES`
//! batches of two no-op tasks, concurrency 1, then `HERD_BENCH_CLAIMS` claims
//! of one task each (`task_claim`), then as many turns reporting one and
//! claiming the next (`task_complete_and_claim`); every claim leaves
//! thousands of batches claimable.
//!
//! Settings, from the environment:
//!
//! | variable | default | what |
//! |---|---|---|
//! | `HERD_BENCH_DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/test` | the PostgreSQL database |
//! | `HERD_BENCH_SCHEMA` | `herd_bench` | its schema, dropped and created again for each measure |
//! | `HERD_BENCH_TASKS` | 20000 | tasks per drain, 100 per transaction, and per worker-loop drain |
//! | `HERD_BENCH_SINGLE_TASKS` | 5000 | tasks per drain, 1 per transaction, and per drain in turns |
//! | `HERD_BENCH_SUBMIT` | 100000 | tasks in the one-batch submit |
//! | `HERD_BENCH_SAMPLES` | 200 | enqueue-to-start samples per variant |
//! | `HERD_BENCH_BATCHES` | 5000 | live batches, with `many` |
//! | `HERD_BENCH_CLAIMS` | 200 | claims (and turns) timed, with `many` |
//!
//! `benches/store_drain.sh` builds and runs it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use herd_core::scheduler::{
    AttemptReport, Cancellation, Router, Runner, TaskEnd, WorkerConfig, spawn_worker,
};
use herd_core::store::{
    AttemptOutcome, ClaimRequest, ClaimedTask, Completion, Events, Fence, Store,
};
use herd_core::{BatchId, BatchSpec, BatchState, Clock, EventKind, SystemClock, TaskSpec};
use herd_sql::{PgStore, SqliteStore};
use tokio::sync::{broadcast, mpsc};

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// The flow of every benchmark batch.
const FLOW: &str = "noop";
/// Enqueue-to-start samples thrown away first: connections prepare their
/// statements on first use.
const WARMUP: usize = 20;
/// The slots of the worker in the worker-loop drain, and the batch concurrency.
const SLOTS: u32 = 100;
/// How long a measure may take before the run is declared stuck.
const STUCK: Duration = Duration::from_secs(120);
/// How long closing a store's connections may take.
const CLOSE: Duration = Duration::from_secs(5);

// One thread, as `herd run` and `herd worker` run their worker (and the
// bare loop on the same runtime): on the multi-threaded runtime every
// round trip also paid for waking another thread (a one-task turn
// measured 1.33 ms there, 1.02 ms here).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let options = Options::from_env()?;
    if let Some(only) = options.only {
        if options.sqlite {
            let mut bench = SqliteBench::new()?;
            run_only(&mut bench, &options, only).await?;
        }
        if options.postgres {
            let mut bench = PgBench::new(&options.url, &options.schema).await?;
            run_only(&mut bench, &options, only).await?;
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    let mut calls = Vec::new();
    if options.sqlite {
        let mut bench = SqliteBench::new()?;
        run(&mut bench, &options, &mut rows, &mut calls).await?;
    }
    if options.postgres {
        let mut bench = PgBench::new(&options.url, &options.schema).await?;
        run(&mut bench, &options, &mut rows, &mut calls).await?;
    }
    print_rows(&rows);
    println!();
    print_calls(&calls);
    Ok(())
}

/// One measure alone, printed on one line.
async fn run_only<B: Bench>(bench: &mut B, options: &Options, only: Only) -> Result<()> {
    match only {
        Only::Drain => {
            let drained = store_drain(bench, options.tasks, 100).await?;
            println!(
                "{}: drain of {} tasks, 100 per transaction: {}/s \
                 ({:.3} ms per claim, {:.3} ms per completion)",
                B::NAME,
                count(options.tasks),
                si(drained.rate),
                drained.claim.mean_ms(),
                drained.complete.mean_ms()
            );
        }
        Only::Turns => print_turns::<B>(turn_drain(bench, options.single_tasks, 2, 1).await?),
        Only::Loop => {
            let rate = worker_drain(bench, options.tasks).await?;
            println!(
                "{}: worker loop, {SLOTS} slots, {} tasks: {}/s",
                B::NAME,
                count(options.tasks),
                si(rate)
            );
        }
        Only::Many => {
            let (claim, turn) = many_batches(bench, options.batches, options.claims).await?;
            println!(
                "{}: among {} live batches: {:.3} ms per task_claim of 1, \
                 {:.3} ms per task_complete_and_claim of 1 ({} each)",
                B::NAME,
                count(options.batches),
                claim.mean_ms(),
                turn.mean_ms(),
                options.claims
            );
        }
        Only::Submit => {
            let took = submit(bench, options.submit).await?;
            println!(
                "{}: submit of {} tasks in one batch: {:.3} s",
                B::NAME,
                count(options.submit),
                took.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// What to run.
struct Options {
    sqlite: bool,
    postgres: bool,
    url: String,
    schema: String,
    tasks: usize,
    single_tasks: usize,
    submit: usize,
    samples: usize,
    batches: usize,
    claims: usize,
    /// One measure alone (for a profiler).
    only: Option<Only>,
}

/// The measures that can run alone.
#[derive(Clone, Copy)]
enum Only {
    /// The drain at 100 tasks per transaction.
    Drain,
    /// The turns of a worker with two slots.
    Turns,
    /// The worker loop with [`SLOTS`] slots.
    Loop,
    /// The one large submit.
    Submit,
    /// Claims among many live batches.
    Many,
}

impl Options {
    fn from_env() -> Result<Options> {
        let (sqlite, postgres) = match std::env::args().nth(1).as_deref() {
            None | Some("both") => (true, true),
            Some("sqlite") => (true, false),
            Some("postgres") => (false, true),
            Some(other) => {
                return Err(format!(
                    "usage: store_drain [sqlite|postgres|both] [drain|turns|loop|submit|many] (got {other:?})"
                )
                .into());
            }
        };
        let only = match std::env::args().nth(2).as_deref() {
            None => None,
            Some("drain") => Some(Only::Drain),
            Some("turns") => Some(Only::Turns),
            Some("loop") => Some(Only::Loop),
            Some("submit") => Some(Only::Submit),
            Some("many") => Some(Only::Many),
            Some(other) => {
                return Err(format!(
                    "usage: store_drain [sqlite|postgres|both] [drain|turns|loop|submit|many] (got {other:?})"
                )
                .into());
            }
        };
        Ok(Options {
            sqlite,
            postgres,
            url: std::env::var("HERD_BENCH_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            schema: std::env::var("HERD_BENCH_SCHEMA").unwrap_or_else(|_| "herd_bench".into()),
            tasks: number("HERD_BENCH_TASKS", 20_000)?,
            single_tasks: number("HERD_BENCH_SINGLE_TASKS", 5_000)?,
            submit: number("HERD_BENCH_SUBMIT", 100_000)?,
            samples: number("HERD_BENCH_SAMPLES", 200)?,
            batches: number("HERD_BENCH_BATCHES", 5_000)?,
            claims: number("HERD_BENCH_CLAIMS", 200)?,
            only,
        })
    }
}

fn number(var: &str, default: usize) -> Result<usize> {
    match std::env::var(var) {
        Ok(text) => {
            let n: usize = text
                .replace(['_', ','], "")
                .parse()
                .map_err(|_| format!("{var}={text:?}: expected a positive whole number"))?;
            if n == 0 {
                return Err(format!("{var}: must be at least 1").into());
            }
            Ok(n)
        }
        Err(_) => Ok(default),
    }
}

/// One store kind: how to get an empty store, and the bare loop over its database.
trait Bench {
    type Store: Store<Payload = String, Output = String>;
    /// The store's name in the table.
    const NAME: &'static str;
    /// The drain rate herd should reach, in tasks per second.
    const GOAL_RATE: f64;

    /// An empty store.
    fn fresh(&mut self) -> impl Future<Output = Result<Arc<Self::Store>>>;
    /// Another handle on the last fresh store: its own connections and wake-ups,
    /// as a submitter in another process has.
    fn reopen(&self) -> impl Future<Output = Result<Arc<Self::Store>>>;
    /// Closes a store's connections.
    fn close(store: Arc<Self::Store>) -> impl Future<Output = ()>;
    /// Creates the bare table beside the store's, with `n` queued rows.
    fn bare_fill(store: &Self::Store, n: usize) -> impl Future<Output = Result<()>>;
    /// Claims and completes up to `batch` bare rows in one transaction;
    /// returns how many.
    fn bare_step(store: &Self::Store, batch: usize) -> impl Future<Output = Result<usize>>;
}

/// SQLite: a fresh file per measure, in a directory removed at the end.
struct SqliteBench {
    dir: tempfile::TempDir,
    count: usize,
}

impl SqliteBench {
    fn new() -> Result<SqliteBench> {
        Ok(SqliteBench {
            dir: tempfile::Builder::new().prefix("herd-bench").tempdir()?,
            count: 0,
        })
    }

    fn location(&self) -> String {
        let path: PathBuf = self.dir.path().join(format!("bench-{}.db", self.count));
        format!("sqlite:{}", path.display())
    }
}

impl Bench for SqliteBench {
    type Store = SqliteStore<String, String>;
    const NAME: &'static str = "sqlite";
    const GOAL_RATE: f64 = 50_000.0;

    async fn fresh(&mut self) -> Result<Arc<Self::Store>> {
        self.count += 1;
        Ok(Arc::new(SqliteStore::open(&self.location()).await?))
    }

    async fn reopen(&self) -> Result<Arc<Self::Store>> {
        Ok(Arc::new(SqliteStore::open(&self.location()).await?))
    }

    async fn close(store: Arc<Self::Store>) {
        // The store's change watch holds a connection until the store is gone.
        let pool = store.pool().clone();
        drop(store);
        let _ = tokio::time::timeout(CLOSE, pool.close()).await;
    }

    async fn bare_fill(store: &Self::Store, n: usize) -> Result<()> {
        let mut conn = store.pool().acquire().await?;
        herd_benches::sqlite_bare::fill(&mut conn, n).await
    }

    async fn bare_step(store: &Self::Store, batch: usize) -> Result<usize> {
        let mut conn = store.pool().acquire().await?;
        herd_benches::sqlite_bare::step(&mut conn, batch).await
    }
}

/// PostgreSQL: a schema dropped and created again per measure.
struct PgBench {
    url: String,
    schema: String,
    /// A connection outside the schema, to drop it.
    admin: sqlx::PgPool,
}

impl PgBench {
    async fn new(url: &str, schema: &str) -> Result<PgBench> {
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!("HERD_BENCH_SCHEMA={schema:?}: use letters, digits and _").into());
        }
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .map_err(|e| format!("cannot connect to {url} (set HERD_BENCH_DATABASE_URL): {e}"))?;
        Ok(PgBench {
            url: url.to_owned(),
            schema: schema.to_owned(),
            admin,
        })
    }
}

impl Bench for PgBench {
    type Store = PgStore<String, String>;
    const NAME: &'static str = "postgres";
    const GOAL_RATE: f64 = 30_000.0;

    async fn fresh(&mut self) -> Result<Arc<Self::Store>> {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .execute(&self.admin)
            .await?;
        Ok(Arc::new(
            PgStore::connect_in_schema(&self.url, &self.schema).await?,
        ))
    }

    async fn reopen(&self) -> Result<Arc<Self::Store>> {
        Ok(Arc::new(
            PgStore::connect_in_schema(&self.url, &self.schema).await?,
        ))
    }

    async fn close(store: Arc<Self::Store>) {
        // The store's LISTEN connection is the pool's until the store is gone.
        let pool = store.pool().clone();
        drop(store);
        let _ = tokio::time::timeout(CLOSE, pool.close()).await;
    }

    async fn bare_fill(store: &Self::Store, n: usize) -> Result<()> {
        let pool = store.pool();
        sqlx::query("CREATE TABLE bare (id BIGINT PRIMARY KEY, state TEXT NOT NULL)")
            .execute(pool)
            .await?;
        sqlx::query("CREATE INDEX bare_queued ON bare (id) WHERE state = 'queued'")
            .execute(pool)
            .await?;
        sqlx::query(
            "INSERT INTO bare (id, state) SELECT g, 'queued' FROM generate_series(1, $1) g",
        )
        .bind(n as i64)
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn bare_step(store: &Self::Store, batch: usize) -> Result<usize> {
        let mut tx = store.pool().begin().await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM bare WHERE state = 'queued' ORDER BY id LIMIT $1 \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(batch as i64)
        .fetch_all(&mut *tx)
        .await?;
        if !ids.is_empty() {
            sqlx::query("UPDATE bare SET state = 'done' WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(ids.len())
    }
}

/// A line of the results table.
struct Row {
    store: &'static str,
    measure: String,
    herd: Figure,
    bare: Option<Figure>,
    /// The goal, and whether it was met.
    goal: Option<(String, bool)>,
}

/// A measured figure.
#[derive(Clone, Copy)]
enum Figure {
    /// Items per second.
    Rate(f64),
    /// Milliseconds (of latency; negative when the start came first).
    Millis(f64),
    /// Seconds taken for `count` items.
    Took { seconds: f64, count: usize },
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Figure::Rate(r) => write!(f, "{}/s", si(r)),
            Figure::Millis(ms) => write!(f, "{ms:.2} ms"),
            Figure::Took { seconds, count } => {
                write!(f, "{seconds:.3} s ({}/s)", si(count as f64 / seconds))
            }
        }
    }
}

/// `52.1k`, `1.23M`.
fn si(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// Time per call, for seeing where a drain's time goes.
struct Calls {
    store: &'static str,
    batch: usize,
    bare: Timing,
    claim: Timing,
    complete: Timing,
    /// `task_complete_and_claim` of one task, in the turns (batch 1 only).
    turn: Option<Timing>,
}

/// Calls made and the time they took.
#[derive(Clone, Copy, Default)]
struct Timing {
    calls: u32,
    total: Duration,
}

impl Timing {
    fn add(&mut self, took: Duration) {
        self.calls += 1;
        self.total += took;
    }

    fn mean_ms(&self) -> f64 {
        self.total.as_secs_f64() * 1e3 / f64::from(self.calls.max(1))
    }
}

/// Every measure on one store kind.
async fn run<B: Bench>(
    bench: &mut B,
    options: &Options,
    rows: &mut Vec<Row>,
    calls: &mut Vec<Calls>,
) -> Result<()> {
    let name = B::NAME;
    let row = |measure: String, herd, bare, goal| Row {
        store: name,
        measure,
        herd,
        bare,
        goal,
    };
    let rate_goal = || format!(">= {}/s", si(B::GOAL_RATE));
    let mut bare_hundred = 0.0;
    let mut bare_single = 0.0;
    for (batch, n) in [(100, options.tasks), (1, options.single_tasks)] {
        progress(
            name,
            &format!("bare drain, {batch} per transaction, {n} rows"),
        );
        let (bare_rate, bare) = bare_drain(bench, n, batch).await?;
        progress(
            name,
            &format!("herd drain, {batch} per transaction, {n} tasks"),
        );
        let drained = store_drain(bench, n, batch).await?;
        let ratio = drained.rate / bare_rate;
        let goal = if batch == 100 {
            bare_hundred = bare_rate;
            (
                format!("{}, >= 0.5x", rate_goal()),
                drained.rate >= B::GOAL_RATE && ratio >= 0.5,
            )
        } else {
            bare_single = bare_rate;
            (">= 0.5x".to_owned(), ratio >= 0.5)
        };
        rows.push(row(
            format!("drain, {batch} per transaction"),
            Figure::Rate(drained.rate),
            Some(Figure::Rate(bare_rate)),
            Some(goal),
        ));
        if batch == 100 {
            let took = Figure::Took {
                seconds: drained.insert.as_secs_f64(),
                count: n,
            };
            rows.push(row(
                format!("insert {} tasks, one batch", count(n)),
                took,
                None,
                None,
            ));
        }
        calls.push(Calls {
            store: name,
            batch,
            bare,
            claim: drained.claim,
            complete: drained.complete,
            turn: None,
        });
    }

    progress(
        name,
        &format!("turns of 100 reports + 100 claims, {} tasks", options.tasks),
    );
    let turns = turn_drain(bench, options.tasks, 100, 100).await?;
    let ratio = turns.rate / bare_hundred;
    rows.push(row(
        "turns, report + claim of 100".to_owned(),
        Figure::Rate(turns.rate),
        Some(Figure::Rate(bare_hundred)),
        Some((
            format!("{}, >= 0.5x", rate_goal()),
            turns.rate >= B::GOAL_RATE && ratio >= 0.5,
        )),
    ));

    progress(
        name,
        &format!(
            "turns of a worker with 2 slots, {} tasks",
            options.single_tasks
        ),
    );
    let turns = turn_drain(bench, options.single_tasks, 2, 1).await?;
    // One transaction per task, as the bare loop's: the like-for-like
    // measure at this size (the drain above spends two).
    let ratio = turns.rate / bare_single;
    rows.push(row(
        "turns, 2 slots, report + claim of 1".to_owned(),
        Figure::Rate(turns.rate),
        Some(Figure::Rate(bare_single)),
        Some((">= 0.5x".to_owned(), ratio >= 0.5)),
    ));
    if let Some(single) = calls.last_mut() {
        single.turn = Some(turns.turn);
    }

    progress(
        name,
        &format!("worker loop, {SLOTS} slots, {} tasks", options.tasks),
    );
    let rate = worker_drain(bench, options.tasks).await?;
    let met = rate >= B::GOAL_RATE && rate >= 0.5 * bare_hundred;
    rows.push(row(
        format!("worker loop, {SLOTS} slots (bare: 100/txn)"),
        Figure::Rate(rate),
        Some(Figure::Rate(bare_hundred)),
        Some((format!("{}, >= 0.5x", rate_goal()), met)),
    ));

    for other in [false, true] {
        let via = if other { "other handle" } else { "same handle" };
        progress(
            name,
            &format!("enqueue-to-start, {via}, {} samples", options.samples),
        );
        let latency = enqueue_to_start(bench, options.samples, other).await?;
        for (q, label) in [(0.50, "p50"), (0.99, "p99")] {
            let after = quantile(&latency.after_insert, q);
            let before = quantile(&latency.before_insert, q);
            let goal = (q == 0.50 && !other && name == "postgres")
                .then(|| ("<= 2 ms".to_owned(), after <= 2.0));
            rows.push(row(
                format!("enqueue-to-start {label}, {via}"),
                Figure::Millis(after),
                None,
                goal,
            ));
            rows.push(row(
                format!("  from before the insert call, {label}"),
                Figure::Millis(before),
                None,
                None,
            ));
        }
    }

    progress(
        name,
        &format!("submit {} tasks in one batch", options.submit),
    );
    let took = submit(bench, options.submit).await?;
    let goal = (name == "sqlite").then(|| ("< 1 s".to_owned(), took.as_secs_f64() < 1.0));
    let figure = Figure::Took {
        seconds: took.as_secs_f64(),
        count: options.submit,
    };
    rows.push(row(
        format!("submit {} tasks, one batch", count(options.submit)),
        figure,
        None,
        goal,
    ));
    Ok(())
}

/// `20k`, `1500`.
fn count(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn progress(store: &str, what: &str) {
    eprintln!("[{store}] {what}");
}

/// The bare loop over `n` rows, `batch` per transaction: rows per second.
async fn bare_drain<B: Bench>(bench: &mut B, n: usize, batch: usize) -> Result<(f64, Timing)> {
    let store = bench.fresh().await?;
    B::bare_fill(&store, n).await?;
    let mut timing = Timing::default();
    let mut done = 0;
    let start = Instant::now();
    loop {
        let step = Instant::now();
        let took = B::bare_step(&store, batch).await?;
        if took == 0 {
            break;
        }
        timing.add(step.elapsed());
        done += took;
    }
    let elapsed = start.elapsed();
    assert_eq!(done, n, "the bare loop drains every row");
    B::close(store).await;
    Ok((n as f64 / elapsed.as_secs_f64(), timing))
}

/// What draining through the store contract measured.
struct Drained {
    rate: f64,
    insert: Duration,
    claim: Timing,
    complete: Timing,
}

/// `n` no-op tasks inserted, then claimed and completed `batch` at a time
/// through the store contract, as a worker would without running anything.
async fn store_drain<B: Bench>(bench: &mut B, n: usize, batch: usize) -> Result<Drained> {
    let store = bench.fresh().await?;
    let clock = SystemClock;
    let worker = store
        .worker_register("bench", std::process::id(), clock.now())
        .await?;
    let spec = noop_batch((0..n).map(|_| String::new()));
    let start = Instant::now();
    let inserted = store.batch_insert(spec, clock.now()).await?;
    let insert = start.elapsed();

    let request = ClaimRequest {
        worker,
        capacity: batch as u32,
        max_tasks: batch,
        lease: Duration::from_secs(30),
        batch: None,
    };
    let (mut claim, mut complete) = (Timing::default(), Timing::default());
    let start = Instant::now();
    loop {
        let step = Instant::now();
        let claimed = store.task_claim(request, clock.now()).await?;
        if claimed.tasks.is_empty() {
            break;
        }
        claim.add(step.elapsed());
        let completions = claimed.tasks.iter().map(succeeded).collect();
        let step = Instant::now();
        store
            .task_complete(worker, completions, clock.now())
            .await?;
        complete.add(step.elapsed());
    }
    let elapsed = start.elapsed();
    let info = store.batch_get(inserted.batch).await?;
    assert_eq!(
        (info.state, info.counts.succeeded),
        (BatchState::Succeeded, n as u64),
        "the drain completes every task"
    );
    B::close(store).await;
    Ok(Drained {
        rate: n as f64 / elapsed.as_secs_f64(),
        insert,
        claim,
        complete,
    })
}

/// What the turns measured.
struct Turns {
    rate: f64,
    turn: Timing,
}

/// `n` no-op tasks through the turns of a worker with two slots, as `herd
/// run -j2` takes them: two claimed, then each turn reports the older one
/// and claims the next in one call.
async fn turn_drain<B: Bench>(bench: &mut B, n: usize, slots: u32, per: usize) -> Result<Turns> {
    let store = bench.fresh().await?;
    let clock = SystemClock;
    let worker = store
        .worker_register("bench", std::process::id(), clock.now())
        .await?;
    let mut spec = noop_batch((0..n).map(|_| String::new()));
    spec.concurrency = slots;
    let inserted = store.batch_insert(spec, clock.now()).await?;
    let request = |slots: u32| ClaimRequest {
        worker,
        capacity: slots,
        max_tasks: slots as usize,
        lease: Duration::from_secs(30),
        batch: Some(inserted.batch),
    };
    let start = Instant::now();
    let mut running: std::collections::VecDeque<ClaimedTask<String, String>> = store
        .task_claim(request(slots), clock.now())
        .await?
        .tasks
        .into();
    let mut turn = Timing::default();
    while !running.is_empty() {
        let done: Vec<_> = running
            .drain(..per.min(running.len()))
            .map(|t| succeeded(&t))
            .collect();
        let step = Instant::now();
        let (_, claim) = store
            .task_complete_and_claim(worker, done, request(per as u32), clock.now())
            .await?;
        turn.add(step.elapsed());
        running.extend(claim?.tasks);
    }
    let elapsed = start.elapsed();
    let info = store.batch_get(inserted.batch).await?;
    assert_eq!(
        (info.state, info.counts.succeeded),
        (BatchState::Succeeded, n as u64),
        "the turns complete every task"
    );
    B::close(store).await;
    Ok(Turns {
        rate: n as f64 / elapsed.as_secs_f64(),
        turn,
    })
}

fn print_turns<B: Bench>(turns: Turns) {
    println!(
        "{}: turns of a worker with 2 slots: {}/s, {:.3} ms per task_complete_and_claim",
        B::NAME,
        si(turns.rate),
        turns.turn.mean_ms()
    );
}

fn succeeded(task: &ClaimedTask<String, String>) -> Completion<String> {
    Completion {
        fence: Fence {
            task: task.id,
            attempt: task.attempt,
        },
        outcome: AttemptOutcome::Succeeded { output: None },
        duration: Duration::from_micros(1),
        log: None,
    }
}

/// A closed batch of no-op tasks of the bench flow, concurrency [`SLOTS`].
fn noop_batch(payloads: impl Iterator<Item = String>) -> BatchSpec<String> {
    let mut spec = BatchSpec::new(FLOW);
    spec.concurrency = SLOTS;
    spec.tasks = payloads.map(TaskSpec::new).collect();
    spec
}

/// A runner whose attempts succeed at once; tells `started` when each starts.
struct Noop {
    started: Option<mpsc::UnboundedSender<Instant>>,
}

impl<S: Store> Runner<S> for Noop {
    fn start(
        &self,
        _task: ClaimedTask<S::Payload, S::Output>,
        _cancel: Cancellation,
    ) -> BoxFuture<'static, AttemptReport<S::Output>> {
        if let Some(started) = &self.started {
            let _ = started.send(Instant::now());
        }
        Box::pin(async { AttemptReport::succeeded() })
    }

    fn deliver(&self, _end: TaskEnd, _delivery: Option<Box<dyn std::any::Any + Send>>) {}
}

/// A worker with [`SLOTS`] slots running the bench flow with `runner`.
async fn start_worker<S: Store<Payload = String, Output = String>>(
    store: Arc<S>,
    runner: Noop,
) -> herd_core::scheduler::WorkerHandle {
    let router = Arc::new(Router::new());
    router.lock().await.add_flow(FLOW.into(), Arc::new(runner));
    let worker = spawn_worker(
        store,
        router,
        Arc::new(SystemClock),
        WorkerConfig {
            slots: SLOTS,
            ..WorkerConfig::default()
        },
    );
    // Registered and waiting for work before the clock starts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    worker
}

/// Waits until `batch` is terminal, by its events (or its row, should the
/// events have been missed).
async fn finished<S: Store>(
    store: &S,
    events: &mut broadcast::Receiver<Events>,
    batch: BatchId,
) -> Result<()> {
    let ends = |events: &Events| {
        events.iter().any(|e| {
            e.batch == batch && matches!(e.kind, EventKind::Batch { to, .. } if to.is_terminal())
        })
    };
    let wait = async {
        loop {
            match tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
                Ok(Ok(events)) if ends(&events) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err("the store's events stopped".into());
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => {
                    if store.batch_get(batch).await?.state.is_terminal() {
                        return Ok(());
                    }
                }
            }
        }
    };
    match tokio::time::timeout(STUCK, wait).await {
        Ok(r) => r,
        Err(_) => {
            let info = store.batch_get(batch).await?;
            Err(format!("batch {batch} did not finish within {STUCK:?}: {info:?}").into())
        }
    }
}

/// `n` no-op tasks through the worker loop: tasks per second from the
/// insert's commit to the batch's end.
async fn worker_drain<B: Bench>(bench: &mut B, n: usize) -> Result<f64> {
    let store = bench.fresh().await?;
    let worker = start_worker(store.clone(), Noop { started: None }).await;
    let mut events = store.events();
    let spec = noop_batch((0..n).map(|_| String::new()));
    let inserted = store.batch_insert(spec, SystemClock.now()).await?;
    let start = Instant::now();
    finished(&*store, &mut events, inserted.batch).await?;
    let elapsed = start.elapsed();
    worker.shutdown().await?;
    let info = store.batch_get(inserted.batch).await?;
    assert_eq!(info.counts.succeeded, n as u64, "every task ran");
    B::close(store).await;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Enqueue-to-start samples, in milliseconds.
struct Latency {
    /// From the instant `batch_insert` returned (negative: started before).
    after_insert: Vec<f64>,
    /// From the instant before `batch_insert` was called.
    before_insert: Vec<f64>,
}

/// One-task batches submitted to an idle worker, one at a time; with
/// `other`, through another handle on the store (its own connections; the
/// worker learns of the batch as it would from another process).
async fn enqueue_to_start<B: Bench>(bench: &mut B, samples: usize, other: bool) -> Result<Latency> {
    let store = bench.fresh().await?;
    let submitter = if other {
        bench.reopen().await?
    } else {
        store.clone()
    };
    let (tx, mut started) = mpsc::unbounded_channel();
    let worker = start_worker(store.clone(), Noop { started: Some(tx) }).await;
    let mut events = store.events();
    let mut latency = Latency {
        after_insert: Vec::with_capacity(samples),
        before_insert: Vec::with_capacity(samples),
    };
    for i in 0..WARMUP + samples {
        let spec = noop_batch(std::iter::once(format!("{i}")));
        let before = Instant::now();
        let inserted = submitter.batch_insert(spec, SystemClock.now()).await?;
        let after = Instant::now();
        let start = tokio::time::timeout(STUCK, started.recv())
            .await
            .map_err(|_| "the idle worker never started the task")?
            .ok_or("the worker stopped")?;
        finished(&*store, &mut events, inserted.batch).await?;
        if i >= WARMUP {
            latency.after_insert.push(signed_ms(start, after));
            latency.before_insert.push(signed_ms(start, before));
        }
        // Let the worker go back to waiting.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.shutdown().await?;
    if other {
        B::close(submitter).await;
    } else {
        drop(submitter);
    }
    B::close(store).await;
    Ok(latency)
}

/// `later - earlier` in milliseconds, negative if `later` came first.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(earlier.duration_since(later).as_secs_f64() * 1e3),
    }
}

/// The `q` quantile (nearest rank) of `samples`.
fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Claims among `batches` live batches of two tasks each, concurrency 1:
/// `claims` claims of one task (each leaves its batch full), then as many
/// turns reporting the oldest task running and claiming one more. Returns
/// the time per `task_claim` and per `task_complete_and_claim`.
async fn many_batches<B: Bench>(
    bench: &mut B,
    batches: usize,
    claims: usize,
) -> Result<(Timing, Timing)> {
    let store = bench.fresh().await?;
    let clock = SystemClock;
    let worker = store
        .worker_register("bench", std::process::id(), clock.now())
        .await?;
    for _ in 0..batches {
        let mut spec = noop_batch((0..2).map(|_| String::new()));
        spec.concurrency = 1;
        store.batch_insert(spec, clock.now()).await?;
    }
    let request = ClaimRequest {
        worker,
        capacity: 1,
        max_tasks: 1,
        lease: Duration::from_secs(30),
        batch: None,
    };
    let mut claim = Timing::default();
    let mut running = std::collections::VecDeque::new();
    for _ in 0..claims {
        let step = Instant::now();
        let tasks = store.task_claim(request, clock.now()).await?.tasks;
        claim.add(step.elapsed());
        assert_eq!(tasks.len(), 1, "a claim takes one task");
        running.extend(tasks);
    }
    let mut turn = Timing::default();
    for _ in 0..claims {
        let done = running.pop_front().ok_or("nothing running")?;
        let step = Instant::now();
        let (_, next) = store
            .task_complete_and_claim(worker, vec![succeeded(&done)], request, clock.now())
            .await?;
        turn.add(step.elapsed());
        let tasks = next?.tasks;
        assert_eq!(tasks.len(), 1, "a turn claims one task");
        running.extend(tasks);
    }
    B::close(store).await;
    Ok((claim, turn))
}

/// The time `batch_insert` takes for one batch of `n` tasks with small payloads.
async fn submit<B: Bench>(bench: &mut B, n: usize) -> Result<Duration> {
    let store = bench.fresh().await?;
    let spec = noop_batch((0..n).map(|i| format!("item-{i}")));
    let start = Instant::now();
    let inserted = store.batch_insert(spec, SystemClock.now()).await?;
    let took = start.elapsed();
    assert_eq!(inserted.tasks.len(), n);
    B::close(store).await;
    Ok(took)
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<9} {:<40} {:>22} {:>12} {:>7}  goal",
        "store", "measure", "herd", "bare", "ratio"
    );
    for row in rows {
        let bare = row.bare.map_or("-".to_owned(), |b| b.to_string());
        let ratio = match (row.herd, row.bare) {
            (Figure::Rate(h), Some(Figure::Rate(b))) => format!("{:.2}x", h / b),
            _ => "-".to_owned(),
        };
        let goal = match &row.goal {
            Some((goal, true)) => format!("{goal}: met"),
            Some((goal, false)) => format!("{goal}: MISSED"),
            None => String::new(),
        };
        println!(
            "{:<9} {:<40} {:>22} {:>12} {:>7}  {goal}",
            row.store,
            row.measure,
            row.herd.to_string(),
            bare,
            ratio
        );
    }
}

fn print_calls(calls: &[Calls]) {
    println!("time per call in the drains (mean):");
    println!(
        "{:<9} {:>6} {:>16} {:>16} {:>18} {:>24}",
        "store",
        "batch",
        "bare txn",
        "herd task_claim",
        "herd task_complete",
        "herd complete_and_claim"
    );
    for c in calls {
        let turn = c
            .turn
            .map_or("-".to_owned(), |t| format!("{:.3} ms", t.mean_ms()));
        println!(
            "{:<9} {:>6} {:>13.3} ms {:>13.3} ms {:>15.3} ms {:>24}",
            c.store,
            c.batch,
            c.bare.mean_ms(),
            c.claim.mean_ms(),
            c.complete.mean_ms(),
            turn
        );
    }
}
