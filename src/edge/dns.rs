//! Finding a peer domain's SIP federation edge in DNS (the profile, "Server discovery"):
//! the SRV record `_sipfederationtls._tcp.<domain>` names the edge hosts, tried in RFC 2782
//! order ("Usage rules": lowest priority first, weighted random within a priority, see
//! [`order_srv`]); each target is then resolved to its A and AAAA addresses, and the
//! caller moves on to the next target when one fails.
//!
//! Lookups go through hickory-resolver and its response cache, which honours record TTLs:
//! a repeated lookup within the TTL does not reach the network. Negative answers (NXDOMAIN, or
//! the name exists without SRV records) are cached too, for the negative TTL of RFC 2308 §5 —
//! the smaller of the SOA record's TTL and its MINIMUM field, from the authority section of the
//! answer — capped at [`NEGATIVE_TTL_CAP`]. A negative answer without an SOA is not cached.
//! How long an answer stays valid is reported to the caller ([`Resolution::valid_until`],
//! [`DiscoveryError::NoSrv`]), so it can schedule a fresh lookup instead of polling.
//!
//! Names are always looked up fully qualified: no search domains are appended.

#![allow(clippy::disallowed_methods)] // I/O: answers carry until when they hold

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::Resolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{Name, RData};

use crate::edge::srv::{SrvTarget, order_srv};
use crate::random::SplitMix;

/// The SRV service and protocol labels of the federation profile.
pub const SRV_PREFIX: &str = "_sipfederationtls._tcp.";
/// Timeout of one DNS request.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// How many times a failed request is retried.
pub const ATTEMPTS: usize = 2;
/// The longest a negative answer is cached (RFC 2308 §5 suggests one to three hours; a partner
/// that has just published its SRV record should not wait longer).
pub const NEGATIVE_TTL_CAP: Duration = Duration::from_secs(3600);
/// Number of answers the cache holds.
const CACHE_SIZE: u64 = 4096;

/// SRV discovery and address lookups for the edge, with hickory's TTL-honouring cache.
pub struct Discovery {
    resolver: Resolver<TokioRuntimeProvider>,
    rng: SplitMix,
}

/// The ordered edge targets of a domain, and until when the answer may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// In the order to try them (RFC 2782); targets are lower case without a trailing dot.
    pub targets: Vec<SrvTarget>,
    /// Now plus the smallest TTL of the SRV records in the answer.
    pub valid_until: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The domain or the SRV name does not exist, or has no SRV records (negative answer), or
    /// its only target is `.` (RFC 2782: the service is decidedly not available);
    /// `valid_until` from the negative TTL (SOA minimum).
    #[error("no _sipfederationtls._tcp SRV record for {domain}")]
    NoSrv {
        domain: String,
        valid_until: Instant,
    },
    #[error("{host} has no A/AAAA address")]
    NoAddress { host: String },
    #[error("DNS lookup for {name} failed: {reason}")]
    Failed { name: String, reason: String },
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(String),
}

impl Discovery {
    /// `nameservers` empty = the system's resolver configuration (/etc/resolv.conf); otherwise
    /// these servers (UDP and TCP, given port).
    ///
    /// Either way the request timeout is [`TIMEOUT`], [`ATTEMPTS`] attempts, A and AAAA are
    /// both asked for, and the cache is on. With the system configuration the hosts file is
    /// consulted for addresses (as the system's own resolver would); with explicit servers it
    /// is not, so answers come only from those servers. SRV records never come from the hosts
    /// file.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Discovery, DiscoveryError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if nameservers.is_empty() {
            Resolver::builder(provider).map_err(|e| DiscoveryError::Setup(e.to_string()))?
        } else {
            let servers = nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut builder =
                Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider);
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        };
        let options = builder.options_mut();
        options.timeout = TIMEOUT;
        options.attempts = ATTEMPTS;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.cache_size = CACHE_SIZE;
        options.negative_max_ttl = Some(NEGATIVE_TTL_CAP);
        let resolver = builder
            .build()
            .map_err(|e| DiscoveryError::Setup(e.to_string()))?;
        Ok(Discovery {
            resolver,
            rng: SplitMix::seeded(),
        })
    }

    /// SRV `_sipfederationtls._tcp.<domain>`, ordered with [`order_srv`]. Targets
    /// lowercased, without trailing dot.
    pub async fn edge_targets(&self, domain: &str) -> Result<Resolution, DiscoveryError> {
        let domain = normalise(domain);
        let srv_name = format!("{SRV_PREFIX}{domain}");
        let name = fqdn(&srv_name).map_err(|reason| DiscoveryError::Failed {
            name: srv_name.clone(),
            reason,
        })?;
        match self.resolver.srv_lookup(name).await {
            Ok(lookup) => {
                let records = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::SRV(srv) => Some(SrvTarget {
                            priority: srv.priority,
                            weight: srv.weight,
                            port: srv.port,
                            target: target_name(&srv.target),
                        }),
                        _ => None,
                    })
                    .collect();
                let targets = order_srv(records, |n| self.rng.up_to(n));
                if targets.is_empty() {
                    Err(DiscoveryError::NoSrv {
                        domain,
                        valid_until: lookup.valid_until(),
                    })
                } else {
                    Ok(Resolution {
                        targets,
                        valid_until: lookup.valid_until(),
                    })
                }
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(no_records))) => {
                let ttl = no_records
                    .negative_ttl
                    .map(|secs| Duration::from_secs(u64::from(secs)).min(NEGATIVE_TTL_CAP))
                    .unwrap_or_default();
                Err(DiscoveryError::NoSrv {
                    domain,
                    valid_until: Instant::now() + ttl,
                })
            }
            Err(e) => Err(DiscoveryError::Failed {
                name: srv_name,
                reason: e.to_string(),
            }),
        }
    }

    /// A and AAAA of `host` (or the literal if it is an IP), with `port`.
    pub async fn addresses(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, DiscoveryError> {
        if let Some(ip) = ip_literal(host) {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let host = normalise(host);
        let name = fqdn(&host).map_err(|reason| DiscoveryError::Failed {
            name: host.clone(),
            reason,
        })?;
        match self.resolver.lookup_ip(name).await {
            Ok(lookup) => {
                let mut addrs: Vec<SocketAddr> = Vec::new();
                for ip in lookup.iter() {
                    let addr = SocketAddr::new(ip, port);
                    if !addrs.contains(&addr) {
                        addrs.push(addr);
                    }
                }
                if addrs.is_empty() {
                    Err(DiscoveryError::NoAddress { host })
                } else {
                    Ok(addrs)
                }
            }
            Err(e) if e.is_no_records_found() => Err(DiscoveryError::NoAddress { host }),
            Err(e) => Err(DiscoveryError::Failed {
                name: host,
                reason: e.to_string(),
            }),
        }
    }
}

/// Lower case, without a trailing dot.
fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A fully qualified DNS name (no search list), or why `name` is not one.
fn fqdn(name: &str) -> Result<Name, String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    let mut parsed = Name::from_utf8(name).map_err(|e| format!("not a domain name: {e}"))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

/// An SRV target as the rest of the edge compares names: ASCII (IDNA labels as `xn--`), lower
/// case, no trailing dot. The root name (`.`, "no service") becomes the empty string, which
/// [`order_srv`] drops.
fn target_name(target: &Name) -> String {
    normalise(&target.to_ascii())
}

/// `host` as an IP address, also in brackets (`[2001:db8::1]`).
fn ip_literal(host: &str) -> Option<IpAddr> {
    let host = host.trim();
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    unbracketed.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_lower_case_without_trailing_dot() {
        let name = Name::from_ascii("SIP.Contoso.COM.").unwrap();
        assert_eq!(target_name(&name), "sip.contoso.com");
        let relative = Name::from_ascii("edge.fabrikam.test").unwrap();
        assert_eq!(target_name(&relative), "edge.fabrikam.test");
        // RFC 2782: "." means the service is not available here; order_srv drops "".
        assert_eq!(target_name(&Name::root()), "");
        // IDNA labels stay in their ASCII form, as certificates carry them.
        let idn = Name::from_utf8("bücher.example.").unwrap();
        assert_eq!(target_name(&idn), "xn--bcher-kva.example");
    }

    #[test]
    fn lookup_names_are_fully_qualified() {
        let name = fqdn(&format!("{SRV_PREFIX}{}", normalise("Contoso.COM."))).unwrap();
        assert!(name.is_fqdn());
        assert_eq!(name.to_ascii(), "_sipfederationtls._tcp.contoso.com.");
        assert!(fqdn("").is_err());
        assert!(fqdn(&"a".repeat(64)).is_err()); // a label is at most 63 octets
    }

    #[test]
    fn ip_literals() {
        assert_eq!(ip_literal("192.0.2.7"), Some("192.0.2.7".parse().unwrap()));
        assert_eq!(
            ip_literal("[2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            ip_literal("2001:db8::1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(ip_literal("sip.contoso.com"), None);
        assert_eq!(ip_literal("[sip.contoso.com]"), None);
    }

    #[test]
    fn setup_with_explicit_servers_needs_no_runtime() {
        let discovery = Discovery::new(&["127.0.0.1:5353".parse().unwrap()]).unwrap();
        assert_eq!(discovery.resolver.options().timeout, TIMEOUT);
        assert_eq!(discovery.resolver.options().attempts, ATTEMPTS);
        assert_eq!(
            discovery.resolver.options().use_hosts_file,
            ResolveHosts::Never
        );
    }

    #[test]
    fn shareable_between_tasks() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let discovery = Discovery::new(&["127.0.0.1:9".parse().unwrap()]).unwrap();
        send_sync(&discovery);
        // The lookups can run inside tokio::spawn (futures dropped unpolled).
        send(discovery.edge_targets("contoso.test"));
        send(discovery.addresses("sip.contoso.test", 5061));
    }

    #[test]
    fn setup_from_the_system_configuration() {
        match Discovery::new(&[]) {
            Ok(discovery) => {
                assert_eq!(discovery.resolver.options().timeout, TIMEOUT);
                assert_eq!(discovery.resolver.options().attempts, ATTEMPTS);
            }
            // Only acceptable where there is no system configuration to read.
            Err(DiscoveryError::Setup(reason)) => assert!(
                !std::path::Path::new("/etc/resolv.conf").exists(),
                "{reason}"
            ),
            Err(other) => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn ip_literal_addresses_need_no_dns() {
        // Port 9 on loopback: nothing answers, so any DNS query would fail.
        let discovery = Discovery::new(&["127.0.0.1:9".parse().unwrap()]).unwrap();
        assert_eq!(
            discovery.addresses("192.0.2.7", 5061).await,
            Ok(vec!["192.0.2.7:5061".parse().unwrap()])
        );
        assert_eq!(
            discovery.addresses("[2001:db8::1]", 5061).await,
            Ok(vec!["[2001:db8::1]:5061".parse().unwrap()])
        );
    }

    #[tokio::test]
    async fn malformed_domains_fail_without_a_query() {
        let discovery = Discovery::new(&["127.0.0.1:9".parse().unwrap()]).unwrap();
        let long = "a".repeat(64);
        assert!(matches!(
            discovery.edge_targets(&long).await,
            Err(DiscoveryError::Failed { .. })
        ));
        assert!(matches!(
            discovery.addresses("", 5061).await,
            Err(DiscoveryError::Failed { .. })
        ));
    }
}
