//! Supabase JWT verification (docs/api.md, authentication).
//!
//! Accepted: HS256 with the legacy `SUPABASE_JWT_SECRET`, ES256 and RS256 with keys from the JWKS. Every
//! other `alg` (`none` included) is refused before any key is looked at, and each algorithm is verified
//! only with its own kind of key, so an HS256 token "signed" with a public RSA key gets nowhere.

use crate::error::ApiError;
use crate::jwks::{JwksCache, JwksError};
use crate::settings::AuthSettings;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use secrecy::ExposeSecret;
use serde::Deserialize;
use std::sync::Arc;

/// Tokens may be this late past `exp`.
const LEEWAY_SECONDS: u64 = 60;
/// How many verified tokens are remembered. A client sends the same token with every request until it
/// refreshes it, so a few thousand active users fit; an entry is a few hundred bytes.
const VERIFIED_TOKENS: usize = 10_000;
/// The longest a verified token is honoured without verifying it again: a signing key removed from the
/// JWKS stops being honoured within this time.
const VERIFIED_FOR_SECONDS: u64 = 60;
/// The role Supabase gives signed-in users.
const AUTHENTICATED_ROLE: &str = "authenticated";

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The JWT `sub`: the tenant key.
    pub sub: String,
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// The header or token is not a JWT.
    #[error("malformed token")]
    Malformed,
    /// The token's `alg` is not accepted.
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    /// The token's `alg` needs a key the gateway is not configured with.
    #[error("no key is configured for {0:?} tokens")]
    NoKey(Algorithm),
    /// An ES256/RS256 token without a `kid`.
    #[error("token has no kid")]
    NoKid,
    /// The JWKS has no such key.
    #[error("unknown signing key")]
    UnknownKid,
    /// The JWKS could not be fetched.
    #[error("signing keys are unavailable")]
    KeysUnavailable,
    /// Signature, expiry, audience or issuer check failed.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The `role` claim is not `authenticated`.
    #[error("token role is not authenticated")]
    Role,
    /// Anonymous or unverified user while those are not allowed.
    #[error("email not confirmed")]
    NotConfirmed,
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::NotConfirmed => ApiError::EmailNotConfirmed,
            AuthError::KeysUnavailable => {
                ApiError::Unavailable("the JWKS could not be fetched".into())
            }
            other => ApiError::Unauthorized(other.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Required and checked by jsonwebtoken; read here to bound how long the token is remembered.
    #[serde(default)]
    exp: u64,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    is_anonymous: Option<bool>,
}

/// A token that verified, and until when (unix seconds) that stands without verifying it again.
#[derive(Debug, Clone)]
struct Verified {
    user: User,
    until: u64,
}

/// Until when a token verified at `now` with expiry `exp` is honoured from the cache: its `exp` (with the
/// same leeway as a full verification) or [`VERIFIED_FOR_SECONDS`] from now, whichever comes first.
fn verified_until(now: u64, exp: u64) -> u64 {
    (exp + LEEWAY_SECONDS).min(now + VERIFIED_FOR_SECONDS)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Verifies bearer tokens.
///
/// A token that verified is remembered (by its whole text) for a minute at most, so a client's next
/// requests skip the signature and claim checks: measured with callgrind, verification was a quarter of
/// the instructions of a `GET /tasks/{id}`. Refusals are not remembered.
pub struct Authenticator {
    verified: quick_cache::sync::Cache<String, Verified>,
    secret: Option<Arc<DecodingKey>>,
    jwks: Option<JwksCache>,
    audience: String,
    issuer: Option<String>,
    allow_unconfirmed: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.secret.is_some())
            .field("jwks", &self.jwks)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for `settings`.
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            verified: quick_cache::sync::Cache::new(VERIFIED_TOKENS),
            secret: settings
                .jwt_secret
                .as_ref()
                .map(|s| Arc::new(DecodingKey::from_secret(s.expose_secret().as_bytes()))),
            jwks: settings
                .jwks_url
                .clone()
                .map(|url| JwksCache::new(url, settings.jwks_min_refetch)),
            audience: settings.audience.clone(),
            issuer: settings.issuer(),
            allow_unconfirmed: settings.allow_unconfirmed,
        }
    }

    /// Verifies the value of an `Authorization` header.
    ///
    /// # Errors
    /// [`AuthError`] saying why the caller is refused.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<User, AuthError> {
        let token = bearer_token(authorization)?;
        let now = now_secs();
        if let Some(verified) = self.verified.get(token)
            && now < verified.until
        {
            return Ok(verified.user);
        }
        let header = decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => {
                AuthError::Algorithm("not in the allow-list".into())
            }
            _ => AuthError::Malformed,
        })?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .secret
                .clone()
                .ok_or(AuthError::NoKey(Algorithm::HS256))?,
            Algorithm::ES256 | Algorithm::RS256 => {
                let jwks = self.jwks.as_ref().ok_or(AuthError::NoKey(header.alg))?;
                let kid = header.kid.as_deref().ok_or(AuthError::NoKid)?;
                let found = jwks.key(kid).await.map_err(|e| match e {
                    JwksError::UnknownKid => AuthError::UnknownKid,
                    JwksError::Unavailable(_) => AuthError::KeysUnavailable,
                })?;
                if found.algorithm.is_some_and(|pinned| pinned != header.alg) {
                    return Err(AuthError::Algorithm(format!(
                        "{:?} does not match the key",
                        header.alg
                    )));
                }
                found.key
            }
            other => return Err(AuthError::Algorithm(format!("{other:?}"))),
        };
        let claims = decode::<Claims>(token, &key, &self.validation(header.alg))
            .map_err(|e| AuthError::Invalid(refusal(e.kind())))?
            .claims;
        check_claims(&claims, self.allow_unconfirmed)?;
        let user = User { sub: claims.sub };
        self.verified.insert(
            token.to_owned(),
            Verified {
                user: user.clone(),
                until: verified_until(now, claims.exp),
            },
        );
        Ok(user)
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        validation
    }
}

/// What a client is told about a token that failed verification: the check that failed, in words that
/// do not depend on the library's error text (the log line has no more: tokens are never logged).
fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidSignature => "the signature does not verify",
        ErrorKind::InvalidAudience => "the token is for another audience",
        ErrorKind::InvalidIssuer => "the token is from another issuer",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (exp, sub or aud)",
        _ => "the token cannot be verified",
    }
    .to_owned()
}

fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization.ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token.trim())
}

/// The checks jsonwebtoken does not do: role, and the confirmed-user rule.
fn check_claims(claims: &Claims, allow_unconfirmed: bool) -> Result<(), AuthError> {
    if claims.sub.is_empty() {
        return Err(AuthError::Invalid("empty sub".into()));
    }
    if claims.role.as_deref() != Some(AUTHENTICATED_ROLE) {
        return Err(AuthError::Role);
    }
    // `user_metadata` is never read: the user can edit it. Supabase issues a password user's session only
    // once the email is confirmed (when confirmation is on), so an anonymous sign-in is what is left.
    if !allow_unconfirmed && claims.is_anonymous == Some(true) {
        return Err(AuthError::NotConfirmed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_verified_token_is_remembered_until_its_expiry_or_a_minute_whichever_is_first() {
        let now = 1_000_000;
        assert_eq!(verified_until(now, now + 3600), now + VERIFIED_FOR_SECONDS);
        assert_eq!(verified_until(now, now - 30), now - 30 + LEEWAY_SECONDS);
        assert!(
            verified_until(now, now - LEEWAY_SECONDS) <= now,
            "no later than a full check"
        );
    }

    #[test]
    fn a_bearer_header_yields_its_token() {
        assert_eq!(bearer_token(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(Some("bearer  abc ")).unwrap(), "abc");
        assert!(matches!(bearer_token(None), Err(AuthError::Missing)));
        assert!(matches!(
            bearer_token(Some("Basic abc")),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            bearer_token(Some("Bearer ")),
            Err(AuthError::Malformed)
        ));
    }

    #[test]
    fn an_anonymous_user_is_refused_unless_allowed() {
        let c = claims(r#"{"sub":"u","role":"authenticated","is_anonymous":true}"#);
        assert!(matches!(
            check_claims(&c, false),
            Err(AuthError::NotConfirmed)
        ));
        assert!(check_claims(&c, true).is_ok());
    }

    #[test]
    fn user_metadata_decides_nothing_because_the_user_can_edit_it() {
        let c = claims(
            r#"{"sub":"u","role":"authenticated","user_metadata":{"email_verified":false,"role":"admin"}}"#,
        );
        assert!(check_claims(&c, false).is_ok());
        let c = claims(r#"{"sub":"u","role":"anon","user_metadata":{"role":"authenticated"}}"#);
        assert!(matches!(check_claims(&c, false), Err(AuthError::Role)));
    }

    #[test]
    fn a_token_without_the_authenticated_role_is_refused() {
        let c = claims(r#"{"sub":"u","role":"anon"}"#);
        assert!(matches!(check_claims(&c, true), Err(AuthError::Role)));
        let c = claims(r#"{"sub":"u"}"#);
        assert!(matches!(check_claims(&c, true), Err(AuthError::Role)));
    }

    #[test]
    fn a_confirmed_user_passes() {
        let c = claims(
            r#"{"sub":"u","role":"authenticated","is_anonymous":false,"user_metadata":{"email_verified":true}}"#,
        );
        assert!(check_claims(&c, false).is_ok());
    }
}
