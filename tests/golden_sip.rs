//! Golden files for the SIP codec and `inspect sip`: LCS/OCS/Lync-style messages carrying the
//! Microsoft's parameters and headers (docs/sip.md "Microsoft extensions"), plus malformed ones
//! (`neg-*`).
//!
//! Every `tests/golden/sip/NAME.sip` goes through [`lcs_bridge::inspect::sip`] and the result is
//! compared with `NAME.json`: `{"ok": <view>}` or `{"error": "<message>"}`. `BLESS=1` rewrites
//! the `.json` files from the current behaviour (review the diff). Valid files must also
//! re-serialise to the same message, and to the same bytes when they use no line folding.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use lcs_bridge::core::tables::Mappings;
use lcs_bridge::inspect;
use lcs_bridge::sip::message::Message;

fn golden_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sip");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sip"))
        .collect();
    files.sort();
    files
}

#[test]
fn golden_sip_files() {
    let bless = std::env::var_os("BLESS").is_some_and(|v| v == "1");
    let mappings = Mappings::builtin();
    let files = golden_files();
    assert!(files.len() >= 15, "golden files missing");
    let mut failures = Vec::new();
    for path in &files {
        let input = std::fs::read(path).unwrap();
        let got = match inspect::sip(&input, &mappings) {
            Ok(v) => serde_json::json!({ "ok": v }),
            Err(e) => serde_json::json!({ "error": e }),
        };
        let rendered = format!("{}\n", serde_json::to_string_pretty(&got).unwrap());
        let expected_path = path.with_extension("json");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            name.starts_with("neg-"),
            got.get("error").is_some(),
            "{name}: {got}"
        );
        if bless {
            std::fs::write(&expected_path, &rendered).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} missing: run with BLESS=1", expected_path.display()));
        if expected != rendered {
            failures.push(format!("{name}:\nexpected {expected}\ngot      {rendered}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn golden_messages_reserialise() {
    for path in golden_files() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("neg-") {
            continue;
        }
        let input = std::fs::read(&path).unwrap();
        let m = Message::parse(&input).unwrap();
        let printed = m.to_bytes();
        assert_eq!(Message::parse(&printed).unwrap(), m, "{name}");
        if !name.contains("folded") {
            assert_eq!(
                String::from_utf8_lossy(&printed),
                String::from_utf8_lossy(&input),
                "{name} is not re-emitted byte for byte"
            );
        }
    }
}

#[test]
fn microsoft_details_survive() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sip");
    let invite = Message::parse(&std::fs::read(dir.join("lcs_invite_im.sip")).unwrap()).unwrap();
    let vias = invite.via().unwrap();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[1].params.value("ms-received-cid"), Some("1E00"));
    let view = inspect::sip(
        &std::fs::read(dir.join("lcs_invite_im.sip")).unwrap(),
        &Mappings::builtin(),
    )
    .unwrap();
    assert_eq!(view["ms_text_format"]["text"], "Hello from Lync!");
    assert_eq!(view["sdp"]["message_session"], true);
    assert_eq!(view["contact"][0]["proxy_replace"], true);
    assert_eq!(
        view["contact"][0]["sip_instance"],
        "<urn:uuid:2c1d0e4f-5a6b-7c8d-9e0f-a1b2c3d4e5f6>"
    );
    let sips = inspect::sip(
        &std::fs::read(dir.join("sips_uri.sip")).unwrap(),
        &Mappings::builtin(),
    )
    .unwrap();
    assert_eq!(sips["has_sips_uri"], true);
    assert_eq!(sips["sips_uri_in"], "From");
}
