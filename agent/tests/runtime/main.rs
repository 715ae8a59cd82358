//! The agent runtime against the real Redis and RabbitMQ: the worker driven step by step, the store
//! under concurrency, whole agents in process (presence, health, protection) and as child processes
//! (kill -9, SIGTERM). Tests that restart a shared service live in `disruptive` and run alone.

#[path = "../../examples/support/scripted.rs"]
#[allow(dead_code)]
mod scripted;

mod app;
mod disruptive;
mod helpers;
mod privilege;
mod process;
mod purger;
mod resume;
mod steer;
mod store;
mod sweeper;
mod topology;
mod web;
mod worker;
