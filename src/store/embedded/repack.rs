//! Repacking: the read-state table's leaves rewritten full, a bounded run
//! of rows per commit, so that the file stays near its live data under
//! churn.
//!
//! A copy-on-write B-tree fills its pages when rows arrive in key order
//! (the first import, or new users, whose ids come last). A row inserted
//! into a full leaf splits it into two half-full ones, and a leaf merges
//! with a neighbour only once it is below a third full. Under churn that
//! deletes users' states and creates them again, the leaves that deletes
//! and purges emptied merge, and the rows created again split them: the
//! table settled at about twice its live data, with no page ever full
//! again (BENCHMARKS.md, "Space under churn"). Freeing pages does not
//! help: the space is inside the pages.
//!
//! Two things keep the leaves full. First, the rows a batch adds (a new
//! user's states, a user's states created again) are not inserted one by
//! one, which splits a full leaf and leaves half of it behind at every
//! page of a run in the middle of the table: they go in together, each
//! run between two stored keys through one cursor, which packs the leaves
//! it builds ([`Inserts`]).
//!
//! Second, the writer thread sweeps the table in key order, as background work
//! within its own commits: each commit takes the next run of rows out and
//! puts them back through a cursor, which rebuilds the leaves they span
//! packed full. The work follows the churn that causes the waste: each
//! row a commit turns into a tombstone or purges earns `per_change` rows
//! of sweep. Rows written or inserted earn nothing: a table that only
//! grows settles with its leaves two-thirds full, and packing them full
//! would only have the next inserts split them again. An idle store does
//! no work. A run is at least [`MIN_RUN`] rows, since the leaves at its
//! two ends are left as full as they were (a trickle of tiny runs would
//! only add such ends), and at most [`MAX_RUN`] rows a commit. The sweep's
//! place is kept in memory: after a restart it begins again at the first
//! key.

use std::ops::{Bound, Range};

use redb::{ReadableTable, WriteTransaction};

use super::error::redb_error;
use super::paced::Pace;
use super::tombstones::StatesTable;
use crate::store::StoreError;

/// Rows one commit repacks at most, however much churn it carries: the
/// batches queued behind a commit wait for it.
pub const MAX_RUN: usize = 4_096;

/// Rows earned before a run is made: about 40 leaves of states.
pub const MIN_RUN: usize = 2_048;

/// Rows earned and not yet swept, at most: a burst of churn beyond what
/// the sweep keeps up with is not carried for ever.
const MAX_CREDIT: usize = 64 * MAX_RUN;

/// Rows new to the table, gathered in key order while a batch is written,
/// then inserted together.
#[derive(Default)]
pub struct Inserts {
    keys: Vec<((u64, u64), Range<usize>)>,
    values: Vec<u8>,
}

impl Inserts {
    /// Adds a row; keys must come in ascending order, each once.
    pub fn push(&mut self, key: (u64, u64), value: &[u8]) {
        let start = self.values.len();
        self.values.extend_from_slice(value);
        self.keys.push((key, start..self.values.len()));
    }

    /// The first and last keys gathered.
    fn span(&self) -> Option<((u64, u64), (u64, u64))> {
        Some((self.keys.first()?.0, self.keys.last()?.0))
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// Inserts the rows gathered, and empties the buffer: one cursor per
    /// run of them that no stored key interrupts.
    pub fn insert_into(
        &mut self,
        states: &mut StatesTable<'_>,
        pace: &Pace,
    ) -> Result<(), StoreError> {
        let result = insert_runs(states, &self.keys, &self.values, pace);
        self.keys.clear();
        self.values.clear();
        result
    }
}

/// Inserts `keys` (sorted, none stored) with their values from `values`.
fn insert_runs(
    states: &mut StatesTable<'_>,
    keys: &[((u64, u64), Range<usize>)],
    values: &[u8],
    pace: &Pace,
) -> Result<(), StoreError> {
    let mut at = 0;
    while let Some(&(first, _)) = keys.get(at) {
        let mut cursor = states
            .lower_bound_mut(Bound::Included(first))
            .map_err(redb_error)?;
        // The stored key after the gap ends the run.
        let limit = cursor
            .peek_next()
            .map_err(redb_error)?
            .map(|(key, _)| key.value());
        for (key, range) in &keys[at..] {
            if limit.is_some_and(|limit| *key > limit) {
                break;
            }
            pace.give_way();
            // A key equal to the limit (stored after all) is refused here
            // as unordered, not overwritten.
            cursor
                .insert_before(*key, &values[range.clone()])
                .map_err(redb_error)?;
            at += 1;
        }
        cursor.close().map_err(redb_error)?;
    }
    Ok(())
}

/// The sweep: where it goes on, what it has earned, and a buffer reused
/// for the rows it moves.
pub struct Repacker {
    /// Rows of sweep earned per row deleted or purged; 0 turns repacking
    /// off.
    per_change: u32,
    /// Rows earned and not yet swept.
    credit: usize,
    /// The first key of the next run; `None` at the start of the table.
    next: Option<(u64, u64)>,
    run: Inserts,
}

impl Repacker {
    pub fn new(per_change: u32) -> Self {
        Self {
            per_change,
            credit: 0,
            next: None,
            run: Inserts::default(),
        }
    }

    /// Counts `changes` rows deleted or purged.
    pub fn earn(&mut self, changes: usize) {
        let earned = changes.saturating_mul(self.per_change as usize);
        self.credit = self.credit.saturating_add(earned).min(MAX_CREDIT);
    }

    /// Repacks the rows earned, once they make a run, at the sweep's
    /// place, in `txn`; returns how many rows it moved.
    pub fn step(&mut self, txn: &WriteTransaction, pace: &Pace) -> Result<usize, StoreError> {
        if self.credit < MIN_RUN {
            return Ok(0);
        }
        let rows = self.credit.min(MAX_RUN);
        let mut states: StatesTable<'_> = txn.open_table(super::STATES).map_err(redb_error)?;
        let moved = self.repack_run(&mut states, rows, pace)?;
        self.credit -= rows.min(self.credit);
        Ok(moved)
    }

    /// Takes up to `rows` rows out from the sweep's place and puts them
    /// back in key order through one cursor.
    fn repack_run(
        &mut self,
        states: &mut StatesTable<'_>,
        rows: usize,
        pace: &Pace,
    ) -> Result<usize, StoreError> {
        let from = match self.next {
            Some(key) => Bound::Included(key),
            None => Bound::Unbounded,
        };
        let mut following = None;
        for entry in states
            .range::<(u64, u64)>((from, Bound::Unbounded))
            .map_err(redb_error)?
        {
            let (key, value) = entry.map_err(redb_error)?;
            pace.give_way();
            if self.run.len() == rows {
                following = Some(key.value());
                break;
            }
            self.run.push(key.value(), value.value());
        }
        self.next = following;
        let Some((first, last)) = self.run.span() else {
            return Ok(0);
        };
        let moved = self.run.len();
        for entry in states
            .extract_from_if(first..=last, |_, _| true)
            .map_err(redb_error)?
        {
            entry.map_err(redb_error)?;
            pace.give_way();
        }
        // The run's keys are all gone now, and no stored key lies between
        // them: they go back through one cursor.
        self.run.insert_into(states, pace)?;
        Ok(moved)
    }
}
