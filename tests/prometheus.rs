//! A real Prometheus server (Debian's `prometheus`, installed by
//! `ops/install-prometheus.sh`) scrapes a running readstates server, and a
//! `histogram_quantile` over the RPC latency histogram answers through
//! Prometheus's query API. Outside CI the test is skipped, with a message,
//! when the binary is absent; in CI (`CI` set) it must run.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{InstrumentedStore, TestServer, eventually, http_get, test_config};
use readstates::api::proto::AckRequest;

fn prometheus_binary() -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", "command -v prometheus"])
        .output()
        .ok()?;
    let path = String::from_utf8(found.stdout).ok()?.trim().to_owned();
    (found.status.success() && !path.is_empty()).then_some(path)
}

/// Kills the Prometheus process when the test ends, however it ends.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_loopback_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn prometheus_computes_rpc_latency_quantiles_from_our_histograms() {
    let Some(binary) = prometheus_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus is not installed in CI: .ci/run must run ops/install-prometheus.sh"
        );
        eprintln!("skipped: no prometheus binary (install it with ops/install-prometheus.sh)");
        return;
    };

    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir.path().join("readstates"));
    let store = InstrumentedStore::open(&dir.path().join("readstates"));
    let server = TestServer::start(&config, store).await;
    let metrics_addr = server.running.metrics_addr.unwrap();

    let prometheus_addr = free_loopback_port();
    let prometheus_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: readstates\n    static_configs:\n      - targets: ['{metrics_addr}']\n"
        ),
    )
    .unwrap();
    let _prometheus = Prometheus(
        Command::new(binary)
            .arg(format!("--config.file={}", prometheus_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prometheus_addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    // Steady traffic while Prometheus scrapes.
    let mut client = server.client.clone();
    let traffic = tokio::spawn(async move {
        for round in 0..2_000u64 {
            client
                .ack(AckRequest {
                    user_id: round % 50 + 1,
                    channel_id: round % 7 + 1,
                    message_id: round + 1,
                    manual: false,
                    mention_count: None,
                })
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let query = percent_encode(
        "histogram_quantile(0.99, sum by (le) (rate(readstates_rpc_duration_seconds_bucket{method=\"Ack\",code=\"OK\"}[5s])))",
    );
    let path = format!("/api/v1/query?query={query}");
    let mut last_answer = String::new();
    let mut p99 = None;
    let answered = eventually(Duration::from_secs(60), async || {
        let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(prometheus_addr),
        )
        .await
        else {
            return false; // not listening yet
        };
        drop(stream);
        let (status, body) = http_get(prometheus_addr, &path).await;
        last_answer = body.clone();
        if status != 200 {
            return false;
        }
        let start = body.find('{').unwrap_or(0);
        let end = body.rfind('}').map_or(body.len(), |end| end + 1);
        let Ok(answer) = serde_json::from_str::<serde_json::Value>(&body[start..end]) else {
            return false;
        };
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|value| value.parse::<f64>().ok());
        p99 = value.filter(|value| value.is_finite() && *value > 0.0);
        p99.is_some()
    })
    .await;
    traffic.abort();
    assert!(
        answered,
        "no p99 from Prometheus; last answer: {last_answer}"
    );
    let p99 = p99.unwrap();
    assert!(
        p99 < 10.0,
        "p99 of {p99} s is outside the histogram's range"
    );
    server.shutdown().await;
}
