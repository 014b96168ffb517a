//! The stored history: events read after a sequence number
//! ([`Store::event_list`](herd_core::store::Store::event_list)) and finished
//! batches removed ([`Store::batch_purge`](herd_core::store::Store::batch_purge)).
//!
//! Neither is on a worker's hot path, so both are plain statements on the
//! pool, kept here apart from the dialects' transaction code. Events are
//! read by `seq`: the sequence is taken last in every write transaction, so
//! `seq` order is commit order and a reader resuming after `seq` N misses
//! nothing that committed before its read.

use herd_core::model::{Attempt, Reason};
use herd_core::model::{BatchId, BatchState, Event, EventKind, TaskId, TaskState, Timestamp};
use std::sync::LazyLock;

use herd_core::store::{EventQuery, StoreError};

use crate::logic::{Result, backend};
use crate::store::SqlStore;
use crate::{Postgres, Sqlite};

/// States a batch can be purged in.
const FINISHED: &str = "('succeeded', 'partial', 'failed', 'cancelled')";

/// An event row: seq, at, batch, kind, task, index, attempt, from, to, reason.
type EventRow = (
    i64,
    i64,
    i64,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    String,
    Option<String>,
);

/// The event a row records.
fn event(row: EventRow) -> Result<Event> {
    let (seq, at, batch, kind, task, index, attempt, from, to, reason) = row;
    let bad = |what: &str| backend(std::io::Error::other(format!("event {seq}: bad {what}")));
    let kind = match kind.as_str() {
        "task" => EventKind::Task {
            task: TaskId(task.ok_or_else(|| bad("task id"))?),
            index: index.ok_or_else(|| bad("index"))? as u64,
            attempt: Attempt(attempt.ok_or_else(|| bad("attempt"))? as u32),
            from: from
                .map(|s| s.parse::<TaskState>())
                .transpose()
                .map_err(backend)?,
            to: to.parse::<TaskState>().map_err(backend)?,
            reason: reason
                .map(|s| s.parse::<Reason>())
                .transpose()
                .map_err(backend)?,
        },
        "batch" => EventKind::Batch {
            from: from
                .map(|s| s.parse::<BatchState>())
                .transpose()
                .map_err(backend)?,
            to: to.parse::<BatchState>().map_err(backend)?,
        },
        _ => return Err(bad("kind")),
    };
    Ok(Event {
        seq: seq as u64,
        at: Timestamp(at),
        batch: BatchId(batch),
        kind,
    })
}

const EVENT_COLUMNS: &str =
    "seq, at, batch_id, kind, task_id, idx, attempt, from_state, to_state, reason";

/// What a store keeps of its history, per dialect.
pub(crate) trait History {
    /// [`Store::event_list`](herd_core::store::Store::event_list).
    fn history_events(&self, query: EventQuery) -> impl Future<Output = Result<Vec<Event>>> + Send;
    /// [`Store::batch_purge`](herd_core::store::Store::batch_purge).
    fn history_purge(&self, batch: BatchId) -> impl Future<Output = Result<()>> + Send;
}

/// Why a purge removed nothing: no such batch, or one still live.
fn not_purged(batch: BatchId, exists: bool) -> StoreError {
    match exists {
        true => StoreError::Live(batch),
        false => StoreError::UnknownBatch(batch),
    }
}

/// The events after `$N` (of the batch `$1` first, when one is asked for),
/// at most `$N+1`: two statements, so that each uses its index,
/// `(batch_id, seq)` or `seq`. Placeholders in order of appearance, as
/// SQLite numbers them.
fn events_select(of_batch: bool) -> String {
    match of_batch {
        true => format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE batch_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3"
        ),
        false => format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"),
    }
}

/// The bound values of [`events_select`]: none to read for a zero limit.
fn events_bounds(query: &EventQuery) -> Option<(i64, i64)> {
    (query.limit > 0).then(|| {
        (
            i64::try_from(query.after).unwrap_or(i64::MAX),
            i64::try_from(query.limit).unwrap_or(i64::MAX),
        )
    })
}

/// Removes the batch `$1` if it finished; its tasks, dependencies and (on
/// SQLite) attempts go with it (`ON DELETE CASCADE`).
static PURGE_BATCH: LazyLock<String> =
    LazyLock::new(|| format!("DELETE FROM batches WHERE id = $1 AND state IN {FINISHED}"));
const BATCH_EXISTS: &str = "SELECT id FROM batches WHERE id = $1";
/// PostgreSQL: the attempts of the batch `$1`'s tasks, if it finished.
/// Its attempts reference their tasks without a foreign key (schema
/// version 4), so nothing cascades to them.
static PURGE_ATTEMPTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM attempts WHERE task_id = ANY(ARRAY( \
           SELECT t.id FROM tasks t JOIN batches b ON b.id = t.batch_id \
           WHERE b.id = $1 AND b.state IN {FINISHED}))"
    )
});
const PURGE_EVENTS: &str = "DELETE FROM events WHERE batch_id = $1";

impl<P, O> History for SqlStore<Sqlite, P, O> {
    async fn history_events(&self, query: EventQuery) -> Result<Vec<Event>> {
        let Some((after, limit)) = events_bounds(&query) else {
            return Ok(Vec::new());
        };
        let sql = events_select(query.batch.is_some());
        let mut select = sqlx::query_as(&sql);
        if let Some(batch) = query.batch {
            select = select.bind(batch.0);
        }
        let rows: Vec<EventRow> = select
            .bind(after)
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .map_err(backend)?;
        rows.into_iter().map(event).collect()
    }

    async fn history_purge(&self, batch: BatchId) -> Result<()> {
        // On the writer connection, in this process's write turn: the pool's
        // connections would wait in SQLite's busy handler behind it.
        let mut turn = self.dialect.write_turn().await;
        turn.abandon(); // until the COMMIT has gone through
        let conn = turn.conn();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        let removed = sqlx::query(&PURGE_BATCH)
            .bind(batch.0)
            .execute(&mut *conn)
            .await
            .map_err(backend)?
            .rows_affected();
        if removed == 0 {
            let exists: Option<i64> = sqlx::query_scalar(BATCH_EXISTS)
                .bind(batch.0)
                .fetch_optional(&mut *conn)
                .await
                .map_err(backend)?;
            return Err(not_purged(batch, exists.is_some()));
        }
        sqlx::query(PURGE_EVENTS)
            .bind(batch.0)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        sqlx::query("COMMIT")
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        turn.ended();
        Ok(())
    }
}

impl<P, O> History for SqlStore<Postgres, P, O> {
    async fn history_events(&self, query: EventQuery) -> Result<Vec<Event>> {
        let Some((after, limit)) = events_bounds(&query) else {
            return Ok(Vec::new());
        };
        let sql = events_select(query.batch.is_some());
        let mut select = sqlx::query_as(&sql);
        if let Some(batch) = query.batch {
            select = select.bind(batch.0);
        }
        let rows: Vec<EventRow> = select
            .bind(after)
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .map_err(backend)?;
        rows.into_iter().map(event).collect()
    }

    async fn history_purge(&self, batch: BatchId) -> Result<()> {
        let mut tx = self.pool().begin().await.map_err(backend)?;
        // Rolled back with the rest if the batch is not removed.
        sqlx::query(&PURGE_ATTEMPTS)
            .bind(batch.0)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let removed = sqlx::query(&PURGE_BATCH)
            .bind(batch.0)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        if removed == 0 {
            let exists: Option<i64> = sqlx::query_scalar(BATCH_EXISTS)
                .bind(batch.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            return Err(not_purged(batch, exists.is_some()));
        }
        sqlx::query(PURGE_EVENTS)
            .bind(batch.0)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }
}
