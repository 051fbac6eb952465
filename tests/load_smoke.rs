//! The load generator's smoke run: every scenario of `tests/load/lcs_load.rs`, tiny
//! and short, against the debug bridge (im-prosody with a real Prosody: skipped like the other
//! real-peer tests when it is not installed), so that the benchmark suite keeps working. The
//! figures mean nothing here; `ok` means every load item was delivered translated and
//! nothing came back as an error. Benchmarks proper: docs/benchmarks.md "End to end".

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

/// The lcs-load example, built. `cargo test` compiles the examples but does not put them at
/// their plain names: build it (at once when up to date).
#[allow(clippy::unwrap_used)] // a test's helper: a failure here is the test's failure
fn lcs_load() -> PathBuf {
    let ok = Command::new(env!("CARGO"))
        .args(["build", "--example", "lcs-load"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot build the lcs-load example");
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(|d| d.parent()).unwrap().to_owned();
    debug.join("examples/lcs-load")
}

#[test]
fn every_load_scenario_runs() {
    let load = lcs_load();
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

/// Kamailio's xmpp module in the bridge's place (`--gateway kamailio`, docs/benchmarks.md
/// "Kamailio side by side"), with its default allocator and with TLSF, at smoke size. The suite
/// never installs or builds Kamailio: without the module built by
/// tests/load/kamailio/setup.sh this is skipped, and says so.
#[test]
fn kamailio_in_the_bridges_place() {
    let setup = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/load/kamailio/setup.sh");
    let built = Command::new("bash")
        .arg(setup)
        .arg("--path")
        .output()
        .is_ok_and(|o| o.status.success());
    if !built {
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!! SKIP: lcs-load --gateway kamailio: Kamailio's xmpp module is not built \
             (run {setup} as root to install and build it) !!!!!\n"
        );
        return;
    }
    let load = lcs_load();
    for allocator in ["default", "tlsf"] {
        let out_dir = tempfile::tempdir().unwrap();
        let json = out_dir.path().join("results.jsonl");
        let out = Command::new(&load)
            .args(["--smoke", "--bridge-cpu", "none", "--gateway", "kamailio"])
            .args(["--kamailio-allocator", allocator, "--json"])
            .arg(&json)
            .arg("im-inbound")
            .output()
            .unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "lcs-load --gateway kamailio --kamailio-allocator {allocator} failed:\n{text}"
        );
        let line = std::fs::read_to_string(&json).unwrap();
        let r: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["gateway"], "kamailio", "{r}");
        assert_eq!(r["kamailio_allocator"], allocator, "{r}");
        // Every step delivered what it sent (checked by lcs-load; the figures mean nothing).
        let steps = r["steps"].as_array().unwrap();
        assert!(!steps.is_empty(), "{r}");
        for s in steps {
            assert!(s["delivered"].as_u64().unwrap() > 0, "{r}");
            assert_eq!(s["delivered"], s["expected"], "{r}");
        }
    }
}
