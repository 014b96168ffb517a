//! Which tasks of a finished batch a rerun runs again.

use super::spec::DependencyRule;
use super::state::{Reason, TaskState};

/// A task of a finished batch, as a rerun sees it.
#[derive(Clone, Debug)]
pub struct FinishedTask {
    /// How it ended.
    pub state: TaskState,
    /// Why.
    pub reason: Option<Reason>,
    /// How its upstream tasks must have ended.
    pub rule: DependencyRule,
    /// Positions (in the same list) of the tasks it waits for.
    pub upstream: Vec<usize>,
}

/// The tasks a rerun runs again, as a flag per position of `tasks`.
///
/// - Every task that **failed**, and every task **cancelled because the batch
///   stopped** (its error policy tripped, or its deadline passed). Tasks a
///   user cancelled stay cancelled.
/// - With `downstream`, also every skipped task, and every task downstream
///   of those that did not succeed (cancelled with them), transitively.
/// - Not a task that could only be skipped again: one that needs its upstream
///   to succeed (rule `success`) while an upstream task that did not succeed
///   is not rerun with it.
///
/// Succeeded tasks never run again; their outputs serve the rerun tasks.
pub fn rerun_selection(tasks: &[FinishedTask], downstream: bool) -> Vec<bool> {
    let mut selected: Vec<bool> = tasks
        .iter()
        .map(|t| match t.state {
            TaskState::Failed => true,
            TaskState::Skipped => downstream,
            TaskState::Cancelled => matches!(
                t.reason,
                Some(Reason::BatchStopped) | Some(Reason::Deadline)
            ),
            _ => false,
        })
        .collect();
    let mut changed = downstream;
    while changed {
        changed = false;
        for (i, t) in tasks.iter().enumerate() {
            if !selected[i]
                && t.state != TaskState::Succeeded
                && t.upstream.iter().any(|&u| selected[u])
            {
                selected[i] = true;
                changed = true;
            }
        }
    }
    let mut changed = true;
    while changed {
        changed = false;
        for (i, t) in tasks.iter().enumerate() {
            let blocked = || {
                t.upstream
                    .iter()
                    .any(|&u| !selected[u] && tasks[u].state != TaskState::Succeeded)
            };
            if selected[i] && t.rule == DependencyRule::Success && blocked() {
                selected[i] = false;
                changed = true;
            }
        }
    }
    selected
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: TaskState, reason: Option<Reason>, upstream: &[usize]) -> FinishedTask {
        FinishedTask {
            state,
            reason,
            rule: DependencyRule::Success,
            upstream: upstream.to_vec(),
        }
    }

    #[test]
    fn failures_and_stop_cancellations_rerun_user_cancellations_do_not() {
        let tasks = [
            task(TaskState::Succeeded, None, &[]),
            task(TaskState::Failed, Some(Reason::ExitCode(1)), &[]),
            task(TaskState::Cancelled, Some(Reason::BatchStopped), &[]),
            task(TaskState::Cancelled, Some(Reason::Deadline), &[]),
            task(TaskState::Cancelled, Some(Reason::ByUser), &[]),
        ];
        assert_eq!(
            rerun_selection(&tasks, false),
            [false, true, true, true, false]
        );
    }

    #[test]
    fn downstream_follows_what_did_not_succeed() {
        // 0 failed -> 1 skipped -> 2 skipped; 3 succeeded -> 4 succeeded.
        let tasks = [
            task(TaskState::Failed, Some(Reason::Timeout), &[]),
            task(TaskState::Skipped, Some(Reason::UpstreamFailed), &[0]),
            task(TaskState::Skipped, Some(Reason::UpstreamFailed), &[1]),
            task(TaskState::Succeeded, None, &[]),
            task(TaskState::Succeeded, None, &[3]),
        ];
        assert_eq!(
            rerun_selection(&tasks, false),
            [true, false, false, false, false]
        );
        assert_eq!(
            rerun_selection(&tasks, true),
            [true, true, true, false, false]
        );
    }

    #[test]
    fn downstream_picks_up_tasks_skipped_by_an_earlier_failure() {
        // After a rerun without downstream: 0 succeeded, 1 still skipped.
        let tasks = [
            task(TaskState::Succeeded, None, &[]),
            task(TaskState::Skipped, Some(Reason::UpstreamFailed), &[0]),
        ];
        assert_eq!(rerun_selection(&tasks, false), [false, false]);
        assert_eq!(rerun_selection(&tasks, true), [false, true]);
    }

    #[test]
    fn a_task_that_would_be_skipped_again_is_left_alone() {
        // 0 cancelled by a user; 1 failed but waits for 0 (rule success);
        // 2 failed and waits for 0 with rule done: it may run.
        let mut tasks = vec![
            task(TaskState::Cancelled, Some(Reason::ByUser), &[]),
            task(TaskState::Failed, Some(Reason::Error), &[0]),
            task(TaskState::Failed, Some(Reason::Error), &[0]),
        ];
        tasks[2].rule = DependencyRule::Done;
        assert_eq!(rerun_selection(&tasks, true), [false, false, true]);
    }
}
