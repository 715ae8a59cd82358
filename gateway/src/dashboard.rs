//! The browser dashboard, served at `/` from files compiled into the binary (`gateway/dashboard/`).
//!
//! `index.html` is served fresh on every visit, with its `__ASSETS__` placeholder replaced by
//! `/assets/<version>`, where the version is a digest of every asset: the scripts and styles under it are
//! then cached for a year (`immutable`), and a new release changes the path. Every page carries a strict
//! Content-Security-Policy: nothing but this origin's own scripts and styles run, and the page may talk
//! only to this gateway and, when sign-in by password is configured, to the Supabase origin.

use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// The dashboard's files.
#[derive(RustEmbed)]
#[folder = "dashboard/"]
#[exclude = "*.md"]
struct Files;

/// The placeholder `index.html` uses for the versioned asset path.
const ASSETS_PLACEHOLDER: &str = "__ASSETS__";

/// A digest of every embedded file: the asset path's version.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut digest = Sha256::new();
    let mut names: Vec<_> = Files::iter().collect();
    names.sort();
    for name in names {
        if let Some(file) = Files::get(&name) {
            digest.update(name.as_bytes());
            digest.update(file.metadata.sha256_hash());
        }
    }
    digest
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
});

/// The path the current assets are served under.
pub fn assets_path() -> String {
    format!("/assets/{}", *VERSION)
}

/// The Content-Security-Policy of every dashboard response: this origin only, plus `supabase_origin` for
/// the sign-in calls when password sign-in is configured.
pub fn content_security_policy(supabase_origin: Option<&str>) -> String {
    let connect = match supabase_origin {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_owned(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// The scheme, host and port of `url` (what CSP calls an origin), if it is an http(s) URL.
fn origin_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    matches!(parsed.scheme(), "http" | "https").then(|| parsed.origin().ascii_serialization())
}

fn page_headers(state: &AppState, content_type: &'static str, cache: &'static str) -> HeaderMap {
    let supabase = state
        .settings
        .auth
        .supabase_url
        .as_deref()
        .filter(|_| state.settings.supabase_anon_key.is_some())
        .and_then(origin_of);
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(supabase.as_deref())) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
}

/// `GET /`: the dashboard's page.
pub async fn index(State(state): State<AppState>) -> Result<Response, ApiError> {
    let page = Files::get("index.html")
        .ok_or_else(|| ApiError::Internal("the dashboard's index.html is not built in".into()))?;
    let html = String::from_utf8_lossy(&page.data).replace(ASSETS_PLACEHOLDER, &assets_path());
    let headers = page_headers(&state, "text/html; charset=utf-8", "no-cache");
    Ok((headers, html).into_response())
}

/// `GET /assets/{version}/{*path}`: a script or style sheet of the dashboard. Only the current version is
/// served (an old page would ask for files that no longer exist; it gets a 404 and reloads fresh).
pub async fn asset(
    State(state): State<AppState>,
    Path((version, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if version != *VERSION || path == "index.html" {
        return Err(ApiError::NoRoute(StatusCode::NOT_FOUND));
    }
    let file = Files::get(&path).ok_or(ApiError::NoRoute(StatusCode::NOT_FOUND))?;
    let content_type = match path.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    let headers = page_headers(&state, content_type, "public, max-age=31536000, immutable");
    Ok((headers, file.data.into_owned()).into_response())
}

/// What the dashboard needs to offer password sign-in.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DashboardConfig {
    /// `SUPABASE_URL`, when password sign-in is configured.
    pub supabase_url: Option<String>,
    /// `SUPABASE_ANON_KEY` (Supabase's public key for browsers), when password sign-in is configured.
    pub supabase_anon_key: Option<String>,
}

/// `GET /dashboard/config.json`: how the dashboard signs users in. Both fields are null unless both
/// `SUPABASE_URL` and `SUPABASE_ANON_KEY` are set; the page then offers pasting a token only.
pub async fn config(State(state): State<AppState>) -> Json<DashboardConfig> {
    let settings = &state.settings;
    let both = settings
        .auth
        .supabase_url
        .clone()
        .zip(settings.supabase_anon_key.clone());
    Json(DashboardConfig {
        supabase_url: both.as_ref().map(|(url, _)| url.clone()),
        supabase_anon_key: both.map(|(_, key)| key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_modules_are_built_in() {
        for name in ["index.html", "app.js", "style.css", "views/task.js"] {
            assert!(Files::get(name).is_some(), "{name}");
        }
        assert!(Files::get("README.md").is_none());
        let index = String::from_utf8(Files::get("index.html").unwrap().data.into_owned()).unwrap();
        assert!(index.contains(ASSETS_PLACEHOLDER));
    }

    #[test]
    fn the_asset_version_is_stable_and_short() {
        assert_eq!(VERSION.len(), 12);
        assert_eq!(assets_path(), assets_path());
    }

    #[test]
    fn the_policy_allows_only_this_origin_and_supabase_for_sign_in() {
        let plain = content_security_policy(None);
        assert!(plain.contains("script-src 'self';"));
        assert!(plain.contains("connect-src 'self';"));
        assert!(!plain.contains("unsafe"));
        let with = content_security_policy(Some("https://abc.supabase.co"));
        assert!(with.contains("connect-src 'self' https://abc.supabase.co;"));
    }

    #[test]
    fn an_origin_is_scheme_host_and_port() {
        assert_eq!(
            origin_of("https://abc.supabase.co/").as_deref(),
            Some("https://abc.supabase.co")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:9999/x").as_deref(),
            Some("http://127.0.0.1:9999")
        );
        assert_eq!(origin_of("javascript:alert(1)"), None);
    }
}
