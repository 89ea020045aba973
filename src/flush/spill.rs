//! The spill: where a shutdown that cannot reach the store keeps what it
//! could not write, so that the next start writes it.
//!
//! A graceful shutdown writes every dirty state before it exits. When the
//! store refuses or hangs past `server.shutdown_timeout_ms` (a full disk, a
//! database that is down or hung), exiting would throw acknowledged changes
//! away, and waiting for ever blocks a deploy. So the shutdown writes them
//! to a spill file instead: the dirty rows as the store would have written
//! them, and the deferred mentions of users it never loaded. The file is
//! written whole, fsynced, and only then renamed into place, and ends with a
//! SHA-256 digest: a file that is there is complete, and a damaged one
//! stops the start instead of being half replayed. The next start writes
//! its rows (versioned, so replaying one twice changes nothing), applies
//! its mentions (idempotent, as every AddMentions is), makes both durable,
//! and only then removes the file.
//!
//! The spill lives in `store.spill_dir`. By default that is beside the
//! embedded database, where a full disk refuses it too; pointing it at
//! another filesystem lets a shutdown during a full disk exit at once. When
//! the spill cannot be written either, the shutdown keeps trying the store
//! and the spill until one succeeds, or until a second signal says to give
//! the changes up (see `last_resort`).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256, SHA256_OUTPUT_LEN};

use crate::clock::unix_micros;
use crate::ids::{ChannelId, MessageId, UserId};
use crate::read_state::ReadState;
use crate::store::{Row, RowWrite, decode_row, encode_row};

/// The first bytes of a spill file, with its format's version.
const MAGIC: &[u8; 8] = b"RSSPILL1";
const TAG_ROW: u8 = 1;
const TAG_MENTION: u8 = 2;
const TAG_END: u8 = 0xFF;
/// A row record's value is one stored row: well under this.
const MAX_ROW_BYTES: usize = 1 << 20;

/// A mention accepted for a user that was never loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferredMention {
    pub user_id: UserId,
    pub channel_id: ChannelId,
    pub message_id: MessageId,
}

/// What a shutdown could not write.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unwritten {
    pub rows: Vec<RowWrite>,
    pub mentions: Vec<DeferredMention>,
}

impl Unwritten {
    /// Returns whether there is nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.mentions.is_empty()
    }
}

/// Why a spill could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// The directory or a file could not be written, read or removed.
    #[error("spill {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A spill file is damaged: it is kept, and the start refused, so that
    /// an operator decides (the rows of a damaged file are not guessed at).
    #[error("spill file {path} is damaged ({reason}); move it away to start without its changes")]
    Damaged { path: PathBuf, reason: &'static str },
}

/// The directory of spill files.
#[derive(Debug, Clone)]
pub struct SpillDir {
    dir: PathBuf,
}

impl SpillDir {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Returns the directory's path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `unwritten` to a new spill file, durably: written, fsynced,
    /// renamed into place, and the directory fsynced. Blocking.
    pub fn write(&self, unwritten: &Unwritten) -> Result<PathBuf, SpillError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SpillError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let stamp = unix_micros();
        let temporary = self.dir.join(format!(".spill-{stamp}.tmp"));
        let path = self.dir.join(format!("spill-{stamp:020}.bin"));
        let written = write_file(&temporary, unwritten).map_err(io(&temporary));
        if let Err(error) = written {
            // A full disk: leave nothing half written behind.
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
        std::fs::rename(&temporary, &path).map_err(io(&path))?;
        sync_dir(&self.dir).map_err(io(&self.dir))?;
        Ok(path)
    }

    /// Reads every spill file, oldest first. Removes the temporary files a
    /// crash in the middle of a spill left (that spill never finished, so
    /// nothing relied on it). Blocking.
    pub fn read_all(&self) -> Result<Vec<(PathBuf, Unwritten)>, SpillError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SpillError::Io { path, source }
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io(&self.dir)(error)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".spill-") && name.ends_with(".tmp") {
                tracing::warn!(path = %entry.path().display(), "removing an unfinished spill file");
                std::fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            } else if name.starts_with("spill-") && name.ends_with(".bin") {
                files.push(entry.path());
            }
        }
        files.sort();
        files
            .into_iter()
            .map(|path| {
                let mut bytes = Vec::new();
                File::open(&path)
                    .and_then(|mut file| file.read_to_end(&mut bytes))
                    .map_err(io(&path))?;
                let unwritten = decode(&bytes).map_err(|reason| SpillError::Damaged {
                    path: path.clone(),
                    reason,
                })?;
                Ok((path, unwritten))
            })
            .collect()
    }

    /// Removes spill files whose contents are durable in the store.
    pub fn remove(&self, files: &[PathBuf]) -> Result<(), SpillError> {
        for path in files {
            std::fs::remove_file(path).map_err(|source| SpillError::Io {
                path: path.clone(),
                source,
            })?;
        }
        sync_dir(&self.dir).map_err(|source| SpillError::Io {
            path: self.dir.clone(),
            source,
        })
    }
}

fn write_file(path: &Path, unwritten: &Unwritten) -> std::io::Result<()> {
    let file = File::create(path)?;
    let mut out = BufWriter::new(file);
    let mut digest = Context::new(&SHA256);
    let mut put = |bytes: &[u8], out: &mut BufWriter<File>| {
        digest.update(bytes);
        out.write_all(bytes)
    };
    put(MAGIC, &mut out)?;
    let mut value = Vec::with_capacity(64);
    for row in &unwritten.rows {
        encode_row(&row.state, row.deleted, &mut value);
        let len = u32::try_from(value.len()).map_err(|_| std::io::ErrorKind::InvalidData)?;
        put(&[TAG_ROW], &mut out)?;
        put(&row.user_id.get().to_le_bytes(), &mut out)?;
        put(&row.state.channel_id.get().to_le_bytes(), &mut out)?;
        put(&len.to_le_bytes(), &mut out)?;
        put(&value, &mut out)?;
    }
    for mention in &unwritten.mentions {
        put(&[TAG_MENTION], &mut out)?;
        put(&mention.user_id.get().to_le_bytes(), &mut out)?;
        put(&mention.channel_id.get().to_le_bytes(), &mut out)?;
        put(&mention.message_id.get().to_le_bytes(), &mut out)?;
    }
    put(&[TAG_END], &mut out)?;
    let records = (unwritten.rows.len() + unwritten.mentions.len()) as u64;
    put(&records.to_le_bytes(), &mut out)?;
    out.write_all(digest.finish().as_ref())?;
    let file = out.into_inner().map_err(|error| error.into_error())?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Decodes a whole spill file; the reason names what is wrong.
fn decode(bytes: &[u8]) -> Result<Unwritten, &'static str> {
    let body_len = bytes
        .len()
        .checked_sub(SHA256_OUTPUT_LEN)
        .ok_or("shorter than its digest")?;
    let (body, digest) = bytes.split_at(body_len);
    if ring::digest::digest(&SHA256, body).as_ref() != digest {
        return Err("its digest does not match");
    }
    let mut reader = Reader(body);
    if reader.take(MAGIC.len())? != MAGIC {
        return Err("not a spill file of this format");
    }
    let mut unwritten = Unwritten::default();
    loop {
        match reader.take(1)?[0] {
            TAG_ROW => {
                let user_id = UserId::new(reader.u64()?).map_err(|_| "a user id out of range")?;
                let channel_id =
                    ChannelId::new(reader.u64()?).map_err(|_| "a channel id out of range")?;
                let len = reader.u32()? as usize;
                if len > MAX_ROW_BYTES {
                    return Err("a row longer than any stored row");
                }
                let row = decode_row(channel_id, reader.take(len)?)
                    .map_err(|_| "a row that does not decode")?;
                let (state, deleted) = match row {
                    Row::Live(state) => (state, false),
                    Row::Tombstone { version } => (
                        ReadState {
                            version,
                            ..ReadState::empty(channel_id)
                        },
                        true,
                    ),
                };
                unwritten.rows.push(RowWrite {
                    user_id,
                    state,
                    deleted,
                });
            }
            TAG_MENTION => {
                let user_id = UserId::new(reader.u64()?).map_err(|_| "a user id out of range")?;
                let channel_id =
                    ChannelId::new(reader.u64()?).map_err(|_| "a channel id out of range")?;
                let message_id =
                    MessageId::new(reader.u64()?).map_err(|_| "a message id out of range")?;
                unwritten.mentions.push(DeferredMention {
                    user_id,
                    channel_id,
                    message_id,
                });
            }
            TAG_END => {
                let records = reader.u64()?;
                if records != (unwritten.rows.len() + unwritten.mentions.len()) as u64 {
                    return Err("its record count does not match");
                }
                if !reader.0.is_empty() {
                    return Err("bytes after its end");
                }
                return Ok(unwritten);
            }
            _ => return Err("an unknown record"),
        }
    }
}

/// Reads a spill file's body front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < len {
            return Err("cut short");
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        let bytes = self.take(8)?;
        let mut array = [0; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let bytes = self.take(4)?;
        let mut array = [0; 4];
        array.copy_from_slice(bytes);
        Ok(u32::from_le_bytes(array))
    }
}

#[cfg(test)]
#[path = "spill_tests.rs"]
mod tests;
