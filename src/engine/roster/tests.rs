//! The roster engine alone, and names and rosters through the whole bridge on the virtual
//! clock (`engine::world`).

use std::time::Duration;

use super::*;
use crate::core::address::AddressMode;
use crate::engine::bridge::{Engine, Input};
use crate::engine::world::{COMPONENT, LOCAL, World, contact_jid, pidf, pidf_named, stanza};
use crate::sip::message::Method;
use crate::store::{Direction, Store};

const ALICE: &str = "alice@example.org";
const ALICE_URI: &str = "sip:alice@example.org";
const BOB_AOR: &str = "sip:bob@contoso.com";

fn book() -> AddressBook {
    AddressBook::new(
        AddressMode::Gateway,
        vec![COMPONENT.into()],
        vec![LOCAL.into()],
    )
    .unwrap()
}

fn roster_of<'a>(w: &'a World, user: &str) -> Vec<(&'a str, Option<&'a str>, Vec<&'a str>)> {
    w.xmpp
        .rosters
        .get(user)
        .map(|r| {
            r.iter()
                .map(|(jid, (name, groups))| {
                    (
                        jid.as_str(),
                        name.as_deref(),
                        groups.iter().map(String::as_str).collect(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The roster IQs the bridge sent (type, to).
fn roster_iqs(w: &World) -> Vec<String> {
    w.xmpp
        .delivered
        .iter()
        .filter(|e| e.name() == "iq" && e.get_child("query", NS_ROSTER).is_some())
        .map(|e| e.attr("type").unwrap_or("").to_owned())
        .collect()
}

/// Bob (with this From display name) subscribes to Alice, who approves.
fn bob_watches_alice(w: &mut World, display: Option<&str>) {
    w.lcs_subscribes_as(BOB_AOR, display, ALICE_URI);
    w.settle();
    let bob = contact_jid("bob");
    w.xmpp_sends(&format!(
        "<presence from='{ALICE}' to='{bob}' type='subscribed'/>"
    ));
    w.settle();
}

/// Alice subscribes to Bob; LCS approves with Bob's current document.
fn alice_watches_bob(w: &mut World) {
    let bob = contact_jid("bob");
    w.xmpp_sends(&format!(
        "<presence from='{ALICE}' to='{bob}' type='subscribe'/>"
    ));
    w.settle();
}

#[test]
fn an_approved_lcs_watcher_lands_in_the_roster_with_its_from_name() {
    let mut w = World::new();
    w.grant_roster("both");
    bob_watches_alice(&mut w, Some("Bob Builder"));
    let bob = contact_jid("bob");
    // XEP-0172 §4.1: the nick goes with the subscription request.
    let ask = w
        .xmpp
        .to(ALICE)
        .into_iter()
        .find(|s| s.contains("type='subscribe'"))
        .unwrap();
    assert!(
        ask.contains("<nick xmlns='http://jabber.org/protocol/nick'>Bob Builder</nick>"),
        "{ask}"
    );
    assert_eq!(roster_iqs(&w), ["get", "set"]);
    assert_eq!(
        roster_of(&w, ALICE),
        [(bob.as_str(), Some("Bob Builder"), vec![])]
    );
    // Kept with the subscription.
    let stored = w
        .store
        .get_subscription(Direction::Inbound, ALICE, BOB_AOR)
        .unwrap()
        .unwrap();
    assert_eq!(stored.display_name.unwrap().text, "Bob Builder");
    // Presence broadcasts carry no nick (XEP-0172 §4.1).
    w.lcs_notifies(BOB_AOR, "away");
    w.settle();
    assert!(
        w.xmpp
            .to(ALICE)
            .iter()
            .filter(|s| !s.contains("type='subscribe'"))
            .all(|s| !s.contains("<nick")),
        "{:?}",
        w.xmpp.to(ALICE)
    );
}

#[test]
fn the_cipid_name_of_an_approved_contact_is_written_and_follows_changes() {
    let mut w = World::new();
    w.grant_roster("both");
    w.lcs
        .documents
        .insert(BOB_AOR.into(), pidf_named(BOB_AOR, "away", "Bob Smith"));
    alice_watches_bob(&mut w);
    let bob = contact_jid("bob");
    assert_eq!(
        roster_of(&w, ALICE),
        [(bob.as_str(), Some("Bob Smith"), vec![])]
    );
    // Alice files Bob under a group; his name changes: the name follows, the group stays.
    w.xmpp
        .rosters
        .get_mut(ALICE)
        .unwrap()
        .get_mut(&bob)
        .unwrap()
        .1 = vec!["Work".into()];
    w.lcs_notifies_doc(BOB_AOR, pidf_named(BOB_AOR, "away", "Robert Smith"));
    w.settle();
    assert_eq!(
        roster_of(&w, ALICE),
        [(bob.as_str(), Some("Robert Smith"), vec!["Work"])]
    );
    // The same name again changes nothing.
    let before = roster_iqs(&w).len();
    w.lcs_notifies_doc(BOB_AOR, pidf_named(BOB_AOR, "busy", "Robert Smith"));
    w.settle();
    assert_eq!(roster_iqs(&w).len(), before);
    // A document without a name keeps the name.
    w.lcs_notifies(BOB_AOR, "away");
    w.settle();
    assert_eq!(roster_iqs(&w).len(), before);
    let stored = w
        .store
        .get_subscription(Direction::Outbound, ALICE, BOB_AOR)
        .unwrap()
        .unwrap();
    let name = stored.display_name.unwrap();
    assert_eq!((name.text.as_str(), name.from_pidf), ("Robert Smith", true));
}

#[test]
fn a_name_the_user_gave_is_kept() {
    let mut w = World::new();
    w.grant_roster("both");
    let bob = contact_jid("bob");
    w.xmpp.rosters.entry(ALICE.into()).or_default().insert(
        bob.clone(),
        (Some("My buddy".into()), vec!["Friends".into()]),
    );
    w.lcs
        .documents
        .insert(BOB_AOR.into(), pidf_named(BOB_AOR, "away", "Bob Smith"));
    alice_watches_bob(&mut w);
    w.lcs_notifies_doc(BOB_AOR, pidf_named(BOB_AOR, "away", "Robert Smith"));
    w.settle();
    assert_eq!(roster_iqs(&w), ["get", "get"], "read, never written");
    assert_eq!(
        roster_of(&w, ALICE),
        [(bob.as_str(), Some("My buddy"), vec!["Friends"])]
    );
}

#[test]
fn a_rename_does_not_bring_back_a_removed_contact() {
    let mut w = World::new();
    w.grant_roster("both");
    w.lcs
        .documents
        .insert(BOB_AOR.into(), pidf_named(BOB_AOR, "away", "Bob Smith"));
    alice_watches_bob(&mut w);
    assert_eq!(roster_of(&w, ALICE).len(), 1);
    // Alice removes Bob from her roster (the subscription stays at LCS a while).
    w.xmpp.rosters.get_mut(ALICE).unwrap().clear();
    w.lcs_notifies_doc(BOB_AOR, pidf_named(BOB_AOR, "away", "Robert Smith"));
    w.settle();
    assert_eq!(roster_iqs(&w), ["get", "set", "get"]);
    assert!(roster_of(&w, ALICE).is_empty());
}

#[test]
fn a_placeholder_name_is_replaced() {
    for placeholder in [
        "bob@contoso.com",
        "sip:bob@contoso.com",
        r"bob\40contoso.com",
    ] {
        let mut w = World::new();
        w.grant_roster("both");
        let bob = contact_jid("bob");
        w.xmpp
            .rosters
            .entry(ALICE.into())
            .or_default()
            .insert(bob.clone(), (Some(placeholder.into()), vec![]));
        w.lcs
            .documents
            .insert(BOB_AOR.into(), pidf_named(BOB_AOR, "away", "Bob Smith"));
        alice_watches_bob(&mut w);
        assert_eq!(
            roster_of(&w, ALICE),
            [(bob.as_str(), Some("Bob Smith"), vec![])],
            "{placeholder}"
        );
    }
}

/// XEP-0144 suggestions the bridge sent `user`.
fn suggestions(w: &World, user: &str) -> Vec<String> {
    w.xmpp
        .to(user)
        .into_iter()
        .filter(|s| s.contains(NS_ROSTERX))
        .collect()
}

#[test]
fn set_only_access_is_no_usable_grant() {
    // A blind set would overwrite what the user gave the contact and bring back a removed
    // contact: without `get` the bridge takes the fallback.
    let mut w = World::new();
    w.grant_roster("set");
    let bob = contact_jid("bob");
    w.xmpp.rosters.entry(ALICE.into()).or_default().insert(
        bob.clone(),
        (Some("My buddy".into()), vec!["Friends".into()]),
    );
    bob_watches_alice(&mut w, Some("Bob Builder"));
    assert!(roster_iqs(&w).is_empty(), "{:?}", roster_iqs(&w));
    assert_eq!(
        roster_of(&w, ALICE),
        [(bob.as_str(), Some("My buddy"), vec!["Friends"])]
    );
    let got = suggestions(&w, ALICE);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("action='add'") && got[0].contains("name='Bob Builder'"));
}

#[test]
fn without_the_privilege_the_user_gets_a_roster_item_exchange_suggestion() {
    let mut w = World::new();
    // Granted, then the stream is lost: the grant goes with it.
    w.grant_roster("both");
    w.link_down();
    w.link_up();
    w.settle();
    bob_watches_alice(&mut w, Some("Bob Builder"));
    // The server may still say what it grants: the wish waits for it a few seconds.
    assert!(suggestions(&w, ALICE).is_empty());
    w.run_for(GRANT_GRACE);
    assert!(roster_iqs(&w).is_empty());
    let bob = contact_jid("bob");
    let suggestion = w
        .xmpp
        .to(ALICE)
        .into_iter()
        .find(|s| s.contains(NS_ROSTERX))
        .unwrap();
    assert_eq!(
        suggestion,
        format!(
            "<message xmlns='jabber:component:accept' from='{COMPONENT}' to='{ALICE}'>\
             <x xmlns='{NS_ROSTERX}'><item action='add' jid='{bob}' name='Bob Builder'/></x></message>"
        )
    );
    // A new name is suggested as a modification.
    w.lcs_subscribes_as(BOB_AOR, Some("Bob B. Builder"), ALICE_URI);
    w.settle();
    assert!(
        w.xmpp
            .to(ALICE)
            .iter()
            .any(|s| s.contains("action='modify'") && s.contains("name='Bob B. Builder'")),
        "{:?}",
        w.xmpp.to(ALICE)
    );
}

/// `aor` (with this From display name) subscribes to local `user`, who approves.
fn watches(w: &mut World, aor: &str, display: Option<&str>, user: &str) {
    let uri = format!("sip:{user}");
    w.lcs_subscribes_as(aor, display, &uri);
    w.settle();
    let contact = contact_jid(aor.trim_start_matches("sip:").split('@').next().unwrap());
    w.xmpp_sends(&format!(
        "<presence from='{user}' to='{contact}' type='subscribed'/>"
    ));
    w.settle();
}

#[test]
fn one_users_refusal_ends_only_its_update_two_users_make_the_server_failing() {
    // A refusal that concerns the user: logged, not retried; the next change tries again.
    let mut w = World::new();
    w.grant_roster("both");
    w.xmpp.roster_error = Some(("wait", "resource-constraint"));
    bob_watches_alice(&mut w, Some("Bob Builder"));
    w.run_for(Duration::from_secs(600));
    assert_eq!(roster_iqs(&w), ["get"]);
    assert!(suggestions(&w, ALICE).is_empty());
    w.xmpp.roster_error = None;
    w.lcs_subscribes_as(BOB_AOR, Some("Bob B. Builder"), ALICE_URI);
    w.settle();
    assert_eq!(roster_iqs(&w), ["get", "get", "set"]);

    // Refusals for two different users (and no success between them): the server is taken
    // to be failing, and the second user's update is suggested instead.
    let mut w = World::new();
    w.grant_roster("both");
    w.xmpp.roster_error = Some(("cancel", "item-not-found"));
    watches(&mut w, BOB_AOR, Some("Bob"), ALICE);
    assert_eq!((roster_iqs(&w).len(), suggestions(&w, ALICE).len()), (1, 0));
    watches(&mut w, BOB_AOR, Some("Bob"), "carol@example.org");
    assert_eq!(roster_iqs(&w).len(), 2);
    assert_eq!(suggestions(&w, "carol@example.org").len(), 1);
    watches(&mut w, BOB_AOR, Some("Bob"), "dave@example.org");
    assert_eq!(roster_iqs(&w).len(), 2, "failing: no more IQs");
    assert_eq!(suggestions(&w, "dave@example.org").len(), 1);
    // A success between two refusals clears the count.
    let mut w = World::new();
    w.grant_roster("both");
    w.xmpp.roster_error = Some(("cancel", "item-not-found"));
    watches(&mut w, BOB_AOR, Some("Bob"), ALICE);
    w.xmpp.roster_error = None;
    watches(&mut w, BOB_AOR, Some("Bob"), "carol@example.org");
    w.xmpp.roster_error = Some(("cancel", "item-not-found"));
    watches(&mut w, BOB_AOR, Some("Bob"), "dave@example.org");
    watches(&mut w, BOB_AOR, Some("Bob"), "erin@example.org");
    assert!(suggestions(&w, "dave@example.org").is_empty());
    assert_eq!(suggestions(&w, "erin@example.org").len(), 1);
}

#[test]
fn a_server_that_cannot_write_gets_suggestions_and_is_tried_again_later() {
    // A server that grants the access but cannot write (ejabberd 23.01 answers a privileged
    // roster set with internal-server-error): not retried; the wish and every later one are
    // suggested (XEP-0144) for an hour, or until the component connects again.
    let mut w = World::new();
    w.grant_roster("both");
    w.xmpp.roster_error = Some(("wait", "internal-server-error"));
    bob_watches_alice(&mut w, Some("Bob Builder"));
    w.run_for(IQ_TIMEOUT);
    assert_eq!(roster_iqs(&w), ["get"]);
    assert_eq!(suggestions(&w, ALICE).len(), 1);
    assert!(
        suggestions(&w, ALICE)[0].contains("action='add'"),
        "{:?}",
        suggestions(&w, ALICE)
    );
    // Another user's update goes the same way at once: the server is failing, not the user.
    watches(&mut w, BOB_AOR, Some("Bob Builder"), "carol@example.org");
    assert_eq!(roster_iqs(&w), ["get"]);
    assert_eq!(suggestions(&w, "carol@example.org").len(), 1);
    w.lcs_subscribes_as(BOB_AOR, Some("Bob B. Builder"), ALICE_URI);
    w.settle();
    assert_eq!(roster_iqs(&w), ["get"]);
    assert!(suggestions(&w, ALICE)[1].contains("name='Bob B. Builder'"));
    // An hour later the privilege is tried again (the server was upgraded meanwhile; Bob's
    // watch is refreshed on the way, as LCS does before it expires).
    w.xmpp.roster_error = None;
    w.run_for(PRIVILEGE_RETRY / 2);
    w.lcs_subscribes_as(BOB_AOR, Some("Bob B. Builder"), ALICE_URI);
    w.run_for(PRIVILEGE_RETRY / 2);
    assert_eq!(roster_iqs(&w), ["get"]);
    w.lcs_subscribes_as(BOB_AOR, Some("Bob the Builder"), ALICE_URI);
    w.settle();
    assert_eq!(roster_iqs(&w), ["get", "get", "set"]);
    assert_eq!(roster_of(&w, ALICE)[0].1, Some("Bob the Builder"));
    // Failing again; connected again: the privilege is tried again at once.
    w.xmpp.roster_error = Some(("cancel", "feature-not-implemented"));
    w.run_for(RENAME_DEBOUNCE);
    w.lcs_subscribes_as(BOB_AOR, Some("Bob T. Builder"), ALICE_URI);
    w.settle();
    assert_eq!(roster_iqs(&w).len(), 4);
    assert_eq!(suggestions(&w, ALICE).len(), 3);
    w.xmpp.roster_error = None;
    w.link_down();
    w.link_up();
    w.grant_roster("both");
    w.settle();
    w.run_for(RENAME_DEBOUNCE);
    w.lcs_subscribes_as(BOB_AOR, Some("Robert Builder"), ALICE_URI);
    w.settle();
    assert_eq!(roster_iqs(&w).len(), 6);
    assert_eq!(roster_of(&w, ALICE)[0].1, Some("Robert Builder"));
}

#[test]
fn one_name_for_both_directions_and_the_pidf_name_wins() {
    let mut w = World::new();
    w.grant_roster("both");
    let bob = contact_jid("bob");
    // Bob watches Alice first: his server's From name goes into her roster.
    bob_watches_alice(&mut w, Some("Smith, Bob"));
    assert_eq!(roster_of(&w, ALICE)[0].1, Some("Smith, Bob"));
    // Alice watches Bob back; his own document names him: that name wins, over the name
    // the bridge wrote before.
    w.lcs
        .documents
        .insert(BOB_AOR.into(), pidf_named(BOB_AOR, "away", "Bob Smith"));
    alice_watches_bob(&mut w);
    assert_eq!(
        roster_of(&w, ALICE),
        [(bob.as_str(), Some("Bob Smith"), vec![])]
    );
    // Bob's server sends another form of his name in From (a refreshed watch): his own
    // name stays.
    let iqs = roster_iqs(&w).len();
    w.run_for(RENAME_DEBOUNCE);
    w.lcs_subscribes_as(BOB_AOR, Some("Smith, Bob (Sales)"), ALICE_URI);
    w.settle();
    assert_eq!(roster_iqs(&w).len(), iqs);
    assert_eq!(roster_of(&w, ALICE)[0].1, Some("Bob Smith"));
    // An IM session's From does not replace his own name in the vCards either.
    w.lcs_invites_as(BOB_AOR, Some("Smith, Bob"), ALICE_URI, "hi");
    w.settle();
    w.xmpp_sends(&format!(
        "<iq from='{ALICE}/pc' to='{bob}' type='get' id='v1'><vCard xmlns='vcard-temp'/></iq>"
    ));
    w.settle();
    let vcard = w.xmpp.to(ALICE).pop().unwrap();
    assert!(vcard.contains("<FN>Bob Smith</FN>"), "{vcard}");
    // His own new name follows.
    w.lcs_notifies_doc(BOB_AOR, pidf_named(BOB_AOR, "away", "Robert Smith"));
    w.settle();
    assert_eq!(roster_of(&w, ALICE)[0].1, Some("Robert Smith"));
}

#[test]
fn a_failed_write_does_not_freeze_the_roster() {
    let mut w = World::new();
    w.grant_roster("both");
    bob_watches_alice(&mut w, Some("Bob A"));
    assert_eq!(roster_of(&w, ALICE)[0].1, Some("Bob A"));
    // The rename to B is refused for this user (not the server's fault): the item still shows A.
    w.xmpp.roster_set_error = Some(("wait", "resource-constraint"));
    w.lcs_subscribes_as(BOB_AOR, Some("Bob B"), ALICE_URI);
    w.settle();
    assert_eq!(roster_of(&w, ALICE)[0].1, Some("Bob A"));
    // The next rename (after the debounce period) still recognises A as the bridge's.
    w.xmpp.roster_set_error = None;
    w.run_for(RENAME_DEBOUNCE);
    w.lcs_subscribes_as(BOB_AOR, Some("Bob C"), ALICE_URI);
    w.settle();
    assert_eq!(roster_of(&w, ALICE)[0].1, Some("Bob C"));
}

#[test]
fn a_flapping_name_is_written_once_per_period_the_latest_last() {
    let mut w = World::new();
    w.grant_roster("both");
    w.lcs
        .documents
        .insert(BOB_AOR.into(), pidf_named(BOB_AOR, "away", "Bob 0"));
    alice_watches_bob(&mut w);
    assert_eq!(roster_iqs(&w), ["get", "set"]);
    for i in 1..=20 {
        w.lcs_notifies_doc(BOB_AOR, pidf_named(BOB_AOR, "away", &format!("Bob {i}")));
        w.run_for(Duration::from_secs(10));
    }
    // The first rename went at once; the others wait for the period, and the latest goes.
    assert_eq!(roster_iqs(&w).len(), 4, "{:?}", roster_iqs(&w));
    assert_eq!(roster_of(&w, ALICE)[0].1, Some("Bob 1"));
    w.run_for(RENAME_DEBOUNCE);
    assert_eq!(roster_iqs(&w).len(), 6, "{:?}", roster_iqs(&w));
    assert_eq!(roster_of(&w, ALICE)[0].1, Some("Bob 20"));
}

#[test]
fn a_privilege_element_from_a_user_is_an_ordinary_message() {
    let mut w = World::new();
    let bob = contact_jid("bob");
    w.xmpp_sends(&format!(
        "<message from='{ALICE}/pc' to='{bob}' type='chat' id='m1'><body>hello</body><privilege xmlns='urn:xmpp:privilege:2'><perm access='roster' type='both'/></privilege></message>"
    ));
    w.settle();
    // It went to Bob as a chat (and granted nothing).
    assert_eq!(
        w.lcs.requests(&Method::Invite).len(),
        1,
        "{:?} {:?}",
        w.xmpp.to(ALICE),
        w.lcs.received
    );
    w.lcs_subscribes_as(BOB_AOR, Some("Bob"), ALICE_URI);
    w.settle();
    w.xmpp_sends(&format!(
        "<presence from='{ALICE}' to='{bob}' type='subscribed'/>"
    ));
    w.run_for(GRANT_GRACE + Duration::from_secs(1));
    assert!(roster_iqs(&w).is_empty());
    assert_eq!(suggestions(&w, ALICE).len(), 1);
}

#[test]
fn names_survive_a_restart_and_answer_vcards() {
    let mut w = World::new();
    w.grant_roster("both");
    w.lcs
        .documents
        .insert(BOB_AOR.into(), pidf_named(BOB_AOR, "away", "Bob Smith"));
    alice_watches_bob(&mut w);
    w.restart();
    w.grant_roster("both");
    w.settle();
    let bob = contact_jid("bob");
    w.xmpp_sends(&format!(
        "<iq from='{ALICE}/pc' to='{bob}' type='get' id='v1'><vCard xmlns='vcard-temp'/></iq>"
    ));
    w.settle();
    let vcard = w.xmpp.to(ALICE).pop().unwrap();
    assert!(
        vcard.contains("<FN>Bob Smith</FN>") && vcard.contains("<URL>sip:bob@contoso.com</URL>"),
        "{vcard}"
    );
    // After the restart the old name is known: the roster still follows a change.
    w.lcs_notifies_doc(BOB_AOR, pidf_named(BOB_AOR, "away", "Robert Smith"));
    w.settle();
    assert_eq!(roster_of(&w, ALICE)[0].1, Some("Robert Smith"));
    // Nobody knows Carol's name.
    let carol = contact_jid("carol");
    w.xmpp_sends(&format!(
        "<iq from='{ALICE}/pc' to='{carol}' type='get' id='v2'><vCard xmlns='vcard-temp'/></iq>"
    ));
    w.settle();
    assert!(
        w.xmpp.to(ALICE).pop().unwrap().contains("item-not-found"),
        "{:?}",
        w.xmpp.to(ALICE)
    );
}

#[test]
fn hostile_names_are_cleaned_everywhere() {
    let mut w = World::new();
    w.grant_roster("both");
    // A bidi override, what XML cannot carry and a line separator, in a quoted display name
    // (C0 controls never get this far: the SIP parser refuses them in a header).
    bob_watches_alice(&mut w, Some("Bob\u{202E}gpj.exe \u{FFFE}&<Evil>\u{2028}x"));
    let clean = "Bobgpj.exe &<Evil> x";
    assert_eq!(roster_of(&w, ALICE)[0].1, Some(clean));
    let ask = w
        .xmpp
        .to(ALICE)
        .into_iter()
        .find(|s| s.contains("type='subscribe'"))
        .unwrap();
    assert!(
        ask.contains("Bobgpj.exe &amp;&lt;Evil&gt; x</nick>"),
        "{ask}"
    );
    // A long name is cut.
    let long = "x".repeat(5000);
    w.lcs_subscribes_as(BOB_AOR, Some(&long), ALICE_URI);
    w.settle();
    let name = roster_of(&w, ALICE)[0].1.unwrap().to_owned();
    assert_eq!(name.chars().count(), crate::core::names::MAX_NAME_CHARS);
}

#[test]
fn an_lcs_session_names_its_sender_in_the_first_message() {
    let mut w = World::new();
    w.lcs_invites_as(BOB_AOR, Some("Bob Builder"), ALICE_URI, "hi there");
    w.settle();
    w.lcs_messages(BOB_AOR, "how are you?");
    w.settle();
    let got = w.xmpp.to(ALICE);
    assert!(
        got[0].contains("<nick xmlns='http://jabber.org/protocol/nick'>Bob Builder</nick>"),
        "{}",
        got[0]
    );
    assert!(!got[1].contains("<nick"), "{}", got[1]);
    // The name answers vCards (XEP-0292, PEP form).
    let bob = contact_jid("bob");
    w.xmpp_sends(&format!(
        "<iq from='{ALICE}/pc' to='{bob}' type='get' id='v1'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:vcard4'/></pubsub></iq>"
    ));
    w.settle();
    let vcard = w.xmpp.to(ALICE).pop().unwrap();
    assert!(
        vcard.contains("<fn><text>Bob Builder</text></fn>"),
        "{vcard}"
    );
}

// ------------------------------------------------------------------ the engine alone

fn fact(local: &str, contact: &str, name: Option<&str>, approved: bool) -> Input {
    Input::Fact(Fact::Roster {
        local: BareJid::new(local).unwrap(),
        contact: BareJid::new(contact).unwrap(),
        name: name.map(str::to_owned),
        previous: None,
        approved,
    })
}

fn xml(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Stanza(e) => Some(String::from(e)),
            _ => None,
        })
        .collect()
}

fn grant(access: &str) -> Input {
    Input::Stanza(stanza(&format!(
        "<message from='{LOCAL}' to='{COMPONENT}'><privilege xmlns='urn:xmpp:privilege:2'><perm access='roster' type='{access}'/></privilege></message>"
    )))
}

/// The id of the one IQ in `out`.
fn iq_id(out: &[String]) -> String {
    assert_eq!(out.len(), 1, "{out:?}");
    stanza(&out[0]).attr("id").unwrap().to_owned()
}

fn roster_result(id: &str, from: &str, items: &str) -> Input {
    Input::Stanza(stanza(&format!(
        "<iq from='{from}' to='{COMPONENT}' id='{id}' type='result'><query xmlns='jabber:iq:roster'>{items}</query></iq>"
    )))
}

#[test]
fn privileges_are_taken_from_the_server_only_in_either_namespace() {
    let now = Instant::now();
    let mut e = RosterEngine::new(RosterMode::Privilege, book(), 7);
    let message = |from: &str, ns: &str, type_: &str| {
        Input::Stanza(stanza(&format!(
            "<message from='{from}' to='{COMPONENT}'><privilege xmlns='{ns}'><perm access='message' type='outgoing'/><perm access='roster' type='{type_}'/><perm access='presence' type='none'/></privilege></message>"
        )))
    };
    // A user, another server, a resource: not the server speaking; such a message is not the
    // roster engine's (it goes on as an ordinary message).
    for from in ["eve@example.org", "example.com", "example.org/x"] {
        let m = message(from, "urn:xmpp:privilege:2", "both");
        assert!(!e.takes(&m), "{from}");
        e.handle(now, m);
        assert_eq!(e.access(COMPONENT, LOCAL), "none", "{from}");
    }
    // ejabberd 23.01 (version 1), Prosody (version 2).
    let m = message(LOCAL, "urn:xmpp:privilege:1", "set");
    assert!(e.takes(&m));
    e.handle(now, m);
    assert_eq!(e.access(COMPONENT, LOCAL), "set");
    e.handle(now, message(LOCAL, "urn:xmpp:privilege:2", "both"));
    assert_eq!(e.access(COMPONENT, LOCAL), "both");
    // A stream lost takes it away.
    e.handle(
        now,
        Input::LinkDown {
            domain: COMPONENT.into(),
            reason: "test".into(),
        },
    );
    assert_eq!(e.access(COMPONENT, LOCAL), "none");
    // An ordinary message is not the roster engine's.
    let chat = Input::Stanza(stanza(&format!(
        "<message from='{ALICE}' to='{COMPONENT}'><body>x</body></message>"
    )));
    assert!(!e.takes(&chat));
}

#[test]
fn modes_decide_what_goes_out() {
    let now = Instant::now();
    let bob = contact_jid("bob");
    for (mode, granted, expect) in [
        (RosterMode::Auto, Some("both"), "roster get"),
        (RosterMode::Auto, Some("set"), "rosterx"),
        (RosterMode::Auto, Some("get"), "rosterx"),
        (RosterMode::Auto, Some("none"), "rosterx"),
        (RosterMode::Auto, None, "rosterx"),
        (RosterMode::Privilege, Some("both"), "roster get"),
        (RosterMode::Privilege, Some("set"), "nothing"),
        (RosterMode::Privilege, None, "nothing"),
        (RosterMode::RosterX, Some("both"), "rosterx"),
        (RosterMode::RosterX, None, "rosterx"),
        (RosterMode::None, Some("both"), "nothing"),
    ] {
        let mut e = RosterEngine::new(mode, book(), 1);
        if let Some(access) = granted {
            e.handle(now, grant(access));
        }
        let mut out = xml(&e.handle(now, fact(ALICE, &bob, Some("Bob"), true)));
        if granted.is_none() && matches!(mode, RosterMode::Auto | RosterMode::Privilege) {
            // No privilege message yet: the wish waits for it, then the grace period ends.
            assert!(out.is_empty(), "{mode:?}: {out:?}");
            assert_eq!(e.poll_timeout(), Some(now + GRANT_GRACE));
            out = xml(&e.handle_timeout(now + GRANT_GRACE));
        }
        let got = match out.as_slice() {
            [] => "nothing",
            [one] if one.contains("<query xmlns='jabber:iq:roster'/>") => "roster get",
            [one] if one.contains(NS_ROSTERX) => "rosterx",
            _ => "something else",
        };
        assert_eq!(got, expect, "{mode:?} granted={granted:?}: {out:?}");
    }
}

#[test]
fn wishes_wait_for_the_grant_while_the_link_is_down_or_just_up() {
    let now = Instant::now();
    let bob = contact_jid("bob");
    let mut e = RosterEngine::new(RosterMode::Auto, book(), 1);
    e.handle(
        now,
        Input::LinkDown {
            domain: COMPONENT.into(),
            reason: "test".into(),
        },
    );
    // While the stream is down, wishes wait however long (the link holds the stanzas anyway).
    assert!(
        e.handle(now, fact(ALICE, &bob, Some("Bob"), true))
            .is_empty()
    );
    assert_eq!(e.poll_timeout(), None);
    let later = now + Duration::from_secs(60);
    e.handle(
        later,
        Input::LinkUp {
            domain: COMPONENT.into(),
        },
    );
    assert_eq!(e.poll_timeout(), Some(later + GRANT_GRACE));
    // The privilege message arrives within the grace period: the waiting wish is decided.
    let out = xml(&e.handle(later + Duration::from_millis(30), grant("both")));
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].contains("type='get'"), "{}", out[0]);
    // A wish after the grant is decided at once.
    let carol = contact_jid("carol");
    assert_eq!(
        xml(&e.handle(later, fact(ALICE, &carol, Some("Carol"), true))).len(),
        1
    );
}

#[test]
fn answers_come_from_the_user_and_carry_a_roster() {
    let now = Instant::now();
    let bob = contact_jid("bob");
    let mut e = RosterEngine::new(RosterMode::Auto, book(), 1);
    e.handle(now, grant("both"));
    let id = iq_id(&xml(&e.handle(now, fact(ALICE, &bob, Some("Bob"), true))));
    // The right id from someone else (RFC 6120 §8.1.2.1: the answer comes from the bare JID
    // the IQ went to) is not an answer.
    for from in [
        "eve@example.org",
        "alice@example.org/pc",
        LOCAL,
        "example.com",
    ] {
        assert!(!e.takes(&roster_result(&id, from, "")), "{from}");
        assert!(e.handle(now, roster_result(&id, from, "")).is_empty());
    }
    // A result without a roster is a refusal (this user's; not retried, nothing written).
    let empty = Input::Stanza(stanza(&format!(
        "<iq from='{ALICE}' to='{COMPONENT}' id='{id}' type='result'/>"
    )));
    assert!(e.takes(&empty));
    assert!(e.handle(now, empty).is_empty());
    assert!(!e.takes(&roster_result(&id, ALICE, "")));
    // The next wish reads again, and a proper answer is written.
    let id = iq_id(&xml(&e.handle(now, fact(ALICE, &bob, Some("Bob"), true))));
    let out = xml(&e.handle(now, roster_result(&id, ALICE, "")));
    assert!(
        out[0].contains(&format!("<item jid='{bob}' name='Bob'/>")),
        "{out:?}"
    );
}

#[test]
fn roster_pushes_to_the_component_are_acknowledged() {
    let now = Instant::now();
    let mut e = RosterEngine::new(RosterMode::Auto, book(), 1);
    let bob = contact_jid("bob");
    let push = |from: &str, to: &str| {
        Input::Stanza(stanza(&format!(
            "<iq from='{from}' to='{to}' id='push1' type='set'><query xmlns='jabber:iq:roster'><item jid='{bob}' subscription='both'/></query></iq>"
        )))
    };
    let p = push(ALICE, COMPONENT);
    assert!(e.takes(&p));
    assert_eq!(
        xml(&e.handle(now, p)),
        [format!(
            "<iq xmlns='jabber:component:accept' from='{COMPONENT}' id='push1' to='{ALICE}' type='result'/>"
        )]
    );
    // Not from a local user's bare JID, or not to the component: not a push for it (the
    // component's catch-all answers those).
    for (from, to) in [
        ("eve@example.com", COMPONENT),
        ("alice@example.org/pc", COMPONENT),
        (ALICE, bob.as_str()),
    ] {
        assert!(!e.takes(&push(from, to)), "{from} → {to}");
    }
}

#[test]
fn one_operation_per_pair_and_timeouts_give_up() {
    let now = Instant::now();
    let bob = contact_jid("bob");
    let mut e = RosterEngine::new(RosterMode::Auto, book(), 1);
    e.handle(now, grant("both"));
    assert_eq!(
        xml(&e.handle(now, fact(ALICE, &bob, Some("A"), true))).len(),
        1
    );
    // Two more wishes while the first is under way: only the last one waits.
    assert!(e.handle(now, fact(ALICE, &bob, Some("B"), true)).is_empty());
    assert!(e.handle(now, fact(ALICE, &bob, Some("C"), true)).is_empty());
    assert_eq!(e.poll_timeout(), Some(now + IQ_TIMEOUT));
    let later = now + IQ_TIMEOUT;
    let out = xml(&e.handle_timeout(later));
    assert!(out[0].contains("type='get'"), "{}", out[0]);
    let id = iq_id(&out);
    // Its answer: no item yet → a set with the last name.
    let result = roster_result(&id, ALICE, "");
    assert!(e.takes(&result));
    let out = xml(&e.handle(later, result));
    assert_eq!(out.len(), 1);
    assert!(
        out[0].contains(&format!("<item jid='{bob}' name='C'/>")),
        "{}",
        out[0]
    );
    // Someone else's result is not ours.
    let other = Input::Stanza(stanza(&format!(
        "<iq from='{ALICE}' to='{COMPONENT}' id='x' type='result'/>"
    )));
    assert!(!e.takes(&other));
    // An approval without a name still adds the contact; a rename to no name does nothing.
    let mut e = RosterEngine::new(RosterMode::RosterX, book(), 1);
    let out = xml(&e.handle(now, fact(ALICE, &bob, None, true)));
    assert_eq!(
        out,
        [format!(
            "<message xmlns='jabber:component:accept' from='{COMPONENT}' to='{ALICE}'><x xmlns='{NS_ROSTERX}'><item action='add' jid='{bob}'/></x></message>"
        )]
    );
    assert!(e.handle(now, fact(ALICE, &bob, None, false)).is_empty());
}

#[test]
fn renames_go_at_most_once_per_period_the_latest_last() {
    let now = Instant::now();
    let bob = contact_jid("bob");
    let mut e = RosterEngine::new(RosterMode::RosterX, book(), 1);
    assert_eq!(
        xml(&e.handle(now, fact(ALICE, &bob, Some("A"), true))).len(),
        1
    );
    // The first rename goes at once; the next ones within the period wait, the latest wins.
    assert_eq!(
        xml(&e.handle(now, fact(ALICE, &bob, Some("B"), false))).len(),
        1
    );
    let t = now + Duration::from_secs(10);
    assert!(e.handle(t, fact(ALICE, &bob, Some("C"), false)).is_empty());
    assert!(e.handle(t, fact(ALICE, &bob, Some("D"), false)).is_empty());
    // Another contact's rename is not held up.
    let carol = contact_jid("carol");
    assert_eq!(
        xml(&e.handle(t, fact(ALICE, &carol, Some("Carol"), false))).len(),
        1
    );
    assert_eq!(e.poll_timeout(), Some(now + RENAME_DEBOUNCE));
    assert!(
        e.handle_timeout(now + RENAME_DEBOUNCE - Duration::from_secs(1))
            .is_empty()
    );
    let out = xml(&e.handle_timeout(now + RENAME_DEBOUNCE));
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].contains("action='modify'") && out[0].contains("name='D'"),
        "{}",
        out[0]
    );
    assert_eq!(e.poll_timeout(), None);
    // An approval never waits, and takes a waiting rename's place.
    let t = now + RENAME_DEBOUNCE + Duration::from_secs(1);
    assert!(e.handle(t, fact(ALICE, &bob, Some("E"), false)).is_empty());
    let out = xml(&e.handle(t, fact(ALICE, &bob, Some("F"), true)));
    assert!(
        out[0].contains("action='add'") && out[0].contains("name='F'"),
        "{}",
        out[0]
    );
    assert!(e.handle_timeout(t + RENAME_DEBOUNCE).is_empty());
}

#[test]
fn plain_pidf_documents_name_nobody() {
    // The plain document of the world has no display name: nothing is learned.
    assert!(!pidf(BOB_AOR, "away").contains("display-name"));
}

/// A burst beyond the limit of wishes waiting for a grant drops the excess and logs it once
/// with the count, not once per wish; the wishes within the limit still go once the grace
/// period ends.
#[test]
fn a_burst_beyond_the_waiting_limit_is_dropped_and_logged_once() {
    let now = Instant::now();
    let bob = contact_jid("bob");
    let mut e = RosterEngine::new(RosterMode::Auto, book(), 1);
    for i in 0..MAX_IN_FLIGHT + 100 {
        let user = format!("u{i}@{LOCAL}");
        assert!(e.handle(now, fact(&user, &bob, None, true)).is_empty());
    }
    let log = &e.dropped[Dropped::Parked as usize];
    assert_eq!(log.logged_at, Some(now));
    assert_eq!(
        log.unlogged, 99,
        "one logged, the others counted for the next line"
    );
    // A minute on, the next drop is logged with the count.
    let later = now + Duration::from_secs(60);
    e.handle(later, fact("late@example.org", &bob, None, true));
    let log = &e.dropped[Dropped::Parked as usize];
    assert_eq!((log.logged_at, log.unlogged), (Some(later), 0));
    let out = xml(&e.handle_timeout(now + GRANT_GRACE));
    assert_eq!(
        out.len(),
        MAX_IN_FLIGHT,
        "the wishes within the limit go (XEP-0144)"
    );
}
