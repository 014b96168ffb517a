//! The PostgreSQL dialect: many workers on many machines share one queue.
//!
//! Transactions lock the rows of the batches they touch (`FOR UPDATE`, in id
//! order) before their tasks, so that they never wait on each other in a
//! cycle; claims take queued heads `FOR UPDATE SKIP LOCKED`. Set statements
//! take row sets as one array per column (`UNNEST`) and ids as `= ANY($1)`
//! over an array: a claim or a
//! completion of a hundred tasks is four round trips (`BEGIN`, one statement
//! that reads and locks, one that writes, `COMMIT`). Idle workers wake on
//! `LISTEN`/`NOTIFY` instead of polling.

use std::str::FromStr;
use std::sync::LazyLock;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres as Db, Transaction};

use herd_core::model::{BatchId, StateCounts, TaskId, Timestamp, WorkerId};
use herd_core::store::{AttemptInfo, BatchQuery, Signals, TaskQuery, WorkerInfo};

use crate::OpenError;
use crate::logic::{
    AttemptEnd, BatchRow, ClaimOpen, ClaimScan, EventWrite, Heads, NewBatch, NewDep, NewTask,
    Opened, Result, TaskRow, TaskWrite, Tx, UpstreamRow, WriteSet, backend,
};
use crate::rows::{
    BATCH_COLUMNS, ListedTask, SqlRow, TASK_COLUMNS, attempt_row, batch_row, listed_task, task_row,
    upstream_row, worker_row,
};
use crate::statements::{self, bind_batch_row, bind_new_batch, json};
use crate::store::{Dialect, SqlStore};

/// herd's PostgreSQL migrations, embedded at build time.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// A herd store in a PostgreSQL database, shared by workers on many machines.
pub type PgStore<P = String, O = String> = SqlStore<Postgres, P, O>;

/// The PostgreSQL side of a [`PgStore`].
#[derive(Debug)]
pub struct Postgres {
    pool: PgPool,
    location: String,
    /// NOTIFY channels, named after the schema so that stores in other
    /// schemas of the same database do not wake this one.
    work_channel: String,
    control_channel: String,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl<P, O> SqlStore<Postgres, P, O> {
    /// Connects to the database at `url` (`postgres://USER@HOST:PORT/DB`),
    /// migrating it to the current schema in its default schema (`public`,
    /// or what the URL's `options=-c search_path=…` names).
    pub async fn connect(url: &str) -> std::result::Result<Self, OpenError> {
        Self::connect_in(url, None).await
    }

    /// Connects as [`connect`](Self::connect), keeping herd's tables in
    /// `schema` (created if missing): several stores in one database.
    pub async fn connect_in_schema(
        url: &str,
        schema: &str,
    ) -> std::result::Result<Self, OpenError> {
        Self::connect_in(url, Some(schema)).await
    }

    async fn connect_in(url: &str, schema: Option<&str>) -> std::result::Result<Self, OpenError> {
        let location = shown(url);
        let options = parse(url)?;
        let open = |source| OpenError::Open {
            location: location.clone(),
            source,
        };
        if let Some(schema) = schema {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
                .await
                .map_err(open)?;
            sqlx::query(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                schema.replace('"', "\"\"")
            ))
            .execute(&pool)
            .await
            .map_err(|e| read_only_or(e, &location))?;
            pool.close().await;
        }
        let options = match schema {
            Some(schema) => options.options([("search_path", schema)]),
            None => options,
        };
        // herd's statements reach rows by key or through partial indexes, by
        // design. A queue's tables grow and churn faster than their
        // statistics: with stale ones, the planner takes a freshly filled
        // table for a small one and hash-joins a scan of it into every
        // claim and completion (measured: a 100-task claim spent most of its
        // time scanning). Without scans and hash or merge joins to choose
        // from, it looks rows up by index whatever the statistics say.
        //
        // The same statements run thousands of times a second with
        // parameters of the same shape (id arrays, row sets as arrays): planned
        // once per connection (`force_generic_plan`) rather than again at
        // every execution (measured on a loaded machine: 0.2-0.3 ms per bind
        // of each of the claim's reads, 0.8 ms per bind of a 100-task
        // write-back; 0.03-0.08 ms once planned).
        // The plans are the index plans a test checks under the same
        // setting. Without scans to choose from, a statement that must scan
        // after all is costed above `jit_above_cost` and compiled (in psql,
        // a 100-row update reading a scanned temporary table: 300 ms, nearly
        // all of it JIT): no JIT.
        let options = options.options([
            ("enable_seqscan", "off"),
            ("enable_hashjoin", "off"),
            ("enable_mergejoin", "off"),
            ("plan_cache_mode", "force_generic_plan"),
            ("jit", "off"),
        ]);
        // No ping before each use of a pooled connection: a round trip per
        // operation. sqlx still pings a connection when it goes back to the
        // pool, off the operation's path, and drops it if it died.
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(open)?;
        let current: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await?;
        check_version(&pool, &location).await?;
        MIGRATOR.run(&pool).await.map_err(|source| match &source {
            sqlx::migrate::MigrateError::Execute(e) if is_read_only(e) => OpenError::ReadOnly {
                location: location.clone(),
            },
            _ => OpenError::Migrate {
                location: location.clone(),
                source,
            },
        })?;
        let work_channel = channel("herd_work", &current);
        let control_channel = channel("herd_control", &current);
        // The listener holds a connection of the pool until the pool closes,
        // then ends (see `listen`), so closing the pool does not wait for it
        // (a test checks).
        let mut listener = PgListener::connect_with(&pool).await?;
        listener
            .listen_all([work_channel.as_str(), control_channel.as_str()])
            .await?;
        let signals = Arc::new(Signals::default());
        let listener = tokio::spawn(listen(
            listener,
            Arc::downgrade(&signals),
            control_channel.clone(),
        ));
        let postgres = Postgres {
            pool,
            location,
            work_channel,
            control_channel,
            listener,
        };
        Ok(SqlStore::with_dialect(postgres, signals))
    }

    /// The schema version of the database (0 before the first migration).
    pub async fn schema_version(&self) -> std::result::Result<i64, OpenError> {
        schema_version(&self.dialect.pool).await
    }

    /// The connection pool, for reading the store directly.
    pub fn pool(&self) -> &PgPool {
        &self.dialect.pool
    }

    /// Where the store is, without its password.
    pub fn location(&self) -> &str {
        &self.dialect.location
    }
}

/// The NOTIFY channel `prefix` of the store in `schema`: `prefix:schema`,
/// or a hash of the schema's name where that would pass PostgreSQL's limit
/// of 63 bytes.
fn channel(prefix: &str, schema: &str) -> String {
    let name = format!("{prefix}:{schema}");
    if name.len() <= 63 {
        return name;
    }
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let hash = schema.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{prefix}:{hash:016x}")
}

/// Wakes this process's workers on the store's NOTIFY channels.
async fn listen(mut listener: PgListener, signals: Weak<Signals>, control: String) {
    loop {
        let notification = listener.recv().await;
        let Some(signals) = signals.upgrade() else {
            return;
        };
        match notification {
            Ok(n) if n.channel() == control => signals.control.notify_waiters(),
            Ok(_) => signals.work.notify_waiters(),
            // The pool is closing: give the connection back, or the close
            // waits for it forever (PgListener keeps it on this error).
            Err(sqlx::Error::PoolClosed) => return,
            Err(_) => {
                // The connection was lost: PgListener reconnects on the next
                // call. Meanwhile wake everyone, in case a notice was missed.
                signals.work.notify_waiters();
                signals.control.notify_waiters();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The URL without its password, for messages.
fn shown(url: &str) -> String {
    match url::split_password(url) {
        Some((before, after)) => format!("{before}***{after}"),
        None => url.to_owned(),
    }
}

mod url {
    /// Splits `scheme://user:password@host…` around the password.
    pub fn split_password(url: &str) -> Option<(&str, &str)> {
        let scheme_end = url.find("://")? + 3;
        let at = scheme_end + url[scheme_end..].find('@')?;
        let colon = scheme_end + url[scheme_end..at].find(':')?;
        Some((&url[..=colon], &url[at..]))
    }
}

pub(crate) fn parse(url: &str) -> std::result::Result<PgConnectOptions, OpenError> {
    let unknown = || OpenError::UnknownKind {
        location: shown(url),
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(unknown());
    }
    PgConnectOptions::from_str(url).map_err(|_| unknown())
}

async fn schema_version(pool: &PgPool) -> std::result::Result<i64, OpenError> {
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(pool)
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

async fn check_version(pool: &PgPool, location: &str) -> std::result::Result<(), OpenError> {
    let found = schema_version(pool).await?;
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    if found > known {
        return Err(OpenError::NewerSchema {
            location: location.to_owned(),
            found,
            known,
        });
    }
    Ok(())
}

/// SQLSTATE 25006: a write in a read-only transaction (a standby, or
/// `default_transaction_read_only`).
fn is_read_only(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("25006"))
}

fn read_only_or(error: sqlx::Error, location: &str) -> OpenError {
    if is_read_only(&error) {
        OpenError::ReadOnly {
            location: location.to_owned(),
        }
    } else {
        OpenError::Query(error)
    }
}

// The hot statements that read rows, formatted once.
static BATCHES_LOCK: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ANY($1) ORDER BY id FOR UPDATE")
});

/// The batches `$1` and those of the tasks `$2`, locked in id order.
static BATCHES_LOCK_WITH_TASKS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE id = ANY(ARRAY( \
             SELECT unnest($1::bigint[]) UNION SELECT batch_id FROM tasks WHERE id = ANY($2))) \
             ORDER BY id FOR UPDATE"
    )
});

static TASKS_GET: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE t.id = ANY($1)"));

static TASKS_DEPENDENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT d.upstream_id AS upstream, {TASK_COLUMNS} FROM task_deps d \
             JOIN tasks t ON t.id = d.task_id \
             WHERE d.upstream_id = ANY($1) AND t.state = 'pending'"
    )
});

/// A transaction's first reads in one round trip ([`Tx::open`]): with a
/// claim, its scan (`scan`, the rows of `scan_sql`, whose placeholders are
/// `$1` and `$2`); the batches to lock (the scan's and those of the tasks
/// `$3`), locked in id order; then the tasks `$3`, locked too; then, with a
/// claim, up to `$4` queued heads of each batch locked that could start
/// one (and that is `$2` if `only`), `FOR UPDATE SKIP LOCKED`, and the
/// claim's served tick and next due time.
///
/// One statement runs on one snapshot, taken before it waits for a batch
/// lock: the rows it only reads may be older than the locks. The batches
/// and tasks are locked, and a row locked is read as its newest version;
/// the heads are locked too. The tasks and heads are locked only once
/// every batch is (the gate `(SELECT count(*) FROM locked) >= 0` runs
/// first), so locks are still taken batches first, in id order.
///
/// One row per result, told apart by `kind`: `h` a head (task columns and
/// `payload`), `b` a batch locked (batch columns prefixed `b_`, with
/// `x_claimable` and `x_deadline` from the scan), `d` a retry due
/// (`x_task`, `x_batch`), `t` a task asked for, `s` the served tick and
/// next due time (`x_served`, `x_due`). With a claim, in a fixed order:
/// heads in queue order, batches (past deadlines among them) and due
/// retries in id order.
fn open_sql(scan_sql: Option<(&str, bool)>) -> String {
    let batch_columns: Vec<&str> = BATCH_COLUMNS.split(", ").collect();
    let task_count = TASK_COLUMNS.split(", ").count();
    let no_batch: Vec<String> = batch_columns
        .iter()
        .map(|c| format!("(NULL::batches).{c} AS b_{c}"))
        .collect();
    let no_batch = no_batch.join(", ");
    let no_task = vec!["NULL"; task_count + 1].join(", ");
    let batch: Vec<String> = batch_columns.iter().map(|c| format!("b.{c}")).collect();
    let batch = batch.join(", ");
    let nulls = |n: usize| vec!["NULL"; n].join(", ");
    // Without a claim, the tasks are `$1`.
    let ids = if scan_sql.is_some() { "$3" } else { "$1" };
    let mut sql = String::from("WITH ");
    let scanned = match scan_sql {
        Some((scan, _)) => {
            sql.push_str(&format!("scan(kind, id, batch) AS MATERIALIZED ({scan}), "));
            "SELECT batch FROM scan UNION "
        }
        None => "",
    };
    sql.push_str(&format!(
        "locked AS MATERIALIZED ( \
           SELECT * FROM batches WHERE id = ANY(ARRAY( \
             {scanned}SELECT batch_id FROM tasks WHERE id = ANY({ids}))) \
           ORDER BY id FOR UPDATE), \
         loaded AS MATERIALIZED ( \
           SELECT {TASK_COLUMNS} FROM tasks t \
           WHERE t.id = ANY({ids}) AND (SELECT count(*) FROM locked) >= 0 \
           FOR UPDATE)"
    ));
    match scan_sql {
        Some((_, only)) => {
            let only = if only { "AND b.id = $2 " } else { "" };
            sql.push_str(&format!(
                ", heads AS MATERIALIZED ( \
                   SELECT h.* FROM locked b CROSS JOIN LATERAL ( \
                     SELECT {TASK_COLUMNS}, t.payload FROM tasks t \
                     WHERE t.batch_id = b.id AND t.state = 'queued' \
                     ORDER BY t.priority DESC, t.ready_seq LIMIT $4 \
                     FOR UPDATE SKIP LOCKED) AS h \
                   WHERE b.finished_at IS NULL AND b.n_queued > 0 AND NOT b.paused \
                     AND b.stopped IS NULL {only}\
                     AND (SELECT count(*) FROM locked) >= 0) \
                 SELECT 'h' AS kind, {TASK_COLUMNS}, t.payload, {no_batch}, \
                   NULL::boolean AS x_claimable, NULL::boolean AS x_deadline, \
                   NULL::bigint AS x_task, NULL::bigint AS x_batch, \
                   NULL::bigint AS x_served, NULL::bigint AS x_due FROM heads t \
                 UNION ALL \
                 SELECT 'b', {no_task}, {batch}, \
                   EXISTS (SELECT 1 FROM scan s WHERE s.kind = 'claimable' AND s.id = b.id), \
                   EXISTS (SELECT 1 FROM scan s WHERE s.kind = 'deadline' AND s.id = b.id), \
                   NULL, NULL, NULL, NULL FROM locked b \
                 UNION ALL \
                 SELECT 'd', {no_task}, {nb}, NULL, NULL, s.id, s.batch, NULL, NULL \
                   FROM scan s WHERE s.kind = 'due' \
                 UNION ALL \
                 SELECT 't', {TASK_COLUMNS}, NULL, {nb}, NULL, NULL, NULL, NULL, NULL, NULL \
                   FROM loaded t \
                 UNION ALL \
                 SELECT 's', {no_task}, {nb}, NULL, NULL, NULL, NULL, \
                   (SELECT COALESCE(MAX(last_served), 0) FROM batches)::bigint, \
                   LEAST((SELECT MIN(run_at) FROM tasks WHERE state = 'retry_wait'), \
                     (SELECT MIN(deadline) FROM batches \
                      WHERE deadline IS NOT NULL AND finished_at IS NULL)) \
                 ORDER BY kind, batch_id, priority DESC, ready_seq, b_id, x_task",
                nb = nulls(batch_columns.len()),
            ));
        }
        None => {
            sql.push_str(&format!(
                " SELECT 't' AS kind, {TASK_COLUMNS}, NULL::text AS payload, {no_batch} \
                   FROM loaded t \
                 UNION ALL \
                 SELECT 'b', {no_task}, {batch} FROM locked b"
            ));
        }
    }
    sql
}

/// [`open_sql`] without a claim: the tasks `$1` and their batches.
static OPEN: LazyLock<String> = LazyLock::new(|| open_sql(None));

/// [`open_sql`] for a claim from any batch: the ranked scan, limit `$2`.
static OPEN_CLAIM: LazyLock<String> =
    LazyLock::new(|| open_sql(Some((&statements::CLAIM_SCAN, false))));

/// [`open_sql`] for a claim from the batch `$2` alone.
static OPEN_CLAIM_ONE: LazyLock<String> =
    LazyLock::new(|| open_sql(Some((statements::CLAIM_SCAN_ONE, true))));

/// A batch's columns in a row of [`open_sql`], read under their own names.
struct BatchColumns<'r>(&'r sqlx::postgres::PgRow);

impl BatchColumns<'_> {
    fn get<'r, T>(&'r self, column: &str) -> Result<T>
    where
        T: sqlx::Decode<'r, Db> + sqlx::Type<Db>,
    {
        sqlx::Row::try_get(self.0, format!("b_{column}").as_str()).map_err(backend)
    }
}

impl SqlRow for BatchColumns<'_> {
    fn int(&self, column: &'static str) -> Result<i64> {
        self.get(column)
    }
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>> {
        self.get(column)
    }
    fn text(&self, column: &'static str) -> Result<String> {
        self.get(column)
    }
    fn opt_text(&self, column: &'static str) -> Result<Option<String>> {
        self.get(column)
    }
    fn flag(&self, column: &'static str) -> Result<bool> {
        self.get(column)
    }
    fn opt_blob(&self, column: &'static str) -> Result<Option<Vec<u8>>> {
        self.get(column)
    }
    fn with_text<R>(&self, column: &'static str, f: impl FnOnce(&str) -> R) -> Result<R> {
        let text: &str = self.get(column)?;
        Ok(f(text))
    }
    fn int_at(&self, i: usize) -> Result<i64> {
        self.0.int_at(i)
    }
    fn opt_int_at(&self, i: usize) -> Result<Option<i64>> {
        self.0.opt_int_at(i)
    }
    fn text_at(&self, i: usize) -> Result<String> {
        self.0.text_at(i)
    }
}

/// Row sets go to PostgreSQL one typed array per column, read back with
/// `UNNEST` ([`sql::unnest`]): it decodes binary arrays far faster than it
/// parses JSON. `jsonb_to_recordset` of a worker turn's 200 task rows took
/// 0.9 ms of a 3 ms write.
fn add<'q, T>(args: &mut PgArguments, value: T) -> Result<()>
where
    T: sqlx::Encode<'q, Db> + sqlx::Type<Db> + 'q,
{
    sqlx::Arguments::add(args, value).map_err(|e| backend(sqlx::Error::Encode(e)))
}

/// One field of every row.
fn column<'r, R, T>(rows: &'r [R], field: impl Fn(&'r R) -> T) -> Vec<T> {
    rows.iter().map(field).collect()
}

/// Binds the [`sql::TASK_WRITE`] columns of `rows`.
fn add_task_writes(args: &mut PgArguments, rows: &[TaskWrite<'_>]) -> Result<()> {
    add(args, column(rows, |t| t.id))?;
    add(args, column(rows, |t| t.s))?;
    add(args, column(rows, |t| t.r.as_deref()))?;
    add(args, column(rows, |t| t.m))?;
    add(args, column(rows, |t| i64::from(t.a)))?;
    add(args, column(rows, |t| i64::from(t.fa)))?;
    add(args, column(rows, |t| i64::from(t.l)))?;
    add(args, column(rows, |t| t.w))?;
    add(args, column(rows, |t| t.lu))?;
    add(args, column(rows, |t| t.st))?;
    add(args, column(rows, |t| t.cm))?;
    add(args, column(rows, |t| t.cr.as_deref()))?;
    add(args, column(rows, |t| t.ra))?;
    add(args, column(rows, |t| t.rs))?;
    add(args, column(rows, |t| i64::from(t.d)))?;
    add(args, column(rows, |t| t.o))?;
    add(args, column(rows, |t| t.batch))?;
    add(args, column(rows, |t| i64::from(t.priority)))?;
    add(args, column(rows, |t| i64::from(t.cost)))
}

/// Binds the [`sql::ATTEMPT_END`] columns of `rows`.
fn add_attempt_ends(args: &mut PgArguments, rows: &[AttemptEnd]) -> Result<()> {
    add(args, column(rows, |e| e.t))?;
    add(args, column(rows, |e| i64::from(e.a)))?;
    add(args, column(rows, |e| e.w))?;
    add(args, column(rows, |e| e.st))?;
    add(args, column(rows, |e| e.at))?;
    add(args, column(rows, |e| e.o))?;
    add(args, column(rows, |e| e.r.as_deref()))?;
    add(args, column(rows, |e| e.x.map(i64::from)))?;
    add(args, column(rows, |e| e.e.as_deref()))?;
    add(args, column(rows, |e| e.so.as_deref()))?;
    add(args, column(rows, |e| e.se.as_deref()))?;
    add(args, column(rows, |e| e.z))?;
    add(args, column(rows, |e| e.ot))?;
    add(args, column(rows, |e| e.et))
}

/// Binds the [`sql::EVENT`] columns of `rows`.
fn add_events(args: &mut PgArguments, rows: &[EventWrite]) -> Result<()> {
    add(args, column(rows, |e| e.seq))?;
    add(args, column(rows, |e| e.n))?;
    add(args, column(rows, |e| e.at))?;
    add(args, column(rows, |e| e.b))?;
    add(args, column(rows, |e| e.body.as_str()))
}

/// Binds the [`sql::BATCH_WRITE`] columns of `rows`, each with its policy
/// as JSON when it changed (`policies`, in the same order).
fn add_batch_writes(
    args: &mut PgArguments,
    rows: &[&BatchRow],
    policies: &[Option<String>],
) -> Result<()> {
    let count = |n: fn(&StateCounts) -> u64| column(rows, move |b| n(&b.counts) as i64);
    add(args, column(rows, |b| b.id.0))?;
    add(args, column(rows, |b| b.state.as_str()))?;
    add(args, column(rows, |b| b.deadline.map(|d| d.0)))?;
    add(args, column(rows, |b| b.open))?;
    add(args, column(rows, |b| b.paused))?;
    add(args, column(rows, |b| b.stopped.map(|r| r.to_string())))?;
    add(args, column(rows, |b| b.cancelled))?;
    add(args, column(rows, |b| b.failed_by_policy))?;
    add(args, column(rows, |b| i64::from(b.running_cost)))?;
    add(args, column(rows, |b| b.last_served))?;
    add(args, column(rows, |b| b.next_index as i64))?;
    add(args, column(rows, |b| b.next_ready))?;
    add(args, count(|c| c.pending))?;
    add(args, count(|c| c.queued))?;
    add(args, count(|c| c.running))?;
    add(args, count(|c| c.retry_wait))?;
    add(args, count(|c| c.succeeded))?;
    add(args, count(|c| c.failed))?;
    add(args, count(|c| c.cancelled))?;
    add(args, count(|c| c.skipped))?;
    add(args, column(rows, |b| b.retries as i64))?;
    add(args, column(rows, |b| b.durations.as_deref()))?;
    add(args, column(rows, |b| b.started_at.map(|t| t.0)))?;
    add(args, column(rows, |b| b.finished_at.map(|t| t.0)))?;
    add(args, column(policies, |p| p.as_deref()))?;
    add(args, column(rows, |b| b.queue_changed()))
}

/// Binds the [`sql::NEW_TASK`] columns of `rows`.
fn add_new_tasks(args: &mut PgArguments, rows: &[NewTask]) -> Result<()> {
    add(args, column(rows, |t| t.id))?;
    add(
        args,
        column(rows, |t| i64::try_from(t.index).unwrap_or(i64::MAX)),
    )?;
    add(args, column(rows, |t| t.key.as_deref()))?;
    add(args, column(rows, |t| i64::from(t.priority)))?;
    add(args, column(rows, |t| i64::from(t.cost)))?;
    add(args, column(rows, |t| t.payload.as_str()))?;
    add(args, column(rows, |t| t.state))?;
    add(args, column(rows, |t| t.ready_seq))?;
    add(args, column(rows, |t| i64::from(t.deps_left)))?;
    add(args, column(rows, |t| t.rule))?;
    add(args, column(rows, |t| i64::from(t.dependents)))?;
    add(args, column(rows, |t| i64::from(t.upstream)))
}

/// The hot statements, kept apart so that a test can check their plans.
mod sql {
    use std::sync::LazyLock;

    use crate::rows::TASK_COLUMNS;

    /// Everything a transaction writes at its end, in one round trip: task
    /// rows (with outputs), batch rows, attempts that ended, events
    /// numbered from the sequence row (locked until commit), notifications.
    /// Every part reads the tables as they were before the statement, so a
    /// batch whose queue changed ([`BatchRow::queue_changed`]) takes its new
    /// head (its first queued task's priority and cost) from two places:
    /// its queued tasks not written here (the written ones left out through
    /// a hashed subplan, not a scan of the array per task), and the written
    /// ones queued now, with their new places. Its row is locked, so no
    /// other transaction changes its queue meanwhile.
    /// Data-modifying CTEs all run; the notifications are selected so that
    /// they run too. Parameters: the task columns ([`TASK_WRITE`]), the
    /// batch columns ([`BATCH_WRITE`]), the attempt columns
    /// ([`ATTEMPT_END`]), the event columns ([`EVENT`]), the event count,
    /// the two channels. The batch ids are also an index condition on
    /// `batches` whatever the join order (a generic plan made while the
    /// table held one row walked all of it, joined to the batch rows, and
    /// kept doing so as batches piled up).
    pub(super) static WRITE_ALL: LazyLock<String> = LazyLock::new(|| {
        let tasks = 1;
        let batches = tasks + TASK_WRITE.len();
        let attempts = batches + BATCH_WRITE.len();
        let events = attempts + ATTEMPT_END.len();
        let count = events + EVENT.len();
        format!(
            "WITH tw AS ({update} RETURNING 1), \
             bw AS ( \
               UPDATE batches AS b SET state = j.state, deadline = j.deadline, open = j.open, \
                 paused = j.paused, stopped = j.stopped, cancelled = j.cancelled, \
                 failed_by_policy = j.failed_by_policy, running_cost = j.running_cost, \
                 last_served = j.last_served, next_index = j.next_index, \
                 next_ready = j.next_ready, n_pending = j.n_pending, n_queued = j.n_queued, \
                 n_running = j.n_running, n_retry_wait = j.n_retry_wait, \
                 n_succeeded = j.n_succeeded, n_failed = j.n_failed, \
                 n_cancelled = j.n_cancelled, n_skipped = j.n_skipped, retries = j.retries, \
                 durations = j.durations, started_at = j.started_at, \
                 finished_at = j.finished_at, policy = COALESCE(j.policy, b.policy), \
                 (head_priority, head_cost) = (SELECT x.priority, x.cost FROM ( \
                   SELECT b.head_priority AS priority, b.head_cost AS cost, NULL::bigint AS rs \
                   WHERE NOT j.qc \
                   UNION ALL \
                   (SELECT t.priority, t.cost, t.ready_seq FROM tasks t \
                    WHERE j.qc AND t.batch_id = j.id AND t.state = 'queued' \
                      AND t.id NOT IN (SELECT u.id FROM UNNEST(${ids}::bigint[]) AS u(id)) \
                    ORDER BY t.priority DESC, t.ready_seq LIMIT 1) \
                   UNION ALL \
                   SELECT w.p, w.c, w.rs FROM {written} \
                   WHERE j.qc AND w.b = j.id AND w.s = 'queued' \
                 ) x ORDER BY x.priority DESC, x.rs LIMIT 1) \
               FROM {batch_rows} \
               WHERE b.id = j.id AND b.id = ANY(${batches}::bigint[]) RETURNING 1), \
             ended AS ({insert} RETURNING 1), \
             seq AS ( \
               UPDATE herd_meta SET next_seq = next_seq + ${count} WHERE id = 1 AND ${count} > 0 \
               RETURNING next_seq - ${count} AS first), \
             ev AS ( \
               INSERT INTO events (seq, last_seq, at, batch_id, body) \
               SELECT seq.first + j.seq, seq.first + j.seq + j.n - 1, j.at, j.b, j.body \
               FROM seq, {events} RETURNING 1), \
             woke AS (SELECT pg_notify(c, '') FROM unnest(ARRAY[${c1}, ${c2}]::text[]) AS c \
               WHERE c IS NOT NULL) \
             SELECT (SELECT first FROM seq) WHERE (SELECT count(*) FROM woke) >= 0",
            update = tasks_write(tasks),
            ids = tasks,
            written = unnest_as(tasks, TASK_WRITE, "w"),
            insert = attempts_end(attempts),
            events = unnest(events, EVENT),
            c1 = count + 1,
            c2 = count + 2,
            batch_rows = unnest(batches, BATCH_WRITE),
        )
    });

    /// Up to `$2` queued tasks of each batch in `$1`, in queue order.
    pub(super) static TASKS_READY: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT h.* FROM UNNEST($1::bigint[]) AS b(id) CROSS JOIN LATERAL ( \
               SELECT {TASK_COLUMNS}, t.payload FROM tasks t \
               WHERE t.batch_id = b.id AND t.state = 'queued' \
               ORDER BY t.priority DESC, t.ready_seq LIMIT $2 FOR UPDATE SKIP LOCKED) AS h \
             ORDER BY h.batch_id, h.priority DESC, h.ready_seq"
        )
    });

    /// A row set's columns: each is bound as one array of its type.
    pub(super) type Columns = &'static [(&'static str, &'static str)];

    /// The mutable columns of a task row written back ([`super::add_task_writes`]).
    pub(super) const TASK_WRITE: Columns = &[
        ("id", "bigint"),
        ("s", "text"),
        ("r", "text"),
        ("m", "text"),
        ("a", "bigint"),
        ("fa", "bigint"),
        ("l", "bigint"),
        ("w", "bigint"),
        ("lu", "bigint"),
        ("st", "bigint"),
        ("cm", "text"),
        ("cr", "text"),
        ("ra", "bigint"),
        ("rs", "bigint"),
        ("d", "bigint"),
        ("o", "text"),
        ("b", "bigint"),
        ("p", "bigint"),
        ("c", "bigint"),
    ];

    /// A batch row's mutable columns, written back
    /// ([`super::add_batch_writes`]): `qc` says whether its queue changed,
    /// so that its head is found again.
    pub(super) const BATCH_WRITE: Columns = &[
        ("id", "bigint"),
        ("state", "text"),
        ("deadline", "bigint"),
        ("open", "boolean"),
        ("paused", "boolean"),
        ("stopped", "text"),
        ("cancelled", "boolean"),
        ("failed_by_policy", "boolean"),
        ("running_cost", "bigint"),
        ("last_served", "bigint"),
        ("next_index", "bigint"),
        ("next_ready", "bigint"),
        ("n_pending", "bigint"),
        ("n_queued", "bigint"),
        ("n_running", "bigint"),
        ("n_retry_wait", "bigint"),
        ("n_succeeded", "bigint"),
        ("n_failed", "bigint"),
        ("n_cancelled", "bigint"),
        ("n_skipped", "bigint"),
        ("retries", "bigint"),
        ("durations", "bytea"),
        ("started_at", "bigint"),
        ("finished_at", "bigint"),
        ("policy", "text"),
        ("qc", "boolean"),
    ];

    /// An attempt's row at its end ([`super::add_attempt_ends`]).
    pub(super) const ATTEMPT_END: Columns = &[
        ("t", "bigint"),
        ("a", "bigint"),
        ("w", "bigint"),
        ("st", "bigint"),
        ("at", "bigint"),
        ("o", "text"),
        ("r", "text"),
        ("x", "bigint"),
        ("e", "text"),
        ("so", "bytea"),
        ("se", "bytea"),
        ("z", "boolean"),
        ("ot", "bigint"),
        ("et", "bigint"),
    ];

    /// An event row ([`super::add_events`]).
    pub(super) const EVENT: Columns = &[
        ("seq", "bigint"),
        ("n", "bigint"),
        ("at", "bigint"),
        ("b", "bigint"),
        ("body", "text"),
    ];

    /// A new task row ([`super::add_new_tasks`]).
    pub(super) const NEW_TASK: Columns = &[
        ("id", "bigint"),
        ("i", "bigint"),
        ("k", "text"),
        ("p", "bigint"),
        ("c", "bigint"),
        ("pl", "text"),
        ("s", "text"),
        ("rs", "bigint"),
        ("d", "bigint"),
        ("r", "text"),
        ("n", "bigint"),
        ("u", "bigint"),
    ];

    /// `UNNEST` of `columns`' arrays, the first bound at `$first`, as the
    /// row set `j`.
    pub(super) fn unnest(first: usize, columns: Columns) -> String {
        unnest_as(first, columns, "j")
    }

    /// [`unnest`] as the row set `alias`.
    pub(super) fn unnest_as(first: usize, columns: Columns, alias: &str) -> String {
        let arrays: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("${}::{ty}[]", first + i))
            .collect();
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        format!(
            "UNNEST({}) AS {alias}({})",
            arrays.join(", "),
            names.join(", ")
        )
    }

    /// Writes back the mutable columns of changed task rows, their
    /// [`TASK_WRITE`] columns bound from `$first`.
    pub(super) fn tasks_write(first: usize) -> String {
        format!(
            "UPDATE tasks AS t SET state = j.s, reason = j.r, message = j.m, attempt = j.a, \
             first_attempt = j.fa, lost = j.l, worker_id = j.w, lease_until = j.lu, \
             cancel_mode = j.cm, cancel_reason = j.cr, run_at = j.ra, ready_seq = j.rs, \
             deps_left = j.d, started_at = j.st, output = COALESCE(j.o, t.output) \
             FROM {} WHERE t.id = j.id",
            unnest(first, TASK_WRITE)
        )
    }

    /// Records attempts at their end, one row each, their [`ATTEMPT_END`]
    /// columns bound from `$first`.
    pub(super) fn attempts_end(first: usize) -> String {
        format!(
            "INSERT INTO attempts (task_id, attempt, worker_id, started_at, finished_at, \
             outcome, reason, exit_code, error, stdout_tail, stderr_tail, compressed, \
             stdout_total, stderr_total) \
             SELECT j.t, j.a, j.w, j.st, j.at, j.o, j.r, j.x, j.e, j.so, j.se, j.z, j.ot, j.et \
             FROM {}",
            unnest(first, ATTEMPT_END)
        )
    }

    pub(super) static TASKS_WRITE: LazyLock<String> = LazyLock::new(|| tasks_write(1));
    pub(super) static ATTEMPTS_END: LazyLock<String> = LazyLock::new(|| attempts_end(1));

    /// Inserts a batch's new tasks: the batch `$1`, the [`NEW_TASK`]
    /// columns from `$2`.
    pub(super) static TASKS_INSERT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO tasks (id, batch_id, idx, key, priority, cost, payload, state, \
             ready_seq, deps_left, rule, n_dependents, n_upstream) \
             SELECT j.id, $1, j.i, j.k, j.p, j.c, j.pl, j.s, j.rs, j.d, j.r, j.n, j.u FROM {}",
            unnest(2, NEW_TASK)
        )
    });
}

fn ids_of<I: IntoIterator<Item = i64>>(ids: I) -> Vec<i64> {
    ids.into_iter().collect()
}

/// A write transaction.
pub(crate) struct PgTx {
    tx: Transaction<'static, Db>,
    work_channel: String,
    control_channel: String,
}

impl PgTx {
    async fn run(&mut self, sql: &str, args: PgArguments) -> Result<()> {
        sqlx::query_with(sql, args)
            .execute(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

impl Dialect for Postgres {
    type Tx = PgTx;

    async fn begin(&self) -> Result<PgTx> {
        let tx = self.pool.begin().await.map_err(backend)?;
        Ok(PgTx {
            tx,
            work_channel: self.work_channel.clone(),
            control_channel: self.control_channel.clone(),
        })
    }

    async fn commit(tx: PgTx) -> Result<Option<u64>> {
        tx.tx.commit().await.map_err(backend)?;
        Ok(None)
    }

    async fn worker_insert(&self, host: &str, pid: u32, now: Timestamp) -> Result<WorkerId> {
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

impl Tx for PgTx {
    // Task rows are written whole, from typed arrays, in one statement.
    const WRITES_CHANGED_COLUMNS: bool = false;

    async fn open(&mut self, claim: Option<ClaimOpen>, tasks: &[TaskId]) -> Result<Opened> {
        if claim.is_none() && tasks.is_empty() {
            return Ok(Opened::default());
        }
        let task_ids = ids_of(tasks.iter().map(|t| t.0));
        let query = match claim {
            None => sqlx::query(&OPEN).bind(task_ids),
            Some(c) => {
                let (sql, n) = match c.only {
                    Some(only) => (&*OPEN_CLAIM_ONE, only.0),
                    // Each completion before the claim may spoil one batch
                    // read ([`statements::claim_ranked`]).
                    None => (
                        &*OPEN_CLAIM,
                        statements::rank_limit(c.limit.saturating_add(tasks.len())),
                    ),
                };
                sqlx::query(sql)
                    .bind(c.now.0)
                    .bind(n)
                    .bind(task_ids)
                    .bind(i64::try_from(c.limit).unwrap_or(i64::MAX))
            }
        };
        let rows = query.fetch_all(&mut *self.tx).await.map_err(backend)?;
        let mut opened = Opened {
            scan: claim.map(|_| ClaimScan::default()),
            ..Opened::default()
        };
        let mut heads = Heads {
            heads: Vec::new(),
            served: 0,
            due: None,
        };
        for r in &rows {
            let kind = r.text("kind")?;
            match kind.as_str() {
                "h" => heads.heads.push((task_row(r)?, r.text("payload")?)),
                "t" => opened.tasks.push(task_row(r)?),
                "b" => {
                    let batch = batch_row(&BatchColumns(r))?;
                    if let Some(scan) = &mut opened.scan {
                        let flag = |column| {
                            sqlx::Row::try_get::<Option<bool>, _>(r, column).map_err(backend)
                        };
                        if flag("x_claimable")? == Some(true) {
                            scan.claimable.push(batch.id);
                        }
                        if flag("x_deadline")? == Some(true) {
                            scan.past_deadline.push(batch.id);
                        }
                    }
                    opened.batches.push(batch);
                }
                "d" => {
                    if let Some(scan) = &mut opened.scan {
                        scan.due
                            .push((TaskId(r.int("x_task")?), BatchId(r.int("x_batch")?)));
                    }
                }
                "s" => {
                    heads.served = r.int("x_served")?;
                    heads.due = r.opt_int("x_due")?.map(Timestamp);
                }
                other => return Err(crate::rows::corrupt("kind", other)),
            }
        }
        if claim.is_some() {
            opened.heads = Some(heads);
        }
        Ok(opened)
    }

    async fn batch_by_key(&mut self, key: &str) -> Result<Option<BatchId>> {
        let id: Option<i64> = sqlx::query_scalar(statements::BATCH_BY_KEY)
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(id.map(BatchId))
    }

    async fn batch_insert(&mut self, b: NewBatch<'_>) -> Result<BatchRow> {
        let row = bind_new_batch!(sqlx::query(&statements::BATCH_INSERT), b)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(backend)?;
        batch_row(&row)
    }

    async fn batches_lock(&mut self, ids: &[BatchId]) -> Result<Vec<BatchRow>> {
        let rows = sqlx::query(&BATCHES_LOCK)
            .bind(ids_of(ids.iter().map(|b| b.0)))
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

    async fn batches_lock_with_tasks(
        &mut self,
        ids: &[BatchId],
        tasks: &[TaskId],
    ) -> Result<Vec<BatchRow>> {
        let rows = sqlx::query(&BATCHES_LOCK_WITH_TASKS)
            .bind(ids_of(ids.iter().map(|b| b.0)))
            .bind(ids_of(tasks.iter().map(|t| t.0)))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(backend)?;
        rows.iter().map(batch_row).collect()
    }

    async fn served_and_due(&mut self) -> Result<(i64, Option<Timestamp>)> {
        let (served, due): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(last_served), 0) FROM batches)::bigint, LEAST( \
               (SELECT MIN(run_at) FROM tasks WHERE state = 'retry_wait'), \
               (SELECT MIN(deadline) FROM batches \
                WHERE deadline IS NOT NULL AND finished_at IS NULL))",
        )
        .fetch_one(&mut *self.tx)
        .await
        .map_err(backend)?;
        Ok((served, due.map(Timestamp)))
    }

    async fn task_ids(&mut self, n: usize) -> Result<Vec<i64>> {
        sqlx::query_scalar(
            "SELECT nextval(pg_get_serial_sequence('tasks', 'id')) FROM generate_series(1, $1)",
        )
        .bind(n as i64)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(backend)
    }

    async fn tasks_insert(&mut self, batch: BatchId, rows: &[NewTask]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut args = PgArguments::default();
        add(&mut args, batch.0)?;
        add_new_tasks(&mut args, rows)?;
        self.run(&sql::TASKS_INSERT, args).await
    }

    async fn deps_insert(&mut self, rows: &[NewDep]) -> Result<()> {
        let mut args = PgArguments::default();
        add(&mut args, column(rows, |d| d.task))?;
        add(&mut args, column(rows, |d| d.upstream))?;
        add(&mut args, column(rows, |d| i64::from(d.position)))?;
        self.run(
            "INSERT INTO task_deps (task_id, upstream_id, position) \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[])",
            args,
        )
        .await
    }

    async fn tasks_get(&mut self, ids: &[TaskId]) -> Result<Vec<TaskRow>> {
        let rows = sqlx::query(&TASKS_GET)
            .bind(ids_of(ids.iter().map(|t| t.0)))
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
            .bind(ids_of(ids.iter().map(|t| t.0)))
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
        let rows = sqlx::query(&sql::TASKS_READY)
            .bind(ids_of(batches.iter().map(|b| b.0)))
            .bind(limit as i64)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| Ok((task_row(r)?, r.text("payload")?)))
            .collect()
    }

    async fn claim_scan(
        &mut self,
        now: Timestamp,
        only: Option<BatchId>,
        limit: usize,
    ) -> Result<ClaimScan> {
        let (sql, n) = statements::claim_scan(only, limit);
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(sql)
            .bind(now.0)
            .bind(n)
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
        let mut args = PgArguments::default();
        add_task_writes(&mut args, rows)?;
        self.run(&sql::TASKS_WRITE, args).await
    }

    async fn upstream(&mut self, ids: &[TaskId]) -> Result<Vec<UpstreamRow>> {
        let rows = sqlx::query(
            "SELECT d.task_id AS dependent, u.id, u.key, u.state, u.output FROM task_deps d \
             JOIN tasks u ON u.id = d.upstream_id \
             WHERE d.task_id = ANY($1) ORDER BY d.task_id, d.position",
        )
        .bind(ids_of(ids.iter().map(|t| t.0)))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(backend)?;
        rows.iter().map(upstream_row).collect()
    }

    async fn outputs_write(&mut self, rows: &[(TaskId, String)]) -> Result<()> {
        let (ids, outputs): (Vec<i64>, Vec<&str>) =
            rows.iter().map(|(t, o)| (t.0, o.as_str())).unzip();
        sqlx::query(
            "UPDATE tasks AS t SET output = j.o FROM UNNEST($1::bigint[], $2::text[]) AS j(id, o) \
             WHERE t.id = j.id",
        )
        .bind(ids)
        .bind(outputs)
        .execute(&mut *self.tx)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn attempts_end(&mut self, rows: &[AttemptEnd]) -> Result<()> {
        let mut args = PgArguments::default();
        add_attempt_ends(&mut args, rows)?;
        self.run(&sql::ATTEMPTS_END, args).await
    }

    async fn write_all(&mut self, set: WriteSet<'_>) -> Result<Option<u64>> {
        // Policies change only on a rerun: written back only then.
        let policies: Vec<Option<String>> = set
            .batches
            .iter()
            .map(|b| b.policy_changed.then(|| json(&*b.policy)).transpose())
            .collect::<Result<_>>()?;
        let mut args = PgArguments::default();
        add_task_writes(&mut args, &set.tasks)?;
        add_batch_writes(&mut args, &set.batches, &policies)?;
        add_attempt_ends(&mut args, set.attempts_ended)?;
        add_events(&mut args, &set.events)?;
        add(&mut args, set.event_count as i64)?;
        add(
            &mut args,
            set.notify_work.then_some(self.work_channel.as_str()),
        )?;
        add(
            &mut args,
            set.notify_control.then_some(self.control_channel.as_str()),
        )?;
        let first: Option<i64> = sqlx::query_scalar_with(&sql::WRITE_ALL, args)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(Some(first.unwrap_or(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test database (`HERD_TEST_DATABASE_URL`); without it these
    /// tests are skipped, said in one loud line, and fail instead with
    /// `HERD_REQUIRE_POSTGRES=1`.
    fn test_database() -> Option<String> {
        let url = std::env::var("HERD_TEST_DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty());
        assert!(
            url.is_some() || std::env::var("HERD_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "HERD_REQUIRE_POSTGRES=1 but HERD_TEST_DATABASE_URL is not set: point it at a \
             PostgreSQL database (postgres://postgres@127.0.0.1:5432/test)"
        );
        if url.is_none() {
            eprintln!("*** SKIPPED: a PostgreSQL test: HERD_TEST_DATABASE_URL is not set ***");
        }
        url
    }

    /// The generic-plan trap: a prepared statement that PostgreSQL plans
    /// once for any parameters must still reach tasks and attempts through
    /// their indexes, not a scan of every row ever stored.
    #[tokio::test]
    async fn hot_statements_keep_index_plans_when_generic() {
        use herd_core::store::Store;
        use herd_core::{BatchSpec, TaskSpec};

        let Some(url) = test_database() else {
            return;
        };
        let schema = "plan_check";
        let admin = PgPool::connect(&url).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&admin)
            .await
            .unwrap();
        let store = PgStore::<String, String>::connect_in_schema(&url, schema)
            .await
            .unwrap();
        let mut spec = BatchSpec::new("plans");
        spec.concurrency = 50_000;
        spec.tasks = (0..50_000).map(|i| TaskSpec::new(i.to_string())).collect();
        store.batch_insert(spec, Timestamp(1)).await.unwrap();
        // Most of them running: attempts to look up as well as tasks.
        let worker = store.worker_register("h", 1, Timestamp(1)).await.unwrap();
        let request = herd_core::store::ClaimRequest {
            worker,
            capacity: 40_000,
            max_tasks: 40_000,
            lease: Duration::from_secs(30),
            batch: None,
        };
        let claim = store.task_claim(request, Timestamp(2)).await.unwrap();
        assert_eq!(claim.tasks.len(), 40_000);
        // Half of them ended: attempts rows to look up as well.
        let ended = claim.tasks[..20_000]
            .iter()
            .map(|t| herd_core::store::Completion {
                fence: herd_core::store::Fence {
                    task: t.id,
                    attempt: t.attempt,
                },
                outcome: herd_core::store::AttemptOutcome::Succeeded { output: None },
                duration: Duration::from_millis(1),
                log: None,
            })
            .collect();
        store
            .task_complete(worker, ended, Timestamp(3))
            .await
            .unwrap();
        sqlx::query("ANALYZE").execute(store.pool()).await.unwrap();

        let mut conn = store.pool().acquire().await.unwrap();
        sqlx::query("SET plan_cache_mode = force_generic_plan")
            .execute(&mut *conn)
            .await
            .unwrap();
        // The listings, with and without the filters that change their text.
        let tasks_any = statements::task_list(&herd_core::store::TaskQuery::default());
        let tasks_some = statements::task_list(&herd_core::store::TaskQuery {
            states: vec![herd_core::TaskState::Failed, herd_core::TaskState::Running],
            logs: true,
            ..Default::default()
        });
        let batches_any = statements::batch_list(&herd_core::store::BatchQuery::default());
        let batches_live = statements::batch_list(&herd_core::store::BatchQuery {
            states: vec![herd_core::BatchState::Running],
            ..Default::default()
        });
        // Row sets are bound one array per column.
        let array_types = |columns: sql::Columns| {
            let types: Vec<String> = columns.iter().map(|(_, ty)| format!("{ty}[]")).collect();
            types.join(", ")
        };
        let empty_arrays = |columns: sql::Columns| vec!["'{}'"; columns.len()].join(", ");
        let write_types = array_types(sql::TASK_WRITE);
        let write_args = format!("({})", empty_arrays(sql::TASK_WRITE));
        let ended_types = array_types(sql::ATTEMPT_END);
        let ended_args = format!("({})", empty_arrays(sql::ATTEMPT_END));
        let write_all_types = format!(
            "{write_types}, {}, {ended_types}, {}, bigint, text, text",
            array_types(sql::BATCH_WRITE),
            array_types(sql::EVENT)
        );
        let write_all_args = format!(
            "({}, {}, {}, {}, 0, NULL, NULL)",
            empty_arrays(sql::TASK_WRITE),
            empty_arrays(sql::BATCH_WRITE),
            empty_arrays(sql::ATTEMPT_END),
            empty_arrays(sql::EVENT)
        );
        let statements = [
            (
                "tasks_any",
                "bigint, bigint, bigint",
                tasks_any,
                "(1, 100, 50)",
            ),
            (
                "tasks_some",
                "bigint, bigint, bigint",
                tasks_some,
                "(1, -1, 50)",
            ),
            ("batches_any", "bigint, bigint", batches_any, "(100, 50)"),
            ("batches_live", "bigint, bigint", batches_live, "(100, 50)"),
            (
                "attempts",
                "bigint",
                statements::TASK_ATTEMPTS.clone(),
                "(1)",
            ),
            (
                "of_worker",
                "bigint",
                statements::TASKS_OF_WORKER.to_owned(),
                "(1)",
            ),
            (
                "ready",
                "bigint[], bigint",
                sql::TASKS_READY.clone(),
                "('{1}', 100)",
            ),
            (
                "lock_with_tasks",
                "bigint[], bigint[]",
                BATCHES_LOCK_WITH_TASKS.clone(),
                "('{1}', '{1, 2}')",
            ),
            (
                "claim_scan",
                "bigint, bigint",
                statements::CLAIM_SCAN.clone(),
                "(1, 10)",
            ),
            (
                "claim_scan_one",
                "bigint, bigint",
                statements::CLAIM_SCAN_ONE.to_owned(),
                "(1, 1)",
            ),
            ("write", &write_types, sql::TASKS_WRITE.clone(), &write_args),
            (
                "ended",
                &ended_types,
                sql::ATTEMPTS_END.clone(),
                &ended_args,
            ),
            // A transaction's first reads, claims among them.
            ("open", "bigint[]", OPEN.clone(), "('{1, 2}')"),
            (
                "open_claim",
                "bigint, bigint, bigint[], bigint",
                OPEN_CLAIM.clone(),
                "(1, 10, '{1, 2}', 100)",
            ),
            (
                "open_claim_one",
                "bigint, bigint, bigint[], bigint",
                OPEN_CLAIM_ONE.clone(),
                "(1, 1, '{}', 100)",
            ),
            (
                "write_all",
                &write_all_types,
                sql::WRITE_ALL.clone(),
                &write_all_args,
            ),
        ];
        for (name, types, statement, args) in statements {
            sqlx::query(&format!("PREPARE {name}({types}) AS {statement}"))
                .execute(&mut *conn)
                .await
                .unwrap();
            let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE {name}{args}"))
                .fetch_all(&mut *conn)
                .await
                .unwrap();
            let plan = plan.join("\n");
            if std::env::var_os("HERD_SHOW_PLANS").is_some() {
                eprintln!("{name}:\n{plan}\n");
            }
            // The ranking reads batches in rank order, not every live one.
            assert!(
                name != "claim_scan" || plan.contains("batches_ranked"),
                "{name} ranks batches without their index:\n{plan}"
            );
            assert!(
                !plan.contains("Seq Scan on tasks")
                    && !plan.contains("Seq Scan on attempts")
                    && !plan.contains("Seq Scan on batches"),
                "{name} scans a table under a generic plan:\n{plan}"
            );
            // `attempts` has its primary key only: a scan of it without an
            // index condition reads all of it. The writes reach every row
            // they write by key: a plan made while a table was small may
            // otherwise walk all of it for every write, for as long as the
            // connection keeps the plan (it did, for `batches`).
            let writes = ["write", "ended", "write_all"].contains(&name);
            let lines: Vec<&str> = plan.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let watched = line.contains(" on attempts")
                    || (writes && (line.contains(" on batches") || line.contains(" on tasks")));
                if line.contains("Scan") && watched {
                    let bounded = lines[i + 1..]
                        .iter()
                        .take_while(|l| !l.contains("->"))
                        .any(|l| l.contains("Index Cond"));
                    assert!(bounded, "{name} reads a whole table:\n{line}\n{plan}");
                }
            }
        }
    }

    /// Every row set's binder adds its columns in the order, and with the
    /// types, its column list names: a row with a distinct value in every
    /// field reads back through `UNNEST` under the right names.
    #[tokio::test]
    async fn row_sets_bind_their_columns_in_order() {
        let Some(url) = test_database() else {
            return;
        };
        let pool = PgPool::connect(&url).await.unwrap();
        let read = |columns: sql::Columns, args: PgArguments| {
            let pool = pool.clone();
            async move {
                let sql = format!(
                    "SELECT row_to_json(j)::text FROM {}",
                    sql::unnest(1, columns)
                );
                let row: String = sqlx::query_scalar_with(&sql, args)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                serde_json::from_str::<serde_json::Value>(&row).unwrap()
            }
        };

        let task = TaskWrite {
            id: 1,
            s: "running",
            r: Some("error".into()),
            m: Some("message"),
            a: 2,
            fa: 3,
            l: 4,
            w: Some(5),
            lu: Some(6),
            st: Some(7),
            cm: Some("graceful"),
            cr: Some("by_user".into()),
            ra: Some(8),
            rs: Some(9),
            d: 10,
            changed: TaskWrite::ALL,
            o: Some("output"),
            batch: 11,
            priority: -12,
            cost: 13,
        };
        let mut args = PgArguments::default();
        add_task_writes(&mut args, std::slice::from_ref(&task)).unwrap();
        assert_eq!(
            read(sql::TASK_WRITE, args).await,
            serde_json::json!({"id": 1, "s": "running", "r": "error", "m": "message", "a": 2,
                "fa": 3, "l": 4, "w": 5, "lu": 6, "st": 7, "cm": "graceful", "cr": "by_user",
                "ra": 8, "rs": 9, "d": 10, "o": "output", "b": 11, "p": -12, "c": 13})
        );

        let ended = AttemptEnd {
            t: 1,
            a: 2,
            w: Some(3),
            st: 4,
            at: 5,
            o: "failed",
            r: Some("timeout".into()),
            x: Some(-6),
            e: Some("error".into()),
            so: Some(vec![0xAB]),
            se: Some(vec![0xCD, 0xEF]),
            z: true,
            ot: Some(7),
            et: Some(8),
        };
        let mut args = PgArguments::default();
        add_attempt_ends(&mut args, std::slice::from_ref(&ended)).unwrap();
        assert_eq!(
            read(sql::ATTEMPT_END, args).await,
            serde_json::json!({"t": 1, "a": 2, "w": 3, "st": 4, "at": 5, "o": "failed",
                "r": "timeout", "x": -6, "e": "error", "so": "\\xab", "se": "\\xcdef",
                "z": true, "ot": 7, "et": 8})
        );

        // A batch row as a store reads it, every written field then changed.
        sqlx::query("DROP SCHEMA IF EXISTS row_sets CASCADE")
            .execute(&pool)
            .await
            .unwrap();
        let store = PgStore::<String, String>::connect_in_schema(&url, "row_sets")
            .await
            .unwrap();
        let batch = herd_core::store::Store::batch_insert(
            &store,
            herd_core::BatchSpec::new("rows"),
            Timestamp(1),
        )
        .await
        .unwrap()
        .batch;
        let mut b = store.dialect.batch_read(batch).await.unwrap().unwrap();
        b.state = herd_core::BatchState::Running;
        b.deadline = Some(Timestamp(2));
        b.open = true;
        b.paused = true;
        b.stopped = Some(herd_core::Reason::Deadline);
        b.cancelled = true;
        b.failed_by_policy = true;
        b.running_cost = 3;
        b.last_served = 4;
        b.next_index = 5;
        b.next_ready = 6;
        b.counts = herd_core::StateCounts {
            pending: 7,
            queued: 8,
            running: 9,
            retry_wait: 10,
            succeeded: 11,
            failed: 12,
            cancelled: 13,
            skipped: 14,
        };
        b.retries = 15;
        b.durations = Some(vec![0x01, 0xFF]);
        b.started_at = Some(Timestamp(16));
        b.finished_at = Some(Timestamp(17));
        let stopped = b.stopped.unwrap().to_string();
        let mut args = PgArguments::default();
        add_batch_writes(&mut args, &[&b], &[Some("{}".into())]).unwrap();
        assert_eq!(
            read(sql::BATCH_WRITE, args).await,
            serde_json::json!({"id": batch.0, "state": "running", "deadline": 2, "open": true,
                "paused": true, "stopped": stopped, "cancelled": true,
                "failed_by_policy": true, "running_cost": 3, "last_served": 4,
                "next_index": 5, "next_ready": 6, "n_pending": 7, "n_queued": 8,
                "n_running": 9, "n_retry_wait": 10, "n_succeeded": 11, "n_failed": 12,
                "n_cancelled": 13, "n_skipped": 14, "retries": 15, "durations": "\\x01ff",
                "started_at": 16, "finished_at": 17, "policy": "{}", "qc": true})
        );

        let event = EventWrite {
            seq: 1,
            n: 2,
            at: 3,
            b: 4,
            body: "b - queued".into(),
        };
        let mut args = PgArguments::default();
        add_events(&mut args, std::slice::from_ref(&event)).unwrap();
        assert_eq!(
            read(sql::EVENT, args).await,
            serde_json::json!({"seq": 1, "n": 2, "at": 3, "b": 4, "body": "b - queued"})
        );

        let new = NewTask {
            id: 1,
            index: 2,
            key: Some("key".into()),
            priority: -3,
            cost: 4,
            payload: "\"payload\"".into(),
            state: "queued",
            ready_seq: Some(5),
            deps_left: 6,
            rule: "all_succeeded",
            dependents: 7,
            upstream: 8,
        };
        let mut args = PgArguments::default();
        add_new_tasks(&mut args, std::slice::from_ref(&new)).unwrap();
        assert_eq!(
            read(sql::NEW_TASK, args).await,
            serde_json::json!({"id": 1, "i": 2, "k": "key", "p": -3, "c": 4,
                "pl": "\"payload\"", "s": "queued", "rs": 5, "d": 6, "r": "all_succeeded",
                "n": 7, "u": 8})
        );
    }

    #[test]
    fn channels_fit_postgres_limits() {
        assert_eq!(channel("herd_work", "public"), "herd_work:public");
        let long = "s".repeat(80);
        let named = channel("herd_control", &long);
        assert!(named.len() <= 63, "{named}");
        assert_eq!(named, channel("herd_control", &long), "stable");
        assert_ne!(named, channel("herd_control", &"t".repeat(80)));
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            shown("postgres://herd:secret@db:5432/herd"),
            "postgres://herd:***@db:5432/herd"
        );
        assert_eq!(
            shown("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert!(matches!(
            parse("mysql://root@localhost/x"),
            Err(OpenError::UnknownKind { .. })
        ));
        assert!(parse("postgres://postgres@127.0.0.1:5432/test").is_ok());
    }
}
