//! herd's embedded store: one SQLite file, nothing to set up.
//!
//! This crate opens (or creates) a store file, applies herd's migrations,
//! which are embedded in the binary and versioned, and refuses with a clear
//! error a file it cannot use: not a SQLite URL, unopenable, read-only, or of
//! a newer schema version than this herd knows. The file runs in WAL mode
//! with a busy timeout, so that several local processes can share it.
//!
//! The [`Store`](herd_core::store::Store) implementation over this schema is
//! the next step of the stores issue; until then this crate provides the
//! file, its schema and its checks.
//!
//! ```no_run
//! # async fn f() -> Result<(), herd_sqlite::OpenError> {
//! let store = herd_sqlite::SqliteStore::open("sqlite:/var/lib/herd/herd.db").await?;
//! assert_eq!(store.schema_version().await?, herd_sqlite::SCHEMA_VERSION);
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// herd's migrations, embedded at build time.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = 1;

/// How long a write waits for another process's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a store could not be opened. Nothing was written to the file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The location names another kind of store.
    #[error(
        "{url:?} is not a SQLite store: use sqlite:PATH or a file path (postgres:// URLs need the PostgreSQL store)"
    )]
    NotSqlite {
        /// What was given.
        url: String,
    },
    /// The file could not be opened or created.
    #[error("cannot open the store at {}: check that the directory exists and is writable", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: sqlx::Error,
    },
    /// The file can be read but not written.
    #[error("the store at {} is read-only: herd must write to it; fix its permissions or choose another store", path.display())]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by a newer herd.
    #[error(
        "the store at {} has schema version {found}, newer than this herd knows ({known}): upgrade herd or use another store",
        path.display()
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// Applying the migrations failed.
    #[error("migrating the store at {} failed", path.display())]
    Migrate {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("reading the store failed")]
    Query(#[from] sqlx::Error),
}

/// A herd store in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens the store at `location` (`sqlite:PATH`, `sqlite://PATH`, or a
    /// plain file path; URL options such as `?mode=ro` are honoured),
    /// creating the file and its directory if missing and migrating it to
    /// the current schema.
    pub async fn open(location: &str) -> Result<SqliteStore, OpenError> {
        let (path, options) = parse(location)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| OpenError::Open {
                path: path.clone(),
                source: sqlx::Error::Io(e),
            })?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| match is_read_only(&source) {
                true => OpenError::ReadOnly { path: path.clone() },
                false => OpenError::Open {
                    path: path.clone(),
                    source,
                },
            })?;
        let store = SqliteStore { pool, path };
        store.check_version().await?;
        store.check_writable().await?;
        MIGRATOR
            .run(&store.pool)
            .await
            .map_err(|source| match &source {
                sqlx::migrate::MigrateError::Execute(e) if is_read_only(e) => OpenError::ReadOnly {
                    path: store.path.clone(),
                },
                _ => OpenError::Migrate {
                    path: store.path.clone(),
                    source,
                },
            })?;
        Ok(store)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the file (0 before the first migration).
    pub async fn schema_version(&self) -> Result<i64, OpenError> {
        let exists: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await?;
        if exists.is_none() {
            return Ok(0);
        }
        let version: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(version.unwrap_or(0))
    }

    /// The connection pool, for the store's queries.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn check_version(&self) -> Result<(), OpenError> {
        let found = self.schema_version().await?;
        let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        debug_assert_eq!(known, SCHEMA_VERSION);
        if found > known {
            return Err(OpenError::NewerSchema {
                path: self.path.clone(),
                found,
                known,
            });
        }
        Ok(())
    }

    /// Writes the file's `user_version` back unchanged: a write that
    /// changes nothing, and fails on a read-only file before anything else
    /// is attempted.
    async fn check_writable(&self) -> Result<(), OpenError> {
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&self.pool)
            .await?;
        match sqlx::query(&format!("PRAGMA user_version = {version}"))
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_read_only(&e) => Err(OpenError::ReadOnly {
                path: self.path.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// The file and connection options named by `location`.
fn parse(location: &str) -> Result<(PathBuf, SqliteConnectOptions), OpenError> {
    let not_sqlite = || OpenError::NotSqlite {
        url: location.to_owned(),
    };
    let rest = if let Some(rest) = location.strip_prefix("sqlite:") {
        rest.strip_prefix("//").unwrap_or(rest)
    } else if location.contains("://") || location.is_empty() {
        return Err(not_sqlite());
    } else {
        location
    };
    let file = rest.split('?').next().unwrap_or_default();
    if file.is_empty() || file == ":memory:" {
        return Err(not_sqlite());
    }
    let options =
        SqliteConnectOptions::from_str(&format!("sqlite://{rest}")).map_err(|_| not_sqlite())?;
    Ok((PathBuf::from(file), options))
}

/// Whether SQLite refused a write because the database is read-only.
fn is_read_only(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => {
            // SQLITE_READONLY and its extended codes (8, 264, 520, …).
            e.code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == 8)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert!(parse("sqlite:/tmp/a.db").is_ok());
        assert!(parse("sqlite:///tmp/a.db").is_ok());
        assert!(parse("relative/a.db").is_ok());
        assert_eq!(
            parse("sqlite:/tmp/a.db?mode=ro").unwrap().0,
            PathBuf::from("/tmp/a.db")
        );
        for bad in [
            "postgres://postgres@127.0.0.1/test",
            "http://x/y",
            "",
            "sqlite::memory:",
        ] {
            assert!(
                matches!(parse(bad), Err(OpenError::NotSqlite { .. })),
                "{bad}"
            );
        }
    }
}
