//! XMPP stanza helpers on top of xmpp-parsers (RFC 6120 §8 stanza syntax, RFC 6121 §4.7
//! presence syntax). The bridge is an XEP-0114 external component, so stanzas live in
//! `jabber:component:accept` (XEP-0114 §3); input written for a client stream (`jabber:client`,
//! RFC 6120 §4.8.3), a server stream (`jabber:server`) or with no namespace at all (as an
//! administrator pastes it) is moved into that namespace before typed parsing. No I/O.

pub mod build;
pub mod gateway;
pub mod link;

use xmpp_parsers::minidom::rxml::{Namespace as XmlNamespace, NcName};
use xmpp_parsers::minidom::{Element, ElementBuilder, Node};

use crate::core::xml::{XmlError, XmlLimits, XmlReader};
use crate::core::xml_chars;
use xmpp_parsers::presence::Presence;

/// Default stanza namespace of the component protocol (XEP-0114).
pub const NS_COMPONENT: &str = "jabber:component:accept";
/// RFC 6120 client namespace.
pub const NS_CLIENT: &str = "jabber:client";
/// RFC 6120 server namespace.
pub const NS_SERVER: &str = "jabber:server";

/// Sets an attribute without a namespace on a built element. The names the bridge uses are all
/// valid NCNames; an invalid one would be skipped, never panic.
pub fn set_attr(elem: &mut Element, name: &str, value: &str) {
    if let Ok(name) = NcName::try_from(name) {
        elem.set_attr(XmlNamespace::NONE, name, value);
    }
}

/// [`set_attr`] on an element taken and given back.
pub fn with_attr(mut elem: Element, name: &str, value: &str) -> Element {
    set_attr(&mut elem, name, value);
    elem
}

/// [`set_attr`] for an element being built.
pub fn attr(builder: ElementBuilder, name: &str, value: &str) -> ElementBuilder {
    match NcName::try_from(name) {
        Ok(name) => builder.attr(name, value),
        Err(_) => builder,
    }
}

/// Largest stanza [`parse_presence`] accepts.
pub const MAX_STANZA_BYTES: usize = 64 * 1024;
/// Deepest element nesting [`parse_presence`] accepts.
pub const MAX_STANZA_DEPTH: usize = 32;

/// Why a pasted or received stanza could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StanzaParseError {
    /// Input larger than [`MAX_STANZA_BYTES`].
    #[error("stanza is {size} bytes, larger than the limit of {max} bytes")]
    TooLarge {
        /// Input size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Nested deeper than [`MAX_STANZA_DEPTH`].
    #[error("stanza elements are nested deeper than the limit of {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// Not well-formed XML (or a DOCTYPE, which is refused).
    #[error("not well-formed XML: {0}")]
    NotXml(String),
    /// Root is not `<presence/>` in a stanza namespace.
    #[error(
        "root element is \"{name}\" in {namespace}, expected \"presence\" in jabber:component:accept, jabber:client or no namespace"
    )]
    NotPresence {
        /// Local name of the root.
        name: String,
        /// Its namespace (or "no namespace").
        namespace: String,
    },
    /// Well-formed but not a valid presence stanza.
    #[error("invalid presence stanza: {0}")]
    Invalid(String),
}

/// A stanza the component stream cannot carry even after cleaning: an element name that is not
/// an XML name, or a namespace with a character XML forbids (only a bug of the bridge's own
/// builders can make one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("element {name:?} cannot be written: {reason}")]
pub struct UnwritableStanza {
    /// The element name.
    pub name: String,
    /// The XML parser's reason.
    pub reason: String,
}

/// Makes a stanza writable on the component stream, in place, before it is queued: characters
/// XML 1.0 forbids are removed from every text node and every attribute value
/// ([`crate::core::xml_chars::clean`]), at any depth. Returns how many strings changed (a peer
/// sent something XML cannot carry), or the element whose name the serialiser would refuse.
///
/// `xmpp::link::LinkHandle::send` calls this for every stanza, so no builder can bypass it.
pub fn clean_stanza(stanza: &mut Element) -> Result<usize, UnwritableStanza> {
    let mut changed = 0;
    // An explicit stack: a stanza echoed back in an error reply may be deeply nested.
    let mut stack = vec![stanza];
    while let Some(el) = stack.pop() {
        if let Err(e) = xmpp_parsers::minidom::rxml::strings::validate_ncname(el.name()) {
            return Err(UnwritableStanza {
                name: el.name().to_owned(),
                reason: e.to_string(),
            });
        }
        // The stanza namespace (XML-clean) is compared in place; any other namespace is
        // copied out (minidom lends none) and checked.
        let clean_ns = el.has_ns(NS_COMPONENT);
        if let Some((_, c)) = (!clean_ns)
            .then(|| el.ns())
            .and_then(|ns| xml_chars::find_invalid(&ns))
        {
            return Err(UnwritableStanza {
                name: el.name().to_owned(),
                reason: format!("its namespace holds U+{:04X}", c as u32),
            });
        }
        for value in el.attrs_mut().values_mut() {
            changed += usize::from(xml_chars::clean_in_place(value));
        }
        for text in el.texts_mut() {
            changed += usize::from(xml_chars::clean_in_place(text));
        }
        stack.extend(el.children_mut());
    }
    Ok(changed)
}

/// Parses one `<presence/>` stanza written with `xmlns='jabber:client'`,
/// `xmlns='jabber:component:accept'`, `xmlns='jabber:server'` or no `xmlns`.
pub fn parse_presence(xml: &str) -> Result<Presence, StanzaParseError> {
    let root = parse_stanza(xml)?;
    if root.name() != "presence" {
        return Err(StanzaParseError::NotPresence {
            name: root.name().to_owned(),
            namespace: root.ns(),
        });
    }
    Presence::try_from(root).map_err(|e| StanzaParseError::Invalid(e.to_string()))
}

/// Parses a stanza into an element in [`NS_COMPONENT`], checking size, depth and namespace.
pub fn parse_stanza(xml: &str) -> Result<Element, StanzaParseError> {
    precheck(xml)?;
    let root = Element::from_reader_with_prefixes(xml.trim().as_bytes(), NS_COMPONENT.to_owned())
        .map_err(|e| StanzaParseError::NotXml(e.to_string()))?;
    let ns = root.ns();
    match ns.as_str() {
        NS_COMPONENT => Ok(root),
        NS_CLIENT | NS_SERVER => Ok(rename_ns(root, &ns)),
        _ => Err(StanzaParseError::NotPresence {
            name: root.name().to_owned(),
            namespace: if ns.is_empty() {
                "no namespace".to_owned()
            } else {
                ns
            },
        }),
    }
}

/// Bounds of a stanza: [`MAX_STANZA_BYTES`], [`MAX_STANZA_DEPTH`], and as many elements as
/// the size allows.
const STANZA_LIMITS: XmlLimits = XmlLimits {
    max_bytes: MAX_STANZA_BYTES,
    max_depth: MAX_STANZA_DEPTH,
    max_elements: XmlLimits::DEFAULT.max_elements,
};

/// Reads the stanza once with the bridge's hardened reader ([`crate::core::xml`]) before a
/// tree is built: size and nesting depth bounded (the tree is recursive), DOCTYPEs, undeclared
/// entities and characters XML forbids refused. Plain syntax errors are left to the tree
/// parser, which describes them.
fn precheck(xml: &str) -> Result<(), StanzaParseError> {
    let mut reader = XmlReader::from_str(xml, &STANZA_LIMITS).map_err(stanza_error)?;
    loop {
        match reader.next_event() {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            // Let the tree parser describe syntax errors.
            Err(XmlError::Syntax { .. } | XmlError::NoRoot | XmlError::Truncated) => return Ok(()),
            Err(e) => return Err(stanza_error(e)),
        }
    }
}

fn stanza_error(e: XmlError) -> StanzaParseError {
    match e {
        XmlError::TooLarge { size, max } => StanzaParseError::TooLarge { size, max },
        XmlError::TooDeep { max } => StanzaParseError::TooDeep { max },
        XmlError::Dtd => StanzaParseError::NotXml("DOCTYPE declarations are refused".to_owned()),
        XmlError::TooManyElements { .. }
        | XmlError::UnknownEntity(_)
        | XmlError::InvalidCharRef { .. }
        | XmlError::ForbiddenChar { .. }
        | XmlError::NotUtf8 { .. }
        | XmlError::NoRoot
        | XmlError::Truncated
        | XmlError::Syntax { .. } => StanzaParseError::NotXml(e.to_string()),
    }
}

/// Moves `elem` and its descendants from `from_ns` into [`NS_COMPONENT`].
fn rename_ns(mut elem: Element, from_ns: &str) -> Element {
    let ns = elem.ns();
    if ns != from_ns {
        return elem;
    }
    let mut out = Element::builder(elem.name(), NS_COMPONENT).build();
    *out.attrs_mut() = elem.attrs().clone();
    for node in elem.take_nodes() {
        match node {
            Node::Element(child) => {
                out.append_child(rename_ns(child, from_ns));
            }
            Node::Text(text) => out.append_text_node(text),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use xmpp_parsers::presence::{Show, Type};

    #[test]
    fn accepts_the_three_namespace_forms() {
        for xml in [
            "<presence><show>away</show><status xml:lang='en'>Lunch</status></presence>",
            "<presence xmlns='jabber:client'><show>away</show><status xml:lang='en'>Lunch</status></presence>",
            "<presence xmlns='jabber:component:accept'><show>away</show><status xml:lang='en'>Lunch</status></presence>",
            "<presence xmlns='jabber:server'><show>away</show><status xml:lang='en'>Lunch</status></presence>",
            "\n  <presence from='a@b/c' to='d@e'>\n <show>away</show>\n <status xml:lang='en'>Lunch</status>\n</presence>\n",
        ] {
            let p = parse_presence(xml).unwrap_or_else(|e| panic!("{xml}: {e}"));
            assert_eq!(p.show, Some(Show::Away), "{xml}");
            assert_eq!(p.type_, Type::None);
            assert_eq!(
                p.statuses
                    .get(&xmpp_parsers::message::Lang("en".into()))
                    .map(String::as_str),
                Some("Lunch")
            );
        }
    }

    #[test]
    fn payloads_in_other_namespaces_are_kept() {
        let p = parse_presence(
            "<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/></presence>",
        )
        .unwrap();
        assert_eq!(p.payloads.len(), 1);
        assert_eq!(p.payloads[0].ns(), "http://jabber.org/protocol/caps");
    }

    #[test]
    fn errors_are_exact() {
        let deep = format!(
            "<presence>{}{}</presence>",
            "<x>".repeat(40),
            "</x>".repeat(40)
        );
        let big = format!(
            "<presence><status>{}</status></presence>",
            "a".repeat(70000)
        );
        let cases: Vec<(String, &str)> = vec![
            (
                "<message/>".into(),
                "root element is \"message\" in jabber:component:accept, expected \"presence\" in jabber:component:accept, jabber:client or no namespace",
            ),
            (
                "<presence xmlns='urn:x'/>".into(),
                "root element is \"presence\" in urn:x, expected \"presence\" in jabber:component:accept, jabber:client or no namespace",
            ),
            (
                "<presence type='bogus'/>".into(),
                "invalid presence stanza: Invalid 'type' attribute on presence element.",
            ),
            (
                "<presence><show>sleepy</show></presence>".into(),
                "invalid presence stanza: Invalid value for show.",
            ),
            (
                deep,
                "stanza elements are nested deeper than the limit of 32 levels",
            ),
            (
                big,
                "stanza is 70038 bytes, larger than the limit of 65536 bytes",
            ),
            (
                "<!DOCTYPE x [<!ENTITY a 'b'>]><presence>&a;</presence>".into(),
                "not well-formed XML: DOCTYPE declarations are refused",
            ),
        ];
        let got: Vec<String> = cases
            .iter()
            .map(|(xml, _)| parse_presence(xml).unwrap_err().to_string())
            .collect();
        let expected: Vec<&str> = cases.iter().map(|(_, m)| *m).collect();
        assert_eq!(got, expected);
        // The hardened reader's policy (core::xml): references and depth, empty elements
        // included.
        let refused = [
            (
                "<presence><status>&xxe;</status></presence>".to_owned(),
                "not well-formed XML: entity reference \"&xxe;\" refused: only &lt; &gt; &amp; &quot; &apos; and character references are allowed",
            ),
            (
                "<presence><status>&#1;</status></presence>".to_owned(),
                "not well-formed XML: character U+0001 at byte 22 is not allowed in XML",
            ),
            (
                format!(
                    "<presence>{}<y/>{}</presence>",
                    "<x>".repeat(31),
                    "</x>".repeat(31)
                ),
                "stanza elements are nested deeper than the limit of 32 levels",
            ),
        ];
        for (xml, message) in refused {
            assert_eq!(parse_presence(&xml).unwrap_err().to_string(), message);
        }
        let at_limit = format!(
            "<presence>{}</presence>",
            "<x>".repeat(31) + &"</x>".repeat(31)
        );
        assert!(parse_stanza(&at_limit).is_ok());
        for bad in ["", "hello", "<presence>", "<presence></message>"] {
            let err = parse_presence(bad).unwrap_err();
            assert!(matches!(err, StanzaParseError::NotXml(_)), "{bad}: {err}");
        }
    }
}
