//! The loyalty service's domain rules, as pure functions over the program
//! (`commerce.loyalty.v1.LoyaltyProgram`) and plain values.
//!
//! What it is: how many points an order earns ([`earning`]), how many a refund takes back
//! ([`earning::reversal_for_refund`]), when points activate and expire ([`expiry`]), which lots
//! a redemption, reversal or expiry run touches ([`lots`]), and which tier a member holds
//! ([`tiers`]).
//!
//! What it is not: storage, the points ledger, gRPC handlers or anything async. Those call these
//! functions and record the results; nothing here reads a clock — `now` is always an argument.
//!
//! Times are unix seconds (UTC) throughout; points are `i64`; arithmetic is integer-only with
//! `i128` intermediates so no product can overflow before it is divided.

pub mod earning;
pub mod expiry;
pub mod lots;
pub mod tiers;

pub use earning::{Earning, EarningError, EligibleLine, earn_points, reversal_for_refund};
pub use expiry::{activates_at, expires_at, notice_at};
pub use lots::{Allocation, Lot, RedemptionError, ReversalPlan, UpcomingExpiry};
pub use tiers::{CurrentTier, TierEvaluation};

/// Seconds in a day; "days" in the program are always whole UTC days of this length.
pub const SECONDS_PER_DAY: i64 = 86_400;
