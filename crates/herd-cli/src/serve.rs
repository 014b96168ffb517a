//! `herd serve`: the HTTP server over a store, with a worker of its own.
//!
//! Its store defaults to `serve.db` beside `herd run`'s `herd.db`: the
//! server's worker claims work from every batch of its store, and `herd
//! run` batches are run by the `herd run` process that made them.

use herd_server::{Bound, FileConfig, Overrides, ServerConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{ServeArgs, exit};
use crate::error::{CliError, chain};
use crate::store::{Location, with_store};

/// `herd serve`.
pub async fn serve(args: ServeArgs, store: Option<String>) -> Result<u8, CliError> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path).map_err(|e| CliError::usage(chain(&e)))?,
        None => FileConfig::default(),
    };
    let store = store.or_else(|| file.server.store.clone());
    let location = Location::resolve_or(store.as_deref(), "serve.db")?;
    let overrides = Overrides {
        listen: args.listen,
        slots: args.slots,
        token: std::env::var("HERD_TOKEN").ok(),
        token_file: args.token_file,
        max_body_bytes: args.max_body_bytes,
        max_records: args.max_records,
        shutdown_grace: args.shutdown_grace,
    };
    let config = ServerConfig::resolve(file, overrides).map_err(|e| CliError::usage(chain(&e)))?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    with_store!(location, |store| {
        let bound = Bound::bind(store, config)
            .await
            .map_err(|e| CliError::usage(chain(&e)))?
            .on_stop(|| {
                eprintln!(
                    "herd serve: stopping: no new requests or tasks; running tasks get the grace"
                )
            });
        eprintln!("herd serve: listening on http://{}", bound.local_addr()?);
        bound
            .serve(stop)
            .await
            .map_err(|e| CliError::failed(chain(&e)))?;
        eprintln!("herd serve: stopped");
        Ok(exit::OK)
    })
}
