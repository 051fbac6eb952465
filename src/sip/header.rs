//! Header names and typed header values, RFC 3261 §7.3 and §20, RFC 6665 §8.2 (Event,
//! Subscription-State), RFC 5626 / RFC 5627 Contact parameters, and Microsoft's parameters
//! (`epid`, `ms-received-port`, `proxy=replace`; [MS-SIPRE], docs/sip.md "Microsoft extensions").
//!
//! Values are parsed on demand from the raw header text and borrow from it; parameters stay raw
//! ([`Params`]) so nothing unknown is lost.

use super::error::ParseError;
use super::method::Method;
use super::params::{Params, find_unquoted, is_token};
use super::uri::Uri;

macro_rules! header_kinds {
    ($($variant:ident = $name:literal, $lower:literal $(, $compact:literal)?;)*) => {
        /// The headers the codec knows by name. Lookup is case-insensitive and accepts the
        /// compact forms of RFC 3261 §7.3.3 and later RFCs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum HeaderKind {
            $($variant,)*
            /// Any other header; compare its name case-insensitively.
            Other,
        }

        impl HeaderKind {
            /// The canonical name, as the builders write it.
            pub fn name(self) -> &'static str {
                match self {
                    $(HeaderKind::$variant => $name,)*
                    HeaderKind::Other => "",
                }
            }

            /// Classifies a header name (case-insensitive; compact forms accepted).
            pub fn of(name: &str) -> HeaderKind {
                let bytes = name.as_bytes();
                if bytes.len() == 1 {
                    let c = bytes[0].to_ascii_lowercase();
                    $($(if c == $compact { return HeaderKind::$variant; })?)*
                    return HeaderKind::Other;
                }
                let mut buf = [0u8; 24];
                let Some(lower) = buf.get_mut(..bytes.len()) else {
                    return HeaderKind::Other;
                };
                for (d, s) in lower.iter_mut().zip(bytes) {
                    *d = s.to_ascii_lowercase();
                }
                match &*lower {
                    $($lower => HeaderKind::$variant,)*
                    _ => HeaderKind::Other,
                }
            }
        }
    };
}

header_kinds! {
    Via = "Via", b"via", b'v';
    From = "From", b"from", b'f';
    To = "To", b"to", b't';
    CallId = "Call-ID", b"call-id", b'i';
    CSeq = "CSeq", b"cseq";
    Contact = "Contact", b"contact", b'm';
    MaxForwards = "Max-Forwards", b"max-forwards";
    ContentLength = "Content-Length", b"content-length", b'l';
    ContentType = "Content-Type", b"content-type", b'c';
    Route = "Route", b"route";
    RecordRoute = "Record-Route", b"record-route";
    Expires = "Expires", b"expires";
    Event = "Event", b"event", b'o';
    SubscriptionState = "Subscription-State", b"subscription-state";
    Allow = "Allow", b"allow";
    AllowEvents = "Allow-Events", b"allow-events", b'u';
    Supported = "Supported", b"supported", b'k';
    Require = "Require", b"require";
    ProxyRequire = "Proxy-Require", b"proxy-require";
    Accept = "Accept", b"accept";
    ContentEncoding = "Content-Encoding", b"content-encoding", b'e';
    Subject = "Subject", b"subject", b's';
    ReferTo = "Refer-To", b"refer-to", b'r';
    ReferredBy = "Referred-By", b"referred-by", b'b';
    SessionExpires = "Session-Expires", b"session-expires", b'x';
    AcceptContact = "Accept-Contact", b"accept-contact", b'a';
    RejectContact = "Reject-Contact", b"reject-contact", b'j';
    RequestDisposition = "Request-Disposition", b"request-disposition", b'd';
    Identity = "Identity", b"identity", b'y';
    IdentityInfo = "Identity-Info", b"identity-info", b'n';
    ReplyTo = "Reply-To", b"reply-to";
    PAssertedIdentity = "P-Asserted-Identity", b"p-asserted-identity";
    PPreferredIdentity = "P-Preferred-Identity", b"p-preferred-identity";
    UserAgent = "User-Agent", b"user-agent";
    Server = "Server", b"server";
    Organization = "Organization", b"organization";
    Warning = "Warning", b"warning";
    RetryAfter = "Retry-After", b"retry-after";
    Timestamp = "Timestamp", b"timestamp";
    Date = "Date", b"date";
    ContentLanguage = "Content-Language", b"content-language";
}

impl HeaderKind {
    /// Headers whose value is a comma-separated list (RFC 3261 §7.3.1) that the codec splits.
    pub fn is_list(self) -> bool {
        matches!(
            self,
            HeaderKind::Via
                | HeaderKind::Contact
                | HeaderKind::Route
                | HeaderKind::RecordRoute
                | HeaderKind::Allow
                | HeaderKind::AllowEvents
                | HeaderKind::Supported
                | HeaderKind::Require
                | HeaderKind::ProxyRequire
                | HeaderKind::Accept
                | HeaderKind::ContentEncoding
                | HeaderKind::PAssertedIdentity
        )
    }

    /// Headers whose values carry URIs (checked for `sips:`).
    pub fn carries_uri(self) -> bool {
        matches!(
            self,
            HeaderKind::From
                | HeaderKind::To
                | HeaderKind::Contact
                | HeaderKind::Route
                | HeaderKind::RecordRoute
                | HeaderKind::ReferTo
                | HeaderKind::ReferredBy
                | HeaderKind::ReplyTo
                | HeaderKind::PAssertedIdentity
                | HeaderKind::PPreferredIdentity
        )
    }

    /// Free-text headers, never searched for URIs.
    pub fn is_free_text(self) -> bool {
        matches!(
            self,
            HeaderKind::Subject
                | HeaderKind::UserAgent
                | HeaderKind::Server
                | HeaderKind::Organization
                | HeaderKind::Warning
                | HeaderKind::CallId
                | HeaderKind::Date
        )
    }
}

/// A `Via` value (RFC 3261 §20.42): `SIP/2.0/TLS host:port;branch=…;received=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// `SIP/2.0`, as written.
    pub protocol: &'a str,
    /// `TLS`, `TCP`, `UDP` … as written.
    pub transport: &'a str,
    /// The sent-by host (IPv6 with brackets).
    pub host: &'a str,
    pub port: Option<u16>,
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    pub fn parse(value: &'a str) -> Result<Via<'a>, ParseError> {
        let bad = |r: &str| ParseError::header("Via", value, r);
        let v = value.trim();
        // sent-protocol = name SLASH version SLASH transport, LWS allowed around the slashes.
        let mut rest = v;
        let mut parts = [""; 3];
        let mut protocol_end = 0;
        for (i, part) in parts.iter_mut().enumerate() {
            rest = rest.trim_start();
            let end = if i < 2 {
                memchr::memchr(b'/', rest.as_bytes())
                    .ok_or_else(|| bad("sent-protocol is not name/version/transport"))?
            } else {
                rest.bytes()
                    .position(|c| c.is_ascii_whitespace())
                    .ok_or_else(|| bad("missing sent-by"))?
            };
            *part = rest[..end].trim();
            if i == 1 {
                protocol_end = v.len() - rest.len() + rest[..end].trim_end().len();
            }
            rest = &rest[end + usize::from(i < 2)..];
        }
        if !parts.iter().all(|p| is_token(p)) {
            return Err(bad("sent-protocol is not name/version/transport"));
        }
        let protocol = &v[..protocol_end];
        let rest = rest.trim_start();
        let semi = find_unquoted(rest, 0, b';', false);
        let sent_by = rest[..semi].trim();
        let params = Params::new(&rest[semi..]);
        let (host, port) = split_host_port(sent_by).map_err(|r| bad(&r))?;
        Ok(Via {
            protocol,
            transport: parts[2],
            host,
            port,
            params,
        })
    }

    pub fn branch(&self) -> Option<&'a str> {
        self.params.value("branch")
    }

    pub fn received(&self) -> Option<&'a str> {
        self.params.value("received")
    }

    /// `None` when absent, `Some(None)` for a bare `;rport`, `Some(Some(port))` when filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params
            .get("rport")
            .map(|v| v.and_then(|p| p.trim().parse().ok()))
    }

    /// Microsoft's `ms-received-port` parameter.
    pub fn ms_received_port(&self) -> Option<u16> {
        self.params
            .value("ms-received-port")
            .and_then(|p| p.parse().ok())
    }
}

/// Splits `host[:port]` (IPv6 in brackets).
pub fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    if !s.starts_with('[') && s.bytes().filter(|c| *c == b':').count() > 1 {
        return Err(format!("IPv6 address {s:?} must be in brackets"));
    }
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']').ok_or("unterminated IPv6 reference")?;
        let tail = &s[end + 1..];
        match tail.strip_prefix(':') {
            Some(p) => (&s[..=end], Some(p)),
            None if tail.is_empty() => (&s[..=end], None),
            None => return Err(format!("junk {tail:?} after host")),
        }
    } else {
        match s.rfind(':') {
            Some(c) => (&s[..c], Some(&s[c + 1..])),
            None => (s, None),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b':' | b'[' | b']'))
    {
        return Err(format!("invalid host {host:?}"));
    }
    let port = match port {
        Some(p) => Some(
            super::params::parse_digits::<u16>(p).ok_or_else(|| format!("invalid port {p:?}"))?,
        ),
        None => None,
    };
    Ok((host, port))
}

/// A `name-addr` / `addr-spec` value with parameters (RFC 3261 §20.10, §20.20, §20.39): From,
/// To, Contact, Route, Record-Route, P-Asserted-Identity …
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The display name as written, without quotes (quoted-pair escapes kept).
    pub display_name: Option<&'a str>,
    /// The URI text between `<` and `>` (or the bare addr-spec).
    pub uri: &'a str,
    /// Header parameters (`;tag=…;epid=…`).
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// Parses one value; `header` names the header for error messages.
    pub fn parse(value: &'a str, header: &'static str) -> Result<NameAddr<'a>, ParseError> {
        let bad = |r: String| ParseError::header(header, value, r);
        let v = value.trim();
        let lt = find_unquoted(v, 0, b'<', false);
        if lt < v.len() {
            let gt = memchr::memchr(b'>', &v.as_bytes()[lt..])
                .map(|i| lt + i)
                .ok_or_else(|| bad("missing '>'".into()))?;
            let dn = v[..lt].trim();
            let display_name = if dn.is_empty() {
                None
            } else if let Some(q) = dn.strip_prefix('"') {
                Some(
                    q.strip_suffix('"')
                        .ok_or_else(|| bad("unterminated display name".into()))?,
                )
            } else {
                Some(dn)
            };
            let uri = v[lt + 1..gt].trim();
            Uri::parse(uri).map_err(|e| bad(e.to_string()))?;
            let rest = v[gt + 1..].trim_start();
            if !(rest.is_empty() || rest.starts_with(';')) {
                return Err(bad(format!("unexpected {rest:?} after '>'")));
            }
            Ok(NameAddr {
                display_name,
                uri,
                params: Params::new(rest),
            })
        } else {
            // addr-spec without brackets: parameters belong to the header, not to the URI.
            let semi = v.find(';').unwrap_or(v.len());
            let uri = v[..semi].trim();
            if v.starts_with('"') {
                return Err(bad("display name without <URI>".into()));
            }
            Uri::parse(uri).map_err(|e| bad(e.to_string()))?;
            Ok(NameAddr {
                display_name: None,
                uri,
                params: Params::new(&v[semi..]),
            })
        }
    }

    pub fn parsed_uri(&self) -> Uri<'a> {
        // Checked in `parse`; a value built by hand that does not parse yields an opaque URI.
        Uri::parse(self.uri).unwrap_or(Uri::Other {
            scheme: "",
            rest: self.uri,
        })
    }

    pub fn tag(&self) -> Option<&'a str> {
        self.params.value("tag")
    }

    /// Microsoft's endpoint id.
    pub fn epid(&self) -> Option<&'a str> {
        self.params.value("epid")
    }

    pub fn expires(&self) -> Option<u32> {
        self.params.value("expires").and_then(|e| e.parse().ok())
    }

    /// `+sip.instance` (RFC 5626 §4.1), e.g. `<urn:uuid:…>`.
    pub fn sip_instance(&self) -> Option<&'a str> {
        self.params.value("+sip.instance")
    }

    /// Microsoft's `proxy=replace` Contact parameter.
    pub fn proxy_replace(&self) -> bool {
        self.params
            .value("proxy")
            .is_some_and(|v| v.eq_ignore_ascii_case("replace"))
    }
}

/// A Contact header value: `*` or a list of addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact<'a> {
    Star,
    Addresses(Vec<NameAddr<'a>>),
}

/// CSeq (RFC 3261 §20.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub number: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(value: &str) -> Result<CSeq, ParseError> {
        let bad = |r: &str| ParseError::header("CSeq", value, r);
        let mut it = value.split_ascii_whitespace();
        let num = it.next().ok_or_else(|| bad("empty"))?;
        let method = it.next().ok_or_else(|| bad("missing method"))?;
        if it.next().is_some() {
            return Err(bad("junk after method"));
        }
        let number = num
            .parse::<u32>()
            .ok()
            .filter(|n| *n < 1 << 31)
            .ok_or_else(|| bad("sequence number is not an integer below 2**31"))?;
        let method = Method::parse(method).map_err(|_| bad("invalid method token"))?;
        Ok(CSeq { number, method })
    }
}

/// Event (RFC 6665 §8.2.1): `presence;id=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    pub package: &'a str,
    pub params: Params<'a>,
}

impl<'a> Event<'a> {
    pub fn parse(value: &'a str) -> Result<Event<'a>, ParseError> {
        let semi = value.find(';').unwrap_or(value.len());
        let package = value[..semi].trim();
        if !is_token(package) {
            return Err(ParseError::header(
                "Event",
                value,
                "event package is not a token",
            ));
        }
        Ok(Event {
            package,
            params: Params::new(&value[semi..]),
        })
    }

    pub fn id(&self) -> Option<&'a str> {
        self.params.value("id")
    }
}

/// Subscription-State (RFC 6665 §8.2.3): `active;expires=3600`, `terminated;reason=rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionState<'a> {
    /// `active`, `pending`, `terminated` or an extension value, as written.
    pub state: &'a str,
    pub params: Params<'a>,
}

impl<'a> SubscriptionState<'a> {
    pub fn parse(value: &'a str) -> Result<SubscriptionState<'a>, ParseError> {
        let semi = value.find(';').unwrap_or(value.len());
        let state = value[..semi].trim();
        if !is_token(state) {
            return Err(ParseError::header(
                "Subscription-State",
                value,
                "state is not a token",
            ));
        }
        Ok(SubscriptionState {
            state,
            params: Params::new(&value[semi..]),
        })
    }

    pub fn reason(&self) -> Option<&'a str> {
        self.params.value("reason")
    }

    pub fn expires(&self) -> Option<u32> {
        self.params.value("expires").and_then(|e| e.parse().ok())
    }

    pub fn retry_after(&self) -> Option<u32> {
        self.params
            .value("retry-after")
            .and_then(|e| e.parse().ok())
    }
}

/// Content-Type (RFC 3261 §20.15): `type/subtype;params`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaType<'a> {
    pub mtype: &'a str,
    pub subtype: &'a str,
    pub params: Params<'a>,
}

impl<'a> MediaType<'a> {
    pub fn parse(value: &'a str) -> Result<MediaType<'a>, ParseError> {
        let semi = find_unquoted(value, 0, b';', false);
        let essence = value[..semi].trim();
        let (t, s) = essence
            .split_once('/')
            .map(|(t, s)| (t.trim(), s.trim()))
            .filter(|(t, s)| is_token(t) && is_token(s))
            .ok_or_else(|| ParseError::header("Content-Type", value, "expected type/subtype"))?;
        Ok(MediaType {
            mtype: t,
            subtype: s,
            params: Params::new(&value[semi..]),
        })
    }

    /// Case-insensitive comparison with `type/subtype`.
    pub fn is(&self, essence: &str) -> bool {
        essence.split_once('/').is_some_and(|(t, s)| {
            self.mtype.eq_ignore_ascii_case(t) && self.subtype.eq_ignore_ascii_case(s)
        })
    }

    pub fn charset(&self) -> Option<&'a str> {
        self.params.value("charset")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_kinds_case_insensitive_and_compact() {
        assert_eq!(HeaderKind::of("via"), HeaderKind::Via);
        assert_eq!(HeaderKind::of("V"), HeaderKind::Via);
        assert_eq!(HeaderKind::of("CALL-id"), HeaderKind::CallId);
        assert_eq!(HeaderKind::of("i"), HeaderKind::CallId);
        assert_eq!(HeaderKind::of("l"), HeaderKind::ContentLength);
        assert_eq!(HeaderKind::of("k"), HeaderKind::Supported);
        assert_eq!(HeaderKind::of("o"), HeaderKind::Event);
        assert_eq!(
            HeaderKind::of("subscription-state"),
            HeaderKind::SubscriptionState
        );
        assert_eq!(HeaderKind::of("ms-keep-alive"), HeaderKind::Other);
        assert_eq!(HeaderKind::of("q"), HeaderKind::Other);
    }

    #[test]
    fn via_with_microsoft_params() {
        let v = Via::parse(
            "SIP / 2.0 / TLS 192.0.2.1:5061;branch=z9hG4bK77;ms-received-port=5061;ms-received-cid=1E00;received=10.1.1.1;rport=3456",
        )
        .unwrap();
        assert_eq!(v.protocol, "SIP / 2.0");
        assert_eq!(v.transport, "TLS");
        assert_eq!(v.host, "192.0.2.1");
        assert_eq!(v.port, Some(5061));
        assert_eq!(v.branch(), Some("z9hG4bK77"));
        assert_eq!(v.received(), Some("10.1.1.1"));
        assert_eq!(v.rport(), Some(Some(3456)));
        assert_eq!(v.ms_received_port(), Some(5061));
        assert_eq!(v.params.value("ms-received-cid"), Some("1E00"));
        let v = Via::parse("SIP/2.0/TLS [2001:db8::9];rport").unwrap();
        assert_eq!(
            (v.host, v.port, v.rport()),
            ("[2001:db8::9]", None, Some(None))
        );
    }

    #[test]
    fn via_errors() {
        assert_eq!(
            Via::parse("SIP/2.0/TLS 2001:db8::1;branch=z9hG4bK1")
                .unwrap_err()
                .to_string(),
            "invalid Via header \"SIP/2.0/TLS 2001:db8::1;branch=z9hG4bK1\": IPv6 address \"2001:db8::1\" must be in brackets"
        );
        assert!(Via::parse("SIP/2.0/TLS h:+5061").is_err());
        assert_eq!(
            Via::parse("SIP/2.0 host").unwrap_err().to_string(),
            "invalid Via header \"SIP/2.0 host\": sent-protocol is not name/version/transport"
        );
        assert_eq!(
            Via::parse("SIP/2.0/TLS").unwrap_err().to_string(),
            "invalid Via header \"SIP/2.0/TLS\": missing sent-by"
        );
        assert_eq!(
            Via::parse("SIP/2.0/TLS h:x").unwrap_err().to_string(),
            "invalid Via header \"SIP/2.0/TLS h:x\": invalid port \"x\""
        );
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(
            r#""Joe, at Contoso" <sip:joe@contoso.com>;tag=8f2;epid=01010101"#,
            "From",
        )
        .unwrap();
        assert_eq!(n.display_name, Some("Joe, at Contoso"));
        assert_eq!(n.uri, "sip:joe@contoso.com");
        assert_eq!(n.tag(), Some("8f2"));
        assert_eq!(n.epid(), Some("01010101"));
        let n = NameAddr::parse("Joe <sip:joe@contoso.com;transport=tls>", "To").unwrap();
        assert_eq!(n.display_name, Some("Joe"));
        assert_eq!(n.uri, "sip:joe@contoso.com;transport=tls");
        assert!(n.params.is_empty());
        let n = NameAddr::parse("sip:joe@contoso.com;tag=1", "To").unwrap();
        assert_eq!((n.uri, n.tag()), ("sip:joe@contoso.com", Some("1")));
        let n = NameAddr::parse(
            r#"<sip:10.0.0.1:5061;transport=tls;ms-opaque=d3>;proxy=replace;+sip.instance="<urn:uuid:2c1d>""#,
            "Contact",
        )
        .unwrap();
        assert!(n.proxy_replace());
        assert_eq!(n.sip_instance(), Some("<urn:uuid:2c1d>"));
    }

    #[test]
    fn name_addr_errors() {
        let cases = [
            ("<sip:a@b", "invalid To header \"<sip:a@b\": missing '>'"),
            (
                "<joe> x",
                "invalid To header \"<joe> x\": invalid URI \"joe\": no scheme",
            ),
            (
                "<sip:a@b> x",
                "invalid To header \"<sip:a@b> x\": unexpected \"x\" after '>'",
            ),
        ];
        for (v, msg) in cases {
            assert_eq!(NameAddr::parse(v, "To").unwrap_err().to_string(), msg);
        }
    }

    #[test]
    fn cseq_event_state_content_type() {
        let c = CSeq::parse("  42   NOTIFY ").unwrap();
        assert_eq!((c.number, c.method), (42, Method::Notify));
        assert_eq!(
            CSeq::parse("x INVITE").unwrap_err().to_string(),
            "invalid CSeq header \"x INVITE\": sequence number is not an integer below 2**31"
        );
        let e = Event::parse("presence;id=7").unwrap();
        assert_eq!((e.package, e.id()), ("presence", Some("7")));
        let s = SubscriptionState::parse("terminated;reason=rejected;retry-after=30").unwrap();
        assert_eq!(
            (s.state, s.reason(), s.retry_after()),
            ("terminated", Some("rejected"), Some(30))
        );
        let s = SubscriptionState::parse("active;expires=3600").unwrap();
        assert_eq!(s.expires(), Some(3600));
        let m = MediaType::parse("text/plain; charset=UTF-8;msgr=WAAx").unwrap();
        assert!(m.is("TEXT/Plain"));
        assert_eq!(m.charset(), Some("UTF-8"));
        assert!(MediaType::parse("text").is_err());
    }
}
