//! VISIT: fetch a web page and turn it into text for the model, behind the SSRF guard.
//!
//! One headless Chromium per agent process, launched lazily on the first VISIT and reused across tasks;
//! each task gets its own browser context (an incognito profile: no cookies or cache shared between
//! tasks), disposed when the task ends ([`VisitSession::close`]). The text is the rendered DOM's
//! `document.body.innerText`, so JavaScript-built pages read as a person would see them.
//!
//! # How the SSRF guard reaches every request
//! Each task's browser context is created with its own proxy (`Target.createBrowserContext` with
//! `proxyServer=http://127.0.0.1:PORT`, `proxyBypassList=<-loopback>`), an `EgressProxy`: a small
//! forward proxy inside this process. With a fixed proxy Chromium never connects anywhere itself and
//! never resolves a destination name (it hands the name to the proxy), and `<-loopback>` removes its
//! built-in exemption for `localhost`/`127.0.0.1`, so the top-level document, every redirect hop, every
//! subresource, fetch/XHR and WebSocket goes through the proxy. For each plain-HTTP request and each
//! `CONNECT` the proxy runs [`VisitPolicy::check`], connects to one of the vetted addresses itself (the
//! lookup it checked is the lookup it uses: no DNS rebinding window) and answers 403 otherwise. The
//! browser itself is launched with `--proxy-server` pointing at a deny-all proxy, so anything outside a
//! task context (Chromium's background traffic) goes nowhere. QUIC is disabled, WebRTC is limited to
//! proxied TCP, and a host resolver rule maps every name but the proxy's to "not found", so nothing
//! bypasses the proxy over UDP or a direct lookup. A per-context proxy also attributes each refusal to
//! the task that caused it.
//!
//! The top-level URL is also checked before Chromium sees it, and the final URL after redirects is
//! checked again, so a refused redirect becomes a clear `VISIT refused` error rather than a proxy page.
//!
//! If Chromium is missing, fails to launch or crashes, VISIT falls back to a plain HTTP GET (redirects
//! followed by hand, every hop checked, the connection pinned to the vetted addresses) with a small
//! HTML-to-text conversion, and the observation says so (`via: http-fallback`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::page::{
    DialogType, EventJavascriptDialogOpening, HandleJavaScriptDialogParams,
};
use chromiumoxide::cdp::browser_protocol::target::{
    CreateBrowserContextParams, CreateTargetParams,
};
use chromiumoxide::error::CdpError;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};
use url::Url;

use crate::ssrf::{Refused, VisitPolicy};

/// How long the proxy and the HTTP fallback wait for a TCP connection to a vetted address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest opening a session's browser context, or a tab, may take (both come before the per-visit
/// bound, which covers the load).
const TAB_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest each step of closing Chromium may take: asking it to close, then waiting for it to exit
/// (after which it is killed).
const CLOSE_STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many proxy refusals are remembered to explain a failed navigation.
const REFUSAL_LOG_LEN: usize = 64;
/// JavaScript characters fetched from the page per character of text budget (the budget counts Unicode
/// scalar values, JavaScript counts UTF-16 units).
const JS_UNITS_PER_CHAR: usize = 2;

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
        }
    }
}

/// How a page was fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Rendered by headless Chromium (JavaScript ran).
    Chromium,
    /// Fetched with a plain HTTP GET because Chromium was unavailable; JavaScript did not run.
    HttpFallback {
        /// Why Chromium was not used.
        reason: String,
    },
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Chromium => f.write_str("chromium"),
            Self::HttpFallback { reason } => {
                write!(f, "http-fallback, JavaScript did not run; reason: {reason}")
            }
        }
    }
}

/// The result of one VISIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The URL asked for.
    pub url: String,
    /// The URL after redirects.
    pub final_url: String,
    /// The document title (empty when there is none).
    pub title: String,
    /// The visible text, normalised and cut to the text budget.
    pub text: String,
    /// Whether `text` was cut to fit the budget.
    pub truncated: bool,
    /// How the page was fetched.
    pub via: Via,
}

impl Page {
    /// The page as the observation the model reads next tick.
    #[must_use]
    pub fn observation(&self) -> String {
        let mut out = format!("VISIT {} (via: {})\n", self.url, self.via);
        if self.final_url != self.url {
            out.push_str(&format!("final URL: {}\n", self.final_url));
        }
        if !self.title.is_empty() {
            out.push_str(&format!("title: {}\n", self.title));
        }
        out.push_str("---\n");
        out.push_str(&self.text);
        if self.truncated {
            out.push_str(&format!(
                "\n[page text truncated to {} characters]",
                self.text.chars().count()
            ));
        }
        out
    }
}

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
            Self::Timeout { .. } => "timeout",
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
            Self::Timeout { .. } | Self::Navigation { .. } => true,
            Self::Http { retryable, .. } => *retryable,
            Self::InvalidUrl { .. } | Self::Blocked { .. } | Self::TooManyRedirects { .. } => false,
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
    /// The process did not start or did not expose its DevTools endpoint.
    #[error("Chromium failed to launch: {0}")]
    Launch(#[from] CdpError),
}

/// The VISIT executor shared by every task of an agent process; cheap to clone.
#[derive(Clone, Debug)]
pub struct Visitor {
    inner: Arc<VisitorInner>,
}

#[derive(Debug)]
struct VisitorInner {
    settings: BrowserSettings,
    policy: Arc<VisitPolicy>,
    state: tokio::sync::Mutex<BrowserState>,
}

#[derive(Debug)]
enum BrowserState {
    NotStarted,
    Running(Arc<RunningBrowser>),
    Failed { at: Instant, reason: String },
}

impl Visitor {
    /// A visitor; Chromium starts on the first VISIT, not here.
    #[must_use]
    pub fn new(settings: BrowserSettings, policy: VisitPolicy) -> Self {
        Self {
            inner: Arc::new(VisitorInner {
                settings,
                policy: Arc::new(policy),
                state: tokio::sync::Mutex::new(BrowserState::NotStarted),
            }),
        }
    }

    /// The SSRF policy in force.
    #[must_use]
    pub fn policy(&self) -> &VisitPolicy {
        &self.inner.policy
    }

    /// Starts a task's browsing session; its browser context is created on its first VISIT.
    #[must_use]
    pub fn session(&self) -> VisitSession {
        VisitSession {
            visitor: self.clone(),
            context: None,
        }
    }

    /// Whether a live Chromium is attached (for health reporting and tests).
    pub async fn is_browser_running(&self) -> bool {
        matches!(&*self.inner.state.lock().await, BrowserState::Running(r) if r.is_alive())
    }

    /// The process id of the live Chromium, if one is running (for diagnostics and tests).
    pub async fn browser_pid(&self) -> Option<u32> {
        match &*self.inner.state.lock().await {
            BrowserState::Running(running) if running.is_alive() => running.pid,
            _ => None,
        }
    }

    /// Launches Chromium now unless it is running, and returns how long the launch took (zero when it was
    /// already running).
    ///
    /// # Errors
    /// [`LaunchError`] when Chromium cannot be started; VISIT would then use the HTTP fallback.
    pub async fn warm_up(&self) -> Result<Duration, LaunchError> {
        let mut state = self.inner.state.lock().await;
        if let BrowserState::Running(running) = &*state
            && running.is_alive()
        {
            return Ok(Duration::ZERO);
        }
        let started = Instant::now();
        let running = RunningBrowser::launch(&self.inner.settings).await?;
        *state = BrowserState::Running(Arc::new(running));
        Ok(started.elapsed())
    }

    /// Closes Chromium gracefully (at agent shutdown). Sessions still open keep their handle until they
    /// end; the process is killed when the last one goes.
    pub async fn shutdown(&self) {
        let previous = std::mem::replace(
            &mut *self.inner.state.lock().await,
            BrowserState::NotStarted,
        );
        if let BrowserState::Running(running) = previous
            && let Some(mut running) = Arc::into_inner(running)
        {
            running.close().await;
        }
    }

    /// The running browser, launching it if needed; `Err` carries the reason to fall back to HTTP.
    async fn browser(&self) -> Result<Arc<RunningBrowser>, String> {
        let mut state = self.inner.state.lock().await;
        match &*state {
            BrowserState::Running(running) if running.is_alive() => return Ok(running.clone()),
            BrowserState::Failed { at, reason }
                if at.elapsed() < self.inner.settings.relaunch_cooldown =>
            {
                return Err(reason.clone());
            }
            _ => {}
        }
        match RunningBrowser::launch(&self.inner.settings).await {
            Ok(running) => {
                let running = Arc::new(running);
                *state = BrowserState::Running(running.clone());
                Ok(running)
            }
            Err(e) => {
                let reason = e.to_string();
                warn!(error = %reason, "chromium unavailable, VISIT falls back to plain HTTP");
                *state = BrowserState::Failed {
                    at: Instant::now(),
                    reason: reason.clone(),
                };
                Err(reason)
            }
        }
    }
}

/// A task's browsing session: one browser context, closed with [`VisitSession::close`] at task end.
#[derive(Debug)]
pub struct VisitSession {
    visitor: Visitor,
    context: Option<SessionContext>,
}

#[derive(Debug)]
struct SessionContext {
    browser: Arc<RunningBrowser>,
    id: BrowserContextId,
    /// This context's own egress proxy, so a refusal is attributed to the task that caused it (the
    /// browser-wide proxy also sees Chromium's own background requests).
    proxy: EgressProxy,
    /// The session's tab, reused across its visits (opened on the first, replaced after a failure).
    page: Option<chromiumoxide::Page>,
    /// Dismisses `alert`/`confirm`/`prompt` dialogs, which would otherwise block the tab.
    dialogs: Option<JoinHandle<()>>,
}

enum ChromiumFailure {
    /// The browser is gone (crash, closed socket): fall back and relaunch next time.
    Crashed(String),
    /// The page itself failed: report it.
    Visit(VisitError),
}

impl VisitSession {
    /// Fetches `raw_url` and returns its visible text.
    ///
    /// # Errors
    /// [`VisitError`] when the URL is invalid or refused by the SSRF guard (before any request is made),
    /// when a redirect leads somewhere forbidden, or when the page cannot be loaded in time.
    pub async fn visit(&mut self, raw_url: &str) -> Result<Page, VisitError> {
        let url = Url::parse(raw_url.trim()).map_err(|e| VisitError::InvalidUrl {
            url: raw_url.to_owned(),
            reason: e.to_string(),
        })?;
        let span = info_span!("visit", url = %url);
        async {
            let inner = self.visitor.inner.clone();
            let (policy, settings) = (&inner.policy, &inner.settings);
            policy
                .check(&url)
                .await
                .inspect_err(|refused| info!(reason = %refused, "visit refused"))?;
            let context = match self.context().await {
                Ok(context) => context,
                Err(reason) => return fetch_over_http(policy, settings, &url, reason).await,
            };
            let started = Instant::now();
            match visit_in_chromium(context, policy, settings, &url).await {
                Ok(page) => {
                    info!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        truncated = page.truncated,
                        "visited"
                    );
                    Ok(page)
                }
                Err(ChromiumFailure::Visit(e)) => Err(e),
                Err(ChromiumFailure::Crashed(reason)) => {
                    warn!(error = %reason, "chromium failed during VISIT, using plain HTTP");
                    context.browser.alive.store(false, Ordering::SeqCst);
                    self.context = None;
                    fetch_over_http(
                        policy,
                        settings,
                        &url,
                        format!("Chromium crashed: {reason}"),
                    )
                    .await
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Disposes the session's browser context (its pages, cookies and cache).
    pub async fn close(mut self) {
        if let Some(context) = self.context.take() {
            context.dispose().await;
        }
    }

    async fn context(&mut self) -> Result<&mut SessionContext, String> {
        if self.context.as_ref().is_some_and(|c| !c.browser.is_alive()) {
            self.context = None;
        }
        if self.context.is_none() {
            let browser = self.visitor.browser().await?;
            let proxy = EgressProxy::start(Some(self.visitor.inner.policy.clone()))
                .await
                .map_err(|e| format!("could not start the egress proxy: {e}"))?;
            let params = CreateBrowserContextParams::builder()
                .proxy_server(format!("http://{}", proxy.addr))
                .proxy_bypass_list("<-loopback>")
                .dispose_on_detach(true)
                .build();
            let created = tokio::time::timeout(
                TAB_OPEN_TIMEOUT,
                browser.browser.create_browser_context(params),
            )
            .await;
            let id = match created {
                Ok(Ok(id)) => id,
                Ok(Err(e)) => {
                    browser.alive.store(false, Ordering::SeqCst);
                    return Err(format!("Chromium did not create a browser context: {e}"));
                }
                Err(_) => {
                    tracing::warn!(
                        timeout = ?TAB_OPEN_TIMEOUT,
                        "Chromium did not create a browser context in time; treating it as wedged"
                    );
                    browser.alive.store(false, Ordering::SeqCst);
                    return Err(format!(
                        "Chromium did not create a browser context within {TAB_OPEN_TIMEOUT:?}"
                    ));
                }
            };
            debug!(context = ?id, "browser context created");
            self.context = Some(SessionContext {
                browser,
                id,
                proxy,
                page: None,
                dialogs: None,
            });
        }
        self.context
            .as_mut()
            .ok_or_else(|| "no browser context".to_owned())
    }
}

impl Drop for VisitSession {
    fn drop(&mut self) {
        // A session dropped without close() (task panicked or was cancelled): dispose in the background.
        if let Some(context) = self.context.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move { context.dispose().await });
        }
    }
}

impl SessionContext {
    /// The session's tab, opened on first use.
    async fn page(&mut self) -> Result<chromiumoxide::Page, CdpError> {
        if let Some(page) = &self.page {
            return Ok(page.clone());
        }
        let params = CreateTargetParams::builder()
            .url("about:blank")
            .browser_context_id(self.id.clone())
            .build()
            .map_err(CdpError::msg)?;
        let page = self.browser.browser.new_page(params).await?;
        let mut opened = page
            .event_listener::<EventJavascriptDialogOpening>()
            .await?;
        let dialog_page = page.clone();
        self.dialogs = Some(tokio::spawn(async move {
            while let Some(dialog) = opened.next().await {
                // Accept "leave page?" so navigation proceeds; dismiss the rest (confirm -> false).
                let accept = matches!(dialog.r#type, DialogType::Beforeunload);
                debug!(kind = ?dialog.r#type, accept, "answering a JavaScript dialog");
                if let Err(e) = dialog_page
                    .execute(HandleJavaScriptDialogParams::new(accept))
                    .await
                {
                    debug!(error = %e, "could not answer a JavaScript dialog");
                }
            }
        }));
        self.page = Some(page.clone());
        Ok(page)
    }

    /// Drops the tab after a failed visit so the next one starts from a clean page.
    async fn discard_page(&mut self) {
        if let Some(dialogs) = self.dialogs.take() {
            dialogs.abort();
        }
        if let Some(page) = self.page.take()
            && self.browser.is_alive()
        {
            match tokio::time::timeout(Duration::from_secs(2), page.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "could not close page"),
                Err(_) => debug!("closing the page timed out"),
            }
        }
    }

    async fn dispose(mut self) {
        if let Some(dialogs) = self.dialogs.take() {
            dialogs.abort();
        }
        if !self.browser.is_alive() {
            return;
        }
        match tokio::time::timeout(
            CLOSE_STEP_TIMEOUT,
            self.browser.browser.dispose_browser_context(self.id),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "could not dispose browser context"),
            Err(_) => debug!("disposing the browser context timed out"),
        }
    }
}

fn is_crash(e: &CdpError) -> bool {
    matches!(
        e,
        CdpError::Ws(_) | CdpError::Io(_) | CdpError::ChannelSendError(_) | CdpError::NoResponse
    )
}

fn classify(browser: &RunningBrowser, url: &Url, e: CdpError) -> ChromiumFailure {
    if is_crash(&e) || !browser.is_alive() {
        ChromiumFailure::Crashed(e.to_string())
    } else {
        ChromiumFailure::Visit(VisitError::Navigation {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }
}

async fn visit_in_chromium(
    context: &mut SessionContext,
    policy: &VisitPolicy,
    settings: &BrowserSettings,
    url: &Url,
) -> Result<Page, ChromiumFailure> {
    let page = match tokio::time::timeout(TAB_OPEN_TIMEOUT, context.page()).await {
        Ok(page) => page.map_err(|e| classify(&context.browser, url, e))?,
        Err(_) => {
            tracing::warn!(
                timeout = ?TAB_OPEN_TIMEOUT,
                "opening a tab timed out; treating Chromium as wedged"
            );
            return Err(ChromiumFailure::Crashed(format!(
                "opening a tab took longer than {TAB_OPEN_TIMEOUT:?}"
            )));
        }
    };
    // The load has its own timeout; this bounds the reads after it too, so a wedged tab cannot hang a task.
    let bound = settings.page_load_timeout + Duration::from_secs(10);
    let result = tokio::time::timeout(bound, load_and_read(&page, context, policy, settings, url))
        .await
        .unwrap_or_else(|_| {
            Err(ChromiumFailure::Visit(VisitError::Timeout {
                url: url.to_string(),
                secs: bound.as_secs(),
            }))
        });
    if result.is_err() {
        context.discard_page().await;
    }
    result
}

async fn load_and_read(
    page: &chromiumoxide::Page,
    context: &SessionContext,
    policy: &VisitPolicy,
    settings: &BrowserSettings,
    url: &Url,
) -> Result<Page, ChromiumFailure> {
    let crashed = |e: CdpError| classify(&context.browser, url, e);
    let started = Instant::now();
    match tokio::time::timeout(settings.page_load_timeout, page.goto(url.as_str())).await {
        Err(_) => {
            return Err(ChromiumFailure::Visit(VisitError::Timeout {
                url: url.to_string(),
                secs: settings.page_load_timeout.as_secs(),
            }));
        }
        Ok(Err(CdpError::ChromeMessage(reason))) => {
            // A refused CONNECT surfaces as a tunnel error: say what the proxy refused instead.
            return Err(ChromiumFailure::Visit(
                match context.proxy.refusals_since(started) {
                    Some(refusal) => VisitError::Blocked {
                        url: url.to_string(),
                        refusal,
                    },
                    None => VisitError::Navigation {
                        url: url.to_string(),
                        reason,
                    },
                },
            ));
        }
        Ok(Err(e)) => return Err(crashed(e)),
        Ok(Ok(_)) => {}
    }
    let final_url = page
        .url()
        .await
        .map_err(crashed)?
        .unwrap_or_else(|| url.to_string());
    // A plain-HTTP redirect to a forbidden place loads the proxy's 403 page: report the refusal.
    if let Ok(parsed) = Url::parse(&final_url)
        && parsed != *url
        && matches!(parsed.scheme(), "http" | "https")
    {
        policy
            .check(&parsed)
            .await
            .map_err(|e| ChromiumFailure::Visit(e.into()))?;
    }
    let title = page.get_title().await.map_err(crashed)?.unwrap_or_default();
    let cap = settings.text_budget.saturating_mul(JS_UNITS_PER_CHAR) + 1;
    let script = format!(
        "(() => {{ const t = document.body ? document.body.innerText : ''; \
         let s = t.slice(0, {cap}); if (/[\\uD800-\\uDBFF]$/.test(s)) s = s.slice(0, -1); \
         return [t.length, s]; }})()"
    );
    let (js_len, raw): (usize, String) = page
        .evaluate(script)
        .await
        .map_err(crashed)?
        .into_value()
        .map_err(|e| crashed(e.into()))?;
    let (text, cut) = truncate_chars(&normalize_text(&raw), settings.text_budget);
    Ok(Page {
        url: url.to_string(),
        final_url,
        title: title.trim().to_owned(),
        text,
        truncated: cut || js_len > cap,
        via: Via::Chromium,
    })
}

/// A launched Chromium, its handler task, its egress proxy and its throwaway profile directory.
struct RunningBrowser {
    browser: chromiumoxide::Browser,
    pid: Option<u32>,
    alive: Arc<AtomicBool>,
    handler: JoinHandle<()>,
    proxy: EgressProxy,
    _profile: tempfile::TempDir,
}

impl fmt::Debug for RunningBrowser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningBrowser")
            .field("alive", &self.is_alive())
            .field("proxy", &self.proxy.addr)
            .finish_non_exhaustive()
    }
}

impl RunningBrowser {
    async fn launch(settings: &BrowserSettings) -> Result<Self, LaunchError> {
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
        let proxy_server = format!("http://{}", proxy.addr);
        let config = chromiumoxide::BrowserConfig::builder()
            .chrome_executable(&settings.chromium_path)
            // The agent runs as root in its container, where Chromium's sandbox cannot start.
            .no_sandbox()
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
            .build()
            .map_err(LaunchError::Config)?;
        let started = Instant::now();
        let (mut browser, mut handler) = chromiumoxide::Browser::launch(config).await?;
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
        info!(
            launch_ms = started.elapsed().as_millis() as u64,
            pid = pid.unwrap_or_default(),
            proxy = %proxy.addr,
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

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && !self.handler.is_finished()
    }

    /// Asks Chromium to close and reaps it, each step bounded; a Chromium that does not exit in time
    /// (wedged, or marked dead while still running) is killed, so the agent never waits on it.
    async fn close(&mut self) {
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

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The forward proxy Chromium is forced through: every request it makes is vetted by the
/// [`VisitPolicy`] here and connected to a vetted address by this process, or answered 403.
pub(crate) struct EgressProxy {
    addr: SocketAddr,
    refusals: Arc<Mutex<VecDeque<(Instant, String)>>>,
    accept_loop: JoinHandle<()>,
}

impl fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

#[derive(Clone)]
struct ProxyState {
    /// `None` refuses everything: the browser-wide proxy, which only Chromium's own background traffic
    /// reaches (task pages go through their context's proxy).
    policy: Option<Arc<VisitPolicy>>,
    refusals: Arc<Mutex<VecDeque<(Instant, String)>>>,
}

impl EgressProxy {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub(crate) async fn start(policy: Option<Arc<VisitPolicy>>) -> std::io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let refusals = Arc::new(Mutex::new(VecDeque::with_capacity(REFUSAL_LOG_LEN)));
        let state = ProxyState {
            policy,
            refusals: refusals.clone(),
        };
        let accept_loop = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        warn!(error = %e, "egress proxy accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .preserve_header_case(true)
                        .title_case_headers(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await
                    {
                        debug!(error = %e, "egress proxy connection ended with an error");
                    }
                });
            }
        });
        Ok(Self {
            addr,
            refusals,
            accept_loop,
        })
    }

    /// The refusals logged at or after `since`, oldest first and deduplicated, joined into one message;
    /// `None` when there were none. Chromium's own background requests (a connectivity check after a
    /// failed load, say) can land in the same window, which is why all of them are named.
    fn refusals_since(&self, since: Instant) -> Option<String> {
        let log = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let mut messages: Vec<&str> = Vec::new();
        for (_, message) in log.iter().filter(|(at, _)| *at >= since) {
            if !messages.contains(&message.as_str()) {
                messages.push(message);
            }
        }
        (!messages.is_empty()).then(|| messages.join("; "))
    }
}

impl ProxyState {
    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let target = if req.method() == Method::CONNECT {
            req.uri()
                .authority()
                .map(|authority| format!("https://{authority}/"))
        } else {
            Some(req.uri().to_string())
        };
        let connect = req.method() == Method::CONNECT;
        let Some(url) = target
            .as_deref()
            .and_then(|t| Url::parse(t).ok())
            .filter(|url| connect || url.scheme() == "http")
        else {
            return text_response(
                StatusCode::BAD_REQUEST,
                "egress proxy: not a proxy request".into(),
            );
        };
        let checked = match &self.policy {
            Some(policy) => policy
                .check(&url)
                .await
                .map_err(|refused| refused.to_string()),
            None => Err(format!(
                "VISIT refused: {url} was requested outside a task's browser context"
            )),
        };
        let addrs = match checked {
            Ok(addrs) => addrs,
            Err(message) => {
                info!(
                    method = %req.method(),
                    url = %url,
                    reason = %message,
                    "egress proxy refused a request"
                );
                {
                    let mut log = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() == REFUSAL_LOG_LEN {
                        log.pop_front();
                    }
                    log.push_back((Instant::now(), message.clone()));
                }
                return text_response(StatusCode::FORBIDDEN, message);
            }
        };
        let upstream = match connect_any(&addrs).await {
            Ok(stream) => stream,
            Err(e) => {
                debug!(url = %url, error = %e, "egress proxy could not connect");
                return text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("egress proxy: could not connect to {url}: {e}"),
                );
            }
        };
        if req.method() == Method::CONNECT {
            tunnel(req, upstream);
            return Response::new(Empty::new().map_err(|never| match never {}).boxed());
        }
        match forward(req, upstream).await {
            Ok(response) => response,
            Err(e) => text_response(
                StatusCode::BAD_GATEWAY,
                format!("egress proxy: upstream error for {url}: {e}"),
            ),
        }
    }
}

/// Splices the client's upgraded CONNECT stream to the vetted upstream connection.
fn tunnel(req: Request<Incoming>, mut upstream: TcpStream) {
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    debug!(error = %e, "tunnel closed with an error");
                }
            }
            Err(e) => debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
}

/// Sends a plain-HTTP proxy request (absolute-form URI) to the vetted upstream connection.
async fn forward(
    req: Request<Incoming>,
    upstream: TcpStream,
) -> Result<Response<ProxyBody>, hyper::Error> {
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .title_case_headers(true)
        .handshake(TokioIo::new(upstream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    let (mut parts, body) = req.into_parts();
    let origin_form = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()
        .unwrap_or_else(|_| hyper::Uri::from_static("/"));
    if !parts.headers.contains_key(hyper::header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = authority.as_str().parse()
    {
        parts.headers.insert(hyper::header::HOST, value);
    }
    parts.uri = origin_form;
    parts.headers.remove("proxy-connection");
    parts.headers.remove(hyper::header::PROXY_AUTHORIZATION);
    let response = sender
        .send_request(Request::from_parts(parts, body))
        .await?;
    Ok(response.map(BodyExt::boxed))
}

fn text_response(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Connects to the first vetted address that answers.
async fn connect_any(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out"),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}

/// The fallback: GET over plain HTTP, every redirect hop vetted and pinned, HTML reduced to text.
async fn fetch_over_http(
    policy: &VisitPolicy,
    settings: &BrowserSettings,
    url: &Url,
    reason: String,
) -> Result<Page, VisitError> {
    let http_error = |at: &Url, e: reqwest::Error| VisitError::Http {
        url: at.to_string(),
        reason: e.to_string(),
        retryable: e.is_timeout() || e.is_connect() || e.is_request(),
    };
    let mut current = url.clone();
    for _ in 0..=settings.max_redirects {
        let addrs = policy.check(&current).await?;
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(settings.page_load_timeout)
            .user_agent("Mozilla/5.0 (compatible; euglena-agent)");
        if let Some(url::Host::Domain(domain)) = current.host() {
            // Pin the connection to the addresses the policy vetted: reqwest must not resolve again.
            builder = builder.resolve_to_addrs(domain, &addrs);
        }
        let client = builder.build().map_err(|e| http_error(&current, e))?;
        let mut response = client
            .get(current.clone())
            .send()
            .await
            .map_err(|e| http_error(&current, e))?;
        let status = response.status();
        if status.is_redirection()
            && let Some(location) = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
        {
            current = current.join(location).map_err(|e| VisitError::Http {
                url: current.to_string(),
                reason: format!("bad redirect location {location:?}: {e}"),
                retryable: false,
            })?;
            debug!(to = %current, "following redirect");
            continue;
        }
        if !status.is_success() {
            return Err(VisitError::Http {
                url: current.to_string(),
                reason: format!("status {status}"),
                retryable: status.is_server_error()
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS,
            });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let mut body = Vec::new();
        let mut body_cut = false;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| http_error(&current, e))?
        {
            let room = settings.max_fallback_bytes.saturating_sub(body.len());
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                body_cut = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&body);
        let (title, text) = if content_type.contains("html") || content_type.is_empty() {
            html_to_text(&body)
        } else if content_type.starts_with("text/")
            || content_type.contains("json")
            || content_type.contains("xml")
        {
            (String::new(), body.into_owned())
        } else {
            (String::new(), format!("[non-text content: {content_type}]"))
        };
        let (text, cut) = truncate_chars(&normalize_text(&text), settings.text_budget);
        info!(final_url = %current, via = "http-fallback", "visited");
        return Ok(Page {
            url: url.to_string(),
            final_url: current.to_string(),
            title,
            text,
            truncated: cut || body_cut,
            via: Via::HttpFallback { reason },
        });
    }
    Err(VisitError::TooManyRedirects {
        url: url.to_string(),
        max: settings.max_redirects,
    })
}

/// Trims trailing blanks from lines and collapses runs of blank lines to one.
fn normalize_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for line in text.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank_run += 1;
            if blank_run > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_owned()
}

/// Cuts `text` to at most `budget` characters; says whether it cut.
fn truncate_chars(text: &str, budget: usize) -> (String, bool) {
    match text.char_indices().nth(budget) {
        Some((end, _)) => (text[..end].to_owned(), true),
        None => (text.to_owned(), false),
    }
}

/// Elements whose content is never visible text.
/// (`title` is read separately; `noscript` stays, since JavaScript does not run here.)
const SKIPPED: &[&str] = &["script", "style", "template", "title", "svg"];
/// Elements that start a new line.
const BLOCKS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "br",
    "dd",
    "div",
    "dl",
    "dt",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "tbody",
    "td",
    "th",
    "thead",
    "tr",
    "ul",
];

/// Reduces HTML to `(title, visible text)` without running it: a tolerant tokenizer that drops comments,
/// skips script/style/head content, breaks lines at block elements and decodes common entities.
fn html_to_text(html: &str) -> (String, String) {
    let bytes = html.as_bytes();
    let title = find_ci(bytes, 0, b"<title")
        .and_then(|start| {
            let open_end = start + memchr_byte(&bytes[start..], b'>')? + 1;
            let close = find_ci(bytes, open_end, b"</title")?;
            Some(collapse_spaces(&decode_entities(&html[open_end..close])))
        })
        .unwrap_or_default();

    let mut text = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            let end = memchr_byte(&bytes[i..], b'<').map_or(bytes.len(), |n| i + n);
            text.push_str(&collapse_spaces_keep_edges(&decode_entities(&html[i..end])));
            i = end;
            continue;
        }
        if bytes[i..].starts_with(b"<!--") {
            i = find_ci(bytes, i + 4, b"-->").map_or(bytes.len(), |n| n + 3);
            continue;
        }
        let name_start = i + 1 + usize::from(bytes.get(i + 1) == Some(&b'/'));
        let name_len = bytes[name_start..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if name_len == 0 {
            // `<!doctype>`, `<?xml?>`, or a stray `<` in text.
            if matches!(bytes.get(i + 1), Some(b'!' | b'?')) {
                i = memchr_byte(&bytes[i..], b'>').map_or(bytes.len(), |n| i + n + 1);
            } else {
                text.push('<');
                i += 1;
            }
            continue;
        }
        let name = html[name_start..name_start + name_len].to_ascii_lowercase();
        let tag_end = tag_end(bytes, name_start + name_len);
        let closing = bytes[i + 1] == b'/';
        let self_closing = tag_end >= 2 && bytes[tag_end - 2] == b'/';
        if !closing && !self_closing && SKIPPED.contains(&name.as_str()) {
            let close = format!("</{name}");
            i = find_ci(bytes, tag_end, close.as_bytes())
                .map_or(bytes.len(), |n| tag_end_from(bytes, n));
            continue;
        }
        if BLOCKS.contains(&name.as_str()) {
            text.push('\n');
        } else if matches!(name.as_str(), "td" | "th") {
            text.push('\t');
        }
        i = tag_end;
    }
    let lines: Vec<String> = text.lines().map(collapse_spaces).collect();
    (title, lines.join("\n"))
}

/// Index just past the `>` closing a tag whose name ends at `from`, honouring quoted attribute values.
fn tag_end(bytes: &[u8], from: usize) -> usize {
    let mut quote = None;
    for (offset, &b) in bytes[from..].iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), _) if q == b => quote = None,
            (None, b'>') => return from + offset + 1,
            _ => {}
        }
    }
    bytes.len()
}

fn tag_end_from(bytes: &[u8], start: usize) -> usize {
    memchr_byte(&bytes[start..], b'>').map_or(bytes.len(), |n| start + n + 1)
}

fn memchr_byte(hay: &[u8], needle: u8) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

fn find_ci(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if from >= hay.len() || needle.is_empty() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
        .map(|n| from + n)
}

fn collapse_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Collapses whitespace runs to one space but keeps a single leading/trailing space, so text around
/// inline tags (`a <b>bold</b> word`) stays separated.
fn collapse_spaces_keep_edges(s: &str) -> String {
    let core = collapse_spaces(s);
    if core.is_empty() {
        return if s.is_empty() {
            String::new()
        } else {
            " ".into()
        };
    }
    let lead = if s.starts_with(char::is_whitespace) {
        " "
    } else {
        ""
    };
    let trail = if s.ends_with(char::is_whitespace) {
        " "
    } else {
        ""
    };
    format!("{lead}{core}{trail}")
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let entity_end = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .map(|n| n + 1);
        let decoded = entity_end
            .filter(|&end| rest[end..].starts_with(';'))
            .and_then(|end| decode_entity(&rest[1..end]).map(|c| (c, end + 1)));
        match decoded {
            Some((c, consumed)) => {
                out.push(c);
                rest = &rest[consumed..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn decode_entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return char::from_u32(code).filter(|c| *c != '\0');
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "ndash" => '\u{2013}',
        "mdash" => '\u{2014}',
        "hellip" => '\u{2026}',
        "lsquo" => '\u{2018}',
        "rsquo" => '\u{2019}',
        "ldquo" => '\u{201c}',
        "rdquo" => '\u{201d}',
        "copy" => '\u{a9}',
        "reg" => '\u{ae}',
        "euro" => '\u{20ac}',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_to_text_keeps_visible_text_and_drops_scripts_styles_and_comments() {
        let html = r#"<!DOCTYPE html><html><head><title> The  &amp; Title </title>
            <style>body { color: red }</style><script>var x = "<p>not text</p>";</script></head>
            <body><h1>Heading</h1><!-- hidden --><p>First <b>bold</b> para&nbsp;&#8212;&#x41;</p>
            <div data-x="a>b">Second</div><script type="module">alert(1)</script>
            <ul><li>one</li><li>two</li></ul>3 &lt; 4 &unknown; AT&T</body></html>"#;
        let (title, text) = html_to_text(html);
        assert_eq!(title, "The & Title");
        assert!(text.contains("Heading"), "{text}");
        assert!(text.contains("First bold para \u{2014}A"), "{text}");
        assert!(text.contains("\nSecond"), "{text}");
        assert!(text.contains("one\n"), "{text}");
        assert!(text.contains("3 < 4 &unknown; AT&T"), "{text}");
        for hidden in ["not text", "alert", "color", "hidden", "Title\n"] {
            assert!(!text.contains(hidden), "{hidden:?} leaked into {text:?}");
        }
    }

    #[test]
    fn html_to_text_survives_truncated_and_malformed_markup() {
        for html in [
            "<",
            "<p",
            "<script>never closed",
            "a < b",
            "<!-- open",
            "<div class='x",
            "&#xZZ;",
            "&#0;",
        ] {
            let _ = html_to_text(html);
        }
        assert_eq!(html_to_text("a < b").1, "a < b");
    }

    #[test]
    fn truncation_counts_characters_not_bytes_and_reports_the_cut() {
        assert_eq!(truncate_chars("héllo", 3), ("hél".to_owned(), true));
        assert_eq!(truncate_chars("héllo", 5), ("héllo".to_owned(), false));
        assert_eq!(truncate_chars("", 0), (String::new(), false));
    }

    #[test]
    fn normalized_text_has_no_blank_line_runs_or_trailing_blanks() {
        assert_eq!(normalize_text("\n\na  \n\n\n\nb\t\n \n"), "a\n\nb");
    }

    #[test]
    fn the_observation_names_the_fallback_and_the_truncation() {
        let page = Page {
            url: "http://example.com/".into(),
            final_url: "http://example.com/next".into(),
            title: "Example".into(),
            text: "abc".into(),
            truncated: true,
            via: Via::HttpFallback {
                reason: "Chromium is not installed at /nope".into(),
            },
        };
        let observation = page.observation();
        assert!(observation.starts_with(
            "VISIT http://example.com/ (via: http-fallback, JavaScript did not run; reason: Chromium is not installed at /nope)"
        ), "{observation}");
        assert!(observation.contains("final URL: http://example.com/next"));
        assert!(observation.contains("title: Example"));
        assert!(observation.ends_with("abc\n[page text truncated to 3 characters]"));
    }
}
