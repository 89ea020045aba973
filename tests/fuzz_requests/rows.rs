//! The stored-row codec on arbitrary rows: decoding never panics, and a
//! decodable row survives re-encoding.

use std::cell::Cell;

use proptest::prelude::*;
use readstates::ids::{ChannelId, MAX_ID};
use readstates::read_state::ReadState;
use readstates::store::{Row, decode_row, encode_row};

use crate::runner;

/// Bytes for the row decoder: arbitrary, or a row laid out field by field
/// (see `src/store/row.rs`) with any tag, any values, and a count of
/// mention ids that may disagree with the ids that follow.
fn row_bytes() -> impl Strategy<Value = Vec<u8>> {
    let live = (
        prop_oneof![Just(1u8), any::<u8>()],
        any::<[u64; 4]>(),
        any::<(u32, u64)>(),
        proptest::collection::vec(prop_oneof![1..20u64, any::<u64>()], 0..6),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(
            |(tag, [version, last, pin, updated], (untracked, until), ids, n, cut)| {
                let mut bytes = vec![tag];
                let last = if last % 2 == 0 {
                    last % (MAX_ID + 1)
                } else {
                    last
                };
                for field in [version, last, pin, updated] {
                    bytes.extend_from_slice(&field.to_le_bytes());
                }
                bytes.extend_from_slice(&untracked.to_le_bytes());
                bytes.extend_from_slice(&until.to_le_bytes());
                let n = n.unwrap_or(ids.len() as u32);
                bytes.extend_from_slice(&n.to_le_bytes());
                for id in ids {
                    bytes.extend_from_slice(&id.to_le_bytes());
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                bytes
            },
        );
    let tombstone =
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..2)).prop_map(|(version, tail)| {
            let mut bytes = vec![2];
            bytes.extend_from_slice(&version.to_le_bytes());
            bytes.extend(tail);
            bytes
        });
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..80),
        4 => live,
        1 => tombstone,
    ]
}

/// Re-encodes a decoded row.
fn encode(channel_id: ChannelId, row: &Row) -> Vec<u8> {
    let mut bytes = Vec::new();
    match row {
        Row::Live(state) => encode_row(state, false, &mut bytes),
        Row::Tombstone { version } => {
            let state = ReadState {
                version: *version,
                ..ReadState::empty(channel_id)
            };
            encode_row(&state, true, &mut bytes);
        }
    }
    bytes
}

/// The mention ids a live row's bytes hold after its fixed fields.
fn stored_ids(bytes: &[u8]) -> Vec<u64> {
    const LIVE_FIXED_LEN: usize = 1 + 8 * 4 + 4 + 8 + 4;
    bytes
        .get(LIVE_FIXED_LEN..)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|id| u64::from_le_bytes(id.try_into().unwrap_or_default()))
        .collect()
}

#[test]
fn the_row_codec_never_panics_and_round_trips() {
    let channel_id = ChannelId::new(42).unwrap();
    let (live, tombstones) = (Cell::new(0), Cell::new(0));
    runner(4_000)
        .run(&row_bytes(), |bytes| {
            let Ok(row) = decode_row(channel_id, &bytes) else {
                return Ok(());
            };
            let encoded = encode(channel_id, &row);
            prop_assert_eq!(decode_row(channel_id, &encoded), Ok(row.clone()));
            prop_assert_eq!(&encode(channel_id, &row), &encoded, "not deterministic");
            match &row {
                Row::Live(state) => {
                    live.set(live.get() + 1);
                    let mut ids = stored_ids(&bytes);
                    // Stored ids already ascending and distinct: nothing to
                    // tidy, so the row re-encodes to the very same bytes.
                    if ids.windows(2).all(|pair| pair[0] < pair[1]) {
                        prop_assert_eq!(&encoded, &bytes);
                    }
                    ids.sort_unstable();
                    ids.dedup();
                    prop_assert_eq!(state.mentions.pending(), &ids[..]);
                    prop_assert!(encoded.len() <= bytes.len());
                }
                Row::Tombstone { .. } => {
                    tombstones.set(tombstones.get() + 1);
                    prop_assert_eq!(&encoded, &bytes);
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(
        live.get() > 0 && tombstones.get() > 0,
        "the strategy made no decodable live row or tombstone"
    );
}
