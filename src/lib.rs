//! readstates: per-user, per-channel read states over gRPC.
//!
//! Module map, from the edge inwards:
//! - [`api`]: the `readstates.v1` gRPC service; request validation and the
//!   mapping of errors to status codes.
//! - [`auth`]: TLS on the gRPC port; client certificates or bearer tokens
//!   checked before a ReadStates call runs.
//! - [`connections`]: the gRPC and `/metrics` ports' connections, capped,
//!   reaped when silent or idle, accepted with backoff.
//! - [`cache`]: partitioned LRU of users' states; single-flight loads,
//!   eviction, dirty tracking, the flush timer buckets, and the inbox of
//!   mentions deferred until a cold user's next load.
//! - [`read_state`]: one state's semantics (acks, mentions, pins).
//! - [`flush`]: write-behind of dirty states to the store.
//! - [`store`]: the store trait, the embedded default store, and the
//!   ScyllaDB/Cassandra store with its schema migrations.
//! - [`cluster`]: scale-out over one keyspace: slots, their placement on
//!   live members, and slot leases held with lightweight transactions.
//! - [`clock`]: versions and timestamps.
//! - [`ids`]: validated snowflake id types.
//! - [`config`]: the TOML configuration and its environment overrides.
//! - [`metrics`]: the Prometheus registry, histograms and exposition text.
//! - [`scrape`]: the `/metrics` endpoint, on its own bounded listener.
//! - [`server`]: wiring, serving and graceful shutdown.

/// The allocator of every binary built on this crate (the service, its
/// tests and benchmarks), so benchmarks measure what production runs.
/// Build with `--no-default-features` to compare with the system's malloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod auth;
pub mod cache;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod engine;
pub mod flush;
pub mod ids;
pub mod metrics;
pub mod overload;
pub mod read_state;
pub mod scrape;
pub mod server;
pub mod store;
