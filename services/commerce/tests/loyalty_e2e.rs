//! Loyalty end to end through the running binary, with a real Redis as the event bus and the
//! balance cache: enrol → accrue (checkout's `OrderPaid` on the Redis stream) → pending → active
//! (tenant clock advanced) → redeem → refund (`OrderRefunded`) → expire → reconcile clean.
//! The same scenario runs once over Connect JSON and once over gRPC, each in its own tenant.

mod common;

use common::client::{Client, Protocol};

use std::time::{Duration, Instant};

use commerce_api::commerce::checkout::v1::{OrderPaid, OrderRefunded};
use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::loyalty::v1;
use commerce_api::commerce::subscriptions::v1::{AdvanceClockRequest, AdvanceClockResponse};
use events::{Bus as _, BusMessage};
use prost_reflect::ReflectMessage;

const DAY_MS: i64 = 86_400_000;

impl Client {
    async fn balance(&self, member: &str) -> v1::Balance {
        let response: v1::GetBalanceResponse = self
            .call(
                "/commerce.loyalty.v1.MemberService/GetBalance",
                v1::GetBalanceRequest {
                    member_id: member.into(),
                },
                None,
            )
            .await
            .unwrap();
        response.balance.unwrap()
    }

    /// Polls the balance until `done` holds (the event consumer works asynchronously).
    async fn balance_when(&self, member: &str, done: impl Fn(&v1::Balance) -> bool) -> v1::Balance {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let balance = self.balance(member).await;
            if done(&balance) || Instant::now() > deadline {
                return balance;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn advance(&self, to_ms: i64) {
        let _: AdvanceClockResponse = self
            .call(
                "/commerce.subscriptions.v1.ClockService/AdvanceClock",
                AdvanceClockRequest {
                    target_time: Some(prost_types::Timestamp {
                        seconds: to_ms / 1000,
                        nanos: 0,
                    }),
                },
                None,
            )
            .await
            .unwrap();
    }
}

fn usd(cents: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor: cents,
    })
}

/// A checkout event on the bus, as checkout's relay would publish it.
async fn publish(bus: &events::RedisBus, tenant: &str, order: &str, event: &impl ReflectMessage) {
    let source = events::EventSource {
        aggregate: store::AggregateKey::new(tenant, "order", order),
        version: 1,
        occurred_at: std::time::SystemTime::now(),
        traceparent: None,
        tracestate: None,
    };
    let outbox = events::envelope::outbox_event(&source, event);
    let message = BusMessage {
        event_id: outbox.event_id,
        event_type: outbox.event_type.clone(),
        tenant: tenant.into(),
        envelope: outbox.envelope,
    };
    bus.publish(&events::stream_of(&outbox.event_type), &message)
        .await
        .unwrap();
}

async fn scenario(client: &Client, bus: &events::RedisBus) {
    let tenant = client.tenant.as_str();
    // Freeze the tenant clock at tomorrow midnight; set a program with a 3-day lock and 30-day expiry.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = (wall / DAY_MS + 1) * DAY_MS;
    client.advance(t0).await;
    let program: v1::GetProgramResponse = client
        .call(
            "/commerce.loyalty.v1.ProgramService/GetProgram",
            v1::GetProgramRequest {},
            None,
        )
        .await
        .unwrap();
    let mut program = program.program.unwrap();
    program.pending_days = 3;
    program.expiry = Some(v1::ExpiryPolicy {
        kind: v1::ExpiryKind::AfterDays as i32,
        days: 30,
        notice_days: 7,
    });
    let _: v1::UpdateProgramResponse = client
        .call(
            "/commerce.loyalty.v1.ProgramService/UpdateProgram",
            v1::UpdateProgramRequest {
                program: Some(program),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["pending_days".into(), "expiry".into()],
                }),
                expected_version: 0,
            },
            None,
        )
        .await
        .unwrap();

    // Enrol.
    let enrolled: v1::EnrollMemberResponse = client
        .call(
            "/commerce.loyalty.v1.MemberService/EnrollMember",
            v1::EnrollMemberRequest {
                customer_id: "cust-1".into(),
                registered: true,
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    let member = enrolled.member.unwrap().member_id;

    // Accrue from checkout's event, delivered twice: 50 points, pending.
    let paid = OrderPaid {
        order_id: "o-1".into(),
        member_id: member.clone(),
        eligible_amount: usd(5_000),
        captured_amount: usd(5_400),
        ..Default::default()
    };
    publish(bus, tenant, "o-1", &paid).await;
    publish(bus, tenant, "o-1", &paid).await;
    let balance = client.balance_when(&member, |b| b.pending_points > 0).await;
    assert_eq!(
        (balance.pending_points, balance.active_points),
        (50, 0),
        "{balance:?}"
    );

    // Pending → active after the lock period.
    client.advance(t0 + 3 * DAY_MS).await;
    let balance = client.balance(&member).await;
    assert_eq!(
        (balance.pending_points, balance.active_points),
        (0, 50),
        "{balance:?}"
    );

    // Redeem 20 points and post the hold.
    let created: v1::CreateRewardResponse = client
        .call(
            "/commerce.loyalty.v1.RewardService/CreateReward",
            v1::CreateRewardRequest {
                reward: Some(v1::Reward {
                    display_name: "Free coffee".into(),
                    point_cost: 20,
                    benefit: Some(v1::reward::Benefit::FreeItemId("coffee".into())),
                    active: true,
                    ..Default::default()
                }),
            },
            Some("create-coffee"),
        )
        .await
        .unwrap();
    let reward = created.reward.unwrap().reward_id;
    let redeemed: v1::RedeemRewardResponse = client
        .call(
            "/commerce.loyalty.v1.RewardService/RedeemReward",
            v1::RedeemRewardRequest {
                member_id: member.clone(),
                reward_id: reward.clone(),
                order_id: "o-2".into(),
            },
            Some("redeem-1"),
        )
        .await
        .unwrap();
    let redemption = redeemed.redemption.unwrap().redemption_id;
    let balance = client.balance(&member).await;
    assert_eq!((balance.available_points, balance.held_points), (30, 20));
    let committed: v1::CommitRedemptionResponse = client
        .call(
            "/commerce.loyalty.v1.RewardService/CommitRedemption",
            v1::CommitRedemptionRequest {
                redemption_id: redemption.clone(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        committed.redemption.unwrap().status,
        v1::RedemptionStatus::Posted as i32
    );

    // Half the order refunded (by checkout's event): 25 of the 50 points go back.
    publish(
        bus,
        tenant,
        "o-1",
        &OrderRefunded {
            order_id: "o-1".into(),
            refund_id: "rf-1".into(),
            amount: usd(2_700),
            total_refunded: usd(2_700),
            captured_amount: usd(5_400),
            eligible_amount: usd(5_000),
            member_id: member.clone(),
        },
    )
    .await;
    let balance = client.balance_when(&member, |b| b.active_points < 30).await;
    assert_eq!(
        (balance.active_points, balance.lifetime_points),
        (5, 25),
        "{balance:?}"
    );

    // The rest expires 30 days after activation.
    let expiring: v1::ListExpiringPointsResponse = client
        .call(
            "/commerce.loyalty.v1.MemberService/ListExpiringPoints",
            v1::ListExpiringPointsRequest {
                member_id: member.clone(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(expiring.expiring_points.len(), 1);
    assert_eq!(expiring.expiring_points[0].points, 5);
    client.advance(t0 + 33 * DAY_MS).await;
    let balance = client.balance(&member).await;
    assert_eq!(balance.active_points, 0, "{balance:?}");

    // History, newest first, ends with the accrual; the books are clean.
    let entries: v1::ListPointsEntriesResponse = client
        .call(
            "/commerce.loyalty.v1.MemberService/ListPointsEntries",
            v1::ListPointsEntriesRequest {
                member_id: member.clone(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    let kinds: Vec<i32> = entries.entries.iter().map(|entry| entry.kind).collect();
    use v1::PointsEntryKind as K;
    assert_eq!(
        kinds,
        [
            K::Expiry,
            K::RefundReversal,
            K::RedemptionPosted,
            K::RedemptionHold,
            K::Activation,
            K::Accrual
        ]
        .map(|kind| kind as i32),
        "{entries:?}"
    );
    assert!(
        entries
            .entries
            .iter()
            .all(|entry| entry.entry_hash.len() == 64)
    );
    let report: v1::ReconcileLedgerResponse = client
        .call(
            "/commerce.loyalty.v1.ProgramService/ReconcileLedger",
            v1::ReconcileLedgerRequest {},
            None,
        )
        .await
        .unwrap();
    assert!(report.clean, "{report:?}");
    assert_eq!(report.entries_checked, 6);
    let jobs: v1::RunDueJobsResponse = client
        .call(
            "/commerce.loyalty.v1.ProgramService/RunDueJobs",
            v1::RunDueJobsRequest {},
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (jobs.activated_lots, jobs.expired_lots, jobs.expired_holds),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loyalty_end_to_end_over_connect_json_and_grpc() {
    let redis = fastpath::testing::RedisServer::start();
    let server = common::start_in(tempfile::tempdir().unwrap(), &["--redis-url", &redis.url()]);
    let bus = events::RedisBus::new(
        fastpath::connect(&redis.url()).await.unwrap(),
        fastpath::Degraded::default(),
    );
    for (protocol, tenant) in [
        (Protocol::ConnectJson, "e2e-connect"),
        (Protocol::Grpc, "e2e-grpc"),
    ] {
        let client = Client {
            protocol,
            addr: server.addr.clone(),
            token: common::token_for(tenant),
            tenant: tenant.into(),
            timeout: None,
        };
        scenario(&client, &bus).await;
    }

    // The operator command proves the same offline (serve stopped: it holds the store file),
    // and names an entry edited behind the ledger's back.
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let data_dir = server.data_dir.path().to_owned();
    let reconcile = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_commerce"))
            .args(["loyalty", "reconcile", "--tenant", "e2e-grpc", "--data-dir"])
            .arg(&data_dir)
            .output()
            .unwrap()
    };
    let clean = reconcile();
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{stdout}");
    assert!(
        stdout.contains("6 entries") && stdout.contains("clean"),
        "{stdout}"
    );
    let store =
        store::EmbeddedStore::open(data_dir.join("store.redb"), Default::default()).unwrap();
    ledger::testing::tamper(&store, "e2e-grpc", "accrual:o-1", false).await;
    drop(store);
    let broken = reconcile();
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert!(!broken.status.success(), "{stdout}");
    assert!(
        stdout.contains("hash_mismatch entry=\"accrual:o-1\""),
        "{stdout}"
    );
}
