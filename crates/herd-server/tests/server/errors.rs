//! A table of bad requests: each gets a 4xx with the one error shape (the
//! field named where there is one), never a 500, and stores nothing.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

use super::support::{Harness, config};

struct Bad {
    method: Method,
    uri: &'static str,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

fn create(body: Value, status: u16, code: &'static str, field: Option<&'static str>) -> Bad {
    Bad {
        method: Method::POST,
        uri: "/api/batches",
        content_type: Some("application/json"),
        body: body.to_string(),
        status,
        code,
        field,
    }
}

fn raw(
    method: Method,
    uri: &'static str,
    content_type: Option<&'static str>,
    body: &str,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
) -> Bad {
    Bad {
        method,
        uri,
        content_type,
        body: body.to_string(),
        status,
        code,
        field,
    }
}

fn get(uri: &'static str, status: u16, code: &'static str, field: Option<&'static str>) -> Bad {
    raw(Method::GET, uri, None, "", status, code, field)
}

#[tokio::test]
async fn bad_requests_get_a_clear_4xx_and_store_nothing() {
    let mut c = config();
    c.max_records = 3;
    c.max_body_bytes = 4096;
    let h = Harness::idle(c).await;
    let echo = json!(["echo", "{}"]);
    let ok = |extra: Value| {
        let mut body = json!({"command": echo, "records": ["a"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let ndjson = Some("application/x-ndjson");
    let table = vec![
        raw(
            Method::POST,
            "/api/batches",
            Some("application/json"),
            "{\"command\": ",
            400,
            "malformed_json",
            None,
        ),
        raw(
            Method::POST,
            "/api/batches",
            Some("application/json"),
            "{} {}",
            400,
            "malformed_json",
            None,
        ),
        raw(
            Method::POST,
            "/api/batches",
            Some("application/json"),
            "",
            400,
            "malformed_json",
            None,
        ),
        create(json!([1, 2]), 422, "invalid_field", None),
        create(
            ok(json!({"concurency": 2})),
            422,
            "invalid_field",
            Some("concurency"),
        ),
        create(
            ok(json!({"concurrency": "four"})),
            422,
            "invalid_field",
            Some("concurrency"),
        ),
        create(
            ok(json!({"concurrency": 0})),
            422,
            "invalid_field",
            Some("concurrency"),
        ),
        create(
            json!({"records": ["a"]}),
            422,
            "invalid_field",
            Some("command"),
        ),
        create(
            json!({"flow": "nope", "records": ["a"]}),
            422,
            "unknown_flow",
            Some("flow"),
        ),
        create(
            ok(json!({"timeout": "ten"})),
            422,
            "invalid_field",
            Some("timeout"),
        ),
        create(
            ok(json!({"timeout": "0s"})),
            422,
            "invalid_field",
            Some("timeout"),
        ),
        create(
            ok(json!({"grace": "soon"})),
            422,
            "invalid_field",
            Some("grace"),
        ),
        create(
            ok(json!({"deadline": "-1h"})),
            422,
            "invalid_field",
            Some("deadline"),
        ),
        create(
            ok(json!({"retry": {"retries": 1, "backoff": "fast"}})),
            422,
            "invalid_field",
            Some("retry"),
        ),
        create(
            ok(json!({"retry": -1})),
            422,
            "invalid_field",
            Some("retry"),
        ),
        create(
            ok(json!({"priority": "urgent"})),
            422,
            "invalid_field",
            Some("priority"),
        ),
        create(
            ok(json!({"error_policy": "explode"})),
            422,
            "invalid_field",
            Some("error_policy"),
        ),
        create(
            ok(json!({"max_failures": "lots"})),
            422,
            "invalid_field",
            Some("max_failures"),
        ),
        create(
            ok(json!({"max_failures": 0})),
            422,
            "invalid_field",
            Some("max_failures"),
        ),
        create(
            ok(json!({"chunk_size": 0})),
            422,
            "invalid_field",
            Some("chunk_size"),
        ),
        create(
            ok(json!({"size_class": "huge"})),
            422,
            "invalid_field",
            Some("size_class"),
        ),
        create(
            ok(json!({"chunk_size": 2, "size_class": "simple"})),
            422,
            "invalid_field",
            Some("size_class"),
        ),
        create(
            ok(json!({"tasks": [{"record": "a"}]})),
            422,
            "invalid_field",
            Some("tasks"),
        ),
        create(
            json!({"command": echo}),
            422,
            "invalid_field",
            Some("records"),
        ),
        create(
            json!({"command": echo, "records": ["a", null]}),
            422,
            "invalid_field",
            Some("records[1]"),
        ),
        create(
            json!({"command": ["echo", "{name}"], "records": [{"name": "a"}, {"nom": "b"}]}),
            422,
            "invalid_field",
            Some("records[1]"),
        ),
        create(
            json!({"command": ["echo", "{bad"], "records": ["a"]}),
            422,
            "invalid_field",
            Some("command"),
        ),
        create(
            json!({"command": [], "records": ["a"]}),
            422,
            "invalid_field",
            Some("command"),
        ),
        create(
            json!({"command": echo, "records": ["a", "b", "c", "d"]}),
            413,
            "too_many_records",
            Some("records"),
        ),
        create(
            json!({"command": echo, "tasks": [{"key": "a", "after": ["c"]}, {"key": "b", "after": ["a"]}, {"key": "c", "after": ["b"]}]}),
            422,
            "dependency_cycle",
            Some("tasks"),
        ),
        create(
            json!({"command": echo, "tasks": [{"key": "a", "after": ["ghost"]}]}),
            422,
            "invalid_field",
            Some("tasks"),
        ),
        create(
            json!({"command": echo, "tasks": [{"key": "a"}, {"key": "a"}]}),
            422,
            "invalid_field",
            Some("tasks"),
        ),
        create(
            json!({"command": echo, "tasks": [{"key": "a", "cost": 9}]}),
            422,
            "invalid_field",
            Some("cost"),
        ),
        create(
            json!({"command": echo, "tasks": [{"key": "a", "afterr": []}]}),
            422,
            "invalid_field",
            Some("tasks[0].afterr"),
        ),
        raw(
            Method::POST,
            "/api/batches",
            Some("application/json"),
            &format!(
                "{{\"command\": \"echo\", \"records\": [\"{}\"]}}",
                "x".repeat(5000)
            ),
            413,
            "body_too_large",
            None,
        ),
        raw(
            Method::POST,
            "/api/batches",
            Some("text/plain"),
            "echo",
            415,
            "unsupported_media_type",
            None,
        ),
        raw(
            Method::POST,
            "/api/batches?command=echo",
            ndjson,
            "\"a\"\n{oops\n",
            400,
            "malformed_ndjson",
            Some("records[1]"),
        ),
        raw(
            Method::POST,
            "/api/batches?command=echo&concurrency=abc",
            ndjson,
            "\"a\"\n",
            422,
            "invalid_field",
            Some("concurrency"),
        ),
        raw(
            Method::POST,
            "/api/batches?command=echo&records=1",
            ndjson,
            "\"a\"\n",
            422,
            "invalid_field",
            Some("records"),
        ),
        raw(
            Method::POST,
            "/api/batches?concurrency=2",
            ndjson,
            "\"a\"\n",
            422,
            "invalid_field",
            Some("command"),
        ),
        get("/api/batches/b999", 404, "unknown_batch", None),
        get("/api/batches/xyz", 400, "invalid_id", Some("id")),
        get(
            "/api/batches?state=nope",
            422,
            "invalid_field",
            Some("state"),
        ),
        get("/api/batches?limit=0", 422, "invalid_field", Some("limit")),
        get("/api/batches?limit=x", 400, "invalid_query", None),
        get("/api/batches?bogus=1", 400, "invalid_query", None),
        get("/api/batches?cursor=zz", 400, "invalid_id", Some("cursor")),
        get("/api/batches/b999/tasks", 404, "unknown_batch", None),
        get("/api/batches/b999/tasks/1", 404, "unknown_batch", None),
        get("/api/batches/b999/export", 404, "unknown_batch", None),
        get("/api/batches/b999/events", 404, "unknown_batch", None),
        get("/api/nope", 404, "not_found", None),
        get("/nope", 404, "not_found", None),
        raw(
            Method::DELETE,
            "/api/batches/b999",
            None,
            "",
            404,
            "unknown_batch",
            None,
        ),
        raw(
            Method::DELETE,
            "/api/batches/b999?purge=true",
            None,
            "",
            404,
            "unknown_batch",
            None,
        ),
        raw(
            Method::POST,
            "/api/batches/b999/pause",
            None,
            "",
            404,
            "unknown_batch",
            None,
        ),
        raw(
            Method::POST,
            "/api/batches/b999/resume",
            None,
            "",
            404,
            "unknown_batch",
            None,
        ),
        raw(
            Method::POST,
            "/api/batches/b999/retry",
            None,
            "",
            404,
            "unknown_batch",
            None,
        ),
        raw(
            Method::PUT,
            "/api/batches",
            None,
            "",
            405,
            "method_not_allowed",
            None,
        ),
        raw(
            Method::POST,
            "/healthz",
            None,
            "",
            405,
            "method_not_allowed",
            None,
        ),
    ];
    let mut failures = Vec::new();
    for bad in &table {
        let mut request = Request::builder().method(bad.method.clone()).uri(bad.uri);
        if let Some(ct) = bad.content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let answer = h
            .send(request.body(Body::from(bad.body.clone())).unwrap())
            .await;
        let label = format!("{} {} {:.80}", bad.method, bad.uri, bad.body);
        assert!(
            answer.status.as_u16() < 500,
            "{label}: a 5xx: {}",
            answer.text()
        );
        let json: Value = match serde_json::from_slice(&answer.body) {
            Ok(json) => json,
            Err(_) => {
                failures.push(format!("{label}: not JSON: {}", answer.text()));
                continue;
            }
        };
        let keys: Vec<&String> = json
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        if keys != ["error", "field", "message"] {
            failures.push(format!("{label}: shape {json}"));
        }
        let got = (
            answer.status.as_u16(),
            json["error"].as_str().unwrap_or_default().to_string(),
            json["field"].as_str().map(String::from),
        );
        let want = (
            bad.status,
            bad.code.to_string(),
            bad.field.map(String::from),
        );
        if got != want {
            failures.push(format!(
                "{label}: got {got:?}, want {want:?}: {}",
                json["message"]
            ));
        }
        if json["message"].as_str().is_none_or(|m| m.len() < 10) {
            failures.push(format!("{label}: no useful message: {json}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad answers:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(h.batch_count().await, 0, "a bad request stores nothing");
    let _ = StatusCode::OK;
}

#[tokio::test]
async fn a_bad_last_event_id_is_a_400() {
    let h = Harness::idle(config()).await;
    let id = h.create(json!({"command": "true", "records": ["a"]})).await;
    let request = Request::builder()
        .uri(format!("/api/batches/{id}/events"))
        .header("last-event-id", "yesterday")
        .body(Body::empty())
        .unwrap();
    let answer = h.send(request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"], "invalid_last_event_id");
}
