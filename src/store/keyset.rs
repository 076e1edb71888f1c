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
//! costs a read). When [`KeySet::CAPACITY`] live keys fill it, it drops them all and, until
//! the last of them has expired, answers "maybe" for every key (every claim is checked in
//! SQLite, as without it); keys added since are held as before, so it answers exactly again
//! once the dropped ones can no longer answer.

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
    /// Keys dropped from the set (when it filled, or at load past capacity) may answer a
    /// request whose clock reads before this: every one of them expires by then. `i64::MIN`:
    /// none dropped; `i64::MAX`: the set is not trusted again (a panic left it half-updated).
    unknown_until: i64,
}

const BUCKET_MS: i64 = 3_600_000;
const SHARDS: usize = 64;

impl KeySet {
    /// At most this many keys (up to about 80 MB); beyond, every claim is checked in SQLite
    /// until the keys dropped to make room have expired.
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
            unknown_until: i64::MIN,
        }
    }

    /// How many keys it holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
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
        // A dropped key's record answers only before it expires, i.e. before `unknown_until`.
        if now < self.unknown_until {
            return true;
        }
        let fp = self.fingerprint(api_key_id, key);
        // A bucket ending by `now` holds only expired records.
        self.shards[self.shard(fp)].get(&fp).is_some_and(|&b| bucket_end(b) > now)
    }

    /// Records that `(api_key_id, key)` is stored with a record expiring at `expires_at`.
    pub fn add(&mut self, api_key_id: &str, key: &str, expires_at: i64, now: i64) {
        if self.unknown_until == i64::MAX {
            return;
        }
        if self.len >= self.capacity {
            self.prune(now);
        }
        if self.len >= self.capacity {
            let held = self.len;
            self.drop_all();
            tracing::warn!(
                keys = held,
                until_ms = self.unknown_until,
                "the in-memory idempotency key set is full; every claim is checked in the database until the keys it dropped have expired"
            );
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

    /// Keys whose records expire by `expires_at` were stored and are not in the set (the
    /// oldest rows, left out at load): answers "maybe" for every key until then.
    pub fn forget_until(&mut self, expires_at: i64) {
        self.unknown_until = self.unknown_until.max(expires_at);
    }

    /// Drops every key held, remembering until when they may answer.
    fn drop_all(&mut self) {
        // A bucket's end bounds the expiry of every key added with it.
        if let Some((&last, _)) = self.by_expiry.last_key_value() {
            self.forget_until(bucket_end(last));
        }
        self.shards.iter_mut().for_each(Shard::clear);
        self.by_expiry.clear();
        self.len = 0;
    }

    /// From now on, every key may be held: the set cannot be trusted (a panic left it
    /// half-updated, so a stored key may be missing with any expiry).
    pub fn saturate(&mut self) {
        self.drop_all();
        self.unknown_until = i64::MAX;
        // Nothing is added again: give the memory back.
        self.shards.iter_mut().for_each(|s| *s = Shard::default());
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

    /// True once the set is no longer trusted at all (every claim is checked in the database).
    pub fn saturated(&self) -> bool {
        self.unknown_until == i64::MAX
    }

    /// Before this (ms), every key may be held: dropped keys expire by then (`i64::MIN`: none).
    pub fn unknown_until(&self) -> i64 {
        self.unknown_until
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
    fn a_full_set_answers_maybe_until_the_keys_it_dropped_have_expired() {
        let mut s = KeySet::new(2);
        let now = 5 * H;
        s.add("a", "1", now + H, now);
        s.add("a", "2", now + 3 * H, now);
        assert!(!s.may_hold("a", "3", now));
        // Full: "1" and "2" are dropped; "3" is held.
        s.add("a", "3", now + 10 * H, now);
        assert!(!s.saturated());
        assert_eq!(s.len(), 1);
        for k in ["1", "2", "3", "never-seen"] {
            assert!(s.may_hold("a", k, now), "{k}");
        }
        // Up to the latest expiry among the dropped (the end of its hour bucket), every key
        // may be held.
        assert!(s.may_hold("a", "never-seen", now + 3 * H));
        assert!(s.may_hold("a", "2", now + 3 * H - 1));
        // Past it, exact again: the dropped keys' records cannot answer any more, and keys
        // added since the drop are held.
        let later = bucket_end((now + 3 * H).div_euclid(H));
        assert!(!s.may_hold("a", "never-seen", later));
        assert!(!s.may_hold("a", "2", later));
        assert!(s.may_hold("a", "3", later));
        s.add("a", "4", later + 10 * H, later);
        assert!(s.may_hold("a", "4", later));
        assert!(!s.may_hold("a", "5", later));
    }

    #[test]
    fn filling_again_extends_the_unknown_span_and_never_shortens_it() {
        let mut s = KeySet::new(1);
        s.add("a", "1", 50 * H, 0);
        s.add("a", "2", 10 * H, 0); // drops "1": unknown until hour 50's end
        s.add("a", "3", 20 * H, 0); // drops "2": the span stays at hour 50's end
        assert_eq!(s.unknown_until(), bucket_end(50));
        assert!(s.may_hold("a", "x", 50 * H));
        assert!(!s.may_hold("a", "x", bucket_end(50)));
        assert!(!s.may_hold("a", "3", bucket_end(50)), "held, and its record expired at hour 20");
    }

    #[test]
    fn keys_left_out_at_load_make_every_key_maybe_until_they_expire() {
        let mut s = KeySet::new(10);
        s.forget_until(7 * H);
        s.add("a", "held", 9 * H, H);
        assert!(s.may_hold("a", "other", 7 * H - 1));
        assert!(!s.may_hold("a", "other", 7 * H));
        assert!(s.may_hold("a", "held", 7 * H));
    }

    #[test]
    fn a_set_no_longer_trusted_says_maybe_for_good() {
        let mut s = KeySet::new(10);
        s.add("a", "1", 2 * H, H);
        s.saturate();
        assert!(s.saturated());
        s.add("a", "2", 2 * H, H);
        for k in ["1", "2", "never-seen"] {
            assert!(s.may_hold("a", k, 100 * H), "{k}");
        }
        assert!(s.may_hold("a", "x", i64::MAX - 1));
    }

    #[test]
    fn expired_keys_make_room_before_any_is_dropped() {
        let mut s = KeySet::new(2);
        s.add("a", "1", 2 * H, H);
        s.add("a", "2", 2 * H, H);
        s.add("a", "3", 10 * H, 4 * H + 1);
        assert_eq!(s.unknown_until(), i64::MIN);
        assert_eq!(s.len(), 1);
        assert!(s.may_hold("a", "3", 4 * H));
    }
}
