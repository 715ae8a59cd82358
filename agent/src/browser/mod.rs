//! VISIT: fetch a web page and turn it into text for the model, behind the SSRF guard.
//!
//! One headless Chromium per agent process, launched lazily on the first VISIT and reused across tasks;
//! each task gets its own browser context (an incognito profile: no cookies or cache shared between
//! tasks), disposed when the task ends ([`VisitSession::close`]). Each visit opens a tab of its own in
//! that context and closes it when the text has been read, so nothing a page started (timers, workers,
//! allocations) outlives its visit. The text is the rendered DOM's `document.body.innerText`, cut inside
//! the page, so JavaScript-built pages read as a person would see them and no more than the text budget
//! ever crosses the DevTools socket.
//!
//! # Bounds
//! - **Tabs:** at most `BROWSER_MAX_TABS` visits run at once per agent, whatever `AGENT_CONCURRENCY` is
//!   (each tab is a renderer process, the bulk of an agent's memory). A visit that cannot get a tab
//!   within the page-load timeout fails with a retryable error.
//! - **Renderer memory:** V8's heap is capped (`--js-flags=--max-old-space-size`); a page that allocates
//!   without end crashes its own renderer, the visit fails, and the browser and the other tabs go on.
//! - **Pop-ups and downloads:** new windows are blocked (`--block-new-web-contents`) and any target a page
//!   manages to open anyway is closed; downloads are denied for every context.
//!
//! # Sandbox
//! Chromium's sandbox is on whenever the agent does not run as root (the image's user is 10001). As root
//! the sandbox cannot start, so it is turned off with a warning at launch ([`Sandbox::for_euid`]).
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
//! followed by hand, every hop checked, the connection pinned to the vetted addresses) with an
//! HTML-to-text conversion ([`text`]), and the observation says so (`via: http-fallback`).
//!
//! [`VisitPolicy::check`]: crate::ssrf::VisitPolicy::check

mod chromium;
mod error;
mod fallback;
mod page;
mod proxy;
mod settings;
pub mod text;
mod visitor;

pub use chromium::Sandbox;
pub use error::{LaunchError, VisitError};
pub use page::{Page, Via};
pub use settings::BrowserSettings;
pub use visitor::{VisitSession, Visitor};
