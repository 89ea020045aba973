//! Users to the instances that own them (the README's "Scale-out"): the
//! slot of a user, the slot map `GetRouting` answers, and the split of a
//! fan-out's users by owner with the positions that merge the answers back
//! in request order. Pure logic: no I/O, no clock.

use tonic::{Code, Status};

use crate::proto::GetRoutingResponse;

mod split;

pub use split::{MergeError, Part, merge};

/// The name of the only slot hash this client implements, as `GetRouting`
/// reports it.
pub const SLOT_HASH: &str = "splitmix64-mod";

/// The most slots a keyspace can be divided into.
pub const MAX_SLOTS: u32 = 65_536;

/// A slot number, below the map's slot count.
pub type Slot = u32;

/// Returns SplitMix64's finaliser of `value` (Steele, Lea and Flood, 2014),
/// the mixer of `splitmix64-mod`, in wrapping unsigned 64-bit arithmetic.
pub const fn mix64(value: u64) -> u64 {
    let mut z = value;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Returns the slot of `user_id` among `slot_count` slots under
/// `splitmix64-mod`: `mix64(user_id) mod slot_count` (a count of 0 is
/// taken as 1).
pub fn slot_of(user_id: u64, slot_count: u32) -> Slot {
    // The remainder's bias is below slot_count / 2^64: nothing.
    (mix64(user_id) % u64::from(slot_count.max(1))) as Slot
}

/// An instance holding slots: its id and the `host:port` of its gRPC API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The instance's `cluster.instance_id`.
    pub instance_id: String,
    /// Its advertised `host:port`.
    pub address: String,
}

/// Why a `GetRoutingResponse` cannot be routed by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotMapError {
    /// The map names a slot hash this client does not implement: routing
    /// by it would send users to instances that do not own them.
    #[error(
        "the slot map uses slot hash {name:?}, which this client does not implement (it knows \
         {SLOT_HASH:?}): upgrade the client; until then it must not route by slot"
    )]
    UnknownSlotHash {
        /// The hash the map names.
        name: String,
    },
    /// The slot count is 0 or past [`MAX_SLOTS`].
    #[error("the slot map has slot_count {slot_count}, outside 1 to {MAX_SLOTS}")]
    SlotCount {
        /// The count the map gives.
        slot_count: u32,
    },
    /// `slot_owners` does not have one entry per slot.
    #[error("the slot map has {entries} slot_owners entries for slot_count {slot_count}")]
    SlotOwnersLength {
        /// The entries in `slot_owners`.
        entries: usize,
        /// The count the map gives.
        slot_count: u32,
    },
    /// A slot names an owner past the end of `owners`.
    #[error("slot {slot} names owner {index}, but the slot map lists {owners} owners")]
    OwnerIndex {
        /// The slot.
        slot: Slot,
        /// Its entry in `slot_owners` (1 + an index in `owners`).
        index: u32,
        /// How many owners the map lists.
        owners: usize,
    },
    /// An owner has no address to send calls to.
    #[error("owner {instance_id:?} in the slot map has an empty address")]
    EmptyAddress {
        /// The owner's instance id.
        instance_id: String,
    },
}

/// Which instance serves each slot, as one instance last read its lease
/// table. It may be a heartbeat behind a slot's move: a call sent on it to
/// a former owner is forwarded or refused with `UNAVAILABLE`, never served
/// twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    slot_count: u32,
    owners: Vec<Owner>,
    /// Per slot: 1 + the index in `owners` of its holder, 0 when unknown.
    /// Every entry is at most `owners.len()` (checked when parsed).
    slot_owners: Vec<u32>,
}

impl SlotMap {
    /// Parses and checks a `GetRoutingResponse`.
    pub fn from_response(response: GetRoutingResponse) -> Result<Self, SlotMapError> {
        if response.slot_hash != SLOT_HASH {
            return Err(SlotMapError::UnknownSlotHash {
                name: response.slot_hash,
            });
        }
        let slot_count = response.slot_count;
        if slot_count == 0 || slot_count > MAX_SLOTS {
            return Err(SlotMapError::SlotCount { slot_count });
        }
        if response.slot_owners.len() != slot_count as usize {
            return Err(SlotMapError::SlotOwnersLength {
                entries: response.slot_owners.len(),
                slot_count,
            });
        }
        let owners: Vec<Owner> = response
            .owners
            .into_iter()
            .map(|owner| Owner {
                instance_id: owner.instance_id,
                address: owner.address,
            })
            .collect();
        if let Some(owner) = owners.iter().find(|owner| owner.address.is_empty()) {
            return Err(SlotMapError::EmptyAddress {
                instance_id: owner.instance_id.clone(),
            });
        }
        let past_the_end = response
            .slot_owners
            .iter()
            .position(|&index| index as usize > owners.len());
        if let Some(slot) = past_the_end {
            return Err(SlotMapError::OwnerIndex {
                slot: slot as Slot,
                index: response.slot_owners[slot],
                owners: owners.len(),
            });
        }
        Ok(Self {
            slot_count,
            owners,
            slot_owners: response.slot_owners,
        })
    }

    /// Returns the number of slots users are divided into.
    pub fn slot_count(&self) -> u32 {
        self.slot_count
    }

    /// Returns the instances holding at least one slot, each once.
    pub fn owners(&self) -> &[Owner] {
        &self.owners
    }

    /// Returns the index in [`owners`](Self::owners) of the holder of
    /// `slot`, or `None` when it is unknown (or `slot` is out of range).
    pub fn owner_index_of_slot(&self, slot: Slot) -> Option<usize> {
        match self.slot_owners.get(slot as usize) {
            None | Some(0) => None,
            Some(&index) => Some(index as usize - 1),
        }
    }

    /// Returns the index in [`owners`](Self::owners) of the instance that
    /// serves `user_id`, or `None` when its slot's holder is unknown.
    pub fn owner_index(&self, user_id: u64) -> Option<usize> {
        self.owner_index_of_slot(slot_of(user_id, self.slot_count))
    }

    /// Returns the instance that serves `user_id`, or `None` when its
    /// slot's holder is unknown (send the call to any instance).
    pub fn owner_of(&self, user_id: u64) -> Option<&Owner> {
        self.owner_index(user_id).map(|index| &self.owners[index])
    }
}

/// Returns whether `status` says the slot map moved: an `UNAVAILABLE`
/// whose message names a slot (the instance does not serve it, it is
/// moving, its owner is unknown or unreachable), so the map is worth
/// reading again at once.
pub fn hints_map_moved(status: &Status) -> bool {
    status.code() == Code::Unavailable && status.message().contains("slot")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::SlotOwner;

    fn response(slot_owners: Vec<u32>, owners: &[(&str, &str)]) -> GetRoutingResponse {
        GetRoutingResponse {
            slot_count: slot_owners.len() as u32,
            slot_hash: SLOT_HASH.to_owned(),
            owners: owners
                .iter()
                .map(|(id, address)| SlotOwner {
                    instance_id: (*id).to_owned(),
                    address: (*address).to_owned(),
                })
                .collect(),
            slot_owners,
        }
    }

    /// A map of `slot_count` slots alternating between owners "a" and "b",
    /// with every third slot unknown.
    fn striped(slot_count: u32) -> SlotMap {
        let slot_owners = (0..slot_count)
            .map(|slot| if slot % 3 == 2 { 0 } else { slot % 2 + 1 })
            .collect();
        SlotMap::from_response(response(slot_owners, &[("a", "a:1"), ("b", "b:1")])).unwrap()
    }

    #[test]
    fn the_mixer_is_splitmix64s_finaliser() {
        // The published SplitMix64 sequence from seed 0: each output is the
        // finaliser of the state advanced by the golden-ratio increment.
        const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
        assert_eq!(mix64(GAMMA), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix64(GAMMA.wrapping_mul(2)), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(mix64(GAMMA.wrapping_mul(3)), 0x06c4_5d18_8009_454f);
        assert_eq!(mix64(0), 0);
    }

    #[test]
    fn slots_match_the_services_test_vectors() {
        // The proto's and the README's examples, and the server's pinned
        // values (src/cluster/slots.rs): a client that disagrees routes
        // every user to the wrong instance.
        let vectors = [
            (1_u64, 1024_u32, 485),
            (80_351_110_224_678_912, 1024, 499),
            (175_928_847_299_117_063, 1024, 224),
            (u64::MAX >> 1, 1024, 701),
            (42, 7, 3),
        ];
        for (user_id, slot_count, slot) in vectors {
            assert_eq!(slot_of(user_id, slot_count), slot, "user {user_id}");
        }
    }

    #[test]
    fn an_unknown_slot_hash_is_refused() {
        let mut unknown = response(vec![1], &[("a", "a:1")]);
        unknown.slot_hash = "murmur3-mod".to_owned();
        let error = SlotMap::from_response(unknown).unwrap_err();
        assert_eq!(
            error,
            SlotMapError::UnknownSlotHash {
                name: "murmur3-mod".to_owned()
            }
        );
        assert!(error.to_string().contains("must not route by slot"));
    }

    #[test]
    fn malformed_maps_are_refused() {
        let mut no_slots = response(vec![], &[]);
        no_slots.slot_count = 0;
        assert_eq!(
            SlotMap::from_response(no_slots),
            Err(SlotMapError::SlotCount { slot_count: 0 })
        );
        let mut short = response(vec![1, 1], &[("a", "a:1")]);
        short.slot_count = 3;
        assert_eq!(
            SlotMap::from_response(short),
            Err(SlotMapError::SlotOwnersLength {
                entries: 2,
                slot_count: 3
            })
        );
        assert_eq!(
            SlotMap::from_response(response(vec![1, 2], &[("a", "a:1")])),
            Err(SlotMapError::OwnerIndex {
                slot: 1,
                index: 2,
                owners: 1
            })
        );
        assert_eq!(
            SlotMap::from_response(response(vec![1], &[("a", "")])),
            Err(SlotMapError::EmptyAddress {
                instance_id: "a".to_owned()
            })
        );
    }

    #[test]
    fn each_user_goes_to_its_slots_holder() {
        let map = striped(1024);
        assert_eq!(map.slot_count(), 1024);
        assert_eq!(map.owner_of(1), None, "slot 485 has no known holder");
        for user_id in 1..2_000_u64 {
            let slot = slot_of(user_id, 1024);
            let expected = match slot % 3 {
                2 => None,
                _ => Some(["a", "b"][(slot % 2) as usize]),
            };
            let owner = map
                .owner_of(user_id)
                .map(|owner| owner.instance_id.as_str());
            assert_eq!(owner, expected, "user {user_id} in slot {slot}");
        }
        assert_eq!(map.owner_index_of_slot(1024), None);
    }

    #[test]
    fn only_an_unavailable_naming_a_slot_hints_that_the_map_moved() {
        let not_owner = Status::unavailable(
            "user_id 1 is in slot 485, which this instance does not serve; retry with backoff \
             while slots move",
        );
        assert!(hints_map_moved(&not_owner));
        assert!(hints_map_moved(&Status::unavailable(
            "user_id 1 is not served by this instance now; its slot is moving: retry with backoff"
        )));
        assert!(!hints_map_moved(&Status::unavailable(
            "write backlog full: the store is not keeping up; retry with backoff"
        )));
        assert!(!hints_map_moved(&Status::invalid_argument(
            "user_id in slot 3"
        )));
    }
}
