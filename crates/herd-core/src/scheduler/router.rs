//! Which runner starts a flow's attempts, and which receives a batch's ends.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard};

use super::runner::{Runner, TaskEnd};
use crate::model::{BatchId, EventKind, TaskId};
use crate::store::{Events, Store};

/// The runners known to a worker: by flow, to start attempts, and by batch, to
/// deliver the ends of tasks that finished without this worker reporting them
/// (skipped, cancelled, expired).
pub struct Router<S: Store> {
    inner: Mutex<Routes<S>>,
}

/// The routing tables, while locked. A submitter holds the lock across its
/// `batch_insert` and binds the new batch before releasing it, so that no end
/// of the batch can be routed before the batch is bound.
pub struct Routes<S: Store> {
    flows: HashMap<Arc<str>, Arc<dyn Runner<S>>>,
    batches: HashMap<BatchId, Arc<dyn Runner<S>>>,
}

impl<S: Store> Default for Router<S> {
    fn default() -> Self {
        Router {
            inner: Mutex::new(Routes {
                flows: HashMap::new(),
                batches: HashMap::new(),
            }),
        }
    }
}

impl<S: Store> Router<S> {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks the tables.
    pub async fn lock(&self) -> MutexGuard<'_, Routes<S>> {
        self.inner.lock().await
    }

    /// The runner of `flow`.
    pub async fn flow(&self, flow: &str) -> Option<Arc<dyn Runner<S>>> {
        self.inner.lock().await.flows.get(flow).cloned()
    }

    /// Delivers the terminal transitions in `events` to the runners of their
    /// batches, except for tasks in `skip` (sorted; delivered by their worker already).
    pub async fn route(&self, events: &Events, skip: &[TaskId]) {
        let mut ends = events.iter().filter_map(|e| match e.kind {
            EventKind::Task {
                task,
                index,
                attempt,
                to,
                reason,
                ..
            } if to.is_terminal() && skip.binary_search(&task).is_err() => Some(TaskEnd {
                batch: e.batch,
                task,
                index,
                attempt,
                state: to,
                reason,
            }),
            _ => None,
        });
        let Some(first) = ends.next() else { return };
        let routes = self.inner.lock().await;
        let mut touched: Vec<&Arc<dyn Runner<S>>> = Vec::new();
        for end in std::iter::once(first).chain(ends) {
            if let Some(runner) = routes.batches.get(&end.batch) {
                runner.deliver(end, None);
                if !touched.iter().any(|r| Arc::ptr_eq(r, runner)) {
                    touched.push(runner);
                }
            }
        }
        for runner in touched {
            runner.flush();
        }
    }
}

impl<S: Store> Routes<S> {
    /// Registers the runner of a flow.
    pub fn add_flow(&mut self, flow: Arc<str>, runner: Arc<dyn Runner<S>>) {
        self.flows.insert(flow, runner);
    }

    /// Delivers the ends of `batch` to `runner`.
    pub fn bind(&mut self, batch: BatchId, runner: Arc<dyn Runner<S>>) {
        self.batches.insert(batch, runner);
    }

    /// Forgets a batch and a flow once nothing more can arrive for them.
    pub fn remove(&mut self, batch: Option<BatchId>, flow: &str) {
        if let Some(batch) = batch {
            self.batches.remove(&batch);
        }
        self.flows.remove(flow);
    }
}
