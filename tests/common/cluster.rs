//! The cluster the Scylla store tests run against: `READSTATES_TEST_SCYLLA`
//! names its contact points (`READSTATES_TEST_SCYLLA_DC` its datacenter,
//! default `datacenter1`). Without it a test prints why it was skipped and
//! passes. Each test works in a keyspace of its own,
//! `readstates_test_<random>`, dropped when the test passes. [`Proxy`] and
//! [`ThroughProxy`] cut a session off the cluster (single-node clusters).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use readstates::config::ScyllaConfig;
use readstates::ids::{ChannelId, MessageId, UserId};
use readstates::read_state::ReadState;
use readstates::store::{RowWrite, ScyllaStore, Store};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::TranslationError;
use scylla::policies::address_translator::{AddressTranslator, UntranslatedPeer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SKIPPED: &str = "skipped: set READSTATES_TEST_SCYLLA=host:port to run against a cluster";

/// The cluster under test, and an admin session on it.
pub struct Cluster {
    pub contact_points: Vec<String>,
    pub datacenter: String,
    pub admin: Session,
}

impl Cluster {
    /// Returns whether the cluster has one node, as the proxy tests need;
    /// otherwise says that `test` is skipped.
    pub fn single_node(&self, test: &str) -> bool {
        let nodes = self.admin.get_cluster_state().get_nodes_info().len();
        if nodes != 1 {
            eprintln!("{test}: skipped: needs a single-node cluster, this one has {nodes} nodes");
        }
        nodes == 1
    }

    /// Connects to the cluster `READSTATES_TEST_SCYLLA` names, or prints why
    /// `test` is skipped and returns `None`.
    pub async fn from_env(test: &str) -> Option<Self> {
        let contact_points: Vec<String> = std::env::var("READSTATES_TEST_SCYLLA")
            .unwrap_or_default()
            .split(',')
            .map(|point| point.trim().to_owned())
            .filter(|point| !point.is_empty())
            .collect();
        if contact_points.is_empty() {
            // Straight to stderr: the harness hides a passing test's print!s.
            let suite = env!("CARGO_CRATE_NAME");
            let _ = writeln!(std::io::stderr(), "{suite}::{test}: {SKIPPED}");
            return None;
        }
        let datacenter =
            std::env::var("READSTATES_TEST_SCYLLA_DC").unwrap_or_else(|_| "datacenter1".to_owned());
        let admin = SessionBuilder::new()
            .known_nodes(&contact_points)
            .build()
            .await
            .unwrap_or_else(|error| {
                panic!("READSTATES_TEST_SCYLLA={contact_points:?} is unreachable: {error}")
            });
        Some(Self {
            contact_points,
            datacenter,
            admin,
        })
    }

    /// Settings for a new keyspace of its own (not yet migrated).
    pub fn settings(&self) -> ScyllaConfig {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = readstates::clock::unix_micros()
            ^ (u64::from(std::process::id()) << 40)
            ^ NEXT.fetch_add(1, Ordering::Relaxed);
        ScyllaConfig {
            contact_points: self.contact_points.clone(),
            local_datacenter: self.datacenter.clone(),
            keyspace: format!("readstates_test_{unique:x}"),
            replication: format!(
                "{{'class': 'NetworkTopologyStrategy', '{}': 1}}",
                self.datacenter
            ),
            request_timeout_ms: 10_000,
            ..ScyllaConfig::default()
        }
    }

    /// Settings for a new, migrated keyspace.
    pub async fn migrated(&self) -> ScyllaConfig {
        let settings = self.settings();
        ScyllaStore::migrate(&settings).await.unwrap();
        settings
    }

    pub async fn query(&self, cql: String) {
        self.admin
            .query_unpaged(cql.as_str(), &[])
            .await
            .unwrap_or_else(|error| panic!("{cql}: {error}"));
    }

    /// Returns each slot's holder in the lease table of `settings`'
    /// keyspace.
    pub async fn lease_holders(&self, settings: &ScyllaConfig) -> BTreeMap<u32, String> {
        let cql = format!("SELECT slot, owner FROM {}.slot_leases", settings.keyspace);
        let result = self.admin.query_unpaged(cql, &[]).await.unwrap();
        let rows = result.into_rows_result().unwrap();
        rows.rows::<(i32, Option<String>)>()
            .unwrap()
            .filter_map(|row| {
                let (slot, owner) = row.unwrap();
                Some((u32::try_from(slot).unwrap(), owner?))
            })
            .collect()
    }

    pub async fn drop_keyspace(&self, settings: &ScyllaConfig) {
        self.query(format!("DROP KEYSPACE IF EXISTS {}", settings.keyspace))
            .await;
    }
}

/// Forwards TCP connections to the cluster until cut; while cut, it closes
/// every connection, new or open. While hung, it keeps every connection
/// open and passes no byte either way, as a node that stopped (SIGSTOP)
/// does; new connections are accepted and held.
pub struct Proxy {
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    hung: watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, _) = watch::channel(true);
        let state = up.clone();
        let (hung, _) = watch::channel(false);
        let hang = hung.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*state.borrow() {
                    continue; // dropped: closed at once
                }
                let upstream = upstream.clone();
                let mut watch_state = state.subscribe();
                let hang = hang.clone();
                tokio::spawn(async move {
                    let _ = hang.subscribe().wait_for(|hung| !*hung).await;
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        () = pump(client_read, server_write, hang.subscribe()) => {}
                        () = pump(server_read, client_write, hang.subscribe()) => {}
                        _ = watch_state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up, hung }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    pub fn set_hung(&self, hung: bool) {
        self.hung.send_replace(hung);
    }

    /// Starts a proxy to the cluster's first node, and returns it with
    /// `settings` pointed through it, with short timeouts so that a cut or
    /// hung proxy shows at once.
    pub async fn to_node(cluster: &Cluster, settings: &ScyllaConfig) -> (Self, ScyllaConfig) {
        let proxy = Self::start(cluster.contact_points[0].clone()).await;
        let proxied = ScyllaConfig {
            contact_points: vec![proxy.addr.to_string()],
            request_timeout_ms: 1_000,
            connect_timeout_ms: 1_000,
            ..settings.clone()
        };
        (proxy, proxied)
    }

    /// Sends a driver session's every connection through this proxy
    /// (shard-aware connections would go to the node's own port, around it).
    pub fn route(&self, builder: SessionBuilder) -> SessionBuilder {
        builder
            .disallow_shard_aware_port(true)
            .address_translator(Arc::new(ThroughProxy(self.addr)))
    }
}

/// Copies bytes one way, holding them while the proxy is hung.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hung: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0; 16 * 1024];
    loop {
        if hung.wait_for(|hung| !*hung).await.is_err() {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if hung.wait_for(|hung| !*hung).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Sends every connection to the proxy. The driver dials a node at the
/// address the node advertises (its `rpc_address` in `system.local`, with
/// the contact point's port), not at the contact point: without this it
/// would reach the proxy only where that address is 127.0.0.1, and fail
/// with "No connections in the pool" elsewhere (a container, a remote
/// node). With a single node, every node is the proxied one.
pub struct ThroughProxy(pub SocketAddr);

#[async_trait::async_trait]
impl AddressTranslator for ThroughProxy {
    async fn translate_address(
        &self,
        _untranslated_peer: &UntranslatedPeer,
    ) -> Result<SocketAddr, TranslationError> {
        Ok(self.0)
    }
}

/// A state of `channel` read up to `last`, at `version`.
pub fn state(channel: u64, last: u64, version: u64) -> ReadState {
    ReadState {
        last_message_id: MessageId::new(last).unwrap(),
        version,
        ..ReadState::empty(ChannelId::new(channel).unwrap())
    }
}

/// A row write of `user_id`'s `state` (a deletion if `deleted`).
pub fn write(user_id: u64, state: ReadState, deleted: bool) -> RowWrite {
    RowWrite {
        user_id: UserId::new(user_id).unwrap(),
        state,
        deleted,
    }
}

/// Writes `rows` to `store` as one batch.
pub async fn put(store: &dyn Store, rows: Vec<RowWrite>) {
    store.write_batch(Arc::from(rows)).await.unwrap();
}
