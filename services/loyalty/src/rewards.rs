//! The rewards catalog and redemptions: a redemption is a ledger hold on the member's active
//! points (soonest-expiring lots first), posted when the order is paid, voided when it fails,
//! expired by the sweep when neither happens in time, and reversible once posted.

use commerce_api::commerce::loyalty::v1::{
    CreateRewardResponse, LoyaltyProgram, PointsEntry, PointsEntryKind, PointsRedeemed,
    PointsReversed, RedeemRewardResponse, Redemption, RedemptionStatus, RegistrationState, Reward,
};
use ledger::{NewEntry, Write};
use platform::interceptors::IdempotencyContext;
use platform::units::timestamp_of_ms;
use store::Commit;
use store::{Retry, retry_on_conflict};

use crate::engine::{Change, Loyalty, MemberState, seconds};
use crate::error::LoyaltyError;
use crate::limits;
use crate::lots;
use crate::members::Page;
use crate::records::{self, RedemptionRecord};
use crate::wallet;

/// Ledger hold id of a redemption.
fn hold_id(redemption_id: &str) -> String {
    format!("redemption:{redemption_id}")
}

/// Fields `UpdateReward` may change.
const REWARD_FIELDS: [&str; 10] = [
    "display_name",
    "description",
    "point_cost",
    "benefit",
    "max_discount",
    "min_tier_id",
    "active",
    "start_time",
    "end_time",
    "free_item_id",
];

/// How a redemption is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Post the hold: points spent.
    Commit,
    /// Void the hold: points back.
    Void,
    /// Reverse a posted redemption: points back.
    Reverse,
    /// The hold lapsed (the sweep).
    Expire,
}

fn status_name(status: i32) -> String {
    RedemptionStatus::try_from(status)
        .map(|status| {
            status
                .as_str_name()
                .trim_start_matches("REDEMPTION_STATUS_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| status.to_string())
}

/// Why `reward` cannot be redeemed by a member of `tier_id` at `now` (unix seconds).
fn unavailable(
    reward: &Reward,
    program: &LoyaltyProgram,
    tier_id: &str,
    now: i64,
) -> Option<String> {
    if !reward.active {
        return Some("it is withdrawn from the catalog".into());
    }
    if reward
        .start_time
        .as_ref()
        .is_some_and(|start| now < start.seconds)
    {
        return Some("its redemption window has not started".into());
    }
    if reward
        .end_time
        .as_ref()
        .is_some_and(|end| now >= end.seconds)
    {
        return Some("its redemption window has ended".into());
    }
    if !reward.min_tier_id.is_empty() {
        let rank = |id: &str| {
            let mut ranked: Vec<(i64, usize, &str)> = program
                .tiers
                .iter()
                .enumerate()
                .map(|(index, tier)| (tier.threshold, index, tier.tier_id.as_str()))
                .collect();
            ranked.sort_unstable();
            ranked.iter().position(|(_, _, tier)| *tier == id)
        };
        match (rank(tier_id), rank(&reward.min_tier_id)) {
            (Some(member), Some(needed)) if member >= needed => {}
            _ => return Some(format!("it needs tier {} or above", reward.min_tier_id)),
        }
    }
    None
}

impl Loyalty {
    /// Adds a reward; its id is derived from `id_key` (the idempotency key), so a retried
    /// create finds the reward it made.
    pub async fn create_reward(
        &self,
        tenant: &str,
        reward: &Reward,
        id_key: &str,
    ) -> Result<Reward, LoyaltyError> {
        self.create_reward_recording(tenant, reward, id_key, None)
            .await
    }

    /// [`Loyalty::create_reward`], with the `CreateRewardResponse` carrying the new reward
    /// recorded under `idempotency` in the commit that creates it. A call that finds the reward
    /// made records nothing here: the idempotency layer records its answer.
    pub async fn create_reward_recording(
        &self,
        tenant: &str,
        reward: &Reward,
        id_key: &str,
        idempotency: Option<&IdempotencyContext>,
    ) -> Result<Reward, LoyaltyError> {
        limits::reward(reward)?;
        let reward_id = format!("rwd-{}", &id_key[..id_key.len().min(32)]);
        let key = records::key(tenant, records::REWARD, &reward_id);
        if let Some(stored) = self.store.load(&key).await? {
            return Ok(stored.decode("reward")?);
        }
        let reward = Reward {
            reward_id: reward_id.clone(),
            version: 1,
            ..reward.clone()
        };
        let mut created =
            Commit::record(key.clone(), 0, &reward).indexed(vec![records::all_rewards()]);
        created.idempotency = idempotency.map(|context| {
            context.record(&CreateRewardResponse {
                reward: Some(reward.clone()),
            })
        });
        match self.store.commit(created).await {
            Ok(_) => Ok(reward),
            Err(store::StoreError::Conflict { .. }) => {
                // A concurrent create with this id won: answer with what it stored.
                let stored = self.store.load(&key).await?.ok_or_else(|| {
                    LoyaltyError::Corrupt(format!("reward {} conflicted but is not stored", key.id))
                })?;
                Ok(stored.decode("reward")?)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Changes the fields of a reward named in `mask` (`*` for all mutable ones).
    pub async fn update_reward(
        &self,
        tenant: &str,
        update: &Reward,
        mask: &[String],
    ) -> Result<Reward, LoyaltyError> {
        if mask.is_empty() {
            return Err(LoyaltyError::invalid("update_mask", "names no field"));
        }
        if let Some(unknown) = mask
            .iter()
            .find(|path| *path != "*" && !REWARD_FIELDS.contains(&path.as_str()))
        {
            return Err(LoyaltyError::invalid(
                "update_mask",
                format!("unknown or immutable field {unknown:?}"),
            ));
        }
        let key = records::key(tenant, records::REWARD, &update.reward_id);
        let key = &key;
        retry_on_conflict(Retry::CONTENDED, || async move {
            let stored = self
                .store
                .load(key)
                .await?
                .ok_or_else(|| LoyaltyError::NotFound {
                    resource: "reward",
                    id: update.reward_id.clone(),
                })?;
            let mut reward: Reward = stored.decode("reward")?;
            let all = mask.iter().any(|path| path == "*");
            let set = |field: &str| all || mask.iter().any(|path| path == field);
            if set("display_name") {
                reward.display_name.clone_from(&update.display_name);
            }
            if set("description") {
                reward.description.clone_from(&update.description);
            }
            if set("point_cost") {
                reward.point_cost = update.point_cost;
            }
            if set("benefit") || set("free_item_id") {
                reward.benefit.clone_from(&update.benefit);
            }
            if set("max_discount") {
                reward.max_discount.clone_from(&update.max_discount);
            }
            if set("min_tier_id") {
                reward.min_tier_id.clone_from(&update.min_tier_id);
            }
            if set("active") {
                reward.active = update.active;
            }
            if set("start_time") {
                reward.start_time = update.start_time;
            }
            if set("end_time") {
                reward.end_time = update.end_time;
            }
            limits::reward(&reward)?;
            reward.version = stored.version as i64 + 1;
            self.store
                .commit(
                    Commit::record(key.clone(), stored.version, &reward)
                        .indexed(vec![records::all_rewards()]),
                )
                .await?;
            Ok(reward)
        })
        .await
    }

    /// A reward by id.
    pub async fn reward(&self, tenant: &str, reward_id: &str) -> Result<Reward, LoyaltyError> {
        let stored = self
            .store
            .load(&records::key(tenant, records::REWARD, reward_id))
            .await?
            .ok_or_else(|| LoyaltyError::NotFound {
                resource: "reward",
                id: reward_id.to_owned(),
            })?;
        Ok(stored.decode("reward")?)
    }

    /// Rewards by id, paged; with `redeemable_by`, only those that member can redeem now.
    pub async fn rewards(
        &self,
        tenant: &str,
        redeemable_by: Option<&str>,
        page_size: usize,
        page_token: &str,
    ) -> Result<Page<Reward>, LoyaltyError> {
        let filter = match redeemable_by {
            Some(member_id) => {
                let balance = self.balance(tenant, member_id).await?;
                let (_, program) = self.program(tenant).await?;
                let member = self.member(tenant, member_id).await?;
                let now = seconds(self.now_ms(tenant).await?);
                Some((balance, program, member, now))
            }
            None => None,
        };
        let scope = format!("rewards:{}", redeemable_by.unwrap_or_default());
        let start = platform::page_token::decode(&scope, page_token)?;
        let mut pages = store::Pages::new(
            self.store.as_ref(),
            tenant,
            records::REWARD,
            records::all_rewards(),
            256,
        )
        .after(start);
        let mut rewards = Vec::new();
        while let Some(page) = pages.next().await? {
            for (id, stored) in page {
                let reward: Reward = stored.decode("reward")?;
                let keep = filter
                    .as_ref()
                    .is_none_or(|(balance, program, member, now)| {
                        member.registration_state == RegistrationState::Registered as i32
                            && reward.point_cost <= balance.available_points
                            && unavailable(&reward, program, &member.tier_id, *now).is_none()
                    });
                if keep {
                    rewards.push(reward);
                    if rewards.len() == page_size {
                        return Ok((rewards, platform::page_token::encode(&scope, &id)));
                    }
                }
            }
        }
        Ok((rewards, String::new()))
    }

    /// Holds a reward's points for a member. The redemption id is derived from `id_key` (the
    /// idempotency key), so a retried redeem finds the redemption it made.
    pub async fn redeem(
        &self,
        tenant: &str,
        member_id: &str,
        reward_id: &str,
        order_id: &str,
        id_key: &str,
    ) -> Result<Redemption, LoyaltyError> {
        self.redeem_recording(tenant, member_id, reward_id, order_id, id_key, None)
            .await
    }

    /// [`Loyalty::redeem`], with the `RedeemRewardResponse` carrying the new redemption
    /// recorded under `idempotency` in the commit that holds the points. A call that finds the
    /// redemption made, or fails, records nothing here: the idempotency layer records its answer.
    pub async fn redeem_recording(
        &self,
        tenant: &str,
        member_id: &str,
        reward_id: &str,
        order_id: &str,
        id_key: &str,
        idempotency: Option<&IdempotencyContext>,
    ) -> Result<Redemption, LoyaltyError> {
        let redemption_id = format!("rdm-{}", &id_key[..id_key.len().min(32)]);
        let key = records::key(tenant, records::REDEMPTION, &redemption_id);
        let (key, redemption_id) = (&key, &redemption_id);
        retry_on_conflict(Retry::CONTENDED, || async move {
            if let Some(stored) = self.store.load(key).await? {
                let record: RedemptionRecord = stored.decode("redemption")?;
                return Ok(record.redemption.unwrap_or_default());
            }
            let state = self.load_member(tenant, member_id).await?;
            if state.member().registration_state != RegistrationState::Registered as i32 {
                return Err(LoyaltyError::NotRegistered(member_id.to_owned()));
            }
            let reward = self.reward(tenant, reward_id).await?;
            let (_, program) = self.program(tenant).await?;
            let now_ms = self.now_ms(tenant).await?;
            let now = seconds(now_ms);
            if let Some(why) = unavailable(&reward, &program, &state.member().tier_id, now) {
                return Err(LoyaltyError::RewardUnavailable {
                    reward_id: reward_id.to_owned(),
                    why,
                });
            }
            let mut record = state.record.clone();
            let allocations =
                lots::consume_for_redemption(&wallet::domain_lots(&record), reward.point_cost, now)
                    .map_err(|_| LoyaltyError::InsufficientPoints {
                        available: (wallet::active_lot_points(&record, now) - record.deficit)
                            .max(0),
                        required: reward.point_cost,
                    })?;
            let taken = wallet::take(&mut record, &allocations);
            let hold_expires_ms =
                now_ms + i64::from(program.redemption_hold_hours.max(1)) * 3_600_000;
            let redemption = Redemption {
                redemption_id: redemption_id.clone(),
                member_id: member_id.to_owned(),
                reward_id: reward_id.to_owned(),
                points: reward.point_cost,
                status: RedemptionStatus::Held as i32,
                order_id: order_id.to_owned(),
                hold_expire_time: Some(timestamp_of_ms(hold_expires_ms)),
                create_time: Some(timestamp_of_ms(now_ms)),
                resolve_time: None,
            };
            let hold = hold_id(redemption_id);
            let mut held = Commit::record(
                key.clone(),
                0,
                &RedemptionRecord {
                    redemption: Some(redemption.clone()),
                    taken,
                },
            )
            .indexed(vec![records::held_redemptions()]);
            held.idempotency = idempotency.map(|context| {
                context.record(&RedeemRewardResponse {
                    redemption: Some(redemption.clone()),
                })
            });
            let change = Change {
                write: Some(Write::Hold {
                    entry: NewEntry::new(&hold, now_ms)
                        .transfer(
                            &records::active_account(member_id),
                            records::REDEEMED,
                            records::POINTS,
                            reward.point_cost,
                        )
                        .metadata("reward_id", reward_id),
                    expires_at: hold_expires_ms,
                }),
                entries: vec![PointsEntry {
                    entry_id: hold.clone(),
                    kind: PointsEntryKind::RedemptionHold as i32,
                    active_delta: -reward.point_cost,
                    order_id: order_id.to_owned(),
                    redemption_id: redemption_id.clone(),
                    ..PointsEntry::default()
                }],
                also: vec![held],
                ..Change::default()
            };
            self.commit_member(tenant, &state, record, change, now_ms)
                .await?;
            Ok(redemption)
        })
        .await
    }

    /// A redemption by id.
    pub async fn redemption(
        &self,
        tenant: &str,
        redemption_id: &str,
    ) -> Result<Redemption, LoyaltyError> {
        let (_, record) = self.load_redemption(tenant, redemption_id).await?;
        Ok(record.redemption.unwrap_or_default())
    }

    async fn load_redemption(
        &self,
        tenant: &str,
        redemption_id: &str,
    ) -> Result<(u64, RedemptionRecord), LoyaltyError> {
        let stored = self
            .store
            .load(&records::key(tenant, records::REDEMPTION, redemption_id))
            .await?
            .ok_or_else(|| LoyaltyError::NotFound {
                resource: "redemption",
                id: redemption_id.to_owned(),
            })?;
        Ok((stored.version, stored.decode("redemption")?))
    }

    /// Commits, voids, reverses or expires a redemption. Repeating the same resolution is a
    /// no-op; a different one on a resolved redemption fails with
    /// [`LoyaltyError::AlreadyResolved`]. Committing a hold past its expiry expires it instead
    /// and fails the same way.
    pub async fn resolve(
        &self,
        tenant: &str,
        redemption_id: &str,
        resolution: Resolution,
        reason: &str,
    ) -> Result<Redemption, LoyaltyError> {
        let lapsed = retry_on_conflict(Retry::CONTENDED, || async move {
            let (version, record) = self.load_redemption(tenant, redemption_id).await?;
            let redemption = record.redemption.clone().unwrap_or_default();
            let status = RedemptionStatus::try_from(redemption.status).unwrap_or_default();
            let target = match resolution {
                Resolution::Commit => RedemptionStatus::Posted,
                Resolution::Void => RedemptionStatus::Voided,
                Resolution::Reverse => RedemptionStatus::Reversed,
                Resolution::Expire => RedemptionStatus::Expired,
            };
            if status == target {
                return Ok((redemption, false));
            }
            let from = if resolution == Resolution::Reverse {
                RedemptionStatus::Posted
            } else {
                RedemptionStatus::Held
            };
            if status != from {
                return Err(LoyaltyError::AlreadyResolved {
                    redemption_id: redemption_id.to_owned(),
                    status: status_name(redemption.status),
                });
            }
            let now_ms = self.now_ms(tenant).await?;
            let expires_ms = redemption
                .hold_expire_time
                .as_ref()
                .map_or(i64::MAX, platform::units::ms_of_timestamp);
            let lapsed = status == RedemptionStatus::Held && now_ms >= expires_ms;
            let resolution = match resolution {
                // A hold past its expiry is expired, whatever was asked.
                Resolution::Commit | Resolution::Void if lapsed => Resolution::Expire,
                Resolution::Expire if !lapsed => return Ok((redemption, false)),
                other => other,
            };
            let state = self.load_member(tenant, &redemption.member_id).await?;
            let changed = self
                .apply_resolution(tenant, &state, version, record, resolution, reason, now_ms)
                .await?;
            Ok((
                changed,
                resolution == Resolution::Expire && lapsed && status == RedemptionStatus::Held,
            ))
        })
        .await?;
        let (redemption, expired_instead) = lapsed;
        if expired_instead && matches!(resolution, Resolution::Commit | Resolution::Void) {
            return Err(LoyaltyError::AlreadyResolved {
                redemption_id: redemption_id.to_owned(),
                status: status_name(redemption.status),
            });
        }
        Ok(redemption)
    }

    /// Writes one resolution: the ledger entry, the lots, the redemption and the events.
    #[allow(clippy::too_many_arguments)]
    async fn apply_resolution(
        &self,
        tenant: &str,
        state: &MemberState,
        version: u64,
        mut record: RedemptionRecord,
        resolution: Resolution,
        reason: &str,
        now_ms: i64,
    ) -> Result<Redemption, LoyaltyError> {
        let now = seconds(now_ms);
        let mut redemption = record.redemption.clone().unwrap_or_default();
        let hold = hold_id(&redemption.redemption_id);
        let mut member = state.record.clone();
        let mut change = Change::default();
        let (write, kind, delta, status) = match resolution {
            Resolution::Commit => (
                Write::PostHold {
                    hold_id: hold.clone(),
                    entry: NewEntry::new(format!("{hold}.posted"), now_ms),
                },
                PointsEntryKind::RedemptionPosted,
                0,
                RedemptionStatus::Posted,
            ),
            Resolution::Void => (
                Write::VoidHold {
                    hold_id: hold.clone(),
                    entry: NewEntry::new(format!("{hold}.voided"), now_ms),
                },
                PointsEntryKind::RedemptionReleased,
                redemption.points,
                RedemptionStatus::Voided,
            ),
            Resolution::Expire => (
                Write::ExpireHold {
                    hold_id: hold.clone(),
                    now: now_ms,
                },
                PointsEntryKind::RedemptionReleased,
                redemption.points,
                RedemptionStatus::Expired,
            ),
            Resolution::Reverse => (
                Write::Post(
                    NewEntry::new(format!("{hold}.reversed"), now_ms)
                        .transfer(
                            records::REDEEMED,
                            &records::active_account(state.id()),
                            records::POINTS,
                            redemption.points,
                        )
                        .metadata("reason", reason),
                ),
                PointsEntryKind::RedemptionReversed,
                redemption.points,
                RedemptionStatus::Reversed,
            ),
        };
        match resolution {
            Resolution::Commit => change.emit(&PointsRedeemed {
                member_id: state.id().to_owned(),
                redemption_id: redemption.redemption_id.clone(),
                reward_id: redemption.reward_id.clone(),
                points: redemption.points,
                order_id: redemption.order_id.clone(),
            }),
            Resolution::Reverse => change.emit(&PointsReversed {
                member_id: state.id().to_owned(),
                points: redemption.points,
                order_id: redemption.order_id.clone(),
                redemption_id: redemption.redemption_id.clone(),
                refund_id: String::new(),
            }),
            Resolution::Void | Resolution::Expire => {}
        }
        if resolution != Resolution::Commit {
            wallet::give_back(&mut member, &record.taken, now);
        }
        let entry_id = match &write {
            Write::ExpireHold { hold_id, .. } => format!("{hold_id}.expired"),
            Write::Post(entry) | Write::PostHold { entry, .. } | Write::VoidHold { entry, .. } => {
                entry.id.clone()
            }
            Write::Hold { entry, .. } => entry.id.clone(),
        };
        change.write = Some(write);
        change.entries.push(PointsEntry {
            entry_id,
            kind: kind as i32,
            active_delta: delta,
            order_id: redemption.order_id.clone(),
            redemption_id: redemption.redemption_id.clone(),
            reason: reason.to_owned(),
            ..PointsEntry::default()
        });
        redemption.status = status as i32;
        redemption.resolve_time = Some(timestamp_of_ms(now_ms));
        record.redemption = Some(redemption.clone());
        let key = records::key(tenant, records::REDEMPTION, &redemption.redemption_id);
        change.also.push(Commit::record(key, version, &record));
        self.commit_member(tenant, state, member, change, now_ms)
            .await?;
        Ok(redemption)
    }

    /// Expires every held redemption whose hold lapsed at `now_ms`; returns how many.
    pub(crate) async fn expire_redemptions(
        &self,
        tenant: &str,
        now_ms: i64,
    ) -> Result<i64, LoyaltyError> {
        let mut expired = 0;
        let mut pages = store::Pages::new(
            self.store.as_ref(),
            tenant,
            records::REDEMPTION,
            records::held_redemptions(),
            256,
        );
        while let Some(page) = pages.next().await? {
            for (id, stored) in page {
                let record: RedemptionRecord = stored.decode("redemption")?;
                let redemption = record.redemption.unwrap_or_default();
                let expires_ms = redemption
                    .hold_expire_time
                    .as_ref()
                    .map_or(i64::MAX, platform::units::ms_of_timestamp);
                if expires_ms > now_ms {
                    continue;
                }
                match self
                    .resolve(tenant, &id, Resolution::Expire, "hold expired")
                    .await
                {
                    Ok(redemption) if redemption.status == RedemptionStatus::Expired as i32 => {
                        expired += 1
                    }
                    Ok(_) | Err(LoyaltyError::AlreadyResolved { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(expired)
    }
}
