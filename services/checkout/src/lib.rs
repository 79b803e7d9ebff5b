//! The checkout service: where money moves. Locations and their menus (prices always from here),
//! and the payment service provider port with its simulator. Carts, quotes, the order saga and
//! orders build on these.

pub mod api;
pub mod catalog;
pub mod error;
pub mod hours;
pub mod psp;

pub use api::MenuApi;
pub use catalog::Catalog;
