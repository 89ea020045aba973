//! TLS covers every service and refuses plaintext; client certificates
//! admit listed identities only, and a certificate from another CA fails
//! the handshake.

use rcgen::ExtendedKeyUsagePurpose;
use readstates::api::proto::GetReadStateRequest;
use readstates::api::proto::read_states_client::ReadStatesClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::common::test_config;
use crate::pki::{Pki, dns, new_ca, new_leaf, tls_channel, uri};
use crate::{
    ack, assert_nothing_reached_the_cache, handshake_failed, health_and_reflection_answer, metric,
    plaintext_channel, start,
};

#[tokio::test]
async fn tls_serves_every_service_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut config = test_config(&dir.path().join("data"));
    pki.serve_tls(&mut config);
    let running = start(&config, dir.path()).await;

    let plaintext = ack(&plaintext_channel(running.addr), 1, None)
        .await
        .unwrap_err();
    assert_ne!(plaintext.code(), Code::Ok);
    assert!(
        handshake_failed(&running).await,
        "the plaintext connection was not refused in the handshake"
    );
    assert_nothing_reached_the_cache(&running);

    // Clients that connect and never start their handshake hold up no one
    // else: each handshake runs on its own (were they run in turn, these
    // five would hold the next one up for 50 s, past the hang guard).
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tokio::net::TcpStream::connect(running.addr).await.unwrap());
    }
    let channel = tls_channel(running.addr, &pki, None).await.unwrap();
    ack(&channel, 1, None).await.unwrap();
    let state = ReadStatesClient::new(channel.clone())
        .get_read_state(GetReadStateRequest {
            user_id: 1,
            channel_id: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .read_state
        .unwrap();
    assert_eq!(state.last_message_id, 10);
    health_and_reflection_answer(&channel).await;
    drop((channel, silent));
    running.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Mutual TLS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn client_certificates_admit_listed_identities_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut config = test_config(&dir.path().join("data"));
    pki.serve_tls(&mut config);
    config.tls.client_ca_file = Some(pki.ca_file.clone());
    config.auth.allowed_callers = vec![
        "orders.internal".to_owned(),
        "spiffe://example.org/ingest".to_owned(),
        "search-api".to_owned(),
    ];
    let running = start(&config, dir.path()).await;

    // Without a certificate: health and reflection answer, ReadStates not.
    let anonymous = tls_channel(running.addr, &pki, None).await.unwrap();
    health_and_reflection_answer(&anonymous).await;
    let refused = ack(&anonymous, 1, None).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // Signed by the CA, but named by no entry of the allowlist.
    let unlisted = pki.client(vec![dns("unlisted.internal")], Some("unlisted"));
    let unlisted = tls_channel(running.addr, &pki, Some(unlisted))
        .await
        .unwrap();
    let refused = ack(&unlisted, 2, None).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    health_and_reflection_answer(&unlisted).await;

    // Signed by another CA: the handshake fails; no call gets through.
    let rogue_ca = new_ca("rogue ca");
    let (cert, key) = new_leaf(
        &rogue_ca,
        vec![dns("orders.internal")],
        None,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let rogue = Identity::from_pem(cert, key);
    let rogue_result = match tls_channel(running.addr, &pki, Some(rogue)).await {
        Ok(channel) => ack(&channel, 3, None).await.map_err(|status| status.code()),
        Err(_) => Err(Code::Unavailable),
    };
    assert!(
        rogue_result.is_err(),
        "a certificate from another CA was accepted"
    );
    assert!(
        handshake_failed(&running).await,
        "the other CA's certificate was not refused in the handshake"
    );

    assert_eq!(
        metric(
            &running,
            r#"readstates_auth_refused_total{reason="unauthenticated"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &running,
            r#"readstates_auth_refused_total{reason="permission_denied"}"#
        ),
        1.0
    );
    assert_nothing_reached_the_cache(&running);

    // Each kind of listed identity: a SAN DNS name, a SAN URI, a common name.
    let listed = [
        pki.client(vec![dns("orders.internal")], None),
        pki.client(vec![uri("spiffe://example.org/ingest")], None),
        pki.client(Vec::new(), Some("search-api")),
    ];
    for (user, identity) in (10..).zip(listed) {
        let channel = tls_channel(running.addr, &pki, Some(identity))
            .await
            .unwrap();
        ack(&channel, user, None).await.unwrap();
    }
    assert_eq!(metric(&running, "readstates_cache_users"), 3.0);
    drop((anonymous, unlisted));
    running.shutdown().await.unwrap();
}

/// RFC 6125: the common name counts only in a certificate without DNS or
/// URI SANs, so a listed CN cannot admit a certificate issued for another
/// name.
#[tokio::test]
async fn a_listed_common_name_does_not_admit_a_certificate_whose_sans_differ() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut config = test_config(&dir.path().join("data"));
    pki.serve_tls(&mut config);
    config.tls.client_ca_file = Some(pki.ca_file.clone());
    config.auth.allowed_callers = vec!["search-api".to_owned()];
    let running = start(&config, dir.path()).await;

    let mismatched = [
        pki.client(vec![dns("unlisted.internal")], Some("search-api")),
        pki.client(
            vec![uri("spiffe://example.org/unlisted")],
            Some("search-api"),
        ),
    ];
    for (user, identity) in (1..).zip(mismatched) {
        let channel = tls_channel(running.addr, &pki, Some(identity))
            .await
            .unwrap();
        let refused = ack(&channel, user, None).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    assert_nothing_reached_the_cache(&running);

    // Without a DNS or URI SAN the CN is still the identity.
    let channel = tls_channel(
        running.addr,
        &pki,
        Some(pki.client(Vec::new(), Some("search-api"))),
    )
    .await
    .unwrap();
    ack(&channel, 10, None).await.unwrap();
    drop(channel);
    running.shutdown().await.unwrap();
}

/// The README's certificates: `ops/make-certs.sh` (openssl) makes a CA, a
/// server certificate and a caller's, and they work as documented.
#[tokio::test]
async fn certificates_made_by_openssl_with_the_ops_script_work() {
    let openssl = std::process::Command::new("openssl")
        .arg("version")
        .output();
    if !openssl.is_ok_and(|output| output.status.success()) {
        eprintln!("skipped: openssl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let made = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/make-certs.sh"))
        .arg(&certs)
        .args(["readstates.internal", "orders.internal", "search.internal"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");

    let mut config = test_config(&dir.path().join("data"));
    config.tls.cert_file = Some(certs.join("server.pem"));
    config.tls.key_file = Some(certs.join("server.key"));
    config.tls.client_ca_file = Some(certs.join("ca.pem"));
    config.auth.allowed_callers = vec!["orders.internal".to_owned()];
    let running = start(&config, dir.path()).await;

    let ca = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    let channel_as = async |caller: &str| {
        let identity = Identity::from_pem(
            std::fs::read_to_string(certs.join(format!("{caller}.pem"))).unwrap(),
            std::fs::read_to_string(certs.join(format!("{caller}.key"))).unwrap(),
        );
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca))
            .domain_name("readstates.internal")
            .identity(identity);
        Channel::from_shared(format!("https://{}", running.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    ack(&channel_as("orders.internal").await, 1, None)
        .await
        .unwrap();
    let refused = ack(&channel_as("search.internal").await, 2, None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reload_puts_renewed_certificates_in_force_and_a_bad_file_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let old = Pki::new(dir.path());
    let mut config = test_config(&dir.path().join("data"));
    old.serve_tls(&mut config);
    let running = start(&config, dir.path()).await;
    let opened_before = tls_channel(running.addr, &old, None).await.unwrap();
    ack(&opened_before, 1, None).await.unwrap();

    // A bad key file is refused; new connections still get the old
    // certificate.
    std::fs::write(&old.key_file, "not a key\n").unwrap();
    let error = running.reload_credentials().await.unwrap_err();
    assert!(error.to_string().contains("tls.key_file"), "{error}");
    let channel = tls_channel(running.addr, &old, None).await.unwrap();
    ack(&channel, 2, None).await.unwrap();

    // Renewed under a new CA, in the same files.
    let new = Pki::new(dir.path());
    running.reload_credentials().await.unwrap();
    let channel = tls_channel(running.addr, &new, None).await.unwrap();
    ack(&channel, 3, None).await.unwrap();
    let stale = match tls_channel(running.addr, &old, None).await {
        Ok(channel) => ack(&channel, 4, None).await.is_err(),
        Err(_) => true,
    };
    assert!(stale, "a client trusting only the old CA still got in");
    // A connection opened before the reload keeps its session.
    ack(&opened_before, 5, None).await.unwrap();
    drop((opened_before, channel));
    running.shutdown().await.unwrap();
}
