//! The JWKS cache: ES256/RS256 verification keys fetched from `SUPABASE_JWKS_URL`.
//!
//! Keys are cached for ten minutes. A token naming a `kid` the cache does not know triggers an immediate
//! refetch (Supabase rotates keys), but at most one every [`MIN_REFETCH_INTERVAL`], so a flood of tokens
//! with made-up `kid`s cannot turn the gateway into a load generator against the auth server. Fetches are
//! single-flight: concurrent misses wait for one request. When a refresh fails, the previous keys keep
//! serving.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long fetched keys are trusted before a refresh.
pub const CACHE_TTL: Duration = Duration::from_secs(600);
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
}

/// Cached keys from one JWKS URL.
pub struct JwksCache {
    url: String,
    min_refetch: Duration,
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
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .expect("a reqwest client with a timeout always builds");
        Self {
            url,
            min_refetch,
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
        if is_fresh(&snapshot)
            && let Some(key) = snapshot.keys.get(kid)
        {
            return Ok(key.clone());
        }
        let _guard = self.fetch.lock().await;
        // Another request may have fetched while we waited.
        let snapshot = self.current();
        let known = snapshot.keys.get(kid).cloned();
        let may_fetch = !is_fresh(&snapshot)
            || snapshot
                .last_attempt
                .is_none_or(|at| at.elapsed() >= self.min_refetch);
        if let Some(key) = &known
            && is_fresh(&snapshot)
        {
            return Ok(key.clone());
        }
        if !may_fetch {
            return known.ok_or(JwksError::UnknownKid);
        }
        match self.fetch_keys().await {
            Ok(keys) => {
                let key = keys.get(kid).cloned();
                let now = Instant::now();
                self.store(Snapshot {
                    keys,
                    fetched_at: Some(now),
                    last_attempt: Some(now),
                });
                key.ok_or(JwksError::UnknownKid)
            }
            Err(error) => {
                tracing::warn!(%error, url = %self.url, "JWKS fetch failed; keeping the cached keys");
                self.store(Snapshot {
                    keys: snapshot.keys.clone(),
                    fetched_at: snapshot.fetched_at,
                    last_attempt: Some(Instant::now()),
                });
                match known {
                    Some(key) => Ok(key),
                    None if snapshot.keys.is_empty() => Err(JwksError::Unavailable(error)),
                    None => Err(JwksError::UnknownKid),
                }
            }
        }
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

fn is_fresh(snapshot: &Snapshot) -> bool {
    snapshot
        .fetched_at
        .is_some_and(|at| at.elapsed() < CACHE_TTL)
}
