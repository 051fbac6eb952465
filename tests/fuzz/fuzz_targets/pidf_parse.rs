//! Fuzz target: PIDF parsing, and render∘parse of whatever parsed.
#![no_main]

use lcs_bridge::core::pidf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = pidf::parse(data) {
        let rendered = pidf::render(&doc);
        pidf::parse(rendered.as_bytes()).expect("rendered PIDF must parse");
    }
});
