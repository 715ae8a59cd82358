//! The SSRF guard: which destinations VISIT may reach.
//!
//! [`forbidden_reason`] / [`is_forbidden`] are pure: they say whether an IP address lies in a range an agent
//! must never reach on its own (loopback, private, link-local including the cloud metadata endpoints,
//! CGNAT, documentation, multicast, reserved, IPv6 ULA and link-local, and IPv6 forms that embed such an
//! IPv4 address). [`VisitPolicy::check`] applies them to a URL: it resolves the host once and hands back
//! the vetted socket addresses, so the caller connects to exactly those (no second DNS lookup that a
//! rebinding attacker could answer differently). Hosts listed in `VISIT_ALLOWLIST` skip the range check.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

/// How long a DNS lookup for a VISIT may take before the visit is refused.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `ip` must not be visited, as a phrase that completes "`ip` is ...", or `None` when it is a public
/// address.
///
/// IPv6 addresses that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`,
/// NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the embedded IPv4 address. Outside those, only
/// global unicast (`2000::/3`) is allowed at all, minus its documentation and special-purpose blocks.
#[must_use]
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

/// Whether VISIT must refuse `ip` (see [`forbidden_reason`]).
#[must_use]
pub fn is_forbidden(ip: IpAddr) -> bool {
    forbidden_reason(ip).is_some()
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    // Ordered so that the most telling name wins (the metadata endpoints before plain link-local).
    const RANGES: &[([u8; 4], u32, &str)] = &[
        (
            [169, 254, 169, 254],
            32,
            "a link-local address (the cloud instance metadata endpoint)",
        ),
        (
            [169, 254, 170, 2],
            32,
            "a link-local address (the ECS task metadata endpoint)",
        ),
        ([169, 254, 0, 0], 16, "a link-local address"),
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([0, 0, 0, 0], 8, "an unspecified (\"this network\") address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 168, 0, 0], 16, "a private address"),
        ([100, 64, 0, 0], 10, "a carrier-grade NAT (shared) address"),
        ([192, 0, 0, 0], 24, "an IETF protocol-assignment address"),
        ([192, 0, 2, 0], 24, "a documentation address"),
        ([198, 51, 100, 0], 24, "a documentation address"),
        ([203, 0, 113, 0], 24, "a documentation address"),
        ([192, 88, 99, 0], 24, "a 6to4 relay anycast address"),
        ([198, 18, 0, 0], 15, "a benchmarking address"),
        ([224, 0, 0, 0], 4, "a multicast address"),
        ([255, 255, 255, 255], 32, "the broadcast address"),
        ([240, 0, 0, 0], 4, "a reserved address"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, reason)| *reason)
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    (u128::from(ip) & mask) == (u128::from(net) & mask)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    let bits = u128::from(ip);
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated): the IPv4 address decides.
    if bits >> 32 == 0xffff || bits >> 32 == 0 {
        return v4_reason(Ipv4Addr::from(bits as u32));
    }
    // NAT64 well-known prefix: a gateway would forward to the embedded IPv4 address.
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return v4_reason(Ipv4Addr::from(bits as u32));
    }
    // 6to4: the IPv4 address of the relay sits in bits 16..48.
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return v4_reason(Ipv4Addr::from((bits >> 80) as u32));
    }
    const RANGES: &[(Ipv6Addr, u32, &str)] = &[
        (
            Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
            48,
            "a local-use NAT64 address",
        ),
        (
            Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
            64,
            "a discard-only address",
        ),
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
            32,
            "a documentation address",
        ),
        (
            Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
            20,
            "a documentation address",
        ),
        (
            Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
            23,
            "an IETF special-purpose address (Teredo, ORCHID, ...)",
        ),
        (
            Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
            7,
            "a unique local (private) address",
        ),
        (
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
            10,
            "a link-local address",
        ),
        (
            Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
            10,
            "a site-local address",
        ),
        (
            Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
            8,
            "a multicast address",
        ),
    ];
    if let Some((_, _, reason)) = RANGES
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
    {
        return Some(reason);
    }
    if !in_v6(ip, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
        return Some("a reserved address (outside IPv6 global unicast)");
    }
    None
}

/// Why a VISIT (or a redirect, or a subresource of a visited page) was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Only `http` and `https` are ever fetched.
    #[error("VISIT refused: only http and https URLs can be visited, not {scheme}:")]
    Scheme {
        /// The scheme the URL had.
        scheme: String,
    },
    /// The URL has no host to connect to.
    #[error("VISIT refused: {url} has no host")]
    NoHost {
        /// The offending URL.
        url: String,
    },
    /// The host is an IP literal in a forbidden range.
    #[error("VISIT refused: {ip} is {reason}; add the host to VISIT_ALLOWLIST to allow it")]
    ForbiddenLiteral {
        /// The literal address.
        ip: IpAddr,
        /// Which range it is in.
        reason: &'static str,
    },
    /// The host name resolved to (at least) one forbidden address.
    #[error(
        "VISIT refused: {host} resolves to {ip}, which is {reason}; add the host to VISIT_ALLOWLIST to allow it"
    )]
    ForbiddenResolution {
        /// The host name as written in the URL.
        host: String,
        /// The first forbidden address it resolved to.
        ip: IpAddr,
        /// Which range it is in.
        reason: &'static str,
    },
    /// The host name could not be resolved (or resolution timed out).
    #[error("VISIT refused: could not resolve {host}: {reason}")]
    Resolve {
        /// The host name as written in the URL.
        host: String,
        /// What the resolver said.
        reason: String,
    },
}

impl Refused {
    /// What the model is told: that the URL was refused and why in general terms, without the address a
    /// host resolved to or what the resolver said (pages the model read may be steering it to probe the
    /// network; the agent's log keeps the detail).
    #[must_use]
    pub fn for_model(&self) -> String {
        const NOT_PUBLIC: &str = "it is not a public address (private, loopback, link-local and reserved \
                                  destinations are never visited)";
        match self {
            Self::Scheme { .. } | Self::NoHost { .. } => self.to_string(),
            Self::ForbiddenLiteral { ip, .. } => format!("VISIT refused: {ip}: {NOT_PUBLIC}"),
            Self::ForbiddenResolution { host, .. } => {
                format!("VISIT refused: {host}: {NOT_PUBLIC}")
            }
            Self::Resolve { host, .. } => format!("VISIT refused: {host} could not be resolved"),
        }
    }

    /// Whether trying the same URL again later could succeed: only a failed DNS lookup qualifies; a
    /// forbidden destination stays forbidden.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Resolve { .. })
    }
}

/// The destinations VISIT may reach: everything public, plus the hosts listed in `VISIT_ALLOWLIST`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VisitPolicy {
    /// Allow-listed hosts, each `host` (any port) or `host:port` (that port only); IPv6 as `[::1]:8080`
    /// or `::1`. Matched exactly, case-insensitively, against the URL's host; no wildcards.
    pub allowlist: Vec<String>,
}

impl VisitPolicy {
    /// A policy allowing the given hosts past the range check.
    #[must_use]
    pub fn new(allowlist: Vec<String>) -> Self {
        Self { allowlist }
    }

    /// Parses the value of `VISIT_ALLOWLIST`: comma-separated entries, blanks ignored.
    #[must_use]
    pub fn from_allowlist_setting(value: &str) -> Self {
        Self::new(
            value
                .split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Whether `host` (as `url::Host` prints it, IPv6 with brackets) on `port` is allow-listed.
    #[must_use]
    pub fn is_allowlisted(&self, host: &str, port: u16) -> bool {
        let host = normalize_host(host);
        self.allowlist.iter().any(|entry| {
            let (entry_host, entry_port) = split_entry(entry);
            normalize_host(entry_host) == host && entry_port.is_none_or(|p| p == port)
        })
    }

    /// Vets `url` and returns the socket addresses the caller may connect to for it.
    ///
    /// The caller must connect only to the returned addresses (pinning them), never resolve the host a
    /// second time: that is what defeats DNS rebinding.
    ///
    /// # Errors
    /// [`Refused`] when the scheme is not http(s), the URL has no host, the host is a forbidden IP literal,
    /// any address the host resolves to is forbidden (unless the host is allow-listed), or resolution fails.
    pub async fn check(&self, url: &Url) -> Result<Vec<SocketAddr>, Refused> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(Refused::Scheme {
                scheme: scheme.to_owned(),
            });
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let host = url.host().ok_or_else(|| Refused::NoHost {
            url: url.to_string(),
        })?;
        let allowlisted = self.is_allowlisted(&host.to_string(), port);
        let literal = match &host {
            Host::Ipv4(v4) => Some(IpAddr::V4(*v4)),
            Host::Ipv6(v6) => Some(IpAddr::V6(*v6)),
            Host::Domain(_) => None,
        };
        if let Some(ip) = literal {
            if !allowlisted && let Some(reason) = forbidden_reason(ip) {
                return Err(Refused::ForbiddenLiteral { ip, reason });
            }
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let name = host.to_string();
        let lookup = tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((name.clone(), port)),
        )
        .await;
        let addrs: Vec<SocketAddr> = match lookup {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => {
                return Err(Refused::Resolve {
                    host: name,
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(Refused::Resolve {
                    host: name,
                    reason: format!("no answer within {}s", RESOLVE_TIMEOUT.as_secs()),
                });
            }
        };
        if addrs.is_empty() {
            return Err(Refused::Resolve {
                host: name,
                reason: "no addresses".to_owned(),
            });
        }
        if !allowlisted {
            // ANY forbidden answer refuses the host: a name that mixes public and private answers is
            // exactly what a rebinding attacker serves.
            if let Some((ip, reason)) = addrs
                .iter()
                .find_map(|a| forbidden_reason(a.ip()).map(|r| (a.ip(), r)))
            {
                return Err(Refused::ForbiddenResolution {
                    host: name,
                    ip,
                    reason,
                });
            }
        }
        Ok(addrs)
    }
}

fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Splits an allowlist entry into host and optional port: `host`, `host:port`, `[v6]`, `[v6]:port`, `v6`.
fn split_entry(entry: &str) -> (&str, Option<u16>) {
    let entry = entry.trim();
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (rest, None),
        };
    }
    match entry.split_once(':') {
        Some((host, port)) if !port.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }
    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }

    #[test]
    fn forbidden_ranges_cover_the_spec_examples_and_their_neighbours() {
        for ip in [
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.170.2",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "192.0.2.10",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "192.0.0.170",
        ] {
            assert!(is_forbidden(v4(ip)), "{ip} should be forbidden");
        }
        for ip in [
            "::1",
            "::",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2001:db8::1",
            "2001::1",
            "3fff::1",
            "100::1",
            "fd00:ec2::254",
        ] {
            assert!(is_forbidden(v6(ip)), "{ip} should be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed_in_both_families() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "192.167.255.255",
            "11.0.0.0",
        ] {
            assert!(!is_forbidden(v4(ip)), "{ip} should be allowed");
        }
        for ip in [
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert!(!is_forbidden(v6(ip)), "{ip} should be allowed");
        }
    }

    #[test]
    fn the_metadata_endpoint_is_named_in_its_reason() {
        let reason = forbidden_reason(v4("169.254.169.254")).unwrap();
        assert!(reason.starts_with("a link-local address"), "{reason}");
        assert!(reason.contains("metadata"), "{reason}");
    }

    proptest! {
        #[test]
        fn every_address_std_calls_non_public_is_forbidden(bits in any::<u32>()) {
            let ip = Ipv4Addr::from(bits);
            let std_says_special = ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || ip.is_documentation();
            if std_says_special {
                prop_assert!(is_forbidden(IpAddr::V4(ip)), "{ip}");
            }
        }

        #[test]
        fn ipv6_forms_embedding_an_ipv4_address_get_its_verdict(bits in any::<u32>()) {
            let ip = Ipv4Addr::from(bits);
            let expected = is_forbidden(IpAddr::V4(ip));
            let mapped = ip.to_ipv6_mapped();
            let nat64 = Ipv6Addr::from((0x0064_ff9b_u128 << 96) | u128::from(bits));
            prop_assert_eq!(is_forbidden(IpAddr::V6(mapped)), expected, "{}", mapped);
            prop_assert_eq!(is_forbidden(IpAddr::V6(nat64)), expected, "{}", nat64);
            if bits > 1 {
                let compatible = ip.to_ipv6_compatible();
                prop_assert_eq!(is_forbidden(IpAddr::V6(compatible)), expected, "{}", compatible);
            }
        }

        #[test]
        fn only_the_listed_v4_blocks_are_forbidden(bits in any::<u32>()) {
            // Independent oracle: the octet-level description of the same table.
            let o = Ipv4Addr::from(bits).octets();
            let expected = matches!(o[0], 0 | 10 | 127 | 224..=255)
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 169 && o[1] == 254)
                || (o[0] == 172 && (16..32).contains(&o[1]))
                || (o[0] == 192 && o[1] == 168)
                || (o[0] == 192 && o[1] == 0 && (o[2] == 0 || o[2] == 2))
                || (o[0] == 192 && o[1] == 88 && o[2] == 99)
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                || (o[0] == 203 && o[1] == 0 && o[2] == 113);
            prop_assert_eq!(is_forbidden(IpAddr::V4(Ipv4Addr::from(bits))), expected);
        }
    }

    #[test]
    fn allowlist_setting_parses_hosts_ports_and_ipv6() {
        let policy = VisitPolicy::from_allowlist_setting(
            " intranet.example ,127.0.0.1:8080,, [::1]:9000,fd00::5",
        );
        assert_eq!(policy.allowlist.len(), 4);
        assert!(policy.is_allowlisted("INTRANET.example", 443));
        assert!(policy.is_allowlisted("127.0.0.1", 8080));
        assert!(!policy.is_allowlisted("127.0.0.1", 8081));
        assert!(policy.is_allowlisted("[::1]", 9000));
        assert!(!policy.is_allowlisted("[::1]", 80));
        assert!(policy.is_allowlisted("[fd00::5]", 80));
        assert!(!policy.is_allowlisted("sub.intranet.example", 443));
    }

    #[tokio::test]
    async fn check_refuses_forbidden_literals_with_a_clear_message() {
        let policy = VisitPolicy::default();
        let err = policy
            .check(&Url::parse("http://169.254.169.254/latest/meta-data/").unwrap())
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("VISIT refused: 169.254.169.254 is a link-local address"),
            "{message}"
        );
        assert!(
            message.ends_with("add the host to VISIT_ALLOWLIST to allow it"),
            "{message}"
        );
        assert!(!err.is_retryable());
        for url in [
            "http://10.1.2.3/",
            "https://[fd00::1]/",
            "http://[::ffff:127.0.0.1]:8080/",
        ] {
            assert!(
                matches!(
                    policy.check(&Url::parse(url).unwrap()).await,
                    Err(Refused::ForbiddenLiteral { .. })
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn the_model_is_told_a_url_was_refused_without_the_address_it_resolved_to() {
        let refused = Refused::ForbiddenResolution {
            host: "intranet.example".into(),
            ip: "10.1.2.3".parse().unwrap(),
            reason: "a private address",
        };
        let told = refused.for_model();
        assert!(
            told.starts_with("VISIT refused: intranet.example: it is not a public address"),
            "{told}"
        );
        assert!(!told.contains("10.1.2.3"), "{told}");
        assert!(
            refused.to_string().contains("10.1.2.3"),
            "the log keeps the detail"
        );
        let unresolved = Refused::Resolve {
            host: "nowhere.invalid".into(),
            reason: "lookup via 172.16.0.2: NXDOMAIN".into(),
        };
        assert_eq!(
            unresolved.for_model(),
            "VISIT refused: nowhere.invalid could not be resolved"
        );
    }

    #[tokio::test]
    async fn check_refuses_non_http_schemes() {
        let policy = VisitPolicy::new(vec!["localhost".into()]);
        for url in [
            "file:///etc/passwd",
            "ftp://localhost/",
            "gopher://localhost/",
        ] {
            assert!(
                matches!(
                    policy.check(&Url::parse(url).unwrap()).await,
                    Err(Refused::Scheme { .. })
                ),
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn check_refuses_a_hostname_resolving_to_loopback_unless_allowlisted() {
        let url = Url::parse("http://localhost:8080/").unwrap();
        let err = VisitPolicy::default().check(&url).await.unwrap_err();
        assert!(matches!(err, Refused::ForbiddenResolution { .. }), "{err}");
        assert!(err.to_string().contains("localhost resolves to"), "{err}");

        let addrs = VisitPolicy::new(vec!["localhost".into()])
            .check(&url)
            .await
            .unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8080)
        );
    }

    #[tokio::test]
    async fn check_pins_an_allowlisted_literal_to_its_own_address_and_port() {
        let policy = VisitPolicy::new(vec!["127.0.0.1".into()]);
        let addrs = policy
            .check(&Url::parse("http://127.0.0.1:4321/x").unwrap())
            .await
            .unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:4321".parse::<SocketAddr>().unwrap()]);
        let addrs = policy
            .check(&Url::parse("https://127.0.0.1/").unwrap())
            .await
            .unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:443".parse::<SocketAddr>().unwrap()]);
    }

    #[tokio::test]
    async fn an_unresolvable_host_is_a_retryable_refusal() {
        let err = VisitPolicy::default()
            .check(&Url::parse("http://no-such-host.invalid/").unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, Refused::Resolve { .. }), "{err}");
        assert!(err.is_retryable());
    }
}
