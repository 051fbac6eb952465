//! The administrator-editable mapping tables in `mappings/`, loaded and validated at start-up.
//!
//! * `presence.toml`: XMPP `<show/>` (RFC 6121 §4.7.2.1) ⇄ PIDF `<basic/>` (RFC 3863 §4.1.4) and
//!   RPID activity (RFC 4480 §3.2; the profile's `ep:activity`) ⇄ status text, following the
//!   presence mapping of RFC 8048 §4 adapted to LCS (see `docs/mapping.md`).
//! * `errors.toml`: SIP final responses (RFC 3261 §21) ⇄ stanza error conditions
//!   (RFC 6120 §8.3.3), both directions, per RFC 7247 §7.
//!
//! Every problem is reported, not only the first, each as one line naming the file, the full
//! dotted key and the reason. Unknown keys are errors. The only I/O is [`Mappings::load`], which
//! reads the two files from a directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use toml::{Table, Value};

use crate::core::errors::Condition;
use crate::core::pidf::Basic;
use crate::core::xml_chars::is_xml_char;

/// An XMPP availability: the RFC 6121 §4.7.2.1 `<show/>` values, plus `available` (no `<show/>`)
/// and `unavailable` (`type='unavailable'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Show {
    /// Available, no `<show/>`.
    Available,
    /// `chat`
    Chat,
    /// `away`
    Away,
    /// `xa`
    Xa,
    /// `dnd`
    Dnd,
    /// `type='unavailable'`
    Unavailable,
}

/// A token that is not a [`Show`] name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown XMPP show \"{0}\" (expected one of: available, chat, away, xa, dnd, unavailable)")]
pub struct UnknownShow(pub String);

impl Show {
    /// Every availability, from most to least available.
    pub const ALL: [Show; 6] = [
        Show::Available,
        Show::Chat,
        Show::Away,
        Show::Xa,
        Show::Dnd,
        Show::Unavailable,
    ];

    /// The name used in the tables.
    pub const fn as_str(self) -> &'static str {
        match self {
            Show::Available => "available",
            Show::Chat => "chat",
            Show::Away => "away",
            Show::Xa => "xa",
            Show::Dnd => "dnd",
            Show::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for Show {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Show {
    type Err = UnknownShow;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Show::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownShow(s.to_owned()))
    }
}

/// Every activity token the bridge knows: the RFC 4480 §3.2 activity vocabulary plus the tokens
/// LCS peers send beyond it (`away`/`busy`, `meeting`, …; docs/mapping.md §2). The shipped
/// `presence.toml` has a row for each (a test checks it).
pub const KNOWN_ACTIVITIES: &[&str] = &[
    "appointment",
    "away",
    "breakfast",
    "busy",
    "dinner",
    "holiday",
    "in-transit",
    "looking-for-work",
    "meal",
    "meeting",
    "on-the-phone",
    "other",
    "performance",
    "permanent-absence",
    "playing",
    "presentation",
    "shopping",
    "sleeping",
    "spectator",
    "steering",
    "travel",
    "tv",
    "unknown",
    "vacation",
    "working",
    "worship",
];

/// What to put into the PIDF document for one XMPP availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundPresence<'a> {
    /// `<basic/>`.
    pub basic: Basic,
    /// The activity token, if any.
    pub activity: Option<&'a str>,
    /// A default note when the XMPP presence has no `<status/>`.
    pub note: Option<&'a str>,
}

/// The XMPP view of a received PIDF document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboundPresence {
    /// Availability ([`Show::Unavailable`] for `closed`).
    pub show: Show,
    /// Status text (e.g. "In a meeting"); an activity token without a row is kept here.
    pub status: Option<String>,
}

/// One problem found in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableProblem {
    /// The file (name or path).
    pub file: String,
    /// The full dotted key, or `line N` for a syntax error, or `(file)`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for TableProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.key, self.reason)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OutRow {
    basic: Basic,
    activity: Option<String>,
    note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct InRow {
    show: Show,
    status: Option<String>,
}

/// `presence.toml`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceTable {
    /// Indexed by `Show as usize`.
    outbound: Vec<OutRow>,
    open: Show,
    unlisted_activity: Show,
    activities: BTreeMap<String, InRow>,
    ms: MsTable,
}

/// One row of `ms_to_xmpp.activities`: the show it imposes (if any) and its status text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsActivityRow {
    /// Replaces the availability range's show (not for an offline range).
    pub show: Option<Show>,
    /// Replaces the availability range's status text.
    pub status: Option<String>,
}

/// `presence.toml`'s `[ms_to_xmpp]`: Microsoft enhanced presence ([MS-PRES] `state` and `note`
/// categories) to XMPP (docs/mapping.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsTable {
    /// `(first number, row)`, increasing, the first at 0.
    ranges: Vec<(u32, InRow)>,
    activities: BTreeMap<String, MsActivityRow>,
    out_of_office: String,
}

impl MsTable {
    /// The show and status text of an availability number: the row of the range it falls in.
    pub fn availability(&self, number: u32) -> InboundPresence {
        let row = self
            .ranges
            .iter()
            .rev()
            .find(|(from, _)| *from <= number)
            .map(|(_, r)| r);
        match row {
            Some(r) => InboundPresence {
                show: r.show,
                status: r.status.clone(),
            },
            // Unreachable: validation makes the first range start at 0.
            None => InboundPresence {
                show: Show::Available,
                status: None,
            },
        }
    }

    /// The row of an activity token (ASCII case-insensitive), if any.
    pub fn activity(&self, token: &str) -> Option<&MsActivityRow> {
        let token = token.trim_matches(|c: char| c.is_ascii_whitespace());
        if token.bytes().any(|b| b.is_ascii_uppercase()) {
            self.activities.get(&token.to_ascii_lowercase())
        } else {
            self.activities.get(token)
        }
    }

    /// The label put before an out-of-office note.
    pub fn out_of_office(&self) -> &str {
        &self.out_of_office
    }
}

impl PresenceTable {
    /// `[ms_to_xmpp]`.
    pub fn ms(&self) -> &MsTable {
        &self.ms
    }

    /// What to send for an XMPP availability.
    pub fn to_pidf(&self, show: Show) -> OutboundPresence<'_> {
        match self.outbound.get(show as usize) {
            Some(row) => OutboundPresence {
                basic: row.basic,
                activity: row.activity.as_deref(),
                note: row.note.as_deref(),
            },
            // Unreachable: validation guarantees a row per Show.
            None => OutboundPresence {
                basic: if show == Show::Unavailable {
                    Basic::Closed
                } else {
                    Basic::Open
                },
                activity: None,
                note: None,
            },
        }
    }

    /// The XMPP availability for a received `<basic/>` and activity. `closed` is always
    /// unavailable (with the activity's status text, if any); an absent `<basic/>` counts as
    /// `open`; an activity without a row gives `pidf_to_xmpp.unlisted_activity` and keeps the
    /// token as status text. Tokens match ASCII case-insensitively.
    pub fn from_pidf(&self, basic: Option<Basic>, activity: Option<&str>) -> InboundPresence {
        let activity = activity
            .map(|a| a.trim_matches(|c: char| c.is_ascii_whitespace()))
            .filter(|a| !a.is_empty());
        let (show, status) = match activity {
            None => (self.open, None),
            Some(token) => match self.lookup(token) {
                Some(row) => (row.show, row.status.clone()),
                None => (self.unlisted_activity, Some(token.to_owned())),
            },
        };
        if basic == Some(Basic::Closed) {
            InboundPresence {
                show: Show::Unavailable,
                status,
            }
        } else {
            InboundPresence { show, status }
        }
    }

    fn lookup(&self, token: &str) -> Option<&InRow> {
        if token.bytes().any(|b| b.is_ascii_uppercase()) {
            self.activities.get(&token.to_ascii_lowercase())
        } else {
            self.activities.get(token)
        }
    }

    /// Whether the table has a row for this activity token.
    pub fn has_activity(&self, token: &str) -> bool {
        self.lookup(token).is_some()
    }
}

/// `errors.toml`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorTable {
    codes: BTreeMap<u16, Condition>,
    /// 3xx, 4xx, 5xx, 6xx.
    classes: [Condition; 4],
    timeout: Condition,
    no_route: Condition,
    /// Indexed by `Condition as usize`.
    to_sip: Vec<u16>,
}

impl ErrorTable {
    /// The condition for a SIP final response: the exact row, else the class default.
    /// Codes outside 300–699 are not errors and give `undefined-condition`.
    pub fn condition_for_status(&self, code: u16) -> Condition {
        if let Some(c) = self.codes.get(&code) {
            return *c;
        }
        match code {
            300..=399 => self.classes[0],
            400..=499 => self.classes[1],
            500..=599 => self.classes[2],
            600..=699 => self.classes[3],
            _ => Condition::UndefinedCondition,
        }
    }

    /// The condition when a SIP transaction times out locally (RFC 3261 Timer B/F).
    pub fn condition_for_timeout(&self) -> Condition {
        self.timeout
    }

    /// The condition when no route or edge server is found (DNS/SRV failure, no connection).
    pub fn condition_for_no_route(&self) -> Condition {
        self.no_route
    }

    /// The SIP status code to answer with for a stanza error condition.
    pub fn status_for_condition(&self, c: Condition) -> u16 {
        self.to_sip.get(c as usize).copied().unwrap_or(500)
    }

    /// Whether `code` has an exact row (not only a class default).
    pub fn has_exact_row(&self, code: u16) -> bool {
        self.codes.contains_key(&code)
    }
}

/// Both tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mappings {
    /// `presence.toml`.
    pub presence: PresenceTable,
    /// `errors.toml`.
    pub errors: ErrorTable,
}

const BUILTIN_PRESENCE: &str = include_str!("../../mappings/presence.toml");
const BUILTIN_ERRORS: &str = include_str!("../../mappings/errors.toml");

impl Mappings {
    /// Reads and validates `presence.toml` and `errors.toml` in `dir`. Problems in both files are
    /// reported together; `file` is the path as given.
    pub fn load(dir: &Path) -> Result<Mappings, Vec<TableProblem>> {
        let presence_path = dir.join("presence.toml");
        let errors_path = dir.join("errors.toml");
        let presence_name = presence_path.display().to_string();
        let errors_name = errors_path.display().to_string();
        let mut problems = Vec::new();
        let mut read = |path: &Path, name: &str| match std::fs::read_to_string(path) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(TableProblem {
                    file: name.to_owned(),
                    key: "(file)".to_owned(),
                    reason: format!("cannot read: {e}"),
                });
                None
            }
        };
        let presence = read(&presence_path, &presence_name);
        let errors = read(&errors_path, &errors_name);
        Self::validate(
            (presence.as_deref(), &presence_name),
            (errors.as_deref(), &errors_name),
            problems,
        )
    }

    /// Validates the two tables given as text (file names `presence.toml` and `errors.toml`).
    pub fn from_strs(
        presence_toml: &str,
        errors_toml: &str,
    ) -> Result<Mappings, Vec<TableProblem>> {
        Self::validate(
            (Some(presence_toml), "presence.toml"),
            (Some(errors_toml), "errors.toml"),
            Vec::new(),
        )
    }

    /// Parses and validates both tables (`(text, file name)`; no text when it could not be
    /// read), adding to `problems` found so far.
    fn validate(
        (presence, presence_name): (Option<&str>, &str),
        (errors, errors_name): (Option<&str>, &str),
        mut problems: Vec<TableProblem>,
    ) -> Result<Mappings, Vec<TableProblem>> {
        let presence = presence.and_then(|s| parse_presence(s, presence_name, &mut problems));
        let errors = errors.and_then(|s| parse_errors(s, errors_name, &mut problems));
        match (presence, errors) {
            (Some(presence), Some(errors)) if problems.is_empty() => {
                Ok(Mappings { presence, errors })
            }
            _ => Err(problems),
        }
    }

    /// The tables shipped in the repository's `mappings/`, compiled in.
    pub fn builtin() -> Mappings {
        match Mappings::from_strs(BUILTIN_PRESENCE, BUILTIN_ERRORS) {
            Ok(m) => m,
            // Invariant: the test `builtin_tables_load` keeps the shipped files valid.
            Err(problems) => panic!(
                "built-in mapping tables are invalid: {}",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

struct Ctx<'a> {
    file: &'a str,
    problems: &'a mut Vec<TableProblem>,
}

impl Ctx<'_> {
    fn problem(&mut self, key: &str, reason: impl Into<String>) {
        self.problems.push(TableProblem {
            file: self.file.to_owned(),
            key: key.to_owned(),
            reason: reason.into(),
        });
    }

    fn parse_root(&mut self, text: &str) -> Option<Table> {
        match toml::from_str::<Table>(text) {
            Ok(t) => Some(t),
            Err(e) => {
                let key = match e.span() {
                    Some(span) => {
                        let upto = text.get(..span.start).unwrap_or(text);
                        let line = upto.matches('\n').count() + 1;
                        let column = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                        format!("line {line}, column {column}")
                    }
                    None => "(syntax)".to_owned(),
                };
                let reason = format!(
                    "TOML syntax error: {}",
                    e.message().trim().replace('\n', " ")
                );
                self.problem(&key, reason);
                None
            }
        }
    }

    /// Reports keys of `table` not in `allowed`.
    fn unknown_keys(&mut self, table: &Table, path: &str, allowed: &[&str]) {
        for key in table.keys() {
            if !allowed.contains(&key.as_str()) {
                let reason = format!("unknown key (expected one of: {})", allowed.join(", "));
                self.problem(&join(path, key), reason);
            }
        }
    }

    fn table<'t>(&mut self, parent: &'t Table, path: &str, key: &str) -> Option<&'t Table> {
        let full = join(path, key);
        match parent.get(key) {
            None => {
                self.problem(&full, "missing table");
                None
            }
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                self.problem(
                    &full,
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string<'t>(&mut self, value: &'t Value, key: &str) -> Option<&'t str> {
        match value {
            Value::String(s) => Some(s),
            other => {
                self.problem(
                    key,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// `row.show`, which must be there.
    fn required_show(&mut self, row: &Table, key: &str) -> Option<Show> {
        let key = join(key, "show");
        match row.get("show") {
            None => {
                self.problem(&key, "missing (an XMPP show name)");
                None
            }
            Some(v) => self.show(v, &key),
        }
    }

    /// `row.<field>` read with `read` if it is there: the value, and whether the row is right
    /// (absent, or read without a problem).
    fn optional<T>(
        &mut self,
        row: &Table,
        key: &str,
        field: &str,
        read: fn(&mut Self, &Value, &str) -> Option<T>,
    ) -> (Option<T>, bool) {
        match row.get(field) {
            None => (None, true),
            Some(v) => {
                let t = read(self, v, &join(key, field));
                let ok = t.is_some();
                (t, ok)
            }
        }
    }

    fn show(&mut self, value: &Value, key: &str) -> Option<Show> {
        let s = self.string(value, key)?;
        match s.parse::<Show>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(key, e.to_string());
                None
            }
        }
    }

    fn condition(&mut self, value: &Value, key: &str) -> Option<Condition> {
        let s = self.string(value, key)?;
        match s.parse::<Condition>() {
            Ok(c) => Some(c),
            Err(e) => {
                self.problem(key, format!("{e} (see RFC 6120 §8.3.3 for the names)"));
                None
            }
        }
    }

    fn text(&mut self, value: &Value, key: &str) -> Option<String> {
        let s = self.string(value, key)?;
        if s.trim().is_empty() {
            self.problem(key, "empty text (remove the key instead)");
            return None;
        }
        if let Some(c) = s
            .chars()
            .find(|c| !is_xml_char(*c) || (c.is_control() && *c != ' '))
        {
            self.problem(
                key,
                format!("text contains the control character U+{:04X}", c as u32),
            );
            return None;
        }
        Some(s.to_owned())
    }

    fn activity_token(&mut self, token: &str, key: &str) -> bool {
        if is_activity_token(token) {
            true
        } else {
            self.problem(
                key,
                format!(
                    "activity token \"{token}\" is not well-formed (RFC 4480 style: lowercase \
                     letters, digits and '-', starting with a letter, at most 64 characters)"
                ),
            );
            false
        }
    }
}

fn join(path: &str, key: &str) -> String {
    let key = if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        key.to_owned()
    } else {
        format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""))
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// An activity token as the tables accept it: `[a-z][a-z0-9-]{0,63}`.
pub fn is_activity_token(token: &str) -> bool {
    let bytes = token.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn parse_presence(
    text: &str,
    file: &str,
    problems: &mut Vec<TableProblem>,
) -> Option<PresenceTable> {
    let before = problems.len();
    let mut cx = Ctx { file, problems };
    let root = cx.parse_root(text)?;
    cx.unknown_keys(&root, "", &["xmpp_to_pidf", "pidf_to_xmpp", "ms_to_xmpp"]);

    // XMPP → PIDF
    let mut outbound: Vec<Option<OutRow>> = vec![None; Show::ALL.len()];
    if let Some(t) = cx.table(&root, "", "xmpp_to_pidf") {
        for (name, value) in t {
            let key = join("xmpp_to_pidf", name);
            let show = match name.parse::<Show>() {
                Ok(s) => s,
                Err(e) => {
                    cx.problem(&key, e.to_string());
                    continue;
                }
            };
            let Value::Table(row) = value else {
                cx.problem(
                    &key,
                    format!(
                        "expected a table like {{ basic = \"open\", activity = \"away\" }}, found {}",
                        value.type_str()
                    ),
                );
                continue;
            };
            cx.unknown_keys(row, &key, &["basic", "activity", "note"]);
            let basic = match row.get("basic") {
                None => {
                    cx.problem(&join(&key, "basic"), "missing (\"open\" or \"closed\")");
                    None
                }
                Some(v) => {
                    let k = join(&key, "basic");
                    cx.string(v, &k).and_then(|s| match s {
                        "open" => Some(Basic::Open),
                        "closed" => Some(Basic::Closed),
                        other => {
                            cx.problem(
                                &k,
                                format!(
                                    "unknown basic \"{other}\" (expected \"open\" or \"closed\")"
                                ),
                            );
                            None
                        }
                    })
                }
            };
            let mut ok = basic.is_some();
            let activity = match row.get("activity") {
                None => None,
                Some(v) => {
                    let k = join(&key, "activity");
                    match cx.string(v, &k) {
                        Some(s) if cx.activity_token(s, &k) => Some(s.to_owned()),
                        _ => {
                            ok = false;
                            None
                        }
                    }
                }
            };
            let note = match row.get("note") {
                None => None,
                Some(v) => {
                    let n = cx.text(v, &join(&key, "note"));
                    ok &= n.is_some();
                    n
                }
            };
            if let (true, Some(basic)) = (ok, basic) {
                if let Some(slot) = outbound.get_mut(show as usize) {
                    *slot = Some(OutRow {
                        basic,
                        activity,
                        note,
                    });
                }
            }
        }
        for show in Show::ALL {
            if !t.contains_key(show.as_str()) {
                cx.problem(
                    &join("xmpp_to_pidf", show.as_str()),
                    "missing: every XMPP show (available, chat, away, xa, dnd, unavailable) needs a row",
                );
            }
        }
    }

    // PIDF → XMPP
    let mut open = None;
    let mut unlisted = None;
    let mut activities = BTreeMap::new();
    if let Some(t) = cx.table(&root, "", "pidf_to_xmpp") {
        cx.unknown_keys(
            t,
            "pidf_to_xmpp",
            &["open", "unlisted_activity", "activities"],
        );
        for (field, slot) in [("open", &mut open), ("unlisted_activity", &mut unlisted)] {
            let key = join("pidf_to_xmpp", field);
            match t.get(field) {
                None => cx.problem(&key, "missing (an XMPP show name)"),
                Some(v) => *slot = cx.show(v, &key),
            }
        }
        if let Some(acts) = cx.table(t, "pidf_to_xmpp", "activities") {
            for (token, value) in acts {
                let key = join("pidf_to_xmpp.activities", token);
                let token_ok = cx.activity_token(token, &key);
                let Value::Table(row) = value else {
                    cx.problem(
                        &key,
                        format!(
                            "expected a table like {{ show = \"dnd\", status = \"In a meeting\" }}, found {}",
                            value.type_str()
                        ),
                    );
                    continue;
                };
                cx.unknown_keys(row, &key, &["show", "status"]);
                let show = cx.required_show(row, &key);
                let (status, status_ok) = cx.optional(row, &key, "status", Ctx::text);
                if let (true, true, Some(show)) = (token_ok, status_ok, show) {
                    activities.insert(token.clone(), InRow { show, status });
                }
            }
        }
    }

    // Microsoft enhanced presence → XMPP; a table written before it existed gets the shipped
    // rows.
    let ms = match root.get("ms_to_xmpp") {
        None => None,
        Some(Value::Table(t)) => parse_ms(t, &mut cx),
        Some(other) => {
            cx.problem(
                "ms_to_xmpp",
                format!("expected a table, found {}", other.type_str()),
            );
            None
        }
    };
    let ms_absent = !root.contains_key("ms_to_xmpp");

    if problems.len() != before {
        return None;
    }
    let ms = match ms {
        Some(ms) => ms,
        None if ms_absent => Mappings::builtin().presence.ms,
        None => return None,
    };
    let outbound: Option<Vec<OutRow>> = outbound.into_iter().collect();
    Some(PresenceTable {
        outbound: outbound?,
        open: open?,
        unlisted_activity: unlisted?,
        activities,
        ms,
    })
}

/// Validates `[ms_to_xmpp]`.
fn parse_ms(t: &Table, cx: &mut Ctx<'_>) -> Option<MsTable> {
    let before = cx.problems.len();
    cx.unknown_keys(
        t,
        "ms_to_xmpp",
        &["availability", "activities", "out_of_office"],
    );
    let out_of_office = match t.get("out_of_office") {
        None => {
            cx.problem(
                "ms_to_xmpp.out_of_office",
                "missing (the text put before an out-of-office note, e.g. \"Out of office\")",
            );
            None
        }
        Some(v) => cx.text(v, "ms_to_xmpp.out_of_office"),
    };
    let mut ranges: Vec<(u32, InRow)> = Vec::new();
    match t.get("availability") {
        None => cx.problem(
            "ms_to_xmpp.availability",
            "missing (an array of rows like { from = 0, show = \"available\" })",
        ),
        Some(Value::Array(rows)) => {
            if rows.is_empty() {
                cx.problem(
                    "ms_to_xmpp.availability",
                    "empty: the first range must start at 0",
                );
            }
            let mut previous: Option<i64> = None;
            for (i, value) in rows.iter().enumerate() {
                let key = format!("ms_to_xmpp.availability[{i}]");
                let Value::Table(row) = value else {
                    cx.problem(
                        &key,
                        format!(
                            "expected a table like {{ from = 6000, show = \"dnd\", status = \"Busy\" }}, found {}",
                            value.type_str()
                        ),
                    );
                    continue;
                };
                cx.unknown_keys(row, &key, &["from", "show", "status"]);
                let from = match row.get("from") {
                    None => {
                        cx.problem(
                            &format!("{key}.from"),
                            "missing (the range's first availability number)",
                        );
                        None
                    }
                    Some(Value::Integer(n)) if (0..=i64::from(u32::MAX)).contains(n) => {
                        let ordered = match previous {
                            None if *n != 0 => {
                                cx.problem(
                                    &format!("{key}.from"),
                                    format!("{n}: the first range must start at 0"),
                                );
                                false
                            }
                            Some(p) if *n <= p => {
                                cx.problem(
                                    &format!("{key}.from"),
                                    format!(
                                        "{n} is not above the previous row's {p} (rows go in increasing order)"
                                    ),
                                );
                                false
                            }
                            _ => true,
                        };
                        previous = Some(*n);
                        u32::try_from(*n).ok().filter(|_| ordered)
                    }
                    Some(other) => {
                        cx.problem(
                            &format!("{key}.from"),
                            format!(
                                "expected an integer 0–4294967295, found {}",
                                match other {
                                    Value::Integer(n) => n.to_string(),
                                    o => o.type_str().to_owned(),
                                }
                            ),
                        );
                        None
                    }
                };
                let show = cx.required_show(row, &key);
                let (status, ok) = cx.optional(row, &key, "status", Ctx::text);
                if let (Some(from), Some(show), true) = (from, show, ok) {
                    ranges.push((from, InRow { show, status }));
                }
            }
        }
        Some(other) => cx.problem(
            "ms_to_xmpp.availability",
            format!("expected an array of tables, found {}", other.type_str()),
        ),
    }
    let mut activities = BTreeMap::new();
    if let Some(acts) = cx.table(t, "ms_to_xmpp", "activities") {
        for (token, value) in acts {
            let key = join("ms_to_xmpp.activities", token);
            let token_ok = cx.activity_token(token, &key);
            let Value::Table(row) = value else {
                cx.problem(
                    &key,
                    format!(
                        "expected a table like {{ status = \"In a call\" }} or {{ show = \"xa\", status = \"Off work\" }}, found {}",
                        value.type_str()
                    ),
                );
                continue;
            };
            cx.unknown_keys(row, &key, &["show", "status"]);
            let (show, show_ok) = cx.optional(row, &key, "show", Ctx::show);
            let (status, status_ok) = cx.optional(row, &key, "status", Ctx::text);
            if token_ok && show_ok && status_ok {
                activities.insert(token.clone(), MsActivityRow { show, status });
            }
        }
    }
    if cx.problems.len() != before {
        return None;
    }
    Some(MsTable {
        ranges,
        activities,
        out_of_office: out_of_office?,
    })
}

fn status_code(value: &Value, key: &str, cx: &mut Ctx<'_>) -> Option<u16> {
    match value {
        Value::Integer(i) if (300..=699).contains(i) => u16::try_from(*i).ok(),
        Value::Integer(i) => {
            cx.problem(key, format!("{i} is not a SIP error status code (300-699)"));
            None
        }
        other => {
            cx.problem(
                key,
                format!(
                    "expected a SIP status code (integer 300-699), found {}",
                    other.type_str()
                ),
            );
            None
        }
    }
}

fn parse_errors(text: &str, file: &str, problems: &mut Vec<TableProblem>) -> Option<ErrorTable> {
    let before = problems.len();
    let mut cx = Ctx { file, problems };
    let root = cx.parse_root(text)?;
    cx.unknown_keys(&root, "", &["sip_to_xmpp", "xmpp_to_sip"]);

    let mut codes = BTreeMap::new();
    let mut classes: [Option<Condition>; 4] = [None; 4];
    let mut timeout = None;
    let mut no_route = None;
    if let Some(t) = cx.table(&root, "", "sip_to_xmpp") {
        cx.unknown_keys(t, "sip_to_xmpp", &["codes", "classes", "local"]);
        if let Some(rows) = cx.table(t, "sip_to_xmpp", "codes") {
            for (code, value) in rows {
                let key = join("sip_to_xmpp.codes", code);
                let parsed = code
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (300..=699).contains(c) && code.len() == 3);
                let condition = cx.condition(value, &key);
                match (parsed, condition) {
                    (Some(c), Some(cond)) => {
                        codes.insert(c, cond);
                    }
                    (None, _) => cx.problem(
                        &key,
                        format!("\"{code}\" is not a SIP error status code (300-699)"),
                    ),
                    (Some(_), None) => {}
                }
            }
        }
        if let Some(rows) = cx.table(t, "sip_to_xmpp", "classes") {
            let names = ["3xx", "4xx", "5xx", "6xx"];
            cx.unknown_keys(rows, "sip_to_xmpp.classes", &names);
            for (i, name) in names.iter().enumerate() {
                let key = join("sip_to_xmpp.classes", name);
                match rows.get(*name) {
                    None => cx.problem(&key, "missing class default (a stanza error condition)"),
                    Some(v) => classes[i] = cx.condition(v, &key),
                }
            }
        }
        if let Some(rows) = cx.table(t, "sip_to_xmpp", "local") {
            cx.unknown_keys(rows, "sip_to_xmpp.local", &["timeout", "no-route"]);
            for (name, slot) in [("timeout", &mut timeout), ("no-route", &mut no_route)] {
                let key = join("sip_to_xmpp.local", name);
                match rows.get(name) {
                    None => cx.problem(&key, "missing (a stanza error condition)"),
                    Some(v) => *slot = cx.condition(v, &key),
                }
            }
        }
    }

    let mut to_sip: Vec<Option<u16>> = vec![None; Condition::ALL.len()];
    if let Some(t) = cx.table(&root, "", "xmpp_to_sip") {
        for (name, value) in t {
            let key = join("xmpp_to_sip", name);
            match name.parse::<Condition>() {
                Ok(c) => {
                    if let (Some(code), Some(slot)) = (
                        status_code(value, &key, &mut cx),
                        to_sip.get_mut(c as usize),
                    ) {
                        *slot = Some(code);
                    }
                }
                Err(e) => cx.problem(&key, format!("{e} (see RFC 6120 §8.3.3 for the names)")),
            }
        }
        for c in Condition::ALL {
            if !t.contains_key(c.as_str()) {
                cx.problem(
                    &join("xmpp_to_sip", c.as_str()),
                    "missing: every stanza error condition needs a SIP status code",
                );
            }
        }
    }

    if problems.len() != before {
        return None;
    }
    let to_sip: Option<Vec<u16>> = to_sip.into_iter().collect();
    Some(ErrorTable {
        codes,
        classes: [classes[0]?, classes[1]?, classes[2]?, classes[3]?],
        timeout: timeout?,
        no_route: no_route?,
        to_sip: to_sip?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every status code docs/mapping.md §3 gives a row.
    const INTERWORKING_CODES: &[u16] = &[
        400, 401, 403, 404, 405, 406, 407, 408, 410, 413, 414, 415, 416, 420, 480, 481, 482, 483,
        484, 485, 486, 487, 488, 491, 500, 501, 502, 503, 504, 505, 513, 600, 603, 604, 606,
    ];

    #[test]
    fn builtin_tables_load() {
        let m = Mappings::from_strs(BUILTIN_PRESENCE, BUILTIN_ERRORS);
        if let Err(problems) = &m {
            for p in problems {
                eprintln!("{p}");
            }
        }
        assert!(m.is_ok());
        assert_eq!(Mappings::builtin(), m.unwrap());
    }

    #[test]
    fn shipped_tables_cover_everything_the_code_knows() {
        let m = Mappings::builtin();
        let presence_root: Table = toml::from_str(BUILTIN_PRESENCE).unwrap();
        let rows = presence_root["xmpp_to_pidf"].as_table().unwrap();
        for show in Show::ALL {
            assert!(rows.contains_key(show.as_str()), "no row for show {show}");
        }
        for token in KNOWN_ACTIVITIES {
            assert!(is_activity_token(token), "{token}");
            assert!(
                m.presence.has_activity(token),
                "no row for activity {token}"
            );
        }
        let errors_root: Table = toml::from_str(BUILTIN_ERRORS).unwrap();
        let to_sip = errors_root["xmpp_to_sip"].as_table().unwrap();
        for c in Condition::ALL {
            assert!(to_sip.contains_key(c.as_str()), "no SIP code for {c}");
        }
        for code in INTERWORKING_CODES {
            assert!(m.errors.has_exact_row(*code), "no row for SIP {code}");
        }
    }

    #[test]
    fn shipped_presence_rows() {
        let t = Mappings::builtin().presence;
        let out = |s| {
            let o = t.to_pidf(s);
            (o.basic, o.activity)
        };
        assert_eq!(out(Show::Available), (Basic::Open, None));
        assert_eq!(out(Show::Chat), (Basic::Open, None));
        assert_eq!(out(Show::Away), (Basic::Open, Some("away")));
        assert_eq!(out(Show::Xa), (Basic::Open, Some("away")));
        assert_eq!(out(Show::Dnd), (Basic::Open, Some("busy")));
        assert_eq!(out(Show::Unavailable), (Basic::Closed, None));
        assert_eq!(t.to_pidf(Show::Xa).note, Some("Extended away"));

        type Case<'a> = (Option<Basic>, Option<&'a str>, Show, Option<&'a str>);
        let cases: &[Case<'_>] = &[
            (Some(Basic::Closed), None, Show::Unavailable, None),
            (
                Some(Basic::Closed),
                Some("vacation"),
                Show::Unavailable,
                Some("On vacation"),
            ),
            (Some(Basic::Open), None, Show::Available, None),
            (None, None, Show::Available, None),
            (Some(Basic::Open), Some("unknown"), Show::Available, None),
            (Some(Basic::Open), Some("away"), Show::Away, None),
            (Some(Basic::Open), Some("AWAY"), Show::Away, None),
            (Some(Basic::Open), Some(" away "), Show::Away, None),
            (
                Some(Basic::Open),
                Some("appointment"),
                Show::Away,
                Some("Appointment"),
            ),
            (Some(Basic::Open), Some("busy"), Show::Dnd, Some("Busy")),
            (
                Some(Basic::Open),
                Some("meeting"),
                Show::Dnd,
                Some("In a meeting"),
            ),
            (
                Some(Basic::Open),
                Some("on-the-phone"),
                Show::Dnd,
                Some("On the phone"),
            ),
            (
                Some(Basic::Open),
                Some("vacation"),
                Show::Xa,
                Some("On vacation"),
            ),
            (
                Some(Basic::Open),
                Some("sleeping"),
                Show::Xa,
                Some("Sleeping"),
            ),
            (
                Some(Basic::Open),
                Some("Commuting"),
                Show::Available,
                Some("Commuting"),
            ),
        ];
        for (basic, activity, show, status) in cases {
            assert_eq!(
                t.from_pidf(*basic, *activity),
                InboundPresence {
                    show: *show,
                    status: status.map(str::to_owned)
                },
                "{basic:?} {activity:?}"
            );
        }
    }

    #[test]
    fn shipped_error_rows() {
        let e = Mappings::builtin().errors;
        let cases: &[(u16, Condition)] = &[
            (302, Condition::Redirect),
            (380, Condition::Redirect),
            (400, Condition::BadRequest),
            (404, Condition::ItemNotFound),
            (408, Condition::RemoteServerTimeout),
            (414, Condition::JidMalformed),
            (416, Condition::JidMalformed),
            (484, Condition::ItemNotFound),
            (486, Condition::RecipientUnavailable),
            (499, Condition::BadRequest),
            (503, Condition::ServiceUnavailable),
            (599, Condition::InternalServerError),
            (603, Condition::ServiceUnavailable),
            (699, Condition::ServiceUnavailable),
            (200, Condition::UndefinedCondition),
            (700, Condition::UndefinedCondition),
        ];
        for (code, c) in cases {
            assert_eq!(e.condition_for_status(*code), *c, "{code}");
        }
        assert_eq!(e.condition_for_timeout(), Condition::RemoteServerTimeout);
        assert_eq!(e.condition_for_no_route(), Condition::RemoteServerNotFound);
        let back: &[(Condition, u16)] = &[
            (Condition::BadRequest, 400),
            (Condition::FeatureNotImplemented, 501),
            (Condition::NotAllowed, 405),
            (Condition::Redirect, 302),
            (Condition::RecipientUnavailable, 480),
            (Condition::UnexpectedRequest, 491),
            (Condition::ServiceUnavailable, 503),
        ];
        for (c, code) in back {
            assert_eq!(e.status_for_condition(*c), *code, "{c}");
        }
    }

    fn problems(presence: &str, errors: &str) -> Vec<String> {
        match Mappings::from_strs(presence, errors) {
            Ok(_) => vec![],
            Err(p) => {
                // Sorted: the order of keys within a table depends on toml's preserve_order.
                let mut v: Vec<String> = p.iter().map(ToString::to_string).collect();
                v.sort();
                v
            }
        }
    }

    fn sorted(v: Vec<&str>) -> Vec<String> {
        let mut v: Vec<String> = v.into_iter().map(str::to_owned).collect();
        v.sort();
        v
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let presence = BUILTIN_PRESENCE
            .replace("[xmpp_to_pidf.dnd]", "[xmpp_to_pidf.busy]")
            .replace(
                "activity = \"busy\"",
                "activity = \"Busy Now\"\ncolour = \"red\"",
            )
            .replace("[pidf_to_xmpp]", "[pidf_to_xmpp]\nextra = 1")
            .replace("away = { show = \"away\" }", "away = { show = \"gone\" }");
        let errors = BUILTIN_ERRORS
            .replace(
                "486 = \"recipient-unavailable\"",
                "486 = \"busy-here\"\n799 = \"gone\"",
            )
            .replace("6xx = \"service-unavailable\"", "")
            .replace(
                "unexpected-request = 491",
                "unexpected-request = 200\npayment-required = 402",
            );
        let got = problems(&presence, &errors);
        let expected = vec![
            "presence.toml: xmpp_to_pidf.busy: unknown XMPP show \"busy\" (expected one of: available, chat, away, xa, dnd, unavailable)",
            "presence.toml: xmpp_to_pidf.dnd: missing: every XMPP show (available, chat, away, xa, dnd, unavailable) needs a row",
            "presence.toml: pidf_to_xmpp.extra: unknown key (expected one of: open, unlisted_activity, activities)",
            "presence.toml: pidf_to_xmpp.activities.away.show: unknown XMPP show \"gone\" (expected one of: available, chat, away, xa, dnd, unavailable)",
            "errors.toml: sip_to_xmpp.codes.486: unknown stanza error condition \"busy-here\" (see RFC 6120 §8.3.3 for the names)",
            "errors.toml: sip_to_xmpp.codes.799: \"799\" is not a SIP error status code (300-699)",
            "errors.toml: sip_to_xmpp.classes.6xx: missing class default (a stanza error condition)",
            "errors.toml: xmpp_to_sip.payment-required: unknown stanza error condition \"payment-required\" (see RFC 6120 §8.3.3 for the names)",
            "errors.toml: xmpp_to_sip.unexpected-request: 200 is not a SIP error status code (300-699)",
        ];
        assert_eq!(got, sorted(expected));
    }

    #[test]
    fn value_and_token_problems() {
        let presence = BUILTIN_PRESENCE
            .replace(
                "activity = \"busy\"",
                "activity = \"Busy Now\"\ncolour = \"red\"",
            )
            .replace("basic = \"closed\"", "basic = \"shut\"")
            .replace(
                "meeting = { show = \"dnd\", status = \"In a meeting\" }",
                "\"In Meeting\" = { show = \"dnd\", status = 5 }",
            );
        let got = problems(&presence, BUILTIN_ERRORS);
        let expected = vec![
            "presence.toml: xmpp_to_pidf.dnd.colour: unknown key (expected one of: basic, activity, note)",
            "presence.toml: xmpp_to_pidf.dnd.activity: activity token \"Busy Now\" is not well-formed (RFC 4480 style: lowercase letters, digits and '-', starting with a letter, at most 64 characters)",
            "presence.toml: xmpp_to_pidf.unavailable.basic: unknown basic \"shut\" (expected \"open\" or \"closed\")",
            "presence.toml: pidf_to_xmpp.activities.\"In Meeting\": activity token \"In Meeting\" is not well-formed (RFC 4480 style: lowercase letters, digits and '-', starting with a letter, at most 64 characters)",
            "presence.toml: pidf_to_xmpp.activities.\"In Meeting\".status: expected a string, found integer",
        ];
        assert_eq!(got, sorted(expected));
    }

    #[test]
    fn ms_table_problems() {
        let presence = BUILTIN_PRESENCE
            .replace(
                "{ from = 0, show = \"available\" }",
                "{ from = 5, show = \"here\" }",
            )
            .replace("{ from = 7500,", "{ from = 6000,")
            .replace(
                "{ from = 18000, show = \"unavailable\" }",
                "{ from = -1, show = \"unavailable\", colour = 1 }",
            )
            .replace(
                "out_of_office = \"Out of office\"",
                "out_of_office = \"  \"",
            )
            .replace(
                "on-the-phone = { status = \"In a call\" }",
                "\"On Phone\" = { show = \"busy\" }\nin-a-call = \"In a call\"",
            );
        let got = problems(&presence, BUILTIN_ERRORS);
        let expected = vec![
            "presence.toml: ms_to_xmpp.availability[0].from: 5: the first range must start at 0",
            "presence.toml: ms_to_xmpp.availability[0].show: unknown XMPP show \"here\" (expected one of: available, chat, away, xa, dnd, unavailable)",
            "presence.toml: ms_to_xmpp.availability[3].from: 6000 is not above the previous row's 6000 (rows go in increasing order)",
            "presence.toml: ms_to_xmpp.availability[7].colour: unknown key (expected one of: from, show, status)",
            "presence.toml: ms_to_xmpp.availability[7].from: expected an integer 0–4294967295, found -1",
            "presence.toml: ms_to_xmpp.out_of_office: empty text (remove the key instead)",
            "presence.toml: ms_to_xmpp.activities.\"On Phone\": activity token \"On Phone\" is not well-formed (RFC 4480 style: lowercase letters, digits and '-', starting with a letter, at most 64 characters)",
            "presence.toml: ms_to_xmpp.activities.\"On Phone\".show: unknown XMPP show \"busy\" (expected one of: available, chat, away, xa, dnd, unavailable)",
            "presence.toml: ms_to_xmpp.activities.in-a-call: expected a table like { status = \"In a call\" } or { show = \"xa\", status = \"Off work\" }, found string",
        ];
        assert_eq!(got, sorted(expected));
        // Shapes: not an array, empty, missing keys.
        let cut = BUILTIN_PRESENCE.find("[ms_to_xmpp]").unwrap();
        let base = &BUILTIN_PRESENCE[..cut];
        assert_eq!(
            problems(
                &format!("{base}[ms_to_xmpp]\navailability = 3\n"),
                BUILTIN_ERRORS
            ),
            sorted(vec![
                "presence.toml: ms_to_xmpp.activities: missing table",
                "presence.toml: ms_to_xmpp.availability: expected an array of tables, found integer",
                "presence.toml: ms_to_xmpp.out_of_office: missing (the text put before an out-of-office note, e.g. \"Out of office\")",
            ])
        );
        assert_eq!(
            problems(
                &format!(
                    "{base}[ms_to_xmpp]\nout_of_office = \"OOF\"\navailability = []\nactivities = {{}}\nextra = 1\n"
                ),
                BUILTIN_ERRORS
            ),
            sorted(vec![
                "presence.toml: ms_to_xmpp.availability: empty: the first range must start at 0",
                "presence.toml: ms_to_xmpp.extra: unknown key (expected one of: availability, activities, out_of_office)",
            ])
        );
        assert_eq!(
            problems(&format!("ms_to_xmpp = 1\n{base}"), BUILTIN_ERRORS),
            vec!["presence.toml: ms_to_xmpp: expected a table, found integer".to_owned()]
        );
        // A table written before `[ms_to_xmpp]` existed gets the shipped rows.
        let old = Mappings::from_strs(base, BUILTIN_ERRORS).unwrap();
        assert_eq!(old.presence.ms(), Mappings::builtin().presence.ms());
        // An edited table is used as written.
        let edited = BUILTIN_PRESENCE.replace(
            "{ from = 15000, show = \"xa\" }",
            "{ from = 15000, show = \"away\", status = \"Away\" }",
        );
        let t = Mappings::from_strs(&edited, BUILTIN_ERRORS)
            .unwrap()
            .presence;
        assert_eq!(
            t.ms().availability(15000),
            InboundPresence {
                show: Show::Away,
                status: Some("Away".into())
            }
        );
        assert_eq!(t.ms().out_of_office(), "Out of office");
        assert_eq!(
            t.ms().activity("Off-Work").and_then(|r| r.show),
            Some(Show::Xa)
        );
    }

    #[test]
    fn syntax_and_shape_problems() {
        assert_eq!(
            problems("xmpp_to_pidf = [\n", "sip_to_xmpp = 3\nxmpp_to_sip = {}\nfoo = 1"),
            vec![
                "presence.toml: line 1, column 17: TOML syntax error: unclosed array, expected `]`".to_owned(),
                "errors.toml: foo: unknown key (expected one of: sip_to_xmpp, xmpp_to_sip)".to_owned(),
                "errors.toml: sip_to_xmpp: expected a table, found integer".to_owned(),
            ]
            .into_iter()
            .chain(Condition::ALL.iter().map(|c| {
                format!(
                    "errors.toml: xmpp_to_sip.{c}: missing: every stanza error condition needs a SIP status code"
                )
            }))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn load_reads_a_directory_and_reports_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = Mappings::load(dir.path()).unwrap_err();
        assert_eq!(err.len(), 2);
        assert_eq!(err[0].key, "(file)");
        assert!(
            err[0]
                .to_string()
                .contains("presence.toml: (file): cannot read:")
        );
        std::fs::write(dir.path().join("presence.toml"), BUILTIN_PRESENCE).unwrap();
        std::fs::write(dir.path().join("errors.toml"), BUILTIN_ERRORS).unwrap();
        assert_eq!(Mappings::load(dir.path()).unwrap(), Mappings::builtin());
        std::fs::write(
            dir.path().join("errors.toml"),
            BUILTIN_ERRORS.replace(
                "[sip_to_xmpp.local]",
                "[sip_to_xmpp.local]\nretry = \"gone\"",
            ),
        )
        .unwrap();
        let err = Mappings::load(dir.path()).unwrap_err();
        let expected = format!(
            "{}: sip_to_xmpp.local.retry: unknown key (expected one of: timeout, no-route)",
            dir.path().join("errors.toml").display()
        );
        assert_eq!(
            err.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec![expected]
        );
    }

    #[test]
    fn show_names() {
        for s in Show::ALL {
            assert_eq!(s.as_str().parse::<Show>(), Ok(s));
        }
        assert_eq!(
            "Away".parse::<Show>().unwrap_err().to_string(),
            "unknown XMPP show \"Away\" (expected one of: available, chat, away, xa, dnd, unavailable)"
        );
    }
}
