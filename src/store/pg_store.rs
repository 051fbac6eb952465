//! [`PgStore`]: the [`Store`] in a PostgreSQL database (docs/storage.md "PostgreSQL"), for a
//! bridge whose state must outlive its machine (docs/high-availability.md).
//!
//! **Layout.** The same keys and records as sled (`codec.rs`), one row each in
//! `lcs_records (k bytea PRIMARY KEY, v bytea)`: bytea compares bytewise, so key order, prefix
//! scans, the key rules and corrupt-record reporting are those of the other stores, a schema
//! version means the same layout in every backend, and `store export` reads them all alike. The
//! schema version is the one row of `lcs_schema`; `lcs_leader` holds the leader's epoch (below).
//! The bridge creates and migrates all three (under an advisory lock, so that two bridges
//! starting together do not race); a schema newer than this build is refused.
//!
//! **Durability.** A synced write is one transaction committed with the server's
//! `synchronous_commit` (never `off`: a session that has it off turns it on), so it is in the
//! server's write-ahead log on disk — and on its synchronous standbys, if it has any — before
//! the call returns. A lazy write (unsynced subscription put, IM dialog) is a transaction
//! committed with `synchronous_commit = off`: it returns before the log is flushed, which the
//! server's WAL writer does within `3 × wal_writer_delay` (600 ms by default). The log is one
//! sequence, so writes are never reordered and the next synced commit flushes every lazy one
//! before it: a synced call is a barrier, as with sled. A crash of the database server loses at
//! most the lazy writes of that last moment; a crash of the bridge loses nothing it committed.
//! Concurrent synced writes on different connections share the server's log flushes (its own
//! group commit), and [`Store::put_subscriptions`] is one transaction: one flush for any number
//! of records.
//!
//! **Fencing.** Every write transaction first reads `lcs_leader`'s epoch `FOR SHARE`: a
//! takeover's `UPDATE` of that row waits until the write has committed, and every write after
//! the takeover sees the new epoch. When the store has an epoch ([`PgStore::set_epoch`], set by
//! the leader lease after it took the lease) and the row's differs, the transaction is rolled
//! back and the write fails with [`StoreError::Fenced`]: a deposed leader writes nothing.
//!
//! **Threads.** The [`Store`] trait is synchronous; the store owns a small tokio runtime (two
//! threads) that runs the database client, and each call hands its work to it and blocks on a
//! channel — allowed on any thread, in or out of another runtime (the bridge calls it from
//! `spawn_blocking`, the store commands from `main`). Connections come from a pool of at most
//! [`PgOptions::pool_size`]; one that fails is dropped and a new one connected on the next call,
//! so the store rides out a database restart: while the server is away, calls fail with
//! [`StoreError::Unavailable`] after at most the connect timeout.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

use super::codec::{self, IM_PREFIX, SUB_PREFIX};
use super::{
    CURRENT_SCHEMA_VERSION, Direction, ImDialog, Records, Stats, Store, StoreError, Subscription,
};

/// Records fetched per round trip by the iterators.
const PAGE: i64 = 512;
/// Key of the advisory lock that serializes schema creation and migration.
const MIGRATION_LOCK: i64 = 0x6c63_735f_6272_6467; // "lcs_brdg"

/// How to reach the database; see docs/configuration.md `[storage]`.
#[derive(Clone)]
pub struct PgOptions {
    /// A `postgres://` URL or a libpq `key=value` string, without the password.
    pub url: String,
    /// The password (from `storage.password_file`), if the server wants one.
    pub password: Option<String>,
    /// At most this many connections.
    pub pool_size: usize,
    /// Connecting (TCP, TLS-less handshake and authentication) gives up after this.
    pub connect_timeout: Duration,
    /// A call waiting this long for a connection or an answer fails with
    /// [`StoreError::Unavailable`] (the connection is then dropped).
    pub op_timeout: Duration,
}

impl PgOptions {
    /// Defaults for everything but where the database is.
    pub fn new(url: &str, password: Option<String>) -> PgOptions {
        PgOptions {
            url: url.to_owned(),
            password,
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(15),
        }
    }
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

/// `host:port/dbname` (the first host), for messages; never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

/// The PostgreSQL-backed store.
pub struct PgStore {
    /// Taken in `drop` (shut down without waiting).
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    inner: Arc<Inner>,
    schema_version: u32,
    migrated_from: Option<u32>,
}

struct Inner {
    config: tokio_postgres::Config,
    target: String,
    idle: Mutex<Vec<Conn>>,
    slots: Arc<Semaphore>,
    connect_timeout: Duration,
    op_timeout: Duration,
    /// The epoch writes are made under; `NO_EPOCH` = no fencing.
    epoch: AtomicU64,
}

const NO_EPOCH: u64 = u64::MAX;

/// One connection and its prepared statements.
struct Conn {
    client: Client,
    leader_epoch: Statement,
    get: Statement,
    put: Statement,
    delete: Statement,
    delete_range: Statement,
    scan: Statement,
}

/// A database error: [`StoreError::Unavailable`] when the server cannot be reached or is going
/// away (the connection is then useless), [`StoreError::Backend`] for anything else.
fn pg_err(target: &str, e: tokio_postgres::Error) -> StoreError {
    if unavailable(&e) {
        StoreError::Unavailable(format!("{target}: {}", chain(&e)))
    } else {
        StoreError::Backend(format!("{target}: {}", chain(&e)))
    }
}

fn unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                    SqlState::READ_ONLY_SQL_TRANSACTION,
                ]
                .contains(code)
        }
        None => true,
    }
}

/// The error and its causes, `: `-separated (tokio-postgres keeps the server's message and the
/// I/O error below its own).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// The smallest key above every key starting with `prefix` (`None`: there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// One write of a transaction.
enum Write {
    /// Insert or replace these records (keys distinct).
    Put(Vec<(Vec<u8>, Vec<u8>)>),
    Delete(Vec<u8>),
    /// Every key in `[from, to)`.
    DeleteRange(Vec<u8>, Option<Vec<u8>>),
}

impl Inner {
    /// A connection from the pool, or a new one; `None` in the result's second part is never
    /// returned: the permit is held while the connection is out.
    async fn checkout(&self) -> Result<(Conn, tokio::sync::OwnedSemaphorePermit), StoreError> {
        let permit = tokio::time::timeout(self.op_timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "{}: every connection busy for {:?}",
                    self.target, self.op_timeout
                ))
            })?
            .map_err(|_| StoreError::Backend("the store is closed".into()))?;
        loop {
            let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match conn {
                Some(c) if c.client.is_closed() => continue,
                Some(c) => return Ok((c, permit)),
                None => break,
            }
        }
        let conn = tokio::time::timeout(self.connect_timeout, self.connect())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "{}: cannot connect: no answer within {:?}",
                    self.target, self.connect_timeout
                ))
            })??;
        Ok((conn, permit))
    }

    fn checkin(&self, conn: Conn) {
        if !conn.client.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }

    /// A new session, without prepared statements (they need the tables: see
    /// [`open_schema`]).
    async fn connect_raw(&self) -> Result<Client, StoreError> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| {
            StoreError::Unavailable(format!("{}: cannot connect: {}", self.target, chain(&e)))
        })?;
        let target = self.target.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target = %target, error = %chain(&e), "store: database connection ended");
            }
        });
        let e = |e| pg_err(&self.target, e);
        // A synced write must wait for the log flush, whatever the role or database says.
        let sync: String = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .map_err(e)?
            .get(0);
        if sync == "off" {
            client
                .batch_execute("SET synchronous_commit TO on")
                .await
                .map_err(e)?;
        }
        Ok(client)
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let client = self.connect_raw().await?;
        let e = |e| pg_err(&self.target, e);
        Ok(Conn {
            leader_epoch: client
                .prepare("SELECT epoch FROM lcs_leader WHERE id = 1 FOR SHARE")
                .await
                .map_err(e)?,
            get: client
                .prepare("SELECT v FROM lcs_records WHERE k = $1")
                .await
                .map_err(e)?,
            put: client
                .prepare(
                    "INSERT INTO lcs_records (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                     ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
                )
                .await
                .map_err(e)?,
            delete: client
                .prepare("DELETE FROM lcs_records WHERE k = $1")
                .await
                .map_err(e)?,
            delete_range: client
                .prepare("DELETE FROM lcs_records WHERE k >= $1 AND ($2::bytea IS NULL OR k < $2)")
                .await
                .map_err(e)?,
            scan: client
                .prepare(
                    "SELECT k, v FROM lcs_records WHERE k >= $1 AND ($2::bytea IS NULL OR k < $2) \
                     ORDER BY k LIMIT $3",
                )
                .await
                .map_err(e)?,
            client,
        })
    }

    /// Runs `f` on a pooled connection within the operation timeout; the connection goes back
    /// to the pool only when `f` succeeded or failed with a plain database error.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(
            &'c Conn,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = Result<T, StoreError>> + Send + 'c>,
        >,
    {
        let (conn, _permit) = self.checkout().await?;
        let result = tokio::time::timeout(self.op_timeout, f(&conn)).await;
        match result {
            Ok(r) => {
                // After any other error the session's state is not known for sure (a
                // transaction left open, say): a new connection is cheaper than doubt.
                if matches!(r, Ok(_) | Err(StoreError::Fenced { .. })) {
                    self.checkin(conn);
                }
                r
            }
            // The connection is in an unknown state: dropped (the server rolls back what it
            // had not committed).
            Err(_) => Err(StoreError::Unavailable(format!(
                "{}: no answer within {:?}",
                self.target, self.op_timeout
            ))),
        }
    }

    /// One write transaction: `BEGIN`, the leader epoch `FOR SHARE`, the writes, `COMMIT` (or
    /// `ROLLBACK` when the epoch is not ours). The first three go out together (pipelined).
    /// Returns the rows each write affected.
    async fn write(&self, synced: bool, writes: Vec<Write>) -> Result<Vec<u64>, StoreError> {
        let mine = self.epoch.load(Ordering::SeqCst);
        let target = self.target.clone();
        self.with_conn(move |c| {
            Box::pin(async move {
                let e = |e| pg_err(&target, e);
                let begin = if synced {
                    "BEGIN"
                } else {
                    "BEGIN; SET LOCAL synchronous_commit TO off"
                };
                let statements = async {
                    let mut affected = Vec::with_capacity(writes.len());
                    for w in &writes {
                        let n = match w {
                            Write::Put(records) => {
                                let (keys, values): (Vec<&[u8]>, Vec<&[u8]>) = records
                                    .iter()
                                    .map(|(k, v)| (k.as_slice(), v.as_slice()))
                                    .unzip();
                                c.client.execute(&c.put, &[&keys, &values]).await
                            }
                            Write::Delete(k) => c.client.execute(&c.delete, &[k]).await,
                            Write::DeleteRange(from, to) => {
                                c.client.execute(&c.delete_range, &[from, to]).await
                            }
                        };
                        affected.push(n?);
                    }
                    Ok::<_, tokio_postgres::Error>(affected)
                };
                let (began, epoch, affected) = futures::join!(
                    c.client.batch_execute(begin),
                    c.client.query_opt(&c.leader_epoch, &[]),
                    statements
                );
                let outcome = began.map_err(e).and_then(|()| {
                    let epoch = epoch.map_err(e)?.ok_or_else(|| {
                        StoreError::Backend(format!("{target}: lcs_leader has no row 1"))
                    })?;
                    let current: i64 = epoch.get(0);
                    let affected = affected.map_err(e)?;
                    if mine != NO_EPOCH && u64::try_from(current).ok() != Some(mine) {
                        return Err(StoreError::Fenced {
                            mine,
                            current: u64::try_from(current).unwrap_or(0),
                        });
                    }
                    Ok(affected)
                });
                match outcome {
                    Ok(affected) => {
                        c.client.batch_execute("COMMIT").await.map_err(e)?;
                        Ok(affected)
                    }
                    Err(err) => {
                        // Nothing of it stays. If even the rollback fails, the session is
                        // not to be trusted: `Unavailable` drops the connection (and the server
                        // rolls back when it goes).
                        match c.client.batch_execute("ROLLBACK").await {
                            Ok(()) => Err(err),
                            Err(_) if matches!(err, StoreError::Unavailable(_)) => Err(err),
                            Err(rb) => Err(StoreError::Unavailable(format!(
                                "{err}; then the rollback failed: {}",
                                chain(&rb)
                            ))),
                        }
                    }
                }
            })
        })
        .await
    }

    async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        let target = self.target.clone();
        self.with_conn(move |c| {
            Box::pin(async move {
                let row = c
                    .client
                    .query_opt(&c.get, &[&key])
                    .await
                    .map_err(|e| pg_err(&target, e))?;
                Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
            })
        })
        .await
    }

    async fn page(
        &self,
        from: Vec<u8>,
        to: Option<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let target = self.target.clone();
        self.with_conn(move |c| {
            Box::pin(async move {
                let rows = c
                    .client
                    .query(&c.scan, &[&from, &to, &PAGE])
                    .await
                    .map_err(|e| pg_err(&target, e))?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                    .collect())
            })
        })
        .await
    }
}

/// What opening found and did.
struct Opened {
    schema_version: u32,
    migrated_from: Option<u32>,
}

impl PgStore {
    /// Connects, creates the schema in an empty database or migrates an older one, and checks
    /// that a newer one is refused ([`StoreError::SchemaTooNew`]).
    pub fn open(options: &PgOptions) -> Result<PgStore, StoreError> {
        Self::open_as(options, true)
    }

    /// For the administrator's commands, which only read: the schema must be there already
    /// ([`StoreError::Missing`] otherwise) and is not migrated, as
    /// [`super::SledStore::open_read_only`] does.
    pub fn open_read_only(options: &PgOptions) -> Result<PgStore, StoreError> {
        Self::open_as(options, false)
    }

    fn open_as(options: &PgOptions, migrating: bool) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config =
            options.url.parse().map_err(|e: tokio_postgres::Error| {
                StoreError::Backend(format!("storage.url: {}", chain(&e)))
            })?;
        if let Some(p) = &options.password {
            config.password(p.as_bytes());
        }
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("lcs-bridge");
        }
        // Notice a dead server or a cut network on an idle pooled connection.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let target = describe(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lcs-store-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot start the store's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let inner = Arc::new(Inner {
            config,
            target,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(options.pool_size.max(1))),
            connect_timeout: options.connect_timeout,
            op_timeout: options.op_timeout,
            epoch: AtomicU64::new(NO_EPOCH),
        });
        let mut store = PgStore {
            runtime: Some(runtime),
            handle,
            inner,
            schema_version: 0,
            migrated_from: None,
        };
        let i = store.inner.clone();
        let opened = store.run(async move { open_schema(&i, migrating).await })?;
        store.schema_version = opened.schema_version;
        store.migrated_from = opened.migrated_from;
        Ok(store)
    }

    /// `host:port/dbname`, for messages.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// The schema version (after any migration at open; as found by
    /// [`PgStore::open_read_only`]).
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    /// The schema version this open migrated the database from, if it migrated one.
    pub fn migrated_from(&self) -> Option<u32> {
        self.migrated_from
    }

    /// Makes every later write carry leader epoch `epoch` (`None`: no fencing): a write finds
    /// another epoch in `lcs_leader` → [`StoreError::Fenced`], nothing written.
    pub fn set_epoch(&self, epoch: Option<u64>) {
        let v = match epoch {
            Some(e) if e != NO_EPOCH => e,
            Some(_) => NO_EPOCH - 1,
            None => NO_EPOCH,
        };
        self.inner.epoch.store(v, Ordering::SeqCst);
    }

    /// The epoch writes carry.
    pub fn epoch(&self) -> Option<u64> {
        let v = self.inner.epoch.load(Ordering::SeqCst);
        (v != NO_EPOCH).then_some(v)
    }

    /// Test and recovery hook: raw bytes under a raw key, bypassing the codec (to plant a
    /// corrupt record in tests; never used by the bridge). Synced and fenced like any write.
    #[doc(hidden)]
    pub fn put_raw(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write(true, vec![Write::Put(vec![(key.to_vec(), value.to_vec())])])
            .map(|_| ())
    }

    /// Hands `f` to the store's runtime and blocks until it is done.
    fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(StoreError::Backend("the store's runtime stopped".into())))
    }

    fn write(&self, synced: bool, writes: Vec<Write>) -> Result<Vec<u64>, StoreError> {
        let i = self.inner.clone();
        self.run(async move { i.write(synced, writes).await })
    }

    fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        let i = self.inner.clone();
        self.run(async move { i.get(key).await })
    }

    fn put(&self, synced: bool, subs: &[Subscription]) -> Result<(), StoreError> {
        // Distinct keys (the statement may not touch a row twice); the last record wins, as
        // it would written one by one.
        let mut records = BTreeMap::new();
        for s in subs {
            let key = codec::sub_key(s.direction, &s.local_jid, &s.remote_aor)?;
            records.insert(key, codec::encode_subscription(s));
        }
        self.write(synced, vec![Write::Put(records.into_iter().collect())])
            .map(|_| ())
    }

    fn scan<'a, T: 'a>(
        &'a self,
        prefix: &[u8],
        decode: fn(&[u8], &[u8]) -> Result<T, StoreError>,
    ) -> Records<'a, T> {
        let end = prefix_end(prefix);
        let mut from = Some(prefix.to_vec());
        let mut buffer: VecDeque<(Vec<u8>, Vec<u8>)> = VecDeque::new();
        Box::new(std::iter::from_fn(move || {
            loop {
                if let Some((k, v)) = buffer.pop_front() {
                    return Some(decode(&k, &v));
                }
                let start = from.take()?;
                let i = self.inner.clone();
                let to = end.clone();
                match self.run(async move { i.page(start, to).await }) {
                    Ok(rows) => {
                        if rows.len() as i64 == PAGE {
                            // The next page starts right after the last key.
                            let mut next = rows.last().map(|(k, _)| k.clone()).unwrap_or_default();
                            next.push(0);
                            from = Some(next);
                        }
                        if rows.is_empty() {
                            return None;
                        }
                        buffer.extend(rows);
                    }
                    // A database error ends the scan (`from` stays taken).
                    Err(e) => return Some(Err(e)),
                }
            }
        }))
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Idle connections close with the runtime's tasks; nothing to wait for (and
            // waiting is not allowed if the last handle is dropped inside another runtime).
            rt.shutdown_background();
        }
    }
}

/// Creates or migrates the schema (or, read-only, only reads its version), in one transaction
/// under [`MIGRATION_LOCK`].
async fn open_schema(inner: &Inner, migrating: bool) -> Result<Opened, StoreError> {
    // Not from the pool: a pooled connection prepares statements on tables that may not be
    // there yet.
    let client = tokio::time::timeout(inner.connect_timeout, inner.connect_raw())
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!(
                "{}: cannot connect: no answer within {:?}",
                inner.target, inner.connect_timeout
            ))
        })??;
    let target = inner.target.clone();
    let e = |e| pg_err(&target, e);
    let c = &client;
    c.batch_execute("BEGIN").await.map_err(e)?;
    let result = async {
        c.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(e)?;
        let exists = |table: &'static str| async move {
            c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .await
                .map(|r| r.get::<_, bool>(0))
        };
        let found: u32 = if exists("lcs_schema").await.map_err(e)? {
            let row = c
                .query_opt("SELECT version FROM lcs_schema WHERE id = 1", &[])
                .await
                .map_err(e)?;
            let v: i32 = row
                .ok_or_else(|| StoreError::Corrupt {
                    key: "lcs_schema".into(),
                    reason: "no row".into(),
                })?
                .get(0);
            u32::try_from(v).map_err(|_| StoreError::Corrupt {
                key: "lcs_schema".into(),
                reason: format!("version {v}"),
            })?
        } else if exists("lcs_records").await.map_err(e)? {
            return Err(StoreError::NotAStore {
                path: target.clone().into(),
                reason: "it has an lcs_records table but no lcs_schema".into(),
            });
        } else {
            0
        };
        if found > CURRENT_SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: CURRENT_SCHEMA_VERSION,
            });
        }
        if !migrating {
            if found == 0 {
                return Err(StoreError::NoDatabaseStore {
                    target: target.clone(),
                });
            }
            return Ok(Opened {
                schema_version: found,
                migrated_from: None,
            });
        }
        let mut v = found;
        while v < CURRENT_SCHEMA_VERSION {
            match v {
                // 0 → 1: the tables (the layout of codec.rs), the leader row at epoch 0.
                0 => c
                    .batch_execute(
                        "CREATE TABLE lcs_records (k bytea PRIMARY KEY, v bytea NOT NULL);
                         CREATE TABLE lcs_leader (id int PRIMARY KEY CHECK (id = 1),
                             epoch bigint NOT NULL, holder text, expires_at timestamptz);
                         INSERT INTO lcs_leader (id, epoch) VALUES (1, 0);
                         CREATE TABLE lcs_schema (id int PRIMARY KEY CHECK (id = 1),
                             version int NOT NULL);
                         INSERT INTO lcs_schema (id, version) VALUES (1, 0);",
                    )
                    .await
                    .map_err(e)?,
                // 1 → 2: display names in subscription records; a version-1 record reads as
                // before, nothing to convert.
                1 => {}
                v => {
                    return Err(StoreError::Backend(format!(
                        "no migration step from schema version {v}"
                    )));
                }
            }
            v += 1;
            c.execute(
                "UPDATE lcs_schema SET version = $1 WHERE id = 1",
                &[&i32::try_from(v).unwrap_or(i32::MAX)],
            )
            .await
            .map_err(e)?;
        }
        Ok(Opened {
            schema_version: CURRENT_SCHEMA_VERSION,
            migrated_from: (found > 0 && found < CURRENT_SCHEMA_VERSION).then_some(found),
        })
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    c.batch_execute(end).await.map_err(e)?;
    result
}

impl Store for PgStore {
    fn fence(&self, epoch: u64) -> bool {
        self.set_epoch(Some(epoch));
        true
    }

    fn put_subscription(&self, s: &Subscription) -> Result<(), StoreError> {
        self.put(true, std::slice::from_ref(s))
    }

    fn put_subscription_lazy(&self, s: &Subscription) -> Result<(), StoreError> {
        self.put(false, std::slice::from_ref(s))
    }

    fn put_subscriptions(&self, batch: &[Subscription]) -> Result<(), StoreError> {
        self.put(true, batch)
    }

    fn get_subscription(
        &self,
        direction: Direction,
        local_jid: &str,
        remote_aor: &str,
    ) -> Result<Option<Subscription>, StoreError> {
        let key = codec::sub_key(direction, local_jid, remote_aor)?;
        match self.get(key.clone())? {
            Some(v) => codec::decode_subscription(&key, &v).map(Some),
            None => Ok(None),
        }
    }

    fn remove_subscription(
        &self,
        direction: Direction,
        local_jid: &str,
        remote_aor: &str,
    ) -> Result<bool, StoreError> {
        let key = codec::sub_key(direction, local_jid, remote_aor)?;
        // Synced even when nothing is removed: the epoch's row lock gives the transaction an
        // id, so its commit waits for the log flush (a barrier for the lazy writes before it).
        let n = self.write(true, vec![Write::Delete(key)])?;
        Ok(n.first().copied().unwrap_or(0) > 0)
    }

    fn subscriptions(&self) -> Records<'_, Subscription> {
        self.scan(SUB_PREFIX, codec::decode_subscription)
    }

    fn subscriptions_of(&self, direction: Direction, local_jid: &str) -> Records<'_, Subscription> {
        match codec::sub_user_prefix(direction, local_jid) {
            Ok(prefix) => self.scan(&prefix, codec::decode_subscription),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn put_im_dialog(&self, d: &ImDialog) -> Result<(), StoreError> {
        let key = codec::im_key(&d.local_jid, &d.remote_aor)?;
        self.write(
            false,
            vec![Write::Put(vec![(key, codec::encode_im(&d.dialog))])],
        )
        .map(|_| ())
    }

    fn get_im_dialog(
        &self,
        local_jid: &str,
        remote_aor: &str,
    ) -> Result<Option<ImDialog>, StoreError> {
        let key = codec::im_key(local_jid, remote_aor)?;
        match self.get(key.clone())? {
            Some(v) => codec::decode_im(&key, &v).map(Some),
            None => Ok(None),
        }
    }

    fn remove_im_dialog(&self, local_jid: &str, remote_aor: &str) -> Result<bool, StoreError> {
        let key = codec::im_key(local_jid, remote_aor)?;
        let n = self.write(false, vec![Write::Delete(key)])?;
        Ok(n.first().copied().unwrap_or(0) > 0)
    }

    fn im_dialogs(&self) -> Records<'_, ImDialog> {
        self.scan(IM_PREFIX, codec::decode_im)
    }

    fn clear_im_dialogs(&self) -> Result<u64, StoreError> {
        let n = self.write(
            true,
            vec![Write::DeleteRange(
                IM_PREFIX.to_vec(),
                prefix_end(IM_PREFIX),
            )],
        )?;
        Ok(n.first().copied().unwrap_or(0))
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        super::scan_stats(self)
    }

    fn flush(&self) -> Result<(), StoreError> {
        // An empty synced write transaction: its commit waits for the log flush, which covers
        // every lazy commit before it.
        self.write(true, Vec::new()).map(|_| ())
    }
}
