//! Typed errors of the SIP codec. Every message names what is wrong, so that it can go into a
//! `400` reason phrase, a log line or the CLI's one-line error.

use thiserror::Error;

/// Why a SIP message (or a part of one) could not be parsed (RFC 3261 §7, §25).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("header section is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
    #[error("header section is not terminated by an empty line")]
    Unterminated,
    #[error("malformed start line {0:?}")]
    BadStartLine(String),
    #[error("unsupported protocol version {0:?} (expected SIP/2.0)")]
    BadVersion(String),
    #[error("invalid method token {0:?}")]
    BadMethod(String),
    #[error("invalid status code {0:?}")]
    BadStatus(String),
    #[error("header line {line} has no colon: {text:?}")]
    NoColon { line: usize, text: String },
    #[error("invalid header name {0:?}")]
    BadHeaderName(String),
    #[error("header line {0} contains a bare CR, LF or NUL")]
    ControlCharacter(usize),
    #[error("header line {line} contains the control character U+{byte:04X}")]
    ForbiddenControl { line: usize, byte: u8 },
    #[error("continuation line {0} does not follow a header")]
    FoldWithoutHeader(usize),
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("more than one {0} header")]
    Duplicate(&'static str),
    #[error("invalid {header} header {value:?}: {reason}")]
    BadHeader {
        header: &'static str,
        value: String,
        reason: String,
    },
    #[error("CSeq method {cseq:?} does not match request method {method:?}")]
    CSeqMethodMismatch { cseq: String, method: String },
    #[error("invalid URI {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("Content-Length {declared} is larger than the {present} body bytes present")]
    BodyTruncated { declared: usize, present: usize },
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("header section is larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("body of {len} bytes is larger than the limit of {limit} bytes")]
    BodyTooLarge { len: usize, limit: usize },
}

impl ParseError {
    pub(crate) fn header(header: &'static str, value: &str, reason: impl Into<String>) -> Self {
        ParseError::BadHeader {
            header,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn uri(uri: &str, reason: impl Into<String>) -> Self {
        ParseError::BadUri {
            uri: uri.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Why the bridge refused to write a header line (or the start line) of a message it builds:
/// the value would change the shape of the message. Control characters are what RFC 3261 §25.1
/// keeps out of header values (`TEXT-UTF8char`, `LWS`): a CR or LF would end the line and let
/// the rest pass for headers or a second message, a NUL or other control breaks parsers.
/// The message keeps the first refusal ([`crate::sip::message::Message::header_error`]) and
/// the edge does not send it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HeaderError {
    #[error("header name {0:?} is not a token")]
    BadName(String),
    #[error("{field} refused: control character U+{byte:04X} at byte {at}")]
    ControlCharacter {
        /// The header name, or `Request-URI` / `reason phrase`.
        field: String,
        byte: u8,
        at: usize,
    },
    #[error("Request-URI {0:?} contains white space")]
    SpaceInUri(String),
    #[error("method {0:?} is not a token")]
    BadMethod(String),
}
