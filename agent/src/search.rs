//! SEARCH: a web search API client and the observation it produces.
//!
//! Two API shapes, picked by `SEARCH_PROVIDER`: Brave Search (the default; `GET {SEARCH_API_URL}?q=&count=`
//! with the key in `X-Subscription-Token`, hits at `web.results[].{title,url,description}`) and SearXNG's
//! JSON API (`GET {SEARCH_API_URL}?q=&format=json`, hits at `results[].{title,url,content}`; a key, when
//! set, goes in `Authorization: Bearer` for a SearXNG behind an authenticating proxy). The key is a
//! [`SecretString`]: it is sent as a sensitive header and never appears in logs or error messages.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::{Instrument, info, info_span};
use url::Url;

/// Which search API shape `SEARCH_API_URL` speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SearchProvider {
    /// Brave Search's web search API.
    #[default]
    Brave,
    /// A SearXNG instance's JSON API (`format=json` must be enabled in its settings).
    Searxng,
}

impl FromStr for SearchProvider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "brave" => Ok(Self::Brave),
            "searxng" => Ok(Self::Searxng),
            other => Err(format!(
                "SEARCH_PROVIDER must be brave or searxng, not {other:?}"
            )),
        }
    }
}

impl fmt::Display for SearchProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Brave => "brave",
            Self::Searxng => "searxng",
        })
    }
}

/// Settings for SEARCH, read from the environment by the agent's settings.
#[derive(Debug, Clone)]
pub struct SearchSettings {
    /// The API endpoint (`SEARCH_API_URL`), e.g. `https://api.search.brave.com/res/v1/web/search`.
    pub api_url: Url,
    /// The API key (`SEARCH_API_KEY`); Brave requires one.
    pub api_key: Option<SecretString>,
    /// The API shape (`SEARCH_PROVIDER`).
    pub provider: SearchProvider,
    /// Bound on the whole request, connection included.
    pub timeout: Duration,
    /// Hits kept per search.
    pub max_results: usize,
    /// Characters kept per snippet.
    pub snippet_budget: usize,
}

impl SearchSettings {
    /// Settings with the defaults for everything but the endpoint, key and provider.
    #[must_use]
    pub fn new(api_url: Url, api_key: Option<SecretString>, provider: SearchProvider) -> Self {
        Self {
            api_url,
            api_key,
            provider,
            timeout: Duration::from_secs(10),
            max_results: 8,
            snippet_budget: 300,
        }
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchHit {
    /// The result's title, plain text.
    pub title: String,
    /// The result's URL.
    pub url: String,
    /// The description or content excerpt, plain text, cut to the snippet budget.
    pub snippet: String,
}

/// Why a SEARCH failed. Messages never contain the API key.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query was empty.
    #[error("SEARCH failed: the query is empty")]
    EmptyQuery,
    /// The API answered with a non-2xx status.
    #[error("SEARCH failed: the {provider} API answered {status}{detail}")]
    Status {
        /// Which API.
        provider: SearchProvider,
        /// The HTTP status.
        status: u16,
        /// A short, key-free excerpt of the body (with a leading separator), or empty.
        detail: String,
    },
    /// The request did not complete (timeout, connection refused, TLS, ...).
    #[error("SEARCH failed: could not reach the {provider} API: {reason}")]
    Transport {
        /// Which API.
        provider: SearchProvider,
        /// What went wrong.
        reason: String,
        /// Whether it looks transient.
        retryable: bool,
    },
    /// The answer was not the JSON shape expected.
    #[error("SEARCH failed: the {provider} API answered something unexpected: {reason}")]
    Decode {
        /// Which API.
        provider: SearchProvider,
        /// The parse error.
        reason: String,
    },
    /// The key cannot be put in a header (control characters).
    #[error("SEARCH failed: SEARCH_API_KEY is not a valid header value")]
    InvalidKey,
}

impl SearchError {
    /// Whether the same search could succeed later: 429, 5xx and transport failures.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Transport { retryable, .. } => *retryable,
            Self::EmptyQuery | Self::Decode { .. } | Self::InvalidKey => false,
        }
    }
}

/// A search API client; cheap to clone, shared by all tasks.
#[derive(Debug, Clone)]
pub struct SearchClient {
    http: reqwest::Client,
    settings: SearchSettings,
}

#[derive(Deserialize)]
struct BraveAnswer {
    #[serde(default)]
    web: Option<BraveWeb>,
}

#[derive(Deserialize)]
struct BraveWeb {
    #[serde(default)]
    results: Vec<RawHit>,
}

#[derive(Deserialize)]
struct SearxngAnswer {
    #[serde(default)]
    results: Vec<RawHit>,
}

#[derive(Deserialize)]
struct RawHit {
    #[serde(default)]
    title: String,
    #[serde(default)]
    url: String,
    #[serde(default, alias = "content")]
    description: Option<String>,
}

impl SearchClient {
    /// A client for `settings`.
    ///
    /// # Errors
    /// [`SearchError::Transport`] when the HTTP client cannot be built (TLS backend initialisation).
    pub fn new(settings: SearchSettings) -> Result<Self, SearchError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .user_agent("euglena-agent")
            .build()
            .map_err(|e| SearchError::Transport {
                provider: settings.provider,
                reason: e.to_string(),
                retryable: false,
            })?;
        Ok(Self { http, settings })
    }

    /// Runs `query` and returns at most `max_results` hits.
    ///
    /// # Errors
    /// [`SearchError`] on an empty query, a non-2xx answer, a transport failure or an unexpected body.
    pub async fn search(&self, query: &str) -> Result<Vec<SearchHit>, SearchError> {
        let query = query.trim();
        if query.is_empty() {
            return Err(SearchError::EmptyQuery);
        }
        let provider = self.settings.provider;
        let span = info_span!("search", provider = %provider, query_chars = query.chars().count());
        async {
            let mut url = self.settings.api_url.clone();
            match provider {
                SearchProvider::Brave => {
                    url.query_pairs_mut()
                        .append_pair("q", query)
                        .append_pair("count", &self.settings.max_results.clamp(1, 20).to_string());
                }
                SearchProvider::Searxng => {
                    url.query_pairs_mut()
                        .append_pair("q", query)
                        .append_pair("format", "json");
                }
            }
            let mut request = self
                .http
                .get(url)
                .header(ACCEPT, HeaderValue::from_static("application/json"));
            if let Some(trace) = shared::telemetry::outgoing_traceparent() {
                request = request.header(shared::telemetry::TRACEPARENT, trace.to_string());
            }
            if let Some(key) = &self.settings.api_key {
                let (name, value) = match provider {
                    SearchProvider::Brave => {
                        ("x-subscription-token", key.expose_secret().to_owned())
                    }
                    SearchProvider::Searxng => (
                        AUTHORIZATION.as_str(),
                        format!("Bearer {}", key.expose_secret()),
                    ),
                };
                let mut value =
                    HeaderValue::from_str(&value).map_err(|_| SearchError::InvalidKey)?;
                value.set_sensitive(true);
                request = request.header(name, value);
            }
            let response = request.send().await.map_err(|e| self.transport(e))?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                info!(status = status.as_u16(), "search API refused");
                return Err(SearchError::Status {
                    provider,
                    status: status.as_u16(),
                    detail: self.scrubbed_excerpt(&body),
                });
            }
            let body = response.bytes().await.map_err(|e| self.transport(e))?;
            let raw = match provider {
                SearchProvider::Brave => serde_json::from_slice::<BraveAnswer>(&body)
                    .map(|a| a.web.map(|w| w.results).unwrap_or_default()),
                SearchProvider::Searxng => {
                    serde_json::from_slice::<SearxngAnswer>(&body).map(|a| a.results)
                }
            }
            .map_err(|e| SearchError::Decode {
                provider,
                reason: e.to_string(),
            })?;
            let hits: Vec<SearchHit> = raw
                .into_iter()
                .filter(|hit| !hit.url.is_empty())
                .take(self.settings.max_results)
                .map(|hit| SearchHit {
                    title: cut(&strip_markup(&hit.title), self.settings.snippet_budget),
                    url: hit.url,
                    snippet: cut(
                        &strip_markup(hit.description.as_deref().unwrap_or("")),
                        self.settings.snippet_budget,
                    ),
                })
                .collect();
            info!(hits = hits.len(), "searched");
            Ok(hits)
        }
        .instrument(span)
        .await
    }

    fn transport(&self, e: reqwest::Error) -> SearchError {
        // reqwest's message names the URL, which carries the query but never the key (a header).
        let retryable = e.is_timeout() || e.is_connect() || e.is_request() || e.is_body();
        SearchError::Transport {
            provider: self.settings.provider,
            reason: e.without_url().to_string(),
            retryable,
        }
    }

    fn scrubbed_excerpt(&self, body: &str) -> String {
        let mut excerpt = cut(&collapse(body), 200);
        if let Some(key) = &self.settings.api_key {
            let key = key.expose_secret();
            if !key.is_empty() {
                excerpt = excerpt.replace(key, "[redacted]");
            }
        }
        if excerpt.is_empty() {
            excerpt
        } else {
            format!(": {excerpt}")
        }
    }
}

/// The hits as the observation the model reads next tick, cut to `budget` characters at a hit boundary.
#[must_use]
pub fn format_hits(query: &str, hits: &[SearchHit], budget: usize) -> String {
    let mut out = format!("SEARCH {query:?}: ");
    if hits.is_empty() {
        out.push_str("no results");
        return out;
    }
    out.push_str(&format!("{} results\n", hits.len()));
    for (i, hit) in hits.iter().enumerate() {
        let mut entry = format!("{}. {}\n   {}\n", i + 1, hit.title, hit.url);
        if !hit.snippet.is_empty() {
            entry.push_str(&format!("   {}\n", hit.snippet));
        }
        if out.chars().count() + entry.chars().count() > budget {
            out.push_str(&format!(
                "[{} more results omitted to fit the budget]\n",
                hits.len() - i
            ));
            break;
        }
        out.push_str(&entry);
    }
    out.trim_end().to_owned()
}

/// Drops tags (Brave wraps matches in `<strong>`) and decodes the few entities search APIs emit.
fn strip_markup(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    collapse(&out)
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cut(s: &str, budget: usize) -> String {
    match s.char_indices().nth(budget) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(n: usize) -> SearchHit {
        SearchHit {
            title: format!("Title {n}"),
            url: format!("https://example.com/{n}"),
            snippet: format!("snippet {n}"),
        }
    }

    #[test]
    fn provider_setting_parses_both_names_and_rejects_others() {
        assert_eq!("brave".parse::<SearchProvider>(), Ok(SearchProvider::Brave));
        assert_eq!(
            " SearXNG ".parse::<SearchProvider>(),
            Ok(SearchProvider::Searxng)
        );
        assert!("google".parse::<SearchProvider>().is_err());
    }

    #[test]
    fn formatted_hits_list_title_url_and_snippet_in_order() {
        let text = format_hits("rust", &[hit(1), hit(2)], 10_000);
        assert_eq!(
            text,
            "SEARCH \"rust\": 2 results\n1. Title 1\n   https://example.com/1\n   snippet 1\n\
             2. Title 2\n   https://example.com/2\n   snippet 2"
        );
    }

    #[test]
    fn formatted_hits_stop_at_the_budget_and_say_how_many_were_dropped() {
        let hits: Vec<_> = (1..=10).map(hit).collect();
        let text = format_hits("rust", &hits, 150);
        assert!(text.contains("1. Title 1"), "{text}");
        assert!(!text.contains("Title 10"), "{text}");
        assert!(
            text.ends_with("more results omitted to fit the budget]"),
            "{text}"
        );
        assert!(text.chars().count() < 150 + 60, "{text}");
    }

    #[test]
    fn no_hits_reads_as_no_results() {
        assert_eq!(format_hits("zzz", &[], 100), "SEARCH \"zzz\": no results");
    }

    #[test]
    fn markup_is_stripped_from_snippets() {
        assert_eq!(
            strip_markup("The <strong>Rust</strong>  language &amp; its &lt;tools&gt;"),
            "The Rust language & its <tools>"
        );
    }

    #[test]
    fn snippets_are_cut_to_the_budget_in_characters() {
        assert_eq!(cut("ééééé", 3), "ééé…");
        assert_eq!(cut("abc", 3), "abc");
    }
}
