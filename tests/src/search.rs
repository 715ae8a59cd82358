//! A web-search API fixture with canned results, in Brave Search's shape
//! (`GET /res/v1/web/search?q=...`, results at `web.results[]`) and SearXNG's
//! (`GET /search?q=...&format=json`, results at `results[]`).

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One canned result.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Result title.
    pub title: String,
    /// Result URL.
    pub url: String,
    /// Result snippet.
    pub snippet: String,
}

#[derive(Debug, Default)]
struct Canned {
    hits: Vec<Hit>,
    queries: Vec<String>,
    api_key: Option<String>,
}

/// Handle to a running search fixture.
#[derive(Debug, Clone)]
pub struct FixtureSearch {
    /// Brave-shaped endpoint: what `SEARCH_API_URL` should be for the Brave provider.
    pub brave_url: String,
    /// SearXNG-shaped endpoint.
    pub searxng_url: String,
    state: Arc<Mutex<Canned>>,
}

impl FixtureSearch {
    /// Starts the server on 127.0.0.1:0; requests to the Brave endpoint must carry `api_key` in
    /// `X-Subscription-Token` when one is given.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(api_key: Option<&str>) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(Canned {
            api_key: api_key.map(str::to_owned),
            ..Canned::default()
        }));
        let router = Router::new()
            .route("/res/v1/web/search", get(brave))
            .route("/search", get(searxng))
            .with_state(state.clone());
        let address = crate::serve(router, 0).await?;
        Ok(Self {
            brave_url: format!("http://{address}/res/v1/web/search"),
            searxng_url: format!("http://{address}/search"),
            state,
        })
    }

    /// Every search answers with `hits`.
    pub fn set_hits(&self, hits: Vec<Hit>) {
        self.lock().hits = hits;
    }

    /// The queries received so far.
    pub fn queries(&self) -> Vec<String> {
        self.lock().queries.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Canned> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

type Shared = State<Arc<Mutex<Canned>>>;

async fn brave(
    State(state): Shared,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut canned = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(key) = &canned.api_key
        && headers
            .get("x-subscription-token")
            .and_then(|v| v.to_str().ok())
            != Some(key.as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "bad token"})),
        )
            .into_response();
    }
    canned.queries.push(q.get("q").cloned().unwrap_or_default());
    let results: Vec<Value> = canned
        .hits
        .iter()
        .map(|h| json!({"title": h.title, "url": h.url, "description": h.snippet}))
        .collect();
    Json(json!({"type": "search", "web": {"type": "search", "results": results}})).into_response()
}

async fn searxng(State(state): Shared, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut canned = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    canned.queries.push(q.get("q").cloned().unwrap_or_default());
    let results: Vec<Value> = canned
        .hits
        .iter()
        .map(|h| json!({"title": h.title, "url": h.url, "content": h.snippet}))
        .collect();
    Json(json!({"query": q.get("q"), "results": results})).into_response()
}
