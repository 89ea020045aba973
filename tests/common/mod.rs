//! Shared harness of the integration tests: a real server on 127.0.0.1:0
//! over a real embedded store in a temporary directory, a gRPC client, and a
//! store wrapper that counts writes and can simulate an outage; `faults`
//! has a store whose operations fail, slow down or hang on demand;
//! `contract` has the store contract every backend is checked against;
//! `watch` follows users over a change stream and checks what it sends.
#![allow(dead_code)]

pub mod binary;
pub mod cluster;
pub mod contract;
pub mod faults;
pub mod routing;
pub mod watch;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use readstates::api::proto::AckRequest;
use readstates::api::proto::read_states_client::ReadStatesClient;
use readstates::config::Config;
use readstates::ids::UserId;
use readstates::read_state::ReadState;
use readstates::server::{self, Running};
use readstates::store::{
    EmbeddedStore, LoadPriority, Operation, Store, StoreError, StoreFuture, StoreLayer,
};
use tonic::transport::Channel;

pub type Client = ReadStatesClient<Channel>;

/// A config for tests: loopback on an ephemeral port, data in `data_dir`.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.listen_addr = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen_addr = "127.0.0.1:0".parse().unwrap();
    config.store.data_dir = data_dir.to_owned();
    config.cache.partitions = 8;
    config
}

/// Wraps the embedded store: counts rows written and batches, and fails
/// every operation while `down` is set.
pub struct InstrumentedStore {
    pub inner: EmbeddedStore,
    pub rows_written: AtomicUsize,
    pub batches_written: AtomicUsize,
    pub loads: AtomicUsize,
    pub down: AtomicBool,
    /// Extra time each batch write takes, in ms.
    pub write_delay_ms: AtomicU64,
    /// Extra time each user load takes, in ms.
    pub load_delay_ms: AtomicU64,
}

impl InstrumentedStore {
    pub fn open(data_dir: &Path) -> Arc<Self> {
        Arc::new(Self {
            inner: EmbeddedStore::open(data_dir).unwrap(),
            rows_written: AtomicUsize::new(0),
            batches_written: AtomicUsize::new(0),
            loads: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            write_delay_ms: AtomicU64::new(0),
            load_delay_ms: AtomicU64::new(0),
        })
    }

    pub fn rows_written(&self) -> usize {
        self.rows_written.load(Ordering::SeqCst)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("simulated outage".to_owned()))
        } else {
            Ok(())
        }
    }
}

impl StoreLayer for InstrumentedStore {
    fn inner(&self) -> &dyn Store {
        &self.inner
    }

    fn backend_name(&self) -> &'static str {
        "instrumented-embedded"
    }

    fn around<'a, T: Send + 'a>(
        &'a self,
        operation: Operation,
        call: impl FnOnce(&'a dyn Store) -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move {
            self.check()?;
            let delay = match operation {
                Operation::LoadUser { .. } => {
                    self.loads.fetch_add(1, Ordering::SeqCst);
                    self.load_delay_ms.load(Ordering::SeqCst)
                }
                Operation::WriteBatch { .. } => self.write_delay_ms.load(Ordering::SeqCst),
                _ => 0,
            };
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let result = call(&self.inner).await;
            if let (Operation::WriteBatch { rows }, Ok(_)) = (operation, &result) {
                self.rows_written.fetch_add(rows, Ordering::SeqCst);
                self.batches_written.fetch_add(1, Ordering::SeqCst);
            }
            result
        })
    }
}

/// A server under test and a client connected to it.
pub struct TestServer {
    pub running: Running,
    pub client: Client,
}

impl TestServer {
    pub async fn start(config: &Config, store: Arc<dyn Store>) -> Self {
        let running = server::start(config, store).await.unwrap();
        let client = connect(running.addr).await;
        Self { running, client }
    }

    pub async fn shutdown(self) {
        drop(self.client);
        self.running.shutdown().await.unwrap();
    }
}

pub async fn connect(addr: std::net::SocketAddr) -> Client {
    ReadStatesClient::new(channel(addr).await)
}

/// A channel to the server at `addr`, for any of its services (retried
/// while the server starts).
pub async fn channel(addr: std::net::SocketAddr) -> Channel {
    let endpoint = format!("http://{addr}");
    for _ in 0..100 {
        if let Ok(channel) = Channel::from_shared(endpoint.clone())
            .expect("a valid endpoint")
            .connect()
            .await
        {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot connect to {endpoint}");
}

/// Returns how many spill files (`spill-*.bin`) are in `dir`: beside them
/// a clean stop leaves its mark.
pub fn spill_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("spill-") && name.ends_with(".bin")
        })
        .count()
}

/// Reads every live row of a user straight from the store.
pub async fn stored(store: &dyn Store, user: u64) -> Vec<ReadState> {
    store
        .load_user(UserId::new(user).unwrap(), LoadPriority::Urgent)
        .await
        .unwrap()
        .states
}

/// Polls `condition` every 20 ms for up to `limit`.
pub async fn eventually(limit: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fetches `http://{addr}{path}` with a plain HTTP/1.1 GET; returns the
/// status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Returns the value of the sample whose line starts with `series ` (name
/// and labels exactly as rendered).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A plain (not manual) Ack request.
pub fn ack_request(user_id: u64, channel_id: u64, message_id: u64) -> AckRequest {
    AckRequest {
        user_id,
        channel_id,
        message_id,
        manual: false,
        mention_count: None,
    }
}

/// Reads one state over gRPC.
pub async fn get(c: &mut Client, user: u64, channel: u64) -> readstates::api::proto::ReadState {
    c.get_read_state(readstates::api::proto::GetReadStateRequest {
        user_id: user,
        channel_id: channel,
    })
    .await
    .unwrap()
    .into_inner()
    .read_state
    .unwrap()
}
