//! Where the inspection commands read batches from: the local store, or a
//! server (`--server URL`). Both answer in the store's types, so `herd
//! list`, `status`, `tasks`, `logs`, `export` and `cancel` print through
//! one code path whichever transport brought the answer.

use std::sync::Arc;
use std::time::Duration;

use herd_core::store::{
    AttemptInfo, AttemptLog, BatchQuery, CancelMode, Store, TaskInfo, TaskQuery, TaskRecord,
};
use herd_core::{
    Attempt, BatchId, BatchInfo, BatchPolicy, BatchState, BatchStats, Clock, Priority, Reason,
    RetryPolicy, StateCounts, SystemClock, TaskId, TaskState, Timestamp, WorkerId,
};
use herd_exec::CommandTask;
use herd_server::client::Client;
use serde_json::{Value, json};

use crate::error::CliError;
use crate::store::{BatchRef, Output};

/// A task as the inspection commands read it.
pub type Task = TaskRecord<CommandTask, Output>;

/// What the inspection commands read and do.
pub trait Source {
    /// A page of batches, newest first.
    fn batch_list(
        &self,
        query: BatchQuery,
    ) -> impl Future<Output = Result<Vec<BatchInfo>, CliError>>;
    /// A batch.
    fn batch_get(&self, batch: BatchId) -> impl Future<Output = Result<BatchInfo, CliError>>;
    /// A batch's figures.
    fn batch_stats(&self, batch: BatchId) -> impl Future<Output = Result<BatchStats, CliError>>;
    /// A page of a batch's tasks.
    fn task_list(
        &self,
        batch: BatchId,
        query: TaskQuery,
    ) -> impl Future<Output = Result<Vec<Task>, CliError>>;
    /// The batch of a task, if the source has the task.
    fn task_batch(
        &self,
        batch: BatchId,
        task: TaskId,
    ) -> impl Future<Output = Result<BatchId, CliError>>;
    /// Every attempt of a task of `batch`.
    fn task_attempts(
        &self,
        batch: BatchId,
        task: TaskId,
    ) -> impl Future<Output = Result<Vec<AttemptInfo>, CliError>>;
    /// Cancels a batch.
    fn batch_cancel(
        &self,
        batch: BatchId,
        mode: CancelMode,
    ) -> impl Future<Output = Result<(), CliError>>;
}

/// The batch `batch` names: `last` is the newest.
pub async fn find(source: &impl Source, batch: BatchRef) -> Result<BatchId, CliError> {
    match batch {
        BatchRef::Id(id) => Ok(id),
        BatchRef::Last => {
            let batches = source
                .batch_list(BatchQuery {
                    states: Vec::new(),
                    before: None,
                    limit: 1,
                })
                .await?;
            batches.first().map(|b| b.id).ok_or_else(|| {
                CliError::usage("this store has no batches yet: start one with `herd run`")
            })
        }
    }
}

/// The local store.
pub struct Local<S>(pub Arc<S>);

impl<S: Store<Payload = CommandTask, Output = Output>> Source for Local<S> {
    async fn batch_list(&self, query: BatchQuery) -> Result<Vec<BatchInfo>, CliError> {
        Ok(self.0.batch_list(query).await?)
    }

    async fn batch_get(&self, batch: BatchId) -> Result<BatchInfo, CliError> {
        Ok(self.0.batch_get(batch).await?)
    }

    async fn batch_stats(&self, batch: BatchId) -> Result<BatchStats, CliError> {
        Ok(self.0.batch_stats(batch, SystemClock.now()).await?)
    }

    async fn task_list(&self, batch: BatchId, query: TaskQuery) -> Result<Vec<Task>, CliError> {
        Ok(self.0.task_list(batch, query).await?)
    }

    async fn task_batch(&self, _batch: BatchId, task: TaskId) -> Result<BatchId, CliError> {
        Ok(self.0.task_get(task).await?.batch)
    }

    async fn task_attempts(
        &self,
        _batch: BatchId,
        task: TaskId,
    ) -> Result<Vec<AttemptInfo>, CliError> {
        Ok(self.0.task_attempts(task).await?)
    }

    async fn batch_cancel(&self, batch: BatchId, mode: CancelMode) -> Result<(), CliError> {
        self.0.batch_cancel(batch, mode, SystemClock.now()).await?;
        Ok(())
    }
}

/// A server, through its API.
pub struct Remote(pub Client);

fn bad(what: &str, value: &Value) -> CliError {
    CliError::failed(format!("the server's answer has no valid {what}: {value}"))
}

fn time(value: &Value) -> Result<Option<Timestamp>, CliError> {
    let Some(text) = value.as_str() else {
        return Ok(None);
    };
    let at = humantime::parse_rfc3339(text).map_err(|_| bad("time", value))?;
    let micros = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad("time", value))?
        .as_micros();
    Ok(Some(Timestamp(i64::try_from(micros).unwrap_or(i64::MAX))))
}

fn ms(value: &Value) -> Option<Duration> {
    value
        .as_f64()
        .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1e3))
}

fn id<T>(value: &Value, prefix: char, make: fn(i64) -> T) -> Result<T, CliError> {
    value
        .as_str()
        .and_then(|s| s.strip_prefix(prefix))
        .and_then(|s| s.parse().ok())
        .map(make)
        .ok_or_else(|| bad("id", value))
}

fn parsed<T: std::str::FromStr>(value: &Value) -> Result<Option<T>, CliError> {
    match value.as_str() {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| bad("state or reason", value)),
    }
}

fn counts(c: &Value) -> StateCounts {
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    StateCounts {
        pending: n("pending"),
        queued: n("queued"),
        running: n("running"),
        retry_wait: n("retry_wait"),
        succeeded: n("succeeded"),
        failed: n("failed"),
        cancelled: n("cancelled"),
        skipped: n("skipped"),
    }
}

/// A batch from the server's view of it.
fn batch_info(v: &Value) -> Result<BatchInfo, CliError> {
    let t = &v["timings"];
    Ok(BatchInfo {
        id: id(&v["id"], 'b', BatchId)?,
        name: v["name"].as_str().map(String::from),
        state: parsed::<BatchState>(&v["state"])?.ok_or_else(|| bad("state", v))?,
        priority: Priority(v["priority"].as_i64().unwrap_or(0) as i32),
        concurrency: v["concurrency"].as_u64().unwrap_or(1) as u32,
        policy: Arc::new(BatchPolicy {
            flow: Arc::from(herd_server::FLOW),
            retry: RetryPolicy::none(),
            timeout: None,
            deadline: None,
            grace: Duration::from_secs(5),
            meta: Some(json!({ "serve": { "command": v["command"], "flow": v["flow"] } })),
        }),
        counts: counts(&v["counts"]),
        retries: v["retries"].as_u64().unwrap_or(0),
        open: false,
        created_at: time(&t["created_at"])?.ok_or_else(|| bad("created_at", v))?,
        started_at: time(&t["started_at"])?,
        finished_at: time(&t["finished_at"])?,
    })
}

fn attempt_info(a: &Value) -> Result<AttemptInfo, CliError> {
    let text = |k: &str| a[k].as_str().unwrap_or_default().as_bytes().to_vec();
    let log = a["stdout_bytes"].as_u64().map(|stdout_total| AttemptLog {
        exit_code: a["exit_code"].as_i64().map(|c| c as i32),
        stdout: text("stdout"),
        stdout_total,
        stderr: text("stderr"),
        stderr_total: a["stderr_bytes"].as_u64().unwrap_or(0),
    });
    Ok(AttemptInfo {
        attempt: Attempt(a["attempt"].as_u64().unwrap_or(0) as u32),
        worker: a["worker"]
            .as_str()
            .map(|_| id(&a["worker"], 'w', WorkerId))
            .transpose()?,
        started_at: time(&a["started_at"])?.ok_or_else(|| bad("started_at", a))?,
        finished_at: time(&a["finished_at"])?,
        state: parsed::<TaskState>(&a["state"])?,
        reason: parsed::<Reason>(&a["reason"])?,
        message: a["message"].as_str().map(String::from),
        log,
    })
}

fn task_record(batch: BatchId, v: &Value) -> Result<Task, CliError> {
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(TaskRecord {
        info: TaskInfo {
            id: id(&v["id"], 't', TaskId)?,
            batch,
            index: v["job"]
                .as_u64()
                .ok_or_else(|| bad("job", v))?
                .saturating_sub(1),
            key: v["key"].as_str().map(Arc::from),
            state: parsed::<TaskState>(&v["state"])?.ok_or_else(|| bad("state", v))?,
            reason: parsed::<Reason>(&v["reason"])?,
            attempt: Attempt(v["attempts"].as_u64().unwrap_or(0) as u32),
            lost: 0,
            priority: Priority::NORMAL,
            cost: 1,
            message: v["message"].as_str().map(String::from),
            worker: None,
            started_at: None,
        },
        payload: CommandTask {
            argv: strings("argv"),
            items: strings("items"),
        },
        output: None,
        last_attempt: match &v["last_attempt"] {
            Value::Null => None,
            a => Some(attempt_info(a)?),
        },
    })
}

fn states<T: ToString>(states: &[T]) -> String {
    states
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl Source for Remote {
    async fn batch_list(&self, query: BatchQuery) -> Result<Vec<BatchInfo>, CliError> {
        let mut path = format!("/api/batches?limit={}", query.limit.clamp(1, 1000));
        if !query.states.is_empty() {
            path.push_str(&format!("&state={}", states(&query.states)));
        }
        if let Some(before) = query.before {
            path.push_str(&format!("&cursor={before}"));
        }
        let page = self.0.get(&path).await?;
        let batches = page["batches"]
            .as_array()
            .ok_or_else(|| bad("batches", &page))?;
        batches.iter().map(batch_info).collect()
    }

    async fn batch_get(&self, batch: BatchId) -> Result<BatchInfo, CliError> {
        batch_info(&self.0.get(&format!("/api/batches/{batch}")).await?)
    }

    async fn batch_stats(&self, batch: BatchId) -> Result<BatchStats, CliError> {
        let v = self.0.get(&format!("/api/batches/{batch}")).await?;
        let s = &v["stats"];
        Ok(BatchStats {
            counts: counts(&v["counts"]),
            retries: s["retries"].as_u64().unwrap_or(0),
            p50: ms(&s["p50_ms"]),
            p95: ms(&s["p95_ms"]),
            p99: ms(&s["p99_ms"]),
            throughput: s["throughput"].as_f64().unwrap_or(0.0),
            wall: ms(&s["wall_ms"]).unwrap_or_default(),
        })
    }

    async fn task_list(&self, batch: BatchId, query: TaskQuery) -> Result<Vec<Task>, CliError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let mut path = format!(
            "/api/batches/{batch}/tasks?limit={}&logs={}",
            query.limit.min(1000),
            query.logs
        );
        if !query.states.is_empty() {
            path.push_str(&format!("&state={}", states(&query.states)));
        }
        if let Some(after) = query.after {
            // The cursor is a job number: the index plus one.
            path.push_str(&format!("&cursor={}", after + 1));
        }
        let page = self.0.get(&path).await?;
        let tasks = page["tasks"]
            .as_array()
            .ok_or_else(|| bad("tasks", &page))?;
        tasks.iter().map(|t| task_record(batch, t)).collect()
    }

    async fn task_batch(&self, batch: BatchId, task: TaskId) -> Result<BatchId, CliError> {
        self.0
            .get(&format!("/api/batches/{batch}/tasks/{task}"))
            .await?;
        Ok(batch)
    }

    async fn task_attempts(
        &self,
        batch: BatchId,
        task: TaskId,
    ) -> Result<Vec<AttemptInfo>, CliError> {
        let v = self
            .0
            .get(&format!("/api/batches/{batch}/tasks/{task}"))
            .await?;
        let history = v["attempt_history"]
            .as_array()
            .ok_or_else(|| bad("attempts", &v))?;
        history.iter().map(attempt_info).collect()
    }

    async fn batch_cancel(&self, batch: BatchId, mode: CancelMode) -> Result<(), CliError> {
        let force = mode == CancelMode::Forced;
        self.0
            .call(
                "DELETE",
                &format!("/api/batches/{batch}?force={force}"),
                "application/json",
                b"",
            )
            .await?;
        Ok(())
    }
}
