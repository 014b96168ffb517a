//! The [`CommandRunner`]: runs each attempt of a task as a child process in
//! its own process group, passes its output on line by line, keeps the
//! tails, and stops it when cancelled.
//!
//! # One attempt
//!
//! 1. The sink hears [`started`](OutputSink::started); `argv[0]` is spawned
//!    with `argv[1..]` (no shell: a template in shell mode made the argv
//!    `sh -c SCRIPT`), stdin from `/dev/null`, stdout and stderr piped, in a
//!    new process group whose id is the child's pid, with `HERD_BATCH_ID`
//!    (`b12`), `HERD_TASK_ID` (`t345`), `HERD_ATTEMPT` (`1`) and `HERD_JOB`
//!    (the index plus one) added to the environment (`posix_spawn`, the
//!    inherited environment encoded once: see `spawn.rs`).
//! 2. Both pipes are read at once. The child's exit is watched once both
//!    have ended (most commands have exited by then and are reaped without
//!    a pidfd), or from 10 ms on while they are open, or from cancellation.
//! 3. On graceful cancellation, SIGTERM goes to the whole group; if the child
//!    has not exited `policy.grace` later, SIGKILL does. Once it has exited,
//!    whatever is left of the group gets SIGKILL too: a cancelled attempt
//!    leaves nothing behind. The attempt fails (the worker records it as
//!    cancelled), even if the child chose to exit 0 on SIGTERM.
//! 4. If the attempt's future is dropped (a timeout, forced cancellation,
//!    the worker stopping), a guard sends SIGKILL to the group at once;
//!    the child is reaped in the background when it exits.
//! 5. After a normal exit, children the command left running may still hold
//!    its pipes: reading stops [`output_wait`](CommandRunnerBuilder::output_wait)
//!    after the exit is seen (100 ms by default, nextest's leak timeout; the
//!    exit is seen at most 10 ms late, as above) and the end
//!    says the output may be cut. Those processes are *not* killed: a
//!    command that meant to start a daemon did so.
//! 6. The sink hears [`ended`](OutputSink::ended); the report carries the
//!    exit code and the output tails.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use herd_core::Failure;
use herd_core::scheduler::{AttemptReport, AttemptResult, Cancellation, Runner, TaskEnd};
use herd_core::store::{AttemptLog, ClaimedTask, Store};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::output::{AttemptEnd, Discard, Exit, OutputSink, Stream, TaskRef, pump};
use crate::spawn::{self, Environment};

/// What a task of a command batch runs, as stored with the task.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandTask {
    /// The program and its arguments, templates already expanded.
    pub argv: Vec<String>,
    /// The input items it runs on, as read (for people and exports).
    pub items: Vec<String>,
}

/// Called with the end of every task of the batches the runner serves.
pub type OnEnd = Arc<dyn Fn(TaskEnd) + Send + Sync>;

/// Runs command tasks as child processes. See the [module docs](self).
///
/// Cheap to clone: clones share their configuration.
#[derive(Clone)]
pub struct CommandRunner {
    config: Arc<Config>,
}

impl std::fmt::Debug for CommandRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandRunner")
            .field("capture", &self.config.capture)
            .field("env", &self.config.environment.added())
            .field("output_wait", &self.config.output_wait)
            .finish_non_exhaustive()
    }
}

struct Config {
    capture: usize,
    sink: Arc<dyn OutputSink>,
    on_end: Option<OnEnd>,
    output_wait: Duration,
    /// `/dev/null`, opened once: the spawn duplicates it onto each
    /// command's stdin (no `open`, which looks the path up every time).
    null: Option<std::fs::File>,
    /// What each command's environment starts from.
    environment: Environment,
}

/// How long a command runs before its exit is watched even though its
/// output has not ended (see [`run_attempt`]): so the exit of a command
/// whose children keep its pipes open is seen this much late at most.
const WATCH_EXIT_AFTER: Duration = Duration::from_millis(10);

/// The variables each attempt sets.
const ATTEMPT_VARS: [&str; 4] = ["HERD_BATCH_ID", "HERD_TASK_ID", "HERD_ATTEMPT", "HERD_JOB"];

/// Builds a [`CommandRunner`].
#[must_use]
pub struct CommandRunnerBuilder {
    config: Config,
}

impl CommandRunnerBuilder {
    /// Bytes of each stream's tail kept in the attempt's log (64 KiB by default).
    pub fn capture(mut self, bytes: usize) -> Self {
        self.config.capture = bytes;
        self
    }

    /// Where output goes as it arrives ([`Discard`] by default).
    pub fn sink(mut self, sink: Arc<dyn OutputSink>) -> Self {
        self.config.sink = sink;
        self
    }

    /// Sets an environment variable for every command (on top of the
    /// runner's own environment and before the `HERD_*` ones).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.config.environment.set(key.into(), value.into());
        self
    }

    /// Called with the end of every task (from [`Runner::deliver`]).
    pub fn on_end(mut self, on_end: impl Fn(TaskEnd) + Send + Sync + 'static) -> Self {
        self.config.on_end = Some(Arc::new(on_end));
        self
    }

    /// How long to keep reading output after the process exited, for
    /// processes it left running that still hold its pipes (100 ms by default).
    pub fn output_wait(mut self, wait: Duration) -> Self {
        self.config.output_wait = wait;
        self
    }

    /// The runner.
    pub fn build(self) -> CommandRunner {
        CommandRunner {
            config: Arc::new(self.config),
        }
    }
}

impl Default for CommandRunner {
    fn default() -> Self {
        CommandRunner::builder().build()
    }
}

impl CommandRunner {
    /// The default tail kept per stream: 64 KiB.
    pub const DEFAULT_CAPTURE: usize = 64 * 1024;

    /// A builder with the defaults: 64 KiB tails, output discarded.
    pub fn builder() -> CommandRunnerBuilder {
        CommandRunnerBuilder {
            config: Config {
                capture: Self::DEFAULT_CAPTURE,
                sink: Arc::new(Discard),
                on_end: None,
                output_wait: Duration::from_millis(100),
                null: std::fs::File::open("/dev/null").ok(),
                environment: Environment::inherited(&ATTEMPT_VARS),
            },
        }
    }

    /// Runs one attempt of `argv`, outside any store: what
    /// [`Runner::start`] does, without the report around it.
    pub async fn run(
        &self,
        task: TaskRef,
        argv: Vec<String>,
        grace: Duration,
        cancel: Cancellation,
    ) -> (AttemptResult, AttemptLog) {
        run_attempt(&self.config, task, argv, grace, cancel).await
    }
}

impl<S: Store<Payload = CommandTask>> Runner<S> for CommandRunner {
    fn start(
        &self,
        task: ClaimedTask<CommandTask, S::Output>,
        cancel: Cancellation,
    ) -> BoxFuture<'static, AttemptReport<S::Output>> {
        let config = self.config.clone();
        let task_ref = TaskRef {
            batch: task.batch,
            task: task.id,
            index: task.index,
            attempt: task.attempt,
        };
        let grace = task.policy.grace;
        let argv = task.payload.argv;
        Box::pin(async move {
            let (result, log) = run_attempt(&config, task_ref, argv, grace, cancel).await;
            AttemptReport {
                result,
                output: None,
                delivery: None,
                log: Some(log),
            }
        })
    }

    fn deliver(&self, end: TaskEnd, _delivery: Option<Box<dyn std::any::Any + Send>>) {
        if let Some(on_end) = &self.config.on_end {
            on_end(end);
        }
    }

    /// A timeout sends SIGTERM to the group and SIGKILL after the grace,
    /// as a cancellation does, rather than killing the group at once.
    fn graceful_stop(&self) -> bool {
        true
    }
}

/// Kills the attempt's process group if the attempt is dropped before it
/// ends, and tells the sink.
struct Guard<'a> {
    group: Pid,
    task: TaskRef,
    sink: &'a dyn OutputSink,
    /// How the leader exited, once it has.
    exited: Option<Exit>,
    armed: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        signal_group(self.group, Signal::SIGKILL);
        let log = AttemptLog::default();
        self.sink.ended(
            &self.task,
            &AttemptEnd {
                exit: self.exited.unwrap_or(Exit::Dropped),
                log: &log,
                cancelled: true,
                output_cut: true,
            },
        );
    }
}

/// Sends `signal` to every process of `group`; a group that is gone already is fine.
///
/// The group's id stays taken while any member lives, so signalling it after
/// the leader was reaped reaches the leftovers and no one else.
fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(group = group.as_raw(), ?signal, %error, "cannot signal the process group")
        }
    }
}

async fn run_attempt(
    config: &Config,
    task: TaskRef,
    argv: Vec<String>,
    grace: Duration,
    cancel: Cancellation,
) -> (AttemptResult, AttemptLog) {
    let sink = &*config.sink;
    sink.started(&task);
    let Some(program) = argv.first() else {
        return start_failed(sink, &task, "cannot start: the command is empty".into());
    };
    let (batch, task_id, attempt, job) = (
        task.batch.to_string(),
        task.task.to_string(),
        task.attempt.0.to_string(),
        task.job().to_string(),
    );
    let vars = [
        (ATTEMPT_VARS[0], batch.as_str()),
        (ATTEMPT_VARS[1], task_id.as_str()),
        (ATTEMPT_VARS[2], attempt.as_str()),
        (ATTEMPT_VARS[3], job.as_str()),
    ];
    let opened;
    let stdin = match &config.null {
        Some(null) => null.as_fd(),
        None => match std::fs::File::open("/dev/null") {
            Ok(null) => {
                opened = null;
                opened.as_fd()
            }
            Err(error) => {
                return start_failed(sink, &task, format!("cannot open /dev/null: {error}"));
            }
        },
    };
    let mut child = match spawn::spawn(&argv, &config.environment, &vars, stdin) {
        Ok(child) => child,
        Err(error) => {
            return start_failed(sink, &task, format!("cannot start {program:?}: {error}"));
        }
    };
    let mut guard = Guard {
        group: child.pid(),
        task,
        sink,
        exited: None,
        armed: true,
    };
    let (stop, stopped) = watch::channel(false);
    let (stdout, stderr) = child.take_output().expect("stdout and stderr are piped");
    let output = futures::future::join(
        pump(
            stdout,
            Stream::Stdout,
            &task,
            sink,
            config.capture,
            stopped.clone(),
        ),
        pump(stderr, Stream::Stderr, &task, sink, config.capture, stopped),
    );
    let mut output = std::pin::pin!(output);
    let mut captured = None;
    let mut cancelled_at: Option<Instant> = None;
    let mut killed = false;
    // The exit is watched once the output has ended (most commands have
    // exited by then and are reaped at once), or from WATCH_EXIT_AFTER on
    // for a command that keeps its pipes open, or a cancelled one.
    let watch_exit = tokio::time::sleep(WATCH_EXIT_AFTER);
    let mut watch_exit = std::pin::pin!(watch_exit);
    let mut watching = false;
    let status = loop {
        let kill_at = cancelled_at.map(|at| at + grace);
        tokio::select! {
            status = child.wait(), if watching || captured.is_some() => break status,
            out = &mut output, if captured.is_none() => captured = Some(out),
            () = &mut watch_exit, if !watching && captured.is_none() => watching = true,
            () = cancel.cancelled(), if cancelled_at.is_none() => {
                signal_group(guard.group, Signal::SIGTERM);
                cancelled_at = Some(Instant::now());
                watching = true;
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() && !killed => {
                signal_group(guard.group, Signal::SIGKILL);
                killed = true;
            }
        }
    };
    let cancelled = cancelled_at.is_some();
    let exit = match &status {
        Ok(status) => exit_of(status),
        Err(_) => Exit::Dropped,
    };
    guard.exited = Some(exit);
    if cancelled || status.is_err() {
        // Nothing of a cancelled attempt may run on.
        signal_group(guard.group, Signal::SIGKILL);
    }
    let (out, err) = match captured {
        Some(captured) => captured,
        None => match tokio::time::timeout(config.output_wait, &mut output).await {
            Ok(captured) => captured,
            Err(_) => {
                stop.send_replace(true);
                output.await
            }
        },
    };
    let output_cut = !(out.eof && err.eof);
    if output_cut {
        tracing::debug!(task = %task.task, attempt = task.attempt.0, "output may be cut: the command's children kept its pipes open after it exited");
    }
    let log = AttemptLog {
        exit_code: match exit {
            Exit::Code(code) => Some(code),
            _ => None,
        },
        stdout: out.tail,
        stdout_total: out.total,
        stderr: err.tail,
        stderr_total: err.total,
    };
    let mut result = match status {
        Ok(_) => result_of(exit, &log, cancelled, killed, grace),
        Err(error) => AttemptResult::Failed {
            failure: Failure::Error { permanent: false },
            message: Some(format!("cannot wait for {program:?} to exit: {error}")),
        },
    };
    guard.armed = false;
    let note = sink.ended(
        &task,
        &AttemptEnd {
            exit,
            log: &log,
            cancelled,
            output_cut,
        },
    );
    if let AttemptResult::Failed { message, .. } = &mut result {
        let text = message.get_or_insert_with(String::new);
        if output_cut {
            text.push_str("; output may be cut: processes it started kept its stdout or stderr open after it exited");
        }
        if let Some(note) = note {
            text.push_str("; ");
            text.push_str(&note);
        }
    }
    (result, log)
}

fn start_failed(
    sink: &dyn OutputSink,
    task: &TaskRef,
    message: String,
) -> (AttemptResult, AttemptLog) {
    let log = AttemptLog::default();
    let note = sink.ended(
        task,
        &AttemptEnd {
            exit: Exit::StartFailed,
            log: &log,
            cancelled: false,
            output_cut: false,
        },
    );
    let message = match note {
        Some(note) => format!("{message}; {note}"),
        None => message,
    };
    (
        AttemptResult::Failed {
            failure: Failure::StartFailed,
            message: Some(message),
        },
        log,
    )
}

fn exit_of(status: &ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::Dropped,
    }
}

fn signal_name(signal: i32) -> String {
    match Signal::try_from(signal) {
        Ok(s) => format!("signal {signal} ({})", s.as_str()),
        Err(_) => format!("signal {signal}"),
    }
}

/// How an attempt that was waited for ended, with a short message for people.
///
/// The runner cannot tell a user's cancel from a timeout (both fire the
/// same signal), so a stopped attempt's message says what happened to the
/// process, not why; the worker records the reason.
fn result_of(
    exit: Exit,
    log: &AttemptLog,
    cancelled: bool,
    killed: bool,
    grace: Duration,
) -> AttemptResult {
    let last_err = last_line(&log.stderr);
    let with_stderr = |text: String| match &last_err {
        Some(line) if !cancelled => format!("{text}: {line}"),
        _ => text,
    };
    if cancelled {
        let how = match exit {
            _ if killed => {
                format!("stopped: still running {grace:?} after SIGTERM, killed with SIGKILL")
            }
            Exit::Code(code) => format!("stopped: exited with code {code} after SIGTERM"),
            Exit::Signal(signal) => {
                format!("stopped: ended by {} after SIGTERM", signal_name(signal))
            }
            Exit::StartFailed | Exit::Dropped => "stopped".to_string(),
        };
        let failure = match exit {
            Exit::Signal(signal) => Failure::Signal(signal),
            Exit::Code(code) if code != 0 => Failure::ExitCode(code),
            _ => Failure::Signal(Signal::SIGTERM as i32),
        };
        return AttemptResult::Failed {
            failure,
            message: Some(how),
        };
    }
    match exit {
        Exit::Code(0) => AttemptResult::Succeeded,
        Exit::Code(code) => AttemptResult::Failed {
            failure: Failure::ExitCode(code),
            message: Some(with_stderr(format!("exit code {code}"))),
        },
        Exit::Signal(signal) => AttemptResult::Failed {
            failure: Failure::Signal(signal),
            message: Some(with_stderr(format!("killed by {}", signal_name(signal)))),
        },
        Exit::StartFailed | Exit::Dropped => AttemptResult::Failed {
            failure: Failure::Error { permanent: false },
            message: Some("the process ended in an unknown way".into()),
        },
    }
}

/// The last non-blank line of `tail`, trimmed and cut to 200 characters.
fn last_line(tail: &[u8]) -> Option<String> {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(tail);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_skips_blank_ones_and_is_short() {
        assert_eq!(last_line(b"a\nerror: x \n\n  \n"), Some("error: x".into()));
        assert_eq!(last_line(b""), None);
        assert_eq!(last_line(b"\n\n"), None);
        let long = "é".repeat(300);
        let line = last_line(long.as_bytes()).unwrap();
        assert_eq!(line.chars().count(), 201);
    }

    #[test]
    fn messages() {
        let log = AttemptLog {
            stderr: b"warming up\nboom\n".to_vec(),
            ..AttemptLog::default()
        };
        let grace = Duration::from_millis(200);
        assert_eq!(
            result_of(Exit::Code(3), &log, false, false, grace),
            AttemptResult::Failed {
                failure: Failure::ExitCode(3),
                message: Some("exit code 3: boom".into())
            }
        );
        assert_eq!(
            result_of(Exit::Signal(9), &AttemptLog::default(), false, false, grace),
            AttemptResult::Failed {
                failure: Failure::Signal(9),
                message: Some("killed by signal 9 (SIGKILL)".into())
            }
        );
        assert_eq!(
            result_of(Exit::Code(0), &log, false, false, grace),
            AttemptResult::Succeeded
        );
        // A cancelled attempt fails even if the command exits 0 on SIGTERM.
        assert_eq!(
            result_of(Exit::Code(0), &log, true, false, grace),
            AttemptResult::Failed {
                failure: Failure::Signal(15),
                message: Some("stopped: exited with code 0 after SIGTERM".into())
            }
        );
        assert_eq!(
            result_of(Exit::Signal(9), &log, true, true, grace),
            AttemptResult::Failed {
                failure: Failure::Signal(9),
                message: Some(
                    "stopped: still running 200ms after SIGTERM, killed with SIGKILL".into()
                )
            }
        );
    }
}
