//! The one XML-character policy of the bridge (XML 1.0 §2.2 `Char`).
//!
//! XML 1.0 allows tab, line feed, carriage return and every other character from U+0020 up,
//! except the surrogates (which a Rust `char` cannot hold) and the noncharacters U+FFFE and
//! U+FFFF. SIP header values, SIP bodies in legacy charsets, and anything a peer writes may
//! carry the rest: C0 controls such as U+0001 and ESC, and U+FFFE/U+FFFF. An XMPP stream that
//! carried one of them would not be well-formed, so the XMPP server would close it (and the
//! serialiser of the component link refuses to write it at all).
//!
//! - Readers of XML from peers (PIDF, RFC 3994 isComposing, Microsoft KeyboardActivity)
//!   refuse such characters, literal or as character references ([`find_invalid`]).
//! - Everything that goes into a stanza passes [`clean`] on its way out: the component link
//!   applies it to every text node and attribute value of every stanza before queueing it
//!   (`xmpp::clean_stanza`), so no builder can bypass it. Characters XML forbids are removed.
//!
//! Removing rather than replacing keeps identifiers that peers send with a stray control
//! character (a Call-ID used as a `<thread/>`) stable between messages, and matches what the
//! text converters of `core::im_text` always did.

use std::borrow::Cow;

/// XML 1.0 §2.2 `Char` (a Rust `char` already excludes surrogates).
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// XML white space (XML 1.0 §2.3 `S`).
pub fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// 1 for a byte that needs a second look: a C0 control other than tab, LF and CR, or 0xEF,
/// the lead byte of U+FFFE/U+FFFF (`EF BF BE`/`EF BF BF`); else 0. Bitwise, so that loops
/// over it vectorise.
#[inline]
fn suspect(b: u8) -> u8 {
    let allowed = u8::from(b == b'\t') | u8::from(b == b'\n') | u8::from(b == b'\r');
    (u8::from(b < 0x20) & !allowed & 1) | u8::from(b == 0xEF)
}

/// The byte offset and value of the first character of `s` that XML 1.0 forbids.
///
/// 32-byte blocks are tested without branches (vectorised); only a block holding a suspect
/// byte is looked at byte by byte.
pub fn find_invalid(s: &str) -> Option<(usize, char)> {
    let bytes = s.as_bytes();
    let mut base = 0;
    for block in bytes.chunks_exact(32) {
        // A fixed-size block, so that the compiler vectorises the fold.
        let block: &[u8; 32] = block.try_into().unwrap_or(&[0; 32]);
        if block.iter().fold(0, |acc, &b| acc | suspect(b)) != 0 {
            // A sequence starting in this block may end in the next: `scan` reads on.
            if let Some(hit) = scan(bytes, base, base + 32) {
                return Some(hit);
            }
        }
        base += 32;
    }
    scan(bytes, base, bytes.len())
}

/// The first character XML forbids that starts in `bytes[from..to]` (`from` at a character
/// boundary or a continuation byte, which is never suspect).
fn scan(bytes: &[u8], from: usize, to: usize) -> Option<(usize, char)> {
    let mut i = from;
    while i < to {
        match bytes[i] {
            b @ (0x00..=0x08 | 0x0B | 0x0C | 0x0E..=0x1F) => return Some((i, char::from(b))),
            0xEF if bytes.get(i + 1) == Some(&0xBF) => match bytes.get(i + 2) {
                Some(0xBE) => return Some((i, '\u{FFFE}')),
                Some(0xBF) => return Some((i, '\u{FFFF}')),
                _ => i += 3,
            },
            _ => i += 1,
        }
    }
    None
}

/// `s` without the characters XML 1.0 forbids; borrowed when there are none (the usual case
/// costs one scan and no allocation).
pub fn clean(s: &str) -> Cow<'_, str> {
    match find_invalid(s) {
        None => Cow::Borrowed(s),
        Some((at, _)) => {
            let mut out = String::with_capacity(s.len());
            out.push_str(&s[..at]);
            out.extend(s[at..].chars().filter(|&c| is_xml_char(c)));
            Cow::Owned(out)
        }
    }
}

/// Cleans `s` in place; whether anything was removed.
pub fn clean_in_place(s: &mut String) -> bool {
    if let Cow::Owned(cleaned) = clean(s) {
        *s = cleaned;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_char_production() {
        for c in [
            '\t', '\n', '\r', ' ', 'a', '\u{7F}', '\u{85}', '\u{D7FF}', '\u{E000}',
        ] {
            assert!(is_xml_char(c), "{c:?}");
        }
        for c in [
            '\u{FFFD}',
            '\u{FDD0}',
            '\u{10000}',
            '\u{1FFFE}',
            '\u{10FFFF}',
        ] {
            assert!(is_xml_char(c), "{c:?}");
        }
        for c in [
            '\u{0}', '\u{1}', '\u{8}', '\u{B}', '\u{C}', '\u{E}', '\u{1B}', '\u{1F}',
        ] {
            assert!(!is_xml_char(c), "{c:?}");
        }
        assert!(!is_xml_char('\u{FFFE}'));
        assert!(!is_xml_char('\u{FFFF}'));
    }

    #[test]
    fn find_invalid_agrees_with_the_production_on_every_plane_boundary() {
        let samples: Vec<char> = (0u32..0x200)
            .chain(0xD700..0xD800)
            .chain(0xE000..0xE100)
            .chain(0xFFF0..=0xFFFF)
            .chain(0x1_0000..0x1_0010)
            .chain(0x10_FFF0..=0x10_FFFF)
            .filter_map(char::from_u32)
            .collect();
        for c in samples {
            let s = format!("ab{c}cd");
            let expected = (!is_xml_char(c)).then_some((2, c));
            assert_eq!(find_invalid(&s), expected, "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn find_invalid_finds_the_first_at_every_offset_across_blocks() {
        // Three-byte characters that are fine (U+FB01, U+FF0C: lead byte 0xEF) around the
        // forbidden ones, at every offset of a string spanning several 32-byte blocks.
        for filler in ["a", "é", "\u{FB01}", "\u{FF0C}"] {
            let text = filler.repeat(100 / filler.len());
            assert_eq!(find_invalid(&text), None);
            for bad in ['\u{1}', '\u{1F}', '\u{FFFE}', '\u{FFFF}'] {
                for (at, _) in text.char_indices() {
                    let s = format!("{}{bad}{}", &text[..at], &text[at..]);
                    assert_eq!(
                        find_invalid(&s),
                        Some((at, bad)),
                        "{filler} {bad:?} at {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn clean_removes_only_what_xml_forbids() {
        assert!(matches!(clean("plain é 😀\t\n\r\u{7F}"), Cow::Borrowed(_)));
        assert_eq!(
            clean("a\u{0}b\u{1}c\u{1F}d\u{FFFE}\u{FFFF}e\u{EFBF}\u{FFFD}"),
            "abcde\u{EFBF}\u{FFFD}"
        );
        let mut s = String::from("x\u{1B}[31my");
        assert!(clean_in_place(&mut s));
        assert_eq!(s, "x[31my");
        assert!(!clean_in_place(&mut s));
    }
}
