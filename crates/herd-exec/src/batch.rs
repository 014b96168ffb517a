//! Building command batches: what every face that submits them shares
//! (`herd run` from its flags, `herd serve` from JSON). Policies from their
//! written forms (`30s`, `1s,60s`, `5%`), and a template's tasks over items,
//! a chunk of items per task.

use std::time::Duration;

use herd_core::{Backoff, ErrorPolicy, InvalidField, OnFailure, RetryPolicy, TaskSpec, Threshold};

use crate::runner::CommandTask;
use crate::template::{Item, Template};

/// A duration that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a duration ({reason}): write it like 30s, 5m or 1h30m")]
pub struct DurationError {
    /// What was given.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

/// Reads a duration written like `30s`, `5m`, `1h30m` or `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(text.trim()).map_err(|e| DurationError {
        value: text.to_string(),
        reason: e.to_string(),
    })
}

/// A policy that could not be built from its written form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A duration (a backoff) could not be read.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// A value that cannot work.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
}

/// `retries` attempts after the first, waiting exponentially from the
/// backoff's base (doubling) up to its max: `BASE[,MAX]`, MAX defaulting to
/// the larger of BASE and 60 s.
pub fn retry_policy(retries: u32, backoff: &str) -> Result<RetryPolicy, PolicyError> {
    let (base, max) = match backoff.split_once(',') {
        Some((base, max)) => (parse_duration(base)?, parse_duration(max)?),
        None => {
            let base = parse_duration(backoff)?;
            (base, base.max(Duration::from_secs(60)))
        }
    };
    let policy =
        RetryPolicy::attempts(retries.saturating_add(1)).with_backoff(Backoff::Exponential {
            base,
            factor: 2.0,
            max,
        });
    policy.validate()?;
    Ok(policy)
}

/// What failures do: `on_failure` once `max_failures` (`N` or `P%`) is
/// reached, or at the first failure without one. A threshold with
/// `continue` means stop there: a threshold is given to be acted on.
pub fn error_policy(
    on_failure: OnFailure,
    max_failures: Option<&str>,
) -> Result<ErrorPolicy, PolicyError> {
    let threshold = max_failures
        .map(|t| t.trim().parse::<Threshold>())
        .transpose()?;
    let on_failure = match (on_failure, threshold) {
        (OnFailure::Continue, Some(_)) => OnFailure::Stop,
        (other, _) => other,
    };
    let policy = ErrorPolicy {
        on_failure,
        threshold: threshold.unwrap_or(Threshold::First),
    };
    policy.validate()?;
    Ok(policy)
}

/// One task per `chunk` items (the last may hold fewer), numbered from job 1,
/// each running `template` over its items.
pub fn command_tasks(
    template: &Template,
    items: &[Item],
    chunk: usize,
) -> Vec<TaskSpec<CommandTask>> {
    items
        .chunks(chunk.max(1))
        .enumerate()
        .map(|(i, chunk)| {
            TaskSpec::new(CommandTask {
                argv: template.expand(i as u64 + 1, chunk),
                items: chunk.iter().map(|item| item.text.clone()).collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_say_how_to_write_one() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        let err = parse_duration("ten").unwrap_err().to_string();
        assert!(err.contains("\"ten\"") && err.contains("30s"), "{err}");
    }

    #[test]
    fn retry_policies_from_their_written_form() {
        let p = retry_policy(2, "1s,30s").unwrap();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(
            p.backoff,
            Backoff::Exponential {
                base: Duration::from_secs(1),
                factor: 2.0,
                max: Duration::from_secs(30)
            }
        );
        assert!(matches!(
            retry_policy(1, "soon"),
            Err(PolicyError::Duration(_))
        ));
    }

    #[test]
    fn a_threshold_alone_means_stop() {
        let p = error_policy(OnFailure::Continue, Some("5%")).unwrap();
        assert_eq!(p.on_failure, OnFailure::Stop);
        let p = error_policy(OnFailure::Abort, None).unwrap();
        assert_eq!(
            (p.on_failure, p.threshold),
            (OnFailure::Abort, Threshold::First)
        );
        let Err(PolicyError::Invalid(e)) = error_policy(OnFailure::Stop, Some("lots")) else {
            panic!("a bad threshold is refused");
        };
        assert_eq!(e.field, "max_failures");
    }

    #[test]
    fn tasks_take_a_chunk_of_items_each() {
        let template = Template::parse(&["echo".into()], false).unwrap();
        let items: Vec<Item> = ["a", "b", "c"].into_iter().map(Item::new).collect();
        let tasks = command_tasks(&template, &items, 2);
        let argvs: Vec<_> = tasks.iter().map(|t| t.payload.argv.clone()).collect();
        assert_eq!(argvs, [vec!["echo", "a", "b"], vec!["echo", "c"]]);
        assert_eq!(tasks[1].payload.items, ["c"]);
    }
}
