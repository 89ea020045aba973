//! A segmented LRU (SLRU) of users, so that one pass over many cold users
//! cannot flush the hot set out of the cache.
//!
//! A user enters the *probation* segment when it is loaded. A second use
//! while it is there promotes it to the *protected* segment, which holds at
//! most [`PROTECTED_PERCENT`] of the users; past that, protected's least
//! recently used user goes back to probation's most recently used end.
//! Eviction takes probation's least recently used user first, and
//! protected's only when probation is empty. A mention fan-out to hundreds
//! of cold users therefore churns probation only: the users a connect, an
//! ack and a read touched again stay protected.
//!
//! Both segments are `lru` lists, so every operation stays O(1).

use lru::LruCache;

use crate::ids::UserId;

/// The most of a partition's users the protected segment holds.
const PROTECTED_PERCENT: usize = 80;

/// The two segments of one partition's LRU.
pub(super) struct SegmentedLru<V> {
    probation: LruCache<UserId, V>,
    protected: LruCache<UserId, V>,
}

impl<V> SegmentedLru<V> {
    pub fn new() -> Self {
        Self {
            probation: LruCache::unbounded(),
            protected: LruCache::unbounded(),
        }
    }

    /// Returns the number of users in both segments.
    pub fn len(&self) -> usize {
        self.probation.len() + self.protected.len()
    }

    /// Returns the number of users in the protected segment.
    pub fn protected_len(&self) -> usize {
        self.protected.len()
    }

    pub fn contains(&self, user_id: &UserId) -> bool {
        self.protected.contains(user_id) || self.probation.contains(user_id)
    }

    /// Adds a user (a load, or one taken back from eviction) to probation.
    pub fn put(&mut self, user_id: UserId, value: V) {
        if let Some(slot) = self.protected.get_mut(&user_id) {
            *slot = value;
            return;
        }
        self.probation.put(user_id, value);
    }

    /// Returns a user for use: marks it most recently used, promoting it
    /// from probation to protected.
    pub fn get_mut(&mut self, user_id: &UserId) -> Option<&mut V> {
        if self.protected.contains(user_id) {
            return self.protected.get_mut(user_id);
        }
        let value = self.probation.pop(user_id)?;
        self.protected.put(*user_id, value);
        self.demote_over_share();
        self.protected.peek_mut(user_id)
    }

    /// Returns a user without marking it used.
    pub fn peek_mut(&mut self, user_id: &UserId) -> Option<&mut V> {
        if let Some(value) = self.protected.peek_mut(user_id) {
            return Some(value);
        }
        self.probation.peek_mut(user_id)
    }

    /// Removes and returns the user to evict: probation's least recently
    /// used, or protected's when probation is empty, but never `keep` (the
    /// user a request is using: evicting it would undo the request's load).
    pub fn pop_lru_except(&mut self, keep: Option<&UserId>) -> Option<(UserId, V)> {
        let kept = |lru: &LruCache<UserId, V>| {
            keep.is_some_and(|keep| lru.peek_lru().is_some_and(|(user_id, _)| user_id == keep))
        };
        if !kept(&self.probation)
            && let Some(evicted) = self.probation.pop_lru()
        {
            return Some(evicted);
        }
        if kept(&self.protected) {
            return None;
        }
        self.protected.pop_lru()
    }

    /// Removes a user from whichever segment holds it.
    pub fn remove(&mut self, user_id: &UserId) -> Option<V> {
        self.protected
            .pop(user_id)
            .or_else(|| self.probation.pop(user_id))
    }

    /// Iterates over every user, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&UserId, &V)> {
        self.protected.iter().chain(self.probation.iter())
    }

    /// Moves protected's least recently used users to probation's most
    /// recently used end while protected holds more than its share.
    fn demote_over_share(&mut self) {
        let most_protected = self.len() * PROTECTED_PERCENT / 100;
        while self.protected.len() > most_protected.max(1) {
            let Some((user_id, value)) = self.protected.pop_lru() else {
                break;
            };
            self.probation.put(user_id, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    /// A partition-like driver: evicts down to `capacity` users after
    /// every insert, as the cache does by weight.
    fn access(lru: &mut SegmentedLru<u64>, id: u64, capacity: usize) -> bool {
        if lru.get_mut(&user(id)).is_some() {
            return true;
        }
        lru.put(user(id), id);
        while lru.len() > capacity {
            lru.pop_lru_except(Some(&user(id)));
        }
        false
    }

    #[test]
    fn a_scan_of_cold_users_does_not_evict_the_hot_set() {
        let mut lru = SegmentedLru::new();
        // 50 hot users, each used twice: 40 (80%) end up protected.
        for _ in 0..2 {
            for id in 1..=50 {
                access(&mut lru, id, 100);
            }
        }
        assert_eq!(lru.len(), 50);
        assert_eq!(lru.protected_len(), 40);
        // A scan of 10,000 users seen once each (a plain LRU of 100 would
        // keep none of the hot users).
        for id in 1_000..11_000 {
            access(&mut lru, id, 100);
        }
        let hot_hits = (41..=50).filter(|&id| access(&mut lru, id, 100)).count();
        assert_eq!(
            hot_hits, 10,
            "the 40 protected hot users (41 to 50 among them) survived"
        );
    }

    #[test]
    fn protected_keeps_to_its_share_and_eviction_falls_back_to_it() {
        let mut lru = SegmentedLru::new();
        for id in 1..=10 {
            lru.put(user(id), id);
        }
        for id in 1..=10 {
            assert_eq!(lru.get_mut(&user(id)).copied(), Some(id));
        }
        assert_eq!(lru.len(), 10);
        assert_eq!(lru.protected_len(), 8, "80% of 10 users");
        // The two least recently promoted went back to probation, and go
        // first, unless kept.
        assert_eq!(lru.pop_lru_except(None).map(|(id, _)| id), Some(user(1)));
        assert_eq!(
            lru.pop_lru_except(Some(&user(2))).map(|(id, _)| id),
            Some(user(3)),
            "protected's oldest goes instead of the kept user"
        );
        assert_eq!(lru.pop_lru_except(None).map(|(id, _)| id), Some(user(2)));
        // Then protected, oldest first.
        assert_eq!(lru.pop_lru_except(None).map(|(id, _)| id), Some(user(4)));
        assert!(lru.contains(&user(10)));
        assert_eq!(lru.peek_mut(&user(10)).copied(), Some(10));
        assert_eq!(lru.iter().count(), 6);
    }
}
