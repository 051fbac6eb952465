//! The leader lease against a real PostgreSQL (lcs_test_support::postgres): two nodes compete
//! for the `lcs_leader` row, the epoch fences a deposed holder, a clean release hands over at
//! once, and a holder rides out a database restart under its own epoch
//! (docs/high-availability.md). The bridge processes' failover is tests/ha_failover.rs.
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::time::{Duration, Instant};

use lcs_bridge::store::lease::{Attempt, LeaseEvent, LeaseSettings, Outcome};
use lcs_bridge::store::pg_lease::{self, LeaseConfig, LeaseDb, PgConfig};
use lcs_test_support::postgres::Postgres;

fn config(pg: &Postgres, node: &str, ttl: Duration) -> LeaseConfig {
    let url = pg.url_with_password();
    LeaseConfig {
        pg: url.parse::<PgConfig>().expect("url"),
        node: node.to_owned(),
        settings: LeaseSettings::from_ttl(ttl),
    }
}

/// `attempt`, tried again (up to five times) while it fails: opening the connection (SCRAM)
/// may take longer than one attempt's bound on a loaded machine, and the lease task would
/// simply try again too.
async fn attempt(db: &mut LeaseDb, a: Attempt) -> Outcome {
    let mut last = Outcome::Failed("not tried".into());
    for _ in 0..5 {
        last = db.attempt(a).await;
        if !matches!(last, Outcome::Failed(_)) {
            break;
        }
    }
    last
}

fn held_by(outcome: &Outcome) -> Option<(Option<String>, i64)> {
    match outcome {
        Outcome::Held { holder, epoch, .. } => Some((holder.clone(), *epoch)),
        _ => None,
    }
}

/// Take, hold, expire, take over, fence: the row's epoch decides, in the database's clock.
#[tokio::test]
async fn two_nodes_compete_for_the_lease_row_and_the_epoch_fences_the_old_holder() {
    let Some(pg) = Postgres::start() else { return };
    let ttl = Duration::from_secs(3);
    let mut a = LeaseDb::new(config(&pg, "node-a", ttl));
    let mut b = LeaseDb::new(config(&pg, "node-b", ttl));

    assert_eq!(
        attempt(&mut a, Attempt::Take).await,
        Outcome::Taken { epoch: 1 }
    );
    let held = attempt(&mut b, Attempt::Take).await;
    assert_eq!(held_by(&held), Some((Some("node-a".into()), 1)), "{held:?}");
    let Outcome::Held {
        remaining: Some(left),
        ..
    } = held
    else {
        panic!("no expiry: {held:?}");
    };
    assert!(left <= ttl && left > ttl / 2, "{left:?}");
    // Renewed under its epoch: still held for b.
    assert_eq!(
        attempt(&mut a, Attempt::Renew { epoch: 1 }).await,
        Outcome::Renewed
    );
    assert!(held_by(&attempt(&mut b, Attempt::Take).await).is_some());

    // a stops renewing (stopped, partitioned): after the ttl b takes it under epoch 2.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(
        attempt(&mut b, Attempt::Take).await,
        Outcome::Taken { epoch: 2 }
    );
    // a's renewal now finds another epoch: deposed, never renewed.
    assert_eq!(
        attempt(&mut a, Attempt::Renew { epoch: 1 }).await,
        Outcome::Lost {
            epoch: 2,
            holder: Some("node-b".into())
        }
    );
    assert_eq!(pg.psql("SELECT epoch, holder FROM lcs_leader"), "2|node-b");

    // A clean stop releases it: the other node takes it at once, without waiting for a ttl.
    assert_eq!(b.release(2).await, Ok(true));
    assert_eq!(
        attempt(&mut a, Attempt::Take).await,
        Outcome::Taken { epoch: 3 }
    );
    // Releasing an epoch that is not the row's changes nothing.
    assert_eq!(b.release(2).await, Ok(false));
    assert!(held_by(&attempt(&mut b, Attempt::Take).await).is_some());
}

/// The database restarted under the holder: renewals fail while it is away (the connection
/// is dropped and opened again), and the first one after it is back succeeds under the same
/// epoch: nobody else took the lease.
#[tokio::test]
async fn a_holder_rides_out_a_database_restart_under_its_own_epoch() {
    let Some(pg) = Postgres::start() else { return };
    let ttl = Duration::from_secs(3);
    let mut a = LeaseDb::new(config(&pg, "node-a", ttl));
    assert_eq!(
        attempt(&mut a, Attempt::Take).await,
        Outcome::Taken { epoch: 1 }
    );
    pg.stop();
    let failed = a.attempt(Attempt::Renew { epoch: 1 }).await;
    assert!(matches!(failed, Outcome::Failed(_)), "{failed:?}");
    let failed = a.attempt(Attempt::Renew { epoch: 1 }).await;
    assert!(matches!(failed, Outcome::Failed(_)), "{failed:?}");
    pg.start_again();
    assert_eq!(
        attempt(&mut a, Attempt::Renew { epoch: 1 }).await,
        Outcome::Renewed
    );
    assert_eq!(pg.psql("SELECT epoch, holder FROM lcs_leader"), "1|node-a");
}

async fn next_event(handle: &mut pg_lease::LeaseHandle, within: Duration) -> LeaseEvent {
    tokio::time::timeout(within, handle.events.recv())
        .await
        .expect("a lease event in time")
        .expect("the lease task runs")
}

/// The lease tasks: the first node acquires and publishes its local deadline; the second
/// waits, naming the holder; when the first releases it (a clean stop), the second acquires
/// within a standby poll.
#[tokio::test]
async fn lease_tasks_hand_over_on_a_clean_stop() {
    let Some(pg) = Postgres::start() else { return };
    let ttl = Duration::from_secs(6);
    let mut a = pg_lease::start(config(&pg, "node-a", ttl));
    assert_eq!(
        next_event(&mut a, Duration::from_secs(10)).await,
        LeaseEvent::Acquired { epoch: 1 }
    );
    let until = a.serving_until.borrow().expect("serving");
    assert!(until > Instant::now() && until <= Instant::now() + ttl);
    let mut b = pg_lease::start(config(&pg, "node-b", ttl));
    assert_eq!(
        next_event(&mut b, Duration::from_secs(10)).await,
        LeaseEvent::Waiting {
            holder: Some("node-a".into()),
            epoch: 1
        }
    );
    assert_eq!(*b.serving_until.borrow(), None);
    // a renews: b hears nothing new for a few renewals.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), b.events.recv())
            .await
            .is_err()
    );
    let released = Instant::now();
    a.release().await;
    assert_eq!(
        next_event(&mut b, Duration::from_secs(5)).await,
        LeaseEvent::Acquired { epoch: 2 }
    );
    let took = released.elapsed();
    // One standby poll (1 s), with room for a loaded machine.
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(b.serving_until.borrow().is_some());
}
