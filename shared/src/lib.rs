//! What the Euglena-rs binaries must agree on.
//!
//! The gateway writes task records and publishes messages; the agent consumes them and moves the records
//! forward; the metrics sidecar reads the queue. Everything those three must see identically lives here:
//! the task record and its statuses ([`status`], [`task`]), what the API shows ([`api`]), the task event
//! log ([`events`]), the Redis key builders ([`keys`]), the Lua scripts that move a record atomically
//! ([`store`]), the queue topology and message ([`queue`]), settings
//! helpers ([`settings`]), telemetry ([`telemetry`]), the shutdown signal ([`shutdown`]) and the retry
//! delays both binaries use ([`backoff`]).

pub mod api;
pub mod backoff;
pub mod deployment;
pub mod errors;
pub mod events;
pub mod keys;
pub mod presence;
pub mod queue;
pub mod settings;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod tls;
pub mod utc;

pub use keys::Keys;
pub use status::{ShownStatus, Status};
