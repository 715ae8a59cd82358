//! The gateway's Redis connections: a few multiplexed connections shared by every request.
//!
//! A multiplexed connection pipelines any number of concurrent commands, so requests never wait for one
//! to be free; they are handed out round robin (Redis runs commands one at a time, so a few connections
//! are enough to keep it busy). Each reconnects by itself after a failure, and every operation is bounded
//! by the store's timeout, so a Redis that is down turns into a quick 503.
//!
//! This replaced a pool that lent each request a connection of its own: under a burst (thousands of event
//! streams opening at once, or 32 clients posting) requests queued for the pool's 16 connections, and
//! waited up to the timeout; `bench/gateway-ab.sh` and `bench/streams.sh` measured the difference.

use redis::RedisError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Connections opened to Redis.
pub const CONNECTIONS: usize = 4;

/// Shared Redis connections; cheap to clone.
#[derive(Clone)]
pub struct Connections {
    all: Arc<[ConnectionManager]>,
    next: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("count", &self.all.len())
            .finish()
    }
}

impl Connections {
    /// `count` connections made by `client`, each connecting (and answering) within `timeout`. They
    /// connect on first use.
    ///
    /// # Errors
    /// When a connection manager cannot be set up.
    pub fn new(
        client: &redis::Client,
        count: usize,
        timeout: Duration,
    ) -> Result<Self, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let all = (0..count.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            all: all.into(),
            next: Arc::default(),
        })
    }

    /// The next connection (a clone: it shares the underlying connection).
    pub fn get(&self) -> ConnectionManager {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.all[n % self.all.len()].clone()
    }
}
