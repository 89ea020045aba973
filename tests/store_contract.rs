//! The store contract (`tests/common/contract.rs`) against every backend:
//! the embedded store; the embedded store behind each wrapper the service
//! or the tests put around it (injected latency, metrics, the fault switch
//! with no fault set, the counting test store); and the ScyllaDB /
//! Cassandra store when `READSTATES_TEST_SCYLLA` names a cluster, e.g.
//! `READSTATES_TEST_SCYLLA=127.0.0.1:9042 cargo test --test store_contract`.
//! Without it each Scylla test prints why it was skipped and passes; each
//! one that runs works in its own keyspace, dropped when it passes.
//!
//! Each backend is a module and each check a test in it, so a failure
//! names both: `delayed::stale_writes_never_overwrite_newer_rows`.

mod common;

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::InstrumentedStore;
use common::cluster::Cluster;
use common::contract::{Backend, Capabilities, Instances, Tombstones};
use common::faults::FaultyStore;
use readstates::config::ScyllaConfig;
use readstates::engine::MeteredStore;
use readstates::metrics::Metrics;
use readstates::store::{DelayedStore, EmbeddedStore, ScyllaStore, Store};
use tempfile::TempDir;

/// Generates one test per contract check for the backend `$backend`, in a
/// module named `$module`.
macro_rules! contract_tests {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;

            contract_tests!(@checks $module, $backend;
                stale_writes_never_overwrite_newer_rows,
                a_deleted_state_loses_to_stale_writes_and_comes_back_with_a_newer_one,
                the_newest_duplicate_in_a_batch_wins,
                a_user_with_only_deletions_keeps_its_version,
                a_deleted_pair_loads_as_a_deletion_until_a_newer_write_revives_it,
                the_deletion_horizon_never_decreases_and_every_deletion_above_it_loads,
                every_field_survives_the_round_trip,
                users_are_separate_and_survive_a_reopen,
                the_version_floor_never_goes_down,
                concurrent_batches_all_land,
                a_purge_removes_old_tombstones_and_keeps_newer_ones_and_live_rows,
                a_stale_write_older_than_a_kept_tombstone_still_loses,
                max_bounds_the_work_of_one_purge_oldest_first,
                an_overwritten_tombstone_is_not_purged,
            );
        }
    };
    (@checks $module:ident, $backend:ty; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let test = concat!(stringify!($module), "::", stringify!($check));
                let Some(mut backend) = <$backend as Backend>::start(test).await else {
                    return;
                };
                common::contract::$check(&mut backend).await;
                backend.finish().await;
            }
        )*
    };
}

contract_tests!(embedded, OnDisk<Plain>);
contract_tests!(delayed, OnDisk<Delayed>);
contract_tests!(metered, OnDisk<Metered>);
contract_tests!(faulty, OnDisk<Faulty>);
contract_tests!(instrumented, OnDisk<Instrumented>);
contract_tests!(scylla, OnCluster);

// ---------------------------------------------------------------------------
// The embedded store, bare and wrapped
// ---------------------------------------------------------------------------

/// Opens a store over the embedded store in `dir`, bare or wrapped.
trait OpenIn {
    fn open_in(dir: &Path) -> Arc<dyn Store>;
}

/// The embedded store.
struct Plain;
/// The embedded store with a small injected latency on loads and writes,
/// so that operations overlap as they do on a network store.
struct Delayed;
/// The embedded store, measured.
struct Metered;
/// The fault-injecting store of the tests, with no fault set.
struct Faulty;
/// The counting store of the tests, with no outage or delay set.
struct Instrumented;

impl OpenIn for Plain {
    fn open_in(dir: &Path) -> Arc<dyn Store> {
        Arc::new(EmbeddedStore::open(dir).unwrap())
    }
}

impl OpenIn for Delayed {
    fn open_in(dir: &Path) -> Arc<dyn Store> {
        let median = Duration::from_millis(1);
        let p99 = Duration::from_millis(5);
        Arc::new(DelayedStore::new(Plain::open_in(dir), median, p99))
    }
}

impl OpenIn for Metered {
    fn open_in(dir: &Path) -> Arc<dyn Store> {
        let inner = Plain::open_in(dir);
        Arc::new(MeteredStore::new(inner, &Metrics::new()))
    }
}

impl OpenIn for Faulty {
    fn open_in(dir: &Path) -> Arc<dyn Store> {
        FaultyStore::open(dir)
    }
}

impl OpenIn for Instrumented {
    fn open_in(dir: &Path) -> Arc<dyn Store> {
        InstrumentedStore::open(dir)
    }
}

/// A backend over the embedded store in a temporary directory, which one
/// process owns and whose tombstones `purge_tombstones` removes.
struct OnDisk<Wrap> {
    dir: TempDir,
    wrap: PhantomData<Wrap>,
}

impl<Wrap: OpenIn> Backend for OnDisk<Wrap> {
    async fn start(_test: &str) -> Option<Self> {
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
            wrap: PhantomData,
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            tombstones: Tombstones::Purged,
            instances: Instances::One,
        }
    }

    async fn open(&mut self) -> Arc<dyn Store> {
        Wrap::open_in(self.dir.path())
    }

    async fn finish(self) {}
}

// ---------------------------------------------------------------------------
// The cluster store
// ---------------------------------------------------------------------------

/// A backend over a keyspace of its own on the cluster
/// `READSTATES_TEST_SCYLLA` names, shared by every store opened on it;
/// delete markers expire by TTL, so `purge_tombstones` removes nothing.
struct OnCluster {
    cluster: Cluster,
    /// The keyspace, made and migrated on the first open.
    settings: Option<ScyllaConfig>,
}

impl Backend for OnCluster {
    async fn start(test: &str) -> Option<Self> {
        let cluster = Cluster::from_env(test).await?;
        Some(Self {
            cluster,
            settings: None,
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            tombstones: Tombstones::Expire,
            instances: Instances::Many,
        }
    }

    async fn open(&mut self) -> Arc<dyn Store> {
        if self.settings.is_none() {
            self.settings = Some(self.cluster.migrated().await);
        }
        let settings = self.settings.as_ref().unwrap();
        Arc::new(ScyllaStore::open(settings).await.unwrap())
    }

    async fn finish(self) {
        if let Some(settings) = &self.settings {
            self.cluster.drop_keyspace(settings).await;
        }
    }
}
