//! Telemetry: JSON log lines by default, `LOG_FORMAT=pretty` for humans, filtered by `RUST_LOG`.
//!
//! Logs go to stderr, so a command's own output on stdout (e.g. `autoscaler-lambda once`) stays clean;
//! ECS, Lambda and Docker collect both streams.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default; what CloudWatch Logs and log shippers want).
    Json,
    /// Human-readable, coloured when the terminal supports it.
    Pretty,
}

impl LogFormat {
    /// Reads `LOG_FORMAT` (`json`, the default, or `pretty`).
    ///
    /// # Errors
    /// [`crate::settings::SettingsError`] for any other value.
    pub fn from_env() -> Result<Self, crate::settings::SettingsError> {
        match crate::settings::optional("LOG_FORMAT")?.as_deref() {
            None | Some("json") => Ok(LogFormat::Json),
            Some("pretty") => Ok(LogFormat::Pretty),
            Some(other) => Err(crate::settings::SettingsError::Invalid {
                name: "LOG_FORMAT",
                reason: format!("expected json or pretty, got {other:?}"),
            }),
        }
    }
}

/// Installs the global subscriber for `service`. `RUST_LOG` overrides the default `info` level.
/// Safe to call more than once (later calls do nothing), so tests can call it freely.
pub fn init(service: &'static str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,amq_protocol=warn"));
    let result = match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_span_events(FmtSpan::NONE)
            .try_init(),
        LogFormat::Pretty => tracing_subscriber::fmt().with_env_filter(filter).try_init(),
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}
