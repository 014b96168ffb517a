//! Decoding rows into [`TaskRow`]s and [`BatchRow`]s, for both dialects.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use herd_core::model::{
    Attempt, BatchId, BatchPolicy, ErrorPolicy, Priority, Reason, StateCounts, TaskId, Timestamp,
    WorkerId,
};
use herd_core::store::{AttemptInfo, WorkerInfo};

use crate::logic::{
    BatchRow, Result, TaskRow, UpstreamRow, backend, parse_cancel_mode, parse_rule,
};
use crate::logs::StoredLog;

/// The columns [`task_row`] reads, from `tasks` aliased `t`.
pub(crate) const TASK_COLUMNS: &str = "t.id, t.batch_id, t.idx, t.key, t.priority, t.cost, \
     t.state, t.reason, t.message, t.attempt, t.first_attempt, t.lost, t.worker_id, t.lease_until, t.started_at, \
     t.cancel_mode, t.cancel_reason, t.run_at, t.ready_seq, t.deps_left, t.rule, t.n_dependents, \
     t.n_upstream";

/// [`TASK_COLUMNS`] as the SQLite dialect's hot reads take them (a
/// claim's heads, a completion's tasks, dependents): every field but the
/// key and the message, which are free text, packed into one text `p` of
/// fields separated by spaces (NULL: empty; the columns that cannot be NULL
/// formatted with `%d`, which spares SQLite making each a text value first:
/// `printf` a sixth cheaper over a drain), decoded by
/// [`packed_task_row`]. sqlx copies every value of every row it reads out
/// of SQLite, with two allocations and two frees each, and a task row was
/// 23 values (docs/design/stores.md, "SQLite: two round trips").
pub(crate) const TASK_PACKED: &str = "printf('%d %d %d %d %d %s %s %d %d %d %s %s %s %s %s \
     %s %s %d %s %d %d', t.id, t.batch_id, t.idx, t.priority, t.cost, t.state, t.reason, \
     t.attempt, t.first_attempt, t.lost, t.worker_id, t.lease_until, t.started_at, t.cancel_mode, \
     t.cancel_reason, t.run_at, t.ready_seq, t.deps_left, t.rule, t.n_dependents, t.n_upstream) \
     AS p, t.key, t.message";

/// The columns [`batch_row`] reads.
pub(crate) const BATCH_COLUMNS: &str = "id, name, state, priority, concurrency, policy, \
     error_policy, deadline, open, paused, stopped, cancelled, failed_by_policy, running_cost, \
     last_served, next_index, next_ready, n_pending, n_queued, n_running, n_retry_wait, \
     n_succeeded, n_failed, n_cancelled, n_skipped, retries, durations, created_at, started_at, \
     finished_at";

/// [`BATCH_COLUMNS`] without the duration histogram, which listings do not
/// need (it reads back as `None`).
pub(crate) const BATCH_LIST_COLUMNS: &str = "id, name, state, priority, concurrency, policy, \
     error_policy, deadline, open, paused, stopped, cancelled, failed_by_policy, running_cost, \
     last_served, next_index, next_ready, n_pending, n_queued, n_running, n_retry_wait, \
     n_succeeded, n_failed, n_cancelled, n_skipped, retries, NULL AS durations, created_at, \
     started_at, finished_at";

/// The columns [`attempt_row`] reads, from `attempts` aliased `a` (prefixed,
/// so that they can sit beside a task's).
pub(crate) const ATTEMPT_COLUMNS: &str = "a.attempt AS a_attempt, a.worker_id AS a_worker, \
     a.started_at AS a_started_at, a.finished_at AS a_finished_at, a.outcome AS a_outcome, \
     a.reason AS a_reason, a.error AS a_error";

/// The log columns [`attempt_row`] reads when asked for logs.
pub(crate) const LOG_COLUMNS: &str = "a.exit_code AS a_exit_code, a.stdout_tail AS a_stdout, \
     a.stderr_tail AS a_stderr, a.compressed AS a_compressed, \
     a.stdout_total AS a_stdout_total, a.stderr_total AS a_stderr_total";

/// The columns [`worker_row`] reads.
pub(crate) const WORKER_COLUMNS: &str = "id, host, pid, started_at, last_heartbeat";

/// A stored value herd cannot read: the store was changed by something else.
#[derive(Debug, thiserror::Error)]
#[error(
    "the store holds a value herd cannot read in column {column}: {value:?}; it was changed outside herd or by a newer herd: restore it from a backup, or open it with the herd that wrote it"
)]
pub(crate) struct Corrupt {
    column: &'static str,
    value: String,
}

pub(crate) fn corrupt(
    column: &'static str,
    value: impl std::fmt::Debug,
) -> herd_core::store::StoreError {
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
    /// Runs `f` on a text column, without copying it out.
    fn with_text<R>(&self, column: &'static str, f: impl FnOnce(&str) -> R) -> Result<R>;
    /// The `i`-th column, for statements whose columns have no names.
    fn int_at(&self, i: usize) -> Result<i64>;
    fn opt_int_at(&self, i: usize) -> Result<Option<i64>>;
    fn text_at(&self, i: usize) -> Result<String>;

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
            fn with_text<R>(
                &self,
                column: &'static str,
                f: impl FnOnce(&str) -> R,
            ) -> $crate::logic::Result<R> {
                let text: &str =
                    sqlx::Row::try_get(self, column).map_err($crate::logic::backend)?;
                Ok(f(text))
            }
            fn int_at(&self, i: usize) -> $crate::logic::Result<i64> {
                sqlx::Row::try_get(self, i).map_err($crate::logic::backend)
            }
            fn opt_int_at(&self, i: usize) -> $crate::logic::Result<Option<i64>> {
                sqlx::Row::try_get(self, i).map_err($crate::logic::backend)
            }
            fn text_at(&self, i: usize) -> $crate::logic::Result<String> {
                sqlx::Row::try_get(self, i).map_err($crate::logic::backend)
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

/// A task row read with [`TASK_PACKED`].
pub(crate) fn packed_task_row(r: &impl SqlRow) -> Result<TaskRow> {
    let key = r.opt_text("key")?.map(Arc::from);
    let message = r.opt_text("message")?;
    r.with_text("p", |p| unpack_task(p, key, message))?
}

fn unpack_task(p: &str, key: Option<Arc<str>>, message: Option<String>) -> Result<TaskRow> {
    let mut fields = Fields(Some(p));
    let mut next = |column: &'static str| fields.next().ok_or_else(|| corrupt(column, p));
    fn opt<T: std::str::FromStr>(column: &'static str, field: &str) -> Result<Option<T>> {
        match field {
            "" => Ok(None),
            _ => field.parse().map(Some).map_err(|_| corrupt(column, field)),
        }
    }
    fn one<T: std::str::FromStr>(column: &'static str, field: &str) -> Result<T> {
        opt(column, field)?.ok_or_else(|| corrupt(column, field))
    }
    let id = TaskId(one("id", next("id")?)?);
    let batch = BatchId(one("batch_id", next("batch_id")?)?);
    let index = one("idx", next("idx")?)?;
    let priority = Priority(one("priority", next("priority")?)?);
    let cost = one("cost", next("cost")?)?;
    let state = one("state", next("state")?)?;
    let reason = opt("reason", next("reason")?)?;
    let attempt = Attempt(one("attempt", next("attempt")?)?);
    let first_attempt = Attempt(one("first_attempt", next("first_attempt")?)?);
    let lost = one("lost", next("lost")?)?;
    let worker = opt("worker_id", next("worker_id")?)?.map(WorkerId);
    let lease_until = opt("lease_until", next("lease_until")?)?.map(Timestamp);
    let started_at = opt("started_at", next("started_at")?)?.map(Timestamp);
    let cancel_mode = next("cancel_mode")?;
    let cancel_reason = next("cancel_reason")?;
    let cancel = match cancel_mode {
        "" => None,
        mode => Some((
            parse_cancel_mode(mode).ok_or_else(|| corrupt("cancel_mode", mode))?,
            one("cancel_reason", cancel_reason)?,
        )),
    };
    let run_at = opt("run_at", next("run_at")?)?.map(Timestamp);
    let ready_seq = opt("ready_seq", next("ready_seq")?)?;
    let deps_left = one("deps_left", next("deps_left")?)?;
    let rule = next("rule")?;
    let rule = parse_rule(rule).ok_or_else(|| corrupt("rule", rule))?;
    let dependents = one("n_dependents", next("n_dependents")?)?;
    let upstream = one("n_upstream", next("n_upstream")?)?;
    if fields.next().is_some() {
        return Err(corrupt("p", p));
    }
    Ok(TaskRow {
        id,
        batch,
        index,
        key,
        priority,
        cost,
        state,
        reason,
        message,
        attempt,
        first_attempt,
        lost,
        worker,
        lease_until,
        started_at,
        cancel,
        run_at,
        ready_seq,
        deps_left,
        rule,
        dependents,
        upstream,
    })
}

/// The fields of a packed row, split at each space (an empty field is a
/// NULL). `str::split(' ')` goes through the general pattern searcher,
/// which callgrind put at about 4% of a SQLite drain's instructions.
struct Fields<'a>(Option<&'a str>);

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.0?;
        match rest.bytes().position(|b| b == b' ') {
            Some(at) => {
                self.0 = Some(&rest[at + 1..]);
                Some(&rest[..at])
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

/// Policies as stored (JSON text), decoded once per process: a batch's
/// row is read by every claim and completion, and its policy carries what
/// the face that submitted it keeps there (`herd run`'s command line).
/// Equal text, equal policy, whichever batch it belongs to.
struct Policies {
    batch: HashMap<String, Arc<BatchPolicy>>,
    error: HashMap<String, ErrorPolicy>,
}

/// Entries of each kind kept at most; the cache starts over past that.
const POLICIES_KEPT: usize = 256;

static POLICIES: LazyLock<Mutex<Policies>> = LazyLock::new(|| {
    Mutex::new(Policies {
        batch: HashMap::new(),
        error: HashMap::new(),
    })
});

fn cached<T: Clone>(
    kept: &mut HashMap<String, T>,
    text: &str,
    column: &'static str,
    decode: impl FnOnce(&str) -> serde_json::Result<T>,
) -> Result<T> {
    if let Some(value) = kept.get(text) {
        return Ok(value.clone());
    }
    let value = decode(text).map_err(|_| corrupt(column, text))?;
    if kept.len() >= POLICIES_KEPT {
        kept.clear();
    }
    kept.insert(text.to_owned(), value.clone());
    Ok(value)
}

fn policies(r: &impl SqlRow) -> Result<(Arc<BatchPolicy>, ErrorPolicy)> {
    let mut kept = POLICIES.lock().unwrap_or_else(|e| e.into_inner());
    let policy = r.with_text("policy", |text| {
        cached(&mut kept.batch, text, "policy", |t| {
            serde_json::from_str::<BatchPolicy>(t).map(Arc::new)
        })
    })??;
    let error_policy = r.with_text("error_policy", |text| {
        cached(&mut kept.error, text, "error_policy", |t| {
            serde_json::from_str(t)
        })
    })??;
    Ok((policy, error_policy))
}

pub(crate) fn batch_row(r: &impl SqlRow) -> Result<BatchRow> {
    let (policy, error_policy) = policies(r)?;
    let deadline = r.opt_int("deadline")?.map(Timestamp);
    let finished_at = r.opt_int("finished_at")?.map(Timestamp);
    let last_served = r.int("last_served")?;
    let queued = r.count("n_queued")?;
    let next_ready = r.int("next_ready")?;
    Ok(BatchRow {
        id: BatchId(r.int("id")?),
        name: r.opt_text("name")?,
        state: r.parsed("state")?,
        priority: Priority(r.int("priority")? as i32),
        concurrency: r.unsigned("concurrency")?,
        policy,
        error_policy,
        deadline,
        open: r.flag("open")?,
        paused: r.flag("paused")?,
        stopped: r.opt_parsed("stopped")?,
        cancelled: r.flag("cancelled")?,
        failed_by_policy: r.flag("failed_by_policy")?,
        running_cost: r.unsigned("running_cost")?,
        last_served,
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
        policy_changed: false,
        queue_touched: false,
        histogram: None,
        created_at: Timestamp(r.int("created_at")?),
        started_at: r.opt_int("started_at")?.map(Timestamp),
        finished_at,
        stored: crate::logic::Stored {
            deadline,
            finished_at,
            last_served,
            queued,
            next_ready,
        },
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

/// The attempt in [`ATTEMPT_COLUMNS`] (and [`LOG_COLUMNS`] when `logs`);
/// `None` where an outer join found none.
pub(crate) fn attempt_row(r: &impl SqlRow, logs: bool) -> Result<Option<AttemptInfo>> {
    let Some(attempt) = r.opt_int("a_attempt")? else {
        return Ok(None);
    };
    let attempt = u32::try_from(attempt).map_err(|_| corrupt("attempt", attempt))?;
    // Only an attempt whose report carried a log has totals.
    let stdout_total = match logs {
        true => r.opt_int("a_stdout_total")?,
        false => None,
    };
    let log = match stdout_total {
        Some(stdout_total) => {
            let exit_code = match r.opt_int("a_exit_code")? {
                Some(code) => Some(i32::try_from(code).map_err(|_| corrupt("exit_code", code))?),
                None => None,
            };
            let stored = StoredLog {
                exit_code,
                stdout: r.opt_blob("a_stdout")?.unwrap_or_default(),
                stderr: r.opt_blob("a_stderr")?.unwrap_or_default(),
                compressed: r.flag("a_compressed")?,
                stdout_total,
                stderr_total: r.opt_int("a_stderr_total")?.unwrap_or(0),
            };
            Some(stored.into_log()?)
        }
        None => None,
    };
    Ok(Some(AttemptInfo {
        attempt: Attempt(attempt),
        worker: r.opt_int("a_worker")?.map(WorkerId),
        started_at: Timestamp(r.int("a_started_at")?),
        finished_at: r.opt_int("a_finished_at")?.map(Timestamp),
        state: r.opt_parsed("a_outcome")?,
        reason: r.opt_parsed("a_reason")?,
        message: r.opt_text("a_error")?,
        log,
    }))
}

/// A task as [`crate::statements::task_list`] reads it: its row, payload
/// and output (JSON text) and its latest ended attempt.
pub(crate) struct ListedTask {
    pub row: TaskRow,
    pub payload: String,
    pub output: Option<String>,
    pub last_attempt: Option<AttemptInfo>,
}

pub(crate) fn listed_task(r: &impl SqlRow, logs: bool) -> Result<ListedTask> {
    Ok(ListedTask {
        row: task_row(r)?,
        payload: r.text("payload")?,
        output: r.opt_text("output")?,
        last_attempt: attempt_row(r, logs)?,
    })
}

pub(crate) fn worker_row(r: &impl SqlRow) -> Result<WorkerInfo> {
    Ok(WorkerInfo {
        id: WorkerId(r.int("id")?),
        host: r.text("host")?,
        pid: r.unsigned("pid")?,
        started_at: Timestamp(r.int("started_at")?),
        last_heartbeat: Timestamp(r.int("last_heartbeat")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packed row's fields come apart at every space, empty ones (NULLs)
    /// included, first and last too.
    #[test]
    fn fields_split_at_every_space() {
        let fields: Vec<&str> = Fields(Some("1  3 queued ")).collect();
        assert_eq!(fields, ["1", "", "3", "queued", ""]);
        let fields: Vec<&str> = Fields(Some(" x")).collect();
        assert_eq!(fields, ["", "x"]);
        assert_eq!(Fields(Some("")).collect::<Vec<_>>(), [""]);
        assert_eq!(Fields(None).count(), 0);
    }
}
