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
//! - drops every other format character (Unicode general category `Cf`: U+00AD soft hyphen,
//!   U+200B zero-width space, U+2060 word joiner, U+2061–U+2064 invisible operators,
//!   U+206A–U+206F deprecated format characters, U+FEFF byte-order mark, U+FFF9–U+FFFB
//!   interlinear annotation, the tag characters U+E0000–U+E007F, …) and the Hangul fillers
//!   that show as blanks (U+115F, U+1160, U+3164, U+FFA0) — invisible characters that would let
//!   two different names look alike (Unicode Technical Report #36 §2; RFC 8266 §5.2 builds on
//!   PRECIS's FreeformClass, which disallows them);
//! - keeps the zero-width non-joiner and joiner (U+200C, U+200D) only between two characters
//!   that are shown (neither format characters nor white space): there they belong to the
//!   name — Persian and Indic scripts need them (RFC 5892 Appendix A.1–A.2, "CONTEXTJ" in
//!   PRECIS), and emoji sequences (👩‍💻) are joined by U+200D — and anywhere else they only
//!   hide;
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

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::core::xml_chars::is_xml_char;

/// The zero-width non-joiner and joiner, kept between two shown characters.
const ZWNJ: char = '\u{200C}';
const ZWJ: char = '\u{200D}';

fn is_joiner(c: char) -> bool {
    c == ZWNJ || c == ZWJ
}

/// Format characters (`Cf`: the bidirectional controls, zero-width characters, invisible
/// operators, tags, …) and the tag block's unassigned code points.
fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format || ('\u{E0000}'..='\u{E007F}').contains(&c)
}

/// Hangul fillers: letters (`Lo`) that show as blanks.
fn is_blank_filler(c: char) -> bool {
    matches!(c, '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}')
}

/// Whether `c` becomes a space (controls, white space, line and paragraph separators).
fn is_space(c: char) -> bool {
    c.is_control() || c.is_whitespace() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Whether `c` is shown as it is.
fn is_shown(c: char) -> bool {
    !is_space(c) && !is_format(c) && !is_blank_filler(c) && is_xml_char(c)
}

/// A peer's display name as the bridge keeps and shows it, or `None` when nothing printable is
/// left (see the module documentation).
pub fn display_name(raw: &str) -> Option<String> {
    one_line(raw, MAX_NAME_CHARS)
}

/// A peer's text cleaned as [`display_name`] cleans a name, cut to `max` characters instead of
/// [`MAX_NAME_CHARS`]: the one cleaning of the one-line texts other than names that cross into
/// XMPP (the status texts of Microsoft enhanced presence, `core::ms_presence`).
pub fn one_line(raw: &str, max: usize) -> Option<String> {
    let max = max.max(1);
    let mut out = String::with_capacity(raw.len().min(max * 4));
    let mut chars = 0usize;
    let mut space = false;
    // Whether the character before this one (in `raw`) was shown.
    let mut after_shown = false;
    let mut input = raw.chars().peekable();
    while let Some(c) = input.next() {
        if is_space(c) {
            space = true;
            after_shown = false;
            continue;
        }
        let shown = is_shown(c);
        let keep =
            shown || (is_joiner(c) && after_shown && input.peek().is_some_and(|&n| is_shown(n)));
        after_shown = shown;
        if !keep {
            continue;
        }
        if space && !out.is_empty() {
            if chars + 1 >= max {
                break;
            }
            out.push(' ');
            chars += 1;
        }
        space = false;
        if chars >= max {
            break;
        }
        out.push(c);
        chars += 1;
    }
    // A joiner whose next character was cut off joins nothing.
    while out.ends_with(is_joiner) {
        out.pop();
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
    fn format_characters_and_blank_fillers_go() {
        for (raw, clean) in [
            // Tags (an emoji tag sequence's tail), invisible operators, deprecated format
            // characters, interlinear annotation, an Arabic number sign, the Mongolian vowel
            // separator.
            ("Ann\u{E0067}\u{E0062}\u{E007F}\u{E0000}e", "Anne"),
            ("a\u{2061}\u{2062}\u{2063}\u{2064}b", "ab"),
            ("a\u{206A}\u{206F}b\u{FFF9}c\u{FFFA}\u{FFFB}", "abc"),
            ("\u{0600}12\u{180E}3", "123"),
            // Hangul fillers show as blanks.
            ("\u{3164}\u{115F}\u{1160}Kim\u{FFA0}", "Kim"),
            ("\u{3164}", ""),
        ] {
            assert_eq!(display_name(raw).unwrap_or_default(), clean, "{raw:?}");
        }
    }

    #[test]
    fn joiners_are_kept_between_shown_characters_only() {
        // Persian (ZWNJ between letters), Devanagari (ZWJ after a virama), emoji sequences.
        for name in [
            "\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}\u{0627}\u{0647}\u{0645}",
            "\u{0915}\u{094D}\u{200D}\u{0937}",
            "\u{1F469}\u{200D}\u{1F4BB} Ann",
            "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
        ] {
            assert_eq!(display_name(name).as_deref(), Some(name), "{name:?}");
        }
        for (raw, clean) in [
            ("\u{200D}Ann\u{200C}", "Ann"),
            ("Ann \u{200D}Lee", "Ann Lee"),
            ("Ann\u{200D} Lee", "Ann Lee"),
            ("a\u{200D}\u{200D}b", "ab"),
            ("a\u{200D}\u{202E}b", "ab"),
            ("a\u{200B}\u{200D}b", "ab"),
            ("\u{200C}\u{200D}", ""),
        ] {
            assert_eq!(display_name(raw).unwrap_or_default(), clean, "{raw:?}");
        }
        // A joiner is never left at the end of a cut name.
        let long = format!("{}\u{200D}b", "a".repeat(MAX_NAME_CHARS));
        let cut = display_name(&long).unwrap();
        assert_eq!(cut, "a".repeat(MAX_NAME_CHARS));
        let long = format!("{}\u{200D}b", "a".repeat(MAX_NAME_CHARS - 1));
        assert_eq!(display_name(&long).unwrap(), "a".repeat(MAX_NAME_CHARS - 1));
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
