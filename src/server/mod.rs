//! Wiring: opens the store, builds the engine, joins the cluster, serves
//! the gRPC port (`grpc`, with health and reflection from `probes`) and
//! `/metrics`, applies configuration changes on a running server, and shuts
//! down in order: stop accepting, finish calls in flight, write every dirty
//! state (or spill it), release the slots, stop `/metrics`.

mod grpc;
mod probes;

pub use probes::STORE_HEALTH;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{Forwarding, ReadStatesService, Watching};
use crate::auth::{AuthError, Security};
use crate::cache::{Cache, ChangeHook};
use crate::cluster::{Cluster, ClusterMetrics, Forwards, Handoff, Ownership};
use crate::config::{Config, StoreBackend};
use crate::connections::{
    Acceptor, ConnectionMetrics, ConnectionTable, ListenerPort, open_files_limit, port_limits,
};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::overload::{QueueDelay, queue_delay_gauge};
use crate::scrape::serve_metrics;
use crate::store::{EmbeddedOptions, EmbeddedStore, ScyllaStore, Store};
use crate::watch::{WatchMetrics, Watchers};

use grpc::{GrpcPort, serve_grpc};

/// Opens the store the configuration names.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match config.store.backend {
        StoreBackend::Embedded => {
            let options = EmbeddedOptions::of(&config.store);
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
            log_change("cache capacity", old.cache_capacity, cache_capacity);
            self.cache.set_capacity(cache_capacity);
        }
        if flush_delay_ms != old.flush_delay_ms {
            log_change(
                "flush delay (ms)",
                old.flush_delay_ms as usize,
                flush_delay_ms as usize,
            );
            self.cache.set_flush_delay(new.flush.delay());
        }
        if max_dirty_states != old.max_dirty_states {
            log_change(
                "dirty backlog limit",
                old.max_dirty_states,
                max_dirty_states,
            );
            self.cache.set_max_dirty_states(max_dirty_states);
        }
        if batch_size != old.batch_size {
            log_change("flush batch size", old.batch_size, batch_size);
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
    let metrics = Metrics::new();
    // First, so that a missing or bad file stops the start before the
    // store is touched.
    let security = Arc::new(
        Security::from_config(config, &metrics)
            .await
            .context("setting up TLS and authentication")?,
    );
    let engine = Engine::open(config, store, &metrics).await?;
    let cache = Arc::clone(engine.cache());
    // After the store: its schema check has passed, so the cluster tables
    // exist. With `cluster.enabled = false` nothing of the cluster runs.
    // The cluster's metrics read 0 without a cluster.
    let cluster_metrics = ClusterMetrics::register(&metrics);
    let forwards = Forwards::register(&metrics);
    let (cluster, forwarding) = if config.cluster.enabled {
        let (cluster, forwarding) =
            join_cluster(config, &engine, cluster_metrics, forwards).await?;
        (Some(cluster), Some(forwarding))
    } else {
        (None, None)
    };
    let ownership = cluster.as_ref().map(Cluster::ownership);

    let listener = TcpListener::bind(config.server.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.server.listen_addr))?;
    let addr = listener.local_addr()?;
    let (grpc_limits, metrics_limits) = port_limits(config, open_files_limit());
    let shutdown = CancellationToken::new();
    let metrics_shutdown = CancellationToken::new();
    let connection_metrics = ConnectionMetrics::register(&metrics);
    let (metrics_addr, metrics_task) = if config.metrics.enabled {
        let (addr, task) = start_scrape(
            config,
            &metrics,
            &connection_metrics,
            metrics_limits,
            metrics_shutdown.clone(),
        )
        .await?;
        (Some(addr), Some(task))
    } else {
        (None, None)
    };

    let mut service = ReadStatesService::new(Arc::clone(&engine), config.limits.clone(), &metrics);
    // Change streams: the registry of subscriptions hears every change the
    // engine applies, and streams end when the server starts shutting down.
    let watchers = Watchers::new(WatchMetrics::register(&metrics));
    engine.set_change_hook(Arc::clone(&watchers) as Arc<dyn ChangeHook>);
    service = service.with_watching(Watching {
        watchers,
        settings: config.watch.clone(),
        shutdown: shutdown.clone(),
    });
    let probe_stop = CancellationToken::new();
    if let Some(forwarding) = forwarding {
        service = service.with_forwarding(forwarding);
    }
    let queue_delay = queue_delay_gauge(&metrics);
    if config.limits.max_queue_delay_ms > 0 {
        let probe = QueueDelay::spawn(queue_delay, probe_stop.clone());
        service = service.with_queue_delay(probe);
    }

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
    let grpc_connections = connection_metrics.port(ListenerPort::Grpc);
    let connection_table = Arc::new(ConnectionTable::new(grpc_limits, grpc_connections.clone()));
    let acceptor = Acceptor::new(
        listener,
        Arc::clone(&connection_table),
        grpc_connections,
        ListenerPort::Grpc.name(),
    );
    let port = GrpcPort {
        service,
        security: Arc::clone(&security),
        acceptor,
        connections: connection_table,
        write_failing: engine.write_failing(),
        handshake_failures: connection_metrics.tls_handshake_failures.clone(),
    };
    let (task_engine, task_force, task_config) =
        (Arc::clone(&engine), force.clone(), config.clone());
    let serve_shutdown = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = serve_grpc(&task_config, port, serve_shutdown).await;
        tracing::info!("calls finished: flushing dirty read states");
        let flushed = background.stop(&task_engine, &task_force).await;
        deadline.abort();
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

/// Joins the cluster of instances as a serving member (the engine serves
/// only the users of the slots held here, and writes a slot's users out
/// before its lease goes), and sets up forwarding to the other members.
async fn join_cluster(
    config: &Config,
    engine: &Arc<Engine>,
    cluster_metrics: ClusterMetrics,
    forwards: Arc<Forwards>,
) -> anyhow::Result<(Cluster, Forwarding)> {
    let handoff = Handoff {
        engine: Arc::clone(engine),
        timeout: config.cluster.handoff_timeout(),
    };
    let cluster = Cluster::start_serving(&config.scylla, &config.cluster, cluster_metrics, handoff)
        .await
        .context("joining the cluster of instances")?;
    let forwarding = Forwarding::new(&cluster, &config.cluster, forwards)
        .await
        .context("setting up forwarding to the other instances")?;
    Ok((cluster, forwarding))
}

/// Binds the `/metrics` port and serves it until `stop` is cancelled;
/// returns its address and the serving task.
async fn start_scrape(
    config: &Config,
    metrics: &Arc<Metrics>,
    connections: &ConnectionMetrics,
    limits: crate::connections::ConnectionLimits,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(config.metrics.listen_addr)
        .await
        .with_context(|| format!("binding the metrics address {}", config.metrics.listen_addr))?;
    let addr = listener.local_addr()?;
    let port = connections.port(ListenerPort::Metrics);
    let task = tokio::spawn(serve_metrics(
        listener,
        Arc::clone(metrics),
        port,
        limits,
        stop,
    ));
    Ok((addr, task))
}

/// Logs a live setting's change on a running server.
fn log_change(setting: &'static str, old: usize, new: usize) {
    tracing::info!(setting, old, new, "live setting changed");
}
