//! `--results DIR`: every task's full output and exit, in files.
//!
//! For the task with job number N (its index plus one), `DIR/N/stdout` and
//! `DIR/N/stderr` hold everything the last attempt wrote (all of it, not the
//! tail), written as it arrives; `DIR/N/exit` holds how it ended, written at
//! the end: the exit code (`0`, `3`), `signal 9`, or `start failed`. A new
//! attempt starts both files afresh.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use herd_core::{Attempt, TaskId};

use crate::output::{AttemptEnd, OutputSink, Stream, TaskRef};

/// An [`OutputSink`] that writes every attempt's output to files under a
/// directory, then passes every call on to another sink.
///
/// Failing to write never stops a task: the error is logged (`tracing`)
/// once per attempt and added to the attempt's message if it failed.
pub struct ResultsDir {
    dir: PathBuf,
    inner: Arc<dyn OutputSink>,
    open: Mutex<HashMap<(TaskId, Attempt), Shared>>,
}

/// The files of one attempt, shared by the calls for it.
type Shared = Arc<Mutex<Files>>;

impl std::fmt::Debug for ResultsDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultsDir")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The files of one running attempt.
struct Files {
    job_dir: PathBuf,
    stdout: Option<BufWriter<File>>,
    stderr: Option<BufWriter<File>>,
    /// The first thing that went wrong.
    error: Option<String>,
}

impl Files {
    fn open(job_dir: PathBuf) -> Files {
        let mut files = Files {
            job_dir,
            stdout: None,
            stderr: None,
            error: None,
        };
        if let Err(e) = std::fs::create_dir_all(&files.job_dir) {
            files.fail(format!("cannot create {}: {e}", files.job_dir.display()));
            return files;
        }
        files.stdout = files.create("stdout");
        files.stderr = files.create("stderr");
        files
    }

    fn create(&mut self, name: &str) -> Option<BufWriter<File>> {
        let path = self.job_dir.join(name);
        match File::create(&path) {
            Ok(file) => Some(BufWriter::with_capacity(64 * 1024, file)),
            Err(e) => {
                self.fail(format!("cannot create {}: {e}", path.display()));
                None
            }
        }
    }

    fn fail(&mut self, error: String) {
        if self.error.is_none() {
            tracing::warn!(%error, "cannot write results");
            self.error = Some(error);
        }
    }

    /// Runs `op` on a stream's file; on error, gives the file up.
    fn with(&mut self, stream: Stream, op: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>) {
        let file = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let Some(writer) = file else { return };
        if let Err(e) = op(writer) {
            *file = None;
            let path = self.job_dir.join(stream.name());
            self.fail(format!("cannot write {}: {e}", path.display()));
        }
    }
}

impl ResultsDir {
    /// Writes results under `dir`, creating it if need be, and passes every
    /// call on to `inner`.
    pub fn new(dir: impl Into<PathBuf>, inner: Arc<dyn OutputSink>) -> io::Result<ResultsDir> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(ResultsDir {
            dir,
            inner,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the files of job number `job` go.
    pub fn job_dir(&self, job: u64) -> PathBuf {
        self.dir.join(job.to_string())
    }

    fn files(&self, task: &TaskRef) -> Option<Shared> {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&(task.task, task.attempt)).cloned()
    }
}

impl OutputSink for ResultsDir {
    fn started(&self, task: &TaskRef) {
        let files = Files::open(self.job_dir(task.job()));
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((task.task, task.attempt), Arc::new(Mutex::new(files)));
        self.inner.started(task);
    }

    fn line(&self, task: &TaskRef, stream: Stream, line: &[u8]) {
        if let Some(files) = self.files(task) {
            let mut files = files.lock().unwrap_or_else(PoisonError::into_inner);
            files.with(stream, |w| w.write_all(line));
        }
        self.inner.line(task, stream, line);
    }

    fn flush(&self, task: &TaskRef, stream: Stream) {
        if let Some(files) = self.files(task) {
            let mut files = files.lock().unwrap_or_else(PoisonError::into_inner);
            files.with(stream, |w| w.flush());
        }
        self.inner.flush(task, stream);
    }

    fn ended(&self, task: &TaskRef, end: &AttemptEnd<'_>) -> Option<String> {
        let files = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(task.task, task.attempt));
        let mut note = None;
        if let Some(files) = files {
            let mut files = files.lock().unwrap_or_else(PoisonError::into_inner);
            files.with(Stream::Stdout, |w| w.flush());
            files.with(Stream::Stderr, |w| w.flush());
            files.stdout = None;
            files.stderr = None;
            let path = files.job_dir.join("exit");
            if let Err(e) = std::fs::write(&path, format!("{}\n", end.exit.summary())) {
                files.fail(format!("cannot write {}: {e}", path.display()));
            }
            note = files.error.take().map(|e| format!("results: {e}"));
        }
        match (note, self.inner.ended(task, end)) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        }
    }
}
