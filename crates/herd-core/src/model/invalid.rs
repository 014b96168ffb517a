//! The error for a configuration value that cannot work.

use std::fmt;

/// A configuration or submission field with a value that cannot work.
///
/// Names the field, the value given and what is allowed, so the message can be
/// acted on: `invalid concurrency = 0: must be at least 1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} = {value}: {expected}")]
pub struct InvalidField {
    /// The field, as the user spells it (`concurrency`, `retry.max_attempts`).
    pub field: &'static str,
    /// The value that was given, printed.
    pub value: String,
    /// What would have been accepted.
    pub expected: String,
}

impl InvalidField {
    /// An invalid `field` holding `value`; `expected` says what would work.
    pub fn new(field: &'static str, value: impl fmt::Display, expected: impl Into<String>) -> Self {
        InvalidField {
            field,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}
