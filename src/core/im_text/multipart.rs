//! `multipart/alternative` and `multipart/related` bodies (RFC 2046 §5.1, RFC 2387), with
//! `base64` and `quoted-printable` parts (RFC 2045 §6.7, §6.8); bounded in parts, part headers
//! and nesting.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::BodyError::{self, Malformed, UnsupportedType};
use super::{Kind, entity_text, essence, kind, media_type};
use crate::sip::header::MediaType;

/// Deepest multipart nesting read (`multipart/alternative` holding `multipart/related` …).
const MAX_MULTIPART_DEPTH: usize = 3;
/// Most body parts read in one multipart body.
const MAX_PARTS: usize = 32;
/// Most header lines in one body part.
const MAX_PART_HEADERS: usize = 32;

/// RFC 2046 §5.1.1 `bchars`: 1–70 of them, not ending in a space.
fn valid_boundary(b: &str) -> bool {
    (1..=70).contains(&b.len())
        && !b.ends_with(' ')
        && b.bytes().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'\''
                        | b'('
                        | b')'
                        | b'+'
                        | b'_'
                        | b','
                        | b'-'
                        | b'.'
                        | b'/'
                        | b':'
                        | b'='
                        | b'?'
                        | b' '
                )
        })
}

pub(super) fn multipart_text(
    mt: &MediaType<'_>,
    body: &[u8],
    depth: usize,
) -> Result<String, BodyError> {
    let what = essence(mt);
    if depth >= MAX_MULTIPART_DEPTH {
        return Err(Malformed(format!(
            "{what}: multipart bodies nested deeper than {MAX_MULTIPART_DEPTH} levels"
        )));
    }
    let parts = raw_parts(mt, body)?;

    // Candidates in order of preference: text/plain, text/html, nested multipart.
    let mut candidates: [Option<Part<'_>>; 3] = [None, None, None];
    for raw in parts {
        let part = parse_part(raw).map_err(|problem| Malformed(format!("{what}: {problem}")))?;
        let slot = match kind(&media_type(&part.content_type)?) {
            Kind::Plain => 0,
            Kind::Html => 1,
            Kind::Multipart => 2,
            Kind::Other => continue,
        };
        if candidates[slot].is_none() {
            candidates[slot] = Some(part);
        }
    }
    let mut first_error = None;
    for part in candidates.into_iter().flatten() {
        let result = transfer_decode(&part)
            .and_then(|content| entity_text(&part.content_type, &content, depth + 1));
        match result {
            Ok(text) => return Ok(text),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        UnsupportedType(format!("{what} without a text/plain or text/html part"))
    }))
}

/// The raw parts of a multipart body, split at its `boundary` parameter.
fn raw_parts<'b>(mt: &MediaType<'_>, body: &'b [u8]) -> Result<Vec<&'b [u8]>, BodyError> {
    let what = essence(mt);
    let boundary = mt
        .params
        .value("boundary")
        .ok_or_else(|| Malformed(format!("{what} without a boundary parameter")))?;
    if !valid_boundary(boundary) {
        return Err(Malformed(format!(
            "{what}: boundary \"{}\" is not 1-70 RFC 2046 characters",
            boundary.escape_debug()
        )));
    }
    split_multipart(body, boundary.as_bytes())
        .map_err(|problem| Malformed(format!("{what}: {problem}")))
}

/// A body part's Content-Type and its content, transfer encoding undone.
pub(super) type DecodedPart<'b> = (String, Cow<'b, [u8]>);

/// The parts of a multipart body of any subtype (a Lync file offer comes as
/// `multipart/mixed`), each as its Content-Type and its content with the transfer encoding
/// undone; as bounded as [`multipart_text`] (not descending into nested multiparts).
pub(super) fn decoded_parts<'b>(
    mt: &MediaType<'_>,
    body: &'b [u8],
) -> Result<Vec<DecodedPart<'b>>, BodyError> {
    let what = essence(mt);
    raw_parts(mt, body)?
        .into_iter()
        .map(|raw| {
            let part =
                parse_part(raw).map_err(|problem| Malformed(format!("{what}: {problem}")))?;
            let content = transfer_decode(&part)?;
            Ok((part.content_type, content))
        })
        .collect()
}

/// Splits a multipart body into its parts (each without the delimiter lines and without the
/// line break that belongs to the next delimiter). Accepts CRLF and bare LF line ends.
fn split_multipart<'b>(body: &'b [u8], boundary: &[u8]) -> Result<Vec<&'b [u8]>, String> {
    let mut dash = Vec::with_capacity(boundary.len() + 2);
    dash.extend_from_slice(b"--");
    dash.extend_from_slice(boundary);
    let finder = memchr::memmem::Finder::new(&dash);

    let mut parts = Vec::new();
    // Start of the current part's content (after a delimiter line), once one was seen.
    let mut open: Option<usize> = None;
    let mut from = 0;
    while let Some(off) = finder.find(&body[from..]) {
        let at = from + off;
        from = at + 1;
        // A delimiter starts a line.
        if at != 0 && body[at - 1] != b'\n' {
            continue;
        }
        let after = at + dash.len();
        let rest = &body[after..];
        let close = rest.starts_with(b"--");
        let line_rest = if close { &rest[2..] } else { rest };
        // Transport padding (LWSP) then the line end (or, for the close delimiter, the end).
        let pad = line_rest
            .iter()
            .take_while(|&&c| c == b' ' || c == b'\t')
            .count();
        let line_end = match &line_rest[pad..] {
            [b'\r', b'\n', ..] => Some(2),
            [b'\n', ..] => Some(1),
            [] if close => Some(0),
            _ => None,
        };
        let Some(eol) = line_end else {
            // `--boundaryX…`: a longer line that merely starts like a delimiter.
            continue;
        };
        if let Some(start) = open {
            // The CRLF (or LF) before the delimiter belongs to it.
            let mut end = at;
            if end > start && body[end - 1] == b'\n' {
                end -= 1;
                if end > start && body[end - 1] == b'\r' {
                    end -= 1;
                }
            }
            if parts.len() == MAX_PARTS {
                return Err(format!("more than {MAX_PARTS} body parts"));
            }
            parts.push(&body[start.min(end)..end]);
        }
        if close {
            return if parts.is_empty() {
                Err("no body part before the close delimiter".to_owned())
            } else {
                Ok(parts)
            };
        }
        let next = after + pad + eol;
        open = Some(next);
        from = next;
    }
    Err(if open.is_some() {
        format!(
            "the body ends without the close delimiter \"{}--\"",
            String::from_utf8_lossy(&dash)
        )
    } else {
        format!(
            "no boundary delimiter \"{}\" in the body",
            String::from_utf8_lossy(&dash)
        )
    })
}

/// One body part: its Content-Type (RFC 2045 §5.2 default `text/plain; charset=us-ascii`),
/// transfer encoding (default `7bit`) and raw content.
struct Part<'b> {
    content_type: String,
    transfer_encoding: String,
    content: &'b [u8],
}

/// Splits a part into headers and content (RFC 2046 §5.1.1 `body-part`; RFC 822 header lines,
/// folded lines unfolded).
fn parse_part(raw: &[u8]) -> Result<Part<'_>, String> {
    // The header block ends at the first empty line; a part that starts with one has none.
    let (head, content): (&[u8], &[u8]) = if let Some(rest) = raw.strip_prefix(b"\r\n") {
        (b"", rest)
    } else if let Some(rest) = raw.strip_prefix(b"\n") {
        (b"", rest)
    } else {
        let crlf = memchr::memmem::find(raw, b"\r\n\r\n").map(|i| (i, 4));
        let lf = memchr::memmem::find(raw, b"\n\n").map(|i| (i, 2));
        match (crlf, lf) {
            (Some(a), Some(b)) => {
                let (i, n) = if a.0 < b.0 { a } else { b };
                (&raw[..i], &raw[i + n..])
            }
            (Some((i, n)), None) | (None, Some((i, n))) => (&raw[..i], &raw[i + n..]),
            (None, None) => (raw, b""),
        }
    };
    let head = std::str::from_utf8(head)
        .map_err(|_| "a body part's headers are not valid UTF-8".to_owned())?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let Some((_, value)) = headers.last_mut() else {
                return Err("a body part starts with a continuation line".to_owned());
            };
            value.push(' ');
            value.push_str(line.trim());
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!(
                "body part header line \"{}\" has no colon",
                line.chars().take(60).collect::<String>().escape_debug()
            ));
        };
        if headers.len() == MAX_PART_HEADERS {
            return Err(format!(
                "a body part has more than {MAX_PART_HEADERS} header lines"
            ));
        }
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let find = |wanted: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(wanted))
            .map(|(_, v)| v.clone())
    };
    Ok(Part {
        content_type: find("Content-Type")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "text/plain; charset=us-ascii".to_owned()),
        transfer_encoding: find("Content-Transfer-Encoding").unwrap_or_else(|| "7bit".to_owned()),
        content,
    })
}

/// base64 that accepts missing padding and line breaks.
pub(super) const LIBERAL_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

pub(super) fn decode_base64(text: &[u8]) -> Result<Vec<u8>, String> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    LIBERAL_BASE64
        .decode(&compact)
        .map_err(|e| format!("invalid base64: {e}"))
}

/// Undoes the part's Content-Transfer-Encoding (RFC 2045 §6).
fn transfer_decode<'b>(part: &Part<'b>) -> Result<Cow<'b, [u8]>, BodyError> {
    let cte = part.transfer_encoding.trim();
    let is = |name: &str| cte.eq_ignore_ascii_case(name);
    if cte.is_empty() || is("7bit") || is("8bit") || is("binary") {
        Ok(Cow::Borrowed(part.content))
    } else if is("base64") {
        decode_base64(part.content)
            .map(Cow::Owned)
            .map_err(|e| Malformed(format!("base64 body part: {e}")))
    } else if is("quoted-printable") {
        Ok(Cow::Owned(decode_quoted_printable(part.content)))
    } else {
        Err(Malformed(format!(
            "body part transfer encoding \"{}\" is not supported",
            cte.escape_debug()
        )))
    }
}

/// RFC 2045 §6.7, liberally: `=XX` is a byte, `=` at a line end is a soft break, any other `=`
/// is kept.
fn decode_quoted_printable(input: &[u8]) -> Vec<u8> {
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        if c == b'=' {
            match input.get(i + 1..i + 3) {
                Some([b'\r', b'\n']) => {
                    i += 3;
                    continue;
                }
                Some([h, l]) => {
                    if let (Some(h), Some(l)) = (hex(*h), hex(*l)) {
                        // Two hex digits: at most 0xFF.
                        out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                        i += 3;
                        continue;
                    }
                }
                _ => {}
            }
            if input.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::core::im_text::{BodyError, plain_text};

    fn text(ct: &str, body: &str) -> String {
        plain_text(ct, body.as_bytes()).unwrap()
    }

    // --- multipart ----------------------------------------------------------------------------

    const LYNC_ALTERNATIVE: &str = "This is a multi-part message in MIME format.\r\n\
        ------=_NextPart_000_0011_01D2E9A2.5F4C1B30\r\n\
        Content-Type: text/plain; charset=UTF-8;msgr=WAAtAE0ATQBTAC0ASQBNAC0ARgBvAHIAbQBhAHQAOgAgAEYATgA9AFMAZQBnAG8AZQAlADIAMABVAEkA\r\n\
        \r\n\
        Lunch at 12? Café ☕ <ok> & fine\r\n\
        ------=_NextPart_000_0011_01D2E9A2.5F4C1B30\r\n\
        Content-Type: text/html; charset=UTF-8\r\n\
        \r\n\
        <DIV style=\"font-family:Segoe UI;\">Lunch at 12? Caf&eacute; &#9749; &lt;ok&gt; &amp; <b>fine</b></DIV>\r\n\
        ------=_NextPart_000_0011_01D2E9A2.5F4C1B30--\r\n\
        epilogue";

    fn alternative(body: &str) -> Result<String, BodyError> {
        plain_text(
            "multipart/alternative;boundary=\"----=_NextPart_000_0011_01D2E9A2.5F4C1B30\"",
            body.as_bytes(),
        )
    }

    #[test]
    fn lync_multipart_alternative_prefers_text_plain() {
        assert_eq!(
            alternative(LYNC_ALTERNATIVE).unwrap(),
            "Lunch at 12? Café ☕ <ok> & fine"
        );
        // Without the text/plain part, the HTML gives the same text.
        let html_only = LYNC_ALTERNATIVE.replacen("text/plain", "text/rtf", 1);
        assert_eq!(
            alternative(&html_only).unwrap(),
            "Lunch at 12? Café ☕ <ok> & fine"
        );
        // Order does not matter: text/plain wins wherever it is.
        let body = "--b\r\nContent-Type: text/html\r\n\r\n<b>html</b>\r\n--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n--b--";
        assert_eq!(
            plain_text("multipart/alternative; boundary=b", body.as_bytes()).unwrap(),
            "plain"
        );
    }

    #[test]
    fn multipart_variants() {
        let ct = "multipart/alternative; boundary=xyz";
        // Bare LF line ends, transport padding after the delimiter, part without headers
        // (RFC 2045 §5.2 default text/plain; charset=us-ascii).
        assert_eq!(text(ct, "--xyz  \n\nhello\n--xyz--"), "hello");
        // Content that contains the boundary string mid-line or as a longer line.
        assert_eq!(
            text(ct, "--xyz\r\n\r\na --xyz b\r\n--xyzzy\r\n--xyz--\r\n"),
            "a --xyz b\r\n--xyzzy"
        );
        // Folded part header, case-insensitive names.
        assert_eq!(
            text(
                ct,
                "--xyz\r\ncontent-type: text/plain;\r\n charset=ISO-8859-1\r\n\r\nplain\r\n--xyz--"
            ),
            "plain"
        );
        // base64 and quoted-printable parts.
        assert_eq!(
            text(
                ct,
                "--xyz\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\nQ2Fmw6kg\r\n5Lit5paH\r\n--xyz--"
            ),
            "Café 中文"
        );
        assert_eq!(
            text(
                ct,
                "--xyz\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\nCaf=C3=A9 =3D soft=\r\nbreak =ZZ\r\n--xyz--"
            ),
            "Café = softbreak =ZZ"
        );
        // Nested multipart/related inside multipart/alternative.
        assert_eq!(
            text(
                ct,
                "--xyz\r\nContent-Type: multipart/related; boundary=\"in ner\"\r\n\r\n--in ner\r\nContent-Type: text/html\r\n\r\n<p>nested</p>\r\n--in ner\r\nContent-Type: image/gif\r\n\r\nGIF89a\r\n--in ner--\r\n--xyz--"
            ),
            "nested"
        );
        // An empty part.
        assert_eq!(text(ct, "--xyz\r\n\r\n\r\n--xyz--"), "");
        // A text/plain part in a bad charset falls back to the HTML part.
        assert_eq!(
            text(
                ct,
                "--xyz\r\nContent-Type: text/plain; charset=utf-16\r\n\r\nx\r\n--xyz\r\nContent-Type: text/html\r\n\r\n<i>html</i>\r\n--xyz--"
            ),
            "html"
        );
    }

    #[test]
    fn multipart_without_readable_part_is_unsupported() {
        let body = "--b\r\nContent-Type: text/rtf\r\n\r\n{\\rtf1 x}\r\n--b\r\nContent-Type: image/gif\r\n\r\nGIF\r\n--b--";
        assert_eq!(
            plain_text("multipart/alternative; boundary=b", body.as_bytes()),
            Err(UnsupportedType(
                "multipart/alternative without a text/plain or text/html part".to_owned()
            ))
        );
    }

    #[test]
    fn malformed_multipart_is_refused() {
        let malformed = |ct: &str, body: &str| match plain_text(ct, body.as_bytes()) {
            Err(Malformed(m)) => m,
            other => panic!("{ct} {body:?}: {other:?}"),
        };
        let ct = "multipart/alternative; boundary=b";
        assert_eq!(
            malformed("multipart/alternative", "--b\r\n\r\nx\r\n--b--"),
            "multipart/alternative without a boundary parameter"
        );
        assert!(malformed("multipart/alternative; boundary=\"\"", "x").contains("boundary"));
        assert!(
            malformed(
                &format!("multipart/alternative; boundary={}", "a".repeat(71)),
                "x"
            )
            .contains("1-70")
        );
        assert!(malformed("multipart/alternative; boundary=\"a b \"", "x").contains("1-70"));
        assert_eq!(
            malformed(ct, "--b\r\nContent-Type: text/plain\r\n\r\nunterminated"),
            "multipart/alternative: the body ends without the close delimiter \"--b--\""
        );
        assert_eq!(
            malformed(ct, "no delimiter at all"),
            "multipart/alternative: no boundary delimiter \"--b\" in the body"
        );
        assert_eq!(
            malformed(ct, "--b--"),
            "multipart/alternative: no body part before the close delimiter"
        );
        assert!(malformed(ct, "--b\r\nnot a header\r\n\r\nx\r\n--b--").contains("no colon"));
        assert!(malformed(ct, "--b\r\n continuation\r\n\r\nx\r\n--b--").contains("continuation"));
        assert!(malformed(ct, "--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nx\r\n--b--").contains("x-uuencode"));
        assert!(malformed(ct, "--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!\r\n--b--").contains("base64"));
        assert!(
            malformed(ct, "--b\r\nContent-Type: nonsense\r\n\r\nx\r\n--b--").contains("nonsense")
        );
        let many = format!("{}--b--", "--b\r\n\r\nx\r\n".repeat(MAX_PARTS + 1));
        assert!(malformed(ct, &many).contains("more than 32 body parts"));
        let headers = format!(
            "--b\r\n{}\r\nx\r\n--b--",
            "X-A: 1\r\n".repeat(MAX_PART_HEADERS + 1)
        );
        assert!(malformed(ct, &headers).contains("header lines"));
        // Nesting: four levels of multipart.
        let mut body = "--b0\r\n\r\nx\r\n--b0--".to_owned();
        for level in 1..=MAX_MULTIPART_DEPTH {
            body = format!(
                "--b{level}\r\nContent-Type: multipart/related; boundary=b{}\r\n\r\n{body}\r\n--b{level}--",
                level - 1
            );
        }
        let top = format!("multipart/alternative; boundary=b{MAX_MULTIPART_DEPTH}");
        assert!(malformed(&top, &body).contains("nested deeper"));
        // One level less is fine.
        let inner = body
            .split_once("\r\n\r\n")
            .map(|(_, rest)| rest.rsplit_once("\r\n--b").map_or(rest, |(b, _)| b))
            .unwrap();
        assert_eq!(
            plain_text(
                &format!(
                    "multipart/alternative; boundary=b{}",
                    MAX_MULTIPART_DEPTH - 1
                ),
                inner.as_bytes()
            )
            .unwrap(),
            "x"
        );
    }

    #[test]
    fn quoted_printable_edge_cases() {
        assert_eq!(decode_quoted_printable(b"a=\nb=4"), b"ab=4");
        assert_eq!(decode_quoted_printable(b"="), b"=");
        assert_eq!(decode_quoted_printable(b"=e9=E9"), [0xE9, 0xE9]);
    }
}
