//! Following a task's event stream until it ends, with a progress bar (tick n of max, the current
//! action), through dropped connections (it resumes with `Last-Event-ID`).

use crate::client::{CliError, Gateway, error_of};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shared::api::{AcceptedEvent, TaskResponse, TickEvent};
use std::time::{Duration, Instant};

/// The first pause before reconnecting; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(15);
/// How long the gateway may stay unreachable before `watch` gives up (the task goes on regardless).
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
/// A stream silent this long (the gateway sends a comment every 15 s) is a dead connection.
const SILENCE: Duration = Duration::from_secs(45);

/// What the progress bar shows.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar on standard error (hidden when it is not a terminal, or when `quiet`).
    pub fn new(quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(1), target);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} ticks  {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }

    fn task(&self, task: &TaskResponse) {
        self.bar.set_length(u64::from(task.max_ticks));
        self.bar.set_position(u64::from(task.tick));
        self.bar.set_message(task.status.as_str().replace('_', " "));
    }

    fn tick(&self, tick: &TickEvent) {
        self.bar.set_position(u64::from(tick.tick));
        let param: String = tick.param.chars().take(60).collect();
        self.bar
            .set_message(format!("{} {param}", tick.action).trim().to_owned());
    }

    fn say(&self, message: &str) {
        self.bar.set_message(message.to_owned());
    }

    /// Clears the bar (before printing the result).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Follows task `id` until its terminal event, returning the final task.
///
/// # Errors
/// [`CliError`] when the task does not exist, the token is refused, or the gateway stays unreachable for
/// [`GIVE_UP_AFTER`].
pub async fn follow(
    gateway: &Gateway,
    id: &str,
    progress: &Progress,
) -> Result<TaskResponse, CliError> {
    let token = gateway.token()?.to_owned();
    let url = format!("{}/tasks/{id}/events", gateway.base());
    let mut last_id: Option<String> = None;
    let mut retry = FIRST_RETRY;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let mut request = gateway
            .http()
            .get(&url)
            .bearer_auth(&token)
            .header("Accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let outcome = match request.send().await {
            Ok(response) if response.status().is_success() => {
                unreachable_since = None;
                retry = FIRST_RETRY;
                progress.say("connected");
                read(response, &mut last_id, progress).await
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let error = error_of(status, &response.text().await.unwrap_or_default());
                match error {
                    CliError::Unavailable(message) => Err(message),
                    refusal => return Err(refusal),
                }
            }
            Err(error) => Err(error.without_url().to_string()),
        };
        match outcome {
            Ok(task) => return Ok(task),
            Err(reason) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > GIVE_UP_AFTER {
                    return Err(CliError::Unavailable(format!(
                        "Lost the gateway for {} s ({reason}). The task goes on: follow it again \
                         with `euglena watch {id}`.",
                        GIVE_UP_AFTER.as_secs()
                    )));
                }
                progress.say(&format!(
                    "connection lost; reconnecting in {} s",
                    retry.as_secs()
                ));
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

/// Reads one connection's frames: the final task once its terminal event arrives, or why the
/// connection ended first.
async fn read(
    response: reqwest::Response,
    last_id: &mut Option<String>,
    progress: &Progress,
) -> Result<TaskResponse, String> {
    let mut frames = response.bytes_stream().eventsource();
    loop {
        let frame = match tokio::time::timeout(SILENCE, frames.next()).await {
            Err(_) => {
                return Err(format!(
                    "no word from the gateway for {} s",
                    SILENCE.as_secs()
                ));
            }
            Ok(None) => return Err("the gateway closed the stream".to_owned()),
            Ok(Some(Err(error))) => return Err(error.to_string()),
            Ok(Some(Ok(frame))) => frame,
        };
        if !frame.id.is_empty() {
            *last_id = Some(frame.id.clone());
        }
        match frame.event.as_str() {
            "snapshot" => {
                if let Ok(task) = serde_json::from_str::<TaskResponse>(&frame.data) {
                    progress.task(&task);
                }
            }
            "accepted" => {
                if let Ok(accepted) = serde_json::from_str::<AcceptedEvent>(&frame.data) {
                    progress.say(&format!("taken by an agent (attempt {})", accepted.attempt));
                }
            }
            "tick" => {
                if let Ok(tick) = serde_json::from_str::<TickEvent>(&frame.data) {
                    progress.tick(&tick);
                }
            }
            "cancelling" => progress.say("cancelling"),
            "completed" | "failed" | "cancelled" => {
                return serde_json::from_str::<TaskResponse>(&frame.data)
                    .map_err(|e| format!("an unreadable final event: {e}"));
            }
            _ => {}
        }
    }
}
