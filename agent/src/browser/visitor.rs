//! The VISIT executor: one Chromium per agent, a browser context per task, a tab per visit, and a bounded
//! number of tabs open at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::inspector::{
    EnableParams as InspectorEnable, EventTargetCrashed,
};
use chromiumoxide::cdp::browser_protocol::page::{
    DialogType, EventJavascriptDialogOpening, HandleJavaScriptDialogParams,
};
use chromiumoxide::cdp::browser_protocol::target::{
    CreateBrowserContextParams, CreateTargetParams, GetTargetsParams,
};
use chromiumoxide::error::CdpError;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};
use url::Url;

use super::chromium::RunningBrowser;
use super::error::{LaunchError, VisitError};
use super::fallback::fetch_over_http;
use super::page::{Page, Via, normalize_text, truncate_chars};
use super::proxy::EgressProxy;
use super::settings::BrowserSettings;
use crate::ssrf::VisitPolicy;

/// The longest opening a session's browser context, or a tab, may take (both come before the per-visit
/// bound, which covers the load).
const TAB_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest closing a tab or disposing a context may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// JavaScript characters fetched from the page per character of text budget (the budget counts Unicode
/// scalar values, JavaScript counts UTF-16 units).
const JS_UNITS_PER_CHAR: usize = 2;
/// Characters of a page's title read at most.
const TITLE_CHARS: usize = 300;

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
    /// One permit per tab that may be open at once (`BrowserSettings::max_tabs`).
    tabs: Arc<Semaphore>,
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
        let tabs = Arc::new(Semaphore::new(settings.max_tabs.max(1)));
        Self {
            inner: Arc::new(VisitorInner {
                settings,
                policy: Arc::new(policy),
                state: tokio::sync::Mutex::new(BrowserState::NotStarted),
                tabs,
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

    /// How many page targets (tabs, pop-ups) the live Chromium has open, in every context (for
    /// diagnostics and tests); `None` without a live Chromium.
    pub async fn open_pages(&self) -> Option<usize> {
        let running = match &*self.inner.state.lock().await {
            BrowserState::Running(running) if running.is_alive() => running.clone(),
            _ => return None,
        };
        let targets = running
            .browser
            .execute(GetTargetsParams::default())
            .await
            .ok()?;
        Some(
            targets
                .result
                .target_infos
                .iter()
                .filter(|t| t.r#type == "page")
                .count(),
        )
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

impl VisitorInner {
    /// A tab permit, waiting at most the page-load timeout for one.
    async fn tab_permit(&self) -> Result<OwnedSemaphorePermit, VisitError> {
        let wait = self.settings.page_load_timeout;
        match tokio::time::timeout(wait, self.tabs.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one would mean the same to the model.
            Ok(Err(_)) | Err(_) => Err(VisitError::Busy {
                secs: wait.as_secs(),
            }),
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
    /// when a redirect leads somewhere forbidden, when the page cannot be loaded in time or crashes its
    /// renderer, or when no tab frees up in time.
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
            let waited = Instant::now();
            let permit = inner.tab_permit().await?;
            let started = Instant::now();
            let visited = visit_in_chromium(context, policy, settings, &url).await;
            drop(permit);
            match visited {
                Ok(page) => {
                    info!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        tab_wait_ms = started.duration_since(waited).as_millis() as u64,
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
                .proxy_server(format!("http://{}", proxy.addr()))
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
                    warn!(
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
            self.context = Some(SessionContext { browser, id, proxy });
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
    /// Opens a tab in this context, with its dialogs answered and its renderer crash reported.
    async fn open_tab(&self) -> Result<Tab, CdpError> {
        let params = CreateTargetParams::builder()
            .url("about:blank")
            .browser_context_id(self.id.clone())
            .build()
            .map_err(CdpError::msg)?;
        let page = self.browser.browser.new_page(params).await?;
        let mut tab = Tab {
            page: page.clone(),
            watchers: Vec::with_capacity(2),
        };
        let mut dialogs = page
            .event_listener::<EventJavascriptDialogOpening>()
            .await?;
        let dialog_page = page.clone();
        tab.watchers.push(tokio::spawn(async move {
            while let Some(dialog) = dialogs.next().await {
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
        Ok(tab)
    }

    async fn dispose(self) {
        if !self.browser.is_alive() {
            return;
        }
        match tokio::time::timeout(
            CLOSE_TIMEOUT,
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

/// One visit's tab: closed when the visit ends, whatever happened in it.
struct Tab {
    page: chromiumoxide::Page,
    watchers: Vec<JoinHandle<()>>,
}

impl Tab {
    /// Resolves when the tab's renderer crashes (out of memory, say).
    async fn crashed(&mut self) -> Result<oneshot::Receiver<()>, CdpError> {
        let mut crashes = self.page.event_listener::<EventTargetCrashed>().await?;
        self.page.execute(InspectorEnable::default()).await?;
        let (tx, rx) = oneshot::channel();
        self.watchers.push(tokio::spawn(async move {
            if crashes.next().await.is_some() {
                let _ = tx.send(());
            }
        }));
        Ok(rx)
    }

    async fn close(self, browser_alive: bool) {
        for watcher in &self.watchers {
            watcher.abort();
        }
        if !browser_alive {
            return;
        }
        match tokio::time::timeout(CLOSE_TIMEOUT, self.page.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "could not close the tab"),
            Err(_) => debug!("closing the tab timed out"),
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

/// Opens a tab, loads and reads `url` in it within the bounds, and closes the tab.
async fn visit_in_chromium(
    context: &SessionContext,
    policy: &VisitPolicy,
    settings: &BrowserSettings,
    url: &Url,
) -> Result<Page, ChromiumFailure> {
    let mut tab = match tokio::time::timeout(TAB_OPEN_TIMEOUT, context.open_tab()).await {
        Ok(tab) => tab.map_err(|e| classify(&context.browser, url, e))?,
        Err(_) => {
            warn!(
                timeout = ?TAB_OPEN_TIMEOUT,
                "opening a tab timed out; treating Chromium as wedged"
            );
            return Err(ChromiumFailure::Crashed(format!(
                "opening a tab took longer than {TAB_OPEN_TIMEOUT:?}"
            )));
        }
    };
    let result = match tab.crashed().await {
        Err(e) => Err(classify(&context.browser, url, e)),
        Ok(crashed) => {
            // The load has its own timeout; this bounds the reads after it too, so a wedged tab cannot
            // hang a task.
            let bound = settings.page_load_timeout + Duration::from_secs(10);
            let read = tokio::time::timeout(
                bound,
                load_and_read(&tab.page, context, policy, settings, url),
            );
            tokio::select! {
                read = read => read.unwrap_or_else(|_| {
                    Err(ChromiumFailure::Visit(VisitError::Timeout {
                        url: url.to_string(),
                        secs: bound.as_secs(),
                    }))
                }),
                Ok(()) = crashed => {
                    warn!("the page crashed its renderer");
                    Err(ChromiumFailure::Visit(VisitError::PageCrashed { url: url.to_string() }))
                }
            }
        }
    };
    tab.close(context.browser.is_alive()).await;
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
    // Title and text are cut inside the page: a page with megabytes of text sends the budget, not all.
    let cap = settings.text_budget.saturating_mul(JS_UNITS_PER_CHAR) + 1;
    let script = format!(
        "(() => {{ const cut = (t, n) => {{ let s = t.slice(0, n); \
         if (/[\\uD800-\\uDBFF]$/.test(s)) s = s.slice(0, -1); return s; }}; \
         const t = document.body ? document.body.innerText : ''; \
         return [t.length, cut(t, {cap}), cut(String(document.title || ''), {TITLE_CHARS})]; }})()"
    );
    let (js_len, raw, title): (usize, String, String) = page
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
