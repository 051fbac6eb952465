//! The component link (`src/xmpp/link.rs`) against real XMPP servers started by the tests:
//! authentication and a disco#info round trip (the server answers an IQ the link sent, and the
//! answer comes back through the event receiver), refusal of a wrong secret and of an unknown
//! domain at start-up, reconnecting after a Prosody restart with the stanzas queued meanwhile
//! delivered in order, the bounded queue, keep-alive on an idle stream, and ejabberd.
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::time::{Duration, Instant};

use lcs_bridge::backoff::Backoff;
use lcs_bridge::xmpp::link::{self, LinkError, LinkEvent, LinkHandle, LinkSettings};
use lcs_test_support::{
    COMPONENT_SECRET, DIRECT_COMPONENT, Ejabberd, GATEWAY_COMPONENT, Prosody, XMPP_DOMAIN,
    XmppServer,
};
use minidom::Element;
use tokio::sync::mpsc::Receiver;

const STARTUP: Duration = Duration::from_secs(10);
const EVENT_WAIT: Duration = Duration::from_secs(10);
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";

fn settings(port: u16, domains: &[&str], secret: &str) -> LinkSettings {
    LinkSettings {
        host: "127.0.0.1".into(),
        port,
        secret: secret.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        queue_capacity: 1024,
        backoff: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(800),
        },
        keepalive: Duration::from_secs(60),
    }
}

/// A disco#info get from the component `from` to the server's own domain.
fn disco(id: &str, from: &str) -> Element {
    lcs_bridge::xmpp::parse_stanza(&format!(
        "<iq type='get' id='{id}' from='{from}' to='{XMPP_DOMAIN}'><query xmlns='{NS_DISCO_INFO}'/></iq>"
    ))
    .unwrap()
}

async fn next_event(rx: &mut Receiver<LinkEvent>, what: &str) -> LinkEvent {
    match tokio::time::timeout(EVENT_WAIT, rx.recv()).await {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("event channel closed while waiting for {what}"),
        Err(_) => panic!("no event within {EVENT_WAIT:?} while waiting for {what}"),
    }
}

/// The ids of the next `n` IQ results, other stanzas and events skipped.
async fn iq_results(rx: &mut Receiver<LinkEvent>, n: usize) -> Vec<Element> {
    let mut out = Vec::new();
    while out.len() < n {
        if let LinkEvent::Stanza(el) = next_event(rx, "IQ results").await
            && el.name() == "iq"
            && el.attr("type") == Some("result")
        {
            out.push(el);
        }
    }
    out
}

fn ids(els: &[Element]) -> Vec<&str> {
    els.iter().map(|e| e.attr("id").unwrap_or("?")).collect()
}

/// Checks a disco#info result from the server to `domain`.
fn assert_server_disco(el: &Element, domain: &str) {
    assert_eq!(el.attr("from"), Some(XMPP_DOMAIN), "{el:?}");
    assert_eq!(el.attr("to"), Some(domain), "{el:?}");
    let query = el
        .get_child("query", NS_DISCO_INFO)
        .unwrap_or_else(|| panic!("no disco#info query in {el:?}"));
    assert!(
        query
            .children()
            .any(|c| c.name() == "identity" && c.attr("category") == Some("server")),
        "no server identity in {el:?}"
    );
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENT_WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Skips the Up events `start` leaves in the channel.
async fn expect_up(rx: &mut Receiver<LinkEvent>, domains: &[&str]) {
    let mut seen = Vec::new();
    while seen.len() < domains.len() {
        match next_event(rx, "Up").await {
            LinkEvent::Up { domain } => seen.push(domain),
            other => panic!("expected Up, got {other:?}"),
        }
    }
    seen.sort();
    let mut want: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
    want.sort();
    assert_eq!(seen, want);
}

async fn round_trip(server: &dyn XmppServer, name: &str) {
    let domains = [GATEWAY_COMPONENT, DIRECT_COMPONENT];
    let (handle, mut rx) = link::start(
        settings(server.component_port(), &domains, COMPONENT_SECRET),
        STARTUP,
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}\n--- log ---\n{}", server.log()));
    for d in domains {
        assert!(handle.is_up(d), "{name}: {d} not up after start");
    }
    expect_up(&mut rx, &domains).await;

    handle.send(disco("d1", GATEWAY_COMPONENT)).unwrap();
    handle
        .send(disco("d2", &format!("someone@{DIRECT_COMPONENT}/r")))
        .unwrap();
    let mut results = iq_results(&mut rx, 2).await;
    results.sort_by_key(|e| e.attr("id").unwrap_or_default().to_owned());
    assert_eq!(ids(&results), ["d1", "d2"], "{name}");
    assert_server_disco(&results[0], GATEWAY_COMPONENT);
    assert_server_disco(&results[1], &format!("someone@{DIRECT_COMPONENT}/r"));
    stop_link(handle, rx).await;
}

/// Drops the receiver and waits until the link has stopped.
async fn stop_link(handle: LinkHandle, rx: Receiver<LinkEvent>) {
    drop(rx);
    let probe = || {
        handle.send(disco("after-stop", GATEWAY_COMPONENT)) == Err(LinkError::Closed)
            && !handle.is_up(GATEWAY_COMPONENT)
    };
    wait_until("the link stops after its receiver is dropped", probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_round_trip_on_two_domains() {
    let Some(prosody) = Prosody::start() else {
        return;
    };
    round_trip(&prosody, "prosody").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_stanzas_pass_through_unparsed() {
    // An IQ get with two payloads is invalid for xmpp-parsers (tokio-xmpp's `Component` would
    // end its stream on it); the server routes it, and the link hands it on as it came.
    let Some(prosody) = Prosody::start() else {
        return;
    };
    let (handle, mut rx) = link::start(
        settings(
            prosody.component_port(),
            &[GATEWAY_COMPONENT],
            COMPONENT_SECRET,
        ),
        STARTUP,
    )
    .await
    .unwrap();
    expect_up(&mut rx, &[GATEWAY_COMPONENT]).await;
    let odd = lcs_bridge::xmpp::parse_stanza(&format!(
        "<iq type='get' id='odd' from='a@{GATEWAY_COMPONENT}' to='b@{GATEWAY_COMPONENT}'>\
         <one xmlns='urn:example:one'/><two xmlns='urn:example:two'>x</two></iq>"
    ))
    .unwrap();
    handle.send(odd).unwrap();
    handle.send(disco("after", GATEWAY_COMPONENT)).unwrap();
    let mut got_odd = false;
    loop {
        match next_event(&mut rx, "the odd IQ and a disco result").await {
            LinkEvent::Stanza(el) if el.attr("id") == Some("odd") => {
                assert_eq!(el.attr("to"), Some(&*format!("b@{GATEWAY_COMPONENT}")));
                let names: Vec<&str> = el.children().map(|c| c.name()).collect();
                assert_eq!(names, ["one", "two"]);
                got_odd = true;
            }
            LinkEvent::Stanza(el) if el.attr("id") == Some("after") => break,
            LinkEvent::Stanza(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got_odd, "the odd IQ did not come back\n{}", prosody.log());
    assert!(handle.is_up(GATEWAY_COMPONENT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_wrong_secret_fails_start_quickly() {
    let Some(prosody) = Prosody::start() else {
        return;
    };
    let t0 = Instant::now();
    let err = link::start(
        settings(
            prosody.component_port(),
            &[GATEWAY_COMPONENT],
            "not-the-secret",
        ),
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    let elapsed = t0.elapsed();
    assert!(
        matches!(&err, LinkError::Auth { domain, .. } if domain == GATEWAY_COMPONENT),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("not-authorized: wrong secret"), "{msg}");
    assert!(msg.contains("xmpp.secret"), "{msg}");
    assert!(msg.contains(GATEWAY_COMPONENT), "{msg}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_unknown_domain_fails_start() {
    let Some(prosody) = Prosody::start() else {
        return;
    };
    let err = link::start(
        settings(
            prosody.component_port(),
            &["nope.xmpp.test"],
            COMPONENT_SECRET,
        ),
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, LinkError::Auth { domain, .. } if domain == "nope.xmpp.test"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("nope.xmpp.test"), "{msg}");
    eprintln!("unknown domain: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_fails_start_after_the_timeout() {
    let port = lcs_test_support::free_port();
    let t0 = Instant::now();
    let err = link::start(
        settings(port, &[GATEWAY_COMPONENT], COMPONENT_SECRET),
        Duration::from_millis(1500),
    )
    .await
    .unwrap_err();
    assert!(t0.elapsed() >= Duration::from_millis(1400));
    assert!(t0.elapsed() < Duration::from_secs(5));
    let msg = err.to_string();
    assert!(matches!(err, LinkError::Connect { .. }), "{err:?}");
    assert!(msg.contains("refused"), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_restart_reconnects_and_flushes_in_order() {
    let Some(mut prosody) = Prosody::start() else {
        return;
    };
    let t0 = Instant::now();
    let (handle, mut rx) = link::start(
        settings(
            prosody.component_port(),
            &[GATEWAY_COMPONENT],
            COMPONENT_SECRET,
        ),
        STARTUP,
    )
    .await
    .unwrap();
    expect_up(&mut rx, &[GATEWAY_COMPONENT]).await;

    tokio::task::block_in_place(|| prosody.stop());
    match next_event(&mut rx, "Down").await {
        LinkEvent::Down { domain, reason } => {
            assert_eq!(domain, GATEWAY_COMPONENT);
            assert!(!reason.is_empty());
            eprintln!("down: {reason}");
        }
        other => panic!("expected Down, got {other:?}"),
    }
    assert!(!handle.is_up(GATEWAY_COMPONENT));
    for id in ["q1", "q2", "q3", "q4", "q5"] {
        handle.send(disco(id, GATEWAY_COMPONENT)).unwrap();
    }
    assert_eq!(handle.queued(GATEWAY_COMPONENT), 5);
    // A few refused reconnect attempts happen meanwhile.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!handle.is_up(GATEWAY_COMPONENT));

    tokio::task::block_in_place(|| prosody.restart());
    match next_event(&mut rx, "Up after the restart").await {
        LinkEvent::Up { domain } => assert_eq!(domain, GATEWAY_COMPONENT),
        other => panic!("expected Up, got {other:?}"),
    }
    let results = iq_results(&mut rx, 5).await;
    assert_eq!(ids(&results), ["q1", "q2", "q3", "q4", "q5"]);
    for r in &results {
        assert_server_disco(r, GATEWAY_COMPONENT);
    }
    assert!(handle.is_up(GATEWAY_COMPONENT));
    assert_eq!(handle.queued(GATEWAY_COMPONENT), 0);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_down_queue_is_bounded() {
    let Some(mut prosody) = Prosody::start() else {
        return;
    };
    let mut s = settings(
        prosody.component_port(),
        &[GATEWAY_COMPONENT],
        COMPONENT_SECRET,
    );
    s.queue_capacity = 2;
    let (handle, mut rx) = link::start(s, STARTUP).await.unwrap();
    expect_up(&mut rx, &[GATEWAY_COMPONENT]).await;
    tokio::task::block_in_place(|| prosody.stop());
    assert!(matches!(
        next_event(&mut rx, "Down").await,
        LinkEvent::Down { .. }
    ));
    handle.send(disco("f1", GATEWAY_COMPONENT)).unwrap();
    handle.send(disco("f2", GATEWAY_COMPONENT)).unwrap();
    assert_eq!(
        handle.send(disco("f3", GATEWAY_COMPONENT)),
        Err(LinkError::QueueFull {
            domain: GATEWAY_COMPONENT.into()
        })
    );
    assert_eq!(
        handle.send(disco("x", "alice@elsewhere.test")),
        Err(LinkError::UnknownDomain("alice@elsewhere.test".into()))
    );
    // The two that fitted are delivered once the server is back.
    tokio::task::block_in_place(|| prosody.restart());
    let results = iq_results(&mut rx, 2).await;
    assert_eq!(ids(&results), ["f1", "f2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_idle_stream_stays_up_with_keepalives() {
    let Some(prosody) = Prosody::start() else {
        return;
    };
    let mut s = settings(
        prosody.component_port(),
        &[GATEWAY_COMPONENT],
        COMPONENT_SECRET,
    );
    s.keepalive = Duration::from_millis(400);
    let (handle, mut rx) = link::start(s, STARTUP).await.unwrap();
    expect_up(&mut rx, &[GATEWAY_COMPONENT]).await;
    // Without answered keep-alives the stream would be given up after 0.8 s of silence.
    match tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
        Err(_) => {}
        Ok(ev) => panic!("idle link reported {ev:?}"),
    }
    assert!(handle.is_up(GATEWAY_COMPONENT));
    handle.send(disco("k1", GATEWAY_COMPONENT)).unwrap();
    assert_eq!(ids(&iq_results(&mut rx, 1).await), ["k1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_round_trip_wrong_secret_and_keepalive() {
    let Some(ejabberd) = tokio::task::block_in_place(Ejabberd::start) else {
        return;
    };
    round_trip(&ejabberd, "ejabberd").await;

    let err = link::start(
        settings(
            ejabberd.component_port(),
            &[GATEWAY_COMPONENT],
            "not-the-secret",
        ),
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, LinkError::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("not-authorized"), "{err}");

    let mut s = settings(
        ejabberd.component_port(),
        &[GATEWAY_COMPONENT],
        COMPONENT_SECRET,
    );
    s.keepalive = Duration::from_millis(400);
    let (handle, mut rx) = link::start(s, STARTUP).await.unwrap();
    expect_up(&mut rx, &[GATEWAY_COMPONENT]).await;
    match tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
        Err(_) => {}
        Ok(ev) => panic!("idle link reported {ev:?}\n{}", ejabberd.log()),
    }
    assert!(handle.is_up(GATEWAY_COMPONENT));
}

/// A closed connect gate (a bridge that may not serve now) keeps the link from connecting
/// again after its stream is lost; opened, it connects at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_gate_keeps_the_link_from_reconnecting() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(mut prosody) = Prosody::start() else {
        return;
    };
    let open = Arc::new(AtomicBool::new(true));
    let gate: link::ConnectGate = {
        let open = open.clone();
        Arc::new(move || open.load(Ordering::SeqCst))
    };
    let domains = [GATEWAY_COMPONENT];
    let (handle, mut rx) = link::start_gated(
        settings(prosody.component_port(), &domains, COMPONENT_SECRET),
        STARTUP,
        Some(gate),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", prosody.log()));
    expect_up(&mut rx, &domains).await;
    open.store(false, Ordering::SeqCst);
    prosody.restart();
    assert!(matches!(
        next_event(&mut rx, "the stream lost").await,
        LinkEvent::Down { .. }
    ));
    // Prosody is back, the backoff (at most 800 ms here) long over: still not connected.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!handle.is_up(GATEWAY_COMPONENT));
    assert!(rx.try_recv().is_err(), "no event while the gate is closed");
    open.store(true, Ordering::SeqCst);
    expect_up(&mut rx, &domains).await;
    assert!(handle.is_up(GATEWAY_COMPONENT));
    stop_link(handle, rx).await;
}
