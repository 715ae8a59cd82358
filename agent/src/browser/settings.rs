//! What VISIT may do: timeouts, budgets and Chromium's bounds.

use std::path::PathBuf;
use std::time::Duration;

/// Settings for VISIT, read from the environment by the agent's settings.
#[derive(Debug, Clone)]
pub struct BrowserSettings {
    /// The Chromium binary (`CHROMIUM_PATH`, default `/usr/bin/chromium`).
    pub chromium_path: PathBuf,
    /// How long a page may take to load (the `load` event) before VISIT gives up.
    pub page_load_timeout: Duration,
    /// How long Chromium may take to start and expose its DevTools endpoint.
    pub launch_timeout: Duration,
    /// After a failed launch, how long VISIT uses the HTTP fallback before trying Chromium again.
    pub relaunch_cooldown: Duration,
    /// Characters of page text handed to the model; the rest is cut and the cut is reported.
    pub text_budget: usize,
    /// Bytes of body the HTTP fallback reads at most.
    pub max_fallback_bytes: usize,
    /// Redirects the HTTP fallback follows at most.
    pub max_redirects: usize,
    /// Tabs open at once in this agent's Chromium (`BROWSER_MAX_TABS`): visits beyond it wait for a tab,
    /// at most the page-load timeout. Each tab is a renderer process, so this bounds the browser's memory
    /// whatever the number of tasks in hand.
    pub max_tabs: usize,
    /// V8's old-generation heap limit per renderer, in MiB (`BROWSER_JS_HEAP_MB`): a page that allocates
    /// past it crashes its own renderer, not the agent.
    pub js_heap_mb: u32,
}

impl Default for BrowserSettings {
    fn default() -> Self {
        Self {
            chromium_path: PathBuf::from("/usr/bin/chromium"),
            page_load_timeout: Duration::from_secs(15),
            launch_timeout: Duration::from_secs(20),
            relaunch_cooldown: Duration::from_secs(60),
            text_budget: 8_000,
            max_fallback_bytes: 2 * 1024 * 1024,
            max_redirects: 10,
            max_tabs: 4,
            js_heap_mb: 512,
        }
    }
}
