//! `ReconcileLedger`: the ledger's own proof (chain, balanced entries, cached balances) plus the
//! loyalty invariant that ties each member record to its accounts — the pending account holds
//! exactly the lots not yet activated, and the active account's available balance is the
//! activated lots' points minus the deficit.

use commerce_api::commerce::checkout::v1::{OrderPaid, OrderRefunded};
use commerce_api::commerce::loyalty::v1::{LedgerDiscrepancy, ReconcileLedgerResponse};
use ledger::Problem;

use crate::consumer::GROUP;
use crate::engine::Loyalty;
use crate::error::LoyaltyError;
use crate::records::{self, MemberRecord};

fn discrepancy(
    account: &str,
    entry: &str,
    problem: &str,
    expected: String,
    actual: String,
) -> LedgerDiscrepancy {
    LedgerDiscrepancy {
        account_id: account.to_owned(),
        entry_id: entry.to_owned(),
        problem: problem.to_owned(),
        expected,
        actual,
    }
}

/// A ledger problem as the API reports it.
fn from_problem(problem: &Problem) -> LedgerDiscrepancy {
    let none = String::new;
    match problem {
        Problem::Unreadable { kind, id, reason } => discrepancy(
            "",
            id,
            &format!("unreadable_{kind}"),
            none(),
            reason.clone(),
        ),
        Problem::HashMismatch { entry } => discrepancy("", entry, "hash_mismatch", none(), none()),
        Problem::ChainBroken { entry, previous } => discrepancy(
            "",
            entry,
            "chain_broken",
            previous.clone().unwrap_or_default(),
            none(),
        ),
        Problem::MissingEntry { sequence } => {
            discrepancy("", "", "missing_entry", sequence.to_string(), none())
        }
        Problem::RepeatedSequence { entry, sequence } => {
            discrepancy("", entry, "repeated_sequence", none(), sequence.to_string())
        }
        Problem::Unbalanced { entry, unit } => {
            discrepancy("", entry, "unbalanced_entry", "0".into(), unit.clone())
        }
        Problem::BadHoldReference { entry, hold } => {
            discrepancy("", entry, "bad_hold_reference", hold.clone(), none())
        }
        Problem::HeadMismatch { last_entry } => discrepancy(
            "",
            last_entry.as_deref().unwrap_or(""),
            "head_mismatch",
            none(),
            none(),
        ),
        Problem::BalanceMismatch {
            account,
            stored,
            derived,
        } => discrepancy(
            account,
            "",
            "balance_mismatch",
            format!("{derived:?}"),
            format!("{stored:?}"),
        ),
        Problem::BelowFloor { account } => discrepancy(account, "", "below_floor", none(), none()),
        Problem::UnitMismatch { account, unit } => {
            discrepancy(account, "", "unit_mismatch", none(), unit.clone())
        }
        Problem::UnknownAccount { account, entry } => {
            discrepancy(account, entry, "unknown_account", none(), none())
        }
        Problem::HoldMismatch { hold } => discrepancy("", hold, "hold_mismatch", none(), none()),
    }
}

impl Loyalty {
    /// Reconciles the tenant's points ledger and every member's lots against it. Read-only.
    pub async fn reconcile(&self, tenant: &str) -> Result<ReconcileLedgerResponse, LoyaltyError> {
        let report = self.ledger.reconcile(tenant).await?;
        let mut discrepancies: Vec<LedgerDiscrepancy> =
            report.problems.iter().map(from_problem).collect();
        let mut pages = store::Pages::new(
            self.store.as_ref(),
            tenant,
            records::MEMBER,
            records::all_members(),
            256,
        );
        while let Some(page) = pages.next().await? {
            for (member_id, stored) in page {
                let record = MemberRecord::load(&stored)?;
                let mut found = self
                    .member_discrepancies(tenant, &member_id, &record)
                    .await?;
                if !found.is_empty() {
                    found = self
                        .settled_member_discrepancies(tenant, &member_id)
                        .await?;
                }
                discrepancies.extend(found);
            }
        }
        discrepancies.extend(self.missing_effects(tenant).await?);
        Ok(ReconcileLedgerResponse {
            entries_checked: report.entries_checked as i64,
            accounts_checked: report.accounts_checked as i64,
            clean: discrepancies.is_empty(),
            discrepancies,
        })
    }

    /// A member's discrepancies from reads that show one state: the member record, its
    /// accounts, then the record again at the same version (every change of a member's
    /// accounts rewrites its record in the same commit, so an unchanged record means the
    /// accounts read in between are its own). A member that keeps changing is checked against
    /// the last reads after a few tries.
    async fn settled_member_discrepancies(
        &self,
        tenant: &str,
        member_id: &str,
    ) -> Result<Vec<LedgerDiscrepancy>, LoyaltyError> {
        const TRIES: usize = 5;
        let key = records::key(tenant, records::MEMBER, member_id);
        let mut found = Vec::new();
        for _ in 0..TRIES {
            let Some(stored) = self.store.load(&key).await? else {
                return Ok(Vec::new());
            };
            let record = MemberRecord::load(&stored)?;
            found = self
                .member_discrepancies(tenant, member_id, &record)
                .await?;
            let again = self.store.load(&key).await?;
            if found.is_empty() || again.is_some_and(|again| again.version == stored.version) {
                break;
            }
        }
        Ok(found)
    }

    /// Paid orders that earned nothing yet and refunds not yet reversed: checkout's events that
    /// loyalty has not handled (lost by a bus, or given up on), from the event journal.
    async fn missing_effects(&self, tenant: &str) -> Result<Vec<LedgerDiscrepancy>, LoyaltyError> {
        let Some((journal, settle)) = &self.journal else {
            return Ok(Vec::new());
        };
        let missing = journal.missing(tenant, GROUP, *settle).await?;
        Ok(missing
            .into_iter()
            .map(|effect| {
                let envelope = events::envelope::open(&effect.envelope).ok();
                let (problem, subject) = match effect.event_type.rsplit('.').next() {
                    Some("OrderPaid") => (
                        "accrual_missing",
                        envelope
                            .and_then(|e| events::envelope::payload::<OrderPaid>(&e).ok())
                            .map(|paid| paid.order_id),
                    ),
                    Some("OrderRefunded") => (
                        "reversal_missing",
                        envelope
                            .and_then(|e| events::envelope::payload::<OrderRefunded>(&e).ok())
                            .map(|refunded| refunded.refund_id),
                    ),
                    _ => ("effect_missing", None),
                };
                discrepancy(
                    "",
                    &effect.event_id,
                    problem,
                    subject.unwrap_or_default(),
                    String::new(),
                )
            })
            .collect())
    }

    async fn member_discrepancies(
        &self,
        tenant: &str,
        member_id: &str,
        record: &MemberRecord,
    ) -> Result<Vec<LedgerDiscrepancy>, LoyaltyError> {
        let mut found = Vec::new();
        let balance = |name: String| async move {
            Ok::<_, LoyaltyError>(
                self.ledger
                    .account(tenant, &name)
                    .await?
                    .map(|account| account.balances)
                    .unwrap_or_default(),
            )
        };
        let pending_lots: i64 = record
            .lots
            .iter()
            .filter(|lot| !lot.activated)
            .map(|lot| lot.points_remaining)
            .sum();
        let active_lots: i64 = record
            .lots
            .iter()
            .filter(|lot| lot.activated)
            .map(|lot| lot.points_remaining)
            .sum();
        let pending_account = records::pending_account(member_id);
        let pending = balance(pending_account.clone()).await?;
        if pending.posted != pending_lots {
            found.push(discrepancy(
                &pending_account,
                "",
                "lots_mismatch",
                pending_lots.to_string(),
                pending.posted.to_string(),
            ));
        }
        let active_account = records::active_account(member_id);
        let active = balance(active_account.clone()).await?;
        if active.available() != active_lots - record.deficit {
            found.push(discrepancy(
                &active_account,
                "",
                "lots_mismatch",
                (active_lots - record.deficit).to_string(),
                active.available().to_string(),
            ));
        }
        if record.deficit < 0 || record.lots.iter().any(|lot| lot.points_remaining < 0) {
            found.push(discrepancy(
                &active_account,
                "",
                "negative_lot",
                "0".into(),
                record.deficit.to_string(),
            ));
        }
        Ok(found)
    }
}
