//! Health and reflection answer anyone, credentials or not, so they take
//! small requests only (4 KiB): a larger one is refused before it is
//! decoded, and what reflection echoes back of a name is as small.

use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::{v1, v1alpha};

use crate::common::{self, InstrumentedStore, TestServer, test_config};
use crate::{HANG_GUARD, health_and_reflection_answer};

/// Within the limit, with room for the request's own framing.
const ALLOWED_NAME_BYTES: usize = 3 * 1024;
const OVERSIZED_NAME_BYTES: usize = 1 << 20;
/// The most an answer about an oversized name may carry: tonic's own
/// "message length too large" sentence, not the name.
const SHORT_MESSAGE_BYTES: usize = 200;

/// Asks v1 reflection for the file of `symbol`; returns the answer, or
/// the status that ended the stream (`Ok(None)`: it ended without one).
async fn v1_symbol(channel: &Channel, symbol: String) -> Result<Option<String>, tonic::Status> {
    use v1::server_reflection_client::ServerReflectionClient;
    use v1::server_reflection_request::MessageRequest;
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol)),
    };
    let call = async {
        let mut stream = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await?
            .into_inner();
        Ok(stream.message().await?.map(|answer| format!("{answer:?}")))
    };
    tokio::time::timeout(HANG_GUARD, call)
        .await
        .expect("reflection hung")
}

/// [`v1_symbol`] in v1alpha.
async fn v1alpha_symbol(
    channel: &Channel,
    symbol: String,
) -> Result<Option<String>, tonic::Status> {
    use v1alpha::server_reflection_client::ServerReflectionClient;
    use v1alpha::server_reflection_request::MessageRequest;
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol)),
    };
    let call = async {
        let mut stream = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await?
            .into_inner();
        Ok(stream.message().await?.map(|answer| format!("{answer:?}")))
    };
    tokio::time::timeout(HANG_GUARD, call)
        .await
        .expect("reflection hung")
}

#[tokio::test]
async fn health_and_reflection_take_small_requests_and_echo_little() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir.path().join("data"));
    let store = InstrumentedStore::open(&dir.path().join("data"));
    let server = TestServer::start(&config, store).await;
    let channel = common::channel(server.running.addr).await;
    let mut health = HealthClient::new(channel.clone());

    // Health: an oversized service name is refused undecoded; a long one
    // within the limit is answered as unknown, without being echoed.
    let refused = health
        .check(HealthCheckRequest {
            service: "s".repeat(OVERSIZED_NAME_BYTES),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{:?}", refused.code());
    assert!(
        refused.message().len() < SHORT_MESSAGE_BYTES,
        "{}",
        refused.message()
    );
    let unknown = health
        .check(HealthCheckRequest {
            service: "s".repeat(ALLOWED_NAME_BYTES),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // Reflection, both versions: a long unknown symbol within the limit
    // comes back in the error once, so the answer is about as small as
    // the request; an oversized one is refused undecoded (tonic-reflection
    // then ends the stream without an answer) and never echoed.
    let long = "x".repeat(ALLOWED_NAME_BYTES);
    let oversized = "x".repeat(OVERSIZED_NAME_BYTES);
    for version in ["v1", "v1alpha"] {
        let ask = async |symbol: String| match version {
            "v1" => v1_symbol(&channel, symbol).await,
            _ => v1alpha_symbol(&channel, symbol).await,
        };
        let unknown = ask(long.clone()).await.unwrap_err();
        assert_eq!(
            unknown.code(),
            Code::NotFound,
            "{version}: {:?}",
            unknown.code()
        );
        assert!(
            unknown.message().len() <= ALLOWED_NAME_BYTES + 64,
            "{version}: a {} byte message",
            unknown.message().len()
        );

        match ask(oversized.clone()).await {
            // What tonic-reflection 0.14 does: its handler sees the decode
            // error and ends the stream, with status OK.
            Ok(None) => {}
            Ok(Some(answer)) => panic!(
                "{version}: an oversized symbol was answered ({} bytes)",
                answer.len()
            ),
            Err(status) => {
                assert!(
                    matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
                    "{version}: {:?}",
                    status.code()
                );
                assert!(
                    status.message().len() < SHORT_MESSAGE_BYTES,
                    "{version}: a {} byte message",
                    status.message().len()
                );
            }
        }
    }

    // Both still answer ordinary requests on the same connection.
    health_and_reflection_answer(&channel).await;
    drop((health, channel));
    server.shutdown().await;
}
