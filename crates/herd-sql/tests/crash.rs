//! The durable stores under real crashes: worker processes killed with
//! SIGKILL at random moments, and several worker processes sharing one store.
//!
//! The test binary is its own worker. A parent test re-runs it as
//! `crash-… --exact worker_process` with the store's location in
//! `HERD_CRASH_STORE`; [`worker_process`] then serves that store until it is
//! killed. Every attempt appends `"{task} {attempt}"` to a log of its process
//! when it starts and to another when it finishes, so that the parent can
//! tell what really ran, whatever the store says.
//!
//! Both tests run on SQLite and, given `HERD_TEST_DATABASE_URL`, on
//! PostgreSQL, each there in a schema of its own. They take real time (the
//! workers are processes, their kills are signals), but nothing waits on a
//! sleep to see a result: the parent polls the store and fails past a
//! deadline.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_core::scheduler::{
    AttemptReport, Cancellation, Router, Runner, TaskEnd, WorkerConfig, spawn_worker,
};
use herd_core::store::{ClaimedTask, EventQuery, Store};
use herd_core::{
    BatchId, BatchInfo, BatchSpec, BatchState, Clock, EventKind, Reason, RetryPolicy, SystemClock,
    TaskId, TaskSpec,
};
use herd_sql::{PgStore, SqliteStore};

mod common;

/// The flow every task of these tests runs.
const FLOW: &str = "crash";
/// The store a child process serves; unset in a normal test run.
const ENV_STORE: &str = "HERD_CRASH_STORE";
/// The directory where a child process writes its execution logs.
const ENV_LOGS: &str = "HERD_CRASH_LOGS";
/// The child's lease, in milliseconds; its heartbeat is a third of it.
const ENV_LEASE_MS: &str = "HERD_CRASH_LEASE_MS";
/// The PostgreSQL schema of the child's store, if not the default.
const ENV_SCHEMA: &str = "HERD_CRASH_SCHEMA";
/// Slots of each worker process.
const SLOTS: u32 = 16;
/// How long the last worker has to finish a batch.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// The child: a worker process.
// ---------------------------------------------------------------------------

/// The worker half of the tests below. In a normal test run (no
/// `HERD_CRASH_STORE`) it does nothing and passes; in a child process started
/// by them, it serves the store until it is killed.
#[test]
fn worker_process() {
    let Ok(location) = std::env::var(ENV_STORE) else {
        return;
    };
    let logs = PathBuf::from(std::env::var_os(ENV_LOGS).expect("HERD_CRASH_LOGS is set"));
    let lease = std::env::var(ENV_LEASE_MS)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .expect("HERD_CRASH_LEASE_MS is a number of milliseconds");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        match location.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => {
                let store = SqliteStore::<String, String>::open(&location)
                    .await
                    .expect("the worker opens the store");
                serve(Arc::new(store), &logs, lease).await;
            }
            Some("postgres" | "postgresql") => {
                // Named after the process, so that the test can tell when the
                // server has let go of a killed worker's connections.
                let separator = if location.contains('?') { '&' } else { '?' };
                let location = format!(
                    "{location}{separator}application_name={}",
                    backend_name(std::process::id())
                );
                let store = match std::env::var(ENV_SCHEMA) {
                    Ok(schema) => PgStore::<String, String>::connect_in_schema(&location, &schema)
                        .await
                        .expect("the worker connects to the store"),
                    Err(_) => PgStore::<String, String>::connect(&location)
                        .await
                        .expect("the worker connects to the store"),
                };
                serve(Arc::new(store), &logs, lease).await;
            }
            _ => panic!("{ENV_STORE}={location:?} names no store this test knows"),
        }
    });
}

/// The PostgreSQL `application_name` of worker process `pid`'s connections.
fn backend_name(pid: u32) -> String {
    format!("herd-crash-{pid}")
}

/// Runs a worker over `store` until it is killed; returns only by panicking,
/// when the worker loop ends on a store error.
async fn serve<S: Store<Payload = String, Output = String>>(
    store: Arc<S>,
    logs: &Path,
    lease: Duration,
) {
    let pid = std::process::id();
    let runner = Logger {
        started: log_file(&logs.join(format!("started-{pid}.log"))),
        finished: log_file(&logs.join(format!("finished-{pid}.log"))),
    };
    let router = Arc::new(Router::new());
    router
        .lock()
        .await
        .add_flow(Arc::from(FLOW), Arc::new(runner));
    let worker = spawn_worker(
        store,
        router,
        Arc::new(SystemClock),
        WorkerConfig {
            slots: SLOTS,
            lease,
            heartbeat: lease / 3,
            ..WorkerConfig::default()
        },
    );
    while !worker.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = worker.shutdown().await;
    panic!("the worker loop ended on its own: {ended:?}");
}

fn log_file(path: &Path) -> Arc<File> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    Arc::new(file)
}

/// Logs each attempt's start and finish, one whole line per `write`, and
/// sleeps 0–5 ms in between.
struct Logger {
    started: Arc<File>,
    finished: Arc<File>,
}

impl<S: Store<Payload = String, Output = String>> Runner<S> for Logger {
    fn start(
        &self,
        task: ClaimedTask<String, String>,
        _cancel: Cancellation,
    ) -> Pin<Box<dyn Future<Output = AttemptReport<String>> + Send + 'static>> {
        let line = format!("{} {}\n", task.id.0, task.attempt.0);
        let (started, finished) = (self.started.clone(), self.finished.clone());
        Box::pin(async move {
            (&*started)
                .write_all(line.as_bytes())
                .expect("the start is logged");
            tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=5_000))).await;
            (&*finished)
                .write_all(line.as_bytes())
                .expect("the finish is logged");
            AttemptReport::succeeded()
        })
    }

    fn deliver(&self, _end: TaskEnd, _delivery: Option<Box<dyn Any + Send>>) {}
}

// ---------------------------------------------------------------------------
// The parent: starting, killing and reading worker processes.
// ---------------------------------------------------------------------------

/// What a worker process is told.
struct Serve<'a> {
    /// Its store: `sqlite:PATH` or `postgres://…`.
    location: &'a str,
    /// The PostgreSQL schema of the store, if not the default.
    schema: Option<&'a str>,
    /// Where it writes its execution logs.
    logs: &'a Path,
    lease: Duration,
}

impl Serve<'_> {
    /// The store's kind, for messages: `sqlite` or `postgres`.
    fn store_name(&self) -> &str {
        self.location
            .split_once(':')
            .map_or("?", |(scheme, _)| scheme)
    }
}

/// A worker process; killed when dropped, so that a failing test leaves none
/// behind.
struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    fn spawn(serve: &Serve<'_>) -> Self {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut command = Command::new(exe);
        command
            .args([
                "--exact",
                "worker_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV_STORE, serve.location)
            .env(ENV_LOGS, serve.logs)
            .env(ENV_LEASE_MS, serve.lease.as_millis().to_string());
        if let Some(schema) = serve.schema {
            command.env(ENV_SCHEMA, schema);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("the worker process starts");
        WorkerProcess { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails the test if the worker exited by itself: it only does on an error.
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("the worker's status") {
            panic!(
                "worker process {} exited by itself ({status}); its stderr is above",
                self.pid()
            );
        }
    }

    /// SIGKILLs the worker and reaps it.
    fn kill(mut self) {
        self.assert_alive();
        self.child.kill().expect("the worker is killed");
        self.child.wait().expect("the worker is reaped");
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One batch of `tasks` tasks of [`FLOW`], `concurrency` of them at once,
/// whose attempts lost to dead workers are always retried.
async fn insert_batch<S: Store<Payload = String>>(
    store: &S,
    tasks: usize,
    concurrency: u32,
) -> BatchId {
    let mut spec = BatchSpec::new(FLOW);
    spec.concurrency = concurrency;
    spec.policy.retry = RetryPolicy {
        max_lost: 100,
        ..RetryPolicy::none()
    };
    spec.tasks = (0..tasks).map(|i| TaskSpec::new(i.to_string())).collect();
    store
        .batch_insert(spec, SystemClock.now())
        .await
        .expect("the batch is inserted")
        .batch
}

/// Polls the batch until it is terminal; fails past [`DRAIN_TIMEOUT`] or if a
/// worker dies.
async fn wait_terminal<S: Store>(
    store: &S,
    batch: BatchId,
    workers: &mut [WorkerProcess],
) -> BatchInfo {
    let started = Instant::now();
    loop {
        let info = store.batch_get(batch).await.expect("the batch is read");
        if info.state.is_terminal() {
            return info;
        }
        for worker in workers.iter_mut() {
            worker.assert_alive();
        }
        assert!(
            started.elapsed() < DRAIN_TIMEOUT,
            "the batch is not done after {DRAIN_TIMEOUT:?}: {:?}",
            info.counts
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every `(task, attempt)` line of the logs named `{kind}-*.log` in `dir`.
fn read_logs(dir: &Path, kind: &str) -> Vec<(i64, u32)> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the log directory") {
        let path = entry.expect("a log").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !name.starts_with(&format!("{kind}-")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("the log is read");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends in a torn line",
            path.display()
        );
        for line in text.lines() {
            let parsed = line
                .split_once(' ')
                .and_then(|(t, a)| Some((t.parse().ok()?, a.parse().ok()?)));
            lines.push(
                parsed
                    .unwrap_or_else(|| panic!("{} has a malformed line {line:?}", path.display())),
            );
        }
    }
    lines
}

fn sqlite_location(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("herd.db").display())
}

// ---------------------------------------------------------------------------
// Crashes.
// ---------------------------------------------------------------------------

/// Tasks in the crash test's batch.
const CRASH_TASKS: usize = 2_000;
/// Worker processes killed before the last one drains the batch.
const KILLS: usize = 20;
/// Short, so that the attempts of a killed worker come back soon; long enough
/// that a live worker renews its leases in time on a loaded machine (the
/// test's other cases run beside it), so that every attempt lost is one a
/// kill took. (At 1 s, one run in a few lost a live worker's lease.)
const CRASH_LEASE: Duration = Duration::from_secs(3);

/// The crash test's direct reads of a store's tables, past its API: what
/// the store says happened, to hold against the workers' logs.
trait Probe: Store<Payload = String, Output = String> {
    /// The highest id of a worker registered so far; 0 before the first.
    async fn worker_id_max(&self) -> i64;
    /// How many tasks are running under workers with ids above `worker`.
    async fn tasks_running_after(&self, worker: i64) -> usize;
    /// The tasks of `batch` with other than one end event.
    async fn tasks_ended_not_once(&self, batch: BatchId) -> Vec<i64>;
    /// The `(task, attempt)` of every end event of `batch`.
    async fn task_ends(&self, batch: BatchId) -> Vec<(i64, u32)>;
    /// The last attempt of each task of `batch`.
    async fn last_attempts(&self, batch: BatchId) -> HashMap<i64, u32>;
    /// The attempts of `batch` that the store counted as lost.
    async fn batch_lost(&self, batch: BatchId) -> usize;
    /// Returns once nothing the killed worker process `pid` sent can still
    /// commit. SQLite: at once (a write is the process's own). PostgreSQL:
    /// once the server has closed its connections, since a backend may
    /// finish a COMMIT its client sent just before it died.
    async fn settle_after_kill(&self, pid: u32);
}

/// Implements [`Probe`] for stores with a `pool()`, in SQL that both
/// SQLite and PostgreSQL read alike: `$N` placeholders (SQLite takes them
/// too), and every number read as a BIGINT (PostgreSQL's columns; its
/// `SUM` of them is a NUMERIC, hence the cast).
macro_rules! impl_probe {
    ($($store:ty => $settle:ident),+ $(,)?) => {$(
        impl Probe for $store {
            async fn worker_id_max(&self) -> i64 {
                sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM workers")
                    .fetch_one(self.pool())
                    .await
                    .expect("the workers are read")
            }

            async fn tasks_running_after(&self, worker: i64) -> usize {
                let running: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM tasks WHERE state = 'running' AND worker_id > $1",
                )
                .bind(worker)
                .fetch_one(self.pool())
                .await
                .expect("the running tasks are counted");
                to_usize(running)
            }

            async fn tasks_ended_not_once(&self, batch: BatchId) -> Vec<i64> {
                let mut ends: HashMap<i64, usize> = HashMap::new();
                for (task, _) in self.task_ends(batch).await {
                    *ends.entry(task).or_default() += 1;
                }
                ends.into_iter().filter(|(_, n)| *n != 1).map(|(task, _)| task).collect()
            }

            async fn task_ends(&self, batch: BatchId) -> Vec<(i64, u32)> {
                let mut ends = Vec::new();
                let mut after = 0;
                loop {
                    let query = EventQuery { batch: Some(batch), after, limit: 10_000 };
                    let page = self.event_list(query).await.expect("the events are read");
                    let Some(last) = page.last() else { return ends };
                    after = last.seq;
                    for e in &page {
                        if let EventKind::Task { task, attempt, to, .. } = e.kind
                            && to.is_terminal()
                        {
                            ends.push((task.0, attempt.0));
                        }
                    }
                }
            }

            async fn last_attempts(&self, batch: BatchId) -> HashMap<i64, u32> {
                let tasks: Vec<(i64, i64)> =
                    sqlx::query_as("SELECT id, attempt FROM tasks WHERE batch_id = $1")
                        .bind(batch.0)
                        .fetch_all(self.pool())
                        .await
                        .expect("the tasks are read");
                tasks.into_iter().map(|(task, attempt)| (task, to_attempt(attempt))).collect()
            }

            async fn batch_lost(&self, batch: BatchId) -> usize {
                let lost: i64 = sqlx::query_scalar(
                    "SELECT CAST(COALESCE(SUM(lost), 0) AS BIGINT) FROM tasks WHERE batch_id = $1",
                )
                .bind(batch.0)
                .fetch_one(self.pool())
                .await
                .expect("the losses are counted");
                to_usize(lost)
            }

            async fn settle_after_kill(&self, pid: u32) {
                $settle(self, pid).await
            }
        }
    )+};
}

impl_probe!(
    SqliteStore<String, String> => settled_at_once,
    PgStore<String, String> => backends_closed,
);

async fn settled_at_once(_: &SqliteStore<String, String>, _pid: u32) {}

/// Waits (polling the server's view, for at most a minute) until no
/// connection of worker process `pid` is left.
async fn backends_closed(store: &PgStore<String, String>, pid: u32) {
    let name = backend_name(pid);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(&name)
                .fetch_one(store.pool())
                .await
                .expect("the server's connections are read");
        if open == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server kept {open} connections of killed worker {pid} for a minute"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn to_usize(count: i64) -> usize {
    usize::try_from(count).unwrap_or_else(|_| panic!("a negative count: {count}"))
}

fn to_attempt(attempt: i64) -> u32 {
    u32::try_from(attempt).unwrap_or_else(|_| panic!("an attempt out of range: {attempt}"))
}

/// Workers on SQLite killed at random lose no task (see
/// [`workers_killed_at_random_lose_no_task`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_workers_killed_at_random_lose_no_task() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let location = sqlite_location(dir.path());
    let store = SqliteStore::<String, String>::open(&location)
        .await
        .expect("the store opens");
    let serve = Serve {
        location: &location,
        schema: None,
        logs: dir.path(),
        lease: CRASH_LEASE,
    };
    workers_killed_at_random_lose_no_task(&store, &serve).await;
}

/// Workers on PostgreSQL killed at random lose no task (see
/// [`workers_killed_at_random_lose_no_task`]; skipped without
/// `HERD_TEST_DATABASE_URL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_workers_killed_at_random_lose_no_task() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    const SCHEMA: &str = "crash_kills";
    let store = common::fresh_postgres(&url, SCHEMA).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let serve = Serve {
        location: &url,
        schema: Some(SCHEMA),
        logs: dir.path(),
        lease: CRASH_LEASE,
    };
    workers_killed_at_random_lose_no_task(&store, &serve).await;
}

/// Workers killed with SIGKILL at random moments lose their attempts, never a
/// task: each task succeeds exactly once, what ran before a kill is run again
/// under a new attempt number, and nothing runs again after its success.
///
/// Worker processes told `serve` are started one at a time and killed
/// [`KILLS`] times during a batch of [`CRASH_TASKS`] tasks, then one drains
/// it; `store` is the parent's handle on their store, and `serve.logs` must
/// be a directory of this test's own.
async fn workers_killed_at_random_lose_no_task<S: Probe>(store: &S, serve: &Serve<'_>) {
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    // Room for several workers' worth of attempts: a killed worker's tasks
    // hold their batch slots until their leases expire, and the next worker
    // must find free ones meanwhile, or it would idle until the rescue.
    let batch = insert_batch(store, CRASH_TASKS, SLOTS * 8).await;
    let began = Instant::now();

    // Tasks left running by each killed worker: its attempts in flight.
    // One worker process lives at a time, so the workers registered since
    // the last kill are the killed process's.
    let mut in_flight = Vec::with_capacity(KILLS);
    for _ in 0..KILLS {
        let before = store.worker_id_max().await;
        let mut worker = WorkerProcess::spawn(serve);
        // The window starts once the worker has registered, so that kills
        // land while it works rather than while it starts.
        let registered = Instant::now() + Duration::from_secs(60);
        while store.worker_id_max().await == before {
            worker.assert_alive();
            assert!(Instant::now() < registered, "the worker never registered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(20..=250))).await;
        let pid = worker.pid();
        worker.kill();
        store.settle_after_kill(pid).await;
        in_flight.push(store.tasks_running_after(before).await);
    }
    let done_by_kills = store
        .batch_get(batch)
        .await
        .expect("the batch is read")
        .counts
        .succeeded;
    let mut last = [WorkerProcess::spawn(serve)];
    let info = wait_terminal(store, batch, &mut last).await;
    let [last] = last;
    last.kill();
    let wall = began.elapsed();

    // 1. The batch succeeded, every task in it.
    assert_eq!(info.state, BatchState::Succeeded, "{:?}", info.counts);
    assert_eq!(info.counts.succeeded, CRASH_TASKS as u64);

    // 2. Every task ended exactly once, as its last attempt.
    let twice = store.tasks_ended_not_once(batch).await;
    assert!(
        twice.is_empty(),
        "tasks that ended more than once: {twice:?}"
    );
    let ends = store.task_ends(batch).await;
    assert_eq!(ends.len(), CRASH_TASKS);
    let last_attempt = store.last_attempts(batch).await;
    assert_eq!(last_attempt.len(), CRASH_TASKS);
    for (task, attempt) in &ends {
        assert_eq!(
            last_attempt.get(task),
            Some(attempt),
            "task {task} ended with an attempt that is not its last"
        );
    }

    // 3. What ran: one start per attempt at most, none after the last, and
    // the last both started and finished. (An attempt claimed just before a
    // kill may never have started: the claim committed, the runner never ran.)
    let started = read_logs(serve.logs, "started");
    let finished: HashSet<(i64, u32)> = read_logs(serve.logs, "finished").into_iter().collect();
    let mut runs: HashMap<i64, Vec<u32>> = HashMap::new();
    for &(task, attempt) in &started {
        runs.entry(task).or_default().push(attempt);
    }
    for (task, &last) in &last_attempt {
        let mut attempts = runs.remove(task).unwrap_or_default();
        attempts.sort_unstable();
        let distinct = attempts.len();
        attempts.dedup();
        assert_eq!(
            attempts.len(),
            distinct,
            "task {task} ran an attempt twice: {attempts:?}"
        );
        assert_eq!(
            attempts.last(),
            Some(&last),
            "task {task}: the attempts that ran ({attempts:?}) do not end with its last ({last})"
        );
        assert!(
            finished.contains(&(*task, last)),
            "task {task} succeeded with attempt {last}, which never finished"
        );
    }
    assert!(
        runs.is_empty(),
        "attempts of tasks not in the batch ran: {runs:?}"
    );

    // 4. The attempts in flight at the kills, and only they, were lost and
    // tried again: they are every attempt but the tasks' first, and the
    // store counted each as lost. Those that had started are the
    // re-executions; the rest were claimed but not started when the kill came.
    let in_flight_at_kills: usize = in_flight.iter().sum();
    let retried: usize = last_attempt.values().map(|&a| a as usize - 1).sum();
    let counted_lost = store.batch_lost(batch).await;
    let reruns = started.len() - CRASH_TASKS;
    let never_started = retried - reruns;
    eprintln!(
        "crash: {}, seed {seed}, {} kills ({} caught attempts in flight, {in_flight_at_kills} in all), \
         {reruns} re-executions, {never_started} claims never started, \
         {done_by_kills}/{CRASH_TASKS} tasks done by the last kill, {wall:.1?}",
        serve.store_name(),
        in_flight.len(),
        in_flight.iter().filter(|&&n| n > 0).count(),
    );
    assert!(
        reruns <= in_flight_at_kills,
        "{reruns} re-executions, but only {in_flight_at_kills} attempts were in flight at the kills"
    );
    assert_eq!(
        retried, in_flight_at_kills,
        "attempts beyond the first, against attempts in flight at the kills"
    );
    assert_eq!(
        counted_lost, in_flight_at_kills,
        "attempts the store counted as lost, against attempts in flight at the kills"
    );

    // 5. The test tested something.
    assert!(in_flight.len() >= KILLS, "only {} kills", in_flight.len());
    assert!(
        in_flight_at_kills > 0,
        "no kill caught an attempt in flight: lengthen the windows between kills"
    );
}

// ---------------------------------------------------------------------------
// Several workers on one store.
// ---------------------------------------------------------------------------

/// The lease of workers sharing a store: long enough that none expires while
/// processes queue for SQLite's write lock (a worker may wait over a second
/// for it), so that a task run twice is a double claim, not a lost lease.
const SHARED_LEASE: Duration = Duration::from_secs(10);

/// Four worker processes sharing a SQLite file run each of its tasks once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_four_workers_run_each_task_once() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let location = sqlite_location(dir.path());
    let store = SqliteStore::<String, String>::open(&location)
        .await
        .expect("the store opens");
    let serve = Serve {
        location: &location,
        schema: None,
        logs: dir.path(),
        lease: SHARED_LEASE,
    };
    drain_with_workers(&store, &serve, 2_000, 4).await;
}

/// Four worker processes sharing a PostgreSQL store run each of its tasks
/// once (skipped without `HERD_TEST_DATABASE_URL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_four_workers_run_each_task_once() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    const SCHEMA: &str = "crash_four_workers";
    let store = common::fresh_postgres(&url, SCHEMA).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let serve = Serve {
        location: &url,
        schema: Some(SCHEMA),
        logs: dir.path(),
        lease: SHARED_LEASE,
    };
    drain_with_workers(&store, &serve, 10_000, 4).await;
}

/// `workers` worker processes told `serve` drain a batch of `tasks` tasks
/// (`store` is the parent's handle on their store), each task started and
/// finished exactly once; `serve.logs` must be a directory of this test's own.
async fn drain_with_workers<S: Store<Payload = String, Output = String>>(
    store: &S,
    serve: &Serve<'_>,
    tasks: usize,
    workers: usize,
) {
    let logs = serve.logs;
    // Room for every worker's slots, so that they all claim at once.
    let batch = insert_batch(store, tasks, SLOTS * workers as u32).await;
    let began = Instant::now();
    let mut running: Vec<_> = (0..workers).map(|_| WorkerProcess::spawn(serve)).collect();
    let info = wait_terminal(store, batch, &mut running).await;
    let wall = began.elapsed();
    running.into_iter().for_each(WorkerProcess::kill);

    assert_eq!(info.state, BatchState::Succeeded, "{:?}", info.counts);
    assert_eq!(info.counts.succeeded, tasks as u64);
    // Every task started, and no attempt twice (fencing). A task runs again
    // only if its lease expired: a worker starved past its lease (the test
    // suite loads the two cores) loses its tasks to the rescuer, and every
    // attempt before a task's last must then be recorded as lost.
    let mut starts: HashMap<i64, Vec<u32>> = HashMap::new();
    for (task, attempt) in read_logs(logs, "started") {
        starts.entry(task).or_default().push(attempt);
    }
    assert_eq!(starts.len(), tasks, "distinct tasks started");
    let mut again = 0;
    for (&task, attempts) in &starts {
        let distinct: HashSet<u32> = attempts.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            attempts.len(),
            "task {task} started an attempt twice: {attempts:?}"
        );
        if attempts.len() == 1 {
            assert_eq!(attempts, &[1], "task {task} started a later attempt only");
            continue;
        }
        again += attempts.len() - 1;
        let last = attempts.iter().copied().max().unwrap_or(1);
        let recorded = store
            .task_attempts(TaskId(task))
            .await
            .expect("the task's attempts");
        for &earlier in attempts.iter().filter(|&&a| a < last) {
            let reason = recorded
                .iter()
                .find(|r| r.attempt.0 == earlier)
                .and_then(|r| r.reason);
            assert_eq!(
                reason,
                Some(Reason::Lost),
                "task {task} ran again, but its attempt {earlier} did not lose its lease: \
                 {recorded:?}"
            );
        }
    }
    let finished: HashSet<i64> = read_logs(logs, "finished")
        .iter()
        .map(|&(task, _)| task)
        .collect();
    assert_eq!(finished.len(), tasks, "distinct tasks finished");
    let per_worker: Vec<usize> = std::fs::read_dir(logs)
        .expect("the log directory")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?.to_owned();
            name.starts_with("started-")
                .then(|| std::fs::read_to_string(&path).map_or(0, |t| t.lines().count()))
        })
        .collect();
    eprintln!(
        "drain: {}, {tasks} tasks, {workers} workers (ran {per_worker:?}), {wall:.1?}, \
         {again} run again after a lost lease",
        serve.store_name()
    );
}
