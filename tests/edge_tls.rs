//! The federation edge on loopback with real mutual TLS (rustls both sides, rcgen-made
//! certificates): OPTIONS, the profile's refusals (SIPS 400, unserved domain 404, From domain not
//! covered by the peer's certificate 403), keep-alive, handshake refusals (no client
//! certificate, unknown CA, expired), and garbage on one connection not disturbing another.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lcs_bridge::edge::event::EdgeEvent;
use lcs_bridge::edge::server::{EdgeHandle, EdgeSettings, MAX_PENDING_REQUESTS};
use lcs_bridge::edge::tls::TlsConfigs;
use lcs_bridge::sip::framing::{Frame, Framer};
use lcs_bridge::sip::message::{Limits, Message};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use lcs_test_support::pki::{Leaf, Pki};

async fn start_edge(pki: &Pki) -> SocketAddr {
    start_edge_with(pki, Duration::from_secs(30)).await
}

async fn start_edge_with(pki: &Pki, message_timeout: Duration) -> SocketAddr {
    start_edge_handle(pki, message_timeout).await.local_addr
}

fn edge_tls(pki: &Pki) -> TlsConfigs {
    let (chain, key) = pki.leaf(&["sip.example.org", "localhost"], false);
    TlsConfigs::from_der(chain, key, vec![pki.ca.clone()]).unwrap()
}

async fn start_edge_handle(pki: &Pki, message_timeout: Duration) -> Arc<EdgeHandle> {
    let tls = edge_tls(pki);
    let core = lcs_test_support::edge::core_settings();
    let mut settings =
        EdgeSettings::new("127.0.0.1:0".parse().unwrap(), tls, core, Limits::default());
    settings.message_timeout = message_timeout;
    lcs_test_support::edge::start_answering(settings).await
}

fn client_config(
    pki_ca: &CertificateDer<'static>,
    leaf: Option<Leaf>,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki_ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match leaf {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Reads until one frame arrives (or the connection ends: `None`).
async fn read_frame(stream: &mut TlsStream<TcpStream>, framer: &mut Framer) -> Option<Frame> {
    let mut buf = [0u8; 4096];
    loop {
        framer.expect_pong();
        if let Ok(Some(f)) = framer.next_frame() {
            return Some(f);
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("edge answers within 10 s")
            .ok()?;
        if n == 0 {
            return None;
        }
        framer.push(&buf[..n]);
    }
}

/// An OPTIONS to the edge from the contoso peer.
fn options(branch: &str) -> Vec<u8> {
    request(
        "OPTIONS",
        "sip:sip.example.org",
        "sip:sip.contoso.com",
        branch,
    )
}

fn request(method: &str, ruri: &str, from: &str, branch: &str) -> Vec<u8> {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nFrom: <{from}>;tag=p1\r\nTo: <{ruri}>\r\nCall-ID: {branch}@contoso.com\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

async fn ask(stream: &mut TlsStream<TcpStream>, framer: &mut Framer, req: Vec<u8>) -> Message {
    stream.write_all(&req).await.unwrap();
    match read_frame(stream, framer).await {
        Some(Frame::Message(m)) => m,
        other => panic!("expected a response, got {other:?}"),
    }
}

#[tokio::test]
async fn edge_answers_and_refuses_per_the_profile() {
    let pki = Pki::new("Test federation CA");
    let addr = start_edge(&pki).await;
    let peer = client_config(
        &pki.ca,
        Some(pki.leaf(&["sip.contoso.com", "contoso.com"], false)),
    );
    let mut s = connect(addr, peer.clone()).await.unwrap();
    let mut f = Framer::new(Limits::default());

    let ok = ask(&mut s, &mut f, options("o1")).await;
    assert_eq!(ok.status(), Some(200));
    assert!(ok.header("Allow").unwrap().contains("MESSAGE"));
    assert_eq!(ok.content_type().unwrap().unwrap().subtype, "sdp");
    assert!(String::from_utf8_lossy(ok.body()).contains("m=message 5060 sip/tcp *"));
    assert!(ok.to().unwrap().tag().is_some());

    let cases = [
        (
            request(
                "MESSAGE",
                "sip:alice@example.org",
                "sips:joe@contoso.com",
                "s1",
            ),
            400,
            "SIPS URI in From is not supported (use sip: with transport=tls)",
        ),
        (
            request(
                "MESSAGE",
                "sip:bob@fabrikam.com",
                "sip:joe@contoso.com",
                "r1",
            ),
            404,
            "Domain fabrikam.com is not served here",
        ),
        (
            request(
                "MESSAGE",
                "sip:alice@example.org",
                "sip:mallory@fabrikam.com",
                "f1",
            ),
            403,
            "Peer certificate is not valid for domain fabrikam.com",
        ),
        (
            request(
                "MESSAGE",
                "sip:alice@example.org",
                "sip:joe@contoso.com",
                "m1",
            ),
            501,
            "Not Implemented by this gateway yet",
        ),
    ];
    for (req, status, reason) in cases {
        let resp = ask(&mut s, &mut f, req).await;
        assert_eq!((resp.status(), resp.reason()), (Some(status), Some(reason)));
    }
    // Malformed but framed: 400 naming the problem, connection stays.
    let bad = String::from_utf8(request(
        "MESSAGE",
        "sip:alice@example.org",
        "sip:joe@contoso.com",
        "b1",
    ))
    .unwrap()
    .replace("CSeq: 1 MESSAGE", "CSeq: 1 INVITE");
    let resp = ask(&mut s, &mut f, bad.into_bytes()).await;
    assert_eq!(resp.status(), Some(400));
    assert_eq!(
        resp.reason(),
        Some("CSeq method \"INVITE\" does not match request method \"MESSAGE\"")
    );

    // Keep-alive.
    s.write_all(b"\r\n\r\n").await.unwrap();
    assert_eq!(read_frame(&mut s, &mut f).await, Some(Frame::Pong));

    // Garbage on a second connection closes it; the first keeps working.
    let mut g = connect(addr, peer).await.unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut gf = Framer::new(Limits::default());
    assert_eq!(read_frame(&mut g, &mut gf).await, None);
    let again = ask(&mut s, &mut f, options("o2")).await;
    assert_eq!(again.status(), Some(200));
}

/// The handshake fails for the peer: either `connect` errors or the first read does.
async fn refused(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    match connect(addr, config).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(&options("x")).await;
            let mut f = Framer::new(Limits::default());
            read_frame(&mut s, &mut f).await.is_none()
        }
    }
}

/// Captures log output of this (current-thread) test.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// A TLS 1.0-only client (Python's ssl module, OpenSSL at security level 0): "connected" or
/// "refused …"; `None` without Python.
fn tls10_client(addr: SocketAddr) -> Option<String> {
    let python = lcs_test_support::find_binary("python3")?;
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n\
         ctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE\n\
         ctx.set_ciphers('DEFAULT@SECLEVEL=0')\n\
         ctx.minimum_version = ssl.TLSVersion.TLSv1\n\
         ctx.maximum_version = ssl.TLSVersion.TLSv1\n\
         s = socket.create_connection(('{}', {}), timeout=10)\n\
         try:\n    ctx.wrap_socket(s).do_handshake(); print('connected')\n\
         except Exception as e:\n    print('refused', e)\n",
        addr.ip(),
        addr.port()
    );
    let out = std::process::Command::new(python)
        .args(["-c", &script])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test]
async fn handshakes_without_a_good_client_certificate_are_refused() {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish(),
    );
    let pki = Pki::new("Test federation CA");
    let addr = start_edge(&pki).await;
    assert!(
        refused(addr, client_config(&pki.ca, None)).await,
        "no client certificate"
    );
    let other = Pki::new("Some other CA");
    assert!(
        refused(
            addr,
            client_config(&pki.ca, Some(other.leaf(&["sip.contoso.com"], false)))
        )
        .await,
        "unknown CA"
    );
    assert!(
        refused(
            addr,
            client_config(&pki.ca, Some(pki.leaf(&["sip.contoso.com"], true)))
        )
        .await,
        "expired"
    );
    // And a good peer still gets in.
    assert!(
        !refused(
            addr,
            client_config(&pki.ca, Some(pki.leaf(&["sip.contoso.com"], false)))
        )
        .await
    );
    // LCS 2005 on Windows Server 2003 speaks only TLS 1.0 (here: Python's OpenSSL client).
    let tls10 = tokio::task::spawn_blocking(move || tls10_client(addr))
        .await
        .unwrap();
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let mut reasons = vec![
        "peer presented no client certificate",
        "peer certificate is not issued by a trusted CA (unknown CA)",
        "peer certificate has expired",
    ];
    if let Some(outcome) = tls10 {
        assert!(outcome.starts_with("refused"), "TLS 1.0 client: {outcome}");
        reasons.push("peer offers only TLS 1.0/1.1");
    }
    for reason in reasons {
        assert!(text.contains(reason), "log lacks {reason:?}:\n{text}");
    }
    assert!(
        text.contains("peer=127.0.0.1:"),
        "log names the peer address:\n{text}"
    );
}

/// Hostile input closes the offending connection within the configured time; a well-behaved
/// peer on another connection keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_closes_only_its_own_connection() {
    let pki = Pki::new("Test federation CA");
    let addr = start_edge_with(&pki, Duration::from_secs(1)).await;
    let peer = client_config(
        &pki.ca,
        Some(pki.leaf(&["sip.contoso.com", "contoso.com"], false)),
    );
    let mut good = connect(addr, peer.clone()).await.unwrap();
    let mut gf = Framer::new(Limits::default());

    let probe = options("h0");
    let head_only = String::from_utf8(probe.clone())
        .unwrap()
        .replace("\r\n\r\n", "\r\n");
    let mut many_headers = head_only.clone();
    for i in 0..10_000 {
        many_headers.push_str(&format!("X-H{i}: v\r\n"));
    }
    many_headers.push_str("\r\n");
    let short_body = String::from_utf8(probe.clone())
        .unwrap()
        .replace("Content-Length: 0", "Content-Length: 500")
        + "only a little";
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        (
            "random bytes",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        ("header section that never ends", head_only.into_bytes()),
        (
            "1 MiB header line",
            format!(
                "OPTIONS sip:sip.example.org SIP/2.0\r\nX: {}",
                "a".repeat(1 << 20)
            )
            .into_bytes(),
        ),
        ("10,000 headers", many_headers.into_bytes()),
        (
            "Content-Length larger than the body",
            short_body.into_bytes(),
        ),
    ];
    for (what, bytes) in attacks {
        let started = std::time::Instant::now();
        let mut bad = connect(addr, peer.clone()).await.unwrap();
        // The edge may close while we are still writing: that is fine.
        let _ = bad.write_all(&bytes).await;
        let _ = bad.flush().await;
        let mut bf = Framer::new(Limits::default());
        let mut closed = false;
        while started.elapsed() < Duration::from_secs(8) {
            match read_frame(&mut bad, &mut bf).await {
                None => {
                    closed = true;
                    break;
                }
                // A 400/513 answer may come first; the connection must still end.
                Some(_) => continue,
            }
        }
        assert!(closed, "{what}: connection not closed");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: took {:?}",
            started.elapsed()
        );
        let ok = ask(
            &mut good,
            &mut gf,
            options(what.replace([' ', ','], "-").as_str()),
        )
        .await;
        assert_eq!(ok.status(), Some(200), "{what}: the good peer lost service");
    }
}

/// SIGHUP's reload: new connections use the new certificate and CA bundle; a connection that
/// was up keeps working.
#[tokio::test]
async fn tls_reload_applies_to_new_connections_only() {
    let old = Pki::new("Old federation CA");
    let new = Pki::new("New federation CA");
    let edge = start_edge_handle(&old, Duration::from_secs(30)).await;
    let old_peer = client_config(
        &old.ca,
        Some(old.leaf(&["sip.contoso.com", "contoso.com"], false)),
    );
    let new_peer = client_config(
        &new.ca,
        Some(new.leaf(&["sip.contoso.com", "contoso.com"], false)),
    );
    let mut before = connect(edge.local_addr, old_peer.clone()).await.unwrap();
    let mut bf = Framer::new(Limits::default());
    assert_eq!(
        ask(&mut before, &mut bf, options("r0")).await.status(),
        Some(200)
    );
    assert!(
        refused(edge.local_addr, new_peer.clone()).await,
        "new PKI before reload"
    );

    edge.reload_tls(edge_tls(&new));
    assert!(
        !refused(edge.local_addr, new_peer).await,
        "new PKI after reload"
    );
    assert!(
        refused(edge.local_addr, old_peer).await,
        "old PKI after reload"
    );
    assert_eq!(
        ask(&mut before, &mut bf, options("r1")).await.status(),
        Some(200)
    );
}

/// Steady traffic whose reads always end mid-message is not mistaken for a stalled message:
/// the unfinished-message timer restarts whenever a message completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_traffic_with_partial_tails_stays_up() {
    let pki = Pki::new("Test federation CA");
    let addr = start_edge_with(&pki, Duration::from_secs(1)).await;
    let peer = client_config(
        &pki.ca,
        Some(pki.leaf(&["sip.contoso.com", "contoso.com"], false)),
    );
    let mut s = connect(addr, peer).await.unwrap();
    let mut f = Framer::new(Limits::default());
    let mut pending: Vec<u8> = Vec::new();
    for i in 0..6 {
        let next = options(&format!("p{i}"));
        let half = next.len() / 2;
        // The rest of the previous request, then half of this one.
        pending.extend_from_slice(&next[..half]);
        s.write_all(&pending).await.unwrap();
        pending = next[half..].to_vec();
        if i > 0 {
            match read_frame(&mut s, &mut f).await {
                Some(Frame::Message(m)) => assert_eq!(m.status(), Some(200), "round {i}"),
                other => panic!("round {i}: {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

/// RFC 5626 keep-alive: after `keepalive_interval` of silence the edge pings (double CRLF); a
/// peer that answers with a pong stays connected past the idle timeout, a silent one is closed
/// at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_keep_live_peers_and_idle_ones_are_closed() {
    let pki = Pki::new("Test federation CA");
    let mut settings = EdgeSettings::new(
        "127.0.0.1:0".parse().unwrap(),
        edge_tls(&pki),
        lcs_test_support::edge::core_settings(),
        Limits::default(),
    );
    settings.keepalive_interval = Some(Duration::from_millis(500));
    settings.idle_timeout = Duration::from_secs(2);
    let edge = lcs_test_support::edge::start_answering(settings).await;
    let peer = client_config(
        &pki.ca,
        Some(pki.leaf(&["sip.contoso.com", "contoso.com"], false)),
    );
    let mut live = connect(edge.local_addr, peer.clone()).await.unwrap();
    let mut silent = connect(edge.local_addr, peer).await.unwrap();
    let started = std::time::Instant::now();
    // The silent peer reads but never answers: closed at the idle timeout.
    let silent_task = tokio::spawn(async move {
        let mut f = Framer::new(Limits::default());
        let mut pings = 0;
        while let Some(frame) = read_frame(&mut silent, &mut f).await {
            if frame == Frame::Ping {
                pings += 1;
            }
        }
        (pings, std::time::Instant::now())
    });
    // The live peer answers every ping with a pong, for 3.5 s.
    let mut f = Framer::new(Limits::default());
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        let mut buf = [0u8; 64];
        if let Ok(n) = tokio::time::timeout(Duration::from_millis(200), live.read(&mut buf)).await {
            let n = n.unwrap();
            assert!(n > 0, "live peer was disconnected");
            f.push(&buf[..n]);
            while let Ok(Some(frame)) = f.next_frame() {
                if frame == Frame::Ping {
                    pings += 1;
                    live.write_all(b"\r\n").await.unwrap();
                }
            }
        }
    }
    assert!(pings >= 3, "live peer got {pings} pings");
    let ok = ask(&mut live, &mut f, options("alive")).await;
    assert_eq!(ok.status(), Some(200));
    let (silent_pings, closed_at) = silent_task.await.unwrap();
    assert!(silent_pings >= 1, "silent peer was pinged");
    let lived = closed_at.duration_since(started);
    assert!(
        lived >= Duration::from_millis(1900) && lived < Duration::from_secs(4),
        "silent peer closed after {lived:?}"
    );
}

/// This process's resident set size, in KiB (Linux).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Memory stays bounded: 40 connections at once (the warm-up one and 39 more: the most one
/// address and one certificate may hold, `sip.max_connections_per_address` and
/// `_per_identity`), each other pushing 1 MiB of header line, leave the process (edge and
/// clients) within a few MiB of where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_oversized_input() {
    let pki = Pki::new("Test federation CA");
    let addr = start_edge(&pki).await;
    let peer = client_config(
        &pki.ca,
        Some(pki.leaf(&["sip.contoso.com", "contoso.com"], false)),
    );
    // Warm up (TLS, tasks, allocator) before measuring.
    let mut s = connect(addr, peer.clone()).await.unwrap();
    let mut f = Framer::new(Limits::default());
    assert_eq!(
        ask(&mut s, &mut f, options("warm")).await.status(),
        Some(200)
    );
    let before = rss_kib();
    let chunk = Arc::new(vec![b'a'; 64 * 1024]);
    let mut tasks = Vec::new();
    for _ in 0..39 {
        let (peer, chunk) = (peer.clone(), chunk.clone());
        tasks.push(tokio::spawn(async move {
            let mut bad = connect(addr, peer).await.unwrap();
            let _ = bad
                .write_all(b"OPTIONS sip:sip.example.org SIP/2.0\r\nX: ")
                .await;
            for _ in 0..16 {
                if bad.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let mut f = Framer::new(Limits::default());
            while read_frame(&mut bad, &mut f).await.is_some() {}
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 24 * 1024, "RSS grew by {grown} KiB");
    assert_eq!(
        ask(&mut s, &mut f, options("after")).await.status(),
        Some(200)
    );
}

/// Load shedding: while the layer above takes nothing, the edge hands it
/// `MAX_PENDING_REQUESTS` requests and answers the rest 503 with `Retry-After`; once the layer
/// above has taken them, new requests reach it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_what_the_layer_above_holds_get_503_retry_after() {
    let pki = Pki::new("Test federation CA");
    let mut core = lcs_test_support::edge::core_settings();
    core.federation.discovered_rate = 1_000_000;
    let settings = EdgeSettings::new(
        "127.0.0.1:0".parse().unwrap(),
        edge_tls(&pki),
        core,
        Limits::default(),
    );
    let (edge, mut events) = lcs_test_support::edge::start_edge(settings).await;
    let peer = client_config(
        &pki.ca,
        Some(pki.leaf(&["sip.contoso.com", "contoso.com"], false)),
    );
    let mut s = connect(edge.local_addr, peer).await.unwrap();
    let message = |i: usize| {
        request(
            "MESSAGE",
            "sip:alice@example.org",
            "sip:bob@contoso.com",
            &format!("m{i}"),
        )
    };
    let extra = 50;
    let total = MAX_PENDING_REQUESTS + extra;
    for chunk in (0..total).collect::<Vec<_>>().chunks(500) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|i| message(*i)).collect();
        s.write_all(&bytes).await.unwrap();
    }
    let mut f = Framer::new(Limits::default());
    let mut shed = Vec::new();
    while shed.len() < extra {
        match read_frame(&mut s, &mut f).await {
            Some(Frame::Message(m)) => {
                assert_eq!(m.status(), Some(503), "{m:?}");
                assert_eq!(m.header("Retry-After"), Some("1"));
                shed.push(m.call_id().unwrap().to_owned());
            }
            other => panic!("expected 503s, got {other:?}"),
        }
    }
    // The last ones sent are the ones shed, and the layer above has exactly the others.
    let expected: Vec<String> = (MAX_PENDING_REQUESTS..total)
        .map(|i| format!("m{i}@contoso.com"))
        .collect();
    assert_eq!(shed, expected);
    let mut taken = 0;
    while taken < MAX_PENDING_REQUESTS {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(EdgeEvent::Request { .. })) => taken += 1,
            Ok(Some(_)) => {}
            other => panic!("after {taken} requests: {other:?}"),
        }
    }
    // Taken: the next request goes up again instead of 503.
    s.write_all(&message(total)).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(EdgeEvent::Request { request, .. })) => {
            assert_eq!(request.call_id().unwrap(), format!("m{total}@contoso.com"));
        }
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------------------------ the partner verifier

mod partner_verifier {
    //! [`PartnerCertVerifier`] on rcgen-made chains. RFC 5280 §4.2.1.12: with an
    //! extendedKeyUsage extension present, a certificate may be used only for the purposes
    //! listed; id-kp-clientAuth is "TLS WWW client authentication". rustls-webpki applies the
    //! check to every certificate of the path, intermediates included. Public CAs issue
    //! serverAuth-only leaves and intermediates from 2026 (Chrome Root Program Policy §1.3.2,
    //! "Dedicated TLS Server Authentication PKI Hierarchies"; Let's Encrypt, "Ending TLS Client
    //! Authentication Certificate Support in 2026", 2025-05-14), so a partner's edge may
    //! present such a certificate as its client certificate.

    use std::sync::Arc;

    use lcs_bridge::edge::tls::{PartnerCertVerifier, describe_accept_error};
    use lcs_test_support::pki::{
        BOTH_AUTH, CLIENT_AUTH, ExtendedKeyUsagePurpose, Leaf, Pki, SERVER_AUTH,
    };
    use rustls::pki_types::UnixTime;
    use rustls::server::danger::ClientCertVerifier;
    use rustls::{CertificateError, Error};

    const NAMES: &[&str] = &["sip.contoso.com", "contoso.com"];

    fn verifier(pki: &Pki, allow: bool) -> PartnerCertVerifier {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        PartnerCertVerifier::new(Arc::new(roots), allow).unwrap()
    }

    fn verify(pki: &Pki, allow: bool, leaf: &Leaf) -> Result<(), Error> {
        verifier(pki, allow)
            .verify_client_cert(&leaf.0[0], &leaf.0[1..], UnixTime::now())
            .map(|_| ())
    }

    fn is_purpose(e: &Error) -> bool {
        matches!(
            e,
            Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            )
        )
    }

    /// The log line of a refused handshake, as the accept path writes it.
    fn reason(e: Error, allow: bool) -> String {
        describe_accept_error(
            &std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            allow,
        )
    }

    const NOT_ALLOWED: &str = "peer certificate lacks the clientAuth extended key usage (in its leaf or an intermediate certificate; RFC 5280 §4.2.1.12); set sip.accept_server_auth_only_clients = true to accept partner certificates that carry serverAuth only";

    #[test]
    fn client_auth_leaves_are_accepted_either_way() {
        let pki = Pki::new("Verifier CA");
        for ekus in [BOTH_AUTH, CLIENT_AUTH, &[]] {
            let leaf = pki.leaf_with(NAMES, ekus, false);
            for allow in [false, true] {
                assert_eq!(verify(&pki, allow, &leaf), Ok(()), "{ekus:?} allow={allow}");
            }
        }
    }

    #[test]
    fn server_auth_only_leaf_is_refused_by_default_and_accepted_when_allowed() {
        let pki = Pki::new("Verifier CA");
        let leaf = pki.leaf_with(NAMES, SERVER_AUTH, false);
        let e = verify(&pki, false, &leaf).unwrap_err();
        assert!(is_purpose(&e), "{e:?}");
        assert_eq!(reason(e, false), NOT_ALLOWED);
        assert_eq!(verify(&pki, true, &leaf), Ok(()));
    }

    #[test]
    fn server_auth_only_intermediate_is_refused_by_default_and_accepted_when_allowed() {
        let root = Pki::new("Verifier root");
        let ca = root.intermediate("TLS server issuing CA", SERVER_AUTH);
        // The partner's leaf lists both, but its issuer only serverAuth: webpki checks the
        // intermediate too.
        for ekus in [BOTH_AUTH, SERVER_AUTH, &[]] {
            let leaf = ca.leaf_with(NAMES, ekus, false);
            assert_eq!(leaf.0.len(), 2);
            let e = verify(&root, false, &leaf).unwrap_err();
            assert!(is_purpose(&e), "{ekus:?}: {e:?}");
            assert_eq!(reason(e, false), NOT_ALLOWED);
            assert_eq!(verify(&root, true, &leaf), Ok(()), "{ekus:?}");
        }
        // An intermediate listing both, or none, is fine without the allowance.
        for ekus in [BOTH_AUTH, &[]] {
            let ca = root.intermediate("TLS issuing CA", ekus);
            let leaf = ca.leaf_with(NAMES, BOTH_AUTH, false);
            assert_eq!(verify(&root, false, &leaf), Ok(()), "{ekus:?}");
        }
    }

    #[test]
    fn neither_client_nor_server_auth_is_refused_either_way() {
        let pki = Pki::new("Verifier CA");
        let leaf = pki.leaf_with(NAMES, &[ExtendedKeyUsagePurpose::EmailProtection], false);
        assert!(is_purpose(&verify(&pki, false, &leaf).unwrap_err()));
        let e = verify(&pki, true, &leaf).unwrap_err();
        assert!(is_purpose(&e), "{e:?}");
        assert_eq!(
            reason(e, true),
            "peer certificate lacks both the clientAuth and the serverAuth extended key usage (in its leaf or an intermediate certificate)"
        );
        let root = Pki::new("Verifier root");
        let ca = root.intermediate("Code signing CA", &[ExtendedKeyUsagePurpose::CodeSigning]);
        let leaf = ca.leaf_with(NAMES, SERVER_AUTH, false);
        assert!(is_purpose(&verify(&root, true, &leaf).unwrap_err()));
    }

    #[test]
    fn wrong_ca_and_expired_are_refused_either_way() {
        let pki = Pki::new("Verifier CA");
        let other = Pki::new("Someone else's CA");
        for ekus in [BOTH_AUTH, SERVER_AUTH] {
            let stranger = other.leaf_with(NAMES, ekus, false);
            assert_eq!(
                verify(&pki, true, &stranger),
                Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
                "{ekus:?}"
            );
            let expired = pki.leaf_with(NAMES, ekus, true);
            for allow in [false, true] {
                // The validity period is checked before the purpose: "expired" either way.
                let e = verify(&pki, allow, &expired).unwrap_err();
                assert!(
                    matches!(
                        e,
                        Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
                    ),
                    "{ekus:?} allow={allow}: {e:?}"
                );
                assert_eq!(reason(e, allow), "peer certificate has expired");
            }
        }
        let stranger = other.leaf_with(NAMES, BOTH_AUTH, false);
        assert_eq!(
            verify(&pki, false, &stranger),
            Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
        );
    }
}
