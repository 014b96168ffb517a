//! Opening store files: creation, migration, reopening, and the files herd
//! must refuse.

mod common;

use herd_sql::{OpenError, SCHEMA_VERSION};

type SqliteStore = herd_sql::SqliteStore<String, String>;

fn location(dir: &tempfile::TempDir, name: &str) -> String {
    format!("sqlite:{}", dir.path().join(name).display())
}

#[tokio::test]
async fn a_new_file_gets_the_schema_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&location(&dir, "nested/dir/herd.db"))
        .await
        .unwrap();
    assert!(store.path().exists());
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' \
         AND name != 'sqlite_sequence' ORDER BY name",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(tables, common::TABLES);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(keys, 1);
}

#[tokio::test]
async fn reopening_keeps_the_data_and_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let at = location(&dir, "herd.db");
    let store = SqliteStore::open(&at).await.unwrap();
    sqlx::query(
        "INSERT INTO workers (host, pid, started_at, last_heartbeat) VALUES ('h', 1, 0, 0)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    store.pool().close().await;
    let again = SqliteStore::open(&at).await.unwrap();
    let workers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM workers")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(workers, 1);
    assert_eq!(again.schema_version().await.unwrap(), SCHEMA_VERSION);
}

/// A file of schema version 1 (before attempt logs) is migrated on open;
/// its attempts read back without logs.
#[tokio::test]
async fn a_version_1_file_is_migrated_keeping_its_attempts() {
    use herd_core::model::{Attempt, Reason, TaskId, TaskState, Timestamp};
    use herd_core::store::{AttemptInfo, Store};
    use std::str::FromStr;

    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/sqlite/0001_schema.sql"
        ),
        v1.join("0001_schema.sql"),
    )
    .unwrap();
    let at = location(&dir, "herd.db");
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&at)
        .unwrap()
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let migrator = sqlx::migrate::Migrator::new(v1.as_path()).await.unwrap();
    migrator.run(&pool).await.unwrap();
    for statement in [
        "INSERT INTO batches (id, flow, state, priority, concurrency, policy, error_policy, open, \
         paused, created_at) VALUES (1, 'f', 'running', 0, 1, '{}', '{}', 0, 0, 0)",
        "INSERT INTO tasks (id, batch_id, idx, priority, cost, payload, state, attempt, rule) \
         VALUES (1, 1, 0, 0, 1, '\"p\"', 'retry_wait', 1, 'success')",
        "INSERT INTO attempts (task_id, attempt, started_at, finished_at, outcome, reason, \
         exit_code, error) VALUES (1, 1, 5, 6, 'retry_wait', 'exit_code(2)', 2, 'boom')",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool.close().await;

    let store = SqliteStore::open(&at).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let attempts = store.task_attempts(TaskId(1)).await.unwrap();
    assert_eq!(
        attempts,
        [AttemptInfo {
            attempt: Attempt(1),
            worker: None,
            started_at: Timestamp(5),
            finished_at: Some(Timestamp(6)),
            state: Some(TaskState::RetryWait),
            reason: Some(Reason::ExitCode(2)),
            message: Some("boom".into()),
            log: None,
        }]
    );
}

/// A version-2 file with live batches gets each batch's head on migration
/// (version 3 ranks claims by it): a claim after the upgrade finds the
/// queued tasks stored before it, best priority first, and skips the
/// paused batch. Its events, one row each, read back as they were
/// (version 5 stores runs of events). The version-2 file is made from a
/// current one, with versions 3 to 5 undone (4 changes nothing on SQLite).
#[tokio::test]
async fn a_version_2_file_is_migrated_with_its_batch_heads() {
    use herd_core::model::Priority;
    use herd_core::store::{ClaimRequest, Store};
    use herd_core::{BatchSpec, TaskSpec, Timestamp};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let at = location(&dir, "herd.db");
    let store = SqliteStore::open(&at).await.unwrap();
    let mut live = BatchSpec::new("flow");
    live.concurrency = 4;
    live.tasks = vec![
        TaskSpec::new("low".to_string()),
        TaskSpec {
            priority: Some(Priority(5)),
            cost: 2,
            ..TaskSpec::new("high".to_string())
        },
    ];
    store.batch_insert(live, Timestamp(1)).await.unwrap();
    let mut paused = BatchSpec::new("flow");
    paused.priority = Priority(9);
    paused.paused = true;
    paused.tasks = vec![TaskSpec::new("paused".to_string())];
    store.batch_insert(paused, Timestamp(1)).await.unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    for statement in [
        "DROP INDEX batches_ranked",
        "ALTER TABLE batches DROP COLUMN head_priority",
        "ALTER TABLE batches DROP COLUMN head_cost",
        "DROP TABLE events",
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, \
         batch_id INTEGER NOT NULL, kind TEXT NOT NULL, task_id INTEGER, idx INTEGER, \
         attempt INTEGER, from_state TEXT, to_state TEXT NOT NULL, reason TEXT)",
        "CREATE INDEX events_batch ON events (batch_id, seq)",
        "INSERT INTO events VALUES (1, 1, 1, 'batch', NULL, NULL, NULL, NULL, 'queued', NULL), \
         (2, 1, 1, 'task', 1, 0, 0, NULL, 'queued', NULL), \
         (3, 7, 1, 'task', 2, 1, 3, 'running', 'retry_wait', 'exit_code(-2)'), \
         (4, 8, 1, 'batch', NULL, NULL, NULL, 'queued', 'running', NULL)",
        "DELETE FROM _sqlx_migrations WHERE version >= 3",
    ] {
        // On one connection: a pooled one may not see the others' schema
        // change in time.
        sqlx::query(statement).execute(&mut *conn).await.unwrap();
    }
    drop(conn);
    assert_eq!(store.schema_version().await.unwrap(), 2);
    store.pool().close().await;

    let store = SqliteStore::open(&at).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let heads: Vec<(Option<i64>, Option<i64>)> =
        sqlx::query_as("SELECT head_priority, head_cost FROM batches ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(heads, [(Some(5), Some(2)), (Some(9), Some(1))]);
    let events = store
        .event_list(herd_core::store::EventQuery {
            after: 1,
            batch: None,
            limit: 10,
        })
        .await
        .unwrap();
    let task = |seq, at, task, index, attempt, from, to, reason| herd_core::Event {
        seq,
        at: Timestamp(at),
        batch: herd_core::BatchId(1),
        kind: herd_core::EventKind::Task {
            task: herd_core::TaskId(task),
            index,
            attempt: herd_core::model::Attempt(attempt),
            from,
            to,
            reason,
        },
    };
    use herd_core::{BatchState, Reason, TaskState};
    assert_eq!(
        events,
        [
            task(2, 1, 1, 0, 0, None, TaskState::Queued, None),
            task(
                3,
                7,
                2,
                1,
                3,
                Some(TaskState::Running),
                TaskState::RetryWait,
                Some(Reason::ExitCode(-2))
            ),
            herd_core::Event {
                seq: 4,
                at: Timestamp(8),
                batch: herd_core::BatchId(1),
                kind: herd_core::EventKind::Batch {
                    from: Some(BatchState::Queued),
                    to: BatchState::Running,
                },
            },
        ]
    );
    let worker = store.worker_register("h", 1, Timestamp(1)).await.unwrap();
    let request = ClaimRequest {
        worker,
        capacity: 4,
        max_tasks: 4,
        lease: Duration::from_secs(30),
        batch: None,
    };
    let claimed = store.task_claim(request, Timestamp(2)).await.unwrap();
    let claimed: Vec<&str> = claimed.tasks.iter().map(|t| t.payload.as_str()).collect();
    assert_eq!(claimed, ["high", "low"]);
}

#[tokio::test]
async fn a_newer_schema_is_refused_without_touching_it() {
    let dir = tempfile::tempdir().unwrap();
    let at = location(&dir, "herd.db");
    let store = SqliteStore::open(&at).await.unwrap();
    // What a later herd would have recorded.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from the future', TRUE, x'00', 0)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    store.pool().close().await;

    let err = SqliteStore::open(&at).await.unwrap_err();
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
    let message = err.to_string();
    assert!(
        message.contains("schema version 99") && message.contains("upgrade herd"),
        "{message}"
    );
}

#[tokio::test]
async fn a_read_only_store_is_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let at = location(&dir, "herd.db");
    SqliteStore::open(&at).await.unwrap().pool().close().await;
    // Root ignores file permissions, so open the file read-only instead.
    let err = SqliteStore::open(&format!("{at}?mode=ro"))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::ReadOnly { .. }), "{err:?}");
    assert!(err.to_string().contains("is read-only"), "{err}");
}

#[tokio::test]
async fn other_kinds_of_location_are_refused() {
    let err = SqliteStore::open("postgres://postgres@127.0.0.1:5432/test")
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::UnknownKind { .. }), "{err:?}");
    assert!(err.to_string().contains("use sqlite:PATH"), "{err}");
}

#[tokio::test]
async fn an_unopenable_location_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be.
    std::fs::create_dir(dir.path().join("herd.db")).unwrap();
    let err = SqliteStore::open(&location(&dir, "herd.db"))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("cannot open the store at"),
        "{err}"
    );
}

#[tokio::test]
async fn a_rejected_submit_stores_nothing() {
    use herd_core::store::Store;
    use herd_core::{BatchSpec, TaskSpec, Timestamp};

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&location(&dir, "herd.db")).await.unwrap();
    let mut spec = BatchSpec::new("flow");
    spec.concurrency = 2;
    spec.tasks = vec![
        TaskSpec::new("fits".to_string()),
        TaskSpec {
            cost: 3,
            ..TaskSpec::new("too big".to_string())
        },
    ];
    let err = store.batch_insert(spec, Timestamp(1)).await.unwrap_err();
    assert!(err.to_string().contains("cost"), "{err}");
    for table in common::TABLES.iter().filter(|t| **t != "herd_meta") {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(rows, 0, "{table}");
    }
}
