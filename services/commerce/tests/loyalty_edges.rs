//! Loyalty at its edges, through the running binary: duplicates of one accrual racing each other
//! (one accrual, every other call a replay, never `internal`), and amounts past the contract's
//! bounds (refused at the edge; the tenant keeps accruing).

mod common;

use common::client::{Client, Protocol};

use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::loyalty::v1;

fn usd(cents: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor: cents,
    })
}

async fn enroll(client: &Client, customer: &str) -> String {
    let enrolled: v1::EnrollMemberResponse = client
        .call(
            "/commerce.loyalty.v1.MemberService/EnrollMember",
            v1::EnrollMemberRequest {
                customer_id: customer.into(),
                registered: true,
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    enrolled.member.unwrap().member_id
}

async fn accrue(
    client: &Client,
    member: &str,
    order: &str,
    cents: i64,
) -> Result<v1::AccruePointsResponse, String> {
    client
        .call(
            "/commerce.loyalty.v1.PointsService/AccruePoints",
            v1::AccruePointsRequest {
                member_id: member.into(),
                order_id: order.into(),
                eligible_amount: usd(cents),
                ..Default::default()
            },
            None,
        )
        .await
}

async fn balance(client: &Client, member: &str) -> v1::Balance {
    let response: v1::GetBalanceResponse = client
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_accrue_points_for_one_order_accrue_once_and_never_fail_internal() {
    let server = common::start();
    for (protocol, tenant) in [
        (Protocol::Grpc, "race-grpc"),
        (Protocol::ConnectJson, "race-connect"),
    ] {
        let client = std::sync::Arc::new(Client {
            protocol,
            addr: server.addr.clone(),
            token: common::token_for(tenant),
            tenant: tenant.into(),
            timeout: None,
        });
        let member = enroll(&client, "c-race").await;
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let (client, member) = (client.clone(), member.clone());
                tokio::spawn(async move { accrue(&client, &member, "o-race", 2_500).await })
            })
            .collect();
        let mut accrued_now = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(response) => {
                    assert_eq!(response.entry.unwrap().entry_id, "accrual:o-race");
                    accrued_now += usize::from(response.accrued_now);
                }
                // A duplicate still racing the first may be told to retry; anything else is a bug.
                Err(reason) => assert_eq!(reason, "CONCURRENT_MODIFICATION", "{protocol:?}"),
            }
        }
        assert_eq!(accrued_now, 1, "{protocol:?}: exactly one call accrues");
        let replay = accrue(&client, &member, "o-race", 2_500).await.unwrap();
        assert!(!replay.accrued_now);
        let balance = balance(&client, &member).await;
        assert_eq!(
            (balance.active_points, balance.lifetime_points),
            (25, 25),
            "{protocol:?}: {balance:?}"
        );
        let report: v1::ReconcileLedgerResponse = client
            .call(
                "/commerce.loyalty.v1.ProgramService/ReconcileLedger",
                v1::ReconcileLedgerRequest {},
                None,
            )
            .await
            .unwrap();
        assert!(report.clean, "{protocol:?}: {report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int64_max_eligible_amounts_are_refused_at_the_edge_and_the_tenant_still_accrues() {
    let server = common::start();
    let client = Client {
        protocol: Protocol::Grpc,
        addr: server.addr.clone(),
        token: common::token_for("overflow"),
        tenant: "overflow".into(),
        timeout: None,
    };
    let member = enroll(&client, "c-attacker").await;
    // The attack: ~100 of these overflowed `loyalty:issued` and every later accrual of
    // the tenant failed as `internal`.
    for n in 0..120 {
        let refused = accrue(&client, &member, &format!("o-{n}"), i64::MAX).await;
        assert_eq!(refused.unwrap_err(), "VALIDATION_FAILED");
    }
    let over_bound = accrue(&client, &member, "o-over", 1_000_000_000_001).await;
    assert_eq!(over_bound.unwrap_err(), "VALIDATION_FAILED");
    let adjusted: Result<v1::AdjustPointsResponse, String> = client
        .call(
            "/commerce.loyalty.v1.PointsService/AdjustPoints",
            v1::AdjustPointsRequest {
                member_id: member.clone(),
                points: 4_000_000_000_000_000_000,
                reason: "attack".into(),
            },
            Some("adjust-attack"),
        )
        .await;
    assert_eq!(adjusted.unwrap_err(), "VALIDATION_FAILED");

    let ordinary = accrue(&client, &member, "o-ordinary", 1_250).await.unwrap();
    assert!(ordinary.accrued_now);
    assert_eq!(ordinary.entry.unwrap().active_delta, 12);
    let balance = balance(&client, &member).await;
    assert_eq!((balance.active_points, balance.lifetime_points), (12, 12));
}
