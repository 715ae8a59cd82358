//! `agent`: the worker binary. Until the tick loop lands (issue 4) it runs the real runtime with an
//! executor that fails every task at once, saying so; the runtime then refunds the ticks and acks.

use agent::executor::NotImplementedExecutor;
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
    let app = Application::build(settings, NotImplementedExecutor)
        .await
        .context("cannot start")?;
    app.run_until_stopped(shared::shutdown::shutdown_signal())
        .await
        .context("stopped with an error")
}
