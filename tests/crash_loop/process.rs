//! The server binary as a child process: started on a config file in a
//! temporary directory, its addresses read from its log, killed with
//! SIGKILL.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use crate::common::binary::{Spawned, spawn};

/// The crash loop's server settings.
pub struct Settings {
    pub flush_delay_ms: u64,
    pub flush_tick_ms: u64,
    pub cache_capacity: usize,
}

/// A running server process.
pub struct Process {
    child: Child,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
}

impl Process {
    /// Starts the server on the data under `dir` and waits until it logs
    /// its addresses (a hang guard, not a timing check: a restart after a
    /// kill first checks the database file).
    pub fn start(dir: &Path, settings: &Settings) -> Self {
        let config = dir.join("readstates.toml");
        std::fs::write(&config, config_text(dir, settings)).unwrap();
        let binary = dir.join("readstates");
        if !binary.exists() {
            // A link (or a copy), so that every restart runs the build under
            // test even if the target directory is rebuilt meanwhile: a new
            // build is a new file, and the link keeps the old one.
            let built = std::env::var_os("READSTATES_CRASH_LOOP_BINARY")
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_readstates").into());
            std::fs::hard_link(&built, &binary)
                .or_else(|_| std::fs::copy(&built, &binary).map(drop))
                .unwrap();
        }
        let Spawned {
            child,
            addr,
            metrics_addr,
        } = spawn(&binary, &config, Duration::from_secs(60));
        Self {
            child,
            addr,
            metrics_addr,
        }
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn kill(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "the server survived SIGKILL: {status}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(dir: &Path, settings: &Settings) -> String {
    format!(
        "[server]\nlisten_addr = \"127.0.0.1:0\"\n\
         [metrics]\nlisten_addr = \"127.0.0.1:0\"\n\
         [store]\ndata_dir = \"{}\"\n\
         [cache]\ncapacity = {}\npartitions = 4\n\
         [flush]\ndelay_ms = {}\ntick_ms = {}\n",
        dir.join("data").display(),
        settings.cache_capacity,
        settings.flush_delay_ms,
        settings.flush_tick_ms,
    )
}
