//! Scale-out (DESIGN.md section 6): several instances over one keyspace,
//! each user served by exactly one of them at a time.
//!
//! Users map to slots by a fixed hash ([`slots`]); each slot is placed on a
//! live member by rendezvous hashing ([`placement`]).

pub mod placement;
pub mod slots;

pub use slots::{MAX_SLOTS, Slot, slot_of};
