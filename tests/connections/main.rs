//! Idle, silent and slow connections cannot take the service down, on the
//! gRPC port and on `/metrics`: past the cap the longest-idle connection is
//! closed to make room (those that never made a call first, never one with
//! a call open), a silent one at the first-request (header-read) timeout,
//! an idle one at the idle timeout; and a server out of file descriptors
//! backs off quietly and answers again once it has some.
//!
//! These tests run a server in this process; `fd_limit` runs the binary
//! under `ulimit -n 128`, as the issue's reproduction does.

#[path = "../common/mod.rs"]
mod common;
mod fd_limit;

use std::net::SocketAddr;
use std::time::Duration;

use common::{InstrumentedStore, TestServer, channel, connect, http_get, sample, test_config};
use readstates::api::proto::GetReadStateRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Opens `count` connections to `addr` that never send a byte.
pub(crate) async fn open_idle(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        sockets.push(TcpStream::connect(addr).await.unwrap());
    }
    sockets
}

/// Returns whether the server closed `socket` by `deadline`: reads (and
/// drops whatever the server sent, such as HTTP/2 settings) until the end
/// of the stream or an error.
pub(crate) async fn closed_by_server(socket: &mut TcpStream, deadline: Instant) -> bool {
    let mut buffer = [0; 4096];
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
            Err(_elapsed) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Returns how many of `sockets` the server closed by `deadline`.
pub(crate) async fn count_closed(sockets: &mut [TcpStream], deadline: Instant) -> usize {
    let mut closed = 0;
    for socket in sockets {
        if closed_by_server(socket, deadline).await {
            closed += 1;
        }
    }
    closed
}

pub(crate) async fn scrape(addr: SocketAddr) -> String {
    let (status, text) = tokio::time::timeout(Duration::from_secs(5), http_get(addr, "/metrics"))
        .await
        .expect("the scrape was not answered within 5 s");
    assert_eq!(status, 200);
    text
}

pub(crate) async fn get_state(addr: SocketAddr) {
    let call = async {
        connect(addr)
            .await
            .get_read_state(GetReadStateRequest {
                user_id: 1,
                channel_id: 1,
            })
            .await
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call was not answered within 5 s")
        .expect("the call failed");
}

#[tokio::test]
async fn idle_grpc_sockets_past_the_cap_are_evicted_and_calls_still_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_connections = 64;
    // Long enough that only the cap closes connections here.
    config.server.first_request_timeout_ms = 60_000;
    let mut server = TestServer::start(&config, InstrumentedStore::open(dir.path())).await;
    let (addr, metrics_addr) = (server.running.addr, server.running.metrics_addr.unwrap());
    // A connection that has served a call, and one with a call open.
    server
        .client
        .get_read_state(GetReadStateRequest {
            user_id: 1,
            channel_id: 1,
        })
        .await
        .unwrap();
    let mut health = HealthClient::new(channel(addr).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();

    let mut idle = open_idle(addr, 100).await;
    // Every call still answers, on the connections it had and on new ones.
    get_state(addr).await;
    server
        .client
        .get_read_state(GetReadStateRequest {
            user_id: 1,
            channel_id: 1,
        })
        .await
        .unwrap();
    // The oldest idle sockets made room: 2 busy or used + 100 idle + the
    // call's own connection, at most 64 open.
    let closed = count_closed(&mut idle, Instant::now() + Duration::from_secs(2)).await;
    assert!(closed >= 100 + 3 - 64, "only {closed} idle sockets closed");
    let text = scrape(metrics_addr).await;
    let open = sample(&text, r#"readstates_connections_open{port="grpc"}"#).unwrap();
    assert!(
        open <= 64.0,
        "{open} gRPC connections open past the cap of 64"
    );
    let evicted = sample(
        &text,
        r#"readstates_connections_reaped_total{port="grpc",reason="evicted"}"#,
    )
    .unwrap();
    assert!(evicted >= closed as f64, "{evicted} evictions counted");
    // The open call's connection was never a candidate.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watch.message())
            .await
            .is_err(),
        "the health watch ended: its connection was closed"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn silent_and_idle_grpc_connections_are_closed_at_their_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.first_request_timeout_ms = 500;
    config.server.idle_timeout_ms = 1_000;
    let mut server = TestServer::start(&config, InstrumentedStore::open(dir.path())).await;
    let (addr, metrics_addr) = (server.running.addr, server.running.metrics_addr.unwrap());
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // The HTTP/2 preface and settings, but never a request.
    let mut preface_only = TcpStream::connect(addr).await.unwrap();
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // A client that makes one call, then idles; and one whose call stays
    // open past the idle timeout.
    let get = GetReadStateRequest {
        user_id: 1,
        channel_id: 1,
    };
    server.client.get_read_state(get).await.unwrap();
    let mut health = HealthClient::new(channel(addr).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();

    let deadline = started + Duration::from_millis(2_000);
    assert!(closed_by_server(&mut silent, deadline).await);
    assert!(closed_by_server(&mut preface_only, deadline).await);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed before the first-request timeout"
    );
    let reaped = |text: &str, reason: &str| {
        sample(
            text,
            &format!(r#"readstates_connections_reaped_total{{port="grpc",reason="{reason}"}}"#),
        )
        .unwrap()
    };
    let closed_idle = common::eventually(Duration::from_secs(4), async || {
        reaped(&scrape(metrics_addr).await, "idle") >= 1.0
    })
    .await;
    assert!(closed_idle, "the idle client's connection was not closed");
    let text = scrape(metrics_addr).await;
    assert!(reaped(&text, "first_request_timeout") >= 2.0, "{text}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watch.message())
            .await
            .is_err(),
        "the health watch ended: a connection with a call open was closed"
    );
    // A client whose connection was closed for idling calls again.
    server.client.get_read_state(get).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn idle_and_slow_metrics_connections_cannot_block_a_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics.header_read_timeout_ms = 1_000;
    let server = TestServer::start(&config, InstrumentedStore::open(dir.path())).await;
    let metrics_addr = server.running.metrics_addr.unwrap();
    let started = Instant::now();
    // More idle sockets than the cap (16), and one that stalls mid-headers.
    let mut idle = open_idle(metrics_addr, 40).await;
    let mut slow = TcpStream::connect(metrics_addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    let text = scrape(metrics_addr).await;
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "the scrape waited for a timeout"
    );
    let open = sample(&text, r#"readstates_connections_open{port="metrics"}"#).unwrap();
    assert!(open <= 16.0, "{open} metrics connections open past the cap");

    let deadline = started + Duration::from_secs(3);
    assert!(closed_by_server(&mut slow, deadline).await);
    assert_eq!(count_closed(&mut idle, deadline).await, 40);
    let text = scrape(metrics_addr).await;
    let reaped = |reason: &str| {
        sample(
            &text,
            &format!(r#"readstates_connections_reaped_total{{port="metrics",reason="{reason}"}}"#),
        )
        .unwrap()
    };
    assert!(reaped("evicted") >= 40.0 + 1.0 + 1.0 - 16.0, "{text}");
    // The slow one may have been closed by hyper's header timer instead.
    assert!(reaped("evicted") + reaped("first_request_timeout") >= 40.0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_tls_connection_is_closed_at_the_first_request_timeout_not_counted_as_a_failed_handshake()
 {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
    };
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};

    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let mut config = test_config(dir.path());
    config.tls.cert_file = Some(dir.path().join("server.pem"));
    config.tls.key_file = Some(dir.path().join("server.key"));
    std::fs::write(dir.path().join("server.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
    config.server.first_request_timeout_ms = 500;
    let running = readstates::server::start(&config, InstrumentedStore::open(dir.path()))
        .await
        .unwrap();
    let (addr, metrics_addr) = (running.addr, running.metrics_addr.unwrap());

    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = readstates::api::proto::read_states_client::ReadStatesClient::new(channel);
    client
        .get_read_state(GetReadStateRequest {
            user_id: 1,
            channel_id: 1,
        })
        .await
        .unwrap();

    assert!(closed_by_server(&mut silent, started + Duration::from_secs(2)).await);
    assert!(started.elapsed() >= Duration::from_millis(500));
    let text = scrape(metrics_addr).await;
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series}"));
    assert_eq!(
        value(r#"readstates_connections_reaped_total{port="grpc",reason="first_request_timeout"}"#),
        1.0
    );
    assert_eq!(value("readstates_tls_handshake_failures_total"), 0.0);
    drop(client);
    running.shutdown().await.unwrap();
}
