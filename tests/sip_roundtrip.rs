//! Property tests: print∘parse round-trips generated SIP messages, byte for byte, and the
//! stream framer cuts any concatenation of them, split anywhere, into the same messages.

#![allow(clippy::unwrap_used)]

use lcs_bridge::sip::builder::name_addr;
use lcs_bridge::sip::framing::{Frame, Framer};
use lcs_bridge::sip::message::{Limits, Message, Method};
use proptest::prelude::*;

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::Invite),
        Just(Method::Ack),
        Just(Method::Bye),
        Just(Method::Cancel),
        Just(Method::Options),
        Just(Method::Message),
        Just(Method::Subscribe),
        Just(Method::Notify),
        Just(Method::Info),
        Just(Method::Benotify),
        Just(Method::Service),
        "[A-Z]{2,10}".prop_map(|m| Method::parse(&m).unwrap()),
    ]
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,8}(\\.[a-z]{2,6}){1,2}",
        "(25[0-5]|1[0-9]{2}|[1-9]?[0-9])(\\.(25[0-5]|1[0-9]{2}|[1-9]?[0-9])){3}",
        Just("[2001:db8::1]".to_owned()),
    ]
}

fn uri() -> impl Strategy<Value = String> {
    (
        "[a-zA-Z0-9._!~*'()&=+$,;?/-]{1,12}",
        host(),
        proptest::option::of(1u16..),
        proptest::option::of("[a-z]{1,6}=[a-z0-9]{1,6}"),
    )
        .prop_map(|(u, h, p, param)| {
            let mut s = format!("sip:{u}@{h}");
            if let Some(p) = p {
                s.push_str(&format!(":{p}"));
            }
            if let Some(param) = param {
                s.push_str(&format!(";{param}"));
            }
            s
        })
}

fn value() -> impl Strategy<Value = String> {
    "[!-~]([ -~é€]{0,40}[!-~])?"
}

#[derive(Debug, Clone)]
struct Spec {
    request: Option<(Method, String)>,
    status: (u16, String),
    vias: Vec<(String, String)>,
    join_vias: bool,
    from: (Option<String>, String, String, Option<String>),
    to: (Option<String>, String, Option<String>),
    call_id: String,
    cseq: u32,
    cseq_method: Method,
    extra: Vec<(String, String)>,
    body: Vec<u8>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        proptest::option::of((method(), uri())),
        (100u16..700, "[ -~]{0,20}"),
        proptest::collection::vec((host(), "[a-zA-Z0-9]{1,16}"), 1..4),
        any::<bool>(),
        (
            proptest::option::of("[ -~]{0,16}"),
            uri(),
            "[a-z0-9]{1,10}",
            proptest::option::of("[0-9a-f]{8}"),
        ),
        (
            proptest::option::of("[ -~]{0,16}"),
            uri(),
            proptest::option::of("[a-z0-9]{1,10}"),
        ),
        "[!-~]{1,30}",
        0u32..(1 << 31),
        method(),
        proptest::collection::vec(("(X|ms|Ms)-[A-Za-z0-9-]{1,12}", value()), 0..6),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(
            |(
                request,
                status,
                vias,
                join_vias,
                from,
                to,
                call_id,
                cseq,
                cseq_method,
                extra,
                body,
            )| Spec {
                request,
                status,
                vias,
                join_vias,
                from,
                to,
                call_id,
                cseq,
                cseq_method,
                extra,
                body,
            },
        )
}

fn build(s: &Spec) -> Message {
    let (mut m, cseq_method) = match &s.request {
        Some((method, uri)) => (Message::new_request(method.clone(), uri), method.clone()),
        None => (
            Message::new_response(s.status.0, s.status.1.trim()),
            s.cseq_method.clone(),
        ),
    };
    let vias: Vec<String> = s
        .vias
        .iter()
        .map(|(h, b)| format!("SIP/2.0/TLS {h}:5061;branch=z9hG4bK{b};ms-received-port=5061"))
        .collect();
    if s.join_vias {
        m.push_header("Via", &vias.join(", "));
    } else {
        for v in &vias {
            m.push_header("v", v);
        }
    }
    m.push_header("Max-Forwards", "70");
    let mut from_params = vec![("tag", s.from.2.as_str())];
    if let Some(e) = &s.from.3 {
        from_params.push(("epid", e));
    }
    m.push_header(
        "From",
        &name_addr(s.from.0.as_deref(), &s.from.1, &from_params),
    );
    let to_params: Vec<(&str, &str)> = s.to.2.iter().map(|t| ("tag", t.as_str())).collect();
    m.push_header("t", &name_addr(s.to.0.as_deref(), &s.to.1, &to_params));
    m.push_header("Call-ID", &s.call_id);
    m.push_header("CSeq", &format!("{} {}", s.cseq, cseq_method));
    for (n, v) in &s.extra {
        m.push_header(n, v);
    }
    m.set_body(Some("application/octet-stream"), s.body.clone());
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn print_parse_round_trips(s in spec()) {
        let m = build(&s);
        let bytes = m.to_bytes();
        let parsed = Message::parse(&bytes).map_err(|e| TestCaseError::fail(format!("{e}\n{}", String::from_utf8_lossy(&bytes))))?;
        prop_assert_eq!(&parsed, &m);
        prop_assert_eq!(parsed.to_bytes(), bytes);
        prop_assert_eq!(parsed.via().unwrap().len(), s.vias.len());
        prop_assert_eq!(parsed.from().unwrap().tag(), Some(s.from.2.as_str()));
        prop_assert_eq!(parsed.from().unwrap().epid(), s.from.3.as_deref());
        prop_assert_eq!(parsed.to().unwrap().tag(), s.to.2.as_deref());
        prop_assert_eq!(parsed.call_id().unwrap(), s.call_id.as_str());
        prop_assert_eq!(parsed.body(), &s.body[..]);
        for (n, v) in &s.extra {
            prop_assert!(parsed.header_all(n).any(|x| x == v));
        }
    }

    #[test]
    fn framer_splits_anywhere(specs in proptest::collection::vec(spec(), 1..4), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8), pings in any::<bool>()) {
        let messages: Vec<Message> = specs.iter().map(build).collect();
        let mut stream = Vec::new();
        for m in &messages {
            if pings {
                stream.extend_from_slice(b"\r\n\r\n");
            }
            m.write_to(&mut stream);
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut f = Framer::new(Limits::default());
        let mut got = Vec::new();
        let mut pinged = 0;
        for w in points.windows(2) {
            f.push(&stream[w[0]..w[1]]);
            while let Some(frame) = f.next_frame().unwrap() {
                match frame {
                    Frame::Message(m) => got.push(m),
                    Frame::Ping => pinged += 1,
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
        prop_assert_eq!(got, messages);
        prop_assert_eq!(pinged, if pings { specs.len() } else { 0 });
        prop_assert_eq!(f.buffered(), 0);
    }
}
