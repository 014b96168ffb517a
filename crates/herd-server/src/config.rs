//! How a server is set up: its address, slots, limits and token, and the
//! flows it offers, from `herd.toml`, with `HERD_*` environment variables
//! and flags over the file (the `herd` binary reads those).
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:7500"
//! slots = 8
//! max_records = 1000000        # records (or tasks) per batch
//! max_body_bytes = 268435456   # request bodies, in bytes
//! shutdown_grace = "30s"       # running tasks' time to finish at SIGTERM
//! token_file = "/etc/herd/token"
//! cors_origins = []            # CORS is off unless origins are listed
//!
//! [flows.thumbnail]            # POST /api/batches {"flow": "thumbnail", ...}
//! command = ["convert", "{path}", "-resize", "{size}", "{out}"]
//! concurrency = 4
//! retry = { retries = 2, backoff = "1s,30s" }
//! timeout = "30s"
//! error_policy = "stop"
//! max_failures = "5%"
//! size_class = "moderate"      # or chunk_size = 20
//! parameters = { size = "200x200" }
//! ```
//!
//! A flow takes the fields of a batch request (see [`BatchRequest`]) as its
//! defaults: a request naming the flow overrides any of them but the command.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::submit::{BatchRequest, plan_flow};

/// Where `herd serve` listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7500";

/// A server's settings, resolved.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// Cost units the embedded worker runs at once.
    pub slots: u32,
    /// The bearer token every `/api` call must carry; `None`: no auth
    /// (allowed on loopback addresses only).
    pub token: Option<String>,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Most records (or tasks) in one batch (413 beyond).
    pub max_records: usize,
    /// Origins allowed to call the API from a browser; empty: CORS off.
    pub cors_origins: Vec<String>,
    /// How long running tasks get to finish at SIGTERM before they are killed.
    pub shutdown_grace: Duration,
    /// The flows, by name, each checked.
    pub flows: BTreeMap<String, BatchRequest>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("a valid address"),
            slots: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            token: None,
            max_body_bytes: 256 << 20,
            max_records: 1_000_000,
            cors_origins: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            flows: BTreeMap::new(),
        }
    }
}

/// `herd.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The `[server]` table.
    #[serde(default)]
    pub server: FileServer,
    /// The `[flows.NAME]` tables.
    #[serde(default)]
    pub flows: BTreeMap<String, BatchRequest>,
}

/// The `[server]` table of `herd.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// See [`ServerConfig::listen`].
    pub listen: Option<String>,
    /// The store URL (`sqlite:PATH`, `postgres://...`).
    pub store: Option<String>,
    /// See [`ServerConfig::slots`].
    pub slots: Option<u32>,
    /// A file holding the token.
    pub token_file: Option<PathBuf>,
    /// See [`ServerConfig::max_body_bytes`].
    pub max_body_bytes: Option<usize>,
    /// See [`ServerConfig::max_records`].
    pub max_records: Option<usize>,
    /// See [`ServerConfig::cors_origins`].
    pub cors_origins: Option<Vec<String>>,
    /// See [`ServerConfig::shutdown_grace`], written like `30s`.
    pub shutdown_grace: Option<String>,
}

/// What flags and `HERD_*` variables set; each wins over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen` / `HERD_LISTEN`.
    pub listen: Option<String>,
    /// `--slots` / `HERD_SLOTS`.
    pub slots: Option<u32>,
    /// `HERD_TOKEN`.
    pub token: Option<String>,
    /// `--token-file` / `HERD_TOKEN_FILE`.
    pub token_file: Option<PathBuf>,
    /// `--max-body-bytes` / `HERD_MAX_BODY_BYTES`.
    pub max_body_bytes: Option<usize>,
    /// `--max-records` / `HERD_MAX_RECORDS`.
    pub max_records: Option<usize>,
    /// `--shutdown-grace` / `HERD_SHUTDOWN_GRACE`.
    pub shutdown_grace: Option<String>,
}

/// A setting that cannot work. The server does not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {source}: check the path (--config, HERD_CONFIG)")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("{path} is not a valid herd.toml: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with the line.
        message: String,
    },
    /// A flow cannot work.
    #[error("flow {flow:?}: {message}")]
    Flow {
        /// The flow's name.
        flow: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A setting cannot work.
    #[error("{setting} {value:?}: {message}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// Its value.
        value: String,
        /// What would work.
        message: String,
    },
    /// The token file could not be read, or is empty.
    #[error("cannot use the token file {path}: {message}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

impl FileConfig {
    /// Reads `herd.toml` at `path`.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses the text of a `herd.toml`.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }
}

impl ServerConfig {
    /// The settings from the file (if any) under the overrides, every flow checked.
    pub fn resolve(file: FileConfig, over: Overrides) -> Result<ServerConfig, ConfigError> {
        let mut config = ServerConfig::default();
        let server = file.server;
        if let Some(listen) = over.listen.or(server.listen) {
            config.listen = listen.parse().map_err(|e| ConfigError::Invalid {
                setting: "listen",
                value: listen.clone(),
                message: format!("{e}: give an address and port, like 127.0.0.1:7500"),
            })?;
        }
        if let Some(slots) = over.slots.or(server.slots) {
            if slots == 0 {
                return Err(ConfigError::Invalid {
                    setting: "slots",
                    value: "0".into(),
                    message: "must be at least 1".into(),
                });
            }
            config.slots = slots;
        }
        if let Some(max) = over.max_body_bytes.or(server.max_body_bytes) {
            config.max_body_bytes = max;
        }
        if let Some(max) = over.max_records.or(server.max_records) {
            config.max_records = max;
        }
        if let Some(grace) = over.shutdown_grace.or(server.shutdown_grace) {
            config.shutdown_grace =
                herd_exec::parse_duration(&grace).map_err(|e| ConfigError::Invalid {
                    setting: "shutdown_grace",
                    value: grace.clone(),
                    message: e.to_string(),
                })?;
        }
        config.cors_origins = server.cors_origins.unwrap_or_default();
        config.token = match (
            over.token.filter(|t| !t.is_empty()),
            over.token_file.or(server.token_file),
        ) {
            (Some(token), _) => Some(token),
            (None, Some(path)) => Some(read_token(&path)?),
            (None, None) => None,
        };
        for (name, flow) in file.flows {
            plan_flow(&name, &flow, &config).map_err(|e| ConfigError::Flow {
                flow: name.clone(),
                message: match &e.field {
                    Some(field) => format!("{field}: {}", e.message),
                    None => e.message.clone(),
                },
            })?;
            config.flows.insert(name, flow);
        }
        Ok(config)
    }
}

/// The token in a file: its first line, trimmed.
fn read_token(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Token {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(ConfigError::Token {
            path: path.to_owned(),
            message: "it is empty: write the token on its first line".into(),
        });
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [server]
        listen = "127.0.0.1:7600"
        slots = 3
        max_records = 10
        shutdown_grace = "5s"

        [flows.resize]
        command = "convert {path} -resize {size} {out}"
        parameters = { size = "100x100" }
        timeout = "1m"
    "#;

    #[test]
    fn flags_and_variables_win_over_the_file() {
        let file = FileConfig::parse(FILE).unwrap();
        let config = ServerConfig::resolve(
            file,
            Overrides {
                slots: Some(8),
                token: Some("t".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:7600".parse().unwrap());
        assert_eq!(config.slots, 8, "the override");
        assert_eq!(config.max_records, 10, "the file");
        assert_eq!(config.shutdown_grace, Duration::from_secs(5));
        assert_eq!(config.token.as_deref(), Some("t"));
        assert!(config.flows.contains_key("resize"));
        let defaults = ServerConfig::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(defaults.listen, DEFAULT_LISTEN.parse().unwrap());
        assert!(defaults.token.is_none() && defaults.cors_origins.is_empty());
    }

    #[test]
    fn a_bad_flow_is_named_with_its_field() {
        for (toml, field) in [
            (
                "[flows.f]\ncommand = \"echo\"\ntimeout = \"ten\"",
                "timeout",
            ),
            ("[flows.f]\ncommand = \"echo {\"", "command"),
            ("[flows.f]\nconcurrency = 2", "command"),
            (
                "[flows.f]\ncommand = \"echo\"\nerror_policy = \"explode\"",
                "error_policy",
            ),
            (
                "[flows.f]\ncommand = \"echo\"\nrecords = [\"a\"]",
                "records",
            ),
        ] {
            let file = FileConfig::parse(toml).unwrap();
            let err = ServerConfig::resolve(file, Overrides::default()).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("flow \"f\": {field}:")),
                "{toml}: {text}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_bad_settings_are_refused() {
        let err = FileConfig::parse("[server]\nlisten_on = \"x\"").unwrap_err();
        assert!(err.contains("listen_on"), "{err}");
        let bad = |over: Overrides| ServerConfig::resolve(FileConfig::default(), over).unwrap_err();
        let err = bad(Overrides {
            listen: Some("localhost".into()),
            ..Overrides::default()
        });
        assert!(err.to_string().contains("127.0.0.1:7500"), "{err}");
        let err = bad(Overrides {
            slots: Some(0),
            ..Overrides::default()
        });
        assert!(err.to_string().contains("at least 1"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("token");
        std::fs::write(&empty, "\n").unwrap();
        let err = bad(Overrides {
            token_file: Some(empty),
            ..Overrides::default()
        });
        assert!(err.to_string().contains("empty"), "{err}");
        let file = dir.path().join("good");
        std::fs::write(&file, "  abc \nignored\n").unwrap();
        let config = ServerConfig::resolve(
            FileConfig::default(),
            Overrides {
                token_file: Some(file),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.token.as_deref(), Some("abc"));
    }
}
