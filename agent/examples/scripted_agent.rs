//! The real agent runtime with a scripted executor (see `support/scripted.rs`): what the runtime's
//! process tests run as a child (kill -9, SIGTERM), and a way to try the runtime by hand:
//!
//! ```text
//! WORKER_ID=w1 cargo run -p agent --example scripted_agent
//! ```
//! then publish a task whose mandate is e.g. `ticks=5 tick_ms=200`.

#[path = "support/scripted.rs"]
mod scripted;

use agent::{AgentSettings, Application};
use anyhow::Context;
use secrecy::ExposeSecret;
use shared::telemetry::{self, LogFormat};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("scripted_agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    telemetry::init("scripted_agent", LogFormat::from_env()?);
    let mut settings = AgentSettings::from_env().context("invalid settings")?;
    let worker_id = settings
        .worker_id
        .get_or_insert_with(|| format!("scripted-{}", uuid::Uuid::new_v4().simple()))
        .clone();
    let redis = redis::Client::open(settings.common.redis_url.expose_secret())?
        .get_multiplexed_async_connection()
        .await
        .context("cannot reach redis")?;
    let executor = scripted::ScriptedExecutor {
        worker_id,
        redis: Some(redis),
        key_prefix: settings.common.key_prefix.clone(),
    };
    let app = Application::build(settings, executor)
        .await
        .context("cannot start")?;
    app.run_until_stopped(shared::shutdown::shutdown_signal())
        .await
        .context("stopped with an error")
}
