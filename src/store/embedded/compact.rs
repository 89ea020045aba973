//! Offline compaction of the embedded database (`readstates compact`).
//!
//! The running store keeps its pages full (see `repack`), and reuses the
//! pages it frees, so the file stops growing; but it never gives space back
//! to the filesystem beyond a free tail. Compaction moves the live pages
//! to the front of the file and cuts the free ones off; it does not refill
//! half-empty pages. redb compacts only a database with no transaction
//! open, so it runs with the server stopped (the file is locked while a
//! server has it open), as a maintenance step; its time grows with the
//! file.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::error::redb_error;
use super::handle::open_database;
use super::{DATABASE_FILE, EmbeddedOptions};
use crate::store::StoreError;

/// What a compaction did: the file's length and the disk it took, before
/// and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    pub length_before: u64,
    pub disk_before: u64,
    pub length_after: u64,
    pub disk_after: u64,
    pub elapsed: Duration,
}

/// Compacts the database under `options.data_dir`, which no server may
/// have open.
pub fn compact(options: &EmbeddedOptions) -> Result<Compaction, StoreError> {
    let path = options.data_dir.join(DATABASE_FILE);
    let (length_before, disk_before) = sizes(&path)?;
    let started = Instant::now();
    let mut db = open_database(&path, options.cache_mib.saturating_mul(1 << 20))?;
    db.compact().map_err(redb_error)?;
    // Closing writes the header and cuts the freed end off the file.
    drop(db);
    let elapsed = started.elapsed();
    let (length_after, disk_after) = sizes(&path)?;
    Ok(Compaction {
        length_before,
        disk_before,
        length_after,
        disk_after,
        elapsed,
    })
}

/// The file's length, and the disk blocks it takes (never-written pages
/// take none).
fn sizes(path: &Path) -> Result<(u64, u64), StoreError> {
    let meta = std::fs::metadata(path).map_err(|error| {
        StoreError::Unavailable(format!("cannot read {}: {error}", path.display()))
    })?;
    Ok((meta.len(), meta.blocks() * 512))
}
