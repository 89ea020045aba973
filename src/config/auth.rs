//! The `[tls]` and `[auth]` sections: TLS on the gRPC port, and who may
//! call the ReadStates service (client certificates or bearer tokens), with
//! the checks that tie them together. The files they name are read when
//! the server starts (see `crate::auth`), and a missing one is reported by
//! its path there.

use std::path::PathBuf;

use serde::Deserialize;

use super::scylla::list_or_comma_separated;
use super::{Check, ConfigError, first_failure};

/// TLS on the gRPC port. With nothing set (the default) the port speaks
/// plaintext; with `cert_file` and `key_file` every service on it, health
/// and reflection included, is served over TLS only. The files are re-read
/// on SIGHUP; the paths themselves change only with a restart.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the server's certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the server certificate's private key.
    pub key_file: Option<PathBuf>,
    /// PEM file of the CA certificates that sign callers' certificates
    /// (mutual TLS). A certificate from another CA fails the handshake; a
    /// connection without one is accepted, so health checks need none, but
    /// the ReadStates service refuses its calls with `UNAUTHENTICATED`.
    pub client_ca_file: Option<PathBuf>,
}

/// Who may call the ReadStates service. Health and reflection stay open to
/// anyone who can reach the port (and speak TLS, when it is on).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Caller identities allowed: with `tls.client_ca_file`, a DNS or URI
    /// name of the certificate's subject alternative names, or its subject
    /// common name when it has no such SAN (RFC 6125); with `tokens_file`,
    /// caller names of that file (empty:
    /// every caller the file names). Others get `PERMISSION_DENIED`. An
    /// environment override may list them separated by commas.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub allowed_callers: Vec<String>,
    /// A file of `caller token` lines (`#` starts a comment): each call
    /// must carry `authorization: Bearer <token>`. Re-read on SIGHUP. The
    /// alternative to client certificates, for meshes that end TLS first.
    /// A file with no token refuses every call (the way to revoke them
    /// all); a missing or unreadable one stops the start, and a reload
    /// keeps the tokens in force.
    pub tokens_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Returns whether the gRPC port serves TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// Checks the combinations serde cannot express.
pub(super) fn validate(tls: &TlsConfig, auth: &AuthConfig) -> Result<(), ConfigError> {
    let client_certificates = tls.client_ca_file.is_some();
    let checks: [Check; 6] = [
        (
            tls.cert_file.is_some() != tls.key_file.is_some(),
            "tls.key_file",
            "and tls.cert_file must be set together",
        ),
        (
            client_certificates && !tls.enabled(),
            "tls.client_ca_file",
            "needs tls.cert_file and tls.key_file: client certificates are only sent over TLS",
        ),
        (
            client_certificates && auth.tokens_file.is_some(),
            "auth.tokens_file",
            "and tls.client_ca_file are alternatives; set one",
        ),
        (
            client_certificates && auth.allowed_callers.is_empty(),
            "auth.allowed_callers",
            "must list the caller identities allowed when tls.client_ca_file is set",
        ),
        (
            !auth.allowed_callers.is_empty() && !client_certificates && auth.tokens_file.is_none(),
            "auth.allowed_callers",
            "applies only with tls.client_ca_file or auth.tokens_file",
        ),
        (
            auth.allowed_callers
                .iter()
                .any(|caller| caller.is_empty() || caller.contains(char::is_whitespace)),
            "auth.allowed_callers",
            "must not hold an empty name or one with whitespace",
        ),
    ];
    first_failure(checks)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        Config::from_toml_and_env(text, env).map_err(|error| error.to_string())
    }

    #[test]
    fn plaintext_without_authentication_is_the_default() {
        let config = load("", &[]).unwrap();
        assert!(!config.tls.enabled());
        assert_eq!(config.tls, Default::default());
        assert_eq!(config.auth, Default::default());
    }

    #[test]
    fn each_mode_parses_and_takes_env_overrides() {
        let mtls = "[tls]\ncert_file = \"/s.pem\"\nkey_file = \"/s.key\"\nclient_ca_file = \"/ca.pem\"\n\
                    [auth]\nallowed_callers = [\"orders.internal\", \"spiffe://x/y\"]\n";
        let config = load(mtls, &[]).unwrap();
        assert!(config.tls.enabled());
        assert_eq!(
            config.auth.allowed_callers,
            ["orders.internal", "spiffe://x/y"]
        );

        let tokens = load(
            "",
            &[
                ("READSTATES_AUTH_TOKENS_FILE", "/etc/readstates/tokens"),
                ("READSTATES_AUTH_ALLOWED_CALLERS", "orders, search"),
            ],
        )
        .unwrap();
        assert_eq!(
            tokens.auth.tokens_file.as_deref(),
            Some(std::path::Path::new("/etc/readstates/tokens"))
        );
        assert_eq!(tokens.auth.allowed_callers, ["orders", "search"]);
    }

    #[test]
    fn contradictory_settings_are_refused_by_name() {
        let server = "[tls]\ncert_file = \"/s.pem\"\nkey_file = \"/s.key\"\n";
        let cases = [
            ("[tls]\ncert_file = \"/s.pem\"\n".to_owned(), "tls.key_file"),
            ("[tls]\nkey_file = \"/s.key\"\n".to_owned(), "tls.key_file"),
            (
                "[tls]\nclient_ca_file = \"/ca.pem\"\n[auth]\nallowed_callers = [\"a\"]\n"
                    .to_owned(),
                "tls.client_ca_file needs tls.cert_file",
            ),
            (
                format!("{server}client_ca_file = \"/ca.pem\"\n"),
                "auth.allowed_callers must list",
            ),
            (
                format!(
                    "{server}client_ca_file = \"/ca.pem\"\n[auth]\nallowed_callers = [\"a\"]\n\
                     tokens_file = \"/t\"\n"
                ),
                "auth.tokens_file",
            ),
            (
                "[auth]\nallowed_callers = [\"a\"]\n".to_owned(),
                "auth.allowed_callers applies only",
            ),
            (
                "[auth]\ntokens_file = \"/t\"\nallowed_callers = [\"a b\"]\n".to_owned(),
                "auth.allowed_callers must not",
            ),
            ("[tls]\ncert = \"/s.pem\"\n".to_owned(), "cert"),
        ];
        for (text, expected) in cases {
            let error = load(&text, &[]).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
