//! Microsoft conformance: `Require`, Lync's multiparty chat, and presence subscriptions as
//! Lync/SfB and pidgin-sipe send them (docs/microsoft.md, docs/mapping.md), against the
//! real `lcs-bridge run` binary. The test plays both neighbours on the wire
//! (`lcs_test_support::net`): the XMPP server's XEP-0114 component port (it sees every stanza
//! the bridge sends, so "nothing reached XMPP" is checked on the wire), and the partner's
//! mutual-TLS edge `contoso.com`, which dials the bridge's SIP port with a certificate of the
//! bridge's trusted CA and sends byte-realistic messages: the examples of [MS-PRES], and the
//! requests pidgin-sipe (`tieto/sipe`, `src/core/`) builds, as they arrive through a partner's
//! federation edge (its `Via` on top).
//!
//! Each test asserts the exact answer (status, the headers that matter, body) and, where a
//! request is refused, that no stanza came of it: a later request's stanza is awaited as a
//! marker (the bridge handles one connection's requests in order, and sends stanzas in
//! order), and no stanza before it may carry the refused request's text.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use lcs_test_support::net;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use lcs_bridge::sip::message::Message;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use lcs_test_support::e2e::{Bridge, Mode};
use net::{Event, Tls, Writer};

/// The test's connection to the bridge (the bridge's own connections to the partner
/// listener count from 0).
const EDGE_CONN: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(20);

/// The `Warning` of every multiparty refusal: this bridge's edge (`sip.public_fqdn`) as
/// warn-agent (RFC 3261 §20.43).
const MULTIPARTY_WARNING: &str =
    "399 sip.xmpp.test \"multiparty conversations are not supported by this gateway\"";

/// The JID of LCS user `name` (gateway mode, XEP-0106).
fn lcs_jid(name: &str) -> String {
    Mode::Gateway.jid(name)
}

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
    /// What the waits so far did not take, in order.
    backlog: Vec<Event>,
}

impl World {
    /// The bridge, its component stream accepted, the edge connected.
    async fn start() -> World {
        let p = lcs_test_support::e2e::scripted_partner("lcsb-ms-require-", "").await;
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
            backlog: Vec::new(),
        };
        let addr: SocketAddr = format!("127.0.0.1:{}", world.sip_port).parse().unwrap();
        net::connect_sip(
            addr,
            world.tls.connector.clone(),
            EDGE_CONN,
            world.events_tx.clone(),
        )
        .await
        .unwrap();
        world
            .wait(|_, e| matches!(e, Event::SipUp(EDGE_CONN, _)).then_some(()))
            .await;
        world
    }

    /// Panics with what was seen and the end of the bridge's log.
    fn fail(&self, why: &str) -> ! {
        let log = self.bridge.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{why}\n--- stanzas ---\n{}\n--- seen ---\n{}\n--- bridge log (end) ---\n{}",
            self.stanzas.join("\n"),
            self.backlog
                .iter()
                .map(describe)
                .collect::<Vec<_>>()
                .join("\n"),
            tail.join("\n"),
        );
    }

    /// Handles events until `f` picks one (SIP connections are registered, stanzas recorded
    /// on the way).
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
            match &ev {
                Event::SipUp(conn, w) => {
                    self.sip.insert(*conn, w.clone());
                }
                // Attribute quotes made single, whichever the bridge's writer uses.
                Event::Stanza(s, _) => self
                    .stanzas
                    .push(String::from_utf8_lossy(s).replace('"', "'")),
                _ => {}
            }
            if let Some(t) = f(self, &ev) {
                return t;
            }
            self.backlog.push(ev);
        }
    }

    fn send_sip(&self, bytes: impl Into<Vec<u8>>) {
        self.sip[&EDGE_CONN].send(bytes.into()).unwrap();
    }

    fn send_xmpp(&self, xml: &str) {
        self.xmpp.send(xml.as_bytes().to_vec()).unwrap();
    }

    /// The next final response on the edge's connection whose Call-ID is `call_id`.
    async fn final_response(&mut self, call_id: &str) -> Message {
        self.wait(|_, e| match e {
            Event::Sip(EDGE_CONN, m, _)
                if !m.is_request()
                    && m.call_id().ok() == Some(call_id)
                    && m.status().is_some_and(|s| s >= 200) =>
            {
                Some(m.clone())
            }
            _ => None,
        })
        .await
    }

    /// The next request the bridge sends with this method and Call-ID.
    async fn request(&mut self, method: &str, call_id: &str) -> Message {
        self.wait(|_, e| match e {
            Event::Sip(_, m, _)
                if m.method().is_some_and(|x| x.as_str() == method)
                    && m.call_id().ok() == Some(call_id) =>
            {
                Some(m.clone())
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

    /// Sends a page-mode MESSAGE from joe to alice with `text` and waits for its stanza: every
    /// stanza of what the edge sent before it has gone out by then. Returns how many stanzas
    /// came before it.
    async fn marker(&mut self, text: &str) -> usize {
        let call_id = format!("marker-{text}");
        self.send_sip(format!(
            "MESSAGE sip:alice@xmpp.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:joe@contoso.com>;tag=m1\r\nTo: <sip:alice@xmpp.test>\r\nCall-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        ));
        assert_eq!(self.final_response(&call_id).await.status(), Some(200));
        self.stanza(&[&format!("<body>{text}</body>")]).await
    }

    /// Asserts that no stanza before the marker `text` carries `needle` (nor is a message).
    async fn nothing_reached_xmpp(&mut self, text: &str, needle: &str) {
        let before = self.marker(text).await;
        for s in &self.stanzas[..before] {
            if s.contains(needle) || s.starts_with("<message") {
                self.fail(&format!("a stanza came of a refused request: {s}"));
            }
        }
    }

    /// ACK for a non-2xx final response `r` to INVITE `invite` (RFC 3261 §17.1.1.3: the
    /// INVITE's top Via, the response's To).
    fn ack_failure(&self, invite: &str, r: &Message) {
        let invite = Message::parse(invite.as_bytes()).unwrap();
        self.send_sip(format!(
            "ACK {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            invite.request_uri().unwrap(),
            invite.header("Via").unwrap(),
            r.header("From").unwrap(),
            r.header("To").unwrap(),
            r.call_id().unwrap()
        ));
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
        Event::Stanza(s, _) => format!("stanza: {}", String::from_utf8_lossy(s)),
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

/// `text` with `\n` line ends made `\r\n`, and the Content-Length of what follows the blank
/// line filled in for `{len}`.
fn crlf(text: &str) -> String {
    let text = text.replace('\n', "\r\n");
    let body_len = text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
    text.replace("{len}", &body_len.to_string())
}

/// Answers a request of the bridge's with 200 (as the partner's client would).
fn ok_to(w: &World, request: &Message) {
    let r = Message::response_to(request, 200, None, Some("edge"));
    w.send_sip(r.to_bytes());
}

/// The partner's watcher subscribes; the local user approves it over XMPP; the NOTIFY that
/// follows carries PIDF. Returns the 202 and that NOTIFY.
async fn subscribed_and_served(
    w: &mut World,
    subscribe: &str,
    call_id: &str,
) -> (Message, Message) {
    w.send_sip(subscribe.to_owned());
    let accepted = w.final_response(call_id).await;
    // The first NOTIFY: pending until alice decides (RFC 6665 §4.2.1).
    let pending = w.request("NOTIFY", call_id).await;
    assert_eq!(
        pending.header("Subscription-State"),
        Some("pending;expires=3600"),
        "{pending}"
    );
    ok_to(w, &pending);
    // The gateway asks alice (XEP-0100 §4.1.1 style), and she approves.
    let joe = lcs_jid("joe");
    w.stanza(&["type='subscribe'", "to='alice@xmpp.test'"])
        .await;
    w.send_xmpp(&format!(
        "<presence from='alice@xmpp.test' to='{joe}' type='subscribed'/><presence from='alice@xmpp.test/pc' to='{joe}'><show>dnd</show></presence>"
    ));
    let active = loop {
        let n = w.request("NOTIFY", call_id).await;
        ok_to(w, &n);
        if n.header("Subscription-State")
            .is_some_and(|s| s.starts_with("active"))
            && !n.body().is_empty()
        {
            break n;
        }
    };
    (accepted, active)
}

// ------------------------------------------------------------------ presence (notifier)

/// [MS-PRES] §4.11 "MSRTC SUBSCRIBE": a federated Lync (LCC/1.3) watcher's SUBSCRIBE, PIDF
/// last in `Accept` after `application/xpidf+xml` and `text/xml+msrtc.pidf`, `Supported:
/// ms-benotify` and `ms-piggyback-first-notify`, `Proxy-Require: ms-benotify`, no `Expires`
/// (the example's addresses made contoso.com's joe and the bridge's alice; the partner edge's
/// Via on top of the client's, as federation delivers it). [MS-PRES] §1.3.3 lets the server
/// pick any listed format; the bridge serves PIDF. [MS-SIP] §3.4.5.1, §3.5.5.2: the answer
/// promises neither the piggybacked first NOTIFY nor BENOTIFY, and the state comes in NOTIFY.
#[test]
fn ms_pres_4_11_subscribe_is_accepted_and_served_pidf() {
    runtime().block_on(async {
        let mut w = World::start().await;
        let subscribe = crlf(
            "SUBSCRIBE sip:alice@xmpp.test SIP/2.0
Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK9C8D.2A0B1C4E;branched=FALSE;ms-received-port=5061;ms-received-cid=4C00
Via: SIP/2.0/TLS 10.46.164.196:1620;branch=z9hG4bK38209ebf;ms-received-port=1620;ms-received-cid=1A00
Max-Forwards: 69
From: \"Joe\" <sip:joe@contoso.com>;tag=38209ebf3e;epid=d6277c8671
To: <sip:alice@xmpp.test>
Call-ID: 23ffb7f278764277871ff5b4ba90ae11
CSeq: 1 SUBSCRIBE
Contact: <sip:joe@contoso.com:1620;maddr=10.46.164.196;transport=tls>;proxy=replace
User-Agent: LCC/1.3
Event: presence
Accept: application/xpidf+xml, text/xml+msrtc.pidf, application/pidf+xml
Supported: ms-benotify
Proxy-Require: ms-benotify
Supported: ms-piggyback-first-notify
Content-Length: 0

",
        );
        let call_id = "23ffb7f278764277871ff5b4ba90ae11";
        let (r, notify) = subscribed_and_served(&mut w, &subscribe, call_id).await;
        assert_eq!(r.status(), Some(202), "{r}");
        assert_eq!(r.header("Expires"), Some("3600"), "no Expires: the default");
        assert_eq!(r.header("Supported"), None, "nothing unimplemented advertised");
        assert_eq!(r.header("Require"), None);
        assert_eq!(notify.header("Event"), Some("presence"));
        assert_eq!(notify.header("Content-Type"), Some("application/pidf+xml"));
        let body = String::from_utf8_lossy(notify.body()).into_owned();
        assert!(body.contains("urn:ietf:params:xml:ns:pidf"), "{body}");
        assert!(body.contains("entity=\"sip:alice@xmpp.test\""), "{body}");
    });
}

/// pidgin-sipe's single-resource category subscription (`sipe-subscriptions.c`
/// `sipe_subscribe_presence_single` with a contact as `to`, OCS 2007 mode): no `Require`, an
/// `application/msrtc-adrl-categorylist+xml` body naming the one contact, `Accept` with PIDF
/// fourth, `Supported: ms-piggyback-first-notify`, `Supported: ms-benotify`, `Proxy-Require:
/// ms-benotify`, no `Expires` (headers in `sip_transport_request`'s order). The body is
/// ignored (the subscription is to the To user) and the answer is PIDF.
#[test]
fn pidgin_sipe_single_resource_subscribe_is_accepted_and_served_pidf() {
    runtime().block_on(async {
        let mut w = World::start().await;
        let subscribe = crlf(
            "SUBSCRIBE sip:alice@xmpp.test SIP/2.0
Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK7E1F.0C2D3E4F;branched=FALSE;ms-received-port=5061;ms-received-cid=4D00
Via: SIP/2.0/TLS 192.0.2.10:49714;branch=z9hG4bK5F6A7B8C;ms-received-port=49714;ms-received-cid=1B00
From: <sip:joe@contoso.com>;tag=5a8c9e4d1f;epid=0a1b2c3d4e
To: <sip:alice@xmpp.test>
Max-Forwards: 69
CSeq: 1 SUBSCRIBE
User-Agent: Purple/2.14.12 Sipe/1.25.0 (linux-x86_64; Pidgin)
Call-ID: 6e1c9b0a7d3f4e2a
Accept: application/msrtc-event-categories+xml, text/xml+msrtc.pidf, application/xpidf+xml, application/pidf+xml, application/rlmi+xml, multipart/related
Supported: ms-piggyback-first-notify
Content-Type: application/msrtc-adrl-categorylist+xml
Supported: ms-benotify
Proxy-Require: ms-benotify
Event: presence
Contact: <sip:joe@192.0.2.10:49714;transport=tls;ms-opaque=0f1e2d3c4b>;proxy=replace;+sip.instance=\"<urn:uuid:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0>\"
Content-Length: {len}

<batchSub xmlns=\"http://schemas.microsoft.com/2006/01/sip/batch-subscribe\" uri=\"sip:joe@contoso.com\" name=\"\">
<action name=\"subscribe\" id=\"63792024\"><adhocList>
<resource uri=\"sip:alice@xmpp.test\"/>
</adhocList>
<categoryList xmlns=\"http://schemas.microsoft.com/2006/09/sip/categorylist\">
<category name=\"calendarData\"/>
<category name=\"contactCard\"/>
<category name=\"note\"/>
<category name=\"state\"/>
</categoryList>
</action>
</batchSub>",
        );
        let (r, notify) = subscribed_and_served(&mut w, &subscribe, "6e1c9b0a7d3f4e2a").await;
        assert_eq!(r.status(), Some(202), "{r}");
        assert_eq!(r.header("Expires"), Some("3600"));
        assert_eq!(r.header("Supported"), None);
        assert_eq!(notify.header("Content-Type"), Some("application/pidf+xml"));
        let body = String::from_utf8_lossy(notify.body()).into_owned();
        assert!(body.contains("entity=\"sip:alice@xmpp.test\""), "{body}");
    });
}

/// A watcher that can read only `application/xpidf+xml` (Accept without PIDF, e.g. a Windows
/// Messenger-era client, [MS-PRES] §1.3.3's formats minus PIDF): RFC 6665 §3.1.3 / RFC 3261
/// §21.4.7, `406 Not Acceptable` whose `Accept` says what the bridge can send; the same for
/// PIDF at `q=0` and for an empty `Accept`; nothing is stored, nothing asks the local user. Lync's batched self-subscription (`Require: adhoclist,
/// categoryList`, [MS-PRES] §2.2.2.4.1) gets `420` naming both tags.
#[test]
fn an_xpidf_only_subscribe_gets_406_and_a_batched_one_420() {
    runtime().block_on(async {
        let mut w = World::start().await;
        let subscribe = crlf(
            "SUBSCRIBE sip:alice@xmpp.test SIP/2.0
Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKx1;branched=FALSE
Max-Forwards: 69
From: \"Joe\" <sip:joe@contoso.com>;tag=aa01;epid=d6277c8671
To: <sip:alice@xmpp.test>
Call-ID: xpidf-only-1
CSeq: 1 SUBSCRIBE
Contact: <sip:joe@contoso.com:1620;maddr=10.46.164.196;transport=tls>;proxy=replace
User-Agent: RTC/1.3
Event: presence
Accept: application/xpidf+xml
Supported: ms-benotify
Proxy-Require: ms-benotify
Content-Length: 0

",
        );
        w.send_sip(subscribe.clone());
        let r = w.final_response("xpidf-only-1").await;
        assert_eq!((r.status(), r.reason()), (Some(406), Some("Not Acceptable")));
        assert_eq!(r.header("Accept"), Some("application/pidf+xml"));
        // PIDF listed but at q=0 (RFC 7231 §5.3.1: "not acceptable"), and an Accept present but
        // empty (RFC 3261 §20.1: no format is acceptable): 406 too.
        for (i, accept) in [
            "Accept: application/xpidf+xml, application/pidf+xml;q=0",
            "Accept: ",
        ]
        .iter()
        .enumerate()
        {
            let call_id = format!("xpidf-only-q{i}");
            w.send_sip(
                subscribe
                    .replace("Accept: application/xpidf+xml", accept)
                    .replace("xpidf-only-1", &call_id)
                    .replace("z9hG4bKx1", &format!("z9hG4bKq{i}")),
            );
            let r = w.final_response(&call_id).await;
            assert_eq!(r.status(), Some(406), "{accept:?}");
            assert_eq!(r.header("Accept"), Some("application/pidf+xml"));
        }
        // [MS-PRES] §2.2.2.4.1 "Category Subscribe Request" (sent to the subscriber's own
        // server; here as if it reached the bridge, addressed to alice).
        let batch = crlf(
            "SUBSCRIBE sip:alice@xmpp.test SIP/2.0
Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKx2;branched=FALSE
Max-Forwards: 69
From: <sip:joe@contoso.com>;tag=26aef0a2a4;epid=84d3db8c23
To: <sip:alice@xmpp.test>
Call-ID: batch-1
CSeq: 1 SUBSCRIBE
Contact: <sip:joe@contoso.com:1620;maddr=10.46.164.196;transport=tls>;proxy=replace
Event: presence
Accept: application/msrtc-event-categories+xml, application/rlmi+xml, multipart/related
Supported: ms-benotify
Proxy-Require: ms-benotify
Supported: ms-piggyback-first-notify
Require: adhoclist, categoryList
Supported: eventlist
Content-Type: application/msrtc-adrl-categorylist+xml
Content-Length: {len}

<batchSub xmlns=\"http://schemas.microsoft.com/2006/01/sip/batch-subscribe\" uri=\"sip:joe@contoso.com\" name=\"\"><action name=\"subscribe\" id=\"63792024\"><adhocList><resource uri=\"sip:alice@xmpp.test\"/></adhocList><categoryList xmlns=\"http://schemas.microsoft.com/2006/09/sip/categorylist\"><category name=\"state\"/></categoryList></action></batchSub>",
        );
        w.send_sip(batch);
        let r = w.final_response("batch-1").await;
        assert_eq!((r.status(), r.reason()), (Some(420), Some("Bad Extension")));
        assert_eq!(r.header("Unsupported"), Some("adhoclist, categoryList"));
        w.nothing_reached_xmpp("after-406", "type='subscribe'").await;
    });
}

// ------------------------------------------------------------------ multiparty IM

/// pidgin-sipe's multiparty INVITE (`sipe-im.c` `sipe_im_invite` for a chat whose roster
/// manager is the sender: `Supported: ms-sender`, `Roster-Manager`, `EndPoints` of the three
/// parties, `Require: com.microsoft.rtc-multiparty`, `ms-text-format` with the first message,
/// `Ms-Conversation-ID`, an OCS 2007 `m=message` SDP). RFC 3261 §8.2.2.3: `420 Bad Extension`
/// with `Unsupported: com.microsoft.rtc-multiparty`, after `100 Trying`; the first message
/// reaches no XMPP user.
#[test]
fn a_multiparty_invite_requiring_rtc_multiparty_gets_420() {
    runtime().block_on(async {
        let mut w = World::start().await;
        let invite = crlf(
            "INVITE sip:alice@xmpp.test SIP/2.0
Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK2F3A.4B5C6D7E;branched=FALSE;ms-received-port=5061;ms-received-cid=4E00
Via: SIP/2.0/TLS 192.0.2.10:49714;branch=z9hG4bK0D1E2F3A;ms-received-port=49714;ms-received-cid=1B00
From: <sip:joe@contoso.com>;tag=9b8a7c6d5e;epid=0a1b2c3d4e
To: <sip:alice@xmpp.test>
Max-Forwards: 69
CSeq: 1 INVITE
User-Agent: Purple/2.14.12 Sipe/1.25.0 (linux-x86_64; Pidgin)
Call-ID: 8f9e0d1c2b3a4f5e
Supported: ms-sender
Roster-Manager: sip:joe@contoso.com
EndPoints: <sip:joe@contoso.com>, <sip:carol@contoso.com>;epid=5e6f7a8b9c, <sip:alice@xmpp.test>
Require: com.microsoft.rtc-multiparty
Contact: <sip:joe@192.0.2.10:49714;transport=tls;ms-opaque=0f1e2d3c4b>;proxy=replace
ms-text-format: text/plain; charset=UTF-8;msgr=WAAtAE0ATQBTAC0ASQBNAC0ARgBvAHIAbQBhAHQAOgAgAEYATgA9AE0AUwAlADIAMABTAGgAZQBsAGwAJQAyADAARABsAGcAJQAyADAAMgA7ACAARQBGAD0AOwAgAEMATwA9ADAAOwAgAEMAUwA9ADAAOwAgAFAARgA9ADAADQAKAA0ACgANAAoA;ms-body=bXVsdGlwYXJ0eSBoZWxsbw==
Ms-Conversation-ID: 482716359
Content-Type: application/sdp
Content-Length: {len}

v=0
o=- 0 0 IN IP4 192.0.2.10
s=session
c=IN IP4 192.0.2.10
t=0 0
m=message 49714 sip null
a=accept-types:text/plain text/html image/gif multipart/related application/im-iscomposing+xml application/ms-imdn+xml text/x-msmsgsinvite
",
        );
        w.send_sip(invite.clone());
        let r = w.final_response("8f9e0d1c2b3a4f5e").await;
        assert_eq!((r.status(), r.reason()), (Some(420), Some("Bad Extension")));
        assert_eq!(r.header("Unsupported"), Some("com.microsoft.rtc-multiparty"));
        assert_eq!(r.header("Supported"), None);
        assert!(r.to().unwrap().tag().is_some());
        w.ack_failure(&invite, &r);
        // ms-body is "multiparty hello".
        w.nothing_reached_xmpp("after-420", "multiparty hello").await;
    });
}

/// A multiparty INVITE without `Require`: `EndPoints` naming three parties (pidgin-sipe
/// `sipe-incoming.c` `process_incoming_invite` takes more than two EndPoints as multiparty),
/// in a Lync 2013 INVITE's shape (`tests/golden/sip/lcs_invite_im.sip`). `488 Not Acceptable
/// Here` with `Warning: 399 <edge> "multiparty conversations are not supported by this
/// gateway"` (RFC 3261 §20.43); the first message (`ms-text-format`, "Hello from Lync!")
/// reaches no XMPP user.
#[test]
fn a_three_party_invite_without_require_gets_488_with_a_warning() {
    runtime().block_on(async {
        let mut w = World::start().await;
        let invite = lync_invite(
            "3c2b1a0f9e8d7c6b",
            "EndPoints: <sip:joe@contoso.com>, <sip:alice@xmpp.test>, <sip:carol@contoso.com>;epid=5e6f7a8b9c\n",
        );
        w.send_sip(invite.clone());
        let r = w.final_response("3c2b1a0f9e8d7c6b").await;
        assert_eq!(
            (r.status(), r.reason()),
            (Some(488), Some("Not Acceptable Here"))
        );
        assert_eq!(r.header("Warning"), Some(MULTIPARTY_WARNING));
        assert_eq!(r.header("Supported"), None);
        assert!(r.body().is_empty());
        w.ack_failure(&invite, &r);
        w.nothing_reached_xmpp("after-488", "Hello from Lync!").await;
    });
}

/// A Lync 2013 INVITE to alice (`tests/golden/sip/lcs_invite_im.sip`, the partner edge's
/// Via on top), Call-ID `call_id`, with `extra` header lines (`\n`-ended) before
/// `ms-text-format` ("Hello from Lync!").
fn lync_invite(call_id: &str, extra: &str) -> String {
    crlf(&format!(
        "INVITE sip:alice@xmpp.test SIP/2.0
Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKA1B2C3D4.{call_id};branched=FALSE;ms-received-port=5061;ms-received-cid=2B00
Via: SIP/2.0/TLS 10.0.0.21:51244;branch=z9hG4bK5c2a;ms-received-port=51244;ms-received-cid=1E00
Max-Forwards: 68
Content-Length: {{len}}
From: \"Joe at Contoso\" <sip:joe@contoso.com>;tag=c8f1e2d3a4;epid=ab12cd34ef
To: <sip:alice@xmpp.test>
Call-ID: {call_id}
CSeq: 1 INVITE
Contact: <sip:joe@contoso.com;opaque=user:epid:AbCdEf0123456789;gruu>;+sip.instance=\"<urn:uuid:2c1d0e4f-5a6b-7c8d-9e0f-a1b2c3d4e5f6>\";proxy=replace
User-Agent: UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)
Supported: ms-dialog-route-set-update
Ms-Conversation-ID: AdHxZ3+0m1o2p3q4r5s6t7u8v9w0x==
{extra}ms-text-format: text/plain; charset=UTF-8;msgr=WAAtAE0ATQBTAC0ASQBNAC0ARgBvAHIAbQBhAHQAOgAgAEYATgA9AFMAZQBnAG8AZQAlADIAMABVAEkAOwAgAEUARgA9ADsAIABDAE8APQAwADsAIABDAFMAPQAwADsAIABQAEYAPQAwAA0ACgANAAoADQA;ms-body=SGVsbG8gZnJvbSBMeW5jIQ==
Supported: timer
Supported: histinfo
Supported: ms-safe-transfer
Supported: ms-sender
Supported: ms-early-media
Supported: ms-conf-invite
Ms-Keep-Alive: UAC;hop-hop=yes
Allow: INVITE, BYE, ACK, CANCEL, INFO, UPDATE, REFER, NOTIFY, BENOTIFY, OPTIONS
ms-subnet: 10.0.0.0
Content-Type: application/sdp

v=0
o=- 0 0 IN IP4 10.0.0.99
s=session
c=IN IP4 10.0.0.99
t=0 0
m=message 5060 sip null
a=accept-types:text/plain multipart/alternative image/gif text/rtf text/html application/x-ms-ink application/ms-imdn+xml text/x-msmsgsinvite
"
    ))
}

/// Opens a one-to-one Lync session with alice (Call-ID `call_id`): the 200 (then ACKed) and
/// the first message's stanza. Returns the 200.
async fn live_session(w: &mut World, call_id: &str) -> Message {
    let invite = lync_invite(
        call_id,
        "EndPoints: <sip:joe@contoso.com>, <sip:alice@xmpp.test>\n",
    );
    w.send_sip(invite);
    let ok = w.final_response(call_id).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    // Never advertised, whatever the peer supports.
    let supported: Vec<&str> = ok.supported().collect();
    assert!(
        !supported
            .iter()
            .any(|t| t.eq_ignore_ascii_case("com.microsoft.rtc-multiparty")
                || t.eq_ignore_ascii_case("ms-conf-invite")),
        "{ok}"
    );
    w.send_sip(in_dialog(&ok, "ACK", 1, "", ""));
    w.stanza(&["<body>Hello from Lync!</body>"]).await;
    ok
}

/// A request of `method` in the session `ok` (the bridge's 200 to the INVITE), CSeq `cseq`,
/// with `extra` header lines (`\r\n`-ended) and `body`.
fn in_dialog(ok: &Message, method: &str, cseq: u32, extra: &str, body: &str) -> String {
    let contact = ok.header("Contact").unwrap();
    let target = contact
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map_or(contact, |(uri, _)| uri);
    format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{method}{cseq}.7c6b;branched=FALSE\r\nMax-Forwards: 69\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nUser-Agent: UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        ok.header("From").unwrap(),
        ok.header("To").unwrap(),
        ok.call_id().unwrap(),
        body.len()
    )
}

/// The roster-manager election of a chat (pidgin-sipe `sipe-chat.c`
/// `sipe_send_election_request_rm`: INFO, `Content-Type: application/x-ms-mim`, `<RequestRM
/// uri=… bid=…/>`) inside a live one-to-one session: `415 Unsupported Media Type` with `Accept`
/// listing what INFO takes here and the multiparty `Warning` (sipe counts no vote and decides
/// when its 15 s election timer fires); the session goes on: a MESSAGE after it is answered 200
/// and delivered.
#[test]
fn an_x_ms_mim_info_in_a_live_session_gets_415_and_the_session_goes_on() {
    runtime().block_on(async {
        let mut w = World::start().await;
        let call_id = "5d4c3b2a19087f6e";
        let ok = live_session(&mut w, call_id).await;
        let mim = "<?xml version=\"1.0\"?>\r\n<action xmlns=\"http://schemas.microsoft.com/sip/multiparty/\"><RequestRM uri=\"sip:joe@contoso.com\" bid=\"1804289383\"/></action>\r\n";
        w.send_sip(in_dialog(
            &ok,
            "INFO",
            2,
            "Content-Type: application/x-ms-mim\r\n",
            mim,
        ));
        let r = w.final_response(call_id).await;
        assert_eq!(
            (r.status(), r.reason()),
            (
                Some(415),
                Some("Unsupported Media Type application/x-ms-mim")
            )
        );
        assert_eq!(r.header("Accept"), Some("application/xml, text/xml"));
        assert_eq!(r.header("Warning"), Some(MULTIPARTY_WARNING));
        assert!(r.body().is_empty(), "no RequestRMResponse: no vote");
        w.send_sip(in_dialog(
            &ok,
            "MESSAGE",
            3,
            "Content-Type: text/plain; charset=UTF-8\r\n",
            "still one to one",
        ));
        let r = w.final_response(call_id).await;
        assert_eq!(r.status(), Some(200), "{r}");
        let i = w.stanza(&["<body>still one to one</body>"]).await;
        let s = &w.stanzas[i];
        assert!(s.contains(&format!("<thread>{call_id}</thread>")), "{s}");
    });
}

/// Adding a third person to a conversation: REFER with `Refer-to` and `Referred-By`
/// (pidgin-sipe `sipe-chat.c` `sipe_refer`). Without `Require` it gets `501 Not Implemented`
/// with `Allow` (RFC 3261 §21.5.2; REFER is not among the methods); with sipe's `Require:
/// com.microsoft.rtc-multiparty` `420` naming the tag. The session goes on.
#[test]
fn refer_gets_501_with_allow_or_420_when_it_requires_multiparty() {
    runtime().block_on(async {
        let mut w = World::start().await;
        let call_id = "0e1d2c3b4a596877";
        let ok = live_session(&mut w, call_id).await;
        let refer = "Contact: <sip:joe@192.0.2.10:49714;transport=tls;ms-opaque=0f1e2d3c4b>\r\nRefer-to: <sip:carol@contoso.com>\r\nReferred-By: <sip:joe@contoso.com>;tag=c8f1e2d3a4;epid=ab12cd34ef\r\n";
        w.send_sip(in_dialog(&ok, "REFER", 2, refer, ""));
        let r = w.final_response(call_id).await;
        assert_eq!(r.status(), Some(501), "{r}");
        assert_eq!(
            r.header("Allow"),
            Some("INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, INFO, SUBSCRIBE, NOTIFY, BENOTIFY")
        );
        let required = format!("{refer}Require: com.microsoft.rtc-multiparty\r\n");
        w.send_sip(in_dialog(&ok, "REFER", 3, &required, ""));
        let r = w.final_response(call_id).await;
        assert_eq!(r.status(), Some(420), "{r}");
        assert_eq!(r.header("Unsupported"), Some("com.microsoft.rtc-multiparty"));
        w.send_sip(in_dialog(
            &ok,
            "MESSAGE",
            4,
            "Content-Type: text/plain; charset=UTF-8\r\n",
            "after the refer",
        ));
        assert_eq!(w.final_response(call_id).await.status(), Some(200));
        w.stanza(&["<body>after the refer</body>"]).await;
    });
}
