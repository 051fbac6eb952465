//! Restore from the store and shutdown ([`super::super::persist`], [`PresenceEngine::restore`]).

use super::*;

fn record(direction: Direction, approval: Approval, expires_unix: u64) -> Subscription {
    Subscription {
        direction,
        local_jid: ALICE.into(),
        remote_aor: BOB_AOR.into(),
        dialog: None,
        expires_unix,
        state: SubState::Active,
        approval,
        last_sent: None,
        last_received: None,
        display_name: None,
        updated_unix: 1_699_999_000,
    }
}

/// Bob's watcher dialog `w-1` as the store holds it.
fn stored_dialog(local_cseq: u32, remote_cseq: u32, display: Option<&str>) -> DialogRecord {
    DialogRecord {
        call_id: "w-1".into(),
        local_tag: "ours".into(),
        remote_tag: "lcs1".into(),
        local_uri: "sip:alice@example.org".into(),
        local_display: None,
        remote_uri: BOB_AOR.into(),
        remote_display: display.map(str::to_owned),
        remote_target: "sip:bob@192.0.2.5:5061;transport=tls".into(),
        route_set: vec![],
        local_cseq,
        remote_cseq: Some(remote_cseq),
        created_unix: 1_699_999_000,
    }
}

#[test]
fn restore_resubscribes_probes_and_notifies_once_reachable() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let mut inbound = record(Direction::Inbound, Approval::Approved, 1_700_001_000);
    inbound.dialog = Some(stored_dialog(7, 3, None));
    let mut stale = record(Direction::Inbound, Approval::Approved, 1_699_999_999);
    stale.local_jid = "carol@example.org".into();
    let outbound = record(Direction::Outbound, Approval::Approved, 1_700_003_600);
    let out = e.restore(now, vec![inbound, stale, outbound].into_iter());
    assert_eq!(
        kinds(&out),
        ["forget:inbound", "persist:approved", "stanza:available"]
    );
    // The restore's stanzas are paced too (1,000/s): the probe comes 1 ms later, with the
    // fresh SUBSCRIBE, second in the requests' paced sequence, after the watcher's NOTIFY
    // (which also waits for the interval).
    let first = now + Duration::from_millis(1);
    assert_eq!(e.poll_timeout(), Some(first));
    let paced = e.handle_timeout(first);
    assert_eq!(kinds(&paced), ["stanza:probe", "request:SUBSCRIBE"]);
    // The dialog's next CSeq numbers, reserved in the store before any is used.
    let d = persisted(&out)[0].dialog.clone().unwrap();
    assert_eq!(
        (d.call_id.as_str(), d.local_cseq),
        ("w-1", 7 + CSEQ_RESERVE)
    );
    let s = [stanzas(&out), stanzas(&paced)].concat();
    assert!(
        s[0].contains("from='lcs.example.org'") && s[0].contains(&format!("to='{ALICE}'")),
        "gateway presence: {}",
        s[0]
    );
    assert!(
        s[1].contains(&format!("from='{BOB}'")) && s[1].contains(&format!("to='{ALICE}'")),
        "{}",
        s[1]
    );
    let (tx, sub, route) = requests(&paced).remove(0);
    assert_eq!(route, Route::Domain("contoso.com".into()));
    assert!(sub.to().unwrap().tag().is_none());
    // Approved before the restart: no second `subscribed`.
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(3600))));
    let out = e.on_edge(now, notify("NOTIFY", &sub, 1, "active", Some(AWAY)));
    // The record held no display name: the one the NOTIFY brings is kept (lazily).
    assert_eq!(
        kinds(&out),
        ["stanza:available", "persist-lazy:approved", "respond:200"]
    );
    // The probe's answer arrives; the watcher's NOTIFY goes out after the interval, by
    // domain, in the restored dialog with the next CSeq.
    let out = e.on_stanza(
        now + Duration::from_secs(1),
        pres(
            &format!("from='{ALICE}/phone' to='{BOB}'"),
            "<show>dnd</show>",
        ),
    );
    assert!(requests(&out).is_empty());
    // One interval after the probe went (its answers come before the NOTIFY).
    let at = e.poll_timeout().unwrap();
    assert_eq!(at, first + Duration::from_secs(5));
    let out = e.handle_timeout(at);
    let (_, n, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Domain("contoso.com".into()));
    assert_eq!(n.call_id().unwrap(), "w-1");
    assert_eq!(n.cseq().unwrap().number, 8);
    assert_eq!(n.from().unwrap().tag(), Some("ours"));
    assert!(body(&n).contains("<ep:activity>busy</ep:activity>"));
}

/// A watcher taken up from the store continues its stored dialog: its connection died with
/// the old process, so its NOTIFYs go by domain, and the loss of any connection before one
/// carries them ends nothing. The first connection that carries an answer binds the dialog
/// (connection affinity from then on): its loss ends the dialog locally, as for any live
/// watcher, and LCS's refresh in it gets 481.
#[test]
fn a_restored_watcher_is_bound_by_the_first_connection_that_carries_it() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let mut inbound = record(Direction::Inbound, Approval::Approved, 1_700_001_000);
    inbound.dialog = Some(stored_dialog(7, 3, None));
    e.restore(now, std::iter::once(inbound));
    // Lost connections, the restored dialog's placeholder 0 among them: nothing ends.
    for conn in [0, 4, 12] {
        let out = e.on_edge(now, EdgeEvent::ConnectionLost { conn });
        assert!(out.is_empty(), "{conn}: {:?}", kinds(&out));
    }
    let (t, tx, n) = loop {
        let t = e.poll_timeout().unwrap();
        let out = e.handle_timeout(t);
        if let Some((tx, n, route)) = requests(&out).into_iter().next() {
            assert_eq!(route, Route::Domain("contoso.com".into()));
            break (t, tx, n);
        }
    };
    assert_eq!(n.call_id().unwrap(), "w-1");
    ok(&mut e, t, tx, 12);
    // Bound to 12: the next NOTIFY goes there only.
    let t = t + Duration::from_secs(10);
    let out = e.on_stanza(t, alice(&format!("phone' to='{BOB}'"), "<show>dnd</show>"));
    let (tx, _, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Connection(12));
    ok(&mut e, t, tx, 12);
    let out = e.on_edge(t, EdgeEvent::ConnectionLost { conn: 12 });
    assert_eq!(kinds(&out), ["persist-lazy:approved"]);
    let out = e.on_stanza(t, alice(&format!("phone' to='{BOB}'"), "<show>away</show>"));
    assert!(requests(&out).is_empty());
    let out = e.on_edge(t, lcs_resubscribe("w-1", "ours", 4, 3600, 15));
    assert_eq!(kinds(&out), ["respond:481"]);
}

/// A refresh from LCS in a restored dialog, on whatever connection, binds it there.
#[test]
fn a_refresh_binds_a_restored_watcher_to_its_connection() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let mut inbound = record(Direction::Inbound, Approval::Approved, 1_700_001_000);
    inbound.dialog = Some(stored_dialog(7, 3, None));
    e.restore(now, std::iter::once(inbound));
    let out = e.on_edge(now, lcs_resubscribe("w-1", "ours", 4, 3600, 15));
    assert_eq!(responses(&out)[0].status(), Some(200));
    let (_, n, route) = requests(&out).remove(0);
    assert_eq!(route, Route::Connection(15));
    assert_eq!(n.call_id().unwrap(), "w-1");
    // Another connection's refresh now gets 481.
    let out = e.on_edge(now, lcs_resubscribe("w-1", "ours", 5, 3600, 16));
    assert_eq!(responses(&out)[0].status(), Some(481));
}

#[test]
fn restore_paces_its_subscribes_and_notifies_at_the_restore_rate() {
    // 10 outbound subscriptions and 10 approved watchers with dialogs, at 10 requests/s:
    // one request every 100 ms in store order, the watchers' NOTIFYs never before the
    // interval.
    let now = Instant::now();
    let mut e = engine_with(
        now,
        PresenceSettings {
            restore_rate: 10,
            ..settings()
        },
    );
    let mut records = Vec::new();
    for i in 0..10 {
        let mut r = record(Direction::Outbound, Approval::Approved, 1_700_003_600);
        r.remote_aor = format!("sip:c{i}@contoso.com");
        records.push(r);
    }
    for i in 0..10 {
        let mut r = record(Direction::Inbound, Approval::Approved, 1_700_003_600);
        r.remote_aor = format!("sip:w{i}@contoso.com");
        let mut d = stored_dialog(1, 1, None);
        d.call_id = format!("w-{i}");
        d.remote_uri = r.remote_aor.clone();
        r.dialog = Some(d);
        records.push(r);
    }
    e.restore(now, records.into_iter());
    let mut sent = Vec::new();
    while let Some(at) = e.poll_timeout() {
        if at > now + Duration::from_secs(10) {
            break;
        }
        for (tx, m, _) in requests(&e.handle_timeout(at)) {
            let method = m.method().unwrap().as_str().to_owned();
            sent.push((at.duration_since(now).as_millis(), method.clone()));
            let answer = Message::response_to(
                &m,
                if method == "SUBSCRIBE" { 202 } else { 200 },
                None,
                Some("t"),
            );
            e.on_edge(at, final_event(tx, 9, answer));
        }
    }
    let expected: Vec<(u128, String)> = (0..10)
        .map(|k| (k * 100, "SUBSCRIBE".to_owned()))
        // The 11th to 20th slots (1.0-1.9 s) are before the 5 s interval, which each watcher's
        // NOTIFY waits from its probe (the probes paced at 100 ms after the gateway presence).
        .chain((1..=10).map(|k| (5000 + k * 100, "NOTIFY".to_owned())))
        .collect();
    assert_eq!(sent, expected);
}

/// The records a store holds after a crash, at worst: only the synced writes.
fn synced(store: &mut BTreeMap<(Direction, String), Subscription>, out: &[Output]) {
    for o in out {
        match o {
            Output::Persist(s) => {
                store.insert((s.direction, s.remote_aor.clone()), (**s).clone());
            }
            Output::Forget {
                direction, remote, ..
            } => {
                store.remove(&(*direction, remote.clone()));
            }
            _ => {}
        }
    }
}

#[test]
fn a_restarted_bridge_resumes_a_watcher_dialog_above_every_cseq_it_used() {
    // RFC 3261 §12.2.2: a watcher answers 500 to a NOTIFY whose CSeq is not above the last one
    // in the dialog (LCS, pjsip). The store is written on subscription and approval, not on
    // every NOTIFY; the first process here sends more NOTIFYs than one reservation covers.
    let now = Instant::now();
    let fast = PresenceSettings {
        min_notify_interval: Duration::from_secs(1),
        ..settings()
    };
    let mut e = engine_with(now, fast.clone());
    let mut store = BTreeMap::new();
    let out = e.on_edge(now, lcs_subscribe("w-1", Some(3600)));
    synced(&mut store, &out);
    let (tx, _, _) = requests(&out).remove(0);
    synced(&mut store, &ok(&mut e, now, tx, 4));
    let out = e.on_stanza(now, alice_to_bob("subscribed"));
    synced(&mut store, &out);
    let (mut tx, n, _) = requests(&out).remove(0);
    let mut last = n.cseq().unwrap().number;
    let mut t = now;
    let mut reservations = 0;
    for i in 0..CSEQ_RESERVE + 5 {
        synced(&mut store, &ok(&mut e, t, tx, 4));
        t += Duration::from_secs(2);
        let show = ["away", "dnd"][i as usize % 2];
        let out = e.on_stanza(
            t,
            pres(
                &format!("from='{ALICE}/phone' to='{BOB}'"),
                &format!("<show>{show}</show>"),
            ),
        );
        synced(&mut store, &out);
        if kinds(&out).contains(&"persist:approved".to_owned()) {
            reservations += 1;
            assert_eq!(kinds(&out), ["persist:approved", "request:NOTIFY"]);
        }
        let (next_tx, n, _) = requests(&out).remove(0);
        assert_eq!(n.cseq().unwrap().number, last + 1);
        (tx, last) = (next_tx, last + 1);
    }
    assert_eq!(
        reservations, 1,
        "one synced write per {CSEQ_RESERVE} NOTIFYs"
    );
    // Killed here. The next process resumes the dialog above every CSeq used.
    let later = t + Duration::from_secs(1);
    let mut e = engine_with(later, fast);
    let out = e.restore(later, store.into_values());
    assert_eq!(kinds(&out)[0], "persist:approved");
    let reserved = persisted(&out)[0].dialog.as_ref().unwrap().local_cseq;
    e.on_stanza(
        later,
        pres(
            &format!("from='{ALICE}/phone' to='{BOB}'"),
            "<show>xa</show>",
        ),
    );
    // After the restore's paced stanzas (the gateway's presence, the probe), the NOTIFY.
    let out = (0..10)
        .map(|_| e.handle_timeout(e.poll_timeout().unwrap()))
        .find(|out| !requests(out).is_empty())
        .unwrap();
    let (_, n, _) = requests(&out).remove(0);
    assert_eq!(n.call_id().unwrap(), "w-1");
    let cseq = n.cseq().unwrap().number;
    assert!(cseq > last, "CSeq {cseq} after {last} in the same dialog");
    assert!(cseq <= reserved, "CSeq {cseq} above the stored {reserved}");
}

#[test]
fn restore_asks_again_for_a_watcher_still_waiting_for_its_user() {
    // Alice approved while no bridge was connected (the server bounced the `subscribed`), or
    // the request never reached the server: the watcher is stored as requested.
    let now = Instant::now();
    let mut e = engine_at(now);
    let mut waiting = record(Direction::Inbound, Approval::Requested, 1_700_001_000);
    waiting.state = SubState::Pending;
    // A display name stored by an older version, with characters neither XML nor SIP carry.
    waiting.dialog = Some(stored_dialog(1, 1, Some("Bob\u{1}Ex\u{FFFE}ample\u{7f}")));
    let mut out = e.restore(now, std::iter::once(waiting));
    out.extend(e.handle_timeout(now + Duration::from_millis(1)));
    assert_eq!(
        kinds(&out),
        ["persist:requested", "stanza:available", "stanza:subscribe"]
    );
    let st = &stanzas(&out)[1];
    assert!(
        st.contains(&format!("from='{BOB}'")) && st.contains(&format!("to='{ALICE}'")),
        "{st}"
    );
    assert!(st.contains(">Bob Example</nick>"), "{st}");
    // The server answers for Alice, who approved: active in the restored dialog, and a
    // probe for what Bob may see (the server may not send it after answering by itself).
    let out = e.on_stanza(now, alice_to_bob("subscribed"));
    assert_eq!(
        kinds(&out),
        ["persist:approved", "request:NOTIFY", "stanza:probe"]
    );
    let (_, n, route) = requests(&out).remove(0);
    assert_eq!(n.call_id().unwrap(), "w-1");
    assert_eq!(n.header_error(), None);
    assert_eq!(n.to().unwrap().display_name, Some("Bob Example"));
    assert_eq!(route, Route::Domain("contoso.com".into()));
    assert!(
        n.header("Subscription-State")
            .unwrap()
            .starts_with("active")
    );
}

#[test]
fn restore_without_any_presence_still_notifies_closed() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let mut inbound = record(Direction::Inbound, Approval::Approved, 1_700_001_000);
    inbound.dialog = Some(stored_dialog(1, 1, None));
    e.restore(now, std::iter::once(inbound));
    e.handle_timeout(now + Duration::from_millis(1));
    let out = e.handle_timeout(now + Duration::from_millis(5001));
    assert!(body(&requests(&out)[0].1).contains("<basic>closed</basic>"));
}

#[test]
fn shutdown_sends_unavailable_from_contacts_and_the_gateway() {
    let now = Instant::now();
    let mut e = engine_at(now);
    subscribed(&mut e, now);
    let out = e.shutdown();
    assert_eq!(kinds(&out), ["stanza:unavailable", "stanza:unavailable"]);
    let s = stanzas(&out);
    assert!(s[0].contains(&format!("from='{BOB}'")), "{}", s[0]);
    assert!(s[1].contains("from='lcs.example.org'"), "{}", s[1]);
    assert!(e.shutdown().len() == 1, "contacts are not repeated");
}

#[test]
fn restore_paces_its_stanzas_at_the_restore_rate() {
    let now = Instant::now();
    let mut e = engine_with(
        now,
        PresenceSettings {
            restore_rate: 100,
            ..settings()
        },
    );
    // 300 approved watchers of 300 local users: a gateway presence and a probe for each.
    let subs: Vec<Subscription> = (0..300)
        .map(|i| {
            let mut s = record(Direction::Inbound, Approval::Approved, 1_700_001_000);
            s.local_jid = format!("user{i}@example.org");
            s
        })
        .collect();
    let out = e.restore(now, subs.into_iter());
    assert_eq!(stanzas(&out).len(), 1, "only the first stanza at once");
    let mut sent = 1;
    // At 100/s: 10 ms apart. Half a second later, 50 more.
    let out = e.handle_timeout(now + Duration::from_millis(495));
    sent += stanzas(&out).len();
    assert_eq!(sent, 50);
    // A timer that fires very late sends at most a bounded burst, then keeps the pace.
    let late = now + Duration::from_secs(60);
    let out = e.handle_timeout(late);
    assert_eq!(stanzas(&out).len(), RESTORE_STANZA_BURST);
    sent += RESTORE_STANZA_BURST;
    assert_eq!(e.poll_timeout(), Some(late + Duration::from_millis(10)));
    let mut t = late;
    while sent < 600 {
        t = e.poll_timeout().unwrap();
        sent += stanzas(&e.handle_timeout(t)).len();
    }
    assert_eq!(sent, 600);
    assert!(t >= late + Duration::from_millis(10 * (600 - 50 - 64 - 1)));
}

#[test]
fn a_stored_dialog_that_cannot_be_written_waits_for_a_new_subscribe() {
    // An older version stored a Call-ID with a control character: no request can carry it.
    let now = Instant::now();
    let mut e = engine_at(now);
    let mut inbound = record(Direction::Inbound, Approval::Approved, 1_700_001_000);
    let mut d = stored_dialog(1, 1, None);
    d.call_id = "w-\u{1}1".into();
    inbound.dialog = Some(d);
    let out = e.restore(now, std::iter::once(inbound));
    assert!(
        !kinds(&out).contains(&"persist:approved".to_owned()),
        "{:?}",
        kinds(&out)
    );
    let out = e.handle_timeout(now + Duration::from_secs(5));
    assert!(requests(&out).is_empty(), "{:?}", kinds(&out));
    // The watcher and its approval are kept: LCS's next SUBSCRIBE is answered active.
    let out = e.on_edge(now, lcs_subscribe("w-2", Some(3600)));
    assert_eq!(kinds(&out)[..2], ["persist:approved", "respond:202"]);
}

#[test]
fn restore_probes_from_each_watcher_and_notifies_each_what_it_may_see() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let records: Vec<Subscription> = ["bob", "carol"]
        .iter()
        .map(|user| {
            let mut r = record(Direction::Inbound, Approval::Approved, 1_700_001_000);
            r.remote_aor = format!("sip:{user}@contoso.com");
            let mut d = stored_dialog(1, 1, None);
            d.call_id = format!("w-{user}");
            d.remote_uri = r.remote_aor.clone();
            r.dialog = Some(d);
            r.last_sent = Some(b"<presence>what this watcher was sent</presence>".to_vec());
            r
        })
        .collect();
    let mut out = e.restore(now, records.into_iter());
    out.extend(e.handle_timeout(now + Duration::from_millis(2)));
    assert!(
        requests(&out).is_empty(),
        "no NOTIFY before the probes' answers"
    );
    let probes: Vec<String> = stanzas(&out)
        .into_iter()
        .filter(|s| s.contains("type='probe'"))
        .collect();
    assert_eq!(probes.len(), 2, "one per watcher: {probes:?}");
    assert!(
        probes[0].contains(&format!("from='{BOB}'")),
        "{}",
        probes[0]
    );
    assert!(probes[1].contains(r"from='carol\40contoso.com@lcs.example.org'"));
    // The server answers Bob's (Alice is online); Carol's it does not (she is blocked). Each
    // watcher's NOTIFY waits one interval from its probe: one NOTIFY each, not `closed` first.
    assert!(e.poll_timeout().unwrap() >= now + Duration::from_millis(5001));
    e.on_stanza(
        now + Duration::from_millis(30),
        pres(
            &format!("from='{ALICE}/phone' to='{BOB}'"),
            "<show>dnd</show>",
        ),
    );
    let out = e.handle_timeout(now + Duration::from_millis(5002));
    let docs: BTreeMap<String, String> = requests(&out)
        .into_iter()
        .map(|(_, n, _)| (n.call_id().unwrap().to_owned(), body(&n)))
        .collect();
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert!(docs["w-bob"].contains("<ep:activity>busy</ep:activity>"));
    assert!(docs["w-carol"].contains("<basic>closed</basic>"));
}

/// A restart with more watchers than the restore's stanzas and requests send in one interval:
/// each watcher's NOTIFY still waits for its probe, whose answer it carries (one NOTIFY each,
/// never `closed` first), however the two paced sequences fall.
#[test]
fn each_restored_watchers_notify_waits_for_its_probe() {
    let now = Instant::now();
    let mut e = engine_with(
        now,
        PresenceSettings {
            restore_rate: 10,
            ..settings()
        },
    );
    // 80 watchers (NOTIFY slots up to 8 s, probes behind them by the gateway presence).
    let records = (0..80).map(|i| {
        let mut r = record(Direction::Inbound, Approval::Approved, 1_700_003_600);
        r.remote_aor = format!("sip:c{i:02}@contoso.com");
        let mut d = stored_dialog(2, 1, None);
        d.call_id = format!("w-{i:02}");
        d.remote_uri = r.remote_aor.clone();
        r.dialog = Some(d);
        r
    });
    let mut out = e.restore(now, records);
    let mut t = now;
    let mut notifies: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    while t < now + Duration::from_secs(30) {
        // The server answers each probe at once: Alice is online.
        let probes: Vec<String> = stanzas(&out)
            .into_iter()
            .filter(|s| s.contains("type='probe'"))
            .collect();
        for (tx, m, _) in requests(&out) {
            let open = body(&m).contains("<basic>open</basic>");
            notifies
                .entry(m.call_id().unwrap().to_owned())
                .or_default()
                .push(open);
            e.on_edge(
                t,
                final_event(tx, 9, Message::response_to(&m, 200, None, Some("t"))),
            );
        }
        for p in probes {
            let from = p
                .split("from='")
                .nth(1)
                .unwrap()
                .split('\'')
                .next()
                .unwrap();
            e.on_stanza(t, pres(&format!("from='{ALICE}/pc' to='{from}'"), ""));
        }
        let Some(at) = e.poll_timeout() else { break };
        t = at;
        out = e.handle_timeout(t);
    }
    assert_eq!(notifies.len(), 80);
    assert!(
        notifies.values().all(|v| *v == [true]),
        "{:?}",
        notifies.iter().find(|(_, v)| **v != [true])
    );
}
