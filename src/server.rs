//! Wiring: opens the store, builds the cache and the flusher, serves the
//! gRPC API with health checking and reflection, and shuts down in order:
//! stop accepting, finish calls in flight, flush every dirty state, sync.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::api::{ReadStatesService, proto};
use crate::cache::{Cache, CacheSettings};
use crate::clock::{VERSION_LEASE_MICROS, unix_micros};
use crate::config::{Config, StoreBackend};
use crate::flush::{FlushSettings, Flusher};
use crate::store::{EmbeddedStore, Store};

/// Opens the store the configuration names.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match config.store.backend {
        StoreBackend::Embedded => {
            let store = EmbeddedStore::open(&config.store.data_dir).with_context(|| {
                format!(
                    "opening the embedded store in {}",
                    config.store.data_dir.display()
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
    /// The cache, for inspection.
    pub cache: Arc<Cache>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Shuts down gracefully and waits until every dirty state is written.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("server task failed")?
    }

    /// Returns a token that starts the shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for the server to stop (after its shutdown token is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task failed")?
    }
}

/// Starts serving `config` over `store`.
pub async fn start(config: &Config, store: Arc<dyn Store>) -> anyhow::Result<Running> {
    let floor = store
        .load_version_floor()
        .await
        .context("reading the version floor from the store")?;
    let lease = floor
        .max(unix_micros())
        .saturating_add(VERSION_LEASE_MICROS);
    store
        .record_version_floor(lease)
        .await
        .context("recording the version lease in the store")?;

    let cache = Arc::new(Cache::new(
        &CacheSettings {
            capacity: config.cache.capacity,
            partitions: config.cache.partitions,
            max_tracked_mentions: config.cache.max_tracked_mentions,
            max_dirty_states: config.flush.max_dirty_states,
            flush_delay: config.flush.delay(),
            flush_tick: config.flush.tick(),
        },
        floor,
    ));
    let flusher = Flusher::new(
        Arc::clone(&cache),
        Arc::clone(&store),
        FlushSettings {
            tick: config.flush.tick(),
            concurrency: config.flush.concurrency,
            batch_size: config.flush.batch_size,
            retry_initial: Duration::from_millis(config.flush.retry_initial_ms),
            retry_max: Duration::from_millis(config.flush.retry_max_ms),
        },
        lease,
    );

    let listener = TcpListener::bind(config.server.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.server.listen_addr))?;
    let addr = listener.local_addr()?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::read_states_server::ReadStatesServer<ReadStatesService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let service = ReadStatesService::new(
        Arc::clone(&cache),
        Arc::clone(&store),
        config.limits.clone(),
    );

    let shutdown = CancellationToken::new();
    let flush_shutdown = CancellationToken::new();
    let flusher_task = tokio::spawn(flusher.run(flush_shutdown.clone()));
    let router = tonic::transport::Server::builder()
        .timeout(Duration::from_millis(config.server.request_timeout_ms))
        .concurrency_limit_per_connection(config.server.max_concurrent_requests_per_connection)
        .load_shed(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(proto::read_states_server::ReadStatesServer::new(service));

    let serve_shutdown = shutdown.clone();
    let drain_timeout = Duration::from_millis(config.server.drain_timeout_ms);
    let task = tokio::spawn(async move {
        let stopping = async {
            serve_shutdown.cancelled().await;
            tracing::info!("shutting down: finishing calls in flight");
            health_reporter
                .set_not_serving::<proto::read_states_server::ReadStatesServer<ReadStatesService>>()
                .await;
        };
        let serve = router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopping);
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
        tracing::info!("calls finished: flushing dirty read states");
        flush_shutdown.cancel();
        let flushed = flusher_task.await.context("flusher task failed")?;
        served?;
        flushed.context("final flush failed")?;
        tracing::info!("shutdown complete");
        Ok(())
    });
    tracing::info!(grpc_addr = %addr, store = store.backend(), "readstates listening");
    Ok(Running {
        addr,
        cache,
        shutdown,
        task,
    })
}
