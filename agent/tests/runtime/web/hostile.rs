//! Pages that try to hurt the agent: endless allocation, pop-ups, downloads, and more tasks visiting at
//! once than the browser has tabs for. Each must fail (or be bounded) on its own, and the next visit works.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent::browser::{BrowserSettings, Via, VisitError, Visitor};
use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use super::chromium::renderers_of;
use super::helpers::Fixture;
use super::visit::{loopback_allowed, settings};

const PLAIN: &str = "<body><script>document.body.innerText = 'plain-' + (6*7)</script></body>";

/// Allocates without end in the load itself: only the renderer's heap limit stops it.
const ALLOCATION_BOMB: &str = "<body><script>const hoard = []; \
    for (;;) { hoard.push(new Array(1 << 20).fill(Math.random())); }</script></body>";

/// Opens windows every way a page can; the text says how many `window.open` calls got a window.
const POP_UPS: &str = "<body><a id='l' href='/plain' target='_blank'>x</a><script>\
    let opened = 0; for (let i = 0; i < 5; i++) { if (window.open('/plain', 'w' + i)) opened++; } \
    document.getElementById('l').click(); \
    document.body.innerText = 'opened:' + opened;</script></body>";

const DOWNLOAD_NAME: &str = "euglena-download-probe.bin";

async fn hostile_server() -> Fixture {
    Fixture::spawn(
        Router::new()
            .route("/plain", get(|| async { Html(PLAIN) }))
            .route("/bomb", get(|| async { Html(ALLOCATION_BOMB) }))
            .route("/pop-ups", get(|| async { Html(POP_UPS) }))
            .route(
                "/download",
                get(|| async {
                    (
                        [
                            (header::CONTENT_TYPE, "application/octet-stream"),
                            (
                                header::CONTENT_DISPOSITION,
                                "attachment; filename=\"euglena-download-probe.bin\"",
                            ),
                        ],
                        vec![0_u8; 64 * 1024],
                    )
                        .into_response()
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    Html(
                        "<body><script>const nodes = []; for (let i = 0; i < 2000; i++) \
                         { const p = document.createElement('p'); p.textContent = 'row ' + i; \
                         nodes.push(p); } document.body.append(...nodes); \
                         document.body.innerText = 'slow-done';</script></body>",
                    )
                }),
            ),
    )
    .await
}

#[tokio::test]
async fn a_page_that_allocates_without_end_crashes_only_its_own_tab_and_the_next_visit_works() {
    let pages = hostile_server().await;
    let visitor = Visitor::new(
        BrowserSettings {
            js_heap_mb: 128,
            page_load_timeout: Duration::from_secs(30),
            ..settings()
        },
        loopback_allowed(),
    );
    let mut session = visitor.session();
    session.visit(&pages.url("/plain")).await.unwrap();
    let pid = visitor.browser_pid().await.expect("chromium runs");

    let started = Instant::now();
    let error = session.visit(&pages.url("/bomb")).await.unwrap_err();

    assert!(
        matches!(error, VisitError::PageCrashed { .. }),
        "the heap limit should crash the page's renderer: {error}"
    );
    assert!(!error.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the crash was seen only after {:?}",
        started.elapsed()
    );
    // The same browser serves the same session and a new one.
    let page = session.visit(&pages.url("/plain")).await.unwrap();
    assert_eq!(
        (page.text.as_str(), &page.via),
        ("plain-42", &Via::Chromium)
    );
    let mut next_task = visitor.session();
    assert_eq!(
        next_task.visit(&pages.url("/plain")).await.unwrap().text,
        "plain-42"
    );
    assert_eq!(visitor.browser_pid().await, Some(pid), "chromium restarted");
    session.close().await;
    next_task.close().await;
    visitor.shutdown().await;
}

#[tokio::test]
async fn pop_ups_are_blocked_and_no_tab_outlives_its_visit() {
    let pages = hostile_server().await;
    let visitor = Visitor::new(settings(), loopback_allowed());
    visitor.warm_up().await.unwrap();
    let before = visitor.open_pages().await.unwrap();
    let mut session = visitor.session();

    let page = session.visit(&pages.url("/pop-ups")).await.unwrap();

    assert_eq!(page.text, "opened:0", "window.open gave the page a window");
    // Give a pop-up that slipped through time to appear, then count every page target.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(visitor.open_pages().await.unwrap(), before);
    assert_eq!(pages.requests("/plain"), 0, "a pop-up loaded its page");
    session.close().await;
    visitor.shutdown().await;
}

#[tokio::test]
async fn downloads_are_denied() {
    let pages = hostile_server().await;
    let visitor = Visitor::new(settings(), loopback_allowed());
    let mut session = visitor.session();
    let home = std::env::var_os("HOME").map_or_else(|| "/root".into(), std::path::PathBuf::from);
    let candidates = [
        home.join("Downloads").join(DOWNLOAD_NAME),
        std::env::current_dir().unwrap().join(DOWNLOAD_NAME),
    ];
    for path in &candidates {
        let _ = std::fs::remove_file(path);
    }

    // Chromium either reports the aborted navigation or leaves the blank page: no text either way.
    if let Ok(page) = session.visit(&pages.url("/download")).await {
        assert!(page.text.is_empty(), "{page:?}");
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    for path in &candidates {
        assert!(
            !path.exists(),
            "the download was saved at {}",
            path.display()
        );
    }
    assert_eq!(
        session.visit(&pages.url("/plain")).await.unwrap().text,
        "plain-42"
    );
    session.close().await;
    visitor.shutdown().await;
}

#[tokio::test]
async fn sixteen_tasks_visiting_at_once_never_hold_more_tabs_than_the_limit() {
    let pages = Arc::new(hostile_server().await);
    let visitor = Visitor::new(
        BrowserSettings {
            max_tabs: 2,
            ..settings()
        },
        loopback_allowed(),
    );
    visitor.warm_up().await.unwrap();
    let baseline_pages = visitor.open_pages().await.unwrap();
    let pid = visitor.browser_pid().await.unwrap();
    let baseline_renderers = renderers_of(pid).len();

    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (visitor, pages, done) = (visitor.clone(), pages.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut session = visitor.session();
            let text = session.visit(&pages.url("/slow")).await.map(|p| p.text);
            session.close().await;
            done.fetch_add(1, Ordering::SeqCst);
            text
        }));
    }
    let (mut most_pages, mut most_renderers, mut samples) = (0, 0, 0);
    while done.load(Ordering::SeqCst) < 16 {
        most_pages = most_pages.max(visitor.open_pages().await.unwrap_or(0));
        most_renderers = most_renderers.max(renderers_of(pid).len());
        samples += 1;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut texts = HashSet::new();
    for task in tasks {
        texts.insert(task.await.unwrap().unwrap());
    }

    assert_eq!(texts, HashSet::from(["slow-done".to_owned()]));
    assert!(samples > 5, "too few samples ({samples}) to see the bound");
    assert!(
        most_pages <= baseline_pages + 2,
        "{most_pages} page targets open at once (baseline {baseline_pages}, limit 2 tabs)"
    );
    // Renderers follow tabs with a lag: a tab starts on a blank page's renderer and swaps to the site's,
    // and a closed tab's renderer exits a moment later. Allow four per tab slot, which is still half of
    // what sixteen tabs at once would start.
    eprintln!(
        "at most {most_pages} page targets and {most_renderers} renderers (baseline {baseline_pages} and \
         {baseline_renderers}) over {samples} samples"
    );
    assert!(
        most_renderers <= baseline_renderers + 4 * 2,
        "{most_renderers} renderers at once (baseline {baseline_renderers}, limit 2 tabs)"
    );
    visitor.shutdown().await;
}
