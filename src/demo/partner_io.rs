//! The simulated partner's wire side: its mutual-TLS SIP edge on a loopback port (a client
//! certificate from the demo's CA required), and one task that feeds every message from the
//! bridge, and the clock, to [`Partner`] and writes what it returns. It decides nothing.

#![allow(clippy::disallowed_methods)] // the partner's I/O loop reads the clock for its state machine

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{info, warn};

use super::partner::{Out, Partner};
use crate::sip::framing::{Frame, Framer};
use crate::sip::message::{Limits, Message};
use crate::sip::transaction::ConnId;

/// The tracing target of the partner's lines in the transcript.
pub const TARGET: &str = "lcs_bridge::demo::partner";

/// The partner edge's TLS: its certificate (serverAuth and clientAuth) and the CA it trusts.
pub struct PartnerTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

impl PartnerTls {
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        ca: CertificateDer<'static>,
    ) -> anyhow::Result<PartnerTls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca)?;
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(PartnerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }
}

/// What a connection's tasks tell the loop.
enum Event {
    Up(ConnId, mpsc::UnboundedSender<Vec<u8>>),
    Message(ConnId, Message),
    Closed(ConnId),
}

/// Most bytes a connection may have buffered towards the partner.
const MAX_BUFFERED: usize = 1 << 20;

/// Runs the partner on `listener` until the task is aborted; new requests go to the bridge's
/// edge at `bridge` (on a connection the bridge opened, or a new one).
pub async fn run(mut partner: Partner, listener: TcpListener, tls: PartnerTls, bridge: SocketAddr) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut conns: BTreeMap<ConnId, mpsc::UnboundedSender<Vec<u8>>> = BTreeMap::new();
    let mut next_conn: ConnId = 1;
    loop {
        let deadline = tokio::time::Instant::from_std(partner.poll_timeout());
        let out = tokio::select! {
            accepted = listener.accept() => {
                if let Ok((tcp, _)) = accepted {
                    let conn = next_conn;
                    next_conn += 1;
                    let (acceptor, events_tx) = (tls.acceptor.clone(), events_tx.clone());
                    tokio::spawn(async move {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => serve(conn, stream, events_tx),
                            Ok(Err(e)) => warn!(target: TARGET, "TLS handshake refused: {e}"),
                            Err(_) => warn!(target: TARGET, "TLS handshake timed out"),
                        }
                    });
                }
                Vec::new()
            }
            Some(event) = events.recv() => match event {
                Event::Up(conn, tx) => {
                    conns.insert(conn, tx);
                    Vec::new()
                }
                Event::Message(conn, m) => partner.handle(Instant::now(), conn, &m),
                Event::Closed(conn) => {
                    conns.remove(&conn);
                    partner.connection_lost(conn);
                    Vec::new()
                }
            },
            _ = tokio::time::sleep_until(deadline) => partner.handle_timeout(Instant::now()),
        };
        for o in out {
            match o {
                Out::Note(n) => info!(target: TARGET, "{n}"),
                Out::Send { conn, message } => {
                    if let Some(tx) = conns.get(&conn) {
                        let _ = tx.send(message.to_bytes());
                    }
                }
                Out::ToBridge(message) => {
                    // The newest connection, else a new one to the bridge's edge.
                    let conn = match conns.keys().next_back().copied() {
                        Some(c) => Some(c),
                        None => {
                            let conn = next_conn;
                            next_conn += 1;
                            match dial(&tls, bridge).await {
                                Ok(stream) => {
                                    let tx = serve_now(conn, stream, events_tx.clone());
                                    conns.insert(conn, tx);
                                    Some(conn)
                                }
                                Err(e) => {
                                    warn!(target: TARGET, "cannot reach the bridge at {bridge}: {e}");
                                    None
                                }
                            }
                        }
                    };
                    if let Some(tx) = conn.and_then(|c| conns.get(&c)) {
                        let _ = tx.send(message.to_bytes());
                    }
                }
            }
        }
    }
}

async fn dial(
    tls: &PartnerTls,
    bridge: SocketAddr,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(bridge)).await??;
    let name = ServerName::IpAddress(bridge.ip().into());
    Ok(tokio::time::timeout(Duration::from_secs(5), tls.connector.connect(name, tcp)).await??)
}

/// Starts a connection's reader and writer, announcing it to the loop.
fn serve<S>(conn: ConnId, stream: S, events: mpsc::UnboundedSender<Event>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let tx = serve_now(conn, stream, events.clone());
    let _ = events.send(Event::Up(conn, tx));
}

/// Starts a connection's reader and writer; returns the writer's sender.
fn serve_now<S>(
    conn: ConnId,
    stream: S,
    events: mpsc::UnboundedSender<Event>,
) -> mpsc::UnboundedSender<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let pong = tx.clone();
    tokio::spawn(async move {
        let mut framer = Framer::new(Limits::default());
        let mut buf = vec![0u8; 16384];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            framer.push(&buf[..n]);
            if framer.buffered() > MAX_BUFFERED {
                break;
            }
            loop {
                match framer.next_frame() {
                    Ok(Some(Frame::Message(m))) => {
                        let _ = events.send(Event::Message(conn, m));
                    }
                    Ok(Some(Frame::Ping)) => {
                        let _ = pong.send(crate::sip::framing::PONG.to_vec());
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        warn!(target: TARGET, "connection {conn}: {e}");
                        let _ = events.send(Event::Closed(conn));
                        return;
                    }
                }
            }
        }
        let _ = events.send(Event::Closed(conn));
    });
    tx
}
