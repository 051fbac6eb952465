#![allow(clippy::unwrap_used)] // test fixtures: a failure to set one up is a test failure

//! The Debian package and the systemd unit (docs/operations.md "Installing from the Debian
//! package", "Running under systemd").
//!
//! - The packaged configuration, `config/debian/lcs-bridge.toml`, is the example with the
//!   package's paths and nothing else (`BLESS=1` rewrites it from the example), and it passes
//!   `check-config` laid out as the package lays it out.
//! - `cargo deb --no-build` packages the binary this test run built (cheap: no release build)
//!   and the package's contents are checked with `dpkg-deb`: paths, modes, conffiles, the
//!   maintainer scripts, the unit and the configuration byte for byte, the binary runs.
//! - `systemd-analyze verify` finds nothing to say about the unit, and its offline `security`
//!   exposure stays at 2.0 or below.
//!
//! cargo-deb comes from `cargo install cargo-deb --locked` (tests/install-peers.sh), dpkg-deb and
//! systemd-analyze from Debian; a test whose tool is missing skips loudly, or fails under
//! `LCS_BRIDGE_REQUIRE_PEERS=1` (tests/run-all.sh, CI).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use lcs_test_support::{pki, repo, require_peer, run_with_timeout};

/// What the package changes in the example: (line in the example, line in the package).
/// Everything else is the example's, so a key added there reaches the package.
const PACKAGE_EDITS: &[(&str, &str)] = &[
    (
        "# lcs-bridge example configuration: every key, with its default.",
        "# lcs-bridge configuration, as the Debian package installs it (/etc/lcs-bridge/lcs-bridge.toml):\n\
         # every key, with its default. Set the secret, the domains and the certificates; keep the\n\
         # secret and the key readable by group lcs-bridge only (chgrp lcs-bridge, chmod 640).",
    ),
    (
        "# Check it:   sh tests/make-test-certs.sh config/certs     (test certificates, once)",
        "# Check it:   lcs-bridge check-config /etc/lcs-bridge/lcs-bridge.toml",
    ),
    (
        "#             lcs-bridge check-config config/lcs-bridge.example.toml",
        "# Start it:   systemctl enable --now lcs-bridge         (docs: /usr/share/doc/lcs-bridge)",
    ),
    (
        "# Relative paths are resolved against the directory of THIS file (config/ here), whether they",
        "# Relative paths are resolved against the directory of THIS file (/etc/lcs-bridge here), whether they",
    ),
    (
        "# \"data\" here is config/data. In production use an absolute path such as",
        "# the package uses /var/lib/lcs-bridge, the systemd unit's StateDirectory (created for the",
    ),
    (
        "# \"/var/lib/lcs-bridge\". Default: \"data\"",
        "# service's user; the unit allows no other place to write). Default: \"data\"",
    ),
    ("path = \"data\"", "path = \"/var/lib/lcs-bridge\""),
    (
        "# (next to this file); this example lives in config/ and uses the repository's mappings/.",
        "# (next to this file): the package's tables are /etc/lcs-bridge/mappings, conffiles to edit.",
    ),
    ("path = \"../mappings\"", "path = \"mappings\""),
];

const PACKAGED_CONFIG: &str = "config/debian/lcs-bridge.toml";
const UNIT: &str = "config/systemd/lcs-bridge.service";

/// The example with [`PACKAGE_EDITS`]; panics if a line to edit is no longer in the example.
fn packaged_from_example() -> String {
    let example =
        std::fs::read_to_string(repo().join("config/lcs-bridge.example.toml")).expect("example");
    let mut lines: Vec<String> = example.lines().map(str::to_owned).collect();
    for (old, new) in PACKAGE_EDITS {
        let hits: Vec<usize> = (0..lines.len()).filter(|&i| lines[i] == *old).collect();
        assert_eq!(
            hits.len(),
            1,
            "the example should have the line {old:?} once (tests/packaging.rs PACKAGE_EDITS)"
        );
        lines[hits[0]] = (*new).to_owned();
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[test]
fn packaged_config_is_the_example_with_the_package_paths() {
    let expected = packaged_from_example();
    let path = repo().join(PACKAGED_CONFIG);
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &expected).expect("write the packaged configuration");
    }
    let actual = std::fs::read_to_string(&path).expect("config/debian/lcs-bridge.toml");
    assert!(
        actual == expected,
        "{PACKAGED_CONFIG} is not the example with the package's paths: run \
         `BLESS=1 cargo test --test packaging packaged_config` after changing the example"
    );
}

/// `dir` laid out as /etc/lcs-bridge after install, plus the administrator's certificates for
/// the example's names: `check-config` passes on it.
fn lay_out_etc(dir: &Path, config: &[u8], mappings: &Path) {
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("lcs-bridge.toml"), config).unwrap();
    for table in ["presence.toml", "errors.toml"] {
        std::fs::copy(mappings.join(table), dir.join("mappings").join(table)).unwrap();
    }
    let ca = pki::Pki::new("packaging test CA");
    let edge = ca.leaf(&["sip.example.org", "example.org"], false);
    pki::write_leaf_files(&dir.join("certs"), "edge", &edge);
    std::fs::write(
        dir.join("certs/ca.crt"),
        pki::der_to_pem("CERTIFICATE", &ca.ca),
    )
    .unwrap();
}

fn check_config(bin: &Path, config: &Path) -> Output {
    run_with_timeout(
        Command::new(bin).arg("check-config").arg(config),
        Duration::from_secs(30),
    )
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[test]
fn packaged_config_passes_check_config_where_the_package_puts_it() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc/lcs-bridge");
    let config = std::fs::read(repo().join(PACKAGED_CONFIG)).unwrap();
    lay_out_etc(&etc, &config, &repo().join("mappings"));
    let out = check_config(
        Path::new(env!("CARGO_BIN_EXE_lcs-bridge")),
        &etc.join("lcs-bridge.toml"),
    );
    assert!(
        out.status.success(),
        "check-config failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The tables are the copies next to the configuration, not the repository's.
    std::fs::write(etc.join("mappings/errors.toml"), "not = [toml").unwrap();
    let out = check_config(
        Path::new(env!("CARGO_BIN_EXE_lcs-bridge")),
        &etc.join("lcs-bridge.toml"),
    );
    assert!(
        !out.status.success() && text(&out.stderr).contains("errors.toml"),
        "a broken /etc/lcs-bridge/mappings/errors.toml should fail check-config:\n{}",
        text(&out.stderr)
    );
}

/// The unit with its commands pointed at `bin` (systemd-analyze checks they exist).
fn unit_for(bin: &Path, dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(repo().join(UNIT)).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/lcs-bridge run --config /etc/lcs-bridge/lcs-bridge.toml")
    );
    let path = dir.join("lcs-bridge.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/lcs-bridge", &bin.display().to_string()),
    )
    .unwrap();
    path
}

#[test]
fn systemd_analyze_accepts_the_unit() {
    let Some(analyze) = require_peer("systemd-analyze") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for(Path::new(env!("CARGO_BIN_EXE_lcs-bridge")), dir.path());
    let out = run_with_timeout(
        Command::new(&analyze).arg("verify").arg(&unit),
        Duration::from_secs(60),
    );
    // verify exits 0 on unknown keys and bad values too, and says so on stderr.
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify {}:\n{}{}",
        unit.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
    // The hardening, as systemd rates it: 2.0 or below is "OK" (0 best, 10 worst).
    let out = run_with_timeout(
        Command::new(&analyze)
            .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
            .arg(&unit),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "the unit's exposure is over 2.0:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The check can fail: a unit with an unknown key is refused.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(
        bad.join("lcs-bridge.service"),
        unit_text.replace("ProtectSystem=strict", "ProtectSystem=stricter"),
    )
    .unwrap();
    let out = run_with_timeout(
        Command::new(&analyze)
            .arg("verify")
            .arg(bad.join("lcs-bridge.service")),
        Duration::from_secs(60),
    );
    assert!(
        text(&out.stderr).contains("stricter"),
        "systemd-analyze should complain about a bad value: {}",
        text(&out.stderr)
    );
}

/// `cargo deb --no-build` from the repository, packaging the binary of this test run's profile.
fn build_package(out_dir: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_lcs-bridge"));
    // target/<profile>/lcs-bridge: cargo-deb finds the binary from the profile's name
    // (`dev` builds into debug/) and the target directory.
    let profile_dir = bin.parent().expect("the profile's directory");
    let target_dir = profile_dir.parent().expect("the target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => panic!("no profile directory above {}", bin.display()),
    };
    let deb = out_dir.join("lcs-bridge.deb");
    let out = run_with_timeout(
        Command::new(cargo)
            .current_dir(repo())
            .env("CARGO_TARGET_DIR", target_dir)
            .args([
                "deb",
                "--no-build",
                "--no-strip",
                "--fast",
                "--profile",
                &profile,
            ])
            .args(["-p", "lcs-bridge", "--output"])
            .arg(&deb),
        Duration::from_secs(180),
    );
    assert!(
        out.status.success(),
        "cargo deb failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    deb
}

fn dpkg_deb(dpkg: &Path, args: &[&str], deb: &Path) -> String {
    let out = run_with_timeout(
        Command::new(dpkg).args(args).arg(deb),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "dpkg-deb {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn debian_package_installs_binary_unit_config_and_mappings() {
    let Some(dpkg) = require_peer("dpkg-deb") else {
        return;
    };
    if require_peer("cargo-deb").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deb = build_package(dir.path());

    // The files, with their modes: `dpkg-deb -c` lists "-rwxr-xr-x root/root SIZE DATE ./PATH".
    let listing = dpkg_deb(&dpkg, &["-c"], &deb);
    let mode_of = |path: &str| -> String {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(".{path}")))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"))
            .to_owned()
    };
    assert_eq!(mode_of("/usr/bin/lcs-bridge"), "-rwxr-xr-x");
    assert_eq!(mode_of("/etc/lcs-bridge/lcs-bridge.toml"), "-rw-r-----");
    assert_eq!(
        mode_of("/etc/lcs-bridge/mappings/presence.toml"),
        "-rw-r--r--"
    );
    assert_eq!(
        mode_of("/etc/lcs-bridge/mappings/errors.toml"),
        "-rw-r--r--"
    );
    let unit_path = [
        "/usr/lib/systemd/system/lcs-bridge.service",
        "/lib/systemd/system/lcs-bridge.service",
    ]
    .into_iter()
    .find(|p| listing.lines().any(|l| l.ends_with(&format!(".{p}"))))
    .unwrap_or_else(|| panic!("no systemd unit in the package:\n{listing}"));
    assert_eq!(mode_of(unit_path), "-rw-r--r--");
    for doc in ["copyright", "operations.md", "mappings.md"] {
        mode_of(&format!("/usr/share/doc/lcs-bridge/{doc}"));
    }
    assert!(
        !listing.contains("./var/lib/lcs-bridge"),
        "the store's directory is the unit's StateDirectory, not the package's:\n{listing}"
    );

    // The control data: name, dependencies, conffiles, maintainer scripts.
    let info = dpkg_deb(&dpkg, &["-I"], &deb);
    assert!(info.contains("Package: lcs-bridge"), "{info}");
    let depends = info
        .lines()
        .find(|l| l.trim_start().starts_with("Depends:"))
        .unwrap_or_else(|| panic!("no Depends:\n{info}"));
    assert!(
        depends.contains("adduser") && depends.contains("libc6"),
        "{depends}"
    );
    let control = dir.path().join("control");
    let out = run_with_timeout(
        Command::new(&dpkg).arg("-e").arg(&deb).arg(&control),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "dpkg-deb -e: {}", text(&out.stderr));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    let mut listed: Vec<&str> = conffiles.lines().collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [
            "/etc/lcs-bridge/lcs-bridge.toml",
            "/etc/lcs-bridge/mappings/errors.toml",
            "/etc/lcs-bridge/mappings/presence.toml",
        ]
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(
        postinst.contains("deb-systemd-helper") && !postinst.contains("#DEBHELPER#"),
        "cargo-deb should have put the unit's systemd steps into postinst:\n{postinst}"
    );
    let postrm = std::fs::read_to_string(control.join("postrm")).expect("postrm");
    assert!(postrm.contains("rm -rf /var/lib/lcs-bridge"), "{postrm}");

    // The files themselves: the unit and the configuration as in the repository, a binary that
    // runs, and the configuration passing check-config where the package put it.
    let root = dir.path().join("root");
    let out = run_with_timeout(
        Command::new(&dpkg).arg("-x").arg(&deb).arg(&root),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "dpkg-deb -x: {}", text(&out.stderr));
    let file = |p: &str| std::fs::read(root.join(p.trim_start_matches('/'))).unwrap();
    assert!(file(unit_path) == std::fs::read(repo().join(UNIT)).unwrap());
    let config = file("/etc/lcs-bridge/lcs-bridge.toml");
    assert!(config == std::fs::read(repo().join(PACKAGED_CONFIG)).unwrap());
    let bin = root.join("usr/bin/lcs-bridge");
    let out = run_with_timeout(Command::new(&bin).arg("--version"), Duration::from_secs(30));
    assert!(
        out.status.success() && text(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        text(&out.stdout)
    );
    let etc = dir.path().join("etc-check");
    lay_out_etc(&etc, &config, &root.join("etc/lcs-bridge/mappings"));
    let out = check_config(&bin, &etc.join("lcs-bridge.toml"));
    assert!(
        out.status.success(),
        "the packaged configuration fails check-config:\n{}",
        text(&out.stderr)
    );
}
