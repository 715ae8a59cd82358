//! `metrics-sidecar`: init telemetry, load settings, build, run until SIGTERM or Ctrl-C. A failure is one
//! line on stderr and a non-zero exit.

use anyhow::Context;
use metrics_sidecar::{Application, Settings, aws_config};
use shared::shutdown::shutdown_signal;
use shared::telemetry::{self, LogFormat};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "metrics sidecar failed");
            eprintln!("metrics-sidecar: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    telemetry::init(
        "metrics-sidecar",
        LogFormat::from_env().context("invalid settings")?,
    );
    let settings = Settings::from_env().context("invalid settings")?;
    let aws = aws_config(&settings).await;
    let application = Application::build(settings, aws)
        .await
        .context("cannot start")?;
    application
        .run_until(shutdown_signal())
        .await
        .context("server error")
}
