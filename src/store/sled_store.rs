//! [`SledStore`]: the [`Store`] on sled 0.34 (docs/storage.md).
//!
//! One sled database (its default tree) in a directory, normally `<storage.path>/sled`. sled
//! holds an exclusive lock on it while open: a second process gets [`StoreError::InUse`].
//!
//! Durability: sled's `Db::flush` writes the log and waits with `sync_file_range(2)` on Linux,
//! which survives a killed process but neither flushes the disk's write cache nor the file's
//! metadata (its size grows as the log grows), so it does not survive a power cut. A synced
//! write here is `flush` followed by `fsync(2)` of sled's `db` file through a handle of our own
//! (fsync works on the file, whichever descriptor wrote it); [`SledOptions::fsync`] turns the
//! second step off. Values over sled's blob threshold (a 128 KiB node) go to separate files
//! that sled never syncs; the bridge's records are far smaller.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::codec::{self, IM_PREFIX, META_SCHEMA, SUB_PREFIX};
use super::{Direction, ImDialog, Records, Stats, Store, StoreError, Subscription};

/// The schema this build writes and reads: the key layout and record encoding of `codec.rs`.
/// 2 added the display name to subscription records (a flag bit and a string at the end:
/// every version-1 record reads unchanged, so the step from 1 rewrites nothing; the bump
/// makes an older build refuse the store as a whole instead of reading every named record
/// as corrupt).
pub const CURRENT_SCHEMA_VERSION: u32 = 2;

/// Tuning for [`SledStore::open_with`].
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// sled's page cache, in bytes. sled's own default is 1 GiB; the bridge's is 64 MiB, which
    /// holds the hot part of a million subscriptions.
    pub cache_bytes: u64,
    /// fsync the database file after each synced write (see the module documentation).
    pub fsync: bool,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_bytes: 64 * 1024 * 1024,
            fsync: true,
        }
    }
}

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    /// sled's log file, for fsync.
    file: Option<File>,
    path: PathBuf,
    schema_version: u32,
    /// The schema version an open moved the store up from (not for a new store).
    migrated_from: Option<u32>,
    /// Group commit: tickets handed out to writers that want a sync…
    tickets: AtomicU64,
    /// …and how far syncing has got.
    commit: Mutex<Commit>,
    committed: Condvar,
}

/// Group commit state: every ticket up to `synced` is durable; `running` while one thread
/// (the leader) syncs for everybody who took a ticket before it started.
#[derive(Default)]
struct Commit {
    synced: u64,
    running: bool,
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SledStore {
    /// Opens (creating if needed) the store in directory `path` with default options.
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        Self::open_with(path, &SledOptions::default())
    }

    /// Opens a store that must already exist, for the administrator's commands (`store stats`,
    /// `store export`), which only read: nothing is created, and a store of an older schema is
    /// not migrated (its records decode as they are; [`SledStore::schema_version`] says which
    /// it is), so that reading a backup with a newer build does not make it one an older build
    /// refuses.
    pub fn open_read_only(path: &Path) -> Result<SledStore, StoreError> {
        if !path.join("db").is_file() {
            return Err(StoreError::Missing {
                path: path.to_owned(),
            });
        }
        Self::open_as(path, &SledOptions::default(), false)
    }

    /// Opens (creating if needed) the store in directory `path`, checks the schema version
    /// and migrates an older one (see [`migrate`]; [`SledStore::migrated_from`] tells).
    pub fn open_with(path: &Path, options: &SledOptions) -> Result<SledStore, StoreError> {
        Self::open_as(path, options, true)
    }

    fn open_as(
        path: &Path,
        options: &SledOptions,
        migrating: bool,
    ) -> Result<SledStore, StoreError> {
        if path.exists() && !path.is_dir() {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                reason: "not a directory".into(),
            });
        }
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_bytes)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::InUse {
                        path: path.to_owned(),
                        detail: "its lock is held by another process".into(),
                    }
                }
                e => StoreError::Backend(format!("cannot open {}: {e}", path.display())),
            })?;
        let found = match db.get(META_SCHEMA).map_err(backend)? {
            Some(v) => codec::decode_schema(&v)?,
            None => {
                // No version: a new database, unless something else wrote to it.
                if let Some(first) = db.iter().keys().next() {
                    let first = first.map_err(backend)?;
                    return Err(StoreError::NotAStore {
                        path: path.to_owned(),
                        reason: format!(
                            "it has no schema version but holds data (first key {})",
                            codec::describe_key(&first)
                        ),
                    });
                }
                0
            }
        };
        if found > CURRENT_SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: CURRENT_SCHEMA_VERSION,
            });
        }
        let migrated_from = if migrating && found < CURRENT_SCHEMA_VERSION {
            migrate(&db, found, CURRENT_SCHEMA_VERSION)?;
            (found > 0).then_some(found)
        } else {
            None
        };
        let schema_version = if migrating {
            CURRENT_SCHEMA_VERSION
        } else {
            found
        };
        let file = if options.fsync {
            Some(File::open(path.join("db")).map_err(|e| {
                StoreError::Backend(format!("cannot open {}/db: {e}", path.display()))
            })?)
        } else {
            None
        };
        let store = SledStore {
            db,
            file,
            path: path.to_owned(),
            schema_version,
            migrated_from,
            tickets: AtomicU64::new(0),
            commit: Mutex::new(Commit::default()),
            committed: Condvar::new(),
        };
        if migrating {
            store.sync()?;
        }
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version (after any migration at open; as found by
    /// [`SledStore::open_read_only`]).
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    /// The schema version this open migrated the store from, if it migrated an existing one:
    /// an older build now refuses the store (docs/storage.md "Schema version and migration").
    pub fn migrated_from(&self) -> Option<u32> {
        self.migrated_from
    }

    /// Bytes sled reports for its files (log, snapshots, blobs).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(backend)
    }

    /// Test and recovery hook: raw bytes under a raw key, bypassing the codec (used to plant a
    /// corrupt record in tests; never used by the bridge).
    #[doc(hidden)]
    pub fn put_raw(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db.insert(key, value).map_err(backend)?;
        self.sync()
    }

    /// Makes everything written so far durable: sled's flush, then fsync.
    ///
    /// Group commit: a caller takes a ticket after its write. If no sync is running it leads
    /// one, covering every ticket taken so far (a sync started after a write covers it: sled's
    /// flush writes everything reserved before it starts); otherwise it waits for the running
    /// sync and, if that one started before its ticket, leads or joins the next. Concurrent
    /// writers thus share one flush + fsync instead of queueing one each.
    fn sync(&self) -> Result<(), StoreError> {
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let mut commit = self.lock_commit();
        loop {
            if commit.synced >= ticket {
                return Ok(());
            }
            if !commit.running {
                commit.running = true;
                let target = self.tickets.load(Ordering::SeqCst);
                drop(commit);
                let result = self.flush_and_fsync();
                let mut commit = self.lock_commit();
                commit.running = false;
                if result.is_ok() {
                    commit.synced = commit.synced.max(target);
                }
                drop(commit);
                self.committed.notify_all();
                return result;
            }
            commit = self
                .committed
                .wait(commit)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn lock_commit(&self) -> MutexGuard<'_, Commit> {
        // The state stays consistent even if a holder panicked: it is two plain fields.
        self.commit.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush_and_fsync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(backend)?;
        if let Some(f) = &self.file {
            f.sync_all().map_err(|e| {
                StoreError::Backend(format!("fsync {}/db: {e}", self.path.display()))
            })?;
        }
        Ok(())
    }

    fn scan<'a, T: 'a>(
        &'a self,
        prefix: &[u8],
        decode: fn(&[u8], &[u8]) -> Result<T, StoreError>,
    ) -> Records<'a, T> {
        let mut iter = self.db.scan_prefix(prefix);
        let mut done = false;
        Box::new(std::iter::from_fn(move || {
            if done {
                return None;
            }
            match iter.next()? {
                Ok((k, v)) => Some(decode(&k, &v)),
                Err(e) => {
                    // A database error ends the scan; a corrupt record does not.
                    done = true;
                    Some(Err(backend(e)))
                }
            }
        }))
    }
}

/// Brings a database at schema version `from` to `to`, one step at a time, syncing after each
/// step. Versions: 0 = a new, empty database (step 0 → 1 writes the version key); 1 = the
/// layout of `codec.rs` without display names; 2 = with them (step 1 → 2 converts nothing: a
/// version-1 record is a valid version-2 record). A version above [`CURRENT_SCHEMA_VERSION`] is refused: this build
/// cannot know what it means.
pub fn migrate(db: &sled::Db, from: u32, to: u32) -> Result<(), StoreError> {
    if to > CURRENT_SCHEMA_VERSION || from > CURRENT_SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: from.max(to),
            supported: CURRENT_SCHEMA_VERSION,
        });
    }
    if from > to {
        return Err(StoreError::Backend(format!(
            "cannot migrate the store down from schema version {from} to {to}"
        )));
    }
    let mut v = from;
    while v < to {
        match v {
            // 0 → 1: nothing to convert, the database is empty.
            0 => {}
            // 1 → 2: records without the display-name flag read as before.
            1 => {}
            // Future steps convert records here, e.g. 1 => rewrite every `S` value.
            v => {
                return Err(StoreError::Backend(format!(
                    "no migration step from schema version {v}"
                )));
            }
        }
        v += 1;
        db.insert(META_SCHEMA, &codec::encode_schema(v))
            .map_err(backend)?;
        db.flush().map_err(backend)?;
    }
    Ok(())
}

impl Store for SledStore {
    fn put_subscription(&self, s: &Subscription) -> Result<(), StoreError> {
        let key = codec::sub_key(s.direction, &s.local_jid, &s.remote_aor)?;
        self.db
            .insert(key, codec::encode_subscription(s))
            .map_err(backend)?;
        self.sync()
    }

    fn put_subscription_lazy(&self, s: &Subscription) -> Result<(), StoreError> {
        let key = codec::sub_key(s.direction, &s.local_jid, &s.remote_aor)?;
        self.db
            .insert(key, codec::encode_subscription(s))
            .map_err(backend)?;
        Ok(())
    }

    fn put_subscriptions(&self, subs: &[Subscription]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for s in subs {
            let key = codec::sub_key(s.direction, &s.local_jid, &s.remote_aor)?;
            batch.insert(key, codec::encode_subscription(s));
        }
        self.db.apply_batch(batch).map_err(backend)?;
        self.sync()
    }

    fn get_subscription(
        &self,
        direction: Direction,
        local_jid: &str,
        remote_aor: &str,
    ) -> Result<Option<Subscription>, StoreError> {
        let key = codec::sub_key(direction, local_jid, remote_aor)?;
        match self.db.get(&key).map_err(backend)? {
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
        let existed = self.db.remove(key).map_err(backend)?.is_some();
        // Synced even when nothing was removed: a synced call is a barrier for the unsynced
        // writes before it.
        self.sync()?;
        Ok(existed)
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
        self.db
            .insert(key, codec::encode_im(&d.dialog))
            .map_err(backend)?;
        Ok(())
    }

    fn get_im_dialog(
        &self,
        local_jid: &str,
        remote_aor: &str,
    ) -> Result<Option<ImDialog>, StoreError> {
        let key = codec::im_key(local_jid, remote_aor)?;
        match self.db.get(&key).map_err(backend)? {
            Some(v) => codec::decode_im(&key, &v).map(Some),
            None => Ok(None),
        }
    }

    fn remove_im_dialog(&self, local_jid: &str, remote_aor: &str) -> Result<bool, StoreError> {
        let key = codec::im_key(local_jid, remote_aor)?;
        Ok(self.db.remove(key).map_err(backend)?.is_some())
    }

    fn im_dialogs(&self) -> Records<'_, ImDialog> {
        self.scan(IM_PREFIX, codec::decode_im)
    }

    fn clear_im_dialogs(&self) -> Result<u64, StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for k in self.db.scan_prefix(IM_PREFIX).keys() {
            batch.remove(k.map_err(backend)?);
            n += 1;
        }
        self.db.apply_batch(batch).map_err(backend)?;
        self.sync()?;
        Ok(n)
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        super::scan_stats(self)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.sync()
    }
}
