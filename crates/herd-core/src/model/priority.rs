//! Task and batch priority.

use std::fmt;
use std::str::FromStr;

/// How urgent a task is: higher runs first when slots are scarce.
///
/// Four named levels sit on a number line so that finer levels can be used
/// where needed: `critical` (200) > `high` (100) > `normal` (0) > `low` (-100).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Priority(pub i32);

impl Priority {
    /// Background work.
    pub const LOW: Priority = Priority(-100);
    /// The default.
    pub const NORMAL: Priority = Priority(0);
    /// Important work.
    pub const HIGH: Priority = Priority(100);
    /// Urgent work: runs before everything else.
    pub const CRITICAL: Priority = Priority(200);

    /// The level's name, if it is one of the four named levels.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Priority::LOW => Some("low"),
            Priority::NORMAL => Some("normal"),
            Priority::HIGH => Some("high"),
            Priority::CRITICAL => Some("critical"),
            _ => None,
        }
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::NORMAL
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A priority that is neither a level name nor a number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid priority {0:?}: use critical, high, normal, low or an integer")]
pub struct ParsePriorityError(pub String);

impl FromStr for Priority {
    type Err = ParsePriorityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "low" => Ok(Priority::LOW),
            "normal" | "medium" => Ok(Priority::NORMAL),
            "high" => Ok(Priority::HIGH),
            "critical" => Ok(Priority::CRITICAL),
            other => other
                .parse::<i32>()
                .map(Priority)
                .map_err(|_| ParsePriorityError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_levels_are_ordered() {
        assert!(Priority::CRITICAL > Priority::HIGH);
        assert!(Priority::HIGH > Priority::NORMAL);
        assert!(Priority::NORMAL > Priority::LOW);
        assert_eq!(Priority::default(), Priority::NORMAL);
    }

    #[test]
    fn parses_names_and_numbers() {
        assert_eq!("critical".parse(), Ok(Priority::CRITICAL));
        assert_eq!(" High ".parse(), Ok(Priority::HIGH));
        assert_eq!("medium".parse(), Ok(Priority::NORMAL));
        assert_eq!("-5".parse(), Ok(Priority(-5)));
        assert!("urgent".parse::<Priority>().is_err());
        assert_eq!(Priority(7).to_string(), "7");
        assert_eq!(Priority::LOW.to_string(), "low");
    }
}
