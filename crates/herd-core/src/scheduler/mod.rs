//! The scheduler: the worker loop that every face of herd runs, the runner
//! contract it drives, and the router that connects batches to runners.

mod pool;
mod router;
mod runner;
mod signal;
mod worker;

pub use pool::SlotPool;
pub use router::{Router, Routes};
pub use runner::{AttemptReport, AttemptResult, Runner, TaskEnd};
pub use signal::Cancellation;
pub use worker::{WorkerConfig, WorkerHandle, spawn_worker};
