//! Whole-bridge tests on a virtual clock ([`super::world`]): the routing, ordering and failure
//! rules of [`super::bridge::Bridge`] and the engines behind it, end to end between an XMPP
//! server stand-in and an LCS edge stand-in. Protocol regressions get their tests here.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
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

/// Skype for Business ends an IM session after about 10 idle minutes with BYE (a server
/// behaviour no open specification fixes; RFC 3261 §15 lets either side end it). Whoever
/// speaks next starts a fresh session: an XMPP message opens a new INVITE (new Call-ID, new
/// `Ms-Conversation-ID`) and is delivered, nothing bounces; LCS's own next INVITE carrying its
/// first message in `ms-text-format` is delivered once.
#[test]
fn after_an_idle_bye_from_skype_for_business_the_next_message_opens_a_fresh_session() {
    let mut w = World::new();
    let bob = contact_jid("bob");
    w.xmpp_sends(&format!(
        "<message from='{ALICE}/pc' to='{bob}' type='chat' id='m1'><body>hello</body></message>"
    ));
    w.settle();
    w.lcs_replies(BOB_AOR, "hi");
    w.settle();
    // Nine minutes and a half later (before the bridge's own idle timer) SfB says BYE.
    w.run_for(Duration::from_secs(570));
    assert!(w.lcs.requests(&Method::Bye).is_empty());
    w.lcs_ends_session(BOB_AOR, "INVITE-out");
    w.settle();
    let byes: Vec<u16> = w
        .lcs
        .answers
        .iter()
        .filter(|(_, r)| r.cseq().is_ok_and(|c| c.method == Method::Bye))
        .filter_map(|(_, r)| r.status())
        .collect();
    assert_eq!(byes, [200]);
    w.xmpp_sends(&format!(
        "<message from='{ALICE}/pc' to='{bob}' type='chat' id='m2'><body>still there?</body></message>"
    ));
    w.settle();
    let invites = w.lcs.requests(&Method::Invite);
    assert_eq!(invites.len(), 2, "a fresh INVITE");
    assert_ne!(invites[0].call_id().unwrap(), invites[1].call_id().unwrap());
    assert_ne!(
        invites[0].header("Ms-Conversation-ID"),
        invites[1].header("Ms-Conversation-ID")
    );
    let messages = w.lcs.requests(&Method::Message);
    assert_eq!(messages.len(), 2);
    assert_eq!(body_of(messages[1]), "still there?");
    assert_eq!(
        messages[1].call_id().unwrap(),
        invites[1].call_id().unwrap()
    );
    let replied: Vec<u16> = w
        .lcs
        .replied
        .iter()
        .filter(|(m, _)| *m == Method::Message)
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(replied, [200, 200], "both delivered");
    assert!(w.xmpp.to(ALICE).iter().all(|s| !s.contains("type='error'")));

    // The same with the session LCS opened, and LCS speaking next.
    w.lcs_invites(BOB_AOR, ALICE_URI, "first");
    w.settle();
    w.run_for(Duration::from_secs(100));
    w.lcs_ends_session(BOB_AOR, "INVITE");
    w.settle();
    w.lcs_invites(BOB_AOR, ALICE_URI, "back again");
    w.settle();
    let got: Vec<String> = w
        .xmpp
        .to(ALICE)
        .into_iter()
        .filter(|s| s.contains("<body>"))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[1].contains("<body>first</body>"), "{}", got[1]);
    assert!(got[2].contains("<body>back again</body>"), "{}", got[2]);
    assert!(got.iter().all(|s| !s.contains("type='error'")));
}

/// The profile's connection affinity: a chat session's dialog never moves to another
/// connection. The edge's connection breaks: the session ends on the bridge's side (no BYE,
/// the record removed), Alice's next message opens a new INVITE session and is delivered, and
/// LCS's MESSAGE in the old dialog gets 481.
#[test]
fn a_lost_sip_connection_ends_its_chat_sessions_and_the_next_message_opens_a_new_one() {
    let mut w = World::new();
    let bob = contact_jid("bob");
    w.xmpp_sends(&format!(
        "<message from='{ALICE}/pc' to='{bob}' type='chat' id='m1'><body>hello</body></message>"
    ));
    w.settle();
    w.lcs_invites("sip:carol@contoso.com", ALICE_URI, "hi");
    w.settle();
    assert_eq!(w.store.im_dialogs().count(), 2);
    let invites = w.lcs.requests(&Method::Invite).len();
    w.lcs_connection_lost();
    w.settle();
    assert!(w.lcs.requests(&Method::Bye).is_empty(), "no BYE anywhere");
    assert_eq!(w.store.im_dialogs().count(), 0, "records removed");
    w.xmpp_sends(&format!(
        "<message from='{ALICE}/pc' to='{bob}' type='chat' id='m2'><body>again</body></message>"
    ));
    w.settle();
    let all = w.lcs.requests(&Method::Invite);
    assert_eq!(all.len(), invites + 1, "a new INVITE");
    assert_ne!(all[0].call_id().unwrap(), all[invites].call_id().unwrap());
    let messages = w.lcs.requests(&Method::Message);
    let last = messages.last().unwrap();
    assert_eq!(body_of(last), "again");
    assert_eq!(last.call_id().unwrap(), all[invites].call_id().unwrap());
    assert!(w.xmpp.to(ALICE).iter().all(|s| !s.contains("type='error'")));
    // Carol's side still writes in the dialog the lost connection carried: 481.
    w.lcs_messages_in_lost("sip:carol@contoso.com", "late");
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Message).last(), Some(&481));
    assert!(!w.xmpp.to(ALICE).iter().any(|s| s.contains("late")));
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

/// What the runner samples into the subscription and session gauges follows the engines: a
/// watcher asked, then approved; a subscription pending, then active; a chat open, then ended.
#[test]
fn the_census_counts_subscriptions_by_state_and_open_sessions() {
    use super::Census;
    let mut w = World::new();
    assert_eq!(w.bridge.census(), Census::default());
    w.lcs_subscribes(BOB_AOR, ALICE_URI);
    w.settle();
    assert_eq!(w.bridge.census().inbound, [0, 1, 0, 0], "Alice is asked");
    let bob = contact_jid("bob");
    w.xmpp_sends(&format!(
        "<presence from='{ALICE}' to='{bob}' type='subscribed'/>"
    ));
    w.settle();
    assert_eq!(w.bridge.census().inbound, [0, 0, 1, 0], "approved");

    // Alice subscribes to Bob: pending until the edge's NOTIFY says active.
    w.xmpp_sends(&format!(
        "<presence from='{ALICE}' to='{bob}' type='subscribe'/>"
    ));
    w.run_for(Duration::from_millis(30)); // the stanza in (20 ms), no NOTIFY yet
    assert_eq!(w.bridge.census().outbound, [1, 0]);
    w.settle();
    assert_eq!(
        w.bridge.census().outbound,
        [0, 1],
        "Bob's NOTIFY said active"
    );

    assert_eq!(w.bridge.census().im_sessions, 0);
    w.lcs_invites(BOB_AOR, ALICE_URI, "hi");
    w.settle();
    assert_eq!(w.bridge.census().im_sessions, 1);
    w.lcs_ends_session(BOB_AOR, "INVITE");
    w.settle();
    assert_eq!(
        w.bridge.census(),
        Census {
            outbound: [0, 1],
            inbound: [0, 0, 1, 0],
            im_sessions: 0,
        }
    );
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

/// A write the store did not keep (the database away, a disk error): the acknowledgement
/// becomes `503` with `Retry-After`, so the partner repeats the request once the store is
/// back; nothing is acknowledged that was not written.
#[test]
fn a_store_failure_turns_the_acknowledgement_into_503_with_retry_after() {
    let mut w = World::new();
    w.store.set_fail_writes(true);
    w.lcs_subscribes(BOB_AOR, ALICE_URI);
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Subscribe), [503]);
    let (_, r) = w.lcs.answers.last().unwrap();
    assert_eq!(r.reason(), Some("Service Unavailable: state not saved"));
    assert_eq!(r.header("Retry-After"), Some("5"));
    // The store back: the partner's retry is served and kept.
    w.store.set_fail_writes(false);
    w.lcs_subscribes(BOB_AOR, ALICE_URI);
    w.settle();
    assert_ne!(w.lcs.statuses(Method::Subscribe).last(), Some(&503));
    assert!(
        w.store
            .get_subscription(Direction::Inbound, ALICE, BOB_AOR)
            .unwrap()
            .is_some()
    );
}

/// Under a leader lease, past its local deadline (a lease not renewed, a process woken from
/// SIGSTOP): a new SIP request is answered `503` with `Retry-After` and writes nothing, a
/// message from the XMPP side comes back `service-unavailable`, the engines' timers wait. A
/// renewed lease serves again.
#[test]
fn past_the_lease_deadline_nothing_is_served_until_the_lease_is_renewed() {
    let mut w = World::new();
    w.bridge
        .set_serving_until(Some(w.now + Duration::from_secs(5)));
    w.run_for(Duration::from_secs(6));
    assert!(!w.bridge.serving(w.now));
    assert_eq!(w.bridge.poll_timeout(), None, "timers wait");
    w.lcs_subscribes(BOB_AOR, ALICE_URI);
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Subscribe), [503]);
    let (_, r) = w.lcs.answers.last().unwrap();
    assert_eq!(
        r.reason(),
        Some("Service Unavailable: this bridge does not hold the lease")
    );
    assert_eq!(r.header("Retry-After"), Some("2"));
    assert_eq!(w.store.stats().unwrap().total_subscriptions(), 0);
    let bob = contact_jid("bob");
    w.xmpp_sends(&format!(
        "<message from='{ALICE}/pc' to='{bob}' type='chat' id='m1'><body>hello</body></message>"
    ));
    w.settle();
    assert!(w.lcs.requests(&Method::Invite).is_empty());
    let back = w.xmpp.delivered.last().unwrap();
    assert_eq!(back.attr("type"), Some("error"));
    assert!(String::from(back).contains("service-unavailable"));
    // Renewed: served again.
    w.bridge
        .set_serving_until(Some(w.now + Duration::from_secs(5)));
    assert!(w.bridge.serving(w.now));
    w.lcs_subscribes(BOB_AOR, ALICE_URI);
    w.settle();
    assert_ne!(w.lcs.statuses(Method::Subscribe).last(), Some(&503));
    assert!(
        w.store
            .get_subscription(Direction::Inbound, ALICE, BOB_AOR)
            .unwrap()
            .is_some()
    );
    // The lease lost: nothing again.
    w.bridge.set_serving_until(None);
    w.lcs_subscribes("sip:carol@contoso.com", ALICE_URI);
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Subscribe).last(), Some(&503));
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

/// The states in the `Subscription-State` headers and the basic/activity of the documents of
/// the NOTIFYs the bridge sent from index `from` on.
fn notifies_since(w: &World, from: usize) -> Vec<String> {
    w.lcs.requests(&Method::Notify)[from..]
        .iter()
        .map(|n| body_of(n))
        .collect()
}

#[test]
fn the_first_link_up_sends_nothing_again() {
    let mut w = World::new();
    bob_watches_alice(&mut w);
    alice_watches_bob(&mut w);
    let (stanzas, requests) = (w.xmpp.delivered.len(), w.lcs.received.len());
    // The first Up of a stream (no Down before it): nothing was missed.
    w.link_up();
    w.run_for(Duration::from_secs(10));
    assert_eq!(w.xmpp.delivered.len(), stanzas, "{:?}", w.xmpp.delivered);
    assert_eq!(w.lcs.received.len(), requests);
}

#[test]
fn a_local_user_gone_offline_while_the_link_was_down_is_closed_for_lcs_when_probes_go_unanswered() {
    let mut w = World::new();
    // ejabberd 23.01: a probe of a user with no available resource gets no answer at all.
    w.xmpp.silent_probes = true;
    bob_watches_alice(&mut w);
    assert!(notified_activities(&w).last().unwrap().contains("away"));
    // A lost stream while Alice stays online: her answer to the probe keeps the document as
    // it was, so nothing is sent (no flap to closed and back).
    let before = w.lcs.requests(&Method::Notify).len();
    w.link_down();
    w.settle();
    w.link_up();
    w.run_for(Duration::from_secs(10));
    assert!(
        notifies_since(&w, before).is_empty(),
        "{:?}",
        notifies_since(&w, before)
    );
    // Alice goes offline while the stream is down: the probe after it goes unanswered, and
    // once the answers had their time the aggregate says closed.
    w.link_down();
    w.settle();
    w.xmpp_presence(&format!("{ALICE}/pc"), None, &[&contact_jid("bob")]);
    w.link_up();
    w.run_for(Duration::from_secs(10));
    let sent = notifies_since(&w, before);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("<basic>closed</basic>"), "{}", sent[0]);
}

#[test]
fn presence_from_lcs_the_link_could_not_hold_reaches_the_user_when_it_is_back() {
    let mut w = World::new();
    alice_watches_bob(&mut w);
    w.link_down();
    w.settle();
    // The link's queue is full: the stanza of Bob's change is refused (the NOTIFY is still
    // answered 200: the subscription stands).
    w.xmpp.refuse = true;
    w.lcs_notifies(BOB_AOR, "busy");
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Notify), [200, 200]);
    w.xmpp.refuse = false;
    assert!(!w.xmpp.to(ALICE).iter().any(|s| s.contains("dnd")));
    w.link_up();
    w.run_for(Duration::from_secs(5));
    let got = w.xmpp.to(ALICE);
    assert!(got.last().unwrap().contains("<show>dnd</show>"), "{got:?}");
}

#[test]
fn a_flapping_link_queues_one_resync_not_one_per_flap() {
    let mut w = World::with_presence(|s| s.restore_rate = 10);
    let users: Vec<String> = (0..10).map(|i| format!("u{i}@example.org")).collect();
    for (i, user) in users.iter().enumerate() {
        let watcher = format!("sip:w{i}@contoso.com");
        w.lcs_subscribes(&watcher, &format!("sip:{user}"));
        w.settle();
        let jid = contact_jid(&format!("w{i}"));
        w.xmpp_sends(&format!(
            "<presence from='{user}' to='{jid}' type='subscribed'/>"
        ));
        w.xmpp_presence(&format!("{user}/pc"), Some(""), &[&jid]);
    }
    w.run_for(Duration::from_secs(10));
    // 10 gateway presences and 10 probes at 10 a second: 2 s. The stream is lost again half
    // a second into it.
    w.link_down();
    w.link_up();
    w.run_for(Duration::from_millis(500));
    w.link_down();
    let mark = w.xmpp.delivered.len();
    w.link_up();
    w.run_for(Duration::from_secs(10));
    let probes: Vec<String> = w.xmpp.delivered[mark..]
        .iter()
        .filter(|e| e.attr("type") == Some("probe"))
        .filter_map(|e| e.attr("to").map(str::to_owned))
        .collect();
    let mut once = probes.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), users.len(), "{probes:?}");
    assert_eq!(
        probes.len(),
        users.len(),
        "each user probed once: {probes:?}"
    );
}

#[test]
fn a_lost_sip_connection_is_taken_up_again_at_the_restore_rate() {
    let mut w = World::with_presence(|s| s.restore_rate = 10);
    let contacts: Vec<String> = (0..20).map(|i| contact_jid(&format!("c{i}"))).collect();
    for c in &contacts {
        w.xmpp_sends(&format!(
            "<presence from='{ALICE}' to='{c}' type='subscribe'/>"
        ));
    }
    w.settle();
    bob_watches_alice(&mut w);
    let subscribes = w.lcs.requests(&Method::Subscribe).len();
    assert_eq!(subscribes, 20);
    // The edge's connection breaks; meanwhile c3 goes away and Alice busy.
    w.lcs_connection_lost();
    w.lcs_notifies("sip:c3@contoso.com", "away");
    w.xmpp_presence(
        &format!("{ALICE}/pc"),
        Some("<show>dnd</show>"),
        &[&contact_jid("bob")],
    );
    w.settle();
    // A fresh SUBSCRIBE for every subscription whose dialog died, by domain, paced at 10 a
    // second: the first at once.
    let again = |w: &World| w.lcs.requests(&Method::Subscribe).len() - subscribes;
    assert_eq!(again(&w), 1);
    w.run_for(Duration::from_millis(900));
    let n = again(&w);
    assert!((9..=11).contains(&n), "{n} SUBSCRIBEs in the first second");
    w.run_for(Duration::from_secs(2));
    assert_eq!(again(&w), 20);
    let fresh = &w.lcs.requests(&Method::Subscribe)[subscribes..];
    assert!(fresh.iter().all(|s| s.to().unwrap().tag().is_none()));
    // Alice sees c3's change, once its new dialog's NOTIFY came; `subscribed` only once.
    let got = w.xmpp.to(ALICE);
    let c3 = &contacts[3];
    let from_c3: Vec<&String> = got.iter().filter(|s| s.contains(c3.as_str())).collect();
    assert!(
        from_c3.last().unwrap().contains("<show>away</show>"),
        "{from_c3:?}"
    );
    assert_eq!(
        from_c3
            .iter()
            .filter(|s| s.contains("type='subscribed'"))
            .count(),
        1
    );
    // Bob subscribes again in a new dialog (his old one died with the connection): the same
    // watcher, told Alice's state as it is now at once.
    w.lcs_subscribes(BOB_AOR, ALICE_URI);
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Subscribe).last(), Some(&202));
    let last = notified_activities(&w).last().cloned().unwrap();
    assert!(last.contains("busy"), "{last}");
    assert_eq!(
        w.xmpp
            .to(ALICE)
            .iter()
            .filter(|s| s.contains("type='subscribe'"))
            .count(),
        1,
        "Alice is not asked again"
    );
}

/// The profile's connection affinity ("All messages within a given SIP dialog must be sent
/// over the exact same connection"), for LCS watching a local user: the edge's connection
/// breaks and Alice changes her presence; no NOTIFY goes to Bob in his old dialog on the new
/// connection, nor anywhere, however long he stays away. His side's refresh in the old dialog
/// gets 481 (RFC 6665 §4.1.2.2: he then subscribes anew), and his new SUBSCRIBE is answered
/// 202 and told Alice's state as it is now at once, Alice not asked again; his NOTIFYs then
/// go in the new dialog only.
#[test]
fn a_watcher_whose_connection_is_lost_gets_no_notify_until_it_subscribes_again() {
    let mut w = World::new();
    bob_watches_alice(&mut w);
    let calls = |w: &World| -> Vec<String> {
        w.lcs
            .requests(&Method::Notify)
            .iter()
            .map(|n| n.call_id().unwrap().to_owned())
            .collect()
    };
    let old_call = calls(&w).last().cloned().unwrap();
    let before = w.lcs.requests(&Method::Notify).len();
    w.lcs_connection_lost();
    w.xmpp_presence(
        &format!("{ALICE}/pc"),
        Some("<show>dnd</show>"),
        &[&contact_jid("bob")],
    );
    w.settle();
    w.run_for(Duration::from_secs(600));
    assert!(
        notifies_since(&w, before).is_empty(),
        "{:?}",
        notifies_since(&w, before)
    );
    w.lcs_refreshes_in_lost(BOB_AOR);
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Subscribe).last(), Some(&481));
    assert!(notifies_since(&w, before).is_empty());
    w.lcs_subscribes(BOB_AOR, ALICE_URI);
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Subscribe).last(), Some(&202));
    let got = notifies_since(&w, before);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("busy"), "{}", got[0]);
    let new_call = calls(&w).last().cloned().unwrap();
    assert_ne!(new_call, old_call);
    assert_eq!(
        w.xmpp
            .to(ALICE)
            .iter()
            .filter(|s| s.contains("type='subscribe'"))
            .count(),
        1,
        "Alice is not asked again"
    );
    // Later changes go in the new dialog, answered.
    w.xmpp_presence(&format!("{ALICE}/pc"), None, &[&contact_jid("bob")]);
    w.run_for(Duration::from_secs(10));
    assert!(calls(&w)[before..].iter().all(|c| *c == new_call));
    assert_eq!(w.lcs.replied.last(), Some(&(Method::Notify, 200)));
    assert_eq!(notifies_since(&w, before).len(), 2);
}

#[test]
fn a_stream_lost_again_before_the_probes_are_answered_shows_nobody_offline() {
    // 10 paced stanzas a second: the probe goes 100 ms after the gateway presence.
    let mut w = World::with_presence(|s| s.restore_rate = 10);
    w.xmpp.silent_probes = true;
    bob_watches_alice(&mut w);
    let before = w.lcs.requests(&Method::Notify).len();
    // Back for a moment, and lost again before the probe's turn: nothing answers it (the link
    // would hold it), which must not make Alice offline.
    w.link_down();
    w.settle();
    w.link_up();
    w.run_for(Duration::from_millis(50));
    w.link_down();
    w.run_for(Duration::from_secs(30));
    assert!(
        notifies_since(&w, before).is_empty(),
        "Alice shown offline for a lost stream: {:?}",
        notifies_since(&w, before)
    );
    // When it is back, she is still online: nothing to tell.
    w.link_up();
    w.run_for(Duration::from_secs(10));
    assert!(
        notifies_since(&w, before).is_empty(),
        "{:?}",
        notifies_since(&w, before)
    );
}

const CAROL_AOR: &str = "sip:carol@contoso.com";

/// The CSeqs of the bridge's requests of `method` in the dialog `call_id`.
fn cseqs_in(w: &World, method: &Method, call_id: &str) -> Vec<u32> {
    w.lcs
        .requests(method)
        .into_iter()
        .filter(|m| m.call_id().is_ok_and(|c| c == call_id))
        .map(|m| m.cseq().unwrap().number)
        .collect()
}

/// Alice has a session she opened with Bob and one Carol opened with her, each with
/// messages both ways; the bridge restarts from the store; every message after the restart
/// goes in the old dialogs: LCS's are delivered in their thread (no 481), Alice's go out with
/// CSeqs above every one the old process sent (no 500), and no new INVITE is needed.
#[test]
fn open_chat_sessions_both_ways_survive_a_restart() {
    let mut w = World::new();
    let (bob, carol) = (contact_jid("bob"), contact_jid("carol"));
    let alice_says = |w: &mut World, to: &str, id: &str| {
        w.xmpp_sends(&format!(
            "<message from='{ALICE}/pc' to='{to}' type='chat' id='{id}'><body>{id}</body></message>"
        ));
    };
    alice_says(&mut w, &bob, "to-bob-1");
    w.settle();
    w.lcs_replies(BOB_AOR, "bob-1");
    w.lcs_invites(CAROL_AOR, ALICE_URI, "carol-1");
    w.settle();
    alice_says(&mut w, &carol, "to-carol-1");
    alice_says(&mut w, &bob, "to-bob-2");
    w.settle();
    let invites = w.lcs.requests(&Method::Invite);
    assert_eq!(invites.len(), 1);
    let bob_call = invites[0].call_id().unwrap().to_owned();
    let carol_call = w.lcs.requests(&Method::Message)[1]
        .call_id()
        .unwrap()
        .to_owned();
    assert!(carol_call.starts_with("INVITE-"), "{carol_call}");
    let before = |w: &World, call: &str| *cseqs_in(w, &Method::Message, call).iter().max().unwrap();
    let (bob_before, carol_before) = (before(&w, &bob_call), before(&w, &carol_call));
    assert_eq!(w.store.stats().unwrap().im_dialogs, 2);

    w.restart();
    w.run_for(Duration::from_secs(5));
    // LCS writes in both sessions: delivered to Alice, in the same threads.
    w.lcs_messages(CAROL_AOR, "carol-after");
    w.lcs_replies(BOB_AOR, "bob-after");
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Message), [200; 3]);
    let got = w.xmpp.to(ALICE);
    let delivered = |body: &str, thread: &str| {
        got.iter().any(|s| {
            s.contains(&format!("<body>{body}</body>"))
                && s.contains(&format!("<thread>{thread}</thread>"))
        })
    };
    assert!(delivered("carol-after", &carol_call), "{got:?}");
    assert!(delivered("bob-after", &bob_call), "{got:?}");
    // Alice writes in both: the old dialogs, CSeqs above the old process's.
    alice_says(&mut w, &bob, "to-bob-after");
    alice_says(&mut w, &carol, "to-carol-after");
    w.settle();
    assert_eq!(w.lcs.requests(&Method::Invite).len(), 1, "no new session");
    for (call, old) in [(&bob_call, bob_before), (&carol_call, carol_before)] {
        let after = cseqs_in(&w, &Method::Message, call);
        assert!(
            after.last().unwrap() > &old,
            "{call}: {after:?} after {old}"
        );
    }
    assert!(
        w.lcs.replied.iter().all(|(_, s)| *s == 200),
        "{:?}",
        w.lcs.replied
    );
    assert!(w.xmpp.to(ALICE).iter().all(|s| !s.contains("type='error'")));
    // A second restart right away: still above (the first request after each start raises
    // the stored reservation before it goes).
    w.restart();
    alice_says(&mut w, &bob, "to-bob-again");
    w.settle();
    assert!(w.lcs.replied.iter().all(|(_, s)| *s == 200));
    assert_eq!(w.lcs.requests(&Method::Invite).len(), 1);
}

/// A session kept busy past the dialog-age limit (20 h here) is replaced by a fresh INVITE
/// before the next message; a restart with a stored dialog past the limit ends it with BYE and
/// forgets it, and the next message opens a fresh session.
#[test]
fn stored_sessions_past_the_age_limit_are_replaced() {
    let mut w = World::new();
    let bob = contact_jid("bob");
    let mut n = 0;
    let mut alice_says = |w: &mut World| {
        n += 1;
        w.xmpp_sends(&format!(
            "<message from='{ALICE}/pc' to='{bob}' type='chat' id='a{n}'><body>n{n}</body></message>"
        ));
        w.settle();
    };
    alice_says(&mut w);
    let first = w.lcs.requests(&Method::Invite)[0]
        .call_id()
        .unwrap()
        .to_owned();
    // Busy for 20 h (one message every 9 minutes, below the idle limit).
    let mut replaced_at = None;
    for _ in 0..134 {
        w.run_for(Duration::from_secs(9 * 60));
        alice_says(&mut w);
        if replaced_at.is_none() && w.lcs.requests(&Method::Invite).len() == 2 {
            replaced_at = Some(w.now);
        }
    }
    let invites: Vec<String> = w
        .lcs
        .requests(&Method::Invite)
        .iter()
        .map(|m| m.call_id().unwrap().to_owned())
        .collect();
    assert_eq!(invites.len(), 2, "replaced once");
    assert_eq!(cseqs_in(&w, &Method::Bye, &first).len(), 1);
    let stored: Vec<_> = w.store.im_dialogs().map(Result::unwrap).collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].dialog.call_id, invites[1]);

    // The second dialog kept busy until just before its limit; the bridge restarts just after
    // it (before the idle limit).
    let limit = replaced_at.unwrap() + Duration::from_secs(20 * 3600);
    while w.now + Duration::from_secs(9 * 60) < limit {
        w.run_for(Duration::from_secs(9 * 60));
        alice_says(&mut w);
    }
    assert_eq!(w.lcs.requests(&Method::Invite).len(), 2);
    w.run_for(limit + Duration::from_secs(60) - w.now);
    assert_eq!(w.store.stats().unwrap().im_dialogs, 1);
    assert!(cseqs_in(&w, &Method::Bye, &invites[1]).is_empty());
    w.restart();
    w.settle();
    assert_eq!(cseqs_in(&w, &Method::Bye, &invites[1]).len(), 1);
    assert_eq!(w.store.stats().unwrap().im_dialogs, 0);
    alice_says(&mut w);
    assert_eq!(w.lcs.requests(&Method::Invite).len(), 3);
    assert!(w.lcs.replied.iter().all(|(_, s)| *s == 200));
}

/// An IM dialog the store could not keep changes no answer: the session goes on (a restart
/// would end it), unlike a subscription, whose 2xx becomes 500.
#[test]
fn an_im_store_failure_changes_no_answer() {
    let mut w = World::new();
    w.store.set_fail_writes(true);
    w.lcs_invites(BOB_AOR, ALICE_URI, "hello");
    w.settle();
    w.lcs_messages(BOB_AOR, "still fine");
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Invite), [200]);
    assert_eq!(w.lcs.statuses(Method::Message), [200]);
    assert_eq!(w.xmpp.to(ALICE).len(), 2);
}

/// An LCS user writes to a local address with no account: the bridge accepts (it cannot know),
/// the XMPP server bounces the message, and the bridge tells the sender in the session and
/// ends it with BYE and the status `errors.toml` gives the condition, so that the next message
/// is not lost in a session nobody reads.
#[test]
fn a_message_to_no_account_is_told_to_its_sender_and_ends_the_session() {
    let mut w = World::new();
    w.xmpp.no_account.insert("nobody@example.org".into());
    w.lcs_invites(BOB_AOR, "sip:nobody@example.org", "anybody there?");
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Invite), [200]);
    let notice = w.lcs.requests(&Method::Message);
    assert_eq!(notice.len(), 1);
    assert_eq!(
        body_of(notice[0]),
        "Message not delivered to nobody@example.org (503 Service Unavailable, \
         service-unavailable)\nnobody@example.org is not reachable (no account, offline, or \
         blocking); this conversation has ended."
    );
    let bye = w.lcs.requests(&Method::Bye);
    assert_eq!(bye.len(), 1);
    assert_eq!(
        bye[0].header("Reason"),
        Some("SIP;cause=503;text=\"Service Unavailable\"")
    );
    assert_eq!(bye[0].call_id().unwrap(), notice[0].call_id().unwrap());
    assert_eq!(w.store.stats().unwrap().im_dialogs, 0);
    // LCS writes again in the ended session: 481 (its client opens a new one).
    w.lcs_messages(BOB_AOR, "hello?");
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Message), [481]);
    // Alice's sessions are not touched by any of it.
    w.lcs_invites("sip:carol@contoso.com", ALICE_URI, "hi alice");
    w.settle();
    assert_eq!(w.lcs.requests(&Method::Message).len(), 1);
    assert!(w.xmpp.to(ALICE)[0].contains("<body>hi alice</body>"));
}

/// The store fails just when a session's CSeq reservation must be raised: the MESSAGE that
/// would pass the stored reservation is not sent; the session ends (BYE) and the message goes in
/// a fresh one. After a restart (the store works again, but still holds the old dialog: its
/// removal failed too) nothing repeats a CSeq LCS has seen — no `500` anywhere — and every
/// message of Alice's reaches Bob, none comes back to her as an error.
#[test]
fn a_reservation_the_store_did_not_take_is_never_passed() {
    use crate::engine::im::CSEQ_RESERVE;
    let mut w = World::new();
    let bob = contact_jid("bob");
    let mut n = 0;
    let mut alice_says = |w: &mut World| {
        n += 1;
        w.xmpp_sends(&format!(
            "<message from='{ALICE}/pc' to='{bob}' type='chat' id='a{n}'><body>n{n}</body></message>"
        ));
        n
    };
    alice_says(&mut w);
    w.settle();
    let first = w.lcs.requests(&Method::Invite)[0]
        .call_id()
        .unwrap()
        .to_owned();
    w.store.set_fail_writes(true);
    // CSeq 3 ..= 1 + CSEQ_RESERVE are reserved; the next one needs a write, which fails.
    for _ in 0..CSEQ_RESERVE {
        alice_says(&mut w);
    }
    w.settle();
    w.store.set_fail_writes(false);
    assert_eq!(
        cseqs_in(&w, &Method::Message, &first).last(),
        Some(&(1 + CSEQ_RESERVE)),
        "nothing above the stored reservation"
    );
    assert_eq!(cseqs_in(&w, &Method::Bye, &first).len(), 1);
    assert_eq!(w.lcs.requests(&Method::Invite).len(), 2);
    assert_eq!(
        w.store.stats().unwrap().im_dialogs,
        1,
        "the old record is left"
    );

    w.restart();
    let last = alice_says(&mut w);
    w.settle();
    assert!(
        w.lcs.replied.iter().all(|(_, s)| *s != 500),
        "a CSeq repeated: {:?}",
        w.lcs
            .replied
            .iter()
            .filter(|(_, s)| *s != 200)
            .collect::<Vec<_>>()
    );
    let bodies: BTreeSet<String> = w
        .lcs
        .requests(&Method::Message)
        .into_iter()
        .map(body_of)
        .collect();
    for i in 1..=last {
        assert!(bodies.contains(&format!("n{i}")), "n{i} not delivered");
    }
    assert!(w.xmpp.to(ALICE).iter().all(|s| !s.contains("type='error'")));
}

/// The same for a watcher: while the store cannot raise the reservation of Bob's watcher
/// dialog, no NOTIFY passes it (the one that would is held and owed again after the backoff);
/// once the store works, Alice's current presence goes out; after a restart the NOTIFYs are
/// above every CSeq sent before (no `500`).
#[test]
fn a_watchers_notify_waits_for_its_reservation() {
    use crate::engine::im::CSEQ_RESERVE;
    let mut w = World::new();
    bob_watches_alice(&mut w);
    let bob = contact_jid("bob");
    w.store.set_fail_writes(true);
    for i in 0..CSEQ_RESERVE + 5 {
        if i % 300 == 0 {
            // Bob's client refreshes (the world's LCS does not by itself).
            w.lcs_refreshes(BOB_AOR);
        }
        let show = if i % 2 == 0 { "dnd" } else { "away" };
        w.xmpp_presence(
            &format!("{ALICE}/pc"),
            Some(&format!("<show>{show}</show>")),
            &[&bob],
        );
        w.run_for(Duration::from_secs(6));
    }
    let held = w.lcs.requests(&Method::Notify).len();
    w.xmpp_presence(&format!("{ALICE}/pc"), Some("<show>xa</show>"), &[&bob]);
    w.run_for(Duration::from_secs(60));
    assert_eq!(
        w.lcs.requests(&Method::Notify).len(),
        held,
        "held while the store fails"
    );
    w.store.set_fail_writes(false);
    w.lcs_refreshes(BOB_AOR);
    w.run_for(Duration::from_secs(1900));
    assert!(notified_activities(&w).last().unwrap().contains("away"));
    w.lcs_refreshes(BOB_AOR);
    w.settle();
    w.restart();
    w.run_for(Duration::from_secs(30));
    assert!(w.lcs.requests(&Method::Notify).len() > held + 1);
    assert!(
        w.lcs.replied.iter().all(|(_, s)| *s != 500),
        "a CSeq repeated: {:?}",
        w.lcs
            .replied
            .iter()
            .filter(|(_, s)| *s != 200)
            .collect::<Vec<_>>()
    );
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

/// The `Warning` of every multiparty refusal, this bridge's edge as warn-agent.
const MULTIPARTY_WARNING: &str =
    "399 sip.example.org \"multiparty conversations are not supported by this gateway\"";

#[test]
fn multiparty_invites_without_require_get_488_and_nothing_reaches_xmpp() {
    use super::world::SDP;
    // pidgin-sipe sipe-incoming.c process_incoming_invite: more than two EndPoints, or
    // TriggeredInvite: TRUE, make an INVITE multiparty; Roster-Manager names the chat's roster
    // keeper. Lync 2010+ conference escalation: an application/ms-conf-invite+xml body.
    let three = "EndPoints: <sip:carol@contoso.com>, <sip:bob@contoso.com>;epid=ebca82d94d, <sip:alice@example.org>\n";
    let conf = r#"<Conferencing version="2.0"><focus-uri>sip:carol@contoso.com;gruu;opaque=app:conf:focus:id:4FNRHN16</focus-uri><subject>Chat</subject><im available="true"><first-im>hello all</first-im></im></Conferencing>"#;
    let cases: [(&str, (&str, &str)); 4] = [
        (three, ("application/sdp", SDP)),
        (
            "Roster-Manager: sip:carol@contoso.com\n",
            ("application/sdp", SDP),
        ),
        ("TriggeredInvite: TRUE\n", ("application/sdp", SDP)),
        ("", ("application/ms-conf-invite+xml", conf)),
    ];
    for (extra, body) in cases {
        let mut w = World::new();
        let extra = format!("{extra}{}", World::ms_text_format_line("hello all"));
        w.lcs_invites_with_headers(BOB_AOR, ALICE_URI, &extra, body);
        w.settle();
        assert_eq!(w.lcs.statuses(Method::Invite), [488], "{extra}");
        let r = w.last_answer_to(Method::Invite).unwrap();
        assert_eq!(r.header("Warning"), Some(MULTIPARTY_WARNING));
        // Never advertised.
        assert_eq!(r.header("Supported"), None);
        assert!(w.xmpp.to(ALICE).is_empty(), "{:?}", w.xmpp.to(ALICE));
        assert_eq!(w.store.im_dialogs().count(), 0, "nothing stored");
    }
}

#[test]
fn a_multiparty_reinvite_x_ms_mim_info_and_refer_are_refused_and_the_session_goes_on() {
    let mut w = World::new();
    w.lcs_invites(BOB_AOR, ALICE_URI, "hi");
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Invite), [200]);
    // Lync escalating the conversation: a re-INVITE naming a third party.
    let reinvite = "EndPoints: <sip:bob@contoso.com>, <sip:alice@example.org>, <sip:carol@contoso.com>\nRoster-Manager: sip:bob@contoso.com\nContent-Type: application/sdp\n";
    w.lcs_sends_in_session(BOB_AOR, "INVITE", reinvite, super::world::SDP);
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Invite), [200, 488]);
    let r = w.last_answer_to(Method::Invite).unwrap();
    assert_eq!(r.header("Warning"), Some(MULTIPARTY_WARNING));
    // The roster-manager election (pidgin-sipe sipe-chat.c sipe_send_election_request_rm).
    let mim = "<?xml version=\"1.0\"?>\r\n<action xmlns=\"http://schemas.microsoft.com/sip/multiparty/\"><RequestRM uri=\"sip:bob@contoso.com\" bid=\"42\"/></action>\r\n";
    w.lcs_sends_in_session(BOB_AOR, "INFO", "Content-Type: application/x-ms-mim\n", mim);
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Info), [415]);
    let r = w.last_answer_to(Method::Info).unwrap();
    assert_eq!(r.header("Accept"), Some("application/xml, text/xml"));
    assert_eq!(r.header("Warning"), Some(MULTIPARTY_WARNING));
    assert!(r.body().is_empty());
    // KeyboardActivity still becomes a chat state.
    w.lcs_sends_in_session(
        BOB_AOR,
        "INFO",
        "Content-Type: application/xml\n",
        "<?xml version=\"1.0\"?><KeyboardActivity><status status=\"type\" /></KeyboardActivity>",
    );
    // Adding a third person (pidgin-sipe sipe-chat.c sipe_refer, here without Require).
    w.lcs_sends_in_session(
        BOB_AOR,
        "REFER",
        "Refer-to: <sip:carol@contoso.com>\nReferred-By: <sip:bob@contoso.com>;tag=lcs1;epid=01010101\n",
        "",
    );
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Info), [415, 200]);
    let r = w.lcs.answers.last().map(|(_, r)| r).unwrap();
    assert_eq!(r.status(), Some(501));
    assert!(r.header("Allow").unwrap().contains("MESSAGE"));
    assert!(!r.header("Allow").unwrap().contains("REFER"));
    // A bodiless INFO is acknowledged; a body of no declared type is refused.
    w.lcs_sends_in_session(BOB_AOR, "INFO", "", "");
    w.lcs_sends_in_session(BOB_AOR, "INFO", "", "<RequestRM/>");
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Info), [415, 200, 200, 415]);
    let r = w.last_answer_to(Method::Info).unwrap();
    assert_eq!(r.reason(), Some("Unsupported Media Type (no Content-Type)"));
    // The one-to-one session goes on: the next message arrives, in the same thread.
    w.lcs_messages(BOB_AOR, "still there?");
    w.settle();
    assert_eq!(w.lcs.statuses(Method::Message), [200]);
    assert!(w.lcs.requests(&Method::Bye).is_empty());
    let got = w.xmpp.to(ALICE);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[0].contains("<body>hi</body>"), "{}", got[0]);
    assert!(got[1].contains("<composing"), "{}", got[1]);
    assert!(got[2].contains("<body>still there?</body>"), "{}", got[2]);
    let thread = |s: &str| {
        s.split("<thread>")
            .nth(1)
            .map(|t| t.split('<').next().unwrap_or("").to_owned())
    };
    assert_eq!(thread(&got[0]), thread(&got[2]));
}

/// A Lync user's categories document ([MS-PRES] §4.4.3's form): a state with `availability`
/// and an activity, and, when given, a note.
fn categories(availability: u32, activity: &str, note: Option<(&str, &str)>) -> String {
    let note = note.map_or_else(String::new, |(kind, text)| {
        format!(
            r#"<category name="note" publishTime="2026-03-01T10:00:00"><note xmlns="http://schemas.microsoft.com/2006/09/sip/note"><body type="{kind}">{text}</body></note></category>"#
        )
    });
    let state = if availability == 0 {
        String::new()
    } else {
        format!(
            r#"<category name="state" publishTime="2026-03-01T10:00:00"><state xmlns="http://schemas.microsoft.com/2006/09/sip/state"><availability>{availability}</availability>{activity}</state></category>"#
        )
    };
    format!(
        r#"<categories xmlns="http://schemas.microsoft.com/2006/09/sip/categories" uri="{BOB_AOR}">{state}{note}</categories>"#
    )
}

/// A Lync edge answers the enhanced SUBSCRIBE in categories: Alice sees Bob in a call; a NOTIFY
/// with only his note keeps the state; after a restart the new subscription's first NOTIFY is
/// Bob's whole state.
#[test]
fn enhanced_presence_from_a_lync_user_reaches_the_watcher() {
    let mut w = World::new();
    w.lcs.documents.insert(
        BOB_AOR.into(),
        categories(6500, r#"<activity token="on-the-phone"/>"#, None),
    );
    alice_watches_bob(&mut w);
    let subs = w.lcs.requests(&Method::Subscribe);
    assert_eq!(subs.len(), 1);
    assert_eq!(
        subs[0].header("Content-Type"),
        Some("application/msrtc-adrl-categorylist+xml")
    );
    let got = w.xmpp.to(ALICE);
    assert!(
        got.last()
            .unwrap()
            .contains("<show>dnd</show><status>In a call</status>"),
        "{got:?}"
    );
    w.lcs_notifies_doc(
        BOB_AOR,
        categories(0, "", Some(("personal", "Working from home"))),
    );
    w.settle();
    let got = w.xmpp.to(ALICE);
    assert!(
        got.last()
            .unwrap()
            .contains("<show>dnd</show><status>In a call - Working from home</status>"),
        "{got:?}"
    );
    w.lcs.documents.insert(
        BOB_AOR.into(),
        categories(3500, "", Some(("OOF", "Back on Monday"))),
    );
    w.restart();
    w.run_for(Duration::from_secs(30));
    assert_eq!(w.lcs.requests(&Method::Subscribe).len(), 2);
    let got = w.xmpp.to(ALICE);
    let last = got.last().unwrap();
    assert!(
        last.contains("<status>Out of office: Back on Monday</status>") && !last.contains("<show>"),
        "{got:?}"
    );
}

/// A partner's edge that refuses the enhanced SUBSCRIBE gets a PIDF-only one at once; Alice
/// sees Bob as before and no error.
#[test]
fn a_refused_enhanced_subscribe_falls_back_to_pidf() {
    let mut w = World::new();
    w.lcs.refuses_bodies = true;
    w.lcs
        .documents
        .insert(BOB_AOR.into(), super::world::pidf(BOB_AOR, "away"));
    alice_watches_bob(&mut w);
    let subs = w.lcs.requests(&Method::Subscribe);
    assert_eq!(subs.len(), 2);
    assert!(!subs[0].body().is_empty());
    assert!(subs[1].body().is_empty());
    assert_eq!(subs[1].header("Accept"), Some("application/pidf+xml"));
    let got = w.xmpp.to(ALICE);
    assert!(got.iter().all(|s| !s.contains("type='error'")), "{got:?}");
    assert!(got.last().unwrap().contains("<show>away</show>"), "{got:?}");
}
