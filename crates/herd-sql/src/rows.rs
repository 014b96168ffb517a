//! Decoding rows into [`TaskRow`]s and [`BatchRow`]s, for both dialects.

use std::sync::Arc;

use herd_core::model::{
    Attempt, BatchId, BatchPolicy, ErrorPolicy, Priority, Reason, StateCounts, TaskId, Timestamp,
    WorkerId,
};

use crate::logic::{
    BatchRow, Result, TaskRow, UpstreamRow, backend, parse_cancel_mode, parse_rule,
};

/// The columns [`task_row`] reads, from `tasks` aliased `t`.
pub(crate) const TASK_COLUMNS: &str = "t.id, t.batch_id, t.idx, t.key, t.priority, t.cost, \
     t.state, t.reason, t.message, t.attempt, t.first_attempt, t.lost, t.worker_id, t.lease_until, t.started_at, \
     t.cancel_mode, t.cancel_reason, t.run_at, t.ready_seq, t.deps_left, t.rule, t.n_dependents, \
     t.n_upstream";

/// The columns [`batch_row`] reads.
pub(crate) const BATCH_COLUMNS: &str = "id, name, state, priority, concurrency, policy, \
     error_policy, deadline, open, paused, stopped, cancelled, failed_by_policy, running_cost, \
     last_served, next_index, next_ready, n_pending, n_queued, n_running, n_retry_wait, \
     n_succeeded, n_failed, n_cancelled, n_skipped, retries, durations, created_at, started_at, \
     finished_at";

/// A stored value herd cannot read: the store was changed by something else.
#[derive(Debug, thiserror::Error)]
#[error(
    "the store holds a value herd cannot read in column {column}: {value:?}; it was changed outside herd or by a newer herd: restore it from a backup, or open it with the herd that wrote it"
)]
pub(crate) struct Corrupt {
    column: &'static str,
    value: String,
}

fn corrupt(column: &'static str, value: impl std::fmt::Debug) -> herd_core::store::StoreError {
    backend(Corrupt {
        column,
        value: format!("{value:?}"),
    })
}

/// The typed reads the decoders need, for each dialect's row type.
pub(crate) trait SqlRow {
    fn int(&self, column: &'static str) -> Result<i64>;
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>>;
    fn text(&self, column: &'static str) -> Result<String>;
    fn opt_text(&self, column: &'static str) -> Result<Option<String>>;
    fn flag(&self, column: &'static str) -> Result<bool>;
    fn opt_blob(&self, column: &'static str) -> Result<Option<Vec<u8>>>;

    fn parsed<T: std::str::FromStr>(&self, column: &'static str) -> Result<T> {
        let text = self.text(column)?;
        text.parse().map_err(|_| corrupt(column, text))
    }

    fn opt_parsed<T: std::str::FromStr>(&self, column: &'static str) -> Result<Option<T>> {
        match self.opt_text(column)? {
            Some(text) => text.parse().map(Some).map_err(|_| corrupt(column, text)),
            None => Ok(None),
        }
    }

    fn unsigned(&self, column: &'static str) -> Result<u32> {
        let n = self.int(column)?;
        u32::try_from(n).map_err(|_| corrupt(column, n))
    }

    fn count(&self, column: &'static str) -> Result<u64> {
        let n = self.int(column)?;
        u64::try_from(n).map_err(|_| corrupt(column, n))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, column: &'static str) -> Result<T> {
        let text = self.text(column)?;
        serde_json::from_str(&text).map_err(|_| corrupt(column, text))
    }
}

macro_rules! sql_row {
    ($row:ty) => {
        impl $crate::rows::SqlRow for $row {
            fn int(&self, column: &'static str) -> $crate::logic::Result<i64> {
                sqlx::Row::try_get(self, column).map_err($crate::logic::backend)
            }
            fn opt_int(&self, column: &'static str) -> $crate::logic::Result<Option<i64>> {
                sqlx::Row::try_get(self, column).map_err($crate::logic::backend)
            }
            fn text(&self, column: &'static str) -> $crate::logic::Result<String> {
                sqlx::Row::try_get(self, column).map_err($crate::logic::backend)
            }
            fn opt_text(&self, column: &'static str) -> $crate::logic::Result<Option<String>> {
                sqlx::Row::try_get(self, column).map_err($crate::logic::backend)
            }
            fn flag(&self, column: &'static str) -> $crate::logic::Result<bool> {
                sqlx::Row::try_get(self, column).map_err($crate::logic::backend)
            }
            fn opt_blob(&self, column: &'static str) -> $crate::logic::Result<Option<Vec<u8>>> {
                sqlx::Row::try_get(self, column).map_err($crate::logic::backend)
            }
        }
    };
}

sql_row!(sqlx::sqlite::SqliteRow);
sql_row!(sqlx::postgres::PgRow);

pub(crate) fn task_row(r: &impl SqlRow) -> Result<TaskRow> {
    let cancel = match r.opt_text("cancel_mode")? {
        Some(mode) => Some((
            parse_cancel_mode(&mode).ok_or_else(|| corrupt("cancel_mode", &mode))?,
            r.parsed::<Reason>("cancel_reason")?,
        )),
        None => None,
    };
    let rule = r.text("rule")?;
    Ok(TaskRow {
        id: TaskId(r.int("id")?),
        batch: BatchId(r.int("batch_id")?),
        index: r.count("idx")?,
        key: r.opt_text("key")?.map(Arc::from),
        priority: Priority(r.int("priority")? as i32),
        cost: r.unsigned("cost")?,
        state: r.parsed("state")?,
        reason: r.opt_parsed("reason")?,
        message: r.opt_text("message")?,
        attempt: Attempt(r.unsigned("attempt")?),
        first_attempt: Attempt(r.unsigned("first_attempt")?),
        lost: r.unsigned("lost")?,
        worker: r.opt_int("worker_id")?.map(WorkerId),
        lease_until: r.opt_int("lease_until")?.map(Timestamp),
        started_at: r.opt_int("started_at")?.map(Timestamp),
        cancel,
        run_at: r.opt_int("run_at")?.map(Timestamp),
        ready_seq: r.opt_int("ready_seq")?,
        deps_left: r.unsigned("deps_left")?,
        rule: parse_rule(&rule).ok_or_else(|| corrupt("rule", &rule))?,
        dependents: r.unsigned("n_dependents")?,
        upstream: r.unsigned("n_upstream")?,
    })
}

pub(crate) fn batch_row(r: &impl SqlRow) -> Result<BatchRow> {
    let policy: BatchPolicy = r.json("policy")?;
    let error_policy: ErrorPolicy = r.json("error_policy")?;
    Ok(BatchRow {
        id: BatchId(r.int("id")?),
        name: r.opt_text("name")?,
        state: r.parsed("state")?,
        priority: Priority(r.int("priority")? as i32),
        concurrency: r.unsigned("concurrency")?,
        policy: Arc::new(policy),
        error_policy,
        deadline: r.opt_int("deadline")?.map(Timestamp),
        open: r.flag("open")?,
        paused: r.flag("paused")?,
        stopped: r.opt_parsed("stopped")?,
        cancelled: r.flag("cancelled")?,
        failed_by_policy: r.flag("failed_by_policy")?,
        running_cost: r.unsigned("running_cost")?,
        last_served: r.int("last_served")?,
        next_index: r.count("next_index")?,
        next_ready: r.int("next_ready")?,
        counts: StateCounts {
            pending: r.count("n_pending")?,
            queued: r.count("n_queued")?,
            running: r.count("n_running")?,
            retry_wait: r.count("n_retry_wait")?,
            succeeded: r.count("n_succeeded")?,
            failed: r.count("n_failed")?,
            cancelled: r.count("n_cancelled")?,
            skipped: r.count("n_skipped")?,
        },
        retries: r.count("retries")?,
        durations: r.opt_blob("durations")?,
        histogram: None,
        created_at: Timestamp(r.int("created_at")?),
        started_at: r.opt_int("started_at")?.map(Timestamp),
        finished_at: r.opt_int("finished_at")?.map(Timestamp),
    })
}

/// An upstream task's result, as the `upstream` statements read it.
pub(crate) fn upstream_row(r: &impl SqlRow) -> Result<UpstreamRow> {
    Ok(UpstreamRow {
        dependent: TaskId(r.int("dependent")?),
        task: TaskId(r.int("id")?),
        key: r.opt_text("key")?.map(Arc::from),
        state: r.parsed("state")?,
        output: r.opt_text("output")?,
    })
}
