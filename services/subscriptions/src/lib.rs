//! The subscriptions service: plans with versions, subscriptions, invoices, the billing run and
//! dunning.
//!
//! - The **rules** are pure functions over plain values and the `commerce.subscriptions.v1`
//!   enums: [`periods`] (where each billing period starts and ends), [`proration`] (what a
//!   mid-period plan change credits and charges), [`dunning`] (when a failed payment is retried
//!   and what happens when retries run out) and [`transitions`] (the subscription and invoice
//!   state machines). Nothing there reads a clock, stores anything or does I/O.
//! - The **engine** ([`Subscriptions`]) applies them over the store, the tenant clock, the money
//!   ledger and the PSP port: every change is one atomic commit of the subscription, its due
//!   marker, the invoices and invoice counter it touches, the ledger entry and the outbox events.
//!   The billing run ([`Subscriptions::run_due`], also a [`platform::clock::DueJobs`] through
//!   [`SubscriptionJobs`]) renews, charges, retries, ends trials, resumes pauses and cancels at
//!   period end, in time order.
//!
//!   Callers also act on single invoices: pay now (through the billing run's own attempt code,
//!   so the PSP keys are the same), void, write off; and on subscriptions: new payment method,
//!   migration to the plan's current version at the next period.
//! - The **handlers** ([`api`]: [`PlanApi`], [`SubscriptionApi`], [`InvoiceApi`]) implement
//!   PlanService, SubscriptionService and InvoiceService over one engine: each reads the tenant
//!   (and, for creates, the idempotency-derived id) off the request, calls the engine, and maps
//!   [`SubscriptionsError`] once, through its `From` impl into `platform::ApiError`.
//!
//! Not here: the binary that serves them (`services/commerce`) and the platform layers around
//! them (auth, idempotency replay, validation).
//!
//! Times are unix milliseconds (UTC); money is `i64` minor units of one currency; arithmetic is
//! integer-only.

#![warn(missing_docs)]

pub mod api;
mod billing;
mod clock_api;
mod collect;
pub mod dunning;
mod engine;
pub mod error;
mod invoices;
mod lifecycle;
mod limits;
pub mod module;
pub mod periods;
mod plans;
pub mod proration;
pub mod records;
pub mod transitions;

pub use api::{InvoiceApi, PlanApi, SubscriptionApi};
pub use billing::{BillingReport, SubscriptionJobs};
pub use dunning::{DunningStep, FinalAction, InvalidRetryPolicy, RetryPolicy};
pub use engine::Subscriptions;
pub use error::{ERROR_DOMAIN, SubscriptionsError};
pub use lifecycle::{Created, PlanChange, ProrationPreview};
pub use module::{SubscriptionsArgs, SubscriptionsModule};
pub use periods::{Period, PeriodError, next_period, period_containing, period_end};
pub use proration::{Proration, ProrationError, prorate};
pub use transitions::{
    IllegalInvoiceTransition, IllegalTransition, InvoiceAction, SubscriptionAction,
    can_change_plan, can_pause, can_resume, is_final, next, next_invoice,
};

/// Milliseconds in a day. "Days" here are always whole UTC days of this length: UTC has no
/// daylight-saving shifts, so a day-based period is the same length everywhere.
pub const MILLIS_PER_DAY: i64 = 86_400_000;
