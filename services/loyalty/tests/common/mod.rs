//! A loyalty engine on an in-memory store with a frozen tenant clock, and short-hands for the
//! operations tests repeat.
#![allow(dead_code)]

use std::sync::Arc;

use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::loyalty::v1::{
    Balance, ExpiryKind, ExpiryPolicy, LoyaltyProgram, Redemption, Reward, reward::Benefit,
};
use loyalty::members::Enrolment;
use loyalty::points::{PaidOrder, Refund, RefundAmount};
use loyalty::{Loyalty, LoyaltyJobs};
use platform::clock::Clocks;
use store::{EmbeddedStore, Store};

pub const TENANT: &str = "t-loyalty";
pub const DAY_MS: i64 = 86_400_000;

pub struct World {
    pub store: Arc<dyn Store>,
    pub engine: Arc<Loyalty>,
    pub clocks: Clocks,
}

/// Tomorrow, midnight UTC: after the wall clock, so the frozen clock can start there.
fn start_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now / DAY_MS + 1) * DAY_MS
}

impl World {
    pub async fn new() -> World {
        Self::with_store(Arc::new(EmbeddedStore::in_memory().unwrap())).await
    }

    pub async fn with_store(store: Arc<dyn Store>) -> World {
        Self::with(
            store,
            fastpath::Cache::new(None, fastpath::Degraded::default()),
        )
        .await
    }

    /// An engine whose tenant clock runs on wall time (never frozen), as in `commerce serve`:
    /// every call reads a different now.
    pub async fn on_wall_clock() -> World {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
        let clocks = Clocks::new(store.clone());
        let engine = Arc::new(Loyalty::new(
            store.clone(),
            clocks.clone(),
            fastpath::Cache::new(None, fastpath::Degraded::default()),
        ));
        World {
            store,
            engine,
            clocks,
        }
    }

    pub async fn with(store: Arc<dyn Store>, cache: fastpath::Cache) -> World {
        let clocks = Clocks::new(store.clone());
        let engine = Arc::new(Loyalty::new(store.clone(), clocks.clone(), cache));
        let clocks = clocks.with_jobs(Arc::new(LoyaltyJobs(engine.clone())));
        clocks.advance(TENANT, start_ms()).await.unwrap();
        World {
            store,
            engine,
            clocks,
        }
    }

    pub async fn now_ms(&self) -> i64 {
        self.clocks.now(TENANT).await.unwrap().now_ms
    }

    /// Moves the tenant clock forward (running the due jobs on the way).
    pub async fn advance_days(&self, days: i64) {
        let now = self.now_ms().await;
        self.advance_ms(now + days * DAY_MS).await;
    }

    pub async fn advance_ms(&self, to: i64) {
        self.clocks.advance(TENANT, to).await.unwrap();
    }

    pub async fn program(&self, change: impl FnOnce(&mut LoyaltyProgram)) {
        let (_, mut program) = self.engine.program(TENANT).await.unwrap();
        change(&mut program);
        self.engine
            .update_program(TENANT, &program, &["*".to_owned()], 0)
            .await
            .unwrap();
    }

    pub async fn member(&self, customer: &str, registered: bool) -> String {
        let enrolment = Enrolment {
            customer_id: customer.into(),
            registered,
            ..Enrolment::default()
        };
        self.engine
            .enroll(TENANT, &enrolment)
            .await
            .unwrap()
            .0
            .member_id
    }

    pub async fn accrue(&self, member: &str, order: &str, cents: i64) -> i64 {
        let order = PaidOrder {
            member_id: member.into(),
            order_id: order.into(),
            currency_code: "USD".into(),
            lines: Vec::new(),
            eligible_minor: cents,
            paid_at: None,
        };
        let (entry, _) = self.engine.accrue(TENANT, &order, None).await.unwrap();
        entry.active_delta + entry.pending_delta
    }

    pub async fn refund(&self, member: &str, order: &str, refund: &str, cents: i64) {
        let refund = Refund {
            member_id: member.into(),
            order_id: order.into(),
            refund_id: refund.into(),
            currency_code: "USD".into(),
            amount: RefundAmount::ThisRefund(cents),
        };
        self.engine
            .reverse_accrual(TENANT, &refund, None)
            .await
            .unwrap();
    }

    pub async fn reward(&self, cost: i64) -> String {
        let reward = Reward {
            display_name: format!("{cost} points"),
            point_cost: cost,
            benefit: Some(Benefit::FreeItemId("coffee".into())),
            active: true,
            ..Reward::default()
        };
        self.engine
            .create_reward(TENANT, &reward, &format!("reward-{cost}"))
            .await
            .unwrap()
            .reward_id
    }

    /// `n` redemptions of `reward` by `member` at once, each with its own key.
    pub async fn redeem_at_once(
        &self,
        member: &str,
        reward: &str,
        n: usize,
    ) -> Vec<Result<Redemption, loyalty::LoyaltyError>> {
        let attempts = (0..n).map(|n| {
            let engine = self.engine.clone();
            let (member, reward) = (member.to_owned(), reward.to_owned());
            tokio::spawn(async move {
                engine
                    .redeem(TENANT, &member, &reward, "", &format!("at-once-{n}"))
                    .await
            })
        });
        futures_util::future::join_all(attempts)
            .await
            .into_iter()
            .map(|joined| joined.expect("redeem task"))
            .collect()
    }

    pub async fn balance(&self, member: &str) -> Balance {
        self.engine.balance(TENANT, member).await.unwrap()
    }

    pub async fn assert_reconciled(&self) {
        let report = self.engine.reconcile(TENANT).await.unwrap();
        assert!(report.clean, "{:#?}", report.discrepancies);
    }
}

/// 1 point per USD 1.00, `pending_days` lock, expiry after `expiry_days` (0: never).
pub fn simple_program(program: &mut LoyaltyProgram, pending_days: i32, expiry_days: i32) {
    program.earning.as_mut().unwrap().per_spend = Some(Money {
        currency_code: "USD".into(),
        amount_minor: 100,
    });
    program.pending_days = pending_days;
    program.expiry = Some(ExpiryPolicy {
        kind: if expiry_days > 0 {
            ExpiryKind::AfterDays
        } else {
            ExpiryKind::Never
        } as i32,
        days: expiry_days,
        notice_days: 0,
    });
}
