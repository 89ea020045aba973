//! The rustls configuration of the gRPC port, built from the `[tls]` files:
//! the server's certificate chain and key, and, for mutual TLS, the CAs
//! that sign callers' certificates. The files are re-read on SIGHUP, so
//! renewed certificates need no restart: new connections take the new
//! configuration, open ones keep theirs.
//!
//! The ring provider is named here rather than taken from the process
//! default: the driver's rustls dependency also compiles aws-lc-rs, and with
//! two providers in the build rustls would refuse to pick one by itself.

use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::AuthError;
use crate::config::TlsConfig;

/// The ALPN protocol of gRPC.
const ALPN_H2: &[u8] = b"h2";

/// The TLS configuration in force, and the settings naming its files.
#[derive(Debug)]
pub struct ServerTls {
    settings: TlsConfig,
    /// Swapped whole on reload; each accepted connection clones the `Arc`.
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the files `settings` names; `None` when the port serves
    /// plaintext.
    pub async fn open(settings: &TlsConfig) -> Result<Option<Self>, AuthError> {
        let Some(config) = server_config(settings).await? else {
            return Ok(None);
        };
        Ok(Some(Self {
            settings: settings.clone(),
            current: RwLock::new(config),
        }))
    }

    /// Re-reads the files and puts them in force for new connections; on
    /// an error the configuration in force is kept.
    pub async fn reload(&self) -> Result<(), AuthError> {
        if let Some(config) = server_config(&self.settings).await? {
            *self.current.write() = config;
        }
        Ok(())
    }

    /// Returns the configuration in force.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read())
    }
}

/// Returns the server's TLS configuration, or `None` when the port serves
/// plaintext. With `client_ca_file`, a client certificate is verified when
/// presented (one from another CA fails the handshake) but not required:
/// health checks connect without one, and the ReadStates service refuses
/// calls that lack one.
async fn server_config(tls: &TlsConfig) -> Result<Option<Arc<ServerConfig>>, AuthError> {
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let chain = read_certificates("tls.cert_file", cert_file).await?;
    let key_pem = read_file("tls.key_file", key_file).await?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| AuthError::File {
        setting: "tls.key_file",
        path: key_file.clone(),
        reason: format!("no usable PEM private key: {error}"),
    })?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| AuthError::Tls(format!("protocol versions: {error}")))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates("tls.client_ca_file", ca_file).await? {
                roots.add(certificate).map_err(|error| AuthError::File {
                    setting: "tls.client_ca_file",
                    path: ca_file.clone(),
                    reason: format!("not a usable CA certificate: {error}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|error| AuthError::Tls(format!("client certificate verifier: {error}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| AuthError::Tls(format!("tls.cert_file and tls.key_file: {error}")))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Some(Arc::new(config)))
}

/// Reads the file a setting names (the `[tls]` files here, the `[cluster]`
/// ones in the API's channels); an error names the setting and the path.
pub(crate) async fn read_file(setting: &'static str, path: &Path) -> Result<Vec<u8>, AuthError> {
    tokio::fs::read(path)
        .await
        .map_err(|error| AuthError::File {
            setting,
            path: path.to_owned(),
            reason: error.to_string(),
        })
}

async fn read_certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, AuthError> {
    let pem = read_file(setting, path).await?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| AuthError::File {
            setting,
            path: path.to_owned(),
            reason: format!("bad PEM: {error}"),
        })?;
    if certificates.is_empty() {
        return Err(AuthError::File {
            setting,
            path: path.to_owned(),
            reason: "holds no PEM certificate".to_owned(),
        });
    }
    Ok(certificates)
}
