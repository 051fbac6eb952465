//! `lcs-bridge doctor`: the online checks of a deployment, the companion of `check-config`
//! (which checks files offline). Each check is one [`Check`]: passed, a warning, or failed with
//! the fix.
//!
//! This file holds the judgements, without I/O: given what a lookup or a connection found
//! (and `now` where time matters), what to tell the administrator. [`probe`] does the lookups
//! and connections with the bridge's own parts (the edge's DNS discovery and TLS
//! configurations, the component link's handshake, the SIP builder and framer), so doctor
//! checks what the bridge itself would do. Printing is the command line's (`src/main.rs`).
//!
//! What is checked (docs/operations.md "Checking a deployment: doctor"):
//!
//! - each local domain's `_sipfederationtls._tcp` SRV record names `sip.public_fqdn` and the
//!   port partners will use (the profile, "Server discovery"; RFC 2782);
//! - `sip.public_fqdn` resolves to an address of this host (behind NAT that cannot be proven:
//!   a warning);
//! - the edge's certificate chain validates as a partner would validate it (WebPKI against
//!   the system's roots: the name `sip.public_fqdn` and serverAuth for the connections
//!   partners open, clientAuth for those the bridge opens, RFC 5280 §4.2.1.12), and against
//!   `sip.ca_bundle` when set; fewer than [`EXPIRY_WARNING_DAYS`] days left is a warning;
//! - the component handshake (XEP-0114 §3) with the configured secret, per component domain;
//! - for each partner asked about: its edge (SRV or the static `edge`), mutual TLS with the
//!   bridge's client certificate, the partner's certificate speaking for its domain
//!   (RFC 5922 §7), and an OPTIONS request's answer (with Microsoft's `ms-diagnostics`).

pub mod probe;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, Error as TlsError, RootCertStore};

use crate::config::FederationConfig;
use crate::core::names::one_line;
use crate::edge::identity::PeerIdentity;
use crate::edge::srv::SrvTarget;
use crate::sip::builder::RequestSpec;
use crate::sip::diagnostics::Diagnostics;
use crate::sip::message::{Message, Method};

/// A certificate with fewer days than this left is a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 30;
/// Most characters of a peer's text (reason phrase, diagnostics) shown.
const PEER_TEXT_CHARS: usize = 200;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, or cannot be proven from here; worth a look.
    Warn,
    Fail,
}

/// One line of doctor's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    /// What was checked (`SRV _sipfederationtls._tcp.example.org`).
    pub what: String,
    /// What was found.
    pub detail: String,
    /// What to do, for a warning or a failure.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(what: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            status: Status::Ok,
            what: what.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            status: Status::Warn,
            what: what.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            status: Status::Fail,
            what: what.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Check {
    /// `✓ what: detail`, `⚠ …` or `✗ …`, and the fix on a second line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Status::Ok => "✓",
            Status::Warn => "⚠",
            Status::Fail => "✗",
        };
        write!(f, "{mark} {}: {}", self.what, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n    fix: {fix}")?;
        }
        Ok(())
    }
}

/// Whether any check failed (the exit status).
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

/// A peer's text, cleaned as the bridge cleans one-line texts (no controls, bounded).
fn peer_text(raw: &str) -> String {
    one_line(raw, PEER_TEXT_CHARS).unwrap_or_default()
}

// ------------------------------------------------------------------ DNS

/// The SRV record of local domain `domain` (`_sipfederationtls._tcp.<domain>`): it must name
/// `public_fqdn`; a port other than `listen_port` is a warning (a port forward may map it).
pub fn local_srv(
    domain: &str,
    lookup: Result<&[SrvTarget], String>,
    public_fqdn: &str,
    listen_port: u16,
) -> Check {
    let what = format!("SRV _sipfederationtls._tcp.{domain}");
    let record =
        format!("_sipfederationtls._tcp.{domain}. IN SRV 10 0 {listen_port} {public_fqdn}.");
    let targets = match lookup {
        Ok(t) => t,
        Err(reason) => {
            return Check::fail(
                what,
                reason,
                format!("publish {record} (partners find this edge through it)"),
            );
        }
    };
    let listed = targets
        .iter()
        .map(|t| format!("{}:{} (priority {})", t.target, t.port, t.priority))
        .collect::<Vec<_>>()
        .join(", ");
    let named = |t: &&SrvTarget| t.target.eq_ignore_ascii_case(public_fqdn);
    let Some(ours) = targets
        .iter()
        .filter(named)
        .find(|t| t.port == listen_port)
        .or_else(|| targets.iter().find(named))
    else {
        return Check::fail(
            what,
            format!("points at {listed}, not at sip.public_fqdn {public_fqdn}"),
            format!(
                "make the record {record}, or set sip.public_fqdn to the name partners reach \
                 (and have it in the certificate)"
            ),
        );
    };
    if ours.port != listen_port {
        return Check::warn(
            what,
            format!(
                "points at {listed}: partners will connect to port {}, the edge listens on \
                 {listen_port} (sip.listen)",
                ours.port
            ),
            format!(
                "publish port {listen_port}, or make sure port {} is forwarded to this host's \
                 port {listen_port}",
                ours.port
            ),
        );
    }
    Check::ok(what, format!("→ {listed}"))
}

/// Where one address of `sip.public_fqdn` leads, as the probe found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locality {
    /// An address of one of this host's interfaces.
    Local,
    /// Not this host's; `source` is the address this host uses toward it (its own address on
    /// the way out), when known.
    Remote { source: Option<IpAddr> },
}

/// Whether `ip` can be reached from the Internet (not private, loopback, link-local, shared
/// CGNAT space or unique-local).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// `sip.public_fqdn`'s A/AAAA records against this host: an address of this host passes (the
/// one `sip.listen` binds when it names one); an address elsewhere while this host's own
/// address toward it is private is the NAT case, which cannot be proven from here (warning);
/// an address elsewhere while this host has a public address of its own fails.
pub fn public_fqdn_address(
    public_fqdn: &str,
    lookup: Result<&[(IpAddr, Locality)], String>,
    listen: IpAddr,
) -> Check {
    let what = format!("address of {public_fqdn} (sip.public_fqdn)");
    let found = match lookup {
        Ok(f) => f,
        Err(reason) => {
            return Check::fail(
                what,
                reason,
                format!(
                    "publish an A (and/or AAAA) record for {public_fqdn} pointing at this host"
                ),
            );
        }
    };
    let list = found
        .iter()
        .map(|(ip, _)| ip.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let usable = |ip: &IpAddr| listen.is_unspecified() || *ip == listen;
    let local: Vec<&IpAddr> = found
        .iter()
        .filter(|(_, l)| *l == Locality::Local)
        .map(|(ip, _)| ip)
        .collect();
    if local.iter().any(|ip| usable(ip)) {
        if local.len() == found.len() {
            return Check::ok(what, format!("{list}: this host"));
        }
        return Check::warn(
            what,
            format!("{list}: only some are this host's ({})", join(&local)),
            format!("remove the addresses that are not this edge's from {public_fqdn}"),
        );
    }
    if !local.is_empty() {
        return Check::fail(
            what,
            format!("{list}: this host, but the edge listens only on {listen} (sip.listen)"),
            format!("point {public_fqdn} at {listen}, or listen on 0.0.0.0"),
        );
    }
    let behind_nat = found.iter().all(|(_, l)| match l {
        Locality::Remote { source: Some(s) } => !is_global(*s),
        _ => false,
    });
    let sources: Vec<IpAddr> = found
        .iter()
        .filter_map(|(_, l)| match l {
            Locality::Remote { source } => *source,
            Locality::Local => None,
        })
        .collect();
    if behind_nat {
        Check::warn(
            what,
            format!(
                "{list}: not an address of this host, whose own address is {} (private: behind \
                 NAT, which cannot be verified from here)",
                join(&sources.iter().collect::<Vec<_>>())
            ),
            format!(
                "make sure the NAT forwards the federation port (the SRV record's) of {list} \
                 to this host's sip.listen port"
            ),
        )
    } else {
        Check::fail(
            what,
            format!(
                "{list}: not an address of this host{}",
                if sources.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (its own address is {})",
                        join(&sources.iter().collect::<Vec<_>>())
                    )
                }
            ),
            format!(
                "point {public_fqdn} at this host's public address; if a load balancer or port \
                 forward in front of this host owns that address, check it there"
            ),
        )
    }
}

fn join(ips: &[&IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

// ------------------------------------------------------------------ certificates

/// The edge's certificates, as read from the configuration.
pub struct EdgeCertificates<'a> {
    /// `sip.cert_chain`, leaf first.
    pub server: &'a [CertificateDer<'static>],
    /// `sip.client_cert_chain` when set.
    pub client: Option<&'a [CertificateDer<'static>]>,
    /// `sip.public_fqdn`.
    pub public_fqdn: &'a str,
}

/// The trust anchors the chains are checked against.
pub struct Anchors {
    /// The system's roots, as partners on public PKI have them; `Err` when none could be read.
    pub system: Result<Vec<CertificateDer<'static>>, String>,
    /// `sip.ca_bundle`'s certificates, when set.
    pub ca_bundle: Option<Vec<CertificateDer<'static>>>,
    /// `sip.use_system_roots`: false with a CA bundle suggests a private federation.
    pub use_system_roots: bool,
}

/// Why a chain does not validate, in words.
fn describe_cert_error(e: &TlsError) -> String {
    match e {
        TlsError::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "not issued by a trusted CA (unknown CA; or an \
                                                intermediate is missing from the chain)"
                .into(),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".into(),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not valid yet".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "does not name sip.public_fqdn".into()
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "lacks the extended key usage".into()
            }
            CertificateError::BadSignature => "a signature in the chain does not verify".into(),
            other => format!("{other:?}"),
        },
        other => other.to_string(),
    }
}

fn roots(anchors: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(anchors.iter().cloned());
    if added == 0 {
        return Err("no usable trust anchor".into());
    }
    Ok(Arc::new(store))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `chain` as a partner's TLS client verifies the server it dialled: serverAuth, naming `name`.
fn verify_as_server(
    chain: &[CertificateDer<'static>],
    name: &str,
    anchors: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<(), String> {
    let (leaf, intermediates) = chain.split_first().ok_or("empty chain")?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(anchors)?, provider())
        .build()
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], now)
        .map(|_| ())
        .map_err(|e| describe_cert_error(&e))
}

/// `chain` as a partner's TLS server verifies a connecting client: clientAuth.
fn verify_as_client(
    chain: &[CertificateDer<'static>],
    anchors: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<(), String> {
    let (leaf, intermediates) = chain.split_first().ok_or("empty chain")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(anchors)?, provider())
        .build()
        .map_err(|e| e.to_string())?;
    verifier
        .verify_client_cert(leaf, intermediates, now)
        .map(|_| ())
        .map_err(|e| describe_cert_error(&e))
}

/// The leaf's notAfter, Unix seconds.
fn not_after(chain: &[CertificateDer<'static>]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The certificate checks: each chain against the system roots as a partner validates it,
/// against `sip.ca_bundle` too when set, and each leaf's time left.
pub fn certificates(certs: &EdgeCertificates<'_>, anchors: &Anchors, now: UnixTime) -> Vec<Check> {
    let mut out = Vec::new();
    let fqdn = certs.public_fqdn;
    let (client_chain, client_key) = match certs.client {
        Some(c) => (c, "sip.client_cert_chain"),
        None => (certs.server, "sip.cert_chain"),
    };
    // (what, key, verify)
    type Verify<'v> = Box<dyn Fn(&[CertificateDer<'static>]) -> Result<(), String> + 'v>;
    let roles: [(String, &str, Verify<'_>); 2] = [
        (
            format!("certificate for partners dialling in (sip.cert_chain: serverAuth, {fqdn})"),
            "sip.cert_chain",
            Box::new(|a| verify_as_server(certs.server, fqdn, a, now)),
        ),
        (
            format!("certificate for connections the bridge opens ({client_key}: clientAuth)"),
            client_key,
            Box::new(|a| verify_as_client(client_chain, a, now)),
        ),
    ];
    let private_ok = |verify: &Verify<'_>| {
        !anchors.use_system_roots
            && anchors
                .ca_bundle
                .as_ref()
                .is_some_and(|b| verify(b).is_ok())
    };
    for (what, key, verify) in &roles {
        match &anchors.system {
            Err(reason) => out.push(Check::warn(
                format!("{what}, system roots"),
                format!("cannot check: {reason}"),
                "install the system's CA certificates (ca-certificates), or point SSL_CERT_FILE \
                 at a PEM bundle",
            )),
            Ok(system) => match verify(system) {
                Ok(()) => out.push(Check::ok(
                    format!("{what}, system roots"),
                    "validates as a partner would validate it",
                )),
                Err(reason) if private_ok(verify) => out.push(Check::warn(
                    format!("{what}, system roots"),
                    format!("{reason}; it validates against sip.ca_bundle (a private CA)"),
                    "partners on public PKI (Microsoft 365, most Skype for Business edges) will \
                     refuse it; fine only if every partner trusts the CA in sip.ca_bundle",
                )),
                Err(reason) => out.push(Check::fail(
                    format!("{what}, system roots"),
                    reason,
                    format!(
                        "use a certificate from a public CA with the needed extended key usage \
                         and name, and put its intermediates after the leaf in {key}"
                    ),
                )),
            },
        }
        if let Some(bundle) = &anchors.ca_bundle {
            match verify(bundle) {
                Ok(()) => out.push(Check::ok(
                    format!("{what}, sip.ca_bundle"),
                    "validates against the CAs in sip.ca_bundle",
                )),
                Err(reason) => out.push(Check::warn(
                    format!("{what}, sip.ca_bundle"),
                    reason,
                    "partners that trust only the CAs in sip.ca_bundle would refuse it (not a \
                     problem when they use public roots)",
                )),
            }
        }
    }
    let mut leaves = vec![("sip.cert_chain", certs.server)];
    if let Some(c) = certs.client {
        leaves.push(("sip.client_cert_chain", c));
    }
    for (key, chain) in leaves {
        let what = format!("{key} expiry");
        let Some(end) = not_after(chain) else {
            out.push(Check::fail(
                what,
                "the leaf certificate does not parse",
                format!("put a PEM certificate chain, leaf first, in {key}"),
            ));
            continue;
        };
        let secs = end - now.as_secs() as i64;
        let days = secs.div_euclid(86_400);
        let date = crate::config::format_utc(end);
        if secs <= 0 {
            out.push(Check::fail(
                what,
                format!("expired on {date}"),
                format!("renew the certificate in {key}"),
            ));
        } else if days < EXPIRY_WARNING_DAYS {
            out.push(Check::warn(
                what,
                format!("expires on {date}, in {days} days"),
                format!("renew the certificate in {key}, then send SIGHUP"),
            ));
        } else {
            out.push(Check::ok(
                what,
                format!("expires on {date}, in {days} days"),
            ));
        }
    }
    out
}

// ------------------------------------------------------------------ component

/// What the component handshake came to (`crate::xmpp::link::probe`, mapped by [`probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    Accepted,
    /// The server refused it: its stream error, explained.
    Refused(String),
    /// No stream: the server is unreachable or broke the stream.
    Unreachable(String),
}

/// The component handshake of `domain` at `addr` (`host:port`).
pub fn component(domain: &str, addr: &str, outcome: &Handshake) -> Check {
    let what = format!("component {domain} at {addr}");
    match outcome {
        Handshake::Accepted => Check::ok(what, "handshake accepted (XEP-0114)"),
        // Prosody answers `conflict` only once the secret checked out (its default
        // `component_conflict_resolve = "kick_new"`); the running bridge holds the domain.
        Handshake::Refused(reason) if reason.starts_with("conflict") => Check::warn(
            what,
            format!(
                "the server accepted no second stream: {}",
                peer_text(reason)
            ),
            "nothing to do while the bridge runs (Prosody checks the secret before it answers \
             conflict); otherwise find the other component connected for this domain",
        ),
        Handshake::Refused(reason) => Check::fail(
            what,
            format!("handshake refused: {}", peer_text(reason)),
            format!(
                "use the secret the XMPP server configures for component {domain} in \
                 xmpp.secret (or xmpp.secret_file), and check that the server serves {domain} \
                 as an external component"
            ),
        ),
        Handshake::Unreachable(reason) => Check::fail(
            what,
            peer_text(reason),
            "start the XMPP server, and make xmpp.host/xmpp.port name its component port",
        ),
    }
}

// ------------------------------------------------------------------ partners

/// A partner's federation policy: doctor asks about a partner the bridge would refuse.
pub fn partner_policy(domain: &str, federation: &FederationConfig) -> Option<Check> {
    if federation.is_allowed(domain) {
        return None;
    }
    Some(Check::fail(
        format!("partner {domain}"),
        "refused by the [federation] policy (blocked, or not listed while default_policy is \
         deny)",
        format!("add [[federation.partners]] domain = \"{domain}\" with policy = \"allow\""),
    ))
}

/// How the partner's edge was found: its SRV record, or the static route.
pub fn partner_discovery(
    domain: &str,
    lookup: Result<&[SrvTarget], String>,
    static_edge: Option<&str>,
) -> Check {
    let what = format!("partner {domain}: edge");
    if let Some(edge) = static_edge {
        return Check::ok(what, format!("{edge} (static, federation.partners)"));
    }
    match lookup {
        Ok(targets) => Check::ok(
            what,
            format!(
                "SRV _sipfederationtls._tcp.{domain} → {}",
                targets
                    .iter()
                    .map(|t| format!("{}:{} (priority {})", t.target, t.port, t.priority))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(reason) => Check::fail(
            what,
            reason,
            format!(
                "ask {domain} to publish _sipfederationtls._tcp.{domain}, or set its edge in \
                 [[federation.partners]] edge = \"host:5061\""
            ),
        ),
    }
}

/// What happened on one connection to a partner's edge.
#[derive(Debug)]
pub enum Reached {
    /// The edge's name has no address, or TCP failed on every address.
    Unreachable(String),
    /// The TLS handshake failed (reason from `edge::tls::describe_handshake_error`).
    Handshake(String),
    /// The handshake completed, then the partner ended the session before answering (with TLS
    /// 1.3 a refused client certificate shows here, as the partner's alert).
    Dropped {
        identity: PeerIdentity,
        reason: String,
    },
    /// No answer to OPTIONS in time.
    NoAnswer {
        identity: PeerIdentity,
        waited_secs: u64,
    },
    /// The final response to OPTIONS.
    Answered {
        identity: PeerIdentity,
        response: Message,
    },
}

/// The checks of one of the partner's edges (`edge` is `host:port`), from what the connection
/// found. `srv_targets` are the partner's SRV targets (a certificate naming one speaks for the
/// domain).
pub fn partner_edge(
    domain: &str,
    edge: &str,
    srv_targets: &[String],
    federation: &FederationConfig,
    reached: &Reached,
) -> Vec<Check> {
    let tls_what = format!("partner {domain} at {edge}: mutual TLS");
    let identity = match reached {
        Reached::Unreachable(reason) => {
            return vec![Check::fail(
                format!("partner {domain} at {edge}: connect"),
                peer_text(reason),
                format!(
                    "check that {edge} is {domain}'s federation edge and that this host may \
                     reach it (firewall: outbound TCP)"
                ),
            )];
        }
        Reached::Handshake(reason) => {
            return vec![Check::fail(
                tls_what,
                peer_text(reason),
                "the partner's certificate must chain to a CA in sip.ca_bundle (or the system \
                 roots with sip.use_system_roots) and name the edge dialled; the partner must \
                 accept the bridge's client certificate",
            )];
        }
        Reached::Dropped { identity, .. }
        | Reached::NoAnswer { identity, .. }
        | Reached::Answered { identity, .. } => identity,
    };
    let mut out = Vec::new();
    if let Reached::Dropped { reason, .. } = reached {
        out.push(Check::fail(
            tls_what,
            format!(
                "handshake done, then the partner ended the session: {}",
                peer_text(reason)
            ),
            format!(
                "the partner does not accept the bridge's client certificate \
                 (sip.client_cert_chain, else sip.cert_chain): it needs clientAuth and a CA \
                 {domain} trusts; or {domain} does not federate with this domain"
            ),
        ));
    } else {
        out.push(Check::ok(
            tls_what,
            format!("certificate names {}", names(identity)),
        ));
    }
    let id_what = format!("partner {domain} at {edge}: certificate identity");
    if identity.covers(domain, srv_targets, federation) {
        out.push(Check::ok(id_what, format!("speaks for {domain}")));
    } else {
        out.push(Check::fail(
            id_what,
            format!(
                "names {}, which is neither {domain} nor its SRV target nor its configured edge: \
                 the bridge would refuse its requests",
                names(identity)
            ),
            format!(
                "{domain}'s certificate must name the domain or its SRV target (RFC 5922 §7); \
                 a hosted partner's edge host can be set in [[federation.partners]] edge"
            ),
        ));
    }
    let opt_what = format!("partner {domain} at {edge}: OPTIONS");
    match reached {
        Reached::NoAnswer { waited_secs, .. } => out.push(Check::fail(
            opt_what,
            format!("no answer within {waited_secs} s"),
            format!("ask {domain}'s administrators whether their edge sees this bridge's requests"),
        )),
        Reached::Answered { response, .. } => out.push(options_answer(opt_what, response)),
        _ => {}
    }
    out
}

/// A peer certificate's names, cleaned for the terminal.
fn names(identity: &PeerIdentity) -> String {
    if identity.names().is_empty() {
        return "no DNS name".to_owned();
    }
    identity
        .names()
        .iter()
        .map(|n| peer_text(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The OPTIONS response: 2xx passes; anything else fails with its status and diagnostics.
fn options_answer(what: String, response: &Message) -> Check {
    let status = response.status().unwrap_or(0);
    let mut detail = format!(
        "{status} {}",
        peer_text(response.reason().unwrap_or_default())
    );
    if let Some(d) = Diagnostics::of(response) {
        detail.push_str(&format!("; {} {}", d.header, d.code));
        if let Some(r) = &d.reason {
            detail.push_str(&format!(" {:?}", peer_text(r)));
        }
        if let Some(s) = &d.source {
            detail.push_str(&format!(" from {}", peer_text(s)));
        }
    }
    if (200..300).contains(&status) {
        Check::ok(what, detail)
    } else {
        Check::fail(
            what,
            detail,
            match status {
                403 => "the partner refuses this domain: ask it to allow federation with your \
                        domain (Microsoft: an allowed domain or partner entry)"
                    .to_owned(),
                _ => "ask the partner's administrators what the status means for them (the \
                      ms-diagnostics code names the reason on Microsoft edges)"
                    .to_owned(),
            },
        )
    }
}

/// The identifiers of one OPTIONS request (random; the caller draws them).
pub struct RequestIds<'a> {
    pub branch: &'a str,
    pub tag: &'a str,
    pub call_id: &'a str,
}

/// The OPTIONS request doctor sends to a partner's edge: from the first local domain, to the
/// partner's domain, through this edge (Via and Contact `sip.public_fqdn` and the listen port).
pub fn options_request(
    local_domain: &str,
    partner: &str,
    public_fqdn: &str,
    port: u16,
    ids: &RequestIds<'_>,
) -> Message {
    let sent_by = format!("{public_fqdn}:{port}");
    let from = format!("sip:{local_domain}");
    let to = format!("sip:{partner}");
    let contact = format!("sip:{public_fqdn}:{port};transport=tls");
    let branch = format!("z9hG4bK{}", ids.branch);
    let mut m = RequestSpec {
        method: Method::Options,
        request_uri: &to,
        via_sent_by: &sent_by,
        branch: &branch,
        from_display: None,
        from_uri: &from,
        from_tag: ids.tag,
        to_display: None,
        to_uri: &to,
        to_tag: None,
        call_id: ids.call_id,
        cseq: 1,
        contact: Some(&contact),
        route: &[],
    }
    .build();
    m.push_header("Accept", "application/sdp");
    m
}

#[cfg(test)]
mod tests;
