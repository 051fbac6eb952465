//! Language tags crossing between the protocols: XMPP `xml:lang` (XML 1.0 §2.12, RFC 6120
//! §8.1.5), SIP `Content-Language` (RFC 3261 §20.13) and PIDF `<note xml:lang>` (RFC 3863
//! §4.1.6). All three mean a BCP 47 tag (RFC 5646 §2.1). A value from a peer that is not one
//! syntactically (white space, a control character, a stray `;` or CRLF that would split a SIP
//! header) is dropped: the text it labels goes on without a language.

/// `tag`, trimmed, if it is a well-formed BCP 47 language tag (RFC 5646 §2.1 `Language-Tag`:
/// `langtag`, private use or grandfathered); else `None`.
pub fn language_tag(tag: &str) -> Option<&str> {
    let tag = tag.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\r' | '\n'));
    // The longest registered tags are far below this; longer input is not worth parsing.
    const MAX_LEN: usize = 64;
    (tag.len() <= MAX_LEN && oxilangtag::LanguageTag::parse(tag).is_ok()).then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_tags_pass() {
        for tag in [
            "en",
            "en-US",
            "de-CH-1901",
            "zh-Hant-TW",
            "sr-Latn-RS",
            "x-klingon",
            "i-klingon",
            "en-GB-oed",
            "es-419",
        ] {
            assert_eq!(language_tag(tag), Some(tag), "{tag}");
        }
        assert_eq!(language_tag(" fr-CA "), Some("fr-CA"));
    }

    #[test]
    fn anything_else_is_dropped() {
        for bad in [
            "",
            "en\r\nX-Injected: yes",
            "en US",
            "en;q=1",
            "en_US",
            "e",
            "toolongprimary",
            "en-",
            "-en",
            "en--US",
            "\u{FFFE}",
            "en\u{1}",
            "ünïcode",
        ] {
            assert_eq!(language_tag(bad), None, "{bad:?}");
        }
        assert_eq!(language_tag(&"a-".repeat(40)), None);
    }
}
