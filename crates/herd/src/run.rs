//! A running batch, as a stream of outcomes.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use herd_core::store::{Appended, CancelMode, Events, Store, StoreError};
use herd_core::{BatchId, BatchState, BatchStats, TaskSpec as StoredTask};
use tokio::sync::mpsc;

use crate::context::AnyValue;
use crate::executor::Shared;
use crate::outcome::Outcome;
use crate::runner::RunMsg;

/// Items appended to the store per round trip, at most.
const FEED_CHUNK: usize = 256;

/// A run's input, its items already in the store's payload type.
pub(crate) type Input = Pin<Box<dyn Stream<Item = AnyValue> + Send>>;

type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// A batch being run: a [`Stream`] of one [`Outcome`] per task, in completion
/// order (or input order, with `ordered()`).
///
/// The first window of items (by default four times the concurrency, plus
/// 256) is submitted when the run starts; after that the stream submits more
/// as it yields outcomes, a quarter of the window at a time. So at most a
/// window of items is held anywhere at once, however long the input is, and
/// a consumer that stops reading stops the input.
///
/// Dropping a `Run` before it ends cancels its batch (running attempts are
/// dropped), as dropping a `JoinSet` aborts its tasks.
pub struct Run<O> {
    shared: Arc<Shared>,
    batch: BatchId,
    flow: Arc<str>,
    rx: mpsc::UnboundedReceiver<RunMsg<O>>,
    /// The input still to submit (open batches only).
    feed: Option<Feed>,
    /// Tasks in the batch, once known.
    total: Option<u64>,
    yielded: u64,
    reorder: Option<Reorder<O>>,
    /// Outcomes received and not yet yielded (completion order).
    received: VecDeque<Outcome<O>>,
    error: Option<crate::Error>,
    ended: bool,
}

struct Reorder<O> {
    next: u64,
    waiting: BTreeMap<u64, Outcome<O>>,
}

/// Submits a run's input to its open batch, a window at a time.
struct Feed {
    input: Input,
    exhausted: bool,
    window: u64,
    /// Tasks stored so far.
    appended: u64,
    /// An append in flight, and how many tasks it carries.
    appending: Option<(u64, StoreFuture<Appended>)>,
    sealing: Option<StoreFuture<Events>>,
}

/// Where a feed stands after being advanced.
enum Fed {
    /// Waiting for outcomes (the window is full) or for the input.
    Idle,
    /// A store call is in flight; the context will be woken when it ends.
    Busy,
    /// Everything was submitted and the batch sealed: this many tasks.
    Done(u64),
}

impl Feed {
    pub(crate) fn new(input: Input, window: usize) -> Self {
        Feed {
            input,
            exhausted: false,
            window: window.max(1) as u64,
            appended: 0,
            appending: None,
            sealing: None,
        }
    }

    /// Submits what the window allows now, without waiting.
    fn advance(
        &mut self,
        shared: &Arc<Shared>,
        batch: BatchId,
        yielded: u64,
        cx: &mut Context<'_>,
    ) -> Result<Fed, StoreError> {
        loop {
            if let Some((count, append)) = &mut self.appending {
                match append.as_mut().poll(cx) {
                    Poll::Pending => return Ok(Fed::Busy),
                    // A stopped batch stores nothing: read no further.
                    Poll::Ready(Ok(appended)) if appended.stopped => self.exhausted = true,
                    Poll::Ready(Ok(_)) => self.appended += *count,
                    Poll::Ready(Err(error)) => return Err(error),
                }
                self.appending = None;
            }
            if let Some(seal) = &mut self.sealing {
                return match seal.as_mut().poll(cx) {
                    Poll::Pending => Ok(Fed::Busy),
                    Poll::Ready(Ok(_)) => Ok(Fed::Done(self.appended)),
                    Poll::Ready(Err(error)) => Err(error),
                };
            }
            if self.exhausted {
                let (store, now) = (shared.store.clone(), shared.clock.now());
                self.sealing = Some(Box::pin(async move { store.batch_seal(batch, now).await }));
                continue;
            }
            let in_flight = self.appended - yielded;
            let room = self.window.saturating_sub(in_flight);
            // Top up a quarter window at a time, or whenever nothing is in flight.
            if room == 0 || (room < (self.window / 4).max(1) && in_flight > 0) {
                return Ok(Fed::Idle);
            }
            let want = room.min(FEED_CHUNK as u64) as usize;
            let mut tasks = Vec::with_capacity(want);
            while tasks.len() < want {
                match self.input.as_mut().poll_next(cx) {
                    Poll::Ready(Some(item)) => tasks.push(StoredTask::new(item)),
                    Poll::Ready(None) => {
                        self.exhausted = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if tasks.is_empty() {
                if self.exhausted {
                    continue;
                }
                return Ok(Fed::Idle);
            }
            let count = tasks.len() as u64;
            let (store, now) = (shared.store.clone(), shared.clock.now());
            self.appending = Some((
                count,
                Box::pin(async move { store.task_append(batch, tasks, now).await }),
            ));
        }
    }
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
    /// A run of a closed batch of `total` tasks.
    pub(crate) fn closed(
        shared: Arc<Shared>,
        batch: BatchId,
        flow: Arc<str>,
        rx: mpsc::UnboundedReceiver<RunMsg<O>>,
        total: u64,
        ordered: bool,
    ) -> Self {
        Self::build(shared, batch, flow, rx, None, Some(total), ordered)
    }

    /// A run of an open batch fed from `input`; submits the first window
    /// before returning.
    pub(crate) async fn open(
        shared: Arc<Shared>,
        batch: BatchId,
        flow: Arc<str>,
        rx: mpsc::UnboundedReceiver<RunMsg<O>>,
        input: Input,
        window: usize,
        ordered: bool,
    ) -> Result<Self, crate::Error> {
        let mut run = Self::build(
            shared,
            batch,
            flow,
            rx,
            Some(Feed::new(input, window)),
            None,
            ordered,
        );
        std::future::poll_fn(|cx| match run.advance_feed(cx) {
            Ok(Fed::Busy) => Poll::Pending,
            Ok(Fed::Idle | Fed::Done(_)) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(error)),
        })
        .await?;
        Ok(run)
    }

    fn build(
        shared: Arc<Shared>,
        batch: BatchId,
        flow: Arc<str>,
        rx: mpsc::UnboundedReceiver<RunMsg<O>>,
        feed: Option<Feed>,
        total: Option<u64>,
        ordered: bool,
    ) -> Self {
        Run {
            shared,
            batch,
            flow,
            rx,
            feed,
            total,
            yielded: 0,
            reorder: ordered.then(|| Reorder {
                next: 0,
                waiting: BTreeMap::new(),
            }),
            received: VecDeque::new(),
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

    fn advance_feed(&mut self, cx: &mut Context<'_>) -> Result<Fed, crate::Error> {
        let Some(feed) = &mut self.feed else {
            return Ok(Fed::Idle);
        };
        let fed = feed.advance(&self.shared, self.batch, self.yielded, cx)?;
        if let Fed::Done(total) = fed {
            self.total = Some(total);
            self.feed = None;
        }
        Ok(fed)
    }

    fn take_ready(&mut self) -> Option<Outcome<O>> {
        let reorder = self.reorder.as_mut()?;
        let outcome = reorder.waiting.remove(&reorder.next)?;
        reorder.next += 1;
        Some(outcome)
    }

    fn end(&mut self) -> Poll<Option<Outcome<O>>> {
        if !self.ended {
            self.ended = true;
            let (shared, flow, batch) = (self.shared.clone(), self.flow.clone(), self.batch);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    shared.router.lock().await.remove(Some(batch), &flow);
                });
            }
        }
        Poll::Ready(None)
    }
}

// Nothing in a run is pinned structurally: its outcomes are plain values, its
// futures boxed.
impl<O> Unpin for Run<O> {}

impl<O> Stream for Run<O> {
    type Item = Outcome<O>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Err(error) = this.advance_feed(cx) {
                this.error = Some(error);
                return this.end();
            }
            if let Some(outcome) = this.take_ready().or_else(|| this.received.pop_front()) {
                this.yielded += 1;
                return Poll::Ready(Some(outcome));
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
                Poll::Ready(None) => return this.end(),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<O> Drop for Run<O> {
    fn drop(&mut self) {
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

/// Erases a run's items to the store's payload type.
pub(crate) fn input<T, St>(items: St) -> Input
where
    T: Send + Sync + 'static,
    St: Stream<Item = T> + Send + 'static,
{
    Box::pin(items.map(|item| Arc::new(item) as AnyValue))
}
