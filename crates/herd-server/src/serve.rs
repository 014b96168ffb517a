//! Running a server: the embedded worker, the listener, and the stop.
//!
//! At start, leases held by workers of dead processes on this host (a server
//! killed with `kill -9`) are ended, so their tasks run again at once. At
//! the stop signal the listener closes (requests in flight are answered),
//! event streams end, the worker starts nothing new and running tasks get
//! the grace to finish; those still running then are killed and handed back
//! to the store. Queued tasks stay queued: the next server runs them.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herd_core::scheduler::{Router as Routes, WorkerConfig, WorkerHandle, spawn_worker};
use herd_core::store::StoreError;
use herd_core::{Clock, SystemClock};
use herd_exec::CommandRunner;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::app::{AppState, ServerStore, app};
use crate::config::ServerConfig;
use crate::submit::FLOW;

/// Why a server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A non-loopback address without a token.
    #[error(
        "refusing to listen on {0} without a token: anyone who reaches it could run commands here; set HERD_TOKEN or --token-file, or listen on 127.0.0.1"
    )]
    Unprotected(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}: choose another address or port (--listen)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The worker stopped on an error it could not get past.
    #[error(
        "the server's worker stopped: {0}: the server stops too; check the store, then start it again"
    )]
    Worker(#[source] StoreError),
    /// Serving failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A server bound to its address, not yet serving.
pub struct Bound<S> {
    listener: TcpListener,
    state: Arc<AppState<S>>,
    on_stop: Option<Box<dyn FnOnce() + Send>>,
}

impl<S: ServerStore> Bound<S> {
    /// Checks the settings, releases dead workers' tasks and binds.
    pub async fn bind(store: Arc<S>, config: ServerConfig) -> Result<Bound<S>, ServeError> {
        if !config.listen.ip().is_loopback() && config.token.is_none() {
            return Err(ServeError::Unprotected(config.listen));
        }
        herd_exec::local::release_dead_workers(&*store, None).await?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Bound {
            listener,
            state: AppState::new(store, config),
            on_stop: None,
        })
    }

    /// Calls `stopping` once the stop has begun: no new request is taken
    /// and the worker starts no new task.
    pub fn on_stop(mut self, stopping: impl FnOnce() + Send + 'static) -> Self {
        self.on_stop = Some(Box::new(stopping));
        self
    }

    /// The address it listens on (with the port chosen, for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` completes, then stops as the module docs say.
    pub async fn serve(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Bound {
            listener,
            state,
            on_stop,
        } = self;
        let store = state.store.clone();
        let config = state.config.clone();

        // Metrics from the events, subscribed before the worker starts.
        let mut feed = store.events();
        let metrics = state.metrics.clone();
        let counting = tokio::spawn(async move {
            loop {
                match feed.recv().await {
                    Ok(events) => metrics.observe(&events),
                    Err(broadcast::error::RecvError::Lagged(n)) => metrics.missed(n),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });

        let mut worker = start_worker(store.clone(), config.slots).await;

        let shutdown = state.shutdown.clone();
        let http = axum::serve(listener, app(state))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future();
        let mut http = tokio::spawn(http);
        let signal = tokio::spawn(stop);
        tokio::select! {
            _ = signal => {}
            _ = shutdown.cancelled() => {}
            ended = worker.join() => {
                // The worker waits out backend failures; it ends only on an
                // error it cannot get past. A server that takes batches no
                // one runs helps no one: stop, and say why.
                shutdown.cancel();
                counting.abort();
                let _ = http.await;
                return Err(match ended {
                    Err(e) => ServeError::Worker(e),
                    Ok(()) => ServeError::Worker(StoreError::Backend("the worker ended".into())),
                });
            }
            result = &mut http => {
                // The listener failed on its own: stop the rest too.
                shutdown.cancel();
                stop_worker(&mut worker, config.shutdown_grace).await;
                herd_exec::local::release_own_workers(&*store).await?;
                counting.abort();
                return match result {
                    Ok(r) => r.map_err(ServeError::Io),
                    Err(e) => Err(ServeError::Io(std::io::Error::other(e))),
                };
            }
        }
        shutdown.cancel();
        worker.stop();
        if let Some(stopping) = on_stop {
            stopping();
        }
        stop_worker(&mut worker, config.shutdown_grace).await;
        herd_exec::local::release_own_workers(&*store).await?;
        counting.abort();
        match http.await {
            Ok(r) => r.map_err(ServeError::Io),
            Err(e) => Err(ServeError::Io(std::io::Error::other(e))),
        }
    }
}

/// Starts the server's worker over `store`: it runs every batch of the
/// [`FLOW`] with `slots` slots, each task a process of herd's runner.
pub async fn start_worker<S: ServerStore>(store: Arc<S>, slots: u32) -> WorkerHandle {
    let runner = Arc::new(CommandRunner::builder().build());
    let routes = Arc::new(Routes::new());
    routes.lock().await.add_flow(Arc::from(FLOW), runner);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    spawn_worker(
        store,
        routes,
        clock,
        WorkerConfig {
            slots,
            host: herd_exec::local::hostname(),
            batch: None,
            ..WorkerConfig::default()
        },
    )
}

/// Lets running attempts finish within `grace`, then drops them (which
/// kills their process groups).
async fn stop_worker(worker: &mut WorkerHandle, grace: Duration) {
    worker.stop();
    let joined = tokio::time::timeout(grace, worker.join()).await;
    if joined.is_err() {
        worker.abort();
        let _ = worker.join().await;
    }
}
