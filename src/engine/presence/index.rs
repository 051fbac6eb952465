//! The subscription dialogs by dialog id (Call-ID and both tags, RFC 3261 §12), compactly: an
//! entry holds a 64-bit keyed hash of the id and the subscription's shared key, 16 bytes,
//! instead of a copy of the three strings (~170 bytes with their allocations). The id itself
//! lives once, in the subscription's dialog.
//!
//! The hash is SipHash with this process's random keys, so a peer cannot choose ids that
//! collide. Two live dialogs that collide anyway (about 2⁻⁶⁴ per pair) are both kept: the
//! later one goes into a small map keyed by its whole id, which lookups try first. A lookup
//! confirms the subscription it found has that dialog (`is`), so an unknown id whose hash
//! matches a live one is still unknown.

use std::collections::HashMap;
use std::collections::hash_map::{Entry, RandomState};
use std::hash::BuildHasher;

use super::Key;
use crate::sip::dialog::DialogId;

#[derive(Debug, Default)]
pub(super) struct DialogIndex {
    hasher: RandomState,
    by_hash: HashMap<u64, Key>,
    /// Ids whose hash an earlier live dialog holds.
    collided: HashMap<DialogId, Key>,
}

impl DialogIndex {
    fn hash(&self, id: &DialogId) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Dialog `id` belongs to subscription `key`.
    pub(super) fn insert(&mut self, id: &DialogId, key: Key) {
        let hash = self.hash(id);
        match self.by_hash.entry(hash) {
            Entry::Vacant(e) => {
                e.insert(key);
            }
            // The same subscription: its dialog is this one now.
            Entry::Occupied(mut e) if *e.get() == key => {
                e.insert(key);
            }
            Entry::Occupied(_) => {
                self.collided.insert(id.clone(), key);
            }
        }
    }

    /// Dialog `id` ended.
    pub(super) fn remove(&mut self, id: &DialogId) {
        if !self.collided.is_empty() && self.collided.remove(id).is_some() {
            return;
        }
        let hash = self.hash(id);
        self.by_hash.remove(&hash);
    }

    /// Gives memory back after a burst ([`crate::compact`]).
    pub(super) fn compact(&mut self) {
        crate::compact::map(&mut self.by_hash);
        crate::compact::map(&mut self.collided);
    }

    /// The subscription whose dialog is `id`; `is` tells whether a subscription's current
    /// dialog has that id.
    pub(super) fn get(&self, id: &DialogId, is: impl Fn(&Key) -> bool) -> Option<Key> {
        if let Some(key) = self.collided.get(id) {
            return Some(key.clone());
        }
        self.by_hash
            .get(&self.hash(id))
            .filter(|key| is(key))
            .cloned()
    }

    /// Dialogs indexed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_hash.len() + self.collided.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> DialogId {
        DialogId {
            call_id: format!("c{n}@contoso.com"),
            local_tag: format!("l{n}"),
            remote_tag: format!("r{n}"),
        }
    }

    fn key(n: u32) -> Key {
        super::super::key(format!("u{n}@xmpp.test"), format!("sip:c{n}@contoso.com"))
    }

    #[test]
    fn finds_removes_and_checks_the_dialog() {
        let mut index = DialogIndex::default();
        let (a, b) = (key(1), key(2));
        index.insert(&id(1), a.clone());
        index.insert(&id(2), b.clone());
        assert_eq!(index.get(&id(1), |_| true), Some(a.clone()));
        assert_eq!(index.get(&id(2), |_| true), Some(b.clone()));
        assert_eq!(index.get(&id(3), |_| true), None);
        // The subscription found no longer has that dialog: not found.
        assert_eq!(index.get(&id(1), |_| false), None);
        index.remove(&id(1));
        assert_eq!(index.get(&id(1), |_| true), None);
        assert_eq!(index.get(&id(2), |_| true), Some(b));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn colliding_dialogs_are_both_kept() {
        // A collision forced: the second dialog's hash slot taken by another subscription.
        let mut index = DialogIndex::default();
        let (a, b) = (key(1), key(2));
        index.insert(&id(1), a.clone());
        let hash = index.hash(&id(2));
        index.by_hash.insert(hash, a.clone());
        index.insert(&id(2), b.clone());
        assert_eq!(index.get(&id(2), |_| false), Some(b.clone()));
        index.remove(&id(2));
        assert_eq!(index.get(&id(2), |k| *k == b), None);
        assert_eq!(index.get(&id(1), |k| *k == a), Some(a));
    }
}
