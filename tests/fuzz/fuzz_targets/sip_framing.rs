//! Fuzz target: the stream framer fed in arbitrary chunks; it must never panic and never buffer
//! beyond its limits.
#![no_main]

use lcs_bridge::sip::framing::Framer;
use lcs_bridge::sip::message::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_head_bytes: 2048,
        max_body_bytes: 1024,
        max_headers: 32,
    };
    let mut f = Framer::new(limits);
    // The first byte chooses the chunk size, so splits at every position get explored.
    let chunk = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for piece in data.get(1..).unwrap_or_default().chunks(chunk) {
        f.push(piece);
        loop {
            match f.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(f.buffered() <= limits.max_head_bytes + limits.max_body_bytes + chunk);
    }
});
