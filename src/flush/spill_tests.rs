use super::*;
use crate::read_state::Mentions;

fn state(channel: u64, version: u64) -> ReadState {
    ReadState {
        channel_id: ChannelId::new(channel).unwrap(),
        last_message_id: MessageId::new(70).unwrap(),
        last_pin_timestamp_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_000_001,
        version,
        mentions: Mentions::from_parts(vec![71, 75, 90], 2, 80),
    }
}

fn sample() -> Unwritten {
    let user = UserId::new(42).unwrap();
    Unwritten {
        rows: vec![
            RowWrite {
                user_id: user,
                state: state(7, 1_000),
                deleted: false,
            },
            RowWrite {
                user_id: user,
                state: ReadState {
                    version: 1_001,
                    ..ReadState::empty(ChannelId::new(8).unwrap())
                },
                deleted: true,
            },
        ],
        mentions: vec![DeferredMention {
            user_id: UserId::new(43).unwrap(),
            channel_id: ChannelId::new(9).unwrap(),
            message_id: MessageId::new(123).unwrap(),
        }],
    }
}

#[test]
fn a_spill_reads_back_exactly_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let spill = SpillDir::new(dir.path().join("spill"));
    assert!(spill.read_all().unwrap().is_empty(), "no directory yet");
    let first = spill.write(&sample()).unwrap();
    let second = spill.write(&Unwritten::default()).unwrap();
    let read = spill.read_all().unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[0], (first.clone(), sample()), "oldest first");
    assert_eq!(read[1], (second.clone(), Unwritten::default()));
    spill.remove(&[first, second]).unwrap();
    assert!(spill.read_all().unwrap().is_empty());
}

#[test]
fn a_damaged_or_cut_spill_is_refused_not_half_read() {
    let dir = tempfile::tempdir().unwrap();
    let spill = SpillDir::new(dir.path().to_owned());
    let path = spill.write(&sample()).unwrap();
    let good = std::fs::read(&path).unwrap();
    let mut flipped = good.clone();
    flipped[20] ^= 1;
    for (bytes, reason) in [
        (flipped, "digest"),
        (good[..good.len() - 5].to_vec(), "digest"),
        (good[..10].to_vec(), "shorter than its digest"),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let error = spill.read_all().unwrap_err();
        assert!(matches!(error, SpillError::Damaged { .. }), "{error:?}");
        assert!(error.to_string().contains(reason), "{error}");
        assert!(
            error.to_string().contains("spill-"),
            "names the file: {error}"
        );
    }
}

#[test]
fn an_unfinished_spill_is_removed_and_the_rest_read() {
    let dir = tempfile::tempdir().unwrap();
    let spill = SpillDir::new(dir.path().to_owned());
    let unfinished = dir.path().join(".spill-12.tmp");
    std::fs::write(&unfinished, b"RSSPILL1 half").unwrap();
    spill.write(&sample()).unwrap();
    let read = spill.read_all().unwrap();
    assert_eq!(read.len(), 1);
    assert!(!unfinished.exists());
}

#[test]
fn a_spill_that_cannot_be_written_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory should be: nothing can be created in it.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"").unwrap();
    let error = SpillDir::new(blocked.clone()).write(&sample()).unwrap_err();
    assert!(matches!(error, SpillError::Io { .. }), "{error:?}");
    assert!(error.to_string().contains("blocked"), "{error}");
}
