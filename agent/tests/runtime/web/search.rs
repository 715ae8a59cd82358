//! SEARCH clients against a loopback fixture that answers like Brave Search and SearXNG.

use std::collections::HashMap;
use std::time::Duration;

use agent::search::{
    SearchClient, SearchError, SearchHit, SearchProvider, SearchSettings, format_hits,
};
use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use secrecy::SecretString;
use url::Url;

use super::helpers::Fixture;

const KEY: &str = "test-key-5f2b9c";

const BRAVE_ANSWER: &str = r#"{
  "type": "search",
  "query": {"original": "rust async"},
  "web": {"type": "search", "results": [
    {"title": "Async in <strong>Rust</strong>", "url": "https://rust-lang.org/async",
     "description": "The <strong>async</strong> book &amp; more", "age": "2 days", "extra_snippets": []},
    {"title": "Tokio", "url": "https://tokio.rs/", "description": "A runtime"},
    {"title": "No URL here", "description": "dropped"}
  ]}
}"#;

const SEARXNG_ANSWER: &str = r#"{
  "query": "rust async",
  "number_of_results": 0,
  "results": [
    {"url": "https://tokio.rs/", "title": "Tokio", "content": "An asynchronous runtime", "engine": "ddg", "score": 1.5},
    {"url": "https://docs.rs/futures", "title": "futures", "content": "Zero-cost futures"}
  ],
  "answers": [], "suggestions": []
}"#;

async fn search_api() -> Fixture {
    Fixture::spawn(
        Router::new()
            .route(
                "/brave",
                get(
                    |headers: HeaderMap, Query(q): Query<HashMap<String, String>>| async move {
                        if headers
                            .get("x-subscription-token")
                            .and_then(|v| v.to_str().ok())
                            != Some(KEY)
                        {
                            return (StatusCode::UNAUTHORIZED, "bad token").into_response();
                        }
                        if q.get("q").map(String::as_str) != Some("rust async")
                            || !q.contains_key("count")
                        {
                            return (StatusCode::BAD_REQUEST, "bad query").into_response();
                        }
                        ([("content-type", "application/json")], BRAVE_ANSWER).into_response()
                    },
                ),
            )
            .route(
                "/searxng",
                get(|Query(q): Query<HashMap<String, String>>| async move {
                    if q.get("format").map(String::as_str) != Some("json") || !q.contains_key("q") {
                        return (StatusCode::FORBIDDEN, "json format disabled").into_response();
                    }
                    ([("content-type", "application/json")], SEARXNG_ANSWER).into_response()
                }),
            )
            .route(
                "/limited",
                // Echoes the key back, as a careless API might: the error must still not contain it.
                get(|headers: HeaderMap| async move {
                    let token = headers
                        .get("x-subscription-token")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        format!("rate limit exceeded for token {token}"),
                    )
                }),
            )
            .route(
                "/broken",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "") }),
            )
            .route("/garbage", get(|| async { "<html>not json</html>" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    "{}"
                }),
            ),
    )
    .await
}

fn client(api: &Fixture, path: &str, provider: SearchProvider) -> SearchClient {
    let settings = SearchSettings::new(
        Url::parse(&api.url(path)).unwrap(),
        Some(SecretString::from(KEY)),
        provider,
    );
    SearchClient::new(settings).unwrap()
}

#[tokio::test]
async fn brave_answers_become_hits_with_markup_stripped_and_urlless_results_dropped() {
    let api = search_api().await;
    let hits = client(&api, "/brave", SearchProvider::Brave)
        .search("rust async")
        .await
        .unwrap();
    assert_eq!(
        hits,
        vec![
            SearchHit {
                title: "Async in Rust".into(),
                url: "https://rust-lang.org/async".into(),
                snippet: "The async book & more".into(),
            },
            SearchHit {
                title: "Tokio".into(),
                url: "https://tokio.rs/".into(),
                snippet: "A runtime".into(),
            },
        ]
    );
    let observation = format_hits("rust async", &hits, 2_000);
    assert!(
        observation.starts_with("SEARCH \"rust async\": 2 results"),
        "{observation}"
    );
}

#[tokio::test]
async fn searxng_answers_become_hits() {
    let api = search_api().await;
    let hits = client(&api, "/searxng", SearchProvider::Searxng)
        .search("rust async")
        .await
        .unwrap();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].url, "https://tokio.rs/");
    assert_eq!(hits[0].snippet, "An asynchronous runtime");
    assert_eq!(hits[1].title, "futures");
}

#[tokio::test]
async fn results_are_capped_at_max_results() {
    let api = search_api().await;
    let mut settings = SearchSettings::new(
        Url::parse(&api.url("/searxng")).unwrap(),
        None,
        SearchProvider::Searxng,
    );
    settings.max_results = 1;
    let hits = SearchClient::new(settings)
        .unwrap()
        .search("q")
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
}

#[tokio::test]
async fn a_429_is_a_clear_retryable_error_that_never_shows_the_key() {
    let api = search_api().await;
    let err = client(&api, "/limited", SearchProvider::Brave)
        .search("rust async")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, SearchError::Status { status: 429, .. }),
        "{message}"
    );
    assert!(
        message.starts_with("SEARCH failed: the brave API answered 429"),
        "{message}"
    );
    assert!(message.contains("rate limit exceeded"), "{message}");
    assert!(!message.contains(KEY), "the key leaked: {message}");
    assert!(!format!("{err:?}").contains(KEY), "the key leaked in Debug");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_500_is_a_retryable_error_and_a_401_is_not() {
    let api = search_api().await;
    let err = client(&api, "/broken", SearchProvider::Brave)
        .search("x")
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "SEARCH failed: the brave API answered 500");
    assert!(err.is_retryable());

    let wrong_key = SearchClient::new(SearchSettings::new(
        Url::parse(&api.url("/brave")).unwrap(),
        Some(SecretString::from("wrong-key")),
        SearchProvider::Brave,
    ))
    .unwrap();
    let err = wrong_key.search("rust async").await.unwrap_err();
    assert!(
        matches!(err, SearchError::Status { status: 401, .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_body_that_is_not_the_expected_json_is_a_decode_error() {
    let api = search_api().await;
    let err = client(&api, "/garbage", SearchProvider::Searxng)
        .search("x")
        .await
        .unwrap_err();
    assert!(matches!(err, SearchError::Decode { .. }), "{err}");
}

#[tokio::test]
async fn a_silent_api_times_out_with_a_retryable_error() {
    let api = search_api().await;
    let mut settings = SearchSettings::new(
        Url::parse(&api.url("/slow")).unwrap(),
        Some(SecretString::from(KEY)),
        SearchProvider::Brave,
    );
    settings.timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let err = SearchClient::new(settings)
        .unwrap()
        .search("x")
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, SearchError::Transport { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(!err.to_string().contains(KEY));
}

#[tokio::test]
async fn an_empty_query_is_refused_without_a_request() {
    let api = search_api().await;
    let err = client(&api, "/brave", SearchProvider::Brave)
        .search("   ")
        .await
        .unwrap_err();
    assert!(matches!(err, SearchError::EmptyQuery));
    assert_eq!(api.total_requests(), 0);
}
