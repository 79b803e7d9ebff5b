//! The tenant's program: read (the default until first changed) and update by field mask.

use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::loyalty::v1::{EarningRule, ExpiryKind, ExpiryPolicy, LoyaltyProgram};
use store::Commit;
use store::{Retry, retry_on_conflict};

use crate::engine::Loyalty;
use crate::error::LoyaltyError;
use crate::records;

/// The program a tenant has before it sets one: 1 point per USD 1.00, active at once, never
/// expiring, no tiers, no negative balances, holds live 24 hours. Version 0 until changed.
pub fn default_program() -> LoyaltyProgram {
    LoyaltyProgram {
        earning: Some(EarningRule {
            points: 1,
            per_spend: Some(Money {
                currency_code: "USD".into(),
                amount_minor: 100,
            }),
        }),
        expiry: Some(ExpiryPolicy {
            kind: ExpiryKind::Never as i32,
            days: 0,
            notice_days: 0,
        }),
        redemption_hold_hours: 24,
        ..LoyaltyProgram::default()
    }
}

/// Top-level fields `UpdateProgram` accepts in its mask.
const FIELDS: [&str; 11] = [
    "earning",
    "multipliers",
    "campaigns",
    "pending_days",
    "expiry",
    "tiers",
    "tier_basis",
    "tier_window_days",
    "tier_downgrade_grace_days",
    "max_negative_points",
    "redemption_hold_hours",
];

impl Loyalty {
    /// The tenant's program and its store version (0: the default).
    pub async fn program(&self, tenant: &str) -> Result<(u64, LoyaltyProgram), LoyaltyError> {
        let key = records::key(tenant, records::PROGRAM, records::PROGRAM_ID);
        match self.store.load(&key).await? {
            Some(stored) => Ok((stored.version, stored.decode("program")?)),
            None => Ok((0, default_program())),
        }
    }

    /// Changes the fields named in `mask` (`*` for all); fails on a stale `expected_version`.
    pub async fn update_program(
        &self,
        tenant: &str,
        update: &LoyaltyProgram,
        mask: &[String],
        expected_version: i64,
    ) -> Result<LoyaltyProgram, LoyaltyError> {
        if mask.is_empty() {
            return Err(LoyaltyError::invalid("update_mask", "names no field"));
        }
        if let Some(unknown) = mask
            .iter()
            .find(|path| *path != "*" && !FIELDS.contains(&path.as_str()))
        {
            return Err(LoyaltyError::invalid(
                "update_mask",
                format!("unknown or immutable field {unknown:?}"),
            ));
        }
        retry_on_conflict(Retry::CONTENDED, || async move {
            let (version, mut program) = self.program(tenant).await?;
            if expected_version != 0 && expected_version != version as i64 {
                return Err(LoyaltyError::VersionMismatch {
                    resource: "program",
                    expected: expected_version,
                    actual: version as i64,
                });
            }
            let all = mask.iter().any(|path| path == "*");
            let set = |field: &str| all || mask.iter().any(|path| path == field);
            if set("earning") {
                program.earning.clone_from(&update.earning);
            }
            if set("multipliers") {
                program.multipliers.clone_from(&update.multipliers);
            }
            if set("campaigns") {
                program.campaigns.clone_from(&update.campaigns);
            }
            if set("pending_days") {
                program.pending_days = update.pending_days;
            }
            if set("expiry") {
                program.expiry.clone_from(&update.expiry);
            }
            if set("tiers") {
                program.tiers.clone_from(&update.tiers);
            }
            if set("tier_basis") {
                program.tier_basis = update.tier_basis;
            }
            if set("tier_window_days") {
                program.tier_window_days = update.tier_window_days;
            }
            if set("tier_downgrade_grace_days") {
                program.tier_downgrade_grace_days = update.tier_downgrade_grace_days;
            }
            if set("max_negative_points") {
                program.max_negative_points = update.max_negative_points;
            }
            if set("redemption_hold_hours") {
                program.redemption_hold_hours = update.redemption_hold_hours;
            }
            check(&program)?;
            program.version = version as i64 + 1;
            let key = records::key(tenant, records::PROGRAM, records::PROGRAM_ID);
            self.store
                .commit(Commit::record(key, version, &program))
                .await?;
            Ok(program.clone())
        })
        .await
    }
}

/// Rules of a program the contract's field constraints cannot state.
fn check(program: &LoyaltyProgram) -> Result<(), LoyaltyError> {
    let per_spend = program
        .earning
        .as_ref()
        .and_then(|earning| earning.per_spend.as_ref())
        .ok_or_else(|| LoyaltyError::invalid("program.earning", "needs a per_spend unit"))?;
    if per_spend.amount_minor <= 0 {
        return Err(LoyaltyError::invalid(
            "program.earning.per_spend.amount_minor",
            "must be positive",
        ));
    }
    crate::limits::program(program)?;
    if program.expiry.is_none() {
        return Err(LoyaltyError::invalid("program.expiry", "is required"));
    }
    if program.redemption_hold_hours <= 0 {
        return Err(LoyaltyError::invalid(
            "program.redemption_hold_hours",
            "must be at least 1",
        ));
    }
    for (index, campaign) in program.campaigns.iter().enumerate() {
        let (Some(start), Some(end)) = (&campaign.start_time, &campaign.end_time) else {
            continue;
        };
        if (end.seconds, end.nanos) <= (start.seconds, start.nanos) {
            return Err(LoyaltyError::invalid(
                &format!("program.campaigns[{index}].end_time"),
                "must be after start_time",
            ));
        }
    }
    let mut ids: Vec<&str> = program
        .tiers
        .iter()
        .map(|tier| tier.tier_id.as_str())
        .collect();
    ids.sort_unstable();
    if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(LoyaltyError::invalid(
            "program.tiers",
            format!("tier id {:?} appears twice", pair[0]),
        ));
    }
    Ok(())
}
