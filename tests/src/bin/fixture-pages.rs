//! `fixture-pages`: JavaScript-built pages on loopback, for measuring what VISIT costs (`bench/footprint.sh`).
//!
//! Usage: `fixture-pages [PORT]` (default 0: any free port); prints its base URL. `GET /news/{n}` is a shell
//! whose text is all built by `/app.js`, with the weight of a real news page: a few hundred DOM nodes and a
//! few MB of JavaScript objects kept alive while the tab is open. Page `n` seeds the script, so pages differ
//! but repeat exactly. When the script has finished it posts a beacon to `/rendered`; `GET /stats` counts the
//! pages, scripts and beacons served, so a run can tell Chromium (which fetches and runs the script) from the
//! agent's plain-HTTP fallback (which does neither).

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Builds the page: a header, a nav of sections, 80 article cards (about 500 nodes in all), and a store of
/// 20,000 story objects (about 5 MB of V8 heap) kept on `window`, as a news site's state store would be.
const APP_JS: &str = r##"(function () {
  "use strict";
  let seed = (window.PAGE * 2654435761) % 4294967296 || 1;
  const rand = () => { seed = (seed * 1664525 + 1013904223) % 4294967296; return seed / 4294967296; };
  const WORDS = ["council", "river", "market", "budget", "harbour", "station", "festival", "school",
    "election", "bridge", "weather", "museum", "transport", "housing", "energy", "library", "hospital",
    "stadium", "airport", "forest", "industry", "science", "court", "village", "reform", "strike", "record"];
  const pick = () => WORDS[Math.floor(rand() * WORDS.length)];
  const sentence = (n) => { const w = []; for (let i = 0; i < n; i++) w.push(pick()); return w.join(" "); };
  const store = [];
  for (let i = 0; i < 20000; i++) {
    store.push({ id: i, title: sentence(6), body: sentence(14), tags: [pick(), pick(), pick()],
                 score: rand(), views: Math.floor(rand() * 100000) });
  }
  window.__store = store;
  const el = (tag, text, parent) => { const e = document.createElement(tag); if (text) e.textContent = text; parent.appendChild(e); return e; };
  const app = document.getElementById("app");
  app.textContent = "";
  const header = el("header", "", app);
  const headline = "Local News " + window.PAGE + ": " + sentence(5);
  el("h1", headline, header);
  const nav = el("nav", "", header);
  for (let i = 0; i < 24; i++) { const a = el("a", pick(), nav); a.href = "#s" + i; }
  const main = el("main", "", app);
  for (let i = 0; i < 80; i++) {
    const story = store[Math.floor(rand() * store.length)];
    const card = el("article", "", main);
    const h = el("h2", "", card);
    const a = el("a", story.title, h);
    a.href = "#story" + story.id;
    el("p", story.body, card);
    el("p", "Tags: " + story.tags.join(", "), card);
    el("span", story.views + " readers", card);
  }
  el("footer", "Rendered by script for page " + window.PAGE, app);
  document.title = headline;
  navigator.sendBeacon("/rendered", String(window.PAGE));
})();
"##;

#[derive(Default)]
struct Served {
    pages: AtomicU64,
    scripts: AtomicU64,
    rendered: AtomicU64,
}

type Shared = State<Arc<Served>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(0);
    let router = Router::new()
        .route("/news/{n}", get(page))
        .route("/app.js", get(script))
        .route("/rendered", post(rendered))
        .route("/stats", get(stats))
        .with_state(Arc::new(Served::default()));
    let address = euglena_tests::serve(router, port).await?;
    println!("fixture-pages at http://{address}");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

async fn page(State(served): Shared, Path(n): Path<u32>) -> Html<String> {
    served.pages.fetch_add(1, Ordering::Relaxed);
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Loading</title></head>\
         <body><div id=\"app\">Loading...</div><script>window.PAGE = {n};</script>\
         <script src=\"/app.js\"></script></body></html>"
    ))
}

async fn script(State(served): Shared) -> impl IntoResponse {
    served.scripts.fetch_add(1, Ordering::Relaxed);
    (
        [
            (header::CONTENT_TYPE, "text/javascript"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        APP_JS,
    )
}

async fn rendered(State(served): Shared) {
    served.rendered.fetch_add(1, Ordering::Relaxed);
}

async fn stats(State(served): Shared) -> Json<serde_json::Value> {
    Json(json!({
        "pages": served.pages.load(Ordering::Relaxed),
        "scripts": served.scripts.load(Ordering::Relaxed),
        "rendered": served.rendered.load(Ordering::Relaxed),
    }))
}
