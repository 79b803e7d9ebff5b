//! Kitchen throttling: each location takes at most `max_orders_per_slot` orders per
//! `slot_minutes` slot. A full slot either moves the promise to the next slot with room (while
//! the store is open; `shift_when_full`) or refuses with `SLOT_FULL` and the next free time.
//! A slot's record lists its orders, so reserving is a compare-and-set that counts an order once
//! however often its placement is retried.

use commerce_api::commerce::checkout::v1::Location;
use store::{AggregateKey, Commit, Store};

use crate::error::CheckoutError;
use crate::hours;

const SLOT: &str = "checkout_slot";

/// How far ahead a full slot is shifted at most (slots).
const MAX_SHIFT: i64 = 96;

#[derive(Clone, PartialEq, prost::Message)]
struct SlotRecord {
    /// Orders promised in the slot.
    #[prost(string, repeated, tag = "1")]
    orders: Vec<String>,
}

/// When the order will be ready, and the write that takes its place in the slot (`None` when
/// the location does not throttle or the order already has its place).
#[derive(Debug, Clone)]
pub struct Promise {
    /// Promised ready time, unix ms.
    pub promised_ms: i64,
    /// Commit it with the order.
    pub reservation: Option<Commit>,
}

/// Finds the slot for an order wanted at `wanted_ms` (see the module docs). `order_id` may be
/// empty to only ask (a quote).
pub async fn promise(
    store: &dyn Store,
    tenant: &str,
    location: &Location,
    wanted_ms: i64,
    order_id: &str,
) -> Result<Promise, CheckoutError> {
    let Some(capacity) = location.slot_capacity.filter(|c| c.max_orders_per_slot > 0) else {
        return Ok(Promise {
            promised_ms: wanted_ms,
            reservation: None,
        });
    };
    let slot_ms = i64::from(capacity.slot_minutes.max(1)) * 60_000;
    let first = wanted_ms.div_euclid(slot_ms) * slot_ms;
    let zone = hours::zone(&location.time_zone);
    let mut next_free = None;
    for step in 0..MAX_SHIFT {
        let start = first + step * slot_ms;
        let promised_ms = start.max(wanted_ms);
        if step > 0
            && !zone
                .as_ref()
                .is_some_and(|zone| hours::is_open(&location.opening_hours, zone, promised_ms))
        {
            continue;
        }
        let key = AggregateKey::new(tenant, SLOT, format!("{}:{start}", location.location_id));
        let (version, mut record) = match store.load(&key).await? {
            Some(stored) => (stored.version, stored.decode(&format!("slot {}", key.id))?),
            None => (0, SlotRecord::default()),
        };
        if !order_id.is_empty() && record.orders.iter().any(|id| id == order_id) {
            return Ok(Promise {
                promised_ms,
                reservation: None,
            });
        }
        if record.orders.len() < capacity.max_orders_per_slot as usize {
            if step > 0 && !capacity.shift_when_full {
                next_free = Some(promised_ms);
                break;
            }
            let reservation = (!order_id.is_empty()).then(|| {
                record.orders.push(order_id.to_owned());
                Commit::record(key, version, &record)
            });
            return Ok(Promise {
                promised_ms,
                reservation,
            });
        }
    }
    Err(CheckoutError::SlotFull {
        next_available_ms: next_free,
    })
}
