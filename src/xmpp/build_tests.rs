//! The direct builders against xmpp-parsers' own conversion (`Element::from`): equal trees and
//! equal bytes, for hand-picked stanzas and generated ones.

use std::collections::BTreeMap;

use proptest::prelude::*;
use xmpp_parsers::chatstates::ChatState;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Id, Lang, Message, MessageType, Thread};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::nick::Nick;
use xmpp_parsers::presence::{Presence, Priority, Show, Type as PresenceType};
use xmpp_parsers::receipts::{Received, Request};

use super::{chat_state, message, presence};

/// The serialised form, after the cleaning the component link applies to every stanza
/// (minidom's writer panics on a character XML forbids); `None` when the writer refuses it.
fn bytes(el: &Element) -> Option<Vec<u8>> {
    let mut el = el.clone();
    crate::xmpp::clean_stanza(&mut el).ok()?;
    let mut out = Vec::new();
    el.write_to(&mut out).ok().map(|_| out)
}

fn same(fast: &Element, slow: &Element) -> Result<(), TestCaseError> {
    prop_assert_eq!(fast, slow);
    prop_assert_eq!(bytes(fast), bytes(slow));
    Ok(())
}

fn check_message(m: &Message) {
    let slow = Element::from(m.clone());
    let fast = message(m.clone());
    assert_eq!(fast, slow);
    assert_eq!(bytes(&fast), bytes(&slow));
    assert!(bytes(&fast).is_some());
}

fn check_presence(p: &Presence) {
    let slow = Element::from(p.clone());
    let fast = presence(p.clone());
    assert_eq!(fast, slow);
    assert_eq!(bytes(&fast), bytes(&slow));
    assert!(bytes(&fast).is_some());
}

fn jid(s: &str) -> Jid {
    Jid::new(s).unwrap()
}

/// A payload as it comes from a peer: parsed, with namespace prefix declarations.
fn parsed_form() -> Element {
    "<x xmlns='jabber:x:data' xmlns:e='urn:example' type='form' e:a='1'>\
     <field var='a'><value>1</value></field><e:b>t</e:b></x>"
        .parse()
        .unwrap()
}

#[test]
fn chat_message_as_the_bridge_sends_it() {
    let mut m = Message::chat(Some(jid("alice@xmpp.example/phone")));
    m.from = Some(jid("bob%contoso.com@lcs.example"));
    m.id = Some(Id("3fa1.9c04e2b7.m12".into()));
    m.bodies
        .insert(Lang::new(), "hello <&> 'world' \"x\"".into());
    m.thread = Some(Thread {
        parent: None,
        id: "a84b4c76e66710".into(),
    });
    m.payloads.push(ChatState::Active.into());
    m.payloads.push(Nick("Bob Example".into()).into());
    check_message(&m);
}

#[test]
fn empty_body_subject_and_thread() {
    let mut m = Message::new(None);
    m.bodies.insert(Lang::new(), String::new());
    m.subjects.insert(Lang::new(), String::new());
    m.thread = Some(Thread {
        parent: Some(String::new()),
        id: String::new(),
    });
    check_message(&m);
    check_message(&Message::new(None));
    check_message(&Message::normal(None));
}

#[test]
fn several_languages_and_types() {
    for type_ in [
        MessageType::Chat,
        MessageType::Error,
        MessageType::Groupchat,
        MessageType::Headline,
        MessageType::Normal,
    ] {
        let mut m = Message::new_with_type(type_, Some(jid("muc.example")));
        m.bodies.insert(Lang::new(), "default".into());
        m.bodies.insert(Lang("en".into()), "hello".into());
        m.bodies.insert(Lang("de-CH".into()), "grüezi".into());
        m.subjects.insert(Lang("fr".into()), "sujet".into());
        m.subjects.insert(Lang::new(), "subject".into());
        m.thread = Some(Thread {
            parent: Some("p1".into()),
            id: "t1".into(),
        });
        check_message(&m);
    }
}

#[test]
fn payloads_receipts_chat_states_and_parsed_elements() {
    let mut m = Message::chat(Some(jid("a@b.example")));
    m.payloads.push(Request.into());
    m.payloads.push(Received { id: "abc".into() }.into());
    m.payloads.push(ChatState::Composing.into());
    m.payloads.push(parsed_form());
    let mut with_texts = Element::bare("x", "urn:example");
    with_texts.append_text_node("");
    with_texts.append_text_node("a");
    with_texts.append_text_node("b");
    m.payloads.push(with_texts);
    check_message(&m);
}

#[test]
fn chat_states() {
    for s in [
        ChatState::Active,
        ChatState::Composing,
        ChatState::Gone,
        ChatState::Inactive,
        ChatState::Paused,
    ] {
        let fast = chat_state(s.clone());
        let slow = Element::from(s);
        assert_eq!(fast, slow);
        assert_eq!(bytes(&fast), bytes(&slow));
    }
}

/// Every presence type.
const PRESENCE_TYPES: [PresenceType; 8] = [
    PresenceType::None,
    PresenceType::Error,
    PresenceType::Probe,
    PresenceType::Subscribe,
    PresenceType::Subscribed,
    PresenceType::Unavailable,
    PresenceType::Unsubscribe,
    PresenceType::Unsubscribed,
];

#[test]
fn presences() {
    check_presence(&Presence::available());
    for type_ in PRESENCE_TYPES {
        for show in [
            None,
            Some(Show::Away),
            Some(Show::Chat),
            Some(Show::Dnd),
            Some(Show::Xa),
        ] {
            let mut p = Presence::new(type_.clone())
                .with_from(jid("bob%contoso.com@lcs.example"))
                .with_to(jid("alice@xmpp.example"))
                .with_id("p1".into())
                .with_priority(-5);
            p.show = show;
            p.set_status("", "In a meeting");
            p.set_status("en", "");
            p.set_status("fr", "En réunion");
            p.payloads.push(Nick("Bob".into()).into());
            p.payloads.push(parsed_form());
            check_presence(&p);
        }
    }
}

// Generated stanzas.

fn arb_jid() -> impl Strategy<Value = Option<Jid>> {
    prop::option::of(
        "([a-z0-9%.]{1,8}@)?[a-z]{1,8}\\.(com|example)(/[ -~]{1,6})?"
            .prop_filter_map("a JID", |s| Jid::new(&s).ok()),
    )
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[ -~äé€😀]{0,16}",
        1 => ".{0,8}",
        1 => Just(String::new()),
    ]
}

fn arb_texts() -> impl Strategy<Value = BTreeMap<Lang, String>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["", "en", "de", "fr-CA", "zh-Hant"]).prop_map(Lang::from),
        arb_text(),
        0..4,
    )
}

fn arb_element() -> impl Strategy<Value = Element> {
    let names = prop::sample::select(vec!["x", "item", "data", "a-b.c_d"]);
    let nss = prop::sample::select(vec![
        "urn:example",
        "jabber:x:data",
        "jabber:component:accept",
        "",
    ]);
    let leaf = (
        names.clone(),
        nss.clone(),
        prop::collection::vec(arb_text(), 0..3),
    )
        .prop_map(|(name, ns, texts)| {
            let mut el = Element::bare(name, ns);
            for t in texts {
                el.append_text_node(t);
            }
            el
        });
    leaf.prop_recursive(3, 12, 3, move |inner| {
        (
            names.clone(),
            nss.clone(),
            prop::option::of(arb_text()),
            prop::collection::vec(
                prop_oneof![inner.prop_map(Ok), arb_text().prop_map(Err)],
                0..4,
            ),
        )
            .prop_map(|(name, ns, attr, nodes)| {
                let mut el = Element::bare(name, ns);
                if let Some(v) = attr {
                    crate::xmpp::set_attr(&mut el, "v", &v);
                }
                for n in nodes {
                    match n {
                        Ok(child) => {
                            el.append_child(child);
                        }
                        Err(text) => el.append_text_node(text),
                    }
                }
                el
            })
    })
}

fn arb_payloads() -> impl Strategy<Value = Vec<Element>> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec![
                ChatState::Active,
                ChatState::Composing,
                ChatState::Gone,
                ChatState::Inactive,
                ChatState::Paused,
            ])
            .prop_map(Element::from),
            arb_text().prop_map(|n| Element::from(Nick(n))),
            Just(Element::from(Request)),
            arb_text().prop_map(|id| Element::from(Received { id })),
            Just(parsed_form()),
            arb_element(),
        ],
        0..4,
    )
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        (arb_jid(), arb_jid(), prop::option::of(arb_text())),
        prop::sample::select(vec![
            MessageType::Chat,
            MessageType::Error,
            MessageType::Groupchat,
            MessageType::Headline,
            MessageType::Normal,
        ]),
        arb_texts(),
        arb_texts(),
        prop::option::of((prop::option::of(arb_text()), arb_text())),
        arb_payloads(),
    )
        .prop_map(
            |((from, to, id), type_, bodies, subjects, thread, payloads)| Message {
                from,
                to,
                id: id.map(Id),
                type_,
                bodies,
                subjects,
                thread: thread.map(|(parent, id)| Thread { parent, id }),
                payloads,
            },
        )
}

fn arb_presence() -> impl Strategy<Value = Presence> {
    (
        (arb_jid(), arb_jid(), prop::option::of(arb_text())),
        prop::sample::select(PRESENCE_TYPES.to_vec()),
        prop::option::of(prop::sample::select(vec![
            Show::Away,
            Show::Chat,
            Show::Dnd,
            Show::Xa,
        ])),
        arb_texts(),
        any::<i8>(),
        arb_payloads(),
    )
        .prop_map(
            |((from, to, id), type_, show, statuses, priority, payloads)| Presence {
                from,
                to,
                id,
                type_,
                show,
                statuses,
                priority: Priority(priority),
                payloads,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn message_equals_xmpp_parsers_conversion(m in arb_message()) {
        same(&message(m.clone()), &Element::from(m))?;
    }

    #[test]
    fn presence_equals_xmpp_parsers_conversion(p in arb_presence()) {
        same(&presence(p.clone()), &Element::from(p))?;
    }
}
