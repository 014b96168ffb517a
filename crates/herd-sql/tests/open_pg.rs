//! Connecting to PostgreSQL stores: migration into a schema, and the
//! databases herd must refuse, each with an error that says what to do.

mod common;

use herd_core::store::Store;
use herd_core::{BatchSpec, TaskSpec, Timestamp};
use herd_sql::{OpenError, PgStore, SCHEMA_VERSION};

type Pg = PgStore<String, String>;

#[tokio::test]
async fn a_new_schema_gets_the_tables_and_reconnecting_keeps_them() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let store = common::fresh_postgres(&url, "open_new_schema").await;
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'open_new_schema' AND table_name NOT LIKE '\\_%' ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(tables, common::TABLES);
    store.worker_register("h", 1, Timestamp(0)).await.unwrap();
    let again = Pg::connect_in_schema(&url, "open_new_schema")
        .await
        .unwrap();
    let workers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM workers")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(workers, 1);
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let store = common::fresh_postgres(&url, "open_newer_schema").await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let err = Pg::connect_in_schema(&url, "open_newer_schema")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::NewerSchema {
                found: 99,
                known: SCHEMA_VERSION,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade herd"), "{err}");
}

#[tokio::test]
async fn an_unreachable_database_says_so() {
    // Nothing listens on port 1.
    let err = Pg::connect("postgres://postgres:secret@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::Open { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("cannot open the store at postgres://postgres:***@127.0.0.1:1/test")
            && message.contains("reachable"),
        "{message}"
    );
}

#[tokio::test]
async fn a_read_only_database_is_refused() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    let read_only = format!("{url}{separator}options=-c%20default_transaction_read_only%3Don");
    let err = Pg::connect_in_schema(&read_only, "open_read_only")
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::ReadOnly { .. }), "{err:?}");
}

#[tokio::test]
async fn other_kinds_of_location_are_refused() {
    for bad in ["sqlite:/tmp/herd.db", "mysql://root@localhost/x", "herd.db"] {
        let err = Pg::connect(bad).await.unwrap_err();
        assert!(
            matches!(err, OpenError::UnknownKind { .. }),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().contains("postgres://"), "{err}");
    }
}

#[tokio::test]
async fn a_rejected_submit_stores_nothing() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let store = common::fresh_postgres(&url, "open_rejected_submit").await;
    let mut spec = BatchSpec::new("flow");
    spec.tasks = vec![
        TaskSpec {
            key: Some("a".into()),
            after: vec!["b".into()],
            ..TaskSpec::new("a".to_string())
        },
        TaskSpec {
            key: Some("b".into()),
            after: vec!["a".into()],
            ..TaskSpec::new("b".to_string())
        },
    ];
    let err = store.batch_insert(spec, Timestamp(1)).await.unwrap_err();
    assert!(err.to_string().contains("cycle"), "{err}");
    for table in common::TABLES.iter().filter(|t| **t != "herd_meta") {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(rows, 0, "{table}");
    }
}

#[tokio::test]
async fn closing_the_pool_does_not_wait_for_the_listener() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let store = common::fresh_postgres(&url, "open_close_pool").await;
    tokio::time::timeout(std::time::Duration::from_secs(10), store.pool().close())
        .await
        .expect("the pool closes: no connection of it is held for the store's life");
}

/// Schema version 4 dropped the foreign key from attempts to tasks (its
/// check cost a trigger call per attempt written): a purge deletes the
/// attempts itself, and only with the batch.
#[tokio::test]
async fn a_purge_takes_the_attempts_without_a_foreign_key() {
    use herd_core::store::{AttemptOutcome, ClaimRequest, Completion, Fence};
    let Some(url) = common::postgres_url() else {
        return;
    };
    let store = common::fresh_postgres(&url, "open_purge_attempts").await;
    let keys: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_constraint \
         WHERE conrelid = 'attempts'::regclass AND contype = 'f'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(keys, 0, "attempts have no foreign key");
    let worker = store.worker_register("h", 1, Timestamp(1)).await.unwrap();
    let attempts = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM attempts")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    let mut batches = Vec::new();
    for name in ["purged", "kept"] {
        let mut spec = BatchSpec::new(name);
        spec.concurrency = 2;
        spec.tasks = vec![TaskSpec::new("a".to_string()), TaskSpec::new("b".into())];
        let batch = store.batch_insert(spec, Timestamp(1)).await.unwrap().batch;
        let request = ClaimRequest {
            worker,
            capacity: 2,
            max_tasks: 2,
            lease: std::time::Duration::from_secs(30),
            batch: Some(batch),
        };
        let claim = store.task_claim(request, Timestamp(2)).await.unwrap();
        let ended = claim
            .tasks
            .iter()
            .map(|t| Completion {
                fence: Fence {
                    task: t.id,
                    attempt: t.attempt,
                },
                outcome: AttemptOutcome::Succeeded { output: None },
                duration: std::time::Duration::from_millis(1),
                log: None,
            })
            .collect();
        store
            .task_complete(worker, ended, Timestamp(3))
            .await
            .unwrap();
        batches.push(batch);
    }
    assert_eq!(attempts().await, 4);
    // A live batch is not purged, and its attempts stay with it.
    let mut live = BatchSpec::new("live");
    live.tasks = vec![TaskSpec::new("c".to_string())];
    let live = store.batch_insert(live, Timestamp(4)).await.unwrap().batch;
    assert!(store.batch_purge(live).await.is_err());
    store.batch_purge(batches[0]).await.unwrap();
    assert_eq!(attempts().await, 2, "the purged batch's attempts are gone");
    let left: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT t.batch_id FROM attempts a JOIN tasks t ON t.id = a.task_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        left,
        vec![batches[1].0],
        "the other batch keeps its attempts"
    );
}

/// A version-4 schema's events, one row each, read back as they were once
/// the schema is at version 5 (runs of events in one row). The version-4
/// events table is made from a current schema, version 5 undone.
#[tokio::test]
async fn version_4_events_are_migrated() {
    use herd_core::model::Attempt;
    use herd_core::store::EventQuery;
    use herd_core::{BatchId, BatchState, Event, EventKind, Reason, TaskId, TaskState};
    let Some(url) = common::postgres_url() else {
        return;
    };
    let store = common::fresh_postgres(&url, "open_events_v4").await;
    for statement in [
        "DROP TABLE events",
        "CREATE TABLE events (seq BIGINT PRIMARY KEY, at BIGINT NOT NULL, \
         batch_id BIGINT NOT NULL, kind TEXT NOT NULL, task_id BIGINT, idx BIGINT, \
         attempt BIGINT, from_state TEXT, to_state TEXT NOT NULL, reason TEXT)",
        "CREATE INDEX events_batch ON events (batch_id, seq)",
        "INSERT INTO events VALUES (1, 1, 1, 'batch', NULL, NULL, NULL, NULL, 'queued', NULL), \
         (2, 7, 1, 'task', 2, 1, 3, 'running', 'retry_wait', 'exit_code(-2)')",
        "DELETE FROM _sqlx_migrations WHERE version >= 5",
    ] {
        sqlx::query(statement).execute(store.pool()).await.unwrap();
    }
    assert_eq!(store.schema_version().await.unwrap(), 4);
    store.pool().close().await;

    let store = Pg::connect_in_schema(&url, "open_events_v4").await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let events = store
        .event_list(EventQuery {
            after: 0,
            batch: Some(BatchId(1)),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(
        events,
        [
            Event {
                seq: 1,
                at: Timestamp(1),
                batch: BatchId(1),
                kind: EventKind::Batch {
                    from: None,
                    to: BatchState::Queued,
                },
            },
            Event {
                seq: 2,
                at: Timestamp(7),
                batch: BatchId(1),
                kind: EventKind::Task {
                    task: TaskId(2),
                    index: 1,
                    attempt: Attempt(3),
                    from: Some(TaskState::Running),
                    to: TaskState::RetryWait,
                    reason: Some(Reason::ExitCode(-2)),
                },
            },
        ]
    );
}
