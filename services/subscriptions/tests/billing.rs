//! The billing run: renewals over a year of clock advances, interrupted runs, dunning.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use commerce_api::commerce::subscriptions::v1::{InvoiceStatus, SubscriptionStatus};
use common::*;
use payments::{Behaviour, Outcome, TransactionKind};
use store::testing::FaultyStore;
use store::{EmbeddedStore, Store};
use subscriptions::{FinalAction, RetryPolicy};

#[tokio::test]
async fn a_year_of_monthly_renewals_bills_each_month_once_with_gap_free_numbers() {
    let h = Harness::new().await;
    let plan = h.plan(1_000, 0).await;
    let created = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_ok", false)
        .await
        .unwrap();
    assert_eq!(created.subscription.status(), SubscriptionStatus::Active);
    let first = created.first_invoice.unwrap();
    assert_eq!((first.number, first.status()), (1, InvoiceStatus::Paid));
    let id = created.subscription.subscription_id;

    // One advance of a whole year: each month's renewal, in order.
    let report = h.advance_to(month(START, 12)).await.unwrap();
    assert_eq!(report.renewals, 12);
    assert_eq!(report.invoices_paid, 12);

    let invoices = h.invoices(&id).await;
    assert_eq!(invoices.len(), 13);
    for (n, invoice) in invoices.iter().enumerate() {
        assert_eq!(invoice.number, n as i64 + 1);
        assert_eq!(invoice.status(), InvoiceStatus::Paid);
        assert_eq!(minor(&invoice.amount_paid), 1_000);
        assert_eq!(ms(&invoice.period_start), month(START, n as i64));
        assert_eq!(ms(&invoice.period_end), month(START, n as i64 + 1));
        assert_eq!(ms(&invoice.create_time), month(START, n as i64));
        assert_eq!(h.psp.authorization_count(&invoice.invoice_id), 1);
    }
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Active);
    assert_eq!(ms(&sub.current_period_end), month(START, 13));

    // Running again finds nothing due.
    let again = h.advance_to(month(START, 12)).await.unwrap();
    assert_eq!(again.renewals, 0);
    assert_eq!(h.invoices(&id).await.len(), 13);

    // Every payment is in the money ledger.
    let psp = h
        .engine
        .ledger()
        .account(TENANT, "subscriptions:psp:USD")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(psp.balances.posted.abs(), 13_000);
    for invoice in &invoices {
        assert!(
            h.engine
                .ledger()
                .entry(
                    TENANT,
                    &subscriptions::records::payment_entry_id(&invoice.invoice_id)
                )
                .await
                .unwrap()
                .is_some()
        );
    }

    // And in the outbox.
    let events = h.store.pending_events(10_000).await.unwrap();
    let count = |name: &str| {
        events
            .iter()
            .filter(|e| e.event.event_type == format!("commerce.subscriptions.v1.{name}"))
            .count()
    };
    assert_eq!(count("SubscriptionCreated"), 1);
    assert_eq!(count("SubscriptionRenewed"), 12);
    assert_eq!(count("InvoicePaid"), 13);
}

#[tokio::test]
async fn monthly_advances_number_invoices_of_several_subscriptions_in_time_order() {
    let h = Harness::new().await;
    let plan = h.plan(500, 0).await;
    let a = h
        .engine
        .create_subscription(TENANT, &key(), "cust-a", &plan, "tok_ok", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    h.advance_to(START + 10 * DAY).await.unwrap();
    let b = h
        .engine
        .create_subscription(TENANT, &key(), "cust-b", &plan, "tok_ok", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    // Three months in one advance: a's and b's renewals interleave by time.
    h.advance_to(month(START, 3) + 5 * DAY).await.unwrap();
    let mut all: Vec<_> = h.invoices(&a).await;
    all.extend(h.invoices(&b).await);
    all.sort_by_key(|invoice| invoice.number);
    let numbers: Vec<i64> = all.iter().map(|invoice| invoice.number).collect();
    // a: created + 3 renewals; b: created + 2 renewals (its third falls after the target).
    assert_eq!(numbers, (1..=7).collect::<Vec<_>>());
    let times: Vec<i64> = all.iter().map(|invoice| ms(&invoice.create_time)).collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{times:?}");
}

/// Builds `subscribers` subscriptions, then crashes the `crash_at`th commit of a 3-month advance
/// and runs the advance again; returns every invoice.
async fn crash_and_rerun(subscribers: usize, crash_at: u64) -> (Harness, Vec<String>) {
    let inner: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
    let crashing = Arc::new(FaultyStore::new(inner));
    let h = Harness::with(Some(crashing.clone()), RetryPolicy::default()).await;
    let plan = h.plan(1_234, 0).await;
    let mut subs = Vec::new();
    for n in 0..subscribers {
        subs.push(
            h.engine
                .create_subscription(TENANT, &key(), &format!("cust-{n}"), &plan, "tok_ok", false)
                .await
                .unwrap()
                .subscription
                .subscription_id,
        );
    }
    crashing.fail_in(crash_at);
    let target = month(START, 3);
    let _interrupted = h.advance_to(target).await;
    h.advance_to(target).await.expect("the rerun completes");
    (h, subs)
}

#[tokio::test]
async fn an_interrupted_billing_run_neither_skips_nor_double_bills_when_run_again() {
    // Each crash point of the run: before/after invoice creation, attempt persisted, PSP
    // called but outcome not committed, ...
    for crash_at in 1..=30 {
        let (h, subs) = crash_and_rerun(3, crash_at).await;
        billed_once_each(&h, &subs, crash_at).await;
    }
}

/// A run of 70 subscriptions renews them in waves (64, then 6): each wave's renewals are one
/// commit numbering their invoices together, then their collections run at once and their
/// ledger entries share batched appends. A crash anywhere in that — before, inside or after a
/// wave's batch, between a wave's collections — leaves nothing billed twice or skipped, and the
/// numbers gap-free.
#[tokio::test]
async fn an_interrupted_batched_billing_run_neither_skips_nor_double_bills() {
    for crash_at in [
        1, 2, 3, 4, 10, 40, 64, 66, 67, 70, 71, 100, 133, 140, 150, 200,
    ] {
        let (h, subs) = crash_and_rerun(70, crash_at).await;
        billed_once_each(&h, &subs, crash_at).await;
    }
}

/// A wave's renewals go in one commit; when that commit loses a race (here: refused once with a
/// conflict), nothing of it is written and the wave's actions run one after another instead —
/// every period still billed once, numbers still gap-free.
#[tokio::test]
async fn a_wave_whose_batched_renewal_loses_a_race_renews_one_by_one() {
    let inner: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
    let refusing = Arc::new(FaultyStore::new(inner));
    let h = Harness::with(Some(refusing.clone()), RetryPolicy::default()).await;
    let plan = h.plan(700, 0).await;
    let mut subs = Vec::new();
    for n in 0..5 {
        subs.push(
            h.engine
                .create_subscription(TENANT, &key(), &format!("cust-{n}"), &plan, "tok_ok", false)
                .await
                .unwrap()
                .subscription
                .subscription_id,
        );
    }
    refusing.refuse_batches(subscriptions::records::INVOICE, 2, 1);
    let report = h.advance_to(month(START, 1) + DAY).await.unwrap();
    assert_eq!(report.renewals, 5);
    assert_eq!(report.invoices_paid, 5);
    let mut numbers = Vec::new();
    for sub in &subs {
        let invoices = h.invoices(sub).await;
        assert_eq!(invoices.len(), 2);
        assert!(invoices.iter().all(|i| i.status() == InvoiceStatus::Paid));
        numbers.extend(invoices.iter().map(|i| i.number));
    }
    numbers.sort();
    assert_eq!(numbers, (1..=10).collect::<Vec<_>>());
}

/// Every subscription has its 4 periods billed once each, paid, charged once; numbers 1..4n.
async fn billed_once_each(h: &Harness, subs: &[String], crash_at: u64) {
    {
        let mut numbers = Vec::new();
        for sub in subs {
            let invoices = h.invoices(sub).await;
            assert_eq!(invoices.len(), 4, "crash at {crash_at}");
            let starts: HashSet<i64> = invoices.iter().map(|i| ms(&i.period_start)).collect();
            assert_eq!(
                starts.len(),
                4,
                "crash at {crash_at}: a period billed twice"
            );
            for invoice in invoices {
                assert_eq!(invoice.status(), InvoiceStatus::Paid, "crash at {crash_at}");
                assert_eq!(minor(&invoice.amount_paid), 1_234);
                assert_eq!(
                    h.psp.authorization_count(&invoice.invoice_id),
                    1,
                    "crash at {crash_at}: charged twice"
                );
                numbers.push(invoice.number);
            }
            let sub = h.engine.subscription(TENANT, sub).await.unwrap();
            assert_eq!(sub.status(), SubscriptionStatus::Active);
            assert_eq!(ms(&sub.current_period_end), month(START, 4));
        }
        numbers.sort();
        let all = 4 * subs.len() as i64;
        assert_eq!(
            numbers,
            (1..=all).collect::<Vec<_>>(),
            "crash at {crash_at}"
        );
    }
}

#[tokio::test]
async fn a_store_failure_on_invoices_stops_the_run_and_the_next_run_finishes_it() {
    let inner: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
    let faulty = Arc::new(FaultyStore::new(inner));
    let h = Harness::with(Some(faulty.clone()), RetryPolicy::default()).await;
    let plan = h.plan(999, 0).await;
    let id = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_ok", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    h.advance_to(month(START, 1)).await.unwrap();
    faulty.fail_commits(subscriptions::records::INVOICE, 1);
    assert!(h.advance_to(month(START, 6)).await.is_err());
    h.advance_to(month(START, 6)).await.unwrap();
    let invoices = h.invoices(&id).await;
    assert_eq!(invoices.len(), 7);
    let numbers: Vec<i64> = invoices.iter().map(|i| i.number).collect();
    assert_eq!(numbers, (1..=7).collect::<Vec<_>>());
    assert!(invoices.iter().all(|i| i.status() == InvoiceStatus::Paid));
}

#[tokio::test]
async fn declines_then_success_on_the_third_retry_returns_the_subscription_to_active() {
    let h = Harness::new().await;
    let plan = h.plan(2_000, 0).await;
    h.psp.configure("tok_flaky", Behaviour::succeed());
    let id = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_flaky", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    // The renewal and the first two retries are declined; the third retry goes through.
    h.psp.configure_for(
        "tok_flaky",
        TransactionKind::Authorization,
        Behaviour::succeed().after_failures(
            3,
            Outcome::Decline {
                code: "insufficient_funds".into(),
                hard: false,
            },
        ),
    );
    let renewal = month(START, 1);
    h.advance_to(renewal).await.unwrap();
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::PastDue);
    let invoice = h
        .engine
        .invoice(TENANT, &sub.latest_invoice_id)
        .await
        .unwrap();
    assert_eq!(invoice.attempt_count, 1);
    assert_eq!(ms(&invoice.next_attempt_time), renewal + DAY);
    assert_eq!(invoice.last_decline.unwrap().code, "insufficient_funds");

    h.advance_to(renewal + DAY).await.unwrap(); // retry 1: declined
    h.advance_to(renewal + 4 * DAY).await.unwrap(); // retry 2: declined
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::PastDue);
    h.advance_to(renewal + 9 * DAY).await.unwrap(); // retry 3: paid
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Active);
    let invoice = h
        .engine
        .invoice(TENANT, &sub.latest_invoice_id)
        .await
        .unwrap();
    assert_eq!(invoice.status(), InvoiceStatus::Paid);
    assert_eq!(invoice.attempt_count, 4);
    assert_eq!(ms(&invoice.paid_time), renewal + 9 * DAY);
    assert_eq!(h.psp.authorization_count(&invoice.invoice_id), 1);
    // The next renewal is on schedule.
    assert_eq!(ms(&sub.current_period_end), month(START, 2));
    h.psp.configure_for(
        "tok_flaky",
        TransactionKind::Authorization,
        Behaviour::succeed(),
    );
    h.advance_to(month(START, 2)).await.unwrap();
    assert_eq!(h.invoices(&id).await.len(), 3);
}

#[tokio::test]
async fn when_every_retry_fails_the_policy_cancels_and_writes_the_invoice_off() {
    let h = Harness::new().await;
    let plan = h.plan(2_000, 0).await;
    h.psp.configure("tok_bad_later", Behaviour::succeed());
    let id = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_bad_later", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    h.psp.configure(
        "tok_bad_later",
        Behaviour::decline("insufficient_funds", false),
    );
    h.advance_to(month(START, 1) + 30 * DAY).await.unwrap();
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Canceled);
    assert_eq!(ms(&sub.cancel_time), month(START, 1) + 14 * DAY);
    let invoice = h
        .engine
        .invoice(TENANT, &sub.latest_invoice_id)
        .await
        .unwrap();
    assert_eq!(invoice.status(), InvoiceStatus::Uncollectible);
    assert_eq!(invoice.attempt_count, 5);
    assert_eq!(h.invoices(&id).await.len(), 2);
}

#[tokio::test]
async fn a_hard_decline_stops_dunning_at_once_with_the_policy_end_state() {
    let policy = RetryPolicy::new(vec![DAY, DAY], FinalAction::MarkUnpaid).unwrap();
    let h = Harness::with(None, policy).await;
    let plan = h.plan(2_000, 0).await;
    h.psp.configure("tok_stolen_later", Behaviour::succeed());
    let id = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_stolen_later", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    h.psp
        .configure("tok_stolen_later", Behaviour::decline("stolen_card", true));
    h.advance_to(month(START, 1) + 5 * DAY).await.unwrap();
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Unpaid);
    let invoice = h
        .engine
        .invoice(TENANT, &sub.latest_invoice_id)
        .await
        .unwrap();
    assert_eq!(invoice.attempt_count, 1);
    assert_eq!(invoice.status(), InvoiceStatus::Uncollectible);
}

#[tokio::test]
async fn retries_exhausted_under_an_unpaid_policy_leave_the_subscription_unpaid() {
    let policy = RetryPolicy::new(vec![DAY, 2 * DAY], FinalAction::MarkUnpaid).unwrap();
    let h = Harness::with(None, policy).await;
    let plan = h.plan(2_000, 0).await;
    h.psp.configure("tok_poor_later", Behaviour::succeed());
    let id = h
        .engine
        .create_subscription(TENANT, &key(), "cust-1", &plan, "tok_poor_later", false)
        .await
        .unwrap()
        .subscription
        .subscription_id;
    h.psp.configure(
        "tok_poor_later",
        Behaviour::decline("insufficient_funds", false),
    );
    h.advance_to(month(START, 3)).await.unwrap();
    let sub = h.engine.subscription(TENANT, &id).await.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Unpaid);
    let invoice = h
        .engine
        .invoice(TENANT, &sub.latest_invoice_id)
        .await
        .unwrap();
    assert_eq!(invoice.attempt_count, 3);
    // Final: no more invoices for later periods.
    assert_eq!(h.invoices(&id).await.len(), 2);
}
