//! Property: any sequence of accruals, redemptions (committed, voided, expired, reversed),
//! refunds, adjustments and time passing (activation, expiry) leaves every entry balanced and
//! chained, every member's lots tied to their accounts, nobody negative beyond the program's
//! limit, and `ReconcileLedger` clean.

mod common;

use commerce_api::commerce::loyalty::v1::Redemption;
use common::{TENANT, World, simple_program};
use loyalty::LoyaltyError;
use loyalty::points::{PaidOrder, Refund, RefundAmount};
use loyalty::rewards::Resolution;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Accrue {
        member: usize,
        cents: i64,
    },
    Refund {
        member: usize,
        order: usize,
        cents: i64,
    },
    Redeem {
        member: usize,
        reward: usize,
    },
    Resolve {
        redemption: usize,
        how: u8,
    },
    Adjust {
        member: usize,
        points: i64,
    },
    Advance {
        hours: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 0..20_000i64).prop_map(|(member, cents)| Op::Accrue { member, cents }),
        2 => (0..3usize, 0..8usize, 1..12_000i64)
            .prop_map(|(member, order, cents)| Op::Refund { member, order, cents }),
        2 => (0..3usize, 0..3usize).prop_map(|(member, reward)| Op::Redeem { member, reward }),
        2 => (0..8usize, 0..3u8).prop_map(|(redemption, how)| Op::Resolve { redemption, how }),
        1 => (0..3usize, -60..60i64)
            .prop_filter("not zero", |(_, points)| *points != 0)
            .prop_map(|(member, points)| Op::Adjust { member, points }),
        2 => (0..24 * 20i64).prop_map(|hours| Op::Advance { hours }),
    ]
}

/// Errors a sequence may legitimately run into; anything else fails the property.
fn expected(error: &LoyaltyError) -> bool {
    matches!(
        error,
        LoyaltyError::InsufficientPoints { .. }
            | LoyaltyError::NotFound { .. }
            | LoyaltyError::AlreadyResolved { .. }
            | LoyaltyError::Invalid { .. }
    )
}

async fn run(pending_days: i32, expiry_days: i32, max_negative: i64, ops: Vec<Op>) {
    let world = World::new().await;
    world
        .program(|program| {
            simple_program(program, pending_days, expiry_days);
            program.max_negative_points = max_negative;
            program.redemption_hold_hours = 12;
        })
        .await;
    let mut members = Vec::new();
    for n in 0..3 {
        members.push(world.member(&format!("c-{n}"), true).await);
    }
    let rewards = [
        world.reward(5).await,
        world.reward(20).await,
        world.reward(70).await,
    ];
    let mut orders: Vec<(usize, String)> = Vec::new();
    let mut redemptions: Vec<Redemption> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        let outcome: Result<(), LoyaltyError> = match op {
            Op::Accrue { member, cents } => {
                let order_id = format!("o-{step}");
                let order = PaidOrder {
                    member_id: members[member].clone(),
                    order_id: order_id.clone(),
                    currency_code: "USD".into(),
                    lines: Vec::new(),
                    eligible_minor: cents,
                    paid_at: None,
                };
                orders.push((member, order_id));
                world.engine.accrue(TENANT, &order, None).await.map(drop)
            }
            Op::Refund {
                member,
                order,
                cents,
            } => {
                let (owner, order_id) = orders
                    .get(order)
                    .cloned()
                    .unwrap_or((member, "o-missing".into()));
                let refund = Refund {
                    member_id: members[owner].clone(),
                    order_id,
                    refund_id: format!("r-{step}"),
                    currency_code: "USD".into(),
                    amount: RefundAmount::ThisRefund(cents),
                };
                world
                    .engine
                    .reverse_accrual(TENANT, &refund, None)
                    .await
                    .map(drop)
            }
            Op::Redeem { member, reward } => world
                .engine
                .redeem(
                    TENANT,
                    &members[member],
                    &rewards[reward],
                    "",
                    &format!("k-{step}"),
                )
                .await
                .map(|redemption| redemptions.push(redemption)),
            Op::Resolve { redemption, how } => match redemptions.get(redemption) {
                Some(redemption) => {
                    let how =
                        [Resolution::Commit, Resolution::Void, Resolution::Reverse][how as usize];
                    world
                        .engine
                        .resolve(TENANT, &redemption.redemption_id, how, "")
                        .await
                        .map(drop)
                }
                None => Ok(()),
            },
            Op::Adjust { member, points } => world
                .engine
                .adjust(
                    TENANT,
                    &members[member],
                    points,
                    "property",
                    &format!("a-{step}"),
                )
                .await
                .map(drop),
            Op::Advance { hours } => {
                let now = world.now_ms().await;
                world.advance_ms(now + hours * 3_600_000).await;
                Ok(())
            }
        };
        if let Err(error) = outcome {
            assert!(expected(&error), "step {step}: unexpected {error:?}");
        }
    }
    // Let every hold lapse and every lot activate, then check again.
    for phase in 0..2 {
        for member in &members {
            let cached = world.balance(member).await;
            let stored = world
                .engine
                .balance_from_store(TENANT, member)
                .await
                .unwrap();
            assert_eq!(cached, stored, "cache and store disagree");
            assert!(stored.pending_points >= 0, "{stored:?}");
            assert!(stored.available_points >= -max_negative, "{stored:?}");
            assert!(stored.active_points >= -max_negative, "{stored:?}");
        }
        world.assert_reconciled().await;
        if phase == 0 {
            world.advance_days(60).await;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_keeps_the_books_balanced_and_reconciled(
        pending_days in 0..3i32,
        expiry_days in prop_oneof![Just(0), 1..20i32],
        max_negative in prop_oneof![Just(0i64), 1..40i64],
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(pending_days, expiry_days, max_negative, ops));
    }
}
