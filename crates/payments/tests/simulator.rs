//! The PSP port's promises, checked against the simulator.

use std::sync::Arc;
use std::time::Duration;

use payments::{
    AuthorizeRequest, Behaviour, CaptureRequest, Money, Outcome, PaymentProvider, PspError,
    PspSimulator, RefundRequest, Transaction, TransactionKind, TransactionStatus, VoidRequest,
};

fn usd(amount_minor: i64) -> Money {
    Money::new("USD", amount_minor)
}

fn authorize_request(key: &str, token: &str, amount_minor: i64, order: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        idempotency_key: key.to_owned(),
        payment_token: token.to_owned(),
        amount: usd(amount_minor),
        reference: order.to_owned(),
    }
}

async fn authorize(
    psp: &PspSimulator,
    key: &str,
    token: &str,
    amount_minor: i64,
    order: &str,
) -> Result<Transaction, PspError> {
    psp.authorize(authorize_request(key, token, amount_minor, order))
        .await
}

async fn capture(
    psp: &PspSimulator,
    key: &str,
    authorization: &Transaction,
    amount_minor: i64,
) -> Result<Transaction, PspError> {
    psp.capture(CaptureRequest {
        idempotency_key: key.to_owned(),
        authorization_id: authorization.id.clone(),
        amount: usd(amount_minor),
    })
    .await
}

async fn void(
    psp: &PspSimulator,
    key: &str,
    authorization: &Transaction,
) -> Result<Transaction, PspError> {
    psp.void(VoidRequest {
        idempotency_key: key.to_owned(),
        authorization_id: authorization.id.clone(),
    })
    .await
}

async fn refund(
    psp: &PspSimulator,
    key: &str,
    capture: &Transaction,
    amount_minor: i64,
) -> Result<Transaction, PspError> {
    psp.refund(RefundRequest {
        idempotency_key: key.to_owned(),
        capture_id: capture.id.clone(),
        amount: usd(amount_minor),
    })
    .await
}

async fn ledger(psp: &PspSimulator, order: &str) -> Vec<Transaction> {
    psp.transactions(Some(order)).await.expect("ledger")
}

#[tokio::test]
async fn card_numbers_are_refused_before_anything_else() {
    let psp = PspSimulator::new();
    for pan in [
        "4242424242424242",
        "4242 4242 4242 4242",
        "4242-4242-4242-4242",
        "4242424242424241", // fails Luhn: still card data
        "4000056655665",    // 13 digits
        "6011000990139424123",
    ] {
        let request = authorize_request("key-card", pan, 1000, "order-card");
        assert!(
            !format!("{request:?}").contains("4242"),
            "Debug must not print card numbers"
        );
        assert_eq!(
            psp.authorize(request).await,
            Err(PspError::CardDataRejected)
        );
    }
    // Refused before idempotency or token handling: nothing recorded, the key is still free.
    assert!(psp.transactions(None).await.unwrap().is_empty());
    assert_eq!(psp.lookup("key-card").await, Ok(None));
    let authorization = authorize(&psp, "key-card", "tok_ok", 1000, "order-card")
        .await
        .expect("a real token with the same key succeeds");
    assert!(authorization.succeeded());
}

#[tokio::test]
async fn repeat_with_same_key_returns_the_original_authorization_without_acting_again() {
    let psp = PspSimulator::new();
    let first = authorize(&psp, "key-1", "tok_ok", 1250, "order-1")
        .await
        .unwrap();
    let again = authorize(&psp, "key-1", "tok_ok", 1250, "order-1")
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(first.kind, TransactionKind::Authorization);
    assert_eq!(first.status, TransactionStatus::Succeeded);
    assert_eq!(first.amount, usd(1250));
    assert_eq!(first.reference, "order-1");
    assert_eq!(first.idempotency_key, "key-1");
    assert_eq!(first.parent_id, None);
    assert_eq!(psp.authorization_count("order-1"), 1);
    assert_eq!(ledger(&psp, "order-1").await, vec![first.clone()]);
    assert_eq!(psp.lookup("key-1").await, Ok(Some(first)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_authorizations_with_one_key_make_exactly_one() {
    let psp = PspSimulator::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let psp = psp.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                authorize(&psp, "key-race", "tok_ok", 900, "order-race").await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(
            task.await
                .unwrap()
                .expect("every caller gets the authorization")
                .id,
        );
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "all 50 callers see the same authorization");
    assert_eq!(psp.authorization_count("order-race"), 1);
    assert_eq!(ledger(&psp, "order-race").await.len(), 1);
}

#[tokio::test]
async fn same_key_with_a_different_request_is_refused() {
    let psp = PspSimulator::new();
    let original = authorize(&psp, "key-2", "tok_ok", 1000, "order-2")
        .await
        .unwrap();
    assert_eq!(
        authorize(&psp, "key-2", "tok_ok", 1001, "order-2").await,
        Err(PspError::IdempotencyKeyReused)
    );
    assert_eq!(
        authorize(&psp, "key-2", "tok_ok", 1000, "order-other").await,
        Err(PspError::IdempotencyKeyReused)
    );
    // Keys are global: reusing an authorization's key for its capture is a different request.
    assert_eq!(
        capture(&psp, "key-2", &original, 1000).await,
        Err(PspError::IdempotencyKeyReused)
    );
    assert_eq!(psp.transactions(None).await.unwrap(), vec![original]);
}

#[tokio::test]
async fn soft_decline_is_recorded_and_replayed_for_the_same_key() {
    let psp = PspSimulator::new();
    let declined = Err(PspError::Declined {
        code: "insufficient_funds".into(),
        hard: false,
    });
    let token = "tok_decline_insufficient_funds";
    assert_eq!(
        authorize(&psp, "key-3", token, 5000, "order-3").await,
        declined
    );
    assert_eq!(
        authorize(&psp, "key-3", token, 5000, "order-3").await,
        declined
    );

    let recorded = ledger(&psp, "order-3").await;
    assert_eq!(
        recorded.len(),
        1,
        "the repeat did not decline a second time"
    );
    assert_eq!(
        recorded[0].status,
        TransactionStatus::Declined {
            code: "insufficient_funds".into(),
            hard: false
        }
    );
    assert_eq!(psp.lookup("key-3").await, Ok(Some(recorded[0].clone())));
    assert_eq!(psp.authorization_count("order-3"), 0, "no hold was placed");
    // A declined authorization cannot be captured.
    assert!(matches!(
        capture(&psp, "key-3-capture", &recorded[0], 5000).await,
        Err(PspError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn hard_decline_says_do_not_retry() {
    let psp = PspSimulator::new();
    let result = authorize(&psp, "key-4", "tok_decline_stolen_card", 5000, "order-4").await;
    assert_eq!(
        result,
        Err(PspError::Declined {
            code: "stolen_card".into(),
            hard: true
        })
    );
    assert!(!result.unwrap_err().is_retryable());
}

#[tokio::test]
async fn partial_capture_then_refunds_up_to_captured_and_no_further() {
    let psp = PspSimulator::new();
    let authorization = authorize(&psp, "a", "tok_ok", 10_000, "order-5")
        .await
        .unwrap();
    assert_eq!(
        capture(&psp, "c-over", &authorization, 10_001).await,
        Err(PspError::ExceedsAuthorized)
    );
    let captured = capture(&psp, "c", &authorization, 7_000).await.unwrap();
    assert_eq!(captured.kind, TransactionKind::Capture);
    assert_eq!(captured.amount, usd(7_000));
    assert_eq!(
        captured.parent_id.as_deref(),
        Some(authorization.id.as_str())
    );
    assert_eq!(captured.reference, "order-5");
    assert_eq!(
        capture(&psp, "c", &authorization, 7_000).await,
        Ok(captured.clone())
    );
    assert!(
        matches!(
            capture(&psp, "c-second", &authorization, 1_000).await,
            Err(PspError::InvalidRequest(_))
        ),
        "one capture per authorization"
    );

    let first_refund = refund(&psp, "r1", &captured, 3_000).await.unwrap();
    assert_eq!(first_refund.kind, TransactionKind::Refund);
    assert_eq!(
        first_refund.parent_id.as_deref(),
        Some(captured.id.as_str())
    );
    assert_eq!(
        refund(&psp, "r2", &captured, 4_001).await,
        Err(PspError::ExceedsCaptured)
    );
    let second_refund = refund(&psp, "r2", &captured, 4_000).await.unwrap();
    assert_eq!(
        refund(&psp, "r1", &captured, 3_000).await,
        Ok(first_refund.clone())
    );
    assert_eq!(
        refund(&psp, "r3", &captured, 1).await,
        Err(PspError::ExceedsCaptured)
    );
    assert_eq!(
        refund(&psp, "r4", &authorization, 1).await,
        Err(PspError::NotFound),
        "refunds name the capture, not the authorization"
    );
    assert_eq!(
        ledger(&psp, "order-5").await,
        vec![authorization, captured, first_refund, second_refund]
    );
}

#[tokio::test]
async fn void_releases_an_uncaptured_authorization_only() {
    let psp = PspSimulator::new();
    let captured_authorization = authorize(&psp, "a1", "tok_ok", 800, "order-6")
        .await
        .unwrap();
    capture(&psp, "c1", &captured_authorization, 800)
        .await
        .unwrap();
    assert!(matches!(
        void(&psp, "v1", &captured_authorization).await,
        Err(PspError::InvalidRequest(_))
    ));

    let authorization = authorize(&psp, "a2", "tok_ok", 800, "order-7")
        .await
        .unwrap();
    let voided = void(&psp, "v2", &authorization).await.unwrap();
    assert_eq!(voided.kind, TransactionKind::Void);
    assert_eq!(voided.amount, usd(800));
    assert_eq!(void(&psp, "v2", &authorization).await, Ok(voided));
    assert!(matches!(
        capture(&psp, "c2", &authorization, 800).await,
        Err(PspError::InvalidRequest(_))
    ));
    assert!(matches!(
        void(&psp, "v3", &authorization).await,
        Err(PspError::InvalidRequest(_))
    ));
    let unknown = Transaction {
        id: "auth_unknown".into(),
        ..authorization
    };
    assert_eq!(void(&psp, "v4", &unknown).await, Err(PspError::NotFound));
}

#[tokio::test(start_paused = true)]
async fn reply_lost_authorization_is_found_by_lookup_and_a_retry_returns_it() {
    let psp = PspSimulator::new();
    let lost = authorize(&psp, "key-8", "tok_reply_lost", 2000, "order-8").await;
    assert_eq!(lost, Err(PspError::Timeout));
    assert!(lost.unwrap_err().is_outcome_unknown());

    let found = psp
        .lookup("key-8")
        .await
        .unwrap()
        .expect("the PSP acted although the reply was lost");
    assert!(found.succeeded());
    let retried = authorize(&psp, "key-8", "tok_reply_lost", 2000, "order-8").await;
    assert_eq!(
        retried,
        Ok(found),
        "the retry returns the original, not a second one"
    );
    assert_eq!(psp.authorization_count("order-8"), 1);
    assert_eq!(ledger(&psp, "order-8").await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn timeout_leaves_nothing() {
    let psp = PspSimulator::new();
    for _ in 0..2 {
        assert_eq!(
            authorize(&psp, "key-9", "tok_timeout", 2000, "order-9").await,
            Err(PspError::Timeout)
        );
    }
    assert_eq!(psp.lookup("key-9").await, Ok(None));
    assert!(ledger(&psp, "order-9").await.is_empty());
    assert_eq!(psp.authorization_count("order-9"), 0);
}

#[tokio::test]
async fn unavailable_does_nothing() {
    let psp = PspSimulator::new();
    assert_eq!(
        authorize(&psp, "key-10", "tok_unavailable", 100, "order-10").await,
        Err(PspError::Unavailable)
    );
    assert_eq!(psp.lookup("key-10").await, Ok(None));
}

#[tokio::test]
async fn fails_the_first_n_calls_then_succeeds_with_the_same_key() {
    let psp = PspSimulator::new();
    psp.configure(
        "tok_flaky",
        Behaviour::succeed().after_failures(3, Outcome::Unavailable),
    );
    for _ in 0..3 {
        assert_eq!(
            authorize(&psp, "key-11", "tok_flaky", 100, "order-11").await,
            Err(PspError::Unavailable)
        );
    }
    let authorization = authorize(&psp, "key-11", "tok_flaky", 100, "order-11")
        .await
        .unwrap();
    assert_eq!(
        authorize(&psp, "key-11", "tok_flaky", 100, "order-11").await,
        Ok(authorization)
    );
    assert_eq!(psp.authorization_count("order-11"), 1);
}

#[tokio::test(start_paused = true)]
async fn captures_follow_their_authorization_tokens_behaviour() {
    let psp = PspSimulator::new();
    // Authorizations with this token succeed; its captures lose their reply once.
    psp.configure_for(
        "tok_capture_lost_once",
        TransactionKind::Capture,
        Behaviour::succeed().after_failures(1, Outcome::ReplyLost),
    );
    psp.configure("tok_capture_lost_once", Behaviour::succeed());
    let authorization = authorize(&psp, "a", "tok_capture_lost_once", 500, "order-12")
        .await
        .unwrap();
    assert_eq!(
        capture(&psp, "c", &authorization, 500).await,
        Err(PspError::Timeout)
    );
    let found = psp
        .lookup("c")
        .await
        .unwrap()
        .expect("the capture happened");
    assert_eq!(
        capture(&psp, "c", &authorization, 500).await,
        Ok(found.clone())
    );
    // Refunds follow the same token: not programmed for refunds, so they succeed.
    refund(&psp, "r", &found, 500).await.unwrap();

    // A grammar token applies to every operation: a reply_lost authorization's capture is lost too.
    authorize(&psp, "a2", "tok_reply_lost", 500, "order-13")
        .await
        .unwrap_err();
    let lost_authorization = psp.lookup("a2").await.unwrap().unwrap();
    assert_eq!(
        capture(&psp, "c2", &lost_authorization, 500).await,
        Err(PspError::Timeout)
    );
    assert!(psp.lookup("c2").await.unwrap().is_some());
}

/// Asserts, on the paused test clock, that `call` has not replied after `silent` but has
/// `margin` later. Virtual time: nothing is measured, nothing can flake.
async fn replies_between<T: std::fmt::Debug>(
    call: impl Future<Output = T>,
    silent: Duration,
    margin: Duration,
) -> T {
    let mut call = std::pin::pin!(call);
    assert!(
        tokio::time::timeout(silent, &mut call).await.is_err(),
        "replied before {silent:?}"
    );
    tokio::time::timeout(margin, &mut call)
        .await
        .expect("no reply after the expected delay")
}

#[tokio::test(start_paused = true)]
async fn token_latency_delays_the_reply() {
    let psp = PspSimulator::new();
    let call = authorize(&psp, "key-14", "tok_latency_250", 100, "order-14");
    let reply = replies_between(call, Duration::from_millis(249), Duration::from_millis(2)).await;
    assert!(reply.unwrap().succeeded());
}

#[tokio::test(start_paused = true)]
async fn global_latency_and_timeout_delay_are_honoured() {
    let psp = PspSimulator::new();
    psp.set_latency(Duration::from_millis(40));
    psp.set_timeout_delay(Duration::from_millis(1000));
    let call = authorize(&psp, "key-15", "tok_ok", 100, "order-15");
    let reply = replies_between(call, Duration::from_millis(39), Duration::from_millis(2)).await;
    assert!(reply.is_ok());

    let call = authorize(&psp, "key-16", "tok_timeout", 100, "order-16");
    let reply = replies_between(call, Duration::from_millis(1039), Duration::from_millis(2)).await;
    assert_eq!(reply, Err(PspError::Timeout));

    let call = psp.lookup("key-15");
    let reply = replies_between(call, Duration::from_millis(39), Duration::from_millis(2)).await;
    assert!(reply.unwrap().is_some(), "reads pay the global latency too");
}

#[tokio::test]
async fn invalid_requests_are_refused_and_do_not_consume_the_key() {
    let psp = PspSimulator::new();
    let cases = [
        authorize_request("", "tok_ok", 100, "order-17"),
        authorize_request("k", "tok_ok", 0, "order-17"),
        authorize_request("k", "tok_ok", -5, "order-17"),
        authorize_request("k", "tok_ok", 100, ""),
        authorize_request("k", "", 100, "order-17"),
        authorize_request("k", "tok_visa", 100, "order-17"),
        AuthorizeRequest {
            amount: Money::new("usd", 100),
            ..authorize_request("k", "tok_ok", 100, "order-17")
        },
        authorize_request(&"k".repeat(256), "tok_ok", 100, "order-17"),
    ];
    for request in cases {
        let described = format!("{request:?}");
        assert!(
            matches!(
                psp.authorize(request).await,
                Err(PspError::InvalidRequest(_))
            ),
            "{described}"
        );
    }
    let authorization = authorize(&psp, "k", "tok_ok", 100, "order-17")
        .await
        .unwrap();
    assert!(matches!(
        psp.capture(CaptureRequest {
            idempotency_key: "c".into(),
            authorization_id: authorization.id.clone(),
            amount: Money::new("EUR", 100),
        })
        .await,
        Err(PspError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn the_ledger_lists_everything_in_order_per_reference() {
    let psp = PspSimulator::new();
    let first = authorize(&psp, "a1", "tok_ok", 100, "order-18")
        .await
        .unwrap();
    authorize(
        &psp,
        "a2",
        "tok_decline_insufficient_funds",
        100,
        "order-19",
    )
    .await
    .unwrap_err();
    let captured = capture(&psp, "c1", &first, 100).await.unwrap();
    assert_eq!(ledger(&psp, "order-18").await, vec![first, captured]);
    assert_eq!(ledger(&psp, "order-19").await.len(), 1);
    assert_eq!(psp.transactions(None).await.unwrap().len(), 3);
    assert!(ledger(&psp, "order-none").await.is_empty());
}

#[tokio::test]
async fn reads_can_fail_until_they_answer() {
    let psp = PspSimulator::new();
    let reply_lost_twin = psp.clone();
    authorize(&reply_lost_twin, "key-20", "tok_ok", 100, "order-20")
        .await
        .unwrap();
    psp.fail_reads(2);
    assert_eq!(psp.lookup("key-20").await, Err(PspError::Unavailable));
    assert_eq!(psp.transactions(None).await, Err(PspError::Unavailable));
    assert!(
        psp.lookup("key-20").await.unwrap().is_some(),
        "clones share one ledger"
    );
}

#[tokio::test]
async fn the_port_is_object_safe() {
    let psp: Arc<dyn PaymentProvider> = Arc::new(PspSimulator::new());
    assert!(
        psp.authorize(authorize_request("k", "tok_ok", 1, "o"))
            .await
            .is_ok()
    );
    assert_eq!(psp.lookup("missing").await, Ok(None));
}

fn store_file(path: &std::path::Path) -> Arc<dyn store::Store> {
    Arc::new(store::EmbeddedStore::open(path, store::EmbeddedOptions::default()).expect("store"))
}

#[tokio::test]
async fn a_simulator_on_a_store_file_answers_as_before_after_it_is_reopened() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("store.redb");
    let before = {
        let psp = PspSimulator::durable(store_file(&path)).await.unwrap();
        let authorization = authorize(&psp, "a-1", "tok_ok", 1_000, "ord-1")
            .await
            .unwrap();
        let captured = capture(&psp, "c-1", &authorization, 800).await.unwrap();
        let refunded = refund(&psp, "r-1", &captured, 300).await.unwrap();
        let declined = authorize(&psp, "a-2", "tok_decline_insufficient_funds", 500, "ord-2").await;
        let to_void = authorize(&psp, "a-3", "tok_ok", 700, "ord-3")
            .await
            .unwrap();
        let voided = void(&psp, "v-3", &to_void).await.unwrap();
        // Its captures follow its token's behaviour, after the restart too.
        let slow = authorize(&psp, "a-4", "tok_latency_1", 200, "ord-4")
            .await
            .unwrap();
        assert_eq!(
            declined,
            Err(PspError::Declined {
                code: "insufficient_funds".into(),
                hard: false
            })
        );
        (authorization, captured, refunded, to_void, voided, slow)
    };
    let (authorization, captured, refunded, to_void, voided, slow) = before;
    let everything_before = [authorization.clone(), captured.clone(), refunded.clone()];

    let psp = PspSimulator::durable(store_file(&path)).await.unwrap();
    // Lookups answer what was recorded.
    for (key, recorded) in [
        ("a-1", &authorization),
        ("c-1", &captured),
        ("r-1", &refunded),
        ("a-3", &to_void),
        ("v-3", &voided),
        ("a-4", &slow),
    ] {
        assert_eq!(
            psp.lookup(key).await.unwrap().as_ref(),
            Some(recorded),
            "{key}"
        );
    }
    assert_eq!(psp.lookup("never-used").await.unwrap(), None);
    // Idempotent replays answer as before — a decline too — and a reused key is still refused.
    assert_eq!(
        authorize(&psp, "a-1", "tok_ok", 1_000, "ord-1").await,
        Ok(authorization.clone())
    );
    assert_eq!(
        capture(&psp, "c-1", &authorization, 800).await,
        Ok(captured.clone())
    );
    assert_eq!(
        refund(&psp, "r-1", &captured, 300).await,
        Ok(refunded.clone())
    );
    assert!(matches!(
        authorize(&psp, "a-2", "tok_decline_insufficient_funds", 500, "ord-2").await,
        Err(PspError::Declined { .. })
    ));
    assert_eq!(
        authorize(&psp, "a-1", "tok_ok", 999, "ord-1").await,
        Err(PspError::IdempotencyKeyReused)
    );
    // The money rules still know the past.
    assert_eq!(
        refund(&psp, "r-2", &captured, 501).await,
        Err(PspError::ExceedsCaptured)
    );
    assert!(matches!(
        capture(&psp, "c-3", &to_void, 700).await,
        Err(PspError::InvalidRequest(_))
    ));
    let second_refund = refund(&psp, "r-2", &captured, 500).await.unwrap();
    let slow_capture = capture(&psp, "c-4", &slow, 200).await.unwrap();
    // The ledger comes back in the order recorded, and goes on from there.
    let ledger = psp.transactions(None).await.unwrap();
    assert_eq!(ledger[..3], everything_before[..]);
    assert_eq!(ledger.len(), 9);
    assert_eq!(ledger[7], second_refund);
    assert_eq!(ledger[8], slow_capture);
    assert_eq!(psp.authorization_count("ord-1"), 1);
}

#[tokio::test]
async fn a_call_whose_record_could_not_be_stored_is_never_reported_done_until_it_is() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("store.redb");
    let faulty = Arc::new(store::testing::FaultyStore::new(store_file(&path)));
    let psp = PspSimulator::durable(faulty.clone()).await.unwrap();
    faulty.fail_commits(payments::durable::KIND, 1);
    // Acted, but not durable: the caller hears "outcome unknown", not success.
    assert_eq!(
        authorize(&psp, "a-1", "tok_ok", 1_000, "ord-1").await,
        Err(PspError::Timeout)
    );
    // Asking again (a lookup, or a retry with the key) stores it first, then answers.
    let found = psp.lookup("a-1").await.unwrap().expect("recorded");
    assert_eq!(
        authorize(&psp, "a-1", "tok_ok", 1_000, "ord-1").await,
        Ok(found.clone())
    );
    drop(psp);
    drop(faulty);
    let reopened = PspSimulator::durable(store_file(&path)).await.unwrap();
    assert_eq!(reopened.lookup("a-1").await.unwrap(), Some(found));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulator_on_mongodb_answers_as_before_after_it_is_reopened() {
    let (uri, _server) = match std::env::var("MONGODB_URI") {
        Ok(uri) => (uri, None),
        Err(_) => {
            let server = store::testing::MongoServer::start();
            (server.uri(), Some(server))
        }
    };
    let database = format!(
        "psp_test_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let connect = || async {
        let store: Arc<dyn store::Store> = Arc::new(
            store::MongoStore::connect(&uri, &database, store::MongoOptions::default())
                .await
                .expect("connect"),
        );
        store
    };
    let (authorization, captured) = {
        let psp = PspSimulator::durable(connect().await).await.unwrap();
        let authorization = authorize(&psp, "a-1", "tok_ok", 1_000, "ord-1")
            .await
            .unwrap();
        let captured = capture(&psp, "c-1", &authorization, 1_000).await.unwrap();
        (authorization, captured)
    };
    let psp = PspSimulator::durable(connect().await).await.unwrap();
    assert_eq!(
        psp.lookup("a-1").await.unwrap(),
        Some(authorization.clone())
    );
    assert_eq!(
        capture(&psp, "c-1", &authorization, 1_000).await,
        Ok(captured.clone())
    );
    assert_eq!(
        refund(&psp, "r-1", &captured, 1_001).await,
        Err(PspError::ExceedsCaptured)
    );
    refund(&psp, "r-1", &captured, 1_000).await.unwrap();
    assert_eq!(ledger(&psp, "ord-1").await.len(), 3);
}

#[tokio::test]
async fn a_second_simulator_on_the_same_store_cannot_claim_a_key_the_first_recorded() {
    let directory = tempfile::tempdir().unwrap();
    let store = store_file(&directory.path().join("store.redb"));
    let first = PspSimulator::durable(store.clone()).await.unwrap();
    let second = PspSimulator::durable(store.clone()).await.unwrap();
    let recorded = authorize(&first, "a-1", "tok_ok", 1_000, "ord-1")
        .await
        .unwrap();
    // The second does not know the key and acts, but cannot make its own transaction durable
    // under it: its caller hears "outcome unknown", never a second success.
    assert_eq!(
        authorize(&second, "a-1", "tok_ok", 1_000, "ord-1").await,
        Err(PspError::Timeout)
    );
    // Started on the store afterwards, a simulator knows the recorded one.
    let restarted = PspSimulator::durable(store).await.unwrap();
    assert_eq!(restarted.lookup("a-1").await.unwrap(), Some(recorded));
}
