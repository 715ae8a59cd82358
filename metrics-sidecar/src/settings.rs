//! The sidecar's settings, validated at start with one clear line naming the variable.
//!
//! CloudWatch is optional: with neither `AWS_REGION` (nor `AWS_DEFAULT_REGION`) nor `AWS_ENDPOINT_URL` set,
//! the sidecar runs with CloudWatch off and still serves `/health` and `/metrics` (the local fleet needs
//! that). In-flight deliveries come from the RabbitMQ management API when `RABBITMQ_MANAGEMENT_URL` is set,
//! else from the agents' presence records in Redis.

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use shared::settings::{CommonSettings, ProcessEnv, Reader, SettingsError, Source};
use std::time::Duration;

/// The default CloudWatch namespace.
pub const DEFAULT_NAMESPACE: &str = "Euglena/RabbitMQ";

/// How long the sidecar waits for RabbitMQ at start before it gives up with a clear error.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// The longest a CloudWatch put may take before it is abandoned; shorter publish intervals get half the
/// interval instead (see [`put_deadline`]).
pub const PUT_DEADLINE: Duration = Duration::from_secs(5);

/// The deadline of one CloudWatch put for a publish `interval`: half the interval, at most
/// [`PUT_DEADLINE`], so a stalled put is always abandoned well before the next tick is due.
pub fn put_deadline(interval: Duration) -> Duration {
    (interval / 2).min(PUT_DEADLINE)
}

/// Everything the sidecar reads from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `REDIS_URL`, `RABBITMQ_URL`, `REDIS_KEY_PREFIX`, `WORKER_TTL_SECONDS` and the rest.
    pub common: CommonSettings,
    /// `PORT` (default 8082) for `/health` and `/metrics`; 0 picks a free port (tests).
    pub port: u16,
    /// `QUEUE_NAME` (defaults to `AGENT_INPUT_QUEUE`): the queue measured, and the `QueueName` dimension.
    pub queue: String,
    /// `METRICS_NAMESPACE` (default `Euglena/RabbitMQ`).
    pub namespace: String,
    /// `PUBLISH_INTERVAL_SECONDS` (default 10, 1 to 3600).
    pub interval: Duration,
    /// `RABBITMQ_MANAGEMENT_URL`, when set.
    pub management: Option<Management>,
    /// Whether any AWS setting is present, so CloudWatch puts are on.
    pub cloudwatch: bool,
    /// How long to wait for RabbitMQ at start.
    pub startup_deadline: Duration,
    /// How long one CloudWatch put may take before it is abandoned (logged, counted, and replaced by a
    /// fresh value at the next tick). Not read from the environment: [`put_deadline`] of the interval
    /// (5 s at the default 10 s interval). Tests may shorten it; start-up caps it at [`put_deadline`] of
    /// the interval, so it always stays shorter than the interval.
    pub put_deadline: Duration,
}

/// Where and how to reach the RabbitMQ management API.
#[derive(Debug, Clone)]
pub struct Management {
    /// The API's base URL with any credentials removed (it appears in errors and logs).
    pub base_url: Url,
    /// The user: from the URL's user info, else from `RABBITMQ_URL`, else `guest`.
    pub user: String,
    /// The password, likewise; never logged.
    pub password: SecretString,
    /// The virtual host, percent-encoded for a URL path (`%2f` for `/`).
    pub vhost: String,
}

impl Settings {
    /// Reads the settings from the process environment.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first invalid variable.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_source(&Reader::new(ProcessEnv))
    }

    /// Reads the settings from `reader`.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first invalid variable.
    pub fn from_source<S: Source>(reader: &Reader<S>) -> Result<Self, SettingsError> {
        let common = CommonSettings::from_source(reader)?;
        let queue = reader
            .optional("QUEUE_NAME")
            .unwrap_or_else(|| common.queue.clone());
        let management = reader
            .optional("RABBITMQ_MANAGEMENT_URL")
            .map(|raw| Management::parse(&raw, common.rabbitmq_url.expose_secret()))
            .transpose()?;
        let cloudwatch = ["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"]
            .iter()
            .any(|name| reader.optional(name).is_some());
        let interval =
            Duration::from_secs(reader.ranged("PUBLISH_INTERVAL_SECONDS", 10_u64, 1, 3600)?);
        Ok(Self {
            port: reader.parse_or("PORT", 8082_u16)?,
            queue,
            namespace: reader.string_or("METRICS_NAMESPACE", DEFAULT_NAMESPACE),
            interval,
            management,
            cloudwatch,
            startup_deadline: STARTUP_DEADLINE,
            put_deadline: put_deadline(interval),
            common,
        })
    }
}

impl Management {
    /// Parses `RABBITMQ_MANAGEMENT_URL`; credentials come from its user info, else from `amqp_url`.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] when it is not an http(s) URL. The message never echoes the value,
    /// which may carry a password.
    pub fn parse(raw: &str, amqp_url: &str) -> Result<Self, SettingsError> {
        let invalid = |reason: &str| SettingsError::Invalid {
            name: "RABBITMQ_MANAGEMENT_URL",
            reason: reason.to_owned(),
        };
        let mut base_url = Url::parse(raw).map_err(|e| invalid(&format!("not a URL ({e})")))?;
        if !matches!(base_url.scheme(), "http" | "https") {
            return Err(invalid("expected an http or https URL"));
        }
        let amqp = Url::parse(amqp_url).ok();
        let (user, password) = if base_url.username().is_empty() {
            match &amqp {
                Some(amqp) if !amqp.username().is_empty() => (
                    percent_decode(amqp.username()),
                    percent_decode(amqp.password().unwrap_or_default()),
                ),
                _ => ("guest".to_owned(), "guest".to_owned()),
            }
        } else {
            (
                percent_decode(base_url.username()),
                percent_decode(base_url.password().unwrap_or_default()),
            )
        };
        // Setting these on an http(s) URL cannot fail.
        let _ = base_url.set_username("");
        let _ = base_url.set_password(None);
        let vhost = amqp
            .map(|amqp| amqp.path().trim_start_matches('/').to_owned())
            .filter(|vhost| !vhost.is_empty())
            .unwrap_or_else(|| "%2f".to_owned());
        Ok(Self {
            base_url,
            user,
            password: SecretString::from(password),
            vhost,
        })
    }

    /// `GET {base}/api/queues/{vhost}/{queue}`.
    pub fn queue_url(&self, queue: &str) -> String {
        format!(
            "{}/api/queues/{}/{}",
            self.base_url.as_str().trim_end_matches('/'),
            self.vhost,
            percent_encode(queue)
        )
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for one URL path segment.
pub fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (URL user info); invalid escapes are kept as they are.
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = raw.get(i + 1..i + 3)
            && let Ok(value) = u8::from_str_radix(hex, 16)
        {
            out.push(value);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_source(&Reader::from_pairs(pairs))
    }

    #[test]
    fn the_defaults_load_from_an_empty_environment() {
        let settings = load(&[]).unwrap();
        assert_eq!(settings.port, 8082);
        assert_eq!(settings.queue, "agent.mandates");
        assert_eq!(settings.namespace, "Euglena/RabbitMQ");
        assert_eq!(settings.interval, Duration::from_secs(10));
        assert!(settings.management.is_none());
        assert!(!settings.cloudwatch, "no AWS settings: CloudWatch is off");
        assert_eq!(settings.put_deadline, Duration::from_secs(5));
    }

    #[test]
    fn a_put_deadline_is_always_shorter_than_the_publish_interval() {
        let deadline = |seconds: &str| {
            load(&[("PUBLISH_INTERVAL_SECONDS", seconds)])
                .unwrap()
                .put_deadline
        };
        assert_eq!(deadline("1"), Duration::from_millis(500));
        assert_eq!(deadline("4"), Duration::from_secs(2));
        assert_eq!(deadline("10"), PUT_DEADLINE);
        assert_eq!(deadline("3600"), PUT_DEADLINE);
    }

    #[test]
    fn the_queue_name_defaults_to_the_agent_input_queue() {
        let settings = load(&[("AGENT_INPUT_QUEUE", "other")]).unwrap();
        assert_eq!(settings.queue, "other");
        let settings = load(&[("AGENT_INPUT_QUEUE", "other"), ("QUEUE_NAME", "mine")]).unwrap();
        assert_eq!(settings.queue, "mine");
    }

    #[test]
    fn any_aws_setting_turns_cloudwatch_on() {
        assert!(load(&[("AWS_REGION", "eu-west-1")]).unwrap().cloudwatch);
        assert!(
            load(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:5055")])
                .unwrap()
                .cloudwatch
        );
    }

    #[test]
    fn an_invalid_interval_is_an_error_naming_the_variable() {
        let error = load(&[("PUBLISH_INTERVAL_SECONDS", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("PUBLISH_INTERVAL_SECONDS is invalid"),
            "{error}"
        );
        let error = load(&[("PORT", "http")]).unwrap_err().to_string();
        assert!(error.starts_with("PORT is invalid"), "{error}");
    }

    #[test]
    fn management_credentials_come_from_its_url_and_never_stay_in_it() {
        let settings = load(&[(
            "RABBITMQ_MANAGEMENT_URL",
            "http://ops:s%40cret@rabbit:15672/",
        )])
        .unwrap();
        let management = settings.management.unwrap();
        assert_eq!(management.user, "ops");
        assert_eq!(management.password.expose_secret(), "s@cret");
        assert_eq!(
            management.queue_url("agent.mandates"),
            "http://rabbit:15672/api/queues/%2f/agent.mandates"
        );
    }

    #[test]
    fn management_credentials_and_vhost_fall_back_to_the_amqp_url() {
        let management =
            Management::parse("http://rabbit:15672", "amqp://bob:pw@rabbit:5672/prod").unwrap();
        assert_eq!(management.user, "bob");
        assert_eq!(management.password.expose_secret(), "pw");
        assert_eq!(
            management.queue_url("a b"),
            "http://rabbit:15672/api/queues/prod/a%20b"
        );
    }

    #[test]
    fn a_bad_management_url_never_echoes_its_password() {
        let error = load(&[("RABBITMQ_MANAGEMENT_URL", "ftp://u:hunter2@x")])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("RABBITMQ_MANAGEMENT_URL is invalid"),
            "{error}"
        );
        assert!(!error.contains("hunter2"));
    }
}
