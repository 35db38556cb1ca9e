//! Manifest bytes kept in memory by digest.
//!
//! A manifest GET otherwise reads its tag, its record in the repository and
//! then its bytes from the backend; on the filesystem each read is a trip
//! through the blocking pool, and the last one is two (open, read). The
//! bytes are the only part that can be cached without any invalidation: a
//! digest names one content forever, in every process sharing the store.
//! Whether the manifest is still in the repository (and its media type)
//! still comes from the record, read every time, so a deleted manifest is
//! never served from here.
//!
//! Bounded by total size; the oldest entry goes first. Manifests are read
//! far more often than they are pushed, and a pushed one is usually pulled
//! soon after, so pushes fill the cache too.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use speculum_oci::Digest;

/// How many bytes of manifests are kept: a few thousand typical manifests.
pub(super) const CAPACITY: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct State {
    bytes: HashMap<Digest, Bytes>,
    /// Insertion order, for eviction.
    order: VecDeque<Digest>,
    size: usize,
}

/// See the module docs.
pub(super) struct ManifestCache {
    capacity: usize,
    state: Mutex<State>,
}

impl ManifestCache {
    pub(super) fn new(capacity: usize) -> ManifestCache {
        ManifestCache {
            capacity,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent after every statement that changes it, so
        // a panic elsewhere while it was held leaves nothing half-done.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bytes of `digest`, if cached.
    pub(super) fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.lock().bytes.get(digest).cloned()
    }

    /// Keep `bytes` (whose digest the caller has verified or read from the
    /// store under that digest), evicting the oldest entries to make room.
    pub(super) fn insert(&self, digest: &Digest, bytes: Bytes) {
        if bytes.len() > self.capacity / 4 {
            return;
        }
        let mut s = self.lock();
        if s.bytes.contains_key(digest) {
            return;
        }
        while s.size + bytes.len() > self.capacity {
            let Some(old) = s.order.pop_front() else {
                break;
            };
            if let Some(b) = s.bytes.remove(&old) {
                s.size -= b.len();
            }
        }
        s.size += bytes.len();
        s.order.push_back(digest.clone());
        s.bytes.insert(digest.clone(), bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, len: usize) -> (Digest, Bytes) {
        let bytes = Bytes::from(vec![n; len]);
        (Digest::sha256(&bytes), bytes)
    }

    #[test]
    fn keeps_what_fits_and_evicts_the_oldest() {
        let cache = ManifestCache::new(100);
        let (a, ab) = entry(1, 25);
        let (b, bb) = entry(2, 25);
        let (c, cb) = entry(3, 25);
        let (d, db) = entry(4, 25);
        let (e, eb) = entry(5, 25);
        for (k, v) in [(&a, &ab), (&b, &bb), (&c, &cb), (&d, &db)] {
            cache.insert(k, v.clone());
        }
        assert_eq!(cache.get(&a), Some(ab.clone()));
        cache.insert(&e, eb.clone());
        assert_eq!(cache.get(&a), None, "the oldest goes first");
        assert_eq!(cache.get(&b), Some(bb));
        assert_eq!(cache.get(&e), Some(eb));
    }

    #[test]
    fn a_manifest_too_big_for_a_quarter_is_not_kept() {
        let cache = ManifestCache::new(100);
        let (a, ab) = entry(1, 26);
        cache.insert(&a, ab);
        assert_eq!(cache.get(&a), None);
    }
}
