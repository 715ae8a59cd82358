//! Chromium's lifecycle: launch (sandboxed unless root, with its bounds), liveness, and a bounded close.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chromiumoxide::cdp::browser_protocol::browser::{
    SetDownloadBehaviorBehavior, SetDownloadBehaviorParams,
};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::error::LaunchError;
use super::proxy::EgressProxy;
use super::settings::BrowserSettings;

/// The longest each step of closing Chromium may take: asking it to close, then waiting for it to exit
/// (after which it is killed).
const CLOSE_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Arguments for a quiet, headless reader (chromiumoxide's defaults, less pop-ups allowed and the
/// automation banner).
const QUIET_ARGS: [&str; 11] = [
    "disable-background-timer-throttling",
    "disable-backgrounding-occluded-windows",
    "disable-breakpad",
    "disable-client-side-phishing-detection",
    "disable-component-extensions-with-background-pages",
    "disable-default-apps",
    "disable-dev-shm-usage",
    "disable-hang-monitor",
    "disable-prompt-on-repost",
    "disable-renderer-backgrounding",
    "metrics-recording-only",
];

/// Whether Chromium runs inside its own sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// The normal case: the agent is not root, and Chromium's renderers are sandboxed.
    On,
    /// The agent runs as root, where Chromium refuses to start sandboxed: the sandbox is off, with a
    /// warning at every launch.
    OffAsRoot,
}

impl Sandbox {
    /// The sandbox for a process whose effective user id is `euid`: on unless root.
    #[must_use]
    pub fn for_euid(euid: u32) -> Self {
        if euid == 0 { Self::OffAsRoot } else { Self::On }
    }

    /// The sandbox for this process. `/proc/self` belongs to the effective user; if it cannot be read the
    /// sandbox stays on (Chromium then fails to launch as root, and VISIT falls back to plain HTTP).
    #[must_use]
    pub fn for_this_process() -> Self {
        std::fs::metadata("/proc/self").map_or(Self::On, |m| Self::for_euid(m.uid()))
    }
}

/// A launched Chromium, its handler task, its egress proxy and its throwaway profile directory.
pub(super) struct RunningBrowser {
    pub(super) browser: chromiumoxide::Browser,
    pub(super) pid: Option<u32>,
    pub(super) alive: Arc<AtomicBool>,
    handler: JoinHandle<()>,
    proxy: EgressProxy,
    _profile: tempfile::TempDir,
}

impl fmt::Debug for RunningBrowser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningBrowser")
            .field("alive", &self.is_alive())
            .field("proxy", &self.proxy.addr())
            .finish_non_exhaustive()
    }
}

impl RunningBrowser {
    pub(super) async fn launch(settings: &BrowserSettings) -> Result<Self, LaunchError> {
        if !settings.chromium_path.is_file() {
            return Err(LaunchError::Missing(
                settings.chromium_path.display().to_string(),
            ));
        }
        // Deny-all: every task context has its own vetted proxy, so anything reaching this one is
        // Chromium's own background traffic (or a context that escaped its proxy setting).
        let proxy = EgressProxy::start(None).await?;
        let profile = tempfile::Builder::new()
            .prefix("euglena-chromium-")
            .tempdir()?;
        let proxy_server = format!("http://{}", proxy.addr());
        let js_flags = format!("--max-old-space-size={}", settings.js_heap_mb);
        let sandbox = Sandbox::for_this_process();
        // chromiumoxide's default arguments include `--disable-popup-blocking`: start from none and add
        // back the ones a headless reader wants.
        let mut builder = chromiumoxide::BrowserConfig::builder()
            .disable_default_args()
            .args(QUIET_ARGS)
            .arg(("disable-features", "TranslateUI"))
            .arg(("password-store", "basic"));
        if sandbox == Sandbox::OffAsRoot {
            warn!(
                "the agent runs as root: Chromium starts WITHOUT its sandbox (run as a non-root user)"
            );
            builder = builder.no_sandbox();
        }
        let config = builder
            .chrome_executable(&settings.chromium_path)
            .user_data_dir(profile.path())
            .launch_timeout(settings.launch_timeout)
            .request_timeout(settings.page_load_timeout + Duration::from_secs(5))
            .arg(("proxy-server", proxy_server.as_str()))
            .arg(("proxy-bypass-list", "<-loopback>"))
            .arg(("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"))
            .arg(("force-webrtc-ip-handling-policy", "disable_non_proxied_udp"))
            .arg("disable-quic")
            .arg("disable-background-networking")
            .arg("disable-component-update")
            .arg("disable-sync")
            .arg("no-first-run")
            .arg("disable-gpu")
            // Pages are read, never interacted with: no pop-ups, no new windows.
            .arg("block-new-web-contents")
            .arg(("js-flags", js_flags.as_str()))
            .build()
            .map_err(LaunchError::Config)?;
        let started = Instant::now();
        let (mut browser, mut handler) = chromiumoxide::Browser::launch(config)
            .await
            .map_err(LaunchError::from_launch)?;
        let pid = browser
            .get_mut_child()
            .and_then(|child| child.as_mut_inner().id());
        let alive = Arc::new(AtomicBool::new(true));
        let handler_alive = alive.clone();
        let handler = tokio::spawn(async move {
            while let Some(event) = handler.next().await {
                if let Err(e) = event {
                    warn!(error = %e, "chromium connection failed");
                    break;
                }
            }
            handler_alive.store(false, Ordering::SeqCst);
        });
        let deny = SetDownloadBehaviorParams::builder()
            .behavior(SetDownloadBehaviorBehavior::Deny)
            .build()
            .map_err(LaunchError::Config)?;
        if let Err(e) = browser.execute(deny).await {
            handler.abort();
            return Err(LaunchError::Launch(e));
        }
        info!(
            launch_ms = started.elapsed().as_millis() as u64,
            pid = pid.unwrap_or_default(),
            proxy = %proxy.addr(),
            sandbox = sandbox == Sandbox::On,
            js_heap_mb = settings.js_heap_mb,
            "chromium launched"
        );
        Ok(Self {
            browser,
            pid,
            alive,
            handler,
            proxy,
            _profile: profile,
        })
    }

    pub(super) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && !self.handler.is_finished()
    }

    /// Asks Chromium to close and reaps it, each step bounded; a Chromium that does not exit in time
    /// (wedged, or marked dead while still running) is killed, so the agent never waits on it.
    pub(super) async fn close(&mut self) {
        if self.is_alive() {
            match tokio::time::timeout(CLOSE_STEP_TIMEOUT, self.browser.close()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => debug!(error = %e, "chromium did not close cleanly"),
                Err(_) => {
                    tracing::warn!(timeout = ?CLOSE_STEP_TIMEOUT, "chromium did not answer close")
                }
            }
        }
        match tokio::time::timeout(CLOSE_STEP_TIMEOUT, self.browser.wait()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!(error = %e, "could not reap chromium"),
            Err(_) => {
                tracing::warn!(
                    pid = self.pid.unwrap_or_default(),
                    timeout = ?CLOSE_STEP_TIMEOUT,
                    "chromium did not exit; killing it"
                );
                if let Some(Err(e)) = self.browser.kill().await {
                    tracing::warn!(error = %e, "could not kill chromium");
                }
            }
        }
        self.alive.store(false, Ordering::SeqCst);
    }
}

impl Drop for RunningBrowser {
    fn drop(&mut self) {
        // chromiumoxide spawns Chromium with kill_on_drop; the handler task must not outlive it.
        self.handler.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_is_off_only_for_root() {
        assert_eq!(Sandbox::for_euid(0), Sandbox::OffAsRoot);
        assert_eq!(Sandbox::for_euid(10001), Sandbox::On);
        assert_eq!(Sandbox::for_euid(65534), Sandbox::On);
    }
}
