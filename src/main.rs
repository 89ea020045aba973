//! The readstates server binary: parses arguments and configuration, sets
//! up logging, runs the server, reloads the configuration, certificates and
//! bearer tokens on SIGHUP, and shuts down gracefully on SIGTERM or SIGINT.
//! `readstates migrate` applies the Scylla store's schema migrations
//! instead, and exits; `readstates compact` compacts the embedded store's
//! file, and exits.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use readstates::config::{Config, LogConfig, StoreBackend};
use readstates::server::{self, Running};
use readstates::store::{EmbeddedOptions, ScyllaStore};

/// Low-latency read-state tracking over gRPC.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Path of the TOML configuration file; defaults apply without one.
    #[arg(long, env = "READSTATES_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves the API (the default without a command).
    Serve,
    /// Applies pending schema migrations to the `[scylla]` keyspace, then exits.
    Migrate,
    /// Compacts the embedded store's database file, then exits. Run it with
    /// the server stopped: it needs the file to itself.
    Compact,
}

/// How long after a second signal the process waits for the server to stop
/// before it exits anyway.
const SHUTDOWN_BACKSTOP: Duration = Duration::from_secs(5);

/// Changes the log filter of the running process.
type LogReload = reload::Handle<EnvFilter, Registry>;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("readstates: {error}");
            return ExitCode::from(2);
        }
    };
    let migrating = matches!(args.command, Some(Command::Migrate));
    if migrating && config.store.backend != StoreBackend::Scylla {
        eprintln!(
            "readstates: `migrate` sets up the ScyllaDB/Cassandra store; set store.backend = \"scylla\" \
             (the embedded store needs no migrations)"
        );
        return ExitCode::from(2);
    }
    if matches!(args.command, Some(Command::Compact)) {
        return compact(&config);
    }
    let log_reload = init_logging(&config.log);
    allow_huge_pages(config.cache.transparent_huge_pages);
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
    let outcome = if migrating {
        runtime.block_on(migrate(&config))
    } else {
        runtime.block_on(run(config, args.config.as_deref(), &log_reload))
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: Config,
    config_path: Option<&Path>,
    log_reload: &LogReload,
) -> anyhow::Result<()> {
    let store = server::open_store(&config).await?;
    let running = server::start(&config, store).await?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = terminate.recv() => {
                tracing::info!("received SIGTERM");
                break;
            }
            _ = interrupt.recv() => {
                tracing::info!("received SIGINT");
                break;
            }
            _ = hangup.recv() => {
                reload(config_path, &running, log_reload);
                // The TLS and tokens files named at start are re-read even
                // when the configuration is not (this logs its own outcome).
                let _ = running.reload_credentials().await;
            }
        }
    }
    // The server gives up its final flush at the shutdown timeout and
    // spills what was left. Only if the spill fails too does it wait, for
    // the store or the spill to work, or for a second signal.
    let force = running.force_token();
    let cache = std::sync::Arc::clone(&running.cache);
    let shutdown = running.shutdown();
    tokio::pin!(shutdown);
    tokio::select! {
        result = &mut shutdown => return result,
        _ = terminate.recv() => tracing::warn!("received a second SIGTERM: giving up what is not written"),
        _ = interrupt.recv() => tracing::warn!("received a second SIGINT: giving up what is not written"),
    }
    force.cancel();
    match tokio::time::timeout(SHUTDOWN_BACKSTOP, shutdown).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!(
            "shutdown did not finish {} ms after the second signal; {} dirty read states were not written",
            SHUTDOWN_BACKSTOP.as_millis(),
            cache.dirty_states()
        ),
    }
}

/// Applies pending migrations to the configured keyspace.
async fn migrate(config: &Config) -> anyhow::Result<()> {
    let report = ScyllaStore::migrate(&config.scylla)
        .await
        .with_context(|| format!("migrating keyspace {}", config.scylla.keyspace))?;
    println!(
        "keyspace {}: {} migrations applied now, {} already applied",
        config.scylla.keyspace,
        report.applied_now.len(),
        report.already_applied.len()
    );
    Ok(())
}

/// Compacts the embedded store's file (`readstates compact`).
fn compact(config: &Config) -> ExitCode {
    if config.store.backend != StoreBackend::Embedded {
        eprintln!(
            "readstates: `compact` works on the embedded store (store.backend = \"embedded\")"
        );
        return ExitCode::from(2);
    }
    match readstates::store::compact(&EmbeddedOptions::of(&config.store)) {
        Ok(done) => {
            let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
            println!(
                "compacted {} in {:.1} s: file {:.1} -> {:.1} MiB, on disk {:.1} -> {:.1} MiB",
                config.store.data_dir.display(),
                done.elapsed.as_secs_f64(),
                mib(done.length_before),
                mib(done.length_after),
                mib(done.disk_before),
                mib(done.disk_after),
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "readstates: compacting {} failed (is a server running on it?): {error}",
                config.store.data_dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Re-reads the configuration file and applies what can change live; an
/// invalid file is rejected and the running configuration kept.
fn reload(config_path: Option<&Path>, running: &Running, log_reload: &LogReload) {
    let Some(path) = config_path else {
        tracing::warn!(
            "received SIGHUP, but the server was started without --config: no configuration to reload"
        );
        return;
    };
    tracing::info!(path = %path.display(), "received SIGHUP: reloading the configuration");
    let new = match Config::load(Some(path)) {
        Ok(new) => new,
        Err(error) => {
            tracing::error!(%error, "configuration rejected; keeping the running one");
            return;
        }
    };
    running.reconfigure(&new);
    if std::env::var_os("RUST_LOG").is_none() {
        match EnvFilter::try_new(&new.log.level) {
            Ok(filter) => {
                if let Err(error) = log_reload.reload(filter) {
                    tracing::error!(%error, "changing the log level failed");
                }
            }
            Err(error) => {
                tracing::error!(%error, level = %new.log.level, "invalid log level; keeping the old one")
            }
        }
    }
}

/// Turns transparent huge pages off for the whole process unless
/// `cache.transparent_huge_pages` allows them: as the cache fills, the call
/// that first touches a new huge page of the heap would wait for the kernel
/// to zero 2 MiB. It applies to every page touched from now on, whichever
/// allocator mapped it. Failure only costs latency, so it is logged.
fn allow_huge_pages(allowed: bool) {
    if allowed {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes
    // no memory of this process.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not turn transparent huge pages off for the process"
        );
    }
}

fn init_logging(log: &LogConfig) -> LogReload {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::stdout().is_terminal();
    tracing_subscriber::registry()
        .with(filter)
        .with(log.json.then(|| fmt::layer().json()))
        .with((!log.json).then(|| fmt::layer().with_ansi(ansi)))
        .init();
    handle
}
