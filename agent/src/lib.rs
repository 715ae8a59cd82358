//! The Euglena-rs agent worker: the runtime around a task, and the mind that runs it.
//!
//! Runtime:
//! [`consumer`] takes messages from `agent.mandates` and reconnects when the broker restarts;
//! [`worker`] runs each delivery through a [`executor::TaskExecutor`] (the mind plugs in
//! there) with forward-only statuses, heartbeats and once-only refunds; [`presence`] heartbeats the worker
//! into `workers:status`; [`protection`] holds ECS scale-in protection while busy; [`purger`] forgets the
//! memory of deleted and expired tasks; [`health`] serves
//! `GET /health`; [`startup`] wires it all and drains on SIGTERM.
//!
//! Mind: [`mind`] runs the tick loop, building prompts with [`prompt`], calling the model
//! through [`llm`] and reading its answers with [`tick`]; actions use [`search`] and [`browser`] (guarded
//! by [`ssrf`]); memory lives in [`memory`] with embeddings from [`embedding`].

pub mod browser;
pub mod consumer;
pub mod embedding;
pub mod error;
pub mod executor;
pub mod health;
pub mod llm;
pub mod memory;
pub mod metrics;
pub mod mind;
pub mod presence;
pub mod prompt;
pub mod protection;
pub mod purger;
pub mod search;
pub mod settings;
pub mod ssrf;
pub mod startup;
pub mod sweeper;
pub mod tick;
pub mod worker;

pub use error::AgentError;
pub use executor::{ExecutionError, Progress, Resume, TaskContext, TaskExecutor, TickReporter};
pub use settings::AgentSettings;
pub use startup::Application;
