//! `autoscaler-lambda`: the Lambda's `bootstrap`. Without arguments it serves the Lambda runtime API (one
//! decision per EventBridge event); `autoscaler-lambda once` makes one decision from a shell and prints
//! `{"previous", "desired", "reason"}` as the last line on stdout. A failure is one line on stderr and a
//! non-zero exit.

use anyhow::Context;
use autoscaler_lambda::handler::unix_now;
use autoscaler_lambda::{AwsCloud, Settings, decide_and_apply, load_aws_config};
use lambda_runtime::{LambdaEvent, service_fn};
use shared::telemetry::{self, LogFormat};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "autoscaler failed");
            eprintln!("autoscaler-lambda: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    telemetry::init(
        "autoscaler-lambda",
        LogFormat::from_env().context("invalid settings")?,
    );
    let mode = std::env::args().nth(1);
    if let Some(other) = mode.as_deref().filter(|m| *m != "once") {
        anyhow::bail!("unknown argument {other:?}: expected none, or `once`");
    }
    let settings = Settings::from_env().context("invalid settings")?;
    let cloud = AwsCloud::new(&load_aws_config().await, &settings);

    if mode.is_some() {
        let decision = decide_and_apply(&cloud, &settings, unix_now())
            .await
            .context("the autoscaling decision failed")?;
        println!("{}", serde_json::to_string(&decision)?);
        return Ok(());
    }
    // The EventBridge schedule's event carries nothing the decision needs.
    let (cloud, settings) = (&cloud, &settings);
    lambda_runtime::run(service_fn(
        move |_event: LambdaEvent<serde_json::Value>| async move {
            decide_and_apply(cloud, settings, unix_now()).await
        },
    ))
    .await
    .map_err(|e| anyhow::anyhow!(e))
    .context("the Lambda runtime stopped")
}
