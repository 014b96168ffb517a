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
use crate::rows::corrupt;
use crate::store::SqlStore;
use crate::{Postgres, Sqlite};

/// States a batch can be purged in.
const FINISHED: &str = "('succeeded', 'partial', 'failed', 'cancelled')";

/// An event row (schema version 5, `logic::EventWrite`): the first and
/// last seq of a run of one operation's events of one batch, their time,
/// the batch, and one line per event.
type EventRow = (i64, i64, i64, i64, String);

const EVENT_COLUMNS: &str = "seq, last_seq, at, batch_id, body";

/// The events of `rows` numbered above `after`, at most `limit`.
fn events_of(rows: Vec<EventRow>, after: i64, limit: i64) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    for (first, last, at, batch, body) in rows {
        let mut lines = body.split('\n');
        for seq in first..=last {
            let line = lines.next().ok_or_else(|| bad_event(seq, "missing"))?;
            if seq > after && (events.len() as i64) < limit {
                events.push(Event {
                    seq: seq as u64,
                    at: Timestamp(at),
                    batch: BatchId(batch),
                    kind: event_kind(seq, line)?,
                });
            }
        }
        if lines.next().is_some() {
            return Err(bad_event(last, "an event too many"));
        }
    }
    Ok(events)
}

/// An event row herd cannot read: [`corrupt`], which says what to do.
fn bad_event(seq: i64, what: &str) -> StoreError {
    corrupt("events.body", format_args!("event {seq}: {what}"))
}

/// One line of an event row's body (`logic::event_line`).
fn event_kind(seq: i64, line: &str) -> Result<EventKind> {
    let bad = |what: &str| bad_event(seq, what);
    let mut fields = line.split(' ');
    let mut next = |what: &'static str| fields.next().ok_or_else(|| bad(what));
    fn opt<T: std::str::FromStr>(field: &str) -> Option<std::result::Result<T, T::Err>> {
        (field != "-").then(|| field.parse())
    }
    let kind = match next("kind")? {
        "t" => EventKind::Task {
            task: TaskId(next("task")?.parse().map_err(|_| bad("task"))?),
            index: next("index")?.parse().map_err(|_| bad("index"))?,
            attempt: Attempt(next("attempt")?.parse().map_err(|_| bad("attempt"))?),
            from: opt::<TaskState>(next("from")?)
                .transpose()
                .map_err(|_| bad("from"))?,
            to: next("to")?.parse().map_err(|_| bad("to"))?,
            reason: opt::<Reason>(next("reason")?)
                .transpose()
                .map_err(|_| bad("reason"))?,
        },
        "b" => EventKind::Batch {
            from: opt::<BatchState>(next("from")?)
                .transpose()
                .map_err(|_| bad("from"))?,
            to: next("to")?.parse().map_err(|_| bad("to"))?,
        },
        _ => return Err(bad("kind")),
    };
    match fields.next() {
        Some(_) => Err(bad("a field too many")),
        None => Ok(kind),
    }
}

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

/// The event rows holding events after `$N` (of the batch `$1` first,
/// when one is asked for), at most `$N+1` rows (each holds one event after
/// `$N` at least): the row holding `$N`, if it holds later ones too, and
/// every later row. Each statement reads its index, `(batch_id, seq)` or
/// `seq`. Placeholders in order of first appearance, as SQLite numbers
/// them.
fn events_select(of_batch: bool) -> String {
    match of_batch {
        true => format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE batch_id = $1 \
             AND seq >= COALESCE((SELECT MAX(seq) FROM events WHERE batch_id = $1 \
               AND seq <= $2), 0) \
             AND last_seq > $2 ORDER BY seq LIMIT $3"
        ),
        false => format!(
            "SELECT {EVENT_COLUMNS} FROM events \
             WHERE seq >= COALESCE((SELECT MAX(seq) FROM events WHERE seq <= $1), 0) \
             AND last_seq > $1 ORDER BY seq LIMIT $2"
        ),
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
        events_of(rows, after, limit)
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
        events_of(rows, after, limit)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::event_line;

    /// Every kind of event reads back from its line; a line with a field
    /// too many or too few, or one that does not parse, is an error.
    #[test]
    fn event_lines_read_back() {
        let kinds = [
            EventKind::Task {
                task: TaskId(7),
                index: 3,
                attempt: Attempt(2),
                from: Some(TaskState::Running),
                to: TaskState::Failed,
                reason: Some(Reason::Signal(9)),
            },
            EventKind::Task {
                task: TaskId(1),
                index: 0,
                attempt: Attempt(0),
                from: None,
                to: TaskState::Pending,
                reason: None,
            },
            EventKind::Batch {
                from: None,
                to: BatchState::Queued,
            },
            EventKind::Batch {
                from: Some(BatchState::Running),
                to: BatchState::Partial,
            },
        ];
        let mut body = String::new();
        let mut lines = Vec::new();
        for kind in &kinds {
            body.clear();
            event_line(&mut body, kind);
            assert_eq!(&event_kind(1, &body).unwrap(), kind, "{body:?}");
            lines.push(body.clone());
        }
        // The text itself, as migration 5 writes it for older events.
        assert_eq!(
            lines[1..],
            ["t 1 0 0 - pending -", "b - queued", "b running partial"]
        );
        for bad in [
            "t 1 0 0 - pending",
            "t 1 0 0 - pending - x",
            "b - sleeping",
            "x",
        ] {
            let err = event_kind(1, bad).unwrap_err();
            let why = std::error::Error::source(&err).map(|e| e.to_string());
            assert!(
                why.as_deref()
                    .is_some_and(|w| w.contains("events.body") && w.contains("restore it")),
                "{bad:?}: {why:?}"
            );
        }
        let rows = vec![(5, 6, 1, 2, "b - queued".to_string())];
        assert!(
            events_of(rows, 0, 10).is_err(),
            "a row holds each of its events"
        );
    }
}
