//! The component link: the bridge's XEP-0114 streams to the XMPP server (Prosody, ejabberd).
//!
//! XEP-0114 §2 (concepts): the bridge is an *external component*; the server routes every stanza
//! addressed to a component domain (`lcs.example.org` in gateway mode, each federated LCS domain
//! in direct mode) over that domain's TCP stream, and accepts any `from` within the domain on it.
//! XEP-0114 §3 (protocol flow): the component opens a `jabber:component:accept` stream to the
//! domain, the server answers with a stream header carrying an id, the component sends
//! `<handshake>` with hex SHA-1(id ‖ secret), and the server answers an empty `<handshake/>`, or
//! a stream error (`not-authorized` for a wrong secret, `host-unknown` and kin for a domain it
//! does not know as a component) and closes.
//!
//! [`start`] runs one task per component domain. Each task owns the domain's stream, and:
//!
//! - connects (TCP, stream header, handshake) within [`CONNECT_TIMEOUT`]; on any failure waits
//!   [`LinkSettings::backoff`] (exponential, with jitter) and tries again, forever;
//! - reads stanzas and hands them to the single [`LinkEvent`] receiver, *as they came* (the
//!   elements are not run through typed parsers on the way, so nothing is lost and a stanza
//!   xmpp-parsers would reject cannot end the stream); the channel is bounded, so a slow reader
//!   back-pressures the stream;
//! - writes what [`LinkHandle::send`] queued for the domain, in order. The queue is bounded
//!   ([`LinkSettings::queue_capacity`]); while the stream is down it fills, and once full
//!   `send` fails with [`LinkError::QueueFull`] (the SIP side answers 503) rather than growing;
//! - after [`LinkSettings::keepalive`] of silence from the server sends an XEP-0199 ping from the
//!   domain to itself (the server routes it back over the same stream); if nothing at all arrives
//!   for another `keepalive`, the stream is taken as dead and reconnected;
//! - reports [`LinkEvent::Up`] and [`LinkEvent::Down`] (with the reason) and logs them (INFO and
//!   WARN; a refused handshake is an ERROR naming `xmpp.secret` and the server's component
//!   configuration).
//!
//! Delivery: a stanza leaves the queue only in a batch whose write and flush succeeded; when a
//! write or flush fails (or takes longer than `keepalive`) the whole batch goes back to the front
//! of the queue and is sent again after reconnecting. So a stanza is never dropped by the link,
//! but the component protocol has no acknowledgements (XEP-0114 has no stream management): bytes
//! the kernel accepted just before the connection died may be lost, and a batch that failed
//! half-way may be delivered twice.
//!
//! The tasks stop when the [`LinkEvent`] receiver is dropped; after that `send` fails with
//! [`LinkError::Closed`].
//!
//! tokio-xmpp is used for the XML stream layer (`xmlstream`: framing, serialisation, read
//! timeouts) and xmpp-parsers for the handshake. Its `Component` type is not used: its `Stream`
//! ends (`None`) on a read soft-timeout (60 s of silence with `Timeouts::tight()`), on any stanza
//! its typed parsers reject (which any local user can send to the gateway), and on errors, and it
//! keeps the reason to itself; the link needs to tell these apart.

#![allow(clippy::disallowed_methods)] // I/O: the link's tasks read the clock

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use minidom::Element;
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_xmpp::xmlstream::{ReadError, StreamHeader, Timeouts, XmlStream, initiate_stream};
use tracing::{debug, error, info, warn};
use xmpp_parsers::component::Handshake;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::ping::Ping;

use super::NS_COMPONENT;
use crate::backoff::Backoff;

/// Namespace of stream-level elements (`<stream:error/>`), RFC 6120 §4.
const NS_STREAM: &str = "http://etherx.jabber.org/streams";
/// Namespace of stream error conditions, RFC 6120 §4.9.3.
const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// `id` prefix of the link's own keep-alive pings; stanzas with it never reach the engine.
const KEEPALIVE_ID_PREFIX: &str = "lcsb-keepalive-";

/// Limit for one connection attempt: TCP connect, stream header and handshake together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Capacity of the [`LinkEvent`] channel shared by all domains.
pub const EVENT_CAPACITY: usize = 4096;
/// Default outgoing queue per component domain (`xmpp.queue_capacity`'s default).
pub use crate::config::DEFAULT_QUEUE_CAPACITY;
/// Default silence before a keep-alive ping (and again before the stream counts as dead).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);
/// The link's default reconnect backoff: 0.5 s doubling up to 30 s (jitter then picks a point
/// in the upper half). The edge's default (300 s) suits remote partners; the XMPP server is
/// usually on the same host or LAN and back within seconds of a restart, so the link retries
/// at least every 30 s.
pub const DEFAULT_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(500),
    max: Duration::from_secs(30),
};
/// During [`start`], a domain whose handshake has been refused this many times in a row fails
/// the start at once (a wrong secret does not fix itself), without waiting out the timeout.
pub const STARTUP_AUTH_ATTEMPTS: u32 = 3;
/// Stanzas written per flush, before the stream is read again.
const WRITE_BATCH: usize = 64;

/// How the link connects. Build it with [`LinkSettings::from_config`] and adjust fields as
/// needed.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkSettings {
    /// Host of the XMPP server's component port (name or IP address, without brackets).
    pub host: String,
    /// The component port.
    pub port: u16,
    /// The XEP-0114 shared secret (not printed by `Debug`).
    pub secret: String,
    /// Component domains, one stream each (compared ASCII case-insensitively).
    pub domains: Vec<String>,
    /// Outgoing stanzas held per domain while its stream is down (default
    /// [`DEFAULT_QUEUE_CAPACITY`]); at least 1.
    pub queue_capacity: usize,
    /// Delay between reconnect attempts (default [`DEFAULT_BACKOFF`]).
    pub backoff: Backoff,
    /// Silence from the server before the link pings, and again before it gives the stream up
    /// (default [`DEFAULT_KEEPALIVE`]); also the limit for one write. At least 100 ms.
    pub keepalive: Duration,
}

impl LinkSettings {
    /// Settings for the `[xmpp]` section: its host, port, secret, component domains and queue
    /// capacity, with the defaults above for the rest.
    pub fn from_config(x: &crate::config::XmppConfig) -> LinkSettings {
        LinkSettings {
            host: x.host.clone(),
            port: x.port,
            secret: x.secret.expose().to_owned(),
            domains: x.component_domains.clone(),
            queue_capacity: x.queue_capacity,
            backoff: DEFAULT_BACKOFF,
            keepalive: DEFAULT_KEEPALIVE,
        }
    }

    /// `host:port` as written in log lines and errors (IPv6 literals bracketed).
    pub fn server_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn check(&self) -> Result<(), LinkError> {
        if self.domains.is_empty() {
            return Err(LinkError::Settings("no component domains".to_owned()));
        }
        if let Some(bad) = self.domains.iter().find(|d| domain_jid(d).is_none()) {
            return Err(LinkError::Settings(format!(
                "{bad:?} is not a component domain"
            )));
        }
        if self.queue_capacity == 0 {
            return Err(LinkError::Settings(
                "queue_capacity must be at least 1".to_owned(),
            ));
        }
        if self.keepalive < Duration::from_millis(100) {
            return Err(LinkError::Settings(
                "keepalive must be at least 100 ms".to_owned(),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for LinkSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("secret", &"***")
            .field("domains", &self.domains)
            .field("queue_capacity", &self.queue_capacity)
            .field("backoff", &self.backoff)
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

/// What the link reports, for all domains through one receiver.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// A stanza (`<message/>`, `<presence/>` or `<iq/>` in `jabber:component:accept`) received
    /// on any domain's stream, exactly as the server sent it.
    Stanza(Element),
    /// The domain's stream is authenticated and usable (first time or after a reconnect).
    Up {
        /// The component domain (lowercase).
        domain: String,
    },
    /// The domain's stream was lost; the link is reconnecting and queues meanwhile.
    Down {
        /// The component domain (lowercase).
        domain: String,
        /// Why, one line.
        reason: String,
    },
}

/// Why the link refused a stanza or could not start.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// The domain's outgoing queue is full (its stream is down or the server is not reading):
    /// the SIP side should answer 503.
    #[error(
        "the outgoing queue of component domain {domain} is full (the XMPP server is unreachable or not reading)"
    )]
    QueueFull {
        /// The component domain.
        domain: String,
    },
    /// The stanza's `from` is missing or not within one of the link's component domains.
    #[error("stanza from {0:?} is not from one of the bridge's component domains")]
    UnknownDomain(String),
    /// Not something the link sends: the root must be `message`, `presence` or `iq` in
    /// `jabber:component:accept`.
    #[error("not a stanza the link can send: {0}")]
    InvalidStanza(String),
    /// The server refused the component handshake.
    #[error(
        "the XMPP server refused component {domain}: {reason}; check xmpp.secret and that the server configures {domain} as an external component with that secret"
    )]
    Auth {
        /// The component domain.
        domain: String,
        /// What the server said (stream error condition, its meaning, the server's text), one
        /// line.
        reason: String,
    },
    /// The server could not be reached or the stream broke before the handshake completed.
    #[error(
        "cannot connect component {domain} to the XMPP server at {addr}: {reason}; check that the server runs and xmpp.host/xmpp.port name its component port"
    )]
    Connect {
        /// The component domain.
        domain: String,
        /// The server's `host:port`.
        addr: String,
        /// Why, one line.
        reason: String,
    },
    /// The settings cannot work.
    #[error("component link settings: {0}")]
    Settings(String),
    /// The link has stopped (its event receiver was dropped).
    #[error("the component link has stopped")]
    Closed,
}

/// Queues stanzas for the link; cheap to clone, usable from any thread, never blocks.
#[derive(Clone)]
pub struct LinkHandle {
    domains: Arc<HashMap<String, Arc<DomainState>>>,
}

impl fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.domains.keys().collect();
        names.sort();
        f.debug_struct("LinkHandle")
            .field("domains", &names)
            .finish()
    }
}

impl LinkHandle {
    /// Queues a stanza for the stream of the component domain its `from` attribute names
    /// (domain part of the JID); `Err(LinkError::QueueFull)` when that domain's queue is full,
    /// `Err(LinkError::UnknownDomain)` when `from` is not one of ours (or missing),
    /// `Err(LinkError::InvalidStanza)` when the root is not `message`, `presence` or `iq` in
    /// `jabber:component:accept`, `Err(LinkError::Closed)` when the link has stopped.
    ///
    /// Before it is queued the stanza is cleaned ([`super::clean_stanza`]: characters XML 1.0
    /// forbids removed from every text and attribute value), so whatever a peer put in it, the
    /// stream can carry it; one the serialiser would still refuse is
    /// `Err(LinkError::InvalidStanza)` and never reaches the queue.
    pub fn send(&self, mut stanza: Element) -> Result<(), LinkError> {
        if !matches!(stanza.name(), "message" | "presence" | "iq") || !stanza.has_ns(NS_COMPONENT) {
            return Err(LinkError::InvalidStanza(format!(
                "root element is {:?} in {:?}, expected message, presence or iq in {NS_COMPONENT}",
                stanza.name(),
                stanza.ns()
            )));
        }
        match super::clean_stanza(&mut stanza) {
            Ok(0) => {}
            Ok(n) => debug!(
                strings = n,
                "removed characters XML forbids from an outgoing stanza"
            ),
            Err(e) => return Err(LinkError::InvalidStanza(e.to_string())),
        }
        let from = stanza.attr("from").unwrap_or_default();
        let domain = domain_of(from).ok_or_else(|| LinkError::UnknownDomain(from.to_owned()))?;
        let state = self
            .domains
            .get(&domain)
            .ok_or_else(|| LinkError::UnknownDomain(from.to_owned()))?;
        if state.closed.load(Ordering::Acquire) {
            return Err(LinkError::Closed);
        }
        {
            let mut queue = state.queue();
            if queue.len() >= state.capacity {
                return Err(LinkError::QueueFull { domain });
            }
            queue.push_back(stanza);
        }
        state.wake.notify_one();
        Ok(())
    }

    /// Whether the domain's stream is up now.
    pub fn is_up(&self, domain: &str) -> bool {
        self.domains
            .get(&domain.to_ascii_lowercase())
            .is_some_and(|s| s.up.load(Ordering::Acquire))
    }

    /// Stanzas waiting in the domain's queue (0 for a domain that is not ours).
    pub fn queued(&self, domain: &str) -> usize {
        self.domains
            .get(&domain.to_ascii_lowercase())
            .map_or(0, |s| s.queue().len())
    }

    /// The component domains (lowercase, sorted).
    pub fn domains(&self) -> Vec<String> {
        let mut names: Vec<String> = self.domains.keys().cloned().collect();
        names.sort();
        names
    }
}

/// `domain` as a domain-only JID, `None` if it is not one.
fn domain_jid(domain: &str) -> Option<Jid> {
    let jid = Jid::new(domain).ok()?;
    (jid.node().is_none() && jid.resource().is_none()).then_some(jid)
}

/// The lowercase domain part of a JID, `None` if `jid` is not one.
fn domain_of(jid: &str) -> Option<String> {
    let jid = Jid::new(jid).ok()?;
    Some(jid.domain().as_str().to_ascii_lowercase())
}

/// One domain's shared state: the queue `send` fills and the task drains.
struct DomainState {
    queue: Mutex<VecDeque<Element>>,
    capacity: usize,
    wake: Notify,
    up: AtomicBool,
    closed: AtomicBool,
}

impl DomainState {
    fn new(capacity: usize) -> DomainState {
        DomainState {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            wake: Notify::new(),
            up: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Element>> {
        // The lock is never held across a panic-prone call; a poisoned queue is still a queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Up to `n` stanzas from the front.
    fn take_batch(&self, n: usize) -> Vec<Element> {
        let mut queue = self.queue();
        let n = n.min(queue.len());
        queue.drain(..n).collect()
    }

    /// Puts a batch that could not be written back at the front, in its order. The queue may
    /// exceed its capacity by up to one batch until it is written.
    fn put_back(&self, batch: Vec<Element>) {
        let mut queue = self.queue();
        for stanza in batch.into_iter().rev() {
            queue.push_front(stanza);
        }
    }
}

/// Connects every domain; returns once each has authenticated once (or fails with
/// [`LinkError::Auth`] / [`LinkError::Connect`] after `startup_timeout`, so `lcs-bridge run`
/// can exit non-zero with a clear message), then keeps reconnecting in the background until
/// the returned receiver is dropped.
///
/// A domain whose handshake is refused [`STARTUP_AUTH_ATTEMPTS`] times in a row fails the start
/// before the timeout. Connection failures are retried (with the backoff) until the timeout, so
/// the bridge may start while the XMPP server is still coming up. On failure every domain's
/// task is stopped.
pub async fn start(
    settings: LinkSettings,
    startup_timeout: Duration,
) -> Result<(LinkHandle, mpsc::Receiver<LinkEvent>), LinkError> {
    start_gated(settings, startup_timeout, None).await
}

/// May the link (re)connect now? Asked before every attempt; while it says no, the domain's
/// task waits (checking every [`GATE_POLL`]) and does not connect.
pub type ConnectGate = Arc<dyn Fn() -> bool + Send + Sync>;

/// How often a closed [`ConnectGate`] is asked again.
pub const GATE_POLL: Duration = Duration::from_millis(100);

/// [`start`] with a gate on every connection attempt: a bridge that has lost its leader lease
/// (docs/high-availability.md) must not connect the component again, where its connection would
/// replace the active bridge's.
pub async fn start_gated(
    settings: LinkSettings,
    startup_timeout: Duration,
    gate: Option<ConnectGate>,
) -> Result<(LinkHandle, mpsc::Receiver<LinkEvent>), LinkError> {
    settings.check()?;
    let deadline = tokio::time::Instant::now() + startup_timeout;
    let settings = Arc::new(settings);
    let mut domains = HashMap::new();
    let mut jids = HashMap::new();
    for domain in &settings.domains {
        let domain = domain.to_ascii_lowercase();
        let jid = domain_jid(&domain)
            .ok_or_else(|| LinkError::Settings(format!("{domain:?} is not a component domain")))?;
        jids.insert(domain.clone(), jid);
        domains
            .entry(domain)
            .or_insert_with(|| Arc::new(DomainState::new(settings.queue_capacity)));
    }
    let (events_tx, events_rx) = mpsc::channel(EVENT_CAPACITY);
    let (report_tx, mut report_rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (domain, state) in &domains {
        let Some(jid) = jids.remove(domain) else {
            continue;
        };
        let task = DomainTask {
            domain: domain.clone(),
            jid,
            settings: Arc::clone(&settings),
            state: Arc::clone(state),
            events: events_tx.clone(),
            startup: Some(report_tx.clone()),
            pings: AtomicU64::new(0),
            gate: gate.clone(),
        };
        tasks.push(tokio::spawn(task.run()));
    }
    drop(report_tx);
    drop(events_tx);

    let mut pending: HashSet<String> = domains.keys().cloned().collect();
    let mut last_error: HashMap<String, LinkError> = HashMap::new();
    let stop = |tasks: &[tokio::task::JoinHandle<()>]| {
        for t in tasks {
            t.abort();
        }
    };
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline, report_rx.recv()).await {
            Ok(Some(StartupReport::Up(domain))) => {
                pending.remove(&domain);
            }
            Ok(Some(StartupReport::Failed {
                domain,
                error,
                auth_refusals,
            })) => {
                if auth_refusals >= STARTUP_AUTH_ATTEMPTS {
                    stop(&tasks);
                    return Err(error);
                }
                last_error.insert(domain, error);
            }
            Ok(None) => {
                stop(&tasks);
                return Err(LinkError::Closed);
            }
            Err(_elapsed) => {
                stop(&tasks);
                let mut waiting: Vec<&String> = pending.iter().collect();
                waiting.sort();
                let first = waiting.first().map(|d| d.as_str()).unwrap_or_default();
                return Err(last_error
                    .remove(first)
                    .unwrap_or_else(|| LinkError::Connect {
                        domain: first.to_owned(),
                        addr: settings.server_addr(),
                        reason: format!("no connection within {startup_timeout:?} of start-up"),
                    }));
            }
        }
    }
    Ok((
        LinkHandle {
            domains: Arc::new(domains),
        },
        events_rx,
    ))
}

/// What a domain task tells [`start`] until its first successful handshake.
enum StartupReport {
    Up(String),
    Failed {
        domain: String,
        error: LinkError,
        auth_refusals: u32,
    },
}

/// Why a connection attempt failed.
#[derive(Debug)]
enum AttemptError {
    /// The server refused the handshake.
    Refused(String),
    /// Anything else (unreachable, broken stream, timeout).
    Failed(String),
}

/// Why an established stream ended.
enum Ended {
    /// The event receiver was dropped: stop for good.
    Stopped,
    /// The stream was lost: reconnect.
    Lost(String),
}

type Stream = XmlStream<BufStream<TcpStream>, Element>;

struct DomainTask {
    domain: String,
    /// `domain` as a JID (the keep-alive's from and to).
    jid: Jid,
    settings: Arc<LinkSettings>,
    state: Arc<DomainState>,
    events: mpsc::Sender<LinkEvent>,
    startup: Option<mpsc::UnboundedSender<StartupReport>>,
    pings: AtomicU64,
    gate: Option<ConnectGate>,
}

/// Streams that stayed up at least this long reset the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

impl DomainTask {
    async fn run(mut self) {
        let addr = self.settings.server_addr();
        // Consecutive rounds (failed attempts, or streams that did not stay up) before a wait.
        let mut failures: u32 = 0;
        let mut refusals: u32 = 0;
        loop {
            if let Some(gate) = &self.gate {
                let mut told = false;
                while !gate() {
                    if !told {
                        warn!(domain = %self.domain, "XMPP component link: not connecting (this bridge may not serve now)");
                        told = true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(GATE_POLL) => {}
                        () = self.events.closed() => return,
                    }
                }
            }
            let attempt = tokio::select! {
                r = tokio::time::timeout(CONNECT_TIMEOUT, self.connect()) => r
                    .unwrap_or_else(|_| Err(AttemptError::Failed(format!(
                        "no completed handshake within {CONNECT_TIMEOUT:?}"
                    )))),
                () = self.events.closed() => break,
            };
            match attempt {
                Ok(stream) => {
                    refusals = 0;
                    self.state.up.store(true, Ordering::Release);
                    info!(domain = %self.domain, server = %addr, "XMPP component link up");
                    if let Some(tx) = self.startup.take() {
                        let _ = tx.send(StartupReport::Up(self.domain.clone()));
                    }
                    let since = Instant::now();
                    let ended = match self
                        .events
                        .send(LinkEvent::Up {
                            domain: self.domain.clone(),
                        })
                        .await
                    {
                        Ok(()) => self.serve(stream).await,
                        Err(_) => Ended::Stopped,
                    };
                    self.state.up.store(false, Ordering::Release);
                    match ended {
                        Ended::Stopped => break,
                        Ended::Lost(reason) => {
                            warn!(
                                domain = %self.domain,
                                server = %addr,
                                queued = self.state.queue().len(),
                                "XMPP component link down: {reason}; reconnecting"
                            );
                            let down = LinkEvent::Down {
                                domain: self.domain.clone(),
                                reason,
                            };
                            if self.events.send(down).await.is_err() {
                                break;
                            }
                        }
                    }
                    failures = if since.elapsed() >= STABLE_AFTER {
                        0
                    } else {
                        failures.saturating_add(1)
                    };
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let error = match e {
                        AttemptError::Refused(reason) => {
                            refusals = refusals.saturating_add(1);
                            let error = LinkError::Auth {
                                domain: self.domain.clone(),
                                reason,
                            };
                            error!(server = %addr, "XMPP component link: {error}");
                            error
                        }
                        AttemptError::Failed(reason) => {
                            refusals = 0;
                            let error = LinkError::Connect {
                                domain: self.domain.clone(),
                                addr: addr.clone(),
                                reason,
                            };
                            warn!("XMPP component link: {error}");
                            error
                        }
                    };
                    if let Some(tx) = &self.startup {
                        let _ = tx.send(StartupReport::Failed {
                            domain: self.domain.clone(),
                            error,
                            auth_refusals: refusals,
                        });
                    }
                }
            }
            let delay = if failures == 0 {
                Duration::ZERO
            } else {
                self.settings
                    .backoff
                    .delay(failures - 1, jitter(&self.domain, failures))
            };
            debug!(domain = %self.domain, ?delay, "XMPP component link: next attempt");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.events.closed() => break,
            }
        }
        self.state.closed.store(true, Ordering::Release);
        self.state.up.store(false, Ordering::Release);
        debug!(domain = %self.domain, "XMPP component link stopped");
    }

    /// TCP connect, stream header, handshake (XEP-0114 §3).
    async fn connect(&self) -> Result<Stream, AttemptError> {
        open_stream(&self.settings, &self.domain).await
    }

    /// Runs an authenticated stream until it is lost or the link stops.
    async fn serve(&self, mut stream: Stream) -> Ended {
        // Whatever was queued while down goes first.
        if let Err(reason) = self.write_batch(&mut stream).await {
            return Ended::Lost(reason);
        }
        if !self.state.queue().is_empty() {
            self.state.wake.notify_one();
        }
        loop {
            tokio::select! {
                biased;
                () = self.events.closed() => {
                    close_quietly(&mut stream).await;
                    return Ended::Stopped;
                }
                item = stream.next() => match item {
                    Some(Ok(el)) => {
                        if let Some(ended) = self.received(el).await {
                            return ended;
                        }
                    }
                    Some(Err(ReadError::SoftTimeout)) => {
                        if let Err(reason) = self.ping(&mut stream).await {
                            return Ended::Lost(reason);
                        }
                    }
                    Some(Err(ReadError::ParseError(e))) => {
                        warn!(domain = %self.domain, "dropped an unparsable element: {e}");
                    }
                    Some(Err(ReadError::HardError(e))) => {
                        return Ended::Lost(describe_read_error(&e, self.settings.keepalive));
                    }
                    Some(Err(ReadError::StreamFooterReceived)) => {
                        close_quietly(&mut stream).await;
                        return Ended::Lost("the server closed the stream".to_owned());
                    }
                    None => return Ended::Lost("the server closed the connection".to_owned()),
                },
                () = self.state.wake.notified() => {
                    if let Err(reason) = self.write_batch(&mut stream).await {
                        return Ended::Lost(reason);
                    }
                    if !self.state.queue().is_empty() {
                        self.state.wake.notify_one();
                    }
                }
            }
        }
    }

    /// Handles one element read from an established stream; `Some` ends the stream.
    async fn received(&self, el: Element) -> Option<Ended> {
        if el.is("error", NS_STREAM) {
            return Some(Ended::Lost(format!(
                "stream error from the server: {}",
                describe_stream_error(&el)
            )));
        }
        let is_stanza =
            matches!(el.name(), "message" | "presence" | "iq") && el.ns() == NS_COMPONENT;
        if !is_stanza {
            debug!(domain = %self.domain, element = %el.name(), ns = %el.ns(), "ignored a non-stanza element");
            return None;
        }
        if el.name() == "iq"
            && el
                .attr("id")
                .is_some_and(|id| id.starts_with(KEEPALIVE_ID_PREFIX))
        {
            // Our own keep-alive ping, routed back, or the server's answer to it.
            return None;
        }
        match self.events.send(LinkEvent::Stanza(el)).await {
            Ok(()) => None,
            Err(_) => Some(Ended::Stopped),
        }
    }

    /// Writes and flushes up to [`WRITE_BATCH`] queued stanzas; on failure puts them back.
    ///
    /// A stanza the serialiser refuses is dropped with an error log, never put back: retrying
    /// it would fail the stream again and again and cut every user off. tokio-xmpp rewinds its
    /// output buffer but not its encoder's state (open elements, namespace scopes), so the
    /// stream is then reconnected, the rest of the batch put back in order. [`LinkHandle::send`]
    /// already cleans every stanza, so this is a second line of defence.
    async fn write_batch(&self, stream: &mut Stream) -> Result<(), String> {
        let mut batch = self.state.take_batch(WRITE_BATCH);
        if batch.is_empty() {
            return Ok(());
        }
        let mut unwritable = None;
        let written = tokio::time::timeout(self.settings.keepalive, async {
            for (i, stanza) in batch.iter().enumerate() {
                if let Err(e) = stream.feed(stanza).await {
                    if is_serialisation_error(&e) {
                        unwritable = Some(i);
                    }
                    return Err(e);
                }
            }
            SinkExt::<&Element>::flush(stream).await
        })
        .await;
        if let Some(i) = unwritable {
            let stanza = batch.remove(i);
            error!(
                domain = %self.domain,
                stanza = %stanza.name(),
                to = stanza.attr("to").unwrap_or_default(),
                "dropped a stanza the XML serialiser refuses; reconnecting"
            );
        }
        let reason = match written {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => format!("write failed: {e}"),
            Err(_) => format!(
                "the server took more than {:?} to accept a write",
                self.settings.keepalive
            ),
        };
        self.state.put_back(batch);
        Err(reason)
    }

    /// XEP-0199 ping from the domain to itself: the server routes it back over this stream,
    /// which is the traffic the read timeout waits for.
    async fn ping(&self, stream: &mut Stream) -> Result<(), String> {
        let n = self.pings.fetch_add(1, Ordering::Relaxed);
        let ping: Element = Iq::from_get(format!("{KEEPALIVE_ID_PREFIX}{n}"), Ping)
            .with_from(self.jid.clone())
            .with_to(self.jid.clone())
            .into();
        debug!(domain = %self.domain, "XMPP component link idle: keep-alive ping");
        match tokio::time::timeout(self.settings.keepalive, stream.send(&ping)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("keep-alive write failed: {e}")),
            Err(_) => Err(format!(
                "the server took more than {:?} to accept a keep-alive",
                self.settings.keepalive
            )),
        }
    }
}

/// TCP connect, stream header, handshake (XEP-0114 §3) of `domain`'s stream.
async fn open_stream(s: &LinkSettings, domain: &str) -> Result<Stream, AttemptError> {
    let tcp = TcpStream::connect((s.host.as_str(), s.port))
        .await
        .map_err(|e| AttemptError::Failed(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let timeouts = Timeouts {
        read_timeout: s.keepalive,
        response_timeout: s.keepalive,
    };
    let header = StreamHeader {
        from: None,
        to: Some(domain.into()),
        id: None,
    };
    let mut pending = initiate_stream(BufStream::new(tcp), NS_COMPONENT, header, timeouts)
        .await
        .map_err(|e| {
            AttemptError::Failed(format!("no usable stream header from the server: {e}"))
        })?;
    let stream_id = pending
        .take_header()
        .id
        .map(|id| id.into_owned())
        .ok_or_else(|| AttemptError::Failed("the server's stream header has no id".to_owned()))?;
    let mut stream: Stream = pending.skip_features();
    let handshake = Handshake::from_stream_id_and_password(stream_id, &s.secret);
    stream
        .send(&handshake)
        .await
        .map_err(|e| AttemptError::Failed(format!("sending the handshake: {e}")))?;
    loop {
        match stream.next().await {
            Some(Ok(el)) if el.is("handshake", NS_COMPONENT) => return Ok(stream),
            Some(Ok(el)) if el.is("error", NS_STREAM) => {
                return Err(AttemptError::Refused(describe_stream_error(&el)));
            }
            // Some servers send (empty) stream features to a version='1.0' header.
            Some(Ok(el)) => {
                debug!(domain = %domain, element = %el.name(), "ignored during handshake");
            }
            Some(Err(ReadError::SoftTimeout)) => {}
            Some(Err(ReadError::ParseError(e))) => {
                debug!(domain = %domain, "unparsable element during handshake: {e}");
            }
            Some(Err(ReadError::HardError(e))) => {
                return Err(AttemptError::Failed(format!(
                    "connection failed during the handshake: {e}"
                )));
            }
            Some(Err(ReadError::StreamFooterReceived)) | None => {
                return Err(AttemptError::Refused(
                    "the server closed the stream without accepting the handshake \
                     (wrong secret, or the domain is not configured as a component)"
                        .to_owned(),
                ));
            }
        }
    }
}

/// Connects `domain`'s stream and authenticates it with the configured secret, as the link
/// would (within [`CONNECT_TIMEOUT`]), then closes it: `lcs-bridge doctor`'s check of the
/// component port. A refused handshake is [`LinkError::Auth`] with the server's error.
pub async fn probe(settings: &LinkSettings, domain: &str) -> Result<(), LinkError> {
    let addr = settings.server_addr();
    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, open_stream(settings, domain))
        .await
        .unwrap_or_else(|_| {
            Err(AttemptError::Failed(format!(
                "no completed handshake within {CONNECT_TIMEOUT:?}"
            )))
        });
    match attempt {
        Ok(mut stream) => {
            close_quietly(&mut stream).await;
            Ok(())
        }
        Err(AttemptError::Refused(reason)) => Err(LinkError::Auth {
            domain: domain.to_owned(),
            reason,
        }),
        Err(AttemptError::Failed(reason)) => Err(LinkError::Connect {
            domain: domain.to_owned(),
            addr,
            reason,
        }),
    }
}

/// Whether a write error is the serialiser refusing a stanza (tokio-xmpp wraps the encoder's
/// error as `InvalidInput`), not the socket failing (an OS error carries no inner error).
fn is_serialisation_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::InvalidInput && e.get_ref().is_some()
}

/// Sends the stream footer and shuts the connection down, giving up after a second.
async fn close_quietly(stream: &mut Stream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), SinkExt::<&Element>::close(stream)).await;
}

/// A fatal read error of an established stream, in words.
fn describe_read_error(e: &std::io::Error, keepalive: Duration) -> String {
    use std::io::ErrorKind;
    let eof = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<minidom::rxml::Error>())
        .is_some_and(|x| matches!(x, minidom::rxml::Error::InvalidEof(_)));
    match e.kind() {
        ErrorKind::TimedOut => {
            format!("no data from the server for {keepalive:?} after a keep-alive ping")
        }
        ErrorKind::UnexpectedEof => "the server closed the connection".to_owned(),
        _ if eof => "the server closed the connection without closing the stream".to_owned(),
        ErrorKind::ConnectionReset => "the server reset the connection".to_owned(),
        _ => format!("connection error: {e}"),
    }
}

/// `condition (text)` of a `<stream:error/>` (RFC 6120 §4.9), with what the condition means
/// for a component handshake.
fn describe_stream_error(el: &Element) -> String {
    let condition = el
        .children()
        .find(|c| c.ns() == NS_STREAM_ERRORS && c.name() != "text")
        .map(|c| c.name().to_owned())
        .unwrap_or_else(|| "undefined-condition".to_owned());
    let text = el
        .children()
        .find(|c| c.is("text", NS_STREAM_ERRORS))
        .map(|t| t.text())
        .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|t| !t.is_empty());
    let meaning = match condition.as_str() {
        "not-authorized" => Some("wrong secret"),
        "host-unknown" | "improper-addressing" | "host-gone" | "item-not-found" => {
            Some("the server does not serve this domain as a component")
        }
        "conflict" => Some("another component is already connected for this domain"),
        _ => None,
    };
    let mut out = condition;
    if let Some(m) = meaning {
        out.push_str(": ");
        out.push_str(m);
    }
    if let Some(t) = text {
        out.push_str(&format!(" (server says: {t:?})"));
    }
    out
}

/// A jitter value in `0.0..1.0` for the backoff; not cryptographic, it only spreads retries.
fn jitter(domain: &str, attempt: u32) -> f64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let h = std::hash::RandomState::new().hash_one((domain, attempt, nanos));
    (h % 10_000) as f64 / 10_000.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{AddressMode, Secret, XmppConfig};

    fn handle(domains: &[&str], capacity: usize) -> LinkHandle {
        LinkHandle {
            domains: Arc::new(
                domains
                    .iter()
                    .map(|d| (d.to_string(), Arc::new(DomainState::new(capacity))))
                    .collect(),
            ),
        }
    }

    fn stanza(xml: &str) -> Element {
        crate::xmpp::parse_stanza(xml).unwrap()
    }

    #[test]
    fn from_config_takes_the_xmpp_section() {
        let x = XmppConfig {
            host: "10.0.0.5".into(),
            port: 5347,
            secret: Secret::new("s3cret"),
            component_domains: vec!["contoso.com".into(), "fabrikam.com".into()],
            mode: AddressMode::Direct,
            local_domains: vec!["example.org".into()],
            gateway_name: "LCS gateway".into(),
            roster: crate::config::RosterFill::Auto,
            queue_capacity: 4096,
            startup_timeout: Duration::from_secs(30),
        };
        let s = LinkSettings::from_config(&x);
        assert_eq!(s.host, "10.0.0.5");
        assert_eq!(s.port, 5347);
        assert_eq!(s.secret, "s3cret");
        assert_eq!(s.domains, vec!["contoso.com", "fabrikam.com"]);
        assert_eq!(s.queue_capacity, 4096);
        assert_eq!(s.backoff, DEFAULT_BACKOFF);
        assert_eq!(s.keepalive, Duration::from_secs(60));
        assert!(!format!("{s:?}").contains("s3cret"));
        assert_eq!(s.server_addr(), "10.0.0.5:5347");
        let v6 = LinkSettings {
            host: "::1".into(),
            ..s
        };
        assert_eq!(v6.server_addr(), "[::1]:5347");
    }

    #[test]
    fn settings_are_checked() {
        let ok = LinkSettings {
            host: "127.0.0.1".into(),
            port: 5347,
            secret: "x".into(),
            domains: vec!["lcs.example.org".into()],
            queue_capacity: 1,
            backoff: DEFAULT_BACKOFF,
            keepalive: Duration::from_secs(1),
        };
        assert_eq!(ok.check(), Ok(()));
        for (bad, why) in [
            (
                LinkSettings {
                    domains: vec![],
                    ..ok.clone()
                },
                "component link settings: no component domains",
            ),
            (
                LinkSettings {
                    domains: vec!["a@b".into()],
                    ..ok.clone()
                },
                "component link settings: \"a@b\" is not a component domain",
            ),
            (
                LinkSettings {
                    queue_capacity: 0,
                    ..ok.clone()
                },
                "component link settings: queue_capacity must be at least 1",
            ),
            (
                LinkSettings {
                    keepalive: Duration::from_millis(10),
                    ..ok.clone()
                },
                "component link settings: keepalive must be at least 100 ms",
            ),
        ] {
            assert_eq!(bad.check().unwrap_err().to_string(), why);
        }
    }

    #[test]
    fn send_routes_by_the_from_domain() {
        let h = handle(&["lcs.example.org", "contoso.com"], 4);
        h.send(stanza(
            "<message from='alice@lcs.example.org' to='bob@example.org'/>",
        ))
        .unwrap();
        h.send(stanza(
            "<presence from='bob@CONTOSO.com/r' to='x@example.org'/>",
        ))
        .unwrap();
        h.send(stanza("<iq type='get' id='1' from='contoso.com' to='example.org'><ping xmlns='urn:xmpp:ping'/></iq>"))
            .unwrap();
        assert_eq!(h.queued("lcs.example.org"), 1);
        assert_eq!(h.queued("Contoso.COM"), 2);
        assert!(!h.is_up("contoso.com"));
        assert!(!h.is_up("nowhere.example"));
        assert_eq!(h.domains(), vec!["contoso.com", "lcs.example.org"]);
    }

    #[test]
    fn send_cleans_what_xml_cannot_carry_and_refuses_what_it_cannot_write() {
        let h = handle(&["lcs.example.org"], 4);
        let mut poison = Element::builder("message", NS_COMPONENT)
            .attr(
                xmpp_parsers::minidom::rxml::xml_ncname!("from").to_owned(),
                "bob@lcs.example.org",
            )
            .append(
                Element::builder("nick", "http://jabber.org/protocol/nick")
                    .append("Bob\u{1}\u{FFFE}")
                    .build(),
            )
            .build();
        poison.append_text_node("\u{0}");
        h.send(poison).unwrap();
        let queued = h.domains["lcs.example.org"].take_batch(1).remove(0);
        assert_eq!(
            String::from(&queued),
            "<message xmlns='jabber:component:accept' from='bob@lcs.example.org'><nick xmlns='http://jabber.org/protocol/nick'>Bob</nick></message>"
        );
        let mut bad_name = stanza("<message from='bob@lcs.example.org'/>");
        bad_name.append_child(Element::bare("not a name", "urn:x"));
        assert_eq!(
            h.send(bad_name).unwrap_err().to_string(),
            "not a stanza the link can send: element \"not a name\" cannot be written: U+20 not allowed in name"
        );
        let mut bad_ns = stanza("<message from='bob@lcs.example.org'/>");
        bad_ns.append_child(Element::bare("x", "urn:\u{1}"));
        assert_eq!(
            h.send(bad_ns).unwrap_err().to_string(),
            "not a stanza the link can send: element \"x\" cannot be written: its namespace holds U+0001"
        );
        assert_eq!(h.queued("lcs.example.org"), 0);
        // Only the encoder's refusals count as a stanza's fault, not the socket's EINVAL.
        let refused = std::io::Error::new(std::io::ErrorKind::InvalidInput, "U+0001");
        assert!(is_serialisation_error(&refused));
        assert!(!is_serialisation_error(&std::io::Error::from_raw_os_error(
            22
        )));
    }

    #[test]
    fn send_refuses_what_it_cannot_route() {
        let h = handle(&["lcs.example.org"], 4);
        for (xml, err) in [
            (
                "<message to='bob@example.org'/>",
                LinkError::UnknownDomain(String::new()),
            ),
            (
                "<message from='alice@example.org' to='bob@example.org'/>",
                LinkError::UnknownDomain("alice@example.org".into()),
            ),
            (
                "<message from='a@b@c' to='bob@example.org'/>",
                LinkError::UnknownDomain("a@b@c".into()),
            ),
        ] {
            assert_eq!(h.send(stanza(xml)), Err(err), "{xml}");
        }
        let other: Element = "<message xmlns='urn:other' from='alice@lcs.example.org'/>"
            .parse()
            .unwrap();
        assert_eq!(
            h.send(other).unwrap_err().to_string(),
            "not a stanza the link can send: root element is \"message\" in \"urn:other\", expected message, presence or iq in jabber:component:accept"
        );
        let handshake = Element::builder("handshake", NS_COMPONENT).build();
        assert!(matches!(
            h.send(handshake),
            Err(LinkError::InvalidStanza(_))
        ));
        assert_eq!(h.queued("lcs.example.org"), 0);
    }

    #[test]
    fn a_full_queue_refuses_and_keeps_order() {
        let h = handle(&["lcs.example.org"], 2);
        let m = |id: &str| {
            stanza(&format!(
                "<message id='{id}' from='a@lcs.example.org' to='b@example.org'/>"
            ))
        };
        h.send(m("1")).unwrap();
        h.send(m("2")).unwrap();
        assert_eq!(
            h.send(m("3")),
            Err(LinkError::QueueFull {
                domain: "lcs.example.org".into()
            })
        );
        let state = &h.domains["lcs.example.org"];
        let batch = state.take_batch(8);
        assert_eq!(batch.len(), 2);
        h.send(m("3")).unwrap();
        state.put_back(batch);
        let ids: Vec<String> = state
            .take_batch(8)
            .iter()
            .map(|e| e.attr("id").unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["1", "2", "3"]);
        state.closed.store(true, Ordering::Release);
        assert_eq!(h.send(m("4")), Err(LinkError::Closed));
    }

    #[test]
    fn stream_errors_are_explained() {
        let e = |xml: &str| describe_stream_error(&xml.parse::<Element>().unwrap());
        assert_eq!(
            e(
                "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
            ),
            "not-authorized: wrong secret"
        );
        assert_eq!(
            e(
                "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>No such\n host</text></stream:error>"
            ),
            "host-unknown: the server does not serve this domain as a component (server says: \"No such host\")"
        );
        assert_eq!(
            e(
                "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
            ),
            "system-shutdown"
        );
        assert_eq!(
            e("<stream:error xmlns:stream='http://etherx.jabber.org/streams'/>"),
            "undefined-condition"
        );
    }

    #[test]
    fn errors_name_the_fix() {
        let auth = LinkError::Auth {
            domain: "lcs.example.org".into(),
            reason: "not-authorized: wrong secret".into(),
        };
        assert_eq!(
            auth.to_string(),
            "the XMPP server refused component lcs.example.org: not-authorized: wrong secret; check xmpp.secret and that the server configures lcs.example.org as an external component with that secret"
        );
    }

    #[test]
    fn jitter_is_in_range() {
        for i in 0..100 {
            let j = jitter("d", i);
            assert!((0.0..1.0).contains(&j));
        }
    }
}
