//! Quotes: prices from the menu to the cent, a slow or failing tax hook refuses the quote instead
//! of leaving it untaxed, a closed store refuses it, an empty cart cannot be quoted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use checkout::carts::LineChoice;
use checkout::error::CheckoutError;
use checkout::tax::{TaxError, TaxHook, TaxRequest, TaxResponse};
use checkout::{NoLoyalty, Quotes};
use commerce_api::commerce::checkout::v1::{Fulfillment, FulfillmentMode, SelectedModifier};
use commerce_api::commerce::common::v1::ErrorReason;
use common::{TENANT, World, usd, world};

/// A tax hook that takes `delay` to answer with no tax, or fails.
struct SlowTax {
    delay: Duration,
    fail: bool,
}

#[async_trait]
impl TaxHook for SlowTax {
    async fn tax(&self, request: &TaxRequest) -> Result<TaxResponse, TaxError> {
        tokio::time::sleep(self.delay).await;
        if self.fail {
            return Err(TaxError::Failed("tax service said no".into()));
        }
        checkout::tax::RateTableTax::new(&[]).tax(request).await
    }
}

fn quotes(world: &World, hook: Option<Arc<dyn TaxHook>>) -> Quotes {
    Quotes::new(
        world.carts.clone(),
        world.promotions.clone(),
        Arc::new(NoLoyalty),
        hook,
        Duration::from_millis(200),
        world.store.clone(),
        world.clocks.clone(),
    )
}

async fn cart_with_two_cheesy_burgers(world: &World) -> String {
    let cart = world
        .carts
        .create(TENANT, &world.location, "", None, "cart")
        .await
        .unwrap();
    let choice = LineChoice {
        quantity: 2,
        modifiers: vec![SelectedModifier {
            group_id: "extras".into(),
            option_id: "cheese".into(),
            quantity: 2,
        }],
        ..LineChoice::default()
    };
    world
        .carts
        .add_line(TENANT, &cart.cart_id, &world.burger, &choice, "line")
        .await
        .unwrap();
    cart.cart_id
}

#[tokio::test]
async fn a_quote_prices_from_the_menu_to_the_cent_and_is_stored() {
    let world = world(None).await;
    let cart = cart_with_two_cheesy_burgers(&world).await;
    world
        .carts
        .apply_promotion(TENANT, &cart, "TENOFF")
        .await
        .unwrap();
    let quotes = quotes(&world, None);
    let quote = quotes.quote(TENANT, &cart).await.unwrap();
    // (8.99 + 2 × 1.00 cheese) × 2 = 21.98; 10% off = 2.198 → 2.20; taxable 19.78;
    // 8.875% = 1.7554 → 1.76; total 21.98 − 2.20 + 1.76 = 21.54.
    assert_eq!(quote.items_subtotal, usd(2198));
    assert_eq!(quote.discount_total, usd(220));
    assert_eq!(quote.tax_total, usd(176));
    assert_eq!(quote.total, usd(2154));
    assert_eq!(quote.lines[0].unit_modifiers_price, usd(200));
    assert_eq!(quote.applied_promotions[0].code, "TENOFF");
    assert_eq!(quotes.stored(TENANT, &quote.quote_id).await.unwrap(), quote);
}

#[tokio::test]
async fn a_slow_or_failing_tax_hook_refuses_the_quote() {
    let world = world(None).await;
    let cart = cart_with_two_cheesy_burgers(&world).await;
    for hook in [
        SlowTax {
            delay: Duration::from_millis(1_000),
            fail: false,
        },
        SlowTax {
            delay: Duration::ZERO,
            fail: true,
        },
    ] {
        let refused = quotes(&world, Some(Arc::new(hook)))
            .quote(TENANT, &cart)
            .await;
        assert!(
            matches!(
                refused,
                Err(CheckoutError::Unavailable {
                    reason: ErrorReason::TaxUnavailable,
                    ..
                })
            ),
            "{refused:?}"
        );
    }
    // A prompt hook is used as given (this one charges no tax).
    let hook = SlowTax {
        delay: Duration::ZERO,
        fail: false,
    };
    let quote = quotes(&world, Some(Arc::new(hook)))
        .quote(TENANT, &cart)
        .await
        .unwrap();
    assert_eq!(quote.tax_total, usd(0));
}

#[tokio::test]
async fn a_closed_store_or_an_empty_cart_cannot_be_quoted() {
    let world = world(None).await;
    let empty = world
        .carts
        .create(TENANT, &world.location, "", None, "empty")
        .await
        .unwrap();
    let quotes = quotes(&world, None);
    assert!(matches!(
        quotes.quote(TENANT, &empty.cart_id).await,
        Err(CheckoutError::Precondition {
            reason: ErrorReason::CartEmpty,
            ..
        })
    ));
    let cart = cart_with_two_cheesy_burgers(&world).await;
    // The store opens on Mondays only; ask for the order on Tuesday at noon.
    let now = world.clocks.now(TENANT).await.unwrap().now_ms;
    let tuesday = Fulfillment {
        mode: FulfillmentMode::Pickup as i32,
        requested_time: Some(prost_types::Timestamp {
            seconds: (now + 86_400_000) / 1000,
            nanos: 0,
        }),
        details: None,
    };
    world
        .carts
        .set_fulfillment(TENANT, &cart, tuesday)
        .await
        .unwrap();
    assert!(matches!(
        quotes.quote(TENANT, &cart).await,
        Err(CheckoutError::Precondition {
            reason: ErrorReason::StoreClosed,
            ..
        })
    ));
}

#[tokio::test]
async fn amounts_past_their_bounds_are_refused_by_the_engines_without_validation() {
    use checkout::Catalog;
    use commerce_api::commerce::checkout::v1::{Location, MenuItem, Tip, tip};
    let world = world(None).await;
    let catalog = Catalog::new(world.store.clone(), world.clocks.clone());
    // The location: 100000 % tip headroom would let a $10.89 order authorize $10,900.89.
    let location = Location {
        display_name: "Greedy".into(),
        time_zone: "UTC".into(),
        currency_code: "USD".into(),
        fulfillment_modes: vec![FulfillmentMode::Pickup as i32],
        tip_headroom_percent: 100_000,
        ..Location::default()
    };
    let refused = catalog.create_location(TENANT, &location, "greedy").await;
    assert!(
        matches!(&refused, Err(CheckoutError::Invalid { field, .. }) if field == "location.tip_headroom_percent"),
        "{refused:?}"
    );
    let priceless = MenuItem {
        sku: "X-1".into(),
        display_name: "Everything".into(),
        base_price: usd(i64::MAX),
        active: true,
        ..MenuItem::default()
    };
    assert!(matches!(
        catalog.create_item(TENANT, &priceless, "x").await,
        Err(CheckoutError::Invalid { field, .. }) if field == "item.base_price.amount_minor"
    ));

    // Quantities of -5 and 1,000,000 (the bypass) and a tip of i64::MAX.
    let cart = world
        .carts
        .create(TENANT, &world.location, "", None, "bounds")
        .await
        .unwrap();
    for quantity in [-5, 1_000_000] {
        let choice = LineChoice {
            quantity,
            ..LineChoice::default()
        };
        assert!(matches!(
            world.carts.add_line(TENANT, &cart.cart_id, &world.burger, &choice, "l").await,
            Err(CheckoutError::Invalid { field, .. }) if field == "quantity"
        ));
    }
    let tip = Tip {
        kind: Some(tip::Kind::Amount(usd(i64::MAX).unwrap())),
    };
    assert!(matches!(
        world.carts.set_tip(TENANT, &cart.cart_id, Some(tip)).await,
        Err(CheckoutError::Invalid { field, .. }) if field == "tip.amount.amount_minor"
    ));
    assert!(
        world
            .carts
            .get(TENANT, &cart.cart_id)
            .await
            .unwrap()
            .lines
            .is_empty()
    );

    // Each price at the bound, but 99 of them: a total past 10^12 is out of range, not a charge.
    let largest = MenuItem {
        sku: "X-2".into(),
        display_name: "Largest".into(),
        base_price: usd(platform::limits::MAX_AMOUNT_MINOR),
        active: true,
        ..MenuItem::default()
    };
    let largest = catalog
        .create_item(TENANT, &largest, "largest")
        .await
        .unwrap();
    let choice = LineChoice {
        quantity: 99,
        ..LineChoice::default()
    };
    world
        .carts
        .add_line(TENANT, &cart.cart_id, &largest.item_id, &choice, "big")
        .await
        .unwrap();
    assert!(matches!(
        quotes(&world, None).quote(TENANT, &cart.cart_id).await,
        Err(CheckoutError::OutOfRange { .. })
    ));
}
