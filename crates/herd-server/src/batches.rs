//! The batch endpoints: create, list, show, cancel or purge, pause, resume,
//! retry, tasks, one task, export.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herd_core::store::{BatchQuery, CancelMode, TaskQuery, TaskRecord};
use herd_core::{BatchId, BatchState, Clock, SystemClock, TaskId, TaskState};
use herd_exec::CommandTask;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::app::{ServerStore, Shared};
use crate::error::ApiError;
use crate::submit::{BatchRequest, plan};
use crate::views::{AttemptView, BatchPage, BatchView, Retried, TaskPage, TaskView};

/// Most items on one page.
const MAX_PAGE: usize = 1000;

/// A batch id as written in a path: `b12` or `12`.
pub fn batch_id(text: &str) -> Result<BatchId, ApiError> {
    let digits = text.strip_prefix('b').unwrap_or(text);
    match digits.parse::<i64>() {
        Ok(id) if id > 0 => Ok(BatchId(id)),
        _ => Err(ApiError::bad_request(
            "invalid_id",
            format!("{text:?} is not a batch id: write it like b12 (or 12)"),
        )
        .at("id")),
    }
}

/// A query string's parameters, or a 400 naming what is wrong.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

/// Reads JSON into `T`, naming the field at fault: 400 for text that is
/// not JSON, 422 for JSON of the wrong shape.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let malformed = |e: serde_json::Error| {
        ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => ApiError {
                field: (path != ".").then_some(path),
                ..ApiError::invalid("", inner.to_string())
            },
            _ => malformed(inner),
        }
    })?;
    de.end().map_err(malformed)?;
    Ok(value)
}

fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError {
            field: (path != ".").then_some(path),
            ..ApiError::invalid("", e.into_inner().to_string())
        }
    })
}

fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than this server takes: split the records into several batches, or raise max_body_bytes",
            )
        } else {
            ApiError::bad_request("unreadable_body", e.body_text())
        }
    })
}

/// The options of an NDJSON create, from the query string: each value is
/// read as JSON where it is (numbers, booleans), else taken as text.
fn options_from_query(raw: Option<&str>) -> Result<BatchRequest, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded_pairs(raw.unwrap_or_default())?;
    let mut object = Map::new();
    for (key, text) in pairs {
        if key == "records" || key == "tasks" {
            return Err(ApiError::invalid(
                key.as_str(),
                "with an NDJSON body the records are the body's lines",
            ));
        }
        let value = match key.as_str() {
            // Always text, even when it looks like a number.
            "name" | "idempotency_key" | "flow" | "timeout" | "grace" | "deadline"
            | "error_policy" | "size_class" | "command" => Value::String(text),
            _ => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        };
        object.insert(key, value);
    }
    from_value(Value::Object(object))
}

fn serde_urlencoded_pairs(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{raw}")
            .parse()
            .map_err(|_| ApiError::bad_request("invalid_query", "the query string is malformed"))?,
    )
    .map(|Query(q)| q)
    .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

/// The records of an NDJSON body: one JSON value per non-empty line.
fn ndjson_records(bytes: &[u8]) -> Result<Vec<Value>, ApiError> {
    let mut records = Vec::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value = serde_json::from_slice(line).map_err(|e| {
            ApiError::bad_request(
                "malformed_ndjson",
                format!("line {} of the body is not JSON: {e}", i + 1),
            )
            .at(format!("records[{}]", records.len()))
        })?;
        records.push(value);
    }
    Ok(records)
}

/// Batches of up to this many records or tasks are built on the request's
/// own task; larger ones on the blocking pool.
const BUILT_IN_PLACE: usize = 256;

/// `POST /api/batches`: a JSON request, or (`Content-Type:
/// application/x-ndjson`) records as lines with the options in the query.
/// 201 with the batch; 200 with the earlier batch of the same idempotency key.
#[utoipa::path(post, path = "/api/batches", tag = "batches",
    request_body(content = BatchRequest, description = "JSON; or application/x-ndjson records with these fields as query parameters"),
    responses(
        (status = 201, description = "created", body = BatchView),
        (status = 200, description = "the earlier batch of this idempotency key", body = BatchView),
        (status = 400, description = "not JSON", body = crate::error::ErrorShape),
        (status = 413, description = "too large, or too many records", body = crate::error::ErrorShape),
        (status = 415, description = "neither JSON nor NDJSON", body = crate::error::ErrorShape),
        (status = 422, description = "a field cannot work (named in `field`)", body = crate::error::ErrorShape),
    ),
    security(("bearer" = [])))]
pub async fn create<S: ServerStore>(
    State(state): Shared<S>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body(bytes)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let config = state.config.clone();
    let request = match mime.as_str() {
        "application/x-ndjson" | "application/jsonl" | "application/x-jsonlines" => {
            let mut request = options_from_query(raw.as_deref())?;
            request.records = Some(ndjson_records(&bytes)?);
            request
        }
        "application/json" | "" => {
            // Serde would take an array for the struct, field by position.
            let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
            if first.is_some_and(|b| *b != b'{') {
                return Err(ApiError {
                    field: None,
                    ..ApiError::invalid(
                        "",
                        "the body must be a JSON object of the batch's fields, e.g. {\"command\": [\"echo\", \"{}\"], \"records\": [\"a\"]}",
                    )
                });
            }
            from_json::<BatchRequest>(&bytes)?
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "{other} bodies are not taken: send application/json, or application/x-ndjson with the options in the query"
                ),
            ));
        }
    };
    // Building a large batch is CPU work: off the async threads. A small
    // one is built in place: a hand-off to the blocking pool and back would
    // cost more than the work.
    let size =
        request.records.as_ref().map_or(0, Vec::len) + request.tasks.as_ref().map_or(0, Vec::len);
    let plan = if size <= BUILT_IN_PLACE {
        plan(request, &config)?
    } else {
        tokio::task::spawn_blocking(move || plan(request, &config))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("building the batch failed: {e}"),
                )
            })??
    };
    let inserted = state
        .store
        .batch_insert(plan.spec, SystemClock.now())
        .await?;
    let info = inserted.info;
    let status = if inserted.existing {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let location = format!("/api/batches/{}", info.id);
    Ok((
        status,
        [(header::LOCATION, location)],
        Json(BatchView::new(&info, None)),
    )
        .into_response())
}

/// `GET /api/batches`'s query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only these states, comma-separated.
    pub state: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<usize>,
}

fn states<T: std::str::FromStr>(text: &str) -> Result<Vec<T>, ApiError>
where
    T::Err: std::fmt::Display,
{
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<T>()
                .map_err(|e| ApiError::invalid("state", e.to_string()))
        })
        .collect()
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid(
            "limit",
            format!("{n} is not a page size: give 1 to {MAX_PAGE}"),
        )),
    }
}

/// `GET /api/batches`: newest first, a page at a time.
#[utoipa::path(get, path = "/api/batches", tag = "batches", params(ListQuery),
    responses((status = 200, body = BatchPage), (status = 400, body = crate::error::ErrorShape), (status = 422, body = crate::error::ErrorShape)),
    security(("bearer" = [])))]
pub async fn list<S: ServerStore>(
    State(state): Shared<S>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<BatchPage>, ApiError> {
    let q = query(q)?;
    let limit = page_limit(q.limit)?;
    let states: Vec<BatchState> = q
        .state
        .as_deref()
        .map(states)
        .transpose()?
        .unwrap_or_default();
    let before = q
        .cursor
        .as_deref()
        .map(|c| batch_id(c).map_err(|e| e.at("cursor")))
        .transpose()?;
    let page = state
        .store
        .batch_list(BatchQuery {
            states,
            before,
            limit,
        })
        .await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|b| b.id.to_string()))
        .flatten();
    let batches: Vec<BatchView> = page.iter().map(|b| BatchView::new(b, None)).collect();
    Ok(Json(BatchPage {
        batches,
        next_cursor: next,
    }))
}

/// `GET /api/batches/{id}`: state, counts, progress, timings, figures.
#[utoipa::path(get, path = "/api/batches/{id}", tag = "batches",
    params(("id" = String, Path, description = "b12 or 12")),
    responses((status = 200, body = BatchView), (status = 404, body = crate::error::ErrorShape)),
    security(("bearer" = [])))]
pub async fn get<S: ServerStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
) -> Result<Json<BatchView>, ApiError> {
    let id = batch_id(&id)?;
    let info = state.store.batch_get(id).await?;
    let stats = state.store.batch_stats(id, SystemClock.now()).await?;
    Ok(Json(BatchView::new(&info, Some(&stats))))
}

/// `DELETE /api/batches/{id}`'s query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Remove a finished batch instead of cancelling.
    #[serde(default)]
    pub purge: bool,
    /// Kill running commands at once instead of SIGTERM and the grace.
    #[serde(default)]
    pub force: bool,
}

/// `DELETE /api/batches/{id}`: cancels (200 with the batch), or with
/// `?purge=true` removes a finished batch (204; 409 while it is live).
#[utoipa::path(delete, path = "/api/batches/{id}", tag = "batches",
    params(("id" = String, Path, description = "b12 or 12"), DeleteQuery),
    responses((status = 200, description = "cancelled", body = BatchView), (status = 204, description = "purged"),
        (status = 404, body = crate::error::ErrorShape), (status = 409, description = "purge of a live batch", body = crate::error::ErrorShape)),
    security(("bearer" = [])))]
pub async fn delete<S: ServerStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = batch_id(&id)?;
    let q = query(q)?;
    if q.purge {
        state.store.batch_purge(id).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mode = if q.force {
        CancelMode::Forced
    } else {
        CancelMode::Graceful
    };
    state
        .store
        .batch_cancel(id, mode, SystemClock.now())
        .await?;
    let info = state.store.batch_get(id).await?;
    Ok(Json(BatchView::new(&info, None)).into_response())
}

/// `POST /api/batches/{id}/pause`.
#[utoipa::path(post, path = "/api/batches/{id}/pause", tag = "batches",
    params(("id" = String, Path, description = "b12 or 12")),
    responses((status = 200, body = BatchView), (status = 404, body = crate::error::ErrorShape)),
    security(("bearer" = [])))]
pub async fn pause<S: ServerStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
) -> Result<Json<BatchView>, ApiError> {
    let id = batch_id(&id)?;
    state.store.batch_pause(id, SystemClock.now()).await?;
    let info = state.store.batch_get(id).await?;
    Ok(Json(BatchView::new(&info, None)))
}

/// `POST /api/batches/{id}/resume`.
#[utoipa::path(post, path = "/api/batches/{id}/resume", tag = "batches",
    params(("id" = String, Path, description = "b12 or 12")),
    responses((status = 200, body = BatchView), (status = 404, body = crate::error::ErrorShape)),
    security(("bearer" = [])))]
pub async fn resume<S: ServerStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
) -> Result<Json<BatchView>, ApiError> {
    let id = batch_id(&id)?;
    state.store.batch_resume(id, SystemClock.now()).await?;
    let info = state.store.batch_get(id).await?;
    Ok(Json(BatchView::new(&info, None)))
}

/// `POST /api/batches/{id}/retry`'s query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RetryQuery {
    /// Also the tasks skipped because of the failures (default true).
    pub downstream: Option<bool>,
}

/// `POST /api/batches/{id}/retry`: runs a finished batch's failed tasks
/// again (409 while it runs).
#[utoipa::path(post, path = "/api/batches/{id}/retry", tag = "batches",
    params(("id" = String, Path, description = "b12 or 12"), RetryQuery),
    responses((status = 200, body = Retried), (status = 404, body = crate::error::ErrorShape), (status = 409, description = "not finished", body = crate::error::ErrorShape)),
    security(("bearer" = [])))]
pub async fn retry<S: ServerStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    q: Result<Query<RetryQuery>, QueryRejection>,
) -> Result<Json<Retried>, ApiError> {
    let id = batch_id(&id)?;
    let q = query(q)?;
    let rerun = state
        .store
        .batch_rerun(id, q.downstream.unwrap_or(true), SystemClock.now())
        .await?;
    let info = state.store.batch_get(id).await?;
    Ok(Json(Retried {
        batch: BatchView::new(&info, None),
        retried: rerun.tasks.len(),
    }))
}

/// `GET /api/batches/{id}/tasks`'s query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TasksQuery {
    /// Only these states, comma-separated.
    pub state: Option<String>,
    /// The `next_cursor` of the previous page (a job number).
    pub cursor: Option<u64>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<usize>,
    /// With each task's last output tails.
    #[serde(default)]
    pub logs: bool,
}

/// `GET /api/batches/{id}/tasks`: by job number, a page at a time.
#[utoipa::path(get, path = "/api/batches/{id}/tasks", tag = "tasks",
    params(("id" = String, Path, description = "b12 or 12"), TasksQuery),
    responses((status = 200, body = TaskPage), (status = 404, body = crate::error::ErrorShape), (status = 422, body = crate::error::ErrorShape)),
    security(("bearer" = [])))]
pub async fn tasks<S: ServerStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    q: Result<Query<TasksQuery>, QueryRejection>,
) -> Result<Json<TaskPage>, ApiError> {
    let id = batch_id(&id)?;
    let q = query(q)?;
    let limit = page_limit(q.limit)?;
    let states: Vec<TaskState> = q
        .state
        .as_deref()
        .map(states)
        .transpose()?
        .unwrap_or_default();
    let page = state
        .store
        .task_list(
            id,
            TaskQuery {
                states,
                // The cursor is the last job number seen: index + 1.
                after: q.cursor.and_then(|job| job.checked_sub(1)),
                limit,
                logs: q.logs,
            },
        )
        .await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|t| (t.info.index + 1).to_string()))
        .flatten();
    let tasks: Vec<TaskView> = page.iter().map(|t| TaskView::new(t, q.logs)).collect();
    Ok(Json(TaskPage {
        tasks,
        next_cursor: next,
    }))
}

/// The task `text` names in `batch`: a job number (`7`) or a task id (`t345`).
async fn task_record<S: ServerStore>(
    store: &S,
    batch: BatchId,
    text: &str,
) -> Result<TaskRecord<CommandTask, Value>, ApiError> {
    let unknown = || {
        ApiError::not_found(
            "unknown_task",
            format!(
                "batch {batch} has no task {text}: its tasks are listed at /api/batches/{batch}/tasks"
            ),
        )
    };
    let index = if let Some(id) = text.strip_prefix('t') {
        let id = id.parse::<i64>().map_err(|_| unknown())?;
        let info = store.task_get(TaskId(id)).await.map_err(|_| unknown())?;
        if info.batch != batch {
            return Err(unknown());
        }
        info.index
    } else {
        match text.parse::<u64>() {
            Ok(job) if job > 0 => job - 1,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_id",
                    format!("{text:?} is not a task: give its job number (7) or its id (t345)"),
                )
                .at("task"));
            }
        }
    };
    let page = store
        .task_list(
            batch,
            TaskQuery {
                states: Vec::new(),
                after: index.checked_sub(1),
                limit: 1,
                logs: true,
            },
        )
        .await?;
    page.into_iter()
        .find(|t| t.info.index == index)
        .ok_or_else(unknown)
}

/// `GET /api/batches/{id}/tasks/{task}`: the task, its result and every
/// attempt with its output tails.
#[utoipa::path(get, path = "/api/batches/{id}/tasks/{task}", tag = "tasks",
    params(("id" = String, Path, description = "b12 or 12"), ("task" = String, Path, description = "job number (7) or task id (t345)")),
    responses((status = 200, body = TaskView), (status = 404, body = crate::error::ErrorShape)),
    security(("bearer" = [])))]
pub async fn task<S: ServerStore>(
    State(state): Shared<S>,
    Path((id, task)): Path<(String, String)>,
) -> Result<Json<TaskView>, ApiError> {
    let id = batch_id(&id)?;
    let record = task_record(&*state.store, id, &task).await?;
    let attempts = state.store.task_attempts(record.info.id).await?;
    let mut view = TaskView::new(&record, true);
    view.attempt_history = Some(attempts.iter().map(|a| AttemptView::new(a, true)).collect());
    Ok(Json(view))
}

/// `GET /api/batches/{id}/export`'s query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `jsonl` (default), `json` or `csv`.
    pub format: Option<String>,
}

const CSV_COLUMNS: [&str; 10] = [
    "job",
    "task",
    "state",
    "reason",
    "attempts",
    "exit_code",
    "duration_ms",
    "items",
    "command",
    "stdout",
];

/// `GET /api/batches/{id}/export`: every task with its result and output.
#[utoipa::path(get, path = "/api/batches/{id}/export", tag = "tasks",
    params(("id" = String, Path, description = "b12 or 12"), ExportQuery),
    responses((status = 200, description = "every task: JSON lines, a JSON array or CSV", content_type = "application/x-ndjson"),
        (status = 404, body = crate::error::ErrorShape), (status = 422, body = crate::error::ErrorShape)),
    security(("bearer" = [])))]
pub async fn export<S: ServerStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = batch_id(&id)?;
    let q = query(q)?;
    let format = q.format.as_deref().unwrap_or("jsonl");
    if !matches!(format, "jsonl" | "json" | "csv") {
        return Err(ApiError::invalid(
            "format",
            format!("{format:?} is not an export format: use csv, json or jsonl"),
        ));
    }
    state.store.batch_get(id).await?;
    let format = match format {
        "csv" => Export::Csv,
        "json" => Export::Json,
        _ => Export::Jsonl,
    };
    let content_type = match format {
        Export::Csv => "text/csv; charset=utf-8",
        Export::Json => "application/json",
        Export::Jsonl => "application/x-ndjson",
    };
    // A page of tasks at a time, straight to the client: memory follows
    // the page, not the batch.
    let store = state.store.clone();
    let pages = futures::stream::unfold((Some(None::<u64>), true), move |(cursor, first)| {
        let store = store.clone();
        async move {
            let after = cursor?;
            let page = store
                .task_list(
                    id,
                    TaskQuery {
                        states: Vec::new(),
                        after,
                        limit: MAX_PAGE,
                        logs: true,
                    },
                )
                .await;
            let page = match page {
                Ok(page) => page,
                Err(e) => return Some((Err(std::io::Error::other(e)), (None, false))),
            };
            let next = page.last().map(|t| Some(t.info.index));
            let chunk = format.page(&page, first, next.is_none());
            Some((chunk.map(Bytes::from), (next, false)))
        }
    });
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(pages),
    )
        .into_response())
}

/// An export format.
#[derive(Clone, Copy)]
enum Export {
    Csv,
    Json,
    Jsonl,
}

impl Export {
    /// The bytes of one page of tasks: with the header (CSV) or the opening
    /// bracket (JSON) on the first page, the closing one on the last (empty) page.
    fn page(
        self,
        page: &[TaskRecord<CommandTask, Value>],
        first: bool,
        last: bool,
    ) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            Export::Csv => {
                let mut w = csv::Writer::from_writer(&mut out);
                if first {
                    w.write_record(CSV_COLUMNS)?;
                }
                for t in page {
                    w.write_record(csv_row(&TaskView::new(t, true)))?;
                }
                w.flush()?;
            }
            Export::Json | Export::Jsonl => {
                let json = matches!(self, Export::Json);
                if json && first {
                    out.push(b'[');
                }
                for (i, t) in page.iter().enumerate() {
                    if json && !(first && i == 0) {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut out, &TaskView::new(t, true))?;
                    if !json {
                        out.push(b'\n');
                    }
                }
                if json && last {
                    out.extend_from_slice(b"]\n");
                }
            }
        }
        Ok(out)
    }
}

fn csv_row(t: &TaskView) -> [String; 10] {
    let last = t.last_attempt.as_ref();
    [
        t.job.to_string(),
        t.id.clone(),
        t.state.clone(),
        t.reason.clone().unwrap_or_default(),
        t.attempts.to_string(),
        t.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        t.duration_ms.map(|d| format!("{d:.1}")).unwrap_or_default(),
        t.items.join(" "),
        t.argv.join(" "),
        last.and_then(|a| a.stdout.clone()).unwrap_or_default(),
    ]
}
