//! Forwarding between instances whose gRPC port is behind TLS, against a
//! real cluster: with bearer tokens, the forward goes over TLS and carries
//! the caller's token, which the owner checks again; with mutual TLS, the
//! forwarding instance presents its own client certificate
//! (`cluster.tls_cert_file`), which the owner's allowlist names.
//!
//! Gated like the Scylla suite (see `common::cluster`):
//! `READSTATES_TEST_SCYLLA=127.0.0.1:9042 cargo test --test cluster_routing_tls`.

mod common;
// Shared with the auth suite, of which this one uses a part.
#[allow(dead_code)]
#[path = "auth/pki.rs"]
mod pki;

use std::time::Duration;

use common::ack_request;
use common::cluster::Cluster as ScyllaCluster;
use common::routing::{instance_config, slot_of, users_of};
use pki::{Pki, dns, new_leaf, tls_channel};
use rcgen::ExtendedKeyUsagePurpose;
use readstates::api::proto::read_states_client::ReadStatesClient;
use readstates::cluster::placement::Members;
use readstates::config::Config;
use readstates::server::{self, Running};
use tonic::Code;
use tonic::transport::Channel;

/// Guards every network step against a hang (used by `pki`).
const HANG_GUARD: Duration = Duration::from_secs(30);

const TOKEN: &str = "forwarded-token-0123456789abcdef0123456789";

async fn start(config: &Config) -> Running {
    config.validate().unwrap();
    let store = server::open_store(config).await.unwrap();
    server::start(config, store).await.unwrap()
}

/// Sends an Ack of `user` to `channel`, with `token` if any.
async fn ack(channel: &Channel, user: u64, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(ack_request(user, 10, 100));
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    let mut client = ReadStatesClient::new(channel.clone());
    tokio::time::timeout(HANG_GUARD, client.ack(request))
        .await
        .expect("the call hung")
        .map(|_| ())
}

/// Sends `user`'s Ack through `channel` until it succeeds (the slots
/// settle meanwhile: UNAVAILABLE until they have); returns the last error
/// if it never did.
async fn ack_until_served(
    channel: &Channel,
    user: u64,
    token: Option<&str>,
) -> Result<(), tonic::Status> {
    let mut last = Ok(());
    for _ in 0..100 {
        last = ack(channel, user, token).await;
        if last.is_ok() {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}

/// Waits until `servers[1]` alone serves `user`'s slot.
async fn placed_on_second(servers: &[Running], user: u64) {
    let slot = slot_of(user);
    let views: Vec<_> = servers
        .iter()
        .map(|running| running.ownership.clone().unwrap())
        .collect();
    let placed = common::eventually(Duration::from_secs(20), async || {
        !views[0].owns_slot(slot) && views[1].owns_slot(slot)
    })
    .await;
    assert!(placed, "slot {slot} settled on the second instance");
}

/// Cached users of `running`.
fn cached_users(running: &Running) -> usize {
    running.cache.resident().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forward_goes_over_tls_with_the_callers_bearer_token() {
    let Some(cluster) =
        ScyllaCluster::from_env("a_forward_goes_over_tls_with_the_callers_bearer_token").await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("client {TOKEN}\n")).unwrap();
    let mut servers = Vec::new();
    for id in ["a", "b"] {
        let mut config = instance_config(&settings, id, dir.path());
        pki.serve_tls(&mut config);
        config.auth.tokens_file = Some(tokens.clone());
        config.cluster.tls_ca_file = Some(pki.ca_file.clone());
        // The test's server certificate names localhost, not 127.0.0.1.
        config.cluster.tls_server_name = Some("localhost".to_owned());
        servers.push(start(&config).await);
    }
    let user = users_of(&Members::new(["a", "b"]), "b", 1)[0];
    placed_on_second(&servers, user).await;
    let a = tls_channel(servers[0].addr, &pki, None).await.unwrap();
    ack_until_served(&a, user, Some(TOKEN)).await.unwrap();
    assert_eq!(cached_users(&servers[0]), 0, "a forwarded the call");
    assert_eq!(cached_users(&servers[1]), 1, "b served it");
    // Without the token the call is refused where it arrives.
    let refused = ack(&a, user, None).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    for running in servers {
        running.shutdown().await.unwrap();
    }
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forward_over_mutual_tls_presents_the_instances_certificate() {
    let Some(cluster) =
        ScyllaCluster::from_env("a_forward_over_mutual_tls_presents_the_instances_certificate")
            .await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (cert, key) = new_leaf(
        &pki.ca,
        vec![dns("readstates-instance")],
        None,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (cert_file, key_file) = (
        dir.path().join("instance.pem"),
        dir.path().join("instance.key"),
    );
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let mut servers = Vec::new();
    for id in ["a", "b"] {
        let mut config = instance_config(&settings, id, dir.path());
        pki.serve_tls(&mut config);
        config.tls.client_ca_file = Some(pki.ca_file.clone());
        config.auth.allowed_callers = vec!["orders".to_owned(), "readstates-instance".to_owned()];
        config.cluster.tls_ca_file = Some(pki.ca_file.clone());
        config.cluster.tls_cert_file = Some(cert_file.clone());
        config.cluster.tls_key_file = Some(key_file.clone());
        config.cluster.tls_server_name = Some("localhost".to_owned());
        servers.push(start(&config).await);
    }
    let user = users_of(&Members::new(["a", "b"]), "b", 1)[0];
    placed_on_second(&servers, user).await;
    let identity = pki.client(vec![dns("orders")], None);
    let a = tls_channel(servers[0].addr, &pki, Some(identity))
        .await
        .unwrap();
    ack_until_served(&a, user, None).await.unwrap();
    assert_eq!(cached_users(&servers[0]), 0, "a forwarded the call");
    assert_eq!(cached_users(&servers[1]), 1, "b served it");

    // An instance without a client certificate refuses to start.
    let mut config = instance_config(&settings, "c", dir.path());
    pki.serve_tls(&mut config);
    config.tls.client_ca_file = Some(pki.ca_file.clone());
    config.auth.allowed_callers = vec!["orders".to_owned()];
    config.cluster.tls_ca_file = Some(pki.ca_file.clone());
    let refused = config.validate().unwrap_err().to_string();
    assert!(refused.contains("cluster.tls_cert_file"), "{refused}");

    for running in servers {
        running.shutdown().await.unwrap();
    }
    cluster.drop_keyspace(&settings).await;
}
