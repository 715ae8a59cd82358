//! The gateway's integration tests: one binary, a gateway per test on port 0, against the real Redis
//! and RabbitMQ. Tests in `disruptive` restart a shared service and are run on their own (see
//! `scripts/test.sh`).

mod auth;
mod dashboard;
mod disruptive;
mod edge;
mod endpoints;
mod follow;
mod helpers;
mod metrics;
mod outages;
mod privilege;
mod quota;
mod steer;
mod tasks;
mod tls;
