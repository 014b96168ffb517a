//! herd's command runner: what `herd run` needs to turn input items into
//! processes and their output into records.
//!
//! - [`template`]: command templates with GNU parallel's placeholders
//!   (`{}`, `{.}`, `{/}`, `{//}`, `{/.}`, `{#}`, `{field}`), expanded into one
//!   argv per job, directly or as a quoted `sh -c` script.
//! - [`input`]: items from lines, CSV rows or JSON Lines objects, with the
//!   field names a template may use.
//! - [`runner`]: [`CommandRunner`], the [`Runner`](herd_core::scheduler::Runner)
//!   of command tasks ([`CommandTask`]): one child process per attempt.
//! - [`batch`]: policies from their written forms and a template's tasks
//!   over items, for every face that submits command batches; [`local`]:
//!   the workers of this host (dead ones released, own ones handed back).
//! - [`output`]: the [`OutputSink`] that receives output line by line, and
//!   [`results`]: [`ResultsDir`], a sink that keeps every task's output in files.
//!
//! # Processes, grace and kill
//!
//! Every attempt runs in a process group of its own (`setpgid(0, 0)` in the
//! child), so that signals reach everything the command started:
//!
//! - **Graceful cancellation** (a user's cancel, a timeout, the batch's
//!   deadline): SIGTERM to the group; SIGKILL to the group if
//!   the command is still running after the batch's `grace`; SIGKILL to
//!   whatever is left of the group once it has exited.
//! - **Dropped attempt** (forced cancellation, a command still running when
//!   the scheduler's grace after a timeout has passed, the worker
//!   stopping): SIGKILL to the group at once, from a drop guard.
//! - **Normal exit**: nothing is killed. Processes the command left behind
//!   may go on (a daemon it meant to start); if they keep its output pipes
//!   open, reading stops shortly after the exit and the output is marked as
//!   possibly cut.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use herd_core::scheduler::{AttemptResult, Cancellation};
//! use herd_core::{Attempt, BatchId, TaskId};
//! use herd_exec::{CommandRunner, Item, TaskRef, Template};
//!
//! let template = Template::parse(&["echo".into(), "{/.}".into()], false)?;
//! let argv = template.expand(1, &[Item::new("photos/cat.jpg")]);
//! assert_eq!(argv, ["echo", "cat"]);
//!
//! let runner = CommandRunner::builder().capture(1024).build();
//! let task = TaskRef { batch: BatchId(1), task: TaskId(1), index: 0, attempt: Attempt(1) };
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! let (result, log) =
//!     rt.block_on(runner.run(task, argv, Duration::from_secs(5), Cancellation::new()));
//! assert_eq!(result, AttemptResult::Succeeded);
//! assert_eq!(log.stdout, b"cat\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod batch;
pub mod input;
pub mod local;
pub mod output;
pub mod results;
pub mod runner;
mod spawn;
pub mod template;

pub use batch::{
    DurationError, PolicyError, command_tasks, error_policy, parse_duration, retry_policy,
};
pub use input::{Format, InputError, Items, read_items};
pub use output::{AttemptEnd, Discard, Exit, MAX_PIECE, OutputSink, Stream, TaskRef};
pub use results::ResultsDir;
pub use runner::{CommandRunner, CommandRunnerBuilder, CommandTask, OnEnd};
pub use template::{Item, Template, TemplateError, shell_quote};
