//! `lcs-bridge store stats` and `lcs-bridge store export` as an administrator uses them: on a
//! store written through the library, on a store another process holds open, on a missing
//! store, on a store with a corrupt record, and on a store of an older schema (which they leave
//! as it is). (That a running bridge holds the store is
//! checked in `cli.rs`, which runs the bridge.)

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lcs_bridge::store::{
    self, Approval, DialogRecord, Direction, ImDialog, SledStore, Store as _, SubState,
    Subscription,
};

const BIN: &str = env!("CARGO_BIN_EXE_lcs-bridge");

/// The example configuration in a temporary directory; its store is `<dir>/data/sled`.
fn workspace() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lcs-bridge.toml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lcs-bridge.example.toml"),
        &file,
    )
    .unwrap();
    let sled = store::sled_dir(&dir.path().join("data"));
    (dir, file, sled)
}

fn store_cmd(cmd: &str, file: &Path) -> Output {
    Command::new(BIN)
        .args(["store", cmd, "--config", file.to_str().unwrap()])
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sub(direction: Direction, jid: &str, aor: &str, state: SubState) -> Subscription {
    Subscription {
        direction,
        local_jid: jid.into(),
        remote_aor: aor.into(),
        dialog: None,
        expires_unix: 1_790_003_600,
        state,
        approval: Approval::Approved,
        last_sent: Some(b"<presence/>".to_vec()),
        last_received: None,
        display_name: None,
        updated_unix: 1_790_000_000,
    }
}

fn populate(path: &Path) -> SledStore {
    let s = SledStore::open(path).unwrap();
    s.put_subscriptions(&[
        sub(
            Direction::Outbound,
            "alice@example.org",
            "sip:joe@contoso.com",
            SubState::Active,
        ),
        sub(
            Direction::Outbound,
            "bob@example.org",
            "sip:joe@contoso.com",
            SubState::Pending,
        ),
        sub(
            Direction::Inbound,
            "alice@example.org",
            "sip:joe@contoso.com",
            SubState::Active,
        ),
    ])
    .unwrap();
    s.put_im_dialog(&ImDialog {
        local_jid: "alice@example.org".into(),
        remote_aor: "sip:joe@contoso.com".into(),
        dialog: DialogRecord {
            call_id: "c1".into(),
            local_tag: "l".into(),
            remote_tag: "r".into(),
            local_uri: "sip:alice@example.org".into(),
            local_display: None,
            remote_uri: "sip:joe@contoso.com".into(),
            remote_display: None,
            remote_target: "sip:joe@10.0.0.5:5061;transport=tls".into(),
            route_set: vec![],
            local_cseq: 2,
            remote_cseq: Some(5),
            created_unix: 1_790_000_000,
        },
    })
    .unwrap();
    s.flush().unwrap();
    s
}

#[test]
fn stats_and_export_print_every_record() {
    let (_dir, file, sled) = workspace();
    drop(populate(&sled));

    let out = store_cmd("stats", &file);
    assert!(out.status.success(), "{out:?}");
    let table = text(&out.stdout);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["kind", "direction", "state", "count"]);
    assert!(rows.contains(&vec!["subscription", "outbound", "active", "1"]));
    assert!(rows.contains(&vec!["subscription", "outbound", "pending", "1"]));
    assert!(rows.contains(&vec!["subscription", "inbound", "active", "1"]));
    assert!(rows.contains(&vec!["subscription", "inbound", "terminated", "0"]));
    assert!(rows.contains(&vec!["im_dialog", "-", "-", "1"]));
    assert!(rows.contains(&vec!["corrupt", "-", "-", "0"]));

    let out = store_cmd("export", &file);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["kind"], "subscription");
    assert_eq!(lines[0]["direction"], "inbound");
    assert_eq!(lines[1]["local_jid"], "alice@example.org");
    assert_eq!(lines[1]["remote_aor"], "sip:joe@contoso.com");
    assert_eq!(lines[1]["state"], "active");
    assert_eq!(lines[1]["approval"], "approved");
    assert_eq!(lines[1]["last_sent"], "PHByZXNlbmNlLz4=");
    assert_eq!(lines[1]["last_received"], serde_json::Value::Null);
    assert_eq!(lines[2]["state"], "pending");
    assert_eq!(lines[3]["kind"], "im_dialog");
    assert_eq!(lines[3]["dialog"]["remote_cseq"], 5);
}

#[test]
fn a_store_held_by_another_process_is_named_in_use() {
    let (_dir, file, sled) = workspace();
    let held = populate(&sled);
    for cmd in ["stats", "export"] {
        let out = store_cmd(cmd, &file);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = text(&out.stderr);
        assert!(
            err.starts_with("error: the store is in use by a running bridge ("),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
    drop(held);
    assert!(store_cmd("stats", &file).status.success());
}

#[test]
fn a_missing_store_is_not_created() {
    let (_dir, file, sled) = workspace();
    let out = store_cmd("stats", &file);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("no store at"), "{out:?}");
    assert!(!sled.exists());
}

#[test]
fn corrupt_records_are_named_and_the_rest_exported() {
    let (_dir, file, sled) = workspace();
    let s = populate(&sled);
    s.put_raw(b"Soalice@example.org\0sip:ann@contoso.com", b"\x09")
        .unwrap();
    drop(s);

    let out = store_cmd("export", &file);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(text(&out.stdout).lines().count(), 4);
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "error: corrupt record subscription/outbound/alice@example.org/sip:ann@contoso.com: record version 9"
        ),
        "{err}"
    );
    assert!(
        err.contains("error: 1 corrupt records were left out"),
        "{err}"
    );

    let out = store_cmd("stats", &file);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stdout).contains("corrupt        -          -                    1"));
    assert!(text(&out.stderr).contains("1 records do not decode"));
}

/// A store an older build wrote (schema 1) is read as it is and left at its version, so that
/// the older build still opens it afterwards (`run` migrates, with a warning: `cli.rs`).
#[test]
fn an_older_store_is_read_and_not_migrated() {
    let (_dir, file, sled) = workspace();
    let s = populate(&sled);
    s.put_raw(b"\0schema_version", &1u32.to_be_bytes()).unwrap();
    drop(s);
    for cmd in ["stats", "export"] {
        let out = store_cmd(cmd, &file);
        assert!(out.status.success(), "{out:?}");
    }
    let out = store_cmd("export", &file);
    assert_eq!(text(&out.stdout).lines().count(), 4, "{out:?}");
    let s = SledStore::open_read_only(&sled).unwrap();
    assert_eq!(s.schema_version(), 1);
    assert_eq!(s.migrated_from(), None);
    drop(s);
    // The bridge's own open moves it up and says from where.
    let s = SledStore::open(&sled).unwrap();
    assert_eq!((s.schema_version(), s.migrated_from()), (2, Some(1)));
}
