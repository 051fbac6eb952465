//! The edge's request handling, without I/O: what to answer to each frame from a peer, and
//! which connection each outbound request takes.
//!
//! Inbound: admission ([`crate::edge::admission::admit_request`]; when a certificate names none of the
//! From domain, the domain's SRV targets are looked up first, RFC 5922 §7), the discovered-partner
//! rate limit, the transaction layer ([`crate::sip::transaction::Transactions`]), OPTIONS (the
//! profile: 200 with the `m=message 5060 sip/tcp *` SDP), malformed requests (400/513 naming
//! the problem), a request requiring an option tag the bridge does not understand (`420` with
//! `Unsupported`, [`crate::edge::admission::check_require`], RFC 3261 §8.2.2.3: before any
//! engine sees it) and keep-alive pongs. Requests for the layers above come out as
//! [`CoreOutput::Request`].
//!
//! Outbound: [`EdgeCore::send_request`] with a [`Route`] — a peer domain (the
//! [`crate::edge::pool::Pool`] picks or opens a connection: ≤ 4 per edge, ≤ 40 per network,
//! SRV order, backoff) or the connection a dialog lives on (dialog affinity: if it is gone the
//! request is [`Undeliverable::ConnectionGone`], never rerouted). Requests from local users
//! carry `Ms-asserted-verification-level` as the partner's setting says.
//!
//! Resource limits ([`crate::edge::limits`]): DNS lookups under way (all together, and per
//! peer certificate identity whose requests started them, over all its connections and until
//! each lookup ends: a request that needs one more is answered 503 with Retry-After; the
//! bridge's own requests wait for a free slot), TLS handshakes in progress, connections per
//! source address, per certificate identity and in total ([`EdgeCore::accept`],
//! [`EdgeCore::connected`]), and per-domain state bounded by the pool (idle time, a short life
//! for failed lookups, a cap on entries). Each over-limit event comes out once as
//! [`CoreOutput::OverLimit`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

use crate::config::FederationConfig;
use crate::edge::admission::{ServedDomains, admit_request, check_require};
use crate::edge::identity::PeerIdentity;
use crate::edge::limits::{Connections, EdgeLimits, Limit, OverLimit, Source};
use crate::edge::pool::{Action, EdgeAddr, Pool, PoolLimits};
use crate::edge::srv::SrvTarget;
use crate::random::SplitMix;
use crate::sip::builder::name_addr;
use crate::sip::framing::{Frame, PONG};
use crate::sip::header::NameAddr;
use crate::sip::message::{Message, Method};
use crate::sip::sdp::Sdp;
use crate::sip::status::{self, Reject};
use crate::sip::transaction::{ConnId, Output, T1, Transactions, TxEvent, TxId, TxIds};

/// Methods the edge answers (Allow).
pub const ALLOW: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, INFO, SUBSCRIBE, NOTIFY, BENOTIFY";
/// Option tags the edge supports (Supported).
pub const SUPPORTED: &str = "ms-benotify, ms-text-format";
/// The header LCS uses to say whether the sender was authenticated by its home server.
pub const VERIFICATION_HEADER: &str = "Ms-asserted-verification-level";

/// Where an outbound request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A new request to a peer domain: any connection that may carry it, or a new one.
    Domain(String),
    /// A request inside a dialog: exactly this connection.
    Connection(ConnId),
}

/// Why an outbound request was not sent. The layers above map these to stanza errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undeliverable {
    /// Federation policy refuses the domain (blocked, or not listed with discovery off).
    Blocked { domain: String },
    /// The domain is served by this bridge; the edge never loops a request back to itself.
    Local { domain: String },
    /// DNS says the domain has no federation edge (no SRV record, lookup failed).
    NoRoute { domain: String, reason: String },
    /// Its edges could not be reached (connect, TLS) or not in time.
    Unreachable { domain: String, reason: String },
    /// The dialog's connection is closed (dialog affinity: the dialog is lost).
    ConnectionGone { conn: ConnId },
    /// The request cannot be sent as built (the caller's bug, e.g. no Via branch).
    Invalid { reason: String },
}

impl Undeliverable {
    /// The partner domain it was for, when known (for log lines).
    pub fn domain(&self) -> Option<&str> {
        match self {
            Undeliverable::Blocked { domain }
            | Undeliverable::Local { domain }
            | Undeliverable::NoRoute { domain, .. }
            | Undeliverable::Unreachable { domain, .. } => Some(domain),
            Undeliverable::ConnectionGone { .. } | Undeliverable::Invalid { .. } => None,
        }
    }

    /// The connection it was for, when it was routed to one.
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            Undeliverable::ConnectionGone { conn } => Some(*conn),
            _ => None,
        }
    }
}

impl fmt::Display for Undeliverable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undeliverable::Blocked { domain } => {
                write!(f, "federation with {domain} is not allowed")
            }
            Undeliverable::Local { domain } => write!(f, "{domain} is a local domain"),
            Undeliverable::NoRoute { reason, .. } | Undeliverable::Unreachable { reason, .. } => {
                f.write_str(reason)
            }
            Undeliverable::ConnectionGone { conn } => {
                write!(f, "connection {conn} of the dialog is closed")
            }
            Undeliverable::Invalid { reason } => write!(f, "request not sendable: {reason}"),
        }
    }
}

/// The `Ms-asserted-verification-level` a request arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asserted {
    Verified,
    Unverified,
}

impl Asserted {
    /// Reads `ms-source-verification-level=verified|unverified` (case-insensitive).
    pub fn of(request: &Message) -> Option<Asserted> {
        let v = request.header(VERIFICATION_HEADER)?;
        let (name, value) = v.trim().split_once('=')?;
        if !name
            .trim()
            .eq_ignore_ascii_case("ms-source-verification-level")
        {
            return None;
        }
        match value.trim().to_ascii_lowercase().as_str() {
            "verified" => Some(Asserted::Verified),
            "unverified" => Some(Asserted::Unverified),
            _ => None,
        }
    }
}

/// What the I/O layer must do.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreOutput {
    /// Write bytes to a connection.
    Send { conn: ConnId, bytes: Vec<u8> },
    /// A request for the layers above (server transaction `tx`, answer with
    /// [`EdgeCore::respond`]); `asserted` is its verification level header.
    Request {
        tx: TxId,
        conn: ConnId,
        request: Message,
        asserted: Option<Asserted>,
    },
    /// A transaction event for the layers above (responses, timeouts, ACKs, cancels).
    Event(TxEvent),
    /// Outbound request `tx` was not sent.
    Undeliverable { tx: TxId, why: Undeliverable },
    /// Connection `conn` closed: dialogs on it are lost (for the layers above).
    ConnectionLost { conn: ConnId },
    /// Look up `_sipfederationtls._tcp.<domain>`; answer with [`EdgeCore::resolved`].
    Resolve { domain: String },
    /// Open a TLS connection to `edge` for `domain` (the certificate must match `edge.host`);
    /// answer with [`EdgeCore::outbound_up`] or [`EdgeCore::connect_failed`].
    Connect {
        conn: ConnId,
        domain: String,
        edge: EdgeAddr,
    },
    /// A limit was hit (log it once, count it); what to do about it is in the other outputs.
    OverLimit(OverLimit),
}

/// Static facts the core needs.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    pub served: ServedDomains,
    pub federation: FederationConfig,
    /// Host (and port) the edge puts into its Via/Contact and SDP.
    pub public_fqdn: String,
    /// Outbound connection limits.
    pub pool: PoolLimits,
    /// Resource limits (`[sip]`).
    pub limits: EdgeLimits,
}

/// The least time a DNS answer (or its absence) is used.
const MIN_ANSWER_LIFETIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Most inbound requests held per domain while its SRV targets are looked up.
const MAX_PARKED: usize = 64;
/// Inbound requests held for lookups, per lookup slot: 4 × `sip.max_dns_lookups` in all (256
/// by default, about 20 MiB of requests of up to 80 KiB), and 16 × `sip.max_dns_lookups_per_peer`
/// (128) for one peer, so that no peer can hold every place and refuse the others' requests.
const PARKED_PER_LOOKUP: usize = 4;
const PARKED_PER_PEER_LOOKUP: usize = 16;

/// An outbound request waiting for a connection (its deadline is kept by the pool).
#[derive(Debug)]
struct Waiting {
    tx: TxId,
    request: Message,
    /// Sent once already and answered 503 by another edge: not tried again.
    retried: bool,
}

/// An out-of-dialog request under way (sent by domain): what a 503 needs to try it elsewhere.
#[derive(Debug)]
struct ByDomain {
    domain: String,
    request: Message,
    retried: bool,
}

/// The domain of a request's To (SIP URIs only), lower case.
fn to_domain(m: &Message) -> Option<String> {
    sip_domain(m.to().ok()?)
}

/// The domain of a request's From URI (lowercase), if it is a SIP URI with a domain.
fn from_domain(m: &Message) -> Option<String> {
    sip_domain(m.from().ok()?)
}

/// The lower-cased host of a From or To that holds a SIP URI.
fn sip_domain(addr: NameAddr<'_>) -> Option<String> {
    addr.parsed_uri()
        .as_sip()
        .map(|u| u.host_str().to_ascii_lowercase())
}

/// The sans-IO part of the edge.
#[derive(Debug)]
pub struct EdgeCore {
    settings: CoreSettings,
    transactions: Transactions,
    pool: Pool<Waiting>,
    /// The connection of each outstanding client transaction (for the pool's load count).
    client_conns: HashMap<TxId, ConnId>,
    /// Outstanding client transactions sent by domain (out of dialog).
    by_domain: HashMap<TxId, ByDomain>,
    /// Inbound requests waiting for their From domain's SRV lookup.
    parked: HashMap<String, Vec<(ConnId, PeerIdentity, Message)>>,
    /// How many requests are parked, in all and per peer certificate identity.
    parked_total: usize,
    parked_by_peer: HashMap<PeerIdentity, usize>,
    /// Lookups under way: the domain and the certificate identity of the peer whose request
    /// started it (none for the bridge's own requests).
    lookups: HashMap<String, Option<PeerIdentity>>,
    /// Lookups under way per peer identity that started them. A lookup counts until it ends,
    /// whatever becomes of the connection its request came on: it holds its global slot that
    /// long.
    lookups_by_peer: HashMap<PeerIdentity, usize>,
    /// Domains whose outbound requests wait for a free lookup slot, in order.
    deferred: VecDeque<String>,
    deferred_set: HashSet<String>,
    /// Connections as the limits count them.
    conns: Connections,
    rng: SplitMix,
}

impl EdgeCore {
    /// `tag_seed` must be random (the I/O layer draws it); tags and jitter are derived from it.
    pub fn new(settings: CoreSettings, tag_seed: u64) -> EdgeCore {
        let mut pool = Pool::new(settings.pool);
        pool.set_idle(settings.limits.pool_idle);
        EdgeCore {
            pool,
            settings,
            transactions: Transactions::default(),
            client_conns: HashMap::new(),
            by_domain: HashMap::new(),
            parked: HashMap::new(),
            parked_total: 0,
            parked_by_peer: HashMap::new(),
            lookups: HashMap::new(),
            lookups_by_peer: HashMap::new(),
            deferred: VecDeque::new(),
            deferred_set: HashSet::new(),
            conns: Connections::default(),
            rng: SplitMix::new(tag_seed),
        }
    }

    /// Per-domain entries the pool holds and its timer heap's size (for tests and metrics).
    pub fn domains_held(&self) -> (usize, usize) {
        self.pool.domains_held()
    }

    /// DNS lookups under way.
    pub fn lookups_under_way(&self) -> usize {
        self.lookups.len()
    }

    /// Connections counted by `sip.max_connections` (authenticated inbound and outbound), and
    /// inbound ones in their TLS handshake.
    pub fn connections(&self) -> (usize, usize) {
        (self.conns.total(), self.conns.handshakes())
    }

    /// The id source for outbound requests ([`EdgeCore::send_request`]).
    pub fn tx_ids(&self) -> TxIds {
        self.transactions.ids()
    }

    /// New policy and limits (SIGHUP); connections and transactions stay.
    /// The connections held, for an administrator.
    pub fn connection_list(&self) -> Vec<crate::edge::pool::ConnSummary> {
        self.pool.connections()
    }

    pub fn reconfigure(&mut self, settings: CoreSettings) {
        self.pool.set_limits(settings.pool);
        self.pool.set_idle(settings.limits.pool_idle);
        self.settings = settings;
    }

    /// A TCP connection from `ip` was accepted as `conn` (before its TLS handshake): `Err`
    /// when it is over `sip.max_handshakes`, `sip.max_connections` or
    /// `sip.max_connections_per_address` (an IPv4 address or an IPv6 /64), and must be closed
    /// at once. Either way the caller reports the end of the connection with
    /// [`EdgeCore::released`] (or [`EdgeCore::disconnected`] once it was connected).
    pub fn accept(&mut self, conn: ConnId, ip: IpAddr) -> Result<(), OverLimit> {
        self.conns
            .accept(conn, ip, &self.settings.limits)
            .map_err(|limit| OverLimit {
                limit,
                conn: Some(conn),
                detail: match limit {
                    Limit::ConnectionsPerAddress => Source::of(ip).to_string(),
                    _ => ip.to_string(),
                },
                action: "connection closed at accept, before the TLS handshake",
            })
    }

    /// Inbound `conn` completed its handshake with `identity`: registered (it counts toward
    /// `sip.max_connections` from now on), or `Err` when the identity is over
    /// `sip.max_connections_per_identity` or the total is reached (close the connection).
    pub fn connected(&mut self, conn: ConnId, identity: PeerIdentity) -> Result<(), OverLimit> {
        if let Err(limit) = self
            .conns
            .identified(conn, &identity, &self.settings.limits)
        {
            return Err(OverLimit {
                limit,
                conn: Some(conn),
                detail: identity.names().join(","),
                action: "connection closed after the TLS handshake",
            });
        }
        self.pool.inbound(conn, identity);
        Ok(())
    }

    /// A connection that never became usable (refused, or its handshake failed) is gone.
    pub fn released(&mut self, conn: ConnId) {
        self.conns.release(conn);
    }

    /// Outbound connection `conn` is up (TLS verified against the edge's name).
    pub fn outbound_up(
        &mut self,
        now: Instant,
        conn: ConnId,
        identity: PeerIdentity,
    ) -> Vec<CoreOutput> {
        let mut out = Vec::new();
        if let Some(domain) = self.pool.up(conn, identity) {
            self.pump(now, &domain, &mut out);
            // Other domains served by the same edge host may use it too.
            for other in self.pool.waiting_domains(&domain) {
                self.pump(now, &other, &mut out);
            }
        }
        out
    }

    /// Outbound connection `conn` could not be opened (`reason` for the log and the error).
    pub fn connect_failed(&mut self, now: Instant, conn: ConnId, reason: &str) -> Vec<CoreOutput> {
        let mut out = Vec::new();
        self.conns.release(conn);
        let jitter = self.rng.unit();
        if let Some(domain) = self.pool.failed(now, conn, jitter, reason) {
            self.pump(now, &domain, &mut out);
            for other in self.pool.waiting_domains(&domain) {
                self.pump(now, &other, &mut out);
            }
        }
        out
    }

    /// A connection ended.
    pub fn disconnected(&mut self, now: Instant, conn: ConnId) -> Vec<CoreOutput> {
        self.pool.closed(now, conn);
        self.released(conn);
        self.transactions.connection_lost(conn);
        let mut out = vec![CoreOutput::ConnectionLost { conn }];
        out.extend(self.drain(now));
        out
    }

    /// The result of a `_sipfederationtls._tcp.<domain>` lookup (targets in the order to try),
    /// kept until `valid_until`.
    pub fn resolved(
        &mut self,
        now: Instant,
        domain: &str,
        result: Result<Vec<SrvTarget>, String>,
        valid_until: Instant,
    ) -> Vec<CoreOutput> {
        // An answer is used for at least a second, whatever its TTL, so lookups cannot spin.
        let valid_until = valid_until.max(now + MIN_ANSWER_LIFETIME);
        self.pool.resolved(now, domain, result, valid_until);
        self.lookup_ended(domain);
        let mut out = Vec::new();
        for (conn, peer, m) in self.parked.remove(domain).unwrap_or_default() {
            self.parked_total -= 1;
            super::limits::decrement(&mut self.parked_by_peer, &peer);
            out.extend(self.admit(now, conn, m, false));
        }
        self.pump(now, domain, &mut out);
        // A slot is free: the bridge's own requests waiting for one go first.
        while self.lookups.len() < self.settings.limits.max_dns_lookups {
            let Some(next) = self.deferred.pop_front() else {
                break;
            };
            self.deferred_set.remove(&next);
            self.pump(now, &next, &mut out);
        }
        out
    }

    /// Sends an outbound request as client transaction `tx` (from [`EdgeCore::tx_ids`]).
    pub fn send_request(
        &mut self,
        now: Instant,
        tx: TxId,
        mut request: Message,
        route: Route,
    ) -> Vec<CoreOutput> {
        let mut out = Vec::new();
        // A header value the builders refused (it would have split a line): not sent.
        if let Some(e) = request.header_error() {
            out.push(CoreOutput::Undeliverable {
                tx,
                why: Undeliverable::Invalid {
                    reason: e.to_string(),
                },
            });
            return out;
        }
        // The profile: this hop's Via says TLS (the TU builds it; a mistake is caught here).
        if !request
            .top_via()
            .is_ok_and(|v| v.transport.eq_ignore_ascii_case("TLS"))
        {
            out.push(CoreOutput::Undeliverable {
                tx,
                why: Undeliverable::Invalid {
                    reason: "the top Via must be SIP/2.0/TLS (profile: TLS only)".into(),
                },
            });
            return out;
        }
        // The To domain, read once for both checks below.
        let to = to_domain(&request);
        self.assert_verification(&mut request, to.as_deref());
        // A request in a dialog with a domain blocked since (an administrator's runtime block,
        // a reload): not sent, like a new one (the dialog's connection may still be up).
        if let Route::Connection(_) = route {
            if let Some(domain) = self.blocked_to(to) {
                out.push(CoreOutput::Undeliverable {
                    tx,
                    why: Undeliverable::Blocked { domain },
                });
                return out;
            }
        }
        match route {
            Route::Connection(conn) if self.pool.is_up(conn) => {
                self.start_client(now, tx, conn, request, &mut out);
            }
            Route::Connection(conn) => out.push(CoreOutput::Undeliverable {
                tx,
                why: Undeliverable::ConnectionGone { conn },
            }),
            Route::Domain(domain) => {
                let domain = domain.trim_end_matches('.').to_ascii_lowercase();
                let why = if self.settings.served.contains(&domain) {
                    Some(Undeliverable::Local {
                        domain: domain.clone(),
                    })
                } else if !self.settings.federation.is_allowed(&domain) {
                    Some(Undeliverable::Blocked {
                        domain: domain.clone(),
                    })
                } else {
                    None
                };
                match why {
                    Some(why) => out.push(CoreOutput::Undeliverable { tx, why }),
                    None => {
                        let deadline = now + T1 * 64;
                        let w = Waiting {
                            tx,
                            request,
                            retried: false,
                        };
                        self.pool.wait(&domain, w, deadline, now);
                        self.pump(now, &domain, &mut out);
                    }
                }
            }
        }
        out
    }

    /// Sends a message outside any transaction on `conn` (the ACK for a 2xx, RFC 3261 §13.2.2.4):
    /// false if the connection is gone.
    pub fn send_stateless(&mut self, conn: ConnId, message: &Message) -> Option<CoreOutput> {
        if let Some(e) = message.header_error() {
            tracing::warn!(
                error = %e,
                conn,
                domain = %self.peer_label(conn),
                "ACK not sent: a header value was refused"
            );
            return None;
        }
        self.pool.is_up(conn).then(|| CoreOutput::Send {
            conn,
            bytes: message.to_bytes(),
        })
    }

    /// The domain of the request's To when the federation policy lists it as blocked.
    fn blocked_to(&self, to_domain: Option<String>) -> Option<String> {
        let domain = to_domain?;
        self.settings
            .federation
            .partner(&domain)
            .is_some_and(|p| p.policy == crate::config::PartnerPolicy::Block)
            .then_some(domain)
    }

    /// Adds `Ms-asserted-verification-level` to a request from a local user, as the target
    /// domain's partner setting says (unless the request has one already).
    fn assert_verification(&self, request: &mut Message, to_domain: Option<&str>) {
        let local = from_domain(request).is_some_and(|d| self.settings.served.contains(&d));
        if !local || request.header(VERIFICATION_HEADER).is_some() {
            return;
        }
        let Some(domain) = to_domain else {
            return;
        };
        if let Some(value) = self
            .settings
            .federation
            .verification_level(domain)
            .header_value()
        {
            request.push_header(VERIFICATION_HEADER, value);
        }
    }

    fn start_client(
        &mut self,
        now: Instant,
        tx: TxId,
        conn: ConnId,
        request: Message,
        out: &mut Vec<CoreOutput>,
    ) {
        match self.transactions.send_request_as(now, tx, conn, request) {
            Ok(_) => {
                self.client_conns.insert(tx, conn);
                self.pool.add_pending(conn, 1);
                out.extend(self.drain(now));
            }
            Err(e) => {
                self.by_domain.remove(&tx);
                out.push(CoreOutput::Undeliverable {
                    tx,
                    why: Undeliverable::Invalid {
                        reason: e.to_string(),
                    },
                })
            }
        }
    }

    /// The partner's configured edge for `domain`, if any (used instead of DNS).
    fn static_edge(&self, domain: &str) -> Option<EdgeAddr> {
        self.settings
            .federation
            .partner(domain)
            .and_then(|p| p.edge.as_ref())
            .map(|e| EdgeAddr {
                host: e.host.clone(),
                port: e.port,
            })
    }

    /// Out-of-dialog request `tx` (`sent`) was answered 503 on `conn` (RFC 3261 §21.5.4, RFC
    /// 3263 §4.3): the edge host is avoided for the `Retry-After` time (capped, or its backoff
    /// without one), and the request goes once more, as a new transaction (a new Via branch)
    /// under the same id, if another edge or connection may take it. Returns whether it did (the
    /// 503 is then not passed up).
    fn retry_elsewhere(
        &mut self,
        now: Instant,
        tx: TxId,
        conn: ConnId,
        response: &Message,
        sent: ByDomain,
        out: &mut Vec<CoreOutput>,
    ) -> bool {
        let retry_after = crate::sip::status::retry_after(response.header("Retry-After"));
        let reason = match retry_after {
            Some(d) => format!(
                "answered 503 Service Unavailable, retry after {} s",
                d.as_secs()
            ),
            None => "answered 503 Service Unavailable".to_owned(),
        };
        let jitter = self.rng.unit();
        self.pool
            .unavailable(now, conn, retry_after, jitter, &reason);
        let static_edge = self.static_edge(&sent.domain);
        if sent.retried
            || !self
                .pool
                .has_alternative(&sent.domain, now, static_edge, &self.settings.federation)
        {
            return false;
        }
        let Some(request) = rebranched(&sent.request) else {
            return false;
        };
        let w = Waiting {
            tx,
            request,
            retried: true,
        };
        self.pool.wait(&sent.domain, w, now + T1 * 64, now);
        self.pump(now, &sent.domain, out);
        true
    }

    /// Carries out the pool's decisions for `domain`.
    fn pump(&mut self, now: Instant, domain: &str, out: &mut Vec<CoreOutput>) {
        let static_edge = self.static_edge(domain);
        let room = self.conns.room(&self.settings.limits);
        let actions = self
            .pool
            .pump(now, domain, static_edge, &self.settings.federation, room);
        for action in actions {
            match action {
                Action::Send { conn } => {
                    if let Some(w) = self.pool.take_waiting(domain) {
                        self.by_domain.insert(
                            w.tx,
                            ByDomain {
                                domain: domain.to_owned(),
                                request: w.request.clone(),
                                retried: w.retried,
                            },
                        );
                        self.start_client(now, w.tx, conn, w.request, out);
                    }
                }
                Action::Resolve { domain } => {
                    if self.lookups.len() < self.settings.limits.max_dns_lookups {
                        self.lookup_started(domain.clone(), None);
                        out.push(CoreOutput::Resolve { domain });
                    } else {
                        // No DNS slot: the requests wait (until their deadline) for one.
                        self.pool.cancel_resolving(&domain);
                        if self.deferred_set.insert(domain.clone()) {
                            out.push(CoreOutput::OverLimit(OverLimit {
                                limit: Limit::DnsLookups,
                                conn: None,
                                detail: domain.clone(),
                                action: "outbound request waits for a DNS lookup slot",
                            }));
                            self.deferred.push_back(domain);
                        }
                    }
                }
                Action::Connect { conn, domain, edge } => {
                    self.conns.outbound(conn);
                    out.push(CoreOutput::Connect { conn, domain, edge })
                }
                Action::Fail {
                    reason,
                    no_route,
                    limit,
                } => {
                    if let Some(limit) = limit {
                        out.push(CoreOutput::OverLimit(OverLimit {
                            limit,
                            conn: None,
                            detail: domain.to_owned(),
                            action: "outbound requests not sent: no connection may be opened",
                        }));
                    }
                    while let Some(w) = self.pool.take_waiting(domain) {
                        let domain = domain.to_owned();
                        let reason = reason.clone();
                        let why = if no_route {
                            Undeliverable::NoRoute { domain, reason }
                        } else {
                            Undeliverable::Unreachable { domain, reason }
                        };
                        out.push(CoreOutput::Undeliverable { tx: w.tx, why });
                    }
                }
            }
        }
    }

    /// The next timer deadline (O(1): the transactions' and the pool's next timers).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        match (self.transactions.poll_timeout(), self.pool.next_timer()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Vec<CoreOutput> {
        self.transactions.handle_timeout(now);
        let mut out = Vec::new();
        for (domain, w) in self.pool.expire(now) {
            let reason = format!("no connection to {domain} within {} s", (T1 * 64).as_secs());
            out.push(CoreOutput::Undeliverable {
                tx: w.tx,
                why: Undeliverable::Unreachable { domain, reason },
            });
        }
        out.extend(self.drain(now));
        out
    }

    /// A fresh To tag (RFC 3261 §19.3: unique, with at least 32 random bits).
    pub fn new_tag(&mut self) -> String {
        self.rng.token()
    }

    /// Sends a response on a server transaction opened by [`CoreOutput::Request`].
    /// A response one of whose header values was refused ([`Message::header_error`]) goes out
    /// as `500` instead, so the peer is answered and nothing half-built is sent.
    pub fn respond(&mut self, now: Instant, tx: TxId, mut response: Message) -> Vec<CoreOutput> {
        if let Some(e) = response.header_error() {
            tracing::warn!(error = %e, "response sent as 500: a header value was refused");
            response = Reject::new(status::SERVER_INTERNAL_ERROR).instead_of(&response);
        }
        // Misuse (an unknown or finished transaction) is the caller's bug: nothing to send.
        let _ = self.transactions.respond(now, tx, response);
        self.drain(now)
    }

    /// A frame from connection `conn`.
    pub fn on_frame(&mut self, now: Instant, conn: ConnId, frame: Frame) -> Vec<CoreOutput> {
        match frame {
            Frame::Ping => vec![CoreOutput::Send {
                conn,
                bytes: PONG.to_vec(),
            }],
            Frame::Pong => Vec::new(),
            Frame::Invalid { error, message } => match message {
                Some(m) if m.is_request() => self.refuse(conn, &m, &Reject::from(&error)),
                _ => Vec::new(),
            },
            Frame::Message(m) => self.on_message(now, conn, m),
        }
    }

    /// Answers request `m` (never an ACK, RFC 3261 §17.1.1.3) outside any transaction.
    fn refuse(&mut self, conn: ConnId, m: &Message, reject: &Reject) -> Vec<CoreOutput> {
        if m.method() == Some(&Method::Ack) {
            return Vec::new();
        }
        let resp = self.reject(m, reject);
        vec![CoreOutput::Send {
            conn,
            bytes: resp.to_bytes(),
        }]
    }

    fn on_message(&mut self, now: Instant, conn: ConnId, m: Message) -> Vec<CoreOutput> {
        self.admit(now, conn, m, true)
    }

    /// Admission, then the transaction layer. `may_park`: a request whose certificate names
    /// none of its From domain may wait for that domain's SRV lookup (once).
    fn admit(&mut self, now: Instant, conn: ConnId, m: Message, may_park: bool) -> Vec<CoreOutput> {
        if m.is_request() {
            let identity = self.pool.identity(conn).cloned().unwrap_or_default();
            let domain = from_domain(&m);
            let srv = domain.as_deref().and_then(|d| self.pool.srv_names(d, now));
            if let Err(refusal) = admit_request(
                &m,
                &identity,
                srv.as_deref().unwrap_or(&[]),
                &self.settings.served,
                &self.settings.federation,
            ) {
                // The certificate does not name the domain: its SRV targets may (RFC 5922 §7).
                if let (status::FORBIDDEN, None, Some(d), true) =
                    (refusal.status, &srv, &domain, may_park)
                {
                    if self.settings.federation.is_allowed(d) && self.pool.identity(conn).is_some()
                    {
                        return self.park(now, conn, d.clone(), m);
                    }
                }
                return self.refuse(conn, &m, &Reject::from(refusal));
            }
            if let Some(resp) = self.rate_limit(now, &m) {
                return vec![CoreOutput::Send {
                    conn,
                    bytes: resp.to_bytes(),
                }];
            }
        }
        self.transactions.receive(now, conn, m);
        self.drain(now)
    }

    /// Holds a request until its From domain's SRV targets are known. A lookup not yet under
    /// way is started only within `sip.max_dns_lookups_per_peer` (lookups under way that
    /// requests from this certificate identity started, on any of its connections, closed ones
    /// included) and `sip.max_dns_lookups` (all peers); beyond them the request is answered 503
    /// with Retry-After, naming the limit.
    fn park(&mut self, now: Instant, conn: ConnId, domain: String, m: Message) -> Vec<CoreOutput> {
        if m.method() == Some(&Method::Ack) {
            return Vec::new();
        }
        // Only an authenticated connection's requests are parked (`admit`).
        let peer = self.pool.identity(conn).cloned().unwrap_or_default();
        let limits = &self.settings.limits;
        let parked_mine = self.parked_by_peer.get(&peer).copied().unwrap_or(0);
        let over = if self.parked.get(&domain).map_or(0, Vec::len) >= MAX_PARKED
            || parked_mine >= limits.max_dns_lookups_per_peer * PARKED_PER_PEER_LOOKUP
        {
            Some(Limit::DnsLookupsPerPeer)
        } else if self.parked_total >= limits.max_dns_lookups * PARKED_PER_LOOKUP {
            Some(Limit::DnsLookups)
        } else {
            None
        };
        if let Some(limit) = over {
            let resp = self.try_again(&m, "Verifying the peer's domain, try again");
            return vec![
                CoreOutput::OverLimit(OverLimit {
                    limit,
                    conn: Some(conn),
                    detail: domain,
                    action: "request answered 503, too many requests waiting for lookups",
                }),
                CoreOutput::Send {
                    conn,
                    bytes: resp.to_bytes(),
                },
            ];
        }
        let new_lookup = !self.pool.resolving(&domain);
        if new_lookup {
            let mine = self.lookups_by_peer.get(&peer).copied().unwrap_or(0);
            let over = if mine >= limits.max_dns_lookups_per_peer {
                Some(Limit::DnsLookupsPerPeer)
            } else if self.lookups.len() >= limits.max_dns_lookups {
                Some(Limit::DnsLookups)
            } else {
                None
            };
            if let Some(limit) = over {
                let reason = format!(
                    "Too many DNS lookups under way ({}), try again",
                    limit.key()
                );
                let resp = self.try_again(&m, &reason);
                return vec![
                    CoreOutput::OverLimit(OverLimit {
                        limit,
                        conn: Some(conn),
                        detail: domain,
                        action: "request answered 503, no lookup started",
                    }),
                    CoreOutput::Send {
                        conn,
                        bytes: resp.to_bytes(),
                    },
                ];
            }
        }
        self.parked
            .entry(domain.clone())
            .or_default()
            .push((conn, peer.clone(), m));
        self.parked_total += 1;
        *self.parked_by_peer.entry(peer.clone()).or_default() += 1;
        if new_lookup && self.pool.start_resolving(&domain, now) {
            self.lookup_started(domain.clone(), Some(peer));
            vec![CoreOutput::Resolve { domain }]
        } else {
            Vec::new()
        }
    }

    /// A lookup for `domain` starts, for `peer`'s request (none: the bridge's own).
    fn lookup_started(&mut self, domain: String, peer: Option<PeerIdentity>) {
        if let Some(p) = &peer {
            *self.lookups_by_peer.entry(p.clone()).or_default() += 1;
        }
        // There is never one under way already (the pool says `Resolving` until it ends); if
        // there were, its peer's count is given back rather than kept for ever.
        if let Some(Some(previous)) = self.lookups.insert(domain, peer) {
            self.peer_lookup_done(&previous);
        }
    }

    /// The lookup for `domain` ended: its slot and its peer's count are free.
    fn lookup_ended(&mut self, domain: &str) {
        if let Some(Some(peer)) = self.lookups.remove(domain) {
            self.peer_lookup_done(&peer);
        }
    }

    fn peer_lookup_done(&mut self, peer: &PeerIdentity) {
        super::limits::decrement(&mut self.lookups_by_peer, peer);
    }

    /// Discovered (unlisted) partners get at most `federation.discovered_rate` requests per second per From
    /// domain; beyond it, `503` with `Retry-After: 1`. ACKs are never limited (they complete
    /// transactions already admitted).
    fn rate_limit(&mut self, now: Instant, m: &Message) -> Option<Message> {
        if m.method() == Some(&Method::Ack) {
            return None;
        }
        let domain = from_domain(m)?;
        if self.settings.federation.partner(&domain).is_some() {
            return None;
        }
        let rate = self.settings.federation.discovered_rate;
        if self.pool.take_token(&domain, now, rate) {
            return None;
        }
        Some(self.try_again(m, "Rate limit for discovered partners exceeded"))
    }

    /// The edge's refusals, each with a fresh To tag (RFC 3261 §8.2.6.2).
    fn reject(&mut self, request: &Message, reject: &Reject) -> Message {
        let tag = self.new_tag();
        reject.response_to(request, Some(&tag))
    }

    /// `503 <reason>` with `Retry-After: 1` (RFC 3261 §21.5.4) to `request`.
    fn try_again(&mut self, request: &Message, reason: &str) -> Message {
        let reject = Reject::new(status::SERVICE_UNAVAILABLE)
            .reason(reason)
            .retry_after(1);
        self.reject(request, &reject)
    }

    /// Answers server transaction `tx` with 503 and `Retry-After`: the layer above has more
    /// requests waiting than it should (load shedding; `server::MAX_PENDING_REQUESTS`).
    pub fn shed(&mut self, now: Instant, tx: TxId, request: &Message) -> Vec<CoreOutput> {
        let resp = self.try_again(request, "Overloaded, try again");
        self.respond(now, tx, resp)
    }

    /// The profile's answer to OPTIONS: 200 with Allow, Supported, Accept and the session-mode
    /// IM SDP.
    pub fn options_response(&mut self, request: &Message) -> Message {
        let tag = self.new_tag();
        let mut resp = Message::response_to(request, status::OK, None, Some(&tag));
        resp.push_header("Allow", ALLOW);
        resp.push_header("Supported", SUPPORTED);
        resp.push_header(
            "Accept",
            "application/sdp, application/pidf+xml, text/plain",
        );
        resp.push_header(
            "Contact",
            &name_addr(
                None,
                &format!("sip:{};transport=tls", self.settings.public_fqdn),
                &[],
            ),
        );
        let sdp = Sdp::message_offer(&self.settings.public_fqdn, 0).to_string();
        resp.set_body(Some("application/sdp"), sdp.into_bytes());
        resp
    }

    /// A connection's partner for log lines: its certificate's names (`-` when it is gone).
    fn peer_label(&self, conn: ConnId) -> String {
        self.pool
            .identity(conn)
            .map_or_else(|| "-".to_owned(), PeerIdentity::label)
    }

    fn drain(&mut self, now: Instant) -> Vec<CoreOutput> {
        let pending: Vec<Output> = std::iter::from_fn(|| self.transactions.poll_output()).collect();
        let mut out = Vec::with_capacity(pending.len());
        for o in pending {
            match o {
                Output::Transmit { conn, message } => out.push(CoreOutput::Send {
                    conn,
                    bytes: message.to_bytes(),
                }),
                Output::Event(TxEvent::Request { tx, conn, request }) => {
                    // RFC 3261 §8.2.2.3: before any layer above (or OPTIONS) acts on it.
                    if let Err(reject) = check_require(&request) {
                        tracing::debug!(
                            conn,
                            domain = %self.peer_label(conn),
                            method = %request.method().map(|m| m.as_str()).unwrap_or(""),
                            unsupported = reject
                                .headers
                                .iter()
                                .find(|(n, _)| *n == "Unsupported")
                                .map_or("", |(_, v)| v.as_str()),
                            status = reject.status,
                            "request refused: it requires an extension this bridge lacks"
                        );
                        let resp = self.reject(&request, &reject);
                        let _ = self.transactions.respond(now, tx, resp);
                        out.extend(self.drain(now));
                    } else if request.method() == Some(&Method::Options) {
                        let resp = self.options_response(&request);
                        let _ = self.transactions.respond(now, tx, resp);
                        out.extend(self.drain(now));
                    } else {
                        let asserted = Asserted::of(&request);
                        out.push(CoreOutput::Request {
                            tx,
                            conn,
                            request,
                            asserted,
                        })
                    }
                }
                Output::Event(e) => {
                    let ended = match &e {
                        TxEvent::Response { tx, is_final, .. } => is_final.then_some(*tx),
                        TxEvent::Timeout { tx }
                        | TxEvent::GaveUp { tx }
                        | TxEvent::TransportError { tx } => Some(*tx),
                        _ => None,
                    };
                    if let Some(conn) = ended.and_then(|tx| self.client_conns.remove(&tx)) {
                        self.pool.add_pending(conn, -1);
                    }
                    let sent = ended.and_then(|tx| self.by_domain.remove(&tx));
                    if let (
                        Some(sent),
                        TxEvent::Response {
                            tx, conn, response, ..
                        },
                    ) = (sent, &e)
                    {
                        if response.status() == Some(status::SERVICE_UNAVAILABLE)
                            && self.retry_elsewhere(now, *tx, *conn, response, sent, &mut out)
                        {
                            continue;
                        }
                    }
                    out.push(CoreOutput::Event(e))
                }
            }
        }
        out
    }
}

/// `request` with a new top Via branch (the old one with `.r` added): the same request as a
/// new transaction (RFC 3263 §4.3). `None` if it has no branch.
fn rebranched(request: &Message) -> Option<Message> {
    let via = request.header("Via")?;
    let branch = request.top_via().ok()?.branch()?.to_owned();
    let new = via.replacen(
        &format!("branch={branch}"),
        &format!("branch={branch}.r"),
        1,
    );
    let mut m = request.clone();
    m.set_header("Via", &new);
    Some(m)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn core() -> EdgeCore {
        super::tests_support::core_with(1000, vec![])
    }

    fn req(method: &str, ruri: &str) -> Frame {
        let raw = format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK{method}\r\nMax-Forwards: 70\r\nFrom: <sip:joe@contoso.com>;tag=p\r\nTo: <{ruri}>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\nContact: <sip:joe@192.0.2.1:5061;transport=tls>\r\nContent-Length: 0\r\n\r\n"
        );
        Frame::Message(Message::parse(raw.as_bytes()).unwrap())
    }

    fn sent(o: &CoreOutput) -> Message {
        match o {
            CoreOutput::Send { bytes, .. } => Message::parse(bytes).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_message_with_a_refused_header_is_never_sent() {
        let mut c = core();
        let now = Instant::now();
        // A response the layer above built with a value the setter refused: a 500 goes out.
        let out = c.on_frame(now, 1, req("MESSAGE", "sip:alice@example.org"));
        let Some(CoreOutput::Request { tx, request, .. }) = out.last() else {
            panic!("{out:?}");
        };
        let mut ok = Message::response_to(request, 200, None, Some("t"));
        ok.push_header("Subject", "x\r\nInjected: 1");
        assert!(ok.header_error().is_some());
        let out = c.respond(now, *tx, ok);
        let r = sent(&out[0]);
        assert_eq!(r.status(), Some(500));
        assert_eq!(r.header("Subject"), None);
        assert_eq!(r.call_id().unwrap(), "c");
        // A request: undeliverable, with the refusal as the reason.
        let tx = c.tx_ids().next();
        let mut bad = Message::parse(
            "MESSAGE sip:bob@contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKx\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a\r\nTo: <sip:bob@contoso.com>\r\nCall-ID: o\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n".as_bytes(),
        )
        .unwrap();
        bad.push_header("Content-Language", "en\r\nX: y");
        let out = c.send_request(now, tx, bad, Route::Domain("contoso.com".into()));
        match &out[..] {
            [
                CoreOutput::Undeliverable {
                    tx: t,
                    why: Undeliverable::Invalid { reason },
                },
            ] => {
                assert_eq!(*t, tx);
                assert_eq!(
                    reason,
                    "Content-Language refused: control character U+000D at byte 2"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options_is_answered_by_the_core() {
        let mut c = core();
        let out = c.on_frame(Instant::now(), 1, req("OPTIONS", "sip:sip.example.org"));
        assert_eq!(out.len(), 1);
        let r = sent(&out[0]);
        assert_eq!(r.status(), Some(200));
        assert_eq!(r.header("Supported"), Some(SUPPORTED));
        assert!(r.contact().unwrap().is_some());
        let sdp = Sdp::parse(r.body()).unwrap();
        assert!(sdp.has_message_session());
    }

    #[test]
    fn invite_gets_trying_then_goes_up_and_ping_gets_pong() {
        let mut c = core();
        let out = c.on_frame(Instant::now(), 1, req("INVITE", "sip:alice@example.org"));
        assert_eq!(sent(&out[0]).status(), Some(100));
        assert!(
            matches!(&out[1], CoreOutput::Request { conn: 1, request, .. } if request.method() == Some(&Method::Invite))
        );
        assert_eq!(
            c.on_frame(Instant::now(), 1, Frame::Ping),
            vec![CoreOutput::Send {
                conn: 1,
                bytes: PONG.to_vec()
            }]
        );
        let a = c.new_tag();
        let b = c.new_tag();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }

    /// A request of `method` carrying `extra` header lines, with its own branch.
    fn req_with(method: &str, branch: &str, extra: &str) -> Frame {
        let raw = format!(
            "{method} sip:alice@example.org SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nFrom: <sip:joe@contoso.com>;tag=p\r\nTo: <sip:alice@example.org>\r\nCall-ID: {branch}\r\nCSeq: 1 {method}\r\nContact: <sip:joe@192.0.2.1:5061;transport=tls>\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Frame::Message(Message::parse(raw.as_bytes()).unwrap())
    }

    #[test]
    fn an_unknown_required_extension_gets_420_before_any_layer_sees_the_request() {
        let mut c = core();
        let now = Instant::now();
        // RFC 3261 §8.2.2.3, Lync's multiparty INVITE: 100, then 420 naming the tag; nothing
        // goes up.
        let out = c.on_frame(
            now,
            1,
            req_with(
                "INVITE",
                "mp",
                "Require: com.microsoft.rtc-multiparty\r\nSupported: ms-sender\r\n",
            ),
        );
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(sent(&out[0]).status(), Some(100));
        let r = sent(&out[1]);
        assert_eq!((r.status(), r.reason()), (Some(420), Some("Bad Extension")));
        assert_eq!(
            r.header("Unsupported"),
            Some("com.microsoft.rtc-multiparty")
        );
        assert!(r.to().unwrap().tag().is_some());
        // Exactly the unknown tags, each once, over several lines; a repeat is refused again.
        let frame = req_with(
            "SUBSCRIBE",
            "batch",
            "Event: presence\r\nRequire: adhoclist, categoryList\r\nRequire: ADHOCLIST, eventlist\r\n",
        );
        let out = c.on_frame(now, 1, frame.clone());
        assert_eq!(out.len(), 1, "{out:?}");
        let r = sent(&out[0]);
        assert_eq!(r.status(), Some(420));
        assert_eq!(
            r.header("Unsupported"),
            Some("adhoclist, categoryList, eventlist")
        );
        let again = sent(&c.on_frame(now, 1, frame)[0]);
        assert_eq!(again.header("Unsupported"), r.header("Unsupported"));
        // OPTIONS too; REFER with Require gets 420, not the engine's 501.
        let out = c.on_frame(now, 1, req_with("OPTIONS", "o", "Require: foo\r\n"));
        assert_eq!(sent(&out[0]).status(), Some(420));
        let out = c.on_frame(
            now,
            1,
            req_with(
                "REFER",
                "r",
                "Refer-To: <sip:carol@contoso.com>\r\nRequire: com.microsoft.rtc-multiparty\r\n",
            ),
        );
        assert_eq!(sent(&out[0]).status(), Some(420));
        // An option tag that is not a token: the header is malformed.
        let out = c.on_frame(now, 1, req_with("MESSAGE", "t", "Require: a<b\r\n"));
        let r = sent(&out[0]);
        assert_eq!(r.status(), Some(400));
        assert_eq!(r.header("Unsupported"), None);
    }

    #[test]
    fn require_is_not_checked_on_benotify_and_proxy_require_is_not_read() {
        let mut c = core();
        let now = Instant::now();
        // [MS-SIP] §3.5: a BENOTIFY is never answered, whatever it requires ([MS-SIP] §4.4
        // batched BENOTIFYs carry `Require: eventlist`).
        let out = c.on_frame(
            now,
            1,
            req_with("BENOTIFY", "b", "Event: presence\r\nRequire: eventlist\r\n"),
        );
        assert!(
            matches!(&out[..], [CoreOutput::Request { request, .. }] if request.method() == Some(&Method::Benotify)),
            "{out:?}"
        );
        // RFC 3261 §20.29: Proxy-Require is for proxies; a user agent server ignores it.
        let out = c.on_frame(
            now,
            1,
            req_with(
                "SUBSCRIBE",
                "s",
                "Event: presence\r\nSupported: ms-benotify\r\nProxy-Require: ms-benotify\r\n",
            ),
        );
        assert!(matches!(&out[..], [CoreOutput::Request { .. }]), "{out:?}");
        // ACK and CANCEL (RFC 3261 §8.2.2.3: Require is ignored in them) never reach the check:
        // the transaction layer takes them.
        let out = c.on_frame(now, 1, req_with("INVITE", "i", ""));
        assert!(matches!(&out[1], CoreOutput::Request { .. }));
        let out = c.on_frame(now, 1, req_with("CANCEL", "i", "Require: foo\r\n"));
        assert_eq!(sent(&out[0]).status(), Some(200), "{out:?}");
    }

    #[test]
    fn refusals_carry_a_tag_and_the_reason() {
        let mut c = core();
        let out = c.on_frame(Instant::now(), 1, req("MESSAGE", "sip:bob@fabrikam.com"));
        let r = sent(&out[0]);
        assert_eq!(
            (r.status(), r.reason()),
            (Some(404), Some("Domain fabrikam.com is not served here"))
        );
        assert!(r.to().unwrap().tag().is_some());
        // An unknown connection has no identity: every From domain is refused.
        let out = c.on_frame(Instant::now(), 9, req("MESSAGE", "sip:alice@example.org"));
        assert_eq!(sent(&out[0]).status(), Some(403));
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod verification_tests {
    use super::tests_support::*;
    use super::*;
    use crate::config::VerificationLevel;

    fn asserted_toward(c: &mut EdgeCore, to: &str, n: u32) -> Option<String> {
        let raw = format!(
            "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKv{n}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a\r\nTo: <{to}>\r\nCall-ID: v{n}\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
        );
        let request = Message::parse(raw.as_bytes()).unwrap();
        let tx = c.tx_ids().next();
        let out = c.send_request(Instant::now(), tx, request, Route::Connection(1));
        match out.as_slice() {
            [CoreOutput::Send { conn: 1, bytes }] => Message::parse(bytes)
                .unwrap()
                .header(VERIFICATION_HEADER)
                .map(str::to_owned),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn outbound_requests_assert_the_configured_level() {
        let mut c = core_with(20, vec!["fabrikam.com"]);
        assert_eq!(
            asserted_toward(&mut c, "sip:joe@contoso.com", 1).as_deref(),
            Some("ms-source-verification-level=verified")
        );
        let mut settings = c.settings.clone();
        settings.federation.verification_level = VerificationLevel::Unverified;
        settings.federation.partners[0].verification_level = Some(VerificationLevel::Omit);
        c.reconfigure(settings);
        assert_eq!(
            asserted_toward(&mut c, "sip:joe@contoso.com", 2).as_deref(),
            Some("ms-source-verification-level=unverified")
        );
        assert_eq!(asserted_toward(&mut c, "sip:ann@fabrikam.com", 3), None);
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod rate_tests {
    use super::tests_support::*;
    use super::*;

    #[test]
    fn discovered_partners_are_rate_limited_listed_ones_are_not() {
        let mut c = core_with(3, vec!["fabrikam.com"]);
        let t0 = Instant::now();
        let statuses: Vec<u16> = (0..5)
            .map(|i| {
                let out = c.on_frame(t0, 1, options_from("sip:joe@contoso.com", i));
                status_of(&out[0])
            })
            .collect();
        assert_eq!(statuses, [200, 200, 200, 503, 503]);
        // One second later the bucket is full again.
        let out = c.on_frame(
            t0 + std::time::Duration::from_secs(1),
            1,
            options_from("sip:joe@contoso.com", 9),
        );
        assert_eq!(status_of(&out[0]), 200);
        // A listed partner is not limited.
        for i in 0..10 {
            let out = c.on_frame(t0, 2, options_from("sip:ann@fabrikam.com", 100 + i));
            assert_eq!(status_of(&out[0]), 200);
        }
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::config::{DefaultPolicy, Partner, PartnerPolicy};

    pub fn core_with(rate: u32, partners: Vec<&str>) -> EdgeCore {
        let mut c = EdgeCore::new(
            CoreSettings {
                served: ServedDomains {
                    local_domains: vec!["example.org".into()],
                    public_fqdn: "sip.example.org".into(),
                },
                federation: FederationConfig {
                    default_policy: DefaultPolicy::Allow,
                    partners: partners
                        .into_iter()
                        .map(|d| Partner {
                            domain: d.into(),
                            policy: PartnerPolicy::Allow,
                            edge: None,
                            verification_level: None,
                        })
                        .collect(),
                    discovered_rate: rate,
                    verification_level: crate::config::VerificationLevel::Verified,
                },
                public_fqdn: "sip.example.org".into(),
                pool: crate::edge::pool::PoolLimits::default(),
                limits: EdgeLimits::default(),
            },
            7,
        );
        c.connected(
            1,
            PeerIdentity::from_names(["sip.contoso.com", "contoso.com"]),
        )
        .unwrap();
        c.connected(2, PeerIdentity::from_names(["fabrikam.com"]))
            .unwrap();
        c
    }

    pub fn options_from(from: &str, n: u32) -> Frame {
        let raw = format!(
            "OPTIONS sip:sip.example.org SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bKr{n}\r\nMax-Forwards: 70\r\nFrom: <{from}>;tag=p\r\nTo: <sip:sip.example.org>\r\nCall-ID: r{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        Frame::Message(Message::parse(raw.as_bytes()).unwrap())
    }

    pub fn status_of(o: &CoreOutput) -> u16 {
        match o {
            CoreOutput::Send { bytes, .. } => Message::parse(bytes).unwrap().status().unwrap_or(0),
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod outbound_tests {
    use super::tests_support::*;
    use super::*;
    use crate::config::PartnerPolicy;

    fn request(to: &str, branch: &str) -> Message {
        let raw = format!(
            "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a\r\nTo: <{to}>\r\nCall-ID: {branch}\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
        );
        Message::parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn refused_routes_are_reported_not_dropped() {
        let mut c = core_with(20, vec!["fabrikam.com"]);
        c.settings.federation.partners[0].policy = PartnerPolicy::Block;
        let ids = c.tx_ids();
        let now = Instant::now();
        let cases = [
            (
                Route::Domain("example.org".into()),
                Undeliverable::Local {
                    domain: "example.org".into(),
                },
            ),
            (
                Route::Domain("Fabrikam.COM.".into()),
                Undeliverable::Blocked {
                    domain: "fabrikam.com".into(),
                },
            ),
            // In a dialog with a blocked domain (blocked since): not sent either.
            (
                Route::Connection(42),
                Undeliverable::Blocked {
                    domain: "fabrikam.com".into(),
                },
            ),
        ];
        let udp = request("sip:x@contoso.com", "u1")
            .to_bytes()
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
            .replace("SIP/2.0/TLS", "SIP/2.0/UDP");
        let tx = ids.next();
        let out = c.send_request(
            now,
            tx,
            Message::parse(udp.as_bytes()).unwrap(),
            Route::Domain("contoso.com".into()),
        );
        assert!(matches!(
            &out[..],
            [CoreOutput::Undeliverable {
                why: Undeliverable::Invalid { .. },
                ..
            }]
        ));
        for (i, (route, expected)) in cases.into_iter().enumerate() {
            let tx = ids.next();
            let out = c.send_request(
                now,
                tx,
                request("sip:x@fabrikam.com", &format!("r{i}")),
                route,
            );
            assert_eq!(out, [CoreOutput::Undeliverable { tx, why: expected }]);
        }
        let tx = ids.next();
        let out = c.send_request(
            now,
            tx,
            request("sip:x@contoso.com", "g1"),
            Route::Connection(42),
        );
        let gone = Undeliverable::ConnectionGone { conn: 42 };
        assert_eq!(out, [CoreOutput::Undeliverable { tx, why: gone }]);
        // A dialog's connection closing: its next request is not rerouted.
        let out = c.disconnected(now, 1);
        assert_eq!(out[0], CoreOutput::ConnectionLost { conn: 1 });
        let tx = ids.next();
        let out = c.send_request(
            now,
            tx,
            request("sip:bob@contoso.com", "d1"),
            Route::Connection(1),
        );
        assert_eq!(
            out,
            [CoreOutput::Undeliverable {
                tx,
                why: Undeliverable::ConnectionGone { conn: 1 }
            }]
        );
    }

    #[test]
    fn a_certificate_naming_the_srv_target_is_authorized_after_the_lookup() {
        let mut c = core_with(20, vec![]);
        c.connected(3, PeerIdentity::from_names(["edge.hosting.example"]))
            .unwrap();
        let now = Instant::now();
        let raw = "MESSAGE sip:alice@example.org SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.9:5061;branch=z9hG4bKs1\r\nMax-Forwards: 70\r\nFrom: <sip:joe@woodgrove.com>;tag=w\r\nTo: <sip:alice@example.org>\r\nCall-ID: s1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
        let frame = || Frame::Message(Message::parse(raw.as_bytes()).unwrap());
        assert_eq!(
            c.on_frame(now, 3, frame()),
            [CoreOutput::Resolve {
                domain: "woodgrove.com".into()
            }]
        );
        let target = SrvTarget {
            priority: 0,
            weight: 0,
            port: 5061,
            target: "edge.hosting.example".into(),
        };
        let out = c.resolved(
            now,
            "woodgrove.com",
            Ok(vec![target]),
            now + std::time::Duration::from_secs(60),
        );
        assert!(
            matches!(&out[..], [CoreOutput::Request { conn: 3, .. }]),
            "{out:?}"
        );
        // Another domain whose SRV does not name it: 403 after the lookup.
        let other = raw
            .replace("woodgrove.com", "tailspin.com")
            .replace("s1", "s2");
        let out = c.on_frame(
            now,
            3,
            Frame::Message(Message::parse(other.as_bytes()).unwrap()),
        );
        assert_eq!(
            out,
            [CoreOutput::Resolve {
                domain: "tailspin.com".into()
            }]
        );
        let out = c.resolved(now, "tailspin.com", Err("no SRV".into()), now);
        assert_eq!(status_of(&out[0]), 403);
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod unavailable_tests {
    use super::tests_support::*;
    use super::*;
    use std::time::Duration;

    fn message(n: u32) -> Message {
        let raw = format!(
            "MESSAGE sip:joe@northwind.example SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKn{n}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a\r\nTo: <sip:joe@northwind.example>\r\nCall-ID: n{n}\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
        );
        Message::parse(raw.as_bytes()).unwrap()
    }

    fn targets(hosts: &[&str]) -> Result<Vec<SrvTarget>, String> {
        Ok(hosts
            .iter()
            .enumerate()
            .map(|(i, h)| SrvTarget {
                priority: i as u16,
                weight: 0,
                port: 5061,
                target: (*h).into(),
            })
            .collect())
    }

    /// Sends `message(n)`, brings every connection it asks for up, and returns the connection
    /// the MESSAGE went out on and the message as sent.
    fn send(c: &mut EdgeCore, now: Instant, tx: TxId, n: u32) -> Vec<CoreOutput> {
        let mut out = c.send_request(
            now,
            tx,
            message(n),
            Route::Domain("northwind.example".into()),
        );
        settle(c, now, &mut out);
        out
    }

    fn settle(c: &mut EdgeCore, now: Instant, out: &mut Vec<CoreOutput>) {
        let mut i = 0;
        while i < out.len() {
            let more = match &out[i] {
                CoreOutput::Connect { conn, edge, .. } => {
                    c.outbound_up(now, *conn, PeerIdentity::from_names([edge.host.as_str()]))
                }
                _ => Vec::new(),
            };
            out.extend(more);
            i += 1;
        }
    }

    fn sent(out: &[CoreOutput]) -> Vec<(ConnId, Message)> {
        out.iter()
            .filter_map(|o| match o {
                CoreOutput::Send { conn, bytes } => Some((*conn, Message::parse(bytes).unwrap())),
                _ => None,
            })
            .collect()
    }

    fn connects(out: &[CoreOutput]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                CoreOutput::Connect { edge, .. } => Some(edge.host.clone()),
                _ => None,
            })
            .collect()
    }

    fn service_unavailable(request: &Message, retry_after: Option<&str>) -> Frame {
        let mut r = Message::response_to(request, 503, None, Some("t"));
        if let Some(v) = retry_after {
            r.push_header("Retry-After", v);
        }
        Frame::Message(r)
    }

    /// RFC 3261 §21.5.4: "A client (proxy or UAC) receiving a 503 (Service Unavailable) SHOULD
    /// attempt to forward the request to an alternate server. It SHOULD NOT forward any other
    /// requests to that server for the duration specified in the Retry-After header field, if
    /// present." RFC 3263 §4.3: a 503 moves on to the next element, as a new transaction.
    #[test]
    fn a_503_with_retry_after_moves_the_request_to_the_next_edge_and_avoids_the_first() {
        let mut c = core_with(20, vec![]);
        let now = Instant::now();
        let ids = c.tx_ids();
        let tx = ids.next();
        let out = c.send_request(
            now,
            tx,
            message(1),
            Route::Domain("northwind.example".into()),
        );
        assert_eq!(
            out,
            [CoreOutput::Resolve {
                domain: "northwind.example".into()
            }]
        );
        let mut out = c.resolved(
            now,
            "northwind.example",
            targets(&["a.northwind.example", "b.northwind.example"]),
            now + Duration::from_secs(3600),
        );
        settle(&mut c, now, &mut out);
        assert_eq!(connects(&out), ["a.northwind.example"]);
        let [(conn_a, first)] = &sent(&out)[..] else {
            panic!("{out:?}")
        };
        // 503 Retry-After: 120 from a: not passed up; the same request goes to b as a new
        // transaction (new branch), under the same id.
        let mut out = c.on_frame(now, *conn_a, service_unavailable(first, Some("120")));
        settle(&mut c, now, &mut out);
        assert!(
            !out.iter().any(|o| matches!(o, CoreOutput::Event(_))),
            "{out:?}"
        );
        assert_eq!(connects(&out), ["b.northwind.example"]);
        let [(conn_b, again)] = &sent(&out)[..] else {
            panic!("{out:?}")
        };
        assert_ne!(conn_b, conn_a);
        assert_eq!(again.top_via().unwrap().branch(), Some("z9hG4bKn1.r"));
        assert_eq!(again.call_id().unwrap(), "n1");
        let out = c.on_frame(
            now,
            *conn_b,
            Frame::Message(Message::response_to(again, 200, None, Some("t"))),
        );
        assert!(matches!(
            &out[..],
            [CoreOutput::Event(TxEvent::Response { tx: t, is_final: true, .. })] if *t == tx
        ));
        // For the next 120 s, new requests avoid a (its connection is up but not used).
        for (n, at) in [(2, 1), (3, 119)] {
            let out = send(&mut c, now + Duration::from_secs(at), ids.next(), n);
            assert_eq!(sent(&out)[0].0, *conn_b, "{out:?}");
        }
        // A 503 from b too (the retry is not retried): passed up, and with both edges
        // avoided a new request fails with the reason.
        let tx = ids.next();
        let out = send(&mut c, now, tx, 4);
        let (_, m) = &sent(&out)[0];
        let out = c.on_frame(now, *conn_b, service_unavailable(m, Some("30")));
        assert!(matches!(
            &out[..],
            [CoreOutput::Event(TxEvent::Response { .. })]
        ));
        let tx = ids.next();
        let out = send(&mut c, now, tx, 5);
        match &out[..] {
            [
                CoreOutput::Undeliverable {
                    tx: t,
                    why: Undeliverable::Unreachable { reason, .. },
                },
            ] => {
                assert_eq!(*t, tx);
                assert!(reason.contains("503"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // After b's 30 s, b is used again (a's 120 s not yet over).
        let out = send(&mut c, now + Duration::from_secs(31), ids.next(), 6);
        assert_eq!(sent(&out)[0].0, *conn_b, "{out:?}");
        // After a's 120 s, a is usable again too.
        let out = send(&mut c, now + Duration::from_secs(121), ids.next(), 7);
        assert_eq!(sent(&out).len(), 1, "{out:?}");
    }

    #[test]
    fn a_503_inside_a_dialog_is_passed_up_and_avoids_nothing() {
        let mut c = core_with(20, vec![]);
        let now = Instant::now();
        let ids = c.tx_ids();
        c.send_request(
            now,
            ids.next(),
            message(1),
            Route::Domain("northwind.example".into()),
        );
        let mut out = c.resolved(
            now,
            "northwind.example",
            targets(&["a.northwind.example", "b.northwind.example"]),
            now + Duration::from_secs(60),
        );
        settle(&mut c, now, &mut out);
        let conn = sent(&out)[0].0;
        // A request in a dialog on that connection, answered 503: the layer above gets it.
        let tx = ids.next();
        let out = c.send_request(now, tx, message(2), Route::Connection(conn));
        let (_, m) = &sent(&out)[0];
        let out = c.on_frame(now, conn, service_unavailable(m, Some("600")));
        assert!(matches!(
            &out[..],
            [CoreOutput::Event(TxEvent::Response { tx: t, .. })] if *t == tx
        ));
        // New requests still use that connection.
        let out = send(&mut c, now, ids.next(), 3);
        assert_eq!(sent(&out)[0].0, conn, "{out:?}");
    }

    #[test]
    fn a_503_with_no_other_edge_is_passed_up_and_its_edge_avoided_for_retry_after() {
        let mut c = core_with(20, vec![]);
        let now = Instant::now();
        let ids = c.tx_ids();
        c.send_request(
            now,
            ids.next(),
            message(1),
            Route::Domain("northwind.example".into()),
        );
        let mut out = c.resolved(
            now,
            "northwind.example",
            targets(&["a.northwind.example"]),
            now + Duration::from_secs(7200),
        );
        settle(&mut c, now, &mut out);
        let [(conn, first)] = &sent(&out)[..] else {
            panic!("{out:?}")
        };
        // A Retry-After of five hours counts as one (the cap).
        let out = c.on_frame(now, *conn, service_unavailable(first, Some("18000")));
        assert!(
            matches!(&out[..], [CoreOutput::Event(TxEvent::Response { response, .. })] if response.status() == Some(503))
        );
        let out = send(&mut c, now + Duration::from_secs(3599), ids.next(), 2);
        assert!(
            matches!(
                &out[..],
                [CoreOutput::Undeliverable {
                    why: Undeliverable::Unreachable { .. },
                    ..
                }]
            ),
            "{out:?}"
        );
        let out = send(&mut c, now + Duration::from_secs(3600), ids.next(), 3);
        assert_eq!(sent(&out)[0].0, *conn, "{out:?}");
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod limit_tests {
    use super::tests_support::*;
    use super::*;
    use std::time::Duration;

    fn with_limits(limits: EdgeLimits) -> EdgeCore {
        let mut c = core_with(20, vec![]);
        let mut settings = c.settings.clone();
        settings.limits = limits;
        c.reconfigure(settings);
        c
    }

    /// A request on `conn` from `user@domain` (whose certificate does not name it).
    fn from(domain: &str, n: u32) -> Frame {
        options_from(&format!("sip:joe@{domain}"), n)
    }

    fn response(out: &[CoreOutput]) -> Option<Message> {
        out.iter().find_map(|o| match o {
            CoreOutput::Send { bytes, .. } => Message::parse(bytes).ok(),
            _ => None,
        })
    }

    fn over(out: &[CoreOutput]) -> Vec<Limit> {
        out.iter()
            .filter_map(|o| match o {
                CoreOutput::OverLimit(o) => Some(o.limit),
                _ => None,
            })
            .collect()
    }

    fn resolves(out: &[CoreOutput]) -> usize {
        out.iter()
            .filter(|o| matches!(o, CoreOutput::Resolve { .. }))
            .count()
    }

    /// The SRV lookup of `domain` answers one target, `host`:5061, valid for `ttl_secs`.
    fn one_target(
        c: &mut EdgeCore,
        now: Instant,
        domain: &str,
        host: &str,
        ttl_secs: u64,
    ) -> Vec<CoreOutput> {
        let target = SrvTarget {
            priority: 0,
            weight: 0,
            port: 5061,
            target: host.into(),
        };
        c.resolved(
            now,
            domain,
            Ok(vec![target]),
            now + Duration::from_secs(ttl_secs),
        )
    }

    /// Requests waiting for their From domain's lookup: at most 64 per domain, 16 per lookup
    /// a peer may start (128 by default) and 4 per lookup slot in all (256), so that one peer
    /// cannot take every place. Each refusal is a 503 and one over-limit event.
    #[test]
    fn requests_held_for_lookups_are_bounded_per_domain_per_peer_and_in_total() {
        let mut c = with_limits(EdgeLimits::DEFAULT);
        let now = Instant::now();
        let mut n = 0;
        // Peer `conn` sends `count` requests from `domains` domains of its own; what was held,
        // and the limits named by the refusals.
        let mut send = |c: &mut EdgeCore, conn: ConnId, count: usize, domains: usize| {
            let (mut held, mut refused) = (0, Vec::new());
            for i in 0..count {
                n += 1;
                let out = c.on_frame(
                    now,
                    conn,
                    from(&format!("d{}.p{conn}.example", i % domains), n),
                );
                match response(&out) {
                    Some(r) => {
                        assert_eq!(r.status(), Some(503));
                        assert_eq!(r.reason(), Some("Verifying the peer's domain, try again"));
                        refused.extend(over(&out));
                    }
                    None => held += 1,
                }
            }
            (held, refused)
        };
        for conn in 3..=6 {
            let names = [format!("edge.p{conn}.example")];
            c.connected(conn, PeerIdentity::from_names(names)).unwrap();
        }
        let (held, refused) = send(&mut c, 3, 70, 1);
        assert_eq!(held, MAX_PARKED);
        assert_eq!(refused, vec![Limit::DnsLookupsPerPeer; 70 - MAX_PARKED]);
        let (held, refused) = send(&mut c, 4, 150, 5);
        assert_eq!(held, 8 * PARKED_PER_PEER_LOOKUP);
        assert_eq!(refused, vec![Limit::DnsLookupsPerPeer; 150 - held]);
        // 64 + 128 held: 64 more places in all.
        let (held, refused) = send(&mut c, 5, 150, 5);
        assert_eq!(held, 64 * PARKED_PER_LOOKUP - 64 - 128);
        assert_eq!(refused, vec![Limit::DnsLookups; 150 - held]);
        let (held, _) = send(&mut c, 6, 10, 5);
        assert_eq!(held, 0);
        assert_eq!(c.lookups_under_way(), 11);
        // A lookup's end gives its requests' places back.
        let _ = c.resolved(now, "d0.p3.example", Err("no SRV".into()), now);
        let p3 = PeerIdentity::from_names(["edge.p3.example"]);
        assert!(!c.parked_by_peer.contains_key(&p3));
        assert_eq!(c.parked_total, 64 * PARKED_PER_LOOKUP - 64);
        assert_eq!(send(&mut c, 6, 10, 5).0, 10);
    }

    #[test]
    fn dns_lookups_are_bounded_per_peer_and_in_total() {
        let mut c = with_limits(EdgeLimits {
            max_dns_lookups: 4,
            max_dns_lookups_per_peer: 2,
            ..EdgeLimits::DEFAULT
        });
        let now = Instant::now();
        for (conn, name) in [
            (3, "edge.a.attacker.example"),
            (4, "edge.b.attacker.example"),
            (5, "edge.c.attacker.example"),
            (6, "edge.a.attacker.example"),
        ] {
            c.connected(conn, PeerIdentity::from_names([name])).unwrap();
        }
        // Peer a, connection 3: two lookups start, the third request is answered 503 naming
        // the limit.
        assert_eq!(resolves(&c.on_frame(now, 3, from("d0.example", 0))), 1);
        assert_eq!(resolves(&c.on_frame(now, 3, from("d1.example", 1))), 1);
        let out = c.on_frame(now, 3, from("d2.example", 2));
        assert_eq!(over(&out), [Limit::DnsLookupsPerPeer]);
        assert_eq!(resolves(&out), 0);
        let r = response(&out).unwrap();
        assert_eq!(r.status(), Some(503));
        assert_eq!(
            r.reason(),
            Some("Too many DNS lookups under way (sip.max_dns_lookups_per_peer), try again")
        );
        assert_eq!(r.header("Retry-After"), Some("1"));
        // Its other connection shares the count.
        let out = c.on_frame(now, 6, from("d3.example", 3));
        assert_eq!(over(&out), [Limit::DnsLookupsPerPeer]);
        assert_eq!(resolves(&out), 0);
        // A domain already being looked up costs no slot: the request waits for the answer.
        let out = c.on_frame(now, 3, from("d0.example", 3));
        assert!(out.is_empty(), "{out:?}");
        // Peer b takes the last two slots; peer c finds none left in total.
        assert_eq!(resolves(&c.on_frame(now, 4, from("d4.example", 4))), 1);
        assert_eq!(resolves(&c.on_frame(now, 4, from("d5.example", 5))), 1);
        let out = c.on_frame(now, 5, from("d6.example", 6));
        assert_eq!(over(&out), [Limit::DnsLookups]);
        assert!(
            response(&out)
                .unwrap()
                .reason()
                .unwrap()
                .contains("(sip.max_dns_lookups)")
        );
        assert_eq!(c.lookups_under_way(), 4);
        // An answer frees its slot (and the connection's): both waiting requests are refused.
        let out = c.resolved(now, "d0.example", Err("no SRV".into()), now);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| status_of(o) == 403));
        assert_eq!(c.lookups_under_way(), 3);
        assert_eq!(resolves(&c.on_frame(now, 6, from("d7.example", 7))), 1);
        // The bridge's own request to a new domain waits for a slot, and gets the next one.
        let tx = c.tx_ids().next();
        let raw = "MESSAGE sip:bob@fabrikam.example SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKo1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a\r\nTo: <sip:bob@fabrikam.example>\r\nCall-ID: o1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
        let out = c.send_request(
            now,
            tx,
            Message::parse(raw.as_bytes()).unwrap(),
            Route::Domain("fabrikam.example".into()),
        );
        assert_eq!(over(&out), [Limit::DnsLookups]);
        assert_eq!(resolves(&out), 0);
        let out = c.resolved(now, "d1.example", Err("no SRV".into()), now);
        assert!(
            out.contains(&CoreOutput::Resolve {
                domain: "fabrikam.example".into()
            }),
            "{out:?}"
        );
        assert_eq!(c.lookups_under_way(), 4);
        // A closed connection's lookups still hold their global slots until they answer.
        let _ = c.disconnected(now, 4);
        assert_eq!(c.lookups_under_way(), 4);
    }

    /// A peer's lookups count against it until each ends, not only while the connection its
    /// request came on is open: one that closes its connection and opens another (or spreads
    /// its requests over many) gets no more lookups under way.
    #[test]
    fn dns_lookups_count_against_the_peer_until_they_end() {
        let mut c = with_limits(EdgeLimits {
            max_dns_lookups: 64,
            max_dns_lookups_per_peer: 2,
            ..EdgeLimits::DEFAULT
        });
        let now = Instant::now();
        let peer = || PeerIdentity::from_names(["edge.attacker.example"]);
        c.connected(3, peer()).unwrap();
        assert_eq!(resolves(&c.on_frame(now, 3, from("d0.example", 0))), 1);
        assert_eq!(resolves(&c.on_frame(now, 3, from("d1.example", 1))), 1);
        let _ = c.disconnected(now, 3);
        assert_eq!(c.lookups_under_way(), 2);
        // The same certificate on a new connection: refused while both lookups are under way.
        c.connected(4, peer()).unwrap();
        let out = c.on_frame(now, 4, from("d2.example", 2));
        assert_eq!(over(&out), [Limit::DnsLookupsPerPeer]);
        assert_eq!(resolves(&out), 0);
        // Forty connections do not make forty times the lookups.
        for conn in 10..50 {
            c.connected(conn, peer()).unwrap();
            let out = c.on_frame(now, conn, from(&format!("e{conn}.example"), conn as u32));
            assert_eq!(over(&out), [Limit::DnsLookupsPerPeer]);
        }
        assert_eq!(c.lookups_under_way(), 2);
        // One ends (the answer to its request goes to the closed connection); one more may
        // start.
        let _ = c.resolved(now, "d0.example", Err("no SRV".into()), now);
        assert_eq!(resolves(&c.on_frame(now, 4, from("d2.example", 3))), 1);
        assert_eq!(
            over(&c.on_frame(now, 4, from("d3.example", 4))),
            [Limit::DnsLookupsPerPeer]
        );
    }

    #[test]
    fn connections_are_limited_per_address_per_identity_and_in_total() {
        let mut c = with_limits(EdgeLimits {
            max_connections_per_address: 2,
            max_connections_per_identity: 2,
            max_connections: 3,
            ..EdgeLimits::DEFAULT
        });
        let now = Instant::now();
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let id = || PeerIdentity::from_names(["sip.fabrikam.com", "fabrikam.com"]);
        // (core_with's connections 1 and 2 were registered without an accept: not counted.)
        assert_eq!(c.connections(), (0, 0));
        assert!(c.accept(10, a).is_ok());
        assert!(c.accept(11, a).is_ok());
        let refused = c.accept(12, a).unwrap_err();
        assert_eq!(refused.limit, Limit::ConnectionsPerAddress);
        assert_eq!(refused.detail, "192.0.2.1");
        c.released(12);
        assert!(c.accept(12, b).is_ok());
        // Handshakes in progress are not in the total of 3.
        assert!(c.accept(13, b).is_ok());
        assert_eq!(c.connections(), (0, 4));
        assert!(c.connected(10, id()).is_ok());
        assert!(c.connected(11, id()).is_ok());
        let refused = c.connected(12, id()).unwrap_err();
        assert_eq!(refused.limit, Limit::ConnectionsPerIdentity);
        assert_eq!(refused.detail, "fabrikam.com,sip.fabrikam.com");
        // The refused one is not usable, and releasing it frees its place.
        assert!(!c.pool.is_up(12));
        c.released(12);
        assert!(
            c.connected(13, PeerIdentity::from_names(["sip.contoso.com"]))
                .is_ok()
        );
        assert_eq!(c.connections(), (3, 0));
        assert_eq!(c.accept(14, b).unwrap_err().limit, Limit::Connections);
        let _ = c.disconnected(now, 13);
        assert_eq!(c.connections(), (2, 0));
        assert!(c.accept(13, b).is_ok());
        assert!(
            c.connected(13, PeerIdentity::from_names(["sip.contoso.com"]))
                .is_ok()
        );
        // An outbound connection counts in the total: with the total reached, a request that
        // needs a new connection fails at once, naming the limit.
        let tx = c.tx_ids().next();
        let raw = "MESSAGE sip:bob@contoso.example SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKq1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a\r\nTo: <sip:bob@contoso.example>\r\nCall-ID: q1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
        let request = || Message::parse(raw.as_bytes()).unwrap();
        let out = c.send_request(now, tx, request(), Route::Domain("contoso.example".into()));
        assert_eq!(over(&out), [Limit::Connections]);
        assert_eq!(resolves(&out), 0);
        match out.last() {
            Some(CoreOutput::Undeliverable {
                why: Undeliverable::Unreachable { reason, .. },
                ..
            }) => assert!(reason.contains("sip.max_connections"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // One place free: the next request opens one, and that counts.
        let _ = c.disconnected(now, 13);
        let tx = c.tx_ids().next();
        let out = c.send_request(now, tx, request(), Route::Domain("contoso.example".into()));
        assert_eq!(resolves(&out), 1);
        let out = one_target(&mut c, now, "contoso.example", "sip.contoso.example", 60);
        assert!(matches!(out[..], [CoreOutput::Connect { .. }]), "{out:?}");
        assert_eq!(c.connections(), (3, 0));
        assert_eq!(c.accept(14, b).unwrap_err().limit, Limit::Connections);
    }

    /// Anyone can open TCP connections and never finish (or never start) the TLS handshake.
    /// They take handshake slots (`sip.max_handshakes`), within the per-source limit (an IPv6
    /// /64 is one source), and nothing else: the bridge still connects out, and a partner
    /// that completes its handshake is kept.
    #[test]
    fn a_handshake_flood_leaves_room_for_outbound_and_partners() {
        let mut c = with_limits(EdgeLimits {
            max_handshakes: 5,
            max_connections_per_address: 3,
            max_connections_per_identity: 3,
            max_connections: 3,
            ..EdgeLimits::DEFAULT
        });
        let now = Instant::now();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        for (conn, addr) in [
            (10, "2001:db8::1"),
            (11, "2001:db8::2"),
            (12, "2001:db8::3"),
        ] {
            assert!(c.accept(conn, ip(addr)).is_ok());
        }
        let refused = c.accept(13, ip("2001:db8::ffff:4")).unwrap_err();
        assert_eq!(refused.limit, Limit::ConnectionsPerAddress);
        assert_eq!(refused.detail, "2001:db8::/64");
        c.released(13);
        assert!(c.accept(13, ip("198.51.100.1")).is_ok());
        assert!(c.accept(14, ip("::ffff:198.51.100.2")).is_ok());
        let refused = c.accept(15, ip("198.51.100.3")).unwrap_err();
        assert_eq!(refused.limit, Limit::Handshakes);
        assert_eq!(refused.detail, "198.51.100.3");
        c.released(15);
        assert_eq!(c.connections(), (0, 5));
        // Five handshakes under way, a total of 3: the bridge's own request opens a connection.
        let tx = c.tx_ids().next();
        let raw = "MESSAGE sip:bob@contoso.example SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKh1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a\r\nTo: <sip:bob@contoso.example>\r\nCall-ID: h1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
        let out = c.send_request(
            now,
            tx,
            Message::parse(raw.as_bytes()).unwrap(),
            Route::Domain("contoso.example".into()),
        );
        assert_eq!(resolves(&out), 1, "{out:?}");
        let out = one_target(&mut c, now, "contoso.example", "sip.contoso.example", 60);
        assert!(matches!(out[..], [CoreOutput::Connect { .. }]), "{out:?}");
        // A flood connection's handshake times out; a partner takes its slot and is kept.
        c.released(10);
        assert!(c.accept(20, ip("192.0.2.1")).is_ok());
        assert!(
            c.connected(20, PeerIdentity::from_names(["sip.fabrikam.com"]))
                .is_ok()
        );
        assert_eq!(c.connections(), (2, 4));
    }

    /// A stream of requests, each from a domain never seen before (an attacker's random From
    /// domains, each looked up and refused), over virtual time: what the core holds stays
    /// bounded by the domains used within `sip.pool_idle_secs`, not by every domain ever seen,
    /// and is all gone once they are idle.
    #[test]
    fn per_domain_state_is_pruned_when_idle() {
        let idle = Duration::from_secs(2);
        let mut c = with_limits(EdgeLimits {
            pool_idle: idle,
            ..EdgeLimits::DEFAULT
        });
        c.connected(3, PeerIdentity::from_names(["edge.attacker.example"]))
            .unwrap();
        let t0 = Instant::now();
        let step = Duration::from_millis(1);
        let domains: u32 = 20_000;
        let mut most = (0, 0);
        for i in 0..domains {
            let now = t0 + step * i;
            let domain = format!("r{i}.example");
            assert_eq!(resolves(&c.on_frame(now, 3, from(&domain, i))), 1);
            let out = c.resolved(now, &domain, Err("no SRV".into()), now);
            assert_eq!(status_of(&out[0]), 403);
            if c.poll_timeout().is_some_and(|t| t <= now) {
                let _ = c.handle_timeout(now);
            }
            let held = c.domains_held();
            most = (most.0.max(held.0), most.1.max(held.1));
        }
        // At 1,000 new domains a second, about 2 s worth are held (idle plus a check).
        let bound = 2 * 1000 * idle.as_secs() as usize + 16;
        assert!(
            most.0 <= bound && most.1 <= bound,
            "held {most:?}, bound {bound}"
        );
        // A discovered partner's rate bucket is per-domain state too.
        let mut now = t0 + step * domains;
        let out = c.on_frame(now, 1, options_from("sip:joe@contoso.com", domains));
        assert_eq!(status_of(&out[0]), 200);
        assert!(c.domains_held().0 >= 1);
        let end = now + idle * 3;
        while let Some(t) = c.poll_timeout().filter(|t| *t <= end) {
            now = now.max(t);
            let _ = c.handle_timeout(now);
        }
        assert_eq!(c.domains_held(), (0, 0));
        assert_eq!(c.lookups_under_way(), 0);
        assert!(c.parked.is_empty());
        assert_eq!((c.parked_total, c.parked_by_peer.len()), (0, 0));
    }

    #[test]
    fn domains_in_use_are_kept() {
        let idle = Duration::from_secs(2);
        let mut c = with_limits(EdgeLimits {
            pool_idle: idle,
            ..EdgeLimits::DEFAULT
        });
        let now = Instant::now();
        // A lookup under way is kept, however long it takes.
        c.connected(3, PeerIdentity::from_names(["edge.slow.example"]))
            .unwrap();
        assert_eq!(resolves(&c.on_frame(now, 3, from("slow.example", 1))), 1);
        let later = now + idle * 10;
        let _ = c.handle_timeout(later);
        assert_eq!(c.domains_held().0, 1);
        assert_eq!(c.lookups_under_way(), 1);
        let _ = c.resolved(later, "slow.example", Err("no SRV".into()), later);
        // An outbound connection keeps its domain while it is open.
        let tx = c.tx_ids().next();
        let raw = "MESSAGE sip:bob@kept.example SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKk1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a\r\nTo: <sip:bob@kept.example>\r\nCall-ID: k1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
        let _ = c.send_request(
            later,
            tx,
            Message::parse(raw.as_bytes()).unwrap(),
            Route::Domain("kept.example".into()),
        );
        let out = one_target(&mut c, later, "kept.example", "sip.kept.example", 3600);
        let Some(CoreOutput::Connect { conn, .. }) = out.last().cloned() else {
            panic!("{out:?}");
        };
        let _ = c.outbound_up(later, conn, PeerIdentity::from_names(["sip.kept.example"]));
        let much_later = later + idle * 10;
        while let Some(t) = c.poll_timeout().filter(|t| *t <= much_later) {
            let _ = c.handle_timeout(t);
        }
        // slow.example is gone; kept.example stays with its connection.
        assert_eq!(c.domains_held().0, 1);
        let _ = c.disconnected(much_later, conn);
        let end = much_later + idle * 3;
        while let Some(t) = c.poll_timeout().filter(|t| *t <= end) {
            let _ = c.handle_timeout(t.max(much_later));
        }
        assert_eq!(c.domains_held(), (0, 0));
    }
}
