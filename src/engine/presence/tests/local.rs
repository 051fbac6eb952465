//! Local users' presence aggregated into one document ([`super::super::local`]).

use super::*;

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
            "phone' to='lcs.example.org'",
            "<show>dnd</show><priority>5</priority>",
        ),
    );
    assert!(b.contains("<ep:activity>busy</ep:activity>"), "{b}");
    // A lower-priority resource does not win, however available.
    t += Duration::from_secs(10);
    let out = e.on_stanza(
        t,
        alice("laptop' to='lcs.example.org'", "<priority>1</priority>"),
    );
    assert!(requests(&out).is_empty(), "same aggregate: nothing sent");
    // The high-priority one leaves: the laptop's state goes out.
    let b = step(
        &mut e,
        &mut t,
        alice("phone' to='lcs.example.org' type='unavailable'", ""),
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
            "tablet' to='lcs.example.org'",
            "<show>xa</show><priority>1</priority>",
        ),
    );
    assert!(requests(&out).is_empty());
    let b = step(
        &mut e,
        &mut t,
        alice("laptop' to='lcs.example.org' type='unavailable'", ""),
    );
    assert!(
        b.contains("<ep:activity>away</ep:activity>"),
        "the tablet's xa: {b}"
    );
    // All gone: closed.
    let b = step(
        &mut e,
        &mut t,
        alice("tablet' to='lcs.example.org' type='unavailable'", ""),
    );
    assert!(b.contains("<basic>closed</basic>"), "{b}");
}

#[test]
fn repeated_presences_are_skipped_until_the_resource_goes_unavailable() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (_, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    let dnd =
        |to: &str, id: &str| alice(&format!("phone' to='{to}' id='{id}'"), "<show>dnd</show>");
    let t = now + Duration::from_secs(10);
    let out = e.on_stanza(t, dnd(BOB, "a"));
    let (tx, n, _) = requests(&out).remove(0);
    assert!(body(&n).contains("busy"));
    ok(&mut e, t, tx, 4);
    // The same presence to other contacts (the server's fan-out): taken as the same.
    assert!(e.repeated(&dnd("carol@lcs.example.org", "b")));
    assert!(!e.repeated(&alice("phone' to='x@lcs.example.org'", "<show>away</show>")));
    assert!(!e.repeated(&dnd(BOB, "c")), "dnd again after away");
    // Unavailable from the bare JID ends every resource: the same dnd counts again.
    let t = t + Duration::from_secs(10);
    let out = e.on_stanza(
        t,
        pres(&format!("from='{ALICE}' to='{BOB}' type='unavailable'"), ""),
    );
    let (tx, n, _) = requests(&out).remove(0);
    assert!(body(&n).contains("<basic>closed</basic>"));
    ok(&mut e, t, tx, 4);
    let t = t + Duration::from_secs(10);
    let out = e.on_stanza(t, dnd(BOB, "d"));
    let (_, n, _) = requests(&out).remove(0);
    assert!(body(&n).contains("busy"), "{}", body(&n));
    // A resource that goes unavailable is not kept (clients often come back as a new one).
    assert_eq!(e.last_raw.len(), 1);
    e.on_stanza(
        t,
        alice(&format!("phone' to='{BOB}' type='unavailable'"), ""),
    );
    assert!(e.last_raw.is_empty());
}
