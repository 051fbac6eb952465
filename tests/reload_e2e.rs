//! Reloading the running `lcs-bridge run` binary with SIGHUP (docs/configuration.md
//! "Reloading"): the test plays the XMPP server's component port and the partner's mutual-TLS
//! edge (`lcs_test_support::e2e::scripted_partner`), edits the configuration file and the
//! mapping tables it names, and sees the bridge's behaviour on the wire:
//!
//! 1. `im.max_message_bytes = 256` (a first reload): a 300-byte chat message from a local user
//!    comes back as a `policy-violation` error and nothing reaches the partner;
//! 2. a reload raising the limit with another key out of range, then one with valid keys but
//!    naming broken tables, are refused: each problem is logged, and the same message still
//!    bounces — the old configuration stays, all of it;
//! 3. the same configuration with good tables (a copy of the repository's) and a quieter
//!    `logging.level`: the log line names what changed, the message now goes to the partner as
//!    an INVITE, and the bridge's debug lines stop.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lcs_test_support::net::Event;

const WAIT: Duration = Duration::from_secs(20);

fn repo_mappings() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")
}

/// A chat message of `len` bytes from alice to the LCS user bob.
fn chat(id: &str, len: usize) -> String {
    format!(
        "<message xmlns='jabber:component:accept' from='alice@{}/pc' to='bob\\40contoso.com@{}' \
         type='chat' id='{id}'><body>{}</body></message>",
        lcs_test_support::XMPP_DOMAIN,
        lcs_test_support::GATEWAY_COMPONENT,
        "x".repeat(len)
    )
}

/// What the bridge did with the message: `Err(stanza)` for an error stanza about it on the
/// component stream, `Ok(())` for an INVITE on one of its connections to the partner.
async fn outcome(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    id: &str,
    log: &dyn Fn() -> String,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) | Err(_) => panic!("nothing became of message {id}; bridge log:\n{}", log()),
        };
        match ev {
            Event::Stanza(s, _) => {
                let s = String::from_utf8_lossy(&s).replace('"', "'");
                if s.contains(&format!("id='{id}'")) && s.contains("type='error'") {
                    return Err(s);
                }
            }
            Event::Sip(_, m, _) if m.method().is_some_and(|m| m.as_str() == "INVITE") => {
                return Ok(());
            }
            _ => {}
        }
    }
}

/// The log lines naming a problem of a refused reload.
fn problems(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("reload: problem in the new configuration"))
        .map(str::to_owned)
        .collect()
}

/// Rewrites the configuration with `edit` and sends SIGHUP; returns once the log says the
/// reload was applied or refused (which one: `applied`).
fn reload(
    p: &mut lcs_test_support::e2e::ScriptedPartner,
    edit: impl FnOnce(String) -> String,
) -> bool {
    let config = p.dir.path().join("lcs-bridge.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, edit(text)).unwrap();
    let (applied, refused) = (
        p.bridge.count("configuration reloaded"),
        p.bridge.count("reload refused"),
    );
    let status = Command::new("kill")
        .arg("-HUP")
        .arg(p.bridge.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    loop {
        if p.bridge.count("configuration reloaded") > applied {
            return true;
        }
        if p.bridge.count("reload refused") > refused {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "no reload line:\n{}",
            p.bridge.log()
        );
        assert!(
            p.bridge.child.try_wait().unwrap().is_none(),
            "SIGHUP stopped the bridge:\n{}",
            p.bridge.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_good_configuration_and_tables_and_keeps_the_old_on_any_problem() {
    let mut p = lcs_test_support::e2e::scripted_partner("lcsb-reload-", "").await;
    let log_of = |path: std::path::PathBuf| {
        move || {
            std::fs::read(&path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        }
    };
    let log = log_of(p.bridge.log.clone());

    // 1. A lower limit (the [im] table is there): applied; over it, a message is bounced.
    let applied = reload(&mut p, |text| {
        text.replace("[im]\n", "[im]\nmax_message_bytes = 256\n")
    });
    assert!(applied, "{}", log());
    p.xmpp.send(chat("m1", 300).into_bytes()).unwrap();
    let bounced = outcome(&mut p.events, "m1", &log).await.unwrap_err();
    assert!(bounced.contains("policy-violation"), "{bounced}");

    // 2. A higher limit, but broken tables and a bad key: nothing applied.
    let tables = p.dir.path().join("mappings");
    std::fs::create_dir(&tables).unwrap();
    for f in ["presence.toml", "errors.toml"] {
        std::fs::copy(repo_mappings().join(f), tables.join(f)).unwrap();
    }
    std::fs::write(tables.join("presence.toml"), "[xmpp_to_pidf.available\n").unwrap();
    let repo = format!("{:?}", repo_mappings().display().to_string());
    let ours = format!("{:?}", tables.display().to_string());
    // A key out of range: refused, the problem named.
    let applied = reload(&mut p, |text| {
        text.replace(
            "max_message_bytes = 256",
            "max_message_bytes = 1024\nmax_queued_messages = 0",
        )
    });
    assert!(
        !applied,
        "a configuration with a problem was applied:\n{}",
        log()
    );
    assert!(
        problems(&log())
            .iter()
            .any(|l| l.contains("im.max_queued_messages")),
        "{}",
        log()
    );
    // A valid configuration naming broken tables: refused, the table's problem named.
    let applied = reload(&mut p, |text| {
        assert!(text.contains(&repo), "{text}");
        text.replace(&repo, &ours)
            .replace("max_queued_messages = 0", "max_queued_messages = 10")
    });
    assert!(!applied, "broken tables were applied:\n{}", log());
    assert!(
        problems(&log()).iter().any(|l| l.contains("presence.toml")),
        "{}",
        log()
    );
    p.xmpp.send(chat("m2", 300).into_bytes()).unwrap();
    let bounced = outcome(&mut p.events, "m2", &log).await.unwrap_err();
    assert!(
        bounced.contains("policy-violation"),
        "old limit kept: {bounced}"
    );

    // 3. Good tables, a valid configuration and a quieter log: applied.
    std::fs::copy(
        repo_mappings().join("presence.toml"),
        tables.join("presence.toml"),
    )
    .unwrap();
    let applied = reload(&mut p, |text| {
        text.replace("level = \"info,lcs_bridge=debug\"", "level = \"info\"")
    });
    assert!(applied, "a good configuration was refused:\n{}", log());
    let text = log();
    let line = text
        .lines()
        .rfind(|l| l.contains("configuration reloaded"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("[im]") && line.contains("logging.level"),
        "{line}"
    );
    assert!(!line.contains("the mapping tables"), "same content: {line}");
    let debug_before = log().matches(" DEBUG ").count();
    p.xmpp.send(chat("m3", 300).into_bytes()).unwrap();
    outcome(&mut p.events, "m3", &log)
        .await
        .expect("the message goes to the partner under the new limit");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log().matches(" DEBUG ").count(),
        debug_before,
        "debug lines after the level went to info:\n{}",
        log()
    );
}
