//! The mark a clean stop leaves for the next start (ARCHITECTURE.md §1.3).
//!
//! A resume version at or below `Engine::inherited_up_to` that the engine
//! does not hold may be a change a crash lost, and gets a reset. After a
//! stop that wrote (or spilled) every change, nothing was lost, so the next
//! start need not suspect this run's versions: a stop that kept everything
//! writes the version lease it ended with and the versions it still
//! suspected itself (those of an earlier crash). The next start reads the
//! mark and removes it before it hands out a version; if the store's
//! version floor is that lease (no other run or instance recorded one
//! since), it suspects only the versions the mark names. Otherwise, or
//! without a mark, it suspects everything up to the floor.

use std::path::{Path, PathBuf};

/// The mark's file, in the spill directory: local to the instance, like
/// the spill it stands beside.
fn path(dir: &Path) -> PathBuf {
    dir.join("clean-stop")
}

/// Writes the mark: `lease`, the version lease recorded last, and
/// `inherited_up_to`, the versions this run suspected. Written to a
/// temporary file, synced, then renamed, so that a torn mark cannot be read.
pub(super) async fn record(dir: &Path, lease: u64, inherited_up_to: u64) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let temporary = dir.join("clean-stop.tmp");
    let file = tokio::fs::File::create(&temporary).await?;
    let mut file = file.into_std().await;
    let text = format!("{lease} {inherited_up_to}\n");
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })
    .await
    .map_err(std::io::Error::other)??;
    tokio::fs::rename(&temporary, path(dir)).await
}

/// Returns the versions to suspect at a start whose store's version floor
/// is `floor`, and removes the mark. A mark that cannot be removed is not
/// trusted: a crash of this run would leave it behind.
pub(super) async fn inherited_at_start(dir: &Path, floor: u64) -> u64 {
    let path = path(dir);
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return floor,
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot read the clean-stop mark");
            return floor;
        }
    };
    if let Err(error) = tokio::fs::remove_file(&path).await {
        tracing::warn!(%error, path = %path.display(), "cannot remove the clean-stop mark");
        return floor;
    }
    match parse(&text) {
        Some((lease, inherited_up_to)) if lease == floor => inherited_up_to.min(floor),
        _ => floor,
    }
}

fn parse(text: &str) -> Option<(u64, u64)> {
    let mut numbers = text.split_whitespace().map(str::parse::<u64>);
    let lease = numbers.next()?.ok()?;
    let inherited_up_to = numbers.next()?.ok()?;
    Some((lease, inherited_up_to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_mark_counts_once_and_only_for_the_floor_it_names() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(inherited_at_start(dir.path(), 500).await, 500, "no mark");
        record(dir.path(), 500, 120).await.unwrap();
        assert_eq!(inherited_at_start(dir.path(), 500).await, 120);
        assert_eq!(
            inherited_at_start(dir.path(), 500).await,
            500,
            "read once: a crash of the next run finds none"
        );
        record(dir.path(), 500, 120).await.unwrap();
        assert_eq!(
            inherited_at_start(dir.path(), 700).await,
            700,
            "another run recorded a floor since"
        );
        std::fs::write(path(dir.path()), "garbage").unwrap();
        assert_eq!(inherited_at_start(dir.path(), 500).await, 500);
    }
}
