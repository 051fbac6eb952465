//! The subscriber side: an XMPP user's subscription to an LCS user ([`super::super::subscriber`]),
//! and the gateway's own JID.

use super::*;

#[test]
fn subscribe_sends_a_presence_subscribe_after_persisting_it() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(now, alice_to_bob("subscribe"));
    assert_eq!(kinds(&out), ["persist:requested", "request:SUBSCRIBE"]);
    let s = &persisted(&out)[0];
    assert_eq!(
        (s.direction, s.local_jid.as_str(), s.remote_aor.as_str()),
        (Direction::Outbound, ALICE, BOB_AOR)
    );
    assert_eq!(s.state, SubState::Pending);
    let (_, sub, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Domain("contoso.com".into()));
    assert_eq!(sub.request_uri(), Some(BOB_AOR));
    assert_eq!(sub.from().unwrap().uri, "sip:alice@example.org");
    assert_eq!(sub.to().unwrap().uri, BOB_AOR);
    assert!(sub.to().unwrap().tag().is_none());
    assert_eq!(sub.header("Event"), Some("presence"));
    // Microsoft enhanced presence offered first, PIDF last (tests/enhanced.rs).
    assert_eq!(
        sub.header("Accept"),
        Some(crate::engine::presence::subscriber::ENHANCED_ACCEPT)
    );
    assert_eq!(sub.header("Expires"), Some("3600"));
    assert!(sub.header("Contact").unwrap().contains(";transport=tls"));
    assert!(!sub.to_bytes().windows(5).any(|w| w == b"sips:"));
    // A second subscribe while pending sends nothing new.
    assert!(e.on_stanza(now, alice_to_bob("subscribe")).is_empty());
    assert_eq!(e.counts(), (1, 0));
}

#[test]
fn active_notify_gives_subscribed_once_then_presence() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(now, alice_to_bob("subscribe"));
    let (tx, sub, _) = requests(&out).remove(0);
    assert!(
        e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(3600))))
            .is_empty()
    );
    let out = e.on_edge(
        now,
        notify("NOTIFY", &sub, 1, "active;expires=3600", Some(AWAY)),
    );
    assert_eq!(
        kinds(&out),
        [
            "persist:approved",
            "stanza:subscribed",
            "stanza:available",
            "respond:200"
        ]
    );
    let s = stanzas(&out);
    assert!(s[0].contains(&format!("from='{BOB}'")), "{}", s[0]);
    assert!(s[0].contains(&format!("to='{ALICE}'")), "{}", s[0]);
    assert!(s[1].contains("<show>away</show>"), "{}", s[1]);
    assert_eq!(persisted(&out)[0].state, SubState::Active);
    // The next NOTIFY: presence only, no second `subscribed`.
    let out = e.on_edge(
        now,
        notify("NOTIFY", &sub, 2, "active;expires=3500", Some(MEETING)),
    );
    assert_eq!(kinds(&out), ["stanza:available", "respond:200"]);
    let s = stanzas(&out);
    assert!(
        s[0].contains("<show>dnd</show>") && s[0].contains("In a meeting"),
        "{}",
        s[0]
    );
    // Closed → unavailable.
    let closed = AWAY.replace(">open<", ">closed<");
    let out = e.on_edge(now, notify("NOTIFY", &sub, 3, "active", Some(&closed)));
    assert!(stanzas(&out)[0].contains("type='unavailable'"));
    // An out-of-order CSeq is refused (RFC 3261 §12.2.2).
    let out = e.on_edge(now, notify("NOTIFY", &sub, 3, "active", Some(AWAY)));
    assert_eq!(responses(&out)[0].status(), Some(500));
}

#[test]
fn pending_notify_gives_nothing_and_benotify_gets_no_response() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(now, alice_to_bob("subscribe"));
    let (tx, sub, _) = requests(&out).remove(0);
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, None)));
    let out = e.on_edge(now, notify("NOTIFY", &sub, 1, "pending;expires=3600", None));
    assert_eq!(kinds(&out), ["respond:200"]);
    let out = e.on_edge(
        now,
        notify("BENOTIFY", &sub, 2, "active;expires=3600", Some(AWAY)),
    );
    assert_eq!(
        kinds(&out),
        ["persist:approved", "stanza:subscribed", "stanza:available"]
    );
    let out = e.on_edge(now, notify("BENOTIFY", &sub, 3, "active", Some(MEETING)));
    assert_eq!(kinds(&out), ["stanza:available"]);
}

#[test]
fn a_notify_before_the_2xx_makes_the_dialog() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(now, alice_to_bob("subscribe"));
    let (tx, sub, _) = requests(&out).remove(0);
    let out = e.on_edge(
        now,
        notify("NOTIFY", &sub, 1, "active;expires=3600", Some(AWAY)),
    );
    assert_eq!(
        kinds(&out),
        [
            "persist:approved",
            "stanza:subscribed",
            "stanza:available",
            "respond:200"
        ]
    );
    e.on_edge(now, final_event(tx, 9, answer(&sub, 200, Some(3600))));
    // The dialog is confirmed: the refresh goes inside it.
    let at = e.poll_timeout().unwrap();
    assert_eq!(at, now + Duration::from_secs(3540));
    let (_, refresh, route) = requests(&e.handle_timeout(at)).remove(0);
    assert_eq!(refresh.to().unwrap().tag(), Some("lcs-tag"));
    assert_eq!(route, Route::Connection(9));
}

#[test]
fn rejected_gives_unsubscribed_and_forgets() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let sub = subscribed(&mut e, now);
    let out = e.on_edge(
        now,
        notify("NOTIFY", &sub, 2, "terminated;reason=rejected", None),
    );
    assert_eq!(
        kinds(&out),
        [
            "forget:outbound",
            "stanza:unsubscribed",
            "stanza:unavailable",
            "respond:200"
        ]
    );
    assert_eq!(e.counts(), (0, 0));
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn deactivated_and_timeout_resubscribe_at_once_then_back_off() {
    for reason in ["deactivated", "timeout"] {
        let now = Instant::now();
        let mut e = engine_at(now);
        let sub = subscribed(&mut e, now);
        let out = e.on_edge(
            now,
            notify(
                "NOTIFY",
                &sub,
                2,
                &format!("terminated;reason={reason}"),
                None,
            ),
        );
        // At once, no `unsubscribed`, and no unavailable flicker.
        assert_eq!(
            kinds(&out),
            ["request:SUBSCRIBE", "respond:200"],
            "{reason}"
        );
        let (tx, again, route) = requests(&out).remove(0);
        assert!(again.to().unwrap().tag().is_none());
        assert_eq!(route, Route::Domain("contoso.com".into()));
        e.on_edge(now, final_event(tx, 9, answer(&again, 202, Some(3600))));
        // Terminated again before any `active`: now it backs off (30 s, then 60 s).
        let out = e.on_edge(
            now,
            notify(
                "NOTIFY",
                &again,
                1,
                &format!("terminated;reason={reason}"),
                None,
            ),
        );
        assert_eq!(
            kinds(&out),
            ["stanza:unavailable", "respond:200"],
            "{reason}"
        );
        assert_eq!(e.poll_timeout(), Some(now + Duration::from_secs(60)));
        assert!(requests(&e.handle_timeout(now + Duration::from_secs(59))).is_empty());
        let out = e.handle_timeout(now + Duration::from_secs(60));
        assert_eq!(kinds(&out), ["request:SUBSCRIBE"]);
        // A later `active` does not send `subscribed` again.
        let later = now + Duration::from_secs(60);
        let (tx, third, _) = requests(&out).remove(0);
        e.on_edge(later, final_event(tx, 9, answer(&third, 202, Some(3600))));
        let out = e.on_edge(later, notify("NOTIFY", &third, 1, "active", Some(AWAY)));
        assert_eq!(kinds(&out), ["stanza:available", "respond:200"]);
    }
}

#[test]
fn probation_noresource_and_no_reason_wait_before_subscribing_again() {
    let cases = [
        ("terminated;reason=probation;retry-after=120", 120),
        ("terminated;reason=probation", 30),
        ("terminated;reason=noresource", 1800),
        ("terminated;reason=giveup", 30),
        ("terminated", 30),
    ];
    for (state, wait) in cases {
        let now = Instant::now();
        let mut e = engine_at(now);
        let sub = subscribed(&mut e, now);
        let out = e.on_edge(now, notify("NOTIFY", &sub, 2, state, None));
        assert_eq!(
            kinds(&out),
            ["stanza:unavailable", "respond:200"],
            "{state}"
        );
        assert_eq!(
            e.poll_timeout(),
            Some(now + Duration::from_secs(wait)),
            "{state}"
        );
        let out = e.handle_timeout(now + Duration::from_secs(wait));
        assert_eq!(kinds(&out), ["request:SUBSCRIBE"], "{state}");
        assert_eq!(e.counts(), (1, 0));
    }
}

#[test]
fn error_responses_to_the_first_subscribe_become_presence_errors() {
    let cases = [
        (404, "item-not-found"),
        (403, "forbidden"),
        (480, "recipient-unavailable"),
        (503, "service-unavailable"),
    ];
    for (status, condition) in cases {
        let now = Instant::now();
        let mut e = engine_at(now);
        let out = e.on_stanza(now, alice_to_bob("subscribe"));
        let (tx, sub, _) = requests(&out).remove(0);
        let out = e.on_edge(now, final_event(tx, 9, answer(&sub, status, None)));
        assert_eq!(kinds(&out), ["forget:outbound", "stanza:error"], "{status}");
        let s = &stanzas(&out)[0];
        assert!(s.contains(condition), "{s}");
        assert!(s.contains(&format!("from='{BOB}'")), "{s}");
        assert!(s.contains(&format!("to='{ALICE}'")), "{s}");
        assert!(s.contains("id='s1'"), "{s}");
        assert_eq!(e.counts(), (0, 0));
    }
    // A timeout and no route.
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tx, _, _) = requests(&e.on_stanza(now, alice_to_bob("subscribe"))).remove(0);
    let out = e.on_edge(now, EdgeEvent::Transaction(TxEvent::Timeout { tx }));
    assert!(stanzas(&out)[0].contains("remote-server-timeout"));
    let (tx, _, _) = requests(&e.on_stanza(now, alice_to_bob("subscribe"))).remove(0);
    let out = e.on_edge(
        now,
        EdgeEvent::Undeliverable {
            tx,
            why: Undeliverable::NoRoute {
                domain: "contoso.com".into(),
                reason: "no SRV".into(),
            },
        },
    );
    assert!(stanzas(&out)[0].contains("remote-server-not-found"));
    // Transactions the engine did not start are not its business.
    assert!(!e.owns(TxIds::default().next()));
    assert!(
        e.on_edge(now, EdgeEvent::Transaction(TxEvent::Timeout { tx }))
            .is_empty()
    );
}

#[test]
fn a_423_raises_expires_and_tries_again() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tx, sub, _) = requests(&e.on_stanza(now, alice_to_bob("subscribe"))).remove(0);
    let mut r = answer(&sub, 423, None);
    r.push_header("Min-Expires", "7200");
    let out = e.on_edge(now, final_event(tx, 9, r));
    let (_, again, _) = requests(&out).remove(0);
    assert_eq!(again.header("Expires"), Some("7200"));
}

#[test]
fn refresh_before_expiry_and_refresh_failures_resubscribe() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tx, sub, _) = requests(&e.on_stanza(now, alice_to_bob("subscribe"))).remove(0);
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(600))));
    assert_eq!(e.poll_timeout(), Some(now + Duration::from_secs(540)));
    let t1 = now + Duration::from_secs(540);
    let out = e.handle_timeout(t1);
    let (tx, refresh, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Connection(9));
    assert_eq!(refresh.method(), Some(&Method::Subscribe));
    assert_eq!(refresh.to().unwrap().tag(), Some("lcs-tag"));
    assert_eq!(refresh.call_id().unwrap(), sub.call_id().unwrap());
    assert_eq!(refresh.cseq().unwrap().number, 2);
    assert_eq!(refresh.header("Expires"), Some("3600"));
    // Nothing else due while the refresh is in flight.
    assert_eq!(e.poll_timeout(), None);
    // 481 to the refresh: the dialog is gone; a fresh SUBSCRIBE after the backoff.
    let out = e.on_edge(t1, final_event(tx, 9, answer(&refresh, 481, None)));
    assert!(requests(&out).is_empty());
    assert_eq!(e.poll_timeout(), Some(t1 + Duration::from_secs(30)));
    let (_, fresh, _) = requests(&e.handle_timeout(t1 + Duration::from_secs(30))).remove(0);
    assert!(fresh.to().unwrap().tag().is_none());
    assert_ne!(fresh.call_id().unwrap(), sub.call_id().unwrap());
}

#[test]
fn unsubscribe_sends_expires_0_after_forgetting() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let sub = subscribed(&mut e, now);
    let out = e.on_stanza(now, alice_to_bob("unsubscribe"));
    assert_eq!(
        kinds(&out),
        ["forget:outbound", "stanza:unavailable", "request:SUBSCRIBE"]
    );
    let (_, unsub, route) = requests(&out).remove(0);
    assert_eq!(unsub.header("Expires"), Some("0"));
    assert_eq!(unsub.to().unwrap().tag(), Some("lcs-tag"));
    assert_eq!(route, Route::Connection(9));
    assert_eq!(e.counts(), (0, 0));
    // The final NOTIFY of that dialog: 481 (nothing to tell anyone).
    let out = e.on_edge(
        now,
        notify("NOTIFY", &sub, 5, "terminated;reason=timeout", None),
    );
    assert_eq!(kinds(&out), ["respond:481"]);
}

#[test]
fn probes_are_answered_from_the_last_notify() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(now, alice_to_bob("subscribe"));
    let (tx, sub, _) = requests(&out).remove(0);
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(3600))));
    // Pending: nothing to say, nothing new to send (the NOTIFY comes with the approval).
    assert!(e.on_stanza(now, alice_to_bob("probe")).is_empty());
    e.on_edge(now, notify("NOTIFY", &sub, 1, "active", Some(AWAY)));
    let out = e.on_stanza(now, alice_to_bob("probe"));
    assert_eq!(kinds(&out), ["stanza:available"]);
    let s = &stanzas(&out)[0];
    assert!(s.contains("<show>away</show>"), "{s}");
    assert!(s.contains(&format!("to='{ALICE}/phone'")), "{s}");
    // A probe for a contact the bridge does not know re-establishes the subscription
    // (the server probes only contacts the user is subscribed to).
    let carol = pres(
        &format!("from='{ALICE}' to='carol\\40contoso.com@lcs.example.org' type='probe'"),
        "",
    );
    let out = e.on_stanza(now, carol);
    assert_eq!(kinds(&out), ["persist:approved", "request:SUBSCRIBE"]);
}

#[test]
fn subscriptions_to_unreachable_addresses_are_refused() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(
        now,
        pres(
            &format!("from='{ALICE}' to='nobody@lcs.example.org' type='subscribe'"),
            "",
        ),
    );
    assert!(stanzas(&out)[0].contains("item-not-found"));
    // From a non-local user: ignored.
    let out = e.on_stanza(
        now,
        pres(
            &format!("from='eve@evil.example' to='{BOB}' type='subscribe'"),
            "",
        ),
    );
    assert!(out.is_empty());
}

#[test]
fn the_gateway_itself_approves_and_is_online() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let out = e.on_stanza(
        now,
        pres(
            &format!("from='{ALICE}' to='lcs.example.org' type='subscribe'"),
            "",
        ),
    );
    assert_eq!(kinds(&out), ["stanza:subscribed", "stanza:available"]);
}

#[test]
fn outbound_dialogs_are_replaced_before_the_age_limit() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let sub = subscribed(&mut e, now);
    // Refresh at 3540 s stays in the dialog (3540 + 3600 < 7200).
    let t1 = now + Duration::from_secs(3540);
    assert_eq!(e.poll_timeout(), Some(t1));
    let (tx, refresh, _) = requests(&e.handle_timeout(t1)).remove(0);
    assert_eq!(refresh.call_id().unwrap(), sub.call_id().unwrap());
    e.on_edge(t1, final_event(tx, 9, answer(&refresh, 200, Some(3600))));
    // The next one would outlive 2 h: Expires 0 in the old dialog and a fresh SUBSCRIBE.
    let t2 = t1 + Duration::from_secs(3540);
    assert_eq!(e.poll_timeout(), Some(t2));
    let out = e.handle_timeout(t2);
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].1.header("Expires"), Some("0"));
    assert_eq!(reqs[0].1.call_id().unwrap(), sub.call_id().unwrap());
    assert_eq!(reqs[0].2, Route::Connection(9));
    assert!(reqs[1].1.to().unwrap().tag().is_none());
    assert_ne!(reqs[1].1.call_id().unwrap(), sub.call_id().unwrap());
    assert_eq!(reqs[1].2, Route::Domain("contoso.com".into()));
    // The new dialog's active NOTIFY: presence, no second `subscribed`.
    let (tx, fresh, _) = reqs[1].clone();
    e.on_edge(t2, final_event(tx, 9, answer(&fresh, 202, Some(3600))));
    let out = e.on_edge(t2, notify("NOTIFY", &fresh, 1, "active", Some(AWAY)));
    assert_eq!(kinds(&out), ["stanza:available", "respond:200"]);
}

#[test]
fn a_benotify_leaves_no_server_transaction_behind() {
    use crate::sip::transaction::{Output as TxOutput, Transactions};
    let now = Instant::now();
    let sub = RequestSpec {
        method: Method::Subscribe,
        request_uri: BOB_AOR,
        via_sent_by: "sip.example.org",
        branch: "z9hG4bKq",
        from_display: None,
        from_uri: "sip:alice@example.org",
        from_tag: "ours",
        to_display: None,
        to_uri: BOB_AOR,
        to_tag: None,
        call_id: "c",
        cseq: 1,
        contact: None,
        route: &[],
    }
    .build();
    let EdgeEvent::Request { request, .. } = notify("BENOTIFY", &sub, 1, "active", Some(AWAY))
    else {
        unreachable!()
    };
    let mut t = Transactions::default();
    t.receive(now, 3, request);
    assert!(matches!(
        t.poll_output(),
        Some(TxOutput::Event(TxEvent::Request { conn: 3, .. }))
    ));
    assert_eq!(t.len(), (0, 0));
}

#[test]
fn a_503_with_retry_after_delays_the_resubscribe_at_least_that_long() {
    // RFC 3261 §21.5.4: a 503's Retry-After says when the peer may be asked again; the
    // subscriber's own backoff (30 s here) does not retry sooner.
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tx, sub, _) = requests(&e.on_stanza(now, alice_to_bob("subscribe"))).remove(0);
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(600))));
    let t1 = now + Duration::from_secs(540);
    let (tx, refresh, _) = requests(&e.handle_timeout(t1)).remove(0);
    let mut r = answer(&refresh, 503, None);
    r.push_header("Retry-After", "300");
    assert!(requests(&e.on_edge(t1, final_event(tx, 9, r))).is_empty());
    assert_eq!(e.poll_timeout(), Some(t1 + Duration::from_secs(300)));
    // A shorter Retry-After than the backoff does not shorten it.
    let (tx, again, _) = requests(&e.handle_timeout(t1 + Duration::from_secs(300))).remove(0);
    let t2 = t1 + Duration::from_secs(300);
    let mut r = answer(&again, 503, None);
    r.push_header("Retry-After", "1");
    e.on_edge(t2, final_event(tx, 9, r));
    assert!(e.poll_timeout() > Some(t2 + Duration::from_secs(1)));
}
