//! Tests of the paced file backend: the writeback it starts before an
//! fsync covers every page written, in chunks, and pacing gives way once a
//! quantum has passed.

use std::sync::atomic::Ordering;

use redb::StorageBackend;

use super::paced::{
    Pace, PacedFile, QUANTUM, SYNC_CHUNK_PAGES, thread_cpu_nanos, writeback_ranges,
};

const PAGE: u64 = 4096;

#[test]
fn writeback_ranges_cover_every_write_a_chunk_at_a_time() {
    // 70 pages out of order, with gaps, and one write of two pages.
    let mut written: Vec<(u64, u64)> = (0..70u64)
        .map(|i| ((i * 37 % 70) * 3 * PAGE, PAGE))
        .collect();
    written.push((1_000 * PAGE, 2 * PAGE));
    let ranges: Vec<(u64, u64)> = writeback_ranges(&mut written).collect();
    assert_eq!(ranges.len(), 71usize.div_ceil(SYNC_CHUNK_PAGES));
    for pair in ranges.windows(2) {
        assert!(
            pair[0].0 + pair[0].1 <= pair[1].0,
            "ranges overlap or are out of order: {pair:?}"
        );
    }
    for &(offset, len) in &written {
        let covering = ranges
            .iter()
            .filter(|&&(start, length)| start <= offset && offset + len <= start + length)
            .count();
        assert_eq!(covering, 1, "write at {offset} is covered {covering} times");
    }
    for &(start, length) in &ranges {
        let inside = written
            .iter()
            .filter(|&&(offset, _)| start <= offset && offset < start + length)
            .count();
        assert!(inside <= SYNC_CHUNK_PAGES, "{inside} writes in one range");
    }
    assert_eq!(writeback_ranges(&mut []).count(), 0);
}

#[test]
fn a_sync_hands_the_writes_since_the_last_one_to_writeback() {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.path().join("paced"))
        .unwrap();
    let backend = PacedFile::new(file).unwrap();
    backend.set_len(8 * PAGE).unwrap();
    backend.write(5 * PAGE, &[7; PAGE as usize]).unwrap();
    backend.write(PAGE, &[9; PAGE as usize]).unwrap();
    assert_eq!(backend.unsynced_writes(), 2);
    backend.sync_data().unwrap();
    assert_eq!(backend.unsynced_writes(), 0);

    let mut page = vec![0; PAGE as usize];
    backend.read(5 * PAGE, &mut page).unwrap();
    assert!(page.iter().all(|&byte| byte == 7));
    backend.read(PAGE, &mut page).unwrap();
    assert!(page.iter().all(|&byte| byte == 9));
    backend.read(2 * PAGE, &mut page).unwrap();
    assert!(page.iter().all(|&byte| byte == 0));
}

/// Runs on the CPU until the thread has used `time` more of it.
fn burn(time: std::time::Duration) {
    let start = thread_cpu_nanos().unwrap();
    while thread_cpu_nanos().unwrap() - start < time.as_nanos() as u64 {
        std::hint::spin_loop();
    }
}

#[test]
fn pacing_gives_way_after_a_quantum_of_cpu_not_of_waiting() {
    let pace = Pace::new();
    let gave_way = || pace.gave_way.load(Ordering::Relaxed);
    burn(QUANTUM * 2);
    pace.give_way();
    assert_eq!(gave_way(), 1, "it did not give way after running");
    // A thread that waited for the CPU has not used it.
    std::thread::sleep(QUANTUM * 4);
    pace.give_way();
    assert_eq!(gave_way(), 1, "it gave way after only waiting");
    burn(QUANTUM * 2);
    pace.give_way();
    assert_eq!(gave_way(), 2, "it did not give way after running again");
    // Within a quantum of the last time: not again.
    pace.give_way();
    assert_eq!(gave_way(), 2);
}
