//! Whole-bridge tests on a virtual clock ([`super::world`]): the routing, ordering and failure
//! rules of [`super::bridge::Bridge`] and the engines behind it, end to end between an XMPP
//! server stand-in and an LCS edge stand-in. Protocol regressions get their tests here.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::world::{World, contact_jid};
use crate::sip::message::Method;
use crate::store::{Approval, Direction, Store};

const ALICE: &str = "alice@example.org";
const BOB_AOR: &str = "sip:bob@contoso.com";
const ALICE_URI: &str = "sip:alice@example.org";

fn body_of(m: &crate::sip::message::Message) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

#[test]
fn chat_from_xmpp_opens_one_session_and_carries_every_message() {
    let mut w = World::new();
    let bob = contact_jid("bob");
    w.xmpp_sends(&format!(
        "<message from='{ALICE}/pc' to='{bob}' type='chat' id='m1'><body>hello</body></message>"
    ));
    w.xmpp_sends(&format!(
        "<message from='{ALICE}/pc' to='{bob}' type='chat' id='m2'><body>again</body></message>"
    ));
    w.settle();
    assert_eq!(w.lcs.requests(&Method::Invite).len(), 1);
    assert_eq!(w.lcs.acks.len(), 1, "the 200 to INVITE is ACKed");
    let bodies: Vec<String> = w
        .lcs
        .requests(&Method::Message)
        .into_iter()
        .map(body_of)
        .collect();
    assert_eq!(bodies, ["hello", "again"]);
    // Nothing came back to Alice as an error.
    assert!(w.xmpp.to(ALICE).iter().all(|s| !s.contains("type='error'")));

    // Idle: the session ends with a BYE.
    w.run_for(Duration::from_secs(601));
    assert_eq!(w.lcs.requests(&Method::Bye).len(), 1);
}

#[test]
fn chat_from_lcs_reaches_the_local_user() {
    let mut w = World::new();
    w.lcs_invites(BOB_AOR, ALICE_URI, "hi there");
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Invite), [200]);
    w.lcs_messages(BOB_AOR, "how are you?");
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Message), [200]);
    let got = w.xmpp.to(ALICE);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].contains("<body>hi there</body>"), "{}", got[0]);
    assert!(got[1].contains("<body>how are you?</body>"), "{}", got[1]);
    assert!(got[1].contains(&contact_jid("bob")));
}

/// Alice subscribes to Bob: SUBSCRIBE, LCS's NOTIFY, `subscribed` and Bob's presence.
fn alice_watches_bob(w: &mut World) {
    let bob = contact_jid("bob");
    w.xmpp_sends(&format!(
        "<presence from='{ALICE}' to='{bob}' type='subscribe'/>"
    ));
    w.settle();
}

#[test]
fn a_local_user_subscribes_to_an_lcs_user() {
    let mut w = World::new();
    w.lcs
        .documents
        .insert(BOB_AOR.into(), super::world::pidf(BOB_AOR, "away"));
    alice_watches_bob(&mut w);
    assert_eq!(w.lcs.requests(&Method::Subscribe).len(), 1);
    assert_eq!(w.lcs.statuses(Method::Notify), [200]);
    let got = w.xmpp.to(ALICE);
    assert_eq!(
        got.iter()
            .filter(|s| s.contains("type='subscribed'"))
            .count(),
        1,
        "{got:?}"
    );
    assert!(
        got.iter().any(|s| s.contains("<show>away</show>")),
        "{got:?}"
    );
    let stored = w
        .store
        .get_subscription(Direction::Outbound, ALICE, BOB_AOR)
        .unwrap()
        .unwrap();
    assert_eq!(stored.approval, Approval::Approved);

    // Bob's presence changes.
    w.lcs_notifies(BOB_AOR, "busy");
    w.settle();
    assert!(
        w.xmpp
            .to(ALICE)
            .last()
            .unwrap()
            .contains("<show>dnd</show>")
    );
}

/// Bob subscribes to Alice, and Alice approves: the watcher is stored as approved.
fn bob_watches_alice(w: &mut World) {
    let bob = contact_jid("bob");
    w.lcs_subscribes(BOB_AOR, ALICE_URI);
    w.settle();
    assert!(
        w.xmpp
            .to(ALICE)
            .iter()
            .any(|s| s.contains("type='subscribe'")),
        "Alice is asked"
    );
    w.xmpp_sends(&format!(
        "<presence from='{ALICE}' to='{bob}' type='subscribed'/>"
    ));
    w.xmpp_presence(&format!("{ALICE}/pc"), Some("<show>away</show>"), &[&bob]);
    w.run_for(Duration::from_secs(10));
}

fn notified_activities(w: &World) -> Vec<String> {
    w.lcs
        .requests(&Method::Notify)
        .into_iter()
        .map(body_of)
        .filter(|b| !b.is_empty())
        .collect()
}

#[test]
fn an_lcs_user_subscribes_to_a_local_user() {
    let mut w = World::new();
    bob_watches_alice(&mut w);
    let subscribe_statuses = w.lcs.statuses(Method::Subscribe);
    assert!(
        subscribe_statuses.iter().all(|s| (200..300).contains(s)),
        "{subscribe_statuses:?}"
    );
    let docs = notified_activities(&w);
    assert!(docs.last().unwrap().contains("away"), "{docs:?}");
    let stored = w
        .store
        .get_subscription(Direction::Inbound, ALICE, BOB_AOR)
        .unwrap()
        .unwrap();
    assert_eq!(stored.approval, Approval::Approved);
}

#[test]
fn a_restart_from_the_store_takes_up_both_directions() {
    let mut w = World::new();
    alice_watches_bob(&mut w);
    bob_watches_alice(&mut w);
    let subscribes = w.lcs.requests(&Method::Subscribe).len();
    let notifies = w.lcs.requests(&Method::Notify).len();

    w.restart();
    w.run_for(Duration::from_secs(30));
    // A fresh SUBSCRIBE for Bob, and Alice is not asked or told `subscribed` again.
    assert_eq!(w.lcs.requests(&Method::Subscribe).len(), subscribes + 1);
    let got = w.xmpp.to(ALICE);
    assert_eq!(
        got.iter()
            .filter(|s| s.contains("type='subscribed'"))
            .count(),
        1,
        "{got:?}"
    );
    assert_eq!(
        got.iter()
            .filter(|s| s.contains("type='subscribe'"))
            .count(),
        1,
        "{got:?}"
    );
    // Bob's watcher is told Alice's presence again (the probe's answer).
    assert!(w.lcs.requests(&Method::Notify).len() > notifies);
    assert!(notified_activities(&w).last().unwrap().contains("away"));
}

#[test]
fn chat_from_lcs_while_the_link_is_down_is_held_until_it_is_back() {
    let mut w = World::new();
    w.link_down();
    w.lcs_invites(BOB_AOR, ALICE_URI, "are you there?");
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Invite), [200], "the link queues it");
    assert!(w.xmpp.to(ALICE).is_empty());
    w.link_up();
    w.settle();
    let got = w.xmpp.to(ALICE);
    assert!(got[0].contains("<body>are you there?</body>"), "{got:?}");
}

#[test]
fn presence_missed_while_the_link_was_down_reaches_lcs_when_it_is_back() {
    let mut w = World::new();
    alice_watches_bob(&mut w);
    bob_watches_alice(&mut w);
    let bob = contact_jid("bob");
    // A second resource, below the first: the aggregate stays the first's `away`.
    w.xmpp_presence(
        &format!("{ALICE}/phone"),
        Some("<priority>-1</priority>"),
        &[&bob],
    );
    w.run_for(Duration::from_secs(10));
    assert!(notified_activities(&w).last().unwrap().contains("away"));
    w.link_down();
    w.settle();
    // Alice's away resource goes offline while the component cannot be reached: the server
    // loses it, and the phone (online) is what is left.
    w.xmpp_presence(&format!("{ALICE}/pc"), None, &[&bob]);
    w.run_for(Duration::from_secs(10));
    assert!(notified_activities(&w).last().unwrap().contains("away"));
    w.link_up();
    w.run_for(Duration::from_secs(10));
    let last = notified_activities(&w).last().cloned().unwrap();
    assert!(!last.contains("away") && last.contains("open"), "{last}");
    // Alice's server may have lost Bob's presence too: it is sent again, with the gateway's.
    let got = w.xmpp.to(ALICE);
    let from_bob = |s: &&String| s.contains(&format!("from='{bob}'")) && !s.contains("type=");
    assert_eq!(got.iter().filter(from_bob).count(), 2, "{got:?}");
    assert!(got.last().unwrap().contains(&bob), "{got:?}");
}

#[test]
fn a_local_user_gone_offline_while_the_link_was_down_is_closed_for_lcs() {
    let mut w = World::new();
    bob_watches_alice(&mut w);
    w.link_down();
    w.settle();
    w.xmpp_presence(&format!("{ALICE}/pc"), None, &[&contact_jid("bob")]);
    w.link_up();
    w.run_for(Duration::from_secs(10));
    let last = notified_activities(&w).last().cloned().unwrap();
    assert!(last.contains("<basic>closed</basic>"), "{last}");
}

#[test]
fn a_watcher_of_a_user_with_no_account_is_ended_when_the_server_says_so() {
    let mut w = World::new();
    w.xmpp.no_account.insert("nobody@example.org".into());
    w.lcs_subscribes(BOB_AOR, "sip:nobody@example.org");
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Subscribe), [202]);
    let states: Vec<String> = w
        .lcs
        .requests(&Method::Notify)
        .iter()
        .filter_map(|n| n.header("Subscription-State").map(str::to_owned))
        .collect();
    assert_eq!(
        states.last().map(String::as_str),
        Some("terminated;reason=noresource")
    );
    assert!(
        w.store
            .get_subscription(Direction::Inbound, "nobody@example.org", BOB_AOR)
            .unwrap()
            .is_none()
    );
    // A passing error (type='wait') ends nothing.
    w.lcs_subscribes(BOB_AOR, ALICE_URI);
    w.settle();
    w.xmpp_sends(&format!(
        "<presence from='{ALICE}' to='{}' type='error'><error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
        contact_jid("bob")
    ));
    w.settle();
    assert!(
        w.store
            .get_subscription(Direction::Inbound, ALICE, BOB_AOR)
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_store_failure_turns_the_acknowledgement_into_500() {
    let mut w = World::new();
    w.store.set_fail_writes(true);
    w.lcs_subscribes(BOB_AOR, ALICE_URI);
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Subscribe), [500]);
    let (_, r) = w.lcs.answers.last().unwrap();
    assert_eq!(r.reason(), Some("Server Internal Error: state not saved"));
}

#[test]
fn a_full_link_turns_the_200_into_503_with_retry_after() {
    let mut w = World::new();
    w.lcs_invites(BOB_AOR, ALICE_URI, "first");
    w.settle();
    w.xmpp.refuse = true;
    w.lcs_messages(BOB_AOR, "lost?");
    w.settle();
    let (_, r) = w.lcs.answers.last().unwrap();
    assert_eq!(r.status(), Some(503));
    assert_eq!(
        r.reason(),
        Some("Service Unavailable: XMPP server unreachable")
    );
    assert_eq!(r.header("Retry-After"), Some("5"));
}

#[test]
fn the_component_answers_disco_and_drops_results() {
    let mut w = World::new();
    w.xmpp_sends(&format!(
        "<iq from='{ALICE}/pc' to='lcs.example.org' type='get' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    ));
    w.xmpp_sends(&format!(
        "<iq from='{ALICE}/pc' to='lcs.example.org' type='result' id='d2'/>"
    ));
    w.settle();
    let got = w.xmpp.to(ALICE);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("type='result'") && got[0].contains("id='d1'"));
}

/// The last document each LCS user got in a NOTIFY about Alice, by AOR.
fn last_document(w: &World, aor: &str) -> String {
    w.lcs
        .requests(&Method::Notify)
        .into_iter()
        .filter(|n| n.to().is_ok_and(|t| t.uri == aor))
        .map(body_of)
        .rfind(|b| !b.is_empty())
        .unwrap_or_default()
}

const CAROL_AOR: &str = "sip:carol@contoso.com";

/// Bob and Carol watch Alice, who approves both; she comes online (away), broadcast.
fn bob_and_carol_watch_alice(w: &mut World) {
    for (aor, user) in [(BOB_AOR, "bob"), (CAROL_AOR, "carol")] {
        w.lcs_subscribes(aor, ALICE_URI);
        w.settle();
        w.xmpp_sends(&format!(
            "<presence from='{ALICE}' to='{}' type='subscribed'/>",
            contact_jid(user)
        ));
    }
    w.xmpp_broadcast(&format!("{ALICE}/pc"), Some("<show>away</show>"));
    w.run_for(Duration::from_secs(10));
    for aor in [BOB_AOR, CAROL_AOR] {
        assert!(last_document(w, aor).contains(">away<"), "{aor}");
    }
}

/// Each LCS watcher sees what the XMPP server addressed to it: directed unavailable, blocking
/// and invisibility reach only the watchers they are meant for, a restart's probes are
/// answered per watcher (none for a blocked one), and an unblocked one sees Alice again.
#[test]
fn each_lcs_watcher_sees_what_the_server_addressed_to_it() {
    let mut w = World::new();
    bob_and_carol_watch_alice(&mut w);
    let (bob, carol) = (contact_jid("bob"), contact_jid("carol"));
    let pc = format!("{ALICE}/pc");
    let open = |doc: String| doc.contains("<basic>open</basic>");
    // Directed unavailable to Bob (RFC 6121 §4.6): Bob alone sees her offline.
    w.xmpp_directed(&pc, &bob, None);
    w.run_for(Duration::from_secs(10));
    assert!(!open(last_document(&w, BOB_AOR)));
    assert!(last_document(&w, CAROL_AOR).contains(">away<"));
    // Her next broadcast reaches both.
    w.xmpp_broadcast(&pc, Some("<show>dnd</show>"));
    w.run_for(Duration::from_secs(10));
    for aor in [BOB_AOR, CAROL_AOR] {
        assert!(last_document(&w, aor).contains(">busy<"), "{aor}");
    }
    // She blocks Carol (XEP-0191): Carol sees her offline, Bob still busy, then online.
    w.xmpp_block(ALICE, &carol);
    w.run_for(Duration::from_secs(10));
    assert!(!open(last_document(&w, CAROL_AOR)));
    assert!(last_document(&w, BOB_AOR).contains(">busy<"));
    w.xmpp_broadcast(&pc, Some(""));
    w.run_for(Duration::from_secs(10));
    let bob_doc = last_document(&w, BOB_AOR);
    assert!(
        open(bob_doc.clone()) && !bob_doc.contains("busy"),
        "{bob_doc}"
    );
    assert!(!open(last_document(&w, CAROL_AOR)));
    // A restart: each watcher's probe is answered with what it may see (Carol's not at all).
    let notifies = w.lcs.requests(&Method::Notify).len();
    w.restart();
    w.run_for(Duration::from_secs(30));
    assert!(w.lcs.requests(&Method::Notify).len() >= notifies + 2);
    assert!(open(last_document(&w, BOB_AOR)));
    assert!(!open(last_document(&w, CAROL_AOR)));
    // Unblocked: Carol sees her again.
    w.xmpp_unblock(ALICE, &carol);
    w.run_for(Duration::from_secs(10));
    assert!(open(last_document(&w, CAROL_AOR)));
    // Invisible (XEP-0186), then directed presence to Carol alone.
    w.xmpp_invisible(&pc, true);
    w.run_for(Duration::from_secs(10));
    assert!(!open(last_document(&w, BOB_AOR)));
    assert!(!open(last_document(&w, CAROL_AOR)));
    w.xmpp_directed(&pc, &carol, Some("<show>chat</show>"));
    w.run_for(Duration::from_secs(10));
    assert!(open(last_document(&w, CAROL_AOR)));
    assert!(!open(last_document(&w, BOB_AOR)));
    // Visible again: both.
    w.xmpp_invisible(&pc, false);
    w.run_for(Duration::from_secs(10));
    assert!(open(last_document(&w, BOB_AOR)));
    assert!(open(last_document(&w, CAROL_AOR)));
}
