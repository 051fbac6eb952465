//! [`RedbStore`]: the [`Store`] on redb 4 (docs/storage.md "redb"), the candidate to replace
//! sled: same keys, same records, same schema version and behaviour; one file,
//! `<dir>/store.redb`.
//!
//! Durability: a synced write is a redb write transaction committed with
//! `Durability::Immediate` (redb fsyncs before `commit` returns); a lazy write (unsynced
//! subscription put, IM dialog) is committed with `Durability::None`, which redb makes durable
//! with the next immediate commit — so, as with sled, a synced call is a barrier. Transactions
//! are atomic, so a batch is all or nothing. redb allows one write transaction at a time:
//! concurrent writers queue, each with its own fsync (no group commit across threads; use
//! [`Store::put_subscriptions`] for bursts). With [`RedbOptions::quick_repair`] (the default)
//! each durable commit also saves the allocator state, so that reopening after a crash does not
//! walk the whole file.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::codec::{self, IM_PREFIX, META_SCHEMA, SUB_PREFIX};
use super::{Direction, ImDialog, Records, Stats, Store, StoreError, Subscription};
use crate::store::CURRENT_SCHEMA_VERSION;

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");

/// The database file inside the store's directory.
pub const REDB_FILE: &str = "store.redb";

/// Tuning for [`RedbStore::open_with`].
#[derive(Debug, Clone)]
pub struct RedbOptions {
    /// redb's page cache, in bytes.
    pub cache_bytes: usize,
    /// Save the allocator state with each durable commit: slower commits, near-instant reopen
    /// after a crash (see the module documentation).
    pub quick_repair: bool,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            cache_bytes: 64 * 1024 * 1024,
            quick_repair: true,
        }
    }
}

/// The redb-backed store.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    quick_repair: bool,
    schema_version: u32,
    migrated_from: Option<u32>,
}

fn be(e: impl Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Opens (creating if needed) the store in directory `path` with default options.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        Self::open_with(path, &RedbOptions::default())
    }

    /// Opens a store that must already exist, without migrating it, as
    /// [`super::SledStore::open_read_only`] does.
    pub fn open_read_only(path: &Path) -> Result<RedbStore, StoreError> {
        if !path.join(REDB_FILE).is_file() {
            return Err(StoreError::Missing {
                path: path.to_owned(),
            });
        }
        Self::open_as(path, &RedbOptions::default(), false)
    }

    /// Opens (creating if needed) the store in directory `path` and checks the schema version
    /// as [`super::SledStore::open_with`] does, migrating an older one.
    pub fn open_with(path: &Path, options: &RedbOptions) -> Result<RedbStore, StoreError> {
        Self::open_as(path, options, true)
    }

    fn open_as(
        path: &Path,
        options: &RedbOptions,
        migrating: bool,
    ) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(path)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", path.display())))?;
        let file = path.join(REDB_FILE);
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(&file)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                    path: path.to_owned(),
                    detail: "its lock is held by another process".into(),
                },
                e => StoreError::Backend(format!("cannot open {}: {e}", file.display())),
            })?;
        let mut store = RedbStore {
            db,
            path: path.to_owned(),
            quick_repair: options.quick_repair,
            schema_version: CURRENT_SCHEMA_VERSION,
            migrated_from: None,
        };
        let tx = store.db.begin_read().map_err(be)?;
        let (found, empty) = match tx.open_table(RECORDS) {
            Ok(t) => {
                let v = t.get(META_SCHEMA).map_err(be)?;
                let found = match v {
                    Some(v) => Some(codec::decode_schema(v.value())?),
                    None => None,
                };
                let first = t.range::<&[u8]>(..).map_err(be)?.next();
                (found, first.is_none())
            }
            Err(redb::TableError::TableDoesNotExist(_)) => (None, true),
            Err(e) => return Err(be(e)),
        };
        drop(tx);
        let found = match found {
            Some(v) => v,
            None if empty => 0,
            None => {
                return Err(StoreError::NotAStore {
                    path: path.to_owned(),
                    reason: "it has no schema version but holds data".into(),
                });
            }
        };
        if found > CURRENT_SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: CURRENT_SCHEMA_VERSION,
            });
        }
        if !migrating {
            store.schema_version = found;
            return Ok(store);
        }
        // 0 → 1 → 2: write the version (no step converts records: see `migrate`).
        if found < CURRENT_SCHEMA_VERSION {
            store.migrated_from = (found > 0).then_some(found);
            store.write(true, |t| {
                t.insert(
                    META_SCHEMA,
                    &codec::encode_schema(CURRENT_SCHEMA_VERSION)[..],
                )
                .map_err(be)?;
                Ok(())
            })?;
        }
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version (after any migration at open; as found by
    /// [`RedbStore::open_read_only`]).
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    /// The schema version this open migrated the store from, if it migrated an existing one.
    pub fn migrated_from(&self) -> Option<u32> {
        self.migrated_from
    }

    /// Size of the database file.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        std::fs::metadata(self.path.join(REDB_FILE))
            .map(|m| m.len())
            .map_err(be)
    }

    /// Raw bytes under a raw key, bypassing the codec (tests only).
    #[doc(hidden)]
    pub fn put_raw(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write(true, |t| {
            t.insert(key, value).map_err(be)?;
            Ok(())
        })
    }

    /// One write transaction: `synced` commits with `Durability::Immediate`, else `None`.
    fn write<R>(
        &self,
        synced: bool,
        f: impl FnOnce(&mut redb::Table<'_, &[u8], &[u8]>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut tx = self.db.begin_write().map_err(be)?;
        if synced {
            tx.set_quick_repair(self.quick_repair);
        } else {
            tx.set_durability(Durability::None).map_err(be)?;
        }
        let r = {
            let mut t = tx.open_table(RECORDS).map_err(be)?;
            f(&mut t)?
        };
        tx.commit().map_err(be)?;
        Ok(r)
    }

    fn scan<'a, T: 'a>(
        &'a self,
        prefix: Vec<u8>,
        decode: fn(&[u8], &[u8]) -> Result<T, StoreError>,
    ) -> Records<'a, T> {
        let range = self
            .db
            .begin_read()
            .map_err(be)
            .and_then(|tx| tx.open_table(RECORDS).map_err(be))
            .and_then(|t| t.range::<&[u8]>(prefix.as_slice()..).map_err(be));
        let mut range = match range {
            Ok(r) => r,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let mut done = false;
        Box::new(std::iter::from_fn(move || {
            if done {
                return None;
            }
            match range.next()? {
                Ok((k, v)) => {
                    if !k.value().starts_with(&prefix) {
                        done = true;
                        return None;
                    }
                    Some(decode(k.value(), v.value()))
                }
                Err(e) => {
                    done = true;
                    Some(Err(be(e)))
                }
            }
        }))
    }

    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(RECORDS).map_err(be)?;
        Ok(t.get(key).map_err(be)?.map(|v| v.value().to_vec()))
    }
}

impl Store for RedbStore {
    fn put_subscription(&self, s: &Subscription) -> Result<(), StoreError> {
        let key = codec::sub_key(s.direction, &s.local_jid, &s.remote_aor)?;
        let value = codec::encode_subscription(s);
        self.write(true, |t| {
            t.insert(key.as_slice(), value.as_slice()).map_err(be)?;
            Ok(())
        })
    }

    fn put_subscription_lazy(&self, s: &Subscription) -> Result<(), StoreError> {
        let key = codec::sub_key(s.direction, &s.local_jid, &s.remote_aor)?;
        let value = codec::encode_subscription(s);
        self.write(false, |t| {
            t.insert(key.as_slice(), value.as_slice()).map_err(be)?;
            Ok(())
        })
    }

    fn put_subscriptions(&self, batch: &[Subscription]) -> Result<(), StoreError> {
        let rows = batch
            .iter()
            .map(|s| {
                codec::sub_key(s.direction, &s.local_jid, &s.remote_aor)
                    .map(|k| (k, codec::encode_subscription(s)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.write(true, |t| {
            for (k, v) in &rows {
                t.insert(k.as_slice(), v.as_slice()).map_err(be)?;
            }
            Ok(())
        })
    }

    fn get_subscription(
        &self,
        direction: Direction,
        local_jid: &str,
        remote_aor: &str,
    ) -> Result<Option<Subscription>, StoreError> {
        let key = codec::sub_key(direction, local_jid, remote_aor)?;
        self.get_raw(&key)?
            .map(|v| codec::decode_subscription(&key, &v))
            .transpose()
    }

    fn remove_subscription(
        &self,
        direction: Direction,
        local_jid: &str,
        remote_aor: &str,
    ) -> Result<bool, StoreError> {
        let key = codec::sub_key(direction, local_jid, remote_aor)?;
        self.write(true, |t| {
            Ok(t.remove(key.as_slice()).map_err(be)?.is_some())
        })
    }

    fn subscriptions(&self) -> Records<'_, Subscription> {
        self.scan(SUB_PREFIX.to_vec(), codec::decode_subscription)
    }

    fn subscriptions_of(&self, direction: Direction, local_jid: &str) -> Records<'_, Subscription> {
        match codec::sub_user_prefix(direction, local_jid) {
            Ok(prefix) => self.scan(prefix, codec::decode_subscription),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn put_im_dialog(&self, d: &ImDialog) -> Result<(), StoreError> {
        let key = codec::im_key(&d.local_jid, &d.remote_aor)?;
        let value = codec::encode_im(&d.dialog);
        self.write(false, |t| {
            t.insert(key.as_slice(), value.as_slice()).map_err(be)?;
            Ok(())
        })
    }

    fn get_im_dialog(
        &self,
        local_jid: &str,
        remote_aor: &str,
    ) -> Result<Option<ImDialog>, StoreError> {
        let key = codec::im_key(local_jid, remote_aor)?;
        self.get_raw(&key)?
            .map(|v| codec::decode_im(&key, &v))
            .transpose()
    }

    fn remove_im_dialog(&self, local_jid: &str, remote_aor: &str) -> Result<bool, StoreError> {
        let key = codec::im_key(local_jid, remote_aor)?;
        self.write(false, |t| {
            Ok(t.remove(key.as_slice()).map_err(be)?.is_some())
        })
    }

    fn im_dialogs(&self) -> Records<'_, ImDialog> {
        self.scan(IM_PREFIX.to_vec(), codec::decode_im)
    }

    fn clear_im_dialogs(&self) -> Result<u64, StoreError> {
        self.write(true, |t| {
            let keys: Vec<Vec<u8>> = t
                .range::<&[u8]>(IM_PREFIX..)
                .map_err(be)?
                .map(|r| r.map(|(k, _)| k.value().to_vec()))
                .take_while(|r| r.as_ref().map_or(true, |k| k.starts_with(IM_PREFIX)))
                .collect::<Result<_, _>>()
                .map_err(be)?;
            for k in &keys {
                t.remove(k.as_slice()).map_err(be)?;
            }
            Ok(keys.len() as u64)
        })
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        super::scan_stats(self)
    }

    fn flush(&self) -> Result<(), StoreError> {
        // An empty immediate commit makes every earlier `Durability::None` commit durable.
        self.write(true, |_| Ok(()))
    }
}
