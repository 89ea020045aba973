//! Servers of a cluster of instances in one process, for the forwarding
//! suites: each bound to a loopback port it also advertises, and helpers
//! that read the slot map and the lease table, wait for the slots to
//! settle, and pick users by owner.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use readstates::api::proto::{GetRoutingRequest, GetRoutingResponse};
use readstates::cluster::placement::Members;
use readstates::config::{ClusterConfig, Config, ScyllaConfig, StoreBackend};
use readstates::ids::UserId;

use super::cluster::Cluster;
use super::{Client, eventually, http_get, sample, test_config};

/// Few slots keep each run's Paxos rounds few on a one-node test cluster.
pub const SLOTS: u32 = 64;

/// Returns a loopback address with a port free now.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A config of instance `id` over `settings`, serving and advertising the
/// same free loopback address; short leases and a 1 s forward timeout.
pub fn instance_config(settings: &ScyllaConfig, id: &str, dir: &Path) -> Config {
    let addr = free_addr();
    let mut config = test_config(dir);
    config.server.listen_addr = addr;
    config.store.backend = StoreBackend::Scylla;
    config.scylla = settings.clone();
    config.cluster = ClusterConfig {
        enabled: true,
        instance_id: id.to_owned(),
        advertise_addr: addr.to_string(),
        slots: SLOTS,
        lease_ms: 3_000,
        safety_margin_ms: 1_000,
        heartbeat_ms: 200,
        handoff_timeout_ms: 500,
        forward_timeout_ms: 1_000,
        ..ClusterConfig::default()
    };
    config
}

/// Returns each slot's `(holder, address)` in the lease table.
pub async fn lease_table(
    cluster: &Cluster,
    settings: &ScyllaConfig,
) -> BTreeMap<u32, (String, String)> {
    let cql = format!(
        "SELECT slot, owner, address FROM {}.slot_leases",
        settings.keyspace
    );
    let result = cluster.admin.query_unpaged(cql, &[]).await.unwrap();
    let rows = result.into_rows_result().unwrap();
    rows.rows::<(i32, Option<String>, Option<String>)>()
        .unwrap()
        .filter_map(|row| {
            let (slot, owner, address) = row.unwrap();
            Some((u32::try_from(slot).unwrap(), (owner?, address?)))
        })
        .collect()
}

/// Returns each slot's `(holder, address)` as a `GetRouting` answer says.
pub fn routing_map(map: &GetRoutingResponse) -> BTreeMap<u32, (String, String)> {
    (0..map.slot_count)
        .filter_map(|slot| {
            let index = map.slot_owners[slot as usize].checked_sub(1)?;
            let owner = &map.owners[index as usize];
            Some((slot, (owner.instance_id.clone(), owner.address.clone())))
        })
        .collect()
}

/// Waits until every slot map `clients` answer names each slot's holder
/// as placement over `ids` (reached at `addresses`) says.
pub async fn settle(clients: &[Client], ids: &[&str], addresses: &[SocketAddr]) {
    let members = Members::new(ids.iter().copied());
    let expected: BTreeMap<u32, (String, String)> = (0..SLOTS)
        .map(|slot| {
            let owner = members.owner_of(slot).unwrap();
            let index = ids.iter().position(|id| *id == owner).unwrap();
            (slot, (owner.to_owned(), addresses[index].to_string()))
        })
        .collect();
    let settled = eventually(Duration::from_secs(20), async || {
        for client in clients {
            let map = client.clone().get_routing(GetRoutingRequest {}).await;
            if map.map(|map| routing_map(map.get_ref())).ok().as_ref() != Some(&expected) {
                return false;
            }
        }
        true
    })
    .await;
    assert!(settled, "every server's slot map names every slot's holder");
}

/// Returns the slot of `user`.
pub fn slot_of(user: u64) -> u32 {
    readstates::cluster::slot_of(UserId::new(user).unwrap(), SLOTS)
}

/// Returns `count` users whose slots placement over `members` puts on `id`.
pub fn users_of(members: &Members, id: &str, count: usize) -> Vec<u64> {
    (1..)
        .filter(|user| members.owner_of(slot_of(*user)) == Some(id))
        .take(count)
        .collect()
}

/// Returns `readstates_cluster_forwards_total{result}` at `metrics_addr`.
pub async fn forwards(metrics_addr: SocketAddr, result: &str) -> f64 {
    let (_, text) = http_get(metrics_addr, "/metrics").await;
    let series = format!("readstates_cluster_forwards_total{{result=\"{result}\"}}");
    sample(&text, &series).unwrap_or(0.0)
}
