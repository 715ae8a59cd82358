//! Driving the local RabbitMQ node from tests that restart it (the `disruptive` ones).

use std::process::Command;

/// Runs `rabbitmqctl ARGS` against the local node and panics with the arguments when it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}
