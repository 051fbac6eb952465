//! Fuzz target: Microsoft enhanced presence (`core::ms_presence`): categories and msrtc.pidf
//! parsing, render∘parse of whatever parsed, and the mapping to an XMPP view.
#![no_main]

use lcs_bridge::core::ms_presence;
use lcs_bridge::core::presence::xmpp_view_of_ms;
use lcs_bridge::core::tables::{Mappings, PresenceTable};
use libfuzzer_sys::fuzz_target;

static TABLE: std::sync::OnceLock<PresenceTable> = std::sync::OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let table = TABLE.get_or_init(|| Mappings::builtin().presence);
    for parsed in [
        ms_presence::parse_categories(data),
        ms_presence::parse_msrtc_pidf(data),
    ] {
        if let Ok(doc) = parsed {
            let rendered = ms_presence::render_categories(&doc);
            let back = ms_presence::parse_categories(rendered.as_bytes())
                .expect("a rendered categories document must parse");
            assert_eq!(back, doc, "render∘parse must keep the document");
            let _ = xmpp_view_of_ms(&doc, table);
        }
    }
});
