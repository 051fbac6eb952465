//! [`MemStore`]: the [`Store`] in memory, for engine unit tests. It keeps the same keys and
//! encoded values as [`super::SledStore`] (so key rules, ordering and corrupt-record behaviour
//! match), and can be told to fail writes, to test what the engine does when a write fails
//! (it must not acknowledge the change).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::codec::{self, IM_PREFIX, SUB_PREFIX};
use super::{Direction, ImDialog, Records, Stats, Store, StoreError, Subscription};

/// An in-memory store. Cloning is not offered: share it with `Arc`.
#[derive(Default)]
pub struct MemStore {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    fail_writes: AtomicBool,
    synced_writes: AtomicU64,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// While true, every write fails with [`StoreError::Backend`] and changes nothing.
    pub fn set_fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// How many synced writes (subscription puts, batches, removals, clears, flushes; not the
    /// lazy ones) have been made: lets a test check that a write was synced before an
    /// acknowledgement.
    pub fn synced_writes(&self) -> u64 {
        self.synced_writes.load(Ordering::SeqCst)
    }

    /// Raw bytes under a raw key (to plant a corrupt record in tests).
    pub fn put_raw(&self, key: &[u8], value: &[u8]) {
        self.lock().insert(key.to_vec(), value.to_vec());
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A test that panicked while holding the lock leaves the map usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Backend(
                "write failed (MemStore told to fail)".into(),
            ));
        }
        Ok(())
    }

    fn synced(&self) {
        self.synced_writes.fetch_add(1, Ordering::SeqCst);
    }

    /// A snapshot of one prefix, decoded lazily.
    fn scan<'a, T: 'a>(
        &'a self,
        prefix: &[u8],
        decode: fn(&[u8], &[u8]) -> Result<T, StoreError>,
    ) -> Records<'a, T> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self
            .lock()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Box::new(rows.into_iter().map(move |(k, v)| decode(&k, &v)))
    }
}

impl Store for MemStore {
    fn put_subscription(&self, s: &Subscription) -> Result<(), StoreError> {
        let key = codec::sub_key(s.direction, &s.local_jid, &s.remote_aor)?;
        self.check_writable()?;
        self.lock().insert(key, codec::encode_subscription(s));
        self.synced();
        Ok(())
    }

    fn put_subscription_lazy(&self, s: &Subscription) -> Result<(), StoreError> {
        let key = codec::sub_key(s.direction, &s.local_jid, &s.remote_aor)?;
        self.check_writable()?;
        self.lock().insert(key, codec::encode_subscription(s));
        Ok(())
    }

    fn put_subscriptions(&self, batch: &[Subscription]) -> Result<(), StoreError> {
        let rows = batch
            .iter()
            .map(|s| {
                codec::sub_key(s.direction, &s.local_jid, &s.remote_aor)
                    .map(|k| (k, codec::encode_subscription(s)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.check_writable()?;
        self.lock().extend(rows);
        self.synced();
        Ok(())
    }

    fn get_subscription(
        &self,
        direction: Direction,
        local_jid: &str,
        remote_aor: &str,
    ) -> Result<Option<Subscription>, StoreError> {
        let key = codec::sub_key(direction, local_jid, remote_aor)?;
        let value = self.lock().get(&key).cloned();
        value
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
        self.check_writable()?;
        let existed = self.lock().remove(&key).is_some();
        self.synced();
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
        self.check_writable()?;
        self.lock().insert(key, codec::encode_im(&d.dialog));
        Ok(())
    }

    fn get_im_dialog(
        &self,
        local_jid: &str,
        remote_aor: &str,
    ) -> Result<Option<ImDialog>, StoreError> {
        let key = codec::im_key(local_jid, remote_aor)?;
        let value = self.lock().get(&key).cloned();
        value.map(|v| codec::decode_im(&key, &v)).transpose()
    }

    fn remove_im_dialog(&self, local_jid: &str, remote_aor: &str) -> Result<bool, StoreError> {
        let key = codec::im_key(local_jid, remote_aor)?;
        self.check_writable()?;
        Ok(self.lock().remove(&key).is_some())
    }

    fn im_dialogs(&self) -> Records<'_, ImDialog> {
        self.scan(IM_PREFIX, codec::decode_im)
    }

    fn clear_im_dialogs(&self) -> Result<u64, StoreError> {
        self.check_writable()?;
        let mut map = self.lock();
        let before = map.len();
        map.retain(|k, _| !k.starts_with(IM_PREFIX));
        let n = (before - map.len()) as u64;
        drop(map);
        self.synced();
        Ok(n)
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        super::scan_stats(self)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.check_writable()?;
        self.synced();
        Ok(())
    }
}
