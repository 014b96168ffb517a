//! The endpoints around the API: `/healthz`, `/metrics`, `/openapi.json`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use herd_core::store::BatchQuery;
use herd_core::{BatchState, StateCounts};
use serde_json::{Value, json};

use crate::app::{ServerStore, Shared};
use crate::error::ApiError;

/// `GET /healthz`: 200 while the store answers, 503 when it does not.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "the store answers"), (status = 503, description = "the store does not answer", body = crate::error::ErrorShape)))]
pub async fn healthz<S: ServerStore>(State(state): Shared<S>) -> Result<Json<Value>, ApiError> {
    state
        .store
        .batch_list(BatchQuery {
            limit: 1,
            ..BatchQuery::default()
        })
        .await?;
    Ok(Json(json!({ "status": "ok" })))
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text: herd_tasks, herd_queue_depth, herd_attempts_total, herd_attempt_duration_seconds, herd_worker_slots", content_type = "text/plain")))]
pub async fn metrics<S: ServerStore>(State(state): Shared<S>) -> Result<Response, ApiError> {
    let mut live = StateCounts::default();
    let mut batches = 0;
    let mut before = None;
    loop {
        let page = state
            .store
            .batch_list(BatchQuery {
                states: vec![BatchState::Queued, BatchState::Running, BatchState::Paused],
                before,
                limit: 1000,
            })
            .await?;
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        for b in &page {
            add(&mut live, &b.counts);
            batches += 1;
        }
    }
    let text = state.metrics.render(&live, batches);
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

fn add(total: &mut StateCounts, c: &StateCounts) {
    total.pending += c.pending;
    total.queued += c.queued;
    total.running += c.running;
    total.retry_wait += c.retry_wait;
    total.succeeded += c.succeeded;
    total.failed += c.failed;
    total.cancelled += c.cancelled;
    total.skipped += c.skipped;
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "this document")))]
pub async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}
