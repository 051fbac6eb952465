//! The leader lease's I/O: the `lcs_leader` row in PostgreSQL and the task that takes and
//! renews it, driven by the sans-IO [`Lease`] (docs/high-availability.md).
//!
//! The row (`id = 1`) holds the epoch, the holder's node name and the expiry, in the
//! database's clock (`now()`), so that the nodes' clocks never need to agree. Taking the lease
//! is one `UPDATE … WHERE expires_at < now() RETURNING epoch` that raises the epoch; renewing it
//! is one `UPDATE … WHERE epoch = $mine`. Every attempt runs on the lease's own connection
//! (not the store's pool, so that a busy store does not delay a renewal) and is bounded by
//! [`LeaseSettings::attempt_timeout`]: a hung connection is dropped and opened again.
//!
//! [`start`] runs the task; the runner gets the [`LeaseEvent`]s and a watch of the local
//! deadline ([`LeaseHandle::serving_until`]), which it checks before each input.

#![allow(clippy::disallowed_methods)] // the lease task reads the monotonic clock

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
pub use tokio_postgres::Config as PgConfig;
use tokio_postgres::{Client, NoTls};
use tracing::{debug, info, warn};

use super::lease::{Attempt, Lease, LeaseEvent, LeaseSettings, Outcome};

/// The lease row's table; created (with its one row) if missing. The PostgreSQL store's
/// schema has the same table: whichever runs first creates it.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS lcs_leader (\
     id int PRIMARY KEY CHECK (id = 1), \
     epoch bigint NOT NULL, \
     holder text, \
     expires_at timestamptz); \
     INSERT INTO lcs_leader (id, epoch) VALUES (1, 0) ON CONFLICT (id) DO NOTHING";

const TAKE: &str = "UPDATE lcs_leader SET epoch = epoch + 1, holder = $1, \
     expires_at = now() + $2::bigint * interval '1 millisecond' \
     WHERE id = 1 AND (expires_at IS NULL OR expires_at < now()) RETURNING epoch";

const RENEW: &str = "UPDATE lcs_leader SET expires_at = now() + $2::bigint * interval '1 millisecond' \
     WHERE id = 1 AND epoch = $1 RETURNING epoch";

/// The row as it is: holder, epoch, milliseconds until it expires (negative: expired; none:
/// released or never held).
const READ: &str = "SELECT holder, epoch, \
     (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::bigint FROM lcs_leader WHERE id = 1";

/// Gives the lease up at a clean stop, so that a standby takes it at once.
const RELEASE: &str =
    "UPDATE lcs_leader SET expires_at = NULL WHERE id = 1 AND epoch = $1 RETURNING epoch";

/// Who asks for the lease, and where.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Where the database is and how to log in (the store's settings).
    pub pg: tokio_postgres::Config,
    /// This node's name in the row's `holder` (logged by the others).
    pub node: String,
    pub settings: LeaseSettings,
}

/// One connection to the database for the lease.
pub struct LeaseDb {
    config: LeaseConfig,
    client: Option<Client>,
}

impl LeaseDb {
    pub fn new(config: LeaseConfig) -> LeaseDb {
        LeaseDb {
            config,
            client: None,
        }
    }

    /// The connection, opened (and the table created) if there is none or it was closed.
    async fn client(&mut self) -> Result<&Client, String> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            let mut pg = self.config.pg.clone();
            let timeout = self.config.settings.attempt_timeout();
            pg.connect_timeout(timeout)
                .keepalives(true)
                // TCP counts keep-alive idle time in whole seconds (0 is refused).
                .keepalives_idle(timeout.max(Duration::from_secs(1)))
                .application_name(format!("lcs-bridge lease {}", self.config.node));
            let (client, connection) = pg.connect(NoTls).await.map_err(|e| pg_error(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    debug!(reason = %e, "lease: database connection ended");
                }
            });
            client
                .batch_execute(SCHEMA)
                .await
                .map_err(|e| format!("lease table: {}", pg_error(&e)))?;
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| "no connection".to_owned())
    }

    /// Runs `attempt`, bounded by the attempt timeout; a failure or timeout drops the
    /// connection (the next attempt opens a new one).
    pub async fn attempt(&mut self, attempt: Attempt) -> Outcome {
        let timeout = self.config.settings.attempt_timeout();
        let r = tokio::time::timeout(timeout, self.run(attempt)).await;
        let failed = match r {
            Ok(Ok(outcome)) => return outcome,
            Ok(Err(e)) => e,
            Err(_) => format!("no answer from the database in {} ms", timeout.as_millis()),
        };
        self.client = None;
        Outcome::Failed(failed)
    }

    async fn run(&mut self, attempt: Attempt) -> Result<Outcome, String> {
        let ttl_ms = i64::try_from(self.config.settings.ttl.as_millis()).unwrap_or(i64::MAX);
        let node = self.config.node.clone();
        let client = self.client().await?;
        let err = |e: tokio_postgres::Error| pg_error(&e);
        match attempt {
            Attempt::Take => {
                if let Some(row) = client
                    .query_opt(TAKE, &[&node, &ttl_ms])
                    .await
                    .map_err(err)?
                {
                    return Ok(Outcome::Taken { epoch: row.get(0) });
                }
                let (holder, epoch, left) = read(client).await?;
                Ok(Outcome::Held {
                    holder,
                    epoch,
                    remaining: left.map(|ms| Duration::from_millis(ms.max(0) as u64)),
                })
            }
            Attempt::Renew { epoch } => {
                let renewed = client
                    .query_opt(RENEW, &[&epoch, &ttl_ms])
                    .await
                    .map_err(err)?;
                if renewed.is_some() {
                    return Ok(Outcome::Renewed);
                }
                let (holder, epoch, _) = read(client).await?;
                Ok(Outcome::Lost { epoch, holder })
            }
        }
    }

    /// Gives the lease held under `epoch` up (a clean stop), bounded like an attempt.
    pub async fn release(&mut self, epoch: i64) -> Result<bool, String> {
        let timeout = self.config.settings.attempt_timeout();
        let released = async {
            let client = self.client().await?;
            let row = client
                .query_opt(RELEASE, &[&epoch])
                .await
                .map_err(|e| pg_error(&e))?;
            Ok::<bool, String>(row.is_some())
        };
        tokio::time::timeout(timeout, released)
            .await
            .map_err(|_| "no answer from the database".to_owned())?
    }

    /// The row: (holder, epoch, milliseconds until it expires).
    pub async fn read(&mut self) -> Result<(Option<String>, i64, Option<i64>), String> {
        let client = self.client().await?;
        read(client).await
    }
}

async fn read(client: &Client) -> Result<(Option<String>, i64, Option<i64>), String> {
    let row = client
        .query_one(READ, &[])
        .await
        .map_err(|e| pg_error(&e))?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// A database error with its cause (tokio-postgres keeps the cause apart: "error connecting
/// to server: Connection refused").
fn pg_error(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The running lease task, seen from the runner.
pub struct LeaseHandle {
    /// What changed, in order (the task ends after `Deposed`).
    pub events: mpsc::Receiver<LeaseEvent>,
    /// The local deadline while this node may serve; `None` while it may not (standby,
    /// suspended, deposed).
    pub serving_until: watch::Receiver<Option<Instant>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseHandle {
    /// Stops renewing and gives the lease up (a clean stop), waiting at most one attempt's
    /// time for the database.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Starts the lease task: a standby that takes the lease when it can, then renews it.
pub fn start(config: LeaseConfig) -> LeaseHandle {
    let (events_tx, events) = mpsc::channel(16);
    let (serving_tx, serving_until) = watch::channel(None);
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(drive(config, events_tx, serving_tx, stop_rx));
    LeaseHandle {
        events,
        serving_until,
        stop: Some(stop),
        task,
    }
}

async fn drive(
    config: LeaseConfig,
    events: mpsc::Sender<LeaseEvent>,
    serving: watch::Sender<Option<Instant>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut lease = Lease::new(config.settings, Instant::now());
    let mut db = LeaseDb::new(config);
    // Whether the last attempt failed (logged once per streak, and its end).
    let mut failing = false;
    loop {
        let now = Instant::now();
        let mut changed = Vec::new();
        changed.extend(lease.handle_timeout(now));
        if let Some(attempt) = lease.poll_attempt(now) {
            let outcome = db.attempt(attempt).await;
            match &outcome {
                Outcome::Failed(reason) if !failing => {
                    warn!(%reason, ?attempt, "lease: the database does not answer; trying again");
                    failing = true;
                }
                Outcome::Failed(reason) => debug!(%reason, ?attempt, "lease: attempt failed"),
                _ if failing => {
                    info!(?attempt, "lease: the database answers again");
                    failing = false;
                }
                _ => {}
            }
            changed.extend(lease.outcome(Instant::now(), outcome));
            changed.extend(lease.handle_timeout(Instant::now()));
        }
        // Publish first, so that the runner's check is never behind an event.
        let until = lease.deadline().filter(|_| lease.serving(Instant::now()));
        serving.send_if_modified(|v| {
            let new = *v != until;
            *v = until;
            new
        });
        for e in changed {
            let deposed = matches!(e, LeaseEvent::Deposed { .. });
            if events.send(e).await.is_err() || deposed {
                return;
            }
        }
        let Some(next) = lease.poll_timeout() else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
            _ = &mut stop => {
                serving.send_replace(None);
                if let (Some(epoch), super::lease::Role::Active | super::lease::Role::Suspended) =
                    (lease.epoch(), lease.role())
                {
                    match db.release(epoch).await {
                        Ok(_) => debug!(epoch, "lease released"),
                        Err(reason) => warn!(%reason, epoch, "lease not released (it expires)"),
                    }
                }
                return;
            }
        }
    }
}
