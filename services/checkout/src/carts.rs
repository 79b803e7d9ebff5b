//! Carts: short-lived, changed often, priced from the menu. Kept in Redis with a time to live
//! when Redis is configured (`fastpath::TtlRecords`), in the store otherwise; both behind
//! [`CartStorage`] with compare-and-set on a version, so two tabs editing one cart never lose a
//! change. A cart expires `ttl` after its last change (`CART_EXPIRED`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use commerce_api::commerce::checkout::v1::{
    AddCartLineResponse, Cart, CartLine, CreateCartResponse, Fulfillment, FulfillmentMode,
    LoyaltyRewardSelection, SelectedModifier, Tip, fulfillment::Details, tip,
};
use commerce_api::commerce::common::v1::ErrorReason;
use platform::clock::Clocks;
use platform::interceptors::IdempotencyContext;
use prost::Message as _;
use store::{AggregateKey, Commit, IdempotencyRecord, Store, StoreError};

use crate::catalog::{self, Catalog};
use crate::error::CheckoutError;
use crate::limits;
use crate::promotions::Promotions;

/// Extra time an expired cart is kept, so callers get `CART_EXPIRED` rather than `NOT_FOUND`.
const EXPIRED_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Attempts of a read-modify-write before reporting the conflict.
const ATTEMPTS: usize = 16;

/// Reads the cart into `$cart`, runs the body (an async block that may `return Err(..)` or use
/// `?`), and writes the cart back, re-reading and re-running on a lost race. With `$record`, the
/// write carries `$record(&cart as written)` (see [`Carts::save`]).
macro_rules! change_cart {
    ($carts:expr, $tenant:expr, $cart_id:expr, |$cart:ident| $body:block) => {
        change_cart!($carts, $tenant, $cart_id, |$cart| $body, |_: &Cart| None)
    };
    ($carts:expr, $tenant:expr, $cart_id:expr, |$cart:ident| $body:block, $record:expr) => {{
        let record = $record;
        let mut outcome = None;
        for _ in 0..ATTEMPTS {
            let (version, mut $cart) = $carts.load($tenant, $cart_id).await?;
            let changed: Result<(), CheckoutError> = async { $body }.await;
            changed?;
            let now = $carts.now_ms($tenant).await?;
            match $carts.save($tenant, version, $cart, now, &record).await {
                Err(error) if error.is_conflict() => outcome = Some(Err(error)),
                done => {
                    outcome = Some(done);
                    break;
                }
            }
        }
        outcome.expect("at least one attempt")
    }};
}

/// Where carts live: versioned records with a time to live.
#[async_trait]
pub trait CartStorage: Send + Sync {
    /// The cart record and its version.
    async fn load(
        &self,
        tenant: &str,
        cart_id: &str,
    ) -> Result<Option<(u64, Bytes)>, CheckoutError>;
    /// Writes the record if it is at `expected_version` (0 creates); keeps it at least `ttl`.
    /// `idempotency` is the record of the call's response, written in the same atomic commit
    /// where the storage is the store.
    async fn save(
        &self,
        tenant: &str,
        cart_id: &str,
        expected_version: u64,
        data: Bytes,
        ttl: Duration,
        idempotency: Option<IdempotencyRecord>,
    ) -> Result<u64, CheckoutError>;
}

/// Carts in Redis, gone after their TTL without a cleanup job.
pub struct RedisCarts(pub fastpath::TtlRecords);

fn redis_failed(error: fastpath::RecordError) -> CheckoutError {
    match error {
        fastpath::RecordError::Conflict {
            key,
            expected,
            found,
        } => CheckoutError::Store(StoreError::Conflict {
            key,
            expected,
            found,
        }),
        fastpath::RecordError::Backend(error) => {
            tracing::warn!(%error, "carts: Redis failed");
            CheckoutError::Unavailable {
                what: "cart storage",
                reason: ErrorReason::DependencyUnavailable,
            }
        }
    }
}

#[async_trait]
impl CartStorage for RedisCarts {
    async fn load(
        &self,
        tenant: &str,
        cart_id: &str,
    ) -> Result<Option<(u64, Bytes)>, CheckoutError> {
        self.0
            .load(&format!("cart:{{{tenant}}}:{cart_id}"))
            .await
            .map_err(redis_failed)
    }

    /// Redis and the store cannot commit together, so `_idempotency` is left to the idempotency
    /// layer, which records the reply after it: a crash in between lets a retry run again, and
    /// it changes nothing, as the cart's id and a line's id derive from the key.
    async fn save(
        &self,
        tenant: &str,
        cart_id: &str,
        expected_version: u64,
        data: Bytes,
        ttl: Duration,
        _idempotency: Option<IdempotencyRecord>,
    ) -> Result<u64, CheckoutError> {
        self.0
            .save(
                &format!("cart:{{{tenant}}}:{cart_id}"),
                expected_version,
                &data,
                ttl,
            )
            .await
            .map_err(redis_failed)
    }
}

/// Carts in the store (no Redis): expiry is checked on read; expired carts stay stored.
pub struct StoreCarts(pub Arc<dyn Store>);

#[async_trait]
impl CartStorage for StoreCarts {
    async fn load(
        &self,
        tenant: &str,
        cart_id: &str,
    ) -> Result<Option<(u64, Bytes)>, CheckoutError> {
        let stored = self
            .0
            .load(&AggregateKey::new(tenant, "checkout_cart", cart_id))
            .await?;
        Ok(stored.map(|stored| (stored.version, stored.data)))
    }

    async fn save(
        &self,
        tenant: &str,
        cart_id: &str,
        expected_version: u64,
        data: Bytes,
        _ttl: Duration,
        idempotency: Option<IdempotencyRecord>,
    ) -> Result<u64, CheckoutError> {
        Ok(self
            .0
            .commit(Commit {
                key: AggregateKey::new(tenant, "checkout_cart", cart_id),
                expected_version,
                data,
                index: Vec::new(),
                events: Vec::new(),
                idempotency,
            })
            .await?)
    }
}

fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn ms_of(time: &prost_types::Timestamp) -> i64 {
    time.seconds * 1000 + i64::from(time.nanos) / 1_000_000
}

fn precondition(reason: ErrorReason, message: impl Into<String>) -> CheckoutError {
    CheckoutError::Precondition {
        reason,
        message: message.into(),
    }
}

/// What the customer chose for a line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineChoice {
    /// How many, 1..99.
    pub quantity: i32,
    /// Modifier options; groups not mentioned get their defaults.
    pub modifiers: Vec<SelectedModifier>,
    /// Kitchen note.
    pub special_instructions: String,
}

/// The cart engine.
#[derive(Clone)]
pub struct Carts {
    storage: Arc<dyn CartStorage>,
    catalog: Catalog,
    promotions: Promotions,
    clocks: Clocks,
    ttl: Duration,
}

impl Carts {
    /// Carts in `storage`, priced from `catalog`, expiring `ttl` after their last change.
    pub fn new(
        storage: Arc<dyn CartStorage>,
        catalog: Catalog,
        promotions: Promotions,
        clocks: Clocks,
        ttl: Duration,
    ) -> Self {
        Carts {
            storage,
            catalog,
            promotions,
            clocks,
            ttl,
        }
    }

    /// The catalog carts are priced from.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    async fn now_ms(&self, tenant: &str) -> Result<i64, CheckoutError> {
        Ok(self.clocks.now(tenant).await?.now_ms)
    }

    /// Creates a cart at a location; its id derives from `id_key` (the idempotency key).
    pub async fn create(
        &self,
        tenant: &str,
        location_id: &str,
        customer_id: &str,
        fulfillment: Option<Fulfillment>,
        id_key: &str,
    ) -> Result<Cart, CheckoutError> {
        self.create_recording(tenant, location_id, customer_id, fulfillment, id_key, None)
            .await
    }

    /// [`Carts::create`], with the `CreateCartResponse` carrying the new cart recorded under
    /// `idempotency` in the write that creates it (see [`CartStorage::save`]). A call that finds
    /// the cart made, or fails, records nothing here: the idempotency layer records its answer.
    pub async fn create_recording(
        &self,
        tenant: &str,
        location_id: &str,
        customer_id: &str,
        fulfillment: Option<Fulfillment>,
        id_key: &str,
        idempotency: Option<&IdempotencyContext>,
    ) -> Result<Cart, CheckoutError> {
        let cart_id = format!("cart-{}", &id_key[..id_key.len().min(24)]);
        if let Some((_, data)) = self.storage.load(tenant, &cart_id).await? {
            return decode(&data);
        }
        let location = self.catalog.location(tenant, location_id).await?;
        let fulfillment = fulfillment.unwrap_or(Fulfillment {
            mode: FulfillmentMode::Pickup as i32,
            ..Fulfillment::default()
        });
        check_fulfillment(&fulfillment, &location)?;
        let now = self.now_ms(tenant).await?;
        let cart = Cart {
            cart_id: cart_id.clone(),
            location_id: location_id.to_owned(),
            customer_id: customer_id.to_owned(),
            fulfillment: Some(fulfillment),
            currency_code: location.currency_code.clone(),
            create_time: Some(timestamp_ms(now)),
            ..Cart::default()
        };
        let record = |cart: &Cart| {
            idempotency.map(|context| {
                context.record(&CreateCartResponse {
                    cart: Some(cart.clone()),
                })
            })
        };
        match self.save(tenant, 0, cart, now, record).await {
            Err(error) if error.is_conflict() => self.get(tenant, &cart_id).await,
            outcome => outcome,
        }
    }

    /// A cart; `CART_EXPIRED` once its time has passed.
    pub async fn get(&self, tenant: &str, cart_id: &str) -> Result<Cart, CheckoutError> {
        let (_, cart) = self.load(tenant, cart_id).await?;
        Ok(cart)
    }

    async fn load(&self, tenant: &str, cart_id: &str) -> Result<(u64, Cart), CheckoutError> {
        let (version, data) =
            self.storage
                .load(tenant, cart_id)
                .await?
                .ok_or_else(|| CheckoutError::NotFound {
                    resource: "cart",
                    id: cart_id.to_owned(),
                })?;
        let cart = decode(&data)?;
        let now = self.now_ms(tenant).await?;
        if cart
            .expire_time
            .as_ref()
            .is_some_and(|expire| ms_of(expire) <= now)
        {
            return Err(precondition(
                ErrorReason::CartExpired,
                format!("cart {cart_id} has expired"),
            ));
        }
        Ok((version, cart))
    }

    /// Writes the cart's next version with its expiry renewed, and `record` of it as written:
    /// the idempotency record of a response showing the cart.
    async fn save(
        &self,
        tenant: &str,
        expected: u64,
        mut cart: Cart,
        now: i64,
        record: impl Fn(&Cart) -> Option<IdempotencyRecord>,
    ) -> Result<Cart, CheckoutError> {
        let ttl_ms = self.ttl.as_millis() as i64;
        cart.version = expected as i64 + 1;
        cart.update_time = Some(timestamp_ms(now));
        cart.expire_time = Some(timestamp_ms(now + ttl_ms));
        let data = Bytes::from(cart.encode_to_vec());
        self.storage
            .save(
                tenant,
                &cart.cart_id,
                expected,
                data,
                self.ttl + EXPIRED_GRACE,
                record(&cart),
            )
            .await?;
        Ok(cart)
    }

    /// Adds a line of `item_id` (its id derives from `id_key`, so a retried add does not add
    /// twice).
    pub async fn add_line(
        &self,
        tenant: &str,
        cart_id: &str,
        item_id: &str,
        choice: &LineChoice,
        id_key: &str,
    ) -> Result<(Cart, String), CheckoutError> {
        self.add_line_recording(tenant, cart_id, item_id, choice, id_key, None)
            .await
    }

    /// [`Carts::add_line`], with the `AddCartLineResponse` carrying the returned cart and line
    /// recorded under `idempotency` in the write that adds the line (see
    /// [`CartStorage::save`]). A failure records nothing here: the idempotency layer records it.
    pub async fn add_line_recording(
        &self,
        tenant: &str,
        cart_id: &str,
        item_id: &str,
        choice: &LineChoice,
        id_key: &str,
        idempotency: Option<&IdempotencyContext>,
    ) -> Result<(Cart, String), CheckoutError> {
        limits::line(choice.quantity, &choice.modifiers)?;
        let line_id = format!("line-{}", &id_key[..id_key.len().min(16)]);
        let record = |cart: &Cart| {
            idempotency.map(|context| {
                context.record(&AddCartLineResponse {
                    cart: Some(cart.clone()),
                    line_id: line_id.clone(),
                })
            })
        };
        let cart = change_cart!(
            self,
            tenant,
            cart_id,
            |cart| {
                if !cart
                    .lines
                    .iter()
                    .any(|existing| existing.line_id == line_id)
                {
                    let modifiers = self
                        .checked_line(tenant, &cart, item_id, &choice.modifiers)
                        .await?;
                    cart.lines.push(CartLine {
                        line_id: line_id.clone(),
                        item_id: item_id.to_owned(),
                        quantity: choice.quantity,
                        modifiers,
                        special_instructions: choice.special_instructions.clone(),
                    });
                }
                Ok(())
            },
            record
        )?;
        Ok((cart, line_id))
    }

    /// Replaces a line's quantity, modifiers and instructions.
    pub async fn update_line(
        &self,
        tenant: &str,
        cart_id: &str,
        line_id: &str,
        choice: &LineChoice,
    ) -> Result<Cart, CheckoutError> {
        limits::line(choice.quantity, &choice.modifiers)?;
        change_cart!(self, tenant, cart_id, |cart| {
            let index = cart
                .lines
                .iter()
                .position(|line| line.line_id == line_id)
                .ok_or_else(|| CheckoutError::NotFound {
                    resource: "cart line",
                    id: line_id.to_owned(),
                })?;
            let item_id = cart.lines[index].item_id.clone();
            let modifiers = self
                .checked_line(tenant, &cart, &item_id, &choice.modifiers)
                .await?;
            let line = &mut cart.lines[index];
            line.quantity = choice.quantity;
            line.modifiers = modifiers;
            line.special_instructions
                .clone_from(&choice.special_instructions);
            Ok(())
        })
    }

    /// Removes a line; a line already gone is fine.
    pub async fn remove_line(
        &self,
        tenant: &str,
        cart_id: &str,
        line_id: &str,
    ) -> Result<Cart, CheckoutError> {
        change_cart!(self, tenant, cart_id, |cart| {
            cart.lines.retain(|line| line.line_id != line_id);
            Ok(())
        })
    }

    /// Applies a promotion code (case-insensitive); `PROMOTION_INVALID` when unknown, outside
    /// its window or not offered at the cart's location; applying it twice is a no-op.
    pub async fn apply_promotion(
        &self,
        tenant: &str,
        cart_id: &str,
        code: &str,
    ) -> Result<Cart, CheckoutError> {
        let code = code.to_uppercase();
        change_cart!(self, tenant, cart_id, |cart| {
            let now = self.now_ms(tenant).await?;
            self.promotions
                .usable(tenant, &code, &cart.location_id, now)?;
            if !cart.promotion_codes.contains(&code) {
                cart.promotion_codes.push(code.clone());
            }
            Ok(())
        })
    }

    /// Removes a promotion code (absent is fine).
    pub async fn remove_promotion(
        &self,
        tenant: &str,
        cart_id: &str,
        code: &str,
    ) -> Result<Cart, CheckoutError> {
        let code = code.to_uppercase();
        change_cart!(self, tenant, cart_id, |cart| {
            cart.promotion_codes.retain(|applied| *applied != code);
            Ok(())
        })
    }

    /// Sets or clears the loyalty member and the reward to redeem.
    pub async fn set_loyalty_reward(
        &self,
        tenant: &str,
        cart_id: &str,
        member_id: &str,
        reward: Option<LoyaltyRewardSelection>,
    ) -> Result<Cart, CheckoutError> {
        if member_id.is_empty() && reward.is_some() {
            return Err(CheckoutError::invalid(
                "member_id",
                "a reward needs the member redeeming it",
            ));
        }
        change_cart!(self, tenant, cart_id, |cart| {
            cart.member_id = member_id.to_owned();
            cart.loyalty_reward.clone_from(&reward);
            Ok(())
        })
    }

    /// Sets the fulfilment; `FULFILLMENT_INVALID` when the location does not offer the mode or
    /// its details are missing.
    pub async fn set_fulfillment(
        &self,
        tenant: &str,
        cart_id: &str,
        fulfillment: Fulfillment,
    ) -> Result<Cart, CheckoutError> {
        change_cart!(self, tenant, cart_id, |cart| {
            let location = self.catalog.location(tenant, &cart.location_id).await?;
            check_fulfillment(&fulfillment, &location)?;
            cart.fulfillment = Some(fulfillment.clone());
            Ok(())
        })
    }

    /// Sets or clears the tip; an amount must be in the cart's currency.
    pub async fn set_tip(
        &self,
        tenant: &str,
        cart_id: &str,
        tip: Option<Tip>,
    ) -> Result<Cart, CheckoutError> {
        if let Some(tip) = &tip {
            limits::cart_tip(tip)?;
        }
        change_cart!(self, tenant, cart_id, |cart| {
            if let Some(Tip {
                kind: Some(tip::Kind::Amount(amount)),
            }) = &tip
                && (amount.currency_code != cart.currency_code || amount.amount_minor < 0)
            {
                return Err(CheckoutError::invalid(
                    "tip.amount",
                    format!("must be a non-negative amount in {}", cart.currency_code),
                ));
            }
            cart.tip.clone_from(&tip);
            Ok(())
        })
    }

    /// Checks a line's item is offered at the cart's location and its modifier choices fit
    /// the item's groups; returns the resolved choices.
    async fn checked_line(
        &self,
        tenant: &str,
        cart: &Cart,
        item_id: &str,
        modifiers: &[SelectedModifier],
    ) -> Result<Vec<SelectedModifier>, CheckoutError> {
        let offer = self
            .catalog
            .offer(tenant, item_id, &cart.location_id)
            .await?;
        if !offer.available {
            return Err(precondition(
                ErrorReason::ItemUnavailable,
                format!("{item_id} is not available at {}", cart.location_id),
            ));
        }
        Ok(catalog::select(&offer.item, modifiers)?.modifiers)
    }
}

fn decode(data: &[u8]) -> Result<Cart, CheckoutError> {
    Cart::decode(data).map_err(|error| CheckoutError::Corrupt(format!("cart: {error}")))
}

/// The fulfilment must be offered at the location and carry what its mode needs.
pub fn check_fulfillment(
    fulfillment: &Fulfillment,
    location: &commerce_api::commerce::checkout::v1::Location,
) -> Result<(), CheckoutError> {
    let mode = FulfillmentMode::try_from(fulfillment.mode).unwrap_or_default();
    if mode == FulfillmentMode::Unspecified
        || !location.fulfillment_modes.contains(&fulfillment.mode)
    {
        return Err(precondition(
            ErrorReason::FulfillmentInvalid,
            format!(
                "{} does not offer {}",
                location.location_id,
                mode.as_str_name()
            ),
        ));
    }
    let details_ok = match mode {
        FulfillmentMode::Curbside => matches!(fulfillment.details, Some(Details::Curbside(_))),
        FulfillmentMode::Delivery => matches!(fulfillment.details, Some(Details::Delivery(_))),
        _ => true,
    };
    if !details_ok {
        return Err(precondition(
            ErrorReason::FulfillmentInvalid,
            format!(
                "{} needs its details (curbside: vehicle, delivery: address)",
                mode.as_str_name()
            ),
        ));
    }
    Ok(())
}
