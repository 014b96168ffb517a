//! What the tests share: a server's app over a fresh SQLite store, with or
//! without its worker, and calls through `oneshot`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use herd_core::BatchId;
use herd_core::scheduler::WorkerHandle;
use herd_exec::CommandTask;
use herd_server::{AppState, ServerConfig, ServerStore, app, start_worker};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// The SQLite store of the tests.
pub type Sqlite = herd_sql::SqliteStore<CommandTask, Value>;

/// An app over a store, maybe with its worker running.
pub struct Harness<S = Sqlite> {
    pub store: Arc<S>,
    pub app: Router,
    pub state: Arc<AppState<S>>,
    pub worker: Option<WorkerHandle>,
    pub dir: tempfile::TempDir,
}

/// A response: status, headers and body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A config for tests: 4 slots, no token.
pub fn config() -> ServerConfig {
    ServerConfig {
        slots: 4,
        ..ServerConfig::default()
    }
}

impl Harness<Sqlite> {
    /// A server with its worker running.
    pub async fn running(config: ServerConfig) -> Self {
        let mut h = Harness::idle(config).await;
        h.worker = Some(start_worker(h.store.clone(), h.state.config.slots).await);
        h
    }

    /// A server whose batches wait: nothing runs them.
    pub async fn idle(config: ServerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("serve.db").display());
        let store = Arc::new(Sqlite::open(&url).await.unwrap());
        Harness::over(store, config, dir)
    }
}

impl<S: ServerStore> Harness<S> {
    pub fn over(store: Arc<S>, config: ServerConfig, dir: tempfile::TempDir) -> Self {
        let state = AppState::new(store.clone(), config);
        Harness {
            store,
            app: app(state.clone()),
            state,
            worker: None,
            dir,
        }
    }

    /// Starts the worker.
    pub async fn start(&mut self) {
        self.worker = Some(start_worker(self.store.clone(), self.state.config.slots).await);
    }

    /// Sends a request through the router.
    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: body.to_vec(),
        }
    }

    /// `method uri` with a JSON body (or none).
    pub async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).unwrap()).await
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, None).await
    }

    pub async fn post(&self, uri: &str, body: Value) -> Answer {
        self.call(Method::POST, uri, Some(body)).await
    }

    /// Creates a batch, asserting 201; its id.
    pub async fn create(&self, body: Value) -> String {
        let answer = self.post("/api/batches", body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
        answer.json()["id"].as_str().unwrap().to_string()
    }

    /// Waits until the batch has finished (woken by the store's events, no
    /// sleeping); its answer from the API.
    pub async fn finished(&self, batch: &str) -> Value {
        let id = BatchId(batch.trim_start_matches('b').parse().unwrap());
        let mut feed = herd_core::store::Store::events(&*self.store);
        loop {
            let info = herd_core::store::Store::batch_get(&*self.store, id)
                .await
                .unwrap();
            if info.state.is_terminal() {
                break;
            }
            let wait = tokio::time::timeout(std::time::Duration::from_secs(30), feed.recv());
            assert!(wait.await.is_ok(), "batch {batch} did not finish in 30 s");
        }
        self.get(&format!("/api/batches/{batch}")).await.json()
    }

    /// The number of batches stored.
    pub async fn batch_count(&self) -> usize {
        herd_core::store::Store::batch_list(
            &*self.store,
            herd_core::store::BatchQuery {
                limit: 10_000,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .len()
    }
}

/// A shell command (through `sh -c`, records quoted).
pub fn shell(script: &str) -> Value {
    serde_json::json!([script])
}
