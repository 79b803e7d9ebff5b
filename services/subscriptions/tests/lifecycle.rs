//! Plans, subscriptions' lifecycle, plan changes with proration, pause and resume, refusals.

mod common;

use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::subscriptions::v1::{
    InvoiceLineKind, InvoiceStatus, PlanStatus, SubscriptionStatus,
};
use common::*;
use std::sync::Arc;
use store::testing::FaultyStore;
use store::{EmbeddedStore, Store};
use subscriptions::{Period, RetryPolicy, SubscriptionsError, prorate};

fn usd(amount_minor: i64) -> Money {
    Money {
        currency_code: "USD".into(),
        amount_minor,
    }
}

#[tokio::test]
async fn a_new_plan_version_applies_to_new_subscribers_and_archived_plans_take_none() {
    let h = Harness::new().await;
    let plan = h.plan(1_000, 0).await;
    let old = h
        .engine
        .create_subscription(TENANT, &key(), "cust-old", &plan, "tok_ok", false)
        .await
        .unwrap()
        .subscription;
    let updated = h
        .engine
        .add_plan_version(TENANT, &key(), &plan, usd(1_500), 0)
        .await
        .unwrap();
    assert_eq!(updated.versions.len(), 2);
    let new = h
        .engine
        .create_subscription(TENANT, &key(), "cust-new", &plan, "tok_ok", false)
        .await
        .unwrap();
    assert_eq!(new.subscription.plan_version, 2);
    assert_eq!(minor(&new.first_invoice.unwrap().amount_due), 1_500);
    // The existing subscriber renews at the old price.
    h.advance_to(month(START, 1)).await.unwrap();
    let renewed = h.invoices(&old.subscription_id).await;
    assert_eq!(minor(&renewed[1].amount_due), 1_000);

    let archived = h.engine.archive_plan(TENANT, &plan).await.unwrap();
    assert_eq!(archived.status(), PlanStatus::Archived);
    let refused = h
        .engine
        .create_subscription(TENANT, &key(), "cust-3", &plan, "tok_ok", false)
        .await
        .unwrap_err();
    assert!(matches!(refused, SubscriptionsError::PlanArchived(_)));
    let (active, _) = h.engine.list_plans(TENANT, 0, "", false).await.unwrap();
    assert!(active.is_empty());
    let (all, _) = h.engine.list_plans(TENANT, 0, "", true).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(h.engine.plan(TENANT, &plan).await.unwrap(), archived);
}

#[tokio::test]
async fn a_trial_converts_to_active_when_its_first_invoice_is_paid() {
    let h = Harness::new().await;
    let plan = h.plan(700, 14).await;
    let created = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_ok", false)
        .await
        .unwrap();
    assert_eq!(created.subscription.status(), SubscriptionStatus::Trialing);
    assert!(created.first_invoice.is_none());
    let id = created.subscription.subscription_id;
    h.advance_to(START + 14 * DAY).await.unwrap();
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Active);
    assert_eq!(ms(&sub.current_period_start), START + 14 * DAY);
    assert_eq!(ms(&sub.current_period_end), month(START + 14 * DAY, 1));
    let invoices = h.invoices(&id).await;
    assert_eq!(invoices.len(), 1);
    assert_eq!(invoices[0].status(), InvoiceStatus::Paid);
}

#[tokio::test]
async fn a_declined_first_payment_leaves_the_subscription_incomplete_until_it_expires() {
    let h = Harness::new().await;
    let plan = h.plan(700, 0).await;
    let created = h
        .engine
        .create_subscription(
            TENANT,
            &key(),
            "cust-1",
            &plan,
            "tok_decline_insufficient_funds",
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        created.subscription.status(),
        SubscriptionStatus::Incomplete
    );
    let invoice = created.first_invoice.unwrap();
    assert_eq!(invoice.status(), InvoiceStatus::Open);
    assert_eq!(invoice.attempt_count, 1);
    h.advance_to(START + DAY).await.unwrap();
    let sub = h
        .engine
        .subscription(TENANT, &created.subscription.subscription_id)
        .await
        .unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::IncompleteExpired);
    let invoice = h.engine.invoice(TENANT, &invoice.invoice_id).await.unwrap();
    assert_eq!(invoice.status(), InvoiceStatus::Void);
}

#[tokio::test]
async fn card_numbers_are_refused_as_payment_tokens() {
    let h = Harness::new().await;
    let plan = h.plan(700, 0).await;
    let refused = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "4242424242424242", false)
        .await
        .unwrap_err();
    assert_eq!(refused, SubscriptionsError::CardDataRejected);
}

#[tokio::test]
async fn an_upgrade_mid_period_invoices_exactly_the_previewed_proration() {
    let h = Harness::new().await;
    let basic = h.plan(1_000, 0).await;
    let premium = h.plan(3_333, 0).await;
    let id = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &basic, "tok_ok", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    // An odd moment, 10 days 7 hours and 13 ms into a 31-day period.
    let change_at = START + 10 * DAY + 7 * 3_600_000 + 13;
    h.advance_to(change_at).await.unwrap();
    let preview = h
        .engine
        .preview_plan_change(TENANT, &id, &premium)
        .await
        .unwrap();
    let period = Period {
        start_ms: START,
        end_ms: month(START, 1),
    };
    let expected = prorate(1_000, 3_333, period, change_at).unwrap();
    assert_eq!(minor(&preview.credit), expected.credit_minor);
    assert_eq!(minor(&preview.charge), expected.charge_minor);
    assert_eq!(minor(&preview.net), expected.net_minor);
    assert_eq!(
        expected.credit_minor,
        -(1_000i128 * i128::from(period.end_ms - change_at) / i128::from(period.length_ms()))
            as i64
    );

    // A stale expectation changes nothing.
    let stale = h
        .engine
        .change_plan(TENANT, &key(), &id, &premium, Some(expected.net_minor + 1))
        .await
        .unwrap_err();
    assert!(matches!(stale, SubscriptionsError::ProrationStale { .. }));

    let change = h
        .engine
        .change_plan(TENANT, &key(), &id, &premium, Some(expected.net_minor))
        .await
        .unwrap();
    let invoice = change.invoice.unwrap();
    assert_eq!(invoice.status(), InvoiceStatus::Paid);
    assert_eq!(invoice.number, 2);
    assert_eq!(minor(&invoice.subtotal), expected.net_minor);
    assert_eq!(minor(&invoice.amount_paid), expected.net_minor);
    let amounts: Vec<(i32, i64)> = invoice
        .lines
        .iter()
        .map(|line| (line.kind, minor(&line.amount)))
        .collect();
    let previewed: Vec<(i32, i64)> = preview
        .lines
        .iter()
        .map(|line| (line.kind, minor(&line.amount)))
        .collect();
    assert_eq!(amounts, previewed);
    assert_eq!(
        amounts,
        [
            (
                InvoiceLineKind::ProrationCredit as i32,
                expected.credit_minor
            ),
            (
                InvoiceLineKind::ProrationCharge as i32,
                expected.charge_minor
            ),
        ]
    );
    assert_eq!(change.subscription.plan_id, premium);
    // The period is unchanged; the next renewal bills the new price.
    assert_eq!(ms(&change.subscription.current_period_end), month(START, 1));
    h.advance_to(month(START, 1)).await.unwrap();
    let invoices = h.invoices(&id).await;
    assert_eq!(minor(&invoices.last().unwrap().amount_paid), 3_333);
}

#[tokio::test]
async fn a_downgrade_leaves_credit_that_the_next_invoice_uses() {
    let h = Harness::new().await;
    let premium = h.plan(3_000, 0).await;
    let basic = h.plan(1_000, 0).await;
    let id = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &premium, "tok_ok", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    h.advance_to(START + 15 * DAY).await.unwrap();
    let preview = h
        .engine
        .preview_plan_change(TENANT, &id, &basic)
        .await
        .unwrap();
    let net = minor(&preview.net);
    assert!(net < 0);
    let change = h
        .engine
        .change_plan(TENANT, &key(), &id, &basic, None)
        .await
        .unwrap();
    let invoice = change.invoice.unwrap();
    assert_eq!(minor(&invoice.subtotal), net);
    assert_eq!(minor(&invoice.amount_due), 0);
    assert_eq!(invoice.status(), InvoiceStatus::Paid);
    h.advance_to(month(START, 1)).await.unwrap();
    let renewal = h.invoices(&id).await.pop().unwrap();
    assert_eq!(minor(&renewal.amount_due), (1_000 + net).max(0));
}

#[tokio::test]
async fn pausing_for_two_periods_bills_nothing_and_resuming_starts_a_new_period() {
    let h = Harness::new().await;
    let plan = h.plan(1_000, 0).await;
    let id = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_ok", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    h.advance_to(START + 5 * DAY).await.unwrap();
    let resume_at = month(START, 2) + 5 * DAY;
    let paused = h
        .engine
        .pause_subscription(TENANT, &id, Some(resume_at))
        .await
        .unwrap();
    assert_eq!(paused.status(), SubscriptionStatus::Paused);
    // Pausing again is a no-op.
    assert_eq!(
        h.engine
            .pause_subscription(TENANT, &id, None)
            .await
            .unwrap(),
        paused
    );
    // Two period ends pass while paused: no invoices.
    h.advance_to(resume_at - 1).await.unwrap();
    assert_eq!(h.invoices(&id).await.len(), 1);
    assert_eq!(
        h.engine.subscription(TENANT, &id).await.unwrap().status(),
        SubscriptionStatus::Paused
    );
    h.advance_to(resume_at).await.unwrap();
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Active);
    assert_eq!(ms(&sub.current_period_start), resume_at);
    assert_eq!(ms(&sub.current_period_end), month(resume_at, 1));
    let invoices = h.invoices(&id).await;
    assert_eq!(invoices.len(), 2);
    assert_eq!(ms(&invoices[1].period_start), resume_at);
    assert_eq!(invoices[1].number, 2);
    // The next renewal is one period after the resumption.
    h.advance_to(month(resume_at, 1)).await.unwrap();
    let invoices = h.invoices(&id).await;
    assert_eq!(invoices.len(), 3);
    assert_eq!(ms(&invoices[2].period_start), month(resume_at, 1));
}

#[tokio::test]
async fn resuming_by_hand_within_the_paid_period_keeps_its_renewal_date() {
    let h = Harness::new().await;
    let plan = h.plan(1_000, 0).await;
    let id = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_ok", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    h.advance_to(START + 5 * DAY).await.unwrap();
    h.engine
        .pause_subscription(TENANT, &id, None)
        .await
        .unwrap();
    h.advance_to(START + 9 * DAY).await.unwrap();
    let resumed = h
        .engine
        .resume_subscription(TENANT, &id, None)
        .await
        .unwrap();
    assert_eq!(resumed.status(), SubscriptionStatus::Active);
    assert_eq!(ms(&resumed.current_period_end), month(START, 1));
    assert_eq!(h.invoices(&id).await.len(), 1);
}

#[tokio::test]
async fn canceling_at_period_end_ends_the_subscription_without_renewing() {
    let h = Harness::new().await;
    let plan = h.plan(1_000, 0).await;
    let id = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_ok", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    let sub = h
        .engine
        .cancel_subscription(TENANT, &id, true, "too much coffee")
        .await
        .unwrap();
    assert!(sub.cancel_at_period_end);
    assert_eq!(sub.status(), SubscriptionStatus::Active);
    h.advance_to(month(START, 3)).await.unwrap();
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Canceled);
    assert_eq!(ms(&sub.cancel_time), month(START, 1));
    assert_eq!(h.invoices(&id).await.len(), 1);
    // Canceling again is a no-op.
    assert_eq!(
        h.engine
            .cancel_subscription(TENANT, &id, false, "")
            .await
            .unwrap(),
        sub
    );
}

#[tokio::test]
async fn illegal_transitions_are_refused_as_subscription_transition_invalid() {
    let h = Harness::new().await;
    let plan = h.plan(1_000, 7).await;
    let other = h.plan(2_000, 0).await;
    let trialing = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_ok", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    let active = h
        .engine
        .create_subscription(TENANT, &key(), "cust-2", &plan, "tok_ok", true)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    let is_transition = |error: SubscriptionsError| {
        let api: platform::ApiError = error.clone().into();
        let status = api.into_status(subscriptions::ERROR_DOMAIN);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{error}");
        matches!(error, SubscriptionsError::Transition(_))
    };
    // Resume an active subscription; pause a trial.
    assert!(is_transition(
        h.engine
            .resume_subscription(TENANT, &active, None)
            .await
            .unwrap_err()
    ));
    assert!(is_transition(
        h.engine
            .pause_subscription(TENANT, &trialing, None)
            .await
            .unwrap_err()
    ));
    // Nothing leaves CANCELED.
    h.engine
        .cancel_subscription(TENANT, &active, false, "")
        .await
        .unwrap();
    assert!(is_transition(
        h.engine
            .change_plan(TENANT, &key(), &active, &other, None)
            .await
            .unwrap_err()
    ));
    assert!(is_transition(
        h.engine
            .preview_plan_change(TENANT, &active, &other)
            .await
            .unwrap_err()
    ));
    assert!(is_transition(
        h.engine
            .pause_subscription(TENANT, &active, None)
            .await
            .unwrap_err()
    ));
    assert!(is_transition(
        h.engine
            .resume_subscription(TENANT, &active, None)
            .await
            .unwrap_err()
    ));
    // And the lists find both, by customer.
    let (mine, _) = h
        .engine
        .list_subscriptions(TENANT, "cust-2", &[], 0, "")
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].status(), SubscriptionStatus::Canceled);
    let (trials, _) = h
        .engine
        .list_subscriptions(TENANT, "", &[SubscriptionStatus::Trialing], 0, "")
        .await
        .unwrap();
    assert_eq!(trials.len(), 1);
}

/// A creation that keeps losing races (its commit refused 2,000 times in a row, as a burst of
/// creations racing for the tenant's invoice counter would) retries in a loop with pauses and,
/// after a bounded number of attempts, answers `Contended` (ABORTED, retryable) having written
/// nothing. Before, each lost race retried by recursion, one more nested future each, and this
/// overflowed the thread's stack — aborting the whole process.
#[tokio::test]
async fn a_creation_that_keeps_losing_races_gives_up_cleanly_instead_of_overflowing_the_stack() {
    let inner: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
    let refusing = Arc::new(FaultyStore::new(inner));
    let h = Harness::with(Some(refusing.clone()), RetryPolicy::default()).await;
    let plan = h.plan(1_000, 0).await;
    refusing.refuse_batches(subscriptions::records::SUBSCRIPTION, 1, 2_000);
    let refused = h
        .engine
        .create_subscription(TENANT, "create-1", "cust-1", &plan, "tok_ok", false)
        .await;
    assert!(
        matches!(refused, Err(SubscriptionsError::Contended(_))),
        "{refused:?}"
    );
    let (listed, _) = h
        .engine
        .list_subscriptions(TENANT, "cust-1", &[], 10, "")
        .await
        .unwrap();
    assert!(listed.is_empty(), "a refused creation wrote {listed:?}");

    // The races end: the same call goes through, with the first invoice number.
    refusing.refuse_batches(subscriptions::records::SUBSCRIPTION, 1, 0);
    let created = h
        .engine
        .create_subscription(TENANT, "create-1", "cust-1", &plan, "tok_ok", false)
        .await
        .unwrap();
    assert_eq!(created.first_invoice.map(|invoice| invoice.number), Some(1));
}

/// Creations at once in one tenant all go through, each charged once, and all take the next
/// number of the tenant's invoice counter (gap-free). In one process they take turns for it
/// instead of racing: no creation's commit is refused
/// (they lost a dozen races each on average at 16 at once, and one of 20,000 creations at 16 at
/// once in `subscriptions-bench` lost 64 in a row and failed with `Contended`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creations_at_once_take_turns_for_the_invoice_counter_instead_of_racing() {
    let inner: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
    let counting = Arc::new(FaultyStore::new(inner));
    let h = Arc::new(Harness::with(Some(counting.clone()), RetryPolicy::default()).await);
    let plan = h.plan(1_000, 0).await;
    // The tenant's first creation lists it for the billing run (a benign race of its own).
    h.engine
        .create_subscription(TENANT, "create-first", "cust-first", &plan, "tok_ok", false)
        .await
        .unwrap();
    let before = counting.conflicts();
    let creations = (0..48).map(|n| {
        let (h, plan) = (h.clone(), plan.clone());
        tokio::spawn(async move {
            h.engine
                .create_subscription(
                    TENANT,
                    &format!("create-{n}"),
                    &format!("cust-{n}"),
                    &plan,
                    "tok_ok",
                    false,
                )
                .await
        })
    });
    let mut numbers = Vec::new();
    for created in futures_util::future::join_all(creations).await {
        let created = created.unwrap().unwrap();
        assert_eq!(created.subscription.status(), SubscriptionStatus::Active);
        let invoice = created.first_invoice.expect("charged at once");
        assert_eq!(invoice.status(), InvoiceStatus::Paid);
        numbers.push(invoice.number);
    }
    numbers.sort();
    assert_eq!(numbers, (2..=49).collect::<Vec<_>>());
    assert_eq!(
        counting.conflicts() - before,
        0,
        "commits refused: races lost"
    );
}
