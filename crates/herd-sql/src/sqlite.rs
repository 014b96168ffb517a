//! The SQLite dialect: one file, WAL, one writer at a time.
//!
//! Writes in this process go through one connection of their own, queued
//! on an async lock before `BEGIN IMMEDIATE`, so that they wait their turn
//! without SQLite's busy-sleeping; writers in other processes wait on the
//! busy timeout. A transaction's statements travel to sqlx's connection
//! thread a few at a time ([`Script`]): its first reads with the `BEGIN`,
//! its writes with the `COMMIT`, so that a claim, a completion, or both
//! together are two round trips. Set statements bind many rows at once
//! (`VALUES (…), (…)`, ids through joins with `json_each`): a few
//! statements per kind of change, whatever the number of rows.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::TryStreamExt;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Arguments as _, ConnectOptions, Either, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::task::JoinHandle;

use herd_core::model::{BatchId, TaskId, Timestamp, WorkerId};
use herd_core::store::{AttemptInfo, BatchQuery, Signals, StoreError, TaskQuery, WorkerInfo};

use crate::OpenError;
use crate::logic::{
    AttemptEnd, BatchRow, ClaimOpen, ClaimScan, Heads, NewBatch, NewDep, NewTask, Opened, Result,
    TaskRow, TaskWrite, Tx, UpstreamRow, WriteSet, backend,
};
use crate::rows::{
    BATCH_COLUMNS, ListedTask, SqlRow, TASK_PACKED, attempt_row, batch_row, listed_task,
    packed_task_row, task_row, upstream_row, worker_row,
};
use crate::statements::{self, bind_batch_row};
use crate::store::{Dialect, SqlStore};

/// herd's SQLite migrations, embedded at build time.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Scripts the writer connection keeps prepared (least recently used go).
/// A script of [`CACHED_SCRIPT`] bytes takes about a megabyte prepared
/// (some 15 times its text), so this bounds the cache near 16 MB at worst;
/// the turns of a steady drain repeat a handful of shapes. The turns of
/// `herd run` over short commands vary more (each count of reports and
/// claims is a shape of its own), and its peak RSS is within a few
/// hundred KB of its 15 MB goal: 16 bounds what they can take. Measured
/// (10,000 `/bin/true`, three runs each, 16 tasks per job held): 14.4-15.7
/// MB keeping 64, 14.4-14.7 MB keeping 16, no clear difference keeping 4;
/// with 32 per job held and 64 kept, 18-20 MB. The drains do not notice
/// (callgrind, `store_drain sqlite`, 5,000 tasks: the drain 661 M
/// instructions with 16 or 64, the 100-slot worker loop 894 M and 900 M).
const WRITER_STATEMENTS: usize = 16;

/// The writer connection's page cache (`PRAGMA cache_size`; negative:
/// KiB). SQLite's default is 2 MiB, which a large submit fills with pages
/// it never reads again, and which stays allocated for the process's life
/// (`herd run`'s peak RSS). A worker's turn touches a few dozen pages; the
/// rest is read from the operating system's cache. A transaction larger
/// than the cache spills its pages to the log before the commit.
const WRITER_CACHE: &str = "-512";

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
    /// For reads outside write transactions.
    pool: SqlitePool,
    path: PathBuf,
    writer: Arc<Mutex<Writer>>,
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
        let writer_options = options
            .clone()
            .statement_cache_capacity(WRITER_STATEMENTS)
            .pragma("cache_size", WRITER_CACHE);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A file does not hang up: no round trip to test a connection
            // before each use.
            .test_before_acquire(false)
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
        check_version(&pool, &path).await?;
        check_writable(&pool, &path).await?;
        let shown = || path.display().to_string();
        MIGRATOR.run(&pool).await.map_err(|source| match &source {
            sqlx::migrate::MigrateError::Execute(e) if is_read_only(e) => {
                OpenError::ReadOnly { location: shown() }
            }
            _ => OpenError::Migrate {
                location: shown(),
                source,
            },
        })?;
        let conn = writer_options
            .connect()
            .await
            .map_err(|source| OpenError::Open {
                location: shown(),
                source,
            })?;
        let signals = Arc::new(Signals::default());
        let writer = Arc::new(Mutex::new(Writer {
            conn,
            unclean: false,
        }));
        let sqlite = Sqlite {
            pool,
            path,
            watcher: watch(Arc::downgrade(&writer), Arc::downgrade(&signals)),
            writer,
        };
        Ok(SqlStore::with_dialect(sqlite, signals))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.dialect.path
    }

    /// The schema version of the file (0 before the first migration).
    pub async fn schema_version(&self) -> std::result::Result<i64, OpenError> {
        schema_version(&self.dialect.pool).await
    }

    /// The connection pool, for reading the store directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.dialect.pool
    }
}

/// Wakes this process's workers when another process commits to the file.
/// Polls `PRAGMA data_version` on the writer connection, between its
/// transactions: there it changes exactly when another connection commits,
/// never for this process's own writes. (On a connection of its own it
/// changed at every commit of this process too, and each change woke the
/// workers for a lease renewal and a rescue: two more transactions every
/// 20 ms for a busy worker.) Stops with the store.
fn watch(writer: Weak<Mutex<Writer>>, signals: Weak<Signals>) -> Option<JoinHandle<()>> {
    const EVERY: Duration = Duration::from_millis(20);
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    Some(runtime.spawn(async move {
        let mut last: Option<i64> = None;
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (Some(signals), Some(writer)) = (signals.upgrade(), writer.upgrade()) else {
                return;
            };
            let version = {
                let mut writer = writer.lock().await;
                writer.clean().await;
                sqlx::query_scalar::<_, i64>("PRAGMA data_version")
                    .fetch_one(&mut writer.conn)
                    .await
            };
            drop(writer);
            let Ok(version) = version else {
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

/// The schema version of the file (0 before the first migration).
async fn schema_version(pool: &SqlitePool) -> std::result::Result<i64, OpenError> {
    let exists: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(pool)
    .await?;
    if exists.is_none() {
        return Ok(0);
    }
    let version: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    Ok(version.unwrap_or(0))
}

async fn check_version(pool: &SqlitePool, path: &Path) -> std::result::Result<(), OpenError> {
    let found = schema_version(pool).await?;
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    debug_assert_eq!(known, crate::SCHEMA_VERSION);
    if found > known {
        return Err(OpenError::NewerSchema {
            location: path.display().to_string(),
            found,
            known,
        });
    }
    Ok(())
}

/// Writes the file's `user_version` back unchanged: a write that changes
/// nothing, and fails on a read-only file before anything else is
/// attempted.
async fn check_writable(pool: &SqlitePool, path: &Path) -> std::result::Result<(), OpenError> {
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(pool)
        .await?;
    match sqlx::query(&format!("PRAGMA user_version = {version}"))
        .execute(pool)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_read_only(&e) => Err(OpenError::ReadOnly {
            location: path.display().to_string(),
        }),
        Err(e) => Err(e.into()),
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

// The statements of a transaction, formatted once. Those shared with
// PostgreSQL (`statements.rs`) are written with `$N` placeholders, which
// `Script::shared` turns into `?`s. None of the hot ones builds a temporary
// b-tree (SQLite's `IN (SELECT …)`, `UNION`, `ORDER BY` without an index,
// `UPDATE … FROM` and `RETURNING` each do, at some 20,000 instructions
// apiece): ids come in through joins with `json_each`, rows may come twice
// and are told apart in Rust, and queues are read in index order.
//
// `json_each` comes first through `CROSS JOIN`, whose order SQLite keeps.
// herd runs no `ANALYZE`, and without statistics the planner may loop over
// a batch's tasks and scan the JSON for each: every claim then costs more
// as finished tasks pile up (the 100-slot worker loop fell from 24k to 1.4k
// tasks/s over 20,000 tasks). `tests::hot_plans` holds the plans.
//
// SQLite "locks" a batch by reading it: `BEGIN IMMEDIATE` holds the file's
// write lock for the whole transaction.

/// [`BATCH_COLUMNS`] of `batches` aliased `b`.
static B_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    BATCH_COLUMNS
        .split(", ")
        .map(|c| format!("b.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
});

/// The batches of the tasks `$1` (a JSON array of ids), each once: a
/// completion of 100 tasks of one batch read its 30 columns 100 times, a
/// third of the values sqlx copied in a drain.
static BATCHES_OF_TASKS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM batches b WHERE b.id IN ( \
           SELECT t.batch_id FROM json_each($1) j CROSS JOIN tasks t ON t.id = j.value)",
        *B_COLUMNS
    )
});

/// The batches `$1` (a JSON array of ids).
static BATCHES_BY_ID: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM json_each($1) j CROSS JOIN batches b ON b.id = j.value",
        *B_COLUMNS
    )
});

/// What a claim reads of batches, each row tagged with why (`why`): `c`
/// the batch it may take tasks from (`$3`, whatever its state) or, without
/// one, the best batches that could start a task, at most `$3` and one per
/// retry due ([`statements::claim_ranked`]); `d` the batch of a retry due
/// by `$1` (`task`); `x` a batch past its deadline; `t` the batch of one
/// of the tasks `$2` (completions before the claim), not read as `c` when
/// the claim is from one batch. A batch may come more than once (with due
/// retries, past its deadline, or a completion's batch among the best).
static CLAIM_BATCHES: LazyLock<[String; 2]> = LazyLock::new(|| {
    [
        ("id = $3", "b.id <> $3"),
        (
            &*format!("id IN ({})", statements::claim_ranked("$1", "$3")),
            "1",
        ),
    ]
    .map(|(claimable, not_claimed)| {
        format!(
            "SELECT 'c' AS why, NULL AS task, {BATCH_COLUMNS} FROM batches WHERE {claimable} \
             UNION ALL SELECT 'd', t.id, {b} FROM tasks t JOIN batches b ON b.id = t.batch_id \
               WHERE t.state = 'retry_wait' AND t.run_at <= $1 \
             UNION ALL SELECT 'x', NULL, {BATCH_COLUMNS} FROM batches \
               WHERE deadline <= $1 AND finished_at IS NULL \
             UNION ALL SELECT 't', NULL, {b} FROM json_each($2) j \
               CROSS JOIN tasks t ON t.id = j.value CROSS JOIN batches b ON b.id = t.batch_id \
               WHERE {not_claimed}",
            b = *B_COLUMNS
        )
    })
});

/// Up to `$2` queued tasks of the batch `$1`, in queue order (the order of
/// the index `tasks_ready`).
static HEADS_OF: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {TASK_PACKED}, t.payload FROM tasks t \
         WHERE t.batch_id = $1 AND t.state = 'queued' \
         ORDER BY t.priority DESC, t.ready_seq LIMIT $2"
    )
});

/// A claim's heads read ahead, for a claim from any batch: up to `$2`
/// queued tasks of each unfinished, unpaused, unstopped batch with queued
/// tasks that is among the best ([`statements::claim_ranked`] by `$3` and
/// `$4`, as [`CLAIM_BATCHES`] read them) or holds one of the tasks `$1`
/// (whose completion may free a slot): driven by that list of ids, so it
/// reads no other batch. Not in order: [`sorted_heads`] sorts them.
static HEADS_AHEAD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {TASK_PACKED}, t.payload FROM batches b JOIN tasks t ON t.id IN ( \
           SELECT q.id FROM tasks q WHERE q.batch_id = b.id AND q.state = 'queued' \
           ORDER BY q.priority DESC, q.ready_seq LIMIT $2) \
         WHERE b.id IN (SELECT c.id FROM ({}) c \
             UNION SELECT x.batch_id FROM json_each($1) j CROSS JOIN tasks x ON x.id = j.value) \
           AND b.finished_at IS NULL AND b.n_queued > 0 AND NOT b.paused \
           AND b.stopped IS NULL",
        statements::claim_ranked("$3", "$4")
    )
});

const SERVED_AND_DUE: &str = "SELECT (SELECT COALESCE(MAX(last_served), 0) FROM batches), \
     (SELECT MIN(at) FROM ( \
       SELECT MIN(run_at) AS at FROM tasks WHERE state = 'retry_wait' \
       UNION ALL \
       SELECT MIN(deadline) FROM batches WHERE deadline IS NOT NULL AND finished_at IS NULL))";

static TASKS_GET: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {TASK_PACKED} FROM json_each($1) j CROSS JOIN tasks t ON t.id = j.value")
});

static TASKS_DEPENDENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT d.upstream_id AS upstream, {TASK_PACKED} FROM json_each($1) j \
         CROSS JOIN task_deps d ON d.upstream_id = j.value CROSS JOIN tasks t ON t.id = d.task_id \
         WHERE t.state = 'pending'"
    )
});

const UPSTREAM: &str = "SELECT d.task_id AS dependent, u.id, u.key, u.state, u.output \
     FROM json_each($1) j CROSS JOIN task_deps d ON d.task_id = j.value \
     CROSS JOIN tasks u ON u.id = d.upstream_id ORDER BY d.task_id, d.position";

/// One task row written back, by primary key.
const TASK_WRITE: &str = "UPDATE tasks SET state = $2, reason = $3, message = $4, attempt = $5, \
     first_attempt = $6, lost = $7, worker_id = $8, lease_until = $9, cancel_mode = $10, \
     cancel_reason = $11, run_at = $12, ready_seq = $13, deps_left = $14, started_at = $15 \
     WHERE id = $1";

/// Up to this many task rows are written back one statement each; more
/// through `UPDATE … FROM (VALUES …)`, which builds a temporary b-tree.
const TASK_WRITES_ONE_BY_ONE: usize = 16;

/// [`statements::BATCH_WRITE`] without the columns that did not change
/// among those an index covers: `deadline` and `finished_at` (the indexes
/// `batches_deadline` and `batches_live`) unless `[2]`/`[3]`, `last_served`
/// (`batches_served`) unless `[1]`/`[3]`. Each index entry an `UPDATE`
/// sets is deleted and inserted again, and its page written to the log.
static BATCH_WRITES: LazyLock<[String; 4]> = LazyLock::new(|| {
    let all = statements::BATCH_WRITE;
    let without_served = all.replace("last_served = $9, ", "");
    let without_live = |sql: &str| {
        sql.replace("deadline = $2, ", "")
            .replace("finished_at = $23, ", "")
    };
    [
        without_live(&without_served),
        without_live(all),
        without_served,
        all.to_owned(),
    ]
});

const MAX_TASK_ID: &str = "SELECT COALESCE(MAX(id), 0) FROM tasks";

const SEQ_ADVANCE: &str = "UPDATE herd_meta SET next_seq = next_seq + $1 WHERE id = 1";
const SEQ_NEXT: &str = "SELECT next_seq FROM herd_meta WHERE id = 1";

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

/// The values of the columns `t` changes, in [`TaskWrite::COLUMNS`] order
/// (only those are made: most writes change a few of the fourteen).
fn changed_values(t: &TaskWrite<'_>) -> Vec<Value> {
    (0..TaskWrite::COLUMNS.len())
        .filter(|i| t.changed & 1 << i != 0)
        .map(|i| match i {
            0 => t.s.value(),
            1 => t.r.as_deref().value(),
            2 => t.m.value(),
            3 => i64::from(t.a).value(),
            4 => i64::from(t.fa).value(),
            5 => i64::from(t.l).value(),
            6 => t.w.value(),
            7 => t.lu.value(),
            8 => t.cm.value(),
            9 => t.cr.as_deref().value(),
            10 => t.ra.value(),
            11 => t.rs.value(),
            12 => i64::from(t.d).value(),
            _ => t.st.value(),
        })
        .collect()
}

/// An attempt row's values, in the order of its `INSERT`.
fn attempt_values(a: &AttemptEnd) -> [Value; 14] {
    [
        a.t.value(),
        i64::from(a.a).value(),
        a.w.value(),
        a.st.value(),
        a.at.value(),
        a.o.value(),
        a.r.as_deref().value(),
        a.x.value(),
        a.e.as_deref().value(),
        a.so.as_deref().value(),
        a.se.as_deref().value(),
        a.z.value(),
        a.ot.value(),
        a.et.value(),
    ]
}

/// SQLite's limit on the parameters of one statement.
const MAX_PARAMETERS: usize = 32_766;

/// The most rows of one multi-row statement. Prepared, a statement takes
/// some 15 times its text: a full statement of a large submit's tasks or
/// events is held until the commit, so this bounds that memory (`herd
/// run`'s peak RSS), while the rows still go a few hundred a round trip.
const ROWS_PER_STATEMENT: usize = 250;

/// Scripts longer than this are prepared for the one use: their text (row
/// counts) rarely comes again, and the connection's cache keeps the rest.
/// The turn of a worker with 100 slots (100 reports and 100 claims, some
/// 25 KB of text) repeats in a steady drain: parsing it again every turn
/// cost a fifth of the 100-slot worker loop's rate.
const CACHED_SCRIPT: usize = 64 * 1024;

/// Statements to send to the connection in one round trip, with their
/// arguments in order: sqlx binds the `?` of each statement in turn from
/// the arguments the statements before did not take.
///
/// Sending several statements in one query is what sqlx's SQLite driver
/// does (it prepares and steps them in turn on its connection's thread),
/// though its multi-statement methods are deprecated; values are always
/// bound, never written into the text.
#[derive(Default)]
struct Script {
    sql: String,
    values: Vec<Value>,
    statements: usize,
}

/// A bound value, owned (a script outlives the rows it was built from).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn add_to(self, args: &mut SqliteArguments<'static>) -> Result<()> {
        match self {
            Value::Null => args.add(None::<i64>),
            Value::Int(v) => args.add(v),
            Value::Text(v) => args.add(v),
            Value::Blob(v) => args.add(v),
        }
        .map_err(|e| backend(ScriptError(format!("binding a value failed: {e}"))))
    }
}

/// What a [`Script`] binds.
trait Arg {
    fn value(self) -> Value;
}

impl Arg for Value {
    fn value(self) -> Value {
        self
    }
}

impl Arg for i64 {
    fn value(self) -> Value {
        Value::Int(self)
    }
}

impl Arg for i32 {
    fn value(self) -> Value {
        Value::Int(i64::from(self))
    }
}

impl Arg for bool {
    fn value(self) -> Value {
        Value::Int(i64::from(self))
    }
}

impl Arg for String {
    fn value(self) -> Value {
        Value::Text(self)
    }
}

impl Arg for &str {
    fn value(self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl Arg for &String {
    fn value(self) -> Value {
        Value::Text(self.clone())
    }
}

impl Arg for &[u8] {
    fn value(self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl<T: Arg> Arg for Option<T> {
    fn value(self) -> Value {
        self.map_or(Value::Null, Arg::value)
    }
}

/// A script the store built wrong, or a reply it did not expect.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ScriptError(String);

fn script_error(what: &str) -> StoreError {
    backend(ScriptError(what.to_owned()))
}

/// Binds the values of one statement written with `$N` placeholders, `$1`
/// first ([`Script::shared`]).
struct Binds<'s> {
    script: &'s mut Script,
    /// The statement, with the `N` of each placeholder in order.
    order: Arc<Positional>,
    values: Vec<Value>,
}

impl Binds<'_> {
    fn bind(mut self, value: impl Arg) -> Self {
        self.values.push(value.value());
        self
    }

    fn done(self) -> Result<()> {
        for &n in &self.order.order {
            let value = self
                .values
                .get(n - 1)
                .ok_or_else(|| script_error("a statement's placeholder has no value"))?;
            self.script.values.push(value.clone());
        }
        Ok(())
    }
}

/// A statement written with `$N` placeholders, as SQLite takes it: `?`s,
/// and the `N` of each in order.
struct Positional {
    sql: String,
    order: Vec<usize>,
}

impl Positional {
    fn of(sql: &str) -> Positional {
        let mut out = Positional {
            sql: String::with_capacity(sql.len()),
            order: Vec::new(),
        };
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            out.sql.push_str(&rest[..at]);
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - at - 1);
            match rest[at + 1..at + 1 + digits].parse::<usize>() {
                Ok(n) if n > 0 => {
                    out.sql.push('?');
                    out.order.push(n);
                }
                _ => out.sql.push_str(&rest[at..at + 1 + digits]),
            }
            rest = &rest[at + 1 + digits..];
        }
        out.sql.push_str(rest);
        out
    }

    /// `sql` turned once per process (the statements are static).
    fn cached(sql: &'static str) -> Arc<Positional> {
        /// By the address and length of the static text.
        type Turned = HashMap<(usize, usize), Arc<Positional>>;
        static CACHE: LazyLock<std::sync::Mutex<Turned>> = LazyLock::new(Default::default);
        let key = (sql.as_ptr() as usize, sql.len());
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(key)
            .or_insert_with(|| Arc::new(Positional::of(sql)))
            .clone()
    }
}

impl Script {
    /// Appends a statement written with `$N` placeholders (those shared
    /// with PostgreSQL); bind its values, `$1` first.
    fn shared(&mut self, sql: &'static str) -> Binds<'_> {
        let positional = Positional::cached(sql);
        self.sql.push_str(&positional.sql);
        self.end();
        Binds {
            script: self,
            order: positional,
            values: Vec::new(),
        }
    }

    /// Appends a statement without arguments.
    fn plain(&mut self, sql: &str) {
        self.sql.push_str(sql);
        self.end();
    }

    fn end(&mut self) {
        self.sql.push_str(";\n");
        self.statements += 1;
    }

    /// Appends a placeholder for `value`.
    fn bind(&mut self, value: impl Arg) -> Result<()> {
        self.values.push(value.value());
        self.sql.push('?');
        Ok(())
    }

    /// Appends ` FROM (VALUES (…), (…)) AS j`, a placeholder for each value
    /// of each row, read as `j.column1`, `j.column2`, ….
    fn bind_rows<R: IntoIterator<Item = Value>>(
        &mut self,
        rows: impl IntoIterator<Item = R>,
    ) -> Result<()> {
        self.sql.push_str(" FROM (VALUES ");
        for (i, row) in rows.into_iter().enumerate() {
            self.sql.push_str(if i == 0 { "(" } else { ", (" });
            for (n, value) in row.into_iter().enumerate() {
                if n > 0 {
                    self.sql.push_str(", ");
                }
                self.bind(value)?;
            }
            self.sql.push(')');
        }
        self.sql.push_str(") AS j");
        Ok(())
    }
}

/// The connection every write goes through. Held with this process's write
/// turn, so that writers queue on an async lock rather than in SQLite's
/// busy handler; kept out of the pool, whose connections are tested on
/// release (a round trip each) and whose page caches another writer's
/// commits would invalidate.
#[derive(Debug)]
struct Writer {
    conn: SqliteConnection,
    /// A transaction may have been left open by one dropped where nothing
    /// could roll it back: roll it back before the next begins.
    unclean: bool,
}

/// This process's write turn, for a write outside the transition logic
/// (a purge): the writer connection, clean, with no transaction open. Writes
/// that went to the pool instead would wait in SQLite's busy handler behind
/// this process's own writer.
pub(crate) struct WriteTurn<'a>(tokio::sync::MutexGuard<'a, Writer>);

impl WriteTurn<'_> {
    /// The connection to write on. A caller that begins a transaction and
    /// fails before it ends must call [`WriteTurn::abandon`].
    pub(crate) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.0.conn
    }

    /// Marks the connection for a rollback before its next use.
    pub(crate) fn abandon(&mut self) {
        self.0.unclean = true;
    }

    /// The transaction ended: nothing to roll back.
    pub(crate) fn ended(&mut self) {
        self.0.unclean = false;
    }
}

impl Sqlite {
    /// Waits for this process's write turn.
    pub(crate) async fn write_turn(&self) -> WriteTurn<'_> {
        let mut writer = self.writer.lock().await;
        writer.clean().await;
        WriteTurn(writer)
    }
}

impl Writer {
    async fn clean(&mut self) {
        if self.unclean {
            // Fails harmlessly when the transaction never began.
            let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
            self.unclean = false;
        }
    }
}

/// A write transaction on the file, holding this process's write turn.
///
/// Statements are sent as few times as the logic allows: `BEGIN IMMEDIATE`
/// goes with the first reads; writes wait and go with the next reads, or
/// with the `COMMIT`. A transaction dropped before its commit is rolled
/// back on the connection before anyone else may use it.
pub(crate) struct SqliteTx {
    writer: Option<OwnedMutexGuard<Writer>>,
    /// What has not been sent yet (`BEGIN IMMEDIATE` first, until sent).
    pending: Script,
    begun: bool,
    done: bool,
    /// The statement of `pending` that takes the event sequence
    /// (`RETURNING next_seq`), and how many numbers it takes.
    seq_at: Option<(usize, usize)>,
    /// The first event `seq`, once the statement that takes it has run.
    first_seq: Option<u64>,
    /// The largest task id, read with a batch insert and taken by the
    /// `task_ids` that follows it (the transaction holds the write lock, and
    /// inserts tasks only after taking ids).
    max_task_id: Option<i64>,
    /// Full statements of a large write were kept prepared (see
    /// [`SqliteTx::values`]): let them go at the commit.
    kept_large: bool,
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.done || !self.begun {
            return;
        }
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        writer.unclean = true;
        // Rolled back before the write turn passes on.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { writer.clean().await });
        }
    }
}

impl SqliteTx {
    fn new(writer: OwnedMutexGuard<Writer>) -> SqliteTx {
        let mut pending = Script::default();
        pending.plain("BEGIN IMMEDIATE");
        SqliteTx {
            writer: Some(writer),
            pending,
            begun: false,
            done: false,
            seq_at: None,
            first_seq: None,
            max_task_id: None,
            kept_large: false,
        }
    }

    /// Sends everything pending in one round trip; returns each
    /// statement's rows. `keep`: have the connection keep the statements
    /// prepared, however long their text.
    async fn flush(&mut self, keep: bool) -> Result<Vec<Vec<SqliteRow>>> {
        let script = std::mem::take(&mut self.pending);
        if script.statements == 0 {
            return Ok(Vec::new());
        }
        self.begun = true;
        let writer = self
            .writer
            .as_mut()
            .expect("a live transaction holds the writer");
        let cached = keep || script.sql.len() <= CACHED_SCRIPT;
        let mut args = SqliteArguments::default();
        args.reserve(script.values.len(), 0);
        for value in script.values {
            value.add_to(&mut args)?;
        }
        let query = sqlx::query_with(&script.sql, args).persistent(cached);
        let mut groups = Vec::with_capacity(script.statements);
        let mut rows = Vec::new();
        let mut results = writer.conn.fetch_many(query);
        while let Some(item) = results.try_next().await.map_err(backend)? {
            match item {
                Either::Left(_) => groups.push(std::mem::take(&mut rows)),
                Either::Right(row) => rows.push(row),
            }
        }
        drop(results);
        if let Some((at, n)) = self.seq_at.take() {
            let next: i64 = groups
                .get(at)
                .and_then(|rows| rows.first())
                .map(|row| row.int("next_seq"))
                .transpose()?
                .ok_or_else(|| script_error("the event sequence was not taken"))?;
            self.first_seq = Some((next - n as i64) as u64);
        }
        Ok(groups)
    }

    /// Sends `add`'s statements with everything pending; returns the rows
    /// of each of them.
    async fn read(
        &mut self,
        add: impl FnOnce(&mut Script) -> Result<()>,
    ) -> Result<Vec<Vec<SqliteRow>>> {
        let first = self.pending.statements;
        add(&mut self.pending)?;
        let mut groups = self.flush(false).await?;
        Ok(groups.split_off(first.min(groups.len())))
    }

    /// The rows of one statement.
    async fn read_one(
        &mut self,
        add: impl FnOnce(&mut Script) -> Result<()>,
    ) -> Result<Vec<SqliteRow>> {
        Ok(self.read(add).await?.pop().unwrap_or_default())
    }

    /// Appends `head VALUES (…), (…) tail` over `rows`, `width` values a
    /// row, in statements of at most `ROWS_PER_STATEMENT` rows. (Bound
    /// values, not `json_each`: reading an object's fields from
    /// `json_each` re-serialises the object for every field.)
    ///
    /// Rows that fill more than one statement (a large submit) are sent at
    /// once, a full statement at a time, each prepared once and kept by the
    /// connection (the text of a full statement is always the same): the
    /// bound values held at once stay bounded, and SQLite does not parse a
    /// statement of hundreds of rows again for every few hundred rows. Only
    /// the last, partial statement waits for the next round trip. The
    /// commit lets them go: prepared, a full statement takes some 15 times
    /// its text, held for nothing until the next large write (`herd run`'s
    /// peak RSS).
    async fn values<T>(
        &mut self,
        head: &str,
        tail: &str,
        rows: &[T],
        width: usize,
        mut bind: impl FnMut(&mut Script, &T) -> Result<()>,
    ) -> Result<()> {
        let per_statement = (MAX_PARAMETERS / width).min(ROWS_PER_STATEMENT);
        let pieces = rows.len() > per_statement;
        for chunk in rows.chunks(per_statement) {
            let full = pieces && chunk.len() == per_statement;
            if full {
                // Whatever waits goes first, in order.
                self.flush(false).await?;
            }
            let script = &mut self.pending;
            script.sql.push_str(head);
            script.sql.push_str(" VALUES ");
            for (i, row) in chunk.iter().enumerate() {
                script.sql.push_str(if i == 0 { "(" } else { ", (" });
                bind(script, row)?;
                script.sql.push(')');
            }
            script.sql.push_str(tail);
            script.end();
            if full {
                self.flush(true).await?;
                self.kept_large = true;
            }
        }
        Ok(())
    }

    async fn tasks_of(&mut self, sql: &'static str, bind: i64) -> Result<Vec<TaskRow>> {
        let rows = self.read_one(|s| s.shared(sql).bind(bind).done()).await?;
        rows.iter().map(task_row).collect()
    }
}

/// Binds a row's values, separated.
macro_rules! row {
    ($script:expr; $($value:expr),+ $(,)?) => {{
        let script: &mut Script = $script;
        let mut first = true;
        $(
            if !std::mem::take(&mut first) {
                script.sql.push_str(", ");
            }
            script.bind($value)?;
        )+
        Ok(())
    }};
}

impl SqliteTx {
    /// Task rows written whole: up to [`TASK_WRITES_ONE_BY_ONE`] one
    /// statement each, more through `UPDATE … FROM (VALUES …)`.
    async fn tasks_write_whole(&mut self, rows: &[&TaskWrite<'_>]) -> Result<()> {
        if rows.len() <= TASK_WRITES_ONE_BY_ONE {
            for t in rows {
                self.pending
                    .shared(TASK_WRITE)
                    .bind(t.id)
                    .bind(t.s)
                    .bind(t.r.as_deref())
                    .bind(t.m)
                    .bind(i64::from(t.a))
                    .bind(i64::from(t.fa))
                    .bind(i64::from(t.l))
                    .bind(t.w)
                    .bind(t.lu)
                    .bind(t.cm)
                    .bind(t.cr.as_deref())
                    .bind(t.ra)
                    .bind(t.rs)
                    .bind(i64::from(t.d))
                    .bind(t.st)
                    .done()?;
            }
            return Ok(());
        }
        self.values(
            "UPDATE tasks SET state = j.column2, reason = j.column3, message = j.column4, \
             attempt = j.column5, first_attempt = j.column6, lost = j.column7, \
             worker_id = j.column8, lease_until = j.column9, cancel_mode = j.column10, \
             cancel_reason = j.column11, run_at = j.column12, ready_seq = j.column13, \
             deps_left = j.column14, started_at = j.column15 FROM (",
            ") AS j WHERE tasks.id = j.column1",
            rows,
            15,
            |s, t| {
                row!(s;
                    t.id,
                    t.s,
                    t.r.clone(),
                    t.m.map(str::to_owned),
                    i64::from(t.a),
                    i64::from(t.fa),
                    i64::from(t.l),
                    t.w,
                    t.lu,
                    t.cm,
                    t.cr.clone(),
                    t.ra,
                    t.rs,
                    i64::from(t.d),
                    t.st,
                )
            },
        )
        .await
    }
}

impl Dialect for Sqlite {
    type Tx = SqliteTx;

    async fn begin(&self) -> Result<SqliteTx> {
        let mut writer = self.writer.clone().lock_owned().await;
        writer.clean().await;
        Ok(SqliteTx::new(writer))
    }

    async fn commit(mut tx: SqliteTx) -> Result<Option<u64>> {
        tx.pending.plain("COMMIT");
        tx.flush(false).await?;
        tx.done = true;
        if tx.kept_large
            && let Some(writer) = tx.writer.as_mut()
        {
            // The hot statements are prepared again at their next use, once.
            // A failure here leaves them cached: nothing is lost.
            let _ = sqlx::Connection::clear_cached_statements(&mut writer.conn).await;
        }
        Ok(tx.first_seq)
    }

    async fn worker_insert(&self, host: &str, pid: u32, now: Timestamp) -> Result<WorkerId> {
        let mut writer = self.writer.lock().await;
        writer.clean().await;
        let id: i64 = sqlx::query_scalar(statements::WORKER_INSERT)
            .bind(host)
            .bind(i64::from(pid))
            .bind(now.0)
            .fetch_one(&mut writer.conn)
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
        let mut writer = self.writer.lock().await;
        writer.clean().await;
        sqlx::query(statements::WORKER_HEARTBEAT)
            .bind(now.0)
            .bind(worker.0)
            .execute(&mut writer.conn)
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
    // Rows that change the same columns go in one statement, setting those.
    const WRITES_CHANGED_COLUMNS: bool = true;

    async fn open(&mut self, claim: Option<ClaimOpen>, tasks: &[TaskId]) -> Result<Opened> {
        if claim.is_none() && tasks.is_empty() {
            return Ok(Opened::default());
        }
        let task_ids = id_list(tasks.iter().map(|t| t.0));
        let has_tasks = !tasks.is_empty();
        // The batches ranked: each completion before the claim may spoil
        // one ([`statements::claim_ranked`]).
        let ranked = claim.map_or(0, |c| {
            statements::rank_limit(c.limit.saturating_add(tasks.len()))
        });
        let groups = self
            .read(|s| {
                match claim {
                    // The claim's scan and the batches it reads, in one
                    // statement; the tasks' batches among them.
                    Some(c) => match c.only {
                        Some(only) => s
                            .shared(&CLAIM_BATCHES[0])
                            .bind(c.now.0)
                            .bind(task_ids.clone())
                            .bind(only.0)
                            .done()?,
                        None => s
                            .shared(&CLAIM_BATCHES[1])
                            .bind(c.now.0)
                            .bind(task_ids.clone())
                            .bind(ranked)
                            .done()?,
                    },
                    None => s.shared(&BATCHES_OF_TASKS).bind(task_ids.clone()).done()?,
                }
                if has_tasks {
                    s.shared(&TASKS_GET).bind(task_ids.clone()).done()?;
                }
                if let Some(c) = claim {
                    let limit = i64::try_from(c.limit).unwrap_or(i64::MAX);
                    match c.only {
                        Some(only) => s.shared(&HEADS_OF).bind(only.0).bind(limit).done()?,
                        None => s
                            .shared(&HEADS_AHEAD)
                            .bind(task_ids)
                            .bind(limit)
                            .bind(c.now.0)
                            .bind(ranked)
                            .done()?,
                    }
                    s.plain(SERVED_AND_DUE);
                }
                Ok(())
            })
            .await?;
        let mut groups = groups.into_iter();
        let mut next = || {
            groups
                .next()
                .ok_or_else(|| script_error("statements went missing"))
        };
        let batch_rows = next()?;
        let task_rows = if has_tasks { next()? } else { Vec::new() };
        let tasks = task_rows
            .iter()
            .map(packed_task_row)
            .collect::<Result<_>>()?;
        if claim.is_none() {
            return Ok(Opened {
                scan: None,
                batches: distinct_batches(&batch_rows)?.into_values().collect(),
                tasks,
                heads: None,
            });
        }
        let heads = sorted_heads(&next()?)?;
        let (served, due) = served_and_due(&next()?)?;
        let mut scan = ClaimScan::default();
        for r in &batch_rows {
            let batch = BatchId(r.int("id")?);
            match r.text_at(0)?.as_str() {
                "d" => scan.due.push((TaskId(r.int_at(1)?), batch)),
                "x" => scan.past_deadline.push(batch),
                "c" => scan.claimable.push(batch),
                _ => {}
            }
        }
        scan.past_deadline.sort_unstable();
        let batches: Vec<BatchRow> = distinct_batches(&batch_rows)?.into_values().collect();
        // The batch asked for is read whatever its state: listed as
        // claimable only if it is.
        scan.claimable.retain(|id| {
            batches.iter().any(|b| {
                b.id == *id
                    && b.finished_at.is_none()
                    && b.counts.queued > 0
                    && !b.paused
                    && b.stopped.is_none()
                    && b.running_cost < b.concurrency
            })
        });
        Ok(Opened {
            scan: Some(scan),
            batches,
            tasks,
            heads: Some(Heads { heads, served, due }),
        })
    }

    async fn claim_heads(&mut self, batches: &[BatchId], limit: usize) -> Result<Heads> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut groups = self
            .read(|s| {
                for batch in batches {
                    s.shared(&HEADS_OF).bind(batch.0).bind(limit).done()?;
                }
                s.plain(SERVED_AND_DUE);
                Ok(())
            })
            .await?;
        let served = groups
            .pop()
            .ok_or_else(|| script_error("statements went missing"))?;
        let (served, due) = served_and_due(&served)?;
        let heads = groups
            .iter()
            .flatten()
            .map(|r| Ok((packed_task_row(r)?, r.text("payload")?)))
            .collect::<Result<_>>()?;
        Ok(Heads { heads, served, due })
    }

    async fn batch_by_key(&mut self, key: &str) -> Result<Option<BatchId>> {
        let key = key.to_owned();
        let rows = self
            .read_one(|s| s.shared(statements::BATCH_BY_KEY).bind(key).done())
            .await?;
        rows.first().map(|r| r.int_at(0).map(BatchId)).transpose()
    }

    async fn batch_insert(&mut self, b: NewBatch<'_>) -> Result<BatchRow> {
        let name = b.name.map(str::to_owned);
        let key = b.idempotency_key.map(str::to_owned);
        let flow = b.policy.flow.to_string();
        let policy = statements::json(b.policy)?;
        let error_policy = statements::json(b.error_policy)?;
        // The largest task id with it, for the tasks inserted next
        // (`task_ids`): one round trip, not two.
        let mut groups = self
            .read(|s| {
                s.shared(&statements::BATCH_INSERT)
                    .bind(name)
                    .bind(key)
                    .bind(flow)
                    .bind(b.state.as_str())
                    .bind(i64::from(b.priority.0))
                    .bind(i64::from(b.concurrency))
                    .bind(policy)
                    .bind(error_policy)
                    .bind(b.policy.deadline.map(|d| d.0))
                    .bind(b.open)
                    .bind(b.paused)
                    .bind(b.created_at.0)
                    .done()?;
                s.plain(MAX_TASK_ID);
                Ok(())
            })
            .await?
            .into_iter();
        let (Some(inserted), Some(max)) = (groups.next(), groups.next()) else {
            return Err(script_error("the batch insert returned no row"));
        };
        let max = max.first().map(|r| r.int_at(0)).transpose()?.unwrap_or(0);
        self.max_task_id = Some(max);
        let row = inserted
            .first()
            .ok_or_else(|| script_error("the batch insert returned no row"))?;
        batch_row(row)
    }

    async fn batches_lock(&mut self, ids: &[BatchId]) -> Result<Vec<BatchRow>> {
        let ids = id_list(ids.iter().map(|b| b.0));
        let rows = self
            .read_one(|s| s.shared(&BATCHES_BY_ID).bind(ids).done())
            .await?;
        Ok(distinct_batches(&rows)?.into_values().collect())
    }

    async fn batch_write(&mut self, b: &BatchRow) -> Result<()> {
        let live = b.deadline != b.stored.deadline || b.finished_at != b.stored.finished_at;
        let served = b.last_served != b.stored.last_served;
        let sql = &BATCH_WRITES[usize::from(live) * 2 + usize::from(served)];
        bind_batch_row!(self.pending.shared(sql), b).done()
    }

    async fn batches_past_deadline(&mut self, now: Timestamp) -> Result<Vec<BatchId>> {
        let rows = self
            .read_one(|s| {
                s.shared(statements::BATCHES_PAST_DEADLINE)
                    .bind(now.0)
                    .done()
            })
            .await?;
        rows.iter().map(|r| r.int_at(0).map(BatchId)).collect()
    }

    async fn batches_lock_with_tasks(
        &mut self,
        ids: &[BatchId],
        tasks: &[TaskId],
    ) -> Result<Vec<BatchRow>> {
        let ids = id_list(ids.iter().map(|b| b.0));
        let tasks = id_list(tasks.iter().map(|t| t.0));
        let groups = self
            .read(|s| {
                s.shared(&BATCHES_BY_ID).bind(ids).done()?;
                s.shared(&BATCHES_OF_TASKS).bind(tasks).done()
            })
            .await?;
        let rows: Vec<SqliteRow> = groups.into_iter().flatten().collect();
        Ok(distinct_batches(&rows)?.into_values().collect())
    }

    async fn served_and_due(&mut self) -> Result<(i64, Option<Timestamp>)> {
        let rows = self
            .read_one(|s| {
                s.plain(SERVED_AND_DUE);
                Ok(())
            })
            .await?;
        served_and_due(&rows)
    }

    async fn task_ids(&mut self, n: usize) -> Result<Vec<i64>> {
        let max = match self.max_task_id.take() {
            Some(max) => max,
            None => {
                let rows = self
                    .read_one(|s| {
                        s.plain(MAX_TASK_ID);
                        Ok(())
                    })
                    .await?;
                rows.first().map(|r| r.int_at(0)).transpose()?.unwrap_or(0)
            }
        };
        Ok((max + 1..=max + n as i64).collect())
    }

    async fn tasks_insert(&mut self, batch: BatchId, rows: &[NewTask]) -> Result<()> {
        self.values(
            "INSERT INTO tasks (id, batch_id, idx, key, priority, cost, payload, state, \
             ready_seq, deps_left, rule, n_dependents, n_upstream)",
            "",
            rows,
            13,
            |s, t| {
                row!(s;
                    t.id,
                    batch.0,
                    t.index as i64,
                    t.key.clone(),
                    i64::from(t.priority),
                    i64::from(t.cost),
                    &t.payload,
                    t.state,
                    t.ready_seq,
                    i64::from(t.deps_left),
                    t.rule,
                    i64::from(t.dependents),
                    i64::from(t.upstream),
                )
            },
        )
        .await
    }

    async fn deps_insert(&mut self, rows: &[NewDep]) -> Result<()> {
        self.values(
            "INSERT INTO task_deps (task_id, upstream_id, position)",
            "",
            rows,
            3,
            |s, d| row!(s; d.task, d.upstream, i64::from(d.position)),
        )
        .await
    }

    async fn tasks_get(&mut self, ids: &[TaskId]) -> Result<Vec<TaskRow>> {
        let ids = id_list(ids.iter().map(|t| t.0));
        let rows = self
            .read_one(|s| s.shared(&TASKS_GET).bind(ids).done())
            .await?;
        rows.iter().map(packed_task_row).collect()
    }

    async fn tasks_live(&mut self, batch: BatchId) -> Result<Vec<TaskRow>> {
        self.tasks_of(&statements::TASKS_LIVE, batch.0).await
    }

    async fn tasks_of_batch(&mut self, batch: BatchId) -> Result<Vec<TaskRow>> {
        self.tasks_of(&statements::TASKS_OF_BATCH, batch.0).await
    }

    async fn deps_of_batch(&mut self, batch: BatchId) -> Result<Vec<(TaskId, TaskId)>> {
        let rows = self
            .read_one(|s| s.shared(statements::DEPS_OF_BATCH).bind(batch.0).done())
            .await?;
        rows.iter()
            .map(|r| Ok((TaskId(r.int_at(0)?), TaskId(r.int_at(1)?))))
            .collect()
    }

    async fn tasks_dependents(&mut self, ids: &[TaskId]) -> Result<Vec<(TaskId, TaskRow)>> {
        let ids = id_list(ids.iter().map(|t| t.0));
        let rows = self
            .read_one(|s| s.shared(&TASKS_DEPENDENTS).bind(ids).done())
            .await?;
        rows.iter()
            .map(|r| Ok((TaskId(r.int("upstream")?), packed_task_row(r)?)))
            .collect()
    }

    async fn tasks_ready(
        &mut self,
        batches: &[BatchId],
        limit: usize,
    ) -> Result<Vec<(TaskRow, String)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let groups = self
            .read(|s| {
                for batch in batches {
                    s.shared(&HEADS_OF).bind(batch.0).bind(limit).done()?;
                }
                Ok(())
            })
            .await?;
        groups
            .iter()
            .flatten()
            .map(|r| Ok((packed_task_row(r)?, r.text("payload")?)))
            .collect()
    }

    async fn claim_scan(
        &mut self,
        now: Timestamp,
        only: Option<BatchId>,
        limit: usize,
    ) -> Result<ClaimScan> {
        let (sql, n) = statements::claim_scan(only, limit);
        let rows = self
            .read_one(|s| s.shared(sql).bind(now.0).bind(n).done())
            .await?;
        let rows = rows
            .iter()
            .map(|r| Ok((r.text_at(0)?, r.int_at(1)?, r.int_at(2)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(ClaimScan::from_rows(rows))
    }

    async fn tasks_lease_expired(&mut self, now: Timestamp) -> Result<Vec<(TaskId, BatchId)>> {
        let rows = self
            .read_one(|s| s.shared(statements::TASKS_LEASE_EXPIRED).bind(now.0).done())
            .await?;
        rows.iter()
            .map(|r| Ok((TaskId(r.int_at(0)?), BatchId(r.int_at(1)?))))
            .collect()
    }

    async fn tasks_of_worker(&mut self, worker: WorkerId) -> Result<Vec<(TaskId, BatchId)>> {
        let rows = self
            .read_one(|s| s.shared(statements::TASKS_OF_WORKER).bind(worker.0).done())
            .await?;
        rows.iter()
            .map(|r| Ok((TaskId(r.int_at(0)?), BatchId(r.int_at(1)?))))
            .collect()
    }

    async fn worker_heartbeat(&mut self, worker: WorkerId, now: Timestamp) -> Result<()> {
        self.pending
            .shared(statements::WORKER_HEARTBEAT)
            .bind(now.0)
            .bind(worker.0)
            .done()
    }

    /// Rows that change the same columns are written by one statement
    /// (a claim's tasks, a completion's: most of a turn): the values they
    /// share bound once, the ids as one list, the values that differ row
    /// by row (a completion's start times) through `UPDATE … FROM (VALUES
    /// …)`. Bound whole row by row (fifteen values each), a turn of 100
    /// reports and 100 claims cost 23% more in SQLite alone
    /// (`sqlite_floor`, 80k against 104k tasks/s), and each value is a
    /// hand-off through sqlx's arguments. A row alone in its group is
    /// written whole.
    async fn tasks_write(&mut self, rows: &[TaskWrite<'_>]) -> Result<()> {
        let mut groups: BTreeMap<u16, Vec<(&TaskWrite<'_>, Vec<Value>)>> = BTreeMap::new();
        for t in rows.iter().filter(|t| t.changed != 0) {
            groups
                .entry(t.changed)
                .or_default()
                .push((t, changed_values(t)));
        }
        let mut whole: Vec<&TaskWrite<'_>> = Vec::new();
        for (mask, members) in groups {
            let columns: Vec<&str> = TaskWrite::COLUMNS
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & 1 << i != 0)
                .map(|(_, c)| *c)
                .collect();
            let shared: Vec<bool> = (0..columns.len())
                .map(|k| members.iter().all(|(_, v)| v[k] == members[0].1[k]))
                .collect();
            let width = 1 + shared.iter().filter(|s| !**s).count();
            let per_statement = (MAX_PARAMETERS / width).min(ROWS_PER_STATEMENT);
            if members.len() == 1 || (width > 1 && members.len() > per_statement) {
                whole.extend(members.iter().map(|(t, _)| *t));
                continue;
            }
            let script = &mut self.pending;
            script.sql.push_str("UPDATE tasks SET ");
            let mut from = 1;
            for (k, column) in columns.iter().enumerate() {
                if k > 0 {
                    script.sql.push_str(", ");
                }
                script.sql.push_str(column);
                if shared[k] {
                    script.sql.push_str(" = ");
                    script.bind(members[0].1[k].clone())?;
                } else {
                    from += 1;
                    script.sql.push_str(" = j.column");
                    script.sql.push_str(&from.to_string());
                }
            }
            if width == 1 {
                script
                    .sql
                    .push_str(" WHERE id IN (SELECT value FROM json_each(");
                script.bind(id_list(members.iter().map(|(t, _)| t.id)))?;
                script.sql.push_str("))");
            } else {
                script.bind_rows(members.into_iter().map(|(t, values)| {
                    let varying = values.into_iter().zip(&shared).filter(|(_, s)| !**s);
                    std::iter::once(Value::Int(t.id)).chain(varying.map(|(v, _)| v))
                }))?;
                script.sql.push_str(" WHERE tasks.id = j.column1");
            }
            script.end();
        }
        self.tasks_write_whole(&whole).await
    }

    async fn upstream(&mut self, ids: &[TaskId]) -> Result<Vec<UpstreamRow>> {
        let ids = id_list(ids.iter().map(|t| t.0));
        let rows = self
            .read_one(|s| s.shared(UPSTREAM).bind(ids).done())
            .await?;
        rows.iter().map(upstream_row).collect()
    }

    async fn outputs_write(&mut self, rows: &[(TaskId, String)]) -> Result<()> {
        self.values(
            "UPDATE tasks SET output = j.column2 FROM (",
            ") AS j WHERE tasks.id = j.column1",
            rows,
            2,
            |s, (task, output)| row!(s; task.0, output),
        )
        .await
    }

    /// Values that every row shares (a turn's attempts mostly ended alike:
    /// the same worker, outcome, exit code, no error) are bound once and
    /// selected with the rows that carry the rest.
    async fn attempts_end(&mut self, rows: &[AttemptEnd]) -> Result<()> {
        const INSERT: &str = "INSERT INTO attempts (task_id, attempt, worker_id, started_at, \
             finished_at, outcome, reason, exit_code, error, stdout_tail, stderr_tail, \
             compressed, stdout_total, stderr_total)";
        let values: Vec<[Value; 14]> = rows.iter().map(attempt_values).collect();
        let shared: [bool; 14] =
            std::array::from_fn(|k| values.iter().all(|v| v[k] == values[0][k]));
        let width = shared.iter().filter(|s| !**s).count();
        let per_statement = (MAX_PARAMETERS / width.max(1)).min(ROWS_PER_STATEMENT);
        if rows.len() < 2 || width == shared.len() || rows.len() > per_statement {
            return self
                .values(INSERT, "", &values, 14, |s, v| {
                    for (k, value) in v.iter().enumerate() {
                        if k > 0 {
                            s.sql.push_str(", ");
                        }
                        s.bind(value.clone())?;
                    }
                    Ok(())
                })
                .await;
        }
        let script = &mut self.pending;
        script.sql.push_str(INSERT);
        script.sql.push_str(" SELECT ");
        let mut from = 0;
        for (k, is_shared) in shared.iter().enumerate() {
            if k > 0 {
                script.sql.push_str(", ");
            }
            if *is_shared {
                script.bind(values[0][k].clone())?;
            } else {
                from += 1;
                script.sql.push_str("j.column");
                script.sql.push_str(&from.to_string());
            }
        }
        script.bind_rows(values.into_iter().map(|row| {
            let varying = row.into_iter().zip(shared).filter(|(_, s)| !s);
            varying.map(|(v, _)| v)
        }))?;
        script.end();
        Ok(())
    }

    /// Everything waits for the commit, sent with it in one round trip:
    /// the event sequence is taken there too, and the events numbered from
    /// it in SQL.
    async fn write_all(&mut self, set: WriteSet<'_>) -> Result<Option<u64>> {
        if !set.tasks.is_empty() {
            self.tasks_write(&set.tasks).await?;
        }
        for b in &set.batches {
            self.batch_write(b).await?;
        }
        if !set.attempts_ended.is_empty() {
            self.attempts_end(set.attempts_ended).await?;
        }
        if !set.outputs.is_empty() {
            self.outputs_write(set.outputs).await?;
        }
        if set.events.is_empty() {
            return Ok(Some(0));
        }
        let n = set.event_count;
        self.pending.shared(SEQ_ADVANCE).bind(n as i64).done()?;
        // Numbered from the sequence just taken: its row is this
        // transaction's until the commit.
        let head = format!(
            "INSERT INTO events (seq, last_seq, at, batch_id, body) \
             SELECT (SELECT next_seq FROM herd_meta WHERE id = 1) - {n} + column1, \
             (SELECT next_seq FROM herd_meta WHERE id = 1) - {n} + column1 + column2 - 1, \
             column3, column4, column5 FROM ("
        );
        self.values(
            &head,
            ")",
            &set.events,
            5,
            |s, e| row!(s; e.seq, e.n, e.at, e.b, e.body.as_str()),
        )
        .await?;
        // The first number, read back with the commit.
        self.seq_at = Some((self.pending.statements, n));
        self.pending.plain(SEQ_NEXT);
        Ok(None)
    }
}

/// Batch rows that may repeat, each decoded once, by id.
fn distinct_batches(rows: &[SqliteRow]) -> Result<BTreeMap<BatchId, BatchRow>> {
    let mut batches = BTreeMap::new();
    for r in rows {
        let id = BatchId(r.int("id")?);
        if let std::collections::btree_map::Entry::Vacant(e) = batches.entry(id) {
            e.insert(batch_row(r)?);
        }
    }
    Ok(batches)
}

/// Queued tasks with their payloads, in queue order within each batch.
fn sorted_heads(rows: &[SqliteRow]) -> Result<Vec<(TaskRow, String)>> {
    let mut heads = rows
        .iter()
        .map(|r| Ok((packed_task_row(r)?, r.text("payload")?)))
        .collect::<Result<Vec<_>>>()?;
    heads.sort_by_key(|(t, _)| (t.batch, std::cmp::Reverse(t.priority), t.ready_seq));
    Ok(heads)
}

/// The row of [`SERVED_AND_DUE`].
fn served_and_due(rows: &[SqliteRow]) -> Result<(i64, Option<Timestamp>)> {
    let row = rows
        .first()
        .ok_or_else(|| script_error("served_and_due returned no row"))?;
    Ok((row.int_at(0)?, row.opt_int_at(1)?.map(Timestamp)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row as _;

    /// The hot statements read tasks by primary key or through the
    /// partial indexes, and take ids from `json_each` in an outer loop:
    /// none loops over a batch's tasks, whose finished ones pile up.
    /// SQLite plans them without statistics (herd runs no `ANALYZE`).
    #[tokio::test]
    async fn hot_plans() {
        let dir = tempfile::tempdir().unwrap();
        let location = format!("sqlite:{}", dir.path().join("plans.db").display());
        let store = SqliteStore::<String, String>::open(&location)
            .await
            .unwrap();
        // A group of task writes (`tasks_write`), one of its shapes.
        let grouped = "UPDATE tasks SET state = $1, lease_until = $2 \
                       WHERE id IN (SELECT value FROM json_each($3))";
        let hot: [&str; 16] = [
            grouped,
            &statements::CLAIM_SCAN,
            statements::CLAIM_SCAN_ONE,
            &CLAIM_BATCHES[0],
            &CLAIM_BATCHES[1],
            &HEADS_OF,
            &HEADS_AHEAD,
            SERVED_AND_DUE,
            &TASKS_GET,
            &BATCHES_OF_TASKS,
            &BATCHES_BY_ID,
            &TASKS_DEPENDENTS,
            UPSTREAM,
            TASK_WRITE,
            statements::BATCH_WRITE,
            statements::TASKS_LEASE_EXPIRED,
        ];
        for sql in hot {
            let sql = Positional::of(sql).sql;
            let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
                .fetch_all(store.pool())
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>("detail"))
                .collect();
            if std::env::var_os("HERD_SHOW_PLANS").is_some() {
                eprintln!("{sql}\n{}\n", plan.join("\n"));
            }
            // A claim ranks batches by reading their index in rank order
            // (up to its limit), never every live batch.
            if sql.contains("ORDER BY b.head_priority DESC") {
                assert!(
                    plan.iter()
                        .any(|line| line.contains(" b USING INDEX batches_ranked")),
                    "{sql}\n{}",
                    plan.join("\n")
                );
            }
            let scans = |line: &&String| {
                let allowed = [
                    "SCAN j VIRTUAL TABLE",
                    "SCAN CONSTANT ROW",
                    // The ids of a group of task writes.
                    "SCAN json_each VIRTUAL TABLE",
                ];
                let ranked = line.contains("USING INDEX batches_ranked");
                // The claim's ranked batches, at most its limit of them.
                let chosen = line.as_str() == "SCAN c";
                (line.starts_with("SCAN ")
                    && !ranked
                    && !chosen
                    && !allowed.iter().any(|a| line.starts_with(a)))
                    || line.contains("sqlite_autoindex_tasks_1")
            };
            assert!(
                !plan.iter().any(|line| scans(&line)),
                "{sql}\n{}",
                plan.join("\n")
            );
        }
    }

    /// The change watch wakes the workers for another writer's commits,
    /// not for this process's own: a worker is not sent to renew its
    /// leases after every write of its own store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_wakes_for_other_writers_only() {
        let dir = tempfile::tempdir().unwrap();
        let location = format!("sqlite:{}", dir.path().join("watch.db").display());
        let store = SqliteStore::<String, String>::open(&location)
            .await
            .unwrap();
        let other = SqliteStore::<String, String>::open(&location)
            .await
            .unwrap();
        // Let the watch read its first version.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!woken(&store, &store).await, "woken by its own commit");
        assert!(
            woken(&store, &other).await,
            "not woken by another writer's commit"
        );
    }

    /// Whether a write by `writer` wakes `store`'s workers (`control`).
    async fn woken(
        store: &SqliteStore<String, String>,
        writer: &SqliteStore<String, String>,
    ) -> bool {
        use herd_core::store::Store;
        let control = store.signals().control.notified();
        let mut control = std::pin::pin!(control);
        control.as_mut().enable();
        writer
            .worker_register("writer", 1, Timestamp(1))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_millis(500), control)
            .await
            .is_ok()
    }

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

    /// A large submit's full statements, kept prepared for its pieces
    /// (megabytes), are let go at its commit; a small write's stay.
    #[tokio::test]
    async fn large_writes_let_their_statements_go() {
        use herd_core::model::{BatchSpec, TaskSpec};
        use herd_core::store::Store;

        let dir = tempfile::tempdir().unwrap();
        let location = format!("sqlite:{}", dir.path().join("large.db").display());
        let store = SqliteStore::<String, String>::open(&location)
            .await
            .unwrap();
        let cached = || async {
            let writer = store.dialect.writer.lock().await;
            sqlx::Connection::cached_statements_size(&writer.conn)
        };
        let mut small = BatchSpec::new("f");
        small.tasks = vec![TaskSpec::new("one".to_string())];
        store.batch_insert(small, Timestamp(1)).await.unwrap();
        let after_small = cached().await;
        assert!(after_small > 0, "a small submit keeps its statements");
        let mut large = BatchSpec::new("f");
        large.tasks = (0..2_500).map(|i| TaskSpec::new(i.to_string())).collect();
        store.batch_insert(large, Timestamp(2)).await.unwrap();
        let after_large = cached().await;
        assert!(
            after_large < after_small,
            "{after_large} statements cached after a large submit, {after_small} after a small one"
        );
    }

    /// A task row packed into one text ([`TASK_PACKED`]) reads back as
    /// the same row as its 23 columns do, every field set or none that
    /// may be missing; a packed text with a field too many or too few, or
    /// one that does not parse, is reported as corrupt, not misread.
    #[tokio::test]
    async fn packed_task_rows_read_as_their_columns() {
        use herd_core::model::{BatchSpec, TaskSpec};
        use herd_core::store::Store;

        let dir = tempfile::tempdir().unwrap();
        let location = format!("sqlite:{}", dir.path().join("packed.db").display());
        let store = SqliteStore::<String, String>::open(&location)
            .await
            .unwrap();
        let mut spec = BatchSpec::new("f");
        let key = TaskSpec {
            key: Some("a key, with spaces".to_string()),
            ..TaskSpec::new("x".to_string())
        };
        spec.tasks = vec![key, TaskSpec::new("y".to_string())];
        store.batch_insert(spec, Timestamp(1)).await.unwrap();
        sqlx::query(
            "UPDATE tasks SET state = 'running', reason = 'exit_code(-3)', \
             message = 'it said: no', attempt = 4, first_attempt = 2, lost = 1, \
             worker_id = 7, lease_until = 99, started_at = -5, cancel_mode = 'graceful', \
             cancel_reason = 'by_user', run_at = 12, ready_seq = 3, priority = -2, cost = 6 \
             WHERE idx = 0",
        )
        .execute(store.pool())
        .await
        .unwrap();
        let by_columns = sqlx::query(&format!(
            "SELECT {} FROM tasks t ORDER BY t.id",
            crate::rows::TASK_COLUMNS
        ))
        .fetch_all(store.pool())
        .await
        .unwrap();
        let packed = sqlx::query(&format!("SELECT {TASK_PACKED} FROM tasks t ORDER BY t.id"))
            .fetch_all(store.pool())
            .await
            .unwrap();
        assert_eq!(packed.len(), 2);
        for (columns, packed) in by_columns.iter().zip(&packed) {
            let want = task_row(columns).unwrap();
            let got = packed_task_row(packed).unwrap();
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
        assert!(
            format!("{:?}", packed_task_row(&packed[0]).unwrap()).contains("ByUser"),
            "the first row has every field set"
        );

        let good: String = packed[1].get("p");
        let short = good.rsplit_once(' ').unwrap().0.to_owned();
        for bad in [
            format!("{good} 9"),
            short,
            good.replacen("queued", "queue", 1),
        ] {
            let row = sqlx::query(&format!(
                "SELECT '{bad}' AS p, NULL AS key, NULL AS message"
            ))
            .fetch_one(store.pool())
            .await
            .unwrap();
            let err = packed_task_row(&row).unwrap_err();
            let source = std::error::Error::source(&err).map(|e| e.to_string());
            assert!(
                source.as_deref().is_some_and(|s| s.contains("cannot read")),
                "{bad:?}: {err}: {source:?}"
            );
        }
    }
}
