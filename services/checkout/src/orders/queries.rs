//! Reading orders: one by id, lists newest first, and watching one change.

use std::time::Duration;

use commerce_api::commerce::checkout::v1::{Order, OrderStatus};
use platform::page_token;
use store::{AggregateKey, Pages, Versioned};
use tokio::sync::broadcast::error::RecvError;

use super::records::index;
use super::{ORDER, Orders};
use crate::error::CheckoutError;

/// How often a watcher re-reads for changes made by other replicas.
const WATCH_POLL: Duration = Duration::from_secs(1);

impl Orders {
    /// An order by id.
    /// The customer the cart `cart_id` belongs to (to check a customer places only their own).
    pub async fn cart_owner(&self, tenant: &str, cart_id: &str) -> Result<String, CheckoutError> {
        Ok(self.carts.get(tenant, cart_id).await?.customer_id)
    }

    pub async fn order(&self, tenant: &str, order_id: &str) -> Result<Order, CheckoutError> {
        let stored = self.load_order(tenant, order_id).await?;
        Ok(stored.decode(&format!("order {order_id}"))?)
    }

    /// The stored order `order_id`; `NotFound` when there is none.
    pub(super) async fn load_order(
        &self,
        tenant: &str,
        order_id: &str,
    ) -> Result<Versioned, CheckoutError> {
        self.store
            .load(&AggregateKey::new(tenant, ORDER, order_id))
            .await?
            .ok_or_else(|| CheckoutError::NotFound {
                resource: "order",
                id: order_id.to_owned(),
            })
    }

    /// Orders newest first, filtered by customer, location and statuses.
    pub async fn orders(
        &self,
        tenant: &str,
        customer_id: &str,
        location_id: &str,
        statuses: &[i32],
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<Order>, String), CheckoutError> {
        let scope = format!("orders:{customer_id}:{location_id}:{statuses:?}");
        let start = page_token::decode(&scope, token)?;
        let filter = if !customer_id.is_empty() {
            index("customer", customer_id)
        } else if !location_id.is_empty() {
            index("location", location_id)
        } else {
            index("all", "1")
        };
        let mut pages = Pages::new(self.store.as_ref(), tenant, ORDER, filter, 256).after(start);
        let mut orders = Vec::new();
        while let Some(page) = pages.next().await? {
            for (id, stored) in page {
                let order: Order = stored.decode(&format!("order {id}"))?;
                let keep = (location_id.is_empty() || order.location_id == location_id)
                    && (statuses.is_empty() || statuses.contains(&order.status));
                if keep {
                    orders.push(order);
                    if orders.len() == page_size {
                        return Ok((orders, page_token::encode(&scope, &id)));
                    }
                }
            }
        }
        Ok((orders, String::new()))
    }

    /// The order now, then after every change, until it is completed or canceled (or the
    /// receiver goes away). Changes made in this process arrive at once; others within
    /// `WATCH_POLL`.
    pub async fn watch(
        &self,
        tenant: &str,
        order_id: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<Order>, CheckoutError> {
        let changes = self.changes.subscribe();
        let first = self.order(tenant, order_id).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let orders = self.clone();
        let (tenant, order_id) = (tenant.to_owned(), order_id.to_owned());
        tokio::spawn(async move {
            orders
                .follow(&tenant, &order_id, first, changes, sender)
                .await
        });
        Ok(receiver)
    }

    /// Sends `current`, then each newer version of the order as it changes, until the order is
    /// done or nobody listens.
    async fn follow(
        &self,
        tenant: &str,
        order_id: &str,
        mut current: Order,
        mut changes: tokio::sync::broadcast::Receiver<String>,
        sender: tokio::sync::mpsc::Sender<Order>,
    ) {
        let topic = format!("{tenant}/{order_id}");
        let mut last = current.version;
        loop {
            let done = [OrderStatus::Completed as i32, OrderStatus::Canceled as i32]
                .contains(&current.status);
            if sender.send(current).await.is_err() || done {
                return;
            }
            loop {
                tokio::select! {
                    heard = changes.recv() => match heard {
                        Ok(changed) if changed != topic => continue,
                        // Ours, or we missed some: re-read either way.
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                    () = tokio::time::sleep(WATCH_POLL) => {}
                    () = sender.closed() => return,
                }
                match self.order(tenant, order_id).await {
                    Ok(order) if order.version > last => {
                        last = order.version;
                        current = order;
                        break;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, order = %order_id, "checkout: watch read failed");
                    }
                }
            }
        }
    }
}
