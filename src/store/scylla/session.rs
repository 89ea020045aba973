//! Opening a driver session from `[scylla]`: contact points, DC-aware and
//! token-aware load balancing (the driver is shard-aware on ScyllaDB by
//! itself), timeouts, retry and speculative execution, authentication and
//! TLS.
//!
//! TLS uses rustls with the ring provider, chosen explicitly: the driver's
//! rustls dependency also compiles aws-lc-rs, and with two providers in the
//! build rustls would refuse to pick one by itself. The driver connects to
//! nodes by IP address, so with `tls_verify_hostname` a node's certificate
//! must name its IP (a subject alternative name); turning it off still
//! verifies the chain against `tls_ca_file`.

use std::path::Path;
use std::sync::Arc;

use ::scylla::client::execution_profile::ExecutionProfile;
use ::scylla::client::session::Session;
use ::scylla::client::session_builder::SessionBuilder;
use ::scylla::policies::load_balancing::DefaultPolicy;
use ::scylla::policies::retry::{DefaultRetryPolicy, FallthroughRetryPolicy, RetryPolicy};
use ::scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::consistency::consistency;
use super::error::ScyllaError;
use crate::config::{RetryPolicyKind, ScyllaConfig, SpeculativeExecution};

/// Connects to the cluster. `customize` may adjust the builder last (the
/// tests route connections through a proxy with it).
pub(crate) async fn connect(
    config: &ScyllaConfig,
    customize: impl FnOnce(SessionBuilder) -> SessionBuilder,
) -> Result<Session, ScyllaError> {
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.contact_points)
        .prefer_datacenter(config.local_datacenter.clone())
        .connection_timeout(config.connect_timeout())
        .default_execution_profile_handle(execution_profile(config).into_handle());
    if let (Some(username), Some(password)) = (&config.username, &config.password) {
        builder = builder.user(username.as_str(), password.expose());
    }
    if config.tls {
        builder = builder.tls_context(Some(tls_config(config)?));
    }
    let session = customize(builder)
        .build()
        .await
        .map_err(|error| ScyllaError::Connect {
            contact_points: config.contact_points.join(", "),
            message: error.to_string(),
        })?;
    check_local_datacenter(&session, &config.local_datacenter)?;
    Ok(session)
}

/// The settings every request runs with (statements set their own
/// consistency on top).
fn execution_profile(config: &ScyllaConfig) -> ExecutionProfile {
    // Requests stay in the local datacenter: a remote one answers slowly and
    // LOCAL_* consistency could not be met there anyway.
    let load_balancing = DefaultPolicy::builder()
        .token_aware(true)
        .permit_dc_failover(false)
        .build();
    let retry_policy: Arc<dyn RetryPolicy> = match config.retry_policy {
        RetryPolicyKind::Default => Arc::new(DefaultRetryPolicy::new()),
        RetryPolicyKind::Fallthrough => Arc::new(FallthroughRetryPolicy::new()),
    };
    let speculative = match config.speculative_execution {
        SpeculativeExecution::Off => None,
        SpeculativeExecution::Constant => Some(Arc::new(SimpleSpeculativeExecutionPolicy {
            max_retry_count: usize::try_from(config.speculative_max_attempts).unwrap_or(1),
            retry_interval: std::time::Duration::from_millis(config.speculative_delay_ms),
        }) as _),
    };
    ExecutionProfile::builder()
        .load_balancing_policy(load_balancing)
        .retry_policy(retry_policy)
        .speculative_execution_policy(speculative)
        .request_timeout(Some(config.request_timeout()))
        .consistency(consistency(config.read_consistency))
        .serial_consistency(None)
        .build()
}

/// Refuses a `local_datacenter` no node is in: every request would fail
/// with an empty query plan, which is far harder to diagnose later.
fn check_local_datacenter(session: &Session, local: &str) -> Result<(), ScyllaError> {
    let cluster = session.get_cluster_state();
    let mut datacenters: Vec<&str> = cluster
        .get_nodes_info()
        .iter()
        .filter_map(|node| node.datacenter.as_deref())
        .collect();
    if datacenters.contains(&local) {
        return Ok(());
    }
    datacenters.sort_unstable();
    datacenters.dedup();
    Err(ScyllaError::LocalDatacenter {
        local: local.to_owned(),
        known: datacenters.join(", "),
    })
}

/// Builds the rustls client configuration from the TLS settings.
fn tls_config(config: &ScyllaConfig) -> Result<Arc<rustls::ClientConfig>, ScyllaError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = server_verifier(config, &provider)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| tls_error(format!("protocol versions: {error}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let client = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = read_certificates(cert_file)?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|error| {
                tls_error(format!(
                    "reading the private key {}: {error}",
                    key_file.display()
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| tls_error(format!("client certificate: {error}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(client))
}

/// Returns the check of the nodes' certificates: their chain against
/// `tls_ca_file`, and their name unless `tls_verify_hostname` is off.
fn server_verifier(
    config: &ScyllaConfig,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, ScyllaError> {
    let Some(ca_file) = &config.tls_ca_file else {
        return Err(tls_error(
            "scylla.tls_ca_file is required with scylla.tls = true".to_owned(),
        ));
    };
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(ca_file)? {
        roots.add(certificate).map_err(|error| {
            tls_error(format!("CA certificate in {}: {error}", ca_file.display()))
        })?;
    }
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
            .build()
            .map_err(|error| tls_error(format!("certificate verifier: {error}")))?;
    if config.tls_verify_hostname {
        Ok(verifier)
    } else {
        Ok(Arc::new(ChainOnlyVerifier { inner: verifier }))
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ScyllaError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| tls_error(format!("reading {}: {error}", path.display())))?;
    if certificates.is_empty() {
        return Err(tls_error(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certificates)
}

fn tls_error(message: String) -> ScyllaError {
    ScyllaError::Tls(message)
}

/// Verifies a node's certificate chain but not the name in it
/// (`tls_verify_hostname = false`).
#[derive(Debug)]
struct ChainOnlyVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked last, after the chain: a name mismatch means
        // everything else passed.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn testdata(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/store/scylla/testdata")
            .join(file)
    }

    fn tls_settings() -> ScyllaConfig {
        ScyllaConfig {
            tls: true,
            tls_ca_file: Some(testdata("ca.pem")),
            ..ScyllaConfig::default()
        }
    }

    fn verify(config: &ScyllaConfig, node_pem: &str, ip: [u8; 4]) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = server_verifier(config, &provider).unwrap();
        let node = read_certificates(&testdata(node_pem)).unwrap().remove(0);
        let name = ServerName::IpAddress(std::net::IpAddr::from(ip).into());
        verifier
            .verify_server_cert(&node, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn node_certificates_are_verified_against_the_ca_and_the_nodes_ip() {
        let strict = tls_settings();
        assert!(tls_config(&strict).is_ok());
        assert!(verify(&strict, "node.pem", [10, 0, 0, 1]).is_ok());
        let wrong_ip = verify(&strict, "node.pem", [10, 0, 0, 2]).unwrap_err();
        assert!(
            matches!(
                wrong_ip,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{wrong_ip:?}"
        );
        assert!(verify(&strict, "rogue-node.pem", [10, 0, 0, 1]).is_err());

        let chain_only = ScyllaConfig {
            tls_verify_hostname: false,
            ..tls_settings()
        };
        assert!(tls_config(&chain_only).is_ok());
        assert!(
            verify(&chain_only, "node.pem", [10, 0, 0, 2]).is_ok(),
            "the name is not checked"
        );
        assert!(
            verify(&chain_only, "rogue-node.pem", [10, 0, 0, 1]).is_err(),
            "the chain still is"
        );
    }

    #[test]
    fn a_client_certificate_enables_mutual_tls() {
        let config = tls_config(&ScyllaConfig {
            tls_cert_file: Some(testdata("client.pem")),
            tls_key_file: Some(testdata("client.key")),
            ..tls_settings()
        })
        .unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        let without = tls_config(&tls_settings()).unwrap();
        assert!(!without.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn missing_or_bad_tls_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = ScyllaConfig {
            tls_ca_file: Some(dir.path().join("ca.pem")),
            ..tls_settings()
        };
        let error = tls_config(&missing).unwrap_err().to_string();
        assert!(error.contains("ca.pem"), "{error}");

        std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
        let error = tls_config(&missing).unwrap_err().to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");

        let no_key = ScyllaConfig {
            tls_cert_file: Some(testdata("client.pem")),
            tls_key_file: Some(dir.path().join("client.key")),
            ..tls_settings()
        };
        let error = tls_config(&no_key).unwrap_err().to_string();
        assert!(error.contains("client.key"), "{error}");
    }

    #[test]
    fn the_execution_profile_follows_the_config() {
        let profile = execution_profile(&ScyllaConfig {
            speculative_execution: SpeculativeExecution::Constant,
            request_timeout_ms: 1_234,
            read_consistency: crate::config::Consistency::One,
            ..ScyllaConfig::default()
        });
        assert_eq!(
            profile.get_request_timeout(),
            Some(std::time::Duration::from_millis(1_234))
        );
        assert_eq!(
            profile.get_consistency(),
            ::scylla::statement::Consistency::One
        );
        assert!(profile.get_speculative_execution_policy().is_some());
        assert!(profile.get_serial_consistency().is_none());
        let default = execution_profile(&ScyllaConfig::default());
        assert!(default.get_speculative_execution_policy().is_none());
    }
}
