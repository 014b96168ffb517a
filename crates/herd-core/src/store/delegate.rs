//! [`delegate_store!`](crate::delegate_store): the methods of a [`Store`](super::Store)
//! that a wrapper passes through to the store it wraps.

/// Writes, inside an `impl Store for Wrapper`, the methods named that pass
/// each call through to the store in the field named, unchanged: a wrapper
/// (a test double that fails some calls, a store that counts them) writes
/// only the methods it changes.
///
/// ```
/// use herd_core::store::{Inserted, MemoryStore, Store, StoreError};
/// use herd_core::{BatchSpec, Timestamp};
/// use std::sync::atomic::{AtomicU32, Ordering};
///
/// /// A store that counts the batches submitted through it.
/// struct Counted<S> {
///     inner: S,
///     batches: AtomicU32,
/// }
///
/// impl<S: Store> Store for Counted<S> {
///     type Payload = S::Payload;
///     type Output = S::Output;
///
///     async fn batch_insert(
///         &self,
///         spec: BatchSpec<S::Payload>,
///         now: Timestamp,
///     ) -> Result<Inserted, StoreError> {
///         self.batches.fetch_add(1, Ordering::Relaxed);
///         self.inner.batch_insert(spec, now).await
///     }
///
///     herd_core::delegate_store!(inner:
///         worker_register, task_append, batch_seal, task_claim, lease_renew,
///         task_complete, task_complete_and_claim, task_cancel, batch_cancel,
///         batch_pause, batch_resume, batch_rerun, task_rescue, worker_expire,
///         batch_expire, batch_get, batch_stats, task_get, batch_list, task_list,
///         task_attempts, worker_list, event_list, batch_purge, events, signals,
///         retains_finished_tasks);
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = Counted { inner: MemoryStore::<String, String>::new(), batches: AtomicU32::new(0) };
/// let mut spec = BatchSpec::new("flow");
/// spec.tasks.push(herd_core::TaskSpec::new("task".to_string()));
/// let inserted = store.batch_insert(spec, Timestamp(0)).await.unwrap();
/// assert_eq!(store.batches.load(Ordering::Relaxed), 1);
/// // Passed through to the memory store.
/// assert_eq!(store.batch_get(inserted.batch).await.unwrap().counts.total(), 1);
/// # });
/// /// ```
#[macro_export]
macro_rules! delegate_store {
    ($field:ident: $($method:ident),+ $(,)?) => {
        $($crate::delegate_store!(@method $field $method);)+
    };
    (@method $f:ident worker_register) => {
        async fn worker_register(
            &self,
            host: &str,
            pid: u32,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::WorkerId, $crate::store::StoreError> {
            self.$f.worker_register(host, pid, now).await
        }
    };
    (@method $f:ident batch_insert) => {
        async fn batch_insert(
            &self,
            spec: $crate::BatchSpec<Self::Payload>,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::store::Inserted, $crate::store::StoreError> {
            self.$f.batch_insert(spec, now).await
        }
    };
    (@method $f:ident task_append) => {
        async fn task_append(
            &self,
            batch: $crate::BatchId,
            tasks: ::std::vec::Vec<$crate::TaskSpec<Self::Payload>>,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::store::Appended, $crate::store::StoreError> {
            self.$f.task_append(batch, tasks, now).await
        }
    };
    (@method $f:ident batch_seal) => {
        async fn batch_seal(
            &self,
            batch: $crate::BatchId,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::store::Events, $crate::store::StoreError> {
            self.$f.batch_seal(batch, now).await
        }
    };
    (@method $f:ident task_claim) => {
        async fn task_claim(
            &self,
            request: $crate::store::ClaimRequest,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<
            $crate::store::Claim<Self::Payload, Self::Output>,
            $crate::store::StoreError,
        > {
            self.$f.task_claim(request, now).await
        }
    };
    (@method $f:ident lease_renew) => {
        async fn lease_renew(
            &self,
            worker: $crate::WorkerId,
            running: ::std::vec::Vec<$crate::store::Fence>,
            lease_until: $crate::Timestamp,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::store::Renewal, $crate::store::StoreError> {
            self.$f.lease_renew(worker, running, lease_until, now).await
        }
    };
    (@method $f:ident task_complete) => {
        async fn task_complete(
            &self,
            worker: $crate::WorkerId,
            completions: ::std::vec::Vec<$crate::store::Completion<Self::Output>>,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::store::Applied, $crate::store::StoreError> {
            self.$f.task_complete(worker, completions, now).await
        }
    };
    (@method $f:ident task_complete_and_claim) => {
        async fn task_complete_and_claim(
            &self,
            worker: $crate::WorkerId,
            completions: ::std::vec::Vec<$crate::store::Completion<Self::Output>>,
            request: $crate::store::ClaimRequest,
            now: $crate::Timestamp,
        ) -> $crate::store::CompleteAndClaim<Self::Payload, Self::Output> {
            self.$f
                .task_complete_and_claim(worker, completions, request, now)
                .await
        }
    };
    (@method $f:ident task_cancel) => {
        async fn task_cancel(
            &self,
            task: $crate::TaskId,
            mode: $crate::store::CancelMode,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::store::Events, $crate::store::StoreError> {
            self.$f.task_cancel(task, mode, now).await
        }
    };
    (@method $f:ident batch_cancel) => {
        async fn batch_cancel(
            &self,
            batch: $crate::BatchId,
            mode: $crate::store::CancelMode,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::store::Events, $crate::store::StoreError> {
            self.$f.batch_cancel(batch, mode, now).await
        }
    };
    (@method $f:ident batch_pause) => {
        async fn batch_pause(
            &self,
            batch: $crate::BatchId,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::store::Events, $crate::store::StoreError> {
            self.$f.batch_pause(batch, now).await
        }
    };
    (@method $f:ident batch_resume) => {
        async fn batch_resume(
            &self,
            batch: $crate::BatchId,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::store::Events, $crate::store::StoreError> {
            self.$f.batch_resume(batch, now).await
        }
    };
    (@method $f:ident batch_rerun) => {
        async fn batch_rerun(
            &self,
            batch: $crate::BatchId,
            downstream: bool,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::store::Rerun, $crate::store::StoreError> {
            self.$f.batch_rerun(batch, downstream, now).await
        }
    };
    (@method $f:ident task_rescue) => {
        async fn task_rescue(
            &self,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::store::Events, $crate::store::StoreError> {
            self.$f.task_rescue(now).await
        }
    };
    (@method $f:ident worker_expire) => {
        async fn worker_expire(
            &self,
            worker: $crate::WorkerId,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::store::Events, $crate::store::StoreError> {
            self.$f.worker_expire(worker, now).await
        }
    };
    (@method $f:ident batch_expire) => {
        async fn batch_expire(
            &self,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::store::Events, $crate::store::StoreError> {
            self.$f.batch_expire(now).await
        }
    };
    (@method $f:ident batch_get) => {
        async fn batch_get(
            &self,
            batch: $crate::BatchId,
        ) -> ::std::result::Result<$crate::BatchInfo, $crate::store::StoreError> {
            self.$f.batch_get(batch).await
        }
    };
    (@method $f:ident batch_stats) => {
        async fn batch_stats(
            &self,
            batch: $crate::BatchId,
            now: $crate::Timestamp,
        ) -> ::std::result::Result<$crate::BatchStats, $crate::store::StoreError> {
            self.$f.batch_stats(batch, now).await
        }
    };
    (@method $f:ident task_get) => {
        async fn task_get(
            &self,
            task: $crate::TaskId,
        ) -> ::std::result::Result<$crate::store::TaskInfo, $crate::store::StoreError> {
            self.$f.task_get(task).await
        }
    };
    (@method $f:ident batch_list) => {
        async fn batch_list(
            &self,
            query: $crate::store::BatchQuery,
        ) -> ::std::result::Result<::std::vec::Vec<$crate::BatchInfo>, $crate::store::StoreError>
        {
            self.$f.batch_list(query).await
        }
    };
    (@method $f:ident task_list) => {
        async fn task_list(
            &self,
            batch: $crate::BatchId,
            query: $crate::store::TaskQuery,
        ) -> ::std::result::Result<
            $crate::store::TaskPage<Self::Payload, Self::Output>,
            $crate::store::StoreError,
        > {
            self.$f.task_list(batch, query).await
        }
    };
    (@method $f:ident task_attempts) => {
        async fn task_attempts(
            &self,
            task: $crate::TaskId,
        ) -> ::std::result::Result<
            ::std::vec::Vec<$crate::store::AttemptInfo>,
            $crate::store::StoreError,
        > {
            self.$f.task_attempts(task).await
        }
    };
    (@method $f:ident worker_list) => {
        async fn worker_list(
            &self,
        ) -> ::std::result::Result<
            ::std::vec::Vec<$crate::store::WorkerInfo>,
            $crate::store::StoreError,
        > {
            self.$f.worker_list().await
        }
    };
    (@method $f:ident event_list) => {
        async fn event_list(
            &self,
            query: $crate::store::EventQuery,
        ) -> ::std::result::Result<::std::vec::Vec<$crate::Event>, $crate::store::StoreError> {
            self.$f.event_list(query).await
        }
    };
    (@method $f:ident batch_purge) => {
        async fn batch_purge(
            &self,
            batch: $crate::BatchId,
        ) -> ::std::result::Result<(), $crate::store::StoreError> {
            self.$f.batch_purge(batch).await
        }
    };
    (@method $f:ident events) => {
        fn events(&self) -> $crate::store::EventReceiver {
            self.$f.events()
        }
    };
    (@method $f:ident signals) => {
        fn signals(&self) -> &$crate::store::Signals {
            self.$f.signals()
        }
    };
    (@method $f:ident retains_finished_tasks) => {
        fn retains_finished_tasks(&self) -> bool {
            self.$f.retains_finished_tasks()
        }
    };
}
