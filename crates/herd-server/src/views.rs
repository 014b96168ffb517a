//! What the API answers with: batches, tasks, attempts and events as JSON.
//! Ids are printed as herd prints them everywhere (`b12`, `t345`), times as
//! RFC 3339 in UTC (to the microsecond, as stored), durations in milliseconds.

use std::time::Duration;

use herd_core::store::{AttemptInfo, BatchInfo, TaskRecord};
use herd_core::{BatchStats, Event, EventKind, Reason, StateCounts, TaskState, Timestamp};
use herd_exec::CommandTask;
use serde::Serialize;
use serde_json::Value;

/// A time as RFC 3339, UTC, microseconds (as stored: it reads back exactly).
pub fn time(t: Timestamp) -> String {
    let micros = u64::try_from(t.as_micros()).unwrap_or(0);
    let system = std::time::UNIX_EPOCH + Duration::from_micros(micros);
    humantime::format_rfc3339_micros(system).to_string()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Tasks per state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Waiting for dependencies.
    pub pending: u64,
    /// Ready to run.
    pub queued: u64,
    /// Running.
    pub running: u64,
    /// Waiting to be tried again.
    pub retry_wait: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Skipped (an upstream task did not succeed).
    pub skipped: u64,
    /// All of them.
    pub total: u64,
}

impl From<&StateCounts> for Counts {
    fn from(c: &StateCounts) -> Self {
        Counts {
            pending: c.pending,
            queued: c.queued,
            running: c.running,
            retry_wait: c.retry_wait,
            succeeded: c.succeeded,
            failed: c.failed,
            cancelled: c.cancelled,
            skipped: c.skipped,
            total: c.total(),
        }
    }
}

/// How far a batch has got.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Progress {
    /// Tasks in a terminal state.
    pub finished: u64,
    /// Tasks in all.
    pub total: u64,
    /// `finished` of `total`, 0–100 (100 for an empty batch).
    pub percent: f64,
}

/// When a batch was created, started and finished.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Timings {
    /// When it was stored.
    pub created_at: String,
    /// When its first task started.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
}

/// A batch's figures.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// Attempt durations: median, 95th and 99th percentiles, in ms.
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p95_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
    /// Finished tasks per second of wall time.
    pub throughput: f64,
    /// From the first start to the end (or now), in ms.
    pub wall_ms: f64,
    /// Attempts scheduled again.
    pub retries: u64,
}

/// A batch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchView {
    /// Its id (`b12`).
    pub id: String,
    /// Its name.
    pub name: Option<String>,
    /// Its state.
    pub state: String,
    /// The flow that made it, if any.
    pub flow: Option<String>,
    /// The command template its tasks ran.
    #[schema(value_type = Option<Vec<String>>)]
    pub command: Option<Value>,
    /// Its priority (higher runs first).
    pub priority: i32,
    /// Tasks at once.
    pub concurrency: u32,
    /// Tasks per state.
    pub counts: Counts,
    /// How far it has got.
    pub progress: Progress,
    /// Attempts scheduled again.
    pub retries: u64,
    /// When things happened.
    pub timings: Timings,
    /// Figures (on a single batch's answer only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
}

/// What a server stores with a batch (in its policy's `meta.serve`).
pub fn meta(info: &BatchInfo) -> Option<&Value> {
    info.policy.meta.as_ref().and_then(|m| m.get("serve"))
}

impl BatchView {
    /// The batch, with its figures if given.
    pub fn new(info: &BatchInfo, stats: Option<&BatchStats>) -> Self {
        let c = &info.counts;
        let (finished, total) = (c.finished(), c.total());
        let meta = meta(info);
        BatchView {
            id: info.id.to_string(),
            name: info.name.clone(),
            state: info.state.to_string(),
            flow: meta
                .and_then(|m| m.get("flow"))
                .and_then(Value::as_str)
                .map(String::from),
            command: meta.and_then(|m| m.get("command")).cloned(),
            priority: info.priority.0,
            concurrency: info.concurrency,
            counts: c.into(),
            progress: Progress {
                finished,
                total,
                percent: if total == 0 {
                    100.0
                } else {
                    (finished as f64 * 1000.0 / total as f64).round() / 10.0
                },
            },
            retries: info.retries,
            timings: Timings {
                created_at: time(info.created_at),
                started_at: info.started_at.map(time),
                finished_at: info.finished_at.map(time),
            },
            stats: stats.map(|s| Stats {
                p50_ms: s.p50.map(ms),
                p95_ms: s.p95.map(ms),
                p99_ms: s.p99.map(ms),
                throughput: s.throughput,
                wall_ms: ms(s.wall),
                retries: s.retries,
            }),
        }
    }
}

/// An attempt of a task.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// Its number, from 1.
    pub attempt: u32,
    /// The worker that ran it.
    pub worker: Option<String>,
    /// When it started.
    pub started_at: String,
    /// When it ended (none while it runs).
    pub finished_at: Option<String>,
    /// How long it ran, in ms.
    pub duration_ms: Option<f64>,
    /// The state it led to.
    pub state: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// What failed.
    pub message: Option<String>,
    /// The process's exit code.
    pub exit_code: Option<i32>,
    /// The tail of its standard output (with the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// The tail of its standard error (with the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Bytes of standard output in all.
    pub stdout_bytes: Option<u64>,
    /// Bytes of standard error in all.
    pub stderr_bytes: Option<u64>,
}

impl AttemptView {
    /// An attempt; its output tails with `logs`.
    pub fn new(a: &AttemptInfo, logs: bool) -> Self {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let log = a.log.as_ref();
        AttemptView {
            attempt: a.attempt.0,
            worker: a.worker.map(|w| w.to_string()),
            started_at: time(a.started_at),
            finished_at: a.finished_at.map(time),
            duration_ms: a.finished_at.map(|f| ms(f.since(a.started_at))),
            state: a.state.map(|s| s.to_string()),
            reason: a.reason.map(|r| r.to_string()),
            message: a.message.clone(),
            exit_code: log.and_then(|l| l.exit_code),
            stdout: logs.then(|| log.map(|l| text(&l.stdout))).flatten(),
            stderr: logs.then(|| log.map(|l| text(&l.stderr))).flatten(),
            stdout_bytes: log.map(|l| l.stdout_total),
            stderr_bytes: log.map(|l| l.stderr_total),
        }
    }
}

/// A task.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskView {
    /// Its id (`t345`).
    pub id: String,
    /// Its job number: its position in the batch, from 1.
    pub job: u64,
    /// Its key, if it was given one.
    pub key: Option<String>,
    /// Its state.
    pub state: String,
    /// Why it is in that state.
    pub reason: Option<String>,
    /// Attempts so far.
    pub attempts: u32,
    /// Its last failure's message.
    pub message: Option<String>,
    /// The command it runs.
    pub argv: Vec<String>,
    /// The records it runs on.
    pub items: Vec<String>,
    /// The exit code of its last attempt.
    pub exit_code: Option<i32>,
    /// How long its last attempt ran, in ms.
    pub duration_ms: Option<f64>,
    /// Its latest ended attempt (with output tails on a single task's answer).
    pub last_attempt: Option<AttemptView>,
    /// Every attempt (on a single task's answer only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_history: Option<Vec<AttemptView>>,
}

/// A page of batches.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchPage {
    /// Newest first.
    pub batches: Vec<BatchView>,
    /// The `cursor` of the next page; none after the last.
    pub next_cursor: Option<String>,
}

/// A page of a batch's tasks.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskPage {
    /// By job number.
    pub tasks: Vec<TaskView>,
    /// The `cursor` of the next page; none after the last.
    pub next_cursor: Option<String>,
}

/// What a retry did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Retried {
    /// The batch, reopened.
    pub batch: BatchView,
    /// Tasks that will run again.
    pub retried: usize,
}

impl TaskView {
    /// A task as listed; its last attempt's output tails with `logs`.
    pub fn new(t: &TaskRecord<CommandTask, Value>, logs: bool) -> Self {
        let i = &t.info;
        let last = t.last_attempt.as_ref();
        TaskView {
            id: i.id.to_string(),
            job: i.index + 1,
            key: i.key.as_deref().map(String::from),
            state: i.state.to_string(),
            reason: i.reason.map(|r| r.to_string()),
            attempts: i.attempt.0,
            message: i.message.clone(),
            argv: t.payload.argv.clone(),
            items: t.payload.items.clone(),
            exit_code: exit_code(t),
            duration_ms: last.and_then(|a| a.finished_at.map(|f| ms(f.since(a.started_at)))),
            last_attempt: last.map(|a| AttemptView::new(a, logs)),
            attempt_history: None,
        }
    }
}

/// The exit code of a task's last attempt: from its log, or from how it ended.
pub fn exit_code(t: &TaskRecord<CommandTask, Value>) -> Option<i32> {
    let logged = t.last_attempt.as_ref().and_then(|a| a.log.as_ref());
    match (
        logged.and_then(|l| l.exit_code),
        t.info.state,
        t.info.reason,
    ) {
        (Some(code), _, _) => Some(code),
        (None, _, Some(Reason::ExitCode(code))) => Some(code),
        (None, TaskState::Succeeded, _) => Some(0),
        _ => None,
    }
}

/// One state transition, as a stream sends it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// Its position in the store's sequence (the SSE id).
    pub seq: u64,
    /// When it happened.
    pub at: String,
    /// The batch.
    pub batch: String,
    /// `task` or `batch`.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: &'static str,
    /// The task (task events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The task's job number (task events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<u64>,
    /// The attempt (task events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The state left (none at creation).
    pub from: Option<String>,
    /// The state entered.
    pub to: String,
    /// Why (terminal states, retries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        let base = |kind, from: Option<String>, to: String| EventView {
            seq: e.seq,
            at: time(e.at),
            batch: e.batch.to_string(),
            kind,
            task: None,
            job: None,
            attempt: None,
            from,
            to,
            reason: None,
        };
        match &e.kind {
            EventKind::Task {
                task,
                index,
                attempt,
                from,
                to,
                reason,
            } => EventView {
                task: Some(task.to_string()),
                job: Some(index + 1),
                attempt: Some(attempt.0),
                reason: reason.map(|r| r.to_string()),
                ..base("task", from.map(|s| s.to_string()), to.to_string())
            },
            EventKind::Batch { from, to } => {
                base("batch", from.map(|s| s.to_string()), to.to_string())
            }
        }
    }
}
