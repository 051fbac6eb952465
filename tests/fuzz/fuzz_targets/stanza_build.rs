//! Fuzz target: every stanza the engines build from what a federation partner sends can be
//! written on the component stream.
//!
//! The input is split at 0xFF bytes (never part of UTF-8) into the peer-controlled strings: a
//! From display name, a Call-ID, a MESSAGE body, a PIDF document, a reason phrase and a
//! Content-Language / note language. They go, byte for byte, into the requests and responses a
//! partner sends in the usual exchanges (an INVITE session with a MESSAGE, a failed INVITE, a
//! watcher's SUBSCRIBE, a NOTIFY for a local user's subscription). Whatever the SIP parser
//! accepts is fed to the real IM and presence engines; each stanza they put out goes through
//! the component link's cleaning (`xmpp::clean_stanza`), and must then serialise and parse
//! back as XML.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lcs_bridge::core::address::{AddressBook, AddressMode};
use lcs_bridge::core::tables::Mappings;
use lcs_bridge::edge::event::EdgeEvent;
use lcs_bridge::engine::Output;
use lcs_bridge::engine::im::{ImEngine, ImSettings};
use lcs_bridge::engine::presence::{PresenceEngine, PresenceSettings, WallClock};
use lcs_bridge::sip::message::Message;
use lcs_bridge::sip::transaction::{TxEvent, TxIds};
use lcs_bridge::xmpp::clean_stanza;
use libfuzzer_sys::fuzz_target;
use xmpp_parsers::minidom::Element;

const LCS: &str = r"bob\40contoso.com@lcs.example.org";

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A request from the partner, raw (`{…}` fields already in); `None` if it does not parse.
fn request(raw: &[u8]) -> Option<EdgeEvent> {
    let request = Message::parse(raw).ok()?;
    Some(EdgeEvent::Request {
        tx: TxIds::default().next(),
        conn: 4,
        request,
        asserted: None,
    })
}

fn with_body(head: String, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "{head}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

fn check(out: Vec<Output>) {
    for o in out {
        if let Output::Stanza(mut el) = o {
            clean_stanza(&mut el).expect("the engines' element names are XML names");
            let mut xml = Vec::new();
            el.write_to(&mut xml).expect("a cleaned stanza serialises");
            let text = String::from_utf8(xml).expect("serialised XML is UTF-8");
            text.parse::<Element>()
                .expect("a cleaned stanza parses back as XML");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xFF);
    let mut next = || parts.next().unwrap_or_default();
    let (display, call_id, body, pidf, reason, lang) =
        (next(), next(), next(), next(), next(), next());
    let now = Instant::now();
    let book = AddressBook::new(
        AddressMode::Gateway,
        vec!["lcs.example.org".into()],
        vec!["example.org".into()],
    )
    .expect("address book");
    // Parsed once: the tables are the bridge's own, not input.
    static MAPPINGS: OnceLock<Mappings> = OnceLock::new();
    let mappings = MAPPINGS.get_or_init(Mappings::builtin).clone();
    let ids = TxIds::default();
    let clock = WallClock {
        at: now,
        unix: 1_700_000_000,
    };
    let mut im = ImEngine::new(
        ImSettings::default(),
        book.clone(),
        mappings.errors.clone(),
        ids.clone(),
        1,
        clock,
    );
    let mut presence = PresenceEngine::new(
        PresenceSettings::default(),
        book,
        mappings,
        ids,
        2,
        clock,
    );
    let head = |method: &str, cseq: u32, to_tag: &str| -> Vec<u8> {
        let mut h = format!("{method} sip:alice@example.org SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bK{cseq}\r\nMax-Forwards: 70\r\nFrom: \"").into_bytes();
        h.extend_from_slice(display);
        h.extend_from_slice(b"\" <sip:bob@contoso.com>;tag=lcs1\r\nTo: <sip:alice@example.org>");
        h.extend_from_slice(to_tag.as_bytes());
        h.extend_from_slice(b"\r\nCall-ID: ");
        h.extend_from_slice(call_id);
        h.extend_from_slice(format!("\r\nCSeq: {cseq} {method}\r\nContact: <sip:bob@192.0.2.5:5061;transport=tls>\r\nContent-Language: ").as_bytes());
        h.extend_from_slice(lang);
        h.extend_from_slice(b"\r\n");
        h
    };
    let sdp = b"v=0\r\no=- 0 0 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\nm=message 5060 sip/tcp *\r\n";

    // An IM session the partner opens, then a MESSAGE in it (its dialog from our 200).
    let invite = with_body(lossy(&head("INVITE", 1, "")), "application/sdp", sdp);
    if let Some(ev) = request(&invite) {
        let out = im.on_edge(now, ev);
        let tag = out.iter().find_map(|o| match o {
            Output::Respond { response, .. } if response.status() == Some(200) => {
                response.to().ok()?.tag().map(str::to_owned)
            }
            _ => None,
        });
        check(out);
        if let Some(tag) = tag {
            let message = with_body(
                lossy(&head("MESSAGE", 2, &format!(";tag={tag}"))),
                "text/plain; charset=UTF-8",
                body,
            );
            if let Some(ev) = request(&message) {
                check(im.on_edge(now, ev));
            }
        }
    }

    // A local user's message whose INVITE the partner refuses, with its reason phrase.
    let stanza: Element = format!(
        "<message xmlns='jabber:component:accept' from='alice@example.org/pc' to='{LCS}' type='chat' id='m1'><body>hi</body></message>"
    )
    .parse()
    .expect("stanza");
    let out = im.on_stanza(now, stanza);
    for o in &out {
        if let Output::Request { tx, request, .. } = o {
            let mut raw = b"SIP/2.0 480 ".to_vec();
            raw.extend_from_slice(reason);
            raw.extend_from_slice(b"\r\n");
            for (name, value) in request.headers() {
                if matches!(name, "Via" | "From" | "Call-ID" | "CSeq") {
                    raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
            }
            raw.extend_from_slice(b"To: <sip:bob@contoso.com>;tag=r\r\nContent-Length: 0\r\n\r\n");
            if let Ok(response) = Message::parse(&raw) {
                check(im.on_edge(
                    now,
                    EdgeEvent::Transaction(TxEvent::Response {
                        tx: *tx,
                        conn: 9,
                        response,
                        is_final: true,
                    }),
                ));
            }
        }
    }

    // A watcher's SUBSCRIBE (its display name becomes the nick of the `subscribe`).
    let mut subscribe = head("SUBSCRIBE", 1, "");
    subscribe.extend_from_slice(b"Event: presence\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n");
    if let Some(ev) = request(&subscribe) {
        check(presence.on_edge(now, ev));
    }

    // A local user's subscription to the partner's user, and the partner's NOTIFY with the
    // PIDF document (its notes and languages become `<status xml:lang>`).
    let sub: Element = format!(
        "<presence xmlns='jabber:component:accept' from='alice@example.org' to='{LCS}' type='subscribe'/>"
    )
    .parse()
    .expect("stanza");
    let out = presence.on_stanza(now, sub);
    let mut sent = None;
    for o in &out {
        if let Output::Request { tx, request, .. } = o {
            sent = Some((*tx, request.clone()));
        }
    }
    check(out);
    if let Some((tx, sub)) = sent {
        let mut ok = Message::response_to(&sub, 202, None, Some("lcs9"));
        ok.push_header("Expires", "3600");
        ok.push_header("Contact", "<sip:bob@192.0.2.5:5061;transport=tls>");
        check(presence.on_edge(
            now,
            EdgeEvent::Transaction(TxEvent::Response {
                tx,
                conn: 9,
                response: ok,
                is_final: true,
            }),
        ));
        let from_tag = sub.from().map(|f| f.tag().unwrap_or_default().to_owned());
        if let (Ok(from_tag), Ok(call)) = (from_tag, sub.call_id()) {
            let notify = with_body(
                format!(
                    "NOTIFY sip:alice@sip.example.org;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bKn\r\nMax-Forwards: 70\r\nFrom: <sip:bob@contoso.com>;tag=lcs9\r\nTo: <sip:alice@example.org>;tag={from_tag}\r\nCall-ID: {call}\r\nCSeq: 1 NOTIFY\r\nContact: <sip:bob@192.0.2.5:5061;transport=tls>\r\nEvent: presence\r\nSubscription-State: active;expires=3600\r\n"
                ),
                "application/pidf+xml",
                pidf,
            );
            if let Some(ev) = request(&notify) {
                check(presence.on_edge(now, ev));
            }
        }
    }
    check(presence.handle_timeout(now + Duration::from_secs(10)));
    check(im.handle_timeout(now + Duration::from_secs(10)));
});
