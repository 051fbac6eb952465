//! The I/O of `lcs-bridge doctor`: DNS lookups through the edge's [`Discovery`] (honouring
//! `sip.dns_servers`), the component handshake through the link's [`link::probe`], and
//! connections to partners' edges with the edge's own client TLS configuration
//! ([`TlsConfigs::load`]), an OPTIONS request from the SIP builder and the SIP framer. What to
//! make of each result is decided in the parent module, without I/O.

#![allow(clippy::disallowed_methods)] // I/O: the certificate checks read the clock

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{
    Anchors, Check, EdgeCertificates, Handshake, Locality, Reached, RequestIds, certificates,
    component, local_srv, options_request, partner_discovery, partner_edge, partner_policy,
    public_fqdn_address,
};
use crate::config::Config;
use crate::config::tls::read_certificates;
use crate::edge::dns::{Discovery, DiscoveryError};
use crate::edge::identity::PeerIdentity;
use crate::edge::srv::SrvTarget;
use crate::edge::tls::{TlsConfigs, describe_handshake_error};
use crate::random::SplitMix;
use crate::sip::framing::{Frame, Framer};
use crate::xmpp::link::{self, LinkError, LinkSettings};

/// Limit for one DNS lookup (the resolver retries within it).
const LOOKUP_DEADLINE: Duration = Duration::from_secs(10);
/// Most of a partner's edges tried.
const MAX_PARTNER_EDGES: usize = 4;

/// What doctor is asked to check besides the configuration's own parts.
pub struct Options {
    /// `--partner DOMAIN`, in order.
    pub partners: Vec<String>,
    /// The system's trust anchors (the command line reads them), or why there are none.
    pub system_roots: Result<Vec<CertificateDer<'static>>, String>,
}

/// Runs every check in order, handing each to `emit` as soon as it is known, and returns them
/// all.
pub async fn run(cfg: &Config, options: &Options, mut emit: impl FnMut(&Check)) -> Vec<Check> {
    let mut out = Vec::new();
    let mut push = |c: Check, out: &mut Vec<Check>| {
        emit(&c);
        out.push(c);
    };
    let discovery = match Discovery::new(&cfg.sip.dns_servers) {
        Ok(d) => Some(d),
        Err(e) => {
            push(
                Check::fail(
                    "DNS resolver",
                    e.to_string(),
                    "fix /etc/resolv.conf or set sip.dns_servers",
                ),
                &mut out,
            );
            None
        }
    };
    if let Some(discovery) = &discovery {
        for check in dns_checks(cfg, discovery).await {
            push(check, &mut out);
        }
    }
    for check in certificate_checks(cfg, options) {
        push(check, &mut out);
    }
    let settings = LinkSettings::from_config(&cfg.xmpp);
    for domain in &cfg.xmpp.component_domains {
        let outcome = match link::probe(&settings, domain).await {
            Ok(()) => Handshake::Accepted,
            Err(LinkError::Auth { reason, .. }) => Handshake::Refused(reason),
            Err(LinkError::Connect { reason, .. }) => Handshake::Unreachable(reason),
            Err(other) => Handshake::Unreachable(other.to_string()),
        };
        push(
            component(domain, &settings.server_addr(), &outcome),
            &mut out,
        );
    }
    if options.partners.is_empty() {
        return out;
    }
    let tls = match TlsConfigs::load(&cfg.sip) {
        Ok(t) => t,
        Err(reason) => {
            push(
                Check::fail(
                    "the edge's TLS configuration",
                    reason,
                    "fix the [sip] certificate keys (check-config names the problem)",
                ),
                &mut out,
            );
            return out;
        }
    };
    let Some(discovery) = &discovery else {
        return out;
    };
    for domain in &options.partners {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        for check in partner_checks(cfg, discovery, &tls, &domain).await {
            push(check, &mut out);
        }
    }
    out
}

async fn lookup_srv(discovery: &Discovery, domain: &str) -> Result<Vec<SrvTarget>, String> {
    match tokio::time::timeout(LOOKUP_DEADLINE, discovery.edge_targets(domain)).await {
        Ok(Ok(r)) => Ok(r.targets),
        Ok(Err(e @ DiscoveryError::NoSrv { .. })) => Err(e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no DNS answer within {} s",
            LOOKUP_DEADLINE.as_secs()
        )),
    }
}

async fn lookup_addresses(
    discovery: &Discovery,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, String> {
    match tokio::time::timeout(LOOKUP_DEADLINE, discovery.addresses(host, port)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "no DNS answer within {} s",
            LOOKUP_DEADLINE.as_secs()
        )),
    }
}

async fn dns_checks(cfg: &Config, discovery: &Discovery) -> Vec<Check> {
    let mut out = Vec::new();
    let fqdn = &cfg.sip.public_fqdn;
    let port = cfg.sip.listen.port();
    for domain in &cfg.xmpp.local_domains {
        let found = lookup_srv(discovery, domain).await;
        out.push(local_srv(
            domain,
            found.as_deref().map_err(Clone::clone),
            fqdn,
            port,
        ));
    }
    let found = lookup_addresses(discovery, fqdn, port).await.map(|addrs| {
        addrs
            .iter()
            .map(|a| (a.ip(), locality(a.ip())))
            .collect::<Vec<_>>()
    });
    out.push(public_fqdn_address(
        fqdn,
        found.as_deref().map_err(Clone::clone),
        cfg.sip.listen.ip(),
    ));
    out
}

/// Whether `ip` is this host's (a socket can be bound to it), and else this host's own address
/// toward it (a UDP socket's source once connected; nothing is sent).
fn locality(ip: IpAddr) -> Locality {
    if std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok() {
        return Locality::Local;
    }
    let any = match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let source = std::net::UdpSocket::bind(SocketAddr::new(any, 0))
        .and_then(|s| {
            s.connect(SocketAddr::new(ip, 5061))?;
            s.local_addr()
        })
        .ok()
        .map(|a| a.ip());
    Locality::Remote { source }
}

fn certificate_checks(cfg: &Config, options: &Options) -> Vec<Check> {
    let server = match read_certificates(&cfg.sip.cert_chain) {
        Ok(c) => c,
        Err(reason) => {
            return vec![Check::fail(
                "sip.cert_chain",
                reason,
                "put the edge's PEM certificate chain, leaf first, there",
            )];
        }
    };
    let client = match &cfg.sip.client_cert {
        Some(c) => match read_certificates(&c.chain) {
            Ok(chain) => Some(chain),
            Err(reason) => {
                return vec![Check::fail(
                    "sip.client_cert_chain",
                    reason,
                    "put the client certificate's PEM chain, leaf first, there",
                )];
            }
        },
        None => None,
    };
    let ca_bundle = cfg
        .sip
        .ca_bundle
        .as_deref()
        .and_then(|p| read_certificates(p).ok());
    let anchors = Anchors {
        system: options.system_roots.clone(),
        ca_bundle,
        use_system_roots: cfg.sip.use_system_roots,
    };
    let now = UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    certificates(
        &EdgeCertificates {
            server: &server,
            client: client.as_deref(),
            public_fqdn: &cfg.sip.public_fqdn,
        },
        &anchors,
        now,
    )
}

async fn partner_checks(
    cfg: &Config,
    discovery: &Discovery,
    tls: &TlsConfigs,
    domain: &str,
) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(refused) = partner_policy(domain, &cfg.federation) {
        out.push(refused);
    }
    let static_edge = cfg.federation.partner(domain).and_then(|p| p.edge.clone());
    let (edges, srv_targets): (Vec<(String, u16)>, Vec<String>) = match &static_edge {
        Some(edge) => {
            out.push(partner_discovery(domain, Ok(&[]), Some(&edge.to_string())));
            (vec![(edge.host.clone(), edge.port)], Vec::new())
        }
        None => {
            let found = lookup_srv(discovery, domain).await;
            out.push(partner_discovery(
                domain,
                found.as_deref().map_err(Clone::clone),
                None,
            ));
            match found {
                Ok(targets) => (
                    targets
                        .iter()
                        .take(MAX_PARTNER_EDGES)
                        .map(|t| (t.target.clone(), t.port))
                        .collect(),
                    targets.into_iter().map(|t| t.target).collect(),
                ),
                Err(_) => return out,
            }
        }
    };
    let rng = SplitMix::seeded();
    let local_domain = cfg
        .xmpp
        .local_domains
        .first()
        .map_or(cfg.sip.public_fqdn.as_str(), String::as_str);
    for (host, port) in edges {
        let label = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let call_id = format!("{}@{}", rng.token(), cfg.sip.public_fqdn);
        let request = options_request(
            local_domain,
            domain,
            &cfg.sip.public_fqdn,
            cfg.sip.listen.port(),
            &RequestIds {
                branch: &rng.token(),
                tag: &rng.token(),
                call_id: &call_id,
            },
        );
        let reached = reach(
            discovery,
            tls,
            &host,
            port,
            cfg.sip.connect_timeout,
            &request.to_bytes(),
            &call_id,
            cfg.sip.limits(),
        )
        .await;
        out.extend(partner_edge(
            domain,
            &label,
            &srv_targets,
            &cfg.federation,
            &reached,
        ));
    }
    out
}

/// Connects to `host:port` as the edge does (each address in turn, TCP then TLS verified for
/// `host`, within `timeout`), sends `request` and waits up to `timeout` for its final response.
#[allow(clippy::too_many_arguments)]
async fn reach(
    discovery: &Discovery,
    tls: &TlsConfigs,
    host: &str,
    port: u16,
    timeout: Duration,
    request: &[u8],
    call_id: &str,
    limits: crate::sip::message::Limits,
) -> Reached {
    let addrs = match lookup_addresses(discovery, host, port).await {
        Ok(a) => a,
        Err(reason) => return Reached::Unreachable(reason),
    };
    let name = match ServerName::try_from(host.to_owned()) {
        Ok(n) => n,
        Err(e) => return Reached::Handshake(format!("{host} is not a valid TLS server name: {e}")),
    };
    let connector = TlsConnector::from(tls.client.clone());
    let connect = async {
        let mut last = Reached::Unreachable(format!("{host} has no address"));
        for addr in addrs {
            let tcp = match TcpStream::connect(addr).await {
                Ok(t) => t,
                Err(e) => {
                    last = Reached::Unreachable(format!("connect to {addr}: {e}"));
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            match connector.connect(name.clone(), tcp).await {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    last = Reached::Handshake(format!(
                        "TLS with {addr}: {}",
                        describe_handshake_error(&e)
                    ))
                }
            }
        }
        Err(last)
    };
    let mut stream = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(reached)) => return reached,
        Err(_) => {
            return Reached::Unreachable(format!(
                "no TLS connection within {} s (sip.connect_timeout_secs)",
                timeout.as_secs()
            ));
        }
    };
    let identity = match stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        Some(cert) => PeerIdentity::from_certificate(cert).unwrap_or_default(),
        None => PeerIdentity::default(),
    };
    let exchange = async {
        stream
            .write_all(request)
            .await
            .map_err(|e| describe_handshake_error(&e))?;
        stream
            .flush()
            .await
            .map_err(|e| describe_handshake_error(&e))?;
        let mut framer = Framer::new(limits);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            loop {
                match framer.next_frame() {
                    Ok(Some(Frame::Message(m))) => {
                        let ours = m.call_id().is_ok_and(|c| c == call_id);
                        if ours && m.status().is_some_and(|s| s >= 200) {
                            return Ok(m);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => return Err(format!("unreadable SIP from the partner: {e}")),
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) => return Err("the partner closed the connection".to_owned()),
                Ok(n) => framer.push(&buf[..n]),
                Err(e) => return Err(describe_handshake_error(&e)),
            }
        }
    };
    let reached = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(response)) => Reached::Answered { identity, response },
        Ok(Err(reason)) => Reached::Dropped { identity, reason },
        Err(_) => Reached::NoAnswer {
            identity,
            waited_secs: timeout.as_secs(),
        },
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    reached
}
