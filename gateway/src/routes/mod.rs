//! The HTTP routes, one file per resource or concern.

pub mod agents;
pub mod events;
pub mod health;
pub mod openapi;
pub mod queue;
pub mod steer;
pub mod tasks;
