//! The `[cluster]` section: running several instances over one
//! ScyllaDB/Cassandra keyspace, each user served by exactly one of them
//! (see `cluster`). Off by default; with it off nothing else changes.

use std::path::PathBuf;

use serde::Deserialize;

use super::auth::TlsConfig;
use super::{Check, ConfigError, first_failure};

/// The most slots a keyspace may be divided into (`cluster.slots`). Every
/// instance keeps a serving deadline per slot and, each heartbeat round,
/// places every slot by hashing it against every member: the bound keeps
/// that work small, while leaving far more slots than a cluster has
/// instances, so that they spread evenly.
pub const MAX_SLOTS: u32 = 65_536;

/// Scale-out over one keyspace.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Join the cluster of instances sharing `scylla.keyspace` (needs
    /// `store.backend = "scylla"`).
    pub enabled: bool,
    /// This instance's name, unique among the instances of the keyspace and
    /// stable across its restarts (a host or pod name).
    pub instance_id: String,
    /// `host:port` at which the other instances reach this one's gRPC API.
    pub advertise_addr: String,
    /// Slots users are divided into: fixed for a keyspace (the first
    /// instance records it; one configured otherwise refuses to start).
    pub slots: u32,
    /// How long a slot lease lasts unless renewed; whole seconds, since the
    /// cluster's TTLs count seconds.
    pub lease_ms: u64,
    /// How much sooner than its lease an instance stops serving a slot: at
    /// least 1000 (a TTL written at time t expires at the whole second
    /// floor(t) + TTL, up to a second early), plus the largest clock skew
    /// between the cluster's nodes.
    pub safety_margin_ms: u64,
    /// How often the instance writes its heartbeat, reads the members and
    /// acquires, renews and releases its slots.
    pub heartbeat_ms: u64,
    /// How long a slot's handoff may take (its dirty users written before
    /// its lease is released); past it the lease is kept until it runs out,
    /// and the users are written by the write-behind. At most
    /// `(lease_ms - safety_margin_ms) / 2 - heartbeat_ms`, so the other
    /// slots' renewals, made in the same round, are never late.
    pub handoff_timeout_ms: u64,
    /// How long a call forwarded to its slot's owner may take when its
    /// caller set no deadline (`grpc-timeout`); with one, the caller's
    /// remaining time bounds it instead.
    pub forward_timeout_ms: u64,
    /// PEM file of the CA certificates that sign the other instances'
    /// server certificates: forwarded calls go over TLS when set, and it
    /// must be set when `[tls]` is on.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate chain this instance presents to
    /// the others (with `tls_key_file`); needed when `tls.client_ca_file`
    /// asks callers for certificates. Its name must be in
    /// `auth.allowed_callers`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of that client certificate's private key.
    pub tls_key_file: Option<PathBuf>,
    /// The name the other instances' certificates are checked against,
    /// when it is not the host of their `advertise_addr` (one certificate
    /// shared by every instance, say).
    pub tls_server_name: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            instance_id: String::new(),
            advertise_addr: String::new(),
            slots: 1024,
            lease_ms: 10_000,
            safety_margin_ms: 2_000,
            heartbeat_ms: 1_000,
            handoff_timeout_ms: 2_000,
            forward_timeout_ms: 5_000,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_server_name: None,
        }
    }
}

impl ClusterConfig {
    /// Checks the ranges serde cannot express; only when enabled.
    pub fn validate(&self, scylla_backend: bool) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let usable_ms = self.lease_ms.saturating_sub(self.safety_margin_ms);
        let checks: [Check; 11] = [
            (
                !scylla_backend,
                "cluster.enabled",
                "needs store.backend = \"scylla\": instances share one keyspace, and the embedded \
                 store is one machine's",
            ),
            (
                !is_instance_id(&self.instance_id),
                "cluster.instance_id",
                "must be 1 to 128 characters: letters, digits, '.', '_', '-' or ':', unique \
                 among the keyspace's instances",
            ),
            (
                !is_host_port(&self.advertise_addr),
                "cluster.advertise_addr",
                "must be host:port, the address other instances reach this one's gRPC API at",
            ),
            (
                self.slots == 0 || self.slots > MAX_SLOTS,
                "cluster.slots",
                "must be between 1 and 65536",
            ),
            (
                self.lease_ms < 2_000
                    || !self.lease_ms.is_multiple_of(1_000)
                    || self.lease_ms > 3_600_000,
                "cluster.lease_ms",
                "must be a whole number of seconds (the cluster's TTLs count seconds), from 2000 \
                 to 3600000",
            ),
            (
                self.safety_margin_ms < 1_000,
                "cluster.safety_margin_ms",
                "must be at least 1000: a TTL expires up to a second early, at a whole second",
            ),
            (
                self.safety_margin_ms >= self.lease_ms,
                "cluster.safety_margin_ms",
                "must be less than cluster.lease_ms",
            ),
            (
                self.heartbeat_ms == 0 || self.heartbeat_ms.saturating_mul(2) > usable_ms,
                "cluster.heartbeat_ms",
                "must be at least 1 and at most half of cluster.lease_ms - \
                 cluster.safety_margin_ms, so a lease is renewed at least twice before it runs out",
            ),
            (
                self.handoff_timeout_ms == 0
                    || self.handoff_timeout_ms.saturating_add(self.heartbeat_ms) > usable_ms / 2,
                "cluster.handoff_timeout_ms",
                "must be at least 1 and at most (cluster.lease_ms - cluster.safety_margin_ms) / 2 - \
                 cluster.heartbeat_ms: a round that hands slots off also renews the others",
            ),
            between!(
                self.forward_timeout_ms,
                1,
                600000,
                "cluster.forward_timeout_ms"
            ),
            (
                self.tls_cert_file.is_some() != self.tls_key_file.is_some(),
                "cluster.tls_key_file",
                "and cluster.tls_cert_file must be set together",
            ),
        ];
        first_failure(checks)
    }

    /// Checks that this instance can forward calls to the others when the
    /// gRPC port (theirs too: instances share a configuration) is behind
    /// TLS, or mutual TLS; only when enabled.
    pub fn validate_forwarding(&self, tls: &TlsConfig) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let checks: [Check; 3] = [
            (
                tls.enabled() && self.tls_ca_file.is_none(),
                "cluster.tls_ca_file",
                "must be set when tls.cert_file is: the other instances serve TLS only, so calls \
                 forwarded to them need the CA that signs their certificates",
            ),
            (
                tls.client_ca_file.is_some() && self.tls_cert_file.is_none(),
                "cluster.tls_cert_file",
                "must be set when tls.client_ca_file is: the other instances ask callers for a \
                 certificate, so forwarded calls need one (with cluster.tls_key_file)",
            ),
            (
                !tls.enabled() && self.tls_ca_file.is_some(),
                "cluster.tls_ca_file",
                "needs tls.cert_file: instances share one configuration, and without [tls] the \
                 others serve plaintext",
            ),
        ];
        first_failure(checks)
    }
}

fn is_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

millis_accessors!(ClusterConfig {
    /// Returns the default bound of a forwarded call.
    forward_timeout => forward_timeout_ms;
    /// Returns the lease duration.
    lease => lease_ms;
    /// Returns the safety margin.
    safety_margin => safety_margin_ms;
    /// Returns the heartbeat interval.
    heartbeat => heartbeat_ms;
    /// Returns the handoff timeout.
    handoff_timeout => handoff_timeout_ms;
});

fn is_host_port(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && !host.chars().any(char::is_whitespace)
        && port.parse::<u16>().is_ok_and(|port| port > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn enabled() -> ClusterConfig {
        ClusterConfig {
            enabled: true,
            instance_id: "readstates-0".to_owned(),
            advertise_addr: "10.0.0.1:50051".to_owned(),
            ..ClusterConfig::default()
        }
    }

    fn refused_field(config: &ClusterConfig, scylla: bool) -> &'static str {
        match config.validate(scylla) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{config:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn disabled_is_never_checked_and_enabled_defaults_are_valid() {
        let off = ClusterConfig {
            slots: 0,
            ..ClusterConfig::default()
        };
        assert!(off.validate(false).is_ok());
        assert!(enabled().validate(true).is_ok());
        assert!(
            ClusterConfig {
                advertise_addr: "[::1]:50051".to_owned(),
                ..enabled()
            }
            .validate(true)
            .is_ok()
        );
    }

    #[test]
    fn the_section_parses_and_ids_stay_strings_in_overrides() {
        let text = "[store]\nbackend = \"scylla\"\n[cluster]\nenabled = true\n\
                    advertise_addr = \"10.0.0.7:50051\"\nslots = 256\n";
        let overrides = [("READSTATES_CLUSTER_INSTANCE_ID", "007")]
            .map(|(name, value)| (name.to_owned(), value.to_owned()));
        let config = crate::config::Config::from_toml_and_env(text, overrides).unwrap();
        assert_eq!(config.cluster.instance_id, "007");
        assert_eq!(config.cluster.slots, 256);
        assert_eq!(config.cluster.lease(), Duration::from_secs(10));
        let embedded = "[cluster]\nenabled = true\ninstance_id = \"a\"\n\
                        advertise_addr = \"a:1\"\n";
        let error = crate::config::Config::from_toml_and_env(embedded, []).unwrap_err();
        assert!(error.to_string().contains("cluster.enabled"), "{error}");
    }

    #[test]
    fn tls_on_the_port_needs_tls_for_forwards() {
        let tls = TlsConfig {
            cert_file: Some("server.pem".into()),
            key_file: Some("server.key".into()),
            client_ca_file: None,
        };
        let refused =
            |cluster: &ClusterConfig, tls: &TlsConfig| match cluster.validate_forwarding(tls) {
                Err(ConfigError::Invalid { field, .. }) => Some(field),
                Ok(()) => None,
                Err(other) => panic!("{other}"),
            };
        assert_eq!(refused(&enabled(), &TlsConfig::default()), None);
        assert_eq!(refused(&enabled(), &tls), Some("cluster.tls_ca_file"));
        let with_ca = ClusterConfig {
            tls_ca_file: Some("ca.pem".into()),
            ..enabled()
        };
        assert_eq!(refused(&with_ca, &tls), None);
        assert_eq!(
            refused(&with_ca, &TlsConfig::default()),
            Some("cluster.tls_ca_file"),
            "TLS to instances that serve plaintext"
        );
        let mutual = TlsConfig {
            client_ca_file: Some("clients.pem".into()),
            ..tls.clone()
        };
        assert_eq!(refused(&with_ca, &mutual), Some("cluster.tls_cert_file"));
        let with_identity = ClusterConfig {
            tls_cert_file: Some("instance.pem".into()),
            tls_key_file: Some("instance.key".into()),
            ..with_ca
        };
        assert_eq!(refused(&with_identity, &mutual), None);
        let off = ClusterConfig::default();
        assert_eq!(refused(&off, &mutual), None, "only checked when enabled");
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        assert_eq!(refused_field(&enabled(), false), "cluster.enabled");
        let cases: [(ClusterConfig, &str); 14] = [
            (
                ClusterConfig {
                    forward_timeout_ms: 0,
                    ..enabled()
                },
                "cluster.forward_timeout_ms",
            ),
            (
                ClusterConfig {
                    tls_cert_file: Some("instance.pem".into()),
                    ..enabled()
                },
                "cluster.tls_key_file",
            ),
            (
                ClusterConfig {
                    instance_id: String::new(),
                    ..enabled()
                },
                "cluster.instance_id",
            ),
            (
                ClusterConfig {
                    instance_id: "a b".to_owned(),
                    ..enabled()
                },
                "cluster.instance_id",
            ),
            (
                ClusterConfig {
                    advertise_addr: "10.0.0.1".to_owned(),
                    ..enabled()
                },
                "cluster.advertise_addr",
            ),
            (
                ClusterConfig {
                    advertise_addr: "host:0".to_owned(),
                    ..enabled()
                },
                "cluster.advertise_addr",
            ),
            (
                ClusterConfig {
                    slots: MAX_SLOTS + 1,
                    ..enabled()
                },
                "cluster.slots",
            ),
            (
                ClusterConfig {
                    lease_ms: 2_500,
                    ..enabled()
                },
                "cluster.lease_ms",
            ),
            (
                ClusterConfig {
                    safety_margin_ms: 500,
                    ..enabled()
                },
                "cluster.safety_margin_ms",
            ),
            (
                ClusterConfig {
                    safety_margin_ms: 10_000,
                    ..enabled()
                },
                "cluster.safety_margin_ms",
            ),
            (
                ClusterConfig {
                    heartbeat_ms: 0,
                    ..enabled()
                },
                "cluster.heartbeat_ms",
            ),
            (
                ClusterConfig {
                    heartbeat_ms: 5_000,
                    ..enabled()
                },
                "cluster.heartbeat_ms",
            ),
            (
                ClusterConfig {
                    handoff_timeout_ms: 0,
                    ..enabled()
                },
                "cluster.handoff_timeout_ms",
            ),
            (
                ClusterConfig {
                    handoff_timeout_ms: 3_500,
                    ..enabled()
                },
                "cluster.handoff_timeout_ms",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(refused_field(&config, true), field, "{config:?}");
        }
    }
}
