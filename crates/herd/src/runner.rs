//! The typed runner behind a run: calls the handler, returns outcomes to the
//! run's stream.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;

use futures::future::BoxFuture;
use herd_core::scheduler::{AttemptReport, AttemptResult, Cancellation, Runner, TaskEnd};
use herd_core::store::ClaimedTask;
use herd_core::{Failure, TaskState};
use tokio::sync::mpsc;

use crate::context::{AnyValue, TaskContext, TaskError};
use crate::executor::Mem;
use crate::outcome::{Outcome, TaskFailure};

/// What a run's stream receives.
pub(crate) enum RunMsg<O> {
    /// Tasks ended.
    Outcomes(Vec<Outcome<O>>),
}

/// An async function over one item: what `run` and `submit` take.
///
/// Implemented for every `Fn(T, TaskContext) -> impl Future<Output = Result<O, E>>`
/// where `E` converts into [`TaskError`].
pub trait Handler<T, O>: Send + Sync + 'static {
    /// The future of one attempt.
    type Future: Future<Output = Result<O, TaskError>> + Send + 'static;
    /// Starts one attempt on `item`.
    fn call(&self, item: T, ctx: TaskContext) -> Self::Future;
}

impl<T, O, E, F, Fut> Handler<T, O> for F
where
    F: Fn(T, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    E: Into<TaskError> + 'static,
{
    type Future = futures::future::MapErr<Fut, fn(E) -> TaskError>;

    fn call(&self, item: T, ctx: TaskContext) -> Self::Future {
        use futures::TryFutureExt;
        (self)(item, ctx).map_err(Into::into as fn(E) -> TaskError)
    }
}

pub(crate) struct FnRunner<T, O, H> {
    handler: H,
    tx: mpsc::UnboundedSender<RunMsg<O>>,
    /// Outcomes delivered since the last flush.
    pending: std::sync::Mutex<Vec<Outcome<O>>>,
    /// Turns an output into what the store keeps for dependents (DAG runs only).
    keep: Option<fn(&O) -> AnyValue>,
    _item: PhantomData<fn(T)>,
}

impl<T, O, H> FnRunner<T, O, H> {
    pub(crate) fn new(
        handler: H,
        tx: mpsc::UnboundedSender<RunMsg<O>>,
        keep: Option<fn(&O) -> AnyValue>,
    ) -> Self {
        FnRunner {
            handler,
            tx,
            pending: std::sync::Mutex::new(Vec::new()),
            keep,
            _item: PhantomData,
        }
    }
}

impl<T, O, H> Runner<Mem> for FnRunner<T, O, H>
where
    T: Clone + Send + Sync + 'static,
    O: Send + 'static,
    H: Handler<T, O>,
{
    fn start(
        &self,
        task: ClaimedTask<AnyValue, AnyValue>,
        cancel: Cancellation,
    ) -> BoxFuture<'static, AttemptReport<AnyValue>> {
        let item = task
            .payload
            .downcast_ref::<T>()
            .expect("a run's payloads are its item type")
            .clone();
        let keep = if task.has_dependents { self.keep } else { None };
        let ctx = TaskContext {
            task: task.id,
            batch: task.batch,
            index: task.index,
            attempt: task.attempt,
            key: task.key,
            cancel,
            upstream: task.upstream,
        };
        let attempt = self.handler.call(item, ctx);
        Box::pin(async move {
            match attempt.await {
                Ok(output) => AttemptReport {
                    result: AttemptResult::Succeeded,
                    output: keep.map(|keep| keep(&output)),
                    delivery: Some(Box::new(output)),
                    log: None,
                },
                Err(error) => AttemptReport {
                    result: AttemptResult::Failed {
                        failure: Failure::Error {
                            permanent: error.is_permanent(),
                        },
                        message: Some(error.to_string()),
                    },
                    output: None,
                    delivery: Some(Box::new(error)),
                    log: None,
                },
            }
        })
    }

    fn deliver(&self, end: TaskEnd, delivery: Option<Box<dyn Any + Send>>) {
        let result = match (end.state, delivery) {
            (TaskState::Succeeded, Some(output)) => Ok(*output
                .downcast::<O>()
                .expect("a run's outputs are its handler's type")),
            (state, delivery) => Err(TaskFailure {
                // A success arrives here without its output only if another
                // worker ran the task (a store shared between processes):
                // the output stayed with it.
                state,
                reason: end.reason,
                error: delivery
                    .and_then(|d| d.downcast::<TaskError>().ok())
                    .map(|e| *e),
            }),
        };
        let outcome = Outcome {
            index: end.index,
            task: end.task,
            attempts: end.attempt.0,
            result,
        };
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(outcome);
    }

    fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let capacity = pending.len();
        let outcomes = std::mem::replace(&mut *pending, Vec::with_capacity(capacity));
        drop(pending);
        if !outcomes.is_empty() {
            let _ = self.tx.send(RunMsg::Outcomes(outcomes));
        }
    }
}
