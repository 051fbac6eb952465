//! The edge's I/O: the mutual-TLS listener, one reader and one writer task per connection, and
//! the task that owns the sans-IO [`EdgeCore`] and its timers. Every byte a peer sends goes
//! through [`Framer`] (bounded buffers, typed errors); a connection that breaks the framing is
//! closed without disturbing the others.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::core::{CoreOutput, CoreSettings, EdgeCore};
use super::tls::{TlsConfigs, describe_handshake_error};
use crate::policy::PeerIdentity;
use crate::sip::framing::{Frame, Framer};
use crate::sip::message::{Limits, Message};
use crate::sip::transaction::ConnId;

/// Everything the edge needs to run.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub listen: SocketAddr,
    pub tls: TlsConfigs,
    pub core: CoreSettings,
    pub limits: Limits,
    /// A TLS handshake must finish within this time.
    pub handshake_timeout: Duration,
    /// A connection with nothing to read for this long is closed.
    pub idle_timeout: Duration,
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
            idle_timeout: Duration::from_secs(300),
            message_timeout: Duration::from_secs(30),
        }
    }
}

/// A running edge.
pub struct EdgeHandle {
    pub local_addr: SocketAddr,
    tls: Arc<RwLock<TlsConfigs>>,
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

    /// Stops accepting and drops every connection.
    pub fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

enum CoreInput {
    Connected {
        conn: ConnId,
        peer: SocketAddr,
        identity: PeerIdentity,
        writer: mpsc::Sender<WriteCmd>,
    },
    Frame {
        conn: ConnId,
        frame: Frame,
    },
    Closed {
        conn: ConnId,
    },
}

enum WriteCmd {
    Bytes(Vec<u8>),
    Close,
}

/// Binds the listener and starts the edge.
pub async fn start(settings: EdgeSettings) -> std::io::Result<EdgeHandle> {
    let listener = TcpListener::bind(settings.listen).await?;
    let local_addr = listener.local_addr()?;
    info!(%local_addr, "SIP federation edge listening (mutual TLS)");
    let (core_tx, core_rx) = mpsc::channel::<CoreInput>(1024);
    let tls = Arc::new(RwLock::new(settings.tls.clone()));
    let settings = Arc::new(settings);
    let core_task = tokio::spawn(run_core(settings.core.clone(), core_rx));
    let accept_task = tokio::spawn(accept_loop(listener, settings, tls.clone(), core_tx));
    Ok(EdgeHandle {
        local_addr,
        tls,
        tasks: vec![core_task, accept_task],
    })
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

async fn accept_loop(
    listener: TcpListener,
    settings: Arc<EdgeSettings>,
    tls: Arc<RwLock<TlsConfigs>>,
    core_tx: mpsc::Sender<CoreInput>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let server_config = match tls.read() {
            Ok(t) => t.server.clone(),
            Err(poisoned) => poisoned.into_inner().server.clone(),
        };
        let acceptor = TlsAcceptor::from(server_config);
        let settings = settings.clone();
        let core_tx = core_tx.clone();
        tokio::spawn(async move {
            handle_connection(tcp, peer, acceptor, settings, core_tx).await;
        });
    }
}

async fn handle_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    settings: Arc<EdgeSettings>,
    core_tx: mpsc::Sender<CoreInput>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(tcp)).await {
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
    let identity = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(cert) => match PeerIdentity::from_certificate(cert) {
            Ok(id) => id,
            Err(e) => {
                warn!(%peer, reason = %e, "peer certificate unusable");
                return;
            }
        },
        None => {
            warn!(%peer, reason = "peer presented no client certificate", "TLS handshake failed");
            return;
        }
    };
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    info!(%peer, conn, names = ?identity.names(), "peer connected");
    let (mut reader, mut writer) = tokio::io::split(tls);
    let (write_tx, mut write_rx) = mpsc::channel::<WriteCmd>(256);
    if core_tx
        .send(CoreInput::Connected {
            conn,
            peer,
            identity,
            writer: write_tx,
        })
        .await
        .is_err()
    {
        return;
    }
    let writer_task = tokio::spawn(async move {
        while let Some(cmd) = write_rx.recv().await {
            match cmd {
                WriteCmd::Bytes(b) => {
                    if writer.write_all(&b).await.is_err() || writer.flush().await.is_err() {
                        break;
                    }
                }
                WriteCmd::Close => break,
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut framer = Framer::new(settings.limits);
    let mut buf = vec![0u8; 16 * 1024];
    let mut started: Option<Instant> = None;
    loop {
        let limit = match started {
            Some(t) => settings
                .message_timeout
                .saturating_sub(t.elapsed())
                .max(Duration::from_millis(1)),
            None => settings.idle_timeout,
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
                let what = if started.is_some() {
                    "message not completed in time"
                } else {
                    "idle"
                };
                info!(%peer, conn, reason = what, "closing connection");
                break;
            }
        };
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
    let _ = core_tx.send(CoreInput::Closed { conn }).await;
    // Let queued responses go out, then close.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
}

async fn run_core(settings: CoreSettings, mut rx: mpsc::Receiver<CoreInput>) {
    let mut core = EdgeCore::new(settings, random_seed());
    let mut writers: HashMap<ConnId, mpsc::Sender<WriteCmd>> = HashMap::new();
    loop {
        let deadline = core.poll_timeout();
        let input = tokio::select! {
            input = rx.recv() => match input {
                Some(i) => Some(i),
                None => return,
            },
            _ = sleep_until(deadline) => None,
        };
        let now = Instant::now();
        let outputs = match input {
            None => core.handle_timeout(now),
            Some(CoreInput::Connected {
                conn,
                peer,
                identity,
                writer,
            }) => {
                debug!(conn, %peer, "registered");
                writers.insert(conn, writer);
                core.connected(conn, identity);
                Vec::new()
            }
            Some(CoreInput::Frame { conn, frame }) => core.on_frame(now, conn, frame),
            Some(CoreInput::Closed { conn }) => {
                if let Some(w) = writers.remove(&conn) {
                    let _ = w.try_send(WriteCmd::Close);
                }
                core.disconnected(now, conn)
            }
        };
        let mut queue: std::collections::VecDeque<CoreOutput> = outputs.into();
        while let Some(o) = queue.pop_front() {
            match o {
                CoreOutput::Send { conn, bytes } => {
                    // Responses go back on the connection the request came in on; if it is
                    // gone the response is dropped (profile).
                    if let Some(w) = writers.get(&conn) {
                        if w.try_send(WriteCmd::Bytes(bytes)).is_err() {
                            warn!(conn, "peer does not read: closing connection");
                            let _ = w.try_send(WriteCmd::Close);
                            writers.remove(&conn);
                        }
                    }
                }
                CoreOutput::Request { tx, request, .. } => {
                    // No IM/presence engine is wired in this build: say so instead of dropping.
                    let tag = core.new_tag();
                    let resp = Message::response_to(
                        &request,
                        501,
                        Some("Not Implemented by this gateway yet"),
                        Some(&tag),
                    );
                    queue.extend(core.respond(now, tx, resp));
                }
                CoreOutput::Event(e) => debug!(event = ?e, "transaction event"),
            }
        }
    }
}

/// 64 random bits from the process's randomly keyed hasher (std seeds it from the OS).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
