//! Microsoft's `ms-diagnostics` and `ms-diagnostics-public` response headers ([MS-OCER]
//! §2.2.1.1 and §2.2.1.2): why a Microsoft server refused a request, as a number and a text.
//!
//! ```text
//! ms-diagnostics        = "ms-diagnostics" HCOLON ErrorId SEMI reason-param
//!                         *(SEMI generic-param)          ; source="…" among them
//! ms-diagnostics-public = "ms-diagnostics-public" HCOLON ErrorId SEMI reason-param
//!                         *(SEMI generic-param)          ; never source
//! reason-param          = "reason" EQUAL quoted-string
//! ```
//!
//! Real values (a Lync edge answering a federated request):
//! `1034;reason="Previous hop federated peer did not report diagnostic information";source="sip.contoso.com"`
//! and `4141;reason="User disabled"` (pidgin-sipe `sipe-notify.c`). OCS 2007 documented the
//! ErrorId as `<ErrorId>[.<Sub Error Code>]`, so a dotted number is read too (its first part is
//! the code). The parser is liberal where the value is still readable (parameters in any order,
//! names in any case, a missing reason) and returns `None` for anything else: the header is
//! informative only, a bad one changes nothing.

use super::message::Message;
use super::params::{Params, find_unquoted, parse_digits};

/// Most characters kept of a reason or source (the header is the peer's; it may be long).
pub const MAX_TEXT_CHARS: usize = 200;

/// One `ms-diagnostics` (or `-public`) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    /// `ms-diagnostics` or `ms-diagnostics-public` (which header it came from).
    pub header: &'static str,
    /// The ErrorId ([MS-OCER] Appendix A lists them).
    pub code: u32,
    /// The `reason` parameter, quoted-pair escapes undone, at most [`MAX_TEXT_CHARS`]; raw
    /// peer text otherwise (control characters included): clean it before showing it.
    pub reason: Option<String>,
    /// The `source` parameter (the server that added the header), as `reason`.
    pub source: Option<String>,
}

impl Diagnostics {
    /// Reads one header value; `None` when it does not start with a number.
    pub fn parse(header: &'static str, value: &str) -> Option<Diagnostics> {
        let value = value.trim();
        let end = find_unquoted(value, 0, b';', false);
        let id = value[..end].trim();
        let code = parse_digits(id.split_once('.').map_or(id, |(code, _)| code))?;
        let params = Params::new(&value[end..]);
        let text = |name: &str| {
            params
                .get(name)
                .flatten()
                .map(unescape)
                .filter(|t| !t.trim().is_empty())
        };
        Some(Diagnostics {
            header,
            code,
            reason: text("reason"),
            source: text("source"),
        })
    }

    /// The diagnostics of a response: its `ms-diagnostics` header if readable (the fuller one,
    /// as Microsoft's own API prefers it), else its `ms-diagnostics-public`.
    pub fn of(response: &Message) -> Option<Diagnostics> {
        ["ms-diagnostics", "ms-diagnostics-public"]
            .into_iter()
            .find_map(|name| Diagnostics::parse(name, response.header(name)?))
    }
}

/// A parameter value without its quotes and with quoted-pair escapes undone (RFC 3261 §25.1),
/// at most [`MAX_TEXT_CHARS`] characters.
fn unescape(raw: &str) -> String {
    let raw = raw.trim();
    let inner = match raw.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').unwrap_or(rest),
        None => raw,
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    let mut n = 0;
    while let Some(c) = chars.next() {
        if n == MAX_TEXT_CHARS {
            out.push('…');
            break;
        }
        let c = if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        };
        out.push(c);
        n += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_what_lync_sends() {
        let d = Diagnostics::parse(
            "ms-diagnostics",
            r#"1034;reason="Previous hop federated peer did not report diagnostic information";source="sip.contoso.com""#,
        )
        .unwrap();
        assert_eq!(d.code, 1034);
        assert_eq!(
            d.reason.as_deref(),
            Some("Previous hop federated peer did not report diagnostic information")
        );
        assert_eq!(d.source.as_deref(), Some("sip.contoso.com"));
        let p = Diagnostics::parse(
            "ms-diagnostics-public",
            r#" 4141 ; Reason="User disabled";Domain="example.org""#,
        )
        .unwrap();
        assert_eq!(
            (p.code, p.reason.as_deref(), p.source),
            (4141, Some("User disabled"), None)
        );
    }

    #[test]
    fn quoted_semicolons_escapes_and_odd_shapes() {
        let d = Diagnostics::parse(
            "ms-diagnostics",
            r#"2.1;source="edge";reason="a;b \"c\" \\ d""#,
        )
        .unwrap();
        assert_eq!(d.code, 2);
        assert_eq!(d.reason.as_deref(), Some(r#"a;b "c" \ d"#));
        assert_eq!(d.source.as_deref(), Some("edge"));
        // No reason, an empty one, an unterminated quote.
        assert_eq!(
            Diagnostics::parse("ms-diagnostics", "7").unwrap().reason,
            None
        );
        assert_eq!(
            Diagnostics::parse("ms-diagnostics", r#"7;reason="""#)
                .unwrap()
                .reason,
            None
        );
        assert_eq!(
            Diagnostics::parse("ms-diagnostics", r#"7;reason="open"#)
                .unwrap()
                .reason
                .as_deref(),
            Some("open")
        );
        for bad in [
            "",
            "x",
            ";reason=\"r\"",
            "-1;reason=\"r\"",
            "99999999999;reason=\"r\"",
            "1 2",
        ] {
            assert_eq!(Diagnostics::parse("ms-diagnostics", bad), None, "{bad}");
        }
    }

    #[test]
    fn long_text_is_capped() {
        let long = "é".repeat(5000);
        let d = Diagnostics::parse("ms-diagnostics", &format!("1;reason=\"{long}\"")).unwrap();
        let r = d.reason.unwrap();
        assert_eq!(r.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(r.ends_with('…'));
    }

    #[test]
    fn the_private_header_is_preferred_and_the_public_one_taken_otherwise() {
        let raw = |extra: &str| {
            Message::parse(
                format!(
                    "SIP/2.0 403 Forbidden\r\nVia: SIP/2.0/TLS a;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
                )
                .as_bytes(),
            )
            .unwrap()
        };
        let both = raw(
            "ms-diagnostics-public: 1034;reason=\"public\"\r\nms-diagnostics: 1034;reason=\"private\";source=\"s\"\r\n",
        );
        let d = Diagnostics::of(&both).unwrap();
        assert_eq!(
            (d.header, d.reason.as_deref()),
            ("ms-diagnostics", Some("private"))
        );
        let public =
            raw("ms-diagnostics: junk\r\nms-diagnostics-public: 4141;reason=\"User disabled\"\r\n");
        let d = Diagnostics::of(&public).unwrap();
        assert_eq!((d.header, d.code), ("ms-diagnostics-public", 4141));
        assert_eq!(Diagnostics::of(&raw("")), None);
    }
}
