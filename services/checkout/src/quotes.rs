//! Quoting a cart: prices from the menu (never from the caller), the cart's promotion codes,
//! the loyalty reward's value, tax from the tax hook (a slow or failing hook fails the quote with
//! `TAX_UNAVAILABLE`, never an untaxed price), the tip, and the promised time. The quote is
//! stored so `PlaceOrder` can accept exactly these amounts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use commerce_api::commerce::checkout::v1::{Cart, Location, Quote, Tip, tip};
use commerce_api::commerce::common::v1::ErrorReason;
use commerce_api::commerce::loyalty::v1::{Reward, reward::Benefit};
use platform::clock::Clocks;
use platform::units::{ms_of_timestamp, timestamp_of_ms};
use store::{AggregateKey, Commit, Store};

use crate::carts::Carts;
use crate::catalog;
use crate::error::CheckoutError;
use crate::hours;
use crate::pricing::{self, LineInput, PricingError, PromotionKind, RewardBenefit, TipInput};
use crate::promotions::{Discount, Promotions};
use crate::tax::{RateTableTax, TaxError, TaxHook, TaxRequest, tax_with_deadline};

const QUOTE: &str = "checkout_quote";

/// How long a quote may be accepted by `PlaceOrder`.
const QUOTE_TTL_MS: i64 = 10 * 60 * 1000;

/// The loyalty service as checkout needs it: reward values for quotes, and the redemption hold
/// the order saga places, posts and voids (an adapter over the loyalty service).
#[async_trait]
pub trait LoyaltyPort: Send + Sync {
    /// The reward, if it exists.
    async fn reward(&self, tenant: &str, reward_id: &str) -> Result<Option<Reward>, CheckoutError>;
    /// Holds the reward's points for the order; idempotent by `key`. Returns the redemption id.
    async fn hold(
        &self,
        tenant: &str,
        member_id: &str,
        reward_id: &str,
        order_id: &str,
        key: &str,
    ) -> Result<String, CheckoutError>;
    /// Posts the hold (the order is paid); a repeat is a no-op.
    async fn commit(&self, tenant: &str, redemption_id: &str) -> Result<(), CheckoutError>;
    /// Voids the hold (the order failed); a repeat is a no-op.
    async fn void(&self, tenant: &str, redemption_id: &str) -> Result<(), CheckoutError>;
    /// Returns a posted redemption's points (the paid order was canceled); a repeat is a no-op.
    async fn reverse(&self, tenant: &str, redemption_id: &str) -> Result<(), CheckoutError>;
    /// The customer id of loyalty member `member_id`, `None` when there is no such member: a
    /// customer may put only their own membership on a cart. Without an adapter that can tell,
    /// no member belongs to anyone (customers cannot attach one; staff still can).
    async fn member_customer(
        &self,
        _tenant: &str,
        _member_id: &str,
    ) -> Result<Option<String>, CheckoutError> {
        Ok(None)
    }
}

/// No loyalty service: rewards never apply, and no order can redeem one.
pub struct NoLoyalty;

#[async_trait]
impl LoyaltyPort for NoLoyalty {
    async fn reward(&self, _: &str, _: &str) -> Result<Option<Reward>, CheckoutError> {
        Ok(None)
    }
    async fn hold(
        &self,
        _: &str,
        _: &str,
        reward_id: &str,
        _: &str,
        _: &str,
    ) -> Result<String, CheckoutError> {
        Err(CheckoutError::NotFound {
            resource: "reward",
            id: reward_id.to_owned(),
        })
    }
    async fn commit(&self, _: &str, _: &str) -> Result<(), CheckoutError> {
        Ok(())
    }
    async fn void(&self, _: &str, _: &str) -> Result<(), CheckoutError> {
        Ok(())
    }
    async fn reverse(&self, _: &str, _: &str) -> Result<(), CheckoutError> {
        Ok(())
    }
}

impl From<PricingError> for CheckoutError {
    fn from(error: PricingError) -> Self {
        match error {
            PricingError::Invalid { field, message } => CheckoutError::Invalid { field, message },
            PricingError::Overflow => CheckoutError::OutOfRange {
                what: "cart amounts".into(),
                limit: i64::MAX.to_string(),
            },
        }
    }
}

impl From<TaxError> for CheckoutError {
    fn from(error: TaxError) -> Self {
        tracing::warn!(%error, "checkout: tax hook failed; refusing the quote");
        CheckoutError::Unavailable {
            what: "the tax hook",
            reason: ErrorReason::TaxUnavailable,
        }
    }
}

/// The quoting engine.
#[derive(Clone)]
pub struct Quotes {
    carts: Carts,
    promotions: Promotions,
    loyalty: Arc<dyn LoyaltyPort>,
    tax_hook: Option<Arc<dyn TaxHook>>,
    tax_timeout: Duration,
    store: Arc<dyn Store>,
    clocks: Clocks,
}

impl Quotes {
    /// The customer id of loyalty member `member_id`, when it exists (see
    /// [`LoyaltyPort::member_customer`]).
    pub async fn member_customer(
        &self,
        tenant: &str,
        member_id: &str,
    ) -> Result<Option<String>, CheckoutError> {
        self.loyalty.member_customer(tenant, member_id).await
    }

    /// Quotes of `carts`' carts; `tax_hook` replaces the default rate table of each location.
    pub fn new(
        carts: Carts,
        promotions: Promotions,
        loyalty: Arc<dyn LoyaltyPort>,
        tax_hook: Option<Arc<dyn TaxHook>>,
        tax_timeout: Duration,
        store: Arc<dyn Store>,
        clocks: Clocks,
    ) -> Self {
        Quotes {
            carts,
            promotions,
            loyalty,
            tax_hook,
            tax_timeout,
            store,
            clocks,
        }
    }

    /// Prices the cart now and stores the quote.
    pub async fn quote(&self, tenant: &str, cart_id: &str) -> Result<Quote, CheckoutError> {
        let cart = self.carts.get(tenant, cart_id).await?;
        if cart.lines.is_empty() {
            return Err(CheckoutError::Precondition {
                reason: ErrorReason::CartEmpty,
                message: format!("cart {cart_id} has no lines"),
            });
        }
        let now = self.clocks.now_ms(tenant).await?;
        let location = self
            .carts
            .catalog()
            .location(tenant, &cart.location_id)
            .await?;
        let earliest = promised_time(&cart, &location, now)?;
        let promised = crate::slots::promise(self.store.as_ref(), tenant, &location, earliest, "")
            .await?
            .promised_ms;
        let input = pricing::PricingInput {
            currency_code: cart.currency_code.clone(),
            lines: self.line_inputs(tenant, &cart).await?,
            promotions: self.usable_promotions(tenant, &cart, now),
            reward: self.reward_benefit(tenant, &cart, now).await?,
            fees: Vec::new(),
            tip: tip_input(cart.tip.as_ref()),
            tax: pricing::TaxSource::Rates(Default::default()),
        };
        let priced = self.price(&cart, &location, &input).await?;
        let mut quote = Quote {
            quote_id: uuid::Uuid::now_v7().to_string(),
            cart_id: cart.cart_id.clone(),
            cart_version: cart.version,
            promised_time: Some(timestamp_of_ms(promised)),
            expire_time: Some(timestamp_of_ms(now + QUOTE_TTL_MS)),
            ..Quote::default()
        };
        priced.fill_quote(&mut quote);
        self.store
            .commit(Commit::record(
                AggregateKey::new(tenant, QUOTE, &quote.quote_id),
                0,
                &quote,
            ))
            .await?;
        Ok(quote)
    }

    /// The cart's lines as priced from the menu at its location (`ITEM_UNAVAILABLE` for one no
    /// longer offered), with their modifiers' prices.
    async fn line_inputs(
        &self,
        tenant: &str,
        cart: &Cart,
    ) -> Result<Vec<LineInput>, CheckoutError> {
        let catalog = self.carts.catalog();
        let mut lines = Vec::new();
        for line in &cart.lines {
            let offer = catalog
                .offer(tenant, &line.item_id, &cart.location_id)
                .await?;
            if !offer.available {
                return Err(CheckoutError::Precondition {
                    reason: ErrorReason::ItemUnavailable,
                    message: format!("{} is no longer available", offer.item.display_name),
                });
            }
            let selection = catalog::select(&offer.item, &line.modifiers)?;
            lines.push(LineInput {
                line_id: line.line_id.clone(),
                item_id: line.item_id.clone(),
                display_name: offer.item.display_name.clone(),
                quantity: line.quantity,
                unit_base_minor: offer.price.amount_minor,
                unit_modifiers_minor: selection.unit_price_minor,
                tax_category: offer.item.tax_category.clone(),
            });
        }
        Ok(lines)
    }

    /// The cart's promotion codes still usable `now`; a code that stopped being usable since it
    /// was applied no longer discounts.
    fn usable_promotions(&self, tenant: &str, cart: &Cart, now: i64) -> Vec<pricing::Promotion> {
        cart.promotion_codes
            .iter()
            .filter_map(|code| {
                self.promotions
                    .usable(tenant, code, &cart.location_id, now)
                    .ok()
            })
            .map(|promotion| pricing::Promotion {
                code: promotion.code.clone(),
                description: promotion.description.clone(),
                kind: match promotion.discount {
                    Discount::PercentOff(bps) => PromotionKind::PercentOff { bps },
                    Discount::AmountOff(minor) => PromotionKind::AmountOff { minor },
                },
                min_subtotal_minor: promotion.min_subtotal_minor,
            })
            .collect()
    }

    /// What the cart's loyalty reward takes off, if it exists and applies now.
    async fn reward_benefit(
        &self,
        tenant: &str,
        cart: &Cart,
        now: i64,
    ) -> Result<Option<RewardBenefit>, CheckoutError> {
        let Some(selection) = &cart.loyalty_reward else {
            return Ok(None);
        };
        Ok(self
            .loyalty
            .reward(tenant, &selection.reward_id)
            .await?
            .and_then(|reward| benefit(&reward, &cart.currency_code, now)))
    }

    /// Allocates the discounts, asks the tax hook (the location's rate table when none is set)
    /// within its deadline, and finishes the price, which must stay within the platform's
    /// bounds.
    async fn price(
        &self,
        cart: &Cart,
        location: &Location,
        input: &pricing::PricingInput,
    ) -> Result<pricing::Priced, CheckoutError> {
        let allocated = pricing::allocate(input)?;
        let request = TaxRequest::for_allocation(&cart.location_id, &allocated);
        let default_hook;
        let hook: &dyn TaxHook = match &self.tax_hook {
            Some(hook) => hook.as_ref(),
            None => {
                default_hook = RateTableTax::new(&location.tax_rates);
                &default_hook
            }
        };
        let tax = tax_with_deadline(hook, &request, self.tax_timeout).await?;
        let priced = pricing::finish(allocated, &tax.into_tax_source())?;
        crate::limits::total(priced.total_minor)?;
        Ok(priced)
    }

    /// A stored quote.
    pub async fn stored(&self, tenant: &str, quote_id: &str) -> Result<Quote, CheckoutError> {
        let stored = self
            .store
            .load(&AggregateKey::new(tenant, QUOTE, quote_id))
            .await?
            .ok_or_else(|| CheckoutError::NotFound {
                resource: "quote",
                id: quote_id.to_owned(),
            })?;
        Ok(stored.decode(&format!("quote {quote_id}"))?)
    }
}

/// When the order would be ready: the requested time, or now plus the kitchen's prep time; the
/// store must be open then (`STORE_CLOSED`), and a requested time cannot be sooner than prep
/// allows. (Slot throttling is applied when orders are placed.)
fn promised_time(cart: &Cart, location: &Location, now: i64) -> Result<i64, CheckoutError> {
    let prep_ms = i64::from(location.slot_capacity.map_or(0, |slots| slots.prep_minutes)) * 60_000;
    let earliest = now + prep_ms;
    let promised = cart
        .fulfillment
        .as_ref()
        .and_then(|fulfillment| fulfillment.requested_time)
        .map(|time| ms_of_timestamp(&time))
        .map_or(earliest, |requested| requested.max(earliest));
    let zone = hours::zone(&location.time_zone).ok_or_else(|| {
        CheckoutError::Corrupt(format!(
            "location {} has time zone {}",
            location.location_id, location.time_zone
        ))
    })?;
    if !hours::is_open(&location.opening_hours, &zone, promised) {
        return Err(CheckoutError::Precondition {
            reason: ErrorReason::StoreClosed,
            message: format!("{} is closed at the promised time", location.display_name),
        });
    }
    Ok(promised)
}

fn tip_input(tip: Option<&Tip>) -> TipInput {
    match tip.and_then(|tip| tip.kind.as_ref()) {
        Some(tip::Kind::Amount(amount)) => TipInput::Amount(amount.amount_minor),
        Some(tip::Kind::PercentBps(bps)) => TipInput::PercentBps(i64::from(*bps)),
        None => TipInput::None,
    }
}

/// What a loyalty reward takes off, if it can apply now in this currency.
fn benefit(reward: &Reward, currency: &str, now_ms: i64) -> Option<RewardBenefit> {
    let now = now_ms / 1000;
    let in_window = reward.start_time.is_none_or(|start| start.seconds <= now)
        && reward.end_time.is_none_or(|end| now < end.seconds);
    if !reward.active || !in_window {
        return None;
    }
    match reward.benefit.as_ref()? {
        Benefit::FreeItemId(item_id) => Some(RewardBenefit::FreeItem {
            item_id: item_id.clone(),
        }),
        Benefit::AmountOff(amount) if amount.currency_code == currency => {
            Some(RewardBenefit::AmountOff {
                minor: amount.amount_minor,
            })
        }
        Benefit::AmountOff(_) => None,
        Benefit::PercentOffBps(bps) => Some(RewardBenefit::PercentOff {
            bps: i64::from(*bps),
            max_minor: reward
                .max_discount
                .as_ref()
                .filter(|cap| cap.currency_code == currency)
                .map(|cap| cap.amount_minor),
        }),
    }
}
