//! The writer thread beside threads that keep its CPU busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::tests::{load, state, write};
use super::*;

/// Pins the calling thread, and the threads it starts from now on, to the
/// CPU it runs on.
fn pin_to_this_cpu() {
    // SAFETY: sched_getcpu has no preconditions; `set` is a zeroed cpu_set_t
    // that CPU_SET and sched_setaffinity only read and write in place, with
    // its own size; pid 0 names the calling thread.
    unsafe {
        let cpu = usize::try_from(libc::sched_getcpu()).unwrap();
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let pinned = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(pinned, 0, "{}", std::io::Error::last_os_error());
    }
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn the_writer_keeps_writing_while_busy_threads_share_its_cpu() {
    pin_to_this_cpu();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    // Two threads of normal priority keep the store's only CPU busy: a
    // writer under SCHED_IDLE got almost none of it, and wrote nothing.
    let stop = Arc::new(AtomicBool::new(false));
    // Should the test fail, the spinners stop with it.
    let _stop_on_exit = StopOnDrop(Arc::clone(&stop));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let batches = 20;
    let written = runtime.block_on(async {
        let writes = async {
            for user in 1..=batches {
                let rows: Arc<[RowWrite]> = (1..=200)
                    .map(|channel| write(user, state(channel, 10, 1), false))
                    .collect();
                store.write_batch(rows).await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(60), writes).await
    });
    stop.store(true, Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
    assert!(written.is_ok(), "{batches} batches not written in 60 s");
    let last = runtime.block_on(load(&store, UserId::new(batches).unwrap()));
    assert_eq!(last.states.len(), 200);
}
