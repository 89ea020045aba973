//! Security of the gRPC port: TLS for every service on it, and a check of
//! who calls the ReadStates service, by client certificate (mutual TLS,
//! against an allowlist of identities) or by bearer token (for meshes that
//! end TLS before the service).
//!
//! The check is a tonic interceptor on the ReadStates service only: it runs
//! before a request is decoded, so a refused call never reaches the cache
//! or the in-flight limit. Health checking and reflection are left open, so
//! load balancers need no credentials; reflection describes the API, which
//! is public in this repository, and serves no data. A call without
//! credentials gets `UNAUTHENTICATED`, an authenticated caller not allowed
//! `PERMISSION_DENIED`; both are counted.
//!
//! - [`tls`]: the rustls configuration from the `[tls]` files.
//! - [`incoming`]: TLS handshakes of accepted connections.
//! - [`identity`]: a client certificate's names.
//! - [`tokens`]: the bearer tokens file.

mod identity;
mod incoming;
mod tls;
mod tokens;

pub use identity::certificate_names;
pub use incoming::{TlsIncoming, tls_incoming};
pub use tls::ServerTls;
pub(crate) use tls::read_file;
pub use tokens::{MIN_TOKEN_CHARS, TokenFile, TokenSet};

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use tonic::Request;

use crate::config::Config;
use crate::metrics::{Counter, Metrics};

/// Why the security settings could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file named by a setting is missing or unusable.
    #[error("{setting} {path}: {reason}")]
    File {
        setting: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A line of the tokens file is malformed (the message never holds a
    /// token).
    #[error("auth.tokens_file {path} line {line}: {reason}")]
    TokensFile {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    /// rustls refused the certificates or key.
    #[error("tls: {0}")]
    Tls(String),
}

/// The security of a running server: its TLS configuration, the check on
/// ReadStates calls, and the tokens file; SIGHUP re-reads the files.
pub struct Security {
    /// The port's TLS configuration; `None` serves plaintext.
    pub tls: Option<Arc<ServerTls>>,
    /// The check on ReadStates calls.
    pub authenticator: Authenticator,
    tokens: Option<Arc<TokenFile>>,
}

impl Security {
    /// Reads the files the `[tls]` and `[auth]` sections name. The
    /// configuration has been validated.
    pub async fn from_config(config: &Config, metrics: &Metrics) -> Result<Self, AuthError> {
        let tls = ServerTls::open(&config.tls).await?.map(Arc::new);
        let allowed: HashSet<String> = config.auth.allowed_callers.iter().cloned().collect();
        let (requirement, tokens) = match (&config.tls.client_ca_file, &config.auth.tokens_file) {
            (Some(_), _) => (Requirement::ClientCertificates { allowed }, None),
            (None, Some(path)) => {
                let file = Arc::new(TokenFile::open(path).await?);
                let requirement = Requirement::Tokens {
                    file: Arc::clone(&file),
                    allowed,
                };
                (requirement, Some(file))
            }
            (None, None) => (Requirement::Open, None),
        };
        Ok(Self {
            tls,
            authenticator: Authenticator {
                requirement: Arc::new(requirement),
                refused: Refused::register(metrics),
            },
            tokens,
        })
    }

    /// Re-reads the TLS files and the tokens file, those configured; a
    /// file refused keeps what it would have replaced in force. Logs the
    /// outcome, and returns the first error.
    pub async fn reload(&self) -> Result<(), AuthError> {
        let tls = match &self.tls {
            Some(tls) => match tls.reload().await {
                Ok(()) => {
                    tracing::info!("tls certificates reloaded");
                    Ok(())
                }
                Err(error) => {
                    tracing::error!(%error, "tls files rejected; keeping the certificates in force");
                    Err(error)
                }
            },
            None => Ok(()),
        };
        let tokens = match &self.tokens {
            Some(file) => match file.reload().await {
                Ok(count) => {
                    tracing::info!(tokens = count, "bearer tokens reloaded");
                    Ok(())
                }
                Err(error) => {
                    tracing::error!(%error, "bearer tokens file rejected; keeping the tokens in force");
                    Err(error)
                }
            },
            None => Ok(()),
        };
        tls.and(tokens)
    }
}

/// What a ReadStates call must show.
enum Requirement {
    /// Nothing: no authentication configured.
    Open,
    /// A verified client certificate naming an allowed identity.
    ClientCertificates { allowed: HashSet<String> },
    /// A known bearer token of an allowed caller (any caller of the file
    /// when `allowed` is empty).
    Tokens {
        file: Arc<TokenFile>,
        allowed: HashSet<String>,
    },
}

/// Why a call was refused. How a refusal reads on the wire
/// (`UNAUTHENTICATED` or `PERMISSION_DENIED`, and its message) is the API's
/// to say, in `api::status`: this room sits below the API and imports
/// nothing of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No verified client certificate.
    NoCertificate,
    /// No `authorization: Bearer` header.
    NoToken,
    /// A bearer token the tokens file does not hold.
    UnknownToken,
    /// An authenticated caller not in `auth.allowed_callers`.
    NotAllowed,
}

/// The check on ReadStates calls (a tonic interceptor: see `api::status`).
#[derive(Clone)]
pub struct Authenticator {
    requirement: Arc<Requirement>,
    refused: Refused,
}

/// `readstates_auth_refused_total`, by `reason`.
#[derive(Clone)]
struct Refused {
    unauthenticated: Counter,
    permission_denied: Counter,
}

impl Refused {
    fn register(metrics: &Metrics) -> Self {
        let [unauthenticated, permission_denied] = metrics.counters(
            "readstates_auth_refused_total",
            "reason",
            "ReadStates calls refused by the authentication check: reason=\"unauthenticated\" (no or bad credentials), \"permission_denied\" (a caller not allowed).",
            ["unauthenticated", "permission_denied"],
        );
        Self {
            unauthenticated,
            permission_denied,
        }
    }
}

impl Authenticator {
    /// Admits a call, or refuses it; a refusal is counted and logged.
    pub fn admit(&self, request: &Request<()>) -> Result<(), Refusal> {
        let result = self.check(request);
        if let Err(refusal) = result {
            let counter = match refusal {
                Refusal::NotAllowed => &self.refused.permission_denied,
                _ => &self.refused.unauthenticated,
            };
            counter.increment(1);
            tracing::debug!(?refusal, peer = ?request.remote_addr(), "call refused");
        }
        result
    }

    fn check(&self, request: &Request<()>) -> Result<(), Refusal> {
        match self.requirement.as_ref() {
            Requirement::Open => Ok(()),
            Requirement::ClientCertificates { allowed } => {
                // rustls verified the chain in the handshake; the leaf
                // comes first.
                let certificates = request.peer_certs().ok_or(Refusal::NoCertificate)?;
                let leaf = certificates.first().ok_or(Refusal::NoCertificate)?;
                let names = certificate_names(leaf);
                if names.iter().any(|name| allowed.contains(name)) {
                    Ok(())
                } else {
                    tracing::debug!(?names, "client certificate not in auth.allowed_callers");
                    Err(Refusal::NotAllowed)
                }
            }
            Requirement::Tokens { file, allowed } => {
                let token = bearer_token(request).ok_or(Refusal::NoToken)?;
                let caller = file
                    .current()
                    .caller(token.as_bytes())
                    .ok_or(Refusal::UnknownToken)?;
                if allowed.is_empty() || allowed.contains(caller.as_ref()) {
                    Ok(())
                } else {
                    tracing::debug!(%caller, "token's caller not in auth.allowed_callers");
                    Err(Refusal::NotAllowed)
                }
            }
        }
    }
}

/// Returns the token of an `authorization: Bearer <token>` header (the
/// scheme is case-insensitive).
fn bearer_token(request: &Request<()>) -> Option<&str> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
