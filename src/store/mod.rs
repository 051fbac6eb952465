//! The bridge's persistent state: presence subscriptions in both directions and IM session
//! dialogs, behind the [`Store`] trait (docs/storage.md).
//!
//! - [`SledStore`] (`sled_store.rs`): the product store, sled 0.34 in `<storage.path>/sled`.
//! - [`MemStore`] (`mem.rs`): the same behaviour in memory, for engine unit tests.
//! - [`PgStore`] (`pg_store.rs`): the same in a PostgreSQL database, for high availability.
//! - `RedbStore` (`redb_store.rs`, with `--features redb`): the evaluated alternative on redb.
//! - `lease.rs`: the leader lease's decisions (sans-IO); `pg_lease.rs`: its row in PostgreSQL
//!   and the task that takes and renews it (docs/high-availability.md).
//! - `codec.rs`: the key layout and the compact binary record encoding all of them use.
//!
//! **Durability.** A subscription write or removal is durable when the call returns: it is in
//! the database file and the file has been fsynced, so the caller may then acknowledge the
//! change to the other side (answer 202, send `subscribed`). [`Store::put_subscriptions`] writes
//! several atomically with one sync; concurrent synced writes from several threads share one
//! sync (group commit). [`Store::put_subscription_lazy`] and IM dialog writes are *not* synced
//! one by one — for changes whose loss costs nothing that matters (the last presence sent; an
//! ended IM session's removal) — they become durable with the next synced write,
//! [`Store::flush`], or sled's background flush (every 500 ms). An IM dialog that must be
//! durable (a session just established) is written and then flushed. Writes are never
//! reordered: after a crash the store holds every write up to some point, and at least every
//! synced one. So a synced call is also a barrier: when it returns, every write made before it
//! is durable too (even a removal that found nothing to remove syncs).
//!
//! **Identity.** A subscription is identified by (direction, local bare JID, remote AOR); an IM
//! dialog by (local bare JID, remote AOR). Neither part may be empty or contain NUL
//! ([`StoreError::InvalidKey`]). An incoming in-dialog request names both parties in From/To,
//! so the engine finds its record with a point lookup and then compares the dialog id.
//!
//! **Corrupt records.** A record that does not decode is reported as [`StoreError::Corrupt`]
//! naming its key. Point lookups return that error; iterators yield it for that record and go
//! on with the next one (so one bad record does not hide the others); [`Store::stats`] counts
//! such records in [`Stats::corrupt`]. An error from the database itself ends an iteration.

mod codec;
pub mod lease;
mod mem;
pub mod pg_lease;
mod pg_store;
#[cfg(feature = "redb")]
mod redb_store;
mod sled_store;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Value, json};
use thiserror::Error;

pub use mem::MemStore;
pub use pg_store::{PgOptions, PgStore};
#[cfg(feature = "redb")]
pub use redb_store::{REDB_FILE, RedbOptions, RedbStore};
pub use sled_store::{CURRENT_SCHEMA_VERSION, SledOptions, SledStore, migrate};

use crate::sip::dialog::Dialog;

/// Who watches whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// An XMPP user watches an LCS user: the bridge's SUBSCRIBE goes to LCS.
    Outbound,
    /// An LCS user watches an XMPP user: LCS's SUBSCRIBE came to the bridge.
    Inbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

    /// The stable name used in `store export` and `store stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Subscription state (RFC 6665 §4.1.3 Subscription-State values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SubState {
    /// Asked for, not yet authorized (or not yet answered).
    Pending,
    /// Authorized and running.
    Active,
    /// Ended; kept until the engine has told the other side and removes it.
    Terminated,
}

impl SubState {
    pub const ALL: [SubState; 3] = [SubState::Pending, SubState::Active, SubState::Terminated];

    pub fn as_str(self) -> &'static str {
        match self {
            SubState::Pending => "pending",
            SubState::Active => "active",
            SubState::Terminated => "terminated",
        }
    }
}

/// Where the presence authorization stands (XMPP `subscribe`/`subscribed`, LCS's
/// pending/active).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Approval {
    /// Nobody asked yet.
    None,
    /// Asked, no answer yet.
    Requested,
    Approved,
    Denied,
}

impl Approval {
    pub fn as_str(self) -> &'static str {
        match self {
            Approval::None => "none",
            Approval::Requested => "requested",
            Approval::Approved => "approved",
            Approval::Denied => "denied",
        }
    }
}

/// The persistent part of a SIP dialog ([`Dialog`]); the connection it lived on is not kept (it
/// does not survive a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogRecord {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    pub local_uri: String,
    pub local_display: Option<String>,
    pub remote_uri: String,
    pub remote_display: Option<String>,
    /// The peer's Contact: where in-dialog requests go.
    pub remote_target: String,
    /// Route headers' values in the order they are written.
    pub route_set: Vec<String>,
    /// CSeq of the last request this side sent.
    pub local_cseq: u32,
    /// CSeq of the last request the peer sent, if any.
    pub remote_cseq: Option<u32>,
    /// When the dialog was created (Unix seconds): LCS refuses dialogs older than 24 h.
    pub created_unix: u64,
}

impl DialogRecord {
    /// The record of a live dialog; `created_unix` is the wall-clock time of `dialog`'s
    /// creation (a [`Dialog`] keeps a monotonic instant).
    pub fn from_dialog(dialog: &Dialog, created_unix: u64) -> DialogRecord {
        DialogRecord {
            call_id: dialog.id.call_id.clone(),
            local_tag: dialog.id.local_tag.clone(),
            remote_tag: dialog.id.remote_tag.clone(),
            local_uri: dialog.local_uri().to_owned(),
            local_display: dialog.local_display().map(str::to_owned),
            remote_uri: dialog.remote_uri().to_owned(),
            remote_display: dialog.remote_display().map(str::to_owned),
            remote_target: dialog.remote_target().to_owned(),
            route_set: dialog.route_set.clone(),
            local_cseq: dialog.local_cseq(),
            remote_cseq: dialog.remote_cseq(),
            created_unix,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "call_id": self.call_id,
            "local_tag": self.local_tag,
            "remote_tag": self.remote_tag,
            "local_uri": self.local_uri,
            "local_display": self.local_display,
            "remote_uri": self.remote_uri,
            "remote_display": self.remote_display,
            "remote_target": self.remote_target,
            "route_set": self.route_set,
            "local_cseq": self.local_cseq,
            "remote_cseq": self.remote_cseq,
            "created_unix": self.created_unix,
        })
    }
}

/// One presence subscription, in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub direction: Direction,
    /// The XMPP user's bare JID.
    pub local_jid: String,
    /// The LCS user's address of record (`sip:user@domain`).
    pub remote_aor: String,
    /// The SIP subscription dialog, once there is one.
    pub dialog: Option<DialogRecord>,
    /// When the subscription runs out (Unix seconds).
    pub expires_unix: u64,
    pub state: SubState,
    pub approval: Approval,
    /// What the bridge last sent about this subscription's presence (PIDF or stanza; the
    /// engine chooses, and should keep it small — see docs/storage.md "Sizes").
    pub last_sent: Option<Vec<u8>>,
    /// What the bridge last received.
    pub last_received: Option<Vec<u8>>,
    /// The LCS user's last known display name (cleaned), shown on the XMPP side as nick,
    /// roster name and vCard (docs/mapping.md §6).
    pub display_name: Option<DisplayName>,
    /// When this record was last changed (Unix seconds).
    pub updated_unix: u64,
}

/// An LCS user's display name as the bridge keeps it: the text (already cleaned, at most
/// 256 characters) and whether it came from the user's own PIDF `<cipid:display-name>`
/// (which wins over a `From` header's display name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName {
    pub text: String,
    pub from_pidf: bool,
}

fn b64(bytes: &Option<Vec<u8>>) -> Value {
    match bytes {
        Some(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        None => Value::Null,
    }
}

impl Subscription {
    /// Bytes of key and value this record takes in the store's encoding (before the
    /// database's own overhead).
    pub fn encoded_len(&self) -> usize {
        codec::sub_key(self.direction, &self.local_jid, &self.remote_aor).map_or(0, |k| k.len())
            + codec::encode_subscription(self).len()
    }

    /// The record as one `store export` line (docs/operations.md "Backup and audit").
    pub fn to_json(&self) -> Value {
        json!({
            "kind": "subscription",
            "direction": self.direction.as_str(),
            "local_jid": self.local_jid,
            "remote_aor": self.remote_aor,
            "state": self.state.as_str(),
            "approval": self.approval.as_str(),
            "expires_unix": self.expires_unix,
            "updated_unix": self.updated_unix,
            "dialog": self.dialog.as_ref().map(DialogRecord::to_json),
            "last_sent": b64(&self.last_sent),
            "last_received": b64(&self.last_received),
            "display_name": self.display_name.as_ref().map(|n| json!({
                "text": n.text,
                "from_pidf": n.from_pidf,
            })),
        })
    }
}

/// An IM session's dialog, kept so that the bridge can end (BYE) or resume the sessions it had
/// open before a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImDialog {
    pub local_jid: String,
    pub remote_aor: String,
    pub dialog: DialogRecord,
}

impl ImDialog {
    /// The record as one `store export` line.
    pub fn to_json(&self) -> Value {
        json!({
            "kind": "im_dialog",
            "local_jid": self.local_jid,
            "remote_aor": self.remote_aor,
            "dialog": self.dialog.to_json(),
        })
    }
}

/// Record counts, for `lcs-bridge store stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Subscriptions by direction and state; every combination is present, zero or not.
    pub subscriptions: BTreeMap<(Direction, SubState), u64>,
    pub im_dialogs: u64,
    /// Records that did not decode (each also reported by the iterators).
    pub corrupt: u64,
}

impl Stats {
    /// All counts zero.
    pub fn empty() -> Stats {
        let mut subscriptions = BTreeMap::new();
        for d in Direction::ALL {
            for s in SubState::ALL {
                subscriptions.insert((d, s), 0);
            }
        }
        Stats {
            subscriptions,
            im_dialogs: 0,
            corrupt: 0,
        }
    }

    pub fn total_subscriptions(&self) -> u64 {
        self.subscriptions.values().sum()
    }

    pub(crate) fn count(&mut self, s: &Subscription) {
        *self
            .subscriptions
            .entry((s.direction, s.state))
            .or_insert(0) += 1;
    }
}

/// The `store stats` table: kind, direction, state, count.
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<14} {:<10} {:<11} {:>10}",
            "kind", "direction", "state", "count"
        )?;
        for ((d, s), n) in &self.subscriptions {
            writeln!(
                f,
                "{:<14} {:<10} {:<11} {:>10}",
                "subscription",
                d.as_str(),
                s.as_str(),
                n
            )?;
        }
        writeln!(
            f,
            "{:<14} {:<10} {:<11} {:>10}",
            "im_dialog", "-", "-", self.im_dialogs
        )?;
        write!(
            f,
            "{:<14} {:<10} {:<11} {:>10}",
            "corrupt", "-", "-", self.corrupt
        )
    }
}

/// What can go wrong with the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Another process (normally the running bridge) holds the store's lock.
    #[error(
        "the store is in use by a running bridge ({path}: {detail}); stop the bridge and try again"
    )]
    InUse { path: PathBuf, detail: String },
    /// `open_read_only` on a directory with no store.
    #[error("no store at {path} (the bridge has not run with this storage.path yet)")]
    Missing { path: PathBuf },
    /// The store was written by a newer lcs-bridge.
    #[error(
        "the store's schema version is {found}, newer than this lcs-bridge supports ({supported}): use a newer lcs-bridge or restore a backup"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    /// The directory holds a database that is not an lcs-bridge store.
    #[error("{path} is not an lcs-bridge store: {reason}")]
    NotAStore { path: PathBuf, reason: String },
    /// A record (or the schema key) that does not decode.
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A JID or AOR that cannot be a key.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The database failed (I/O, or sled reporting corruption of its own files).
    #[error("store: {0}")]
    Backend(String),
    /// The database server cannot be reached or is going away (PostgreSQL): nothing was
    /// written; the store reconnects on the next call.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A write under a leader epoch that is no longer the database's: another bridge took the
    /// lead; nothing was written (docs/high-availability.md).
    #[error(
        "write refused: this bridge writes as leader epoch {mine}, but the database's epoch is {current} (another bridge took over)"
    )]
    Fenced { mine: u64, current: u64 },
    /// `open_read_only` on a database without the bridge's tables (PostgreSQL).
    #[error(
        "no lcs-bridge store in database {target} (the bridge has not run with this storage.url yet)"
    )]
    NoDatabaseStore { target: String },
}

/// Streaming iterators over records.
pub type Records<'a, T> = Box<dyn Iterator<Item = Result<T, StoreError>> + 'a>;

/// The bridge's persistent state. See the module documentation for durability and identity.
pub trait Store: Send + Sync {
    /// Inserts or replaces a subscription; durable on return.
    fn put_subscription(&self, s: &Subscription) -> Result<(), StoreError>;

    /// Inserts or replaces a subscription without syncing, for changes whose loss in a crash
    /// costs nothing that matters (the last presence sent or received, a refreshed expiry
    /// that will be refreshed again). It becomes durable with the next synced write,
    /// [`Store::flush`], or sled's background flush (every 500 ms); a crash before that
    /// leaves the record as it was. Writes are never reordered: a crash keeps a prefix of them.
    fn put_subscription_lazy(&self, s: &Subscription) -> Result<(), StoreError>;

    /// Inserts or replaces several subscriptions atomically (all or none after a crash) with
    /// one sync: the group commit for bursts (a roster push, a restart's refreshes).
    fn put_subscriptions(&self, batch: &[Subscription]) -> Result<(), StoreError>;

    fn get_subscription(
        &self,
        direction: Direction,
        local_jid: &str,
        remote_aor: &str,
    ) -> Result<Option<Subscription>, StoreError>;

    /// Removes a subscription; durable on return (and synced even if there was nothing to
    /// remove). True if it existed.
    fn remove_subscription(
        &self,
        direction: Direction,
        local_jid: &str,
        remote_aor: &str,
    ) -> Result<bool, StoreError>;

    /// Every subscription, streamed in key order: inbound first, then outbound; by local JID,
    /// then remote AOR (bytewise).
    fn subscriptions(&self) -> Records<'_, Subscription>;

    /// The subscriptions of one local user in one direction (e.g. every LCS watcher of an XMPP
    /// user, to notify them all), by remote AOR.
    fn subscriptions_of(&self, direction: Direction, local_jid: &str) -> Records<'_, Subscription>;

    /// Inserts or replaces an IM dialog; not synced (see the module documentation): follow it
    /// with [`Store::flush`] for a durable write.
    fn put_im_dialog(&self, d: &ImDialog) -> Result<(), StoreError>;

    fn get_im_dialog(
        &self,
        local_jid: &str,
        remote_aor: &str,
    ) -> Result<Option<ImDialog>, StoreError>;

    /// Removes an IM dialog (not synced). True if it existed.
    fn remove_im_dialog(&self, local_jid: &str, remote_aor: &str) -> Result<bool, StoreError>;

    /// Every IM dialog, streamed in key order.
    fn im_dialogs(&self) -> Records<'_, ImDialog>;

    /// Removes every IM dialog (after a restart has dealt with them), synced. Returns how many.
    fn clear_im_dialogs(&self) -> Result<u64, StoreError>;

    /// Counts by kind, direction and state (a full scan).
    fn stats(&self) -> Result<Stats, StoreError>;

    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Makes every later write carry leader epoch `epoch` (docs/high-availability.md): a store
    /// shared by several bridges then refuses a write once another epoch is in force
    /// ([`StoreError::Fenced`]). False for a store of one machine, which has no epochs.
    fn fence(&self, _epoch: u64) -> bool {
        false
    }
}

/// Where [`SledStore`] lives inside `storage.path` (a subdirectory, so that another backend or
/// a migration copy can sit beside it).
pub fn sled_dir(storage_path: &Path) -> PathBuf {
    storage_path.join("sled")
}

/// Shared scan for `stats`: counts every record, corrupt ones in `corrupt`; stops at a
/// database error.
pub(crate) fn scan_stats(store: &dyn Store) -> Result<Stats, StoreError> {
    let mut stats = Stats::empty();
    for r in store.subscriptions() {
        match r {
            Ok(s) => stats.count(&s),
            Err(StoreError::Corrupt { .. }) => stats.corrupt += 1,
            Err(e) => return Err(e),
        }
    }
    for r in store.im_dialogs() {
        match r {
            Ok(_) => stats.im_dialogs += 1,
            Err(StoreError::Corrupt { .. }) => stats.corrupt += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(stats)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests;

/// The PostgreSQL store against a real server (lcs-test-support's `Postgres`; without
/// PostgreSQL installed they skip loudly, or fail under `LCS_BRIDGE_REQUIRE_PEERS=1`).
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod pg_tests;
