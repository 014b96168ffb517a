//! `herd run` and `herd retry`: build a batch from a command and its items,
//! store it, and run it with an embedded worker until it ends or is
//! interrupted; `--resume` runs what an earlier process left.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herd_core::scheduler::{Router, WorkerHandle, spawn_worker};
use herd_core::store::{BatchQuery, Store, StoreError};
use herd_core::{
    BatchId, BatchInfo, BatchSpec, BatchState, Clock, ErrorPolicy, EventKind, OnFailure, Priority,
    RetryPolicy, SystemClock, TaskState,
};
use herd_exec::{CommandRunner, CommandTask, Format, Item, ResultsDir, Template};
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{InputFormat, OnFailureArg, RetryArgs, RunArgs, exit};
use crate::error::CliError;
use crate::show::{Progress, Summary, TerminalSink, View};
use crate::store::{BatchRef, Location, with_store};

/// The flow of every batch `herd run` creates.
pub const FLOW: &str = "command";

/// What `herd run` stores with a batch (in its policy's `meta`), so that
/// `--resume` and `herd retry` run it the same way.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// The command template as given.
    pub command: Vec<String>,
    /// Run through `sh -c`.
    pub shell: bool,
    /// Items per invocation.
    pub chunk: u32,
    /// Commands at once.
    pub jobs: u32,
    /// Print output in input order.
    pub keep_order: bool,
    /// Where full outputs go.
    pub results: Option<PathBuf>,
    /// Where the items came from, for people.
    pub input: String,
}

impl Settings {
    /// The settings stored with `info`'s batch.
    pub fn of(info: &BatchInfo) -> Result<Settings, CliError> {
        let meta = info.policy.meta.as_ref().and_then(|m| m.get("run"));
        match meta.map(|m| serde_json::from_value(m.clone())) {
            Some(Ok(settings)) if &*info.policy.flow == FLOW => Ok(settings),
            _ => Err(CliError::usage(format!(
                "batch {} was not created by `herd run`: it has no command for herd to run here",
                info.id
            ))),
        }
    }
}

/// `herd run`.
pub async fn run(args: RunArgs, location: Location) -> Result<u8, CliError> {
    if let Some(batch) = &args.resume {
        if !args.command.is_empty() || args.input.is_some() {
            return Err(CliError::usage(
                "--resume runs the batch as it was stored: drop the command and the input",
            ));
        }
        let batch = BatchRef::parse(batch)?;
        let view = View::new(args.quiet, args.json, args.keep_order);
        return with_store!(location, |store| resume(store, batch, args.jobs, view)
            .await);
    }
    let plan = plan(&args)?;
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        for task in &plan.spec.tasks {
            use std::io::Write;
            writeln!(out, "{}", display_argv(&task.payload.argv))?;
        }
        return Ok(exit::OK);
    }
    if plan.spec.tasks.is_empty() {
        eprintln!("herd: nothing to run: the input has no items");
        return Ok(exit::OK);
    }
    let view = View::new(args.quiet, args.json, args.keep_order);
    with_store!(location, |store| {
        let clock = SystemClock;
        let tasks = plan.spec.tasks.len();
        let inserted = store.batch_insert(plan.spec, clock.now()).await?;
        view.note(format_args!(
            "batch {}: {tasks} tasks, {} at a time",
            inserted.batch, plan.settings.jobs
        ));
        execute(store, inserted.batch, &plan.settings, view).await
    })
}

/// `herd retry`: reruns a finished batch's failed tasks, then runs it.
pub async fn retry(args: RetryArgs, location: Location) -> Result<u8, CliError> {
    let batch = BatchRef::parse(&args.batch)?;
    let view = View::new(args.quiet, args.json, false);
    with_store!(location, |store| {
        let batch = find(&*store, batch).await?;
        let info = store.batch_get(batch).await?;
        let mut settings = Settings::of(&info)?;
        if let Some(jobs) = args.jobs {
            settings.jobs = jobs.max(1);
        }
        let rerun = store
            .batch_rerun(batch, !args.failed, SystemClock.now())
            .await?;
        if rerun.tasks.is_empty() {
            view.note(format_args!(
                "batch {batch}: nothing to retry (no failed tasks)"
            ));
        } else {
            view.note(format_args!(
                "batch {batch}: retrying {} tasks",
                rerun.tasks.len()
            ));
        }
        execute(store, batch, &settings, view).await
    })
}

/// A batch ready to store, and how to run it.
struct Plan {
    spec: BatchSpec<CommandTask>,
    settings: Settings,
}

/// Reads the items, checks everything, and builds the batch: nothing is
/// stored until all of it is known to be good.
fn plan(args: &RunArgs) -> Result<Plan, CliError> {
    let (words, inline) = split_items(&args.command)?;
    if words.is_empty() {
        return Err(CliError::usage(
            "no command: give one after `--`, e.g. `herd run -- gzip {} ::: *.log`",
        ));
    }
    let template =
        Template::parse(&words, args.shell).map_err(|e| CliError::usage(e.to_string()))?;
    let jobs = match args.jobs {
        Some(0) => return Err(CliError::usage("--jobs must be at least 1")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    };
    if args.chunk == 0 {
        return Err(CliError::usage("--chunk must be at least 1"));
    }
    let retry = retry_policy(args)?;
    let timeout = args
        .timeout
        .as_deref()
        .map(|t| duration("--timeout", t))
        .transpose()?;
    let grace = duration("--grace", &args.grace)?;
    let error_policy = error_policy(args)?;
    let priority: Priority = args
        .priority
        .parse()
        .map_err(|e| CliError::usage(format!("--priority: {e}")))?;

    let (items, fields, input) = match (inline, &args.input) {
        (Some(_), Some(_)) => {
            return Err(CliError::usage(
                "items after ::: and --input both given: use one of them",
            ));
        }
        (Some(items), None) => {
            let items = items.into_iter().map(Item::new).collect();
            (items, Vec::new(), "arguments".to_string())
        }
        (None, Some(path)) => {
            let format = match args.format {
                Some(f) => format_of(f),
                None => Format::from_path(path),
            };
            let file = std::fs::File::open(path).map_err(|e| {
                CliError::usage(format!(
                    "cannot read --input {}: {e}: check the path and its permissions",
                    path.display()
                ))
            })?;
            let read = herd_exec::read_items(std::io::BufReader::new(file), format)
                .map_err(|e| CliError::usage(format!("--input {}: {e}", path.display())))?;
            (read.items, read.fields, path.display().to_string())
        }
        (None, None) => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(CliError::usage(
                    "no items: give them after :::, with --input FILE, or on standard input",
                ));
            }
            let format = format_of(args.format.unwrap_or(InputFormat::Lines));
            let mut text = Vec::new();
            stdin.lock().read_to_end(&mut text)?;
            let read = herd_exec::read_items(&text[..], format)
                .map_err(|e| CliError::usage(format!("standard input: {e}")))?;
            (read.items, read.fields, "standard input".to_string())
        }
    };
    template
        .check_fields(&fields)
        .map_err(|e| CliError::usage(e.to_string()))?;

    let mut items = items;
    if args.shuffle {
        fastrand::shuffle(&mut items);
    }
    if let Some(max) = args.max_records {
        items.truncate(usize::try_from(max).unwrap_or(usize::MAX));
    }
    let tasks = herd_exec::command_tasks(&template, &items, args.chunk as usize);
    // The tasks carry what they need of the items: free them before the
    // submit allocates its own copies (peak RSS).
    drop(items);

    let settings = Settings {
        command: words,
        shell: args.shell,
        chunk: args.chunk,
        jobs,
        keep_order: args.keep_order,
        results: args.results.clone(),
        input,
    };
    let mut spec = BatchSpec::new(FLOW);
    spec.name = args.name.clone();
    spec.priority = priority;
    // `--jobs` commands run at once (the worker's slots); the batch lets
    // the worker hold more claimed, ready to start (docs/design/cli.md,
    // "Claiming ahead").
    spec.concurrency = herd_exec::local::batch_concurrency(jobs);
    spec.policy.retry = retry;
    spec.policy.timeout = timeout;
    spec.policy.grace = grace;
    spec.policy.meta = Some(serde_json::json!({ "run": settings }));
    spec.error_policy = error_policy;
    spec.tasks = tasks;
    Ok(Plan { spec, settings })
}

/// Splits `COMMAND... ::: ITEM...` into the command and the inline items.
fn split_items(words: &[String]) -> Result<(Vec<String>, Option<Vec<String>>), CliError> {
    let mut parts = words.split(|w| w == ":::");
    let command = parts.next().unwrap_or_default().to_vec();
    let items = parts.next().map(<[String]>::to_vec);
    if parts.next().is_some() {
        return Err(CliError::usage(
            "more than one ::: list: herd takes one list of items (combine them in a file for --input)",
        ));
    }
    Ok((command, items))
}

fn format_of(format: InputFormat) -> Format {
    match format {
        InputFormat::Lines => Format::Lines,
        InputFormat::Csv => Format::Csv,
        InputFormat::Jsonl => Format::Jsonl,
    }
}

fn duration(option: &str, text: &str) -> Result<Duration, CliError> {
    herd_exec::parse_duration(text).map_err(|e| CliError::usage(format!("{option} {e}")))
}

fn retry_policy(args: &RunArgs) -> Result<RetryPolicy, CliError> {
    herd_exec::retry_policy(args.retries, &args.backoff)
        .map_err(|e| CliError::usage(format!("--backoff: {e}")))
}

fn error_policy(args: &RunArgs) -> Result<ErrorPolicy, CliError> {
    let on_failure = match args.on_failure {
        OnFailureArg::Continue => OnFailure::Continue,
        OnFailureArg::Stop => OnFailure::Stop,
        OnFailureArg::Abort => OnFailure::Abort,
    };
    herd_exec::error_policy(on_failure, args.max_failures.as_deref()).map_err(|e| {
        let given = args.max_failures.as_deref().unwrap_or_default();
        CliError::usage(format!("--max-failures {given:?}: {e}"))
    })
}

/// An argv as a shell would need it typed, for `--dry-run` and listings.
pub fn display_argv(argv: &[String]) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    argv.iter()
        .map(|word| {
            if !word.is_empty() && word.chars().all(plain) {
                word.clone()
            } else {
                herd_exec::shell_quote(word)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The batch `batch` names: `last` is the newest batch `herd run` created.
pub async fn find<S: Store>(store: &S, batch: BatchRef) -> Result<BatchId, CliError> {
    match batch {
        BatchRef::Id(id) => Ok(id),
        BatchRef::Last => {
            let batches = store
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

/// `--resume`: runs what remains of a batch.
async fn resume<S>(
    store: Arc<S>,
    batch: BatchRef,
    jobs: Option<u32>,
    view: View,
) -> Result<u8, CliError>
where
    S: Store<Payload = CommandTask>,
{
    let batch = find(&*store, batch).await?;
    let info = store.batch_get(batch).await?;
    let mut settings = Settings::of(&info)?;
    if let Some(jobs) = jobs {
        settings.jobs = jobs.max(1);
    }
    if info.state.is_terminal() {
        view.note(format_args!(
            "batch {batch} has already finished ({}): nothing to resume{}",
            info.state,
            if info.state == BatchState::Succeeded {
                String::new()
            } else {
                format!("; to run its failed tasks again: herd retry {batch}")
            }
        ));
        return execute(store, batch, &settings, view).await;
    }
    release_dead_workers(&*store, batch).await?;
    view.note(format_args!(
        "resuming batch {batch}: {} of {} tasks left",
        info.counts.active(),
        info.counts.total()
    ));
    execute(store, batch, &settings, view).await
}

/// Ends now the leases that herd processes on this host which died (`kill
/// -9`, a crash) hold on `batch`'s tasks: those attempts run again at once
/// rather than after the lease.
async fn release_dead_workers<S: Store>(store: &S, batch: BatchId) -> Result<(), CliError> {
    Ok(herd_exec::local::release_dead_workers(store, Some(batch)).await?)
}

/// How a run ended.
enum End {
    /// The batch reached a terminal state.
    Finished,
    /// A signal stopped it; what ran was let finish, or killed after the grace.
    Interrupted,
}

/// Runs `batch` with a worker of this process until it ends or a signal
/// stops it; prints progress, output and the summary; returns the exit code.
async fn execute<S>(
    store: Arc<S>,
    batch: BatchId,
    settings: &Settings,
    view: View,
) -> Result<u8, CliError>
where
    S: Store<Payload = CommandTask>,
{
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut events = store.events();
    let info = store.batch_get(batch).await?;
    let order = if view.keep_order && !info.state.is_terminal() {
        Some(crate::show::unfinished_indices(&*store, batch).await?)
    } else {
        None
    };
    let sink = Arc::new(TerminalSink::new(&view, order));
    let mut progress = Progress::new(&view, &info, sink.clone());
    let summary_of = |info: &BatchInfo, interrupted: bool, progress: &Progress| {
        Summary::new(info, settings, interrupted, progress)
    };
    if info.state.is_terminal() {
        let stats = store.batch_stats(batch, clock.now()).await?;
        let summary = summary_of(&info, false, &progress);
        return Ok(summary.print(&view, &stats));
    }

    let sink: Arc<dyn herd_exec::OutputSink> = match &settings.results {
        Some(dir) => Arc::new(ResultsDir::new(dir.clone(), sink.clone()).map_err(|e| {
            CliError::usage(format!(
                "cannot write results to {}: {e}: choose a directory herd may create and write",
                dir.display()
            ))
        })?),
        None => sink.clone(),
    };
    let runner = Arc::new(CommandRunner::builder().sink(sink).build());
    let router = Arc::new(Router::new());
    {
        let mut routes = router.lock().await;
        routes.add_flow(Arc::from(FLOW), runner.clone());
        routes.bind(batch, runner);
    }
    let mut worker = spawn_worker(
        store.clone(),
        router,
        clock.clone(),
        herd_exec::local::command_worker(settings.jobs, batch),
    );

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let end = loop {
        tokio::select! {
            received = events.recv() => match received {
                Ok(group) => {
                    let mut finished = false;
                    for event in group.iter().filter(|e| e.batch == batch) {
                        progress.event(event);
                        if let EventKind::Task { to: TaskState::Failed, task, index, .. } = event.kind
                            && let Ok(task) = store.task_get(task).await
                        {
                            progress.failure(index, &task);
                        }
                        if let EventKind::Batch { to, .. } = event.kind {
                            finished |= to.is_terminal();
                        }
                    }
                    if finished {
                        break End::Finished;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let info = store.batch_get(batch).await?;
                    progress.reset(&info);
                    if info.state.is_terminal() {
                        break End::Finished;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return Err(CliError::failed("the store closed its event feed"));
                }
            },
            _ = interrupt.recv() => break End::Interrupted,
            _ = terminate.recv() => break End::Interrupted,
            _ = tick.tick() => {
                progress.tick();
                if worker.is_finished() {
                    // The worker ends early only on a store error: say which.
                    worker.join().await?;
                    return Err(CliError::failed("the worker stopped before the batch ended"));
                }
            }
        }
    };
    match end {
        End::Finished => {
            worker.shutdown().await?;
        }
        End::Interrupted => {
            let grace = info.policy.grace;
            progress.note(format_args!(
                "interrupted: starting nothing new; waiting up to {} for {} running tasks (Ctrl-C again kills them)",
                humantime::format_duration(grace),
                progress.running()
            ));
            stop_within(&mut worker, grace, &mut interrupt, &mut terminate).await;
            release_own_worker(&*store).await?;
        }
    }
    progress.finish();
    let interrupted = matches!(end, End::Interrupted);
    let info = store.batch_get(batch).await?;
    let stats = store.batch_stats(batch, clock.now()).await?;
    let summary = summary_of(&info, interrupted, &progress);
    let code = summary.print(&view, &stats);
    Ok(if interrupted { exit::INTERRUPTED } else { code })
}

/// Lets running attempts finish within `grace`; kills them when it passes
/// or at a second signal.
async fn stop_within(
    worker: &mut WorkerHandle,
    grace: Duration,
    interrupt: &mut tokio::signal::unix::Signal,
    terminate: &mut tokio::signal::unix::Signal,
) {
    worker.stop();
    let joined = tokio::select! {
        result = worker.join() => Some(result),
        _ = tokio::time::sleep(grace) => None,
        _ = interrupt.recv() => None,
        _ = terminate.recv() => None,
    };
    if joined.is_none() {
        // Dropping the attempts kills their process groups.
        worker.abort();
        let _ = worker.join().await;
    }
}

/// Requeues what this process's worker was running when it was stopped, so
/// that `--resume` runs it at once.
async fn release_own_worker<S: Store>(store: &S) -> Result<(), StoreError> {
    herd_exec::local::release_own_workers(store).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn items_follow_the_triple_colon() {
        let (command, items) = split_items(&words("echo {} ::: a b")).unwrap();
        assert_eq!(command, words("echo {}"));
        assert_eq!(items, Some(words("a b")));
        let (command, items) = split_items(&words("echo")).unwrap();
        assert_eq!((command, items), (words("echo"), None));
        assert!(split_items(&words("echo ::: a ::: b")).is_err());
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        let err = duration("--timeout", "ten").unwrap_err();
        assert_eq!(err.code, exit::USAGE);
        assert!(err.message.contains("30s"), "{}", err.message);
    }
}
