//! Helpers shared by the topic modules.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use herd::{Executor, Outcome, Run, TaskContext, TaskError};
use tokio::time::Instant;

/// An executor with `slots` slots and otherwise default settings.
pub fn executor(slots: usize) -> Executor {
    Executor::builder()
        .concurrency(slots)
        .build()
        .expect("valid executor")
}

/// Collects every outcome, sorted by index.
pub async fn outcomes<O>(mut run: Run<O>) -> Vec<Outcome<O>> {
    let mut all = Vec::new();
    while let Some(outcome) = run.next().await {
        all.push(outcome);
    }
    all.sort_by_key(|o| o.index);
    all
}

/// Counts what is running now and the most that ever ran at once.
#[derive(Clone, Default)]
pub struct Gauge {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl Gauge {
    pub fn enter(&self, amount: usize) -> GaugeGuard {
        let now = self.now.fetch_add(amount, Ordering::SeqCst) + amount;
        self.max.fetch_max(now, Ordering::SeqCst);
        GaugeGuard {
            gauge: self.clone(),
            amount,
        }
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

pub struct GaugeGuard {
    gauge: Gauge,
    amount: usize,
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.gauge.now.fetch_sub(self.amount, Ordering::SeqCst);
    }
}

/// Records (label, instant) pairs in the order they happen.
#[derive(Clone, Default)]
pub struct Log<T> {
    entries: Arc<Mutex<Vec<(T, Instant)>>>,
}

impl<T: Clone> Log<T> {
    pub fn push(&self, entry: T) {
        self.entries.lock().unwrap().push((entry, Instant::now()));
    }

    pub fn entries(&self) -> Vec<(T, Instant)> {
        self.entries.lock().unwrap().clone()
    }

    pub fn labels(&self) -> Vec<T> {
        self.entries().into_iter().map(|(t, _)| t).collect()
    }
}

/// Sets a flag when dropped: proves that a future was dropped, not finished.
pub struct DropFlag(pub Arc<AtomicUsize>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A handler that waits a minute and counts in `dropped` when its future is
/// dropped: it ends only by being cut off.
pub fn waits_a_minute(
    dropped: &Arc<AtomicUsize>,
) -> impl Fn(u32, TaskContext) -> BoxFuture<'static, Result<(), TaskError>> + Send + Sync + 'static
{
    let dropped = dropped.clone();
    move |_, _| {
        let flag = DropFlag(dropped.clone());
        Box::pin(async move {
            let _flag = flag;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        })
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
