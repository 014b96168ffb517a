//! Why a command failed, and the exit code that says so.

use std::fmt;

use herd_core::store::StoreError;

use crate::cli::exit;

/// A command's failure: one line for people (with its causes), and an exit code.
#[derive(Debug)]
pub struct CliError {
    /// What to print after `herd: error: `.
    pub message: String,
    /// The process's exit code.
    pub code: u8,
}

impl CliError {
    /// A usage or input error (exit 2): nothing was created.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: exit::USAGE,
        }
    }

    /// A failure while running (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: exit::FAILED,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// An error's message followed by its causes: `a: b: c`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

impl From<herd_sql::OpenError> for CliError {
    fn from(e: herd_sql::OpenError) -> Self {
        CliError::usage(chain(&e))
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Backend(_) => CliError::failed(format!(
                "{}: check that the store is reachable and its disk not full, then run the command again (a run resumes with `herd run --resume`)",
                chain(&e)
            )),
            _ => CliError::usage(chain(&e)),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::failed(chain(&e))
    }
}
