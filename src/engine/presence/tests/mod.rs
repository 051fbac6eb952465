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
        enhanced: true,
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

/// A compact trace of the outputs' kinds, to check their order (facts for the other engines
/// left out: they are no action).
fn kinds(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter(|o| !matches!(o, Output::Fact(_)))
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
            Output::Fact(_) => "fact".into(),
            Output::PersistIm { .. } | Output::ForgetIm { .. } => "im-store".into(),
            Output::Admin { .. } | Output::AdminReply { .. } => "admin".into(),
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

// ------------------------------------------------------------------ inbound

fn lcs_subscribe(call_id: &str, expires: Option<u32>) -> EdgeEvent {
    lcs_subscribe_from("bob", "Bob Example", call_id, expires)
}

/// A SUBSCRIBE for Alice from LCS user `user`@contoso.com (display name `display`), on
/// connection 4.
fn lcs_subscribe_from(user: &str, display: &str, call_id: &str, expires: Option<u32>) -> EdgeEvent {
    let expires = expires
        .map(|e| format!("Expires: {e}\n"))
        .unwrap_or_default();
    let raw = format!(
        "SUBSCRIBE sip:alice@example.org SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bK{call_id}\nMax-Forwards: 70\nFrom: \"{display}\" <sip:{user}@contoso.com>;tag=lcs1\nTo: <sip:alice@example.org>\nCall-ID: {call_id}\nCSeq: 1 SUBSCRIBE\nContact: <sip:{user}@192.0.2.5:5061;transport=tls>\nEvent: presence\nAccept: application/pidf+xml\n{expires}Content-Length: 0\n\n"
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

mod enhanced;
mod key;
mod local;
mod notifier;
mod restore;
mod subscriber;
