//! Cancellation of one attempt: graceful (the handler is told) or forced
//! (the attempt's future is dropped).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::sync::Notify;

const RUNNING: u8 = 0;
const GRACEFUL: u8 = 1;
const FORCED: u8 = 2;

/// The cancellation state of one attempt, shared by the worker (which sets
/// it) and the attempt (which watches it). One allocation per attempt.
#[derive(Debug, Default)]
struct Shared {
    state: AtomicU8,
    graceful: Notify,
    forced: AtomicWaker,
}

/// A handle on an attempt's cancellation, as the work sees it.
#[derive(Debug, Clone, Default)]
pub struct Cancellation {
    shared: Arc<Shared>,
}

impl Cancellation {
    /// A new, uncancelled attempt.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the attempt was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) != RUNNING
    }

    /// Completes once the attempt is asked to stop.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.shared.graceful.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// Asks the work to stop: [`Cancellation::cancelled`] completes.
    pub fn cancel(&self) {
        if self
            .shared
            .state
            .compare_exchange(RUNNING, GRACEFUL, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.shared.graceful.notify_waiters();
        }
    }

    /// Stops the attempt: its future is dropped at its next poll.
    pub(crate) fn force(&self) {
        self.shared.state.store(FORCED, Ordering::Release);
        self.shared.graceful.notify_waiters();
        self.shared.forced.wake();
    }

    /// Completes once the attempt is forced to stop.
    pub(crate) fn forced(&self) -> Forced<'_> {
        Forced {
            shared: &self.shared,
        }
    }
}

/// See [`Cancellation::forced`].
pub(crate) struct Forced<'a> {
    shared: &'a Shared,
}

impl Future for Forced<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.state.load(Ordering::Acquire) == FORCED {
            return Poll::Ready(());
        }
        self.shared.forced.register(cx.waker());
        if self.shared.state.load(Ordering::Acquire) == FORCED {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn graceful_then_forced() {
        let c = Cancellation::new();
        assert!(!c.is_cancelled());
        assert!(c.cancelled().now_or_never().is_none());
        assert!(c.forced().now_or_never().is_none());
        c.cancel();
        assert!(c.is_cancelled());
        assert!(c.cancelled().now_or_never().is_some());
        assert!(
            c.forced().now_or_never().is_none(),
            "graceful is not forced"
        );
        c.force();
        assert!(c.forced().now_or_never().is_some());
    }

    #[tokio::test]
    async fn a_waiting_handler_wakes_on_cancel() {
        let c = Cancellation::new();
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.cancelled().await }
        });
        tokio::task::yield_now().await;
        c.cancel();
        waiter.await.unwrap();
    }
}
