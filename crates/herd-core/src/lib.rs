//! herd's engine: the task model and its policies, the [`Store`](store::Store)
//! contract with its in-memory implementation, and the one scheduler that every
//! face of herd drives.
//!
//! Most users want the `herd` crate, which wraps this one in a typed
//! `Executor`. Store implementations depend on this crate directly and run the
//! conformance suite (feature `testing`) against themselves.

#[cfg(feature = "testing")]
pub mod conformance;
pub mod model;
pub mod scheduler;
pub mod store;
pub mod util;

pub use model::*;
pub use store::BatchInfo;
