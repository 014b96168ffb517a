//! herd-exec's integration tests: the command runner driven by a real
//! worker over the memory store, running real processes.

mod results;
mod runner;
mod support;
