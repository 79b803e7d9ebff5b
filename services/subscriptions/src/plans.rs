//! Plans and their versions. A price change is a new version: new subscribers get the current
//! (last) version, existing subscribers keep the version they subscribed to. Archiving closes a
//! plan to new subscriptions and plan changes; existing subscriptions continue.

use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::subscriptions::v1::{
    BillingInterval, CreatePlanResponse, CreatePlanVersionResponse, Plan, PlanStatus, PlanVersion,
};
use platform::interceptors::IdempotencyContext;
use platform::units::timestamp_of_ms;
use store::Commit;
use store::Pages;
use store::{Retry, retry_on_conflict};

use crate::engine::Subscriptions;
use crate::error::SubscriptionsError;
use crate::periods::INTERVAL_COUNT_RANGE;
use crate::records::{self, CreateClaim};

/// Default and largest page sizes of lists (AIP-158).
pub(crate) const DEFAULT_PAGE: usize = 50;
pub(crate) const MAX_PAGE: usize = 500;

/// The page size a request's `page_size` asks for.
pub(crate) fn page_size(page_size: i32) -> Result<usize, SubscriptionsError> {
    match page_size {
        size if size < 0 => Err(SubscriptionsError::invalid(
            "page_size",
            "must not be negative",
        )),
        0 => Ok(DEFAULT_PAGE),
        size => Ok((size as usize).min(MAX_PAGE)),
    }
}

fn check_price(price: &Option<Money>) -> Result<&Money, SubscriptionsError> {
    let price = price
        .as_ref()
        .ok_or_else(|| SubscriptionsError::invalid("price", "is required"))?;
    if price.currency_code.len() != 3
        || !price.currency_code.bytes().all(|b| b.is_ascii_uppercase())
    {
        return Err(SubscriptionsError::invalid(
            "price.currency_code",
            "must be an upper-case ISO-4217 code",
        ));
    }
    crate::limits::price(price.amount_minor)?;
    Ok(price)
}

fn check_trial_days(trial_days: i32) -> Result<(), SubscriptionsError> {
    if !(0..=730).contains(&trial_days) {
        return Err(SubscriptionsError::invalid("trial_days", "must be 0..=730"));
    }
    Ok(())
}

/// The plan's current (last) version.
pub(crate) fn current_version(plan: &Plan) -> Result<&PlanVersion, SubscriptionsError> {
    plan.versions
        .last()
        .ok_or_else(|| SubscriptionsError::Corrupt(format!("plan {} has no version", plan.plan_id)))
}

/// Version `version` of the plan.
pub(crate) fn version_of(plan: &Plan, version: i32) -> Result<&PlanVersion, SubscriptionsError> {
    plan.versions
        .iter()
        .find(|candidate| candidate.version == version)
        .ok_or_else(|| {
            SubscriptionsError::Corrupt(format!("plan {} has no version {version}", plan.plan_id))
        })
}

impl Subscriptions {
    /// Creates a plan whose version 1 has `terms` (its `version` and `create_time` are ignored).
    /// `id_key` (the request's idempotency id) makes it idempotent: creating again with the same
    /// key returns the plan the first call made.
    pub async fn create_plan(
        &self,
        tenant: &str,
        id_key: &str,
        display_name: &str,
        description: &str,
        terms: PlanVersion,
    ) -> Result<Plan, SubscriptionsError> {
        self.create_plan_recording(tenant, id_key, display_name, description, terms, None)
            .await
    }

    /// [`Subscriptions::create_plan`], with the `CreatePlanResponse` carrying the new plan
    /// recorded under `idempotency` in the commit that creates it. A call that finds the plan
    /// made, or fails, records nothing here: the idempotency layer records its answer.
    pub async fn create_plan_recording(
        &self,
        tenant: &str,
        id_key: &str,
        display_name: &str,
        description: &str,
        terms: PlanVersion,
        idempotency: Option<&IdempotencyContext>,
    ) -> Result<Plan, SubscriptionsError> {
        if display_name.is_empty() || display_name.chars().count() > 120 {
            return Err(SubscriptionsError::invalid(
                "display_name",
                "must be 1..=120 characters",
            ));
        }
        if description.chars().count() > 1000 {
            return Err(SubscriptionsError::invalid(
                "description",
                "must be at most 1000 characters",
            ));
        }
        check_price(&terms.price)?;
        if matches!(terms.interval(), BillingInterval::Unspecified) {
            return Err(SubscriptionsError::invalid("interval", "is required"));
        }
        if !INTERVAL_COUNT_RANGE.contains(&terms.interval_count) {
            return Err(SubscriptionsError::invalid(
                "interval_count",
                "must be 1..=365",
            ));
        }
        check_trial_days(terms.trial_days)?;
        let claim_key = records::key(
            tenant,
            records::CREATE_CLAIM,
            &records::create_claim_id("create_plan", id_key),
        );
        if let Some(claim) = self.load_claim(&claim_key).await? {
            return self.plan(tenant, &claim.resource_id).await;
        }
        let now = self.now_ms(tenant).await?;
        let plan = Plan {
            plan_id: uuid::Uuid::now_v7().to_string(),
            display_name: display_name.to_owned(),
            description: description.to_owned(),
            status: PlanStatus::Active as i32,
            versions: vec![PlanVersion {
                version: 1,
                create_time: Some(timestamp_of_ms(now)),
                ..terms
            }],
            create_time: Some(timestamp_of_ms(now)),
        };
        let claim = CreateClaim {
            resource_id: plan.plan_id.clone(),
            detail: String::new(),
        };
        let mut created =
            Commit::record(records::key(tenant, records::PLAN, &plan.plan_id), 0, &plan)
                .indexed(vec![records::all(), records::plan_status(true)]);
        created.idempotency = idempotency.map(|context| {
            context.record(&CreatePlanResponse {
                plan: Some(plan.clone()),
            })
        });
        let commits = vec![created, Commit::record(claim_key.clone(), 0, &claim)];
        match self.store.commit_all(commits).await {
            Ok(_) => Ok(plan),
            // A concurrent call with the same key won: return what it made.
            Err(store::StoreError::Conflict { .. }) => match self.load_claim(&claim_key).await? {
                Some(claim) => self.plan(tenant, &claim.resource_id).await,
                None => Err(SubscriptionsError::Contended("plan creation raced".into())),
            },
            Err(error) => Err(error.into()),
        }
    }

    /// The claim at `key`, if the key created something.
    pub(crate) async fn load_claim(
        &self,
        key: &store::AggregateKey,
    ) -> Result<Option<CreateClaim>, SubscriptionsError> {
        match self.store.load(key).await? {
            Some(stored) => Ok(Some(stored.decode("create claim")?)),
            None => Ok(None),
        }
    }

    /// Adds a version with a new price (and trial) to the plan; it applies to new subscribers.
    /// The billing interval stays the plan's. `id_key` (the request's idempotency id) makes it
    /// idempotent: adding again with the same key returns the plan without another version.
    pub async fn add_plan_version(
        &self,
        tenant: &str,
        id_key: &str,
        plan_id: &str,
        price: Money,
        trial_days: i32,
    ) -> Result<Plan, SubscriptionsError> {
        self.add_plan_version_recording(tenant, id_key, plan_id, price, trial_days, None)
            .await
    }

    /// [`Subscriptions::add_plan_version`], with the `CreatePlanVersionResponse` carrying the
    /// plan recorded under `idempotency` in the commit that adds the version. A call that finds
    /// the version added, or fails, records nothing here: the idempotency layer records its
    /// answer.
    pub async fn add_plan_version_recording(
        &self,
        tenant: &str,
        id_key: &str,
        plan_id: &str,
        price: Money,
        trial_days: i32,
        idempotency: Option<&IdempotencyContext>,
    ) -> Result<Plan, SubscriptionsError> {
        let price = Some(price);
        check_price(&price)?;
        check_trial_days(trial_days)?;
        let claim_key = records::key(
            tenant,
            records::CREATE_CLAIM,
            &records::create_claim_id("add_plan_version", id_key),
        );
        let (claim_key, price) = (&claim_key, &price);
        retry_on_conflict(Retry::CONTENDED, || async move {
            if let Some(claim) = self.load_claim(claim_key).await? {
                return self.plan(tenant, &claim.resource_id).await;
            }
            let (version, mut plan) = self.load_plan(tenant, plan_id).await?;
            if plan.status() == PlanStatus::Archived {
                return Err(SubscriptionsError::PlanArchived(plan_id.to_owned()));
            }
            let current = current_version(&plan)?.clone();
            if current.price.as_ref().map(|p| &p.currency_code)
                != price.as_ref().map(|p| &p.currency_code)
            {
                return Err(SubscriptionsError::invalid(
                    "price.currency_code",
                    "must stay the plan's currency",
                ));
            }
            let now = self.now_ms(tenant).await?;
            plan.versions.push(PlanVersion {
                version: current.version + 1,
                price: price.clone(),
                trial_days,
                create_time: Some(timestamp_of_ms(now)),
                ..current
            });
            let claim = CreateClaim {
                resource_id: plan_id.to_owned(),
                detail: (current.version + 1).to_string(),
            };
            let mut changed =
                Commit::record(records::key(tenant, records::PLAN, plan_id), version, &plan)
                    .indexed(vec![records::all(), records::plan_status(true)]);
            changed.idempotency = idempotency.map(|context| {
                context.record(&CreatePlanVersionResponse {
                    plan: Some(plan.clone()),
                })
            });
            self.store
                .commit_all(vec![changed, Commit::record(claim_key.clone(), 0, &claim)])
                .await?;
            Ok(plan)
        })
        .await
    }

    /// Archives the plan (idempotent): no new subscriptions; existing ones continue.
    pub async fn archive_plan(
        &self,
        tenant: &str,
        plan_id: &str,
    ) -> Result<Plan, SubscriptionsError> {
        retry_on_conflict(Retry::CONTENDED, || async move {
            let (version, mut plan) = self.load_plan(tenant, plan_id).await?;
            if plan.status() == PlanStatus::Archived {
                return Ok(plan);
            }
            plan.status = PlanStatus::Archived as i32;
            self.store
                .commit(
                    Commit::record(records::key(tenant, records::PLAN, plan_id), version, &plan)
                        .indexed(vec![records::all(), records::plan_status(false)]),
                )
                .await?;
            Ok(plan)
        })
        .await
    }

    /// A plan by id.
    pub async fn plan(&self, tenant: &str, plan_id: &str) -> Result<Plan, SubscriptionsError> {
        Ok(self.load_plan(tenant, plan_id).await?.1)
    }

    /// Plans in id (creation) order, a page at a time; archived ones only when asked.
    pub async fn list_plans(
        &self,
        tenant: &str,
        page_size: i32,
        page_token: &str,
        include_archived: bool,
    ) -> Result<(Vec<Plan>, String), SubscriptionsError> {
        let size = self::page_size(page_size)?;
        let scope = format!("plans:{include_archived}");
        let after = platform::page_token::decode(&scope, page_token)?;
        let index = if include_archived {
            records::all()
        } else {
            records::plan_status(true)
        };
        let mut pages =
            Pages::new(self.store.as_ref(), tenant, records::PLAN, index, size + 1).after(after);
        let page = pages.next().await?.unwrap_or_default();
        let mut plans = page
            .iter()
            .map(|(_, stored)| stored.decode::<Plan>("plan"))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if plans.len() > size {
            plans.truncate(size);
            platform::page_token::encode(&scope, &plans[size - 1].plan_id)
        } else {
            String::new()
        };
        Ok((plans, next))
    }

    pub(crate) async fn load_plan(
        &self,
        tenant: &str,
        plan_id: &str,
    ) -> Result<(u64, Plan), SubscriptionsError> {
        let stored = self
            .store
            .load(&records::key(tenant, records::PLAN, plan_id))
            .await?
            .ok_or_else(|| SubscriptionsError::not_found("plan", plan_id))?;
        Ok((stored.version, stored.decode("plan")?))
    }
}
