//! The gRPC port: ReadStates behind the authentication check, health and
//! reflection beside it, over plaintext or TLS connections that are capped
//! and reaped (see `connections`), until the shutdown; then the calls in
//! flight get `server.drain_timeout_ms` to finish.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics::Counter;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use super::probes::{PROBE_MAX_REQUEST_BYTES, reflection, report_store_health};
use crate::api::{ReadStatesService, proto};
use crate::auth::{Security, tls_incoming};
use crate::config::Config;
use crate::connections::{Acceptor, CallTrackingLayer, ConnectionTable, plain_incoming};

type ReadStatesServer = proto::read_states_server::ReadStatesServer<ReadStatesService>;

/// The gRPC server's run, over plaintext or TLS connections.
type ServeFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send + 'a>,
>;

/// Everything the gRPC port serves, and where its connections come from.
pub struct GrpcPort {
    pub service: ReadStatesService,
    pub security: Arc<Security>,
    pub acceptor: Acceptor,
    pub connections: Arc<ConnectionTable>,
    /// Whether the store refuses writes, for the health name `readstates.store`.
    pub write_failing: watch::Receiver<bool>,
    pub handshake_failures: Counter,
}

/// Serves `port` until `shutdown` is cancelled, then lets the calls in
/// flight finish (health says `NOT_SERVING` meanwhile) for at most
/// `server.drain_timeout_ms`, past which their connections are dropped
/// (their unfinished calls were never acknowledged). Returns once no
/// connection is served any more.
pub async fn serve_grpc(
    config: &Config,
    port: GrpcPort,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let GrpcPort {
        service,
        security,
        acceptor,
        connections,
        write_failing,
        handshake_failures,
    } = port;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<ReadStatesServer>().await;
    let store_health = tokio::spawn(report_store_health(
        health_reporter.clone(),
        write_failing,
        shutdown.clone(),
    ));
    let router = tonic::transport::Server::builder()
        .timeout(Duration::from_millis(config.server.request_timeout_ms))
        // Pings find the connections of clients that vanished without a
        // FIN (a crashed host, a dropped NAT entry).
        .http2_keepalive_interval(config.server.keepalive_interval())
        .http2_keepalive_timeout(Some(config.server.keepalive_timeout()))
        // Advertised as the HTTP/2 stream limit, so clients queue past it
        // instead of piling unread requests into the connection (see
        // `MAX_STREAMS_PER_CONNECTION`); the layer below refuses a client
        // that ignores it.
        .max_concurrent_streams(
            u32::try_from(config.server.max_concurrent_requests_per_connection).ok(),
        )
        .concurrency_limit_per_connection(config.server.max_concurrent_requests_per_connection)
        .load_shed(true)
        .layer(CallTrackingLayer::new(connections))
        .add_service(health.max_decoding_message_size(PROBE_MAX_REQUEST_BYTES))
        .add_service(
            reflection()
                .build_v1()
                .context("building the reflection service (v1)")?
                .max_decoding_message_size(PROBE_MAX_REQUEST_BYTES),
        )
        .add_service(
            reflection()
                .build_v1alpha()
                .context("building the reflection service (v1alpha)")?
                .max_decoding_message_size(PROBE_MAX_REQUEST_BYTES),
        )
        // Only ReadStates calls are checked: health and reflection stay
        // open to load balancers and tools (TLS, when on, covers them all).
        .add_service(InterceptedService::new(
            ReadStatesServer::new(service)
                .max_decoding_message_size(config.limits.max_request_bytes),
            security.authenticator.clone(),
        ));
    let stopping = async {
        shutdown.cancelled().await;
        tracing::info!("shutting down: finishing calls in flight");
        health_reporter.set_not_serving::<ReadStatesServer>().await;
    };
    let (serve, accepting): (ServeFuture<'_>, _) = match security.tls.clone() {
        Some(tls) => {
            let (incoming, accepting) = tls_incoming(acceptor, tls, handshake_failures);
            let serve = router.serve_with_incoming_shutdown(incoming, stopping);
            (Box::pin(serve), accepting)
        }
        None => {
            let (incoming, accepting) = plain_incoming(acceptor);
            let serve = router.serve_with_incoming_shutdown(incoming, stopping);
            (Box::pin(serve), accepting)
        }
    };
    // A client that never lets its connection close must not keep the
    // final flush from running.
    let drain_timeout = Duration::from_millis(config.server.drain_timeout_ms);
    let drain_expired = async {
        shutdown.cancelled().await;
        tokio::time::sleep(drain_timeout).await;
    };
    let served = tokio::select! {
        served = serve => served.context("gRPC server failed"),
        () = drain_expired => {
            tracing::warn!(?drain_timeout, "calls still open after the drain timeout; closing connections");
            Ok(())
        }
    };
    // The accepting task ends with the server's incoming stream.
    accepting.await.context("accepting task failed")?;
    let _ = store_health.await;
    served
}
