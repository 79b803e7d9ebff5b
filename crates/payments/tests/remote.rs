//! The PSP as a process of its own: the simulator served over `commerce.psp.v1` and called through
//! the port's remote adapter keeps every promise of the port — the same transactions, the same
//! errors, replays by key — and a call that fails on the network says truthfully whether anything
//! may have happened (never sent → `Unavailable`, reply lost → `Timeout`).

use std::sync::Arc;
use std::time::Duration;

use commerce_api::commerce::psp::v1 as wire;
use commerce_api::commerce::psp::v1::psp_service_client::PspServiceClient;
use commerce_api::commerce::psp::v1::psp_service_server::PspServiceServer;
use payments::{
    AuthorizeRequest, CaptureRequest, Money, PaymentProvider, PspApi, PspError, PspSimulator,
    RefundRequest, RemotePsp, TransactionKind, TransactionStatus, VoidRequest,
};
use platform::outbound::{Callee, CalleeConfig};
use tokio::net::TcpListener;

struct Served {
    simulator: PspSimulator,
    remote: RemotePsp,
    addr: String,
    /// The PSP process: its own runtime, so dropping it ends every connection at once.
    process: Option<tokio::runtime::Runtime>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Served {
    /// The PSP process dies: listener and open connections gone.
    fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.shutdown_background();
        }
    }
}

async fn serve() -> Served {
    let simulator = PspSimulator::new();
    simulator.set_timeout_delay(Duration::from_millis(50));
    let process = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let service = PspServiceServer::new(PspApi::new(Arc::new(simulator.clone())));
    process.spawn(async move {
        let listener = TcpListener::from_std(listener).unwrap();
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    Served {
        simulator,
        remote: remote_psp(&addr),
        addr,
        process: Some(process),
    }
}

/// The adapter as a service builds it: one attempt per call (the caller's policy retries).
fn remote_psp(addr: &str) -> RemotePsp {
    let mut config = CalleeConfig::new("psp", addr);
    config.policy.max_attempts = 1;
    config.policy.timeout = Duration::from_secs(10);
    let callee = Callee::new(
        config,
        &commerce_api::DESCRIPTOR_POOL,
        &platform::interceptors::Metrics::default(),
    )
    .unwrap();
    RemotePsp::new(callee)
}

fn authorize(key: &str, token: &str, cents: i64) -> AuthorizeRequest {
    AuthorizeRequest {
        idempotency_key: key.into(),
        payment_token: token.into(),
        amount: Money::new("USD", cents),
        reference: format!("order-{key}"),
    }
}

#[tokio::test]
async fn a_payment_made_remotely_is_the_same_transaction_the_simulator_recorded() {
    let psp = serve().await;
    let authorization = psp
        .remote
        .authorize(authorize("k1", "tok_ok", 1_250))
        .await
        .unwrap();
    assert_eq!(authorization.kind, TransactionKind::Authorization);
    assert_eq!(authorization.amount, Money::new("USD", 1_250));
    let replayed = psp
        .remote
        .authorize(authorize("k1", "tok_ok", 1_250))
        .await
        .unwrap();
    assert_eq!(replayed, authorization, "replayed by key, field for field");
    let capture = psp
        .remote
        .capture(CaptureRequest {
            idempotency_key: "k1:capture".into(),
            authorization_id: authorization.id.clone(),
            amount: Money::new("USD", 1_000),
        })
        .await
        .unwrap();
    assert_eq!(
        capture.parent_id.as_deref(),
        Some(authorization.id.as_str())
    );
    let refund = psp
        .remote
        .refund(RefundRequest {
            idempotency_key: "k1:refund".into(),
            capture_id: capture.id.clone(),
            amount: Money::new("USD", 400),
        })
        .await
        .unwrap();
    assert_eq!(refund.kind, TransactionKind::Refund);
    assert_eq!(
        psp.remote
            .refund(RefundRequest {
                idempotency_key: "k1:refund-2".into(),
                capture_id: capture.id.clone(),
                amount: Money::new("USD", 700),
            })
            .await,
        Err(PspError::ExceedsCaptured)
    );
    let remote_ledger = psp.remote.transactions(Some("order-k1")).await.unwrap();
    let local_ledger = psp.simulator.transactions(Some("order-k1")).await.unwrap();
    assert_eq!(remote_ledger, local_ledger);
    assert_eq!(
        psp.remote.lookup("k1:capture").await.unwrap(),
        Some(capture)
    );
    assert_eq!(psp.remote.lookup("never-used").await.unwrap(), None);
}

#[tokio::test]
async fn every_error_of_the_port_comes_back_as_itself() {
    let psp = serve().await;
    let declined = psp
        .remote
        .authorize(authorize("d1", "tok_decline_stolen_card", 500))
        .await;
    assert_eq!(
        declined,
        Err(PspError::Declined {
            code: "stolen_card".into(),
            hard: true
        })
    );
    assert_eq!(
        psp.remote
            .authorize(authorize("d1", "tok_decline_stolen_card", 500))
            .await,
        declined,
        "a decline replays"
    );
    let declined_record = psp.remote.lookup("d1").await.unwrap().unwrap();
    assert_eq!(
        declined_record.status,
        TransactionStatus::Declined {
            code: "stolen_card".into(),
            hard: true
        }
    );
    assert_eq!(
        psp.remote.authorize(authorize("d1", "tok_ok", 999)).await,
        Err(PspError::IdempotencyKeyReused)
    );
    assert_eq!(
        psp.remote
            .authorize(authorize("c1", "4242 4242 4242 4242", 500))
            .await,
        Err(PspError::CardDataRejected)
    );
    assert_eq!(
        psp.remote
            .void(VoidRequest {
                idempotency_key: "v1".into(),
                authorization_id: "auth_unknown".into(),
            })
            .await,
        Err(PspError::NotFound)
    );
    assert!(matches!(
        psp.remote.authorize(authorize("u1", "tok_visa", 500)).await,
        Err(PspError::InvalidRequest(detail)) if detail.contains("unknown payment token")
    ));
    assert_eq!(
        psp.remote
            .authorize(authorize("t1", "tok_timeout", 500))
            .await,
        Err(PspError::Timeout)
    );
    assert_eq!(
        psp.remote
            .authorize(authorize("n1", "tok_unavailable", 500))
            .await,
        Err(PspError::Unavailable)
    );
    // A lost reply is recorded; the same key then finds it.
    assert_eq!(
        psp.remote
            .authorize(authorize("r1", "tok_reply_lost", 500))
            .await,
        Err(PspError::Timeout)
    );
    assert!(psp.remote.lookup("r1").await.unwrap().unwrap().succeeded());
}

#[tokio::test]
async fn a_psp_that_cannot_be_reached_did_nothing_and_one_that_dies_mid_call_may_have() {
    let mut psp = serve().await;
    // The reply comes after 2 s; the server dies while the call is in flight.
    let slow = {
        let remote = psp.remote.clone();
        tokio::spawn(async move {
            remote
                .authorize(authorize("slow", "tok_latency_2000", 500))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    psp.kill();
    let outcome = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Err(PspError::Timeout), "sent, then lost: unknown");
    assert!(
        psp.simulator.lookup("slow").await.unwrap().is_some(),
        "and indeed it acted"
    );
    // The killed runtime closes its listener in the background: wait until connections are
    // refused, so "nothing listens" is what the next call meets.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&psp.addr).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let nothing_listens = remote_psp(&psp.addr);
    assert_eq!(
        nothing_listens
            .authorize(authorize("never", "tok_ok", 500))
            .await,
        Err(PspError::Unavailable),
        "refused connection: nothing happened"
    );
    assert_eq!(
        nothing_listens.lookup("never").await,
        Err(PspError::Unavailable)
    );
}

#[tokio::test]
async fn the_ledger_pages_in_order_and_a_foreign_page_token_is_refused() {
    let psp = serve().await;
    for n in 0..5 {
        psp.remote
            .authorize(authorize(&format!("p{n}"), "tok_ok", 100 + n))
            .await
            .unwrap();
    }
    let mut client = PspServiceClient::connect(psp.addr.clone()).await.unwrap();
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_transactions(wire::ListTransactionsRequest {
                reference: String::new(),
                page_size: 2,
                page_token: page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.transactions.len() <= 2);
        seen.extend(page.transactions.into_iter().map(|t| t.idempotency_key));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4"]);
    let refused = client
        .list_transactions(wire::ListTransactionsRequest {
            page_token: "not-a-position".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(psp.remote.transactions(None).await.unwrap().len(), 5);
}
