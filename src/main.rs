//! The readstates server binary: parses arguments and configuration, sets
//! up logging, and runs the server until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

use readstates::config::{Config, LogConfig};
use readstates::server;

/// Low-latency read-state tracking over gRPC.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Path of the TOML configuration file; defaults apply without one.
    #[arg(long, env = "READSTATES_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("readstates: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("readstates: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let store = server::open_store(&config)?;
    let running = server::start(&config, store).await?;
    wait_for_signal().await?;
    let timeout = Duration::from_millis(config.server.shutdown_timeout_ms);
    let dirty_cache = std::sync::Arc::clone(&running.cache);
    match tokio::time::timeout(timeout, running.shutdown()).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!(
            "shutdown did not finish within {} ms; {} dirty read states were not written",
            timeout.as_millis(),
            dirty_cache.dirty_states()
        ),
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("received SIGTERM"),
        _ = interrupt.recv() => tracing::info!("received SIGINT"),
    }
    Ok(())
}

fn init_logging(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    if log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}
