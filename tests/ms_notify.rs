//! Microsoft conformance: connection affinity for LCS users watching XMPP users (the bridge as
//! presence notifier), against the real `lcs-bridge run` binary. The test plays both
//! neighbours on the wire (`lcs_test_support::net`): the XMPP server's XEP-0114 component
//! port (every stanza the bridge sends is seen, so "no new `subscribe` reached the user" is
//! checked on the wire), and the partner's mutual-TLS edge `contoso.com`, which dials the
//! bridge's SIP port with a certificate of the bridge's trusted CA; the bridge's own
//! connections to the partner land on the partner listener, so a NOTIFY sent "by domain" on a
//! new connection would be seen too.
//!
//! The rules reproduced: the federation profile's "Connection affinity" ("All messages within
//! a given SIP dialog must be sent over the exact same connection"), and RFC 6665 §4.1.2.2 for
//! what the subscriber does when its refresh gets 481 ("If a SUBSCRIBE request to refresh a
//! subscription receives a 404, 405, 410, 416, 480-485, 489, 501, or 604 response, the
//! subscriber MUST consider the subscription terminated. … If the subscriber wishes to
//! re-subscribe to the state, he does so by composing an unrelated initial SUBSCRIBE request
//! with a freshly generated Call-ID and a new, unique "From" tag").

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use lcs_test_support::net;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lcs_bridge::sip::message::Message;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use lcs_test_support::e2e::{Bridge, Mode};
use net::{Event, Tls, Writer};

/// The test's first connection to the bridge, and the one it opens after dropping it (the
/// bridge's own connections to the partner listener count from 0).
const EDGE_CONN: usize = 1 << 20;
const EDGE_CONN2: usize = EDGE_CONN + 1;
const WAIT: Duration = Duration::from_secs(20);

struct World {
    _dir: tempfile::TempDir,
    bridge: Bridge,
    events: UnboundedReceiver<Event>,
    events_tx: UnboundedSender<Event>,
    tls: Tls,
    sip_port: u16,
    sip: HashMap<usize, Writer>,
    /// The component stream's writer (the XMPP server's side).
    xmpp: Writer,
    /// Every stanza the bridge sent, in order.
    stanzas: Vec<String>,
    /// Every event seen, in order (for the checks and the failure report).
    seen: Vec<String>,
    /// What the waits so far did not take, in order.
    backlog: Vec<Event>,
}

impl World {
    /// The bridge (NOTIFYs at most one a second per watcher), its component stream accepted,
    /// the edge connected as [`EDGE_CONN`].
    async fn start() -> World {
        let p = lcs_test_support::e2e::scripted_partner(
            "lcsb-ms-notify-",
            "\n[presence]\nnotify_min_interval_secs = 1\n",
        )
        .await;
        let mut world = World {
            _dir: p.dir,
            bridge: p.bridge,
            events: p.events,
            events_tx: p.events_tx,
            tls: p.tls,
            sip_port: p.sip_port,
            sip: HashMap::new(),
            xmpp: p.xmpp,
            stanzas: Vec::new(),
            seen: Vec::new(),
            backlog: Vec::new(),
        };
        world.connect(EDGE_CONN).await;
        world
    }

    /// The edge opens connection `conn` to the bridge.
    async fn connect(&mut self, conn: usize) {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.sip_port).parse().unwrap();
        net::connect_sip(
            addr,
            self.tls.connector.clone(),
            conn,
            self.events_tx.clone(),
        )
        .await
        .unwrap();
        self.wait(|_, e| matches!(e, Event::SipUp(c, _) if *c == conn).then_some(()))
            .await;
    }

    /// The edge closes connection `conn` (its writer dropped: the connection's task shuts the
    /// TLS stream down).
    fn drop_sip(&mut self, conn: usize) {
        self.sip.remove(&conn);
        self.backlog
            .retain(|e| !matches!(e, Event::SipUp(c, _) if *c == conn));
    }

    /// Panics with what was seen and the end of the bridge's log.
    fn fail(&self, why: &str) -> ! {
        let log = self.bridge.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{why}\n--- seen ---\n{}\n--- bridge log (end) ---\n{}",
            self.seen.join("\n"),
            tail.join("\n"),
        );
    }

    /// Notes an event that came in (SIP connections registered, stanzas recorded).
    fn note(&mut self, ev: &Event) {
        match ev {
            Event::SipUp(conn, w) => {
                self.sip.insert(*conn, w.clone());
            }
            // Attribute quotes made single, whichever the bridge's writer uses.
            Event::Stanza(s, _) => self
                .stanzas
                .push(String::from_utf8_lossy(s).replace('"', "'")),
            _ => {}
        }
        self.seen.push(describe(ev));
    }

    /// Handles events until `f` picks one.
    async fn wait<T>(&mut self, mut f: impl FnMut(&mut Self, &Event) -> Option<T>) -> T {
        for i in 0..self.backlog.len() {
            let ev = std::mem::replace(&mut self.backlog[i], Event::SipClosed(0, String::new()));
            if let Some(t) = f(self, &ev) {
                self.backlog.remove(i);
                return t;
            }
            self.backlog[i] = ev;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.events.recv()).await else {
                self.fail("nothing awaited came in time");
            };
            self.note(&ev);
            if let Some(t) = f(self, &ev) {
                return t;
            }
            self.backlog.push(ev);
        }
    }

    /// Takes in every event of the next `d` (into the backlog).
    async fn idle(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            self.note(&ev);
            self.backlog.push(ev);
        }
    }

    fn send_sip(&self, conn: usize, bytes: impl Into<Vec<u8>>) {
        self.sip[&conn].send(bytes.into()).unwrap();
    }

    fn send_xmpp(&self, xml: &str) {
        self.xmpp.send(xml.as_bytes().to_vec()).unwrap();
    }

    /// The next final response on `conn` whose Call-ID is `call_id`.
    async fn final_response(&mut self, conn: usize, call_id: &str) -> Message {
        self.wait(|_, e| match e {
            Event::Sip(c, m, _)
                if *c == conn
                    && !m.is_request()
                    && m.call_id().ok() == Some(call_id)
                    && m.status().is_some_and(|s| s >= 200) =>
            {
                Some(m.clone())
            }
            _ => None,
        })
        .await
    }

    /// The next request the bridge sends with this method and Call-ID, and its connection.
    async fn request(&mut self, method: &str, call_id: &str) -> (usize, Message) {
        self.wait(|_, e| match e {
            Event::Sip(c, m, _)
                if m.method().is_some_and(|x| x.as_str() == method)
                    && m.call_id().ok() == Some(call_id) =>
            {
                Some((*c, m.clone()))
            }
            _ => None,
        })
        .await
    }

    /// The next stanza containing every one of `needles`; its index in [`World::stanzas`].
    async fn stanza(&mut self, needles: &[&str]) -> usize {
        if let Some(i) = self
            .stanzas
            .iter()
            .position(|s| needles.iter().all(|n| s.contains(n)))
        {
            return i;
        }
        self.wait(|w, e| match e {
            Event::Stanza(s, _) => {
                let s = String::from_utf8_lossy(s).replace('"', "'");
                needles
                    .iter()
                    .all(|n| s.contains(n))
                    .then(|| w.stanzas.len() - 1)
            }
            _ => None,
        })
        .await
    }

    /// Answers a request of the bridge's with 200 on `conn` (as the partner's client would).
    fn ok_to(&self, conn: usize, request: &Message) {
        let r = Message::response_to(request, 200, None, Some("edge"));
        self.send_sip(conn, r.to_bytes());
    }

    /// Sends a page-mode MESSAGE from joe to alice on `conn` and waits for its stanza: every
    /// stanza of what came before has gone out by then. Returns how many stanzas came before.
    async fn marker(&mut self, conn: usize, text: &str) -> usize {
        let call_id = format!("marker-{text}");
        self.send_sip(conn, format!(
            "MESSAGE sip:alice@xmpp.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:joe@contoso.com>;tag=m1\r\nTo: <sip:alice@xmpp.test>\r\nCall-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        ));
        assert_eq!(
            self.final_response(conn, &call_id).await.status(),
            Some(200)
        );
        self.stanza(&[&format!("<body>{text}</body>")]).await
    }
}

fn describe(e: &Event) -> String {
    match e {
        Event::Sip(conn, m, _) => format!(
            "sip {conn}: {} {} {}",
            m.method()
                .map_or_else(|| m.status().unwrap_or(0).to_string(), |x| x.to_string()),
            m.call_id().unwrap_or_default(),
            m.header("Subscription-State").unwrap_or_default()
        ),
        Event::Stanza(s, _) => format!("stanza: {}", String::from_utf8_lossy(s)),
        Event::SipUp(c, _) => format!("sip {c} up"),
        Event::SipClosed(c, why) => format!("sip {c} closed: {why}"),
        _ => "other".into(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A federated Lync watcher's SUBSCRIBE as [MS-PRES] §4.11 "MSRTC SUBSCRIBE" shows it
/// (PIDF last in `Accept`, `ms-benotify`, `ms-piggyback-first-notify`, no `Expires`; the
/// example's addresses made contoso.com's joe and the bridge's alice, the partner edge's Via
/// on top), with this Call-ID and From tag.
fn lync_subscribe(call_id: &str, from_tag: &str) -> String {
    format!(
        "SUBSCRIBE sip:alice@xmpp.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{call_id}.1;branched=FALSE\r\nVia: SIP/2.0/TLS 10.46.164.196:1620;branch=z9hG4bK{from_tag};ms-received-port=1620;ms-received-cid=1A00\r\nMax-Forwards: 69\r\nFrom: \"Joe\" <sip:joe@contoso.com>;tag={from_tag};epid=d6277c8671\r\nTo: <sip:alice@xmpp.test>\r\nCall-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:joe@contoso.com:1620;maddr=10.46.164.196;transport=tls>;proxy=replace\r\nUser-Agent: LCC/1.3\r\nEvent: presence\r\nAccept: application/xpidf+xml, text/xml+msrtc.pidf, application/pidf+xml\r\nSupported: ms-benotify\r\nProxy-Require: ms-benotify\r\nSupported: ms-piggyback-first-notify\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The watcher's refresh in the dialog the 202 `accepted` made (RFC 6665 §4.1.2.2; RFC 3261
/// §12.2.1.1: the remote target as Request-URI, the dialog's tags, the next CSeq).
fn refresh(accepted: &Message, cseq: u32) -> String {
    let contact = accepted.header("Contact").unwrap();
    let target = contact
        .split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(uri, _)| uri)
        .unwrap();
    format!(
        "SUBSCRIBE {target} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKrefresh{cseq}\r\nMax-Forwards: 69\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: <sip:joe@contoso.com:1620;maddr=10.46.164.196;transport=tls>;proxy=replace\r\nEvent: presence\r\nAccept: application/pidf+xml\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n",
        accepted.header("From").unwrap(),
        accepted.header("To").unwrap(),
        accepted.call_id().unwrap()
    )
}

/// The partner's edge connection that carried a watcher's dialog drops while the bridge
/// runs. The profile's "Connection affinity" ("All messages within a given SIP dialog must be
/// sent over the exact same connection"): when alice changes her presence, no NOTIFY goes in
/// the dialog on any other connection (the bridge opens none to the partner for it). The
/// edge comes back on a new connection: its refresh in the old dialog gets `481`, which per
/// RFC 6665 §4.1.2.2 makes the subscriber "consider the subscription terminated" and
/// re-subscribe "with a freshly generated Call-ID and a new, unique "From" tag"; that new
/// SUBSCRIBE gets `202` and at once an `active` NOTIFY with alice's state as it is now,
/// and no second `subscribe` stanza reaches alice (her approval was kept).
#[test]
fn a_lost_connection_ends_the_watcher_dialog_and_a_new_subscribe_is_served_at_once() {
    runtime().block_on(async {
        let mut w = World::start().await;
        let old = "7c1b2e0d9a8f4c55b1e3a2d4f6081b2c";
        w.send_sip(EDGE_CONN, lync_subscribe(old, "38209ebf3e"));
        let accepted = w.final_response(EDGE_CONN, old).await;
        assert_eq!(accepted.status(), Some(202), "{accepted}");
        let (conn, pending) = w.request("NOTIFY", old).await;
        assert_eq!(conn, EDGE_CONN);
        assert_eq!(
            pending.header("Subscription-State"),
            Some("pending;expires=3600")
        );
        w.ok_to(conn, &pending);
        let joe = Mode::Gateway.jid("joe");
        w.stanza(&["type='subscribe'", "to='alice@xmpp.test'"])
            .await;
        w.send_xmpp(&format!(
            "<presence from='alice@xmpp.test' to='{joe}' type='subscribed'/><presence from='alice@xmpp.test/pc' to='{joe}'><show>dnd</show></presence>"
        ));
        loop {
            let (conn, n) = w.request("NOTIFY", old).await;
            assert_eq!(conn, EDGE_CONN, "{n}");
            w.ok_to(conn, &n);
            if String::from_utf8_lossy(n.body()).contains("busy") {
                break;
            }
        }

        // The edge's connection drops.
        w.drop_sip(EDGE_CONN);
        let deadline = Instant::now() + WAIT;
        tokio::task::block_in_place(|| {
            w.bridge
                .wait_log("peer closed the connection", 1, deadline)
        });
        let lost_at = w.seen.len();
        // Alice goes away: nothing goes to joe, on any connection (NOTIFYs may go once a
        // second here).
        w.send_xmpp(&format!(
            "<presence from='alice@xmpp.test/pc' to='{joe}'><show>away</show></presence>"
        ));
        w.idle(Duration::from_secs(3)).await;
        let sent: Vec<&String> = w.seen[lost_at..]
            .iter()
            .filter(|s| s.contains(" NOTIFY ") || s.ends_with(" up"))
            .collect();
        if !sent.is_empty() {
            w.fail(&format!("sent after the loss: {sent:?}"));
        }
        // The bridge says so in its log (INFO).
        assert_eq!(
            w.bridge
                .count("presence watchers' dialogs on a lost connection ended locally"),
            1
        );

        // The edge connects again and refreshes in the old dialog: 481.
        w.connect(EDGE_CONN2).await;
        w.send_sip(EDGE_CONN2, refresh(&accepted, 2));
        let r = w.final_response(EDGE_CONN2, old).await;
        assert_eq!(r.status(), Some(481), "{r}");

        // A new SUBSCRIBE (new Call-ID, new From tag): 202, then at once `active` with alice's
        // state now.
        let new = "a04f5e7d1c2b4e8f9a6d3c0b1e2f4a5d";
        w.send_sip(EDGE_CONN2, lync_subscribe(new, "5d0c9e7a11"));
        let again = w.final_response(EDGE_CONN2, new).await;
        assert_eq!(again.status(), Some(202), "{again}");
        assert_eq!(again.header("Expires"), Some("3600"));
        let (conn, n) = w.request("NOTIFY", new).await;
        assert_eq!(conn, EDGE_CONN2);
        let state = n.header("Subscription-State").unwrap();
        assert!(state.starts_with("active;expires="), "{n}");
        assert_eq!(n.header("Content-Type"), Some("application/pidf+xml"));
        let body = String::from_utf8_lossy(n.body()).into_owned();
        assert!(body.contains("<basic>open</basic>"), "{body}");
        assert!(body.contains(">away<"), "{body}");
        w.ok_to(conn, &n);

        // Nothing ever went in the old dialog after the loss; alice was asked once.
        let before = w.marker(EDGE_CONN2, "done").await;
        if let Some(s) = w.seen[lost_at..]
            .iter()
            .find(|s| s.contains(&format!("NOTIFY {old}")))
        {
            w.fail(&format!("a NOTIFY in the old dialog: {s}"));
        }
        let asked = w.stanzas[..before]
            .iter()
            .filter(|s| s.contains("type='subscribe'") && s.contains("to='alice@xmpp.test'"))
            .count();
        assert_eq!(asked, 1, "{:?}", w.stanzas);
    });
}

/// The partner re-homes a live watcher's dialog: its refresh arrives on a second connection
/// while the first, which carries the dialog, is still up. The dialog cannot follow it (the
/// profile's "Connection affinity"), so the refresh gets `481` and the dialog ends; per RFC
/// 6665 §4.1.2.2 the subscriber subscribes anew, here on the second connection, and is served
/// at once there; nothing more goes on the first. An unsubscribe (`Expires: 0`, RFC 6665
/// §4.1.2.3) is taken on whichever connection it comes: `200`.
#[test]
fn a_refresh_on_another_connection_gets_481_and_the_new_subscribe_is_served_there() {
    runtime().block_on(async {
        let mut w = World::start().await;
        w.connect(EDGE_CONN2).await;
        let old = "0d6e2f7a9b3c4d5e8f1a2b3c4d5e6f70";
        w.send_sip(EDGE_CONN, lync_subscribe(old, "1f2e3d4c5b"));
        let accepted = w.final_response(EDGE_CONN, old).await;
        assert_eq!(accepted.status(), Some(202), "{accepted}");
        let (conn, pending) = w.request("NOTIFY", old).await;
        assert_eq!(conn, EDGE_CONN);
        w.ok_to(conn, &pending);
        let joe = Mode::Gateway.jid("joe");
        w.stanza(&["type='subscribe'", "to='alice@xmpp.test'"])
            .await;
        w.send_xmpp(&format!(
            "<presence from='alice@xmpp.test' to='{joe}' type='subscribed'/><presence from='alice@xmpp.test/pc' to='{joe}'><show>dnd</show></presence>"
        ));
        loop {
            let (conn, n) = w.request("NOTIFY", old).await;
            assert_eq!(conn, EDGE_CONN, "{n}");
            w.ok_to(conn, &n);
            if String::from_utf8_lossy(n.body()).contains("busy") {
                break;
            }
        }
        let moved_at = w.seen.len();
        w.send_sip(EDGE_CONN2, refresh(&accepted, 2));
        let r = w.final_response(EDGE_CONN2, old).await;
        assert_eq!(r.status(), Some(481), "{r}");
        let new = "5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b";
        w.send_sip(EDGE_CONN2, lync_subscribe(new, "6a7b8c9d0e"));
        let again = w.final_response(EDGE_CONN2, new).await;
        assert_eq!(again.status(), Some(202), "{again}");
        let (conn, n) = w.request("NOTIFY", new).await;
        assert_eq!(conn, EDGE_CONN2);
        assert!(
            n.header("Subscription-State")
                .unwrap()
                .starts_with("active;expires="),
            "{n}"
        );
        assert!(String::from_utf8_lossy(n.body()).contains("busy"));
        w.ok_to(conn, &n);
        // Alice goes away: joe is told in the new dialog only.
        w.send_xmpp(&format!(
            "<presence from='alice@xmpp.test/pc' to='{joe}'><show>away</show></presence>"
        ));
        let (conn, n) = w.request("NOTIFY", new).await;
        assert_eq!(conn, EDGE_CONN2);
        assert!(String::from_utf8_lossy(n.body()).contains(">away<"));
        w.ok_to(conn, &n);
        // Joe unsubscribes, on the first connection: taken.
        let mut bye = refresh(&again, 2).replace("Expires: 3600", "Expires: 0");
        bye = bye.replace("branch=z9hG4bKrefresh2", "branch=z9hG4bKunsub2");
        w.send_sip(EDGE_CONN, bye);
        let r = w.final_response(EDGE_CONN, new).await;
        assert_eq!(r.status(), Some(200), "{r}");
        assert_eq!(r.header("Expires"), Some("0"));
        w.stanza(&["type='unsubscribe'", "to='alice@xmpp.test'"])
            .await;
        let before = w.marker(EDGE_CONN, "done").await;
        if let Some(s) = w.seen[moved_at..]
            .iter()
            .find(|s| s.contains(&format!("NOTIFY {old}")))
        {
            w.fail(&format!("a NOTIFY in the old dialog: {s}"));
        }
        let asked = w.stanzas[..before]
            .iter()
            .filter(|s| s.contains("type='subscribe'") && s.contains("to='alice@xmpp.test'"))
            .count();
        assert_eq!(asked, 1, "{:?}", w.stanzas);
    });
}
