//! The loyalty service: members, a double-entry points ledger, earning rules, rewards and
//! redemptions, refunds, expiry and tiers.
//!
//! - The **rules** are pure functions over the program (`commerce.loyalty.v1.LoyaltyProgram`)
//!   and plain values: how many points an order earns ([`earning`]), how many a refund takes
//!   back ([`earning::reversal_for_refund`]), when points activate and expire ([`expiry`]), which
//!   lots a redemption, reversal or expiry touches ([`lots`]), which tier a member holds
//!   ([`tiers`]). Nothing there reads a clock or does I/O.
//! - The **engine** ([`Loyalty`]) applies them: every change to a member's points is one atomic
//!   commit of the ledger entry ([`ledger`] crate), the member record with its lots
//!   ([`records`]), the points history and the outbox events; time is the tenant clock's.
//! - The **handlers** ([`LoyaltyApi`]) serve the four gRPC services; the **consumer**
//!   ([`CheckoutEvents`]) turns checkout's paid and refunded orders into accruals and reversals.
//!
//! Times in the rules are unix seconds (UTC); the ledger and the clock use unix ms. Points are
//! `i64`; arithmetic is integer-only.

pub mod api;
pub mod consumer;
pub mod earning;
mod engine;
pub mod error;
pub mod expiry;
mod jobs;
mod limits;
pub mod lots;
pub mod members;
pub mod module;
pub mod points;
mod program;
mod reconcile;
pub mod records;
pub mod rewards;
pub mod tiers;
mod wallet;

pub use api::LoyaltyApi;
pub use consumer::CheckoutEvents;
pub use earning::{Earning, EarningError, EligibleLine, earn_points, reversal_for_refund};
pub use engine::Loyalty;
pub use error::LoyaltyError;
pub use expiry::{activates_at, expires_at, notice_at};
pub use jobs::{DueReport, LoyaltyJobs};
pub use lots::{Allocation, Lot, RedemptionError, ReversalPlan, UpcomingExpiry};
pub use module::{LoyaltyArgs, LoyaltyModule};
pub use program::default_program;
pub use tiers::{CurrentTier, TierEvaluation};

/// Seconds in a day; "days" in the program are always whole UTC days of this length.
pub const SECONDS_PER_DAY: i64 = 86_400;
