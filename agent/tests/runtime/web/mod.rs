//! VISIT (real Chromium), SEARCH and the SSRF guard, against loopback fixtures.

pub mod helpers;
mod search;
mod visit;
