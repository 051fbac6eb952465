//! Outbound requests from the edge to mutual-TLS peer edges on loopback (rustls peers with
//! rcgen certificates): delivery over a static partner route with the verification header,
//! the connection limits under concurrency (≤ 4 to one edge, ≤ 40 to 41 edges of one network),
//! dialog affinity, a peer whose certificate does not name the edge dialled, and discovery
//! through an in-process DNS server (SRV order with fail-over to the second target, NXDOMAIN,
//! and inbound authorization of a certificate that names the domain's SRV target).

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lcs_bridge::config::{Edge, Partner, PartnerPolicy};
use lcs_bridge::edge::core::{CoreSettings, Route, Undeliverable};
use lcs_bridge::edge::dns::Discovery;
use lcs_bridge::edge::event::EdgeEvent;
use lcs_bridge::edge::pool::PoolLimits;
use lcs_bridge::edge::server::{EdgeEvents, EdgeHandle, EdgeSettings, start};
use lcs_bridge::edge::tls::TlsConfigs;
use lcs_bridge::sip::message::{Limits, Message};
use lcs_bridge::sip::transaction::{TxEvent, TxId};
use lcs_test_support::dns::{TestDns, srv};
use lcs_test_support::pki::Pki;
use lcs_test_support::sip_peer::SipPeer;

type Edge2 = (Arc<EdgeHandle>, EdgeEvents);

/// An edge for example.org (certificate sip.example.org) resolving through `dns`.
async fn edge_with(pki: &Pki, core: CoreSettings, dns: Arc<Discovery>) -> Edge2 {
    let (chain, key) = pki.leaf(&["sip.example.org"], false);
    let tls = TlsConfigs::from_der(chain, key, vec![pki.ca.clone()]).unwrap();
    let settings = EdgeSettings::new("127.0.0.1:0".parse().unwrap(), tls, core, Limits::default());
    let (edge, events) = start(settings, dns).await.unwrap();
    (Arc::new(edge), events)
}

/// An edge using the test DNS server, with these pool limits.
async fn edge_resolving(pki: &Pki, dns: &TestDns, pool: PoolLimits) -> Edge2 {
    let mut core = lcs_test_support::edge::core_settings();
    core.pool = pool;
    edge_with(pki, core, Arc::new(Discovery::new(&[dns.addr]).unwrap())).await
}

/// An edge whose partner contoso.com is reached at `127.0.0.1:port`.
async fn edge_to(pki: &Pki, port: u16, pool: PoolLimits) -> Edge2 {
    let mut core = lcs_test_support::edge::core_settings();
    core.pool = pool;
    core.federation.partners.push(Partner {
        domain: "contoso.com".into(),
        policy: PartnerPolicy::Allow,
        edge: Some(Edge {
            host: "127.0.0.1".into(),
            port,
        }),
        verification_level: None,
    });
    edge_with(pki, core, lcs_test_support::edge::no_dns()).await
}

fn message(to: &str, n: usize) -> Message {
    let raw = format!(
        "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKout{n}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a{n}\r\nTo: <{to}>\r\nCall-ID: out{n}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: 2\r\n\r\nhi"
    );
    Message::parse(raw.as_bytes()).unwrap()
}

/// Waits for the final outcome of each of `txs` (in any order): the status of its final
/// response, or why it was not delivered.
async fn outcomes(
    events: &mut EdgeEvents,
    txs: &[TxId],
) -> HashMap<TxId, Result<u16, Undeliverable>> {
    let mut got = HashMap::new();
    while got.len() < txs.len() {
        let e = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .unwrap_or_else(|_| panic!("outcomes within 20 s; have {got:?}"))
            .expect("edge running");
        match e {
            EdgeEvent::Transaction(TxEvent::Response {
                tx,
                response,
                is_final: true,
                ..
            }) if txs.contains(&tx) => {
                got.insert(tx, Ok(response.status().unwrap()));
            }
            EdgeEvent::Undeliverable { tx, why } if txs.contains(&tx) => {
                got.insert(tx, Err(why));
            }
            _ => {}
        }
    }
    got
}

async fn outcome(events: &mut EdgeEvents, tx: TxId) -> Result<u16, Undeliverable> {
    outcomes(events, &[tx]).await.remove(&tx).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_a_partner_over_its_static_route() {
    let pki = Pki::new("Test federation CA");
    let peer = SipPeer::start(
        pki.leaf(&["sip.contoso.com", "127.0.0.1"], false),
        &pki.ca,
        false,
    )
    .await;
    let (edge, mut events) = edge_to(&pki, peer.addr.port(), PoolLimits::default()).await;
    let tx = edge
        .send_request(
            message("sip:bob@contoso.com", 1),
            Route::Domain("contoso.com".into()),
        )
        .await;
    assert_eq!(outcome(&mut events, tx).await, Ok(200));
    let got = peer.requests.lock().unwrap()[0].1.clone();
    assert_eq!(
        got.header("Ms-asserted-verification-level"),
        Some("ms-source-verification-level=verified")
    );
    assert_eq!(got.body(), b"hi");
    // The next request reuses the connection.
    let tx = edge
        .send_request(
            message("sip:bob@contoso.com", 2),
            Route::Domain("contoso.com".into()),
        )
        .await;
    assert_eq!(outcome(&mut events, tx).await, Ok(200));
    assert_eq!(peer.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Sends `n` requests at once to a peer that holds its answers, then (with `top_up`) one
/// more every 20 ms for up to 3 s while fewer than `top_up` connections are open; releases
/// the answers and returns the connections the peer accepted.
async fn concurrent(n: usize, pool: PoolLimits, top_up: usize) -> usize {
    let pki = Pki::new("Test federation CA");
    let peer = SipPeer::start(
        pki.leaf(&["sip.contoso.com", "127.0.0.1"], false),
        &pki.ca,
        true,
    )
    .await;
    let (edge, mut events) = edge_to(&pki, peer.addr.port(), pool).await;
    let to = || Route::Domain("contoso.com".into());
    let mut txs = Vec::new();
    for i in 0..n {
        txs.push(
            edge.send_request(message("sip:bob@contoso.com", i), to())
                .await,
        );
    }
    let accepted = || peer.accepted.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while accepted() < top_up && tokio::time::Instant::now() < deadline {
        let i = txs.len();
        txs.push(
            edge.send_request(message("sip:bob@contoso.com", i), to())
                .await,
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while peer.request_count() < txs.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        peer.request_count(),
        txs.len(),
        "every request reached the peer"
    );
    peer.release();
    let got = outcomes(&mut events, &txs).await;
    assert!(got.values().all(|o| *o == Ok(200)), "{got:?}");
    accepted()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_use_at_most_four_connections() {
    // The default threshold: within the limit.
    let used = concurrent(50, PoolLimits::default(), 0).await;
    assert!((1..=4).contains(&used), "{used} connections");
    // Opening a connection whenever all are busy (threshold 1), and asking for a fifth: the
    // limit is what stops it.
    assert_eq!(concurrent(50, PoolLimits::new(4, 40, 1), 5).await, 4);
    // A lower configured limit holds too.
    assert_eq!(concurrent(50, PoolLimits::new(2, 40, 1), 3).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_certificate_does_not_name_the_edge_dialled_is_refused() {
    let pki = Pki::new("Test federation CA");
    let peer = SipPeer::start(pki.leaf(&["sip.fabrikam.com"], false), &pki.ca, false).await;
    let (edge, mut events) = edge_to(&pki, peer.addr.port(), PoolLimits::default()).await;
    let tx = edge
        .send_request(
            message("sip:bob@contoso.com", 1),
            Route::Domain("contoso.com".into()),
        )
        .await;
    match outcome(&mut events, tx).await {
        Err(Undeliverable::Unreachable { domain, reason }) => {
            assert_eq!(domain, "contoso.com");
            assert!(
                reason.contains("not valid for the name dialled"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(peer.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialog_requests_stay_on_their_connection_and_fail_when_it_is_gone() {
    let pki = Pki::new("Test federation CA");
    let peer = SipPeer::start(
        pki.leaf(&["sip.contoso.com", "127.0.0.1"], false),
        &pki.ca,
        false,
    )
    .await;
    let (edge, mut events) = edge_to(&pki, peer.addr.port(), PoolLimits::default()).await;
    let tx = edge
        .send_request(
            message("sip:bob@contoso.com", 1),
            Route::Domain("contoso.com".into()),
        )
        .await;
    let conn = loop {
        match events.recv().await.unwrap() {
            EdgeEvent::Transaction(TxEvent::Response { tx: t, conn, .. }) if t == tx => break conn,
            _ => {}
        }
    };
    let tx = edge
        .send_request(message("sip:bob@contoso.com", 2), Route::Connection(conn))
        .await;
    assert_eq!(outcome(&mut events, tx).await, Ok(200));
    drop(peer);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            EdgeEvent::ConnectionLost { conn: c } if c == conn => break,
            _ => {}
        }
    }
    let tx = edge
        .send_request(message("sip:bob@contoso.com", 3), Route::Connection(conn))
        .await;
    assert_eq!(
        outcome(&mut events, tx).await,
        Err(Undeliverable::ConnectionGone { conn })
    );
}

const LOOPBACK: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_order_with_fail_over_to_the_second_target_and_nxdomain() {
    let pki = Pki::new("Test federation CA");
    let dns = TestDns::start(&["contoso.test"]).await;
    let live = SipPeer::start(pki.leaf(&["live.contoso.test"], false), &pki.ca, false).await;
    let dead_port = lcs_test_support::free_port();
    dns.set_srv(
        "contoso.test",
        &[
            srv(20, 0, live.addr.port(), "live.contoso.test"),
            srv(10, 0, dead_port, "dead.contoso.test"),
        ],
        60,
    )
    .await;
    dns.set_a("dead.contoso.test", &[LOOPBACK], 60).await;
    dns.set_a("live.contoso.test", &[LOOPBACK], 60).await;
    let (edge, mut events) = edge_resolving(&pki, &dns, PoolLimits::default()).await;
    let tx = edge
        .send_request(
            message("sip:bob@contoso.test", 1),
            Route::Domain("contoso.test".into()),
        )
        .await;
    assert_eq!(outcome(&mut events, tx).await, Ok(200));
    assert_eq!(live.request_count(), 1);

    let tx = edge
        .send_request(
            message("sip:bob@nowhere.contoso.test", 2),
            Route::Domain("nowhere.contoso.test".into()),
        )
        .await;
    assert_eq!(
        outcome(&mut events, tx).await,
        Err(Undeliverable::NoRoute {
            domain: "nowhere.contoso.test".into(),
            reason: "no _sipfederationtls._tcp SRV record for nowhere.contoso.test".into()
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_one_edges_of_one_network_get_at_most_forty_connections() {
    let pki = Pki::new("Test federation CA");
    let dns = TestDns::start(&["big.test"]).await;
    let names: Vec<String> = (0..41).map(|i| format!("e{i}.big.test")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let leaf = pki.leaf(&name_refs, false);
    let mut peers = Vec::new();
    for name in &names {
        let copy = (leaf.0.clone(), leaf.1.clone_key());
        let peer = SipPeer::start(copy, &pki.ca, true).await;
        dns.set_a(name, &[LOOPBACK], 60).await;
        peers.push(peer);
    }
    let records: Vec<_> = peers
        .iter()
        .zip(&names)
        .map(|(p, n)| srv(0, 10, p.addr.port(), n))
        .collect();
    dns.set_srv("big.test", &records, 60).await;
    // One connection per edge, and a new one whenever all are busy.
    let (edge, mut events) = edge_resolving(&pki, &dns, PoolLimits::new(1, 40, 1)).await;
    let accepted = || -> usize {
        peers
            .iter()
            .map(|p| p.accepted.load(std::sync::atomic::Ordering::SeqCst))
            .sum()
    };
    let mut txs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    // Ask for more than 40 connections' worth of work.
    while (accepted() < 41 && tokio::time::Instant::now() < deadline) || txs.len() < 60 {
        let i = txs.len();
        txs.push(
            edge.send_request(
                message("sip:bob@big.test", i),
                Route::Domain("big.test".into()),
            )
            .await,
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(accepted(), 40, "connections to the network");
    assert!(
        peers
            .iter()
            .all(|p| p.accepted.load(std::sync::atomic::Ordering::SeqCst) <= 1)
    );
    for p in &peers {
        p.release();
    }
    let got = outcomes(&mut events, &txs).await;
    assert!(got.values().all(|o| *o == Ok(200)), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_naming_the_domains_srv_target_may_speak_for_it() {
    use lcs_bridge::sip::framing::{Frame, Framer};
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = Pki::new("Test federation CA");
    let dns = TestDns::start(&["woodgrove.test", "tailspin.test"]).await;
    dns.set_srv(
        "woodgrove.test",
        &[srv(0, 0, 5061, "edge.hosting.test")],
        60,
    )
    .await;
    dns.set_srv("tailspin.test", &[srv(0, 0, 5061, "sip.tailspin.test")], 60)
        .await;
    let (edge, events) = edge_resolving(&pki, &dns, PoolLimits::default()).await;
    tokio::spawn(lcs_test_support::edge::answer_all(
        edge.clone(),
        events,
        486,
        "Busy Here",
    ));

    // A hosting provider's edge: its certificate names only itself.
    let (chain, key) = pki.leaf(&["edge.hosting.test"], false);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(edge.local_addr)
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("sip.example.org").unwrap(), tcp)
        .await
        .unwrap();
    let mut framer = Framer::new(Limits::default());
    for (from, expected) in [("woodgrove.test", 486), ("tailspin.test", 403)] {
        let raw = format!(
            "MESSAGE sip:alice@example.org SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.7:5061;branch=z9hG4bK{from}\r\nMax-Forwards: 70\r\nFrom: <sip:joe@{from}>;tag=j\r\nTo: <sip:alice@example.org>\r\nCall-ID: {from}\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
        );
        tls.write_all(raw.as_bytes()).await.unwrap();
        let response = loop {
            if let Ok(Some(Frame::Message(m))) = framer.next_frame() {
                break m;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "edge closed the connection");
            framer.push(&buf[..n]);
        };
        assert_eq!(
            response.status(),
            Some(expected),
            "From {from}: {:?}",
            response.reason()
        );
    }
}
