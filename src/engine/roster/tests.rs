//! The roster engine alone, and names and rosters through the whole bridge on the virtual
//! clock (`engine::world`).

use std::time::Duration;

use super::*;
use crate::core::address::AddressMode;
use crate::engine::bridge::{Engine, Input};
use crate::engine::world::{COMPONENT, LOCAL, World, contact_jid, pidf, pidf_named, stanza};
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

#[test]
fn set_only_access_writes_without_reading() {
    let mut w = World::new();
    w.grant_roster("set");
    bob_watches_alice(&mut w, Some("Bob Builder"));
    assert_eq!(roster_iqs(&w), ["set"]);
    assert_eq!(roster_of(&w, ALICE)[0].1, Some("Bob Builder"));
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

#[test]
fn refused_roster_iqs_are_not_retried_and_a_failing_server_gets_suggestions() {
    // A passing refusal (`wait`): logged, not retried; the next change tries again.
    let mut w = World::new();
    w.grant_roster("both");
    w.xmpp.roster_error = Some(("wait", "resource-constraint"));
    bob_watches_alice(&mut w, Some("Bob Builder"));
    w.run_for(Duration::from_secs(600));
    assert_eq!(roster_iqs(&w), ["get"]);
    assert!(w.xmpp.to(ALICE).iter().all(|s| !s.contains(NS_ROSTERX)));
    w.xmpp.roster_error = None;
    w.lcs_subscribes_as(BOB_AOR, Some("Bob B. Builder"), ALICE_URI);
    w.settle();
    assert_eq!(roster_iqs(&w), ["get", "get", "set"]);

    // A server that grants the access but cannot write (ejabberd 23.01 answers a privileged
    // roster set with internal-server-error): not retried; the wish and every later one are
    // suggested (XEP-0144) until the component connects again.
    let mut w = World::new();
    w.grant_roster("both");
    w.xmpp.roster_error = Some(("cancel", "internal-server-error"));
    bob_watches_alice(&mut w, Some("Bob Builder"));
    w.run_for(Duration::from_secs(600));
    assert_eq!(roster_iqs(&w), ["get"]);
    let suggestions = |w: &World| {
        w.xmpp
            .to(ALICE)
            .into_iter()
            .filter(|s| s.contains(NS_ROSTERX))
            .collect::<Vec<_>>()
    };
    assert_eq!(suggestions(&w).len(), 1);
    assert!(
        suggestions(&w)[0].contains("action='add'"),
        "{:?}",
        suggestions(&w)
    );
    w.lcs_subscribes_as(BOB_AOR, Some("Bob B. Builder"), ALICE_URI);
    w.settle();
    assert_eq!(roster_iqs(&w), ["get"]);
    assert!(suggestions(&w)[1].contains("name='Bob B. Builder'"));
    // Connected again: the privilege is tried again.
    w.xmpp.roster_error = None;
    w.link_down();
    w.link_up();
    w.grant_roster("both");
    w.settle();
    w.lcs_subscribes_as(BOB_AOR, Some("Bob the Builder"), ALICE_URI);
    w.settle();
    assert_eq!(roster_iqs(&w), ["get", "get", "set"]);
    assert_eq!(roster_of(&w, ALICE)[0].1, Some("Bob the Builder"));
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

#[test]
fn privileges_are_taken_from_the_server_only_in_either_namespace() {
    let now = Instant::now();
    let mut e = RosterEngine::new(RosterMode::Privilege, book(), 7);
    let message = |from: &str, ns: &str, type_: &str| {
        Input::Stanza(stanza(&format!(
            "<message from='{from}' to='{COMPONENT}'><privilege xmlns='{ns}'><perm access='message' type='outgoing'/><perm access='roster' type='{type_}'/><perm access='presence' type='none'/></privilege></message>"
        )))
    };
    // A user, another server, a resource: not the server speaking.
    for from in ["eve@example.org", "example.com", "example.org/x"] {
        let m = message(from, "urn:xmpp:privilege:2", "both");
        assert!(e.takes(&m));
        e.handle(now, m);
        assert_eq!(e.access(COMPONENT, LOCAL), "none", "{from}");
    }
    // ejabberd 23.01 (version 1), Prosody (version 2).
    e.handle(now, message(LOCAL, "urn:xmpp:privilege:1", "set"));
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
    let grant = Input::Stanza(stanza(&format!(
        "<message from='{LOCAL}' to='{COMPONENT}'><privilege xmlns='urn:xmpp:privilege:2'><perm access='roster' type='both'/></privilege></message>"
    )));
    for (mode, granted, expect) in [
        (RosterMode::Auto, true, "roster get"),
        (RosterMode::Auto, false, "rosterx"),
        (RosterMode::Privilege, true, "roster get"),
        (RosterMode::Privilege, false, "nothing"),
        (RosterMode::RosterX, true, "rosterx"),
        (RosterMode::None, true, "nothing"),
    ] {
        let mut e = RosterEngine::new(mode, book(), 1);
        if granted {
            e.handle(now, grant.clone());
        }
        let out = xml(&e.handle(now, fact(ALICE, &bob, Some("Bob"), true)));
        let got = match out.as_slice() {
            [] => "nothing",
            [one] if one.contains("<query xmlns='jabber:iq:roster'/>") => "roster get",
            [one] if one.contains(NS_ROSTERX) => "rosterx",
            _ => "something else",
        };
        assert_eq!(got, expect, "{mode:?} granted={granted}: {out:?}");
    }
}

#[test]
fn one_operation_per_pair_and_timeouts_give_up() {
    let now = Instant::now();
    let bob = contact_jid("bob");
    let mut e = RosterEngine::new(RosterMode::Auto, book(), 1);
    e.handle(
        now,
        Input::Stanza(stanza(&format!(
            "<message from='{LOCAL}' to='{COMPONENT}'><privilege xmlns='urn:xmpp:privilege:2'><perm access='roster' type='both'/></privilege></message>"
        ))),
    );
    assert_eq!(
        xml(&e.handle(now, fact(ALICE, &bob, Some("A"), true))).len(),
        1
    );
    // Two more wishes while the first is under way: only the last one waits.
    assert!(
        e.handle(now, fact(ALICE, &bob, Some("B"), false))
            .is_empty()
    );
    assert!(
        e.handle(now, fact(ALICE, &bob, Some("C"), false))
            .is_empty()
    );
    assert_eq!(e.poll_timeout(), Some(now + IQ_TIMEOUT));
    let later = now + IQ_TIMEOUT;
    let out = xml(&e.handle_timeout(later));
    assert_eq!(out.len(), 1, "the waiting wish goes next: {out:?}");
    assert!(out[0].contains("type='get'"), "{}", out[0]);
    let id = stanza(&out[0]).attr("id").unwrap().to_owned();
    // Its answer: no item yet → a set with the last name.
    let result = Input::Stanza(stanza(&format!(
        "<iq from='{ALICE}' to='{COMPONENT}' id='{id}' type='result'><query xmlns='jabber:iq:roster'/></iq>"
    )));
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
fn the_name_book_is_bounded() {
    let mut b = NameBook::default();
    for i in 0..(MAX_KNOWN_NAMES + 10) {
        b.learn(&format!("sip:u{i}@contoso.com"), "x");
    }
    assert_eq!(b.len(), MAX_KNOWN_NAMES);
    assert_eq!(b.get("sip:u0@contoso.com"), None);
    assert_eq!(
        b.get(&format!("sip:u{}@contoso.com", MAX_KNOWN_NAMES + 9)),
        Some("x")
    );
    // Relearning one name many times keeps the bookkeeping bounded too.
    for _ in 0..(3 * MAX_KNOWN_NAMES) {
        b.learn("sip:u5@contoso.com", "y");
    }
    assert!(b.order.len() <= 2 * MAX_KNOWN_NAMES + 1);
    assert_eq!(b.get("sip:u5@contoso.com"), Some("y"));
}

#[test]
fn plain_pidf_documents_name_nobody() {
    // The plain document of the world has no display name: nothing is learned.
    assert!(!pidf(BOB_AOR, "away").contains("display-name"));
}
