//! Wiring: opens the store, builds the engine (cache and flusher), serves the
//! gRPC API (with health checking and reflection) and `/metrics`, applies
//! configuration changes on a running server, and shuts down in order: stop
//! accepting, finish calls in flight, flush every dirty state, sync.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::api::{Forwarding, ReadStatesService, proto};
use crate::auth::{AuthError, Security, tls_incoming};
use crate::cache::Cache;
use crate::cluster::{Cluster, ClusterMetrics, Handoff, Ownership};
use crate::config::{Config, StoreBackend};
use crate::connections::{
    Acceptor, CallTrackingLayer, ConnectionTable, open_files_limit, plain_incoming, port_limits,
};
use crate::engine::Engine;
use crate::metrics::{ListenerPort, Metrics};
use crate::overload::QueueDelay;
use crate::scrape::serve_metrics;
use crate::store::{EmbeddedOptions, EmbeddedStore, ScyllaStore, Store};

type ReadStatesServer = proto::read_states_server::ReadStatesServer<ReadStatesService>;

/// The gRPC server's run, over plaintext or TLS connections.
type ServeFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send + 'a>,
>;

/// Opens the store the configuration names.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match config.store.backend {
        StoreBackend::Embedded => {
            let options = EmbeddedOptions {
                data_dir: config.store.data_dir.clone(),
                reader_threads: config.store.reader_threads,
                cache_mib: config.store.cache_mib,
            };
            // Opening may repair the file after a crash or import an LSM
            // data dir, disk work that grows with the data: kept off the
            // async workers.
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open_with(&options))
                .await
                .context("the embedded store's opening thread failed")?
                .with_context(|| {
                    format!(
                        "opening the embedded store in {}",
                        config.store.data_dir.display()
                    )
                })?;
            Ok(Arc::new(store))
        }
        StoreBackend::Scylla => {
            let store = ScyllaStore::open(&config.scylla).await.with_context(|| {
                format!(
                    "opening the scylla store (keyspace {})",
                    config.scylla.keyspace
                )
            })?;
            Ok(Arc::new(store))
        }
    }
}

/// A running server.
pub struct Running {
    /// The address the gRPC API is bound to.
    pub addr: SocketAddr,
    /// The address `/metrics` is served on, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The cache, for inspection.
    pub cache: Arc<Cache>,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// With `cluster.enabled`: the slots this instance serves.
    pub ownership: Option<Arc<Ownership>>,
    /// The configuration in force (live changes included).
    config: Mutex<Config>,
    security: Arc<Security>,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
    force: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Shuts down gracefully and waits until every dirty state is written,
    /// or until `server.shutdown_timeout_ms` has passed (then it returns an
    /// error that says how many dirty states were not written).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("server task failed")?
    }

    /// Applies a new configuration to the running server: cache capacity
    /// (shrinking evicts at once, and evicted dirty states are written),
    /// flush delay, batch size and dirty backlog limit take effect now.
    /// Returns the settings that differ but need a restart, which keep
    /// their old values. The caller validates `new` first.
    pub fn reconfigure(&self, new: &Config) -> Vec<&'static str> {
        let mut current = self.config.lock();
        let old = current.live_settings();
        // Destructured without `..`: a setting made live does not compile
        // until it is applied here.
        let crate::config::LiveSettings {
            cache_capacity,
            flush_delay_ms,
            max_dirty_states,
            batch_size,
            log: _,
        } = new.live_settings();
        if cache_capacity != old.cache_capacity {
            tracing::info!(
                old = old.cache_capacity,
                new = cache_capacity,
                "cache capacity changed"
            );
            self.cache.set_capacity(cache_capacity);
        }
        if flush_delay_ms != old.flush_delay_ms {
            tracing::info!(
                old = old.flush_delay_ms,
                new = flush_delay_ms,
                "flush delay changed"
            );
            self.cache.set_flush_delay(new.flush.delay());
        }
        if max_dirty_states != old.max_dirty_states {
            tracing::info!(
                old = old.max_dirty_states,
                new = max_dirty_states,
                "dirty backlog limit changed"
            );
            self.cache.set_max_dirty_states(max_dirty_states);
        }
        if batch_size != old.batch_size {
            tracing::info!(
                old = old.batch_size,
                new = batch_size,
                "flush batch size changed"
            );
            self.engine.set_batch_size(batch_size);
        }
        let need_restart = current.restart_only_changes(new);
        *current = current.with_live_settings(new.live_settings());
        for &name in &need_restart {
            tracing::warn!(
                setting = name,
                "changed in the config file; takes effect after a restart"
            );
        }
        need_restart
    }

    /// Re-reads the files of `[tls]` and `auth.tokens_file`, those
    /// configured; a file refused keeps what it would have replaced.
    pub async fn reload_credentials(&self) -> Result<(), AuthError> {
        self.security.reload().await
    }

    /// Returns a token that starts the shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Returns a token that, cancelled during a shutdown that can neither
    /// write its dirty states nor spill them, makes it give them up and
    /// end (the second SIGTERM or SIGINT).
    pub fn force_token(&self) -> CancellationToken {
        self.force.clone()
    }

    /// Waits for the server to stop (after its shutdown token is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task failed")?
    }
}

/// Starts serving `config` over `store`.
pub async fn start(config: &Config, store: Arc<dyn Store>) -> anyhow::Result<Running> {
    let metrics = Metrics::new(store.backend());
    // First, so that a missing or bad file stops the start before the
    // store is touched.
    let security = Arc::new(
        Security::from_config(config, &metrics)
            .await
            .context("setting up TLS and authentication")?,
    );
    let engine = Engine::open(config, store, Arc::clone(&metrics)).await?;
    let cache = Arc::clone(engine.cache());
    // After the store: its schema check has passed, so the cluster tables
    // exist. With `cluster.enabled = false` nothing of the cluster runs.
    let cluster = if config.cluster.enabled {
        let handoff = Handoff {
            engine: Arc::clone(&engine),
            timeout: config.cluster.handoff_timeout(),
        };
        Some(
            Cluster::start_serving(
                &config.scylla,
                &config.cluster,
                ClusterMetrics::of(&metrics),
                handoff,
            )
            .await
            .context("joining the cluster of instances")?,
        )
    } else {
        None
    };
    let ownership = cluster.as_ref().map(Cluster::ownership);
    let forwarding = match &cluster {
        Some(cluster) => Some(
            Forwarding::new(cluster, &config.cluster, Arc::clone(&metrics))
                .await
                .context("setting up forwarding to the other instances")?,
        ),
        None => None,
    };

    let listener = TcpListener::bind(config.server.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.server.listen_addr))?;
    let addr = listener.local_addr()?;
    let (grpc_limits, metrics_limits) = port_limits(config, open_files_limit());
    let shutdown = CancellationToken::new();
    let metrics_shutdown = CancellationToken::new();
    let (metrics_addr, metrics_task) = if config.metrics.enabled {
        let metrics_listener = TcpListener::bind(config.metrics.listen_addr)
            .await
            .with_context(|| {
                format!("binding the metrics address {}", config.metrics.listen_addr)
            })?;
        let metrics_addr = metrics_listener.local_addr()?;
        let task = tokio::spawn(serve_metrics(
            metrics_listener,
            Arc::clone(&metrics),
            metrics_limits,
            metrics_shutdown.clone(),
        ));
        (Some(metrics_addr), Some(task))
    } else {
        (None, None)
    };

    // Health and reflection requests carry a service, symbol or file name
    // (a few hundred bytes at most), and they answer anyone, credentials
    // or not: a small fixed limit instead of `limits.max_request_bytes`.
    // It also bounds what reflection echoes back: an unknown symbol comes
    // back whole in a NOT_FOUND message, which tonic-reflection writes and
    // we cannot trim; under 4 KiB it stays within a client's default
    // header list (16 KiB) even when every byte is percent-encoded.
    const PROBE_MAX_REQUEST_BYTES: usize = 4 * 1024;
    let (health_reporter, health_server) = tonic_health::server::health_reporter();
    let health_service = health_server.max_decoding_message_size(PROBE_MAX_REQUEST_BYTES);
    health_reporter.set_serving::<ReadStatesServer>().await;
    // Reflection in both versions: much tooling (Python's grpcio-reflection,
    // older grpcurl, Postman and Evans builds) speaks only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the reflection service (v1)")?
        .max_decoding_message_size(PROBE_MAX_REQUEST_BYTES);
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?
        .max_decoding_message_size(PROBE_MAX_REQUEST_BYTES);
    let mut service = ReadStatesService::new(
        Arc::clone(&engine),
        config.limits.clone(),
        Arc::clone(&metrics),
    );
    let probe_stop = CancellationToken::new();
    if let Some(forwarding) = forwarding {
        service = service.with_forwarding(forwarding);
    }
    if config.limits.max_queue_delay_ms > 0 {
        let probe = QueueDelay::spawn(metrics.queue_delay.clone(), probe_stop.clone());
        service = service.with_queue_delay(probe);
    }

    let store_health = tokio::spawn(report_store_health(
        health_reporter.clone(),
        engine.write_failing(),
        shutdown.clone(),
    ));
    let background = engine.start()?;
    // The shutdown deadline: past it the final flush stops retrying a store
    // that fails or hangs, and keeps what is left (see `Background::stop`).
    let give_up = background.give_up_token();
    let deadline = tokio::spawn({
        let (shutdown, give_up) = (shutdown.clone(), give_up.clone());
        let timeout = Duration::from_millis(config.server.shutdown_timeout_ms);
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(timeout).await;
            give_up.cancel();
        }
    });
    // A second signal: give up what neither the store nor the spill took.
    let force = CancellationToken::new();
    // The gRPC port's connections: capped, reaped when silent or idle (see
    // `connections`); the layer below marks their calls.
    let grpc_connections = metrics.connections.port(ListenerPort::Grpc);
    let connection_table = Arc::new(ConnectionTable::new(grpc_limits, grpc_connections.clone()));
    let acceptor = Acceptor::new(
        listener,
        Arc::clone(&connection_table),
        grpc_connections,
        ListenerPort::Grpc.name(),
    );
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
        .layer(CallTrackingLayer::new(connection_table))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Only ReadStates calls are checked: health and reflection stay
        // open to load balancers and tools (TLS, when on, covers them all).
        .add_service(InterceptedService::new(
            ReadStatesServer::new(service)
                .max_decoding_message_size(config.limits.max_request_bytes),
            security.authenticator.clone(),
        ));

    let tls = security.tls.clone();
    let handshake_failures = metrics.tls_handshake_failures.clone();
    let serve_shutdown = shutdown.clone();
    let drain_timeout = Duration::from_millis(config.server.drain_timeout_ms);
    let (task_engine, task_force) = (Arc::clone(&engine), force.clone());
    let task = tokio::spawn(async move {
        let stopping = async {
            serve_shutdown.cancelled().await;
            tracing::info!("shutting down: finishing calls in flight");
            health_reporter.set_not_serving::<ReadStatesServer>().await;
        };
        let (serve, accepting): (ServeFuture<'_>, _) = match tls {
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
        // final flush from running: past the drain timeout, connections are
        // dropped (their unfinished calls were never acknowledged).
        let drain_expired = async {
            serve_shutdown.cancelled().await;
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
        tracing::info!("calls finished: flushing dirty read states");
        let flushed = background.stop(&task_engine, &task_force).await;
        deadline.abort();
        let _ = store_health.await;
        // The leases go last, once this instance's dirty states are
        // written, so the slots' next owners load what it wrote.
        if let Some(cluster) = cluster {
            cluster.stop().await;
        }
        // Metrics stay up until the final flush is done, so it can be watched.
        metrics_shutdown.cancel();
        probe_stop.cancel();
        if let Some(task) = metrics_task {
            task.await.context("metrics task failed")?;
        }
        served?;
        flushed?;
        tracing::info!("shutdown complete");
        Ok(())
    });
    if let Some(metrics_addr) = metrics_addr {
        tracing::info!(%metrics_addr, "serving /metrics");
    }
    tracing::info!(
        grpc_addr = %addr,
        store = engine.backend(),
        tls = config.tls.enabled(),
        client_certificates = config.tls.client_ca_file.is_some(),
        bearer_tokens = config.auth.tokens_file.is_some(),
        "readstates listening"
    );
    Ok(Running {
        addr,
        metrics_addr,
        cache,
        metrics,
        ownership,
        config: Mutex::new(config.clone()),
        security,
        engine,
        shutdown,
        force,
        task,
    })
}

/// The `grpc.health.v1` name whose status says whether the store takes the
/// write-behind's writes: `NOT_SERVING` while it refuses them (see
/// `flush::health`). The service's own status stays `SERVING`: cached
/// reads, and changes until the dirty backlog fills, still work.
pub const STORE_HEALTH: &str = "readstates.store";

/// Keeps [`STORE_HEALTH`] in step with the flusher's view of the store
/// until the shutdown starts.
async fn report_store_health(
    reporter: tonic_health::server::HealthReporter,
    mut failing: tokio::sync::watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    use tonic_health::ServingStatus;
    loop {
        let status = if *failing.borrow_and_update() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        reporter.set_service_status(STORE_HEALTH, status).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = failing.changed() => if changed.is_err() { return },
        }
    }
}
