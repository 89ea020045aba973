//! Durable storage of read states behind one trait, so the cache and the
//! write-behind never know which database holds the rows.
//!
//! Every row carries the `version` of the change it holds, and a store never
//! lets an older version overwrite (or resurrect over a delete of) a newer
//! one: flushes of one state may race (a timed flush and an eviction write),
//! and with a shared cluster, several instances may write one user.

mod delayed;
mod embedded;
mod layer;
mod row;
mod scylla;

pub use delayed::DelayedStore;
pub use embedded::{Compaction, DATABASE_FILE, EmbeddedOptions, EmbeddedStore, compact};
pub use layer::{Operation, StoreLayer};
pub use row::{Row, RowDecodeError, decode_row, encode_row};
pub use scylla::{MigrateError, MigrationReport, PrepareFailed, ScyllaError, ScyllaStore};
/// Opens a driver session from `[scylla]` (the cluster's own session).
pub(crate) use scylla::{
    connect as connect_scylla, driver_consistency, prepare as prepare_statement,
};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::ids::{ChannelId, UserId};
use crate::read_state::ReadState;

/// A boxed store future: the trait is used as `dyn Store`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// One row to write: the state of a (user, channel) pair at `state.version`,
/// or its deletion at that version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowWrite {
    pub user_id: UserId,
    pub state: ReadState,
    pub deleted: bool,
}

/// One user's stored rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRows {
    /// The live states, in channel order.
    pub states: Vec<ReadState>,
    /// The deletion markers the store still holds for the user, in channel
    /// order: every deletion at or above [`Store::deletion_horizon`] is
    /// here (ARCHITECTURE.md §1.3).
    pub deleted: Vec<Tombstone>,
    /// The highest version among the user's rows, deletions included, so a
    /// reloaded user's version never goes backwards.
    pub version: u64,
}

/// A deleted pair, as its deletion marker records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    pub channel_id: ChannelId,
    /// The deletion's version.
    pub version: u64,
}

/// Returns the rows of a batch sorted by (user, channel), keeping only the
/// newest write of each pair: within one batch the others are moot.
pub(crate) fn newest_per_key(rows: &[RowWrite]) -> Vec<&RowWrite> {
    let mut rows: Vec<&RowWrite> = rows.iter().collect();
    rows.sort_unstable_by(|a, b| {
        (a.user_id, a.state.channel_id, b.state.version).cmp(&(
            b.user_id,
            b.state.channel_id,
            a.state.version,
        ))
    });
    rows.dedup_by(|later, first| {
        later.user_id == first.user_id && later.state.channel_id == first.state.channel_id
    });
    rows
}

/// How soon a load is needed, for stores that queue loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPriority {
    /// A request waits for this user alone (an ack, a read, a connect).
    Urgent,
    /// One of many cold users of a mention fan-out: served after urgent loads.
    Background,
}

/// The durable home of read states.
pub trait Store: Send + Sync + 'static {
    /// Returns the backend's name, for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Returns every live state of one user, the deletion markers still
    /// stored for it, and the user's version.
    fn load_user(&self, user_id: UserId, priority: LoadPriority) -> StoreFuture<'_, UserRows>;

    /// Asks that a load of `user_id` queued at background priority run as
    /// an urgent one: a request has come to wait for it. A store that does
    /// not queue loads has nothing to do.
    fn expedite_load(&self, _user_id: UserId) {}

    /// Writes a batch of rows; a row older than the stored one is skipped.
    /// On error nothing is known about which rows landed: the caller retries
    /// the batch, which is safe because writes are versioned.
    fn write_batch(&self, rows: Arc<[RowWrite]>) -> StoreFuture<'_, ()>;

    /// Returns the highest version recorded by [`Store::record_version_floor`]
    /// (0 if none), so a restarted server never reissues a version.
    fn load_version_floor(&self) -> StoreFuture<'_, u64>;

    /// Records that versions up to `floor` may have been handed out.
    fn record_version_floor(&self, floor: u64) -> StoreFuture<'_, ()>;

    /// Makes everything written so far durable (e.g. fsync); called on
    /// graceful shutdown.
    fn sync(&self) -> StoreFuture<'_, ()>;

    /// Removes at most `max` deletion markers (tombstones) whose version is
    /// below `below`, and returns how many it removed. The caller chooses
    /// `below` so that no write older than it can still arrive: a tombstone
    /// exists only to make such a stale write lose. A store whose database
    /// expires tombstones itself returns 0.
    fn purge_tombstones(&self, below: u64, max: usize) -> StoreFuture<'_, usize>;

    /// Returns the version below which deletion markers may be gone (purged
    /// by [`Store::purge_tombstones`], or expired by the database): every
    /// deletion at or above it is still returned by [`Store::load_user`].
    /// Never decreases. A delta since a version below it cannot be proved
    /// complete (ARCHITECTURE.md §1.3).
    ///
    /// It holds for the loads that finished before it was read, so read it
    /// after the load it vouches for: a purge may land between a read of
    /// it and a later load, and remove markers above the value read.
    fn deletion_horizon(&self) -> u64;
}

/// Whether retrying a failed store operation can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The database was unreachable, overloaded or too slow: the same
    /// operation may succeed later.
    Retryable,
    /// The operation cannot succeed until someone changes something (the
    /// data, the schema, a permission, the build): retrying repeats the
    /// failure.
    Permanent,
}

impl ErrorClass {
    /// Returns the class's name, for metric labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the operation; retrying
    /// later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database refused the operation in a way retrying will not fix: a
    /// missing or altered table, a permission, a damaged file, a statement
    /// or value it rejects.
    #[error("store failed, not retryable: {0}")]
    Permanent(String),
    /// A stored row could not be decoded; the data is damaged or was written
    /// by an incompatible version.
    #[error("stored row for user {user_id} is damaged: {source}")]
    Corrupt {
        user_id: u64,
        #[source]
        source: RowDecodeError,
    },
    /// The blocking store worker was cancelled or panicked.
    #[error("store worker failed: {0}")]
    Worker(String),
}

impl StoreError {
    /// Returns whether retrying the operation can succeed. A damaged row
    /// reads the same on every try, and a store worker that stopped does
    /// not come back without a restart: both are permanent.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Unavailable(_) => ErrorClass::Retryable,
            StoreError::Permanent(_) | StoreError::Corrupt { .. } | StoreError::Worker(_) => {
                ErrorClass::Permanent
            }
        }
    }
}
