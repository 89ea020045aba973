//! The embedded store's reader threads: two small fixed pools that run user
//! loads, one for urgent loads (a request waits for that one user) and one
//! for background loads (the cold users of a mention fan-out).
//!
//! Why not Tokio's blocking pool: it grows a thread per concurrent load, and
//! a burst of cold loads (a fan-out to hundreds of uncached users) then puts
//! dozens of CPU-bound range reads on the run queue beside the request
//! workers, so every cached request waits its turn behind them. Fixed pools
//! bound the CPU that loads can take at once, and separate pools keep a
//! connecting user from queueing behind a fan-out's loads.
//!
//! The two pools run at different priorities (see `priority`). Background
//! readers run under `SCHED_IDLE`, like the writer: a fan-out's loads wait
//! for a request worker to go idle instead of taking the core from the calls
//! queued on it. Urgent readers run under `SCHED_BATCH`: they do not take
//! the core from a request worker when they wake, but they get a fair share
//! of it while the workers stay busy. Under `SCHED_IDLE` they got almost
//! none then, and a call waiting for its user's load waited as long as the
//! workers had work, while the calls of cached users went on (BENCHMARKS.md,
//! "Urgent loads get their share of a busy core").
//!
//! Each queue is bounded: past [`MAX_QUEUED`] waiting loads of its kind, a
//! load fails at once as unavailable instead of growing memory and latency
//! without bound. A full background queue does not refuse urgent loads.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::super::{LoadPriority, StoreError};
use super::priority::{run_in_the_background, run_without_preempting};
use crate::ids::UserId;

/// Loads of one priority waiting for a reader thread, past which loads of
/// that priority are refused.
pub const MAX_QUEUED: usize = 8_192;

type Job = Box<dyn FnOnce() + Send>;

/// The reader pools; the threads end when it is dropped.
pub struct Readers {
    shared: Arc<Shared>,
}

struct Shared {
    queues: Mutex<Queues>,
    /// Signalled for each urgent load queued (or background load expedited).
    urgent_ready: Condvar,
    /// Signalled for each background load queued.
    background_ready: Condvar,
}

#[derive(Default)]
struct Queues {
    urgent: VecDeque<Job>,
    /// Each with the user it loads, so that it can be expedited.
    background: VecDeque<(UserId, Job)>,
    closed: bool,
}

impl Queues {
    fn len(&self, priority: LoadPriority) -> usize {
        match priority {
            LoadPriority::Urgent => self.urgent.len(),
            LoadPriority::Background => self.background.len(),
        }
    }

    fn next(&mut self, priority: LoadPriority) -> Option<Job> {
        match priority {
            LoadPriority::Urgent => self.urgent.pop_front(),
            LoadPriority::Background => self.background.pop_front().map(|(_, job)| job),
        }
    }
}

impl Readers {
    /// Starts `threads` reader threads (at least one) for urgent loads, and
    /// as many for background loads.
    pub fn start(threads: usize) -> Result<Self, StoreError> {
        // Made first, so that should a thread fail to start, dropping it
        // ends the threads already started.
        let readers = Self {
            shared: Arc::new(Shared {
                queues: Mutex::new(Queues::default()),
                urgent_ready: Condvar::new(),
                background_ready: Condvar::new(),
            }),
        };
        for priority in [LoadPriority::Urgent, LoadPriority::Background] {
            for index in 0..threads.max(1) {
                let shared = Arc::clone(&readers.shared);
                let (name, set_priority): (&str, fn(&str)) = match priority {
                    LoadPriority::Urgent => ("store-reader", run_without_preempting),
                    LoadPriority::Background => ("store-bgload", run_in_the_background),
                };
                std::thread::Builder::new()
                    .name(format!("{name}-{index}"))
                    .spawn(move || {
                        set_priority(name);
                        shared.serve(priority)
                    })
                    .map_err(|error| {
                        StoreError::Worker(format!("cannot start a store reader thread: {error}"))
                    })?;
            }
        }
        Ok(readers)
    }

    /// Runs `work`, the load of `user_id`, on a reader thread of its
    /// priority, after the loads queued before it, and returns its result.
    pub async fn run<T, F>(
        &self,
        priority: LoadPriority,
        user_id: UserId,
        work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        {
            let mut queues = self.shared.queues.lock();
            let queued = queues.len(priority);
            if queued >= MAX_QUEUED {
                let kind = match priority {
                    LoadPriority::Urgent => "urgent",
                    LoadPriority::Background => "background",
                };
                return Err(StoreError::Unavailable(format!(
                    "{queued} {kind} loads already wait for the embedded store's readers"
                )));
            }
            match priority {
                LoadPriority::Urgent => queues.urgent.push_back(job),
                LoadPriority::Background => queues.background.push_back((user_id, job)),
            }
        }
        self.shared.ready(priority).notify_one();
        result.await.map_err(|_| {
            StoreError::Worker("a store reader thread stopped before finishing a load".to_owned())
        })?
    }

    /// Moves the queued background load of `user_id`, if any, to the back
    /// of the urgent queue. (A scan of the background queue, under its
    /// lock: at most [`MAX_QUEUED`] entries, once per load a request joins.)
    /// The urgent queue may then hold a few more than [`MAX_QUEUED`] loads.
    pub fn expedite(&self, user_id: UserId) {
        {
            let mut queues = self.shared.queues.lock();
            let Some(position) = queues
                .background
                .iter()
                .position(|(queued, _)| *queued == user_id)
            else {
                return;
            };
            let Some((_, job)) = queues.background.remove(position) else {
                return;
            };
            queues.urgent.push_back(job);
        }
        self.shared.urgent_ready.notify_one();
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.shared.queues.lock().closed = true;
        self.shared.urgent_ready.notify_all();
        self.shared.background_ready.notify_all();
    }
}

impl Shared {
    fn ready(&self, priority: LoadPriority) -> &Condvar {
        match priority {
            LoadPriority::Urgent => &self.urgent_ready,
            LoadPriority::Background => &self.background_ready,
        }
    }

    /// A reader thread's loop: runs the loads of `priority` until the pool
    /// is dropped and their queue is empty.
    fn serve(&self, priority: LoadPriority) {
        let ready = self.ready(priority);
        loop {
            let job = {
                let mut queues = self.queues.lock();
                loop {
                    if let Some(job) = queues.next(priority) {
                        break job;
                    }
                    if queues.closed {
                        return;
                    }
                    ready.wait(&mut queues);
                }
            };
            job();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use tokio::task::JoinHandle;

    /// Occupies the only reader thread of `priority` until the returned
    /// sender is dropped or sent to; returns once the blocking job runs.
    async fn occupy(
        readers: &Arc<Readers>,
        priority: LoadPriority,
    ) -> (mpsc::Sender<()>, JoinHandle<Result<(), StoreError>>) {
        let (release, hold) = mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel();
        let readers = Arc::clone(readers);
        let job = tokio::spawn(async move {
            readers
                .run(priority, user(1), move || {
                    let _ = started_tx.send(());
                    let _ = hold.recv();
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
        while readers.shared.queues.lock().len(priority) < at_least {
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
        let mut loads = Vec::new();
        for id in [10, 11, 12] {
            loads.push(record_load(&readers, &order, LoadPriority::Background, id));
            queued(&readers, LoadPriority::Background, loads.len()).await;
        }
        // A user with no queued load: nothing moves.
        readers.expedite(user(99));
        assert_eq!(
            readers.shared.queues.lock().len(LoadPriority::Background),
            3
        );

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

    #[tokio::test]
    async fn urgent_loads_run_in_the_order_they_came() {
        let readers = Arc::new(Readers::start(1).unwrap());
        let (release, blocker) = occupy(&readers, LoadPriority::Urgent).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut loads = Vec::new();
        for id in [20, 21, 22] {
            loads.push(record_load(&readers, &order, LoadPriority::Urgent, id));
            queued(&readers, LoadPriority::Urgent, loads.len()).await;
        }
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
}
