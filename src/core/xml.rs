//! The one hardened XML reader of the bridge: every XML document or stanza a peer sends is read
//! through [`XmlReader`], which owns the security policy. PIDF (`core::pidf`), the typing
//! documents of `core::im_text` (RFC 3994 isComposing, Microsoft KeyboardActivity) and stanzas
//! pasted or received on the XMPP side (`xmpp::parse_stanza`) all use it.
//!
//! The policy (docs/security.md):
//! - No DOCTYPE: any document type declaration, and with it any DTD, entity declaration or
//!   external entity, is refused ([`XmlError::Dtd`]), so there is no XXE and no entity
//!   expansion.
//! - References, in character data and in attribute values, are limited to the five entities
//!   XML predefines (XML 1.0 §4.6) and well-formed character references (§4.1) to characters
//!   that are XML `Char`s ([`XmlError::UnknownEntity`], [`XmlError::InvalidCharRef`],
//!   [`XmlError::ForbiddenChar`]).
//! - Literal characters outside XML 1.0 §2.2 `Char` are refused ([`crate::core::xml_chars`],
//!   the one XML-character policy); input must be UTF-8 (a leading byte-order mark is skipped).
//! - Document size, element nesting depth and element count are bounded ([`XmlLimits`], given
//!   by the caller).
//!
//! The reader is a thin pull layer over quick-xml: it hands out quick-xml's borrowed events, so
//! a caller pays for decoding only the text it keeps. Reading stops when the root element
//! closes (what follows it is not looked at). Namespaces (Namespaces in XML 1.0 §6) are
//! resolved by the caller with [`Namespaces`] when it needs them.

use std::borrow::Cow;

use quick_xml::Reader;
use quick_xml::XmlVersion;
use quick_xml::escape::EscapeError;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesCData, BytesStart, BytesText, Event};

use crate::core::xml_chars::{find_invalid, is_xml_char};

/// Bounds a document is read under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XmlLimits {
    /// Largest accepted document, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted element nesting (the root is depth 1).
    pub max_depth: usize,
    /// Most elements read (the root included).
    pub max_elements: usize,
}

impl XmlLimits {
    /// 64 KiB, depth 32, and as many elements as 64 KiB can hold (`<a/>` is four bytes): the
    /// bounds of PIDF documents and XMPP stanzas.
    pub const DEFAULT: XmlLimits = XmlLimits {
        max_bytes: 64 * 1024,
        max_depth: 32,
        max_elements: 16 * 1024,
    };
}

impl Default for XmlLimits {
    fn default() -> Self {
        XmlLimits::DEFAULT
    }
}

/// Why a document was refused; each variant names one cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// Larger than [`XmlLimits::max_bytes`].
    #[error("document is {size} bytes, larger than the limit of {max} bytes")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Nested deeper than [`XmlLimits::max_depth`].
    #[error("elements are nested deeper than the limit of {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// More elements than [`XmlLimits::max_elements`].
    #[error("document has more than {max} elements")]
    TooManyElements {
        /// The limit.
        max: usize,
    },
    /// Not UTF-8.
    #[error("document is not valid UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// A DOCTYPE declaration (DTD, entity declarations) was present.
    #[error("document contains a DOCTYPE declaration: DTDs and entity declarations are refused")]
    Dtd,
    /// An entity reference other than the five predefined ones.
    #[error(
        "entity reference \"&{0};\" refused: only &lt; &gt; &amp; &quot; &apos; and character references are allowed"
    )]
    UnknownEntity(String),
    /// A character reference that is not a number naming a Unicode scalar value.
    #[error("malformed XML at byte {position}: invalid character reference \"&{reference};\"")]
    InvalidCharRef {
        /// Byte offset of the reference's end.
        position: u64,
        /// The reference, without `&` and `;`.
        reference: String,
    },
    /// A character XML 1.0 forbids (a C0 control, U+FFFE, U+FFFF), literal or as a character
    /// reference.
    #[error("character U+{:04X} at byte {position} is not allowed in XML", *.character as u32)]
    ForbiddenChar {
        /// Byte offset of the character, or of the end of the reference or tag holding it.
        position: u64,
        /// The character.
        character: char,
    },
    /// No root element at all.
    #[error("document has no root element")]
    NoRoot,
    /// The input ended inside the root element.
    #[error("document ends before its root element is closed")]
    Truncated,
    /// Anything else the XML parser refused.
    #[error("malformed XML at byte {position}: {message}")]
    Syntax {
        /// Byte offset where the parser stopped.
        position: u64,
        /// The parser's description.
        message: String,
    },
}

/// One event of a document, borrowed from the input where quick-xml could.
#[derive(Debug)]
pub enum XmlEvent<'i> {
    /// An element opened; [`XmlReader::depth`] is now its depth.
    Start(BytesStart<'i>),
    /// An empty element (`<a/>`), at depth [`XmlReader::depth`]` + 1`; no [`XmlEvent::End`]
    /// follows.
    Empty(BytesStart<'i>),
    /// The innermost open element closed.
    End,
    /// Character data, still raw: [`BytesText::xml10_content`] decodes it (line ends
    /// normalised, XML 1.0 §2.11; it holds no references, those come as [`XmlEvent::Char`]).
    Text(BytesText<'i>),
    /// A CDATA section.
    CData(BytesCData<'i>),
    /// A reference, resolved: one of the five predefined entities or a character reference.
    Char(char),
}

impl XmlEvent<'_> {
    /// Appends the character data of a `Text`, `CData` or `Char` event to `out` (other events
    /// add nothing).
    #[inline]
    pub fn push_text(&self, out: &mut String) {
        match self {
            XmlEvent::Text(t) => out.push_str(&t.xml10_content()),
            XmlEvent::CData(t) => out.push_str(t),
            XmlEvent::Char(c) => out.push(*c),
            XmlEvent::Start(_) | XmlEvent::Empty(_) | XmlEvent::End => {}
        }
    }
}

/// The hardened pull reader (see the module documentation for its policy).
pub struct XmlReader<'i> {
    reader: Reader<&'i [u8]>,
    source: &'i str,
    limits: XmlLimits,
    depth: usize,
    elements: usize,
    done: bool,
}

impl<'i> XmlReader<'i> {
    /// Checks size, encoding and characters of `input` before any parsing.
    pub fn new(input: &'i [u8], limits: &XmlLimits) -> Result<Self, XmlError> {
        if input.len() > limits.max_bytes {
            return Err(XmlError::TooLarge {
                size: input.len(),
                max: limits.max_bytes,
            });
        }
        let text = std::str::from_utf8(input).map_err(|e| XmlError::NotUtf8 {
            offset: e.valid_up_to(),
        })?;
        Self::from_str(text, limits)
    }

    /// [`XmlReader::new`] for input already known to be UTF-8.
    pub fn from_str(text: &'i str, limits: &XmlLimits) -> Result<Self, XmlError> {
        if text.len() > limits.max_bytes {
            return Err(XmlError::TooLarge {
                size: text.len(),
                max: limits.max_bytes,
            });
        }
        if let Some((at, character)) = find_invalid(text) {
            return Err(XmlError::ForbiddenChar {
                position: at as u64,
                character,
            });
        }
        let source = text.strip_prefix('\u{FEFF}').unwrap_or(text);
        Ok(XmlReader {
            reader: Reader::from_str(source),
            source,
            limits: *limits,
            depth: 0,
            elements: 0,
            done: false,
        })
    }

    /// The document text events borrow from (without a byte-order mark).
    #[inline]
    pub fn source(&self) -> &'i str {
        self.source
    }

    /// How many elements are open.
    #[inline]
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Byte offset just past the last event.
    #[inline]
    pub fn position(&self) -> u64 {
        self.reader.buffer_position()
    }

    /// The next event, or `None` once the root element has closed.
    #[inline]
    pub fn next_event(&mut self) -> Result<Option<XmlEvent<'i>>, XmlError> {
        if self.done {
            return Ok(None);
        }
        loop {
            let event = match self.reader.read_event() {
                Ok(event) => event,
                Err(e) => return Err(self.parser_error(&e)),
            };
            return Ok(Some(match event {
                Event::DocType(_) => return Err(XmlError::Dtd),
                Event::Start(e) => {
                    self.open(&e)?;
                    self.depth += 1;
                    XmlEvent::Start(e)
                }
                Event::Empty(e) => {
                    self.open(&e)?;
                    self.done = self.depth == 0;
                    XmlEvent::Empty(e)
                }
                Event::End(_) => {
                    if self.depth == 0 {
                        return Err(XmlError::NoRoot);
                    }
                    self.depth -= 1;
                    self.done = self.depth == 0;
                    XmlEvent::End
                }
                Event::Text(t) => XmlEvent::Text(t),
                Event::CData(t) => XmlEvent::CData(t),
                Event::GeneralRef(r) => {
                    if r.is_char_ref() {
                        match r.resolve_char_ref() {
                            Ok(Some(c)) if is_xml_char(c) => XmlEvent::Char(c),
                            Ok(Some(character)) => {
                                return Err(XmlError::ForbiddenChar {
                                    position: self.position(),
                                    character,
                                });
                            }
                            Ok(None) | Err(_) => {
                                return Err(XmlError::InvalidCharRef {
                                    position: self.position(),
                                    reference: r.to_string(),
                                });
                            }
                        }
                    } else {
                        match predefined_entity(&r) {
                            Some(c) => XmlEvent::Char(c),
                            None => return Err(XmlError::UnknownEntity(r.to_string())),
                        }
                    }
                }
                Event::Eof => {
                    return Err(if self.elements == 0 {
                        XmlError::NoRoot
                    } else {
                        XmlError::Truncated
                    });
                }
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) => continue,
            }));
        }
    }

    /// Bounds depth and element count for an opening tag, and checks the references in its
    /// attribute values (only a value holding `&` can have one).
    #[inline]
    fn open(&mut self, e: &BytesStart<'_>) -> Result<(), XmlError> {
        if self.depth >= self.limits.max_depth {
            return Err(XmlError::TooDeep {
                max: self.limits.max_depth,
            });
        }
        if self.elements >= self.limits.max_elements {
            return Err(XmlError::TooManyElements {
                max: self.limits.max_elements,
            });
        }
        self.elements += 1;
        if e.attributes_raw().contains('&') {
            let position = self.position();
            for attr in e.attributes() {
                let attr = attr.map_err(|err| XmlError::Syntax {
                    position,
                    message: err.to_string(),
                })?;
                attribute_value(&attr, position)?;
            }
        }
        Ok(())
    }

    fn parser_error(&self, e: &quick_xml::Error) -> XmlError {
        parser_error(e, self.reader.error_position())
    }
}

/// Maps a quick-xml error to the cause it names.
fn parser_error(e: &quick_xml::Error, position: u64) -> XmlError {
    match e {
        quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(_, name)) => {
            XmlError::UnknownEntity(name.clone())
        }
        quick_xml::Error::IllFormed(quick_xml::errors::IllFormedError::MissingEndTag(_)) => {
            XmlError::Truncated
        }
        other => XmlError::Syntax {
            position,
            message: other.to_string(),
        },
    }
}

/// The character of one of XML's five predefined entities (XML 1.0 §4.6).
#[inline]
fn predefined_entity(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => None,
    }
}

/// The text of one of XML's five predefined entities (XML 1.0 §4.6).
fn predefined_entity_str(name: &str) -> Option<&'static str> {
    match name {
        "lt" => Some("<"),
        "gt" => Some(">"),
        "amp" => Some("&"),
        "quot" => Some("\""),
        "apos" => Some("'"),
        _ => None,
    }
}

/// An attribute's normalised value (XML 1.0 §3.3.3) under the reader's policy: only the
/// predefined entities, and no character reference to a character XML forbids. `position` is
/// reported with an error (the end of the tag).
#[inline]
pub fn attribute_value<'a>(
    attr: &'a Attribute<'_>,
    position: u64,
) -> Result<Cow<'a, str>, XmlError> {
    let value = attr
        .normalized_value_with(XmlVersion::Implicit1_0, 1, predefined_entity_str)
        .map_err(|err| parser_error(&err, position))?;
    match find_invalid(&value) {
        Some((_, character)) => Err(XmlError::ForbiddenChar {
            position,
            character,
        }),
        None => Ok(value),
    }
}

/// Splits a qualified name into prefix ("" if none) and local part.
#[inline]
pub fn split_qname(qname: &str) -> (&str, &str) {
    qname.split_once(':').unwrap_or(("", qname))
}

/// One `xmlns`/`xmlns:p` declaration in scope, borrowed from the input when possible.
struct Binding<'i> {
    prefix: Cow<'i, str>,
    namespace: Cow<'i, str>,
    depth: usize,
}

/// Namespace scopes (Namespaces in XML 1.0 §6), for readers that resolve names. Declarations
/// are borrowed from the document, so resolving allocates nothing in the usual case (quick-xml's
/// `NsReader` copies every declaration and resolves every event, which doubled PIDF parse
/// time).
#[derive(Default)]
pub struct Namespaces<'i> {
    bindings: Vec<Binding<'i>>,
}

/// The namespace the `xml` prefix is bound to (Namespaces in XML 1.0 §3).
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

impl<'i> Namespaces<'i> {
    /// The namespace bound to `prefix` ("" = default); `None` when unbound or undeclared.
    #[inline]
    pub fn resolve(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(NS_XML);
        }
        self.bindings
            .iter()
            .rev()
            .find(|b| same_prefix(&b.prefix, prefix))
            .map(|b| b.namespace.as_ref())
            .filter(|ns| !ns.is_empty())
    }

    /// Records the declarations of the opening tag `e`, an element at `depth` (the reader's
    /// depth after a `Start`, plus one for an `Empty`), of `reader`'s document.
    #[inline]
    pub fn declare(
        &mut self,
        reader: &XmlReader<'i>,
        e: &BytesStart<'_>,
        depth: usize,
    ) -> Result<(), XmlError> {
        let raw = e.attributes_raw();
        if raw.len() < "xmlns".len() || !raw.contains("xmlns") {
            return Ok(());
        }
        let position = reader.position();
        for attr in e.attributes() {
            let attr = attr.map_err(|err| XmlError::Syntax {
                position,
                message: err.to_string(),
            })?;
            self.declare_one(reader, &attr, position, depth)?;
        }
        Ok(())
    }

    /// [`Namespaces::declare`], and the first attribute whose qualified name is `key` among those
    /// it read, with one pass over the attributes (the declarations and errors are `declare`'s).
    /// A tag that declares no namespace is not read at all and gives `None`: for a root element
    /// that means it has no namespace. The caller decodes the value with [`attribute_value`].
    pub fn declare_and_find<'e>(
        &mut self,
        reader: &XmlReader<'i>,
        e: &'e BytesStart<'_>,
        depth: usize,
        key: &str,
    ) -> Result<Option<Attribute<'e>>, XmlError> {
        let raw = e.attributes_raw();
        if raw.len() < "xmlns".len() || !raw.contains("xmlns") {
            return Ok(None);
        }
        let position = reader.position();
        let mut found = None;
        for attr in e.attributes() {
            let attr = attr.map_err(|err| XmlError::Syntax {
                position,
                message: err.to_string(),
            })?;
            self.declare_one(reader, &attr, position, depth)?;
            if found.is_none() && attr.key.as_ref() == key {
                found = Some(attr);
            }
        }
        Ok(found)
    }

    /// Records `attr` if it is a namespace declaration.
    #[inline]
    fn declare_one(
        &mut self,
        reader: &XmlReader<'i>,
        attr: &Attribute<'_>,
        position: u64,
        depth: usize,
    ) -> Result<(), XmlError> {
        let text = reader.source();
        let key = attr.key.as_ref();
        let prefix = if key == "xmlns" {
            ""
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            p
        } else {
            return Ok(());
        };
        let namespace = match attribute_value(attr, position)? {
            Cow::Borrowed(v) => reborrow(text, v),
            Cow::Owned(v) => Cow::Owned(v),
        };
        let prefix = if prefix.is_empty() {
            Cow::Borrowed("")
        } else {
            reborrow(text, prefix)
        };
        if self.bindings.capacity() == 0 {
            // Most documents declare a handful of prefixes on their root: one allocation.
            self.bindings.reserve(8);
        }
        self.bindings.push(Binding {
            prefix,
            namespace,
            depth,
        });
        Ok(())
    }

    /// Forgets the declarations of elements deeper than `depth` (call when one closes).
    #[inline]
    pub fn pop_to(&mut self, depth: usize) {
        while self.bindings.last().is_some_and(|b| b.depth > depth) {
            self.bindings.pop();
        }
    }
}

/// Whether two prefixes are equal. Prefixes are short, and the default one is empty: comparing
/// lengths first keeps the empty case off `memcmp`, which on this project's machines took a
/// slow path (an AVX-512 masked load at the dangling address of an empty `String`) costing more
/// than the rest of a PIDF document's name resolution (docs/benchmarks.md).
#[inline]
fn same_prefix(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a.as_bytes() == b.as_bytes())
}

/// `part` as a sub-slice of `text` with `text`'s lifetime, if it is one.
#[inline]
fn reborrow<'i>(text: &'i str, part: &str) -> Cow<'i, str> {
    let start = (part.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
    match text.get(start..start.wrapping_add(part.len())) {
        Some(s) if s.as_ptr() == part.as_ptr() => Cow::Borrowed(s),
        _ => Cow::Owned(part.to_owned()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Reads a whole document, collecting the root's text; the error's message otherwise.
    fn read(input: &[u8], limits: &XmlLimits) -> Result<String, String> {
        let mut reader = XmlReader::new(input, limits).map_err(|e| e.to_string())?;
        let mut text = String::new();
        while let Some(event) = reader.next_event().map_err(|e| e.to_string())? {
            event.push_text(&mut text);
        }
        Ok(text)
    }

    #[test]
    fn accepts_predefined_entities_char_refs_cdata_and_a_bom() {
        let doc = "\u{FEFF}<?xml version='1.0'?><!-- c --><?pi x?><a b='&amp;&#x41;'>&lt;&gt;&amp;&quot;&apos;&#65;&#x263A;<![CDATA[<&>]]>\r\nz</a>trailing <garbage";
        assert_eq!(
            read(doc.as_bytes(), &XmlLimits::DEFAULT),
            Ok("<>&\"'A\u{263A}<&>\nz".to_owned())
        );
    }

    #[test]
    fn every_refusal_names_its_cause() {
        let small = XmlLimits {
            max_bytes: 64,
            max_depth: 2,
            max_elements: 3,
        };
        let cases: Vec<(&[u8], &str)> = vec![
            (
                &[b' '; 65],
                "document is 65 bytes, larger than the limit of 64 bytes",
            ),
            (
                b"<a><b><c/></b></a>",
                "elements are nested deeper than the limit of 2 levels",
            ),
            (b"<a><b/><b/><b/></a>", "document has more than 3 elements"),
            (
                b"<a>\xff</a>",
                "document is not valid UTF-8 (invalid byte at offset 3)",
            ),
            (
                b"<!DOCTYPE a><a/>",
                "document contains a DOCTYPE declaration: DTDs and entity declarations are refused",
            ),
            (
                b"<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>",
                "document contains a DOCTYPE declaration: DTDs and entity declarations are refused",
            ),
            (
                b"<a>&x;</a>",
                "entity reference \"&x;\" refused: only &lt; &gt; &amp; &quot; &apos; and character references are allowed",
            ),
            (
                b"<a b='&x;'/>",
                "entity reference \"&x;\" refused: only &lt; &gt; &amp; &quot; &apos; and character references are allowed",
            ),
            (
                b"<a>&#1;</a>",
                "character U+0001 at byte 7 is not allowed in XML",
            ),
            (
                b"<a>&#xFFFE;</a>",
                "character U+FFFE at byte 11 is not allowed in XML",
            ),
            (
                b"<a b='&#1;'/>",
                "character U+0001 at byte 13 is not allowed in XML",
            ),
            (
                b"<a>&#xD800;</a>",
                "malformed XML at byte 11: invalid character reference \"&#xD800;\"",
            ),
            (
                b"<a>&#0;</a>",
                "malformed XML at byte 7: invalid character reference \"&#0;\"",
            ),
            (
                b"<a>\x01</a>",
                "character U+0001 at byte 3 is not allowed in XML",
            ),
            (
                b"<a>\xEF\xBF\xBF</a>",
                "character U+FFFF at byte 3 is not allowed in XML",
            ),
            (b"", "document has no root element"),
            (b"<!-- x --> text", "document has no root element"),
            (
                b"</a>",
                "malformed XML at byte 0: ill-formed document: close tag `</a>` does not match any open tag",
            ),
            (b"<a><b>", "document ends before its root element is closed"),
            (
                b"<a></b>",
                "malformed XML at byte 3: ill-formed document: expected `</a>`, but `</b>` was found",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(
                read(input, &small),
                Err(message.to_owned()),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn bounds_are_inclusive() {
        let limits = XmlLimits {
            max_bytes: 16,
            max_depth: 2,
            max_elements: 3,
        };
        assert!(read(b"<a><b/><b/></a>", &limits).is_ok());
        assert!(read(b"<a><b></b></a>  ", &limits).is_ok());
    }

    /// `declare_and_find` gives what `declare` and then a search of the attributes for the
    /// first `entity` give (the declarations, the attribute, the error), on tags that declare
    /// namespaces; on a tag that declares none it reads nothing.
    #[test]
    fn declare_and_find_agrees_with_declare_then_search() {
        fn two_passes(doc: &str) -> Result<(Option<String>, Vec<Option<String>>), XmlError> {
            let mut reader = XmlReader::new(doc.as_bytes(), &XmlLimits::DEFAULT)?;
            let Some(XmlEvent::Start(e) | XmlEvent::Empty(e)) = reader.next_event()? else {
                panic!("no root in {doc}");
            };
            let mut ns = Namespaces::default();
            ns.declare(&reader, &e, 1)?;
            let position = reader.position();
            let mut value = None;
            for attr in e.attributes() {
                let attr = attr.map_err(|err| XmlError::Syntax {
                    position,
                    message: err.to_string(),
                })?;
                if attr.key.as_ref() == "entity" {
                    value = Some(attribute_value(&attr, position)?.into_owned());
                    break;
                }
            }
            Ok((value, resolved(&ns)))
        }
        fn one_pass(doc: &str) -> Result<(Option<String>, Vec<Option<String>>), XmlError> {
            let mut reader = XmlReader::new(doc.as_bytes(), &XmlLimits::DEFAULT)?;
            let Some(XmlEvent::Start(e) | XmlEvent::Empty(e)) = reader.next_event()? else {
                panic!("no root in {doc}");
            };
            let mut ns = Namespaces::default();
            let found = ns.declare_and_find(&reader, &e, 1, "entity")?;
            let value = match found {
                Some(attr) => Some(attribute_value(&attr, reader.position())?.into_owned()),
                None => None,
            };
            Ok((value, resolved(&ns)))
        }
        fn resolved(ns: &Namespaces<'_>) -> Vec<Option<String>> {
            ["", "a", "b", "xmlns"]
                .iter()
                .map(|p| ns.resolve(p).map(str::to_owned))
                .collect()
        }
        let declaring = [
            "<p xmlns='urn:x' entity='sip:a@b'/>",
            "<p entity='sip:a@b' xmlns='urn:x' xmlns:a='urn:a'/>",
            "<p xmlns:a='urn:a' xmlns:b='urn:b' entity='x&amp;y' entity2='z'/>",
            "<p xmlns='urn:x'/>",
            "<p xmlns='' entity=''/>",
            "<p xmlns='urn:x' entity='a' entity='b'/>",
            "<p entity='a' xmlns='urn:x' entity='b'/>",
            "<p xmlns='urn:x' entity='&bad;'/>",
            "<p entity='&bad;' xmlns='&worse;'/>",
            "<p xmlns='urn:&#1;' entity='a'/>",
            "<p entity='&#1;' xmlns='urn:x'/>",
            "<p xmlns='urn:x' entity=a/>",
            "<p entity='a' xmlns:a='urn:a' xmlns:a='urn:b'/>",
            "<p xmlns:a='urn:a' entity='a' b/>",
            "<p xmlnsfoo='1' entity='a'/>",
        ];
        for doc in declaring {
            assert_eq!(one_pass(doc), two_passes(doc), "{doc}");
        }
        for doc in [
            "<p entity='a'/>",
            "<p entity='a' entity='b'/>",
            "<p b entity='a'/>",
        ] {
            assert_eq!(
                one_pass(doc),
                Ok((None, vec![None, None, None, None])),
                "{doc}"
            );
        }
    }

    #[test]
    fn namespaces_resolve_by_scope() {
        let doc = b"<p:a xmlns:p='urn:p' xmlns='urn:d'><b xmlns='urn:e'/><p:c xmlns:p='urn:q'/><d xmlns=''/><e/></p:a>";
        let mut reader = XmlReader::new(doc, &XmlLimits::DEFAULT).unwrap();
        let mut ns = Namespaces::default();
        let mut got = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            match event {
                XmlEvent::Start(ref e) | XmlEvent::Empty(ref e) => {
                    let depth = reader.depth() + usize::from(matches!(event, XmlEvent::Empty(_)));
                    ns.declare(&reader, e, depth).unwrap();
                    let qname = e.name();
                    let (prefix, local) = split_qname(qname.as_ref());
                    got.push(format!("{local}={}", ns.resolve(prefix).unwrap_or("-")));
                    if matches!(event, XmlEvent::Empty(_)) {
                        ns.pop_to(depth - 1);
                    }
                }
                XmlEvent::End => ns.pop_to(reader.depth()),
                _ => {}
            }
        }
        assert_eq!(got, ["a=urn:p", "b=urn:e", "c=urn:q", "d=-", "e=urn:d"]);
        assert_eq!(ns.resolve("xml"), Some(NS_XML));
    }
}
