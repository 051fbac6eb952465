//! Request admission at the edge, no I/O (the TLS edge's sans-IO core calls these):
//!
//! - **Peer domain authorization** ([`authorize_peer_domain`]): the From domain must be one
//!   the connection's certificate identity speaks for ([`PeerIdentity::covers`], RFC 5922 §7).
//!   Blocked partners, and unlisted domains under `default_policy = "deny"`, are refused with
//!   403.
//! - **Request admission** ([`admit_request`]): the profile's rules for every request from a
//!   peer — SIPS anywhere → 400, Max-Forwards 0 → 483, a Request-URI domain this bridge does
//!   not serve → 404 (never an open relay), a From that is not a SIP AOR → 400, a From domain
//!   the peer's certificate does not cover → 403.
//! - **Discovered-partner rate** ([`RateBucket`], `federation.discovered_rate`): a token
//!   bucket per From domain.
//! - **Extensions a request requires** ([`check_require`], RFC 3261 §8.2.2.3): every option
//!   tag in `Require` must be one of [`UNDERSTOOD_REQUIRE`]; otherwise `420 Bad Extension` with
//!   `Unsupported` listing exactly the tags not understood. `Proxy-Require` is for proxies
//!   (RFC 3261 §20.29) and is not read by a user agent server.

use std::fmt;
use std::time::Instant;

use crate::config::{DefaultPolicy, FederationConfig, PartnerPolicy};
use crate::edge::identity::PeerIdentity;
use crate::sip::message::{Message, Method};
use crate::sip::status::{self, Reject};
use crate::sip::uri::{Host, Uri};

/// Why a request is refused, with the SIP status to answer (as a [`Reject`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl From<Refusal> for Reject {
    fn from(r: Refusal) -> Reject {
        Reject::new(r.status).reason(r.reason)
    }
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
            return Err(refuse(
                status::FORBIDDEN,
                format!("Domain {domain} is blocked"),
            ));
        }
        None if federation.default_policy == DefaultPolicy::Deny => {
            return Err(refuse(
                status::FORBIDDEN,
                format!("Domain {domain} is not a federation partner"),
            ));
        }
        _ => {}
    }
    if identity.covers(domain, srv_targets, federation) {
        Ok(())
    } else {
        Err(refuse(
            status::FORBIDDEN,
            format!("Peer certificate is not valid for domain {domain}"),
        ))
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
            status::BAD_REQUEST,
            format!("SIPS URI in {place} is not supported (use sip: with transport=tls)"),
        ));
    }
    let method = request
        .method()
        .cloned()
        .unwrap_or(Method::Other("".into()));
    if request.max_forwards().ok().flatten() == Some(0) && method != Method::Options {
        return Err(refuse(status::TOO_MANY_HOPS, "Too Many Hops"));
    }
    if method == Method::Ack {
        return Ok(());
    }
    // The Request-URI must name a domain this edge serves (or this edge's address itself).
    match request.request_uri().map(Uri::parse) {
        Some(Ok(Uri::Sip(u))) => {
            if let Host::Domain(d) = u.host {
                if !served.contains(d) {
                    return Err(refuse(
                        status::NOT_FOUND,
                        format!("Domain {d} is not served here"),
                    ));
                }
            }
        }
        _ => {
            return Err(refuse(
                status::UNSUPPORTED_URI_SCHEME,
                "Request-URI must be a sip: URI",
            ));
        }
    }
    let from = request
        .from()
        .map_err(|e| refuse(status::BAD_REQUEST, e.to_string()))?;
    let from_domain = sip_domain(&from.parsed_uri())
        .ok_or_else(|| {
            refuse(
                status::BAD_REQUEST,
                "From must be a SIP address of record (sip:user@domain)",
            )
        })?
        .to_ascii_lowercase();
    authorize_peer_domain(identity, &from_domain, srv_targets, federation)
}

/// The option tags the bridge understands when a request *requires* them (RFC 3261 §8.2.2.3,
/// §20.32): the one place that list is kept. It is empty: none of the extensions the bridge
/// implements is one a peer may require of it (`ms-benotify` and `ms-text-format`, which it
/// supports, are only ever offered in `Supported`). Lync's multiparty chat
/// (`com.microsoft.rtc-multiparty`), its batched category subscription (`adhoclist`,
/// `categoryList`) and the event list of a batched NOTIFY (`eventlist`) are not understood.
pub const UNDERSTOOD_REQUIRE: &[&str] = &[];

/// Whether `request`'s `Require` names only understood option tags (RFC 3261 §8.2.2.3):
/// otherwise the `420 Bad Extension` to answer, whose `Unsupported` lists exactly the tags not
/// understood (each once, in the request's order, as the peer spelled them). A tag that is not
/// a token (RFC 3261 §25.1 `option-tag`) makes the header malformed: `400`.
///
/// ACK and CANCEL are never checked (RFC 3261 §8.2.2.3: Require "MUST be ignored" in them), nor
/// BENOTIFY, which is never answered ([MS-SIP] §3.5); the caller passes every other request.
pub fn check_require(request: &Message) -> Result<(), Reject> {
    if matches!(
        request.method(),
        Some(Method::Ack) | Some(Method::Cancel) | Some(Method::Benotify)
    ) {
        return Ok(());
    }
    let mut unknown: Vec<&str> = Vec::new();
    for tag in request.require() {
        if !tag.bytes().all(crate::sip::params::is_token_byte) {
            return Err(Reject::new(status::BAD_REQUEST)
                .reason("Malformed Require header: an option tag is not a token"));
        }
        let understood = UNDERSTOOD_REQUIRE
            .iter()
            .any(|t| t.eq_ignore_ascii_case(tag));
        if !understood && !unknown.iter().any(|t| t.eq_ignore_ascii_case(tag)) {
            unknown.push(tag);
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Reject::new(status::BAD_EXTENSION).header("Unsupported", unknown.join(", ")))
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
}
