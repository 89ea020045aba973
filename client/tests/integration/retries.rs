//! Retries against scripted instances: what is retried, how often, how
//! soon, and when the budget stops it.

use std::time::Duration;

use readstates_client::proto::AckRequest;
use readstates_client::{Code, ReadStatesClient, RetryPolicy, Status};

use crate::fake::{Fake, Step};

fn ack(user_id: u64, manual: bool) -> AckRequest {
    AckRequest {
        user_id,
        channel_id: 7,
        message_id: 100,
        manual,
        mention_count: None,
    }
}

/// A client of `fake` alone, with short backoffs.
async fn client_of(fake: &Fake, policy: RetryPolicy) -> ReadStatesClient {
    ReadStatesClient::builder()
        .addresses([fake.address()])
        .retry(policy)
        .connect()
        .await
        .unwrap()
}

fn quick() -> RetryPolicy {
    RetryPolicy::default().backoff(Duration::from_millis(1), Duration::from_millis(5))
}

#[tokio::test]
async fn a_manual_ack_is_not_retried_after_unavailable_but_a_plain_ack_is() {
    let fake = Fake::start(1).await;
    let client = client_of(&fake, quick()).await;
    fake.script
        .then([Step::Fail(Status::unavailable("connection reset"))]);
    let refused = client.ack(ack(1, true)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(fake.script.calls().len(), 1, "a manual ack is sent once");

    fake.script
        .then([Step::Fail(Status::unavailable("connection reset"))]);
    client.ack(ack(1, false)).await.unwrap();
    assert_eq!(fake.script.calls().len(), 3, "a plain ack is sent again");
}

#[tokio::test]
async fn a_manual_ack_is_not_retried_after_a_timeout_but_a_plain_ack_is() {
    let fake = Fake::start(1).await;
    let client = client_of(&fake, quick())
        .await
        .with_deadline(Duration::from_millis(100));
    let stall = || Step::Stall(Duration::from_millis(400));
    fake.script.then([stall()]);
    let timed_out = client.ack(ack(1, true)).await.unwrap_err();
    assert_eq!(timed_out.code(), Code::DeadlineExceeded, "{timed_out:?}");
    assert_eq!(fake.script.calls().len(), 1);

    fake.script.then([stall()]);
    client.ack(ack(1, false)).await.unwrap();
    assert_eq!(fake.script.calls().len(), 3);
}

#[tokio::test]
async fn each_attempt_carries_the_deadline_and_the_token() {
    let fake = Fake::start(1).await;
    let client = ReadStatesClient::builder()
        .addresses([fake.address()])
        .bearer_token("orders-0123456789abcdef")
        .deadline(Duration::from_millis(750))
        .connect()
        .await
        .unwrap();
    client.ack(ack(1, false)).await.unwrap();
    client
        .with_deadline(Duration::from_secs(3))
        .ack(ack(1, false))
        .await
        .unwrap();
    let calls = fake.script.calls();
    let timeouts: Vec<Duration> = calls
        .iter()
        .map(|call| grpc_timeout(call.grpc_timeout.as_deref().expect("a grpc-timeout")))
        .collect();
    assert!(
        timeouts[0] <= Duration::from_millis(750) && timeouts[0] > Duration::from_millis(700),
        "{timeouts:?}"
    );
    assert!(timeouts[1] <= Duration::from_secs(3) && timeouts[1] > Duration::from_millis(2900));
    for call in &calls {
        assert_eq!(
            call.authorization.as_deref(),
            Some("Bearer orders-0123456789abcdef")
        );
    }
}

/// Parses a `grpc-timeout` header value.
fn grpc_timeout(value: &str) -> Duration {
    let (amount, unit) = value.split_at(value.len() - 1);
    let amount: u64 = amount.parse().unwrap();
    match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => panic!("unit of {value:?}"),
    }
}

#[tokio::test]
async fn other_failures_are_returned_at_once() {
    let fake = Fake::start(1).await;
    let client = client_of(&fake, quick()).await;
    for status in [
        Status::invalid_argument("user_id must be non-zero"),
        Status::internal("do not retry"),
        Status::permission_denied("not allowed"),
    ] {
        let code = status.code();
        fake.script.then([Step::Fail(status)]);
        let returned = client.ack(ack(1, false)).await.unwrap_err();
        assert_eq!(returned.code(), code);
    }
    assert_eq!(fake.script.calls().len(), 3, "each sent once");
}

#[tokio::test]
async fn resource_exhausted_is_retried_after_a_backoff_not_in_a_tight_loop() {
    let overloaded = || Status::resource_exhausted("overloaded: 64 calls already in flight");
    let least = Duration::from_millis(50);
    let fake = Fake::start(1).await;
    let policy = quick().max_attempts(4).overload_backoff(least);
    let client = client_of(&fake, policy).await;
    // Overload refuses a call before it runs: even a manual ack is retried.
    fake.script.then((0..3).map(|_| Step::Fail(overloaded())));
    client.ack(ack(1, true)).await.unwrap();
    let arrivals: Vec<_> = fake.script.calls().iter().map(|call| call.at).collect();
    assert_eq!(arrivals.len(), 4);
    for pair in arrivals.windows(2) {
        assert!(pair[1] - pair[0] >= least, "{:?}", pair[1] - pair[0]);
    }

    // Against an instance that stays overloaded, attempts within a window
    // are bounded by the backoff, whatever the attempt limit and budget.
    let fake = Fake::start(2).await;
    let policy = quick()
        .max_attempts(1_000)
        .budget(1_000, 1)
        .overload_backoff(least);
    let client = client_of(&fake, policy).await;
    fake.script.always_fail(overloaded());
    let window = Duration::from_millis(500);
    let call = tokio::time::timeout(window, client.ack(ack(1, false))).await;
    assert!(call.is_err(), "still retrying when the window closed");
    let attempts = fake.script.calls().len();
    assert!(
        (2..=11).contains(&attempts),
        "{attempts} attempts in {window:?}"
    );
}

#[tokio::test]
async fn the_retry_budget_stops_retries_against_a_server_that_always_fails() {
    let fake = Fake::start(1).await;
    // 4 attempts a call would be 40 calls; the budget allows 5 retries in
    // all, and no success refills it.
    let policy = quick().max_attempts(4).budget(5, 10);
    let client = client_of(&fake, policy).await;
    fake.script
        .always_fail(Status::unavailable("the read-state store is unavailable"));
    for user_id in 1..=10 {
        let failed = client.ack(ack(user_id, false)).await.unwrap_err();
        assert_eq!(failed.code(), Code::Unavailable);
    }
    assert_eq!(fake.script.calls().len(), 10 + 5);
}

#[tokio::test]
async fn calls_can_be_spawned() {
    // The calls' futures are Send: a client serves many tasks.
    let fake = Fake::start(1).await;
    let client = client_of(&fake, quick()).await;
    let tasks: Vec<_> = (1..=8)
        .map(|user_id| {
            let client = client.clone();
            tokio::spawn(async move { client.ack(ack(user_id, false)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(fake.script.calls().len(), 8);
}
