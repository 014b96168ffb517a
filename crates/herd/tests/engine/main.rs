//! Behaviour of the executor, policy by policy, under paused tokio time:
//! every wait below is virtual, so the tests are fast and deterministic.

mod bad_input;
mod cancel;
mod chunks;
mod common;
mod concurrency;
mod deadline;
mod dependencies;
mod error_policy;
mod events;
mod pause;
mod priority;
mod properties;
mod retry;
mod streaming;
mod timeout;
