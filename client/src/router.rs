//! Where each call goes: to its user's owner in the current slot map, or,
//! with no map (the cluster is off) or no known owner, to the given
//! addresses in turn (round-robin; any instance serves or forwards any
//! user). The map is swapped whole, as an `Arc`, under a short lock that
//! is never held across an await; each swap bumps a generation, so that
//! calls failing on one map start one refresh, not one each.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tonic::transport::Channel;

use crate::pool::Pool;
use crate::routing::SlotMap;

/// The destination of one attempt.
pub(crate) struct Target {
    /// The instance's `host:port`.
    pub(crate) address: String,
    pub(crate) channel: Channel,
    /// The generation of the map the target was read from.
    pub(crate) generation: u64,
}

/// The slot map in use, and its generation.
struct Current {
    map: Option<Arc<SlotMap>>,
    generation: u64,
}

/// The addresses and the slot map calls are routed by.
pub(crate) struct Router {
    /// The given addresses (`host:port`) with their channels; never empty.
    seeds: Vec<(String, Channel)>,
    pool: Pool,
    next_seed: AtomicUsize,
    current: Mutex<Current>,
    /// Held while `GetRouting` is read, so that refreshes run one at a
    /// time (single flight); an async lock, as it is held across the call.
    pub(crate) refreshing: tokio::sync::Mutex<()>,
}

impl Router {
    /// Returns a router over `seeds` (`host:port`, their channels built),
    /// in round-robin until a map is installed.
    pub(crate) fn new(seeds: Vec<(String, Channel)>, pool: Pool) -> Self {
        debug_assert!(!seeds.is_empty());
        Self {
            seeds,
            pool,
            next_seed: AtomicUsize::new(0),
            current: Mutex::new(Current {
                map: None,
                generation: 0,
            }),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Returns the slot map in use; `None` in round-robin.
    pub(crate) fn map(&self) -> Option<Arc<SlotMap>> {
        self.current.lock().map.clone()
    }

    /// Returns the generation of the slot map in use.
    pub(crate) fn generation(&self) -> u64 {
        self.current.lock().generation
    }

    /// Routes by `map` from now on (round-robin when `None`).
    pub(crate) fn install(&self, map: Option<SlotMap>) {
        let mut current = self.current.lock();
        current.map = map.map(Arc::new);
        current.generation += 1;
    }

    /// Returns where a call for `user_id` goes: its owner when the map
    /// names one with a usable address, the next given address otherwise.
    pub(crate) fn target(&self, user_id: Option<u64>) -> Target {
        if let Some(target) = user_id.and_then(|user_id| self.owner(user_id)) {
            return target;
        }
        let generation = self.generation();
        let (address, channel) = self.next_seed();
        Target {
            address: address.clone(),
            channel: channel.clone(),
            generation,
        }
    }

    /// Returns the owner of `user_id` in the map in use, when the map names
    /// one with a usable address; `None` in round-robin.
    pub(crate) fn owner(&self, user_id: u64) -> Option<Target> {
        let (map, generation) = {
            let current = self.current.lock();
            (current.map.clone(), current.generation)
        };
        let owner = map.as_deref()?.owner_of(user_id)?;
        match self.pool.channel(&owner.address) {
            Ok(channel) => Some(Target {
                address: owner.address.clone(),
                channel,
                generation,
            }),
            // Any instance forwards a call to the owner.
            Err(error) => {
                tracing::warn!(
                    address = %owner.address,
                    instance_id = %owner.instance_id,
                    %error,
                    "a slot owner's address is unusable; sending to another instance"
                );
                None
            }
        }
    }

    /// Returns where to read the slot map, in order: every given address,
    /// starting with the next in turn, then the owners of the current map
    /// that are not among them (so a refresh still works when the given
    /// addresses are gone but the tier lives on).
    pub(crate) fn routing_targets(&self) -> Vec<(String, Channel)> {
        let start = self.next_seed.fetch_add(1, Ordering::Relaxed);
        let mut targets: Vec<(String, Channel)> = (0..self.seeds.len())
            .map(|offset| self.seeds[(start + offset) % self.seeds.len()].clone())
            .collect();
        if let Some(map) = self.map() {
            for owner in map.owners() {
                if targets.iter().any(|(address, _)| *address == owner.address) {
                    continue;
                }
                if let Ok(channel) = self.pool.channel(&owner.address) {
                    targets.push((owner.address.clone(), channel));
                }
            }
        }
        targets
    }

    fn next_seed(&self) -> &(String, Channel) {
        let turn = self.next_seed.fetch_add(1, Ordering::Relaxed);
        &self.seeds[turn % self.seeds.len()]
    }
}
