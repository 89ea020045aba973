//! Service configuration: one TOML file, overridable by environment
//! variables, parsed and validated once at start-up into typed values.
//!
//! Every key has a default that runs on a laptop. An environment variable
//! `READSTATES_<SECTION>_<KEY>` overrides `[section] key`, e.g.
//! `READSTATES_CACHE_CAPACITY=2000000` or `READSTATES_STORE_DATA_DIR=/var/lib/readstates`.
//!
//! The room is a ground floor: it owns every default and limit its
//! settings are checked against, and imports no other room. Its files:
//! `load` (file and overrides), `validate`, `live` (what a reload applies
//! and what waits for a restart), and one file per group of sections:
//! `server` (`[server]`, `[limits]`, `[metrics]`, `[log]`), `storage`
//! (`[store]`, `[cache]`, `[flush]`), `scylla`, `auth` (`[tls]`, `[auth]`)
//! and `cluster`.

use std::path::PathBuf;

use serde::Deserialize;

/// One range check of a section, for [`first_failure`]: `value` must be at
/// least `min`, and the reason says so.
macro_rules! at_least {
    ($value:expr, $min:literal, $field:literal) => {
        ($value < $min, $field, concat!("must be at least ", $min))
    };
}

/// One range check of a section, for [`first_failure`]: `value` must be at
/// most `max`, and the reason says so.
macro_rules! at_most {
    ($value:expr, $max:literal, $field:literal) => {
        ($value > $max, $field, concat!("must be at most ", $max))
    };
}

/// One range check of a section, for [`first_failure`]: `value` must lie
/// in `min..=max`, and the reason says so.
macro_rules! between {
    ($value:expr, $min:literal, $max:literal, $field:literal) => {
        (
            $value < $min || $value > $max,
            $field,
            concat!("must be between ", $min, " and ", $max),
        )
    };
}

/// Accessors that return a section's `*_ms` settings as durations.
macro_rules! millis_accessors {
    ($section:ty { $($(#[$doc:meta])* $name:ident => $field:ident;)* }) => {
        impl $section {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> std::time::Duration {
                    std::time::Duration::from_millis(self.$field)
                }
            )*
        }
    };
}

mod auth;
mod cluster;
mod live;
mod load;
mod scylla;
mod server;
mod storage;
mod validate;

pub use auth::{AuthConfig, TlsConfig};
pub use cluster::{ClusterConfig, MAX_SLOTS};
pub use live::LiveSettings;
pub use load::ENV_PREFIX;
pub use scylla::{
    Consistency, RetryPolicyKind, ScyllaConfig, Secret, SpeculativeExecution, is_cql_identifier,
};
pub use server::{
    DEFAULT_MAX_IN_FLIGHT_CALLS, LimitsConfig, LogConfig, MAX_STREAMS_PER_CONNECTION,
    MetricsConfig, ServerConfig, WatchConfig,
};
pub use storage::{
    CacheConfig, DEFAULT_CACHE_MIB, DEFAULT_READER_THREADS, DEFAULT_REPACK_PER_CHANGE, FlushConfig,
    StoreBackend, StoreConfig,
};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub flush: FlushConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub scylla: ScyllaConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
    pub watch: WatchConfig,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML (with overrides applied) does not match the schema.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// An environment override names no known setting.
    #[error("environment variable {0} names no setting; expected READSTATES_<SECTION>_<KEY>")]
    UnknownOverride(String),
    /// A value is out of its allowed range.
    #[error("invalid config: {field} {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

/// A check of a section: `(failed, field, reason)`.
type Check = (bool, &'static str, &'static str);

/// Fails with the first of `checks` that failed, naming its field.
fn first_failure<const N: usize>(checks: [Check; N]) -> Result<(), ConfigError> {
    match checks.into_iter().find(|(failed, _, _)| *failed) {
        Some((_, field, reason)) => Err(ConfigError::Invalid { field, reason }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
