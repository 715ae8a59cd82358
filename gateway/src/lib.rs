//! The Euglena-rs gateway: validates Supabase JWTs, enforces the daily tick quota and the active-task cap,
//! records each task in Redis and publishes it to RabbitMQ with publisher confirms, and lets a task's owner
//! follow it live, cancel it, list and delete it (`docs/api.md`).

pub mod auth;
pub mod connections;
pub mod dashboard;
pub mod enqueue;
pub mod error;
pub mod extract;
pub mod follow;
pub mod jwks;
pub mod metrics;
pub mod publisher;
pub mod quota;
pub mod routes;
pub mod server;
pub mod settings;
pub mod startup;
pub mod state;
pub mod store;

pub use settings::Settings;
pub use startup::{Application, router};
