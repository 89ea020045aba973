//! One-time import of a data directory written by the earlier embedded
//! store, an LSM tree (fjall) whose files lie directly under `data_dir`.
//!
//! On open, if `data_dir` holds that layout, every row (tombstones
//! included, with their versions) and the version floor are copied into the
//! B-tree database in chunked transactions (the floor is also the deletion
//! horizon, at least), and the old files are moved to
//! `data_dir/legacy-lsm/`, where an operator may delete them. The rows are
//! written with the same version comparison as any batch, so an import that
//! was interrupted (a crash before the move) simply runs again.

use std::path::Path;

use fjall::{Database as LsmDatabase, KeyspaceCreateOptions};
use redb::Database;

use super::paced::Pace;
use super::repack::Inserts;
use super::tombstones::{self, RowBytes, TOMBSTONES, Upserted};
use super::{STATES, begin_durable_write, raise_version_floor, redb_error};
use crate::ids::ChannelId;
use crate::store::StoreError;
use crate::store::row::{Row, decode_row};

/// The files and folders the LSM store kept under `data_dir`, beside its
/// journal files (`<n>.jnl`).
const LSM_ENTRIES: [&str; 3] = ["keyspaces", "version", "lock"];
const LSM_JOURNAL_SUFFIX: &str = ".jnl";
/// Where they go once imported.
pub const LEGACY_DIR: &str = "legacy-lsm";
const LSM_STATES_KEYSPACE: &str = "read_states";
const LSM_META_KEYSPACE: &str = "meta";
const LSM_VERSION_FLOOR_KEY: &[u8] = b"version_floor";
/// Rows per import transaction.
const CHUNK: usize = 100_000;

/// Imports the LSM store's data under `data_dir`, if there is any.
pub fn import_if_present(data_dir: &Path, db: &Database) -> Result<(), StoreError> {
    if !data_dir.join("keyspaces").is_dir() || !data_dir.join("version").is_file() {
        return Ok(());
    }
    tracing::info!(data_dir = %data_dir.display(), "importing the earlier LSM store's data");
    let rows = import(data_dir, db)?;
    let legacy = data_dir.join(LEGACY_DIR);
    let moved = std::fs::create_dir_all(&legacy).and_then(|()| {
        for entry in std::fs::read_dir(data_dir)? {
            let name = entry?.file_name();
            let is_lsm = name.to_str().is_some_and(|name| {
                LSM_ENTRIES.contains(&name) || name.ends_with(LSM_JOURNAL_SUFFIX)
            });
            if is_lsm {
                std::fs::rename(data_dir.join(&name), legacy.join(&name))?;
            }
        }
        Ok(())
    });
    moved.map_err(|error| {
        StoreError::Unavailable(format!(
            "imported the LSM store's data but could not move it to {}: {error}",
            legacy.display()
        ))
    })?;
    tracing::info!(rows, moved_to = %legacy.display(), "imported the earlier LSM store's data; the old files may be deleted");
    Ok(())
}

/// Copies every row and the version floor; returns the rows copied.
fn import(data_dir: &Path, db: &Database) -> Result<usize, StoreError> {
    let lsm_error = |error: fjall::Error| {
        StoreError::Unavailable(format!("reading the earlier LSM store: {error}"))
    };
    let lsm = LsmDatabase::builder(data_dir).open().map_err(lsm_error)?;
    let states = lsm
        .keyspace(LSM_STATES_KEYSPACE, KeyspaceCreateOptions::default)
        .map_err(lsm_error)?;
    let meta = lsm
        .keyspace(LSM_META_KEYSPACE, KeyspaceCreateOptions::default)
        .map_err(lsm_error)?;

    let mut chunk: Vec<((u64, u64), Vec<u8>)> = Vec::with_capacity(CHUNK);
    let mut copied = 0;
    for guard in states.iter() {
        let (key, value) = guard.into_inner().map_err(lsm_error)?;
        let Some(key) = split_key(&key) else {
            tracing::warn!(len = key.len(), "skipping an LSM row with a malformed key");
            continue;
        };
        chunk.push((key, value.to_vec()));
        if chunk.len() == CHUNK {
            copied += write_chunk(db, &mut chunk)?;
        }
    }
    copied += write_chunk(db, &mut chunk)?;

    let floor = meta
        .get(LSM_VERSION_FLOOR_KEY)
        .map_err(lsm_error)?
        .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
        .map_or(0, u64::from_le_bytes);
    raise_version_floor(db, floor)?;
    // The LSM store may have purged tombstones and recorded no horizon:
    // promise none below its floor, as for any file without a horizon.
    tombstones::raise_horizon_in(db, floor)?;
    Ok(copied)
}

/// Writes the rows of `chunk` that are newer than the stored ones (keeping
/// the tombstone index in step, as a batch does), and empties it; returns
/// how many were written.
fn write_chunk(db: &Database, chunk: &mut Vec<((u64, u64), Vec<u8>)>) -> Result<usize, StoreError> {
    let mut written = 0;
    // The chunk comes in key order, each key once, as the LSM store kept it.
    let mut inserts = Inserts::default();
    let txn = begin_durable_write(db)?;
    {
        let mut states = txn.open_table(STATES).map_err(redb_error)?;
        let mut index = txn.open_table(TOMBSTONES).map_err(redb_error)?;
        for ((user, channel), value) in chunk.drain(..) {
            let Ok(channel_id) = ChannelId::new(channel) else {
                continue;
            };
            // A damaged row counts as version 0: it lands only where
            // nothing is stored.
            let (version, deleted) = match decode_row(channel_id, &value) {
                Ok(row) => (row.version(), matches!(row, Row::Tombstone { .. })),
                Err(_) => (0, false),
            };
            let row = RowBytes {
                version,
                deleted,
                bytes: &value,
            };
            let upserted = tombstones::upsert(&mut states, &mut index, user, channel_id, &row)?;
            if upserted == Upserted::New {
                inserts.push((user, channel), row.bytes);
            }
            if upserted.wrote() {
                written += 1;
            }
        }
        inserts.insert_into(&mut states, &Pace::new())?;
    }
    txn.commit().map_err(redb_error)?;
    Ok(written)
}

/// Splits an LSM key (user id and channel id, both big-endian) in two.
fn split_key(key: &[u8]) -> Option<(u64, u64)> {
    let user: [u8; 8] = key.get(..8)?.try_into().ok()?;
    let channel: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    (key.len() == 16).then(|| (u64::from_be_bytes(user), u64::from_be_bytes(channel)))
}
