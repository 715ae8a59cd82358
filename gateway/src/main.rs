//! The `gateway` binary: settings, telemetry, build, serve until SIGTERM or Ctrl-C.

use anyhow::Context;
use gateway::{Application, Settings};
use shared::telemetry::{self, LogFormat};
use std::process::ExitCode;

/// mimalloc: the gateway allocates many small, short-lived buffers per request; measured in bench/.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "gateway failed");
            eprintln!("gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    telemetry::init(
        "gateway",
        LogFormat::from_env().context("invalid settings")?,
    );
    let settings = Settings::from_env().context("invalid settings")?;
    let application = Application::build(settings).await.context("cannot start")?;
    application
        .run_until_stopped(shared::shutdown::shutdown_signal())
        .await;
    // The last spans, when they are exported.
    let _ = tokio::task::spawn_blocking(telemetry::shutdown).await;
    Ok(())
}
