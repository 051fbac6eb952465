//! A hostile federation partner and a hostile XMPP user against the real `lcs-bridge run`
//! binary, joined to a real Prosody as its component (docs/security.md). The test is the
//! partner's mutual-TLS edge `contoso.com` (`lcs_test_support::net`): it dials the bridge's SIP port
//! and listens for the bridge's connections. Alice (and Bob) are logged in to Prosody as
//! ordinary clients over c2s.
//!
//! Each test sends what an attacker would and then checks the bridge still serves everyone:
//! - strings a partner controls (a From display name, a Call-ID, a PIDF note and its
//!   `xml:lang`, a reason phrase) with characters XML cannot carry never cut the component
//!   link: the stanza is cleaned, or the request refused, and the next message goes through;
//! - a local user's `<subject/>` and `xml:lang` cannot add a header or a request to what the
//!   partner receives;
//! - requests that do not parse are answered (400/513), not dropped;
//! - an LCS address that reads as another domain's user is refused;
//! - pending subscriptions from one partner are bounded per user and per domain;
//! - a restart with thousands of stored subscriptions paces its stanzas instead of
//!   overflowing the link's queue.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use lcs_test_support::{net, pki};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use lcs_bridge::sip::message::Message;
use lcs_bridge::store::{
    Approval, DialogRecord, Direction, SledStore, Store, SubState, Subscription, sled_dir,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use lcs_test_support::config::BridgeConfig;
use lcs_test_support::e2e::{ALICE_PASSWORD, Bridge, Mode};
use lcs_test_support::{GATEWAY_COMPONENT, Prosody, XMPP_DOMAIN, XmppServer};
use net::{Event, Tls, Writer};
use pki::{Pki, write_bridge_files};

const LCS_DOMAIN: &str = "contoso.com";
/// The test's connection to the bridge (the bridge's own connections to the partner
/// listener count from 0).
const EDGE_CONN: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(20);

/// The JID of LCS user `name` (gateway mode, XEP-0106).
fn lcs_jid(name: &str) -> String {
    format!("{name}\\40{LCS_DOMAIN}@{GATEWAY_COMPONENT}")
}

struct World {
    server: Prosody,
    _dir: tempfile::TempDir,
    bridge: Bridge,
    events: UnboundedReceiver<Event>,
    events_tx: UnboundedSender<Event>,
    tls: Tls,
    sip_port: u16,
    sip: HashMap<usize, Writer>,
    /// Logged-in users' writers, by user name; their stanzas come as `Event::Client(index)`.
    clients: Vec<(String, Writer)>,
    /// What the waits so far did not take, in order: a later wait looks here first (a
    /// response and the stanza it caused come on different connections, in either order).
    backlog: Vec<Event>,
}

impl World {
    /// Prosody with `users`, the bridge (with `extra` TOML), the edge connected, the users
    /// logged in and available. `None` when Prosody is missing (and peers are not required).
    async fn start(users: &[&str], extra: &str, prepare: impl FnOnce(&Path)) -> Option<World> {
        let server = Prosody::start()?;
        for user in users {
            server.register(user, ALICE_PASSWORD);
        }
        let dir = tempfile::Builder::new()
            .prefix("lcsb-hostile-")
            .tempdir()
            .unwrap();
        let pki = Pki::new("Hostile peers test CA");
        write_bridge_files(
            dir.path(),
            &pki,
            &["sip.xmpp.test", XMPP_DOMAIN, "127.0.0.1"],
        );
        let edge_leaf = pki.leaf(&["sip.contoso.com", LCS_DOMAIN, "127.0.0.1"], false);
        let tls = Tls::new(&edge_leaf, &pki.ca);
        let (partner_port, events_tx, events) = net::sip_partner(tls.acceptor.clone()).await;
        let sip_port = lcs_test_support::free_port();
        let config = dir.path().join("lcs-bridge.toml");
        let toml = BridgeConfig {
            extra,
            log_level: "info,lcs_bridge=debug",
            ..BridgeConfig::new(
                dir.path(),
                Mode::Gateway,
                server.component_port(),
                sip_port,
                partner_port,
            )
        }
        .toml();
        std::fs::write(&config, toml).unwrap();
        prepare(dir.path());
        let mut bridge = Bridge::start(&config, &dir.path().join("bridge.log"), sip_port);
        let deadline = Instant::now() + WAIT;
        tokio::task::block_in_place(|| bridge.wait_started(deadline));
        let c2s: SocketAddr = format!("127.0.0.1:{}", server.c2s_port()).parse().unwrap();
        let mut clients = Vec::new();
        for (i, user) in users.iter().enumerate() {
            let (w, _jid) =
                net::c2s_login(c2s, XMPP_DOMAIN, user, ALICE_PASSWORD, i, events_tx.clone())
                    .await
                    .unwrap();
            // Roster first (Prosody hands roster pushes and `subscribed` to interested
            // resources only), then available.
            w.send(
                b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq><presence/>"
                    .to_vec(),
            )
            .unwrap();
            clients.push((user.to_string(), w));
        }
        let mut world = World {
            server,
            _dir: dir,
            bridge,
            events,
            events_tx,
            tls,
            sip_port,
            sip: HashMap::new(),
            clients,
            backlog: Vec::new(),
        };
        world.connect_edge().await;
        Some(world)
    }

    async fn connect_edge(&mut self) {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.sip_port).parse().unwrap();
        net::connect_sip(
            addr,
            self.tls.connector.clone(),
            EDGE_CONN,
            self.events_tx.clone(),
        )
        .await
        .unwrap();
        self.wait(|_, e| matches!(e, Event::SipUp(EDGE_CONN, _)).then_some(()))
            .await;
    }

    /// Panics with what was seen and the end of the bridge's log.
    fn fail(&self, why: &str) -> ! {
        let log = self.bridge.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let prosody =
            std::fs::read_to_string(self.server.dir().join("prosody.log")).unwrap_or_default();
        let prosody: Vec<&str> = prosody.lines().rev().take(30).collect();
        let prosody: Vec<&str> = prosody.into_iter().rev().collect();
        panic!(
            "{why}\n--- seen ---\n{}\n--- bridge log (end) ---\n{}\n--- Prosody log (end) ---\n{}",
            self.backlog
                .iter()
                .rev()
                .take(40)
                .rev()
                .map(describe)
                .collect::<Vec<_>>()
                .join("\n"),
            tail.join("\n"),
            prosody.join("\n")
        );
    }

    /// Handles events until `f` picks one (SIP connections are registered on the way).
    async fn wait<T>(&mut self, mut f: impl FnMut(&mut Self, &Event) -> Option<T>) -> T {
        self.wait_for(WAIT, &mut f)
            .await
            .unwrap_or_else(|| self.fail("nothing awaited came in time"))
    }

    /// Like [`World::wait`], but `None` after `limit`.
    async fn wait_for<T>(
        &mut self,
        limit: Duration,
        f: &mut impl FnMut(&mut Self, &Event) -> Option<T>,
    ) -> Option<T> {
        for i in 0..self.backlog.len() {
            // Taken out while `f` looks at it (`f` may look at the world too).
            let ev = std::mem::replace(&mut self.backlog[i], Event::SipClosed(0, String::new()));
            if let Some(t) = f(self, &ev) {
                self.backlog.remove(i);
                return Some(t);
            }
            self.backlog[i] = ev;
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .ok()??;
            if let Event::SipUp(conn, w) = &ev {
                self.sip.insert(*conn, w.clone());
            }
            if std::env::var_os("HOSTILE_DEBUG").is_some() {
                eprintln!("event: {}", describe(&ev));
            }
            if let Some(t) = f(self, &ev) {
                return Some(t);
            }
            self.backlog.push(ev);
        }
    }

    fn send_sip(&self, conn: usize, bytes: impl Into<Vec<u8>>) {
        self.sip[&conn].send(bytes.into()).unwrap();
    }

    fn send_xmpp(&self, user: &str, xml: &str) {
        let (_, w) = self.clients.iter().find(|(u, _)| u == user).unwrap();
        w.send(xml.as_bytes().to_vec()).unwrap();
    }

    /// The next SIP response on the edge's connection whose Call-ID is `call_id`.
    async fn response(&mut self, call_id: &str) -> Message {
        self.wait(|_, e| match e {
            Event::Sip(EDGE_CONN, m, _) if !m.is_request() && m.call_id().ok() == Some(call_id) => {
                Some(m.clone())
            }
            _ => None,
        })
        .await
    }

    /// The next request the bridge sends (on any connection) with this method.
    async fn request(&mut self, method: &str) -> (usize, Message) {
        self.wait(|_, e| match e {
            Event::Sip(conn, m, _) if m.method().is_some_and(|x| x.as_str() == method) => {
                Some((*conn, m.clone()))
            }
            _ => None,
        })
        .await
    }

    /// The next stanza to `user` containing every one of `needles`.
    async fn stanza(&mut self, user: &str, needles: &[&str]) -> String {
        let index = self.clients.iter().position(|(u, _)| u == user).unwrap();
        self.wait(|_, e| match e {
            Event::Client(i, s, _) if *i == index => {
                let s = String::from_utf8_lossy(s).into_owned();
                needles.iter().all(|n| s.contains(n)).then_some(s)
            }
            _ => None,
        })
        .await
    }

    /// Answers `request` on `conn` (a To tag, the edge's Contact), with `extra` header lines.
    fn answer(&self, conn: usize, request: &Message, status: u16, extra: &[(&str, &str)]) {
        let mut r = Message::response_to(request, status, None, Some("edge"));
        r.push_header("Contact", "<sip:peer@127.0.0.1;transport=tls>");
        for (name, value) in extra {
            r.push_header(name, value);
        }
        self.send_sip(conn, r.to_bytes());
    }
}

fn describe(e: &Event) -> String {
    match e {
        Event::Sip(conn, m, _) => format!(
            "sip {conn}: {} {}",
            m.method()
                .map_or_else(|| m.status().unwrap_or(0).to_string(), |x| x.to_string()),
            m.call_id().unwrap_or_default()
        ),
        Event::Client(i, s, _) => format!("client {i}: {}", String::from_utf8_lossy(s)),
        Event::SipClosed(c, why) => format!("sip {c} closed: {why}"),
        Event::ClientClosed(c, why) => format!("client {c} closed: {why}"),
        _ => "other".into(),
    }
}

/// A request from the partner's user `from_user` (display name `display`, raw) to local
/// user `to`, without body unless given, as bytes (so that any byte can be put in).
fn raw_request(
    method: &str,
    from: &[u8],
    to: &str,
    call_id: &[u8],
    cseq: u32,
    extra: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!(
        "{method} sip:{to}@{XMPP_DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{cseq}x{}\r\n\
         Max-Forwards: 70\r\nFrom: ",
        call_id.len()
    )
    .into_bytes();
    r.extend_from_slice(from);
    r.extend_from_slice(
        format!(";tag=lcs{cseq}\r\nTo: <sip:{to}@{XMPP_DOMAIN}>\r\nCall-ID: ").as_bytes(),
    );
    r.extend_from_slice(call_id);
    r.extend_from_slice(
        format!(
            "\r\nCSeq: {cseq} {method}\r\nContact: <sip:peer@127.0.0.1;transport=tls>\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    r.extend_from_slice(body);
    r
}

const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip/tcp *\r\n";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Opens an IM session from `from` (raw From value) with this Call-ID and returns the dialog's
/// To (with the bridge's tag) for in-dialog requests.
async fn open_session(w: &mut World, from: &[u8], call_id: &[u8]) -> Message {
    let extra = "Content-Type: application/sdp\r\n";
    w.send_sip(
        EDGE_CONN,
        raw_request("INVITE", from, "alice", call_id, 1, extra, SDP.as_bytes()),
    );
    let call = String::from_utf8_lossy(call_id).into_owned();
    loop {
        let r = w.response(&call).await;
        match r.status() {
            Some(100) => continue,
            Some(200) => {
                let mut ack = b"ACK sip:alice@sip.xmpp.test;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKack\r\nMax-Forwards: 70\r\nFrom: ".to_vec();
                ack.extend_from_slice(r.header("From").unwrap().as_bytes());
                ack.extend_from_slice(
                    format!("\r\nTo: {}\r\nCall-ID: ", r.header("To").unwrap()).as_bytes(),
                );
                ack.extend_from_slice(r.header("Call-ID").unwrap().as_bytes());
                ack.extend_from_slice(b"\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
                w.send_sip(EDGE_CONN, ack);
                return r;
            }
            other => w.fail(&format!("INVITE answered {other:?}: {r}")),
        }
    }
}

/// A MESSAGE in the session `ok` (the 200 to its INVITE) with `text`.
fn in_dialog_message(ok: &Message, cseq: u32, text: &str) -> Vec<u8> {
    format!(
        "MESSAGE sip:alice@sip.xmpp.test;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKm{cseq}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} MESSAGE\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: {}\r\n\r\n{text}",
        ok.header("From").unwrap(),
        ok.header("To").unwrap(),
        ok.header("Call-ID").unwrap(),
        text.len()
    )
    .into_bytes()
}

#[test]
fn poison_strings_from_a_partner_never_cut_the_component_link() {
    runtime().block_on(async {
        let Some(mut w) = World::start(&["alice"], "", |_| {}).await else {
            return;
        };
        // 1. A display name and a Call-ID with noncharacters (legal UTF-8 in SIP, not in
        //    XML): the session's messages reach alice, the thread without them.
        let ok = open_session(&mut w, "\"Bob \u{FFFE}\" <sip:bob@contoso.com>".as_bytes(), "poison\u{FFFE}-1".as_bytes()).await;
        w.send_sip(EDGE_CONN, in_dialog_message(&ok, 2, "first"));
        let s = w.stanza("alice", &["<body>first</body>"]).await;
        assert!(s.contains("<thread>poison-1</thread>"), "{s}");
        assert_eq!(w.response("poison\u{FFFE}-1").await.status(), Some(200));

        // 2. Control characters are refused by the SIP parser: 400, with the reason.
        w.send_sip(
            EDGE_CONN,
            raw_request("MESSAGE", b"\"Eve\x01\x1b[2J\" <sip:eve@contoso.com>", "alice", b"ctl-1", 1, "Content-Type: text/plain\r\n", b"hi"),
        );
        let r = w.response("ctl-1").await;
        assert_eq!(r.status(), Some(400), "{r}");
        assert!(r.reason().unwrap().contains("control character U+0001"), "{r}");

        // 3. A watcher's display name becomes the nick of the `subscribe`: cleaned.
        w.send_sip(
            EDGE_CONN,
            raw_request("SUBSCRIBE", "\"Carol\u{FFFF}\" <sip:carol@contoso.com>".as_bytes(), "alice", b"sub-1", 1, "Event: presence\r\nExpires: 3600\r\n", b""),
        );
        assert_eq!(w.response("sub-1").await.status(), Some(202));
        let s = w.stanza("alice", &["type='subscribe'", "carol"]).await;
        assert!(s.contains(">Carol</nick>"), "{s}");

        // 4. Alice watches dave: a PIDF document with a reference to a character XML forbids
        //    is not read (the NOTIFY is answered, the document ignored); a note whose
        //    xml:lang is not a language tag comes without it.
        w.send_xmpp("alice", &format!("<presence to='{}' type='subscribe'/>", lcs_jid("dave")));
        let (conn, sub) = w.request("SUBSCRIBE").await;
        w.answer(conn, &sub, 202, &[("Expires", "3600")]);
        let notify = |cseq: u32, note: &str| -> Vec<u8> {
            let body = format!(
                "<?xml version='1.0' encoding='UTF-8'?><presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:dave@contoso.com'><tuple id='t'><status><basic>open</basic></status>{note}</tuple></presence>"
            );
            format!(
                "NOTIFY sip:alice@sip.xmpp.test;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKn{cseq}\r\nMax-Forwards: 70\r\nFrom: {};tag=edge\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} NOTIFY\r\nContact: <sip:peer@127.0.0.1;transport=tls>\r\nEvent: presence\r\nSubscription-State: active;expires=3600\r\nContent-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{body}",
                sub.header("To").unwrap(),
                sub.header("From").unwrap(),
                sub.call_id().unwrap(),
                body.len()
            )
            .into_bytes()
        };
        w.send_sip(conn, notify(1, "<note>bad &#xFFFF; note</note>"));
        let call = sub.call_id().unwrap().to_owned();
        let r = w
            .wait(|_, e| match e {
                Event::Sip(c, m, _) if *c == conn && !m.is_request() && m.call_id().ok() == Some(call.as_str()) => Some(m.clone()),
                _ => None,
            })
            .await;
        assert_eq!(r.status(), Some(200), "{r}");
        w.send_sip(conn, notify(2, "<note xml:lang='en&#10;X-Evil: 1'>Hi there</note>"));
        let s = w.stanza("alice", &["<status", "Hi there</status>"]).await;
        assert!(!s.contains("X-Evil") && s.contains("<status>Hi there</status>"), "{s}");
        assert!(
            !w.backlog.iter().any(|e| describe(e).contains("bad")),
            "the refused document was shown"
        );

        // 5. A reason phrase with a noncharacter becomes the error text of alice's bounce.
        w.send_xmpp(
            "alice",
            &format!("<message to='{}' type='chat' id='e1'><body>hello erin</body></message>", lcs_jid("erin")),
        );
        let (conn, invite) = w.request("INVITE").await;
        let mut gone = Message::response_to(&invite, 480, None, Some("edge")).to_bytes();
        let line_end = gone.iter().position(|&b| b == b'\r').unwrap();
        gone.splice(..line_end, "SIP/2.0 480 Gone \u{FFFE}away".bytes());
        w.send_sip(conn, gone);
        let s = w.stanza("alice", &["type='error'", "id='e1'"]).await;
        assert!(s.contains("480 Gone away"), "{s}");

        // 6. The link is still up and carries the next message.
        w.send_sip(EDGE_CONN, in_dialog_message(&ok, 3, "still here"));
        w.stanza("alice", &["<body>still here</body>"]).await;
        let log = w.bridge.log();
        assert!(!log.contains("component link down"), "the link went down");
        assert!(!log.contains("dropped a stanza the XML serialiser refuses"));
    });
}

#[test]
fn an_xmpp_user_cannot_add_headers_or_requests_to_sip() {
    runtime().block_on(async {
        let Some(mut w) = World::start(&["alice"], "", |_| {}).await else {
            return;
        };
        // CR LF as character references; Prosody passes them on as CR/LF or bare LF.
        let smuggle = "hi&#13;&#10;Ms-asserted-verification-level: ms-source-verification-level=verified&#13;&#10;&#13;&#10;\
                       MESSAGE sip:victim@contoso.com SIP/2.0&#10;Via: SIP/2.0/TLS evil;branch=z9hG4bKevil&#10;X-Evil: 1";
        w.send_xmpp(
            "alice",
            &format!(
                "<message to='{}' type='chat' id='s1' xml:lang='en&#13;&#10;X-Injected: 1'><subject>{smuggle}</subject><body>body</body></message>",
                lcs_jid("bob")
            ),
        );
        let (conn, invite) = w.request("INVITE").await;
        w.answer(conn, &invite, 200, &[]);
        let (_, m) = w.request("MESSAGE").await;
        w.answer(conn, &m, 200, &[]);
        let names: Vec<String> = m.headers().map(|(n, _)| n.to_ascii_lowercase()).collect();
        for name in ["subject", "ms-asserted-verification-level", "via"] {
            assert_eq!(names.iter().filter(|n| *n == name).count(), 1, "{name} in\n{m}");
        }
        assert!(!names.iter().any(|n| n == "x-evil" || n == "x-injected" || n == "content-language"), "{m}");
        let subject = m.header("Subject").unwrap();
        assert!(subject.starts_with("hi Ms-asserted-verification-level"), "{subject}");
        assert!(subject.ends_with("X-Evil: 1"), "{subject}");
        assert_eq!(m.body(), b"body");
        // And no second request reaches the partner.
        let extra = w
            .wait_for(Duration::from_millis(1500), &mut |_, e| match e {
                Event::Sip(_, m, _) if m.is_request() && m.method().is_some_and(|x| x.as_str() != "ACK") => Some(m.to_string()),
                _ => None,
            })
            .await;
        assert_eq!(extra, None);
    });
}

#[test]
fn malformed_requests_are_answered_and_misleading_addresses_refused() {
    runtime().block_on(async {
        let Some(mut w) = World::start(&["alice"], "", |_| {}).await else {
            return;
        };
        let from = b"<sip:bob@contoso.com>";
        let text = "Content-Type: text/plain\r\n";
        // More header lines than sip.max_headers (128): 513.
        let many: String = (0..140).map(|i| format!("X-H{i}: {i}\r\n")).collect();
        w.send_sip(
            EDGE_CONN,
            raw_request(
                "MESSAGE",
                from,
                "alice",
                b"many-1",
                1,
                &format!("{many}{text}"),
                b"hi",
            ),
        );
        // A header that is not UTF-8, a bare LF line end: 400.
        let mut bad_utf8 = raw_request(
            "MESSAGE",
            from,
            "alice",
            b"utf8-1",
            1,
            "X-Bin: @@\r\n",
            b"hi",
        );
        let at = bad_utf8.windows(2).position(|x| x == b"@@").unwrap();
        bad_utf8.splice(at..at + 2, [0xFF, 0xFE]);
        w.send_sip(EDGE_CONN, bad_utf8);
        w.send_sip(
            EDGE_CONN,
            raw_request(
                "MESSAGE",
                from,
                "alice",
                b"lf-1",
                1,
                "X-A: 1\nX-B: 2\r\n",
                b"hi",
            ),
        );
        for (call, status) in [("many-1", 513), ("utf8-1", 400), ("lf-1", 400)] {
            let r = w.response(call).await;
            assert_eq!(r.status(), Some(status), "{r}");
        }
        // sip:joe%40fabrikam.com@contoso.com would read as a fabrikam.com user: 403.
        w.send_sip(
            EDGE_CONN,
            raw_request(
                "MESSAGE",
                b"<sip:joe%40fabrikam.com@contoso.com>",
                "alice",
                b"at-1",
                1,
                text,
                b"hi",
            ),
        );
        let r = w.response("at-1").await;
        assert_eq!(r.status(), Some(403), "{r}");
        assert!(r.reason().unwrap().contains("'@'"), "{r}");
        // The connection still works.
        w.send_sip(
            EDGE_CONN,
            raw_request("MESSAGE", from, "alice", b"good-1", 1, text, b"fine"),
        );
        assert_eq!(w.response("good-1").await.status(), Some(200));
        w.stanza("alice", &["<body>fine</body>"]).await;
    });
}

#[test]
fn pending_subscriptions_of_one_partner_are_bounded() {
    // contoso.com is a listed partner: its domain limit is max_pending_per_partner.
    let extra = "[presence]\nmax_pending_per_user = 20\nmax_pending_per_partner = 30\n";
    runtime().block_on(async {
        let Some(mut w) = World::start(&["alice", "bob"], extra, |_| {}).await else {
            return;
        };
        let mut answers: HashMap<u16, usize> = HashMap::new();
        for (user, n) in [("alice", 25), ("bob", 15)] {
            for i in 0..n {
                let call = format!("flood-{user}-{i}");
                w.send_sip(
                    EDGE_CONN,
                    raw_request(
                        "SUBSCRIBE",
                        format!("<sip:w{i}x{user}@contoso.com>").as_bytes(),
                        user,
                        call.as_bytes(),
                        1,
                        "Event: presence\r\nExpires: 3600\r\n",
                        b"",
                    ),
                );
                let r = w.response(&call).await;
                *answers.entry(r.status().unwrap()).or_default() += 1;
                if r.status() == Some(503) {
                    assert_eq!(r.header("Retry-After"), Some("600"), "{r}");
                    let limit = if user == "alice" { "max_pending_per_user" } else { "max_pending_per_partner" };
                    assert!(r.reason().unwrap().contains(limit), "{r}");
                }
            }
        }
        // alice: 20 accepted, 5 refused; bob: 10 more until contoso.com has 30 pending.
        assert_eq!(answers.get(&202), Some(&30), "{answers:?}");
        assert_eq!(answers.get(&503), Some(&10), "{answers:?}");
        // Local users were asked 30 times in all, not 40.
        let mut asked = 0;
        while w
            .wait_for(Duration::from_millis(1500), &mut |_, e| {
                matches!(e, Event::Client(_, s, _) if memchr::memmem::find(s, b"type='subscribe'").is_some()
                    || memchr::memmem::find(s, b"type=\"subscribe\"").is_some())
                .then_some(())
            })
            .await
            .is_some()
        {
            asked += 1;
        }
        assert_eq!(asked, 30);
        assert_eq!(w.bridge.count("pending-subscription limit reached"), 10);
    });
}

/// Stored watchers restored at start: a gateway presence and a probe for each of their users.
const STORED_WATCHERS: usize = 3000;

#[test]
fn a_restart_with_thousands_of_subscriptions_does_not_overflow_the_link() {
    // The link holds 1,024 stanzas per domain; the restore sends 6,000 (restore_rate 3,000/s).
    let extra = "[presence]\nrestore_rate = 3000\n";
    let prepare = |dir: &Path| {
        let store = SledStore::open(&sled_dir(&dir.join("store"))).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let subs: Vec<Subscription> = (0..STORED_WATCHERS)
            .map(|i| Subscription {
                direction: Direction::Inbound,
                local_jid: format!("u{i}@{XMPP_DOMAIN}"),
                remote_aor: format!("sip:w{i}@{LCS_DOMAIN}"),
                dialog: Some(DialogRecord {
                    call_id: format!("restored-{i}"),
                    local_tag: format!("b{i}"),
                    remote_tag: format!("l{i}"),
                    local_uri: format!("sip:u{i}@{XMPP_DOMAIN}"),
                    local_display: None,
                    remote_uri: format!("sip:w{i}@{LCS_DOMAIN}"),
                    remote_display: Some(format!("Watcher {i}")),
                    remote_target: "sip:peer@127.0.0.1;transport=tls".into(),
                    route_set: Vec::new(),
                    local_cseq: 1,
                    remote_cseq: Some(1),
                    created_unix: now,
                }),
                expires_unix: now + 3600,
                state: SubState::Active,
                approval: Approval::Approved,
                last_sent: None,
                last_received: None,
                display_name: None,
                updated_unix: now,
            })
            .collect();
        store.put_subscriptions(&subs).unwrap();
        store.flush().unwrap();
    };
    runtime().block_on(async {
        let Some(mut w) = World::start(&["alice"], extra, prepare).await else {
            return;
        };
        let deadline = Instant::now() + WAIT;
        tokio::task::block_in_place(|| {
            w.bridge
                .wait_log("stored subscriptions taken up", 1, deadline)
        });
        // 6,000 stanzas at 3,000/s: give them three seconds and one more.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let log = w.bridge.log();
        assert_eq!(
            log.matches("stanza not sent to the XMPP server").count(),
            0,
            "the link's queue overflowed"
        );
        assert!(!log.contains("component link down"));
    });
}
