//! `GetRouting`: the slot map smart clients route by, from the routing
//! table (see `cluster::routing`). Each holder is listed once and each
//! slot names its holder by index, so a map of 65536 slots stays within
//! gRPC's default message size whatever the instance ids.

use std::sync::Arc;

use super::status::ApiError;
use super::{Caller, ReadStatesService, proto};
use crate::cluster::{Owner, RoutingSnapshot};

/// The name of the hash from users to slots, as `GetRouting` reports it
/// (see `cluster::slots` and the proto's comment).
pub const SLOT_HASH: &str = "splitmix64-mod";

impl ReadStatesService {
    pub(super) async fn get_routing_call(
        &self,
        _request: proto::GetRoutingRequest,
        _caller: &Caller,
    ) -> Result<proto::GetRoutingResponse, ApiError> {
        match &self.forwarding {
            Some(forwarding) => Ok(slot_map(&forwarding.snapshot())),
            None => Err(ApiError::NoSlotMap),
        }
    }
}

/// Returns the slot map of `snapshot` (every slot unknown once it expired).
pub fn slot_map(snapshot: &RoutingSnapshot) -> proto::GetRoutingResponse {
    let mut owners: Vec<&Arc<Owner>> = Vec::new();
    let slot_owners = (0..snapshot.slots())
        .map(|slot| match snapshot.owner(slot) {
            None => 0,
            Some(owner) => {
                let index = match owners.iter().position(|known| Arc::ptr_eq(known, owner)) {
                    Some(index) => index,
                    None => {
                        owners.push(owner);
                        owners.len() - 1
                    }
                };
                index as u32 + 1
            }
        })
        .collect();
    proto::GetRoutingResponse {
        slot_count: snapshot.slots(),
        slot_hash: SLOT_HASH.to_owned(),
        owners: owners
            .into_iter()
            .map(|owner| proto::SlotOwner {
                instance_id: owner.instance_id.clone(),
                address: owner.address.clone(),
            })
            .collect(),
        slot_owners,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_slot_names_its_holder_by_index_and_unknown_ones_zero() {
        let rows = [
            (0, "b", "10.0.0.2:1"),
            (1, "a", "10.0.0.1:1"),
            (3, "b", "10.0.0.2:1"),
        ]
        .map(|(slot, id, address)| (slot, id.to_owned(), address.to_owned()));
        let snapshot = RoutingSnapshot::from_rows(4, rows, Instant::now(), Duration::from_secs(10));
        let map = slot_map(&snapshot);
        assert_eq!(map.slot_count, 4);
        assert_eq!(map.slot_hash, "splitmix64-mod");
        let names: Vec<(&str, &str)> = map
            .owners
            .iter()
            .map(|owner| (owner.instance_id.as_str(), owner.address.as_str()))
            .collect();
        assert_eq!(names, vec![("b", "10.0.0.2:1"), ("a", "10.0.0.1:1")]);
        assert_eq!(map.slot_owners, vec![1, 2, 0, 1]);
        tokio::time::advance(Duration::from_secs(10)).await;
        let expired = slot_map(&snapshot);
        assert!(expired.owners.is_empty());
        assert_eq!(expired.slot_owners, vec![0; 4]);
    }
}
