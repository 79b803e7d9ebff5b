//! The background payment round — placements whose payment outcome is unknown, placements
//! abandoned part-way, orders whose capture is due — and what reconciliation reads of the
//! orders engine.

use commerce_api::commerce::checkout::v1::{Order, ReconcilePaymentsResponse};
use commerce_api::commerce::common::v1::ErrorReason;
use store::{AggregateKey, Commit, IndexEntry, Pages, StoreError, Versioned};

use super::placement::Step;
use super::records::{PlacementRecord, capture_due, held_redemption, index};
use super::{ORDER, Orders, PLACEMENT, Recorded, SYSTEM_TENANT};
use crate::error::CheckoutError;
use crate::psp::Transaction;
use crate::reconcile::{FailedPlacement, Period, Reconciler};

/// The records (kind) listing, under the system tenant, the tenants the background round visits.
const LISTED_TENANT: &str = "checkout_tenant";

/// What one background round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Placements whose unknown payment outcome became known (order placed or failed).
    pub payments_resolved: usize,
    /// Orders whose due capture went through.
    pub captured: usize,
    /// Abandoned placements rolled back.
    pub abandoned: usize,
}

impl Orders {
    /// One background round over every tenant with placements: placements whose payment
    /// outcome is unknown are driven on (the PSP is asked under the placement's key — never a
    /// second authorization), orders whose capture is due are captured, and placements still in
    /// flight [`Orders::with_abandon_after`] they started are rolled back. Failures — a PSP
    /// that does not answer in time included — are logged and left for the next round.
    pub async fn settle_payments(&self) -> Result<Settled, CheckoutError> {
        let mut settled = Settled::default();
        let mut tenants = Pages::new(
            self.store.as_ref(),
            SYSTEM_TENANT,
            LISTED_TENANT,
            index("all", "1"),
            256,
        );
        while let Some(page) = tenants.next().await? {
            for (tenant, _) in page {
                self.settle_tenant(&tenant, &mut settled).await?;
            }
        }
        Ok(settled)
    }

    async fn settle_tenant(
        &self,
        tenant: &str,
        settled: &mut Settled,
    ) -> Result<(), CheckoutError> {
        let now = self.clocks.now_ms(tenant).await?;
        settled.payments_resolved += self.resolve_unknown_payments(tenant).await?;
        settled.abandoned += self.roll_back_abandoned(tenant, now).await?;
        settled.captured += self.capture_due_orders(tenant).await?;
        Ok(())
    }

    /// Drives on every placement whose payment outcome is unknown; returns how many ended
    /// (placed, or failed for good).
    async fn resolve_unknown_payments(&self, tenant: &str) -> Result<usize, CheckoutError> {
        let mut resolved = 0;
        for (id, stored) in self
            .all(tenant, PLACEMENT, index("step", "payment_unknown"))
            .await?
        {
            let Some(record) = readable(&id, &stored) else {
                continue;
            };
            let key = AggregateKey::new(tenant, PLACEMENT, &id);
            match self
                .drive(&key, stored.version, record, Recorded::Nothing)
                .await
            {
                Ok(_) | Err(CheckoutError::Precondition { .. }) => resolved += 1,
                Err(error) => {
                    tracing::info!(%error, placement = %id, "checkout: payment still unresolved")
                }
            }
        }
        Ok(resolved)
    }

    /// Rolls back placements in flight longer than the abandon limit, and finishes rollbacks
    /// that stopped part-way; returns how many it rolled back.
    async fn roll_back_abandoned(&self, tenant: &str, now: i64) -> Result<usize, CheckoutError> {
        let mut abandoned = 0;
        for step in ["in_flight", "compensating"] {
            for (id, stored) in self.all(tenant, PLACEMENT, index("step", step)).await? {
                let Some(record) = readable(&id, &stored) else {
                    continue;
                };
                if step == "in_flight" && record.started_ms + self.abandon_after_ms > now {
                    continue;
                }
                let key = AggregateKey::new(tenant, PLACEMENT, &id);
                match self.abandon(&key, stored.version, record).await {
                    Ok(()) => abandoned += 1,
                    Err(error) => {
                        tracing::warn!(%error, placement = %id, "checkout: rollback of an abandoned placement failed")
                    }
                }
            }
        }
        Ok(abandoned)
    }

    /// Captures every order whose capture is due; returns how many it captured.
    async fn capture_due_orders(&self, tenant: &str) -> Result<usize, CheckoutError> {
        let mut captured = 0;
        for (id, _) in self.all(tenant, ORDER, index("capture_due", "1")).await? {
            match self.capture(tenant, &id).await {
                Ok(order) if !capture_due(&order) => captured += 1,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, order = %id, "checkout: capture still failing")
                }
            }
        }
        Ok(captured)
    }

    /// Rolls an abandoned placement back: first marks it compensating (so no later attempt can
    /// commit its order), then voids whatever the PSP authorized under its key and returns the
    /// held reward, then marks it failed with `PLACEMENT_ABANDONED`.
    async fn abandon(
        &self,
        key: &AggregateKey,
        version: u64,
        mut record: PlacementRecord,
    ) -> Result<(), CheckoutError> {
        let mut version = version;
        if record.step()? != Step::Compensating {
            record.set_step(Step::Compensating);
            record.set_failure(
                "the placement was abandoned part-way and rolled back; place the order again",
                ErrorReason::PlacementAbandoned,
            );
            (version, record) = self.save_placement(key, version, record).await?;
        }
        let payment_id = record.payment_id().to_owned();
        let authorized = self.psp.lookup(&payment_id).await.map_err(|error| {
            tracing::warn!(%error, "checkout: PSP lookup failed during a rollback");
            super::payments::psp_unavailable()
        })?;
        if let Some(authorization) = authorized.filter(Transaction::succeeded) {
            self.psp.void(&payment_id, &authorization.id).await?;
        }
        if let Some(redemption) = record.order.as_ref().and_then(held_redemption) {
            self.loyalty.void(&key.tenant, redemption).await?;
        }
        record.set_step(Step::Failed);
        self.save_placement(key, version, record).await.map(drop)
    }

    /// Notes that `tenant` has placements for the background round (idempotent).
    pub(super) async fn note_tenant(&self, tenant: &str) -> Result<(), CheckoutError> {
        if self.known(tenant) {
            return Ok(());
        }
        let key = AggregateKey::new(SYSTEM_TENANT, LISTED_TENANT, tenant);
        if self.store.load(&key).await?.is_none() {
            // An empty marker: being listed is all it says.
            let listed = Commit::record(key, 0, &()).indexed(vec![index("all", "1")]);
            match self.store.commit(listed).await {
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.remember(tenant);
        Ok(())
    }

    /// Every record of `kind` under `filter` (read before acting, so acting cannot disturb the
    /// walk).
    async fn all(
        &self,
        tenant: &str,
        kind: &str,
        filter: IndexEntry,
    ) -> Result<Vec<(String, Versioned)>, CheckoutError> {
        let mut pages = Pages::new(self.store.as_ref(), tenant, kind, filter, 256);
        let mut all = Vec::new();
        while let Some(page) = pages.next().await? {
            all.extend(page);
        }
        Ok(all)
    }

    /// Reconciles the tenant's orders placed in `period` (see [`crate::reconcile`]): reads
    /// every order and every placement that failed for good, and has the reconciler check them
    /// against the PSP and the money ledger.
    pub async fn reconcile_payments(
        &self,
        tenant: &str,
        period: Period,
    ) -> Result<ReconcilePaymentsResponse, CheckoutError> {
        let mut orders = Vec::new();
        for (id, stored) in self.all(tenant, ORDER, index("all", "1")).await? {
            orders.push(stored.decode::<Order>(&format!("order {id}"))?);
        }
        let mut failed = Vec::new();
        for (id, stored) in self.all(tenant, PLACEMENT, index("all", "1")).await? {
            let record = PlacementRecord::from_stored(&stored, &id)?;
            if record.step()? == Step::Failed {
                failed.push(FailedPlacement {
                    started_ms: record.started_ms,
                    order: record.order.unwrap_or_default(),
                });
            }
        }
        Reconciler::new(&self.ledger, &self.psp)
            .reconcile(tenant, period, &orders, &failed)
            .await
    }
}

/// The placement `id`, or `None` (logged) when it cannot be read: one damaged record must not
/// stop the round for every other placement and tenant.
fn readable(id: &str, stored: &Versioned) -> Option<PlacementRecord> {
    match PlacementRecord::from_stored(stored, id) {
        Ok(record) => Some(record),
        Err(error) => {
            tracing::error!(%error, placement = %id, "checkout: unreadable placement skipped by the payment round");
            None
        }
    }
}
