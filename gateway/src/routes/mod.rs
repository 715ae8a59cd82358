//! The HTTP routes (SPEC section 2), one file per resource.

pub mod agents;
pub mod health;
pub mod openapi;
pub mod tasks;
