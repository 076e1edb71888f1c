//! Which idempotency keys the database may hold, kept in memory, so that a new key (what
//! nearly every create carries) is known to be new without a SQLite read.
//!
//! A claim must be checked against the stored keys before the provider is called. In WAL
//! mode that check is a read transaction, and on this path its cost is mostly the
//! transaction, not the lookup: the shared-memory read locks (`fcntl`) and choosing a read
//! mark take most of its 10–20 µs (perf, `added_latency` bench). This set answers "certainly
//! absent" for a key it has never seen, and "maybe" otherwise; only a "maybe" goes to SQLite,
//! which stays the one authority on who holds a key.
//!
//! It is safe only if no stored key is missing from it. Keys enter the database in two ways,
//! and both add here: rows present when the store opens (loaded, after the journal a previous
//! run left is applied), and claims this process writes (added before the journal lock is
//! released, so no check can run between the write and the add). One process per data
//! directory is enforced by the store's file lock. Keys leave when their record's expiry has
//! passed (the record no longer answers either); a released claim stays until then (it only
//! costs a read). Past [`KeySet::CAPACITY`] keys it stops answering "absent" for good: every
//! claim is checked in SQLite, as without it.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

type Shard = HashMap<u64, i64, BuildHasherDefault<Fingerprint>>;

/// Key fingerprints and the latest hour a record under each expires in.
pub struct KeySet {
    /// Keyed, so that clients choosing keys cannot aim at one fingerprint.
    hasher: RandomState,
    /// Fingerprint → the latest expiry bucket of a record under it: one probe per lookup.
    /// Sharded so that growing one shard (a rehash, under the journal lock) stays short.
    shards: Vec<Shard>,
    /// Expiry bucket → the fingerprints added with it, for pruning in expiry order.
    by_expiry: BTreeMap<i64, Vec<u64>>,
    len: usize,
    capacity: usize,
    saturated: bool,
}

const BUCKET_MS: i64 = 3_600_000;
const SHARDS: usize = 64;

impl KeySet {
    /// At most this many keys (up to about 80 MB); beyond, every claim is checked in SQLite.
    pub const CAPACITY: usize = 2_000_000;
    /// How long after its record expires a key is kept: a request that read the clock
    /// before the one pruning checks its key after it (its `now` is earlier, so a record
    /// the pruning `now` finds expired may still answer it), and a clock stepped back.
    pub const SLACK_MS: i64 = 3_600_000;

    pub fn new(capacity: usize) -> Self {
        KeySet {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            by_expiry: BTreeMap::new(),
            len: 0,
            capacity,
            saturated: false,
        }
    }

    fn fingerprint(&self, api_key_id: &str, key: &str) -> u64 {
        self.hasher.hash_one((api_key_id, key))
    }

    /// From the middle bits: the maps index by the low bits and tag entries with the top
    /// seven, so a shard chosen by either would leave its map probing with them all alike.
    fn shard(&self, fp: u64) -> usize {
        (fp >> 32) as usize % SHARDS
    }

    /// False only when no record of `(api_key_id, key)` expiring after `now` can exist.
    pub fn may_hold(&self, api_key_id: &str, key: &str, now: i64) -> bool {
        if self.saturated {
            return true;
        }
        let fp = self.fingerprint(api_key_id, key);
        // A bucket ending by `now` holds only expired records.
        self.shards[self.shard(fp)].get(&fp).is_some_and(|&b| bucket_end(b) > now)
    }

    /// Records that `(api_key_id, key)` is stored with a record expiring at `expires_at`.
    pub fn add(&mut self, api_key_id: &str, key: &str, expires_at: i64, now: i64) {
        if self.saturated {
            return;
        }
        if self.len >= self.capacity {
            self.prune(now);
        }
        if self.len >= self.capacity {
            tracing::warn!(
                keys = self.len,
                "more live idempotency keys than the in-memory key set holds; every claim is now checked in the database"
            );
            self.saturate();
            return;
        }
        let fp = self.fingerprint(api_key_id, key);
        let bucket = expires_at.div_euclid(BUCKET_MS);
        let shard = self.shard(fp);
        match self.shards[shard].get_mut(&fp) {
            Some(b) if *b >= bucket => return,
            Some(b) => *b = bucket,
            None => {
                self.shards[shard].insert(fp, bucket);
                self.len += 1;
            }
        }
        self.by_expiry.entry(bucket).or_default().push(fp);
        // Cheap when nothing is due: one look at the oldest bucket.
        self.prune(now);
    }

    /// From now on, every key may be held (past capacity, or when the set cannot be trusted).
    pub fn saturate(&mut self) {
        self.saturated = true;
        self.shards = Vec::new();
        self.by_expiry = BTreeMap::new();
        self.len = 0;
    }

    /// Drops the keys whose records had all expired [`Self::SLACK_MS`] before `now`.
    fn prune(&mut self, now: i64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            let bucket = *entry.key();
            if bucket_end(bucket).saturating_add(Self::SLACK_MS) > now {
                break;
            }
            for fp in entry.remove() {
                let shard = self.shard(fp);
                // Kept when a later record under it expires later.
                if self.shards[shard].get(&fp) == Some(&bucket) {
                    self.shards[shard].remove(&fp);
                    self.len -= 1;
                }
            }
        }
    }

    /// Keys held (for tests and logs).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True once past capacity (every claim is then checked in the database).
    pub fn saturated(&self) -> bool {
        self.saturated
    }
}

/// When the records of expiry bucket `b` have all expired (saturating: an expiry near
/// `i64::MAX` means never).
fn bucket_end(b: i64) -> i64 {
    b.saturating_add(1).saturating_mul(BUCKET_MS)
}

/// The fingerprints are already keyed hashes: the sets use them as they are.
#[derive(Default)]
struct Fingerprint(u64);

impl Hasher for Fingerprint {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64s are hashed here; any other input still hashes, byte by byte.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = BUCKET_MS;

    #[test]
    fn unseen_keys_are_absent_and_added_ones_held_until_they_expire() {
        let mut s = KeySet::new(100);
        let now = 10 * H;
        assert!(!s.may_hold("app", "k1", now));
        s.add("app", "k1", now + 24 * H, now);
        assert!(s.may_hold("app", "k1", now));
        // Scoped per API key, and no confusion between the two parts.
        assert!(!s.may_hold("other", "k1", now));
        s.add("ap", "pk1", now + 24 * H, now);
        assert!(!s.may_hold("appk", "1", now));
        // Held up to its expiry, gone after it (whatever the bucket boundaries).
        assert!(s.may_hold("app", "k1", now + 24 * H - 1));
        assert!(!s.may_hold("app", "k1", now + 26 * H));
        assert_eq!(s.len(), 2);
        // Kept an hour past expiry for a request with an earlier clock reading.
        s.add("app", "k2", now + 50 * H, now + 25 * H + 1);
        assert!(s.may_hold("app", "k1", now + 24 * H - 1));
        assert_eq!(s.len(), 3);
        s.add("app", "k3", now + 50 * H, now + 26 * H);
        assert_eq!(s.len(), 2, "the expired bucket is dropped when a key is added an hour later");
        // A key stored again (its record expired and replaced) is kept until the later expiry.
        s.add("app", "k2", now + 10 * H, now + 26 * H);
        s.add("app", "k2", now + 80 * H, now + 26 * H);
        s.add("app", "k4", now + 90 * H, now + 52 * H);
        assert!(s.may_hold("app", "k2", now + 79 * H));
        assert!(!s.may_hold("app", "k3", now + 52 * H));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn extreme_expiries_neither_overflow_nor_drop_a_key() {
        let mut s = KeySet::new(100);
        s.add("a", "forever", i64::MAX, 0);
        s.add("a", "long-ago", i64::MIN, 0);
        assert!(s.may_hold("a", "forever", 0));
        assert!(!s.may_hold("a", "long-ago", 0));
        // Pruning at the far end of time keeps the one that has not expired yet.
        s.add("a", "now", i64::MAX, i64::MAX - 1);
        assert!(s.may_hold("a", "forever", i64::MAX - 1));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn past_capacity_every_key_may_be_held() {
        let mut s = KeySet::new(2);
        let now = 5 * H;
        s.add("a", "1", now + H, now);
        s.add("a", "2", now + H, now);
        assert!(!s.saturated());
        assert!(!s.may_hold("a", "3", now));
        s.add("a", "3", now + H, now);
        assert!(s.saturated());
        for k in ["1", "2", "3", "never-seen"] {
            assert!(s.may_hold("a", k, now), "{k}");
        }
        // Stays so: what was dropped cannot be known again without the database.
        assert!(s.may_hold("a", "1", now + 100 * H));
    }

    #[test]
    fn expired_keys_make_room_before_saturating() {
        let mut s = KeySet::new(2);
        s.add("a", "1", 2 * H, H);
        s.add("a", "2", 2 * H, H);
        s.add("a", "3", 10 * H, 4 * H + 1);
        assert!(!s.saturated());
        assert_eq!(s.len(), 1);
        assert!(s.may_hold("a", "3", 4 * H));
    }
}
