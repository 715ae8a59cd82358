//! VISIT through real Chromium (and its HTTP fallback) against loopback fixture pages.
//!
//! The fixture pages live on 127.0.0.1, which the SSRF guard forbids, so every policy that should reach
//! them allow-lists exactly `127.0.0.1`; `localhost` (same server, resolved by name) stays forbidden and
//! plays the part of the internal host an attacker wants to reach.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent::browser::{BrowserSettings, Via, VisitError, Visitor};
use agent::ssrf::VisitPolicy;
use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect};
use axum::routing::get;

use super::helpers::Fixture;

const JS_PAGE: &str = "<!doctype html><html><head><title>Fixture</title></head>\
    <body><p>static-text</p><script>document.body.innerText = 'rendered-' + (6*7)</script></body></html>";

pub(super) fn settings() -> BrowserSettings {
    BrowserSettings {
        chromium_path: std::env::var_os("CHROMIUM_PATH")
            .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from),
        ..BrowserSettings::default()
    }
}

/// The fixture pages' host, allow-listed because it is loopback.
pub(super) fn loopback_allowed() -> VisitPolicy {
    VisitPolicy::new(vec!["127.0.0.1".into()])
}

async fn page_server() -> Fixture {
    Fixture::spawn(
        Router::new()
            .route("/", get(|| async { Html(JS_PAGE) }))
            .route("/hop", get(|| async { Redirect::temporary("/") }))
            .route(
                "/set-cookie",
                get(|| async {
                    Html("<body><script>document.cookie = 'session=abc; path=/'; \
                          document.body.innerText = 'set:' + document.cookie</script></body>")
                }),
            )
            .route(
                "/dialogs",
                get(|| async {
                    Html("<body><script>alert('hi'); const ok = confirm('sure?'); \
                          document.body.innerText = 'after-dialogs:' + ok</script></body>")
                }),
            )
            .route(
                "/show-cookie",
                get(|| async {
                    Html("<body><script>document.body.innerText = 'cookie:[' + document.cookie + ']'</script></body>")
                }),
            )
            .route(
                "/style-a.css",
                get(|| async { ([(header::CONTENT_TYPE, "text/css")], "p { color: blue }").into_response() }),
            ),
    )
    .await
}

/// A server standing in for an internal service; nothing may ever reach it.
async fn internal_server() -> Fixture {
    Fixture::spawn(Router::new().fallback(|| async { "internal secret" })).await
}

#[tokio::test]
async fn visit_returns_text_that_only_javascript_rendering_produces() {
    let pages = page_server().await;
    let visitor = Visitor::new(settings(), loopback_allowed());
    let mut session = visitor.session();

    let page = session.visit(&pages.url("/")).await.unwrap();

    assert_eq!(page.via, Via::Chromium);
    assert_eq!(page.text, "rendered-42");
    assert_eq!(page.title, "Fixture");
    assert!(!page.truncated);
    assert!(page.observation().contains("(via: chromium)"));
    session.close().await;
    visitor.shutdown().await;
}

#[tokio::test]
async fn javascript_dialogs_are_dismissed_instead_of_blocking_the_tab() {
    let pages = page_server().await;
    let visitor = Visitor::new(settings(), loopback_allowed());
    let mut session = visitor.session();

    let started = Instant::now();
    let page = session.visit(&pages.url("/dialogs")).await.unwrap();

    assert_eq!(page.text, "after-dialogs:false");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the dialog stalled the load"
    );
    // The next visit of the session works (each visit has a tab of its own).
    assert_eq!(
        session.visit(&pages.url("/")).await.unwrap().text,
        "rendered-42"
    );
    session.close().await;
    visitor.shutdown().await;
}

#[tokio::test]
async fn page_text_beyond_the_budget_is_cut_and_the_cut_reported() {
    let pages = page_server().await;
    let visitor = Visitor::new(
        BrowserSettings {
            text_budget: 8,
            ..settings()
        },
        loopback_allowed(),
    );
    let mut session = visitor.session();

    let page = session.visit(&pages.url("/")).await.unwrap();

    assert_eq!(page.text, "rendered");
    assert!(page.truncated);
    assert!(
        page.observation()
            .ends_with("[page text truncated to 8 characters]")
    );
    session.close().await;
    visitor.shutdown().await;
}

#[tokio::test]
async fn visit_refuses_loopback_metadata_private_and_loopback_names_before_any_request() {
    let pages = page_server().await;
    let visitor = Visitor::new(settings(), VisitPolicy::default());
    let mut session = visitor.session();

    for url in [
        pages.url("/"),
        pages.localhost_url("/"),
        format!("http://[::1]:{}/", pages.addr.port()),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://169.254.170.2/v2/credentials".to_owned(),
        "http://10.1.2.3/".to_owned(),
        "file:///etc/passwd".to_owned(),
    ] {
        let err = session.visit(&url).await.unwrap_err();
        assert!(matches!(err, VisitError::Refused(_)), "{url}: {err}");
        assert!(err.to_string().starts_with("VISIT refused: "), "{err}");
        assert!(!err.is_retryable(), "{err}");
    }
    let metadata = session
        .visit("http://169.254.169.254/")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        metadata,
        "VISIT refused: 169.254.169.254 is a link-local address (the cloud instance metadata endpoint); \
         add the host to VISIT_ALLOWLIST to allow it"
    );
    assert_eq!(pages.connections(), 0, "a refused VISIT reached the server");
    assert!(
        !visitor.is_browser_running().await,
        "refusals must not even start Chromium"
    );
    session.close().await;
}

#[tokio::test]
async fn a_redirect_from_an_allowed_host_to_a_forbidden_one_is_refused_without_reaching_it() {
    let internal = internal_server().await;
    let plain = internal.localhost_url("/secret");
    let tls = format!("https://localhost:{}/secret", internal.addr.port());
    let pages = Fixture::spawn(
        Router::new()
            .route(
                "/redirect",
                get(move || async move { Redirect::temporary(&plain) }),
            )
            .route(
                "/redirect-tls",
                get(move || async move { Redirect::temporary(&tls) }),
            ),
    )
    .await;
    let visitor = Visitor::new(settings(), loopback_allowed());
    let mut session = visitor.session();

    // Plain HTTP: the proxy answers 403 for the second hop, and the final-URL check names the refusal.
    let err = session.visit(&pages.url("/redirect")).await.unwrap_err();
    assert!(matches!(err, VisitError::Refused(_)), "{err}");
    assert!(
        err.to_string().starts_with("VISIT refused: localhost"),
        "{err}"
    );
    // HTTPS: the proxy refuses the CONNECT; the session's own proxy explains the tunnel failure.
    let err = session
        .visit(&pages.url("/redirect-tls"))
        .await
        .unwrap_err();
    assert!(matches!(err, VisitError::Blocked { .. }), "{err}");
    assert!(
        err.to_string().starts_with("VISIT refused: localhost"),
        "{err}"
    );

    assert_eq!(pages.requests("/redirect"), 1, "the first hop should load");
    assert_eq!(
        pages.requests("/redirect-tls"),
        1,
        "the first hop should load"
    );
    assert_eq!(
        internal.connections(),
        0,
        "a redirect reached the forbidden host"
    );
    session.close().await;
    visitor.shutdown().await;
}

fn page_with_subresources(internal_port: u16) -> String {
    format!(
        "<!doctype html><html><head><title>Subresources</title>\
         <link rel=\"stylesheet\" href=\"/style-a.css\">\
         <link rel=\"stylesheet\" href=\"http://localhost:{internal_port}/plain.css\">\
         <link rel=\"stylesheet\" href=\"https://localhost:{internal_port}/tunnel.css\">\
         </head><body>page body</body></html>"
    )
}

#[tokio::test]
async fn subresources_on_forbidden_hosts_never_connect_while_allowed_ones_load() {
    let internal = internal_server().await;
    let html = page_with_subresources(internal.addr.port());
    let pages = Fixture::spawn(
        Router::new()
            .route(
                "/",
                get(move || {
                    let html = html.clone();
                    async move { Html(html) }
                }),
            )
            .route(
                "/style-a.css",
                get(|| async { ([(header::CONTENT_TYPE, "text/css")], "p {}").into_response() }),
            ),
    )
    .await;

    let visitor = Visitor::new(settings(), loopback_allowed());
    let mut session = visitor.session();
    let page = session.visit(&pages.url("/")).await.unwrap();
    assert_eq!(page.text, "page body");
    assert_eq!(
        pages.requests("/style-a.css"),
        1,
        "the allowed stylesheet should load"
    );
    assert_eq!(
        internal.connections(),
        0,
        "a forbidden subresource got through"
    );
    session.close().await;
    visitor.shutdown().await;

    // Control: allow-list the internal host too, and the same page does reach it (through the proxy),
    // so the zero above is the guard's doing.
    let visitor = Visitor::new(
        settings(),
        VisitPolicy::new(vec!["127.0.0.1".into(), "localhost".into()]),
    );
    let mut session = visitor.session();
    session.visit(&pages.url("/")).await.unwrap();
    assert_eq!(
        internal.requests("/plain.css"),
        1,
        "the allow-listed stylesheet should load"
    );
    session.close().await;
    visitor.shutdown().await;
}

#[tokio::test]
async fn sessions_share_one_browser_but_never_cookies() {
    let pages = page_server().await;
    let visitor = Visitor::new(settings(), loopback_allowed());

    let mut first = visitor.session();
    let set = first.visit(&pages.url("/set-cookie")).await.unwrap();
    assert_eq!(set.text, "set:session=abc");
    let same_task = first.visit(&pages.url("/show-cookie")).await.unwrap();
    assert_eq!(
        same_task.text, "cookie:[session=abc]",
        "a task keeps its own cookies"
    );
    first.close().await;

    let mut second = visitor.session();
    let other_task = second.visit(&pages.url("/show-cookie")).await.unwrap();
    assert_eq!(
        other_task.text, "cookie:[]",
        "a new task must start with a fresh context"
    );
    assert_eq!(
        visitor.warm_up().await.unwrap(),
        Duration::ZERO,
        "the browser should have been reused, not relaunched"
    );
    second.close().await;
    visitor.shutdown().await;
}

#[tokio::test]
async fn without_chromium_visit_falls_back_to_http_and_says_so() {
    let internal = internal_server().await;
    let pages = page_server().await;
    let visitor = Visitor::new(
        BrowserSettings {
            chromium_path: PathBuf::from("/nonexistent/chromium"),
            ..settings()
        },
        loopback_allowed(),
    );
    let mut session = visitor.session();

    let page = session.visit(&pages.url("/hop")).await.unwrap();

    let Via::HttpFallback { reason } = &page.via else {
        panic!("expected the HTTP fallback, got {:?}", page.via);
    };
    assert!(
        reason.contains("not installed at /nonexistent/chromium"),
        "{reason}"
    );
    assert_eq!(
        page.final_url,
        pages.url("/"),
        "the redirect should be followed"
    );
    assert_eq!(page.title, "Fixture");
    assert_eq!(
        page.text, "static-text",
        "no JavaScript runs in the fallback"
    );
    assert!(
        page.observation().contains("via: http-fallback"),
        "{}",
        page.observation()
    );

    // The fallback vets every hop too.
    let redirect_to_internal = Fixture::spawn(Router::new().route(
        "/r",
        get({
            let target = internal.localhost_url("/secret");
            move || {
                let target = target.clone();
                async move { Redirect::temporary(&target) }
            }
        }),
    ))
    .await;
    let err = session
        .visit(&redirect_to_internal.url("/r"))
        .await
        .unwrap_err();
    assert!(matches!(err, VisitError::Refused(_)), "{err}");
    assert_eq!(internal.connections(), 0);
    session.close().await;
}

#[tokio::test]
async fn after_chromium_dies_the_next_visit_relaunches_it() {
    let pages = page_server().await;
    let visitor = Visitor::new(settings(), loopback_allowed());
    let mut session = visitor.session();
    session.visit(&pages.url("/")).await.unwrap();
    let pid = visitor
        .browser_pid()
        .await
        .expect("a running browser has a pid");

    // Kill exactly the Chromium this visitor launched (a process this test started).
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while visitor.is_browser_running().await {
        assert!(
            Instant::now() < deadline,
            "the dead browser was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let page = session.visit(&pages.url("/")).await.unwrap();
    assert_eq!(
        page.via,
        Via::Chromium,
        "a dead browser should be relaunched"
    );
    assert_ne!(visitor.browser_pid().await, Some(pid));
    assert_eq!(page.text, "rendered-42");
    session.close().await;
    visitor.shutdown().await;
}

/// Timings for the report: `cargo test --test web -- --ignored --nocapture measure`.
#[tokio::test]
#[ignore = "measurement, not a check"]
async fn measure_launch_and_warm_visit_latency() {
    let pages = page_server().await;
    let visitor = Visitor::new(settings(), loopback_allowed());
    let launch = visitor.warm_up().await.unwrap();
    let mut session = visitor.session();
    session.visit(&pages.url("/")).await.unwrap();
    let mut warm = Vec::new();
    for _ in 0..15 {
        let started = Instant::now();
        let page = session.visit(&pages.url("/")).await.unwrap();
        warm.push(started.elapsed());
        assert_eq!(page.text, "rendered-42");
    }
    session.close().await;
    let mut fresh = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let mut session = visitor.session();
        session.visit(&pages.url("/")).await.unwrap();
        session.close().await;
        fresh.push(started.elapsed());
    }
    warm.sort();
    fresh.sort();
    println!(
        "chromium launch: {launch:?}; warm VISIT p50 {:?} (min {:?}, max {:?}, n={}); \
         VISIT in a fresh context incl. create+dispose p50 {:?} (n={})",
        warm[warm.len() / 2],
        warm[0],
        warm[warm.len() - 1],
        warm.len(),
        fresh[fresh.len() / 2],
        fresh.len()
    );
    visitor.shutdown().await;
}

fn signal(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn a_chromium_that_stops_answering_gets_the_tab_open_bound_and_is_killed_at_shutdown() {
    let pages = page_server().await;
    let visitor = Visitor::new(settings(), loopback_allowed());
    let mut warm = visitor.session();
    warm.visit(&pages.url("/")).await.unwrap();
    warm.close().await;
    let pid = visitor.browser_pid().await.expect("a running browser");

    // Frozen, not dead: it holds its sockets open and answers nothing.
    signal(pid, "-STOP");
    let mut session = visitor.session();
    let started = Instant::now();
    let page = session.visit(&pages.url("/")).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "opening a tab in a frozen Chromium is bounded: {took:?}"
    );
    let page = page.expect("the page is fetched without Chromium");
    assert!(
        matches!(&page.via, Via::HttpFallback { reason } if reason.contains("within")),
        "falls back to HTTP, saying why: {page:?}"
    );
    session.close().await;

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), visitor.shutdown())
        .await
        .expect("shutdown does not wait on a frozen Chromium");
    assert!(started.elapsed() < Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_exists(pid) {
        assert!(Instant::now() < deadline, "the frozen Chromium was killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
