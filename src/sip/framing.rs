//! Incremental framing of SIP messages on a stream transport (TLS): RFC 3261 §18.3 (framing by
//! Content-Length, which is mandatory on streams) and RFC 5626 §4.4.1 (CRLF keep-alive: a
//! double CRLF "ping" is answered with a single CRLF "pong").
//!
//! [`Framer`] buffers at most one header section plus one body (bounded by [`Limits`]) and never
//! panics. Errors that make the stream unusable ([`FrameError`]) poison it: the connection must
//! be closed. A message that is framed correctly but does not parse is reported as
//! [`Frame::Invalid`], and the stream goes on.

use thiserror::Error;

use super::error::ParseError;
use super::message::{Limits, Message, head_end};

/// One event cut from the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A complete, valid message.
    Message(Message),
    /// A complete message that failed to parse or validate. `message` is its structure when
    /// that much parsed, or else what [`Message::salvage_request`] could read of a request, so
    /// a server can still answer `400` (or `513`) with the reason.
    Invalid {
        error: ParseError,
        message: Option<Box<Message>>,
    },
    /// RFC 5626 ping (`CRLF CRLF`): answer with [`PONG`].
    Ping,
    /// RFC 5626 pong (a single `CRLF`).
    Pong,
}

/// What a pong looks like on the wire.
pub const PONG: &[u8] = b"\r\n";
/// What a ping looks like on the wire.
pub const PING: &[u8] = b"\r\n\r\n";

/// Errors after which the stream cannot be framed any more; close the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("header section exceeds {0} bytes")]
    HeadTooLarge(usize),
    #[error("Content-Length {len} exceeds the body limit of {limit} bytes")]
    BodyTooLarge { len: usize, limit: usize },
    #[error("message has no Content-Length (required on stream transports)")]
    MissingContentLength,
    #[error("invalid Content-Length {0:?}")]
    BadContentLength(String),
    #[error("not SIP: {0:?}")]
    Garbage(String),
    #[error("stream already failed")]
    Poisoned,
}

/// The incremental decoder: feed bytes with [`Framer::push`], then call [`Framer::next_frame`]
/// until it returns `Ok(None)`.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    limits: Limits,
    /// Where to resume the search for the end of the header section.
    scanned: usize,
    /// `(head_len, body_len)` of the message being received, once its head is complete.
    pending: Option<(usize, usize)>,
    expect_pong: bool,
    poisoned: bool,
}

impl Framer {
    pub fn new(limits: Limits) -> Framer {
        Framer {
            buf: Vec::new(),
            limits,
            scanned: 0,
            pending: None,
            expect_pong: false,
            poisoned: false,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if !self.poisoned {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Tells the framer a ping was sent, so that a lone CRLF is reported as a pong at once
    /// (otherwise it might be the first half of a ping).
    pub fn expect_pong(&mut self) {
        self.expect_pong = true;
    }

    fn fail(&mut self, e: FrameError) -> Result<Option<Frame>, FrameError> {
        self.poisoned = true;
        self.buf = Vec::new();
        Err(e)
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        if self.pending.is_none() {
            // Between messages: keep-alives.
            if self.buf.starts_with(PING) {
                self.consume(4);
                return Ok(Some(Frame::Ping));
            }
            if self.buf.starts_with(PONG)
                && (self.buf.len() > 2 && self.buf[2] != b'\r' || self.expect_pong)
            {
                self.expect_pong = false;
                self.consume(2);
                return Ok(Some(Frame::Pong));
            }
            if self.buf.starts_with(b"\r") && self.buf.len() < 4 {
                return Ok(None);
            }
            let search_from = self.scanned.saturating_sub(3);
            match head_end(&self.buf[search_from..]) {
                Some(e) => {
                    let head_len = search_from + e;
                    if head_len > self.limits.max_head_bytes {
                        return self.fail(FrameError::HeadTooLarge(self.limits.max_head_bytes));
                    }
                    if let Err(e) = check_start_line(&self.buf) {
                        return self.fail(e);
                    }
                    let body_len = match content_length(&self.buf[..head_len]) {
                        Ok(n) => n,
                        Err(e) => return self.fail(e),
                    };
                    if body_len > self.limits.max_body_bytes {
                        return self.fail(FrameError::BodyTooLarge {
                            len: body_len,
                            limit: self.limits.max_body_bytes,
                        });
                    }
                    self.pending = Some((head_len, body_len));
                }
                None => {
                    self.scanned = self.buf.len();
                    if self.buf.len() > self.limits.max_head_bytes {
                        return self.fail(FrameError::HeadTooLarge(self.limits.max_head_bytes));
                    }
                    // Reject binary junk early instead of buffering 16 KiB of it.
                    if let Some(line_end) = memchr::memchr(b'\n', &self.buf) {
                        if let Err(e) = check_start_line(&self.buf[..=line_end]) {
                            return self.fail(e);
                        }
                    }
                    return Ok(None);
                }
            }
        }
        let Some((head_len, body_len)) = self.pending else {
            return Ok(None);
        };
        let total = head_len + body_len;
        if self.buf.len() < total {
            return Ok(None);
        }
        let frame = match Message::parse_structure(&self.buf[..total], &self.limits) {
            Ok(m) => match m.validate() {
                Ok(()) => Frame::Message(m),
                Err(error) => Frame::Invalid {
                    error,
                    message: Some(Box::new(m)),
                },
            },
            Err(error) => Frame::Invalid {
                error,
                message: Message::salvage_request(&self.buf[..head_len]).map(Box::new),
            },
        };
        self.pending = None;
        self.consume(total);
        Ok(Some(frame))
    }

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.scanned = 0;
    }
}

/// The start line must look like SIP (`… SIP/2.0` or `SIP/2.0 …`), else the peer is not
/// speaking SIP and the connection is closed.
fn check_start_line(buf: &[u8]) -> Result<(), FrameError> {
    let end = memchr::memchr(b'\n', buf).unwrap_or(buf.len());
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let looks_sip = line.starts_with(b"SIP/")
        || line
            .rsplit(|c| *c == b' ')
            .next()
            .is_some_and(|v| v.starts_with(b"SIP/"));
    if looks_sip && line.iter().all(|c| *c >= b' ' || *c == b'\t') {
        Ok(())
    } else {
        Err(FrameError::Garbage(
            String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned(),
        ))
    }
}

/// Finds Content-Length (or `l`) in a header section. Several lines must agree.
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    let mut found: Option<usize> = None;
    for line in head.split(|c| *c == b'\n').skip(1) {
        // A continuation line (SP/HTAB first) belongs to the previous header, as in
        // `Message::parse`; the two must agree on where a message ends.
        if line.first().is_some_and(|c| *c == b' ' || *c == b'\t') {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = trim(&line[..colon]);
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let value = trim(&line[colon + 1..]);
            let text = String::from_utf8_lossy(value);
            let n =
                if !value.is_empty() && value.len() <= 10 && value.iter().all(u8::is_ascii_digit) {
                    text.parse::<usize>()
                        .map_err(|_| FrameError::BadContentLength(text.to_string()))?
                } else {
                    return Err(FrameError::BadContentLength(text.into_owned()));
                };
            if found.is_some_and(|f| f != n) {
                return Err(FrameError::BadContentLength(format!(
                    "{} and {n} in one message",
                    found.unwrap_or_default()
                )));
            }
            found = Some(n);
        }
    }
    found.ok_or(FrameError::MissingContentLength)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &str = "MESSAGE sip:alice@example.org SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:joe@contoso.com>;tag=1\r\nTo: <sip:alice@example.org>;tag=2\r\nCall-ID: c1\r\nCSeq: 3 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";

    fn drain(f: &mut Framer) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(fr) = f.next_frame().unwrap() {
            out.push(fr);
        }
        out
    }

    #[test]
    fn frames_byte_by_byte_and_in_one_go() {
        let stream = format!("\r\n\r\n{MSG}{MSG}\r\n\r\n");
        let mut f = Framer::new(Limits::default());
        let mut frames = Vec::new();
        for b in stream.as_bytes() {
            f.push(&[*b]);
            frames.extend(drain(&mut f));
        }
        let mut g = Framer::new(Limits::default());
        g.push(stream.as_bytes());
        assert_eq!(frames, drain(&mut g));
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0], Frame::Ping);
        assert!(matches!(&frames[1], Frame::Message(m) if m.body() == b"hello"));
        assert!(matches!(&frames[2], Frame::Message(_)));
        assert_eq!(frames[3], Frame::Ping);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn pong_when_expected_or_followed_by_a_message() {
        let mut f = Framer::new(Limits::default());
        f.push(b"\r\n");
        assert_eq!(f.next_frame().unwrap(), None);
        f.expect_pong();
        assert_eq!(f.next_frame().unwrap(), Some(Frame::Pong));
        f.push(format!("\r\n{MSG}").as_bytes());
        assert_eq!(f.next_frame().unwrap(), Some(Frame::Pong));
        assert!(matches!(f.next_frame().unwrap(), Some(Frame::Message(_))));
    }

    #[test]
    fn invalid_message_keeps_stream_going() {
        let bad = MSG.replace("3 MESSAGE", "3 INVITE");
        let mut f = Framer::new(Limits::default());
        f.push(format!("{bad}{MSG}").as_bytes());
        match f.next_frame().unwrap() {
            Some(Frame::Invalid { error, message }) => {
                assert_eq!(
                    error.to_string(),
                    "CSeq method \"INVITE\" does not match request method \"MESSAGE\""
                );
                assert_eq!(message.unwrap().call_id().unwrap(), "c1");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(f.next_frame().unwrap(), Some(Frame::Message(_))));
    }

    #[test]
    fn unparsable_requests_come_with_what_an_answer_needs() {
        let limits = Limits {
            max_headers: 8,
            ..Limits::default()
        };
        let cases = [
            (MSG.replace("Call-ID: c1\r\n", "Call-ID: c1\n"), 400),
            (
                MSG.replace("Content-Type", "X-A: \u{1}\r\nContent-Type"),
                400,
            ),
            (
                MSG.replace("Content-Type", "X-A: 1\r\nX-B: 2\r\nContent-Type"),
                513,
            ),
        ];
        for (raw, status) in cases {
            let mut f = Framer::new(limits);
            f.push(raw.as_bytes());
            f.push(MSG.as_bytes());
            match f.next_frame().unwrap() {
                Some(Frame::Invalid { error, message }) => {
                    assert_eq!(error.status(), status, "{error}");
                    assert_eq!(message.unwrap().call_id().unwrap(), "c1");
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(f.next_frame().unwrap(), Some(Frame::Message(_))));
        }
    }

    #[test]
    fn fatal_errors() {
        let limits = Limits {
            max_head_bytes: 300,
            max_body_bytes: 4,
            max_headers: 128,
        };
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (
                MSG.as_bytes().to_vec(),
                FrameError::BodyTooLarge { len: 5, limit: 4 },
            ),
            (
                MSG.replace("Content-Length: 5\r\n", "").into_bytes(),
                FrameError::MissingContentLength,
            ),
            (
                MSG.replace("Content-Length: 5", "Content-Length: -5")
                    .into_bytes(),
                FrameError::BadContentLength("-5".into()),
            ),
            (
                MSG.replace("Content-Length: 5", "Content-Length: 1\r\nl: 2")
                    .into_bytes(),
                FrameError::BadContentLength("1 and 2 in one message".into()),
            ),
            (
                format!("MESSAGE sip:a SIP/2.0\r\nX: {}", "y".repeat(400)).into_bytes(),
                FrameError::HeadTooLarge(300),
            ),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n".to_vec(),
                FrameError::Garbage("\u{16}\u{3}\u{1}\u{2}\0\u{1}\0\u{1}\u{fffd}\u{3}\u{3}".into()),
            ),
            (
                b"GET / HTTP/1.1\r\n".to_vec(),
                FrameError::Garbage("GET / HTTP/1.1".into()),
            ),
        ];
        for (input, expected) in cases {
            let mut f = Framer::new(limits);
            f.push(&input);
            assert_eq!(f.next_frame(), Err(expected));
            assert_eq!(f.next_frame(), Err(FrameError::Poisoned));
            assert_eq!(f.buffered(), 0);
        }
    }
}
