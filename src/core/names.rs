//! Display names of LCS users, as the bridge shows them on the XMPP side (docs/mapping.md §6):
//! the RFC 4482 `<cipid:display-name>` of a PIDF document and the display name of a SIP
//! `From` header are peer strings, so every one passes [`display_name`] before it becomes a
//! XEP-0172 nick, a roster item's name or a vCard's `FN`.
//!
//! What [`display_name`] does, in order:
//!
//! - turns every control character (C0 — which XML 1.0 forbids but tab, LF and CR —, DEL,
//!   C1) and the line and paragraph separators (U+2028, U+2029) into a space, as
//!   `sip::builder::header_text` does for SIP headers, so a name stays on one line;
//! - drops the other characters XML 1.0 forbids (U+FFFE, U+FFFF;
//!   [`crate::core::xml_chars::is_xml_char`], the project's one XML-character policy);
//! - drops the Unicode bidirectional formatting characters (U+061C, U+200E, U+200F,
//!   U+202A–U+202E, U+2066–U+2069): a name like `Joe<U+202E>gpj.exe` would otherwise show
//!   reversed text in a roster (Unicode Technical Report #36 §2.2, "bidirectional text
//!   spoofing"), and PRECIS's nickname profile (RFC 8266) disallows them for the same reason;
//! - drops the other invisible format characters a name has no use for (U+00AD soft hyphen,
//!   U+200B–U+200D zero-width space and joiners, U+2060 word joiner, U+FEFF byte-order mark);
//! - turns every Unicode white space into one ASCII space, collapses runs of spaces and trims
//!   both ends (RFC 8266 §2.2's additional mapping rule);
//! - cuts what is left to [`MAX_NAME_CHARS`] characters.
//!
//! A name that is empty after this is no name (`None`): a missing name never replaces a known
//! one.

/// Longest display name the bridge keeps or shows, in characters (Unicode scalar values).
/// Longer names are cut. Microsoft's clients take display names from Active Directory's
/// `displayName` (at most 256 characters), so no real name is cut.
pub const MAX_NAME_CHARS: usize = 256;

use crate::core::xml_chars::is_xml_char;

/// Whether `c` is a bidirectional formatting character (Unicode's `Bidi_Control` property).
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Invisible format characters a name has no use for (besides the bidirectional ones).
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}'
    )
}

/// A peer's display name as the bridge keeps and shows it, or `None` when nothing printable is
/// left (see the module documentation).
pub fn display_name(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len().min(MAX_NAME_CHARS * 4));
    let mut chars = 0usize;
    let mut space = false;
    for c in raw.chars() {
        if c.is_control() || c.is_whitespace() || matches!(c, '\u{2028}' | '\u{2029}') {
            space = true;
            continue;
        }
        if is_bidi_control(c) || is_invisible(c) || !is_xml_char(c) {
            continue;
        }
        if space && !out.is_empty() {
            if chars + 1 >= MAX_NAME_CHARS {
                break;
            }
            out.push(' ');
            chars += 1;
        }
        space = false;
        if chars >= MAX_NAME_CHARS {
            break;
        }
        out.push(c);
        chars += 1;
    }
    (!out.is_empty()).then_some(out)
}

/// Where a display name came from: an LCS user's own published `<cipid:display-name>` wins
/// over the display name its server writes into `From`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    /// The display name of a request's `From` header (SUBSCRIBE, NOTIFY, INVITE, MESSAGE).
    From,
    /// RFC 4482 `<cipid:display-name>` in a PIDF document.
    Pidf,
}

/// The name to keep when `candidate` (already cleaned) arrives while `current` is known:
/// `Some` when it changes. A PIDF name replaces any name; a `From` name replaces only a name
/// that did not come from a PIDF document, so that a peer whose `From` and PIDF differ (e.g.
/// "Smith, Joe" and "Joe Smith") does not make the name flip with every request.
pub fn merge(
    current: Option<(&str, NameSource)>,
    candidate: (&str, NameSource),
) -> Option<(String, NameSource)> {
    let (text, source) = candidate;
    match current {
        Some((now, _)) if now == text => None,
        Some((_, NameSource::Pidf)) if source == NameSource::From => None,
        _ => Some((text.to_owned(), source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass_unchanged() {
        for name in [
            "Joe Smith",
            "Smith, Joe (Sales)",
            "José Müller",
            "山田 太郎",
            "😀 Ann",
        ] {
            assert_eq!(display_name(name).as_deref(), Some(name));
        }
    }

    #[test]
    fn white_space_is_collapsed_and_trimmed() {
        assert_eq!(
            display_name("  Joe \t\r\n Smith\u{00A0}\u{3000}Jr  ").as_deref(),
            Some("Joe Smith Jr")
        );
        assert_eq!(display_name(" \t\r\n "), None);
        assert_eq!(display_name(""), None);
    }

    #[test]
    fn controls_and_what_xml_forbids_go() {
        assert_eq!(
            display_name("Joe\u{1}\u{7}\u{1b}[31mRed\u{7f}\u{85}X\u{FFFE}\u{FFFF}").as_deref(),
            Some("Joe [31mRed X")
        );
        assert_eq!(
            display_name("a\u{2028}b\u{2029}c").as_deref(),
            Some("a b c")
        );
        assert_eq!(display_name("\u{0}\u{1}"), None);
    }

    #[test]
    fn bidi_overrides_and_invisible_characters_go() {
        assert_eq!(
            display_name("Joe\u{202E}gpj.exe\u{202C}").as_deref(),
            Some("Joegpj.exe")
        );
        assert_eq!(
            display_name("\u{2066}\u{200F}Ann\u{200B}\u{FEFF}\u{00AD}e\u{2069}").as_deref(),
            Some("Anne")
        );
        assert_eq!(display_name("\u{202E}\u{200B}"), None);
    }

    #[test]
    fn long_names_are_cut_on_characters() {
        let long = "é".repeat(1000);
        let cut = display_name(&long).unwrap();
        assert_eq!(cut.chars().count(), MAX_NAME_CHARS);
        let spaced = "ab ".repeat(200);
        let cut = display_name(&spaced).unwrap();
        assert!(cut.chars().count() <= MAX_NAME_CHARS, "{}", cut.len());
        assert!(!cut.ends_with(' '));
    }

    #[test]
    fn a_pidf_name_wins_over_a_from_name() {
        use NameSource::{From, Pidf};
        assert_eq!(merge(None, ("Joe", From)), Some(("Joe".into(), From)));
        assert_eq!(merge(Some(("Joe", From)), ("Joe", From)), None);
        assert_eq!(
            merge(Some(("Joe", From)), ("Joe S", From)),
            Some(("Joe S".into(), From))
        );
        assert_eq!(
            merge(Some(("Smith, Joe", From)), ("Joe Smith", Pidf)),
            Some(("Joe Smith".into(), Pidf))
        );
        assert_eq!(merge(Some(("Joe Smith", Pidf)), ("Smith, Joe", From)), None);
        assert_eq!(
            merge(Some(("Joe Smith", Pidf)), ("Joseph Smith", Pidf)),
            Some(("Joseph Smith".into(), Pidf))
        );
        assert_eq!(merge(Some(("Joe", Pidf)), ("Joe", Pidf)), None);
    }
}
