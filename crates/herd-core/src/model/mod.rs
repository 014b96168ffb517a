//! The task model: identifiers, states, policies and specs. Pure and synchronous:
//! everything here is tested without a runtime.

mod chunk;
mod clock;
mod error_policy;
mod event;
mod ids;
mod invalid;
mod priority;
mod rerun;
mod retry;
mod spec;
mod state;
mod stats;

pub use chunk::{ChunkPolicy, ChunkStatus, SizeClass};
pub use clock::{Clock, SystemClock, TokioClock};
pub use error_policy::{ErrorPolicy, OnFailure, Threshold};
pub use event::{Event, EventKind};
pub use ids::{Attempt, BatchId, TaskId, Timestamp, WorkerId};
pub use invalid::InvalidField;
pub use priority::{ParsePriorityError, Priority};
pub use rerun::{FinishedTask, rerun_selection};
pub use retry::{Backoff, ExitCodes, Failure, Jitter, RetryPolicy};
pub use spec::{
    BatchPolicy, BatchSpec, DependencyRule, SubmitError, TaskSpec, find_cycle, shuffle_seeded,
};
pub use state::{BatchState, ParseReasonError, ParseStateError, Reason, TaskState, batch_outcome};
pub use stats::{BatchStats, DurationHistogram, StateCounts};
