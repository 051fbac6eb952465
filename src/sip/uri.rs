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
pub(crate) const fn is_user_char(c: u8) -> bool {
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

/// Byte classes of the one-pass scanner ([`SipUri::scan_common`]), one bit each.
mod class {
    /// An unreserved user character (`is_user_char`), no `%`.
    pub const USER: u8 = 1;
    /// A host character: letter, digit, `-` or `.`.
    pub const HOST: u8 = 2;
    /// A digit or `.` (a host made of these only may be an IPv4 literal).
    pub const DOTTED: u8 = 4;
    /// A parameter character (`is_param_char`) other than `@`.
    pub const PARAM: u8 = 8;
    /// A character of the headers part (graphic) other than `@`.
    pub const HEADER: u8 = 16;
    /// A digit.
    pub const DIGIT: u8 = 32;
}

const fn class_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 128 {
        let b = c as u8;
        let mut k = 0;
        if is_user_char(b) {
            k |= class::USER;
        }
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
            k |= class::HOST;
        }
        if b.is_ascii_digit() || b == b'.' {
            k |= class::DOTTED;
        }
        if b.is_ascii_digit() {
            k |= class::DIGIT;
        }
        if b.is_ascii_graphic() && b != b'@' {
            k |= class::HEADER;
            if b != b'?' && b != b'#' {
                k |= class::PARAM;
            }
        }
        t[c] = k;
        c += 1;
    }
    t
}

static CLASS: [u8; 256] = class_table();

/// The length of the run of bytes of `bytes[from..]` in class `k`.
#[inline]
fn run(bytes: &[u8], from: usize, k: u8) -> usize {
    bytes[from..]
        .iter()
        .position(|&c| CLASS[usize::from(c)] & k == 0)
        .unwrap_or(bytes.len() - from)
}

impl<'a> Uri<'a> {
    /// Parses a URI. Surrounding whitespace is not accepted; callers trim.
    pub fn parse(s: &'a str) -> Result<Uri<'a>, ParseError> {
        match SipUri::scan_common(s) {
            Some(u) => Ok(Uri::Sip(u)),
            None => Self::parse_general(s),
        }
    }

    /// The general parser: every scheme, every form, and the error that names what is wrong.
    /// [`Uri::parse`] comes here for whatever [`SipUri::scan_common`] does not take.
    fn parse_general(s: &'a str) -> Result<Uri<'a>, ParseError> {
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

    /// The common shape of a `sip:`/`sips:` URI in one pass over a byte-class table:
    /// `[user "@"] host [":" port] [";" params] ["?" headers]`, the user plain (no escape,
    /// no password, ASCII), the host a domain or IPv4 literal, no `@` after the user part.
    /// `None` for anything else, valid or not; [`Uri::parse`] then takes the general path,
    /// which also words the errors. What this accepts, the general path accepts with the same
    /// result (the proptest `scan_common_agrees_with_the_general_parser`).
    fn scan_common(s: &'a str) -> Option<SipUri<'a>> {
        let b = s.as_bytes();
        let secure = match b.get(..5)? {
            [c0, c1, c2, b':', _] if [*c0, *c1, *c2].eq_ignore_ascii_case(b"sip") => false,
            [c0, c1, c2, c3, b':'] if [*c0, *c1, *c2, *c3].eq_ignore_ascii_case(b"sips") => true,
            _ => return None,
        };
        let rest = &s[4 + usize::from(secure)..];
        let b = rest.as_bytes();
        // The user part: the run of user characters, if an '@' ends it. Host, port and
        // parameter characters are user characters too, so when no '@' ends the run there is
        // none before the first other byte; one after it sends the URI to the general path
        // (no class below takes '@').
        let user_len = run(b, 0, class::USER);
        let (user, host_at) = match b.get(user_len) {
            Some(b'@') if user_len > 0 => (Some(&rest[..user_len]), user_len + 1),
            Some(b'@') => return None,
            _ => (None, 0),
        };
        let host_len = run(b, host_at, class::HOST);
        let host_s = &rest[host_at..host_at + host_len];
        if host_s.is_empty() || host_s.starts_with(['.', '-']) {
            return None;
        }
        let host = if run(b, host_at, class::DOTTED) == host_len {
            match host_s.parse::<Ipv4Addr>() {
                Ok(a) => Host::Ipv4(a),
                Err(_) => Host::Domain(host_s),
            }
        } else {
            Host::Domain(host_s)
        };
        let mut i = host_at + host_len;
        let mut port = None;
        if b.get(i) == Some(&b':') {
            let digits = &b[i + 1..i + 1 + run(b, i + 1, class::DIGIT)];
            if digits.is_empty() {
                return None;
            }
            let mut n: u16 = 0;
            for &d in digits {
                n = n.checked_mul(10)?.checked_add(u16::from(d - b'0'))?;
            }
            port = Some(n);
            i += 1 + digits.len();
        }
        let params_at = i;
        if b.get(i) == Some(&b';') {
            i += run(b, i, class::PARAM);
        }
        let params = Params::new(&rest[params_at..i]);
        let headers = match b.get(i) {
            None => None,
            Some(b'?') if i + 1 + run(b, i + 1, class::HEADER) == b.len() => Some(&rest[i + 1..]),
            Some(_) => return None,
        };
        Some(SipUri {
            secure,
            user,
            password: None,
            host,
            port,
            params,
            headers,
        })
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
    use proptest::prelude::*;

    #[test]
    fn class_table_matches_predicates() {
        for c in 0..=255u8 {
            let k = CLASS[usize::from(c)];
            let has = |bit| k & bit != 0;
            assert_eq!(has(class::USER), is_user_char(c) && c < 0x80, "{c}");
            assert_eq!(
                has(class::HOST),
                c.is_ascii_alphanumeric() || c == b'-' || c == b'.'
            );
            assert_eq!(has(class::DOTTED), c.is_ascii_digit() || c == b'.');
            assert_eq!(has(class::DIGIT), c.is_ascii_digit());
            assert_eq!(has(class::PARAM), is_param_char(c) && c != b'@');
            assert_eq!(has(class::HEADER), c.is_ascii_graphic() && c != b'@');
        }
    }

    /// The URIs of real traffic take the one-pass scanner, not the general path.
    #[test]
    fn common_uris_take_the_scanner() {
        for s in [
            "sip:alice@sip.example.org:5061;transport=tls",
            "sip:joe@contoso.com",
            "SIP:Joe.Smith@Contoso.COM;user=ip",
            "sip:sip.example.org:5061;transport=tls;lr",
            "sip:10.0.0.1:5061;transport=tls;ms-opaque=d3",
            "sips:bob@192.0.2.4",
            "sip:conf@example.org;gruu;opaque=app:conf:focus:id:1?subject=hi&x=y",
            "sip:+1-212-555-1212;phone-context=x@gw.example.com;user=phone",
        ] {
            let fast = SipUri::scan_common(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(Uri::parse_general(s).unwrap(), Uri::Sip(fast), "{s}");
        }
        for s in [
            "sip:joe%20x@contoso.com",
            "sip:a:pw@b",
            "sip:[::1]:5061",
            "tel:+1-201-555-0123",
            "sip:a@b;x=c@d",
        ] {
            assert_eq!(SipUri::scan_common(s), None, "{s}");
            assert!(Uri::parse(s).is_ok(), "{s}");
        }
    }

    /// URI-like text: the bytes that matter to the grammar, weighted towards its delimiters.
    fn uri_like() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            4 => "[a-z0-9]{1,6}",
            1 => Just(".".to_owned()),
            1 => Just("-".to_owned()),
            2 => Just("@".to_owned()),
            2 => Just(":".to_owned()),
            2 => Just(";".to_owned()),
            1 => Just("?".to_owned()),
            1 => Just("=".to_owned()),
            1 => "[0-9]{1,6}",
            1 => "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
            1 => "%[0-9a-fA-Fzg]{0,2}",
            1 => "[\\[\\]#&/_~*'()+$,!\"<> \t]",
            1 => "[\\x00-\\x7f]",
            1 => "[é✓]",
        ];
        let scheme = prop_oneof![
            6 => Just("sip:"),
            2 => Just("sips:"),
            1 => Just("SIP:"),
            1 => Just("SiPs:"),
            1 => Just("sip"),
            1 => Just("tel:"),
            1 => Just(""),
        ];
        (scheme, proptest::collection::vec(piece, 0..12))
            .prop_map(|(scheme, pieces)| format!("{scheme}{}", pieces.concat()))
    }

    /// A valid URI of the common shape, then one byte changed, inserted or removed.
    fn mutated() -> impl Strategy<Value = String> {
        (
            "(sip|sips|SIP):([a-z0-9._+-]{1,8}(;[a-z]{1,3}=[a-z0-9]{1,3})?@)?([a-z0-9-]{1,8}\\.){0,3}[a-z0-9]{1,6}(:[0-9]{1,6})?(;[a-z]{1,5}(=[a-z0-9:@]{1,5})?){0,3}(\\?[a-z]=[a-z0-9@]{1,4})?",
            any::<prop::sample::Index>(),
            any::<u8>(),
            0..3u8,
        )
            .prop_map(|(s, at, byte, how)| {
                let mut b = s.into_bytes();
                let i = at.index(b.len() + 1);
                match how {
                    0 if i < b.len() => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ if i < b.len() => {
                        b.remove(i);
                    }
                    _ => {}
                }
                String::from_utf8_lossy(&b).into_owned()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// What the scanner accepts, the general parser accepts with the same result; what
        /// it leaves, `Uri::parse` hands to the general parser, so the two never differ.
        #[test]
        fn scan_common_agrees_with_the_general_parser(s in prop_oneof![uri_like(), mutated()]) {
            if let Some(fast) = SipUri::scan_common(&s) {
                prop_assert_eq!(Uri::parse_general(&s), Ok(Uri::Sip(fast)), "{:?}", s);
            }
            prop_assert_eq!(Uri::parse(&s), Uri::parse_general(&s));
        }
    }

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
