//! The `[scylla]` section: the ScyllaDB / Cassandra store's contact points,
//! consistency, retries, authentication and TLS, with their checks.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Check, ConfigError, first_failure};

/// The ScyllaDB / Cassandra store, used when `store.backend = "scylla"`.
/// The schema is created by `readstates migrate` (see `store::scylla::migrate`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Nodes contacted first (`host:port`); the driver discovers the rest.
    /// An environment override may list them separated by commas.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub contact_points: Vec<String>,
    /// The datacenter requests go to (DC-aware, token- and shard-aware
    /// routing; other datacenters are never used).
    pub local_datacenter: String,
    /// Keyspace of the tables; created by the first migration.
    pub keyspace: String,
    /// CQL replication map of the keyspace, used only when a migration
    /// creates it.
    pub replication: String,
    /// Consistency of reads (a user's states, the version floor, the
    /// applied migrations).
    pub read_consistency: Consistency,
    /// Consistency of writes.
    pub write_consistency: Consistency,
    /// Client-side timeout of one request, retries included.
    pub request_timeout_ms: u64,
    /// Timeout of opening one connection.
    pub connect_timeout_ms: u64,
    /// Rows per page when loading a user's states.
    pub page_size: u32,
    /// Write requests (single-user batches) in flight at once, across all
    /// flushes.
    pub max_in_flight: usize,
    /// What the driver does when a request fails.
    pub retry_policy: RetryPolicyKind,
    /// Whether to send a request to another replica when the first one is
    /// slow (all our statements are idempotent).
    pub speculative_execution: SpeculativeExecution,
    /// With `speculative_execution = "constant"`: wait this long before each
    /// extra attempt.
    pub speculative_delay_ms: u64,
    /// With `speculative_execution = "constant"`: extra attempts at most.
    pub speculative_max_attempts: u32,
    /// Apply pending migrations when the server starts (one instance at a
    /// time: concurrent schema changes can conflict).
    pub migrate_on_start: bool,
    /// Plain-text authentication; unset means none.
    pub username: Option<String>,
    /// Password of `username`; prefer `READSTATES_SCYLLA_PASSWORD` to the file.
    pub password: Option<Secret>,
    /// Connect over TLS.
    pub tls: bool,
    /// PEM file of the CA certificates that sign the nodes' certificates.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM files of a client certificate and its key (mutual TLS).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Check that a node's certificate names the node's IP address (the
    /// driver connects by IP); the chain is always verified.
    pub tls_verify_hostname: bool,
}

/// A CQL consistency level, written like `LOCAL_QUORUM` or `local_quorum`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum Consistency {
    Any,
    One,
    Two,
    Three,
    Quorum,
    All,
    LocalQuorum,
    EachQuorum,
    LocalOne,
}

impl TryFrom<String> for Consistency {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Ok(match name.to_ascii_uppercase().as_str() {
            "ANY" => Self::Any,
            "ONE" => Self::One,
            "TWO" => Self::Two,
            "THREE" => Self::Three,
            "QUORUM" => Self::Quorum,
            "ALL" => Self::All,
            "LOCAL_QUORUM" => Self::LocalQuorum,
            "EACH_QUORUM" => Self::EachQuorum,
            "LOCAL_ONE" => Self::LocalOne,
            _ => {
                return Err(format!(
                    "unknown consistency {name:?}; expected one of ANY, ONE, TWO, THREE, \
                     QUORUM, ALL, LOCAL_QUORUM, EACH_QUORUM, LOCAL_ONE"
                ));
            }
        })
    }
}

/// The driver's retry policy.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RetryPolicyKind {
    /// Retries when a retry is likely to help (timeouts, unavailable, an
    /// overloaded or bootstrapping node: on the next node).
    Default,
    /// Never retries in the driver: the flusher's own backoff retries writes,
    /// and a failed load becomes `UNAVAILABLE` at once.
    Fallthrough,
}

/// Speculative execution.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SpeculativeExecution {
    Off,
    /// Up to `speculative_max_attempts` extra attempts, each
    /// `speculative_delay_ms` after the previous one.
    Constant,
}

/// A secret string: compared and deserialized like a string, never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// Returns the secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".to_owned()],
            local_datacenter: "datacenter1".to_owned(),
            keyspace: "readstates".to_owned(),
            replication: "{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}".to_owned(),
            read_consistency: Consistency::LocalQuorum,
            write_consistency: Consistency::LocalQuorum,
            request_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            page_size: 1_000,
            max_in_flight: 256,
            retry_policy: RetryPolicyKind::Default,
            speculative_execution: SpeculativeExecution::Off,
            speculative_delay_ms: 50,
            speculative_max_attempts: 1,
            migrate_on_start: false,
            username: None,
            password: None,
            tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_verify_hostname: true,
        }
    }
}

impl ScyllaConfig {
    /// Checks the ranges serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let replication = self.replication.trim();
        let checks: [Check; 14] = [
            (
                self.contact_points.is_empty()
                    || self
                        .contact_points
                        .iter()
                        .any(|point| point.trim().is_empty()),
                "scylla.contact_points",
                "must list at least one host:port, none empty",
            ),
            (
                self.local_datacenter.trim().is_empty(),
                "scylla.local_datacenter",
                "must name the datacenter of this service's nodes",
            ),
            (
                !is_cql_identifier(&self.keyspace),
                "scylla.keyspace",
                "must be 1 to 48 lowercase letters, digits or underscores, starting with a letter",
            ),
            (
                !(replication.starts_with('{')
                    && replication.ends_with('}')
                    && replication.contains("'class'")
                    && !replication.contains(';')),
                "scylla.replication",
                "must be a CQL map such as {'class': 'NetworkTopologyStrategy', 'datacenter1': 3}",
            ),
            (
                self.read_consistency == Consistency::Any,
                "scylla.read_consistency",
                "cannot be ANY, which only writes accept",
            ),
            at_least!(self.request_timeout_ms, 1, "scylla.request_timeout_ms"),
            at_least!(self.connect_timeout_ms, 1, "scylla.connect_timeout_ms"),
            (
                self.page_size == 0 || self.page_size > i32::MAX as u32,
                "scylla.page_size",
                "must be between 1 and 2147483647",
            ),
            at_least!(self.max_in_flight, 1, "scylla.max_in_flight"),
            (
                self.speculative_execution == SpeculativeExecution::Constant
                    && (self.speculative_delay_ms == 0 || self.speculative_max_attempts == 0),
                "scylla.speculative_delay_ms",
                "and scylla.speculative_max_attempts must be at least 1 with constant speculative execution",
            ),
            (
                self.username.is_some() != self.password.is_some(),
                "scylla.password",
                "and scylla.username must be set together (READSTATES_SCYLLA_PASSWORD keeps the password out of the file)",
            ),
            (
                self.tls_cert_file.is_some() != self.tls_key_file.is_some(),
                "scylla.tls_cert_file",
                "and scylla.tls_key_file must be set together",
            ),
            (
                !self.tls
                    && (self.tls_ca_file.is_some()
                        || self.tls_cert_file.is_some()
                        || self.tls_key_file.is_some()),
                "scylla.tls",
                "must be true when TLS files are configured",
            ),
            (
                self.tls && self.tls_ca_file.is_none(),
                "scylla.tls_ca_file",
                "must name the PEM file of the CA that signs the nodes' certificates when scylla.tls is true",
            ),
        ];
        first_failure(checks)
    }
}

/// Returns whether `name` is a safe unquoted CQL identifier for a keyspace:
/// it is spliced into statement text, so nothing else may pass.
pub fn is_cql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= 48
        && first.is_ascii_lowercase()
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

millis_accessors!(ScyllaConfig {
    /// Returns the request timeout.
    request_timeout => request_timeout_ms;
    /// Returns the connection timeout.
    connect_timeout => connect_timeout_ms;
});

/// Accepts a TOML list of strings, or one string of comma-separated items
/// (how an environment override spells a list).
pub(super) fn list_or_comma_separated<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct ListVisitor;

    impl<'de> serde::de::Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a list of strings, or one comma-separated string")
        }

        fn visit_str<E: serde::de::Error>(self, items: &str) -> Result<Self::Value, E> {
            Ok(items
                .split(',')
                .map(|item| item.trim().to_owned())
                .filter(|item| !item.is_empty())
                .collect())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_any(ListVisitor)
}
