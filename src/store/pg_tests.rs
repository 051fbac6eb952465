#![allow(clippy::unwrap_used)]

use lcs_test_support::postgres::Postgres;

use super::tests::{collect, corrupt_record_is_reported, exercise, im, minimal, sub};
use super::*;

/// A private server and the options to reach its database `lcs` with the password.
fn server() -> Option<(Postgres, PgOptions)> {
    let pg = Postgres::start()?;
    let options = PgOptions::new(&pg.url(), Some(pg.password().to_string()));
    Some((pg, options))
}

#[test]
fn pg_store_behaviour_and_reopen() {
    let Some((pg, options)) = server() else {
        return;
    };
    {
        let store = PgStore::open(&options).unwrap();
        assert_eq!(store.schema_version(), CURRENT_SCHEMA_VERSION);
        assert_eq!(store.migrated_from(), None);
        assert_eq!(store.epoch(), None);
        exercise(&store);
    }
    // Everything is there for another process's read-only open.
    let store = PgStore::open_read_only(&options).unwrap();
    assert_eq!(collect(store.subscriptions()).len(), 5);
    assert_eq!(store.stats().unwrap().total_subscriptions(), 5);
    // The tables as docs/storage.md describes them.
    assert_eq!(pg.psql("SELECT version FROM lcs_schema"), "2");
    assert_eq!(pg.psql("SELECT id, epoch FROM lcs_leader"), "1|0");
    assert_eq!(pg.psql("SELECT count(*) FROM lcs_records"), "5");
}

#[test]
fn pg_store_corrupt_record() {
    let Some((_pg, options)) = server() else {
        return;
    };
    let store = PgStore::open(&options).unwrap();
    corrupt_record_is_reported(&store, &|k, v| store.put_raw(k, v).unwrap());
}

/// More records than one page of the iterators, in key order, and one user's among them.
#[test]
fn pg_store_iterates_past_a_page() {
    let Some((_pg, options)) = server() else {
        return;
    };
    let store = PgStore::open(&options).unwrap();
    let n = 1300;
    let batch: Vec<Subscription> = (0..n)
        .map(|i| {
            minimal(
                Direction::Inbound,
                &format!("u{:02}@example.org", i % 7),
                &format!("sip:{i:05}@contoso.com"),
            )
        })
        .collect();
    store.put_subscriptions(&batch).unwrap();
    let all = collect(store.subscriptions());
    assert_eq!(all.len(), n);
    let keys: Vec<_> = all
        .iter()
        .map(|s| (s.local_jid.clone(), s.remote_aor.clone()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(
        collect(store.subscriptions_of(Direction::Inbound, "u03@example.org")).len(),
        (0..n).filter(|i| i % 7 == 3).count()
    );
    // A batch naming one record twice: the last one wins, as written one by one.
    let mut twice = batch[0].clone();
    twice.state = SubState::Active;
    store
        .put_subscriptions(&[batch[0].clone(), twice.clone()])
        .unwrap();
    assert_eq!(
        store
            .get_subscription(twice.direction, &twice.local_jid, &twice.remote_aor)
            .unwrap(),
        Some(twice)
    );
}

/// Schema: a newer one is refused (also read-only), an empty database is no store for the
/// read-only commands and is left empty, tables of something else are not taken over, and a
/// version-1 store is taken up.
#[test]
fn pg_store_schema_versions() {
    let Some((pg, options)) = server() else {
        return;
    };
    // Read-only on an empty database: refused, nothing created.
    let err = PgStore::open_read_only(&options).err().unwrap();
    assert!(matches!(err, StoreError::NoDatabaseStore { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "no lcs-bridge store in database 127.0.0.1:{}/lcs (the bridge has not run with this storage.url yet)",
            pg.port()
        )
    );
    assert_eq!(pg.psql("SELECT to_regclass('lcs_schema') IS NULL"), "t");

    drop(PgStore::open(&options).unwrap());
    pg.psql("UPDATE lcs_schema SET version = 7");
    for read_only in [false, true] {
        let err = if read_only {
            PgStore::open_read_only(&options).err().unwrap()
        } else {
            PgStore::open(&options).err().unwrap()
        };
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
    }
    assert_eq!(pg.psql("SELECT version FROM lcs_schema"), "7");

    // Version 1: read-only leaves it at 1; the bridge's open moves it to 2, records as they were.
    pg.psql("UPDATE lcs_schema SET version = 1");
    let old = sub(
        Direction::Inbound,
        "alice@example.org",
        "sip:bob@contoso.com",
    );
    {
        let store = PgStore::open_read_only(&options).unwrap();
        assert_eq!((store.schema_version(), store.migrated_from()), (1, None));
        store
            .put_raw(
                &codec::sub_key(old.direction, &old.local_jid, &old.remote_aor).unwrap(),
                &codec::encode_subscription(&old),
            )
            .unwrap();
    }
    assert_eq!(pg.psql("SELECT version FROM lcs_schema"), "1");
    let store = PgStore::open(&options).unwrap();
    assert_eq!(
        (store.schema_version(), store.migrated_from()),
        (2, Some(1))
    );
    assert_eq!(
        store
            .get_subscription(old.direction, &old.local_jid, &old.remote_aor)
            .unwrap(),
        Some(old)
    );
    drop(store);

    // Someone else's lcs_records: not taken over.
    pg.create_database("other");
    pg.psql_in("other", "CREATE TABLE lcs_records (k bytea, v bytea)");
    let other = PgOptions::new(&pg.url_for("other"), Some(pg.password().to_string()));
    let err = PgStore::open(&other).err().unwrap();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
}

/// Two bridges opening a new database at once: one creates the schema, the other finds it.
#[test]
fn pg_store_concurrent_first_opens() {
    let Some((pg, options)) = server() else {
        return;
    };
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let o = options.clone();
            std::thread::spawn(move || PgStore::open(&o).map(|s| s.schema_version()))
        })
        .collect();
    for t in opens {
        assert_eq!(t.join().unwrap().unwrap(), CURRENT_SCHEMA_VERSION);
    }
    assert_eq!(pg.psql("SELECT count(*) FROM lcs_leader"), "1");
}

/// A wrong password or an unreachable server: a clear error naming the database, in time.
#[test]
fn pg_store_refuses_a_wrong_password() {
    let Some((_pg, options)) = server() else {
        return;
    };
    let wrong = PgOptions {
        password: Some("not-it".into()),
        ..options.clone()
    };
    let err = PgStore::open(&wrong).err().unwrap();
    let text = err.to_string();
    assert!(
        text.contains("password authentication failed for user \"lcs\""),
        "{text}"
    );
    let none = PgOptions {
        password: None,
        ..options
    };
    assert!(PgStore::open(&none).is_err());
}

/// Synced writes are commits on disk: they survive a crash of the database server (SIGKILL of
/// every process), and so do the lazy writes made before a synced call (a barrier).
#[test]
fn pg_store_synced_writes_survive_a_server_crash() {
    let Some((pg, options)) = server() else {
        return;
    };
    let store = PgStore::open(&options).unwrap();
    let a = sub(
        Direction::Outbound,
        "alice@example.org",
        "sip:joe@contoso.com",
    );
    let mut lazy = minimal(Direction::Inbound, "bob@example.org", "sip:ann@contoso.com");
    store.put_subscription(&a).unwrap();
    lazy.state = SubState::Active;
    store.put_subscription_lazy(&lazy).unwrap();
    // Removes nothing, but is synced: the lazy write before it is on disk too.
    assert!(
        !store
            .remove_subscription(Direction::Inbound, "x@example.org", "sip:y@contoso.com")
            .unwrap()
    );
    let b = sub(
        Direction::Inbound,
        "carol@example.org",
        "sip:joe@contoso.com",
    );
    store.put_subscriptions(std::slice::from_ref(&b)).unwrap();
    pg.kill();
    pg.start_again();
    let store = PgStore::open(&options).unwrap();
    assert_eq!(collect(store.subscriptions()), vec![lazy, b, a]);
}

/// Calls from inside another tokio runtime (as `app::run` restores its state inside its
/// runtime) do not panic.
#[test]
fn pg_store_works_inside_another_runtime() {
    let Some((_pg, options)) = server() else {
        return;
    };
    let store = PgStore::open(&options).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = rt.block_on(async {
        store
            .put_im_dialog(&im("alice@example.org", "sip:joe@contoso.com"))
            .unwrap();
        store.flush().unwrap();
        collect(store.im_dialogs()).len()
    });
    assert_eq!(n, 1);
    // And dropping the store inside it.
    rt.block_on(async move { drop(store) });
}

fn assert_fenced<T: std::fmt::Debug>(r: Result<T, StoreError>, mine: u64, current: u64) {
    match r {
        Err(StoreError::Fenced {
            mine: m,
            current: c,
        }) => assert_eq!((m, c), (mine, current)),
        other => panic!("expected Fenced {{ mine: {mine}, current: {current} }}, got {other:?}"),
    }
}

/// A store writing as epoch 0 after the database's epoch became 1 (another bridge took over):
/// every kind of write is refused with `Fenced` and leaves nothing; under the new epoch, or
/// without one, writes go through.
#[test]
fn pg_store_writes_are_fenced_by_the_leader_epoch() {
    let Some((pg, options)) = server() else {
        return;
    };
    let store = PgStore::open(&options).unwrap();
    store.set_epoch(Some(0));
    assert_eq!(store.epoch(), Some(0));
    let a = sub(
        Direction::Outbound,
        "alice@example.org",
        "sip:joe@contoso.com",
    );
    store.put_subscription(&a).unwrap();
    store
        .put_im_dialog(&im("alice@example.org", "sip:joe@contoso.com"))
        .unwrap();

    pg.psql("UPDATE lcs_leader SET epoch = 1, holder = 'other' WHERE id = 1");
    let mut a2 = a.clone();
    a2.state = SubState::Terminated;
    let b = minimal(Direction::Inbound, "bob@example.org", "sip:ann@contoso.com");
    assert_fenced(store.put_subscription(&a2), 0, 1);
    assert_fenced(store.put_subscription_lazy(&a2), 0, 1);
    assert_fenced(store.put_subscriptions(&[b.clone(), a2.clone()]), 0, 1);
    assert_fenced(
        store.remove_subscription(a.direction, &a.local_jid, &a.remote_aor),
        0,
        1,
    );
    assert_fenced(
        store.put_im_dialog(&im("bob@example.org", "sip:joe@contoso.com")),
        0,
        1,
    );
    assert_fenced(
        store.remove_im_dialog("alice@example.org", "sip:joe@contoso.com"),
        0,
        1,
    );
    assert_fenced(store.clear_im_dialogs(), 0, 1);
    assert_fenced(store.flush(), 0, 1);
    let err = store.put_subscription(&a2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "write refused: this bridge writes as leader epoch 0, but the database's epoch is 1 (another bridge took over)"
    );
    // Nothing of it reached the database; reads still work.
    assert_eq!(collect(store.subscriptions()), vec![a.clone()]);
    assert_eq!(collect(store.im_dialogs()).len(), 1);
    assert_eq!(pg.psql("SELECT count(*) FROM lcs_records"), "2");

    // The new leader's epoch, or none (the store commands): written.
    store.set_epoch(Some(1));
    store.put_subscriptions(&[b.clone(), a2.clone()]).unwrap();
    store.set_epoch(None);
    assert_eq!(store.epoch(), None);
    store.clear_im_dialogs().unwrap();
    assert_eq!(collect(store.subscriptions()), vec![b, a2]);
}

/// A takeover and a write at the same moment: the write that reads the leader row after the
/// takeover's `UPDATE` took it waits for that transaction and is then refused (the row lock
/// orders them: no write of the old leader lands after the takeover).
#[test]
fn pg_store_write_racing_a_takeover_is_refused() {
    let Some((pg, options)) = server() else {
        return;
    };
    let store = std::sync::Arc::new(PgStore::open(&options).unwrap());
    store.set_epoch(Some(0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client, connection) = rt
        .block_on(tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user={} password={} dbname={}",
                pg.port(),
                Postgres::USER,
                pg.password(),
                Postgres::DATABASE
            ),
            tokio_postgres::NoTls,
        ))
        .unwrap();
    rt.spawn(connection);
    rt.block_on(client.batch_execute(
        "BEGIN; UPDATE lcs_leader SET epoch = epoch + 1, holder = 'b2' WHERE id = 1",
    ))
    .unwrap();
    // The old leader writes while the takeover is not committed yet: it has to wait.
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.put_subscription(&minimal(
                Direction::Inbound,
                "late@example.org",
                "sip:x@contoso.com",
            ))
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !writer.is_finished(),
        "the write did not wait for the takeover"
    );
    rt.block_on(client.batch_execute("COMMIT")).unwrap();
    assert_fenced(writer.join().unwrap(), 0, 1);
    assert_eq!(pg.psql("SELECT count(*) FROM lcs_records"), "0");
}

/// The database goes away under an open store (a clean stop, then a crash) and comes back:
/// meanwhile every call fails with `Unavailable` naming the cause, within the connect timeout,
/// and nothing panics; once it is back the same store works again (the pool drops the
/// connections the server closed and connects anew: the first call after the return
/// succeeds), and what was written before is there.
#[test]
fn pg_store_rides_out_a_database_restart() {
    let Some((pg, options)) = server() else {
        return;
    };
    let options = PgOptions {
        connect_timeout: std::time::Duration::from_secs(2),
        pool_size: 4,
        ..options
    };
    let store = PgStore::open(&options).unwrap();
    let a = sub(
        Direction::Outbound,
        "alice@example.org",
        "sip:joe@contoso.com",
    );
    // Several connections in the pool, all of which the restart breaks.
    std::thread::scope(|s| {
        for i in 0..4 {
            let store = &store;
            s.spawn(move || {
                store
                    .put_subscription(&minimal(
                        Direction::Inbound,
                        &format!("u{i}@example.org"),
                        "sip:x@contoso.com",
                    ))
                    .unwrap()
            });
        }
    });
    store.put_subscription(&a).unwrap();
    for crash in [false, true] {
        if crash {
            pg.kill();
        } else {
            pg.stop();
        }
        let started = std::time::Instant::now();
        let results = [
            store.put_subscription(&a).map(|_| ()),
            store.put_subscription_lazy(&a).map(|_| ()),
            store.flush(),
            store
                .get_subscription(a.direction, &a.local_jid, &a.remote_aor)
                .map(|_| ()),
            store.stats().map(|_| ()),
        ];
        for r in results {
            match r {
                Err(StoreError::Unavailable(cause)) => assert!(
                    cause.starts_with(&format!("127.0.0.1:{}/lcs: ", pg.port())),
                    "{cause}"
                ),
                other => panic!("expected Unavailable, got {other:?}"),
            }
        }
        let scanned: Vec<_> = store.subscriptions().collect();
        assert!(
            matches!(&scanned[..], [Err(StoreError::Unavailable(_))]),
            "{scanned:?}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(6 * 3),
            "calls took {:?} while the database was away",
            started.elapsed()
        );
        pg.start_again();
        // Back: the very first calls succeed.
        let mut a2 = a.clone();
        a2.updated_unix += u64::from(crash) + 1;
        store.put_subscription(&a2).unwrap();
        assert_eq!(
            store
                .get_subscription(a.direction, &a.local_jid, &a.remote_aor)
                .unwrap(),
            Some(a2)
        );
        assert_eq!(collect(store.subscriptions()).len(), 5);
    }
}
