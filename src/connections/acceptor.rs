//! Accepts one port's connections into its [`ConnectionTable`], and reaps
//! the table between accepts.
//!
//! A failing `accept` must not spin: out of file descriptors (EMFILE,
//! ENFILE) it fails at once, as often as it is called, while the pending
//! connection stays in the kernel's backlog. So a failure sleeps, 5 ms
//! doubling to 1 s, reset by the next success, and closes the longest-idle
//! connection to free a descriptor; its warnings are rate-limited. Errors
//! that belong to one connection (it was reset before it was accepted) are
//! retried at once.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::metrics::{AcceptFailure, PortConnections};
use super::stream::TrackedStream;
use super::table::{Admission, ConnectionKey, ConnectionTable};

/// The first wait after a failed accept; doubled at each further failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);

/// The longest wait between accepts that keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// At most one warning of each kind per this period; the others are counted
/// and their number given with the next.
const WARNING_PERIOD: Duration = Duration::from_secs(10);

/// Accepts and admits the connections of one listener.
pub struct Acceptor {
    listener: TcpListener,
    table: Arc<ConnectionTable>,
    metrics: PortConnections,
    port: &'static str,
    reaping: Interval,
    backoff: Duration,
    /// Accepting resumes then, after a failure.
    resume_at: Option<Instant>,
    accept_warnings: Throttle,
    cap_warnings: Throttle,
}

impl Acceptor {
    /// Accepts from `listener` into `table`; `port` names the port in logs.
    pub fn new(
        listener: TcpListener,
        table: Arc<ConnectionTable>,
        metrics: PortConnections,
        port: &'static str,
    ) -> Self {
        let mut reaping = tokio::time::interval(table.limits().reap_period());
        reaping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            listener,
            table,
            metrics,
            port,
            reaping,
            backoff: FIRST_BACKOFF,
            resume_at: None,
            accept_warnings: Throttle::new(WARNING_PERIOD),
            cap_warnings: Throttle::new(WARNING_PERIOD),
        }
    }

    /// Returns the next connection admitted (TCP_NODELAY set), reaping the
    /// table while it waits. Cancel-safe: a connection is never lost in
    /// between, and a backoff outlives the future that waited on it.
    pub async fn next(&mut self) -> TrackedStream<TcpStream> {
        loop {
            if let Some(resume_at) = self.resume_at {
                tokio::select! {
                    () = tokio::time::sleep_until(resume_at) => self.resume_at = None,
                    _ = self.reaping.tick() => self.reap(),
                }
                continue;
            }
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = self.reaping.tick() => {
                    self.reap();
                    continue;
                }
            };
            match accepted {
                Ok((stream, _peer)) => {
                    self.backoff = FIRST_BACKOFF;
                    if let Some(stream) = self.admit(stream) {
                        return stream;
                    }
                }
                Err(error) => self.failed(&error),
            }
        }
    }

    fn reap(&self) {
        let reaped = self.table.reap();
        if reaped > 0 {
            tracing::debug!(port = self.port, reaped, "closed timed-out connections");
        }
    }

    fn admit(&mut self, stream: TcpStream) -> Option<TrackedStream<TcpStream>> {
        // Without its addresses a connection cannot be found by its calls;
        // a socket that has none is already dead.
        let key = ConnectionKey {
            local: stream.local_addr().ok()?,
            peer: stream.peer_addr().ok()?,
        };
        // TCP_NODELAY, as tonic sets it on the listeners it binds itself:
        // without it the kernel holds a response's later small writes until
        // the client acknowledges the first, which a client delaying its
        // ACKs does after up to 40 ms. A socket that refuses it only answers
        // later.
        let _ = stream.set_nodelay(true);
        match self.table.admit(key) {
            Admission::Admitted { entry, evicted } => {
                if evicted && let Some(suppressed) = self.cap_warnings.admit() {
                    tracing::warn!(
                        port = self.port,
                        max_connections = self.table.limits().max_connections,
                        suppressed,
                        "connection cap reached; closing the longest-idle connections to make room"
                    );
                }
                Some(TrackedStream::new(stream, entry, Arc::clone(&self.table)))
            }
            Admission::Refused => {
                if let Some(suppressed) = self.cap_warnings.admit() {
                    tracing::warn!(
                        port = self.port,
                        max_connections = self.table.limits().max_connections,
                        suppressed,
                        "connection cap reached with a call open on every connection; refusing new connections"
                    );
                }
                None
            }
        }
    }

    fn failed(&mut self, error: &io::Error) {
        if is_connection_error(error) {
            tracing::debug!(port = self.port, %error, "a connection failed before it was accepted");
            return;
        }
        let out_of_descriptors = is_out_of_descriptors(error);
        self.metrics.record_accept_failure(if out_of_descriptors {
            AcceptFailure::FdLimit
        } else {
            AcceptFailure::Other
        });
        // An idle connection's descriptor is worth more to the service than
        // the connection waiting in the backlog.
        let evicted = out_of_descriptors && self.table.evict_idle();
        if let Some(suppressed) = self.accept_warnings.admit() {
            tracing::warn!(
                port = self.port,
                %error,
                backoff = ?self.backoff,
                evicted_idle_connection = evicted,
                suppressed,
                "accept failed; backing off"
            );
        }
        self.resume_at = Some(Instant::now() + self.backoff);
        self.backoff = next_backoff(self.backoff);
    }
}

/// Returns the wait after `backoff`, for a failure that follows another.
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(MAX_BACKOFF)
}

/// Returns whether `error` belongs to the one connection being accepted
/// (Linux's accept passes on errors already pending on it), so the next
/// accept may go ahead at once.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || error.raw_os_error().is_some_and(|code| {
        [
            libc::EPROTO,
            libc::EPERM,
            libc::ENETDOWN,
            libc::ENOPROTOOPT,
            libc::EHOSTDOWN,
            libc::ENONET,
            libc::EHOSTUNREACH,
            libc::EOPNOTSUPP,
            libc::ENETUNREACH,
        ]
        .contains(&code)
    })
}

/// Returns whether `error` says no file descriptor is left, to this process
/// (EMFILE) or to the system (ENFILE).
fn is_out_of_descriptors(error: &io::Error) -> bool {
    error
        .raw_os_error()
        .is_some_and(|code| code == libc::EMFILE || code == libc::ENFILE)
}

/// Lets one event through per period, and counts those it holds back.
struct Throttle {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(events held back since the last one let through)` if
    /// this one may be logged.
    fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.period)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_throttle_lets_one_event_through_per_period_and_counts_the_rest() {
        let mut throttle = Throttle::new(Duration::from_secs(10));
        assert_eq!(throttle.admit(), Some(0));
        for _ in 0..1_000 {
            assert_eq!(throttle.admit(), None);
        }
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(throttle.admit(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(throttle.admit(), Some(1_001));
        assert_eq!(throttle.admit(), None);
    }

    #[test]
    fn the_backoff_doubles_from_5_ms_to_1_s() {
        let waits: Vec<u128> =
            std::iter::successors(Some(FIRST_BACKOFF), |wait| Some(next_backoff(*wait)))
                .take(10)
                .map(|wait| wait.as_millis())
                .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1_000, 1_000]);
    }

    #[test]
    fn descriptor_exhaustion_backs_off_and_a_reset_connection_does_not() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let enfile = io::Error::from_raw_os_error(libc::ENFILE);
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        let eproto = io::Error::from_raw_os_error(libc::EPROTO);
        assert!(is_out_of_descriptors(&emfile) && is_out_of_descriptors(&enfile));
        assert!(!is_connection_error(&emfile) && !is_connection_error(&enfile));
        assert!(is_connection_error(&aborted) && is_connection_error(&eproto));
        assert!(!is_out_of_descriptors(&aborted));
        let enomem = io::Error::from_raw_os_error(libc::ENOMEM);
        assert!(!is_connection_error(&enomem) && !is_out_of_descriptors(&enomem));
    }
}
