//! What `herd run` shows: the progress bar (or plain progress lines), the
//! commands' output, failures as they happen, and the summary at the end.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use herd_core::store::{Store, TaskInfo, TaskQuery};
use herd_core::{
    BatchId, BatchInfo, BatchState, BatchStats, Event, EventKind, StateCounts, TaskState,
};
use herd_exec::{AttemptEnd, OutputSink, Stream, TaskRef};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::exit;
use crate::error::CliError;
use crate::run::Settings;

/// How often progress is printed when standard error is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// How many of the slowest tasks the summary names.
const SLOWEST: usize = 5;

/// What the user asked to see.
#[derive(Clone, Copy, Debug)]
pub struct View {
    /// No command output, no progress.
    pub quiet: bool,
    /// The summary as JSON on stdout; no command output on stdout.
    pub json: bool,
    /// Command output in input order.
    pub keep_order: bool,
    stderr_tty: bool,
    stdout_tty: bool,
}

impl View {
    /// The view for these flags on this terminal.
    pub fn new(quiet: bool, json: bool, keep_order: bool) -> View {
        View {
            quiet,
            json,
            keep_order,
            stderr_tty: std::io::stderr().is_terminal(),
            stdout_tty: std::io::stdout().is_terminal(),
        }
    }

    /// A line for people on stderr, unless quiet.
    pub fn note(&self, args: fmt::Arguments<'_>) {
        if !self.quiet {
            eprintln!("herd: {args}");
        }
    }

    fn shows_output(&self) -> bool {
        !self.quiet && !self.json
    }
}

/// The indices of `batch`'s unfinished tasks, in order: the order in which
/// `--keep-order` prints their output.
pub async fn unfinished_indices<S: Store>(
    store: &S,
    batch: BatchId,
) -> Result<VecDeque<u64>, CliError> {
    let mut indices = VecDeque::new();
    let mut after = None;
    loop {
        let page = store
            .task_list(
                batch,
                TaskQuery {
                    states: TaskState::ALL
                        .iter()
                        .copied()
                        .filter(|s| !s.is_terminal())
                        .collect(),
                    after,
                    limit: 1000,
                    logs: false,
                },
            )
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.info.index);
        indices.extend(page.iter().map(|t| t.info.index));
    }
    Ok(indices)
}

/// Command output to the terminal: whole lines, never interleaved mid-line;
/// with `--keep-order`, each task's output once the tasks before it ended.
pub struct TerminalSink {
    show: bool,
    /// Suspend the progress bar around writes (both on the same terminal).
    bar: OnceLock<ProgressBar>,
    suspend: bool,
    ordered: Option<Mutex<Ordered>>,
    /// The commands of this process, as they run: the tasks the store
    /// lists as running also count those its worker holds, claimed and
    /// not started (docs/design/cli.md, "Claiming ahead").
    commands: Mutex<Commands>,
}

/// The commands running now and the slowest that ran, as the runner
/// started and ended them.
#[derive(Default)]
struct Commands {
    /// When each running attempt started, by task index.
    started: HashMap<u64, Instant>,
    /// The slowest attempts, slowest first: (duration, job number).
    slowest: Vec<(Duration, u64)>,
}

impl Commands {
    fn record(&mut self, took: Duration, job: u64) {
        if self.slowest.len() == SLOWEST && self.slowest.last().is_some_and(|s| s.0 >= took) {
            return;
        }
        let at = self.slowest.partition_point(|s| s.0 >= took);
        self.slowest.insert(at, (took, job));
        self.slowest.truncate(SLOWEST);
    }
}

/// Output held back for `--keep-order`.
struct Ordered {
    /// Indices still to print, in order.
    order: VecDeque<u64>,
    /// Tasks that ended, not yet printed.
    ended: BTreeSet<u64>,
    /// Output of each task's latest attempt.
    held: HashMap<u64, Held>,
}

/// Lines held back for one task: its attempt, and what that attempt printed.
type Held = (u32, Vec<(Stream, Vec<u8>)>);

impl TerminalSink {
    /// A sink for `view`; `order` (with `--keep-order`) lists the tasks to print.
    pub fn new(view: &View, order: Option<VecDeque<u64>>) -> TerminalSink {
        TerminalSink {
            show: view.shows_output(),
            bar: OnceLock::new(),
            suspend: view.stdout_tty,
            ordered: order.map(|order| {
                Mutex::new(Ordered {
                    order,
                    ended: BTreeSet::new(),
                    held: HashMap::new(),
                })
            }),
            commands: Mutex::new(Commands::default()),
        }
    }

    /// Commands running now.
    fn running(&self) -> u64 {
        let commands = self.commands.lock().expect("no panics under this lock");
        commands.started.len() as u64
    }

    /// The slowest commands that ran, slowest first: (duration, job number).
    fn slowest(&self) -> Vec<(Duration, u64)> {
        let commands = self.commands.lock().expect("no panics under this lock");
        commands.slowest.clone()
    }

    fn write(&self, lines: &[(Stream, &[u8])]) {
        let write = || {
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
            for (stream, line) in lines {
                // A closed pipe (`herd run … | head`) is not the batch's failure.
                let _ = match stream {
                    Stream::Stdout => out.write_all(line),
                    Stream::Stderr => err.write_all(line),
                };
            }
            let _ = out.flush();
        };
        match self.bar.get() {
            Some(bar) if self.suspend && !bar.is_hidden() => bar.suspend(write),
            _ => write(),
        }
    }

    /// A task ended: with `--keep-order`, prints what is now in order.
    fn task_ended(&self, index: u64) {
        let Some(ordered) = &self.ordered else { return };
        let mut ready = Vec::new();
        {
            let mut ordered = ordered.lock().expect("no panics under this lock");
            ordered.ended.insert(index);
            while let Some(&next) = ordered.order.front() {
                if !ordered.ended.remove(&next) {
                    break;
                }
                ordered.order.pop_front();
                if let Some((_, lines)) = ordered.held.remove(&next) {
                    ready.extend(lines);
                }
            }
        }
        if self.show && !ready.is_empty() {
            let lines: Vec<(Stream, &[u8])> = ready.iter().map(|(s, l)| (*s, &l[..])).collect();
            self.write(&lines);
        }
    }
}

impl OutputSink for TerminalSink {
    fn started(&self, task: &TaskRef) {
        let mut commands = self.commands.lock().expect("no panics under this lock");
        commands.started.insert(task.index, Instant::now());
    }

    fn ended(&self, task: &TaskRef, _: &AttemptEnd<'_>) -> Option<String> {
        let mut commands = self.commands.lock().expect("no panics under this lock");
        if let Some(since) = commands.started.remove(&task.index) {
            commands.record(since.elapsed(), task.index + 1);
        }
        None
    }

    fn line(&self, task: &TaskRef, stream: Stream, line: &[u8]) {
        if !self.show {
            return;
        }
        match &self.ordered {
            None => self.write(&[(stream, line)]),
            Some(ordered) => {
                let mut ordered = ordered.lock().expect("no panics under this lock");
                let held = ordered
                    .held
                    .entry(task.index)
                    .or_insert_with(|| (task.attempt.0, Vec::new()));
                if held.0 != task.attempt.0 {
                    // A new attempt: only the last one's output is printed.
                    *held = (task.attempt.0, Vec::new());
                }
                held.1.push((stream, line.to_vec()));
            }
        }
    }
}

/// Progress of one batch, from its events.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    view: View,
    batch: BatchId,
    counts: StateCounts,
    finished_at_start: u64,
    started: Instant,
    last_plain: Instant,
    sink: Arc<TerminalSink>,
}

impl Progress {
    /// Progress of `info`'s batch, shown as `view` says.
    pub fn new(view: &View, info: &BatchInfo, sink: Arc<TerminalSink>) -> Progress {
        let bar = (view.stderr_tty && !view.quiet && !info.state.is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(info.counts.total()),
                ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner:.green} {elapsed_precise} [{wide_bar:.cyan/blue}] {pos}/{len} {msg} {per_sec} ETA {eta}",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            bar.set_position(info.counts.finished());
            bar.enable_steady_tick(Duration::from_millis(120));
            let _ = sink.bar.set(bar.clone());
            bar
        });
        let now = Instant::now();
        let progress = Progress {
            bar,
            plain: !view.stderr_tty && !view.quiet,
            view: *view,
            batch: info.id,
            counts: info.counts,
            finished_at_start: info.counts.finished(),
            started: now,
            last_plain: now,
            sink,
        };
        progress.redraw();
        progress
    }

    /// Applies one event of the batch.
    pub fn event(&mut self, event: &Event) {
        let EventKind::Task {
            index, from, to, ..
        } = event.kind
        else {
            return;
        };
        self.counts.shift(from, to);
        if to.is_terminal() {
            self.sink.task_ended(index);
        }
        self.redraw();
    }

    /// A task failed: say so above the bar.
    pub fn failure(&mut self, index: u64, task: &TaskInfo) {
        if self.view.quiet {
            return;
        }
        let why = match (&task.message, task.reason) {
            (Some(message), _) => message.clone(),
            (None, Some(reason)) => reason.to_string(),
            (None, None) => "failed".to_string(),
        };
        let line = format!("herd: task #{} ({}) failed: {why}", index + 1, task.id);
        self.println(&line);
    }

    /// A note for people, above the bar.
    pub fn note(&self, args: fmt::Arguments<'_>) {
        if !self.view.quiet {
            self.println(&format!("herd: {args}"));
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Counts read afresh (after missing events).
    pub fn reset(&mut self, info: &BatchInfo) {
        self.counts = info.counts;
        self.redraw();
    }

    /// Called a few times a second: plain progress lines when not on a terminal.
    pub fn tick(&mut self) {
        if self.plain && self.last_plain.elapsed() >= PLAIN_EVERY {
            self.last_plain = Instant::now();
            let done = self.counts.finished();
            let total = self.counts.total();
            let rate = self.rate();
            let eta = if rate > 0.0 {
                format!(
                    ", ETA {}",
                    humantime::format_duration(Duration::from_secs(
                        ((total - done) as f64 / rate).ceil() as u64
                    ))
                )
            } else {
                String::new()
            };
            eprintln!(
                "herd: {} {done}/{total} done ({} failed), {} running, {rate:.1}/s{eta}",
                self.batch,
                self.counts.failed,
                self.sink.running()
            );
        }
    }

    /// Tasks finished per second in this run.
    fn rate(&self) -> f64 {
        let done = self
            .counts
            .finished()
            .saturating_sub(self.finished_at_start);
        done as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    fn redraw(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(self.counts.finished());
            bar.set_message(format!(
                "✓{} ✗{} ▶{}",
                self.counts.succeeded,
                self.counts.failed + self.counts.cancelled + self.counts.skipped,
                self.sink.running()
            ));
        }
    }

    /// Commands running now.
    pub fn running(&self) -> u64 {
        self.sink.running()
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The end of a run, for people or scripts.
pub struct Summary {
    batch: BatchId,
    name: Option<String>,
    state: BatchState,
    counts: StateCounts,
    interrupted: bool,
    wall: Duration,
    slowest: Vec<(Duration, u64)>,
    command: String,
}

impl Summary {
    /// The summary of `info`'s batch after a run shown by `progress`.
    pub fn new(
        info: &BatchInfo,
        settings: &Settings,
        interrupted: bool,
        progress: &Progress,
    ) -> Summary {
        Summary {
            batch: info.id,
            name: info.name.clone(),
            state: info.state,
            counts: info.counts,
            interrupted,
            wall: progress.started.elapsed(),
            slowest: progress.sink.slowest(),
            command: settings.command.join(" "),
        }
    }

    /// Prints the summary (JSON on stdout with `--json`, else text on
    /// stderr) and returns the exit code the batch's state calls for.
    pub fn print(&self, view: &View, stats: &BatchStats) -> u8 {
        let code = if self.state == BatchState::Succeeded {
            exit::OK
        } else {
            exit::FAILED
        };
        if view.json {
            let json = self.json(stats, code);
            println!("{json}");
        } else if !view.quiet || code != exit::OK {
            eprint!("{}", self.text(stats));
        }
        code
    }

    fn json(&self, stats: &BatchStats, code: u8) -> serde_json::Value {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        serde_json::json!({
            "batch": self.batch.to_string(),
            "name": self.name,
            "command": self.command,
            "state": if self.interrupted && !self.state.is_terminal() { "interrupted".to_string() } else { self.state.to_string() },
            "tasks": self.counts.total(),
            "counts": {
                "succeeded": self.counts.succeeded,
                "failed": self.counts.failed,
                "cancelled": self.counts.cancelled,
                "skipped": self.counts.skipped,
                "remaining": self.counts.active(),
            },
            "retries": stats.retries,
            "wall_seconds": self.wall.as_secs_f64(),
            "attempt_ms": { "p50": ms(stats.p50), "p95": ms(stats.p95), "p99": ms(stats.p99) },
            "slowest": self.slowest.iter().map(|(d, job)| serde_json::json!({ "job": job, "seconds": d.as_secs_f64() })).collect::<Vec<_>>(),
            "exit_code": if self.interrupted { exit::INTERRUPTED } else { code },
            "resume": self.interrupted.then(|| format!("herd run --resume {}", self.batch)),
        })
    }

    fn text(&self, stats: &BatchStats) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let c = &self.counts;
        let headline = if self.interrupted && !self.state.is_terminal() {
            "interrupted".to_string()
        } else {
            self.state.to_string()
        };
        let _ = writeln!(
            out,
            "herd: batch {} {headline}: {} tasks, {} succeeded, {} failed, {} cancelled, {} skipped{} in {}",
            self.batch,
            c.total(),
            c.succeeded,
            c.failed,
            c.cancelled,
            c.skipped,
            if stats.retries > 0 {
                format!(" ({} retries)", stats.retries)
            } else {
                String::new()
            },
            seconds(self.wall),
        );
        if let (Some(p50), Some(p95), Some(p99)) = (stats.p50, stats.p95, stats.p99) {
            let _ = writeln!(
                out,
                "  attempts: p50 {}, p95 {}, p99 {}",
                seconds(p50),
                seconds(p95),
                seconds(p99)
            );
        }
        if !self.slowest.is_empty() {
            let slowest: Vec<String> = self
                .slowest
                .iter()
                .map(|(d, job)| format!("#{job} {}", seconds(*d)))
                .collect();
            let _ = writeln!(out, "  slowest: {}", slowest.join(", "));
        }
        if self.interrupted && !self.state.is_terminal() {
            let _ = writeln!(
                out,
                "  {} tasks left; resume with: herd run --resume {}",
                c.active(),
                self.batch
            );
        }
        if c.failed + c.cancelled + c.skipped > 0 {
            let _ = writeln!(
                out,
                "  failed tasks: herd tasks {} --state failed; a task's output: herd logs {} JOB; run them again: herd retry {}",
                self.batch, self.batch, self.batch
            );
        }
        out
    }
}

/// A duration for people: `850ms`, `12.3s`, `4m05s`.
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 0.01 {
        format!("{:.1}ms", s * 1e3)
    } else if s < 1.0 {
        format!("{}ms", d.as_millis())
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_core::Attempt;

    fn task(index: u64) -> TaskRef {
        TaskRef {
            batch: BatchId(1),
            task: herd_core::TaskId(index as i64 + 10),
            index,
            attempt: Attempt(1),
        }
    }

    fn end(sink: &TerminalSink, index: u64) {
        let log = herd_core::store::AttemptLog::default();
        let end = AttemptEnd {
            exit: herd_exec::Exit::Code(0),
            log: &log,
            cancelled: false,
            output_cut: false,
        };
        assert_eq!(sink.ended(&task(index), &end), None);
    }

    /// Running counts the commands started and not ended, whatever the
    /// store says (tasks held ahead are claimed, not started); each that
    /// ended is timed from its own start.
    #[test]
    fn running_and_slowest_follow_the_commands() {
        let sink = TerminalSink::new(&View::new(true, false, false), None);
        for index in 0..3 {
            sink.started(&task(index));
        }
        assert_eq!(sink.running(), 3);
        end(&sink, 1);
        end(&sink, 2);
        assert_eq!(sink.running(), 1);
        let jobs: BTreeSet<u64> = sink.slowest().iter().map(|s| s.1).collect();
        assert_eq!(jobs, BTreeSet::from([2, 3]));
        // An end without a start (a task that never ran here) counts nothing.
        end(&sink, 7);
        assert_eq!(sink.running(), 1);
        assert_eq!(sink.slowest().len(), 2);
    }

    /// The slowest are kept slowest first, five at most.
    #[test]
    fn the_slowest_five_are_kept_in_order() {
        let mut commands = Commands::default();
        for (ms, job) in [(5, 1), (9, 2), (1, 3), (7, 4), (3, 5), (8, 6), (2, 7)] {
            commands.record(Duration::from_millis(ms), job);
        }
        let kept: Vec<(u64, u64)> = commands
            .slowest
            .iter()
            .map(|(took, job)| (took.as_millis() as u64, *job))
            .collect();
        assert_eq!(kept, [(9, 2), (8, 6), (7, 4), (5, 1), (3, 5)]);
    }
}
