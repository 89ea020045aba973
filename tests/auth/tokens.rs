//! Bearer tokens: a missing or wrong token is refused, a right one
//! admitted; a reload (and SIGHUP to the binary) swaps them.

use std::net::SocketAddr;
use std::path::Path;

use tonic::Code;

use crate::common::{self, InstrumentedStore, TestServer, test_config};
use crate::pki::{Pki, tls_channel};
use crate::{
    HANG_GUARD, ack, assert_nothing_reached_the_cache, health_and_reflection_answer, metric, start,
    watch,
};

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

    // A change stream passes the same check as a call.
    let refused = watch(&channel, 3, None).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_nothing_reached_the_cache(running);
    watch(&channel, 3, Some(&format!("Bearer {ORDERS_TOKEN}")))
        .await
        .unwrap();

    ack(&channel, 1, Some(&format!("Bearer {ORDERS_TOKEN}")))
        .await
        .unwrap();
    ack(&channel, 2, Some(&format!("bearer  {ORDERS_TOKEN} ")))
        .await
        .unwrap();
    assert_eq!(metric(running, "readstates_cache_users"), 3.0);
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
    let error = server.running.reload_credentials().await.unwrap_err();
    assert!(error.to_string().contains("line 1"), "{error}");
    assert!(
        !error.to_string().contains(ORDERS_TOKEN),
        "the token leaks: {error}"
    );
    ack(&channel, 2, Some(&old)).await.unwrap();

    write_tokens(&tokens, &format!("batch {BATCH_TOKEN}\n"));
    server.running.reload_credentials().await.unwrap();
    let refused = ack(&channel, 3, Some(&old)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    ack(&channel, 4, Some(&new)).await.unwrap();
    drop(channel);
    server.shutdown().await;
}

/// Revoking every token: a file with no token (empty, or only comments)
/// is put in force, at a reload and at a start, and refuses every call; a
/// deleted file is refused (a deploy caught half way) and the tokens in
/// force stay.
#[tokio::test]
async fn a_file_without_tokens_revokes_every_token_and_a_deleted_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, &format!("orders {ORDERS_TOKEN}\n"));
    let mut config = test_config(&dir.path().join("data"));
    config.auth.tokens_file = Some(tokens.clone());
    let store = InstrumentedStore::open(&dir.path().join("data"));
    let server = TestServer::start(&config, store).await;
    let channel = common::channel(server.running.addr).await;
    let orders = format!("Bearer {ORDERS_TOKEN}");
    ack(&channel, 1, Some(&orders)).await.unwrap();

    std::fs::remove_file(&tokens).unwrap();
    let error = server.running.reload_credentials().await.unwrap_err();
    assert!(error.to_string().contains("auth.tokens_file"), "{error}");
    ack(&channel, 2, Some(&orders)).await.unwrap();

    write_tokens(&tokens, "# every token revoked\n");
    server.running.reload_credentials().await.unwrap();
    for authorization in [Some(orders.as_str()), None] {
        let refused = ack(&channel, 3, authorization).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    // Health and reflection still answer: the process is up, only
    // ReadStates callers are shut out.
    health_and_reflection_answer(&channel).await;

    // A restart keeps them revoked rather than failing to start.
    write_tokens(&tokens, "");
    let restarted_dir = dir.path().join("restarted");
    let mut restarted_config = test_config(&restarted_dir.join("data"));
    restarted_config.auth.tokens_file = Some(tokens.clone());
    let restarted = start(&restarted_config, &restarted_dir).await;
    let restarted_channel = common::channel(restarted.addr).await;
    let refused = ack(&restarted_channel, 4, Some(&orders)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // Tokens written back are in force at the next reload.
    write_tokens(&tokens, &format!("orders {ORDERS_TOKEN}\n"));
    server.running.reload_credentials().await.unwrap();
    ack(&channel, 5, Some(&orders)).await.unwrap();
    drop((channel, restarted_channel));
    restarted.shutdown().await.unwrap();
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
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, &format!("orders {ORDERS_TOKEN}\n"));
    // Readable by everyone: loaded, with a warning at start and at each
    // reload (rewriting the file keeps its mode).
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
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
    let (warning_sender, warnings) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            assert!(
                !line.contains(ORDERS_TOKEN) && !line.contains(BATCH_TOKEN),
                "a token leaks: {line}"
            );
            if line.contains("WARN") && line.contains("bearer tokens file is open to users") {
                let _ = warning_sender.send(line.clone());
            }
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
    let warned = |when: &str| {
        let line = warnings
            .recv_timeout(HANG_GUARD)
            .unwrap_or_else(|_| panic!("no warning about the file's mode at {when}"));
        assert!(
            line.contains(&format!("path={}", tokens.display())) && line.contains("mode=0644"),
            "{line}"
        );
    };
    warned("start");
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
    warned("the reload");

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
