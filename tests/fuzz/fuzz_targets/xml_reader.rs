//! Fuzz target: the hardened XML reader (`core::xml`) under the default bounds and under small
//! ones, and stanza inspection (`xmpp::parse_stanza`) that uses it. What the reader hands out
//! must respect its policy: depth and element count within the bounds, only XML characters
//! in text and attribute values, balanced once the root has closed.
#![no_main]

use lcs_bridge::core::xml::{self, XmlEvent, XmlLimits, XmlReader};
use lcs_bridge::core::xml_chars;
use libfuzzer_sys::fuzz_target;

const SMALL: XmlLimits = XmlLimits {
    max_bytes: 8192,
    max_depth: 4,
    max_elements: 16,
};

fn read(data: &[u8], limits: &XmlLimits) {
    let Ok(mut reader) = XmlReader::new(data, limits) else {
        return;
    };
    let mut text = String::new();
    let mut elements = 0;
    loop {
        match reader.next_event() {
            Ok(Some(event)) => {
                if let XmlEvent::Start(e) | XmlEvent::Empty(e) = &event {
                    elements += 1;
                    for attr in e.attributes().flatten() {
                        if let Ok(value) = xml::attribute_value(&attr, 0) {
                            assert_eq!(xml_chars::clean(&value), value, "attribute value");
                        }
                    }
                }
                assert!(reader.depth() <= limits.max_depth, "depth");
                event.push_text(&mut text);
            }
            Ok(None) => {
                assert_eq!(reader.depth(), 0, "root closed");
                break;
            }
            Err(_) => break,
        }
    }
    assert!(elements <= limits.max_elements, "element count");
    assert_eq!(xml_chars::clean(&text), text, "text");
}

fuzz_target!(|data: &[u8]| {
    read(data, &XmlLimits::DEFAULT);
    read(data, &SMALL);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = lcs_bridge::xmpp::parse_stanza(s);
    }
});
