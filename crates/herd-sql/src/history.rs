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

impl<P, O> History for SqlStore<Sqlite, P, O> {
    async fn history_events(&self, query: EventQuery) -> Result<Vec<Event>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let after = i64::try_from(query.after).unwrap_or(i64::MAX);
        // Two statements, so that each uses its index: (batch_id, seq) or seq.
        let sql = match query.batch {
            Some(_) => format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE batch_id = ? AND seq > ? ORDER BY seq LIMIT ?"
            ),
            None => {
                format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?")
            }
        };
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
        let removed = sqlx::query(&format!(
            "DELETE FROM batches WHERE id = ? AND state IN {FINISHED}"
        ))
        .bind(batch.0)
        .execute(&mut *conn)
        .await
        .map_err(backend)?
        .rows_affected();
        if removed == 0 {
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM batches WHERE id = ?")
                .bind(batch.0)
                .fetch_optional(&mut *conn)
                .await
                .map_err(backend)?;
            return Err(not_purged(batch, exists.is_some()));
        }
        sqlx::query("DELETE FROM events WHERE batch_id = ?")
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
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let after = i64::try_from(query.after).unwrap_or(i64::MAX);
        // Two statements, not `$n IS NULL OR …`: a generic plan of that
        // would use neither index.
        let sql = match query.batch {
            Some(_) => format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 AND batch_id = $3 ORDER BY seq LIMIT $2"
            ),
            None => {
                format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
            }
        };
        let mut select = sqlx::query_as(&sql).bind(after).bind(limit);
        if let Some(batch) = query.batch {
            select = select.bind(batch.0);
        }
        let rows: Vec<EventRow> = select.fetch_all(self.pool()).await.map_err(backend)?;
        rows.into_iter().map(event).collect()
    }

    async fn history_purge(&self, batch: BatchId) -> Result<()> {
        let mut tx = self.pool().begin().await.map_err(backend)?;
        let removed = sqlx::query(&format!(
            "DELETE FROM batches WHERE id = $1 AND state IN {FINISHED}"
        ))
        .bind(batch.0)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
        if removed == 0 {
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM batches WHERE id = $1")
                .bind(batch.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            return Err(not_purged(batch, exists.is_some()));
        }
        sqlx::query("DELETE FROM events WHERE batch_id = $1")
            .bind(batch.0)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }
}
