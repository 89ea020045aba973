//! The open connections of one port, with the calls each has open: the
//! table decides which connection to close when the cap is reached, and
//! which have outlived their first-request or idle timeout.
//!
//! A connection is closed by flagging it and waking its task (see
//! `stream`); it stays in the table, counted as open but no longer as a
//! candidate, until its task lets the socket go. Only an idle connection
//! is ever closed, and a call starting races its close on one atomic word
//! (its open calls and the closed flag), so a call either starts on an open
//! connection or finds it closed, and no lock is held for it.
//!
//! Every call finds its connection by its addresses in one of
//! [`KEY_SHARDS`] read-mostly maps, so calls on many cores do not meet on
//! one lock. The table's own `parking_lot` mutex guards short sections: an
//! insertion or removal per connection, and a scan of every entry at each
//! reaping round or eviction (a few nanoseconds an entry).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Context;

use futures_util::task::AtomicWaker;
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use super::ConnectionLimits;
use super::metrics::{PortConnections, ReapReason};

/// Identifies a connection the way a call sees it: its two addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    /// The server's end.
    pub local: SocketAddr,
    /// The client's end.
    pub peer: SocketAddr,
}

/// The open connections of one port.
pub struct ConnectionTable {
    limits: ConnectionLimits,
    /// Times are kept as milliseconds since this instant, in atomics.
    epoch: Instant,
    metrics: PortConnections,
    state: Mutex<State>,
    /// The connections by their addresses, sharded by the key's hash.
    by_key: Box<[RwLock<KeyMap>]>,
    /// ahash, randomly keyed: the hash is on the request path, and clients
    /// choose their ports, so it must not be predictable.
    hasher: ahash::RandomState,
}

/// Shards of the address map: a power of two, enough that calls on a few
/// dozen cores rarely read the same lock word.
pub const KEY_SHARDS: usize = 32;

type KeyMap = HashMap<ConnectionKey, Arc<Entry>, ahash::RandomState>;

#[derive(Default)]
struct State {
    next_id: u64,
    by_id: HashMap<u64, Arc<Entry>, ahash::RandomState>,
    /// Entries flagged to close whose sockets are still open.
    closing: usize,
}

/// The flag in [`Entry::calls`] that says the connection is closed; the
/// bits below it count the calls open.
const CLOSED: u64 = 1 << 63;

/// One open connection.
pub struct Entry {
    id: u64,
    key: ConnectionKey,
    opened_at_ms: u64,
    /// The table's epoch, for the idle time a call's end records.
    epoch: Instant,
    /// The calls open, and [`CLOSED`] once the connection is closed: a
    /// close succeeds only from 0 (no call open), and a call starts only
    /// while the flag is clear, in one compare-and-swap each.
    calls: AtomicU64,
    /// Whether a call ever started on this connection.
    served: AtomicBool,
    /// When the last call ended; written before `calls` is lowered.
    idle_since_ms: AtomicU64,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
}

/// Which half of a connection is waiting to be woken when it is closed.
#[derive(Debug, Clone, Copy)]
pub enum Half {
    Read,
    Write,
}

impl Entry {
    /// Returns whether the server closed this connection; otherwise makes
    /// sure `cx`'s task is woken when it does.
    pub fn poll_closed(&self, half: Half, cx: &Context<'_>) -> bool {
        if self.is_closed() {
            return true;
        }
        // Registered before the second look, so a close in between still
        // wakes the task.
        self.waker(half).register(cx.waker());
        self.is_closed()
    }

    /// Returns whether the server closed this connection.
    pub fn is_closed(&self) -> bool {
        self.calls.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Marks the start of a call, open until the returned guard is
    /// dropped; `None` once the connection is closed.
    pub fn start_call(self: &Arc<Self>) -> Option<CallGuard> {
        self.calls
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |calls| {
                (calls & CLOSED == 0).then_some(calls + 1)
            })
            .ok()?;
        self.served.store(true, Ordering::Release);
        Some(CallGuard {
            entry: Arc::clone(self),
        })
    }

    fn waker(&self, half: Half) -> &AtomicWaker {
        match half {
            Half::Read => &self.read_waker,
            Half::Write => &self.write_waker,
        }
    }

    /// Closes the connection if no call is open on it (a call may start
    /// at this very moment: then it stays open). Returns whether it closed.
    fn close_if_idle(&self) -> bool {
        let closed = self
            .calls
            .compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if closed {
            self.read_waker.wake();
            self.write_waker.wake();
        }
        closed
    }

    fn is_idle(&self) -> bool {
        self.calls.load(Ordering::Acquire) == 0
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Orders eviction candidates: connections that never started a call
    /// (port scans, stalled or silent clients) before those that did, then
    /// the longest idle first.
    fn eviction_rank(&self) -> (bool, u64) {
        let served = self.served.load(Ordering::Acquire);
        let idle_since = if served {
            self.idle_since_ms.load(Ordering::Acquire)
        } else {
            self.opened_at_ms
        };
        (served, idle_since)
    }
}

/// What became of a new connection.
pub enum Admission {
    /// Taken; `evicted` says whether another was closed to make room.
    Admitted { entry: Arc<Entry>, evicted: bool },
    /// The cap was reached with a call open on every connection: the new
    /// one must be closed at once.
    Refused,
}

impl ConnectionTable {
    /// Returns an empty table that enforces `limits` and counts in `metrics`.
    pub fn new(limits: ConnectionLimits, metrics: PortConnections) -> Self {
        Self {
            limits,
            epoch: Instant::now(),
            metrics,
            state: Mutex::new(State::default()),
            by_key: (0..KEY_SHARDS).map(|_| RwLock::default()).collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    fn shard(&self, key: &ConnectionKey) -> &RwLock<KeyMap> {
        let hash = self.hasher.hash_one(key) as usize;
        &self.by_key[hash % KEY_SHARDS]
    }

    /// Returns the limits the table enforces.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Returns how many connections hold a socket (those being closed too).
    pub fn open(&self) -> usize {
        self.state.lock().by_id.len()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes a new connection, closing the longest-idle one first when the
    /// cap is reached; refuses it when none is idle.
    pub fn admit(&self, key: ConnectionKey) -> Admission {
        let now = self.now_ms();
        let mut state = self.state.lock();
        let mut evicted = false;
        if state.by_id.len() - state.closing >= self.limits.max_connections {
            if !self.evict_one(&mut state) {
                drop(state);
                self.metrics.record_reaped(ReapReason::Refused);
                return Admission::Refused;
            }
            evicted = true;
        }
        let id = state.next_id;
        state.next_id += 1;
        let entry = Arc::new(Entry {
            id,
            key,
            opened_at_ms: now,
            epoch: self.epoch,
            calls: AtomicU64::new(0),
            served: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(now),
            read_waker: AtomicWaker::new(),
            write_waker: AtomicWaker::new(),
        });
        state.by_id.insert(id, Arc::clone(&entry));
        // A key still held by a dead connection's entry (its socket not yet
        // dropped) passes to the new one; the old entry stays in `by_id`.
        self.shard(&key).write().insert(key, Arc::clone(&entry));
        drop(state);
        self.metrics.open.increment(1.0);
        Admission::Admitted { entry, evicted }
    }

    /// Closes the longest-idle connection, if any is idle, to free its
    /// descriptor (accepting found none left). Returns whether one was.
    pub fn evict_idle(&self) -> bool {
        let mut state = self.state.lock();
        self.evict_one(&mut state)
    }

    fn evict_one(&self, state: &mut State) -> bool {
        // The longest idle; one whose call starts meanwhile is passed over.
        let victim = loop {
            let candidate = state
                .by_id
                .values()
                .filter(|entry| entry.is_idle())
                .min_by_key(|entry| entry.eviction_rank());
            match candidate {
                None => return false,
                Some(entry) if entry.close_if_idle() => break Arc::clone(entry),
                Some(_) => {}
            }
        };
        state.closing += 1;
        self.metrics.record_reaped(ReapReason::Evicted);
        tracing::debug!(peer = %victim.key.peer, "connection evicted to make room");
        true
    }

    /// Forgets a connection whose socket is being dropped.
    pub fn remove(&self, entry: &Entry) {
        let mut state = self.state.lock();
        if state.by_id.remove(&entry.id).is_none() {
            return;
        }
        if entry.is_closed() {
            state.closing -= 1;
        }
        let mut shard = self.shard(&entry.key).write();
        if shard
            .get(&entry.key)
            .is_some_and(|held| held.id == entry.id)
        {
            shard.remove(&entry.key);
        }
        drop(shard);
        drop(state);
        self.metrics.open.decrement(1.0);
    }

    /// Marks the start of a call on the connection `key`; the call counts
    /// as open until the returned guard is dropped. Returns `None` for a
    /// connection the table does not hold (or is closing).
    pub fn start_call(&self, key: &ConnectionKey) -> Option<CallGuard> {
        let entry = Arc::clone(self.shard(key).read().get(key)?);
        entry.start_call()
    }

    /// Closes every connection past its first-request or idle timeout.
    /// Returns how many were closed.
    pub fn reap(&self) -> usize {
        let now = self.now_ms();
        let first_request_ms = duration_ms(self.limits.first_request_timeout);
        let idle_ms = duration_ms(self.limits.idle_timeout);
        let mut state = self.state.lock();
        let mut reaped = 0;
        for entry in state.by_id.values() {
            if !entry.is_idle() {
                continue;
            }
            let reason = if !entry.served.load(Ordering::Acquire) {
                (now.saturating_sub(entry.opened_at_ms) >= first_request_ms)
                    .then_some(ReapReason::FirstRequestTimeout)
            } else {
                let idle_since = entry.idle_since_ms.load(Ordering::Acquire);
                (now.saturating_sub(idle_since) >= idle_ms).then_some(ReapReason::Idle)
            };
            if let Some(reason) = reason
                && entry.close_if_idle()
            {
                self.metrics.record_reaped(reason);
                tracing::debug!(peer = %entry.key.peer, ?reason, "connection reaped");
                reaped += 1;
            }
        }
        state.closing += reaped;
        reaped
    }
}

fn duration_ms(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A call open on a connection: keeps the connection from counting as idle
/// until dropped.
pub struct CallGuard {
    entry: Arc<Entry>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        // The idle time first: a reaping round that sees no call open must
        // see when the last one ended.
        self.entry
            .idle_since_ms
            .store(self.entry.now_ms(), Ordering::Release);
        self.entry.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for CallGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallGuard")
            .field("peer", &self.entry.key.peer)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;
    use std::time::Duration;

    use super::*;

    fn table(max_connections: usize) -> Arc<ConnectionTable> {
        Arc::new(ConnectionTable::new(
            ConnectionLimits {
                max_connections,
                first_request_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
            },
            PortConnections::noop(),
        ))
    }

    fn key(port: u16) -> ConnectionKey {
        ConnectionKey {
            local: SocketAddr::from(([127, 0, 0, 1], 50051)),
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn admit(table: &ConnectionTable, port: u16) -> Arc<Entry> {
        match table.admit(key(port)) {
            Admission::Admitted { entry, .. } => entry,
            Admission::Refused => panic!("connection {port} refused"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_a_never_used_connection_goes_before_a_used_idle_one() {
        let table = table(3);
        let used = admit(&table, 1);
        drop(table.start_call(&key(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        let silent = admit(&table, 2);
        let busy = admit(&table, 3);
        let _call = table.start_call(&key(3));

        let Admission::Admitted {
            entry: fourth,
            evicted,
        } = table.admit(key(4))
        else {
            panic!("refused with idle connections open");
        };
        assert!(evicted);
        assert!(silent.is_closed(), "the never-used connection goes first");
        assert!(!used.is_closed() && !busy.is_closed());

        // Once every idle connection has served, the one idle the longest
        // goes, never the busy one.
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(table.start_call(&key(4)));
        let Admission::Admitted { evicted, .. } = table.admit(key(5)) else {
            panic!("refused with an idle connection open");
        };
        assert!(evicted);
        assert!(used.is_closed());
        assert!(!busy.is_closed() && !fourth.is_closed());
        // Closing ones keep their sockets until their tasks drop them.
        assert_eq!(table.open(), 5);
        table.remove(&silent);
        table.remove(&used);
        assert_eq!(table.open(), 3);
        drop(fourth);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_with_every_connection_busy_the_new_one_is_refused() {
        let table = table(2);
        let _first = admit(&table, 1);
        let _second = admit(&table, 2);
        let calls = [table.start_call(&key(1)), table.start_call(&key(2))];
        assert!(matches!(table.admit(key(3)), Admission::Refused));
        assert!(!table.evict_idle());
        drop(calls);
        assert!(matches!(
            table.admit(key(3)),
            Admission::Admitted { evicted: true, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_connections_go_at_the_first_request_timeout_idle_ones_at_the_idle_timeout() {
        let table = table(10);
        let silent = admit(&table, 1);
        let used = admit(&table, 2);
        let busy = admit(&table, 3);
        drop(table.start_call(&key(2)));
        let call = table.start_call(&key(3));

        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(table.reap(), 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(table.reap(), 1);
        assert!(silent.is_closed());
        // A closed connection takes no new call.
        assert!(table.start_call(&key(1)).is_none());

        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(table.reap(), 1);
        assert!(used.is_closed());
        // A call open for longer than the idle timeout keeps its connection...
        assert!(!busy.is_closed());
        // ...and the idle time counts from its end.
        drop(call);
        tokio::time::advance(Duration::from_millis(59_999)).await;
        assert_eq!(table.reap(), 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(table.reap(), 1);
        assert!(busy.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_wakes_its_task() {
        let table = table(1);
        let entry = admit(&table, 1);
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let waker = Waker::from(Arc::new(Flag(Arc::clone(&woken))));
        assert!(!entry.poll_closed(Half::Read, &Context::from_waker(&waker)));
        assert!(table.evict_idle());
        assert!(woken.load(Ordering::SeqCst));
        assert!(entry.poll_closed(Half::Read, &Context::from_waker(Waker::noop())));
    }
}
