//! VISIT (real Chromium), SEARCH and the SSRF guard, against loopback fixtures.

pub mod helpers;
mod hostile;
mod sandbox;
mod search;
mod visit;
