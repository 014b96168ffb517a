//! Where a command's output goes: the [`OutputSink`] that sees it line by
//! line as it arrives, and the capped tails kept for the attempt's record.

use herd_core::store::AttemptLog;
use herd_core::{Attempt, BatchId, TaskId};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// The longest piece of output handed to a sink at once: a longer line
/// (or output without newlines) arrives in pieces of this size.
pub const MAX_PIECE: usize = 64 * 1024;

/// How much is read from a pipe at once, at most: a pipe holds 64 KiB.
const READ_SIZE: usize = 64 * 1024;

/// How much is read from a pipe at first: most commands print less, and
/// the buffer grows to [`READ_SIZE`] once a read fills it. Two 64 KiB
/// buffers zeroed and freed for every attempt were a visible share of
/// `herd run`'s own CPU over short commands (`memset`, `malloc_consolidate`).
const FIRST_READ_SIZE: usize = 4 * 1024;

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Which attempt of which task some output belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskRef {
    /// The batch.
    pub batch: BatchId,
    /// The task.
    pub task: TaskId,
    /// Its position in the batch, from 0.
    pub index: u64,
    /// The attempt.
    pub attempt: Attempt,
}

impl TaskRef {
    /// The job number people see (and `{#}`, `HERD_JOB`): the index plus one.
    pub fn job(&self) -> u64 {
        self.index + 1
    }
}

/// How an attempt's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It could not be started.
    StartFailed,
    /// The attempt was dropped while the process ran (timeout, forced
    /// cancellation, the worker stopping): its process group was sent SIGKILL
    /// and no one waited to see it end.
    Dropped,
}

impl Exit {
    /// The exit as one short line: `0`, `3`, `signal 9`, `start failed`.
    /// A dropped attempt reads `signal 9`: its group was sent SIGKILL.
    pub fn summary(&self) -> String {
        match self {
            Exit::Code(code) => code.to_string(),
            Exit::Signal(signal) => format!("signal {signal}"),
            Exit::StartFailed => "start failed".into(),
            Exit::Dropped => format!("signal {}", nix::sys::signal::Signal::SIGKILL as i32),
        }
    }
}

/// The end of an attempt, as a sink hears of it.
#[derive(Clone, Copy, Debug)]
pub struct AttemptEnd<'a> {
    /// How the process ended.
    pub exit: Exit,
    /// Exit code and output tails (empty for a dropped attempt).
    pub log: &'a AttemptLog,
    /// The attempt was cancelled (SIGTERM, then SIGKILL after the grace).
    pub cancelled: bool,
    /// The process exited but something it started kept its output open:
    /// the runner stopped reading shortly after the exit, and the output
    /// may be incomplete.
    pub output_cut: bool,
}

/// Receives a command's output as it arrives, for display or storage.
///
/// Calls for one attempt come in order: [`started`](Self::started), then
/// [`line`](Self::line)s of both streams (each stream in order) with a
/// [`flush`](Self::flush) after each read from the pipe, then
/// [`ended`](Self::ended) once. Attempts of different tasks run at once, so
/// calls for them interleave; a line is always whole, so a sink that writes
/// each call at once never mixes two lines.
pub trait OutputSink: Send + Sync + 'static {
    /// The attempt is about to start.
    fn started(&self, task: &TaskRef) {
        let _ = task;
    }

    /// A line of output, with its `\n`; or the last piece of a stream, which
    /// had no newline; or a piece of at most [`MAX_PIECE`] bytes of a longer line.
    fn line(&self, task: &TaskRef, stream: Stream, line: &[u8]);

    /// The lines read so far have all been passed on: a good moment to flush
    /// buffers, as more may take a while.
    fn flush(&self, task: &TaskRef, stream: Stream) {
        let _ = (task, stream);
    }

    /// The attempt is over; no more lines come. A returned note (something
    /// went wrong in the sink, e.g. a results file could not be written) is
    /// added to the attempt's message when it failed (a success has none).
    fn ended(&self, task: &TaskRef, end: &AttemptEnd<'_>) -> Option<String> {
        let _ = (task, end);
        None
    }
}

/// A sink that drops all output (the tails are still kept in the attempt's log).
#[derive(Clone, Copy, Debug, Default)]
pub struct Discard;

impl OutputSink for Discard {
    fn line(&self, _: &TaskRef, _: Stream, _: &[u8]) {}
}

/// The last `cap` bytes of a stream. Holds at most twice `cap`, whatever
/// the stream's length.
#[derive(Debug)]
pub(crate) struct Tail {
    buf: Vec<u8>,
    cap: usize,
}

impl Tail {
    pub(crate) fn new(cap: usize) -> Self {
        Tail {
            buf: Vec::new(),
            cap,
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        if data.len() >= self.cap {
            self.buf.clear();
            self.buf.extend_from_slice(&data[data.len() - self.cap..]);
            return;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.cap.saturating_mul(2) {
            self.buf.drain(..self.buf.len() - self.cap);
        }
    }

    pub(crate) fn into_bytes(mut self) -> Vec<u8> {
        if self.buf.len() > self.cap {
            self.buf.drain(..self.buf.len() - self.cap);
        }
        self.buf
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.len()
    }
}

/// What was read of one stream.
#[derive(Debug)]
pub(crate) struct Captured {
    pub(crate) tail: Vec<u8>,
    pub(crate) total: u64,
    /// The stream ended (rather than reading was stopped).
    pub(crate) eof: bool,
}

/// Splits a stream into lines and pieces for the sink.
struct Splitter<'a> {
    task: &'a TaskRef,
    stream: Stream,
    sink: &'a dyn OutputSink,
    /// The start of a line whose end has not arrived, shorter than [`MAX_PIECE`].
    partial: Vec<u8>,
}

impl Splitter<'_> {
    fn feed(&mut self, mut data: &[u8]) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            let (line, rest) = data.split_at(i + 1);
            self.segment(line, true);
            data = rest;
        }
        self.segment(data, false);
    }

    /// A segment of a line: its end (`complete`) or a part without its end.
    fn segment(&mut self, mut seg: &[u8], complete: bool) {
        while self.partial.len() + seg.len() > MAX_PIECE {
            let (head, rest) = seg.split_at(MAX_PIECE - self.partial.len());
            self.emit(head);
            seg = rest;
        }
        if complete {
            self.emit(seg);
        } else {
            self.partial.extend_from_slice(seg);
        }
    }

    /// Passes on what is pending plus `seg`, as one piece.
    fn emit(&mut self, seg: &[u8]) {
        if self.partial.is_empty() {
            if !seg.is_empty() {
                self.sink.line(self.task, self.stream, seg);
            }
        } else {
            self.partial.extend_from_slice(seg);
            self.sink.line(self.task, self.stream, &self.partial);
            self.partial.clear();
        }
    }

    fn finish(&mut self) {
        self.emit(&[]);
    }
}

/// Reads `reader` to its end, or until `stop` turns true: every line goes
/// to the sink, the last `capture` bytes are kept.
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: Stream,
    task: &TaskRef,
    sink: &dyn OutputSink,
    capture: usize,
    mut stop: watch::Receiver<bool>,
) -> Captured {
    // Filled through `read_buf`, so never zeroed.
    let mut buf: Vec<u8> = Vec::with_capacity(FIRST_READ_SIZE);
    let mut tail = Tail::new(capture);
    let mut total = 0u64;
    let mut splitter = Splitter {
        task,
        stream,
        sink,
        partial: Vec::new(),
    };
    let eof = loop {
        let read = tokio::select! {
            biased;
            read = reader.read_buf(&mut buf) => read,
            _ = stop.wait_for(|stop| *stop) => break false,
        };
        match read {
            Ok(0) => break true,
            Ok(n) => {
                total += n as u64;
                tail.push(&buf);
                splitter.feed(&buf);
                sink.flush(task, stream);
                let full = n == buf.capacity();
                buf.clear();
                if full && n < READ_SIZE {
                    buf.reserve_exact(READ_SIZE);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(task = %task.task, attempt = task.attempt.0, stream = stream.name(), error = %e, "cannot read the command's output");
                break false;
            }
        }
    };
    splitter.finish();
    sink.flush(task, stream);
    Captured {
        tail: tail.into_bytes(),
        total,
        eof,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn the_tail_keeps_the_last_bytes_in_bounded_memory() {
        let mut tail = Tail::new(10);
        let mut all = Vec::new();
        for i in 0..1000u32 {
            let piece = format!("{i:04}");
            tail.push(piece.as_bytes());
            all.extend_from_slice(piece.as_bytes());
            assert!(tail.held() < 20, "holds at most twice the cap");
        }
        assert_eq!(tail.into_bytes(), &all[all.len() - 10..]);
        let mut tail = Tail::new(4);
        tail.push(b"ab");
        assert_eq!(tail.into_bytes(), b"ab");
        let mut tail = Tail::new(4);
        tail.push(b"abcdefgh");
        assert_eq!(tail.into_bytes(), b"efgh");
        let mut tail = Tail::new(0);
        tail.push(b"abc");
        assert_eq!(tail.into_bytes(), b"");
    }

    #[derive(Default)]
    struct Lines(Mutex<Vec<Vec<u8>>>);

    impl OutputSink for Lines {
        fn line(&self, _: &TaskRef, _: Stream, line: &[u8]) {
            self.0.lock().unwrap().push(line.to_vec());
        }
    }

    fn split(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let sink = Lines::default();
        let task = TaskRef {
            batch: BatchId(1),
            task: TaskId(1),
            index: 0,
            attempt: Attempt(1),
        };
        let mut s = Splitter {
            task: &task,
            stream: Stream::Stdout,
            sink: &sink,
            partial: Vec::new(),
        };
        for chunk in chunks {
            s.feed(chunk);
        }
        s.finish();
        sink.0.into_inner().unwrap()
    }

    #[test]
    fn lines_are_whole_across_reads() {
        assert_eq!(
            split(&[b"ab", b"c\nd", b"e\n\nf"]),
            [
                b"abc\n".to_vec(),
                b"de\n".to_vec(),
                b"\n".to_vec(),
                b"f".to_vec()
            ]
        );
        assert!(split(&[b"", b""]).is_empty());
    }

    #[test]
    fn long_lines_come_in_bounded_pieces() {
        let long = vec![b'x'; MAX_PIECE * 2 + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let chunks: Vec<&[u8]> = input.chunks(1000).collect();
        let pieces = split(&chunks);
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| p.len() <= MAX_PIECE));
        assert_eq!(pieces.concat(), input);
        // A line of exactly the maximum, newline included, is one piece.
        let mut exact = vec![b'y'; MAX_PIECE - 1];
        exact.push(b'\n');
        assert_eq!(split(&[&exact[..10], &exact[10..]]), [exact.clone()]);
    }
}
