//! End-to-end instant messaging through the real `lcs-bridge` binary (`lcs-bridge run --config
//! FILE`), with real peers on both sides:
//!
//! - XMPP: Prosody or ejabberd (Debian) with the bridge as its component; alice@xmpp.test is a
//!   slixmpp client (`tests/xmpp_client.py`) that prints every message stanza as a JSON line.
//! - SIP: SIPp (Debian's, TCP only) behind socat's mutual TLS, playing the LCS user
//!   bob@contoso.com (gateway mode, `bob\40contoso.com@lcs.xmpp.test` on the XMPP side) or
//!   bob@contoso.test (direct mode, the component domain is the LCS domain). The bridge reaches
//!   SIPp through the static partner route `127.0.0.1:<socat port>`; SIPp reaches the bridge
//!   through socat's `OPENSSL` client with the peer certificate.
//!
//! Flows (Prosody, gateway mode): (a) three messages from XMPP open an INVITE session with the
//! profile's m-line and arrive as in-dialog MESSAGEs in order with their bodies byte for byte,
//! then a BYE after `[im] session_idle_secs`; (b) SIPp's INVITE session and two MESSAGEs reach
//! alice from bob's JID; (c) a 480 to the INVITE comes back as `recipient-unavailable` with the
//! original body; (d) a receipt request gets `<received/>` after the MESSAGE's 200; (e) typing
//! both ways (RFC 3994 isComposing ⇄ XEP-0085); (f) a message from LCS to a local address with
//! no account is bounced by the XMPP server, and the bridge tells the LCS sender in the session
//! and ends it with BYE. ejabberd: (a) and (b) in gateway and in direct mode, (f). A Prosody restart mid-conversation: every MESSAGE SIPp sent while the component link
//! was down is either delivered to alice after it is back or was answered with an error.
//!
//! Each test prints the bridge log, SIPp's logs, the XMPP server's log and the client's events
//! when it fails (see `lcs_test_support::e2e::World`'s `Drop`).

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use lcs_test_support::e2e::{
    IDLE_SECS, Mode, World, XmppClient, body_text, is_message_from, lf, methods, requests,
};
use lcs_test_support::sipp::{self, LoggedMessage};
use lcs_test_support::{Ejabberd, Prosody, XmppServer};

// ------------------------------------------------------------------ SIPp scenarios (tests/sipp)

const TEXT: &str = "text/plain; charset=UTF-8";
const ISCOMPOSING: &str = "application/im-iscomposing+xml";

// ------------------------------------------------------------------ the flows

/// (a) alice writes three messages: SIPp sees the INVITE with the profile's m-line, ACKs,
/// gets the three MESSAGEs in order with their bodies byte for byte, then a BYE once the
/// session has been idle for `session_idle_secs`.
fn flow_a<S: XmppServer>(w: &mut World<S>) {
    let mut sipp = w.uas("a", "im_a_uas_three_messages");
    let bob = w.mode.jid("bob");
    let bodies = [
        "one",
        "two & <three> \"four\" 'five'",
        "drei é 中 ✓ 🙂 <&> \\40",
    ];
    for (i, body) in bodies.iter().enumerate() {
        w.alice
            .send(&bob, Some(body), json!({"id": format!("a{i}")}));
    }
    let log = w.finish(&mut sipp, "a");
    let reqs = requests(&log);
    assert_eq!(
        methods(&reqs),
        ["INVITE", "ACK", "MESSAGE", "MESSAGE", "MESSAGE", "BYE"]
    );
    let invite = reqs[0];
    assert!(
        body_text(invite)
            .lines()
            .any(|l| l == "m=message 5060 sip/tcp *"),
        "INVITE without the profile's m-line:\n{}",
        body_text(invite)
    );
    let messages = &reqs[2..5];
    for (m, body) in messages.iter().zip(bodies) {
        assert_eq!(m.body(), body.as_bytes(), "MESSAGE body");
        assert_eq!(m.header("Content-Type").as_deref(), Some(TEXT));
    }
    let cseqs: Vec<u32> = messages.iter().map(|m| m.cseq().unwrap().0).collect();
    assert!(
        cseqs.windows(2).all(|w| w[0] < w[1]),
        "CSeq order {cseqs:?}"
    );
    let answered: Vec<u32> = log
        .iter()
        .filter(|m| m.sent && m.status() == Some(200))
        .filter_map(|m| m.cseq().filter(|(_, method)| method == "MESSAGE"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(answered, cseqs, "SIPp's 200s to the MESSAGEs");
    // The BYE comes once the session has been idle (from alice's last message) for the limit.
    let mut idle = reqs[5].time - reqs[4].time;
    if idle < 0.0 {
        idle += 86_400.0; // past midnight
    }
    assert!(
        idle >= IDLE_SECS as f64 - 1.0,
        "BYE {idle:.3} s after the last MESSAGE, before the idle timeout of {IDLE_SECS} s"
    );
    let errors: Vec<Value> = w
        .alice
        .messages_from(&bob)
        .into_iter()
        .filter(|e| e["type"] == "error")
        .collect();
    assert!(errors.is_empty(), "error stanzas: {errors:?}");
}

/// (b) SIPp starts an INVITE session and sends two MESSAGEs: alice gets both, in order, from
/// bob's JID, as chat messages of one thread, the text as it went over the wire.
fn flow_b<S: XmppServer>(w: &mut World<S>) {
    let first = "Hello from LCS";
    let second = "Zweite Nachricht: é 中 ✓ <&> \"quoted\"";
    let keys = [("first", first), ("second", second)];
    let mut sipp = w.uac_with("b", "im_b_uac_two_messages", &keys, false);
    let bob = w.mode.jid("bob");
    let deadline = w.deadline;
    let got: Vec<Value> = (0..2)
        .map(|_| {
            w.alice.wait_for("a message from bob", deadline, |e| {
                is_message_from(e, &bob) && e["body"].is_string()
            })
        })
        .collect();
    let log = w.finish(&mut sipp, "b");
    let sent: Vec<&LoggedMessage> = log
        .iter()
        .filter(|m| m.sent && m.method().as_deref() == Some("MESSAGE"))
        .collect();
    assert_eq!(sent.len(), 2);
    let call_id = sent[0].header("Call-ID").unwrap();
    for ((event, wire), text) in got.iter().zip(&sent).zip([first, second]) {
        let wire = body_text(wire);
        assert!(wire.starts_with(text), "SIPp sent {wire:?}");
        assert_eq!(event["type"], "chat", "{event}");
        assert_eq!(event["body"].as_str().map(lf), Some(lf(&wire)), "{event}");
        assert_eq!(event["thread"].as_str(), Some(call_id.as_str()), "{event}");
    }
}

#[test]
fn prosody_a_three_messages_to_lcs_then_bye_after_idle() {
    let Some(mut w) = World::new("(a)", Mode::Gateway, Prosody::start) else {
        return;
    };
    flow_a(&mut w);
}

#[test]
fn prosody_b_lcs_session_reaches_the_xmpp_user() {
    let Some(mut w) = World::new("(b)", Mode::Gateway, Prosody::start) else {
        return;
    };
    flow_b(&mut w);
}

/// (c) SIPp answers the INVITE with 480: alice gets her message back as an error with
/// `recipient-unavailable` and its original body.
#[test]
fn prosody_c_480_returns_recipient_unavailable_with_the_body() {
    let Some(mut w) = World::new("(c)", Mode::Gateway, Prosody::start) else {
        return;
    };
    let mut sipp = w.uas("c", "im_c_uas_480");
    let bob = w.mode.jid("bob");
    let body = "are you there? <&> ü";
    w.alice.send(&bob, Some(body), json!({"id": "c1"}));
    let deadline = w.deadline;
    let error = w.alice.wait_for("the error for c1", deadline, |e| {
        is_message_from(e, &bob) && e["type"] == "error"
    });
    assert_eq!(error["id"], "c1", "{error}");
    assert_eq!(
        error["error"]["condition"], "recipient-unavailable",
        "{error}"
    );
    assert_eq!(error["body"], body, "{error}");
    w.finish(&mut sipp, "c");
}

/// (d) A message with a XEP-0184 receipt request: `<received id=…/>` from bob once SIPp has
/// answered the MESSAGE 200.
#[test]
fn prosody_d_receipt_request_gets_received() {
    let Some(mut w) = World::new("(d)", Mode::Gateway, Prosody::start) else {
        return;
    };
    let mut sipp = w.uas("d", "im_d_uas_one_message");
    let bob = w.mode.jid("bob");
    w.alice.send(
        &bob,
        Some("receipt, please"),
        json!({"id": "d1", "receipt": true}),
    );
    let deadline = w.deadline;
    let receipt = w.alice.wait_for("the receipt for d1", deadline, |e| {
        is_message_from(e, &bob) && !e["received"].as_array().is_none_or(Vec::is_empty)
    });
    assert_eq!(receipt["received"], json!(["d1"]), "{receipt}");
    assert_ne!(receipt["type"], "error", "{receipt}");
    let log = w.finish(&mut sipp, "d");
    let reqs = requests(&log);
    assert_eq!(methods(&reqs), ["INVITE", "ACK", "MESSAGE"]);
    assert_eq!(reqs[2].body(), b"receipt, please");
}

/// (e) Typing both ways in one session SIPp started: isComposing `active` and `idle` become
/// `<composing/>` and `<paused/>` from bob; alice's `<composing/>` becomes an isComposing
/// MESSAGE (`active`) from alice in the same dialog.
#[test]
fn prosody_e_typing_both_ways() {
    let Some(mut w) = World::new("(e)", Mode::Gateway, Prosody::start) else {
        return;
    };
    let mut sipp = w.uac("e", "im_e_uac_typing");
    let bob = w.mode.jid("bob");
    let deadline = w.deadline;
    for state in ["composing", "paused"] {
        let e = w.alice.wait_for(state, deadline, |e| {
            is_message_from(e, &bob) && e["chatstates"].as_array().is_some_and(|s| !s.is_empty())
        });
        assert_eq!(e["chatstates"], json!([state]), "{e}");
        assert!(e["body"].is_null(), "{e}");
        assert_eq!(e["type"], "chat", "{e}");
    }
    w.alice
        .send(&bob, None, json!({"id": "e1", "chatstate": "composing"}));
    let log = w.finish(&mut sipp, "e");
    let typing = requests(&log)
        .into_iter()
        .find(|m| m.method().as_deref() == Some("MESSAGE"))
        .expect("an isComposing MESSAGE from the bridge");
    assert_eq!(typing.header("Content-Type").as_deref(), Some(ISCOMPOSING));
    assert!(
        body_text(typing).contains("<state>active</state>"),
        "{}",
        body_text(typing)
    );
}

/// (f) SIPp (bob) opens a session to `nobody@xmpp.test`, a local address with no account, with
/// a first message. The bridge accepts (it cannot know) and delivers the message; the XMPP
/// server bounces it (`service-unavailable`, RFC 6121 §8.5.1), and the bridge tells bob in the
/// session — a MESSAGE from nobody naming the condition with the status `errors.toml` gives it
/// — and ends the session: BYE with `Reason: SIP;cause=503`.
fn flow_f<S: XmppServer>(w: &mut World<S>) {
    let mut sipp = w.uac("f", "im_f_uac_no_account");
    let log = w.finish(&mut sipp, "f");
    let reqs = requests(&log);
    assert_eq!(methods(&reqs), ["MESSAGE", "BYE"]);
    let notice = body_text(reqs[0]);
    assert!(
        notice.starts_with(
            "Message not delivered to nobody@xmpp.test (503 Service Unavailable, \
             service-unavailable)"
        ) && notice
            .ends_with("nobody@xmpp.test is not reachable (no account, offline, or blocking); this conversation has ended."),
        "{notice:?}"
    );
    assert_eq!(reqs[0].header("Content-Type").as_deref(), Some(TEXT));
    let from = reqs[0].header("From").unwrap_or_default();
    assert!(from.contains("sip:nobody@xmpp.test"), "{from}");
    assert_eq!(
        reqs[1].header("Reason").as_deref(),
        Some("SIP;cause=503;text=\"Service Unavailable\"")
    );
    assert_eq!(reqs[0].header("Call-ID"), reqs[1].header("Call-ID"));
}

#[test]
fn prosody_f_message_to_no_account_is_told_and_ends_the_session() {
    let Some(mut w) = World::new("(f)", Mode::Gateway, Prosody::start) else {
        return;
    };
    flow_f(&mut w);
}

/// ejabberd: flow (f).
#[test]
fn ejabberd_f_message_to_no_account_is_told_and_ends_the_session() {
    let Some(mut w) = World::new("ejabberd (f)", Mode::Gateway, Ejabberd::start) else {
        return;
    };
    flow_f(&mut w);
}

/// ejabberd, gateway mode: flows (a) and (b).
#[test]
fn ejabberd_gateway_a_and_b() {
    let Some(mut w) = World::new("ejabberd", Mode::Gateway, Ejabberd::start) else {
        return;
    };
    flow_a(&mut w);
    flow_b(&mut w);
}

/// ejabberd, direct mode (component `contoso.test` = the LCS domain): flows (a) and (b).
#[test]
fn ejabberd_direct_a_and_b() {
    let Some(mut w) = World::new("ejabberd", Mode::Direct, Ejabberd::start) else {
        return;
    };
    flow_a(&mut w);
    flow_b(&mut w);
}

/// MESSAGEs SIPp has sent so far.
fn sent_messages(log: &[LoggedMessage]) -> Vec<&LoggedMessage> {
    log.iter()
        .filter(|m| m.sent && m.method().as_deref() == Some("MESSAGE"))
        .collect()
}

/// The component link survives a Prosody restart mid-conversation: SIPp keeps writing to
/// alice while Prosody is down; every MESSAGE it sent is either delivered to alice once the
/// link (and her client) are back, or was answered with an error. Then alice answers in the
/// same SIP dialog.
#[test]
fn prosody_restart_mid_conversation_loses_no_message() {
    let Some(mut w) = World::new("restart", Mode::Gateway, Prosody::start) else {
        return;
    };
    let mut sipp = w.uac("r", "im_restart_uac");
    let bob = w.mode.jid("bob");
    let deadline = w.deadline;
    for _ in 0..2 {
        w.alice
            .wait_for("a message from bob before the restart", deadline, |e| {
                is_message_from(e, &bob) && e["body"].is_string()
            });
    }
    let ups = w.bridge.count("XMPP component link up");
    w.server.stop();
    w.bridge.wait_log(
        "XMPP component link down",
        1,
        deadline.min(Instant::now() + Duration::from_secs(15)),
    );
    // Prosody is down and the bridge knows it: let SIPp send at least two more.
    let before = sent_messages(&sipp::read_message_log(w.dir(), "r")).len();
    while sent_messages(&sipp::read_message_log(w.dir(), "r")).len() < before + 2 {
        if let Ok(Some(status)) = sipp.0.try_wait() {
            panic!("SIPp ended ({status}) while Prosody was down");
        }
        assert!(
            Instant::now() < deadline,
            "SIPp sent nothing while Prosody was down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent_while_down: Vec<String> = sent_messages(&sipp::read_message_log(w.dir(), "r"))
        [before..]
        .iter()
        .map(|m| lf(&body_text(m)))
        .collect();
    w.server.restart();
    w.bridge
        .wait_log("XMPP component link up", ups + 1, deadline);
    // Alice comes back only now: what the bridge held while Prosody was down has most likely
    // gone to her offline storage by then (either way it must reach her).
    w.alice
        .wait_for("alice's client losing its stream", deadline, |e| {
            e["event"] == "disconnected"
        });
    w.alice.command(json!({"op": "connect"}));
    w.alice
        .wait_for("alice online again", deadline, |e| e["event"] == "online");
    // Alice answers in the same dialog; SIPp stops writing and ends the session.
    w.alice
        .send(&bob, Some("back again"), json!({"id": "r-done"}));
    let log = w.finish(&mut sipp, "r");

    // Every MESSAGE SIPp sent got a final answer: 2xx ones must reach alice, the rest were
    // bounced to SIPp with an error.
    let mut delivered = Vec::new();
    let mut bounced = Vec::new();
    for m in sent_messages(&log) {
        let cseq = m.cseq().unwrap().0;
        let status = log
            .iter()
            .filter(|r| !r.sent && r.status().is_some_and(|s| s >= 200))
            .find(|r| r.cseq() == Some((cseq, "MESSAGE".into())))
            .and_then(LoggedMessage::status);
        match status {
            Some(200..=299) => delivered.push(lf(&body_text(m))),
            Some(_) => bounced.push(lf(&body_text(m))),
            None => panic!("MESSAGE {cseq} got no final answer"),
        }
    }
    assert!(
        sent_while_down
            .iter()
            .all(|b| delivered.contains(b) || bounced.contains(b)),
        "{sent_while_down:?}"
    );
    let missing = |alice: &mut XmppClient| -> Vec<String> {
        let got: Vec<String> = alice
            .messages_from(&bob)
            .iter()
            .filter_map(|e| e["body"].as_str().map(lf))
            .collect();
        delivered
            .iter()
            .filter(|b| !got.contains(b))
            .cloned()
            .collect()
    };
    while !missing(&mut w.alice).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lost = missing(&mut w.alice);
    assert!(
        lost.is_empty(),
        "answered 200 but never delivered: {lost:?} (sent while Prosody was down: {sent_while_down:?}; bounced: {bounced:?})"
    );
    let got: Vec<String> = w
        .alice
        .messages_from(&bob)
        .iter()
        .filter_map(|e| e["body"].as_str().map(lf))
        .collect();
    let unique: HashSet<&String> = got.iter().collect();
    if unique.len() != got.len() {
        lcs_test_support::loud(&format!(
            "restart: some messages reached alice twice: {got:?}"
        ));
    }
    let offline = w
        .alice
        .messages_from(&bob)
        .iter()
        .filter(|e| e["delay"] == true)
        .count();
    eprintln!(
        "restart: {} MESSAGEs sent, {} while Prosody was down, {} bounced, {offline} delivered \
         from offline storage",
        delivered.len() + bounced.len(),
        sent_while_down.len(),
        bounced.len()
    );
}
