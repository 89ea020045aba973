//! The bounds of one port's connections, taken from the configuration and
//! fitted under the process's file descriptor limit: a cap above it would
//! never be reached, since accepting fails first (EMFILE), and idle sockets
//! would hold every descriptor with nothing to close them.

use std::time::Duration;

use crate::config::Config;

/// What one port allows its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once; past it the longest-idle one is
    /// closed to make room, or, if every one has a call open, the new one.
    pub max_connections: usize,
    /// A connection whose first call has not started this long after its
    /// accept (TLS handshake included) is closed.
    pub first_request_timeout: Duration,
    /// A connection with no call open for this long is closed.
    pub idle_timeout: Duration,
}

/// The share of the descriptor limit connections may take; the rest is for
/// the store's files, the log, the listeners and outgoing connections.
const CONNECTION_SHARE_NUMERATOR: u64 = 3;
const CONNECTION_SHARE_DENOMINATOR: u64 = 4;

impl ConnectionLimits {
    /// Returns how often connections are checked against the timeouts: an
    /// eighth of the shorter one, between 10 ms and 1 s, so a connection is
    /// closed at most that late.
    pub fn reap_period(&self) -> Duration {
        (self.first_request_timeout.min(self.idle_timeout) / 8)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// Returns the gRPC port's and the metrics port's limits, each cap lowered
/// (with a warning) to fit the open-files limit `fd_limit`, when known.
pub fn port_limits(config: &Config, fd_limit: Option<u64>) -> (ConnectionLimits, ConnectionLimits) {
    let grpc = ConnectionLimits {
        max_connections: config.server.max_connections,
        first_request_timeout: Duration::from_millis(config.server.first_request_timeout_ms),
        idle_timeout: Duration::from_millis(config.server.idle_timeout_ms),
    };
    // One deadline for the whole of a request's headers, counted from the
    // accept or from the previous response, as hyper counts its own.
    let header_read_timeout = Duration::from_millis(config.metrics.header_read_timeout_ms);
    let metrics = ConnectionLimits {
        max_connections: config.metrics.max_connections,
        first_request_timeout: header_read_timeout,
        idle_timeout: header_read_timeout,
    };
    let Some(fd_limit) = fd_limit else {
        return (grpc, metrics);
    };
    let (grpc_cap, metrics_cap) = fit_caps(grpc.max_connections, metrics.max_connections, fd_limit);
    if (grpc_cap, metrics_cap) != (grpc.max_connections, metrics.max_connections) {
        tracing::warn!(
            fd_limit,
            server_max_connections = grpc.max_connections,
            metrics_max_connections = metrics.max_connections,
            grpc_cap,
            metrics_cap,
            "connection caps lowered to fit the open-files limit; raise the limit (ulimit -n, LimitNOFILE) to allow more"
        );
    }
    (
        ConnectionLimits {
            max_connections: grpc_cap,
            ..grpc
        },
        ConnectionLimits {
            max_connections: metrics_cap,
            ..metrics
        },
    )
}

/// Returns the gRPC and metrics caps lowered so that both together stay
/// within three quarters of `fd_limit`; the metrics port keeps at most a
/// quarter of that, and each port at least one connection.
fn fit_caps(grpc: usize, metrics: usize, fd_limit: u64) -> (usize, usize) {
    let budget = fd_limit / CONNECTION_SHARE_DENOMINATOR * CONNECTION_SHARE_NUMERATOR;
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    let metrics = metrics.min(budget / 4).max(1);
    let grpc = grpc.min(budget.saturating_sub(metrics)).max(1);
    (grpc, metrics)
}

/// Returns the process's soft limit on open files, or `None` when it is
/// unlimited or cannot be read.
pub fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives
    // for the whole call.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if read != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_three_quarters_of_the_descriptor_limit() {
        // The reproduction: `ulimit -n 128` with the defaults.
        assert_eq!(fit_caps(10_000, 16, 128), (80, 16));
        assert_eq!(fit_caps(10_000, 16, 1_024), (752, 16));
        // A generous limit changes nothing.
        assert_eq!(fit_caps(10_000, 16, 20_000), (10_000, 16));
        assert_eq!(fit_caps(10_000, 16, 1 << 40), (10_000, 16));
        // A tiny one still leaves each port a connection.
        assert_eq!(fit_caps(10_000, 16, 4), (2, 1));
        assert_eq!(fit_caps(10_000, 16, 0), (1, 1));
    }

    #[test]
    fn the_reap_period_follows_the_shorter_timeout() {
        let limits = |first_ms, idle_ms| ConnectionLimits {
            max_connections: 1,
            first_request_timeout: Duration::from_millis(first_ms),
            idle_timeout: Duration::from_millis(idle_ms),
        };
        assert_eq!(
            limits(10_000, 300_000).reap_period(),
            Duration::from_secs(1)
        );
        assert_eq!(
            limits(1_000, 300_000).reap_period(),
            Duration::from_millis(125)
        );
        assert_eq!(limits(10_000, 400).reap_period(), Duration::from_millis(50));
        assert_eq!(limits(10, 10).reap_period(), Duration::from_millis(10));
    }

    #[test]
    fn the_limits_come_from_both_sections() {
        let mut config = Config::default();
        config.server.max_connections = 64;
        config.metrics.max_connections = 4;
        let (grpc, metrics) = port_limits(&config, None);
        assert_eq!(grpc.max_connections, 64);
        assert_eq!(
            grpc.first_request_timeout,
            Duration::from_millis(config.server.first_request_timeout_ms)
        );
        assert_eq!(metrics.max_connections, 4);
        assert_eq!(
            metrics.first_request_timeout,
            Duration::from_millis(config.metrics.header_read_timeout_ms)
        );
        let (grpc, metrics) = port_limits(&config, Some(64));
        assert_eq!((grpc.max_connections, metrics.max_connections), (44, 4));
    }
}
