//! The routing table: which instance holds each slot's lease, and at which
//! address it is reached, as the lease table said when last read. The
//! membership task reads the whole lease table each round and swaps in a
//! new snapshot; the request path clones the current snapshot's `Arc`
//! under a read lock held for that clone only (no await under it, no
//! allocation), and looks slots up in it.
//!
//! The table is advice, not ownership: it may be a round behind the leases.
//! A call forwarded on stale advice reaches an instance that no longer
//! serves the slot, which refuses it rather than forwarding again (see
//! `api::forward`). A read that fails keeps the last snapshot, but no
//! longer than a lease: past that its holders may all have changed, and
//! every slot reads as unknown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::time::Instant;

use super::lease::LeaseTable;
use super::slots::Slot;

/// An instance holding slots, as its leases name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Its `cluster.instance_id`.
    pub instance_id: String,
    /// Its `cluster.advertise_addr`.
    pub address: String,
}

/// The lease table as read at one moment.
#[derive(Debug)]
pub struct RoutingSnapshot {
    /// After this, every slot reads as unknown.
    expires_at: Instant,
    /// Per slot; one `Arc` per owner, shared by its slots.
    owners: Box<[Option<Arc<Owner>>]>,
}

impl RoutingSnapshot {
    /// Holds nothing.
    fn empty(slots: u32) -> Self {
        Self {
            expires_at: Instant::now(),
            owners: (0..slots).map(|_| None).collect(),
        }
    }

    /// Builds a snapshot of `slots` slots from the lease table's rows
    /// (`(slot, instance id, address)`, read starting at `read_at`), valid
    /// for `max_age`. Rows out of range or without an address are skipped.
    pub fn from_rows(
        slots: u32,
        rows: impl IntoIterator<Item = (Slot, String, String)>,
        read_at: Instant,
        max_age: Duration,
    ) -> Self {
        let mut owners: Box<[Option<Arc<Owner>>]> = (0..slots).map(|_| None).collect();
        let mut interned: HashMap<Owner, Arc<Owner>> = HashMap::new();
        for (slot, instance_id, address) in rows {
            let Some(entry) = owners.get_mut(slot as usize) else {
                continue;
            };
            if instance_id.is_empty() || address.is_empty() {
                continue;
            }
            let owner = Owner {
                instance_id,
                address,
            };
            let shared = interned
                .entry(owner)
                .or_insert_with_key(|owner| Arc::new(owner.clone()));
            *entry = Some(Arc::clone(shared));
        }
        Self {
            expires_at: read_at + max_age,
            owners,
        }
    }

    /// Returns the slot count.
    pub fn slots(&self) -> u32 {
        self.owners.len() as u32
    }

    /// Returns whether the snapshot is too old to be trusted at `now`.
    pub fn expired_at(&self, now: Instant) -> bool {
        now >= self.expires_at
    }

    /// Returns the holder of `slot` as of `now` (`None`: unknown).
    pub fn owner_at(&self, slot: Slot, now: Instant) -> Option<&Arc<Owner>> {
        if self.expired_at(now) {
            return None;
        }
        self.owners.get(slot as usize)?.as_ref()
    }

    /// Returns the holder of `slot` now (`None`: unknown).
    pub fn owner(&self, slot: Slot) -> Option<&Arc<Owner>> {
        self.owner_at(slot, Instant::now())
    }
}

/// The routing table, refreshed by the membership task.
#[derive(Debug)]
pub struct Routing {
    slots: u32,
    /// How long a snapshot is trusted: one lease.
    max_age: Duration,
    current: RwLock<Arc<RoutingSnapshot>>,
}

impl Routing {
    /// Knows no holder yet, of `slots` slots; a snapshot is trusted for
    /// `max_age` after its read started.
    pub fn new(slots: u32, max_age: Duration) -> Self {
        Self {
            slots,
            max_age,
            current: RwLock::new(Arc::new(RoutingSnapshot::empty(slots))),
        }
    }

    /// Returns the current snapshot.
    pub fn snapshot(&self) -> Arc<RoutingSnapshot> {
        Arc::clone(&self.current.read())
    }

    /// Replaces the snapshot with the rows read starting at `read_at`.
    pub fn replace(
        &self,
        rows: impl IntoIterator<Item = (Slot, String, String)>,
        read_at: Instant,
    ) {
        let next = Arc::new(RoutingSnapshot::from_rows(
            self.slots,
            rows,
            read_at,
            self.max_age,
        ));
        // The old snapshot is dropped after the lock is released.
        let _previous = std::mem::replace(&mut *self.current.write(), next);
    }

    /// Reads the lease table into a new snapshot; on failure keeps the
    /// last one (until it expires by itself).
    pub(super) async fn refresh(&self, table: &LeaseTable) {
        let read_at = Instant::now();
        match table.slot_owners().await {
            Ok(rows) => self.replace(rows, read_at),
            Err(error) => {
                tracing::warn!(%error, "reading the slot owners failed; keeping the last routing table");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(slot: Slot, id: &str, address: &str) -> (Slot, String, String) {
        (slot, id.to_owned(), address.to_owned())
    }

    #[tokio::test(start_paused = true)]
    async fn slots_map_to_their_lease_holders_until_the_snapshot_expires() {
        let routing = Routing::new(8, Duration::from_secs(10));
        assert!(routing.snapshot().owner(0).is_none(), "nothing known yet");
        routing.replace(
            [
                row(0, "a", "10.0.0.1:50051"),
                row(5, "b", "10.0.0.2:50051"),
                row(6, "a", "10.0.0.1:50051"),
                row(99, "c", "10.0.0.3:50051"),
                row(7, "d", ""),
            ],
            Instant::now(),
        );
        let snapshot = routing.snapshot();
        assert_eq!(snapshot.slots(), 8);
        let a = snapshot.owner(0).unwrap();
        assert_eq!(a.instance_id, "a");
        assert!(
            Arc::ptr_eq(a, snapshot.owner(6).unwrap()),
            "owners are shared"
        );
        assert_eq!(snapshot.owner(5).unwrap().address, "10.0.0.2:50051");
        assert!(snapshot.owner(1).is_none());
        assert!(snapshot.owner(7).is_none(), "no address: unknown");
        assert!(snapshot.owner(99).is_none(), "out of range");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(snapshot.owner(0).is_none(), "older than a lease: unknown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_counts_its_age_from_the_start_of_its_read() {
        let routing = Routing::new(4, Duration::from_secs(10));
        let read_at = Instant::now();
        tokio::time::advance(Duration::from_secs(4)).await;
        routing.replace([row(1, "a", "a:1")], read_at);
        let snapshot = routing.snapshot();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(snapshot.owner(1).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(snapshot.owner(1).is_none());
        // A snapshot taken before a swap keeps answering from its own read.
        routing.replace([row(1, "b", "b:1")], Instant::now());
        assert_eq!(routing.snapshot().owner(1).unwrap().instance_id, "b");
    }
}
