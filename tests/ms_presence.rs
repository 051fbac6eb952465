//! Microsoft enhanced presence against the real `lcs-bridge run` binary (docs/microsoft.md
//! "Enhanced presence from Microsoft peers", docs/mapping.md "Microsoft enhanced presence").
//! The test plays the XMPP server's component port (`lcs_test_support::net`, no XMPP server
//! needed) and the partners' mutual-TLS edges: `contoso.com` answers as a Lync/Skype for
//! Business edge in `application/msrtc-event-categories+xml`, `fabrikam.com` refuses the
//! enhanced SUBSCRIBE, `litware.com` knows only PIDF. Alice (`alice@xmpp.test`) subscribes to
//! their users; the test answers the bridge's SUBSCRIBEs, sends NOTIFYs and checks the exact
//! SUBSCRIBE and the exact `<presence/>` stanzas the bridge sends to the XMPP server.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use lcs_test_support::{net, pki};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lcs_bridge::sip::message::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;

use lcs_test_support::config::BridgeConfig;
use lcs_test_support::e2e::{Bridge, Mode};
use lcs_test_support::{GATEWAY_COMPONENT, XMPP_DOMAIN, free_port};
use net::{Event, Tls, Writer};
use pki::{Pki, write_bridge_files};

const SECRET: &str = "s3cret";
const WAIT: Duration = Duration::from_secs(20);
const ALICE: &str = "alice@xmpp.test";
const ENHANCED_ACCEPT: &str =
    "application/msrtc-event-categories+xml, text/xml+msrtc.pidf, application/pidf+xml";

/// The JID of LCS user `user@domain` (gateway mode, XEP-0106).
fn jid(user: &str, domain: &str) -> String {
    format!("{user}\\40{domain}@{GATEWAY_COMPONENT}")
}

struct World {
    _dir: tempfile::TempDir,
    bridge: Bridge,
    events: UnboundedReceiver<Event>,
    xmpp: Writer,
    sip: HashMap<usize, Writer>,
    backlog: Vec<Event>,
}

impl World {
    /// The bridge with three partners, all at the test's one edge listener.
    async fn start() -> World {
        let dir = tempfile::Builder::new()
            .prefix("lcsb-ms-presence-")
            .tempdir()
            .unwrap();
        let pki = Pki::new("MS presence test CA");
        write_bridge_files(
            dir.path(),
            &pki,
            &["sip.xmpp.test", XMPP_DOMAIN, "127.0.0.1"],
        );
        let edge_leaf = pki.leaf(
            &[
                "sip.contoso.com",
                "contoso.com",
                "fabrikam.com",
                "litware.com",
                "127.0.0.1",
            ],
            false,
        );
        let tls = Tls::new(&edge_leaf, &pki.ca);
        let (port, events_tx, events) = net::sip_partner(tls.acceptor.clone()).await;
        let component = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sip_port = free_port();
        let federation = ["contoso.com", "fabrikam.com", "litware.com"]
            .iter()
            .map(|d| BridgeConfig::partner(d, port))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("default_policy = \"deny\"\n\n", "");
        let toml = BridgeConfig {
            secret: SECRET,
            federation: format!("default_policy = \"deny\"\n\n{federation}"),
            log_level: "info,lcs_bridge=debug",
            ..BridgeConfig::new(
                dir.path(),
                Mode::Gateway,
                component.local_addr().unwrap().port(),
                sip_port,
                port,
            )
        }
        .toml();
        let config = dir.path().join("lcs-bridge.toml");
        std::fs::write(&config, toml).unwrap();
        let mut bridge = Bridge::start(&config, &dir.path().join("bridge.log"), sip_port);
        let accept = net::accept_component(&component, GATEWAY_COMPONENT, SECRET, 1, events_tx);
        let xmpp = match tokio::time::timeout(WAIT, accept).await {
            Ok(Ok(w)) => w,
            other => panic!(
                "no component stream ({:?}); bridge log:\n{}",
                other.err(),
                bridge.log()
            ),
        };
        let deadline = Instant::now() + WAIT;
        tokio::task::block_in_place(|| bridge.wait_started(deadline));
        World {
            _dir: dir,
            bridge,
            events,
            xmpp,
            sip: HashMap::new(),
            backlog: Vec::new(),
        }
    }

    fn fail(&self, why: &str) -> ! {
        let log = self.bridge.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{why}\n--- bridge log (end) ---\n{}", tail.join("\n"));
    }

    /// Handles events until `f` picks one (SIP connections are registered on the way); what
    /// it does not pick is kept for later waits.
    async fn wait<T>(&mut self, mut f: impl FnMut(&Event) -> Option<T>) -> T {
        for i in 0..self.backlog.len() {
            if let Some(t) = f(&self.backlog[i]) {
                self.backlog.remove(i);
                return t;
            }
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ev = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => ev,
                _ => self.fail("nothing awaited came in time"),
            };
            if let Event::SipUp(conn, w) = &ev {
                self.sip.insert(*conn, w.clone());
            }
            if let Some(t) = f(&ev) {
                return t;
            }
            self.backlog.push(ev);
        }
    }

    /// Alice asks to see `user@domain`'s presence.
    fn subscribe(&self, user: &str, domain: &str) {
        let stanza = format!(
            "<presence from='{ALICE}' to='{}' type='subscribe' id='s-{user}'/>",
            jid(user, domain)
        );
        self.xmpp.send(stanza.into_bytes()).unwrap();
    }

    /// The next SUBSCRIBE the bridge sends to `aor`.
    async fn subscribe_request(&mut self, aor: &str) -> (usize, Message) {
        let aor = aor.to_owned();
        self.wait(move |e| match e {
            Event::Sip(conn, m, _)
                if m.method().is_some_and(|x| x.as_str() == "SUBSCRIBE")
                    && m.request_uri() == Some(aor.as_str()) =>
            {
                Some((*conn, m.clone()))
            }
            _ => None,
        })
        .await
    }

    /// Answers `request` on `conn` with the edge's To tag and Contact, plus `extra` headers.
    fn answer(&self, conn: usize, request: &Message, status: u16, extra: &[(&str, &str)]) {
        let mut r = Message::response_to(request, status, None, Some("edge"));
        r.push_header("Contact", "<sip:peer@127.0.0.1;transport=tls>");
        for (name, value) in extra {
            r.push_header(name, value);
        }
        self.sip[&conn].send(r.to_bytes()).unwrap();
    }

    /// A NOTIFY (or BENOTIFY) in the dialog of `sub` (answered 2xx) with a body of type `ct`.
    fn notify_request(method: &str, sub: &Message, cseq: u32, ct: &str, body: &str) -> Vec<u8> {
        let call_id = sub.call_id().unwrap();
        format!(
            "{method} sip:alice@sip.xmpp.test;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKn{cseq}{}\r\nMax-Forwards: 70\r\nFrom: {};tag=edge\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:peer@127.0.0.1;transport=tls>\r\nEvent: presence\r\nSubscription-State: active;expires=3600\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
            call_id.len(),
            sub.header("To").unwrap(),
            sub.header("From").unwrap(),
            body.len()
        )
        .into_bytes()
    }

    /// A BENOTIFY ([MS-SIP] §3.5: never answered) in the dialog of `sub`.
    fn benotify(&self, conn: usize, sub: &Message, cseq: u32, ct: &str, body: &str) {
        let raw = Self::notify_request("BENOTIFY", sub, cseq, ct, body);
        self.sip[&conn].send(raw).unwrap();
    }

    /// Sends a NOTIFY in the dialog of `sub` (answered 2xx) with a body of type `ct`, and
    /// waits for the bridge's 200.
    async fn notify(&mut self, conn: usize, sub: &Message, cseq: u32, ct: &str, body: &str) {
        let call_id = sub.call_id().unwrap().to_owned();
        let raw = Self::notify_request("NOTIFY", sub, cseq, ct, body);
        self.sip[&conn].send(raw).unwrap();
        let status = self
            .wait(|e| match e {
                Event::Sip(c, m, _)
                    if *c == conn
                        && !m.is_request()
                        && m.call_id().ok() == Some(call_id.as_str())
                        && m.cseq().is_ok_and(|s| s.number == cseq) =>
                {
                    m.status()
                }
                _ => None,
            })
            .await;
        assert_eq!(status, 200);
    }

    /// The next stanza from `from` to alice whose text contains `needle`.
    async fn stanza(&mut self, from: &str, needle: &str) -> String {
        let from = format!("from='{from}'");
        self.wait(|e| match e {
            Event::Stanza(s, _) => {
                let s = String::from_utf8_lossy(s).into_owned();
                (s.contains(&from) && s.contains(needle)).then_some(s)
            }
            _ => None,
        })
        .await
    }

    /// The next `<presence/>` (not a subscription stanza) from `from`.
    async fn presence(&mut self, from: &str) -> String {
        let from = format!("from='{from}'");
        self.wait(|e| match e {
            Event::Stanza(s, _) => {
                let s = String::from_utf8_lossy(s).into_owned();
                let subscription = ["'subscribe'", "'subscribed'", "'unsubscribed'", "'error'"]
                    .iter()
                    .any(|t| s.contains(t));
                (s.starts_with("<presence") && s.contains(&from) && !subscription).then_some(s)
            }
            _ => None,
        })
        .await
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The part of a presence stanza after its opening tag's attributes, for exact comparison
/// (attribute order is the serialiser's).
fn inner(stanza: &str) -> &str {
    let end = stanza.find('>').unwrap();
    &stanza[end..]
}

/// A `<categories>` document of `uri` ([MS-PRES] §4.4.3's form: the contact's NOTIFY has the
/// same root with `uri` = the contact).
fn categories(uri: &str, inner: &str) -> String {
    format!(
        r#"<categories xmlns="http://schemas.microsoft.com/2006/09/sip/categories" uri="{uri}">{inner}</categories>"#
    )
}

/// A `state` category (Lync schema "state element": `<availability>` and `<activity>`).
fn state(second: u32, availability: u32, activity: &str) -> String {
    format!(
        r#"<category name="state" instance="0" publishTime="2026-03-01T10:00:{second:02}.000" container="100" version="{second}" expireType="user"><state xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="aggregateState" xmlns="http://schemas.microsoft.com/2006/09/sip/state"><availability>{availability}</availability>{activity}</state></category>"#
    )
}

/// A `note` category (Lync schema "note/body element": `personal` or `OOF`).
fn note(second: u32, kind: &str, text: &str) -> String {
    format!(
        r#"<category name="note" instance="0" publishTime="2026-03-01T10:00:{second:02}.000" container="100" version="{second}" expireType="static"><note xmlns="http://schemas.microsoft.com/2006/09/sip/note"><body type="{kind}" uri="">{text}</body></note></category>"#
    )
}

const CATEGORIES: &str = "application/msrtc-event-categories+xml";
const PIDF: &str = "application/pidf+xml";

/// The Lync edge: the bridge subscribes as pidgin-sipe's single-contact subscription does
/// (`sipe-subscriptions.c`, `sipe_subscribe_presence_single`: Accept with
/// `application/msrtc-event-categories+xml` first, an `application/msrtc-adrl-categorylist+xml`
/// body naming the contact and its categories, no `Require` for a subscription addressed to the
/// contact) and the edge answers in categories ([MS-PRES] §1.3.3: the first type of `Accept`
/// it supports). Lync's availability ranges and activity tokens (Lync schema "state
/// element"; pidgin-sipe `sipe-status.c` for `on-the-phone`), the `<custom>` text
/// (`sipe-notify.c`: it overrides the token's text), personal and OOF notes (Lync schema
/// "note/body element") and an offline number reach alice as show and status; a BENOTIFY
/// ([MS-SIP] §3.5, the notification a Microsoft server sends once `ms-benotify` is
/// negotiated) counts like a NOTIFY and is never answered.
#[test]
fn a_lync_edge_answering_in_categories_is_shown_as_lync_shows_it() {
    runtime().block_on(async {
        let mut w = World::start().await;
        let bob = jid("bob", "contoso.com");
        w.subscribe("bob", "contoso.com");
        let (conn, sub) = w.subscribe_request("sip:bob@contoso.com").await;
        assert_eq!(sub.header("Accept"), Some(ENHANCED_ACCEPT), "{sub}");
        assert_eq!(
            sub.header("Content-Type"),
            Some("application/msrtc-adrl-categorylist+xml")
        );
        assert_eq!(sub.header("Require"), None);
        assert_eq!(sub.header("Event"), Some("presence"));
        assert_eq!(
            String::from_utf8_lossy(sub.body()),
            "<batchSub xmlns=\"http://schemas.microsoft.com/2006/01/sip/batch-subscribe\" uri=\"sip:alice@xmpp.test\" name=\"\"><action name=\"subscribe\" id=\"1\"><adhocList><resource uri=\"sip:bob@contoso.com\"/></adhocList><categoryList xmlns=\"http://schemas.microsoft.com/2006/09/sip/categorylist\"><category name=\"state\"/><category name=\"note\"/><category name=\"contactCard\"/></categoryList></action></batchSub>"
        );
        w.answer(conn, &sub, 200, &[("Expires", "3600")]);

        // Busy (6000–7499) in a call, with the contact card's name.
        let card = r#"<category name="contactCard" instance="0" publishTime="2026-03-01T09:00:00.000" container="100" version="1" expireType="static"><contactCard xmlns="http://schemas.microsoft.com/2006/09/sip/contactcard"><identity><name><displayName>Bob Lync</displayName></name></identity></contactCard></category>"#;
        let doc = categories(
            "sip:bob@contoso.com",
            &format!("{}{card}", state(1, 6500, r#"<activity token="on-the-phone" minAvailability="6000" maxAvailability="7499"/>"#)),
        );
        w.notify(conn, &sub, 1, CATEGORIES, &doc).await;
        w.stanza(&bob, "type='subscribed'").await;
        let p = w.presence(&bob).await;
        assert_eq!(
            inner(&p),
            "><show>dnd</show><status>In a call</status><priority>0</priority></presence>",
            "{p}"
        );

        // Away (15000–17999) with a custom activity text instead of the token's.
        let doc = categories(
            "sip:bob@contoso.com",
            &state(2, 15500, r#"<activity><custom LCID="1033">Out of office until next week</custom></activity>"#),
        );
        w.notify(conn, &sub, 2, CATEGORIES, &doc).await;
        let p = w.presence(&bob).await;
        assert_eq!(
            inner(&p),
            "><show>xa</show><status>Out of office until next week</status><priority>0</priority></presence>",
            "{p}"
        );

        // Available with a personal note; then only the note changes to an OOF one (a
        // categories NOTIFY may carry only what changed: the state is kept).
        let doc = categories("sip:bob@contoso.com", &format!("{}{}", state(3, 3500, ""), note(3, "personal", "Working from home")));
        w.notify(conn, &sub, 3, CATEGORIES, &doc).await;
        let p = w.presence(&bob).await;
        assert_eq!(
            inner(&p),
            "><status>Working from home</status><priority>0</priority></presence>",
            "{p}"
        );
        let doc = categories("sip:bob@contoso.com", &note(4, "OOF", "Back on Monday &amp; reachable by mail"));
        w.notify(conn, &sub, 4, CATEGORIES, &doc).await;
        let p = w.presence(&bob).await;
        assert_eq!(
            inner(&p),
            "><status>Out of office: Back on Monday &amp; reachable by mail</status><priority>0</priority></presence>",
            "{p}"
        );

        // Presenting (Do Not Disturb, 9000–11999), in a BENOTIFY: the note is kept.
        let doc = categories(
            "sip:bob@contoso.com",
            &state(5, 9500, r#"<activity token="in-presentation"/>"#),
        );
        w.benotify(conn, &sub, 5, CATEGORIES, &doc);
        let p = w.presence(&bob).await;
        assert_eq!(
            inner(&p),
            "><show>dnd</show><status>Presenting - Out of office: Back on Monday &amp; reachable by mail</status><priority>0</priority></presence>",
            "{p}"
        );

        // Offline (18000 and more): unavailable, the OOF note still said.
        let doc = categories("sip:bob@contoso.com", &state(6, 18500, ""));
        w.notify(conn, &sub, 6, CATEGORIES, &doc).await;
        let p = w.presence(&bob).await;
        assert!(p.contains("type='unavailable'"), "{p}");
        assert_eq!(
            inner(&p),
            "><status>Out of office: Back on Monday &amp; reachable by mail</status><priority>0</priority></presence>",
            "{p}"
        );
        // Nothing answered the BENOTIFY.
        let call_id = sub.call_id().unwrap();
        assert!(
            !w.backlog.iter().any(|e| matches!(e, Event::Sip(_, m, _) if !m.is_request() && m.call_id().ok() == Some(call_id) && m.cseq().is_ok_and(|c| c.number == 5))),
            "the BENOTIFY was answered"
        );
    });
}

/// A partner whose server does not take the enhanced SUBSCRIBE (an RFC 3261 §21.4.13 `415`
/// for the category-list body, with the types it does accept): the bridge subscribes again at
/// once with PIDF only and no body — alice sees no error — and remembers it for the domain:
/// the next subscription there goes PIDF-only from the start.
#[test]
fn a_peer_refusing_the_categories_form_gets_pidf_only() {
    runtime().block_on(async {
        let mut w = World::start().await;
        let carol = jid("carol", "fabrikam.com");
        w.subscribe("carol", "fabrikam.com");
        let (conn, sub) = w.subscribe_request("sip:carol@fabrikam.com").await;
        assert_eq!(sub.header("Accept"), Some(ENHANCED_ACCEPT));
        w.answer(conn, &sub, 415, &[("Accept", PIDF)]);
        let (conn, again) = w.subscribe_request("sip:carol@fabrikam.com").await;
        assert_eq!(again.header("Accept"), Some(PIDF), "{again}");
        assert_eq!(again.header("Content-Type"), None);
        assert!(again.body().is_empty());
        assert_ne!(again.call_id().unwrap(), sub.call_id().unwrap());
        w.answer(conn, &again, 202, &[("Expires", "3600")]);
        let away = r#"<?xml version="1.0" encoding="utf-8"?><presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:ep="urn:ietf:params:xml:ns:pidf:status:rpid-status" entity="sip:carol@fabrikam.com"><tuple id="0"><status><basic>open</basic><ep:activities><ep:activity>away</ep:activity></ep:activities></status></tuple></presence>"#;
        w.notify(conn, &again, 1, PIDF, away).await;
        w.stanza(&carol, "type='subscribed'").await;
        let p = w.presence(&carol).await;
        assert_eq!(inner(&p), "><show>away</show><priority>0</priority></presence>", "{p}");
        assert!(
            !w.backlog.iter().any(|e| matches!(e, Event::Stanza(s, _) if String::from_utf8_lossy(s).contains("type='error'"))),
            "alice was told of the refused form"
        );

        // The domain is remembered.
        w.subscribe("dave", "fabrikam.com");
        let (_, sub) = w.subscribe_request("sip:dave@fabrikam.com").await;
        assert_eq!(sub.header("Accept"), Some(PIDF));
        assert!(sub.body().is_empty());
    });
}

/// A partner that takes the enhanced SUBSCRIBE but answers in PIDF (any RFC 3856 notifier:
/// `application/pidf+xml` is in the `Accept` list) is served as the federation profile says.
#[test]
fn a_peer_answering_in_pidf_is_shown_from_pidf() {
    runtime().block_on(async {
        let mut w = World::start().await;
        let erin = jid("erin", "litware.com");
        w.subscribe("erin", "litware.com");
        let (conn, sub) = w.subscribe_request("sip:erin@litware.com").await;
        assert_eq!(sub.header("Accept"), Some(ENHANCED_ACCEPT));
        w.answer(conn, &sub, 202, &[("Expires", "3600")]);
        let meeting = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:ep="urn:ietf:params:xml:ns:pidf:status:rpid-status" entity="sip:erin@litware.com"><tuple id="0"><status><basic>open</basic><ep:activities><ep:activity>meeting</ep:activity></ep:activities></status></tuple></presence>"#;
        w.notify(conn, &sub, 1, PIDF, meeting).await;
        w.stanza(&erin, "type='subscribed'").await;
        let p = w.presence(&erin).await;
        assert_eq!(
            inner(&p),
            "><show>dnd</show><status>In a meeting</status><priority>0</priority></presence>",
            "{p}"
        );
    });
}
