//! Presence both ways with a real SIP stack on the LCS side: pjsip through pjsua2
//! (`tests/pjsua_peer.py`), speaking mutual TLS straight to the bridge, as bob@contoso.com.
//! The rest is the world of tests/presence_e2e.rs: the real binary, Prosody (gateway mode)
//! and alice@xmpp.test as a slixmpp client.
//!
//! (a) bob watches alice: pjsua2's Buddy SUBSCRIBEs; alice gets `subscribe` and approves; bob
//!     sees her online, then each change (away, dnd, each with a status, then offline) as
//!     pjsip parses the bridge's NOTIFYs.
//! (b) alice watches bob: the bridge SUBSCRIBEs to pjsua2's listener (the partner's edge),
//!     pjsua2 accepts; alice gets `subscribed`, then each status bob publishes (RFC 4480
//!     activities in a `<person>`, the note) as `<presence/>`.
//!
//! pjsip sends in-dialog requests to the bridge's Contact (`sip.xmpp.test`, no port) as a real edge
//! would, through DNS: the test serves `_sips._tcp.sip.xmpp.test` SRV → the bridge's port on a
//! loopback address's port 53 (pjsip takes no nameserver port; root needed).
//!
//! pjsip reads RFC 4480 activities from `<dm:person>` only, and the bridge writes the
//! profile's `ep:activities` in the tuple (what LCS reads), so in (a) pjsip sees the basic
//! status and the note, not the activity.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use lcs_test_support::Prosody;
use lcs_test_support::e2e::{Mode, World, XmppClient, bare};

/// The bridge's public name as an LCS edge finds it: `_sips._tcp.sip.xmpp.test` SRV to the
/// bridge's port, and its A record, on port 53 (pjsip takes a nameserver's address only).
/// Kept alive with its runtime.
struct Dns {
    server: lcs_test_support::dns::TestDns,
    _rt: tokio::runtime::Runtime,
}

fn dns(sip_port: u16) -> Dns {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(async {
        let dns = lcs_test_support::dns::TestDns::start_on_port_53(&["xmpp.test"]).await;
        let target = [lcs_test_support::dns::srv(0, 0, sip_port, "sip.xmpp.test")];
        for name in ["_sips._tcp.sip.xmpp.test", "_sip._tls.sip.xmpp.test"] {
            dns.set_srv_at(name, &target, 60).await;
        }
        dns.set_a("sip.xmpp.test", &[std::net::Ipv4Addr::LOCALHOST], 60)
            .await;
        dns
    });
    Dns { server, _rt: rt }
}

fn world(name: &'static str) -> Option<(World<Prosody>, XmppClient, Dns)> {
    let python = lcs_test_support::require_python_modules(&["slixmpp", "pjsua2"])?;
    if !lcs_test_support::is_root() {
        return lcs_test_support::skip_or_fail("root, for the DNS server on port 53 pjsip needs");
    }
    let w = World::with_config(
        name,
        Mode::Gateway,
        "\n[presence]\nnotify_min_interval_secs = 1\n",
        Prosody::start,
    )?;
    // The world's peer certificate (contoso.com, 127.0.0.1) as pjsip wants it: two files.
    let pem = std::fs::read_to_string(w.dir().join("peer.pem")).unwrap();
    let split = pem.find("-----BEGIN PRIVATE KEY-----").unwrap();
    std::fs::write(w.dir().join("peer.crt"), &pem[..split]).unwrap();
    std::fs::write(w.dir().join("peer.key"), &pem[split..]).unwrap();
    let dir = w.dir().to_owned();
    let dns = dns(w.bridge.sip_port);
    let mut cmd = Command::new(python);
    cmd.arg(lcs_test_support::repo().join("tests/pjsua_peer.py"))
        .args(["--listen", &w.partner_port.to_string()])
        .arg("--cert")
        .arg(dir.join("peer.crt"))
        .arg("--key")
        .arg(dir.join("peer.key"))
        .arg("--ca")
        .arg(dir.join("ca.crt"))
        .args([
            "--proxy",
            &format!("sip:127.0.0.1:{};transport=tls;lr", w.bridge.sip_port),
        ])
        .args(["--aor", "sip:bob@contoso.com"])
        .arg("--log")
        .arg(dir.join("pjsua.log"))
        .args(["--nameserver", &dns.server.addr.ip().to_string()]);
    let mut bob = XmppClient::spawn(cmd, dir.join("pjsua.stderr"));
    bob.wait_for("pjsua2 ready", w.deadline, |e| e["event"] == "ready");
    Some((w, bob, dns))
}

/// On failure: pjsip's events and the end of its log (the World prints the rest).
struct Report<'a>(&'a mut XmppClient, std::path::PathBuf);

impl Drop for Report<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.1.join("pjsua.log")).unwrap_or_default();
            let stderr = std::fs::read_to_string(self.1.join("pjsua.stderr")).unwrap_or_default();
            eprintln!(
                "--- pjsua2 events ---\n{}\n--- pjsua2 stderr ---\n{stderr}\n--- pjsua2 log (end) ---\n{}",
                self.0.report(),
                lcs_test_support::e2e::tail(&log, 60_000)
            );
        }
    }
}

fn is_presence_from(e: &Value, from: &str) -> bool {
    e["event"] == "presence" && e["from"].as_str().is_some_and(|f| bare(f) == from)
}

/// (a) bob (pjsua2) watches alice.
#[test]
fn pjsip_watches_an_xmpp_user() {
    let Some((mut w, mut bob, _dns)) = world("pjsua (a) bob watches alice") else {
        return;
    };
    let dir = w.dir().to_owned();
    let bob = Report(&mut bob, dir);
    let deadline = w.deadline;
    let bob_jid = w.mode.jid("bob");
    bob.0
        .command(json!({"op": "watch", "uri": "sip:alice@xmpp.test"}));
    w.alice.wait_for("subscribe from bob", deadline, |e| {
        is_presence_from(e, &bob_jid) && e["type"] == "subscribe"
    });
    w.alice
        .command(json!({"op": "presence", "to": bob_jid, "type": "subscribed"}));
    let e = bob.0.wait_for("alice online", deadline, |e| {
        e["event"] == "buddy" && e["online"] == true
    });
    eprintln!("bob sees {e}");
    assert_eq!(e["uri"], "sip:alice@xmpp.test", "{e}");
    for (show, note) in [("away", "out for lunch"), ("dnd", "in a meeting")] {
        w.alice
            .command(json!({"op": "presence", "show": show, "status": note}));
        let e = bob.0.wait_for(note, deadline, |e| {
            e["event"] == "buddy" && e["online"] == true && e["note"] == note
        });
        eprintln!("bob sees {e}");
    }
    w.alice
        .command(json!({"op": "presence", "type": "unavailable"}));
    let e = bob.0.wait_for("alice offline", deadline, |e| {
        e["event"] == "buddy" && e["online"] == false && e["sub_state"] == "ACTIVE"
    });
    eprintln!("bob sees {e}");
}

/// (b) alice watches bob (pjsua2).
#[test]
fn an_xmpp_user_watches_pjsip() {
    let Some((mut w, mut bob, _dns)) = world("pjsua (b) alice watches bob") else {
        return;
    };
    let dir = w.dir().to_owned();
    let bob = Report(&mut bob, dir);
    let deadline = w.deadline;
    let bob_jid = w.mode.jid("bob");
    bob.0.command(
        json!({"op": "status", "online": true, "activity": "unknown", "note": "at my desk"}),
    );
    w.alice
        .command(json!({"op": "presence", "to": bob_jid, "type": "subscribe"}));
    let e = bob.0.wait_for("the bridge's SUBSCRIBE", deadline, |e| {
        e["event"] == "watcher"
    });
    assert!(
        e["from"]
            .as_str()
            .unwrap_or_default()
            .contains("alice@xmpp.test"),
        "{e}"
    );
    w.alice.wait_for("subscribed from bob", deadline, |e| {
        is_presence_from(e, &bob_jid) && e["type"] == "subscribed"
    });
    w.alice.wait_for("bob online", deadline, |e| {
        is_presence_from(e, &bob_jid) && e["type"] == "available" && e["status"] == "at my desk"
    });
    // mappings/presence.toml: RFC 4480 away → away, busy → dnd; the note is the status.
    for (activity, show, note) in [
        ("away", "away", "gone fishing"),
        ("busy", "dnd", "on a call"),
    ] {
        bob.0
            .command(json!({"op": "status", "online": true, "activity": activity, "note": note}));
        let e = w.alice.wait_for(note, deadline, |e| {
            is_presence_from(e, &bob_jid) && e["type"] == "available" && e["status"] == note
        });
        assert_eq!(e["show"], show, "{activity}: {e}");
    }
    bob.0
        .command(json!({"op": "status", "online": false, "note": "gone home"}));
    w.alice.wait_for("bob offline", deadline, |e| {
        is_presence_from(e, &bob_jid) && e["type"] == "unavailable"
    });
    std::thread::sleep(Duration::from_millis(200));
}
