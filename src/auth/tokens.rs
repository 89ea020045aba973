//! Bearer tokens: a file of `caller token` lines, held as SHA-256 digests
//! and looked up in constant time, re-read on SIGHUP.
//!
//! A presented token is hashed once and its digest compared with every
//! held digest, without stopping at a match: the time taken does not depend
//! on which token matched, how much of one did, or its length. Tokens are
//! never logged, and not kept in memory in the clear.
//!
//! A file that others can read is loaded with a warning, not refused: the
//! service cannot tell a shared group set up on purpose from a mistake, and
//! refusing would turn a careless `chmod` into an outage. A file with no
//! token (empty, or only comments) is accepted, loudly: it is how every
//! token is revoked at once. A missing or unreadable file is refused (at a
//! reload the tokens in force stay): it is more likely a deploy caught half
//! way (a volume not mounted yet, a secret being replaced) than a decision,
//! and failing closed there would refuse every call by accident.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use ring::digest::{SHA256, SHA256_OUTPUT_LEN, digest};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tokio::io::AsyncReadExt;

use super::AuthError;

/// Shorter tokens are refused: a bearer token is a random secret, not a
/// password (16 characters of hex already carry 64 bits).
pub const MIN_TOKEN_CHARS: usize = 16;

/// The permission bits of the group and of others: a tokens file with any
/// of them set gets a warning, the test ssh applies to private keys.
const OPEN_TO_OTHERS: u32 = 0o077;

/// One file's tokens.
#[derive(Debug)]
pub struct TokenSet {
    digests: Vec<[u8; SHA256_OUTPUT_LEN]>,
    /// The caller of each digest, by index.
    callers: Vec<Arc<str>>,
}

impl TokenSet {
    /// Parses a tokens file: one `caller token` per line, separated by
    /// whitespace; blank lines and `#` comments are skipped. A caller may
    /// have several tokens (to rotate one without a gap); a token belongs
    /// to one caller only. Errors name the line, never the token.
    pub fn parse(path: &Path, text: &str) -> Result<Self, AuthError> {
        let mut digests = Vec::new();
        let mut callers = Vec::new();
        let mut seen = HashSet::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.split_once('#').map_or(line, |(before, _)| before);
            let mut fields = line.split_whitespace();
            let Some(caller) = fields.next() else {
                continue;
            };
            let bad_line = |reason: &'static str| AuthError::TokensFile {
                path: path.to_owned(),
                line: index + 1,
                reason,
            };
            let (Some(token), None) = (fields.next(), fields.next()) else {
                return Err(bad_line("expected `caller token`"));
            };
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(bad_line("the token is shorter than 16 characters"));
            }
            let token_digest = sha256(token.as_bytes());
            if !seen.insert(token_digest) {
                return Err(bad_line("the token is listed twice"));
            }
            digests.push(token_digest);
            callers.push(Arc::from(caller));
        }
        Ok(Self { digests, callers })
    }

    /// Returns the caller whose token `presented` is, if any.
    pub fn caller(&self, presented: &[u8]) -> Option<Arc<str>> {
        let presented = sha256(presented);
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (position, held) in self.digests.iter().enumerate() {
            let equal = held.as_slice().ct_eq(presented.as_slice());
            index.conditional_assign(&(position as u64), equal);
            found |= equal;
        }
        if bool::from(found) {
            let index = usize::try_from(index).ok()?;
            self.callers.get(index).cloned()
        } else {
            None
        }
    }

    /// Returns how many tokens the set holds.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Returns whether the set holds no token.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

fn sha256(bytes: &[u8]) -> [u8; SHA256_OUTPUT_LEN] {
    let mut out = [0; SHA256_OUTPUT_LEN];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// The tokens in force, and the file they are read from.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    /// Swapped whole on reload; a check clones the `Arc` under the lock and
    /// compares outside it.
    current: RwLock<Arc<TokenSet>>,
}

impl TokenFile {
    /// Reads the tokens file at `path`.
    pub async fn open(path: &Path) -> Result<Self, AuthError> {
        let tokens = read(path).await?;
        tracing::info!(path = %path.display(), tokens = tokens.len(), "bearer tokens loaded");
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(tokens)),
        })
    }

    /// Re-reads the file and puts its tokens in force; on an error the
    /// tokens in force are kept. Returns how many tokens are now in force.
    pub async fn reload(&self) -> Result<usize, AuthError> {
        let tokens = read(&self.path).await?;
        let count = tokens.len();
        *self.current.write() = Arc::new(tokens);
        Ok(count)
    }

    /// Returns the tokens in force.
    pub fn current(&self) -> Arc<TokenSet> {
        Arc::clone(&self.current.read())
    }
}

/// Reads and parses the tokens file, warning when others may read it and
/// when it holds no token.
async fn read(path: &Path) -> Result<TokenSet, AuthError> {
    let file_error = |error: std::io::Error| AuthError::File {
        setting: "auth.tokens_file",
        path: path.to_owned(),
        reason: error.to_string(),
    };
    let mut file = tokio::fs::File::open(path).await.map_err(file_error)?;
    // The mode of the file opened, not of whatever the path names later.
    let mode = file
        .metadata()
        .await
        .map_err(file_error)?
        .permissions()
        .mode();
    if open_to_others(mode) {
        tracing::warn!(
            path = %path.display(),
            mode = %format!("{:04o}", mode & 0o7777),
            "bearer tokens file is open to users other than its owner; restrict it (chmod 600)"
        );
    }
    let mut text = String::new();
    file.read_to_string(&mut text).await.map_err(file_error)?;
    let tokens = TokenSet::parse(path, &text)?;
    if tokens.is_empty() {
        tracing::warn!(
            path = %path.display(),
            "bearer tokens file holds no token: every readstates call is refused until tokens are added"
        );
    }
    Ok(tokens)
}

/// Returns whether a file mode lets the group or others in.
fn open_to_others(mode: u32) -> bool {
    mode & OPEN_TO_OTHERS != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# caller token\n\
                        orders   0123456789abcdef0123  # the orders service\n\
                        \n\
                        search\tfedcba9876543210fedc\n\
                        orders   aaaaaaaaaaaaaaaaaaaa\n";

    #[test]
    fn each_token_names_its_caller() {
        let tokens = TokenSet::parse(Path::new("t"), FILE).unwrap();
        assert_eq!(tokens.len(), 3);
        let caller = |token: &str| tokens.caller(token.as_bytes()).map(|c| c.to_string());
        assert_eq!(caller("0123456789abcdef0123").as_deref(), Some("orders"));
        assert_eq!(caller("aaaaaaaaaaaaaaaaaaaa").as_deref(), Some("orders"));
        assert_eq!(caller("fedcba9876543210fedc").as_deref(), Some("search"));
        assert_eq!(caller("0123456789abcdef012"), None, "a prefix");
        assert_eq!(caller("0123456789abcdef01234"), None, "a longer token");
        assert_eq!(caller(""), None);
        assert_eq!(caller("orders"), None, "a caller name is not a token");
    }

    #[test]
    fn bad_lines_are_refused_by_number_without_the_token() {
        let cases = [
            ("a 0123456789abcdef extra\n", 1, "expected `caller token`"),
            ("\n\nlonely\n", 3, "expected `caller token`"),
            ("a short-token\n", 1, "shorter than 16"),
            (
                "a 0123456789abcdef\nb 0123456789abcdef\n",
                2,
                "listed twice",
            ),
        ];
        for (text, line, reason) in cases {
            let error = TokenSet::parse(Path::new("/etc/tokens"), text)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(&format!("/etc/tokens line {line}")),
                "{error}"
            );
            assert!(error.contains(reason), "{error}");
            assert!(
                !error.contains("0123456789abcdef"),
                "the token leaks: {error}"
            );
        }
    }

    /// A tokens file giving caller `a` one token, opened.
    async fn file_with_token_a() -> (tempfile::TempDir, std::path::PathBuf, TokenFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "a 0123456789abcdef\n").unwrap();
        let file = TokenFile::open(&path).await.unwrap();
        (dir, path, file)
    }

    #[tokio::test]
    async fn a_bad_reload_keeps_the_tokens_in_force() {
        let (_dir, path, file) = file_with_token_a().await;
        let before = file.current();

        std::fs::write(&path, "a tooshort\n").unwrap();
        assert!(file.reload().await.is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(file.reload().await.is_err(), "a missing file is refused");
        assert!(Arc::ptr_eq(&before, &file.current()));

        std::fs::write(&path, "b fedcba9876543210\n").unwrap();
        assert_eq!(file.reload().await.unwrap(), 1);
        assert!(file.current().caller(b"0123456789abcdef").is_none());
        assert_eq!(
            file.current().caller(b"fedcba9876543210").as_deref(),
            Some("b")
        );
    }

    #[tokio::test]
    async fn a_file_without_tokens_revokes_every_token() {
        let (_dir, path, file) = file_with_token_a().await;

        std::fs::write(&path, "# every token revoked\n").unwrap();
        assert_eq!(file.reload().await.unwrap(), 0);
        assert!(file.current().caller(b"0123456789abcdef").is_none());

        std::fs::write(&path, "").unwrap();
        let empty = TokenFile::open(&path).await.unwrap();
        assert!(empty.current().is_empty(), "an empty file starts too");
    }

    #[test]
    fn only_an_owner_only_mode_is_closed_to_others() {
        for mode in [0o100600, 0o100400, 0o100700, 0o600, 0o4600] {
            assert!(!open_to_others(mode), "{mode:o}");
        }
        for mode in [0o100644, 0o100640, 0o100604, 0o100620, 0o100666, 0o100610] {
            assert!(open_to_others(mode), "{mode:o}");
        }
    }
}
