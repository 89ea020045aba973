//! The cache engine alone, no gRPC: cached Ack, AddMentions and Get on one
//! thread (and Ack with and without scale-out's serving check) and on two (distinct partitions, then one shared partition), a
//! plain CPU loop measured the same way to show how this machine's two
//! cores scale, the write-behind's cost per dirty state, and the embedded
//! store's batch write and user load.
//!
//! ```sh
//! cargo bench --bench cache_engine
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use readstates::cache::{Cache, CacheSettings};
use readstates::cluster::Ownership;
use readstates::ids::{ChannelId, MessageId, UserId};
use readstates::store::{EmbeddedStore, LoadPriority, RowWrite, Store};

const USERS: u64 = 10_000;
const CHANNELS_PER_USER: u64 = 20;

fn settings() -> CacheSettings {
    CacheSettings {
        capacity: 10_000_000,
        partitions: 64,
        max_tracked_mentions: 1_000,
        max_dirty_states: usize::MAX,
        flush_delay: Duration::from_secs(3_600),
        flush_tick: Duration::from_secs(1),
    }
}

fn user(id: u64) -> UserId {
    UserId::new(id).unwrap_or_else(|_| unreachable!("bench ids are valid"))
}

fn channel(id: u64) -> ChannelId {
    ChannelId::new(id).unwrap_or_else(|_| unreachable!("bench ids are valid"))
}

fn message(id: u64) -> MessageId {
    MessageId::new(id).unwrap_or_else(|_| unreachable!("bench ids are valid"))
}

/// A cache holding `USERS` users of `CHANNELS_PER_USER` states each.
fn filled_cache(runtime: &tokio::runtime::Runtime, store: &EmbeddedStore) -> Arc<Cache> {
    let cache = Arc::new(Cache::new(&settings(), 0));
    runtime.block_on(async {
        for id in 1..=USERS {
            cache
                .write(store, user(id), |txn| {
                    for c in 1..=CHANNELS_PER_USER {
                        txn.ack(channel(c), message(1));
                    }
                })
                .await
                .unwrap_or_else(|error| panic!("filling the cache: {error}"));
        }
    });
    cache
}

/// Users of one partition only, to make two threads contend.
fn users_of_one_partition(cache: &Cache, count: usize) -> Vec<UserId> {
    let reference = cache.partition_of(user(1));
    (1..=USERS)
        .map(user)
        .filter(|id| cache.partition_of(*id) == reference)
        .take(count)
        .collect()
}

fn ack_loop(cache: &Cache, users: &[UserId], iterations: u64, start: u64) {
    for i in 0..iterations {
        let id = users[(i as usize) % users.len()];
        let c = channel(1 + i % CHANNELS_PER_USER);
        let m = message(start + i);
        let view = cache.try_write(id, |txn| txn.ack(c, m));
        black_box(view.is_ok());
    }
}

fn spin(iterations: u64) -> u64 {
    let mut x = iterations;
    for i in 0..iterations {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    x
}

fn single_thread(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = EmbeddedStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let cache = filled_cache(&runtime, &store);
    let mut group = c.benchmark_group("engine_1_thread");
    group.throughput(Throughput::Elements(1));

    let mut next = 2u64;
    group.bench_function("ack", |b| {
        b.iter(|| {
            next += 1;
            let id = user(1 + next % USERS);
            let c = channel(1 + next % CHANNELS_PER_USER);
            let m = message(next);
            black_box(cache.try_write(id, |txn| txn.ack(c, m)).is_ok())
        })
    });
    // A mention of an unread message and its removal (a deleted message), in
    // one lock hold: the pending list stays short, as in real traffic, and
    // the figure covers two operations.
    let mut mention = 1u64 << 40;
    group.bench_function("add_and_remove_mention", |b| {
        b.iter(|| {
            mention += 1;
            let id = user(1 + mention % USERS);
            let c = channel(1 + mention % CHANNELS_PER_USER);
            let m = message(mention);
            black_box(
                cache
                    .try_write(id, |txn| {
                        txn.add_mention(c, m);
                        txn.remove_mention(c, m)
                    })
                    .is_ok(),
            )
        })
    });
    let mut read = 0u64;
    group.bench_function("get", |b| {
        b.iter(|| {
            read += 1;
            let id = user(1 + read % USERS);
            let c = channel(1 + read % CHANNELS_PER_USER);
            black_box(cache.try_write(id, |txn| txn.view(c)).is_ok())
        })
    });
    group.bench_function("get_user_20_states", |b| {
        let mut views = Vec::with_capacity(CHANNELS_PER_USER as usize);
        b.iter(|| {
            read += 1;
            let id = user(1 + read % USERS);
            views.clear();
            black_box(
                cache
                    .try_write(id, |txn| txn.views_since(0, &mut views))
                    .is_ok(),
            );
        })
    });
    group.finish();
}

/// Ack on two identical caches, one of which asks, under the partition
/// lock, whether the user's slot is served (scale-out's check: a slot
/// hash, an atomic load and a clock read), alternately.
fn serving_check(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = EmbeddedStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let unchecked = filled_cache(&runtime, &store);
    let checked = filled_cache(&runtime, &store);
    let ownership = Ownership::serving_all(1024, Duration::from_secs(3_600));
    checked.set_serving_gate(Arc::new(ownership));
    let mut group = c.benchmark_group("engine_serving_check");
    group.throughput(Throughput::Elements(1));
    // One message counter: every ack moves its state forward.
    let mut next = 2u64;
    for round in 0..2 {
        for (name, cache) in [("ack_unchecked", &unchecked), ("ack_checked", &checked)] {
            group.bench_function(format!("{name}_{round}"), |b| {
                b.iter(|| {
                    next += 1;
                    let id = user(1 + next % USERS);
                    let c = channel(1 + next % CHANNELS_PER_USER);
                    let m = message(next);
                    black_box(cache.try_write(id, |txn| txn.ack(c, m)).is_ok())
                })
            });
        }
    }
    group.finish();
}

fn two_threads(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = EmbeddedStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let cache = filled_cache(&runtime, &store);
    let all_users: Vec<UserId> = (1..=USERS).map(user).collect();
    let shared = users_of_one_partition(&cache, 64);
    // Two disjoint user sets: (almost always) distinct partitions.
    let (evens, odds): (Vec<UserId>, Vec<UserId>) =
        all_users.iter().partition(|id| id.get() % 2 == 0);
    let one_partition = [users_of_one_partition(&cache, 64), shared];

    let mut group = c.benchmark_group("engine_threads");
    group.throughput(Throughput::Elements(1));
    let mut start = 1u64 << 30;
    group.bench_function("ack_1_thread", |b| {
        b.iter_custom(|iterations| {
            start += iterations;
            let began = Instant::now();
            ack_loop(&cache, &all_users, iterations, start);
            began.elapsed()
        })
    });
    for (name, sets) in [
        (
            "ack_2_threads_distinct_users",
            [evens.clone(), odds.clone()],
        ),
        ("ack_2_threads_one_partition", one_partition.clone()),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                start += iterations;
                let per_thread = iterations / 2 + 1;
                let began = Instant::now();
                std::thread::scope(|scope| {
                    for users in &sets {
                        let cache = &cache;
                        scope.spawn(move || ack_loop(cache, users, per_thread, start));
                    }
                });
                // Time per operation across both threads.
                began.elapsed()
            })
        });
    }
    group.bench_function("cpu_loop_1_thread", |b| {
        b.iter_custom(|iterations| {
            let began = Instant::now();
            black_box(spin(iterations * 20));
            began.elapsed()
        })
    });
    group.bench_function("cpu_loop_2_threads", |b| {
        b.iter_custom(|iterations| {
            let began = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| black_box(spin(iterations * 10)));
                }
            });
            began.elapsed()
        })
    });
    group.finish();
}

fn write_behind(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = EmbeddedStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let cache = filled_cache(&runtime, &store);
    let mut group = c.benchmark_group("write_behind");
    let dirty_states = USERS * CHANNELS_PER_USER;
    group.throughput(Throughput::Elements(dirty_states));
    // Taking every dirty state for a flush and marking it written: the
    // cache-side cost of writing behind, per dirty state.
    let mut round = 2u64;
    group.bench_function("snapshot_and_mark_written", |b| {
        b.iter_batched(
            || {
                round += 1;
                for id in 1..=USERS {
                    let _ = cache.try_write(user(id), |txn| {
                        for ch in 1..=CHANNELS_PER_USER {
                            txn.ack(channel(ch), message(round));
                        }
                    });
                }
            },
            |()| {
                let mut jobs = Vec::new();
                cache.take_flush_jobs(true, &mut jobs);
                for job in &jobs {
                    cache.mark_written(&job.rows);
                }
                black_box(jobs.len())
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn embedded_store(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = EmbeddedStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let cache = filled_cache(&runtime, &store);
    let mut jobs = Vec::new();
    cache.take_flush_jobs(true, &mut jobs);
    let rows: Vec<RowWrite> = jobs.into_iter().flat_map(|job| job.rows).collect();
    let batch: Arc<[RowWrite]> = rows[..512].to_vec().into();
    runtime
        .block_on(store.write_batch(rows.into()))
        .unwrap_or_else(|e| panic!("{e}"));

    let mut group = c.benchmark_group("embedded_store");
    group.throughput(Throughput::Elements(512));
    let mut version = 1u64 << 60;
    group.bench_function("write_batch_512_rows", |b| {
        b.iter_batched(
            || {
                version += 1;
                let rows: Vec<RowWrite> = batch
                    .iter()
                    .map(|row| {
                        let mut row = row.clone();
                        row.state.version = version;
                        row
                    })
                    .collect();
                Arc::<[RowWrite]>::from(rows)
            },
            |rows| runtime.block_on(store.write_batch(rows)),
            BatchSize::SmallInput,
        )
    });
    group.throughput(Throughput::Elements(CHANNELS_PER_USER));
    let mut next = 0u64;
    group.bench_function("load_user_20_states", |b| {
        b.iter(|| {
            next += 1;
            runtime.block_on(store.load_user(user(1 + next % USERS), LoadPriority::Urgent))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = single_thread, serving_check, two_threads, write_behind, embedded_store
}
criterion_main!(benches);
