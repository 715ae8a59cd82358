//! TLS to Redis and RabbitMQ: `rediss://` and `amqps://` URLs, with an optional CA bundle
//! (`TLS_CA_FILE`) trusted in addition to the system roots, for both.
//!
//! Managed services (ElastiCache with in-transit encryption, Amazon MQ) present certificates from public
//! CAs, which the system roots cover; a private CA (a self-hosted broker, the tests here) goes in the
//! bundle. The bundle is read and checked once at start-up, so a missing or unreadable file is one clear
//! line then, not a handshake failure later; a server whose certificate the roots and the bundle do not
//! vouch for fails the connection with rustls's reason (e.g. `UnknownIssuer`).

use crate::settings::{Reader, SettingsError, Source};
use base64::Engine as _;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};
use std::sync::{Arc, Once};

/// How the services connect over TLS. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tls {
    /// The CA bundle (PEM) from `TLS_CA_FILE`, when set.
    ca_pem: Option<Arc<str>>,
    /// The bundle followed by the system roots, as the redis crate takes them (one bundle that replaces
    /// the system roots), built once with the bundle rather than for every Redis client.
    redis_roots: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca_bundle", &self.ca_pem.is_some())
            .finish()
    }
}

impl Tls {
    /// Reads `TLS_CA_FILE` (optional): a PEM file with at least one certificate.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] when the file cannot be read or holds no certificate.
    pub fn from_source<S: Source>(reader: &Reader<S>) -> Result<Self, SettingsError> {
        let Some(path) = reader.optional("TLS_CA_FILE") else {
            return Ok(Self::default());
        };
        let invalid = |reason: String| SettingsError::Invalid {
            name: "TLS_CA_FILE",
            reason,
        };
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
        Self::with_ca_pem(&pem).map_err(|reason| invalid(format!("{path}: {reason}")))
    }

    /// TLS trusting the certificates in `pem` besides the system roots.
    ///
    /// # Errors
    /// Why `pem` is not a usable bundle.
    pub fn with_ca_pem(pem: &str) -> Result<Self, String> {
        let certificates = pem_certificates(pem);
        if certificates == 0 {
            return Err("no PEM certificate in it".to_owned());
        }
        let mut roots = pem.to_owned();
        roots.push('\n');
        roots.push_str(&system_roots_pem());
        Ok(Self {
            ca_pem: Some(Arc::from(pem)),
            redis_roots: Some(Arc::from(roots.into_bytes())),
        })
    }

    /// A Redis client for `url`: `rediss://` speaks TLS, trusting the bundle and the system roots.
    ///
    /// # Errors
    /// The redis crate's error for a malformed URL.
    pub fn redis_client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        install_crypto_provider();
        match &self.redis_roots {
            Some(roots) if url.starts_with("rediss://") => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(roots.to_vec()),
                },
            ),
            _ => redis::Client::open(url),
        }
    }

    /// Connects to RabbitMQ at `url`: `amqps://` speaks TLS, trusting the bundle besides the system
    /// roots.
    ///
    /// # Errors
    /// lapin's error (unreachable, refused credentials, a certificate not trusted).
    pub async fn amqp_connect(
        &self,
        url: &str,
        properties: ConnectionProperties,
    ) -> lapin::Result<Connection> {
        install_crypto_provider();
        let config = OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca_pem.as_deref().map(str::to_owned),
        };
        Connection::connect_with_config(url, properties, config, lapin::runtime::default_runtime()?)
            .await
    }
}

/// Where the broker is: its URL (a secret: it holds the password) and the TLS trust for `amqps://`.
#[derive(Debug, Clone)]
pub struct BrokerAddress {
    /// `RABBITMQ_URL`.
    pub url: secrecy::SecretString,
    /// The CA bundle trusted for `amqps://`.
    pub tls: Tls,
}

impl BrokerAddress {
    /// Connects to the broker (see [`Tls::amqp_connect`]).
    ///
    /// # Errors
    /// lapin's error (unreachable, refused credentials, a certificate not trusted).
    pub async fn connect(&self, properties: ConnectionProperties) -> lapin::Result<Connection> {
        use secrecy::ExposeSecret as _;
        self.tls
            .amqp_connect(self.url.expose_secret(), properties)
            .await
    }
}

/// Installs the process's rustls crypto provider (aws-lc-rs) once. Several crates in the build enable
/// different providers, and rustls then refuses to pick one by itself.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Another part of the process may have installed one first; either works.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// How many certificates `pem` holds.
fn pem_certificates(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// The system's root certificates as PEM (the redis crate takes one bundle, which replaces the system
/// roots, so they are added to it).
fn system_roots_pem() -> String {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::debug!(%error, "a system root certificate could not be loaded");
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let mut pem = String::new();
    for certificate in loaded.certs {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = engine.encode(certificate.as_ref());
        for line in encoded.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_a_certificate_is_refused() {
        assert!(Tls::with_ca_pem("not a certificate").is_err());
        assert!(Tls::with_ca_pem("").is_err());
    }

    #[test]
    fn an_unreadable_ca_file_is_a_settings_error_naming_the_variable() {
        let reader = Reader::new(
            [("TLS_CA_FILE", "/nonexistent/ca.pem")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
        let error = Tls::from_source(&reader).unwrap_err().to_string();
        assert!(error.contains("TLS_CA_FILE"), "{error}");
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn the_system_roots_come_out_as_pem_certificates() {
        let pem = system_roots_pem();
        assert!(
            pem_certificates(&pem) > 10,
            "this machine has ca-certificates"
        );
    }

    #[test]
    fn without_tls_ca_file_plain_urls_still_work() {
        let tls = Tls::default();
        assert!(tls.redis_client("redis://127.0.0.1:6379/0").is_ok());
    }
}
