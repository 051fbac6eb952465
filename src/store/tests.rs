#![allow(clippy::unwrap_used)]

use std::time::Instant;

use proptest::prelude::*;

use super::codec;
use super::*;
use crate::sip::dialog::Dialog;
use crate::sip::message::Message;

fn dialog(n: u32) -> DialogRecord {
    DialogRecord {
        call_id: format!("3f2a9c{n}@sip.example.org"),
        local_tag: format!("lt{n}"),
        remote_tag: "9c1e07b2".into(),
        local_uri: "sip:alice@example.org".into(),
        local_display: Some("Alice Ä".into()),
        remote_uri: "sip:joe@contoso.com".into(),
        remote_display: None,
        remote_target: "sip:joe@10.0.0.5:5061;transport=tls".into(),
        route_set: vec![
            "<sip:edge1.contoso.com;transport=tls;lr>".into(),
            "<sip:edge2.contoso.com;transport=tls;lr>".into(),
        ],
        local_cseq: n,
        remote_cseq: Some(u32::MAX),
        created_unix: 1_790_000_000,
    }
}

pub(super) fn sub(direction: Direction, jid: &str, aor: &str) -> Subscription {
    Subscription {
        direction,
        local_jid: jid.into(),
        remote_aor: aor.into(),
        dialog: Some(dialog(3)),
        expires_unix: 1_790_003_600,
        state: SubState::Active,
        approval: Approval::Approved,
        last_sent: Some(b"<presence/>".to_vec()),
        last_received: Some(vec![0, 255, 1]),
        display_name: None,
        updated_unix: 1_790_000_100,
    }
}

pub(super) fn minimal(direction: Direction, jid: &str, aor: &str) -> Subscription {
    Subscription {
        direction,
        local_jid: jid.into(),
        remote_aor: aor.into(),
        dialog: None,
        expires_unix: 0,
        state: SubState::Pending,
        approval: Approval::None,
        last_sent: None,
        last_received: None,
        display_name: None,
        updated_unix: u64::MAX,
    }
}

pub(super) fn im(jid: &str, aor: &str) -> ImDialog {
    ImDialog {
        local_jid: jid.into(),
        remote_aor: aor.into(),
        dialog: DialogRecord {
            local_display: None,
            remote_cseq: None,
            route_set: vec![],
            ..dialog(1)
        },
    }
}

pub(super) fn collect<T>(it: Records<'_, T>) -> Vec<T> {
    it.map(Result::unwrap).collect()
}

/// The behaviour both stores must share.
pub(super) fn exercise(store: &dyn Store) {
    let a = sub(
        Direction::Outbound,
        "alice@example.org",
        "sip:joe@contoso.com",
    );
    let b = minimal(
        Direction::Outbound,
        "alice@example.org",
        "sip:ann@contoso.com",
    );
    let c = sub(
        Direction::Inbound,
        "alice@example.org",
        "sip:joe@contoso.com",
    );
    // A JID that extends alice's: must not show up in alice's prefix scan.
    let d = minimal(
        Direction::Outbound,
        "alice@example.org.uk",
        "sip:joe@contoso.com",
    );
    let e = minimal(
        Direction::Outbound,
        "bob@example.org",
        "sip:joe@contoso.com",
    );
    for s in [&a, &b, &c, &d, &e] {
        store.put_subscription(s).unwrap();
    }
    assert_eq!(
        store
            .get_subscription(
                Direction::Outbound,
                "alice@example.org",
                "sip:joe@contoso.com"
            )
            .unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        store
            .get_subscription(
                Direction::Inbound,
                "alice@example.org",
                "sip:joe@contoso.com"
            )
            .unwrap(),
        Some(c.clone())
    );
    assert_eq!(
        store
            .get_subscription(
                Direction::Inbound,
                "alice@example.org",
                "sip:ann@contoso.com"
            )
            .unwrap(),
        None
    );
    // Key order: inbound before outbound; JID, then AOR, bytewise.
    assert_eq!(
        collect(store.subscriptions()),
        vec![c.clone(), b.clone(), a.clone(), d.clone(), e.clone()]
    );
    assert_eq!(
        collect(store.subscriptions_of(Direction::Outbound, "alice@example.org")),
        vec![b.clone(), a.clone()]
    );
    assert_eq!(
        collect(store.subscriptions_of(Direction::Inbound, "alice@example.org")),
        vec![c.clone()]
    );
    assert!(collect(store.subscriptions_of(Direction::Inbound, "nobody@example.org")).is_empty());

    // Replace.
    let mut a2 = a.clone();
    a2.state = SubState::Terminated;
    a2.last_sent = None;
    store.put_subscription(&a2).unwrap();
    assert_eq!(
        store
            .get_subscription(
                Direction::Outbound,
                "alice@example.org",
                "sip:joe@contoso.com"
            )
            .unwrap(),
        Some(a2.clone())
    );

    // Lazy write: the same record as a synced one would be.
    let mut e2 = e.clone();
    e2.last_received = Some(b"<presence type='unavailable'/>".to_vec());
    store.put_subscription_lazy(&e2).unwrap();
    assert_eq!(
        store
            .get_subscription(
                Direction::Outbound,
                "bob@example.org",
                "sip:joe@contoso.com"
            )
            .unwrap(),
        Some(e2.clone())
    );

    // Batch.
    let mut b2 = b.clone();
    b2.state = SubState::Active;
    let f = minimal(Direction::Inbound, "carol@example.org", "sip:x@contoso.com");
    store.put_subscriptions(&[b2.clone(), f.clone()]).unwrap();
    assert_eq!(collect(store.subscriptions()).len(), 6);

    // Stats.
    let stats = store.stats().unwrap();
    assert_eq!(stats.total_subscriptions(), 6);
    assert_eq!(
        stats.subscriptions[&(Direction::Outbound, SubState::Active)],
        1
    );
    assert_eq!(
        stats.subscriptions[&(Direction::Outbound, SubState::Pending)],
        2
    );
    assert_eq!(
        stats.subscriptions[&(Direction::Outbound, SubState::Terminated)],
        1
    );
    assert_eq!(
        stats.subscriptions[&(Direction::Inbound, SubState::Active)],
        1
    );
    assert_eq!(
        stats.subscriptions[&(Direction::Inbound, SubState::Pending)],
        1
    );
    assert_eq!(stats.corrupt, 0);

    // Remove.
    assert!(
        store
            .remove_subscription(
                Direction::Outbound,
                "alice@example.org",
                "sip:joe@contoso.com"
            )
            .unwrap()
    );
    assert!(
        !store
            .remove_subscription(
                Direction::Outbound,
                "alice@example.org",
                "sip:joe@contoso.com"
            )
            .unwrap()
    );
    assert_eq!(collect(store.subscriptions()).len(), 5);

    // IM dialogs are their own kind.
    let i1 = im("alice@example.org", "sip:joe@contoso.com");
    let i2 = im("bob@example.org", "sip:joe@contoso.com");
    store.put_im_dialog(&i2).unwrap();
    store.put_im_dialog(&i1).unwrap();
    assert_eq!(
        store
            .get_im_dialog("alice@example.org", "sip:joe@contoso.com")
            .unwrap(),
        Some(i1.clone())
    );
    assert_eq!(collect(store.im_dialogs()), vec![i1.clone(), i2.clone()]);
    assert_eq!(store.stats().unwrap().im_dialogs, 2);
    assert!(
        store
            .remove_im_dialog("bob@example.org", "sip:joe@contoso.com")
            .unwrap()
    );
    store.put_im_dialog(&i2).unwrap();
    assert_eq!(store.clear_im_dialogs().unwrap(), 2);
    assert!(collect(store.im_dialogs()).is_empty());
    assert_eq!(collect(store.subscriptions()).len(), 5);

    // Keys that cannot be keys.
    for (jid, aor) in [
        ("", "sip:a@b"),
        ("a@b", ""),
        ("a\0b@c", "sip:a@b"),
        ("a@b", "sip:\0"),
    ] {
        assert!(matches!(
            store.put_subscription(&minimal(Direction::Inbound, jid, aor)),
            Err(StoreError::InvalidKey(_))
        ));
        assert!(matches!(
            store.get_subscription(Direction::Inbound, jid, aor),
            Err(StoreError::InvalidKey(_))
        ));
        assert!(matches!(
            store.put_im_dialog(&im(jid, aor)),
            Err(StoreError::InvalidKey(_))
        ));
    }
    assert!(matches!(
        store.subscriptions_of(Direction::Inbound, "x\0").next(),
        Some(Err(StoreError::InvalidKey(_)))
    ));
    store.flush().unwrap();
}

/// A corrupt record between two good ones: lookups fail naming it, iteration reports it and
/// goes on, stats counts it.
pub(super) fn corrupt_record_is_reported(store: &dyn Store, plant: &dyn Fn(&[u8], &[u8])) {
    store
        .put_subscription(&minimal(
            Direction::Outbound,
            "a@example.org",
            "sip:1@c.com",
        ))
        .unwrap();
    store
        .put_subscription(&minimal(
            Direction::Outbound,
            "c@example.org",
            "sip:1@c.com",
        ))
        .unwrap();
    plant(b"Sob@example.org\0sip:1@c.com", b"\x01\x07garbage");
    let err = store
        .get_subscription(Direction::Outbound, "b@example.org", "sip:1@c.com")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "corrupt record subscription/outbound/b@example.org/sip:1@c.com: unknown state 7 at byte 2"
    );
    let all: Vec<_> = store.subscriptions().collect();
    assert_eq!(all.len(), 3);
    assert!(all[0].is_ok());
    assert!(
        matches!(&all[1], Err(StoreError::Corrupt { key, .. }) if key == "subscription/outbound/b@example.org/sip:1@c.com")
    );
    assert!(all[2].is_ok());
    let stats = store.stats().unwrap();
    assert_eq!((stats.total_subscriptions(), stats.corrupt), (2, 1));
    // A key with no NUL between the parties.
    plant(b"Iabc", b"\x01");
    let ims: Vec<_> = store.im_dialogs().collect();
    assert!(
        matches!(&ims[..], [Err(StoreError::Corrupt { key, reason })] if key == "\"Iabc\"" && reason.contains("no NUL")),
        "{ims:?}"
    );
    assert_eq!(store.stats().unwrap().corrupt, 2);
}

#[test]
fn mem_store_behaviour() {
    exercise(&MemStore::new());
}

#[test]
fn mem_store_corrupt_record() {
    let store = MemStore::new();
    corrupt_record_is_reported(&store, &|k, v| store.put_raw(k, v));
}

#[test]
fn mem_store_failing_writes_change_nothing() {
    let store = MemStore::new();
    let a = minimal(Direction::Inbound, "a@example.org", "sip:b@c.com");
    store.put_subscription(&a).unwrap();
    assert_eq!(store.synced_writes(), 1);
    store.set_fail_writes(true);
    let mut a2 = a.clone();
    a2.state = SubState::Active;
    assert!(matches!(
        store.put_subscription(&a2),
        Err(StoreError::Backend(_))
    ));
    assert!(store.put_subscriptions(&[a2.clone()]).is_err());
    assert!(store.put_subscription_lazy(&a2).is_err());
    assert!(
        store
            .remove_subscription(Direction::Inbound, "a@example.org", "sip:b@c.com")
            .is_err()
    );
    assert_eq!(
        store
            .get_subscription(Direction::Inbound, "a@example.org", "sip:b@c.com")
            .unwrap(),
        Some(a)
    );
    assert_eq!(store.synced_writes(), 1);
    store.set_fail_writes(false);
    store.put_subscription_lazy(&a2).unwrap();
    assert_eq!(store.synced_writes(), 1);
    store.put_subscription(&a2).unwrap();
    assert_eq!(store.synced_writes(), 2);
}

#[test]
fn sled_store_behaviour_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sled");
    {
        let store = SledStore::open(&path).unwrap();
        assert_eq!(store.schema_version(), CURRENT_SCHEMA_VERSION);
        // A new store is no migration.
        assert_eq!(store.migrated_from(), None);
        exercise(&store);
    }
    // Everything is there after a reopen.
    let store = retry_in_use(|| SledStore::open_read_only(&path)).unwrap();
    let subs = collect(store.subscriptions());
    assert_eq!(subs.len(), 5);
    assert_eq!(store.stats().unwrap().total_subscriptions(), 5);
}

#[test]
fn sled_store_corrupt_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    corrupt_record_is_reported(&store, &|k, v| store.put_raw(k, v).unwrap());
}

#[test]
fn sled_store_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let _store = SledStore::open(dir.path()).unwrap();
    let err = SledStore::open(dir.path()).err().unwrap();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("the store is in use by a running bridge ("),
        "{err}"
    );
}

#[test]
fn sled_open_read_only_refuses_to_create() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sled");
    let err = SledStore::open_read_only(&path).err().unwrap();
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    assert!(!path.exists());
}

#[test]
fn sled_schema_version_newer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store
            .put_raw(codec::META_SCHEMA, &codec::encode_schema(7))
            .unwrap();
    }
    let err = open_after_raw_sled(dir.path()).err().unwrap();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 7,
                supported: 2
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the store's schema version is 7, newer than this lcs-bridge supports (2): use a newer lcs-bridge or restore a backup"
    );
}

#[test]
fn sled_schema_version_garbage_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.put_raw(codec::META_SCHEMA, b"xx").unwrap();
    }
    let err = open_after_raw_sled(dir.path()).err().unwrap();
    assert_eq!(
        err.to_string(),
        "corrupt record \"\\x00schema_version\": schema version is 2 bytes, not 4"
    );
}

#[test]
fn sled_without_version_but_with_data_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"foreign", b"data").unwrap();
        db.flush().unwrap();
    }
    let err = open_after_raw_sled(dir.path()).err().unwrap();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("no schema version but holds data (first key \"foreign\")")
    );
}

#[test]
fn sled_migrate_from_zero_writes_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    migrate(&db, 0, CURRENT_SCHEMA_VERSION).unwrap();
    assert_eq!(
        db.get(codec::META_SCHEMA).unwrap().unwrap().as_ref(),
        &codec::encode_schema(2)
    );
    assert!(matches!(
        migrate(&db, 2, 3),
        Err(StoreError::SchemaTooNew {
            found: 3,
            supported: 2
        })
    ));
    assert!(migrate(&db, 1, 0).is_err());
}

/// A store written by a build of schema version 1 (records without display names) opens: the
/// version moves to 2 and every record reads as it was.
#[test]
fn sled_version_1_store_is_taken_up() {
    let dir = tempfile::tempdir().unwrap();
    let old = sub(
        Direction::Inbound,
        "alice@example.org",
        "sip:bob@contoso.com",
    );
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(codec::META_SCHEMA, &codec::encode_schema(1))
            .unwrap();
        let key = codec::sub_key(old.direction, &old.local_jid, &old.remote_aor).unwrap();
        let value = codec::encode_subscription(&old);
        // What version 1 wrote: no bit above the three it knew.
        assert_eq!(value[3] & !7, 0);
        db.insert(key, value).unwrap();
        db.flush().unwrap();
    }
    // Read without migrating (the `store` commands): still version 1 afterwards.
    for _ in 0..2 {
        let store = retry_in_use(|| SledStore::open_read_only(dir.path())).unwrap();
        assert_eq!((store.schema_version(), store.migrated_from()), (1, None));
        let got = store
            .get_subscription(old.direction, &old.local_jid, &old.remote_aor)
            .unwrap();
        assert_eq!(got.as_ref(), Some(&old));
    }
    let store = open_after_raw_sled(dir.path()).unwrap();
    assert_eq!(store.schema_version(), 2);
    assert_eq!(store.migrated_from(), Some(1));
    let got = store
        .get_subscription(old.direction, &old.local_jid, &old.remote_aor)
        .unwrap()
        .unwrap();
    assert_eq!(got, old);
    assert_eq!(got.display_name, None);
}

#[test]
fn dialog_record_from_a_live_dialog() {
    let subscribe = Message::parse(
        b"SUBSCRIBE sip:alice@example.org SIP/2.0\r\n\
Via: SIP/2.0/TLS edge.contoso.com:5061;branch=z9hG4bK1\r\n\
Max-Forwards: 70\r\n\
From: \"Joe\" <sip:joe@contoso.com>;tag=j1\r\n\
To: <sip:alice@example.org>\r\n\
Call-ID: c-1\r\n\
CSeq: 41 SUBSCRIBE\r\n\
Contact: <sip:joe@10.0.0.5:5061;transport=tls>\r\n\
Record-Route: <sip:edge.contoso.com;transport=tls;lr>\r\n\
Event: presence\r\n\
Content-Length: 0\r\n\r\n",
    )
    .unwrap();
    let d = Dialog::from_uas(&subscribe, "a1", 1, 4, Instant::now()).unwrap();
    let r = DialogRecord::from_dialog(&d, 1_790_000_000);
    assert_eq!(
        r,
        DialogRecord {
            call_id: "c-1".into(),
            local_tag: "a1".into(),
            remote_tag: "j1".into(),
            local_uri: "sip:alice@example.org".into(),
            local_display: None,
            remote_uri: "sip:joe@contoso.com".into(),
            remote_display: Some("Joe".into()),
            remote_target: "sip:joe@10.0.0.5:5061;transport=tls".into(),
            route_set: vec!["<sip:edge.contoso.com;transport=tls;lr>".into()],
            local_cseq: 1,
            remote_cseq: Some(41),
            created_unix: 1_790_000_000,
        }
    );
}

#[test]
fn display_names_round_trip_and_are_checked() {
    let mut s = minimal(
        Direction::Outbound,
        "alice@example.org",
        "sip:joe@contoso.com",
    );
    let plain = codec::encode_subscription(&s);
    for from_pidf in [false, true] {
        s.display_name = Some(DisplayName {
            text: "Joe Smith".into(),
            from_pidf,
        });
        let key = codec::sub_key(s.direction, &s.local_jid, &s.remote_aor).unwrap();
        let v = codec::encode_subscription(&s);
        // The name costs its length byte and its bytes; the flags byte says which.
        assert_eq!(v.len(), plain.len() + 1 + "Joe Smith".len());
        assert_eq!(v[3], if from_pidf { 8 | 16 } else { 8 });
        assert_eq!(codec::decode_subscription(&key, &v).unwrap(), s);
        let mut bad = v.clone();
        bad.truncate(v.len() - 1);
        assert!(codec::decode_subscription(&key, &bad).is_err());
    }
    // The source bit without a name is refused.
    let key = codec::sub_key(s.direction, &s.local_jid, &s.remote_aor).unwrap();
    let mut bad = plain.clone();
    bad[3] |= 16;
    let err = codec::decode_subscription(&key, &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("display name source flag without a display name"),
        "{err}"
    );
    // Bits no version defines are still refused.
    let mut bad = plain;
    bad[3] |= 32;
    let err = codec::decode_subscription(&key, &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown subscription flags bits"), "{err}");
}

#[test]
fn encoding_is_compact() {
    // A subscription with a dialog of realistic size: 200 bytes of strings in the dialog.
    let s = sub(
        Direction::Outbound,
        "alice@example.org",
        "sip:joe@contoso.com",
    );
    let v = codec::encode_subscription(&s);
    let strings: usize = [
        &s.dialog.as_ref().unwrap().call_id,
        &s.dialog.as_ref().unwrap().local_tag,
        &s.dialog.as_ref().unwrap().remote_tag,
        &s.dialog.as_ref().unwrap().local_uri,
        s.dialog.as_ref().unwrap().local_display.as_ref().unwrap(),
        &s.dialog.as_ref().unwrap().remote_uri,
        &s.dialog.as_ref().unwrap().remote_target,
    ]
    .iter()
    .map(|x| x.len())
    .sum::<usize>()
        + s.dialog
            .as_ref()
            .unwrap()
            .route_set
            .iter()
            .map(String::len)
            .sum::<usize>()
        + 11
        + 3;
    // Overhead beyond the strings and bytes themselves: 4 fixed bytes, expires and updated
    // (5 + 5); dialog flags (1), 7 string lengths (7), route count and 2 lengths (3), CSeqs
    // (1 + 5), created (5); 2 byte-string lengths.
    assert_eq!(v.len() - strings, 38);
    assert_eq!(
        s.encoded_len(),
        v.len() + "So".len() + s.local_jid.len() + 1 + s.remote_aor.len()
    );
    // Version, state, approval, flags; expires 0 (1 byte), updated u64::MAX (10 bytes).
    assert_eq!(
        codec::encode_subscription(&minimal(Direction::Inbound, "a", "b")).len(),
        15
    );
}

#[test]
fn stats_table() {
    let mut stats = Stats::empty();
    stats.count(&minimal(Direction::Inbound, "a@b", "sip:c@d"));
    stats.im_dialogs = 3;
    assert_eq!(
        stats.to_string(),
        "\
kind           direction  state            count
subscription   outbound   pending              0
subscription   outbound   active               0
subscription   outbound   terminated           0
subscription   inbound    pending              1
subscription   inbound    active               0
subscription   inbound    terminated           0
im_dialog      -          -                    3
corrupt        -          -                    0"
    );
}

#[test]
fn export_json_lines() {
    let s = sub(
        Direction::Inbound,
        "alice@example.org",
        "sip:joe@contoso.com",
    );
    assert_eq!(
        s.to_json().to_string(),
        r#"{"approval":"approved","dialog":{"call_id":"3f2a9c3@sip.example.org","created_unix":1790000000,"local_cseq":3,"local_display":"Alice Ä","local_tag":"lt3","local_uri":"sip:alice@example.org","remote_cseq":4294967295,"remote_display":null,"remote_tag":"9c1e07b2","remote_target":"sip:joe@10.0.0.5:5061;transport=tls","remote_uri":"sip:joe@contoso.com","route_set":["<sip:edge1.contoso.com;transport=tls;lr>","<sip:edge2.contoso.com;transport=tls;lr>"]},"direction":"inbound","display_name":null,"expires_unix":1790003600,"kind":"subscription","last_received":"AP8B","last_sent":"PHByZXNlbmNlLz4=","local_jid":"alice@example.org","remote_aor":"sip:joe@contoso.com","state":"active","updated_unix":1790000100}"#
    );
    let m = minimal(Direction::Outbound, "a@b", "sip:c@d").to_json();
    assert_eq!(m["dialog"], Value::Null);
    assert_eq!(m["last_sent"], Value::Null);
    assert_eq!(
        im("a@b", "sip:c@d").to_json()["kind"],
        Value::String("im_dialog".into())
    );
}

#[test]
fn every_truncation_and_extension_is_corrupt() {
    let key = codec::sub_key(Direction::Outbound, "a@b", "sip:c@d").unwrap();
    let v = codec::encode_subscription(&sub(Direction::Outbound, "a@b", "sip:c@d"));
    for n in 0..v.len() {
        assert!(
            matches!(
                codec::decode_subscription(&key, &v[..n]),
                Err(StoreError::Corrupt { .. })
            ),
            "truncated to {n}"
        );
    }
    let mut longer = v.clone();
    longer.push(0);
    assert!(codec::decode_subscription(&key, &longer).is_err());
    let mut newer = v.clone();
    newer[0] = 2;
    assert_eq!(
        codec::decode_subscription(&key, &newer)
            .unwrap_err()
            .to_string(),
        "corrupt record subscription/outbound/a@b/sip:c@d: record version 2 is not one this build reads (1)"
    );
    // Overlong varint.
    let mut overlong = vec![1, 0, 0, 0];
    overlong.extend_from_slice(&[0xff; 10]);
    overlong.push(0);
    assert!(
        codec::decode_subscription(&key, &overlong)
            .unwrap_err()
            .to_string()
            .contains("expires overflows 64 bits")
    );
    // A huge length does not allocate.
    let mut huge = vec![1, 0, 0, codec_flags_sent()];
    huge.extend_from_slice(&[0, 0]);
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(
        codec::decode_subscription(&key, &huge)
            .unwrap_err()
            .to_string()
            .contains("last sent length 4294967295 exceeds the 0 bytes left")
    );
}

fn codec_flags_sent() -> u8 {
    2
}

fn arb_dialog() -> impl Strategy<Value = DialogRecord> {
    (
        (
            ".{0,20}",
            ".{0,8}",
            ".{0,8}",
            ".{0,30}",
            proptest::option::of(".{0,10}"),
        ),
        (".{0,30}", proptest::option::of(".{0,10}"), ".{0,30}"),
        (
            proptest::collection::vec(".{0,20}", 0..4),
            any::<u32>(),
            proptest::option::of(any::<u32>()),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (call_id, local_tag, remote_tag, local_uri, local_display),
                (remote_uri, remote_display, remote_target),
                (route_set, local_cseq, remote_cseq, created_unix),
            )| DialogRecord {
                call_id,
                local_tag,
                remote_tag,
                local_uri,
                local_display,
                remote_uri,
                remote_display,
                remote_target,
                route_set,
                local_cseq,
                remote_cseq,
                created_unix,
            },
        )
}

fn arb_sub() -> impl Strategy<Value = Subscription> {
    (
        any::<bool>(),
        "[^\0]{1,20}",
        "[^\0]{1,20}",
        proptest::option::of(arb_dialog()),
        (any::<u64>(), 0..3u8, 0..4u8, any::<u64>()),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50)),
        proptest::option::of(("[^\0]{0,20}", any::<bool>())),
    )
        .prop_map(
            |(
                out,
                local_jid,
                remote_aor,
                dialog,
                (expires_unix, st, ap, updated_unix),
                last_sent,
                last_received,
                name,
            )| {
                Subscription {
                    direction: if out {
                        Direction::Outbound
                    } else {
                        Direction::Inbound
                    },
                    local_jid,
                    remote_aor,
                    dialog,
                    expires_unix,
                    state: SubState::ALL[st as usize],
                    approval: [
                        Approval::None,
                        Approval::Requested,
                        Approval::Approved,
                        Approval::Denied,
                    ][ap as usize],
                    last_sent,
                    last_received,
                    display_name: name.map(|(text, from_pidf)| DisplayName { text, from_pidf }),
                    updated_unix,
                }
            },
        )
}

proptest! {
    #[test]
    fn subscription_round_trips(s in arb_sub()) {
        let key = codec::sub_key(s.direction, &s.local_jid, &s.remote_aor).unwrap();
        let v = codec::encode_subscription(&s);
        prop_assert_eq!(codec::decode_subscription(&key, &v).unwrap(), s);
    }

    #[test]
    fn im_dialog_round_trips(d in arb_dialog()) {
        let key = codec::im_key("a@b", "sip:c@d").unwrap();
        let got = codec::decode_im(&key, &codec::encode_im(&d)).unwrap();
        prop_assert_eq!(got.dialog, d);
    }

    #[test]
    fn decoding_anything_never_panics(key in proptest::collection::vec(any::<u8>(), 0..20),
                                      value in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = codec::decode_subscription(&key, &value);
        let _ = codec::decode_im(&key, &value);
        let _ = codec::describe_key(&key);
    }

    #[test]
    fn flipped_bytes_never_panic(s in arb_sub(), at in any::<prop::sample::Index>(), x in 1..=255u8) {
        let key = codec::sub_key(s.direction, &s.local_jid, &s.remote_aor).unwrap();
        let mut v = codec::encode_subscription(&s);
        let i = at.index(v.len());
        v[i] ^= x;
        let _ = codec::decode_subscription(&key, &v);
    }
}

#[cfg(feature = "redb")]
#[test]
fn redb_store_behaviour_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redb");
    {
        let store = RedbStore::open(&path).unwrap();
        exercise(&store);
    }
    let store = RedbStore::open_read_only(&path).unwrap();
    assert_eq!(collect(store.subscriptions()).len(), 5);
    assert_eq!(store.stats().unwrap().total_subscriptions(), 5);
    // A version-1 store: read as it is by `open_read_only`, migrated by `open`.
    store
        .put_raw(codec::META_SCHEMA, &codec::encode_schema(1))
        .unwrap();
    drop(store);
    for _ in 0..2 {
        let store = RedbStore::open_read_only(&path).unwrap();
        assert_eq!((store.schema_version(), store.migrated_from()), (1, None));
        assert_eq!(collect(store.subscriptions()).len(), 5);
    }
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(
        (store.schema_version(), store.migrated_from()),
        (2, Some(1))
    );
}

#[cfg(feature = "redb")]
#[test]
fn redb_store_corrupt_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    corrupt_record_is_reported(&store, &|k, v| store.put_raw(k, v).unwrap());
}

#[cfg(feature = "redb")]
#[test]
fn redb_store_is_locked_while_open_and_checks_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RedbStore::open(dir.path()).unwrap();
        let err = RedbStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
        store
            .put_raw(codec::META_SCHEMA, &codec::encode_schema(3))
            .unwrap();
    }
    let err = RedbStore::open(dir.path()).err().unwrap();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 3,
                supported: CURRENT_SCHEMA_VERSION
            }
        ),
        "{err:?}"
    );
    let missing = dir.path().join("nothing");
    assert!(matches!(
        RedbStore::open_read_only(&missing),
        Err(StoreError::Missing { .. })
    ));
}

/// [`SledStore::open`] on a database a raw `sled::Db` of this test just dropped: sled's
/// background flusher can hold the file lock a moment longer, so `InUse` is retried (1 s).
fn open_after_raw_sled(path: &std::path::Path) -> Result<SledStore, StoreError> {
    retry_in_use(|| SledStore::open(path))
}

/// `open` retried while it finds the store in use (sled's background flusher of a store just
/// dropped can hold the file lock a moment longer), for 1 s.
fn retry_in_use(open: impl Fn() -> Result<SledStore, StoreError>) -> Result<SledStore, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match open() {
            Err(StoreError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => return other,
        }
    }
}
