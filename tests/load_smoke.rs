//! The load generator's smoke run: every scenario of `tests/load/lcs_load.rs`, tiny
//! and short, against the debug bridge (im-prosody with a real Prosody: skipped like the other
//! real-peer tests when it is not installed), so that the benchmark suite keeps working. The
//! figures mean nothing here; `ok` means every load item was delivered translated and
//! nothing came back as an error. Benchmarks proper: docs/benchmarks.md "End to end".

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn every_load_scenario_runs() {
    // `cargo test` compiles the examples but does not put them at their plain names: build
    // it (at once when up to date).
    let ok = Command::new(env!("CARGO"))
        .args(["build", "--example", "lcs-load"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot build the lcs-load example");
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(|d| d.parent()).unwrap().to_owned();
    let load: PathBuf = debug.join("examples/lcs-load");
    let out_dir = tempfile::tempdir().unwrap();
    let json = out_dir.path().join("results.jsonl");
    let out = Command::new(&load)
        .args(["--smoke", "--bridge-cpu", "none", "--bridge"])
        .arg(env!("CARGO_BIN_EXE_lcs-bridge"))
        .arg("--json")
        .arg(&json)
        .arg("all")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lcs-load --smoke all failed:\n{text}");
    let lines = std::fs::read_to_string(&json).unwrap();
    let scenarios: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(scenarios.len(), 8, "{lines}");
    for s in &scenarios {
        assert_eq!(s["ok"], true, "{s}");
        // im-prosody without Prosody installed (and LCS_BRIDGE_REQUIRE_PEERS unset): say so
        // where a passing test's output still shows.
        if let Some(why) = s["skipped"].as_str() {
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!! SKIP: lcs-load {}: {why} — install peers with tests/install-peers.sh \
                 (set LCS_BRIDGE_REQUIRE_PEERS=1 to make this a failure) !!!!!\n",
                s["scenario"]
            );
        }
    }
}
