//! herd benches
