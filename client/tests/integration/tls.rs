//! Credentials against a real server: TLS with a client certificate
//! (mutual TLS), and bearer tokens. Certificates are made at test time.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use readstates_client::proto::AckRequest;
use readstates_client::{Code, ConnectError, ReadStatesClient, Tls};

use crate::service::Service;

type Ca = CertifiedIssuer<'static, KeyPair>;

fn new_ca() -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "readstates-client test ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Returns the PEM of a certificate for `dns_name` signed by `ca`, and its
/// key's.
fn new_leaf(ca: &Ca, dns_name: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::DnsName(dns_name.try_into().unwrap())];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let certificate = params.signed_by(&key, ca).unwrap();
    (certificate.pem(), key.serialize_pem())
}

fn ack(user_id: u64) -> AckRequest {
    AckRequest {
        user_id,
        channel_id: 7,
        message_id: 100,
        manual: false,
        mention_count: None,
    }
}

#[tokio::test]
async fn mutual_tls_reaches_a_real_server() {
    let ca = new_ca();
    let (server_cert, server_key) = new_leaf(&ca, "localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) =
        new_leaf(&ca, "orders.internal", ExtendedKeyUsagePurpose::ClientAuth);
    let service = Service::start_with(|config, dir| {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            Some(path)
        };
        config.tls.cert_file = write("server.pem", &server_cert);
        config.tls.key_file = write("server.key", &server_key);
        config.tls.client_ca_file = write("ca.pem", &ca.pem());
        config.auth.allowed_callers = vec!["orders.internal".to_owned()];
    })
    .await;
    // The service listens on 127.0.0.1; its certificate names localhost.
    let tls = Tls::new(ca.pem()).domain_name("localhost");
    let client = ReadStatesClient::builder()
        .addresses([service.address()])
        .tls(tls.clone().client_identity(client_cert, client_key))
        .connect()
        .await
        .unwrap();
    let acked = client.ack(ack(1)).await.unwrap();
    assert_eq!(acked.read_state.unwrap().last_message_id, 100);

    // Without a client certificate the service refuses the calls.
    let error = ReadStatesClient::builder()
        .addresses([format!("https://{}", service.address())])
        .tls(tls)
        .connect()
        .await
        .unwrap_err();
    match &error {
        ConnectError::GetRoutingFailed { status, .. } => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        }
        other => panic!("{other:?}"),
    }
    let error = ReadStatesClient::builder()
        .addresses([service.address()])
        .tls(Tls::new("not a certificate"))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Tls(_)), "{error:?}");
    let error = ReadStatesClient::builder()
        .addresses([service.address()])
        .tls(Tls::new(ca.pem()).client_identity(
            new_leaf(&ca, "x", ExtendedKeyUsagePurpose::ClientAuth).0,
            "not a key",
        ))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Tls(_)), "{error:?}");
    service.shutdown().await;
}

#[tokio::test]
async fn a_bearer_token_reaches_a_real_server() {
    const TOKEN: &str = "orders-0123456789abcdef";
    let service = Service::start_with(|config, dir| {
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, format!("orders {TOKEN}\n")).unwrap();
        config.auth.tokens_file = Some(tokens);
    })
    .await;
    let client = ReadStatesClient::builder()
        .addresses([service.address()])
        .bearer_token(TOKEN)
        .connect()
        .await
        .unwrap();
    client.ack(ack(1)).await.unwrap();

    let error = ReadStatesClient::builder()
        .addresses([service.address()])
        .bearer_token("orders-0123456789abcdeX")
        .connect()
        .await
        .unwrap_err();
    match &error {
        ConnectError::GetRoutingFailed { status, .. } => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert!(!status.message().contains("0123456789"), "a token leaks");
        }
        other => panic!("{other:?}"),
    }
    let error = ReadStatesClient::builder()
        .addresses([service.address()])
        .bearer_token("line\nbreak")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::InvalidToken), "{error:?}");
    service.shutdown().await;
}
