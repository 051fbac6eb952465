//! Microsoft enhanced presence on the subscriber side: the enhanced SUBSCRIBE, the PIDF-only
//! fallback remembered per domain, and categories / msrtc.pidf NOTIFYs to XMPP presence.

use super::*;
use crate::core::ms_presence::{CATEGORIES_TYPE, CATEGORY_LIST_TYPE, MSRTC_PIDF_TYPE};
use crate::core::presence::Received;
use crate::engine::presence::subscriber::ENHANCED_ACCEPT;

/// A NOTIFY in `sub`'s dialog with a body of type `ct`.
fn notify_as(sub: &Message, cseq: u32, ct: &str, body: &str) -> EdgeEvent {
    let mut ev = notify("NOTIFY", sub, cseq, "active;expires=3600", Some(body));
    if let EdgeEvent::Request { request, .. } = &mut ev {
        request.set_body(Some(ct), body.as_bytes().to_vec());
    }
    ev
}

fn categories(inner: &str) -> String {
    format!(
        r#"<categories xmlns="http://schemas.microsoft.com/2006/09/sip/categories" uri="sip:bob@contoso.com">{inner}</categories>"#
    )
}

fn state(n: u32, activity: &str) -> String {
    format!(
        r#"<category name="state" instance="0" publishTime="2026-01-01T10:00:{:02}"><state xmlns="http://schemas.microsoft.com/2006/09/sip/state" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="aggregateState"><availability>{n}</availability>{activity}</state></category>"#,
        n % 60
    )
}

fn note(kind: &str, text: &str) -> String {
    format!(
        r#"<category name="note" instance="0" publishTime="2026-01-01T10:00:00"><note xmlns="http://schemas.microsoft.com/2006/09/sip/note"><body type="{kind}" uri="">{text}</body></note></category>"#
    )
}

/// Alice subscribes to `to`: the SUBSCRIBE sent.
fn first_subscribe(e: &mut PresenceEngine, now: Instant, to: &str) -> (TxId, Message) {
    let stanza = pres(
        &format!("from='{ALICE}/r' to='{to}' id='s1' type='subscribe'"),
        "",
    );
    let (tx, sub, _) = requests(&e.on_stanza(now, stanza)).remove(0);
    (tx, sub)
}

/// [MS-PRES] §1.3.3 (the server answers in the first `Accept` type it supports) and
/// §2.2.2.4.1 (the category subscription body); without `Require`, as pidgin-sipe's
/// `sipe_subscribe_presence_single` subscribes to one contact.
#[test]
fn the_subscribe_offers_enhanced_presence_with_a_category_list() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (_, sub) = first_subscribe(&mut e, now, BOB);
    assert_eq!(
        sub.header("Accept"),
        Some("application/msrtc-event-categories+xml, text/xml+msrtc.pidf, application/pidf+xml")
    );
    assert_eq!(sub.header("Content-Type"), Some(CATEGORY_LIST_TYPE));
    assert_eq!(sub.header("Require"), None);
    assert_eq!(sub.header("Supported"), Some("ms-benotify"));
    let body = body(&sub);
    assert!(
        body.contains(r#"<resource uri="sip:bob@contoso.com"/>"#),
        "{body}"
    );
    assert!(body.contains(r#"<batchSub xmlns="http://schemas.microsoft.com/2006/01/sip/batch-subscribe" uri="sip:alice@example.org""#), "{body}");
    for c in ["state", "note", "contactCard"] {
        assert!(
            body.contains(&format!(r#"<category name="{c}"/>"#)),
            "{body}"
        );
    }
}

#[test]
fn the_refresh_offers_the_same_and_a_fallback_subscription_refreshes_with_pidf() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tx, sub) = first_subscribe(&mut e, now, BOB);
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(600))));
    let t1 = now + Duration::from_secs(540);
    let (_, refresh, _) = requests(&e.handle_timeout(t1)).remove(0);
    assert_eq!(refresh.to().unwrap().tag(), Some("lcs-tag"));
    assert_eq!(refresh.header("Accept"), Some(ENHANCED_ACCEPT));
    assert_eq!(body(&refresh), body(&sub));
    // After a fallback, refreshes stay PIDF only.
    let mut e = engine_at(now);
    let (tx, sub) = first_subscribe(&mut e, now, BOB);
    let out = e.on_edge(now, final_event(tx, 9, answer(&sub, 488, None)));
    let (tx, again, _) = requests(&out).remove(0);
    e.on_edge(now, final_event(tx, 9, answer(&again, 202, Some(600))));
    let (_, refresh, _) = requests(&e.handle_timeout(t1)).remove(0);
    assert_eq!(refresh.header("Accept"), Some("application/pidf+xml"));
    assert!(refresh.body().is_empty());
}

#[test]
fn presence_enhanced_false_offers_pidf_only() {
    let now = Instant::now();
    let mut e = engine_with(
        now,
        PresenceSettings {
            enhanced: false,
            ..settings()
        },
    );
    let (_, sub) = first_subscribe(&mut e, now, BOB);
    assert_eq!(sub.header("Accept"), Some("application/pidf+xml"));
    assert_eq!(sub.header("Content-Type"), None);
    assert!(sub.body().is_empty());
}

/// A peer that refuses the enhanced form gets the PIDF-only SUBSCRIBE at once, without the
/// user seeing an error; the domain is remembered for a day.
#[test]
fn a_refusal_of_the_enhanced_form_falls_back_to_pidf_and_is_remembered() {
    for status in [400, 406, 415, 420, 488] {
        let now = Instant::now();
        let mut e = engine_at(now);
        let (tx, sub) = first_subscribe(&mut e, now, BOB);
        assert_eq!(sub.header("Accept"), Some(ENHANCED_ACCEPT));
        let out = e.on_edge(now, final_event(tx, 9, answer(&sub, status, None)));
        assert_eq!(kinds(&out), ["request:SUBSCRIBE"], "{status}");
        let (tx2, again, route) = requests(&out).remove(0);
        assert_eq!(route, Route::Domain("contoso.com".into()));
        assert_eq!(
            again.header("Accept"),
            Some("application/pidf+xml"),
            "{status}"
        );
        assert_eq!(again.header("Content-Type"), None);
        assert!(again.body().is_empty());
        assert_ne!(again.call_id().unwrap(), sub.call_id().unwrap());
        // The PIDF-only subscription goes on as today.
        e.on_edge(now, final_event(tx2, 9, answer(&again, 202, Some(3600))));
        let out = e.on_edge(
            now,
            notify("NOTIFY", &again, 1, "active;expires=3600", Some(AWAY)),
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
        // Another contact in the same domain (any case): PIDF only from the start.
        let carol = r"carol\40CONTOSO.com@lcs.example.org";
        let (_, sub) = first_subscribe(&mut e, now, carol);
        assert_eq!(sub.header("Accept"), Some("application/pidf+xml"));
        // Another domain: still offered.
        let (_, sub) = first_subscribe(&mut e, now, r"dan\40fabrikam.com@lcs.example.org");
        assert_eq!(sub.header("Accept"), Some(ENHANCED_ACCEPT));
        // A day later the domain gets the offer again.
        let later = now + Duration::from_secs(24 * 3600 + 1);
        let (_, sub) = first_subscribe(&mut e, later, r"erin\40contoso.com@lcs.example.org");
        assert_eq!(sub.header("Accept"), Some(ENHANCED_ACCEPT));
    }
}

#[test]
fn other_failures_and_a_refused_fallback_are_errors_as_before() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tx, sub) = first_subscribe(&mut e, now, BOB);
    let out = e.on_edge(now, final_event(tx, 9, answer(&sub, 404, None)));
    assert_eq!(kinds(&out), ["forget:outbound", "stanza:error"]);
    // The fallback refused too: the user's request fails, no third SUBSCRIBE.
    let (tx, sub) = first_subscribe(&mut e, now, BOB);
    let out = e.on_edge(now, final_event(tx, 9, answer(&sub, 415, None)));
    let (tx, again, _) = requests(&out).remove(0);
    let out = e.on_edge(now, final_event(tx, 9, answer(&again, 415, None)));
    assert_eq!(kinds(&out), ["forget:outbound", "stanza:error"]);
}

#[test]
fn the_remembered_domains_are_bounded() {
    let now = Instant::now();
    let mut e = engine_at(now);
    for i in 0..PIDF_ONLY_MAX_DOMAINS + 5 {
        e.remember_pidf_only(
            now + Duration::from_millis(i as u64),
            format!("d{i}.example"),
        );
    }
    assert_eq!(e.pidf_only.len(), PIDF_ONLY_MAX_DOMAINS);
    // The oldest went first.
    assert!(!e.pidf_only(now, "d0.example"));
    assert!(e.pidf_only(now, &format!("d{}.example", PIDF_ONLY_MAX_DOMAINS + 4)));
}

/// A Lync contact's categories NOTIFYs ([MS-PRES] §4.4 document form; Lync schema ranges and
/// tokens) become XMPP presence with show and status; a NOTIFY with only a note keeps the
/// state; the contact card's name is the contact's name.
#[test]
fn categories_notifies_become_presence() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tx, sub) = first_subscribe(&mut e, now, BOB);
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(3600))));
    let card = r#"<category name="contactCard" publishTime="2026-01-01T09:00:00"><contactCard xmlns="http://schemas.microsoft.com/2006/09/sip/contactcard"><identity><name><displayName>Bob Lync</displayName></name></identity></contactCard></category>"#;
    let doc = categories(&format!(
        "{}{card}",
        state(6500, r#"<activity token="on-the-phone"/>"#)
    ));
    let out = e.on_edge(now, notify_as(&sub, 1, CATEGORIES_TYPE, &doc));
    assert_eq!(
        kinds(&out),
        [
            "persist:approved",
            "stanza:subscribed",
            "stanza:available",
            "respond:200"
        ],
        "{out:?}"
    );
    let s = stanzas(&out);
    assert!(
        s[1].ends_with(
            "><show>dnd</show><status>In a call</status><priority>0</priority></presence>"
        ),
        "{}",
        s[1]
    );
    assert_eq!(
        persisted(&out)[0].display_name.as_ref().unwrap().text,
        "Bob Lync"
    );
    // Only a note: the state stays, the note follows the status.
    let out = e.on_edge(
        now,
        notify_as(
            &sub,
            2,
            CATEGORIES_TYPE,
            &categories(&note("personal", "Working from home")),
        ),
    );
    assert!(
        stanzas(&out)[0].contains("<show>dnd</show><status>In a call - Working from home</status>"),
        "{out:?}"
    );
    // Away with a custom text; an OOF note.
    let doc = categories(&format!(
        "{}{}",
        state(
            15500,
            "<activity><custom LCID=\"1033\">Out until next week</custom></activity>"
        ),
        note("OOF", "Back on Monday")
    ));
    let out = e.on_edge(now, notify_as(&sub, 3, CATEGORIES_TYPE, &doc));
    assert!(
        stanzas(&out)[0].contains(
            "<show>xa</show><status>Out until next week - Out of office: Back on Monday</status>"
        ),
        "{out:?}"
    );
    // A probe is answered from the merged document.
    let probe = pres(&format!("from='{ALICE}/r' to='{BOB}' type='probe'"), "");
    let out = e.on_stanza(now, probe);
    assert!(stanzas(&out)[0].contains("<show>xa</show>"), "{out:?}");
    // The stored form brings the merged document back.
    let key = key(ALICE.to_owned(), BOB_AOR.to_owned());
    let record = e.out_record(now, &key).unwrap();
    let back = Received::from_bytes(record.last_received.as_deref().unwrap()).unwrap();
    assert_eq!(
        Some(&back),
        e.outbound.get(&key).and_then(|s| s.last.as_deref())
    );
    // Offline.
    let out = e.on_edge(
        now,
        notify_as(&sub, 4, CATEGORIES_TYPE, &categories(&state(18500, ""))),
    );
    assert!(stanzas(&out)[0].contains("type='unavailable'"), "{out:?}");
    // A BENOTIFY works the same, with no response.
    let mut ev = notify_as(&sub, 5, CATEGORIES_TYPE, &categories(&state(3500, "")));
    if let EdgeEvent::Request { request, .. } = &mut ev {
        let raw = String::from_utf8(request.to_bytes())
            .unwrap()
            .replace("NOTIFY", "BENOTIFY");
        *request = Message::parse(raw.as_bytes()).unwrap();
    }
    let out = e.on_edge(now, ev);
    assert_eq!(kinds(&out), ["stanza:available"], "{out:?}");
    // A hostile body is acknowledged and shows nothing.
    let out = e.on_edge(
        now,
        notify_as(
            &sub,
            6,
            CATEGORIES_TYPE,
            "<!DOCTYPE x [<!ENTITY a 'b'>]><categories/>",
        ),
    );
    assert_eq!(kinds(&out), ["respond:200"]);
}

/// The first NOTIFY of a new subscription is the contact's whole state: nothing of the
/// previous subscription's document is kept.
#[test]
fn a_new_subscription_starts_from_its_first_notify() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tx, sub) = first_subscribe(&mut e, now, BOB);
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(3600))));
    let doc = categories(&format!(
        "{}{}",
        state(6500, r#"<activity token="on-the-phone"/>"#),
        note("personal", "old note")
    ));
    e.on_edge(now, notify_as(&sub, 1, CATEGORIES_TYPE, &doc));
    // The notifier ends the subscription; the bridge subscribes again at once.
    let out = e.on_edge(
        now,
        notify("NOTIFY", &sub, 2, "terminated;reason=deactivated", None),
    );
    let (tx, again, _) = requests(&out).remove(0);
    e.on_edge(now, final_event(tx, 9, answer(&again, 202, Some(3600))));
    let out = e.on_edge(
        now,
        notify_as(&again, 1, CATEGORIES_TYPE, &categories(&state(3500, ""))),
    );
    let s = stanzas(&out);
    assert!(
        s[0].ends_with("><priority>0</priority></presence>") && !s[0].contains("<status>"),
        "{s:?}"
    );
}

/// A first categories NOTIFY without a state (only a note) shows nothing yet: the contact's
/// availability is not known.
#[test]
fn no_state_no_presence() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tx, sub) = first_subscribe(&mut e, now, BOB);
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(3600))));
    let out = e.on_edge(
        now,
        notify_as(
            &sub,
            1,
            CATEGORIES_TYPE,
            &categories(&note("personal", "hi")),
        ),
    );
    assert_eq!(
        kinds(&out),
        ["persist:approved", "stanza:subscribed", "respond:200"]
    );
}

/// An LCS 2005 peer answers in `text/xml+msrtc.pidf` ([MS-SIP] §2.2.1), a peer that knows only
/// PIDF in PIDF: both are shown.
#[test]
fn msrtc_pidf_and_pidf_answers_are_shown() {
    let now = Instant::now();
    let mut e = engine_at(now);
    let (tx, sub) = first_subscribe(&mut e, now, BOB);
    e.on_edge(now, final_event(tx, 9, answer(&sub, 202, Some(3600))));
    let doc = r#"<presentity uri="bob@contoso.com" xmlns="http://schemas.microsoft.com/2002/09/sip/presence"><availability aggregate="300"/><activity aggregate="300"/><displayName displayName="Bob 2005"/><userInfo><note>brb</note></userInfo></presentity>"#;
    let out = e.on_edge(now, notify_as(&sub, 1, MSRTC_PIDF_TYPE, doc));
    let s = stanzas(&out);
    assert!(
        s[1].contains("<show>away</show><status>Be right back - brb</status>"),
        "{s:?}"
    );
    let out = e.on_edge(now, notify("NOTIFY", &sub, 2, "active", Some(MEETING)));
    assert!(
        stanzas(&out)[0].contains("<show>dnd</show><status>In a meeting</status>"),
        "{out:?}"
    );
}
