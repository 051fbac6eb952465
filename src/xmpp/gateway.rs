//! The gateway's own answers to IQ requests, and stanza error replies. No I/O, no clock; every
//! input is untrusted and no input panics.
//!
//! [`handle_iq`] takes an `<iq/>` as received on the component stream (XEP-0114, namespace
//! `jabber:component:accept`) and returns the reply to send back, or `None` for an IQ that must
//! not be answered (a result or error). [`error_reply`] builds an error stanza for any iq,
//! message or presence; the IM engine uses it for messages too.
//!
//! # Standards
//!
//! - **XEP-0030 §3** (disco#info) and **§4** (disco#items): every component domain is a
//!   `gateway`/`lcs` identity with the configured name ([`GatewayInfo::name`]) and the features
//!   of [`component_features`]; disco#items is empty; a query naming a `node` gets
//!   `item-not-found` (the gateway has no nodes).
//! - **XEP-0100 §4.1** (a gateway answers disco#info with category `gateway` and the legacy
//!   service as type; `lcs` is the registered type for Microsoft Live Communications Server)
//!   and **§6.3** (`jabber:iq:gateway`): a get returns `<desc/>` and `<prompt/>`; a set with the
//!   LCS address in `<prompt/>` returns the contact's JID in `<jid/>` (the schema's choice is
//!   `desc?, prompt` *or* `jid`, so only `<jid/>` is returned).
//! - **XEP-0106**: the feature `jid\20escaping` ([`JID_ESCAPING_FEATURE`]) in gateway mode.
//! - **XEP-0199**: a ping get is answered with an empty result.
//! - **XEP-0092**: a version get on a component domain is answered with name, version and os.
//! - **RFC 6120 §8.2.3**: an IQ get or set carries exactly one payload (else `bad-request`) and
//!   always gets a result or an error — never silence; results and errors are never answered.
//!   A payload namespace the addressed entity does not offer gets `service-unavailable`
//!   (§8.3.3.19); an offered namespace used with an element or type the gateway does not
//!   implement gets `feature-not-implemented` (§8.3.3.3).
//! - **RFC 6120 §8.3** (stanza errors): [`error_reply`] swaps `from` and `to`, keeps `id` (an
//!   `<iq/>` without one gets `id=''`, §8.3.1 rule 3), sets `type='error'`, echoes the original
//!   payload as a courtesy (§8.3.1 rule 6, bounded by [`MAX_ECHO_BYTES`]) and adds
//!   `<error type='…'>` with the defined condition and an optional English `<text/>`; the type
//!   is [`Condition::error_type`] (§8.3.3).
//! - **RFC 6121 §8.5** (a server answers for the bare JID of an account it hosts): the gateway
//!   answers for the LCS contacts under its domains, see below.
//!
//! # What is answered
//!
//! | addressed to | payload | answer |
//! | --- | --- | --- |
//! | component domain (`lcs.example.org`; in direct mode each LCS domain) | disco#info get | identity `gateway`/`lcs`/name, [`component_features`] |
//! | component domain | disco#items get | empty result |
//! | component domain | `jabber:iq:gateway` get / set | prompt / `<jid/>` of the contact |
//! | component domain | ping get | empty result |
//! | component domain | version get | name, version, os |
//! | contact (`joe\40contoso.com@lcs.example.org`, `joe@contoso.com`) | disco#info get | bare JID: identity `account`/`registered`; with a resource (a GRUU, one LCS endpoint): `client`/`pc`; [`contact_features`] |
//! | contact | disco#items get | empty result |
//! | contact | ping get | empty result |
//! | contact | vcard-temp get, XEP-0292 `<vcard/>` get, pubsub items of `urn:xmpp:vcard4` | [`vcard_reply`]: to a user of a local domain, the contact's last known display name and SIP address; `item-not-found` when no name is known, and to anyone else |
//! | contact that names no LCS address | anything | `item-not-found` with the address error |
//! | a domain that is no component domain | anything | `service-unavailable` |
//! | anyone | a disco query with `node` | `item-not-found` |
//! | anyone | another namespace | `service-unavailable` |
//! | anyone | an offered namespace, other element or type | `feature-not-implemented` |
//! | anyone | zero or several payloads, no `id`, unknown `type` | `bad-request` |
//! | anyone | `to` that is not a JID | `jid-malformed` |
//!
//! A contact's ping is answered by the gateway: it shows that the path to the bridge works,
//! not that the LCS user is online (presence says that). Version and `jabber:iq:gateway` belong
//! to the gateway, so a contact answers them with `service-unavailable` — the bridge does not
//! know the software of an LCS endpoint.
//!
//! An IQ without `from` cannot be answered (the reply would have no addressee) and gives
//! `None`; an IQ without `to` is taken as addressed to the (first) component domain, which
//! becomes the reply's `from`.

use std::collections::{BTreeMap, BTreeSet};

use minidom::Element;
use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::ns;
use xmpp_parsers::stanza_error::StanzaError;
use xmpp_parsers::version::VersionResult;

use crate::core::address::{AddressBook, AddressMode, JID_ESCAPING_FEATURE, check_scheme, shown};
use crate::core::errors::Condition;
use crate::sip::uri::{Host, SipUri};
use crate::xmpp::{attr, set_attr, with_attr};

/// The XEP-0100 §6.3 namespace.
pub const NS_GATEWAY: &str = "jabber:iq:gateway";

/// XEP-0030 identity category of a component domain (XEP-0100 §4.1).
pub const IDENTITY_CATEGORY: &str = "gateway";
/// XEP-0030 identity type of a component domain: the registered type for Microsoft Live
/// Communications Server.
pub const IDENTITY_TYPE: &str = "lcs";

/// `<prompt/>` of the `jabber:iq:gateway` get: the name of the item asked for.
pub const GATEWAY_PROMPT: &str = "LCS address";
/// `<desc/>` of the `jabber:iq:gateway` get, gateway mode.
pub const GATEWAY_DESC: &str = "Please enter the LCS address (user@domain, for example \
joe@contoso.com, or sip:joe@contoso.com) of the person you would like to contact.";
/// `<desc/>` of the `jabber:iq:gateway` get, direct mode: a user part alone takes the domain
/// asked.
pub const GATEWAY_DESC_DIRECT: &str = "Please enter the LCS address (user@domain, for example \
joe@contoso.com, or sip:joe@contoso.com) of the person you would like to contact; a user name \
alone is taken to be in this gateway's domain.";

/// At most this many bytes of the original payload are echoed in an error stanza (RFC 6120
/// §8.3.1 rule 6: the echo is a courtesy and MUST NOT be included when harmful, e.g. when it
/// would exceed a size limit). A larger payload is left out entirely, so an error reply stays
/// well under the stanza limits of XMPP servers.
pub const MAX_ECHO_BYTES: usize = 16 * 1024;

/// `xml:lang` of the `<text/>` in error stanzas.
pub const ERROR_TEXT_LANG: &str = "en";

/// What the gateway says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayInfo {
    /// The disco identity name and the XEP-0092 `<name/>`: `xmpp.gateway_name`.
    pub name: String,
    /// XEP-0092 `<version/>`: `env!("CARGO_PKG_VERSION")`.
    pub version: String,
    /// XEP-0092 `<os/>`, left out when `None`.
    pub os: Option<String>,
}

impl GatewayInfo {
    /// The gateway named `name`, this crate's version, no operating system.
    pub fn new(name: impl Into<String>) -> GatewayInfo {
        GatewayInfo {
            name: name.into(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            os: None,
        }
    }
}

/// The disco#info features of a component domain, in the order they are sent (sorted):
/// disco#info and disco#items (answered here), `jabber:iq:gateway` (XEP-0100 §6.3),
/// `urn:xmpp:ping`, `jabber:iq:version`, chat states (XEP-0085) and receipts (XEP-0184) (the
/// engine translates them), ad-hoc commands (XEP-0050 §2.1: the administrators' commands,
/// `engine::admin`), and `jid\20escaping` (XEP-0106) in gateway mode only.
pub fn component_features(mode: AddressMode) -> Vec<&'static str> {
    let mut features: BTreeSet<&'static str> = [
        "http://jabber.org/protocol/commands",
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        NS_GATEWAY,
        ns::PING,
        ns::VERSION,
        ns::CHATSTATES,
        ns::RECEIPTS,
    ]
    .into_iter()
    .collect();
    if mode == AddressMode::Gateway {
        features.insert(JID_ESCAPING_FEATURE);
    }
    features.into_iter().collect()
}

/// The disco#info features of an LCS contact, sorted: disco#info, disco#items, ping (answered
/// here), vcard-temp ([`vcard_reply`]), chat states and receipts (the engine translates them).
pub fn contact_features() -> Vec<&'static str> {
    let features: BTreeSet<&'static str> = [
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        ns::PING,
        ns::CHATSTATES,
        ns::RECEIPTS,
        NS_VCARD_TEMP,
    ]
    .into_iter()
    .collect();
    features.into_iter().collect()
}

/// XEP-0054 (vcard-temp).
pub const NS_VCARD_TEMP: &str = "vcard-temp";
/// RFC 6351 vCard XML, as XEP-0292 carries it.
pub const NS_VCARD4: &str = "urn:ietf:params:xml:ns:vcard-4.0";
/// The PEP node of XEP-0292.
pub const NODE_VCARD4: &str = "urn:xmpp:vcard4";
/// XEP-0060.
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";

/// The vCard of an LCS contact, for an IQ get addressed to one (bare JID or GRUU): vcard-temp
/// (XEP-0054 §3.1) with `FN` and `NICKNAME` the contact's last known display name and `URL` its
/// SIP address of record; XEP-0292's vCard4 in `<vcard/>` (the IQ form of its earlier
/// versions) and as the `current` item of the PEP node `urn:xmpp:vcard4` (its present form),
/// with `fn`, `nickname` and `impp`. `name_of` gives the name known for an AOR; with none, the
/// answer is `item-not-found` (XEP-0054 §3.1: no vCard; XEP-0060 §6.5.9.11: no such node).
/// Only users of the local domains get a name: to anyone else (a user of another XMPP server,
/// reaching the component over server-to-server) the answer is the same `item-not-found` as for
/// a contact whose name is unknown, so that the names LCS sends the bridge's users are not
/// given out to the world, and the answer does not tell whether one is known.
///
/// `None` for every other IQ (not a get, not to a contact, another payload): [`handle_iq`]
/// answers those.
pub fn vcard_reply(
    iq: &Element,
    book: &AddressBook,
    name_of: &dyn Fn(&str) -> Option<String>,
) -> Option<Element> {
    if iq.name() != "iq" || iq.attr("type") != Some("get") || iq.attr("id").is_none() {
        return None;
    }
    let from = iq.attr("from")?;
    let to = Jid::new(iq.attr("to")?).ok()?;
    if to.node().is_none() || !book.is_component_domain(to.domain().as_str()) {
        return None;
    }
    let local = Jid::new(from).is_ok_and(|f| book.is_local_domain(f.domain().as_str()));
    let mut children = iq.children();
    let (Some(payload), None) = (children.next(), children.next()) else {
        return None;
    };
    enum Form {
        Temp,
        Four,
        Pep,
    }
    let form = if payload.is("vCard", NS_VCARD_TEMP) {
        Form::Temp
    } else if payload.is("vcard", NS_VCARD4) {
        Form::Four
    } else if payload.is("pubsub", NS_PUBSUB)
        && payload
            .get_child("items", NS_PUBSUB)
            .is_some_and(|i| i.attr("node") == Some(NODE_VCARD4))
        && payload.children().count() == 1
    {
        Form::Pep
    } else {
        return None;
    };
    let aor = book.jid_to_sip(&to).ok()?.aor().to_uri();
    let Some(name) = name_of(&aor).filter(|_| local) else {
        let text = format!("no vCard: the gateway knows no name for {aor}");
        return Some(error_reply(iq, Condition::ItemNotFound, Some(&text)));
    };
    let text = |ns: &str, el: &str, value: &str| {
        Element::builder(el, ns)
            .append(Element::builder("text", ns).append(value))
            .build()
    };
    let four = || {
        Element::builder("vcard", NS_VCARD4)
            .append(text(NS_VCARD4, "fn", &name))
            .append(text(NS_VCARD4, "nickname", &name))
            .append(
                Element::builder("impp", NS_VCARD4)
                    .append(Element::builder("uri", NS_VCARD4).append(aor.as_str())),
            )
            .build()
    };
    let payload = match form {
        Form::Temp => Element::builder("vCard", NS_VCARD_TEMP)
            .append(Element::builder("FN", NS_VCARD_TEMP).append(name.as_str()))
            .append(Element::builder("NICKNAME", NS_VCARD_TEMP).append(name.as_str()))
            .append(Element::builder("URL", NS_VCARD_TEMP).append(aor.as_str()))
            .build(),
        Form::Four => four(),
        Form::Pep => Element::builder("pubsub", NS_PUBSUB)
            .append(
                attr(Element::builder("items", NS_PUBSUB), "node", NODE_VCARD4).append(
                    attr(Element::builder("item", NS_PUBSUB), "id", "current").append(four()),
                ),
            )
            .build(),
    };
    Some(result_reply(iq, Some(payload)))
}

/// The entity an IQ is addressed to.
enum Entity {
    /// A component domain (the gateway itself).
    Component(String),
    /// An LCS contact under a component domain; `bare` when the JID has no resource.
    Contact { bare: bool },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Get,
    Set,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Get => "get",
            Kind::Set => "set",
        }
    }
}

/// Answers an IQ addressed to a component domain or to an LCS contact under one (see the module
/// documentation for what is answered). Returns the reply — a result or an error, in the IQ's
/// namespace, `from`/`to` swapped, same `id` — or `None` when `iq` is not an `<iq/>`, is a
/// result or an error (never answered, RFC 6120 §8.2.3), or has no `from`.
pub fn handle_iq(iq: &Element, book: &AddressBook, info: &GatewayInfo) -> Option<Element> {
    if iq.name() != "iq" {
        return None;
    }
    iq.attr("from")?;
    if matches!(iq.attr("type"), Some("result" | "error")) {
        return None;
    }
    let reply = answer(iq, book, info);
    Some(match (iq.attr("to"), book.component_domains().first()) {
        (None, Some(domain)) => with_attr(reply, "from", domain),
        _ => reply,
    })
}

fn answer(iq: &Element, book: &AddressBook, info: &GatewayInfo) -> Element {
    let kind = match iq.attr("type") {
        Some("get") => Kind::Get,
        Some("set") => Kind::Set,
        Some(other) => {
            let text = format!(
                "IQ type {:?} is not one of get, set, result, error (RFC 6120 §8.2.3)",
                shown(other)
            );
            return error_reply(iq, Condition::BadRequest, Some(&text));
        }
        None => {
            return error_reply(
                iq,
                Condition::BadRequest,
                Some("IQ has no type (RFC 6120 §8.2.3)"),
            );
        }
    };
    // The reply would get an empty id (RFC 6120 §8.3.1 rule 3); the error says why.
    if iq.attr("id").is_none() {
        return error_reply(
            iq,
            Condition::BadRequest,
            Some("IQ has no id (RFC 6120 §8.2.3)"),
        );
    }
    let entity = match addressee(iq, book) {
        Ok(entity) => entity,
        Err((condition, text)) => return error_reply(iq, condition, Some(&text)),
    };
    let payloads: Vec<&Element> = iq.children().collect();
    let [payload] = payloads.as_slice() else {
        let text = format!(
            "an IQ {} carries exactly one payload element, this one has {} (RFC 6120 §8.2.3)",
            kind.as_str(),
            payloads.len()
        );
        return error_reply(iq, Condition::BadRequest, Some(&text));
    };
    let namespace = payload.ns();
    let offered: &[&str] = match entity {
        Entity::Component(_) => &[
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            NS_GATEWAY,
            ns::PING,
            ns::VERSION,
        ],
        // vCard gets are answered by `vcard_reply`; what reaches here (a set) is not
        // implemented.
        Entity::Contact { .. } => &[
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::PING,
            NS_VCARD_TEMP,
            NS_VCARD4,
        ],
    };
    if !offered.contains(&namespace.as_str()) {
        let who = match entity {
            Entity::Component(_) => "the gateway",
            Entity::Contact { .. } => "an LCS contact",
        };
        let text = format!(
            "{who} offers no service in namespace {:?}",
            shown(&namespace)
        );
        return error_reply(iq, Condition::ServiceUnavailable, Some(&text));
    }
    match (namespace.as_str(), payload.name(), kind, &entity) {
        (ns::DISCO_INFO | ns::DISCO_ITEMS, "query", Kind::Get, _)
            if payload.attr("node").is_some() =>
        {
            let text = format!(
                "no disco node {:?} here",
                shown(payload.attr("node").unwrap_or_default())
            );
            error_reply(iq, Condition::ItemNotFound, Some(&text))
        }
        (ns::DISCO_INFO, "query", Kind::Get, Entity::Component(_)) => {
            let name = (!info.name.is_empty()).then(|| info.name.clone());
            let identity = Identity {
                category: IDENTITY_CATEGORY.to_owned(),
                type_: IDENTITY_TYPE.to_owned(),
                lang: None,
                name,
            };
            disco_info(iq, identity, &component_features(book.mode()))
        }
        (ns::DISCO_INFO, "query", Kind::Get, Entity::Contact { bare }) => {
            let (category, type_) = if *bare {
                ("account", "registered")
            } else {
                ("client", "pc")
            };
            let identity = Identity {
                category: category.to_owned(),
                type_: type_.to_owned(),
                lang: None,
                name: None,
            };
            disco_info(iq, identity, &contact_features())
        }
        (ns::DISCO_ITEMS, "query", Kind::Get, _) => {
            let items = DiscoItemsResult {
                node: None,
                items: Vec::new(),
                rsm: None,
            };
            result_reply(iq, Some(items.into()))
        }
        (ns::PING, "ping", Kind::Get, _) => result_reply(iq, None),
        (ns::VERSION, "query", Kind::Get, _) => {
            let version = VersionResult {
                name: info.name.clone(),
                version: info.version.clone(),
                os: info.os.clone(),
            };
            result_reply(iq, Some(version.into()))
        }
        (NS_GATEWAY, "query", Kind::Get, _) => {
            let desc = match book.mode() {
                AddressMode::Gateway => GATEWAY_DESC,
                AddressMode::Direct => GATEWAY_DESC_DIRECT,
            };
            let query = Element::builder("query", NS_GATEWAY)
                .append(Element::builder("desc", NS_GATEWAY).append(desc))
                .append(Element::builder("prompt", NS_GATEWAY).append(GATEWAY_PROMPT))
                .build();
            result_reply(iq, Some(query))
        }
        (NS_GATEWAY, "query", Kind::Set, Entity::Component(domain)) => {
            let Some(prompt) = payload.get_child("prompt", NS_GATEWAY) else {
                return error_reply(
                    iq,
                    Condition::BadRequest,
                    Some("expected the LCS address in <prompt/> (XEP-0100 §6.3)"),
                );
            };
            match translate(&prompt.text(), book, domain) {
                Ok(jid) => {
                    let query = Element::builder("query", NS_GATEWAY)
                        .append(Element::builder("jid", NS_GATEWAY).append(jid.as_str()))
                        .build();
                    result_reply(iq, Some(query))
                }
                Err((condition, text)) => error_reply(iq, condition, Some(&text)),
            }
        }
        (_, name, kind, _) => {
            let text = format!(
                "<{}/> in namespace {:?} with type {} is not implemented",
                shown(name),
                shown(&namespace),
                kind.as_str()
            );
            error_reply(iq, Condition::FeatureNotImplemented, Some(&text))
        }
    }
}

/// Who `to` addresses, or the error for an addressee the gateway cannot answer for.
fn addressee(iq: &Element, book: &AddressBook) -> Result<Entity, (Condition, String)> {
    let Some(to) = iq.attr("to") else {
        return match book.component_domains().first() {
            Some(domain) => Ok(Entity::Component(domain.clone())),
            None => Err((
                Condition::ServiceUnavailable,
                "no component domain is configured".to_owned(),
            )),
        };
    };
    let jid = Jid::new(to).map_err(|e| {
        (
            Condition::JidMalformed,
            format!("'to' {:?} is not a valid JID: {e}", shown(to)),
        )
    })?;
    let domain = jid.domain().as_str();
    if !book.is_component_domain(domain) {
        return Err((
            Condition::ServiceUnavailable,
            format!("{:?} is not a domain of this gateway", shown(domain)),
        ));
    }
    if jid.node().is_none() {
        return Ok(Entity::Component(domain.to_owned()));
    }
    match book.jid_to_sip(&jid) {
        Ok(_) => Ok(Entity::Contact {
            bare: jid.resource().is_none(),
        }),
        Err(e) => Err((Condition::ItemNotFound, e.to_string())),
    }
}

/// URI schemes recognised at the start of a `jabber:iq:gateway` prompt (XEP-0106 §5: a URI's
/// scheme is removed and the address decoded); only `sip:` is accepted.
const PROMPT_SCHEMES: [&str; 7] = ["sip", "sips", "tel", "im", "pres", "mailto", "xmpp"];

/// Translates what a user typed into a `jabber:iq:gateway` prompt into the contact's JID:
/// `user@domain` as typed, or a `sip:` URI (percent-decoded, parameters ignored); in direct mode
/// a user part alone takes `domain` (the component asked). Local domains and addresses the
/// address book refuses give `not-acceptable` with the reason; an empty prompt `bad-request`.
fn translate(input: &str, book: &AddressBook, domain: &str) -> Result<Jid, (Condition, String)> {
    let not_acceptable = |text: String| (Condition::NotAcceptable, text);
    let input = input.trim();
    if input.is_empty() {
        return Err((
            Condition::BadRequest,
            "the <prompt/> is empty: expected an LCS address".to_owned(),
        ));
    }
    let scheme = input
        .split_once(':')
        .map(|(scheme, _)| scheme)
        .filter(|s| PROMPT_SCHEMES.iter().any(|p| p.eq_ignore_ascii_case(s)));
    let (user, host) = match scheme {
        Some(scheme) => {
            check_scheme(scheme).map_err(|e| not_acceptable(e.to_string()))?;
            let uri = SipUri::parse(input).map_err(|e| not_acceptable(e.to_string()))?;
            let user = uri
                .user_decoded()
                .map_err(|e| not_acceptable(format!("{:?}: user part: {e}", shown(input))))?
                .ok_or_else(|| {
                    not_acceptable(format!("{:?} names no user (user@domain)", shown(input)))
                })?;
            let Host::Domain(host) = uri.host else {
                return Err(not_acceptable(format!(
                    "{:?} names an IP address, not an LCS domain",
                    shown(input)
                )));
            };
            (user, host.to_owned())
        }
        None => match input.rsplit_once('@') {
            Some((user, host)) => (user.to_owned(), host.to_owned()),
            None if book.mode() == AddressMode::Direct => (input.to_owned(), domain.to_owned()),
            None => {
                return Err(not_acceptable(format!(
                    "{:?} is not an LCS address: expected user@domain",
                    shown(input)
                )));
            }
        },
    };
    let lower = host.to_ascii_lowercase();
    if book.is_local_domain(&lower) {
        return Err(not_acceptable(format!(
            "{:?} is a local XMPP domain: its users are reached directly, not through the gateway",
            shown(&lower)
        )));
    }
    book.sip_to_jid(&user, &host, None)
        .map_err(|e| not_acceptable(e.to_string()))
}

fn disco_info(iq: &Element, identity: Identity, features: &[&str]) -> Element {
    let result = DiscoInfoResult {
        node: None,
        identities: vec![identity],
        features: features.iter().map(|f| (*f).to_owned()).collect(),
        extensions: Vec::new(),
    };
    result_reply(iq, Some(result.into()))
}

/// The reply's envelope: same element name and namespace, `from`/`to` swapped, same `id` (an
/// `<iq/>` without one gets `id=''`), the given type.
fn envelope(stanza: &Element, type_: &str) -> Element {
    let mut reply = Element::bare(stanza.name(), stanza.ns());
    if let Some(from) = stanza.attr("to") {
        set_attr(&mut reply, "from", from);
    }
    if let Some(to) = stanza.attr("from") {
        set_attr(&mut reply, "to", to);
    }
    match stanza.attr("id") {
        Some(id) => set_attr(&mut reply, "id", id),
        None if stanza.name() == "iq" => set_attr(&mut reply, "id", ""),
        None => {}
    }
    set_attr(&mut reply, "type", type_);
    reply
}

/// A result to `iq` (`from`/`to` swapped, same `id`) with `payload`, if any.
pub fn result_reply(iq: &Element, payload: Option<Element>) -> Element {
    let mut reply = envelope(iq, "result");
    if let Some(payload) = payload {
        reply.append_child(payload);
    }
    reply
}

fn serialized_len(elem: &Element) -> Option<usize> {
    let mut out = Vec::new();
    elem.write_to(&mut out).ok()?;
    Some(out.len())
}

/// The error stanza answering `stanza` (an iq, message or presence) with `condition`
/// (RFC 6120 §8.3): same element name and namespace, `from`/`to` swapped, same `id` (an
/// `<iq/>` without one gets `id=''`), `type='error'`; the original child elements echoed when
/// together they serialise to at most [`MAX_ECHO_BYTES`] (for a message, its body and the
/// rest); then `<error type='…'>` with the condition (`urn:ietf:params:xml:ns:xmpp-stanzas`),
/// its RFC 6120 §8.3.3 type ([`Condition::error_type`]) and, when `text` is given,
/// `<text xml:lang='en'>`.
///
/// The caller must not answer a stanza of type `error` (RFC 6120 §8.3.1 rule 8: no error
/// loops); this function does not check.
pub fn error_reply(stanza: &Element, condition: Condition, text: Option<&str>) -> Element {
    let namespace = stanza.ns();
    let mut reply = envelope(stanza, "error");
    let echo: Vec<&Element> = stanza
        .children()
        .filter(|child| !(child.name() == "error" && child.ns() == namespace))
        .collect();
    let mut total = 0usize;
    let fits = echo.iter().all(|child| match serialized_len(child) {
        Some(len) => {
            total = total.saturating_add(len);
            total <= MAX_ECHO_BYTES
        }
        None => false,
    });
    if fits {
        for child in echo {
            reply.append_child(child.clone());
        }
    }
    reply.append_child(error_element(&namespace, condition, text));
    reply
}

/// `<error type='…'><condition/><text/></error>` in the stanza's namespace.
fn error_element(namespace: &str, condition: Condition, text: Option<&str>) -> Element {
    let mut texts = BTreeMap::new();
    if let Some(text) = text {
        texts.insert(ERROR_TEXT_LANG.to_owned(), text.to_owned());
    }
    let error: Element = StanzaError {
        type_: condition.error_type(),
        by: None,
        defined_condition: condition.to_defined_condition(),
        texts,
        other: None,
    }
    .into();
    if error.ns() == namespace {
        return error;
    }
    // xmpp-parsers writes `<error/>` in its default namespace; move it into the stanza's.
    let mut moved = Element::bare("error", namespace);
    *moved.attrs_mut() = error.attrs().clone();
    for child in error.children() {
        moved.append_child(child.clone());
    }
    moved
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::xmpp::parse_stanza;

    fn gateway() -> AddressBook {
        AddressBook::new(
            AddressMode::Gateway,
            vec!["lcs.example.org".into()],
            vec!["example.org".into(), "example.net".into()],
        )
        .unwrap()
    }

    fn direct() -> AddressBook {
        AddressBook::new(
            AddressMode::Direct,
            vec!["contoso.com".into(), "fabrikam.net".into()],
            vec!["example.org".into()],
        )
        .unwrap()
    }

    fn info() -> GatewayInfo {
        GatewayInfo {
            name: "LCS gateway".into(),
            version: "1.2.3".into(),
            os: Some("Linux".into()),
        }
    }

    fn xml(elem: &Element) -> String {
        let mut out = Vec::new();
        elem.write_to(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The reply to `input` (written without xmlns, as on the component stream) as XML.
    fn ask(book: &AddressBook, input: &str) -> Option<String> {
        let iq = parse_stanza(input).unwrap();
        handle_iq(&iq, book, &info()).map(|reply| xml(&reply))
    }

    fn ask_ok(book: &AddressBook, input: &str) -> String {
        ask(book, input).unwrap_or_else(|| panic!("no reply to {input}"))
    }

    /// An IQ from alice to `to` with `payload`.
    fn iq(type_: &str, to: &str, payload: &str) -> String {
        format!("<iq type='{type_}' id='q1' from='alice@example.org/pc' to='{to}'>{payload}</iq>")
    }

    const HEAD_GW: &str = "<iq xmlns='jabber:component:accept' from='lcs.example.org' \
                           id='q1' to='alice@example.org/pc' type='result'>";

    fn error_xml(type_: &str, condition: &str, text: &str) -> String {
        format!(
            "<error type='{type_}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>{text}</text></error>"
        )
    }

    /// The condition element name and the text of an error reply.
    fn condition_of(reply: &str) -> (String, String, String) {
        let elem: Element = reply.parse().unwrap();
        assert_eq!(elem.attr("type"), Some("error"), "{reply}");
        let error = elem.get_child("error", crate::xmpp::NS_COMPONENT).unwrap();
        let condition = error
            .children()
            .find(|c| c.ns() == ns::XMPP_STANZAS && c.name() != "text")
            .unwrap();
        let text = error
            .get_child("text", ns::XMPP_STANZAS)
            .map(Element::text)
            .unwrap_or_default();
        (
            error.attr("type").unwrap().to_owned(),
            condition.name().to_owned(),
            text,
        )
    }

    #[test]
    fn disco_info_on_the_gateway_domain() {
        let got = ask_ok(
            &gateway(),
            &iq(
                "get",
                "lcs.example.org",
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            ),
        );
        let expected = format!(
            "{HEAD_GW}<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='gateway' name='LCS gateway' type='lcs'/>\
             <feature var='http://jabber.org/protocol/chatstates'/>\
             <feature var='http://jabber.org/protocol/commands'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='jabber:iq:gateway'/>\
             <feature var='jabber:iq:version'/>\
             <feature var='jid\\20escaping'/>\
             <feature var='urn:xmpp:ping'/>\
             <feature var='urn:xmpp:receipts'/>\
             </query></iq>"
        );
        assert_eq!(got, expected);
    }

    #[test]
    fn disco_info_on_each_direct_domain_has_no_escaping_feature() {
        for domain in ["contoso.com", "fabrikam.net"] {
            let got = ask_ok(
                &direct(),
                &iq(
                    "get",
                    domain,
                    "<query xmlns='http://jabber.org/protocol/disco#info'/>",
                ),
            );
            let expected = format!(
                "<iq xmlns='jabber:component:accept' from='{domain}' id='q1' \
                 to='alice@example.org/pc' type='result'>\
                 <query xmlns='http://jabber.org/protocol/disco#info'>\
                 <identity category='gateway' name='LCS gateway' type='lcs'/>\
                 <feature var='http://jabber.org/protocol/chatstates'/>\
                 <feature var='http://jabber.org/protocol/commands'/>\
                 <feature var='http://jabber.org/protocol/disco#info'/>\
                 <feature var='http://jabber.org/protocol/disco#items'/>\
                 <feature var='jabber:iq:gateway'/>\
                 <feature var='jabber:iq:version'/>\
                 <feature var='urn:xmpp:ping'/>\
                 <feature var='urn:xmpp:receipts'/>\
                 </query></iq>"
            );
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn feature_lists() {
        assert_eq!(
            component_features(AddressMode::Gateway),
            [
                "http://jabber.org/protocol/chatstates",
                "http://jabber.org/protocol/commands",
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "jabber:iq:gateway",
                "jabber:iq:version",
                "jid\\20escaping",
                "urn:xmpp:ping",
                "urn:xmpp:receipts",
            ]
        );
        assert!(!component_features(AddressMode::Direct).contains(&JID_ESCAPING_FEATURE));
        assert_eq!(component_features(AddressMode::Direct).len(), 8);
        assert_eq!(
            contact_features(),
            [
                "http://jabber.org/protocol/chatstates",
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "urn:xmpp:ping",
                "urn:xmpp:receipts",
                "vcard-temp",
            ]
        );
    }

    #[test]
    fn an_empty_gateway_name_is_left_out() {
        let iq_elem = parse_stanza(&iq(
            "get",
            "lcs.example.org",
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        ))
        .unwrap();
        let reply = handle_iq(&iq_elem, &gateway(), &GatewayInfo::new("")).unwrap();
        assert!(
            xml(&reply).contains("<identity category='gateway' type='lcs'/>"),
            "{}",
            xml(&reply)
        );
    }

    #[test]
    fn disco_info_on_contacts() {
        let features = "<feature var='http://jabber.org/protocol/chatstates'/>\
                        <feature var='http://jabber.org/protocol/disco#info'/>\
                        <feature var='http://jabber.org/protocol/disco#items'/>\
                        <feature var='urn:xmpp:ping'/>\
                        <feature var='urn:xmpp:receipts'/>\
                        <feature var='vcard-temp'/>";
        for (book, to, identity) in [
            (
                gateway(),
                "joe\\40contoso.com@lcs.example.org",
                "<identity category='account' type='registered'/>",
            ),
            (
                gateway(),
                "joe\\40contoso.com@lcs.example.org/urn:uuid:1",
                "<identity category='client' type='pc'/>",
            ),
            (
                direct(),
                "joe@contoso.com",
                "<identity category='account' type='registered'/>",
            ),
            (
                direct(),
                "joe@fabrikam.net/laptop",
                "<identity category='client' type='pc'/>",
            ),
        ] {
            let got = ask_ok(
                &book,
                &iq(
                    "get",
                    to,
                    "<query xmlns='http://jabber.org/protocol/disco#info'/>",
                ),
            );
            let expected = format!(
                "<iq xmlns='jabber:component:accept' from='{to}' id='q1' \
                 to='alice@example.org/pc' type='result'>\
                 <query xmlns='http://jabber.org/protocol/disco#info'>{identity}{features}\
                 </query></iq>"
            );
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn disco_with_a_node_is_item_not_found() {
        for (book, to) in [
            (gateway(), "lcs.example.org"),
            (gateway(), "joe\\40contoso.com@lcs.example.org"),
            (direct(), "contoso.com"),
        ] {
            for namespace in [ns::DISCO_INFO, ns::DISCO_ITEMS] {
                let got = ask_ok(
                    &book,
                    &iq(
                        "get",
                        to,
                        &format!("<query xmlns='{namespace}' node='http://x#ver'/>"),
                    ),
                );
                assert_eq!(
                    condition_of(&got),
                    (
                        "cancel".into(),
                        "item-not-found".into(),
                        "no disco node \"http://x#ver\" here".into()
                    )
                );
            }
        }
    }

    #[test]
    fn disco_items_are_empty() {
        let got = ask_ok(
            &gateway(),
            &iq(
                "get",
                "lcs.example.org",
                "<query xmlns='http://jabber.org/protocol/disco#items'/>",
            ),
        );
        assert_eq!(
            got,
            format!("{HEAD_GW}<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        );
        let got = ask_ok(
            &direct(),
            &iq(
                "get",
                "joe@contoso.com",
                "<query xmlns='http://jabber.org/protocol/disco#items'/>",
            ),
        );
        assert!(
            got.ends_with(
                "type='result'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
            ),
            "{got}"
        );
    }

    #[test]
    fn gateway_prompt_in_both_modes() {
        let got = ask_ok(
            &gateway(),
            &iq(
                "get",
                "lcs.example.org",
                "<query xmlns='jabber:iq:gateway'/>",
            ),
        );
        assert_eq!(
            got,
            format!(
                "{HEAD_GW}<query xmlns='jabber:iq:gateway'><desc>{GATEWAY_DESC}</desc>\
                 <prompt>LCS address</prompt></query></iq>"
            )
        );
        let got = ask_ok(
            &direct(),
            &iq("get", "contoso.com", "<query xmlns='jabber:iq:gateway'/>"),
        );
        assert!(
            got.contains(&format!(
                "<query xmlns='jabber:iq:gateway'><desc>{GATEWAY_DESC_DIRECT}</desc>\
                 <prompt>LCS address</prompt></query>"
            )),
            "{got}"
        );
    }

    fn translate_via(book: &AddressBook, to: &str, prompt: &str) -> String {
        let payload = format!("<query xmlns='jabber:iq:gateway'><prompt>{prompt}</prompt></query>");
        ask_ok(book, &iq("set", to, &payload))
    }

    #[test]
    fn gateway_translates_addresses() {
        let cases: [(AddressBook, &str, &str, &str); 13] = [
            (
                gateway(),
                "lcs.example.org",
                "joe@contoso.com",
                "joe\\40contoso.com@lcs.example.org",
            ),
            (
                gateway(),
                "lcs.example.org",
                "  Joe@Contoso.COM\n",
                "joe\\40contoso.com@lcs.example.org",
            ),
            (
                gateway(),
                "lcs.example.org",
                "sip:joe@contoso.com",
                "joe\\40contoso.com@lcs.example.org",
            ),
            (
                gateway(),
                "lcs.example.org",
                "SIP:joe%20smith@contoso.com;transport=tls",
                "joe\\20smith\\40contoso.com@lcs.example.org",
            ),
            (
                gateway(),
                "lcs.example.org",
                "o'hara@contoso.com",
                "o\\27hara\\40contoso.com@lcs.example.org",
            ),
            (
                gateway(),
                "lcs.example.org",
                "a b.c@contoso.com",
                "a\\20b.c\\40contoso.com@lcs.example.org",
            ),
            (
                gateway(),
                "lcs.example.org",
                "joe@unknown.com",
                "joe\\40unknown.com@lcs.example.org",
            ),
            (
                direct(),
                "contoso.com",
                "joe@contoso.com",
                "joe@contoso.com",
            ),
            (
                direct(),
                "contoso.com",
                "sip:Joe@Contoso.com;transport=tls",
                "joe@contoso.com",
            ),
            (
                direct(),
                "contoso.com",
                "sip:joe%20smith@contoso.com",
                "joe\\20smith@contoso.com",
            ),
            (
                direct(),
                "contoso.com",
                "sip:Joe@fabrikam.net",
                "joe@fabrikam.net",
            ),
            (direct(), "contoso.com", "joe", "joe@contoso.com"),
            (direct(), "fabrikam.net", "o'hara", "o\\27hara@fabrikam.net"),
        ];
        for (book, to, prompt, jid) in cases {
            let got = translate_via(&book, to, prompt);
            let expected = format!(
                "<iq xmlns='jabber:component:accept' from='{to}' id='q1' \
                 to='alice@example.org/pc' type='result'>\
                 <query xmlns='jabber:iq:gateway'><jid>{jid}</jid></query></iq>"
            );
            assert_eq!(got, expected, "{prompt}");
            // The JID leads back to the address typed.
            let parsed = Jid::new(jid).unwrap();
            assert!(book.jid_to_sip(&parsed).is_ok(), "{jid}");
        }
    }

    #[test]
    fn gateway_refuses_what_it_cannot_map() {
        let cases: [(AddressBook, &str, &str, &str, &str); 12] = [
            (
                gateway(),
                "lcs.example.org",
                "alice@example.org",
                "not-acceptable",
                "\"example.org\" is a local XMPP domain: its users are reached directly, not through the gateway",
            ),
            (
                gateway(),
                "lcs.example.org",
                "sip:Bob@Example.NET",
                "not-acceptable",
                "\"example.net\" is a local XMPP domain: its users are reached directly, not through the gateway",
            ),
            (
                gateway(),
                "lcs.example.org",
                "joe@lcs.example.org",
                "not-acceptable",
                "\"lcs.example.org\" is a local or component domain: addressing it through the gateway would loop",
            ),
            (
                gateway(),
                "lcs.example.org",
                "joe",
                "not-acceptable",
                "\"joe\" is not an LCS address: expected user@domain",
            ),
            (
                gateway(),
                "lcs.example.org",
                "sips:joe@contoso.com",
                "not-acceptable",
                "sips: URIs are never used with LCS (profile: SIPS scheme)",
            ),
            (
                gateway(),
                "lcs.example.org",
                "tel:+15551234",
                "not-acceptable",
                "URI scheme \"tel\" cannot address an LCS user: only sip: is used",
            ),
            (
                gateway(),
                "lcs.example.org",
                "sip:contoso.com",
                "not-acceptable",
                "\"sip:contoso.com\" names no user (user@domain)",
            ),
            (
                gateway(),
                "lcs.example.org",
                "sip:joe@192.168.0.1",
                "not-acceptable",
                "\"sip:joe@192.168.0.1\" names an IP address, not an LCS domain",
            ),
            (
                gateway(),
                "lcs.example.org",
                "joe@contoso_com",
                "not-acceptable",
                "SIP host \"contoso_com\" is not a well-formed domain: it contains '_' (only letters, digits, '-' and '.' are allowed)",
            ),
            (
                gateway(),
                "lcs.example.org",
                "  ",
                "bad-request",
                "the &lt;prompt/&gt; is empty: expected an LCS address",
            ),
            (
                direct(),
                "contoso.com",
                "joe@unknown.com",
                "not-acceptable",
                "\"unknown.com\" is not a local domain nor served by a component (direct mode)",
            ),
            (
                direct(),
                "contoso.com",
                "alice@example.org",
                "not-acceptable",
                "\"example.org\" is a local XMPP domain: its users are reached directly, not through the gateway",
            ),
        ];
        for (book, to, prompt, condition, text) in cases {
            let got = translate_via(&book, to, prompt);
            let (_, got_condition, _) = condition_of(&got);
            assert_eq!(got_condition, condition, "{prompt}: {got}");
            let type_ = if condition == "bad-request" || condition == "not-acceptable" {
                "modify"
            } else {
                "cancel"
            };
            let prompt_xml = prompt.replace('&', "&amp;");
            let expected = format!(
                "<iq xmlns='jabber:component:accept' from='{to}' id='q1' \
                 to='alice@example.org/pc' type='error'>\
                 <query xmlns='jabber:iq:gateway'><prompt>{prompt_xml}</prompt></query>{}</iq>",
                error_xml(type_, condition, text)
            );
            assert_eq!(got, expected, "{prompt}");
        }
        // Every other URI scheme is refused by name.
        for scheme in ["im", "pres", "mailto", "xmpp", "TEL"] {
            let got = translate_via(
                &gateway(),
                "lcs.example.org",
                &format!("{scheme}:joe@contoso.com"),
            );
            assert_eq!(
                condition_of(&got),
                (
                    "modify".into(),
                    "not-acceptable".into(),
                    format!("URI scheme {scheme:?} cannot address an LCS user: only sip: is used")
                )
            );
        }
        // A malformed SIP URI names the parse problem.
        let got = translate_via(&gateway(), "lcs.example.org", "sip:joe@");
        let (type_, condition, text) = condition_of(&got);
        assert_eq!(
            (type_.as_str(), condition.as_str()),
            ("modify", "not-acceptable")
        );
        assert!(text.contains("empty host"), "{text}");
    }

    #[test]
    fn gateway_set_without_prompt_is_bad_request() {
        let got = ask_ok(
            &gateway(),
            &iq(
                "set",
                "lcs.example.org",
                "<query xmlns='jabber:iq:gateway'/>",
            ),
        );
        assert_eq!(
            condition_of(&got),
            (
                "modify".into(),
                "bad-request".into(),
                "expected the LCS address in <prompt/> (XEP-0100 §6.3)".into()
            )
        );
    }

    #[test]
    fn ping_is_answered_by_the_gateway_and_for_contacts() {
        for (book, to) in [
            (gateway(), "lcs.example.org"),
            (gateway(), "joe\\40contoso.com@lcs.example.org"),
            (gateway(), "joe\\40contoso.com@lcs.example.org/urn:uuid:1"),
            (direct(), "contoso.com"),
            (direct(), "joe@fabrikam.net"),
        ] {
            let got = ask_ok(&book, &iq("get", to, "<ping xmlns='urn:xmpp:ping'/>"));
            let expected = format!(
                "<iq xmlns='jabber:component:accept' from='{to}' id='q1' \
                 to='alice@example.org/pc' type='result'/>"
            );
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn version_is_answered_by_the_gateway() {
        let got = ask_ok(
            &gateway(),
            &iq(
                "get",
                "lcs.example.org",
                "<query xmlns='jabber:iq:version'/>",
            ),
        );
        assert_eq!(
            got,
            format!(
                "{HEAD_GW}<query xmlns='jabber:iq:version'><name>LCS gateway</name>\
                 <version>1.2.3</version><os>Linux</os></query></iq>"
            )
        );
        let iq_elem = parse_stanza(&iq(
            "get",
            "contoso.com",
            "<query xmlns='jabber:iq:version'/>",
        ))
        .unwrap();
        let reply = handle_iq(&iq_elem, &direct(), &GatewayInfo::new("LCS")).unwrap();
        assert!(
            xml(&reply).ends_with(&format!(
                "<query xmlns='jabber:iq:version'><name>LCS</name><version>{}</version>\
                 </query></iq>",
                env!("CARGO_PKG_VERSION")
            )),
            "{}",
            xml(&reply)
        );
    }

    #[test]
    fn contacts_do_not_answer_gateway_services() {
        for payload in [
            "<query xmlns='jabber:iq:version'/>",
            "<query xmlns='jabber:iq:gateway'/>",
        ] {
            let got = ask_ok(
                &gateway(),
                &iq("get", "joe\\40contoso.com@lcs.example.org", payload),
            );
            let (type_, condition, text) = condition_of(&got);
            assert_eq!(
                (type_.as_str(), condition.as_str()),
                ("cancel", "service-unavailable")
            );
            assert!(
                text.starts_with("an LCS contact offers no service in namespace"),
                "{text}"
            );
        }
    }

    fn vcard(book: &AddressBook, to: &str, payload: &str) -> Option<String> {
        let iq = parse_stanza(&iq("get", to, payload)).unwrap();
        let name_of =
            |aor: &str| (aor == "sip:joe@contoso.com").then(|| "Joe <Smith> & Co".to_owned());
        vcard_reply(&iq, book, &name_of).map(|r| xml(&r))
    }

    #[test]
    fn vcards_of_contacts_give_the_known_name_and_address() {
        let joe = "joe\\40contoso.com@lcs.example.org";
        let head = format!(
            "<iq xmlns='jabber:component:accept' from='{joe}' id='q1' to='alice@example.org/pc' type='result'>"
        );
        assert_eq!(
            vcard(&gateway(), joe, "<vCard xmlns='vcard-temp'/>").unwrap(),
            format!(
                "{head}<vCard xmlns='vcard-temp'><FN>Joe &lt;Smith&gt; &amp; Co</FN>\
                 <NICKNAME>Joe &lt;Smith&gt; &amp; Co</NICKNAME><URL>sip:joe@contoso.com</URL>\
                 </vCard></iq>"
            )
        );
        let four = "<vcard xmlns='urn:ietf:params:xml:ns:vcard-4.0'><fn><text>Joe &lt;Smith&gt; &amp; Co</text></fn>\
                    <nickname><text>Joe &lt;Smith&gt; &amp; Co</text></nickname>\
                    <impp><uri>sip:joe@contoso.com</uri></impp></vcard>";
        assert_eq!(
            vcard(
                &gateway(),
                joe,
                "<vcard xmlns='urn:ietf:params:xml:ns:vcard-4.0'/>"
            )
            .unwrap(),
            format!("{head}{four}</iq>")
        );
        assert_eq!(
            vcard(
                &gateway(),
                joe,
                "<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:vcard4'/></pubsub>"
            )
            .unwrap(),
            format!(
                "{head}<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:vcard4'>\
                 <item id='current'>{four}</item></items></pubsub></iq>"
            )
        );
        // A GRUU (one endpoint) and direct mode answer for the same person.
        let gruu = vcard(
            &gateway(),
            &format!("{joe}/urn:uuid:1"),
            "<vCard xmlns='vcard-temp'/>",
        )
        .unwrap();
        assert!(gruu.contains("<URL>sip:joe@contoso.com</URL>"), "{gruu}");
        let direct = vcard(&direct(), "joe@contoso.com", "<vCard xmlns='vcard-temp'/>").unwrap();
        assert!(
            direct.contains("<FN>Joe &lt;Smith&gt; &amp; Co</FN>"),
            "{direct}"
        );
    }

    #[test]
    fn vcards_without_a_name_are_item_not_found_and_other_iqs_are_left_alone() {
        let ann = "ann\\40contoso.com@lcs.example.org";
        let got = vcard(&gateway(), ann, "<vCard xmlns='vcard-temp'/>").unwrap();
        let (type_, condition, text) = condition_of(&got);
        assert_eq!(
            (type_.as_str(), condition.as_str()),
            ("cancel", "item-not-found")
        );
        assert_eq!(
            text,
            "no vCard: the gateway knows no name for sip:ann@contoso.com"
        );
        let joe = "joe\\40contoso.com@lcs.example.org";
        for (to, payload) in [
            ("lcs.example.org", "<vCard xmlns='vcard-temp'/>"),
            ("example.org", "<vCard xmlns='vcard-temp'/>"),
            (
                joe,
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            ),
            (
                joe,
                "<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:avatar:data'/></pubsub>",
            ),
            (
                joe,
                "<vCard xmlns='vcard-temp'/><vCard xmlns='vcard-temp'/>",
            ),
        ] {
            assert_eq!(vcard(&gateway(), to, payload), None, "{to} {payload}");
        }
        let set = parse_stanza(&iq("set", joe, "<vCard xmlns='vcard-temp'/>")).unwrap();
        assert!(vcard_reply(&set, &gateway(), &|_| Some("x".into())).is_none());
        // Someone who is no user of a local domain learns nothing: the answer is the one for
        // an unknown name.
        for from in [
            "eve@elsewhere.example/pc",
            "elsewhere.example",
            "lcs.example.org",
        ] {
            let get =
                iq("get", joe, "<vCard xmlns='vcard-temp'/>").replace("alice@example.org/pc", from);
            let got = vcard_reply(&parse_stanza(&get).unwrap(), &gateway(), &|_| {
                Some("Joe".into())
            })
            .map(|r| xml(&r))
            .unwrap();
            let (type_, condition, text) = condition_of(&got);
            assert_eq!(
                (type_.as_str(), condition.as_str(), text.as_str()),
                (
                    "cancel",
                    "item-not-found",
                    "no vCard: the gateway knows no name for sip:joe@contoso.com"
                ),
                "{from}"
            );
        }
        // A set reaches `handle_iq`: not implemented (the namespace is offered).
        let got = ask_ok(&gateway(), &iq("set", joe, "<vCard xmlns='vcard-temp'/>"));
        assert_eq!(condition_of(&got).1, "feature-not-implemented");
    }

    #[test]
    fn unknown_namespaces_get_service_unavailable_with_the_payload_echoed() {
        for (book, to) in [(gateway(), "lcs.example.org"), (direct(), "contoso.com")] {
            for type_ in ["get", "set"] {
                let got = ask_ok(&book, &iq(type_, to, "<query xmlns='jabber:iq:register'/>"));
                let expected = format!(
                    "<iq xmlns='jabber:component:accept' from='{to}' id='q1' \
                     to='alice@example.org/pc' type='error'>\
                     <query xmlns='jabber:iq:register'/>{}</iq>",
                    error_xml(
                        "cancel",
                        "service-unavailable",
                        "the gateway offers no service in namespace \"jabber:iq:register\""
                    )
                );
                assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn offered_namespaces_with_other_elements_or_types_are_not_implemented() {
        for (type_, to, payload, text) in [
            (
                "set",
                "lcs.example.org",
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
                "<query/> in namespace \"http://jabber.org/protocol/disco#info\" with type set is not implemented",
            ),
            (
                "set",
                "lcs.example.org",
                "<ping xmlns='urn:xmpp:ping'/>",
                "<ping/> in namespace \"urn:xmpp:ping\" with type set is not implemented",
            ),
            (
                "set",
                "lcs.example.org",
                "<query xmlns='jabber:iq:version'/>",
                "<query/> in namespace \"jabber:iq:version\" with type set is not implemented",
            ),
            (
                "get",
                "lcs.example.org",
                "<pong xmlns='urn:xmpp:ping'/>",
                "<pong/> in namespace \"urn:xmpp:ping\" with type get is not implemented",
            ),
            (
                "set",
                "joe\\40contoso.com@lcs.example.org",
                "<query xmlns='http://jabber.org/protocol/disco#items'/>",
                "<query/> in namespace \"http://jabber.org/protocol/disco#items\" with type set is not implemented",
            ),
        ] {
            let got = ask_ok(&gateway(), &iq(type_, to, payload));
            assert_eq!(
                condition_of(&got),
                (
                    "cancel".into(),
                    "feature-not-implemented".into(),
                    text.into()
                ),
                "{payload}"
            );
        }
    }

    #[test]
    fn payload_count_must_be_one() {
        let got = ask_ok(&gateway(), &iq("get", "lcs.example.org", ""));
        assert_eq!(
            got,
            format!(
                "<iq xmlns='jabber:component:accept' from='lcs.example.org' id='q1' \
                 to='alice@example.org/pc' type='error'>{}</iq>",
                error_xml(
                    "modify",
                    "bad-request",
                    "an IQ get carries exactly one payload element, this one has 0 (RFC 6120 §8.2.3)"
                )
            )
        );
        let got = ask_ok(
            &gateway(),
            &iq(
                "set",
                "lcs.example.org",
                "<ping xmlns='urn:xmpp:ping'/><query xmlns='jabber:iq:version'/>",
            ),
        );
        assert_eq!(
            got,
            format!(
                "<iq xmlns='jabber:component:accept' from='lcs.example.org' id='q1' \
                 to='alice@example.org/pc' type='error'>\
                 <ping xmlns='urn:xmpp:ping'/><query xmlns='jabber:iq:version'/>{}</iq>",
                error_xml(
                    "modify",
                    "bad-request",
                    "an IQ set carries exactly one payload element, this one has 2 (RFC 6120 §8.2.3)"
                )
            )
        );
    }

    #[test]
    fn results_errors_and_other_stanzas_are_never_answered() {
        for input in [
            "<iq type='result' id='q1' from='alice@example.org/pc' to='lcs.example.org'/>",
            "<iq type='error' id='q1' from='alice@example.org/pc' to='lcs.example.org'>\
             <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
            "<message from='alice@example.org/pc' to='lcs.example.org'><body>hi</body></message>",
            "<presence from='alice@example.org/pc' to='lcs.example.org'/>",
            // No from: the reply would have no addressee.
            "<iq type='get' id='q1' to='lcs.example.org'><ping xmlns='urn:xmpp:ping'/></iq>",
        ] {
            assert_eq!(ask(&gateway(), input), None, "{input}");
        }
    }

    #[test]
    fn odd_envelopes_still_get_an_answer() {
        // No id: bad-request with id='' (RFC 6120 §8.3.1 rule 3).
        let got = ask_ok(
            &gateway(),
            "<iq type='get' from='alice@example.org/pc' to='lcs.example.org'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        assert_eq!(
            got,
            format!(
                "<iq xmlns='jabber:component:accept' from='lcs.example.org' id='' \
                 to='alice@example.org/pc' type='error'><ping xmlns='urn:xmpp:ping'/>{}</iq>",
                error_xml("modify", "bad-request", "IQ has no id (RFC 6120 §8.2.3)")
            )
        );
        // No type, unknown type.
        for (input, text) in [
            (
                "<iq id='q1' from='alice@example.org/pc' to='lcs.example.org'><ping xmlns='urn:xmpp:ping'/></iq>",
                "IQ has no type (RFC 6120 §8.2.3)",
            ),
            (
                "<iq type='GET' id='q1' from='alice@example.org/pc' to='lcs.example.org'><ping xmlns='urn:xmpp:ping'/></iq>",
                "IQ type \"GET\" is not one of get, set, result, error (RFC 6120 §8.2.3)",
            ),
        ] {
            assert_eq!(
                condition_of(&ask_ok(&gateway(), input)),
                ("modify".into(), "bad-request".into(), text.into())
            );
        }
        // No to: the first component domain answers and signs the reply.
        let got = ask_ok(
            &direct(),
            "<iq type='get' id='q1' from='alice@example.org/pc'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        assert_eq!(
            got,
            "<iq xmlns='jabber:component:accept' from='contoso.com' id='q1' \
             to='alice@example.org/pc' type='result'/>"
        );
    }

    #[test]
    fn addressees_the_gateway_cannot_answer_for() {
        for (book, to, type_, condition, text) in [
            (
                gateway(),
                "joe@lcs.example.org",
                "cancel",
                "item-not-found",
                "gateway JID localpart \"joe\" names no LCS address: expected user\\40domain (XEP-0106) or user%domain",
            ),
            (
                gateway(),
                "joe\\40example.org@lcs.example.org",
                "cancel",
                "item-not-found",
                "\"example.org\" is a local or component domain: addressing it through the gateway would loop",
            ),
            (
                gateway(),
                "example.org",
                "cancel",
                "service-unavailable",
                "\"example.org\" is not a domain of this gateway",
            ),
            (
                direct(),
                "joe@unknown.com",
                "cancel",
                "service-unavailable",
                "\"unknown.com\" is not a domain of this gateway",
            ),
            (
                gateway(),
                "@lcs.example.org",
                "modify",
                "jid-malformed",
                "'to' \"@lcs.example.org\" is not a valid JID: ",
            ),
        ] {
            let got = ask_ok(&book, &iq("get", to, "<ping xmlns='urn:xmpp:ping'/>"));
            let (got_type, got_condition, got_text) = condition_of(&got);
            assert_eq!(
                (got_type.as_str(), got_condition.as_str()),
                (type_, condition),
                "{to}"
            );
            assert!(got_text.starts_with(text), "{to}: {got_text}");
        }
    }

    #[test]
    fn error_reply_for_a_message_echoes_the_body() {
        let message = parse_stanza(
            "<message type='chat' id='m1' from='alice@example.org/pc' \
             to='joe\\40contoso.com@lcs.example.org'><body>Hi &amp; bye</body>\
             <active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        )
        .unwrap();
        let reply = error_reply(
            &message,
            Condition::RecipientUnavailable,
            Some("Joe is away"),
        );
        assert_eq!(
            xml(&reply),
            format!(
                "<message xmlns='jabber:component:accept' from='joe\\40contoso.com@lcs.example.org' \
                 id='m1' to='alice@example.org/pc' type='error'><body>Hi &amp; bye</body>\
                 <active xmlns='http://jabber.org/protocol/chatstates'/>{}</message>",
                error_xml("wait", "recipient-unavailable", "Joe is away")
            )
        );
        // A message without id gets none; no text, no <text/>.
        let message = parse_stanza(
            "<message from='a@example.org' to='b@contoso.com'><body>x</body></message>",
        )
        .unwrap();
        assert_eq!(
            xml(&error_reply(&message, Condition::ServiceUnavailable, None)),
            "<message xmlns='jabber:component:accept' from='b@contoso.com' to='a@example.org' \
             type='error'><body>x</body><error type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        );
    }

    #[test]
    fn error_reply_for_presence_and_other_namespaces() {
        let presence = parse_stanza(
            "<presence type='subscribe' id='p1' from='alice@example.org' to='joe@contoso.com'/>",
        )
        .unwrap();
        assert_eq!(
            xml(&error_reply(&presence, Condition::Forbidden, None)),
            "<presence xmlns='jabber:component:accept' from='joe@contoso.com' id='p1' \
             to='alice@example.org' type='error'><error type='auth'>\
             <forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
        );
        // A jabber:client stanza is answered in jabber:client, the <error/> too.
        let message: Element =
            "<message xmlns='jabber:client' from='a@example.org' to='b@contoso.com'><body>x</body></message>"
                .parse()
                .unwrap();
        assert_eq!(
            xml(&error_reply(
                &message,
                Condition::ItemNotFound,
                Some("gone")
            )),
            format!(
                "<message xmlns='jabber:client' from='b@contoso.com' to='a@example.org' \
                 type='error'><body>x</body>{}</message>",
                error_xml("cancel", "item-not-found", "gone")
            )
        );
    }

    #[test]
    fn large_payloads_are_not_echoed() {
        let body = "a".repeat(MAX_ECHO_BYTES);
        let message = parse_stanza(&format!(
            "<message id='m1' from='a@example.org' to='b@contoso.com'><body>{body}</body></message>"
        ))
        .unwrap();
        let reply = error_reply(&message, Condition::PolicyViolation, Some("too long"));
        assert_eq!(
            xml(&reply),
            format!(
                "<message xmlns='jabber:component:accept' from='b@contoso.com' id='m1' \
                 to='a@example.org' type='error'>{}</message>",
                error_xml("modify", "policy-violation", "too long")
            )
        );
        // At the limit (measured as the child serialises on its own, with its xmlns) it is
        // echoed.
        let body =
            "a".repeat(MAX_ECHO_BYTES - "<body xmlns='jabber:component:accept'></body>".len());
        let message = parse_stanza(&format!(
            "<message id='m1' from='a@example.org' to='b@contoso.com'><body>{body}</body></message>"
        ))
        .unwrap();
        let reply = error_reply(&message, Condition::PolicyViolation, None);
        assert!(reply.get_child("body", crate::xmpp::NS_COMPONENT).is_some());
    }

    #[test]
    fn odd_input_never_panics() {
        let inputs = [
            "<iq/>",
            "<iq type='get'/>",
            "<iq type='get' from=''/>",
            "<iq type='get' from='a' to=''><ping xmlns='urn:xmpp:ping'/></iq>",
            "<iq type='set' from='a' to='lcs.example.org' id='x'><query xmlns='jabber:iq:gateway'><prompt/></query></iq>",
            "<iq type='set' from='a' to='lcs.example.org' id='x'><query xmlns='jabber:iq:gateway'><prompt>@</prompt></query></iq>",
            "<iq type='set' from='a' to='lcs.example.org' id='x'><query xmlns='jabber:iq:gateway'><prompt>sip:</prompt></query></iq>",
            "<iq type='set' from='a' to='lcs.example.org' id='x'><query xmlns='jabber:iq:gateway'><prompt>sip:%ff@contoso.com</prompt></query></iq>",
            "<iq type='set' from='a' to='lcs.example.org' id='x'><query xmlns='jabber:iq:gateway'><prompt>\u{7}@contoso.com</prompt></query></iq>",
            "<iq type='get' from='a' to='lcs.example.org/res' id='x'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        ];
        for input in inputs {
            for book in [gateway(), direct()] {
                if let Ok(iq_elem) = parse_stanza(input) {
                    let _ = handle_iq(&iq_elem, &book, &info());
                }
            }
        }
    }
}
