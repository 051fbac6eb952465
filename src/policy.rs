//! Federation policy decisions, no I/O (the TLS edge calls these):
//!
//! - **Peer domain authorization** (the profile's "To and From URI handling" and "Certificate
//!   requirements", RFC 5922 §7): a connection's identity is the DNS names of its certificate's
//!   subjectAltName (the subject CN only when there is no SAN); a request whose From domain is D
//!   is accepted when a name equals D, or equals the target of D's `_sipfederationtls._tcp` SRV
//!   record, or is the edge host configured for partner D. Wildcard names never authorize a
//!   domain (RFC 5922 §7.2). Blocked partners, and unlisted domains under `default_policy =
//!   "deny"`, are refused with 403.
//! - **Request admission at the edge** ([`admit_request`]): the profile's rules for every
//!   request from a peer — SIPS anywhere → 400, Max-Forwards 0 → 483, a Request-URI domain this
//!   bridge does not serve → 404 (never an open relay), a From that is not a SIP AOR → 400, a
//!   From domain the peer's certificate does not cover → 403.
//! - **SRV target order** (RFC 2782): by priority, then weighted random within a priority. The
//!   random source is passed in.
//! - **Reconnect backoff**: exponential with jitter; the jitter is passed in.

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::{DefaultPolicy, FederationConfig, PartnerPolicy};
use crate::sip::message::{Message, Method};
use crate::sip::uri::{Host, Uri};

/// The DNS names a peer's certificate vouches for (lower-case, without a trailing dot, sorted
/// and without repeats: two certificates naming the same names are one identity, whatever
/// their order, which is what the per-identity limits count).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PeerIdentity {
    names: Vec<String>,
}

impl PeerIdentity {
    pub fn from_names<I: IntoIterator<Item = S>, S: AsRef<str>>(names: I) -> PeerIdentity {
        let mut names: Vec<String> = names
            .into_iter()
            .map(|n| n.as_ref().trim_end_matches('.').to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort_unstable();
        names.dedup();
        PeerIdentity { names }
    }

    /// The identity of a DER certificate: its SAN dNSNames, or its subject CN when it has no
    /// SAN extension (RFC 5922 §7.1).
    pub fn from_certificate(der: &[u8]) -> Result<PeerIdentity, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("certificate does not parse: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("certificate subjectAltName: {e}"))?;
        let names: Vec<String> = match san {
            Some(ext) => ext
                .value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect(),
            None => cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
                .collect(),
        };
        Ok(PeerIdentity::from_names(names))
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn has(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        self.names
            .iter()
            .any(|n| !n.starts_with("*.") && n.eq_ignore_ascii_case(name))
    }
}

impl PeerIdentity {
    /// Whether this identity speaks for `domain` (RFC 5922 §7, the profile's certificate
    /// rules): a name equals the domain, or equals one of its SRV targets (`srv_targets`), or
    /// equals the edge host configured for the partner. Policy (allowed, blocked) is not
    /// looked at here.
    pub fn covers(
        &self,
        domain: &str,
        srv_targets: &[String],
        federation: &FederationConfig,
    ) -> bool {
        self.has(domain)
            || srv_targets.iter().any(|t| self.has(t))
            || federation
                .partner(domain)
                .and_then(|p| p.edge.as_ref())
                .is_some_and(|e| self.has(&e.host))
    }
}

/// Why a request is refused, with the SIP status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

/// Decides whether a connection with `identity` may send requests from `domain`.
/// `srv_targets` are the targets of `_sipfederationtls._tcp.<domain>` (empty when none or not
/// looked up).
pub fn authorize_peer_domain(
    identity: &PeerIdentity,
    domain: &str,
    srv_targets: &[String],
    federation: &FederationConfig,
) -> Result<(), Refusal> {
    let partner = federation.partner(domain);
    match partner.map(|p| p.policy) {
        Some(PartnerPolicy::Block) => {
            return Err(Refusal {
                status: 403,
                reason: format!("Domain {domain} is blocked"),
            });
        }
        None if federation.default_policy == DefaultPolicy::Deny => {
            return Err(Refusal {
                status: 403,
                reason: format!("Domain {domain} is not a federation partner"),
            });
        }
        _ => {}
    }
    if identity.covers(domain, srv_targets, federation) {
        Ok(())
    } else {
        Err(Refusal {
            status: 403,
            reason: format!("Peer certificate is not valid for domain {domain}"),
        })
    }
}

/// The domains this edge answers for: the local XMPP domains and the edge's own FQDN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedDomains {
    pub local_domains: Vec<String>,
    pub public_fqdn: String,
}

impl ServedDomains {
    /// The local domains and the edge FQDN of a configuration.
    pub fn of(config: &crate::config::Config) -> ServedDomains {
        ServedDomains {
            local_domains: config.xmpp.local_domains.clone(),
            public_fqdn: config.sip.public_fqdn.clone(),
        }
    }

    pub fn contains(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        host.eq_ignore_ascii_case(&self.public_fqdn)
            || self
                .local_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(host))
    }
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

/// The domain of a SIP URI's host, or `None` for other schemes and IP hosts.
fn sip_domain<'a>(uri: &Uri<'a>) -> Option<&'a str> {
    match uri {
        Uri::Sip(u) => match u.host {
            Host::Domain(d) => Some(d),
            Host::Ipv4(_) | Host::Ipv6(_) => None,
        },
        Uri::Other { .. } => None,
    }
}

/// Whether an incoming request from a peer may be processed (the profile's deviations section,
/// RFC 3261 §8.2 and §16.3, RFC 5922). ACKs are admitted without the domain checks, since they
/// belong to a transaction or dialog already admitted. `srv_targets` are the SRV targets of the
/// From domain (see [`authorize_peer_domain`]).
pub fn admit_request(
    request: &Message,
    identity: &PeerIdentity,
    srv_targets: &[String],
    served: &ServedDomains,
    federation: &FederationConfig,
) -> Result<(), Refusal> {
    if let Some((place, _)) = request.find_sips_uri() {
        return Err(refuse(
            400,
            format!("SIPS URI in {place} is not supported (use sip: with transport=tls)"),
        ));
    }
    let method = request
        .method()
        .cloned()
        .unwrap_or(Method::Other("".into()));
    if request.max_forwards().ok().flatten() == Some(0) && method != Method::Options {
        return Err(refuse(483, "Too Many Hops"));
    }
    if method == Method::Ack {
        return Ok(());
    }
    // The Request-URI must name a domain this edge serves (or this edge's address itself).
    match request.request_uri().map(Uri::parse) {
        Some(Ok(Uri::Sip(u))) => {
            if let Host::Domain(d) = u.host {
                if !served.contains(d) {
                    return Err(refuse(404, format!("Domain {d} is not served here")));
                }
            }
        }
        _ => return Err(refuse(416, "Request-URI must be a sip: URI")),
    }
    let from = request.from().map_err(|e| refuse(400, e.to_string()))?;
    let from_domain = sip_domain(&from.parsed_uri())
        .ok_or_else(|| {
            refuse(
                400,
                "From must be a SIP address of record (sip:user@domain)",
            )
        })?
        .to_ascii_lowercase();
    authorize_peer_domain(identity, &from_domain, srv_targets, federation)
}

/// One SRV answer (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// Orders SRV targets for trying in turn (RFC 2782 "Usage rules"): lowest priority first;
/// within one priority, repeatedly pick at random with probability proportional to weight
/// (zero-weight records first in the running sum, so they are rarely chosen while others
/// exist). `random(n)` must return a uniform integer in `0..=n`. A target of `.` means "no
/// service" and is dropped.
pub fn order_srv(
    mut records: Vec<SrvTarget>,
    mut random: impl FnMut(u32) -> u32,
) -> Vec<SrvTarget> {
    records.retain(|r| r.target != "." && !r.target.is_empty());
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].priority;
        let mut group: Vec<SrvTarget> = Vec::new();
        while records.first().is_some_and(|r| r.priority == priority) {
            group.push(records.remove(0));
        }
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = random(total).min(total);
            let mut sum = 0;
            let index = group
                .iter()
                .position(|r| {
                    sum += u32::from(r.weight);
                    sum >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(index));
        }
    }
    out
}

/// A token bucket of `rate` tokens per second, holding at most `rate`: the discovered-partner
/// rate limit (`federation.discovered_rate`) of one From domain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateBucket {
    tokens: f64,
    last: Instant,
}

impl RateBucket {
    /// A full bucket.
    pub fn full(now: Instant, rate: u32) -> RateBucket {
        RateBucket {
            tokens: f64::from(rate.max(1)),
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant, rate: u32) -> bool {
        let rate = f64::from(rate.max(1));
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Exponential backoff with jitter for reconnecting to a peer after failures: `base · 2^n`,
/// capped at `max`, then scaled by a jitter factor in `[0.5, 1.0]` so peers do not retry in
/// step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay before attempt `failures + 1`; `jitter` in `0.0..=1.0` (clamped) picks a point
    /// in the upper half of the interval.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << failures.min(20));
        let capped = exp.min(self.max);
        capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Edge, Partner};

    fn federation(default_policy: DefaultPolicy, partners: Vec<Partner>) -> FederationConfig {
        FederationConfig {
            default_policy,
            partners,
            discovered_rate: 20,
            verification_level: crate::config::VerificationLevel::Verified,
        }
    }

    #[test]
    fn peer_domain_authorization_rules() {
        let id = PeerIdentity::from_names(["sip.contoso.com", "contoso.com", "*.fabrikam.com"]);
        let open = federation(DefaultPolicy::Allow, vec![]);
        assert_eq!(
            authorize_peer_domain(&id, "contoso.com", &[], &open),
            Ok(())
        );
        assert_eq!(
            authorize_peer_domain(&id, "CONTOSO.com", &[], &open),
            Ok(())
        );
        // By the SRV target of the domain.
        assert_eq!(
            authorize_peer_domain(&id, "litware.com", &["sip.contoso.com.".into()], &open),
            Ok(())
        );
        // Wildcards never authorize.
        let refused = authorize_peer_domain(&id, "sip.fabrikam.com", &[], &open).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "403 Peer certificate is not valid for domain sip.fabrikam.com"
        );
        // A hosted partner whose configured edge is the peer.
        let hosted = federation(
            DefaultPolicy::Deny,
            vec![Partner {
                domain: "hosted.example".into(),
                policy: PartnerPolicy::Allow,
                edge: Some(Edge {
                    host: "sip.contoso.com".into(),
                    port: 5061,
                }),
                verification_level: None,
            }],
        );
        assert_eq!(
            authorize_peer_domain(&id, "hosted.example", &[], &hosted),
            Ok(())
        );
        assert_eq!(
            authorize_peer_domain(&id, "contoso.com", &[], &hosted)
                .unwrap_err()
                .to_string(),
            "403 Domain contoso.com is not a federation partner"
        );
        let blocked = federation(
            DefaultPolicy::Allow,
            vec![Partner {
                domain: "contoso.com".into(),
                policy: PartnerPolicy::Block,
                edge: None,
                verification_level: None,
            }],
        );
        assert_eq!(
            authorize_peer_domain(&id, "contoso.com", &[], &blocked)
                .unwrap_err()
                .to_string(),
            "403 Domain contoso.com is blocked"
        );
    }

    #[test]
    fn identity_from_certificates() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["sip.contoso.com".into(), "contoso.com".into()])
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = PeerIdentity::from_certificate(cert.der()).unwrap();
        // Sorted and without repeats: the same names in another order are the same identity.
        assert_eq!(id.names(), ["contoso.com", "sip.contoso.com"]);
        assert_eq!(
            id,
            PeerIdentity::from_names(["Contoso.com.", "sip.contoso.com", "contoso.com"])
        );
        let mut cn_only = rcgen::CertificateParams::default();
        cn_only
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Edge.Litware.com");
        let cert = cn_only.self_signed(&key).unwrap();
        assert_eq!(
            PeerIdentity::from_certificate(cert.der()).unwrap().names(),
            ["edge.litware.com"]
        );
        assert!(PeerIdentity::from_certificate(b"junk").is_err());
    }

    fn request(method: &str, ruri: &str, from: &str, extra: &str) -> Message {
        let raw = format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <{from}>;tag=1\r\nTo: <{ruri}>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn admission_follows_the_profile() {
        let id = PeerIdentity::from_names(["sip.contoso.com", "contoso.com"]);
        let served = ServedDomains {
            local_domains: vec!["example.org".into()],
            public_fqdn: "sip.example.org".into(),
        };
        let open = federation(DefaultPolicy::Allow, vec![]);
        let admit =
            |m: &Message| admit_request(m, &id, &[], &served, &open).map_err(|r| r.to_string());
        let ok = "sip:alice@example.org";
        let joe = "sip:joe@contoso.com";
        assert_eq!(admit(&request("MESSAGE", ok, joe, "")), Ok(()));
        assert_eq!(
            admit(&request("OPTIONS", "sip:sip.example.org", joe, "")),
            Ok(())
        );
        assert_eq!(
            admit(&request("OPTIONS", "sip:192.0.2.7:5061", joe, "")),
            Ok(())
        );
        let cases = [
            (
                request("MESSAGE", ok, "sips:joe@contoso.com", ""),
                "400 SIPS URI in From is not supported (use sip: with transport=tls)",
            ),
            (
                request("MESSAGE", ok, joe, "").with_max_forwards_zero(),
                "483 Too Many Hops",
            ),
            (
                request("MESSAGE", "sip:bob@fabrikam.com", joe, ""),
                "404 Domain fabrikam.com is not served here",
            ),
            (
                request("MESSAGE", "tel:+15551234", joe, ""),
                "416 Request-URI must be a sip: URI",
            ),
            (
                request("MESSAGE", ok, "tel:+15551234", ""),
                "400 From must be a SIP address of record (sip:user@domain)",
            ),
            (
                request("MESSAGE", ok, "sip:mallory@fabrikam.com", ""),
                "403 Peer certificate is not valid for domain fabrikam.com",
            ),
        ];
        for (m, expected) in cases {
            assert_eq!(admit(&m), Err(expected.to_owned()));
        }
        // ACK skips the domain checks; OPTIONS may arrive with Max-Forwards 0.
        assert_eq!(
            admit(&request("ACK", "sip:bob@fabrikam.com", joe, "")),
            Ok(())
        );
        assert_eq!(
            admit(&request("OPTIONS", ok, joe, "").with_max_forwards_zero()),
            Ok(())
        );
    }

    trait ZeroHops {
        fn with_max_forwards_zero(self) -> Self;
    }

    impl ZeroHops for Message {
        fn with_max_forwards_zero(mut self) -> Self {
            self.set_header("Max-Forwards", "0");
            self
        }
    }

    fn srv(priority: u16, weight: u16, target: &str) -> SrvTarget {
        SrvTarget {
            priority,
            weight,
            port: 5061,
            target: target.into(),
        }
    }

    #[test]
    fn srv_order_by_priority_then_weight() {
        let records = vec![
            srv(20, 0, "backup.contoso.com"),
            srv(10, 60, "a.contoso.com"),
            srv(10, 40, "b.contoso.com"),
            srv(5, 0, "."),
        ];
        // random always returns the top of the range: the last record of the running sum wins.
        let hi: Vec<String> = order_srv(records.clone(), |n| n)
            .into_iter()
            .map(|r| r.target)
            .collect();
        assert_eq!(hi, ["b.contoso.com", "a.contoso.com", "backup.contoso.com"]);
        // random returns 1: the first record with a running sum ≥ 1.
        let lo: Vec<String> = order_srv(records, |n| n.min(1))
            .into_iter()
            .map(|r| r.target)
            .collect();
        assert_eq!(lo, ["a.contoso.com", "b.contoso.com", "backup.contoso.com"]);
        // Weighted choice is proportional: over all draws 0..=100, a (60) wins 60 times.
        let mut a_first = 0;
        for draw in 0..=100u32 {
            let first = order_srv(vec![srv(10, 60, "a"), srv(10, 40, "b")], |n| draw.min(n));
            if first[0].target == "a" {
                a_first += 1;
            }
        }
        assert_eq!(a_first, 61); // draws 0..=60 (0 picks the first record too)
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(500));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(250));
        assert_eq!(b.delay(3, 1.0), Duration::from_secs(4));
        assert_eq!(b.delay(30, 1.0), Duration::from_secs(300));
        assert_eq!(b.delay(u32::MAX, 2.0), Duration::from_secs(300));
    }
}
