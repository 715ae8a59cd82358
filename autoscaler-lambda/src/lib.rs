//! The autoscaler Lambda: sizes the agent ECS service from the queue metrics the sidecar puts into
//! CloudWatch.
//!
//! [`policy`] is the pure decision, [`cloud`] the AWS calls behind a trait, [`handler`] one decision carried
//! out, [`settings`] the function's environment. `main.rs` runs it under `lambda_runtime`, or once from a
//! shell with `autoscaler-lambda once`.

pub mod cloud;
pub mod handler;
pub mod policy;
pub mod settings;

pub use cloud::{AwsCloud, Cloud, CloudError};
pub use handler::{AutoscaleError, decide_and_apply};
pub use policy::{Decision, Policy, Sample};
pub use settings::Settings;

/// The AWS configuration from the standard variables (`AWS_REGION`, `AWS_ENDPOINT_URL`, credentials, or the
/// Lambda's role).
pub async fn load_aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}
