//! Golden files for the PIDF codec (RFC 3863 / RFC 4480 / RFC 4482, the LCS profile's form).
//!
//! Every `tests/golden/pidf/NAME.xml` is parsed and the result compared with `NAME.json`:
//! `{"ok": <document>}` or `{"error": "<message>"}`. Run with `BLESS=1` to rewrite the `.json`
//! files from the current behaviour (then review the diff).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use lcs_bridge::core::pidf::{self, PidfDocument};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/pidf")
}

fn outcome(input: &[u8]) -> serde_json::Value {
    match pidf::parse(input) {
        Ok(doc) => serde_json::json!({ "ok": doc }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
}

#[test]
fn golden_pidf_files() {
    let bless = std::env::var_os("BLESS").is_some_and(|v| v == "1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "golden files missing");
    let mut failures = Vec::new();
    for xml in &files {
        let input = std::fs::read(xml).unwrap();
        let got = outcome(&input);
        let expected_path = xml.with_extension("json");
        let rendered = format!("{}\n", serde_json::to_string_pretty(&got).unwrap());
        if bless {
            std::fs::write(&expected_path, &rendered).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} missing: run with BLESS=1", expected_path.display()));
        if expected != rendered {
            failures.push(format!(
                "{}:\nexpected {expected}\ngot      {rendered}",
                xml.display()
            ));
        }
        // Negative files are named neg-*; every other file must parse.
        let name = xml.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            name.starts_with("neg-"),
            got.get("error").is_some(),
            "{name}: {got}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Whatever parses also survives render → parse (icons that are not https are dropped by
/// render, as the profile requires).
#[test]
fn golden_documents_round_trip_through_render() {
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "xml") {
            continue;
        }
        let Ok(doc) = pidf::parse(&std::fs::read(&path).unwrap()) else {
            continue;
        };
        let mut expected: PidfDocument = doc.clone();
        if !expected
            .icon
            .as_deref()
            .is_some_and(|i| i.starts_with("https://"))
        {
            expected.icon = None;
        }
        let again = pidf::parse(pidf::render(&doc).as_bytes()).unwrap();
        assert_eq!(again, expected, "{}", path.display());
    }
}
