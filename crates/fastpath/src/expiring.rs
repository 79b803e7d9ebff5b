//! The in-process maps of the fast path (local rate-limit state, local locks, local cache
//! values) are keyed by strings callers choose: tenant names from a header, idempotency keys,
//! cache keys. Each entry stops mattering at a known instant — a GCRA key whose theoretical
//! arrival time has passed is the same as no key, an expired lock is free, an expired value is a
//! miss — so the map forgets those (in a sweep amortised over inserts: whenever it has doubled
//! since the last one) and never holds more than a fixed number of keys. What happens when every
//! key is still live and a new one arrives is the owner's choice ([`WhenFull`]).

use std::collections::HashMap;
use std::time::Instant;

/// Below this many keys the map does not bother sweeping.
const MIN_SWEEP: usize = 1024;

/// What to do with a new key when the map holds its capacity of live keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// Forget the tenth of the keys that would expire soonest (they matter least), then insert.
    EvictSoonestToExpire,
    /// Keep every key and refuse the new one.
    Refuse,
}

/// A map from string keys to values that expire, bounded to `capacity` keys.
#[derive(Debug)]
pub(crate) struct ExpiringMap<V> {
    entries: HashMap<String, (V, Instant)>,
    capacity: usize,
    when_full: WhenFull,
    /// Size at which the next insert of a new key sweeps.
    sweep_at: usize,
}

impl<V> ExpiringMap<V> {
    /// An empty map holding at most `capacity` keys (at least 10).
    pub(crate) fn new(capacity: usize, when_full: WhenFull) -> Self {
        let capacity = capacity.max(10);
        ExpiringMap {
            entries: HashMap::new(),
            capacity,
            when_full,
            sweep_at: MIN_SWEEP.min(capacity),
        }
    }

    /// The value of `key` and when it expires, if it is still live at `now`.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Option<(&V, Instant)> {
        self.entries
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, expires)| (value, *expires))
    }

    /// Sets `key` to `value` until `expires`; `false` when the map is full of live keys and
    /// refuses new ones. Replacing an existing key always works (the map does not grow).
    pub(crate) fn insert(&mut self, key: &str, value: V, expires: Instant, now: Instant) -> bool {
        if let Some(entry) = self.entries.get_mut(key) {
            *entry = (value, expires);
            return true;
        }
        if self.entries.len() >= self.sweep_at {
            self.make_room(now);
        }
        if self.entries.len() >= self.capacity {
            return false; // only with `WhenFull::Refuse`: eviction always leaves room
        }
        self.entries.insert(key.to_owned(), (value, expires));
        true
    }

    /// Removes `key`.
    pub(crate) fn remove(&mut self, key: &str) -> Option<V> {
        self.entries.remove(key).map(|(value, _)| value)
    }

    /// Forgets every key.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.sweep_at = MIN_SWEEP.min(self.capacity);
    }

    /// Keys held (live or not yet swept).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn make_room(&mut self, now: Instant) {
        self.entries.retain(|_, (_, expires)| *expires > now);
        if self.entries.len() >= self.capacity && self.when_full == WhenFull::EvictSoonestToExpire {
            let mut expiries: Vec<Instant> = self.entries.values().map(|(_, at)| *at).collect();
            let (_, threshold, _) = expiries.select_nth_unstable(self.capacity / 10);
            let threshold = *threshold;
            self.entries.retain(|_, (_, expires)| *expires > threshold);
        }
        // Amortised: the next sweep comes after as many inserts as there are keys now, so each
        // insert pays O(1) on average; never later than at capacity.
        self.sweep_at = (self.entries.len() * 2).clamp(MIN_SWEEP.min(self.capacity), self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn expired_keys_are_forgotten_as_new_ones_arrive() {
        let mut map = ExpiringMap::new(1_000_000, WhenFull::Refuse);
        let start = Instant::now();
        for i in 0..100_000u32 {
            let now = start + Duration::from_millis(u64::from(i));
            // Each key lives 5 ms, like a fresh GCRA key after one call.
            assert!(map.insert(&format!("k{i}"), (), now + Duration::from_millis(5), now));
        }
        assert!(map.len() <= 2 * MIN_SWEEP, "{} keys kept", map.len());
    }

    #[test]
    fn a_full_map_of_live_keys_evicts_those_expiring_soonest() {
        let mut map = ExpiringMap::new(1000, WhenFull::EvictSoonestToExpire);
        let now = Instant::now();
        let far = now + Duration::from_secs(3600);
        assert!(map.insert("long-lived", (), far, now));
        for i in 0..10_000u64 {
            let expires = now + Duration::from_secs(1) + Duration::from_micros(i);
            assert!(map.insert(&format!("k{i}"), (), expires, now));
            assert!(map.len() <= 1000);
        }
        assert!(
            map.get("long-lived", now).is_some(),
            "the longest-lived key stays"
        );
        assert!(map.get("k9999", now).is_some(), "the newest key is in");
    }

    #[test]
    fn a_full_map_that_refuses_keeps_every_live_key() {
        let mut map = ExpiringMap::new(10, WhenFull::Refuse);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        for i in 0..10 {
            assert!(map.insert(&format!("k{i}"), i, later, now));
        }
        assert!(
            !map.insert("new", 10, later, now),
            "refused while all are live"
        );
        assert!(
            map.insert("k3", 33, later, now),
            "an existing key can still change"
        );
        assert_eq!(map.get("k3", now).map(|(value, _)| *value), Some(33));
        assert!(
            map.insert("new", 10, later, later),
            "room once the others expired"
        );
        assert_eq!(map.len(), 1);
    }
}
