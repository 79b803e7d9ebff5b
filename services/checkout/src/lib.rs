//! The checkout service: where money moves. Locations and their menus (prices always from here),
//! carts, quotes (pricing with the documented rounding rule, a tax hook port), and the payment
//! service provider port with its simulator. The order saga and orders build on these.

pub mod api;
pub mod carts;
pub mod catalog;
pub mod error;
pub mod hours;
mod limits;
pub mod loyalty_remote;
pub mod module;
pub mod orders;
pub mod pricing;
pub mod promotions;
/// The PSP port and simulator (crate `payments`), under the name checkout's code uses.
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
