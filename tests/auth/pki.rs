//! Certificates made at test time (a CA, a server's, callers'), and TLS
//! channels that use them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use readstates::config::Config;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::HANG_GUARD;

/// A CA that signs certificates.
pub type Ca = CertifiedIssuer<'static, KeyPair>;

/// A self-signed CA named `name`.
pub fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate signed by `ca`, with these SANs and common name; returns
/// its PEM and its key's PEM.
pub fn new_leaf(
    ca: &Ca,
    sans: Vec<SanType>,
    common_name: Option<&str>,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "readstates tests");
    if let Some(common_name) = common_name {
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let certificate = params.signed_by(&key, ca).unwrap();
    (certificate.pem(), key.serialize_pem())
}

/// A SAN DNS name.
pub fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

/// A SAN URI.
pub fn uri(name: &str) -> SanType {
    SanType::URI(name.try_into().unwrap())
}

/// A CA, the server's certificate (for `localhost`) in files, and the CA's
/// PEM for clients.
pub struct Pki {
    pub ca: Ca,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        let ca = new_ca("readstates test ca");
        let (cert, key) = new_leaf(
            &ca,
            vec![dns("localhost")],
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let pki = Self {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
            ca,
        };
        std::fs::write(&pki.ca_file, pki.ca.pem()).unwrap();
        std::fs::write(&pki.cert_file, cert).unwrap();
        std::fs::write(&pki.key_file, key).unwrap();
        pki
    }

    /// A client identity signed by this CA.
    pub fn client(&self, sans: Vec<SanType>, common_name: Option<&str>) -> Identity {
        let (cert, key) = new_leaf(
            &self.ca,
            sans,
            common_name,
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Identity::from_pem(cert, key)
    }

    /// Sets `config` to serve TLS with this server certificate.
    pub fn serve_tls(&self, config: &mut Config) {
        config.tls.cert_file = Some(self.cert_file.clone());
        config.tls.key_file = Some(self.key_file.clone());
    }
}

/// A TLS channel to `addr` trusting `pki`'s CA, with an optional client
/// identity. Connecting may succeed even when the server refuses the
/// client's certificate: in TLS 1.3 the client finishes its side first.
pub async fn tls_channel(
    addr: SocketAddr,
    pki: &Pki,
    identity: Option<Identity>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca.pem()))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let endpoint = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?;
    tokio::time::timeout(HANG_GUARD, endpoint.connect())
        .await
        .expect("connecting hung")
}
