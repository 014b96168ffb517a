//! herd-server's integration tests: the router through `oneshot`, one real
//! socket, the event streams, auth, bad requests, JSON shapes, PostgreSQL.

mod server {
    pub mod support;

    mod api;
    mod auth;
    mod client;
    mod errors;
    mod events;
    mod postgres;
    mod shapes;
    mod socket;
    mod worker_failure;
}
