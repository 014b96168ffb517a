//! A worker failure stops the server: when the embedded worker ends on an
//! error it cannot wait out, `serve` stops listening and returns the error,
//! saying what to do (`herd serve` prints it and exits 1).
//!
//! Every failure of the SQL stores' storage (a file removed or unwritable,
//! a dropped schema, a lost connection) is a backend error, which the worker
//! waits out, retrying; what ends it is a store breaking its contract. So
//! the store here is SQLite with `task_claim` broken on request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use herd_core::store::{
    Appended, Applied, AttemptInfo, BatchQuery, CancelMode, Claim, ClaimRequest, Completion,
    EventQuery, Events, Fence, Inserted, Renewal, Rerun, Signals, Store, StoreError, TaskInfo,
    TaskQuery, TaskRecord, WorkerInfo,
};
use herd_core::{
    BatchId, BatchInfo, BatchSpec, BatchStats, Event, TaskId, TaskSpec, Timestamp, WorkerId,
};
use herd_server::client::Client;
use herd_server::{Bound, ServeError, ServerConfig};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

use super::support::{Sqlite, config};

/// SQLite, whose `task_claim` fails once `broken` is set.
struct Broken<S> {
    inner: S,
    broken: Arc<AtomicBool>,
}

impl<S: Store> Store for Broken<S> {
    type Payload = S::Payload;
    type Output = S::Output;

    async fn worker_register(
        &self,
        host: &str,
        pid: u32,
        now: Timestamp,
    ) -> Result<WorkerId, StoreError> {
        self.inner.worker_register(host, pid, now).await
    }

    async fn batch_insert(
        &self,
        spec: BatchSpec<S::Payload>,
        now: Timestamp,
    ) -> Result<Inserted, StoreError> {
        self.inner.batch_insert(spec, now).await
    }

    async fn task_append(
        &self,
        batch: BatchId,
        tasks: Vec<TaskSpec<S::Payload>>,
        now: Timestamp,
    ) -> Result<Appended, StoreError> {
        self.inner.task_append(batch, tasks, now).await
    }

    async fn batch_seal(&self, batch: BatchId, now: Timestamp) -> Result<Events, StoreError> {
        self.inner.batch_seal(batch, now).await
    }

    async fn task_claim(
        &self,
        request: ClaimRequest,
        now: Timestamp,
    ) -> Result<Claim<S::Payload, S::Output>, StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            // Not a backend failure (which the worker waits out): the store
            // lost a batch it had listed.
            return Err(StoreError::UnknownBatch(BatchId(4242)));
        }
        self.inner.task_claim(request, now).await
    }

    async fn lease_renew(
        &self,
        worker: WorkerId,
        running: Vec<Fence>,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<Renewal, StoreError> {
        self.inner
            .lease_renew(worker, running, lease_until, now)
            .await
    }

    async fn task_complete(
        &self,
        worker: WorkerId,
        completions: Vec<Completion<S::Output>>,
        now: Timestamp,
    ) -> Result<Applied, StoreError> {
        self.inner.task_complete(worker, completions, now).await
    }

    async fn task_cancel(
        &self,
        task: TaskId,
        mode: CancelMode,
        now: Timestamp,
    ) -> Result<Events, StoreError> {
        self.inner.task_cancel(task, mode, now).await
    }

    async fn batch_cancel(
        &self,
        batch: BatchId,
        mode: CancelMode,
        now: Timestamp,
    ) -> Result<Events, StoreError> {
        self.inner.batch_cancel(batch, mode, now).await
    }

    async fn batch_pause(&self, batch: BatchId, now: Timestamp) -> Result<Events, StoreError> {
        self.inner.batch_pause(batch, now).await
    }

    async fn batch_resume(&self, batch: BatchId, now: Timestamp) -> Result<Events, StoreError> {
        self.inner.batch_resume(batch, now).await
    }

    async fn batch_rerun(
        &self,
        batch: BatchId,
        downstream: bool,
        now: Timestamp,
    ) -> Result<Rerun, StoreError> {
        self.inner.batch_rerun(batch, downstream, now).await
    }

    async fn task_rescue(&self, now: Timestamp) -> Result<Events, StoreError> {
        self.inner.task_rescue(now).await
    }

    async fn batch_expire(&self, now: Timestamp) -> Result<Events, StoreError> {
        self.inner.batch_expire(now).await
    }

    async fn batch_get(&self, batch: BatchId) -> Result<BatchInfo, StoreError> {
        self.inner.batch_get(batch).await
    }

    async fn batch_stats(&self, batch: BatchId, now: Timestamp) -> Result<BatchStats, StoreError> {
        self.inner.batch_stats(batch, now).await
    }

    async fn task_get(&self, task: TaskId) -> Result<TaskInfo, StoreError> {
        self.inner.task_get(task).await
    }

    async fn worker_expire(&self, worker: WorkerId, now: Timestamp) -> Result<Events, StoreError> {
        self.inner.worker_expire(worker, now).await
    }

    async fn batch_list(&self, query: BatchQuery) -> Result<Vec<BatchInfo>, StoreError> {
        self.inner.batch_list(query).await
    }

    async fn task_list(
        &self,
        batch: BatchId,
        query: TaskQuery,
    ) -> Result<Vec<TaskRecord<S::Payload, S::Output>>, StoreError> {
        self.inner.task_list(batch, query).await
    }

    async fn task_attempts(&self, task: TaskId) -> Result<Vec<AttemptInfo>, StoreError> {
        self.inner.task_attempts(task).await
    }

    async fn worker_list(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        self.inner.worker_list().await
    }

    async fn event_list(&self, query: EventQuery) -> Result<Vec<Event>, StoreError> {
        self.inner.event_list(query).await
    }

    async fn batch_purge(&self, batch: BatchId) -> Result<(), StoreError> {
        self.inner.batch_purge(batch).await
    }

    fn events(&self) -> broadcast::Receiver<Events> {
        self.inner.events()
    }

    fn signals(&self) -> &Signals {
        self.inner.signals()
    }

    fn retains_finished_tasks(&self) -> bool {
        self.inner.retains_finished_tasks()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_ends_on_an_error_stops_the_server_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("s.db").display());
    let broken = Arc::new(AtomicBool::new(false));
    let store = Arc::new(Broken {
        inner: Sqlite::open(&url).await.unwrap(),
        broken: broken.clone(),
    });
    let listen = "127.0.0.1:0".parse().unwrap();
    let bound = Bound::bind(store, ServerConfig { listen, ..config() })
        .await
        .unwrap();
    let addr = bound.local_addr().unwrap();
    // Never asked to stop: only the worker's end stops it.
    let server = tokio::spawn(bound.serve(std::future::pending()));
    let client = Client::new(&format!("http://{addr}"), None).unwrap();

    // Healthy: a batch runs to its end.
    let created = client
        .call(
            "POST",
            "/api/batches",
            "application/json",
            br#"{"command": ["true"], "records": ["a"]}"#,
        )
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    client
        .fetch(
            "GET",
            &format!("/api/batches/{id}/events"),
            "text/event-stream",
            b"",
        )
        .await
        .unwrap();
    assert_eq!(
        client.get(&format!("/api/batches/{id}")).await.unwrap()["state"],
        "succeeded"
    );

    // Broken: the next batch wakes the worker, its claim fails, and the
    // server stops on its own.
    broken.store(true, Ordering::SeqCst);
    client
        .call(
            "POST",
            "/api/batches",
            "application/json",
            br#"{"command": ["true"], "records": ["b"]}"#,
        )
        .await
        .unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), server)
        .await
        .expect("the server stops within 30 s of its worker's end");
    let e = ended.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            ServeError::Worker(StoreError::UnknownBatch(BatchId(4242)))
        ),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(
        message.starts_with("the server's worker stopped: no batch b4242"),
        "{message}"
    );
    assert!(
        message.ends_with("the server stops too; check the store, then start it again"),
        "{message}"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}
