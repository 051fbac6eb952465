//! Presence translation between an XMPP `<presence/>` (RFC 6121 §4.7) and a PIDF document
//! (RFC 3863, RPID RFC 4480, CIPID RFC 4482), through the administrator's
//! [`PresenceTable`]. Follows RFC 8048 §4–§5 (availability and status mapping) as adapted to the
//! LCS federation profile; see `docs/mapping.md` §1–§2.
//!
//! * XMPP → PIDF: `type='unavailable'` → `closed`; `<show/>` → table row (basic + activity);
//!   each `<status xml:lang>` → `<note xml:lang>`; no status → the table's default note.
//! * PIDF → XMPP: `closed` → `type='unavailable'`; activity → table row (show + status text);
//!   notes → `<status xml:lang>` (they take precedence over the table's status text).
//!   Display names (XEP-0172 nick) are not put on ordinary presence.

use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::Lang;
use xmpp_parsers::presence::{Presence, Show as XmppShow, Type};

use crate::core::lang::language_tag;
use crate::core::ms_presence::{self, MsPresence, NoteKind};
use crate::core::names::one_line;
use crate::core::pidf::{self, Basic, Note, PidfDocument};
use crate::core::tables::{InboundPresence, PresenceTable, Show};

/// The availability an XMPP presence expresses. `type='error'` counts as unavailable (RFC 6121
/// §4.7.1); subscription and probe types carry no availability and give their `<show/>` (usually
/// none, hence [`Show::Available`]): callers should not translate those.
pub fn show_for_presence(p: &Presence) -> Show {
    match p.type_ {
        Type::Unavailable | Type::Error => Show::Unavailable,
        _ => match p.show {
            None => Show::Available,
            Some(XmppShow::Chat) => Show::Chat,
            Some(XmppShow::Away) => Show::Away,
            Some(XmppShow::Xa) => Show::Xa,
            Some(XmppShow::Dnd) => Show::Dnd,
        },
    }
}

/// Most notes (one per language) a document sent to LCS carries.
pub const MAX_NOTES: usize = 4;
/// Longest note, and longest display name, sent to LCS, in characters. An XMPP status may be
/// as long as a stanza (hundreds of kilobytes); SIP stacks commonly refuse messages above 64 KiB
/// and Microsoft clients show a one-line personal note. With these caps a NOTIFY's PIDF body
/// stays under 16 KiB whatever the user typed (500 quotes escape to 3,000 bytes).
pub const MAX_NOTE_CHARS: usize = 500;

/// `text` cut to at most `max` characters.
fn at_most(text: &str, max: usize) -> &str {
    text.char_indices()
        .nth(max)
        .map_or(text, |(i, _)| &text[..i])
}

/// The PIDF document to send to LCS for an XMPP presence of the user whose SIP AOR is `entity`.
/// `icon` is kept as given; [`crate::core::pidf::render`] writes it only if it is `https:`.
/// Notes and the display name are capped ([`MAX_NOTES`], [`MAX_NOTE_CHARS`]).
pub fn pidf_for_presence(
    p: &Presence,
    entity: &str,
    display_name: Option<&str>,
    icon: Option<&str>,
    table: &PresenceTable,
) -> PidfDocument {
    let row = table.to_pidf(show_for_presence(p));
    let mut notes: Vec<Note> = p
        .statuses
        .iter()
        .filter(|(_, text)| !text.trim().is_empty())
        .take(MAX_NOTES)
        .map(|(lang, text)| Note {
            lang: language_tag(lang).map(str::to_owned),
            text: at_most(text, MAX_NOTE_CHARS).to_owned(),
        })
        .collect();
    if notes.is_empty() {
        if let Some(note) = row.note {
            notes.push(Note {
                lang: None,
                text: note.to_owned(),
            });
        }
    }
    PidfDocument {
        entity: entity.to_owned(),
        basic: Some(row.basic),
        activity: row.activity.map(str::to_owned),
        notes,
        display_name: display_name.map(|d| at_most(d, MAX_NOTE_CHARS).to_owned()),
        icon: icon.map(str::to_owned),
    }
}

/// The XMPP availability and status text of a received document: the table's view of
/// basic + activity, with the first note (if any) as the status text instead of the table's.
pub fn xmpp_view_of_pidf(doc: &PidfDocument, table: &PresenceTable) -> InboundPresence {
    let mut view = table.from_pidf(doc.basic, doc.activity.as_deref());
    if let Some(note) = doc.notes.first() {
        view.status = Some(note.text.clone());
    }
    view
}

/// The `<presence/>` stanza to send to XMPP for a received document. Every note becomes a
/// `<status/>` with its `xml:lang` (the first note per language wins); without notes, the
/// table's status text is sent.
pub fn presence_from_pidf(
    doc: &PidfDocument,
    table: &PresenceTable,
    from: Jid,
    to: Jid,
) -> Presence {
    let view = table.from_pidf(doc.basic, doc.activity.as_deref());
    let mut presence = match view.show {
        Show::Unavailable => Presence::new(Type::Unavailable),
        Show::Available => Presence::new(Type::None),
        Show::Chat => Presence::new(Type::None).with_show(XmppShow::Chat),
        Show::Away => Presence::new(Type::None).with_show(XmppShow::Away),
        Show::Xa => Presence::new(Type::None).with_show(XmppShow::Xa),
        Show::Dnd => Presence::new(Type::None).with_show(XmppShow::Dnd),
    }
    .with_from(from)
    .with_to(to);
    if doc.notes.is_empty() {
        if let Some(status) = view.status {
            presence.statuses.insert(Lang::default(), status);
        }
    } else {
        for note in &doc.notes {
            let lang = Lang(note.lang.clone().unwrap_or_default());
            presence
                .statuses
                .entry(lang)
                .or_insert_with(|| note.text.clone());
        }
    }
    presence
}

/// Longest status text made from a Microsoft enhanced-presence document (activity text and
/// note, each at most [`MAX_NOTE_CHARS`], with the out-of-office label between).
pub const MAX_MS_STATUS_CHARS: usize = 2 * MAX_NOTE_CHARS + 100;

/// The XMPP view of a Microsoft enhanced-presence document (docs/mapping.md, "Microsoft
/// enhanced presence"), or `None` while it holds no state (nothing is known of the contact's
/// availability yet). The availability number picks the range row of `[ms_to_xmpp]`; an
/// activity token's row replaces the show (unless the range is offline) and the status text;
/// the peer's `<custom>` activity text replaces the status text; the note follows it after
/// `" - "` (an out-of-office note after the table's label and `": "`). Every peer text is
/// cleaned to one line ([`one_line`]) and cut to [`MAX_NOTE_CHARS`].
pub fn xmpp_view_of_ms(doc: &MsPresence, table: &PresenceTable) -> Option<InboundPresence> {
    let state = doc.state.as_ref()?;
    let ms = table.ms();
    let mut view = ms.availability(state.availability);
    if let Some(row) = state.activity.as_deref().and_then(|t| ms.activity(t)) {
        if let Some(show) = row.show {
            if view.show != Show::Unavailable {
                view.show = show;
            }
        }
        if let Some(status) = &row.status {
            view.status = Some(status.clone());
        }
    }
    if let Some(custom) = state
        .custom
        .as_deref()
        .and_then(|c| one_line(c, MAX_NOTE_CHARS))
    {
        view.status = Some(custom);
    }
    if let Some(note) = &doc.note {
        if let Some(text) = one_line(&note.text, MAX_NOTE_CHARS) {
            let note = match note.kind {
                NoteKind::Personal => text,
                NoteKind::OutOfOffice => format!("{}: {text}", ms.out_of_office()),
            };
            view.status = Some(match view.status.take() {
                Some(status) => format!("{status} - {note}"),
                None => note,
            });
        }
    }
    if let Some(status) = view.status.as_mut() {
        let cut = at_most(status, MAX_MS_STATUS_CHARS).len();
        status.truncate(cut);
    }
    Some(view)
}

/// The `<presence/>` stanza for a Microsoft enhanced-presence document ([`xmpp_view_of_ms`]),
/// or `None` while it holds no state.
pub fn presence_from_ms(
    doc: &MsPresence,
    table: &PresenceTable,
    from: Jid,
    to: Jid,
) -> Option<Presence> {
    let view = xmpp_view_of_ms(doc, table)?;
    let mut presence = stanza_for_show(view.show).with_from(from).with_to(to);
    if let Some(status) = view.status {
        presence.statuses.insert(Lang::default(), status);
    }
    Some(presence)
}

fn stanza_for_show(show: Show) -> Presence {
    match show {
        Show::Unavailable => Presence::new(Type::Unavailable),
        Show::Available => Presence::new(Type::None),
        Show::Chat => Presence::new(Type::None).with_show(XmppShow::Chat),
        Show::Away => Presence::new(Type::None).with_show(XmppShow::Away),
        Show::Xa => Presence::new(Type::None).with_show(XmppShow::Xa),
        Show::Dnd => Presence::new(Type::None).with_show(XmppShow::Dnd),
    }
}

/// The last presence document received from a contact: PIDF, or a Microsoft
/// enhanced-presence document (categories, or LCS 2005's msrtc.pidf read into the same form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// `application/pidf+xml`.
    Pidf(PidfDocument),
    /// `application/msrtc-event-categories+xml` or `text/xml+msrtc.pidf`, merged.
    Ms(MsPresence),
}

impl Received {
    /// The `<presence/>` stanza it gives, or `None` (an enhanced document without state yet).
    pub fn presence(&self, table: &PresenceTable, from: Jid, to: Jid) -> Option<Presence> {
        match self {
            Received::Pidf(doc) => Some(presence_from_pidf(doc, table, from, to)),
            Received::Ms(doc) => presence_from_ms(doc, table, from, to),
        }
    }

    /// Whether the watcher sees the contact available.
    pub fn is_available(&self, table: &PresenceTable) -> bool {
        match self {
            Received::Pidf(doc) => doc.basic != Some(Basic::Closed),
            Received::Ms(doc) => {
                xmpp_view_of_ms(doc, table).is_some_and(|v| v.show != Show::Unavailable)
            }
        }
    }

    /// The contact's own display name, if the document has one.
    pub fn display_name(&self) -> Option<&str> {
        match self {
            Received::Pidf(doc) => doc.display_name.as_deref(),
            Received::Ms(doc) => doc.display_name.as_deref(),
        }
    }

    /// The stored form: a PIDF document, or a categories document holding what was merged.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Received::Pidf(doc) => pidf::render(doc).into_bytes(),
            Received::Ms(doc) => ms_presence::render_categories(doc).into_bytes(),
        }
    }

    /// Reads the stored form back (by its root element).
    pub fn from_bytes(bytes: &[u8]) -> Option<Received> {
        match pidf::parse(bytes) {
            Ok(doc) => Some(Received::Pidf(doc)),
            Err(_) => ms_presence::parse_categories(bytes).ok().map(Received::Ms),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::core::pidf::render;
    use crate::core::tables::Mappings;
    use xmpp_parsers::minidom::Element;

    fn table() -> PresenceTable {
        Mappings::builtin().presence
    }

    fn presence(xml: &str) -> Presence {
        crate::xmpp::parse_presence(xml).unwrap()
    }

    #[test]
    fn long_statuses_many_languages_and_bad_tags_are_bounded() {
        // Quotes: the characters that grow most when escaped (`&quot;`).
        let long = "\"".repeat(20_000);
        let mut xml = format!("<presence><status>{long}</status>");
        for lang in ["en", "de", "fr", "it", "es", "nl"] {
            xml.push_str(&format!("<status xml:lang='{lang}'>{lang}</status>"));
        }
        xml.push_str("</presence>");
        let nick = "\"".repeat(10_000);
        let doc = pidf_for_presence(&presence(&xml), "sip:a@b", Some(&nick), None, &table());
        assert_eq!(doc.notes.len(), MAX_NOTES);
        assert!(
            doc.notes
                .iter()
                .all(|n| n.text.chars().count() <= MAX_NOTE_CHARS)
        );
        assert_eq!(doc.notes[0].text.chars().count(), MAX_NOTE_CHARS);
        assert_eq!(
            doc.display_name.as_ref().map(String::len),
            Some(MAX_NOTE_CHARS)
        );
        assert!(render(&doc).len() < 16 * 1024, "{}", render(&doc).len());
        // xml:lang values that are not BCP 47 tags are dropped, the text kept.
        let p = presence("<presence><status xml:lang='en&#13;&#10;X: y'>hi</status></presence>");
        let doc = pidf_for_presence(&p, "sip:a@b", None, None, &table());
        assert_eq!(doc.notes[0].lang, None);
        assert_eq!(doc.notes[0].text, "hi");
    }

    #[test]
    fn xmpp_to_pidf_table() {
        let t = table();
        type Case<'a> = (
            &'a str,
            Option<Basic>,
            Option<&'a str>,
            &'a [(Option<&'a str>, &'a str)],
        );
        let cases: &[Case<'_>] = &[
            ("<presence/>", Some(Basic::Open), None, &[]),
            (
                "<presence><show>chat</show></presence>",
                Some(Basic::Open),
                None,
                &[],
            ),
            (
                "<presence><show>away</show></presence>",
                Some(Basic::Open),
                Some("away"),
                &[],
            ),
            (
                "<presence><show>xa</show></presence>",
                Some(Basic::Open),
                Some("away"),
                &[(None, "Extended away")],
            ),
            (
                "<presence><show>xa</show><status>Gone fishing</status></presence>",
                Some(Basic::Open),
                Some("away"),
                &[(None, "Gone fishing")],
            ),
            (
                "<presence><show>dnd</show><status xml:lang='en'>Busy &amp; co</status><status xml:lang='de'>Beschäftigt</status></presence>",
                Some(Basic::Open),
                Some("busy"),
                &[(Some("de"), "Beschäftigt"), (Some("en"), "Busy & co")],
            ),
            (
                "<presence type='unavailable'/>",
                Some(Basic::Closed),
                None,
                &[],
            ),
            ("<presence type='error'/>", Some(Basic::Closed), None, &[]),
        ];
        for (xml, basic, activity, notes) in cases {
            let doc = pidf_for_presence(&presence(xml), "sip:alice@example.org", None, None, &t);
            assert_eq!(doc.entity, "sip:alice@example.org");
            assert_eq!(doc.basic, *basic, "{xml}");
            assert_eq!(doc.activity.as_deref(), *activity, "{xml}");
            let got: Vec<(Option<&str>, &str)> = doc
                .notes
                .iter()
                .map(|n| (n.lang.as_deref(), n.text.as_str()))
                .collect();
            assert_eq!(&got[..], *notes, "{xml}");
        }
    }

    #[test]
    fn away_renders_the_profile_document() {
        let p = presence("<presence xmlns='jabber:client'><show>away</show></presence>");
        let doc = pidf_for_presence(
            &p,
            "sip:alice@example.org",
            Some("Alice at Example"),
            Some("https://example.org/brand16.png"),
            &table(),
        );
        assert_eq!(
            render(&doc),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>
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
"
        );
    }

    fn doc(
        basic: Option<Basic>,
        activity: Option<&str>,
        notes: &[(Option<&str>, &str)],
    ) -> PidfDocument {
        PidfDocument {
            entity: "sip:joe@contoso.com".into(),
            basic,
            activity: activity.map(str::to_owned),
            notes: notes
                .iter()
                .map(|(l, t)| Note {
                    lang: l.map(str::to_owned),
                    text: (*t).to_owned(),
                })
                .collect(),
            display_name: Some("Joe".into()),
            icon: None,
        }
    }

    #[test]
    fn pidf_to_xmpp_stanzas_are_exact() {
        let t = table();
        let from: Jid = "joe@contoso.com".parse().unwrap();
        let to: Jid = "alice@example.org".parse().unwrap();
        let head = "<presence xmlns='jabber:component:accept' from='joe@contoso.com' to='alice@example.org'";
        let cases: Vec<(PidfDocument, String)> = vec![
            (
                doc(Some(Basic::Open), Some("away"), &[]),
                format!("{head}><show>away</show><priority>0</priority></presence>"),
            ),
            (
                doc(Some(Basic::Open), None, &[]),
                format!("{head}><priority>0</priority></presence>"),
            ),
            (
                doc(Some(Basic::Closed), None, &[]),
                format!("{head} type='unavailable'><priority>0</priority></presence>"),
            ),
            (
                doc(Some(Basic::Open), Some("meeting"), &[]),
                format!(
                    "{head}><show>dnd</show><status>In a meeting</status><priority>0</priority></presence>"
                ),
            ),
            (
                doc(
                    Some(Basic::Open),
                    Some("meeting"),
                    &[
                        (Some("en"), "Board <meeting>"),
                        (Some("en"), "dup"),
                        (None, "plain"),
                    ],
                ),
                format!(
                    "{head}><show>dnd</show><status>plain</status><status xml:lang='en'>Board &lt;meeting&gt;</status><priority>0</priority></presence>"
                ),
            ),
            (
                doc(Some(Basic::Open), Some("skiing"), &[]),
                format!("{head}><status>skiing</status><priority>0</priority></presence>"),
            ),
        ];
        for (d, expected) in cases {
            let p = presence_from_pidf(&d, &t, from.clone(), to.clone());
            let elem: Element = p.into();
            assert_eq!(String::from(&elem), expected);
        }
    }

    #[test]
    fn xmpp_view_prefers_notes() {
        let t = table();
        assert_eq!(
            xmpp_view_of_pidf(&doc(Some(Basic::Open), Some("meeting"), &[]), &t),
            InboundPresence {
                show: Show::Dnd,
                status: Some("In a meeting".into())
            }
        );
        assert_eq!(
            xmpp_view_of_pidf(
                &doc(
                    Some(Basic::Open),
                    Some("meeting"),
                    &[(None, "Budget review")]
                ),
                &t
            ),
            InboundPresence {
                show: Show::Dnd,
                status: Some("Budget review".into())
            }
        );
        assert_eq!(
            xmpp_view_of_pidf(&doc(Some(Basic::Closed), None, &[]), &t),
            InboundPresence {
                show: Show::Unavailable,
                status: None
            }
        );
    }

    fn ms(availability: u32, token: Option<&str>, custom: Option<&str>) -> MsPresence {
        MsPresence {
            uri: "sip:joe@contoso.com".into(),
            state: Some(crate::core::ms_presence::MsState {
                availability,
                activity: token.map(str::to_owned),
                custom: custom.map(str::to_owned),
            }),
            ..MsPresence::default()
        }
    }

    fn view(doc: &MsPresence) -> (Show, Option<String>) {
        let v = xmpp_view_of_ms(doc, &table()).unwrap();
        (v.show, v.status)
    }

    /// Every boundary of the Lync availability ranges (Lync schema, "state/availability
    /// element"), through the shipped `[ms_to_xmpp]` rows.
    #[test]
    fn ms_availability_ranges() {
        let cases: &[(u32, Show, Option<&str>)] = &[
            (0, Show::Available, None),
            (3500, Show::Available, None),
            (4499, Show::Available, None),
            (4500, Show::Away, Some("Inactive")),
            (5999, Show::Away, Some("Inactive")),
            (6000, Show::Dnd, Some("Busy")),
            (7499, Show::Dnd, Some("Busy")),
            (7500, Show::Dnd, Some("Busy")),
            (8999, Show::Dnd, Some("Busy")),
            (9000, Show::Dnd, Some("Do not disturb")),
            (11999, Show::Dnd, Some("Do not disturb")),
            (12000, Show::Away, Some("Be right back")),
            (14999, Show::Away, Some("Be right back")),
            (15000, Show::Xa, None),
            (17999, Show::Xa, None),
            (18000, Show::Unavailable, None),
            (u32::MAX, Show::Unavailable, None),
        ];
        for (n, show, status) in cases {
            assert_eq!(
                view(&ms(*n, None, None)),
                (*show, status.map(str::to_owned)),
                "{n}"
            );
        }
    }

    #[test]
    fn ms_activities_custom_text_and_notes() {
        use crate::core::ms_presence::{MsNote, NoteKind};
        let s = |t: &str| Some(t.to_owned());
        assert_eq!(
            view(&ms(6500, Some("on-the-phone"), None)),
            (Show::Dnd, s("In a call"))
        );
        assert_eq!(
            view(&ms(6500, Some("ON-THE-PHONE"), None)),
            (Show::Dnd, s("In a call"))
        );
        assert_eq!(
            view(&ms(6500, Some("in-a-conference"), None)),
            (Show::Dnd, s("In a conference call"))
        );
        assert_eq!(
            view(&ms(6500, Some("in-a-meeting"), None)),
            (Show::Dnd, s("In a meeting"))
        );
        assert_eq!(
            view(&ms(9500, Some("in-presentation"), None)),
            (Show::Dnd, s("Presenting"))
        );
        assert_eq!(
            view(&ms(9500, Some("urgent-interruptions-only"), None)),
            (Show::Dnd, s("Urgent interruptions only"))
        );
        assert_eq!(
            view(&ms(15500, Some("off-work"), None)),
            (Show::Xa, s("Off work"))
        );
        assert_eq!(
            view(&ms(3500, Some("out-of-office"), None)),
            (Show::Xa, s("Out of office"))
        );
        // The offline range keeps its show; an unknown token changes nothing.
        assert_eq!(
            view(&ms(18500, Some("off-work"), None)),
            (Show::Unavailable, s("Off work"))
        );
        assert_eq!(
            view(&ms(6500, Some("juggling"), None)),
            (Show::Dnd, s("Busy"))
        );
        // The custom text replaces the token's; it is cleaned to one line and capped.
        assert_eq!(
            view(&ms(15500, None, Some("Out of office until next week"))),
            (Show::Xa, s("Out of office until next week"))
        );
        assert_eq!(
            view(&ms(
                6500,
                Some("on-the-phone"),
                Some(" Call\u{202E}  with\nBob ")
            )),
            (Show::Dnd, s("Call with Bob"))
        );
        let long = "é".repeat(5000);
        let (_, status) = view(&ms(3500, None, Some(&long)));
        assert_eq!(status.unwrap().chars().count(), MAX_NOTE_CHARS);
        // Notes: personal after the status, OOF marked; alone when there is no status.
        let mut d = ms(6500, Some("on-the-phone"), None);
        d.note = Some(MsNote {
            kind: NoteKind::Personal,
            text: "Working from home".into(),
        });
        assert_eq!(view(&d), (Show::Dnd, s("In a call - Working from home")));
        d.state.as_mut().unwrap().availability = 3500;
        d.state.as_mut().unwrap().activity = None;
        assert_eq!(view(&d), (Show::Available, s("Working from home")));
        d.note = Some(MsNote {
            kind: NoteKind::OutOfOffice,
            text: "Back on Monday".into(),
        });
        assert_eq!(
            view(&d),
            (Show::Available, s("Out of office: Back on Monday"))
        );
        d.state.as_mut().unwrap().availability = 18000;
        assert_eq!(
            view(&d),
            (Show::Unavailable, s("Out of office: Back on Monday"))
        );
        d.note = Some(MsNote {
            kind: NoteKind::Personal,
            text: long.clone(),
        });
        d.state.as_mut().unwrap().custom = Some(long);
        let (_, status) = view(&d);
        assert_eq!(status.unwrap().chars().count(), 2 * MAX_NOTE_CHARS + 3);
        // No state yet: nothing to show.
        let none = MsPresence {
            note: d.note.clone(),
            ..MsPresence::default()
        };
        assert_eq!(xmpp_view_of_ms(&none, &table()), None);
    }

    #[test]
    fn ms_stanzas_are_exact() {
        let from: Jid = "joe@contoso.com".parse().unwrap();
        let to: Jid = "alice@example.org".parse().unwrap();
        let head = "<presence xmlns='jabber:component:accept' from='joe@contoso.com' to='alice@example.org'";
        let p = presence_from_ms(
            &ms(6500, Some("on-the-phone"), None),
            &table(),
            from.clone(),
            to.clone(),
        )
        .unwrap();
        assert_eq!(
            String::from(&Element::from(p)),
            format!(
                "{head}><show>dnd</show><status>In a call</status><priority>0</priority></presence>"
            )
        );
        let p =
            presence_from_ms(&ms(18000, None, None), &table(), from.clone(), to.clone()).unwrap();
        assert_eq!(
            String::from(&Element::from(p)),
            format!("{head} type='unavailable'><priority>0</priority></presence>")
        );
        let r = Received::Ms(ms(3500, None, Some("<b>&amp;")));
        assert!(r.is_available(&table()));
        assert_eq!(Received::from_bytes(&r.to_bytes()), Some(r.clone()));
        let p = r.presence(&table(), from, to).unwrap();
        assert_eq!(
            String::from(&Element::from(p)),
            format!("{head}><status>&lt;b&gt;&amp;amp;</status><priority>0</priority></presence>")
        );
        assert!(!Received::Ms(ms(18000, None, None)).is_available(&table()));
        assert!(!Received::Ms(MsPresence::default()).is_available(&table()));
    }
}
