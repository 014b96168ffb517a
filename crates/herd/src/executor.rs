//! The executor: configuration, submission, and control of batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use herd_core::scheduler::{Router, SlotPool, WorkerConfig, WorkerHandle, spawn_worker};
use herd_core::store::{CancelMode, MemoryStore, Store};
use herd_core::{
    BatchId, BatchInfo, BatchSpec, BatchStats, ChunkPolicy, Clock, ErrorPolicy, InvalidField,
    Priority, RetryPolicy, SubmitError, TaskId, TokioClock, shuffle_seeded,
};
use tokio::sync::mpsc;

use crate::Error;
use crate::chunk::{ChunkRun, chunk_handler};
use crate::context::AnyValue;
use crate::events::Subscription;
use crate::run::{Run, input};
use crate::runner::{FnRunner, Handler};
use crate::task::Task;

/// The store behind an executor: in memory, payloads and outputs type-erased
/// so that batches of different item types share one scheduler.
pub(crate) type Mem = MemoryStore<AnyValue, AnyValue>;

/// Runs batches of async work with bounded concurrency, priorities, retries,
/// timeouts, deadlines, error policies and dependencies.
///
/// One executor owns one worker with `concurrency` slots, shared by all its
/// batches: batches of higher priority go first, batches of equal priority
/// share the slots fairly. Clone it freely; it stops when the last clone and
/// the last [`Run`] are dropped.
#[derive(Clone)]
pub struct Executor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("slots", &self.shared.slots)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) store: Arc<Mem>,
    pub(crate) router: Arc<Router<Mem>>,
    pub(crate) clock: Arc<dyn Clock>,
    workers: Vec<WorkerHandle>,
    defaults: Defaults,
    slots: u32,
    next_flow: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.abort();
        }
    }
}

#[derive(Clone, Debug)]
struct Defaults {
    concurrency: u32,
    priority: Priority,
    retry: RetryPolicy,
    timeout: Option<Duration>,
    error_policy: ErrorPolicy,
}

/// Configures an [`Executor`].
#[derive(Clone, Debug)]
pub struct ExecutorBuilder {
    slots: usize,
    defaults: Defaults,
    lease: Duration,
    spawn: bool,
    workers: Option<usize>,
}

impl Default for ExecutorBuilder {
    fn default() -> Self {
        ExecutorBuilder {
            slots: std::thread::available_parallelism().map_or(4, |n| n.get()),
            defaults: Defaults {
                concurrency: 0,
                priority: Priority::NORMAL,
                retry: RetryPolicy::none(),
                timeout: None,
                error_policy: ErrorPolicy::CONTINUE,
            },
            lease: Duration::from_secs(30),
            spawn: false,
            workers: None,
        }
    }
}

impl ExecutorBuilder {
    /// Tasks (cost units) running at once across all batches; default: the
    /// number of CPUs. Also the default concurrency of each batch.
    pub fn concurrency(mut self, slots: usize) -> Self {
        self.slots = slots;
        self
    }

    /// The default retry policy of batches.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.defaults.retry = retry;
        self
    }

    /// The default per-attempt timeout of batches.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.defaults.timeout = Some(timeout);
        self
    }

    /// The default error policy of batches.
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.defaults.error_policy = policy;
        self
    }

    /// The default priority of batches.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.defaults.priority = priority;
        self
    }

    /// How long a claimed task may go without a heartbeat before it counts as
    /// lost; renewed every third of it. Default 30 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Runs every attempt as its own tokio task, so that CPU-heavy handlers
    /// run in parallel on every worker thread of the runtime.
    ///
    /// By default attempts are polled by the executor's worker task itself, as
    /// `buffer_unordered` polls its futures: no spawn and no hand-off between
    /// threads per task, which is what async, I/O-bound handlers want. A
    /// handler that computes for long between awaits then holds up the
    /// others; turn this on, or move such work to `spawn_blocking`.
    pub fn spawn_tasks(mut self, spawn: bool) -> Self {
        self.spawn = spawn;
        self
    }

    /// Worker loops sharing the slots (default 1, at most one per slot).
    /// Each claims, polls and reports its share of the tasks, so that
    /// handlers that compute between awaits are spread over more threads.
    /// For handlers that mostly wait, one worker is faster: more contend for
    /// the store (measured: 1M no-op tasks run at about 0.8× with two).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Checks the configuration and starts the executor's worker.
    ///
    /// Must be called inside a tokio runtime.
    pub fn build(self) -> Result<Executor, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let slots = u32::try_from(self.slots)
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                InvalidField::new(
                    "concurrency",
                    self.slots,
                    "must be between 1 and 4294967295",
                )
            })?;
        let mut defaults = self.defaults;
        if defaults.concurrency == 0 {
            defaults.concurrency = slots;
        }
        defaults.retry.validate()?;
        defaults.error_policy.validate()?;
        if defaults.timeout == Some(Duration::ZERO) {
            return Err(InvalidField::new("timeout", "0s", "must be longer than zero").into());
        }
        if self.lease < Duration::from_millis(30) {
            return Err(InvalidField::new(
                "lease",
                format!("{:?}", self.lease),
                "must be at least 30ms",
            )
            .into());
        }
        let store = Arc::new(Mem::new());
        let router = Arc::new(Router::new());
        // Tokio's clock, so that an executor under paused time (tests) sees
        // retries, timeouts and deadlines on the paused clock.
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
        let workers = match self.workers {
            Some(0) => return Err(InvalidField::new("workers", 0, "must be at least 1").into()),
            Some(n) => n,
            None => 1,
        };
        let workers = u32::try_from(workers).unwrap_or(u32::MAX).min(slots);
        let pool = Arc::new(SlotPool::new(slots, workers));
        let _guard = runtime.enter();
        let workers = (0..workers)
            .map(|_| {
                spawn_worker(
                    store.clone(),
                    router.clone(),
                    clock.clone(),
                    WorkerConfig {
                        slots,
                        lease: self.lease,
                        heartbeat: self.lease / 3,
                        host: "localhost".into(),
                        spawn_attempts: self.spawn,
                        pool: Some(pool.clone()),
                        batch: None,
                        // In memory a report and a claim cost no wait
                        // worth hiding.
                        ahead: 0,
                        hold_for: WorkerConfig::HOLD_FOR,
                    },
                )
            })
            .collect();
        Ok(Executor {
            shared: Arc::new(Shared {
                store,
                router,
                clock,
                workers,
                defaults,
                slots,
                next_flow: AtomicU64::new(1),
            }),
        })
    }
}

impl Executor {
    /// A builder with defaults: as many slots as CPUs, no retries, no timeout,
    /// error policy `continue`.
    pub fn builder() -> ExecutorBuilder {
        ExecutorBuilder::default()
    }

    /// Options for one batch, starting from the executor's defaults.
    pub fn batch(&self) -> BatchBuilder<'_> {
        let d = &self.shared.defaults;
        BatchBuilder {
            executor: self,
            name: None,
            concurrency: d.concurrency as usize,
            priority: d.priority,
            retry: d.retry.clone(),
            timeout: d.timeout,
            deadline: None,
            error_policy: d.error_policy,
            paused: false,
            ordered: false,
            shuffle: None,
            max_records: None,
            window: None,
        }
    }

    /// Runs `handler` over every item with the executor's defaults; see
    /// [`BatchBuilder::run`].
    pub async fn run<T, O, H, I>(&self, items: I, handler: H) -> Result<Run<O>, Error>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
        T: Clone + Send + Sync + 'static,
        O: Send + 'static,
        H: Handler<T, O>,
    {
        self.batch().run(items, handler).await
    }

    /// Subscribes to every state transition of every batch from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription::new(self.shared.store.events())
    }

    /// A batch's state and counts.
    pub async fn batch_info(&self, batch: BatchId) -> Result<BatchInfo, Error> {
        Ok(self.shared.store.batch_get(batch).await?)
    }

    /// A batch's figures: counts per state, retries, duration percentiles,
    /// throughput, wall time.
    pub async fn stats(&self, batch: BatchId) -> Result<BatchStats, Error> {
        self.shared.stats(batch).await
    }

    /// Cancels a batch: waiting tasks at once; running ones see
    /// [`TaskContext::cancelled`](crate::TaskContext::cancelled) complete
    /// (`Graceful`) or are dropped (`Forced`).
    pub async fn cancel(&self, batch: BatchId, mode: CancelMode) -> Result<(), Error> {
        self.shared.cancel(batch, mode).await
    }

    /// Cancels one task (see [`Executor::cancel`]); its dependents are skipped.
    pub async fn cancel_task(&self, task: TaskId, mode: CancelMode) -> Result<(), Error> {
        let events = self
            .shared
            .store
            .task_cancel(task, mode, self.shared.clock.now())
            .await?;
        self.shared.router.route(&events, &[]).await;
        Ok(())
    }

    /// Stops a batch from starting new tasks; running ones go on.
    pub async fn pause(&self, batch: BatchId) -> Result<(), Error> {
        self.shared.pause(batch).await
    }

    /// Lets a paused batch start tasks again.
    pub async fn resume(&self, batch: BatchId) -> Result<(), Error> {
        self.shared.resume(batch).await
    }

    fn next_flow(&self) -> Arc<str> {
        let n = self.shared.next_flow.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("run-{n}"))
    }
}

impl Shared {
    pub(crate) async fn stats(&self, batch: BatchId) -> Result<BatchStats, Error> {
        Ok(self.store.batch_stats(batch, self.clock.now()).await?)
    }

    pub(crate) async fn cancel(&self, batch: BatchId, mode: CancelMode) -> Result<(), Error> {
        let events = self
            .store
            .batch_cancel(batch, mode, self.clock.now())
            .await?;
        self.router.route(&events, &[]).await;
        Ok(())
    }

    pub(crate) async fn pause(&self, batch: BatchId) -> Result<(), Error> {
        self.store.batch_pause(batch, self.clock.now()).await?;
        Ok(())
    }

    pub(crate) async fn resume(&self, batch: BatchId) -> Result<(), Error> {
        self.store.batch_resume(batch, self.clock.now()).await?;
        Ok(())
    }
}

/// Options for one batch. Fields not set take the executor's defaults.
#[derive(Debug)]
#[must_use = "a batch builder does nothing until `run`, `run_stream`, `submit` or `run_chunks`"]
pub struct BatchBuilder<'a> {
    executor: &'a Executor,
    name: Option<String>,
    concurrency: usize,
    priority: Priority,
    retry: RetryPolicy,
    timeout: Option<Duration>,
    deadline: Option<Duration>,
    error_policy: ErrorPolicy,
    paused: bool,
    ordered: bool,
    shuffle: Option<u64>,
    max_records: Option<usize>,
    window: Option<usize>,
}

impl BatchBuilder<'_> {
    /// A name for people.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Cost units of this batch running at once (at most the executor's).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// The batch's priority, and the default of its tasks.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// The retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The per-attempt timeout: the attempt's future is dropped when it passes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The batch must end within `deadline` of its submission; what remains
    /// then is cancelled with reason `deadline` and the batch fails.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The error policy.
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.error_policy = policy;
        self
    }

    /// Submits the batch paused: nothing starts until it is resumed.
    pub fn paused(mut self) -> Self {
        self.paused = true;
        self
    }

    /// Yields outcomes in input order instead of completion order. The
    /// window still bounds memory: a slow early item holds later outcomes back
    /// and, once the window is full, stops further items from starting.
    pub fn ordered(mut self) -> Self {
        self.ordered = true;
        self
    }

    /// Runs the items in an order shuffled by `seed` (reproducible). Reads
    /// the whole input first.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle = Some(seed);
        self
    }

    /// Runs at most `max` items (after shuffling).
    pub fn max_records(mut self, max: usize) -> Self {
        self.max_records = Some(max);
        self
    }

    /// Items held at once between input and output (default: four times the
    /// concurrency, plus 256).
    pub fn window(mut self, window: usize) -> Self {
        self.window = Some(window);
        self
    }

    fn spec(&self, flow: Arc<str>, open: bool) -> Result<BatchSpec<AnyValue>, Error> {
        let concurrency = u32::try_from(self.concurrency)
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| {
                InvalidField::new("concurrency", self.concurrency, "must be at least 1")
            })?;
        let mut spec = BatchSpec::new(flow);
        spec.name = self.name.clone();
        spec.priority = self.priority;
        spec.concurrency = concurrency;
        spec.policy.retry = self.retry.clone();
        spec.policy.timeout = self.timeout;
        spec.policy.deadline = self
            .deadline
            .map(|d| self.executor.shared.clock.now().plus(d));
        spec.error_policy = self.error_policy;
        spec.paused = self.paused;
        spec.open = open;
        if self.window == Some(0) {
            return Err(InvalidField::new("window", 0, "must be at least 1").into());
        }
        Ok(spec)
    }

    /// Runs `handler` over every item, streaming outcomes.
    ///
    /// Items are read lazily as the window allows (unless `shuffle` is set).
    pub async fn run<T, O, H, I>(self, items: I, handler: H) -> Result<Run<O>, Error>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
        T: Clone + Send + Sync + 'static,
        O: Send + 'static,
        H: Handler<T, O>,
    {
        match self.shuffle {
            Some(seed) => {
                let mut items: Vec<T> = items.into_iter().collect();
                shuffle_seeded(&mut items, seed);
                items.truncate(self.max_records.unwrap_or(usize::MAX));
                self.run_stream(futures::stream::iter(items), handler).await
            }
            None => {
                let max = self.max_records.unwrap_or(usize::MAX);
                self.run_stream(futures::stream::iter(items.into_iter().take(max)), handler)
                    .await
            }
        }
    }

    /// Runs `handler` over every item of an async stream, streaming outcomes.
    /// `shuffle` does not apply; `max_records` does.
    pub async fn run_stream<T, O, H, St>(self, items: St, handler: H) -> Result<Run<O>, Error>
    where
        St: Stream<Item = T> + Send + 'static,
        T: Clone + Send + Sync + 'static,
        O: Send + 'static,
        H: Handler<T, O>,
    {
        use futures::StreamExt;
        let shared = self.executor.shared.clone();
        let flow = self.executor.next_flow();
        let spec = self.spec(flow.clone(), true)?;
        spec.validate(Some(shared.slots))?;
        let window = self
            .window
            .unwrap_or(self.concurrency.saturating_mul(4).saturating_add(256));
        let (tx, rx) = mpsc::unbounded_channel();
        let runner = Arc::new(FnRunner::<T, O, H>::new(handler, tx, None));
        let batch = insert_bound(&shared, spec, flow.clone(), runner).await?.0;
        let max = self.max_records.unwrap_or(usize::MAX);
        Run::open(
            shared,
            batch,
            flow,
            rx,
            input(items.take(max)),
            window,
            self.ordered,
        )
        .await
    }

    /// Submits a whole set of tasks at once, with keys, per-task priorities
    /// and costs, and dependencies (`after`), then streams their outcomes.
    ///
    /// A dependent starts once its upstream tasks satisfy its rule and reads
    /// their outputs with [`TaskContext::upstream`](crate::TaskContext::upstream).
    /// A cycle or an unknown key is rejected here, and nothing is stored.
    pub async fn submit<T, O, H>(self, tasks: Vec<Task<T>>, handler: H) -> Result<Run<O>, Error>
    where
        T: Clone + Send + Sync + 'static,
        O: Clone + Send + Sync + 'static,
        H: Handler<T, O>,
    {
        let shared = self.executor.shared.clone();
        let flow = self.executor.next_flow();
        let mut spec = self.spec(flow.clone(), false)?;
        spec.tasks = tasks.into_iter().map(Task::into_spec).collect();
        spec.select(self.shuffle, self.max_records);
        spec.validate(Some(shared.slots))?;
        let total = spec.tasks.len() as u64;
        let (tx, rx) = mpsc::unbounded_channel();
        let keep: fn(&O) -> AnyValue = |o| Arc::new(o.clone());
        let runner = Arc::new(FnRunner::<T, O, H>::new(handler, tx, Some(keep)));
        let batch = insert_bound(&shared, spec, flow.clone(), runner).await?.0;
        Ok(Run::closed(shared, batch, flow, rx, total, self.ordered))
    }

    /// Runs `handler` over chunks of `policy.size` items; the handler returns
    /// one result per item. A chunk whose failed share exceeds the policy's
    /// threshold fails and is retried (whole) under the retry policy.
    pub async fn run_chunks<T, O, H, Fut, I>(
        self,
        items: I,
        policy: ChunkPolicy,
        handler: H,
    ) -> Result<ChunkRun<O>, Error>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
        T: Clone + Send + Sync + 'static,
        O: Send + Sync + 'static,
        H: Fn(Vec<T>, crate::TaskContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<Result<O, crate::TaskError>>> + Send + 'static,
    {
        policy.validate()?;
        let size = policy.size;
        let mut items = items.into_iter();
        let chunks = std::iter::from_fn(move || {
            let chunk: Vec<T> = items.by_ref().take(size).collect();
            (!chunk.is_empty()).then_some(chunk)
        });
        let run = self.run(chunks, chunk_handler(policy, handler)).await?;
        Ok(ChunkRun::new(run, size))
    }
}

/// Inserts a batch with its runner registered under `flow` and bound to the
/// new batch before any of its tasks can end.
async fn insert_bound(
    shared: &Arc<Shared>,
    spec: BatchSpec<AnyValue>,
    flow: Arc<str>,
    runner: Arc<dyn herd_core::scheduler::Runner<Mem>>,
) -> Result<(BatchId, Vec<TaskId>), Error> {
    let mut routes = shared.router.lock().await;
    routes.add_flow(flow.clone(), runner.clone());
    match shared.store.batch_insert(spec, shared.clock.now()).await {
        Ok(inserted) => {
            routes.bind(inserted.batch, runner);
            drop(routes);
            shared.router.route(&inserted.events, &[]).await;
            Ok((inserted.batch, inserted.tasks))
        }
        Err(error) => {
            routes.remove(None, &flow);
            Err(error.into())
        }
    }
}

impl From<SubmitError> for Error {
    fn from(error: SubmitError) -> Self {
        Error::Invalid(error)
    }
}

impl From<InvalidField> for Error {
    fn from(error: InvalidField) -> Self {
        Error::Invalid(SubmitError::Invalid(error))
    }
}

impl From<herd_core::store::StoreError> for Error {
    fn from(error: herd_core::store::StoreError) -> Self {
        match error {
            herd_core::store::StoreError::Submit(e) => Error::Invalid(e),
            other => Error::Store(other),
        }
    }
}
