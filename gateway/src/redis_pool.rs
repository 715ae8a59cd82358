//! A deadpool of multiplexed Redis connections whose checkout costs no round trip.
//!
//! deadpool-redis checks every connection out with an `UNWATCH` + `PING` round trip, doubling the Redis
//! work of a one-command request. Here a connection is instead marked suspect while a command is in flight
//! and cleared when Redis answers (or answers with a command-level error); a connection whose command
//! failed at the connection level, or whose command was abandoned by a timeout, stays suspect and is
//! dropped at its next checkout, so a Redis restart heals itself without a health-check round trip.

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Value};
use std::time::Duration;

/// A pool of [`Connection`]s.
pub type Pool = managed::Pool<Manager>;

/// Creates and recycles [`Connection`]s.
#[derive(Debug)]
pub struct Manager {
    client: redis::Client,
    config: AsyncConnectionConfig,
}

impl Manager {
    /// A manager for `url` whose connections time out connecting and answering after `timeout`.
    ///
    /// # Errors
    /// When the URL does not parse.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
        })
    }
}

/// One multiplexed connection, with the state its recycling needs.
#[derive(Debug)]
pub struct Connection {
    inner: MultiplexedConnection,
    /// Set while a command is in flight, and kept when it failed at the connection level.
    suspect: bool,
}

fn connection_level(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_timeout()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            self.suspect = true;
            let result = self.inner.req_packed_command(cmd).await;
            self.suspect = result.as_ref().is_err_and(connection_level);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.suspect = true;
            let result = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.suspect = result.as_ref().is_err_and(connection_level);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

impl managed::Manager for Manager {
    type Type = Connection;
    type Error = RedisError;

    async fn create(&self) -> Result<Connection, RedisError> {
        let inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Connection {
            inner,
            suspect: false,
        })
    }

    async fn recycle(&self, connection: &mut Connection, _: &Metrics) -> RecycleResult<RedisError> {
        if connection.suspect {
            Err(RecycleError::message(
                "the connection's last command failed",
            ))
        } else {
            Ok(())
        }
    }
}
