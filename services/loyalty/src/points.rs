//! Earning and correcting points: accrual per order (deduplicated by order), refund reversal
//! (deduplicated by refund, proportional, cumulative), and staff adjustments.

use commerce_api::commerce::loyalty::v1::{
    AdjustPointsResponse, PointsAccrued, PointsAdjusted, PointsEntry, PointsEntryKind,
    PointsReversed,
};
use ledger::{NewEntry, Write};
use platform::interceptors::IdempotencyContext;
use platform::units::timestamp_of_seconds;
use sha2::{Digest as _, Sha256};
use store::Commit;
use store::IdempotencyRecord;
use store::{Retry, retry_on_conflict};

use crate::earning::{self, EligibleLine};
use crate::engine::{Change, Loyalty, Recorder, hashed, seconds};
use crate::error::LoyaltyError;
use crate::expiry;
use crate::limits;
use crate::lots;
use crate::records::{self, AccrualRecord, LotRecord, QualifyingRecord, RefundRecord};
use crate::wallet;

/// One paid order line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaidLine {
    /// SKU.
    pub sku: String,
    /// Category.
    pub category: String,
    /// Eligible amount, minor units.
    pub amount_minor: i64,
}

/// A paid order, from `AccruePoints` or checkout's `OrderPaid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaidOrder {
    /// The member.
    pub member_id: String,
    /// The order (dedup key).
    pub order_id: String,
    /// Currency of the amounts.
    pub currency_code: String,
    /// Lines; empty means one line of the whole eligible amount.
    pub lines: Vec<PaidLine>,
    /// Eligible amount, minor units.
    pub eligible_minor: i64,
    /// When it was paid (unix seconds), if known: campaigns, the lock period and tier windows
    /// count from then, so an event that waited on the bus earns what it earned when paid.
    /// Later than the tenant clock's now counts as now.
    pub paid_at: Option<i64>,
}

impl PaidOrder {
    fn digest(&self) -> Vec<u8> {
        let mut hash = Sha256::new();
        for line in &self.lines {
            hash.update(format!(
                "{}\u{1f}{}\u{1f}{}\u{1e}",
                line.sku, line.category, line.amount_minor
            ));
        }
        hash.finalize().to_vec()
    }
}

/// A refund to reverse points for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refund {
    /// The member.
    pub member_id: String,
    /// The refunded order.
    pub order_id: String,
    /// The refund (dedup key).
    pub refund_id: String,
    /// Currency of the amount.
    pub currency_code: String,
    /// How much eligible amount this refund covers.
    pub amount: RefundAmount,
}

/// How a refund's eligible amount is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundAmount {
    /// This refund's eligible amount (`ReverseAccrual`).
    ThisRefund(i64),
    /// The order's eligible amount refunded so far, this refund included (checkout's
    /// `OrderRefunded` carries totals, so a lost or repeated event cannot skew the sum).
    Cumulative(i64),
}

impl Default for RefundAmount {
    fn default() -> Self {
        RefundAmount::ThisRefund(0)
    }
}

impl Loyalty {
    /// Accrues an order's points: pending for the program's lock period, then active. The same
    /// order accrues once; a repeat with different content fails with
    /// [`LoyaltyError::AccrualConflict`]. Returns the accrual's points entry and whether this
    /// call made it.
    pub async fn accrue(
        &self,
        tenant: &str,
        order: &PaidOrder,
        processed: Option<IdempotencyRecord>,
    ) -> Result<(PointsEntry, bool), LoyaltyError> {
        limits::paid_order(order)?;
        let accrual_key = records::key(tenant, records::ACCRUAL, &order.order_id);
        let (accrual_key, processed) = (&accrual_key, &processed);
        let (entry, accrued_now) = retry_on_conflict(Retry::CONTENDED, || async move {
            if let Some(stored) = self.store.load(accrual_key).await? {
                let accrual: AccrualRecord = stored.decode("accrual")?;
                let same = accrual.member_id == order.member_id
                    && accrual.eligible_minor == order.eligible_minor
                    && accrual.currency_code == order.currency_code
                    && accrual.lines_digest == order.digest();
                return if same {
                    Ok((accrual.entry.unwrap_or_default(), false))
                } else {
                    Err(LoyaltyError::AccrualConflict {
                        order_id: order.order_id.clone(),
                    })
                };
            }
            let state = self.load_member(tenant, &order.member_id).await?;
            let (_, program) = self.program(tenant).await?;
            let now_ms = self.now_ms(tenant).await?;
            let now = seconds(now_ms);
            let whole = [PaidLine {
                amount_minor: order.eligible_minor,
                ..PaidLine::default()
            }];
            let lines = if order.lines.is_empty() {
                &whole[..]
            } else {
                &order.lines[..]
            };
            let eligible: Vec<EligibleLine<'_>> = lines
                .iter()
                .map(|line| EligibleLine {
                    sku: &line.sku,
                    category: &line.category,
                    amount_minor: line.amount_minor,
                })
                .collect();
            let tier = Some(state.member().tier_id.as_str()).filter(|tier| !tier.is_empty());
            let paid_at = order.paid_at.map_or(now, |paid_at| paid_at.min(now));
            let earned =
                earning::earn_points(&program, &order.currency_code, &eligible, paid_at, tier)
                    .map_err(|error| LoyaltyError::invalid("lines", error.to_string()))?;
            let points = limits::earned(earned.total)?;
            let entry_id = format!("accrual:{}", order.order_id);
            let activates_at = expiry::activates_at(program.pending_days, paid_at);
            let at_once = activates_at <= now;
            let mut record = state.record.clone();
            let mut change = Change::default();
            let entry = PointsEntry {
                // An order that earns nothing has no ledger entry.
                entry_id: if points > 0 {
                    entry_id.clone()
                } else {
                    String::new()
                },
                member_id: order.member_id.clone(),
                kind: PointsEntryKind::Accrual as i32,
                pending_delta: if at_once { 0 } else { points },
                active_delta: if at_once { points } else { 0 },
                order_id: order.order_id.clone(),
                ..PointsEntry::default()
            };
            if points > 0 {
                let to = if at_once {
                    records::active_account(state.id())
                } else {
                    records::pending_account(state.id())
                };
                change.write = Some(Write::Post(
                    NewEntry::new(entry_id.as_str(), now_ms)
                        .transfer(records::ISSUED, &to, records::POINTS, points)
                        .metadata("order_id", &order.order_id),
                ));
                let expires_at = if at_once {
                    program
                        .expiry
                        .as_ref()
                        .and_then(|policy| expiry::expires_at(policy, activates_at))
                } else {
                    None
                };
                wallet::add_lot(
                    &mut record,
                    LotRecord {
                        lot_id: entry_id.clone(),
                        points_remaining: points,
                        activates_at,
                        expires_at,
                        activated: at_once,
                        noticed: false,
                    },
                    now,
                );
                record.lifetime_points =
                    limits::add("lifetime_points", record.lifetime_points, points)?;
                change.entries.push(entry.clone());
                change.emit(&PointsAccrued {
                    member_id: state.id().to_owned(),
                    order_id: order.order_id.clone(),
                    points,
                    activate_time: Some(timestamp_of_seconds(activates_at)),
                    entry_id: entry_id.clone(),
                });
            }
            let qualifying = QualifyingRecord {
                at: paid_at,
                points,
                spend_minor: earned.eligible_spend_minor,
            };
            if let Some(tier_changed) =
                wallet::qualify(&mut record, &program, Some(qualifying), now)
            {
                change.emit(&tier_changed);
            }
            let accrual = AccrualRecord {
                member_id: order.member_id.clone(),
                points,
                eligible_minor: order.eligible_minor,
                currency_code: order.currency_code.clone(),
                entry_id,
                entry: Some(entry.clone()),
                lines_digest: order.digest(),
                ..AccrualRecord::default()
            };
            change
                .also
                .push(Commit::record(accrual_key.clone(), 0, &accrual));
            change.processed = processed.clone();
            self.commit_member(tenant, &state, record, change, now_ms)
                .await?;
            Ok((entry, true))
        })
        .await?;
        Ok((self.with_hash(tenant, entry).await?, accrued_now))
    }

    /// Reverses the points an order earned on refunded money, proportionally and cumulatively
    /// (see [`earning::reversal_for_refund`]), taking active points oldest-first, then a
    /// negative balance within the program's `max_negative_points`, then pending points, and
    /// writing off the rest. The same refund reverses once.
    pub async fn reverse_accrual(
        &self,
        tenant: &str,
        refund: &Refund,
        processed: Option<IdempotencyRecord>,
    ) -> Result<PointsEntry, LoyaltyError> {
        limits::refund(&refund.amount)?;
        let accrual_key = records::key(tenant, records::ACCRUAL, &refund.order_id);
        let (accrual_key, processed) = (&accrual_key, &processed);
        let entry = retry_on_conflict(Retry::CONTENDED, || async move {
            let stored =
                self.store
                    .load(accrual_key)
                    .await?
                    .ok_or_else(|| LoyaltyError::NotFound {
                        resource: "accrual for order",
                        id: refund.order_id.clone(),
                    })?;
            let mut accrual: AccrualRecord = stored.decode("accrual")?;
            if accrual.member_id != refund.member_id {
                return Err(LoyaltyError::invalid(
                    "member_id",
                    format!("order {} accrued to another member", refund.order_id),
                ));
            }
            if let Some(done) = accrual
                .refunds
                .iter()
                .find(|done| done.refund_id == refund.refund_id)
            {
                return Ok(done.entry.clone().unwrap_or_default());
            }
            if !refund.currency_code.is_empty() && refund.currency_code != accrual.currency_code {
                return Err(LoyaltyError::invalid(
                    "refunded_amount.currency_code",
                    format!("the order accrued in {}", accrual.currency_code),
                ));
            }
            let cumulative = match refund.amount {
                RefundAmount::ThisRefund(amount) => {
                    limits::add("refunded_amount", accrual.refunded_minor, amount)?
                }
                RefundAmount::Cumulative(total) => total.max(accrual.refunded_minor),
            };
            let points = earning::reversal_for_refund(
                accrual.points,
                accrual.eligible_minor,
                cumulative,
                accrual.reversed_points,
            );
            let state = self.load_member(tenant, &refund.member_id).await?;
            let (_, program) = self.program(tenant).await?;
            let now_ms = self.now_ms(tenant).await?;
            let now = seconds(now_ms);
            let mut record = state.record.clone();
            let allowance = (program.max_negative_points - record.deficit).max(0);
            let plan =
                lots::consume_for_reversal(&wallet::domain_lots(&record), points, now, allowance);
            let from_active: i64 =
                plan.from_active.iter().map(|a| a.points).sum::<i64>() + plan.negative_balance;
            let from_pending: i64 = plan.from_pending.iter().map(|a| a.points).sum();
            wallet::take(&mut record, &plan.from_active);
            wallet::take(&mut record, &plan.from_pending);
            record.deficit += plan.negative_balance;
            record.lifetime_points =
                limits::add("lifetime_points", record.lifetime_points, -points)?;
            let entry_id = format!("refund:{}", refund.refund_id);
            let moved = from_active + from_pending;
            let entry = PointsEntry {
                entry_id: if moved > 0 {
                    entry_id.clone()
                } else {
                    String::new()
                },
                member_id: refund.member_id.clone(),
                kind: PointsEntryKind::RefundReversal as i32,
                active_delta: -from_active,
                pending_delta: -from_pending,
                order_id: refund.order_id.clone(),
                reason: if plan.written_off > 0 {
                    format!("{} points already spent were written off", plan.written_off)
                } else {
                    String::new()
                },
                ..PointsEntry::default()
            };
            let mut change = Change::default();
            if moved > 0 {
                let mut ledger_entry = NewEntry::new(&entry_id, now_ms)
                    .metadata("order_id", &refund.order_id)
                    .metadata("written_off", plan.written_off.to_string());
                if from_active > 0 {
                    ledger_entry = ledger_entry.transfer(
                        &records::active_account(state.id()),
                        records::ISSUED,
                        records::POINTS,
                        from_active,
                    );
                }
                if from_pending > 0 {
                    ledger_entry = ledger_entry.transfer(
                        &records::pending_account(state.id()),
                        records::ISSUED,
                        records::POINTS,
                        from_pending,
                    );
                }
                change.write = Some(Write::Post(ledger_entry));
                change.entries.push(entry.clone());
            }
            if points > 0 {
                change.emit(&PointsReversed {
                    member_id: state.id().to_owned(),
                    points: -points,
                    order_id: refund.order_id.clone(),
                    redemption_id: String::new(),
                    refund_id: refund.refund_id.clone(),
                });
            }
            let refunded_spend = cumulative.min(accrual.eligible_minor)
                - accrual.refunded_minor.min(accrual.eligible_minor);
            let qualifying = QualifyingRecord {
                at: now,
                points: -points,
                spend_minor: -refunded_spend.max(0),
            };
            if let Some(tier_changed) =
                wallet::qualify(&mut record, &program, Some(qualifying), now)
            {
                change.emit(&tier_changed);
            }
            accrual.refunded_minor = cumulative;
            accrual.reversed_points += points;
            accrual.refunds.push(RefundRecord {
                refund_id: refund.refund_id.clone(),
                refunded_minor: cumulative,
                entry: Some(entry.clone()),
            });
            change.also.push(Commit::record(
                accrual_key.clone(),
                stored.version,
                &accrual,
            ));
            change.processed = processed.clone();
            self.commit_member(tenant, &state, record, change, now_ms)
                .await?;
            Ok(entry)
        })
        .await?;
        self.with_hash(tenant, entry).await
    }

    /// Adds (positive) or removes (negative) points by hand. `entry_key` makes the call
    /// idempotent: a repeat with the same key finds its entry and returns it.
    pub async fn adjust(
        &self,
        tenant: &str,
        member_id: &str,
        points: i64,
        reason: &str,
        entry_key: &str,
    ) -> Result<PointsEntry, LoyaltyError> {
        self.adjust_recording(tenant, member_id, points, reason, entry_key, None)
            .await
    }

    /// [`Loyalty::adjust`], with the `AdjustPointsResponse` carrying the returned entry recorded
    /// under `idempotency` in the commit that moves the points (the entry shows its ledger hash,
    /// so the record is made as the ledger chains it). A repeat that finds the entry, or a
    /// failure, records nothing here: the idempotency layer records its answer.
    pub async fn adjust_recording(
        &self,
        tenant: &str,
        member_id: &str,
        points: i64,
        reason: &str,
        entry_key: &str,
        idempotency: Option<&IdempotencyContext>,
    ) -> Result<PointsEntry, LoyaltyError> {
        limits::adjustment(points)?;
        let entry_id = format!("adjust:{entry_key}");
        let entry_id = &entry_id;
        retry_on_conflict(Retry::CONTENDED, || async move {
            let state = self.load_member(tenant, member_id).await?;
            let active_account = records::active_account(state.id());
            let entry = PointsEntry {
                entry_id: entry_id.clone(),
                member_id: member_id.to_owned(),
                kind: PointsEntryKind::Adjustment as i32,
                active_delta: points,
                reason: reason.to_owned(),
                ..PointsEntry::default()
            };
            if let Some(written) = self.ledger.entry(tenant, entry_id).await? {
                return Ok(hashed(entry, &written));
            }
            let (_, program) = self.program(tenant).await?;
            let now_ms = self.now_ms(tenant).await?;
            let now = seconds(now_ms);
            let mut record = state.record.clone();
            let ledger_entry = NewEntry::new(entry_id.as_str(), now_ms).metadata("reason", reason);
            let ledger_entry = if points > 0 {
                let expires_at = program
                    .expiry
                    .as_ref()
                    .and_then(|policy| expiry::expires_at(policy, now));
                wallet::add_lot(
                    &mut record,
                    LotRecord {
                        lot_id: entry_id.clone(),
                        points_remaining: points,
                        activates_at: now,
                        expires_at,
                        activated: true,
                        noticed: false,
                    },
                    now,
                );
                ledger_entry.transfer(records::ISSUED, &active_account, records::POINTS, points)
            } else {
                let allocations =
                    lots::consume_for_redemption(&wallet::domain_lots(&record), -points, now)
                        .map_err(|_| LoyaltyError::InsufficientPoints {
                            available: wallet::active_lot_points(&record, now) - record.deficit,
                            required: -points,
                        })?;
                wallet::take(&mut record, &allocations);
                ledger_entry.transfer(&active_account, records::ISSUED, records::POINTS, -points)
            };
            let recorded = idempotency.cloned().map(|context| {
                let entry = entry.clone();
                Box::new(move |written: &ledger::Entry| {
                    context.record(&AdjustPointsResponse {
                        entry: Some(hashed(entry.clone(), written)),
                    })
                }) as Recorder
            });
            let mut change = Change {
                write: Some(Write::Post(ledger_entry)),
                recorded,
                ..Change::default()
            };
            change.entries.push(entry.clone());
            change.emit(&PointsAdjusted {
                member_id: member_id.to_owned(),
                points,
                reason: reason.to_owned(),
            });
            let written = self
                .commit_member(tenant, &state, record, change, now_ms)
                .await?;
            // Exactly the entry the commit recorded.
            Ok(match written {
                Some(written) => hashed(entry, &written.entry),
                None => entry,
            })
        })
        .await
    }
}
