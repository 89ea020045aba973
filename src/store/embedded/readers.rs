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
//!
//! A request that needs a user whose background load is under way makes it
//! urgent ([`Readers::expedite`]). A queued one moves to the urgent queue.
//! One already running on a background reader runs again on an urgent
//! reader, and the first run to finish answers: a background reader may
//! hold the load for as long as the core stays busy (beside a busy
//! neighbour, seconds; BENCHMARKS.md, "Urgent loads get their share of a
//! busy core").

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

/// A load as a reader thread runs it: the work, then the answer to the
/// call. It can run twice (an expedited running load), so it runs the work
/// only while the call is unanswered, and the first run to finish answers.
type Job = Arc<dyn Fn() + Send + Sync>;

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
    /// The background loads running now (at most one per background
    /// reader), until they end or are expedited.
    running: Vec<(UserId, Job)>,
    closed: bool,
}

impl Queues {
    fn len(&self, priority: LoadPriority) -> usize {
        match priority {
            LoadPriority::Urgent => self.urgent.len(),
            LoadPriority::Background => self.background.len(),
        }
    }

    /// The next load of `priority`; a background one is kept in `running`
    /// until [`Self::finished`].
    fn next(&mut self, priority: LoadPriority) -> Option<Job> {
        match priority {
            LoadPriority::Urgent => self.urgent.pop_front(),
            LoadPriority::Background => {
                let (user_id, job) = self.background.pop_front()?;
                self.running.push((user_id, Arc::clone(&job)));
                Some(job)
            }
        }
    }

    /// Forgets `job` as running (it may be gone already: expedited).
    fn finished(&mut self, job: &Job) {
        if let Some(position) = self
            .running
            .iter()
            .position(|(_, running)| Arc::ptr_eq(running, job))
        {
            self.running.swap_remove(position);
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
        F: Fn() -> Result<T, StoreError> + Send + Sync + 'static,
    {
        let (done, result) = oneshot::channel();
        // The work goes with the answer: what it holds (the database) is
        // released before the call hears, as a caller that then drops its
        // store may reopen the file at once (unless a second run of it is
        // still going: an expedited load's).
        let pending = Mutex::new(Some((Arc::new(work), done)));
        let job: Job = Arc::new(move || {
            let Some(work) = pending.lock().as_ref().map(|(work, _)| Arc::clone(work)) else {
                return;
            };
            let loaded = work();
            drop(work);
            if let Some((work, done)) = pending.lock().take() {
                drop(work);
                let _ = done.send(loaded);
            }
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

    /// Makes the background load of `user_id`, if any, urgent: a queued
    /// one moves to the back of the urgent queue; one running on a
    /// background reader is queued there too, to run again (once) unless
    /// the first run has answered by then. (A scan of the background queue,
    /// under its lock: at most [`MAX_QUEUED`] entries, once per load a
    /// request joins.) The urgent queue may then hold a few more than
    /// [`MAX_QUEUED`] loads.
    pub fn expedite(&self, user_id: UserId) {
        {
            let mut queues = self.shared.queues.lock();
            let of_user = |(loading, _): &(UserId, Job)| *loading == user_id;
            let job = match queues.background.iter().position(of_user) {
                Some(position) => queues.background.remove(position).map(|(_, job)| job),
                None => queues
                    .running
                    .iter()
                    .position(of_user)
                    .map(|position| queues.running.swap_remove(position).1),
            };
            let Some(job) = job else {
                return;
            };
            queues.urgent.push_back(job);
        }
        self.shared.urgent_ready.notify_one();
    }
}

#[cfg(test)]
impl Readers {
    /// Loads of `priority` waiting for a reader.
    pub(super) fn queued(&self, priority: LoadPriority) -> usize {
        self.shared.queues.lock().len(priority)
    }

    /// Background loads running now.
    pub(super) fn running(&self) -> usize {
        self.shared.queues.lock().running.len()
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
            if priority == LoadPriority::Background {
                self.queues.lock().finished(&job);
            }
        }
    }
}
