//! The checkout service: where money moves. Locations and their menus (prices always from here),
//! carts, quotes (pricing with the documented rounding rule, a tax hook port), and orders with
//! their placement saga, which charge through the payment service provider (PSP) port.
//!
//! The PSP is not part of checkout. The port ([`psp::PaymentProvider`]) and its simulator live in
//! the `payments` crate (`crates/payments`, re-exported here as [`psp`]); checkout is handed a
//! provider and never picks one. In the all-in-one process (`commerce serve`) that provider is the
//! simulator, running in-process beside the store; in the split shape the simulator runs as a
//! process of its own (`commerce psp serve`) and checkout reaches it through the port's remote
//! adapter (`--psp-url`). A real PSP would be one more adapter of the same port.

pub mod api;
pub mod carts;
pub mod catalog;
pub mod error;
pub mod hours;
mod ids;
mod limits;
pub mod loyalty_remote;
pub mod module;
mod money_ledger;
pub mod orders;
pub mod pricing;
pub mod promotions;
/// The PSP port, its simulator and its remote adapter (crate `payments`), under the name
/// checkout's code uses.
pub use payments as psp;
pub mod quotes;
pub mod reconcile;
pub mod slots;
pub mod tax;

pub use api::{CartApi, CheckoutAdminApi, MenuApi, OrderApi};
pub use carts::{CartStorage, Carts, RedisCarts, StoreCarts};
pub use catalog::Catalog;
pub use module::{CheckoutArgs, CheckoutModule};
pub use orders::{Orders, Placement, Settled};
pub use promotions::Promotions;
pub use quotes::{LoyaltyPort, NoLoyalty, Quotes};
