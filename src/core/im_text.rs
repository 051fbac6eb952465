//! Instant-message bodies and typing notifications: the codecs between what LCS/OCS/Lync peers
//! put in a MESSAGE, INFO or INVITE and the plain text and XEP-0085 chat state that XMPP
//! carries. Pure functions: no I/O, no clock.
//!
//! * [`plain_text`] turns an incoming body into plain text by its Content-Type:
//!   `text/plain` (UTF-8 by default; US-ASCII, ISO-8859-1 and windows-1252 converted),
//!   `text/html` (converted by a small tokenizer of our own, rules at [`plain_text`]) and
//!   `multipart/alternative` / `multipart/related` (RFC 2046 §5.1: the `text/plain` part is
//!   preferred, else `text/html`). `text/rtf` is refused with [`BodyError::UnsupportedType`]
//!   so that the sender is told 415 with [`ACCEPT`] and falls back to a type we read; see
//!   docs/mapping.md §4 for why.
//! * [`ms_text_format`] reads the first message that Microsoft clients put in the INVITE's
//!   `ms-text-format` header (`text/plain; charset=UTF-8;msgr=…;ms-body=<base64>`,
//!   docs/mapping.md §4).
//! * [`iscomposing_body`] / [`parse_iscomposing`]: RFC 3994 `application/im-iscomposing+xml`
//!   (`active` = composing, `idle` = not composing).
//! * [`keyboard_activity_body`] / [`parse_keyboard_activity`]: the Microsoft INFO body
//!   `<KeyboardActivity><status status="type"/></KeyboardActivity>` (`type` / `idle`).
//!
//! Mapping of typing states (docs/mapping.md §4): XEP-0085 `composing` ↔
//! RFC 3994 `active` / Microsoft `type`; XEP-0085 `paused` and `active` are both sent as
//! `idle`; a received `idle` becomes [`Typing::Paused`]. The last one is this module's
//! decision (RFC 7572, the SIP–XMPP instant-message interworking, was not at hand when it was
//! taken): a content message itself ends composition on the receiving side (RFC 3994 §3), so
//! an explicit `idle` means the user stopped typing without sending — XEP-0085's `paused`.
//!
//! Security: every input is untrusted. Bodies over [`MAX_BODY_BYTES`] are refused. XML bodies
//! are read like `core::pidf` reads PIDF: any DOCTYPE is refused (so no DTD, no entity
//! declaration, no external entity, no expansion bomb), only the five predefined entities and
//! character references are accepted, size and nesting depth are bounded. Multipart bodies
//! are bounded in parts, part headers and nesting. The HTML converter never builds a tree: it
//! is one linear pass, so nesting costs nothing. No input can make this module panic (the
//! `im_body` fuzz target and the property tests check it).

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::core::xml::{self, Namespaces, XmlError, XmlEvent, XmlLimits, XmlReader, split_qname};
use crate::core::xml_chars::is_xml_space;
use crate::sip::header::MediaType;

/// Largest body (or decoded `ms-body`) accepted, in bytes: the SIP body limit's default.
/// Text produced from it is at most three times as long (windows-1252 → UTF-8); HTML
/// conversion never makes text longer than its input.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// RFC 3994 content type.
pub const ISCOMPOSING_TYPE: &str = "application/im-iscomposing+xml";

/// RFC 3994 namespace.
pub const NS_ISCOMPOSING: &str = "urn:ietf:params:xml:ns:im-iscomposing";

/// Content type of the Microsoft `KeyboardActivity` INFO body.
pub const KEYBOARD_ACTIVITY_TYPE: &str = "application/xml";

/// `<refresh>` of the `active` documents we send, in seconds (RFC 3994 §3.2: the composer
/// repeats `active` within this interval while composition goes on, otherwise the receiver
/// times the state out). The engine re-sends `active` before this expires.
pub const ISCOMPOSING_REFRESH_SECS: u32 = 90;

/// The body types the bridge reads in an IM session, for the `Accept` header of a 415
/// (RFC 3261 §21.4.16) and for `a=accept-types`.
pub const ACCEPT: &str = "text/plain, text/html, multipart/alternative, multipart/related, application/im-iscomposing+xml";

/// Why a body could not be turned into text or a typing state. The engine answers
/// `UnsupportedType` with 415 and [`ACCEPT`], the others with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// A content type the bridge does not read (e.g. `text/rtf`), or a multipart body
    /// without a part it reads. Holds the type (lowercase essence) or a description.
    #[error("content type {0} is not supported (supported: {ACCEPT})")]
    UnsupportedType(String),
    /// A charset other than UTF-8, US-ASCII, ISO-8859-1 and windows-1252, or bytes that are
    /// not valid in the declared charset.
    #[error("{0}")]
    BadCharset(String),
    /// Anything else: a malformed Content-Type, multipart structure, base64, XML document, or
    /// a body over [`MAX_BODY_BYTES`].
    #[error("{0}")]
    Malformed(String),
}

use BodyError::{BadCharset, Malformed, UnsupportedType};

/// Typing state, XEP-0085 side (`inactive` and `gone` are not carried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Typing {
    /// XEP-0085 `composing`: RFC 3994 `active`, Microsoft `type`.
    Composing,
    /// XEP-0085 `paused`: RFC 3994 `idle`, Microsoft `idle`.
    Paused,
    /// XEP-0085 `active` (engaged, not typing): sent as `idle` as well.
    Active,
}

// ---------------------------------------------------------------------------------------------
// Bodies → text
// ---------------------------------------------------------------------------------------------

/// Deepest multipart nesting read (`multipart/alternative` holding `multipart/related` …).
const MAX_MULTIPART_DEPTH: usize = 3;
/// Most body parts read in one multipart body.
const MAX_PARTS: usize = 32;
/// Most header lines in one body part.
const MAX_PART_HEADERS: usize = 32;

/// The plain text of an incoming IM body, from its Content-Type value and bytes.
///
/// * `text/plain`: the text exactly as sent (no trimming, no line-end change). Charset
///   `UTF-8` when absent; `US-ASCII` accepts any valid UTF-8 (a superset); `ISO-8859-1` and
///   `windows-1252` are converted (ISO-8859-1 as windows-1252, the WHATWG Encoding rule:
///   bytes 0x80–0x9F are never meant as C1 controls). Other charsets: [`BodyError::BadCharset`].
/// * `text/html`: tags removed; `<script>`, `<style>`, `<title>` and `<template>` dropped with
///   their content; comments dropped; block elements (`<p>`, `<div>`, `<li>`, `<tr>`, headings
///   …) start new lines, `<br>` breaks a line; white space collapsed except in `<pre>`; named
///   (HTML 4 Latin-1 set and common typographic ones) and numeric entities decoded; a link
///   whose text differs from its target keeps the target in parentheses; `<img alt>` gives its
///   alt text; at most one empty line in a row; trimmed.
/// * `multipart/alternative` and `multipart/related` (RFC 2046 §5.1, RFC 2387): the first
///   `text/plain` part, else the first `text/html` part, else a nested multipart part; parts
///   may use `base64` or `quoted-printable` transfer encoding. None of them:
///   [`BodyError::UnsupportedType`].
/// * anything else, `text/rtf` included: [`BodyError::UnsupportedType`].
///
/// `text/plain` is returned as sent, so it may hold characters XML 1.0 forbids (NUL, most C0
/// controls, U+FFFE/U+FFFF); the component link removes them from every stanza
/// (`core::xml_chars`). HTML conversion already drops them.
pub fn plain_text(content_type: &str, body: &[u8]) -> Result<String, BodyError> {
    check_size(body.len())?;
    entity_text(content_type, body, 0)
}

fn check_size(len: usize) -> Result<(), BodyError> {
    if len > MAX_BODY_BYTES {
        return Err(Malformed(format!(
            "body is {len} bytes, larger than the limit of {MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Html,
    Multipart,
    Other,
}

fn kind(mt: &MediaType<'_>) -> Kind {
    if mt.is("text/plain") {
        Kind::Plain
    } else if mt.is("text/html") {
        Kind::Html
    } else if mt.is("multipart/alternative") || mt.is("multipart/related") {
        Kind::Multipart
    } else {
        Kind::Other
    }
}

fn media_type(content_type: &str) -> Result<MediaType<'_>, BodyError> {
    let ct = content_type.trim();
    if ct.is_empty() {
        return Err(Malformed("no Content-Type for the body".to_owned()));
    }
    MediaType::parse(ct).map_err(|_| {
        Malformed(format!(
            "Content-Type \"{}\" is not type/subtype",
            ct.escape_debug()
        ))
    })
}

fn essence(mt: &MediaType<'_>) -> String {
    format!(
        "{}/{}",
        mt.mtype.to_ascii_lowercase(),
        mt.subtype.to_ascii_lowercase()
    )
}

fn entity_text(content_type: &str, body: &[u8], depth: usize) -> Result<String, BodyError> {
    let mt = media_type(content_type)?;
    match kind(&mt) {
        Kind::Plain => decode_charset(mt.charset(), body),
        Kind::Html => decode_charset(mt.charset(), body).map(|html| html_to_text(&html)),
        Kind::Multipart => multipart_text(&mt, body, depth),
        Kind::Other => Err(UnsupportedType(essence(&mt))),
    }
}

/// Decodes `body` in `charset` (UTF-8 when absent).
fn decode_charset(charset: Option<&str>, body: &[u8]) -> Result<String, BodyError> {
    let label = charset.map(str::trim).unwrap_or("utf-8");
    let is = |names: &[&str]| names.iter().any(|n| label.eq_ignore_ascii_case(n));
    if is(&["utf-8", "utf8"]) || is(&["us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us"]) {
        match std::str::from_utf8(body) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(BadCharset(format!(
                "body is not valid {label} (invalid byte at offset {})",
                e.valid_up_to()
            ))),
        }
    } else if is(&[
        "iso-8859-1",
        "iso8859-1",
        "iso_8859-1",
        "latin1",
        "l1",
        "cp819",
        "windows-1252",
        "cp1252",
        "x-cp1252",
    ]) {
        Ok(body.iter().map(|&b| windows_1252(b)).collect())
    } else {
        Err(BadCharset(format!(
            "charset \"{}\" is not supported (UTF-8, US-ASCII, ISO-8859-1, windows-1252 are)",
            label.escape_debug()
        )))
    }
}

/// windows-1252 (WHATWG Encoding Standard index): 0x80–0x9F are typographic characters; the
/// five unassigned bytes map to the C1 code points, as in the standard.
fn windows_1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '\u{20AC}', '\u{81}', '\u{201A}', '\u{192}', '\u{201E}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2C6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8D}', '\u{17D}',
        '\u{8F}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2DC}', '\u{2122}', '\u{161}', '\u{203A}', '\u{153}', '\u{9D}', '\u{17E}',
        '\u{178}',
    ];
    match b {
        0x80..=0x9F => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

// ---------------------------------------------------------------------------------------------
// Multipart (RFC 2046 §5.1)
// ---------------------------------------------------------------------------------------------

/// RFC 2046 §5.1.1 `bchars`: 1–70 of them, not ending in a space.
fn valid_boundary(b: &str) -> bool {
    (1..=70).contains(&b.len())
        && !b.ends_with(' ')
        && b.bytes().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'\''
                        | b'('
                        | b')'
                        | b'+'
                        | b'_'
                        | b','
                        | b'-'
                        | b'.'
                        | b'/'
                        | b':'
                        | b'='
                        | b'?'
                        | b' '
                )
        })
}

fn multipart_text(mt: &MediaType<'_>, body: &[u8], depth: usize) -> Result<String, BodyError> {
    let what = essence(mt);
    if depth >= MAX_MULTIPART_DEPTH {
        return Err(Malformed(format!(
            "{what}: multipart bodies nested deeper than {MAX_MULTIPART_DEPTH} levels"
        )));
    }
    let boundary = mt
        .params
        .value("boundary")
        .ok_or_else(|| Malformed(format!("{what} without a boundary parameter")))?;
    if !valid_boundary(boundary) {
        return Err(Malformed(format!(
            "{what}: boundary \"{}\" is not 1-70 RFC 2046 characters",
            boundary.escape_debug()
        )));
    }
    let parts = split_multipart(body, boundary.as_bytes())
        .map_err(|problem| Malformed(format!("{what}: {problem}")))?;

    // Candidates in order of preference: text/plain, text/html, nested multipart.
    let mut candidates: [Option<Part<'_>>; 3] = [None, None, None];
    for raw in parts {
        let part = parse_part(raw).map_err(|problem| Malformed(format!("{what}: {problem}")))?;
        let slot = match kind(&media_type(&part.content_type)?) {
            Kind::Plain => 0,
            Kind::Html => 1,
            Kind::Multipart => 2,
            Kind::Other => continue,
        };
        if candidates[slot].is_none() {
            candidates[slot] = Some(part);
        }
    }
    let mut first_error = None;
    for part in candidates.into_iter().flatten() {
        let result = transfer_decode(&part)
            .and_then(|content| entity_text(&part.content_type, &content, depth + 1));
        match result {
            Ok(text) => return Ok(text),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        UnsupportedType(format!("{what} without a text/plain or text/html part"))
    }))
}

/// Splits a multipart body into its parts (each without the delimiter lines and without the
/// line break that belongs to the next delimiter). Accepts CRLF and bare LF line ends.
fn split_multipart<'b>(body: &'b [u8], boundary: &[u8]) -> Result<Vec<&'b [u8]>, String> {
    let mut dash = Vec::with_capacity(boundary.len() + 2);
    dash.extend_from_slice(b"--");
    dash.extend_from_slice(boundary);
    let finder = memchr::memmem::Finder::new(&dash);

    let mut parts = Vec::new();
    // Start of the current part's content (after a delimiter line), once one was seen.
    let mut open: Option<usize> = None;
    let mut from = 0;
    while let Some(off) = finder.find(&body[from..]) {
        let at = from + off;
        from = at + 1;
        // A delimiter starts a line.
        if at != 0 && body[at - 1] != b'\n' {
            continue;
        }
        let after = at + dash.len();
        let rest = &body[after..];
        let close = rest.starts_with(b"--");
        let line_rest = if close { &rest[2..] } else { rest };
        // Transport padding (LWSP) then the line end (or, for the close delimiter, the end).
        let pad = line_rest
            .iter()
            .take_while(|&&c| c == b' ' || c == b'\t')
            .count();
        let line_end = match &line_rest[pad..] {
            [b'\r', b'\n', ..] => Some(2),
            [b'\n', ..] => Some(1),
            [] if close => Some(0),
            _ => None,
        };
        let Some(eol) = line_end else {
            // `--boundaryX…`: a longer line that merely starts like a delimiter.
            continue;
        };
        if let Some(start) = open {
            // The CRLF (or LF) before the delimiter belongs to it.
            let mut end = at;
            if end > start && body[end - 1] == b'\n' {
                end -= 1;
                if end > start && body[end - 1] == b'\r' {
                    end -= 1;
                }
            }
            if parts.len() == MAX_PARTS {
                return Err(format!("more than {MAX_PARTS} body parts"));
            }
            parts.push(&body[start.min(end)..end]);
        }
        if close {
            return if parts.is_empty() {
                Err("no body part before the close delimiter".to_owned())
            } else {
                Ok(parts)
            };
        }
        let next = after + pad + eol;
        open = Some(next);
        from = next;
    }
    Err(if open.is_some() {
        format!(
            "the body ends without the close delimiter \"{}--\"",
            String::from_utf8_lossy(&dash)
        )
    } else {
        format!(
            "no boundary delimiter \"{}\" in the body",
            String::from_utf8_lossy(&dash)
        )
    })
}

/// One body part: its Content-Type (RFC 2045 §5.2 default `text/plain; charset=us-ascii`),
/// transfer encoding (default `7bit`) and raw content.
struct Part<'b> {
    content_type: String,
    transfer_encoding: String,
    content: &'b [u8],
}

/// Splits a part into headers and content (RFC 2046 §5.1.1 `body-part`; RFC 822 header lines,
/// folded lines unfolded).
fn parse_part(raw: &[u8]) -> Result<Part<'_>, String> {
    // The header block ends at the first empty line; a part that starts with one has none.
    let (head, content): (&[u8], &[u8]) = if let Some(rest) = raw.strip_prefix(b"\r\n") {
        (b"", rest)
    } else if let Some(rest) = raw.strip_prefix(b"\n") {
        (b"", rest)
    } else {
        let crlf = memchr::memmem::find(raw, b"\r\n\r\n").map(|i| (i, 4));
        let lf = memchr::memmem::find(raw, b"\n\n").map(|i| (i, 2));
        match (crlf, lf) {
            (Some(a), Some(b)) => {
                let (i, n) = if a.0 < b.0 { a } else { b };
                (&raw[..i], &raw[i + n..])
            }
            (Some((i, n)), None) | (None, Some((i, n))) => (&raw[..i], &raw[i + n..]),
            (None, None) => (raw, b""),
        }
    };
    let head = std::str::from_utf8(head)
        .map_err(|_| "a body part's headers are not valid UTF-8".to_owned())?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let Some((_, value)) = headers.last_mut() else {
                return Err("a body part starts with a continuation line".to_owned());
            };
            value.push(' ');
            value.push_str(line.trim());
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!(
                "body part header line \"{}\" has no colon",
                line.chars().take(60).collect::<String>().escape_debug()
            ));
        };
        if headers.len() == MAX_PART_HEADERS {
            return Err(format!(
                "a body part has more than {MAX_PART_HEADERS} header lines"
            ));
        }
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let find = |wanted: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(wanted))
            .map(|(_, v)| v.clone())
    };
    Ok(Part {
        content_type: find("Content-Type")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "text/plain; charset=us-ascii".to_owned()),
        transfer_encoding: find("Content-Transfer-Encoding").unwrap_or_else(|| "7bit".to_owned()),
        content,
    })
}

/// base64 that accepts missing padding and line breaks.
const LIBERAL_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn decode_base64(text: &[u8]) -> Result<Vec<u8>, String> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    LIBERAL_BASE64
        .decode(&compact)
        .map_err(|e| format!("invalid base64: {e}"))
}

/// Undoes the part's Content-Transfer-Encoding (RFC 2045 §6).
fn transfer_decode<'b>(part: &Part<'b>) -> Result<Cow<'b, [u8]>, BodyError> {
    let cte = part.transfer_encoding.trim();
    let is = |name: &str| cte.eq_ignore_ascii_case(name);
    if cte.is_empty() || is("7bit") || is("8bit") || is("binary") {
        Ok(Cow::Borrowed(part.content))
    } else if is("base64") {
        decode_base64(part.content)
            .map(Cow::Owned)
            .map_err(|e| Malformed(format!("base64 body part: {e}")))
    } else if is("quoted-printable") {
        Ok(Cow::Owned(decode_quoted_printable(part.content)))
    } else {
        Err(Malformed(format!(
            "body part transfer encoding \"{}\" is not supported",
            cte.escape_debug()
        )))
    }
}

/// RFC 2045 §6.7, liberally: `=XX` is a byte, `=` at a line end is a soft break, any other `=`
/// is kept.
fn decode_quoted_printable(input: &[u8]) -> Vec<u8> {
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        if c == b'=' {
            match input.get(i + 1..i + 3) {
                Some([b'\r', b'\n']) => {
                    i += 3;
                    continue;
                }
                Some([h, l]) => {
                    if let (Some(h), Some(l)) = (hex(*h), hex(*l)) {
                        // Two hex digits: at most 0xFF.
                        out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                        i += 3;
                        continue;
                    }
                }
                _ => {}
            }
            if input.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HTML → text
// ---------------------------------------------------------------------------------------------

/// Elements dropped together with their content.
const DROPPED: &[&str] = &["script", "style", "title", "template"];

/// Elements that start and end a line.
const BLOCKS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "caption",
    "center",
    "dd",
    "details",
    "dialog",
    "dir",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "html",
    "li",
    "main",
    "menu",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "tbody",
    "tfoot",
    "thead",
    "tr",
    "ul",
];

fn one_of(name: &str, list: &[&str]) -> bool {
    list.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Builds the text: white space collapsing, line breaks, at most one empty line in a row.
#[derive(Default)]
struct TextOut {
    out: String,
    /// White space seen since the last character.
    space: bool,
    /// Line breaks owed before the next character (0–2).
    breaks: u8,
    /// Inside `<pre>` (nesting count).
    pre: usize,
}

impl TextOut {
    /// Writes what is owed before a visible character.
    fn flush(&mut self) {
        if self.out.is_empty() {
            self.breaks = 0;
            self.space = false;
            return;
        }
        if self.breaks > 0 {
            let have = self.out.len() - self.out.trim_end_matches('\n').len();
            // Trailing spaces before a line break go.
            let trimmed = self.out.trim_end_matches([' ', '\t']).len();
            if have == 0 {
                self.out.truncate(trimmed);
            }
            for _ in have..usize::from(self.breaks) {
                self.out.push('\n');
            }
            self.breaks = 0;
            self.space = false;
        } else if self.space {
            if !self.out.ends_with('\n') {
                self.out.push(' ');
            }
            self.space = false;
        }
    }

    /// One character of text content.
    fn text_char(&mut self, c: char) {
        match c {
            ' ' | '\t' | '\n' | '\r' | '\u{C}' if self.pre == 0 => self.space = true,
            '\n' => {
                self.flush();
                self.out.push('\n');
            }
            '\r' => {}
            // Invisible or not allowed in XML: dropped.
            '\u{0}'..='\u{8}'
            | '\u{B}'..='\u{C}'
            | '\u{E}'..='\u{1F}'
            | '\u{7F}'..='\u{9F}'
            | '\u{AD}'
            | '\u{FEFF}'
            | '\u{FFFE}'
            | '\u{FFFF}' => {}
            '\u{A0}' => {
                self.flush();
                self.out.push(' ');
            }
            c => {
                self.flush();
                self.out.push(c);
            }
        }
    }

    fn text(&mut self, s: &str) {
        for c in s.chars() {
            self.text_char(c);
        }
    }

    fn block(&mut self) {
        self.breaks = self.breaks.max(1);
    }

    fn line_break(&mut self) {
        self.breaks = (self.breaks + 1).min(2);
    }

    fn finish(self) -> String {
        let trimmed = self.out.trim();
        if trimmed.len() == self.out.len() {
            self.out
        } else {
            trimmed.to_owned()
        }
    }
}

/// An open `<a href>`: its target and where its text starts in the output.
struct Anchor {
    href: String,
    start: usize,
}

/// Converts HTML to plain text. See [`plain_text`] for the rules. One linear pass; never
/// longer than the input.
fn html_to_text(html: &str) -> String {
    let b = html.as_bytes();
    let mut w = TextOut::default();
    let mut anchor: Option<Anchor> = None;
    let mut i = 0;
    let mut text_start = 0;
    while i < b.len() {
        match b[i] {
            b'<' => {
                let next = b.get(i + 1).copied().unwrap_or(0);
                let tag_kind = match next {
                    b'!' | b'?' => 1,
                    b'/' if b.get(i + 2).is_some_and(|c| c.is_ascii_alphabetic()) => 2,
                    c if c.is_ascii_alphabetic() => 3,
                    _ => 0,
                };
                if tag_kind == 0 {
                    // A literal `<`.
                    i += 1;
                    continue;
                }
                w.text(&html[text_start..i]);
                match tag_kind {
                    1 => {
                        i = if html[i..].starts_with("<!--") {
                            find_from(b, i + 4, b"-->").map_or(b.len(), |e| e + 3)
                        } else {
                            find_byte(b, i, b'>').map_or(b.len(), |e| e + 1)
                        };
                    }
                    2 => {
                        let (name, end) = tag_name(html, i + 2);
                        i = find_byte(b, end, b'>').map_or(b.len(), |e| e + 1);
                        end_tag(&mut w, &mut anchor, name);
                    }
                    _ => {
                        let (name, end) = tag_name(html, i + 1);
                        let tag = read_attributes(html, end);
                        i = tag.end;
                        if one_of(name, DROPPED) && !tag.self_closing {
                            i = skip_raw_text(html, i, name);
                        } else {
                            start_tag(&mut w, &mut anchor, name, &tag);
                        }
                    }
                }
                text_start = i;
            }
            b'&' => {
                w.text(&html[text_start..i]);
                let (decoded, len) = decode_entity(&html[i..]);
                match decoded {
                    Decoded::Char(c) => w.text_char(c),
                    Decoded::Literal => w.text_char('&'),
                }
                i += len;
                text_start = i;
            }
            _ => i += 1,
        }
    }
    w.text(&html[text_start..]);
    w.finish()
}

fn find_byte(b: &[u8], from: usize, c: u8) -> Option<usize> {
    memchr::memchr(c, b.get(from..)?).map(|o| from + o)
}

fn find_from(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(b.get(from..)?, needle).map(|o| from + o)
}

/// The tag name starting at `from` and the index after it.
fn tag_name(html: &str, from: usize) -> (&str, usize) {
    let len = html.as_bytes()[from..]
        .iter()
        .take_while(|c| !c.is_ascii_whitespace() && !matches!(c, b'/' | b'>'))
        .count();
    (&html[from..from + len], from + len)
}

/// What follows a start tag's name.
struct Tag<'h> {
    /// `(name, raw value)` of the first few attributes.
    attributes: Vec<(&'h str, &'h str)>,
    self_closing: bool,
    /// Index after the closing `>` (or the input's end).
    end: usize,
}

impl Tag<'_> {
    /// An attribute's value with entities decoded.
    fn attribute(&self, name: &str) -> Option<String> {
        self.attributes
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| decode_entities(v))
    }
}

/// Reads attributes (HTML syntax: quoted, unquoted or bare) up to the tag's `>`.
fn read_attributes(html: &str, from: usize) -> Tag<'_> {
    const MAX_ATTRIBUTES: usize = 16;
    let b = html.as_bytes();
    let mut attributes = Vec::new();
    let mut self_closing = false;
    let mut i = from;
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            self_closing = b[i] == b'/';
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        if b[i] == b'>' {
            i += 1;
            break;
        }
        self_closing = false;
        let name_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        // A name starts with any byte (even `=`), so each round moves on.
        if i == name_start {
            i += 1;
        }
        let name = &html[name_start..i];
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let mut value = "";
        if b.get(j) == Some(&b'=') {
            j += 1;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            match b.get(j) {
                Some(&q @ (b'"' | b'\'')) => {
                    let end = find_byte(b, j + 1, q).unwrap_or(b.len());
                    value = &html[j + 1..end];
                    i = (end + 1).min(b.len());
                }
                _ => {
                    let start = j;
                    while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'>' {
                        j += 1;
                    }
                    value = &html[start..j];
                    i = j;
                }
            }
        }
        if attributes.len() < MAX_ATTRIBUTES {
            attributes.push((name, value));
        }
    }
    Tag {
        attributes,
        self_closing,
        end: i,
    }
}

/// Skips the content of a dropped element up to and including its end tag (or to the end).
fn skip_raw_text(html: &str, from: usize, name: &str) -> usize {
    let b = html.as_bytes();
    let mut i = from;
    while let Some(lt) = find_byte(b, i, b'<') {
        let candidate = lt + 2 + name.len();
        if b.get(lt + 1) == Some(&b'/')
            && html
                .get(lt + 2..candidate)
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
            && b.get(candidate)
                .is_none_or(|c| c.is_ascii_whitespace() || matches!(c, b'/' | b'>'))
        {
            return find_byte(b, candidate, b'>').map_or(b.len(), |e| e + 1);
        }
        i = lt + 1;
    }
    b.len()
}

fn start_tag(w: &mut TextOut, anchor: &mut Option<Anchor>, name: &str, tag: &Tag<'_>) {
    if name.eq_ignore_ascii_case("br") {
        w.line_break();
    } else if one_of(name, BLOCKS) {
        w.block();
        if name.eq_ignore_ascii_case("pre") && !tag.self_closing {
            w.pre += 1;
        }
    } else if name.eq_ignore_ascii_case("td") || name.eq_ignore_ascii_case("th") {
        w.space = true;
    } else if name.eq_ignore_ascii_case("img") {
        if let Some(alt) = tag.attribute("alt") {
            w.text(&alt);
        }
    } else if name.eq_ignore_ascii_case("a") && !tag.self_closing {
        *anchor = tag.attribute("href").map(|href| Anchor {
            href: href.trim().to_owned(),
            start: w.out.len(),
        });
    }
}

fn end_tag(w: &mut TextOut, anchor: &mut Option<Anchor>, name: &str) {
    if one_of(name, BLOCKS) {
        if name.eq_ignore_ascii_case("pre") {
            w.pre = w.pre.saturating_sub(1);
        }
        w.block();
    } else if name.eq_ignore_ascii_case("br") {
        // `</br>` is a `<br>` in every browser.
        w.line_break();
    } else if name.eq_ignore_ascii_case("a") {
        if let Some(a) = anchor.take() {
            let shown = w.out.get(a.start..).unwrap_or_default().trim();
            let bare = a
                .href
                .get(..7)
                .filter(|s| s.eq_ignore_ascii_case("mailto:"))
                .map_or(a.href.as_str(), |_| &a.href[7..]);
            if shows_target(&a.href) && shown != a.href && shown != bare {
                if shown.is_empty() {
                    w.text(&a.href);
                } else {
                    w.text(" (");
                    w.text(&a.href);
                    w.text(")");
                }
            }
        }
    }
}

/// Link targets worth showing next to their text (never `javascript:` and the like).
fn shows_target(href: &str) -> bool {
    let scheme = href.split_once(':').map_or("", |(s, _)| s);
    [
        "http", "https", "ftp", "mailto", "sip", "sips", "xmpp", "tel",
    ]
    .iter()
    .any(|s| scheme.eq_ignore_ascii_case(s))
}

/// Decodes every entity in an attribute value.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let (decoded, len) = decode_entity(&rest[amp..]);
        match decoded {
            Decoded::Char(c) => out.push(c),
            Decoded::Literal => out.push('&'),
        }
        rest = &rest[amp + len..];
    }
    out.push_str(rest);
    out
}

enum Decoded {
    Char(char),
    /// Not an entity: the `&` stands for itself.
    Literal,
}

/// Decodes the character reference at the start of `s` (which starts with `&`). Returns what
/// it stands for and how many bytes it used (at least 1).
fn decode_entity(s: &str) -> (Decoded, usize) {
    let b = s.as_bytes();
    if b.get(1) == Some(&b'#') {
        let hex = matches!(b.get(2), Some(b'x' | b'X'));
        let start = if hex { 3 } else { 2 };
        let digits = b[start.min(b.len())..]
            .iter()
            .take_while(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
            .count();
        if digits == 0 {
            return (Decoded::Literal, 1);
        }
        let text = &s[start..start + digits];
        let mut len = start + digits;
        if b.get(len) == Some(&b';') {
            len += 1;
        }
        let value = if digits > 8 {
            None
        } else {
            u32::from_str_radix(text, if hex { 16 } else { 10 }).ok()
        };
        return (Decoded::Char(numeric_reference(value)), len);
    }
    let name_len = b[1..]
        .iter()
        .take(32)
        .take_while(|c| c.is_ascii_alphanumeric())
        .count();
    let name = &s[1..1 + name_len];
    if b.get(1 + name_len) == Some(&b';') {
        if let Some(c) = named_entity(name) {
            return (Decoded::Char(c), name_len + 2);
        }
        return (Decoded::Literal, 1);
    }
    // HTML's legacy entities may come without `;`: the longest one that prefixes the name.
    for len in (2..=name_len.min(6)).rev() {
        let prefix = &name[..len];
        if let Some(c) = legacy_entity(prefix) {
            return (Decoded::Char(c), len + 1);
        }
    }
    (Decoded::Literal, 1)
}

/// HTML numeric character reference rules (WHATWG): 0, surrogates and values above U+10FFFF
/// become U+FFFD; 0x80–0x9F are read as windows-1252.
fn numeric_reference(value: Option<u32>) -> char {
    match value {
        Some(v @ 0x80..=0x9F) => windows_1252(u8::try_from(v).unwrap_or(0)),
        Some(0) | None => '\u{FFFD}',
        Some(v) => char::from_u32(v).unwrap_or('\u{FFFD}'),
    }
}

/// HTML 4 Latin-1 entities, U+00A0 to U+00FF in order (HTML also accepts these without `;`).
const LATIN1_ENTITIES: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf",
    "laquo", "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro",
    "para", "middot", "cedil", "sup1", "ordm", "raquo", "frac14", "frac12", "frac34", "iquest",
    "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig", "Ccedil", "Egrave", "Eacute",
    "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve", "Oacute",
    "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute",
    "THORN", "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil",
    "egrave", "eacute", "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde",
    "ograve", "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc",
    "uuml", "yacute", "thorn", "yuml",
];

/// Entities HTML accepts without `;` (the Latin-1 set and the markup characters).
fn legacy_entity(name: &str) -> Option<char> {
    match name {
        "amp" | "AMP" => Some('&'),
        "lt" | "LT" => Some('<'),
        "gt" | "GT" => Some('>'),
        "quot" | "QUOT" => Some('"'),
        "COPY" => Some('\u{A9}'),
        "REG" => Some('\u{AE}'),
        _ => LATIN1_ENTITIES
            .iter()
            .position(|n| *n == name)
            .and_then(|i| char::from_u32(0xA0 + u32::try_from(i).ok()?)),
    }
}

/// Named entities accepted with `;`: the legacy ones plus common typographic ones.
fn named_entity(name: &str) -> Option<char> {
    if let Some(c) = legacy_entity(name) {
        return Some(c);
    }
    let c = match name {
        "apos" => '\'',
        "OElig" => '\u{152}',
        "oelig" => '\u{153}',
        "Scaron" => '\u{160}',
        "scaron" => '\u{161}',
        "Yuml" => '\u{178}',
        "fnof" => '\u{192}',
        "circ" => '\u{2C6}',
        "tilde" => '\u{2DC}',
        "ensp" => '\u{2002}',
        "emsp" => '\u{2003}',
        "thinsp" => '\u{2009}',
        "zwnj" => '\u{200C}',
        "zwj" => '\u{200D}',
        "lrm" => '\u{200E}',
        "rlm" => '\u{200F}',
        "ndash" => '\u{2013}',
        "mdash" => '\u{2014}',
        "lsquo" => '\u{2018}',
        "rsquo" => '\u{2019}',
        "sbquo" => '\u{201A}',
        "ldquo" => '\u{201C}',
        "rdquo" => '\u{201D}',
        "bdquo" => '\u{201E}',
        "dagger" => '\u{2020}',
        "Dagger" => '\u{2021}',
        "bull" => '\u{2022}',
        "hellip" => '\u{2026}',
        "permil" => '\u{2030}',
        "prime" => '\u{2032}',
        "Prime" => '\u{2033}',
        "lsaquo" => '\u{2039}',
        "rsaquo" => '\u{203A}',
        "euro" => '\u{20AC}',
        "trade" => '\u{2122}',
        "larr" => '\u{2190}',
        "uarr" => '\u{2191}',
        "rarr" => '\u{2192}',
        "darr" => '\u{2193}',
        "harr" => '\u{2194}',
        "hearts" => '\u{2665}',
        _ => return None,
    };
    Some(c)
}

// ---------------------------------------------------------------------------------------------
// ms-text-format
// ---------------------------------------------------------------------------------------------

/// The first message carried in an INVITE's `ms-text-format` header
/// (`text/plain; charset=UTF-8;msgr=…;ms-body=<base64>`): the `ms-body` parameter
/// base64-decoded (padding optional) and converted by [`plain_text`] with the header value as
/// its Content-Type (so `charset` applies, and `text/html` is converted). `None` when the
/// value is empty, has no or an empty `ms-body`, or the text is empty; `Err` when the value
/// is not a media type, `ms-body` is not base64, or [`plain_text`] refuses the text. The
/// `msgr` parameter (UTF-16 formatting hints, X-MMS-IM-Format) is ignored.
pub fn ms_text_format(header_value: &str) -> Result<Option<String>, BodyError> {
    let value = header_value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let mt = media_type(value).map_err(|e| Malformed(format!("ms-text-format: {e}")))?;
    let Some(encoded) = mt.params.value("ms-body").map(str::trim) else {
        return Ok(None);
    };
    if encoded.is_empty() {
        return Ok(None);
    }
    check_size(encoded.len() / 4 * 3)?;
    let bytes = decode_base64(encoded.as_bytes())
        .map_err(|e| Malformed(format!("ms-text-format: ms-body: {e}")))?;
    let text = plain_text(value, &bytes)?;
    Ok(Some(text).filter(|t| !t.is_empty()))
}

// ---------------------------------------------------------------------------------------------
// Typing: RFC 3994 and KeyboardActivity
// ---------------------------------------------------------------------------------------------

/// The RFC 3994 `application/im-iscomposing+xml` document for a state: [`Typing::Composing`]
/// → `active` with `<contenttype>text/plain</contenttype>` and
/// `<refresh>`[`ISCOMPOSING_REFRESH_SECS`]`</refresh>`; [`Typing::Paused`] and
/// [`Typing::Active`] → `idle`.
pub fn iscomposing_body(state: Typing) -> Vec<u8> {
    let mut doc = String::with_capacity(256);
    doc.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<isComposing xmlns=\"");
    doc.push_str(NS_ISCOMPOSING);
    doc.push_str("\">\n");
    match state {
        Typing::Composing => {
            doc.push_str("  <state>active</state>\n  <contenttype>text/plain</contenttype>\n");
            doc.push_str(&format!(
                "  <refresh>{ISCOMPOSING_REFRESH_SECS}</refresh>\n"
            ));
        }
        Typing::Paused | Typing::Active => doc.push_str("  <state>idle</state>\n"),
    }
    doc.push_str("</isComposing>\n");
    doc.into_bytes()
}

/// Reads an RFC 3994 document: `active` → [`Typing::Composing`], `idle` → [`Typing::Paused`]
/// (see the module documentation). The root must be `isComposing` in the RFC 3994 namespace
/// (or, liberally, in no namespace or in `urn:ietf:params:xml:ns:im-composing`, the RFC's own
/// `schemaLocation` misspelling); its `state` child decides, other children are ignored.
/// Bounded, DOCTYPE and entities refused.
pub fn parse_iscomposing(body: &[u8]) -> Result<Typing, BodyError> {
    let elements = read_small_xml(body, "isComposing document")?;
    let root = &elements[0];
    let root_ns_ok = match root.namespace.as_deref() {
        None | Some(NS_ISCOMPOSING) => true,
        Some(ns) => ns == "urn:ietf:params:xml:ns:im-composing",
    };
    if root.local != "isComposing" || !root_ns_ok {
        return Err(Malformed(format!(
            "isComposing document: root element is \"{}\"{}, expected \"isComposing\" in {NS_ISCOMPOSING}",
            root.local,
            root.namespace
                .as_deref()
                .map_or_else(String::new, |ns| format!(" in {ns}"))
        )));
    }
    let state = elements
        .iter()
        .find(|e| e.depth == 2 && e.local == "state" && e.namespace == root.namespace)
        .ok_or_else(|| Malformed("isComposing document has no <state>".to_owned()))?;
    let value = state.text.trim_matches(is_xml_space);
    if value.eq_ignore_ascii_case("active") {
        Ok(Typing::Composing)
    } else if value.eq_ignore_ascii_case("idle") {
        Ok(Typing::Paused)
    } else {
        Err(Malformed(format!(
            "isComposing document: <state> is \"{}\", expected active or idle",
            value.chars().take(40).collect::<String>().escape_debug()
        )))
    }
}

/// The Microsoft INFO body (Content-Type [`KEYBOARD_ACTIVITY_TYPE`]), in the form
/// pidgin-sipe sends: [`Typing::Composing`] → `type`, [`Typing::Paused`] and
/// [`Typing::Active`] → `idle`.
pub fn keyboard_activity_body(state: Typing) -> Vec<u8> {
    let status = match state {
        Typing::Composing => "type",
        Typing::Paused | Typing::Active => "idle",
    };
    format!(
        "<?xml version=\"1.0\"?><KeyboardActivity><status status=\"{status}\" /></KeyboardActivity>"
    )
    .into_bytes()
}

/// Reads a `KeyboardActivity` INFO body: the `status` attribute of the root's `status` child,
/// `type` → [`Typing::Composing`], `idle` → [`Typing::Paused`] (ASCII case ignored); anything
/// else is [`BodyError::Malformed`]. Namespaces are not checked (Microsoft uses none).
/// Bounded, DOCTYPE and entities refused.
pub fn parse_keyboard_activity(body: &[u8]) -> Result<Typing, BodyError> {
    let elements = read_small_xml(body, "KeyboardActivity document")?;
    let root = &elements[0];
    if root.local != "KeyboardActivity" {
        return Err(Malformed(format!(
            "KeyboardActivity document: root element is \"{}\", expected \"KeyboardActivity\"",
            root.local
        )));
    }
    let status = elements
        .iter()
        .filter(|e| e.depth == 2 && e.local == "status")
        .find_map(|e| {
            e.attributes
                .iter()
                .find(|(n, _)| n == "status")
                .map(|(_, v)| v.as_str())
        })
        .ok_or_else(|| {
            Malformed("KeyboardActivity document has no <status status=\"…\"/>".to_owned())
        })?;
    let value = status.trim_matches(is_xml_space);
    if value.eq_ignore_ascii_case("type") {
        Ok(Typing::Composing)
    } else if value.eq_ignore_ascii_case("idle") {
        Ok(Typing::Paused)
    } else {
        Err(Malformed(format!(
            "KeyboardActivity document: status is \"{}\", expected type or idle",
            value.chars().take(40).collect::<String>().escape_debug()
        )))
    }
}

/// Largest typing document accepted.
const MAX_XML_BYTES: usize = 8 * 1024;
/// Deepest element nesting accepted in a typing document (the root is depth 1).
const MAX_XML_DEPTH: usize = 8;
/// Most elements read from a typing document.
const MAX_XML_ELEMENTS: usize = 64;
/// The bounds typing documents are read under.
const TYPING_LIMITS: XmlLimits = XmlLimits {
    max_bytes: MAX_XML_BYTES,
    max_depth: MAX_XML_DEPTH,
    max_elements: MAX_XML_ELEMENTS,
};

/// One element of a small document, in document order.
struct XmlElement {
    depth: usize,
    namespace: Option<String>,
    local: String,
    /// Attributes other than namespace declarations, by qualified name.
    attributes: Vec<(String, String)>,
    /// The element's own character data (not its children's).
    text: String,
}

/// A typing document's refusal, in the words [`crate::core::xml::XmlReader`] gives, prefixed
/// with what the document is.
fn typing_error(what: &str, e: XmlError) -> BodyError {
    match e {
        XmlError::TooLarge { size, max } => Malformed(format!(
            "{what} is {size} bytes, larger than the limit of {max} bytes"
        )),
        XmlError::NotUtf8 { offset } => BadCharset(format!(
            "{what} is not valid UTF-8 (invalid byte at offset {offset})"
        )),
        XmlError::Dtd => Malformed(format!(
            "{what} contains a DOCTYPE declaration: DTDs and entity declarations are refused"
        )),
        XmlError::TooManyElements { max } => {
            Malformed(format!("{what} has more than {max} elements"))
        }
        XmlError::NoRoot => Malformed(format!("{what} has no root element")),
        XmlError::Truncated => Malformed(format!("{what} ends before its root element is closed")),
        XmlError::TooDeep { .. }
        | XmlError::UnknownEntity(_)
        | XmlError::InvalidCharRef { .. }
        | XmlError::ForbiddenChar { .. }
        | XmlError::Syntax { .. } => Malformed(format!("{what}: {e}")),
    }
}

/// Reads a small XML document into a flat element list (at least the root) with the bridge's
/// hardened reader ([`crate::core::xml`]: no DOCTYPE, only predefined entities and character
/// references), bounded in size, depth and element count.
fn read_small_xml(body: &[u8], what: &str) -> Result<Vec<XmlElement>, BodyError> {
    let mut reader = XmlReader::new(body, &TYPING_LIMITS).map_err(|e| typing_error(what, e))?;
    let mut scopes = Namespaces::default();
    let mut elements: Vec<XmlElement> = Vec::new();
    // Indices into `elements` of the open elements.
    let mut open: Vec<usize> = Vec::new();
    while let Some(event) = reader.next_event().map_err(|e| typing_error(what, e))? {
        match event {
            XmlEvent::Start(ref e) | XmlEvent::Empty(ref e) => {
                let position = reader.position();
                let depth = open.len() + 1;
                scopes
                    .declare(&reader, e, depth)
                    .map_err(|e| typing_error(what, e))?;
                let qname = e.name();
                let (prefix, local) = split_qname(qname.as_ref());
                let namespace = match scopes.resolve(prefix) {
                    Some(ns) => Some(ns.to_owned()),
                    None if prefix.is_empty() => None,
                    None => {
                        let message = format!("namespace prefix \"{prefix}\" is not declared");
                        return Err(typing_error(what, XmlError::Syntax { position, message }));
                    }
                };
                let mut attributes = Vec::new();
                for attr in e.attributes() {
                    let attr = attr.map_err(|err| {
                        let message = err.to_string();
                        typing_error(what, XmlError::Syntax { position, message })
                    })?;
                    let key = attr.key.as_ref();
                    if key == "xmlns" || key.starts_with("xmlns:") {
                        continue;
                    }
                    let value =
                        xml::attribute_value(&attr, position).map_err(|e| typing_error(what, e))?;
                    attributes.push((key.to_owned(), value.into_owned()));
                }
                elements.push(XmlElement {
                    depth,
                    namespace,
                    local: local.to_owned(),
                    attributes,
                    text: String::new(),
                });
                if matches!(event, XmlEvent::Start(_)) {
                    open.push(elements.len() - 1);
                } else {
                    scopes.pop_to(depth - 1);
                }
            }
            XmlEvent::End => {
                open.pop();
                scopes.pop_to(open.len());
            }
            XmlEvent::Text(_) | XmlEvent::CData(_) | XmlEvent::Char(_) => {
                if let Some(&top) = open.last() {
                    event.push_text(&mut elements[top].text);
                }
            }
        }
    }
    Ok(elements)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn text(ct: &str, body: &str) -> String {
        plain_text(ct, body.as_bytes()).unwrap()
    }

    fn html(body: &str) -> String {
        text("text/html; charset=UTF-8", body)
    }

    // --- text/plain and charsets ------------------------------------------------------------

    #[test]
    fn lync_plain_text_passes_through_exactly() {
        let ct = "text/plain;charset=UTF-8;msgr=WAAtAE0ATQBTAC0ASQBNAC0ARgBvAHIAbQBhAHQAOgAgAEYATgA9AFMAZQBnAG8AZQAlADIAMABVAEkA";
        let body = "Are we still on for lunch? Ünïcode ok ✓";
        assert_eq!(text(ct, body), body);
        // No trimming, no line-end change.
        assert_eq!(text("text/plain", "  two\r\nlines \n"), "  two\r\nlines \n");
        assert_eq!(text("TEXT/PLAIN; charset=\"utf-8\"", ""), "");
    }

    #[test]
    fn non_ascii_and_markup_characters_survive() {
        for s in [
            "café",
            "中文消息",
            "emoji 😀👍🏽 ok",
            "a < b & c > d \"q\" 'a'",
            "&amp; <b>",
        ] {
            assert_eq!(text("text/plain; charset=UTF-8", s), s);
            assert_eq!(text("text/plain", s), s, "charset defaults to UTF-8");
        }
    }

    #[test]
    fn legacy_charsets_are_converted() {
        let latin1 = [b'c', b'a', b'f', 0xE9, b' ', 0xA0, 0xFF];
        assert_eq!(
            plain_text("text/plain; charset=ISO-8859-1", &latin1).unwrap(),
            "café \u{A0}ÿ"
        );
        // windows-1252 typography, also under the iso-8859-1 label (WHATWG).
        let cp1252 = [
            0x93, b'h', b'i', 0x94, b' ', 0x80, b'5', b' ', 0x96, b' ', 0x85,
        ];
        for label in ["windows-1252", "iso-8859-1", "latin1", "cp1252"] {
            assert_eq!(
                plain_text(&format!("text/plain; charset={label}"), &cp1252).unwrap(),
                "\u{201C}hi\u{201D} €5 – …",
                "{label}"
            );
        }
        assert_eq!(
            plain_text("text/plain; charset=windows-1252", &[0x81, 0x8D]).unwrap(),
            "\u{81}\u{8D}"
        );
        assert_eq!(text("text/plain; charset=us-ascii", "hello"), "hello");
        // US-ASCII is read as UTF-8 (a superset).
        assert_eq!(text("text/plain; charset=US-ASCII", "héllo"), "héllo");
    }

    #[test]
    fn bad_charsets_are_refused() {
        let err = plain_text("text/plain; charset=UTF-16", b"h\0i\0").unwrap_err();
        assert!(
            matches!(&err, BadCharset(m) if m.contains("UTF-16")),
            "{err}"
        );
        let err = plain_text("text/plain; charset=utf-8", b"ok \xC3\x28").unwrap_err();
        assert_eq!(
            err,
            BadCharset("body is not valid utf-8 (invalid byte at offset 3)".to_owned())
        );
        assert!(matches!(
            plain_text("text/plain; charset=us-ascii", b"\xFF"),
            Err(BadCharset(_))
        ));
        assert!(matches!(
            plain_text("text/html; charset=koi8-r", b"<b>x</b>"),
            Err(BadCharset(_))
        ));
    }

    #[test]
    fn other_types_are_unsupported_or_malformed() {
        assert_eq!(
            plain_text("text/rtf", br"{\rtf1\ansi Hello}"),
            Err(UnsupportedType("text/rtf".to_owned()))
        );
        assert_eq!(
            plain_text("Application/MS-IMDN+XML", b"<x/>"),
            Err(UnsupportedType("application/ms-imdn+xml".to_owned()))
        );
        assert_eq!(
            plain_text("multipart/mixed; boundary=b", b"--b\r\n\r\nx\r\n--b--"),
            Err(UnsupportedType("multipart/mixed".to_owned()))
        );
        assert!(matches!(plain_text("", b"hi"), Err(Malformed(_))));
        assert!(matches!(plain_text("textplain", b"hi"), Err(Malformed(_))));
        let err = plain_text("text/rtf", b"").unwrap_err();
        assert!(
            err.to_string().contains("text/rtf is not supported"),
            "{err}"
        );
        assert!(err.to_string().contains(ACCEPT), "{err}");
    }

    #[test]
    fn size_is_bounded() {
        let big = vec![b'a'; MAX_BODY_BYTES + 1];
        assert_eq!(
            plain_text("text/plain", &big),
            Err(Malformed(format!(
                "body is {} bytes, larger than the limit of {MAX_BODY_BYTES} bytes",
                MAX_BODY_BYTES + 1
            )))
        );
        assert_eq!(
            plain_text("text/plain", &big[..MAX_BODY_BYTES])
                .unwrap()
                .len(),
            MAX_BODY_BYTES
        );
        let mb_html = "<div><b>x</b>&amp;".repeat(1 << 16);
        assert!(mb_html.len() > 1 << 20);
        assert!(matches!(
            plain_text("text/html", mb_html.as_bytes()),
            Err(Malformed(_))
        ));
        // windows-1252 at most triples the size.
        let euros = vec![0x80; MAX_BODY_BYTES];
        assert_eq!(
            plain_text("text/plain; charset=windows-1252", &euros)
                .unwrap()
                .len(),
            3 * MAX_BODY_BYTES
        );
    }

    // --- text/html ------------------------------------------------------------------------------

    #[test]
    fn lync_html_becomes_text() {
        assert_eq!(
            html("<span style=\"font-family:Segoe UI;color:#000000;\">Hello <b>world</b></span>"),
            "Hello world"
        );
        assert_eq!(
            html(
                "<DIV style=\"font-family: Segoe UI; color: #000000; direction: ltr;\">line 1</DIV><DIV>line 2</DIV>"
            ),
            "line 1\nline 2"
        );
        // Communicator's empty paragraph: one empty line.
        assert_eq!(html("<div>a</div><div><br></div><div>b</div>"), "a\n\nb");
        assert_eq!(
            html(
                "<html><head><title>IM</title><meta charset=\"utf-8\"><style>p{}</style></head><body><p>Hi</p></body></html>"
            ),
            "Hi"
        );
    }

    #[test]
    fn html_line_breaks() {
        assert_eq!(html("a<br>b<br/>c<BR />d"), "a\nb\nc\nd");
        assert_eq!(html("a<br><br>b"), "a\n\nb");
        assert_eq!(
            html("a<br><br><br><br>b"),
            "a\n\nb",
            "one empty line at most"
        );
        assert_eq!(html("<p>one</p><p>two</p>"), "one\ntwo");
        assert_eq!(html("<ul><li>x</li><li>y</li></ul>after"), "x\ny\nafter");
        assert_eq!(html("<h1>T</h1>text<hr>more"), "T\ntext\nmore");
        assert_eq!(html("<br><p>lead</p><br>"), "lead", "trimmed");
        assert_eq!(
            html("a </div> b"),
            "a\nb",
            "no trailing space before a break"
        );
        assert_eq!(
            html("<table><tr><td>1</td><td>2</td></tr><tr><td>3</td></tr></table>"),
            "1 2\n3"
        );
        assert_eq!(html("x</br>y"), "x\ny");
    }

    #[test]
    fn html_white_space() {
        assert_eq!(html("  lots   of\n\n  space  "), "lots of space");
        assert_eq!(html("a<b> b </b>c"), "a b c");
        assert_eq!(html("<pre>a  b\n  c</pre>d"), "a  b\n  c\nd");
        assert_eq!(html("a&nbsp;&nbsp;b"), "a  b", "&nbsp; is kept");
        assert_eq!(html("&nbsp;<br>x&nbsp;"), "x", "trimmed at both ends");
        assert_eq!(html("a&nbsp;<br>b"), "a\nb");
        assert_eq!(html("tab\there"), "tab here");
    }

    #[test]
    fn html_dropped_content() {
        assert_eq!(
            html("<style>p { color: red }</style>hi<script>alert('<b>x</b>')</script> there"),
            "hi there"
        );
        assert_eq!(html("<SCRIPT type=x>a</script >b"), "b");
        assert_eq!(html("a<script>never closed <b>x</b>"), "a");
        assert_eq!(html("a<script>x</scriptx>y</script>b"), "ab");
        assert_eq!(html("a<!-- <b>x</b> -->b"), "ab");
        assert_eq!(html("a<!-- never closed"), "a");
        assert_eq!(html("<!DOCTYPE html><?xml version=\"1.0\"?>x"), "x");
        assert_eq!(html("<template><p>t</p></template>ok"), "ok");
    }

    #[test]
    fn html_entities() {
        assert_eq!(
            html("&lt;b&gt; &amp; &quot;q&quot; &apos;a&apos;"),
            "<b> & \"q\" 'a'"
        );
        assert_eq!(html("&eacute;&#233;&#xE9;&#XE9;"), "éééé");
        assert_eq!(html("&copy 2024 &amp co"), "© 2024 & co", "legacy, no ;");
        assert_eq!(html("&copy2024"), "©2024");
        assert_eq!(html("&hellip;&mdash;&euro;&trade;&rsquo;"), "…—€™’");
        assert_eq!(html("&#128512; &#x1F600;"), "😀 😀");
        assert_eq!(
            html("&#150; &#x80;"),
            "– €",
            "0x80-0x9F read as windows-1252"
        );
        assert_eq!(
            html("&#0;|&#xD800;|&#x110000;|&#99999999999;"),
            "\u{FFFD}|\u{FFFD}|\u{FFFD}|\u{FFFD}"
        );
        assert_eq!(
            html("&bogus; &#; &#x; & alone &"),
            "&bogus; &#; &#x; & alone &"
        );
        assert_eq!(html("AT&T"), "AT&T");
        assert_eq!(html("soft&shy;hyphen"), "softhyphen");
        assert_eq!(html("a&#1;b&#x7F;c"), "abc", "controls are dropped");
        assert_eq!(
            html("&#10;x&#32;&#32;y"),
            "x y",
            "references to white space collapse"
        );
        assert_eq!(html("&AElig;&yuml;&times;&divide;&nbsp;&iexcl;"), "Æÿ×÷ ¡");
    }

    #[test]
    fn latin1_entity_table_is_in_code_point_order() {
        assert_eq!(legacy_entity("nbsp"), Some('\u{A0}'));
        assert_eq!(legacy_entity("sect"), Some('§'));
        assert_eq!(legacy_entity("frac12"), Some('½'));
        assert_eq!(legacy_entity("Agrave"), Some('À'));
        assert_eq!(legacy_entity("times"), Some('×'));
        assert_eq!(legacy_entity("szlig"), Some('ß'));
        assert_eq!(legacy_entity("eacute"), Some('é'));
        assert_eq!(legacy_entity("divide"), Some('÷'));
        assert_eq!(legacy_entity("yuml"), Some('ÿ'));
        assert_eq!(named_entity("Yuml"), Some('Ÿ'));
        assert_eq!(legacy_entity("Yuml"), None);
    }

    #[test]
    fn html_links_and_images() {
        assert_eq!(
            html("see <a href=\"https://example.com/x?a=1&amp;b=2\">here</a>."),
            "see here (https://example.com/x?a=1&b=2)."
        );
        assert_eq!(
            html("<a href='https://contoso.com'>https://contoso.com</a>"),
            "https://contoso.com"
        );
        assert_eq!(
            html("<a href=\"mailto:joe@contoso.com\">joe@contoso.com</a>"),
            "joe@contoso.com"
        );
        assert_eq!(html("<a href=\"https://e.test\"></a>"), "https://e.test");
        assert_eq!(html("<a href=\"javascript:alert(1)\">click</a>"), "click");
        assert_eq!(html("<a name=x>anchor</a>"), "anchor");
        assert_eq!(
            html("smile <img src=\"e.png\" alt=\":-)\"> ok"),
            "smile :-) ok"
        );
        assert_eq!(html("<span title=\"a>b\" data-x='<p>'>x</span>"), "x");
        assert_eq!(
            html("<a href=\"https://e.test"),
            "",
            "unterminated attribute"
        );
    }

    #[test]
    fn html_literal_angle_brackets() {
        assert_eq!(html("1 < 2 and 3 > 2"), "1 < 2 and 3 > 2");
        assert_eq!(html("a <3 b"), "a <3 b");
        assert_eq!(html("a </ b"), "a </ b");
        assert_eq!(html("end <"), "end <");
    }

    #[test]
    fn html_non_ascii() {
        assert_eq!(html("<b>中文</b> café 😀"), "中文 café 😀");
        // `<` before a non-ASCII letter is text (HTML tokenizer rule).
        assert_eq!(html("<中文>x</中文>"), "<中文>x</中文>");
        assert_eq!(
            plain_text("text/html; charset=windows-1252", b"<i>caf\xE9</i>").unwrap(),
            "café"
        );
    }

    #[test]
    fn hostile_html_is_linear_and_bounded() {
        let deep = "<div>".repeat(12_000);
        assert_eq!(html(&deep), "");
        let deep = format!("{}x{}", "<b><i>".repeat(8000), "</i></b>".repeat(2000));
        assert_eq!(html(&deep), "x");
        let tags = "<a ".repeat(20_000);
        assert_eq!(html(&tags), "");
        let comments = "<!--".repeat(15_000);
        assert_eq!(html(&comments), "");
        let amps = "&#x".repeat(20_000);
        assert_eq!(html(&amps).len(), 3 * 20_000);
        let scripts = "<script>".repeat(7000);
        assert_eq!(html(&scripts), "");
        let html_in = "<p>a&amp;b</p>".repeat(4000);
        let out = html(&html_in);
        assert!(out.len() <= html_in.len());
    }

    // --- multipart ----------------------------------------------------------------------------

    const LYNC_ALTERNATIVE: &str = "This is a multi-part message in MIME format.\r\n\
        ------=_NextPart_000_0011_01D2E9A2.5F4C1B30\r\n\
        Content-Type: text/plain; charset=UTF-8;msgr=WAAtAE0ATQBTAC0ASQBNAC0ARgBvAHIAbQBhAHQAOgAgAEYATgA9AFMAZQBnAG8AZQAlADIAMABVAEkA\r\n\
        \r\n\
        Lunch at 12? Café ☕ <ok> & fine\r\n\
        ------=_NextPart_000_0011_01D2E9A2.5F4C1B30\r\n\
        Content-Type: text/html; charset=UTF-8\r\n\
        \r\n\
        <DIV style=\"font-family:Segoe UI;\">Lunch at 12? Caf&eacute; &#9749; &lt;ok&gt; &amp; <b>fine</b></DIV>\r\n\
        ------=_NextPart_000_0011_01D2E9A2.5F4C1B30--\r\n\
        epilogue";

    fn alternative(body: &str) -> Result<String, BodyError> {
        plain_text(
            "multipart/alternative;boundary=\"----=_NextPart_000_0011_01D2E9A2.5F4C1B30\"",
            body.as_bytes(),
        )
    }

    #[test]
    fn lync_multipart_alternative_prefers_text_plain() {
        assert_eq!(
            alternative(LYNC_ALTERNATIVE).unwrap(),
            "Lunch at 12? Café ☕ <ok> & fine"
        );
        // Without the text/plain part, the HTML gives the same text.
        let html_only = LYNC_ALTERNATIVE.replacen("text/plain", "text/rtf", 1);
        assert_eq!(
            alternative(&html_only).unwrap(),
            "Lunch at 12? Café ☕ <ok> & fine"
        );
        // Order does not matter: text/plain wins wherever it is.
        let body = "--b\r\nContent-Type: text/html\r\n\r\n<b>html</b>\r\n--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n--b--";
        assert_eq!(
            plain_text("multipart/alternative; boundary=b", body.as_bytes()).unwrap(),
            "plain"
        );
    }

    #[test]
    fn multipart_variants() {
        let ct = "multipart/alternative; boundary=xyz";
        // Bare LF line ends, transport padding after the delimiter, part without headers
        // (RFC 2045 §5.2 default text/plain; charset=us-ascii).
        assert_eq!(text(ct, "--xyz  \n\nhello\n--xyz--"), "hello");
        // Content that contains the boundary string mid-line or as a longer line.
        assert_eq!(
            text(ct, "--xyz\r\n\r\na --xyz b\r\n--xyzzy\r\n--xyz--\r\n"),
            "a --xyz b\r\n--xyzzy"
        );
        // Folded part header, case-insensitive names.
        assert_eq!(
            text(
                ct,
                "--xyz\r\ncontent-type: text/plain;\r\n charset=ISO-8859-1\r\n\r\nplain\r\n--xyz--"
            ),
            "plain"
        );
        // base64 and quoted-printable parts.
        assert_eq!(
            text(
                ct,
                "--xyz\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\nQ2Fmw6kg\r\n5Lit5paH\r\n--xyz--"
            ),
            "Café 中文"
        );
        assert_eq!(
            text(
                ct,
                "--xyz\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\nCaf=C3=A9 =3D soft=\r\nbreak =ZZ\r\n--xyz--"
            ),
            "Café = softbreak =ZZ"
        );
        // Nested multipart/related inside multipart/alternative.
        assert_eq!(
            text(
                ct,
                "--xyz\r\nContent-Type: multipart/related; boundary=\"in ner\"\r\n\r\n--in ner\r\nContent-Type: text/html\r\n\r\n<p>nested</p>\r\n--in ner\r\nContent-Type: image/gif\r\n\r\nGIF89a\r\n--in ner--\r\n--xyz--"
            ),
            "nested"
        );
        // An empty part.
        assert_eq!(text(ct, "--xyz\r\n\r\n\r\n--xyz--"), "");
        // A text/plain part in a bad charset falls back to the HTML part.
        assert_eq!(
            text(
                ct,
                "--xyz\r\nContent-Type: text/plain; charset=utf-16\r\n\r\nx\r\n--xyz\r\nContent-Type: text/html\r\n\r\n<i>html</i>\r\n--xyz--"
            ),
            "html"
        );
    }

    #[test]
    fn multipart_without_readable_part_is_unsupported() {
        let body = "--b\r\nContent-Type: text/rtf\r\n\r\n{\\rtf1 x}\r\n--b\r\nContent-Type: image/gif\r\n\r\nGIF\r\n--b--";
        assert_eq!(
            plain_text("multipart/alternative; boundary=b", body.as_bytes()),
            Err(UnsupportedType(
                "multipart/alternative without a text/plain or text/html part".to_owned()
            ))
        );
    }

    #[test]
    fn malformed_multipart_is_refused() {
        let malformed = |ct: &str, body: &str| match plain_text(ct, body.as_bytes()) {
            Err(Malformed(m)) => m,
            other => panic!("{ct} {body:?}: {other:?}"),
        };
        let ct = "multipart/alternative; boundary=b";
        assert_eq!(
            malformed("multipart/alternative", "--b\r\n\r\nx\r\n--b--"),
            "multipart/alternative without a boundary parameter"
        );
        assert!(malformed("multipart/alternative; boundary=\"\"", "x").contains("boundary"));
        assert!(
            malformed(
                &format!("multipart/alternative; boundary={}", "a".repeat(71)),
                "x"
            )
            .contains("1-70")
        );
        assert!(malformed("multipart/alternative; boundary=\"a b \"", "x").contains("1-70"));
        assert_eq!(
            malformed(ct, "--b\r\nContent-Type: text/plain\r\n\r\nunterminated"),
            "multipart/alternative: the body ends without the close delimiter \"--b--\""
        );
        assert_eq!(
            malformed(ct, "no delimiter at all"),
            "multipart/alternative: no boundary delimiter \"--b\" in the body"
        );
        assert_eq!(
            malformed(ct, "--b--"),
            "multipart/alternative: no body part before the close delimiter"
        );
        assert!(malformed(ct, "--b\r\nnot a header\r\n\r\nx\r\n--b--").contains("no colon"));
        assert!(malformed(ct, "--b\r\n continuation\r\n\r\nx\r\n--b--").contains("continuation"));
        assert!(malformed(ct, "--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nx\r\n--b--").contains("x-uuencode"));
        assert!(malformed(ct, "--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!\r\n--b--").contains("base64"));
        assert!(
            malformed(ct, "--b\r\nContent-Type: nonsense\r\n\r\nx\r\n--b--").contains("nonsense")
        );
        let many = format!("{}--b--", "--b\r\n\r\nx\r\n".repeat(MAX_PARTS + 1));
        assert!(malformed(ct, &many).contains("more than 32 body parts"));
        let headers = format!(
            "--b\r\n{}\r\nx\r\n--b--",
            "X-A: 1\r\n".repeat(MAX_PART_HEADERS + 1)
        );
        assert!(malformed(ct, &headers).contains("header lines"));
        // Nesting: four levels of multipart.
        let mut body = "--b0\r\n\r\nx\r\n--b0--".to_owned();
        for level in 1..=MAX_MULTIPART_DEPTH {
            body = format!(
                "--b{level}\r\nContent-Type: multipart/related; boundary=b{}\r\n\r\n{body}\r\n--b{level}--",
                level - 1
            );
        }
        let top = format!("multipart/alternative; boundary=b{MAX_MULTIPART_DEPTH}");
        assert!(malformed(&top, &body).contains("nested deeper"));
        // One level less is fine.
        let inner = body
            .split_once("\r\n\r\n")
            .map(|(_, rest)| rest.rsplit_once("\r\n--b").map_or(rest, |(b, _)| b))
            .unwrap();
        assert_eq!(
            plain_text(
                &format!(
                    "multipart/alternative; boundary=b{}",
                    MAX_MULTIPART_DEPTH - 1
                ),
                inner.as_bytes()
            )
            .unwrap(),
            "x"
        );
    }

    #[test]
    fn quoted_printable_edge_cases() {
        assert_eq!(decode_quoted_printable(b"a=\nb=4"), b"ab=4");
        assert_eq!(decode_quoted_printable(b"="), b"=");
        assert_eq!(decode_quoted_printable(b"=e9=E9"), [0xE9, 0xE9]);
    }

    // --- ms-text-format -------------------------------------------------------------------------

    #[test]
    fn ms_text_format_first_message() {
        // The form in tests/golden/sip/lcs_invite_im.sip.
        assert_eq!(
            ms_text_format(
                "text/plain; charset=UTF-8;msgr=WAAtAE0ATQBTAC0ASQBNAC0ARgBvAHIAbQBhAHQAOgAgAEYATgA9AFMAZQBnAG8AZQAlADIAMABVAEkAOwAgAEUARgA9ADsAIABDAE8APQAwADsAIABDAFMAPQAwADsAIABQAEYAPQAwAA0ACgANAAoADQA;ms-body=SGVsbG8gZnJvbSBMeW5jIQ=="
            ),
            Ok(Some("Hello from Lync!".to_owned()))
        );
        // pidgin-sipe's comment form, a space before ms-body, padding dropped.
        assert_eq!(
            ms_text_format("text/plain; charset=UTF-8;msgr=WAAtAE0...DIADQAKAA0ACgA;ms-body=SGk="),
            Ok(Some("Hi".to_owned()))
        );
        assert_eq!(
            ms_text_format("text/plain; charset=UTF-8; ms-body=SGk"),
            Ok(Some("Hi".to_owned()))
        );
        let b64 = LIBERAL_BASE64.encode("Café 中文 😀 <&>");
        assert_eq!(
            ms_text_format(&format!("text/plain; charset=UTF-8;ms-body={b64}")),
            Ok(Some("Café 中文 😀 <&>".to_owned()))
        );
        let b64 = LIBERAL_BASE64.encode("<b>bold</b> &amp; <i>more</i>");
        assert_eq!(
            ms_text_format(&format!("text/html; charset=UTF-8;ms-body={b64}")),
            Ok(Some("bold & more".to_owned()))
        );
        let b64 = LIBERAL_BASE64.encode([b'c', b'a', b'f', 0xE9]);
        assert_eq!(
            ms_text_format(&format!("text/plain; charset=iso-8859-1;ms-body={b64}")),
            Ok(Some("café".to_owned()))
        );
    }

    #[test]
    fn ms_text_format_absent_empty_or_bad() {
        assert_eq!(ms_text_format(""), Ok(None));
        assert_eq!(ms_text_format("   "), Ok(None));
        assert_eq!(
            ms_text_format("text/plain; charset=UTF-8;msgr=WAAt"),
            Ok(None)
        );
        assert_eq!(
            ms_text_format("text/plain; charset=UTF-8;ms-body="),
            Ok(None)
        );
        assert_eq!(
            ms_text_format("text/html;ms-body=PGJyPg=="),
            Ok(None),
            "<br> is empty"
        );
        assert!(matches!(
            ms_text_format("text/plain;ms-body=!!notbase64"),
            Err(Malformed(m)) if m.starts_with("ms-text-format: ms-body: invalid base64")
        ));
        assert!(matches!(
            ms_text_format("garbage;ms-body=SGk="),
            Err(Malformed(_))
        ));
        assert_eq!(
            ms_text_format("text/rtf; charset=UTF-8;ms-body=e1xydGYxfQ=="),
            Err(UnsupportedType("text/rtf".to_owned()))
        );
        assert!(matches!(
            ms_text_format("text/plain; charset=utf-16;ms-body=SGk="),
            Err(BadCharset(_))
        ));
        let huge = format!(
            "text/plain;ms-body={}",
            "QUFB".repeat(MAX_BODY_BYTES / 3 + 2)
        );
        assert!(matches!(ms_text_format(&huge), Err(Malformed(_))));
    }

    // --- RFC 3994 -------------------------------------------------------------------------------

    #[test]
    fn iscomposing_documents_we_send() {
        assert_eq!(
            String::from_utf8(iscomposing_body(Typing::Composing)).unwrap(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <isComposing xmlns=\"urn:ietf:params:xml:ns:im-iscomposing\">\n\
             \x20 <state>active</state>\n\
             \x20 <contenttype>text/plain</contenttype>\n\
             \x20 <refresh>90</refresh>\n\
             </isComposing>\n"
        );
        let idle = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <isComposing xmlns=\"urn:ietf:params:xml:ns:im-iscomposing\">\n\
             \x20 <state>idle</state>\n\
             </isComposing>\n";
        assert_eq!(
            String::from_utf8(iscomposing_body(Typing::Paused)).unwrap(),
            idle
        );
        assert_eq!(
            String::from_utf8(iscomposing_body(Typing::Active)).unwrap(),
            idle
        );
        assert_eq!(
            parse_iscomposing(&iscomposing_body(Typing::Composing)),
            Ok(Typing::Composing)
        );
        assert_eq!(
            parse_iscomposing(&iscomposing_body(Typing::Paused)),
            Ok(Typing::Paused)
        );
        assert_eq!(
            parse_iscomposing(&iscomposing_body(Typing::Active)),
            Ok(Typing::Paused)
        );
    }

    #[test]
    fn iscomposing_documents_we_receive() {
        // The shape of RFC 3994's examples.
        let rfc = br#"<?xml version="1.0" encoding="UTF-8"?>
            <isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"
              xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
              xsi:schemaLocation="urn:ietf:params:xml:ns:im-composing iscomposing.xsd">
              <state>active</state>
              <contenttype>text/plain</contenttype>
              <refresh>60</refresh>
            </isComposing>"#;
        assert_eq!(parse_iscomposing(rfc), Ok(Typing::Composing));
        let idle = br#"<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"><state>idle</state><lastactive>2003-01-27T10:43:00Z</lastactive><contenttype>audio</contenttype></isComposing>"#;
        assert_eq!(parse_iscomposing(idle), Ok(Typing::Paused));
        // Prefixes are resolved; case and white space of the value are forgiven.
        let prefixed = b"\xEF\xBB\xBF<ic:isComposing xmlns:ic='urn:ietf:params:xml:ns:im-iscomposing'><ic:state> IDLE </ic:state></ic:isComposing>";
        assert_eq!(parse_iscomposing(prefixed), Ok(Typing::Paused));
        let no_ns = b"<isComposing><state>&#97;ctive</state></isComposing>";
        assert_eq!(parse_iscomposing(no_ns), Ok(Typing::Composing));
        let typo_ns = b"<isComposing xmlns='urn:ietf:params:xml:ns:im-composing'><state><![CDATA[active]]></state></isComposing>";
        assert_eq!(parse_iscomposing(typo_ns), Ok(Typing::Composing));
        // Unknown children ignored; a nested <state> does not count.
        let nested = b"<isComposing xmlns='urn:ietf:params:xml:ns:im-iscomposing'><x><state>active</state></x><state>idle</state><y/></isComposing>";
        assert_eq!(parse_iscomposing(nested), Ok(Typing::Paused));
    }

    fn malformed_typing(result: Result<Typing, BodyError>) -> String {
        match result {
            Err(Malformed(m)) => m,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn iscomposing_refusals() {
        let m = |b: &[u8]| malformed_typing(parse_iscomposing(b));
        assert!(
            m(b"<isComposing xmlns='urn:other'><state>active</state></isComposing>")
                .contains("expected \"isComposing\"")
        );
        assert!(m(b"<presence/>").contains("root element is \"presence\""));
        assert_eq!(
            m(b"<isComposing xmlns='urn:ietf:params:xml:ns:im-iscomposing'><refresh>1</refresh></isComposing>"),
            "isComposing document has no <state>"
        );
        assert!(
            m(b"<isComposing><state xmlns='urn:x'>active</state></isComposing>")
                .contains("no <state>")
        );
        assert!(
            m(b"<isComposing><state>typing</state></isComposing>")
                .contains("expected active or idle")
        );
        assert!(m(b"<isComposing><state>active</state>").contains("ends before"));
        assert!(m(b"").contains("no root element"));
        assert!(m(b"<isComposing><state>active</stat></isComposing>").contains("malformed XML"));
        assert!(m(b"<p:isComposing><state>active</state></p:isComposing>").contains("prefix"));
        assert!(matches!(
            parse_iscomposing(b"<isComposing>\xFF</isComposing>"),
            Err(BadCharset(_))
        ));
    }

    /// Hostile XML refused the way core::pidf refuses it, for both typing parsers.
    #[test]
    fn typing_parsers_refuse_dtds_entities_depth_and_size() {
        type Parser = fn(&[u8]) -> Result<Typing, BodyError>;
        let parsers: [Parser; 2] = [parse_iscomposing, parse_keyboard_activity];
        let billion_laughs = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<isComposing><state>&lol2;</state></isComposing>"#;
        let xxe = br#"<?xml version="1.0"?><!DOCTYPE k [<!ENTITY x SYSTEM "file:///etc/passwd">]><KeyboardActivity><status status="&x;"/></KeyboardActivity>"#;
        for parse in parsers {
            for doc in [&billion_laughs[..], &xxe[..]] {
                assert!(malformed_typing(parse(doc)).contains("DOCTYPE"));
            }
            assert!(
                malformed_typing(parse(b"<isComposing><state>&xxe;</state></isComposing>"))
                    .contains("entity reference \"&xxe;\" refused")
            );
            let deep = format!("{}{}", "<a>".repeat(20_000), "</a>".repeat(20_000));
            assert!(
                malformed_typing(parse(&deep.as_bytes()[..MAX_XML_BYTES]))
                    .contains("nested deeper")
            );
            let big = vec![b' '; MAX_XML_BYTES + 1];
            assert!(malformed_typing(parse(&big)).contains("larger than the limit"));
            let wide = format!(
                "<isComposing>{}</isComposing>",
                "<x/>".repeat(MAX_XML_ELEMENTS)
            );
            assert!(malformed_typing(parse(wide.as_bytes())).contains("more than 64 elements"));
            let _ = parse(b"<isComposing><state>&#0;</state></isComposing>");
        }
        assert!(
            malformed_typing(parse_keyboard_activity(
                b"<KeyboardActivity><status status='&xxe;'/></KeyboardActivity>"
            ))
            .contains("xxe")
        );
    }

    // --- KeyboardActivity -------------------------------------------------------------------

    #[test]
    fn keyboard_activity_bodies_we_send() {
        assert_eq!(
            String::from_utf8(keyboard_activity_body(Typing::Composing)).unwrap(),
            "<?xml version=\"1.0\"?><KeyboardActivity><status status=\"type\" /></KeyboardActivity>"
        );
        let idle = "<?xml version=\"1.0\"?><KeyboardActivity><status status=\"idle\" /></KeyboardActivity>";
        assert_eq!(
            String::from_utf8(keyboard_activity_body(Typing::Paused)).unwrap(),
            idle
        );
        assert_eq!(
            String::from_utf8(keyboard_activity_body(Typing::Active)).unwrap(),
            idle
        );
        for (state, back) in [
            (Typing::Composing, Typing::Composing),
            (Typing::Paused, Typing::Paused),
            (Typing::Active, Typing::Paused),
        ] {
            assert_eq!(
                parse_keyboard_activity(&keyboard_activity_body(state)),
                Ok(back)
            );
        }
    }

    #[test]
    fn keyboard_activity_bodies_we_receive() {
        // The body of tests/golden/sip/lcs_info_typing.sip.
        let lync = b"<?xml version=\"1.0\"?>\r\n<KeyboardActivity>\r\n  <status status=\"type\" />\r\n</KeyboardActivity>";
        assert_eq!(parse_keyboard_activity(lync), Ok(Typing::Composing));
        let idle = b"<KeyboardActivity><status status='IDLE'></status></KeyboardActivity>";
        assert_eq!(parse_keyboard_activity(idle), Ok(Typing::Paused));
        let extra = b"<KeyboardActivity xmlns='urn:x' v='1'><other/><status x='1' status='type'/></KeyboardActivity>";
        assert_eq!(parse_keyboard_activity(extra), Ok(Typing::Composing));
        let m = |b: &[u8]| malformed_typing(parse_keyboard_activity(b));
        assert!(
            m(b"<KeyboardActivity><status status='away'/></KeyboardActivity>")
                .contains("expected type or idle")
        );
        assert!(m(b"<KeyboardActivity><status/></KeyboardActivity>").contains("no <status"));
        assert!(m(b"<KeyboardActivity/>").contains("no <status"));
        assert!(
            m(b"<Keyboard><status status='type'/></Keyboard>")
                .contains("expected \"KeyboardActivity\"")
        );
        assert!(
            m(b"<KeyboardActivity><x><status status='type'/></x></KeyboardActivity>")
                .contains("no <status")
        );
        assert!(m(b"<KeyboardActivity><status status='type'/>").contains("ends before"));
        assert!(
            m(b"<KeyboardActivity><status status=type/></KeyboardActivity>")
                .contains("malformed XML")
        );
    }

    // --- properties -----------------------------------------------------------------------------

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn content_type() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("text/plain".to_owned()),
                Just("text/plain; charset=UTF-8".to_owned()),
                Just("text/plain; charset=iso-8859-1".to_owned()),
                Just("text/plain; charset=us-ascii".to_owned()),
                Just("text/html".to_owned()),
                Just("text/html; charset=windows-1252".to_owned()),
                Just("multipart/alternative; boundary=b".to_owned()),
                Just("multipart/related; boundary=\"b\"".to_owned()),
                Just("text/rtf".to_owned()),
                ".{0,40}",
            ]
        }

        /// Bodies made of the pieces the parsers look for.
        fn pieces() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(
                prop_oneof![
                    Just(&b"--b"[..]),
                    Just(&b"--b--"[..]),
                    Just(&b"\r\n"[..]),
                    Just(&b"\n"[..]),
                    Just(&b"Content-Type: text/html\r\n"[..]),
                    Just(&b"Content-Type: text/plain; charset=utf-8\r\n"[..]),
                    Just(&b"Content-Type: multipart/alternative; boundary=b\r\n"[..]),
                    Just(&b"Content-Transfer-Encoding: base64\r\n"[..]),
                    Just(&b"Content-Transfer-Encoding: quoted-printable\r\n"[..]),
                    Just(&b"<p>"[..]),
                    Just(&b"</p>"[..]),
                    Just(&b"<br>"[..]),
                    Just(&b"<pre>"[..]),
                    Just(&b"</pre>"[..]),
                    Just(&b"<a href=\"https://x\">"[..]),
                    Just(&b"</a>"[..]),
                    Just(&b"<script>"[..]),
                    Just(&b"</script>"[..]),
                    Just(&b"<!--"[..]),
                    Just(&b"-->"[..]),
                    Just(&b"&amp;"[..]),
                    Just(&b"&#x1F600;"[..]),
                    Just(&b"&#"[..]),
                    Just(&b"&copy"[..]),
                    Just(&b"=C3=A9"[..]),
                    Just(&b"SGk="[..]),
                    Just(&b" "[..]),
                    Just(&b"\xC3\xA9"[..]),
                    Just(&b"\xE4\xB8\xAD"[..]),
                    Just(&b"\xFF"[..]),
                    Just(&b"x"[..]),
                ],
                0..40,
            )
            .prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1500))]

            #[test]
            fn utf8_plain_text_is_identity(s in any::<String>()) {
                prop_assert_eq!(plain_text("text/plain; charset=UTF-8", s.as_bytes()), Ok(s.clone()));
                prop_assert_eq!(plain_text("text/plain", s.as_bytes()), Ok(s));
            }

            #[test]
            fn html_escaped_text_comes_back(s in "[a-zA-Z0-9<>&\"' é中😀]{0,40}") {
                let escaped = s
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;");
                let expected = s.split_whitespace().collect::<Vec<_>>().join(" ");
                prop_assert_eq!(plain_text("text/html", escaped.as_bytes()), Ok(expected));
            }

            #[test]
            fn plain_text_never_panics_on_arbitrary_input(
                ct in content_type(),
                body in proptest::collection::vec(any::<u8>(), 0..1024),
            ) {
                let _ = plain_text(&ct, &body);
            }

            #[test]
            fn plain_text_never_panics_on_structured_input(ct in content_type(), body in pieces()) {
                if let Ok(text) = plain_text(&ct, &body) {
                    // Never longer than three times the input (windows-1252).
                    prop_assert!(text.len() <= 3 * body.len());
                }
            }

            #[test]
            fn others_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), s in ".{0,200}") {
                let _ = parse_iscomposing(&body);
                let _ = parse_keyboard_activity(&body);
                let _ = ms_text_format(&s);
                let _ = ms_text_format(&format!("text/plain;ms-body={s}"));
            }
        }
    }
}
