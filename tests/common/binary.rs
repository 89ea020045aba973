//! The server binary as operators run it: started with a config file, its
//! addresses read from its log.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running server process and the addresses it logged.
pub struct Spawned {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
}

/// Starts `binary --config config` and waits (at most `wait`) until it logs
/// its metrics and gRPC addresses. Its log is read to the end on a thread,
/// so the server never blocks on a full pipe.
pub fn spawn(binary: &Path, config: &Path, wait: Duration) -> Spawned {
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            for key in ["metrics_addr=", "grpc_addr="] {
                if let Some(addr) = line.split(key).nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or_default();
                    let _ = sender.send(addr.to_owned());
                }
            }
        }
    });
    let next_addr = || -> SocketAddr {
        receiver
            .recv_timeout(wait)
            .expect("the server never logged its addresses")
            .parse()
            .unwrap()
    };
    // The metrics address is logged first.
    let metrics_addr = next_addr();
    let addr = next_addr();
    Spawned {
        child,
        addr,
        metrics_addr,
    }
}
