//! The reader pools: which reader runs a load, and when.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::readers::{MAX_QUEUED, Readers};
use crate::ids::UserId;
use crate::store::{LoadPriority, StoreError};

/// Occupies the only reader thread of `priority` until the returned
/// sender is dropped or sent to; returns once the blocking job runs.
async fn occupy(
    readers: &Arc<Readers>,
    priority: LoadPriority,
) -> (mpsc::Sender<()>, JoinHandle<Result<(), StoreError>>) {
    let (release, hold) = mpsc::channel::<()>();
    let hold = Mutex::new(hold);
    let (started_tx, started) = oneshot::channel();
    let started_tx = Mutex::new(Some(started_tx));
    let readers = Arc::clone(readers);
    let job = tokio::spawn(async move {
        readers
            .run(priority, user(1), move || {
                if let Some(started) = started_tx.lock().take() {
                    let _ = started.send(());
                }
                let _ = hold.lock().recv();
                Ok(())
            })
            .await
    });
    started.await.unwrap();
    (release, job)
}

/// `future`'s output, or a failed test if it takes 30 s (what a load
/// queued behind a held reader would do).
async fn within_bound<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(30), future)
        .await
        .expect("the load waited for a held reader of the other priority")
}

fn user(id: u64) -> UserId {
    UserId::new(id).unwrap()
}

async fn queued(readers: &Readers, priority: LoadPriority, at_least: usize) {
    while readers.queued(priority) < at_least {
        tokio::task::yield_now().await;
    }
}

/// Queues a load of `id` at `priority` that records `id` in `order`.
fn record_load(
    readers: &Arc<Readers>,
    order: &Arc<Mutex<Vec<u64>>>,
    priority: LoadPriority,
    id: u64,
) -> JoinHandle<Result<(), StoreError>> {
    let readers = Arc::clone(readers);
    let order = Arc::clone(order);
    tokio::spawn(async move {
        readers
            .run(priority, user(id), move || {
                order.lock().push(id);
                Ok(())
            })
            .await
    })
}

/// Queues recording loads of `ids` at `priority` (their reader held), each
/// once the one before it is queued, so they queue in that order.
async fn queue_in_turn(
    readers: &Arc<Readers>,
    order: &Arc<Mutex<Vec<u64>>>,
    priority: LoadPriority,
    ids: &[u64],
) -> Vec<JoinHandle<Result<(), StoreError>>> {
    let mut loads = Vec::new();
    for &id in ids {
        loads.push(record_load(readers, order, priority, id));
        queued(readers, priority, loads.len()).await;
    }
    loads
}

#[tokio::test]
async fn urgent_loads_do_not_wait_for_busy_background_readers() {
    let readers = Arc::new(Readers::start(1).unwrap());
    let (release, blocker) = occupy(&readers, LoadPriority::Background).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let waiting = [
        record_load(&readers, &order, LoadPriority::Background, 10),
        record_load(&readers, &order, LoadPriority::Background, 11),
    ];
    queued(&readers, LoadPriority::Background, 2).await;

    let urgent = within_bound(readers.run(LoadPriority::Urgent, user(2), || Ok(2))).await;
    assert_eq!(urgent.unwrap(), 2);
    assert!(order.lock().is_empty(), "no background load ran yet");

    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    for load in waiting {
        load.await.unwrap().unwrap();
    }
    assert_eq!(*order.lock(), vec![10, 11]);
}

#[tokio::test]
async fn an_expedited_background_load_runs_on_an_urgent_reader() {
    let readers = Arc::new(Readers::start(1).unwrap());
    let (release, blocker) = occupy(&readers, LoadPriority::Background).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut loads = queue_in_turn(&readers, &order, LoadPriority::Background, &[10, 11, 12]).await;
    // A user with no queued load: nothing moves.
    readers.expedite(user(99));
    assert_eq!(readers.queued(LoadPriority::Background), 3);

    readers.expedite(user(12));
    // It runs while the background reader is still held.
    let expedited = loads.pop().unwrap();
    within_bound(expedited).await.unwrap().unwrap();
    assert_eq!(*order.lock(), vec![12]);

    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    for load in loads {
        load.await.unwrap().unwrap();
    }
    assert_eq!(*order.lock(), vec![12, 10, 11]);
}

/// Starts a background load of `id` whose first run holds its reader
/// until the sender is dropped or sent to and answers 1; a second run
/// answers 2 at once. Returns once the first run has started, with the
/// count of runs.
async fn held_background_load(
    readers: &Arc<Readers>,
    id: u64,
) -> (
    mpsc::Sender<()>,
    Arc<AtomicUsize>,
    JoinHandle<Result<u32, StoreError>>,
) {
    let (release, hold) = mpsc::channel::<()>();
    let hold = Mutex::new(hold);
    let (started_tx, started) = oneshot::channel();
    let started_tx = Mutex::new(Some(started_tx));
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let readers = Arc::clone(readers);
    let load = tokio::spawn(async move {
        readers
            .run(LoadPriority::Background, user(id), move || {
                if counted.fetch_add(1, Ordering::SeqCst) > 0 {
                    return Ok(2);
                }
                if let Some(started) = started_tx.lock().take() {
                    let _ = started.send(());
                }
                let _ = hold.lock().recv();
                Ok(1)
            })
            .await
    });
    started.await.unwrap();
    (release, runs, load)
}

#[tokio::test]
async fn an_expedited_running_background_load_runs_again_on_an_urgent_reader() {
    let readers = Arc::new(Readers::start(1).unwrap());
    let (release, runs, load) = held_background_load(&readers, 7).await;

    readers.expedite(user(7));
    // Answered by the urgent run while the background reader still holds the first.
    assert_eq!(within_bound(load).await.unwrap().unwrap(), 2);
    // A second expedite finds nothing to run again.
    readers.expedite(user(7));

    release.send(()).unwrap();
    // The first run ends unheard, and its reader goes on to the next load.
    let next = within_bound(readers.run(LoadPriority::Background, user(8), || Ok(8))).await;
    assert_eq!(next.unwrap(), 8);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // A reader forgets its load just after answering it.
    within_bound(async {
        while readers.running() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_load_answered_before_its_second_run_starts_runs_once() {
    let readers = Arc::new(Readers::start(1).unwrap());
    let (release_urgent, urgent_blocker) = occupy(&readers, LoadPriority::Urgent).await;
    let (release, runs, load) = held_background_load(&readers, 7).await;

    readers.expedite(user(7));
    queued(&readers, LoadPriority::Urgent, 1).await;
    release.send(()).unwrap();
    assert_eq!(within_bound(load).await.unwrap().unwrap(), 1);

    release_urgent.send(()).unwrap();
    urgent_blocker.await.unwrap().unwrap();
    // The urgent reader has taken the second run off its queue once
    // this load, queued behind it, is answered.
    let next = within_bound(readers.run(LoadPriority::Urgent, user(9), || Ok(9))).await;
    assert_eq!(next.unwrap(), 9);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn urgent_loads_run_in_the_order_they_came() {
    let readers = Arc::new(Readers::start(1).unwrap());
    let (release, blocker) = occupy(&readers, LoadPriority::Urgent).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let loads = queue_in_turn(&readers, &order, LoadPriority::Urgent, &[20, 21, 22]).await;
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    for load in loads {
        load.await.unwrap().unwrap();
    }
    assert_eq!(*order.lock(), vec![20, 21, 22]);
}

#[tokio::test]
async fn a_full_queue_refuses_loads_of_its_priority_as_unavailable() {
    let readers = Arc::new(Readers::start(1).unwrap());
    let (release, blocker) = occupy(&readers, LoadPriority::Background).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let waiting: Vec<_> = (0..MAX_QUEUED)
        .map(|index| {
            record_load(
                &readers,
                &order,
                LoadPriority::Background,
                1_000 + index as u64,
            )
        })
        .collect();
    queued(&readers, LoadPriority::Background, MAX_QUEUED).await;

    let refused = readers
        .run(LoadPriority::Background, user(4), || Ok(()))
        .await;
    match refused {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("background loads"), "{message}");
        }
        other => panic!("a load past a full queue: {other:?}"),
    }
    // The urgent queue has room of its own.
    let urgent = within_bound(readers.run(LoadPriority::Urgent, user(5), || Ok(5))).await;
    assert_eq!(urgent.unwrap(), 5);

    drop(release);
    blocker.await.unwrap().unwrap();
    for job in waiting {
        job.await.unwrap().unwrap();
    }
    assert_eq!(order.lock().len(), MAX_QUEUED);
}
