//! What a shutdown does with the changes its final flush could not write,
//! and what the next start does with them (see `spill`).
//!
//! At shutdown: the dirty rows and deferred mentions still in the cache are
//! written to a spill file. If that fails too (the spill directory is on
//! the full disk), the shutdown does not exit: it tries the store and the
//! spill again, with a growing wait, until one of them takes the changes,
//! or until the operator's second signal says to give them up. An exit
//! that throws acknowledged changes away is then the operator's explicit
//! choice, not a timeout's.
//!
//! At start, before the first call is served: every spill file's rows are
//! written to the store, its mentions applied to their users (loaded for
//! it), the result written and synced, and only then the file removed. A
//! store that refuses them stops the start, and the file stays for the next
//! one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::spill::{DeferredMention, SpillDir, SpillError, Unwritten};
use crate::cache::{Cache, CacheError, Deferral};
use crate::ids::UserId;
use crate::store::{RowWrite, Store, StoreError};

/// The first wait between attempts at the end of a shutdown; doubles up to
/// [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(10);

/// How long one batch write may take at the end of a shutdown: a hung store
/// must not keep the spill from being tried again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a shutdown's unwritten changes went.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    /// There were none.
    Nothing,
    /// The store took them after all.
    Written,
    /// They are in this spill file.
    Spilled {
        path: PathBuf,
        rows: usize,
        mentions: usize,
    },
}

/// Why the unwritten changes were not kept.
#[derive(Debug, thiserror::Error)]
#[error(
    "neither the store nor the spill directory took the unwritten changes before the second signal: \
     {rows} dirty read states and {mentions} deferred mentions were lost"
)]
pub struct GivenUp {
    pub rows: usize,
    pub mentions: usize,
}

/// Why a start could not write the spilled changes.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Spill(#[from] SpillError),
    /// The store refused them: the files stay for the next start.
    #[error(
        "writing the changes spilled at the last shutdown failed (they stay for the next start): {0}"
    )]
    Store(#[from] StoreError),
    /// The cache refused a spilled mention.
    #[error(
        "applying the mentions spilled at the last shutdown failed (they stay for the next start): {0}"
    )]
    Cache(#[from] CacheError),
    #[error("the spill's blocking task failed: {0}")]
    Worker(String),
}

/// Takes what the cache still holds unwritten.
fn unwritten(cache: &Cache) -> Unwritten {
    let mut jobs = Vec::new();
    cache.take_flush_jobs(true, &mut jobs);
    let mut deferred = Vec::new();
    cache.deferred_snapshot(&mut deferred);
    Unwritten {
        rows: jobs.into_iter().flat_map(|job| job.rows).collect(),
        mentions: deferred
            .into_iter()
            .map(|(user_id, channel_id, message_id)| DeferredMention {
                user_id,
                channel_id,
                message_id,
            })
            .collect(),
    }
}

/// Keeps the changes the final flush could not write: in a spill file, or
/// in the store if it takes them first. Retries until one of them does or
/// `force` is cancelled.
pub async fn keep_unwritten(
    cache: &Cache,
    store: &dyn Store,
    spill: &SpillDir,
    batch_rows: usize,
    force: &CancellationToken,
) -> Result<Kept, GivenUp> {
    let mut wait = FIRST_WAIT;
    loop {
        let left = unwritten(cache);
        if left.is_empty() {
            return Ok(Kept::Nothing);
        }
        let (rows, mentions) = (left.rows.len(), left.mentions.len());
        let to_spill = Arc::new(left);
        let written = {
            let spill = spill.clone();
            let to_spill = Arc::clone(&to_spill);
            tokio::task::spawn_blocking(move || spill.write(&to_spill)).await
        };
        match written {
            Ok(Ok(path)) => {
                return Ok(Kept::Spilled {
                    path,
                    rows,
                    mentions,
                });
            }
            Ok(Err(error)) => tracing::error!(
                %error, rows, mentions,
                "cannot spill the unwritten changes; trying the store again"
            ),
            Err(error) => tracing::error!(%error, "the spill's blocking task failed"),
        }
        // The store may be back: its rows then need no spill (mentions of
        // users never loaded still do, and go to the next spill alone).
        if write_rows(cache, store, &to_spill.rows, batch_rows).await && mentions == 0 {
            return Ok(Kept::Written);
        }
        tracing::error!(
            rows,
            mentions,
            retry_in_s = wait.as_secs(),
            "unwritten changes are still held in memory; send the signal again to exit without them"
        );
        tokio::select! {
            () = force.cancelled() => return Err(GivenUp { rows, mentions }),
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(MAX_WAIT);
    }
}

/// Writes `rows` in batches, each bounded by [`WRITE_TIMEOUT`], marking
/// each batch written in the cache; returns whether all landed and synced.
async fn write_rows(
    cache: &Cache,
    store: &dyn Store,
    rows: &[RowWrite],
    batch_rows: usize,
) -> bool {
    for batch in rows.chunks(batch_rows.max(1)) {
        let batch: Arc<[RowWrite]> = batch.into();
        match tokio::time::timeout(WRITE_TIMEOUT, store.write_batch(Arc::clone(&batch))).await {
            Ok(Ok(())) => cache.mark_written(&batch),
            Ok(Err(error)) => {
                tracing::warn!(%error, "the store still refuses writes");
                return false;
            }
            Err(_elapsed) => {
                tracing::warn!(timeout = ?WRITE_TIMEOUT, "the store still does not answer writes");
                return false;
            }
        }
    }
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, store.sync()).await,
        Ok(Ok(()))
    )
}

/// Writes the changes of every spill file to the store through `cache`
/// (mentions need their users loaded), makes them durable, and removes the
/// files. Returns how many rows and mentions were replayed. Runs before
/// the flusher starts and before any call is served.
pub async fn replay_spills(
    spill: &SpillDir,
    cache: &Cache,
    store: &dyn Store,
    batch_rows: usize,
) -> Result<(usize, usize), ReplayError> {
    let files = {
        let spill = spill.clone();
        tokio::task::spawn_blocking(move || spill.read_all())
            .await
            .map_err(|error| ReplayError::Worker(error.to_string()))??
    };
    if files.is_empty() {
        return Ok((0, 0));
    }
    let (mut rows, mut mentions) = (0, 0);
    for (path, unwritten) in &files {
        tracing::info!(
            path = %path.display(),
            rows = unwritten.rows.len(),
            mentions = unwritten.mentions.len(),
            "writing the changes spilled at the last shutdown"
        );
        for batch in unwritten.rows.chunks(batch_rows.max(1)) {
            store.write_batch(batch.into()).await?;
        }
        apply_mentions(cache, store, &unwritten.mentions, batch_rows).await?;
        rows += unwritten.rows.len();
        mentions += unwritten.mentions.len();
    }
    // The last mentions' users are cached and dirty.
    write_dirty(cache, store, batch_rows).await?;
    store.sync().await?;
    // The users go: the server starts as cold as after any restart (with
    // a cluster, it may not own them).
    cache.evict_users(&|_| true);
    let paths: Vec<PathBuf> = files.into_iter().map(|(path, _)| path).collect();
    let removed = {
        let spill = spill.clone();
        tokio::task::spawn_blocking(move || spill.remove(&paths))
            .await
            .map_err(|error| ReplayError::Worker(error.to_string()))?
    };
    removed?;
    Ok((rows, mentions))
}

/// Writes every dirty state of the cache: the flusher does not run yet
/// while a spill is replayed.
async fn write_dirty(
    cache: &Cache,
    store: &dyn Store,
    batch_rows: usize,
) -> Result<(), StoreError> {
    let mut jobs = Vec::new();
    cache.take_flush_jobs(true, &mut jobs);
    let merged: Vec<RowWrite> = jobs.into_iter().flat_map(|job| job.rows).collect();
    for batch in merged.chunks(batch_rows.max(1)) {
        let batch: Arc<[RowWrite]> = batch.into();
        store.write_batch(Arc::clone(&batch)).await?;
        cache.mark_written(&batch);
    }
    Ok(())
}

/// Applies spilled mentions as an AddMentions with `omit_read_states`
/// would: deferred, then merged by a load of their user. Their states are
/// written a batch at a time as they become dirty, so a large spill never
/// meets the dirty backlog's limit (the flusher does not run yet).
async fn apply_mentions(
    cache: &Cache,
    store: &dyn Store,
    mentions: &[DeferredMention],
    batch_rows: usize,
) -> Result<(), ReplayError> {
    let mut by_user: BTreeMap<UserId, Vec<&DeferredMention>> = BTreeMap::new();
    for mention in mentions {
        by_user.entry(mention.user_id).or_default().push(mention);
    }
    for (user_id, mentions) in by_user {
        for mention in mentions {
            loop {
                match cache.defer_mention(user_id, mention.channel_id, mention.message_id)? {
                    Deferral::Applied | Deferral::Deferred => break,
                    // Merge what waits, then offer this one again.
                    Deferral::Full => cache.load_deferred(store, user_id).await?,
                }
            }
        }
        cache.load_deferred(store, user_id).await?;
        if cache.dirty_states() >= batch_rows.max(1) {
            write_dirty(cache, store, batch_rows).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "last_resort_tests.rs"]
mod tests;
