//! A real worker over the memory store running a [`CommandRunner`], and a
//! sink that records what it hears.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_core::scheduler::{Router, TaskEnd, WorkerConfig, WorkerHandle, spawn_worker};
use herd_core::store::{AttemptLog, Inserted, MemoryStore, Store, TaskInfo};
use herd_core::{BatchId, BatchInfo, BatchSpec, Clock, SystemClock, TaskId, TaskSpec};
use herd_exec::{
    AttemptEnd, CommandRunner, CommandRunnerBuilder, CommandTask, Exit, OutputSink, Stream, TaskRef,
};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use tokio::sync::Notify;

pub type Mem = MemoryStore<CommandTask, ()>;

/// The flow of every batch here.
pub const FLOW: &str = "cmd";

/// How long anything in these tests may take before it counts as hung.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// `sh -c SCRIPT`, with `args` as `$1`, `$2`...
pub fn sh(script: &str, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["sh".to_string(), "-c".into(), script.into(), "sh".into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

/// One ended attempt, as the sink heard it.
#[derive(Clone, Debug)]
pub struct Ended {
    pub task: TaskRef,
    pub exit: Exit,
    pub log: AttemptLog,
    pub cancelled: bool,
    pub output_cut: bool,
}

/// What arrived on one stream of one task.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// Calls to `line`.
    pub calls: u64,
    /// Bytes in all.
    pub bytes: u64,
    /// The longest call.
    pub longest: usize,
    /// The first calls, up to [`KEPT`].
    pub lines: Vec<Vec<u8>>,
    /// Calls the test's check refused.
    pub refused: u64,
}

/// Lines kept per stream.
const KEPT: usize = 1000;

type Check = Box<dyn Fn(&TaskRef, Stream, &[u8]) -> bool + Send + Sync>;

#[derive(Default)]
struct State {
    started: Vec<TaskRef>,
    received: HashMap<(TaskId, Stream), Received>,
    ended: Vec<Ended>,
}

/// A sink that records every call, and wakes tests waiting for something to arrive.
pub struct Recorder {
    state: Mutex<State>,
    changed: Notify,
    check: Check,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::checking(|_, _, _| true)
    }
}

impl Recorder {
    /// A recorder that counts lines `check` refuses.
    pub fn checking(
        check: impl Fn(&TaskRef, Stream, &[u8]) -> bool + Send + Sync + 'static,
    ) -> Self {
        Recorder {
            state: Mutex::default(),
            changed: Notify::new(),
            check: Box::new(check),
        }
    }

    pub fn received(&self, task: TaskId, stream: Stream) -> Received {
        let state = self.state.lock().unwrap();
        state
            .received
            .get(&(task, stream))
            .cloned()
            .unwrap_or_default()
    }

    /// The text of the kept lines of a stream, concatenated.
    pub fn text(&self, task: TaskId, stream: Stream) -> String {
        String::from_utf8(self.received(task, stream).lines.concat()).unwrap()
    }

    pub fn ended(&self, task: TaskId) -> Vec<Ended> {
        let state = self.state.lock().unwrap();
        state
            .ended
            .iter()
            .filter(|e| e.task.task == task)
            .cloned()
            .collect()
    }

    pub fn started(&self, task: TaskId) -> usize {
        let state = self.state.lock().unwrap();
        state.started.iter().filter(|t| t.task == task).count()
    }

    /// Waits until `task` has written `line` (with its newline) on stdout.
    pub async fn until_line(&self, task: TaskId, line: &str) {
        let want = format!("{line}\n");
        self.until(|r| {
            r.received(task, Stream::Stdout)
                .lines
                .iter()
                .any(|l| l == want.as_bytes())
        })
        .await
    }

    /// Waits until `ready` holds, woken by every call to the sink.
    pub async fn until(&self, ready: impl Fn(&Recorder) -> bool) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let changed = self.changed.notified();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                if ready(self) {
                    return;
                }
                changed.await;
            }
        })
        .await
        .expect("the awaited output arrives");
    }
}

impl OutputSink for Recorder {
    fn started(&self, task: &TaskRef) {
        self.state.lock().unwrap().started.push(*task);
        self.changed.notify_waiters();
    }

    fn line(&self, task: &TaskRef, stream: Stream, line: &[u8]) {
        let ok = (self.check)(task, stream, line);
        {
            let mut state = self.state.lock().unwrap();
            let r = state.received.entry((task.task, stream)).or_default();
            r.calls += 1;
            r.bytes += line.len() as u64;
            r.longest = r.longest.max(line.len());
            r.refused += u64::from(!ok);
            if r.lines.len() < KEPT {
                r.lines.push(line.to_vec());
            }
        }
        self.changed.notify_waiters();
    }

    fn ended(&self, task: &TaskRef, end: &AttemptEnd<'_>) -> Option<String> {
        self.state.lock().unwrap().ended.push(Ended {
            task: *task,
            exit: end.exit,
            log: end.log.clone(),
            cancelled: end.cancelled,
            output_cut: end.output_cut,
        });
        self.changed.notify_waiters();
        None
    }
}

/// A worker running command tasks, with a recorder for their output.
pub struct Harness {
    pub store: Arc<Mem>,
    pub router: Arc<Router<Mem>>,
    pub clock: Arc<dyn Clock>,
    pub worker: Option<WorkerHandle>,
    pub runner: CommandRunner,
    pub ends: Arc<Mutex<Vec<TaskEnd>>>,
}

impl Harness {
    /// A worker with `slots`, its runner built by `build` (with the `on_end`
    /// hook already set to collect ends).
    pub async fn new(
        slots: u32,
        build: impl FnOnce(CommandRunnerBuilder) -> CommandRunnerBuilder,
    ) -> Harness {
        let store = Arc::new(Mem::retaining());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let ends = Arc::new(Mutex::new(Vec::new()));
        let runner = build(CommandRunner::builder().on_end({
            let ends = ends.clone();
            move |end| ends.lock().unwrap().push(end)
        }))
        .build();
        let router = Arc::new(Router::new());
        router
            .lock()
            .await
            .add_flow(Arc::from(FLOW), Arc::new(runner.clone()));
        let worker = spawn_worker(
            store.clone(),
            router.clone(),
            clock.clone(),
            WorkerConfig {
                slots,
                ..WorkerConfig::default()
            },
        );
        Harness {
            store,
            router,
            clock,
            worker: Some(worker),
            runner,
            ends,
        }
    }

    /// Submits one task per argv, after `tweak` has its say on the batch.
    pub async fn submit(
        &self,
        argvs: Vec<Vec<String>>,
        tweak: impl FnOnce(&mut BatchSpec<CommandTask>),
    ) -> Inserted {
        let mut spec = BatchSpec::new(FLOW);
        spec.concurrency = argvs.len().max(1) as u32;
        spec.tasks = argvs
            .into_iter()
            .map(|argv| {
                TaskSpec::new(CommandTask {
                    items: vec![argv.last().cloned().unwrap_or_default()],
                    argv,
                })
            })
            .collect();
        tweak(&mut spec);
        let mut routes = self.router.lock().await;
        let inserted = self
            .store
            .batch_insert(spec, self.clock.now())
            .await
            .unwrap();
        routes.bind(inserted.batch, Arc::new(self.runner.clone()));
        inserted
    }

    /// Waits for the batch to finish.
    pub async fn finished(&self, batch: BatchId) -> BatchInfo {
        tokio::time::timeout(PATIENCE, async {
            let mut events = self.store.events();
            loop {
                let info = self.store.batch_get(batch).await.unwrap();
                if info.state.is_terminal() {
                    return info;
                }
                let _ = events.recv().await;
            }
        })
        .await
        .expect("the batch finishes")
    }

    pub async fn task(&self, task: TaskId) -> TaskInfo {
        self.store.task_get(task).await.unwrap()
    }

    pub async fn shutdown(mut self) {
        if let Some(worker) = self.worker.take() {
            worker.shutdown().await.unwrap();
        }
    }
}

/// Whether `pid` is gone: no such process, or a zombie (dead, waiting for
/// whoever reaps orphans here).
pub fn gone(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => true,
        _ => std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                // The state follows the command name in parentheses.
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            })
            .unwrap_or(true),
    }
}

/// Waits (polling: a killed process takes a moment to die) until `pid` is gone.
pub async fn wait_gone(pid: i32) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The pids written to `path`, one a line.
pub fn pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}
