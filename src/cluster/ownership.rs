//! The request path's view of which slots this instance serves: one atomic
//! deadline per slot, on this process's monotonic clock. A slot is served
//! until (the start of its last successful acquire or renewal) + lease -
//! safety margin: the cluster starts the lease's TTL after that start, so
//! the lease cannot have run out, for any other instance, before this
//! instance stops serving. Reading it takes one clock read and one atomic
//! load: no lock, no allocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::slots::{Slot, slot_of};
use crate::cache::ServingGate;
use crate::ids::UserId;

/// Which slots this instance serves, and until when.
#[derive(Debug)]
pub struct Ownership {
    slots: u32,
    /// The origin of the deadlines.
    epoch: Instant,
    /// Per slot: nanoseconds after `epoch` until which the slot is served;
    /// 0 when it is not.
    served_until: Box<[AtomicU64]>,
}

impl Ownership {
    /// Serves nothing yet, over `slots` slots.
    pub fn new(slots: u32) -> Self {
        Self {
            slots,
            epoch: Instant::now(),
            served_until: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Serves every one of `slots` slots for `validity` from now, as if
    /// each lease had just been acquired (benchmarks of the serving check).
    pub fn serving_all(slots: u32, validity: Duration) -> Self {
        let ownership = Self::new(slots);
        let now = Instant::now();
        for slot in 0..slots {
            ownership.grant(slot, now, validity);
        }
        ownership
    }

    /// Returns the slot count.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Returns the slot of `user_id`.
    pub fn slot_of(&self, user_id: UserId) -> Slot {
        slot_of(user_id, self.slots)
    }

    /// Returns whether this instance serves `user_id` now.
    pub fn owns(&self, user_id: UserId) -> bool {
        self.owns_slot(self.slot_of(user_id))
    }

    /// Returns whether this instance serves `slot` now.
    pub fn owns_slot(&self, slot: Slot) -> bool {
        let Some(until) = self.served_until.get(slot as usize) else {
            return false;
        };
        let until = until.load(Ordering::Acquire);
        until != 0 && self.nanos(Instant::now()) < until
    }

    /// Returns how many slots this instance serves now.
    pub fn owned_slots(&self) -> usize {
        let now = self.nanos(Instant::now());
        self.served_until
            .iter()
            .filter(|until| {
                let until = until.load(Ordering::Acquire);
                until != 0 && now < until
            })
            .count()
    }

    /// Serves `slot` until `started + validity` (`started`: when the
    /// acquire or renewal that succeeded was sent).
    pub(super) fn grant(&self, slot: Slot, started: Instant, validity: Duration) {
        let until = self.nanos(started + validity).max(1);
        if let Some(entry) = self.served_until.get(slot as usize) {
            entry.store(until, Ordering::Release);
        }
    }

    /// Stops serving `slot` at once.
    pub(super) fn revoke(&self, slot: Slot) {
        if let Some(entry) = self.served_until.get(slot as usize) {
            entry.store(0, Ordering::Release);
        }
    }

    /// Stops serving every slot at once.
    pub(super) fn revoke_all(&self) {
        for entry in self.served_until.iter() {
            entry.store(0, Ordering::Release);
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The cache serves a user only while this instance serves its slot; see
/// `cache::handoff`.
impl ServingGate for Ownership {
    fn serves(&self, user_id: UserId) -> bool {
        self.owns(user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slot_is_served_until_its_deadline_or_revocation() {
        let ownership = Ownership::new(16);
        assert!(!ownership.owns_slot(3));
        assert_eq!(ownership.owned_slots(), 0);
        let started = Instant::now();
        tokio::time::advance(Duration::from_millis(500)).await;
        ownership.grant(3, started, Duration::from_secs(2));
        ownership.grant(4, started, Duration::from_secs(1));
        assert!(ownership.owns_slot(3) && ownership.owns_slot(4));
        assert_eq!(ownership.owned_slots(), 2);
        // The deadline counts from the start of the request, not its end.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(ownership.owns_slot(3));
        assert!(!ownership.owns_slot(4), "past started + validity");
        ownership.revoke(3);
        assert!(!ownership.owns_slot(3));
        assert!(!ownership.owns_slot(99), "out of range is never owned");
        ownership.grant(5, Instant::now(), Duration::from_secs(1));
        ownership.revoke_all();
        assert_eq!(ownership.owned_slots(), 0);
    }

    #[test]
    fn a_user_is_served_by_its_slot() {
        let ownership = Ownership::new(8);
        let user = UserId::new(12_345).unwrap();
        let slot = ownership.slot_of(user);
        assert!(slot < 8);
        ownership.grant(slot, Instant::now(), Duration::from_secs(60));
        assert!(ownership.owns(user));
    }
}
