//! `agent`: the worker binary. Settings, telemetry, the mind (model, search, browser, memory), then the
//! runtime until SIGTERM; the browser is closed on the way out.

use agent::mind::Mind;
use agent::{AgentSettings, Application};
use anyhow::Context;
use shared::telemetry::{self, LogFormat};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    telemetry::init("agent", LogFormat::from_env()?);
    let settings = AgentSettings::from_env().context("invalid settings")?;
    let mind = Mind::build(&settings.mind)
        .await
        .context("cannot start the mind")?;
    let visitor = mind.visitor().clone();
    let app = Application::build(settings, mind)
        .await
        .context("cannot start")?;
    let result = app
        .run_until_stopped(shared::shutdown::shutdown_signal())
        .await
        .context("stopped with an error");
    visitor.shutdown().await;
    // The last spans, when they are exported.
    let _ = tokio::task::spawn_blocking(telemetry::shutdown).await;
    result
}
