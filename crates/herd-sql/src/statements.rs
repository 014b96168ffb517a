//! The statements both dialects run alike. SQLite reads `$N` placeholders
//! as PostgreSQL does, so where the SQL is the same it is written once, here;
//! `sqlite.rs` and `postgres.rs` keep only what differs (id lists, locking,
//! set writes).

use std::sync::LazyLock;

use herd_core::store::{BatchQuery, TaskQuery};

use crate::logic::{Result, backend};
use crate::rows::{
    ATTEMPT_COLUMNS, BATCH_COLUMNS, BATCH_LIST_COLUMNS, LOG_COLUMNS, TASK_COLUMNS, WORKER_COLUMNS,
};

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

/// The batches a claim may take tasks from, best first, at most `limit`
/// plus the number of retries due by `now` (`now` and `limit` are the
/// placeholders to bind): the unfinished, unpaused, unstopped batches not
/// past a deadline whose queued head (the first task in the order of the
/// index `tasks_ready`) fits their free slots, in
/// [`crate::logic::best_batch`]'s rank: the head's priority, fewest cost
/// units running, served longest ago, older batch.
///
/// Why that is enough, with `limit` the claim's `max_tasks` plus the
/// completions reported before it in the same operation: a claim serves at
/// most `max_tasks` batches, and serving a batch only lowers its own rank.
/// A batch left out keeps its rank through the claim, unless the operation
/// touches it (a completion, a retry due, a released dependent: those
/// batches are locked and loaded anyway). A batch read that the operation
/// does not touch and the claim has not served yet still fits and ranks as
/// high as it did, above every batch left out; each completion and each due
/// retry may spoil at most one batch read (stop it, or queue a head that
/// does not fit), so before each of the claim's picks some batch read still
/// ranks above every batch left out. This holds only because a batch whose
/// head does not fit is not ranked (`best_batch` skips it, and it would
/// take a place), nor one past its deadline (the claim stops it first).
/// Task costs above 1 need no more: a head that fits its batch but not the
/// claim's capacity ends the claim (strict order).
///
/// A range read of the index `batches_ranked`, in rank order: each batch
/// row keeps its head's priority and cost (`head_priority`, `head_cost`,
/// set with every write of the row, [`BATCH_WRITE`]), so the ranking
/// reads no task. It stops at the limit; the rows it passes over on the
/// way are batches whose head does not fit, which hold running tasks (at
/// most one per running task), or past their deadline. No lock: the claim
/// then locks and loads only these.
pub(crate) fn claim_ranked(now: &str, limit: &str) -> String {
    format!(
        "SELECT b.id FROM batches b \
         WHERE b.head_priority IS NOT NULL AND b.finished_at IS NULL AND NOT b.paused \
           AND b.stopped IS NULL AND b.running_cost < b.concurrency \
           AND b.running_cost + b.head_cost <= b.concurrency \
           AND (b.deadline IS NULL OR b.deadline > {now}) \
         ORDER BY b.head_priority DESC, b.running_cost, b.last_served, b.id \
         LIMIT {limit} + (SELECT COUNT(*) FROM tasks \
           WHERE state = 'retry_wait' AND run_at <= {now})"
    )
}

/// The bound limit of [`claim_ranked`]: room left for the retries due to
/// be added to it without overflow.
pub(crate) fn rank_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX).min(1 << 40)
}

/// A claim's scan and its second argument: [`CLAIM_SCAN_ONE`] and the
/// batch for a claim limited to one, else [`CLAIM_SCAN`] and its limit.
pub(crate) fn claim_scan(only: Option<herd_core::BatchId>, limit: usize) -> (&'static str, i64) {
    match only {
        Some(only) => (CLAIM_SCAN_ONE, only.0),
        None => (CLAIM_SCAN.as_str(), rank_limit(limit)),
    }
}

/// Retries due by `$1`, batches past their deadline, and the batches a
/// claim could take tasks from ([`claim_ranked`], limit `$2`):
/// `(kind, id, batch)`, read by [`crate::logic::ClaimScan::from_rows`].
pub(crate) static CLAIM_SCAN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT 'due', id, batch_id FROM tasks WHERE state = 'retry_wait' AND run_at <= $1 \
         UNION ALL \
         SELECT 'deadline', id, id FROM batches WHERE deadline <= $1 AND finished_at IS NULL \
         UNION ALL \
         SELECT 'claimable', c.id, c.id FROM ({}) c",
        claim_ranked("$1", "$2")
    )
});

/// [`CLAIM_SCAN`] for a claim from the batch `$2` alone: that batch is
/// claimable if it could start a task.
pub(crate) const CLAIM_SCAN_ONE: &str = "\
    SELECT 'due', id, batch_id FROM tasks WHERE state = 'retry_wait' AND run_at <= $1 \
    UNION ALL \
    SELECT 'deadline', id, id FROM batches WHERE deadline <= $1 AND finished_at IS NULL \
    UNION ALL \
    SELECT 'claimable', id, id FROM batches WHERE id = $2 AND finished_at IS NULL \
    AND n_queued > 0 AND NOT paused AND stopped IS NULL AND running_cost < concurrency";

pub(crate) const TASKS_LEASE_EXPIRED: &str =
    "SELECT id, batch_id FROM tasks WHERE state = 'running' AND lease_until < $1";

/// A worker's running tasks, through the partial index of running tasks
/// (`tasks_leases`): rare (a worker found dead), so no index of its own to
/// maintain on every claim.
pub(crate) const TASKS_OF_WORKER: &str = "SELECT id, batch_id FROM tasks \
     WHERE state = 'running' AND worker_id = $1";

pub(crate) const WORKER_HEARTBEAT: &str = "UPDATE workers SET last_heartbeat = $1 WHERE id = $2";

pub(crate) static WORKER_LIST: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {WORKER_COLUMNS} FROM workers ORDER BY id"));

/// A task's ended attempts, logs included, in order.
pub(crate) static TASK_ATTEMPTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {ATTEMPT_COLUMNS}, {LOG_COLUMNS} FROM attempts a \
         WHERE a.task_id = $1 ORDER BY a.attempt"
    )
});

/// `AND column IN ('…', …)` over the states asked for; nothing for none.
/// The states are herd's own names, so they are written into the statement
/// rather than bound: the planner then sees them, and may use a partial
/// index whose predicate they imply.
fn states_filter<'a>(column: &str, states: impl IntoIterator<Item = &'a str>) -> String {
    let mut states: Vec<&str> = states.into_iter().collect();
    if states.is_empty() {
        return String::new();
    }
    states.sort_unstable();
    states.dedup();
    let list: Vec<String> = states.iter().map(|s| format!("'{s}'")).collect();
    format!(" AND {column} IN ({})", list.join(", "))
}

/// A page of batches, newest first: binds `$1` (ids below it) and `$2`
/// (the limit). Reads the primary key backwards; when every state asked for
/// is unfinished, the partial index of unfinished batches instead.
pub(crate) fn batch_list(query: &BatchQuery) -> String {
    let live = !query.states.is_empty() && query.states.iter().all(|s| !s.is_terminal());
    format!(
        "SELECT {BATCH_LIST_COLUMNS} FROM batches WHERE id < $1{}{} ORDER BY id DESC LIMIT $2",
        states_filter("state", query.states.iter().map(|s| s.as_str())),
        if live { " AND finished_at IS NULL" } else { "" },
    )
}

/// A page of a batch's tasks by index, with each one's latest ended attempt
/// (its log when asked for): binds `$1` (the batch), `$2` (indices above it)
/// and `$3` (the limit). Reads the `(batch_id, idx)` index in order; a state
/// filter is applied to the rows on the way.
///
/// Every attempt that starts ends with its row, so the latest ended one is
/// the task's current attempt, or the one before while the current one
/// runs: one primary-key lookup per task (a `MAX` subquery in the join
/// condition made PostgreSQL filter a materialised scan of `attempts`).
pub(crate) fn task_list(query: &TaskQuery) -> String {
    let logs = if query.logs {
        format!(", {LOG_COLUMNS}")
    } else {
        String::new()
    };
    format!(
        "SELECT {TASK_COLUMNS}, t.payload, t.output, {ATTEMPT_COLUMNS}{logs} FROM tasks t \
         LEFT JOIN attempts a ON a.task_id = t.id AND a.attempt = \
         CASE WHEN t.state = 'running' THEN t.attempt - 1 ELSE t.attempt END \
         WHERE t.batch_id = $1 AND t.idx > $2{} ORDER BY t.idx LIMIT $3",
        states_filter("t.state", query.states.iter().map(|s| s.as_str())),
    )
}

/// The bound cursor and limit of a listing.
pub(crate) fn page(cursor: Option<i64>, none: i64, limit: usize) -> (i64, i64) {
    (
        cursor.unwrap_or(none),
        i64::try_from(limit).unwrap_or(i64::MAX),
    )
}

pub(crate) const WORKER_INSERT: &str = "INSERT INTO workers (host, pid, started_at, \
     last_heartbeat) VALUES ($1, $2, $3, $3) RETURNING id";

/// Bound by [`bind_new_batch!`].
/// Returns the new row, which the inserting transaction holds (no other
/// sees it before the commit): no read to lock it follows.
pub(crate) static BATCH_INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO batches (name, idempotency_key, flow, state, priority, concurrency, \
         policy, error_policy, deadline, open, paused, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {BATCH_COLUMNS}"
    )
});

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

/// Bound by [`bind_batch_row!`]. Sets the batch's head (for
/// [`claim_ranked`]) again from its queued tasks: a transaction writes its
/// task rows before its batch rows.
pub(crate) const BATCH_WRITE: &str = "UPDATE batches SET state = $1, deadline = $2, open = $3, \
     paused = $4, stopped = $5, cancelled = $6, failed_by_policy = $7, running_cost = $8, \
     last_served = $9, next_index = $10, next_ready = $11, n_pending = $12, n_queued = $13, \
     n_running = $14, n_retry_wait = $15, n_succeeded = $16, n_failed = $17, \
     n_cancelled = $18, n_skipped = $19, retries = $20, durations = $21, started_at = $22, \
     finished_at = $23, policy = COALESCE($24, policy), \
     (head_priority, head_cost) = (SELECT t.priority, t.cost FROM tasks t \
       WHERE t.batch_id = $25 AND t.state = 'queued' ORDER BY t.priority DESC, t.ready_seq \
       LIMIT 1) \
     WHERE id = $25";

/// Binds a [`crate::logic::BatchRow`]'s mutable columns to [`BATCH_WRITE`]
/// (the policy only when it changed: it carries the user's command
/// template, and changes only on a rerun).
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
            .bind(
                $b.policy_changed
                    .then(|| $crate::statements::json(&*$b.policy))
                    .transpose()?,
            )
            .bind($b.id.0)
    };
}

pub(crate) use {bind_batch_row, bind_new_batch};

#[cfg(test)]
mod tests {
    use super::*;
    use herd_core::model::{BatchState, TaskState};

    #[test]
    fn listings_filter_states_written_into_the_statement() {
        let any = batch_list(&BatchQuery::default());
        assert!(
            !any.contains(" IN (") && !any.contains("finished_at IS NULL"),
            "{any}"
        );
        let live = batch_list(&BatchQuery {
            states: vec![BatchState::Running, BatchState::Paused, BatchState::Running],
            ..BatchQuery::default()
        });
        assert!(
            live.contains("AND state IN ('paused', 'running') AND finished_at IS NULL"),
            "{live}"
        );
        let done = batch_list(&BatchQuery {
            states: vec![BatchState::Running, BatchState::Failed],
            ..BatchQuery::default()
        });
        assert!(!done.contains("finished_at IS NULL"), "{done}");
        let tasks = task_list(&TaskQuery {
            states: vec![TaskState::Queued],
            ..TaskQuery::default()
        });
        assert!(
            tasks.contains("AND t.state IN ('queued') ORDER BY"),
            "{tasks}"
        );
        assert!(!tasks.contains("a_stdout"), "{tasks}");
        let logs = task_list(&TaskQuery {
            logs: true,
            ..TaskQuery::default()
        });
        assert!(logs.contains("a_stdout"), "{logs}");
    }

    #[test]
    fn pages_bind_cursors_and_limits() {
        assert_eq!(page(None, -1, 10), (-1, 10));
        assert_eq!(page(Some(7), -1, usize::MAX), (7, i64::MAX));
    }
}
