//! The router: every route, the bearer-token check on `/api`, the body
//! limit, CORS (off unless origins are configured), JSON errors for
//! unknown routes and methods, and the request log: one `tracing` event at
//! info per answer (method, path, status, latency; never a header, so never
//! the token), whatever answered it.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use herd_core::store::Store;
use herd_exec::CommandTask;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tower_http::LatencyUnit;
use tower_http::cors::CorsLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::{batches, events, meta};

/// A store a server can run on: command tasks, JSON outputs.
pub trait ServerStore: Store<Payload = CommandTask, Output = serde_json::Value> {}

impl<S: Store<Payload = CommandTask, Output = serde_json::Value>> ServerStore for S {}

/// What every handler shares.
pub struct AppState<S> {
    /// The store.
    pub store: Arc<S>,
    /// The settings and flows.
    pub config: Arc<ServerConfig>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server stops: event streams end.
    pub shutdown: CancellationToken,
}

impl<S> AppState<S> {
    /// State over `store` with `config`.
    pub fn new(store: Arc<S>, config: ServerConfig) -> Arc<Self> {
        Arc::new(AppState {
            store,
            metrics: Arc::new(Metrics::new(config.slots)),
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
        })
    }
}

/// The state handlers receive.
pub type Shared<S> = State<Arc<AppState<S>>>;

/// The whole HTTP application.
pub fn app<S: ServerStore>(state: Arc<AppState<S>>) -> Router {
    let api = Router::new()
        .route(
            "/batches",
            post(batches::create::<S>).get(batches::list::<S>),
        )
        .route(
            "/batches/{id}",
            get(batches::get::<S>).delete(batches::delete::<S>),
        )
        .route("/batches/{id}/pause", post(batches::pause::<S>))
        .route("/batches/{id}/resume", post(batches::resume::<S>))
        .route("/batches/{id}/retry", post(batches::retry::<S>))
        .route("/batches/{id}/tasks", get(batches::tasks::<S>))
        .route("/batches/{id}/tasks/{task}", get(batches::task::<S>))
        .route("/batches/{id}/export", get(batches::export::<S>))
        .route("/batches/{id}/events", get(events::batch_events::<S>))
        .route("/events", get(events::all_events::<S>))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth::<S>));
    let mut app = Router::new()
        .nest("/api", api)
        .route("/healthz", get(meta::healthz::<S>))
        .route("/metrics", get(meta::metrics::<S>))
        .route("/openapi.json", get(meta::openapi))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state.clone());
    let origins: Vec<HeaderValue> = state
        .config
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if !origins.is_empty() {
        app = app.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    // Outermost, so refusals by the layers inside (401, 413) are logged too.
    app.layer(
        TraceLayer::new_for_http()
            .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
            .on_response(
                DefaultOnResponse::new()
                    .level(Level::INFO)
                    .latency_unit(LatencyUnit::Micros),
            ),
    )
}

/// Lets a call through only with the server's bearer token, when it has one.
/// The comparison takes the same time wherever the tokens differ.
async fn auth<S: ServerStore>(State(state): Shared<S>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.config.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes())));
        if !ok {
            let message = match given {
                None => "this server needs a token: send `Authorization: Bearer TOKEN`",
                Some(_) => "wrong token: send the token the server was started with",
            };
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
                .into_response();
        }
    }
    next.run(request).await
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(
        "not_found",
        format!(
            "no route {method} {}: see /openapi.json for the API",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take {method}: see /openapi.json for the API",
            uri.path()
        ),
    )
}
