//! The cost of forwarding: the same calls sent straight to a user's owner
//! and through the other instance, which forwards them, with two servers
//! in one process over one keyspace. Prints latency percentiles and
//! throughput; asserts nothing about them (the machine decides). The
//! users are cached on their owner, so the store is not measured.
//!
//! On demand, against a real cluster, in release mode:
//! `READSTATES_TEST_SCYLLA=127.0.0.1:9042 cargo test --release --test
//! cluster_routing_overhead -- --ignored --nocapture`.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::Cluster as ScyllaCluster;
use common::routing::{instance_config, settle, users_of};
use common::{Client, TestServer, ack_request};
use readstates::api::proto::GetReadStateRequest;
use readstates::cluster::placement::Members;
use readstates::server;
use tokio::time::Instant;

const SEQUENTIAL_CALLS: usize = 5_000;
const CONCURRENT_CALLS: usize = 50_000;
const IN_FLIGHT: usize = 32;

fn report(label: &str, mut latencies: Vec<Duration>, elapsed: Duration) {
    latencies.sort_unstable();
    let at = |quantile: f64| {
        let index = ((latencies.len() as f64 * quantile) as usize).min(latencies.len() - 1);
        latencies[index].as_secs_f64() * 1e6
    };
    let _ = writeln!(
        std::io::stderr(),
        "{label:<44} p50 {:>7.0} us  p99 {:>7.0} us  p99.9 {:>7.0} us  {:>8.0} calls/s",
        at(0.50),
        at(0.99),
        at(0.999),
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
}

/// Sends `calls` Acks and GetReadStates of `users` (alternating) through
/// `client`, `in_flight` at a time; returns each call's latency and the
/// whole run's time.
async fn run(
    client: &Client,
    users: &[u64],
    calls: usize,
    in_flight: usize,
) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..in_flight {
        let mut client = client.clone();
        let users = users.to_vec();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(calls / in_flight);
            for call in 0..calls / in_flight {
                let user = users[(worker + call) % users.len()];
                let sent = Instant::now();
                if call % 2 == 0 {
                    let message = 1_000 + call as u64;
                    client.ack(ack_request(user, 10, message)).await.unwrap();
                } else {
                    let request = GetReadStateRequest {
                        user_id: user,
                        channel_id: 10,
                    };
                    client.get_read_state(request).await.unwrap();
                }
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(calls);
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    (latencies, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run on demand, in release mode"]
async fn forwarding_overhead() {
    let Some(cluster) = ScyllaCluster::from_env("forwarding_overhead").await else {
        return;
    };
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for id in ["a", "b"] {
        let config = instance_config(&settings, id, dir.path());
        let store = server::open_store(&config).await.unwrap();
        servers.push(TestServer::start(&config, store).await);
    }
    let clients: Vec<Client> = servers.iter().map(|server| server.client.clone()).collect();
    let addresses: Vec<SocketAddr> = servers.iter().map(|server| server.running.addr).collect();
    settle(&clients, &["a", "b"], &addresses).await;
    let users = users_of(&Members::new(["a", "b"]), "b", 64);
    let (owner, other) = (&clients[1], &clients[0]);
    // Warm: load every user on its owner, and connect a to b.
    run(other, &users, 2_000, 8).await;
    for (label, in_flight, calls) in [
        ("1 in flight", 1, SEQUENTIAL_CALLS),
        ("32 in flight", IN_FLIGHT, CONCURRENT_CALLS),
    ] {
        let (latencies, elapsed) = run(owner, &users, calls, in_flight).await;
        report(&format!("direct to the owner, {label}"), latencies, elapsed);
        let (latencies, elapsed) = run(other, &users, calls, in_flight).await;
        report(
            &format!("through the other instance, {label}"),
            latencies,
            elapsed,
        );
    }
    for server in servers {
        server.shutdown().await;
    }
    cluster.drop_keyspace(&settings).await;
}
