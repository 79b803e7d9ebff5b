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
use platform::units::{ms_of_timestamp, timestamp_of_ms};
use store::{
    AggregateKey, Commit, IdempotencyRecord, Retry, Store, StoreError, Versioned, retry_on_conflict,
};

use crate::catalog::{self, Catalog};
use crate::error::CheckoutError;
use crate::promotions::Promotions;
use crate::{ids, limits};

/// Extra time an expired cart is kept, so callers get `CART_EXPIRED` rather than `NOT_FOUND`.
const EXPIRED_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How a cart change retries a lost race: one customer's tabs rarely race for long, so a few
/// attempts (each of a concurrent group's writers wins once, so 16 outlast 15 racing others)
/// with short jittered pauses, from 100 µs growing to 5 ms — then `ABORTED` (contended), never a
/// loop without end.
const CART_RETRY: Retry = Retry {
    attempts: 16,
    first_pause: Duration::from_micros(100),
    max_pause: Duration::from_millis(5),
};

/// Where carts live: versioned records with a time to live.
#[async_trait]
pub trait CartStorage: Send + Sync {
    /// The cart record and its version.
    async fn load(&self, tenant: &str, cart_id: &str) -> Result<Option<Versioned>, CheckoutError>;
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
    async fn load(&self, tenant: &str, cart_id: &str) -> Result<Option<Versioned>, CheckoutError> {
        let stored = self
            .0
            .load(&format!("cart:{{{tenant}}}:{cart_id}"))
            .await
            .map_err(redis_failed)?;
        Ok(stored.map(|(version, data)| Versioned { version, data }))
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
    async fn load(&self, tenant: &str, cart_id: &str) -> Result<Option<Versioned>, CheckoutError> {
        Ok(self
            .0
            .load(&AggregateKey::new(tenant, "checkout_cart", cart_id))
            .await?)
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
        let key = AggregateKey::new(tenant, "checkout_cart", cart_id);
        // The record arrives encoded (Redis stores the same bytes).
        let write = Commit {
            data,
            ..Commit::record(key, expected_version, &())
        };
        Ok(self.0.commit(write.answering(idempotency)).await?)
    }
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
        let cart_id = ids::from_key("cart", id_key, 24);
        if let Some(stored) = self.storage.load(tenant, &cart_id).await? {
            return Ok(stored.decode(&format!("cart {cart_id}"))?);
        }
        let location = self.catalog.location(tenant, location_id).await?;
        let fulfillment = fulfillment.unwrap_or(Fulfillment {
            mode: FulfillmentMode::Pickup as i32,
            ..Fulfillment::default()
        });
        check_fulfillment(&fulfillment, &location)?;
        let now = self.clocks.now_ms(tenant).await?;
        let cart = Cart {
            cart_id: cart_id.clone(),
            location_id: location_id.to_owned(),
            customer_id: customer_id.to_owned(),
            fulfillment: Some(fulfillment),
            currency_code: location.currency_code.clone(),
            create_time: Some(timestamp_of_ms(now)),
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
        let stored =
            self.storage
                .load(tenant, cart_id)
                .await?
                .ok_or_else(|| CheckoutError::NotFound {
                    resource: "cart",
                    id: cart_id.to_owned(),
                })?;
        let cart: Cart = stored.decode(&format!("cart {cart_id}"))?;
        let now = self.clocks.now_ms(tenant).await?;
        if cart
            .expire_time
            .as_ref()
            .is_some_and(|expire| ms_of_timestamp(expire) <= now)
        {
            return Err(precondition(
                ErrorReason::CartExpired,
                format!("cart {cart_id} has expired"),
            ));
        }
        Ok((stored.version, cart))
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
        cart.update_time = Some(timestamp_of_ms(now));
        cart.expire_time = Some(timestamp_of_ms(now + ttl_ms));
        let data = Bytes::from(prost::Message::encode_to_vec(&cart));
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

    /// Reads the cart, lets `edit` change it, and writes it back with `record` of it as
    /// written (see [`Carts::save`]). A lost race re-reads the cart and runs `edit` again after
    /// a short jittered pause, up to [`CART_RETRY`]'s attempts; then the change gives up as
    /// contended (`ABORTED`) rather than retry for ever.
    async fn change<Edited>(
        &self,
        tenant: &str,
        cart_id: &str,
        record: impl Fn(&Cart) -> Option<IdempotencyRecord>,
        edit: impl Fn(Cart) -> Edited,
    ) -> Result<Cart, CheckoutError>
    where
        Edited: Future<Output = Result<Cart, CheckoutError>>,
    {
        let (record, edit) = (&record, &edit);
        retry_on_conflict(CART_RETRY, || async move {
            let (version, cart) = self.load(tenant, cart_id).await?;
            let cart = edit(cart).await?;
            let now = self.clocks.now_ms(tenant).await?;
            self.save(tenant, version, cart, now, record).await
        })
        .await
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
        let line_id = ids::from_key("line", id_key, 16);
        let record = |cart: &Cart| {
            idempotency.map(|context| {
                context.record(&AddCartLineResponse {
                    cart: Some(cart.clone()),
                    line_id: line_id.clone(),
                })
            })
        };
        let line_id = &line_id;
        let add = |mut cart: Cart| async move {
            if !cart
                .lines
                .iter()
                .any(|existing| existing.line_id == *line_id)
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
            Ok(cart)
        };
        let cart = self.change(tenant, cart_id, record, add).await?;
        Ok((cart, line_id.clone()))
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
        self.change(tenant, cart_id, no_record, |mut cart| async move {
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
            Ok(cart)
        })
        .await
    }

    /// Removes a line; a line already gone is fine.
    pub async fn remove_line(
        &self,
        tenant: &str,
        cart_id: &str,
        line_id: &str,
    ) -> Result<Cart, CheckoutError> {
        self.change(tenant, cart_id, no_record, |mut cart| async move {
            cart.lines.retain(|line| line.line_id != line_id);
            Ok(cart)
        })
        .await
    }

    /// Applies a promotion code (case-insensitive); `PROMOTION_INVALID` when unknown, outside
    /// its window or not offered at the cart's location; applying it twice is a no-op.
    pub async fn apply_promotion(
        &self,
        tenant: &str,
        cart_id: &str,
        code: &str,
    ) -> Result<Cart, CheckoutError> {
        let code = &code.to_uppercase();
        self.change(tenant, cart_id, no_record, |mut cart| async move {
            let now = self.clocks.now_ms(tenant).await?;
            self.promotions
                .usable(tenant, code, &cart.location_id, now)?;
            if !cart.promotion_codes.contains(code) {
                cart.promotion_codes.push(code.clone());
            }
            Ok(cart)
        })
        .await
    }

    /// Removes a promotion code (absent is fine).
    pub async fn remove_promotion(
        &self,
        tenant: &str,
        cart_id: &str,
        code: &str,
    ) -> Result<Cart, CheckoutError> {
        let code = &code.to_uppercase();
        self.change(tenant, cart_id, no_record, |mut cart| async move {
            cart.promotion_codes.retain(|applied| applied != code);
            Ok(cart)
        })
        .await
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
        let reward = &reward;
        self.change(tenant, cart_id, no_record, |mut cart| async move {
            cart.member_id = member_id.to_owned();
            cart.loyalty_reward.clone_from(reward);
            Ok(cart)
        })
        .await
    }

    /// Sets the fulfilment; `FULFILLMENT_INVALID` when the location does not offer the mode or
    /// its details are missing.
    pub async fn set_fulfillment(
        &self,
        tenant: &str,
        cart_id: &str,
        fulfillment: Fulfillment,
    ) -> Result<Cart, CheckoutError> {
        let fulfillment = &fulfillment;
        self.change(tenant, cart_id, no_record, |mut cart| async move {
            let location = self.catalog.location(tenant, &cart.location_id).await?;
            check_fulfillment(fulfillment, &location)?;
            cart.fulfillment = Some(fulfillment.clone());
            Ok(cart)
        })
        .await
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
        let tip = &tip;
        self.change(tenant, cart_id, no_record, |mut cart| async move {
            if let Some(Tip {
                kind: Some(tip::Kind::Amount(amount)),
            }) = tip
                && (amount.currency_code != cart.currency_code || amount.amount_minor < 0)
            {
                return Err(CheckoutError::invalid(
                    "tip.amount",
                    format!("must be a non-negative amount in {}", cart.currency_code),
                ));
            }
            cart.tip.clone_from(tip);
            Ok(cart)
        })
        .await
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

/// The record of a change no idempotency key asks to record.
fn no_record(_: &Cart) -> Option<IdempotencyRecord> {
    None
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
