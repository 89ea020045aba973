//! The embedded store's reader threads: a small fixed pool that runs user
//! loads, urgent ones (a request waits for that one user) before background
//! ones (the cold users of a mention fan-out).
//!
//! Why not Tokio's blocking pool: it grows a thread per concurrent load, and
//! a burst of cold loads (a fan-out to hundreds of uncached users) then puts
//! dozens of CPU-bound range reads on the run queue beside the request
//! workers, so every cached request waits its turn behind them. A fixed pool
//! bounds the CPU that loads can take at once, and the priority order keeps
//! a connecting user from queueing behind a fan-out's loads. The threads
//! run under `SCHED_IDLE`, like the writer (see `priority`): a load waits
//! for a request worker to go idle instead of taking the core from the calls
//! queued on it. The queue is bounded too: past [`MAX_QUEUED`] waiting
//! loads, a load fails at once as unavailable instead of growing memory and
//! latency without bound.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::super::{LoadPriority, StoreError};
use super::priority::run_in_the_background;
use crate::ids::UserId;

/// Loads waiting for a reader thread, past which loads are refused.
pub const MAX_QUEUED: usize = 8_192;

type Job = Box<dyn FnOnce() + Send>;

/// The reader pool; the threads end when it is dropped.
pub struct Readers {
    shared: Arc<Shared>,
}

struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
}

#[derive(Default)]
struct Queues {
    urgent: VecDeque<Job>,
    /// Each with the user it loads, so that it can be expedited.
    background: VecDeque<(UserId, Job)>,
    closed: bool,
}

impl Queues {
    fn len(&self) -> usize {
        self.urgent.len() + self.background.len()
    }

    fn next(&mut self) -> Option<Job> {
        self.urgent
            .pop_front()
            .or_else(|| self.background.pop_front().map(|(_, job)| job))
    }
}

impl Readers {
    /// Starts `threads` reader threads (at least one).
    pub fn start(threads: usize) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
        });
        for index in 0..threads.max(1) {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("store-reader-{index}"))
                .spawn(move || {
                    run_in_the_background("store-reader");
                    shared.serve()
                })
                .map_err(|error| {
                    StoreError::Worker(format!("cannot start a store reader thread: {error}"))
                })?;
        }
        Ok(Self { shared })
    }

    /// Runs `work`, the load of `user_id`, on a reader thread, after every
    /// queued load of a higher priority, and returns its result.
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
            let queued = queues.len();
            if queued >= MAX_QUEUED {
                return Err(StoreError::Unavailable(format!(
                    "{queued} loads already wait for the embedded store's readers"
                )));
            }
            match priority {
                LoadPriority::Urgent => queues.urgent.push_back(job),
                LoadPriority::Background => queues.background.push_back((user_id, job)),
            }
        }
        self.shared.ready.notify_one();
        result.await.map_err(|_| {
            StoreError::Worker("a store reader thread stopped before finishing a load".to_owned())
        })?
    }

    /// Moves the queued background load of `user_id`, if any, to the back
    /// of the urgent queue. (A scan of the background queue, under its
    /// lock: at most [`MAX_QUEUED`] entries, once per load a request joins.)
    pub fn expedite(&self, user_id: UserId) {
        let mut queues = self.shared.queues.lock();
        let Some(position) = queues
            .background
            .iter()
            .position(|(queued, _)| *queued == user_id)
        else {
            return;
        };
        if let Some((_, job)) = queues.background.remove(position) {
            queues.urgent.push_back(job);
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.shared.queues.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

impl Shared {
    /// A reader thread's loop: runs jobs, urgent first, until the pool is
    /// dropped and its queues are empty.
    fn serve(&self) {
        loop {
            let job = {
                let mut queues = self.queues.lock();
                loop {
                    if let Some(job) = queues.next() {
                        break job;
                    }
                    if queues.closed {
                        return;
                    }
                    self.ready.wait(&mut queues);
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

    /// Occupies the pool's only thread until the returned sender is dropped
    /// or sent to; returns once the blocking job runs.
    async fn occupy(
        readers: &Arc<Readers>,
    ) -> (mpsc::Sender<()>, JoinHandle<Result<(), StoreError>>) {
        let (release, hold) = mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel();
        let readers = Arc::clone(readers);
        let job = tokio::spawn(async move {
            readers
                .run(LoadPriority::Urgent, user(1), move || {
                    let _ = started_tx.send(());
                    let _ = hold.recv();
                    Ok(())
                })
                .await
        });
        started.await.unwrap();
        (release, job)
    }

    fn user(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    async fn queued(readers: &Readers, at_least: usize) {
        while readers.shared.queues.lock().len() < at_least {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn urgent_loads_run_before_queued_background_ones() {
        let readers = Arc::new(Readers::start(1).unwrap());
        let (release, blocker) = occupy(&readers).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut loads = Vec::new();
        for (name, priority) in [
            ("background 1", LoadPriority::Background),
            ("background 2", LoadPriority::Background),
            ("urgent", LoadPriority::Urgent),
        ] {
            let readers_for_load = Arc::clone(&readers);
            let order = Arc::clone(&order);
            loads.push(tokio::spawn(async move {
                readers_for_load
                    .run(priority, user(2), move || {
                        order.lock().push(name);
                        Ok(())
                    })
                    .await
            }));
            // Each is queued before the next is sent.
            queued(&readers, loads.len()).await;
        }
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        for load in loads {
            load.await.unwrap().unwrap();
        }
        assert_eq!(
            *order.lock(),
            vec!["urgent", "background 1", "background 2"]
        );
    }

    #[tokio::test]
    async fn an_expedited_background_load_runs_before_the_others() {
        let readers = Arc::new(Readers::start(1).unwrap());
        let (release, blocker) = occupy(&readers).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut loads = Vec::new();
        for id in [10, 11, 12] {
            let readers_for_load = Arc::clone(&readers);
            let order = Arc::clone(&order);
            loads.push(tokio::spawn(async move {
                readers_for_load
                    .run(LoadPriority::Background, user(id), move || {
                        order.lock().push(id);
                        Ok(())
                    })
                    .await
            }));
            queued(&readers, loads.len()).await;
        }
        readers.expedite(user(12));
        // A user with no queued load: nothing moves.
        readers.expedite(user(99));
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        for load in loads {
            load.await.unwrap().unwrap();
        }
        assert_eq!(*order.lock(), vec![12, 10, 11]);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_loads_as_unavailable() {
        let readers = Arc::new(Readers::start(1).unwrap());
        let (release, blocker) = occupy(&readers).await;
        let mut waiting = Vec::new();
        for _ in 0..MAX_QUEUED {
            let readers = Arc::clone(&readers);
            waiting.push(tokio::spawn(async move {
                readers
                    .run(LoadPriority::Background, user(3), || Ok(()))
                    .await
            }));
        }
        queued(&readers, MAX_QUEUED).await;
        let refused = readers.run(LoadPriority::Urgent, user(4), || Ok(())).await;
        assert!(matches!(refused, Err(StoreError::Unavailable(_))));
        drop(release);
        blocker.await.unwrap().unwrap();
        for job in waiting {
            job.await.unwrap().unwrap();
        }
    }
}
