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

use herd_core::store::{Claim, ClaimRequest, Store, StoreError};
use herd_core::{BatchId, Timestamp};
use herd_server::client::Client;
use herd_server::{Bound, ServeError, ServerConfig};
use tokio::net::TcpStream;

use super::support::{Sqlite, config};

/// SQLite, whose `task_claim` fails once `broken` is set.
struct Broken<S> {
    inner: S,
    broken: Arc<AtomicBool>,
}

impl<S: Store> Store for Broken<S> {
    type Payload = S::Payload;
    type Output = S::Output;

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

    herd_core::delegate_store!(inner:
        worker_register,
        batch_insert,
        task_append,
        batch_seal,
        lease_renew,
        task_complete,
        task_cancel,
        batch_cancel,
        batch_pause,
        batch_resume,
        batch_rerun,
        task_rescue,
        batch_expire,
        batch_get,
        batch_stats,
        task_get,
        worker_expire,
        batch_list,
        task_list,
        task_attempts,
        worker_list,
        event_list,
        batch_purge,
        events,
        signals,
        retains_finished_tasks,
    );
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
