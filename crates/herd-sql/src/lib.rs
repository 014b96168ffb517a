//! herd's durable stores: a SQLite file (the default, nothing to set up) and
//! PostgreSQL (many workers on many machines), behind the same
//! [`Store`](herd_core::store::Store) contract as the memory store.
//!
//! Both run the same logic (`logic.rs`): every operation is one transaction
//! that locks the batches it touches, applies the transitions the memory
//! store applies, and writes the changed rows back with set statements; the
//! dialects differ only in how rows move. Migrations are embedded and applied
//! on open; a store of a newer schema than this build is refused.
//!
//! ```no_run
//! # async fn f() -> Result<(), herd_sql::OpenError> {
//! let store = herd_sql::SqliteStore::<String, String>::open("sqlite:/var/lib/herd/herd.db").await?;
//! assert_eq!(store.schema_version().await?, herd_sql::SCHEMA_VERSION);
//! # Ok(()) }
//! ```

mod history;
mod logic;
mod logs;
mod postgres;
mod rows;
mod sqlite;
mod statements;
mod store;

pub use postgres::{PgStore, Postgres};
pub use sqlite::{Sqlite, SqliteStore};
pub use store::SqlStore;

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = 5;

/// Why a store could not be opened. Nothing was written to it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The location names no kind of store herd knows.
    #[error(
        "{location:?} is not a store location: use sqlite:PATH (or a file path) or postgres://USER@HOST/DATABASE"
    )]
    UnknownKind {
        /// What was given.
        location: String,
    },
    /// The file or database could not be opened.
    #[error(
        "cannot open the store at {location}: check that it exists, is reachable and that herd may write to it"
    )]
    Open {
        /// The file or database.
        location: String,
        /// What the database said.
        #[source]
        source: sqlx::Error,
    },
    /// The store can be read but not written.
    #[error(
        "the store at {location} is read-only: herd must write to it; fix its permissions or choose another store"
    )]
    ReadOnly {
        /// The file or database.
        location: String,
    },
    /// The store was written by a newer herd.
    #[error(
        "the store at {location} has schema version {found}, newer than this herd knows ({known}): upgrade herd or use another store"
    )]
    NewerSchema {
        /// The file or database.
        location: String,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// Applying the migrations failed.
    #[error("migrating the store at {location} failed")]
    Migrate {
        /// The file or database.
        location: String,
        /// What went wrong.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A query while opening failed.
    #[error(
        "reading the store while opening it failed (the cause follows): check that the database is up and that herd may use it"
    )]
    Query(#[from] sqlx::Error),
}
