//! What kind of Redis the services run against.
//!
//! The Lua scripts that move a task touch several keys in one atomic step, and some of those keys are
//! named inside the task record (the quota day that was charged, the owner's active set): a Redis Cluster
//! (ElastiCache in cluster mode, ElastiCache Serverless) would answer `CROSSSLOT`, or run a script on a
//! node that does not hold every key. So the services refuse a cluster endpoint at start-up, with a
//! message that says what to use instead, rather than failing on the first task.

use redis::aio::ConnectionLike;

/// Why this Redis cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RedisModeError {
    /// Cluster mode is enabled.
    #[error(
        "REDIS_URL points at a Redis Cluster (cluster_enabled:1); the task scripts need every key of a \
         task on one node: use a single Redis or a primary with replicas (ElastiCache with cluster mode \
         disabled), not ElastiCache cluster mode or Serverless"
    )]
    Cluster,
}

/// Whether the `INFO cluster` text says cluster mode is on.
pub fn cluster_enabled(info: &str) -> bool {
    info.lines()
        .filter_map(|line| line.trim().strip_prefix("cluster_enabled:"))
        .any(|value| value.trim() == "1")
}

/// Refuses a Redis Cluster. A server that does not answer `INFO cluster` (some managed services rename
/// or restrict `INFO`) is let through: the scripts then fail on the first task with Redis's own error.
///
/// # Errors
/// [`RedisModeError::Cluster`] when cluster mode is on.
pub async fn refuse_cluster<C: ConnectionLike + Send>(conn: &mut C) -> Result<(), RedisModeError> {
    let info: Result<String, _> = redis::cmd("INFO").arg("cluster").query_async(conn).await;
    match info {
        Ok(info) if cluster_enabled(&info) => Err(RedisModeError::Cluster),
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::warn!(%error, "cannot tell whether Redis runs in cluster mode (INFO cluster)");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_mode_is_read_from_the_info_section() {
        assert!(cluster_enabled("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!cluster_enabled("# Cluster\r\ncluster_enabled:0\r\n"));
        assert!(!cluster_enabled(""));
        assert!(!cluster_enabled("# Server\r\nredis_version:7.0.15\r\n"));
    }

    #[tokio::test]
    async fn the_local_single_node_redis_is_accepted() {
        let mut conn = redis::Client::open("redis://127.0.0.1:6379/0")
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("the local Redis runs");
        assert_eq!(refuse_cluster(&mut conn).await, Ok(()));
    }
}
