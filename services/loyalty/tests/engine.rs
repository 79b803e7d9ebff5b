//! The loyalty engine's behaviours, one per test, on the embedded store with a frozen tenant
//! clock: accrual dedup (also through the event consumer, repeated and concurrent), pending →
//! active → expired lots, holds that expire, refunds past spent points, tiers, reconciliation.

mod common;

use std::sync::Arc;

use commerce_api::commerce::checkout::v1::OrderPaid;
use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::loyalty::v1::{RedemptionStatus, Tier, TierBasis};
use common::{DAY_MS, TENANT, World, simple_program};
use events::{Bus, BusMessage, Consumer, ConsumerConfig, MemoryBus};
use loyalty::LoyaltyError;
use loyalty::points::PaidOrder;
use loyalty::rewards::Resolution;

#[tokio::test]
async fn an_order_accrues_once_and_a_changed_repeat_is_a_conflict() {
    let world = World::new().await;
    let member = world.member("c-1", true).await;
    assert_eq!(world.accrue(&member, "o-1", 1_250).await, 12);
    assert_eq!(world.accrue(&member, "o-1", 1_250).await, 12);
    let changed = PaidOrder {
        member_id: member.clone(),
        order_id: "o-1".into(),
        currency_code: "USD".into(),
        lines: Vec::new(),
        eligible_minor: 9_999,
        paid_at: None,
    };
    assert!(matches!(
        world.engine.accrue(TENANT, &changed, None).await,
        Err(LoyaltyError::AccrualConflict { .. })
    ));
    let balance = world.balance(&member).await;
    assert_eq!((balance.active_points, balance.lifetime_points), (12, 12));
    world.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_accruals_of_one_order_make_one_entry_and_nineteen_replays() {
    // On wall time every attempt reads another now, so a late racer's ledger entry differs from
    // the winner's in its time: that must end as a replay, never as a failure.
    let world = World::on_wall_clock().await;
    let member = world.member("c-1", true).await;
    let order = PaidOrder {
        member_id: member.clone(),
        order_id: "o-race".into(),
        currency_code: "USD".into(),
        lines: Vec::new(),
        eligible_minor: 2_500,
        paid_at: None,
    };
    let calls = (0..20).map(|_| {
        let (engine, order) = (world.engine.clone(), order.clone());
        tokio::spawn(async move { engine.accrue(TENANT, &order, None).await })
    });
    let outcomes: Vec<_> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|joined| joined.expect("accrue task"))
        .collect();
    let mut accrued_now = 0;
    for outcome in &outcomes {
        match outcome {
            Ok((entry, now)) => {
                assert_eq!(entry.entry_id, "accrual:o-race");
                assert_eq!(entry.active_delta, 25);
                accrued_now += usize::from(*now);
            }
            // Still in progress after every attempt: retryable, and it must say so.
            Err(LoyaltyError::Contended(_)) => {}
            Err(error) => panic!("a duplicate accrual failed: {error:?}"),
        }
    }
    assert_eq!(accrued_now, 1, "{outcomes:?}");
    let entries = world.engine.ledger().entries(TENANT, 0, 100).await.unwrap();
    let accruals = entries.iter().filter(|e| e.id == "accrual:o-race").count();
    assert_eq!(accruals, 1);
    assert_eq!(world.balance(&member).await.lifetime_points, 25);
    world.assert_reconciled().await;
}

#[tokio::test]
async fn int64_max_eligible_amounts_are_refused_by_the_engine_and_the_tenant_still_accrues() {
    // The attack, straight at the engine (no validation in front): a hundred accruals
    // of i64::MAX would have earned ~9.2×10^18 points and overflowed `loyalty:issued`.
    let world = World::new().await;
    let member = world.member("c-1", true).await;
    for n in 0..100 {
        let attack = PaidOrder {
            member_id: member.clone(),
            order_id: format!("o-attack-{n}"),
            currency_code: "USD".into(),
            lines: Vec::new(),
            eligible_minor: i64::MAX,
            paid_at: None,
        };
        let refused = world.engine.accrue(TENANT, &attack, None).await;
        assert!(
            matches!(&refused, Err(LoyaltyError::Invalid { field, .. }) if field == "eligible_amount.amount_minor"),
            "{refused:?}"
        );
    }
    // Valid inputs whose points multiply past 10^9 per accrual: out of range, nothing written.
    world
        .program(|program| {
            let earning = program.earning.as_mut().unwrap();
            earning.points = 1_000_000;
            earning.per_spend.as_mut().unwrap().amount_minor = 1;
        })
        .await;
    let multiplied = PaidOrder {
        member_id: member.clone(),
        order_id: "o-multiplied".into(),
        currency_code: "USD".into(),
        lines: Vec::new(),
        eligible_minor: 1_001,
        paid_at: None,
    };
    assert!(matches!(
        world.engine.accrue(TENANT, &multiplied, None).await,
        Err(LoyaltyError::OutOfRange { .. })
    ));
    assert!(matches!(
        world
            .engine
            .adjust(TENANT, &member, i64::MAX, "attack", "k-attack")
            .await,
        Err(LoyaltyError::Invalid { .. })
    ));
    let balance = world.balance(&member).await;
    assert_eq!((balance.active_points, balance.lifetime_points), (0, 0));
    assert!(
        world
            .engine
            .ledger()
            .entries(TENANT, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The tenant's next ordinary accrual works, at the largest allowed size too.
    world
        .program(|program| {
            simple_program(program, 0, 0);
            program.earning.as_mut().unwrap().points = 1;
        })
        .await;
    assert_eq!(world.accrue(&member, "o-ordinary", 1_250).await, 12);
    assert_eq!(
        world.accrue(&member, "o-largest", 100_000_000_000).await,
        1_000_000_000
    );
    world.assert_reconciled().await;
}

/// The checkout event for `order`, as the relay publishes it.
fn order_paid(member: &str, order: &str, cents: i64) -> BusMessage {
    let paid = OrderPaid {
        order_id: order.into(),
        member_id: member.into(),
        eligible_amount: Some(Money {
            currency_code: "USD".into(),
            amount_minor: cents,
        }),
        ..OrderPaid::default()
    };
    let source = events::EventSource {
        aggregate: store::AggregateKey::new(TENANT, "order", order),
        version: 3,
        occurred_at: std::time::SystemTime::now(),
        traceparent: None,
        tracestate: None,
    };
    let event = events::envelope::outbox_event(&source, &paid);
    BusMessage {
        event_id: event.event_id,
        event_type: event.event_type,
        tenant: TENANT.into(),
        envelope: event.envelope,
    }
}

#[tokio::test]
async fn the_same_order_paid_event_delivered_five_times_and_concurrently_accrues_once() {
    let world = World::new().await;
    let member = world.member("c-1", true).await;
    let bus = Arc::new(MemoryBus::new());
    let stream = events::envelope::stream_of_package(loyalty::consumer::CHECKOUT_PACKAGE);
    let consumers: Vec<_> = (0..4)
        .map(|n| {
            let mut config =
                ConsumerConfig::new(&stream, loyalty::consumer::GROUP, format!("c-{n}"));
            config.batch = 1;
            Consumer::new(
                bus.clone(),
                world.store.clone(),
                loyalty::CheckoutEvents::new(world.engine.clone()),
                config,
            )
        })
        .collect();
    for consumer in &consumers {
        consumer.poll_once().await.unwrap(); // creates the group before anything is published
    }
    let event = order_paid(&member, "o-1", 2_000);
    for _ in 0..5 {
        bus.publish(&stream, &event).await.unwrap();
    }
    // Checkout re-publishing the order under a new event id must not count either.
    bus.publish(&stream, &order_paid(&member, "o-1", 2_000))
        .await
        .unwrap();
    for _ in 0..4 {
        futures_util::future::join_all(consumers.iter().map(|consumer| consumer.poll_once())).await;
    }
    let balance = world.balance(&member).await;
    assert_eq!(balance.active_points, 20, "{balance:?}");
    assert_eq!(balance.lifetime_points, 20);
    let (entries, _) = world
        .engine
        .points_entries(TENANT, &member, 50, "")
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(bus.dead_letters(&stream, 10).await.unwrap().is_empty());
    world.assert_reconciled().await;
}

#[tokio::test]
async fn pending_points_activate_after_the_lock_period_then_expire_into_breakage() {
    let world = World::new().await;
    world
        .program(|program| simple_program(program, 7, 30))
        .await;
    let member = world.member("c-1", true).await;
    world.accrue(&member, "o-1", 5_000).await;
    let balance = world.balance(&member).await;
    assert_eq!((balance.pending_points, balance.active_points), (50, 0));

    world.advance_days(6).await;
    assert_eq!(
        world.balance(&member).await.pending_points,
        50,
        "still locked"
    );
    world.advance_days(1).await;
    let balance = world.balance(&member).await;
    assert_eq!((balance.pending_points, balance.active_points), (0, 50));
    let (expiring, _) = world
        .engine
        .expiring_points(TENANT, &member, None, 10, "")
        .await
        .unwrap();
    assert_eq!(expiring.len(), 1);
    assert_eq!(expiring[0].points, 50);

    world.advance_days(29).await;
    assert_eq!(world.balance(&member).await.active_points, 50);
    world.advance_days(1).await;
    let balance = world.balance(&member).await;
    assert_eq!((balance.active_points, balance.lifetime_points), (0, 50));
    let breakage = world
        .engine
        .ledger()
        .account(TENANT, loyalty::records::BREAKAGE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(breakage.balances.posted, 50);
    world.assert_reconciled().await;
}

#[tokio::test]
async fn a_hold_neither_posted_nor_voided_expires_and_returns_the_points() {
    let world = World::new().await;
    world
        .program(|program| {
            simple_program(program, 0, 0);
            program.redemption_hold_hours = 2;
        })
        .await;
    let member = world.member("c-1", true).await;
    world.accrue(&member, "o-1", 3_000).await;
    let reward = world.reward(25).await;
    let redemption = world
        .engine
        .redeem(TENANT, &member, &reward, "o-2", "k-1")
        .await
        .unwrap();
    let balance = world.balance(&member).await;
    assert_eq!((balance.available_points, balance.held_points), (5, 25));

    let now = world.now_ms().await;
    world.advance_ms(now + 2 * 3_600_000 - 1).await;
    assert_eq!(world.balance(&member).await.held_points, 25, "not yet");
    world.advance_ms(now + 2 * 3_600_000).await;
    let balance = world.balance(&member).await;
    assert_eq!((balance.available_points, balance.held_points), (30, 0));
    let expired = world
        .engine
        .redemption(TENANT, &redemption.redemption_id)
        .await
        .unwrap();
    assert_eq!(expired.status, RedemptionStatus::Expired as i32);
    // Checkout posting it late is refused; the points stay with the member.
    assert!(matches!(
        world
            .engine
            .resolve(TENANT, &redemption.redemption_id, Resolution::Commit, "")
            .await,
        Err(LoyaltyError::AlreadyResolved { .. })
    ));
    assert_eq!(world.balance(&member).await.available_points, 30);
    world.assert_reconciled().await;
}

#[tokio::test]
async fn redemption_rules_registration_funds_commit_void_and_reverse() {
    let world = World::new().await;
    world.program(|program| simple_program(program, 0, 0)).await;
    let card = world.member("anonymous-card", false).await;
    world.accrue(&card, "o-1", 10_000).await;
    let reward = world.reward(40).await;
    assert!(matches!(
        world.engine.redeem(TENANT, &card, &reward, "", "k-1").await,
        Err(LoyaltyError::NotRegistered(_))
    ));
    world.engine.register(TENANT, &card).await.unwrap();
    let first = world
        .engine
        .redeem(TENANT, &card, &reward, "", "k-1")
        .await
        .unwrap();
    let again = world
        .engine
        .redeem(TENANT, &card, &reward, "", "k-1")
        .await
        .unwrap();
    assert_eq!(first, again, "the same key finds the same redemption");
    let second = world
        .engine
        .redeem(TENANT, &card, &reward, "", "k-2")
        .await
        .unwrap();
    assert!(matches!(
        world.engine.redeem(TENANT, &card, &reward, "", "k-3").await,
        Err(LoyaltyError::InsufficientPoints {
            available: 20,
            required: 40
        })
    ));
    let id = |r: &commerce_api::commerce::loyalty::v1::Redemption| r.redemption_id.clone();
    world
        .engine
        .resolve(TENANT, &id(&first), Resolution::Commit, "")
        .await
        .unwrap();
    // Committing twice is a no-op; voiding a committed one is refused.
    world
        .engine
        .resolve(TENANT, &id(&first), Resolution::Commit, "")
        .await
        .unwrap();
    assert!(matches!(
        world
            .engine
            .resolve(TENANT, &id(&first), Resolution::Void, "")
            .await,
        Err(LoyaltyError::AlreadyResolved { .. })
    ));
    world
        .engine
        .resolve(TENANT, &id(&second), Resolution::Void, "")
        .await
        .unwrap();
    assert_eq!(world.balance(&card).await.available_points, 60);
    let reversed = world
        .engine
        .resolve(TENANT, &id(&first), Resolution::Reverse, "order refunded")
        .await
        .unwrap();
    assert_eq!(reversed.status, RedemptionStatus::Reversed as i32);
    let balance = world.balance(&card).await;
    assert_eq!(
        (balance.available_points, balance.active_points),
        (100, 100)
    );
    world.assert_reconciled().await;
}

#[tokio::test]
async fn concurrent_redemptions_never_spend_more_than_the_member_has() {
    let world = World::new().await;
    world.program(|program| simple_program(program, 0, 0)).await;
    let member = world.member("c-1", true).await;
    world.accrue(&member, "o-1", 5_000).await;
    let reward = world.reward(10).await;
    let outcomes = world.redeem_at_once(&member, &reward, 12).await;
    let held = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    let refused = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Err(LoyaltyError::InsufficientPoints { .. })))
        .count();
    assert_eq!((held, refused), (5, 7), "{outcomes:?}");
    let balance = world.balance(&member).await;
    assert_eq!((balance.available_points, balance.held_points), (0, 50));
    world.assert_reconciled().await;
}

#[tokio::test]
async fn refunds_reverse_proportionally_and_spent_points_follow_the_negative_policy() {
    let world = World::new().await;
    world
        .program(|program| {
            simple_program(program, 0, 0);
            program.max_negative_points = 10;
        })
        .await;
    let member = world.member("c-1", true).await;
    world.accrue(&member, "o-1", 10_000).await; // 100 points
    // Three refunds of a third: 33, 33, 34.
    world.refund(&member, "o-1", "r-1", 3_333).await;
    assert_eq!(world.balance(&member).await.active_points, 67);
    world.refund(&member, "o-1", "r-1", 3_333).await; // repeat: once
    assert_eq!(world.balance(&member).await.active_points, 67);

    // Spend 60, then refund the rest of the order: 67 to reverse from 7 active points.
    let reward = world.reward(60).await;
    let redemption = world
        .engine
        .redeem(TENANT, &member, &reward, "", "k-1")
        .await
        .unwrap();
    world
        .engine
        .resolve(TENANT, &redemption.redemption_id, Resolution::Commit, "")
        .await
        .unwrap();
    world.accrue(&member, "o-2", 0).await;
    world.refund(&member, "o-1", "r-2", 6_667).await;
    let balance = world.balance(&member).await;
    // 7 from active points, 10 as a negative balance (the limit), 50 written off.
    assert_eq!(balance.active_points, -10, "{balance:?}");
    assert_eq!(balance.lifetime_points, 0);
    // New points pay the deficit first.
    world.accrue(&member, "o-3", 2_500).await;
    let balance = world.balance(&member).await;
    assert_eq!((balance.active_points, balance.available_points), (15, 15));
    world.assert_reconciled().await;
}

#[tokio::test]
async fn tiers_upgrade_on_accrual_and_downgrade_after_grace() {
    let world = World::new().await;
    world
        .program(|program| {
            simple_program(program, 0, 0);
            program.tier_basis = TierBasis::PointsEarned as i32;
            program.tier_window_days = 30;
            program.tier_downgrade_grace_days = 10;
            program.tiers = vec![Tier {
                tier_id: "gold".into(),
                display_name: "Gold".into(),
                threshold: 100,
                multiplier_bps: 20_000,
            }];
        })
        .await;
    let member = world.member("c-1", true).await;
    world.accrue(&member, "o-1", 10_000).await;
    assert_eq!(world.balance(&member).await.tier_id, "gold");
    // Gold doubles points.
    assert_eq!(world.accrue(&member, "o-2", 1_000).await, 20);
    world.advance_days(31).await; // out of the window: grace starts
    assert_eq!(world.balance(&member).await.tier_id, "gold");
    world.advance_days(10).await;
    assert_eq!(world.balance(&member).await.tier_id, "");
    world.assert_reconciled().await;
}

/// `ReconcileLedger` must answer, clean, while members keep earning: the ledger walk runs on
/// past entries written meanwhile, and a member whose record and accounts changed between two
/// reads is read again until both show one state (it answered `ABORTED`, or named a member's
/// lots as mismatched, under a steady stream of accruals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_answers_clean_while_members_keep_earning() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let world = Arc::new(World::new().await);
    let mut members = Vec::new();
    for customer in 0..4 {
        members.push(world.member(&format!("c-{customer}"), true).await);
    }
    let (stop, count) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let earners: Vec<_> = members
        .iter()
        .cloned()
        .map(|member| {
            let (world, stop, count) = (world.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut order = 0;
                while !stop.load(Relaxed) {
                    order += 1;
                    world
                        .accrue(&member, &format!("{member}-o{order}"), 1_000)
                        .await;
                    count.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();
    let (mut overlapped, mut runs) = (0, 0);
    while overlapped < 10 {
        runs += 1;
        assert!(
            runs <= 500,
            "accruals during {overlapped} of {runs} reconciliations"
        );
        let before = count.load(Relaxed);
        let report = world
            .engine
            .reconcile(TENANT)
            .await
            .expect("ReconcileLedger answers while members earn");
        assert!(report.clean, "{:#?}", report.discrepancies);
        if count.load(Relaxed) > before {
            overlapped += 1;
        }
    }
    stop.store(true, Relaxed);
    for earner in earners {
        earner.await.unwrap();
    }
    world.assert_reconciled().await;
}

#[tokio::test]
async fn editing_a_stored_entry_makes_reconcile_fail_and_name_it() {
    let world = World::new().await;
    let member = world.member("c-1", true).await;
    world.accrue(&member, "o-1", 5_000).await;
    world.accrue(&member, "o-2", 5_000).await;
    world.assert_reconciled().await;

    ledger::testing::tamper(world.store.as_ref(), TENANT, "accrual:o-1", false).await;
    let report = world.engine.reconcile(TENANT).await.unwrap();
    assert!(!report.clean);
    assert!(
        report
            .discrepancies
            .iter()
            .any(|d| d.entry_id == "accrual:o-1" && d.problem == "hash_mismatch"),
        "{:#?}",
        report.discrepancies
    );
}

#[tokio::test]
async fn adjustments_are_idempotent_by_key_and_cannot_overdraw() {
    let world = World::new().await;
    let member = world.member("c-1", true).await;
    let first = world
        .engine
        .adjust(TENANT, &member, 40, "goodwill", "k-1")
        .await
        .unwrap();
    let again = world
        .engine
        .adjust(TENANT, &member, 40, "goodwill", "k-1")
        .await
        .unwrap();
    assert_eq!(first.entry_id, again.entry_id);
    assert_eq!(world.balance(&member).await.active_points, 40);
    assert!(matches!(
        world
            .engine
            .adjust(TENANT, &member, -41, "mistake", "k-2")
            .await,
        Err(LoyaltyError::InsufficientPoints { available: 40, .. })
    ));
    world
        .engine
        .adjust(TENANT, &member, -15, "mistake", "k-3")
        .await
        .unwrap();
    assert_eq!(world.balance(&member).await.active_points, 25);
    let now = world.now_ms().await;
    world.advance_ms(now + DAY_MS).await;
    world.assert_reconciled().await;
}

#[tokio::test]
async fn each_change_emits_its_event_in_the_same_commit() {
    let world = World::new().await;
    world
        .program(|program| {
            simple_program(program, 2, 20);
            program.expiry.as_mut().unwrap().notice_days = 5;
        })
        .await;
    let member = world.member("c-1", true).await;
    world.accrue(&member, "o-1", 4_000).await;
    world.advance_days(2).await; // activates; expires 20 days later
    world.advance_days(16).await; // inside the 5-day notice period
    world.advance_days(4).await; // expired
    let types: Vec<String> = world
        .store
        .pending_events(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.aggregate.id == member)
        .map(|event| {
            event
                .event
                .event_type
                .rsplit('.')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        types,
        [
            "MemberEnrolled",
            "PointsAccrued",
            "PointsActivated",
            "PointsExpiring",
            "PointsExpired"
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_from_redis_equal_the_store_and_survive_redis_going_away() {
    let mut redis = fastpath::testing::RedisServer::start();
    let degraded = fastpath::Degraded::default();
    let connection = fastpath::connect(&redis.url()).await.unwrap();
    let cache = fastpath::Cache::new(Some(connection.clone()), degraded.clone());
    let store: Arc<dyn store::Store> = Arc::new(store::EmbeddedStore::in_memory().unwrap());
    let world = World::with(store, cache).await;
    world.program(|program| simple_program(program, 1, 0)).await;
    let member = world.member("c-1", true).await;
    let same = async |why: &str| {
        let served = world.balance(&member).await;
        let stored = world
            .engine
            .balance_from_store(TENANT, &member)
            .await
            .unwrap();
        assert_eq!(served, stored, "{why}");
        served
    };
    world.accrue(&member, "o-1", 4_200).await;
    // The write-through put it in Redis: the cached copy is the balance, byte for byte.
    let key = format!("cache:loyalty:balance:{{{TENANT}}}:{member}");
    let mut redis_connection = connection.clone();
    let cached: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis_connection)
        .await
        .unwrap();
    assert_eq!(
        <commerce_api::commerce::loyalty::v1::Balance as prost::Message>::decode(cached.as_slice())
            .unwrap(),
        same("after accrual").await
    );
    world.advance_days(1).await;
    assert_eq!(same("after activation").await.active_points, 42);

    redis.kill();
    world.accrue(&member, "o-2", 1_000).await;
    world.advance_days(1).await;
    let balance = same("with Redis gone").await;
    assert_eq!((balance.active_points, balance.lifetime_points), (52, 52));
}

#[tokio::test]
async fn a_late_order_paid_event_earns_and_locks_from_when_the_order_was_paid() {
    let world = World::new().await;
    world.program(|program| simple_program(program, 3, 0)).await;
    let member = world.member("c-1", true).await;
    let paid_ms = world.now_ms().await;
    world.advance_days(2).await; // the event sat on the bus for two days
    let order = PaidOrder {
        member_id: member.clone(),
        order_id: "o-1".into(),
        currency_code: "USD".into(),
        lines: Vec::new(),
        eligible_minor: 1_000,
        paid_at: Some(paid_ms / 1000),
    };
    world.engine.accrue(TENANT, &order, None).await.unwrap();
    assert_eq!(world.balance(&member).await.pending_points, 10);
    world.advance_days(1).await; // three days after payment, not after delivery
    let balance = world.balance(&member).await;
    assert_eq!((balance.pending_points, balance.active_points), (0, 10));
}
