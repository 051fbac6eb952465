//! The edge's I/O: the mutual-TLS listener, outbound connections (DNS, TCP, TLS verified
//! against the edge name dialled), one reader and one writer task per connection, and the task
//! that owns the sans-IO [`EdgeCore`] and its timers. Every byte a peer sends goes through
//! [`Framer`] (bounded buffers, typed errors); a connection that breaks the framing is closed
//! without disturbing the others.
//!
//! The layer above (the IM and presence engine, or a test) talks to the edge through
//! [`EdgeHandle`] (requests out, responses, ACKs) and receives [`EdgeEvent`]s.

#![allow(clippy::disallowed_methods)] // I/O: the edge's tasks read the clock and feed `now` to `EdgeCore`

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

use super::core::{CoreOutput, CoreSettings, EdgeCore, Route};
use super::dns::{Discovery, DiscoveryError};
use super::event::EdgeEvent;
use super::identity::PeerIdentity;
use super::limits::{Backlog, BacklogCounters, Limit, LimitCounters, OverLimit, not_reading};
use super::pool::{EdgeAddr, NEGATIVE_TTL_FLOOR};
use super::tls::{TlsConfigs, describe_accept_error, describe_handshake_error, handshake_reason};
use crate::sip::framing::{Frame, Framer, PING};
use crate::sip::message::{Limits, Message};
use crate::sip::transaction::{ConnId, TxId, TxIds};
use crate::telemetry::{self, Direction};

/// Most bytes the connection writer gathers from its queue into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Longest a DNS lookup task may take before it reports a failure: the core must always hear
/// back, or the lookup's slot (`sip.max_dns_lookups`) would stay taken. Discovery's own
/// timeouts (2 s, 2 attempts per server) end it well before.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(30);

/// Everything the edge needs to run.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub listen: SocketAddr,
    pub tls: TlsConfigs,
    pub core: CoreSettings,
    pub limits: Limits,
    /// A TLS handshake must finish within this time.
    pub handshake_timeout: Duration,
    /// Outbound: DNS for the edge's address, TCP connect and TLS must finish within this time.
    pub connect_timeout: Duration,
    /// A connection with nothing to read for this long is closed.
    pub idle_timeout: Duration,
    /// After this long with nothing read, a CRLF keep-alive ping is sent (RFC 5626 §4.4.1); the
    /// pong (or any traffic) keeps the connection from the idle timeout.
    pub keepalive_interval: Option<Duration>,
    /// A message that has started must be complete within this time (slowloris).
    pub message_timeout: Duration,
}

impl EdgeSettings {
    pub fn new(listen: SocketAddr, tls: TlsConfigs, core: CoreSettings, limits: Limits) -> Self {
        EdgeSettings {
            listen,
            tls,
            core,
            limits,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Some(Duration::from_secs(60)),
            message_timeout: Duration::from_secs(30),
        }
    }
}

/// Most requests from peers handed to the layer above and not yet taken by it. Beyond it the
/// edge answers new ones 503 with `Retry-After: 1` itself (RFC 3261 §21.5.4), so that a
/// partner sending faster than the bridge works gets told to slow down instead of every
/// request waiting longer and longer. At ~40,000 requests/s that is 0.2 s of work.
pub const MAX_PENDING_REQUESTS: usize = 8192;

/// The edge's events, as the layer above takes them. Responses, timeouts and lost connections
/// always queue (they complete what the bridge started); new requests from peers are counted,
/// and shed beyond [`MAX_PENDING_REQUESTS`].
pub struct EdgeEvents {
    rx: mpsc::UnboundedReceiver<EdgeEvent>,
    pending: Arc<AtomicUsize>,
}

impl EdgeEvents {
    pub async fn recv(&mut self) -> Option<EdgeEvent> {
        let event = self.rx.recv().await?;
        Some(self.taken(event))
    }

    /// Requests from peers handed up and not yet taken (shed beyond
    /// [`MAX_PENDING_REQUESTS`]).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<EdgeEvent> {
        let event = self.rx.try_recv().ok()?;
        Some(self.taken(event))
    }

    fn taken(&self, event: EdgeEvent) -> EdgeEvent {
        if matches!(event, EdgeEvent::Request { .. }) {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        event
    }
}

/// A running edge.
pub struct EdgeHandle {
    pub local_addr: SocketAddr,
    tls: Arc<RwLock<TlsConfigs>>,
    commands: mpsc::Sender<CoreInput>,
    ids: TxIds,
    tasks: Vec<JoinHandle<()>>,
    counters: Arc<LimitCounters>,
}

impl EdgeHandle {
    /// How many times each resource limit was hit (for a metrics endpoint).
    pub fn limit_counters(&self) -> Arc<LimitCounters> {
        self.counters.clone()
    }

    /// Replaces the certificates and CA bundle for new connections (SIGHUP); connections
    /// already up keep the TLS session they have.
    pub fn reload_tls(&self, tls: TlsConfigs) {
        match self.tls.write() {
            Ok(mut current) => *current = tls,
            Err(poisoned) => *poisoned.into_inner() = tls,
        }
        info!("TLS certificates and CA bundle reloaded");
    }

    /// New federation policy and limits (SIGHUP); connections and transactions stay.
    pub async fn reconfigure(&self, core: CoreSettings) {
        let _ = self.commands.send(CoreInput::Reconfigure(core)).await;
    }

    /// The connections the edge holds (for `lcs-bridge admin partners`); empty if the edge
    /// has stopped.
    pub async fn connections(&self) -> Vec<crate::edge::pool::ConnSummary> {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(CoreInput::Connections { reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Sends a request; its outcome arrives as [`EdgeEvent::Transaction`] or
    /// [`EdgeEvent::Undeliverable`] with the returned id.
    pub async fn send_request(&self, request: Message, route: Route) -> TxId {
        let tx = self.ids.next();
        self.send_request_as(tx, request, route).await;
        tx
    }

    /// The id source of the edge's transactions, for naming requests ahead of
    /// [`EdgeHandle::send_request_as`] (a sans-IO engine does).
    pub fn tx_ids(&self) -> TxIds {
        self.ids.clone()
    }

    /// [`EdgeHandle::send_request`] with an id from [`EdgeHandle::tx_ids`].
    pub async fn send_request_as(&self, tx: TxId, request: Message, route: Route) {
        if self
            .commands
            .send(CoreInput::SendRequest { tx, request, route })
            .await
            .is_err()
        {
            warn!(?tx, "edge stopped: request not sent");
        }
    }

    /// Answers server transaction `tx` (from [`EdgeEvent::Request`]).
    pub async fn respond(&self, tx: TxId, response: Message) {
        let _ = self
            .commands
            .send(CoreInput::Respond { tx, response })
            .await;
    }

    /// Sends an ACK for a 2xx (outside transactions) on the dialog's connection.
    pub async fn send_ack(&self, conn: ConnId, ack: Message) {
        let _ = self.commands.send(CoreInput::Stateless { conn, ack }).await;
    }

    /// Stops accepting and drops every connection; logs how many times each limit was hit.
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        info!(
            hits = %self.counters.summary(),
            "SIP edge stopped; resource limits hit since the start"
        );
    }
}

enum CoreInput {
    /// An administrator asks for the connections held.
    Connections {
        reply: oneshot::Sender<Vec<crate::edge::pool::ConnSummary>>,
    },
    /// A TCP connection was accepted: may it proceed to its handshake?
    Accept {
        conn: ConnId,
        peer: SocketAddr,
        reply: oneshot::Sender<bool>,
    },
    /// A connection is up (TLS done): may it stay? (Inbound ones may be over the limit of
    /// their certificate identity.)
    Connected {
        conn: ConnId,
        peer: SocketAddr,
        identity: PeerIdentity,
        writer: Writer,
        outbound: bool,
        reply: oneshot::Sender<bool>,
    },
    /// An accepted connection ended before it was connected (handshake failed, or refused).
    Released {
        conn: ConnId,
    },
    ConnectFailed {
        conn: ConnId,
        reason: String,
    },
    Resolved {
        domain: String,
        result: Result<Vec<super::srv::SrvTarget>, String>,
        valid_until: Instant,
    },
    Frame {
        conn: ConnId,
        frame: Frame,
        /// Its bytes on the wire (counted in the connection's backlog until processed).
        size: usize,
    },
    Closed {
        conn: ConnId,
    },
    SendRequest {
        tx: TxId,
        request: Message,
        route: Route,
    },
    Respond {
        tx: TxId,
        response: Message,
    },
    Stateless {
        conn: ConnId,
        ack: Message,
    },
    Reconfigure(CoreSettings),
}

enum WriteCmd {
    Bytes(Vec<u8>),
    Close,
}

/// What a connection's reader, writer and the core task share: the backlog's counters and
/// the decisions on them ([`BacklogCounters`]: bytes queued unsent and bytes of frames read
/// and not yet processed), and the signals to a reader paused on them.
struct Backpressure {
    counters: BacklogCounters,
    /// The backlog went down to half or less while the reader was paused, or the writer ended.
    resume: Notify,
    /// The writer ended (closed, or the peer is gone).
    closed: AtomicBool,
}

impl Backpressure {
    /// Wakes the paused reader when a decrement said so (a stored permit if it is not waiting
    /// yet).
    fn wake_if(&self, wake: bool) {
        if wake {
            self.resume.notify_one();
        }
    }
}

/// The sending side of a connection's writer task, bounded by `sip.max_write_backlog_bytes`.
#[derive(Clone)]
struct Writer {
    tx: mpsc::UnboundedSender<WriteCmd>,
    shared: Arc<Backpressure>,
    /// The peer's address, for log lines.
    peer: SocketAddr,
    /// The partner's domain for log lines: the one dialled (outbound), or the names of the
    /// partner's certificate (inbound).
    domain: Arc<str>,
}

impl Writer {
    /// Queues `bytes`: false when that would put the backlog over its limit (the peer does
    /// not read: the caller closes the connection) or the writer is gone.
    fn send(&self, bytes: Vec<u8>) -> bool {
        if !self.shared.counters.try_queue(bytes.len()) {
            return false;
        }
        self.tx.send(WriteCmd::Bytes(bytes)).is_ok()
    }

    /// Ends the connection: what is queued goes out (if the peer reads), then the writer
    /// stops; the reader stops at once, even while paused.
    fn close(&self) {
        let _ = self.tx.send(WriteCmd::Close);
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.resume.notify_one();
    }
}

/// Logs an over-limit event (one WARN line naming the limit's configuration key) and counts
/// it: every limit hit goes through here. `domain`: the partner's, when known.
fn over_limit(counters: &LimitCounters, o: &OverLimit, peer: Option<SocketAddr>, domain: &str) {
    counters.hit(o.limit);
    let peer = peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let conn = o.conn.map_or_else(|| "-".to_owned(), |c| c.to_string());
    warn!(
        limit = o.limit.key(),
        %peer,
        conn = %conn,
        domain,
        detail = %o.detail,
        "over limit: {}",
        o.action
    );
}

/// Binds the listener and starts the edge; DNS lookups go through `discovery`.
pub async fn start(
    settings: EdgeSettings,
    discovery: Arc<Discovery>,
) -> std::io::Result<(EdgeHandle, EdgeEvents)> {
    let listener = TcpListener::bind(settings.listen).await?;
    let local_addr = listener.local_addr()?;
    info!(%local_addr, "SIP federation edge listening (mutual TLS)");
    // Two ways into the core: the layer above's commands, and the connections' and lookups'
    // input. In one queue the bridge's own answers waited behind every frame the peers had
    // sent, so under load it could hardly finish what it had taken in. Commands go first (they
    // finish work, and a burst of them leaves in one write), but at most `COMMAND_STREAK` in
    // a row: a layer above that sends without pause (a restart taking up its subscriptions)
    // would otherwise starve the peers' frames, the peers would stop reading while their
    // answers go unread, and both sides would block.
    let (commands_tx, commands_rx) = mpsc::channel::<CoreInput>(1024);
    let (core_tx, core_rx) = mpsc::channel::<CoreInput>(1024);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let tls = Arc::new(RwLock::new(settings.tls.clone()));
    let settings = Arc::new(settings);
    set_partner_labels(&settings.core);
    let core = EdgeCore::new(settings.core.clone(), crate::random::seed());
    let ids = core.tx_ids();
    let counters = Arc::new(LimitCounters::default());
    let io = Io {
        settings: settings.clone(),
        tls: tls.clone(),
        discovery,
        core_tx: core_tx.clone(),
        counters: counters.clone(),
        backlog_max: Arc::new(AtomicUsize::new(
            settings.core.limits.max_write_backlog_bytes,
        )),
    };
    let pending = Arc::new(AtomicUsize::new(0));
    let shared = Shared {
        events: events_tx,
        pending: pending.clone(),
    };
    let core_task = tokio::spawn(run_core(core, commands_rx, core_rx, shared, io.clone()));
    let accept_task = tokio::spawn(accept_loop(listener, io));
    Ok((
        EdgeHandle {
            local_addr,
            tls,
            commands: commands_tx,
            ids,
            tasks: vec![core_task, accept_task],
            counters,
        },
        EdgeEvents {
            rx: events_rx,
            pending,
        },
    ))
}

/// What connection and lookup tasks share.
#[derive(Clone)]
struct Io {
    settings: Arc<EdgeSettings>,
    tls: Arc<RwLock<TlsConfigs>>,
    discovery: Arc<Discovery>,
    core_tx: mpsc::Sender<CoreInput>,
    counters: Arc<LimitCounters>,
    /// `sip.max_write_backlog_bytes` for new connections (SIGHUP changes it).
    backlog_max: Arc<AtomicUsize>,
}

impl Io {
    fn tls(&self) -> TlsConfigs {
        match self.tls.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A log line's `conn` or `domain` not known (yet): before the peer's certificate, or a line
/// about no one connection.
const UNKNOWN: &str = "-";

/// Accepts connections one at a time, each admitted by the core (`sip.max_handshakes`,
/// `sip.max_connections`, `sip.max_connections_per_address`) before any handshake work is spent
/// on it; one over a limit is closed at once. While the core decides, further connections wait in the
/// listener's backlog.
async fn accept_loop(listener: TcpListener, io: Io) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let (reply, admitted) = oneshot::channel();
        if io
            .core_tx
            .send(CoreInput::Accept { conn, peer, reply })
            .await
            .is_err()
        {
            return;
        }
        // The core logged and counted a refusal; dropping the socket closes it.
        if admitted.await != Ok(true) {
            continue;
        }
        let tls = io.tls();
        let acceptor = TlsAcceptor::from(tls.server);
        let server_auth_only = tls.accept_server_auth_only_clients;
        let io = io.clone();
        tokio::spawn(async move {
            let core_tx = io.core_tx.clone();
            if !accept_connection(tcp, conn, peer, (acceptor, server_auth_only), io).await {
                let _ = core_tx.send(CoreInput::Released { conn }).await;
            }
        });
    }
}

/// The peer's identity from the first certificate it presented.
fn identity_of(
    certs: Option<&[rustls::pki_types::CertificateDer<'_>]>,
) -> Result<PeerIdentity, String> {
    match certs.and_then(|c| c.first()) {
        Some(cert) => PeerIdentity::from_certificate(cert),
        None => Err("peer presented no certificate".into()),
    }
}

/// The handshake of accepted connection `conn`, then the connection itself; false if it never
/// became a connection of the core (the caller releases it). With the acceptor comes its
/// configuration's `sip.accept_server_auth_only_clients`, which a refusal's log line names.
async fn accept_connection(
    tcp: TcpStream,
    conn: ConnId,
    peer: SocketAddr,
    (acceptor, server_auth_only): (TlsAcceptor, bool),
    io: Io,
) -> bool {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(io.settings.handshake_timeout, acceptor.accept(tcp)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = describe_accept_error(&e, server_auth_only);
            telemetry::handshake_failure(UNKNOWN_PEER, Direction::In, handshake_reason(&e));
            warn!(%peer, conn, domain = UNKNOWN, %reason, "TLS handshake failed");
            return false;
        }
        Err(_) => {
            telemetry::handshake_failure(UNKNOWN_PEER, Direction::In, "timeout");
            warn!(%peer, conn, domain = UNKNOWN, reason = "handshake timed out", "TLS handshake failed");
            return false;
        }
    };
    let identity = match identity_of(tls.get_ref().1.peer_certificates()) {
        Ok(id) => id,
        Err(e) => {
            telemetry::handshake_failure(UNKNOWN_PEER, Direction::In, "bad_certificate");
            warn!(%peer, conn, domain = UNKNOWN, reason = %e, "peer certificate unusable");
            return false;
        }
    };
    let domain: Arc<str> = identity.label().into();
    info!(%peer, conn, %domain, "peer connected");
    let label = telemetry::partner_label(identity.names().iter().map(String::as_str));
    run_connection(tls, conn, peer, (identity, domain, label), false, io).await
}

/// Opens outbound connection `conn` to `edge`: its addresses, TCP, TLS with the edge's name.
async fn connect_outbound(conn: ConnId, domain: String, edge: EdgeAddr, io: Io) {
    let label = telemetry::partner_label([domain.as_str()]);
    // Each failure with its word for the handshake-failure counter.
    let attempt = async {
        let addrs = io
            .discovery
            .addresses(&edge.host, edge.port)
            .await
            .map_err(|e| ("connect", e.to_string()))?;
        let name = ServerName::try_from(edge.host.clone()).map_err(|e| {
            (
                "connect",
                format!("{} is not a valid TLS server name: {e}", edge.host),
            )
        })?;
        let connector = TlsConnector::from(io.tls().client);
        let mut last = ("connect", format!("{} has no address", edge.host));
        for addr in addrs {
            let tcp = match TcpStream::connect(addr).await {
                Ok(t) => t,
                Err(e) => {
                    last = ("connect", format!("connect to {addr}: {e}"));
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            match connector.connect(name.clone(), tcp).await {
                Ok(tls) => return Ok((tls, addr)),
                Err(e) => {
                    last = (
                        handshake_reason(&e),
                        format!("TLS with {addr}: {}", describe_handshake_error(&e)),
                    )
                }
            }
        }
        Err(last)
    };
    let result = match tokio::time::timeout(io.settings.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err((
            "timeout",
            format!(
                "no TLS connection within {} s",
                io.settings.connect_timeout.as_secs()
            ),
        )),
    };
    let (tls, addr) = match result {
        Ok(x) => x,
        Err((word, reason)) => {
            telemetry::handshake_failure(&label, Direction::Out, word);
            warn!(conn, %domain, %edge, %reason, "cannot connect to peer edge");
            let _ = io
                .core_tx
                .send(CoreInput::ConnectFailed { conn, reason })
                .await;
            return;
        }
    };
    let identity = match identity_of(tls.get_ref().1.peer_certificates()) {
        Ok(id) => id,
        Err(reason) => {
            telemetry::handshake_failure(&label, Direction::Out, "bad_certificate");
            warn!(conn, %domain, %edge, %reason, "peer edge certificate unusable");
            let _ = io
                .core_tx
                .send(CoreInput::ConnectFailed { conn, reason })
                .await;
            return;
        }
    };
    info!(conn, %domain, %edge, peer = %addr, names = %identity.label(), "connected to peer edge");
    run_connection(tls, conn, addr, (identity, domain.into(), label), true, io).await;
}

/// Registers an authenticated connection with the core and runs its reader and writer until it
/// ends; false if the core refused it (over `sip.max_connections_per_identity`: the caller
/// releases it, and dropping the stream closes it). With the identity comes the connection's
/// partner label for the connections gauge (`telemetry::partner_label`).
async fn run_connection<S>(
    stream: S,
    conn: ConnId,
    peer: SocketAddr,
    (identity, domain, label): (PeerIdentity, Arc<str>, String),
    outbound: bool,
    io: Io,
) -> bool
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let settings = io.settings.clone();
    let core_tx = io.core_tx;
    let (tx, mut write_rx) = mpsc::unbounded_channel::<WriteCmd>();
    let shared = Arc::new(Backpressure {
        counters: BacklogCounters::new(io.backlog_max.load(Ordering::Relaxed)),
        resume: Notify::new(),
        closed: AtomicBool::new(false),
    });
    let write_tx = Writer {
        tx,
        shared: shared.clone(),
        peer,
        domain: domain.clone(),
    };
    let (reply, admitted) = oneshot::channel();
    if core_tx
        .send(CoreInput::Connected {
            conn,
            peer,
            identity,
            writer: write_tx.clone(),
            outbound,
            reply,
        })
        .await
        .is_err()
    {
        return true;
    }
    if admitted.await != Ok(true) {
        return false;
    }
    let dir = if outbound {
        Direction::Out
    } else {
        Direction::In
    };
    let open = telemetry::connections(&label, dir);
    open.increment(1.0);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let writer_shared = shared.clone();
    let writer_task = tokio::spawn(async move {
        let shared = writer_shared;
        // What is queued goes out together: one TLS record and one system call for a burst
        // of messages instead of one each (docs/benchmarks.md "End to end").
        let mut batch = Vec::with_capacity(16 * 1024);
        let mut closing = false;
        while let Some(cmd) = write_rx.recv().await {
            let WriteCmd::Bytes(first) = cmd else { break };
            batch.clear();
            batch.extend_from_slice(&first);
            while batch.len() < WRITE_BATCH {
                match write_rx.try_recv() {
                    Ok(WriteCmd::Bytes(more)) => batch.extend_from_slice(&more),
                    Ok(WriteCmd::Close) => {
                        closing = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if writer.write_all(&batch).await.is_err() || writer.flush().await.is_err() {
                break;
            }
            shared.wake_if(shared.counters.written(batch.len()));
            if closing {
                break;
            }
        }
        shared.closed.store(true, Ordering::Relaxed);
        shared.resume.notify_one();
        let _ = writer.shutdown().await;
    });
    let mut framer = Framer::new(settings.limits);
    let mut buf = vec![0u8; 16 * 1024];
    let mut started: Option<Instant> = None;
    let mut last_read = Instant::now();
    let mut pinged = false;
    loop {
        if shared.closed.load(Ordering::Relaxed) {
            debug!(%peer, conn, %domain, "writer ended: closing connection");
            break;
        }
        // Over an eighth of `sip.max_write_backlog_bytes` unsent or not yet processed: read nothing
        // more from this peer until it has read enough, or the core has caught up (TCP then
        // slows a peer that sends without reading, or faster than the bridge works). One that
        // reads nothing for `sip.message_timeout_secs` meanwhile is closed.
        if shared.counters.state() != Backlog::Ok {
            // Marked paused before each check: a decrement after it wakes this loop.
            let resumed = tokio::time::timeout(settings.message_timeout, async {
                while shared.counters.pause() != Backlog::Ok
                    && !shared.closed.load(Ordering::Relaxed)
                {
                    shared.resume.notified().await;
                }
            })
            .await;
            shared.counters.resume();
            let unsent = shared.counters.queued();
            if resumed.is_err() && not_reading(unsent, shared.counters.max()) {
                over_limit(
                    &io.counters,
                    &OverLimit {
                        limit: Limit::WriteBacklog,
                        conn: Some(conn),
                        detail: format!(
                            "{unsent} bytes unsent for {} s",
                            settings.message_timeout.as_secs()
                        ),
                        action: "peer does not read: connection closed",
                    },
                    Some(peer),
                    &domain,
                );
                break;
            }
            continue;
        }
        let now = Instant::now();
        let idle_left = settings
            .idle_timeout
            .saturating_sub(now.duration_since(last_read));
        let limit = match (started, settings.keepalive_interval) {
            (Some(t), _) => settings
                .message_timeout
                .saturating_sub(t.elapsed())
                .max(Duration::from_millis(1)),
            (None, Some(k)) if !pinged => k
                .saturating_sub(now.duration_since(last_read))
                .min(idle_left)
                .max(Duration::from_millis(1)),
            _ => idle_left.max(Duration::from_millis(1)),
        };
        let n = match tokio::time::timeout(limit, reader.read(&mut buf)).await {
            Ok(Ok(0)) => {
                debug!(%peer, conn, %domain, "peer closed the connection");
                break;
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                debug!(%peer, conn, %domain, error = %e, "read failed");
                break;
            }
            Err(_) => {
                if started.is_some() {
                    info!(%peer, conn, %domain, reason = "message not completed in time", "closing connection");
                    break;
                }
                if last_read.elapsed() >= settings.idle_timeout {
                    info!(%peer, conn, %domain, reason = "idle", "closing connection");
                    break;
                }
                // Keep-alive: a double CRLF; the peer's pong counts as traffic.
                pinged = true;
                framer.expect_pong();
                let _ = write_tx.send(PING.to_vec());
                continue;
            }
        };
        last_read = Instant::now();
        pinged = false;
        framer.push(&buf[..n]);
        let mut fatal = false;
        let mut progressed = false;
        loop {
            let before = framer.buffered();
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    progressed = true;
                    let size = before.saturating_sub(framer.buffered());
                    shared.counters.read(size);
                    if core_tx
                        .send(CoreInput::Frame { conn, frame, size })
                        .await
                        .is_err()
                    {
                        fatal = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(%peer, conn, %domain, reason = %e, "closing connection: unusable SIP stream");
                    fatal = true;
                    break;
                }
            }
        }
        if fatal {
            break;
        }
        // The unfinished-message clock runs from when the current partial message began.
        started = match (framer.buffered(), started) {
            (0, _) => None,
            (_, Some(t)) if !progressed => Some(t),
            _ => Some(Instant::now()),
        };
    }
    drop(write_tx);
    open.decrement(1.0);
    let _ = core_tx.send(CoreInput::Closed { conn }).await;
    // Let queued responses go out, then close; a writer still blocked on a peer that does not
    // read is stopped, which closes the socket.
    let mut writer_task = writer_task;
    if tokio::time::timeout(Duration::from_secs(5), &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
    }
    true
}

/// Looks up a domain's edges for the core, which always hears back (the lookup's slot).
async fn resolve(domain: String, io: Io) {
    let lookup = tokio::time::timeout(LOOKUP_DEADLINE, io.discovery.edge_targets(&domain)).await;
    let (result, valid_until) = match lookup {
        Ok(Ok(r)) => (Ok(r.targets), r.valid_until),
        Ok(Err(DiscoveryError::NoSrv { valid_until, .. })) => (
            Err(format!("no _sipfederationtls._tcp SRV record for {domain}")),
            valid_until,
        ),
        Ok(Err(e)) => (Err(e.to_string()), Instant::now() + NEGATIVE_TTL_FLOOR),
        Err(_) => (
            Err(format!(
                "DNS lookup for {domain} took more than {} s",
                LOOKUP_DEADLINE.as_secs()
            )),
            Instant::now() + NEGATIVE_TTL_FLOOR,
        ),
    };
    if let Err(reason) = &result {
        warn!(%domain, %reason, "peer domain discovery failed");
    }
    let _ = io
        .core_tx
        .send(CoreInput::Resolved {
            domain,
            result,
            valid_until,
        })
        .await;
}

/// Most commands from the layer above the core takes in a row while peers' frames wait.
const COMMAND_STREAK: u32 = 256;

/// The core task's side of [`EdgeEvents`].
struct Shared {
    events: mpsc::UnboundedSender<EdgeEvent>,
    pending: Arc<AtomicUsize>,
}

async fn run_core(
    mut core: EdgeCore,
    mut commands: mpsc::Receiver<CoreInput>,
    mut rx: mpsc::Receiver<CoreInput>,
    shared: Shared,
    io: Io,
) {
    let mut writers: HashMap<ConnId, Writer> = HashMap::new();
    let mut shedding = false;
    let mut streak = 0;
    loop {
        let deadline = core.poll_timeout();
        // Commands first, but never more than COMMAND_STREAK in a row while frames wait.
        let input = if streak < COMMAND_STREAK {
            tokio::select! {
                biased;
                Some(command) = commands.recv() => {
                    streak += 1;
                    Some(command)
                }
                input = rx.recv() => match input {
                    Some(i) => {
                        streak = 0;
                        Some(i)
                    }
                    None => return,
                },
                _ = sleep_until(deadline) => None,
            }
        } else {
            streak = 0;
            tokio::select! {
                biased;
                input = rx.recv() => match input {
                    Some(i) => Some(i),
                    None => return,
                },
                Some(command) = commands.recv() => Some(command),
                _ = sleep_until(deadline) => None,
            }
        };
        let now = Instant::now();
        // A frame's bytes leave its connection's backlog once its outputs are queued.
        let mut processed: Option<(ConnId, usize)> = None;
        let outputs = match input {
            None => core.handle_timeout(now),
            Some(CoreInput::Accept { conn, peer, reply }) => {
                let admitted = match core.accept(conn, peer.ip()) {
                    Ok(()) => true,
                    Err(o) => {
                        over_limit(&io.counters, &o, Some(peer), UNKNOWN);
                        false
                    }
                };
                let _ = reply.send(admitted);
                Vec::new()
            }
            Some(CoreInput::Released { conn }) => {
                core.released(conn);
                Vec::new()
            }
            Some(CoreInput::Connected {
                conn,
                peer,
                identity,
                writer,
                outbound,
                reply,
            }) => {
                if outbound {
                    debug!(conn, %peer, domain = %writer.domain, outbound, "registered");
                    writers.insert(conn, writer);
                    let _ = reply.send(true);
                    core.outbound_up(now, conn, identity)
                } else {
                    match core.connected(conn, identity) {
                        Ok(()) => {
                            debug!(conn, %peer, domain = %writer.domain, outbound, "registered");
                            writers.insert(conn, writer);
                            let _ = reply.send(true);
                        }
                        Err(o) => {
                            over_limit(&io.counters, &o, Some(peer), &writer.domain);
                            let _ = reply.send(false);
                        }
                    }
                    Vec::new()
                }
            }
            Some(CoreInput::ConnectFailed { conn, reason }) => {
                core.connect_failed(now, conn, &reason)
            }
            Some(CoreInput::Resolved {
                domain,
                result,
                valid_until,
            }) => core.resolved(now, &domain, result, valid_until),
            Some(CoreInput::Frame { conn, frame, size }) => {
                processed = Some((conn, size));
                count_in(&frame);
                core.on_frame(now, conn, frame)
            }
            Some(CoreInput::Closed { conn }) => {
                if let Some(w) = writers.remove(&conn) {
                    w.close();
                }
                core.disconnected(now, conn)
            }
            Some(CoreInput::SendRequest { tx, request, route }) => {
                core.send_request(now, tx, request, route)
            }
            Some(CoreInput::Respond { tx, response }) => core.respond(now, tx, response),
            Some(CoreInput::Stateless { conn, ack }) => {
                core.send_stateless(conn, &ack).into_iter().collect()
            }
            Some(CoreInput::Connections { reply }) => {
                let _ = reply.send(core.connection_list());
                Vec::new()
            }
            Some(CoreInput::Reconfigure(settings)) => {
                set_partner_labels(&settings);
                io.backlog_max
                    .store(settings.limits.max_write_backlog_bytes, Ordering::Relaxed);
                core.reconfigure(settings);
                info!("federation policy and limits reloaded");
                Vec::new()
            }
        };
        let mut outputs = std::collections::VecDeque::from(outputs);
        while let Some(o) = outputs.pop_front() {
            let event = match o {
                CoreOutput::Send { conn, bytes } => {
                    // Responses go back on the connection the request came in on; if it is
                    // gone the response is dropped (profile).
                    if let Some(w) = writers.get(&conn) {
                        telemetry::sip_wire_out(&bytes);
                        if !w.send(bytes) {
                            let o = OverLimit {
                                limit: Limit::WriteBacklog,
                                conn: Some(conn),
                                detail: format!("{} bytes unsent", w.shared.counters.queued()),
                                action: "peer does not read: connection closed",
                            };
                            over_limit(&io.counters, &o, Some(w.peer), &w.domain);
                            w.close();
                            writers.remove(&conn);
                        }
                    }
                    continue;
                }
                CoreOutput::OverLimit(o) => {
                    let writer = o.conn.and_then(|c| writers.get(&c));
                    let domain = writer.map_or(UNKNOWN, |w| &*w.domain);
                    over_limit(&io.counters, &o, writer.map(|w| w.peer), domain);
                    continue;
                }
                CoreOutput::Resolve { domain } => {
                    tokio::spawn(resolve(domain, io.clone()));
                    continue;
                }
                CoreOutput::Connect { conn, domain, edge } => {
                    debug!(conn, %domain, %edge, "opening connection to peer edge");
                    tokio::spawn(connect_outbound(conn, domain, edge, io.clone()));
                    continue;
                }
                CoreOutput::Request {
                    tx,
                    conn,
                    request,
                    asserted,
                } => {
                    let pending = shared.pending.load(Ordering::Relaxed);
                    if pending >= MAX_PENDING_REQUESTS {
                        if !shedding {
                            warn!(
                                pending,
                                "overloaded: answering new requests 503 (Retry-After 1)"
                            );
                            shedding = true;
                        }
                        outputs.extend(core.shed(now, tx, &request));
                        continue;
                    }
                    if shedding && pending < MAX_PENDING_REQUESTS / 2 {
                        info!(pending, "load back to normal: taking requests again");
                        shedding = false;
                    }
                    shared.pending.fetch_add(1, Ordering::Relaxed);
                    EdgeEvent::Request {
                        tx,
                        conn,
                        request,
                        asserted,
                    }
                }
                CoreOutput::Event(e) => EdgeEvent::Transaction(e),
                CoreOutput::Undeliverable { tx, why } => {
                    let conn = why
                        .conn()
                        .map_or_else(|| UNKNOWN.to_owned(), |c| c.to_string());
                    info!(
                        ?tx,
                        conn = %conn,
                        domain = why.domain().unwrap_or(UNKNOWN),
                        reason = %why,
                        "outbound request not delivered"
                    );
                    EdgeEvent::Undeliverable { tx, why }
                }
                CoreOutput::ConnectionLost { conn } => EdgeEvent::ConnectionLost { conn },
            };
            let _ = shared.events.send(event);
        }
        if let Some((conn, size)) = processed {
            if let Some(w) = writers.get(&conn) {
                w.shared.wake_if(w.shared.counters.processed(size));
            }
        }
    }
}

/// The connection label of a peer before its certificate is known (a failed inbound handshake).
const UNKNOWN_PEER: &str = "unknown";

/// The configured partners, for the connection metrics' domain labels.
fn set_partner_labels(settings: &CoreSettings) {
    telemetry::set_partners(
        settings
            .federation
            .partners
            .iter()
            .map(|p| (p.domain.as_str(), p.edge.as_ref().map(|e| e.host.as_str()))),
    );
}

/// Counts a frame received: a request by method, a response by its CSeq method and class, an
/// unparsable message.
fn count_in(frame: &Frame) {
    match frame {
        Frame::Message(m) => match (m.method(), m.status()) {
            (Some(method), _) => telemetry::sip_request(
                Direction::In,
                telemetry::method_index(method.as_str().as_bytes()),
            ),
            (None, Some(status)) => {
                let method = m.cseq().map_or(telemetry::METHODS.len() - 1, |c| {
                    telemetry::method_index(c.method.as_str().as_bytes())
                });
                telemetry::sip_response(Direction::In, method, status);
            }
            (None, None) => {}
        },
        Frame::Invalid { .. } => telemetry::sip_malformed(),
        _ => {}
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
