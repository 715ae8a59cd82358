//! ECS task scale-in protection: on while the worker holds a task, renewed before it
//! lapses, cleared when idle.
//!
//! The ECS agent endpoint (`PUT {ECS_AGENT_URI}/task-protection/v1/state`) is a convenience, not a
//! dependency: a failure to reach it is logged and retried, never fatal. Without protection a scale-in
//! may stop a busy task, and the SIGTERM path still finishes or requeues its work.

use serde_json::json;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How soon a failed call to the endpoint is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The endpoint could not set protection.
#[derive(Debug, thiserror::Error)]
pub enum ProtectionError {
    /// The request did not complete.
    #[error("the ECS agent endpoint is unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    /// The endpoint answered with an error status.
    #[error("the ECS agent endpoint answered {0}")]
    Refused(reqwest::StatusCode),
}

/// Talks to the ECS agent's task protection endpoint.
#[derive(Debug, Clone)]
pub struct Protection {
    client: reqwest::Client,
    state_url: String,
    expires_minutes: u32,
    renew: Duration,
}

impl Protection {
    /// Protection through `ecs_agent_uri`, asking for `expires_minutes` each time and renewing every
    /// `renew` while busy.
    pub fn new(ecs_agent_uri: &str, expires_minutes: u32, renew: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a plain reqwest client always builds");
        Self {
            client,
            state_url: format!(
                "{}/task-protection/v1/state",
                ecs_agent_uri.trim_end_matches('/')
            ),
            expires_minutes,
            renew,
        }
    }

    /// Turns protection on (with the configured expiry) or off.
    ///
    /// # Errors
    /// [`ProtectionError`] when the endpoint is unreachable or refuses.
    pub async fn set(&self, enabled: bool) -> Result<(), ProtectionError> {
        let body = if enabled {
            json!({"ProtectionEnabled": true, "ExpiresInMinutes": self.expires_minutes})
        } else {
            json!({"ProtectionEnabled": false})
        };
        let response = self.client.put(&self.state_url).json(&body).send().await?;
        if response.status().is_success() {
            tracing::info!(enabled, "scale-in protection set");
            Ok(())
        } else {
            Err(ProtectionError::Refused(response.status()))
        }
    }

    /// Follows the number of tasks in hand until `stop` fires, then clears protection if it is on.
    pub async fn run(self, mut in_hand: watch::Receiver<usize>, stop: CancellationToken) {
        let mut protected = false;
        let mut wake: Option<Instant> = None;
        loop {
            let busy = *in_hand.borrow_and_update() > 0;
            let now = Instant::now();
            let due = wake.is_none_or(|at| at <= now);
            if busy && (!protected || due) {
                match self.set(true).await {
                    Ok(()) => {
                        protected = true;
                        wake = Some(Instant::now() + self.renew);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot enable scale-in protection");
                        wake = Some(Instant::now() + RETRY_AFTER.min(self.renew));
                    }
                }
            } else if !busy && protected && due {
                match self.set(false).await {
                    Ok(()) => {
                        protected = false;
                        wake = None;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot clear scale-in protection");
                        wake = Some(Instant::now() + RETRY_AFTER);
                    }
                }
            } else if !busy && !protected {
                wake = None;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                changed = in_hand.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // A change of state is acted on at once; a renewal waits for its time.
                    if (*in_hand.borrow() > 0) != protected {
                        wake = None;
                    }
                }
                () = sleep_until(wake) => {}
            }
        }
        if protected && let Err(error) = self.set(false).await {
            tracing::warn!(%error, "cannot clear scale-in protection at shutdown");
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
