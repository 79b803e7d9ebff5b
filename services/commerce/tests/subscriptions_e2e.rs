//! Subscriptions end to end through the running binary, once over Connect JSON and once over
//! gRPC, each in its own tenant with its clock frozen: plan → subscription charged at once →
//! `AdvanceClock` month by month runs the billing run (the clock's due jobs) → an upgrade
//! mid-period invoices exactly the preview → the rest of the year renews on the new price. The
//! server is killed (SIGKILL) half way through the year and started again on the same store:
//! invoices stay one per period, numbered without gaps, and the money ledger holds every payment.

mod common;

use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::subscriptions::v1 as su;
use common::client::{Client, Protocol};

fn usd(minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor: minor,
    })
}

fn timestamp(ms: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: ms / 1000,
        nanos: 0,
    })
}

fn ms(time: &Option<prost_types::Timestamp>) -> i64 {
    time.as_ref().map_or(0, |time| time.seconds * 1000)
}

impl Client {
    async fn advance_to(&self, to_ms: i64) -> su::AdvanceClockResponse {
        // Advancing runs every renewal due up to the target (a year of them at a time here): a
        // caller of such a batch gives it a longer deadline than an ordinary call's 10 s, or a
        // busy 2-core CI machine turns a slow batch into a transport timeout.
        let patient = Client {
            timeout: Some(std::time::Duration::from_secs(60)),
            ..self.clone()
        };
        patient
            .call(
                "/commerce.subscriptions.v1.ClockService/AdvanceClock",
                su::AdvanceClockRequest {
                    target_time: timestamp(to_ms),
                },
                None,
            )
            .await
            .unwrap()
    }

    async fn subscription(&self, id: &str) -> su::Subscription {
        let response: su::GetSubscriptionResponse = self
            .call(
                "/commerce.subscriptions.v1.SubscriptionService/GetSubscription",
                su::GetSubscriptionRequest {
                    subscription_id: id.into(),
                },
                None,
            )
            .await
            .unwrap();
        response.subscription.unwrap()
    }

    async fn invoices(&self, subscription: &str) -> Vec<su::Invoice> {
        let mut invoices = Vec::new();
        let mut page_token = String::new();
        loop {
            let page: su::ListInvoicesResponse = self
                .call(
                    "/commerce.subscriptions.v1.InvoiceService/ListInvoices",
                    su::ListInvoicesRequest {
                        subscription_id: subscription.into(),
                        page_size: 100,
                        page_token,
                        ..Default::default()
                    },
                    None,
                )
                .await
                .unwrap();
            invoices.extend(page.invoices);
            if page.next_page_token.is_empty() {
                return invoices;
            }
            page_token = page.next_page_token;
        }
    }

    async fn create_plan(&self, name: &str, price: i64, key: &str) -> String {
        let response: su::CreatePlanResponse = self
            .call(
                "/commerce.subscriptions.v1.PlanService/CreatePlan",
                su::CreatePlanRequest {
                    display_name: name.into(),
                    terms: Some(su::PlanVersion {
                        price: usd(price),
                        interval: su::BillingInterval::Month as i32,
                        interval_count: 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Some(key),
            )
            .await
            .unwrap();
        response.plan.unwrap().plan_id
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Month `n` after the start (Jan 31, 2031, 09:00 UTC), keeping day 31 clamped to each month's
/// last day (Feb 28 → Mar 31 → Apr 30 ...), computed here independently of the engine.
fn month_end(n: u32) -> i64 {
    let months = 2031 * 12 + i64::from(n); // January 2031 + n, zero-based months
    let (year, month) = (months / 12, months % 12 + 1);
    let next = months + 1;
    let days_in_month =
        days_from_civil(next / 12, next % 12 + 1, 1) - days_from_civil(year, month, 1);
    let day = 31.min(days_in_month);
    days_from_civil(year, month, day) * 86_400_000 + 9 * 3_600_000
}

/// The first half of the year: subscribe, renew monthly, upgrade mid-period. Returns the
/// subscription id.
async fn first_half(client: &Client) -> String {
    client.advance_to(month_end(0)).await;
    let coffee = client
        .create_plan("Coffee Club", 1_000, "plan-coffee")
        .await;
    let plus = client
        .create_plan("Coffee Club Plus", 3_000, "plan-plus")
        .await;
    let created: su::CreateSubscriptionResponse = client
        .call(
            "/commerce.subscriptions.v1.SubscriptionService/CreateSubscription",
            su::CreateSubscriptionRequest {
                customer_id: "cust-1".into(),
                plan_id: coffee.clone(),
                payment_token: "tok_ok".into(),
                skip_trial: false,
            },
            Some("subscribe-1"),
        )
        .await
        .unwrap();
    let subscription = created.subscription.unwrap();
    let id = subscription.subscription_id.clone();
    assert_eq!(subscription.status, su::SubscriptionStatus::Active as i32);
    let first = created.first_invoice.unwrap();
    assert_eq!(
        (first.number, first.status, first.amount_paid.clone()),
        (1, su::InvoiceStatus::Paid as i32, usd(1_000))
    );
    // Months 1..=3 one advance at a time; each renews once, on its clamped day.
    for month in 1..=3 {
        let advanced = client.advance_to(month_end(month)).await;
        assert_eq!(
            (advanced.renewal_count, advanced.paid_invoice_count),
            (1, 1),
            "month {month}"
        );
        let now = client.subscription(&id).await;
        assert_eq!(ms(&now.current_period_start), month_end(month));
        assert_eq!(ms(&now.current_period_end), month_end(month + 1));
    }
    // Half way through month 4's period: preview, then upgrade with the previewed net.
    let middle = (month_end(3) + month_end(4)) / 2;
    client.advance_to(middle).await;
    let preview: su::PreviewPlanChangeResponse = client
        .call(
            "/commerce.subscriptions.v1.SubscriptionService/PreviewPlanChange",
            su::PreviewPlanChangeRequest {
                subscription_id: id.clone(),
                new_plan_id: plus.clone(),
            },
            None,
        )
        .await
        .unwrap();
    let proration = preview.proration.unwrap();
    // Exactly half the period is left: half of each price, rounded down per line.
    assert_eq!(proration.credit, usd(-500));
    assert_eq!(proration.charge, usd(1_500));
    assert_eq!(proration.net, usd(1_000));
    let changed: su::ChangePlanResponse = client
        .call(
            "/commerce.subscriptions.v1.SubscriptionService/ChangePlan",
            su::ChangePlanRequest {
                subscription_id: id.clone(),
                new_plan_id: plus.clone(),
                expected_net: proration.net.clone(),
            },
            Some("upgrade-1"),
        )
        .await
        .unwrap();
    let invoice = changed.invoice.unwrap();
    assert_eq!(invoice.amount_paid, proration.net);
    let amounts: Vec<Option<Money>> = invoice
        .lines
        .iter()
        .map(|line| line.amount.clone())
        .collect();
    assert_eq!(amounts, [proration.credit, proration.charge]);
    id
}

async fn second_half(client: &Client, id: &str) {
    // The rest of the year in one advance: each month renews once, in order, on the new price.
    let advanced = client.advance_to(month_end(12)).await;
    assert_eq!(advanced.renewal_count, 9, "months 4..=12");
    let invoices = client.invoices(id).await;
    let mut numbers: Vec<i64> = invoices.iter().map(|invoice| invoice.number).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=14).collect::<Vec<i64>>(),
        "13 periods and one upgrade, no gaps"
    );
    assert!(
        invoices
            .iter()
            .all(|invoice| invoice.status == su::InvoiceStatus::Paid as i32),
        "{invoices:#?}"
    );
    let mut periods: Vec<i64> = invoices
        .iter()
        .filter(|invoice| {
            invoice
                .lines
                .iter()
                .all(|line| line.kind == su::InvoiceLineKind::PlanPeriod as i32)
        })
        .map(|invoice| ms(&invoice.period_start))
        .collect();
    periods.sort_unstable();
    assert_eq!(
        periods,
        (0..=12).map(month_end).collect::<Vec<i64>>(),
        "one invoice per period"
    );
    let paid: i64 = invoices
        .iter()
        .map(|invoice| {
            invoice
                .amount_paid
                .as_ref()
                .map_or(0, |money| money.amount_minor)
        })
        .sum();
    assert_eq!(paid, 4 * 1_000 + 1_000 + 9 * 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_of_renewals_survives_a_killed_server_over_connect_json_and_grpc() {
    let mut server = common::start();
    let mut ids = Vec::new();
    for (protocol, tenant) in [
        (Protocol::ConnectJson, "subs-connect"),
        (Protocol::Grpc, "subs-grpc"),
    ] {
        let client = Client {
            protocol,
            addr: server.addr.clone(),
            token: common::token_for(tenant),
            tenant: tenant.into(),
            timeout: None,
        };
        ids.push(first_half(&client).await);
    }
    // SIGKILL: no graceful shutdown; the store must carry everything. The next server starts on
    // the files the killed one left.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let restarted = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(server.data_dir.path()).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), restarted.path().join(file.file_name())).unwrap();
    }
    let server2 = common::start_in(restarted, &[]);
    for ((protocol, tenant), id) in [
        (Protocol::ConnectJson, "subs-connect"),
        (Protocol::Grpc, "subs-grpc"),
    ]
    .into_iter()
    .zip(&ids)
    {
        let client = Client {
            protocol,
            addr: server2.addr.clone(),
            token: common::token_for(tenant),
            tenant: tenant.into(),
            timeout: None,
        };
        second_half(&client, id).await;
    }
}

/// The hardest case: the process is SIGKILLed *inside* a billing run (a year's advance
/// for 150 subscriptions, killed after a moment), then started again on its files and the advance
/// repeated: every subscription ends with exactly one paid invoice per period, and the tenant's
/// invoice numbers run 1..n without a gap or a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billing_run_killed_in_the_middle_neither_skips_nor_double_bills() {
    const SUBSCRIBERS: usize = 150;
    let mut server = common::start();
    let tenant = "subs-killed";
    let client = |addr: &str| Client {
        protocol: Protocol::Grpc,
        addr: addr.to_owned(),
        token: common::token_for(tenant),
        tenant: tenant.into(),
        timeout: None,
    };
    let first = client(&server.addr);
    first.advance_to(month_end(0)).await;
    let plan = first.create_plan("Meal plan", 4_900, "plan-meal").await;
    for n in 0..SUBSCRIBERS {
        let _: su::CreateSubscriptionResponse = first
            .call(
                "/commerce.subscriptions.v1.SubscriptionService/CreateSubscription",
                su::CreateSubscriptionRequest {
                    customer_id: format!("cust-{n}"),
                    plan_id: plan.clone(),
                    payment_token: "tok_ok".into(),
                    skip_trial: false,
                },
                Some(&format!("subscribe-{n}")),
            )
            .await
            .unwrap();
    }
    // A year in one advance, killed while the run is under way.
    let year = month_end(12);
    let running = tokio::spawn(async move {
        let _: Result<su::AdvanceClockResponse, String> = first
            .call(
                "/commerce.subscriptions.v1.ClockService/AdvanceClock",
                su::AdvanceClockRequest {
                    target_time: timestamp(year),
                },
                None,
            )
            .await;
    });
    // Kill as soon as the run is visibly under way (some renewals committed, most not).
    let watcher = client(&server.addr);
    let started = std::time::Instant::now();
    while watcher.invoices("").await.len() < SUBSCRIBERS + 40 {
        assert!(
            started.elapsed().as_secs() < 60,
            "the billing run never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let _ = running.await;
    let restarted = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(server.data_dir.path()).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), restarted.path().join(file.file_name())).unwrap();
    }
    let server2 = common::start_in(restarted, &[]);
    let second = client(&server2.addr);
    let before = second.invoices("").await.len();
    assert!(
        before > SUBSCRIBERS && before < SUBSCRIBERS * 13,
        "the kill landed inside the run: {before} invoices"
    );
    // The same advance again finishes the run.
    second.advance_to(year).await;
    let invoices = second.invoices("").await;
    assert_eq!(
        invoices.len(),
        SUBSCRIBERS * 13,
        "13 periods each, none twice"
    );
    let mut numbers: Vec<i64> = invoices.iter().map(|invoice| invoice.number).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=(SUBSCRIBERS * 13) as i64).collect::<Vec<i64>>()
    );
    let mut periods = std::collections::HashSet::new();
    for invoice in &invoices {
        assert_eq!(
            invoice.status,
            su::InvoiceStatus::Paid as i32,
            "{invoice:?}"
        );
        assert_eq!(invoice.amount_paid, usd(4_900));
        assert!(
            periods.insert((invoice.subscription_id.clone(), ms(&invoice.period_start))),
            "a period billed twice: {invoice:?}"
        );
    }
}
