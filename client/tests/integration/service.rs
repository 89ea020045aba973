//! A real readstates server in this process, on a loopback port, over an
//! embedded store in a temporary directory, with the cluster off (as the
//! service's own tests start one).

use readstates::config::Config;
use readstates::server::{self, Running};
use readstates_client::ReadStatesClient;
use tempfile::TempDir;

/// A running server and the directory of its store.
pub struct Service {
    pub running: Running,
    /// Removed when the service is dropped, after the server stopped.
    _dir: TempDir,
}

impl Service {
    /// Starts a server with the test defaults.
    pub async fn start() -> Self {
        Self::start_with(|_, _| {}).await
    }

    /// Starts a server with the test defaults changed by `configure`
    /// (given the config and the temporary directory).
    pub async fn start_with(configure: impl FnOnce(&mut Config, &std::path::Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.listen_addr = "127.0.0.1:0".parse().unwrap();
        config.metrics.listen_addr = "127.0.0.1:0".parse().unwrap();
        config.store.data_dir = dir.path().join("data");
        config.cache.partitions = 4;
        configure(&mut config, dir.path());
        let store = server::open_store(&config).await.unwrap();
        let running = server::start(&config, store).await.unwrap();
        Self { running, _dir: dir }
    }

    /// Returns its `host:port`.
    pub fn address(&self) -> String {
        self.running.addr.to_string()
    }

    /// Returns a client of this server alone, with the default settings.
    pub async fn client(&self) -> ReadStatesClient {
        ReadStatesClient::builder()
            .addresses([self.address()])
            .connect()
            .await
            .unwrap()
    }

    /// Shuts the server down gracefully.
    pub async fn shutdown(self) {
        self.running.shutdown().await.unwrap();
    }
}
