//! A running batch, as a stream of outcomes.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use herd_core::store::{CancelMode, Store};
use herd_core::{BatchId, BatchState, BatchStats, TaskSpec as StoredTask};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;

use crate::context::AnyValue;
use crate::executor::Shared;
use crate::outcome::Outcome;
use crate::runner::RunMsg;

/// Items appended to the store per round trip, at most.
const FEED_CHUNK: usize = 256;

/// A batch being run: a [`Stream`] of one [`Outcome`] per task, in completion
/// order (or input order, with `ordered()`).
///
/// Items are read from the input only as outcomes are taken from the stream,
/// so at most a window of items (by default four times the concurrency, plus
/// 256) is held anywhere at once, however long the input is.
///
/// Dropping a `Run` before it ends cancels its batch (running attempts are
/// dropped), as dropping a `JoinSet` aborts its tasks.
pub struct Run<O> {
    shared: Arc<Shared>,
    batch: BatchId,
    flow: Arc<str>,
    rx: mpsc::UnboundedReceiver<RunMsg<O>>,
    /// The feeder's credits, and how many there are in all.
    window: Option<(Arc<Semaphore>, usize)>,
    /// Credits earned by yielded outcomes, not yet handed back.
    released: usize,
    total: Option<u64>,
    yielded: u64,
    reorder: Option<Reorder<O>>,
    /// Outcomes received and not yet yielded (completion order).
    received: std::collections::VecDeque<Outcome<O>>,
    feeder: Option<AbortHandle>,
    error: Option<crate::Error>,
    ended: bool,
}

struct Reorder<O> {
    next: u64,
    waiting: BTreeMap<u64, Outcome<O>>,
}

/// The result of [`Run::aggregate`]: the folded value and the batch's figures.
#[derive(Debug)]
pub struct Summary<A> {
    /// The folded value.
    pub value: A,
    /// The batch's final state.
    pub state: BatchState,
    /// The batch's figures.
    pub stats: BatchStats,
}

impl<O> Run<O> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        batch: BatchId,
        flow: Arc<str>,
        rx: mpsc::UnboundedReceiver<RunMsg<O>>,
        window: Option<(Arc<Semaphore>, usize)>,
        total: Option<u64>,
        ordered: bool,
        feeder: Option<AbortHandle>,
    ) -> Self {
        Run {
            shared,
            batch,
            flow,
            rx,
            window,
            released: 0,
            total,
            yielded: 0,
            reorder: ordered.then(|| Reorder {
                next: 0,
                waiting: BTreeMap::new(),
            }),
            received: std::collections::VecDeque::new(),
            feeder,
            error: None,
            ended: false,
        }
    }

    /// The batch.
    pub fn batch_id(&self) -> BatchId {
        self.batch
    }

    /// The batch's figures so far.
    pub async fn stats(&self) -> Result<BatchStats, crate::Error> {
        self.shared.stats(self.batch).await
    }

    /// Cancels the batch: waiting tasks at once, running ones per `mode`.
    /// Their outcomes still arrive on the stream.
    pub async fn cancel(&self, mode: CancelMode) -> Result<(), crate::Error> {
        self.shared.cancel(self.batch, mode).await
    }

    /// Pauses the batch: nothing new starts until [`Run::resume`].
    pub async fn pause(&self) -> Result<(), crate::Error> {
        self.shared.pause(self.batch).await
    }

    /// Resumes a paused batch.
    pub async fn resume(&self) -> Result<(), crate::Error> {
        self.shared.resume(self.batch).await
    }

    /// Why the run ended early, if it did (the input could not be submitted).
    pub fn error(&self) -> Option<&crate::Error> {
        self.error.as_ref()
    }

    /// Folds every outcome into `init` with `f`, then returns the value with
    /// the batch's final state and figures. Holds only the accumulator.
    pub async fn aggregate<A, F>(mut self, init: A, mut f: F) -> Result<Summary<A>, crate::Error>
    where
        F: FnMut(A, Outcome<O>) -> A,
        O: Send + 'static,
    {
        let mut value = init;
        while let Some(outcome) = self.next().await {
            value = f(value, outcome);
        }
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        let info = self.shared.store.batch_get(self.batch).await?;
        Ok(Summary {
            value,
            state: info.state,
            stats: self.stats().await?,
        })
    }

    /// Hands credits back to the feeder: in chunks of a quarter of the
    /// window, so that it wakes a few times per window rather than per
    /// outcome; and, when the stream is about to wait (`waiting`), earlier
    /// if fewer than half the window's items are still in flight, so that
    /// the executor never runs dry (and never waits with credits held while
    /// nothing is in flight).
    fn release(&mut self, waiting: bool) {
        let Some((window, size)) = &self.window else {
            return;
        };
        if self.released == 0 {
            return;
        }
        let in_flight = size.saturating_sub(window.available_permits() + self.released);
        if self.released >= (size / 4).max(1) || (waiting && in_flight <= size / 2) {
            window.add_permits(self.released);
            self.released = 0;
        }
    }

    fn take_ready(&mut self) -> Option<Outcome<O>> {
        let reorder = self.reorder.as_mut()?;
        let outcome = reorder.waiting.remove(&reorder.next)?;
        reorder.next += 1;
        Some(outcome)
    }

    fn yielded(&mut self, outcome: Outcome<O>) -> Poll<Option<Outcome<O>>> {
        self.yielded += 1;
        self.released += 1;
        self.release(false);
        Poll::Ready(Some(outcome))
    }

    fn end(&mut self) -> Poll<Option<Outcome<O>>> {
        if !self.ended {
            self.ended = true;
            if let Some((window, _)) = &self.window {
                window.add_permits(std::mem::take(&mut self.released));
            }
            unbind(&self.shared, self.batch, &self.flow);
        }
        Poll::Ready(None)
    }
}

// Nothing in a run is pinned structurally: its outcomes are plain values.
impl<O> Unpin for Run<O> {}

impl<O> Stream for Run<O> {
    type Item = Outcome<O>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(outcome) = this.take_ready() {
                return this.yielded(outcome);
            }
            if let Some(outcome) = this.received.pop_front() {
                return this.yielded(outcome);
            }
            if this.total.is_some_and(|total| this.yielded >= total) {
                return this.end();
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(RunMsg::Outcomes(outcomes))) => match &mut this.reorder {
                    Some(reorder) => {
                        reorder
                            .waiting
                            .extend(outcomes.into_iter().map(|o| (o.index, o)));
                    }
                    None => this.received.extend(outcomes),
                },
                Poll::Ready(Some(RunMsg::Total(total))) => this.total = Some(total),
                Poll::Ready(Some(RunMsg::Failed(error))) => {
                    this.error = Some(error);
                    return this.end();
                }
                Poll::Ready(None) => return this.end(),
                Poll::Pending => {
                    this.release(true);
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<O> Drop for Run<O> {
    fn drop(&mut self) {
        if let Some(feeder) = &self.feeder {
            feeder.abort();
        }
        if let Some((window, _)) = &self.window {
            window.close();
        }
        if self.ended {
            return;
        }
        let (shared, batch, flow) = (self.shared.clone(), self.batch, self.flow.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = shared.cancel(batch, CancelMode::Forced).await;
                shared.router.lock().await.remove(Some(batch), &flow);
            });
        }
    }
}

fn unbind(shared: &Arc<Shared>, batch: BatchId, flow: &Arc<str>) {
    let (shared, flow) = (shared.clone(), flow.clone());
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            shared.router.lock().await.remove(Some(batch), &flow);
        });
    }
}

/// Appends items to an open batch as the window allows, then seals it.
pub(crate) async fn feed<T, O, St>(
    shared: Arc<Shared>,
    batch: BatchId,
    items: St,
    window: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<RunMsg<O>>,
) where
    T: Send + Sync + 'static,
    St: Stream<Item = T> + Send,
{
    use futures::FutureExt;
    let mut items = std::pin::pin!(items);
    let mut total = 0u64;
    let mut exhausted = false;
    while !exhausted {
        let Ok(permit) = window.acquire().await else {
            return; // the run was dropped
        };
        permit.forget();
        let mut granted = 1;
        let extra = window.available_permits().min(FEED_CHUNK - 1);
        if extra > 0
            && let Ok(more) = window.try_acquire_many(extra as u32)
        {
            more.forget();
            granted += extra;
        }
        let mut tasks = Vec::with_capacity(granted);
        match items.next().await {
            Some(item) => tasks.push(StoredTask::new(Arc::new(item) as AnyValue)),
            None => exhausted = true,
        }
        while !exhausted && tasks.len() < granted {
            match items.next().now_or_never() {
                Some(Some(item)) => tasks.push(StoredTask::new(Arc::new(item) as AnyValue)),
                Some(None) => exhausted = true,
                None => break,
            }
        }
        let unused = granted - tasks.len();
        if unused > 0 {
            window.add_permits(unused);
        }
        if tasks.is_empty() {
            continue;
        }
        let count = tasks.len() as u64;
        match shared
            .store
            .task_append(batch, tasks, shared.clock.now())
            .await
        {
            Ok(appended) if appended.stopped => break, // nothing was stored
            Ok(appended) => {
                total += count;
                shared.router.route(&appended.events, &[]).await;
            }
            Err(error) => {
                let _ = tx.send(RunMsg::Failed(error.into()));
                return;
            }
        }
    }
    match shared.store.batch_seal(batch, shared.clock.now()).await {
        Ok(events) => {
            shared.router.route(&events, &[]).await;
            let _ = tx.send(RunMsg::Total(total));
        }
        Err(error) => {
            let _ = tx.send(RunMsg::Failed(error.into()));
        }
    }
}
