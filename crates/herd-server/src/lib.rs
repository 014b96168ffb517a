//! herd's service face: the HTTP API of `herd serve`, its flows, live
//! events and metrics, and the worker it embeds.
//!
//! - [`config`]: settings and flows from `herd.toml`, under `HERD_*` and flags.
//! - [`submit`]: a batch request checked field by field and built into a
//!   batch of command tasks (the same tasks `herd run` makes).
//! - [`mod@app`]: the router (`fn app(state) -> Router`), auth, limits, CORS;
//!   [`batches`], [`events`] (SSE) and [`meta`] hold the handlers;
//!   [`error`] the one JSON error shape; [`views`] the JSON answers.
//! - [`serve`]: binding, the embedded worker and the graceful stop;
//!   [`client`]: a small client of the API, for the `herd` command.
//!
//! The server runs over any [`Store`](herd_core::store::Store) of command
//! tasks: a SQLite file by default, PostgreSQL for many workers.
//!
//! ```
//! use std::sync::Arc;
//! use herd_core::store::MemoryStore;
//! use herd_server::{AppState, ServerConfig, app};
//!
//! let store = Arc::new(MemoryStore::<herd_exec::CommandTask, serde_json::Value>::retaining());
//! let router: axum::Router = app(AppState::new(store, ServerConfig::default()));
//! # let _ = router;
//! ```

pub mod app;
pub mod batches;
pub mod client;
pub mod config;
pub mod error;
pub mod events;
pub mod meta;
pub mod metrics;
pub mod openapi;
pub mod serve;
pub mod submit;
pub mod views;

pub use app::{AppState, ServerStore, app};
pub use config::{ConfigError, FileConfig, Overrides, ServerConfig};
pub use error::ApiError;
pub use serve::{Bound, ServeError, start_worker};
pub use submit::{BatchRequest, FLOW};
