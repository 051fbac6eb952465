//! Certificates as public CAs issue them now, against the real `lcs-bridge run` binary over
//! mutual TLS (docs/security.md "Certificates", docs/microsoft.md). The test plays the
//! XMPP server's component port (`lcs_test_support::net`, no XMPP server needed) and the
//! partner `contoso.com`'s edge, both ways, with rcgen-made chains.
//!
//! Background, for every case here: RFC 5280 §4.2.1.12 — "If the extension is present, then
//! the certificate MUST only be used for one of the purposes indicated"; id-kp-serverAuth is
//! TLS WWW server authentication, id-kp-clientAuth TLS WWW client authentication. A federation
//! edge is a TLS server to the partners that dial it and a TLS client to those it dials, and
//! Lync / Skype for Business edges check the purpose of the certificate each side presents.
//! Public CAs stop putting clientAuth in TLS certificates, leaves and intermediates: the
//! Chrome Root Program Policy §1.3.2 ("Dedicated TLS Server Authentication PKI Hierarchies",
//! from policy version 1.6, 2025-02-15) requires serverAuth-only hierarchies from 2026-06-15,
//! and Let's Encrypt ("Ending TLS Client Authentication Certificate Support in 2026",
//! 2025-05-14) issues without clientAuth by default from 2026-02-11 and not at all from
//! 2026-05-13.
//!
//! - `server_auth_only_partner_is_refused_by_default_and_served_when_allowed`: a partner edge
//!   presenting a serverAuth-only certificate (leaf, then intermediate) as its client
//!   certificate;
//! - `separate_client_certificate_on_connections_the_bridge_opens`: the bridge with a
//!   serverAuth-only server certificate and a clientAuth client certificate presents each in
//!   its role.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use lcs_test_support::{net, pki};

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lcs_bridge::sip::framing::{Frame, Framer};
use lcs_bridge::sip::message::{Limits, Message};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use lcs_test_support::config::{BridgeConfig, NO_DNS};
use lcs_test_support::e2e::Mode;
use lcs_test_support::{GATEWAY_COMPONENT, XMPP_DOMAIN, free_port};
use pki::{BOTH_AUTH, CLIENT_AUTH, Leaf, Pki, SERVER_AUTH, der_to_pem, write_leaf_files};

const SECRET: &str = "s3cret";
const STARTED: &str = "lcs-bridge started";
const LCS_DOMAIN: &str = "contoso.com";
const PARTNER_NAMES: &[&str] = &["sip.contoso.com", LCS_DOMAIN, "127.0.0.1"];
const BRIDGE_NAMES: &[&str] = &["sip.xmpp.test", XMPP_DOMAIN, "127.0.0.1"];
const WAIT: Duration = Duration::from_secs(20);
/// The refusal's log line when `sip.accept_server_auth_only_clients` is off.
const REFUSED: &str = "peer certificate lacks the clientAuth extended key usage (in its leaf or an intermediate certificate; RFC 5280 §4.2.1.12); set sip.accept_server_auth_only_clients = true to accept partner certificates that carry serverAuth only";
/// The once-per-identity warning when it is on.
const ACCEPTED: &str = "accepted a partner certificate without the clientAuth extended key usage (serverAuth only), as the key allows";

struct World {
    dir: tempfile::TempDir,
    bridge: Child,
    sip: SocketAddr,
    /// The partner edge's listener (the bridge's static route to contoso.com).
    partner: TcpListener,
    /// The component stream's writer and events.
    xmpp: (net::Writer, UnboundedReceiver<net::Event>),
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.bridge.kill();
        let _ = self.bridge.wait();
    }
}

impl World {
    /// Starts the bridge with `sip` appended to its `[sip]` table; `prepare` writes its TLS
    /// files into the directory (`bridge.crt`, `bridge.key`, `ca.crt` and any others `sip`
    /// names). Returns once it has logged its start.
    async fn start(sip: &str, prepare: impl FnOnce(&Path)) -> World {
        let dir = tempfile::Builder::new()
            .prefix("lcs-ms-tls-")
            .tempdir()
            .unwrap();
        prepare(dir.path());
        let component = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let partner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sip_port = free_port();
        let sip = format!("{NO_DNS}{sip}");
        let toml = BridgeConfig {
            secret: SECRET,
            sip: &sip,
            im: String::new(),
            log_level: "info,lcs_bridge::edge::server=debug",
            ..BridgeConfig::new(
                dir.path(),
                Mode::Gateway,
                component.local_addr().unwrap().port(),
                sip_port,
                partner.local_addr().unwrap().port(),
            )
        }
        .toml();
        let config = dir.path().join("lcs-bridge.toml");
        std::fs::write(&config, toml).unwrap();
        // `LCS_BRIDGE_BIN=<path>` runs the cases against another build.
        let bridge = lcs_test_support::spawn_bridge(&config, &dir.path().join("bridge.log"));
        let (events_tx, events) = unbounded_channel();
        let accept = net::accept_component(&component, GATEWAY_COMPONENT, SECRET, 1, events_tx);
        let mut world = World {
            dir,
            bridge,
            sip: SocketAddr::from(([127, 0, 0, 1], sip_port)),
            partner,
            xmpp: (unbounded_channel().0, events),
        };
        match tokio::time::timeout(WAIT, accept).await {
            Ok(Ok(w)) => world.xmpp.0 = w,
            other => panic!(
                "no component stream ({:?}); bridge log:\n{}",
                other.err(),
                world.log()
            ),
        }
        world.wait_log(STARTED, 1).await;
        world
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("lcs-bridge.toml")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bridge.log")).unwrap_or_default()
    }

    fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    async fn wait_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.count(needle) < count {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} (×{count}) in the bridge's log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Rewrites the configuration with `edit` and sends SIGHUP; returns once the bridge has
    /// reloaded its certificates.
    async fn reload(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(self.config()).unwrap();
        std::fs::write(self.config(), edit(text)).unwrap();
        let before = self.count("TLS certificates and CA bundle reloaded");
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.bridge.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_log("TLS certificates and CA bundle reloaded", before + 1)
            .await;
    }

    /// Connects to the bridge's SIP port as the partner's edge presenting `leaf`: the TLS
    /// stream, or the handshake's error.
    async fn connect(&self, pki: &Pki, leaf: &Leaf) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.sip).await?;
        TlsConnector::from(client_config(&pki.ca, leaf))
            .connect(ServerName::try_from("sip.xmpp.test").unwrap(), tcp)
            .await
    }
}

fn roots(ca: &CertificateDer<'static>) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(ca: &CertificateDer<'static>, leaf: &Leaf) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(ca))
            .with_client_auth_cert(leaf.0.clone(), leaf.1.clone_key())
            .unwrap(),
    )
}

/// A partner edge's TLS server: presents `leaf`, requires a client certificate chaining to
/// `ca` with clientAuth (rustls's own verifier, as strict as a Lync edge).
fn partner_acceptor(ca: &CertificateDer<'static>, leaf: &Leaf) -> TlsAcceptor {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
    TlsAcceptor::from(Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(leaf.0.clone(), leaf.1.clone_key())
            .unwrap(),
    ))
}

/// The bridge's trusted CA and its server certificate (`bridge.crt`, `bridge.key`, `ca.crt`).
fn write_bridge(dir: &Path, pki: &Pki, server: &Leaf) {
    write_leaf_files(dir, "bridge", server);
    std::fs::write(dir.join("ca.crt"), der_to_pem("CERTIFICATE", &pki.ca)).unwrap();
}

/// An OPTIONS from the partner's edge (answered by the bridge's edge itself).
fn options(branch: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:sip.xmpp.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@{LCS_DOMAIN}>;tag=p1\r\nTo: <sip:sip.xmpp.test>\r\n\
         Call-ID: {branch}@{LCS_DOMAIN}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Sends `req` and reads one message; `Err` when the connection fails or ends first.
async fn ask(stream: &mut TlsStream<TcpStream>, req: Vec<u8>) -> Result<Message, String> {
    stream.write_all(&req).await.map_err(|e| e.to_string())?;
    let mut framer = Framer::new(Limits::default());
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            framer.expect_pong();
            match framer.next_frame() {
                Ok(Some(Frame::Message(m))) => return Ok(m),
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => return Err(format!("framing: {e}")),
            }
            match stream.read(&mut buf).await {
                Ok(0) => return Err("closed".to_owned()),
                Ok(n) => framer.push(&buf[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| Err("no answer in time".to_owned()))
}

/// A partner edge whose certificate is what a public CA issues from 2026 — serverAuth only,
/// in the leaf, then in the issuing intermediate (RFC 5280 §4.2.1.12; Chrome Root Program
/// Policy §1.3.2) — connects to the bridge and presents it as its TLS client certificate.
///
/// By default the bridge refuses the handshake (as Lync / Skype for Business edges and
/// rustls's own verifier do) and its log names the cause and the key that allows it: exactly
/// `reason=` [`REFUSED`]. With `sip.accept_server_auth_only_clients = true`, applied by
/// SIGHUP, the same partner is served (its OPTIONS answered 200), the acceptance is logged
/// once per certificate identity however many connections it opens, and a certificate from a
/// CA the bridge does not trust stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_auth_only_partner_is_refused_by_default_and_served_when_allowed() {
    let root = Pki::new("ms_tls root");
    let issuing = root.intermediate("ms_tls TLS server CA", SERVER_AUTH);
    let bridge_leaf = root.leaf_with(BRIDGE_NAMES, BOTH_AUTH, false);
    let world = World::start("", |dir| write_bridge(dir, &root, &bridge_leaf)).await;

    // A serverAuth-only leaf straight under the root, then a leaf (with both usages) under a
    // serverAuth-only intermediate.
    let leaf_only = root.leaf_with(PARTNER_NAMES, SERVER_AUTH, false);
    let via_intermediate = issuing.leaf_with(&["edge2.contoso.com", LCS_DOMAIN], BOTH_AUTH, false);
    for (n, leaf) in [&leaf_only, &via_intermediate].into_iter().enumerate() {
        let answer = match world.connect(&root, leaf).await {
            // TLS 1.3: the client's side of the handshake ends before the server has
            // checked its certificate; the refusal comes as an alert on the first read.
            Ok(mut tls) => ask(&mut tls, options(&format!("refused{n}"))).await,
            Err(e) => Err(e.to_string()),
        };
        let e = answer.expect_err("a serverAuth-only partner was served by default");
        assert!(
            e.contains("UnsupportedCertificate") || e.contains("unsupported"),
            "the alert names the purpose: {e}"
        );
        world.wait_log(&format!("reason={REFUSED}"), n + 1).await;
    }
    assert_eq!(world.count(ACCEPTED), 0);

    world
        .reload(|t| {
            t.replace(
                "[federation]",
                "accept_server_auth_only_clients = true\n\n[federation]",
            )
        })
        .await;
    for (n, leaf) in [&leaf_only, &leaf_only, &via_intermediate]
        .into_iter()
        .enumerate()
    {
        let mut tls = world.connect(&root, leaf).await.unwrap();
        let answer = ask(&mut tls, options(&format!("served{n}"))).await.unwrap();
        assert_eq!(answer.status(), Some(200), "{answer:?}");
    }
    // Two identities (the two certificates' names), one warning each.
    world.wait_log(ACCEPTED, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.count(ACCEPTED), 2, "{}", world.log());
    assert_eq!(world.count(&format!("reason={REFUSED}")), 2);

    // Allowing serverAuth does not loosen anything else: an unknown CA is refused.
    let stranger = Pki::new("Someone else").leaf_with(PARTNER_NAMES, SERVER_AUTH, false);
    let answer = match world.connect(&root, &stranger).await {
        Ok(mut tls) => ask(&mut tls, options("stranger")).await,
        Err(e) => Err(e.to_string()),
    };
    assert!(answer.is_err(), "{answer:?}");
    world
        .wait_log(
            "reason=peer certificate is not issued by a trusted CA (unknown CA)",
            1,
        )
        .await;
}

/// The bridge's own certificates as a public CA issues them from 2026: its server
/// certificate serverAuth only, and a separate clientAuth certificate in
/// `sip.client_cert_chain` / `sip.client_private_key` for the connections it opens
/// (RFC 5280 §4.2.1.12: each certificate only for the purposes it lists).
///
/// A partner edge dialling the bridge sees the server certificate; the partner edge the
/// bridge dials (to deliver a local user's message) requires a client certificate with
/// clientAuth, as a Lync / Skype for Business edge does, and sees the client certificate.
/// After a SIGHUP that swaps the client certificate, the next connection the bridge opens
/// presents the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_client_certificate_on_connections_the_bridge_opens() {
    let root = Pki::new("ms_tls root");
    let server = root.leaf_with(BRIDGE_NAMES, SERVER_AUTH, false);
    let client = root.leaf_with(BRIDGE_NAMES, CLIENT_AUTH, false);
    let sip = "client_cert_chain = \"client.crt\"\nclient_private_key = \"client.key\"\n";
    let world = World::start(sip, |dir| {
        write_bridge(dir, &root, &server);
        write_leaf_files(dir, "client", &client);
    })
    .await;
    let partner = root.leaf_with(PARTNER_NAMES, BOTH_AUTH, false);

    // Inbound: the server certificate.
    let mut tls = world.connect(&root, &partner).await.unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert!(
        presented == server.0[0],
        "the bridge presented another certificate"
    );
    let answer = ask(&mut tls, options("inbound")).await.unwrap();
    assert_eq!(answer.status(), Some(200));
    drop(tls);
    // Gone before the message, or the bridge would send it on this connection (it serves the
    // partner's domain).
    world.wait_log("peer closed", 1).await;

    // Outbound: a local user writes to an LCS user; the bridge dials the partner's edge.
    let acceptor = partner_acceptor(&root.ca, &partner);
    let seen = dial_and_inspect(&world, &acceptor, "m1").await;
    assert!(
        seen == client.0[0],
        "the bridge did not present its client certificate"
    );

    // Connections the bridge may open again for m1 (it was cut off) come before the reload.
    drain(&world, &acceptor).await;

    // SIGHUP with a new client certificate: the next connection the bridge opens shows it.
    let renewed = root.leaf_with(BRIDGE_NAMES, CLIENT_AUTH, false);
    write_leaf_files(world.dir.path(), "client", &renewed);
    world.reload(|t| t).await;
    let seen = dial_and_inspect(&world, &acceptor, "m2").await;
    assert!(
        seen == renewed.0[0],
        "the reloaded client certificate was not presented"
    );
}

/// Makes the bridge open a connection to the partner (a chat message from alice to an LCS
/// user who has no session yet), accepts it with `acceptor` and returns the client certificate
/// the bridge presented. The connection is then closed, so that the next message needs a new
/// one.
async fn dial_and_inspect(
    world: &World,
    acceptor: &TlsAcceptor,
    id: &str,
) -> CertificateDer<'static> {
    let to = format!("{id}\\40{LCS_DOMAIN}@{GATEWAY_COMPONENT}");
    let stanza = format!(
        "<message from='alice@{XMPP_DOMAIN}/r' to='{to}' type='chat' id='{id}'><body>hello</body></message>"
    );
    world.xmpp.0.send(stanza.into_bytes()).unwrap();
    let (tcp, _) = tokio::time::timeout(WAIT, world.partner.accept())
        .await
        .unwrap_or_else(|_| panic!("the bridge did not dial the partner; log:\n{}", world.log()))
        .unwrap();
    let tls = tokio::time::timeout(WAIT, acceptor.accept(tcp))
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!(
                "handshake with the bridge failed: {e}; log:\n{}",
                world.log()
            )
        });
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    drop(tls);
    cert
}

/// Accepts (and closes) whatever connections the bridge opens within a second and a half.
async fn drain(world: &World, acceptor: &TlsAcceptor) {
    while let Ok(Ok((tcp, _))) =
        tokio::time::timeout(Duration::from_millis(1500), world.partner.accept()).await
    {
        let _ = tokio::time::timeout(WAIT, acceptor.accept(tcp)).await;
    }
}
