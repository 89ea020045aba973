//! The cluster the Scylla store tests run against: `READSTATES_TEST_SCYLLA`
//! names its contact points (`READSTATES_TEST_SCYLLA_DC` its datacenter,
//! default `datacenter1`). Without it a test prints why it was skipped and
//! passes. Each test works in a keyspace of its own,
//! `readstates_test_<random>`, dropped when the test passes.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use readstates::config::ScyllaConfig;
use readstates::store::ScyllaStore;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

const SKIPPED: &str = "skipped: set READSTATES_TEST_SCYLLA=host:port to run against a cluster";

/// The cluster under test, and an admin session on it.
pub struct Cluster {
    pub contact_points: Vec<String>,
    pub datacenter: String,
    pub admin: Session,
}

impl Cluster {
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

    pub async fn drop_keyspace(&self, settings: &ScyllaConfig) {
        self.query(format!("DROP KEYSPACE IF EXISTS {}", settings.keyspace))
            .await;
    }
}
