//! A subscriptions engine on the embedded in-memory store, a simulated PSP and a frozen tenant
//! clock whose advances run the billing run.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::subscriptions::v1::{BillingInterval, Invoice, PlanVersion};
use payments::PspSimulator;
use platform::clock::Clocks;
use store::{EmbeddedStore, Store};
use subscriptions::{RetryPolicy, SubscriptionJobs, Subscriptions};

pub const TENANT: &str = "tenant-a";
/// 2027-01-15T00:00:00Z (the clock only moves forward, so after wall time).
pub const START: i64 = 1_799_971_200_000;
pub const DAY: i64 = subscriptions::MILLIS_PER_DAY;

pub struct Harness {
    pub store: Arc<dyn Store>,
    pub engine: Arc<Subscriptions>,
    pub clocks: Clocks,
    pub psp: PspSimulator,
}

impl Harness {
    pub async fn new() -> Harness {
        Self::with(None, RetryPolicy::default()).await
    }

    pub async fn with(store: Option<Arc<dyn Store>>, policy: RetryPolicy) -> Harness {
        let store: Arc<dyn Store> =
            store.unwrap_or_else(|| Arc::new(EmbeddedStore::in_memory().expect("store")));
        let psp = PspSimulator::new();
        let engine = Arc::new(
            Subscriptions::new(
                store.clone(),
                Clocks::new(store.clone()),
                Arc::new(psp.clone()),
            )
            .with_retry_policy(policy),
        );
        let clocks =
            Clocks::new(store.clone()).with_jobs(Arc::new(SubscriptionJobs(engine.clone())));
        let harness = Harness {
            store,
            engine,
            clocks,
            psp,
        };
        harness.advance_to(START).await.expect("clock to start");
        harness
    }

    pub async fn advance_to(
        &self,
        at: i64,
    ) -> Result<platform::clock::DueJobsReport, platform::clock::ClockError> {
        Ok(self.clocks.advance(TENANT, at).await?.1)
    }

    pub async fn now(&self) -> i64 {
        self.engine.now_ms(TENANT).await.expect("now")
    }

    pub async fn plan(&self, price_minor: i64, trial_days: i32) -> String {
        self.engine
            .create_plan(
                TENANT,
                &key(),
                "Coffee Club",
                "",
                PlanVersion {
                    price: Some(Money {
                        currency_code: "USD".into(),
                        amount_minor: price_minor,
                    }),
                    interval: BillingInterval::Month as i32,
                    interval_count: 1,
                    trial_days,
                    ..PlanVersion::default()
                },
            )
            .await
            .expect("plan")
            .plan_id
    }

    /// The subscription's invoices, oldest first (the list is newest first).
    pub async fn invoices(&self, subscription_id: &str) -> Vec<Invoice> {
        let mut invoices = self
            .engine
            .list_invoices(TENANT, subscription_id, &[], 500, "")
            .await
            .expect("invoices")
            .0;
        invoices.reverse();
        invoices
    }
}

/// A fresh idempotency id for a create.
pub fn key() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("key-{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

/// Start of the `n`th monthly period anchored at `anchor`.
pub fn month(anchor: i64, n: i64) -> i64 {
    let mut at = anchor;
    for _ in 0..n {
        at = subscriptions::period_end(anchor, at, BillingInterval::Month, 1).unwrap();
    }
    at
}

pub fn ms(time: &Option<prost_types::Timestamp>) -> i64 {
    let time = time.as_ref().expect("timestamp");
    time.seconds * 1000 + i64::from(time.nanos) / 1_000_000
}

pub fn minor(money: &Option<Money>) -> i64 {
    money.as_ref().map_or(0, |m| m.amount_minor)
}
