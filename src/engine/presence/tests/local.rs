//! Local users' presence aggregated into one document ([`super::super::local`]).

use super::*;
use crate::engine::presence::notifier::Watcher;

#[test]
fn resources_aggregate_by_priority_then_availability() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (_, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    let mut t = now;
    fn step(e: &mut PresenceEngine, t: &mut Instant, stanza: Element) -> String {
        *t += Duration::from_secs(10);
        let out = e.on_stanza(*t, stanza);
        let (tx, n, _) = requests(&out).remove(0);
        ok(e, *t, tx, 4);
        body(&n)
    }
    let b = step(
        &mut e,
        &mut t,
        alice(
            &format!("phone' to='{BOB}'"),
            "<show>dnd</show><priority>5</priority>",
        ),
    );
    assert!(b.contains("<ep:activity>busy</ep:activity>"), "{b}");
    // A lower-priority resource does not win, however available.
    t += Duration::from_secs(10);
    let out = e.on_stanza(
        t,
        alice(&format!("laptop' to='{BOB}'"), "<priority>1</priority>"),
    );
    assert!(requests(&out).is_empty(), "same aggregate: nothing sent");
    // The high-priority one leaves: the laptop's state goes out.
    let b = step(
        &mut e,
        &mut t,
        alice(&format!("phone' to='{BOB}' type='unavailable'"), ""),
    );
    assert!(
        b.contains("<basic>open</basic>") && !b.contains("activity"),
        "{b}"
    );
    // Equal priority: the more available show wins (the laptop's, unchanged: nothing sent).
    t += Duration::from_secs(10);
    let out = e.on_stanza(
        t,
        alice(
            &format!("tablet' to='{BOB}'"),
            "<show>xa</show><priority>1</priority>",
        ),
    );
    assert!(requests(&out).is_empty());
    let b = step(
        &mut e,
        &mut t,
        alice(&format!("laptop' to='{BOB}' type='unavailable'"), ""),
    );
    assert!(
        b.contains("<ep:activity>away</ep:activity>"),
        "the tablet's xa: {b}"
    );
    // All gone: closed.
    let b = step(
        &mut e,
        &mut t,
        alice(&format!("tablet' to='{BOB}' type='unavailable'"), ""),
    );
    assert!(b.contains("<basic>closed</basic>"), "{b}");
}

const CAROL: &str = r"carol\40contoso.com@lcs.example.org";
const CAROL_AOR: &str = "sip:carol@contoso.com";

/// Bob (`w-1`) and Carol (`w-2`) watch Alice, approved, their `active` NOTIFYs answered.
fn two_watchers(e: &mut PresenceEngine, now: Instant) {
    let (_, tx) = watched(e, now);
    ok(e, now, tx, 4);
    let out = e.on_edge(now, lcs_subscribe_from("carol", "Carol", "w-2", Some(3600)));
    let (tx, _, _) = requests(&out).remove(0);
    ok(e, now, tx, 4);
    let out = e.on_stanza(
        now,
        pres(
            &format!("from='{ALICE}' to='{CAROL}' type='subscribed'"),
            "",
        ),
    );
    let (tx, _, _) = requests(&out).remove(0);
    ok(e, now, tx, 4);
}

/// Alice's presence from `resource` to `to` (`kind`: a type attribute or "").
fn from_alice(resource: &str, to: &str, kind: &str, inner: &str) -> Element {
    let kind = if kind.is_empty() {
        String::new()
    } else {
        format!(" type='{kind}'")
    };
    pres(&format!("from='{ALICE}/{resource}' to='{to}'{kind}"), inner)
}

/// (Call-ID, document) of each NOTIFY in `out`, each answered 200 at `t`.
fn notified(e: &mut PresenceEngine, t: Instant, out: &[Output]) -> Vec<(String, String)> {
    let mut got = Vec::new();
    for (tx, n, _) in requests(out) {
        got.push((n.call_id().unwrap().to_owned(), body(&n)));
        ok(e, t, tx, 4);
    }
    got
}

/// The server's broadcast: one copy to each watcher, at `t`; the NOTIFYs answered.
fn broadcast(e: &mut PresenceEngine, t: Instant, kind: &str, inner: &str) -> Vec<(String, String)> {
    let mut got = Vec::new();
    for to in [BOB, CAROL] {
        let out = e.on_stanza(t, from_alice("phone", to, kind, inner));
        got.extend(notified(e, t, &out));
    }
    got
}

/// Alice's presences held parsed.
fn parsed(e: &PresenceEngine) -> usize {
    e.users.get(ALICE).map_or(0, |u| u.parsed.len())
}

fn watcher<'a>(e: &'a PresenceEngine, aor: &str) -> &'a Watcher {
    &e.inbound[&key(ALICE.into(), aor.into())]
}

#[test]
fn each_watcher_sees_what_was_addressed_to_it() {
    let now = Instant::now();
    let mut e = engine_at(now);
    two_watchers(&mut e, now);
    // The broadcast: each copy changes its watcher's document only.
    let t = now + Duration::from_secs(10);
    let out = e.on_stanza(t, from_alice("phone", BOB, "", "<show>away</show>"));
    let got = notified(&mut e, t, &out);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "w-1");
    assert!(
        got[0].1.contains("<ep:activity>away</ep:activity>"),
        "{got:?}"
    );
    assert!(
        watcher(&e, CAROL_AOR)
            .view
            .doc
            .contains("<basic>closed</basic>")
    );
    let out = e.on_stanza(t, from_alice("phone", CAROL, "", "<show>away</show>"));
    let got = notified(&mut e, t, &out);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "w-2");
    assert!(
        got[0].1.contains("<ep:activity>away</ep:activity>"),
        "{got:?}"
    );
    // Directed unavailable to Bob (RFC 6121 §4.6): Bob alone sees Alice offline.
    let t = t + Duration::from_secs(10);
    let out = e.on_stanza(t, from_alice("phone", BOB, "unavailable", ""));
    let got = notified(&mut e, t, &out);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "w-1");
    assert!(got[0].1.contains("<basic>closed</basic>"), "{got:?}");
    assert!(
        e.poll_timeout()
            .is_none_or(|at| at > t + Duration::from_secs(60))
    );
    assert!(watcher(&e, CAROL_AOR).view.doc.contains("away"));
    // A refresh from Carol is answered with what she may see: still away.
    let out = e.on_edge(t, lcs_resubscribe("w-2", &carol_tag(&e), 2, 3600, 4));
    let got = notified(&mut e, t, &out);
    assert!(
        got[0].1.contains("<ep:activity>away</ep:activity>"),
        "{got:?}"
    );
    // The next broadcast reaches both again.
    let t = t + Duration::from_secs(10);
    let got = broadcast(&mut e, t, "", "<show>dnd</show>");
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["w-1", "w-2"]);
    assert!(got.iter().all(|(_, b)| b.contains("busy")), "{got:?}");
    // A directed available presence to Carol: Carol alone.
    let t = t + Duration::from_secs(10);
    let out = e.on_stanza(t, from_alice("phone", CAROL, "", "<show>chat</show>"));
    let got = notified(&mut e, t, &out);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "w-2");
    assert!(!got[0].1.contains("busy"), "{got:?}");
    assert!(watcher(&e, BOB_AOR).view.doc.contains("busy"));
}

/// Carol's dialog tag (the bridge's), for in-dialog requests.
fn carol_tag(e: &PresenceEngine) -> String {
    let d = watcher(e, CAROL_AOR).dialog.as_ref().unwrap();
    d.id.local_tag.clone()
}

#[test]
fn a_blocked_or_invisible_user_is_offline_for_those_watchers_only() {
    let now = Instant::now();
    let mut e = engine_at(now);
    two_watchers(&mut e, now);
    let t = now + Duration::from_secs(10);
    broadcast(&mut e, t, "", "");
    // Alice blocks Carol (XEP-0191 §3.3): the server sends Carol unavailable from each
    // resource, then leaves her out of the broadcasts.
    let t = t + Duration::from_secs(10);
    let out = e.on_stanza(t, from_alice("phone", CAROL, "unavailable", ""));
    let got = notified(&mut e, t, &out);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "w-2");
    assert!(got[0].1.contains("<basic>closed</basic>"));
    let t = t + Duration::from_secs(10);
    let out = e.on_stanza(t, from_alice("phone", BOB, "", "<show>away</show>"));
    let got = notified(&mut e, t, &out);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "w-1");
    assert!(
        watcher(&e, CAROL_AOR)
            .view
            .doc
            .contains("<basic>closed</basic>")
    );
    // A second resource, broadcast to Bob only, does not reach Carol either.
    let out = e.on_stanza(
        t,
        from_alice("laptop", BOB, "", "<priority>9</priority><show>dnd</show>"),
    );
    assert!(requests(&out).is_empty(), "coalesced for Bob");
    assert!(
        watcher(&e, CAROL_AOR)
            .view
            .doc
            .contains("<basic>closed</basic>")
    );
    // Invisible to everyone (XEP-0186: unavailable to each contact), then a directed presence
    // to Bob: Bob alone sees her.
    let t = t + Duration::from_secs(10);
    for resource in ["phone", "laptop"] {
        let out = e.on_stanza(t, from_alice(resource, BOB, "unavailable", ""));
        notified(&mut e, t, &out);
    }
    assert!(
        watcher(&e, BOB_AOR)
            .view
            .doc
            .contains("<basic>closed</basic>")
    );
    let t = t + Duration::from_secs(10);
    let out = e.on_stanza(t, from_alice("phone", BOB, "", ""));
    let got = notified(&mut e, t, &out);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "w-1");
    assert!(got[0].1.contains("<basic>open</basic>"));
    assert!(
        watcher(&e, CAROL_AOR)
            .view
            .doc
            .contains("<basic>closed</basic>")
    );
}

#[test]
fn presences_to_no_watcher_change_nothing() {
    let now = Instant::now();
    let mut e = engine_at(now);
    two_watchers(&mut e, now);
    let t = now + Duration::from_secs(10);
    let before = watcher(&e, BOB_AOR).view.clone();
    // To the gateway itself (the user's XEP-0100 subscription to it), to an LCS user who does
    // not watch her, to another local user, from another domain.
    for to in [
        "lcs.example.org",
        r"dave\40contoso.com@lcs.example.org",
        "zoe@example.org",
    ] {
        let out = e.on_stanza(t, from_alice("phone", to, "", "<show>away</show>"));
        assert!(out.is_empty(), "to {to}: {:?}", kinds(&out));
    }
    let out = e.on_stanza(
        t,
        pres(&format!("from='mallory@evil.example/x' to='{BOB}'"), ""),
    );
    assert!(out.is_empty());
    assert!(Arc::ptr_eq(&before, &watcher(&e, BOB_AOR).view));
    assert!(Arc::ptr_eq(&before, &watcher(&e, CAROL_AOR).view));
    assert_eq!(parsed(&e), 0, "nothing parsed for no watcher");
}

#[test]
fn copies_of_one_presence_are_parsed_once_and_share_one_document() {
    let now = Instant::now();
    let mut e = engine_at(now);
    two_watchers(&mut e, now);
    let t = now + Duration::from_secs(10);
    let dnd =
        |to: &str, id: &str| from_alice(&format!("phone' id='{id}"), to, "", "<show>dnd</show>");
    let out = e.on_stanza(t, dnd(BOB, "a"));
    notified(&mut e, t, &out);
    let out = e.on_stanza(t, dnd(CAROL, "b"));
    notified(&mut e, t, &out);
    let (b, c) = (watcher(&e, BOB_AOR), watcher(&e, CAROL_AOR));
    assert!(
        Arc::ptr_eq(&b.view, &c.view),
        "one view for the two watchers"
    );
    assert!(b.view.doc.contains("busy"));
    // One entry, parsed once: held by the cache and the one view.
    assert_eq!(parsed(&e), 1);
    let entry = &e.users[ALICE].parsed[0];
    assert!(Arc::ptr_eq(entry, &b.view.resources[0]));
    assert_eq!(Arc::strong_count(entry), 2);
    // Unavailable from the bare JID ends every resource, and forgets their parsed presences
    // (a client often comes back as a new resource).
    let out = e.on_stanza(
        t + Duration::from_secs(10),
        pres(&format!("from='{ALICE}' to='{BOB}' type='unavailable'"), ""),
    );
    let got = notified(&mut e, t + Duration::from_secs(10), &out);
    assert!(got[0].1.contains("<basic>closed</basic>"));
    assert_eq!(parsed(&e), 0);
    // The same dnd again counts (parsed anew, and Bob's document changes back).
    let t = t + Duration::from_secs(20);
    let out = e.on_stanza(t, dnd(BOB, "d"));
    let got = notified(&mut e, t, &out);
    assert!(got[0].1.contains("busy"), "{got:?}");
    assert_eq!(parsed(&e), 1);
}

#[test]
fn a_watcher_approved_before_anything_was_addressed_to_it_probes_for_it() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_edge(now, lcs_subscribe("w-1", Some(3600)));
    let (tx, _, _) = requests(&out).remove(0);
    ok(&mut e, now, tx, 4);
    let out = e.on_stanza(now, alice_to_bob("subscribed"));
    assert_eq!(
        kinds(&out),
        ["persist:approved", "request:NOTIFY", "stanza:probe"]
    );
    let probe = &stanzas(&out)[0];
    assert!(
        probe.contains(&format!("from='{BOB}'")) && probe.contains(&format!("to='{ALICE}'")),
        "{probe}"
    );
    // A presence addressed to a watcher still waiting is kept for its `active` NOTIFY.
    let out = e.on_edge(now, lcs_subscribe_from("carol", "Carol", "w-2", Some(3600)));
    let (tx, _, _) = requests(&out).remove(0);
    ok(&mut e, now, tx, 4);
    assert!(
        e.on_stanza(now, from_alice("phone", CAROL, "", "<show>away</show>"))
            .is_empty()
    );
    let out = e.on_stanza(
        now,
        pres(
            &format!("from='{ALICE}' to='{CAROL}' type='subscribed'"),
            "",
        ),
    );
    assert_eq!(
        kinds(&out),
        ["persist:approved", "request:NOTIFY"],
        "no probe"
    );
    assert!(body(&requests(&out)[0].1).contains("<ep:activity>away</ep:activity>"));
}

#[test]
fn views_stay_shared_through_any_sequence_of_broadcasts() {
    let now = Instant::now();
    let mut e = engine_at(now);
    two_watchers(&mut e, now);
    // (resource, type, content): each sent to Bob, then to Carol, as a broadcast.
    let steps: &[(&str, &str, &str)] = &[
        ("pc", "", "<priority>1</priority>"),
        ("phone", "", "<show>away</show><priority>5</priority>"),
        ("tablet", "", "<show>dnd</show>"),
        ("phone", "unavailable", ""),
        ("pc", "", "<show>xa</show><priority>1</priority>"),
        ("phone", "", "<show>chat</show><priority>9</priority>"),
        ("tablet", "unavailable", ""),
        ("", "unavailable", ""),
        ("tablet", "", ""),
        ("pc", "", "<priority>2</priority>"),
        ("pc", "unavailable", ""),
    ];
    let mut model = std::collections::BTreeSet::new();
    let mut t = now;
    for (resource, kind, inner) in steps {
        t += Duration::from_secs(10);
        match (*resource, *kind) {
            ("", _) => model.clear(),
            (r, "unavailable") => {
                model.remove(r);
            }
            (r, _) => {
                model.insert(r.to_owned());
            }
        }
        for to in [BOB, CAROL] {
            let stanza = if resource.is_empty() {
                pres(&format!("from='{ALICE}' to='{to}' type='{kind}'"), inner)
            } else {
                from_alice(resource, to, kind, inner)
            };
            let out = e.on_stanza(t, stanza);
            notified(&mut e, t, &out);
        }
        let (b, c) = (watcher(&e, BOB_AOR), watcher(&e, CAROL_AOR));
        assert!(Arc::ptr_eq(&b.view, &c.view), "after {resource} {kind}");
        let got: Vec<&str> = b.view.resources.iter().map(|r| &*r.resource).collect();
        let want: Vec<&str> = model.iter().map(String::as_str).collect();
        assert_eq!(got, want, "after {resource} {kind}");
        assert!(parsed(&e) <= model.len());
        assert!(b.sent.as_ref().unwrap().same_doc(&b.view), "sent");
    }
    // The tablet is left: available, no activity.
    let doc = &watcher(&e, BOB_AOR).view.doc;
    assert!(
        doc.contains("<basic>open</basic>") && !doc.contains("activity"),
        "{doc}"
    );
}

#[test]
fn watchers_are_found_by_their_jids_as_written_or_through_the_address_book() {
    let now = Instant::now();
    let mut e = engine_at(now);
    two_watchers(&mut e, now);
    assert_eq!(e.by_jids.len(), 2);
    // JIDs not in their normalised form (a server would not send them, but they are the same
    // JIDs): found through the address book.
    let t = now + Duration::from_secs(10);
    let out = e.on_stanza(
        t,
        pres(
            r"from='Alice@EXAMPLE.org/phone' to='Bob\40Contoso.com@LCS.example.org'",
            "<show>away</show>",
        ),
    );
    let got = notified(&mut e, t, &out);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "w-1");
    // A hash collision (simulated: Bob's slot holds Carol): the watcher is checked, and found
    // through the address book.
    let carol_key = key(ALICE.into(), CAROL_AOR.into());
    e.by_jids.insert(e.index_hash(ALICE, BOB), carol_key);
    let t = t + Duration::from_secs(10);
    let out = e.on_stanza(t, from_alice("phone", BOB, "", "<show>dnd</show>"));
    let got = notified(&mut e, t, &out);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "w-1", "Bob's, not Carol's");
    assert!(!watcher(&e, CAROL_AOR).view.doc.contains("busy"));
    // A watcher that ends leaves the index (and its user, with no watcher left, the engine).
    let out = e.on_stanza(t, alice_to_bob("unsubscribed"));
    assert_eq!(kinds(&out), ["forget:inbound", "request:NOTIFY"]);
    // Bob's slot held Carol: it stays (only a slot holding the watcher that ends is freed).
    assert_eq!(e.by_jids.len(), 2);
    let out = e.on_stanza(
        t,
        pres(
            &format!("from='{ALICE}' to='{CAROL}' type='unsubscribed'"),
            "",
        ),
    );
    assert_eq!(kinds(&out), ["forget:inbound", "request:NOTIFY"]);
    assert_eq!(e.by_jids.len(), 1, "Bob's slot, still holding Carol's key");
    assert!(e.users.is_empty());
}

#[test]
fn after_a_lost_stream_each_watcher_is_probed_and_told_anew() {
    let now = Instant::now();
    let mut e = engine_at(now);
    two_watchers(&mut e, now);
    let t = now + Duration::from_secs(10);
    broadcast(&mut e, t, "", "<show>away</show>");
    for to in [BOB, CAROL] {
        let out = e.on_stanza(t, from_alice("laptop", to, "", "<priority>-1</priority>"));
        assert!(requests(&out).is_empty(), "the phone's away still wins");
    }
    // The stream is back: a probe from each approved watcher's own JID.
    let t = t + Duration::from_secs(10);
    let mut out = e.link_restored(t, "lcs.example.org");
    while let Some(at) = e
        .poll_timeout()
        .filter(|at| *at <= t + Duration::from_secs(1))
    {
        out.extend(e.handle_timeout(at));
    }
    let probes: Vec<String> = stanzas(&out)
        .into_iter()
        .filter(|s| s.contains("type='probe'"))
        .collect();
    assert_eq!(probes.len(), 2, "{probes:?}");
    for (probe, from) in probes.iter().zip([BOB, CAROL]) {
        assert!(
            probe.contains(&format!("from='{from}'")) && probe.contains(&format!("to='{ALICE}'")),
            "{probe}"
        );
    }
    // Bob's is answered: the phone went offline unseen, the laptop is what is left. Carol's
    // is not (she is blocked meanwhile): she keeps what she was told.
    let t = t + Duration::from_secs(1);
    let out = e.on_stanza(t, from_alice("laptop", BOB, "", "<priority>-1</priority>"));
    let got = notified(&mut e, t, &out);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "w-1");
    assert!(got[0].1.contains("<basic>open</basic>") && !got[0].1.contains("away"));
    assert!(watcher(&e, CAROL_AOR).view.doc.contains("away"));
    // Carol's view is the stale one: her next presence starts it anew.
    assert!(watcher(&e, CAROL_AOR).view.resources.is_empty());
    let out = e.on_stanza(t, from_alice("tablet", CAROL, "", "<show>xa</show>"));
    let got = notified(&mut e, t, &out);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].1.contains("Extended away"),
        "the tablet alone: {got:?}"
    );
}

/// A watcher's state costs its user's share of the views and one pointer: the watcher is no
/// larger than it was with one document per user, 184 bytes with its display name (a larger
/// one would take the allocator's next size class for each of them).
#[test]
fn a_watcher_is_no_larger_than_before() {
    assert!(
        std::mem::size_of::<Watcher>() <= 184,
        "{}",
        std::mem::size_of::<Watcher>()
    );
}
