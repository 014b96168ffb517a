//! Retry policy: how many attempts, how long to wait between them, and which
//! failures deserve another try.

use std::time::Duration;

use super::invalid::InvalidField;

/// How the wait before the next attempt grows.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Backoff {
    /// The same wait every time.
    Fixed {
        /// The wait.
        delay: Duration,
    },
    /// `base × factor^(n-1)` before attempt `n + 1`, capped at `max`.
    Exponential {
        /// The wait after the first failure.
        base: Duration,
        /// Growth per failure; at least 1.
        factor: f64,
        /// The longest wait.
        max: Duration,
    },
}

impl Backoff {
    /// The wait after failed attempt number `failed` (1-based), before jitter.
    pub fn delay(&self, failed: u32) -> Duration {
        match *self {
            Backoff::Fixed { delay } => delay,
            Backoff::Exponential { base, factor, max } => {
                let exponent = failed.saturating_sub(1).min(1024) as i32;
                let secs = base.as_secs_f64() * factor.powi(exponent);
                if !secs.is_finite() || secs >= max.as_secs_f64() {
                    max
                } else {
                    Duration::from_secs_f64(secs)
                }
            }
        }
    }
}

/// Randomisation of the wait, so that tasks failing together do not retry together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Wait exactly the backoff.
    None,
    /// Wait a uniformly random time between zero and the backoff ("full jitter").
    #[default]
    Full,
}

/// Which exit codes of a command count as worth retrying.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitCodes {
    /// Every non-zero code.
    #[default]
    All,
    /// Only these codes; any other is permanent.
    Only(Vec<i32>),
}

/// What went wrong in an attempt, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A library handler returned an error; `permanent` ones are never retried.
    Error {
        /// Whether the handler said another try cannot help.
        permanent: bool,
    },
    /// The attempt ran past its timeout.
    Timeout,
    /// The process exited with this code.
    ExitCode(i32),
    /// The process was killed by this signal.
    Signal(i32),
    /// The attempt could not be started; never retried.
    StartFailed,
}

/// When and how often a failed task is tried again.
///
/// `max_attempts` counts every attempt, the first included; attempts lost with a
/// dead worker do not count against it but against `max_lost`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1.
    pub max_attempts: u32,
    /// The wait between attempts.
    pub backoff: Backoff,
    /// Randomisation of the wait.
    pub jitter: Jitter,
    /// Retry attempts that ran out of time.
    pub retry_timeouts: bool,
    /// Retry errors returned by library handlers (unless marked permanent).
    pub retry_errors: bool,
    /// Retry commands that exited with these codes.
    pub retry_exit_codes: ExitCodes,
    /// Attempts that may be lost to dead workers before the task fails with `lost`.
    pub max_lost: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::none()
    }
}

impl RetryPolicy {
    /// One attempt only (losses to dead workers are still retried).
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::Exponential {
                base: Duration::from_secs(1),
                factor: 2.0,
                max: Duration::from_secs(60),
            },
            jitter: Jitter::Full,
            retry_timeouts: true,
            retry_errors: true,
            retry_exit_codes: ExitCodes::All,
            max_lost: 3,
        }
    }

    /// Up to `max_attempts` attempts with exponential backoff from 1 s, doubling,
    /// capped at 60 s, with full jitter.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..RetryPolicy::none()
        }
    }

    /// The same policy with another backoff.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The same policy with another jitter.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Checks that the policy can work; names the first field that cannot.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if self.max_attempts == 0 {
            return Err(InvalidField::new(
                "retry.max_attempts",
                0,
                "must be at least 1 (the first attempt counts)",
            ));
        }
        if let Backoff::Exponential { base, factor, max } = &self.backoff {
            if !(factor.is_finite() && *factor >= 1.0) {
                return Err(InvalidField::new(
                    "retry.backoff.factor",
                    factor,
                    "must be a finite number of at least 1",
                ));
            }
            if max < base {
                return Err(InvalidField::new(
                    "retry.backoff.max",
                    format!("{max:?}"),
                    format!("must be at least the base ({base:?})"),
                ));
            }
        }
        Ok(())
    }

    /// Whether another attempt follows `failure` in attempt number `attempt`,
    /// of which `lost` earlier attempts were lost to dead workers.
    pub fn should_retry(&self, attempt: u32, lost: u32, failure: Failure) -> bool {
        let counted = attempt.saturating_sub(lost);
        if counted >= self.max_attempts {
            return false;
        }
        match failure {
            Failure::Error { permanent } => self.retry_errors && !permanent,
            Failure::Timeout => self.retry_timeouts,
            Failure::ExitCode(code) => match &self.retry_exit_codes {
                ExitCodes::All => true,
                ExitCodes::Only(codes) => codes.contains(&code),
            },
            Failure::Signal(_) => matches!(self.retry_exit_codes, ExitCodes::All),
            Failure::StartFailed => false,
        }
    }

    /// Whether a task whose attempt was just lost (the `lost`-th loss) runs again.
    pub fn should_retry_lost(&self, lost: u32) -> bool {
        lost <= self.max_lost
    }

    /// The wait after failed attempt `failed` (counted without losses); `sample`
    /// is a uniform random number in `[0, 1)` used for jitter.
    pub fn delay(&self, failed: u32, sample: f64) -> Duration {
        let delay = self.backoff.delay(failed);
        match self.jitter {
            Jitter::None => delay,
            Jitter::Full => delay.mul_f64(sample.clamp(0.0, 1.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> Backoff {
        Backoff::Exponential {
            base: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(1),
        }
    }

    #[test]
    fn exponential_backoff_doubles_and_caps() {
        let b = exp();
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn fixed_backoff_is_flat() {
        let b = Backoff::Fixed {
            delay: Duration::from_millis(5),
        };
        assert_eq!(b.delay(1), b.delay(9));
    }

    #[test]
    fn full_jitter_stays_within_the_backoff() {
        let p = RetryPolicy::attempts(5).with_backoff(exp());
        assert_eq!(p.delay(2, 0.0), Duration::ZERO);
        assert_eq!(p.delay(2, 0.5), Duration::from_millis(100));
        assert!(p.delay(2, 0.999) < Duration::from_millis(200));
        let none = p.with_jitter(Jitter::None);
        assert_eq!(none.delay(2, 0.1), Duration::from_millis(200));
    }

    #[test]
    fn attempts_are_bounded() {
        let p = RetryPolicy::attempts(3);
        let err = Failure::Error { permanent: false };
        assert!(p.should_retry(1, 0, err));
        assert!(p.should_retry(2, 0, err));
        assert!(!p.should_retry(3, 0, err));
        // Lost attempts do not use up the budget.
        assert!(p.should_retry(4, 2, err));
        assert!(!RetryPolicy::none().should_retry(1, 0, err));
    }

    #[test]
    fn permanent_failures_are_not_retried() {
        let mut p = RetryPolicy::attempts(5);
        assert!(!p.should_retry(1, 0, Failure::Error { permanent: true }));
        assert!(!p.should_retry(1, 0, Failure::StartFailed));
        p.retry_exit_codes = ExitCodes::Only(vec![75]);
        assert!(p.should_retry(1, 0, Failure::ExitCode(75)));
        assert!(!p.should_retry(1, 0, Failure::ExitCode(1)));
        p.retry_timeouts = false;
        assert!(!p.should_retry(1, 0, Failure::Timeout));
    }

    #[test]
    fn lost_budget_is_separate() {
        let p = RetryPolicy::none();
        assert!(p.should_retry_lost(1));
        assert!(p.should_retry_lost(3));
        assert!(!p.should_retry_lost(4));
    }

    #[test]
    fn validation_names_the_field() {
        let err = RetryPolicy::attempts(0).validate().unwrap_err();
        assert_eq!(err.field, "retry.max_attempts");
        assert_eq!(err.value, "0");
        let err = RetryPolicy::attempts(2)
            .with_backoff(Backoff::Exponential {
                base: Duration::from_secs(1),
                factor: 0.5,
                max: Duration::from_secs(2),
            })
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "retry.backoff.factor");
    }
}
