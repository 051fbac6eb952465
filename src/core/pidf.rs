//! PIDF presence documents: RFC 3863 (PIDF) with the RPID activities of RFC 4480 and the CIPID
//! `display-name`/`icon` of RFC 4482, in the single-tuple form of the LCS interdomain federation
//! profile ("Presence Documents").
//!
//! * [`render`] writes exactly the profile's form: one `<tuple id="0">` whose `<status>` holds
//!   `<basic>` (RFC 3863 §4.1.4) and `ep:activities/ep:activity` (the profile's pre-RFC 4480
//!   RPID placement, namespace `urn:ietf:params:xml:ns:pidf:status:rpid-status`), notes in the
//!   tuple (RFC 3863 §4.1.6), then top-level `ci:icon` (HTTPS only, as the profile requires) and
//!   `ci:display-name` (RFC 4482 §3.1, §3.3).
//! * [`parse`] reads the first tuple only (the profile: LCS "will not read" later tuples), takes
//!   the activity from the profile's place or from the RFC 4480 §3.2 place (`dm:person` of
//!   RFC 4479 with `rpid:activities`), notes from the tuple, the presence element and the person
//!   (`dm:note`, RFC 4479 §3.3), each with `xml:lang`, and ignores everything it does not know.
//!   Namespaces are resolved, never matched by prefix.
//!
//! Security: input is untrusted and read through the bridge's one hardened XML reader,
//! [`crate::core::xml`]: any DOCTYPE (and with it any DTD, entity declaration or external
//! entity) is refused, so there is no XXE and no entity expansion; only the five predefined
//! entities (XML 1.0 §4.6) and character references to XML characters are accepted. Size and
//! nesting depth are bounded ([`PidfLimits`]). No input can make this module panic.

use quick_xml::events::BytesStart;
use quick_xml::events::attributes::Attribute;
use serde::Serialize;

use crate::core::lang::language_tag;
use crate::core::xml::{self, Namespaces, XmlError, XmlEvent, XmlLimits, XmlReader, split_qname};
use crate::core::xml_chars::{is_xml_char, is_xml_space};

/// RFC 3863 namespace.
pub const NS_PIDF: &str = "urn:ietf:params:xml:ns:pidf";
/// RPID status namespace used by the profile (`ep:`), from the RPID drafts.
pub const NS_RPID_STATUS: &str = "urn:ietf:params:xml:ns:pidf:status:rpid-status";
/// RPID tuple namespace declared by the profile (`et:`), unused in content.
pub const NS_RPID_TUPLE: &str = "urn:ietf:params:xml:ns:pidf:rpid-tuple";
/// RFC 4482 CIPID namespace (`ci:`).
pub const NS_CIPID: &str = "urn:ietf:params:xml:ns:pidf:cipid";
/// RFC 4479 data model namespace (`dm:person`, `dm:note`).
pub const NS_DATA_MODEL: &str = "urn:ietf:params:xml:ns:pidf:data-model";
/// RFC 4480 RPID namespace (`rpid:activities`).
pub const NS_RPID: &str = "urn:ietf:params:xml:ns:pidf:rpid";

/// RFC 3863 §4.1.4 `<basic>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Basic {
    /// `open`: the presentity can receive instant messages.
    Open,
    /// `closed`: it cannot.
    Closed,
}

impl Basic {
    /// The element text.
    pub const fn as_str(self) -> &'static str {
        match self {
            Basic::Open => "open",
            Basic::Closed => "closed",
        }
    }

    /// `open` / `closed` (ASCII case-insensitive, as received documents vary).
    pub fn from_token(s: &str) -> Option<Basic> {
        if s.eq_ignore_ascii_case("open") {
            Some(Basic::Open)
        } else if s.eq_ignore_ascii_case("closed") {
            Some(Basic::Closed)
        } else {
            None
        }
    }
}

/// RFC 3863 §4.1.6 `<note>` with its `xml:lang`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Note {
    /// `xml:lang`, if any (an empty attribute is treated as absent).
    pub lang: Option<String>,
    /// The text, trimmed of XML white space.
    pub text: String,
}

/// What the bridge reads from and writes into a PIDF document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PidfDocument {
    /// The `entity` attribute of `<presence>` (the presentity's URI). Empty if absent.
    pub entity: String,
    /// `<basic>` of the first tuple.
    pub basic: Option<Basic>,
    /// The RPID activity token (e.g. `away`), or the text of `<rpid:other>`.
    pub activity: Option<String>,
    /// Notes in document order.
    pub notes: Vec<Note>,
    /// `ci:display-name`.
    pub display_name: Option<String>,
    /// `ci:icon` (rendered only when it is an `https:` URL).
    pub icon: Option<String>,
}

/// Bounds applied by [`parse_with_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidfLimits {
    /// Largest accepted document, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted element nesting (`presence` is depth 1).
    pub max_depth: usize,
}

impl Default for PidfLimits {
    fn default() -> Self {
        PidfLimits {
            max_bytes: 65536,
            max_depth: 32,
        }
    }
}

/// Why a PIDF document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PidfError {
    /// Refused by the hardened XML reader ([`crate::core::xml`]): size, depth, encoding,
    /// DOCTYPE, entity, character or syntax; the variant names the cause.
    #[error(transparent)]
    Xml(XmlError),
    /// The root element is not PIDF's `presence`.
    #[error("{}", wrong_root_message(name, namespace.as_deref()))]
    WrongRoot {
        /// Local name of the root element.
        name: String,
        /// Its namespace, if bound.
        namespace: Option<String>,
    },
    /// The input ended inside the document.
    #[error("document ends before the closing </presence>")]
    Truncated,
}

fn wrong_root_message(name: &str, namespace: Option<&str>) -> String {
    if name == "presence" {
        format!(
            "root element is \"presence\" in {}, expected \"presence\" in {NS_PIDF}",
            namespace.map_or_else(|| "no namespace".to_owned(), |ns| format!("namespace {ns}"))
        )
    } else {
        format!("root element is \"{name}\", expected \"presence\" in {NS_PIDF}")
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// Renders the profile's single-tuple document. Text and attribute values are escaped (`& < >
/// " '`), characters not allowed in XML 1.0 are dropped, empty values are omitted, and the icon
/// is written only when it is an `https:` URL.
pub fn render(doc: &PidfDocument) -> String {
    let extra = doc.entity.len()
        + doc.activity.as_ref().map_or(0, String::len)
        + doc.display_name.as_ref().map_or(0, String::len)
        + doc.icon.as_ref().map_or(0, String::len)
        + doc.notes.iter().map(|n| n.text.len() + 40).sum::<usize>();
    let mut out = String::with_capacity(480 + extra + extra / 8);
    render_into(doc, &mut out);
    out
}

/// [`render`] appending to an existing buffer.
pub fn render_into(doc: &PidfDocument, out: &mut String) {
    out.push_str(concat!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n",
        "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"",
        " xmlns:ep=\"urn:ietf:params:xml:ns:pidf:status:rpid-status\"",
        " xmlns:et=\"urn:ietf:params:xml:ns:pidf:rpid-tuple\"",
        " xmlns:ci=\"urn:ietf:params:xml:ns:pidf:cipid\" entity=\""
    ));
    push_escaped(out, &doc.entity, true);
    out.push_str("\">\n  <tuple id=\"0\">\n    <status>\n");
    if let Some(basic) = doc.basic {
        out.push_str("      <basic>");
        out.push_str(basic.as_str());
        out.push_str("</basic>\n");
    }
    if let Some(activity) = doc.activity.as_deref().filter(|a| !is_blank(a)) {
        out.push_str("      <ep:activities>\n        <ep:activity>");
        push_escaped(out, activity, false);
        out.push_str("</ep:activity>\n      </ep:activities>\n");
    }
    out.push_str("    </status>\n");
    for note in doc.notes.iter().filter(|n| !is_blank(&n.text)) {
        out.push_str("    <note");
        if let Some(lang) = note.lang.as_deref().filter(|l| !l.is_empty()) {
            out.push_str(" xml:lang=\"");
            push_escaped(out, lang, true);
            out.push('"');
        }
        out.push('>');
        push_escaped(out, &note.text, false);
        out.push_str("</note>\n");
    }
    out.push_str("  </tuple>\n");
    if let Some(icon) = doc.icon.as_deref().filter(|i| is_https(i)) {
        out.push_str("  <ci:icon>");
        push_escaped(out, icon, false);
        out.push_str("</ci:icon>\n");
    }
    if let Some(name) = doc.display_name.as_deref().filter(|n| !is_blank(n)) {
        out.push_str("  <ci:display-name>");
        push_escaped(out, name, false);
        out.push_str("</ci:display-name>\n");
    }
    out.push_str("</presence>\n");
}

/// True when nothing would remain after dropping non-XML characters and trimming white space.
fn is_blank(s: &str) -> bool {
    s.chars().all(|c| is_xml_space(c) || !is_xml_char(c))
}

/// `https:` URL (scheme case-insensitive), as the profile requires for the icon.
fn is_https(url: &str) -> bool {
    let url = url.trim_matches(is_xml_space);
    url.len() > 8
        && url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// Appends `s` escaped. `& < > " '` always become references; `\r` (and in attributes `\t`,
/// `\n`) become character references so that they survive XML end-of-line and attribute-value
/// normalisation; characters outside XML 1.0 `Char` are dropped.
pub(crate) fn push_escaped(out: &mut String, s: &str, attribute: bool) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (replacement, skip): (&str, usize) = match b {
            b'&' => ("&amp;", 1),
            b'<' => ("&lt;", 1),
            b'>' => ("&gt;", 1),
            b'"' => ("&quot;", 1),
            b'\'' => ("&apos;", 1),
            b'\r' => ("&#13;", 1),
            b'\t' if attribute => ("&#9;", 1),
            b'\n' if attribute => ("&#10;", 1),
            b'\t' | b'\n' => {
                i += 1;
                continue;
            }
            0..=0x1F => ("", 1),
            // U+FFFE and U+FFFF: EF BF BE / EF BF BF.
            0xEF if bytes.get(i + 1) == Some(&0xBF)
                && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) =>
            {
                ("", 3)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        // `start..i` ends before an ASCII byte or a lead byte, so it is a char boundary.
        out.push_str(s.get(start..i).unwrap_or_default());
        out.push_str(replacement);
        i += skip;
        start = i;
    }
    out.push_str(s.get(start..).unwrap_or_default());
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Parses with the default [`PidfLimits`] (64 KiB, depth 32).
pub fn parse(input: &[u8]) -> Result<PidfDocument, PidfError> {
    parse_with_limits(input, &PidfLimits::default())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ns {
    Pidf,
    RpidStatus,
    Rpid,
    Cipid,
    DataModel,
    Other,
}

fn classify_ns(ns: &str) -> Ns {
    match ns {
        NS_PIDF => Ns::Pidf,
        NS_RPID_STATUS => Ns::RpidStatus,
        NS_RPID => Ns::Rpid,
        NS_CIPID => Ns::Cipid,
        NS_DATA_MODEL => Ns::DataModel,
        _ => Ns::Other,
    }
}

/// Where the parser is. Text is collected only while a text frame is on top.
enum Frame {
    Presence,
    Tuple,
    Status,
    Person,
    Activities { person: bool },
    Skip,
    // Text frames:
    Basic,
    Activity { person: bool },
    Other { person: bool },
    Note { lang: Option<String> },
    DisplayName,
    Icon,
}

impl Frame {
    fn collects_text(&self) -> bool {
        matches!(
            self,
            Frame::Basic
                | Frame::Activity { .. }
                | Frame::Other { .. }
                | Frame::Note { .. }
                | Frame::DisplayName
                | Frame::Icon
        )
    }
}

#[derive(Default)]
struct State {
    doc: PidfDocument,
    seen_tuple: bool,
    seen_status: bool,
    seen_person: bool,
    tuple_activity: Option<String>,
    person_activity: Option<String>,
}

/// Parses a PIDF document under the given limits. See the module documentation for what is
/// read; everything else is ignored.
pub fn parse_with_limits(input: &[u8], limits: &PidfLimits) -> Result<PidfDocument, PidfError> {
    let limits = XmlLimits {
        max_bytes: limits.max_bytes,
        max_depth: limits.max_depth,
        max_elements: usize::MAX,
    };
    let mut reader = XmlReader::new(input, &limits)?;
    let mut scopes = Namespaces::default();
    let mut stack: Vec<Frame> = Vec::with_capacity(8);
    let mut buf = String::new();
    let mut st = State::default();

    while let Some(event) = reader.next_event()? {
        match event {
            XmlEvent::Start(ref e) | XmlEvent::Empty(ref e) => {
                let empty = matches!(event, XmlEvent::Empty(_));
                let position = reader.position();
                let depth = stack.len() + 1;
                // The root's `entity` is found in the same pass as its declarations (a root
                // without any cannot be PIDF's `presence`).
                let entity = if depth == 1 {
                    scopes.declare_and_find(&reader, e, depth, "entity")?
                } else {
                    scopes.declare(&reader, e, depth)?;
                    None
                };
                let qname = e.name();
                let (prefix, local) = split_qname(qname.as_ref());
                let namespace = scopes.resolve(prefix);
                let ns = namespace.map_or(Ns::Other, classify_ns);
                let frame = open(&mut st, &stack, ns, local, namespace, e, entity, position)?;
                if empty {
                    scopes.pop_to(depth - 1);
                    close(&mut st, frame, "");
                } else {
                    if frame.collects_text() {
                        buf.clear();
                    }
                    stack.push(frame);
                }
            }
            XmlEvent::End => {
                if let Some(frame) = stack.pop() {
                    scopes.pop_to(stack.len());
                    close(&mut st, frame, &buf);
                }
            }
            XmlEvent::Text(_) | XmlEvent::CData(_) | XmlEvent::Char(_) => {
                if stack.last().is_some_and(Frame::collects_text) {
                    event.push_text(&mut buf);
                }
            }
        }
    }
    Ok(finish(st))
}

impl From<XmlError> for PidfError {
    fn from(e: XmlError) -> Self {
        match e {
            XmlError::Truncated => PidfError::Truncated,
            other => PidfError::Xml(other),
        }
    }
}

/// Decides what an opening element means in its context (`entity`: the root's attribute of
/// that name).
#[allow(clippy::too_many_arguments)]
fn open(
    st: &mut State,
    stack: &[Frame],
    ns: Ns,
    local: &str,
    namespace: Option<&str>,
    e: &BytesStart<'_>,
    entity: Option<Attribute<'_>>,
    position: u64,
) -> Result<Frame, PidfError> {
    let Some(parent) = stack.last() else {
        if ns == Ns::Pidf && local == "presence" {
            if let Some(entity) = entity {
                st.doc.entity = xml::attribute_value(&entity, position)?.into_owned();
            }
            return Ok(Frame::Presence);
        }
        return Err(PidfError::WrongRoot {
            name: local.to_owned(),
            namespace: namespace.map(str::to_owned),
        });
    };
    Ok(match (parent, ns, local) {
        (Frame::Presence, Ns::Pidf, "tuple") if !st.seen_tuple => {
            st.seen_tuple = true;
            Frame::Tuple
        }
        (Frame::Presence, Ns::Pidf, "note")
        | (Frame::Tuple, Ns::Pidf, "note")
        | (Frame::Person, Ns::DataModel | Ns::Pidf, "note") => Frame::Note {
            lang: note_lang(e, position)?,
        },
        (Frame::Presence, Ns::DataModel, "person") if !st.seen_person => {
            st.seen_person = true;
            Frame::Person
        }
        (Frame::Presence, Ns::Cipid, "display-name") if st.doc.display_name.is_none() => {
            Frame::DisplayName
        }
        (Frame::Presence, Ns::Cipid, "icon") if st.doc.icon.is_none() => Frame::Icon,
        (Frame::Tuple, Ns::Pidf, "status") if !st.seen_status => {
            st.seen_status = true;
            Frame::Status
        }
        (Frame::Status, Ns::Pidf, "basic") => Frame::Basic,
        (Frame::Status, Ns::RpidStatus | Ns::Rpid, "activities") => {
            Frame::Activities { person: false }
        }
        (Frame::Person, Ns::Rpid | Ns::RpidStatus, "activities") => {
            Frame::Activities { person: true }
        }
        (Frame::Activities { person }, Ns::Rpid | Ns::RpidStatus, name) => {
            let person = *person;
            match name {
                "activity" => Frame::Activity { person },
                "other" => Frame::Other { person },
                // RFC 4480 §3.2 allows `<rpid:note>` among the activities: not a token.
                "note" => Frame::Skip,
                token => {
                    // RFC 4480 §3.2: the element name is the activity (`<rpid:away/>`).
                    set_activity(st, person, token);
                    Frame::Skip
                }
            }
        }
        _ => Frame::Skip,
    })
}

fn set_activity(st: &mut State, person: bool, value: &str) {
    let value = value.trim_matches(is_xml_space);
    if value.is_empty() {
        return;
    }
    let slot = if person {
        &mut st.person_activity
    } else {
        &mut st.tuple_activity
    };
    if slot.is_none() {
        *slot = Some(value.to_owned());
    }
}

/// Applies a closed element's collected text.
fn close(st: &mut State, frame: Frame, text: &str) {
    let trimmed = text.trim_matches(is_xml_space);
    match frame {
        Frame::Basic => {
            if st.doc.basic.is_none() {
                st.doc.basic = Basic::from_token(trimmed);
            }
        }
        Frame::Activity { person } => set_activity(st, person, trimmed),
        Frame::Other { person } => set_activity(
            st,
            person,
            if trimmed.is_empty() { "other" } else { trimmed },
        ),
        Frame::Note { lang } => {
            if !trimmed.is_empty() {
                st.doc.notes.push(Note {
                    lang,
                    text: trimmed.to_owned(),
                });
            }
        }
        Frame::DisplayName => {
            if !trimmed.is_empty() {
                st.doc.display_name = Some(trimmed.to_owned());
            }
        }
        Frame::Icon => {
            if !trimmed.is_empty() {
                st.doc.icon = Some(trimmed.to_owned());
            }
        }
        Frame::Presence
        | Frame::Tuple
        | Frame::Status
        | Frame::Person
        | Frame::Activities { .. }
        | Frame::Skip => {}
    }
}

fn finish(st: State) -> PidfDocument {
    let mut doc = st.doc;
    doc.activity = st.tuple_activity.or(st.person_activity);
    doc
}

/// A note's `xml:lang`, if it is a BCP 47 tag (an empty or malformed one counts as absent).
/// Matched on the raw qualified name: the `xml:` prefix cannot be rebound.
fn note_lang(e: &BytesStart<'_>, position: u64) -> Result<Option<String>, PidfError> {
    for attr in e.attributes() {
        let attr = attr.map_err(|err| XmlError::Syntax {
            position,
            message: err.to_string(),
        })?;
        if attr.key.as_ref() == "xml:lang" {
            let value = xml::attribute_value(&attr, position)?;
            return Ok(language_tag(&value).map(str::to_owned));
        }
    }
    Ok(None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PROFILE_EXAMPLE: &str = include_str!("../../tests/golden/pidf/profile-example.xml");

    fn typical() -> PidfDocument {
        PidfDocument {
            entity: "sip:alice@example.org".into(),
            basic: Some(Basic::Open),
            activity: Some("away".into()),
            notes: vec![],
            display_name: Some("Alice at Example".into()),
            icon: Some("https://example.org/brand16.png".into()),
        }
    }

    #[test]
    fn renders_the_profile_form_exactly() {
        let expected = "<?xml version=\"1.0\" encoding=\"utf-8\"?>
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:ep=\"urn:ietf:params:xml:ns:pidf:status:rpid-status\" xmlns:et=\"urn:ietf:params:xml:ns:pidf:rpid-tuple\" xmlns:ci=\"urn:ietf:params:xml:ns:pidf:cipid\" entity=\"sip:alice@example.org\">
  <tuple id=\"0\">
    <status>
      <basic>open</basic>
      <ep:activities>
        <ep:activity>away</ep:activity>
      </ep:activities>
    </status>
  </tuple>
  <ci:icon>https://example.org/brand16.png</ci:icon>
  <ci:display-name>Alice at Example</ci:display-name>
</presence>
";
        assert_eq!(render(&typical()), expected);
    }

    #[test]
    fn render_table() {
        let head = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:ep=\"urn:ietf:params:xml:ns:pidf:status:rpid-status\" xmlns:et=\"urn:ietf:params:xml:ns:pidf:rpid-tuple\" xmlns:ci=\"urn:ietf:params:xml:ns:pidf:cipid\" entity=\"";
        let cases: Vec<(&str, PidfDocument, &str)> = vec![
            (
                "closed, nothing else",
                PidfDocument {
                    entity: "sip:a@b".into(),
                    basic: Some(Basic::Closed),
                    ..Default::default()
                },
                "sip:a@b\">\n  <tuple id=\"0\">\n    <status>\n      <basic>closed</basic>\n    </status>\n  </tuple>\n</presence>\n",
            ),
            (
                "escaping everywhere, http icon dropped, blank values omitted",
                PidfDocument {
                    entity: "sip:\"a\"&'b'<c>\t\n\r@d".into(),
                    basic: Some(Basic::Open),
                    activity: Some("  ".into()),
                    notes: vec![
                        Note {
                            lang: Some("en".into()),
                            text: "a<b & \"c\" 'd' >\u{0}\u{1b}\u{FFFE}\r".into(),
                        },
                        Note {
                            lang: None,
                            text: "\u{1}".into(),
                        },
                        Note {
                            lang: Some("".into()),
                            text: "x".into(),
                        },
                    ],
                    display_name: Some("Bob & <Co>".into()),
                    icon: Some("http://example.com/i.png".into()),
                },
                "sip:&quot;a&quot;&amp;&apos;b&apos;&lt;c&gt;&#9;&#10;&#13;@d\">\n  <tuple id=\"0\">\n    <status>\n      <basic>open</basic>\n    </status>\n    <note xml:lang=\"en\">a&lt;b &amp; &quot;c&quot; &apos;d&apos; &gt;&#13;</note>\n    <note>x</note>\n  </tuple>\n  <ci:display-name>Bob &amp; &lt;Co&gt;</ci:display-name>\n</presence>\n",
            ),
        ];
        for (name, doc, tail) in cases {
            assert_eq!(render(&doc), format!("{head}{tail}"), "{name}");
        }
    }

    #[test]
    fn parses_the_profile_example() {
        let doc = parse(PROFILE_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            doc,
            PidfDocument {
                entity: "sip:joe@contoso.com".into(),
                basic: Some(Basic::Open),
                activity: Some("away".into()),
                notes: vec![],
                display_name: Some("Joe at Contoso".into()),
                icon: Some("http://www.contoso.com/brandingicon.png".into()),
            }
        );
    }

    #[test]
    fn render_then_parse_is_identity_for_typical() {
        let doc = typical();
        assert_eq!(parse(render(&doc).as_bytes()).unwrap(), doc);
    }

    fn wrap(body: &str) -> String {
        format!(
            "<presence xmlns='urn:ietf:params:xml:ns:pidf' \
             xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model' \
             xmlns:rpid='urn:ietf:params:xml:ns:pidf:rpid' \
             xmlns:e='urn:ietf:params:xml:ns:pidf:status:rpid-status' \
             xmlns:c='urn:ietf:params:xml:ns:pidf:cipid' entity='sip:x@y'>{body}</presence>"
        )
    }

    #[test]
    fn parse_table() {
        type Expect = (
            Option<Basic>,
            Option<&'static str>,
            Vec<(Option<&'static str>, &'static str)>,
        );
        let cases: Vec<(&str, String, Expect)> = vec![
            (
                "person activity element",
                wrap("<tuple id='t'><status><basic>open</basic></status></tuple><dm:person id='p'><rpid:activities><rpid:on-the-phone/></rpid:activities></dm:person>"),
                (Some(Basic::Open), Some("on-the-phone"), vec![]),
            ),
            (
                "tuple activity wins over person activity",
                wrap("<tuple id='t'><status><basic>open</basic><e:activities><e:activity>busy</e:activity></e:activities></status></tuple><dm:person id='p'><rpid:activities><rpid:away/></rpid:activities></dm:person>"),
                (Some(Basic::Open), Some("busy"), vec![]),
            ),
            (
                "person before tuple still read, other text is the activity",
                wrap("<dm:person id='p'><rpid:activities><rpid:other> Commuting </rpid:other></rpid:activities><dm:note xml:lang='fr'>En route</dm:note></dm:person><tuple id='t'><status><basic>CLOSED</basic></status></tuple>"),
                (Some(Basic::Closed), Some("Commuting"), vec![(Some("fr"), "En route")]),
            ),
            (
                "empty other is the token other",
                wrap("<dm:person id='p'><rpid:activities><rpid:other/></rpid:activities></dm:person>"),
                (None, Some("other"), vec![]),
            ),
            (
                "only the first tuple is read",
                wrap("<tuple id='a'><status><basic>closed</basic></status><note>first</note></tuple><tuple id='b'><status><basic>open</basic><e:activities><e:activity>away</e:activity></e:activities></status><note>second</note></tuple>"),
                (Some(Basic::Closed), None, vec![(None, "first")]),
            ),
            (
                "entities, char refs, CDATA, prefixes, unknown stuff",
                "<?xml version='1.0'?><!-- c --><p:presence xmlns:p='urn:ietf:params:xml:ns:pidf' xmlns:zz='urn:ietf:params:xml:ns:pidf:status:rpid-status' entity='sip:a&amp;b' foo='bar'><p:tuple id='0'><x:unknown xmlns:x='urn:x'><p:basic>closed</p:basic></x:unknown><p:status><p:basic>open</p:basic><zz:activities><zz:activity>a&lt;b&#x263A;<![CDATA[<c>]]></zz:activity></zz:activities></p:status><p:note xml:lang='en'> 1 &amp; 2 <b>bold</b>&#65;</p:note></p:tuple></p:presence>".to_owned(),
                (Some(Basic::Open), Some("a<b\u{263A}<c>"), vec![(Some("en"), "1 & 2 A")]),
            ),
            (
                "presence-level note and empty elements",
                wrap("<note xml:lang=''>hi</note><note/><tuple id='0'><status><basic/></status></tuple>"),
                (None, None, vec![(None, "hi")]),
            ),
        ];
        for (name, input, (basic, activity, notes)) in cases {
            let doc = parse(input.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(doc.basic, basic, "{name}");
            assert_eq!(doc.activity.as_deref(), activity, "{name}");
            let got: Vec<(Option<&str>, &str)> = doc
                .notes
                .iter()
                .map(|n| (n.lang.as_deref(), n.text.as_str()))
                .collect();
            assert_eq!(got, notes, "{name}");
        }
    }

    #[test]
    fn parse_errors_are_exact() {
        let deep = format!(
            "<presence xmlns='urn:ietf:params:xml:ns:pidf'>{}{}</presence>",
            "<a>".repeat(40),
            "</a>".repeat(40)
        );
        let big = format!(
            "<presence xmlns='urn:ietf:params:xml:ns:pidf'>{}</presence>",
            " ".repeat(70000)
        );
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("wrong root", b"<foo/>".to_vec(), "root element is \"foo\", expected \"presence\" in urn:ietf:params:xml:ns:pidf"),
            ("presence without namespace", b"<presence entity='x'/>".to_vec(), "root element is \"presence\" in no namespace, expected \"presence\" in urn:ietf:params:xml:ns:pidf"),
            ("presence in jabber:client", b"<presence xmlns='jabber:client'/>".to_vec(), "root element is \"presence\" in namespace jabber:client, expected \"presence\" in urn:ietf:params:xml:ns:pidf"),
            ("doctype", b"<?xml version='1.0'?><!DOCTYPE presence [<!ENTITY x 'y'>]><presence xmlns='urn:ietf:params:xml:ns:pidf'>&x;</presence>".to_vec(), "document contains a DOCTYPE declaration: DTDs and entity declarations are refused"),
            ("undeclared entity", b"<presence xmlns='urn:ietf:params:xml:ns:pidf'><note>&xxe;</note></presence>".to_vec(), "entity reference \"&xxe;\" refused: only &lt; &gt; &amp; &quot; &apos; and character references are allowed"),
            ("entity in attribute", b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='&lol;'/>".to_vec(), "entity reference \"&lol;\" refused: only &lt; &gt; &amp; &quot; &apos; and character references are allowed"),
            ("too deep", deep.into_bytes(), "elements are nested deeper than the limit of 32 levels"),
            ("too large", big.into_bytes(), "document is 70057 bytes, larger than the limit of 65536 bytes"),
            ("not utf-8", b"<presence xmlns='urn:ietf:params:xml:ns:pidf'>\xff</presence>".to_vec(), "document is not valid UTF-8 (invalid byte at offset 46)"),
            ("empty", b"".to_vec(), "document has no root element"),
            ("only a comment", b"<!-- x -->".to_vec(), "document has no root element"),
            ("truncated", b"<presence xmlns='urn:ietf:params:xml:ns:pidf'><tuple>".to_vec(), "document ends before the closing </presence>"),
        ];
        for (name, input, message) in cases {
            let err = parse(&input).unwrap_err();
            assert_eq!(err.to_string(), message, "{name}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        for input in [
            &b"<"[..],
            b"<presence",
            b"</presence>",
            b"<presence xmlns='urn:ietf:params:xml:ns:pidf'></tuple>",
            b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='a' entity='b'/>",
            b"<presence xmlns='urn:ietf:params:xml:ns:pidf'><note>&#0;</note></presence>",
            b"<presence xmlns='urn:ietf:params:xml:ns:pidf'><note>&#xD800;</note></presence>",
            b"<presence xmlns='urn:ietf:params:xml:ns:pidf'><note>& x</note></presence>",
            b"<x:presence xmlns='urn:ietf:params:xml:ns:pidf'/>",
        ] {
            let _ = parse(input);
        }
    }

    mod roundtrip {
        use super::super::*;
        use proptest::prelude::*;

        /// Text with markup characters, white space, unicode and characters XML forbids.
        fn text() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    4 => proptest::char::range('a', 'z'),
                    2 => prop::sample::select(vec!['<', '>', '&', '"', '\'', ' ', '\t', '\n', '\r', ';', '#']),
                    1 => prop::sample::select(vec!['\u{0}', '\u{1}', '\u{1f}', '\u{7f}', '\u{fffe}', '\u{ffff}', '\u{feff}']),
                    2 => any::<char>(),
                ],
                0..24,
            )
            .prop_map(|v| v.into_iter().collect())
        }

        fn clean(s: &str) -> String {
            s.chars()
                .filter(|c| is_xml_char(*c))
                .collect::<String>()
                .trim_matches(is_xml_space)
                .to_owned()
        }

        fn nonblank(s: &Option<String>) -> Option<String> {
            s.as_deref().map(clean).filter(|s| !s.is_empty())
        }

        /// What parse(render(doc)) must give back.
        fn expected(doc: &PidfDocument) -> PidfDocument {
            PidfDocument {
                entity: doc.entity.chars().filter(|c| is_xml_char(*c)).collect(),
                basic: doc.basic,
                activity: nonblank(&doc.activity),
                notes: doc
                    .notes
                    .iter()
                    .filter_map(|n| {
                        let text = clean(&n.text);
                        (!text.is_empty()).then(|| Note {
                            lang: n.lang.as_deref().and_then(|l| {
                                let l: String = l.chars().filter(|c| is_xml_char(*c)).collect();
                                language_tag(&l).map(str::to_owned)
                            }),
                            text,
                        })
                    })
                    .collect(),
                display_name: nonblank(&doc.display_name),
                icon: doc.icon.as_deref().filter(|i| is_https(i)).map(clean),
            }
        }

        fn document() -> impl Strategy<Value = PidfDocument> {
            (
                text(),
                prop::option::of(prop_oneof![Just(Basic::Open), Just(Basic::Closed)]),
                prop::option::of(text()),
                proptest::collection::vec(
                    (
                        prop::option::of(prop_oneof![
                            text(),
                            "[a-z]{2,3}(-[A-Z][a-z]{3})?(-[A-Z]{2})?",
                            "x-[a-z0-9]{1,8}",
                        ]),
                        text(),
                    ),
                    0..3,
                ),
                prop::option::of(text()),
                prop::option::of((
                    prop_oneof![
                        Just("https://"),
                        Just("HTTPS://"),
                        Just("http://"),
                        Just("")
                    ],
                    text(),
                )),
            )
                .prop_map(|(entity, basic, activity, notes, display_name, icon)| {
                    PidfDocument {
                        entity,
                        basic,
                        activity,
                        notes: notes
                            .into_iter()
                            .map(|(lang, text)| Note { lang, text })
                            .collect(),
                        display_name,
                        icon: icon.map(|(scheme, rest)| format!("{scheme}{rest}")),
                    }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn render_then_parse_round_trips(doc in document()) {
                let xml = render(&doc);
                let parsed = parse(xml.as_bytes());
                prop_assert!(parsed.is_ok(), "{:?} on {}", parsed, xml);
                prop_assert_eq!(parsed.unwrap_or_default(), expected(&doc), "{}", xml);
            }

            #[test]
            fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse(&bytes);
            }

            #[test]
            fn parse_never_panics_on_mutated_documents(doc in document(), cut in 0usize..2000, byte in any::<u8>()) {
                let mut xml = render(&doc).into_bytes();
                let at = cut % xml.len().max(1);
                if let Some(b) = xml.get_mut(at) {
                    *b = byte;
                }
                let _ = parse(&xml);
                let _ = parse(&xml[..at]);
            }
        }
    }
}
