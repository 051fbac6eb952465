//! SIP URIs, RFC 3261 §19.1 (`SIP-URI`, `SIPS-URI`) and §25.1 (grammar).
//!
//! [`Uri::parse`] borrows from its input. `sip:` and `sips:` URIs are split into user, password,
//! host (domain, IPv4 or bracketed IPv6), port, parameters and headers; any other scheme (`tel:`,
//! `urn:`, `mailto:` …) is kept opaque. Parameters stay raw ([`Params`]) so that unknown ones are
//! re-emitted byte for byte. The profile forbids `sips:` on the federation link; [`Uri::is_sips`]
//! lets the edge find it.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::error::ParseError;
use super::params::Params;

/// A parsed URI (borrowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uri<'a> {
    Sip(SipUri<'a>),
    /// Any other scheme, kept opaque: `scheme:rest`.
    Other {
        scheme: &'a str,
        rest: &'a str,
    },
}

/// A `sip:` or `sips:` URI (borrowed, raw parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// `true` for `sips:`.
    pub secure: bool,
    /// The user part as written (percent-escapes not decoded; see [`SipUri::user_decoded`]).
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    pub host: Host<'a>,
    pub port: Option<u16>,
    pub params: Params<'a>,
    /// The headers part after `?`, raw.
    pub headers: Option<&'a str>,
}

/// The host part of a SIP URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    /// A domain name as written (compare case-insensitively).
    Domain(&'a str),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(a) => write!(f, "[{a}]"),
        }
    }
}

fn is_scheme(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

/// Characters allowed unescaped in a user part: unreserved / user-unreserved (§25.1).
pub(crate) fn is_user_char(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'_'
                | b'.'
                | b'!'
                | b'~'
                | b'*'
                | b'\''
                | b'('
                | b')'
                | b'&'
                | b'='
                | b'+'
                | b'$'
                | b','
                | b';'
                | b'?'
                | b'/'
        )
}

/// Password characters: the user characters except `;`, `?` and `/` (§25.1).
fn is_password_char(c: u8) -> bool {
    is_user_char(c) && !matches!(c, b';' | b'?' | b'/')
}

fn is_param_char(c: u8) -> bool {
    // paramchar = param-unreserved / unreserved / escaped, plus `=`, `;` and quotes which
    // separate or wrap values; Microsoft puts `<urn:…>` inside quoted values.
    c.is_ascii_graphic() && !matches!(c, b'?' | b'#')
}

/// Checks `%XX` escapes and a character class.
fn check_escaped(s: &str, ok: impl Fn(u8) -> bool) -> Result<(), String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !(i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return Err(format!("invalid escape at {:?}", &s[i..]));
            }
            i += 3;
        } else if ok(b[i]) || b[i] >= 0x80 {
            // Non-ASCII bytes are not allowed by the grammar but do occur; keep them (lossless).
            i += 1;
        } else {
            return Err(format!("character {:?} is not allowed", b[i] as char));
        }
    }
    Ok(())
}

/// Decodes `%XX` escapes (RFC 3261 §19.1.2). Fails on invalid escapes or non-UTF-8 results.
pub fn percent_decode(s: &str) -> Result<String, String> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid escape at {:?}", &s[i..]))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "escapes do not decode to UTF-8".to_owned())
}

fn parse_host<'a>(s: &'a str, whole: &str) -> Result<Host<'a>, ParseError> {
    if s.is_empty() {
        return Err(ParseError::uri(whole, "empty host"));
    }
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| ParseError::uri(whole, "unterminated IPv6 reference"))?;
        return inner
            .parse::<Ipv6Addr>()
            .map(Host::Ipv6)
            .map_err(|_| ParseError::uri(whole, format!("invalid IPv6 address {inner:?}")));
    }
    // One pass: every byte must be a letter, digit, '-' or '.'; note whether it looks like an
    // IPv4 literal (digits and dots only).
    let (mut ldh, mut ipv4_like) = (true, true);
    for c in s.bytes() {
        ldh &= c.is_ascii_alphanumeric() || c == b'-' || c == b'.';
        ipv4_like &= c.is_ascii_digit() || c == b'.';
    }
    if ipv4_like {
        if let Ok(a) = s.parse::<Ipv4Addr>() {
            return Ok(Host::Ipv4(a));
        }
    }
    if !ldh || s.starts_with('.') || s.starts_with('-') {
        return Err(ParseError::uri(whole, format!("invalid host {s:?}")));
    }
    Ok(Host::Domain(s))
}

impl<'a> Uri<'a> {
    /// Parses a URI. Surrounding whitespace is not accepted; callers trim.
    pub fn parse(s: &'a str) -> Result<Uri<'a>, ParseError> {
        let colon =
            memchr::memchr(b':', s.as_bytes()).ok_or_else(|| ParseError::uri(s, "no scheme"))?;
        let scheme = &s[..colon];
        if !is_scheme(scheme) {
            return Err(ParseError::uri(s, format!("invalid scheme {scheme:?}")));
        }
        let rest = &s[colon + 1..];
        if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
            SipUri::parse_rest(s, scheme.len() == 4, rest).map(Uri::Sip)
        } else {
            if rest.is_empty() || rest.bytes().any(|c| c <= b' ' || c == 0x7f) {
                return Err(ParseError::uri(s, "empty or contains whitespace"));
            }
            Ok(Uri::Other { scheme, rest })
        }
    }

    pub fn scheme(&self) -> &'a str {
        match self {
            Uri::Sip(u) if u.secure => "sips",
            Uri::Sip(_) => "sip",
            Uri::Other { scheme, .. } => scheme,
        }
    }

    /// `true` for a `sips:` URI (which the profile treats as malformed).
    pub fn is_sips(&self) -> bool {
        matches!(self, Uri::Sip(u) if u.secure)
    }

    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            Uri::Other { .. } => None,
        }
    }
}

impl<'a> SipUri<'a> {
    /// Parses a `sip:`/`sips:` URI.
    pub fn parse(s: &'a str) -> Result<SipUri<'a>, ParseError> {
        match Uri::parse(s)? {
            Uri::Sip(u) => Ok(u),
            Uri::Other { scheme, .. } => Err(ParseError::uri(
                s,
                format!("expected a sip: URI, found scheme {scheme:?}"),
            )),
        }
    }

    fn parse_rest(whole: &'a str, secure: bool, rest: &'a str) -> Result<SipUri<'a>, ParseError> {
        // userinfo ends at the first '@' ('@' is not allowed unescaped in user or password).
        let (user, password, hostpart) = match memchr::memchr(b'@', rest.as_bytes()) {
            Some(at) => {
                let info = &rest[..at];
                let (u, p) = match memchr::memchr(b':', info.as_bytes()) {
                    Some(c) => (&info[..c], Some(&info[c + 1..])),
                    None => (info, None),
                };
                if u.is_empty() {
                    return Err(ParseError::uri(whole, "empty user part"));
                }
                check_escaped(u, is_user_char)
                    .map_err(|e| ParseError::uri(whole, format!("user part: {e}")))?;
                if let Some(p) = p {
                    check_escaped(p, is_password_char)
                        .map_err(|e| ParseError::uri(whole, format!("password: {e}")))?;
                }
                (Some(u), p, &rest[at + 1..])
            }
            None => (None, None, rest),
        };
        let (hostport, after) = match memchr::memchr2(b';', b'?', hostpart.as_bytes()) {
            Some(i) => (&hostpart[..i], &hostpart[i..]),
            None => (hostpart, ""),
        };
        let (host_s, port) = if hostport.starts_with('[') {
            match hostport.find(']') {
                Some(end) => {
                    let tail = &hostport[end + 1..];
                    let port = match tail.strip_prefix(':') {
                        Some(p) => Some(p),
                        None if tail.is_empty() => None,
                        None => return Err(ParseError::uri(whole, "junk after IPv6 reference")),
                    };
                    (&hostport[..end + 1], port)
                }
                None => return Err(ParseError::uri(whole, "unterminated IPv6 reference")),
            }
        } else {
            match hostport.rfind(':') {
                Some(c) => (&hostport[..c], Some(&hostport[c + 1..])),
                None => (hostport, None),
            }
        };
        let host = parse_host(host_s, whole)?;
        let port = match port {
            Some(p) => Some(
                super::params::parse_digits::<u16>(p)
                    .filter(|_| !p.starts_with([' ', '\t']) && !p.ends_with([' ', '\t']))
                    .ok_or_else(|| ParseError::uri(whole, format!("invalid port {p:?}")))?,
            ),
            None => None,
        };
        let (params_s, headers) = match after.find('?') {
            Some(q) => (&after[..q], Some(&after[q + 1..])),
            None => (after, None),
        };
        if let Some(bad) = params_s.bytes().find(|c| !is_param_char(*c)) {
            return Err(ParseError::uri(
                whole,
                format!("character {:?} is not allowed in parameters", bad as char),
            ));
        }
        if let Some(h) = headers {
            if h.bytes().any(|c| !c.is_ascii_graphic()) {
                return Err(ParseError::uri(whole, "invalid character in headers"));
            }
        }
        Ok(SipUri {
            secure,
            user,
            password,
            host,
            port,
            params: Params::new(params_s),
            headers,
        })
    }

    /// The user part with `%XX` escapes decoded.
    pub fn user_decoded(&self) -> Result<Option<String>, String> {
        self.user.map(percent_decode).transpose()
    }

    /// The host as text (IPv6 in brackets).
    pub fn host_str(&self) -> String {
        self.host.to_string()
    }

    /// A URI parameter's value (`transport`, `gr`, `maddr` …).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params.value(name)
    }

    /// The address of record `sip:user@host` (no port, parameters or headers).
    pub fn aor(&self) -> String {
        match self.user {
            Some(u) => format!("sip:{u}@{}", self.host),
            None => format!("sip:{}", self.host),
        }
    }
}

impl fmt::Display for SipUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(u) = self.user {
            f.write_str(u)?;
            if let Some(p) = self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        f.write_str(self.params.as_str())?;
        if let Some(h) = self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Uri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(u) => u.fmt(f),
            Uri::Other { scheme, rest } => write!(f, "{scheme}:{rest}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_sip_uri() {
        let s =
            "sip:joe%20x:pw@Sip.Contoso.com:5061;transport=tls;maddr=10.0.0.1;lr?subject=hi&x=y";
        let u = SipUri::parse(s).unwrap();
        assert!(!u.secure);
        assert_eq!(u.user, Some("joe%20x"));
        assert_eq!(u.user_decoded().unwrap().as_deref(), Some("joe x"));
        assert_eq!(u.password, Some("pw"));
        assert_eq!(u.host, Host::Domain("Sip.Contoso.com"));
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.param("transport"), Some("tls"));
        assert!(u.params.has("lr"));
        assert_eq!(u.headers, Some("subject=hi&x=y"));
        assert_eq!(u.to_string(), s);
        assert_eq!(u.aor(), "sip:joe%20x@Sip.Contoso.com");
    }

    #[test]
    fn parses_ip_hosts() {
        let u = SipUri::parse("sip:[2001:db8::1]:5061;transport=tls").unwrap();
        assert_eq!(u.host, Host::Ipv6("2001:db8::1".parse().unwrap()));
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.to_string(), "sip:[2001:db8::1]:5061;transport=tls");
        let u = SipUri::parse("sip:alice@192.0.2.4").unwrap();
        assert_eq!(u.host, Host::Ipv4("192.0.2.4".parse().unwrap()));
        let u = SipUri::parse("sip:[::1]").unwrap();
        assert_eq!(u.port, None);
    }

    #[test]
    fn telephone_user_with_semicolon() {
        let u =
            SipUri::parse("sip:+1-212-555-1212;phone-context=x@gw.example.com;user=phone").unwrap();
        assert_eq!(u.user, Some("+1-212-555-1212;phone-context=x"));
        assert_eq!(u.param("user"), Some("phone"));
    }

    #[test]
    fn other_schemes_are_opaque_and_sips_is_flagged() {
        assert_eq!(
            Uri::parse("tel:+1-201-555-0123").unwrap(),
            Uri::Other {
                scheme: "tel",
                rest: "+1-201-555-0123"
            }
        );
        assert!(Uri::parse("SIPS:bob@biloxi.example.com").unwrap().is_sips());
        assert!(!Uri::parse("sip:bob@biloxi.example.com").unwrap().is_sips());
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            (
                "joe@contoso.com",
                "invalid URI \"joe@contoso.com\": no scheme",
            ),
            ("sip:", "invalid URI \"sip:\": empty host"),
            (
                "sip:a@b:99999",
                "invalid URI \"sip:a@b:99999\": invalid port \"99999\"",
            ),
            (
                "sip:a@[::1",
                "invalid URI \"sip:a@[::1\": unterminated IPv6 reference",
            ),
            (
                "sip:a b@c",
                "invalid URI \"sip:a b@c\": user part: character ' ' is not allowed",
            ),
            (
                "sip:a%zz@c",
                "invalid URI \"sip:a%zz@c\": user part: invalid escape at \"%zz\"",
            ),
            (
                "sip:a@c_d",
                "invalid URI \"sip:a@c_d\": invalid host \"c_d\"",
            ),
            ("sip:@c", "invalid URI \"sip:@c\": empty user part"),
            (
                "sip:a@c:+5060",
                "invalid URI \"sip:a@c:+5060\": invalid port \"+5060\"",
            ),
            ("1sip:x", "invalid URI \"1sip:x\": invalid scheme \"1sip\""),
        ];
        for (input, msg) in cases {
            assert_eq!(Uri::parse(input).unwrap_err().to_string(), msg, "{input}");
        }
        assert_eq!(
            percent_decode("a%+5"),
            Err("invalid escape at \"%+5\"".to_owned())
        );
    }
}
