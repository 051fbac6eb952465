//! The edge's I/O: the mutual-TLS listener, outbound connections (DNS, TCP, TLS verified
//! against the edge name dialled), one reader and one writer task per connection, and the task
//! that owns the sans-IO [`EdgeCore`] and its timers. Every byte a peer sends goes through
//! [`Framer`] (bounded buffers, typed errors); a connection that breaks the framing is closed
//! without disturbing the others.
//!
//! The layer above (the IM and presence engine, or a test) talks to the edge through
//! [`EdgeHandle`] (requests out, responses, ACKs) and receives [`EdgeEvent`]s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

use super::core::{Asserted, CoreOutput, CoreSettings, EdgeCore, Route, Undeliverable};
use super::dns::{Discovery, DiscoveryError};
use super::pool::{EdgeAddr, NEGATIVE_TTL_FLOOR};
use super::tls::{TlsConfigs, describe_handshake_error};
use crate::policy::PeerIdentity;
use crate::sip::framing::{Frame, Framer, PING};
use crate::sip::message::{Limits, Message};
use crate::sip::transaction::{ConnId, TxEvent, TxId, TxIds};

/// Most bytes the connection writer gathers from its queue into one write.
const WRITE_BATCH: usize = 64 * 1024;

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

/// What the edge tells the layer above.
#[derive(Debug, Clone, PartialEq)]
pub enum EdgeEvent {
    /// A request from a peer that passed admission: answer it with [`EdgeHandle::respond`].
    Request {
        tx: TxId,
        conn: ConnId,
        request: Message,
        asserted: Option<Asserted>,
    },
    /// A transaction event: responses to requests sent, timeouts, ACKs for 2xx, cancels.
    Transaction(TxEvent),
    /// An outbound request was not sent.
    Undeliverable { tx: TxId, why: Undeliverable },
    /// A connection closed; dialogs on it are lost.
    ConnectionLost { conn: ConnId },
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
        if matches!(event, EdgeEvent::Request { .. }) {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        Some(event)
    }
}

/// A running edge.
pub struct EdgeHandle {
    pub local_addr: SocketAddr,
    tls: Arc<RwLock<TlsConfigs>>,
    commands: mpsc::Sender<CoreInput>,
    ids: TxIds,
    tasks: Vec<JoinHandle<()>>,
}

impl EdgeHandle {
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

    /// Stops accepting and drops every connection.
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

enum CoreInput {
    Connected {
        conn: ConnId,
        peer: SocketAddr,
        identity: PeerIdentity,
        writer: Writer,
        outbound: bool,
    },
    ConnectFailed {
        conn: ConnId,
        reason: String,
    },
    Resolved {
        domain: String,
        result: Result<Vec<crate::policy::SrvTarget>, String>,
        valid_until: Instant,
    },
    Frame {
        conn: ConnId,
        frame: Frame,
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

/// Most bytes queued for one connection's writer. A peer that leaves this much unread is not
/// reading, and its connection is closed. It is counted in bytes, not messages: a burst of the
/// bridge's own requests (a restart taking up its subscriptions, a presence fan-out) can
/// queue thousands of small messages to a peer that reads fine.
const MAX_WRITE_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// The sending side of a connection's writer task, bounded by [`MAX_WRITE_QUEUE_BYTES`].
#[derive(Clone)]
struct Writer {
    tx: mpsc::UnboundedSender<WriteCmd>,
    queued: Arc<AtomicUsize>,
}

impl Writer {
    /// Queues `bytes`; false when the queue is over its bound or the writer is gone.
    fn send(&self, bytes: Vec<u8>) -> bool {
        let len = bytes.len();
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > MAX_WRITE_QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        self.tx.send(WriteCmd::Bytes(bytes)).is_ok()
    }

    fn close(&self) {
        let _ = self.tx.send(WriteCmd::Close);
    }
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
    let core = EdgeCore::new(settings.core.clone(), crate::random::seed());
    let ids = core.tx_ids();
    let io = Io {
        settings: settings.clone(),
        tls: tls.clone(),
        discovery,
        core_tx: core_tx.clone(),
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
        let acceptor = TlsAcceptor::from(io.tls().server);
        let io = io.clone();
        tokio::spawn(async move {
            accept_connection(tcp, peer, acceptor, io).await;
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

async fn accept_connection(tcp: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, io: Io) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(io.settings.handshake_timeout, acceptor.accept(tcp)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            warn!(%peer, reason = %describe_handshake_error(&e), "TLS handshake failed");
            return;
        }
        Err(_) => {
            warn!(%peer, reason = "handshake timed out", "TLS handshake failed");
            return;
        }
    };
    let identity = match identity_of(tls.get_ref().1.peer_certificates()) {
        Ok(id) => id,
        Err(e) => {
            warn!(%peer, reason = %e, "peer certificate unusable");
            return;
        }
    };
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    info!(%peer, conn, names = ?identity.names(), "peer connected");
    run_connection(tls, conn, peer, identity, false, io).await;
}

/// Opens outbound connection `conn` to `edge`: its addresses, TCP, TLS with the edge's name.
async fn connect_outbound(conn: ConnId, domain: String, edge: EdgeAddr, io: Io) {
    let attempt = async {
        let addrs = io
            .discovery
            .addresses(&edge.host, edge.port)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(edge.host.clone())
            .map_err(|e| format!("{} is not a valid TLS server name: {e}", edge.host))?;
        let connector = TlsConnector::from(io.tls().client);
        let mut last = format!("{} has no address", edge.host);
        for addr in addrs {
            let tcp = match TcpStream::connect(addr).await {
                Ok(t) => t,
                Err(e) => {
                    last = format!("connect to {addr}: {e}");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            match connector.connect(name.clone(), tcp).await {
                Ok(tls) => return Ok((tls, addr)),
                Err(e) => last = format!("TLS with {addr}: {}", describe_handshake_error(&e)),
            }
        }
        Err(last)
    };
    let result = match tokio::time::timeout(io.settings.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no TLS connection within {} s",
            io.settings.connect_timeout.as_secs()
        )),
    };
    let (tls, addr) = match result {
        Ok(x) => x,
        Err(reason) => {
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
            warn!(conn, %domain, %edge, %reason, "peer edge certificate unusable");
            let _ = io
                .core_tx
                .send(CoreInput::ConnectFailed { conn, reason })
                .await;
            return;
        }
    };
    info!(conn, %domain, %edge, peer = %addr, "connected to peer edge");
    run_connection(tls, conn, addr, identity, true, io).await;
}

/// Registers an authenticated connection with the core and runs its reader and writer until it
/// ends.
async fn run_connection<S>(
    stream: S,
    conn: ConnId,
    peer: SocketAddr,
    identity: PeerIdentity,
    outbound: bool,
    io: Io,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let settings = io.settings.clone();
    let core_tx = io.core_tx;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut write_rx) = mpsc::unbounded_channel::<WriteCmd>();
    let write_tx = Writer {
        tx,
        queued: Arc::new(AtomicUsize::new(0)),
    };
    let queued = write_tx.queued.clone();
    if core_tx
        .send(CoreInput::Connected {
            conn,
            peer,
            identity,
            writer: write_tx.clone(),
            outbound,
        })
        .await
        .is_err()
    {
        return;
    }
    let writer_task = tokio::spawn(async move {
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
            queued.fetch_sub(batch.len(), Ordering::Relaxed);
            if closing {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut framer = Framer::new(settings.limits);
    let mut buf = vec![0u8; 16 * 1024];
    let mut started: Option<Instant> = None;
    let mut last_read = Instant::now();
    let mut pinged = false;
    loop {
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
                debug!(%peer, conn, "peer closed the connection");
                break;
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                debug!(%peer, conn, error = %e, "read failed");
                break;
            }
            Err(_) => {
                if started.is_some() {
                    info!(%peer, conn, reason = "message not completed in time", "closing connection");
                    break;
                }
                if last_read.elapsed() >= settings.idle_timeout {
                    info!(%peer, conn, reason = "idle", "closing connection");
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
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    progressed = true;
                    if core_tx
                        .send(CoreInput::Frame { conn, frame })
                        .await
                        .is_err()
                    {
                        fatal = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(%peer, conn, reason = %e, "closing connection: unusable SIP stream");
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
    let _ = core_tx.send(CoreInput::Closed { conn }).await;
    // Let queued responses go out, then close.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
}

/// Looks up a domain's edges for the core.
async fn resolve(domain: String, io: Io) {
    let (result, valid_until) = match io.discovery.edge_targets(&domain).await {
        Ok(r) => (Ok(r.targets), r.valid_until),
        Err(DiscoveryError::NoSrv { valid_until, .. }) => (
            Err(format!("no _sipfederationtls._tcp SRV record for {domain}")),
            valid_until,
        ),
        Err(e) => (Err(e.to_string()), Instant::now() + NEGATIVE_TTL_FLOOR),
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
        let outputs = match input {
            None => core.handle_timeout(now),
            Some(CoreInput::Connected {
                conn,
                peer,
                identity,
                writer,
                outbound,
            }) => {
                debug!(conn, %peer, outbound, "registered");
                writers.insert(conn, writer);
                if outbound {
                    core.outbound_up(now, conn, identity)
                } else {
                    core.connected(conn, identity);
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
            Some(CoreInput::Frame { conn, frame }) => core.on_frame(now, conn, frame),
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
            Some(CoreInput::Reconfigure(settings)) => {
                core.reconfigure(settings);
                info!("federation policy reloaded");
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
                        if !w.send(bytes) {
                            warn!(
                                conn,
                                "peer does not read (16 MiB unsent): closing connection"
                            );
                            w.close();
                            writers.remove(&conn);
                        }
                    }
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
                    info!(?tx, reason = %why, "outbound request not delivered");
                    EdgeEvent::Undeliverable { tx, why }
                }
                CoreOutput::ConnectionLost { conn } => EdgeEvent::ConnectionLost { conn },
            };
            let _ = shared.events.send(event);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
