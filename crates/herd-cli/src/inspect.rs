//! The commands that read a store: `list`, `status`, `tasks`, `logs`,
//! `export`, and `cancel`. Text for people, `--json` for scripts.

use std::io::Write;
use std::time::Duration;

use herd_core::store::{AttemptInfo, BatchQuery, CancelMode, TaskQuery, TaskRecord};
use herd_core::{BatchInfo, BatchState, Reason, TaskId, TaskState, Timestamp};
use herd_exec::CommandTask;
use serde_json::{Value, json};

use crate::cli::{
    BatchArgs, CancelArgs, ExportArgs, ExportFormat, ListArgs, LogsArgs, TasksArgs, exit,
};
use crate::error::CliError;
use crate::run::{Settings, display_argv};
use crate::show::seconds;
use crate::source::{Source, find};
use crate::store::{BatchRef, Location, with_source};

/// Tasks read per store call when walking a whole batch.
const PAGE: usize = 1000;

/// `herd list`.
pub async fn list(
    args: ListArgs,
    location: Location,
    server: Option<String>,
) -> Result<u8, CliError> {
    let states = match &args.state {
        Some(s) => vec![
            s.parse::<BatchState>()
                .map_err(|e| CliError::usage(format!("--state {s:?}: {e}")))?,
        ],
        None => Vec::new(),
    };
    with_source!(location, server, |src| {
        let batches = src
            .batch_list(BatchQuery {
                states,
                before: None,
                limit: args.limit,
            })
            .await?;
        let mut out = std::io::stdout().lock();
        if args.json {
            for b in &batches {
                writeln!(out, "{}", batch_json(b))?;
            }
        } else {
            writeln!(
                out,
                "{:<8} {:<10} {:>15} {:>7}  {:<20} NAME / COMMAND",
                "BATCH", "STATE", "DONE", "FAILED", "CREATED"
            )?;
            for b in &batches {
                let c = &b.counts;
                writeln!(
                    out,
                    "{:<8} {:<10} {:>15} {:>7}  {:<20} {}",
                    b.id.to_string(),
                    b.state.to_string(),
                    format!("{}/{}", c.finished(), c.total()),
                    c.failed,
                    time(b.created_at),
                    b.name.clone().unwrap_or_else(|| command_of(b)),
                )?;
            }
        }
        Ok(exit::OK)
    })
}

/// `herd status`.
pub async fn status(
    args: BatchArgs,
    location: Location,
    server: Option<String>,
) -> Result<u8, CliError> {
    let batch = BatchRef::parse(&args.batch)?;
    with_source!(location, server, |src| {
        let batch = find(&src, batch).await?;
        let info = src.batch_get(batch).await?;
        let stats = src.batch_stats(batch).await?;
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        let mut out = std::io::stdout().lock();
        if args.json {
            let mut json = batch_json(&info);
            json["stats"] = json!({
                "retries": stats.retries,
                "attempt_ms": { "p50": ms(stats.p50), "p95": ms(stats.p95), "p99": ms(stats.p99) },
                "throughput": stats.throughput,
                "wall_seconds": stats.wall.as_secs_f64(),
            });
            writeln!(out, "{json}")?;
        } else {
            let c = &info.counts;
            writeln!(out, "batch    {}", info.id)?;
            if let Some(name) = &info.name {
                writeln!(out, "name     {name}")?;
            }
            writeln!(out, "command  {}", command_of(&info))?;
            writeln!(out, "state    {}", info.state)?;
            let percent = if c.total() == 0 {
                100.0
            } else {
                c.finished() as f64 * 100.0 / c.total() as f64
            };
            writeln!(
                out,
                "progress {}/{} ({percent:.1}%)",
                c.finished(),
                c.total()
            )?;
            writeln!(
                out,
                "tasks    {} succeeded, {} failed, {} cancelled, {} skipped, {} running, {} queued, {} waiting to retry, {} pending",
                c.succeeded,
                c.failed,
                c.cancelled,
                c.skipped,
                c.running,
                c.queued,
                c.retry_wait,
                c.pending
            )?;
            writeln!(out, "retries  {}", stats.retries)?;
            if let (Some(p50), Some(p95), Some(p99)) = (stats.p50, stats.p95, stats.p99) {
                writeln!(
                    out,
                    "attempts p50 {}, p95 {}, p99 {}",
                    seconds(p50),
                    seconds(p95),
                    seconds(p99)
                )?;
            }
            writeln!(out, "created  {}", time(info.created_at))?;
            if let Some(started) = info.started_at {
                writeln!(out, "started  {}", time(started))?;
            }
            if let Some(finished) = info.finished_at {
                writeln!(out, "finished {}", time(finished))?;
            }
            writeln!(
                out,
                "wall     {} ({:.1} tasks/s)",
                seconds(stats.wall),
                stats.throughput
            )?;
        }
        Ok(exit::OK)
    })
}

/// `herd tasks`.
pub async fn tasks(
    args: TasksArgs,
    location: Location,
    server: Option<String>,
) -> Result<u8, CliError> {
    let batch = BatchRef::parse(&args.batch)?;
    let states = match &args.state {
        Some(s) => vec![
            s.parse::<TaskState>()
                .map_err(|e| CliError::usage(format!("--state {s:?}: {e}")))?,
        ],
        None => Vec::new(),
    };
    with_source!(location, server, |src| {
        let batch = find(&src, batch).await?;
        let mut out = std::io::stdout().lock();
        if !args.json {
            writeln!(
                out,
                "{:>6} {:<9} {:<10} {:<16} {:>8} {:>9}  COMMAND",
                "JOB", "TASK", "STATE", "REASON", "ATTEMPTS", "TOOK"
            )?;
        }
        let mut left = args.limit.unwrap_or(usize::MAX);
        let mut after = None;
        while left > 0 {
            let page = src
                .task_list(
                    batch,
                    TaskQuery {
                        states: states.clone(),
                        after,
                        limit: PAGE.min(left),
                        logs: false,
                    },
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.info.index);
            left -= page.len();
            for task in &page {
                if args.json {
                    writeln!(out, "{}", task_json(task))?;
                } else {
                    let i = &task.info;
                    writeln!(
                        out,
                        "{:>6} {:<9} {:<10} {:<16} {:>8} {:>9}  {}",
                        i.index + 1,
                        i.id.to_string(),
                        i.state.to_string(),
                        i.reason.map(|r| r.to_string()).unwrap_or_default(),
                        i.attempt.0,
                        took(task.last_attempt.as_ref())
                            .map(seconds)
                            .unwrap_or_default(),
                        display_argv(&task.payload.argv),
                    )?;
                }
            }
        }
        Ok(exit::OK)
    })
}

/// `herd logs`.
pub async fn logs(
    args: LogsArgs,
    location: Location,
    server: Option<String>,
) -> Result<u8, CliError> {
    let batch = BatchRef::parse(&args.batch)?;
    with_source!(location, server, |src| {
        let batch = find(&src, batch).await?;
        let task = task_of(&src, batch, &args.task).await?;
        let attempts = src.task_attempts(batch, task).await?;
        let shown: Vec<&AttemptInfo> = if args.all {
            attempts.iter().collect()
        } else {
            attempts.last().into_iter().collect()
        };
        let mut out = std::io::stdout().lock();
        if args.json {
            let json: Vec<Value> = shown.iter().map(|a| attempt_json(a, true)).collect();
            writeln!(out, "{}", Value::Array(json))?;
            return Ok(exit::OK);
        }
        if shown.is_empty() {
            writeln!(out, "task {task} has not run yet")?;
        }
        for attempt in shown {
            writeln!(
                out,
                "== {task} attempt {} — {} ==",
                attempt.attempt.0,
                attempt_outcome(attempt)
            )?;
            let Some(log) = &attempt.log else {
                writeln!(out, "(no output kept)")?;
                continue;
            };
            for (name, tail, total) in [
                ("stdout", &log.stdout, log.stdout_total),
                ("stderr", &log.stderr, log.stderr_total),
            ] {
                let cut = total.saturating_sub(tail.len() as u64);
                if cut > 0 {
                    writeln!(out, "-- {name} (last {} of {total} bytes) --", tail.len())?;
                } else {
                    writeln!(out, "-- {name} ({total} bytes) --")?;
                }
                out.write_all(tail)?;
                if !tail.is_empty() && !tail.ends_with(b"\n") {
                    writeln!(out)?;
                }
            }
        }
        Ok(exit::OK)
    })
}

/// `herd export`.
pub async fn export(
    args: ExportArgs,
    location: Location,
    server: Option<String>,
) -> Result<u8, CliError> {
    let batch = BatchRef::parse(&args.batch)?;
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .map_err(|e| CliError::usage(format!("cannot write {}: {e}", path.display())))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = Exporter::new(args.format, std::io::BufWriter::new(out))?;
    with_source!(location, server, |src| {
        let batch = find(&src, batch).await?;
        src.batch_get(batch).await?;
        let mut after = None;
        loop {
            let page = src
                .task_list(
                    batch,
                    TaskQuery {
                        states: Vec::new(),
                        after,
                        limit: PAGE,
                        logs: true,
                    },
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.info.index);
            for task in &page {
                out.task(task)?;
            }
        }
        out.finish()?;
        Ok(exit::OK)
    })
}

/// Writes exported tasks in one format.
enum Exporter<W: Write> {
    Csv(Box<csv::Writer<W>>),
    Json { out: W, first: bool },
    Jsonl(W),
}

impl<W: Write> Exporter<W> {
    fn new(format: ExportFormat, out: W) -> Result<Self, CliError> {
        Ok(match format {
            ExportFormat::Csv => {
                let mut csv = csv::Writer::from_writer(out);
                csv.write_record(EXPORT_COLUMNS).map_err(csv_error)?;
                Exporter::Csv(Box::new(csv))
            }
            ExportFormat::Json => Exporter::Json { out, first: true },
            ExportFormat::Jsonl => Exporter::Jsonl(out),
        })
    }

    fn task(
        &mut self,
        task: &TaskRecord<CommandTask, crate::store::Output>,
    ) -> Result<(), CliError> {
        match self {
            Exporter::Csv(csv) => csv.write_record(csv_row(task)).map_err(csv_error)?,
            Exporter::Json { out, first } => {
                let lead = if *first { "[\n" } else { ",\n" };
                write!(out, "{lead}{}", export_json(task))?;
                *first = false;
            }
            Exporter::Jsonl(out) => writeln!(out, "{}", export_json(task))?,
        }
        Ok(())
    }

    fn finish(self) -> Result<(), CliError> {
        let mut out = match self {
            Exporter::Csv(csv) => csv
                .into_inner()
                .map_err(|e| CliError::failed(format!("writing CSV: {}", e.error())))?,
            Exporter::Json { mut out, first } => {
                writeln!(out, "{}", if first { "[]" } else { "\n]" })?;
                out
            }
            Exporter::Jsonl(out) => out,
        };
        out.flush()?;
        Ok(())
    }
}

/// `herd cancel`.
pub async fn cancel(
    args: CancelArgs,
    location: Location,
    server: Option<String>,
) -> Result<u8, CliError> {
    let batch = BatchRef::parse(&args.batch)?;
    let mode = if args.force {
        CancelMode::Forced
    } else {
        CancelMode::Graceful
    };
    with_source!(location, server, |src| {
        let batch = find(&src, batch).await?;
        let before = src.batch_get(batch).await?;
        if before.state.is_terminal() {
            return Err(CliError::usage(format!(
                "batch {batch} has already finished ({}): there is nothing to cancel",
                before.state
            )));
        }
        src.batch_cancel(batch, mode).await?;
        let after = src.batch_get(batch).await?;
        if args.json {
            println!("{}", batch_json(&after));
        } else {
            println!(
                "batch {batch}: cancelled; {} running tasks are being stopped by their worker",
                after.counts.running
            );
        }
        Ok(exit::OK)
    })
}

/// The task `task` names in `batch`: a job number (`7`) or a task id (`t345`).
async fn task_of(
    src: &impl Source,
    batch: herd_core::BatchId,
    task: &str,
) -> Result<TaskId, CliError> {
    let bad = || {
        CliError::usage(format!(
            "{task:?} is not a task: give its job number (e.g. 7) or its id (e.g. t345), as `herd tasks` shows"
        ))
    };
    if let Some(id) = task.strip_prefix('t') {
        let id = TaskId(id.parse().map_err(|_| bad())?);
        let of = src.task_batch(batch, id).await?;
        if of != batch {
            return Err(CliError::usage(format!(
                "task {id} is in batch {of}, not {batch}"
            )));
        }
        return Ok(id);
    }
    let job: u64 = task.parse().map_err(|_| bad())?;
    if job == 0 {
        return Err(bad());
    }
    let page = src
        .task_list(
            batch,
            TaskQuery {
                states: Vec::new(),
                after: (job >= 2).then(|| job - 2),
                limit: 1,
                logs: false,
            },
        )
        .await?;
    match page.first() {
        Some(t) if t.info.index == job - 1 => Ok(t.info.id),
        _ => Err(CliError::usage(format!(
            "batch {batch} has no job {job}: `herd tasks {batch}` lists them"
        ))),
    }
}

/// The exit code of a task's last attempt: from its log, or from how it ended.
fn exit_code(t: &TaskRecord<CommandTask, crate::store::Output>) -> Option<i32> {
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

/// How long an attempt took, if it ended.
fn took(attempt: Option<&AttemptInfo>) -> Option<Duration> {
    let a = attempt?;
    Some(a.finished_at?.since(a.started_at))
}

fn attempt_outcome(a: &AttemptInfo) -> String {
    match (a.state, a.reason, a.finished_at) {
        (_, _, None) => "running".into(),
        (Some(state), Some(reason), _) => format!(
            "{state} ({reason}), took {}",
            seconds(took(Some(a)).unwrap_or_default())
        ),
        (Some(state), None, _) => format!(
            "{state}, took {}",
            seconds(took(Some(a)).unwrap_or_default())
        ),
        (None, _, _) => "ended".into(),
    }
}

/// A time for people, in UTC.
fn time(t: Timestamp) -> String {
    let system = std::time::UNIX_EPOCH + Duration::from_micros(t.as_micros().max(0) as u64);
    humantime::format_rfc3339_seconds(system).to_string()
}

fn command_of(info: &BatchInfo) -> String {
    command_text(info, Settings::of(info).ok().as_ref())
}

/// The batch's command, from its `herd run` settings if it has them.
fn command_text(info: &BatchInfo, settings: Option<&Settings>) -> String {
    if let Some(settings) = settings {
        return settings.command.join(" ");
    }
    // A server's batch: its command template as created.
    let served = info
        .policy
        .meta
        .as_ref()
        .and_then(|m| m["serve"]["command"].as_array());
    match served {
        Some(words) => words
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        None => format!("({})", info.policy.flow),
    }
}

fn batch_json(b: &BatchInfo) -> Value {
    let c = &b.counts;
    let settings = Settings::of(b).ok();
    json!({
        "batch": b.id.to_string(),
        "name": b.name,
        "state": b.state.to_string(),
        "command": command_text(b, settings.as_ref()),
        "priority": b.priority.0,
        // The commands `herd run` runs at once; its batch's concurrency
        // also counts the tasks its worker holds claimed ahead.
        "jobs": settings.map(|s| s.jobs),
        "concurrency": b.concurrency,
        "tasks": c.total(),
        "counts": {
            "pending": c.pending, "queued": c.queued, "running": c.running,
            "retry_wait": c.retry_wait, "succeeded": c.succeeded, "failed": c.failed,
            "cancelled": c.cancelled, "skipped": c.skipped,
        },
        "retries": b.retries,
        "created_at": time(b.created_at),
        "started_at": b.started_at.map(time),
        "finished_at": b.finished_at.map(time),
    })
}

fn task_json(t: &TaskRecord<CommandTask, crate::store::Output>) -> Value {
    let i = &t.info;
    json!({
        "job": i.index + 1,
        "task": i.id.to_string(),
        "state": i.state.to_string(),
        "reason": i.reason.map(|r| r.to_string()),
        "attempts": i.attempt.0,
        "message": i.message,
        "argv": t.payload.argv,
        "items": t.payload.items,
        "seconds": took(t.last_attempt.as_ref()).map(|d| d.as_secs_f64()),
        "exit_code": exit_code(t),
    })
}

fn attempt_json(a: &AttemptInfo, logs: bool) -> Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    json!({
        "attempt": a.attempt.0,
        "worker": a.worker.map(|w| w.to_string()),
        "started_at": time(a.started_at),
        "finished_at": a.finished_at.map(time),
        "state": a.state.map(|s| s.to_string()),
        "reason": a.reason.map(|r| r.to_string()),
        "message": a.message,
        "exit_code": a.log.as_ref().and_then(|l| l.exit_code),
        "stdout": logs.then(|| a.log.as_ref().map(|l| text(&l.stdout))).flatten(),
        "stderr": logs.then(|| a.log.as_ref().map(|l| text(&l.stderr))).flatten(),
        "stdout_bytes": a.log.as_ref().map(|l| l.stdout_total),
        "stderr_bytes": a.log.as_ref().map(|l| l.stderr_total),
    })
}

const EXPORT_COLUMNS: [&str; 10] = [
    "job",
    "task",
    "state",
    "reason",
    "attempts",
    "exit_code",
    "seconds",
    "items",
    "command",
    "stdout",
];

fn export_json(t: &TaskRecord<CommandTask, crate::store::Output>) -> Value {
    let mut json = task_json(t);
    let log = t.last_attempt.as_ref().and_then(|a| a.log.as_ref());
    json["stdout"] = json!(log.map(|l| String::from_utf8_lossy(&l.stdout).into_owned()));
    json["stderr"] = json!(log.map(|l| String::from_utf8_lossy(&l.stderr).into_owned()));
    json
}

fn csv_row(t: &TaskRecord<CommandTask, crate::store::Output>) -> [String; 10] {
    let i = &t.info;
    let log = t.last_attempt.as_ref().and_then(|a| a.log.as_ref());
    [
        (i.index + 1).to_string(),
        i.id.to_string(),
        i.state.to_string(),
        i.reason.map(|r| r.to_string()).unwrap_or_default(),
        i.attempt.0.to_string(),
        exit_code(t).map(|c| c.to_string()).unwrap_or_default(),
        took(t.last_attempt.as_ref())
            .map(|d| format!("{:.3}", d.as_secs_f64()))
            .unwrap_or_default(),
        t.payload.items.join(" "),
        display_argv(&t.payload.argv),
        log.map(|l| String::from_utf8_lossy(&l.stdout).into_owned())
            .unwrap_or_default(),
    ]
}

fn csv_error(e: csv::Error) -> CliError {
    CliError::failed(format!("writing CSV: {e}"))
}
