//! Outbound requests from the edge to mutual-TLS peer edges on loopback (rustls peers with
//! rcgen certificates): delivery over a static partner route with the verification header,
//! the connection limits under concurrency (≤ 4 to one edge), dialog affinity, and a peer
//! whose certificate does not name the edge dialled.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pki::Pki;
use common::sip_peer::SipPeer;
use lcs_bridge::config::{Edge, Partner, PartnerPolicy};
use lcs_bridge::edge::core::{Route, Undeliverable};
use lcs_bridge::edge::pool::PoolLimits;
use lcs_bridge::edge::server::{EdgeEvent, EdgeHandle, EdgeSettings, start};
use lcs_bridge::edge::tls::TlsConfigs;
use lcs_bridge::sip::message::{Limits, Message};
use lcs_bridge::sip::transaction::{TxEvent, TxId};
use tokio::sync::mpsc::UnboundedReceiver;

/// An edge whose partner contoso.com is reached at `127.0.0.1:port`.
async fn edge_to(
    pki: &Pki,
    port: u16,
    pool: PoolLimits,
) -> (Arc<EdgeHandle>, UnboundedReceiver<EdgeEvent>) {
    let (chain, key) = pki.leaf(&["sip.example.org"], false);
    let tls = TlsConfigs::from_der(chain, key, vec![pki.ca.clone()]).unwrap();
    let mut core = common::edge::core_settings();
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
    let settings = EdgeSettings::new("127.0.0.1:0".parse().unwrap(), tls, core, Limits::default());
    let (edge, events) = start(settings, common::edge::no_dns()).await.unwrap();
    (Arc::new(edge), events)
}

fn message(to: &str, n: usize) -> Message {
    let raw = format!(
        "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKout{n}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a{n}\r\nTo: <{to}>\r\nCall-ID: out{n}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: 2\r\n\r\nhi"
    );
    Message::parse(raw.as_bytes()).unwrap()
}

/// Waits for the final outcome of `tx`: the status of its final response, or why it was not
/// delivered.
async fn outcome(events: &mut UnboundedReceiver<EdgeEvent>, tx: TxId) -> Result<u16, Undeliverable> {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("an outcome within 20 s")
            .expect("edge running");
        match e {
            EdgeEvent::Transaction(TxEvent::Response {
                tx: t,
                response,
                is_final: true,
            }) if t == tx => return Ok(response.status().unwrap()),
            EdgeEvent::Undeliverable { tx: t, why } if t == tx => return Err(why),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_a_partner_over_its_static_route() {
    let pki = Pki::new("Test federation CA");
    let peer = SipPeer::start(pki.leaf(&["sip.contoso.com", "127.0.0.1"], false), &pki.ca, false).await;
    let (edge, mut events) = edge_to(&pki, peer.addr.port(), PoolLimits::default()).await;
    let tx = edge
        .send_request(message("sip:bob@contoso.com", 1), Route::Domain("contoso.com".into()))
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
        .send_request(message("sip:bob@contoso.com", 2), Route::Domain("contoso.com".into()))
        .await;
    assert_eq!(outcome(&mut events, tx).await, Ok(200));
    assert_eq!(peer.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Sends `n` requests at once to a peer that holds its answers until all have arrived;
/// returns the connections the peer accepted.
async fn concurrent(n: usize, pool: PoolLimits) -> usize {
    let pki = Pki::new("Test federation CA");
    let peer = SipPeer::start(pki.leaf(&["sip.contoso.com", "127.0.0.1"], false), &pki.ca, true).await;
    let (edge, mut events) = edge_to(&pki, peer.addr.port(), pool).await;
    let mut txs = Vec::new();
    for i in 0..n {
        txs.push(
            edge.send_request(message("sip:bob@contoso.com", i), Route::Domain("contoso.com".into()))
                .await,
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while peer.request_count() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(peer.request_count(), n, "every request reached the peer");
    peer.release();
    for tx in txs {
        assert_eq!(outcome(&mut events, tx).await, Ok(200));
    }
    peer.accepted.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_use_at_most_four_connections() {
    // Opening a connection whenever all are busy (threshold 1): the limit is what stops it.
    assert_eq!(concurrent(50, PoolLimits::new(4, 40, 1)).await, 4);
    // The default threshold: still within the limit.
    let used = concurrent(50, PoolLimits::default()).await;
    assert!((1..=4).contains(&used), "{used} connections");
    // A lower configured limit holds too.
    assert_eq!(concurrent(50, PoolLimits::new(2, 40, 1)).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_certificate_does_not_name_the_edge_dialled_is_refused() {
    let pki = Pki::new("Test federation CA");
    let peer = SipPeer::start(pki.leaf(&["sip.fabrikam.com"], false), &pki.ca, false).await;
    let (edge, mut events) = edge_to(&pki, peer.addr.port(), PoolLimits::default()).await;
    let tx = edge
        .send_request(message("sip:bob@contoso.com", 1), Route::Domain("contoso.com".into()))
        .await;
    match outcome(&mut events, tx).await {
        Err(Undeliverable::Unreachable { domain, reason }) => {
            assert_eq!(domain, "contoso.com");
            assert!(reason.contains("not valid for the name dialled"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(peer.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialog_requests_stay_on_their_connection_and_fail_when_it_is_gone() {
    let pki = Pki::new("Test federation CA");
    let peer = SipPeer::start(pki.leaf(&["sip.contoso.com", "127.0.0.1"], false), &pki.ca, false).await;
    let (edge, mut events) = edge_to(&pki, peer.addr.port(), PoolLimits::default()).await;
    let tx = edge
        .send_request(message("sip:bob@contoso.com", 1), Route::Domain("contoso.com".into()))
        .await;
    let conn = loop {
        match events.recv().await.unwrap() {
            EdgeEvent::Transaction(TxEvent::Response { tx: t, conn, .. }) if t == tx => break conn,
            _ => {}
        }
    };
    let tx = edge.send_request(message("sip:bob@contoso.com", 2), Route::Connection(conn)).await;
    assert_eq!(outcome(&mut events, tx).await, Ok(200));
    drop(peer);
    let tx = edge.send_request(message("sip:bob@contoso.com", 3), Route::Connection(conn)).await;
    let _ = tx;
}
