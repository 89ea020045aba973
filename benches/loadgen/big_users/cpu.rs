//! The server's resources: its CPU time from /proc (schedstat per thread,
//! and utime + stime at clock-tick resolution), and its Prometheus metrics.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

/// The server's CPU time at one moment.
#[derive(Debug, Clone)]
pub(super) struct CpuSnapshot {
    at: Instant,
    /// Run time (ns) of each thread, from its schedstat.
    threads: HashMap<u32, u64>,
    /// utime + stime of the whole process, in clock ticks.
    ticks: u64,
    /// stime alone.
    system_ticks: u64,
}

/// The server's CPU time over a phase.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CpuSpent {
    /// Nanoseconds on CPU: the threads' schedstat run time, or the ticks
    /// where schedstat is not available.
    pub(super) ns: u64,
    /// utime + stime, at clock-tick resolution, in nanoseconds.
    pub(super) ticks_ns: u64,
    /// stime alone (the kernel's share: page faults, system calls).
    pub(super) system_ticks_ns: u64,
    /// Threads that exited during the phase (their time in it is lost to
    /// `ns`).
    pub(super) exited: usize,
    pub(super) wall: Duration,
}

impl CpuSpent {
    pub(super) fn add(&mut self, other: CpuSpent) {
        self.ns += other.ns;
        self.ticks_ns += other.ticks_ns;
        self.system_ticks_ns += other.system_ticks_ns;
        self.exited += other.exited;
        self.wall += other.wall;
    }
}

/// Reads a process's CPU time (all its threads).
pub(super) struct ServerCpu {
    pid: u32,
    ns_per_tick: f64,
}

impl ServerCpu {
    pub(super) fn new(pid: u32) -> anyhow::Result<Self> {
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let cpu = Self {
            pid,
            ns_per_tick: 1e9 / if ticks > 0 { ticks as f64 } else { 100.0 },
        };
        cpu.snapshot()
            .with_context(|| format!("reading --server-pid {pid}'s CPU time"))?;
        Ok(cpu)
    }

    pub(super) fn snapshot(&self) -> anyhow::Result<CpuSnapshot> {
        let at = Instant::now();
        let task_dir = format!("/proc/{}/task", self.pid);
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir(&task_dir).with_context(|| format!("reading {task_dir}"))? {
            let entry = entry.with_context(|| format!("reading {task_dir}"))?;
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse().ok())
            else {
                continue;
            };
            let path = entry.path().join("schedstat");
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let ns = text
                        .split_whitespace()
                        .next()
                        .and_then(|field| field.parse().ok())
                        .with_context(|| format!("unexpected {}: {text:?}", path.display()))?;
                    threads.insert(tid, ns);
                }
                // The thread exited since the listing.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(error).with_context(|| format!("reading {}", path.display()));
                }
            }
        }
        let (user_ticks, system_ticks) = process_ticks(self.pid)?;
        Ok(CpuSnapshot {
            at,
            threads,
            ticks: user_ticks + system_ticks,
            system_ticks,
        })
    }

    pub(super) fn between(&self, before: &CpuSnapshot, after: &CpuSnapshot) -> CpuSpent {
        let ns: u64 = after
            .threads
            .iter()
            .map(|(tid, &ns)| ns.saturating_sub(before.threads.get(tid).copied().unwrap_or(0)))
            .sum();
        let exited = before
            .threads
            .keys()
            .filter(|tid| !after.threads.contains_key(tid))
            .count();
        let to_ns = |ticks: u64| (ticks as f64 * self.ns_per_tick).round() as u64;
        let ticks_ns = to_ns(after.ticks.saturating_sub(before.ticks));
        let system_ticks_ns = to_ns(after.system_ticks.saturating_sub(before.system_ticks));
        // schedstat reads 0 for every thread where the kernel does not keep it.
        let precise = after.threads.values().any(|&ns| ns > 0);
        CpuSpent {
            ns: if precise { ns } else { ticks_ns },
            ticks_ns,
            system_ticks_ns,
            exited,
            wall: after.at.saturating_duration_since(before.at),
        }
    }
}

/// utime and stime of a process, in clock ticks (fields 14 and 15 of
/// /proc/PID/stat).
fn process_ticks(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("unexpected {path} format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .with_context(|| format!("short {path}"))?
            .parse()
            .with_context(|| format!("parsing {path}"))
    };
    Ok((field(11)?, field(12)?))
}

/// The server's Prometheus endpoint.
pub(super) struct Metrics {
    pub(super) addr: String,
}

impl Metrics {
    /// Every metric, summed over its labels.
    pub(super) async fn scrape(&self) -> anyhow::Result<HashMap<String, f64>> {
        let addr = self.addr.clone();
        tokio::task::spawn_blocking(move || scrape_blocking(&addr))
            .await
            .context("the metrics scrape panicked")?
    }
}

/// A metric's value (summed over labels), 0 when absent.
pub(super) fn metric(values: &HashMap<String, f64>, name: &str) -> f64 {
    values.get(name).copied().unwrap_or(0.0)
}

/// One GET of /metrics over HTTP/1.0 (so the body is not chunked).
fn scrape_blocking(addr: &str) -> anyhow::Result<HashMap<String, f64>> {
    let socket = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving --metrics-addr {addr}"))?
        .next()
        .with_context(|| format!("--metrics-addr {addr} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&socket, Duration::from_secs(5))
        .with_context(|| format!("connecting to the metrics at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: readstates\r\n\r\n")
        .with_context(|| format!("asking {addr} for its metrics"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("reading the metrics of {addr}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP answer from the metrics at {addr}"))?;
    let status = head.lines().next().unwrap_or_default();
    ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "the metrics at {addr} answered {status:?}"
    );
    let mut values = HashMap::new();
    for line in body.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let Some(value) = line
            .rsplit(' ')
            .next()
            .and_then(|value| value.parse::<f64>().ok())
        else {
            continue;
        };
        *values.entry(line[..name_end].to_string()).or_insert(0.0) += value;
    }
    Ok(values)
}
