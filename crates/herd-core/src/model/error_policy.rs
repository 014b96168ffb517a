//! Error policy: what a batch does once enough of its tasks have failed.

use std::fmt;
use std::str::FromStr;

use super::invalid::InvalidField;

/// What happens when the error threshold trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Never stop: run every task whatever fails.
    #[default]
    Continue,
    /// Start nothing new; let running tasks finish.
    Stop,
    /// Start nothing new and cancel running tasks now.
    Abort,
}

impl FromStr for OnFailure {
    type Err = InvalidField;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "continue" => Ok(OnFailure::Continue),
            "stop" => Ok(OnFailure::Stop),
            "abort" => Ok(OnFailure::Abort),
            other => Err(InvalidField::new(
                "on_failure",
                other,
                "use continue, stop or abort",
            )),
        }
    }
}

/// How many failures trip the policy.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    /// The first failed task.
    First,
    /// This many failed tasks (at least 1).
    Count(u64),
    /// This share of finished tasks failed, once at least `min_finished` have finished.
    Percent {
        /// Share in percent, above 0 and at most 100.
        percent: f64,
        /// Finished tasks needed before the share is judged.
        min_finished: u64,
    },
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::First => f.write_str("1"),
            Threshold::Count(n) => write!(f, "{n}"),
            Threshold::Percent { percent, .. } => write!(f, "{percent}%"),
        }
    }
}

impl FromStr for Threshold {
    type Err = InvalidField;

    /// `N` failures or `P%` of finished tasks (judged from 10 finished tasks on).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            InvalidField::new(
                "max_failures",
                s,
                "use a count such as 5 or a share such as 10%",
            )
        };
        let threshold = if let Some(p) = s.strip_suffix('%') {
            Threshold::Percent {
                percent: p.trim().parse().map_err(|_| bad())?,
                min_finished: 10,
            }
        } else {
            Threshold::Count(s.trim().parse().map_err(|_| bad())?)
        };
        threshold.validate()?;
        Ok(threshold)
    }
}

impl Threshold {
    /// Checks the threshold can ever trip.
    pub fn validate(&self) -> Result<(), InvalidField> {
        match *self {
            Threshold::First => Ok(()),
            Threshold::Count(0) => Err(InvalidField::new("max_failures", 0, "must be at least 1")),
            Threshold::Count(_) => Ok(()),
            Threshold::Percent { percent, .. } => {
                if percent.is_finite() && percent > 0.0 && percent <= 100.0 {
                    Ok(())
                } else {
                    Err(InvalidField::new(
                        "max_failures",
                        format!("{percent}%"),
                        "a share must be above 0% and at most 100%",
                    ))
                }
            }
        }
    }

    /// Whether `failed` failures among `finished` finished tasks reach the threshold.
    pub fn reached(&self, failed: u64, finished: u64) -> bool {
        match *self {
            Threshold::First => failed >= 1,
            Threshold::Count(n) => failed >= n,
            Threshold::Percent {
                percent,
                min_finished,
            } => {
                finished >= min_finished.max(1)
                    && failed > 0
                    && (failed as f64) * 100.0 >= percent * finished as f64
            }
        }
    }
}

/// A batch's error policy: an action and the threshold that triggers it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErrorPolicy {
    /// What happens when the threshold trips.
    pub on_failure: OnFailure,
    /// When it trips.
    pub threshold: Threshold,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        ErrorPolicy::CONTINUE
    }
}

impl ErrorPolicy {
    /// Run everything, whatever fails.
    pub const CONTINUE: ErrorPolicy = ErrorPolicy {
        on_failure: OnFailure::Continue,
        threshold: Threshold::First,
    };

    /// Stop starting tasks at the first failure.
    pub fn stop() -> Self {
        ErrorPolicy {
            on_failure: OnFailure::Stop,
            threshold: Threshold::First,
        }
    }

    /// Cancel everything at the first failure.
    pub fn abort() -> Self {
        ErrorPolicy {
            on_failure: OnFailure::Abort,
            threshold: Threshold::First,
        }
    }

    /// The same action, tripped by `threshold` instead.
    pub fn after(mut self, threshold: Threshold) -> Self {
        self.threshold = threshold;
        self
    }

    /// Checks the threshold.
    pub fn validate(&self) -> Result<(), InvalidField> {
        self.threshold.validate()
    }

    /// Whether the batch must stop, given its counts of failed and finished tasks.
    pub fn tripped(&self, failed: u64, finished: u64) -> bool {
        self.on_failure != OnFailure::Continue && self.threshold.reached(failed, finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_never_trips() {
        assert!(!ErrorPolicy::CONTINUE.tripped(1000, 1000));
    }

    #[test]
    fn first_failure_trips_stop_and_abort() {
        assert!(!ErrorPolicy::stop().tripped(0, 50));
        assert!(ErrorPolicy::stop().tripped(1, 1));
        assert!(ErrorPolicy::abort().tripped(1, 7));
    }

    #[test]
    fn count_threshold() {
        let p = ErrorPolicy::stop().after(Threshold::Count(3));
        assert!(!p.tripped(2, 100));
        assert!(p.tripped(3, 3));
    }

    #[test]
    fn percent_threshold_waits_for_enough_finished_tasks() {
        let p = ErrorPolicy::stop().after(Threshold::Percent {
            percent: 20.0,
            min_finished: 10,
        });
        assert!(!p.tripped(5, 5), "too few finished to judge");
        assert!(!p.tripped(1, 10));
        assert!(p.tripped(2, 10));
        assert!(!p.tripped(19, 100));
        assert!(p.tripped(20, 100));
    }

    #[test]
    fn parses_counts_and_shares() {
        assert_eq!("3".parse::<Threshold>(), Ok(Threshold::Count(3)));
        assert_eq!(
            "25%".parse::<Threshold>(),
            Ok(Threshold::Percent {
                percent: 25.0,
                min_finished: 10
            })
        );
        for bad in ["0", "0%", "101%", "-1", "x%", "many"] {
            let err = bad.parse::<Threshold>().unwrap_err();
            assert_eq!(err.field, "max_failures", "{bad}");
        }
        assert_eq!("abort".parse(), Ok(OnFailure::Abort));
        assert!("halt".parse::<OnFailure>().is_err());
    }
}
