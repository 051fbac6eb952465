//! The notifier side: LCS watchers of local users ([`super::super::notifier`]).

use super::*;

#[test]
fn an_lcs_subscribe_is_stored_before_202_then_pending_and_a_subscribe_stanza() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_edge(now, lcs_subscribe("w-1", Some(7200)));
    assert_eq!(
        kinds(&out),
        [
            "persist:requested",
            "stanza:subscribe",
            "respond:202",
            "request:NOTIFY"
        ]
    );
    let s = &persisted(&out)[0];
    assert_eq!(s.direction, Direction::Inbound);
    assert_eq!(
        (s.local_jid.as_str(), s.remote_aor.as_str()),
        (ALICE, BOB_AOR)
    );
    assert_eq!(s.expires_unix, 1_700_000_000 + 3600);
    assert!(s.dialog.is_some());
    let st = &stanzas(&out)[0];
    assert!(st.contains(&format!("from='{BOB}'")), "{st}");
    assert!(st.contains(&format!("to='{ALICE}'")), "{st}");
    assert!(
        st.contains("<nick xmlns='http://jabber.org/protocol/nick'>Bob Example</nick>"),
        "{st}"
    );
    let r = &responses(&out)[0];
    // Granted at most the configured expires.
    assert_eq!(r.header("Expires"), Some("3600"));
    assert!(r.header("Contact").unwrap().contains("transport=tls"));
    let (_, n, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Connection(4));
    assert_eq!(n.header("Subscription-State"), Some("pending;expires=3600"));
    assert_eq!(n.header("Event"), Some("presence"));
    assert!(n.header("Record-Route").is_none());
    assert_eq!(
        n.request_uri(),
        Some("sip:bob@192.0.2.5:5061;transport=tls")
    );
    assert_eq!(n.call_id().unwrap(), "w-1");
    assert!(n.body().is_empty());
}

#[test]
fn approval_sends_active_with_the_profile_document_and_refusal_rejects() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_edge(now, lcs_subscribe("w-1", Some(3600)));
    let (tx, _, _) = requests(&out).remove(0);
    ok(&mut e, now, tx, 4);
    // Alice's presence to Bob (say, directed) before she approves: kept for the `active`.
    e.on_stanza(
        now,
        alice(
            &format!("phone' to='{BOB}'"),
            "<show>away</show><nick xmlns='http://jabber.org/protocol/nick'>Alice A.</nick>",
        ),
    );
    let out = e.on_stanza(now, alice_to_bob("subscribed"));
    assert_eq!(kinds(&out), ["persist:approved", "request:NOTIFY"]);
    assert_eq!(persisted(&out)[0].state, SubState::Active);
    let (_, n, _) = requests(&out).remove(0);
    assert_eq!(n.header("Subscription-State"), Some("active;expires=3600"));
    assert_eq!(n.header("Content-Type"), Some("application/pidf+xml"));
    let b = body(&n);
    assert_eq!(b.matches("<tuple").count(), 1, "{b}");
    assert!(b.contains("entity=\"sip:alice@example.org\""), "{b}");
    assert!(b.contains("<ep:activity>away</ep:activity>"), "{b}");
    assert!(
        b.contains("<ci:display-name>Alice A. (XMPP)</ci:display-name>"),
        "{b}"
    );
    assert!(
        b.contains("<ci:icon>https://example.org/brand16.png</ci:icon>"),
        "{b}"
    );
    // A second `subscribed` changes nothing.
    assert!(e.on_stanza(now, alice_to_bob("subscribed")).is_empty());
    // Refusal (revocation): forgotten, then terminated;reason=rejected.
    let out = e.on_stanza(now, alice_to_bob("unsubscribed"));
    assert_eq!(kinds(&out), ["forget:inbound", "request:NOTIFY"]);
    let (_, n, _) = requests(&out).remove(0);
    assert_eq!(
        n.header("Subscription-State"),
        Some("terminated;reason=rejected")
    );
    assert!(n.body().is_empty());
    assert_eq!(e.counts(), (0, 0));
}

#[test]
fn bursts_are_coalesced_per_watcher_and_the_last_state_goes_out() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_edge(now, lcs_subscribe("w-1", Some(3600)));
    let (tx, _, _) = requests(&out).remove(0);
    ok(&mut e, now, tx, 4);
    e.on_stanza(now, alice(&format!("phone' to='{BOB}'"), ""));
    let out = e.on_stanza(now, alice_to_bob("subscribed"));
    let (tx, _, _) = requests(&out).remove(0);
    ok(&mut e, now, tx, 4);
    // The active NOTIFY went out at `now`: changes within 5 s wait.
    for (i, show) in ["away", "dnd", "xa"].iter().enumerate() {
        let at = now + Duration::from_secs(1 + i as u64);
        let out = e.on_stanza(
            at,
            alice(
                &format!("phone' to='{BOB}'"),
                &format!("<show>{show}</show>"),
            ),
        );
        assert!(requests(&out).is_empty(), "{show}");
    }
    assert_eq!(e.poll_timeout(), Some(now + Duration::from_secs(5)));
    assert!(
        requests(&e.handle_timeout(now + Duration::from_secs(4))).is_empty(),
        "not before the interval"
    );
    let out = e.handle_timeout(now + Duration::from_secs(5));
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    let b = body(&reqs[0].1);
    assert!(
        b.contains("<ep:activity>away</ep:activity>") && b.contains("Extended away"),
        "the final state (xa): {b}"
    );
    // While that NOTIFY is unanswered, nothing more goes out; after its 200, the next change
    // waits for the interval again.
    let t = now + Duration::from_secs(11);
    assert!(requests(&e.on_stanza(t, alice(&format!("phone' to='{BOB}'"), ""))).is_empty());
    let out = ok(&mut e, t, reqs[0].0, 4);
    assert_eq!(
        requests(&out).len(),
        1,
        "the owed state, the interval having passed"
    );
}

/// Approved before the server sent the user's presence to the contact (it does right after
/// `subscribed`): the `active` NOTIFY says closed, and the first known state follows at once,
/// not an interval later (LCS would show the user offline meanwhile). Later changes are
/// coalesced again.
#[test]
fn the_first_known_state_after_a_blind_approval_goes_at_once() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (_, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    let t = now + Duration::from_millis(20);
    let out = e.on_stanza(t, alice(&format!("phone' to='{BOB}'"), ""));
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1, "at once: {:?}", kinds(&out));
    assert!(body(&reqs[0].1).contains("<basic>open</basic>"));
    ok(&mut e, t, reqs[0].0, 4);
    let out = e.on_stanza(t, alice(&format!("phone' to='{BOB}'"), "<show>away</show>"));
    assert!(requests(&out).is_empty(), "coalesced again");
    assert_eq!(e.poll_timeout(), Some(t + Duration::from_secs(5)));
}

#[test]
fn refresh_and_unsubscribe_from_lcs() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tag, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    let t = now + Duration::from_secs(1800);
    let out = e.on_edge(t, lcs_resubscribe("w-1", &tag, 2, 1800, 4));
    assert_eq!(
        kinds(&out),
        ["persist-lazy:approved", "respond:200", "request:NOTIFY"]
    );
    assert_eq!(responses(&out)[0].header("Expires"), Some("1800"));
    let (tx, n, _) = requests(&out).remove(0);
    assert_eq!(n.header("Subscription-State"), Some("active;expires=1800"));
    assert!(body(&n).contains("<basic>closed</basic>"));
    ok(&mut e, t, tx, 4);
    // Expires 0: forgotten, `unsubscribe`, 200, final NOTIFY.
    let out = e.on_edge(t, lcs_resubscribe("w-1", &tag, 3, 0, 4));
    assert_eq!(
        kinds(&out),
        [
            "forget:inbound",
            "stanza:unsubscribe",
            "respond:200",
            "request:NOTIFY"
        ]
    );
    let (_, n, _) = requests(&out).remove(0);
    assert_eq!(
        n.header("Subscription-State"),
        Some("terminated;reason=timeout")
    );
    assert_eq!(e.counts(), (0, 0));
    // An unknown dialog now.
    let out = e.on_edge(t, lcs_resubscribe("w-1", &tag, 4, 3600, 4));
    assert_eq!(kinds(&out), ["respond:481"]);
}

#[test]
fn unrefreshed_watchers_expire_and_old_dialogs_are_deactivated() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (_, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    // No refresh within 3600 s: terminated;reason=timeout.
    assert_eq!(e.poll_timeout(), Some(now + Duration::from_secs(3600)));
    let out = e.handle_timeout(now + Duration::from_secs(3600));
    assert_eq!(kinds(&out), ["forget:inbound", "request:NOTIFY"]);
    assert_eq!(
        requests(&out)[0].1.header("Subscription-State"),
        Some("terminated;reason=timeout")
    );

    // Refreshed past the dialog age (2 h here): deactivated, the approval kept, and the
    // re-SUBSCRIBE in a new dialog goes straight to active without asking Alice again.
    let mut e = engine_at(now);
    let (tag, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    let t = now + Duration::from_secs(5000);
    let out = e.on_edge(t, lcs_resubscribe("w-1", &tag, 2, 3600, 4));
    let (tx, _, _) = requests(&out).remove(0);
    ok(&mut e, t, tx, 4);
    let age = now + Duration::from_secs(7200);
    assert_eq!(e.poll_timeout(), Some(age));
    let out = e.handle_timeout(age);
    assert_eq!(kinds(&out), ["request:NOTIFY", "persist-lazy:approved"]);
    assert_eq!(
        requests(&out)[0].1.header("Subscription-State"),
        Some("terminated;reason=deactivated")
    );
    assert_eq!(e.counts(), (0, 1));
    let out = e.on_edge(age, lcs_subscribe("w-2", Some(3600)));
    assert_eq!(
        kinds(&out),
        ["persist:approved", "respond:202", "request:NOTIFY"]
    );
    assert!(
        requests(&out)[0]
            .1
            .header("Subscription-State")
            .unwrap()
            .starts_with("active")
    );
}

#[test]
fn bad_event_short_expires_and_stray_notifies() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let raw = "SUBSCRIBE sip:alice@example.org SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bKx\r\nMax-Forwards: 70\r\nFrom: <sip:bob@contoso.com>;tag=x\r\nTo: <sip:alice@example.org>\r\nCall-ID: x\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:bob@192.0.2.5>\r\nEvent: dialog\r\nContent-Length: 0\r\n\r\n";
    let out = e.on_edge(
        now,
        EdgeEvent::Request {
            tx: TxIds::default().next(),
            conn: 4,
            request: Message::parse(raw.as_bytes()).unwrap(),
            asserted: None,
        },
    );
    let r = &responses(&out)[0];
    assert_eq!(r.status(), Some(489));
    assert_eq!(r.header("Allow-Events"), Some("presence"));
    let out = e.on_edge(now, lcs_subscribe("w-1", Some(10)));
    let r = &responses(&out)[0];
    assert_eq!(r.status(), Some(423));
    assert_eq!(r.header("Min-Expires"), Some("60"));
    assert_eq!(e.counts(), (0, 0));
    // A NOTIFY for no subscription: 481 (the notifier then drops it).
    let sub = RequestSpec {
        method: Method::Subscribe,
        request_uri: BOB_AOR,
        via_sent_by: "sip.example.org",
        branch: "z9hG4bKq",
        from_display: None,
        from_uri: "sip:alice@example.org",
        from_tag: "old",
        to_display: None,
        to_uri: BOB_AOR,
        to_tag: None,
        call_id: "gone",
        cseq: 1,
        contact: None,
        route: &[],
    }
    .build();
    let out = e.on_edge(now, notify("NOTIFY", &sub, 1, "active", Some(AWAY)));
    assert_eq!(kinds(&out), ["respond:481"]);
    assert!(
        e.on_edge(now, notify("BENOTIFY", &sub, 1, "active", Some(AWAY)))
            .is_empty()
    );
}

#[test]
fn a_fetch_gets_the_state_and_ends() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_edge(now, lcs_subscribe("f-1", Some(0)));
    assert_eq!(kinds(&out), ["respond:202", "request:NOTIFY"]);
    assert_eq!(
        requests(&out)[0].1.header("Subscription-State"),
        Some("terminated;reason=timeout")
    );
    assert_eq!(e.counts(), (0, 0));
}

/// `lcs_subscribe` arriving on connection `conn`.
fn on_conn(event: EdgeEvent, conn: ConnId) -> EdgeEvent {
    match event {
        EdgeEvent::Request {
            tx,
            request,
            asserted,
            ..
        } => EdgeEvent::Request {
            tx,
            conn,
            request,
            asserted,
        },
        other => other,
    }
}

/// The profile's connection affinity ("All messages within a given SIP dialog must be sent
/// over the exact same connection"): the bridge's own subscription whose connection is lost
/// starts anew in a new dialog by domain; an LCS watcher's dialog on a lost connection ends
/// locally — no NOTIFY in it on any other connection, LCS's refresh in it gets 481 (RFC 6665
/// §4.1.2.2: the subscriber then considers the subscription terminated and subscribes anew),
/// and the new SUBSCRIBE is the same watcher, approved: 202 and an active NOTIFY with the
/// current state at once, Alice not asked again.
#[test]
fn connection_loss_resubscribes_outbound_and_ends_inbound_dialogs_locally() {
    let now = Instant::now();
    let mut e = engine_at(now);
    subscribed(&mut e, now);
    let (tag, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    // Outbound dialog lived on 9.
    let out = e.on_edge(now, EdgeEvent::ConnectionLost { conn: 9 });
    assert_eq!(kinds(&out), ["request:SUBSCRIBE"]);
    let (tx, again, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Domain("contoso.com".into()));
    assert!(again.to().unwrap().tag().is_none());
    e.on_edge(now, final_event(tx, 12, answer(&again, 202, Some(3600))));
    let out = e.on_edge(now, notify("NOTIFY", &again, 1, "active", Some(AWAY)));
    assert_eq!(
        kinds(&out),
        ["stanza:available", "respond:200"],
        "no second subscribed"
    );

    // The watcher's dialog lives on 4, a NOTIFY in flight on it when it is lost.
    let t = now + Duration::from_secs(10);
    let out = e.on_stanza(t, alice(&format!("phone' to='{BOB}'"), "<show>away</show>"));
    let (in_flight, _, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Connection(4));
    let out = e.on_edge(t, EdgeEvent::ConnectionLost { conn: 4 });
    // Ended locally: nothing sent, the record kept (approved) without its dialog.
    assert_eq!(kinds(&out), ["persist-lazy:approved"]);
    let Output::PersistLazy(record) = &out[0] else {
        unreachable!()
    };
    assert!(record.dialog.is_none());
    assert_eq!(record.expires_unix, 1_700_000_000 + 3600);
    assert_eq!(e.counts(), (1, 1));
    // The NOTIFY's transport error changes nothing; nor do Alice's changes: no NOTIFY on any
    // connection, now or later.
    let out = e.on_edge(
        t,
        EdgeEvent::Transaction(TxEvent::TransportError { tx: in_flight }),
    );
    assert!(out.is_empty());
    let t = t + Duration::from_secs(10);
    let out = e.on_stanza(t, alice(&format!("phone' to='{BOB}'"), "<show>dnd</show>"));
    assert!(requests(&out).is_empty());
    let out = e.handle_timeout(t + Duration::from_secs(60));
    assert!(requests(&out).is_empty());
    // LCS refreshes in the old dialog on its new connection: 481, nothing else.
    let out = e.on_edge(t, lcs_resubscribe("w-1", &tag, 2, 3600, 7));
    assert_eq!(kinds(&out), ["respond:481"]);
    // ... and subscribes anew there: the same watcher, approved, told the state now.
    let out = e.on_edge(t, on_conn(lcs_subscribe("w-2", Some(3600)), 7));
    assert_eq!(
        kinds(&out),
        ["persist:approved", "respond:202", "request:NOTIFY"]
    );
    let (_, n, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Connection(7));
    assert_eq!(n.call_id().unwrap(), "w-2");
    assert!(
        n.header("Subscription-State")
            .unwrap()
            .starts_with("active")
    );
    assert!(
        body(&n).contains("<ep:activity>busy</ep:activity>"),
        "{}",
        body(&n)
    );
    assert_eq!(e.counts(), (1, 1));
}

/// A watcher that never comes back after its dialog's connection was lost lapses at the
/// expiry it was granted, as an unrefreshed one does (RFC 6665 §4.2.2): its record is
/// forgotten, and no NOTIFY goes anywhere.
#[test]
fn a_watcher_whose_connection_was_lost_and_never_comes_back_expires() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (_, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    e.on_edge(now, EdgeEvent::ConnectionLost { conn: 4 });
    let expiry = now + Duration::from_secs(3600);
    assert_eq!(e.poll_timeout(), Some(expiry));
    let out = e.handle_timeout(expiry);
    assert_eq!(kinds(&out), ["forget:inbound"]);
    assert_eq!(e.counts(), (0, 0));
}

/// A watcher still waiting for its user when its connection is lost: its dialog ends the
/// same way; the user's approval given meanwhile sends nothing (no dialog can carry it), and
/// is what LCS's new SUBSCRIBE finds: 202 and `active` at once, the user not asked again.
#[test]
fn an_approval_given_while_the_watchers_dialog_is_gone_serves_its_new_subscribe() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_edge(now, lcs_subscribe("w-1", Some(3600)));
    let (tx, _, _) = requests(&out).remove(0);
    ok(&mut e, now, tx, 4);
    let out = e.on_edge(now, EdgeEvent::ConnectionLost { conn: 4 });
    assert_eq!(kinds(&out), ["persist-lazy:requested"]);
    let out = e.on_stanza(now, alice_to_bob("subscribed"));
    assert_eq!(kinds(&out), ["persist:approved", "stanza:probe"]);
    let out = e.on_edge(now, on_conn(lcs_subscribe("w-2", Some(3600)), 7));
    assert_eq!(
        kinds(&out),
        ["persist:approved", "respond:202", "request:NOTIFY"]
    );
    let (_, n, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Connection(7));
    assert!(
        n.header("Subscription-State")
            .unwrap()
            .starts_with("active")
    );
}

/// A refresh that arrives on another connection than its dialog's (the peer moved it): the
/// dialog cannot follow it (connection affinity), so the refresh gets 481 and the dialog
/// ends; LCS subscribes anew on its connection (RFC 6665 §4.1.2.2) and is served at once.
/// An unsubscribe (`Expires: 0`) is taken wherever it comes, its final NOTIFY on the
/// dialog's own connection.
#[test]
fn an_in_dialog_subscribe_on_another_connection_gets_481_unless_it_unsubscribes() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tag, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    let t = now + Duration::from_secs(60);
    let out = e.on_edge(t, lcs_resubscribe("w-1", &tag, 2, 3600, 7));
    assert_eq!(kinds(&out), ["respond:481", "persist-lazy:approved"]);
    let out = e.on_stanza(t, alice(&format!("phone' to='{BOB}'"), "<show>dnd</show>"));
    assert!(requests(&out).is_empty());
    // Its own connection cannot revive it either.
    let out = e.on_edge(t, lcs_resubscribe("w-1", &tag, 3, 3600, 4));
    assert_eq!(kinds(&out), ["respond:481"]);
    let out = e.on_edge(t, on_conn(lcs_subscribe("w-2", Some(3600)), 7));
    assert_eq!(
        kinds(&out),
        ["persist:approved", "respond:202", "request:NOTIFY"]
    );
    assert_eq!(requests(&out)[0].2, Route::Connection(7));
    let tag = responses(&out)[0].to().unwrap().tag().unwrap().to_owned();
    let (tx, _, _) = requests(&out).remove(0);
    ok(&mut e, t, tx, 7);
    // An unsubscribe in w-2 on connection 4: taken.
    let out = e.on_edge(t, lcs_resubscribe("w-2", &tag, 2, 0, 4));
    assert_eq!(
        kinds(&out),
        [
            "forget:inbound",
            "stanza:unsubscribe",
            "respond:200",
            "request:NOTIFY"
        ]
    );
    assert_eq!(requests(&out)[0].2, Route::Connection(7));
    assert_eq!(e.counts(), (0, 0));
}

#[test]
fn lcs_resubscribing_after_a_lost_connection_is_the_same_watcher() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (_, tx) = watched(&mut e, now);
    ok(&mut e, now, tx, 4);
    e.on_edge(now, EdgeEvent::ConnectionLost { conn: 4 });
    let out = e.on_edge(now, lcs_subscribe("w-2", Some(3600)));
    // No new `subscribe` to Alice, no second record.
    assert_eq!(
        kinds(&out),
        ["persist:approved", "respond:202", "request:NOTIFY"]
    );
    assert_eq!(requests(&out)[0].2, Route::Connection(4));
    assert_eq!(e.counts(), (0, 1));
    // A failing NOTIFY (timeout) backs off and goes again on the dialog's connection.
    let (tx, _, _) = requests(&out).remove(0);
    e.on_edge(now, EdgeEvent::Transaction(TxEvent::Timeout { tx }));
    let t = now + Duration::from_secs(1);
    assert!(requests(&e.on_stanza(t, alice(&format!("phone' to='{BOB}'"), ""))).is_empty());
    let at = e.poll_timeout().unwrap();
    assert_eq!(at, now + Duration::from_secs(30));
    let out = e.handle_timeout(at);
    assert_eq!(requests(&out)[0].2, Route::Connection(4));
    // A 481 ends the watcher.
    let (tx, _, _) = requests(&out).remove(0);
    let out = e.on_edge(
        at,
        final_event(tx, 4, Message::new_response(481, "No Subscription")),
    );
    assert_eq!(kinds(&out), ["forget:inbound"]);
    assert_eq!(e.counts(), (0, 0));
}

/// A new LCS watcher `from` (`user@domain`) subscribing to local user `to` (`user`).
fn watcher_subscribe(from: &str, to: &str, call_id: &str) -> EdgeEvent {
    let raw = format!(
        "SUBSCRIBE sip:{to}@example.org SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bK{call_id}\nMax-Forwards: 70\nFrom: <sip:{from}>;tag=t{call_id}\nTo: <sip:{to}@example.org>\nCall-ID: {call_id}\nCSeq: 1 SUBSCRIBE\nContact: <sip:{from};transport=tls>\nEvent: presence\nExpires: 3600\nContent-Length: 0\n\n"
    );
    EdgeEvent::Request {
        tx: TxIds::default().next(),
        conn: 4,
        request: Message::parse(raw.replace('\n', "\r\n").as_bytes()).unwrap(),
        asserted: None,
    }
}

#[test]
fn pending_subscriptions_are_limited_per_local_user_and_per_remote_domain() {
    // settings(): at most 2 pending per local user, 3 per remote domain.
    let now = Instant::now();
    let mut e = engine_at(now);
    let status = |out: &[Output]| responses(out)[0].status().unwrap();
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("w1@contoso.com", "alice", "c1"))),
        202
    );
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("w2@contoso.com", "alice", "c2"))),
        202
    );
    // A third for alice: refused, no subscribe stanza for her, nothing stored.
    let out = e.on_edge(now, watcher_subscribe("w3@contoso.com", "alice", "c3"));
    assert_eq!(kinds(&out), ["respond:503"]);
    let r = &responses(&out)[0];
    assert_eq!(
        r.reason(),
        Some("Too many pending subscriptions for this user (presence.max_pending_per_user)")
    );
    assert_eq!(r.header("Retry-After"), Some("600"));
    // The same watcher subscribing again in a new dialog is not a new pending one.
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("w1@contoso.com", "alice", "c1b"))),
        202
    );
    // Alice approves w1: room for one more.
    let w1 = "w1\\40contoso.com@lcs.example.org";
    e.on_stanza(
        now,
        pres(&format!("from='{ALICE}' to='{w1}' type='subscribed'"), ""),
    );
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("w3@contoso.com", "alice", "c4"))),
        202
    );
    // contoso.com now has two pending (w2, w3); one more for carol, then its limit.
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("w4@contoso.com", "carol", "c5"))),
        202
    );
    let out = e.on_edge(now, watcher_subscribe("w5@contoso.com", "dave", "c6"));
    assert_eq!(
        responses(&out)[0].reason(),
        Some("Too many pending subscriptions from contoso.com (presence.max_pending_per_domain)")
    );
    // Another domain is not affected (fabrikam.com, a listed partner, has 4 places); a
    // refusal (unsubscribed) frees a place.
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("x@fabrikam.com", "dave", "c7"))),
        202
    );
    for (i, user) in ["erin", "frank", "gina"].into_iter().enumerate() {
        let (from, call) = (format!("y{i}@fabrikam.com"), format!("f{i}"));
        let out = e.on_edge(now, watcher_subscribe(&from, user, &call));
        assert_eq!(status(&out), 202);
    }
    let out = e.on_edge(now, watcher_subscribe("z@fabrikam.com", "hank", "f9"));
    assert_eq!(
        responses(&out)[0].reason(),
        Some("Too many pending subscriptions from fabrikam.com (presence.max_pending_per_partner)")
    );
    assert_eq!(
        e.limit_hits()
            .iter()
            .map(|(k, n)| (*k, *n))
            .collect::<Vec<_>>(),
        [
            ("presence.max_pending_per_domain", 1),
            ("presence.max_pending_per_partner", 1),
            ("presence.max_pending_per_user", 1)
        ]
    );
    let w4 = "w4\\40contoso.com@lcs.example.org";
    e.on_stanza(
        now,
        pres(
            &format!("from='carol@example.org' to='{w4}' type='unsubscribed'"),
            "",
        ),
    );
    assert_eq!(
        status(&e.on_edge(now, watcher_subscribe("w5@contoso.com", "dave", "c8"))),
        202
    );
}

/// A SUBSCRIBE for Alice from bob@contoso.com with these extra header lines and body, on
/// connection 4.
fn lync_subscribe(call_id: &str, headers: &str, body: &str) -> EdgeEvent {
    let raw = format!(
        "SUBSCRIBE sip:alice@example.org SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\nFrom: \"Bob\" <sip:bob@contoso.com>;tag=38209ebf3e;epid=d6277c8671\r\nTo: <sip:alice@example.org>\r\nCall-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:bob@contoso.com:1620;maddr=192.0.2.5;transport=tls>;proxy=replace\r\nEvent: presence\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    EdgeEvent::Request {
        tx: TxIds::default().next(),
        conn: 4,
        request: Message::parse(raw.as_bytes()).unwrap(),
        asserted: None,
    }
}

/// The status of the engine's answer to `event`, and the answer.
fn answer_to(e: &mut PresenceEngine, now: Instant, event: EdgeEvent) -> Message {
    responses(&e.on_edge(now, event)).remove(0)
}

#[test]
fn lync_subscribes_are_served_pidf_and_advertise_nothing_not_implemented() {
    let now = Instant::now();
    let mut e = engine_at(now);
    // [MS-PRES] §4.11: PIDF last in Accept, ms-benotify and ms-piggyback-first-notify
    // supported, Proxy-Require ms-benotify, no Expires.
    let r = answer_to(
        &mut e,
        now,
        lync_subscribe(
            "ms-4-11",
            "User-Agent: LCC/1.3\r\nAccept: application/xpidf+xml, text/xml+msrtc.pidf, application/pidf+xml\r\nSupported: ms-benotify\r\nProxy-Require: ms-benotify\r\nSupported: ms-piggyback-first-notify\r\n",
            "",
        ),
    );
    assert_eq!(r.status(), Some(202));
    // No Expires: the default hour, within the configured maximum.
    assert_eq!(r.header("Expires"), Some("3600"));
    // Neither the piggybacked first NOTIFY nor BENOTIFY is promised ([MS-SIP] §3.4.5.1, §4.4).
    assert_eq!(r.header("Supported"), None);
    assert_eq!(r.header("Require"), None);
    // pidgin-sipe's single-resource category subscription to a contact: the body is ignored,
    // the subscription is to the To user.
    let body = r#"<batchSub xmlns="http://schemas.microsoft.com/2006/01/sip/batch-subscribe" uri="sip:carol@contoso.com" name=""><action name="subscribe" id="63792024"><adhocList><resource uri="sip:alice@example.org"/></adhocList><categoryList xmlns="http://schemas.microsoft.com/2006/09/sip/categorylist"><category name="calendarData"/><category name="contactCard"/><category name="note"/><category name="state"/></categoryList></action></batchSub>"#;
    let out = e.on_edge(
        now,
        lync_subscribe(
            "sipe-single",
            "Accept: application/msrtc-event-categories+xml, text/xml+msrtc.pidf, application/xpidf+xml, application/pidf+xml, application/rlmi+xml, multipart/related\r\nSupported: ms-piggyback-first-notify\r\nSupported: com.microsoft.autoextend\r\nSupported: ms-benotify\r\nProxy-Require: ms-benotify\r\nContent-Type: application/msrtc-adrl-categorylist+xml\r\n",
            body,
        ),
    );
    assert_eq!(
        kinds(&out).last().map(String::as_str),
        Some("request:NOTIFY")
    );
    let r = responses(&out).remove(0);
    assert_eq!((r.status(), r.header("Supported")), (Some(202), None));
    assert_eq!(e.counts().1, 1, "one watcher, bob, of alice");
}

#[test]
fn accept_without_pidf_or_with_pidf_at_q0_or_empty_gets_406() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let refused = [
        "Accept: application/xpidf+xml\r\n",
        "Accept: application/msrtc-event-categories+xml, text/xml+msrtc.pidf, application/xpidf+xml\r\n",
        "Accept: application/pidf+xml;q=0\r\n",
        "Accept: application/xpidf+xml, application/pidf+xml; q=0.000\r\n",
        "Accept: */*, application/pidf+xml;q=0\r\n",
        "Accept: application/*;q=0\r\n",
        // RFC 3261 §20.1: present but empty, nothing is acceptable.
        "Accept: \r\n",
    ];
    for (i, accept) in refused.iter().enumerate() {
        let r = answer_to(&mut e, now, lync_subscribe(&format!("r{i}"), accept, ""));
        assert_eq!(r.status(), Some(406), "{accept}");
        assert_eq!(r.header("Accept"), Some("application/pidf+xml"), "{accept}");
    }
    assert_eq!(e.counts(), (0, 0), "nothing stored");
    let served = [
        // No Accept: PIDF (RFC 3856 §6.7).
        "",
        "Accept: application/pidf+xml;q=0.1\r\n",
        "Accept: */*;q=0, application/pidf+xml\r\n",
        "Accept: application/*\r\n",
    ];
    for (i, accept) in served.iter().enumerate() {
        let r = answer_to(&mut e, now, lync_subscribe(&format!("a{i}"), accept, ""));
        assert_eq!(r.status(), Some(202), "{accept:?}");
    }
}
