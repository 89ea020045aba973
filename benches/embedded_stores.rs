//! Embedded-store comparison: fjall 3 (LSM tree) against redb 4 (B-tree) on the
//! two operations the read-state service performs against its on-disk store.
//!
//! * `upsert/*`: one atomic batch of [`BATCH`] versioned upserts spread over
//!   about `BATCH / 8` users. Each row is read first and only written when the
//!   stored version is lower than the new one (read-compare-write), exactly as
//!   the service's flusher does, so a stale flush never overwrites a newer row.
//! * `load/*`: the per-user load, a prefix scan of all rows of one random user,
//!   decoding the version of every row.
//!
//! Both stores use the service's layout: a 16-byte key (user id big-endian,
//! channel id big-endian, so one user's rows are contiguous) and a ~50 to 75
//! byte value (kind, version, last message, last pin, updated at, base
//! mentions, base clear-at, pending ids).
//!
//! Both stores are pre-populated with the same data set (by default 20,000
//! users with 1 to 200 channels each, about 2M rows). Set
//! `EMBEDDED_STORES_USERS` to use fewer users. Scans run first, on the freshly
//! loaded stores; the upserts then run against the same, large stores.
//!
//! Each engine runs with its defaults (fjall: 32 MiB block cache; redb: 1 GiB
//! cache). A third store, fjall with a 1 GiB cache, separates the engines from
//! their default cache sizes.
//!
//! Run with `cargo bench --bench embedded_stores`.

use std::collections::HashSet;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput};
use fjall::{KeyspaceCreateOptions, PersistMode};
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

/// Rows per upsert batch.
const BATCH: usize = 256;
/// Users touched per batch: the rows of a batch are spread over `BATCH / 8` users.
const USERS_PER_BATCH: usize = BATCH / 8;
/// Default number of users in the pre-populated stores.
const DEFAULT_USERS: u64 = 20_000;
/// Each user of the pre-populated stores has 1 to this many channels.
const MAX_CHANNELS_PER_USER: u64 = 200;
/// Upserts choose a channel rank in `0..UPSERT_CHANNEL_RANKS`, skewed towards low
/// ranks, so most hit an existing row and some create a new one.
const UPSERT_CHANNEL_RANKS: u64 = 250;
/// Users per scan sequence; each load picks the next user of this random sequence.
const SCAN_SEQUENCE: usize = 4_096;

const KIND_LIVE: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;

/// redb's default cache size (`redb::Builder`), also given to one fjall store.
const REDB_DEFAULT_CACHE: u64 = 1024 * 1024 * 1024;

const REDB_TABLE: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("states");

/// SplitMix64: a small deterministic generator, so the bench needs no extra crate
/// and every run sees the same data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The SplitMix64 finaliser, a bijection on u64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Channel id of a channel rank: the same rank is the same channel for every user,
/// so popular (low-rank) channels are shared, while ids still look arbitrary.
fn channel_id(rank: u64) -> u64 {
    mix(rank ^ 0x5EED)
}

/// User id of a user index, spread over the key space like real snowflake ids.
fn user_id(index: u64) -> u64 {
    mix(index ^ 0xC0FFEE)
}

fn encode_key(user: u64, channel: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&user.to_be_bytes());
    key[8..].copy_from_slice(&channel.to_be_bytes());
    key
}

/// Encodes a row value in the service's layout.
fn encode_value(rng: &mut Rng, version: u64) -> Vec<u8> {
    let kind = if rng.below(32) == 0 {
        KIND_TOMBSTONE
    } else {
        KIND_LIVE
    };
    let pending = rng.below(4) as u32;
    let mut value = Vec::with_capacity(49 + 8 * pending as usize);
    value.push(kind);
    value.extend_from_slice(&version.to_le_bytes());
    value.extend_from_slice(&rng.next_u64().to_le_bytes()); // last_message_id
    value.extend_from_slice(&rng.next_u64().to_le_bytes()); // last_pin_timestamp_ms
    value.extend_from_slice(&rng.next_u64().to_le_bytes()); // updated_at_ms
    value.extend_from_slice(&(rng.below(100) as u32).to_le_bytes()); // base mentions
    value.extend_from_slice(&rng.next_u64().to_le_bytes()); // base_clear_at
    value.extend_from_slice(&pending.to_le_bytes());
    for _ in 0..pending {
        value.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    value
}

/// The version of an encoded row: bytes 1..9, little-endian.
fn decode_version(value: &[u8]) -> u64 {
    u64::from_le_bytes(value[1..9].try_into().expect("row value too short"))
}

/// Channel count of a user of the pre-populated stores: uniform in 1..=200.
fn channels_of(user_index: u64) -> u64 {
    1 + mix(user_index ^ 0xC4A7) % MAX_CHANNELS_PER_USER
}

/// Rows of the pre-populated stores for the users `first..first + count`, in key
/// order within each user (user ids themselves are not sorted).
fn seed_rows(rng: &mut Rng, first: u64, count: u64) -> Vec<([u8; 16], Vec<u8>)> {
    let mut rows = Vec::new();
    for index in first..first + count {
        let user = user_id(index);
        let mut keys: Vec<[u8; 16]> = (0..channels_of(index))
            .map(|rank| encode_key(user, channel_id(rank)))
            .collect();
        keys.sort_unstable();
        for key in keys {
            let version = 1 + rng.below(1_000);
            rows.push((key, encode_value(rng, version)));
        }
    }
    rows
}

/// A batch of distinct-key upserts over `USERS_PER_BATCH` uniform users, channel
/// ranks skewed to low ranks (rank = floor(250 * u^2)). One row in 16 carries a
/// stale version (0), which the compare must reject when the row exists.
fn upsert_batch(rng: &mut Rng, users: u64, next_version: &mut u64) -> Vec<([u8; 16], Vec<u8>)> {
    let batch_users: Vec<u64> = (0..USERS_PER_BATCH)
        .map(|_| user_id(rng.below(users)))
        .collect();
    let mut seen = HashSet::with_capacity(BATCH);
    let mut rows = Vec::with_capacity(BATCH);
    while rows.len() < BATCH {
        let user = batch_users[rng.below(USERS_PER_BATCH as u64) as usize];
        let u = rng.unit();
        let rank = (UPSERT_CHANNEL_RANKS as f64 * u * u) as u64;
        let key = encode_key(user, channel_id(rank));
        if !seen.insert(key) {
            continue;
        }
        let version = if rng.below(16) == 0 {
            0
        } else {
            *next_version += 1;
            *next_version
        };
        rows.push((key, encode_value(rng, version)));
    }
    rows
}

/// A random sequence of user indexes for the loads, and the mean rows per user.
fn scan_sequence(users: u64) -> (Vec<u64>, u64) {
    let mut rng = Rng(0x5CA7);
    let sequence: Vec<u64> = (0..SCAN_SEQUENCE).map(|_| rng.below(users)).collect();
    let total: u64 = sequence.iter().map(|&i| channels_of(i)).sum();
    let mean = (total as f64 / sequence.len() as f64).round() as u64;
    (sequence, mean)
}

struct Fjall {
    db: fjall::Database,
    states: fjall::Keyspace,
}

impl Fjall {
    /// Opens with fjall's default block cache (32 MiB), or with `cache_bytes`.
    fn open(path: &Path, cache_bytes: Option<u64>) -> Self {
        let mut builder = fjall::Database::builder(path);
        if let Some(bytes) = cache_bytes {
            builder = builder.cache_size(bytes);
        }
        let db = builder.open().expect("open fjall");
        let states = db
            .keyspace("states", KeyspaceCreateOptions::default)
            .expect("open fjall keyspace");
        Self { db, states }
    }

    fn load(&self, users: u64) {
        let mut rng = Rng(0x10AD);
        let chunk = 500;
        let mut first = 0;
        while first < users {
            let count = chunk.min(users - first);
            let mut batch = self.db.batch();
            for (key, value) in seed_rows(&mut rng, first, count) {
                batch.insert(&self.states, key, value);
            }
            batch.commit().expect("fjall seed commit");
            first += count;
        }
        self.db
            .persist(PersistMode::SyncAll)
            .expect("fjall persist");
        // Move the last memtable to disk, as in a long-running service where most
        // rows sit in on-disk tables, and let flushes and compactions settle.
        self.states
            .rotate_memtable_and_wait()
            .expect("fjall flush memtable");
        while self.db.outstanding_flushes() > 0 || self.db.active_compactions() > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The versioned upsert: read, compare, and write the newer rows in one batch.
    fn upsert(&self, rows: Vec<([u8; 16], Vec<u8>)>, sync: bool) -> usize {
        let mut batch = self.db.batch();
        let mut written = 0;
        for (key, value) in rows {
            let stored = self.states.get(key).expect("fjall get");
            if stored.is_none_or(|stored| decode_version(&stored) < decode_version(&value)) {
                batch.insert(&self.states, key, value);
                written += 1;
            }
        }
        batch.commit().expect("fjall commit");
        if sync {
            self.db
                .persist(PersistMode::SyncAll)
                .expect("fjall persist");
        }
        written
    }

    /// The per-user load: all rows of one user, decoding each version.
    fn load_user(&self, user: u64) -> (u64, u64) {
        let mut rows = 0;
        let mut versions = 0u64;
        for guard in self.states.prefix(user.to_be_bytes()) {
            let (_key, value) = guard.into_inner().expect("fjall scan");
            versions = versions.wrapping_add(decode_version(&value));
            rows += 1;
        }
        (rows, versions)
    }
}

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(path: &Path) -> Self {
        let db = redb::Database::create(path.join("states.redb")).expect("open redb");
        Self { db }
    }

    fn load(&self, users: u64) {
        let mut rng = Rng(0x10AD);
        let chunk = 500;
        let mut first = 0;
        while first < users {
            let count = chunk.min(users - first);
            let txn = self.db.begin_write().expect("redb begin_write");
            {
                let mut table = txn.open_table(REDB_TABLE).expect("redb open_table");
                for (key, value) in seed_rows(&mut rng, first, count) {
                    table
                        .insert(&key, value.as_slice())
                        .expect("redb seed insert");
                }
            }
            txn.commit().expect("redb seed commit");
            first += count;
        }
    }

    /// The versioned upsert: read, compare, and write the newer rows in one
    /// write transaction committed with `durability`.
    fn upsert(&self, rows: Vec<([u8; 16], Vec<u8>)>, durability: Durability) -> usize {
        let mut txn = self.db.begin_write().expect("redb begin_write");
        txn.set_durability(durability).expect("redb set_durability");
        let mut written = 0;
        {
            let mut table = txn.open_table(REDB_TABLE).expect("redb open_table");
            for (key, value) in rows {
                let newer = match table.get(&key).expect("redb get") {
                    Some(stored) => decode_version(stored.value()) < decode_version(&value),
                    None => true,
                };
                if newer {
                    table.insert(&key, value.as_slice()).expect("redb insert");
                    written += 1;
                }
            }
        }
        txn.commit().expect("redb commit");
        written
    }

    /// The per-user load: all rows of one user, decoding each version.
    fn load_user(&self, user: u64) -> (u64, u64) {
        let txn = self.db.begin_read().expect("redb begin_read");
        let table = txn.open_table(REDB_TABLE).expect("redb open_table");
        let lo = encode_key(user, 0);
        let hi = encode_key(user, u64::MAX);
        let mut rows = 0;
        let mut versions = 0u64;
        for entry in table.range::<&[u8; 16]>(&lo..=&hi).expect("redb range") {
            let (_key, value) = entry.expect("redb scan");
            versions = versions.wrapping_add(decode_version(value.value()));
            rows += 1;
        }
        (rows, versions)
    }
}

fn users_from_env() -> u64 {
    std::env::var("EMBEDDED_STORES_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_USERS)
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let users = users_from_env();
    let total_rows: u64 = (0..users).map(channels_of).sum();

    let fjall_dir = tempfile::Builder::new()
        .prefix("embedded_stores_fjall")
        .tempdir()
        .expect("tempdir");
    let redb_dir = tempfile::Builder::new()
        .prefix("embedded_stores_redb")
        .tempdir()
        .expect("tempdir");

    let fjall_1g_dir = tempfile::Builder::new()
        .prefix("embedded_stores_fjall_1g")
        .tempdir()
        .expect("tempdir");

    let fjall = Fjall::open(fjall_dir.path(), None);
    let started = Instant::now();
    fjall.load(users);
    eprintln!(
        "setup: fjall loaded {users} users, {total_rows} rows in {:.1?} ({} MiB on disk)",
        started.elapsed(),
        dir_size(fjall_dir.path()) >> 20
    );

    // The same store with redb's default cache size (1 GiB) instead of fjall's
    // 32 MiB, to tell the engines apart from their default cache sizes.
    let fjall_1g = Fjall::open(fjall_1g_dir.path(), Some(REDB_DEFAULT_CACHE));
    let started = Instant::now();
    fjall_1g.load(users);
    eprintln!(
        "setup: fjall (1 GiB cache) loaded {users} users, {total_rows} rows in {:.1?} ({} MiB on disk)",
        started.elapsed(),
        dir_size(fjall_1g_dir.path()) >> 20
    );

    let redb = Redb::open(redb_dir.path());
    let started = Instant::now();
    redb.load(users);
    eprintln!(
        "setup: redb loaded {users} users, {total_rows} rows in {:.1?} ({} MiB on disk)",
        started.elapsed(),
        dir_size(redb_dir.path()) >> 20
    );

    // Both stores must hold the same rows.
    let (sequence, mean_rows) = scan_sequence(users);
    for &index in sequence.iter().take(64) {
        let expected = channels_of(index);
        assert_eq!(fjall.load_user(user_id(index)).0, expected);
        assert_eq!(fjall_1g.load_user(user_id(index)).0, expected);
        assert_eq!(redb.load_user(user_id(index)).0, expected);
    }

    let mut criterion = Criterion::default().configure_from_args();

    {
        let mut group = criterion.benchmark_group("load");
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
            .throughput(Throughput::Elements(mean_rows));
        let mut next = 0;
        group.bench_function("fjall_prefix", |b| {
            b.iter(|| {
                let user = user_id(sequence[next % sequence.len()]);
                next += 1;
                black_box(fjall.load_user(user))
            })
        });
        let mut next = 0;
        group.bench_function("fjall_cache1g_prefix", |b| {
            b.iter(|| {
                let user = user_id(sequence[next % sequence.len()]);
                next += 1;
                black_box(fjall_1g.load_user(user))
            })
        });
        let mut next = 0;
        group.bench_function("redb_range", |b| {
            b.iter(|| {
                let user = user_id(sequence[next % sequence.len()]);
                next += 1;
                black_box(redb.load_user(user))
            })
        });
        group.finish();
    }

    {
        let mut group = criterion.benchmark_group("upsert");
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
            .throughput(Throughput::Elements(BATCH as u64));

        // Every variant sees its own deterministic batch stream. Variants of one
        // engine share a store, so the version counter is shared and only grows, starting past every seeded version (at most
        // 1,000): only the rows deliberately made stale are rejected.
        let variants: [(&str, u64); 5] = [
            ("fjall_buffer", 1),
            ("fjall_syncall", 2),
            ("fjall_cache1g_buffer", 5),
            ("redb_immediate", 3),
            ("redb_none", 4),
        ];
        let mut next_version = 1_000_000;
        for (name, seed) in variants {
            let mut rng = Rng(0xBA7C4 ^ seed);
            let mut written = 0usize;
            let mut batches = 0usize;
            group.bench_function(name, |b| {
                b.iter_batched(
                    || upsert_batch(&mut rng, users, &mut next_version),
                    |rows| {
                        let n = match name {
                            "fjall_buffer" => fjall.upsert(rows, false),
                            "fjall_syncall" => fjall.upsert(rows, true),
                            "fjall_cache1g_buffer" => fjall_1g.upsert(rows, false),
                            "redb_immediate" => redb.upsert(rows, Durability::Immediate),
                            _ => redb.upsert(rows, Durability::None),
                        };
                        written += n;
                        batches += 1;
                        n
                    },
                    BatchSize::SmallInput,
                )
            });
            eprintln!(
                "upsert/{name}: {batches} batches, {:.1}% of rows written (rest stale)",
                100.0 * written as f64 / (batches * BATCH).max(1) as f64
            );
        }
        group.finish();
    }

    // Make any non-durable redb commits durable before closing, as a service would.
    let txn = redb.db.begin_write().expect("redb begin_write");
    txn.commit().expect("redb final commit");
    eprintln!(
        "after: fjall {} MiB, fjall (1 GiB cache) {} MiB, redb {} MiB on disk",
        dir_size(fjall_dir.path()) >> 20,
        dir_size(fjall_1g_dir.path()) >> 20,
        dir_size(redb_dir.path()) >> 20
    );

    criterion.final_summary();
}
