//! `text/plain` bodies in the charsets peers use: UTF-8 (also for US-ASCII, a subset),
//! ISO-8859-1 and windows-1252 (both read as windows-1252, the WHATWG Encoding Standard rule).

use super::BodyError::{self, BadCharset};

/// Decodes `body` in `charset` (UTF-8 when absent).
pub(super) fn decode_charset(charset: Option<&str>, body: &[u8]) -> Result<String, BodyError> {
    let label = charset.map(str::trim).unwrap_or("utf-8");
    let is = |names: &[&str]| names.iter().any(|n| label.eq_ignore_ascii_case(n));
    if is(&["utf-8", "utf8"]) || is(&["us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us"]) {
        match std::str::from_utf8(body) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(BadCharset(format!(
                "body is not valid {label} (invalid byte at offset {})",
                e.valid_up_to()
            ))),
        }
    } else if is(&[
        "iso-8859-1",
        "iso8859-1",
        "iso_8859-1",
        "latin1",
        "l1",
        "cp819",
        "windows-1252",
        "cp1252",
        "x-cp1252",
    ]) {
        Ok(body.iter().map(|&b| windows_1252(b)).collect())
    } else {
        Err(BadCharset(format!(
            "charset \"{}\" is not supported (UTF-8, US-ASCII, ISO-8859-1, windows-1252 are)",
            label.escape_debug()
        )))
    }
}

/// windows-1252 (WHATWG Encoding Standard index): 0x80–0x9F are typographic characters; the
/// five unassigned bytes map to the C1 code points, as in the standard.
pub(super) fn windows_1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '\u{20AC}', '\u{81}', '\u{201A}', '\u{192}', '\u{201E}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2C6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8D}', '\u{17D}',
        '\u{8F}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2DC}', '\u{2122}', '\u{161}', '\u{203A}', '\u{153}', '\u{9D}', '\u{17E}',
        '\u{178}',
    ];
    match b {
        0x80..=0x9F => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::core::im_text::plain_text;

    fn text(ct: &str, body: &str) -> String {
        plain_text(ct, body.as_bytes()).unwrap()
    }

    // --- text/plain and charsets ------------------------------------------------------------

    #[test]
    fn lync_plain_text_passes_through_exactly() {
        let ct = "text/plain;charset=UTF-8;msgr=WAAtAE0ATQBTAC0ASQBNAC0ARgBvAHIAbQBhAHQAOgAgAEYATgA9AFMAZQBnAG8AZQAlADIAMABVAEkA";
        let body = "Are we still on for lunch? Ünïcode ok ✓";
        assert_eq!(text(ct, body), body);
        // No trimming, no line-end change.
        assert_eq!(text("text/plain", "  two\r\nlines \n"), "  two\r\nlines \n");
        assert_eq!(text("TEXT/PLAIN; charset=\"utf-8\"", ""), "");
    }

    #[test]
    fn non_ascii_and_markup_characters_survive() {
        for s in [
            "café",
            "中文消息",
            "emoji 😀👍🏽 ok",
            "a < b & c > d \"q\" 'a'",
            "&amp; <b>",
        ] {
            assert_eq!(text("text/plain; charset=UTF-8", s), s);
            assert_eq!(text("text/plain", s), s, "charset defaults to UTF-8");
        }
    }

    #[test]
    fn legacy_charsets_are_converted() {
        let latin1 = [b'c', b'a', b'f', 0xE9, b' ', 0xA0, 0xFF];
        assert_eq!(
            plain_text("text/plain; charset=ISO-8859-1", &latin1).unwrap(),
            "café \u{A0}ÿ"
        );
        // windows-1252 typography, also under the iso-8859-1 label (WHATWG).
        let cp1252 = [
            0x93, b'h', b'i', 0x94, b' ', 0x80, b'5', b' ', 0x96, b' ', 0x85,
        ];
        for label in ["windows-1252", "iso-8859-1", "latin1", "cp1252"] {
            assert_eq!(
                plain_text(&format!("text/plain; charset={label}"), &cp1252).unwrap(),
                "\u{201C}hi\u{201D} €5 – …",
                "{label}"
            );
        }
        assert_eq!(
            plain_text("text/plain; charset=windows-1252", &[0x81, 0x8D]).unwrap(),
            "\u{81}\u{8D}"
        );
        assert_eq!(text("text/plain; charset=us-ascii", "hello"), "hello");
        // US-ASCII is read as UTF-8 (a superset).
        assert_eq!(text("text/plain; charset=US-ASCII", "héllo"), "héllo");
    }

    #[test]
    fn bad_charsets_are_refused() {
        let err = plain_text("text/plain; charset=UTF-16", b"h\0i\0").unwrap_err();
        assert!(
            matches!(&err, BadCharset(m) if m.contains("UTF-16")),
            "{err}"
        );
        let err = plain_text("text/plain; charset=utf-8", b"ok \xC3\x28").unwrap_err();
        assert_eq!(
            err,
            BadCharset("body is not valid utf-8 (invalid byte at offset 3)".to_owned())
        );
        assert!(matches!(
            plain_text("text/plain; charset=us-ascii", b"\xFF"),
            Err(BadCharset(_))
        ));
        assert!(matches!(
            plain_text("text/html; charset=koi8-r", b"<b>x</b>"),
            Err(BadCharset(_))
        ));
    }
}
