//! The due-jobs sweep, run by `RunDueJobs`, by advancing the tenant clock, and periodically by
//! the server: expire lapsed redemption holds, activate pending lots, send expiry notices,
//! expire lots into breakage, and re-evaluate tiers. Each member's changes are ordinary member
//! commits, so a sweep racing another (or a request) re-reads and finds less to do; running it
//! again finds nothing due.

use commerce_api::commerce::loyalty::v1::{
    PointsActivated, PointsEntry, PointsEntryKind, PointsExpired, PointsExpiring,
};
use ledger::{NewEntry, Write};
use platform::units::timestamp_of_seconds;
use store::Commit;
use store::Pages;
use store::{Retry, retry_on_conflict};
use tracing::Instrument as _;

use crate::engine::{Change, Loyalty, MemberState, seconds};
use crate::error::LoyaltyError;
use crate::expiry;
use crate::records::{self, MemberRecord};
use crate::wallet;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DueReport {
    /// Pending lots activated.
    pub activated_lots: i64,
    /// Lots expired into breakage.
    pub expired_lots: i64,
    /// Redemption holds expired.
    pub expired_holds: i64,
    /// Members whose tier changed.
    pub tier_changes: i64,
}

/// The sweep as a tenant-clock job: advancing a tenant's clock runs it at the new time.
pub struct LoyaltyJobs(pub std::sync::Arc<Loyalty>);

#[async_trait::async_trait]
impl platform::clock::DueJobs for LoyaltyJobs {
    async fn run_due(
        &self,
        tenant: &str,
        now_ms: i64,
    ) -> Result<platform::clock::DueJobsReport, platform::ApiError> {
        self.0.run_due(tenant, now_ms).await?;
        // The report counts subscriptions' work; loyalty's shows in its events and history.
        Ok(platform::clock::DueJobsReport::default())
    }
}

/// The system tenant under which the tenants with loyalty members are listed.
const SYSTEM_TENANT: &str = "_system";

impl Loyalty {
    /// Notes that `tenant` has loyalty members, for the periodic sweep (idempotent).
    pub(crate) async fn note_tenant(&self, tenant: &str) -> Result<(), LoyaltyError> {
        let key = records::key(SYSTEM_TENANT, "loyalty_tenant", tenant);
        if self.store.load(&key).await?.is_some() {
            return Ok(());
        }
        let change = Commit::record(key, 0, &()).indexed(vec![records::all_members()]);
        match self.store.commit(change).await {
            Ok(_) | Err(store::StoreError::Conflict { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Runs the sweep for every tenant with members at its clock's time; returns the summed
    /// report. The server calls it periodically, so points activate and expire without an
    /// operator.
    pub async fn run_due_everywhere(&self) -> Result<DueReport, LoyaltyError> {
        let mut total = DueReport::default();
        let store = self.store.as_ref();
        let mut pages = Pages::new(
            store,
            SYSTEM_TENANT,
            "loyalty_tenant",
            records::all_members(),
            256,
        );
        while let Some(page) = pages.next().await? {
            for (tenant, _) in page {
                let now_ms = self.now_ms(&tenant).await?;
                let report = self
                    .run_due(&tenant, now_ms)
                    .instrument(platform::telemetry::step_span("tenant", &tenant))
                    .await?;
                total.activated_lots += report.activated_lots;
                total.expired_lots += report.expired_lots;
                total.expired_holds += report.expired_holds;
                total.tier_changes += report.tier_changes;
            }
        }
        Ok(total)
    }

    /// Runs everything due for `tenant` at `now_ms` (the tenant clock's time).
    pub async fn run_due(&self, tenant: &str, now_ms: i64) -> Result<DueReport, LoyaltyError> {
        let mut report = DueReport {
            expired_holds: self.expire_redemptions(tenant, now_ms).await?,
            ..DueReport::default()
        };
        let mut pages = Pages::new(
            self.store.as_ref(),
            tenant,
            records::MEMBER,
            records::all_members(),
            256,
        );
        while let Some(page) = pages.next().await? {
            for (member_id, stored) in page {
                let record = MemberRecord::load(&stored)?;
                if due(&record, seconds(now_ms)) {
                    self.sweep_member(tenant, &member_id, now_ms, &mut report)
                        .await?;
                }
            }
        }
        Ok(report)
    }

    /// One member's due work: activation, then notices, then expiry, then the tier — each
    /// its own commit, so each ledger entry has one meaning.
    async fn sweep_member(
        &self,
        tenant: &str,
        member_id: &str,
        now_ms: i64,
        report: &mut DueReport,
    ) -> Result<(), LoyaltyError> {
        let now = seconds(now_ms);
        let (_, program) = self.program(tenant).await?;
        let policy = program.expiry.unwrap_or_default();

        report.activated_lots += retry_on_conflict(Retry::CONTENDED, || async move {
            let state = self.load_member(tenant, member_id).await?;
            let mut record = state.record.clone();
            let mut activated = 0;
            let mut points = 0;
            let mut change = Change::default();
            for lot in record.lots.iter_mut() {
                if lot.activated || lot.activates_at > now {
                    continue;
                }
                lot.activated = true;
                lot.expires_at = expiry::expires_at(&policy, lot.activates_at);
                activated += 1;
                points += lot.points_remaining;
                change.emit(&PointsActivated {
                    member_id: member_id.to_owned(),
                    points: lot.points_remaining,
                    expire_time: lot.expires_at.map(timestamp_of_seconds),
                });
            }
            if activated == 0 {
                return Ok::<_, LoyaltyError>(0);
            }
            wallet::settle_deficit(&mut record, now);
            let entry_id = format!("activation:{member_id}:{}", record.entry_count);
            change.write = Some(Write::Post(NewEntry::new(&entry_id, now_ms).transfer(
                &records::pending_account(member_id),
                &records::active_account(member_id),
                records::POINTS,
                points,
            )));
            change.entries.push(PointsEntry {
                entry_id,
                kind: PointsEntryKind::Activation as i32,
                active_delta: points,
                pending_delta: -points,
                ..PointsEntry::default()
            });
            self.commit_member(tenant, &state, record, change, now_ms)
                .await?;
            Ok(activated)
        })
        .await?;

        retry_on_conflict(Retry::CONTENDED, || async move {
            let state = self.load_member(tenant, member_id).await?;
            let mut record = state.record.clone();
            let mut change = Change::default();
            for lot in record.lots.iter_mut() {
                let Some(expires_at) = lot.expires_at else {
                    continue;
                };
                let notice = expiry::notice_at(&policy, expires_at);
                if lot.noticed
                    || !lot.activated
                    || expires_at <= now
                    || notice.is_none_or(|at| at > now)
                {
                    continue;
                }
                lot.noticed = true;
                change.emit(&PointsExpiring {
                    member_id: member_id.to_owned(),
                    points: lot.points_remaining,
                    expire_time: Some(timestamp_of_seconds(expires_at)),
                });
            }
            if change.events.is_empty() {
                return Ok::<_, LoyaltyError>(());
            }
            let changed_at = record.changed_at_ms;
            self.commit_member(tenant, &state, record, change, changed_at)
                .await?;
            Ok(())
        })
        .await?;

        report.expired_lots += retry_on_conflict(Retry::CONTENDED, || async move {
            let state = self.load_member(tenant, member_id).await?;
            let mut record = state.record.clone();
            let mut change = Change::default();
            let mut expired = 0;
            let mut points = 0;
            for lot in record.lots.iter_mut() {
                let Some(expires_at) = lot.expires_at else {
                    continue;
                };
                if !lot.activated || expires_at > now || lot.points_remaining <= 0 {
                    continue;
                }
                expired += 1;
                points += lot.points_remaining;
                change.emit(&PointsExpired {
                    member_id: member_id.to_owned(),
                    points: lot.points_remaining,
                    expire_time: Some(timestamp_of_seconds(expires_at)),
                });
                lot.points_remaining = 0;
            }
            if expired == 0 {
                return Ok::<_, LoyaltyError>(0);
            }
            wallet::prune(&mut record);
            let entry_id = format!("expiry:{member_id}:{}", record.entry_count);
            change.write = Some(Write::Post(NewEntry::new(&entry_id, now_ms).transfer(
                &records::active_account(member_id),
                records::BREAKAGE,
                records::POINTS,
                points,
            )));
            change.entries.push(PointsEntry {
                entry_id,
                kind: PointsEntryKind::Expiry as i32,
                active_delta: -points,
                ..PointsEntry::default()
            });
            self.commit_member(tenant, &state, record, change, now_ms)
                .await?;
            Ok(expired)
        })
        .await?;

        let program = &program;
        report.tier_changes += retry_on_conflict(Retry::CONTENDED, || async move {
            let state: MemberState = self.load_member(tenant, member_id).await?;
            let mut record = state.record.clone();
            let before = (
                record.member.clone(),
                record.tier_below_since,
                record.qualifying.len(),
            );
            let mut change = Change::default();
            let changed = wallet::qualify(&mut record, program, None, now);
            if let Some(event) = &changed {
                change.emit(event);
            }
            if before
                == (
                    record.member.clone(),
                    record.tier_below_since,
                    record.qualifying.len(),
                )
            {
                return Ok::<_, LoyaltyError>(0);
            }
            let changed_at = record.changed_at_ms;
            self.commit_member(tenant, &state, record, change, changed_at)
                .await?;
            Ok(i64::from(changed.is_some()))
        })
        .await?;
        Ok(())
    }
}

/// Whether a member may have due work at `now`: a lot to activate, notice or expire, or tier
/// state to revisit. Cheap, so the sweep skips most members without a write.
fn due(record: &MemberRecord, now: i64) -> bool {
    let lot_due = record.lots.iter().any(|lot| {
        (!lot.activated && lot.activates_at <= now)
            || (lot.activated && !lot.noticed && lot.expires_at.is_some())
            || lot.expires_at.is_some_and(|at| at <= now)
    });
    let tier_due = record
        .member
        .as_ref()
        .is_some_and(|member| !member.tier_id.is_empty())
        || !record.qualifying.is_empty();
    lot_due || tier_due
}
