//! Task and batch states, the reasons that terminal states carry, and the
//! transitions between them. `docs/design/state-machine.md` draws the diagram.

use std::fmt;
use std::str::FromStr;

/// Where a task is in its life.
///
/// ```text
/// pending ──► queued ──► running ──► succeeded | failed | cancelled
///    │           ▲          │
///    │           └─ retry_wait ◄┘
///    └──► skipped | cancelled
/// ```
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for its dependencies.
    Pending,
    /// Ready to be claimed by a worker.
    Queued,
    /// Claimed by a worker, under a lease.
    Running,
    /// Failed an attempt; queued again once its backoff has passed.
    RetryWait,
    /// Finished well. Terminal.
    Succeeded,
    /// Finished badly, with no retry left. Terminal.
    Failed,
    /// Stopped by a user, a policy or a deadline. Terminal.
    Cancelled,
    /// Never run because an upstream task did not succeed. Terminal.
    Skipped,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 8] = [
        TaskState::Pending,
        TaskState::Queued,
        TaskState::Running,
        TaskState::RetryWait,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::Skipped,
    ];

    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled | TaskState::Skipped
        )
    }

    /// The state's name as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::RetryWait => "retry_wait",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Skipped => "skipped",
        }
    }

    /// Whether a task may move from `self` to `next`.
    pub fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, next),
            (Pending, Queued | Skipped | Cancelled)
                | (Queued, Running | Cancelled)
                | (Running, Succeeded | Failed | Cancelled | RetryWait | Queued)
                | (RetryWait, Queued | Cancelled)
        )
    }

    /// Whether a rerun may send a task that ended in `self` back to `next`:
    /// a task that did not succeed starts over, waiting or ready. Only
    /// [`Store::batch_rerun`](crate::store::Store::batch_rerun) does this.
    pub fn can_rerun_to(self, next: TaskState) -> bool {
        use TaskState::*;
        matches!(self, Failed | Cancelled | Skipped) && matches!(next, Pending | Queued)
    }

    /// Whether `reason` may accompany a move into `self`.
    ///
    /// Terminal states other than `succeeded` always carry a reason;
    /// `retry_wait` carries the reason of the failed attempt.
    pub fn accepts_reason(self, reason: Option<Reason>) -> bool {
        use Reason::*;
        match (self, reason) {
            (TaskState::Succeeded, None) => true,
            (TaskState::Failed | TaskState::RetryWait, Some(r)) => matches!(
                r,
                ExitCode(_) | Signal(_) | Timeout | StartFailed | Lost | Error
            ),
            (TaskState::Cancelled, Some(r)) => matches!(r, BatchStopped | Deadline | ByUser),
            (TaskState::Skipped, Some(r)) => r == UpstreamFailed,
            (TaskState::Pending | TaskState::Queued | TaskState::Running, None) => true,
            _ => false,
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that herd does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown state {0:?}: use pending, queued, running, retry_wait, succeeded, failed, cancelled or skipped"
)]
pub struct ParseStateError(pub String);

impl FromStr for TaskState {
    type Err = ParseStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseStateError(s.to_string()))
    }
}

/// Why a task reached a terminal state (or `retry_wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The process exited with this non-zero code.
    ExitCode(i32),
    /// The process was killed by this signal.
    Signal(i32),
    /// The attempt ran past its timeout.
    Timeout,
    /// The attempt could not be started (no such program, no handler).
    StartFailed,
    /// The worker running it stopped renewing its lease.
    Lost,
    /// A library handler returned an error. (Not in ARCHITECTURE.md's list,
    /// which names the reasons of command tasks; see docs/design/state-machine.md.)
    Error,
    /// A task it depends on did not succeed.
    UpstreamFailed,
    /// The batch's error policy stopped the batch.
    BatchStopped,
    /// The batch's deadline passed.
    Deadline,
    /// A user cancelled the task or its batch.
    ByUser,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::ExitCode(code) => write!(f, "exit_code({code})"),
            Reason::Signal(signal) => write!(f, "signal({signal})"),
            Reason::Timeout => f.write_str("timeout"),
            Reason::StartFailed => f.write_str("start_failed"),
            Reason::Lost => f.write_str("lost"),
            Reason::Error => f.write_str("error"),
            Reason::UpstreamFailed => f.write_str("upstream_failed"),
            Reason::BatchStopped => f.write_str("batch_stopped"),
            Reason::Deadline => f.write_str("deadline"),
            Reason::ByUser => f.write_str("by_user"),
        }
    }
}

/// A reason that herd does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown reason {0:?}: use exit_code(N), signal(N), timeout, start_failed, lost, error, upstream_failed, batch_stopped, deadline or by_user"
)]
pub struct ParseReasonError(pub String);

impl FromStr for Reason {
    type Err = ParseReasonError;

    /// Parses the form [`Reason`]'s `Display` prints: `timeout`, `exit_code(2)`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseReasonError(s.to_string());
        let numbered = |prefix: &str| {
            s.strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('('))
                .and_then(|rest| rest.strip_suffix(')'))
                .map(|n| n.parse::<i32>().map_err(|_| bad()))
        };
        if let Some(code) = numbered("exit_code") {
            return code.map(Reason::ExitCode);
        }
        if let Some(signal) = numbered("signal") {
            return signal.map(Reason::Signal);
        }
        Ok(match s {
            "timeout" => Reason::Timeout,
            "start_failed" => Reason::StartFailed,
            "lost" => Reason::Lost,
            "error" => Reason::Error,
            "upstream_failed" => Reason::UpstreamFailed,
            "batch_stopped" => Reason::BatchStopped,
            "deadline" => Reason::Deadline,
            "by_user" => Reason::ByUser,
            _ => return Err(bad()),
        })
    }
}

/// Where a batch is in its life.
///
/// `queued` → `running` (⇄ `paused`) → `succeeded` | `partial` | `failed` | `cancelled`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Accepted; no task has started yet.
    Queued,
    /// At least one task has started.
    Running,
    /// No new task starts until it is resumed.
    Paused,
    /// Every task succeeded. Terminal.
    Succeeded,
    /// Finished; some tasks did not succeed, and the error policy did not trip. Terminal.
    Partial,
    /// The error policy tripped or the deadline passed. Terminal.
    Failed,
    /// Cancelled by a user. Terminal.
    Cancelled,
}

impl BatchState {
    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchState::Succeeded
                | BatchState::Partial
                | BatchState::Failed
                | BatchState::Cancelled
        )
    }

    /// The state's name as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Queued => "queued",
            BatchState::Running => "running",
            BatchState::Paused => "paused",
            BatchState::Succeeded => "succeeded",
            BatchState::Partial => "partial",
            BatchState::Failed => "failed",
            BatchState::Cancelled => "cancelled",
        }
    }

    /// Whether a batch may move from `self` to `next`.
    pub fn can_become(self, next: BatchState) -> bool {
        use BatchState::*;
        if self.is_terminal() || self == next {
            return false;
        }
        match next {
            Queued => self == Paused,
            Running => matches!(self, Queued | Paused),
            Paused => matches!(self, Queued | Running),
            Succeeded | Partial | Failed | Cancelled => true,
        }
    }
}

impl BatchState {
    /// Whether a rerun may reopen a batch that ended in `self` into `next`
    /// (`running` if it had started, else `queued`). A batch that succeeded
    /// has nothing to rerun.
    pub fn can_reopen_to(self, next: BatchState) -> bool {
        use BatchState::*;
        matches!(self, Partial | Failed | Cancelled) && matches!(next, Queued | Running)
    }
}

impl FromStr for BatchState {
    type Err = ParseStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use BatchState::*;
        [
            Queued, Running, Paused, Succeeded, Partial, Failed, Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
        .ok_or_else(|| ParseStateError(s.to_string()))
    }
}

impl fmt::Display for BatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the final state of a finished batch follows from what happened in it.
pub fn batch_outcome(cancelled: bool, failed_by_policy: bool, all_succeeded: bool) -> BatchState {
    if cancelled {
        BatchState::Cancelled
    } else if failed_by_policy {
        BatchState::Failed
    } else if all_succeeded {
        BatchState::Succeeded
    } else {
        BatchState::Partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in TaskState::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn every_live_state_can_end() {
        for from in TaskState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            assert!(
                TaskState::ALL
                    .into_iter()
                    .any(|to| to.is_terminal() && from.can_become(to)),
                "{from} has no terminal successor"
            );
        }
    }

    #[test]
    fn retries_go_through_retry_wait_to_queued() {
        assert!(TaskState::Running.can_become(TaskState::RetryWait));
        assert!(TaskState::RetryWait.can_become(TaskState::Queued));
        // A claim given back unstarted (`AttemptOutcome::Released`).
        assert!(TaskState::Running.can_become(TaskState::Queued));
        assert!(!TaskState::Queued.can_become(TaskState::Succeeded));
        assert!(!TaskState::Pending.can_become(TaskState::Running));
    }

    #[test]
    fn reasons_fit_their_states() {
        assert!(TaskState::Succeeded.accepts_reason(None));
        assert!(!TaskState::Failed.accepts_reason(None));
        assert!(TaskState::Failed.accepts_reason(Some(Reason::ExitCode(3))));
        assert!(TaskState::Failed.accepts_reason(Some(Reason::Lost)));
        assert!(!TaskState::Failed.accepts_reason(Some(Reason::ByUser)));
        assert!(TaskState::Cancelled.accepts_reason(Some(Reason::Deadline)));
        assert!(!TaskState::Cancelled.accepts_reason(Some(Reason::Timeout)));
        assert!(TaskState::Skipped.accepts_reason(Some(Reason::UpstreamFailed)));
        assert!(!TaskState::Skipped.accepts_reason(Some(Reason::ByUser)));
    }

    #[test]
    fn reasons_and_batch_states_round_trip() {
        use Reason::*;
        for reason in [
            ExitCode(3),
            ExitCode(-1),
            Signal(9),
            Timeout,
            StartFailed,
            Lost,
            Error,
            UpstreamFailed,
            BatchStopped,
            Deadline,
            ByUser,
        ] {
            assert_eq!(reason.to_string().parse::<Reason>(), Ok(reason));
        }
        for bad in ["exit_code(x)", "exit_code", "signal()", "nope"] {
            assert!(bad.parse::<Reason>().is_err(), "{bad}");
        }
        for state in [
            BatchState::Queued,
            BatchState::Running,
            BatchState::Paused,
            BatchState::Succeeded,
            BatchState::Partial,
            BatchState::Failed,
            BatchState::Cancelled,
        ] {
            assert_eq!(state.as_str().parse::<BatchState>(), Ok(state));
        }
    }

    #[test]
    fn names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse(), Ok(state));
        }
        assert_eq!(Reason::ExitCode(2).to_string(), "exit_code(2)");
        assert_eq!(Reason::UpstreamFailed.to_string(), "upstream_failed");
    }

    #[test]
    fn batch_transitions() {
        assert!(BatchState::Queued.can_become(BatchState::Running));
        assert!(BatchState::Running.can_become(BatchState::Paused));
        assert!(BatchState::Paused.can_become(BatchState::Running));
        assert!(!BatchState::Succeeded.can_become(BatchState::Running));
        assert!(!BatchState::Running.can_become(BatchState::Queued));
        assert_eq!(batch_outcome(false, false, true), BatchState::Succeeded);
        assert_eq!(batch_outcome(false, false, false), BatchState::Partial);
        assert_eq!(batch_outcome(false, true, false), BatchState::Failed);
        assert_eq!(batch_outcome(true, true, false), BatchState::Cancelled);
    }
}
