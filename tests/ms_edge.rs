//! Microsoft conformance: the SIP edge cases of a federation with Microsoft edges, against the
//! real `lcs-bridge run` binary. The test plays the XMPP server's component port
//! (`lcs_test_support::net`, no XMPP server needed), an authoritative DNS server for the
//! partners' `_sipfederationtls._tcp` SRV records (`lcs_test_support::dns`), and the partners'
//! mutual-TLS edges (listeners with certificates of the bridge's trusted CA naming the SRV
//! target). Alice (`alice@xmpp.test`) writes to LCS users through the component; each case
//! checks what reaches the partner's edge, byte for byte where the RFC fixes it, and what comes
//! back to Alice.
//!
//! - several domains whose SRV records name one edge host (a hosting provider's edge: every
//!   Microsoft 365 tenant's record names `sipfed.online.lync.com`) share that host's
//!   connections: the profile's "at most 4 connections to one peer edge server";
//! - an INVITE that rings (180) and is never answered is cancelled after 64·T1 (RFC 3261
//!   §9.1), the 487 ACKed, Alice told; a 200 that crosses the CANCEL is ACKed and ended with
//!   BYE (§13.2.2.4) and nothing is delivered in it; an INVITE with no answer at all is not
//!   cancelled (§9.1) and ends at Timer B;
//! - an edge answering 503 with Retry-After: the request goes to the next SRV target and the
//!   first edge is not used for new requests (RFC 3261 §21.5.4, RFC 3263 §4.3);
//! - an edge that resets the connection mid-transaction: Alice's message arrives or comes back
//!   to her as an error, never lost silently.
//! - INVITE glare (Alice and an LCS user start a chat at once): no message lost either way.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use lcs_test_support::{net, pki};

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::process::Child;
use std::time::{Duration, Instant};

use lcs_bridge::sip::message::{Message, Method};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use lcs_test_support::config::BridgeConfig;
use lcs_test_support::dns::{TestDns, srv};
use lcs_test_support::e2e::Mode;
use lcs_test_support::{GATEWAY_COMPONENT, XMPP_DOMAIN, free_port};
use net::Event;
use pki::{Pki, write_bridge_files};

const SECRET: &str = "s3cret";
const STARTED: &str = "lcs-bridge started";
/// The SDP an LCS edge answers a session-mode IM INVITE with.
const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip null\r\n";
/// RFC 3261 64·T1: Timer B, and the bridge's limit for an INVITE that rang.
const TIMER_B: Duration = Duration::from_secs(32);
const ALICE: &str = "alice@xmpp.test/desk";

/// The JID of LCS user `user@domain` (gateway mode, XEP-0106).
fn lcs_jid(user: &str, domain: &str) -> String {
    format!("{user}\\40{domain}@{GATEWAY_COMPONENT}")
}

struct World {
    dir: tempfile::TempDir,
    pki: Pki,
    bridge: Child,
    dns: TestDns,
    xmpp: net::Writer,
    events: UnboundedReceiver<Event>,
    events_tx: UnboundedSender<Event>,
    /// The partner edges' connections from the bridge, by id.
    sip: HashMap<usize, net::Writer>,
    /// Every connection id that came up.
    opened: HashSet<usize>,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.bridge.kill();
        let _ = self.bridge.wait();
    }
}

impl World {
    /// Starts the bridge (discovery on: `default_policy = "allow"`) resolving through a DNS
    /// server authoritative for `zones`; returns once it has joined the component port.
    async fn start(zones: &[&str]) -> World {
        let dir = tempfile::Builder::new()
            .prefix("lcs-ms-edge-")
            .tempdir()
            .unwrap();
        let pki = Pki::new("Microsoft edge cases CA");
        write_bridge_files(
            dir.path(),
            &pki,
            &["sip.xmpp.test", XMPP_DOMAIN, "127.0.0.1"],
        );
        let dns = TestDns::start(zones).await;
        let component = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = dir.path().join("lcs-bridge.toml");
        let sip = format!("dns_servers = [\"{}\"]\n", dns.addr);
        let toml = BridgeConfig {
            secret: SECRET,
            sip: &sip,
            federation: "default_policy = \"allow\"\n".into(),
            log_level: "debug",
            ..BridgeConfig::new(
                dir.path(),
                Mode::Gateway,
                component.local_addr().unwrap().port(),
                free_port(),
                0,
            )
        }
        .toml();
        std::fs::write(&config, toml).unwrap();
        // `LCS_BRIDGE_BIN=<path>` runs the cases against another build.
        let mut bridge = lcs_test_support::spawn_bridge(&config, &dir.path().join("bridge.log"));
        let (events_tx, events) = unbounded_channel();
        let accept =
            net::accept_component(&component, GATEWAY_COMPONENT, SECRET, 1, events_tx.clone());
        let xmpp = match tokio::time::timeout(Duration::from_secs(30), accept).await {
            Ok(Ok(w)) => w,
            other => {
                let _ = bridge.kill();
                let log = std::fs::read_to_string(dir.path().join("bridge.log")).unwrap();
                panic!("no component stream ({:?}); log:\n{log}", other.err());
            }
        };
        let w = World {
            dir,
            pki,
            bridge,
            dns,
            xmpp,
            events,
            events_tx,
            sip: HashMap::new(),
            opened: HashSet::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !w.log().contains(STARTED) {
            if Instant::now() > deadline {
                w.fail("the bridge did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bridge.log")).unwrap_or_default()
    }

    fn fail(&self, why: &str) -> ! {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{why}\n--- bridge log (end) ---\n{}", tail.join("\n"));
    }

    /// A partner edge listening with a certificate for `host`; its connections are numbered
    /// from `first_id`. Returns its port.
    async fn edge(&self, host: &str, first_id: usize) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls = net::Tls::new(&self.pki.leaf(&[host], false), &self.pki.ca);
        net::accept_sip(listener, tls.acceptor, first_id, self.events_tx.clone());
        port
    }

    /// `domain`'s SRV record names `targets` (`(priority, host, port)`), each host at 127.0.0.1.
    async fn srv(&self, domain: &str, targets: &[(u16, &str, u16)]) {
        let records: Vec<_> = targets
            .iter()
            .map(|(prio, host, port)| srv(*prio, 0, *port, host))
            .collect();
        self.dns.set_srv(domain, &records, 300).await;
        for (_, host, _) in targets {
            self.dns.set_a(host, &[Ipv4Addr::LOCALHOST], 300).await;
        }
    }

    /// Alice writes `body` to LCS user `user@domain` (stanza id `id`).
    fn say(&self, user: &str, domain: &str, id: &str, body: &str) {
        let stanza = format!(
            "<message from='{ALICE}' to='{}' type='chat' id='{id}'><body>{body}</body></message>",
            lcs_jid(user, domain)
        );
        self.xmpp.send(stanza.into_bytes()).unwrap();
    }

    /// The next SIP message or stanza (connections are tracked on the way), or `None` when
    /// `deadline` passes first.
    async fn next(&mut self, deadline: Instant) -> Option<Event> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = tokio::time::timeout(left, self.events.recv())
                .await
                .ok()??;
            match e {
                Event::SipUp(conn, w) => {
                    self.opened.insert(conn);
                    self.sip.insert(conn, w);
                }
                Event::SipClosed(conn, _) => {
                    self.sip.remove(&conn);
                }
                Event::XmppClosed(_, why) => self.fail(&format!("component stream closed: {why}")),
                e @ (Event::Sip(..) | Event::Stanza(..)) => return Some(e),
                _ => {}
            }
        }
    }

    fn send(&self, conn: usize, m: &Message) {
        if let Some(w) = self.sip.get(&conn) {
            let _ = w.send(m.to_bytes());
        }
    }

    /// Answers `request` with `status` and To tag `tag`.
    fn respond(&self, conn: usize, request: &Message, status: u16, tag: &str) {
        self.send(
            conn,
            &Message::response_to(request, status, None, Some(tag)),
        );
    }

    /// Accepts a bridge INVITE: 200 with To tag `tag`, a Contact and the session SDP.
    fn accept(&self, conn: usize, invite: &Message, tag: &str) {
        let mut ok = Message::response_to(invite, 200, None, Some(tag));
        ok.push_header("Contact", "<sip:lcs@127.0.0.1:5061;transport=tls>");
        ok.set_body(Some("application/sdp"), SDP.as_bytes().to_vec());
        self.send(conn, &ok);
    }
}

fn text(stanza: &[u8]) -> String {
    String::from_utf8_lossy(stanza).into_owned()
}

fn user_of(m: &Message) -> String {
    let to = m.to().unwrap();
    let uri = to.parsed_uri();
    uri.as_sip()
        .and_then(|u| u.user.map(str::to_owned))
        .unwrap_or_default()
}

fn body(m: &Message) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

/// An error stanza to Alice with id `id`: its text.
fn error_for(stanza: &[u8], id: &str) -> Option<String> {
    let s = text(stanza);
    (net::attr(stanza, "type") == Some(b"error") && net::attr(stanza, "id") == Some(id.as_bytes()))
        .then_some(s)
}

/// Plays a well-behaved hosting edge until every body in `expected` has arrived in a MESSAGE:
/// every INVITE accepted, every MESSAGE and BYE answered 200. Any error stanza fails the test.
async fn deliver_all(w: &mut World, expected: &HashSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut got = HashSet::new();
    let mut n = 0;
    while &got != expected {
        match w.next(deadline).await {
            Some(Event::Sip(conn, m, _)) => match m.method() {
                Some(Method::Invite) => {
                    n += 1;
                    w.accept(conn, &m, &format!("t{n}"));
                }
                Some(Method::Message) => {
                    got.insert(body(&m));
                    w.respond(conn, &m, 200, "m");
                }
                Some(Method::Bye) => w.respond(conn, &m, 200, "b"),
                _ => {}
            },
            Some(Event::Stanza(s, _)) => {
                if net::attr(&s, "type") == Some(b"error") {
                    w.fail(&format!("an error came back: {}", text(&s)));
                }
            }
            Some(_) => {}
            None => w.fail(&format!(
                "only {} of {} messages arrived",
                got.len(),
                expected.len()
            )),
        }
    }
}

/// `domains` (each with three LCS users Alice writes to at once) whose SRV records all name
/// the one edge host `sipfed.hosting.test`: every message arrives, over at most 4 connections
/// (`exactly` of them when given).
async fn domains_behind_one_edge_host(domains: &[String], exactly: Option<usize>) {
    let mut zones: Vec<&str> = domains.iter().map(String::as_str).collect();
    zones.push("hosting.test");
    let mut w = World::start(&zones).await;
    let port = w.edge("sipfed.hosting.test", 0).await;
    for d in domains {
        w.srv(d, &[(0, "sipfed.hosting.test", port)]).await;
    }
    let mut expected = HashSet::new();
    for u in 0..3 {
        for d in domains {
            let body = format!("hello u{u}@{d}");
            w.say(&format!("u{u}"), d, &format!("m{u}{d}"), &body);
            expected.insert(body);
        }
    }
    deliver_all(&mut w, &expected).await;
    assert!(
        w.opened.len() <= 4,
        "{} connections to one edge host",
        w.opened.len()
    );
    if let Some(n) = exactly {
        assert_eq!(w.opened.len(), n, "connections: {:?}", w.opened);
    }
}

/// The profile, "Number of connections": "A given edge server should not establish more then
/// four connections to any given federated peer. In total, a given deployment must not have more
/// than 40 connections to any given peer network."
/// Two domains whose `_sipfederationtls._tcp` SRV records name the same edge host (two
/// Microsoft 365 tenants behind `sipfed.online.lync.com`) count against that host together:
/// the connection opened for one carries the other's requests (its certificate names their SRV
/// target, which authorizes it for both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_domains_behind_one_edge_host_share_its_connections() {
    // Six sessions: no connection gets busy (16 requests outstanding), so one is enough.
    domains_behind_one_edge_host(&["tenant1.test".into(), "tenant2.test".into()], Some(1)).await;
}

/// The same with twelve tenants at once (before, one connection per domain: twelve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_domains_behind_one_edge_host_never_get_more_than_four_connections() {
    let domains: Vec<String> = (1..=12).map(|i| format!("tenant{i}.test")).collect();
    domains_behind_one_edge_host(&domains, None).await;
}

/// RFC 3261 §9.1: "The Request-URI, Call-ID, To, the numeric part of CSeq, and From header
/// fields in the CANCEL request MUST be identical to those in the request being cancelled,
/// including tags. A CANCEL constructed by a client MUST have only a single Via header field
/// value matching the top Via value in the request being cancelled." and "If no provisional
/// response has been received, the CANCEL request MUST NOT be sent". §17.1.1.3: the INVITE
/// transaction ACKs the 487. §13.2.2.4: "The UAC core MUST generate an ACK request for each
/// 2xx received from the transaction layer"; a session the bridge gave up on is then ended
/// with BYE on that connection and nothing is delivered in it.
///
/// Alice writes to bob, carol and dave at contoso.test. The edge rings bob's and carol's
/// INVITEs (180) and never answers dave's. After 64·T1 (32 s) the bridge CANCELs bob's and
/// carol's on the INVITEs' connection, never dave's; bob's ends 487 (ACKed), carol's 200
/// crosses the CANCEL (ACKed, then BYE). Alice gets three errors: two "cancelled", one "no
/// answer"; nothing she wrote reaches the edge in a MESSAGE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ringing_invite_is_cancelled_its_487_acked_and_a_crossing_200_ended_with_bye() {
    let mut w = World::start(&["contoso.test"]).await;
    let port = w.edge("sip.contoso.test", 0).await;
    w.srv("contoso.test", &[(0, "sip.contoso.test", port)])
        .await;
    for user in ["bob", "carol", "dave"] {
        w.say(
            user,
            "contoso.test",
            &format!("to-{user}"),
            &format!("hi {user}"),
        );
    }
    let started = Instant::now();
    let deadline = started + TIMER_B + Duration::from_secs(15);
    // user → (connection, INVITE, when it came)
    let mut invites: HashMap<String, (usize, Message, Instant)> = HashMap::new();
    let mut cancelled: HashSet<String> = HashSet::new();
    let mut acked_487 = false;
    let mut carol_acked = false;
    let mut carol_bye = false;
    let mut errors: HashMap<String, String> = HashMap::new();
    while !(acked_487 && carol_acked && carol_bye && errors.len() == 3) {
        let Some(e) = w.next(deadline).await else {
            w.fail(&format!(
                "within 64·T1 + 15 s: cancelled {cancelled:?}, 487 ACKed {acked_487}, carol's 200 \
                 ACKed {carol_acked} and BYE {carol_bye}, errors {errors:?}"
            ));
        };
        match e {
            Event::Sip(conn, m, at) => match m.method() {
                Some(Method::Invite) => {
                    let user = user_of(&m);
                    if user != "dave" {
                        w.respond(conn, &m, 180, &format!("{user}-tag"));
                    }
                    invites.insert(user, (conn, m, at));
                }
                Some(Method::Cancel) => {
                    let user = user_of(&m);
                    let Some((iconn, invite, sent)) = invites.get(&user).cloned() else {
                        w.fail(&format!("a CANCEL for no INVITE: {m:?}"));
                    };
                    assert_ne!(user, "dave", "an INVITE with no provisional was cancelled");
                    assert_eq!(conn, iconn, "the CANCEL goes on the INVITE's connection");
                    let waited = at - sent;
                    assert!(
                        waited >= TIMER_B - Duration::from_millis(500),
                        "cancelled after {waited:?}"
                    );
                    assert_eq!(m.request_uri(), invite.request_uri());
                    assert_eq!(m.call_id().unwrap(), invite.call_id().unwrap());
                    assert_eq!(m.header("From"), invite.header("From"));
                    assert_eq!(m.header("To"), invite.header("To"));
                    assert_eq!(m.cseq().unwrap().number, invite.cseq().unwrap().number);
                    assert_eq!(m.cseq().unwrap().method, Method::Cancel);
                    let vias: Vec<&str> = m.header_all("Via").collect();
                    assert_eq!(vias, [invite.header("Via").unwrap()]);
                    cancelled.insert(user.clone());
                    w.respond(conn, &m, 200, &format!("{user}-tag"));
                    if user == "bob" {
                        w.respond(conn, &invite, 487, "bob-tag");
                    } else {
                        w.accept(conn, &invite, "carol-tag");
                    }
                }
                Some(Method::Ack) => {
                    let user = user_of(&m);
                    let (iconn, invite, _) = invites.get(&user).cloned().unwrap();
                    assert_eq!(conn, iconn);
                    assert_eq!(m.call_id().unwrap(), invite.call_id().unwrap());
                    assert_eq!(m.cseq().unwrap().number, invite.cseq().unwrap().number);
                    assert_eq!(m.to().unwrap().tag(), Some(format!("{user}-tag").as_str()));
                    if user == "bob" {
                        // The non-2xx ACK: the INVITE's branch (§17.1.1.3).
                        assert_eq!(
                            m.top_via().unwrap().branch(),
                            invite.top_via().unwrap().branch()
                        );
                        acked_487 = true;
                    } else {
                        // The 2xx ACK goes to the 200's Contact, in a new transaction.
                        assert_eq!(
                            m.request_uri(),
                            Some("sip:lcs@127.0.0.1:5061;transport=tls")
                        );
                        assert_ne!(
                            m.top_via().unwrap().branch(),
                            invite.top_via().unwrap().branch()
                        );
                        carol_acked = true;
                    }
                }
                Some(Method::Bye) => {
                    let (iconn, invite, _) = invites.get("carol").cloned().unwrap();
                    assert_eq!(user_of(&m), "carol");
                    assert!(carol_acked, "BYE before the ACK");
                    assert_eq!(conn, iconn, "the BYE goes on the connection of the 200");
                    assert_eq!(m.call_id().unwrap(), invite.call_id().unwrap());
                    assert_eq!(m.to().unwrap().tag(), Some("carol-tag"));
                    assert_eq!(m.cseq().unwrap().number, invite.cseq().unwrap().number + 1);
                    carol_bye = true;
                    w.respond(conn, &m, 200, "carol-tag");
                }
                Some(Method::Message) => {
                    w.fail(&format!("a message was delivered: {:?}", body(&m)));
                }
                _ => {}
            },
            Event::Stanza(s, _) => {
                for user in ["bob", "carol", "dave"] {
                    if let Some(t) = error_for(&s, &format!("to-{user}")) {
                        errors.insert(user.to_owned(), t);
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(cancelled, HashSet::from(["bob".into(), "carol".into()]));
    for user in ["bob", "carol"] {
        let e = &errors[user];
        assert!(e.contains("<remote-server-timeout"), "{e}");
        assert!(
            e.contains(
                "the LCS side did not accept the chat session in time; the invitation was cancelled"
            ),
            "{e}"
        );
        assert!(e.contains(&format!("<body>hi {user}</body>")), "{e}");
    }
    let e = &errors["dave"];
    assert!(e.contains("<remote-server-timeout"), "{e}");
    assert!(e.contains("no answer from the LCS side"), "{e}");
    // Nothing more: no MESSAGE in carol's ended dialog, no further stanza.
    let quiet = Instant::now() + Duration::from_secs(2);
    while let Some(e) = w.next(quiet).await {
        match e {
            Event::Sip(_, m, _) if m.is_request() && m.method() != Some(&Method::Ack) => {
                w.fail(&format!("unexpected request: {m:?}"))
            }
            Event::Stanza(s, _) => w.fail(&format!("unexpected stanza: {}", text(&s))),
            _ => {}
        }
    }
}

/// RFC 3261 §21.5.4: "A client (proxy or UAC) receiving a 503 (Service Unavailable) SHOULD
/// attempt to forward the request to an alternate server. It SHOULD NOT forward any other
/// requests to that server for the duration specified in the Retry-After header field, if
/// present." RFC 3263 §4.3: on a 503 the client tries the next element of the list, with a new
/// Via branch (a new transaction).
///
/// northwind.test's SRV names a.northwind.test (priority 10) and b.northwind.test (20). `a`
/// answers the first INVITE `503` with `Retry-After: 120`: the bridge ACKs it, sends the
/// INVITE to `b`, and the message arrives there; Alice's next chat goes straight to `b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_sends_the_request_to_the_next_edge_and_avoids_the_first() {
    let mut w = World::start(&["northwind.test"]).await;
    let port_a = w.edge("a.northwind.test", 0).await;
    let port_b = w.edge("b.northwind.test", 1000).await;
    w.srv(
        "northwind.test",
        &[
            (10, "a.northwind.test", port_a),
            (20, "b.northwind.test", port_b),
        ],
    )
    .await;
    w.say("bob", "northwind.test", "first", "to bob");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut on_a = Vec::new();
    let mut invites_b = Vec::new();
    let mut delivered = Vec::new();
    let mut said_second = false;
    while delivered.len() < 2 {
        let Some(e) = w.next(deadline).await else {
            w.fail(&format!(
                "delivered {delivered:?}; on a: {on_a:?}; INVITEs on b: {}",
                invites_b.len()
            ));
        };
        match e {
            Event::Sip(conn, m, _) if conn < 1000 => {
                if m.method() == Some(&Method::Invite) {
                    let mut r = Message::response_to(&m, 503, None, Some("a"));
                    r.push_header("Retry-After", "120");
                    w.send(conn, &r);
                }
                on_a.push(m);
            }
            Event::Sip(conn, m, _) => match m.method() {
                Some(Method::Invite) => {
                    invites_b.push(m.clone());
                    w.accept(conn, &m, &format!("b{}", invites_b.len()));
                }
                Some(Method::Message) => {
                    delivered.push(body(&m));
                    w.respond(conn, &m, 200, "b");
                    if !said_second {
                        said_second = true;
                        w.say("carol", "northwind.test", "second", "to carol");
                    }
                }
                _ => {}
            },
            Event::Stanza(s, _) if net::attr(&s, "type") == Some(b"error") => {
                w.fail(&format!("an error came back: {}", text(&s)));
            }
            _ => {}
        }
    }
    assert_eq!(delivered, ["to bob", "to carol"]);
    // a: the first INVITE and the ACK of its 503, nothing else.
    let methods: Vec<_> = on_a.iter().map(|m| m.method().cloned().unwrap()).collect();
    assert_eq!(methods, [Method::Invite, Method::Ack]);
    assert_eq!(on_a[1].cseq().unwrap().method, Method::Ack);
    // b: the same INVITE as a new transaction, then Carol's straight away.
    assert_eq!(invites_b.len(), 2);
    assert_eq!(
        invites_b[0].call_id().unwrap(),
        on_a[0].call_id().unwrap(),
        "the same request"
    );
    assert_eq!(invites_b[0].header("From"), on_a[0].header("From"));
    assert_eq!(
        invites_b[0].cseq().unwrap().number,
        on_a[0].cseq().unwrap().number
    );
    assert_ne!(
        invites_b[0].top_via().unwrap().branch(),
        on_a[0].top_via().unwrap().branch(),
        "a new transaction"
    );
    assert_eq!(user_of(&invites_b[1]), "carol");
}

/// Nothing is lost without an error (RFC 3261 §17.1.4: a transport failure is reported to the
/// transaction user; RFC 6120 §8.3: the sender gets an error). The edge resets the connection
/// on the bridge's INVITE: Alice gets `recipient-unavailable`. Then, in a session that is up,
/// it resets the connection on the bridge's MESSAGE: that message either arrives (sent again)
/// or comes back to Alice as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_reset_mid_transaction_loses_nothing_silently() {
    let mut w = World::start(&["fabrikam.test"]).await;
    let port = w.edge("sip.fabrikam.test", 0).await;
    w.srv("fabrikam.test", &[(0, "sip.fabrikam.test", port)])
        .await;
    w.say("bob", "fabrikam.test", "reset-invite", "lost?");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut error = None;
    while error.is_none() {
        match w.next(deadline).await {
            Some(Event::Sip(conn, m, _)) if m.method() == Some(&Method::Invite) => {
                // Dropping the writer closes the connection, the INVITE unanswered.
                w.sip.remove(&conn);
            }
            Some(Event::Stanza(s, _)) => error = error_for(&s, "reset-invite"),
            Some(_) => {}
            None => w.fail("no error for the INVITE lost with its connection"),
        }
    }
    let e = error.unwrap();
    assert!(e.contains("<recipient-unavailable"), "{e}");
    assert!(e.contains("the connection to the LCS side was lost"), "{e}");

    // A session that is up; its second message meets a reset.
    w.say("carol", "fabrikam.test", "c1", "one");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut outcome = None;
    let mut reset_done = false;
    while outcome.is_none() {
        match w.next(deadline).await {
            Some(Event::Sip(conn, m, _)) => match m.method() {
                Some(Method::Invite) => w.accept(conn, &m, "carol-tag"),
                Some(Method::Message) if body(&m) == "one" => {
                    w.respond(conn, &m, 200, "carol-tag");
                    w.say("carol", "fabrikam.test", "c2", "two");
                }
                Some(Method::Message) if body(&m) == "two" && !reset_done => {
                    reset_done = true;
                    w.sip.remove(&conn);
                }
                Some(Method::Message) if body(&m) == "two" => {
                    w.respond(conn, &m, 200, "carol-tag");
                    outcome = Some("arrived".to_owned());
                }
                Some(Method::Bye) => w.respond(conn, &m, 200, "carol-tag"),
                _ => {}
            },
            Some(Event::Stanza(s, _)) => {
                if error_for(&s, "c1").is_some() {
                    w.fail(&format!("the first message failed: {}", text(&s)));
                }
                if let Some(e) = error_for(&s, "c2") {
                    assert!(e.contains("<body>two</body>"), "{e}");
                    outcome = Some(e);
                }
            }
            Some(_) => {}
            None => w.fail("the message met by a reset neither arrived nor came back"),
        }
    }
    assert!(reset_done);
}

/// A request from LCS user `bob@contoso.test` to Alice on the bridge's connection, as bytes.
fn from_bob(
    method: &str,
    ruri: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    extra: &str,
    body: &str,
) -> Vec<u8> {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKbob{method}{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@contoso.test>;tag=bob-lcs\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\nContact: <sip:bob@127.0.0.1:5061;transport=tls>\r\n{extra}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// INVITE glare: Alice and bob start a chat at the same moment. RFC 3261 §12: each INVITE makes a
/// dialog of its own (Call-ID and tags); the bridge keeps one session per pair of users, the LCS
/// side's: it accepts bob's INVITE, and what Alice wrote goes in that session. The 200 to its
/// own INVITE, arriving after, is ACKed (§13.2.2.4) and that dialog ended with BYE. Nothing is
/// lost either way: Alice's message reaches bob's edge, bob's reaches Alice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_invites_lose_no_message_either_way() {
    let mut w = World::start(&["contoso.test"]).await;
    let port = w.edge("sip.contoso.test", 0).await;
    w.srv("contoso.test", &[(0, "sip.contoso.test", port)])
        .await;
    w.say("bob", "contoso.test", "glare", "from alice");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ours: Option<(usize, Message)> = None;
    let mut lcs_ok: Option<Message> = None;
    let mut ours_acked = false;
    let mut ours_bye = false;
    let mut alice_in_lcs_dialog = false;
    let mut bob_to_alice = false;
    while !(ours_acked && ours_bye && alice_in_lcs_dialog && bob_to_alice) {
        let Some(e) = w.next(deadline).await else {
            w.fail(&format!(
                "ours ACKed {ours_acked}, BYE {ours_bye}; Alice's message in bob's session \
                 {alice_in_lcs_dialog}; bob's message to Alice {bob_to_alice}"
            ));
        };
        match e {
            Event::Sip(conn, m, _) if m.is_request() => match m.method() {
                Some(Method::Invite) => {
                    // The bridge's INVITE: bob's crosses it on the same connection.
                    ours = Some((conn, m));
                    let invite = from_bob(
                        "INVITE",
                        &format!("sip:alice@{XMPP_DOMAIN}"),
                        &format!("<sip:alice@{XMPP_DOMAIN}>"),
                        "glare-lcs",
                        1,
                        "Content-Type: application/sdp\r\n",
                        SDP,
                    );
                    let _ = w.sip[&conn].send(invite);
                }
                Some(Method::Ack) => {
                    let (_, invite) = ours.clone().unwrap();
                    assert_eq!(m.call_id().unwrap(), invite.call_id().unwrap());
                    assert_eq!(m.to().unwrap().tag(), Some("late"));
                    ours_acked = true;
                }
                Some(Method::Bye) => {
                    let (_, invite) = ours.clone().unwrap();
                    assert_eq!(m.call_id().unwrap(), invite.call_id().unwrap(), "{m:?}");
                    assert!(ours_acked, "BYE before the ACK");
                    ours_bye = true;
                    w.respond(conn, &m, 200, "late");
                }
                Some(Method::Message) => {
                    assert_eq!(m.call_id().unwrap(), "glare-lcs", "in bob's session");
                    assert_eq!(body(&m), "from alice");
                    alice_in_lcs_dialog = true;
                    w.respond(conn, &m, 200, "x");
                }
                _ => {}
            },
            Event::Sip(conn, r, _) => {
                // The bridge's answers to bob's INVITE.
                if r.call_id().ok() != Some("glare-lcs") || r.status() != Some(200) {
                    continue;
                }
                if r.cseq().unwrap().method == Method::Invite {
                    let to = r.header("To").unwrap().to_owned();
                    let contact = r.contact().unwrap();
                    let target = match contact {
                        Some(lcs_bridge::sip::header::Contact::Addresses(list)) => {
                            list[0].uri.to_owned()
                        }
                        other => w.fail(&format!("a 200 without Contact: {other:?}")),
                    };
                    let ack = from_bob("ACK", &target, &to, "glare-lcs", 1, "", "");
                    let _ = w.sip[&conn].send(ack);
                    let message = from_bob(
                        "MESSAGE",
                        &target,
                        &to,
                        "glare-lcs",
                        2,
                        "Content-Type: text/plain; charset=UTF-8\r\n",
                        "from bob",
                    );
                    let _ = w.sip[&conn].send(message);
                    lcs_ok = Some(r);
                    // Only now does our own INVITE get its 200.
                    let (oconn, invite) = ours.clone().unwrap();
                    w.accept(oconn, &invite, "late");
                }
            }
            Event::Stanza(s, _) => {
                if net::attr(&s, "type") == Some(b"error") {
                    w.fail(&format!("an error came back: {}", text(&s)));
                }
                if net::child_text(&s, "body") == Some(b"from bob") {
                    let to = net::attr(&s, "to").unwrap_or_default();
                    assert!(to.starts_with(b"alice@xmpp.test"), "{}", text(&s));
                    let from = lcs_jid("bob", "contoso.test");
                    assert_eq!(net::attr(&s, "from"), Some(from.as_bytes()), "{}", text(&s));
                    bob_to_alice = true;
                }
            }
            _ => {}
        }
    }
    assert!(lcs_ok.is_some());
}
