//! `euglena login`: Supabase's password grant, and the session kept on disk (readable by its owner only,
//! mode 0600), refreshed a minute before it expires.

use crate::client::{CliError, Gateway};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

/// A token is refreshed when it expires within this many seconds.
const REFRESH_MARGIN_SECONDS: i64 = 60;

/// A signed-in session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The gateway it was made for.
    pub gateway: String,
    /// Supabase's URL.
    pub supabase_url: String,
    /// Supabase's public key for clients.
    pub anon_key: String,
    /// The bearer token.
    pub access_token: String,
    /// The token that gets a new access token.
    pub refresh_token: String,
    /// When the access token expires (unix seconds).
    pub expires_at: i64,
}

#[derive(Debug, Deserialize)]
struct Grant {
    access_token: String,
    refresh_token: String,
    expires_at: Option<i64>,
    expires_in: Option<i64>,
}

/// Where the session is kept: `$XDG_CONFIG_HOME/euglena/session.json` (`~/.config/...`).
fn path() -> Result<PathBuf, CliError> {
    dirs::config_dir()
        .map(|dir| dir.join("euglena").join("session.json"))
        .ok_or_else(|| CliError::Usage("No configuration directory (set HOME).".to_owned()))
}

impl Session {
    /// The stored session, if any.
    pub fn load() -> Option<Self> {
        let text = std::fs::read_to_string(path().ok()?).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Keeps the session, readable and writable by its owner only.
    ///
    /// # Errors
    /// [`CliError::Usage`] when the file cannot be written.
    pub fn save(&self) -> Result<PathBuf, CliError> {
        let path = path()?;
        let failed = |e: std::io::Error| {
            CliError::Usage(format!(
                "Cannot keep the session in {}: {e}",
                path.display()
            ))
        };
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(failed)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(failed)?;
        // A file made by an older run may have other bits: set them again.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(failed)?;
        file.write_all(
            serde_json::to_string_pretty(self)
                .expect("a session always serialises")
                .as_bytes(),
        )
        .map_err(failed)?;
        Ok(path)
    }

    /// Forgets the stored session.
    pub fn forget() -> bool {
        path().is_ok_and(|path| std::fs::remove_file(path).is_ok())
    }

    /// A valid access token, refreshing (and keeping) the session when it expires within a minute.
    ///
    /// # Errors
    /// [`CliError::Unauthorized`] when the refresh is refused.
    pub async fn token(&mut self, http: &reqwest::Client) -> Result<String, CliError> {
        if self.expires_at - chrono::Utc::now().timestamp() > REFRESH_MARGIN_SECONDS {
            return Ok(self.access_token.clone());
        }
        let grant = grant(
            http,
            &self.supabase_url,
            &self.anon_key,
            "refresh_token",
            &serde_json::json!({"refresh_token": self.refresh_token}),
        )
        .await?;
        self.apply(grant);
        self.save()?;
        Ok(self.access_token.clone())
    }

    fn apply(&mut self, grant: Grant) {
        self.expires_at = expiry(&grant);
        self.access_token = grant.access_token;
        self.refresh_token = grant.refresh_token;
    }
}

fn expiry(grant: &Grant) -> i64 {
    grant
        .expires_at
        .unwrap_or_else(|| chrono::Utc::now().timestamp() + grant.expires_in.unwrap_or(3600))
}

async fn grant(
    http: &reqwest::Client,
    supabase_url: &str,
    anon_key: &str,
    kind: &str,
    body: &serde_json::Value,
) -> Result<Grant, CliError> {
    let response = http
        .post(format!(
            "{}/auth/v1/token?grant_type={kind}",
            supabase_url.trim_end_matches('/')
        ))
        .header("apikey", anon_key)
        .json(body)
        .send()
        .await
        .map_err(|e| {
            CliError::Unavailable(format!(
                "Cannot reach the sign-in service ({}). Check your connection.",
                e.without_url()
            ))
        })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status.is_success()
        && let Ok(grant) = serde_json::from_str::<Grant>(&text)
    {
        return Ok(grant);
    }
    let reason = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            ["error_description", "msg", "message", "error"]
                .iter()
                .find_map(|k| v[k].as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| format!("HTTP {status}"));
    Err(CliError::Unauthorized(format!(
        "Sign-in refused: {reason}."
    )))
}

/// Signs in to the gateway's Supabase with `email` and `password` and keeps the session.
///
/// # Errors
/// [`CliError::Usage`] when the gateway offers no password sign-in; [`CliError::Unauthorized`] when
/// Supabase refuses.
pub async fn login(gateway: &Gateway, email: &str, password: &str) -> Result<Session, CliError> {
    let config = gateway.sign_in_config().await?;
    let (Some(supabase_url), Some(anon_key)) = (config.supabase_url, config.supabase_anon_key)
    else {
        return Err(CliError::Usage(
            "This gateway offers no password sign-in. Ask its operator for a token and set \
             EUGLENA_TOKEN."
                .to_owned(),
        ));
    };
    let grant = grant(
        gateway.http(),
        &supabase_url,
        &anon_key,
        "password",
        &serde_json::json!({"email": email, "password": password}),
    )
    .await?;
    let session = Session {
        gateway: gateway.base().to_owned(),
        supabase_url,
        anon_key,
        expires_at: expiry(&grant),
        access_token: grant.access_token,
        refresh_token: grant.refresh_token,
    };
    session.save()?;
    Ok(session)
}
