//! The statements both dialects run alike. SQLite reads `$N` placeholders
//! as PostgreSQL does, so where the SQL is the same it is written once, here;
//! `sqlite.rs` and `postgres.rs` keep only what differs (id lists, locking,
//! set writes).

use std::sync::LazyLock;

use crate::logic::{Result, backend};
use crate::rows::{BATCH_COLUMNS, TASK_COLUMNS};

/// A value as JSON text: policies, and the row sets of set statements.
pub(crate) fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(backend)
}

pub(crate) static BATCH_READ: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1"));

pub(crate) static TASK_READ: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE t.id = $1"));

/// A batch's unfinished tasks.
pub(crate) static TASKS_LIVE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {TASK_COLUMNS} FROM tasks t WHERE t.batch_id = $1 \
         AND t.state IN ('pending', 'queued', 'running', 'retry_wait')"
    )
});

pub(crate) static TASKS_OF_BATCH: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE t.batch_id = $1 ORDER BY t.idx")
});

pub(crate) const DEPS_OF_BATCH: &str = "SELECT d.task_id, d.upstream_id FROM task_deps d \
     JOIN tasks t ON t.id = d.task_id WHERE t.batch_id = $1";

pub(crate) const BATCH_BY_KEY: &str = "SELECT id FROM batches WHERE idempotency_key = $1";

pub(crate) const BATCHES_PAST_DEADLINE: &str =
    "SELECT id FROM batches WHERE deadline <= $1 AND finished_at IS NULL ORDER BY id";

/// Retries due, batches past their deadline, batches that could start a
/// task: `(kind, id, batch)`, read by [`crate::logic::ClaimScan::from_rows`].
pub(crate) const CLAIM_SCAN: &str = "\
    SELECT 'due', id, batch_id FROM tasks WHERE state = 'retry_wait' AND run_at <= $1 \
    UNION ALL \
    SELECT 'deadline', id, id FROM batches WHERE deadline <= $1 AND finished_at IS NULL \
    UNION ALL \
    SELECT 'claimable', id, id FROM batches WHERE finished_at IS NULL AND n_queued > 0 \
    AND NOT paused AND stopped IS NULL AND running_cost < concurrency";

pub(crate) const TASKS_LEASE_EXPIRED: &str =
    "SELECT id, batch_id FROM tasks WHERE state = 'running' AND lease_until < $1";

/// Takes `$1` event numbers; returns the next free one.
pub(crate) const SEQ_TAKE: &str =
    "UPDATE herd_meta SET next_seq = next_seq + $1 WHERE id = 1 RETURNING next_seq";

pub(crate) const WORKER_INSERT: &str = "INSERT INTO workers (host, pid, started_at, \
     last_heartbeat) VALUES ($1, $2, $3, $3) RETURNING id";

/// Bound by [`bind_new_batch!`].
pub(crate) const BATCH_INSERT: &str = "INSERT INTO batches (name, idempotency_key, flow, state, \
     priority, concurrency, policy, error_policy, deadline, open, paused, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id";

/// Binds a [`crate::logic::NewBatch`] to [`BATCH_INSERT`].
macro_rules! bind_new_batch {
    ($query:expr, $b:expr) => {
        $query
            .bind($b.name)
            .bind($b.idempotency_key)
            .bind(&*$b.policy.flow)
            .bind($b.state.as_str())
            .bind(i64::from($b.priority.0))
            .bind(i64::from($b.concurrency))
            .bind($crate::statements::json($b.policy)?)
            .bind($crate::statements::json($b.error_policy)?)
            .bind($b.policy.deadline.map(|d| d.0))
            .bind($b.open)
            .bind($b.paused)
            .bind($b.created_at.0)
    };
}

/// Bound by [`bind_batch_row!`].
pub(crate) const BATCH_WRITE: &str = "UPDATE batches SET state = $1, deadline = $2, open = $3, \
     paused = $4, stopped = $5, cancelled = $6, failed_by_policy = $7, running_cost = $8, \
     last_served = $9, next_index = $10, next_ready = $11, n_pending = $12, n_queued = $13, \
     n_running = $14, n_retry_wait = $15, n_succeeded = $16, n_failed = $17, \
     n_cancelled = $18, n_skipped = $19, retries = $20, durations = $21, started_at = $22, \
     finished_at = $23, policy = $24 WHERE id = $25";

/// Binds a [`crate::logic::BatchRow`]'s mutable columns to [`BATCH_WRITE`].
macro_rules! bind_batch_row {
    ($query:expr, $b:expr) => {
        $query
            .bind($b.state.as_str())
            .bind($b.deadline.map(|d| d.0))
            .bind($b.open)
            .bind($b.paused)
            .bind($b.stopped.map(|r| r.to_string()))
            .bind($b.cancelled)
            .bind($b.failed_by_policy)
            .bind(i64::from($b.running_cost))
            .bind($b.last_served)
            .bind($b.next_index as i64)
            .bind($b.next_ready)
            .bind($b.counts.pending as i64)
            .bind($b.counts.queued as i64)
            .bind($b.counts.running as i64)
            .bind($b.counts.retry_wait as i64)
            .bind($b.counts.succeeded as i64)
            .bind($b.counts.failed as i64)
            .bind($b.counts.cancelled as i64)
            .bind($b.counts.skipped as i64)
            .bind($b.retries as i64)
            .bind($b.durations.as_deref())
            .bind($b.started_at.map(|t| t.0))
            .bind($b.finished_at.map(|t| t.0))
            .bind($crate::statements::json(&*$b.policy)?)
            .bind($b.id.0)
    };
}

pub(crate) use {bind_batch_row, bind_new_batch};
