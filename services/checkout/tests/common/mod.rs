//! A tenant with one location (open Mondays only, all day, UTC) and a burger with an "extras"
//! modifier group; carts in the given storage.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use checkout::{CartStorage, Carts, Catalog, Promotions, StoreCarts};
use commerce_api::commerce::checkout::v1::{
    FulfillmentMode, Location, MenuItem, ModifierGroup, ModifierOption, OpeningHours, TaxRate,
};
use commerce_api::commerce::common::v1::{DayOfWeek, Money};
use platform::clock::Clocks;
use store::{EmbeddedStore, Store};

pub const TENANT: &str = "t-carts";

pub fn usd(minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor: minor,
    })
}

pub struct World {
    pub store: Arc<dyn Store>,
    pub carts: Carts,
    pub clocks: Clocks,
    pub promotions: Promotions,
    pub location: String,
    pub burger: String,
}

/// Noon UTC on the next Monday (after today), when the location is open: the tenant clock is
/// frozen there so the tests never depend on today's weekday.
pub fn next_monday_noon_ms() -> i64 {
    const DAY: i64 = 86_400_000;
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        / DAY;
    let weekday = (today + 3) % 7; // 1970-01-01 was a Thursday; Monday = 0
    (today + 7 - weekday) * DAY + DAY / 2
}

pub async fn world(storage: Option<Arc<dyn CartStorage>>) -> World {
    world_on(Arc::new(EmbeddedStore::in_memory().unwrap()), storage).await
}

/// The same world on `store` (a wrapper around a real store, say).
pub async fn world_on(store: Arc<dyn Store>, storage: Option<Arc<dyn CartStorage>>) -> World {
    let clocks = Clocks::new(store.clone());
    clocks.advance(TENANT, next_monday_noon_ms()).await.unwrap();
    let catalog = Catalog::new(store.clone(), clocks.clone());
    let location = Location {
        display_name: "Main".into(),
        time_zone: "UTC".into(),
        currency_code: "USD".into(),
        opening_hours: vec![OpeningHours {
            day: DayOfWeek::Monday as i32,
            open_minute: 0,
            close_minute: 1440,
        }],
        fulfillment_modes: vec![FulfillmentMode::Pickup as i32],
        tax_rates: vec![TaxRate {
            tax_category: "food".into(),
            rate_ppm: 88_750,
        }],
        ..Location::default()
    };
    let location = catalog
        .create_location(TENANT, &location, "loc")
        .await
        .unwrap()
        .location_id;
    let burger = MenuItem {
        sku: "B-1".into(),
        display_name: "Burger".into(),
        base_price: usd(899),
        tax_category: "food".into(),
        modifier_groups: vec![ModifierGroup {
            group_id: "extras".into(),
            display_name: "Extras".into(),
            min_selections: 0,
            max_selections: 3,
            allow_repeats: true,
            options: vec![ModifierOption {
                option_id: "cheese".into(),
                display_name: "Cheese".into(),
                price: usd(100),
                available: true,
                ..ModifierOption::default()
            }],
        }],
        active: true,
        ..MenuItem::default()
    };
    let burger = catalog
        .create_item(TENANT, &burger, "burger")
        .await
        .unwrap()
        .item_id;
    let promotions = Promotions::from_json(&format!(
        r#"{{"promotions": [{{"tenant": "{TENANT}", "code": "TENOFF", "percent_off_bps": 1000}},
                            {{"tenant": "{TENANT}", "code": "ELSEWHERE", "amount_off_minor": 100, "location_ids": ["loc-other"]}}]}}"#
    ))
    .unwrap();
    let storage = storage.unwrap_or_else(|| Arc::new(StoreCarts(store.clone())));
    let carts = Carts::new(
        storage,
        catalog,
        promotions.clone(),
        clocks.clone(),
        Duration::from_secs(3600),
    );
    World {
        store,
        carts,
        promotions,
        clocks,
        location,
        burger,
    }
}
