//! What callers do to invoices and subscriptions outside the billing run: pay an invoice now,
//! void it, write it off, replace the payment method, migrate to a plan's current version,
//! cancel while past due; and what the PSP is left with when a payment goes wrong.

mod common;

use std::time::Duration;

use commerce_api::commerce::common::v1::{ErrorReason, Money};
use commerce_api::commerce::subscriptions::v1::{InvoiceStatus, SubscriptionStatus};
use common::*;
use payments::{Behaviour, Outcome, PaymentProvider, TransactionKind};
use platform::ApiError;
use subscriptions::SubscriptionsError;

/// A subscription whose first renewal was declined: PAST_DUE, dunning retries a day later.
/// Returns (subscription id, renewal invoice id); `token` succeeds again only when reconfigured.
async fn past_due(h: &Harness, token: &str) -> (String, String) {
    let plan = h.plan(2_000, 0).await;
    h.psp.configure(token, Behaviour::succeed());
    let id = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, token, false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    h.psp
        .configure(token, Behaviour::decline("insufficient_funds", false));
    h.advance_to(month(START, 1)).await.unwrap();
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::PastDue);
    (id, sub.latest_invoice_id)
}

fn reason(error: SubscriptionsError) -> (tonic::Code, ErrorReason) {
    let status = ApiError::from(error).into_status(subscriptions::ERROR_DOMAIN);
    let reason = [
        ErrorReason::InvoiceNotPayable,
        ErrorReason::SubscriptionTransitionInvalid,
        ErrorReason::CardDataRejected,
        ErrorReason::PaymentOutcomeUnknown,
    ]
    .into_iter()
    .find(|reason| {
        let name = reason.as_str_name().trim_start_matches("ERROR_REASON_");
        String::from_utf8_lossy(status.details()).contains(name)
    })
    .unwrap_or(ErrorReason::Unspecified);
    (status.code(), reason)
}

#[tokio::test]
async fn paying_a_past_due_invoice_by_hand_reactivates_the_subscription_and_a_repeat_charges_nothing()
 {
    let h = Harness::new().await;
    let (id, invoice_id) = past_due(&h, "tok_hand").await;
    h.psp.configure("tok_hand", Behaviour::succeed());
    let paid = h.engine.pay_invoice(TENANT, &invoice_id).await.unwrap();
    assert_eq!(paid.status(), InvoiceStatus::Paid);
    assert_eq!(paid.attempt_count, 2);
    assert_eq!(minor(&paid.amount_paid), 2_000);
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Active);

    // Paying again, and the retry day passing, charge nothing more.
    let again = h.engine.pay_invoice(TENANT, &invoice_id).await.unwrap();
    assert_eq!(again, paid);
    h.advance_to(month(START, 1) + 2 * DAY).await.unwrap();
    let invoice = h.engine.invoice(TENANT, &invoice_id).await.unwrap();
    assert_eq!(invoice.attempt_count, 2);
    assert_eq!(h.psp.authorization_count(&invoice_id), 1);
}

#[tokio::test]
async fn a_declined_payment_by_hand_reports_the_decline_and_keeps_the_dunning_schedule() {
    let h = Harness::new().await;
    let (id, invoice_id) = past_due(&h, "tok_still_poor").await;
    h.psp
        .configure("tok_still_poor", Behaviour::decline("card_velocity", false));
    let invoice = h.engine.pay_invoice(TENANT, &invoice_id).await.unwrap();
    assert_eq!(invoice.status(), InvoiceStatus::Open);
    assert_eq!(invoice.attempt_count, 2);
    assert_eq!(invoice.last_decline.as_ref().unwrap().code, "card_velocity");
    assert_eq!(ms(&invoice.next_attempt_time), month(START, 1) + DAY);
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::PastDue);
    // Dunning retries when it planned to, and succeeds.
    h.psp.configure("tok_still_poor", Behaviour::succeed());
    h.advance_to(month(START, 1) + DAY).await.unwrap();
    let invoice = h.engine.invoice(TENANT, &invoice_id).await.unwrap();
    assert_eq!(invoice.status(), InvoiceStatus::Paid);
    assert_eq!(invoice.attempt_count, 3);
}

#[tokio::test]
async fn voiding_a_past_due_invoice_stops_dunning_and_paid_invoices_cannot_be_voided() {
    let h = Harness::new().await;
    let (id, invoice_id) = past_due(&h, "tok_void").await;
    let voided = h.engine.void_invoice(TENANT, &invoice_id).await.unwrap();
    assert_eq!(voided.status(), InvoiceStatus::Void);
    assert!(voided.next_attempt_time.is_none());
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Active);
    assert_eq!(
        h.engine.void_invoice(TENANT, &invoice_id).await.unwrap(),
        voided
    );
    h.advance_to(month(START, 1) + 5 * DAY).await.unwrap();
    assert_eq!(
        h.engine
            .invoice(TENANT, &invoice_id)
            .await
            .unwrap()
            .attempt_count,
        1
    );
    // A void invoice cannot be paid; a paid one cannot be voided or written off.
    let error = h.engine.pay_invoice(TENANT, &invoice_id).await.unwrap_err();
    assert_eq!(
        reason(error),
        (
            tonic::Code::FailedPrecondition,
            ErrorReason::InvoiceNotPayable
        )
    );
    let first = h.invoices(&id).await[0].clone();
    assert_eq!(first.status(), InvoiceStatus::Paid);
    for error in [
        h.engine
            .void_invoice(TENANT, &first.invoice_id)
            .await
            .unwrap_err(),
        h.engine
            .mark_invoice_uncollectible(TENANT, &first.invoice_id)
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(error, SubscriptionsError::InvoiceTransition(_)));
        assert_eq!(
            reason(error),
            (
                tonic::Code::FailedPrecondition,
                ErrorReason::InvoiceNotPayable
            )
        );
    }
}

#[tokio::test]
async fn writing_off_a_past_due_invoice_ends_dunning_by_policy_and_it_can_still_be_paid() {
    let h = Harness::new().await;
    let (id, invoice_id) = past_due(&h, "tok_write_off").await;
    let written_off = h
        .engine
        .mark_invoice_uncollectible(TENANT, &invoice_id)
        .await
        .unwrap();
    assert_eq!(written_off.status(), InvoiceStatus::Uncollectible);
    assert_eq!(
        h.engine
            .mark_invoice_uncollectible(TENANT, &invoice_id)
            .await
            .unwrap(),
        written_off
    );
    // The default policy's final action: cancel.
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Canceled);
    h.psp.configure("tok_write_off", Behaviour::succeed());
    let paid = h.engine.pay_invoice(TENANT, &invoice_id).await.unwrap();
    assert_eq!(paid.status(), InvoiceStatus::Paid);
    // Canceled is final: paying the written-off invoice does not revive it.
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Canceled);
}

#[tokio::test]
async fn a_new_payment_method_retries_the_past_due_invoice_at_once_and_card_numbers_are_refused() {
    let h = Harness::new().await;
    let (id, invoice_id) = past_due(&h, "tok_old_card").await;
    let error = h
        .engine
        .update_payment_method(TENANT, &id, "4242424242424242")
        .await
        .unwrap_err();
    assert_eq!(error, SubscriptionsError::CardDataRejected);
    let sub = h
        .engine
        .update_payment_method(TENANT, &id, "tok_ok")
        .await
        .unwrap();
    assert_eq!(sub.payment_token, "tok_ok");
    assert_eq!(sub.status(), SubscriptionStatus::Active);
    let invoice = h.engine.invoice(TENANT, &invoice_id).await.unwrap();
    assert_eq!(invoice.status(), InvoiceStatus::Paid);
    // The same token again changes nothing.
    let same = h
        .engine
        .update_payment_method(TENANT, &id, "tok_ok")
        .await
        .unwrap();
    assert_eq!(same.version, sub.version);
}

#[tokio::test]
async fn migrating_moves_the_subscriber_to_the_current_version_at_the_next_renewal() {
    let h = Harness::new().await;
    let plan = h.plan(1_000, 0).await;
    let id = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_ok", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    let usd = |amount_minor| Money {
        currency_code: "USD".into(),
        amount_minor,
    };
    h.engine
        .add_plan_version(TENANT, &key(), &plan, usd(1_500), 0)
        .await
        .unwrap();
    let (sub, next_version) = h.engine.migrate_subscription(TENANT, &id).await.unwrap();
    assert_eq!((sub.plan_version, next_version), (1, 2));
    // Idempotent.
    let (again, next_version) = h.engine.migrate_subscription(TENANT, &id).await.unwrap();
    assert_eq!((again.version, next_version), (sub.version, 2));
    h.advance_to(month(START, 1)).await.unwrap();
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.plan_version, 2);
    let renewal = h
        .engine
        .invoice(TENANT, &sub.latest_invoice_id)
        .await
        .unwrap();
    assert_eq!(minor(&renewal.amount_paid), 1_500);
    assert_eq!(renewal.lines[0].plan_version, 2);
    // The first period stayed at the old price.
    assert_eq!(minor(&h.invoices(&id).await[0].amount_paid), 1_000);
}

#[tokio::test]
async fn canceling_a_past_due_subscription_now_voids_its_open_invoice() {
    let h = Harness::new().await;
    let (id, invoice_id) = past_due(&h, "tok_leaving").await;
    let sub = h
        .engine
        .cancel_subscription(TENANT, &id, false, "moving away")
        .await
        .unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Canceled);
    let invoice = h.engine.invoice(TENANT, &invoice_id).await.unwrap();
    assert_eq!(invoice.status(), InvoiceStatus::Void);
    h.psp.configure("tok_leaving", Behaviour::succeed());
    assert!(h.engine.pay_invoice(TENANT, &invoice_id).await.is_err());
    assert_eq!(h.psp.authorization_count(&invoice_id), 0);
}

#[tokio::test]
async fn a_capture_declined_after_authorization_releases_the_hold() {
    let h = Harness::new().await;
    let plan = h.plan(2_000, 0).await;
    h.psp.configure("tok_capture_fails", Behaviour::succeed());
    h.psp.configure_for(
        "tok_capture_fails",
        TransactionKind::Capture,
        Behaviour::decline("processing_error", false),
    );
    let created = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_capture_fails", false)
        .await
        .unwrap();
    assert_eq!(
        created.subscription.status(),
        SubscriptionStatus::Incomplete
    );
    let invoice = created.first_invoice.unwrap();
    assert_eq!(
        invoice.last_decline.as_ref().unwrap().code,
        "processing_error"
    );
    let transactions = h.psp.transactions(Some(&invoice.invoice_id)).await.unwrap();
    let voids = transactions
        .iter()
        .filter(|t| t.kind == TransactionKind::Void && t.succeeded())
        .count();
    assert_eq!(voids, 1, "{transactions:?}");
}

#[tokio::test]
async fn an_unknown_payment_outcome_is_settled_by_the_next_run_without_a_second_authorization() {
    let h = Harness::new().await;
    h.psp.set_timeout_delay(Duration::from_millis(10));
    let plan = h.plan(2_000, 0).await;
    h.psp.configure("tok_lost", Behaviour::succeed());
    let id = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_lost", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    // The renewal's authorization goes through but its reply is lost; its capture times out.
    h.psp.configure_for(
        "tok_lost",
        TransactionKind::Authorization,
        Behaviour::succeed().after_failures(1, Outcome::ReplyLost),
    );
    h.psp.configure_for(
        "tok_lost",
        TransactionKind::Capture,
        Behaviour::new(Outcome::Timeout),
    );
    let renewal = month(START, 1);
    let report = h.engine.run_due(TENANT, renewal).await.unwrap();
    assert_eq!(report.outcomes_unknown, 1);
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    let invoice = h
        .engine
        .invoice(TENANT, &sub.latest_invoice_id)
        .await
        .unwrap();
    assert_eq!(invoice.status(), InvoiceStatus::Open);
    assert_eq!(invoice.attempt_count, 1);
    // Voiding it now could lose a payment that went through: refused.
    let error = h
        .engine
        .void_invoice(TENANT, &invoice.invoice_id)
        .await
        .unwrap_err();
    assert_eq!(
        error,
        SubscriptionsError::PaymentInProgress(invoice.invoice_id.clone())
    );

    // The PSP recovers; the next run repeats the same attempt with the same keys.
    h.psp
        .configure_for("tok_lost", TransactionKind::Capture, Behaviour::succeed());
    h.advance_to(renewal + 3_600_000).await.unwrap();
    let invoice = h.engine.invoice(TENANT, &invoice.invoice_id).await.unwrap();
    assert_eq!(invoice.status(), InvoiceStatus::Paid);
    assert_eq!(invoice.attempt_count, 1);
    assert_eq!(h.psp.authorization_count(&invoice.invoice_id), 1);
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Active);
}

#[tokio::test]
async fn creating_or_changing_again_with_the_same_key_returns_what_the_first_call_made() {
    let h = Harness::new().await;
    let plan = h.plan(2_000, 0).await;
    let first = h
        .engine
        .create_subscription(TENANT, "retry-me", "cust-1", &plan, "tok_ok", false)
        .await
        .unwrap();
    let again = h
        .engine
        .create_subscription(TENANT, "retry-me", "cust-1", &plan, "tok_ok", false)
        .await
        .unwrap();
    assert_eq!(again, first);
    let invoice_id = first.first_invoice.unwrap().invoice_id;
    assert_eq!(h.psp.authorization_count(&invoice_id), 1);
    let (subscriptions, _) = h
        .engine
        .list_subscriptions(TENANT, "cust-1", &[], 0, "")
        .await
        .unwrap();
    assert_eq!(subscriptions.len(), 1);

    // A plan change retried with its key: one change, one proration invoice.
    let premium = h.plan(3_000, 0).await;
    h.advance_to(START + 10 * DAY).await.unwrap();
    let id = &first.subscription.subscription_id;
    let change = h
        .engine
        .change_plan(TENANT, "change-me", id, &premium, None)
        .await
        .unwrap();
    let retried = h
        .engine
        .change_plan(TENANT, "change-me", id, &premium, None)
        .await
        .unwrap();
    assert_eq!(retried, change);
    assert_eq!(h.invoices(id).await.len(), 2);
    assert_eq!(change.invoice.unwrap().status(), InvoiceStatus::Paid);

    let usd = Money {
        currency_code: "USD".into(),
        amount_minor: 2_500,
    };
    for _ in 0..2 {
        let plan = h
            .engine
            .add_plan_version(TENANT, "v2", &plan, usd.clone(), 0)
            .await
            .unwrap();
        assert_eq!(plan.versions.len(), 2);
    }
}

#[tokio::test]
async fn subscriptions_and_invoices_list_newest_first_even_within_one_millisecond() {
    let h = Harness::new().await;
    let plan = h.plan(2_000, 0).await;
    let mut created = Vec::new();
    for n in 0..3 {
        created.push(
            h.engine
                .create_subscription(TENANT, &key(), &format!("cust-{n}"), &plan, "tok_ok", false)
                .await
                .unwrap(),
        );
    }
    let (listed, _) = h
        .engine
        .list_subscriptions(TENANT, "", &[], 0, "")
        .await
        .unwrap();
    let newest_first: Vec<_> = created
        .iter()
        .rev()
        .map(|c| c.subscription.subscription_id.clone())
        .collect();
    let ids: Vec<_> = listed.iter().map(|s| s.subscription_id.clone()).collect();
    assert_eq!(ids, newest_first);

    // Pages continue where they left off.
    let (page, token) = h
        .engine
        .list_invoices(TENANT, "", &[], 2, "")
        .await
        .unwrap();
    let (rest, _) = h
        .engine
        .list_invoices(TENANT, "", &[], 2, &token)
        .await
        .unwrap();
    let numbers: Vec<_> = page.iter().chain(&rest).map(|i| i.number).collect();
    assert_eq!(numbers, [3, 2, 1]);
    let (paid, _) = h
        .engine
        .list_invoices(TENANT, "", &[InvoiceStatus::Open], 0, "")
        .await
        .unwrap();
    assert!(paid.is_empty());
}
