//! The binary under `ulimit -n 128`, as the issue's reproduction runs it:
//! idle sockets past the descriptor limit on either port, then a full
//! descriptor table, with the process's CPU time and log watched.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::common::sample;
use crate::{count_closed, get_state, open_idle, scrape};

/// A server process under a low open-files limit, its log counted.
struct LimitedServer {
    child: Child,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    log_lines: Arc<AtomicUsize>,
}

impl LimitedServer {
    /// Starts the binary with `ulimit -n` at `open_files`, silent sockets
    /// reaped after 1 s on both ports.
    fn start(dir: &Path, open_files: u64) -> Self {
        let config = dir.join("readstates.toml");
        let text = format!(
            "[server]\nlisten_addr = \"127.0.0.1:0\"\nfirst_request_timeout_ms = 1000\n\
             [metrics]\nlisten_addr = \"127.0.0.1:0\"\nheader_read_timeout_ms = 1000\n\
             [store]\ndata_dir = \"{}\"\n",
            dir.join("data").display()
        );
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "ulimit -n {open_files} && exec \"$0\" --config \"$1\""
            ))
            .arg(env!("CARGO_BIN_EXE_readstates"))
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log_lines = Arc::new(AtomicUsize::new(0));
        let (sender, receiver) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, sender) in [
            (Box::new(stdout) as Box<dyn Read + Send>, Some(sender)),
            (Box::new(stderr), None),
        ] {
            let log_lines = Arc::clone(&log_lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log_lines.fetch_add(1, Ordering::Relaxed);
                    for key in ["metrics_addr=", "grpc_addr="] {
                        if let (Some(sender), Some(addr)) = (&sender, line.split(key).nth(1)) {
                            let addr = addr.split_whitespace().next().unwrap_or_default();
                            let _ = sender.send(addr.parse::<SocketAddr>().unwrap());
                        }
                    }
                }
            });
        }
        let next_addr = || {
            receiver
                .recv_timeout(Duration::from_secs(30))
                .expect("the server never logged its addresses")
        };
        // The metrics address is logged first.
        let metrics_addr = next_addr();
        let addr = next_addr();
        Self {
            child,
            addr,
            metrics_addr,
            log_lines,
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Returns the CPU time the process has used (user and system).
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf reads a constant of the system.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Duration::from_secs_f64(ticks as f64 / ticks_per_second as f64)
    }

    fn open_descriptors(&self) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count() as u64
    }

    /// Sets the process's soft open-files limit (the hard one stays).
    fn set_open_files_limit(&self, soft: u64) {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit reads and writes only the structs it is given,
        // which live for the whole calls.
        unsafe {
            assert_eq!(
                libc::prlimit(
                    self.pid(),
                    libc::RLIMIT_NOFILE,
                    std::ptr::null(),
                    &mut limit
                ),
                0
            );
            limit.rlim_cur = soft;
            assert_eq!(
                libc::prlimit(
                    self.pid(),
                    libc::RLIMIT_NOFILE,
                    &limit,
                    std::ptr::null_mut()
                ),
                0
            );
        }
    }

    /// Asserts that over `window` the process uses under a fifth of one
    /// core and logs at most `max_lines` lines: a spinning accept loop uses
    /// a whole core and logs each failure.
    async fn assert_quiet(&self, window: Duration, max_lines: usize, what: &str) {
        let (cpu_before, lines_before) = (self.cpu_time(), self.log_lines.load(Ordering::Relaxed));
        tokio::time::sleep(window).await;
        let cpu = self.cpu_time() - cpu_before;
        let lines = self.log_lines.load(Ordering::Relaxed) - lines_before;
        assert!(
            cpu < window / 5,
            "{what}: the server used {cpu:?} of CPU in {window:?}"
        );
        assert!(
            lines <= max_lines,
            "{what}: the server logged {lines} lines in {window:?}"
        );
    }
}

impl Drop for LimitedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The issue's reproduction on the gRPC port, then that port at a full
/// descriptor table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ulimit_128_idle_grpc_sockets_leave_calls_and_scrapes_answering_and_the_server_quiet()
{
    let dir = tempfile::tempdir().unwrap();
    let server = LimitedServer::start(dir.path(), 128);

    // 140 idle sockets: more than the process has descriptors.
    let opened = Instant::now();
    let mut idle = open_idle(server.addr, 140).await;
    get_state(server.addr).await;
    scrape(server.metrics_addr).await;
    server
        .assert_quiet(Duration::from_secs(2), 10, "with 140 idle sockets")
        .await;
    // All are closed: the oldest to make room, the others 1 s after their accept.
    let closed = count_closed(&mut idle, opened + Duration::from_secs(6)).await;
    assert_eq!(closed, 140, "idle sockets still open after 6 s");

    // A full descriptor table with nothing idle to close: accepting fails
    // until descriptors free up, and must back off meanwhile.
    server.set_open_files_limit(server.open_descriptors());
    let mut waiting = open_idle(server.addr, 20).await;
    server
        .assert_quiet(Duration::from_secs(3), 10, "at the descriptor limit")
        .await;
    server.set_open_files_limit(128);
    get_state(server.addr).await;
    let closed = count_closed(&mut waiting, Instant::now() + Duration::from_secs(4)).await;
    assert_eq!(closed, 20, "sockets accepted after the backoff still open");
}

/// The same on the metrics port: idle sockets past its cap of 16, then a
/// full descriptor table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ulimit_128_idle_metrics_sockets_leave_scrapes_answering_and_the_server_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let server = LimitedServer::start(dir.path(), 128);

    let opened = Instant::now();
    let mut idle = open_idle(server.metrics_addr, 140).await;
    scrape(server.metrics_addr).await;
    get_state(server.addr).await;
    server
        .assert_quiet(Duration::from_secs(2), 10, "with 140 idle sockets")
        .await;
    let closed = count_closed(&mut idle, opened + Duration::from_secs(6)).await;
    assert_eq!(closed, 140, "idle sockets still open after 6 s");

    server.set_open_files_limit(server.open_descriptors());
    let mut waiting = open_idle(server.metrics_addr, 20).await;
    server
        .assert_quiet(Duration::from_secs(3), 10, "at the descriptor limit")
        .await;
    server.set_open_files_limit(128);
    let text = scrape(server.metrics_addr).await;
    let failures = sample(
        &text,
        r#"readstates_connection_accept_errors_total{port="metrics",error="fd_limit"}"#,
    )
    .unwrap();
    // Backing off from 5 ms to 1 s: about 10 tries in 3 s, not millions.
    assert!(
        (1.0..=30.0).contains(&failures),
        "{failures} failed accepts at the limit"
    );
    let closed = count_closed(&mut waiting, Instant::now() + Duration::from_secs(4)).await;
    assert_eq!(closed, 20, "sockets accepted after the backoff still open");
}
