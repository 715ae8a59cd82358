//! The Euglena-rs agent worker runtime (issue 3): everything around a task's reasoning.
//!
//! [`consumer`] takes messages from `agent.mandates` and reconnects when the broker restarts;
//! [`worker`] runs each delivery through a [`executor::TaskExecutor`] (the tick loop of issue 4 plugs in
//! there) with forward-only statuses, heartbeats and once-only refunds; [`presence`] heartbeats the worker
//! into `workers:status`; [`protection`] holds ECS scale-in protection while busy; [`health`] serves
//! `GET /health`; [`startup`] wires it all and drains on SIGTERM.

pub mod backoff;
pub mod consumer;
pub mod error;
pub mod executor;
pub mod health;
pub mod presence;
pub mod protection;
pub mod settings;
pub mod startup;
pub mod worker;

pub use error::AgentError;
pub use executor::{ExecutionError, TaskContext, TaskExecutor, TickReporter};
pub use settings::AgentSettings;
pub use startup::Application;
