//! A real readstates server in this process, on a loopback port, over an
//! embedded store in a temporary directory, with the cluster off (as the
//! service's own tests start one); it can be stopped and started again on
//! the same address and store.

use readstates::config::Config;
use readstates::server::{self, Running};
use readstates_client::ReadStatesClient;
use tempfile::TempDir;

/// A running server and the directory of its store.
pub struct Service {
    pub running: Running,
    /// The configuration it was started with (a restart binds its address).
    config: Config,
    /// Removed when the service is dropped, after the server stopped.
    _dir: TempDir,
}

/// A server stopped gracefully, and the directory of its store, to start
/// it again on the same address and store.
pub struct Stopped {
    config: Config,
    dir: TempDir,
}

impl Stopped {
    /// Starts the server again, on its address, over its store.
    pub async fn start(self) -> Service {
        let store = server::open_store(&self.config).await.unwrap();
        let running = server::start(&self.config, store).await.unwrap();
        Service {
            running,
            config: self.config,
            _dir: self.dir,
        }
    }
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
        Self {
            running,
            config,
            _dir: dir,
        }
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

    /// Shuts the server down gracefully, keeping its store and address.
    pub async fn stop(self) -> Stopped {
        let mut config = self.config;
        config.server.listen_addr = self.running.addr;
        self.running.shutdown().await.unwrap();
        Stopped {
            config,
            dir: self._dir,
        }
    }

    /// Returns the value of the gauge or counter `name` (unlabelled).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.running.metrics.render();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}
