//! The store conformance suite against the PostgreSQL store, one schema per
//! case in the database named by `HERD_TEST_DATABASE_URL`.

mod common;

herd_core::store_conformance!(if common::postgres_url().is_some(); |case: &'static str| async move {
    let url = common::postgres_url().expect("checked before the case");
    common::fresh_postgres(&url, &format!("conformance_{case}")).await
});
