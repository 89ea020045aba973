//! The engine's background work: the write-behind and its helpers (the
//! version lease's keeper, the tombstone purge, the loader of deferred
//! mentions; see `flush`) run from [`Engine::start`] until
//! [`Background::stop`], which writes every dirty state and, when the store
//! refuses them past the shutdown deadline, keeps them in a spill for the
//! next start (see `flush::last_resort`).

use std::sync::atomic::Ordering;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::flush::{FlushError, Kept, keep_unwritten};

/// The engine's running tasks.
pub struct Background {
    flush_shutdown: CancellationToken,
    give_up: CancellationToken,
    flusher: JoinHandle<Result<(), FlushError>>,
}

impl Engine {
    /// Starts the write-behind and its helpers; only once.
    pub fn start(&self) -> anyhow::Result<Background> {
        let flusher = self
            .flusher
            .lock()
            .take()
            .context("the engine's background tasks were started before")?;
        let flush_shutdown = CancellationToken::new();
        let give_up = CancellationToken::new();
        let flusher = tokio::spawn(flusher.run(flush_shutdown.clone(), give_up.clone()));
        Ok(Background {
            flush_shutdown,
            give_up,
            flusher,
        })
    }
}

impl Background {
    /// Returns the token that, cancelled, makes the final flush stop
    /// retrying a store that fails or hangs (the shutdown deadline).
    pub fn give_up_token(&self) -> CancellationToken {
        self.give_up.clone()
    }

    /// Stops the tasks once every dirty state is written. What the store
    /// has not taken when the give-up token is cancelled is spilled; when
    /// the spill cannot be written either, the store and the spill are
    /// tried again until one takes the changes or `force` is cancelled
    /// (then the error says how many were lost).
    pub async fn stop(self, engine: &Engine, force: &CancellationToken) -> anyhow::Result<()> {
        self.flush_shutdown.cancel();
        self.write_everything(engine, force).await?;
        // Every change was written or spilled: nothing of this run can be
        // lost, and the next start need not suspect its versions.
        let lease = engine.cache.clock().lease();
        let inherited = engine.inherited_up_to.load(Ordering::Relaxed);
        if let Err(error) = super::clean_stop::record(engine.spill.path(), lease, inherited).await {
            tracing::warn!(%error, "cannot leave the clean-stop mark: the next start resets more deltas");
        }
        Ok(())
    }

    /// Waits for the final flush, and keeps what it could not write.
    async fn write_everything(
        self,
        engine: &Engine,
        force: &CancellationToken,
    ) -> anyhow::Result<()> {
        match self.flusher.await.context("flusher task failed")? {
            Ok(()) => Ok(()),
            Err(FlushError::GaveUp { dirty }) => {
                tracing::warn!(
                    dirty,
                    "the final flush could not write everything; keeping the rest"
                );
                let batch_rows = engine.write_out.batch_rows;
                let kept = keep_unwritten(
                    &engine.cache,
                    engine.store.as_ref(),
                    &engine.spill,
                    batch_rows,
                    force,
                )
                .await?;
                match kept {
                    Kept::Spilled {
                        path,
                        rows,
                        mentions,
                    } => tracing::warn!(
                        path = %path.display(),
                        rows,
                        mentions,
                        "the store refused the unwritten changes: spilled them, and the next start writes them"
                    ),
                    Kept::Written => {
                        tracing::info!("the store took the unwritten changes after all")
                    }
                    Kept::Nothing => {}
                }
                Ok(())
            }
            Err(error) => Err(anyhow::Error::from(error).context("final flush failed")),
        }
    }
}
