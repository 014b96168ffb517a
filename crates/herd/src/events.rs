//! Live events: one per state transition.

use std::sync::Arc;

use herd_core::Event;
pub use herd_core::store::Events;
use tokio::sync::broadcast;

/// A subscription to every state transition in an executor, in order.
///
/// Events are kept for a bounded number of store operations; a subscriber that
/// falls further behind gets [`Lagged`] once and then continues with the
/// newest events, so a slow subscriber never slows the work down.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Events>,
    current: Events,
    pos: usize,
}

/// Events were dropped because the subscriber fell behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("subscriber fell behind: {0} groups of events were dropped")]
pub struct Lagged(pub u64);

impl Subscription {
    pub(crate) fn new(rx: broadcast::Receiver<Events>) -> Self {
        Subscription {
            rx,
            current: Default::default(),
            pos: 0,
        }
    }

    /// The next event; `None` once the executor is gone.
    pub async fn recv(&mut self) -> Option<Result<Event, Lagged>> {
        loop {
            if let Some(event) = self.current.get(self.pos) {
                self.pos += 1;
                return Some(Ok(event.clone()));
            }
            match self.rx.recv().await {
                Ok(events) => {
                    self.current = events;
                    self.pos = 0;
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(Err(Lagged(n))),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The events of the next store operation, as one shared group, without
    /// copying them: for subscribers that keep up with millions of events a
    /// second (metrics, progress). Events already taken one by one with
    /// [`Subscription::recv`] are not returned again.
    pub async fn recv_group(&mut self) -> Option<Result<Events, Lagged>> {
        if self.pos < self.current.len() {
            let rest = Arc::new(self.current[self.pos..].to_vec());
            self.pos = self.current.len();
            return Some(Ok(rest));
        }
        match self.rx.recv().await {
            Ok(events) => Some(Ok(events)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Err(Lagged(n))),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is ready now, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<Event, Lagged>> {
        loop {
            if let Some(event) = self.current.get(self.pos) {
                self.pos += 1;
                return Some(Ok(event.clone()));
            }
            match self.rx.try_recv() {
                Ok(events) => {
                    self.current = events;
                    self.pos = 0;
                }
                Err(broadcast::error::TryRecvError::Lagged(n)) => return Some(Err(Lagged(n))),
                Err(_) => return None,
            }
        }
    }

    /// The events as a stream.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Event, Lagged>> {
        futures::stream::unfold(
            self,
            |mut sub| async move { sub.recv().await.map(|e| (e, sub)) },
        )
    }
}
