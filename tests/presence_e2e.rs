//! End-to-end presence through the real `lcs-bridge` binary, with real peers on both sides
//! (the world of tests/im_e2e.rs, `lcs_test_support::e2e`): Prosody with the bridge as its component in
//! gateway mode, alice@xmpp.test as a slixmpp client (`tests/xmpp_client.py`, presence stanzas
//! as JSON lines), SIPp (TCP) behind socat's mutual TLS playing LCS users of contoso.com.
//!
//! Flows (docs/mapping.md §5):
//! 1. alice watches bob@contoso.com: SUBSCRIBE (`Event: presence`, PIDF `Accept`, `Expires`),
//!    202, NOTIFY `active` with the profile's PIDF example, NOTIFY with an RFC 4480 `<person>`
//!    document, a BENOTIFY (never answered); alice gets `subscribed` once and the presence
//!    mapped by mappings/presence.toml for each document; her `unsubscribe` becomes SUBSCRIBE
//!    `Expires: 0`.
//! 2. bob watches alice: SIPp's SUBSCRIBE → 202, NOTIFY `pending`; alice gets `subscribe` and
//!    answers `subscribed` → NOTIFY `active` with `<basic>open</basic>`; alice goes `dnd` → a
//!    NOTIFY with the `busy` activity (coalescing interval 1 s); SUBSCRIBE `Expires: 0` → 200
//!    and NOTIFY `terminated`.
//! 3. carol subscribes, alice answers `unsubscribed` → NOTIFY `terminated;reason=rejected`.
//! 4. bob's active subscription (2) survives a bridge restart (SIGTERM, same store): alice's
//!    next change reaches SIPp as a NOTIFY in the same dialog, without a new SUBSCRIBE.
//! 5. bob's side ends alice's subscription with each `terminated` reason in turn
//!    (deactivated, probation with retry-after, timeout: a new SUBSCRIBE, when RFC 6665 says;
//!    rejected: `unsubscribed`); the first document has several tuples, a person and a device.
//! 6. `noresource`: `unavailable`, no `unsubscribed`, no new SUBSCRIBE soon.
//! 7. alice's subscription to bob survives a bridge restart: a fresh SUBSCRIBE, no second
//!    `subscribed`.
//!
//! Each test prints the bridge log, SIPp's logs, Prosody's log and alice's events when it fails.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use lcs_test_support::e2e::{Mode, World, bare, body_text, requests};
use lcs_test_support::sipp::{self, LoggedMessage};
use lcs_test_support::{Ejabberd, Prosody, XmppServer};

/// NOTIFYs to LCS at most once a second (the smallest interval), so a change shows quickly.
const PRESENCE_CONFIG: &str = "\n[presence]\nnotify_min_interval_secs = 1\n";

fn world<S: XmppServer>(name: &'static str, start: impl FnOnce() -> Option<S>) -> Option<World<S>> {
    World::with_config(name, Mode::Gateway, PRESENCE_CONFIG, start)
}

/// Each flow as two tests, `<flow>::prosody` and `<flow>::ejabberd` (root only; skipped
/// otherwise, like every ejabberd test): the flow is written once, generic over the server.
macro_rules! on_both_servers {
    ($flow:ident, $name:literal) => {
        mod $flow {
            #[test]
            fn prosody() {
                if let Some(mut w) =
                    super::world(concat!($name, " (Prosody)"), super::Prosody::start)
                {
                    super::$flow(&mut w);
                }
            }

            #[test]
            fn ejabberd() {
                if let Some(mut w) =
                    super::world(concat!($name, " (ejabberd)"), super::Ejabberd::start)
                {
                    super::$flow(&mut w);
                }
            }
        }
    };
}

fn is_presence_from(event: &Value, from: &str) -> bool {
    event["event"] == "presence" && event["from"].as_str().is_some_and(|f| bare(f) == from)
}

fn wait_sipp_log<S: XmppServer>(
    w: &World<S>,
    run: &str,
    what: &str,
    pred: impl Fn(&LoggedMessage) -> bool,
) -> LoggedMessage {
    loop {
        if let Some(m) = sipp::read_message_log(w.dir(), run)
            .into_iter()
            .find(|m| pred(m))
        {
            return m;
        }
        assert!(Instant::now() < w.deadline, "SIPp {run}: no {what} in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One line per NOTIFY SIPp received: time, Subscription-State and the document's gist.
fn notify_summary(log: &[LoggedMessage]) -> String {
    requests(log)
        .into_iter()
        .filter(|m| m.method().as_deref() == Some("NOTIFY"))
        .map(|m| {
            let body = body_text(m);
            let gist: Vec<&str> = ["open", "closed", "away", "busy"]
                .into_iter()
                .filter(|w| body.contains(&format!(">{w}<")))
                .collect();
            format!(
                "{:.3} {} {gist:?}",
                m.time,
                m.header("Subscription-State").unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_notify_with(m: &LoggedMessage, needle: &str) -> bool {
    !m.sent && m.method().as_deref() == Some("NOTIFY") && body_text(m).contains(needle)
}

on_both_servers!(xmpp_user_watches_lcs_user, "(1) alice watches bob");

/// (1) alice watches bob.
fn xmpp_user_watches_lcs_user<S: XmppServer>(w: &mut World<S>) {
    let mut run = w.uas("p1", "presence_1_uas_notifier");
    let bob = w.mode.jid("bob");
    w.alice
        .command(json!({"op": "presence", "to": bob, "type": "subscribe"}));
    let deadline = w.deadline;
    w.alice.wait_for("subscribed from bob", deadline, |e| {
        is_presence_from(e, &bob) && e["type"] == "subscribed"
    });
    // mappings/presence.toml: the profile example's activity `away` → show away, no status;
    // RFC 4480 `meeting` → dnd, the person's <note> as status; open without activity →
    // available.
    let expected = [
        ("away", None, "the profile's example (away)"),
        (
            "dnd",
            Some("Budget review until five"),
            "the RFC 4480 person (meeting)",
        ),
        ("", None, "the BENOTIFY (online)"),
    ];
    for (show, status, what) in expected {
        let e = w.alice.wait_for(what, deadline, |e| {
            is_presence_from(e, &bob)
                && e["type"] == "available"
                && e["show"].as_str().unwrap_or_default() == show
                && e["status"].as_str() == status
        });
        eprintln!("alice got {e}");
    }
    w.alice
        .command(json!({"op": "presence", "to": bob, "type": "unsubscribe"}));
    let log = w.finish(&mut run, "p1");
    w.alice.drain();
    let subscribed = w
        .alice
        .seen
        .iter()
        .filter(|e| is_presence_from(e, &bob) && e["type"] == "subscribed")
        .count();
    assert_eq!(subscribed, 1, "`subscribed` from bob");
    let subs: Vec<&LoggedMessage> = requests(&log)
        .into_iter()
        .filter(|m| m.method().as_deref() == Some("SUBSCRIBE"))
        .collect();
    assert_eq!(subs.len(), 2, "SUBSCRIBEs");
    assert_eq!(subs[0].header("Expires").as_deref(), Some("3600"));
    assert_eq!(subs[1].header("Expires").as_deref(), Some("0"));
    assert_eq!(subs[0].header("Call-ID"), subs[1].header("Call-ID"));
    // Nothing answered the BENOTIFY.
    assert!(
        !log.iter()
            .any(|m| !m.sent && m.cseq().is_some_and(|(_, method)| method == "BENOTIFY")),
        "a response to the BENOTIFY"
    );
}

/// Alice gets bob's `subscribe` (with his display name as nick) and approves; waits until
/// SIPp run `name` got the `active` NOTIFY with `<basic>open</basic>` and checks its document.
fn approve_and_wait_open<S: XmppServer>(w: &mut World<S>, name: &str) {
    let bob = w.mode.jid("bob");
    let deadline = w.deadline;
    let sub = w.alice.wait_for("subscribe from bob", deadline, |e| {
        is_presence_from(e, &bob) && e["type"] == "subscribe"
    });
    assert_eq!(sub["nick"], "Bob", "{sub}");
    // The approval's NOTIFY `active` goes out at once, even while the `pending` one is not
    // answered yet; SIPp cannot take a NOTIFY that arrives in the same read as the one before
    // it (it is still at the `<send>` of its 200), so alice approves once SIPp has answered.
    wait_sipp_log(w, name, "200 to the NOTIFY pending", |m| {
        m.sent && m.status() == Some(200) && m.cseq().is_some_and(|(_, method)| method == "NOTIFY")
    });
    w.alice
        .command(json!({"op": "presence", "to": bob, "type": "subscribed"}));
    let open = wait_sipp_log(w, name, "NOTIFY with <basic>open</basic>", |m| {
        is_notify_with(m, "<basic>open</basic>")
    });
    let state = open.header("Subscription-State").unwrap_or_default();
    assert!(state.starts_with("active"), "{state}");
    let body = body_text(&open);
    assert_eq!(body.matches("<tuple").count(), 1, "one tuple:\n{body}");
    assert!(body.contains("entity=\"sip:alice@xmpp.test\""), "{body}");
}

on_both_servers!(lcs_user_watches_xmpp_user, "(2) bob watches alice");

/// (2) bob watches alice.
fn lcs_user_watches_xmpp_user<S: XmppServer>(w: &mut World<S>) {
    let bob = [("user", "bob"), ("display", "Bob")];
    let mut run = w.uac_with("p2", "presence_2_uac_watcher", &bob, false);
    approve_and_wait_open(w, "p2");
    w.alice
        .command(json!({"op": "presence", "show": "dnd", "status": "deep work"}));
    let log = w.finish(&mut run, "p2");
    eprintln!("(2) NOTIFYs:\n{}", notify_summary(&log));
    let notifies: Vec<&LoggedMessage> = requests(&log)
        .into_iter()
        .filter(|m| m.method().as_deref() == Some("NOTIFY"))
        .collect();
    let busy = notifies
        .iter()
        .find(|m| body_text(m).contains("busy"))
        .unwrap();
    let body = body_text(busy);
    assert!(body.contains("<basic>open</basic>"), "{body}");
    assert!(body.contains("deep work"), "the status as note:\n{body}");
    let last = notifies.last().unwrap();
    let state = last.header("Subscription-State").unwrap_or_default();
    assert!(state.starts_with("terminated"), "{state}");
    // All in one dialog.
    let call_ids: Vec<Option<String>> = notifies.iter().map(|m| m.header("Call-ID")).collect();
    assert!(call_ids.windows(2).all(|p| p[0] == p[1]), "{call_ids:?}");
}

on_both_servers!(xmpp_user_refuses_lcs_watcher, "(3) alice refuses carol");

/// (3) carol subscribes, alice refuses.
fn xmpp_user_refuses_lcs_watcher<S: XmppServer>(w: &mut World<S>) {
    let carol = [("user", "carol"), ("display", "Carol")];
    let mut run = w.uac_with("p3", "presence_3_uac_refused", &carol, false);
    let carol = w.mode.jid("carol");
    let deadline = w.deadline;
    w.alice.wait_for("subscribe from carol", deadline, |e| {
        is_presence_from(e, &carol) && e["type"] == "subscribe"
    });
    w.alice
        .command(json!({"op": "presence", "to": carol, "type": "unsubscribed"}));
    w.finish(&mut run, "p3");
}

on_both_servers!(lcs_watcher_survives_bridge_restart, "(4) restart");

/// (4) bob's active subscription survives a bridge restart: SIGTERM, the same store; alice's
/// next change reaches SIPp as a NOTIFY in the same dialog (same Call-ID and tags), with no
/// new SUBSCRIBE; then bob unsubscribes in that dialog. SIPp (one TCP socket per call) keeps
/// its connection through `sticky_relay`, which opens a new TLS connection to the restarted
/// bridge; the bridge sends the stored dialog's NOTIFYs by domain, reusing that connection.
fn lcs_watcher_survives_bridge_restart<S: XmppServer>(w: &mut World<S>) {
    // SIPp's connection to the bridge is replaced under it (an LCS edge reconnecting).
    let bob = [("user", "bob"), ("display", "Bob")];
    let mut run = w.uac_with("p4", "presence_4_uac_restart", &bob, true);
    approve_and_wait_open(w, "p4");
    let before = sipp::read_message_log(w.dir(), "p4");
    let first = before
        .iter()
        .find(|m| is_notify_with(m, "<basic>open</basic>"))
        .unwrap()
        .clone();
    w.restart_bridge();
    w.alice
        .command(json!({"op": "presence", "show": "away", "status": "back soon"}));
    let log = w.finish(&mut run, "p4");
    eprintln!("(4) NOTIFYs:\n{}", notify_summary(&log));
    let away = log
        .iter()
        .find(|m| is_notify_with(m, "away"))
        .expect("a NOTIFY with away");
    for h in ["Call-ID", "From", "To"] {
        assert_eq!(
            away.header(h),
            first.header(h),
            "{h} of the NOTIFY after the restart"
        );
    }
    let state = away.header("Subscription-State").unwrap_or_default();
    assert!(state.starts_with("active"), "{state}");
    assert!(body_text(away).contains("back soon"), "{}", body_text(away));
    let subscribes = log
        .iter()
        .filter(|m| m.sent && m.method().as_deref() == Some("SUBSCRIBE"))
        .count();
    assert_eq!(
        subscribes, 2,
        "SUBSCRIBEs SIPp sent (the first and Expires 0)"
    );
}

/// The SUBSCRIBEs the bridge sent to SIPp and the NOTIFYs SIPp sent, in order.
fn subscribes_and_notifies(log: &[LoggedMessage]) -> (Vec<&LoggedMessage>, Vec<&LoggedMessage>) {
    let of = |method: &str, sent: bool| -> Vec<&LoggedMessage> {
        log.iter()
            .filter(|m| m.sent == sent && m.method().as_deref() == Some(method))
            .collect()
    };
    (of("SUBSCRIBE", false), of("NOTIFY", true))
}

fn count_presence<S: XmppServer>(w: &mut World<S>, from: &str, kind: &str) -> usize {
    w.alice.drain();
    w.alice
        .seen
        .iter()
        .filter(|e| is_presence_from(e, from) && e["type"] == kind)
        .count()
}

on_both_servers!(
    lcs_side_terminates_with_each_reason,
    "(5) terminated reasons"
);

/// (5) alice watches bob, and bob's side ends the subscription with each reason in turn
/// (RFC 6665 §4.1.3, docs/mapping.md §5), each in a fresh dialog (one SIPp call each):
/// `deactivated` → a new SUBSCRIBE at once; `probation;retry-after=1` → a new SUBSCRIBE after a
/// second, `unavailable` meanwhile; `timeout` → at once again (the `active` in between reset
/// the backoff); `rejected` → `unsubscribed`, and nothing more. The first `active` NOTIFY
/// carries several tuples, a person and a device: only the first tuple is shown. alice sees
/// `subscribed` once for the whole run.
fn lcs_side_terminates_with_each_reason<S: XmppServer>(w: &mut World<S>) {
    let mut run = w.uas_calls("p5", "presence_5_uas_terminated_reasons", 4);
    let bob = w.mode.jid("bob");
    w.alice
        .command(json!({"op": "presence", "to": bob, "type": "subscribe"}));
    let deadline = w.deadline;
    let e = w.alice.wait_for("bob's first tuple", deadline, |e| {
        is_presence_from(e, &bob) && e["type"] == "available"
    });
    assert_eq!(e["show"], "dnd", "busy in the first tuple: {e}");
    assert_eq!(e["status"], "In a call", "the first tuple's note: {e}");
    w.alice.wait_for("unsubscribed from bob", deadline, |e| {
        is_presence_from(e, &bob) && e["type"] == "unsubscribed"
    });
    let log = w.finish(&mut run, "p5");
    let (subscribes, notifies) = subscribes_and_notifies(&log);
    assert_eq!(subscribes.len(), 4, "SUBSCRIBEs, one per call");
    let mut call_ids: Vec<Option<String>> =
        subscribes.iter().map(|m| m.header("Call-ID")).collect();
    call_ids.sort();
    call_ids.dedup();
    assert_eq!(call_ids.len(), 4, "each SUBSCRIBE in a new dialog");
    let terminated: Vec<&&LoggedMessage> = notifies
        .iter()
        .filter(|m| {
            m.header("Subscription-State")
                .is_some_and(|s| s.starts_with("terminated"))
        })
        .collect();
    assert_eq!(terminated.len(), 4);
    // The delay between each `terminated` and the next SUBSCRIBE.
    let waited: Vec<f64> = (0..3)
        .map(|k| subscribes[k + 1].time - terminated[k].time)
        .collect();
    eprintln!("(5) re-SUBSCRIBE delays: {waited:?}");
    assert!(
        waited[0] < 0.9,
        "deactivated: at once, not {:.3} s",
        waited[0]
    );
    assert!(
        (1.0..5.0).contains(&waited[1]),
        "probation;retry-after=1: after a second, not {:.3} s",
        waited[1]
    );
    assert!(waited[2] < 0.9, "timeout: at once, not {:.3} s", waited[2]);
    // Nothing after the rejection (a second to let a wrong one show).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count_presence(w, &bob, "subscribed"),
        1,
        "`subscribed` once"
    );
    assert_eq!(count_presence(w, &bob, "unsubscribed"), 1);
    let unavailable_before_end = w
        .alice
        .seen
        .iter()
        .take_while(|e| !(is_presence_from(e, &bob) && e["type"] == "unsubscribed"))
        .any(|e| is_presence_from(e, &bob) && e["type"] == "unavailable");
    assert!(
        unavailable_before_end,
        "`unavailable` while waiting after probation"
    );
}

on_both_servers!(lcs_side_terminates_noresource, "(6) noresource");

/// (6) `terminated;reason=noresource`: RFC 6665 says not to subscribe again soon; the bridge
/// shows bob `unavailable`, keeps alice's subscription (no `unsubscribed`) and sends no new
/// SUBSCRIBE within the next seconds (it retries after the longest delay, 30 min).
fn lcs_side_terminates_noresource<S: XmppServer>(w: &mut World<S>) {
    // Two calls: a second SUBSCRIBE would be taken; none must come.
    let mut run = w.uas_calls("p6", "presence_6_uas_noresource", 2);
    let bob = w.mode.jid("bob");
    w.alice
        .command(json!({"op": "presence", "to": bob, "type": "subscribe"}));
    let deadline = w.deadline;
    w.alice.wait_for("bob online", deadline, |e| {
        is_presence_from(e, &bob) && e["type"] == "available"
    });
    w.alice.wait_for("bob unavailable", deadline, |e| {
        is_presence_from(e, &bob) && e["type"] == "unavailable"
    });
    std::thread::sleep(Duration::from_secs(3));
    let log = sipp::read_message_log(w.dir(), "p6");
    let (subscribes, _) = subscribes_and_notifies(&log);
    assert_eq!(subscribes.len(), 1, "no SUBSCRIBE soon after noresource");
    assert_eq!(count_presence(w, &bob, "unsubscribed"), 0);
    assert_eq!(count_presence(w, &bob, "subscribed"), 1);
    drop(run.0.kill());
}

on_both_servers!(xmpp_watcher_survives_bridge_restart, "(7) outbound restart");

/// (7) alice's subscription to bob survives a bridge restart: the restarted bridge subscribes
/// again by itself (a fresh dialog, RFC 6665 gives no way to resume the old one without its
/// state on both sides), alice sees bob's new presence and no second `subscribed`.
fn xmpp_watcher_survives_bridge_restart<S: XmppServer>(w: &mut World<S>) {
    let mut run = w.uas_calls("p7", "presence_7_uas_restart", 2);
    let bob = w.mode.jid("bob");
    w.alice
        .command(json!({"op": "presence", "to": bob, "type": "subscribe"}));
    let deadline = w.deadline;
    w.alice.wait_for("bob online", deadline, |e| {
        is_presence_from(e, &bob) && e["type"] == "available" && e["show"].is_null()
    });
    w.restart_bridge();
    w.alice
        .wait_for("bob away after the restart", deadline, |e| {
            is_presence_from(e, &bob) && e["type"] == "available" && e["show"] == "away"
        });
    let log = w.finish(&mut run, "p7");
    let (subscribes, _) = subscribes_and_notifies(&log);
    assert_eq!(subscribes.len(), 2, "one SUBSCRIBE per bridge process");
    assert_ne!(
        subscribes[0].header("Call-ID"),
        subscribes[1].header("Call-ID")
    );
    assert_eq!(
        count_presence(w, &bob, "subscribed"),
        1,
        "`subscribed` once"
    );
    assert_eq!(count_presence(w, &bob, "unsubscribed"), 0);
}

// ------------------------------------------------------------------ per-watcher presence (8)

/// The first message in SIPp run `run`'s log that satisfies `pred`, waiting for it (and
/// failing at once if the run ends without it: its scenario failed).
fn wait_logged<S: XmppServer>(
    w: &World<S>,
    (run, sipp): (&str, &mut sipp::Killed),
    what: &str,
    pred: impl Fn(&LoggedMessage) -> bool,
) -> LoggedMessage {
    loop {
        let ended = sipp.0.try_wait().ok().flatten();
        if let Some(m) = sipp::read_message_log(w.dir(), run)
            .into_iter()
            .find(|m| pred(m))
        {
            return m;
        }
        assert!(
            ended.is_none(),
            "SIPp {run} ended ({ended:?}) before {what}"
        );
        assert!(Instant::now() < w.deadline, "SIPp {run}: no {what} in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The NOTIFYs SIPp run `run` received, in order.
fn notifies_of(w: &World<impl XmppServer>, run: &str) -> Vec<LoggedMessage> {
    sipp::read_message_log(w.dir(), run)
        .into_iter()
        .filter(|m| !m.sent && m.method().as_deref() == Some("NOTIFY"))
        .collect()
}

/// (8) Two LCS watchers of alice, bob and carol (two SIPp UACs, each over its own mutual-TLS
/// connection): each sees what the XMPP server sends to its own JID (docs/mapping.md §5).
/// Alice approves both; both see her online. She sends bob directed unavailable (RFC 6121
/// §4.6): bob sees her offline, carol does not (no NOTIFY reaches carol meanwhile, and her
/// refresh is answered `open`). She blocks carol (XEP-0191) and goes dnd: bob alone sees the
/// dnd. `notice`: the server sends a blocked contact `unavailable` (XEP-0191 §3.3; Prosody), so
/// carol sees her offline; else (ejabberd 23.01 only stops sending) carol keeps the last
/// presence it was sent. Fails on a bridge that keeps one presence per user: carol's scenario
/// gets a NOTIFY it does not expect.
fn each_watcher_sees_its_own<S: XmppServer>(mut w: World<S>, notice: bool) {
    let blocked = if notice { "closed" } else { "silent" };
    let bob = [("user", "bob"), ("display", "Bob")];
    let carol = [
        ("user", "carol"),
        ("display", "Carol"),
        ("blocked", blocked),
    ];
    let mut bob_run = w.uac_with("p8b", "presence_8_uac_first_watcher", &bob, false);
    let mut carol_run = w.uac_with("p8c", "presence_8_uac_second_watcher", &carol, false);
    let deadline = w.deadline;
    for user in ["bob", "carol"] {
        let jid = w.mode.jid(user);
        w.alice
            .wait_for(&format!("subscribe from {user}"), deadline, |e| {
                is_presence_from(e, &jid) && e["type"] == "subscribe"
            });
        w.alice
            .command(json!({"op": "presence", "to": jid, "type": "subscribed"}));
    }
    let open = |m: &LoggedMessage| is_notify_with(m, "<basic>open</basic>");
    let bob_open = wait_logged(&w, ("p8b", &mut bob_run), "bob's NOTIFY open", open);
    let carol_open = wait_logged(&w, ("p8c", &mut carol_run), "carol's NOTIFY open", open);
    // Directed unavailable to bob alone.
    let (bob_jid, carol_jid) = (w.mode.jid("bob"), w.mode.jid("carol"));
    w.alice
        .command(json!({"op": "presence", "to": bob_jid, "type": "unavailable"}));
    let closed_after =
        |t: f64| move |m: &LoggedMessage| m.time > t && is_notify_with(m, "<basic>closed</basic>");
    let bob_closed = wait_logged(
        &w,
        ("p8b", &mut bob_run),
        "bob's NOTIFY closed",
        closed_after(bob_open.time),
    );
    // Carol's refresh, 6 s after she saw alice online, is answered with what she may see.
    let refresh = wait_logged(&w, ("p8c", &mut carol_run), "carol's refresh", |m| {
        m.sent && m.cseq() == Some((2, "SUBSCRIBE".into()))
    });
    assert!(
        bob_closed.time < refresh.time,
        "bob was closed ({:.3}) before carol refreshed ({:.3})",
        bob_closed.time,
        refresh.time
    );
    // She blocks carol, then goes dnd.
    w.alice.command(json!({"op": "block", "jid": carol_jid}));
    w.alice.wait_for("the block's result", deadline, |e| {
        e["event"] == "iq" && e["op"] == "block" && e["type"] == "result"
    });
    if notice {
        wait_logged(
            &w,
            ("p8c", &mut carol_run),
            "carol's NOTIFY closed",
            closed_after(refresh.time),
        );
    }
    w.alice
        .command(json!({"op": "presence", "show": "dnd", "status": "heads down"}));
    let bob_log = w.finish(&mut bob_run, "p8b");
    let carol_log = w.finish(&mut carol_run, "p8c");
    eprintln!("(8) bob's NOTIFYs:\n{}", notify_summary(&bob_log));
    eprintln!("(8) carol's NOTIFYs:\n{}", notify_summary(&carol_log));
    let bob_busy = bob_log
        .iter()
        .find(|m| is_notify_with(m, "busy"))
        .expect("bob's NOTIFY busy");
    assert!(body_text(bob_busy).contains("heads down"));
    // Carol, after she first saw alice online: her refreshes' NOTIFYs, the block's, the last.
    let carol_notifies = notifies_of(&w, "p8c");
    let after_open: Vec<String> = carol_notifies
        .iter()
        .filter(|m| m.time > carol_open.time)
        .map(|m| {
            let body = body_text(m);
            let basic = ["open", "closed"]
                .into_iter()
                .find(|b| body.contains(&format!("<basic>{b}</basic>")))
                .unwrap_or("-");
            let state = m.header("Subscription-State").unwrap_or_default();
            format!("{} {basic}", state.split(';').next().unwrap_or_default())
        })
        .collect();
    let expected: &[&str] = if notice {
        &[
            "active open",
            "active closed",
            "active closed",
            "terminated -",
        ]
    } else {
        &["active open", "active open", "terminated -"]
    };
    assert_eq!(
        after_open, expected,
        "carol's NOTIFYs after she saw alice online"
    );
    assert!(
        !carol_notifies.iter().any(|m| body_text(m).contains("busy")),
        "carol was told alice's dnd"
    );
}

#[test]
fn each_lcs_watcher_sees_what_prosody_sent_to_it() {
    let Some(w) = world("(8) per-watcher presence (Prosody)", Prosody::start) else {
        return;
    };
    each_watcher_sees_its_own(w, true);
}

/// (8) on ejabberd (root only, like every ejabberd test): its mod_blocking does not send the
/// blocked contact `unavailable`.
#[test]
fn each_lcs_watcher_sees_what_ejabberd_sent_to_it() {
    let Some(w) = world("(8) per-watcher presence (ejabberd)", Ejabberd::start) else {
        return;
    };
    each_watcher_sees_its_own(w, false);
}
