//! Which store a command works on, and opening it.

use std::path::PathBuf;

use herd_core::BatchId;
use herd_exec::CommandTask;

use crate::error::CliError;

/// What a task produces, as the CLI stores it (commands keep their output in
/// the attempt log; this is for flows whose tasks hand results downstream).
pub type Output = serde_json::Value;
/// The SQLite store of the CLI.
pub type Sqlite = herd_sql::SqliteStore<CommandTask, Output>;
/// The PostgreSQL store of the CLI.
pub type Postgres = herd_sql::PgStore<CommandTask, Output>;

/// A store location, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (`sqlite:PATH`, or a plain path).
    Sqlite(String),
    /// A PostgreSQL database.
    Postgres(String),
}

impl Location {
    /// `--store`, or the default file under `$HERD_HOME` or the user's data directory.
    pub fn resolve(store: Option<&str>) -> Result<Location, CliError> {
        Location::resolve_or(store, "herd.db")
    }

    /// `--store`, or `file` under `$HERD_HOME` or the user's data directory.
    pub fn resolve_or(store: Option<&str>, file: &str) -> Result<Location, CliError> {
        match store {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Location::Postgres(url.to_string()))
            }
            Some(url) if url.contains("://") && !url.starts_with("sqlite:") => {
                Err(CliError::usage(format!(
                    "--store {url:?} is not a store herd knows: use sqlite:PATH (or a file path) or postgres://USER@HOST/DATABASE"
                )))
            }
            Some(url) => Ok(Location::Sqlite(if url.starts_with("sqlite:") {
                url.to_string()
            } else {
                format!("sqlite:{url}")
            })),
            None => Ok(Location::Sqlite(format!(
                "sqlite:{}",
                home()?.join(file).display()
            ))),
        }
    }
}

/// herd's directory: `$HERD_HOME`, or `herd` in the user's data directory.
fn home() -> Result<PathBuf, CliError> {
    if let Some(home) = std::env::var_os("HERD_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    dirs::data_dir().map(|d| d.join("herd")).ok_or_else(|| {
        CliError::usage(
            "cannot tell where to keep batches (no home directory): set HERD_HOME or pass --store",
        )
    })
}

/// Opens the store at `location` and runs `$body` with `$store` bound to an
/// `Arc` of it: the store types differ, so the body is compiled for each.
macro_rules! with_store {
    ($location:expr, |$store:ident| $body:expr) => {
        match $location {
            $crate::store::Location::Sqlite(url) => {
                let $store = std::sync::Arc::new($crate::store::Sqlite::open(&url).await?);
                $body
            }
            $crate::store::Location::Postgres(url) => {
                let $store = std::sync::Arc::new($crate::store::Postgres::connect(&url).await?);
                $body
            }
        }
    };
}
pub(crate) use with_store;

/// Runs `$body` with `$source` bound to a [`Source`](crate::source::Source):
/// the server at `$server` if one is given, else the store at `$location`.
macro_rules! with_source {
    ($location:expr, $server:expr, |$source:ident| $body:expr) => {
        match $server {
            Some(url) => {
                let $source = $crate::source::Remote($crate::client::client(&url)?);
                $body
            }
            None => $crate::store::with_store!($location, |store| {
                let $source = $crate::source::Local(store);
                $body
            }),
        }
    };
}
pub(crate) use with_source;

/// A batch as named on the command line: `b12`, `12`, or `last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchRef {
    /// This batch.
    Id(BatchId),
    /// The newest batch in the store.
    Last,
}

impl BatchRef {
    /// Parses `b12`, `12` or `last`.
    pub fn parse(s: &str) -> Result<BatchRef, CliError> {
        if s == "last" {
            return Ok(BatchRef::Last);
        }
        let digits = s.strip_prefix('b').unwrap_or(s);
        match digits.parse::<i64>() {
            Ok(id) if id > 0 => Ok(BatchRef::Id(BatchId(id))),
            _ => Err(CliError::usage(format!(
                "{s:?} is not a batch: give its id as shown by `herd list` (e.g. b12 or 12), or `last`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            Location::resolve(Some("postgres://u@h/db")).unwrap(),
            Location::Postgres("postgres://u@h/db".into())
        );
        assert_eq!(
            Location::resolve(Some("/tmp/x.db")).unwrap(),
            Location::Sqlite("sqlite:/tmp/x.db".into())
        );
        assert_eq!(
            Location::resolve(Some("sqlite:x.db")).unwrap(),
            Location::Sqlite("sqlite:x.db".into())
        );
        let err = Location::resolve(Some("mysql://h/db")).unwrap_err();
        assert!(err.to_string().contains("sqlite:PATH"), "{err}");
    }

    #[test]
    fn batch_refs() {
        assert_eq!(BatchRef::parse("b12").unwrap(), BatchRef::Id(BatchId(12)));
        assert_eq!(BatchRef::parse("12").unwrap(), BatchRef::Id(BatchId(12)));
        assert_eq!(BatchRef::parse("last").unwrap(), BatchRef::Last);
        for bad in ["", "b", "x12", "0", "-3"] {
            assert!(BatchRef::parse(bad).is_err(), "{bad}");
        }
    }
}
