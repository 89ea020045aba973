//! The readers of the embedded store's background loads run under Linux's
//! `SCHED_IDLE` policy, so that a request worker that wakes up takes the CPU
//! from them at once. The readers of urgent loads, and the writer, run
//! under `SCHED_BATCH` (see the end).
//!
//! Both do CPU work that requests do not wait for call by call: the
//! writer's commits are write-behind, and a reader's load is waited for by
//! one call only, while every call queued on the worker waits for the
//! worker. At normal priority a reader woken by a cold user's load took the
//! core from the worker in the middle of its calls: with the cache filling
//! from a full store, the p99 was 0.8 to 1.1 ms against 0.31 to 0.34 ms
//! with the readers idle (BENCHMARKS.md, "The cache's first minutes").
//! (A merely lowered nice value lets a thread finish its time slice first:
//! with the writer at nice 10, before it gave way itself (`paced`), the
//! soak's median per-second p99 was 4.1 ms; under `SCHED_IDLE`, 2.6 ms.)
//!
//! It is not a strict priority: a request thread that has used more than
//! its share of a busy core can still wait for them until the next
//! scheduler tick, and on a host whose every core is busy with request
//! workers, loads get only a small share of the CPU until some core goes
//! idle (the overload limits then refuse new calls; see `overload`).
//!
//! That small share is what an urgent load cannot live with: a call waits
//! for it. In the soak, the readers spent 2.8 to 3.1 s of each two-minute
//! run runnable but not run (BENCHMARKS.md, "Urgent loads get their share
//! of a busy core"). So urgent readers run under
//! `SCHED_BATCH` instead: like `SCHED_IDLE`, a thread woken under it does
//! not preempt the running worker (the kernel leaves that to the next tick),
//! but it has a normal thread's weight, so it gets its fair share of a busy
//! core. An unprivileged thread can leave `SCHED_BATCH` but not
//! `SCHED_IDLE`, which is why the two kinds of load have threads of their
//! own.
//!
//! The writer cannot live with almost none either: write-behind must keep
//! up, or the dirty states pile up until writes are refused. Beside a busy
//! process on its core, under `SCHED_IDLE` it ran 5 ms in a 60-s soak and
//! wrote nothing (BENCHMARKS.md, "The writer beside a busy neighbour"). So
//! it runs under `SCHED_BATCH` at nice [`BACKGROUND_NICE`], a tenth of a
//! request thread's weight, and gives way itself after each quantum of its
//! CPU time (`paced`).

/// The nice value where `SCHED_IDLE` cannot be set, and the writer's: a
/// weight of 110 against a request thread's 1,024, roughly a tenth of a
/// contended CPU.
const BACKGROUND_NICE: i32 = 10;

/// Puts the calling thread under `SCHED_IDLE` (scheduling policies are per
/// thread on Linux), or at nice [`BACKGROUND_NICE`] if that is refused.
/// Failure only costs latency, so it is logged, not fatal.
pub(super) fn run_in_the_background(thread: &str) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0
    // names the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        return;
    }
    // SAFETY: setpriority has no memory-safety preconditions; with
    // PRIO_PROCESS and `who` 0, it applies to the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) } != 0 {
        tracing::debug!(thread, "could not lower a store thread's priority");
    }
}

/// Puts the calling thread under `SCHED_BATCH` at its nice value (see the
/// module's notes). Failure leaves it at normal priority, which only costs
/// latency, so it is logged, not fatal.
pub(super) fn run_without_preempting(thread: &str) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0
    // names the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        tracing::debug!(thread, "could not put a store thread under SCHED_BATCH");
    }
}

/// Puts the calling thread under `SCHED_BATCH` at nice [`BACKGROUND_NICE`]
/// (the writer's policy; see the module's notes). Failure leaves it at
/// normal priority, which only costs latency, so it is logged, not fatal.
pub(super) fn run_behind_requests(thread: &str) {
    run_without_preempting(thread);
    // SAFETY: setpriority has no memory-safety preconditions; with
    // PRIO_PROCESS and `who` 0, it applies to the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) } != 0 {
        tracing::debug!(thread, "could not lower a store thread's priority");
    }
}
