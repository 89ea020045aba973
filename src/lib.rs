//! readstates: per-user, per-channel read states over gRPC.
//!
//! Module map, from the top floor down (a module imports only those below
//! it; ARCHITECTURE.md §4 has the floors and §5 the call paths):
//! - [`server`]: wiring, serving, live reconfiguration and graceful shutdown.
//! - [`api`]: the `readstates.v1` gRPC service: validation, admission, forwarding, status codes.
//! - [`cluster`]: scale-out: slots, membership, leases, placement, routing, handoff.
//! - [`engine`]: everything below the API: the store, the cache, write-behind and its tasks.
//! - [`watch`]: who follows which user's changes, and each change stream's bounded outbox.
//! - [`flush`]: write-behind, the one writer of dirty rows; the shutdown's spill.
//! - [`cache`]: partitioned LRU of users' states: loads, eviction, dirty marks, inboxes.
//! - [`store`]: the store trait, the embedded store and the ScyllaDB/Cassandra store.
//! - [`auth`]: TLS on the gRPC port, and the check of who calls ReadStates.
//! - [`scrape`]: the `/metrics` endpoint, on its own bounded listener.
//! - [`read_state`]: one state's rules (acks, mentions, pins).
//! - [`connections`]: both ports' connections: capped, reaped, accepted with backoff.
//! - [`clock`]: versions, timestamps and the version lease's limit.
//! - [`ids`]: validated snowflake id types.
//! - [`config`]: the TOML configuration, its environment overrides and defaults.
//! - [`metrics`]: the Prometheus registry, histograms and exposition text.
//! - [`overload`]: the request workers' queueing delay, the overload signal.

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
pub mod watch;
