//! Security of the gRPC port, over real TLS on loopback with certificates
//! made at test time: TLS covers every service and refuses plaintext;
//! mutual TLS admits listed caller identities (SAN DNS name, SAN URI or
//! common name), refuses an unlisted one with `PERMISSION_DENIED`, a call
//! without a certificate with `UNAUTHENTICATED`, and a certificate from
//! another CA in the handshake; bearer tokens refuse a missing or wrong
//! token with `UNAUTHENTICATED`, and a reload swaps them. Refused calls
//! never reach the cache, and health and reflection answer without
//! credentials in every mode.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{InstrumentedStore, TestServer, ack_request, sample, test_config};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use readstates::api::proto::GetReadStateRequest;
use readstates::api::proto::read_states_client::ReadStatesClient;
use readstates::config::Config;
use readstates::server::{self, Running};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// Guards every network step against a hang; never a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

type Ca = CertifiedIssuer<'static, KeyPair>;

fn new_ca(name: &str) -> Ca {
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
fn new_leaf(
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

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

fn uri(name: &str) -> SanType {
    SanType::URI(name.try_into().unwrap())
}

/// A CA, the server's certificate (for `localhost`) in files, and the CA's
/// PEM for clients.
struct Pki {
    ca: Ca,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
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
    fn client(&self, sans: Vec<SanType>, common_name: Option<&str>) -> Identity {
        let (cert, key) = new_leaf(
            &self.ca,
            sans,
            common_name,
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Identity::from_pem(cert, key)
    }

    /// Sets `config` to serve TLS with this server certificate.
    fn serve_tls(&self, config: &mut Config) {
        config.tls.cert_file = Some(self.cert_file.clone());
        config.tls.key_file = Some(self.key_file.clone());
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// A TLS channel to `addr` trusting `pki`'s CA, with an optional client
/// identity. Connecting may succeed even when the server refuses the
/// client's certificate: in TLS 1.3 the client finishes its side first.
async fn tls_channel(
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

/// A plaintext channel, connected lazily.
fn plaintext_channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// Sends one Ack of `user` with an optional `authorization` header.
async fn ack(
    channel: &Channel,
    user: u64,
    authorization: Option<&str>,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(ack_request(user, 1, 10));
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    let mut client = ReadStatesClient::new(channel.clone());
    tokio::time::timeout(HANG_GUARD, client.ack(request))
        .await
        .expect("the call hung")
        .map(|_| ())
}

/// Checks that health reports the service serving, and that reflection
/// lists it, over `channel` without credentials.
async fn health_and_reflection_answer(channel: &Channel) {
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "readstates.v1.ReadStates".to_owned(),
        })
        .await
        .expect("health answers without credentials")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers without credentials")
        .into_inner();
    match stream.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            assert!(
                list.service
                    .iter()
                    .any(|service| service.name == "readstates.v1.ReadStates"),
                "{list:?}"
            );
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

/// Returns a sample of the server's metrics (0 when absent).
fn metric(running: &Running, series: &str) -> f64 {
    sample(&running.metrics.render(&running.cache), series).unwrap_or(0.0)
}

/// Waits for the server to count a failed handshake (the client may see
/// the connection close before the server counts it).
async fn handshake_failed(running: &Running) -> bool {
    common::eventually(HANG_GUARD, async || {
        metric(running, "readstates_tls_handshake_failures_total") >= 1.0
    })
    .await
}

/// Asserts that no call has reached the cache or the ReadStates handlers.
fn assert_nothing_reached_the_cache(running: &Running) {
    assert_eq!(metric(running, "readstates_cache_users"), 0.0);
    assert_eq!(metric(running, "readstates_cache_misses_total"), 0.0);
    assert_eq!(metric(running, "readstates_cache_hits_total"), 0.0);
    let text = running.metrics.render(&running.cache);
    let handled = text
        .lines()
        .filter(|line| line.starts_with("readstates_rpc_duration_seconds_count{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(handled, 0.0, "a refused call reached the service");
}

async fn start(config: &Config, dir: &Path) -> Running {
    let store = InstrumentedStore::open(&dir.join("data"));
    server::start(config, store).await.unwrap()
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Bearer tokens
// ---------------------------------------------------------------------------

const ORDERS_TOKEN: &str = "orders-0123456789abcdef";
const BATCH_TOKEN: &str = "batch-fedcba9876543210";

fn write_tokens(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn tokens_refuse_a_missing_or_wrong_token_and_admit_a_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(
        &tokens,
        &format!("# caller token\norders {ORDERS_TOKEN}\nbatch {BATCH_TOKEN}\n"),
    );
    let mut config = test_config(&dir.path().join("data"));
    config.auth.tokens_file = Some(tokens);
    config.auth.allowed_callers = vec!["orders".to_owned()];
    let store = InstrumentedStore::open(&dir.path().join("data"));
    let server = TestServer::start(&config, store).await;
    let running = &server.running;
    let channel = common::channel(running.addr).await;

    health_and_reflection_answer(&channel).await;
    let refusals = [
        (None, Code::Unauthenticated),
        (Some("Bearer"), Code::Unauthenticated),
        (Some("Basic b3JkZXJzOnNlY3JldA=="), Code::Unauthenticated),
        (
            Some("Bearer orders-0123456789abcdeX"),
            Code::Unauthenticated,
        ),
        (Some("Bearer orders-0123456789abcde"), Code::Unauthenticated),
        // A known token of a caller not in auth.allowed_callers.
        (
            Some("Bearer batch-fedcba9876543210"),
            Code::PermissionDenied,
        ),
    ];
    for (user, (authorization, code)) in (1..).zip(refusals) {
        let refused = ack(&channel, user, authorization).await.unwrap_err();
        assert_eq!(refused.code(), code, "{authorization:?}: {refused:?}");
        assert!(
            !refused.message().contains(ORDERS_TOKEN) && !refused.message().contains(BATCH_TOKEN),
            "a token leaks: {refused:?}"
        );
    }
    assert_eq!(
        metric(
            running,
            r#"readstates_auth_refused_total{reason="unauthenticated"}"#
        ),
        5.0
    );
    assert_eq!(
        metric(
            running,
            r#"readstates_auth_refused_total{reason="permission_denied"}"#
        ),
        1.0
    );
    assert_nothing_reached_the_cache(running);

    ack(&channel, 1, Some(&format!("Bearer {ORDERS_TOKEN}")))
        .await
        .unwrap();
    ack(&channel, 2, Some(&format!("bearer  {ORDERS_TOKEN} ")))
        .await
        .unwrap();
    assert_eq!(metric(running, "readstates_cache_users"), 2.0);
    drop(channel);
    server.shutdown().await;
}

#[tokio::test]
async fn a_reload_swaps_the_tokens_and_a_bad_file_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, &format!("orders {ORDERS_TOKEN}\n"));
    let mut config = test_config(&dir.path().join("data"));
    config.auth.tokens_file = Some(tokens.clone());
    let store = InstrumentedStore::open(&dir.path().join("data"));
    let server = TestServer::start(&config, store).await;
    let channel = common::channel(server.running.addr).await;
    let old = format!("Bearer {ORDERS_TOKEN}");
    let new = format!("Bearer {BATCH_TOKEN}");
    ack(&channel, 1, Some(&old)).await.unwrap();

    // A bad file is refused, and the old token still works.
    write_tokens(&tokens, &format!("orders {ORDERS_TOKEN} extra\n"));
    let error = server.running.reload_tokens().await.unwrap_err();
    assert!(error.to_string().contains("line 1"), "{error}");
    assert!(
        !error.to_string().contains(ORDERS_TOKEN),
        "the token leaks: {error}"
    );
    ack(&channel, 2, Some(&old)).await.unwrap();

    write_tokens(&tokens, &format!("batch {BATCH_TOKEN}\n"));
    server.running.reload_tokens().await.unwrap();
    let refused = ack(&channel, 3, Some(&old)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    ack(&channel, 4, Some(&new)).await.unwrap();
    drop(channel);
    server.shutdown().await;
}

#[tokio::test]
async fn tokens_also_work_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, &format!("orders {ORDERS_TOKEN}\n"));
    let mut config = test_config(&dir.path().join("data"));
    pki.serve_tls(&mut config);
    config.auth.tokens_file = Some(tokens);
    let running = start(&config, dir.path()).await;
    let channel = tls_channel(running.addr, &pki, None).await.unwrap();
    health_and_reflection_answer(&channel).await;
    let refused = ack(&channel, 1, None).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    ack(&channel, 1, Some(&format!("Bearer {ORDERS_TOKEN}")))
        .await
        .unwrap();
    drop(channel);
    running.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Start-up errors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_missing_or_bad_file_stops_the_start_and_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let missing = dir.path().join("no-such.pem");
    let not_a_key = dir.path().join("not-a-key.pem");
    std::fs::write(&not_a_key, "hello\n").unwrap();
    let short_tokens = dir.path().join("short-tokens");
    std::fs::write(&short_tokens, "orders short\n").unwrap();

    type Change<'a> = Box<dyn Fn(&mut Config) + 'a>;
    let cases: [(&str, Change, &Path); 4] = [
        (
            "tls.cert_file",
            Box::new(|config: &mut Config| config.tls.cert_file = Some(missing.clone())),
            &missing,
        ),
        (
            "tls.key_file",
            Box::new(|config: &mut Config| config.tls.key_file = Some(not_a_key.clone())),
            &not_a_key,
        ),
        (
            "tls.client_ca_file",
            Box::new(|config: &mut Config| {
                config.tls.client_ca_file = Some(missing.clone());
                config.auth.allowed_callers = vec!["orders".to_owned()];
            }),
            &missing,
        ),
        (
            "auth.tokens_file",
            Box::new(|config: &mut Config| config.auth.tokens_file = Some(short_tokens.clone())),
            &short_tokens,
        ),
    ];
    for (index, (setting, change, path)) in cases.into_iter().enumerate() {
        let mut config = test_config(&dir.path().join("data"));
        pki.serve_tls(&mut config);
        change(&mut config);
        config.validate().unwrap();
        let store: Arc<dyn readstates::store::Store> =
            InstrumentedStore::open(&dir.path().join(format!("data-{index}")));
        let error = match server::start(&config, store).await {
            Ok(_) => panic!("{setting}: the server started"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains(setting), "{setting}: {error}");
        assert!(
            error.contains(&path.display().to_string()),
            "{setting}: {error}"
        );
    }
}

/// Kills the server process if a test ends early.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sighup_makes_the_binary_reload_its_tokens_file() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, &format!("orders {ORDERS_TOKEN}\n"));
    let config = dir.path().join("readstates.toml");
    let text = format!(
        "[server]\nlisten_addr = \"127.0.0.1:0\"\n[metrics]\nenabled = false\n\
         [store]\ndata_dir = \"{}\"\n[auth]\ntokens_file = \"{}\"\n",
        dir.path().join("data").display(),
        tokens.display()
    );
    std::fs::write(&config, text).unwrap();
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_readstates"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("grpc_addr=").nth(1) {
                let addr = addr.split_whitespace().next().unwrap_or_default();
                let _ = sender.send(addr.to_owned());
            }
        }
    });
    let addr: SocketAddr = receiver
        .recv_timeout(HANG_GUARD)
        .expect("the server never logged its address")
        .parse()
        .unwrap();
    let channel = common::channel(addr).await;
    let old = format!("Bearer {ORDERS_TOKEN}");
    let new = format!("Bearer {BATCH_TOKEN}");
    ack(&channel, 1, Some(&old)).await.unwrap();

    write_tokens(&tokens, &format!("batch {BATCH_TOKEN}\n"));
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert!(
        common::eventually(HANG_GUARD, async || ack(&channel, 2, Some(&new))
            .await
            .is_ok())
        .await,
        "the new token was never accepted"
    );
    let refused = ack(&channel, 3, Some(&old)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    drop(channel);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let exited = common::eventually(HANG_GUARD, async || {
        child
            .0
            .try_wait()
            .unwrap()
            .is_some_and(|status| status.success())
    })
    .await;
    assert!(exited, "the server did not stop cleanly on SIGTERM");
}
