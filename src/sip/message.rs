//! SIP messages: parsing, typed access, mutation and serialisation (RFC 3261 §7, §8.1.1, §18.3,
//! §20).
//!
//! A [`Message`] keeps its header section as text: one `String` holds the start line and every
//! header name and value, and the header list holds spans into it. Parsing is therefore two
//! allocations plus the body, unknown headers and parameters are kept byte for byte, and typed
//! accessors parse a value only when asked. Edits append new text to the buffer and re-point the
//! span. Serialisation writes `Name: value` lines in the original order and spelling.
//!
//! [`Message::parse`] checks what every later layer relies on: a well-formed start line, header
//! syntax, exactly one From, To, Call-ID and CSeq, at least one Via, parsable Via/From/To/CSeq
//! values, a CSeq method equal to the request method, and a Content-Length that fits the body.

use std::fmt;

use super::error::{HeaderError, ParseError};
use super::header::{
    CSeq, Contact, Event, HeaderKind, MediaType, NameAddr, SubscriptionState, Via,
};
pub use super::method::Method;
use super::params::{is_token_byte, parse_digits, split_comma};
use super::uri::Uri;

/// Limits applied to untrusted input (configurable; see `sip.max_*` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Start line plus headers plus the blank line, in bytes.
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    pub max_headers: usize,
}

impl Limits {
    /// The defaults: 16 KiB of headers, 64 KiB of body, 128 header lines.
    pub const DEFAULT: Limits = Limits {
        max_head_bytes: 16 * 1024,
        max_body_bytes: 64 * 1024,
        max_headers: 128,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(start: usize, end: usize) -> Span {
        // The head is bounded by `Limits::max_head_bytes` plus edits, far below 4 GiB.
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StartLine {
    Request { method: Method, uri: Span },
    Response { status: u16, reason: Span },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    kind: HeaderKind,
    name: Span,
    value: Span,
}

/// A SIP request or response.
#[derive(Debug, Clone)]
pub struct Message {
    text: String,
    start: StartLine,
    headers: Vec<Header>,
    body: Vec<u8>,
    /// The first header line (or start line part) an edit refused; such a message is not
    /// sent ([`Message::header_error`]).
    refused: Option<Box<HeaderError>>,
}

impl PartialEq for Message {
    /// Structural equality: same start line, same header names (case-insensitive) and values in
    /// the same order, same body.
    fn eq(&self, other: &Self) -> bool {
        let start_eq = match (&self.start, &other.start) {
            (StartLine::Request { method: a, .. }, StartLine::Request { method: b, .. }) => {
                a == b && self.request_uri() == other.request_uri()
            }
            (StartLine::Response { status: a, .. }, StartLine::Response { status: b, .. }) => {
                a == b && self.reason() == other.reason()
            }
            _ => false,
        };
        start_eq
            && self.refused == other.refused
            && self.headers.len() == other.headers.len()
            && self
                .headers()
                .zip(other.headers())
                .all(|((n1, v1), (n2, v2))| n1.eq_ignore_ascii_case(n2) && v1 == v2)
            && self.body == other.body
    }
}

/// The offset of the first byte no header value may hold: a control character (C0, CR and LF
/// included, but HTAB; and DEL).
pub fn find_forbidden_in_value(value: &str) -> Option<usize> {
    find_special(value.as_bytes())
}

/// `Err` when `value` may not be written into `field`: it holds a control character.
fn check_value(field: &str, value: &str) -> Result<(), HeaderError> {
    match find_forbidden_in_value(value) {
        None => Ok(()),
        Some(at) => Err(HeaderError::ControlCharacter {
            field: field.to_owned(),
            byte: value.as_bytes()[at],
            at,
        }),
    }
}

/// `Err` when `name: value` may not be written as a header line.
fn check_header(name: &str, value: &str) -> Result<(), HeaderError> {
    if !super::params::is_token(name) {
        return Err(HeaderError::BadName(name.chars().take(80).collect()));
    }
    check_value(name, value)
}

/// `Err` when `uri` may not be written as a Request-URI (no white space, no controls).
fn check_uri(uri: &str) -> Result<(), HeaderError> {
    check_value("Request-URI", uri)?;
    if uri.is_empty() || uri.contains([' ', '\t']) {
        return Err(HeaderError::SpaceInUri(uri.chars().take(200).collect()));
    }
    Ok(())
}

/// Where the header section ends: the index after the blank line, or `None` if incomplete.
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf)
        .find(|&i| i >= 3 && &buf[i - 3..=i] == b"\r\n\r\n")
        .map(|i| i + 1)
}

/// 1 for any control character but HTAB (CR and LF included), and DEL; else 0. Bitwise, so
/// that loops over it vectorise.
#[inline]
fn special(b: u8) -> u8 {
    (u8::from(b < 0x20) & u8::from(b != b'\t')) | u8::from(b == 0x7F)
}

/// The offset of the first [`special`] byte: 16-byte blocks are tested without branches (the
/// compiler vectorises the fold), and only the block with a hit is looked at byte by byte.
fn find_special(bytes: &[u8]) -> Option<usize> {
    let mut base = 0;
    for block in bytes.chunks_exact(16) {
        let block: &[u8; 16] = block.try_into().unwrap_or(&[0; 16]);
        if block.iter().fold(0, |acc, &b| acc | special(b)) != 0 {
            break;
        }
        base += 16;
    }
    bytes[base..]
        .iter()
        .position(|&b| special(b) != 0)
        .map(|i| base + i)
}

/// The end of the line starting at `pos` (the index of its CR), or the end of `head`, in one
/// scan that also finds every character a header line may not hold. A LF not preceded by CR,
/// a bare CR and NUL are errors (line ends must be CRLF, RFC 3261 §7: re-emitting them could
/// inject headers at the next hop), and so is any other control character but HTAB, and DEL
/// (RFC 3261 §25.1: values are `TEXT-UTF8char` and `LWS`).
fn line_end(head: &[u8], pos: usize, line_no: usize) -> Result<usize, ParseError> {
    let line = &head[pos..];
    let Some(i) = find_special(line) else {
        return Ok(head.len());
    };
    match line[i] {
        b'\r' if line.get(i + 1) == Some(&b'\n') => Ok(pos + i),
        b'\r' | b'\n' | 0 => Err(ParseError::ControlCharacter(line_no)),
        byte => Err(ParseError::ForbiddenControl {
            line: line_no,
            byte,
        }),
    }
}

impl Message {
    /// Parses a complete message (a file, a datagram, or a frame cut by
    /// [`crate::sip::framing::Framer`]) with default limits. Bytes after `Content-Length` are
    /// ignored (RFC 3261 §18.3); without Content-Length the body is the rest of the input.
    pub fn parse(input: &[u8]) -> Result<Message, ParseError> {
        Self::parse_with_limits(input, &Limits::default())
    }

    pub fn parse_with_limits(input: &[u8], limits: &Limits) -> Result<Message, ParseError> {
        let msg = Self::parse_structure(input, limits)?;
        msg.validate()?;
        Ok(msg)
    }

    /// Parses the start line, the header lines and the body, without checking the meaning of
    /// any header. The edge uses this to build a `400` for a message that fails [`validate`].
    ///
    /// [`validate`]: Message::validate
    pub fn parse_structure(input: &[u8], limits: &Limits) -> Result<Message, ParseError> {
        // RFC 3261 §7.5: ignore CRLFs before the start line.
        let mut skip = 0;
        while input[skip..].starts_with(b"\r\n") {
            skip += 2;
        }
        let input = &input[skip..];
        if input.is_empty() {
            return Err(ParseError::Empty);
        }
        let end = match head_end(input) {
            Some(e) => e,
            None if input.len() > limits.max_head_bytes => {
                return Err(ParseError::HeadTooLarge(limits.max_head_bytes));
            }
            None => return Err(ParseError::Unterminated),
        };
        if end > limits.max_head_bytes {
            return Err(ParseError::HeadTooLarge(limits.max_head_bytes));
        }
        let head = std::str::from_utf8(&input[..end - 4])
            .map_err(|e| ParseError::NotUtf8(skip + e.valid_up_to()))?;
        let mut msg = Self::parse_head(head, limits)?;
        let rest = &input[end..];
        let body_len = match msg.content_length()? {
            Some(n) if n > rest.len() => {
                return Err(ParseError::BodyTruncated {
                    declared: n,
                    present: rest.len(),
                });
            }
            Some(n) => n,
            None => rest.len(),
        };
        if body_len > limits.max_body_bytes {
            return Err(ParseError::BodyTooLarge {
                len: body_len,
                limit: limits.max_body_bytes,
            });
        }
        msg.body = rest[..body_len].to_vec();
        Ok(msg)
    }

    /// Parses a header section (without the final blank line).
    fn parse_head(head: &str, limits: &Limits) -> Result<Message, ParseError> {
        let mut text = String::with_capacity(head.len() + 64);
        text.push_str(head);
        let bytes = head.as_bytes();
        let first_end = line_end(bytes, 0, 1)?;
        let start = parse_start_line(&head[..first_end])?;
        let mut headers: Vec<Header> = Vec::with_capacity(16);
        let mut pos = first_end + 2;
        let mut line_no = 1;
        let mut folded: Vec<usize> = Vec::new();
        while pos < head.len() {
            line_no += 1;
            let end = line_end(bytes, pos, line_no)?;
            let line = &head[pos..end];
            if line.starts_with([' ', '\t']) {
                // Folded continuation (RFC 3261 §7.3.1): extend the previous value.
                let last = headers
                    .last_mut()
                    .ok_or(ParseError::FoldWithoutHeader(line_no))?;
                if !line.trim().is_empty() {
                    last.value.end = trim_end_at(head, end) as u32;
                    if folded.last() != Some(&(headers.len() - 1)) {
                        folded.push(headers.len() - 1);
                    }
                }
            } else {
                if headers.len() == limits.max_headers {
                    return Err(ParseError::TooManyHeaders(limits.max_headers));
                }
                // name = token, then optional SP/HTAB, then ':' (one scan, no second pass).
                let lb = line.as_bytes();
                let name_len = lb
                    .iter()
                    .position(|&c| !is_token_byte(c))
                    .unwrap_or(lb.len());
                let mut colon = name_len;
                while lb.get(colon).is_some_and(|c| matches!(c, b' ' | b'\t')) {
                    colon += 1;
                }
                if name_len == 0 || lb.get(colon) != Some(&b':') {
                    return Err(match memchr::memchr(b':', lb) {
                        None => ParseError::NoColon {
                            line: line_no,
                            text: line.chars().take(80).collect(),
                        },
                        Some(c) => ParseError::BadHeaderName(
                            line[..c].trim_end().chars().take(80).collect(),
                        ),
                    });
                }
                let name = &line[..name_len];
                let mut vstart = colon + 1;
                while lb.get(vstart).is_some_and(|c| matches!(c, b' ' | b'\t')) {
                    vstart += 1;
                }
                let vstart = pos + vstart;
                headers.push(Header {
                    kind: HeaderKind::of(name),
                    name: Span::of(pos, pos + name.len()),
                    value: Span::of(vstart, trim_end_at(head, end).max(vstart)),
                });
            }
            pos = end + 2;
        }
        let mut msg = Message {
            text,
            start,
            headers,
            body: Vec::new(),
            refused: None,
        };
        // Replace folded values by their unfolded form (a single SP per fold).
        for i in folded {
            let raw = msg.span(msg.headers[i].value).to_owned();
            let mut unfolded = String::with_capacity(raw.len());
            for (n, part) in raw.split("\r\n").enumerate() {
                let part = part.trim_matches([' ', '\t']);
                if n > 0 && !part.is_empty() {
                    unfolded.push(' ');
                }
                unfolded.push_str(part);
            }
            msg.headers[i].value = msg.push_text(unfolded.trim_matches([' ', '\t']));
        }
        Ok(msg)
    }

    /// What a `400`/`513` to a request that failed [`Message::parse_structure`] needs (RFC 3261
    /// §8.2.6.2: the request line, Via, From, To, Call-ID and CSeq), read leniently from its
    /// raw header section: lines may end in CRLF or a bare LF; bytes that are not UTF-8 become
    /// U+FFFD and control characters are dropped from those values, so nothing is copied that
    /// could not be re-emitted safely (the peer matches the answer to its transaction by the
    /// Via branch and the CSeq method, RFC 3261 §17.1.3). `None` for a response, an ACK (never
    /// answered), or when one of those headers is missing or unreadable; such a message cannot
    /// be answered.
    pub fn salvage_request(raw: &[u8]) -> Option<Message> {
        /// Via lines copied at most (a 400 needs them all to reach the sender; more than this
        /// is not a real request).
        const MAX_VIAS: usize = 32;
        let mut lines = raw
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .take_while(|l| !l.is_empty());
        let start = std::str::from_utf8(lines.next()?).ok()?;
        let mut parts = start.split(' ');
        let (method, uri) = (parts.next()?, parts.next()?);
        if parts.next() != Some("SIP/2.0") || parts.next().is_some() {
            return None;
        }
        let method = Method::parse(method).ok()?;
        if method == Method::Ack {
            return None;
        }
        // An answer does not carry the Request-URI: an unreadable one does not stop it.
        let uri = if check_uri(uri).is_ok() && Uri::parse(uri).is_ok() {
            uri
        } else {
            "sip:invalid.invalid"
        };
        let mut m = Message::new_request(method, uri);
        let mut vias = 0;
        for line in lines {
            let line = String::from_utf8_lossy(line);
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim_end_matches([' ', '\t']);
            let value = value.trim_matches([' ', '\t']);
            let kind = HeaderKind::of(name);
            let wanted = match kind {
                HeaderKind::Via => {
                    vias += 1;
                    vias <= MAX_VIAS
                }
                HeaderKind::From | HeaderKind::To | HeaderKind::CallId | HeaderKind::CSeq => true,
                _ => false,
            };
            if wanted {
                let value: String = value
                    .chars()
                    .filter(|&c| c == '\t' || !c.is_ascii_control())
                    .collect();
                m.push_header(name, &value);
            }
        }
        (m.header_error().is_none() && m.validate().is_ok()).then_some(m)
    }

    /// Checks the headers every layer relies on (RFC 3261 §8.1.1, §8.2.2, §20).
    pub fn validate(&self) -> Result<(), ParseError> {
        let mut counts = [0usize; 4];
        for h in &self.headers {
            let i = match h.kind {
                HeaderKind::From => 0,
                HeaderKind::To => 1,
                HeaderKind::CallId => 2,
                HeaderKind::CSeq => 3,
                _ => continue,
            };
            counts[i] += 1;
        }
        for (n, name) in counts.iter().zip(["From", "To", "Call-ID", "CSeq"]) {
            match n {
                0 => return Err(ParseError::Missing(name)),
                1 => {}
                _ => return Err(ParseError::Duplicate(name)),
            }
        }
        if self.call_id()?.is_empty() {
            return Err(ParseError::header("Call-ID", "", "empty"));
        }
        let mut vias = 0;
        for v in self.values(HeaderKind::Via) {
            Via::parse(v)?;
            vias += 1;
        }
        if vias == 0 {
            return Err(ParseError::Missing("Via"));
        }
        self.from()?;
        self.to()?;
        let cseq = self.cseq()?;
        if let Some(method) = self.method() {
            if cseq.method != *method {
                return Err(ParseError::CSeqMethodMismatch {
                    cseq: cseq.method.as_str().to_owned(),
                    method: method.as_str().to_owned(),
                });
            }
            let uri = self.request_uri().unwrap_or_default();
            Uri::parse(uri)?;
        }
        Ok(())
    }

    fn span(&self, s: Span) -> &str {
        &self.text[s.start as usize..s.end as usize]
    }

    fn push_text(&mut self, s: &str) -> Span {
        let start = self.text.len();
        self.text.push_str(s);
        Span::of(start, self.text.len())
    }

    // ---- construction -------------------------------------------------------------------

    /// A new request with no headers (see [`crate::sip::builder`] for complete requests). A
    /// Request-URI with white space or a control character is refused (not written, and the
    /// message keeps the [`HeaderError`]).
    pub fn new_request(method: Method, uri: &str) -> Message {
        let mut m = Message {
            text: String::with_capacity(512),
            start: StartLine::Response {
                status: 0,
                reason: Span::of(0, 0),
            },
            headers: Vec::with_capacity(12),
            body: Vec::new(),
            refused: None,
        };
        let uri = match check_uri(uri) {
            Ok(()) => m.push_text(uri),
            Err(e) => {
                m.refuse(e);
                Span::of(0, 0)
            }
        };
        // `Method::Other` can hold anything; the parser only makes tokens.
        if !super::params::is_token(method.as_str()) {
            m.refuse(HeaderError::BadMethod(
                method.as_str().chars().take(80).collect(),
            ));
        }
        m.start = StartLine::Request { method, uri };
        m
    }

    /// A new response with no headers (see [`Message::response_to`] for the usual way, which
    /// sanitises the reason phrase). A reason phrase with a control character is refused.
    pub fn new_response(status: u16, reason: &str) -> Message {
        let mut m = Message {
            text: String::with_capacity(512),
            start: StartLine::Response {
                status,
                reason: Span::of(0, 0),
            },
            headers: Vec::with_capacity(12),
            body: Vec::new(),
            refused: None,
        };
        let reason = match check_value("reason phrase", reason) {
            Ok(()) => m.push_text(reason),
            Err(e) => {
                m.refuse(e);
                Span::of(0, 0)
            }
        };
        m.start = StartLine::Response { status, reason };
        m
    }

    /// Keeps the first refused edit.
    fn refuse(&mut self, e: HeaderError) {
        if self.refused.is_none() {
            self.refused = Some(Box::new(e));
        }
    }

    /// The first edit this message refused because it would have changed its shape (a CR,
    /// LF, NUL or other control character in a header value, reason phrase or Request-URI; a
    /// header name that is not a token). The refused text was not written; the edge does not
    /// send a message that has one, and says why.
    pub fn header_error(&self) -> Option<&HeaderError> {
        self.refused.as_deref()
    }

    // ---- start line -----------------------------------------------------------------------

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match self.start {
            StartLine::Request { uri, .. } => Some(self.span(uri)),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self.start {
            StartLine::Response { reason, .. } => Some(self.span(reason)),
            StartLine::Request { .. } => None,
        }
    }

    /// Replaces the Request-URI (requests only; no effect on responses). One with white space
    /// or a control character is refused ([`Message::header_error`]).
    pub fn set_request_uri(&mut self, uri: &str) {
        if let Err(e) = check_uri(uri) {
            return self.refuse(e);
        }
        if matches!(self.start, StartLine::Request { .. }) {
            let span = self.push_text(uri);
            if let StartLine::Request { uri, .. } = &mut self.start {
                *uri = span;
            }
        }
    }

    // ---- raw headers ----------------------------------------------------------------------

    /// Every header line in order, as `(name, value)` (names as written).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .map(|h| (self.span(h.name), self.span(h.value)))
    }

    pub fn header_count(&self) -> usize {
        self.headers.len()
    }

    fn is_named(&self, h: &Header, kind: HeaderKind, name: &str) -> bool {
        h.kind == kind
            && (kind != HeaderKind::Other || self.span(h.name).eq_ignore_ascii_case(name))
    }

    /// Raw values of every line of a header (case-insensitive, compact forms accepted).
    pub fn header_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        let kind = HeaderKind::of(name);
        self.headers
            .iter()
            .filter(move |h| self.is_named(h, kind, name))
            .map(|h| self.span(h.value))
    }

    /// The raw value of the first line of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let kind = HeaderKind::of(name);
        self.headers
            .iter()
            .find(|h| self.is_named(h, kind, name))
            .map(|h| self.span(h.value))
    }

    fn first(&self, kind: HeaderKind) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.kind == kind)
            .map(|h| self.span(h.value))
    }

    /// All values of a known header, split at commas for list headers (Via, Contact, Route …).
    pub fn values(&self, kind: HeaderKind) -> impl Iterator<Item = &str> {
        let split = kind.is_list();
        self.headers
            .iter()
            .filter(move |h| h.kind == kind)
            .flat_map(move |h| {
                let v = self.span(h.value);
                let mut whole = Some(v);
                let mut parts = split.then(|| split_comma(v));
                std::iter::from_fn(move || match parts.as_mut() {
                    Some(p) => p.next(),
                    None => whole.take(),
                })
            })
    }

    /// Appends a header line. A name that is not a token, or a value with a CR, LF, NUL or
    /// other control character, is refused: nothing is written and the message keeps the
    /// [`HeaderError`] ([`Message::header_error`]), so it is never sent with a line missing or
    /// split. Callers that build values from peer input fold or validate them first.
    pub fn push_header(&mut self, name: &str, value: &str) {
        self.push_header_parts(name, &[value]);
    }

    /// Appends a header line whose value is `parts` written one after the other: the same
    /// line, and the same refusal, as [`Message::push_header`] with the joined value, without
    /// building that value first (the request builders' hot path).
    pub fn push_header_parts(&mut self, name: &str, parts: &[&str]) {
        if !super::params::is_token(name) {
            return self.refuse(HeaderError::BadName(name.chars().take(80).collect()));
        }
        self.push_parts(HeaderKind::of(name), name, parts);
    }

    /// [`Message::push_header_parts`] for a header the codec knows, written with its canonical
    /// name ([`HeaderKind::name`]; a token, so not checked again).
    pub(crate) fn push_known(&mut self, kind: HeaderKind, parts: &[&str]) {
        debug_assert!(kind != HeaderKind::Other);
        self.push_parts(kind, kind.name(), parts);
    }

    fn push_parts(&mut self, kind: HeaderKind, name: &str, parts: &[&str]) {
        let line = self.text.len();
        let name_span = self.push_text(name);
        let start = self.text.len();
        for part in parts {
            self.text.push_str(part);
        }
        // The value checked as written, in one scan; a refused one is taken back.
        if let Some(at) = find_special(&self.text.as_bytes()[start..]) {
            let byte = self.text.as_bytes()[start + at];
            self.text.truncate(line);
            return self.refuse(HeaderError::ControlCharacter {
                field: name.to_owned(),
                byte,
                at,
            });
        }
        self.headers.push(Header {
            kind,
            name: name_span,
            value: Span::of(start, self.text.len()),
        });
    }

    /// Room for `text` more bytes of header text and `lines` more header lines, so that a
    /// builder that knows the sizes allocates once.
    pub(crate) fn reserve(&mut self, text: usize, lines: usize) {
        self.text.reserve(text);
        self.headers.reserve(lines);
    }

    /// Sets the body alone: the caller has written its Content-Length (and Content-Type)
    /// already, where it wanted them ([`crate::sip::dialog::Dialog::next_request_with`]).
    pub(crate) fn set_body_after_headers(&mut self, body: Vec<u8>) {
        debug_assert_eq!(self.content_length().ok().flatten(), Some(body.len()));
        self.body = body;
    }

    /// Inserts a header line before all others (a new top Via); refused like
    /// [`Message::push_header`].
    pub fn prepend_header(&mut self, name: &str, value: &str) {
        if let Err(e) = check_header(name, value) {
            return self.refuse(e);
        }
        let n = self.push_text(name);
        let v = self.push_text(value);
        self.headers.insert(
            0,
            Header {
                kind: HeaderKind::of(name),
                name: n,
                value: v,
            },
        );
    }

    /// Removes every line of a header; returns how many were removed.
    pub fn remove_header(&mut self, name: &str) -> usize {
        let kind = HeaderKind::of(name);
        let before = self.headers.len();
        let keep: Vec<bool> = self
            .headers
            .iter()
            .map(|h| !self.is_named(h, kind, name))
            .collect();
        let mut i = 0;
        self.headers.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        before - self.headers.len()
    }

    /// Replaces the first line of a header (keeping its position) and removes the others, or
    /// appends it when absent; refused like [`Message::push_header`] (the old lines stay).
    pub fn set_header(&mut self, name: &str, value: &str) {
        if let Err(e) = check_header(name, value) {
            return self.refuse(e);
        }
        let kind = HeaderKind::of(name);
        match self
            .headers
            .iter()
            .position(|h| self.is_named(h, kind, name))
        {
            Some(i) => {
                let v = self.push_text(value);
                let mut header = self.headers[i];
                header.value = v;
                self.remove_header(name);
                self.headers.insert(i, header);
            }
            None => self.push_header(name, value),
        }
    }

    // ---- typed headers --------------------------------------------------------------------

    fn required(&self, kind: HeaderKind) -> Result<&str, ParseError> {
        self.first(kind)
            .ok_or_else(|| ParseError::Missing(kind.name()))
    }

    /// All Via values, top first.
    pub fn via(&self) -> Result<Vec<Via<'_>>, ParseError> {
        self.values(HeaderKind::Via).map(Via::parse).collect()
    }

    pub fn top_via(&self) -> Result<Via<'_>, ParseError> {
        Via::parse(
            self.values(HeaderKind::Via)
                .next()
                .ok_or(ParseError::Missing("Via"))?,
        )
    }

    pub fn from(&self) -> Result<NameAddr<'_>, ParseError> {
        NameAddr::parse(self.required(HeaderKind::From)?, "From")
    }

    pub fn to(&self) -> Result<NameAddr<'_>, ParseError> {
        NameAddr::parse(self.required(HeaderKind::To)?, "To")
    }

    pub fn call_id(&self) -> Result<&str, ParseError> {
        self.required(HeaderKind::CallId).map(str::trim)
    }

    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        CSeq::parse(self.required(HeaderKind::CSeq)?)
    }

    /// Contact: `None` when absent.
    pub fn contact(&self) -> Result<Option<Contact<'_>>, ParseError> {
        let mut values = self.values(HeaderKind::Contact).peekable();
        if values.peek().is_none() {
            return Ok(None);
        }
        let all: Vec<&str> = values.collect();
        if all.len() == 1 && all[0] == "*" {
            return Ok(Some(Contact::Star));
        }
        all.into_iter()
            .map(|v| NameAddr::parse(v, "Contact"))
            .collect::<Result<_, _>>()
            .map(|a| Some(Contact::Addresses(a)))
    }

    pub fn route(&self) -> Result<Vec<NameAddr<'_>>, ParseError> {
        self.values(HeaderKind::Route)
            .map(|v| NameAddr::parse(v, "Route"))
            .collect()
    }

    pub fn record_route(&self) -> Result<Vec<NameAddr<'_>>, ParseError> {
        self.values(HeaderKind::RecordRoute)
            .map(|v| NameAddr::parse(v, "Record-Route"))
            .collect()
    }

    fn number<T: std::str::FromStr>(&self, kind: HeaderKind) -> Result<Option<T>, ParseError> {
        match self.first(kind) {
            None => Ok(None),
            Some(v) => parse_digits(v)
                .map(Some)
                .ok_or_else(|| ParseError::header(kind.name(), v, "not a number")),
        }
    }

    pub fn max_forwards(&self) -> Result<Option<u32>, ParseError> {
        self.number(HeaderKind::MaxForwards)
    }

    pub fn expires(&self) -> Result<Option<u32>, ParseError> {
        self.number(HeaderKind::Expires)
    }

    /// The Content-Length header value (`None` when absent); several lines must agree.
    pub fn content_length(&self) -> Result<Option<usize>, ParseError> {
        let mut found: Option<usize> = None;
        for v in self
            .headers
            .iter()
            .filter(|h| h.kind == HeaderKind::ContentLength)
        {
            let raw = self.span(v.value);
            let n = parse_digits(raw)
                .ok_or_else(|| ParseError::header("Content-Length", raw, "not a number"))?;
            if found.is_some_and(|f| f != n) {
                return Err(ParseError::Duplicate("Content-Length"));
            }
            found = Some(n);
        }
        Ok(found)
    }

    pub fn content_type(&self) -> Result<Option<MediaType<'_>>, ParseError> {
        self.first(HeaderKind::ContentType)
            .map(MediaType::parse)
            .transpose()
    }

    pub fn event(&self) -> Result<Option<Event<'_>>, ParseError> {
        self.first(HeaderKind::Event).map(Event::parse).transpose()
    }

    pub fn subscription_state(&self) -> Result<Option<SubscriptionState<'_>>, ParseError> {
        self.first(HeaderKind::SubscriptionState)
            .map(SubscriptionState::parse)
            .transpose()
    }

    /// Methods listed in every Allow line.
    pub fn allow(&self) -> impl Iterator<Item = &str> {
        self.values(HeaderKind::Allow)
    }

    /// Option tags in every Supported line.
    pub fn supported(&self) -> impl Iterator<Item = &str> {
        self.values(HeaderKind::Supported)
    }

    /// Option tags in every Require line.
    pub fn require(&self) -> impl Iterator<Item = &str> {
        self.values(HeaderKind::Require)
    }

    /// `true` if `tag` appears in a Supported header (case-insensitive).
    pub fn supports(&self, tag: &str) -> bool {
        // `supported()` already splits the comma lists.
        self.supported().any(|t| t.eq_ignore_ascii_case(tag))
    }

    // ---- body -----------------------------------------------------------------------------

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Sets the body and its Content-Type (when given) and Content-Length.
    pub fn set_body(&mut self, content_type: Option<&str>, body: Vec<u8>) {
        if let Some(ct) = content_type {
            self.set_header("Content-Type", ct);
        } else if body.is_empty() {
            self.remove_header("Content-Type");
        }
        self.set_header("Content-Length", itoa_buf(body.len()).as_str());
        self.body = body;
    }

    // ---- profile checks -------------------------------------------------------------------

    /// The first `sips:` URI anywhere in the message, as `(where, uri)`: the Request-URI, URIs
    /// in address headers, and `<sips:…>` or a bare `sips:` value in any other non-free-text
    /// header. The profile ("SIPS scheme") treats such a message as malformed.
    pub fn find_sips_uri(&self) -> Option<(&str, &str)> {
        if let Some(uri) = self.request_uri() {
            if starts_with_ci(uri.trim(), "sips:") {
                return Some(("Request-URI", uri));
            }
        }
        for h in &self.headers {
            if h.kind.is_free_text() {
                continue;
            }
            let value = self.span(h.value);
            let name = self.span(h.name);
            if h.kind.carries_uri() {
                for v in split_comma(value) {
                    let uri = NameAddr::parse(v, "").map(|n| n.uri).unwrap_or(v);
                    if starts_with_ci(uri.trim_start_matches('<').trim(), "sips:") {
                        return Some((name, v));
                    }
                }
            } else {
                let lower = value.as_bytes();
                let mut i = 0;
                while let Some(off) = memchr::memmem::find(&lower[i..], b":") {
                    let at = i + off;
                    if at >= 4 && lower[at - 4..at].eq_ignore_ascii_case(b"sips") {
                        let before = at.checked_sub(5).map(|j| lower[j]);
                        if matches!(before, None | Some(b'<' | b' ' | b'\t' | b',' | b'=')) {
                            return Some((name, value));
                        }
                    }
                    i = at + 1;
                }
            }
        }
        None
    }

    pub fn has_sips_uri(&self) -> bool {
        self.find_sips_uri().is_some()
    }

    // ---- output ---------------------------------------------------------------------------

    /// Serialises the message. A Content-Length header is added when the message has none
    /// (stream transports require it, RFC 3261 §18.3).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match &self.start {
            StartLine::Request { method, uri } => {
                out.extend_from_slice(method.as_str().as_bytes());
                out.push(b' ');
                out.extend_from_slice(self.span(*uri).as_bytes());
                out.extend_from_slice(b" SIP/2.0\r\n");
            }
            StartLine::Response { status, reason } => {
                out.extend_from_slice(b"SIP/2.0 ");
                out.extend_from_slice(itoa_buf(usize::from(*status)).as_str().as_bytes());
                out.push(b' ');
                out.extend_from_slice(self.span(*reason).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        let mut has_length = false;
        for h in &self.headers {
            has_length |= h.kind == HeaderKind::ContentLength;
            out.extend_from_slice(self.span(h.name).as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(self.span(h.value).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !has_length {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa_buf(self.body.len()).as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.text.len() + self.headers.len() * 4 + self.body.len() + 64);
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Message {
    /// The message as text (a non-UTF-8 body is shown lossily).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn trim_end_at(head: &str, end: usize) -> usize {
    let mut e = end;
    let b = head.as_bytes();
    while e > 0 && matches!(b[e - 1], b' ' | b'\t') {
        e -= 1;
    }
    e
}

/// Small integer formatting without `format!`.
pub(crate) struct NumBuf {
    buf: [u8; 20],
    start: usize,
}

impl NumBuf {
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits are written into `buf[start..]`.
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

pub(crate) fn itoa_buf(mut n: usize) -> NumBuf {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    NumBuf { buf, start: i }
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    let bad = || ParseError::BadStartLine(line.chars().take(120).collect());
    if let Some(rest) = line.strip_prefix("SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let (version, rest) = rest.split_once(' ').ok_or_else(bad)?;
        if version != "2.0" {
            return Err(ParseError::BadVersion(format!("SIP/{version}")));
        }
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let status = code
            .parse::<u16>()
            .ok()
            // RFC 3261 §7.2: three digits, 1xx–6xx (`sip::status::is_valid`, which builds on
            // this module and so cannot be used here).
            .filter(|c| (100..=699).contains(c) && code.len() == 3)
            .ok_or_else(|| ParseError::BadStatus(code.to_owned()))?;
        if reason.bytes().any(|c| c < b' ' && c != b'\t') {
            return Err(bad());
        }
        // The reason span is fixed up by the caller's text offsets: start line is at offset 0.
        let start = line.len() - reason.len();
        return Ok(StartLine::Response {
            status,
            reason: Span::of(start, line.len()),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !version.starts_with("SIP/") {
        return Err(bad());
    }
    if version != "SIP/2.0" {
        return Err(ParseError::BadVersion(version.to_owned()));
    }
    let method = Method::parse(method)?;
    if uri.is_empty() {
        return Err(bad());
    }
    let start = method.as_str().len() + 1;
    Ok(StartLine::Request {
        method,
        uri: Span::of(start, start + uri.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const NOTIFY: &str = "NOTIFY sip:alice@example.org;transport=tls SIP/2.0\r\n\
Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK1a2b;ms-received-port=5061;ms-received-cid=2B00\r\n\
Max-Forwards: 69\r\n\
From: \"Joe at Contoso\" <sip:joe@contoso.com>;tag=7d3f;epid=ab12cd34ef\r\n\
To: <sip:alice@example.org>;tag=99\r\n\
Call-ID: 3f2a9c@example.org\r\n\
CSeq: 2 NOTIFY\r\n\
Event: presence\r\n\
Subscription-State: active;expires=3600\r\n\
ms-keep-alive: UAC;hop-hop=yes\r\n\
Content-Type: application/pidf+xml\r\n\
Content-Length: 4\r\n\
\r\n\
body";

    #[test]
    fn parses_and_reemits_notify() {
        let m = Message::parse(NOTIFY.as_bytes()).unwrap();
        assert_eq!(m.method(), Some(&Method::Notify));
        assert_eq!(m.request_uri(), Some("sip:alice@example.org;transport=tls"));
        assert_eq!(m.call_id().unwrap(), "3f2a9c@example.org");
        assert_eq!(m.cseq().unwrap().number, 2);
        assert_eq!(m.from().unwrap().epid(), Some("ab12cd34ef"));
        assert_eq!(m.to().unwrap().tag(), Some("99"));
        assert_eq!(m.header("MS-KEEP-ALIVE"), Some("UAC;hop-hop=yes"));
        assert_eq!(
            m.subscription_state().unwrap().unwrap().expires(),
            Some(3600)
        );
        assert_eq!(m.body(), b"body");
        assert_eq!(m.to_bytes(), NOTIFY.as_bytes());
    }

    #[test]
    fn compact_forms_folding_and_comma_lists() {
        let raw = "INVITE sip:joe@contoso.com SIP/2.0\r\n\
v: SIP/2.0/TLS a.example.org;branch=z9hG4bK1, SIP/2.0/TLS b.example.org:5061;branch=z9hG4bK2\r\n\
V: SIP/2.0/TLS c.example.org;branch=z9hG4bK3\r\n\
f: <sip:alice@example.org>;tag=1\r\n\
t: <sip:joe@contoso.com>\r\n\
i: abc\r\n\
CSeq: 1\r\n  INVITE\r\n\
m: <sip:alice@192.0.2.1:5061;transport=tls>\r\n\
Record-Route: <sip:p1.example.org;lr>,<sip:p2.example.org;lr>\r\n\
Subject: hello,\r\n\tworld\r\n\
l: 0\r\n\r\n";
        let m = Message::parse(raw.as_bytes()).unwrap();
        let hosts: Vec<_> = m.via().unwrap().iter().map(|v| v.host).collect();
        assert_eq!(
            hosts,
            vec!["a.example.org", "b.example.org", "c.example.org"]
        );
        assert_eq!(m.cseq().unwrap().method, Method::Invite);
        assert_eq!(m.header("subject"), Some("hello, world"));
        assert_eq!(m.record_route().unwrap().len(), 2);
        assert_eq!(m.content_length().unwrap(), Some(0));
        let again = Message::parse(&m.to_bytes()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn responses_and_extension_methods() {
        let raw = "SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 5 BENOTIFY\r\nContent-Length: 0\r\n\r\n";
        let m = Message::parse(raw.as_bytes()).unwrap();
        assert_eq!((m.status(), m.reason()), (Some(200), Some("OK")));
        assert_eq!(m.cseq().unwrap().method, Method::Benotify);
        let raw = raw
            .replace("SIP/2.0 200 OK", "SIP/2.0 480 ")
            .replace("BENOTIFY", "X-PING");
        let m = Message::parse(raw.as_bytes()).unwrap();
        assert_eq!((m.status(), m.reason()), (Some(480), Some("")));
        assert_eq!(m.cseq().unwrap().method, Method::Other("X-PING".into()));
    }

    #[test]
    fn errors_name_the_problem() {
        let base = "BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
        let cases: Vec<(String, &str)> = vec![
            (
                base.replace("1 BYE", "1 INVITE"),
                "CSeq method \"INVITE\" does not match request method \"BYE\"",
            ),
            (base.replace("Call-ID: x\r\n", ""), "missing Call-ID header"),
            (
                base.replace("To: <sip:c@d>\r\n", "To: <sip:c@d>\r\nt: <sip:e@f>\r\n"),
                "more than one To header",
            ),
            (
                base.replace("SIP/2.0\r\nVia", "SIP/3.0\r\nVia"),
                "unsupported protocol version \"SIP/3.0\" (expected SIP/2.0)",
            ),
            (
                base.replace("BYE sip", "B\"YE sip"),
                "invalid method token \"B\\\"YE\"",
            ),
            (
                base.replace("Call-ID: x", "Call-ID x"),
                "header line 5 has no colon: \"Call-ID x\"",
            ),
            (
                base.replace("Content-Length: 0", "Content-Length: 10"),
                "Content-Length 10 is larger than the 0 body bytes present",
            ),
            (
                base.replace("Content-Length: 0", "Content-Length: zero"),
                "invalid Content-Length header \"zero\": not a number",
            ),
            (
                base.replace("To: <sip:c@d>", "To: <c@d>"),
                "invalid To header \"<c@d>\": invalid URI \"c@d\": no scheme",
            ),
            (
                base.replace("Via: SIP/2.0/TLS h;branch=z9hG4bK1\r\n", ""),
                "missing Via header",
            ),
            (
                base.replace("\r\n\r\n", "\r\n"),
                "header section is not terminated by an empty line",
            ),
            ("SIP/2.0 20 OK\r\n\r\n".into(), "invalid status code \"20\""),
            (
                base.replace("Call-ID: x", "Call-ID: x\ny"),
                "header line 5 contains a bare CR, LF or NUL",
            ),
            (
                base.replace("Call-ID: x", "Call-ID: x\u{1}y"),
                "header line 5 contains the control character U+0001",
            ),
            (
                base.replace("To: <sip:c@d>", "To: \"\u{1b}[2J\" <sip:c@d>"),
                "header line 4 contains the control character U+001B",
            ),
            (
                base.replace("BYE sip:a@b", "BYE sip:a\u{7f}@b"),
                "header line 1 contains the control character U+007F",
            ),
            (
                format!(" {base}"),
                "malformed start line \" BYE sip:a@b SIP/2.0\"",
            ),
            (
                "hello world\r\n\r\n".into(),
                "malformed start line \"hello world\"",
            ),
        ];
        for (raw, msg) in cases {
            assert_eq!(
                Message::parse(raw.as_bytes()).unwrap_err().to_string(),
                msg,
                "{raw}"
            );
        }
        let big = format!("{base}{}", "");
        let limits = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        assert_eq!(
            Message::parse_with_limits(big.as_bytes(), &limits).unwrap_err(),
            ParseError::TooManyHeaders(3)
        );
    }

    #[test]
    fn only_sp_and_htab_are_trimmed_from_values() {
        let raw = NOTIFY.replace("ms-keep-alive: UAC", "ms-keep-alive:\u{3000}UAC");
        let m = Message::parse(raw.as_bytes()).unwrap();
        assert_eq!(m.header("ms-keep-alive"), Some("\u{3000}UAC;hop-hop=yes"));
        assert_eq!(Message::parse(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn supported_option_tags_across_lines_and_lists() {
        let raw = NOTIFY.replace(
            "Event: presence\r\n",
            "Event: presence\r\nSupported: ms-benotify, ms-piggyback-first-notify\r\nk: MS-Sender\r\n",
        );
        let m = Message::parse(raw.as_bytes()).unwrap();
        assert!(m.supports("ms-piggyback-first-notify"));
        assert!(m.supports("ms-sender"));
        assert!(!m.supports("timer"));
        assert_eq!(m.supported().count(), 3);
    }

    #[test]
    fn folding_onto_an_empty_first_line() {
        let raw = NOTIFY.replace("Event: presence", "Event:\r\n  presence\r\n\t;id=1");
        let m = Message::parse(raw.as_bytes()).unwrap();
        assert_eq!(m.header("event"), Some("presence ;id=1"));
        assert_eq!(m.event().unwrap().unwrap().id(), Some("1"));
        assert_eq!(Message::parse(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn finds_sips_anywhere() {
        let base = "MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 MESSAGE\r\nSubject: sips: are fine in text\r\n\r\n";
        let m = Message::parse(base.as_bytes()).unwrap();
        assert_eq!(m.find_sips_uri(), None);
        for (from, to, place) in [
            ("MESSAGE sip:a@b", "MESSAGE sips:a@b", "Request-URI"),
            ("From: <sip:a@b>", "From: <SIPS:a@b>", "From"),
            (
                "Call-ID: x\r\n",
                "Call-ID: x\r\nRecord-Route: <sip:p;lr>, <sips:q;lr>\r\n",
                "Record-Route",
            ),
            (
                "Call-ID: x\r\n",
                "Call-ID: x\r\nX-Thing: foo <sips:x@y>\r\n",
                "X-Thing",
            ),
            (
                "Call-ID: x\r\n",
                "Call-ID: x\r\nAlert-Info: sips:x@y\r\n",
                "Alert-Info",
            ),
        ] {
            let m = Message::parse(base.replace(from, to).as_bytes()).unwrap();
            assert_eq!(m.find_sips_uri().map(|f| f.0), Some(place), "{to}");
        }
    }

    #[test]
    fn the_line_scan_finds_a_control_character_at_every_position() {
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 64, 100] {
            let value = "a\tb".repeat(len);
            let raw = |v: &[u8]| {
                let mut r = b"BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 BYE\r\nX-Long: ".to_vec();
                r.extend_from_slice(v);
                r.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
                r
            };
            assert!(Message::parse(&raw(value.as_bytes())).is_ok());
            for at in 0..value.len() {
                for (bad, expected) in [
                    (0u8, ParseError::ControlCharacter(7)),
                    (b'\r', ParseError::ControlCharacter(7)),
                    (b'\n', ParseError::ControlCharacter(7)),
                    (1, ParseError::ForbiddenControl { line: 7, byte: 1 }),
                    (
                        0x1f,
                        ParseError::ForbiddenControl {
                            line: 7,
                            byte: 0x1f,
                        },
                    ),
                    (
                        0x7f,
                        ParseError::ForbiddenControl {
                            line: 7,
                            byte: 0x7f,
                        },
                    ),
                ] {
                    let mut v = value.clone().into_bytes();
                    v[at] = bad;
                    assert_eq!(
                        Message::parse(&raw(&v)).unwrap_err(),
                        expected,
                        "len {len} at {at} byte {bad}"
                    );
                }
            }
        }
    }

    #[test]
    fn edits_that_would_change_the_shape_are_refused() {
        type Edit = Box<dyn Fn(&mut Message)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|m| m.push_header("Subject", "hi\r\nX-Evil: 1")),
                "Subject refused: control character U+000D at byte 2",
            ),
            (
                Box::new(|m| m.push_header("Subject", "hi\nX-Evil: 1")),
                "Subject refused: control character U+000A at byte 2",
            ),
            (
                Box::new(|m| m.push_header("Subject", "nul\u{0}")),
                "Subject refused: control character U+0000 at byte 3",
            ),
            (
                Box::new(|m| m.prepend_header("Via", "SIP/2.0/TLS h\u{1b}")),
                "Via refused: control character U+001B at byte 13",
            ),
            (
                Box::new(|m| m.set_header("Content-Language", "en\r\n")),
                "Content-Language refused: control character U+000D at byte 2",
            ),
            (
                Box::new(|m| m.push_header("X-Evil: 1\r\nSubject", "x")),
                "header name \"X-Evil: 1\\r\\nSubject\" is not a token",
            ),
            (
                Box::new(|m| m.set_request_uri("sip:a@b SIP/2.0\r\nX: y")),
                "Request-URI refused: control character U+000D at byte 15",
            ),
            (
                Box::new(|m| m.set_request_uri("sip:a@b x")),
                "Request-URI \"sip:a@b x\" contains white space",
            ),
        ];
        for (edit, expected) in cases {
            let mut m = Message::parse(NOTIFY.as_bytes()).unwrap();
            let before = m.to_bytes();
            edit(&mut m);
            assert_eq!(
                m.header_error().map(ToString::to_string).as_deref(),
                Some(expected)
            );
            assert_eq!(m.to_bytes(), before, "nothing of a refused edit is written");
            // The first refusal is kept; later good edits still apply.
            m.push_header("X-Good", "1");
            assert_eq!(
                m.header_error().map(ToString::to_string).as_deref(),
                Some(expected)
            );
            assert_eq!(m.header("X-Good"), Some("1"));
        }
        let r = Message::new_response(400, "Bad\r\nX: y");
        assert_eq!(
            r.header_error().map(ToString::to_string).as_deref(),
            Some("reason phrase refused: control character U+000D at byte 3")
        );
        assert_eq!(
            Message::new_request(Method::Bye, "sip:a@b").header_error(),
            None
        );
        assert_eq!(
            Message::new_request(Method::Other("BYE sip:x SIP/2.0\r\n".into()), "sip:a@b")
                .header_error()
                .map(ToString::to_string)
                .as_deref(),
            Some("method \"BYE sip:x SIP/2.0\\r\\n\" is not a token")
        );
        assert!(
            Message::new_request(Method::Bye, "")
                .header_error()
                .is_some()
        );
        // Tabs, UTF-8 and noncharacters are fine in values (RFC 3261 §25.1 UTF8-NONASCII).
        let mut m = Message::new_request(Method::Message, "sip:a@b");
        m.push_header("Subject", "a\tb é \u{FFFE}");
        assert_eq!(m.header_error(), None);
    }

    #[test]
    fn a_request_that_does_not_parse_is_salvaged_for_its_answer() {
        let base = "INVITE sip:alice@example.org SIP/2.0\r\n\
Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK1\r\n\
v: SIP/2.0/TLS 192.0.2.2:5061;branch=z9hG4bK2\r\n\
From: <sip:joe@contoso.com>;tag=1\r\n\
To: <sip:alice@example.org>\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";
        let salvaged = |raw: &[u8]| {
            Message::salvage_request(raw).map(|m| {
                let headers: Vec<String> = m.headers().map(|(n, v)| format!("{n}: {v}")).collect();
                headers.join("|")
            })
        };
        let expected = "Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK1|\
v: SIP/2.0/TLS 192.0.2.2:5061;branch=z9hG4bK2|From: <sip:joe@contoso.com>;tag=1|\
To: <sip:alice@example.org>|Call-ID: c1|CSeq: 1 INVITE";
        // Bare LF line ends, a line that is not UTF-8, a control character elsewhere, or in a
        // header the answer copies (dropped from the copy).
        let bare_lf = base.replace("Call-ID: c1\r\n", "Call-ID: c1\n");
        let mut not_utf8 = base
            .replace("Content-Length", "X-Junk: \u{1}\r\nContent-Length")
            .into_bytes();
        let at = not_utf8.len() - 10;
        not_utf8.splice(at..at, [0xFF, 0xFE]);
        let control = base.replace("From: <sip", "From: \u{1b}<sip");
        // A Request-URI that cannot be written: the answer does not carry it.
        let bad_uri = base.replace("INVITE sip:alice@", "INVITE sip:ali\u{1}ce@");
        for raw in [
            base.as_bytes(),
            bare_lf.as_bytes(),
            &not_utf8,
            control.as_bytes(),
            bad_uri.as_bytes(),
        ] {
            assert_eq!(salvaged(raw).as_deref(), Some(expected));
        }
        // A needed header missing or unreadable, a response, an ACK: nothing to answer.
        for raw in [
            base.replace("From: <sip", "From: \u{1b}sip"),
            base.replace("Call-ID: c1\r\n", ""),
            base.replace("INVITE sip:alice@example.org SIP/2.0", "SIP/2.0 200 OK"),
            base.replace("INVITE sip:", "ACK sip:")
                .replace("1 INVITE", "1 ACK"),
            base.replace("SIP/2.0\r\n", "SIP/2.0 x\r\n"),
        ] {
            assert_eq!(salvaged(raw.as_bytes()), None, "{raw}");
        }
    }

    #[test]
    fn edits() {
        let mut m = Message::parse(NOTIFY.as_bytes()).unwrap();
        m.prepend_header("Via", "SIP/2.0/TLS edge.example.org:5061;branch=z9hG4bKnew");
        assert_eq!(m.top_via().unwrap().host, "edge.example.org");
        m.set_header("max-forwards", "68");
        assert_eq!(m.max_forwards().unwrap(), Some(68));
        assert_eq!(m.remove_header("MS-Keep-Alive"), 1);
        m.set_body(Some("text/plain"), b"hi".to_vec());
        let again = Message::parse(&m.to_bytes()).unwrap();
        assert_eq!(again.body(), b"hi");
        assert_eq!(again.header("Content-Length"), Some("2"));
        assert_eq!(again.header("ms-keep-alive"), None);
        assert_eq!(again, m);
    }
}
