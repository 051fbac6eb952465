//! Instant-message bodies and typing notifications: the codecs between what LCS/OCS/Lync peers
//! put in a MESSAGE, INFO or INVITE and the plain text and XEP-0085 chat state that XMPP
//! carries. Pure functions: no I/O, no clock.
//!
//! Submodules: `text` (text/plain charsets), `html` (the HTML → text tokenizer), `multipart`
//! (RFC 2046 §5.1 bodies), `typing` (RFC 3994 isComposing and Microsoft KeyboardActivity).
//!
//! * [`plain_text`] turns an incoming body into plain text by its Content-Type:
//!   `text/plain` (UTF-8 by default; US-ASCII, ISO-8859-1 and windows-1252 converted),
//!   `text/html` (converted by a small tokenizer of our own, rules at [`plain_text`]) and
//!   `multipart/alternative` / `multipart/related` (RFC 2046 §5.1: the `text/plain` part is
//!   preferred, else `text/html`). `text/rtf` is refused with [`BodyError::UnsupportedType`]
//!   so that the sender is told 415 with [`ACCEPT`] and falls back to a type we read; see
//!   docs/mapping.md §4 for why.
//! * [`ms_text_format`] reads the first message that Microsoft clients put in the INVITE's
//!   `ms-text-format` header (`text/plain; charset=UTF-8;msgr=…;ms-body=<base64>`,
//!   docs/mapping.md §4).
//! * [`iscomposing_body`] / [`parse_iscomposing`]: RFC 3994 `application/im-iscomposing+xml`
//!   (`active` = composing, `idle` = not composing).
//! * [`keyboard_activity_body`] / [`parse_keyboard_activity`]: the Microsoft INFO body
//!   `<KeyboardActivity><status status="type"/></KeyboardActivity>` (`type` / `idle`).
//!
//! Mapping of typing states (docs/mapping.md §4): XEP-0085 `composing` ↔
//! RFC 3994 `active` / Microsoft `type`; XEP-0085 `paused` and `active` are both sent as
//! `idle`; a received `idle` becomes [`Typing::Paused`]. The last one is this module's
//! decision (RFC 7572, the SIP–XMPP instant-message interworking, was not at hand when it was
//! taken): a content message itself ends composition on the receiving side (RFC 3994 §3), so
//! an explicit `idle` means the user stopped typing without sending — XEP-0085's `paused`.
//!
//! Security: every input is untrusted. Bodies over [`MAX_BODY_BYTES`] are refused. XML bodies
//! are read with the bridge's one hardened XML reader, [`crate::core::xml`], as PIDF is: any
//! DOCTYPE is refused (so no DTD, no entity declaration, no external entity, no expansion
//! bomb), only the five predefined entities and character references are accepted, size,
//! nesting depth and element count are bounded. Multipart bodies are bounded in parts, part
//! headers and nesting. The HTML converter never builds a tree: it is one linear pass, so
//! nesting costs nothing. No input can make this module panic (the
//! `im_body` fuzz target and the property tests check it).

mod html;
mod invitation;
mod multipart;
mod text;
mod typing;

pub use invitation::{
    FileOffer, Invitation, MAX_FILE_NAME_CHARS, MSMSGSINVITE_TYPE, decline_body, offer_notice,
    parse_invitation,
};
pub use typing::{
    ISCOMPOSING_REFRESH_SECS, ISCOMPOSING_TYPE, KEYBOARD_ACTIVITY_TYPE, NS_ISCOMPOSING, Typing,
    iscomposing_body, keyboard_activity_body, parse_iscomposing, parse_keyboard_activity,
};

use crate::sip::header::MediaType;
use html::html_to_text;
use multipart::{decode_base64, multipart_text};
use text::decode_charset;

/// Largest body (or decoded `ms-body`) accepted, in bytes: the SIP body limit's default.
/// Text produced from it is at most three times as long (windows-1252 → UTF-8); HTML
/// conversion never makes text longer than its input.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The body types the bridge reads in an IM session, for the `Accept` header of a 415
/// (RFC 3261 §21.4.16) and for `a=accept-types`.
pub const ACCEPT: &str = "text/plain, text/html, multipart/alternative, multipart/related, application/im-iscomposing+xml";

/// Why a body could not be turned into text or a typing state. The engine answers
/// `UnsupportedType` with 415 and [`ACCEPT`], the others with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// A content type the bridge does not read (e.g. `text/rtf`), or a multipart body
    /// without a part it reads. Holds the type (lowercase essence) or a description.
    #[error("content type {0} is not supported (supported: {ACCEPT})")]
    UnsupportedType(String),
    /// A charset other than UTF-8, US-ASCII, ISO-8859-1 and windows-1252, or bytes that are
    /// not valid in the declared charset.
    #[error("{0}")]
    BadCharset(String),
    /// Anything else: a malformed Content-Type, multipart structure, base64, XML document, or
    /// a body over [`MAX_BODY_BYTES`].
    #[error("{0}")]
    Malformed(String),
}

use BodyError::{Malformed, UnsupportedType};

// ---------------------------------------------------------------------------------------------
// Bodies → text
// ---------------------------------------------------------------------------------------------

/// The plain text of an incoming IM body, from its Content-Type value and bytes.
///
/// * `text/plain`: the text exactly as sent (no trimming, no line-end change). Charset
///   `UTF-8` when absent; `US-ASCII` accepts any valid UTF-8 (a superset); `ISO-8859-1` and
///   `windows-1252` are converted (ISO-8859-1 as windows-1252, the WHATWG Encoding rule:
///   bytes 0x80–0x9F are never meant as C1 controls). Other charsets: [`BodyError::BadCharset`].
/// * `text/html`: tags removed; `<script>`, `<style>`, `<title>` and `<template>` dropped with
///   their content; comments dropped; block elements (`<p>`, `<div>`, `<li>`, `<tr>`, headings
///   …) start new lines, `<br>` breaks a line; white space collapsed except in `<pre>`; named
///   (HTML 4 Latin-1 set and common typographic ones) and numeric entities decoded; a link
///   whose text differs from its target keeps the target in parentheses; `<img alt>` gives its
///   alt text; at most one empty line in a row; trimmed.
/// * `multipart/alternative` and `multipart/related` (RFC 2046 §5.1, RFC 2387): the first
///   `text/plain` part, else the first `text/html` part, else a nested multipart part; parts
///   may use `base64` or `quoted-printable` transfer encoding. None of them:
///   [`BodyError::UnsupportedType`].
/// * anything else, `text/rtf` included: [`BodyError::UnsupportedType`].
///
/// `text/plain` is returned as sent, so it may hold characters XML 1.0 forbids (NUL, most C0
/// controls, U+FFFE/U+FFFF); the component link removes them from every stanza
/// (`core::xml_chars`). HTML conversion already drops them.
pub fn plain_text(content_type: &str, body: &[u8]) -> Result<String, BodyError> {
    check_size(body.len())?;
    entity_text(content_type, body, 0)
}

fn check_size(len: usize) -> Result<(), BodyError> {
    if len > MAX_BODY_BYTES {
        return Err(Malformed(format!(
            "body is {len} bytes, larger than the limit of {MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Html,
    Multipart,
    Other,
}

fn kind(mt: &MediaType<'_>) -> Kind {
    if mt.is("text/plain") {
        Kind::Plain
    } else if mt.is("text/html") {
        Kind::Html
    } else if mt.is("multipart/alternative") || mt.is("multipart/related") {
        Kind::Multipart
    } else {
        Kind::Other
    }
}

fn media_type(content_type: &str) -> Result<MediaType<'_>, BodyError> {
    let ct = content_type.trim();
    if ct.is_empty() {
        return Err(Malformed("no Content-Type for the body".to_owned()));
    }
    MediaType::parse(ct).map_err(|_| {
        Malformed(format!(
            "Content-Type \"{}\" is not type/subtype",
            ct.escape_debug()
        ))
    })
}

fn essence(mt: &MediaType<'_>) -> String {
    format!(
        "{}/{}",
        mt.mtype.to_ascii_lowercase(),
        mt.subtype.to_ascii_lowercase()
    )
}

fn entity_text(content_type: &str, body: &[u8], depth: usize) -> Result<String, BodyError> {
    let mt = media_type(content_type)?;
    match kind(&mt) {
        Kind::Plain => decode_charset(mt.charset(), body),
        Kind::Html => decode_charset(mt.charset(), body).map(|html| html_to_text(&html)),
        Kind::Multipart => multipart_text(&mt, body, depth),
        Kind::Other => Err(UnsupportedType(essence(&mt))),
    }
}

// ---------------------------------------------------------------------------------------------
// ms-text-format
// ---------------------------------------------------------------------------------------------

/// The first message carried in an INVITE's `ms-text-format` header
/// (`text/plain; charset=UTF-8;msgr=…;ms-body=<base64>`): the `ms-body` parameter
/// base64-decoded (padding optional) and converted by [`plain_text`] with the header value as
/// its Content-Type (so `charset` applies, and `text/html` is converted). `None` when the
/// value is empty, has no or an empty `ms-body`, or the text is empty; `Err` when the value
/// is not a media type, `ms-body` is not base64, or [`plain_text`] refuses the text. The
/// `msgr` parameter (UTF-16 formatting hints, X-MMS-IM-Format) is ignored.
/// A `text/x-msmsgsinvite` value is [`BodyError::UnsupportedType`] here; see
/// [`ms_text_format_message`] for it.
pub fn ms_text_format(header_value: &str) -> Result<Option<String>, BodyError> {
    match ms_text_format_message(header_value)? {
        None => Ok(None),
        Some(FirstMessage::Text(text)) => Ok(Some(text)),
        Some(FirstMessage::Invitation(_)) => Err(UnsupportedType(MSMSGSINVITE_TYPE.to_owned())),
    }
}

/// What the first message of an INVITE's `ms-text-format` header is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstMessage {
    /// Text, as [`ms_text_format`] gives it.
    Text(String),
    /// A `text/x-msmsgsinvite` invitation (pidgin-sipe puts its file offers there:
    /// `ms-text-format: text/x-msmsgsinvite; charset=UTF-8;ms-body=<base64>`).
    Invitation(Invitation),
}

/// [`ms_text_format`], and the `text/x-msmsgsinvite` invitation [`parse_invitation`] reads.
pub fn ms_text_format_message(header_value: &str) -> Result<Option<FirstMessage>, BodyError> {
    let value = header_value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let mt = media_type(value).map_err(|e| Malformed(format!("ms-text-format: {e}")))?;
    let Some(encoded) = mt.params.value("ms-body").map(str::trim) else {
        return Ok(None);
    };
    if encoded.is_empty() {
        return Ok(None);
    }
    check_size(encoded.len() / 4 * 3)?;
    let bytes = decode_base64(encoded.as_bytes())
        .map_err(|e| Malformed(format!("ms-text-format: ms-body: {e}")))?;
    if mt.is(MSMSGSINVITE_TYPE) {
        return parse_invitation(&bytes).map(|i| Some(FirstMessage::Invitation(i)));
    }
    let text = plain_text(value, &bytes)?;
    Ok(Some(text).filter(|t| !t.is_empty()).map(FirstMessage::Text))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::BodyError::BadCharset;
    use super::multipart::LIBERAL_BASE64;
    use super::*;
    use base64::Engine as _;

    #[test]
    fn other_types_are_unsupported_or_malformed() {
        assert_eq!(
            plain_text("text/rtf", br"{\rtf1\ansi Hello}"),
            Err(UnsupportedType("text/rtf".to_owned()))
        );
        assert_eq!(
            plain_text("Application/MS-IMDN+XML", b"<x/>"),
            Err(UnsupportedType("application/ms-imdn+xml".to_owned()))
        );
        assert_eq!(
            plain_text("multipart/mixed; boundary=b", b"--b\r\n\r\nx\r\n--b--"),
            Err(UnsupportedType("multipart/mixed".to_owned()))
        );
        assert!(matches!(plain_text("", b"hi"), Err(Malformed(_))));
        assert!(matches!(plain_text("textplain", b"hi"), Err(Malformed(_))));
        let err = plain_text("text/rtf", b"").unwrap_err();
        assert!(
            err.to_string().contains("text/rtf is not supported"),
            "{err}"
        );
        assert!(err.to_string().contains(ACCEPT), "{err}");
    }

    #[test]
    fn size_is_bounded() {
        let big = vec![b'a'; MAX_BODY_BYTES + 1];
        assert_eq!(
            plain_text("text/plain", &big),
            Err(Malformed(format!(
                "body is {} bytes, larger than the limit of {MAX_BODY_BYTES} bytes",
                MAX_BODY_BYTES + 1
            )))
        );
        assert_eq!(
            plain_text("text/plain", &big[..MAX_BODY_BYTES])
                .unwrap()
                .len(),
            MAX_BODY_BYTES
        );
        let mb_html = "<div><b>x</b>&amp;".repeat(1 << 16);
        assert!(mb_html.len() > 1 << 20);
        assert!(matches!(
            plain_text("text/html", mb_html.as_bytes()),
            Err(Malformed(_))
        ));
        // windows-1252 at most triples the size.
        let euros = vec![0x80; MAX_BODY_BYTES];
        assert_eq!(
            plain_text("text/plain; charset=windows-1252", &euros)
                .unwrap()
                .len(),
            3 * MAX_BODY_BYTES
        );
    }

    // --- ms-text-format -------------------------------------------------------------------------

    #[test]
    fn ms_text_format_first_message() {
        // The form in tests/golden/sip/lcs_invite_im.sip.
        assert_eq!(
            ms_text_format(
                "text/plain; charset=UTF-8;msgr=WAAtAE0ATQBTAC0ASQBNAC0ARgBvAHIAbQBhAHQAOgAgAEYATgA9AFMAZQBnAG8AZQAlADIAMABVAEkAOwAgAEUARgA9ADsAIABDAE8APQAwADsAIABDAFMAPQAwADsAIABQAEYAPQAwAA0ACgANAAoADQA;ms-body=SGVsbG8gZnJvbSBMeW5jIQ=="
            ),
            Ok(Some("Hello from Lync!".to_owned()))
        );
        // pidgin-sipe's comment form, a space before ms-body, padding dropped.
        assert_eq!(
            ms_text_format("text/plain; charset=UTF-8;msgr=WAAtAE0...DIADQAKAA0ACgA;ms-body=SGk="),
            Ok(Some("Hi".to_owned()))
        );
        assert_eq!(
            ms_text_format("text/plain; charset=UTF-8; ms-body=SGk"),
            Ok(Some("Hi".to_owned()))
        );
        let b64 = LIBERAL_BASE64.encode("Café 中文 😀 <&>");
        assert_eq!(
            ms_text_format(&format!("text/plain; charset=UTF-8;ms-body={b64}")),
            Ok(Some("Café 中文 😀 <&>".to_owned()))
        );
        let b64 = LIBERAL_BASE64.encode("<b>bold</b> &amp; <i>more</i>");
        assert_eq!(
            ms_text_format(&format!("text/html; charset=UTF-8;ms-body={b64}")),
            Ok(Some("bold & more".to_owned()))
        );
        let b64 = LIBERAL_BASE64.encode([b'c', b'a', b'f', 0xE9]);
        assert_eq!(
            ms_text_format(&format!("text/plain; charset=iso-8859-1;ms-body={b64}")),
            Ok(Some("café".to_owned()))
        );
    }

    /// pidgin-sipe offers a file in the INVITE: `sipe_im_invite(…, body, "text/x-msmsgsinvite")`
    /// puts `ms-text-format: text/x-msmsgsinvite; charset=UTF-8;ms-body=<base64>`.
    #[test]
    fn ms_text_format_can_carry_a_file_offer() {
        let offer = "Application-Name: File Transfer\r\nInvitation-Command: INVITE\r\nInvitation-Cookie: 4711\r\nApplication-File: a.txt\r\nApplication-FileSize: 3\r\n";
        let value = format!(
            "text/x-msmsgsinvite; charset=UTF-8;ms-body={}",
            LIBERAL_BASE64.encode(offer)
        );
        assert_eq!(
            ms_text_format_message(&value),
            Ok(Some(FirstMessage::Invitation(Invitation::FileOffer(
                FileOffer {
                    cookie: "4711".into(),
                    name: Some("a.txt".into()),
                    size: Some(3),
                }
            ))))
        );
        assert_eq!(
            ms_text_format(&value),
            Err(UnsupportedType(MSMSGSINVITE_TYPE.to_owned()))
        );
        let bad = format!(
            "text/x-msmsgsinvite;ms-body={}",
            LIBERAL_BASE64.encode("Invitation-Command: INVITE\r\n")
        );
        assert!(matches!(ms_text_format_message(&bad), Err(Malformed(_))));
        assert_eq!(
            ms_text_format_message("text/plain;ms-body=SGk="),
            Ok(Some(FirstMessage::Text("Hi".into())))
        );
    }

    #[test]
    fn ms_text_format_absent_empty_or_bad() {
        assert_eq!(ms_text_format(""), Ok(None));
        assert_eq!(ms_text_format("   "), Ok(None));
        assert_eq!(
            ms_text_format("text/plain; charset=UTF-8;msgr=WAAt"),
            Ok(None)
        );
        assert_eq!(
            ms_text_format("text/plain; charset=UTF-8;ms-body="),
            Ok(None)
        );
        assert_eq!(
            ms_text_format("text/html;ms-body=PGJyPg=="),
            Ok(None),
            "<br> is empty"
        );
        assert!(matches!(
            ms_text_format("text/plain;ms-body=!!notbase64"),
            Err(Malformed(m)) if m.starts_with("ms-text-format: ms-body: invalid base64")
        ));
        assert!(matches!(
            ms_text_format("garbage;ms-body=SGk="),
            Err(Malformed(_))
        ));
        assert_eq!(
            ms_text_format("text/rtf; charset=UTF-8;ms-body=e1xydGYxfQ=="),
            Err(UnsupportedType("text/rtf".to_owned()))
        );
        assert!(matches!(
            ms_text_format("text/plain; charset=utf-16;ms-body=SGk="),
            Err(BadCharset(_))
        ));
        let huge = format!(
            "text/plain;ms-body={}",
            "QUFB".repeat(MAX_BODY_BYTES / 3 + 2)
        );
        assert!(matches!(ms_text_format(&huge), Err(Malformed(_))));
    }

    // --- properties -----------------------------------------------------------------------------

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn content_type() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("text/plain".to_owned()),
                Just("text/plain; charset=UTF-8".to_owned()),
                Just("text/plain; charset=iso-8859-1".to_owned()),
                Just("text/plain; charset=us-ascii".to_owned()),
                Just("text/html".to_owned()),
                Just("text/html; charset=windows-1252".to_owned()),
                Just("multipart/alternative; boundary=b".to_owned()),
                Just("multipart/related; boundary=\"b\"".to_owned()),
                Just("text/rtf".to_owned()),
                ".{0,40}",
            ]
        }

        /// Bodies made of the pieces the parsers look for.
        fn pieces() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(
                prop_oneof![
                    Just(&b"--b"[..]),
                    Just(&b"--b--"[..]),
                    Just(&b"\r\n"[..]),
                    Just(&b"\n"[..]),
                    Just(&b"Content-Type: text/html\r\n"[..]),
                    Just(&b"Content-Type: text/plain; charset=utf-8\r\n"[..]),
                    Just(&b"Content-Type: multipart/alternative; boundary=b\r\n"[..]),
                    Just(&b"Content-Transfer-Encoding: base64\r\n"[..]),
                    Just(&b"Content-Transfer-Encoding: quoted-printable\r\n"[..]),
                    Just(&b"<p>"[..]),
                    Just(&b"</p>"[..]),
                    Just(&b"<br>"[..]),
                    Just(&b"<pre>"[..]),
                    Just(&b"</pre>"[..]),
                    Just(&b"<a href=\"https://x\">"[..]),
                    Just(&b"</a>"[..]),
                    Just(&b"<script>"[..]),
                    Just(&b"</script>"[..]),
                    Just(&b"<!--"[..]),
                    Just(&b"-->"[..]),
                    Just(&b"&amp;"[..]),
                    Just(&b"&#x1F600;"[..]),
                    Just(&b"&#"[..]),
                    Just(&b"&copy"[..]),
                    Just(&b"=C3=A9"[..]),
                    Just(&b"SGk="[..]),
                    Just(&b" "[..]),
                    Just(&b"\xC3\xA9"[..]),
                    Just(&b"\xE4\xB8\xAD"[..]),
                    Just(&b"\xFF"[..]),
                    Just(&b"x"[..]),
                ],
                0..40,
            )
            .prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1500))]

            #[test]
            fn utf8_plain_text_is_identity(s in any::<String>()) {
                prop_assert_eq!(plain_text("text/plain; charset=UTF-8", s.as_bytes()), Ok(s.clone()));
                prop_assert_eq!(plain_text("text/plain", s.as_bytes()), Ok(s));
            }

            #[test]
            fn html_escaped_text_comes_back(s in "[a-zA-Z0-9<>&\"' é中😀]{0,40}") {
                let escaped = s
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;");
                let expected = s.split_whitespace().collect::<Vec<_>>().join(" ");
                prop_assert_eq!(plain_text("text/html", escaped.as_bytes()), Ok(expected));
            }

            #[test]
            fn plain_text_never_panics_on_arbitrary_input(
                ct in content_type(),
                body in proptest::collection::vec(any::<u8>(), 0..1024),
            ) {
                let _ = plain_text(&ct, &body);
            }

            #[test]
            fn plain_text_never_panics_on_structured_input(ct in content_type(), body in pieces()) {
                if let Ok(text) = plain_text(&ct, &body) {
                    // Never longer than three times the input (windows-1252).
                    prop_assert!(text.len() <= 3 * body.len());
                }
            }

            #[test]
            fn others_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), s in ".{0,200}") {
                let _ = parse_iscomposing(&body);
                let _ = parse_keyboard_activity(&body);
                let _ = ms_text_format(&s);
                let _ = ms_text_format(&format!("text/plain;ms-body={s}"));
            }
        }
    }
}
