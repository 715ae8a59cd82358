//! Following a task live: one Redis pub/sub connection per gateway carries every appended event
//! ([`hub`]), and each client's event stream reads its task's log and then its live feed ([`stream`]).
//!
//! The log in Redis is the source of truth and the feed only a shortcut: a stream that falls behind its
//! feed, or whose gateway lost the pub/sub connection for a while, reads what it missed from the log. So
//! any gateway serves any task's stream, and a client that reconnects with `Last-Event-ID` (to the same
//! gateway or another) loses and repeats nothing.

pub mod hub;
pub mod stream;

pub use hub::{Feed, Hub, Subscription};
pub use stream::{Follow, Frame};
