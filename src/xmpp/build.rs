//! Typed stanzas (xmpp-parsers' `Message`, `Presence`, chat states) made into the `Element` the
//! component link sends, directly.
//!
//! xmpp-parsers converts a typed stanza into an `Element` by serialising it to XML events and
//! building a tree from them again (`xso::transform`): every name, namespace and attribute is
//! copied twice and every attribute inserted through a map search per event. On the inbound
//! IM path that conversion took a third of the bridge's CPU. The functions here build the same
//! tree by hand, moving the stanza's strings into it:
//!
//! - the result is equal (`==`) to `Element::from(stanza)` for every input, and serialises to
//!   the same bytes (the tests below check both, over generated stanzas);
//! - the element and its children are in the stanza namespace of the component protocol,
//!   `jabber:component:accept` (XEP-0114 §3), which is xmpp-parsers' default namespace with
//!   its `component` feature;
//! - the child order is the one xmpp-parsers writes: for a message the bodies (by language),
//!   the subjects (by language), the thread, then the payloads; for a presence `<show/>`, the
//!   statuses (by language), `<priority/>` (always, `0` included), then the payloads;
//! - an empty language is no `xml:lang` attribute; an empty text is an empty text node (as
//!   xmpp-parsers makes it);
//! - payloads are moved in as they are, without the namespace prefix declarations a parsed
//!   element remembers (the round trip through events drops them; the component link never
//!   writes them either).
//!
//! No I/O.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use xmpp_parsers::chatstates::ChatState;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::minidom::rxml::{Namespace as XmlNamespace, NcName};
use xmpp_parsers::minidom::{Element, Node};
use xmpp_parsers::presence::{Presence, Show, Type as PresenceType};

use super::NS_COMPONENT;

/// XEP-0085 chat states.
const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";

/// The bare elements and attribute names the builders clone: a clone shares the namespace
/// (an `Arc`) and copies the short name, where `Element::builder` allocates the namespace anew
/// for every element.
struct Templates {
    /// `<message/>` and `<presence/>` with each subset of their four attributes (bit 0
    /// `from`, 1 `id`, 2 `to`, 3 `type`), the values empty: the values are filled in key order
    /// without a map search ([`with_attrs`]).
    message: [Element; 16],
    presence: [Element; 16],
    body: Element,
    subject: Element,
    thread: Element,
    show: Element,
    status: Element,
    priority: Element,
    chat_states: [Element; 5],
    lang: NcName,
    parent: NcName,
}

fn ncname(name: &str) -> NcName {
    NcName::try_from(name).expect("a constant NCName")
}

static TEMPLATES: LazyLock<Templates> = LazyLock::new(|| {
    let component = |name: &str| Element::bare(name, NS_COMPONENT);
    let chat_state = |name: &str| Element::bare(name, NS_CHATSTATES);
    let with_subsets = |name: &str| -> [Element; 16] {
        std::array::from_fn(|mask| {
            let mut el = component(name);
            for (bit, attr) in ["from", "id", "to", "type"].into_iter().enumerate() {
                if mask & (1 << bit) != 0 {
                    el.attrs_mut()
                        .insert(XmlNamespace::NONE, ncname(attr), String::new());
                }
            }
            el
        })
    };
    Templates {
        message: with_subsets("message"),
        presence: with_subsets("presence"),
        body: component("body"),
        subject: component("subject"),
        thread: component("thread"),
        show: component("show"),
        status: component("status"),
        priority: component("priority"),
        chat_states: [
            chat_state("active"),
            chat_state("composing"),
            chat_state("gone"),
            chat_state("inactive"),
            chat_state("paused"),
        ],
        lang: ncname("lang"),
        parent: ncname("parent"),
    }
});

/// Sets an attribute without a namespace on an element that does not have it yet (one map
/// search, where `Element::set_attr` makes two).
fn put(el: &mut Element, name: &NcName, value: String) {
    el.attrs_mut()
        .insert(XmlNamespace::NONE, name.clone(), value);
}

/// `<name xml:lang='lang'>text</name>`, without the attribute when `lang` is empty.
fn text_child(template: &Element, lang: Lang, text: String) -> Element {
    let mut el = template.clone();
    if !lang.0.is_empty() {
        el.attrs_mut()
            .insert(XmlNamespace::XML, TEMPLATES.lang.clone(), lang.0);
    }
    el.append_node(Node::Text(text));
    el
}

/// A stanza's root with its attributes: the template with exactly these attributes, its
/// values replaced in the map's (alphabetical) order: `from`, `id`, `to`, `type`.
fn with_attrs(
    templates: &[Element; 16],
    from: Option<Jid>,
    id: Option<String>,
    to: Option<Jid>,
    type_: Option<&str>,
) -> Element {
    let mask = usize::from(from.is_some())
        | usize::from(id.is_some()) << 1
        | usize::from(to.is_some()) << 2
        | usize::from(type_.is_some()) << 3;
    let mut el = templates[mask].clone();
    let values = [
        from.map(Jid::into_inner),
        id,
        to.map(Jid::into_inner),
        type_.map(str::to_owned),
    ];
    for (slot, value) in el
        .attrs_mut()
        .values_mut()
        .zip(values.into_iter().flatten())
    {
        *slot = value;
    }
    el
}

/// Drops the namespace prefix declarations of a payload and its descendants (what the round
/// trip through events does). Elements the bridge builds have none: one check per element.
fn without_prefixes(mut el: Element) -> Element {
    if el.prefixes.declared_prefixes().is_empty() && el.children().next().is_none() {
        // A chat state, a receipt, a nick: nothing to walk.
        return el;
    }
    let mut stack = vec![&mut el];
    while let Some(e) = stack.pop() {
        if !e.prefixes.declared_prefixes().is_empty() {
            e.prefixes = Default::default();
        }
        stack.extend(e.children_mut());
    }
    el
}

fn append_payloads(el: &mut Element, payloads: Vec<Element>) {
    for p in payloads {
        el.append_child(without_prefixes(p));
    }
}

fn append_texts(el: &mut Element, template: &Element, texts: BTreeMap<Lang, String>) {
    for (lang, text) in texts {
        el.append_child(text_child(template, lang, text));
    }
}

/// The element of a message: equal to `Element::from(message)` (module docs).
pub fn message(message: Message) -> Element {
    let t = &*TEMPLATES;
    let Message {
        from,
        to,
        id,
        type_,
        bodies,
        subjects,
        thread,
        payloads,
    } = message;
    let type_ = match type_ {
        MessageType::Chat => Some("chat"),
        MessageType::Error => Some("error"),
        MessageType::Groupchat => Some("groupchat"),
        MessageType::Headline => Some("headline"),
        // The default type is written as no attribute.
        MessageType::Normal => None,
    };
    let mut el = with_attrs(&t.message, from, id.map(|id| id.0), to, type_);
    append_texts(&mut el, &t.body, bodies);
    append_texts(&mut el, &t.subject, subjects);
    if let Some(thread) = thread {
        let mut th = t.thread.clone();
        if let Some(parent) = thread.parent {
            put(&mut th, &t.parent, parent);
        }
        th.append_node(Node::Text(thread.id));
        el.append_child(th);
    }
    append_payloads(&mut el, payloads);
    el
}

/// The element of a presence: equal to `Element::from(presence)` (module docs).
pub fn presence(presence: Presence) -> Element {
    let t = &*TEMPLATES;
    let Presence {
        from,
        to,
        id,
        type_,
        show,
        statuses,
        priority,
        payloads,
    } = presence;
    let type_ = match type_ {
        // Available: no attribute.
        PresenceType::None => None,
        PresenceType::Error => Some("error"),
        PresenceType::Probe => Some("probe"),
        PresenceType::Subscribe => Some("subscribe"),
        PresenceType::Subscribed => Some("subscribed"),
        PresenceType::Unavailable => Some("unavailable"),
        PresenceType::Unsubscribe => Some("unsubscribe"),
        PresenceType::Unsubscribed => Some("unsubscribed"),
    };
    let mut el = with_attrs(&t.presence, from, id, to, type_);
    if let Some(show) = show {
        let text = match show {
            Show::Away => "away",
            Show::Chat => "chat",
            Show::Dnd => "dnd",
            Show::Xa => "xa",
        };
        let mut sh = t.show.clone();
        sh.append_node(Node::Text(text.to_owned()));
        el.append_child(sh);
    }
    append_texts(&mut el, &t.status, statuses);
    let mut pr = t.priority.clone();
    pr.append_node(Node::Text(priority.0.to_string()));
    el.append_child(pr);
    append_payloads(&mut el, payloads);
    el
}

/// The element of a chat state notification (XEP-0085 §5): equal to `Element::from(state)`.
pub fn chat_state(state: ChatState) -> Element {
    let i = match state {
        ChatState::Active => 0,
        ChatState::Composing => 1,
        ChatState::Gone => 2,
        ChatState::Inactive => 3,
        ChatState::Paused => 4,
    };
    TEMPLATES.chat_states[i].clone()
}

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
