//! The ScyllaDB / Cassandra store: one partition per user in
//! `read_states`, `PRIMARY KEY ((user_id), channel_id)`, through ScyllaDB's
//! Rust driver with statements prepared once at start-up.
//!
//! Last write wins by version: every write, delete and version raise
//! carries `USING TIMESTAMP` = the state's version (Unix microseconds), and
//! the database keeps the cell with the highest timestamp. So a stale flush,
//! from this instance or another, never overwrites a newer row or
//! resurrects a deleted one, with no read before the write. (ScyllaDB
//! refuses timestamps more than 3 days ahead of its clock; versions run at
//! most the 120 s version lease ahead of ours.)
//!
//! A delete writes a delete marker, not a tombstone (see [`cql`]): a user's
//! deletes never fill its partition with tombstones that every load would
//! read, and that past Cassandra's `tombstone_failure_threshold` would make
//! the user unloadable. Markers expire after the table's
//! `gc_grace_seconds`, read once at start-up. Loads return the markers not
//! yet expired as the user's deletions; the deletion horizon says which
//! are certainly among them: those of versions newer than the marker TTL
//! ago, less a margin (ARCHITECTURE.md §1.3, [`cql::deletion_horizon`]).
//!
//! A user's version must count deletions, but a tombstone cannot be read
//! back. So each write batch also sets the partition's static
//! `user_version` cell to the batch's highest version, at that same
//! timestamp: the cell then always holds the largest version ever written
//! for the user, and it comes back with the rows in the same read.
//!
//! Writes: a flush's rows are grouped by user into single-partition
//! UNLOGGED batches (atomic within the partition, one round trip, routed
//! to a replica by the token; never multi-partition batches, which only
//! add coordinator work), run concurrently with at most
//! `scylla.max_in_flight` batches in flight across all flushes. Every
//! statement is idempotent, so the driver may retry or speculate freely.
//! Writes are acknowledged at the configured consistency, so `sync` has
//! nothing left to do.

#[cfg(test)]
mod bind_check;
mod consistency;
mod cql;
mod error;
mod migrate;
mod session;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ::scylla::client::session::Session;
use ::scylla::client::session_builder::SessionBuilder;
use ::scylla::response::PagingState;
use ::scylla::statement::batch::{Batch, BatchType};
use ::scylla::statement::prepared::PreparedStatement;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use self::consistency::consistency;
pub(crate) use self::consistency::consistency as driver_consistency;
use self::cql::{StatementTexts, StoredRow, UserBatch, WriteValues};
pub use self::error::{PrepareFailed, ScyllaError};
use self::error::{request_failed, result_unreadable};
pub use self::migrate::{MigrateError, MigrationReport};
pub(crate) use self::session::connect;
use super::{LoadPriority, RowWrite, Store, StoreError, StoreFuture, UserRows};
use crate::clock::unix_micros;
use crate::config::ScyllaConfig;
use crate::ids::UserId;

/// The store on a ScyllaDB or Cassandra cluster.
pub struct ScyllaStore {
    session: Session,
    statements: Statements,
    /// A configured, empty unlogged batch to clone for each write.
    batch_template: Batch,
    /// Write batches in flight, across every `write_batch` call.
    write_permits: Semaphore,
    max_in_flight: usize,
    /// The TTL of delete markers, in seconds.
    marker_ttl: i32,
    /// The highest deletion horizon returned, so that it never goes back
    /// with the wall clock.
    horizon: AtomicU64,
}

/// The prepared statements.
struct Statements {
    load_user: PreparedStatement,
    upsert: PreparedStatement,
    delete: PreparedStatement,
    raise_user_version: PreparedStatement,
    load_version_floor: PreparedStatement,
    record_version_floor: PreparedStatement,
}

impl ScyllaStore {
    /// Connects, applies pending migrations if `migrate_on_start` is set
    /// (else refuses a schema that is not exactly this build's), and
    /// prepares the statements.
    pub async fn open(config: &ScyllaConfig) -> Result<Self, ScyllaError> {
        Self::open_with(config, |builder| builder).await
    }

    /// Like [`ScyllaStore::open`], with `customize` applied to the driver's
    /// session builder last.
    pub async fn open_with(
        config: &ScyllaConfig,
        customize: impl FnOnce(SessionBuilder) -> SessionBuilder,
    ) -> Result<Self, ScyllaError> {
        let session = session::connect(config, customize).await?;
        if config.migrate_on_start {
            log_report(&migrate::apply(&session, config).await?, &config.keyspace);
        } else {
            migrate::check(&session, config).await?;
        }
        let statements = Statements::prepare(&session, config).await?;
        let marker_ttl = read_marker_ttl(&session, &config.keyspace).await?;
        let mut batch_template = Batch::new(BatchType::Unlogged);
        batch_template.set_consistency(consistency(config.write_consistency));
        batch_template.set_is_idempotent(true);
        Ok(Self {
            session,
            statements,
            batch_template,
            write_permits: Semaphore::new(config.max_in_flight),
            max_in_flight: config.max_in_flight,
            marker_ttl,
            horizon: AtomicU64::new(0),
        })
    }

    /// Connects and applies every pending migration (`readstates migrate`).
    pub async fn migrate(config: &ScyllaConfig) -> Result<MigrationReport, ScyllaError> {
        let session = session::connect(config, |builder| builder).await?;
        let report = migrate::apply(&session, config).await?;
        log_report(&report, &config.keyspace);
        Ok(report)
    }

    /// Writes one user's batch once a permit is free.
    async fn write_user(&self, batch: UserBatch) -> Result<(), StoreError> {
        let _permit = self
            .write_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Worker("the write permits were closed".to_owned()))?;
        let mut statement = self.batch_template.clone();
        for write in &batch.writes {
            let prepared = match write {
                WriteValues::Upsert(_) => &self.statements.upsert,
                WriteValues::Delete(_) => &self.statements.delete,
                WriteValues::RaiseUserVersion(_) => &self.statements.raise_user_version,
            };
            statement.append_statement(prepared.clone());
        }
        self.session
            .batch(&statement, &batch.writes)
            .await
            .map_err(|error| request_failed("writing read states", &error))?;
        Ok(())
    }

    async fn load(&self, user_id: UserId) -> Result<UserRows, StoreError> {
        let key = (i64::try_from(user_id.get()).unwrap_or(i64::MAX),);
        let mut rows = UserRows::default();
        let mut paging_state = PagingState::start();
        loop {
            let (result, paging) = self
                .session
                .execute_single_page(&self.statements.load_user, key, paging_state)
                .await
                .map_err(|error| request_failed("reading a user's read states", &error))?;
            let page = result
                .into_rows_result()
                .map_err(|error| result_unreadable("reading a user's read states", error))?;
            let page_rows = page
                .rows::<StoredRow>()
                .map_err(|error| result_unreadable("decoding a user's read states", error))?;
            for row in page_rows {
                let row =
                    row.map_err(|error| result_unreadable("decoding a user's read states", error))?;
                cql::accumulate(&mut rows, row).map_err(|source| StoreError::Corrupt {
                    user_id: user_id.get(),
                    source,
                })?;
            }
            match paging.into_paging_control_flow() {
                ControlFlow::Break(()) => break,
                ControlFlow::Continue(next) => paging_state = next,
            }
        }
        Ok(rows)
    }
}

impl Store for ScyllaStore {
    fn backend(&self) -> &'static str {
        "scylla"
    }

    /// Loads are concurrent requests to the cluster (bounded by
    /// `scylla.max_in_flight`), so there is no queue to order by priority.
    fn load_user(&self, user_id: UserId, _priority: LoadPriority) -> StoreFuture<'_, UserRows> {
        Box::pin(self.load(user_id))
    }

    fn write_batch(&self, rows: Arc<[RowWrite]>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let batches = cql::plan_batches(&rows, self.marker_ttl);
            // On the first failure the rest are dropped: the caller retries
            // the whole batch, and every write is idempotent.
            futures_util::stream::iter(batches)
                .map(Ok)
                .try_for_each_concurrent(self.max_in_flight, |batch| self.write_user(batch))
                .await
        })
    }

    fn load_version_floor(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let result = self
                .session
                .execute_unpaged(
                    &self.statements.load_version_floor,
                    (cql::VERSION_FLOOR_KEY,),
                )
                .await
                .map_err(|error| request_failed("reading the version floor", &error))?;
            let row = result
                .into_rows_result()
                .map_err(|error| result_unreadable("reading the version floor", error))?
                .maybe_first_row::<(Option<i64>,)>()
                .map_err(|error| result_unreadable("decoding the version floor", error))?;
            Ok(cql::version_floor(row.and_then(|(floor,)| floor)))
        })
    }

    fn record_version_floor(&self, floor: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // The value is its own timestamp: the largest floor wins.
            let floor = cql::write_timestamp(floor);
            self.session
                .execute_unpaged(
                    &self.statements.record_version_floor,
                    (cql::VERSION_FLOOR_KEY, floor, floor),
                )
                .await
                .map_err(|error| request_failed("recording the version floor", &error))?;
            Ok(())
        })
    }

    fn sync(&self) -> StoreFuture<'_, ()> {
        // Every write was acknowledged at the write consistency already.
        Box::pin(async { Ok(()) })
    }

    fn purge_tombstones(&self, _below: u64, _max: usize) -> StoreFuture<'_, usize> {
        // Deletes write no tombstones: their delete markers expire by TTL
        // after the table's gc_grace_seconds, and the cluster drops them.
        Box::pin(async { Ok(0) })
    }

    /// Returns the marker TTL (the table's `gc_grace_seconds`) before now,
    /// plus a margin for versions that run ahead of the clock (see
    /// `cql::HORIZON_MARGIN_MICROS`): markers expire by time, not by a
    /// purge. Never below a value returned before, should the clock step
    /// back.
    fn deletion_horizon(&self) -> u64 {
        let now = cql::deletion_horizon(unix_micros(), self.marker_ttl);
        self.horizon.fetch_max(now, Ordering::Relaxed).max(now)
    }
}

impl Statements {
    async fn prepare(session: &Session, config: &ScyllaConfig) -> Result<Self, ScyllaError> {
        let texts = StatementTexts::new(&config.keyspace);
        let read = consistency(config.read_consistency);
        let write = consistency(config.write_consistency);
        let page_size = i32::try_from(config.page_size).unwrap_or(i32::MAX);
        let mut load_user = prepare(session, "load_user", &texts.load_user).await?;
        load_user.set_consistency(read);
        load_user.set_page_size(page_size);
        let mut load_version_floor =
            prepare(session, "load_version_floor", &texts.load_version_floor).await?;
        load_version_floor.set_consistency(read);
        let mut upsert = prepare(session, "upsert", &texts.upsert).await?;
        let mut delete = prepare(session, "delete", &texts.delete).await?;
        let mut raise_user_version =
            prepare(session, "raise_user_version", &texts.raise_user_version).await?;
        let mut record_version_floor =
            prepare(session, "record_version_floor", &texts.record_version_floor).await?;
        for statement in [
            &mut upsert,
            &mut delete,
            &mut raise_user_version,
            &mut record_version_floor,
        ] {
            statement.set_consistency(write);
        }
        let mut statements = Self {
            load_user,
            upsert,
            delete,
            raise_user_version,
            load_version_floor,
            record_version_floor,
        };
        // Every statement reads, or writes at an explicit timestamp: running
        // one twice changes nothing, so retries and speculation are safe.
        for statement in [
            &mut statements.load_user,
            &mut statements.upsert,
            &mut statements.delete,
            &mut statements.raise_user_version,
            &mut statements.load_version_floor,
            &mut statements.record_version_floor,
        ] {
            statement.set_is_idempotent(true);
        }
        Ok(statements)
    }
}

/// Reads the `read_states` table's `gc_grace_seconds` and returns the TTL
/// of delete markers for it. A table whose `gc_grace_seconds` is changed
/// later gets markers of the new length after a restart.
async fn read_marker_ttl(session: &Session, keyspace: &str) -> Result<i32, ScyllaError> {
    let text = StatementTexts::new(keyspace).gc_grace_seconds;
    let failed = |message: String| {
        ScyllaError::Schema(MigrateError::Cluster {
            action: "reading read_states' gc_grace_seconds".to_owned(),
            message,
        })
    };
    let row = session
        .query_unpaged(text, &[])
        .await
        .map_err(|error| failed(error.to_string()))?
        .into_rows_result()
        .map_err(|error| failed(error.to_string()))?
        .maybe_first_row::<(Option<i32>,)>()
        .map_err(|error| failed(error.to_string()))?;
    let gc_grace_seconds = row.and_then(|(seconds,)| seconds);
    let marker_ttl = cql::marker_ttl(gc_grace_seconds);
    tracing::info!(keyspace, ?gc_grace_seconds, marker_ttl, "delete markers");
    Ok(marker_ttl)
}

/// Prepares `text`, naming it `statement` if the cluster refuses it.
pub(crate) async fn prepare(
    session: &Session,
    statement: &'static str,
    text: &str,
) -> Result<PreparedStatement, PrepareFailed> {
    session.prepare(text).await.map_err(|error| PrepareFailed {
        statement,
        message: error.to_string(),
    })
}

fn log_report(report: &MigrationReport, keyspace: &str) {
    if report.applied_now.is_empty() {
        tracing::info!(keyspace, applied = ?report.already_applied, "schema up to date");
    } else {
        tracing::info!(
            keyspace,
            applied_now = ?report.applied_now,
            already_applied = ?report.already_applied,
            "migrations applied"
        );
    }
}
