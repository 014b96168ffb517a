//! What a run yields: one outcome per task.

use std::fmt;

use herd_core::{Reason, TaskId, TaskState};

use crate::context::TaskError;

/// How one task ended.
#[derive(Debug)]
pub struct Outcome<O> {
    /// The item's position in the input (or the task's in the batch), from 0.
    pub index: u64,
    /// The task.
    pub task: TaskId,
    /// Attempts made (0 if it never started).
    pub attempts: u32,
    /// The handler's output, or why there is none.
    pub result: Result<O, TaskFailure>,
}

impl<O> Outcome<O> {
    /// Whether the task succeeded.
    pub fn is_success(&self) -> bool {
        self.result.is_ok()
    }

    /// The terminal state.
    pub fn state(&self) -> TaskState {
        match &self.result {
            Ok(_) => TaskState::Succeeded,
            Err(f) => f.state,
        }
    }
}

/// Why a task has no output.
#[derive(Debug)]
pub struct TaskFailure {
    /// `failed`, `cancelled` or `skipped`.
    pub state: TaskState,
    /// Why.
    pub reason: Option<Reason>,
    /// The last attempt's error, when the handler returned one.
    pub error: Option<TaskError>,
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.state)?;
        if let Some(reason) = self.reason {
            write!(f, " ({reason})")?;
        }
        if let Some(error) = &self.error {
            write!(f, ": {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TaskFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.as_ref().map(|e| e.as_error() as _)
    }
}
