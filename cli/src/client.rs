//! The gateway's API from the command line: typed calls, and every failure turned into words a person
//! understands, with what to do and the exit code it means.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use shared::api::{TaskList, TaskResponse};
use std::time::Duration;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a request that is safe to repeat, when the gateway does not answer or answers 503.
const ATTEMPTS: u32 = 3;

/// What went wrong, and the exit code it means.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or the request is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The token is missing, expired or refused (exit 2).
    #[error("{0}")]
    Unauthorized(String),
    /// The gateway refused the request: quota, active-task limit, no such task (exit 1).
    #[error("{0}")]
    Refused(String),
    /// The gateway cannot be reached or is unavailable (exit 4).
    #[error("{0}")]
    Unavailable(String),
}

impl CliError {
    /// The process's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused(_) => 1,
            CliError::Usage(_) | CliError::Unauthorized(_) => 2,
            CliError::Unavailable(_) => 4,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    remaining: Option<u32>,
    limit: Option<u32>,
}

/// The error an answer of `status` with `body` means.
pub fn error_of(status: u16, body: &str) -> CliError {
    let detail = serde_json::from_str::<ErrorBody>(body)
        .unwrap_or_default()
        .error;
    let said = if detail.message.is_empty() {
        format!("HTTP {status}")
    } else {
        detail.message.clone()
    };
    match (status, detail.code.as_str()) {
        (401, _) => CliError::Unauthorized(format!(
            "The gateway refused your token ({said}). Sign in again with `euglena login`, or set \
             EUGLENA_TOKEN to a valid token."
        )),
        (403, _) => CliError::Unauthorized(format!("{said}.")),
        (404, _) => CliError::Refused(
            "No such task (or it is not yours). Check the id with `euglena list`.".to_owned(),
        ),
        (429, "quota_exceeded") => CliError::Refused(format!(
            "Not enough ticks left today: {} remain. Ask for fewer with --max-ticks, or try again \
             tomorrow (the quota resets at midnight UTC).",
            detail.remaining.unwrap_or(0)
        )),
        (429, "too_many_active_tasks") => CliError::Refused(format!(
            "You already have {} tasks queued or running, the most allowed. Wait for one to finish, \
             or cancel one with `euglena cancel ID`.",
            detail.limit.unwrap_or(0)
        )),
        (409, _) => CliError::Refused(format!(
            "{said} (the first request with this key is still being processed)."
        )),
        (400 | 413 | 422, _) => CliError::Usage(format!("The gateway refused the request: {said}")),
        (503, _) => CliError::Unavailable(
            "The service is temporarily unavailable; nothing was charged. Try again in a moment."
                .to_owned(),
        ),
        _ => CliError::Unavailable(format!(
            "The gateway answered HTTP {status} ({said}). Try again in a moment."
        )),
    }
}

/// The fleet at a glance (`GET /queue`).
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize)]
pub struct QueueFigures {
    /// Tasks waiting for an agent.
    pub ready: u64,
    /// Tasks agents are working on.
    pub in_flight: u64,
    /// Live agents.
    pub agents: u64,
}

/// How the gateway signs users in (`GET /dashboard/config.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct SignInConfig {
    /// Supabase's URL, when password sign-in is offered.
    pub supabase_url: Option<String>,
    /// Supabase's public key for clients.
    pub supabase_anon_key: Option<String>,
}

/// A gateway, reached with a token.
#[derive(Debug, Clone)]
pub struct Gateway {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Gateway {
    /// The gateway at `base`, sending `token`.
    pub fn new(base: &str, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client with timeouts always builds");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The HTTP client, for the event stream.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The token, or a clear error when there is none.
    ///
    /// # Errors
    /// [`CliError::Unauthorized`] without a token.
    pub fn token(&self) -> Result<&str, CliError> {
        self.token.as_deref().ok_or_else(|| {
            CliError::Unauthorized(
                "No token: sign in with `euglena login`, or set EUGLENA_TOKEN.".to_owned(),
            )
        })
    }

    /// Sends a request built by `build` (retried when `repeatable` and the gateway does not answer or
    /// is unavailable) and reads the JSON answer.
    async fn call<T: DeserializeOwned>(
        &self,
        repeatable: bool,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<T, CliError> {
        let attempts = if repeatable { ATTEMPTS } else { 1 };
        let mut last = None;
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            let sent = build(&self.http).timeout(REQUEST_TIMEOUT).send().await;
            let response = match sent {
                Ok(response) => response,
                Err(error) => {
                    last = Some(CliError::Unavailable(format!(
                        "Cannot reach the gateway at {} ({}). Check EUGLENA_URL and your connection.",
                        self.base,
                        error.without_url()
                    )));
                    continue;
                }
            };
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if (200..300).contains(&status) {
                return serde_json::from_str(&body).map_err(|e| {
                    CliError::Unavailable(format!("The gateway answered something unexpected: {e}"))
                });
            }
            let error = error_of(status, &body);
            if !matches!(error, CliError::Unavailable(_)) {
                return Err(error);
            }
            last = Some(error);
        }
        Err(last.unwrap_or_else(|| CliError::Unavailable("no attempt was made".into())))
    }

    /// `POST /tasks` (safe to retry: the idempotency key makes a repeat answer the same task).
    ///
    /// # Errors
    /// [`CliError`] as the gateway answers.
    pub async fn submit(
        &self,
        mandate: &str,
        max_ticks: Option<u32>,
        idempotency_key: &str,
    ) -> Result<TaskResponse, CliError> {
        let token = self.token()?;
        let mut body = serde_json::json!({"mandate": mandate});
        if let Some(max_ticks) = max_ticks {
            body["max_ticks"] = max_ticks.into();
        }
        self.call(true, |http| {
            http.post(format!("{}/tasks", self.base))
                .bearer_auth(token)
                .header("Idempotency-Key", idempotency_key)
                .json(&body)
        })
        .await
    }

    /// `GET /tasks/{id}`.
    ///
    /// # Errors
    /// [`CliError`] as the gateway answers.
    pub async fn task(&self, id: &str) -> Result<TaskResponse, CliError> {
        let token = self.token()?;
        self.call(true, |http| {
            http.get(format!("{}/tasks/{id}", self.base))
                .bearer_auth(token)
        })
        .await
    }

    /// Up to `limit` of my tasks with one of `statuses` (all when empty), newest first, page by page.
    ///
    /// # Errors
    /// [`CliError`] as the gateway answers.
    pub async fn list(
        &self,
        statuses: &[String],
        limit: usize,
    ) -> Result<Vec<TaskResponse>, CliError> {
        let token = self.token()?;
        let mut tasks = Vec::new();
        let mut after: Option<String> = None;
        while tasks.len() < limit {
            let mut query = vec![("limit", (limit - tasks.len()).min(100).to_string())];
            if !statuses.is_empty() {
                query.push(("status", statuses.join(",")));
            }
            if let Some(cursor) = &after {
                query.push(("after", cursor.clone()));
            }
            let page: TaskList = self
                .call(true, |http| {
                    http.get(format!("{}/tasks", self.base))
                        .bearer_auth(token)
                        .query(&query)
                })
                .await?;
            tasks.extend(page.data);
            match page.next {
                Some(next) if page.has_more => after = Some(next),
                _ => break,
            }
        }
        Ok(tasks)
    }

    /// `POST /tasks/{id}/cancel` (idempotent).
    ///
    /// # Errors
    /// [`CliError`] as the gateway answers.
    pub async fn cancel(&self, id: &str) -> Result<TaskResponse, CliError> {
        let token = self.token()?;
        self.call(true, |http| {
            http.post(format!("{}/tasks/{id}/cancel", self.base))
                .bearer_auth(token)
        })
        .await
    }

    /// `GET /queue`.
    ///
    /// # Errors
    /// [`CliError`] as the gateway answers.
    pub async fn queue(&self) -> Result<QueueFigures, CliError> {
        let token = self.token()?;
        self.call(true, |http| {
            http.get(format!("{}/queue", self.base)).bearer_auth(token)
        })
        .await
    }

    /// `GET /dashboard/config.json` (no token needed).
    ///
    /// # Errors
    /// [`CliError`] as the gateway answers.
    pub async fn sign_in_config(&self) -> Result<SignInConfig, CliError> {
        self.call(true, |http| {
            http.get(format!("{}/dashboard/config.json", self.base))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_says_what_to_do_and_maps_to_its_exit_code() {
        let quota = error_of(
            429,
            r#"{"error":{"code":"quota_exceeded","message":"x","remaining":7}}"#,
        );
        assert_eq!(quota.exit_code(), 1);
        assert!(quota.to_string().contains("7 remain"), "{quota}");
        let cap = error_of(
            429,
            r#"{"error":{"code":"too_many_active_tasks","message":"x","limit":20}}"#,
        );
        assert!(cap.to_string().contains("20 tasks queued or running"));
        let auth = error_of(
            401,
            r#"{"error":{"code":"unauthorized","message":"token expired"}}"#,
        );
        assert_eq!(auth.exit_code(), 2);
        assert!(auth.to_string().contains("euglena login"));
        assert_eq!(error_of(404, "").exit_code(), 1);
        assert_eq!(error_of(422, "{}").exit_code(), 2);
        let down = error_of(503, "");
        assert_eq!(down.exit_code(), 4);
        assert!(down.to_string().contains("nothing was charged"));
        assert_eq!(error_of(502, "<html>").exit_code(), 4);
    }
}
