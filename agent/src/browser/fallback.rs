//! The HTTP fallback: when Chromium is unavailable, a plain GET with every redirect hop vetted.

use tracing::{debug, info};
use url::Url;

use super::error::VisitError;
use super::page::{Page, Via, normalize_text, truncate_chars};
use super::proxy::CONNECT_TIMEOUT;
use super::settings::BrowserSettings;
use super::text::html_to_text;
use crate::ssrf::VisitPolicy;

/// The fallback: GET over plain HTTP, every redirect hop vetted and pinned, HTML reduced to text.
pub(super) async fn fetch_over_http(
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
