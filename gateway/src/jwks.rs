//! The JWKS cache: ES256/RS256 verification keys fetched from `SUPABASE_JWKS_URL`.
//!
//! Keys are cached for ten minutes. A token naming a `kid` the cache does not know triggers an immediate
//! refetch (Supabase rotates keys), but at most one every [`MIN_REFETCH_INTERVAL`], so a flood of tokens
//! with made-up `kid`s cannot turn the gateway into a load generator against the auth server. Fetches are
//! single-flight: concurrent misses wait for one request. When a refresh fails, the previous keys keep
//! serving, stale or not, and the next attempt waits: the minimum interval, doubled after each failure up
//! to [`MAX_BACKOFF`], so an auth server that is down sees a fetch now and then, not one per request.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long fetched keys are trusted before a refresh.
pub const CACHE_TTL: Duration = Duration::from_secs(600);
/// The longest wait between attempts while the JWKS cannot be fetched.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// A verification key and the algorithm its JWK pins, if any.
#[derive(Clone)]
pub struct VerificationKey {
    /// The key.
    pub key: Arc<DecodingKey>,
    /// The JWK's `alg`, when it names one: a token must then use exactly that algorithm.
    pub algorithm: Option<Algorithm>,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why no key could be had.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The JWKS has no key with this `kid`, even after a refetch.
    #[error("no key with this kid in the JWKS")]
    UnknownKid,
    /// The JWKS could not be fetched and no earlier copy is cached.
    #[error("the JWKS could not be fetched: {0}")]
    Unavailable(String),
}

#[derive(Default)]
struct Snapshot {
    keys: HashMap<String, VerificationKey>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    /// Failed fetches since the last one that worked.
    failures: u32,
}

/// Cached keys from one JWKS URL.
pub struct JwksCache {
    url: String,
    min_refetch: Duration,
    ttl: Duration,
    client: reqwest::Client,
    snapshot: RwLock<Arc<Snapshot>>,
    fetch: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    /// A cache for `url` that refetches for an unknown `kid` at most once per `min_refetch`; nothing is
    /// fetched until a token needs a key.
    pub fn new(url: String, min_refetch: Duration) -> Self {
        Self::with_ttl(url, min_refetch, CACHE_TTL)
    }

    /// [`JwksCache::new`] with keys trusted for `ttl` rather than [`CACHE_TTL`].
    pub fn with_ttl(url: String, min_refetch: Duration, ttl: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .expect("a reqwest client with a timeout always builds");
        Self {
            url,
            min_refetch,
            ttl,
            client,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The key for `kid`, fetching the JWKS when the cache is stale or does not know `kid`.
    ///
    /// # Errors
    /// [`JwksError::UnknownKid`] when no such key exists (or a refetch is rate-limited);
    /// [`JwksError::Unavailable`] when the JWKS cannot be fetched and nothing is cached.
    pub async fn key(&self, kid: &str) -> Result<VerificationKey, JwksError> {
        let snapshot = self.current();
        if self.is_fresh(&snapshot)
            && let Some(key) = snapshot.keys.get(kid)
        {
            return Ok(key.clone());
        }
        let _guard = self.fetch.lock().await;
        // Another request may have fetched while we waited.
        let snapshot = self.current();
        let known = snapshot.keys.get(kid).cloned();
        if let Some(key) = &known
            && self.is_fresh(&snapshot)
        {
            return Ok(key.clone());
        }
        let due = snapshot
            .last_attempt
            .is_none_or(|at| at.elapsed() >= retry_after(self.min_refetch, snapshot.failures));
        // Stale keys are refreshed at once, unless the last attempt failed: then the backoff rules.
        let may_fetch = due || (snapshot.failures == 0 && !self.is_fresh(&snapshot));
        if !may_fetch {
            return match known {
                Some(key) => Ok(key),
                None if snapshot.keys.is_empty() && snapshot.failures > 0 => Err(
                    JwksError::Unavailable("the last fetch failed; waiting before the next".into()),
                ),
                None => Err(JwksError::UnknownKid),
            };
        }
        match self.fetch_keys().await {
            Ok(keys) => {
                let key = keys.get(kid).cloned();
                let now = Instant::now();
                self.store(Snapshot {
                    keys,
                    fetched_at: Some(now),
                    last_attempt: Some(now),
                    failures: 0,
                });
                key.ok_or(JwksError::UnknownKid)
            }
            Err(error) => {
                let failures = snapshot.failures.saturating_add(1);
                tracing::warn!(
                    %error,
                    url = %self.url,
                    failures,
                    retry_in_ms = retry_after(self.min_refetch, failures).as_millis() as u64,
                    "JWKS fetch failed; keeping the cached keys"
                );
                self.store(Snapshot {
                    keys: snapshot.keys.clone(),
                    fetched_at: snapshot.fetched_at,
                    last_attempt: Some(Instant::now()),
                    failures,
                });
                match known {
                    Some(key) => Ok(key),
                    None if snapshot.keys.is_empty() => Err(JwksError::Unavailable(error)),
                    None => Err(JwksError::UnknownKid),
                }
            }
        }
    }

    fn is_fresh(&self, snapshot: &Snapshot) -> bool {
        snapshot
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    fn store(&self, snapshot: Snapshot) {
        *self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(snapshot);
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, VerificationKey>, String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let set: JwkSet = response
            .json()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            // Symmetric keys never come from a JWKS here: HS256 is the legacy secret's alone.
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                tracing::warn!(kid, "skipping a JWK that does not parse");
                continue;
            };
            let algorithm = jwk
                .common
                .key_algorithm
                .and_then(|alg| alg.to_string().parse::<Algorithm>().ok());
            keys.insert(
                kid,
                VerificationKey {
                    key: Arc::new(key),
                    algorithm,
                },
            );
        }
        tracing::info!(keys = keys.len(), "fetched the JWKS");
        Ok(keys)
    }
}

/// How long after an attempt the next may start: `min_refetch` after a success, doubled after each
/// failure since, at most [`MAX_BACKOFF`] (or `min_refetch` when that is longer).
fn retry_after(min_refetch: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return min_refetch;
    }
    let doubled = min_refetch.saturating_mul(1 << failures.min(16));
    doubled.min(MAX_BACKOFF.max(min_refetch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[test]
    fn the_wait_doubles_after_each_failure_up_to_a_minute() {
        let min = Duration::from_secs(10);
        assert_eq!(retry_after(min, 0), min);
        assert_eq!(retry_after(min, 1), Duration::from_secs(20));
        assert_eq!(retry_after(min, 2), Duration::from_secs(40));
        assert_eq!(retry_after(min, 3), MAX_BACKOFF);
        assert_eq!(retry_after(min, u32::MAX), MAX_BACKOFF);
        let long = Duration::from_secs(600);
        assert_eq!(retry_after(long, 5), long);
    }

    /// A JWKS on loopback serving one RSA key, which a test can make fail.
    async fn jwks_server() -> (String, Arc<AtomicBool>, Arc<AtomicUsize>) {
        let private = include_bytes!("../tests/api/fixtures/rsa-private.pem");
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(private).unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some("k1".into());
        let set = JwkSet { keys: vec![jwk] };
        let failing = Arc::new(AtomicBool::new(false));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (fail, count) = (failing.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (fail, count, set) = (fail.clone(), count.clone(), set.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    if fail.load(Ordering::SeqCst) {
                        Err(axum::http::StatusCode::BAD_GATEWAY)
                    } else {
                        Ok(axum::Json(set))
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, failing, fetches)
    }

    #[tokio::test]
    async fn stale_keys_keep_serving_while_the_auth_server_is_down_without_a_fetch_per_request() {
        let (url, failing, fetches) = jwks_server().await;
        let min_refetch = Duration::from_millis(300);
        let cache = JwksCache::with_ttl(url, min_refetch, Duration::from_millis(100));
        cache.key("k1").await.unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        for _ in 0..50 {
            cache.key("k1").await.expect("the stale key still serves");
        }
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "one failed refresh, then the backoff holds"
        );

        // The second wait is twice the minimum interval; after it, one attempt, which fails again.
        tokio::time::sleep(retry_after(min_refetch, 1) + Duration::from_millis(50)).await;
        for _ in 0..50 {
            cache.key("k1").await.unwrap();
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 3);

        failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(retry_after(min_refetch, 2) + Duration::from_millis(50)).await;
        cache.key("k1").await.unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 4, "the server is back");
        cache.key("k1").await.unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 4, "fresh keys again");
    }

    #[tokio::test]
    async fn with_nothing_cached_a_down_auth_server_is_unavailable_and_not_asked_again_at_once() {
        let (url, failing, fetches) = jwks_server().await;
        failing.store(true, Ordering::SeqCst);
        let cache = JwksCache::new(url, Duration::from_secs(10));
        for _ in 0..20 {
            assert!(matches!(
                cache.key("k1").await,
                Err(JwksError::Unavailable(_))
            ));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }
}
