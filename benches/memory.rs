//! Resident memory per cached read state.
//!
//! Fills a cache with `READSTATES_MEMORY_STATES` read states (default one
//! million) in a realistic shape: users with 1 to 200 channels (uniform),
//! every state acknowledged, one state in twenty with a pending mention, one
//! in fifty with a pin. It then reports the process's resident memory
//! growth divided by the number of states, next to the cache's own estimate.
//! Run one size per process so the figures do not mix:
//!
//! ```sh
//! READSTATES_MEMORY_STATES=10000000 cargo bench --bench memory
//! ```

use std::time::Instant;

use readstates::cache::{Cache, CacheSettings};
use readstates::ids::{ChannelId, MessageId, UserId};
use readstates::store::EmbeddedStore;

/// A small deterministic generator (xorshift64*), so runs are repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; this benchmark takes no arguments.
    let target: usize = std::env::var("READSTATES_MEMORY_STATES")
        .ok()
        .and_then(|value| value.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path())?;
    let cache = Cache::new(
        &CacheSettings {
            // Headroom: users hash unevenly across partitions.
            capacity: target.saturating_mul(2),
            partitions: 64,
            max_tracked_mentions: 1_000,
            max_dirty_states: usize::MAX,
            flush_delay: std::time::Duration::from_secs(3_600),
            flush_tick: std::time::Duration::from_secs(1),
        },
        0,
    );

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let before = resident_bytes();
    let started = Instant::now();
    let mut states = 0usize;
    let mut user = 0u64;
    runtime.block_on(async {
        while states < target {
            user += 1;
            let channels = (1 + rng.below(200) as usize).min(target - states);
            let user_id = UserId::new(user)?;
            let picks: Vec<(u64, u64)> = (0..channels)
                .map(|_| (1 + rng.below(1 << 40), rng.below(100)))
                .collect();
            cache
                .write(&store, user_id, |txn| {
                    for &(channel, kind) in &picks {
                        let Ok(channel) = ChannelId::new(channel) else {
                            continue;
                        };
                        let read = MessageId::new(1 << 41).unwrap_or(MessageId::NONE);
                        txn.ack(channel, read);
                        if kind < 5 {
                            let unread = MessageId::new((1 << 41) + 1).unwrap_or(MessageId::NONE);
                            txn.add_mention(channel, unread);
                        }
                        if kind >= 98 {
                            txn.ack_pins(channel, 1_700_000_000_000);
                        }
                    }
                })
                .await?;
            states += channels;
        }
        anyhow::Ok(())
    })?;
    let elapsed = started.elapsed();
    let after = resident_bytes();
    let stats = cache.stats();
    let grown = after.saturating_sub(before);
    println!("read states          {}", stats.resident_states);
    println!("users                {}", stats.resident_users);
    println!("fill time            {:.1} s", elapsed.as_secs_f64());
    println!("resident before      {:.1} MiB", before as f64 / 1048576.0);
    println!("resident after       {:.1} MiB", after as f64 / 1048576.0);
    println!(
        "resident per state   {:.1} bytes",
        grown as f64 / stats.resident_states.max(1) as f64
    );
    println!(
        "estimated per state  {:.1} bytes (the cache's own estimate)",
        stats.estimated_bytes as f64 / stats.resident_states.max(1) as f64
    );
    Ok(())
}
