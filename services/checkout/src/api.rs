//! The gRPC handlers of checkout's services (MenuService, CartService, OrderService,
//! CheckoutAdminService): each reads the tenant the platform put on the request, calls the
//! engine, and maps its error once.

use commerce_api::commerce::checkout::v1::{
    self as v1, Cart, cart_service_server::CartService,
    checkout_admin_service_server::CheckoutAdminService, menu_service_server::MenuService,
    order_service_server::OrderService,
};
use platform::ApiError;
use platform::request::{customer, field_mask, idempotency, idempotency_id, page_size, tenant};
use platform::units::ms_of;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

use crate::carts::{Carts, LineChoice};
use crate::catalog::Catalog;
use crate::error::{CheckoutError, ERROR_DOMAIN};
use crate::orders::{Orders, Placement};
use crate::quotes::Quotes;
use crate::reconcile::Period;

type Reply<T> = Result<Response<T>, Status>;

fn fail(error: CheckoutError) -> Status {
    ApiError::from(error).into_status(ERROR_DOMAIN)
}

/// PERMISSION_DENIED / CUSTOMER_NOT_ALLOWED: a customer token asked to act for another customer.
fn customer_mismatch(message: &str) -> Status {
    ApiError::new(
        tonic::Code::PermissionDenied,
        commerce_api::commerce::common::v1::ErrorReason::CustomerNotAllowed,
        message,
    )
    .into_status(ERROR_DOMAIN)
}

/// A customer token acts only on its own customer's carts and orders: another customer's reads
/// as not found, exactly like one that does not exist, so a guessed id reveals nothing.
fn owned_by(
    customer: Option<&str>,
    owner: &str,
    resource: &'static str,
    id: &str,
) -> Result<(), Status> {
    platform::request::owned(customer, owner, || {
        fail(CheckoutError::NotFound {
            resource,
            id: id.to_owned(),
        })
    })
}

/// MenuService over the catalog.
#[derive(Clone)]
pub struct MenuApi {
    catalog: Catalog,
}

impl MenuApi {
    /// Handlers over `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        MenuApi { catalog }
    }
}

#[tonic::async_trait]
impl MenuService for MenuApi {
    async fn create_location(
        &self,
        request: Request<v1::CreateLocationRequest>,
    ) -> Reply<v1::CreateLocationResponse> {
        let tenant = tenant(&request)?;
        let key = idempotency_id(&request);
        let idempotency = idempotency(&request);
        let location = request.into_inner().location.unwrap_or_default();
        // The commit creating the location recorded this very response for the key.
        let location = self
            .catalog
            .create_location_recording(&tenant, &location, &key, idempotency.as_ref())
            .await
            .map_err(fail)?;
        // Fault tests die here: committed, not yet answered.
        platform::failpoint::hit("checkout.create_location.replying");
        Ok(Response::new(v1::CreateLocationResponse {
            location: Some(location),
        }))
    }

    async fn update_location(
        &self,
        request: Request<v1::UpdateLocationRequest>,
    ) -> Reply<v1::UpdateLocationResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let location = self
            .catalog
            .update_location(
                &tenant,
                &body.location.unwrap_or_default(),
                &field_mask(body.update_mask),
                body.expected_version,
            )
            .await
            .map_err(fail)?;
        Ok(Response::new(v1::UpdateLocationResponse {
            location: Some(location),
        }))
    }

    async fn get_location(
        &self,
        request: Request<v1::GetLocationRequest>,
    ) -> Reply<v1::GetLocationResponse> {
        let tenant = tenant(&request)?;
        let location = self
            .catalog
            .location(&tenant, &request.get_ref().location_id)
            .await
            .map_err(fail)?;
        Ok(Response::new(v1::GetLocationResponse {
            location: Some(location),
        }))
    }

    async fn list_locations(
        &self,
        request: Request<v1::ListLocationsRequest>,
    ) -> Reply<v1::ListLocationsResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let (locations, next_page_token) = self
            .catalog
            .locations(&tenant, page_size(body.page_size), &body.page_token)
            .await
            .map_err(fail)?;
        Ok(Response::new(v1::ListLocationsResponse {
            locations,
            next_page_token,
        }))
    }

    async fn create_menu_item(
        &self,
        request: Request<v1::CreateMenuItemRequest>,
    ) -> Reply<v1::CreateMenuItemResponse> {
        let tenant = tenant(&request)?;
        let key = idempotency_id(&request);
        let idempotency = idempotency(&request);
        let item = request.into_inner().item.unwrap_or_default();
        // The commit creating the item recorded this very response for the key.
        let item = self
            .catalog
            .create_item_recording(&tenant, &item, &key, idempotency.as_ref())
            .await
            .map_err(fail)?;
        // Fault tests die here: committed, not yet answered.
        platform::failpoint::hit("checkout.create_menu_item.replying");
        Ok(Response::new(v1::CreateMenuItemResponse {
            item: Some(item),
        }))
    }

    async fn update_menu_item(
        &self,
        request: Request<v1::UpdateMenuItemRequest>,
    ) -> Reply<v1::UpdateMenuItemResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let item = self
            .catalog
            .update_item(
                &tenant,
                &body.item.unwrap_or_default(),
                &field_mask(body.update_mask),
                body.expected_version,
            )
            .await
            .map_err(fail)?;
        Ok(Response::new(v1::UpdateMenuItemResponse {
            item: Some(item),
        }))
    }

    async fn set_item_availability(
        &self,
        request: Request<v1::SetItemAvailabilityRequest>,
    ) -> Reply<v1::SetItemAvailabilityResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let item = self
            .catalog
            .set_availability(&tenant, &body.item_id, &body.location_id, body.available)
            .await
            .map_err(fail)?;
        Ok(Response::new(v1::SetItemAvailabilityResponse {
            item: Some(item),
        }))
    }

    async fn get_menu_item(
        &self,
        request: Request<v1::GetMenuItemRequest>,
    ) -> Reply<v1::GetMenuItemResponse> {
        let tenant = tenant(&request)?;
        let item = self
            .catalog
            .item(&tenant, &request.get_ref().item_id)
            .await
            .map_err(fail)?;
        Ok(Response::new(v1::GetMenuItemResponse { item: Some(item) }))
    }

    async fn list_menu_items(
        &self,
        request: Request<v1::ListMenuItemsRequest>,
    ) -> Reply<v1::ListMenuItemsResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let location = Some(body.location_id.as_str()).filter(|id| !id.is_empty());
        let category = Some(body.category.as_str()).filter(|category| !category.is_empty());
        let (items, next_page_token) = self
            .catalog
            .items(
                &tenant,
                location,
                category,
                page_size(body.page_size),
                &body.page_token,
            )
            .await
            .map_err(fail)?;
        Ok(Response::new(v1::ListMenuItemsResponse {
            items,
            next_page_token,
        }))
    }
}

/// CartService over the cart engine and, for QuoteCart, the quoting engine.
#[derive(Clone)]
pub struct CartApi {
    carts: Carts,
    quotes: Quotes,
}

impl CartApi {
    /// Handlers over `carts` and `quotes`.
    pub fn new(carts: Carts, quotes: Quotes) -> Self {
        CartApi { carts, quotes }
    }

    /// For a customer token: the cart must be the caller's own (else NOT_FOUND). Staff and
    /// service tokens pass without a read.
    async fn own_cart<T>(
        &self,
        request: &Request<T>,
        tenant: &str,
        cart_id: &str,
    ) -> Result<(), Status> {
        let Some(customer) = customer(request) else {
            return Ok(());
        };
        let cart = self.carts.get(tenant, cart_id).await.map_err(fail)?;
        owned_by(Some(&customer), &cart.customer_id, "cart", cart_id)
    }

    /// For a customer token: the loyalty member put on a cart must be the caller's own (else
    /// NOT_FOUND, as loyalty would answer for an unknown member).
    async fn own_member<T>(
        &self,
        request: &Request<T>,
        tenant: &str,
        member_id: &str,
    ) -> Result<(), Status> {
        let Some(customer) = customer(request) else {
            return Ok(());
        };
        if member_id.is_empty() {
            return Ok(()); // clearing the member and reward
        }
        let owner = self
            .quotes
            .member_customer(tenant, member_id)
            .await
            .map_err(fail)?
            .unwrap_or_default();
        owned_by(Some(&customer), &owner, "member", member_id)
    }
}

fn cart_reply<T>(cart: Result<Cart, CheckoutError>, wrap: impl FnOnce(Cart) -> T) -> Reply<T> {
    cart.map(|cart| Response::new(wrap(cart))).map_err(fail)
}

#[tonic::async_trait]
impl CartService for CartApi {
    async fn create_cart(
        &self,
        request: Request<v1::CreateCartRequest>,
    ) -> Reply<v1::CreateCartResponse> {
        let tenant = tenant(&request)?;
        let key = idempotency_id(&request);
        let idempotency = idempotency(&request);
        let customer = customer(&request);
        let mut body = request.into_inner();
        // A customer's cart is always their own: the token names the customer.
        if let Some(customer) = customer {
            if !body.customer_id.is_empty() && body.customer_id != customer {
                return Err(customer_mismatch(
                    "a customer token creates carts for its own customer only",
                ));
            }
            body.customer_id = customer;
        }
        // The write creating the cart recorded this very response for the key (in the store;
        // see `CartStorage::save` for carts in Redis).
        let cart = self
            .carts
            .create_recording(
                &tenant,
                &body.location_id,
                &body.customer_id,
                body.fulfillment,
                &key,
                idempotency.as_ref(),
            )
            .await
            .map_err(fail)?;
        // Fault tests die here: committed, not yet answered.
        platform::failpoint::hit("checkout.create_cart.replying");
        Ok(Response::new(v1::CreateCartResponse { cart: Some(cart) }))
    }

    async fn get_cart(&self, request: Request<v1::GetCartRequest>) -> Reply<v1::GetCartResponse> {
        let tenant = tenant(&request)?;
        self.own_cart(&request, &tenant, &request.get_ref().cart_id)
            .await?;
        let cart = self.carts.get(&tenant, &request.get_ref().cart_id).await;
        cart_reply(cart, |cart| v1::GetCartResponse { cart: Some(cart) })
    }

    async fn add_cart_line(
        &self,
        request: Request<v1::AddCartLineRequest>,
    ) -> Reply<v1::AddCartLineResponse> {
        let tenant = tenant(&request)?;
        self.own_cart(&request, &tenant, &request.get_ref().cart_id)
            .await?;
        let key = idempotency_id(&request);
        let idempotency = idempotency(&request);
        let body = request.into_inner();
        // The write adding the line recorded this very response for the key (in the store; see
        // `CartStorage::save` for carts in Redis).
        let (cart, line_id) = self
            .carts
            .add_line_recording(
                &tenant,
                &body.cart_id,
                &body.item_id,
                &LineChoice {
                    quantity: body.quantity,
                    modifiers: body.modifiers,
                    special_instructions: body.special_instructions,
                },
                &key,
                idempotency.as_ref(),
            )
            .await
            .map_err(fail)?;
        // Fault tests die here: committed, not yet answered.
        platform::failpoint::hit("checkout.add_cart_line.replying");
        Ok(Response::new(v1::AddCartLineResponse {
            cart: Some(cart),
            line_id,
        }))
    }

    async fn update_cart_line(
        &self,
        request: Request<v1::UpdateCartLineRequest>,
    ) -> Reply<v1::UpdateCartLineResponse> {
        let tenant = tenant(&request)?;
        self.own_cart(&request, &tenant, &request.get_ref().cart_id)
            .await?;
        let body = request.into_inner();
        let cart = self
            .carts
            .update_line(
                &tenant,
                &body.cart_id,
                &body.line_id,
                &LineChoice {
                    quantity: body.quantity,
                    modifiers: body.modifiers,
                    special_instructions: body.special_instructions,
                },
            )
            .await;
        cart_reply(cart, |cart| v1::UpdateCartLineResponse { cart: Some(cart) })
    }

    async fn remove_cart_line(
        &self,
        request: Request<v1::RemoveCartLineRequest>,
    ) -> Reply<v1::RemoveCartLineResponse> {
        let tenant = tenant(&request)?;
        self.own_cart(&request, &tenant, &request.get_ref().cart_id)
            .await?;
        let body = request.into_inner();
        let cart = self
            .carts
            .remove_line(&tenant, &body.cart_id, &body.line_id)
            .await;
        cart_reply(cart, |cart| v1::RemoveCartLineResponse { cart: Some(cart) })
    }

    async fn apply_promotion_code(
        &self,
        request: Request<v1::ApplyPromotionCodeRequest>,
    ) -> Reply<v1::ApplyPromotionCodeResponse> {
        let tenant = tenant(&request)?;
        self.own_cart(&request, &tenant, &request.get_ref().cart_id)
            .await?;
        let body = request.into_inner();
        let cart = self
            .carts
            .apply_promotion(&tenant, &body.cart_id, &body.code)
            .await;
        cart_reply(cart, |cart| v1::ApplyPromotionCodeResponse {
            cart: Some(cart),
        })
    }

    async fn remove_promotion_code(
        &self,
        request: Request<v1::RemovePromotionCodeRequest>,
    ) -> Reply<v1::RemovePromotionCodeResponse> {
        let tenant = tenant(&request)?;
        self.own_cart(&request, &tenant, &request.get_ref().cart_id)
            .await?;
        let body = request.into_inner();
        let cart = self
            .carts
            .remove_promotion(&tenant, &body.cart_id, &body.code)
            .await;
        cart_reply(cart, |cart| v1::RemovePromotionCodeResponse {
            cart: Some(cart),
        })
    }

    async fn set_loyalty_reward(
        &self,
        request: Request<v1::SetLoyaltyRewardRequest>,
    ) -> Reply<v1::SetLoyaltyRewardResponse> {
        let tenant = tenant(&request)?;
        self.own_cart(&request, &tenant, &request.get_ref().cart_id)
            .await?;
        self.own_member(&request, &tenant, &request.get_ref().member_id)
            .await?;
        let body = request.into_inner();
        let cart = self
            .carts
            .set_loyalty_reward(&tenant, &body.cart_id, &body.member_id, body.reward)
            .await;
        cart_reply(cart, |cart| v1::SetLoyaltyRewardResponse {
            cart: Some(cart),
        })
    }

    async fn set_fulfillment(
        &self,
        request: Request<v1::SetFulfillmentRequest>,
    ) -> Reply<v1::SetFulfillmentResponse> {
        let tenant = tenant(&request)?;
        self.own_cart(&request, &tenant, &request.get_ref().cart_id)
            .await?;
        let body = request.into_inner();
        let cart = self
            .carts
            .set_fulfillment(&tenant, &body.cart_id, body.fulfillment.unwrap_or_default())
            .await;
        cart_reply(cart, |cart| v1::SetFulfillmentResponse { cart: Some(cart) })
    }

    async fn quote_cart(
        &self,
        request: Request<v1::QuoteCartRequest>,
    ) -> Reply<v1::QuoteCartResponse> {
        let tenant = tenant(&request)?;
        self.own_cart(&request, &tenant, &request.get_ref().cart_id)
            .await?;
        let quote = self
            .quotes
            .quote(&tenant, &request.get_ref().cart_id)
            .await
            .map_err(fail)?;
        Ok(Response::new(v1::QuoteCartResponse { quote: Some(quote) }))
    }

    async fn set_tip(&self, request: Request<v1::SetTipRequest>) -> Reply<v1::SetTipResponse> {
        let tenant = tenant(&request)?;
        self.own_cart(&request, &tenant, &request.get_ref().cart_id)
            .await?;
        let body = request.into_inner();
        let cart = self.carts.set_tip(&tenant, &body.cart_id, body.tip).await;
        cart_reply(cart, |cart| v1::SetTipResponse { cart: Some(cart) })
    }
}

/// OrderService over the orders engine (placing, reading, advancing, refunding so far).
#[derive(Clone)]
pub struct OrderApi {
    orders: Orders,
}

impl OrderApi {
    /// Handlers over `orders`.
    pub fn new(orders: Orders) -> Self {
        OrderApi { orders }
    }

    /// For a customer token: the order must be the caller's own (else NOT_FOUND).
    async fn own_order<T>(
        &self,
        request: &Request<T>,
        tenant: &str,
        order_id: &str,
    ) -> Result<(), Status> {
        let Some(customer) = customer(request) else {
            return Ok(());
        };
        let order = self.orders.order(tenant, order_id).await.map_err(fail)?;
        owned_by(Some(&customer), &order.customer_id, "order", order_id)
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn place_order(
        &self,
        request: Request<v1::PlaceOrderRequest>,
    ) -> Reply<v1::PlaceOrderResponse> {
        let tenant = tenant(&request)?;
        if let Some(customer) = customer(&request) {
            let cart_id = &request.get_ref().cart_id;
            let owner = self
                .orders
                .cart_owner(&tenant, cart_id)
                .await
                .map_err(fail)?;
            owned_by(Some(&customer), &owner, "cart", cart_id)?;
        }
        let key = idempotency_id(&request);
        let idempotency = idempotency(&request);
        let body = request.into_inner();
        let placement = Placement {
            cart_id: body.cart_id,
            quote_id: body.quote_id,
            expected_total: body.expected_total.unwrap_or_default(),
            payment_token: body.payment_token,
            external_order_id: body.external_order_id,
        };
        // The commit completing the placement recorded this very response for the key.
        let order = self
            .orders
            .place_recording(&tenant, &placement, &key, idempotency.as_ref())
            .await
            .map_err(fail)?;
        // Fault tests die here: committed, not yet answered.
        platform::failpoint::hit("checkout.place_order.replying");
        Ok(Response::new(v1::PlaceOrderResponse { order: Some(order) }))
    }

    async fn get_order(
        &self,
        request: Request<v1::GetOrderRequest>,
    ) -> Reply<v1::GetOrderResponse> {
        let tenant = tenant(&request)?;
        self.own_order(&request, &tenant, &request.get_ref().order_id)
            .await?;
        let order = self
            .orders
            .order(&tenant, &request.get_ref().order_id)
            .await
            .map_err(fail)?;
        Ok(Response::new(v1::GetOrderResponse { order: Some(order) }))
    }

    async fn list_orders(
        &self,
        request: Request<v1::ListOrdersRequest>,
    ) -> Reply<v1::ListOrdersResponse> {
        let tenant = tenant(&request)?;
        let customer = customer(&request);
        let mut body = request.into_inner();
        // A customer lists only their own orders; asking for another customer's finds none.
        if let Some(customer) = customer {
            if !body.customer_id.is_empty() && body.customer_id != customer {
                return Ok(Response::new(v1::ListOrdersResponse::default()));
            }
            body.customer_id = customer;
        }
        let (orders, next_page_token) = self
            .orders
            .orders(
                &tenant,
                &body.customer_id,
                &body.location_id,
                &body.statuses,
                page_size(body.page_size),
                &body.page_token,
            )
            .await
            .map_err(fail)?;
        Ok(Response::new(v1::ListOrdersResponse {
            orders,
            next_page_token,
        }))
    }

    async fn refund_order(
        &self,
        request: Request<v1::RefundOrderRequest>,
    ) -> Reply<v1::RefundOrderResponse> {
        let tenant = tenant(&request)?;
        let key = idempotency_id(&request);
        let idempotency = idempotency(&request);
        let body = request.into_inner();
        // The commit recording the refund recorded this very response for the key.
        let (order, refund) = self
            .orders
            .refund_recording(
                &tenant,
                &body.order_id,
                body.amount.as_ref(),
                &body.reason,
                &key,
                idempotency.as_ref(),
            )
            .await
            .map_err(fail)?;
        // Fault tests die here: committed, not yet answered.
        platform::failpoint::hit("checkout.refund_order.replying");
        Ok(Response::new(v1::RefundOrderResponse {
            order: Some(order),
            refund: Some(refund),
        }))
    }

    async fn watch_order(
        &self,
        request: Request<v1::WatchOrderRequest>,
    ) -> Reply<tonic::codegen::BoxStream<v1::WatchOrderResponse>> {
        let tenant = tenant(&request)?;
        self.own_order(&request, &tenant, &request.get_ref().order_id)
            .await?;
        let changes = self
            .orders
            .watch(&tenant, &request.get_ref().order_id)
            .await
            .map_err(fail)?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(changes)
            .map(|order| Ok(v1::WatchOrderResponse { order: Some(order) }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_order(
        &self,
        request: Request<v1::CancelOrderRequest>,
    ) -> Reply<v1::CancelOrderResponse> {
        let tenant = tenant(&request)?;
        self.own_order(&request, &tenant, &request.get_ref().order_id)
            .await?;
        let body = request.into_inner();
        let order = self
            .orders
            .cancel(&tenant, &body.order_id, &body.reason)
            .await
            .map_err(fail)?;
        Ok(Response::new(v1::CancelOrderResponse {
            order: Some(order),
        }))
    }

    async fn advance_order_status(
        &self,
        request: Request<v1::AdvanceOrderStatusRequest>,
    ) -> Reply<v1::AdvanceOrderStatusResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let status = v1::OrderStatus::try_from(body.status).unwrap_or_default();
        let order = self
            .orders
            .advance_status(&tenant, &body.order_id, status)
            .await
            .map_err(fail)?;
        Ok(Response::new(v1::AdvanceOrderStatusResponse {
            order: Some(order),
        }))
    }

    async fn adjust_tip(
        &self,
        request: Request<v1::AdjustTipRequest>,
    ) -> Reply<v1::AdjustTipResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let tip = body.tip.unwrap_or_default();
        // The tip is added to the order's total: bound it before any arithmetic sees it.
        crate::limits::amount("tip", &tip).map_err(fail)?;
        let order = self
            .orders
            .adjust_tip(&tenant, &body.order_id, &tip)
            .await
            .map_err(fail)?;
        Ok(Response::new(v1::AdjustTipResponse { order: Some(order) }))
    }
}

/// CheckoutAdminService over the orders engine.
#[derive(Clone)]
pub struct CheckoutAdminApi {
    orders: Orders,
}

impl CheckoutAdminApi {
    /// Handlers over `orders`.
    pub fn new(orders: Orders) -> Self {
        CheckoutAdminApi { orders }
    }
}

#[tonic::async_trait]
impl CheckoutAdminService for CheckoutAdminApi {
    async fn reconcile_payments(
        &self,
        request: Request<v1::ReconcilePaymentsRequest>,
    ) -> Reply<v1::ReconcilePaymentsResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let period = Period {
            start_ms: ms_of(&body.start_time),
            end_ms: ms_of(&body.end_time),
        };
        let report = self
            .orders
            .reconcile_payments(&tenant, period)
            .await
            .map_err(fail)?;
        Ok(Response::new(report))
    }
}
