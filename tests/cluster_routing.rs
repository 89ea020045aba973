//! Forwarding and the slot map against a real cluster: three servers in
//! one process over one keyspace, each bound to a port it also advertises.
//! Every call type sent to an instance that does not serve its user lands
//! on the owner; a fan-out over three owners answers in request order with
//! exact counts; a call already forwarded is never forwarded again;
//! `GetRouting` agrees with the lease table; and a dead or hung owner
//! (its lease still live) gives `UNAVAILABLE` within the deadline.
//!
//! Gated like the Scylla suite (see `common::cluster`):
//! `READSTATES_TEST_SCYLLA=127.0.0.1:9042 cargo test --test cluster_routing`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::Cluster as ScyllaCluster;
use common::routing::{
    SLOTS, free_addr, instance_config, lease_table, routing_map, settle, slot_of, users_of,
};
use common::{TestServer, ack_request, eventually, get, test_config};
use readstates::api::FORWARDED_BY;
use readstates::api::proto::{
    AckPinsRequest, AddMentionsRequest, BulkAckRequest, ChannelAck, DeleteReadStatesRequest,
    GetReadStateRequest, GetRoutingRequest, GetUserReadStatesRequest, RemoveMentionsRequest,
};
use readstates::cluster::placement::Members;
use readstates::config::ScyllaConfig;
use readstates::server;
use tokio::time::Instant;
use tonic::{Code, Request};

/// Starts instance `id` over `settings`.
async fn start(settings: &ScyllaConfig, id: &str, dir: &std::path::Path) -> TestServer {
    let config = instance_config(settings, id, dir);
    config.validate().unwrap();
    let store = server::open_store(&config).await.unwrap();
    TestServer::start(&config, store).await
}

/// Waits until the slots of `servers`, named `ids`, have settled.
async fn settle_servers(servers: &[TestServer], ids: &[&str]) {
    let clients: Vec<_> = servers.iter().map(|server| server.client.clone()).collect();
    let addresses: Vec<SocketAddr> = servers.iter().map(|server| server.running.addr).collect();
    settle(&clients, ids, &addresses).await;
}

/// Returns `readstates_cluster_forwards_total{result}` of `server`.
async fn forwards(server: &TestServer, result: &str) -> f64 {
    common::routing::forwards(server.running.metrics_addr.unwrap(), result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_call_through_a_non_owner_lands_on_the_owner() {
    let Some(cluster) =
        ScyllaCluster::from_env("every_call_through_a_non_owner_lands_on_the_owner").await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for id in ["a", "b"] {
        servers.push(start(&settings, id, dir.path()).await);
    }
    settle_servers(&servers, &["a", "b"]).await;
    let user = users_of(&Members::new(["a", "b"]), "b", 1)[0];
    let (first, second) = servers.split_at_mut(1);
    let (a, b) = (&mut first[0].client, &mut second[0].client);

    let acked = a
        .ack(ack_request(user, 10, 100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.read_state.unwrap().last_message_id, 100);
    let bulk = BulkAckRequest {
        user_id: user,
        acks: vec![
            ChannelAck {
                channel_id: 11,
                message_id: 110,
            },
            ChannelAck {
                channel_id: 12,
                message_id: 120,
            },
        ],
    };
    assert_eq!(
        a.bulk_ack(bulk)
            .await
            .unwrap()
            .into_inner()
            .read_states
            .len(),
        2
    );
    let pins = AckPinsRequest {
        user_id: user,
        channel_id: 10,
        pin_timestamp_ms: 5_000,
    };
    a.ack_pins(pins).await.unwrap();
    let mention = AddMentionsRequest {
        channel_id: 13,
        message_id: 130,
        user_ids: vec![user],
        omit_read_states: false,
    };
    let added = a.add_mentions(mention).await.unwrap().into_inner();
    assert_eq!(added.read_states[0].mention_count, 1);
    let one = a
        .get_read_state(GetReadStateRequest {
            user_id: user,
            channel_id: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .read_state
        .unwrap();
    assert_eq!(
        (one.last_message_id, one.last_pin_timestamp_ms),
        (100, 5_000)
    );
    let all = a
        .get_user_read_states(GetUserReadStatesRequest {
            user_id: user,
            since_version: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.read_states.len(), 4, "{all:?}");
    let removed = RemoveMentionsRequest {
        channel_id: 13,
        message_id: 130,
        user_ids: vec![user],
    };
    let removed = a.remove_mentions(removed).await.unwrap().into_inner();
    assert_eq!(removed.read_states[0].mention_count, 0);
    let deleted = DeleteReadStatesRequest {
        user_id: user,
        channel_ids: vec![12],
    };
    a.delete_read_states(deleted).await.unwrap();

    // The owner holds the user and its states; the instance that
    // forwarded never loaded it.
    assert_eq!(get(b, user, 10).await.last_message_id, 100);
    assert_eq!(get(b, user, 11).await.last_message_id, 110);
    assert_eq!(get(b, user, 12).await.last_message_id, 0);
    assert_eq!(servers[0].running.cache.resident().1, 0, "a cached nothing");
    assert_eq!(servers[1].running.cache.resident().1, 1, "b holds the user");
    assert_eq!(forwards(&servers[0], "ok").await, 8.0, "one forward a call");
    assert_eq!(forwards(&servers[1], "ok").await, 0.0, "b forwarded none");
    // Bad input is refused where it arrives, never forwarded.
    let invalid = servers[0]
        .client
        .ack(ack_request(user, 0, 1))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
    assert_eq!(forwards(&servers[0], "ok").await, 8.0);

    for server in servers {
        server.shutdown().await;
    }
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fan_out_over_three_owners_answers_in_request_order_with_exact_counts() {
    let Some(cluster) = ScyllaCluster::from_env(
        "a_fan_out_over_three_owners_answers_in_request_order_with_exact_counts",
    )
    .await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let ids = ["a", "b", "c"];
    let mut servers = Vec::new();
    for id in ids {
        servers.push(start(&settings, id, dir.path()).await);
    }
    settle_servers(&servers, &ids).await;
    let members = Members::new(ids);
    let per_owner: Vec<Vec<u64>> = ids.iter().map(|id| users_of(&members, id, 4)).collect();
    // Interleaved: c, b, a, c, b, a, ...; and one user twice.
    let mut user_ids: Vec<u64> = (0..4)
        .flat_map(|index| {
            [
                per_owner[2][index],
                per_owner[1][index],
                per_owner[0][index],
            ]
        })
        .collect();
    user_ids.push(per_owner[1][0]);
    let counts_of = |states: &[readstates::api::proto::ReadState]| -> Vec<(u64, u32)> {
        states
            .iter()
            .map(|state| (state.user_id, state.mention_count))
            .collect()
    };
    let expect =
        |count: u32| -> Vec<(u64, u32)> { user_ids.iter().map(|&user| (user, count)).collect() };
    let a = &mut servers[0].client;
    for message in [200, 201] {
        let request = AddMentionsRequest {
            channel_id: 20,
            message_id: message,
            user_ids: user_ids.clone(),
            omit_read_states: false,
        };
        let states = a.add_mentions(request.clone()).await.unwrap().into_inner();
        let count = u32::try_from(message - 199).unwrap();
        assert_eq!(counts_of(&states.read_states), expect(count));
        // Again: idempotent per (channel, message, user).
        let again = a.add_mentions(request).await.unwrap().into_inner();
        assert_eq!(counts_of(&again.read_states), expect(count));
    }
    let omitted = AddMentionsRequest {
        channel_id: 20,
        message_id: 202,
        user_ids: user_ids.clone(),
        omit_read_states: true,
    };
    let omitted = a.add_mentions(omitted).await.unwrap().into_inner();
    assert!(omitted.read_states.is_empty());
    let removed = RemoveMentionsRequest {
        channel_id: 20,
        message_id: 200,
        user_ids: user_ids.clone(),
    };
    let removed = a.remove_mentions(removed).await.unwrap().into_inner();
    assert_eq!(counts_of(&removed.read_states), expect(2));
    // Each owner counted exactly its users' mentions.
    for (index, users) in per_owner.iter().enumerate() {
        for &user in users {
            let state = get(&mut servers[index].client, user, 20).await;
            assert_eq!(state.mention_count, 2, "user {user} on {}", ids[index]);
        }
    }
    // Six fan-outs through a, each forwarded once to b and once to c.
    assert_eq!(forwards(&servers[0], "ok").await, 12.0);

    for server in servers {
        server.shutdown().await;
    }
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_call_for_a_slot_not_served_is_refused_not_forwarded_again() {
    let Some(cluster) = ScyllaCluster::from_env(
        "a_forwarded_call_for_a_slot_not_served_is_refused_not_forwarded_again",
    )
    .await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for id in ["a", "b"] {
        servers.push(start(&settings, id, dir.path()).await);
    }
    settle_servers(&servers, &["a", "b"]).await;
    let members = Members::new(["a", "b"]);
    let user_b = users_of(&members, "b", 1)[0];
    let user_a = users_of(&members, "a", 1)[0];
    let slot_b = slot_of(user_b);
    let a = &mut servers[0].client;
    let refused = a
        .ack(marked(ack_request(user_b, 10, 100)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains(&format!("slot {slot_b}"))
            && refused.message().contains("not the owner"),
        "{}",
        refused.message()
    );
    let fan_out = AddMentionsRequest {
        channel_id: 10,
        message_id: 100,
        user_ids: vec![user_a, user_b],
        omit_read_states: false,
    };
    let refused = a.add_mentions(marked(fan_out)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // A marked call for a slot it serves is served.
    a.ack(marked(ack_request(user_a, 10, 100))).await.unwrap();
    for result in ["ok", "error", "unreachable", "timeout"] {
        assert_eq!(forwards(&servers[0], result).await, 0.0, "{result}");
    }
    assert_eq!(
        get(&mut servers[1].client, user_b, 10)
            .await
            .last_message_id,
        0,
        "the refused call reached nobody"
    );

    for server in servers {
        server.shutdown().await;
    }
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_routing_agrees_with_the_lease_table() {
    let Some(cluster) = ScyllaCluster::from_env("get_routing_agrees_with_the_lease_table").await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let ids = ["a", "b", "c"];
    let mut servers = Vec::new();
    for id in ids {
        servers.push(start(&settings, id, dir.path()).await);
    }
    settle_servers(&servers, &ids).await;
    let table = lease_table(&cluster, &settings).await;
    assert_eq!(table.len(), SLOTS as usize, "every slot is held");
    for (server, id) in servers.iter_mut().zip(ids) {
        let map = server
            .client
            .get_routing(GetRoutingRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(map.slot_count, SLOTS);
        assert_eq!(map.slot_hash, "splitmix64-mod");
        assert_eq!(map.owners.len(), 3, "{map:?}");
        assert_eq!(routing_map(&map), table, "{id}'s slot map");
        // A client computing slots itself finds the user's owner.
        let user = users_of(&Members::new(ids), id, 1)[0];
        let slot = slot_of(user);
        let owner = &map.owners[map.slot_owners[slot as usize] as usize - 1];
        assert_eq!(owner.instance_id, id);
        assert_eq!(owner.address, server.running.addr.to_string());
    }

    for server in servers {
        server.shutdown().await;
    }
    cluster.drop_keyspace(&settings).await;
}

/// Returns `message` marked as forwarded by instance b.
fn marked<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED_BY, "b".parse().unwrap());
    request
}

/// Accepts connections and never answers on them.
async fn black_hole() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_or_hung_owner_gives_unavailable_within_the_deadline() {
    let Some(cluster) =
        ScyllaCluster::from_env("a_dead_or_hung_owner_gives_unavailable_within_the_deadline").await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    // Two owners that are gone but whose leases still run, as after a
    // crash: "dead" at a port nothing listens on, "hung" at one that
    // accepts and never answers. They hold the even and odd slots.
    let dead = free_addr();
    let hung = black_hole().await;
    for slot in 0..SLOTS {
        let (owner, address) = if slot.is_multiple_of(2) {
            ("dead", dead)
        } else {
            ("hung", hung)
        };
        cluster
            .query(format!(
                "INSERT INTO {}.slot_leases (slot, owner, incarnation, address) \
                 VALUES ({slot}, '{owner}', 1, '{address}') USING TTL 120",
                settings.keyspace
            ))
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut a = start(&settings, "a", dir.path()).await;
    let known = eventually(Duration::from_secs(10), async || {
        let map = a.client.get_routing(GetRoutingRequest {}).await.unwrap();
        map.get_ref().owners.len() == 2 && !map.get_ref().slot_owners.contains(&0)
    })
    .await;
    assert!(known, "a's slot map names the gone owners");
    let dead_user = (1..).find(|user| slot_of(*user).is_multiple_of(2)).unwrap();
    let hung_user = (1..).find(|user| slot_of(*user) % 2 == 1).unwrap();

    let started = Instant::now();
    let refused = a
        .client
        .ack(ack_request(dead_user, 10, 100))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("slot {}", slot_of(dead_user))),
        "{}",
        refused.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );

    // No deadline from the caller: cluster.forward_timeout_ms (1 s).
    let started = Instant::now();
    let refused = a
        .client
        .ack(ack_request(hung_user, 10, 100))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // The caller's deadline, shorter, bounds it instead (the channel may
    // also still answer with its last failed connection's error at once).
    let mut request = Request::new(ack_request(hung_user, 10, 100));
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let refused = a.client.ack(request).await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(
            refused.code(),
            Code::DeadlineExceeded | Code::Cancelled | Code::Unavailable
        ),
        "{refused:?}"
    );
    assert!(waited < Duration::from_millis(900), "{waited:?}");
    // A fan-out with a part on each gone owner and one here fails whole.
    let fan_out = AddMentionsRequest {
        channel_id: 10,
        message_id: 100,
        user_ids: vec![dead_user, hung_user],
        omit_read_states: false,
    };
    let started = Instant::now();
    let refused = a.client.add_mentions(fan_out).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // A connection the hung owner never completes counts as unreachable
    // (connect timeout) or as a timeout, whichever fires first; the call
    // whose caller's deadline ran out may end before its forward records.
    let failed = forwards(&a, "unreachable").await + forwards(&a, "timeout").await;
    assert!(failed >= 4.0, "{failed}");
    assert_eq!(forwards(&a, "ok").await, 0.0);

    a.shutdown().await;
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test]
async fn get_routing_without_the_cluster_is_a_failed_precondition() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let store = server::open_store(&config).await.unwrap();
    let mut server = TestServer::start(&config, store).await;
    let refused = server
        .client
        .get_routing(GetRoutingRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("cluster.enabled"));
    // A call marked as forwarded is served: every user is served here.
    server
        .client
        .ack(marked(ack_request(1, 10, 100)))
        .await
        .unwrap();
    server.shutdown().await;
}
