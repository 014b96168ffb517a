//! Run batches of async work with bounded concurrency, priorities, retries,
//! timeouts, deadlines, error policies and dependencies — and watch them run.
//!
//! An [`Executor`] runs a handler (an async closure) over items and streams one
//! [`Outcome`] per item. Memory stays bounded by the concurrency, not by the
//! number of items: the input is read as outcomes are taken.
//!
//! ```
//! use std::time::Duration;
//! use futures::StreamExt;
//! use herd::{Executor, RetryPolicy, TaskContext, TaskError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herd::Error> {
//! let executor = Executor::builder()
//!     .concurrency(8)
//!     .retry(RetryPolicy::attempts(3))
//!     .timeout(Duration::from_secs(5))
//!     .build()?;
//!
//! let mut outcomes = executor
//!     .run(1..=100u64, |n: u64, _ctx: TaskContext| async move {
//!         if n == 0 {
//!             return Err(TaskError::permanent("zero"));
//!         }
//!         Ok(n * n)
//!     })
//!     .await?;
//!
//! let mut sum = 0;
//! while let Some(outcome) = outcomes.next().await {
//!     sum += outcome.result.expect("no task fails here");
//! }
//! assert_eq!(sum, (1..=100u64).map(|n| n * n).sum::<u64>());
//! # Ok(())
//! # }
//! ```
//!
//! # What an executor does
//!
//! - **Concurrency**: `concurrency` slots per executor, shared by its batches;
//!   each batch may also have its own limit, and tasks a `cost` in slots.
//! - **Priority**: higher-priority tasks start first when slots are scarce;
//!   FIFO within a priority; batches of equal priority share slots fairly.
//! - **Retries** with fixed or exponential backoff and full jitter; a task
//!   waiting for its retry holds no slot. [`TaskError::permanent`] is never retried.
//! - **Timeouts** per attempt and **deadlines** per batch drop the attempt's future.
//! - **Error policies**: `continue`, `stop` (start nothing new) or `abort`
//!   (cancel running attempts), tripped by the first failure, a count or a share.
//! - **Dependencies** with [`BatchBuilder::submit`]: `after` keys, the outputs
//!   of upstream tasks reach dependents; failures skip dependents transitively.
//! - **Chunks** with [`BatchBuilder::run_chunks`]: several items per call.
//! - **Events**: [`Executor::subscribe`] sees every state transition;
//!   [`Executor::stats`] gives counts, retries, percentiles and throughput.
//!
//! Execution is at-least-once: an attempt whose worker stops renewing its
//! lease runs again. The record of how each task ended is written exactly once.

mod chunk;
mod context;
mod events;
mod executor;
mod outcome;
mod run;
mod runner;
mod task;

pub use chunk::{ChunkOutcome, ChunkRun};
pub use context::{TaskContext, TaskError, Upstream};
pub use events::{Events, Lagged, Subscription};
pub use executor::{BatchBuilder, Executor, ExecutorBuilder};
pub use outcome::{Outcome, TaskFailure};
pub use run::{Run, Summary};
pub use runner::Handler;
pub use task::Task;

pub use herd_core::store::CancelMode;
pub use herd_core::{
    Attempt, Backoff, BatchId, BatchInfo, BatchState, BatchStats, ChunkPolicy, ChunkStatus,
    DependencyRule, ErrorPolicy, Event, EventKind, ExitCodes, InvalidField, Jitter, OnFailure,
    Priority, Reason, RetryPolicy, SizeClass, StateCounts, SubmitError, TaskId, TaskState,
    Threshold,
};

/// Why herd could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration or the batch is invalid; nothing was stored.
    #[error(transparent)]
    Invalid(SubmitError),
    /// The store failed.
    #[error(transparent)]
    Store(herd_core::store::StoreError),
    /// The executor was built outside a tokio runtime.
    #[error(
        "herd needs a tokio runtime: build the executor inside one (e.g. under #[tokio::main])"
    )]
    NoRuntime,
}
