//! SIP status codes by name (RFC 3261 §21, RFC 6665 §8.3.1, RFC 3265 §7.3.2), and [`Reject`]:
//! every refusal the bridge answers with is built by it, so a status, its reason phrase, its
//! `Retry-After` (RFC 3261 §20.33), any header it needs (`Accept`, `Allow-Events`,
//! `Min-Expires`, `Warning`) and a body describing what would be accepted (the SDP offer of a
//! `488`, RFC 3261 §21.4.26) reach the wire one way. The decisions that refuse return a
//! `Reject` or a type that becomes one ([`crate::sip::error::ParseError`] here, the edge's
//! admission `Refusal`).

use std::time::Duration;

use super::error::ParseError;
use super::message::Message;

pub const TRYING: u16 = 100;
pub const OK: u16 = 200;
pub const ACCEPTED: u16 = 202;
pub const BAD_REQUEST: u16 = 400;
pub const FORBIDDEN: u16 = 403;
pub const NOT_FOUND: u16 = 404;
pub const METHOD_NOT_ALLOWED: u16 = 405;
pub const NOT_ACCEPTABLE: u16 = 406;
pub const REQUEST_TIMEOUT: u16 = 408;
pub const REQUEST_ENTITY_TOO_LARGE: u16 = 413;
pub const UNSUPPORTED_MEDIA_TYPE: u16 = 415;
pub const UNSUPPORTED_URI_SCHEME: u16 = 416;
pub const BAD_EXTENSION: u16 = 420;
pub const INTERVAL_TOO_BRIEF: u16 = 423;
pub const TEMPORARILY_UNAVAILABLE: u16 = 480;
pub const CALL_DOES_NOT_EXIST: u16 = 481;
pub const LOOP_DETECTED: u16 = 482;
pub const TOO_MANY_HOPS: u16 = 483;
pub const BUSY_HERE: u16 = 486;
pub const REQUEST_TERMINATED: u16 = 487;
pub const NOT_ACCEPTABLE_HERE: u16 = 488;
pub const BAD_EVENT: u16 = 489;
pub const REQUEST_PENDING: u16 = 491;
pub const SERVER_INTERNAL_ERROR: u16 = 500;
pub const NOT_IMPLEMENTED: u16 = 501;
pub const SERVICE_UNAVAILABLE: u16 = 503;
pub const MESSAGE_TOO_LARGE: u16 = 513;
pub const DECLINE: u16 = 603;

/// Whether a status code is one a response may carry (RFC 3261 §7.2: three digits, 1xx–6xx).
pub fn is_valid(status: u16) -> bool {
    (100..=699).contains(&status)
}

/// Whether a status is final (not 1xx, RFC 3261 §7.2).
pub fn is_final(status: u16) -> bool {
    status >= OK
}

/// Whether a status is a success (2xx).
pub fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Whether a status is a final answer other than success (3xx–6xx).
pub fn is_failure(status: u16) -> bool {
    status >= 300
}

/// A final answer that refuses a request: the status, its reason phrase (the standard one if
/// `None`), how long the peer should wait before trying again, and the headers it must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: Option<String>,
    /// `Retry-After` in seconds (RFC 3261 §20.33), for 503 and 480.
    pub retry_after: Option<u32>,
    pub headers: Vec<(&'static str, String)>,
    /// A body (content type, bytes), e.g. what the refused request would have needed.
    pub body: Option<(&'static str, Vec<u8>)>,
}

impl Reject {
    pub fn new(status: u16) -> Reject {
        Reject {
            status,
            reason: None,
            retry_after: None,
            headers: Vec::new(),
            body: None,
        }
    }

    /// With this reason phrase (made safe for the status line when written).
    pub fn reason(mut self, reason: impl Into<String>) -> Reject {
        self.reason = Some(reason.into());
        self
    }

    /// With `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u32) -> Reject {
        self.retry_after = Some(secs);
        self
    }

    /// With this header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reject {
        self.headers.push((name, value.into()));
        self
    }

    /// With this body.
    pub fn body(mut self, content_type: &'static str, bytes: Vec<u8>) -> Reject {
        self.body = Some((content_type, bytes));
        self
    }

    /// The response to `request` ([`Message::response_to`]) carrying it.
    pub fn response_to(&self, request: &Message, to_tag: Option<&str>) -> Message {
        let mut r = Message::response_to(request, self.status, self.reason.as_deref(), to_tag);
        self.add_headers(&mut r);
        r
    }

    /// Goes out instead of `response`, which must not ([`Message::with_status`]: a 2xx whose
    /// change was not kept, or whose stanza the XMPP side could not take).
    pub fn instead_of(&self, response: &Message) -> Message {
        let reason = self
            .reason
            .clone()
            .unwrap_or_else(|| super::builder::reason_phrase(self.status).to_owned());
        let mut r = response.with_status(self.status, &reason);
        self.add_headers(&mut r);
        r
    }

    fn add_headers(&self, r: &mut Message) {
        if let Some(secs) = self.retry_after {
            r.push_header("Retry-After", &secs.to_string());
        }
        for (name, value) in &self.headers {
            r.push_header(name, value);
        }
        if let Some((content_type, bytes)) = &self.body {
            r.set_body(Some(content_type), bytes.clone());
        }
    }
}

impl ParseError {
    /// The SIP status a server answers a request with when it fails to parse with this error
    /// (RFC 3261 §21): oversize messages get 513, everything else 400. (Here rather than in
    /// `sip::error`, which the codec below this module uses.)
    pub fn status(&self) -> u16 {
        match self {
            ParseError::HeadTooLarge(_)
            | ParseError::BodyTooLarge { .. }
            | ParseError::TooManyHeaders(_) => MESSAGE_TOO_LARGE,
            _ => BAD_REQUEST,
        }
    }
}

/// A request that fails to parse is answered with its status ([`ParseError::status`]) and
/// the error as the reason phrase.
impl From<&ParseError> for Reject {
    fn from(e: &ParseError) -> Reject {
        Reject::new(e.status()).reason(e.to_string())
    }
}

/// The longest a peer's `Retry-After` is honoured (a larger value is read as this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The delay a `Retry-After` header value asks for (RFC 3261 §20.33: `delta-seconds`, then an
/// optional comment and parameters), capped at [`MAX_RETRY_AFTER`]; `None` when absent or not
/// a number.
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    let v = value?.trim_start();
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    // Over 10 digits is past the cap anyway (and would not fit).
    let secs: u64 = v[..digits.min(10)].parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn retry_after_values_are_read_and_capped() {
        assert_eq!(retry_after(Some("120")), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after(Some(" 18000 (maintenance);duration=3600")),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            retry_after(Some("99999999999999999999")),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_after(Some("0")), Some(Duration::ZERO));
        assert_eq!(retry_after(Some("soon")), None);
        assert_eq!(retry_after(None), None);
    }

    fn invite() -> Message {
        Message::parse(
            b"MESSAGE sip:alice@example.org SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bK1\r\nFrom: <sip:bob@contoso.com>;tag=a\r\nTo: <sip:alice@example.org>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap()
    }

    #[test]
    fn a_reject_carries_its_status_reason_retry_after_and_headers() {
        let r = Reject::new(SERVICE_UNAVAILABLE)
            .reason("Busy\r\nX: injected")
            .retry_after(600)
            .header("Warning", "399 sip.example.org \"limit\"")
            .response_to(&invite(), Some("t"));
        assert_eq!(r.status(), Some(503));
        assert_eq!(r.reason(), Some("Busy X: injected"));
        assert_eq!(r.header("Retry-After"), Some("600"));
        assert!(r.header("Warning").is_some());
        assert!(r.to().unwrap().tag() == Some("t"));
    }

    #[test]
    fn a_reject_may_carry_a_body_and_a_parse_error_becomes_one() {
        let r = Reject::new(NOT_ACCEPTABLE_HERE)
            .body("application/sdp", b"v=0\r\n".to_vec())
            .response_to(&invite(), Some("t"));
        assert_eq!(r.header("Content-Type"), Some("application/sdp"));
        assert_eq!(r.body(), b"v=0\r\n");
        let e = ParseError::TooManyHeaders(200);
        let r = Reject::from(&e);
        assert_eq!(
            (r.status, r.reason),
            (MESSAGE_TOO_LARGE, Some(e.to_string()))
        );
    }

    #[test]
    fn instead_of_keeps_the_dialog_headers_and_drops_the_body_headers() {
        let mut ok = Message::response_to(&invite(), OK, None, Some("t"));
        ok.push_header("Contact", "<sip:alice@sip.example.org>");
        let r = Reject::new(SERVER_INTERNAL_ERROR).instead_of(&ok);
        assert_eq!(r.status(), Some(500));
        assert_eq!(r.reason(), Some("Server Internal Error"));
        assert!(r.header("Contact").is_none());
        assert_eq!(r.to().unwrap().tag(), Some("t"));
    }
}
