//! What the store tests share: where the test database is, and fresh
//! schemas in it.

#![allow(dead_code)]

use std::io::Write;
use std::sync::Once;

/// herd's tables, as both schemas name them (`herd_meta` holds one row
/// from the start; the others are empty in a new store).
pub const TABLES: [&str; 7] = [
    "attempts",
    "batches",
    "events",
    "herd_meta",
    "task_deps",
    "tasks",
    "workers",
];

/// The PostgreSQL test database, from `HERD_TEST_DATABASE_URL`.
///
/// Without it, PostgreSQL tests are skipped, said once in one loud line on
/// stderr (past the test harness's capture); with `HERD_REQUIRE_POSTGRES=1`
/// (as `.ci/run` sets) a missing database fails the run instead.
pub fn postgres_url() -> Option<String> {
    static SKIPPED: Once = Once::new();
    match std::env::var("HERD_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("HERD_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!(
                    "HERD_REQUIRE_POSTGRES=1 but HERD_TEST_DATABASE_URL is not set: \
                     point it at a PostgreSQL database (postgres://postgres@127.0.0.1:5432/test)"
                );
            }
            SKIPPED.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED: PostgreSQL store tests: HERD_TEST_DATABASE_URL is not set \
                     (e.g. postgres://postgres@127.0.0.1:5432/test) ***\n"
                );
            });
            None
        }
    }
}

/// A PostgreSQL store in schema `schema`, emptied first.
pub async fn fresh_postgres(url: &str, schema: &str) -> herd_sql::PgStore<String, String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test database {url}: {e}"));
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .expect("the old schema is dropped");
    conn.close().await.ok();
    herd_sql::PgStore::<String, String>::connect_in_schema(url, schema)
        .await
        .unwrap_or_else(|e| panic!("the store opens in schema {schema}: {e}"))
}
