//! VISIT (real Chromium), SEARCH and the SSRF guard, against loopback fixtures.

/// Shared with the end-to-end tests, which reach it through the `euglena-tests` crate.
#[path = "../../../../tests/src/chromium.rs"]
mod chromium;
pub mod helpers;
mod hostile;
mod sandbox;
mod search;
mod visit;
