//! The `lcs-bridge` binary as an administrator uses it: `check-config` on the shipped example
//! (with certificates from `tests/make-test-certs.sh`) and on broken copies, `inspect` on files
//! and standard input, and `run` against a test Prosody: reloading on SIGHUP, holding the store
//! (`store stats` says it is in use), migrating an older store with a warning, stopping cleanly
//! on SIGTERM and SIGINT, and exiting 1 with a clear message when the component secret is
//! refused.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lcs-bridge");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of `config/` and `mappings/` in a temporary directory, with fresh test certificates.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::copy(
        repo().join("config/lcs-bridge.example.toml"),
        config_dir.join("lcs-bridge.toml"),
    )
    .unwrap();
    let mappings = dir.path().join("mappings");
    std::fs::create_dir_all(&mappings).unwrap();
    for f in ["presence.toml", "errors.toml"] {
        std::fs::copy(repo().join("mappings").join(f), mappings.join(f)).unwrap();
    }
    let status = Command::new("sh")
        .arg(repo().join("tests/make-test-certs.sh"))
        .arg(config_dir.join("certs"))
        .status()
        .unwrap();
    assert!(status.success(), "make-test-certs.sh failed");
    let file = config_dir.join("lcs-bridge.toml");
    (dir, file)
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn example_config_checks_and_each_breakage_is_one_line() {
    let (_dir, file) = workspace();
    let path = file.to_str().unwrap();
    let ok = run(&["check-config", path], None);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout), format!("{path}: OK\n"));

    let original = std::fs::read_to_string(&file).unwrap();
    let certs = file.parent().unwrap().join("certs");
    type Breakage<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Breakage, String)> = vec![
        (
            "misspelt key",
            Box::new(|| {
                std::fs::write(&file, original.replacen("\nsecret =", "\nscret =", 1)).unwrap()
            }),
            "xmpp.scret: unknown key (did you mean \"secret\"?)".to_owned(),
        ),
        (
            "missing certificate",
            Box::new(|| std::fs::remove_file(certs.join("edge.crt")).unwrap()),
            format!(
                "sip.cert_chain: cannot read \"{}\": file not found",
                certs.join("edge.crt").display()
            ),
        ),
    ];
    for (what, breakage, expected) in cases {
        breakage();
        let out = run(&["check-config", path], None);
        assert_eq!(out.status.code(), Some(1), "{what}");
        let problems: Vec<String> = text(&out.stderr)
            .lines()
            .filter(|l| !l.starts_with("warning:"))
            .map(str::to_owned)
            .collect();
        assert_eq!(problems, vec![expected], "{what}");
        // Restore for the next case.
        std::fs::write(&file, &original).unwrap();
        let status = Command::new("sh")
            .arg(repo().join("tests/make-test-certs.sh"))
            .arg(&certs)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

#[test]
fn inspect_presence_away_prints_the_profile_document() {
    let out = run(
        &["inspect", "presence", "-"],
        Some(
            "<presence xmlns='jabber:client' from='alice@example.org/laptop'><show>away</show></presence>",
        ),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        r#"<?xml version="1.0" encoding="utf-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:ep="urn:ietf:params:xml:ns:pidf:status:rpid-status" xmlns:et="urn:ietf:params:xml:ns:pidf:rpid-tuple" xmlns:ci="urn:ietf:params:xml:ns:pidf:cipid" entity="sip:alice@example.org">
  <tuple id="0">
    <status>
      <basic>open</basic>
      <ep:activities>
        <ep:activity>away</ep:activity>
      </ep:activities>
    </status>
  </tuple>
</presence>
"#
    );
    let out = run(
        &["inspect", "presence", "-"],
        Some("<presence from='d\\27artagnan@example.org'/>"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(r#"entity="sip:d&apos;artagnan@example.org""#),
        "{}",
        text(&out.stdout)
    );
    let out = run(&["inspect", "presence", "-"], Some("<message/>"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn inspect_sip_files_stdin_and_errors() {
    let golden = repo().join("tests/golden/sip");
    let out = run(
        &[
            "inspect",
            "sip",
            golden.join("lcs_notify_pidf.sip").to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["method"], "NOTIFY");
    assert_eq!(v["presence"]["xmpp_show"], "away");
    assert_eq!(v["via"][0]["branch"], "z9hG4bK8F2C1A.93B7D6E2F0A1B2C3");

    // A capture pasted with bare LF line ends.
    let lf = "OPTIONS sip:sip.example.org SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK1\nFrom: <sip:sip.contoso.com>;tag=1\nTo: <sip:sip.example.org>\nCall-ID: lf-1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n";
    let out = run(&["inspect", "sip", "-"], Some(lf));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = run(
        &[
            "inspect",
            "sip",
            golden.join("neg-cseq_mismatch.sip").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: CSeq method \"INVITE\" does not match request method \"OPTIONS\"\n"
    );
    let out = run(&["inspect", "sip", "/nonexistent/file.sip"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: cannot read \"/nonexistent/file.sip\""));
}

/// A Lync contact's categories NOTIFY ([MS-PRES] §4.4.3's document form): `inspect sip` shows
/// what it says and what an XMPP watcher is shown (docs/mapping.md §2).
#[test]
fn inspect_sip_reads_enhanced_presence() {
    let body = r#"<categories xmlns="http://schemas.microsoft.com/2006/09/sip/categories" uri="sip:bob@contoso.com"><category name="state" publishTime="2026-03-01T10:00:00"><state xmlns="http://schemas.microsoft.com/2006/09/sip/state"><availability>6500</availability><activity token="on-the-phone"/></state></category><category name="note" publishTime="2026-03-01T10:00:00"><note xmlns="http://schemas.microsoft.com/2006/09/sip/note"><body type="OOF">Back Monday</body></note></category></categories>"#;
    let notify = format!(
        "NOTIFY sip:alice@sip.example.org;transport=tls SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bKc1\nFrom: <sip:bob@contoso.com>;tag=1\nTo: <sip:alice@example.org>;tag=2\nCall-ID: cat-1\nCSeq: 2 NOTIFY\nEvent: presence\nSubscription-State: active;expires=3600\nContent-Type: application/msrtc-event-categories+xml\nContent-Length: {}\n\n{body}",
        body.len()
    );
    let out = run(&["inspect", "sip", "-"], Some(&notify));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["enhanced_presence"];
    assert_eq!(p["availability"], 6500);
    assert_eq!(p["activity"], "on-the-phone");
    assert_eq!(p["note_kind"], "OOF");
    assert_eq!(p["xmpp_show"], "dnd");
    assert_eq!(p["xmpp_status"], "In a call - Out of office: Back Monday");
}

#[test]
fn inspect_address_both_ways() {
    let (_dir, file) = workspace();
    let cfg = file.to_str().unwrap();
    for (input, expected) in [
        ("joe\\40contoso.com@lcs.example.org", "sip:joe@contoso.com"),
        ("sip:Joe@Contoso.com", "joe\\40contoso.com@lcs.example.org"),
        ("alice@example.org", "sip:alice@example.org"),
        (
            "joe\\40contoso.com@lcs.example.org/Work PC;1",
            "sip:joe@contoso.com;gr=Work%20PC%3B1",
        ),
        (
            "sip:joe@contoso.com;gr=Work%20PC%3B1",
            "joe\\40contoso.com@lcs.example.org/Work PC;1",
        ),
    ] {
        let out = run(&["inspect", "address", input, "--config", cfg], None);
        assert!(out.status.success(), "{input}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), expected, "{input}");
    }
    let out = run(
        &[
            "inspect",
            "address",
            "sips:joe@contoso.com",
            "--config",
            cfg,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: sips: URIs are never used with LCS (profile: SIPS scheme)\n"
    );
}

/// `config/prosody.example.toml` and `config/ejabberd.example.toml` pass `check-config` with no
/// warning, address LCS users as docs/xmpp-server.md says, and so does the ejabberd file's
/// commented direct-mode alternative once it is uncommented.
#[test]
fn xmpp_server_examples_check_and_address_as_documented() {
    let (_dir, file) = workspace();
    let config_dir = file.parent().unwrap();
    let ejabberd = std::fs::read_to_string(repo().join("config/ejabberd.example.toml")).unwrap();
    let direct = ejabberd
        .replace("\nmode = \"gateway\"\n", "\n")
        .replace("\ncomponent_domains = [\"lcs.example.org\"]\n", "\n")
        .replace("\n# mode = \"direct\"\n", "\nmode = \"direct\"\n")
        .replace(
            "\n# component_domains = [\"contoso.com\"",
            "\ncomponent_domains = [\"contoso.com\"",
        );
    assert_ne!(direct, ejabberd);
    // As an administrator would: the examples' placeholder secret replaced (it is warned about).
    let own_secret = |text: &str| text.replace("secret = \"change-me\"", "secret = \"0ur-own\"");
    std::fs::write(config_dir.join("direct.toml"), own_secret(&direct)).unwrap();
    for name in ["prosody.example.toml", "ejabberd.example.toml"] {
        let text = std::fs::read_to_string(repo().join("config").join(name)).unwrap();
        std::fs::write(config_dir.join(name), own_secret(&text)).unwrap();
    }
    for (name, roster_jid) in [
        ("prosody.example.toml", "joe\\40contoso.com@lcs.example.org"),
        (
            "ejabberd.example.toml",
            "joe\\40contoso.com@lcs.example.org",
        ),
        ("direct.toml", "joe@contoso.com"),
    ] {
        let path = config_dir.join(name);
        let path = path.to_str().unwrap();
        let out = run(&["check-config", path], None);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{path}: OK\n"), "{name}");
        assert_eq!(text(&out.stderr), "", "{name}");
        let out = run(
            &[
                "inspect",
                "address",
                "sip:joe@contoso.com",
                "--config",
                path,
            ],
            None,
        );
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), roster_jid, "{name}");
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_loopback_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `lcs-bridge run` with the example configuration, pointed at a test Prosody's component
/// port with `secret`.
fn run_against(prosody: &impl lcs_test_support::XmppServer, file: &Path, secret: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config", file.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("LCS_BRIDGE__SIP__LISTEN", free_loopback_addr())
        .env("LCS_BRIDGE__ADMIN__METRICS_LISTEN", free_loopback_addr())
        .env(
            "LCS_BRIDGE__XMPP__PORT",
            prosody.component_port().to_string(),
        )
        .env("LCS_BRIDGE__XMPP__SECRET", secret)
        .env(
            "LCS_BRIDGE__XMPP__COMPONENT_DOMAINS",
            lcs_test_support::GATEWAY_COMPONENT,
        )
        .env(
            "LCS_BRIDGE__XMPP__LOCAL_DOMAINS",
            lcs_test_support::XMPP_DOMAIN,
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn run_exits_non_zero_when_the_xmpp_server_refuses_the_secret() {
    let Some(prosody) = lcs_test_support::Prosody::start() else {
        return;
    };
    let (_dir, file) = workspace();
    let out = lcs_test_support::run_with_timeout(
        &mut run_against(&prosody, &file, "wrong"),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wrong secret") && err.contains("xmpp.secret"),
        "{err}"
    );
}

#[test]
fn run_stops_cleanly_on_sigterm_and_sigint() {
    let Some(prosody) = lcs_test_support::Prosody::start() else {
        return;
    };
    let (_dir, file) = workspace();
    for signal in ["TERM", "INT"] {
        let mut child = run_against(&prosody, &file, lcs_test_support::COMPONENT_SECRET)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let started = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("lcs-bridge started"));
        assert!(started, "no start-up log line");
        // The running bridge holds the store: the administrator's commands say so.
        let busy = run(
            &["store", "stats", "--config", file.to_str().unwrap()],
            None,
        );
        assert_eq!(busy.status.code(), Some(1), "{busy:?}");
        assert!(
            text(&busy.stderr).contains("the store is in use by a running bridge ("),
            "{busy:?}"
        );
        // SIGHUP reloads the TLS material and the bridge keeps running.
        let hup = Command::new("kill")
            .args(["-HUP".to_owned(), child.id().to_string()])
            .status()
            .unwrap();
        assert!(hup.success());
        let reloaded = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("TLS certificates and CA bundle reloaded"));
        assert!(reloaded, "no reload log line after SIGHUP");
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGHUP stopped the bridge"
        );
        let kill = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "bridge did not stop on SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "SIG{signal}: {status}");
        let stats = run(
            &["store", "stats", "--config", file.to_str().unwrap()],
            None,
        );
        assert!(stats.status.success(), "{stats:?}");
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        assert!(
            rest.iter().any(|l| l.contains(&format!("SIG{signal}"))),
            "{rest:?}"
        );
    }
}

/// A store an older build wrote (schema 1) is migrated by `run` alone, and the log says that
/// an older build now refuses it (docs/storage.md "Schema version and migration").
#[test]
fn run_migrates_an_older_store_and_says_so() {
    let Some(prosody) = lcs_test_support::Prosody::start() else {
        return;
    };
    let (_dir, file) = workspace();
    let sled = lcs_bridge::store::sled_dir(&file.parent().unwrap().join("data"));
    let store = lcs_bridge::store::SledStore::open(&sled).unwrap();
    store
        .put_raw(b"\0schema_version", &1u32.to_be_bytes())
        .unwrap();
    drop(store);
    let mut child = run_against(&prosody, &file, lcs_test_support::COMPONENT_SECRET)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let before_start: Vec<String> = lines
        .by_ref()
        .map_while(Result::ok)
        .take_while(|l| !l.contains("lcs-bridge started"))
        .collect();
    let kill = Command::new("kill")
        .args(["-TERM".to_owned(), child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Read to the end: the bridge logs until it exits.
    lines.map_while(Result::ok).for_each(drop);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {before_start:#?}");
    assert!(
        before_start.iter().any(|l| l.contains("WARN")
            && l.contains("store schema 1→2; older builds refuse this store")),
        "{before_start:#?}"
    );
    let store = lcs_bridge::store::SledStore::open_read_only(&sled).unwrap();
    assert_eq!(store.schema_version(), 2);
}
