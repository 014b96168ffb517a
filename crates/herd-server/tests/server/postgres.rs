//! The API over the PostgreSQL store (one schema per test), when
//! `HERD_TEST_DATABASE_URL` names a database.

use std::sync::Arc;

use axum::http::Method;
use herd_exec::CommandTask;
use serde_json::{Value, json};

use super::support::{Harness, config};

type Pg = herd_sql::PgStore<CommandTask, Value>;

async fn fresh(schema: &str) -> Option<Arc<Pg>> {
    let url = std::env::var("HERD_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("the test database");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    Some(Arc::new(Pg::connect_in_schema(&url, schema).await.unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_runs_batches_on_postgres() {
    let Some(store) = fresh("server_api").await else {
        eprintln!(
            "*** SKIPPED: herd-server PostgreSQL test: HERD_TEST_DATABASE_URL is not set ***"
        );
        return;
    };
    let mut h = Harness::over(store, config(), tempfile::tempdir().unwrap());
    h.start().await;
    let id = h
        .create(json!({
            "command": ["echo", "{}"],
            "tasks": [{"key": "a", "record": "a"}, {"key": "b", "record": "b", "after": ["a"]}],
        }))
        .await;
    let done = h.finished(&id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let task = h.get(&format!("/api/batches/{id}/tasks/2")).await.json();
    assert_eq!(task["last_attempt"]["stdout"], "b\n");
    let events = h
        .get(&format!("/api/batches/{id}/events?after=0"))
        .await
        .text();
    assert_eq!(events.matches("event: task").count(), 7, "{events}");
    assert!(
        events.trim_end().ends_with("\"to\":\"succeeded\"}"),
        "{events}"
    );
    let purged = h
        .call(
            Method::DELETE,
            &format!("/api/batches/{id}?purge=true"),
            None,
        )
        .await;
    assert_eq!(purged.status.as_u16(), 204);
    assert_eq!(h.batch_count().await, 0);
}
