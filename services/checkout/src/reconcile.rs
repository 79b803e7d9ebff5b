//! `ReconcilePayments`: ties every order out to the minor unit three ways — what the order
//! records, what the PSP recorded under its reference (authorizations, captures, voids,
//! refunds), and what the money ledger holds (`checkout:capture:<order id>`,
//! `checkout:refund:<refund id>`) — and lists every disagreement. Failed placements must have
//! left nothing authorized. Over the whole history (no time range) it also checks the ledger's
//! own proof (hash chain, balanced entries, cached balances) and that each currency's
//! `checkout:psp:<CUR>` balance equals the orders' captured minus refunded.

use std::collections::BTreeMap;

use commerce_api::commerce::checkout::v1::{
    Order, PaymentMismatch, PaymentStatus, ReconcilePaymentsResponse,
};
use ledger::Ledger;
use platform::units::{minor, money, ms_or_epoch};

use crate::error::CheckoutError;
use crate::money_ledger;
use crate::orders::Psp;
use crate::psp::{Transaction, TransactionKind};

/// Orders created in `[start, end)` (unix ms); `None` leaves that side open.
#[derive(Debug, Clone, Copy, Default)]
pub struct Period {
    /// First instant included.
    pub start_ms: Option<i64>,
    /// First instant excluded.
    pub end_ms: Option<i64>,
}

impl Period {
    fn contains(&self, ms: i64) -> bool {
        self.start_ms.is_none_or(|start| ms >= start) && self.end_ms.is_none_or(|end| ms < end)
    }

    fn is_everything(&self) -> bool {
        self.start_ms.is_none() && self.end_ms.is_none()
    }
}

/// Succeeded PSP transactions of `kind`, summed.
fn psp_sum(transactions: &[Transaction], kind: TransactionKind) -> (usize, i64) {
    transactions
        .iter()
        .filter(|transaction| transaction.kind == kind && transaction.succeeded())
        .fold((0, 0), |(count, sum), transaction| {
            (count + 1, sum + transaction.amount.amount_minor)
        })
}

/// A disagreement: what the order, the PSP and the ledger each say (`None`: not applicable).
struct Amounts {
    order: Option<i64>,
    psp: Option<i64>,
    ledger: Option<i64>,
}

impl Amounts {
    fn agree(&self) -> bool {
        let known: Vec<i64> = [self.order, self.psp, self.ledger]
            .into_iter()
            .flatten()
            .collect();
        known.windows(2).all(|pair| pair[0] == pair[1])
    }

    fn mismatch(&self, order_id: &str, field: &str, currency: &str) -> PaymentMismatch {
        let amount = |value: Option<i64>| value.and_then(|minor| money(currency, minor));
        PaymentMismatch {
            order_id: order_id.to_owned(),
            field: field.to_owned(),
            order_amount: amount(self.order),
            psp_amount: amount(self.psp),
            ledger_amount: amount(self.ledger),
        }
    }
}

/// `HashMismatch { .. }` → `ledger_hash_mismatch`.
fn ledger_field(problem: &ledger::Problem) -> String {
    let name = format!("{problem:?}");
    let name = name.split([' ', '{', '(']).next().unwrap_or_default();
    let mut field = String::from("ledger");
    for character in name.chars() {
        if character.is_uppercase() {
            field.push('_');
        }
        field.extend(character.to_lowercase());
    }
    field
}

/// A placement that failed for good, with the order it would have made: it must have left no
/// authorization standing.
pub(crate) struct FailedPlacement {
    /// When it started (unix ms).
    pub(crate) started_ms: i64,
    /// Its draft order (ids, payment).
    pub(crate) order: Order,
}

/// Checks orders against what the PSP and the money ledger recorded.
pub(crate) struct Reconciler<'a> {
    ledger: &'a Ledger,
    psp: &'a Psp,
}

impl<'a> Reconciler<'a> {
    pub(crate) fn new(ledger: &'a Ledger, psp: &'a Psp) -> Self {
        Reconciler { ledger, psp }
    }

    /// Reconciles the tenant's `orders` and `failed` placements that fall in `period` (see the
    /// module docs).
    pub(crate) async fn reconcile(
        &self,
        tenant: &str,
        period: Period,
        orders: &[Order],
        failed: &[FailedPlacement],
    ) -> Result<ReconcilePaymentsResponse, CheckoutError> {
        let mut mismatches = Vec::new();
        let mut net: BTreeMap<String, i64> = BTreeMap::new();
        let mut checked = 0;
        for order in orders {
            if !period.contains(ms_or_epoch(&order.create_time)) {
                continue;
            }
            checked += 1;
            let currency = self.check_order(tenant, order, &mut mismatches).await?;
            let payment = order.payment.clone().unwrap_or_default();
            *net.entry(currency).or_default() +=
                minor(&payment.captured_amount) - minor(&payment.refunded_amount);
        }
        for placement in failed {
            if period.contains(placement.started_ms) {
                self.check_failed_placement(&placement.order, &mut mismatches)
                    .await?;
            }
        }
        if period.is_everything() {
            self.check_ledger(tenant, &net, &mut mismatches).await?;
        }
        Ok(ReconcilePaymentsResponse {
            orders_checked: checked,
            mismatches,
            net_captured: net
                .into_iter()
                .filter_map(|(currency, minor)| money(&currency, minor))
                .collect(),
        })
    }

    /// One order against its PSP transactions and ledger entries; returns its currency.
    async fn check_order(
        &self,
        tenant: &str,
        order: &Order,
        mismatches: &mut Vec<PaymentMismatch>,
    ) -> Result<String, CheckoutError> {
        let id = order.order_id.as_str();
        let payment = order.payment.clone().unwrap_or_default();
        let currency = payment
            .authorized_amount
            .as_ref()
            .map(|amount| amount.currency_code.clone())
            .unwrap_or_default();
        let transactions = self.psp_transactions(id).await?;
        let (authorizations, authorized) = psp_sum(&transactions, TransactionKind::Authorization);
        // An order with nothing to pay never reached the PSP.
        let expected = if payment.status == PaymentStatus::NotRequired as i32 {
            0
        } else {
            1
        };
        if authorizations != expected {
            mismatches.push(
                Amounts {
                    order: Some(minor(&payment.authorized_amount)),
                    psp: Some(authorized),
                    ledger: None,
                }
                .mismatch(id, "authorization_count", &currency),
            );
        }
        let captured = Amounts {
            order: Some(minor(&payment.captured_amount)),
            psp: Some(psp_sum(&transactions, TransactionKind::Capture).1),
            ledger: Some(
                self.ledger_amount(tenant, &money_ledger::capture_entry(id), &currency)
                    .await?,
            ),
        };
        if !captured.agree() {
            mismatches.push(captured.mismatch(id, "captured_amount", &currency));
        }
        let ledger_refunded = self
            .check_refunds(tenant, order, &transactions, &currency, mismatches)
            .await?;
        let refunded = Amounts {
            order: Some(minor(&payment.refunded_amount)),
            psp: Some(psp_sum(&transactions, TransactionKind::Refund).1),
            ledger: Some(-ledger_refunded),
        };
        if !refunded.agree() {
            mismatches.push(refunded.mismatch(id, "refunded_amount", &currency));
        }
        let voided_at_psp = psp_sum(&transactions, TransactionKind::Void).0 > 0;
        let voided_here = payment.status == PaymentStatus::Voided as i32;
        if voided_at_psp != voided_here {
            mismatches.push(
                Amounts {
                    order: Some(i64::from(voided_here)),
                    psp: Some(i64::from(voided_at_psp)),
                    ledger: None,
                }
                .mismatch(id, "voided", &currency),
            );
        }
        Ok(currency)
    }

    /// Each of the order's refunds against its PSP transaction and its ledger entry; returns
    /// what the ledger holds refunded (negative: out of the PSP account).
    async fn check_refunds(
        &self,
        tenant: &str,
        order: &Order,
        transactions: &[Transaction],
        currency: &str,
        mismatches: &mut Vec<PaymentMismatch>,
    ) -> Result<i64, CheckoutError> {
        let id = order.order_id.as_str();
        let mut ledger_refunded = 0;
        for refund in &order.refunds {
            let amount = minor(&refund.amount);
            let at_psp = transactions.iter().find(|transaction| {
                transaction.id == refund.psp_reference && transaction.succeeded()
            });
            if at_psp.is_none_or(|transaction| transaction.amount.amount_minor != amount) {
                mismatches.push(
                    Amounts {
                        order: Some(amount),
                        psp: at_psp.map(|transaction| transaction.amount.amount_minor),
                        ledger: None,
                    }
                    .mismatch(id, "refund_missing_at_psp", currency),
                );
            }
            let in_ledger = self
                .ledger_amount(
                    tenant,
                    &money_ledger::refund_entry(&refund.refund_id),
                    currency,
                )
                .await?;
            ledger_refunded += in_ledger;
            if in_ledger != -amount {
                mismatches.push(
                    Amounts {
                        order: Some(amount),
                        psp: None,
                        ledger: Some(-in_ledger),
                    }
                    .mismatch(id, "refund_missing_in_ledger", currency),
                );
            }
        }
        Ok(ledger_refunded)
    }

    /// A failed placement must have left no authorization standing at the PSP.
    async fn check_failed_placement(
        &self,
        order: &Order,
        mismatches: &mut Vec<PaymentMismatch>,
    ) -> Result<(), CheckoutError> {
        let transactions = self.psp_transactions(&order.order_id).await?;
        let (_, authorized) = psp_sum(&transactions, TransactionKind::Authorization);
        let (voids, _) = psp_sum(&transactions, TransactionKind::Void);
        if authorized > 0 && voids == 0 {
            let currency = order
                .payment
                .as_ref()
                .and_then(|payment| payment.authorized_amount.as_ref())
                .map_or("", |amount| amount.currency_code.as_str());
            mismatches.push(
                Amounts {
                    order: Some(0),
                    psp: Some(authorized),
                    ledger: None,
                }
                .mismatch(&order.order_id, "authorization_not_voided", currency),
            );
        }
        Ok(())
    }

    /// The ledger's own proof, and each currency's PSP account against the orders' net.
    async fn check_ledger(
        &self,
        tenant: &str,
        net: &BTreeMap<String, i64>,
        mismatches: &mut Vec<PaymentMismatch>,
    ) -> Result<(), CheckoutError> {
        let report = self.ledger.reconcile(tenant).await?;
        for problem in &report.problems {
            mismatches.push(PaymentMismatch {
                field: ledger_field(problem),
                ..PaymentMismatch::default()
            });
        }
        for (currency, orders_net) in net {
            let balance = self
                .ledger
                .account(tenant, &money_ledger::account("psp", currency))
                .await?
                .map_or(0, |account| account.balances.posted);
            if balance != *orders_net {
                mismatches.push(
                    Amounts {
                        order: Some(*orders_net),
                        psp: None,
                        ledger: Some(balance),
                    }
                    .mismatch("", "psp_account_balance", currency),
                );
            }
        }
        Ok(())
    }

    /// What entry `id` moved into the PSP account (0 when there is no such entry).
    async fn ledger_amount(
        &self,
        tenant: &str,
        id: &str,
        currency: &str,
    ) -> Result<i64, CheckoutError> {
        let account = money_ledger::account("psp", currency);
        Ok(self.ledger.entry(tenant, id).await?.map_or(0, |entry| {
            entry
                .postings
                .iter()
                .filter(|posting| posting.account == account)
                .map(|posting| posting.amount)
                .sum()
        }))
    }

    async fn psp_transactions(&self, reference: &str) -> Result<Vec<Transaction>, CheckoutError> {
        self.psp.transactions(reference).await
    }
}
