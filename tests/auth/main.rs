//! Security of the gRPC port, over real TLS on loopback with certificates
//! made at test time: TLS covers every service and refuses plaintext;
//! mutual TLS admits listed caller identities (SAN DNS name, SAN URI, or
//! common name in a certificate without those SANs), refuses an unlisted
//! one with `PERMISSION_DENIED`, a call without a certificate with
//! `UNAUTHENTICATED`, and a certificate from another CA in the handshake;
//! bearer tokens refuse a missing or wrong token with `UNAUTHENTICATED`,
//! and a reload swaps them (a file without tokens revokes them all).
//! Refused calls never reach the cache, and health and reflection answer
//! without credentials in every mode, to small requests only.
//!
//! One test binary in five parts: [`pki`] makes the certificates, [`tls`]
//! covers TLS and client certificates, [`tokens`] bearer tokens and their
//! reload, [`startup`] the files a server refuses to start with, [`probes`]
//! the size limits of health and reflection.

#[path = "../common/mod.rs"]
mod common;
mod pki;
mod probes;
mod startup;
mod tls;
mod tokens;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{InstrumentedStore, ack_request, sample};
use futures_util::StreamExt;
use readstates::api::proto::read_states_client::ReadStatesClient;
use readstates::api::proto::{WatchRequest, WatchSubscription};
use readstates::config::Config;
use readstates::server::{self, Running};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// Guards every network step against a hang; never a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A plaintext channel, connected lazily.
fn plaintext_channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// Sends one Ack of `user` with an optional `authorization` header.
async fn ack(
    channel: &Channel,
    user: u64,
    authorization: Option<&str>,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(ack_request(user, 1, 10));
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    let mut client = ReadStatesClient::new(channel.clone());
    tokio::time::timeout(HANG_GUARD, client.ack(request))
        .await
        .expect("the call hung")
        .map(|_| ())
}

/// Opens a WatchReadStates stream following `user`, with an optional
/// `authorization` header; returns once its catch-up arrives.
async fn watch(
    channel: &Channel,
    user: u64,
    authorization: Option<&str>,
) -> Result<(), tonic::Status> {
    let subscribe = WatchRequest {
        subscribe: vec![WatchSubscription {
            user_id: user,
            since_version: 0,
        }],
        unsubscribe: Vec::new(),
    };
    // The request stream stays open: the server follows the user until the
    // stream is dropped.
    let requests = futures_util::stream::iter([subscribe]).chain(futures_util::stream::pending());
    let mut request = tonic::Request::new(requests);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    let mut client = ReadStatesClient::new(channel.clone());
    let mut events = tokio::time::timeout(HANG_GUARD, client.watch_read_states(request))
        .await
        .expect("the call hung")?
        .into_inner();
    let first = tokio::time::timeout(HANG_GUARD, events.message())
        .await
        .expect("the stream hung")?
        .expect("the stream ended without an event");
    assert!(
        matches!(
            first.events[0].event,
            Some(readstates::api::proto::watch_event::Event::CatchUp(_))
        ),
        "{first:?}"
    );
    Ok(())
}

/// Checks that health reports the service serving, and that reflection
/// lists it, over `channel` without credentials.
async fn health_and_reflection_answer(channel: &Channel) {
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "readstates.v1.ReadStates".to_owned(),
        })
        .await
        .expect("health answers without credentials")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers without credentials")
        .into_inner();
    match stream.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            assert!(
                list.service
                    .iter()
                    .any(|service| service.name == "readstates.v1.ReadStates"),
                "{list:?}"
            );
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

/// Returns a sample of the server's metrics (0 when absent).
fn metric(running: &Running, series: &str) -> f64 {
    sample(&running.metrics.render(), series).unwrap_or(0.0)
}

/// Waits for the server to count a failed handshake (the client may see
/// the connection close before the server counts it).
async fn handshake_failed(running: &Running) -> bool {
    common::eventually(HANG_GUARD, async || {
        metric(running, "readstates_tls_handshake_failures_total") >= 1.0
    })
    .await
}

/// Asserts that no call has reached the cache or the ReadStates handlers.
fn assert_nothing_reached_the_cache(running: &Running) {
    assert_eq!(metric(running, "readstates_cache_users"), 0.0);
    assert_eq!(metric(running, "readstates_cache_misses_total"), 0.0);
    assert_eq!(metric(running, "readstates_cache_hits_total"), 0.0);
    let text = running.metrics.render();
    let handled = text
        .lines()
        .filter(|line| line.starts_with("readstates_rpc_duration_seconds_count{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(handled, 0.0, "a refused call reached the service");
}

async fn start(config: &Config, dir: &Path) -> Running {
    let store = InstrumentedStore::open(&dir.join("data"));
    server::start(config, store).await.unwrap()
}
