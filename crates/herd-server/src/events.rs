//! Server-Sent Events: one event per state transition, read from the
//! store's event log by sequence number, so that a client reconnecting with
//! `Last-Event-ID` (or `?after=SEQ`) gets exactly what it missed.
//!
//! A stream wakes when this process's store publishes events (and once a
//! second, for writers in other processes), then reads the log after the
//! last `seq` it sent: the log, not the in-process feed, is what is sent, so
//! a slow client or a lagging feed loses nothing. A batch's stream ends
//! after the batch's terminal event; every stream ends when the server stops.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use herd_core::store::{EventQuery, Events};
use herd_core::{BatchId, Event, EventKind};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::app::{ServerStore, Shared};
use crate::batches::batch_id;
use crate::error::ApiError;
use crate::views::EventView;

/// Events read from the store at a time.
const PAGE: usize = 500;
/// How often a stream looks at the store without a wake-up.
const POLL: Duration = Duration::from_secs(1);

/// The streams' query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Start after this `seq` (as `Last-Event-ID` does; the header wins).
    pub after: Option<u64>,
}

fn resume_point(
    headers: &HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<u64, ApiError> {
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_last_event_id",
                    "Last-Event-ID must be the id of an event this server sent (a number)",
                )
            }),
        None => Ok(q.after.unwrap_or(0)),
    }
}

/// `GET /api/batches/{id}/events`: the batch's transitions, from its
/// creation (or after `Last-Event-ID`), ending with its terminal state.
#[utoipa::path(get, path = "/api/batches/{id}/events", tag = "events",
    params(("id" = String, Path, description = "b12 or 12"), EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "resume after this event")),
    responses((status = 200, description = "text/event-stream: `task` and `batch` events, data as EventView", body = EventView, content_type = "text/event-stream"),
        (status = 404, body = crate::error::ErrorShape)),
    security(("bearer" = [])))]
pub async fn batch_events<S: ServerStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let id = batch_id(&id)?;
    let after = resume_point(&headers, q)?;
    state.store.batch_get(id).await?;
    let stream = follow(
        state.store.clone(),
        Some(id),
        Some(after),
        state.shutdown.clone(),
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `GET /api/events`: every batch's transitions, from now on (or after
/// `Last-Event-ID`; `?after=0` replays the whole log). "Now" starts with the
/// first operation of this process after the stream opened.
#[utoipa::path(get, path = "/api/events", tag = "events",
    params(EventsQuery, ("Last-Event-ID" = Option<u64>, Header, description = "resume after this event")),
    responses((status = 200, description = "text/event-stream of every batch's transitions", body = EventView, content_type = "text/event-stream")),
    security(("bearer" = [])))]
pub async fn all_events<S: ServerStore>(
    State(state): Shared<S>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let explicit = headers.contains_key("last-event-id")
        || matches!(&q, Ok(Query(EventsQuery { after: Some(_) })));
    let after = resume_point(&headers, q)?;
    let stream = follow(
        state.store.clone(),
        None,
        explicit.then_some(after),
        state.shutdown.clone(),
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

struct Follow<S> {
    store: Arc<S>,
    batch: Option<BatchId>,
    /// The last `seq` sent; `None`: from the first operation after the
    /// stream opened (known when its events arrive).
    after: Option<u64>,
    feed: broadcast::Receiver<Events>,
    buffer: VecDeque<Event>,
    done: bool,
    /// The batch was seen finished: one last read, then the end.
    ending: bool,
    stop: CancellationToken,
}

/// The stream of stored events after `after` (or from now), of one batch or all.
fn follow<S: ServerStore>(
    store: Arc<S>,
    batch: Option<BatchId>,
    after: Option<u64>,
    stop: CancellationToken,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    // Subscribe before the first read: nothing committed after it is missed.
    let feed = store.events();
    let state = Follow {
        store,
        batch,
        after,
        feed,
        buffer: VecDeque::new(),
        done: false,
        ending: false,
        stop,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(e) = st.buffer.pop_front() {
                st.after = Some(e.seq);
                if st.batch.is_some()
                    && matches!(e.kind, EventKind::Batch { to, .. } if to.is_terminal())
                {
                    st.done = true;
                }
                return Some((Ok(sse(&e)), st));
            }
            if st.done || st.stop.is_cancelled() {
                return None;
            }
            let Some(after) = st.after else {
                // From now: the first operation this process publishes after
                // the stream opened sets the starting point (the feed was
                // subscribed before; reading the whole log to find its end
                // would cost a scan of every event).
                tokio::select! {
                    received = st.feed.recv() => match received {
                        Ok(events) => {
                            if let Some(first) = events.first() {
                                st.after = Some(first.seq.saturating_sub(1));
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = st.stop.cancelled() => return None,
                }
                continue;
            };
            let page = st
                .store
                .event_list(EventQuery {
                    after,
                    batch: st.batch,
                    limit: PAGE,
                })
                .await;
            match page {
                Ok(page) if !page.is_empty() => {
                    st.buffer.extend(page);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "event stream stopped: the store failed");
                    return None;
                }
            }
            if let Some(batch) = st.batch {
                // The batch is over (or gone): its last events committed
                // with its end, so one more read finds them, then end.
                match st.store.batch_get(batch).await {
                    Ok(info) if !info.state.is_terminal() => {}
                    _ if st.ending => return None,
                    _ => {
                        st.ending = true;
                        continue;
                    }
                }
            }
            tokio::select! {
                received = st.feed.recv() => {
                    if let Err(broadcast::error::RecvError::Closed) = received {
                        return None;
                    }
                }
                _ = st.stop.cancelled() => return None,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    })
}

fn sse(e: &Event) -> SseEvent {
    let kind = match e.kind {
        EventKind::Task { .. } => "task",
        EventKind::Batch { .. } => "batch",
    };
    SseEvent::default()
        .id(e.seq.to_string())
        .event(kind)
        .json_data(EventView::from(e))
        .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"))
}
