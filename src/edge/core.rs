//! The edge's request handling, without I/O: what to answer to each frame from a peer, and
//! which connection each outbound request takes.
//!
//! Inbound: admission ([`crate::policy::admit_request`]; when a certificate names none of the
//! From domain, the domain's SRV targets are looked up first, RFC 5922 §7), the discovered-partner
//! rate limit, the transaction layer ([`crate::sip::transaction::Transactions`]), OPTIONS (the
//! profile: 200 with the `m=message 5060 sip/tcp *` SDP), malformed requests (400/513 naming
//! the problem) and keep-alive pongs. Requests for the layers above come out as
//! [`CoreOutput::Request`].
//!
//! Outbound: [`EdgeCore::send_request`] with a [`Route`] — a peer domain (the
//! [`crate::edge::pool::Pool`] picks or opens a connection: ≤ 4 per edge, ≤ 40 per network,
//! SRV order, backoff) or the connection a dialog lives on (dialog affinity: if it is gone the
//! request is [`Undeliverable::ConnectionGone`], never rerouted). Requests from local users
//! carry `Ms-asserted-verification-level` as the partner's setting says.

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use crate::config::FederationConfig;
use crate::edge::pool::{Action, EdgeAddr, Pool, PoolLimits};
use crate::policy::{PeerIdentity, ServedDomains, SrvTarget, admit_request};
use crate::random::SplitMix;
use crate::sip::builder::name_addr;
use crate::sip::framing::{Frame, PONG};
use crate::sip::message::{Message, Method};
use crate::sip::sdp::Sdp;
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
}

/// The least time a DNS answer (or its absence) is used.
const MIN_ANSWER_LIFETIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Most inbound requests held per domain while its SRV targets are looked up.
const MAX_PARKED: usize = 64;

/// A token bucket of `rate` tokens per second, holding at most `rate`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, rate: u32) -> bool {
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

/// An outbound request waiting for a connection.
#[derive(Debug)]
struct Waiting {
    tx: TxId,
    request: Message,
    deadline: Instant,
}

/// The domain of a request's From URI (lowercase), if it is a SIP URI with a domain.
fn from_domain(m: &Message) -> Option<String> {
    m.from()
        .ok()?
        .parsed_uri()
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
    /// Inbound requests waiting for their From domain's SRV lookup.
    parked: HashMap<String, Vec<(ConnId, Message)>>,
    buckets: HashMap<String, Bucket>,
    rng: SplitMix,
}

impl EdgeCore {
    /// `tag_seed` must be random (the I/O layer draws it); tags and jitter are derived from it.
    pub fn new(settings: CoreSettings, tag_seed: u64) -> EdgeCore {
        EdgeCore {
            pool: Pool::new(settings.pool),
            settings,
            transactions: Transactions::default(),
            client_conns: HashMap::new(),
            parked: HashMap::new(),
            buckets: HashMap::new(),
            rng: SplitMix::new(tag_seed),
        }
    }

    /// The id source for outbound requests ([`EdgeCore::send_request`]).
    pub fn tx_ids(&self) -> TxIds {
        self.transactions.ids()
    }

    /// New policy and limits (SIGHUP); connections and transactions stay.
    pub fn reconfigure(&mut self, settings: CoreSettings) {
        self.pool.set_limits(settings.pool);
        self.settings = settings;
    }

    /// A new authenticated inbound connection.
    pub fn connected(&mut self, conn: ConnId, identity: PeerIdentity) {
        self.pool.inbound(conn, identity);
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
        }
        out
    }

    /// Outbound connection `conn` could not be opened (`reason` for the log and the error).
    pub fn connect_failed(&mut self, now: Instant, conn: ConnId, reason: &str) -> Vec<CoreOutput> {
        let mut out = Vec::new();
        let jitter = self.rng.unit();
        if let Some(domain) = self.pool.failed(now, conn, jitter, reason) {
            self.pump(now, &domain, &mut out);
        }
        out
    }

    /// A connection ended.
    pub fn disconnected(&mut self, now: Instant, conn: ConnId) -> Vec<CoreOutput> {
        self.pool.closed(conn);
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
        self.pool.resolved(domain, result, valid_until);
        let mut out = Vec::new();
        for (conn, m) in self.parked.remove(domain).unwrap_or_default() {
            out.extend(self.admit(now, conn, m, false));
        }
        self.pump(now, domain, &mut out);
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
        self.assert_verification(&mut request);
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
                        self.pool.wait(
                            &domain,
                            Waiting {
                                tx,
                                request,
                                deadline,
                            },
                        );
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
        if message.header_error().is_some() {
            return None;
        }
        self.pool.is_up(conn).then(|| CoreOutput::Send {
            conn,
            bytes: message.to_bytes(),
        })
    }

    /// Adds `Ms-asserted-verification-level` to a request from a local user, as the target
    /// domain's partner setting says (unless the request has one already).
    fn assert_verification(&self, request: &mut Message) {
        let local = from_domain(request).is_some_and(|d| self.settings.served.contains(&d));
        if !local || request.header(VERIFICATION_HEADER).is_some() {
            return;
        }
        let Some(domain) = request.to().ok().and_then(|t| {
            t.parsed_uri()
                .as_sip()
                .map(|u| u.host_str().to_ascii_lowercase())
        }) else {
            return;
        };
        if let Some(value) = self
            .settings
            .federation
            .verification_level(&domain)
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
            Err(e) => out.push(CoreOutput::Undeliverable {
                tx,
                why: Undeliverable::Invalid {
                    reason: e.to_string(),
                },
            }),
        }
    }

    /// Carries out the pool's decisions for `domain`.
    fn pump(&mut self, now: Instant, domain: &str, out: &mut Vec<CoreOutput>) {
        let static_edge = self
            .settings
            .federation
            .partner(domain)
            .and_then(|p| p.edge.as_ref())
            .map(|e| EdgeAddr {
                host: e.host.clone(),
                port: e.port,
            });
        let actions = self
            .pool
            .pump(now, domain, static_edge, &self.settings.federation);
        for action in actions {
            match action {
                Action::Send { conn } => {
                    if let Some(w) = self.pool.take_waiting(domain) {
                        self.start_client(now, w.tx, conn, w.request, out);
                    }
                }
                Action::Resolve { domain } => out.push(CoreOutput::Resolve { domain }),
                Action::Connect { conn, domain, edge } => {
                    out.push(CoreOutput::Connect { conn, domain, edge })
                }
                Action::Fail { reason, no_route } => {
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

    /// The next timer deadline.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let waiting = self
            .pool
            .waiting_mut()
            .filter_map(|(_, q)| q.front().map(|w| w.deadline))
            .min();
        match (self.transactions.poll_timeout(), waiting) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Vec<CoreOutput> {
        self.transactions.handle_timeout(now);
        let mut out = Vec::new();
        for (domain, queue) in self.pool.waiting_mut() {
            while queue.front().is_some_and(|w| w.deadline <= now) {
                if let Some(w) = queue.pop_front() {
                    out.push(CoreOutput::Undeliverable {
                        tx: w.tx,
                        why: Undeliverable::Unreachable {
                            domain: domain.to_owned(),
                            reason: format!(
                                "no connection to {domain} within {} s",
                                (T1 * 64).as_secs()
                            ),
                        },
                    });
                }
            }
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
        if response.header_error().is_some() {
            response = response.with_status(500, "Server Internal Error");
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
                Some(m) if m.is_request() && m.method() != Some(&Method::Ack) => {
                    let tag = self.new_tag();
                    let resp = Message::response_to(
                        &m,
                        error.status(),
                        Some(&error.to_string()),
                        Some(&tag),
                    );
                    vec![CoreOutput::Send {
                        conn,
                        bytes: resp.to_bytes(),
                    }]
                }
                _ => Vec::new(),
            },
            Frame::Message(m) => self.on_message(now, conn, m),
        }
    }

    fn refuse(&mut self, conn: ConnId, m: &Message, status: u16, reason: &str) -> Vec<CoreOutput> {
        if m.method() == Some(&Method::Ack) {
            return Vec::new();
        }
        let tag = self.new_tag();
        let resp = Message::response_to(m, status, Some(reason), Some(&tag));
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
                if let (403, None, Some(d), true) = (refusal.status, &srv, &domain, may_park) {
                    if self.settings.federation.is_allowed(d) && self.pool.identity(conn).is_some()
                    {
                        return self.park(conn, d.clone(), m);
                    }
                }
                return self.refuse(conn, &m, refusal.status, &refusal.reason);
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

    /// Holds a request until its From domain's SRV targets are known.
    fn park(&mut self, conn: ConnId, domain: String, m: Message) -> Vec<CoreOutput> {
        let parked = self.parked.entry(domain.clone()).or_default();
        if parked.len() >= MAX_PARKED {
            let mut out = self.refuse(conn, &m, 503, "Verifying the peer's domain, try again");
            if let Some(CoreOutput::Send { bytes, .. }) = out.first_mut() {
                if let Ok(mut resp) = Message::parse(bytes) {
                    resp.push_header("Retry-After", "1");
                    *bytes = resp.to_bytes();
                }
            }
            return out;
        }
        parked.push((conn, m));
        if self.pool.start_resolving(&domain) {
            vec![CoreOutput::Resolve { domain }]
        } else {
            Vec::new()
        }
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
        let bucket = self.buckets.entry(domain).or_insert(Bucket {
            tokens: f64::from(rate.max(1)),
            last: now,
        });
        if bucket.take(now, rate) {
            return None;
        }
        Some(self.try_again(m, "Rate limit for discovered partners exceeded"))
    }

    /// `503 <reason>` with `Retry-After: 1` (RFC 3261 §21.5.4) to `request`.
    fn try_again(&mut self, request: &Message, reason: &str) -> Message {
        let tag = self.new_tag();
        let mut resp = Message::response_to(request, 503, Some(reason), Some(&tag));
        resp.push_header("Retry-After", "1");
        resp
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
        let mut resp = Message::response_to(request, 200, None, Some(&tag));
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

    fn drain(&mut self, now: Instant) -> Vec<CoreOutput> {
        let pending: Vec<Output> = std::iter::from_fn(|| self.transactions.poll_output()).collect();
        let mut out = Vec::with_capacity(pending.len());
        for o in pending {
            match o {
                Output::Transmit { conn, message } => out.push(CoreOutput::Send {
                    conn,
                    bytes: message.to_bytes(),
                }),
                Output::Event(TxEvent::Request { tx, request, .. })
                    if request.method() == Some(&Method::Options) =>
                {
                    let resp = self.options_response(&request);
                    let _ = self.transactions.respond(now, tx, resp);
                    out.extend(self.drain(now));
                }
                Output::Event(TxEvent::Request { tx, conn, request }) => {
                    let asserted = Asserted::of(&request);
                    out.push(CoreOutput::Request {
                        tx,
                        conn,
                        request,
                        asserted,
                    })
                }
                Output::Event(e) => {
                    let ended = match &e {
                        TxEvent::Response { tx, is_final, .. } => is_final.then_some(*tx),
                        TxEvent::Timeout { tx } | TxEvent::TransportError { tx } => Some(*tx),
                        _ => None,
                    };
                    if let Some(conn) = ended.and_then(|tx| self.client_conns.remove(&tx)) {
                        self.pool.add_pending(conn, -1);
                    }
                    out.push(CoreOutput::Event(e))
                }
            }
        }
        out
    }
}

#[cfg(test)]
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
            },
            7,
        );
        c.connected(
            1,
            PeerIdentity::from_names(["sip.contoso.com", "contoso.com"]),
        );
        c.connected(2, PeerIdentity::from_names(["fabrikam.com"]));
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
            (
                Route::Connection(42),
                Undeliverable::ConnectionGone { conn: 42 },
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
        c.connected(3, PeerIdentity::from_names(["edge.hosting.example"]));
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
