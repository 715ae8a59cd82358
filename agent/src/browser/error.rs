//! Why a VISIT or a Chromium launch failed.

use chromiumoxide::error::CdpError;

use crate::ssrf::Refused;

/// Why a VISIT produced no page.
#[derive(Debug, thiserror::Error)]
pub enum VisitError {
    /// The parameter is not a URL.
    #[error("VISIT failed: {url:?} is not a valid URL: {reason}")]
    InvalidUrl {
        /// What the model asked for.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// The SSRF guard refused the URL (or the final URL after redirects).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The proxy refused a request the navigation depended on (a redirect to a forbidden destination).
    #[error("{refusal} (while loading {url})")]
    Blocked {
        /// The page asked for.
        url: String,
        /// The proxy's refusal message.
        refusal: String,
    },
    /// The page did not finish loading in time.
    #[error("VISIT failed: {url} did not load within {secs}s")]
    Timeout {
        /// The page asked for.
        url: String,
        /// The page-load timeout.
        secs: u64,
    },
    /// Chromium could not load the page (DNS, TLS, connection errors, ...).
    #[error("VISIT failed: {url} could not be loaded: {reason}")]
    Navigation {
        /// The page asked for.
        url: String,
        /// Chromium's network error text.
        reason: String,
    },
    /// The HTTP fallback could not fetch the page.
    #[error("VISIT failed: fetching {url} over HTTP: {reason}")]
    Http {
        /// The URL of the failing hop.
        url: String,
        /// What went wrong.
        reason: String,
        /// Whether the failure looks transient (timeouts, connection errors, 5xx).
        retryable: bool,
    },
    /// Every tab of this agent's browser stayed busy for as long as a page may take to load.
    #[error(
        "VISIT failed: the browser had no free tab for {secs}s (other visits were running); try again"
    )]
    Busy {
        /// How long the visit waited for a tab.
        secs: u64,
    },
    /// The page crashed its renderer (it ran out of memory, for instance); the browser goes on.
    #[error("VISIT failed: {url} crashed the page's renderer (it may use too much memory)")]
    PageCrashed {
        /// The page asked for.
        url: String,
    },
    /// The HTTP fallback hit its redirect limit.
    #[error("VISIT failed: {url} redirected more than {max} times")]
    TooManyRedirects {
        /// The page asked for.
        url: String,
        /// The limit.
        max: usize,
    },
}

impl VisitError {
    /// The `outcome` label of a failed visit in the metrics: `refused`, `timeout` or `error`.
    #[must_use]
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Refused(_) | Self::Blocked { .. } => "refused",
            Self::Timeout { .. } | Self::Busy { .. } => "timeout",
            _ => "error",
        }
    }

    /// What the model is told: a refusal says so in general terms (see [`Refused::for_model`]); other
    /// failures as they are.
    #[must_use]
    pub fn for_model(&self) -> String {
        match self {
            Self::Refused(refused) => refused.for_model(),
            Self::Blocked { url, .. } => format!(
                "VISIT refused: loading {url} needed a request to an address that is not public (private, \
                 loopback, link-local and reserved destinations are never visited)"
            ),
            other => other.to_string(),
        }
    }

    /// Whether the same VISIT could succeed later. Refusals and bad URLs never do.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Refused(refused) => refused.is_retryable(),
            Self::Timeout { .. } | Self::Navigation { .. } | Self::Busy { .. } => true,
            Self::Http { retryable, .. } => *retryable,
            Self::InvalidUrl { .. }
            | Self::Blocked { .. }
            | Self::TooManyRedirects { .. }
            | Self::PageCrashed { .. } => false,
        }
    }
}

/// Why Chromium could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// `CHROMIUM_PATH` names no file.
    #[error("Chromium is not installed at {0}")]
    Missing(String),
    /// The egress proxy or the profile directory could not be set up.
    #[error("could not prepare Chromium's sandbox: {0}")]
    Setup(#[from] std::io::Error),
    /// chromiumoxide rejected the configuration.
    #[error("invalid Chromium configuration: {0}")]
    Config(String),
    /// Chromium stopped because it could not set up its sandbox: the runtime refuses the user namespaces
    /// the sandbox is built on (a container's default seccomp profile does).
    #[error(
        "Chromium cannot start its sandbox: this runtime refuses the user namespaces it needs. On Docker, \
         run the agent with the seccomp profile docker/agent-seccomp.json, as docker-compose.yml does \
         (docs/security.md)"
    )]
    NoSandbox,
    /// The process did not start or did not expose its DevTools endpoint.
    #[error("Chromium failed to launch: {0}")]
    Launch(#[from] CdpError),
}

impl LaunchError {
    /// What a failed `Browser::launch` means: [`LaunchError::NoSandbox`] when Chromium's output says it
    /// found no usable sandbox, [`LaunchError::Launch`] otherwise.
    pub fn from_launch(error: CdpError) -> Self {
        let stderr = match &error {
            CdpError::LaunchExit(_, stderr)
            | CdpError::LaunchTimeout(stderr)
            | CdpError::LaunchIo(_, stderr) => stderr.as_slice(),
            _ => &[],
        };
        if stderr
            .windows(NO_USABLE_SANDBOX.len())
            .any(|w| w == NO_USABLE_SANDBOX)
        {
            Self::NoSandbox
        } else {
            Self::Launch(error)
        }
    }
}

/// What Chromium prints before it exits when neither user namespaces nor its setuid helper are available.
const NO_USABLE_SANDBOX: &[u8] = b"No usable sandbox";

#[cfg(test)]
mod tests {
    use super::*;
    use chromiumoxide::error::BrowserStderr;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn exited(stderr: &str) -> CdpError {
        CdpError::LaunchExit(
            ExitStatus::from_raw(133 << 8),
            BrowserStderr::new(stderr.as_bytes().to_vec()),
        )
    }

    #[test]
    fn chromium_without_a_usable_sandbox_is_named_with_its_fix() {
        let error = LaunchError::from_launch(exited(
            "[1:1:FATAL:zygote_host_impl_linux.cc(128)] No usable sandbox! If you are running on ...",
        ));
        assert!(matches!(error, LaunchError::NoSandbox), "{error:?}");
        assert!(
            error.to_string().contains("docker/agent-seccomp.json"),
            "{error}"
        );
    }

    #[test]
    fn any_other_launch_failure_keeps_chromiums_own_words() {
        let error = LaunchError::from_launch(exited("cannot open display"));
        assert!(matches!(error, LaunchError::Launch(_)), "{error:?}");
        assert!(error.to_string().contains("cannot open display"), "{error}");
    }
}
