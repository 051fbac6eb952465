#![allow(clippy::unwrap_used)]

use super::*;
use crate::core::address::AddressMode;
use crate::edge::core::{Route, Undeliverable};
use crate::sip::builder::RequestSpec;
use crate::store::DialogRecord;

const ALICE: &str = "alice@example.org";
const BOB: &str = r"bob\40contoso.com@lcs.example.org";
const BOB_AOR: &str = "sip:bob@contoso.com";

fn settings() -> PresenceSettings {
    PresenceSettings {
        public_fqdn: "sip.example.org".into(),
        expires: Duration::from_secs(3600),
        min_notify_interval: Duration::from_secs(5),
        dialog_max_age: Duration::from_secs(2 * 3600),
        nick_suffix: Some(" (XMPP)".into()),
        icon_url: Some("https://example.org/brand16.png".into()),
        retry_base: Duration::from_secs(30),
        retry_max: Duration::from_secs(1800),
        restore_rate: 1000,
        max_pending_per_domain: 3,
        max_pending_per_partner: 4,
        max_pending_per_user: 2,
        partners: ["fabrikam.com".to_owned()].into(),
    }
}

fn engine_at(now: Instant) -> PresenceEngine {
    engine_with(now, settings())
}

fn engine_with(now: Instant, settings: PresenceSettings) -> PresenceEngine {
    let book = AddressBook::new(
        AddressMode::Gateway,
        vec!["lcs.example.org".into()],
        vec!["example.org".into()],
    )
    .unwrap();
    PresenceEngine::new(
        settings,
        book,
        Mappings::builtin(),
        TxIds::default(),
        11,
        WallClock {
            at: now,
            unix: 1_700_000_000,
        },
    )
}

fn pres(attrs: &str, inner: &str) -> Element {
    format!("<presence xmlns='jabber:component:accept' {attrs}>{inner}</presence>")
        .parse()
        .unwrap()
}

/// A stanza from Alice to Bob of this type.
fn alice_to_bob(kind: &str) -> Element {
    pres(
        &format!("from='{ALICE}/phone' to='{BOB}' type='{kind}' id='s1'"),
        "",
    )
}

fn requests(out: &[Output]) -> Vec<(TxId, Message, Route)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Request { tx, request, route } => Some((*tx, request.clone(), route.clone())),
            _ => None,
        })
        .collect()
}

fn stanzas(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Stanza(e) => Some(String::from(e)),
            _ => None,
        })
        .collect()
}

fn responses(out: &[Output]) -> Vec<Message> {
    out.iter()
        .filter_map(|o| match o {
            Output::Respond { response, .. } => Some(response.clone()),
            _ => None,
        })
        .collect()
}

/// A compact trace of the outputs' kinds, to check their order.
fn kinds(out: &[Output]) -> Vec<String> {
    out.iter()
        .map(|o| match o {
            Output::Stanza(e) => format!(
                "stanza:{}",
                e.attr("type").unwrap_or(if e.name() == "presence" {
                    "available"
                } else {
                    "?"
                })
            ),
            Output::Request { request, .. } => {
                format!("request:{}", request.method().unwrap())
            }
            Output::Respond { response, .. } => format!("respond:{}", response.status().unwrap()),
            Output::Ack { .. } => "ack".into(),
            Output::Persist(s) => format!("persist:{}", s.approval.as_str()),
            Output::PersistLazy(s) => format!("persist-lazy:{}", s.approval.as_str()),
            Output::Forget { direction, .. } => format!("forget:{}", direction.as_str()),
        })
        .collect()
}

fn persisted(out: &[Output]) -> Vec<Subscription> {
    out.iter()
        .filter_map(|o| match o {
            Output::Persist(s) => Some((**s).clone()),
            _ => None,
        })
        .collect()
}

fn final_event(tx: TxId, conn: ConnId, response: Message) -> EdgeEvent {
    EdgeEvent::Transaction(TxEvent::Response {
        tx,
        conn,
        response,
        is_final: true,
    })
}

/// LCS's answer to our SUBSCRIBE.
fn answer(request: &Message, status: u16, expires: Option<u32>) -> Message {
    let mut r = Message::response_to(request, status, None, Some("lcs-tag"));
    r.push_header("Contact", "<sip:bob@192.0.2.5:5061;transport=tls>");
    if let Some(e) = expires {
        r.push_header("Expires", &e.to_string());
    }
    r
}

const AWAY: &str = r#"<?xml version="1.0" encoding="utf-8"?><presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:ep="urn:ietf:params:xml:ns:pidf:status:rpid-status" xmlns:ci="urn:ietf:params:xml:ns:pidf:cipid" entity="sip:bob@contoso.com"><tuple id="0"><status><basic>open</basic><ep:activities><ep:activity>away</ep:activity></ep:activities></status></tuple><tuple id="1"><status><basic>closed</basic></status></tuple><ci:display-name>Bob at Contoso</ci:display-name></presence>"#;
const MEETING: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:ep="urn:ietf:params:xml:ns:pidf:status:rpid-status" entity="sip:bob@contoso.com"><tuple id="0"><status><basic>open</basic><ep:activities><ep:activity>meeting</ep:activity></ep:activities></status></tuple></presence>"#;

/// A NOTIFY (or BENOTIFY) from LCS in the dialog our SUBSCRIBE `sub` created.
fn notify(method: &str, sub: &Message, cseq: u32, state: &str, body: Option<&str>) -> EdgeEvent {
    let our_tag = sub.from().unwrap().tag().unwrap().to_owned();
    let call_id = sub.call_id().unwrap().to_owned();
    let (ct, body) = match body {
        Some(b) => ("Content-Type: application/pidf+xml\n".to_owned(), b),
        None => (String::new(), ""),
    };
    let raw = format!(
        "{method} sip:alice@sip.example.org;transport=tls SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bKn{cseq}{method}\nMax-Forwards: 70\nFrom: <sip:bob@contoso.com>;tag=lcs-tag\nTo: <sip:alice@example.org>;tag={our_tag}\nCall-ID: {call_id}\nCSeq: {cseq} {method}\nContact: <sip:bob@192.0.2.5:5061;transport=tls>\nEvent: presence\nSubscription-State: {state}\n{ct}Content-Length: {}\n\n",
        body.len()
    )
    .replace('\n', "\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    EdgeEvent::Request {
        tx: TxIds::default().next(),
        conn: 9,
        request: Message::parse(&bytes).unwrap(),
        asserted: None,
    }
}

/// Alice subscribes to Bob and LCS accepts: returns the SUBSCRIBE sent.
fn subscribed(e: &mut PresenceEngine, now: Instant) -> Message {
    let out = e.on_stanza(now, alice_to_bob("subscribe"));
    let (tx, sub, _) = requests(&out).remove(0);
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(3600))));
    let out = e.on_edge(
        now,
        notify("NOTIFY", &sub, 1, "active;expires=3600", Some(AWAY)),
    );
    assert!(stanzas(&out)[0].contains("type='subscribed'"));
    sub
}

#[test]
fn subscribe_sends_a_presence_subscribe_after_persisting_it() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(now, alice_to_bob("subscribe"));
    assert_eq!(kinds(&out), ["persist:requested", "request:SUBSCRIBE"]);
    let s = &persisted(&out)[0];
    assert_eq!(
        (s.direction, s.local_jid.as_str(), s.remote_aor.as_str()),
        (Direction::Outbound, ALICE, BOB_AOR)
    );
    assert_eq!(s.state, SubState::Pending);
    let (_, sub, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Domain("contoso.com".into()));
    assert_eq!(sub.request_uri(), Some(BOB_AOR));
    assert_eq!(sub.from().unwrap().uri, "sip:alice@example.org");
    assert_eq!(sub.to().unwrap().uri, BOB_AOR);
    assert!(sub.to().unwrap().tag().is_none());
    assert_eq!(sub.header("Event"), Some("presence"));
    assert_eq!(sub.header("Accept"), Some("application/pidf+xml"));
    assert_eq!(sub.header("Expires"), Some("3600"));
    assert!(sub.header("Contact").unwrap().contains(";transport=tls"));
    assert!(!sub.to_bytes().windows(5).any(|w| w == b"sips:"));
    // A second subscribe while pending sends nothing new.
    assert!(e.on_stanza(now, alice_to_bob("subscribe")).is_empty());
    assert_eq!(e.counts(), (1, 0));
}

#[test]
fn active_notify_gives_subscribed_once_then_presence() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(now, alice_to_bob("subscribe"));
    let (tx, sub, _) = requests(&out).remove(0);
    assert!(
        e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(3600))))
            .is_empty()
    );
    let out = e.on_edge(
        now,
        notify("NOTIFY", &sub, 1, "active;expires=3600", Some(AWAY)),
    );
    assert_eq!(
        kinds(&out),
        [
            "persist:approved",
            "stanza:subscribed",
            "stanza:available",
            "respond:200"
        ]
    );
    let s = stanzas(&out);
    assert!(s[0].contains(&format!("from='{BOB}'")), "{}", s[0]);
    assert!(s[0].contains(&format!("to='{ALICE}'")), "{}", s[0]);
    assert!(s[1].contains("<show>away</show>"), "{}", s[1]);
    assert_eq!(persisted(&out)[0].state, SubState::Active);
    // The next NOTIFY: presence only, no second `subscribed`.
    let out = e.on_edge(
        now,
        notify("NOTIFY", &sub, 2, "active;expires=3500", Some(MEETING)),
    );
    assert_eq!(kinds(&out), ["stanza:available", "respond:200"]);
    let s = stanzas(&out);
    assert!(
        s[0].contains("<show>dnd</show>") && s[0].contains("In a meeting"),
        "{}",
        s[0]
    );
    // Closed → unavailable.
    let closed = AWAY.replace(">open<", ">closed<");
    let out = e.on_edge(now, notify("NOTIFY", &sub, 3, "active", Some(&closed)));
    assert!(stanzas(&out)[0].contains("type='unavailable'"));
    // An out-of-order CSeq is refused (RFC 3261 §12.2.2).
    let out = e.on_edge(now, notify("NOTIFY", &sub, 3, "active", Some(AWAY)));
    assert_eq!(responses(&out)[0].status(), Some(500));
}

#[test]
fn pending_notify_gives_nothing_and_benotify_gets_no_response() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(now, alice_to_bob("subscribe"));
    let (tx, sub, _) = requests(&out).remove(0);
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, None)));
    let out = e.on_edge(now, notify("NOTIFY", &sub, 1, "pending;expires=3600", None));
    assert_eq!(kinds(&out), ["respond:200"]);
    let out = e.on_edge(
        now,
        notify("BENOTIFY", &sub, 2, "active;expires=3600", Some(AWAY)),
    );
    assert_eq!(
        kinds(&out),
        ["persist:approved", "stanza:subscribed", "stanza:available"]
    );
    let out = e.on_edge(now, notify("BENOTIFY", &sub, 3, "active", Some(MEETING)));
    assert_eq!(kinds(&out), ["stanza:available"]);
}

#[test]
fn a_notify_before_the_2xx_makes_the_dialog() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(now, alice_to_bob("subscribe"));
    let (tx, sub, _) = requests(&out).remove(0);
    let out = e.on_edge(
        now,
        notify("NOTIFY", &sub, 1, "active;expires=3600", Some(AWAY)),
    );
    assert_eq!(
        kinds(&out),
        [
            "persist:approved",
            "stanza:subscribed",
            "stanza:available",
            "respond:200"
        ]
    );
    e.on_edge(now, final_event(tx, 9, answer(&sub, 200, Some(3600))));
    // The dialog is confirmed: the refresh goes inside it.
    let at = e.poll_timeout().unwrap();
    assert_eq!(at, now + Duration::from_secs(3540));
    let (_, refresh, route) = requests(&e.handle_timeout(at)).remove(0);
    assert_eq!(refresh.to().unwrap().tag(), Some("lcs-tag"));
    assert_eq!(route, Route::Connection(9));
}

#[test]
fn rejected_gives_unsubscribed_and_forgets() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let sub = subscribed(&mut e, now);
    let out = e.on_edge(
        now,
        notify("NOTIFY", &sub, 2, "terminated;reason=rejected", None),
    );
    assert_eq!(
        kinds(&out),
        [
            "forget:outbound",
            "stanza:unsubscribed",
            "stanza:unavailable",
            "respond:200"
        ]
    );
    assert_eq!(e.counts(), (0, 0));
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn deactivated_and_timeout_resubscribe_at_once_then_back_off() {
    for reason in ["deactivated", "timeout"] {
        let now = Instant::now();
        let mut e = engine_at(now);
        let sub = subscribed(&mut e, now);
        let out = e.on_edge(
            now,
            notify(
                "NOTIFY",
                &sub,
                2,
                &format!("terminated;reason={reason}"),
                None,
            ),
        );
        // At once, no `unsubscribed`, and no unavailable flicker.
        assert_eq!(
            kinds(&out),
            ["request:SUBSCRIBE", "respond:200"],
            "{reason}"
        );
        let (tx, again, route) = requests(&out).remove(0);
        assert!(again.to().unwrap().tag().is_none());
        assert_eq!(route, Route::Domain("contoso.com".into()));
        e.on_edge(now, final_event(tx, 9, answer(&again, 202, Some(3600))));
        // Terminated again before any `active`: now it backs off (30 s, then 60 s).
        let out = e.on_edge(
            now,
            notify(
                "NOTIFY",
                &again,
                1,
                &format!("terminated;reason={reason}"),
                None,
            ),
        );
        assert_eq!(
            kinds(&out),
            ["stanza:unavailable", "respond:200"],
            "{reason}"
        );
        assert_eq!(e.poll_timeout(), Some(now + Duration::from_secs(60)));
        assert!(requests(&e.handle_timeout(now + Duration::from_secs(59))).is_empty());
        let out = e.handle_timeout(now + Duration::from_secs(60));
        assert_eq!(kinds(&out), ["request:SUBSCRIBE"]);
        // A later `active` does not send `subscribed` again.
        let later = now + Duration::from_secs(60);
        let (tx, third, _) = requests(&out).remove(0);
        e.on_edge(later, final_event(tx, 9, answer(&third, 202, Some(3600))));
        let out = e.on_edge(later, notify("NOTIFY", &third, 1, "active", Some(AWAY)));
        assert_eq!(kinds(&out), ["stanza:available", "respond:200"]);
    }
}

#[test]
fn probation_noresource_and_no_reason_wait_before_subscribing_again() {
    let cases = [
        ("terminated;reason=probation;retry-after=120", 120),
        ("terminated;reason=probation", 30),
        ("terminated;reason=noresource", 1800),
        ("terminated;reason=giveup", 30),
        ("terminated", 30),
    ];
    for (state, wait) in cases {
        let now = Instant::now();
        let mut e = engine_at(now);
        let sub = subscribed(&mut e, now);
        let out = e.on_edge(now, notify("NOTIFY", &sub, 2, state, None));
        assert_eq!(
            kinds(&out),
            ["stanza:unavailable", "respond:200"],
            "{state}"
        );
        assert_eq!(
            e.poll_timeout(),
            Some(now + Duration::from_secs(wait)),
            "{state}"
        );
        let out = e.handle_timeout(now + Duration::from_secs(wait));
        assert_eq!(kinds(&out), ["request:SUBSCRIBE"], "{state}");
        assert_eq!(e.counts(), (1, 0));
    }
}

#[test]
fn error_responses_to_the_first_subscribe_become_presence_errors() {
    let cases = [
        (404, "item-not-found"),
        (403, "forbidden"),
        (480, "recipient-unavailable"),
        (503, "service-unavailable"),
    ];
    for (status, condition) in cases {
        let now = Instant::now();
        let mut e = engine_at(now);
        let out = e.on_stanza(now, alice_to_bob("subscribe"));
        let (tx, sub, _) = requests(&out).remove(0);
        let out = e.on_edge(now, final_event(tx, 9, answer(&sub, status, None)));
        assert_eq!(kinds(&out), ["forget:outbound", "stanza:error"], "{status}");
        let s = &stanzas(&out)[0];
        assert!(s.contains(condition), "{s}");
        assert!(s.contains(&format!("from='{BOB}'")), "{s}");
        assert!(s.contains(&format!("to='{ALICE}'")), "{s}");
        assert!(s.contains("id='s1'"), "{s}");
        assert_eq!(e.counts(), (0, 0));
    }
    // A timeout and no route.
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tx, _, _) = requests(&e.on_stanza(now, alice_to_bob("subscribe"))).remove(0);
    let out = e.on_edge(now, EdgeEvent::Transaction(TxEvent::Timeout { tx }));
    assert!(stanzas(&out)[0].contains("remote-server-timeout"));
    let (tx, _, _) = requests(&e.on_stanza(now, alice_to_bob("subscribe"))).remove(0);
    let out = e.on_edge(
        now,
        EdgeEvent::Undeliverable {
            tx,
            why: Undeliverable::NoRoute {
                domain: "contoso.com".into(),
                reason: "no SRV".into(),
            },
        },
    );
    assert!(stanzas(&out)[0].contains("remote-server-not-found"));
    // Transactions the engine did not start are not its business.
    assert!(!e.owns(TxIds::default().next()));
    assert!(
        e.on_edge(now, EdgeEvent::Transaction(TxEvent::Timeout { tx }))
            .is_empty()
    );
}

#[test]
fn a_423_raises_expires_and_tries_again() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tx, sub, _) = requests(&e.on_stanza(now, alice_to_bob("subscribe"))).remove(0);
    let mut r = answer(&sub, 423, None);
    r.push_header("Min-Expires", "7200");
    let out = e.on_edge(now, final_event(tx, 9, r));
    let (_, again, _) = requests(&out).remove(0);
    assert_eq!(again.header("Expires"), Some("7200"));
}

#[test]
fn refresh_before_expiry_and_refresh_failures_resubscribe() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tx, sub, _) = requests(&e.on_stanza(now, alice_to_bob("subscribe"))).remove(0);
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(600))));
    assert_eq!(e.poll_timeout(), Some(now + Duration::from_secs(540)));
    let t1 = now + Duration::from_secs(540);
    let out = e.handle_timeout(t1);
    let (tx, refresh, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Connection(9));
    assert_eq!(refresh.method(), Some(&Method::Subscribe));
    assert_eq!(refresh.to().unwrap().tag(), Some("lcs-tag"));
    assert_eq!(refresh.call_id().unwrap(), sub.call_id().unwrap());
    assert_eq!(refresh.cseq().unwrap().number, 2);
    assert_eq!(refresh.header("Expires"), Some("3600"));
    // Nothing else due while the refresh is in flight.
    assert_eq!(e.poll_timeout(), None);
    // 481 to the refresh: the dialog is gone; a fresh SUBSCRIBE after the backoff.
    let out = e.on_edge(t1, final_event(tx, 9, answer(&refresh, 481, None)));
    assert!(requests(&out).is_empty());
    assert_eq!(e.poll_timeout(), Some(t1 + Duration::from_secs(30)));
    let (_, fresh, _) = requests(&e.handle_timeout(t1 + Duration::from_secs(30))).remove(0);
    assert!(fresh.to().unwrap().tag().is_none());
    assert_ne!(fresh.call_id().unwrap(), sub.call_id().unwrap());
}

#[test]
fn unsubscribe_sends_expires_0_after_forgetting() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let sub = subscribed(&mut e, now);
    let out = e.on_stanza(now, alice_to_bob("unsubscribe"));
    assert_eq!(
        kinds(&out),
        ["forget:outbound", "stanza:unavailable", "request:SUBSCRIBE"]
    );
    let (_, unsub, route) = requests(&out).remove(0);
    assert_eq!(unsub.header("Expires"), Some("0"));
    assert_eq!(unsub.to().unwrap().tag(), Some("lcs-tag"));
    assert_eq!(route, Route::Connection(9));
    assert_eq!(e.counts(), (0, 0));
    // The final NOTIFY of that dialog: 481 (nothing to tell anyone).
    let out = e.on_edge(
        now,
        notify("NOTIFY", &sub, 5, "terminated;reason=timeout", None),
    );
    assert_eq!(kinds(&out), ["respond:481"]);
}

#[test]
fn probes_are_answered_from_the_last_notify() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(now, alice_to_bob("subscribe"));
    let (tx, sub, _) = requests(&out).remove(0);
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(3600))));
    // Pending: nothing to say, nothing new to send (the NOTIFY comes with the approval).
    assert!(e.on_stanza(now, alice_to_bob("probe")).is_empty());
    e.on_edge(now, notify("NOTIFY", &sub, 1, "active", Some(AWAY)));
    let out = e.on_stanza(now, alice_to_bob("probe"));
    assert_eq!(kinds(&out), ["stanza:available"]);
    let s = &stanzas(&out)[0];
    assert!(s.contains("<show>away</show>"), "{s}");
    assert!(s.contains(&format!("to='{ALICE}/phone'")), "{s}");
    // A probe for a contact the bridge does not know re-establishes the subscription
    // (the server probes only contacts the user is subscribed to).
    let carol = pres(
        &format!("from='{ALICE}' to='carol\\40contoso.com@lcs.example.org' type='probe'"),
        "",
    );
    let out = e.on_stanza(now, carol);
    assert_eq!(kinds(&out), ["persist:approved", "request:SUBSCRIBE"]);
}

#[test]
fn subscriptions_to_unreachable_addresses_are_refused() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(
        now,
        pres(
            &format!("from='{ALICE}' to='nobody@lcs.example.org' type='subscribe'"),
            "",
        ),
    );
    assert!(stanzas(&out)[0].contains("item-not-found"));
    // From a non-local user: ignored.
    let out = e.on_stanza(
        now,
        pres(
            &format!("from='eve@evil.example' to='{BOB}' type='subscribe'"),
            "",
        ),
    );
    assert!(out.is_empty());
}

#[test]
fn the_gateway_itself_approves_and_is_online() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(
        now,
        pres(
            &format!("from='{ALICE}' to='lcs.example.org' type='subscribe'"),
            "",
        ),
    );
    assert_eq!(kinds(&out), ["stanza:subscribed", "stanza:available"]);
}

// ------------------------------------------------------------------ inbound

fn lcs_subscribe(call_id: &str, expires: Option<u32>) -> EdgeEvent {
    let expires = expires
        .map(|e| format!("Expires: {e}\n"))
        .unwrap_or_default();
    let raw = format!(
        "SUBSCRIBE sip:alice@example.org SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bK{call_id}\nMax-Forwards: 70\nFrom: \"Bob Example\" <sip:bob@contoso.com>;tag=lcs1\nTo: <sip:alice@example.org>\nCall-ID: {call_id}\nCSeq: 1 SUBSCRIBE\nContact: <sip:bob@192.0.2.5:5061;transport=tls>\nEvent: presence\nAccept: application/pidf+xml\n{expires}Content-Length: 0\n\n"
    );
    EdgeEvent::Request {
        tx: TxIds::default().next(),
        conn: 4,
        request: Message::parse(raw.replace('\n', "\r\n").as_bytes()).unwrap(),
        asserted: None,
    }
}

/// A SUBSCRIBE from LCS inside the watcher dialog (our tag `tag`).
fn lcs_resubscribe(call_id: &str, tag: &str, cseq: u32, expires: u32, conn: ConnId) -> EdgeEvent {
    let raw = format!(
        "SUBSCRIBE sip:alice@sip.example.org;transport=tls SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bKr{cseq}\nMax-Forwards: 70\nFrom: \"Bob Example\" <sip:bob@contoso.com>;tag=lcs1\nTo: <sip:alice@example.org>;tag={tag}\nCall-ID: {call_id}\nCSeq: {cseq} SUBSCRIBE\nContact: <sip:bob@192.0.2.5:5061;transport=tls>\nEvent: presence\nExpires: {expires}\nContent-Length: 0\n\n"
    );
    EdgeEvent::Request {
        tx: TxIds::default().next(),
        conn,
        request: Message::parse(raw.replace('\n', "\r\n").as_bytes()).unwrap(),
        asserted: None,
    }
}

fn alice(attrs: &str, inner: &str) -> Element {
    pres(&format!("from='{ALICE}/{attrs}"), inner)
}

/// Bob (LCS) watches Alice; she approves. Returns (our dialog tag, NOTIFY tx of the active).
fn watched(e: &mut PresenceEngine, now: Instant) -> (String, TxId) {
    let out = e.on_edge(now, lcs_subscribe("w-1", Some(3600)));
    let tag = responses(&out)[0].to().unwrap().tag().unwrap().to_owned();
    let (tx, _, _) = requests(&out).remove(0);
    e.on_edge(now, final_event(tx, 4, Message::new_response(200, "OK")));
    let out = e.on_stanza(now, alice_to_bob("subscribed"));
    let (tx, _, _) = requests(&out).remove(0);
    (tag, tx)
}

fn ok(e: &mut PresenceEngine, now: Instant, tx: TxId, conn: ConnId) -> Vec<Output> {
    e.on_edge(now, final_event(tx, conn, Message::new_response(200, "OK")))
}

fn body(m: &Message) -> String {
    String::from_utf8(m.body().to_vec()).unwrap()
}

#[test]
fn an_lcs_subscribe_is_stored_before_202_then_pending_and_a_subscribe_stanza() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_edge(now, lcs_subscribe("w-1", Some(7200)));
    assert_eq!(
        kinds(&out),
        [
            "persist:requested",
            "stanza:subscribe",
            "respond:202",
            "request:NOTIFY"
        ]
    );
    let s = &persisted(&out)[0];
    assert_eq!(s.direction, Direction::Inbound);
    assert_eq!(
        (s.local_jid.as_str(), s.remote_aor.as_str()),
        (ALICE, BOB_AOR)
    );
    assert_eq!(s.expires_unix, 1_700_000_000 + 3600);
    assert!(s.dialog.is_some());
    let st = &stanzas(&out)[0];
    assert!(st.contains(&format!("from='{BOB}'")), "{st}");
    assert!(st.contains(&format!("to='{ALICE}'")), "{st}");
    assert!(
        st.contains("<nick xmlns='http://jabber.org/protocol/nick'>Bob Example</nick>"),
        "{st}"
    );
    let r = &responses(&out)[0];
    // Granted at most the configured expires.
    assert_eq!(r.header("Expires"), Some("3600"));
    assert!(r.header("Contact").unwrap().contains("transport=tls"));
    let (_, n, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Connection(4));
    assert_eq!(n.header("Subscription-State"), Some("pending;expires=3600"));
    assert_eq!(n.header("Event"), Some("presence"));
    assert!(n.header("Record-Route").is_none());
    assert_eq!(
        n.request_uri(),
        Some("sip:bob@192.0.2.5:5061;transport=tls")
    );
    assert_eq!(n.call_id().unwrap(), "w-1");
    assert!(n.body().is_empty());
}

#[test]
fn approval_sends_active_with_the_profile_document_and_refusal_rejects() {
    let now = Instant::now();
    let mut e = engine_at(now);
    e.on_stanza(
        now,
        alice(
            "phone' to='lcs.example.org'",
            "<show>away</show><nick xmlns='http://jabber.org/protocol/nick'>Alice A.</nick>",
        ),
    );
    let out = e.on_edge(now, lcs_subscribe("w-1", Some(3600)));
    let (tx, _, _) = requests(&out).remove(0);
    ok(&mut e, now, tx, 4);
    let out = e.on_stanza(now, alice_to_bob("subscribed"));
    assert_eq!(kinds(&out), ["persist:approved", "request:NOTIFY"]);
    assert_eq!(persisted(&out)[0].state, SubState::Active);
    let (_, n, _) = requests(&out).remove(0);
    assert_eq!(n.header("Subscription-State"), Some("active;expires=3600"));
    assert_eq!(n.header("Content-Type"), Some("application/pidf+xml"));
    let b = body(&n);
    assert_eq!(b.matches("<tuple").count(), 1, "{b}");
    assert!(b.contains("entity=\"sip:alice@example.org\""), "{b}");
    assert!(b.contains("<ep:activity>away</ep:activity>"), "{b}");
    assert!(
        b.contains("<ci:display-name>Alice A. (XMPP)</ci:display-name>"),
        "{b}"
    );
    assert!(
        b.contains("<ci:icon>https://example.org/brand16.png</ci:icon>"),
        "{b}"
    );
    // A second `subscribed` changes nothing.
    assert!(e.on_stanza(now, alice_to_bob("subscribed")).is_empty());
    // Refusal (revocation): forgotten, then terminated;reason=rejected.
    let out = e.on_stanza(now, alice_to_bob("unsubscribed"));
    assert_eq!(kinds(&out), ["forget:inbound", "request:NOTIFY"]);
    let (_, n, _) = requests(&out).remove(0);
    assert_eq!(
        n.header("Subscription-State"),
        Some("terminated;reason=rejected")
    );
    assert!(n.body().is_empty());
    assert_eq!(e.counts(), (0, 0));
}

#[test]
fn resources_aggregate_by_priority_then_availability() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (_, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    let mut t = now;
    fn step(e: &mut PresenceEngine, t: &mut Instant, stanza: Element) -> String {
        *t += Duration::from_secs(10);
        let out = e.on_stanza(*t, stanza);
        let (tx, n, _) = requests(&out).remove(0);
        ok(e, *t, tx, 4);
        body(&n)
    }
    let b = step(
        &mut e,
        &mut t,
        alice(
            "phone' to='lcs.example.org'",
            "<show>dnd</show><priority>5</priority>",
        ),
    );
    assert!(b.contains("<ep:activity>busy</ep:activity>"), "{b}");
    // A lower-priority resource does not win, however available.
    t += Duration::from_secs(10);
    let out = e.on_stanza(
        t,
        alice("laptop' to='lcs.example.org'", "<priority>1</priority>"),
    );
    assert!(requests(&out).is_empty(), "same aggregate: nothing sent");
    // The high-priority one leaves: the laptop's state goes out.
    let b = step(
        &mut e,
        &mut t,
        alice("phone' to='lcs.example.org' type='unavailable'", ""),
    );
    assert!(
        b.contains("<basic>open</basic>") && !b.contains("activity"),
        "{b}"
    );
    // Equal priority: the more available show wins (the laptop's, unchanged: nothing sent).
    t += Duration::from_secs(10);
    let out = e.on_stanza(
        t,
        alice(
            "tablet' to='lcs.example.org'",
            "<show>xa</show><priority>1</priority>",
        ),
    );
    assert!(requests(&out).is_empty());
    let b = step(
        &mut e,
        &mut t,
        alice("laptop' to='lcs.example.org' type='unavailable'", ""),
    );
    assert!(
        b.contains("<ep:activity>away</ep:activity>"),
        "the tablet's xa: {b}"
    );
    // All gone: closed.
    let b = step(
        &mut e,
        &mut t,
        alice("tablet' to='lcs.example.org' type='unavailable'", ""),
    );
    assert!(b.contains("<basic>closed</basic>"), "{b}");
}

#[test]
fn repeated_presences_are_skipped_until_the_resource_goes_unavailable() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (_, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    let dnd =
        |to: &str, id: &str| alice(&format!("phone' to='{to}' id='{id}'"), "<show>dnd</show>");
    let t = now + Duration::from_secs(10);
    let out = e.on_stanza(t, dnd(BOB, "a"));
    let (tx, n, _) = requests(&out).remove(0);
    assert!(body(&n).contains("busy"));
    ok(&mut e, t, tx, 4);
    // The same presence to other contacts (the server's fan-out): taken as the same.
    assert!(e.repeated(&dnd("carol@lcs.example.org", "b")));
    assert!(!e.repeated(&alice("phone' to='x@lcs.example.org'", "<show>away</show>")));
    assert!(!e.repeated(&dnd(BOB, "c")), "dnd again after away");
    // Unavailable from the bare JID ends every resource: the same dnd counts again.
    let t = t + Duration::from_secs(10);
    let out = e.on_stanza(
        t,
        pres(&format!("from='{ALICE}' to='{BOB}' type='unavailable'"), ""),
    );
    let (tx, n, _) = requests(&out).remove(0);
    assert!(body(&n).contains("<basic>closed</basic>"));
    ok(&mut e, t, tx, 4);
    let t = t + Duration::from_secs(10);
    let out = e.on_stanza(t, dnd(BOB, "d"));
    let (_, n, _) = requests(&out).remove(0);
    assert!(body(&n).contains("busy"), "{}", body(&n));
    // A resource that goes unavailable is not kept (clients often come back as a new one).
    assert_eq!(e.last_raw.len(), 1);
    e.on_stanza(
        t,
        alice(&format!("phone' to='{BOB}' type='unavailable'"), ""),
    );
    assert!(e.last_raw.is_empty());
}

#[test]
fn bursts_are_coalesced_per_watcher_and_the_last_state_goes_out() {
    let now = Instant::now();
    let mut e = engine_at(now);
    e.on_stanza(now, alice("phone' to='lcs.example.org'", ""));
    let (_, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    // The active NOTIFY went out at `now`: changes within 5 s wait.
    for (i, show) in ["away", "dnd", "xa"].iter().enumerate() {
        let at = now + Duration::from_secs(1 + i as u64);
        let out = e.on_stanza(
            at,
            alice(
                "phone' to='lcs.example.org'",
                &format!("<show>{show}</show>"),
            ),
        );
        assert!(requests(&out).is_empty(), "{show}");
    }
    assert_eq!(e.poll_timeout(), Some(now + Duration::from_secs(5)));
    assert!(
        requests(&e.handle_timeout(now + Duration::from_secs(4))).is_empty(),
        "not before the interval"
    );
    let out = e.handle_timeout(now + Duration::from_secs(5));
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    let b = body(&reqs[0].1);
    assert!(
        b.contains("<ep:activity>away</ep:activity>") && b.contains("Extended away"),
        "the final state (xa): {b}"
    );
    // While that NOTIFY is unanswered, nothing more goes out; after its 200, the next change
    // waits for the interval again.
    let t = now + Duration::from_secs(11);
    assert!(requests(&e.on_stanza(t, alice("phone' to='lcs.example.org'", ""))).is_empty());
    let out = ok(&mut e, t, reqs[0].0, 4);
    assert_eq!(
        requests(&out).len(),
        1,
        "the owed state, the interval having passed"
    );
}

/// Approved before the server sent the user's presence to the contact (it does right after
/// `subscribed`): the `active` NOTIFY says closed, and the first known state follows at once,
/// not an interval later (LCS would show the user offline meanwhile). Later changes are
/// coalesced again.
#[test]
fn the_first_known_state_after_a_blind_approval_goes_at_once() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (_, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    let t = now + Duration::from_millis(20);
    let out = e.on_stanza(t, alice("phone' to='lcs.example.org'", ""));
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1, "at once: {:?}", kinds(&out));
    assert!(body(&reqs[0].1).contains("<basic>open</basic>"));
    ok(&mut e, t, reqs[0].0, 4);
    let out = e.on_stanza(t, alice("phone' to='lcs.example.org'", "<show>away</show>"));
    assert!(requests(&out).is_empty(), "coalesced again");
    assert_eq!(e.poll_timeout(), Some(t + Duration::from_secs(5)));
}

#[test]
fn refresh_and_unsubscribe_from_lcs() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tag, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    let t = now + Duration::from_secs(1800);
    let out = e.on_edge(t, lcs_resubscribe("w-1", &tag, 2, 1800, 4));
    assert_eq!(
        kinds(&out),
        ["persist-lazy:approved", "respond:200", "request:NOTIFY"]
    );
    assert_eq!(responses(&out)[0].header("Expires"), Some("1800"));
    let (tx, n, _) = requests(&out).remove(0);
    assert_eq!(n.header("Subscription-State"), Some("active;expires=1800"));
    assert!(body(&n).contains("<basic>closed</basic>"));
    ok(&mut e, t, tx, 4);
    // Expires 0: forgotten, `unsubscribe`, 200, final NOTIFY.
    let out = e.on_edge(t, lcs_resubscribe("w-1", &tag, 3, 0, 4));
    assert_eq!(
        kinds(&out),
        [
            "forget:inbound",
            "stanza:unsubscribe",
            "respond:200",
            "request:NOTIFY"
        ]
    );
    let (_, n, _) = requests(&out).remove(0);
    assert_eq!(
        n.header("Subscription-State"),
        Some("terminated;reason=timeout")
    );
    assert_eq!(e.counts(), (0, 0));
    // An unknown dialog now.
    let out = e.on_edge(t, lcs_resubscribe("w-1", &tag, 4, 3600, 4));
    assert_eq!(kinds(&out), ["respond:481"]);
}

#[test]
fn unrefreshed_watchers_expire_and_old_dialogs_are_deactivated() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (_, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    // No refresh within 3600 s: terminated;reason=timeout.
    assert_eq!(e.poll_timeout(), Some(now + Duration::from_secs(3600)));
    let out = e.handle_timeout(now + Duration::from_secs(3600));
    assert_eq!(kinds(&out), ["forget:inbound", "request:NOTIFY"]);
    assert_eq!(
        requests(&out)[0].1.header("Subscription-State"),
        Some("terminated;reason=timeout")
    );

    // Refreshed past the dialog age (2 h here): deactivated, the approval kept, and the
    // re-SUBSCRIBE in a new dialog goes straight to active without asking Alice again.
    let mut e = engine_at(now);
    let (tag, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    let t = now + Duration::from_secs(5000);
    let out = e.on_edge(t, lcs_resubscribe("w-1", &tag, 2, 3600, 4));
    let (tx, _, _) = requests(&out).remove(0);
    ok(&mut e, t, tx, 4);
    let age = now + Duration::from_secs(7200);
    assert_eq!(e.poll_timeout(), Some(age));
    let out = e.handle_timeout(age);
    assert_eq!(kinds(&out), ["request:NOTIFY", "persist-lazy:approved"]);
    assert_eq!(
        requests(&out)[0].1.header("Subscription-State"),
        Some("terminated;reason=deactivated")
    );
    assert_eq!(e.counts(), (0, 1));
    let out = e.on_edge(age, lcs_subscribe("w-2", Some(3600)));
    assert_eq!(
        kinds(&out),
        ["persist:approved", "respond:202", "request:NOTIFY"]
    );
    assert!(
        requests(&out)[0]
            .1
            .header("Subscription-State")
            .unwrap()
            .starts_with("active")
    );
}

#[test]
fn bad_event_short_expires_and_stray_notifies() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let raw = "SUBSCRIBE sip:alice@example.org SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bKx\r\nMax-Forwards: 70\r\nFrom: <sip:bob@contoso.com>;tag=x\r\nTo: <sip:alice@example.org>\r\nCall-ID: x\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:bob@192.0.2.5>\r\nEvent: dialog\r\nContent-Length: 0\r\n\r\n";
    let out = e.on_edge(
        now,
        EdgeEvent::Request {
            tx: TxIds::default().next(),
            conn: 4,
            request: Message::parse(raw.as_bytes()).unwrap(),
            asserted: None,
        },
    );
    let r = &responses(&out)[0];
    assert_eq!(r.status(), Some(489));
    assert_eq!(r.header("Allow-Events"), Some("presence"));
    let out = e.on_edge(now, lcs_subscribe("w-1", Some(10)));
    let r = &responses(&out)[0];
    assert_eq!(r.status(), Some(423));
    assert_eq!(r.header("Min-Expires"), Some("60"));
    assert_eq!(e.counts(), (0, 0));
    // A NOTIFY for no subscription: 481 (the notifier then drops it).
    let sub = RequestSpec {
        method: Method::Subscribe,
        request_uri: BOB_AOR,
        via_sent_by: "sip.example.org",
        branch: "z9hG4bKq",
        from_display: None,
        from_uri: "sip:alice@example.org",
        from_tag: "old",
        to_display: None,
        to_uri: BOB_AOR,
        to_tag: None,
        call_id: "gone",
        cseq: 1,
        contact: None,
        route: &[],
    }
    .build();
    let out = e.on_edge(now, notify("NOTIFY", &sub, 1, "active", Some(AWAY)));
    assert_eq!(kinds(&out), ["respond:481"]);
    assert!(
        e.on_edge(now, notify("BENOTIFY", &sub, 1, "active", Some(AWAY)))
            .is_empty()
    );
}

#[test]
fn a_fetch_gets_the_state_and_ends() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_edge(now, lcs_subscribe("f-1", Some(0)));
    assert_eq!(kinds(&out), ["respond:202", "request:NOTIFY"]);
    assert_eq!(
        requests(&out)[0].1.header("Subscription-State"),
        Some("terminated;reason=timeout")
    );
    assert_eq!(e.counts(), (0, 0));
}

// ------------------------------------------------------------------ connections

#[test]
fn connection_loss_resubscribes_outbound_and_routes_inbound_by_domain() {
    let now = Instant::now();
    let mut e = engine_at(now);
    subscribed(&mut e, now);
    let (_, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    // Outbound dialog lived on 9.
    let out = e.on_edge(now, EdgeEvent::ConnectionLost { conn: 9 });
    assert_eq!(kinds(&out), ["request:SUBSCRIBE"]);
    let (tx, again, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Domain("contoso.com".into()));
    assert!(again.to().unwrap().tag().is_none());
    e.on_edge(now, final_event(tx, 12, answer(&again, 202, Some(3600))));
    let out = e.on_edge(now, notify("NOTIFY", &again, 1, "active", Some(AWAY)));
    assert_eq!(
        kinds(&out),
        ["stanza:available", "respond:200"],
        "no second subscribed"
    );

    // Inbound dialog lived on 4: kept; its next NOTIFY goes by domain.
    let out = e.on_edge(now, EdgeEvent::ConnectionLost { conn: 4 });
    assert!(out.is_empty());
    assert_eq!(e.counts(), (1, 1));
    let t = now + Duration::from_secs(10);
    let out = e.on_stanza(t, alice("phone' to='lcs.example.org'", "<show>away</show>"));
    let (tx, n, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Domain("contoso.com".into()));
    assert_eq!(n.call_id().unwrap(), "w-1");
    // Answered on connection 7: the dialog lives there now.
    ok(&mut e, t, tx, 7);
    let t = t + Duration::from_secs(10);
    let out = e.on_stanza(t, alice("phone' to='lcs.example.org'", "<show>dnd</show>"));
    assert_eq!(requests(&out)[0].2, Route::Connection(7));
}

#[test]
fn lcs_resubscribing_after_a_lost_connection_is_the_same_watcher() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (_, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    e.on_edge(now, EdgeEvent::ConnectionLost { conn: 4 });
    let out = e.on_edge(now, lcs_subscribe("w-2", Some(3600)));
    // No new `subscribe` to Alice, no second record.
    assert_eq!(
        kinds(&out),
        ["persist:approved", "respond:202", "request:NOTIFY"]
    );
    assert_eq!(requests(&out)[0].2, Route::Connection(4));
    assert_eq!(e.counts(), (0, 1));
    // A failing NOTIFY (timeout) backs off and goes by domain next time.
    let (tx, _, _) = requests(&out).remove(0);
    e.on_edge(now, EdgeEvent::Transaction(TxEvent::Timeout { tx }));
    let t = now + Duration::from_secs(1);
    assert!(requests(&e.on_stanza(t, alice("phone' to='lcs.example.org'", ""))).is_empty());
    let at = e.poll_timeout().unwrap();
    assert_eq!(at, now + Duration::from_secs(30));
    let out = e.handle_timeout(at);
    assert_eq!(requests(&out)[0].2, Route::Domain("contoso.com".into()));
    // A 481 ends the watcher.
    let (tx, _, _) = requests(&out).remove(0);
    let out = e.on_edge(
        at,
        final_event(tx, 4, Message::new_response(481, "No Subscription")),
    );
    assert_eq!(kinds(&out), ["forget:inbound"]);
    assert_eq!(e.counts(), (0, 0));
}

#[test]
fn outbound_dialogs_are_replaced_before_the_age_limit() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let sub = subscribed(&mut e, now);
    // Refresh at 3540 s stays in the dialog (3540 + 3600 < 7200).
    let t1 = now + Duration::from_secs(3540);
    assert_eq!(e.poll_timeout(), Some(t1));
    let (tx, refresh, _) = requests(&e.handle_timeout(t1)).remove(0);
    assert_eq!(refresh.call_id().unwrap(), sub.call_id().unwrap());
    e.on_edge(t1, final_event(tx, 9, answer(&refresh, 200, Some(3600))));
    // The next one would outlive 2 h: Expires 0 in the old dialog and a fresh SUBSCRIBE.
    let t2 = t1 + Duration::from_secs(3540);
    assert_eq!(e.poll_timeout(), Some(t2));
    let out = e.handle_timeout(t2);
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].1.header("Expires"), Some("0"));
    assert_eq!(reqs[0].1.call_id().unwrap(), sub.call_id().unwrap());
    assert_eq!(reqs[0].2, Route::Connection(9));
    assert!(reqs[1].1.to().unwrap().tag().is_none());
    assert_ne!(reqs[1].1.call_id().unwrap(), sub.call_id().unwrap());
    assert_eq!(reqs[1].2, Route::Domain("contoso.com".into()));
    // The new dialog's active NOTIFY: presence, no second `subscribed`.
    let (tx, fresh, _) = reqs[1].clone();
    e.on_edge(t2, final_event(tx, 9, answer(&fresh, 202, Some(3600))));
    let out = e.on_edge(t2, notify("NOTIFY", &fresh, 1, "active", Some(AWAY)));
    assert_eq!(kinds(&out), ["stanza:available", "respond:200"]);
}

// ------------------------------------------------------------------ restore, shutdown

fn record(direction: Direction, approval: Approval, expires_unix: u64) -> Subscription {
    Subscription {
        direction,
        local_jid: ALICE.into(),
        remote_aor: BOB_AOR.into(),
        dialog: None,
        expires_unix,
        state: SubState::Active,
        approval,
        last_sent: None,
        last_received: None,
        updated_unix: 1_699_999_000,
    }
}

/// Bob's watcher dialog `w-1` as the store holds it.
fn stored_dialog(local_cseq: u32, remote_cseq: u32, display: Option<&str>) -> DialogRecord {
    DialogRecord {
        call_id: "w-1".into(),
        local_tag: "ours".into(),
        remote_tag: "lcs1".into(),
        local_uri: "sip:alice@example.org".into(),
        local_display: None,
        remote_uri: BOB_AOR.into(),
        remote_display: display.map(str::to_owned),
        remote_target: "sip:bob@192.0.2.5:5061;transport=tls".into(),
        route_set: vec![],
        local_cseq,
        remote_cseq: Some(remote_cseq),
        created_unix: 1_699_999_000,
    }
}

#[test]
fn restore_resubscribes_probes_and_notifies_once_reachable() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let mut inbound = record(Direction::Inbound, Approval::Approved, 1_700_001_000);
    inbound.dialog = Some(stored_dialog(7, 3, None));
    let mut stale = record(Direction::Inbound, Approval::Approved, 1_699_999_999);
    stale.local_jid = "carol@example.org".into();
    let outbound = record(Direction::Outbound, Approval::Approved, 1_700_003_600);
    let out = e.restore(now, vec![inbound, stale, outbound].into_iter());
    assert_eq!(
        kinds(&out),
        ["forget:inbound", "persist:approved", "stanza:available"]
    );
    // The restore's stanzas are paced too (1,000/s): the probe comes 1 ms later, with the
    // fresh SUBSCRIBE, second in the requests' paced sequence, after the watcher's NOTIFY
    // (which also waits for the interval).
    let first = now + Duration::from_millis(1);
    assert_eq!(e.poll_timeout(), Some(first));
    let paced = e.handle_timeout(first);
    assert_eq!(kinds(&paced), ["stanza:probe", "request:SUBSCRIBE"]);
    // The dialog's next CSeq numbers, reserved in the store before any is used.
    let d = persisted(&out)[0].dialog.clone().unwrap();
    assert_eq!(
        (d.call_id.as_str(), d.local_cseq),
        ("w-1", 7 + CSEQ_RESERVE)
    );
    let s = [stanzas(&out), stanzas(&paced)].concat();
    assert!(
        s[0].contains("from='lcs.example.org'") && s[0].contains(&format!("to='{ALICE}'")),
        "gateway presence: {}",
        s[0]
    );
    assert!(
        s[1].contains(&format!("from='{BOB}'")) && s[1].contains(&format!("to='{ALICE}'")),
        "{}",
        s[1]
    );
    let (tx, sub, route) = requests(&paced).remove(0);
    assert_eq!(route, Route::Domain("contoso.com".into()));
    assert!(sub.to().unwrap().tag().is_none());
    // Approved before the restart: no second `subscribed`.
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(3600))));
    let out = e.on_edge(now, notify("NOTIFY", &sub, 1, "active", Some(AWAY)));
    assert_eq!(kinds(&out), ["stanza:available", "respond:200"]);
    // The probe's answer arrives; the watcher's NOTIFY goes out after the interval, by
    // domain, in the restored dialog with the next CSeq.
    let out = e.on_stanza(
        now + Duration::from_secs(1),
        pres(
            &format!("from='{ALICE}/phone' to='{BOB}'"),
            "<show>dnd</show>",
        ),
    );
    assert!(requests(&out).is_empty());
    let at = e.poll_timeout().unwrap();
    assert_eq!(at, now + Duration::from_secs(5));
    let out = e.handle_timeout(at);
    let (_, n, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Domain("contoso.com".into()));
    assert_eq!(n.call_id().unwrap(), "w-1");
    assert_eq!(n.cseq().unwrap().number, 8);
    assert_eq!(n.from().unwrap().tag(), Some("ours"));
    assert!(body(&n).contains("<ep:activity>busy</ep:activity>"));
}

#[test]
fn restore_paces_its_subscribes_and_notifies_at_the_restore_rate() {
    // 10 outbound subscriptions and 10 approved watchers with dialogs, at 10 requests/s:
    // one request every 100 ms in store order, the watchers' NOTIFYs never before the
    // interval.
    let now = Instant::now();
    let mut e = engine_with(
        now,
        PresenceSettings {
            restore_rate: 10,
            ..settings()
        },
    );
    let mut records = Vec::new();
    for i in 0..10 {
        let mut r = record(Direction::Outbound, Approval::Approved, 1_700_003_600);
        r.remote_aor = format!("sip:c{i}@contoso.com");
        records.push(r);
    }
    for i in 0..10 {
        let mut r = record(Direction::Inbound, Approval::Approved, 1_700_003_600);
        r.remote_aor = format!("sip:w{i}@contoso.com");
        let mut d = stored_dialog(1, 1, None);
        d.call_id = format!("w-{i}");
        d.remote_uri = r.remote_aor.clone();
        r.dialog = Some(d);
        records.push(r);
    }
    e.restore(now, records.into_iter());
    let mut sent = Vec::new();
    while let Some(at) = e.poll_timeout() {
        if at > now + Duration::from_secs(10) {
            break;
        }
        for (tx, m, _) in requests(&e.handle_timeout(at)) {
            let method = m.method().unwrap().as_str().to_owned();
            sent.push((at.duration_since(now).as_millis(), method.clone()));
            let answer = Message::response_to(
                &m,
                if method == "SUBSCRIBE" { 202 } else { 200 },
                None,
                Some("t"),
            );
            e.on_edge(at, final_event(tx, 9, answer));
        }
    }
    let expected: Vec<(u128, String)> = (0..10)
        .map(|k| (k * 100, "SUBSCRIBE".to_owned()))
        // The 11th to 20th slots (1.0-1.9 s) are before the 5 s interval: all at 5 s.
        .chain((0..10).map(|_| (5000, "NOTIFY".to_owned())))
        .collect();
    assert_eq!(sent, expected);
}

/// The records a store holds after a crash, at worst: only the synced writes.
fn synced(store: &mut BTreeMap<(Direction, String), Subscription>, out: &[Output]) {
    for o in out {
        match o {
            Output::Persist(s) => {
                store.insert((s.direction, s.remote_aor.clone()), (**s).clone());
            }
            Output::Forget {
                direction, remote, ..
            } => {
                store.remove(&(*direction, remote.clone()));
            }
            _ => {}
        }
    }
}

#[test]
fn a_restarted_bridge_resumes_a_watcher_dialog_above_every_cseq_it_used() {
    // RFC 3261 §12.2.2: a watcher answers 500 to a NOTIFY whose CSeq is not above the last one
    // in the dialog (LCS, pjsip). The store is written on subscription and approval, not on
    // every NOTIFY; the first process here sends more NOTIFYs than one reservation covers.
    let now = Instant::now();
    let fast = PresenceSettings {
        min_notify_interval: Duration::from_secs(1),
        ..settings()
    };
    let mut e = engine_with(now, fast.clone());
    let mut store = BTreeMap::new();
    let out = e.on_edge(now, lcs_subscribe("w-1", Some(3600)));
    synced(&mut store, &out);
    let (tx, _, _) = requests(&out).remove(0);
    synced(&mut store, &ok(&mut e, now, tx, 4));
    let out = e.on_stanza(now, alice_to_bob("subscribed"));
    synced(&mut store, &out);
    let (mut tx, n, _) = requests(&out).remove(0);
    let mut last = n.cseq().unwrap().number;
    let mut t = now;
    let mut reservations = 0;
    for i in 0..CSEQ_RESERVE + 5 {
        synced(&mut store, &ok(&mut e, t, tx, 4));
        t += Duration::from_secs(2);
        let show = ["away", "dnd"][i as usize % 2];
        let out = e.on_stanza(
            t,
            pres(
                &format!("from='{ALICE}/phone' to='{BOB}'"),
                &format!("<show>{show}</show>"),
            ),
        );
        synced(&mut store, &out);
        if kinds(&out).contains(&"persist:approved".to_owned()) {
            reservations += 1;
            assert_eq!(kinds(&out), ["persist:approved", "request:NOTIFY"]);
        }
        let (next_tx, n, _) = requests(&out).remove(0);
        assert_eq!(n.cseq().unwrap().number, last + 1);
        (tx, last) = (next_tx, last + 1);
    }
    assert_eq!(
        reservations, 1,
        "one synced write per {CSEQ_RESERVE} NOTIFYs"
    );
    // Killed here. The next process resumes the dialog above every CSeq used.
    let later = t + Duration::from_secs(1);
    let mut e = engine_with(later, fast);
    let out = e.restore(later, store.into_values());
    assert_eq!(kinds(&out)[0], "persist:approved");
    let reserved = persisted(&out)[0].dialog.as_ref().unwrap().local_cseq;
    e.on_stanza(
        later,
        pres(
            &format!("from='{ALICE}/phone' to='{BOB}'"),
            "<show>xa</show>",
        ),
    );
    // After the restore's paced stanzas (the gateway's presence, the probe), the NOTIFY.
    let out = (0..10)
        .map(|_| e.handle_timeout(e.poll_timeout().unwrap()))
        .find(|out| !requests(out).is_empty())
        .unwrap();
    let (_, n, _) = requests(&out).remove(0);
    assert_eq!(n.call_id().unwrap(), "w-1");
    let cseq = n.cseq().unwrap().number;
    assert!(cseq > last, "CSeq {cseq} after {last} in the same dialog");
    assert!(cseq <= reserved, "CSeq {cseq} above the stored {reserved}");
}

#[test]
fn restore_asks_again_for_a_watcher_still_waiting_for_its_user() {
    // Alice approved while no bridge was connected (the server bounced the `subscribed`), or
    // the request never reached the server: the watcher is stored as requested.
    let now = Instant::now();
    let mut e = engine_at(now);
    let mut waiting = record(Direction::Inbound, Approval::Requested, 1_700_001_000);
    waiting.state = SubState::Pending;
    // A display name stored by an older version, with characters neither XML nor SIP carry.
    waiting.dialog = Some(stored_dialog(1, 1, Some("Bob\u{1}Ex\u{FFFE}ample\u{7f}")));
    let mut out = e.restore(now, std::iter::once(waiting));
    out.extend(e.handle_timeout(now + Duration::from_millis(1)));
    assert_eq!(
        kinds(&out),
        ["persist:requested", "stanza:available", "stanza:subscribe"]
    );
    let st = &stanzas(&out)[1];
    assert!(
        st.contains(&format!("from='{BOB}'")) && st.contains(&format!("to='{ALICE}'")),
        "{st}"
    );
    assert!(st.contains(">Bob Example</nick>"), "{st}");
    // The server answers for Alice, who approved: active in the restored dialog.
    let out = e.on_stanza(now, alice_to_bob("subscribed"));
    assert_eq!(kinds(&out), ["persist:approved", "request:NOTIFY"]);
    let (_, n, route) = requests(&out).remove(0);
    assert_eq!(n.call_id().unwrap(), "w-1");
    assert_eq!(n.header_error(), None);
    assert_eq!(n.to().unwrap().display_name, Some("Bob Example"));
    assert_eq!(route, Route::Domain("contoso.com".into()));
    assert!(
        n.header("Subscription-State")
            .unwrap()
            .starts_with("active")
    );
}

#[test]
fn restore_without_any_presence_still_notifies_closed() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let mut inbound = record(Direction::Inbound, Approval::Approved, 1_700_001_000);
    inbound.dialog = Some(stored_dialog(1, 1, None));
    e.restore(now, std::iter::once(inbound));
    let out = e.handle_timeout(now + Duration::from_secs(5));
    assert!(body(&requests(&out)[0].1).contains("<basic>closed</basic>"));
}

#[test]
fn shutdown_sends_unavailable_from_contacts_and_the_gateway() {
    let now = Instant::now();
    let mut e = engine_at(now);
    subscribed(&mut e, now);
    let out = e.shutdown();
    assert_eq!(kinds(&out), ["stanza:unavailable", "stanza:unavailable"]);
    let s = stanzas(&out);
    assert!(s[0].contains(&format!("from='{BOB}'")), "{}", s[0]);
    assert!(s[1].contains("from='lcs.example.org'"), "{}", s[1]);
    assert!(e.shutdown().len() == 1, "contacts are not repeated");
}

#[test]
fn a_benotify_leaves_no_server_transaction_behind() {
    use crate::sip::transaction::{Output as TxOutput, Transactions};
    let now = Instant::now();
    let sub = RequestSpec {
        method: Method::Subscribe,
        request_uri: BOB_AOR,
        via_sent_by: "sip.example.org",
        branch: "z9hG4bKq",
        from_display: None,
        from_uri: "sip:alice@example.org",
        from_tag: "ours",
        to_display: None,
        to_uri: BOB_AOR,
        to_tag: None,
        call_id: "c",
        cseq: 1,
        contact: None,
        route: &[],
    }
    .build();
    let EdgeEvent::Request { request, .. } = notify("BENOTIFY", &sub, 1, "active", Some(AWAY))
    else {
        unreachable!()
    };
    let mut t = Transactions::default();
    t.receive(now, 3, request);
    assert!(matches!(
        t.poll_output(),
        Some(TxOutput::Event(TxEvent::Request { conn: 3, .. }))
    ));
    assert_eq!(t.len(), (0, 0));
}

/// A new LCS watcher `from` (`user@domain`) subscribing to local user `to` (`user`).
fn watcher_subscribe(from: &str, to: &str, call_id: &str) -> EdgeEvent {
    let raw = format!(
        "SUBSCRIBE sip:{to}@example.org SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bK{call_id}\nMax-Forwards: 70\nFrom: <sip:{from}>;tag=t{call_id}\nTo: <sip:{to}@example.org>\nCall-ID: {call_id}\nCSeq: 1 SUBSCRIBE\nContact: <sip:{from};transport=tls>\nEvent: presence\nExpires: 3600\nContent-Length: 0\n\n"
    );
    EdgeEvent::Request {
        tx: TxIds::default().next(),
        conn: 4,
        request: Message::parse(raw.replace('\n', "\r\n").as_bytes()).unwrap(),
        asserted: None,
    }
}

#[test]
fn pending_subscriptions_are_limited_per_local_user_and_per_remote_domain() {
    // settings(): at most 2 pending per local user, 3 per remote domain.
    let now = Instant::now();
    let mut e = engine_at(now);
    let status = |out: &[Output]| responses(out)[0].status().unwrap();
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("w1@contoso.com", "alice", "c1"))),
        202
    );
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("w2@contoso.com", "alice", "c2"))),
        202
    );
    // A third for alice: refused, no subscribe stanza for her, nothing stored.
    let out = e.on_edge(now, watcher_subscribe("w3@contoso.com", "alice", "c3"));
    assert_eq!(kinds(&out), ["respond:503"]);
    let r = &responses(&out)[0];
    assert_eq!(
        r.reason(),
        Some("Too many pending subscriptions for this user (presence.max_pending_per_user)")
    );
    assert_eq!(r.header("Retry-After"), Some("600"));
    // The same watcher subscribing again in a new dialog is not a new pending one.
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("w1@contoso.com", "alice", "c1b"))),
        202
    );
    // Alice approves w1: room for one more.
    let w1 = "w1\\40contoso.com@lcs.example.org";
    e.on_stanza(
        now,
        pres(&format!("from='{ALICE}' to='{w1}' type='subscribed'"), ""),
    );
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("w3@contoso.com", "alice", "c4"))),
        202
    );
    // contoso.com now has two pending (w2, w3); one more for carol, then its limit.
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("w4@contoso.com", "carol", "c5"))),
        202
    );
    let out = e.on_edge(now, watcher_subscribe("w5@contoso.com", "dave", "c6"));
    assert_eq!(
        responses(&out)[0].reason(),
        Some("Too many pending subscriptions from contoso.com (presence.max_pending_per_domain)")
    );
    // Another domain is not affected (fabrikam.com, a listed partner, has 4 places); a
    // refusal (unsubscribed) frees a place.
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("x@fabrikam.com", "dave", "c7"))),
        202
    );
    for (i, user) in ["erin", "frank", "gina"].into_iter().enumerate() {
        let (from, call) = (format!("y{i}@fabrikam.com"), format!("f{i}"));
        let out = e.on_edge(now, watcher_subscribe(&from, user, &call));
        assert_eq!(status(&out), 202);
    }
    let out = e.on_edge(now, watcher_subscribe("z@fabrikam.com", "hank", "f9"));
    assert_eq!(
        responses(&out)[0].reason(),
        Some("Too many pending subscriptions from fabrikam.com (presence.max_pending_per_partner)")
    );
    assert_eq!(
        e.limit_hits()
            .iter()
            .map(|(k, n)| (*k, *n))
            .collect::<Vec<_>>(),
        [
            ("presence.max_pending_per_domain", 1),
            ("presence.max_pending_per_partner", 1),
            ("presence.max_pending_per_user", 1)
        ]
    );
    let w4 = "w4\\40contoso.com@lcs.example.org";
    e.on_stanza(
        now,
        pres(
            &format!("from='carol@example.org' to='{w4}' type='unsubscribed'"),
            "",
        ),
    );
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("w5@contoso.com", "dave", "c8"))),
        202
    );
}

#[test]
fn restore_paces_its_stanzas_at_the_restore_rate() {
    let now = Instant::now();
    let mut e = engine_with(
        now,
        PresenceSettings {
            restore_rate: 100,
            ..settings()
        },
    );
    // 300 approved watchers of 300 local users: a gateway presence and a probe for each.
    let subs: Vec<Subscription> = (0..300)
        .map(|i| {
            let mut s = record(Direction::Inbound, Approval::Approved, 1_700_001_000);
            s.local_jid = format!("user{i}@example.org");
            s
        })
        .collect();
    let out = e.restore(now, subs.into_iter());
    assert_eq!(stanzas(&out).len(), 1, "only the first stanza at once");
    let mut sent = 1;
    // At 100/s: 10 ms apart. Half a second later, 50 more.
    let out = e.handle_timeout(now + Duration::from_millis(495));
    sent += stanzas(&out).len();
    assert_eq!(sent, 50);
    // A timer that fires very late sends at most a bounded burst, then keeps the pace.
    let late = now + Duration::from_secs(60);
    let out = e.handle_timeout(late);
    assert_eq!(stanzas(&out).len(), RESTORE_STANZA_BURST);
    sent += RESTORE_STANZA_BURST;
    assert_eq!(e.poll_timeout(), Some(late + Duration::from_millis(10)));
    let mut t = late;
    while sent < 600 {
        t = e.poll_timeout().unwrap();
        sent += stanzas(&e.handle_timeout(t)).len();
    }
    assert_eq!(sent, 600);
    assert!(t >= late + Duration::from_millis(10 * (600 - 50 - 64 - 1)));
}

#[test]
fn a_stored_dialog_that_cannot_be_written_waits_for_a_new_subscribe() {
    // An older version stored a Call-ID with a control character: no request can carry it.
    let now = Instant::now();
    let mut e = engine_at(now);
    let mut inbound = record(Direction::Inbound, Approval::Approved, 1_700_001_000);
    let mut d = stored_dialog(1, 1, None);
    d.call_id = "w-\u{1}1".into();
    inbound.dialog = Some(d);
    let out = e.restore(now, std::iter::once(inbound));
    assert!(
        !kinds(&out).contains(&"persist:approved".to_owned()),
        "{:?}",
        kinds(&out)
    );
    let out = e.handle_timeout(now + Duration::from_secs(5));
    assert!(requests(&out).is_empty(), "{:?}", kinds(&out));
    // The watcher and its approval are kept: LCS's next SUBSCRIBE is answered active.
    let out = e.on_edge(now, lcs_subscribe("w-2", Some(3600)));
    assert_eq!(kinds(&out)[..2], ["persist:approved", "respond:202"]);
}
