//! The store conformance suite against the SQLite store, one file per case.

use herd_sql::SqliteStore;

herd_core::store_conformance!(|case: &'static str| async move {
    let dir = tempfile::Builder::new()
        .prefix(case)
        .tempdir()
        .expect("a temporary directory");
    // The directory lives as long as the test process; the OS cleans /tmp.
    let path = dir.keep().join("herd.db");
    SqliteStore::<String, String>::open(&format!("sqlite:{}", path.display()))
        .await
        .expect("the store opens")
});
