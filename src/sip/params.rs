//! Generic parameters (`;name=value`) and comma-separated header values, RFC 3261 §25.1
//! (`generic-param`, `quoted-string`) and §7.3.1 (comma-joined header field values), and the
//! shared lexical helpers of the codec (`token`, `1*DIGIT`) that the URI, header and message
//! parsers all use.
//!
//! Everything here borrows from the raw header text, so unknown parameters are kept exactly as
//! they arrived and are re-emitted untouched.

/// Scans `s` from `start` and returns the index of the first `stop` byte that is outside a
/// quoted string and (when `angle` is set) outside `<…>`, or `s.len()`. Jumps between the
/// interesting bytes with `memchr`, so plain values cost one vectorised scan.
pub(crate) fn find_unquoted(s: &str, start: usize, stop: u8, angle: bool) -> usize {
    let b = s.as_bytes();
    let open = if angle { b'<' } else { b'"' };
    let mut i = start;
    while i < b.len() {
        let Some(off) = memchr::memchr3(stop, b'"', open, &b[i..]) else {
            return b.len();
        };
        i += off;
        match b[i] {
            b'"' => {
                // Skip the quoted string, honouring quoted-pair escapes.
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'<' if angle => {
                i = memchr::memchr(b'>', &b[i..]).map_or(b.len(), |o| i + o + 1);
            }
            _ => return i,
        }
    }
    b.len()
}

/// Splits a header value at commas that are outside quoted strings and `<…>`; empty elements
/// (`a,,b`) are skipped and each element is trimmed.
pub fn split_comma(value: &str) -> impl Iterator<Item = &str> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos <= value.len() {
            let end = find_unquoted(value, pos, b',', true);
            let item = value[pos..end].trim();
            pos = end + 1;
            if !item.is_empty() {
                return Some(item);
            }
        }
        None
    })
}

/// A `;`-separated parameter list as it appears after a URI or a header value. Holds the raw
/// text, beginning with `;` (or empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params<'a>(&'a str);

impl<'a> Params<'a> {
    /// `raw` is the text starting at the first `;` (or an empty string).
    pub fn new(raw: &'a str) -> Self {
        Params(raw)
    }

    /// The raw text, starting with `;` unless empty.
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// Iterates `(name, value)` pairs; `value` is raw (a quoted value keeps its quotes, see
    /// [`unquote`]). Names are trimmed; compare them case-insensitively.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + 'a {
        let s = self.0;
        let mut pos = 0;
        std::iter::from_fn(move || {
            while pos < s.len() {
                let start = if s.as_bytes()[pos] == b';' {
                    pos + 1
                } else {
                    pos
                };
                let end = find_unquoted(s, start, b';', false);
                pos = end;
                let item = s[start..end].trim();
                if item.is_empty() {
                    continue;
                }
                return Some(match item.find('=') {
                    Some(eq) => (item[..eq].trim(), Some(item[eq + 1..].trim())),
                    None => (item, None),
                });
            }
            None
        })
    }

    /// `Some(value)` when the parameter is present (`Some(None)` for a flag such as `;lr`).
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The parameter's value with surrounding quotes removed, if present with a value.
    pub fn value(&self, name: &str) -> Option<&'a str> {
        self.get(name).flatten().map(unquote)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Removes the surrounding double quotes of a quoted string (escapes are left as they are:
/// the values the bridge reads never contain them).
pub fn unquote(s: &str) -> &str {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

/// Renders `s` as a quoted-string (RFC 3261 §25.1), escaping `"` and `\` and dropping the
/// control characters a header value may not hold (C0 but HTAB, and DEL: CR and LF included).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if (c < ' ' && c != '\t') || c == '\u{7f}' => {}
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

const fn token_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        c += 1;
    }
    t
}

static TOKEN: [bool; 256] = token_table();

/// A decimal number made of ASCII digits only (no sign, no spaces inside), SP/HTAB around it
/// allowed.
#[inline]
pub(crate) fn parse_digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    let s = s.trim_matches([' ', '\t']);
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `token` of RFC 3261 §25.1.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// One byte of a `token`.
pub(crate) fn is_token_byte(c: u8) -> bool {
    TOKEN[usize::from(c)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_commas_outside_quotes_and_angles() {
        let v = r#""Doe, John" <sip:a@b;x=1,2>;tag=1, <sip:c@d>,sip:e@f"#;
        let parts: Vec<_> = split_comma(v).collect();
        assert_eq!(
            parts,
            vec![
                r#""Doe, John" <sip:a@b;x=1,2>;tag=1"#,
                "<sip:c@d>",
                "sip:e@f"
            ]
        );
        assert_eq!(split_comma(" , a ,, ").collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(
            split_comma(r#""a \" , b", c"#).collect::<Vec<_>>(),
            vec![r#""a \" , b""#, "c"]
        );
    }

    #[test]
    fn params_with_quotes_and_flags() {
        let p = Params::new(r#";tag=abc ; epid=01;+sip.instance="<urn:uuid:1;2>";lr;Expires = 30"#);
        assert_eq!(p.value("TAG"), Some("abc"));
        assert_eq!(p.value("epid"), Some("01"));
        assert_eq!(p.value("+sip.instance"), Some("<urn:uuid:1;2>"));
        assert_eq!(p.get("lr"), Some(None));
        assert_eq!(p.value("expires"), Some("30"));
        assert_eq!(p.get("nope"), None);
        assert_eq!(p.iter().count(), 5);
    }

    #[test]
    fn quote_escapes() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("J\r\noe\u{0}\u{7f}\tB\u{85}"), "\"Joe\tB\u{85}\"");
        assert_eq!(unquote(r#" "x y" "#), "x y");
    }
}
