//! Chunked runs: several items per handler call, a result per item.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use futures::future::BoxFuture;
use herd_core::{BatchId, ChunkPolicy, ChunkStatus};

use crate::context::{TaskContext, TaskError};
use crate::outcome::{Outcome, TaskFailure};
use crate::run::Run;

/// The per-item results of one attempt of a chunk.
pub(crate) struct ChunkResults<O> {
    status: ChunkStatus,
    results: Vec<Result<O, TaskError>>,
}

/// A chunk whose failed share passed the threshold; carried as the attempt's
/// error so that the last attempt's per-item results reach the outcome.
struct ChunkFailed<O> {
    failed: usize,
    total: usize,
    /// Taken out when the outcome is built.
    results: std::sync::Mutex<Option<Vec<Result<O, TaskError>>>>,
}

impl<O> fmt::Debug for ChunkFailed<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkFailed({} of {})", self.failed, self.total)
    }
}

impl<O> fmt::Display for ChunkFailed<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} items failed", self.failed, self.total)
    }
}

impl<O> std::error::Error for ChunkFailed<O> {}

/// Wraps a chunk handler into an item handler over `Vec<T>`.
pub(crate) fn chunk_handler<T, O, H, Fut>(
    policy: ChunkPolicy,
    handler: H,
) -> impl Fn(Vec<T>, TaskContext) -> BoxFuture<'static, Result<ChunkResults<O>, TaskError>>
+ Send
+ Sync
+ 'static
where
    T: Send + 'static,
    O: Send + Sync + 'static,
    H: Fn(Vec<T>, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Result<O, TaskError>>> + Send + 'static,
{
    let handler = Arc::new(handler);
    move |items: Vec<T>, ctx: TaskContext| {
        let len = items.len();
        let work = handler(items, ctx);
        Box::pin(async move {
            let mut results = work.await;
            if results.len() != len {
                // A handler that loses track of items cannot be trusted on any.
                let message = format!(
                    "chunk handler returned {} results for {len} items",
                    results.len()
                );
                results = (0..len)
                    .map(|_| Err(TaskError::permanent(message.clone())))
                    .collect();
            }
            let failed = results.iter().filter(|r| r.is_err()).count();
            match policy.classify(failed, len) {
                ChunkStatus::Failed => Err(TaskError::new(ChunkFailed {
                    failed,
                    total: len,
                    results: std::sync::Mutex::new(Some(results)),
                })),
                status => Ok(ChunkResults { status, results }),
            }
        }) as BoxFuture<'static, _>
    }
}

/// How one chunk ended.
#[derive(Debug)]
pub struct ChunkOutcome<O> {
    /// The chunk's position, from 0.
    pub chunk: u64,
    /// The input position of its first item.
    pub first_item: u64,
    /// `success`, `partial` or `failed`.
    pub status: ChunkStatus,
    /// One result per item, from the chunk's last attempt; empty if the chunk
    /// never ran (cancelled, or its batch stopped).
    pub results: Vec<Result<O, TaskError>>,
    /// Attempts made.
    pub attempts: u32,
    /// Why the chunk as a whole failed, if it did.
    pub failure: Option<TaskFailure>,
}

/// A chunked run: a stream of [`ChunkOutcome`]s.
pub struct ChunkRun<O> {
    run: Run<ChunkResults<O>>,
    size: usize,
}

impl<O> ChunkRun<O> {
    pub(crate) fn new(run: Run<ChunkResults<O>>, size: usize) -> Self {
        ChunkRun { run, size }
    }

    /// The batch.
    pub fn batch_id(&self) -> BatchId {
        self.run.batch_id()
    }

    /// The batch's figures so far (tasks are chunks).
    pub async fn stats(&self) -> Result<herd_core::BatchStats, crate::Error> {
        self.run.stats().await
    }

    /// Cancels the batch; see [`Run::cancel`].
    pub async fn cancel(&self, mode: herd_core::store::CancelMode) -> Result<(), crate::Error> {
        self.run.cancel(mode).await
    }

    fn convert(&self, outcome: Outcome<ChunkResults<O>>) -> ChunkOutcome<O>
    where
        O: 'static,
    {
        let first_item = outcome.index * self.size as u64;
        match outcome.result {
            Ok(ChunkResults { status, results }) => ChunkOutcome {
                chunk: outcome.index,
                first_item,
                status,
                results,
                attempts: outcome.attempts,
                failure: None,
            },
            Err(failure) => {
                let results = failure
                    .error
                    .as_ref()
                    .and_then(|e| e.downcast_ref::<ChunkFailed<O>>())
                    .and_then(|f| f.results.lock().ok()?.take())
                    .unwrap_or_default();
                ChunkOutcome {
                    chunk: outcome.index,
                    first_item,
                    status: ChunkStatus::Failed,
                    results,
                    attempts: outcome.attempts,
                    failure: Some(failure),
                }
            }
        }
    }
}

impl<O: Send + Sync + 'static> Stream for ChunkRun<O> {
    type Item = ChunkOutcome<O>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.run).poll_next(cx) {
            Poll::Ready(Some(outcome)) => Poll::Ready(Some(self.convert(outcome))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
