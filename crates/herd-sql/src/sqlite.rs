//! The SQLite dialect: one file, WAL, one writer at a time.
//!
//! Writes in this process queue on an async lock before `BEGIN IMMEDIATE`,
//! so that they wait their turn without SQLite's busy-sleeping; writers in
//! other processes wait on the busy timeout. Set statements bind many rows
//! at once (`VALUES (…), (…)`, ids through `json_each`): a few statements per
//! kind of change, whatever the number of rows.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::query_builder::Separated;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, QueryBuilder, Sqlite as Db, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::task::JoinHandle;

use herd_core::model::{BatchId, TaskId, Timestamp, WorkerId};
use herd_core::store::{AttemptInfo, BatchQuery, Signals, TaskQuery, WorkerInfo};

use crate::OpenError;
use crate::logic::{
    AttemptEnd, BatchRow, ClaimScan, EventWrite, NewBatch, NewDep, NewTask, Result, TaskRow,
    TaskWrite, Tx, UpstreamRow, backend,
};
use crate::rows::{
    BATCH_COLUMNS, ListedTask, SqlRow, TASK_COLUMNS, attempt_row, batch_row, listed_task, task_row,
    upstream_row, worker_row,
};
use crate::statements::{self, bind_batch_row, bind_new_batch};
use crate::store::{Dialect, SqlStore};

/// herd's SQLite migrations, embedded at build time.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a write waits for another process's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A herd store in a SQLite file: the default, nothing to set up.
///
/// Several processes may share the file; each wakes its idle workers when
/// another commits (it watches `PRAGMA data_version`).
pub type SqliteStore<P = String, O = String> = SqlStore<Sqlite, P, O>;

/// The SQLite side of a [`SqliteStore`].
#[derive(Debug)]
pub struct Sqlite {
    pool: SqlitePool,
    path: PathBuf,
    writer: Arc<Mutex<()>>,
    watcher: Option<JoinHandle<()>>,
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}

impl<P, O> SqlStore<Sqlite, P, O> {
    /// Opens the store at `location` (`sqlite:PATH`, `sqlite://PATH`, or a
    /// plain file path; URL options such as `?mode=ro` are honoured),
    /// creating the file and its directory if missing and migrating it to
    /// the current schema.
    pub async fn open(location: &str) -> std::result::Result<Self, OpenError> {
        let (path, options) = parse(location)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| OpenError::Open {
                location: path.display().to_string(),
                source: sqlx::Error::Io(e),
            })?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let watch_options = options.clone();
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| match is_read_only(&source) {
                true => OpenError::ReadOnly {
                    location: path.display().to_string(),
                },
                false => OpenError::Open {
                    location: path.display().to_string(),
                    source,
                },
            })?;
        let mut sqlite = Sqlite {
            pool,
            path,
            writer: Arc::new(Mutex::new(())),
            watcher: None,
        };
        sqlite.check_version().await?;
        sqlite.check_writable().await?;
        let shown = || sqlite.path.display().to_string();
        MIGRATOR
            .run(&sqlite.pool)
            .await
            .map_err(|source| match &source {
                sqlx::migrate::MigrateError::Execute(e) if is_read_only(e) => {
                    OpenError::ReadOnly { location: shown() }
                }
                _ => OpenError::Migrate {
                    location: shown(),
                    source,
                },
            })?;
        let signals = Arc::new(Signals::default());
        sqlite.watcher = watch(watch_options, Arc::downgrade(&signals));
        Ok(SqlStore::with_dialect(sqlite, signals))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.dialect.path
    }

    /// The schema version of the file (0 before the first migration).
    pub async fn schema_version(&self) -> std::result::Result<i64, OpenError> {
        self.dialect.schema_version().await
    }

    /// The connection pool, for reading the store directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.dialect.pool
    }
}

/// Wakes this process's workers when another process commits to the file:
/// `PRAGMA data_version` changes exactly then. Polls on a connection of its
/// own (outside the pool, so that closing the pool does not wait for it),
/// and stops with the store.
fn watch(options: SqliteConnectOptions, signals: Weak<Signals>) -> Option<JoinHandle<()>> {
    const EVERY: Duration = Duration::from_millis(20);
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    Some(runtime.spawn(async move {
        let Ok(mut conn) = options.connect().await else {
            return;
        };
        let mut last: Option<i64> = None;
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(signals) = signals.upgrade() else {
                return;
            };
            let Ok(version) = sqlx::query_scalar::<_, i64>("PRAGMA data_version")
                .fetch_one(&mut conn)
                .await
            else {
                continue;
            };
            if last.is_some_and(|v| v != version) {
                signals.work.notify_waiters();
                signals.control.notify_waiters();
            }
            last = Some(version);
        }
    }))
}

impl Sqlite {
    async fn schema_version(&self) -> std::result::Result<i64, OpenError> {
        let exists: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await?;
        if exists.is_none() {
            return Ok(0);
        }
        let version: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(version.unwrap_or(0))
    }

    async fn check_version(&self) -> std::result::Result<(), OpenError> {
        let found = self.schema_version().await?;
        let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        debug_assert_eq!(known, crate::SCHEMA_VERSION);
        if found > known {
            return Err(OpenError::NewerSchema {
                location: self.path.display().to_string(),
                found,
                known,
            });
        }
        Ok(())
    }

    /// Writes the file's `user_version` back unchanged: a write that
    /// changes nothing, and fails on a read-only file before anything else
    /// is attempted.
    async fn check_writable(&self) -> std::result::Result<(), OpenError> {
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&self.pool)
            .await?;
        match sqlx::query(&format!("PRAGMA user_version = {version}"))
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_read_only(&e) => Err(OpenError::ReadOnly {
                location: self.path.display().to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// The file and connection options named by `location`.
pub(crate) fn parse(
    location: &str,
) -> std::result::Result<(PathBuf, SqliteConnectOptions), OpenError> {
    let not_sqlite = || OpenError::UnknownKind {
        location: location.to_owned(),
    };
    let rest = if let Some(rest) = location.strip_prefix("sqlite:") {
        rest.strip_prefix("//").unwrap_or(rest)
    } else if location.contains("://") || location.is_empty() {
        return Err(not_sqlite());
    } else {
        location
    };
    let file = rest.split('?').next().unwrap_or_default();
    if file.is_empty() || file == ":memory:" {
        return Err(not_sqlite());
    }
    let options =
        SqliteConnectOptions::from_str(&format!("sqlite://{rest}")).map_err(|_| not_sqlite())?;
    Ok((PathBuf::from(file), options))
}

/// Whether SQLite refused a write because the database is read-only.
fn is_read_only(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => {
            // SQLITE_READONLY and its extended codes (8, 264, 520, …).
            e.code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == 8)
        }
        _ => false,
    }
}

// The hot statements that read rows, formatted once.
static BATCHES_LOCK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {BATCH_COLUMNS} FROM batches \
             WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id"
    )
});

static BATCHES_LOCK_FOR_TASKS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE id IN \
             (SELECT batch_id FROM tasks WHERE id IN (SELECT value FROM json_each(?))) \
             ORDER BY id"
    )
});

static TASKS_GET: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE t.id IN (SELECT value FROM json_each(?))")
});

static TASKS_DEPENDENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT d.upstream_id AS upstream, {TASK_COLUMNS} FROM task_deps d \
             JOIN tasks t ON t.id = d.task_id \
             WHERE d.upstream_id IN (SELECT value FROM json_each(?)) AND t.state = 'pending'"
    )
});
static TASKS_READY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {TASK_COLUMNS}, t.payload FROM tasks t \
         WHERE t.batch_id = $1 AND t.state = 'queued' \
         ORDER BY t.priority DESC, t.ready_seq LIMIT $2"
    )
});

/// A JSON array of ids, for `json_each`.
fn id_list<I: IntoIterator<Item = i64>>(ids: I) -> String {
    let mut out = String::from("[");
    for (i, id) in ids.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out.push(']');
    out
}

/// A write transaction on the file, holding this process's write turn.
pub(crate) struct SqliteTx {
    tx: Transaction<'static, Db>,
    _turn: OwnedMutexGuard<()>,
}

impl SqliteTx {
    /// Runs `head VALUES (…), (…) tail` over `rows`, `width` parameters a
    /// row, in as few statements as SQLite's parameter limit allows. (Bound
    /// values, not `json_each`: reading an object's fields from `json_each`
    /// re-serialises the object for every field.)
    async fn values<'r, T>(
        &mut self,
        head: &str,
        tail: &str,
        rows: &'r [T],
        width: usize,
        mut bind: impl FnMut(&mut Separated<'_, 'r, Db, &'static str>, &'r T),
    ) -> Result<()> {
        // SQLite allows 32,766 parameters a statement.
        let per_statement = (32_766 / width).min(1_000);
        for chunk in rows.chunks(per_statement) {
            let mut query = QueryBuilder::<Db>::new(head);
            query.push_values(chunk, |mut b, row| bind(&mut b, row));
            query.push(tail);
            query
                .build()
                .execute(&mut *self.tx)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }
}

impl Dialect for Sqlite {
    type Tx = SqliteTx;

    async fn begin(&self) -> Result<SqliteTx> {
        let turn = self.writer.clone().lock_owned().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        Ok(SqliteTx { tx, _turn: turn })
    }

    async fn commit(tx: SqliteTx) -> Result<()> {
        tx.tx.commit().await.map_err(backend)
    }

    async fn worker_insert(&self, host: &str, pid: u32, now: Timestamp) -> Result<WorkerId> {
        let _turn = self.writer.lock().await;
        let id: i64 = sqlx::query_scalar(statements::WORKER_INSERT)
            .bind(host)
            .bind(i64::from(pid))
            .bind(now.0)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(WorkerId(id))
    }

    async fn batch_read(&self, id: BatchId) -> Result<Option<BatchRow>> {
        let row = sqlx::query(&statements::BATCH_READ)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(batch_row).transpose()
    }

    async fn task_read(&self, id: TaskId) -> Result<Option<TaskRow>> {
        let row = sqlx::query(&statements::TASK_READ)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(task_row).transpose()
    }

    async fn worker_heartbeat(&self, worker: WorkerId, now: Timestamp) -> Result<()> {
        let _turn = self.writer.lock().await;
        sqlx::query(statements::WORKER_HEARTBEAT)
            .bind(now.0)
            .bind(worker.0)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn batch_list(&self, query: &BatchQuery) -> Result<Vec<BatchRow>> {
        let (before, limit) = statements::page(query.before.map(|b| b.0), i64::MAX, query.limit);
        let rows = sqlx::query(&statements::batch_list(query))
            .bind(before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(batch_row).collect()
    }

    async fn task_list(&self, batch: BatchId, query: &TaskQuery) -> Result<Vec<ListedTask>> {
        let after = query.after.map(|i| i64::try_from(i).unwrap_or(i64::MAX));
        let (after, limit) = statements::page(after, -1, query.limit);
        let rows = sqlx::query(&statements::task_list(query))
            .bind(batch.0)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(|r| listed_task(r, query.logs)).collect()
    }

    async fn task_attempts(&self, task: TaskId) -> Result<Vec<AttemptInfo>> {
        let rows = sqlx::query(&statements::TASK_ATTEMPTS)
            .bind(task.0)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .filter_map(|r| attempt_row(r, true).transpose())
            .collect()
    }

    async fn worker_list(&self) -> Result<Vec<WorkerInfo>> {
        let rows = sqlx::query(&statements::WORKER_LIST)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(worker_row).collect()
    }
}

impl Tx for SqliteTx {
    async fn batch_by_key(&mut self, key: &str) -> Result<Option<BatchId>> {
        let id: Option<i64> = sqlx::query_scalar(statements::BATCH_BY_KEY)
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(id.map(BatchId))
    }

    async fn batch_insert(&mut self, b: NewBatch<'_>) -> Result<BatchId> {
        let id: i64 = bind_new_batch!(sqlx::query_scalar(statements::BATCH_INSERT), b)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(BatchId(id))
    }

    async fn batches_lock(&mut self, ids: &[BatchId]) -> Result<Vec<BatchRow>> {
        let rows = sqlx::query(&BATCHES_LOCK)
            .bind(id_list(ids.iter().map(|b| b.0)))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(backend)?;
        rows.iter().map(batch_row).collect()
    }

    async fn batch_write(&mut self, b: &BatchRow) -> Result<()> {
        bind_batch_row!(sqlx::query(statements::BATCH_WRITE), b)
            .execute(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn batches_past_deadline(&mut self, now: Timestamp) -> Result<Vec<BatchId>> {
        let ids: Vec<i64> = sqlx::query_scalar(statements::BATCHES_PAST_DEADLINE)
            .bind(now.0)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(ids.into_iter().map(BatchId).collect())
    }

    async fn batches_lock_for_tasks(&mut self, ids: &[TaskId]) -> Result<Vec<BatchRow>> {
        let rows = sqlx::query(&BATCHES_LOCK_FOR_TASKS)
            .bind(id_list(ids.iter().map(|t| t.0)))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(backend)?;
        rows.iter().map(batch_row).collect()
    }

    async fn served_and_due(&mut self) -> Result<(i64, Option<Timestamp>)> {
        let (served, due): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(last_served), 0) FROM batches), \
             (SELECT MIN(at) FROM ( \
               SELECT MIN(run_at) AS at FROM tasks WHERE state = 'retry_wait' \
               UNION ALL \
               SELECT MIN(deadline) FROM batches \
               WHERE deadline IS NOT NULL AND finished_at IS NULL))",
        )
        .fetch_one(&mut *self.tx)
        .await
        .map_err(backend)?;
        Ok((served, due.map(Timestamp)))
    }

    async fn task_ids(&mut self, n: usize) -> Result<Vec<i64>> {
        let max: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM tasks")
            .fetch_one(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok((max + 1..=max + n as i64).collect())
    }

    async fn tasks_insert(&mut self, batch: BatchId, rows: &[NewTask]) -> Result<()> {
        self.values(
            "INSERT INTO tasks (id, batch_id, idx, key, priority, cost, payload, state, \
             ready_seq, deps_left, rule, n_dependents, n_upstream) ",
            "",
            rows,
            13,
            |b, t| {
                b.push_bind(t.id)
                    .push_bind(batch.0)
                    .push_bind(t.index as i64)
                    .push_bind(t.key.as_deref())
                    .push_bind(t.priority)
                    .push_bind(i64::from(t.cost))
                    .push_bind(t.payload.as_str())
                    .push_bind(t.state)
                    .push_bind(t.ready_seq)
                    .push_bind(i64::from(t.deps_left))
                    .push_bind(t.rule)
                    .push_bind(i64::from(t.dependents))
                    .push_bind(i64::from(t.upstream));
            },
        )
        .await
    }

    async fn deps_insert(&mut self, rows: &[NewDep]) -> Result<()> {
        self.values(
            "INSERT INTO task_deps (task_id, upstream_id, position) ",
            "",
            rows,
            3,
            |b, d| {
                b.push_bind(d.task)
                    .push_bind(d.upstream)
                    .push_bind(i64::from(d.position));
            },
        )
        .await
    }

    async fn tasks_get(&mut self, ids: &[TaskId]) -> Result<Vec<TaskRow>> {
        let rows = sqlx::query(&TASKS_GET)
            .bind(id_list(ids.iter().map(|t| t.0)))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(backend)?;
        rows.iter().map(task_row).collect()
    }

    async fn tasks_live(&mut self, batch: BatchId) -> Result<Vec<TaskRow>> {
        let rows = sqlx::query(&statements::TASKS_LIVE)
            .bind(batch.0)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(backend)?;
        rows.iter().map(task_row).collect()
    }

    async fn tasks_of_batch(&mut self, batch: BatchId) -> Result<Vec<TaskRow>> {
        let rows = sqlx::query(&statements::TASKS_OF_BATCH)
            .bind(batch.0)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(backend)?;
        rows.iter().map(task_row).collect()
    }

    async fn deps_of_batch(&mut self, batch: BatchId) -> Result<Vec<(TaskId, TaskId)>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(statements::DEPS_OF_BATCH)
            .bind(batch.0)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(t, u)| (TaskId(t), TaskId(u)))
            .collect())
    }

    async fn tasks_dependents(&mut self, ids: &[TaskId]) -> Result<Vec<(TaskId, TaskRow)>> {
        let rows = sqlx::query(&TASKS_DEPENDENTS)
            .bind(id_list(ids.iter().map(|t| t.0)))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| Ok((TaskId(r.int("upstream")?), task_row(r)?)))
            .collect()
    }

    async fn tasks_ready(
        &mut self,
        batches: &[BatchId],
        limit: usize,
    ) -> Result<Vec<(TaskRow, String)>> {
        let mut out = Vec::new();
        for batch in batches {
            let rows = sqlx::query(&TASKS_READY)
                .bind(batch.0)
                .bind(limit as i64)
                .fetch_all(&mut *self.tx)
                .await
                .map_err(backend)?;
            for r in &rows {
                out.push((task_row(r)?, r.text("payload")?));
            }
        }
        Ok(out)
    }

    async fn claim_scan(&mut self, now: Timestamp) -> Result<ClaimScan> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(statements::CLAIM_SCAN)
            .bind(now.0)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(ClaimScan::from_rows(rows))
    }

    async fn tasks_lease_expired(&mut self, now: Timestamp) -> Result<Vec<(TaskId, BatchId)>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(statements::TASKS_LEASE_EXPIRED)
            .bind(now.0)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(t, b)| (TaskId(t), BatchId(b)))
            .collect())
    }

    async fn tasks_of_worker(&mut self, worker: WorkerId) -> Result<Vec<(TaskId, BatchId)>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(statements::TASKS_OF_WORKER)
            .bind(worker.0)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(t, b)| (TaskId(t), BatchId(b)))
            .collect())
    }

    async fn worker_heartbeat(&mut self, worker: WorkerId, now: Timestamp) -> Result<()> {
        sqlx::query(statements::WORKER_HEARTBEAT)
            .bind(now.0)
            .bind(worker.0)
            .execute(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn tasks_write(&mut self, rows: &[TaskWrite<'_>]) -> Result<()> {
        self.values(
            "UPDATE tasks SET state = j.column2, reason = j.column3, message = j.column4, \
             attempt = j.column5, first_attempt = j.column6, lost = j.column7, \
             worker_id = j.column8, lease_until = j.column9, cancel_mode = j.column10, \
             cancel_reason = j.column11, run_at = j.column12, ready_seq = j.column13, \
             deps_left = j.column14, started_at = j.column15 FROM (",
            ") AS j WHERE tasks.id = j.column1",
            rows,
            15,
            |b, t| {
                b.push_bind(t.id)
                    .push_bind(t.s)
                    .push_bind(t.r.as_deref())
                    .push_bind(t.m)
                    .push_bind(i64::from(t.a))
                    .push_bind(i64::from(t.fa))
                    .push_bind(i64::from(t.l))
                    .push_bind(t.w)
                    .push_bind(t.lu)
                    .push_bind(t.cm)
                    .push_bind(t.cr.as_deref())
                    .push_bind(t.ra)
                    .push_bind(t.rs)
                    .push_bind(i64::from(t.d))
                    .push_bind(t.st);
            },
        )
        .await
    }

    async fn upstream(&mut self, ids: &[TaskId]) -> Result<Vec<UpstreamRow>> {
        let rows = sqlx::query(
            "SELECT d.task_id AS dependent, u.id, u.key, u.state, u.output FROM task_deps d \
             JOIN tasks u ON u.id = d.upstream_id \
             WHERE d.task_id IN (SELECT value FROM json_each(?)) ORDER BY d.task_id, d.position",
        )
        .bind(id_list(ids.iter().map(|t| t.0)))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(backend)?;
        rows.iter().map(upstream_row).collect()
    }

    async fn outputs_write(&mut self, rows: &[(TaskId, String)]) -> Result<()> {
        self.values(
            "UPDATE tasks SET output = j.column2 FROM (",
            ") AS j WHERE tasks.id = j.column1",
            rows,
            2,
            |b, (task, output)| {
                b.push_bind(task.0).push_bind(output.as_str());
            },
        )
        .await
    }

    async fn attempts_end(&mut self, rows: &[AttemptEnd]) -> Result<()> {
        self.values(
            "INSERT INTO attempts (task_id, attempt, worker_id, started_at, finished_at, \
             outcome, reason, exit_code, error, stdout_tail, stderr_tail, compressed, \
             stdout_total, stderr_total) ",
            "",
            rows,
            14,
            |b, a| {
                b.push_bind(a.t)
                    .push_bind(i64::from(a.a))
                    .push_bind(a.w)
                    .push_bind(a.st)
                    .push_bind(a.at)
                    .push_bind(a.o)
                    .push_bind(a.r.as_deref())
                    .push_bind(a.x)
                    .push_bind(a.e.as_deref())
                    .push_bind(a.so.as_deref())
                    .push_bind(a.se.as_deref())
                    .push_bind(a.z)
                    .push_bind(a.ot)
                    .push_bind(a.et);
            },
        )
        .await
    }

    async fn seq_take(&mut self, n: usize) -> Result<u64> {
        let next: i64 = sqlx::query_scalar(statements::SEQ_TAKE)
            .bind(n as i64)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok((next - n as i64) as u64)
    }

    async fn events_insert(&mut self, rows: &[EventWrite]) -> Result<()> {
        self.values(
            "INSERT INTO events (seq, at, batch_id, kind, task_id, idx, attempt, from_state, \
             to_state, reason) ",
            "",
            rows,
            10,
            |b, e| {
                b.push_bind(e.seq)
                    .push_bind(e.at)
                    .push_bind(e.b)
                    .push_bind(e.k)
                    .push_bind(e.t)
                    .push_bind(e.i.map(|i| i as i64))
                    .push_bind(e.a.map(i64::from))
                    .push_bind(e.f)
                    .push_bind(e.to)
                    .push_bind(e.r.as_deref());
            },
        )
        .await
    }

    async fn notify(&mut self, _work: bool, _control: bool) -> Result<()> {
        // Other processes notice the commit through `PRAGMA data_version`.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert!(parse("sqlite:/tmp/a.db").is_ok());
        assert!(parse("sqlite:///tmp/a.db").is_ok());
        assert!(parse("relative/a.db").is_ok());
        assert_eq!(
            parse("sqlite:/tmp/a.db?mode=ro").unwrap().0,
            PathBuf::from("/tmp/a.db")
        );
        for bad in [
            "postgres://postgres@127.0.0.1/test",
            "http://x/y",
            "",
            "sqlite::memory:",
        ] {
            assert!(
                matches!(parse(bad), Err(OpenError::UnknownKind { .. })),
                "{bad}"
            );
        }
    }
}
