//! The kitchen's moves of a placed order: placed → accepted → in preparation → ready →
//! completed, one step at a time. Completing an order captured on completion captures it.

use commerce_api::commerce::checkout::v1::{
    Order, OrderStatus, OrderStatusChange, OrderStatusChanged,
};
use commerce_api::commerce::common::v1::ErrorReason;
use platform::units::timestamp_of_ms;

use super::records::capture_due;
use super::{Orders, Recorded, precondition};
use crate::error::CheckoutError;

impl Orders {
    /// Moves the order forward in the kitchen; the same status again is a no-op; anything else
    /// than the next step is `ORDER_TRANSITION_INVALID`.
    pub async fn advance_status(
        &self,
        tenant: &str,
        order_id: &str,
        status: OrderStatus,
    ) -> Result<Order, CheckoutError> {
        let now = self.clocks.now_ms(tenant).await?;
        let order = self
            .update_order(tenant, order_id, now, None, Recorded::Nothing, |order| {
                move_to(order, status, now)
            })
            .await?;
        if !capture_due(&order) {
            return Ok(order);
        }
        // Completed with its capture due: capture now; on failure the order stays completed
        // and authorized, and the background round captures it.
        match self.capture(tenant, order_id).await {
            Ok(captured) => Ok(captured),
            Err(error) => {
                tracing::warn!(%error, order = %order_id, "checkout: capture on completion failed; the background round retries it");
                Ok(order)
            }
        }
    }
}

/// The status after `current` in the kitchen (`Unspecified`: none).
fn next_status(current: OrderStatus) -> OrderStatus {
    match current {
        OrderStatus::Placed => OrderStatus::Accepted,
        OrderStatus::Accepted => OrderStatus::InPreparation,
        OrderStatus::InPreparation => OrderStatus::Ready,
        OrderStatus::Ready => OrderStatus::Completed,
        _ => OrderStatus::Unspecified,
    }
}

/// Moves the order to `status` `now` and names its `OrderStatusChanged`; `None` when it is
/// there already.
fn move_to(
    order: &mut Order,
    status: OrderStatus,
    now: i64,
) -> Result<Option<OrderStatusChanged>, CheckoutError> {
    let current = OrderStatus::try_from(order.status).unwrap_or_default();
    if current == status {
        return Ok(None);
    }
    if status != next_status(current) {
        return Err(precondition(
            ErrorReason::OrderTransitionInvalid,
            format!(
                "an order {} cannot move to {}",
                current.as_str_name(),
                status.as_str_name()
            ),
        ));
    }
    order.status = status as i32;
    order.status_history.push(OrderStatusChange {
        status: status as i32,
        change_time: Some(timestamp_of_ms(now)),
        reason: String::new(),
    });
    Ok(Some(OrderStatusChanged {
        order_id: order.order_id.clone(),
        previous_status: current as i32,
        status: status as i32,
        change_time: Some(timestamp_of_ms(now)),
    }))
}
