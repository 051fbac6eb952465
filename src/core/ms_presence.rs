//! Microsoft enhanced presence received from LCS/OCS/Lync/Skype for Business peers: the two
//! formats a Microsoft server may answer a presence subscription with besides PIDF
//! ([MS-PRES] §1.3.3: the server takes the first type of the SUBSCRIBE's `Accept` it supports).
//!
//! * `application/msrtc-event-categories+xml` ([MS-PRES] §2.2.2.5, §4.4): a `<categories>`
//!   document of `<category name=… publishTime=…>` instances. Read: `state` (the aggregated
//!   `<availability>` number and the `<activity token=…>` with its optional `<custom>` text;
//!   Lync schema "state element"), `note` (`<note><body type="personal|OOF">`; Lync schema
//!   "note/body element") and `contactCard` (`identity/name/displayName`). Everything else
//!   (calendarData, services, unknown categories) is ignored. Of several instances of one
//!   category the newest by `publishTime` wins (a later one in the document on a tie), an
//!   `aggregateState` before any other state type; a `note` category without a `<body>` is the
//!   note removed (pidgin-sipe `sipe-notify.c`, `process_incoming_notify_rlmi`).
//! * `text/xml+msrtc.pidf` ([MS-SIP] §2.2.1, LCS 2005): `<presentity>` with `availability`
//!   and `activity` `aggregate` numbers, `displayName`, `userInfo/note` and
//!   `userInfo/states/state avail=…` (an OCS 2007 availability number). It is turned into the
//!   same [`MsPresence`] (see [`legacy_availability`]).
//!
//! A categories NOTIFY may carry only the categories that changed; [`MsPresence::update`]
//! merges one into the last.
//!
//! Security: read through the bridge's one hardened XML reader ([`crate::core::xml`]: no
//! DOCTYPE, only predefined entities, size, depth and element count bounded); namespaces are
//! resolved, never matched by prefix; a number that does not parse is ignored with its
//! element; no input can make this module panic. The texts kept here are the peer's, trimmed;
//! they are cleaned and capped where they become XMPP text (`core::presence`).

use quick_xml::events::BytesStart;
use serde::Serialize;

use crate::core::pidf::push_escaped;
use crate::core::xml::{self, Namespaces, XmlError, XmlEvent, XmlLimits, XmlReader, split_qname};
use crate::core::xml_chars::is_xml_space;

/// [MS-PRES] category documents.
pub const CATEGORIES_TYPE: &str = "application/msrtc-event-categories+xml";
/// [MS-SIP] LCS 2005 presence documents.
pub const MSRTC_PIDF_TYPE: &str = "text/xml+msrtc.pidf";
/// The body of a category subscription ([MS-PRES] §2.2.2.4.1).
pub const CATEGORY_LIST_TYPE: &str = "application/msrtc-adrl-categorylist+xml";

/// `<categories>` and `<category>`.
pub const NS_CATEGORIES: &str = "http://schemas.microsoft.com/2006/09/sip/categories";
/// `<state>`.
pub const NS_STATE: &str = "http://schemas.microsoft.com/2006/09/sip/state";
/// `<note>`.
pub const NS_NOTE: &str = "http://schemas.microsoft.com/2006/09/sip/note";
/// `<contactCard>`.
pub const NS_CONTACT_CARD: &str = "http://schemas.microsoft.com/2006/09/sip/contactcard";
/// `<presentity>` of `text/xml+msrtc.pidf`, as servers and clients write it (pidgin-sipe
/// `sipe-ocs2005.c`).
pub const NS_MSRTC_PRESENCE: &str = "http://schemas.microsoft.com/2002/09/sip/presence";
/// The same namespace as [MS-SIP] Appendix A's schema spells its `targetNamespace`; read too.
pub const NS_MSRTC_PRESENCE_SCHEMA: &str = "http://schemas.microsoft.com/09/2002/sip/presence";

fn is_msrtc(ns: Option<&str>) -> bool {
    matches!(ns, Some(NS_MSRTC_PRESENCE | NS_MSRTC_PRESENCE_SCHEMA))
}
/// `<batchSub>` of a category subscription.
pub const NS_BATCH_SUBSCRIBE: &str = "http://schemas.microsoft.com/2006/01/sip/batch-subscribe";
/// `<categoryList>` of a category subscription.
pub const NS_CATEGORY_LIST: &str = "http://schemas.microsoft.com/2006/09/sip/categorylist";

/// The kind of a note (Lync schema "note/body element": `personal` is the user's own message,
/// `OOF` the out-of-office message set in Outlook).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NoteKind {
    /// `type="personal"` (and any type other than `OOF`).
    Personal,
    /// `type="OOF"`.
    OutOfOffice,
}

/// The note a contact shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MsNote {
    /// Personal or out of office.
    pub kind: NoteKind,
    /// The text, trimmed of XML white space.
    pub text: String,
}

/// The `state` category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MsState {
    /// `<availability>`: the Lync availability number (0–4499 available, … ≥ 18000 offline).
    pub availability: u32,
    /// `<activity token=…>`, when it applies to `availability`.
    pub activity: Option<String>,
    /// `<activity><custom>` text, when it applies.
    pub custom: Option<String>,
}

/// What a Microsoft enhanced-presence document says about a contact.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct MsPresence {
    /// The `uri` attribute of the root (empty if absent).
    pub uri: String,
    /// The newest state; `None` when the document had none.
    pub state: Option<MsState>,
    /// Whether the document had a `note` category (so that `note: None` is a removal).
    pub note_seen: bool,
    /// The newest note.
    pub note: Option<MsNote>,
    /// `contactCard`'s (or msrtc.pidf's) display name.
    pub display_name: Option<String>,
}

impl MsPresence {
    /// Takes what `newer` carries over this document: its state, its note (also a removal),
    /// its display name; the rest stays.
    pub fn update(&mut self, newer: MsPresence) {
        if !newer.uri.is_empty() {
            self.uri = newer.uri;
        }
        if newer.state.is_some() {
            self.state = newer.state;
        }
        if newer.note_seen {
            self.note_seen = true;
            self.note = newer.note;
        }
        if newer.display_name.is_some() {
            self.display_name = newer.display_name;
        }
    }
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsError {
    /// Refused by the hardened XML reader.
    #[error(transparent)]
    Xml(XmlError),
    /// The root element is not the expected one.
    #[error("root element is \"{name}\" in {}, expected \"{expected}\" in {expected_ns}", namespace.as_deref().unwrap_or("no namespace"))]
    WrongRoot {
        /// Local name of the root.
        name: String,
        /// Its namespace, if bound.
        namespace: Option<String>,
        /// The expected local name.
        expected: &'static str,
        /// The expected namespace.
        expected_ns: &'static str,
    },
}

impl From<XmlError> for MsError {
    fn from(e: XmlError) -> Self {
        MsError::Xml(e)
    }
}

/// Bounds of both formats: 64 KiB (a contact card with many phone numbers stays far below),
/// depth 32, elements as [`XmlLimits::DEFAULT`].
pub const LIMITS: XmlLimits = XmlLimits::DEFAULT;

/// A `publishTime` as a comparable key: year, month, day, hour, minute, second, nanoseconds.
/// `None` when it does not have the `YYYY-MM-DDTHH:MM:SS[.fff]` form (the zone, if any, is
/// ignored: one server writes all instances of one contact the same way).
fn publish_key(s: &str) -> Option<[u32; 7]> {
    let b = s.trim_matches(is_xml_space).as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let mut nanos = 0u32;
    if b.get(19) == Some(&b'.') {
        let digits: Vec<u8> = b[20..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .take(9)
            .copied()
            .collect();
        for (i, d) in digits.iter().enumerate() {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
    }
    Some([
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
        nanos,
    ])
}

/// A non-negative decimal number (XML white space around it allowed), or `None`.
fn number(s: &str) -> Option<u32> {
    let t = s.trim_matches(is_xml_space);
    if t.is_empty() || t.len() > 10 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

fn trimmed(s: &str) -> Option<String> {
    let t = s.trim_matches(is_xml_space);
    (!t.is_empty()).then(|| t.to_owned())
}

/// The value of the unprefixed attribute `key`, if present.
fn attribute(e: &BytesStart<'_>, key: &str, position: u64) -> Result<Option<String>, MsError> {
    for attr in e.attributes() {
        let attr = attr.map_err(|err| XmlError::Syntax {
            position,
            message: err.to_string(),
        })?;
        if attr.key.as_ref() == key {
            return Ok(Some(xml::attribute_value(&attr, position)?.into_owned()));
        }
    }
    Ok(None)
}

/// Whether an element has an `xsi:type` attribute whose local part is `aggregateState`.
fn is_aggregate(e: &BytesStart<'_>, position: u64) -> Result<bool, MsError> {
    for attr in e.attributes() {
        let attr = attr.map_err(|err| XmlError::Syntax {
            position,
            message: err.to_string(),
        })?;
        let (_, local) = split_qname(attr.key.as_ref());
        if local == "type" && attr.key.as_ref() != "type" {
            let v = xml::attribute_value(&attr, position)?;
            return Ok(split_qname(&v).1 == "aggregateState");
        }
    }
    Ok(false)
}

// ---------------------------------------------------------------------------------------------
// application/msrtc-event-categories+xml
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum CategoryName {
    State,
    Note,
    ContactCard,
    Other,
}

/// Where the categories parser is. Text frames collect character data.
enum Frame {
    Categories,
    Category,
    State,
    Activity,
    Note,
    Card,
    Identity,
    Name,
    Skip,
    // Text frames:
    Availability,
    Custom,
    Body { kind: NoteKind },
    DisplayName,
}

impl Frame {
    fn collects_text(&self) -> bool {
        matches!(
            self,
            Frame::Availability | Frame::Custom | Frame::Body { .. } | Frame::DisplayName
        )
    }
}

/// The category being read.
struct Current {
    name: CategoryName,
    publish: Option<[u32; 7]>,
    aggregate: bool,
    availability: Option<u32>,
    bad_availability: bool,
    token: Option<String>,
    min: Option<u32>,
    max: Option<u32>,
    custom: Option<String>,
    body_seen: bool,
    note: Option<MsNote>,
    display_name: Option<String>,
}

impl Current {
    fn new(name: CategoryName, publish: Option<[u32; 7]>) -> Current {
        Current {
            name,
            publish,
            aggregate: false,
            availability: None,
            bad_availability: false,
            token: None,
            min: None,
            max: None,
            custom: None,
            body_seen: false,
            note: None,
            display_name: None,
        }
    }
}

/// Rank of a kept instance: newer wins, later in the document on a tie.
type Rank = (bool, Option<[u32; 7]>, usize);

#[derive(Default)]
struct Best {
    state: Option<(Rank, MsState)>,
    note: Option<(Rank, Option<MsNote>)>,
    card: Option<(Rank, String)>,
    order: usize,
}

fn keep<T>(slot: &mut Option<(Rank, T)>, rank: Rank, value: T) {
    if slot.as_ref().is_none_or(|(r, _)| rank >= *r) {
        *slot = Some((rank, value));
    }
}

fn finish_category(best: &mut Best, c: Current) {
    best.order += 1;
    let order = best.order;
    match c.name {
        CategoryName::State => {
            // Without a readable availability the instance says nothing (sipe skips it too).
            let Some(availability) = c.availability.filter(|_| !c.bad_availability) else {
                return;
            };
            // Lync schema: an activity holds between its minAvailability and maxAvailability.
            let applies =
                c.min.is_none_or(|m| availability >= m) && c.max.is_none_or(|m| availability <= m);
            let state = MsState {
                availability,
                activity: c.token.filter(|_| applies),
                custom: c.custom.filter(|_| applies),
            };
            keep(&mut best.state, (c.aggregate, c.publish, order), state);
        }
        CategoryName::Note => {
            let note = if c.body_seen { c.note } else { None };
            keep(&mut best.note, (false, c.publish, order), note);
        }
        CategoryName::ContactCard => {
            if let Some(name) = c.display_name {
                keep(&mut best.card, (false, c.publish, order), name);
            }
        }
        CategoryName::Other => {}
    }
}

/// Parses an `application/msrtc-event-categories+xml` document.
pub fn parse_categories(input: &[u8]) -> Result<MsPresence, MsError> {
    let mut reader = XmlReader::new(input, &LIMITS)?;
    let mut scopes = Namespaces::default();
    let mut stack: Vec<Frame> = Vec::with_capacity(12);
    let mut buf = String::new();
    let mut uri = String::new();
    let mut current: Option<Current> = None;
    let mut best = Best::default();

    while let Some(event) = reader.next_event()? {
        match event {
            XmlEvent::Start(ref e) | XmlEvent::Empty(ref e) => {
                let empty = matches!(event, XmlEvent::Empty(_));
                let position = reader.position();
                let depth = stack.len() + 1;
                scopes.declare(&reader, e, depth)?;
                let qname = e.name();
                let (prefix, local) = split_qname(qname.as_ref());
                let ns = scopes.resolve(prefix);
                let frame = match stack.last() {
                    None => {
                        if ns == Some(NS_CATEGORIES) && local == "categories" {
                            uri = attribute(e, "uri", position)?.unwrap_or_default();
                            Frame::Categories
                        } else {
                            return Err(MsError::WrongRoot {
                                name: local.to_owned(),
                                namespace: ns.map(str::to_owned),
                                expected: "categories",
                                expected_ns: NS_CATEGORIES,
                            });
                        }
                    }
                    Some(parent) => {
                        open_category_child(parent, ns, local, e, position, &mut current)?
                    }
                };
                if empty {
                    scopes.pop_to(depth - 1);
                    close_category_frame(frame, "", &mut current, &mut best);
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
                    close_category_frame(frame, &buf, &mut current, &mut best);
                }
            }
            XmlEvent::Text(_) | XmlEvent::CData(_) | XmlEvent::Char(_) => {
                if stack.last().is_some_and(Frame::collects_text) {
                    event.push_text(&mut buf);
                }
            }
        }
    }
    Ok(MsPresence {
        uri,
        state: best.state.map(|(_, s)| s),
        note_seen: best.note.is_some(),
        note: best.note.and_then(|(_, n)| n),
        display_name: best.card.map(|(_, n)| n),
    })
}

fn open_category_child(
    parent: &Frame,
    ns: Option<&str>,
    local: &str,
    e: &BytesStart<'_>,
    position: u64,
    current: &mut Option<Current>,
) -> Result<Frame, MsError> {
    let c = current.as_mut();
    Ok(match (parent, ns, local) {
        (Frame::Categories, Some(NS_CATEGORIES), "category") => {
            let name = match attribute(e, "name", position)?.as_deref() {
                Some("state") => CategoryName::State,
                Some("note") => CategoryName::Note,
                Some("contactCard") => CategoryName::ContactCard,
                _ => CategoryName::Other,
            };
            let publish = attribute(e, "publishTime", position)?
                .as_deref()
                .and_then(publish_key);
            *current = Some(Current::new(name, publish));
            Frame::Category
        }
        (Frame::Category, Some(NS_STATE), "state")
            if c.as_ref().is_some_and(|c| c.name == CategoryName::State) =>
        {
            if let Some(c) = c {
                c.aggregate = is_aggregate(e, position)?;
            }
            Frame::State
        }
        (Frame::State, Some(NS_STATE), "availability") => Frame::Availability,
        (Frame::State, Some(NS_STATE), "activity") => {
            if let Some(c) = c {
                c.token = attribute(e, "token", position)?
                    .as_deref()
                    .and_then(trimmed);
                c.min = attribute(e, "minAvailability", position)?
                    .as_deref()
                    .and_then(number);
                c.max = attribute(e, "maxAvailability", position)?
                    .as_deref()
                    .and_then(number);
            }
            Frame::Activity
        }
        (Frame::Activity, Some(NS_STATE), "custom") => Frame::Custom,
        (Frame::Category, Some(NS_NOTE), "note")
            if c.as_ref().is_some_and(|c| c.name == CategoryName::Note) =>
        {
            Frame::Note
        }
        (Frame::Note, Some(NS_NOTE), "body") if c.as_ref().is_some_and(|c| !c.body_seen) => {
            let kind = match attribute(e, "type", position)?.as_deref() {
                Some(t) if t.eq_ignore_ascii_case("OOF") => NoteKind::OutOfOffice,
                _ => NoteKind::Personal,
            };
            if let Some(c) = c {
                c.body_seen = true;
            }
            Frame::Body { kind }
        }
        (Frame::Category, Some(NS_CONTACT_CARD), "contactCard")
            if c.as_ref()
                .is_some_and(|c| c.name == CategoryName::ContactCard) =>
        {
            Frame::Card
        }
        (Frame::Card, Some(NS_CONTACT_CARD), "identity") => Frame::Identity,
        (Frame::Identity, Some(NS_CONTACT_CARD), "name") => Frame::Name,
        (Frame::Name, Some(NS_CONTACT_CARD), "displayName") => Frame::DisplayName,
        _ => Frame::Skip,
    })
}

fn close_category_frame(frame: Frame, text: &str, current: &mut Option<Current>, best: &mut Best) {
    match frame {
        Frame::Category => {
            if let Some(c) = current.take() {
                finish_category(best, c);
            }
        }
        Frame::Availability => {
            if let Some(c) = current.as_mut() {
                if c.availability.is_none() && !c.bad_availability {
                    match number(text) {
                        Some(n) => c.availability = Some(n),
                        None => c.bad_availability = true,
                    }
                }
            }
        }
        Frame::Custom => {
            if let Some(c) = current.as_mut() {
                if c.custom.is_none() {
                    c.custom = trimmed(text);
                }
            }
        }
        Frame::Body { kind } => {
            if let Some(c) = current.as_mut() {
                c.note = trimmed(text).map(|text| MsNote { kind, text });
            }
        }
        Frame::DisplayName => {
            if let Some(c) = current.as_mut() {
                if c.display_name.is_none() {
                    c.display_name = trimmed(text);
                }
            }
        }
        Frame::Categories
        | Frame::State
        | Frame::Activity
        | Frame::Note
        | Frame::Card
        | Frame::Identity
        | Frame::Name
        | Frame::Skip => {}
    }
}

// ---------------------------------------------------------------------------------------------
// text/xml+msrtc.pidf
// ---------------------------------------------------------------------------------------------

/// An LCS 2005 document's aggregate numbers as an availability number and activity token of
/// the categories schema, so that both formats map through the same table (the reading of
/// pidgin-sipe's `sipe_ocs2005_status_from_activity_availability`):
///
/// | `availability aggregate` | `activity aggregate` | availability | token |
/// |---|---|---|---|
/// | < 100 | any | 18500 (offline) | |
/// | ≥ 100 | absent | 3500 (available) | |
/// | | < 150 | 15500 (away) | |
/// | | 150–199 | 15500 (away) | `out-to-lunch` |
/// | | 200–299 | 5000 (available, idle) | |
/// | | 300–399 | 12500 (be right back) | |
/// | | 400–499 | 3500 (available) | |
/// | | 500–599 | 6500 (busy) | `on-the-phone` |
/// | | 600–699 | 6500 (busy) | |
/// | | 700–799 | 15500 (away) | |
/// | | ≥ 800 | 3500 (available) | |
///
/// An OCS 2007 number in `userInfo/states/state avail=…` above the result replaces it (and
/// its token).
pub fn legacy_availability(
    availability: Option<u32>,
    activity: Option<u32>,
) -> (u32, Option<&'static str>) {
    if availability.unwrap_or(0) < 100 {
        return (18500, None);
    }
    match activity {
        None => (3500, None),
        Some(a) if a < 150 => (15500, None),
        Some(a) if a < 200 => (15500, Some("out-to-lunch")),
        Some(a) if a < 300 => (5000, None),
        Some(a) if a < 400 => (12500, None),
        Some(a) if a < 500 => (3500, None),
        Some(a) if a < 600 => (6500, Some("on-the-phone")),
        Some(a) if a < 700 => (6500, None),
        Some(a) if a < 800 => (15500, None),
        Some(_) => (3500, None),
    }
}

enum PFrame {
    Presentity,
    UserInfo,
    States,
    Skip,
    Note,
}

/// Parses a `text/xml+msrtc.pidf` document ([MS-SIP] §2.2.1; elements of `userInfo` are
/// matched by local name, as their namespace varies between server versions).
pub fn parse_msrtc_pidf(input: &[u8]) -> Result<MsPresence, MsError> {
    let mut reader = XmlReader::new(input, &LIMITS)?;
    let mut scopes = Namespaces::default();
    let mut stack: Vec<PFrame> = Vec::with_capacity(8);
    let mut buf = String::new();
    let mut doc = MsPresence {
        note_seen: true,
        ..MsPresence::default()
    };
    let (mut avail, mut act, mut user_avail, mut note) = (None, None, None, None);
    while let Some(event) = reader.next_event()? {
        match event {
            XmlEvent::Start(ref e) | XmlEvent::Empty(ref e) => {
                let empty = matches!(event, XmlEvent::Empty(_));
                let position = reader.position();
                let depth = stack.len() + 1;
                scopes.declare(&reader, e, depth)?;
                let qname = e.name();
                let (prefix, local) = split_qname(qname.as_ref());
                let ns = scopes.resolve(prefix);
                let msrtc = is_msrtc(ns);
                let frame = match (stack.last(), ns, local) {
                    (None, _, "presentity") if msrtc => {
                        let uri = attribute(e, "uri", position)?.unwrap_or_default();
                        // [MS-SIP] §2.2.1: the uri comes without its scheme.
                        doc.uri = if uri.is_empty() || uri.contains(':') {
                            uri
                        } else {
                            format!("sip:{uri}")
                        };
                        PFrame::Presentity
                    }
                    (None, ns, name) => {
                        return Err(MsError::WrongRoot {
                            name: name.to_owned(),
                            namespace: ns.map(str::to_owned),
                            expected: "presentity",
                            expected_ns: NS_MSRTC_PRESENCE,
                        });
                    }
                    (Some(PFrame::Presentity), _, name) if msrtc => match name {
                        "availability" => {
                            avail = attribute(e, "aggregate", position)?
                                .as_deref()
                                .and_then(number);
                            PFrame::Skip
                        }
                        "activity" => {
                            act = attribute(e, "aggregate", position)?
                                .as_deref()
                                .and_then(number);
                            PFrame::Skip
                        }
                        "displayName" => {
                            doc.display_name = attribute(e, "displayName", position)?
                                .as_deref()
                                .and_then(trimmed);
                            PFrame::Skip
                        }
                        "userInfo" => PFrame::UserInfo,
                        _ => PFrame::Skip,
                    },
                    (Some(PFrame::UserInfo), _, "note") if note.is_none() => PFrame::Note,
                    (Some(PFrame::UserInfo), _, "states") => PFrame::States,
                    (Some(PFrame::States), _, "state") if user_avail.is_none() => {
                        let nil = attribute(e, "nil", position)?;
                        if nil.as_deref() != Some("true") {
                            user_avail =
                                attribute(e, "avail", position)?.as_deref().and_then(number);
                        }
                        PFrame::Skip
                    }
                    _ => PFrame::Skip,
                };
                if empty {
                    scopes.pop_to(depth - 1);
                } else {
                    if matches!(frame, PFrame::Note) {
                        buf.clear();
                    }
                    stack.push(frame);
                }
            }
            XmlEvent::End => {
                if let Some(frame) = stack.pop() {
                    scopes.pop_to(stack.len());
                    if matches!(frame, PFrame::Note) {
                        note = Some(trimmed(&buf));
                    }
                }
            }
            XmlEvent::Text(_) | XmlEvent::CData(_) | XmlEvent::Char(_) => {
                if matches!(stack.last(), Some(PFrame::Note)) {
                    event.push_text(&mut buf);
                }
            }
        }
    }
    let (mut number, mut token) = legacy_availability(avail, act);
    if let Some(u) = user_avail.filter(|u| *u > number) {
        number = u;
        token = None;
    }
    doc.state = Some(MsState {
        availability: number,
        activity: token.map(str::to_owned),
        custom: None,
    });
    doc.note = note.flatten().map(|text| MsNote {
        kind: NoteKind::Personal,
        text,
    });
    Ok(doc)
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// The categories document holding exactly what `doc` says (what the bridge stores as the last
/// document received; [`parse_categories`] reads it back as `doc`).
pub fn render_categories(doc: &MsPresence) -> String {
    let mut out = String::with_capacity(512);
    out.push_str("<categories xmlns=\"");
    out.push_str(NS_CATEGORIES);
    out.push_str("\" uri=\"");
    push_escaped(&mut out, &doc.uri, true);
    out.push_str("\">");
    if let Some(s) = &doc.state {
        out.push_str("<category name=\"state\"><state xmlns=\"");
        out.push_str(NS_STATE);
        out.push_str("\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"aggregateState\"><availability>");
        out.push_str(&s.availability.to_string());
        out.push_str("</availability>");
        if s.activity.is_some() || s.custom.is_some() {
            out.push_str("<activity");
            if let Some(t) = &s.activity {
                out.push_str(" token=\"");
                push_escaped(&mut out, t, true);
                out.push('"');
            }
            out.push('>');
            if let Some(c) = &s.custom {
                out.push_str("<custom>");
                push_escaped(&mut out, c, false);
                out.push_str("</custom>");
            }
            out.push_str("</activity>");
        }
        out.push_str("</state></category>");
    }
    if doc.note_seen {
        out.push_str("<category name=\"note\"><note xmlns=\"");
        out.push_str(NS_NOTE);
        out.push_str("\">");
        if let Some(n) = &doc.note {
            out.push_str("<body type=\"");
            out.push_str(match n.kind {
                NoteKind::Personal => "personal",
                NoteKind::OutOfOffice => "OOF",
            });
            out.push_str("\">");
            push_escaped(&mut out, &n.text, false);
            out.push_str("</body>");
        }
        out.push_str("</note></category>");
    }
    if let Some(name) = &doc.display_name {
        out.push_str("<category name=\"contactCard\"><contactCard xmlns=\"");
        out.push_str(NS_CONTACT_CARD);
        out.push_str("\"><identity><name><displayName>");
        push_escaped(&mut out, name, false);
        out.push_str("</displayName></name></identity></contactCard></category>");
    }
    out.push_str("</categories>");
    out
}

/// The body of the bridge's category subscription to `contact` on behalf of `subscriber`
/// ([MS-PRES] §2.2.2.4.1 and §6.8: a `batchSub` with one `subscribe` action naming one
/// resource, and the categories `state`, `note` and `contactCard`).
pub fn category_subscription(subscriber: &str, contact: &str) -> String {
    let mut out = String::with_capacity(512);
    out.push_str("<batchSub xmlns=\"");
    out.push_str(NS_BATCH_SUBSCRIBE);
    out.push_str("\" uri=\"");
    push_escaped(&mut out, subscriber, true);
    out.push_str("\" name=\"\"><action name=\"subscribe\" id=\"1\"><adhocList><resource uri=\"");
    push_escaped(&mut out, contact, true);
    out.push_str("\"/></adhocList><categoryList xmlns=\"");
    out.push_str(NS_CATEGORY_LIST);
    out.push_str("\"><category name=\"state\"/><category name=\"note\"/><category name=\"contactCard\"/></categoryList></action></batchSub>");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// [MS-PRES] §4.4.3's categories document (a self-subscription BENOTIFY; a contact's NOTIFY
    /// has the same root with the contact's `uri`), with the note and contact card categories
    /// as Lync writes them.
    const LYNC: &str = r#"<categories xmlns="http://schemas.microsoft.com/2006/09/sip/categories" uri="sip:alice@contoso.com">
  <category name="state" instance="1" publishTime="2008-01-22T23:41:05.450" container="2" version="1" expireType="user">
    <state xsi:type="aggregateState" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns="http://schemas.microsoft.com/2006/09/sip/state">
      <availability>3500</availability>
    </state>
  </category>
  <category name="note" instance="0" publishTime="2008-01-22T23:40:00.000" container="100" version="3" expireType="static">
    <note xmlns="http://schemas.microsoft.com/2006/09/sip/note"><body type="personal" uri="">I'm away today.</body></note>
  </category>
  <category name="contactCard" instance="0" publishTime="2008-01-20T10:00:00" container="100" version="1" expireType="static">
    <contactCard xmlns="http://schemas.microsoft.com/2006/09/sip/contactcard"><identity><name><displayName>Alice Example</displayName></name></identity></contactCard>
  </category>
  <category name="calendarData" instance="0" publishTime="2008-01-20T10:00:00" container="100" version="1"><calendarData xmlns="http://schemas.microsoft.com/2006/09/sip/calendarData"/></category>
</categories>"#;

    fn state(xml: &str) -> String {
        format!(
            r#"<categories xmlns="{NS_CATEGORIES}" uri="sip:joe@contoso.com"><category name="state" publishTime="2026-01-01T10:00:00">{xml}</category></categories>"#
        )
    }

    #[test]
    fn reads_the_spec_example() {
        let doc = parse_categories(LYNC.as_bytes()).unwrap();
        assert_eq!(
            doc,
            MsPresence {
                uri: "sip:alice@contoso.com".into(),
                state: Some(MsState {
                    availability: 3500,
                    activity: None,
                    custom: None
                }),
                note_seen: true,
                note: Some(MsNote {
                    kind: NoteKind::Personal,
                    text: "I'm away today.".into()
                }),
                display_name: Some("Alice Example".into()),
            }
        );
    }

    #[test]
    fn reads_activity_and_custom_text() {
        // Lync schema "state/availability element" example (custom activity text).
        let xml = state(
            r#"<state xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="userState" xmlns="http://schemas.microsoft.com/2006/09/sip/state">
   <availability>15500</availability>
   <activity><custom LCID="1033">Out of office until next week</custom></activity>
</state>"#,
        );
        let s = parse_categories(xml.as_bytes()).unwrap().state.unwrap();
        assert_eq!(s.availability, 15500);
        assert_eq!(s.activity, None);
        assert_eq!(s.custom.as_deref(), Some("Out of office until next week"));
        let xml = state(&format!(
            r#"<st:state xmlns:st="{NS_STATE}"><st:availability> 6500 </st:availability><st:activity token="on-the-phone" minAvailability="6000" maxAvailability="7499"/></st:state>"#
        ));
        let s = parse_categories(xml.as_bytes()).unwrap().state.unwrap();
        assert_eq!(
            (s.availability, s.activity.as_deref()),
            (6500, Some("on-the-phone"))
        );
        // An activity outside its minAvailability..maxAvailability does not apply.
        let xml = state(&format!(
            r#"<state xmlns="{NS_STATE}"><availability>3500</availability><activity token="in-a-meeting" minAvailability="6000" maxAvailability="8999"><custom>Board</custom></activity></state>"#
        ));
        let s = parse_categories(xml.as_bytes()).unwrap().state.unwrap();
        assert_eq!((s.activity, s.custom), (None, None));
    }

    #[test]
    fn the_newest_instance_wins() {
        let xml = format!(
            r#"<categories xmlns="{NS_CATEGORIES}">
<category name="note" publishTime="2026-01-01T10:00:00.5"><note xmlns="{NS_NOTE}"><body type="OOF">Back Monday</body></note></category>
<category name="note" publishTime="2026-01-01T10:00:00.25"><note xmlns="{NS_NOTE}"><body type="personal">older</body></note></category>
<category name="state" publishTime="2026-01-01T09:00:00"><state xmlns="{NS_STATE}" xmlns:x="http://www.w3.org/2001/XMLSchema-instance" x:type="aggregateState"><availability>6500</availability></state></category>
<category name="state" publishTime="2026-01-01T11:00:00"><state xmlns="{NS_STATE}"><availability>3500</availability></state></category>
<category name="state" publishTime="2026-01-01T12:00:00"><state xmlns="{NS_STATE}"><availability>x</availability></state></category>
</categories>"#
        );
        let doc = parse_categories(xml.as_bytes()).unwrap();
        // The OOF note is newer (fractions compare as numbers, not as text).
        assert_eq!(
            doc.note,
            Some(MsNote {
                kind: NoteKind::OutOfOffice,
                text: "Back Monday".into()
            })
        );
        // An aggregateState before newer user states; an unreadable number is no state.
        assert_eq!(doc.state.unwrap().availability, 6500);
        // A note category without a body removes the note.
        let xml = format!(
            r#"<categories xmlns="{NS_CATEGORIES}"><category name="note" publishTime="2026-01-01T10:00:00"><note xmlns="{NS_NOTE}"/></category></categories>"#
        );
        let doc = parse_categories(xml.as_bytes()).unwrap();
        assert!(doc.note_seen);
        assert_eq!(doc.note, None);
        assert_eq!(doc.state, None);
    }

    #[test]
    fn update_merges_partial_documents() {
        let mut last = parse_categories(LYNC.as_bytes()).unwrap();
        last.update(
            parse_categories(
                state(&format!(
                    r#"<state xmlns="{NS_STATE}"><availability>9500</availability></state>"#
                ))
                .as_bytes(),
            )
            .unwrap(),
        );
        assert_eq!(last.state.as_ref().unwrap().availability, 9500);
        assert_eq!(last.note.as_ref().unwrap().text, "I'm away today.");
        assert_eq!(last.display_name.as_deref(), Some("Alice Example"));
        let removal = format!(
            r#"<categories xmlns="{NS_CATEGORIES}"><category name="note"><note xmlns="{NS_NOTE}"/></category></categories>"#
        );
        last.update(parse_categories(removal.as_bytes()).unwrap());
        assert_eq!(last.note, None);
        assert_eq!(last.state.as_ref().unwrap().availability, 9500);
    }

    #[test]
    fn render_then_parse_is_identity() {
        let mut doc = parse_categories(LYNC.as_bytes()).unwrap();
        doc.state = Some(MsState {
            availability: 6500,
            activity: Some("on-the-phone".into()),
            custom: Some("Call with <Bob> & \"co\"".into()),
        });
        doc.note = Some(MsNote {
            kind: NoteKind::OutOfOffice,
            text: "Back & forth".into(),
        });
        assert_eq!(
            parse_categories(render_categories(&doc).as_bytes()).unwrap(),
            doc
        );
        let empty = MsPresence::default();
        assert_eq!(
            parse_categories(render_categories(&empty).as_bytes()).unwrap(),
            empty
        );
    }

    #[test]
    fn hostile_input_is_refused_or_ignored() {
        // Wrong root, wrong namespace.
        let e = parse_categories(b"<presence xmlns='urn:ietf:params:xml:ns:pidf'/>").unwrap_err();
        assert_eq!(
            e.to_string(),
            "root element is \"presence\" in urn:ietf:params:xml:ns:pidf, expected \"categories\" in http://schemas.microsoft.com/2006/09/sip/categories"
        );
        assert!(matches!(
            parse_categories(b"<categories/>"),
            Err(MsError::WrongRoot { .. })
        ));
        // Entities, DTDs.
        let dtd = format!(
            r#"<!DOCTYPE categories [<!ENTITY x "xxxxxxxx">]><categories xmlns="{NS_CATEGORIES}"/>"#
        );
        assert_eq!(
            parse_categories(dtd.as_bytes()),
            Err(MsError::Xml(XmlError::Dtd))
        );
        let ent = state(&format!(
            r#"<state xmlns="{NS_STATE}"><availability>&x;</availability></state>"#
        ));
        assert!(matches!(
            parse_categories(ent.as_bytes()),
            Err(MsError::Xml(XmlError::UnknownEntity(_)))
        ));
        // Too large, too deep.
        let huge = state(&format!(
            r#"<state xmlns="{NS_STATE}"><availability>3500</availability><activity><custom>{}</custom></activity></state>"#,
            "a".repeat(70_000)
        ));
        assert!(matches!(
            parse_categories(huge.as_bytes()),
            Err(MsError::Xml(XmlError::TooLarge { .. }))
        ));
        let deep = state(&format!("{}{}", "<x>".repeat(40), "</x>".repeat(40)));
        assert!(matches!(
            parse_categories(deep.as_bytes()),
            Err(MsError::Xml(XmlError::TooDeep { .. }))
        ));
        // Bad numbers: no state; unknown categories and elements: ignored.
        for bad in ["-1", "", "4294967296", "12a", "0x10", "99999999999"] {
            let xml = state(&format!(
                r#"<state xmlns="{NS_STATE}"><availability>{bad}</availability></state>"#
            ));
            assert_eq!(
                parse_categories(xml.as_bytes()).unwrap().state,
                None,
                "{bad}"
            );
        }
        let xml = format!(
            r#"<categories xmlns="{NS_CATEGORIES}"><category name="weird"><state xmlns="{NS_STATE}"><availability>3500</availability></state></category><foo/></categories>"#
        );
        assert_eq!(
            parse_categories(xml.as_bytes()).unwrap(),
            MsPresence::default()
        );
        assert!(
            parse_categories(
                b"<categories xmlns='http://schemas.microsoft.com/2006/09/sip/categories'>"
            )
            .is_err()
        );
        // Garbage never panics.
        let mut s: u64 = 7;
        let base = LYNC.as_bytes();
        for _ in 0..2000 {
            let mut v = base.to_vec();
            for _ in 0..4 {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (s >> 33) as usize % v.len();
                v[i] = (s >> 20) as u8;
            }
            let _ = parse_categories(&v);
            let _ = parse_msrtc_pidf(&v);
        }
    }

    /// [MS-SIP] §4.4's BENOTIFY body (LCS 2005 `text/xml+msrtc.pidf`), with a display name and
    /// a note as pidgin-sipe reads them (`sipe-notify.c`, `process_incoming_notify_msrtc`).
    #[test]
    fn reads_msrtc_pidf() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<presentity uri="user1@server.contoso.com" xmlns="http://schemas.microsoft.com/2002/09/sip/presence" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <availability aggregate="300" description="" epid="03640fc59f"/>
  <activity aggregate="500" description="" epid="03640fc59f"/>
  <displayName displayName="User One"/>
  <userInfo><note>Dial-in: 1234</note></userInfo>
</presentity>"#;
        let doc = parse_msrtc_pidf(xml.as_bytes()).unwrap();
        assert_eq!(doc.uri, "sip:user1@server.contoso.com");
        assert_eq!(
            doc.state,
            Some(MsState {
                availability: 6500,
                activity: Some("on-the-phone".into()),
                custom: None
            })
        );
        assert_eq!(doc.note.unwrap().text, "Dial-in: 1234");
        assert_eq!(doc.display_name.as_deref(), Some("User One"));
        // An OCS 2007 number above the computed one wins.
        let xml = r#"<presentity uri="u@c" xmlns="http://schemas.microsoft.com/09/2002/sip/presence"><availability aggregate="300"/><activity aggregate="400"/><userInfo><states><state avail="9500"/></states></userInfo></presentity>"#;
        let s = parse_msrtc_pidf(xml.as_bytes()).unwrap().state.unwrap();
        assert_eq!((s.availability, s.activity), (9500, None));
        assert!(matches!(
            parse_msrtc_pidf(LYNC.as_bytes()),
            Err(MsError::WrongRoot { .. })
        ));
    }

    #[test]
    fn legacy_numbers() {
        type Case = (Option<u32>, Option<u32>, u32, Option<&'static str>);
        let cases: &[Case] = &[
            (Some(0), Some(400), 18500, None),
            (None, Some(400), 18500, None),
            (Some(99), Some(400), 18500, None),
            (Some(300), None, 3500, None),
            (Some(300), Some(0), 15500, None),
            (Some(300), Some(149), 15500, None),
            (Some(300), Some(150), 15500, Some("out-to-lunch")),
            (Some(300), Some(200), 5000, None),
            (Some(300), Some(300), 12500, None),
            (Some(300), Some(400), 3500, None),
            (Some(300), Some(500), 6500, Some("on-the-phone")),
            (Some(300), Some(600), 6500, None),
            (Some(300), Some(700), 15500, None),
            (Some(300), Some(800), 3500, None),
        ];
        for (avail, act, n, token) in cases {
            assert_eq!(
                legacy_availability(*avail, *act),
                (*n, *token),
                "{avail:?} {act:?}"
            );
        }
    }

    #[test]
    fn subscription_body() {
        assert_eq!(
            category_subscription("sip:alice@example.org", "sip:joe@contoso.com"),
            "<batchSub xmlns=\"http://schemas.microsoft.com/2006/01/sip/batch-subscribe\" uri=\"sip:alice@example.org\" name=\"\"><action name=\"subscribe\" id=\"1\"><adhocList><resource uri=\"sip:joe@contoso.com\"/></adhocList><categoryList xmlns=\"http://schemas.microsoft.com/2006/09/sip/categorylist\"><category name=\"state\"/><category name=\"note\"/><category name=\"contactCard\"/></categoryList></action></batchSub>"
        );
        assert_eq!(
            publish_key("2008-01-22T23:41:05.450"),
            Some([2008, 1, 22, 23, 41, 5, 450_000_000])
        );
        assert_eq!(
            publish_key("2008-01-22T23:41:05Z"),
            Some([2008, 1, 22, 23, 41, 5, 0])
        );
        assert_eq!(publish_key("yesterday"), None);
        assert_eq!(publish_key("2008-01-22T23:41:0"), None);
    }
}
