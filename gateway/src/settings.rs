//! The gateway's typed settings, read from the environment (`docs/operations.md` lists every variable).

use secrecy::SecretString;
use shared::settings::{CommonSettings, Reader, SettingsError, Source};
use std::time::Duration;

/// Everything the gateway needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Redis, RabbitMQ, queue and key prefix, shared with the other services.
    pub common: CommonSettings,
    /// `HOST`: the address to bind (default `0.0.0.0`).
    pub host: String,
    /// `PORT`: the port to bind (default 8080; 0 picks a free one, as the tests do).
    pub port: u16,
    /// How JWTs are checked.
    pub auth: AuthSettings,
    /// `DAILY_TICK_LIMIT`: ticks per user per UTC day (default 256).
    pub daily_tick_limit: u32,
    /// `MAX_TICKS_PER_TASK`: the largest `max_ticks` a task may ask for (default 100).
    pub max_ticks_per_task: u32,
    /// `MAX_MANDATE_CHARS`: the longest mandate, in characters after trimming (default 8000).
    pub max_mandate_chars: usize,
    /// `MAX_ACTIVE_TASKS_PER_USER`: queued-or-running tasks one user may have (default 20).
    pub max_active_tasks_per_user: u32,
    /// `SUPABASE_ANON_KEY`: Supabase's public key for browsers; with `SUPABASE_URL`, the dashboard offers
    /// sign-in by email and password. Public by design, but never logged.
    pub supabase_anon_key: Option<String>,
    /// `CORS_ORIGINS`: comma-separated allowed origins; empty allows none, `*` allows any.
    pub cors_origins: Vec<String>,
    /// `REQUEST_TIMEOUT_SECONDS`: the longest a request may take (default 10).
    pub request_timeout: Duration,
    /// `PUBLISH_CONFIRM_TIMEOUT_MS`: the longest a publish may take, the write to the broker and its
    /// confirm together (default 5000).
    pub publish_confirm_timeout: Duration,
    /// `STARTUP_DEADLINE_SECONDS`: how long to wait for Redis and RabbitMQ at start (default 60).
    pub startup_deadline: Duration,
}

/// How JWTs are verified.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `SUPABASE_URL`: when set, `iss` must be `{SUPABASE_URL}/auth/v1` and the JWKS URL defaults from it.
    pub supabase_url: Option<String>,
    /// `SUPABASE_JWT_SECRET`: the legacy HS256 secret; HS256 tokens are refused without it.
    pub jwt_secret: Option<SecretString>,
    /// `SUPABASE_JWKS_URL`: where ES256/RS256 keys come from; those tokens are refused without it.
    pub jwks_url: Option<String>,
    /// `SUPABASE_JWT_AUDIENCE`: the required `aud` (default `authenticated`).
    pub audience: String,
    /// `SUPABASE_ALLOW_UNCONFIRMED`: accept anonymous users (default false).
    pub allow_unconfirmed: bool,
    /// `SUPABASE_JWKS_MIN_REFETCH_MS`: the shortest interval between JWKS fetches caused by unknown
    /// `kid`s (default 10000, at least [`MIN_JWKS_REFETCH_MS`]), so made-up `kid`s cannot turn the
    /// gateway against the auth server.
    pub jwks_min_refetch: Duration,
}

/// The longest JSON spelling of one character: a surrogate pair of `\uXXXX` escapes.
const MAX_ESCAPED_CHAR_BYTES: usize = 12;

/// The floor of `SUPABASE_JWKS_MIN_REFETCH_MS`: below it, tokens with made-up `kid`s would make the
/// gateway fetch the JWKS many times a second.
pub const MIN_JWKS_REFETCH_MS: u64 = 1_000;

impl AuthSettings {
    /// The issuer tokens must carry, when `SUPABASE_URL` is set.
    pub fn issuer(&self) -> Option<String> {
        self.supabase_url
            .as_ref()
            .map(|url| format!("{}/auth/v1", url.trim_end_matches('/')))
    }
}

impl Settings {
    /// Reads the settings from the process environment.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first invalid variable.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_source(shared::settings::ProcessEnv)
    }

    /// Reads the settings from `source`.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first invalid variable.
    pub fn from_source<S: Source>(source: S) -> Result<Self, SettingsError> {
        let r = Reader::new(source);
        let supabase_url = r.optional("SUPABASE_URL");
        let jwks_url = r.optional("SUPABASE_JWKS_URL").or_else(|| {
            supabase_url.as_ref().map(|url| {
                format!(
                    "{}/auth/v1/.well-known/jwks.json",
                    url.trim_end_matches('/')
                )
            })
        });
        let auth = AuthSettings {
            supabase_url,
            jwt_secret: r.secret("SUPABASE_JWT_SECRET"),
            jwks_url,
            audience: r.string_or("SUPABASE_JWT_AUDIENCE", "authenticated"),
            allow_unconfirmed: r.bool_or("SUPABASE_ALLOW_UNCONFIRMED", false)?,
            jwks_min_refetch: Duration::from_millis(r.ranged(
                "SUPABASE_JWKS_MIN_REFETCH_MS",
                10_000,
                MIN_JWKS_REFETCH_MS,
                3_600_000,
            )?),
        };
        if auth.jwt_secret.is_none() && auth.jwks_url.is_none() {
            return Err(SettingsError::Invalid {
                name: "SUPABASE_JWT_SECRET",
                reason: "set SUPABASE_JWT_SECRET, SUPABASE_URL or SUPABASE_JWKS_URL, \
                         or no token could ever be verified"
                    .into(),
            });
        }
        let cors_origins = r
            .optional("CORS_ORIGINS")
            .map(|v| {
                v.split(',')
                    .map(|o| o.trim().to_owned())
                    .filter(|o| !o.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            common: CommonSettings::from_source(&r)?,
            host: r.string_or("HOST", "0.0.0.0"),
            port: r.parse_or("PORT", 8080)?,
            auth,
            daily_tick_limit: r.ranged("DAILY_TICK_LIMIT", 256, 1, 10_000_000)?,
            max_ticks_per_task: r.ranged("MAX_TICKS_PER_TASK", 100, 1, 100_000)?,
            max_mandate_chars: r.ranged("MAX_MANDATE_CHARS", 8000, 1, 1_000_000)?,
            max_active_tasks_per_user: r.ranged("MAX_ACTIVE_TASKS_PER_USER", 20, 1, 1_000_000)?,
            supabase_anon_key: r.optional("SUPABASE_ANON_KEY"),
            cors_origins,
            request_timeout: Duration::from_secs(r.ranged(
                "REQUEST_TIMEOUT_SECONDS",
                10,
                1,
                600,
            )?),
            publish_confirm_timeout: Duration::from_millis(r.ranged(
                "PUBLISH_CONFIRM_TIMEOUT_MS",
                5000,
                10,
                120_000,
            )?),
            startup_deadline: Duration::from_secs(r.ranged(
                "STARTUP_DEADLINE_SECONDS",
                60,
                0,
                3600,
            )?),
        })
    }

    /// The largest request body accepted: a full-length mandate with every character written as a JSON
    /// escape (12 bytes for a character outside the Basic Multilingual Plane, an emoji say: `\uD83D\uDE00`),
    /// with room for the rest of the object. A mandate the character limit admits is never a 413.
    pub fn body_limit(&self) -> usize {
        self.max_mandate_chars * MAX_ESCAPED_CHAR_BYTES + 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_defaults_load_with_only_a_secret_set() {
        let s = Settings::from_source(env(&[("SUPABASE_JWT_SECRET", "s3cret")])).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.daily_tick_limit, 256);
        assert_eq!(s.max_ticks_per_task, 100);
        assert_eq!(s.max_mandate_chars, 8000);
        assert_eq!(s.max_active_tasks_per_user, 20);
        assert_eq!(s.auth.audience, "authenticated");
        assert!(!s.auth.allow_unconfirmed);
        assert!(s.auth.jwks_url.is_none());
        assert!(s.cors_origins.is_empty());
    }

    #[test]
    fn the_jwks_url_and_issuer_derive_from_the_supabase_url() {
        let s =
            Settings::from_source(env(&[("SUPABASE_URL", "https://abc.supabase.co/")])).unwrap();
        assert_eq!(
            s.auth.jwks_url.as_deref(),
            Some("https://abc.supabase.co/auth/v1/.well-known/jwks.json")
        );
        assert_eq!(
            s.auth.issuer().as_deref(),
            Some("https://abc.supabase.co/auth/v1")
        );
    }

    #[test]
    fn a_gateway_that_could_verify_no_token_refuses_to_start() {
        let error = Settings::from_source(env(&[])).unwrap_err().to_string();
        assert!(error.contains("SUPABASE_JWT_SECRET"), "{error}");
    }

    #[test]
    fn cors_origins_are_split_on_commas() {
        let s = Settings::from_source(env(&[
            ("SUPABASE_JWT_SECRET", "x"),
            ("CORS_ORIGINS", "https://a.example, https://b.example,"),
        ]))
        .unwrap();
        assert_eq!(
            s.cors_origins,
            vec!["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn an_invalid_limit_is_a_clear_error() {
        let error = Settings::from_source(env(&[
            ("SUPABASE_JWT_SECRET", "x"),
            ("DAILY_TICK_LIMIT", "lots"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("DAILY_TICK_LIMIT is invalid"), "{error}");
    }
}
