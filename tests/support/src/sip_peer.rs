#![allow(clippy::unwrap_used)] // test fixture: a failure to build one is a test failure
#![allow(dead_code)] // each test binary uses part of the harness

//! A mutual-TLS SIP peer edge for the outbound tests: listens on loopback, requires a client
//! certificate from the test CA, counts the connections it accepts, records every request
//! and answers each with `200 OK` once the test releases it (`hold`), or at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lcs_bridge::sip::framing::{Frame, Framer};
use lcs_bridge::sip::message::{Limits, Message};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use crate::pki::Leaf;

pub struct SipPeer {
    pub addr: SocketAddr,
    /// TLS connections accepted so far (ever).
    pub accepted: Arc<AtomicUsize>,
    /// Requests received, in order, with the connection number they came on.
    pub requests: Arc<Mutex<Vec<(usize, Message)>>>,
    hold: Arc<AtomicBool>,
    release: Arc<Notify>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Drop for SipPeer {
    /// Stops listening and drops every connection.
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl SipPeer {
    /// Starts a peer with certificate `leaf`, trusting `ca` for client certificates; with
    /// `hold`, responses wait for [`SipPeer::release`].
    pub async fn start(leaf: Leaf, ca: &CertificateDer<'static>, hold: bool) -> SipPeer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(leaf.0, leaf.1)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let hold = Arc::new(AtomicBool::new(hold));
        let release = Arc::new(Notify::new());
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (accepted, requests, hold, release, tasks) = (
                accepted.clone(),
                requests.clone(),
                hold.clone(),
                release.clone(),
                tasks.clone(),
            );
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        continue;
                    };
                    let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                    let (requests, hold, release) =
                        (requests.clone(), hold.clone(), release.clone());
                    let conn = tokio::spawn(async move {
                        serve(tls, n, requests, hold, release).await;
                    });
                    tasks.lock().unwrap().push(conn);
                }
            }
        });
        tasks.lock().unwrap().push(task);
        SipPeer {
            addr,
            accepted,
            requests,
            hold,
            release,
            tasks,
        }
    }

    /// Lets held responses (and all later ones) go.
    pub fn release(&self) {
        self.hold.store(false, Ordering::SeqCst);
        self.release.notify_waiters();
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

async fn serve<S>(
    stream: S,
    n: usize,
    requests: Arc<Mutex<Vec<(usize, Message)>>>,
    hold: Arc<AtomicBool>,
    release: Arc<Notify>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let mut framer = Framer::new(Limits::default());
    let mut buf = vec![0u8; 16384];
    loop {
        let Ok(len) = reader.read(&mut buf).await else {
            return;
        };
        if len == 0 {
            return;
        }
        framer.push(&buf[..len]);
        while let Ok(Some(frame)) = framer.next_frame() {
            let Frame::Message(m) = frame else { continue };
            if !m.is_request() {
                continue;
            }
            requests.lock().unwrap().push((n, m.clone()));
            if m.method() == Some(&lcs_bridge::sip::message::Method::Ack) {
                continue;
            }
            let response = Message::response_to(&m, 200, None, Some("peer")).to_bytes();
            let (hold, release, writer) = (hold.clone(), release.clone(), writer.clone());
            tokio::spawn(async move {
                while hold.load(Ordering::SeqCst) {
                    let notified = release.notified();
                    if !hold.load(Ordering::SeqCst) {
                        break;
                    }
                    notified.await;
                }
                let _ = writer.lock().await.write_all(&response).await;
            });
        }
    }
}
