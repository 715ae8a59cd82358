//! Errors that stop the agent: start-up failures and a broken health server.
//!
//! What goes wrong while a task runs is not here: the worker classifies it (retryable means the message
//! is requeued, fatal means a terminal status or the DLQ) and keeps going, see [`crate::worker`].

use std::time::Duration;

/// The agent cannot start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Redis did not answer within the start-up deadline.
    #[error("cannot reach Redis within {0:?}: {1}")]
    RedisUnreachable(Duration, redis::RedisError),
    /// RabbitMQ did not accept a connection within the start-up deadline.
    #[error("cannot reach RabbitMQ within {0:?}: {1}")]
    BrokerUnreachable(Duration, crate::consumer::ConsumeError),
    /// The queue topology is missing and this user may not create it, or the broker refused it (e.g. the
    /// queue exists with other arguments).
    #[error(transparent)]
    Topology(#[from] shared::queue::TopologyError),
    /// The health port could not be bound.
    #[error("cannot bind the health port {port}: {source}")]
    HealthBind {
        /// The port asked for.
        port: u16,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The health server stopped with an error.
    #[error("the health server failed: {0}")]
    HealthServe(std::io::Error),
    /// The Redis behind `REDIS_URL` is of a kind the agent cannot use.
    #[error(transparent)]
    RedisMode(#[from] shared::deployment::RedisModeError),
}
