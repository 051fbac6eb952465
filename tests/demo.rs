//! `lcs-bridge demo` end to end (docs/demo.md): the real binary's demo with a short presence
//! timer, alice logged in with the scripted slixmpp client (`tests/xmpp_client.py`) on the
//! printed port and password. She adds the Lync user joe: she must get `subscribed`, joe's
//! presence and a change of it; joe adds her back (she approves); her own presence change and
//! a message must reach joe (the partner's lines in the demo's output), and joe's answer must
//! reach her; the transcript must show the translations both ways. Then SIGINT: the demo exits
//! 0, no process of its Prosody is left and its directory is gone.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // test harness: processes and deadlines

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lcs_test_support::e2e::XmppClient;
use lcs_test_support::{bridge_bin, free_port, require_peer, require_python_modules};
use serde_json::{Value, json};

const JOE: &str = r"joe\40contoso.test@lcs.localhost";

/// The demo's standard output, line by line.
struct Demo {
    child: Child,
    rx: mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Demo {
    /// The first line (from the start) containing `needle`, waiting until `deadline`.
    fn wait_line(&mut self, needle: &str, deadline: Instant) -> String {
        loop {
            if let Some(l) = self.lines.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "the demo printed no line with {needle:?}; output:\n{}",
                self.lines.join("\n")
            );
            if let Ok(l) = self
                .rx
                .recv_timeout((deadline - now).min(Duration::from_millis(200)))
            {
                self.lines.push(l);
            }
        }
    }

    fn output(&mut self) -> String {
        while let Ok(l) = self.rx.try_recv() {
            self.lines.push(l);
        }
        self.lines.join("\n")
    }
}

impl Drop for Demo {
    /// A failed test stops the demo as a user would (SIGINT), so that it cleans up; SIGKILL
    /// after 10 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Processes whose command line mentions `dir` (the demo's Prosody runs with its config there).
fn processes_in(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

fn is_presence_from_joe(e: &Value) -> bool {
    e["event"] == "presence" && e["from"].as_str().is_some_and(|f| f.starts_with(JOE))
}

#[test]
fn demo_shows_chat_and_presence_both_ways_and_leaves_nothing_running() {
    let Some(_) = require_peer("prosody") else {
        return;
    };
    let Some(python) = require_python_modules(&["slixmpp"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let c2s = free_port();
    let mut child = Command::new(bridge_bin())
        .args([
            "demo",
            "--c2s-port",
            &c2s.to_string(),
            "--presence-every",
            "2",
        ])
        // The demo's directory goes under ours, to check it is removed.
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(tmp.path().join("demo.stderr")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut demo = Demo {
        child,
        rx,
        lines: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let accounts = demo.wait_line("(password: ", deadline);
    let password = accounts
        .split("(password: ")
        .nth(1)
        .and_then(|p| p.strip_suffix(')'))
        .unwrap()
        .to_owned();
    let files = demo.wait_line("files in ", deadline);
    let demo_dir = PathBuf::from(
        files
            .split("files in ")
            .nth(1)
            .and_then(|p| p.strip_suffix(')'))
            .unwrap(),
    );
    assert!(demo_dir.starts_with(tmp.path()), "{files}");
    assert!(
        demo.output().contains(&format!("c2s on 127.0.0.1:{c2s}")),
        "{}",
        demo.output()
    );
    let prosody = processes_in(&demo_dir);
    assert!(!prosody.is_empty(), "no Prosody process found");

    let mut cmd = Command::new(python);
    cmd.arg(lcs_test_support::repo().join("tests/xmpp_client.py"))
        .args(["--jid", "alice@localhost", "--password", &password])
        .args(["--port", &c2s.to_string(), "--timeout", "50", "--approve"]);
    let mut alice = XmppClient::spawn(cmd, tmp.path().join("alice.log"));
    let report = |alice: &mut XmppClient, demo: &mut Demo| {
        format!(
            "--- alice ---\n{}\n--- demo ---\n{}",
            alice.report(),
            demo.output()
        )
    };
    // Each step's own time (the partner's timer runs every 2 s).
    let step = || Instant::now() + Duration::from_secs(15);
    alice.wait_for("online", step(), |e| e["event"] == "online");

    // alice adds joe: subscribed, his presence, and a change of it (the partner's timer).
    alice.command(json!({"op": "presence", "to": JOE, "type": "subscribe"}));
    alice.wait_for("subscribed from joe", step(), |e| {
        is_presence_from_joe(e) && e["type"] == "subscribed"
    });
    let first = alice.wait_for("joe's presence", step(), |e| {
        is_presence_from_joe(e) && e["type"] == "available"
    });
    let changed = alice.wait_for("a change of joe's presence", step(), |e| {
        is_presence_from_joe(e)
            && e["type"] == "available"
            && (e["show"] != first["show"] || e["status"] != first["status"])
    });
    assert_ne!(
        changed["show"],
        first["show"],
        "{}",
        report(&mut alice, &mut demo)
    );

    // joe adds alice back (she approves), then sees her presence change.
    demo.wait_line(
        "LYNC      joe@contoso.test sees alice@localhost: online",
        step(),
    );
    alice.command(json!({"op": "presence", "show": "away", "status": "out to lunch"}));
    demo.wait_line(
        "LYNC      joe@contoso.test sees alice@localhost: away (out to lunch)",
        step(),
    );

    // A message each way.
    // As clients do: typing first (XEP-0085 → RFC 3994 isComposing in the session).
    alice.send(JOE, None, json!({"chatstate": "composing"}));
    alice.send(JOE, Some("hello from XMPP"), json!({"chatstate": "active"}));
    let answer = alice.wait_for("joe's answer", step(), |e| {
        e["event"] == "message"
            && e["from"].as_str().is_some_and(|f| f.starts_with(JOE))
            && !e["body"].is_null()
    });
    assert_eq!(
        answer["body"],
        "Joe here (Lync, contoso.test). You said: hello from XMPP",
        "{}",
        report(&mut alice, &mut demo)
    );
    demo.wait_line(
        "LYNC      joe@contoso.test got \"hello from XMPP\" from alice@localhost",
        step(),
    );
    // Typing in the open session (RFC 3994 isComposing MESSAGE), then a second message.
    alice.send(JOE, None, json!({"chatstate": "composing"}));
    alice.send(JOE, Some("and again"), json!({"chatstate": "active"}));
    alice.wait_for("joe's second answer", step(), |e| {
        e["event"] == "message" && e["body"] == "Joe here (Lync, contoso.test). You said: and again"
    });

    // The transcript: one line per translation, both ways; nothing refused or bounced.
    let out = demo.output();
    assert!(!out.contains(" 415 "), "{out}");
    alice.drain();
    assert!(
        !alice.seen.iter().any(|e| !e["error"].is_null()),
        "{}",
        report(&mut alice, &mut demo)
    );
    for needle in [
        "XMPP→SIP  presence alice@localhost",
        "subscribe  ⇒  SUBSCRIBE alice@localhost → joe@contoso.test",
        "SIP→XMPP  NOTIFY joe@contoso.test → alice@localhost PIDF",
        "XMPP→SIP  message alice@localhost",
        "\"hello from XMPP\"  ⇒  INVITE alice@localhost → joe@contoso.test",
        "SIP→XMPP  MESSAGE joe@contoso.test → alice@localhost \"Joe here",
    ] {
        assert!(
            out.contains(needle),
            "no {needle:?} in the transcript:\n{out}"
        );
    }

    // Ctrl-C: everything stops, nothing is left.
    let status = Command::new("kill")
        .args(["-INT", &demo.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stop_deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = demo.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < stop_deadline,
            "the demo did not stop:\n{}",
            demo.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = demo.output();
    assert!(exit.success(), "demo exited {exit}:\n{out}");
    assert!(out.contains("demo stopped"), "{out}");
    assert_eq!(processes_in(&demo_dir), Vec::<u32>::new(), "left running");
    assert!(!demo_dir.exists(), "{} left behind", demo_dir.display());
    drop(alice);
}
