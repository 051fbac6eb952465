//! Building requests and responses (RFC 3261 §8.1.1 request construction, §8.2.6 and §12.1.1
//! response construction). Values that need randomness (tags, branches, Call-IDs) are passed
//! in: this module reads no clock and no random source.

use super::header::HeaderKind;
use super::message::{Message, Method};
use super::params::quote;

/// The default reason phrase of a status code (RFC 3261 §21 and later RFCs).
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match code / 100 {
            1 => "Provisional",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

/// Longest reason phrase the bridge writes, in bytes.
const MAX_REASON_BYTES: usize = 256;

/// Makes a reason phrase safe for the status line ([`header_text`], at most 256 bytes).
pub fn sanitize_reason(reason: &str) -> String {
    header_text(reason, MAX_REASON_BYTES)
}

/// Free text (an XMPP `<subject/>`, a reason phrase) as one header line (RFC 3261 §25.1
/// `TEXT-UTF8-TRIM`): every line break (CRLF, CR or LF) folds into one space, and every other
/// control character (C0, DEL, C1) and the Unicode line and paragraph separators (U+2028,
/// U+2029, which some parsers also split lines at) become a space, so nothing in it can start
/// a new line; then it is cut to at most `max_bytes` (on a character boundary) and trimmed.
pub fn header_text(text: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_bytes));
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let c = match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                ' '
            }
            '\t' => '\t',
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => ' ',
            c => c,
        };
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    out.trim_matches([' ', '\t']).to_owned()
}

impl Message {
    /// A response to `request` (RFC 3261 §8.2.6.2): copies every Via (in order), From, To,
    /// Call-ID and CSeq; adds `to_tag` to To when To has no tag and the status is above 100;
    /// copies Record-Route into responses (101–299) to dialog-creating requests (§12.1.1).
    /// `reason` defaults to the standard phrase; it is sanitised.
    pub fn response_to(
        request: &Message,
        status: u16,
        reason: Option<&str>,
        to_tag: Option<&str>,
    ) -> Message {
        let reason = reason.map_or_else(|| reason_phrase(status).to_owned(), sanitize_reason);
        let mut resp = Message::new_response(status, &reason);
        for (name, value) in request.headers() {
            let kind = HeaderKind::of(name);
            match kind {
                HeaderKind::Via | HeaderKind::From | HeaderKind::CallId | HeaderKind::CSeq => {
                    resp.push_header(kind.name(), value);
                }
                HeaderKind::To => match to_tag {
                    Some(tag) if status > 100 && request.to().is_ok_and(|t| t.tag().is_none()) => {
                        resp.push_header("To", &format!("{value};tag={tag}"));
                    }
                    _ => resp.push_header("To", value),
                },
                HeaderKind::RecordRoute
                    if (101..300).contains(&status)
                        && matches!(request.method(), Some(Method::Invite | Method::Subscribe)) =>
                {
                    resp.push_header("Record-Route", value);
                }
                _ => {}
            }
        }
        resp.push_header("Content-Length", "0");
        resp
    }

    /// This response on a new status line, without its body, Content-Type, Contact and
    /// Expires: what goes out instead of a response that must not (a 2xx whose change was not
    /// stored, or one the bridge could not build). Every other header is kept in order.
    pub fn with_status(&self, status: u16, reason: &str) -> Message {
        let mut r = Message::new_response(status, &sanitize_reason(reason));
        for (name, value) in self.headers() {
            if !matches!(
                HeaderKind::of(name),
                HeaderKind::ContentType
                    | HeaderKind::ContentLength
                    | HeaderKind::Contact
                    | HeaderKind::Expires
            ) {
                r.push_header(name, value);
            }
        }
        r
    }
}

/// An address for From/To/Contact: `"Display" <uri>;params`.
pub fn name_addr(display_name: Option<&str>, uri: &str, params: &[(&str, &str)]) -> String {
    let mut s = String::with_capacity(uri.len() + 32);
    if let Some(d) = display_name.filter(|d| !d.is_empty()) {
        s.push_str(&quote(d));
        s.push(' ');
    }
    s.push('<');
    s.push_str(uri);
    s.push('>');
    for (k, v) in params {
        s.push(';');
        s.push_str(k);
        if !v.is_empty() {
            s.push('=');
            s.push_str(v);
        }
    }
    s
}

/// The parts of a new request outside a dialog, or inside one (with a `to_tag` and a route).
#[derive(Debug, Clone)]
pub struct RequestSpec<'a> {
    pub method: Method,
    pub request_uri: &'a str,
    /// This hop's sent-by `host:port`; the Via says `SIP/2.0/TLS` (profile: TLS only).
    pub via_sent_by: &'a str,
    /// A branch starting with `z9hG4bK` (RFC 3261 §8.1.1.7).
    pub branch: &'a str,
    pub from_display: Option<&'a str>,
    pub from_uri: &'a str,
    pub from_tag: &'a str,
    pub to_display: Option<&'a str>,
    pub to_uri: &'a str,
    pub to_tag: Option<&'a str>,
    pub call_id: &'a str,
    pub cseq: u32,
    /// Contact URI (should carry `;transport=tls`).
    pub contact: Option<&'a str>,
    /// Route set (already in `<uri>` form).
    pub route: &'a [String],
}

impl RequestSpec<'_> {
    /// Builds the request with `Max-Forwards: 70` and `Content-Length: 0`; add more headers and
    /// a body with [`Message::push_header`] and [`Message::set_body`].
    pub fn build(&self) -> Message {
        let mut m = Message::new_request(self.method.clone(), self.request_uri);
        m.push_header(
            "Via",
            &format!("SIP/2.0/TLS {};branch={}", self.via_sent_by, self.branch),
        );
        m.push_header("Max-Forwards", "70");
        m.push_header(
            "From",
            &name_addr(self.from_display, self.from_uri, &[("tag", self.from_tag)]),
        );
        let to_params: &[(&str, &str)] = match self.to_tag {
            Some(t) => &[("tag", t)],
            None => &[],
        };
        m.push_header("To", &name_addr(self.to_display, self.to_uri, to_params));
        m.push_header("Call-ID", self.call_id);
        m.push_header("CSeq", &format!("{} {}", self.cseq, self.method));
        for r in self.route {
            m.push_header("Route", r);
        }
        if let Some(c) = self.contact {
            m.push_header("Contact", &format!("<{c}>"));
        }
        m.push_header("Content-Length", "0");
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_folds_every_line_break_and_control() {
        for (input, max, expected) in [
            ("one line", 100, "one line"),
            ("a\r\nb\rc\nd", 100, "a b c d"),
            ("a\r\n\r\nMESSAGE x", 100, "a  MESSAGE x"),
            ("tab\tkept", 100, "tab\tkept"),
            (
                "nul\u{0}esc\u{1b}del\u{7f}nel\u{85}ls\u{2028}ps\u{2029}end",
                100,
                "nul esc del nel ls ps end",
            ),
            ("  trimmed \r\n", 100, "trimmed"),
            ("ééé", 5, "éé"),
            ("abc", 0, ""),
        ] {
            assert_eq!(header_text(input, max), expected, "{input:?}");
        }
    }

    const INVITE: &str = "INVITE sip:alice@example.org SIP/2.0\r\n\
Via: SIP/2.0/TLS edge.contoso.com:5061;branch=z9hG4bKa;ms-received-port=5061\r\n\
Via: SIP/2.0/TLS 10.0.0.5:49152;branch=z9hG4bKb\r\n\
Record-Route: <sip:edge.contoso.com:5061;transport=tls;lr>\r\n\
Max-Forwards: 69\r\n\
From: \"Joe\" <sip:joe@contoso.com>;tag=f1;epid=e1\r\n\
To: <sip:alice@example.org>\r\n\
Call-ID: cid-1\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn response_copies_the_right_headers_and_tags_to() {
        let req = Message::parse(INVITE.as_bytes()).unwrap();
        let resp = Message::response_to(&req, 200, None, Some("t9"));
        let expected = "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/TLS edge.contoso.com:5061;branch=z9hG4bKa;ms-received-port=5061\r\n\
Via: SIP/2.0/TLS 10.0.0.5:49152;branch=z9hG4bKb\r\n\
Record-Route: <sip:edge.contoso.com:5061;transport=tls;lr>\r\n\
From: \"Joe\" <sip:joe@contoso.com>;tag=f1;epid=e1\r\n\
To: <sip:alice@example.org>;tag=t9\r\n\
Call-ID: cid-1\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";
        assert_eq!(String::from_utf8(resp.to_bytes()).unwrap(), expected);
        Message::parse(&resp.to_bytes()).unwrap();

        let trying = Message::response_to(&req, 100, None, Some("t9"));
        assert_eq!(trying.to().unwrap().tag(), None);
        assert_eq!(trying.record_route().unwrap().len(), 0);
        let err = Message::response_to(&req, 400, Some("Bad\r\nInjected: yes"), Some("t9"));
        assert_eq!(err.reason(), Some("Bad Injected: yes"));
        assert_eq!(err.record_route().unwrap().len(), 0);
        let tagged = Message::parse(
            INVITE
                .replace(
                    "To: <sip:alice@example.org>",
                    "To: <sip:alice@example.org>;tag=old",
                )
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            Message::response_to(&tagged, 481, None, Some("new"))
                .to()
                .unwrap()
                .tag(),
            Some("old")
        );
    }

    #[test]
    fn request_spec_builds_a_valid_request() {
        let route = vec!["<sip:edge.contoso.com:5061;transport=tls;lr>".to_owned()];
        let spec = RequestSpec {
            method: Method::Message,
            request_uri: "sip:joe@contoso.com",
            via_sent_by: "sip.example.org:5061",
            branch: "z9hG4bK42",
            from_display: Some("Alice \"A\""),
            from_uri: "sip:alice@example.org",
            from_tag: "a1",
            to_display: None,
            to_uri: "sip:joe@contoso.com",
            to_tag: Some("j1"),
            call_id: "c-42",
            cseq: 7,
            contact: Some("sip:alice@sip.example.org:5061;transport=tls"),
            route: &route,
        };
        let mut m = spec.build();
        m.set_body(Some("text/plain; charset=UTF-8"), "hé".as_bytes().to_vec());
        let text = String::from_utf8(m.to_bytes()).unwrap();
        assert_eq!(
            text,
            "MESSAGE sip:joe@contoso.com SIP/2.0\r\n\
Via: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bK42\r\n\
Max-Forwards: 70\r\n\
From: \"Alice \\\"A\\\"\" <sip:alice@example.org>;tag=a1\r\n\
To: <sip:joe@contoso.com>;tag=j1\r\n\
Call-ID: c-42\r\n\
CSeq: 7 MESSAGE\r\n\
Route: <sip:edge.contoso.com:5061;transport=tls;lr>\r\n\
Contact: <sip:alice@sip.example.org:5061;transport=tls>\r\n\
Content-Length: 3\r\n\
Content-Type: text/plain; charset=UTF-8\r\n\r\nhé"
        );
        let parsed = Message::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed, m);
        assert!(!parsed.has_sips_uri());
    }
}
