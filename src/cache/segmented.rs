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
//! Both segments are doubly linked lists threaded through one slab of
//! nodes, found by one hash map: every operation stays O(1), and moving a
//! user between the segments relinks its node in place, with no
//! allocation (a promotion on every use of a cycling working set would
//! otherwise free and allocate a node each time).

use std::collections::HashMap;

use crate::ids::UserId;

/// The most of a partition's users the protected segment holds.
const PROTECTED_PERCENT: usize = 80;

/// No node: the end of a list, or of the free list.
const NONE: u32 = u32::MAX;

/// The two segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Probation = 0,
    Protected = 1,
}

/// One user's node.
struct Node<V> {
    user_id: UserId,
    value: V,
    segment: Segment,
    /// Toward the most recently used end.
    newer: u32,
    /// Toward the least recently used end.
    older: u32,
}

/// One segment's list: its most and least recently used ends.
#[derive(Clone, Copy)]
struct List {
    newest: u32,
    oldest: u32,
    len: usize,
}

impl List {
    const EMPTY: List = List {
        newest: NONE,
        oldest: NONE,
        len: 0,
    };
}

/// The two segments of one partition's LRU.
pub(super) struct SegmentedLru<V> {
    index: HashMap<UserId, u32, ahash::RandomState>,
    /// The nodes; `None` for a free slot, listed in `free`.
    slots: Vec<Option<Node<V>>>,
    free: Vec<u32>,
    lists: [List; 2],
}

impl<V> SegmentedLru<V> {
    pub fn new() -> Self {
        Self {
            index: HashMap::with_hasher(ahash::RandomState::new()),
            slots: Vec::new(),
            free: Vec::new(),
            lists: [List::EMPTY; 2],
        }
    }

    /// The memory one user's place costs beside its value's own heap: its
    /// slab slot (the value inline) and its hash map slot.
    pub const fn place_bytes() -> usize {
        std::mem::size_of::<Option<Node<V>>>() + std::mem::size_of::<(UserId, u32)>() + 1
    }

    /// Returns the number of users in both segments.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Returns the number of users in the protected segment.
    pub fn protected_len(&self) -> usize {
        self.lists[Segment::Protected as usize].len
    }

    pub fn contains(&self, user_id: &UserId) -> bool {
        self.index.contains_key(user_id)
    }

    /// Adds a user (a load, or one taken back from eviction) to probation;
    /// a user already held keeps its place, with `value` as its value.
    pub fn put(&mut self, user_id: UserId, value: V) {
        if let Some(&at) = self.index.get(&user_id)
            && let Some(node) = self.node_mut(at)
        {
            node.value = value;
            if node.segment == Segment::Probation {
                self.unlink(at);
                self.link_newest(at, Segment::Probation);
            }
            return;
        }
        let node = Some(Node {
            user_id,
            value,
            segment: Segment::Probation,
            newer: NONE,
            older: NONE,
        });
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at as usize] = node;
                at
            }
            None => {
                self.slots.push(node);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(user_id, at);
        self.link_newest(at, Segment::Probation);
    }

    /// Returns a user for use: marks it most recently used, promoting it
    /// from probation to protected.
    pub fn get_mut(&mut self, user_id: &UserId) -> Option<&mut V> {
        let at = *self.index.get(user_id)?;
        let promoted = self.node(at)?.segment == Segment::Probation;
        self.unlink(at);
        self.link_newest(at, Segment::Protected);
        if promoted {
            self.demote_over_share();
        }
        Some(&mut self.node_mut(at)?.value)
    }

    /// Returns a user without marking it used.
    pub fn peek_mut(&mut self, user_id: &UserId) -> Option<&mut V> {
        let at = *self.index.get(user_id)?;
        Some(&mut self.node_mut(at)?.value)
    }

    /// Removes and returns the user to evict: probation's least recently
    /// used, or protected's when probation is empty, but never `keep` (the
    /// user a request is using: evicting it would undo the request's load).
    pub fn pop_lru_except(&mut self, keep: Option<&UserId>) -> Option<(UserId, V)> {
        let kept = |lru: &Self, segment: Segment| {
            let oldest = lru.lists[segment as usize].oldest;
            keep.is_some_and(|keep| lru.node(oldest).is_some_and(|node| node.user_id == *keep))
        };
        if !kept(self, Segment::Probation)
            && let Some(evicted) = self.take(self.lists[Segment::Probation as usize].oldest)
        {
            return Some(evicted);
        }
        if kept(self, Segment::Protected) {
            return None;
        }
        self.take(self.lists[Segment::Protected as usize].oldest)
    }

    /// Removes a user from whichever segment holds it.
    pub fn remove(&mut self, user_id: &UserId) -> Option<V> {
        let at = *self.index.get(user_id)?;
        self.take(at).map(|(_, value)| value)
    }

    /// Iterates over every user, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&UserId, &V)> {
        self.slots
            .iter()
            .flatten()
            .map(|node| (&node.user_id, &node.value))
    }

    /// Moves protected's least recently used users to probation's most
    /// recently used end while protected holds more than its share.
    fn demote_over_share(&mut self) {
        let most_protected = (self.len() * PROTECTED_PERCENT / 100).max(1);
        while self.protected_len() > most_protected {
            let oldest = self.lists[Segment::Protected as usize].oldest;
            if self.node(oldest).is_none() {
                break;
            }
            self.unlink(oldest);
            self.link_newest(oldest, Segment::Probation);
        }
    }

    fn node(&self, at: u32) -> Option<&Node<V>> {
        self.slots.get(at as usize)?.as_ref()
    }

    fn node_mut(&mut self, at: u32) -> Option<&mut Node<V>> {
        self.slots.get_mut(at as usize)?.as_mut()
    }

    /// Unlinks the node at `at` and frees its slot; returns its user.
    fn take(&mut self, at: u32) -> Option<(UserId, V)> {
        self.node(at)?;
        self.unlink(at);
        let node = self.slots.get_mut(at as usize)?.take()?;
        self.free.push(at);
        self.index.remove(&node.user_id);
        Some((node.user_id, node.value))
    }

    /// Takes the node at `at` out of its segment's list.
    fn unlink(&mut self, at: u32) {
        let Some(&Node {
            segment,
            newer,
            older,
            ..
        }) = self.node(at)
        else {
            return;
        };
        let list = &mut self.lists[segment as usize];
        list.len -= 1;
        if newer == NONE {
            list.newest = older;
        }
        if older == NONE {
            list.oldest = newer;
        }
        if let Some(node) = self.node_mut(newer) {
            node.older = older;
        }
        if let Some(node) = self.node_mut(older) {
            node.newer = newer;
        }
    }

    /// Links the (unlinked) node at `at` at `segment`'s most recently used
    /// end.
    fn link_newest(&mut self, at: u32, segment: Segment) {
        let newest = self.lists[segment as usize].newest;
        let Some(node) = self.node_mut(at) else {
            return;
        };
        node.segment = segment;
        node.newer = NONE;
        node.older = newest;
        if let Some(node) = self.node_mut(newest) {
            node.newer = at;
        }
        let list = &mut self.lists[segment as usize];
        list.newest = at;
        if list.oldest == NONE {
            list.oldest = at;
        }
        list.len += 1;
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

    #[test]
    fn removed_users_give_their_slots_to_the_next_and_the_lists_stay_in_order() {
        let mut lru = SegmentedLru::new();
        for id in 1..=5 {
            lru.put(user(id), id);
        }
        assert_eq!(lru.remove(&user(3)), Some(3));
        assert_eq!(lru.remove(&user(3)), None);
        lru.put(user(6), 6);
        assert_eq!(lru.slots.len(), 5, "6 took the slot 3 left");
        // Put again, a probation user becomes its most recently used.
        lru.put(user(1), 10);
        assert_eq!(lru.get_mut(&user(2)).copied(), Some(2), "promoted");
        assert_eq!(lru.protected_len(), 1);
        let order: Vec<u64> =
            std::iter::from_fn(|| lru.pop_lru_except(None).map(|(_, value)| value)).collect();
        assert_eq!(
            order,
            [4, 5, 6, 10, 2],
            "probation oldest first, then protected"
        );
        assert_eq!(
            (lru.len(), lru.protected_len(), lru.iter().count()),
            (0, 0, 0)
        );
    }
}
