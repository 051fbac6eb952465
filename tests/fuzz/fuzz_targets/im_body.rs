//! Fuzz target: IM bodies and typing documents. The first line of the input is a Content-Type
//! (also read as an `ms-text-format` header value), the rest is the body.
#![no_main]

use lcs_bridge::core::im_text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(nl) => (&data[..nl], &data[nl + 1..]),
        None => (data, &[][..]),
    };
    let content_type = String::from_utf8_lossy(head);
    if let Ok(text) = im_text::plain_text(&content_type, body) {
        // Converted text is never more than three times the body (windows-1252 → UTF-8).
        assert!(
            text.len() <= 3 * body.len(),
            "{} bytes from {}",
            text.len(),
            body.len()
        );
    }
    if let Ok(text) = im_text::plain_text("text/html", body) {
        assert!(text.len() <= body.len());
        assert_eq!(
            lcs_bridge::core::xml_chars::clean(&text),
            text,
            "HTML conversion leaves only XML characters"
        );
    }
    if let Ok(s) = std::str::from_utf8(body) {
        if s.len() <= im_text::MAX_BODY_BYTES {
            assert_eq!(
                im_text::plain_text("text/plain; charset=UTF-8", body).as_deref(),
                Ok(s)
            );
        }
    }
    let _ = im_text::ms_text_format(&content_type);
    let _ = im_text::parse_iscomposing(body);
    let _ = im_text::parse_keyboard_activity(body);
});
