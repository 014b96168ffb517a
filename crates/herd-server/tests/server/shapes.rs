//! The JSON shapes of the API, as snapshots (ids and times redacted).

use axum::http::Method;
use serde_json::json;

use super::support::{Harness, config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_shapes() {
    let mut h = Harness::idle(config()).await;
    let created = h
        .post(
            "/api/batches",
            json!({"command": ["echo", "{}"], "records": ["a", "b"], "name": "shapes", "priority": "high"}),
        )
        .await
        .json();
    insta::assert_json_snapshot!("batch_created", created, {
        ".id" => "[id]",
        ".timings.created_at" => "[time]",
    });
    let error = h
        .post(
            "/api/batches",
            json!({"command": "echo", "records": ["a"], "timeout": "ten"}),
        )
        .await
        .json();
    insta::assert_json_snapshot!("error_invalid_field", error);
    let missing = h.get("/api/batches/b999").await.json();
    insta::assert_json_snapshot!("error_unknown_batch", missing);

    h.start().await;
    let id = created["id"].as_str().unwrap();
    let done = h.finished(id).await;
    insta::assert_json_snapshot!("batch_finished", done, {
        ".id" => "[id]",
        ".timings.created_at" => "[time]",
        ".timings.started_at" => "[time]",
        ".timings.finished_at" => "[time]",
        ".stats.p50_ms" => "[ms]",
        ".stats.p95_ms" => "[ms]",
        ".stats.p99_ms" => "[ms]",
        ".stats.wall_ms" => "[ms]",
        ".stats.throughput" => "[figure]",
    });
    let task = h.get(&format!("/api/batches/{id}/tasks/1")).await.json();
    insta::assert_json_snapshot!("task", task, {
        ".id" => "[id]",
        ".duration_ms" => "[ms]",
        ".last_attempt.started_at" => "[time]",
        ".last_attempt.finished_at" => "[time]",
        ".last_attempt.duration_ms" => "[ms]",
        ".last_attempt.worker" => "[id]",
        ".attempt_history[].started_at" => "[time]",
        ".attempt_history[].finished_at" => "[time]",
        ".attempt_history[].duration_ms" => "[ms]",
        ".attempt_history[].worker" => "[id]",
    });
    let list = h.get("/api/batches").await.json();
    insta::assert_json_snapshot!("batch_list", list, {
        ".batches[].id" => "[id]",
        ".batches[].timings.created_at" => "[time]",
        ".batches[].timings.started_at" => "[time]",
        ".batches[].timings.finished_at" => "[time]",
    });
    let cancelled = h
        .call(
            Method::DELETE,
            &format!("/api/batches/{id}?purge=true"),
            None,
        )
        .await;
    assert_eq!(cancelled.status.as_u16(), 204);
}
