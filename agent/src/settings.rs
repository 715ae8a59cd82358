//! The agent's typed settings, read from the environment and validated at start.
//!
//! Durations that tests need short (`AGENT_STATUS_TIME`, `SHUTDOWN_GRACE_SECONDS`,
//! `ECS_PROTECTION_RENEW_SECONDS`, `STARTUP_TIMEOUT_SECONDS`) accept fractional seconds, e.g. `0.5`.

use crate::browser::BrowserSettings;
use crate::llm::LlmSettings;
use crate::search::{SearchProvider, SearchSettings};
use secrecy::SecretString;
use shared::settings::{CommonSettings, Reader, SettingsError, Source};
use std::path::PathBuf;
use std::time::Duration;

/// Everything the agent runtime reads from the environment.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The settings every service shares (Redis, RabbitMQ, queue, prefix, TTLs).
    pub common: CommonSettings,
    /// `AGENT_CONCURRENCY`: tasks run at once, also the consumer's prefetch (default 1).
    pub concurrency: u16,
    /// `AGENT_STATUS_TIME`: heartbeat period of presence and of `in_progress` writes (default 10 s).
    pub status_interval: Duration,
    /// `HEALTH_PORT`: port of `GET /health` (default 8081; 0 picks a free port, for tests).
    pub health_port: u16,
    /// `SHUTDOWN_GRACE_SECONDS`: how long tasks in hand may run after SIGTERM (default 100).
    pub shutdown_grace: Duration,
    /// `TASK_MAX_SECONDS`: the longest a task may run, across all its deliveries (default 3600); a task
    /// still running then is stopped and failed. Keep it below the broker's `consumer_timeout`.
    pub task_max_run: Duration,
    /// `STARTUP_TIMEOUT_SECONDS`: how long start-up waits for Redis and RabbitMQ (default 30).
    pub startup_timeout: Duration,
    /// `ECS_AGENT_URI`: set by ECS; enables task scale-in protection.
    pub ecs_agent_uri: Option<String>,
    /// `ECS_PROTECTION_EXPIRES_MINUTES`: expiry asked for each time protection is set (default 60).
    pub protection_expires_minutes: u32,
    /// `ECS_PROTECTION_RENEW_SECONDS`: renewal period while busy (default half the expiry).
    pub protection_renew: Duration,
    /// `WORKER_ID`: overrides the derived worker id (ECS task id, or hostname plus a short uuid).
    pub worker_id: Option<String>,
    /// What the tick loop needs: model, search, browser, memory.
    pub mind: MindSettings,
}

/// The tick loop's settings (docs/architecture.md, "The tick loop").
#[derive(Debug, Clone)]
pub struct MindSettings {
    /// The model (`MODEL_API_URL`, `MODEL_NAME`, `OPENAI_API_KEY`, `MODEL_TIMEOUT_SECONDS`,
    /// `MODEL_MAX_RETRIES`, `MODEL_RETRY_BASE_MS`).
    pub llm: LlmSettings,
    /// The web search API (`SEARCH_API_URL`, `SEARCH_API_KEY`, `SEARCH_PROVIDER`); SEARCH reports that it is
    /// not configured when the URL is unset.
    pub search: Option<SearchSettings>,
    /// The browser (`CHROMIUM_PATH`, `VISIT_TIMEOUT_SECONDS`, `VISIT_TEXT_CHARS`, `BROWSER_MAX_TABS`,
    /// `BROWSER_JS_HEAP_MB`).
    pub browser: BrowserSettings,
    /// `VISIT_ALLOWLIST`: hosts VISIT may reach even on private, loopback or link-local addresses.
    pub visit_allowlist: String,
    /// Vector memory.
    pub memory: MemorySettings,
    /// `MODEL_CONTEXT_TOKENS`: the model's context; every prompt is cut to fit it with room for the
    /// answer's `MODEL_MAX_TOKENS` (default 16000).
    pub context_tokens: u32,
}

/// The least prompt a model's context must leave room for beside the answer: the instructions, a
/// mandate, and a little of the task's state.
const MIN_PROMPT_TOKENS: u32 = 1_000;

/// Where memory lives.
#[derive(Debug, Clone)]
pub struct MemorySettings {
    /// `MEMORY_ENABLED` (default true): with false, memory writes and queries are ignored (for machines
    /// without the embedding model).
    pub enabled: bool,
    /// `QDRANT_URL`: a Qdrant server; the embedded store is used when unset.
    pub qdrant_url: Option<String>,
    /// `QDRANT_API_KEY`: for a Qdrant server that needs one.
    pub qdrant_api_key: Option<SecretString>,
    /// `QDRANT_PATH`: the embedded store's directory (default `data/qdrant`).
    pub qdrant_path: PathBuf,
    /// `EMBEDDING_MODEL_DIR`: all-MiniLM-L6-v2's `model.safetensors`, `tokenizer.json`, `config.json`
    /// (default `/opt/models/all-MiniLM-L6-v2`, where the agent image puts them).
    pub model_dir: PathBuf,
}

impl MindSettings {
    /// Reads the tick loop's settings.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first invalid variable.
    pub fn from_source<S: Source>(reader: &Reader<S>) -> Result<Self, SettingsError> {
        let api_url = reader.string_or("MODEL_API_URL", "https://api.openai.com/v1");
        if reqwest::Url::parse(&api_url).is_err() {
            return Err(SettingsError::Invalid {
                name: "MODEL_API_URL",
                reason: format!("not a URL: {api_url:?}"),
            });
        }
        let llm = LlmSettings {
            api_url,
            model: reader.string_or("MODEL_NAME", "gpt-4o-mini"),
            api_key: reader.secret("OPENAI_API_KEY"),
            timeout: reader.seconds("MODEL_TIMEOUT_SECONDS", 60.0, 0.1, 600.0)?,
            max_retries: reader.ranged("MODEL_MAX_RETRIES", 3, 0, 10)?,
            retry_base: Duration::from_millis(reader.ranged(
                "MODEL_RETRY_BASE_MS",
                500,
                1,
                60_000,
            )?),
            max_tokens: reader.ranged("MODEL_MAX_TOKENS", 1024, 16, 1_000_000)?,
        };
        let context_tokens = reader.ranged("MODEL_CONTEXT_TOKENS", 16_000, 1_000, 10_000_000)?;
        if context_tokens < llm.max_tokens + MIN_PROMPT_TOKENS {
            return Err(SettingsError::Invalid {
                name: "MODEL_CONTEXT_TOKENS",
                reason: format!(
                    "{context_tokens} leaves no room for a prompt beside MODEL_MAX_TOKENS={}: it must be at \
                     least {MIN_PROMPT_TOKENS} more",
                    llm.max_tokens
                ),
            });
        }
        let search = match reader.optional("SEARCH_API_URL") {
            None => None,
            Some(raw) => {
                let url = url::Url::parse(&raw).map_err(|e| SettingsError::Invalid {
                    name: "SEARCH_API_URL",
                    reason: e.to_string(),
                })?;
                let provider: SearchProvider =
                    reader.parse_or("SEARCH_PROVIDER", SearchProvider::default())?;
                Some(SearchSettings::new(
                    url,
                    reader.secret("SEARCH_API_KEY"),
                    provider,
                ))
            }
        };
        let browser = BrowserSettings {
            chromium_path: PathBuf::from(reader.string_or("CHROMIUM_PATH", "/usr/bin/chromium")),
            page_load_timeout: reader.seconds("VISIT_TIMEOUT_SECONDS", 15.0, 0.5, 300.0)?,
            text_budget: reader.ranged("VISIT_TEXT_CHARS", 8_000, 100, 1_000_000)?,
            max_tabs: reader.ranged("BROWSER_MAX_TABS", 4, 1, 64)?,
            js_heap_mb: reader.ranged("BROWSER_JS_HEAP_MB", 512, 64, 4_096)?,
            ..BrowserSettings::default()
        };
        let memory = MemorySettings {
            enabled: reader.bool_or("MEMORY_ENABLED", true)?,
            qdrant_url: reader.optional("QDRANT_URL"),
            qdrant_api_key: reader.secret("QDRANT_API_KEY"),
            qdrant_path: PathBuf::from(reader.string_or("QDRANT_PATH", "data/qdrant")),
            model_dir: PathBuf::from(
                reader.string_or("EMBEDDING_MODEL_DIR", "/opt/models/all-MiniLM-L6-v2"),
            ),
        };
        Ok(Self {
            llm,
            search,
            browser,
            visit_allowlist: reader.string_or("VISIT_ALLOWLIST", ""),
            memory,
            context_tokens,
        })
    }
}

impl AgentSettings {
    /// Reads the settings from the process environment.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first invalid variable.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_source(&Reader::new(shared::settings::ProcessEnv))
    }

    /// Reads the settings from `reader` with the documented defaults.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first invalid variable.
    pub fn from_source<S: Source>(reader: &Reader<S>) -> Result<Self, SettingsError> {
        let common = CommonSettings::from_source(reader)?;
        let status_interval = reader.seconds("AGENT_STATUS_TIME", 10.0, 0.05, 3600.0)?;
        if status_interval >= Duration::from_secs(common.worker_ttl_seconds) {
            return Err(SettingsError::Invalid {
                name: "AGENT_STATUS_TIME",
                reason: format!(
                    "must be shorter than WORKER_TTL_SECONDS ({}), or a live worker looks dead",
                    common.worker_ttl_seconds
                ),
            });
        }
        let ecs_agent_uri = reader
            .optional("ECS_AGENT_URI")
            .map(|uri| uri.trim_end_matches('/').to_owned());
        if let Some(uri) = &ecs_agent_uri
            && reqwest::Url::parse(uri).is_err()
        {
            return Err(SettingsError::Invalid {
                name: "ECS_AGENT_URI",
                reason: format!("not a URL: {uri:?}"),
            });
        }
        let protection_expires_minutes =
            reader.ranged("ECS_PROTECTION_EXPIRES_MINUTES", 60, 1, 2880)?;
        let expiry_seconds = f64::from(protection_expires_minutes) * 60.0;
        let protection_renew = reader.seconds(
            "ECS_PROTECTION_RENEW_SECONDS",
            expiry_seconds / 2.0,
            0.05,
            expiry_seconds - 1.0,
        )?;
        Ok(Self {
            common,
            concurrency: reader.ranged("AGENT_CONCURRENCY", 1, 1, 256)?,
            status_interval,
            health_port: reader.parse_or("HEALTH_PORT", 8081)?,
            shutdown_grace: reader.seconds("SHUTDOWN_GRACE_SECONDS", 100.0, 0.0, 3600.0)?,
            task_max_run: reader.seconds("TASK_MAX_SECONDS", 3600.0, 1.0, 7.0 * 86_400.0)?,
            startup_timeout: reader.seconds("STARTUP_TIMEOUT_SECONDS", 30.0, 0.1, 3600.0)?,
            ecs_agent_uri,
            protection_expires_minutes,
            protection_renew,
            worker_id: reader.optional("WORKER_ID"),
            mind: MindSettings::from_source(reader)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn reader(pairs: &[(&str, &str)]) -> Reader<HashMap<String, String>> {
        Reader::from_pairs(pairs)
    }

    #[test]
    fn the_defaults_load_from_an_empty_environment() {
        let settings = AgentSettings::from_source(&reader(&[])).unwrap();
        assert_eq!(settings.concurrency, 1);
        assert_eq!(settings.status_interval, Duration::from_secs(10));
        assert_eq!(settings.health_port, 8081);
        assert_eq!(settings.shutdown_grace, Duration::from_secs(100));
        assert_eq!(settings.ecs_agent_uri, None);
        assert_eq!(settings.protection_expires_minutes, 60);
        assert_eq!(settings.protection_renew, Duration::from_secs(1800));
        assert_eq!(settings.common.queue, "agent.mandates");
    }

    #[test]
    fn durations_accept_fractional_seconds_for_tests() {
        let settings = AgentSettings::from_source(&reader(&[
            ("AGENT_STATUS_TIME", "0.5"),
            ("SHUTDOWN_GRACE_SECONDS", "2.5"),
        ]))
        .unwrap();
        assert_eq!(settings.status_interval, Duration::from_millis(500));
        assert_eq!(settings.shutdown_grace, Duration::from_millis(2500));
    }

    #[test]
    fn a_heartbeat_slower_than_the_worker_ttl_is_refused() {
        let error = AgentSettings::from_source(&reader(&[
            ("AGENT_STATUS_TIME", "30"),
            ("WORKER_TTL_SECONDS", "30"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("AGENT_STATUS_TIME is invalid"), "{error}");
    }

    #[test]
    fn the_mind_defaults_load_and_search_is_off_without_a_url() {
        let settings = AgentSettings::from_source(&reader(&[])).unwrap();
        let mind = settings.mind;
        assert_eq!(mind.llm.api_url, "https://api.openai.com/v1");
        assert_eq!(mind.llm.max_retries, 3);
        assert!(mind.llm.api_key.is_none());
        assert!(mind.search.is_none());
        assert!(mind.memory.enabled);
        assert_eq!(
            mind.browser.chromium_path,
            PathBuf::from("/usr/bin/chromium")
        );
    }

    #[test]
    fn an_unknown_search_provider_is_refused() {
        let error = AgentSettings::from_source(&reader(&[
            ("SEARCH_API_URL", "http://127.0.0.1:9/search"),
            ("SEARCH_PROVIDER", "altavista"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("SEARCH_PROVIDER is invalid"), "{error}");
    }

    #[test]
    fn a_concurrency_of_zero_is_refused_with_the_variable_named() {
        let error = AgentSettings::from_source(&reader(&[("AGENT_CONCURRENCY", "0")]))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("AGENT_CONCURRENCY is invalid"), "{error}");
    }

    #[test]
    fn an_ecs_agent_uri_that_is_not_a_url_is_refused() {
        let error = AgentSettings::from_source(&reader(&[("ECS_AGENT_URI", "not a url")]))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("ECS_AGENT_URI is invalid"), "{error}");
    }
}
