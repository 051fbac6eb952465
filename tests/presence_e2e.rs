//! End-to-end presence through the real `lcs-bridge` binary, with real peers on both sides
//! (the world of tests/im_e2e.rs, `common::e2e`): Prosody with the bridge as its component in
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

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::Prosody;
use common::e2e::{HEAD, Mode, TAIL, World, bare, body_text, requests};
use common::sipp::{self, LoggedMessage};

/// NOTIFYs to LCS at most once a second (the smallest interval), so a change shows quickly.
const PRESENCE_CONFIG: &str = "\n[presence]\nnotify_min_interval_secs = 1\n";

fn world(name: &'static str) -> Option<World<Prosody>> {
    World::with_config(name, Mode::Gateway, PRESENCE_CONFIG, Prosody::start)
}

fn is_presence_from(event: &Value, from: &str) -> bool {
    event["event"] == "presence" && event["from"].as_str().is_some_and(|f| bare(f) == from)
}

/// The PIDF documents SIPp sends, one line per element (SIPp strips the indentation of the
/// scenario's lines; blank lines would end the body early).
fn pidf_lines(xml: &str) -> String {
    xml.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("      {l}\n"))
        .collect()
}

fn golden_pidf(name: &str) -> String {
    let path = common::e2e::repo().join(format!("tests/golden/pidf/{name}.xml"));
    std::fs::read_to_string(path)
        .unwrap()
        // The notifier speaks for the presentity it was asked about.
        .replace("sip:joe@contoso.com", "sip:bob@contoso.com")
        .replace("pres:someone@example.com", "pres:bob@contoso.com")
}

/// Profile-style document (tuple status with `ep:activities`) for the BENOTIFY.
const PIDF_ONLINE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:ep="urn:ietf:params:xml:ns:pidf:status:rpid-status" entity="sip:bob@contoso.com">
<tuple id="0">
<status>
<basic>open</basic>
</status>
</tuple>
</presence>"#;

/// A NOTIFY (or BENOTIFY) from SIPp the notifier (UAS of the SUBSCRIBE): to the subscriber's
/// Contact `$contact`, From its To with our tag, To its From (`$from`, with its tag).
fn uas_notify(method: &str, cseq: u32, state: &str, pidf: &str) -> String {
    format!(
        r#"  <send>
    <![CDATA[
      {method} [$contact] SIP/2.0
      Via: SIP/2.0/TLS [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: [$to];tag=[pid]lcs[call_number]
      To: [$from]
      [last_Call-ID:]
      CSeq: {cseq} {method}
      Contact: <sip:bob@[local_ip]:[local_port];transport=tls>
      Event: presence
      Subscription-State: {state}
      Content-Type: application/pidf+xml
      Content-Length: [len]

{body}    ]]>
  </send>
"#,
        body = pidf_lines(pidf)
    )
}

/// SIPp UAS: a fresh SUBSCRIBE from alice to bob (`Event: presence`, PIDF `Accept`, non-zero
/// `Expires`), answered 202 with SIPp's To tag; `$from`, `$to` and `$contact` kept for the
/// NOTIFYs of [`uas_notify`].
const UAS_ACCEPT: &str = r#"  <recv request="SUBSCRIBE">
    <action>
      <ereg regexp="^ *presence" search_in="hdr" header="Event:" check_it="true" assign_to="ev"/>
      <ereg regexp="application/pidf\+xml" search_in="hdr" header="Accept:" check_it="true" assign_to="acc"/>
      <ereg regexp="[1-9][0-9]*" search_in="hdr" header="Expires:" check_it="true" assign_to="exp"/>
      <ereg regexp="sip:alice@xmpp\.test" search_in="hdr" header="From:" check_it="true" assign_to="f"/>
      <ereg regexp="sip:bob@contoso\.com" search_in="hdr" header="To:" check_it="true" assign_to="t"/>
      <ereg regexp="&lt;sip:[^&gt;]*&gt;[^ ]*" search_in="hdr" header="From:" check_it="true" assign_to="from"/>
      <ereg regexp="&lt;sip:[^&gt;]*&gt;" search_in="hdr" header="To:" check_it="true" assign_to="to"/>
      <ereg regexp="sip:[^&gt;]*" search_in="hdr" header="Contact:" check_it="true" assign_to="contact"/>
    </action>
  </recv>
  <Reference variables="ev,acc,exp,f,t"/>
  <send>
    <![CDATA[
      SIP/2.0 202 Accepted
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]lcs[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:bob@[local_ip]:[local_port];transport=tls>
      Expires: 3600
      Content-Length: 0

    ]]>
  </send>
"#;

/// Answers 200 to the request SIPp just received.
const OK: &str = common::e2e::OK;

fn wait_sipp_log(
    w: &World<Prosody>,
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

/// (1) alice watches bob.
#[test]
fn xmpp_user_watches_lcs_user() {
    let Some(mut w) = world("(1) alice watches bob") else {
        return;
    };
    let profile = golden_pidf("profile-example");
    let person = golden_pidf("rfc4480-person");
    let scenario = [
        HEAD,
        UAS_ACCEPT,
        &uas_notify("NOTIFY", 1, "active;expires=3600", &profile),
        "  <recv response=\"200\"/>\n",
        &uas_notify("NOTIFY", 2, "active;expires=3590", &person),
        "  <recv response=\"200\"/>\n",
        &uas_notify("BENOTIFY", 3, "active;expires=3580", PIDF_ONLINE),
        r#"  <recv request="SUBSCRIBE">
    <action>
      <ereg regexp="^ *0" search_in="hdr" header="Expires:" check_it="true" assign_to="exp0"/>
    </action>
  </recv>
  <Reference variables="exp0"/>
"#,
        OK,
        TAIL,
    ]
    .concat();
    let mut run = w.uas("p1", &scenario);
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

/// SIPp UAC: SUBSCRIBE for alice from `user`@contoso.com; 202 (To tag kept, Contact as the
/// next URL); NOTIFY `pending`, 200.
fn uac_subscribe(user: &str) -> String {
    format!(
        r#"  <send>
    <![CDATA[
      SUBSCRIBE sip:alice@xmpp.test SIP/2.0
      Via: SIP/2.0/TLS [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: "{display}" <sip:{user}@contoso.com>;tag=[call_number]
      To: <sip:alice@xmpp.test>
      Call-ID: [call_id]
      CSeq: 1 SUBSCRIBE
      Contact: <sip:{user}@[local_ip]:[local_port];transport=tls>
      Event: presence
      Accept: application/pidf+xml
      Supported: ms-benotify
      Expires: 3600
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="202" rrs="true">
    <action>
      <ereg regexp=";tag=[^;&gt; ]+" search_in="hdr" header="To:" check_it="true" assign_to="totag"/>
    </action>
  </recv>
  <recv request="NOTIFY">
    <action>
      <ereg regexp="^ *pending" search_in="hdr" header="Subscription-State:" check_it="true" assign_to="pending"/>
    </action>
  </recv>
  <Reference variables="pending"/>
"#,
        display = user[..1].to_uppercase() + &user[1..],
    ) + OK
}

/// SIPp UAC: in-dialog SUBSCRIBE `Expires: 0` from bob; the 200 and NOTIFY `terminated`.
const UAC_UNSUBSCRIBE: &str = r#"  <send>
    <![CDATA[
      SUBSCRIBE [next_url] SIP/2.0
      Via: SIP/2.0/TLS [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: "Bob" <sip:bob@contoso.com>;tag=[call_number]
      To: <sip:alice@xmpp.test>[$totag]
      Call-ID: [call_id]
      CSeq: 2 SUBSCRIBE
      Contact: <sip:bob@[local_ip]:[local_port];transport=tls>
      Event: presence
      Accept: application/pidf+xml
      Expires: 0
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200"/>
  <recv request="NOTIFY">
    <action>
      <ereg regexp="^ *terminated" search_in="hdr" header="Subscription-State:" check_it="true" assign_to="term"/>
    </action>
  </recv>
  <Reference variables="term"/>
"#;

/// NOTIFYs answered 200 until one whose body matches `regexp` (then on to the next element).
fn uac_notifies_until(label: &str, regexp: &str) -> String {
    format!(
        r#"  <label id="{label}"/>
  <recv request="NOTIFY">
    <action>
      <ereg regexp="{regexp}" search_in="body" check_it="false" assign_to="{label}_hit"/>
    </action>
  </recv>
  <send next="{label}_done" test="{label}_hit">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <nop next="{label}"/>
  <label id="{label}_done"/>
"#
    )
}

/// Alice gets bob's `subscribe` (with his display name as nick) and approves; waits until
/// SIPp run `name` got the `active` NOTIFY with `<basic>open</basic>` and checks its document.
fn approve_and_wait_open(w: &mut World<Prosody>, name: &str) {
    let bob = w.mode.jid("bob");
    let deadline = w.deadline;
    let sub = w.alice.wait_for("subscribe from bob", deadline, |e| {
        is_presence_from(e, &bob) && e["type"] == "subscribe"
    });
    assert_eq!(sub["nick"], "Bob", "{sub}");
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

/// (2) bob watches alice.
#[test]
fn lcs_user_watches_xmpp_user() {
    let Some(mut w) = world("(2) bob watches alice") else {
        return;
    };
    let rest = [
        &uac_notifies_until("busy", "busy") as &str,
        UAC_UNSUBSCRIBE,
        OK,
    ]
    .concat();
    let scenario = [
        HEAD,
        &uac_subscribe("bob"),
        &uac_notifies_until("open", "&lt;basic&gt;open&lt;/basic&gt;"),
        &rest,
        TAIL,
    ]
    .concat();
    let mut run = w.uac("p2", &scenario);
    approve_and_wait_open(&mut w, "p2");
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

/// (3) carol subscribes, alice refuses.
#[test]
fn xmpp_user_refuses_lcs_watcher() {
    let Some(mut w) = world("(3) alice refuses carol") else {
        return;
    };
    let scenario = [
        HEAD,
        &uac_subscribe("carol"),
        r#"  <recv request="NOTIFY">
    <action>
      <ereg regexp="^ *terminated *; *reason=rejected" search_in="hdr" header="Subscription-State:" check_it="true" assign_to="rej"/>
    </action>
  </recv>
  <Reference variables="rej,totag"/>
"#,
        OK,
        TAIL,
    ]
    .concat();
    let mut run = w.uac("p3", &scenario);
    let carol = w.mode.jid("carol");
    let deadline = w.deadline;
    w.alice.wait_for("subscribe from carol", deadline, |e| {
        is_presence_from(e, &carol) && e["type"] == "subscribe"
    });
    w.alice
        .command(json!({"op": "presence", "to": carol, "type": "unsubscribed"}));
    w.finish(&mut run, "p3");
}

/// (4) bob's active subscription survives a bridge restart: SIGTERM, the same store; alice's
/// next change reaches SIPp as a NOTIFY in the same dialog (same Call-ID and tags), with no
/// new SUBSCRIBE; then bob unsubscribes in that dialog. SIPp (one TCP socket per call) keeps
/// its connection through `sticky_relay`, which opens a new TLS connection to the restarted
/// bridge; the bridge sends the stored dialog's NOTIFYs by domain, reusing that connection.
#[test]
fn lcs_watcher_survives_bridge_restart() {
    let Some(mut w) = world("(4) restart") else {
        return;
    };
    let scenario = [
        HEAD,
        &uac_subscribe("bob"),
        &uac_notifies_until("open", "&lt;basic&gt;open&lt;/basic&gt;"),
        &uac_notifies_until("away", "away"),
        UAC_UNSUBSCRIBE,
        OK,
        TAIL,
    ]
    .concat();
    // SIPp's connection to the bridge is replaced under it (an LCS edge reconnecting).
    let mut run = w.uac_with("p4", &scenario, true);
    approve_and_wait_open(&mut w, "p4");
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

/// Several tuples, an RFC 4480 `<person>` with another activity and a `<device>`, as LCS and
/// OCS put them on the wire: only the first tuple counts (busy, "In a call").
const PIDF_SEVERAL_TUPLES: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:ep="urn:ietf:params:xml:ns:pidf:status:rpid-status" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" xmlns:ci="urn:ietf:params:xml:ns:pidf:cipid" entity="sip:bob@contoso.com">
<tuple id="0">
<status>
<basic>open</basic>
<ep:activities>
<ep:activity>busy</ep:activity>
</ep:activities>
</status>
<note>In a call</note>
</tuple>
<tuple id="1">
<status>
<basic>closed</basic>
</status>
<note>second tuple, never read</note>
</tuple>
<tuple id="2">
<status>
<basic>open</basic>
<ep:activities>
<ep:activity>away</ep:activity>
</ep:activities>
</status>
</tuple>
<dm:person id="p0">
<rpid:activities>
<rpid:vacation/>
</rpid:activities>
</dm:person>
<dm:device id="d0">
<dm:deviceID>urn:uuid:3f0a9e5c-2b1d-4c1e-9a8e-0f6b2d1c7e55</dm:deviceID>
</dm:device>
<ci:display-name>Bob Builder</ci:display-name>
</presence>"#;

/// SIPp actions that set `c2`…`cN` true for the call with that `[call_number]`, for
/// [`per_call`] (call 1 is the one with none set).
fn call_number_flags(n: u32) -> String {
    let tests: String = (2..=n)
        .map(|k| {
            format!(
                "      <test assign_to=\"c{k}\" variable=\"n\" compare=\"equal\" value=\"{k}\"/>\n"
            )
        })
        .collect();
    format!(
        "  <nop>\n    <action>\n      <assignstr assign_to=\"ns\" value=\"[call_number]\"/>\n      \
         <todouble assign_to=\"n\" variable=\"ns\"/>\n{tests}    </action>\n  </nop>\n"
    )
}

/// One of `branches` per call: call K runs `branches[K-1]` (flags from [`call_number_flags`]).
/// Plain jumps, not SIPp's `condexec`: a skipped element costs SIPp a scheduling round, and a
/// response arriving then is "unexpected". Each branch should end on a `<recv>`, so that
/// nothing is in flight at the jumps.
fn per_call(id: &str, branches: &[String]) -> String {
    let mut xml: String = (2..=branches.len())
        .map(|k| format!("  <nop next=\"{id}{k}\" test=\"c{k}\"/>\n"))
        .collect();
    for (k, branch) in branches.iter().enumerate() {
        if k > 0 {
            xml += &format!("  <label id=\"{id}{}\"/>\n", k + 1);
        }
        xml += branch;
        xml += &format!("  <nop next=\"{id}_end\"/>\n");
    }
    xml + &format!("  <label id=\"{id}_end\"/>\n")
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

fn count_presence(w: &mut World<Prosody>, from: &str, kind: &str) -> usize {
    w.alice.drain();
    w.alice
        .seen
        .iter()
        .filter(|e| is_presence_from(e, from) && e["type"] == kind)
        .count()
}

/// (5) alice watches bob, and bob's side ends the subscription with each reason in turn
/// (RFC 6665 §4.1.3, docs/mapping.md §5), each in a fresh dialog (one SIPp call each):
/// `deactivated` → a new SUBSCRIBE at once; `probation;retry-after=1` → a new SUBSCRIBE after a
/// second, `unavailable` meanwhile; `timeout` → at once again (the `active` in between reset
/// the backoff); `rejected` → `unsubscribed`, and nothing more. The first `active` NOTIFY
/// carries several tuples, a person and a device: only the first tuple is shown. alice sees
/// `subscribed` once for the whole run.
#[test]
fn lcs_side_terminates_with_each_reason() {
    let Some(mut w) = world("(5) terminated reasons") else {
        return;
    };
    let reasons = [
        "deactivated",
        "probation;retry-after=1",
        "timeout",
        "rejected",
    ];
    let answered = |xml: String| xml + "  <recv response=\"200\"/>\n";
    let active: Vec<String> = (1..=4)
        .map(|k| {
            let doc = if k == 1 {
                PIDF_SEVERAL_TUPLES
            } else {
                PIDF_ONLINE
            };
            answered(uas_notify("NOTIFY", 1, "active;expires=3600", doc))
        })
        .collect();
    let terminated: Vec<String> = reasons
        .iter()
        .map(|r| {
            answered(uas_notify(
                "NOTIFY",
                2,
                &format!("terminated;reason={r}"),
                "",
            ))
        })
        .collect();
    let scenario = [
        HEAD,
        UAS_ACCEPT,
        &call_number_flags(4),
        &per_call("active", &active),
        &per_call("term", &terminated),
        TAIL,
    ]
    .concat();
    let mut run = w.uas_calls("p5", &scenario, 4);
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
        count_presence(&mut w, &bob, "subscribed"),
        1,
        "`subscribed` once"
    );
    assert_eq!(count_presence(&mut w, &bob, "unsubscribed"), 1);
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

/// (6) `terminated;reason=noresource`: RFC 6665 says not to subscribe again soon; the bridge
/// shows bob `unavailable`, keeps alice's subscription (no `unsubscribed`) and sends no new
/// SUBSCRIBE within the next seconds (it retries after the longest delay, 30 min).
#[test]
fn lcs_side_terminates_noresource() {
    let Some(mut w) = world("(6) noresource") else {
        return;
    };
    let scenario = [
        HEAD,
        UAS_ACCEPT,
        &uas_notify("NOTIFY", 1, "active;expires=3600", PIDF_ONLINE),
        "  <recv response=\"200\"/>\n",
        &uas_notify("NOTIFY", 2, "terminated;reason=noresource", ""),
        "  <recv response=\"200\"/>\n",
        TAIL,
    ]
    .concat();
    // Two calls: a second SUBSCRIBE would be taken; none must come.
    let mut run = w.uas_calls("p6", &scenario, 2);
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
    assert_eq!(count_presence(&mut w, &bob, "unsubscribed"), 0);
    assert_eq!(count_presence(&mut w, &bob, "subscribed"), 1);
    drop(run.0.kill());
}

/// (7) alice's subscription to bob survives a bridge restart: the restarted bridge subscribes
/// again by itself (a fresh dialog, RFC 6665 gives no way to resume the old one without its
/// state on both sides), alice sees bob's new presence and no second `subscribed`.
#[test]
fn xmpp_watcher_survives_bridge_restart() {
    let Some(mut w) = world("(7) outbound restart") else {
        return;
    };
    let pidf_away = PIDF_ONLINE.replace(
        "<basic>open</basic>",
        "<basic>open</basic>\n<ep:activities>\n<ep:activity>away</ep:activity>\n</ep:activities>",
    );
    let scenario = [
        HEAD,
        UAS_ACCEPT,
        &call_number_flags(2),
        &per_call(
            "active",
            &[PIDF_ONLINE, &pidf_away].map(|doc| {
                uas_notify("NOTIFY", 1, "active;expires=3600", doc) + "  <recv response=\"200\"/>\n"
            }),
        ),
        TAIL,
    ]
    .concat();
    let mut run = w.uas_calls("p7", &scenario, 2);
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
        count_presence(&mut w, &bob, "subscribed"),
        1,
        "`subscribed` once"
    );
    assert_eq!(count_presence(&mut w, &bob, "unsubscribed"), 0);
}
