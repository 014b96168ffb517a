//! The store conformance suite against the SQLite store, one file per case.

use herd_sql::SqliteStore;

herd_core::store_conformance!(|case: &'static str| async move {
    // Under the target directory (`cargo clean` removes them), not /tmp,
    // where each run of the suite left 49 directories behind: the store
    // outlives this closure, so its directory is kept.
    let dir = tempfile::Builder::new()
        .prefix(case)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a temporary directory");
    let path = dir.keep().join("herd.db");
    SqliteStore::<String, String>::open(&format!("sqlite:{}", path.display()))
        .await
        .expect("the store opens")
});
