//! The metrics sidecar: reads the task queue's ready count and in-flight deliveries every
//! `PUBLISH_INTERVAL_SECONDS` and puts them into CloudWatch as `QueueDepth` and `InFlight` for the
//! autoscaler, serving the last figures on `/health` and `/metrics`.
//!
//! [`broker`] reads the ready count, [`inflight`] the in-flight count, [`cloudwatch`] puts them,
//! [`collector`] is the loop, [`state`] and [`routes`] serve them, [`startup`] wires it all.

pub mod broker;
pub mod cloudwatch;
pub mod collector;
pub mod inflight;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod state;

pub use settings::Settings;
pub use startup::{Application, StartupError, aws_config};
