//! Every endpoint through the router: what it answers and what it does.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use herd_core::BatchId;
use herd_core::EventKind;
use herd_core::store::{EventQuery, Store};
use serde_json::{Value, json};

use super::support::{Harness, config, shell};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_every_record_and_reports_its_figures() {
    let h = Harness::running(config()).await;
    let answer = h
        .post(
            "/api/batches",
            json!({"command": ["echo", "hi", "{}"], "records": ["a", "b", "c"], "name": "greet"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    let created = answer.json();
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        answer.headers[header::LOCATION],
        format!("/api/batches/{id}")
    );
    assert_eq!(created["counts"]["total"], 3);
    assert_eq!(created["name"], "greet");

    let done = h.finished(id).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["counts"]["succeeded"], 3);
    assert_eq!(done["progress"]["percent"], 100.0);
    assert!(done["stats"]["p50_ms"].as_f64().unwrap() > 0.0, "{done}");
    assert!(done["stats"]["p99_ms"].as_f64().unwrap() >= done["stats"]["p50_ms"].as_f64().unwrap());
    assert!(done["stats"]["throughput"].as_f64().unwrap() > 0.0);
    assert!(done["timings"]["finished_at"].is_string());

    let task = h.get(&format!("/api/batches/{id}/tasks/2")).await.json();
    assert_eq!(task["argv"], json!(["echo", "hi", "b"]));
    assert_eq!(task["last_attempt"]["stdout"], "hi b\n");
    assert_eq!(task["exit_code"], 0);
}

#[tokio::test]
async fn batches_list_newest_first_by_state_with_a_cursor() {
    let h = Harness::idle(config()).await;
    let b1 = h.create(json!({"command": "true", "records": ["x"]})).await;
    let b2 = h
        .create(json!({"command": "true", "records": ["x"], "paused": true}))
        .await;
    let b3 = h.create(json!({"command": "true", "records": ["x"]})).await;
    let ids = |v: &Value| -> Vec<String> {
        v["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    };
    let page = h.get("/api/batches?limit=2").await.json();
    assert_eq!(ids(&page), [b3.clone(), b2.clone()]);
    assert_eq!(page["next_cursor"], b2);
    let rest = h
        .get(&format!("/api/batches?limit=2&cursor={b2}"))
        .await
        .json();
    assert_eq!(ids(&rest), [b1.as_str()]);
    assert_eq!(rest["next_cursor"], Value::Null);
    let paused = h.get("/api/batches?state=paused").await.json();
    assert_eq!(ids(&paused), [b2.as_str()]);
    let live = h.get("/api/batches?state=queued,paused").await.json();
    assert_eq!(ids(&live), [b3, b2, b1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_page_and_filter_and_a_task_shows_its_attempts_and_output() {
    let h = Harness::running(config()).await;
    let id = h
        .create(json!({
            "command": shell("echo out-{}; echo err-{} >&2; [ {} != 2 ]"),
            "shell": true,
            "records": ["1", "2", "3"],
        }))
        .await;
    let done = h.finished(&id).await;
    assert_eq!(done["state"], "partial");
    assert_eq!(done["counts"]["failed"], 1);

    let failed = h
        .get(&format!("/api/batches/{id}/tasks?state=failed"))
        .await
        .json();
    let jobs: Vec<&Value> = failed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["job"])
        .collect();
    assert_eq!(jobs, [&json!(2)]);

    let first = h
        .get(&format!("/api/batches/{id}/tasks?limit=2"))
        .await
        .json();
    assert_eq!(first["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(first["next_cursor"], "2");
    assert!(
        first["tasks"][0]["last_attempt"].get("stdout").is_none(),
        "no logs unless asked"
    );
    let rest = h
        .get(&format!(
            "/api/batches/{id}/tasks?limit=2&cursor=2&logs=true"
        ))
        .await
        .json();
    assert_eq!(rest["tasks"][0]["job"], 3);
    assert_eq!(rest["tasks"][0]["last_attempt"]["stdout"], "out-3\n");
    assert_eq!(rest["next_cursor"], Value::Null);

    let task = h.get(&format!("/api/batches/{id}/tasks/2")).await.json();
    assert_eq!(task["state"], "failed");
    assert_eq!(task["reason"], "exit_code(1)");
    assert_eq!(task["exit_code"], 1);
    let history = task["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["stdout"], "out-2\n");
    assert_eq!(history[0]["stderr"], "err-2\n");
    let by_id = h
        .get(&format!(
            "/api/batches/{id}/tasks/{}",
            task["id"].as_str().unwrap()
        ))
        .await
        .json();
    assert_eq!(by_id["job"], 2);
    let missing = h.get(&format!("/api/batches/{id}/tasks/9")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"], "unknown_task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_in_three_formats() {
    let h = Harness::running(config()).await;
    let id = h
        .create(json!({"command": ["echo", "{}"], "records": ["a,b", "c"]}))
        .await;
    h.finished(&id).await;
    let jsonl = h.get(&format!("/api/batches/{id}/export")).await;
    assert_eq!(jsonl.headers[header::CONTENT_TYPE], "application/x-ndjson");
    let lines: Vec<Value> = jsonl
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["last_attempt"]["stdout"], "a,b\n");
    let json = h
        .get(&format!("/api/batches/{id}/export?format=json"))
        .await
        .json();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[1]["items"], json!(["c"]));
    let csv = h.get(&format!("/api/batches/{id}/export?format=csv")).await;
    assert_eq!(csv.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    let mut reader = csv::Reader::from_reader(csv.body.as_slice());
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(&rows[0][7], "a,b", "a comma inside a field is quoted");
    assert_eq!(&rows[0][2], "succeeded");
}

#[tokio::test]
async fn pause_resume_and_cancel_change_the_batch() {
    let h = Harness::idle(config()).await;
    let id = h
        .create(json!({"command": "true", "records": ["a", "b"]}))
        .await;
    let paused = h.post(&format!("/api/batches/{id}/pause"), json!({})).await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text());
    assert_eq!(paused.json()["state"], "paused");
    let resumed = h
        .post(&format!("/api/batches/{id}/resume"), json!({}))
        .await
        .json();
    assert_eq!(resumed["state"], "queued");

    let purge_live = h
        .call(
            Method::DELETE,
            &format!("/api/batches/{id}?purge=true"),
            None,
        )
        .await;
    assert_eq!(purge_live.status, StatusCode::CONFLICT);
    assert_eq!(purge_live.json()["error"], "batch_live");

    let cancelled = h
        .call(Method::DELETE, &format!("/api/batches/{id}"), None)
        .await;
    assert_eq!(cancelled.status, StatusCode::OK);
    let cancelled = cancelled.json();
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["counts"]["cancelled"], 2);

    let purged = h
        .call(
            Method::DELETE,
            &format!("/api/batches/{id}?purge=true"),
            None,
        )
        .await;
    assert_eq!(purged.status, StatusCode::NO_CONTENT);
    assert!(purged.body.is_empty());
    assert_eq!(
        h.get(&format!("/api/batches/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(h.batch_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_batch_starts_nothing_until_resumed() {
    let mut h = Harness::idle(config()).await;
    let id = h
        .create(json!({"command": "true", "records": ["a"], "paused": true}))
        .await;
    h.start().await;
    // The worker is up and idle: a paused batch gives it nothing.
    let other = h.create(json!({"command": "true", "records": ["b"]})).await;
    h.finished(&other).await;
    let still = h.get(&format!("/api/batches/{id}")).await.json();
    assert_eq!(still["state"], "paused");
    assert_eq!(still["counts"]["queued"], 1);
    h.post(&format!("/api/batches/{id}/resume"), json!({}))
        .await;
    assert_eq!(h.finished(&id).await["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_runs_the_failures_of_a_finished_batch_again() {
    let h = Harness::running(config()).await;
    let marker = h.dir.path().join("marker");
    let id = h
        .create(json!({
            "command": shell("[ -e {} ] || {{ touch {}; exit 3; }}"),
            "shell": true,
            "records": [marker.display().to_string()],
        }))
        .await;
    let first = h.finished(&id).await;
    assert_eq!(first["state"], "partial", "{first}");
    let retried = h.post(&format!("/api/batches/{id}/retry"), json!({})).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text());
    assert_eq!(retried.json()["retried"], 1);
    let second = h.finished(&id).await;
    assert_eq!(second["state"], "succeeded");
    let task = h.get(&format!("/api/batches/{id}/tasks/1")).await.json();
    assert_eq!(task["attempt_history"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn retry_of_a_batch_still_running_is_a_conflict() {
    let h = Harness::idle(config()).await;
    let id = h.create(json!({"command": "true", "records": ["a"]})).await;
    let answer = h.post(&format!("/api/batches/{id}/retry"), json!({})).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.json()["error"], "batch_unfinished");
}

fn flows() -> herd_server::ServerConfig {
    let mut c = config();
    let file = herd_server::FileConfig::parse(
        r#"
        [flows.greet]
        command = ["echo", "hello", "{name}", "{greeting}"]
        parameters = { greeting = "hi" }
        concurrency = 1
        priority = "high"
        retry = { retries = 2, backoff = "1s" }
        timeout = "30s"
        "#,
    )
    .unwrap();
    c.flows = herd_server::ServerConfig::resolve(file, Default::default())
        .unwrap()
        .flows;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_gives_the_command_and_defaults_and_records_fill_its_fields() {
    let h = Harness::running(flows()).await;
    let answer = h
        .post(
            "/api/batches",
            json!({"flow": "greet", "records": [{"name": "ann"}, {"name": "bo", "greeting": "yo"}]}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    let created = answer.json();
    assert_eq!(created["flow"], "greet");
    assert_eq!(created["concurrency"], 1);
    assert_eq!(created["priority"], 100, "the flow's priority: high");
    let id = created["id"].as_str().unwrap();
    h.finished(id).await;
    let tasks = h
        .get(&format!("/api/batches/{id}/tasks?logs=true"))
        .await
        .json();
    assert_eq!(
        tasks["tasks"][0]["last_attempt"]["stdout"],
        "hello ann hi\n"
    );
    assert_eq!(tasks["tasks"][1]["last_attempt"]["stdout"], "hello bo yo\n");
    let info = h
        .store
        .batch_get(BatchId(id[1..].parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(info.policy.retry.max_attempts, 3);
    assert_eq!(
        info.policy.timeout,
        Some(std::time::Duration::from_secs(30))
    );
}

#[tokio::test]
async fn a_request_overrides_its_flows_defaults() {
    let h = Harness::idle(flows()).await;
    let created = h
        .post(
            "/api/batches",
            json!({"flow": "greet", "records": [{"name": "x"}], "concurrency": 3, "priority": "low"}),
        )
        .await
        .json();
    assert_eq!(created["concurrency"], 3);
    assert_eq!(created["priority"], -100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ndjson_body_carries_the_records_and_the_query_the_options() {
    let h = Harness::running(config()).await;
    let body = "{\"n\": 1}\n{\"n\": 2}\n\n{\"n\": 3}\n\"four\"\n{\"n\": 5}";
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/batches?command=echo%20n&concurrency=2&chunk_size=2&name=nd")
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from(body))
        .unwrap();
    let answer = h.send(request).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    let created = answer.json();
    assert_eq!(created["counts"]["total"], 3, "5 records, 2 a task");
    assert_eq!(created["concurrency"], 2);
    assert_eq!(created["name"], "nd");
    let id = created["id"].as_str().unwrap();
    h.finished(id).await;
    let task = h.get(&format!("/api/batches/{id}/tasks/2")).await.json();
    assert_eq!(task["items"], json!(["{\"n\":3}", "four"]));
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_first_batch() {
    let h = Harness::idle(config()).await;
    let body = json!({"command": "true", "records": ["a"], "idempotency_key": "nightly-42"});
    let first = h.post("/api/batches", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = h.post("/api/batches", body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(h.batch_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_with_after_run_in_dependency_order() {
    let h = Harness::running(config()).await;
    let id = h
        .create(json!({
            "command": ["echo", "{}"],
            "tasks": [
                {"key": "c", "record": "third", "after": ["b"]},
                {"key": "b", "record": "second", "after": ["a"]},
                {"key": "a", "record": "first"},
                {"key": "z", "record": "cleanup", "after": ["c"], "rule": "done"},
            ],
        }))
        .await;
    assert_eq!(h.finished(&id).await["state"], "succeeded");
    let events = h
        .store
        .event_list(EventQuery {
            after: 0,
            batch: Some(BatchId(id[1..].parse().unwrap())),
            limit: 1000,
        })
        .await
        .unwrap();
    // Job numbers: c=1, b=2, a=3, z=4. Each starts after its upstream succeeded.
    let at = |job: u64, state: &str| {
        events
            .iter()
            .position(|e| matches!(e.kind, EventKind::Task { index, to, .. } if index + 1 == job && to.as_str() == state))
            .unwrap_or_else(|| panic!("job {job} never {state}"))
    };
    assert!(at(3, "succeeded") < at(2, "running"));
    assert!(at(2, "succeeded") < at(1, "running"));
    assert!(at(1, "succeeded") < at(4, "running"));
}

#[tokio::test]
async fn shuffle_with_a_seed_and_max_records_pick_the_same_records() {
    let h = Harness::idle(config()).await;
    let records: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    let body = json!({"command": "echo", "records": records, "shuffle": 7, "max_records": 5});
    let a = h.create(body.clone()).await;
    let b = h.create(body).await;
    let items = |v: Value| -> Vec<Value> {
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["items"][0].clone())
            .collect()
    };
    let ia = items(h.get(&format!("/api/batches/{a}/tasks")).await.json());
    let ib = items(h.get(&format!("/api/batches/{b}/tasks")).await.json());
    assert_eq!(ia.len(), 5);
    assert_eq!(ia, ib, "the same seed, the same order");
    let first: Vec<Value> = (1..=5).map(|i| json!(i.to_string())).collect();
    assert_ne!(ia, first, "shuffled");
}

#[tokio::test]
async fn health_and_metrics_answer_without_a_token() {
    let h = Harness::idle(config()).await;
    h.create(json!({"command": "true", "records": ["a", "b", "c"]}))
        .await;
    let health = h.get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");
    let metrics = h.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text();
    for line in [
        "herd_queue_depth 3",
        "herd_tasks{state=\"queued\"} 3",
        "herd_worker_slots 4",
        "herd_batches_live 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let h = Harness::idle(config()).await;
    let doc = h.get("/openapi.json").await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/batches",
        "/api/batches/{id}",
        "/api/batches/{id}/pause",
        "/api/batches/{id}/resume",
        "/api/batches/{id}/retry",
        "/api/batches/{id}/tasks",
        "/api/batches/{id}/tasks/{task}",
        "/api/batches/{id}/export",
        "/api/batches/{id}/events",
        "/api/events",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from {:?}",
            paths.keys()
        );
    }
    let request = &doc["components"]["schemas"]["BatchRequest"]["properties"];
    for field in [
        "flow",
        "command",
        "records",
        "tasks",
        "concurrency",
        "error_policy",
        "idempotency_key",
    ] {
        assert!(
            request.get(field).is_some(),
            "BatchRequest.{field} missing: {request}"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let create = &doc["paths"]["/api/batches"]["post"];
    assert!(create["responses"].get("422").is_some(), "{create}");
}

#[tokio::test]
async fn exports_of_many_pages_are_whole_in_every_format() {
    let h = Harness::idle(config()).await;
    let records: Vec<String> = (0..2_345).map(|i| i.to_string()).collect();
    let id = h
        .create(json!({"command": "echo", "records": records}))
        .await;
    let json = h
        .get(&format!("/api/batches/{id}/export?format=json"))
        .await
        .json();
    let jobs: Vec<u64> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["job"].as_u64().unwrap())
        .collect();
    assert_eq!(jobs, (1..=2_345).collect::<Vec<_>>());
    let jsonl = h
        .get(&format!("/api/batches/{id}/export?format=jsonl"))
        .await
        .text();
    assert_eq!(jsonl.lines().count(), 2_345);
    let csv = h.get(&format!("/api/batches/{id}/export?format=csv")).await;
    let mut reader = csv::Reader::from_reader(csv.body.as_slice());
    assert_eq!(reader.headers().unwrap().get(0), Some("job"));
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2_345, "one header, then a row per task");
    assert_eq!(&rows[2_344][0], "2345");
    let empty = h
        .get(&format!("/api/batches/{id}/tasks?state=failed"))
        .await
        .json();
    assert_eq!(empty["tasks"], json!([]));
}
