//! End-to-end names and rosters (docs/mapping.md §6) through the real `lcs-bridge` binary, on
//! Prosody (mod_privilege from Debian's prosody-modules) and ejabberd (its own mod_privilege),
//! each granting the bridge's component roster access (XEP-0356) as docs/xmpp-server.md shows;
//! alice@xmpp.test is a slixmpp client (`tests/xmpp_client.py`: roster gets, roster pushes and
//! vCard gets as JSON lines), SIPp behind socat's mutual TLS plays bob@contoso.com.
//!
//! 1. bob (From `"Bob Builder"`) subscribes to alice: her `subscribe` carries the nick; she
//!    approves, and her roster gets bob named "Bob Builder" (a roster push, then her own roster
//!    get); bob refreshes with From `"Bob B. Builder"`: the roster item is renamed.
//! 2. alice subscribes to bob, whose NOTIFY carries `<ci:display-name>Bob Smith`: after the
//!    approval her roster has bob named "Bob Smith"; bob's next document says "Robert Smith":
//!    the item follows; a vcard-temp get to bob's JID answers FN "Robert Smith" and his SIP
//!    address.
//!
//! Both fail with `LCS_BRIDGE__XMPP__ROSTER=none` in the environment (the bridge then leaves
//! rosters alone; 2's vCard still answers).

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use serde_json::{Value, json};

use lcs_test_support::e2e::{Mode, World, bare};
use lcs_test_support::{Ejabberd, Prosody, XmppServer};

/// NOTIFYs to LCS at most once a second, so the approval shows quickly.
const CONFIG: &str = "\n[presence]\nnotify_min_interval_secs = 1\n";

fn is_presence_from(event: &Value, from: &str) -> bool {
    event["event"] == "presence" && event["from"].as_str().is_some_and(|f| bare(f) == from)
}

/// The item for `jid` in a roster or roster-push event.
fn item<'a>(event: &'a Value, jid: &str) -> Option<&'a Value> {
    event["items"]
        .as_array()?
        .iter()
        .find(|i| i["jid"].as_str() == Some(jid))
}

fn named(event: &Value, kind: &str, jid: &str, name: &str) -> bool {
    event["event"] == kind && item(event, jid).is_some_and(|i| i["name"] == name)
}

/// A XEP-0144 suggestion for `jid` named `name`.
fn suggested(event: &Value, jid: &str, name: &str) -> bool {
    event["event"] == "message"
        && event["rosterx"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i["jid"] == jid && i["name"] == name))
}

/// What names the contact for alice: the roster item the bridge wrote (a roster push), or,
/// on ejabberd 23.01, whose mod_privilege grants roster access but fails every privileged
/// roster set (`internal-server-error`; its issue #3942, fixed in 23.10), the XEP-0144
/// suggestion the bridge falls back to after logging the refusal once.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    RosterPush,
    SuggestionAfterRefusal,
}

fn wait_named<S: XmppServer>(w: &mut World<S>, expect: Expect, jid: &str, name: &str) {
    let deadline = w.deadline;
    match expect {
        Expect::RosterPush => {
            w.alice.wait_for(
                &format!("a roster push naming {jid} {name}"),
                deadline,
                |e| named(e, "roster_push", jid, name),
            );
        }
        Expect::SuggestionAfterRefusal => {
            w.alice.wait_for(
                &format!("a suggestion naming {jid} {name}"),
                deadline,
                |e| suggested(e, jid, name),
            );
            let log = w.bridge.log();
            let refusals: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("the XMPP server refused a roster IQ"))
                .collect();
            assert_eq!(refusals.len(), 1, "one refusal, not retried: {refusals:?}");
            assert!(
                refusals[0].contains("step=Set")
                    && refusals[0].contains("condition=internal-server-error"),
                "{}",
                refusals[0]
            );
        }
    }
}

/// Waits until the bridge has taken the server's privilege message.
fn privileged<S: XmppServer>(w: &mut World<S>) {
    let deadline = w.deadline;
    w.bridge
        .wait_log("XEP-0356 privileges received", 1, deadline);
    let log = w.bridge.log();
    assert!(
        log.lines()
            .any(
                |l| l.contains("XEP-0356 privileges received") && l.contains("roster=\"both\"")
                    || l.contains("XEP-0356 privileges received") && l.contains("roster=both")
            ),
        "roster access not granted:\n{}",
        log.lines()
            .filter(|l| l.contains("XEP-0356"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Alice's roster item for `jid`, from a roster get.
fn roster_item<S: XmppServer>(w: &mut World<S>, jid: &str) -> Value {
    w.alice.command(json!({"op": "roster"}));
    let deadline = w.deadline;
    let roster = w
        .alice
        .wait_for("the roster", deadline, |e| e["event"] == "roster");
    item(&roster, jid)
        .cloned()
        .unwrap_or_else(|| panic!("no {jid} in alice's roster: {roster}"))
}

/// (1) bob watches alice; his From display name names him in her roster, and a new one
/// renames him.
fn lcs_watcher_is_named_in_the_roster<S: XmppServer>(mut w: World<S>, expect: Expect) {
    privileged(&mut w);
    let keys = [
        ("user", "bob"),
        ("display", "Bob Builder"),
        ("display2", "Bob B. Builder"),
    ];
    let mut run = w.uac_with("r1", "roster_a_uac_watcher", &keys, false);
    let bob = w.mode.jid("bob");
    let deadline = w.deadline;
    let ask = w.alice.wait_for("subscribe from bob", deadline, |e| {
        is_presence_from(e, &bob) && e["type"] == "subscribe"
    });
    assert_eq!(ask["nick"], "Bob Builder", "XEP-0172 nick: {ask}");
    w.alice
        .command(json!({"op": "presence", "to": bob, "type": "subscribed"}));
    wait_named(&mut w, expect, &bob, "Bob Builder");
    wait_named(&mut w, expect, &bob, "Bob B. Builder");
    if expect == Expect::RosterPush {
        let it = roster_item(&mut w, &bob);
        assert_eq!(it["name"], "Bob B. Builder", "{it}");
    }
    w.finish(&mut run, "r1");
    if expect == Expect::RosterPush {
        // Bob's unsubscription changes the subscription, not the item or its name.
        let it = roster_item(&mut w, &bob);
        assert_eq!(it["name"], "Bob B. Builder", "{it}");
    }
}

/// (2) alice watches bob; his CIPID display name names him in her roster and his vCard.
fn lcs_contact_cipid_name_in_roster_and_vcard<S: XmppServer>(mut w: World<S>, expect: Expect) {
    privileged(&mut w);
    let mut run = w.uas("r2", "roster_b_uas_named");
    let bob = w.mode.jid("bob");
    w.alice
        .command(json!({"op": "presence", "to": bob, "type": "subscribe"}));
    let deadline = w.deadline;
    w.alice.wait_for("subscribed from bob", deadline, |e| {
        is_presence_from(e, &bob) && e["type"] == "subscribed"
    });
    wait_named(&mut w, expect, &bob, "Bob Smith");
    wait_named(&mut w, expect, &bob, "Robert Smith");
    if expect == Expect::RosterPush {
        let it = roster_item(&mut w, &bob);
        assert_eq!(it["name"], "Robert Smith", "{it}");
        assert_eq!(it["subscription"], "to", "{it}");
    }
    w.alice.command(json!({"op": "vcard", "to": bob}));
    let card = w
        .alice
        .wait_for("bob's vCard", deadline, |e| e["event"] == "vcard");
    assert_eq!(card["error"], Value::Null, "{card}");
    assert_eq!(card["fn"], "Robert Smith", "{card}");
    assert_eq!(card["nickname"], "Robert Smith", "{card}");
    assert_eq!(
        card["url"],
        format!("sip:bob@{}", w.mode.lcs_domain()),
        "{card}"
    );
    w.alice
        .command(json!({"op": "presence", "to": bob, "type": "unsubscribe"}));
    w.finish(&mut run, "r2");
}

#[test]
fn prosody_lcs_watcher_is_named_in_the_roster() {
    let Some(w) = World::with_config("(1) prosody", Mode::Gateway, CONFIG, || {
        Prosody::start_privileged("both")
    }) else {
        return;
    };
    lcs_watcher_is_named_in_the_roster(w, Expect::RosterPush);
}

#[test]
fn prosody_cipid_name_in_roster_and_vcard() {
    let Some(w) = World::with_config("(2) prosody", Mode::Gateway, CONFIG, || {
        Prosody::start_privileged("both")
    }) else {
        return;
    };
    lcs_contact_cipid_name_in_roster_and_vcard(w, Expect::RosterPush);
}

#[test]
fn ejabberd_lcs_watcher_is_named_in_the_roster() {
    let Some(w) = World::with_config("(1) ejabberd", Mode::Gateway, CONFIG, || {
        Ejabberd::start_privileged("both")
    }) else {
        return;
    };
    lcs_watcher_is_named_in_the_roster(w, Expect::SuggestionAfterRefusal);
}

#[test]
fn ejabberd_cipid_name_in_roster_and_vcard_direct_mode() {
    let Some(w) = World::with_config("(2) ejabberd, direct", Mode::Direct, CONFIG, || {
        Ejabberd::start_privileged("both")
    }) else {
        return;
    };
    lcs_contact_cipid_name_in_roster_and_vcard(w, Expect::SuggestionAfterRefusal);
}
