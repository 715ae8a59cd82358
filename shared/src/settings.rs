//! Settings helpers: typed values read from the documented environment names, validated at start
//! with one clear message naming the variable.
//!
//! Settings are read through a [`Source`] so tests can load them from a map instead of mutating the
//! process environment (which is `unsafe` in edition 2024 and racy across test threads).

use secrecy::SecretString;
use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// Where setting values come from.
pub trait Source {
    /// The raw value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl<S: Source + ?Sized> Source for &S {
    fn get(&self, name: &str) -> Option<String> {
        (**self).get(name)
    }
}

/// A setting is missing or invalid. The message names the variable and never echoes a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A required variable is not set.
    #[error("{0} must be set")]
    Missing(&'static str),
    /// A variable holds a value that does not parse or is out of range.
    #[error("{name} is invalid: {reason}")]
    Invalid {
        /// The variable's name.
        name: &'static str,
        /// Why the value was refused.
        reason: String,
    },
}

/// Reads `name` from the process environment; an empty value counts as unset.
///
/// # Errors
/// Never in practice; the `Result` keeps the call sites uniform with [`Reader`].
pub fn optional(name: &'static str) -> Result<Option<String>, SettingsError> {
    Ok(Reader::new(ProcessEnv).optional(name))
}

/// Typed reads from a [`Source`].
#[derive(Debug)]
pub struct Reader<S> {
    source: S,
}

impl Reader<HashMap<String, String>> {
    /// A reader over literal `(name, value)` pairs, for tests and tools.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }
}

impl<S: Source> Reader<S> {
    /// Reads from `source`.
    pub fn new(source: S) -> Self {
        Self { source }
    }

    /// The value of `name`, trimmed; `None` when unset or empty.
    pub fn optional(&self, name: &str) -> Option<String> {
        self.source
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// The value of `name`, or `default`.
    pub fn string_or(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_owned())
    }

    /// A secret: never logged, never echoed in errors.
    pub fn secret(&self, name: &str) -> Option<SecretString> {
        self.optional(name).map(SecretString::from)
    }

    /// A required secret.
    ///
    /// # Errors
    /// [`SettingsError::Missing`] when unset.
    pub fn required_secret(&self, name: &'static str) -> Result<SecretString, SettingsError> {
        self.secret(name).ok_or(SettingsError::Missing(name))
    }

    /// `name` parsed as `T`, or `default` when unset.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] when set but unparseable.
    pub fn parse_or<T>(&self, name: &'static str, default: T) -> Result<T, SettingsError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.parse(name).map(|v| v.unwrap_or(default))
    }

    /// `name` parsed as `T`, if set.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] when set but unparseable.
    pub fn parse<T>(&self, name: &'static str) -> Result<Option<T>, SettingsError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.optional(name)
            .map(|raw| {
                raw.parse::<T>().map_err(|e| SettingsError::Invalid {
                    name,
                    reason: format!("{e} (got {raw:?})"),
                })
            })
            .transpose()
    }

    /// An integer in `min..=max`, or `default` when unset.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] when unparseable or out of range.
    pub fn ranged<T>(
        &self,
        name: &'static str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, SettingsError>
    where
        T: FromStr + PartialOrd + Display + Copy,
        T::Err: Display,
    {
        let value = self.parse_or(name, default)?;
        if value < min || value > max {
            return Err(SettingsError::Invalid {
                name,
                reason: format!("must be between {min} and {max}, got {value}"),
            });
        }
        Ok(value)
    }

    /// A duration given in (possibly fractional) seconds, e.g. `0.5`, in `min..=max`, or `default`.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] when unparseable or out of range.
    pub fn seconds(
        &self,
        name: &'static str,
        default: f64,
        min: f64,
        max: f64,
    ) -> Result<Duration, SettingsError> {
        let value: f64 = self.parse_or(name, default)?;
        if !(min..=max).contains(&value) {
            return Err(SettingsError::Invalid {
                name,
                reason: format!("must be between {min} and {max} seconds, got {value}"),
            });
        }
        Ok(Duration::from_secs_f64(value))
    }

    /// A boolean (`true`/`false`, `1`/`0`, `yes`/`no`), or `default` when unset.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] for any other value.
    pub fn bool_or(&self, name: &'static str, default: bool) -> Result<bool, SettingsError> {
        match self
            .optional(name)
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(other) => Err(SettingsError::Invalid {
                name,
                reason: format!("expected true or false, got {other:?}"),
            }),
        }
    }
}

/// The settings every service shares.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    /// `REDIS_URL`; may carry a password, so it is kept secret.
    pub redis_url: SecretString,
    /// `RABBITMQ_URL`; carries credentials, so it is kept secret.
    pub rabbitmq_url: SecretString,
    /// `AGENT_INPUT_QUEUE`: the task queue (`agent.mandates`).
    pub queue: String,
    /// `MAX_DELIVERIES`: deliveries before a message is dead-lettered (part of the queue's arguments).
    pub max_deliveries: u32,
    /// `REDIS_KEY_PREFIX`: prepended to every Redis key.
    pub key_prefix: String,
    /// `TASK_TTL_SECONDS`: how long a terminal task record is kept.
    pub task_ttl_seconds: u64,
    /// `WORKER_TTL_SECONDS`: a worker whose heartbeat is older is not live.
    pub worker_ttl_seconds: u64,
    /// `TLS_CA_FILE`: a CA bundle trusted besides the system roots for `rediss://` and `amqps://`.
    pub tls: crate::tls::Tls,
}

impl CommonSettings {
    /// Reads the shared settings with the documented defaults.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first invalid variable.
    pub fn from_source<S: Source>(reader: &Reader<S>) -> Result<Self, SettingsError> {
        let queue = reader.string_or("AGENT_INPUT_QUEUE", crate::queue::DEFAULT_QUEUE);
        if queue.len() > 200 {
            return Err(SettingsError::Invalid {
                name: "AGENT_INPUT_QUEUE",
                reason: "a queue name is at most 200 bytes here (its DLQ adds \".dlq\")".into(),
            });
        }
        Ok(Self {
            redis_url: SecretString::from(
                reader.string_or("REDIS_URL", "redis://127.0.0.1:6379/0"),
            ),
            rabbitmq_url: SecretString::from(
                reader.string_or("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            ),
            queue,
            max_deliveries: reader.ranged("MAX_DELIVERIES", 3, 1, 1000)?,
            key_prefix: reader.string_or("REDIS_KEY_PREFIX", ""),
            task_ttl_seconds: reader.ranged("TASK_TTL_SECONDS", 604_800, 60, 31_536_000)?,
            worker_ttl_seconds: reader.ranged("WORKER_TTL_SECONDS", 30, 2, 3600)?,
            tls: crate::tls::Tls::from_source(reader)?,
        })
    }

    /// The key builder for these settings.
    pub fn keys(&self) -> crate::Keys {
        crate::Keys::new(self.key_prefix.clone())
    }

    /// The queue topology for these settings.
    pub fn topology(&self) -> crate::queue::Topology {
        crate::queue::Topology::new(self.queue.clone(), self.max_deliveries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn reader(pairs: &[(&str, &str)]) -> Reader<HashMap<String, String>> {
        Reader::from_pairs(pairs)
    }

    #[test]
    fn seconds_accept_fractions_and_refuse_what_is_out_of_range() {
        let r = reader(&[("T", "0.25"), ("BAD", "-1")]);
        assert_eq!(
            r.seconds("T", 1.0, 0.0, 10.0).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            r.seconds("UNSET", 1.5, 0.0, 10.0).unwrap(),
            Duration::from_millis(1500)
        );
        let error = r.seconds("BAD", 1.0, 0.0, 10.0).unwrap_err().to_string();
        assert!(error.contains("between 0 and 10 seconds"), "{error}");
    }

    #[test]
    fn the_defaults_load_from_an_empty_environment() {
        let settings = CommonSettings::from_source(&reader(&[])).unwrap();
        assert_eq!(settings.queue, "agent.mandates");
        assert_eq!(settings.max_deliveries, 3);
        assert_eq!(settings.key_prefix, "");
        assert_eq!(settings.task_ttl_seconds, 604_800);
        assert_eq!(settings.worker_ttl_seconds, 30);
        assert_eq!(
            settings.redis_url.expose_secret(),
            "redis://127.0.0.1:6379/0"
        );
    }

    #[test]
    fn an_unparseable_number_names_the_variable() {
        let error = CommonSettings::from_source(&reader(&[("MAX_DELIVERIES", "three")]))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("MAX_DELIVERIES is invalid"), "{error}");
    }

    #[test]
    fn an_out_of_range_number_is_refused() {
        let error = CommonSettings::from_source(&reader(&[("MAX_DELIVERIES", "0")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("between 1 and 1000"), "{error}");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let r = reader(&[("REDIS_KEY_PREFIX", "  ")]);
        assert_eq!(r.optional("REDIS_KEY_PREFIX"), None);
    }

    #[test]
    fn booleans_accept_the_usual_spellings_and_refuse_the_rest() {
        assert!(reader(&[("X", "TRUE")]).bool_or("X", false).unwrap());
        assert!(!reader(&[("X", "0")]).bool_or("X", true).unwrap());
        assert!(reader(&[("X", "maybe")]).bool_or("X", true).is_err());
    }

    #[test]
    fn a_secret_error_never_contains_the_value() {
        let error = reader(&[]).required_secret("OPENAI_API_KEY").unwrap_err();
        assert_eq!(error.to_string(), "OPENAI_API_KEY must be set");
    }
}
