//! What a handler gets besides its item, and what it returns when it fails.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use herd_core::scheduler::Cancellation;
use herd_core::store::Upstream as StoredUpstream;
use herd_core::{Attempt, BatchId, TaskId, TaskState};

pub(crate) type AnyValue = Arc<dyn Any + Send + Sync>;

/// The attempt a handler is running: ids, cancellation, and upstream results.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) task: TaskId,
    pub(crate) batch: BatchId,
    pub(crate) index: u64,
    pub(crate) attempt: Attempt,
    pub(crate) key: Option<Arc<str>>,
    pub(crate) cancel: Cancellation,
    pub(crate) upstream: Vec<StoredUpstream<AnyValue>>,
}

impl TaskContext {
    /// The task.
    pub fn task_id(&self) -> TaskId {
        self.task
    }

    /// Its batch.
    pub fn batch_id(&self) -> BatchId {
        self.batch
    }

    /// The item's position in the input, from 0.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> Attempt {
        self.attempt
    }

    /// The task's key, for tasks submitted with one.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Completes when the attempt is cancelled gracefully (the task or its
    /// batch was cancelled): wind down and return. A forced cancellation, a
    /// timeout or a deadline drops the handler's future instead.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Whether the attempt has been cancelled gracefully.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The results of the tasks this one depends on, in the order of its
    /// `after`. `O` is the output type of the batch's handler.
    pub fn upstream<O: Clone + 'static>(&self) -> Vec<Upstream<O>> {
        self.upstream
            .iter()
            .map(|u| Upstream {
                task: u.task,
                key: u.key.clone(),
                state: u.state,
                output: u
                    .output
                    .as_ref()
                    .and_then(|o| o.downcast_ref::<O>().cloned()),
            })
            .collect()
    }
}

/// An upstream task's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream<O> {
    /// The upstream task.
    pub task: TaskId,
    /// Its key.
    pub key: Option<Arc<str>>,
    /// How it ended.
    pub state: TaskState,
    /// Its output, if it succeeded.
    pub output: Option<O>,
}

/// A handler's error: retried by the retry policy unless made [`permanent`](TaskError::permanent).
///
/// Any `std::error::Error` converts into it, so `?` works in handlers.
pub struct TaskError {
    error: Box<dyn StdError + Send + Sync>,
    permanent: bool,
}

impl TaskError {
    /// An error the retry policy may retry.
    pub fn new(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        TaskError {
            error: error.into(),
            permanent: false,
        }
    }

    /// An error no retry can fix (bad input, not found): the task fails at once.
    pub fn permanent(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        TaskError {
            error: error.into(),
            permanent: true,
        }
    }

    /// Whether another attempt could not help.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The underlying error, if it is an `E`.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.error.downcast_ref::<E>()
    }

    /// The underlying error.
    pub fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.error
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for TaskError {
    fn from(error: E) -> Self {
        TaskError::new(error)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("error", &self.error)
            .field("permanent", &self.permanent)
            .finish()
    }
}
