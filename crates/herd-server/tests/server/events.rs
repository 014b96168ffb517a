//! The event streams: every transition in order, resumable.

use axum::body::Body;
use axum::http::{Request, header};
use futures::StreamExt;
use herd_core::BatchId;
use herd_core::store::{EventQuery, Store};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::support::{Harness, config};

/// The events of an SSE body: (id, event name, data).
fn parse(text: &str) -> Vec<(u64, String, Value)> {
    text.split("\n\n")
        .filter(|frame| frame.lines().any(|l| l.starts_with("data:")))
        .map(|frame| {
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            (
                field("id:").parse().unwrap(),
                field("event:"),
                serde_json::from_str(&field("data:")).unwrap(),
            )
        })
        .collect()
}

async fn stream(app: &axum::Router, uri: &str, last: Option<u64>) -> Vec<(u64, String, Value)> {
    let mut request = Request::builder().uri(uri);
    if let Some(last) = last {
        request = request.header("last-event-id", last.to_string());
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        response.into_body().collect(),
    )
    .await
    .expect("the batch's stream ends with the batch")
    .unwrap()
    .to_bytes();
    parse(&String::from_utf8_lossy(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stream_sends_every_transition_in_order_then_ends() {
    let mut h = Harness::idle(config()).await;
    let id = h
        .create(json!({"command": ["echo", "{}"], "records": ["a", "b", "c"], "concurrency": 2}))
        .await;
    // Subscribed before anything runs: the stream follows the batch live.
    let app = h.app.clone();
    let uri = format!("/api/batches/{id}/events");
    let live = tokio::spawn(async move { stream(&app, &uri, None).await });
    h.start().await;
    let got = live.await.unwrap();

    let batch = BatchId(id[1..].parse().unwrap());
    let stored = h
        .store
        .event_list(EventQuery {
            after: 0,
            batch: Some(batch),
            limit: 1000,
        })
        .await
        .unwrap();
    let ids: Vec<u64> = got.iter().map(|(seq, _, _)| *seq).collect();
    let want: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(ids, want, "every stored transition, once, in seq order");
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    let batch_moves: Vec<&str> = got
        .iter()
        .filter(|(_, kind, _)| kind == "batch")
        .map(|(_, _, d)| d["to"].as_str().unwrap())
        .collect();
    assert_eq!(batch_moves, ["queued", "running", "succeeded"]);
    assert_eq!(
        got.last().unwrap().2["to"],
        "succeeded",
        "the batch's end comes last"
    );
    for job in 1..=3 {
        let moves: Vec<&str> = got
            .iter()
            .filter(|(_, _, d)| d["job"] == job)
            .map(|(_, _, d)| d["to"].as_str().unwrap())
            .collect();
        assert_eq!(moves, ["queued", "running", "succeeded"], "job {job}");
    }
    for (seq, _, data) in &got {
        assert_eq!(data["seq"], *seq);
        assert_eq!(data["batch"], id.as_str());
    }

    // Resumed after the fourth event: exactly the rest.
    let rest = stream(&h.app, &format!("/api/batches/{id}/events"), Some(ids[3])).await;
    let rest_ids: Vec<u64> = rest.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(rest_ids, ids[4..]);
    // `?after=` does the same for clients that cannot set headers.
    let after = stream(
        &h.app,
        &format!("/api/batches/{id}/events?after={}", ids[3]),
        None,
    )
    .await;
    assert_eq!(after.len(), rest.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_stream_follows_every_batch_from_now_on() {
    let mut h = Harness::idle(config()).await;
    let before = h
        .create(json!({"command": "true", "records": ["old"]}))
        .await;
    let response = h
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/api/events")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body().into_data_stream();
    let a = h.create(json!({"command": "true", "records": ["x"]})).await;
    let b = h
        .create(json!({"command": "true", "records": ["y", "z"]}))
        .await;
    h.start().await;
    let mut text = String::new();
    let mut finished = std::collections::BTreeSet::new();
    let mut seen = Vec::new();
    while finished.len() < 3 {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), body.next())
            .await
            .expect("events keep coming until the batches end")
            .expect("the stream stays open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        let Some(end) = text.rfind("\n\n") else {
            continue;
        };
        for (seq, _, data) in parse(&text[..end + 2]) {
            if data["type"] == "batch" && data["to"] == "succeeded" {
                finished.insert(data["batch"].as_str().unwrap().to_string());
            }
            seen.push((seq, data));
        }
        text = text[end + 2..].to_string();
    }
    assert_eq!(
        finished,
        [before.clone(), a.clone(), b.clone()].into_iter().collect()
    );
    // The old batch's creation came before the stream: not sent; its run: sent.
    let created_old = seen
        .iter()
        .any(|(_, d)| d["batch"] == before.as_str() && d["from"].is_null());
    assert!(
        !created_old,
        "events before the stream opened are not replayed"
    );
    let created_new = seen.iter().filter(|(_, d)| d["from"].is_null()).count();
    assert_eq!(
        created_new,
        2 + 3,
        "two batches and three tasks created after it opened"
    );
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "in seq order");
}
